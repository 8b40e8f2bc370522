//! Push notification types of the exported surface (protocol §8.3).

/// Who delivers push notifications to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PushProvider {
    /// Firebase Cloud Messaging (Android). Its tokens have no environment.
    Fcm,
    /// Apple Push Notification service.
    Apns,
}

/// The APNs environment a device token was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PushEnvironment {
    /// The development gateway: debug builds (`aps-environment` `development`).
    Sandbox,
    /// The production gateway: App Store and TestFlight builds.
    Production,
}

impl From<PushProvider> for tern_protocol::PushProvider {
    fn from(p: PushProvider) -> Self {
        match p {
            PushProvider::Fcm => tern_protocol::PushProvider::Fcm,
            PushProvider::Apns => tern_protocol::PushProvider::Apns,
        }
    }
}

impl From<PushEnvironment> for tern_protocol::PushEnvironment {
    fn from(e: PushEnvironment) -> Self {
        match e {
            PushEnvironment::Sandbox => tern_protocol::PushEnvironment::Sandbox,
            PushEnvironment::Production => tern_protocol::PushEnvironment::Production,
        }
    }
}
