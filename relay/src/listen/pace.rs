//! Handshake pacing: how many QUIC handshakes a relay lets run at once, from how many
//! it has been finishing per second.
//!
//! A connection storm (a fleet starting, a relay restart handing its devices to the
//! next relay, every device coming back online at once) brings more handshakes than a
//! relay can finish before the devices' connect timeouts. Admitting all of them makes
//! every one slow: the CPU is shared among thousands of half-done handshakes, most time
//! out on the device side, and a device that timed out cannot tell a relay buried in
//! work from a network that drops UDP, so it falls back to HTTPS or to another relay —
//! moving the storm instead of absorbing it. A fixed ceiling (`max_handshakes`) cannot
//! fix this: the right number depends on the machine, the load beside the handshakes,
//! and the moment.
//!
//! So the relay measures. [`HandshakePace`] counts the handshakes that finished in the
//! last [`WINDOW`] and admits at most as many at once as it finishes in
//! `queue` (the `handshake_queue_ms` limit, default 1 s, well below the SDK's 3 s
//! connect timeout) — never fewer than `floor`, so an idle relay (nothing measured yet)
//! starts at once and the measurement can grow with the load. By Little's law a
//! handshake admitted under this limit waits about `queue` at most. An attempt beyond
//! it is refused at once (`CONNECTION_REFUSED`: a few bytes, no state), which the SDK
//! takes for back-pressure: it waits its jittered backoff and tries the same relay
//! again, over QUIC (docs/protocol.md §2.3).
//!
//! What is measured is whole handshakes, the clients' part included (their round trips,
//! their own CPU): with slow clients a relay finishes fewer per second without being
//! any busier, and a pace that followed that alone would shrink towards its floor. So
//! the floor is high by default (1,024, what a relay can always afford to have in
//! progress), and pacing binds only when a storm brings more at once than that and
//! than the relay has been finishing.
//!
//! Sans-IO: the caller passes `now`; the relay keeps one pace behind a mutex.

use std::time::{Duration, Instant};

/// How far back finished handshakes are counted.
pub const WINDOW: Duration = Duration::from_secs(2);

/// Buckets the window is counted in.
const BUCKETS: usize = 20;

/// The pacing state of one QUIC listener.
#[derive(Clone, Debug)]
pub struct HandshakePace {
    queue: Duration,
    floor: usize,
    ceiling: usize,
    /// Handshakes finished per bucket; `counts[i]` is the bucket starting at
    /// `epoch + (first + i) · WINDOW/BUCKETS` (a ring indexed by bucket number).
    counts: [u64; BUCKETS],
    /// The bucket number `counts` was last advanced to.
    current: u64,
    epoch: Option<Instant>,
}

impl HandshakePace {
    /// A pace admitting what finishes in `queue`, at least `floor` and at most
    /// `ceiling` at once.
    pub fn new(queue: Duration, floor: usize, ceiling: usize) -> HandshakePace {
        HandshakePace {
            queue,
            floor: floor.max(1),
            ceiling: ceiling.max(1),
            counts: [0; BUCKETS],
            current: 0,
            epoch: None,
        }
    }

    fn bucket(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        let width = WINDOW / BUCKETS as u32;
        let n = (now.saturating_duration_since(epoch).as_nanos() / width.as_nanos()) as u64;
        // Clear the buckets that fell out of the window since the last call.
        if n > self.current {
            let gone = (n - self.current).min(BUCKETS as u64);
            for k in 1..=gone {
                self.counts[((self.current + k) % BUCKETS as u64) as usize] = 0;
            }
            self.current = n;
        }
        self.current
    }

    /// A handshake finished (successfully) at `now`.
    pub fn finished(&mut self, now: Instant) {
        let b = self.bucket(now);
        self.counts[(b % BUCKETS as u64) as usize] += 1;
    }

    /// Handshakes finished within the window before `now`.
    pub fn finished_in_window(&mut self, now: Instant) -> u64 {
        self.bucket(now);
        self.counts.iter().sum()
    }

