#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod config;
pub mod entry;
pub mod error;
pub mod journal;
pub mod route;
pub mod schedule;
pub mod session;
pub mod store;
pub mod tern;
pub mod transport;
pub mod upload;

pub use config::{StoreLimits, TernConfig, TernConfigBuilder};
pub use error::{ConfigError, StoreError, TrackError};
pub use schedule::{FlushPolicy, RetryPolicy};
pub use store::{Backlog, OutgoingBatch};
pub use tern::{ShutdownReport, Stats, Tern};
pub use tern_protocol::{Properties, Value};
