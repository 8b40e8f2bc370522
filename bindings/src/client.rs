//! `TernCore`: the exported SDK object, a thin wrapper of `tern_sdk::Tern`. Every
//! method converts, calls the core inside [`guard`], and converts back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::TernError;
use crate::guard::{guard, guard_or};
use crate::listen::{
    ConfigAdapter, ConfigChangeListener, InAppMessageListener, ListenerHandle, MessageAdapter,
};
use crate::types::{
    to_properties, ConfigInfo, FlagDecision, PropertyValue, ShutdownReport, TernOptions, TernStats,
};

/// The Tern SDK. Thread-safe; recording calls never do network I/O and return once the
/// event is durable on the device.
#[derive(Debug, uniffi::Object)]
pub struct TernCore {
    inner: tern_sdk::Tern,
}

#[uniffi::export]
impl TernCore {
    /// Starts the SDK. Returns quickly (the store opens on a background thread), but
    /// creates threads and the data directory: call it off the main thread.
    #[uniffi::constructor]
    pub fn start(options: TernOptions) -> Result<Arc<TernCore>, TernError> {
        guard("start", || {
            let config = options.into_core()?;
            let inner = tern_sdk::Tern::start(config)?;
            Ok(Arc::new(TernCore { inner }))
        })
    }

    /// Records a custom event.
    pub fn track(
        &self,
        name: String,
        properties: HashMap<String, PropertyValue>,
    ) -> Result<(), TernError> {
        guard("track", || {
            Ok(self.inner.track(&name, to_properties(properties))?)
        })
    }

    /// Records a purchase: `amount_micros` millionths of `currency` (ISO 4217).
    pub fn purchase(
        &self,
        product_id: String,
        amount_micros: i64,
        currency: String,
        quantity: u32,
        properties: HashMap<String, PropertyValue>,
    ) -> Result<(), TernError> {
        guard("purchase", || {
            Ok(self.inner.purchase(
                &product_id,
                amount_micros,
                &currency,
                quantity,
                to_properties(properties),
            )?)
        })
    }

    /// Sets the user of events recorded from now on; `None` makes them anonymous.
    pub fn identify(&self, user_id: Option<String>) -> Result<(), TernError> {
        guard("identify", || {
            Ok(self.inner.identify(user_id.as_deref())?)
        })
    }

    /// Sets and removes user properties.
    pub fn set_user_properties(
        &self,
        set: HashMap<String, PropertyValue>,
        unset: Vec<String>,
    ) -> Result<(), TernError> {
        guard("set_user_properties", || {
            Ok(self.inner.set_user_properties(to_properties(set), unset)?)
        })
    }

    /// Switches recording off (`true`) or back on. Persisted across restarts.
    pub fn opt_out(&self, opted_out: bool) -> Result<(), TernError> {
        guard("opt_out", || Ok(self.inner.opt_out(opted_out)?))
    }

    /// True while opted out.
    pub fn is_opted_out(&self) -> bool {
        guard_or("is_opted_out", false, || self.inner.is_opted_out())
    }

    /// Deletes every event recorded before this call, the user id and the device id.
    pub fn delete_local_data(&self) -> Result<(), TernError> {
        guard("delete_local_data", || {
            Ok(self.inner.delete_local_data()?)
        })
    }

    /// Starts a new session (ending the open one).
    pub fn start_session(&self) -> Result<(), TernError> {
        guard("start_session", || Ok(self.inner.start_session()?))
    }

    /// Ends the open session, if any.
    pub fn end_session(&self) -> Result<(), TernError> {
        guard("end_session", || Ok(self.inner.end_session()?))
    }

    /// The open session's id, if any.
    pub fn current_session(&self) -> Option<String> {
        guard_or("current_session", None, || {
            self.inner.current_session().map(|s| s.to_string())
        })
    }

    /// The app came to the foreground.
    pub fn on_foreground(&self) -> Result<(), TernError> {
        guard("on_foreground", || Ok(self.inner.on_foreground()?))
    }

    /// The app went to the background (a flush is requested).
    pub fn on_background(&self) -> Result<(), TernError> {
        guard("on_background", || Ok(self.inner.on_background()?))
    }

    /// The platform's network reachability changed.
    pub fn set_network_available(&self, available: bool) {
        guard_or("set_network_available", (), || {
            self.inner.set_network_available(available)
        })
    }

    /// Asks for everything recorded so far to be sent soon. Returns at once.
    pub fn flush(&self) {
        guard_or("flush", (), || self.inner.flush())
    }

    /// A snapshot of state and health counters. No I/O.
    pub fn stats(&self) -> Result<TernStats, TernError> {
        guard("stats", || Ok(self.inner.stats().into()))
    }

