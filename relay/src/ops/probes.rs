//! Operability endpoints on their own listener (loopback by default): Prometheus
//! `/metrics`, liveness `/healthz`, readiness `/readyz`.
//!
//! The library records through the `metrics` facade (a no-op until a recorder is
//! installed); the binary installs a Prometheus recorder and serves it here. Metric
//! names:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `tern_relay_batches_total` | counter | `outcome` = `accepted_forwarded`, `accepted_spooled`, `retry`, `rejected` | ingest replies; `accepted_forwarded + accepted_spooled` is everything acknowledged (the conservation check) |
//! | `tern_relay_events_accepted_total` | counter | | events in acknowledged batches |
//! | `tern_relay_events_total` | counter | `outcome` (as above) | events in ingest requests by reply |
//! | `tern_relay_ingest_duration_seconds` | histogram | `outcome` (as above) | time from a decoded ingest request to its reply (the device's ack latency minus the network) |
//! | `tern_relay_retry_total` | counter | `cause` = `rate_limited`, `breaker_open`, `backend`, `busy`, `registry_not_loaded`, `spool_unavailable`, `spool_full` | why devices were told to retry |
//! | `tern_relay_error_replies_total` | counter | | frames answered `ErrorReply` |
//! | `tern_relay_breaker_state` | gauge | | 0 closed, 1 half-open, 2 open |
//! | `tern_relay_forward_requests_total` | counter | `ok` | backend requests |
//! | `tern_relay_forward_batches` | histogram | | batches per backend request (coalescing) |
//! | `tern_relay_forward_duration_seconds` | histogram | | backend request latency |
//! | `tern_relay_registry_apps` | gauge | | apps in the registry |
//! | `tern_relay_connections` | gauge | `transport` = `quic`, `https`, `admin`, `metrics` | open connections |
//! | `tern_relay_connections_total`, `tern_relay_connections_refused_total` | counter | `transport` | accepted and refused (over a connection or handshake budget) connections |
//! | `tern_relay_handshake_failures_total` | counter | `transport` | failed QUIC and TLS handshakes (wrong ALPN, bad TLS) |
//! | `tern_relay_refused_total` | counter | `limit` = `request_bytes`, `quic_handshakes`, `quic_connections`, `https_connections`, `https_requests`, `subscriptions`, `admin_connections`, `metrics_connections`; `reason` = `total`, `per_source`; `transport` | what a budget refused (see [`crate::listen`]) |
//! | `tern_relay_deadline_exceeded_total` | counter | `transport`; `phase` = `handshake`, `header`, `idle`, `request` | clients cut off by a deadline |
//! | `tern_relay_quic_retries_total` | counter | | QUIC Retry packets sent (address validation) |
//! | `tern_relay_requests_too_large_total` | counter | `transport` | request frames over the size limit |
//! | `tern_relay_accept_errors_total` | counter | `transport` | failed `accept` calls (out of file descriptors) |
//! | `tern_relay_limit`, `tern_relay_limit_in_use` | gauge | `limit`; `scope` = `total`, `per_source` | each budget's bounds and what is held |
//! | `tern_relay_spool_objects_written_total`, `tern_relay_spool_batches_written_total` | counter | | spool PUTs and the batches they held |
//! | `tern_relay_spool_fallback_objects_total` | counter | | objects written to the local-disk fallback |
//! | `tern_relay_spool_store_failures_total` | counter | `target` | failed spool PUTs |
//! | `tern_relay_spool_primary_up` | gauge | | 0 while the primary store is skipped after a failure |
//! | `tern_relay_spool_bytes`, `tern_relay_spool_capacity_bytes` | gauge | `target` | bytes in a bounded target (measured again from a listing every 5 s, so files removed by hand count at once) and its bound |
//! | `tern_relay_spool_objects` | gauge | `target` | objects waiting in this relay's prefix (kept current in every state, breaker open included) |
//! | `tern_relay_replay_lag_seconds` | gauge | `target` | age of the oldest object waiting (likewise) |
//! | `tern_relay_replay_batches_total`, `tern_relay_spool_objects_replayed_total` | counter | | replayed batches and objects deleted after replay |
//! | `tern_relay_spool_objects_taken_over_total` | counter | | other relays' objects this relay replayed |
//! | `tern_relay_spool_corrupt_objects_total` | counter | | undecodable objects found (each once; kept, never deleted) |
//! | `tern_relay_spool_objects_quarantined_total` | counter | | of those, moved aside to `<key>.corrupt` (never read again) |
//! | `tern_relay_spool_quarantined_objects` | gauge | `target` | `.corrupt` objects lying in this relay's prefix (an operator inspects and removes them) |
//! | `tern_relay_admin_settings_persisted` | gauge | | 0 while operator settings in force are not in the settings file (disk read-only or full: changes apply in memory only and are retried) |
//! | `tern_relay_admin_persist_failures_total` | counter | | failed writes of the settings file |
//! | `tern_relay_config_fetches_total` | counter | `outcome` = `modified`, `not_modified`, `unknown_app`, `failed` | config polls of the backend |
//! | `tern_relay_config_poll_rounds_total` | counter | `outcome` = `polled`, `skipped` (config serving degraded by an operator) | rounds of the config refresher |
//! | `tern_relay_config_apps_cached` | gauge | | apps with a cached bundle |
//! | `tern_relay_config_stale_apps` | gauge | | apps whose last refresh failed (served `stale`) |
//! | `tern_relay_config_staleness_seconds` | gauge | | age of the oldest backend confirmation among cached bundles |
//! | `tern_relay_config_persist_errors_total` | counter | | bundles that could not be written to disk (served from memory) |
//! | `tern_relay_config_requests_total` | counter | `outcome` = `modified`, `not_modified`, `retry`, `rejected` | device config requests |
//! | `tern_relay_push_subscribers` | gauge | | open push streams |
//! | `tern_relay_push_notices_total` | counter | | notices queued to subscribers |
//! | `tern_relay_push_dropped_total` | counter | | subscribers dropped for lagging |

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::policy::apps::AppRegistry;
use crate::spool::Spool;

#[derive(Clone)]
struct Ready {
    registry: AppRegistry,
    spool: Option<Spool>,
}

/// The router: `/metrics`, `/healthz`, `/readyz`. The relay is ready once the app
/// registry has loaded and while the spool (if any) has room for another object.
pub fn router(
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    registry: AppRegistry,
    spool: Option<Spool>,
) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move { render() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Ready { registry, spool })
}

async fn readyz(State(ready): State<Ready>) -> (StatusCode, &'static str) {
    if !ready.registry.is_loaded() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "app registry not loaded yet",
        );
    }
    if ready.spool.as_ref().is_some_and(|s| !s.has_room()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "spool has no room (full, or its store is failing without a fallback)",
        );
    }
    (StatusCode::OK, "ready")
}
