#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod config;
pub mod entry;
pub mod error;
mod failover;
mod https;
pub mod journal;
pub mod live;
pub mod marker;
pub mod messages;
pub mod pinning;
pub mod remote;
pub mod route;
pub mod schedule;
pub mod session;
pub mod store;
pub mod tern;
pub mod transport;
pub mod upload;

#[cfg(test)]
mod live_tests;

pub use config::{StoreLimits, TernConfig, TernConfigBuilder};
pub use error::{ConfigError, StoreError, TrackError};
pub use live::LiveConfig;
pub use remote::{
    ConfigChange, ConfigInfo, ConfigListener, ListenerHandle, LiveStats, MessageListener,
};
pub use schedule::{FlushPolicy, RefusalPolicy, RetryPolicy};
pub use store::{Backlog, OutgoingBatch};
pub use tern::{Call, Refused, ShutdownReport, Stats, Tern};
pub use tern_protocol::config::{FeatureFlag, InAppMessage};
pub use tern_protocol::rollout::FlagDecision;
pub use tern_protocol::{Properties, Value};
