//! The admin API: an operator's view of one relay and its controls, on its own
//! listener (loopback by default), every request authenticated with a bearer token.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /dashboard/` (and `/` → it) | the operator dashboard: embedded static page, no token needed to load it; its API calls carry the token ([`crate::ops::dashboard`]) |
//! | `GET /admin/v1/status` | version, uptime, shard-map version, breaker, spool and replay, connections, rates (total and per app), settings |
//! | `GET /admin/v1/settings` | the operator settings in force (what survives a restart) |
//! | `PUT /admin/v1/services/{service}` `{"degraded": bool}` | `forwarding` (spool only), `config` (serve the cache only), `messages` (serve no in-app messages), `push` (no live push) |
//! | `PUT /admin/v1/replay` `{"paused": bool, "max_rate": n \| null}` | pause/resume replay, cap its rate (batches/s; `null`: the configured default); fields optional |
//! | `PUT /admin/v1/apps/{app}/limit` `{"events_per_sec": n, "burst": n}` | the app's rate limit (`DELETE`: back to the default) |
//! | `PUT /admin/v1/apps/{app}/block` `{"reason": "..."}` | emergency block: the app's devices get `Retry` (`DELETE`: unblock) |
//! | `PUT /admin/v1/breaker` `{"override": "auto" \| "force_open" \| "force_closed"}` | the circuit breaker override |
//! | `GET /admin/v1/audit` | the latest changes (who, from where, what, before → after) |
//! | `GET /admin/v1/history` | one sample per second for the last five minutes (rates, spool, breaker) |
//! | `GET /admin/v1/features`, `PUT`/`DELETE /admin/v1/features/{name}` `{"enabled": bool, "rollout_bp": 0..=10000}` | relay feature flags: a guarded code path rolled out to a share of apps (bucketed like device flags), rolled back at once ([`crate::policy::features`]) |
//! | `PUT /admin/v1/record` `{"enabled", "apps", "sample_bp", "max_batches_per_sec", "hash_user_ids", "drop_properties", "keep_property_values"}` | traffic recording into `record/<relay>/` segments ([`crate::ingest::record`]); private by default (user ids hashed, property values redacted) |
//! | `GET /admin/v1/registry`, `POST /admin/v1/registry/accept` | the app registry fetched from the backend; accept a held (suspicious) list (`admin/inputs.rs`) |
//! | `GET /admin/v1/shard-map` | the shard map served and the latest refused one, with its reason (`admin/inputs.rs`) |
//! | `POST /admin/v1/drain` | drain: no new connections or requests, in-flight requests finished, devices told (push notice, QUIC close code `draining`), spool prefix handed over, exit 0 (as on SIGTERM) |
//!
//! Every change is written to the settings file (temp file, fsync, rename) before it
//! takes effect, so what the API acknowledged survives a restart. When the file cannot
//! be written (disk read-only or full) the change **still takes effect** — an operator
//! must always be able to act, above all on the breaker in an incident — in memory
//! only: the reply says `"persisted": false` with the reason, `status.persistence`
//! says so until it is fixed, `tern_relay_admin_settings_persisted` drops to 0,
//! `tern_relay_admin_persist_failures_total` counts the failures, an `error` is
//! logged, and the relay retries writing the settings in force every few seconds until
//! it succeeds. Each change is logged at
//! `info` under the `tern_relay::audit` target, kept in the audit ring, and counted in
//! `tern_relay_admin_changes_total{action}`; failed authentications are counted in
//! `tern_relay_admin_auth_failures_total`.
//!
//! Errors are JSON `{"error": code, "message": text, "field": name?}` with the HTTP
//! status of the [`AdminError`] variant.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::backend::sharedbreaker::SharedBreaker;
use crate::ingest::drain::Drain;
use crate::ingest::record::Recorder;
use crate::ingest::IngestCounters;
use crate::policy::apps::AppRegistry;
use crate::policy::controls::Controls;
use crate::policy::features::Features;
use crate::policy::ratelimit::SharedLimiter;
use crate::remote::cache::ConfigCache;
use crate::remote::push::PushHub;
use crate::remote::shardmap::ServedShardMap;
use crate::spool::replay::ReplayStatus;
use crate::spool::Spool;

pub use crate::ops::token::generate_token;

mod audit;
mod controls;
mod features;
mod inputs;
mod record;
mod routes;
mod settings;
mod status;

pub use audit::AuditEntry;
pub use features::FeatureView;
pub use inputs::{Accepted, ShardMapView};
pub use routes::Operator;
use settings::PersistFailure;
pub use settings::{
    read_settings, write_settings, BreakerSetting, ChangeReply, PersistenceView, RateSetting,
    Settings,
};
pub use status::{
    BreakerStatus, Connections, DrainView, Rates, ReplayView, Sample, SpoolStatus,
    SpoolTargetStatus, Status, TotalsView,
};

