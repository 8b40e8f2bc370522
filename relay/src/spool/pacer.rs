//! Adaptive pacing of spool replay into a recovering backend.
//!
//! When the breaker closes, the replayer drains the spool oldest first. Draining as fast
//! as possible would knock a freshly recovered backend straight back over, so every
//! batch replayed waits for a slot from a [`ReplayPacer`]. The pacer is a sans-IO state
//! machine: the replayer asks [`ReplayPacer::poll_send`] (or sleeps until
//! [`ReplayPacer::next_send_at`]) and reports each backend answer through
//! [`ReplayPacer::handle_result`]; `now` is always an argument.
//!
//! # Schedule
//!
//! Sends are spaced at least `1 / rate` apart (an interval schedule, i.e. a token bucket
//! of one): a replayer that polls late gets one send, not a catch-up burst. Over any
//! interval of length `T` at a constant rate `r` there are therefore at most
//! `1 + r × T` sends. The interval is rounded up to whole nanoseconds, so it never runs
//! faster than the rate.
//!
//! # Adapting the rate (AIMD)
//!
//! The rate starts at `min_rate` and moves like TCP congestion control:
//!
//! * **Additive increase.** A *good* sample (ok, latency ≤ `target_latency`) raises the
//!   rate by `increase_step × sample_window` (in seconds, i.e. `increase_step` batches/s
//!   per second of good latency) — at most once per `sample_window`, and not within a
//!   `sample_window` of the last change of either kind.
//! * **Multiplicative decrease.** A *bad* sample (failed, or latency above target)
//!   multiplies the rate by `decrease_factor`. The backend reacts to a rate only after
//!   its batches come back, so the batches already in flight when the rate was cut
//!   would report the same congestion again: a bad sample for a batch sent (`now −
//!   latency`) at or before the last decrease is counted in
//!   [`PacerStats::stale_bad_samples`] and otherwise ignored. A sustained problem still
//!   halves the rate once per round trip.
//! * The rate stays within `[min_rate, max_rate]`.
//!
//! # Operator control
//!
//! [`ReplayPacer::pause`] stops all sends (results are still taken into account);
//! [`ReplayPacer::resume`] restarts at the current rate. [`ReplayPacer::set_max_rate`]
//! changes the ceiling at run time.
//!
//! # Time
//!
//! The pacer keeps the latest `now` it has seen; an earlier `now` is treated as that
//! instant, so a clock going backwards can neither release extra sends nor panic.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use tern_relay::spool::pacer::{PacerConfig, ReplayPacer};
//!
//! let t0 = Instant::now();
//! let mut pacer = ReplayPacer::new(PacerConfig::default(), t0);
//! assert_eq!(pacer.rate(), 5.0); // starts at min_rate
//! assert!(pacer.poll_send(t0));
//! assert!(!pacer.poll_send(t0)); // next slot is 200 ms later
//! assert_eq!(pacer.next_send_at(t0), Some(t0 + Duration::from_millis(200)));
//! // Good latency for a while ramps the rate up.
//! pacer.handle_result(Duration::from_millis(40), true, t0 + Duration::from_secs(1));
//! assert_eq!(pacer.rate(), 15.0);
//! // A slow answer halves it.
//! pacer.handle_result(Duration::from_millis(900), true, t0 + Duration::from_secs(2));
//! assert_eq!(pacer.rate(), 7.5);
//! ```

use std::time::{Duration, Instant};

/// Tuning of a [`ReplayPacer`]. Build it from [`Default`] and the `with_*` setters.
///
/// [`ReplayPacer::new`] never fails: out-of-range values are replaced (see each field).
/// Use [`PacerConfig::validate`] to reject them instead.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PacerConfig {
    /// Ceiling, batches per second. Default 200. Raised to `min_rate` if below it.
    pub max_rate: f64,
    /// Floor and starting rate, batches per second. Default 5. Must be finite and above
    /// zero, else the default is used.
    pub min_rate: f64,
    /// Latency above which a sample is bad. Default 250 ms.
    pub target_latency: Duration,
    /// Additive increase, batches/s per second of good latency. Default 10. Negative or
    /// non-finite values are replaced by the default.
    pub increase_step: f64,
    /// Multiplicative decrease on a bad sample, in (0, 1]. Default 0.5; out of range is
    /// replaced by the default.
    pub decrease_factor: f64,
    /// Smallest time between two increases (and between a decrease and the next
    /// increase). Default 1 s.
    pub sample_window: Duration,
}

