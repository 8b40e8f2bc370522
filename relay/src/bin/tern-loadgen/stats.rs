//! Counting outcomes and latencies, and summarising them.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

/// What became of each request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// `IngestReply{accepted, forwarded}` (and any durability this version does not
    /// know: still an acceptance).
    pub accepted_forwarded: u64,
    /// `IngestReply{accepted, spooled}`.
    pub accepted_spooled: u64,
    /// `IngestReply{retry}` (and unknown outcomes, treated as retry).
    pub retry: u64,
    /// `IngestReply{rejected}`.
    pub rejected: u64,
    /// `ErrorReply`.
    pub error_reply: u64,
    /// Stream or connection failures, undecodable or unexpected replies.
    pub transport_error: u64,
    /// Still unanswered when the drain timeout ran out.
    pub timed_out: u64,
}

impl Outcomes {
    pub fn accepted(&self) -> u64 {
        self.accepted_forwarded + self.accepted_spooled
    }
    /// Every request that has an outcome.
    pub fn total(&self) -> u64 {
        self.accepted()
            + self.retry
            + self.rejected
            + self.error_reply
            + self.transport_error
            + self.timed_out
    }
    /// Requests that failed in a way a healthy run never shows.
    pub fn errors(&self) -> u64 {
        self.rejected + self.error_reply + self.transport_error + self.timed_out
    }
    pub fn add(&mut self, o: &Outcomes) {
        self.accepted_forwarded += o.accepted_forwarded;
        self.accepted_spooled += o.accepted_spooled;
        self.retry += o.retry;
        self.rejected += o.rejected;
        self.error_reply += o.error_reply;
        self.transport_error += o.transport_error;
        self.timed_out += o.timed_out;
    }
    pub fn json_value(&self) -> serde_json::Value {
        self.json()
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "accepted_forwarded": self.accepted_forwarded,
            "accepted_spooled": self.accepted_spooled,
            "retry": self.retry,
            "rejected": self.rejected,
            "error_reply": self.error_reply,
            "transport_error": self.transport_error,
            "timed_out": self.timed_out,
        })
    }
}

/// A request's outcome class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Spooled,
    Retry,
    Rejected,
    ErrorReply,
    Transport,
}

impl Outcome {
    pub fn is_accepted(self) -> bool {
        matches!(self, Outcome::Forwarded | Outcome::Spooled)
    }
}

/// Latencies are recorded in microseconds, 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant, valid bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Counts of one side of the run (measured, or warm-up).
#[derive(Debug)]
pub struct Stats {
    pub outcomes: Outcomes,
    /// Batches sent.
    pub batches: u64,
    /// Events in them.
    pub events: u64,
    /// Events in accepted batches.
    pub events_accepted: u64,
    /// Frame bytes sent.
    pub bytes: u64,
    /// Ack latency of accepted batches from when the batch was due (open loop: its
    /// scheduled time; closed loop: when it was sent). Includes time spent waiting for
    /// a free stream, so an overloaded server cannot hide behind a slow sender.
    pub latency: Histogram<u64>,
    /// Ack latency of accepted batches from the moment the request was written.
    pub service: Histogram<u64>,
    /// Batches sent more than 10 ms after they were due (open loop only).
    pub late: u64,
    /// The last reply received.
    pub last_done: Option<Instant>,
    /// Accepted batches whose reply came within the measured window (whenever they
    /// were sent): the steady-state throughput, unaffected by the warm-up ramp and by
    /// the drain of requests still in flight at the end.
    pub window_batches: u64,
    /// Events in them.
    pub window_events: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            outcomes: Outcomes::default(),
            batches: 0,
            events: 0,
            events_accepted: 0,
            bytes: 0,
            latency: histogram(),
            service: histogram(),
            late: 0,
            last_done: None,
            window_batches: 0,
            window_events: 0,
        }
    }
}

/// One finished request.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    pub due: Instant,
    pub sent: Instant,
    pub done: Instant,
    pub events: u64,
    pub bytes: u64,
    pub outcome: Outcome,
}

impl Stats {
    pub fn record(&mut self, r: &Record) {
        self.batches += 1;
        self.events += r.events;
        self.bytes += r.bytes;
        if r.sent.saturating_duration_since(r.due) > Duration::from_millis(10) {
            self.late += 1;
        }
        let o = &mut self.outcomes;
        match r.outcome {
            Outcome::Forwarded => o.accepted_forwarded += 1,
            Outcome::Spooled => o.accepted_spooled += 1,
            Outcome::Retry => o.retry += 1,
            Outcome::Rejected => o.rejected += 1,
            Outcome::ErrorReply => o.error_reply += 1,
            Outcome::Transport => o.transport_error += 1,
        }
        if r.outcome.is_accepted() {
            self.events_accepted += r.events;
            self.latency
                .saturating_record(micros(r.done.saturating_duration_since(r.due)));
            self.service
                .saturating_record(micros(r.done.saturating_duration_since(r.sent)));
        }
        self.last_done = self.last_done.max(Some(r.done));
    }

