//! Push-notification tokens and the push events a device records (protocol §8.3):
//! which provider delivers to the device, and for APNs which environment.

use crate::value::open_enum;

open_enum! {
    /// The push provider a token belongs to. Open: a newer peer's provider is kept as
    /// [`PushProvider::Other`].
    pub enum PushProvider {
        /// Firebase Cloud Messaging (Android). Has no environment.
        Fcm = "fcm",
        /// Apple Push Notification service. Its tokens are per environment.
        Apns = "apns",
    }
}

open_enum! {
    /// The APNs environment a token was issued for (absent for FCM, protocol §8.3).
    pub enum PushEnvironment {
        /// The development (sandbox) APNs gateway: debug builds.
        Sandbox = "sandbox",
        /// The production APNs gateway: App Store and TestFlight builds.
        Production = "production",
    }
}
