//! Upload scheduling: when to cut batches and when to send (sans-IO).
//!
//! [`Scheduler`] decides *when*; it never touches the store, the network or the clock.
//! The runtime feeds it facts (`handle_*`, each with the current [`Instant`] where time
//! matters), asks [`Scheduler::poll`] what to do now, acts, reports the result, and
//! sleeps until [`Scheduler::poll_timeout`] or the next input.
//!
//! # Batches
//!
//! Tracked events sit in the store *unbatched* until the scheduler says
//! [`Action::FormBatches`]; the store then groups them into batches, each given a
//! `batch_id` once and kept across every retry (protocol §6.1). A cut is due when the
//! unbatched backlog reaches [`FlushPolicy::max_batch_events`] events or
//! [`FlushPolicy::max_batch_bytes`] bytes (`force: false`: cut full batches only), when
//! its oldest event is older than [`FlushPolicy::max_batch_age`], or after
//! [`Scheduler::handle_flush`] (`force: true`: cut the partial tail too).
//!
//! After returning `FormBatches` the scheduler does not return it again until
//! [`Scheduler::handle_backlog`] reports a *different* backlog (or a new flush): the
//! caller reports the backlog after every cut, and a store that could not cut anything
//! reports the same numbers, which must not turn into a busy loop.
//!
//! # Sending
//!
//! [`Action::Send`] is returned while a formed batch is waiting
//! ([`Scheduler::handle_queue`]), fewer than [`FlushPolicy::max_in_flight`] batches are
//! in flight, the network is available and no backoff wait is running.
//!
//! # Backoff
//!
//! Every [`UploadOutcome::Retry`] and [`UploadOutcome::TransportError`] increments the
//! count of consecutive failures `n` and starts a wait of full jitter
//! `uniform(0, min(cap, base * 2^(n-1)))` (exponent saturating, never overflowing). A
//! `Retry { after }` additionally sets a *server* wait of `after`, so the wait is at
//! least what the server asked for. [`UploadOutcome::Accepted`] resets the failure
//! count and the jittered wait; [`UploadOutcome::Rejected`] touches neither (the server
//! works; the store drops that batch).
//!
//! [`UploadOutcome::Refused`] (the relay refused the batch for a reason that may be its
//! own fault — bad credentials, an unknown app, a block, a reason this version does not
//! know; the batch is kept) starts a long wait of its own ([`RefusalPolicy`]): the
//! `n`-th consecutive refusal waits `c/2 + uniform(0, c/2)` with
//! `c = min(cap, base · 2^(n-1))`, so never less than half the ceiling. Like a server
//! wait it is not cut short by a flush or the network; `Accepted` resets the count.
//!
//! A flush, or the network coming back, cancels the jittered wait (try now) but never
//! the server wait. The scheduler never gives up: there is no "drop after N failures".
//! Jitter comes from a seeded [`SmallRng`], so a seed reproduces a run.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tern_protocol::IngestOutcome;

/// When to cut batches and how many to have in flight.
///
/// Build from [`Default`] and the `with_*` setters:
/// `FlushPolicy::default().with_max_batch_events(50)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushPolicy {
    /// Cut when the unbatched backlog holds this many events (default 100). `0` acts
    /// as `1`.
    pub max_batch_events: u32,
    /// Cut when the unbatched backlog holds this many encoded bytes (default 256 KiB).
    pub max_batch_bytes: u64,
    /// Cut everything, partial tail included, once the oldest unbatched event is older
    /// than this (default 30 s).
    pub max_batch_age: Duration,
    /// At most this many batches in flight at once (default 1). `0` acts as `1`.
    pub max_in_flight: usize,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            max_batch_events: 100,
            max_batch_bytes: 256 * 1024,
            max_batch_age: Duration::from_secs(30),
            max_in_flight: 1,
        }
    }
}

impl FlushPolicy {
    /// Sets [`FlushPolicy::max_batch_events`].
    #[must_use]
    pub fn with_max_batch_events(mut self, events: u32) -> Self {
        self.max_batch_events = events;
        self
    }

    /// Sets [`FlushPolicy::max_batch_bytes`].
    #[must_use]
    pub fn with_max_batch_bytes(mut self, bytes: u64) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Sets [`FlushPolicy::max_batch_age`].
    #[must_use]
    pub fn with_max_batch_age(mut self, age: Duration) -> Self {
        self.max_batch_age = age;
        self
    }

    /// Sets [`FlushPolicy::max_in_flight`].
    #[must_use]
    pub fn with_max_in_flight(mut self, batches: usize) -> Self {
        self.max_in_flight = batches;
        self
    }
}

/// Exponential backoff with full jitter after failed uploads.
///
/// The `n`-th consecutive failure waits `uniform(0, min(cap, base * 2^(n-1)))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The ceiling of the first wait (default 1 s).
    pub base: Duration,
    /// The largest ceiling any wait can have (default 5 min). Server `after` waits are
    /// not capped by it.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(5 * 60),
        }
    }
}

impl RetryPolicy {
    /// Sets [`RetryPolicy::base`].
    #[must_use]
    pub fn with_base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// Sets [`RetryPolicy::cap`].
    #[must_use]
    pub fn with_cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// The ceiling of the jittered wait after `failures` consecutive failures:
    /// `min(cap, base * 2^(failures-1))`, saturating; zero for `failures == 0`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let Some(exp) = failures.checked_sub(1) else {
            return Duration::ZERO;
        };
        let scaled = 1u32
            .checked_shl(exp)
            .and_then(|factor| self.base.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        scaled.min(self.cap)
    }
}

/// The wait after refusals that may be the server's fault (`unauthorized`, `blocked`,
/// an unknown reason): long, jittered, capped. The `n`-th consecutive refusal waits
/// `c/2 + uniform(0, c/2)` where `c = min(cap, base · 2^(n-1))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusalPolicy {
    /// The ceiling of the first wait (default 60 s).
    pub base: Duration,
    /// The largest ceiling (default 1 hour).
    pub cap: Duration,
}

