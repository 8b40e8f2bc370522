//! Circuit breaker guarding the forwarder's calls to the backend.
//!
//! A sans-IO state machine: it never reads the clock, sleeps or does I/O. The runtime
//! asks for a permit before each backend call ([`Breaker::try_acquire`]), reports how the
//! call went ([`Breaker::handle_result`]), and wakes the breaker at
//! [`Breaker::poll_timeout`] through [`Breaker::handle_timeout`]. Every input carries
//! `now`, so tests drive it with a virtual clock.
//!
//! # States
//!
//! ```text
//!            error rate or slow-call rate over threshold
//!            (with at least `min_requests` results in the window)
//!   Closed ─────────────────────────────────────────────────────▶ Open{until}
//!     ▲                                                             │  ▲
//!     │ `probes_to_close` probe successes                 `open_for`│  │ a probe fails
//!     │ (window reset)                                     elapsed  ▼  │ (error or slow;
//!     └──────────────────────────────────────────────────────── HalfOpen  open time grows)
//! ```
//!
//! * **Closed** — every call is allowed. Results are counted in a rolling window of
//!   [`BreakerConfig::window`], kept as [`BUCKETS`] fixed buckets of counts (constant
//!   memory whatever the traffic). When a result arrives and the window holds at least
//!   `min_requests` results, the breaker opens if the share of errors reaches
//!   `error_rate_threshold` or the share of slow calls (latency at or above
//!   `slow_call_threshold`, successful or not) reaches `slow_rate_threshold`.
//! * **Open** — every call is rejected with the time left until the breaker probes. The
//!   open time starts at `open_for` and is multiplied by `open_growth` after each failed
//!   probe round, capped at `max_open_for`, so a backend that stays down is probed less
//!   and less often. The forwarder spools while the breaker is open.
//! * **HalfOpen** — entered lazily once the open time has elapsed (on the next call that
//!   carries a `now`). At most `half_open_probes` trial calls are in flight at once;
//!   the first probe that fails or is slow re-opens the breaker; `probes_to_close`
//!   successes close it with a fresh window.
//!
//! # Tickets
//!
//! An allowed permit carries a [`Ticket`], which must come back with the outcome (or
//! [`CallOutcome::Cancelled`] if the call was never made). A ticket remembers the state
//! period ("epoch") it was issued in. A result whose ticket predates the current state
//! — a call made while closed that completes while half-open, say — is counted in
//! [`BreakerStats::ignored_results`] but judges nothing: a slow call from before the
//! outage must neither re-open a breaker that is probing nor count as a probe success,
//! and it must not free a probe slot it never held. This is what keeps the number of
//! concurrent probes bounded even when results arrive late or out of order.
//!
//! # Operator overrides
//!
//! [`Override::ForceOpen`] rejects everything (`retry_in` = `open_for`);
//! [`Override::ForceClosed`] allows everything and never opens, but still counts results
//! so [`Breaker::stats`] stays meaningful. Clearing the override returns to automatic
//! behaviour from Closed with a fresh window.
//!
//! # Time
//!
//! The breaker keeps the latest `now` it has seen; an earlier `now` (a clock that went
//! backwards, or inputs handled out of order) is treated as that latest instant, so time
//! never runs backwards inside the state machine and nothing panics on huge gaps.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use tern_relay::backend::breaker::{Breaker, BreakerConfig, CallOutcome, Permit};
//!
//! let t0 = Instant::now();
//! let mut breaker = Breaker::new(BreakerConfig::default().with_min_requests(2), t0);
//! for _ in 0..2 {
//!     let Permit::Allowed(ticket) = breaker.try_acquire(t0) else { unreachable!() };
//!     let outcome = CallOutcome::Failure { latency: Duration::from_millis(3) };
//!     breaker.handle_result(ticket, outcome, t0);
//! }
//! assert!(matches!(breaker.try_acquire(t0), Permit::Rejected { .. }));
//! assert_eq!(breaker.state().as_metric(), 2);
//! ```

use std::time::{Duration, Instant};

/// Number of buckets the rolling window is divided into. Results age out one bucket at a
/// time, so the effective window is between `window × (BUCKETS − 1) / BUCKETS` and
/// `window`.
pub const BUCKETS: usize = 10;

