//! The delivery report of a run, from the stub's verification counters (what the
//! backend stored) and the devices' own counters (what they recorded and how they sent).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::devices::{BehaviourCounts, UploadTotals};
use crate::exposures::{ExposureCounts, ExposureReport};
use crate::pods::{Health, Layer};
use crate::Result;

/// A bucket bound in ms, or `-` when nothing was sampled.
fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

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
    /// Attempts its handshake pacing refused (counted in `connections_refused` too).
    pub handshakes_paced: u64,
    /// How late its runtime ran a 100 ms timer (`tern_relay_runtime_lag_seconds`),
    /// 99th percentile and largest, ms (bucket bounds; `None`: not sampled). A relay
    /// starved of CPU answers late, and devices may take it for dead.
    pub runtime_lag_p99_ms: Option<f64>,
    /// The largest of the same, ms (bucket bound).
    pub runtime_lag_max_ms: Option<f64>,
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
    /// When each storm began, in seconds from the start of recording: the fleet's own
    /// start (every device connecting), then each chaos step.
    pub markers: Vec<(f64, String)>,
    /// The devices' summed request health each time it changed, in seconds from the
    /// start of recording ([`crate::pods::Pods::timeline`]).
    pub timeline: Vec<(f64, Health)>,
    /// The devices' exposure counters, when they read flags (`--exposures`).
    pub exposures: Option<ExposureCounts>,
}

/// How a storm settled: from its start to the last request trouble (a failed or busy
/// request, HTTPS use, a failover) before the next storm or the end of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settle {
    /// What began the storm.
    pub storm: String,
    /// When, seconds from the start of recording.
    pub at_seconds: f64,
    /// Seconds from then to its last trouble (0 when there was none).
    pub settled_seconds: f64,
    /// Troubles during it.
    pub troubles: u64,
    /// HTTPS successes during it.
    pub https: u64,
    /// Failovers during it.
    pub failovers: u64,
}

