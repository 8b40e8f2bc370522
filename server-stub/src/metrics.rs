//! Prometheus metrics, recorded into a recorder owned by this stub instance (no global
//! recorder), so several stubs can run in one process and each renders only its own.

use std::fmt;

use metrics::{Counter, Histogram, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Histogram buckets for request durations, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The stub's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh, empty set of metrics.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let m = Metrics { recorder, handle };
        m.describe();
        m
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder as &dyn Recorder, f)
    }

    fn describe(&self) {
        self.with(|| {
            metrics::describe_counter!(
                "tern_stub_ingest_requests_total",
                "Ingest requests by outcome (ok, malformed, error)"
            );
            metrics::describe_counter!(
                "tern_stub_batches_total",
                "Forwarded batches by outcome (stored, duplicate, rejected)"
            );
            metrics::describe_counter!(
                "tern_stub_events_total",
                "Events in stored batches by outcome (unique, duplicate)"
            );
            metrics::describe_counter!(
                "tern_stub_config_requests_total",
                "Config fetches by HTTP status"
            );
            metrics::describe_counter!(
                "tern_stub_faults_injected_total",
                "Faults injected into the data plane, by kind"
            );
            metrics::describe_histogram!(
                "tern_stub_request_duration_seconds",
                metrics::Unit::Seconds,
                "HTTP request handling time by route"
            );
        });
        // Register the counters at zero so a scrape shows them before any traffic.
        for o in ["ok", "malformed", "error"] {
            self.ingest_request(o).absolute(0);
        }
        for o in ["stored", "duplicate", "rejected"] {
            self.batch(o).absolute(0);
        }
        for o in ["unique", "duplicate"] {
            self.events(o).absolute(0);
        }
        for s in [200u16, 304] {
            self.config_request(s).absolute(0);
        }
        for k in ["down", "throttle", "error", "latency", "ack_loss", "drip"] {
            self.fault(k).absolute(0);
        }
    }

    /// `tern_stub_ingest_requests_total{outcome}`.
    pub fn ingest_request(&self, outcome: &'static str) -> Counter {
        self.with(|| metrics::counter!("tern_stub_ingest_requests_total", "outcome" => outcome))
    }

    /// `tern_stub_batches_total{outcome}`.
    pub fn batch(&self, outcome: &'static str) -> Counter {
        self.with(|| metrics::counter!("tern_stub_batches_total", "outcome" => outcome))
    }

    /// `tern_stub_events_total{outcome}`.
    pub fn events(&self, outcome: &'static str) -> Counter {
        self.with(|| metrics::counter!("tern_stub_events_total", "outcome" => outcome))
    }

    /// `tern_stub_config_requests_total{status}`.
    pub fn config_request(&self, status: u16) -> Counter {
        self.with(
            || metrics::counter!("tern_stub_config_requests_total", "status" => status.to_string()),
        )
    }

    /// `tern_stub_faults_injected_total{kind}`.
    pub fn fault(&self, kind: &'static str) -> Counter {
        self.with(|| metrics::counter!("tern_stub_faults_injected_total", "kind" => kind))
    }

    /// `tern_stub_request_duration_seconds{route}`.
    pub fn request_duration(&self, route: String) -> Histogram {
        self.with(|| metrics::histogram!("tern_stub_request_duration_seconds", "route" => route))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_independent() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.batch("stored").increment(3);
        assert!(a
            .render()
            .contains("tern_stub_batches_total{outcome=\"stored\"} 3"));
        assert!(b
            .render()
            .contains("tern_stub_batches_total{outcome=\"stored\"} 0"));
        a.request_duration("/x".into()).record(0.002);
        assert!(a
            .render()
            .contains("tern_stub_request_duration_seconds_bucket"));
    }
}