/// Longest duration the breaker accepts for any setting (about ten years); longer values
/// are clamped so that deadline arithmetic cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Tuning of a [`Breaker`]. Build it from [`Default`] and the `with_*` setters.
///
/// [`Breaker::new`] never fails: out-of-range values are replaced (see each field). Use
/// [`BreakerConfig::validate`] to reject them instead, e.g. when loading a config file.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Length of the rolling window results are judged over. Default 10 s. Zero is
    /// replaced by the default.
    pub window: Duration,
    /// Results needed in the window before the breaker judges it. Default 20; zero
    /// behaves like 1.
    pub min_requests: u32,
    /// Share of failed calls (0.0–1.0) at or above which the breaker opens. Default 0.5.
    /// A value above 1.0 disables this criterion; NaN or ≤ 0 is replaced by the default.
    pub error_rate_threshold: f64,
    /// A call taking at least this long counts as slow. Default 2 s.
    pub slow_call_threshold: Duration,
    /// Share of slow calls at or above which the breaker opens. Default 0.5. A value
    /// above 1.0 disables this criterion; NaN or ≤ 0 is replaced by the default.
    pub slow_rate_threshold: f64,
    /// How long the breaker stays open before its first probe. Default 5 s.
    pub open_for: Duration,
    /// Factor the open time is multiplied by after each failed probe round. Default 2;
    /// 1 (or 0) disables growth.
    pub open_growth: u32,
    /// Cap on the grown open time. Default 60 s; never below `open_for`.
    pub max_open_for: Duration,
    /// Trial calls allowed in flight at once while half-open. Default 1; zero behaves
    /// like 1.
    pub half_open_probes: u32,
    /// Probe successes that close the breaker. Default 3; zero behaves like 1.
    pub probes_to_close: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_requests: 20,
            error_rate_threshold: 0.5,
            slow_call_threshold: Duration::from_secs(2),
            slow_rate_threshold: 0.5,
            open_for: Duration::from_secs(5),
            open_growth: 2,
            max_open_for: Duration::from_secs(60),
            half_open_probes: 1,
            probes_to_close: 3,
        }
    }
}

impl BreakerConfig {
    /// Sets [`BreakerConfig::window`].
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }
    /// Sets [`BreakerConfig::min_requests`].
    pub fn with_min_requests(mut self, n: u32) -> Self {
        self.min_requests = n;
        self
    }
    /// Sets [`BreakerConfig::error_rate_threshold`].
    pub fn with_error_rate_threshold(mut self, rate: f64) -> Self {
        self.error_rate_threshold = rate;
        self
    }
    /// Sets [`BreakerConfig::slow_call_threshold`].
    pub fn with_slow_call_threshold(mut self, latency: Duration) -> Self {
        self.slow_call_threshold = latency;
        self
    }
    /// Sets [`BreakerConfig::slow_rate_threshold`].
    pub fn with_slow_rate_threshold(mut self, rate: f64) -> Self {
        self.slow_rate_threshold = rate;
        self
    }
    /// Sets [`BreakerConfig::open_for`].
    pub fn with_open_for(mut self, open_for: Duration) -> Self {
        self.open_for = open_for;
        self
    }
    /// Sets [`BreakerConfig::open_growth`].
    pub fn with_open_growth(mut self, factor: u32) -> Self {
        self.open_growth = factor;
        self
    }
    /// Sets [`BreakerConfig::max_open_for`].
    pub fn with_max_open_for(mut self, max: Duration) -> Self {
        self.max_open_for = max;
        self
    }
    /// Sets [`BreakerConfig::half_open_probes`].
    pub fn with_half_open_probes(mut self, n: u32) -> Self {
        self.half_open_probes = n;
        self
    }
    /// Sets [`BreakerConfig::probes_to_close`].
    pub fn with_probes_to_close(mut self, n: u32) -> Self {
        self.probes_to_close = n;
        self
    }

    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, problem| Err(ConfigError::Invalid { field, problem });
        if self.window.is_zero() || self.window > MAX_DURATION {
            return bad("window", "must be between 1 ns and ten years");
        }
        if self.min_requests == 0 {
            return bad("min_requests", "must be at least 1");
        }
        if self.error_rate_threshold.is_nan() || self.error_rate_threshold <= 0.0 {
            return bad("error_rate_threshold", "must be above 0");
        }
        if self.slow_call_threshold.is_zero() {
            return bad("slow_call_threshold", "must be above 0");
        }
        if self.slow_rate_threshold.is_nan() || self.slow_rate_threshold <= 0.0 {
            return bad("slow_rate_threshold", "must be above 0");
        }
        if self.open_for > MAX_DURATION {
            return bad("open_for", "must be at most ten years");
        }
        if self.max_open_for < self.open_for || self.max_open_for > MAX_DURATION {
            return bad("max_open_for", "must be between open_for and ten years");
        }
        if self.half_open_probes == 0 {
            return bad("half_open_probes", "must be at least 1");
        }
        if self.probes_to_close == 0 {
            return bad("probes_to_close", "must be at least 1");
        }
        Ok(())
    }

    /// The config [`Breaker::new`] actually runs with.
    fn sanitized(mut self) -> Self {
        let d = Self::default();
        if self.window.is_zero() {
            self.window = d.window;
        }
        self.window = self.window.min(MAX_DURATION);
        self.min_requests = self.min_requests.max(1);
        if self.error_rate_threshold.is_nan() || self.error_rate_threshold <= 0.0 {
            self.error_rate_threshold = d.error_rate_threshold;
        }
        if self.slow_rate_threshold.is_nan() || self.slow_rate_threshold <= 0.0 {
            self.slow_rate_threshold = d.slow_rate_threshold;
        }
        self.slow_call_threshold = self.slow_call_threshold.min(MAX_DURATION);
        self.open_for = self.open_for.min(MAX_DURATION);
        self.max_open_for = self.max_open_for.clamp(self.open_for, MAX_DURATION);
        self.half_open_probes = self.half_open_probes.max(1);
        self.probes_to_close = self.probes_to_close.max(1);
        self
    }
}

