//! Long-lived streams as callback interfaces with a cancel handle.

use crate::types::{ConfigChange, InAppMessage};

/// Receives config changes, on the SDK's `tern-live` thread (never the main thread).
/// An exception thrown here is contained and counted in `TernStats.listener_panics`.
#[uniffi::export(callback_interface)]
pub trait ConfigChangeListener: Send + Sync {
    /// The config bundle or the flag decisions changed.
    fn on_config_changed(&self, change: ConfigChange);
}

/// Receives in-app messages to show, on the SDK's `tern-live` thread. The impression
/// (`shown`) is already recorded; report taps with `message_impression`.
#[uniffi::export(callback_interface)]
pub trait InAppMessageListener: Send + Sync {
    /// Show `message` now.
    fn on_message(&self, message: InAppMessage);
}

pub(crate) struct ConfigAdapter(pub(crate) Box<dyn ConfigChangeListener>);

impl tern_sdk::ConfigListener for ConfigAdapter {
    fn on_config_changed(&self, change: &tern_sdk::ConfigChange) {
        self.0.on_config_changed(change.into());
    }
}

pub(crate) struct MessageAdapter(pub(crate) Box<dyn InAppMessageListener>);

impl tern_sdk::MessageListener for MessageAdapter {
    fn on_message(&self, message: &tern_sdk::InAppMessage) {
        self.0.on_message(message.into());
    }
}

/// A registered listener. `cancel()` (or destroying the handle) removes it; after
/// `cancel` returns no new call to the listener starts.
#[derive(Debug, uniffi::Object)]
pub struct ListenerHandle {
    inner: tern_sdk::ListenerHandle,
}

impl ListenerHandle {
    pub(crate) fn new(inner: tern_sdk::ListenerHandle) -> Self {
        ListenerHandle { inner }
    }
}

#[uniffi::export]
impl ListenerHandle {
    /// Removes the listener. Idempotent.
    pub fn cancel(&self) {
        crate::guard::guard_or("cancel", (), || self.inner.cancel());
    }

    /// Whether the listener was cancelled.
    pub fn is_cancelled(&self) -> bool {
        crate::guard::guard_or("is_cancelled", true, || self.inner.is_cancelled())
    }
}