impl Default for RefusalPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(60),
            cap: Duration::from_secs(3600),
        }
    }
}

impl RefusalPolicy {
    /// A policy with this first ceiling and cap (`cap` at least `base`).
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
        }
    }

    /// The ceiling after `refusals` consecutive refusals (zero for none).
    pub fn ceiling(&self, refusals: u32) -> Duration {
        RetryPolicy {
            base: self.base,
            cap: self.cap,
        }
        .ceiling(refusals)
    }

    /// The wait after `refusals` consecutive refusals for a uniform `draw` in
    /// `[0, 1]`: between half the ceiling and the ceiling.
    pub fn wait(&self, refusals: u32, draw: f64) -> Duration {
        let half = self.ceiling(refusals) / 2;
        let jitter =
            Duration::try_from_secs_f64(half.as_secs_f64() * draw.clamp(0.0, 1.0)).unwrap_or(half);
        half.saturating_add(jitter.min(half))
    }
}

/// How one in-flight upload ended, as far as the scheduler cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The relay took the batch durably; the store deletes it.
    Accepted,
    /// The relay asked to resend the same batch no earlier than `after`.
    Retry {
        /// The server's `after_ms`: the least time to wait.
        after: Duration,
    },
    /// The relay refused the batch for a reason that is the batch's own fault
    /// (`RejectReason::is_request_fault`); the store drops it. No backoff.
    Rejected,
    /// The relay refused the batch for a reason that may be the server's fault
    /// (credentials, unknown app, a block, an unknown reason): the store keeps it and
    /// the scheduler waits long ([`RefusalPolicy`]) before the next send.
    Refused,
    /// No usable answer (connection failure, timeout, unknown outcome): back off and
    /// resend the same batch.
    TransportError,
}

impl From<&IngestOutcome> for UploadOutcome {
    /// Maps a relay's answer. A rejection drops the batch only for a reason that is the
    /// batch's own fault; any other reason keeps it ([`UploadOutcome::Refused`]). An
    /// outcome this version does not know is treated as a transport error: keep the
    /// batch and back off (protocol §6.1).
    fn from(outcome: &IngestOutcome) -> Self {
        match outcome {
            IngestOutcome::Accepted { .. } => Self::Accepted,
            IngestOutcome::Retry { after_ms } => Self::Retry {
                after: Duration::from_millis(*after_ms),
            },
            IngestOutcome::Rejected { reason, .. } if reason.is_request_fault() => Self::Rejected,
            IngestOutcome::Rejected { .. } => Self::Refused,
            _ => Self::TransportError,
        }
    }
}

/// What the runtime should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Group unbatched events into batches, then report
    /// [`Scheduler::handle_backlog`] and [`Scheduler::handle_queue`].
    FormBatches {
        /// Cut the partial tail too (age or flush); otherwise cut full batches only.
        force: bool,
    },
    /// Put one formed batch in flight, then report [`Scheduler::handle_sent`] and,
    /// when it ends, [`Scheduler::handle_outcome`].
    Send,
}

/// Counters and state for health reports and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchedulerStats {
    /// Failures (`Retry` or `TransportError`) since the last `Accepted`.
    pub consecutive_failures: u32,
    /// All `Retry` and `TransportError` outcomes ever (the `retried` health counter).
    pub retries_total: u64,
    /// All `Accepted` outcomes ever.
    pub accepted_total: u64,
    /// All `Rejected` outcomes ever.
    pub rejected_total: u64,
    /// All `Refused` outcomes ever.
    pub refused_total: u64,
    /// `Refused` outcomes since the last `Accepted`.
    pub consecutive_refusals: u32,
    /// No send before this instant (the later of the jittered and the server wait).
    pub blocked_until: Option<Instant>,
    /// Batches in flight.
    pub in_flight: usize,
    /// Formed batches waiting to be sent.
    pub ready_batches: usize,
    /// Whether the network was last reported available.
    pub online: bool,
}

/// The upload scheduler. See the [module docs](self) for the rules.
#[derive(Debug)]
pub struct Scheduler {
    flush: FlushPolicy,
    retry: RetryPolicy,
    refusal: RefusalPolicy,
    rng: SmallRng,

    backlog_events: u64,
    backlog_bytes: u64,
    backlog_oldest: Option<Instant>,
    /// A cut was returned and the backlog has not changed since.
    cut_issued: bool,
    /// A flush asked for a forced cut that has not been returned yet.
    flush_pending: bool,

    ready: usize,
    in_flight: usize,
    online: bool,

    consecutive_failures: u32,
    /// End of the jittered wait; cancelled by a flush or the network coming back.
    backoff_until: Option<Instant>,
    /// End of the server's `Retry { after }` wait; never cancelled.
    server_until: Option<Instant>,

    retries_total: u64,
    accepted_total: u64,
    rejected_total: u64,
    refused_total: u64,
    consecutive_refusals: u32,

    /// The latest `now` seen, so deadlines already due report as "now".
    last_now: Option<Instant>,
}

impl Scheduler {
    /// A scheduler with an empty backlog, nothing queued or in flight, and the network
    /// assumed available (report [`Scheduler::handle_network`] if it is not).
    /// `rng_seed` seeds the jitter.
    pub fn new(flush: FlushPolicy, retry: RetryPolicy, rng_seed: u64) -> Self {
        Self {
            flush,
            retry,
            refusal: RefusalPolicy::default(),
            rng: SmallRng::seed_from_u64(rng_seed),
            backlog_events: 0,
            backlog_bytes: 0,
            backlog_oldest: None,
            cut_issued: false,
            flush_pending: false,
            ready: 0,
            in_flight: 0,
            online: true,
            consecutive_failures: 0,
            backoff_until: None,
            server_until: None,
            retries_total: 0,
            accepted_total: 0,
            rejected_total: 0,
            refused_total: 0,
            consecutive_refusals: 0,
            last_now: None,
        }
    }

