//! The admin API: an operator's view of one relay and its controls, on its own
//! listener (loopback by default), every request authenticated with a bearer token.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /dashboard/` (and `/` → it) | the operator dashboard: embedded static page, no token needed to load it; its API calls carry the token ([`crate::dashboard`]) |
//! | `GET /admin/v1/status` | version, uptime, shard-map version, breaker, spool and replay, connections, rates (total and per app), settings |
//! | `GET /admin/v1/settings` | the operator settings in force (what survives a restart) |
//! | `PUT /admin/v1/services/{service}` `{"degraded": bool}` | `forwarding` (spool only), `config` (serve the cache only), `messages` (serve no in-app messages), `push` (no live push) |
//! | `PUT /admin/v1/replay` `{"paused": bool, "max_rate": n \| null}` | pause/resume replay, cap its rate (batches/s; `null`: the configured default); fields optional |
//! | `PUT /admin/v1/apps/{app}/limit` `{"events_per_sec": n, "burst": n}` | the app's rate limit (`DELETE`: back to the default) |
//! | `PUT /admin/v1/apps/{app}/block` `{"reason": "..."}` | emergency block: the app's devices get `Retry` (`DELETE`: unblock) |
//! | `PUT /admin/v1/breaker` `{"override": "auto" \| "force_open" \| "force_closed"}` | the circuit breaker override |
//! | `GET /admin/v1/audit` | the latest changes (who, from where, what, before → after) |
//! | `GET /admin/v1/history` | one sample per second for the last five minutes (rates, spool, breaker) |
//! | `GET /admin/v1/features`, `PUT`/`DELETE /admin/v1/features/{name}` `{"enabled": bool, "rollout_bp": 0..=10000}` | relay feature flags: a guarded code path rolled out to a share of apps (bucketed like device flags), rolled back at once ([`crate::features`]) |
//! | `PUT /admin/v1/record` `{"enabled", "apps", "sample_bp", "max_batches_per_sec", "hash_user_ids", "drop_properties", "keep_property_values"}` | traffic recording into `record/<relay>/` segments ([`crate::record`]); private by default (user ids hashed, property values redacted) |
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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tern_protocol::{AppId, PushNotice};

use crate::breaker::{BreakerState, Override};
use crate::controls::Switches;
use crate::features::{FeatureSetting, RelayFeature};
use crate::ingest::{AppTally, Ingest};
use crate::ratelimit::Rate;
use crate::record::{RecordSettings, RecordStats};
use crate::replay::{ReplayProgress, ReplayStatus};
use crate::spool::Spool;

pub use crate::token::generate_token;

mod inputs;

/// Audit entries kept in memory.
const AUDIT_KEPT: usize = 500;
/// Samples kept for `/history` (one per second).
const HISTORY_KEPT: usize = 300;
/// Longest operator name taken from `X-Tern-Operator`.
const MAX_OPERATOR_LEN: usize = 64;
/// Smallest burst an operator may set: the largest batch must fit.
const MIN_BURST: u64 = 1_000;

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

/// A per-app rate limit set by an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSetting {
    /// Sustained events per second.
    pub events_per_sec: u64,
    /// Burst, events.
    pub burst: u64,
}

/// The breaker override as an operator sets it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerSetting {
    /// Automatic (no override).
    #[default]
    Auto,
    /// Held open: every batch goes to the spool.
    ForceOpen,
    /// Held closed: every batch is forwarded, the breaker never opens.
    ForceClosed,
}

impl BreakerSetting {
    fn as_override(self) -> Option<Override> {
        match self {
            BreakerSetting::Auto => None,
            BreakerSetting::ForceOpen => Some(Override::ForceOpen),
            BreakerSetting::ForceClosed => Some(Override::ForceClosed),
        }
    }
}

/// Everything an operator set: persisted, re-applied at start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Service switches and replay.
    pub switches: Switches,
    /// Per-app rate limits (apps absent: the default limit).
    pub app_limits: BTreeMap<String, RateSetting>,
    /// Blocked apps and the operator's reason.
    pub blocked_apps: BTreeMap<String, String>,
    /// Breaker override.
    pub breaker: BreakerSetting,
    /// Relay feature flags set by an operator (absent: the flag's default).
    pub features: BTreeMap<String, FeatureSetting>,
    /// Traffic recording.
    pub record: RecordSettings,
}