impl Default for PacerConfig {
    fn default() -> Self {
        Self {
            max_rate: 200.0,
            min_rate: 5.0,
            target_latency: Duration::from_millis(250),
            increase_step: 10.0,
            decrease_factor: 0.5,
            sample_window: Duration::from_secs(1),
        }
    }
}

impl PacerConfig {
    /// Sets [`PacerConfig::max_rate`].
    pub fn with_max_rate(mut self, rate: f64) -> Self {
        self.max_rate = rate;
        self
    }
    /// Sets [`PacerConfig::min_rate`].
    pub fn with_min_rate(mut self, rate: f64) -> Self {
        self.min_rate = rate;
        self
    }
    /// Sets [`PacerConfig::target_latency`].
    pub fn with_target_latency(mut self, latency: Duration) -> Self {
        self.target_latency = latency;
        self
    }
    /// Sets [`PacerConfig::increase_step`].
    pub fn with_increase_step(mut self, step: f64) -> Self {
        self.increase_step = step;
        self
    }
    /// Sets [`PacerConfig::decrease_factor`].
    pub fn with_decrease_factor(mut self, factor: f64) -> Self {
        self.decrease_factor = factor;
        self
    }
    /// Sets [`PacerConfig::sample_window`].
    pub fn with_sample_window(mut self, window: Duration) -> Self {
        self.sample_window = window;
        self
    }

    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, problem| Err(ConfigError::Invalid { field, problem });
        if !valid_rate(self.min_rate) {
            return bad("min_rate", "must be a finite number above 0");
        }
        if !valid_rate(self.max_rate) || self.max_rate < self.min_rate {
            return bad("max_rate", "must be a finite number at least min_rate");
        }
        if !(self.increase_step.is_finite() && self.increase_step >= 0.0) {
            return bad("increase_step", "must be a finite number at least 0");
        }
        if !(self.decrease_factor > 0.0 && self.decrease_factor <= 1.0) {
            return bad("decrease_factor", "must be above 0 and at most 1");
        }
        Ok(())
    }

    fn sanitized(mut self) -> Self {
        let d = Self::default();
        if !valid_rate(self.min_rate) {
            self.min_rate = d.min_rate;
        }
        if !valid_rate(self.max_rate) {
            self.max_rate = d.max_rate;
        }
        self.max_rate = self.max_rate.max(self.min_rate);
        if !(self.increase_step.is_finite() && self.increase_step >= 0.0) {
            self.increase_step = d.increase_step;
        }
        if !(self.decrease_factor > 0.0 && self.decrease_factor <= 1.0) {
            self.decrease_factor = d.decrease_factor;
        }
        self
    }
}

fn valid_rate(r: f64) -> bool {
    r.is_finite() && r > 0.0
}

