//! Talking to relays: the uploader thread and what it sends through.
//!
//! * [`upload`]: the uploader — one background thread that drives the store's batches,
//!   config fetches and the push subscription through the sans-IO policies
//!   ([`crate::policy`], [`crate::live::LiveScheduler`]); it reaches the rest of the
//!   SDK only through [`upload::Host`](upload).
//! * `failover`: one request to a key's relays in the router's order, failing over
//!   from relay to relay (batches and config requests alike).
//! * [`transport`]: the [`transport::Connector`] — QUIC with the HTTPS fallback
//!   (`https`), both over rustls; [`pinning`] checks the relay's keys on both.

pub(crate) mod failover;
mod https;
pub mod pinning;
pub mod transport;
pub mod upload;
