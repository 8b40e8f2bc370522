//! `GET /admin/v1/status` and `/history`: the relay's state now, and one sample per
//! second taken by the sampler (which also retries persisting unpersisted settings).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;

use super::settings::{BreakerSetting, PersistenceView, RateSetting, Settings, PERSIST_RETRY};
use super::{lock, now_ms, Admin};
use crate::backend::breaker::BreakerState;
use crate::ingest::record::RecordStats;
use crate::ingest::{AppTally, IngestCounters};
use crate::periodic::Every;
use crate::spool::replay::ReplayProgress;

/// Samples kept for `/history` (one per second).
const HISTORY_KEPT: usize = 300;

/// One second of the relay's life, for charts.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sample {
    /// End of the second (Unix ms).
    pub at_ms: u64,
    /// Events acknowledged per second.
    pub events_per_sec: f64,
    /// Batches acknowledged after the backend stored them, per second.
    pub forwarded_per_sec: f64,
    /// Batches acknowledged from the spool, per second.
    pub spooled_per_sec: f64,
    /// Batches answered `Retry`, per second.
    pub retried_per_sec: f64,
    /// Batches answered `Rejected`, per second.
    pub rejected_per_sec: f64,
    /// Mean ingest handling time over the second, milliseconds (0 without traffic).
    pub mean_ingest_ms: f64,
    /// 99th percentile of the ingest handling time over the second, milliseconds (the
    /// upper bound of its histogram bucket: at most 25% high; 0 without traffic).
    pub p99_ingest_ms: f64,
    /// Spool objects waiting.
    pub spool_objects: u64,
    /// Age of the oldest waiting object, seconds.
    pub replay_lag_s: f64,
    /// Breaker: 0 closed, 1 half-open, 2 open.
    pub breaker: u8,
    /// Open QUIC connections.
    pub connections: u64,
}

impl Admin {
    /// The samples of the last five minutes, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        lock(&self.inner.history).iter().copied().collect()
    }

    /// Takes one sample per second until `stop` turns true: rates for `/status` and
    /// `/history`.
    pub async fn run_sampler(self, stop: tokio::sync::watch::Receiver<bool>) {
        let mut every = Every::new(Duration::from_secs(1), stop);
        let counters = &self.inner.svc.counters;
        let mut last = Totals::read(counters);
        let mut last_apps = counters.app_tallies();
        let mut last_at = Instant::now();
        let mut last_hist = counters.handling_hist.snapshot();
        let mut last_persist_try = Instant::now();
        // The first tick is at once: the first sample comes a second later.
        if !every.tick().await {
            return;
        }
        while every.tick().await {
            if last_persist_try.elapsed() >= PERSIST_RETRY {
                last_persist_try = Instant::now();
                self.retry_persist().await;
            }
            let now = Instant::now();
            let secs = now.duration_since(last_at).as_secs_f64().max(1e-3);
            let totals = Totals::read(counters);
            let apps = counters.app_tallies();
            let hist = counters.handling_hist.snapshot();
            let mut sample = self.sample(&last, &totals, secs);
            sample.p99_ingest_ms =
                hist.since(&last_hist).quantile(0.99).unwrap_or(0) as f64 / 1000.0;
            last_hist = hist;
            *lock(&self.inner.per_app) = per_app_rates(&last_apps, &apps, secs);
            let mut history = lock(&self.inner.history);
            if history.len() == HISTORY_KEPT {
                history.pop_front();
            }
            history.push_back(sample);
            drop(history);
            (last, last_apps, last_at) = (totals, apps, now);
        }
    }

    fn sample(&self, a: &Totals, b: &Totals, secs: f64) -> Sample {
        let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
        let batches = b.handled.saturating_sub(a.handled);
        let progress = self.inner.svc.replay.progress();
        Sample {
            at_ms: now_ms(),
            events_per_sec: rate(a.events, b.events),
            forwarded_per_sec: rate(a.forwarded, b.forwarded),
            spooled_per_sec: rate(a.spooled, b.spooled),
            retried_per_sec: rate(a.retried, b.retried),
            rejected_per_sec: rate(a.rejected, b.rejected),
            mean_ingest_ms: if batches == 0 {
                0.0
            } else {
                b.handling_us.saturating_sub(a.handling_us) as f64 / batches as f64 / 1000.0
            },
            // Set by the sampler, which holds the histogram's previous snapshot.
            p99_ingest_ms: 0.0,
            spool_objects: progress.objects_waiting,
            replay_lag_s: progress.lag_ms as f64 / 1000.0,
            breaker: breaker_code(self.inner.svc.breaker.state()),
            connections: self
                .inner
                .svc
                .counters
                .quic_connections
                .load(Ordering::Relaxed),
        }
    }

    /// The relay's state now.
    pub fn status(&self) -> Status {
        let svc = &self.inner.svc;
        let c = &svc.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let settings = self.settings();
        let spool = svc.spool.as_ref().map(|s| SpoolStatus {
            has_room: s.has_room(),
            targets: std::iter::once(s.primary())
                .chain(s.fallback())
                .map(|t| SpoolTargetStatus {
                    name: t.name(),
                    bytes: t.used(),
                    capacity_bytes: t.capacity(),
                })
                .collect(),
        });
        let served_map = svc.shard_map.current();
        let latest = lock(&self.inner.history)
            .back()
            .copied()
            .unwrap_or_default();
        Status {
            relay_id: self.inner.config.relay_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            started_at_ms: self.inner.started_at_ms,
            uptime_s: self.inner.started.elapsed().as_secs(),
            shard_map_version: served_map.version,
            shard_map: svc.shard_map.status().view(&served_map),
            registry: svc.registry.status(),
            record: svc.recorder.as_ref().map(|r| r.stats()),
            drain: DrainView {
                draining: svc.drain.is_draining(),
                since_ms: svc.drain.started_at_ms(),
                in_flight: svc.drain.in_flight(),
            },
            breaker: BreakerStatus {
                state: breaker_name(svc.breaker.state()),
                setting: settings.breaker,
            },
            spool,
            replay: ReplayView {
                paused: settings.switches.replay_paused,
                held_by_degraded_forwarding: settings.switches.forwarding_degraded,
                max_rate: settings.switches.replay_max_rate,
                progress: self.inner.svc.replay.progress(),
            },
            connections: Connections {
                quic: load(&c.quic_connections),
                push_subscribers: svc.push_hub.as_ref().map_or(0, |h| h.subscribers() as u64),
            },
            totals: TotalsView {
                accepted_forwarded: load(&c.accepted_forwarded),
                accepted_spooled: load(&c.accepted_spooled),
                retried: load(&c.retried),
                rejected: load(&c.rejected),
                events_accepted: load(&c.events_accepted),
                degraded_spooled: load(&c.degraded_spooled),
                misrouted: load(&c.misrouted),
            },
            rates: Rates {
                now: latest,
                per_app_events_per_sec: lock(&self.inner.per_app).clone(),
            },
            persistence: self.persistence(),
            default_app_limit: {
                let r = svc.limiter.default_limit();
                RateSetting {
                    events_per_sec: r.events_per_sec,
                    burst: r.burst,
                }
            },
            settings,
        }
    }
}

