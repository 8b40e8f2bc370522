//! The device and app context a batch's events were recorded in (protocol §5.2.1):
//! what the app, the OS and the device were, and the network they were on. Stamped
//! once per batch, not per event; every field optional, each bounded by §7.

use serde::{Deserialize, Serialize};

use crate::ids::InstallId;
use crate::value::open_enum;

open_enum! {
    /// The kind of network the device was on. A value this version does not know
    /// (from a newer peer) is kept as text, so a new kind never breaks an older peer.
    pub enum NetworkType {
        /// No network.
        None = "none",
        /// Wi-Fi.
        Wifi = "wifi",
        /// A cellular network.
        Cellular = "cellular",
        /// Wired Ethernet.
        Ethernet = "ethernet",
        /// A network of a kind the device could not tell (VPN, Bluetooth, ...).
        Unknown = "unknown",
    }
}

/// The context of a batch's events: every event of a batch was recorded while the
/// device's context was this one (a device splits batches where it changed). Every
/// field is optional; strings follow the §7 rule of ids (1 to `max_id_len` bytes, no
/// control characters).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppContext {
    /// The app's version as the user sees it (`1.4.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    /// The app's build (Android `versionCode`, iOS `CFBundleVersion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_build: Option<String>,
    /// `android`, `ios`, `macos`, `linux`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    /// The OS version (`14`, `17.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// The device model (`Pixel 8`, `iPhone15,2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_model: Option<String>,
    /// The user's locale, a BCP 47 tag (`en-GB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// The device's time zone, an IANA name (`Europe/Paris`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The SDK's core version (the `tern-sdk` crate version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_version: Option<String>,
    /// The network the device was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkType>,
    /// Screen width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_width: Option<u32>,
    /// Screen height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_height: Option<u32>,
    /// This installation of the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_id: Option<InstallId>,
}

crate::wire_struct!(AppContext {
    app_version: omit,
    app_build: omit,
    os_name: omit,
    os_version: omit,
    device_model: omit,
    locale: omit,
    time_zone: omit,
    sdk_version: omit,
    network: omit,
    screen_width: omit,
    screen_height: omit,
    install_id: omit,
});

/// The checked parts of a context, borrowed: what [`crate::limits::check_context`] rules on. The
/// owned decoder and `IngestView` both fill it, so both apply one rule.
#[derive(Clone, Copy, Debug, Default)]
pub struct ContextParts<'a> {
    /// `app_version`.
    pub app_version: Option<&'a str>,
    /// `app_build`.
    pub app_build: Option<&'a str>,
    /// `os_name`.
    pub os_name: Option<&'a str>,
    /// `os_version`.
    pub os_version: Option<&'a str>,
    /// `device_model`.
    pub device_model: Option<&'a str>,
    /// `locale`.
    pub locale: Option<&'a str>,
    /// `time_zone`.
    pub time_zone: Option<&'a str>,
    /// `sdk_version`.
    pub sdk_version: Option<&'a str>,
    /// `network` (its text, known or not).
    pub network: Option<&'a str>,
}

impl AppContext {
    /// The parts [`crate::limits::check_context`] rules on.
    pub fn parts(&self) -> ContextParts<'_> {
        ContextParts {
            app_version: self.app_version.as_deref(),
            app_build: self.app_build.as_deref(),
            os_name: self.os_name.as_deref(),
            os_version: self.os_version.as_deref(),
            device_model: self.device_model.as_deref(),
            locale: self.locale.as_deref(),
            time_zone: self.time_zone.as_deref(),
            sdk_version: self.sdk_version.as_deref(),
            network: self.network.as_ref().map(NetworkType::as_str),
        }
    }

    /// Whether no field is set (a device then sends no `context`).
    pub fn is_empty(&self) -> bool {
        *self == AppContext::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_network_kinds_are_kept_as_text() {
        assert_eq!(NetworkType::from("wifi"), NetworkType::Wifi);
        assert_eq!(NetworkType::from("5g-sa").as_str(), "5g-sa");
        assert!(AppContext::default().is_empty());
    }
}
