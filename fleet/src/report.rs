//! The delivery report of a run, from the stub's verification counters (what the
//! backend stored) and the devices' own counters (what they recorded and how they sent).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::devices::UploadTotals;
use crate::Result;

/// What a run achieved.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Devices in the fleet.
    pub devices: usize,
    /// Wall time of the recording phase.
    pub record_seconds: f64,
    /// Wall time from the start of recording until the backend had every event.
    pub deliver_seconds: f64,
    /// Events the devices recorded (`track` returned `Ok`).
    pub recorded: u64,
    /// Distinct events the backend stored.
    pub delivered: u64,
    /// Copies the backend recognised and dropped (whole duplicate batches' events
    /// plus single duplicate events).
    pub duplicates_suppressed: u64,
    /// Recorded but not stored.
    pub lost: u64,
    /// Holes in the devices' sequence numbers at the backend.
    pub sequence_gaps: u64,
    /// Delivery latency (event timestamp to first storage), milliseconds.
    pub latency_p50_ms: i64,
    /// 99th percentile of the same.
    pub latency_p99_ms: i64,
    /// Requests acknowledged over QUIC.
    pub quic_requests: u64,
    /// Requests acknowledged over HTTPS.
    pub https_requests: u64,
    /// Requests that went to a relay other than the owner.
    pub failovers: u64,
    /// `Retry` replies the devices honoured.
    pub retry_replies: u64,
    /// What was done to the stack during the run.
    pub chaos: Vec<String>,
    /// Each relay's Prometheus endpoint.
    pub metrics_urls: Vec<String>,
}

impl Report {
    /// Builds the report from the stub's counters and the fleet's totals.
    pub async fn collect(
        cluster: &Cluster,
        devices: usize,
        recorded: u64,
        totals: UploadTotals,
        record_time: Duration,
        deliver_time: Duration,
        chaos: Vec<String>,
    ) -> Result<Report> {
        let s = cluster.summary().await?;
        let l = cluster.get_json("/verify/latency").await?;
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        let delivered = n(&s, "events_unique");
        Ok(Report {
            devices,
            record_seconds: record_time.as_secs_f64(),
            deliver_seconds: deliver_time.as_secs_f64(),
            recorded,
            delivered,
            duplicates_suppressed: n(&s, "events_duplicate") + n(&s, "events_in_duplicate_batches"),
            lost: recorded.saturating_sub(delivered),
            sequence_gaps: n(&s, "sequence_gaps"),
            latency_p50_ms: l["p50_ms"].as_i64().unwrap_or(0),
            latency_p99_ms: l["p99_ms"].as_i64().unwrap_or(0),
            quic_requests: totals.quic_ok,
            https_requests: totals.https_ok,
            failovers: totals.failovers,
            retry_replies: totals.retry_replies,
            chaos,
            metrics_urls: cluster.metrics_urls(),
        })
    }

    /// Nothing lost and no holes.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.sequence_gaps == 0 && self.delivered >= self.recorded
    }

    /// The report as a table for humans.
    pub fn render(&self) -> String {
        let total = (self.quic_requests + self.https_requests).max(1) as f64;
        let pct = |x: u64| 100.0 * x as f64 / total;
        let mut out = String::new();
        let _ = writeln!(out, "delivery report");
        let _ = writeln!(out, "  devices                 {:>12}", self.devices);
        let _ = writeln!(
            out,
            "  events recorded         {:>12}   ({:.0} events/s over {:.1} s)",
            self.recorded,
            self.recorded as f64 / self.record_seconds.max(1e-9),
            self.record_seconds
        );
        let _ = writeln!(out, "  events delivered        {:>12}", self.delivered);
        let _ = writeln!(
            out,
            "  duplicates suppressed   {:>12}",
            self.duplicates_suppressed
        );
        let _ = writeln!(out, "  lost                    {:>12}", self.lost);
        let _ = writeln!(out, "  sequence gaps           {:>12}", self.sequence_gaps);
        let _ = writeln!(
            out,
            "  delivery latency        {:>9} ms p50, {} ms p99",
            self.latency_p50_ms, self.latency_p99_ms
        );
        let _ = writeln!(
            out,
            "  requests                {:>12}   QUIC {:.1}%, HTTPS {:.1}%",
            self.quic_requests + self.https_requests,
            pct(self.quic_requests),
            pct(self.https_requests)
        );
        let _ = writeln!(out, "  failovers               {:>12}", self.failovers);
        let _ = writeln!(out, "  retry replies honoured  {:>12}", self.retry_replies);
        let _ = writeln!(
            out,
            "  all delivered after     {:>10.1} s",
            self.deliver_seconds
        );
        if !self.chaos.is_empty() {
            let _ = writeln!(out, "  chaos");
            for c in &self.chaos {
                let _ = writeln!(out, "    - {c}");
            }
        }
        let _ = writeln!(out, "  relay metrics");
        for u in &self.metrics_urls {
            let _ = writeln!(out, "    {u}");
        }
        let _ = writeln!(
            out,
            "  verdict                 {}",
            if self.ok() {
                "OK: nothing lost"
            } else {
                "FAILED: events lost"
            }
        );
        out
    }
}