    /// A request that never finished.
    pub fn record_timeout(&mut self, events: u64, bytes: u64) {
        self.batches += 1;
        self.events += events;
        self.bytes += bytes;
        self.outcomes.timed_out += 1;
    }

    pub fn merge(&mut self, other: &Stats) {
        self.outcomes.add(&other.outcomes);
        self.batches += other.batches;
        self.events += other.events;
        self.events_accepted += other.events_accepted;
        self.bytes += other.bytes;
        // Same bounds on both sides: cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        self.late += other.late;
        self.last_done = self.last_done.max(other.last_done);
        self.window_batches += other.window_batches;
        self.window_events += other.window_events;
    }

    /// Counts an accepted reply that arrived within the measured window.
    pub fn count_in_window(&mut self, r: &Record) {
        if r.outcome.is_accepted() {
            self.window_batches += 1;
            self.window_events += r.events;
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles {
                count: 0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    pub fn json_ms(&self) -> serde_json::Value {
        self.json()
    }

    fn json(&self) -> serde_json::Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "count": self.count,
            "p50": r(self.p50), "p90": r(self.p90), "p99": r(self.p99),
            "p999": r(self.p999), "max": r(self.max), "mean": r(self.mean),
        })
    }
}

/// How the run was set up, for the record.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub mode: &'static str,
    pub target: String,
    pub connections: usize,
    pub concurrency: usize,
    pub events_per_batch: usize,
    /// Offered events/s; 0 = closed loop, as fast as replies allow.
    pub rate: u64,
    pub duration: Duration,
    pub warmup: Duration,
}

/// The run's result.
#[derive(Debug)]
pub struct Report {
    pub info: RunInfo,
    pub measured: Stats,
    pub warmup: Stats,
    /// From the end of the warm-up to the last reply of a measured request.
    pub elapsed: Duration,
    /// The measured window (`--duration`).
    pub window: Duration,
    pub probe_attempts: u32,
    /// CPU time this process used (user + system) over the whole run, including the
    /// raw server in `--raw` mode; `None` where `/proc/self/stat` is not available.
    pub cpu: Option<Duration>,
}

impl Report {
    /// Accepted events per second: acknowledgements received within the window.
    pub fn events_per_sec(&self) -> f64 {
        per_sec(self.measured.window_events, self.window)
    }
    pub fn batches_per_sec(&self) -> f64 {
        per_sec(self.measured.window_batches, self.window)
    }

    pub fn json(&self) -> serde_json::Value {
        let m = &self.measured;
        json!({
            "mode": self.info.mode,
            "target": self.info.target,
            "connections": self.info.connections,
            "concurrency": self.info.concurrency,
            "events_per_batch": self.info.events_per_batch,
            "rate": self.info.rate,
            "duration_s": self.info.duration.as_secs_f64(),
            "warmup_s": self.info.warmup.as_secs_f64(),
            "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "events_per_sec": self.events_per_sec().round(),
            "batches_per_sec": (self.batches_per_sec() * 10.0).round() / 10.0,
            "offered_events_per_sec": per_sec(m.events, self.window).round(),
            "batches_sent": m.batches,
            "events_sent": m.events,
            "events_accepted": m.events_accepted,
            "bytes_per_batch": m.bytes.checked_div(m.batches).unwrap_or(0),
            "late_sends": m.late,
            "latency_ms": Percentiles::of(&m.latency).json(),
            "service_latency_ms": Percentiles::of(&m.service).json(),
            "outcomes": m.outcomes.json(),
            "answered": m.outcomes.total(),
            "errors": m.outcomes.errors(),
            "warmup": {
                "batches_sent": self.warmup.batches,
                "events_sent": self.warmup.events,
                "outcomes": self.warmup.outcomes.json(),
            },
            "probe_attempts": self.probe_attempts,
            "loadgen_cpu_s": self.cpu.map(|d| (d.as_secs_f64() * 100.0).round() / 100.0),
        })
    }

