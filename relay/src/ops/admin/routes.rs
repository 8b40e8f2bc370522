//! The admin router: routes, bearer-token authentication (which names the operator
//! for the audit), JSON bodies and the read-only handlers.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Json, Router};

use super::audit::AuditEntry;
use super::settings::Settings;
use super::status::{Sample, Status};
use super::{controls, features, inputs, record, Admin, AdminError};

/// Longest operator name taken from `X-Tern-Operator`.
const MAX_OPERATOR_LEN: usize = 64;

/// Compares in time independent of where the inputs differ.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

impl Admin {
    /// The router, authenticated. Serve it with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so audits name the peer.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/admin/v1/status", get(status))
            .route("/admin/v1/settings", get(settings))
            .route("/admin/v1/services/{service}", put(controls::set_service))
            .route("/admin/v1/replay", put(controls::set_replay))
            .route(
                "/admin/v1/apps/{app}/limit",
                put(controls::set_app_limit).delete(controls::clear_app_limit),
            )
            .route(
                "/admin/v1/apps/{app}/block",
                put(controls::block_app).delete(controls::unblock_app),
            )
            .route("/admin/v1/breaker", put(controls::set_breaker))
            .route("/admin/v1/drain", axum::routing::post(controls::drain))
            .route("/admin/v1/record", put(record::set_record))
            .route("/admin/v1/features", get(features::features))
            .route(
                "/admin/v1/features/{name}",
                put(features::set_feature).delete(features::clear_feature),
            )
            .route("/admin/v1/registry", get(inputs::registry))
            .route(
                "/admin/v1/registry/accept",
                axum::routing::post(inputs::accept_registry),
            )
            .route("/admin/v1/shard-map", get(inputs::shard_map))
            .route("/admin/v1/audit", get(audit))
            .route("/admin/v1/history", get(history))
            .layer(middleware::from_fn_with_state(self.clone(), authenticate))
            .with_state(self.clone())
            .merge(crate::ops::dashboard::router())
    }
}

/// Who made a request.
#[derive(Clone, Debug)]
pub struct Operator {
    pub(super) name: String,
    pub(super) remote: Option<SocketAddr>,
}

fn operator(headers: &HeaderMap, remote: Option<SocketAddr>) -> Operator {
    let name = headers
        .get("x-tern-operator")
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(MAX_OPERATOR_LEN)
                .collect::<String>()
        })
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unnamed".into());
    Operator { name, remote }
}

async fn authenticate(
    State(admin): State<Admin>,
    mut request: Request,
    next: Next,
) -> Result<Response, AdminError> {
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok =
        given.is_some_and(|t| token_matches(t.as_bytes(), admin.inner.config.token.as_bytes()));
    if !ok {
        let remote = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string());
        metrics::counter!("tern_relay_admin_auth_failures_total").increment(1);
        tracing::warn!(
            target: "tern_relay::audit",
            remote = remote.as_deref().unwrap_or("-"),
            path = %request.uri().path(),
            "admin request refused: missing or wrong bearer token"
        );
        return Err(AdminError::Unauthorized);
    }
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let who = operator(request.headers(), remote);
    request.extensions_mut().insert(who);
    Ok(next.run(request).await)
}

async fn status(State(admin): State<Admin>) -> Json<Status> {
    Json(admin.status())
}

async fn settings(State(admin): State<Admin>) -> Json<Settings> {
    Json(admin.settings())
}

async fn audit(State(admin): State<Admin>) -> Json<Vec<AuditEntry>> {
    Json(admin.audit())
}

async fn history(State(admin): State<Admin>) -> Json<Vec<Sample>> {
    Json(admin.history())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::token::generate_token;

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abd", b"abc"));
        assert!(!token_matches(b"ab", b"abc"));
        assert!(!token_matches(b"", b"abc"));
        let t = generate_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, generate_token());
    }
    #[test]
    fn operator_names_are_cleaned() {
        let mut h = HeaderMap::new();
        assert_eq!(operator(&h, None).name, "unnamed");
        h.insert("x-tern-operator", "alice\tsmith".parse().unwrap());
        assert_eq!(operator(&h, None).name, "alicesmith");
        h.insert("x-tern-operator", "x".repeat(200).parse().unwrap());
        assert_eq!(operator(&h, None).name.len(), MAX_OPERATOR_LEN);
    }
}
