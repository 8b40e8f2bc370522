//! The relay's one circuit breaker in front of the backend, shared by the request
//! handler ([`crate::ingest`]) and the replayers ([`crate::spool::replay`]): the sans-IO
//! [`Breaker`] behind a lock, read at the wall clock, its state published as the
//! `tern_relay_breaker_state` gauge.

use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

use crate::backend::breaker::{
    Breaker, BreakerConfig, BreakerState, CallOutcome, Override, Permit, Ticket,
};

/// A handle on the shared breaker (cheap to clone; clones share the state).
#[derive(Clone, Debug)]
pub struct SharedBreaker(Arc<Mutex<Breaker>>);

impl SharedBreaker {
    /// A closed breaker with `config`.
    pub fn new(config: BreakerConfig) -> Self {
        SharedBreaker(Arc::new(Mutex::new(Breaker::new(
            config,
            Instant::now().into_std(),
        ))))
    }

    /// The breaker itself, for callers that drive it with their own `now`.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Breaker> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the state as the `tern_relay_breaker_state` gauge.
    pub fn publish_state(&self) {
        let state = self.lock().state();
        metrics::gauge!("tern_relay_breaker_state").set(f64::from(state.as_metric()));
    }

    /// A permit if the breaker admits a backend call now (closed, or a half-open probe
    /// is due).
    pub fn try_permit(&self) -> Option<Ticket> {
        match self.lock().try_acquire(Instant::now().into_std()) {
            Permit::Allowed(ticket) => Some(ticket),
            Permit::Rejected { .. } => None,
        }
    }

    /// Reports the result of a call made with a permit from [`SharedBreaker::try_permit`].
    pub fn report(&self, ticket: Ticket, outcome: CallOutcome) {
        self.lock()
            .handle_result(ticket, outcome, Instant::now().into_std());
        self.publish_state();
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        let mut b = self.lock();
        b.handle_timeout(Instant::now().into_std());
        b.state()
    }

    /// The operator's override, if any.
    pub fn current_override(&self) -> Option<Override> {
        self.lock().current_override()
    }

    /// Operator control: forces the breaker open or closed, or (`None`) back to
    /// automatic.
    pub fn set_override(&self, o: Option<Override>) {
        self.lock().set_override(o, Instant::now().into_std());
    }
}