/// A [`BreakerConfig`] field out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The named field has a value the breaker cannot use.
    #[error("breaker.{field}: {problem}")]
    Invalid {
        /// Field name, as in [`BreakerConfig`].
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Proof that a call was allowed. Hand it back to [`Breaker::handle_result`] exactly
/// once, with the outcome of the call or [`CallOutcome::Cancelled`].
///
/// Deliberately neither `Clone` nor `Copy`, so a ticket cannot be reported twice by
/// mistake. A ticket that is dropped unreported leaks a probe slot until the breaker
/// next changes state; always report it.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "report the call with Breaker::handle_result (CallOutcome::Cancelled if unused)"]
pub struct Ticket {
    epoch: u64,
    probe: bool,
}

impl Ticket {
    /// Whether this call is a half-open trial call.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Answer of [`Breaker::try_acquire`].
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Permit {
    /// Make the call, then report it with the ticket.
    Allowed(Ticket),
    /// Do not call the backend (spool instead).
    Rejected {
        /// When asking again may succeed: the time left until the breaker probes, or a
        /// hint while probes are in flight or the breaker is forced open.
        retry_in: Duration,
    },
}

impl Permit {
    /// Whether the call may go ahead.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Permit::Allowed(_))
    }
}

/// How a permitted call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The backend acked. Slow if `latency` ≥ [`BreakerConfig::slow_call_threshold`].
    Success {
        /// Time from sending to the ack.
        latency: Duration,
    },
    /// The backend failed, timed out or was unreachable.
    Failure {
        /// Time from sending to the failure.
        latency: Duration,
    },
    /// The permit was returned unused: nothing is counted, a probe slot is freed.
    Cancelled,
}

/// Operator control that takes precedence over automatic behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Override {
    /// Reject every call (degrade to the spool by hand).
    ForceOpen,
    /// Allow every call and never open; results are still counted.
    ForceClosed,
}

/// What the breaker is doing, as seen at the last `now` it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls flow; results are judged.
    Closed,
    /// Calls are rejected until `until`, after which the breaker probes.
    Open {
        /// End of the open period (the breaker turns half-open at the first input with a
        /// `now` at or after it).
        until: Instant,
    },
    /// A limited number of probe calls decide whether to close or re-open.
    HalfOpen,
    /// Held open by [`Override::ForceOpen`].
    ForcedOpen,
    /// Held closed by [`Override::ForceClosed`].
    ForcedClosed,
}

impl BreakerState {
    /// Value for the breaker-state gauge: 0 closed, 1 half-open, 2 open (forced states
    /// report as the state they force).
    pub fn as_metric(self) -> u8 {
        match self {
            BreakerState::Closed | BreakerState::ForcedClosed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open { .. } | BreakerState::ForcedOpen => 2,
        }
    }

    /// Whether an operator override holds this state.
    pub fn is_forced(self) -> bool {
        matches!(self, BreakerState::ForcedOpen | BreakerState::ForcedClosed)
    }
}

/// Counters for metrics and the dashboard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerStats {
    /// Results counted in the current window.
    pub requests: u64,
    /// Failures among them.
    pub errors: u64,
    /// Slow calls among them (successful or not).
    pub slow: u64,
    /// State changes since creation (overrides included).
    pub transitions: u64,
    /// Probe rounds that failed in a row (drives the open-time growth).
    pub consecutive_failed_probes: u32,
    /// Probe calls currently in flight.
    pub probes_in_flight: u32,
    /// Probe successes so far in this half-open period.
    pub probe_successes: u32,
    /// Results whose ticket predates the current state: counted here, judged nowhere.
    pub ignored_results: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Index of the bucket-width slot since the window origin this bucket counts.
    index: u64,
    requests: u64,
    errors: u64,
    slow: u64,
}