/// One change, as audited.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    /// When (Unix ms).
    pub at_ms: u64,
    /// Who (`X-Tern-Operator`, or `unnamed`).
    pub operator: String,
    /// From where.
    pub remote: Option<String>,
    /// What (`service.forwarding`, `app.block`, ...).
    pub action: String,
    /// The subject's state before.
    pub before: serde_json::Value,
    /// ... and after.
    pub after: serde_json::Value,
    /// Whether the settings file held the change when it was made (`false`: applied
    /// in memory only, see [`PersistenceView`]).
    pub persisted: bool,
}

/// What a change through the admin API answers: the settings in force (as
/// `GET /admin/v1/settings` gives them) and whether they are on disk.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeReply {
    /// The settings in force after the change.
    #[serde(flatten)]
    pub settings: Settings,
    /// `false`: the change applies, but only in memory — the settings file could not
    /// be written (a restart before it is fixed loses it).
    pub persisted: bool,
    /// Why the settings file could not be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist_error: Option<String>,
}

/// Persistence part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct PersistenceView {
    /// The settings in force are in the settings file.
    pub persisted: bool,
    /// The settings file.
    pub file: String,
    /// Since when they are not (Unix ms).
    pub failing_since_ms: Option<u64>,
    /// The last write error.
    pub error: Option<String>,
    /// Failed writes since start.
    pub failures: u64,
}

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
    ingest: Ingest,
    replay: ReplayStatus,
    spool: Option<Spool>,
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
    started: Instant,
    started_at_ms: u64,
}

/// The settings in force are not on disk (since when, why).
#[derive(Clone, Debug)]
struct PersistFailure {
    since_ms: u64,
    error: String,
}