    pub fn human(&self) -> String {
        let m = &self.measured;
        let i = &self.info;
        let l = Percentiles::of(&m.latency);
        let s = Percentiles::of(&m.service);
        let o = &m.outcomes;
        let rate = if i.rate == 0 {
            "max (closed loop)".to_string()
        } else {
            format!("{} events/s (open loop)", i.rate)
        };
        let mut out = String::new();
        out.push_str(&format!(
            "tern-loadgen {} -> {}: {} connections x {} streams, {} events/batch, rate {}, {:.1}s (+{:.1}s warm-up)\n",
            i.mode, i.target, i.connections, i.concurrency, i.events_per_batch, rate,
            i.duration.as_secs_f64(), i.warmup.as_secs_f64()
        ));
        out.push_str(&format!(
            "  throughput   {:>12.0} events/s  {:>10.1} batches/s  ({} batches sent in the window, {} B/batch on the wire; last reply {:.2}s after the window opened)\n",
            self.events_per_sec(),
            self.batches_per_sec(),
            m.batches,
            m.bytes.checked_div(m.batches).unwrap_or(0),
            self.elapsed.as_secs_f64()
        ));
        let line = |name: &str, p: &Percentiles| {
            format!(
                "  {name:<12} p50 {:.3} ms  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})\n",
                p.p50, p.p90, p.p99, p.p999, p.max, p.count
            )
        };
        out.push_str(&line("ack latency", &l));
        out.push_str(&line("service", &s));
        out.push_str(&format!(
            "  outcomes     forwarded {}  spooled {}  retry {}  rejected {}  error_reply {}  transport {}  timed_out {}  (errors {} of {})\n",
            o.accepted_forwarded, o.accepted_spooled, o.retry, o.rejected, o.error_reply,
            o.transport_error, o.timed_out, o.errors(), o.total()
        ));
        if m.late > 0 {
            out.push_str(&format!(
                "  {} batches were sent >10 ms after they were due (all streams busy, or the generator starved of CPU)\n",
                m.late
            ));
        }
        out
    }
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (Linux;
/// clock ticks of 10 ms, the kernel's USER_HZ on every mainstream architecture).
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14, 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn per_sec(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = histogram();
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let p = Percentiles::of(&h);
        let close = |got: f64, want: f64| (got - want).abs() / want < 0.002;
        assert_eq!(p.count, 10_000);
        assert!(close(p.p50, 5.0), "{p:?}");
        assert!(close(p.p90, 9.0), "{p:?}");
        assert!(close(p.p99, 9.9), "{p:?}");
        assert!(close(p.p999, 9.99), "{p:?}");
        assert!(close(p.max, 10.0), "{p:?}");
        assert!(close(p.mean, 5.0005), "{p:?}");
        assert_eq!(Percentiles::of(&histogram()).count, 0);
    }

    #[test]
    fn records_count_every_outcome_and_time_only_acceptances() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Stats::default();
        let rec = |outcome, due_ms, sent_ms, done_ms| Record {
            due: t0 + ms(due_ms),
            sent: t0 + ms(sent_ms),
            done: t0 + ms(done_ms),
            events: 10,
            bytes: 100,
            outcome,
        };
        s.record(&rec(Outcome::Forwarded, 0, 0, 2));
        s.record(&rec(Outcome::Spooled, 0, 20, 24));
        s.record(&rec(Outcome::Retry, 0, 0, 1));
        s.record(&rec(Outcome::Transport, 0, 0, 30));
        s.record_timeout(10, 100);
        assert_eq!(s.outcomes.total(), 5);
        assert_eq!(s.batches, 5);
        assert_eq!(s.outcomes.accepted(), 2);
        assert_eq!(s.outcomes.errors(), 2);
        assert_eq!(s.events_accepted, 20);
        assert_eq!(s.late, 1, "sent 20 ms after it was due");
        let l = Percentiles::of(&s.latency);
        assert_eq!(l.count, 2);
        assert!((l.max - 24.0).abs() < 0.05, "from the due time: {l:?}");
        let sv = Percentiles::of(&s.service);
        assert!((sv.max - 4.0).abs() < 0.01, "from the send: {sv:?}");
        assert_eq!(s.last_done, Some(t0 + ms(30)));
        s.count_in_window(&rec(Outcome::Forwarded, 0, 0, 2));
        s.count_in_window(&rec(Outcome::Retry, 0, 0, 2));
        assert_eq!(
            (s.window_batches, s.window_events),
            (1, 10),
            "acceptances only"
        );
        let mut total = Stats::default();
        total.merge(&s);
        total.merge(&s);
        assert_eq!(total.outcomes.total(), 10);
        assert_eq!(total.latency.len(), 4);
        assert_eq!(total.window_events, 20);
    }

    #[test]
    fn process_cpu_is_read_and_grows() {
        let Some(before) = process_cpu() else {
            return; // not Linux
        };
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(process_cpu().unwrap() >= before);
    }
}