/// Rolling window of [`BUCKETS`] count buckets.
#[derive(Clone, Debug)]
struct Window {
    origin: Instant,
    width_ns: u64,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(window: Duration, origin: Instant) -> Self {
        let width_ns = (window.as_nanos() / BUCKETS as u128).clamp(1, u64::MAX as u128) as u64;
        Self {
            origin,
            width_ns,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn index(&self, now: Instant) -> u64 {
        let ns = now.saturating_duration_since(self.origin).as_nanos();
        (ns / self.width_ns as u128).min(u64::MAX as u128) as u64
    }

    fn record(&mut self, now: Instant, error: bool, slow: bool) {
        let index = self.index(now);
        let bucket = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ..Bucket::default()
            };
        }
        bucket.requests += 1;
        bucket.errors += u64::from(error);
        bucket.slow += u64::from(slow);
    }

    /// (requests, errors, slow) over the buckets still inside the window at `now`.
    fn totals(&self, now: Instant) -> (u64, u64, u64) {
        let current = self.index(now);
        self.buckets
            .iter()
            .filter(|b| b.index <= current && current - b.index < BUCKETS as u64)
            .fold((0, 0, 0), |(r, e, s), b| {
                (r + b.requests, e + b.errors, s + b.slow)
            })
    }

    fn reset(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

/// The circuit breaker. See the [module docs](self).
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    /// Latest `now` seen; inputs with an earlier `now` are treated as happening at it.
    clock: Instant,
    window: Window,
    mode: Mode,
    forced: Option<Override>,
    /// Bumped on every state change; tickets from an older epoch judge nothing.
    epoch: u64,
    probes_in_flight: u32,
    probe_successes: u32,
    consecutive_failed_probes: u32,
    transitions: u64,
    ignored_results: u64,
}

impl Breaker {
    /// A closed breaker with an empty window.
    pub fn new(cfg: BreakerConfig, now: Instant) -> Self {
        let cfg = cfg.sanitized();
        Self {
            window: Window::new(cfg.window, now),
            cfg,
            clock: now,
            mode: Mode::Closed,
            forced: None,
            epoch: 0,
            probes_in_flight: 0,
            probe_successes: 0,
            consecutive_failed_probes: 0,
            transitions: 0,
            ignored_results: 0,
        }
    }

    /// The configuration in force (after out-of-range values were replaced).
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// Asks to make one backend call.
    pub fn try_acquire(&mut self, now: Instant) -> Permit {
        self.advance(now);
        match self.forced {
            Some(Override::ForceOpen) => {
                return Permit::Rejected {
                    retry_in: self.cfg.open_for.max(Duration::from_millis(1)),
                }
            }
            Some(Override::ForceClosed) => return Permit::Allowed(self.ticket(false)),
            None => {}
        }
        match self.mode {
            Mode::Closed => Permit::Allowed(self.ticket(false)),
            Mode::Open { until } => Permit::Rejected {
                retry_in: until.saturating_duration_since(self.clock),
            },
            Mode::HalfOpen if self.probes_in_flight < self.cfg.half_open_probes => {
                self.probes_in_flight += 1;
                Permit::Allowed(self.ticket(true))
            }
            // A probe in flight will be judged by the time it counts as slow.
            Mode::HalfOpen => Permit::Rejected {
                retry_in: self.cfg.slow_call_threshold.max(Duration::from_millis(1)),
            },
        }
    }

    /// Reports how a permitted call ended.
    pub fn handle_result(&mut self, ticket: Ticket, outcome: CallOutcome, now: Instant) {
        self.advance(now);
        if ticket.epoch != self.epoch {
            if outcome != CallOutcome::Cancelled {
                self.ignored_results += 1;
            }
            return;
        }
        let (error, latency) = match outcome {
            CallOutcome::Cancelled => {
                if ticket.probe {
                    self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                }
                return;
            }
            CallOutcome::Success { latency } => (false, latency),
            CallOutcome::Failure { latency } => (true, latency),
        };
        let slow = latency >= self.cfg.slow_call_threshold;
        self.window.record(self.clock, error, slow);

        if ticket.probe {
            // Only issued in HalfOpen, and the epoch matches: we are still half-open.
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
            if error || slow {
                self.consecutive_failed_probes = self.consecutive_failed_probes.saturating_add(1);
                self.open();
            } else {
                self.probe_successes += 1;
                if self.probe_successes >= self.cfg.probes_to_close {
                    self.consecutive_failed_probes = 0;
                    self.window.reset();
                    self.transition(Mode::Closed);
                }
            }
        } else if self.forced.is_none() && self.mode == Mode::Closed && self.should_open() {
            self.open();
        }
    }

