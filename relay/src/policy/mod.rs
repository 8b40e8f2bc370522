//! What a request is allowed to do before it reaches the data path: the app registry and
//! its keys, per-app rate limits, the operator's switches, and feature-flagged behaviour.

pub mod apps;
pub mod controls;
pub mod features;
pub mod ratelimit;
