//! Admin routes for what the relay takes from outside without an operator typing it:
//! the app registry fetched from the backend and the shard-map file.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /admin/v1/registry` | the registry's state: apps, keys listed / retiring / held (counts, never key values), last refresh, errors, the held (suspicious) list if any |
//! | `POST /admin/v1/registry/accept` | accepts the held list: its removals enter the key grace period (audited as `registry.accept`; `409` when nothing is held) |
//! | `GET /admin/v1/shard-map` | the map served, maps installed and refused since start, the latest refusal with its reason |

use tokio::time::Instant;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use tern_protocol::ShardMap;

use super::{Admin, AdminError, Operator};
use crate::policy::apps::RegistryStatus;
use crate::remote::shardmap::ShardMapStatusView;

pub(super) async fn registry(State(admin): State<Admin>) -> Json<RegistryStatus> {
    Json(admin.inner.svc.registry.status())
}

/// What `POST /admin/v1/registry/accept` did.
#[derive(Clone, Debug, Serialize)]
pub struct Accepted {
    /// Why the list had been held.
    pub reason: String,
    /// Apps in the accepted list.
    pub apps: usize,
    /// Keys that left the registry and entered the grace period.
    pub keys_retiring: usize,
    /// The grace period, seconds.
    pub key_grace_s: u64,
}

pub(super) async fn accept_registry(
    State(admin): State<Admin>,
    Extension(who): Extension<Operator>,
) -> Result<Json<Accepted>, AdminError> {
    let registry = &admin.inner.svc.registry;
    let before = registry.status();
    let Some(pending) = before.pending.clone() else {
        return Err(AdminError::NothingPending(
            "no app registry is held: there is nothing to accept".into(),
        ));
    };
    let applied = match registry.accept_pending(Instant::now().into_std()) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            return Err(AdminError::Invalid {
                field: "registry".into(),
                reason: e.to_string(),
            })
        }
        None => {
            return Err(AdminError::NothingPending(
                "the held list was resolved by a refresh meanwhile".into(),
            ))
        }
    };
    let after = registry.status();
    admin.record(
        &who,
        "registry.accept",
        serde_json::json!({
            "held": pending,
            "apps": before.apps,
            "keys_listed": before.keys_listed,
            "keys_held": before.keys_held,
        }),
        serde_json::json!({
            "apps": after.apps,
            "keys_listed": after.keys_listed,
            "keys_retiring": after.keys_retiring,
        }),
        // Not a settings change: the acceptance lives in the registry in memory; a
        // restarted relay holds the same list again until it is accepted again.
        false,
    );
    Ok(Json(Accepted {
        reason: pending.reason,
        apps: applied.apps,
        keys_retiring: applied.keys_retiring,
        key_grace_s: after.key_grace_s,
    }))
}

/// `GET /admin/v1/shard-map`.
#[derive(Clone, Debug, Serialize)]
pub struct ShardMapView {
    /// Installs and refusals.
    #[serde(flatten)]
    pub status: ShardMapStatusView,
    /// The map served.
    pub map: ShardMap,
}

pub(super) async fn shard_map(State(admin): State<Admin>) -> Json<ShardMapView> {
    let served = &admin.inner.svc.shard_map;
    let map = served.current();
    Json(ShardMapView {
        status: served.status().view(&map),
        map: (*map).clone(),
    })
}
