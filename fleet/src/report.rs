//! The delivery report of a run, from the stub's verification counters (what the
//! backend stored) and the devices' own counters (what they recorded and how they sent).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::devices::{BehaviourCounts, UploadTotals};
use crate::pods::Layer;
use crate::Result;

/// One relay's part in a run, from its Prometheus counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RelayLoad {
    /// Relay id.
    pub id: String,
    /// Events it accepted (forwarded or spooled) since its process started: a relay
    /// restarted by chaos counts from its restart.
    pub events_accepted: u64,
    /// Its share of all relays' accepted events, percent.
    pub share_pct: f64,
    /// Connections open at the end (QUIC and HTTPS).
    pub connections: u64,
    /// QUIC Retries it sent (address validation under load).
    pub quic_retries: u64,
    /// Connection attempts it refused (handshake or connection limits).
    pub connections_refused: u64,
    /// Handshakes that failed.
    pub handshake_failures: u64,
    /// Whether its metrics could be read (a relay stopped by chaos may be down).
    pub reachable: bool,
}

/// What the fleet side of a run did, for [`Report::collect`].
#[derive(Clone, Debug, Default)]
pub struct FleetFacts {
    /// Devices in the fleet.
    pub devices: usize,
    /// Processes they ran in.
    pub pods: usize,
    /// Their behaviour (`fast-cut`, `realistic`).
    pub profile: String,
    /// What they run (`tern-sdk` or the Kotlin layer).
    pub layer: Layer,
    /// From launching the pods until every device's store was open.
    pub start_time: Duration,
    /// Events the devices recorded (every call that records, with session events).
    pub recorded: u64,
    /// Upload counters summed over the devices.
    pub totals: UploadTotals,
    /// What the profile played out.
    pub behaviour: BehaviourCounts,
    /// Wall time of the recording phase.
    pub record_time: Duration,
    /// From the start of recording until the backend had every event.
    pub deliver_time: Duration,
    /// What was done to the stack during the run.
    pub chaos: Vec<String>,
}

/// What a run achieved.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Devices in the fleet.
    pub devices: usize,
    /// Processes the devices ran in.
    pub pods: usize,
    /// The devices' behaviour.
    pub profile: String,
    /// What the devices ran; a Kotlin fleet has no per-request counters (`requests`,
    /// `failovers`, `retry_replies`, `busy` are 0: see [`Layer::reports_requests`]).
    pub layer: Layer,
    /// Seconds from launching the devices until every store was open.
    pub start_seconds: f64,
    /// What the profile played out (backgrounded, foregrounded, network losses).
    pub behaviour: BehaviourCounts,
    /// Wall time of the recording phase.
    pub record_seconds: f64,
    /// Wall time from the start of recording until the backend had every event.
    pub deliver_seconds: f64,
    /// Events the devices recorded (calls that returned `Ok`, session events included).
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
    /// Requests a relay pushed back (busy), kept for the same relay.
    pub busy: u64,
    /// What each relay took: its share of the accepted events (HRW balance) and its
    /// connection figures, from its metrics at the end of the run.
    pub relays: Vec<RelayLoad>,
    /// What was done to the stack during the run.
    pub chaos: Vec<String>,
    /// Each relay's Prometheus endpoint.
    pub metrics_urls: Vec<String>,
}

