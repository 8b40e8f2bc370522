//! Talking to relays: what the uploader ([`crate::upload`]) sends through.
//!
//! * `failover`: one request to a key's relays in the router's order, failing over
//!   from relay to relay (batches and config requests alike).
//! * [`transport`]: the [`transport::Connector`] — QUIC with the HTTPS fallback
//!   (`https`), both over rustls; [`pinning`] checks the relay's keys on both.

pub(crate) mod failover;
mod heard;
mod https;
pub mod pinning;
pub mod transport;