/// How often settings that could not be written are written again.
const PERSIST_RETRY: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the settings file; a missing file is the defaults.
pub fn read_settings(path: &FsPath) -> Result<Settings, AdminError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
        Err(source) => {
            return Err(AdminError::StateRead {
                path: path.display().to_string(),
                source,
            })
        }
    };
    serde_json::from_str(&text).map_err(|e| AdminError::StateParse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Writes the settings file atomically (temp file, fsync, rename, fsync of the
/// directory).
pub fn write_settings(path: &FsPath, settings: &Settings) -> Result<(), AdminError> {
    use std::io::Write;
    let err = |source| AdminError::StateWrite {
        path: path.display().to_string(),
        source,
    };
    let text = serde_json::to_vec_pretty(settings).map_err(|e| err(std::io::Error::other(e)))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&text).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = dir {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Compares in time independent of where the inputs differ.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
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

impl Admin {
    /// Loads the persisted settings from `config.state_file` and applies them to
    /// `ingest` (switches, app limits and blocks, breaker override).
    pub fn load(
        config: AdminConfig,
        ingest: Ingest,
        replay: ReplayStatus,
        spool: Option<Spool>,
    ) -> Result<Admin, AdminError> {
        let settings = read_settings(&config.state_file)?;
        let admin = Admin {
            inner: Arc::new(Inner {
                config,
                ingest,
                replay,
                spool,
                settings: tokio::sync::Mutex::new(settings.clone()),
                current: Mutex::new(settings.clone()),
                audit: Mutex::new(VecDeque::new()),
                history: Mutex::new(VecDeque::new()),
                per_app: Mutex::new(BTreeMap::new()),
                unpersisted: Mutex::new(None),
                persist_failures: std::sync::atomic::AtomicU64::new(0),
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

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        lock(&self.inner.current).clone()
    }

    /// Applies `new` to the relay, given that `old` was in force.
    fn apply_all(&self, old: &Settings, new: &Settings) {
        let ingest = &self.inner.ingest;
        ingest.controls().apply(&new.switches);
        if new.switches.push_off && !old.switches.push_off {
            if let Some(hub) = ingest.push_hub() {
                let ended = hub.disconnect_all();
                tracing::info!(ended, "live push turned off: push streams ended");
            }
        }
        if new.switches.messages_off != old.switches.messages_off {
            self.announce_config();
        }
        let apps: BTreeSet<&String> = old
            .app_limits
            .keys()
            .chain(old.blocked_apps.keys())
            .chain(new.app_limits.keys())
            .chain(new.blocked_apps.keys())
            .collect();
        for app in apps {
            let rate = if new.blocked_apps.contains_key(app) {
                Some(Rate::BLOCKED)
            } else {
                new.app_limits
                    .get(app)
                    .map(|r| Rate::new(r.events_per_sec, r.burst))
            };
            ingest.set_app_limit(AppId::new(app.as_str()), rate);
        }
        ingest.set_breaker_override(new.breaker.as_override());
        if let Some(rec) = ingest.recorder() {
            if new.record != old.record || rec.settings() != new.record {
                rec.set(&new.record);
            }
        }
        for feature in RelayFeature::ALL {
            ingest
                .features()
                .set(feature, new.features.get(feature.name()).copied());
        }
        metrics::gauge!("tern_relay_admin_blocked_apps").set(new.blocked_apps.len() as f64);
    }

    /// Tells subscribed devices to fetch config again (their bundle's ETag changed
    /// because messages were turned off or on).
    fn announce_config(&self) {
        let ingest = &self.inner.ingest;
        let (Some(hub), Some(cache)) = (ingest.push_hub(), ingest.config_cache()) else {
            return;
        };
        let mut reached = 0;
        for (app, version) in cache.cached_versions() {
            if let Some(etag) = ingest.served_etag(&app) {
                reached += hub.publish(&app, &PushNotice::ConfigChanged { version, etag });
            }
        }
        tracing::info!(reached, "config change announced to push subscribers");
    }

    /// Runs `change` on a copy of the settings; persists the result, applies it and
    /// audits it. A change that cannot be persisted still applies (in memory only):
    /// the reply says so and the settings are written again later.
    async fn change(
        &self,
        who: &Operator,
        action: &str,
        subject: impl Fn(&Settings) -> serde_json::Value,
        change: impl FnOnce(&mut Settings) -> Result<(), AdminError>,
    ) -> Result<ChangeReply, AdminError> {
        let mut guard = self.inner.settings.lock().await;
        let old = guard.clone();
        let mut new = old.clone();
        change(&mut new)?;
        if new != old {
            if let Err(e) = self.persist(&new).await {
                tracing::error!(
                    target: "tern_relay::audit",
                    error = %e,
                    action,
                    "admin change applied in memory only: the settings file could not be \
                     written (it will be retried; a restart before then loses the change)"
                );
            }
            self.apply_all(&old, &new);
            *guard = new.clone();
            *lock(&self.inner.current) = new.clone();
        }
        let unpersisted = lock(&self.inner.unpersisted).clone();
        self.record(
            who,
            action,
            subject(&old),
            subject(&new),
            unpersisted.is_none(),
        );
        Ok(ChangeReply {
            settings: new,
            persisted: unpersisted.is_none(),
            persist_error: unpersisted.map(|u| u.error),
        })
    }

    /// Writes `settings` to the settings file, keeping the persistence state (status,
    /// metrics) current.
    async fn persist(&self, settings: &Settings) -> Result<(), AdminError> {
        let path = self.inner.config.state_file.clone();
        let copy = settings.clone();
        let result = tokio::task::spawn_blocking(move || write_settings(&path, &copy))
            .await
            .unwrap_or_else(|e| {
                Err(AdminError::StateWrite {
                    path: self.inner.config.state_file.display().to_string(),
                    source: std::io::Error::other(e),
                })
            });
        let mut unpersisted = lock(&self.inner.unpersisted);
        match &result {
            Ok(()) => {
                if unpersisted.take().is_some() {
                    tracing::info!(
                        target: "tern_relay::audit",
                        file = %self.inner.config.state_file.display(),
                        "operator settings persisted again"
                    );
                }
                metrics::gauge!("tern_relay_admin_settings_persisted").set(1.0);
            }
            Err(e) => {
                self.inner.persist_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tern_relay_admin_persist_failures_total").increment(1);
                metrics::gauge!("tern_relay_admin_settings_persisted").set(0.0);
                let since_ms = unpersisted.as_ref().map_or_else(now_ms, |u| u.since_ms);
                *unpersisted = Some(PersistFailure {
                    since_ms,
                    error: e.to_string(),
                });
            }
        }
        result
    }

    /// Writes the settings in force again if they are not on disk (called every
    /// 5 s by the sampler). Returns whether they are on disk now.
    pub async fn retry_persist(&self) -> bool {
        if lock(&self.inner.unpersisted).is_none() {
            return true;
        }
        // Under the change lock: a retry never writes over a newer change.
        let guard = self.inner.settings.lock().await;
        if lock(&self.inner.unpersisted).is_none() {
            return true;
        }
        match self.persist(&guard).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    target: "tern_relay::audit",
                    error = %e,
                    "operator settings still not persisted; retrying"
                );
                false
            }
        }
    }

    /// Whether the settings in force are on disk, and if not since when and why.
    pub fn persistence(&self) -> PersistenceView {
        let u = lock(&self.inner.unpersisted).clone();
        PersistenceView {
            persisted: u.is_none(),
            file: self.inner.config.state_file.display().to_string(),
            failing_since_ms: u.as_ref().map(|u| u.since_ms),
            error: u.map(|u| u.error),
            failures: self.inner.persist_failures.load(Ordering::Relaxed),
        }
    }

    /// Audits one change: log, metric, ring.
    fn record(
        &self,
        who: &Operator,
        action: &str,
        before: serde_json::Value,
        after: serde_json::Value,
        persisted: bool,
    ) {
        let entry = AuditEntry {
            at_ms: now_ms(),
            operator: who.name.clone(),
            remote: who.remote.map(|r| r.to_string()),
            action: action.to_owned(),
            before,
            after,
            persisted,
        };
        tracing::info!(
            target: "tern_relay::audit",
            operator = %entry.operator,
            remote = entry.remote.as_deref().unwrap_or("-"),
            action = %entry.action,
            before = %entry.before,
            after = %entry.after,
            persisted,
            "admin change"
        );
        metrics::counter!("tern_relay_admin_changes_total", "action" => action.to_owned())
            .increment(1);
        let mut audit = lock(&self.inner.audit);
        if audit.len() == AUDIT_KEPT {
            audit.pop_front();
        }
        audit.push_back(entry);
    }

    /// Starts draining the relay (the binary then finishes requests in flight, closes
    /// connections with the `draining` code, hands its spool prefix over and exits 0).
    /// `false` if it was already draining.
    pub fn drain(&self, who: &Operator) -> bool {
        let started = self.inner.ingest.drain().start();
        if started {
            self.record(
                who,
                "drain",
                serde_json::json!({ "draining": false }),
                serde_json::json!({ "draining": true }),
                true,
            );
        }
        started
    }

    /// The latest audit entries, oldest first.
    pub fn audit(&self) -> Vec<AuditEntry> {
        lock(&self.inner.audit).iter().cloned().collect()
    }

    /// The samples of the last five minutes, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        lock(&self.inner.history).iter().copied().collect()
    }

    /// Takes one sample per second until `stop` turns true: rates for `/status` and
    /// `/history`.
    pub async fn run_sampler(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Totals::read(&self.inner.ingest);
        let mut last_apps = self.inner.ingest.counters().app_tallies();
        let mut last_at = Instant::now();
        let mut last_hist = self.inner.ingest.counters().handling_hist.snapshot();
        let mut last_persist_try = Instant::now();
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            if last_persist_try.elapsed() >= PERSIST_RETRY {
                last_persist_try = Instant::now();
                self.retry_persist().await;
            }
            let now = Instant::now();
            let secs = now.duration_since(last_at).as_secs_f64().max(1e-3);
            let totals = Totals::read(&self.inner.ingest);
            let apps = self.inner.ingest.counters().app_tallies();
            let hist = self.inner.ingest.counters().handling_hist.snapshot();
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
        let progress = self.inner.replay.progress();
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
            breaker: breaker_code(self.inner.ingest.breaker_state()),
            connections: self
                .inner
                .ingest
                .counters()
                .quic_connections
                .load(Ordering::Relaxed),
        }
    }

    /// The relay's state now.
    pub fn status(&self) -> Status {
        let ingest = &self.inner.ingest;
        let c = ingest.counters();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let settings = self.settings();
        let spool = self.inner.spool.as_ref().map(|s| SpoolStatus {
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
        let latest = lock(&self.inner.history)
            .back()
            .copied()
            .unwrap_or_default();
        Status {
            relay_id: self.inner.config.relay_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            started_at_ms: self.inner.started_at_ms,
            uptime_s: self.inner.started.elapsed().as_secs(),
            shard_map_version: ingest.shard_map().version,
            shard_map: ingest.shard_map_status().view(&ingest.shard_map()),
            registry: ingest.registry().status(),
            record: ingest.recorder().map(|r| r.stats()),
            drain: DrainView {
                draining: ingest.drain().is_draining(),
                since_ms: ingest.drain().started_at_ms(),
                in_flight: ingest.drain().in_flight(),
            },
            breaker: BreakerStatus {
                state: breaker_name(ingest.breaker_state()),
                setting: settings.breaker,
            },
            spool,
            replay: ReplayView {
                paused: settings.switches.replay_paused,
                held_by_degraded_forwarding: settings.switches.forwarding_degraded,
                max_rate: settings.switches.replay_max_rate,
                progress: self.inner.replay.progress(),
            },
            connections: Connections {
                quic: load(&c.quic_connections),
                push_subscribers: ingest.push_hub().map_or(0, |h| h.subscribers() as u64),
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
                let r = ingest.default_app_limit();
                RateSetting {
                    events_per_sec: r.events_per_sec,
                    burst: r.burst,
                }
            },
            settings,
        }
    }

    /// The router, authenticated. Serve it with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so audits name the peer.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/admin/v1/status", get(status))
            .route("/admin/v1/settings", get(settings))
            .route("/admin/v1/services/{service}", put(set_service))
            .route("/admin/v1/replay", put(set_replay))
            .route(
                "/admin/v1/apps/{app}/limit",
                put(set_app_limit).delete(clear_app_limit),
            )
            .route(
                "/admin/v1/apps/{app}/block",
                put(block_app).delete(unblock_app),
            )
            .route("/admin/v1/breaker", put(set_breaker))
            .route("/admin/v1/drain", axum::routing::post(drain))
            .route("/admin/v1/record", put(set_record))
            .route("/admin/v1/features", get(features))
            .route(
                "/admin/v1/features/{name}",
                put(set_feature).delete(clear_feature),
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
            .merge(crate::dashboard::router())
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
    fn read(ingest: &Ingest) -> Totals {
        let c = ingest.counters();
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
    pub shard_map: crate::shardmap::ShardMapStatusView,
    /// The app registry: loaded, apps, keys retiring or held, a held list.
    pub registry: crate::apps::RegistryStatus,
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

/// Who made a request.
#[derive(Clone, Debug)]
pub struct Operator {
    name: String,
    remote: Option<SocketAddr>,
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

async fn drain(
    State(admin): State<Admin>,
    Extension(who): Extension<Operator>,
) -> (StatusCode, Json<serde_json::Value>) {
    let started = admin.drain(&who);
    let d = admin.inner.ingest.drain();
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "draining": true,
            "already_draining": !started,
            "since_ms": d.started_at_ms(),
            "in_flight": d.in_flight(),
        })),
    )
}

async fn set_record(
    State(admin): State<Admin>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    let b: RecordSettings = body(&bytes)?;
    if b.sample_bp > tern_protocol::rollout::BUCKETS {
        return Err(invalid(
            "sample_bp",
            format!("{} is above 10000 (100%)", b.sample_bp),
        ));
    }
    if b.enabled && b.sample_bp == 0 {
        return Err(invalid(
            "sample_bp",
            "recording with a 0% sample records nothing: give 1..=10000",
        ));
    }
    if let Some(app) = b.apps.iter().find(|a| check_app(a).is_err()) {
        return Err(invalid("apps", format!("{app:?} is not an app id")));
    }
    if admin.inner.ingest.recorder().is_none() {
        return Err(invalid("record", "this relay has no recorder"));
    }
    let read = |s: &Settings| serde_json::to_value(&s.record).unwrap_or_default();
    let new = admin
        .change(&who, "record", read, |s| {
            s.record = b;
            Ok(())
        })
        .await?;
    Ok(Json(new))
}

/// One relay feature flag as `GET /admin/v1/features` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct FeatureView {
    /// The flag's name.
    pub name: &'static str,
    /// What it guards.
    pub description: &'static str,
    /// The setting in force.
    pub setting: FeatureSetting,
    /// Whether an operator set it (else: the default).
    pub overridden: bool,
    /// The default.
    pub default: FeatureSetting,
}

async fn features(State(admin): State<Admin>) -> Json<Vec<FeatureView>> {
    let settings = admin.settings();
    Json(
        RelayFeature::ALL
            .into_iter()
            .map(|f| FeatureView {
                name: f.name(),
                description: f.description(),
                setting: admin.inner.ingest.features().setting(f),
                overridden: settings.features.contains_key(f.name()),
                default: f.default_setting(),
            })
            .collect(),
    )
}

fn feature_named(name: &str) -> Result<RelayFeature, AdminError> {
    RelayFeature::from_name(name).ok_or_else(|| AdminError::UnknownFeature(name.to_owned()))
}

async fn set_feature(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    let feature = feature_named(&name)?;
    let b: FeatureSetting = body(&bytes)?;
    if b.rollout_bp > tern_protocol::rollout::BUCKETS {
        return Err(invalid(
            "rollout_bp",
            format!("{} is above 10000 (100%)", b.rollout_bp),
        ));
    }
    set_entry(
        &admin,
        &who,
        ("feature", feature.name().to_owned()),
        "feature",
        |s| &mut s.features,
        Some(b),
    )
    .await
}

async fn clear_feature(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    Extension(who): Extension<Operator>,
) -> Result<Json<ChangeReply>, AdminError> {
    let feature = feature_named(&name)?;
    set_entry(
        &admin,
        &who,
        ("feature", feature.name().to_owned()),
        "feature",
        |s| &mut s.features,
        None,
    )
    .await
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

/// Parses a JSON body into `T`, naming the field at fault.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminError> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        bytes
    };
    serde_json::from_slice(text).map_err(|e| invalid("body", e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    degraded: bool,
}

async fn set_service(
    State(admin): State<Admin>,
    Path(service): Path<String>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    let field: fn(&mut Switches) -> &mut bool = match service.as_str() {
        "forwarding" => |s| &mut s.forwarding_degraded,
        "config" => |s| &mut s.config_cache_only,
        "messages" => |s| &mut s.messages_off,
        "push" => |s| &mut s.push_off,
        _ => return Err(AdminError::UnknownService(service)),
    };
    let b: ServiceBody = body(&bytes)?;
    let read = move |s: &Settings| {
        let mut sw = s.switches;
        serde_json::json!({ "degraded": *field(&mut sw) })
    };
    let new = admin
        .change(&who, &format!("service.{service}"), read, |s| {
            *field(&mut s.switches) = b.degraded;
            Ok(())
        })
        .await?;
    Ok(Json(new))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    paused: Option<bool>,
    /// Absent: unchanged; `null`: the default; a number: the cap.
    #[serde(default, deserialize_with = "present")]
    max_rate: Option<Option<u64>>,
}

/// Deserializes a field that is present (possibly `null`) as `Some(..)`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

async fn set_replay(
    State(admin): State<Admin>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    let b: ReplayBody = body(&bytes)?;
    if let Some(Some(rate)) = b.max_rate {
        if rate == 0 {
            return Err(invalid(
                "max_rate",
                "must be at least 1 batch per second (pause replay instead)",
            ));
        }
    }
    let read = |s: &Settings| {
        serde_json::json!({
            "paused": s.switches.replay_paused,
            "max_rate": s.switches.replay_max_rate,
        })
    };
    let new = admin
        .change(&who, "replay", read, |s| {
            if let Some(p) = b.paused {
                s.switches.replay_paused = p;
            }
            if let Some(rate) = b.max_rate {
                s.switches.replay_max_rate = rate;
            }
            Ok(())
        })
        .await?;
    Ok(Json(new))
}

async fn set_app_limit(
    State(admin): State<Admin>,
    Path(app): Path<String>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    check_app(&app)?;
    let b: RateSetting = body(&bytes)?;
    if b.events_per_sec == 0 {
        return Err(invalid(
            "events_per_sec",
            "must be at least 1 (block the app instead)",
        ));
    }
    if b.burst < MIN_BURST {
        return Err(invalid(
            "burst",
            format!(
                "{} is below the largest batch ({MIN_BURST} events)",
                b.burst
            ),
        ));
    }
    set_entry(
        &admin,
        &who,
        ("app", app),
        "app.limit",
        |s| &mut s.app_limits,
        Some(b),
    )
    .await
}

/// Sets (or with `None` removes) one entry of a keyed map of the settings (per-app
/// limits and blocks, feature flags), audited as `action` with the entry before and
/// after; `subject` is the key's label and value (`("app", "demo")`).
async fn set_entry<V: Serialize + Clone + PartialEq>(
    admin: &Admin,
    who: &Operator,
    subject: (&'static str, String),
    action: &str,
    map: fn(&mut Settings) -> &mut BTreeMap<String, V>,
    value: Option<V>,
) -> Result<Json<ChangeReply>, AdminError> {
    let (label, app) = subject;
    let key = app.clone();
    let read = move |s: &Settings| {
        let mut s = s.clone();
        serde_json::json!({ label: key, "entry": map(&mut s).get(&key) })
    };
    let new = admin
        .change(who, action, read, |s| {
            match value {
                Some(v) => {
                    map(s).insert(app, v);
                }
                None => {
                    map(s).remove(&app);
                }
            }
            Ok(())
        })
        .await?;
    Ok(Json(new))
}

async fn clear_app_limit(
    State(admin): State<Admin>,
    Path(app): Path<String>,
    Extension(who): Extension<Operator>,
) -> Result<Json<ChangeReply>, AdminError> {
    check_app(&app)?;
    set_entry(
        &admin,
        &who,
        ("app", app),
        "app.limit",
        |s| &mut s.app_limits,
        None,
    )
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn block_app(
    State(admin): State<Admin>,
    Path(app): Path<String>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    check_app(&app)?;
    let b: BlockBody = body(&bytes)?;
    let reason = b.reason.unwrap_or_default();
    if reason.len() > 500 {
        return Err(invalid("reason", "at most 500 bytes"));
    }
    set_entry(
        &admin,
        &who,
        ("app", app),
        "app.block",
        |s| &mut s.blocked_apps,
        Some(reason),
    )
    .await
}

async fn unblock_app(
    State(admin): State<Admin>,
    Path(app): Path<String>,
    Extension(who): Extension<Operator>,
) -> Result<Json<ChangeReply>, AdminError> {
    check_app(&app)?;
    set_entry(
        &admin,
        &who,
        ("app", app),
        "app.block",
        |s| &mut s.blocked_apps,
        None,
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerBody {
    #[serde(rename = "override")]
    setting: BreakerSetting,
}

async fn set_breaker(
    State(admin): State<Admin>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    let b: BreakerBody = body(&bytes)?;
    let read = |s: &Settings| serde_json::json!({ "override": s.breaker });
    let new = admin
        .change(&who, "breaker", read, |s| {
            s.breaker = b.setting;
            Ok(())
        })
        .await?;
    Ok(Json(new))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn settings_persist_atomically_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.json");
        assert_eq!(read_settings(&path).unwrap(), Settings::default());
        let mut s = Settings::default();
        s.switches.forwarding_degraded = true;
        s.switches.replay_max_rate = Some(100);
        s.app_limits.insert(
            "demo".into(),
            RateSetting {
                events_per_sec: 10,
                burst: 1000,
            },
        );
        s.blocked_apps.insert("abuser".into(), "incident 42".into());
        s.breaker = BreakerSetting::ForceClosed;
        write_settings(&path, &s).unwrap();
        assert_eq!(read_settings(&path).unwrap(), s);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, b"{\"switches\": {\"forwarding\": true}}").unwrap();
        let e = read_settings(&path).unwrap_err().to_string();
        assert!(e.contains("admin.json") && e.contains("forwarding"), "{e}");
    }

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
