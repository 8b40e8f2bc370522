//! The way downstream: the forwarder that coalesces accepted batches into deliveries,
//! the sinks it delivers to (the HTTP backend, Kafka), and the circuit breaker in
//! front of it shared by the request path and the replayers.

pub mod breaker;
pub(crate) mod coalesce;
pub mod forward;
pub mod kafka;
pub mod sharedbreaker;
pub mod sink;
