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
//! | `tern_relay_retry_total` | counter | `cause` = `rate_limited`, `breaker_open`, `backend`, `busy`, `registry_not_loaded` | why devices were told to retry |
//! | `tern_relay_error_replies_total` | counter | | frames answered `ErrorReply` |
//! | `tern_relay_breaker_state` | gauge | | 0 closed, 1 half-open, 2 open |
//! | `tern_relay_forward_requests_total` | counter | `ok` | backend requests |
//! | `tern_relay_forward_batches` | histogram | | batches per backend request (coalescing) |
//! | `tern_relay_forward_duration_seconds` | histogram | | backend request latency |
//! | `tern_relay_registry_apps` | gauge | | apps in the registry |
//! | `tern_relay_config_fetches_total` | counter | `outcome` = `modified`, `not_modified`, `unknown_app`, `failed` | config polls of the backend |
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

use crate::apps::AppRegistry;

/// The router: `/metrics`, `/healthz`, `/readyz`.
pub fn router(
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    registry: AppRegistry,
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
        .with_state(registry)
}

async fn readyz(State(registry): State<AppRegistry>) -> (StatusCode, &'static str) {
    if registry.is_loaded() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "app registry not loaded yet",
        )
    }
}
