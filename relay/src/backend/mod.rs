//! The way to the backend: the forwarder that coalesces accepted batches into backend
//! requests, and the circuit breaker in front of it shared by the request path and the
//! replayers.

pub mod breaker;
pub(crate) mod coalesce;
pub mod forward;
pub mod sharedbreaker;
