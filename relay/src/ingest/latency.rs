//! A lock-free latency histogram for percentiles on the ingest path: one relaxed
//! atomic add per request, no lock, no allocation. Buckets are logarithmic with four
//! per power of two (values below 4 exact), so a percentile read from it is the upper
//! bound of its bucket: at most 25% above the true value. The admin sampler reads it
//! every second and takes the difference ([`Snapshot::since`]) for that second's p99.

use std::sync::atomic::{AtomicU64, Ordering};

/// Number of buckets: values up to 2^32 (µs: about 71 minutes); larger ones land in
/// the last bucket.
pub const BUCKETS: usize = 128;

/// The bucket of `v`.
fn index(v: u64) -> usize {
    if v < 4 {
        return v as usize;
    }
    let log = 63 - v.leading_zeros(); // >= 2
    let sub = (v >> (log - 2)) & 3;
    ((log as usize - 1) * 4 + sub as usize).min(BUCKETS - 1)
}

/// The largest value in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let log = (i / 4 + 1) as u32;
    let sub = (i % 4) as u64;
    ((4 + sub + 1) << (log - 2)) - 1
}

/// Counts per bucket, shared by the recording threads.
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.snapshot().count())
            .finish()
    }
}

impl LatencyHistogram {
    /// Counts one value (any unit; the ingest path records microseconds).
    pub fn record(&self, v: u64) {
        self.buckets[index(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(std::array::from_fn(|i| {
            self.buckets[i].load(Ordering::Relaxed)
        }))
    }
}

/// Counts per bucket at one moment, or between two moments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot([u64; BUCKETS]);

impl Snapshot {
    /// What was recorded after `earlier`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot(std::array::from_fn(|i| {
            self.0[i].saturating_sub(earlier.0[i])
        }))
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `q` quantile (0..=1): the upper bound of the bucket holding it; `None`
    /// when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        assert_eq!(
            (0..8).map(index).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
        for i in 0..BUCKETS - 1 {
            assert_eq!(index(upper_bound(i)), i, "bucket {i}");
            assert_eq!(index(upper_bound(i) + 1), i + 1, "bucket {i}");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    proptest! {
        #[test]
        fn a_value_is_at_most_25_percent_below_its_bound(v in 0u64..(1 << 32)) {
            let b = upper_bound(index(v));
            prop_assert!(b >= v);
            prop_assert!((b - v) as f64 <= 0.25 * v as f64 + 1.0, "{} -> {}", v, b);
        }
    }

    #[test]
    fn quantiles_over_an_interval() {
        let h = LatencyHistogram::default();
        assert_eq!(h.snapshot().quantile(0.99), None);
        for _ in 0..1000 {
            h.record(100);
        }
        let before = h.snapshot();
        for _ in 0..98 {
            h.record(1_000);
        }
        h.record(50_000);
        h.record(50_000);
        let all = h.snapshot();
        assert_eq!(all.count(), 1100);
        assert_eq!(all.quantile(0.5), Some(upper_bound(index(100))));
        let second = all.since(&before);
        assert_eq!(second.count(), 100);
        let p99 = second.quantile(0.99).unwrap();
        assert!((50_000..=62_500).contains(&p99), "{p99}");
        let p98 = second.quantile(0.98).unwrap();
        assert!((1_000..=1_250).contains(&p98), "{p98}");
        assert_eq!(second.quantile(0.0), Some(upper_bound(index(1_000))));
    }
}