/// Why an admin request or the admin state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Missing or wrong bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// A request field is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No such service (`forwarding`, `config`, `messages`, `push`).
    #[error("unknown service {0:?} (one of forwarding, config, messages, push)")]
    UnknownService(String),
    /// No such relay feature flag.
    #[error("unknown relay feature flag {0:?} (see GET /admin/v1/features)")]
    UnknownFeature(String),
    /// The action needs something that is not there (nothing to accept).
    #[error("{0}")]
    NothingPending(String),
    /// The settings file could not be read.
    #[error("admin state file {path}: {source}")]
    StateRead {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The settings file is not valid.
    #[error("admin state file {path} is not valid ({message}); fix it or remove it to start from defaults")]
    StateParse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The settings could not be persisted (a change made then applies in memory
    /// only; see the module docs).
    #[error("could not persist the admin state to {path}: {source}")]
    StateWrite {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Invalid { .. } => StatusCode::BAD_REQUEST,
            AdminError::UnknownService(_) | AdminError::UnknownFeature(_) => StatusCode::NOT_FOUND,
            AdminError::NothingPending(_) => StatusCode::CONFLICT,
            AdminError::StateRead { .. }
            | AdminError::StateParse { .. }
            | AdminError::StateWrite { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AdminError::Unauthorized => "unauthorized",
            AdminError::Invalid { .. } => "invalid",
            AdminError::UnknownService(_) => "unknown_service",
            AdminError::UnknownFeature(_) => "unknown_feature",
            AdminError::NothingPending(_) => "nothing_pending",
            AdminError::StateRead { .. } => "state_read",
            AdminError::StateParse { .. } => "state_parse",
            AdminError::StateWrite { .. } => "state_write",
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> AdminError {
    AdminError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let field = match &self {
            AdminError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "field": field,
        });
        (self.status(), Json(body)).into_response()
    }
}

/// Settings of the admin API.
#[derive(Clone)]
pub struct AdminConfig {
    /// The bearer token every request must carry.
    pub token: String,
    /// Where the settings are persisted.
    pub state_file: PathBuf,
    /// This relay's id (reported).
    pub relay_id: String,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &"<redacted>")
            .field("state_file", &self.state_file)
            .field("relay_id", &self.relay_id)
            .finish()
    }
}

/// The services an operator reads and controls through the admin API: a handle on each,
/// as the wiring built them ([`crate::run::Services`]).
#[derive(Clone, Debug)]
pub struct AdminServices {
    /// The request handler's counters (totals, rates, latency).
    pub counters: Arc<IngestCounters>,
    /// The app registry (status, accepting a held list).
    pub registry: AppRegistry,
    /// The circuit breaker (state, operator override).
    pub breaker: SharedBreaker,
    /// Per-app rate limits and blocks.
    pub limiter: SharedLimiter,
    /// The shard map served.
    pub shard_map: ServedShardMap,
    /// The spool (absent without one).
    pub spool: Option<Spool>,
    /// The config cache (announcing config changes).
    pub config_cache: Option<ConfigCache>,
    /// Push streams (announcements, ending them when push is turned off).
    pub push_hub: Option<PushHub>,
    /// The operator switches.
    pub controls: Controls,
    /// Drain state.
    pub drain: Drain,
    /// Relay feature flags.
    pub features: Features,
    /// Traffic recording (absent when the relay records nowhere).
    pub recorder: Option<Recorder>,
    /// The replayers' progress.
    pub replay: ReplayStatus,
}

/// The admin API's state. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: AdminConfig,
    svc: AdminServices,
    /// Held across persist + apply, so changes never interleave.
    settings: tokio::sync::Mutex<Settings>,
    /// A copy for readers that must not wait behind a write.
    current: Mutex<Settings>,
    audit: Mutex<VecDeque<AuditEntry>>,
    history: Mutex<VecDeque<Sample>>,
    per_app: Mutex<BTreeMap<String, f64>>,
    /// Set while the settings in force are not on disk.
    unpersisted: Mutex<Option<PersistFailure>>,
    persist_failures: std::sync::atomic::AtomicU64,
    /// Set while a settings write runs on the blocking pool (one at a time, so a late
    /// one can never land over a newer one; see `settings::Admin::persist`).
    writing: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
    started_at_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_app(app: &str) -> Result<(), AdminError> {
    let limits = tern_protocol::Limits::default();
    if app.is_empty() || app.len() > limits.max_id_len {
        return Err(invalid(
            "app",
            format!("an app id has 1 to {} bytes", limits.max_id_len),
        ));
    }
    Ok(())
}

/// Parses a JSON body into `T`, naming the field at fault.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminError> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        bytes
    };
    serde_json::from_slice(text).map_err(|e| invalid("body", e.to_string()))
}

impl Admin {
    /// Loads the persisted settings from `config.state_file` and applies them to the
    /// services (switches, app limits and blocks, breaker override, feature flags,
    /// recording).
    pub fn load(config: AdminConfig, services: AdminServices) -> Result<Admin, AdminError> {
        let settings = read_settings(&config.state_file)?;
        let admin = Admin {
            inner: Arc::new(Inner {
                config,
                svc: services,
                settings: tokio::sync::Mutex::new(settings.clone()),
                current: Mutex::new(settings.clone()),
                audit: Mutex::new(VecDeque::new()),
                history: Mutex::new(VecDeque::new()),
                per_app: Mutex::new(BTreeMap::new()),
                unpersisted: Mutex::new(None),
                persist_failures: std::sync::atomic::AtomicU64::new(0),
                writing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                started: Instant::now(),
                started_at_ms: now_ms(),
            }),
        };
        admin.apply_all(&Settings::default(), &settings);
        metrics::gauge!("tern_relay_admin_settings_persisted").set(1.0);
        if settings != Settings::default() {
            tracing::info!(
                target: "tern_relay::audit",
                file = %admin.inner.config.state_file.display(),
                settings = %serde_json::to_string(&settings).unwrap_or_default(),
                "operator settings restored"
            );
        }
        Ok(admin)
    }
}