    /// Lets time pass: turns Open into HalfOpen once the open period has elapsed. Call it
    /// at [`Breaker::poll_timeout`]; every other input does the same on the way.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// When the breaker next changes state by itself (the end of an open period).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.forced, self.mode) {
            (None, Mode::Open { until }) => Some(until),
            _ => None,
        }
    }

    /// The state as of the latest `now` given to the breaker.
    pub fn state(&self) -> BreakerState {
        match (self.forced, self.mode) {
            (Some(Override::ForceOpen), _) => BreakerState::ForcedOpen,
            (Some(Override::ForceClosed), _) => BreakerState::ForcedClosed,
            (None, Mode::Closed) => BreakerState::Closed,
            (None, Mode::Open { until }) => BreakerState::Open { until },
            (None, Mode::HalfOpen) => BreakerState::HalfOpen,
        }
    }

    /// The operator override in force, if any.
    pub fn current_override(&self) -> Option<Override> {
        self.forced
    }

    /// Sets or clears the operator override. Clearing it restarts automatic behaviour
    /// from Closed with a fresh window. Tickets issued before the change judge nothing.
    pub fn set_override(&mut self, o: Option<Override>, now: Instant) {
        self.advance(now);
        if o == self.forced {
            return;
        }
        self.forced = o;
        if o.is_none() {
            self.window.reset();
            self.consecutive_failed_probes = 0;
            self.mode = Mode::Closed;
        }
        self.epoch = self.epoch.wrapping_add(1);
        self.transitions += 1;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
    }

    /// Counters for metrics.
    pub fn stats(&self) -> BreakerStats {
        let (requests, errors, slow) = self.window.totals(self.clock);
        BreakerStats {
            requests,
            errors,
            slow,
            transitions: self.transitions,
            consecutive_failed_probes: self.consecutive_failed_probes,
            probes_in_flight: self.probes_in_flight,
            probe_successes: self.probe_successes,
            ignored_results: self.ignored_results,
        }
    }

    fn ticket(&self, probe: bool) -> Ticket {
        Ticket {
            epoch: self.epoch,
            probe,
        }
    }

    fn advance(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        if let (None, Mode::Open { until }) = (self.forced, self.mode) {
            if self.clock >= until {
                self.transition(Mode::HalfOpen);
            }
        }
    }

    fn transition(&mut self, to: Mode) {
        self.mode = to;
        self.epoch = self.epoch.wrapping_add(1);
        self.transitions += 1;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
    }

    fn should_open(&self) -> bool {
        let (requests, errors, slow) = self.window.totals(self.clock);
        if requests == 0 || requests < u64::from(self.cfg.min_requests) {
            return false;
        }
        let n = requests as f64;
        errors as f64 / n >= self.cfg.error_rate_threshold
            || slow as f64 / n >= self.cfg.slow_rate_threshold
    }

    /// Current open time: `open_for × growth^failed_probes`, capped.
    fn open_duration(&self) -> Duration {
        let (base, max) = (self.cfg.open_for, self.cfg.max_open_for);
        let mut d = base;
        if self.cfg.open_growth > 1 {
            for _ in 0..self.consecutive_failed_probes.min(64) {
                d = d.checked_mul(self.cfg.open_growth).unwrap_or(max);
                if d >= max {
                    break;
                }
            }
        }
        d.min(max)
    }

    fn open(&mut self) {
        let d = self.open_duration();
        // Durations are clamped to ten years, so this only saturates on absurd clocks.
        let until = self.clock.checked_add(d).unwrap_or(self.clock);
        self.transition(Mode::Open { until });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn ok(ms: u64) -> CallOutcome {
        CallOutcome::Success {
            latency: MS * ms as u32,
        }
    }
    fn err(ms: u64) -> CallOutcome {
        CallOutcome::Failure {
            latency: MS * ms as u32,
        }
    }

    fn ticket(b: &mut Breaker, now: Instant) -> Ticket {
        match b.try_acquire(now) {
            Permit::Allowed(t) => t,
            other => panic!("expected a permit, got {other:?}"),
        }
    }

    /// One call made and reported at `now`.
    fn call(b: &mut Breaker, outcome: CallOutcome, now: Instant) {
        let t = ticket(b, now);
        b.handle_result(t, outcome, now);
    }

    fn small() -> BreakerConfig {
        BreakerConfig::default()
            .with_min_requests(10)
            .with_window(Duration::from_secs(10))
            .with_open_for(Duration::from_secs(5))
            .with_max_open_for(Duration::from_secs(30))
            .with_slow_call_threshold(Duration::from_secs(1))
    }

    /// Drives an open breaker to half-open.
    fn open_and_wait(b: &mut Breaker, t: Instant) -> Instant {
        for _ in 0..10 {
            call(b, err(5), t);
        }
        let BreakerState::Open { until } = b.state() else {
            panic!("not open: {:?}", b.state())
        };
        b.handle_timeout(until);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        until
    }

    #[test]
    fn opens_on_error_rate() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        for _ in 0..5 {
            call(&mut b, ok(5), t);
        }
        for _ in 0..4 {
            call(&mut b, err(5), t);
        }
        assert_eq!(b.state(), BreakerState::Closed, "9 results < min_requests");
        call(&mut b, err(5), t); // 5 of 10 = threshold
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t + Duration::from_secs(5)
            }
        );
        assert_eq!(
            b.try_acquire(t + Duration::from_secs(1)),
            Permit::Rejected {
                retry_in: Duration::from_secs(4)
            }
        );
        assert_eq!(b.poll_timeout(), Some(t + Duration::from_secs(5)));
        assert_eq!(b.state().as_metric(), 2);
    }

    #[test]
    fn stays_closed_below_error_threshold() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        for i in 0..100 {
            call(&mut b, if i % 3 == 0 { err(1) } else { ok(1) }, t);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.stats().requests, 100);
        assert_eq!(b.stats().errors, 34);
    }

    #[test]
    fn opens_on_slow_call_rate() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        for _ in 0..5 {
            call(&mut b, ok(10), t);
        }
        for _ in 0..5 {
            call(&mut b, ok(1000), t); // exactly the threshold counts as slow
        }
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert_eq!(b.stats().slow, 5);
        assert_eq!(b.stats().errors, 0);
    }

    #[test]
    fn does_not_open_below_min_requests() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        for _ in 0..9 {
            call(&mut b, err(1), t);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.stats().requests, 9);
        assert_eq!(b.stats().errors, 9);
    }

    #[test]
    fn old_results_age_out_of_the_window() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        for _ in 0..9 {
            call(&mut b, err(1), t);
        }
        // 10 s later the first bucket has left the window.
        let later = t + Duration::from_secs(10);
        call(&mut b, err(1), later);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.stats().requests, 1);
        // Within the window they still count: 9 s after the first burst.
        let mut b = Breaker::new(small(), t);
        for _ in 0..9 {
            call(&mut b, err(1), t);
        }
        call(&mut b, err(1), t + Duration::from_secs(9));
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[test]
    fn half_open_admits_exactly_n_probes() {
        let t = Instant::now();
        let mut b = Breaker::new(small().with_half_open_probes(2), t);
        let t = open_and_wait(&mut b, t);
        let p1 = ticket(&mut b, t);
        let p2 = ticket(&mut b, t);
        assert!(p1.is_probe() && p2.is_probe());
        assert_eq!(
            b.try_acquire(t),
            Permit::Rejected {
                retry_in: Duration::from_secs(1)
            }
        );
        assert_eq!(b.stats().probes_in_flight, 2);
        // A cancelled probe frees its slot without counting.
        b.handle_result(p1, CallOutcome::Cancelled, t);
        assert_eq!(b.stats().probes_in_flight, 1);
        assert_eq!(b.stats().probe_successes, 0);
        let p3 = ticket(&mut b, t);
        assert!(!b.try_acquire(t).is_allowed());
        b.handle_result(p2, ok(1), t);
        b.handle_result(p3, ok(1), t);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.stats().probe_successes, 2);
    }

    #[test]
    fn probe_successes_close_and_reset_the_window() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        let t = open_and_wait(&mut b, t);
        for i in 0..3 {
            assert_eq!(b.state(), BreakerState::HalfOpen, "after {i} successes");
            let p = ticket(&mut b, t);
            assert!(p.is_probe());
            b.handle_result(p, ok(3), t);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.stats().requests, 0, "fresh window");
        assert_eq!(b.stats().consecutive_failed_probes, 0);
        assert!(!ticket(&mut b, t).is_probe());
    }

    #[test]
    fn probe_failure_reopens_with_growing_capped_open_time() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        let mut t = open_and_wait(&mut b, t);
        // open_for 5 s, growth 2, cap 30 s: 10, 20, 30, 30.
        for (i, expect) in [10u64, 20, 30, 30].into_iter().enumerate() {
            let p = ticket(&mut b, t);
            let outcome = if i % 2 == 0 { err(1) } else { ok(1000) }; // failure, then slow
            b.handle_result(p, outcome, t);
            let until = t + Duration::from_secs(expect);
            assert_eq!(b.state(), BreakerState::Open { until });
            assert!(!b.try_acquire(until - MS).is_allowed());
            assert_eq!(b.stats().consecutive_failed_probes, i as u32 + 1);
            t = until;
        }
        // Recovery resets the growth.
        for _ in 0..3 {
            call(&mut b, ok(1), t);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let t = open_and_wait(&mut b, t);
        let p = ticket(&mut b, t);
        b.handle_result(p, err(1), t);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t + Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn no_growth_when_disabled() {
        let t = Instant::now();
        let mut b = Breaker::new(small().with_open_growth(1), t);
        let t = open_and_wait(&mut b, t);
        let p = ticket(&mut b, t);
        b.handle_result(p, err(1), t);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t + Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn late_results_from_before_the_outage_judge_nothing() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        let stale: Vec<Ticket> = (0..5).map(|_| ticket(&mut b, t)).collect();
        let t = open_and_wait(&mut b, t);
        let probe = ticket(&mut b, t);
        // Closed-era calls finishing now neither re-open nor close the breaker, nor
        // free the probe slot.
        for (i, s) in stale.into_iter().enumerate() {
            let outcome = if i % 2 == 0 { ok(1) } else { err(1) };
            b.handle_result(s, outcome, t);
        }
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.stats().probes_in_flight, 1);
        assert_eq!(b.stats().probe_successes, 0);
        assert_eq!(b.stats().ignored_results, 5);
        assert!(!b.try_acquire(t).is_allowed());
        b.handle_result(probe, ok(1), t);
        assert_eq!(b.stats().probe_successes, 1);
    }

    #[test]
    fn cancelled_permits_are_not_counted() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        for _ in 0..50 {
            let p = ticket(&mut b, t);
            b.handle_result(p, CallOutcome::Cancelled, t);
        }
        let s = b.stats();
        assert_eq!(
            (s.requests, s.errors, s.slow, s.ignored_results),
            (0, 0, 0, 0)
        );
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn force_open_rejects_everything() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        let in_flight = ticket(&mut b, t);
        b.set_override(Some(Override::ForceOpen), t);
        assert_eq!(b.state(), BreakerState::ForcedOpen);
        assert_eq!(b.state().as_metric(), 2);
        assert!(b.state().is_forced());
        assert_eq!(b.poll_timeout(), None);
        for s in [0, 60, 3600] {
            assert_eq!(
                b.try_acquire(t + Duration::from_secs(s)),
                Permit::Rejected {
                    retry_in: Duration::from_secs(5)
                }
            );
        }
        b.handle_result(in_flight, ok(1), t);
        assert_eq!(b.stats().ignored_results, 1);
    }

    #[test]
    fn force_closed_never_opens_but_counts() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        b.set_override(Some(Override::ForceClosed), t);
        for _ in 0..100 {
            call(&mut b, err(5000), t);
        }
        assert_eq!(b.state(), BreakerState::ForcedClosed);
        assert_eq!(b.state().as_metric(), 0);
        let s = b.stats();
        assert_eq!((s.requests, s.errors, s.slow), (100, 100, 100));
        // Clearing restores automatic behaviour with a fresh window.
        b.set_override(None, t);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.stats().requests, 0);
        for _ in 0..10 {
            call(&mut b, err(1), t);
        }
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[test]
    fn clearing_force_open_restarts_closed() {
        let t = Instant::now();
        let mut b = Breaker::new(small(), t);
        let t = open_and_wait(&mut b, t);
        let probe = ticket(&mut b, t);
        b.set_override(Some(Override::ForceOpen), t);
        b.set_override(None, t);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.stats().consecutive_failed_probes, 0);
        b.handle_result(probe, err(1), t); // the old probe judges nothing
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn time_going_backwards_is_treated_as_no_time() {
        let t = Instant::now() + Duration::from_secs(100);
        let mut b = Breaker::new(small(), t);
        for _ in 0..10 {
            call(&mut b, err(1), t);
        }
        let until = t + Duration::from_secs(5);
        assert_eq!(b.state(), BreakerState::Open { until });
        let earlier = t - Duration::from_secs(50);
        assert_eq!(
            b.try_acquire(earlier),
            Permit::Rejected {
                retry_in: Duration::from_secs(5)
            }
        );
        assert_eq!(b.state(), BreakerState::Open { until });
    }

    #[test]
    fn config_validation_names_the_field() {
        assert_eq!(BreakerConfig::default().validate(), Ok(()));
        let e = BreakerConfig::default()
            .with_max_open_for(Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "breaker.max_open_for: must be between open_for and ten years"
        );
        assert!(BreakerConfig::default()
            .with_error_rate_threshold(f64::NAN)
            .validate()
            .is_err());
        // new() never fails: bad values are replaced.
        let b = Breaker::new(
            BreakerConfig::default()
                .with_window(Duration::ZERO)
                .with_half_open_probes(0)
                .with_error_rate_threshold(f64::NAN),
            Instant::now(),
        );
        assert_eq!(b.config().window, Duration::from_secs(10));
        assert_eq!(b.config().half_open_probes, 1);
        assert_eq!(b.config().error_rate_threshold, 0.5);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Acquire,
        Report {
            pick: usize,
            error: bool,
            latency_ms: u64,
            cancel: bool,
        },
        Advance(u64),
        Back(u64),
        Override(Option<Override>),
        Timeout,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Acquire),
            4 => (any::<usize>(), prop::bool::weighted(0.6), 0u64..1500, prop::bool::weighted(0.1))
                .prop_map(|(pick, error, latency_ms, cancel)| Op::Report { pick, error, latency_ms, cancel }),
            3 => (0u64..1_500).prop_map(Op::Advance),
            1 => (0u64..10_000_000_000).prop_map(Op::Advance), // up to ~115 days
            1 => (0u64..10_000).prop_map(Op::Back),
            1 => prop_oneof![
                Just(None),
                Just(Some(Override::ForceOpen)),
                Just(Some(Override::ForceClosed)),
            ].prop_map(Op::Override),
            1 => Just(Op::Timeout),
        ]
    }

    fn config() -> impl Strategy<Value = BreakerConfig> {
        (
            1u32..12,
            1u32..4,
            1u32..4,
            1u32..4,
            0u64..3_000,
            1u64..20_000,
        )
            .prop_map(|(min, probes, to_close, growth, open_ms, window_ms)| {
                BreakerConfig::default()
                    .with_min_requests(min)
                    .with_half_open_probes(probes)
                    .with_probes_to_close(to_close)
                    .with_open_growth(growth)
                    .with_open_for(MS * open_ms as u32)
                    .with_max_open_for(MS * open_ms as u32 * 4)
                    .with_window(MS * window_ms as u32)
                    .with_slow_call_threshold(MS * 1000)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn invariants_hold_for_any_schedule(cfg in config(), ops in prop::collection::vec(op(), 1..400)) {
            let start = Instant::now() + Duration::from_secs(1_000_000);
            let mut now = start;
            let mut b = Breaker::new(cfg.clone(), now);
            let mut outstanding: Vec<Ticket> = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire => {
                        let before = b.state();
                        let clock = b.clock.max(now);
                        match b.try_acquire(now) {
                            Permit::Allowed(t) => {
                                prop_assert!(!matches!(before, BreakerState::ForcedOpen));
                                if let BreakerState::Open { until } = before {
                                    prop_assert!(clock >= until, "open breaker allowed a call early");
                                }
                                prop_assert_eq!(t.is_probe(), b.state() == BreakerState::HalfOpen);
                                outstanding.push(t);
                            }
                            Permit::Rejected { retry_in } => {
                                prop_assert!(!matches!(before, BreakerState::Closed | BreakerState::ForcedClosed));
                                if let BreakerState::Open { until } = b.state() {
                                    prop_assert_eq!(retry_in, until - clock);
                                    prop_assert!(retry_in > Duration::ZERO);
                                }
                            }
                        }
                    }
                    Op::Report { pick, error, latency_ms, cancel } => {
                        if !outstanding.is_empty() {
                            // Mostly the latest calls (results of calls in the current
                            // state), sometimes any (late results).
                            let n = outstanding.len();
                            let i = if pick % 3 == 0 { pick % n } else { n - 1 - pick % n.min(3) };
                            let t = outstanding.swap_remove(i);
                            let latency = MS * latency_ms as u32;
                            let outcome = if cancel {
                                CallOutcome::Cancelled
                            } else if error {
                                CallOutcome::Failure { latency }
                            } else {
                                CallOutcome::Success { latency }
                            };
                            b.handle_result(t, outcome, now);
                        }
                    }
                    Op::Advance(ms) => now = now.checked_add(Duration::from_millis(ms)).unwrap_or(now),
                    Op::Back(ms) => now = now.checked_sub(Duration::from_millis(ms)).unwrap_or(now),
                    Op::Override(o) => b.set_override(o, now),
                    Op::Timeout => b.handle_timeout(now),
                }
                // Never more than N probes of the current half-open period in flight.
                let live_probes = outstanding.iter().filter(|t| t.probe && t.epoch == b.epoch).count();
                prop_assert!(live_probes <= cfg.half_open_probes as usize);
                prop_assert_eq!(live_probes as u32, b.stats().probes_in_flight);
                // The metric agrees with the state.
                let s = b.state();
                let metric = match s {
                    BreakerState::Closed | BreakerState::ForcedClosed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open { .. } | BreakerState::ForcedOpen => 2,
                };
                prop_assert_eq!(s.as_metric(), metric);
                prop_assert_eq!(s.is_forced(), b.current_override().is_some());
                prop_assert_eq!(b.poll_timeout().is_some(), matches!(s, BreakerState::Open { .. }));
                if let BreakerState::Open { until } = s {
                    prop_assert!(until > b.clock || cfg.open_for.is_zero());
                    prop_assert!(until <= b.clock + cfg.max_open_for);
                }
                let st = b.stats();
                prop_assert!(st.errors <= st.requests && st.slow <= st.requests);
            }
        }
    }
}
