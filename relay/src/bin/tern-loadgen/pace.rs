//! Open-loop pacing: when each batch is *meant* to be sent, independently of how fast
//! replies come back, so a slow server shows up as latency instead of silently
//! lowering the offered load (coordinated omission).
//!
//! The whole run offers one batch every `events_per_batch / rate` seconds. Connection
//! `i` of `n` takes the global slots `i, i + n, i + 2n, ...`, so the connections
//! interleave evenly instead of all firing at once.

use std::time::{Duration, Instant};

/// The schedule of one connection.
#[derive(Clone, Debug)]
pub struct Pacer {
    start: Instant,
    /// Global slot period, in nanoseconds, as the fraction `num / den`.
    num: u128,
    den: u128,
    first_slot: u128,
    stride: u128,
}

impl Pacer {
    /// Connection `index` of `connections`, all together offering `rate` events per
    /// second in batches of `events_per_batch`, from `start`.
    pub fn new(
        start: Instant,
        rate: u64,
        events_per_batch: u64,
        index: usize,
        connections: usize,
    ) -> Self {
        Pacer {
            start,
            num: u128::from(events_per_batch.max(1)) * 1_000_000_000,
            den: u128::from(rate.max(1)),
            first_slot: index as u128,
            stride: connections.max(1) as u128,
        }
    }

    /// When this connection's `k`-th batch is due.
    pub fn due(&self, k: u64) -> Instant {
        let slot = self.first_slot + u128::from(k) * self.stride;
        let nanos = slot * self.num / self.den;
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// Parses a duration: `10` (seconds), `2.5s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s or m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?}: not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_interleave_into_an_even_global_schedule() {
        let t0 = Instant::now();
        // 250k events/s in batches of 100 = one batch every 400 µs, over 7 connections.
        let pacers: Vec<Pacer> = (0..7).map(|i| Pacer::new(t0, 250_000, 100, i, 7)).collect();
        let mut all: Vec<Duration> = pacers
            .iter()
            .flat_map(|p| (0..100).map(move |k| p.due(k) - t0))
            .collect();
        all.sort();
        for (slot, d) in all.iter().enumerate() {
            assert_eq!(*d, Duration::from_micros(400 * slot as u64), "slot {slot}");
        }
    }

    #[test]
    fn the_offered_rate_is_exact_over_time() {
        let t0 = Instant::now();
        // An awkward rate: 3 connections, 7 events per batch, 1000 events/s.
        let pacers: Vec<Pacer> = (0..3).map(|i| Pacer::new(t0, 1000, 7, i, 3)).collect();
        let horizon = t0 + Duration::from_secs(10);
        let due: usize = pacers
            .iter()
            .map(|p| (0..).take_while(|&k| p.due(k) < horizon).count())
            .sum();
        // 10 s × 1000 events/s / 7 events per batch = 1428.57 -> slots 0..=1428.
        assert_eq!(due, 1429);
        // No drift: the 1000th slot of connection 0 is exactly where arithmetic says.
        assert_eq!(
            pacers[0].due(1000) - t0,
            Duration::from_nanos(3000 * 7 * 1_000_000_000 / 1000)
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