    /// How many handshakes may be in progress at `now`.
    pub fn limit(&mut self, now: Instant) -> usize {
        let finished = self.finished_in_window(now);
        let rate = finished as f64 / WINDOW.as_secs_f64();
        let by_rate = (rate * self.queue.as_secs_f64()) as usize;
        by_rate.max(self.floor).min(self.ceiling)
    }

    /// Whether a new attempt is admitted while `in_progress` handshakes run.
    pub fn admits(&mut self, in_progress: usize, now: Instant) -> bool {
        in_progress < self.limit(now)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_idle_relay_admits_the_floor() {
        let mut p = HandshakePace::new(Duration::from_secs(1), 64, 4096);
        let t0 = Instant::now();
        assert_eq!(p.limit(t0), 64);
        assert!(p.admits(63, t0));
        assert!(!p.admits(64, t0));
    }

    #[test]
    fn the_limit_follows_what_finishes_per_second_times_the_queue() {
        let mut p = HandshakePace::new(Duration::from_secs(1), 16, 4096);
        let t0 = Instant::now();
        // 500 handshakes a second for two seconds.
        for i in 0..1000u64 {
            p.finished(t0 + Duration::from_millis(i * 2));
        }
        let t = t0 + Duration::from_millis(1999);
        let limit = p.limit(t);
        assert!((450..=500).contains(&limit), "{limit}");
        // Half the queue: half the limit.
        let mut half = HandshakePace::new(Duration::from_millis(500), 16, 4096);
        for i in 0..1000u64 {
            half.finished(t0 + Duration::from_millis(i * 2));
        }
        assert_eq!(half.limit(t), limit / 2);
    }

    #[test]
    fn old_handshakes_leave_the_window() {
        let mut p = HandshakePace::new(Duration::from_secs(1), 8, 4096);
        let t0 = Instant::now();
        for _ in 0..1000 {
            p.finished(t0);
        }
        assert_eq!(p.limit(t0), 500);
        assert_eq!(p.limit(t0 + WINDOW - Duration::from_millis(150)), 500);
        assert_eq!(p.limit(t0 + WINDOW + Duration::from_millis(100)), 8);
        // A long quiet spell clears everything, whatever its length.
        p.finished(t0 + Duration::from_secs(3600));
        assert_eq!(p.finished_in_window(t0 + Duration::from_secs(3600)), 1);
    }

    #[test]
    fn the_ceiling_bounds_the_limit() {
        let mut p = HandshakePace::new(Duration::from_secs(10), 8, 100);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            p.finished(t0);
        }
        assert_eq!(p.limit(t0), 100);
    }

    proptest! {
        /// Whatever the finishing times, the limit stays within [floor, ceiling] and
        /// equals the window's count scaled by queue / window.
        #[test]
        fn the_limit_is_the_windowed_rate_within_bounds(
            gaps in proptest::collection::vec(0u64..400, 0..400),
            floor in 1usize..100,
            ceiling in 1usize..5000,
            queue_ms in 1u64..5000,
        ) {
            let mut p = HandshakePace::new(Duration::from_millis(queue_ms), floor, ceiling);
            let t0 = Instant::now();
            let mut t = t0;
            let mut times = Vec::new();
            for g in gaps {
                t += Duration::from_millis(g);
                p.finished(t);
                times.push(t);
            }
            let limit = p.limit(t);
            prop_assert!(limit >= floor.min(ceiling.max(1)) && limit <= ceiling.max(1));
            // The window is counted in buckets: everything within WINDOW minus one
            // bucket of `t` is in, nothing older than WINDOW.
            let width = WINDOW / BUCKETS as u32;
            let surely_in = times.iter().filter(|&&x| t - x < WINDOW - width).count() as u64;
            let maybe_in = times.iter().filter(|&&x| t - x <= WINDOW).count() as u64;
            let counted = p.finished_in_window(t);
            prop_assert!(surely_in <= counted && counted <= maybe_in,
                "{surely_in} <= {counted} <= {maybe_in}");
        }
    }
}
