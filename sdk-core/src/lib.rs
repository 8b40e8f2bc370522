#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod config;
pub mod consent;
pub mod error;
pub mod live;
pub mod net;
pub mod policy;
pub mod store;
pub mod tern;
pub mod upload;

// The modules' paths before they were grouped into folders, for callers outside the
// crate (bindings, tests, fleet, benches).
pub use live::remote;
pub use net::{pinning, transport};
pub use policy::{route, schedule};
pub use store::{entry, journal};

pub use config::{StoreLimits, TernConfig, TernConfigBuilder};
pub use consent::{ConsentConfig, ConsentCounters, ConsentState, ConsentStates, Purpose};
pub use error::{ConfigError, StoreError, TrackError};
pub use live::LiveConfig;
pub use remote::{
    ConfigChange, ConfigInfo, ConfigListener, ListenerHandle, LiveStats, MessageListener,
};
pub use schedule::{FlushPolicy, RefusalPolicy, RetryPolicy};
pub use store::{Backlog, OutgoingBatch};
pub use tern::{Call, ExposureOutcome, ExposureStats, Refused, ShutdownReport, Stats, Tern};
pub use tern_protocol::config::{FeatureFlag, InAppMessage};
pub use tern_protocol::rollout::FlagDecision;
pub use tern_protocol::{Properties, Value};