/// A [`PacerConfig`] value out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The named field has a value the pacer cannot use.
    #[error("replay.{field}: {problem}")]
    Invalid {
        /// Field name, as in [`PacerConfig`].
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Counters for metrics and the dashboard.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct PacerStats {
    /// Current rate, batches per second.
    pub rate: f64,
    /// Whether an operator paused replay.
    pub paused: bool,
    /// Send slots handed out since creation.
    pub sent: u64,
    /// Additive increases applied.
    pub increases: u64,
    /// Multiplicative decreases applied.
    pub decreases: u64,
    /// Bad samples ignored because their batch was sent before the last decrease.
    pub stale_bad_samples: u64,
}

/// The replay pacer. See the [module docs](self).
#[derive(Debug)]
pub struct ReplayPacer {
    cfg: PacerConfig,
    rate: f64,
    paused: bool,
    /// Latest `now` seen.
    clock: Instant,
    last_send: Option<Instant>,
    /// Last increase or decrease (or creation).
    last_change: Instant,
    last_decrease: Option<Instant>,
    sent: u64,
    increases: u64,
    decreases: u64,
    stale_bad_samples: u64,
}

impl ReplayPacer {
    /// A pacer at `min_rate`, not paused.
    pub fn new(cfg: PacerConfig, now: Instant) -> Self {
        let cfg = cfg.sanitized();
        Self {
            rate: cfg.min_rate,
            cfg,
            paused: false,
            clock: now,
            last_send: None,
            last_change: now,
            last_decrease: None,
            sent: 0,
            increases: 0,
            decreases: 0,
            stale_bad_samples: 0,
        }
    }

    /// The configuration in force (after out-of-range values were replaced and
    /// [`ReplayPacer::set_max_rate`] calls).
    pub fn config(&self) -> &PacerConfig {
        &self.cfg
    }

    /// Reports the backend's answer to one replayed batch: how long it took and whether
    /// it was acked.
    pub fn handle_result(&mut self, latency: Duration, ok: bool, now: Instant) {
        self.clock = self.clock.max(now);
        let good = ok && latency <= self.cfg.target_latency;
        if good {
            if self.clock.saturating_duration_since(self.last_change) >= self.cfg.sample_window {
                let step = self.cfg.increase_step * self.cfg.sample_window.as_secs_f64();
                self.rate = (self.rate + step).min(self.cfg.max_rate);
                self.last_change = self.clock;
                self.increases += 1;
            }
            return;
        }
        let sent_at = self.clock.checked_sub(latency);
        let stale = match (self.last_decrease, sent_at) {
            (Some(cut), Some(sent)) => sent <= cut,
            // Sent before the clock's representable past: certainly before the cut.
            (Some(_), None) => true,
            (None, _) => false,
        };
        if stale {
            self.stale_bad_samples += 1;
            return;
        }
        self.rate = (self.rate * self.cfg.decrease_factor).max(self.cfg.min_rate);
        self.last_decrease = Some(self.clock);
        self.last_change = self.clock;
        self.decreases += 1;
    }

    /// Takes a send slot if one is due at `now`: returns whether to send one batch now.
    pub fn poll_send(&mut self, now: Instant) -> bool {
        self.clock = self.clock.max(now);
        match self.due_at() {
            Some(at) if at <= self.clock => {
                self.last_send = Some(self.clock);
                self.sent += 1;
                true
            }
            _ => false,
        }
    }

    /// The earliest instant, not before `now`, at which [`ReplayPacer::poll_send`] will
    /// hand out a slot at the current rate; `None` while paused.
    pub fn next_send_at(&self, now: Instant) -> Option<Instant> {
        let now = self.clock.max(now);
        self.due_at().map(|at| at.max(now))
    }

    /// Current rate, batches per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Current spacing between sends (`1 / rate`, rounded up to the nanosecond).
    pub fn interval(&self) -> Duration {
        interval(self.rate)
    }

    /// Stops handing out send slots until [`ReplayPacer::resume`].
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Resumes sending at the current rate.
    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// Whether an operator paused replay.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Changes the ceiling at run time; the current rate is lowered to it at once if
    /// above. Fails, changing nothing, unless `max_rate` is finite and at least
    /// `min_rate`.
    pub fn set_max_rate(&mut self, max_rate: f64) -> Result<(), ConfigError> {
        if !valid_rate(max_rate) || max_rate < self.cfg.min_rate {
            return Err(ConfigError::Invalid {
                field: "max_rate",
                problem: "must be a finite number at least min_rate",
            });
        }
        self.cfg.max_rate = max_rate;
        self.rate = self.rate.min(max_rate);
        Ok(())
    }

    /// Counters for metrics.
    pub fn stats(&self) -> PacerStats {
        PacerStats {
            rate: self.rate,
            paused: self.paused,
            sent: self.sent,
            increases: self.increases,
            decreases: self.decreases,
            stale_bad_samples: self.stale_bad_samples,
        }
    }

    /// When the next slot is due, ignoring `now`; `None` while paused or if the next
    /// slot lies beyond what `Instant` can represent.
    fn due_at(&self) -> Option<Instant> {
        if self.paused {
            return None;
        }
        match self.last_send {
            None => Some(self.clock),
            Some(last) => last.checked_add(interval(self.rate)),
        }
    }
}

/// `1 / rate` seconds rounded up to whole nanoseconds (`rate` is finite and > 0).
fn interval(rate: f64) -> Duration {
    let ns = (1e9 / rate).ceil();
    if ns >= u64::MAX as f64 {
        Duration::from_nanos(u64::MAX)
    } else {
        Duration::from_nanos(ns as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn good() -> Duration {
        MS * 50
    }

    #[test]
    fn ramps_up_to_max_under_good_latency() {
        let t = Instant::now();
        let mut p = ReplayPacer::new(PacerConfig::default(), t);
        assert_eq!(p.rate(), 5.0);
        // Many samples within one window raise the rate once.
        for i in 0..100 {
            p.handle_result(good(), true, t + SEC + MS * i);
        }
        assert_eq!(p.rate(), 15.0);
        // +10 per second: 5 → 200 in 20 s (19.5 rounds up).
        for s in 2..=20u32 {
            p.handle_result(good(), true, t + SEC * s);
        }
        assert_eq!(p.rate(), 200.0);
        p.handle_result(good(), true, t + SEC * 60);
        assert_eq!(p.rate(), 200.0, "capped at max_rate");
        assert_eq!(p.interval(), MS * 5);
    }

    #[test]
    fn latency_at_target_is_good() {
        let t = Instant::now();
        let mut p = ReplayPacer::new(PacerConfig::default(), t);
        p.handle_result(MS * 250, true, t + SEC);
        assert_eq!(p.rate(), 15.0);
        p.handle_result(MS * 251, true, t + SEC * 3);
        assert_eq!(p.rate(), 7.5);
    }

    #[test]
    fn halves_on_slow_or_failed_results_and_recovers() {
        let t = Instant::now();
        let cfg = PacerConfig::default()
            .with_min_rate(1.0)
            .with_max_rate(100.0);
        let mut p = ReplayPacer::new(cfg, t);
        for s in 1..=20u32 {
            p.handle_result(good(), true, t + SEC * s);
        }
        assert_eq!(p.rate(), 100.0);
        let t = t + SEC * 20;
        // A slow answer halves.
        p.handle_result(MS * 400, true, t + SEC);
        assert_eq!(p.rate(), 50.0);
        // A failure that was sent after that cut halves again, even if fast.
        p.handle_result(MS * 2, false, t + SEC * 2);
        assert_eq!(p.rate(), 25.0);
        // No increase within a window of the cut.
        p.handle_result(good(), true, t + SEC * 2 + MS * 999);
        assert_eq!(p.rate(), 25.0);
        // Then it climbs back.
        p.handle_result(good(), true, t + SEC * 3);
        assert_eq!(p.rate(), 35.0);
        for s in 4..=10u32 {
            p.handle_result(good(), true, t + SEC * s);
        }
        assert_eq!(p.rate(), 100.0);
        assert_eq!(p.stats().decreases, 2);
    }

    #[test]
    fn batches_in_flight_at_a_cut_do_not_cut_again() {
        let t = Instant::now();
        let cfg = PacerConfig::default().with_min_rate(1.0);
        let mut p = ReplayPacer::new(cfg, t);
        p.set_max_rate(64.0).unwrap();
        for s in 1..=10u32 {
            p.handle_result(good(), true, t + SEC * s);
        }
        assert_eq!(p.rate(), 64.0);
        let t = t + SEC * 10;
        // 20 slow answers arriving together, all sent 900 ms earlier: one cut.
        for i in 0..20 {
            p.handle_result(MS * 900, true, t + MS * i);
        }
        assert_eq!(p.rate(), 32.0);
        assert_eq!(p.stats().stale_bad_samples, 19);
        // An answer to a batch sent after the cut is news.
        p.handle_result(MS * 900, true, t + MS * 901);
        assert_eq!(p.rate(), 16.0);
    }

    #[test]
    fn never_below_min_or_above_max() {
        let t = Instant::now();
        let mut p = ReplayPacer::new(PacerConfig::default(), t);
        for i in 0..50u32 {
            p.handle_result(Duration::ZERO, false, t + MS * i);
        }
        assert_eq!(p.rate(), 5.0);
        assert_eq!(p.interval(), MS * 200);
        p.set_max_rate(20.0).unwrap();
        for s in 1..100u32 {
            p.handle_result(good(), true, t + SEC * s);
        }
        assert_eq!(p.rate(), 20.0);
        p.set_max_rate(10.0).unwrap();
        assert_eq!(p.rate(), 10.0, "lowering the ceiling lowers the rate");
        assert!(p.set_max_rate(1.0).is_err(), "below min_rate");
        assert!(p.set_max_rate(f64::NAN).is_err());
        assert!(p.set_max_rate(f64::INFINITY).is_err());
        assert_eq!(p.config().max_rate, 10.0);
    }

    #[test]
    fn paces_at_the_current_rate() {
        let t = Instant::now();
        let mut p = ReplayPacer::new(PacerConfig::default().with_min_rate(10.0), t);
        let mut sends = 0;
        for i in 0..=1000u32 {
            if p.poll_send(t + MS * i) {
                sends += 1;
            }
        }
        assert_eq!(sends, 11, "10/s over one second, both ends included");
        // A late poll gets one send, not a burst.
        let late = t + SEC * 10;
        assert!(p.poll_send(late));
        assert!(!p.poll_send(late));
        assert_eq!(p.next_send_at(late), Some(late + MS * 100));
        assert_eq!(p.next_send_at(late + SEC), Some(late + SEC));
    }

    #[test]
    fn pause_and_resume() {
        let t = Instant::now();
        let mut p = ReplayPacer::new(PacerConfig::default(), t);
        p.pause();
        assert!(p.is_paused());
        assert_eq!(p.next_send_at(t), None);
        for s in 0..10u32 {
            assert!(!p.poll_send(t + SEC * s));
        }
        p.resume();
        assert!(!p.is_paused());
        assert_eq!(
            p.next_send_at(t),
            Some(t + SEC * 9),
            "clock is at the latest now"
        );
        assert!(p.poll_send(t + SEC * 9));
        assert_eq!(p.stats().sent, 1);
    }

    #[test]
    fn time_going_backwards_releases_nothing() {
        let t = Instant::now() + SEC * 100;
        let mut p = ReplayPacer::new(PacerConfig::default(), t);
        assert!(p.poll_send(t));
        for back in [1, 100, 50_000] {
            assert!(!p.poll_send(t - MS * back));
        }
        assert_eq!(p.next_send_at(t - SEC), Some(t + MS * 200));
        // Huge latencies (sent "before" the clock's epoch) do not panic.
        p.handle_result(Duration::MAX, false, t);
        p.handle_result(Duration::MAX, false, t);
        assert_eq!(p.stats().stale_bad_samples, 1);
    }

    #[test]
    fn config_is_sanitized_and_validated() {
        assert_eq!(PacerConfig::default().validate(), Ok(()));
        let bad = PacerConfig::default()
            .with_min_rate(f64::NAN)
            .with_max_rate(-3.0)
            .with_decrease_factor(7.0)
            .with_increase_step(f64::INFINITY);
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "replay.min_rate: must be a finite number above 0"
        );
        let p = ReplayPacer::new(bad, Instant::now());
        assert_eq!(p.config(), &PacerConfig::default());
        let inverted = PacerConfig::default()
            .with_min_rate(50.0)
            .with_max_rate(10.0);
        assert!(inverted.validate().is_err());
        assert_eq!(
            ReplayPacer::new(inverted, Instant::now()).config().max_rate,
            50.0
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Poll,
        Step(u64),
        Back(u64),
        Result { latency_ms: u64, ok: bool },
        Pause,
        Resume,
        SetMax(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Poll),
            6 => (0u64..50).prop_map(Op::Step),
            1 => (0u64..100_000).prop_map(Op::Step),
            1 => (0u64..500).prop_map(Op::Back),
            4 => (0u64..1000, any::<bool>()).prop_map(|(latency_ms, ok)| Op::Result { latency_ms, ok }),
            1 => Just(Op::Pause),
            2 => Just(Op::Resume),
            1 => (1u32..300).prop_map(Op::SetMax),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Over any schedule: the rate stays in [min, max]; each send comes at least one
        /// interval (at the rate in force when it is released) after the previous one;
        /// hence within any window, sends ≤ 1 + window × highest rate; paused sends
        /// nothing.
        #[test]
        fn sends_never_exceed_the_rate(ops in prop::collection::vec(op(), 1..600)) {
            let start = Instant::now() + SEC * 1000;
            let mut now = start;
            let mut p = ReplayPacer::new(PacerConfig::default().with_min_rate(2.0), now);
            let mut sends: Vec<(Instant, f64)> = Vec::new();
            let mut max_seen = p.rate();
            for op in ops {
                match op {
                    Op::Poll => {
                        let clock = p.clock.max(now);
                        let paused = p.is_paused();
                        let expected = p.next_send_at(now);
                        let sent = p.poll_send(now);
                        prop_assert_eq!(sent, expected == Some(clock));
                        if sent {
                            prop_assert!(!paused);
                            if let Some(&(prev, _)) = sends.last() {
                                prop_assert!(clock - prev >= interval(p.rate()));
                                prop_assert!((clock - prev).as_secs_f64() * p.rate() >= 1.0 - 1e-9);
                            }
                            sends.push((clock, p.rate()));
                        }
                    }
                    Op::Step(ms) => now += MS * ms as u32,
                    Op::Back(ms) => now = now.checked_sub(MS * ms as u32).unwrap_or(now),
                    Op::Result { latency_ms, ok } => p.handle_result(MS * latency_ms as u32, ok, now),
                    Op::Pause => p.pause(),
                    Op::Resume => p.resume(),
                    Op::SetMax(r) => {
                        let r = f64::from(r);
                        prop_assert_eq!(p.set_max_rate(r).is_ok(), r >= 2.0);
                    }
                }
                let cfg = p.config();
                prop_assert!(p.rate() >= cfg.min_rate && p.rate() <= cfg.max_rate);
                max_seen = max_seen.max(p.rate());
            }
            // Any window [a, a + w] starting at a send holds ≤ 1 + w × max rate sends.
            for (i, &(a, _)) in sends.iter().enumerate() {
                for (j, &(b, _)) in sends.iter().enumerate().skip(i) {
                    let w = (b - a).as_secs_f64();
                    prop_assert!((j - i + 1) as f64 <= 1.0 + w * max_seen + 1e-9);
                }
            }
        }
    }
}