    /// Sets the wait after refusals that may be the server's fault.
    #[must_use]
    pub fn with_refusal(mut self, refusal: RefusalPolicy) -> Self {
        self.refusal = refusal;
        self
    }

    /// The unbatched backlog as now persisted (absolute values, not deltas): its event
    /// count, encoded bytes and the time its oldest event was tracked.
    pub fn handle_backlog(
        &mut self,
        events: u64,
        bytes: u64,
        oldest: Option<Instant>,
        now: Instant,
    ) {
        self.observe(now);
        let changed = (events, bytes, oldest)
            != (self.backlog_events, self.backlog_bytes, self.backlog_oldest);
        self.backlog_events = events;
        self.backlog_bytes = bytes;
        self.backlog_oldest = oldest;
        if changed {
            self.cut_issued = false;
        }
        if self.backlog_is_empty() {
            self.flush_pending = false;
        }
    }

    /// The number of formed batches waiting to be sent (not in flight).
    pub fn handle_queue(&mut self, ready_batches: usize, now: Instant) {
        self.observe(now);
        self.ready = ready_batches;
    }

    /// The app called `flush()` or went to the background: cut everything
    /// (`force: true`) and send now, cancelling a jittered wait. A server
    /// `Retry { after }` wait still holds.
    pub fn handle_flush(&mut self, now: Instant) {
        self.observe(now);
        self.cut_issued = false;
        self.flush_pending = !self.backlog_is_empty();
        self.backoff_until = None;
        tracing::debug!("flush requested");
    }

    /// Network availability changed. Coming back cancels a jittered wait (a server
    /// wait still holds).
    pub fn handle_network(&mut self, available: bool, now: Instant) {
        self.observe(now);
        if available && !self.online {
            self.backoff_until = None;
            tracing::debug!("network back");
        }
        self.online = available;
    }

    /// One batch went in flight (it no longer counts as waiting).
    pub fn handle_sent(&mut self, now: Instant) {
        self.observe(now);
        self.in_flight = self.in_flight.saturating_add(1);
        self.ready = self.ready.saturating_sub(1);
    }