/// Counter totals read together.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    events: u64,
    forwarded: u64,
    spooled: u64,
    retried: u64,
    rejected: u64,
    handled: u64,
    handling_us: u64,
}

impl Totals {
    fn read(c: &IngestCounters) -> Totals {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            events: l(&c.events_accepted),
            forwarded: l(&c.accepted_forwarded),
            spooled: l(&c.accepted_spooled),
            retried: l(&c.retried),
            rejected: l(&c.rejected),
            handled: l(&c.accepted_forwarded)
                + l(&c.accepted_spooled)
                + l(&c.retried)
                + l(&c.rejected),
            handling_us: l(&c.handling_us),
        }
    }
}

fn per_app_rates(
    before: &HashMap<String, AppTally>,
    after: &HashMap<String, AppTally>,
    secs: f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(app, t)| {
            let prev = before.get(app).map_or(0, |p| p.events_accepted);
            let d = t.events_accepted.saturating_sub(prev);
            (d > 0).then(|| (app.clone(), d as f64 / secs))
        })
        .collect()
}

fn breaker_code(s: BreakerState) -> u8 {
    s.as_metric()
}

fn breaker_name(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::HalfOpen => "half_open",
        BreakerState::Open { .. } => "open",
        BreakerState::ForcedOpen => "forced_open",
        BreakerState::ForcedClosed => "forced_closed",
    }
}

/// `GET /admin/v1/status`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// This relay's id.
    pub relay_id: String,
    /// The relay's version.
    pub version: &'static str,
    /// Start time (Unix ms).
    pub started_at_ms: u64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// The shard map served.
    pub shard_map_version: u64,
    /// Shard maps installed and refused (the latest refusal, with its reason).
    pub shard_map: crate::remote::shardmap::ShardMapStatusView,
    /// The app registry: loaded, apps, keys retiring or held, a held list.
    pub registry: crate::policy::apps::RegistryStatus,
    /// Drain state.
    pub drain: DrainView,
    /// Traffic recording (absent when the relay records nowhere).
    pub record: Option<RecordStats>,
    /// The circuit breaker.
    pub breaker: BreakerStatus,
    /// The spool (absent without one).
    pub spool: Option<SpoolStatus>,
    /// Replay.
    pub replay: ReplayView,
    /// Connections.
    pub connections: Connections,
    /// Totals since start.
    pub totals: TotalsView,
    /// Rates over the last second.
    pub rates: Rates,
    /// The limit of apps without their own.
    pub default_app_limit: RateSetting,
    /// Whether the settings in force are on disk.
    pub persistence: PersistenceView,
    /// The operator settings in force.
    pub settings: Settings,
}

/// Drain part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct DrainView {
    /// Draining (the relay exits once done).
    pub draining: bool,
    /// Since when (Unix ms).
    pub since_ms: Option<u64>,
    /// Request streams still in flight.
    pub in_flight: usize,
}

