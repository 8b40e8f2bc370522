//! The uploader's and the session's decisions, sans-IO: each a state machine that is
//! fed what happened with the current time (`handle_*(…, now)`) and asked what to do
//! (`poll`), and never opens a socket, touches the store or reads the clock.
//!
//! * [`schedule`]: when to cut batches and send, backoff after failures and refusals.
//! * [`route`]: which relay and transport a request goes to (HRW ranking, relay
//!   backoff, shard-map adoption, fallback to the seeds).
//! * [`session`]: session start and end with an inactivity timeout.

pub mod route;
pub mod schedule;
pub mod session;
