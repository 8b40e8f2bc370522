#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod client;
mod error;
mod guard;
mod listen;
mod types;

pub use client::TernCore;
pub use error::TernError;
pub use listen::{ConfigChangeListener, InAppMessageListener, ListenerHandle};
pub use types::{
    ConfigChange, ConfigInfo, FlagDecision, InAppMessage, MessageAction, PropertyValue,
    RelayEndpoint, ShutdownReport, TernOptions, TernStats,
};

uniffi::setup_scaffolding!();

/// The version of this library (the SDK version reported upstream by default).
#[uniffi::export]
pub fn tern_sdk_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