/// Breaker part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct BreakerStatus {
    /// `closed`, `half_open`, `open`, `forced_open`, `forced_closed`.
    pub state: &'static str,
    /// The operator's setting.
    pub setting: BreakerSetting,
}

/// Spool part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct SpoolStatus {
    /// Whether another object fits now (what `/readyz` reports).
    pub has_room: bool,
    /// Primary and fallback targets.
    pub targets: Vec<SpoolTargetStatus>,
}

/// One spool target.
#[derive(Clone, Debug, Serialize)]
pub struct SpoolTargetStatus {
    /// `primary` or `fallback`.
    pub name: &'static str,
    /// Bytes held (bounded targets; 0 for S3).
    pub bytes: u64,
    /// Bound, if any.
    pub capacity_bytes: Option<u64>,
}

/// Replay part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct ReplayView {
    /// Paused by an operator.
    pub paused: bool,
    /// Held because forwarding is degraded.
    pub held_by_degraded_forwarding: bool,
    /// The operator's rate cap (batches/s), if any.
    pub max_rate: Option<u64>,
    /// What replay did and what waits.
    pub progress: ReplayProgress,
}

/// Connections part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct Connections {
    /// Open QUIC connections.
    pub quic: u64,
    /// Open push streams.
    pub push_subscribers: u64,
}

/// Totals part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct TotalsView {
    /// Batches acknowledged after the backend stored them.
    pub accepted_forwarded: u64,
    /// Batches acknowledged after the spool stored them.
    pub accepted_spooled: u64,
    /// Batches answered `Retry`.
    pub retried: u64,
    /// Batches answered `Rejected`.
    pub rejected: u64,
    /// Events in acknowledged batches.
    pub events_accepted: u64,
    /// Batches spooled because forwarding was degraded.
    pub degraded_spooled: u64,
    /// Batches another relay owns under the shard map.
    pub misrouted: u64,
}

/// Rates part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct Rates {
    /// The last one-second sample.
    pub now: Sample,
    /// Events acknowledged per second by app (apps with traffic in the last second).
    pub per_app_events_per_sec: BTreeMap<String, f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_app_rates_count_only_apps_with_traffic() {
        let t = |e| AppTally {
            events_accepted: e,
            ..AppTally::default()
        };
        let before = HashMap::from([("a".to_string(), t(100)), ("b".to_string(), t(50))]);
        let after = HashMap::from([
            ("a".to_string(), t(300)),
            ("b".to_string(), t(50)),
            ("c".to_string(), t(10)),
        ]);
        let r = per_app_rates(&before, &after, 2.0);
        assert_eq!(r.len(), 2);
        assert_eq!(r["a"], 100.0);
        assert_eq!(r["c"], 5.0);
    }

    /// An admin API over fresh services (no traffic, defaults), its settings file in
    /// `dir`.
    fn admin(dir: &std::path::Path) -> Admin {
        use crate::backend::breaker::BreakerConfig;
        use crate::policy::ratelimit::RateLimiterConfig;
        let services = super::super::AdminServices {
            counters: std::sync::Arc::default(),
            registry: crate::policy::apps::AppRegistry::new(vec![]),
            breaker: crate::backend::sharedbreaker::SharedBreaker::new(BreakerConfig::default()),
            limiter: crate::policy::ratelimit::SharedLimiter::new(RateLimiterConfig::default()),
            shard_map: crate::remote::shardmap::ServedShardMap::new(Default::default(), None),
            spool: None,
            config_cache: None,
            push_hub: None,
            controls: Default::default(),
            drain: Default::default(),
            features: Default::default(),
            recorder: None,
            replay: Default::default(),
        };
        let config = super::super::AdminConfig {
            token: "t".into(),
            state_file: dir.join("admin.json"),
            relay_id: "relay-test".into(),
        };
        Admin::load(config, services).unwrap()
    }

    /// Rates are per second of `tokio::time`: with time paused, a sample covers
    /// exactly one second, so 500 events make exactly 500 events/s (on the wall clock
    /// the sampler would divide by the few real milliseconds that passed).
    #[tokio::test(start_paused = true)]
    async fn the_sampler_measures_rates_over_tokio_time() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin(dir.path());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(admin.clone().run_sampler(stopped));
        // The sampler has read the counters at t = 0 once this (virtual) sleep ends.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = &admin.inner.svc.counters;
        c.events_accepted.fetch_add(500, Ordering::Relaxed);
        c.accepted_forwarded.fetch_add(5, Ordering::Relaxed);
        c.handling_us.fetch_add(5_000, Ordering::Relaxed);
        // The first sample is taken at t = 1 s, the second at t = 2 s.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let history = admin.history();
        assert_eq!(history.len(), 2, "{history:?}");
        assert_eq!(history[0].events_per_sec, 500.0);
        assert_eq!(history[0].forwarded_per_sec, 5.0);
        assert_eq!(history[0].mean_ingest_ms, 1.0);
        assert_eq!(
            history[1].events_per_sec, 0.0,
            "no traffic in the second second"
        );
        stop.send(true).unwrap();
        sampler.await.unwrap();
    }
}