    /// The config value of `key`, if present. No I/O.
    pub fn config_value(&self, key: String) -> Option<PropertyValue> {
        guard_or("config_value", None, || {
            self.inner.config_value(&key).map(Into::into)
        })
    }

    /// Every config value. No I/O.
    pub fn config_values(&self) -> HashMap<String, PropertyValue> {
        guard_or("config_values", HashMap::new(), || {
            self.inner
                .config_values()
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect()
        })
    }

    /// The text value of `key`, or `default`.
    pub fn config_string(&self, key: String, default: String) -> String {
        let fallback = default.clone();
        guard_or("config_string", fallback, || {
            self.inner.config_string(&key, &default)
        })
    }

    /// The boolean value of `key`, or `default`.
    pub fn config_bool(&self, key: String, default: bool) -> bool {
        guard_or("config_bool", default, || {
            self.inner.config_bool(&key, default)
        })
    }

    /// The integer value of `key`, or `default`.
    pub fn config_long(&self, key: String, default: i64) -> i64 {
        guard_or("config_long", default, || {
            self.inner.config_i64(&key, default)
        })
    }

    /// The number value of `key` (integers converted), or `default`.
    pub fn config_double(&self, key: String, default: f64) -> f64 {
        guard_or("config_double", default, || {
            self.inner.config_f64(&key, default)
        })
    }

    /// The decision of flag `key` for this device/user (`Off` when unknown).
    pub fn flag(&self, key: String) -> FlagDecision {
        guard_or("flag", FlagDecision::Off, || self.inner.flag(&key).into())
    }

    /// True when the flag is not `Off`.
    pub fn flag_enabled(&self, key: String) -> bool {
        guard_or("flag_enabled", false, || self.inner.flag_enabled(&key))
    }

    /// Version, ETag and freshness of the config in use.
    pub fn config_info(&self) -> ConfigInfo {
        guard_or(
            "config_info",
            ConfigInfo {
                version: 0,
                etag: None,
                fetched_at_ms: None,
                from_cache: false,
                stale: false,
            },
            || self.inner.config_info().into(),
        )
    }

    /// Asks for the config to be fetched now (debounced). Returns at once.
    pub fn refresh_config(&self) {
        guard_or("refresh_config", (), || self.inner.refresh_config())
    }

    /// Calls `listener` on every config change. Keep the handle: cancelling or
    /// destroying it removes the listener.
    pub fn add_config_listener(
        &self,
        listener: Box<dyn ConfigChangeListener>,
    ) -> Result<Arc<ListenerHandle>, TernError> {
        guard("add_config_listener", || {
            let handle = self
                .inner
                .add_config_listener(Arc::new(ConfigAdapter(listener)));
            Ok(Arc::new(ListenerHandle::new(handle)))
        })
    }

    /// Calls `listener` with each in-app message to show. Keep the handle.
    pub fn add_message_listener(
        &self,
        listener: Box<dyn InAppMessageListener>,
    ) -> Result<Arc<ListenerHandle>, TernError> {
        guard("add_message_listener", || {
            let handle = self
                .inner
                .add_message_listener(Arc::new(MessageAdapter(listener)));
            Ok(Arc::new(ListenerHandle::new(handle)))
        })
    }

    /// Records that an in-app message was acted on (`action` = the button id).
    pub fn message_impression(&self, message_id: String, action: String) -> Result<(), TernError> {
        guard("message_impression", || {
            Ok(self.inner.message_impression(&message_id, &action)?)
        })
    }

    /// Blocks until everything recorded so far is in the device store, at most
    /// `timeout_ms`. For tests; never call it on the main thread.
    pub fn wait_applied(&self, timeout_ms: u64) -> bool {
        guard_or("wait_applied", false, || {
            self.inner.wait_applied(Duration::from_millis(timeout_ms))
        })
    }

    /// Requests a flush and blocks until the device store is empty (everything was
    /// uploaded) or `timeout_ms` passes; returns whether it emptied. For background-flush
    /// jobs (WorkManager, `BGTaskScheduler`). Blocks: never call it on the main thread.
    pub fn flush_and_wait(&self, timeout_ms: u64) -> bool {
        guard_or("flush_and_wait", false, || {
            self.inner.flush_and_wait(Duration::from_millis(timeout_ms))
        })
    }

    /// Stops recording, moves everything into the store and closes the files, waiting
    /// at most `timeout_ms`. Recording calls fail with `ShutDown` afterwards. Blocks:
    /// never call it on the main thread. Idempotent.
    pub fn shutdown(&self, timeout_ms: u64) -> Result<ShutdownReport, TernError> {
        guard("shutdown", || {
            Ok(self
                .inner
                .shutdown(Duration::from_millis(timeout_ms))
                .into())
        })
    }
}
