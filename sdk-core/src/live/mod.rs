//! Live config, feature flags and in-app messages on the device.
//!
//! * [`remote`]: the state the public API reads (bundle in use, flags, messages),
//!   the listener registry and the `tern-live` dispatcher thread.
//! * [`exposures`]: the experiment exposures recorded, each once per (flag, variant,
//!   unit, config version), bounded (pure; persisted by the store).
//! * [`messages`]: which in-app message to show when a trigger fires, with pacing
//!   (pure functions).
//! * [`scheduler`]: when to fetch the bundle and (re)open the push subscription
//!   ([`LiveScheduler`], sans-IO); the uploader thread (`crate::upload`) runs it.

pub mod exposures;
pub mod messages;
pub mod remote;
pub mod scheduler;

pub use scheduler::{FetchResult, LiveAction, LiveConfig, LiveCounters, LiveScheduler};

#[cfg(test)]
mod tests;
