//! The operator settings: the persisted settings file (temp file, fsync, rename),
//! applying settings to the relay, and persisting a change before it takes effect (a
//! change that cannot be persisted still applies, in memory, and is written again
//! every few seconds).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path as FsPath;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use serde::{Deserialize, Serialize};
use tern_protocol::{AppId, PushNotice};

use super::{lock, now_ms, Admin, AdminError, Operator};
use crate::backend::breaker::Override;
use crate::ingest::record::RecordSettings;
use crate::ingest::served_etag;
use crate::policy::controls::Switches;
use crate::policy::features::{FeatureSetting, RelayFeature};
use crate::policy::ratelimit::Rate;

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
    pub(super) fn as_override(self) -> Option<Override> {
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

/// Persistence part of [`super::Status`].
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

/// The settings in force are not on disk (since when, why).
#[derive(Clone, Debug)]
pub(super) struct PersistFailure {
    pub(super) since_ms: u64,
    pub(super) error: String,
}

/// How often settings that could not be written are written again.
pub(super) const PERSIST_RETRY: Duration = Duration::from_secs(5);

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

/// How long an admin change waits for the settings file to be written.
const PERSIST_WAIT: Duration = Duration::from_secs(3);

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

impl Admin {
    /// The settings in force.
    pub fn settings(&self) -> Settings {
        lock(&self.inner.current).clone()
    }

    /// Applies `new` to the relay, given that `old` was in force.
    pub(super) fn apply_all(&self, old: &Settings, new: &Settings) {
        let svc = &self.inner.svc;
        svc.controls.apply(&new.switches);
        if new.switches.push_off && !old.switches.push_off {
            if let Some(hub) = &svc.push_hub {
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
            svc.limiter.set_limit(AppId::new(app.as_str()), rate);
        }
        svc.breaker.set_override(new.breaker.as_override());
        if let Some(rec) = &svc.recorder {
            if new.record != old.record || rec.settings() != new.record {
                rec.set(&new.record);
            }
        }
        for feature in RelayFeature::ALL {
            svc.features
                .set(feature, new.features.get(feature.name()).copied());
        }
        metrics::gauge!("tern_relay_admin_blocked_apps").set(new.blocked_apps.len() as f64);
    }

    /// Tells subscribed devices to fetch config again (their bundle's ETag changed
    /// because messages were turned off or on).
    fn announce_config(&self) {
        let svc = &self.inner.svc;
        let (Some(hub), Some(cache)) = (&svc.push_hub, &svc.config_cache) else {
            return;
        };
        let mut reached = 0;
        for (app, version) in cache.cached_versions() {
            if let Some(etag) = served_etag(cache, &svc.controls, &app) {
                reached += hub.publish(&app, &PushNotice::ConfigChanged { version, etag });
            }
        }
        tracing::info!(reached, "config change announced to push subscribers");
    }

    /// Runs `change` on a copy of the settings; persists the result, applies it and
    /// audits it. A change that cannot be persisted still applies (in memory only):
    /// the reply says so and the settings are written again later.
    pub(super) async fn change(
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
    ///
    /// A write that does not finish within [`PERSIST_WAIT`] (a hung disk or network
    /// file system) is a failed one for the caller: the change still applies in memory
    /// and the operator is answered, so an incident is never blocked on a disk. The
    /// write goes on in the background; until it ends no other starts (each would be
    /// a thread stuck on the same disk, and a late one could land over a newer one),
    /// and the settings in force are written again by [`Admin::retry_persist`].
    async fn persist(&self, settings: &Settings) -> Result<(), AdminError> {
        let path = self.inner.config.state_file.clone();
        let failed = |why: String| AdminError::StateWrite {
            path: path.display().to_string(),
            source: std::io::Error::other(why),
        };
        let result = if self.inner.writing.swap(true, Ordering::AcqRel) {
            Err(failed(
                "an earlier write of the settings file has not finished (disk hung?)".into(),
            ))
        } else {
            let (at, copy, writing) = (path.clone(), settings.clone(), self.inner.writing.clone());
            let write = tokio::task::spawn_blocking(move || {
                let result = write_settings(&at, &copy);
                writing.store(false, Ordering::Release);
                result
            });
            match tokio::time::timeout(PERSIST_WAIT, write).await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => {
                    self.inner.writing.store(false, Ordering::Release);
                    Err(failed(e.to_string()))
                }
                Err(_) => Err(failed(format!(
                    "the write did not finish within {} s (disk hung?); it goes on in the \
                     background",
                    PERSIST_WAIT.as_secs()
                ))),
            }
        };
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
}

/// Sets (or with `None` removes) one entry of a keyed map of the settings (per-app
/// limits and blocks, feature flags), audited as `action` with the entry before and
/// after; `subject` is the key's label and value (`("app", "demo")`).
pub(super) async fn set_entry<V: Serialize + Clone + PartialEq>(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