impl Report {
    /// Builds the report from the stub's counters and the fleet's totals.
    pub async fn collect(cluster: &Cluster, facts: FleetFacts) -> Result<Report> {
        let FleetFacts {
            devices,
            pods,
            profile,
            layer,
            start_time,
            recorded,
            totals,
            behaviour,
            record_time,
            deliver_time,
            chaos,
        } = facts;
        let s = cluster.summary().await?;
        let l = cluster.get_json("/verify/latency").await?;
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        let delivered = n(&s, "events_unique");
        let mut relays = Vec::new();
        for (i, id) in cluster.relay_ids().into_iter().enumerate() {
            let mut r = RelayLoad {
                id,
                ..RelayLoad::default()
            };
            if let Ok(text) = cluster.relay_metrics(i).await {
                let total = |name: &str| tern_testkit::metrics::total(&text, name) as u64;
                r.events_accepted = total("tern_relay_events_accepted_total");
                r.connections = total("tern_relay_connections");
                r.quic_retries = total("tern_relay_quic_retries_total");
                r.connections_refused = total("tern_relay_connections_refused_total");
                r.handshake_failures = total("tern_relay_handshake_failures_total");
                r.reachable = true;
            }
            relays.push(r);
        }
        let accepted: u64 = relays.iter().map(|r| r.events_accepted).sum();
        for r in &mut relays {
            r.share_pct = 100.0 * r.events_accepted as f64 / accepted.max(1) as f64;
        }
        Ok(Report {
            devices,
            pods,
            profile,
            layer,
            start_seconds: start_time.as_secs_f64(),
            behaviour,
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
            busy: totals.busy,
            relays,
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
        let _ = writeln!(
            out,
            "  devices                 {:>12}   ({} profile, {} layer, {} processes, stores open after {:.1} s)",
            self.devices,
            self.profile,
            self.layer.name(),
            self.pods,
            self.start_seconds
        );
        let b = &self.behaviour;
        if b.backgrounded + b.foregrounded + b.network_lost > 0 {
            let _ = writeln!(
                out,
                "  behaviour               {:>12} to background, {} to foreground, {} network losses",
                b.backgrounded, b.foregrounded, b.network_lost
            );
        }
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
        let _ = writeln!(out, "  busy (kept, same relay) {:>12}", self.busy);
        if !self.layer.reports_requests() {
            let _ = writeln!(
                out,
                "                          (requests, failovers, retry replies, busy: not counted, the {} layer's stats have no request counters)",
                self.layer.name()
            );
        }
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
        let _ = writeln!(
            out,
            "  relays                  accepted share, open connections, QUIC Retries, refused, failed handshakes"
        );
        for r in &self.relays {
            if r.reachable {
                let _ = writeln!(
                    out,
                    "    {:<20} {:>12} {:>5.1}%, {} open, {} Retries, {} refused, {} failed",
                    r.id,
                    r.events_accepted,
                    r.share_pct,
                    r.connections,
                    r.quic_retries,
                    r.connections_refused,
                    r.handshake_failures
                );
            } else {
                let _ = writeln!(out, "    {:<20} (metrics unreachable)", r.id);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(relays: Vec<RelayLoad>) -> Report {
        Report {
            devices: 2,
            pods: 1,
            profile: "fast-cut".into(),
            layer: Layer::Rust,
            start_seconds: 0.5,
            behaviour: BehaviourCounts::default(),
            record_seconds: 1.0,
            deliver_seconds: 2.0,
            recorded: 10,
            delivered: 10,
            duplicates_suppressed: 0,
            lost: 0,
            sequence_gaps: 0,
            latency_p50_ms: 5,
            latency_p99_ms: 9,
            quic_requests: 3,
            https_requests: 1,
            failovers: 0,
            retry_replies: 0,
            busy: 7,
            relays,
            chaos: vec![],
            metrics_urls: vec![],
        }
    }

    #[test]
    fn the_report_shows_each_relays_share_and_connections() {
        let relay = |id: &str, accepted, share, reachable| RelayLoad {
            id: id.into(),
            events_accepted: accepted,
            share_pct: share,
            connections: 4,
            quic_retries: 2,
            connections_refused: 1,
            handshake_failures: 0,
            reachable,
        };
        let r = report(vec![
            relay("relay-1", 6, 60.0, true),
            relay("relay-2", 4, 40.0, true),
            relay("relay-3", 0, 0.0, false),
        ]);
        let text = r.render();
        assert!(
            text.contains("busy (kept, same relay)            7"),
            "{text}"
        );
        assert!(
            text.contains(
                "relay-1                         6  60.0%, 4 open, 2 Retries, 1 refused, 0 failed"
            ),
            "{text}"
        );
        assert!(
            text.contains("relay-3              (metrics unreachable)"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["relays"][1]["share_pct"], 40.0);
        assert_eq!(json["busy"], 7);
    }
}
