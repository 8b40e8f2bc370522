#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod client;
mod error;
mod fast;
mod guard;
mod listen;
mod log;
mod payload;
mod push;
mod registry;
mod report;
mod state;
mod types;
mod wait;

pub use client::context::{DeviceContext, TernNetworkType};
pub use client::{TernCore, MAX_PENDING_BYTES, MAX_PENDING_CALLS};
pub use error::TernError;
pub use fast::tern_fast_track;
pub use listen::{ConfigChangeListener, InAppMessageListener, ListenerHandle};
pub use log::{install_log_sink, log_level, set_log_level, LogLevel, LogSink};
pub use push::{PushEnvironment, PushProvider};
pub use report::ErrorListener;
pub use types::{
    ConfigChange, ConfigInfo, ConsentPurpose, ConsentState, FlagDecision, InAppMessage,
    MessageAction, PropertyValue, RelayEndpoint, ShutdownReport, TernOptions, TernState, TernStats,
};
pub use wait::MAX_FLUSH_WAITS;

uniffi::setup_scaffolding!();

// The panic guard (`guard.rs`) and the core's `catch_unwind` around listeners need
// unwinding: with `panic = "abort"` a bug in the SDK would end the host app. The
// shipping `mobile` profile unwinds; a build that would not is refused here.
#[cfg(panic = "abort")]
compile_error!("tern-bindings must be built with panic = \"unwind\" (bindings/README.md, Panics)");

/// The version of this library (the SDK version reported upstream by default).
#[uniffi::export]
pub fn tern_sdk_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
