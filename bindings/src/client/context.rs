//! The device and app context and the lifecycle events (protocol §5.2.1, §8.4) on the
//! foreign surface: the static part given with the options ([`DeviceContext`]), the
//! dynamic parts the platform glue reports from its callbacks (network, locale, time
//! zone) — each queued before open and applied in order like the other calls — and
//! the install id.

use tern_protocol::{AppContext, NetworkType};
use tern_sdk::Call;

use super::TernCore;
use crate::error::TernError;
use crate::guard::guard_or;

/// The kind of network the device is on, as the platform reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TernNetworkType {
    /// No network.
    None,
    /// Wi-Fi.
    Wifi,
    /// Cellular.
    Cellular,
    /// Wired Ethernet.
    Ethernet,
    /// Another kind (VPN, Bluetooth, ...), or one the platform could not tell.
    Unknown,
}

impl From<TernNetworkType> for NetworkType {
    fn from(n: TernNetworkType) -> Self {
        match n {
            TernNetworkType::None => NetworkType::None,
            TernNetworkType::Wifi => NetworkType::Wifi,
            TernNetworkType::Cellular => NetworkType::Cellular,
            TernNetworkType::Ethernet => NetworkType::Ethernet,
            TernNetworkType::Unknown => NetworkType::Unknown,
        }
    }
}

/// What the app and the device are, given with the options at start (the glue fills it
/// from the platform): every field optional; strings 1 to 256 bytes without control
/// characters (the options are refused otherwise, naming `context`).
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct DeviceContext {
    /// The app's build (Android `versionCode`, iOS `CFBundleVersion`); the version is
    /// the options' `app_version`.
    #[uniffi(default = None)]
    pub app_build: Option<String>,
    /// `android`, `ios`, ...
    #[uniffi(default = None)]
    pub os_name: Option<String>,
    /// The OS version.
    #[uniffi(default = None)]
    pub os_version: Option<String>,
    /// The device model.
    #[uniffi(default = None)]
    pub device_model: Option<String>,
    /// Screen width in pixels.
    #[uniffi(default = None)]
    pub screen_width: Option<u32>,
    /// Screen height in pixels.
    #[uniffi(default = None)]
    pub screen_height: Option<u32>,
    /// The locale at start (BCP 47); later changes through `set_locale`.
    #[uniffi(default = None)]
    pub locale: Option<String>,
    /// The time zone at start (IANA name); later changes through `set_time_zone`.
    #[uniffi(default = None)]
    pub time_zone: Option<String>,
    /// The network at start; later changes through `set_network_type`.
    #[uniffi(default = None)]
    pub network_type: Option<TernNetworkType>,
}

impl DeviceContext {
    /// The core's context (the app version and SDK version are filled in by the core).
    pub(crate) fn into_core(self) -> AppContext {
        AppContext {
            app_build: self.app_build,
            os_name: self.os_name,
            os_version: self.os_version,
            device_model: self.device_model,
            screen_width: self.screen_width,
            screen_height: self.screen_height,
            locale: self.locale,
            time_zone: self.time_zone,
            network: self.network_type.map(Into::into),
            ..AppContext::default()
        }
    }
}

#[uniffi::export]
impl TernCore {
    /// The platform's network callback: the kind of network now (`None`: unknown).
    /// Events recorded from now on carry it in their batch's context; an unchanged
    /// value records nothing.
    pub fn set_network_type(&self, network: Option<TernNetworkType>) {
        let _ = self.try_set_network_type(network);
    }

    /// [`TernCore::set_network_type`], returning a refusal as a typed error.
    pub fn try_set_network_type(&self, network: Option<TernNetworkType>) -> Result<(), TernError> {
        self.record("set_network_type", || {
            Ok(Call::SetNetworkType {
                network: network.map(Into::into),
            })
        })
    }

    /// The platform's locale-change notification (BCP 47 tag, `None`: unknown).
    pub fn set_locale(&self, locale: Option<String>) {
        let _ = self.try_set_locale(locale);
    }

    /// [`TernCore::set_locale`], returning a refusal as a typed error.
    pub fn try_set_locale(&self, locale: Option<String>) -> Result<(), TernError> {
        self.record("set_locale", || Ok(Call::SetLocale { locale }))
    }

    /// The platform's time-zone-change notification (IANA name, `None`: unknown).
    pub fn set_time_zone(&self, time_zone: Option<String>) {
        let _ = self.try_set_time_zone(time_zone);
    }

    /// [`TernCore::set_time_zone`], returning a refusal as a typed error.
    pub fn try_set_time_zone(&self, time_zone: Option<String>) -> Result<(), TernError> {
        self.record("set_time_zone", || Ok(Call::SetTimeZone { time_zone }))
    }

    /// This installation's id (lower-case hyphenated UUID): kept across app updates,
    /// replaced by `delete_local_data`; `None` before open, after a stop or a failed
    /// open.
    pub fn install_id(&self) -> Option<String> {
        guard_or("install_id", None, || {
            self.running()
                .and_then(|t| t.install_id())
                .map(|i| i.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use tern_protocol::EventBody;

    use super::*;
    use crate::client::tests::options;
    use crate::TernOptions;

    /// Context calls made before open are queued and applied in order with the events;
    /// the options' context and the lifecycle events reach the batches; invalid values
    /// are refused (typed) and never kept.
    #[test]
    fn context_calls_before_and_after_open_reach_the_batches_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let core = TernCore::new();
        core.track("before".into(), HashMap::new());
        core.set_network_type(Some(TernNetworkType::Cellular));
        core.track("cellular".into(), HashMap::new());
        core.open(TernOptions {
            app_version: Some("3.1".into()),
            context: Some(DeviceContext {
                os_name: Some("android".into()),
                screen_width: Some(1080),
                network_type: Some(TernNetworkType::Wifi),
                ..DeviceContext::default()
            }),
            auto_lifecycle: Some(true),
            ..options(dir.path())
        })
        .unwrap();
        assert!(matches!(
            core.try_set_locale(Some("bad\u{7}".into())),
            Err(TernError::InvalidEvent { .. })
        ));
        core.set_time_zone(Some("Asia/Tokyo".into()));
        core.track("tokyo".into(), HashMap::new());
        let t = core.running().unwrap();
        assert!(t.wait_applied(Duration::from_secs(20)));
        t.form_batches(true).unwrap();
        let mut seen = Vec::new();
        while let Some(b) = t.next_batch().unwrap() {
            let c = b.batch.context.clone().unwrap();
            assert_eq!(c.app_version.as_deref(), Some("3.1"));
            assert_eq!(c.screen_width, Some(1080));
            assert_eq!(c.install_id.map(|i| i.to_string()), core.install_id());
            for e in b.batch.events {
                let what = match e.body {
                    EventBody::Custom { name, .. } => name,
                    other => other.kind().to_owned(),
                };
                seen.push((
                    what,
                    c.network.as_ref().map(|n| n.as_str().to_owned()),
                    c.time_zone.clone(),
                ));
            }
        }
        let s = |what: &str, net: &str, tz: Option<&str>| {
            (what.to_owned(), Some(net.to_owned()), tz.map(str::to_owned))
        };
        // The launch comes first (written at open), then the calls queued before it.
        assert_eq!(
            seen,
            [
                s("app_installed", "wifi", None),
                s("app_opened", "wifi", None),
                s("before", "wifi", None),
                s("cellular", "cellular", None),
                s("tokyo", "cellular", Some("Asia/Tokyo")),
            ]
        );
        assert_eq!(core.stats().dropped_invalid, 0);
    }
}