/// The [`Settle`] of each storm in `markers` (sorted by time) from the health
/// `timeline` (sorted by time, counts only growing).
pub fn settle_times(markers: &[(f64, String)], timeline: &[(f64, Health)]) -> Vec<Settle> {
    let at_or_before = |t: f64| {
        timeline
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map(|(_, h)| *h)
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (i, (at, storm)) in markers.iter().enumerate() {
        let until = markers.get(i + 1).map_or(f64::INFINITY, |(t, _)| *t);
        let base = at_or_before(*at);
        let mut last = base;
        let mut last_change = *at;
        for (t, h) in timeline.iter().filter(|(t, _)| *t > *at && *t <= until) {
            if h.troubles() > last.troubles() {
                last_change = *t;
            }
            last = *h;
        }
        out.push(Settle {
            storm: storm.clone(),
            at_seconds: *at,
            settled_seconds: last_change - at,
            troubles: last.troubles().saturating_sub(base.troubles()),
            https: last.https_ok.saturating_sub(base.https_ok),
            failovers: last.failovers.saturating_sub(base.failovers),
        });
    }
    out
}

/// What a run achieved.
/// Devices' QUIC handshakes that timed out, by cause ([`Report::handshake_timeouts`]).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct HandshakeTimeouts {
    /// The relay was heard during the handshake (counted as busy).
    pub heard: u64,
    /// Nothing was heard from the relay.
    pub silent: u64,
    /// Of `silent`: first handshakes to a relay given one more try before HTTPS.
    pub second_tries: u64,
    /// Nothing heard, and the device's timer fired late (counted as busy).
    pub late: u64,
}

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
    /// Relays on HTTPS after a QUIC failure that a background QUIC check brought
    /// back to QUIC.
    #[serde(default)]
    pub quic_checks_ok: u64,
    /// Why relays were backed off (each failover follows one) or moved to HTTPS.
    #[serde(default)]
    pub backoffs: crate::devices::Backoffs,
    /// `Retry` replies the devices honoured.
    pub retry_replies: u64,
    /// Requests a relay pushed back (busy), kept for the same relay.
    pub busy: u64,
    /// The devices' QUIC handshakes that timed out, by what the device could tell:
    /// the relay was heard (busy), nothing was heard (HTTPS or the next relay was
    /// tried), or the device's own timer fired late (the simulator starved it).
    pub handshake_timeouts: HandshakeTimeouts,
    /// The longest the pods' device runtimes ran a 10 ms timer late, ms: how far the
    /// simulator itself fell behind (a phone's runtime does not share its CPU with
    /// thousands of others).
    pub device_runtime_lag_max_ms: u64,
    /// What each relay took: its share of the accepted events (HRW balance) and its
    /// connection figures, from its metrics at the end of the run.
    pub relays: Vec<RelayLoad>,
    /// QUIC handshake time at the relays (first Initial to established), median over
    /// every relay's histogram, ms (the bucket bound; `None`: no handshake measured).
    pub handshake_p50_ms: Option<f64>,
    /// The same, 99th percentile.
    pub handshake_p99_ms: Option<f64>,
    /// How each storm (the fleet's start, each chaos step) settled.
    pub settle: Vec<Settle>,
    /// What was done to the stack during the run.
    pub chaos: Vec<String>,
    /// Each relay's Prometheus endpoint.
    pub metrics_urls: Vec<String>,
    /// Exposures recorded by the devices against those the stub stored (`--exposures`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposures: Option<ExposureReport>,
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
            markers,
            timeline,
            exposures,
        } = facts;
        let s = cluster.summary().await?;
        let l = cluster.latency().await?;
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        let delivered = n(&s, "events_unique");
        let mut relays = Vec::new();
        let mut handshakes = Vec::new();
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
                r.handshakes_paced = total("tern_relay_handshakes_paced_total");
                let lag = tern_testkit::metrics::buckets(&text, "tern_relay_runtime_lag_seconds");
                r.runtime_lag_p99_ms =
                    tern_testkit::metrics::quantile(&lag, 0.99).map(|s| s * 1000.0);
                r.runtime_lag_max_ms =
                    tern_testkit::metrics::quantile(&lag, 1.0).map(|s| s * 1000.0);
                r.reachable = true;
                tern_testkit::metrics::merge_buckets(
                    &mut handshakes,
                    &tern_testkit::metrics::buckets(
                        &text,
                        "tern_relay_quic_handshake_duration_seconds",
                    ),
                );
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
            quic_checks_ok: totals.quic_checks_ok,
            backoffs: totals.backoffs,
            retry_replies: totals.retry_replies,
            busy: totals.busy,
            handshake_timeouts: HandshakeTimeouts {
                heard: totals.handshake_timeouts_heard,
                silent: totals.handshake_timeouts_silent,
                second_tries: totals.handshake_second_chances,
                late: totals.handshake_timeouts_late,
            },
            device_runtime_lag_max_ms: timeline
                .iter()
                .map(|(_, h)| h.runtime_lag_ms)
                .max()
                .unwrap_or(0),
            relays,
            handshake_p50_ms: tern_testkit::metrics::quantile(&handshakes, 0.5).map(|s| s * 1000.0),
            handshake_p99_ms: tern_testkit::metrics::quantile(&handshakes, 0.99)
                .map(|s| s * 1000.0),
            settle: settle_times(&markers, &timeline),
            chaos,
            metrics_urls: cluster.metrics_urls(),
            exposures: exposures.map(|e| ExposureReport::new(e, &s)),
        })
    }

    /// Nothing lost and no holes; with exposures, every exposure stored once.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.sequence_gaps == 0
            && self.delivered >= self.recorded
            && self.exposures.as_ref().is_none_or(ExposureReport::ok)
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
        if b.backgrounded + b.foregrounded + b.network_lost + b.killed > 0 {
            let failed = if b.relaunch_failed > 0 {
                format!(", {} relaunches FAILED", b.relaunch_failed)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  behaviour               {:>12} to background, {} to foreground, {} network losses, \
                 {} app kills ({} relaunched{failed})",
                b.backgrounded, b.foregrounded, b.network_lost, b.killed, b.relaunched
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
        if let Some(e) = &self.exposures {
            out.push_str(&e.render());
        }
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
        let b = &self.backoffs;
        if b.total() + b.to_https + b.silences_unread > 0 {
            let _ = writeln!(
                out,
                "  relays backed off       {:>12}   {} silent mid-request, {} unreachable, {} busy past patience, {} draining; {} QUIC to HTTPS; {} silences not held (reply unread on the device)",
                b.total(),
                b.silent,
                b.unreachable,
                b.busy,
                b.draining,
                b.to_https,
                b.silences_unread
            );
        }
        if self.quic_checks_ok > 0 {
            let _ = writeln!(
                out,
                "  back to QUIC by a check {:>12}   (a relay on HTTPS after a QUIC failure)",
                self.quic_checks_ok
            );
        }
        let _ = writeln!(out, "  retry replies honoured  {:>12}", self.retry_replies);
        let _ = writeln!(out, "  busy (kept, same relay) {:>12}", self.busy);
        let t = &self.handshake_timeouts;
        if t.heard + t.silent + t.late > 0 {
            let _ = writeln!(
                out,
                "  QUIC connect timeouts   {:>12}   {} relay heard (busy), {} nothing heard ({} of them tried again), {} device timer late",
                t.heard + t.silent + t.late,
                t.heard,
                t.silent,
                t.second_tries,
                t.late
            );
        }
        if self.device_runtime_lag_max_ms > 0 {
            let _ = writeln!(
                out,
                "  device runtime lag      {:>9} ms max (a 10 ms timer in each pod: the simulator's own delay)",
                self.device_runtime_lag_max_ms
            );
        }
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
        if let (Some(p50), Some(p99)) = (self.handshake_p50_ms, self.handshake_p99_ms) {
            let _ = writeln!(
                out,
                "  QUIC handshakes         {:>9} ms p50, {} ms p99 (at the relays; bucket bounds)",
                p50, p99
            );
        }
        if !self.settle.is_empty() {
            let _ = writeln!(
                out,
                "  storms                  settled after (last failed, busy, HTTPS or failed-over request)"
            );
            for st in &self.settle {
                let _ = writeln!(
                    out,
                    "    {:>6.1}s {:<28} {:>6.1} s, {} troubles, {} over HTTPS, {} failovers",
                    st.at_seconds,
                    st.storm,
                    st.settled_seconds,
                    st.troubles,
                    st.https,
                    st.failovers
                );
            }
        }
        if !self.chaos.is_empty() {
            let _ = writeln!(out, "  chaos");
            for c in &self.chaos {
                let _ = writeln!(out, "    - {c}");
            }
        }
        let _ = writeln!(
            out,
            "  relays                  accepted share, open connections, QUIC Retries, refused (paced), failed handshakes, runtime lag p99/max"
        );
        for r in &self.relays {
            if r.reachable {
                let _ = writeln!(
                    out,
                    "    {:<20} {:>12} {:>5.1}%, {} open, {} Retries, {} refused ({} paced), {} failed, lag {}/{} ms",
                    r.id,
                    r.events_accepted,
                    r.share_pct,
                    r.connections,
                    r.quic_retries,
                    r.connections_refused,
                    r.handshakes_paced,
                    r.handshake_failures,
                    ms(r.runtime_lag_p99_ms),
                    ms(r.runtime_lag_max_ms)
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
            match (self.ok(), &self.exposures) {
                (true, None) => "OK: nothing lost",
                (true, Some(_)) => "OK: nothing lost, every exposure stored once",
                (false, Some(e)) if !e.ok() && self.lost == 0 => {
                    "FAILED: exposures stored do not match the devices'"
                }
                (false, _) => "FAILED: events lost",
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
            quic_checks_ok: 0,
            backoffs: crate::devices::Backoffs {
                silent: 1,
                to_https: 2,
                ..Default::default()
            },
            retry_replies: 0,
            busy: 7,
            handshake_timeouts: HandshakeTimeouts {
                heard: 2,
                silent: 1,
                second_tries: 1,
                late: 0,
            },
            device_runtime_lag_max_ms: 40,
            relays,
            handshake_p50_ms: Some(5.0),
            handshake_p99_ms: Some(250.0),
            settle: vec![],
            chaos: vec![],
            metrics_urls: vec![],
            exposures: None,
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
            handshakes_paced: 1,
            runtime_lag_p99_ms: Some(5.0),
            runtime_lag_max_ms: None,
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
            text.contains("relays backed off                  1   1 silent mid-request, 0 unreachable, 0 busy past patience, 0 draining; 2 QUIC to HTTPS; 0 silences not held"),
            "{text}"
        );
        assert!(
            text.contains("QUIC connect timeouts              3   2 relay heard (busy), 1 nothing heard (1 of them tried again), 0 device timer late"),
            "{text}"
        );
        assert!(
            text.contains("device runtime lag             40 ms max"),
            "{text}"
        );
        assert!(
            text.contains(
                "relay-1                         6  60.0%, 4 open, 2 Retries, 1 refused (1 paced), 0 failed, lag 5/- ms"
            ),
            "{text}"
        );
        assert!(
            text.contains("relay-3              (metrics unreachable)"),
            "{text}"
        );
        assert!(
            text.contains("QUIC handshakes                 5 ms p50, 250 ms p99"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["relays"][1]["share_pct"], 40.0);
        assert_eq!(json["busy"], 7);
        assert_eq!(json["handshake_p99_ms"], 250.0);
    }

    fn health(failures: u64, https_ok: u64, failovers: u64) -> Health {
        Health {
            failures,
            busy: 0,
            https_ok,
            failovers,
            runtime_lag_ms: 0,
        }
    }

    #[test]
    fn each_storm_settles_at_its_last_trouble_before_the_next_one() {
        let markers = vec![
            (0.0, "fleet start".to_owned()),
            (10.0, "relay-1 killed".to_owned()),
            (20.0, "relay-1 restarted".to_owned()),
        ];
        let timeline = vec![
            (1.0, health(3, 0, 0)),
            (2.5, health(5, 0, 0)),
            // Counts that change without a new trouble (none here) would not move it.
            (11.0, health(6, 0, 2)),
            (14.0, health(7, 1, 4)),
            (25.0, health(7, 1, 4)),
        ];
        let s = settle_times(&markers, &timeline);
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].settled_seconds, s[0].troubles), (2.5, 5));
        assert_eq!((s[1].settled_seconds, s[1].troubles), (4.0, 7));
        assert_eq!((s[1].https, s[1].failovers), (1, 4));
        // Nothing went wrong after the restart: settled at once.
        assert_eq!((s[2].settled_seconds, s[2].troubles), (0.0, 0));
        assert!(settle_times(&[], &timeline).is_empty());
        let quiet = settle_times(&markers[..1], &[]);
        assert_eq!((quiet[0].settled_seconds, quiet[0].troubles), (0.0, 0));
    }
}