    /// One in-flight batch finished with `outcome`.
    pub fn handle_outcome(&mut self, outcome: UploadOutcome, now: Instant) {
        self.observe(now);
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            UploadOutcome::Accepted => {
                self.accepted_total = self.accepted_total.saturating_add(1);
                self.consecutive_failures = 0;
                self.consecutive_refusals = 0;
                self.backoff_until = None;
            }
            UploadOutcome::Rejected => {
                self.rejected_total = self.rejected_total.saturating_add(1);
            }
            UploadOutcome::Refused => {
                self.refused_total = self.refused_total.saturating_add(1);
                self.consecutive_refusals = self.consecutive_refusals.saturating_add(1);
                let draw = self.rng.random_range(0.0..=1.0);
                let wait = self.refusal.wait(self.consecutive_refusals, draw);
                let until = saturating_deadline(now, wait);
                self.server_until = Some(self.server_until.map_or(until, |u| u.max(until)));
                tracing::debug!(
                    refusals = self.consecutive_refusals,
                    wait_ms = wait.as_millis() as u64,
                    "batch refused, waiting"
                );
            }
            UploadOutcome::Retry { after } => {
                self.fail(now);
                let until = saturating_deadline(now, after);
                self.server_until = Some(self.server_until.map_or(until, |u| u.max(until)));
            }
            UploadOutcome::TransportError => self.fail(now),
        }
    }

    /// A relay asked to slow down (a `Throttle` push notice): no send before
    /// `now + after`, like a server `Retry { after }` but without a failed send.
    pub fn handle_pause(&mut self, after: Duration, now: Instant) {
        self.observe(now);
        let until = saturating_deadline(now, after);
        self.server_until = Some(self.server_until.map_or(until, |u| u.max(until)));
    }

    /// The next thing to do at `now`, or `None`. Cutting comes before sending.
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        self.observe(now);
        if let Some(force) = self.cut_due(now) {
            self.cut_issued = true;
            if force {
                self.flush_pending = false;
            }
            return Some(Action::FormBatches { force });
        }
        if self.send_possible() && self.blocked_until().is_none_or(|until| until <= now) {
            return Some(Action::Send);
        }
        None
    }

    /// When [`Scheduler::poll`] may next return `Some` without further input: the age
    /// deadline of the backlog or the end of a backoff wait; the latest `now` seen if
    /// something is due already; `None` if only new input can make progress.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Every input that can make something pending carries a `now`.
        let last = self.last_now?;
        let cut = if self.cut_issued || self.backlog_is_empty() {
            None
        } else if self.flush_pending || self.count_trigger() {
            Some(last)
        } else {
            self.age_deadline()
        };
        let earliest = match (cut, self.can_send_at()) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(earliest.max(last))
    }

    /// Counters and state.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            consecutive_failures: self.consecutive_failures,
            retries_total: self.retries_total,
            accepted_total: self.accepted_total,
            rejected_total: self.rejected_total,
            refused_total: self.refused_total,
            consecutive_refusals: self.consecutive_refusals,
            blocked_until: self.blocked_until(),
            in_flight: self.in_flight,
            ready_batches: self.ready,
            online: self.online,
        }
    }

    fn observe(&mut self, now: Instant) {
        self.last_now = Some(self.last_now.map_or(now, |last| last.max(now)));
    }

    fn backlog_is_empty(&self) -> bool {
        self.backlog_events == 0 && self.backlog_bytes == 0
    }

    fn count_trigger(&self) -> bool {
        self.backlog_events >= u64::from(self.flush.max_batch_events.max(1))
            || self.backlog_bytes >= self.flush.max_batch_bytes
    }

    fn age_deadline(&self) -> Option<Instant> {
        self.backlog_oldest
            .map(|oldest| saturating_deadline(oldest, self.flush.max_batch_age))
    }

    /// `Some(force)` if a cut is due at `now`.
    fn cut_due(&self, now: Instant) -> Option<bool> {
        if self.cut_issued || self.backlog_is_empty() {
            return None;
        }
        let aged = self.age_deadline().is_some_and(|at| at <= now);
        if self.flush_pending || aged {
            Some(true)
        } else if self.count_trigger() {
            Some(false)
        } else {
            None
        }
    }

    fn blocked_until(&self) -> Option<Instant> {
        match (self.backoff_until, self.server_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// A batch is waiting, the network is up and a slot is free (backoff aside).
    fn send_possible(&self) -> bool {
        self.ready > 0 && self.online && self.in_flight < self.flush.max_in_flight.max(1)
    }

    /// When a send may happen if nothing else changes; `None` if it needs new input
    /// (a batch, a free slot, the network).
    fn can_send_at(&self) -> Option<Instant> {
        if !self.send_possible() {
            return None;
        }
        let last = self.last_now?;
        Some(self.blocked_until().map_or(last, |until| until.max(last)))
    }

    fn fail(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.retries_total = self.retries_total.saturating_add(1);
        let ceiling = self.retry.ceiling(self.consecutive_failures);
        let ceiling_nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let wait = Duration::from_nanos(self.rng.random_range(0..=ceiling_nanos));
        self.backoff_until = Some(saturating_deadline(now, wait));
        tracing::debug!(
            failures = self.consecutive_failures,
            wait_ms = wait.as_millis() as u64,
            "upload failed, backing off"
        );
    }
}

/// `at + wait`, or the latest representable instant short of it: a wait too long for
/// the platform's `Instant` is shortened rather than panicking.
fn saturating_deadline(at: Instant, wait: Duration) -> Instant {
    let mut wait = wait;
    loop {
        if let Some(deadline) = at.checked_add(wait) {
            return deadline;
        }
        wait /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A virtual clock: a fixed base plus offsets.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Self {
            Self(Instant::now())
        }
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn sched() -> Scheduler {
        Scheduler::new(FlushPolicy::default(), RetryPolicy::default(), 7)
    }

    const CUT: Option<Action> = Some(Action::FormBatches { force: false });
    const CUT_ALL: Option<Action> = Some(Action::FormBatches { force: true });
    const SEND: Option<Action> = Some(Action::Send);

    #[test]
    fn idle_scheduler_does_nothing() {
        let c = Clock::new();
        let mut s = sched();
        assert_eq!(s.poll(c.at(0)), None);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn cuts_on_event_count() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_backlog(99, 1000, Some(c.at(0)), c.at(0));
        assert_eq!(s.poll(c.at(1)), None);
        assert_eq!(s.poll_timeout(), Some(c.at(30_000)));
        s.handle_backlog(100, 1010, Some(c.at(0)), c.at(2));
        assert_eq!(s.poll(c.at(2)), CUT);
        // No spin: the same answer is not repeated until the backlog changes.
        assert_eq!(s.poll(c.at(2)), None);
        // The store cut one batch and left nothing.
        s.handle_backlog(0, 0, None, c.at(3));
        s.handle_queue(1, c.at(3));
        assert_eq!(s.poll(c.at(3)), SEND);
    }

    #[test]
    fn cuts_on_bytes() {
        let c = Clock::new();
        let mut s = Scheduler::new(
            FlushPolicy::default().with_max_batch_bytes(1000),
            RetryPolicy::default(),
            1,
        );
        s.handle_backlog(3, 999, Some(c.at(0)), c.at(0));
        assert_eq!(s.poll(c.at(0)), None);
        s.handle_backlog(4, 1000, Some(c.at(0)), c.at(1));
        assert_eq!(s.poll(c.at(1)), CUT);
    }

    #[test]
    fn cuts_everything_on_age() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_backlog(1, 10, Some(c.at(500)), c.at(500));
        assert_eq!(s.poll(c.at(500)), None);
        assert_eq!(s.poll_timeout(), Some(c.at(30_500)));
        assert_eq!(s.poll(c.at(30_499)), None);
        assert_eq!(s.poll(c.at(30_500)), CUT_ALL);
        assert_eq!(s.poll(c.at(30_501)), None);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn unchanged_backlog_does_not_rearm_a_cut() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_backlog(150, 10, Some(c.at(0)), c.at(0));
        assert_eq!(s.poll(c.at(0)), CUT);
        // The store could not cut (say, an I/O error) and reports the same numbers.
        s.handle_backlog(150, 10, Some(c.at(0)), c.at(1));
        assert_eq!(s.poll(c.at(1)), None);
        assert_eq!(s.poll_timeout(), None);
        // A new event re-arms it.
        s.handle_backlog(151, 11, Some(c.at(0)), c.at(2));
        assert_eq!(s.poll(c.at(2)), CUT);
        // The tail left after a non-forced cut waits for its age.
        s.handle_backlog(51, 5, Some(c.at(1)), c.at(3));
        assert_eq!(s.poll(c.at(3)), None);
        assert_eq!(s.poll_timeout(), Some(c.at(30_001)));
    }

    #[test]
    fn flush_forces_a_cut_and_a_send() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_backlog(3, 30, Some(c.at(0)), c.at(0));
        s.handle_flush(c.at(10));
        assert_eq!(s.poll_timeout(), Some(c.at(10)));
        assert_eq!(s.poll(c.at(10)), CUT_ALL);
        assert_eq!(s.poll(c.at(10)), None);
        s.handle_backlog(0, 0, None, c.at(11));
        s.handle_queue(1, c.at(11));
        assert_eq!(s.poll(c.at(11)), SEND);
    }

    #[test]
    fn flush_with_empty_backlog_only_sends() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_flush(c.at(0));
        assert_eq!(s.poll(c.at(0)), None);
        s.handle_queue(2, c.at(0));
        assert_eq!(s.poll(c.at(0)), SEND);
    }

    #[test]
    fn flush_during_a_cut_applies_to_the_reported_tail() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_backlog(120, 10, Some(c.at(0)), c.at(0));
        assert_eq!(s.poll(c.at(0)), CUT);
        s.handle_flush(c.at(1));
        assert_eq!(s.poll(c.at(1)), CUT_ALL);
        s.handle_backlog(0, 0, None, c.at(2));
        assert_eq!(s.poll(c.at(2)), None);
    }

    #[test]
    fn respects_max_in_flight() {
        let c = Clock::new();
        let mut s = Scheduler::new(
            FlushPolicy::default().with_max_in_flight(2),
            RetryPolicy::default(),
            1,
        );
        s.handle_queue(5, c.at(0));
        assert_eq!(s.poll(c.at(0)), SEND);
        s.handle_sent(c.at(0));
        assert_eq!(s.poll(c.at(0)), SEND);
        s.handle_sent(c.at(0));
        assert_eq!(s.poll(c.at(0)), None);
        assert_eq!(s.poll_timeout(), None, "only an outcome can free a slot");
        assert_eq!(s.stats().ready_batches, 3);
        s.handle_outcome(UploadOutcome::Accepted, c.at(5));
        assert_eq!(s.poll(c.at(5)), SEND);
    }

    #[test]
    fn zero_max_in_flight_acts_as_one() {
        let c = Clock::new();
        let mut s = Scheduler::new(
            FlushPolicy::default().with_max_in_flight(0),
            RetryPolicy::default(),
            1,
        );
        s.handle_queue(1, c.at(0));
        assert_eq!(s.poll(c.at(0)), SEND);
    }

    #[test]
    fn network_down_holds_sends_but_not_cuts() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_network(false, c.at(0));
        s.handle_queue(1, c.at(0));
        s.handle_backlog(100, 10, Some(c.at(0)), c.at(0));
        assert_eq!(s.poll(c.at(0)), CUT);
        assert_eq!(s.poll(c.at(0)), None);
        assert_eq!(s.poll_timeout(), None);
        s.handle_network(true, c.at(1));
        assert_eq!(s.poll(c.at(1)), SEND);
    }

    #[test]
    fn network_back_cancels_transport_backoff() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_queue(1, c.at(0));
        for _ in 0..5 {
            s.handle_sent(c.at(0));
            s.handle_outcome(UploadOutcome::TransportError, c.at(0));
            s.handle_queue(1, c.at(0));
        }
        let blocked = s.stats().blocked_until.expect("backing off");
        assert!(blocked > c.at(0));
        s.handle_network(false, c.at(1));
        s.handle_network(true, c.at(2));
        assert_eq!(s.stats().blocked_until, None);
        assert_eq!(s.poll(c.at(2)), SEND);
        // The failure count is kept: only Accepted resets it.
        assert_eq!(s.stats().consecutive_failures, 5);
    }

    #[test]
    fn network_up_when_already_up_changes_nothing() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_queue(1, c.at(0));
        s.handle_sent(c.at(0));
        s.handle_outcome(UploadOutcome::TransportError, c.at(0));
        let blocked = s.stats().blocked_until;
        s.handle_network(true, c.at(0));
        assert_eq!(s.stats().blocked_until, blocked);
    }

    #[test]
    fn backoff_ceiling_grows_then_caps_and_saturates() {
        let r = RetryPolicy::default();
        assert_eq!(r.ceiling(0), Duration::ZERO);
        assert_eq!(r.ceiling(1), Duration::from_secs(1));
        assert_eq!(r.ceiling(2), Duration::from_secs(2));
        assert_eq!(r.ceiling(9), Duration::from_secs(256));
        assert_eq!(r.ceiling(10), Duration::from_secs(300));
        assert_eq!(r.ceiling(33), Duration::from_secs(300));
        assert_eq!(r.ceiling(u32::MAX), Duration::from_secs(300));
        let huge = RetryPolicy::default()
            .with_base(Duration::MAX)
            .with_cap(Duration::MAX);
        assert_eq!(huge.ceiling(3), Duration::MAX);
    }

    /// Fails `n` times in a row at `now` and returns each wait.
    fn waits(seed: u64, n: usize) -> Vec<Duration> {
        let c = Clock::new();
        let mut s = Scheduler::new(FlushPolicy::default(), RetryPolicy::default(), seed);
        (0..n)
            .map(|_| {
                s.handle_queue(1, c.at(0));
                s.handle_sent(c.at(0));
                s.handle_outcome(UploadOutcome::TransportError, c.at(0));
                s.stats()
                    .blocked_until
                    .map_or(Duration::ZERO, |u| u - c.at(0))
            })
            .collect()
    }

    #[test]
    fn jitter_is_within_bounds_and_deterministic() {
        let r = RetryPolicy::default();
        for seed in 0..50 {
            let w = waits(seed, 40);
            assert_eq!(w, waits(seed, 40), "same seed, same waits");
            for (i, wait) in w.iter().enumerate() {
                assert!(*wait <= r.ceiling(i as u32 + 1), "seed {seed} failure {i}");
            }
        }
        assert_ne!(waits(1, 20), waits(2, 20));
        // Full jitter spreads late waits over (0, cap]: not all tiny, not all equal.
        let late: Vec<_> = (0..50).map(|seed| waits(seed, 12)[11]).collect();
        assert!(late.iter().any(|w| *w > Duration::from_secs(150)));
        assert!(late.iter().any(|w| *w < Duration::from_secs(150)));
    }

    #[test]
    fn backoff_blocks_sends_until_it_ends() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_queue(1, c.at(0));
        assert_eq!(s.poll(c.at(0)), SEND);
        s.handle_sent(c.at(0));
        s.handle_outcome(UploadOutcome::TransportError, c.at(100));
        s.handle_queue(1, c.at(100));
        let until = s.stats().blocked_until.expect("blocked");
        if until > c.at(100) {
            assert_eq!(s.poll(c.at(100)), None);
        }
        assert_eq!(s.poll_timeout(), Some(until.max(c.at(100))));
        assert_eq!(s.poll(until), SEND);
    }

    #[test]
    fn server_after_is_honoured_even_against_flush_and_network() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_queue(1, c.at(0));
        s.handle_sent(c.at(0));
        s.handle_outcome(
            UploadOutcome::Retry {
                after: Duration::from_secs(60),
            },
            c.at(0),
        );
        s.handle_queue(1, c.at(0));
        assert!(s.stats().blocked_until.unwrap() >= c.at(60_000));
        s.handle_flush(c.at(1_000));
        s.handle_network(false, c.at(2_000));
        s.handle_network(true, c.at(3_000));
        assert_eq!(s.stats().blocked_until, Some(c.at(60_000)));
        assert_eq!(s.poll(c.at(59_999)), None);
        assert_eq!(s.poll_timeout(), Some(c.at(60_000)));
        assert_eq!(s.poll(c.at(60_000)), SEND);
        assert_eq!(s.stats().retries_total, 1);
    }

    #[test]
    fn server_after_shorter_than_jitter_keeps_the_jitter() {
        let c = Clock::new();
        let mut s = Scheduler::new(
            FlushPolicy::default(),
            RetryPolicy::default()
                .with_base(Duration::from_secs(100))
                .with_cap(Duration::from_secs(100)),
            3,
        );
        s.handle_queue(1, c.at(0));
        s.handle_sent(c.at(0));
        s.handle_outcome(
            UploadOutcome::Retry {
                after: Duration::from_millis(1),
            },
            c.at(0),
        );
        let until = s.stats().blocked_until.unwrap();
        assert!(until >= c.at(1));
        // A flush cancels the jittered part only.
        s.handle_flush(c.at(0));
        assert_eq!(s.stats().blocked_until, Some(c.at(1)));
    }

    #[test]
    fn huge_server_after_does_not_panic() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_queue(1, c.at(0));
        s.handle_sent(c.at(0));
        s.handle_outcome(
            UploadOutcome::Retry {
                after: Duration::MAX,
            },
            c.at(0),
        );
        assert!(s.stats().blocked_until.unwrap() > c.at(1_000_000_000));
        assert_eq!(s.poll(c.at(1)), None);
    }

    #[test]
    fn accepted_resets_failures() {
        let c = Clock::new();
        let mut s = sched();
        for _ in 0..6 {
            s.handle_queue(1, c.at(0));
            s.handle_sent(c.at(0));
            s.handle_outcome(UploadOutcome::TransportError, c.at(0));
        }
        assert_eq!(s.stats().consecutive_failures, 6);
        s.handle_queue(1, c.at(0));
        s.handle_flush(c.at(0));
        assert_eq!(s.poll(c.at(0)), SEND);
        s.handle_sent(c.at(0));
        s.handle_outcome(UploadOutcome::Accepted, c.at(10));
        let st = s.stats();
        assert_eq!(st.consecutive_failures, 0);
        assert_eq!(st.blocked_until, None);
        assert_eq!(st.retries_total, 6);
        assert_eq!(st.accepted_total, 1);
        // The next failure starts from the base again.
        s.handle_queue(1, c.at(10));
        s.handle_sent(c.at(10));
        s.handle_outcome(UploadOutcome::TransportError, c.at(10));
        assert!(s.stats().blocked_until.unwrap() <= c.at(1_010));
    }

    #[test]
    fn rejected_does_not_back_off() {
        let c = Clock::new();
        let mut s = sched();
        s.handle_queue(2, c.at(0));
        s.handle_sent(c.at(0));
        s.handle_outcome(UploadOutcome::Rejected, c.at(1));
        let st = s.stats();
        assert_eq!(st.consecutive_failures, 0);
        assert_eq!(st.blocked_until, None);
        assert_eq!(st.rejected_total, 1);
        assert_eq!(s.poll(c.at(1)), SEND);
    }

    #[test]
    fn refused_keeps_waiting_long_through_flushes_and_network_changes() {
        let c = Clock::new();
        let policy = RefusalPolicy::new(Duration::from_secs(60), Duration::from_secs(3600));
        let mut s = sched().with_refusal(policy);
        let mut at = 0;
        let mut ceiling = Duration::from_secs(60);
        for n in 1..=8u32 {
            s.handle_queue(1, c.at(at));
            assert_eq!(s.poll(c.at(at)), SEND, "refusal {n}");
            s.handle_sent(c.at(at));
            s.handle_outcome(UploadOutcome::Refused, c.at(at));
            let st = s.stats();
            assert_eq!(
                (st.refused_total, st.consecutive_refusals),
                (u64::from(n), n)
            );
            assert_eq!(st.consecutive_failures, 0, "not a transport failure");
            let wait = st.blocked_until.unwrap() - c.at(at);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{n}: {wait:?} vs {ceiling:?}"
            );
            // A flush and the network coming back do not cut it short.
            s.handle_flush(c.at(at));
            s.handle_network(false, c.at(at));
            s.handle_network(true, c.at(at));
            assert_eq!(s.stats().blocked_until, Some(c.at(at) + wait));
            assert_eq!(s.poll(c.at(at)), None);
            at += u64::try_from(wait.as_millis()).unwrap() + 1;
            ceiling = (ceiling * 2).min(Duration::from_secs(3600));
        }
        // Accepted resets the count: the next refusal starts from the base again.
        s.handle_queue(1, c.at(at));
        s.handle_sent(c.at(at));
        s.handle_outcome(UploadOutcome::Accepted, c.at(at));
        assert_eq!(s.stats().consecutive_refusals, 0);
        s.handle_queue(1, c.at(at));
        s.handle_sent(c.at(at));
        s.handle_outcome(UploadOutcome::Refused, c.at(at));
        assert!(s.stats().blocked_until.unwrap() <= c.at(at + 60_000));
    }

    #[test]
    fn rejections_drop_only_for_faults_of_the_batch() {
        use tern_protocol::RejectReason;
        let rejected = |reason: RejectReason| IngestOutcome::Rejected {
            reason,
            detail: String::new(),
        };
        for (reason, outcome) in [
            (RejectReason::Malformed, UploadOutcome::Rejected),
            (RejectReason::TooLarge, UploadOutcome::Rejected),
            (RejectReason::Invalid, UploadOutcome::Rejected),
            (RejectReason::AppMismatch, UploadOutcome::Rejected),
            (RejectReason::Unauthorized, UploadOutcome::Refused),
            (RejectReason::Blocked, UploadOutcome::Refused),
            (RejectReason::UnsupportedMessage, UploadOutcome::Refused),
            (
                RejectReason::from("some_new_reason"),
                UploadOutcome::Refused,
            ),
        ] {
            assert_eq!(
                UploadOutcome::from(&rejected(reason.clone())),
                outcome,
                "{reason}"
            );
        }
    }

    #[test]
    fn rejected_keeps_an_existing_backoff() {
        let c = Clock::new();
        let mut s = Scheduler::new(
            FlushPolicy::default().with_max_in_flight(2),
            RetryPolicy::default(),
            1,
        );
        s.handle_queue(2, c.at(0));
        s.handle_sent(c.at(0));
        s.handle_sent(c.at(0));
        s.handle_outcome(
            UploadOutcome::Retry {
                after: Duration::from_secs(5),
            },
            c.at(0),
        );
        s.handle_outcome(UploadOutcome::Rejected, c.at(1));
        assert_eq!(s.stats().consecutive_failures, 1);
        assert!(s.stats().blocked_until.unwrap() >= c.at(5_000));
    }

    #[test]
    fn ingest_outcomes_map() {
        use tern_protocol::Durability;
        let accepted = IngestOutcome::Accepted {
            durability: Durability::Spooled,
        };
        assert_eq!(UploadOutcome::from(&accepted), UploadOutcome::Accepted);
        assert_eq!(
            UploadOutcome::from(&IngestOutcome::Retry { after_ms: 1500 }),
            UploadOutcome::Retry {
                after: Duration::from_millis(1500)
            }
        );
        assert_eq!(
            UploadOutcome::from(&IngestOutcome::Unknown),
            UploadOutcome::TransportError
        );
    }

    /// A day in the life: events trickle in, a burst fills a batch, the relay
    /// throttles, the network drops, the app goes to the background.
    #[test]
    fn scripted_scenario() {
        let c = Clock::new();
        let mut s = Scheduler::new(
            FlushPolicy::default()
                .with_max_batch_events(10)
                .with_max_batch_age(Duration::from_secs(30)),
            RetryPolicy::default(),
            42,
        );
        // t=0..5 s: five events, nothing due before the age deadline.
        for i in 0..5u64 {
            s.handle_backlog(i + 1, (i + 1) * 100, Some(c.at(0)), c.at(i * 1000));
            assert_eq!(s.poll(c.at(i * 1000)), None);
        }
        assert_eq!(s.poll_timeout(), Some(c.at(30_000)));
        // t=30 s: the age cut takes the partial batch.
        assert_eq!(s.poll(c.at(30_000)), CUT_ALL);
        s.handle_backlog(0, 0, None, c.at(30_001));
        s.handle_queue(1, c.at(30_001));
        assert_eq!(s.poll(c.at(30_001)), SEND);
        s.handle_sent(c.at(30_001));
        assert_eq!(s.poll(c.at(30_001)), None);
        assert_eq!(s.poll_timeout(), None);
        s.handle_outcome(UploadOutcome::Accepted, c.at(30_200));
        s.handle_queue(0, c.at(30_200));
        assert_eq!(s.poll(c.at(30_200)), None);

        // t=40 s: a burst of 25 events: two full batches, a tail of 5.
        s.handle_backlog(25, 2500, Some(c.at(40_000)), c.at(40_000));
        assert_eq!(s.poll(c.at(40_000)), CUT);
        s.handle_backlog(5, 500, Some(c.at(40_000)), c.at(40_001));
        s.handle_queue(2, c.at(40_001));
        assert_eq!(s.poll(c.at(40_001)), SEND);
        s.handle_sent(c.at(40_001));
        // The relay throttles for 10 s.
        s.handle_outcome(
            UploadOutcome::Retry {
                after: Duration::from_secs(10),
            },
            c.at(40_100),
        );
        s.handle_queue(2, c.at(40_100));
        assert_eq!(s.poll(c.at(40_100)), None);
        let until = s.stats().blocked_until.unwrap();
        assert!(until >= c.at(50_100));
        assert_eq!(s.poll_timeout(), Some(until));
        // The tail ages out while we wait: cutting is local and not blocked.
        assert_eq!(s.poll(c.at(70_000)), CUT_ALL);
        s.handle_backlog(0, 0, None, c.at(70_000));
        s.handle_queue(3, c.at(70_000));
        // By now the 10 s are over.
        assert_eq!(s.poll(c.at(70_000)), SEND);
        s.handle_sent(c.at(70_000));
        // The network drops mid-flight.
        s.handle_network(false, c.at(70_050));
        s.handle_outcome(UploadOutcome::TransportError, c.at(70_060));
        s.handle_queue(3, c.at(70_060));
        assert_eq!(s.stats().consecutive_failures, 2);
        assert_eq!(s.poll(c.at(80_000)), None);
        assert_eq!(s.poll_timeout(), None, "offline: wait for the network");
        // It comes back: the transport wait is cancelled, send right away.
        s.handle_network(true, c.at(90_000));
        assert_eq!(s.poll(c.at(90_000)), SEND);
        s.handle_sent(c.at(90_000));
        s.handle_outcome(UploadOutcome::Accepted, c.at(90_100));
        s.handle_queue(2, c.at(90_100));
        assert_eq!(s.stats().consecutive_failures, 0);
        // The app goes to the background with a fresh event: flush.
        s.handle_backlog(1, 100, Some(c.at(91_000)), c.at(91_000));
        s.handle_flush(c.at(91_500));
        assert_eq!(s.poll(c.at(91_500)), CUT_ALL);
        s.handle_backlog(0, 0, None, c.at(91_501));
        s.handle_queue(3, c.at(91_501));
        for _ in 0..3 {
            assert_eq!(s.poll(c.at(91_600)), SEND);
            s.handle_sent(c.at(91_600));
            assert_eq!(s.poll(c.at(91_600)), None);
            s.handle_outcome(UploadOutcome::Accepted, c.at(91_700));
        }
        assert_eq!(s.poll(c.at(91_700)), None);
        assert_eq!(s.poll_timeout(), None);
        let st = s.stats();
        assert_eq!((st.accepted_total, st.retries_total), (5, 2));
    }

    #[derive(Clone, Debug)]
    enum Input {
        Advance(u64),
        Backlog {
            events: u64,
            bytes: u64,
            age_ms: u64,
        },
        Queue(usize),
        Flush,
        Network(bool),
        Poll,
        Outcome(UploadOutcome),
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            (0u64..120_000).prop_map(Input::Advance),
            (0u64..300, 0u64..400_000, 0u64..60_000).prop_map(|(events, bytes, age_ms)| {
                Input::Backlog {
                    events,
                    bytes,
                    age_ms,
                }
            }),
            (0usize..5).prop_map(Input::Queue),
            Just(Input::Flush),
            any::<bool>().prop_map(Input::Network),
            Just(Input::Poll),
            Just(Input::Poll),
            Just(Input::Poll),
            prop_oneof![
                Just(UploadOutcome::Accepted),
                Just(UploadOutcome::Rejected),
                Just(UploadOutcome::Refused),
                Just(UploadOutcome::TransportError),
                (0u64..600_000).prop_map(|ms| UploadOutcome::Retry {
                    after: Duration::from_millis(ms)
                }),
            ]
            .prop_map(Input::Outcome),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold(
            seed in any::<u64>(),
            max_in_flight in 1usize..4,
            inputs in proptest::collection::vec(input(), 1..200),
        ) {
            let retry = RetryPolicy::default();
            let mut s = Scheduler::new(
                FlushPolicy::default().with_max_in_flight(max_in_flight),
                retry,
                seed,
            );
            let base = Instant::now();
            let mut now = base;
            // The latest `now` handed to the scheduler (advancing alone hands nothing).
            let mut given = base;
            let mut online = true;
            let mut in_flight = 0usize;
            let mut ready = 0usize;
            let mut largest_after = Duration::ZERO;
            for input in inputs {
                if matches!(input, Input::Outcome(UploadOutcome::Refused)) && in_flight > 0 {
                    largest_after = largest_after.max(RefusalPolicy::default().cap);
                }
                let hands_now = match input {
                    Input::Advance(_) => false,
                    Input::Outcome(_) => in_flight > 0,
                    _ => true,
                };
                if hands_now {
                    given = now;
                }
                match input {
                    Input::Advance(ms) => now += Duration::from_millis(ms),
                    Input::Backlog { events, bytes, age_ms } => {
                        let oldest = (events > 0).then(|| {
                            now.checked_sub(Duration::from_millis(age_ms)).unwrap_or(now)
                        });
                        s.handle_backlog(events, bytes, oldest, now);
                    }
                    Input::Queue(n) => {
                        ready = n;
                        s.handle_queue(n, now);
                    }
                    Input::Flush => s.handle_flush(now),
                    Input::Network(up) => {
                        online = up;
                        s.handle_network(up, now);
                    }
                    Input::Poll => {
                        let blocked = s.stats().blocked_until.is_some_and(|u| u > now);
                        match s.poll(now) {
                            Some(Action::Send) => {
                                prop_assert!(!blocked, "send while blocked");
                                prop_assert!(online, "send while offline");
                                prop_assert!(in_flight < max_in_flight, "send at max in flight");
                                prop_assert!(ready > 0, "send with nothing ready");
                                s.handle_sent(now);
                                in_flight += 1;
                                ready -= 1;
                            }
                            Some(Action::FormBatches { .. }) => {
                                // Not acting on it: asking again must not repeat it.
                                let again = s.poll(now);
                                prop_assert!(
                                    !matches!(again, Some(Action::FormBatches { .. })),
                                    "cut repeated"
                                );
                            }
                            None => {
                                // Nothing due now, so any deadline lies ahead.
                                if let Some(t) = s.poll_timeout() {
                                    prop_assert!(t > now, "timeout {:?} not after now", t - base);
                                }
                            }
                        }
                    }
                    Input::Outcome(outcome) => {
                        if in_flight == 0 {
                            continue;
                        }
                        in_flight -= 1;
                        if let UploadOutcome::Retry { after } = outcome {
                            largest_after = largest_after.max(after);
                        }
                        s.handle_outcome(outcome, now);
                        if let Some(until) = s.stats().blocked_until {
                            let limit = retry.cap.max(largest_after);
                            prop_assert!(until.saturating_duration_since(now) <= limit);
                        }
                    }
                }
                // Whatever is pending is never scheduled before the last `now`.
                if let Some(t) = s.poll_timeout() {
                    prop_assert!(t >= given);
                }
                let st = s.stats();
                prop_assert_eq!(st.in_flight, in_flight);
                prop_assert_eq!(st.ready_batches, ready);
            }
        }
    }

    #[test]
    fn a_pause_holds_sends_without_counting_a_failure() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(FlushPolicy::default(), RetryPolicy::default(), 1);
        s.handle_queue(1, t0);
        s.handle_pause(Duration::from_secs(2), t0);
        assert_eq!(s.poll(t0 + Duration::from_secs(1)), None);
        assert_eq!(s.poll(t0 + Duration::from_secs(2)), Some(Action::Send));
        assert_eq!(s.stats().consecutive_failures, 0);
        assert_eq!(s.stats().retries_total, 0);
    }
}
