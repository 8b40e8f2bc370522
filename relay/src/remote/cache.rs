//! The config cache: each app's [`ConfigBundle`] (remote values, feature flags, in-app
//! messages) as the backend last served it, kept in memory for `ConfigRequest`s and on
//! disk for restarts.
//!
//! * **Fetching.** `GET {backend}/v1/apps/{app}/config` with `If-None-Match` set to the
//!   cached ETag: `304` confirms the cached copy, `200` brings a new bundle (§10 of the
//!   protocol). A refresher ([`ConfigCache::run`]) polls every app of the
//!   [`AppRegistry`] each `refresh_interval` (default 500 ms, so a change reaches
//!   connected devices within about a second; a `304` costs the backend next to
//!   nothing), at most `max_concurrent_fetches` at a time. Refreshes of one app never
//!   overlap, so an older answer never overwrites a newer one.
//! * **Failures keep the copy.** A transport error, timeout, `5xx`, `429` or bad body
//!   leaves the cached bundle in place and marks it *stale*: until a refresh succeeds
//!   again, replies carry `stale = true` (§6.2). An app the backend does not know
//!   (`404`) is a failure too (the copy, if any, is kept). An app with no bundle at all
//!   gets `Retry`.
//! * **Persistence.** Every new bundle is written to `dir` (one file per app: a temp
//!   file, fsync, rename, so a crash leaves the old file or the new one, never a torn
//!   one) before it is served, and [`ConfigCache::load_persisted`] reads them back at
//!   startup: a relay restarted while the backend is down still serves the last known
//!   bundles (stale once a refresh has failed). Files hold the bundle and the wall-clock
//!   time it was fetched, as MessagePack; unreadable files are skipped and reported.
//! * **Push.** A bundle whose ETag differs from the cached one is announced to the
//!   app's subscribers as `config_changed{version, etag}` through the [`PushHub`].
//!
//! The per-app state ([`CachedConfig`]) is a plain state machine (`handle_refresh`,
//! `lookup`) with the clock passed in; this module's async layer owns HTTP, files and
//! timers.
//!
//! Metrics: `tern_relay_config_fetches_total{outcome}` (`modified`, `not_modified`,
//! `unknown_app`, `failed`), gauges `tern_relay_config_apps_cached`,
//! `tern_relay_config_stale_apps` and `tern_relay_config_staleness_seconds` (the oldest
//! confirmation among cached bundles), counters `tern_relay_config_persist_errors_total`
//! and `tern_relay_config_poll_rounds_total{outcome}` (`polled`, or `skipped` while an
//! operator has config serving degraded).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tern_protocol::{AppId, ConfigBundle, ETag, PushNotice};

use crate::policy::apps::AppRegistry;
use crate::remote::push::PushHub;

/// Why a fetch, a load or a write failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigCacheError {
    /// The request did not complete (connection, timeout, body).
    #[error("fetching the config of {app}: {message}")]
    Transport {
        /// The app.
        app: AppId,
        /// What failed.
        message: String,
    },
    /// The backend answered an unexpected status.
    #[error("the backend answered {status} for the config of {app}")]
    Status {
        /// The app.
        app: AppId,
        /// The HTTP status.
        status: u16,
    },
    /// The backend does not know the app (`404`).
    #[error("the backend has no config for {0}")]
    UnknownApp(AppId),
    /// The body is not a config bundle.
    #[error("bad config bundle for {app}: {message}")]
    Decode {
        /// The app.
        app: AppId,
        /// What the decoder said.
        message: String,
    },
    /// The backend sent another app's bundle.
    #[error("asked for the config of {app}, got the bundle of {got}")]
    AppMismatch {
        /// The app asked for.
        app: AppId,
        /// The app in the bundle.
        got: AppId,
    },
    /// The backend URL cannot carry a path.
    #[error("backend_url {0:?} cannot be used for config requests")]
    Url(String),
    /// A cache file could not be read or written.
    #[error("config cache file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Results of this module.
pub type Result<T, E = ConfigCacheError> = std::result::Result<T, E>;

/// Settings of the cache.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConfigCacheConfig {
    /// Backend base URL.
    pub backend_url: String,
    /// Backend bearer token.
    pub backend_token: Option<String>,
    /// Where bundles are persisted; `None` keeps them in memory only.
    pub dir: Option<PathBuf>,
    /// How often every app is polled.
    pub refresh_interval: Duration,
    /// Most fetches in flight at once.
    pub max_concurrent_fetches: usize,
    /// Timeout of one fetch.
    pub request_timeout: Duration,
    /// `Retry` delay for an app with no bundle while the backend is unreachable.
    pub retry_after: Duration,
    /// `Retry` delay for an app whose bundle has not been fetched yet.
    pub pending_retry_after: Duration,
}

impl ConfigCacheConfig {
    /// Defaults for the backend at `backend_url`.
    pub fn new(backend_url: &str) -> Self {
        ConfigCacheConfig {
            backend_url: backend_url.trim_end_matches('/').to_owned(),
            backend_token: None,
            dir: None,
            refresh_interval: Duration::from_millis(500),
            max_concurrent_fetches: 8,
            request_timeout: Duration::from_secs(2),
            retry_after: Duration::from_secs(2),
            pending_retry_after: Duration::from_millis(500),
        }
    }

    /// Sets the bearer token.
    pub fn with_token(mut self, token: &str) -> Self {
        self.backend_token = Some(token.to_owned());
        self
    }

    /// Persists bundles in `dir`.
    pub fn with_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Sets the polling interval.
    pub fn with_refresh_interval(mut self, every: Duration) -> Self {
        self.refresh_interval = every;
        self
    }

    /// Sets the fetch timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

/// What a refresh of one app brought.
#[derive(Clone, Debug, PartialEq)]
pub enum Refresh {
    /// A bundle (`200`).
    Fetched(ConfigBundle),
    /// The cached bundle is current (`304`).
    NotModified,
    /// The backend could not be asked, or did not answer usefully.
    Failed,
}

/// The answer to a config request, before it is put into a reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// The device's ETag differs: here is the bundle.
    Modified(Arc<ConfigBundle>),
    /// The device's ETag is the cached one.
    NotModified,
    /// No bundle is known: ask again after this long.
    Retry(Duration),
}

/// A lookup and whether the copy behind it is stale.
#[derive(Clone, Debug, PartialEq)]
pub struct Served {
    /// The answer.
    pub lookup: Lookup,
    /// True when the backend could not confirm the cached copy at the last refresh.
    pub stale: bool,
}

/// One app's cached config: the sans-IO part of the cache. Times are wall-clock Unix
/// milliseconds passed in by the caller.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedConfig {
    bundle: Option<Arc<ConfigBundle>>,
    /// When the backend last confirmed the bundle (served it or answered `304`).
    confirmed_at_ms: Option<i64>,
    /// The last refresh failed.
    failing: bool,
}

impl CachedConfig {
    /// A bundle loaded from disk, fetched at `fetched_at_ms`.
    pub fn restored(bundle: ConfigBundle, fetched_at_ms: i64) -> Self {
        CachedConfig {
            bundle: Some(Arc::new(bundle)),
            confirmed_at_ms: Some(fetched_at_ms),
            failing: false,
        }
    }

    /// Applies a refresh result. Returns the new bundle when it differs from the
    /// cached one (ETag or version), so the caller persists it, and announces it if
    /// the ETag changed.
    pub fn handle_refresh(&mut self, refresh: Refresh, now_ms: i64) -> Option<Arc<ConfigBundle>> {
        match refresh {
            Refresh::Fetched(bundle) => {
                self.failing = false;
                self.confirmed_at_ms = Some(now_ms);
                let same = self
                    .bundle
                    .as_ref()
                    .is_some_and(|b| b.etag == bundle.etag && b.version == bundle.version);
                if same {
                    return None;
                }
                let bundle = Arc::new(bundle);
                self.bundle = Some(bundle.clone());
                Some(bundle)
            }
            Refresh::NotModified => {
                self.failing = false;
                if self.bundle.is_some() {
                    self.confirmed_at_ms = Some(now_ms);
                }
                None
            }
            Refresh::Failed => {
                self.failing = true;
                None
            }
        }
    }

    /// Answers a device holding `if_none_match`. `retry_after` applies when no bundle
    /// is known and the backend is unreachable, `pending_retry_after` when none was
    /// fetched yet.
    pub fn lookup(
        &self,
        if_none_match: Option<&ETag>,
        retry_after: Duration,
        pending_retry_after: Duration,
    ) -> Served {
        let lookup = match &self.bundle {
            Some(b) if if_none_match == Some(&b.etag) => Lookup::NotModified,
            Some(b) => Lookup::Modified(b.clone()),
            None if self.failing => Lookup::Retry(retry_after),
            None => Lookup::Retry(pending_retry_after),
        };
        Served {
            stale: self.is_stale(),
            lookup,
        }
    }

    /// True when a bundle is cached and the last refresh failed: the copy is older
    /// than the backend's last failure.
    pub fn is_stale(&self) -> bool {
        self.bundle.is_some() && self.failing
    }

    /// The cached bundle.
    pub fn bundle(&self) -> Option<&Arc<ConfigBundle>> {
        self.bundle.as_ref()
    }

    /// The cached bundle's ETag.
    pub fn etag(&self) -> Option<&ETag> {
        self.bundle.as_ref().map(|b| &b.etag)
    }

    /// Milliseconds since the backend last confirmed the cached bundle.
    pub fn age_ms(&self, now_ms: i64) -> Option<i64> {
        self.bundle.as_ref()?;
        self.confirmed_at_ms
            .map(|t| now_ms.saturating_sub(t).max(0))
    }
}

/// Counters of the cache.
#[derive(Debug, Default)]
pub struct ConfigCacheCounters {
    /// Fetches that brought a bundle (`200`).
    pub fetched: AtomicU64,
    /// Fetches answered `304`.
    pub not_modified: AtomicU64,
    /// Fetches that failed (including `404`).
    pub failed: AtomicU64,
    /// New bundles announced to subscribers.
    pub changes: AtomicU64,
    /// Bundles that could not be persisted (still served from memory).
    pub persist_errors: AtomicU64,
}

/// The on-disk form of one app's bundle. Unknown fields are ignored, so later versions
/// may add some.
struct Persisted {
    bundle: ConfigBundle,
    fetched_at_ms: i64,
}

tern_protocol::wire_struct!(Persisted {
    bundle: req,
    fetched_at_ms: def,
});

/// Extension of cache files.
const FILE_EXT: &str = "bundle";

/// A file name for `app`: letters, digits, `-` and `_` as they are, every other byte
/// `%XX`; long names are cut and end with a hash of the whole id. Loading reads the app
/// from the file's content, so names only need to be distinct.
pub fn file_name(app: &AppId) -> String {
    let mut name = String::new();
    for b in app.as_str().bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    if name.len() > 160 {
        // FNV-1a, 64 bit: stable across builds, which std's hasher does not promise.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in app.as_str().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        name.truncate(140);
        name.push_str(&format!("~{h:016x}"));
    }
    format!("{name}.{FILE_EXT}")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `dir/name` atomically: a temp file in the same directory, fsync,
/// rename, then fsync of the directory (best effort) so the rename is durable.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigCacheError::Io { path, source }
    };
    // What apps are served: no other local user may read it (`crate::private`).
    crate::private::private_dir(dir).map_err(io(dir))?;
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let target = dir.join(name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io(&target))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads every cache file in `dir`: the newest bundle per app. A missing directory is
/// empty; unreadable files are skipped with a warning.
fn read_dir(dir: &Path) -> Result<HashMap<AppId, Persisted>> {
    let mut out: HashMap<AppId, Persisted> = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(ConfigCacheError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(FILE_EXT) {
            continue;
        }
        let decoded = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                tern_protocol::decode_payload::<Persisted>(&b).map_err(|e| e.to_string())
            });
        match decoded {
            Ok(p) => {
                let newer = out
                    .get(&p.bundle.app_id)
                    .is_none_or(|cur| p.bundle.version > cur.bundle.version);
                if newer {
                    out.insert(p.bundle.app_id.clone(), p);
                }
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping unreadable config cache file")
            }
        }
    }
    Ok(out)
}

#[derive(Debug)]
struct Inner {
    config: ConfigCacheConfig,
    client: reqwest::Client,
    entries: RwLock<HashMap<AppId, CachedConfig>>,
    /// One lock per app, so refreshes of an app never overlap.
    refreshing: Mutex<HashMap<AppId, Arc<tokio::sync::Mutex<()>>>>,
    hub: OnceLock<PushHub>,
    controls: OnceLock<crate::policy::controls::Controls>,
    counters: ConfigCacheCounters,
}

/// The cache. Cheap to clone; clones share everything.
#[derive(Clone, Debug)]
pub struct ConfigCache {
    inner: Arc<Inner>,
}

impl ConfigCache {
    /// An empty cache fetching with `client`.
    pub fn new(config: ConfigCacheConfig, client: reqwest::Client) -> Self {
        ConfigCache {
            inner: Arc::new(Inner {
                config,
                client,
                entries: RwLock::new(HashMap::new()),
                refreshing: Mutex::new(HashMap::new()),
                hub: OnceLock::new(),
                controls: OnceLock::new(),
                counters: ConfigCacheCounters::default(),
            }),
        }
    }

    /// Announces new bundles on `hub`. Call before sharing the cache; a second hub is
    /// ignored.
    pub fn with_push_hub(self, hub: PushHub) -> Self {
        let _ = self.inner.hub.set(hub);
        self
    }

    /// Reads the operator switches from `controls`: while config serving is degraded
    /// (`config_cache_only`) the backend is not polled and the cached bundles are
    /// served. Call before sharing the cache; a second call is ignored.
    pub fn with_controls(self, controls: crate::policy::controls::Controls) -> Self {
        let _ = self.inner.controls.set(controls);
        self
    }

    fn cache_only(&self) -> bool {
        self.inner
            .controls
            .get()
            .is_some_and(|c| c.config_cache_only())
    }

    /// Every cached app with its bundle's version.
    pub fn cached_versions(&self) -> Vec<(AppId, u64)> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(app, c)| c.bundle().map(|b| (app.clone(), b.version)))
            .collect()
    }

    /// The settings.
    pub fn config(&self) -> &ConfigCacheConfig {
        &self.inner.config
    }

    /// The counters.
    pub fn counters(&self) -> &ConfigCacheCounters {
        &self.inner.counters
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<AppId, CachedConfig>> {
        self.inner.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<AppId, CachedConfig>> {
        self.inner
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the persisted bundles (when a directory is configured); returns how many.
    /// Call at startup, before serving. Bundles already in memory with a higher version
    /// are kept.
    pub fn load_persisted(&self) -> Result<usize> {
        let Some(dir) = &self.inner.config.dir else {
            return Ok(0);
        };
        let found = read_dir(dir)?;
        let n = found.len();
        let mut entries = self.write();
        for (app, p) in found {
            let keep = entries
                .get(&app)
                .and_then(|e| e.bundle())
                .is_some_and(|b| b.version >= p.bundle.version);
            if !keep {
                entries.insert(app, CachedConfig::restored(p.bundle, p.fetched_at_ms));
            }
        }
        drop(entries);
        self.publish_gauges();
        Ok(n)
    }

    /// Answers a config request of `app` (already authenticated).
    pub fn lookup(&self, app: &AppId, if_none_match: Option<&ETag>) -> Served {
        let c = &self.inner.config;
        match self.read().get(app) {
            Some(entry) => entry.lookup(if_none_match, c.retry_after, c.pending_retry_after),
            None => {
                CachedConfig::default().lookup(if_none_match, c.retry_after, c.pending_retry_after)
            }
        }
    }

    /// The cached bundle of `app`.
    pub fn bundle(&self, app: &AppId) -> Option<Arc<ConfigBundle>> {
        self.read().get(app).and_then(|e| e.bundle().cloned())
    }

    /// The cached ETag of `app`.
    pub fn etag(&self, app: &AppId) -> Option<ETag> {
        self.read().get(app).and_then(|e| e.etag().cloned())
    }

    /// Apps with a cached bundle.
    pub fn apps_cached(&self) -> usize {
        self.read()
            .values()
            .filter(|e| e.bundle().is_some())
            .count()
    }

    /// True when `app`'s cached copy is stale.
    pub fn is_stale(&self, app: &AppId) -> bool {
        self.read().get(app).is_some_and(CachedConfig::is_stale)
    }

    fn app_lock(&self, app: &AppId) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .refreshing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(app.clone())
            .or_default()
            .clone()
    }

    /// Fetches `app`'s bundle once (conditionally on the cached ETag), then updates,
    /// persists and announces. On error the cached copy is kept and marked stale.
    pub async fn refresh_app(&self, app: &AppId) -> Result<Refresh> {
        let lock = self.app_lock(app);
        let _guard = lock.lock().await;
        let etag = self.etag(app);
        let fetched = self.fetch(app, etag.as_ref()).await;
        let (refresh, outcome) = match &fetched {
            Ok(Refresh::Fetched(b)) => (Refresh::Fetched(b.clone()), "modified"),
            Ok(_) => (Refresh::NotModified, "not_modified"),
            Err(ConfigCacheError::UnknownApp(_)) => (Refresh::Failed, "unknown_app"),
            Err(_) => (Refresh::Failed, "failed"),
        };
        metrics::counter!("tern_relay_config_fetches_total", "outcome" => outcome).increment(1);
        let c = &self.inner.counters;
        match &refresh {
            Refresh::Fetched(_) => c.fetched.fetch_add(1, Ordering::Relaxed),
            Refresh::NotModified => c.not_modified.fetch_add(1, Ordering::Relaxed),
            Refresh::Failed => c.failed.fetch_add(1, Ordering::Relaxed),
        };
        if let Refresh::Fetched(bundle) = &refresh {
            let current = self.bundle(app);
            if current.is_none_or(|c| c.etag != bundle.etag || c.version != bundle.version) {
                // Persist before serving: a restarted relay never goes back to a
                // bundle older than what devices were given.
                self.persist(bundle).await;
            }
        }
        let changed = self
            .write()
            .entry(app.clone())
            .or_default()
            .handle_refresh(refresh, now_ms());
        if let Some(bundle) = changed.filter(|b| etag.as_ref() != Some(&b.etag)) {
            tracing::info!(app = %app, version = bundle.version, etag = %bundle.etag, "config changed");
            c.changes.fetch_add(1, Ordering::Relaxed);
            if let Some(hub) = self.inner.hub.get() {
                hub.publish(
                    app,
                    &PushNotice::ConfigChanged {
                        version: bundle.version,
                        etag: bundle.etag.clone(),
                    },
                );
            }
        }
        fetched
    }

    async fn persist(&self, bundle: &ConfigBundle) {
        let Some(dir) = self.inner.config.dir.clone() else {
            return;
        };
        let encoded = tern_protocol::encode_payload(&Persisted {
            bundle: bundle.clone(),
            fetched_at_ms: now_ms(),
        });
        let name = file_name(&bundle.app_id);
        let result = match encoded {
            Ok(bytes) => tokio::task::spawn_blocking(move || write_atomic(&dir, &name, &bytes))
                .await
                .unwrap_or_else(|e| {
                    Err(ConfigCacheError::Io {
                        path: PathBuf::new(),
                        source: std::io::Error::other(e.to_string()),
                    })
                }),
            Err(e) => Err(ConfigCacheError::Decode {
                app: bundle.app_id.clone(),
                message: e.to_string(),
            }),
        };
        if let Err(e) = result {
            self.inner
                .counters
                .persist_errors
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tern_relay_config_persist_errors_total").increment(1);
            tracing::warn!(app = %bundle.app_id, error = %e, "persisting a config bundle failed; serving it from memory");
        }
    }

    async fn fetch(&self, app: &AppId, etag: Option<&ETag>) -> Result<Refresh> {
        let c = &self.inner.config;
        let mut url = reqwest::Url::parse(&c.backend_url)
            .map_err(|_| ConfigCacheError::Url(c.backend_url.clone()))?;
        url.path_segments_mut()
            .map_err(|_| ConfigCacheError::Url(c.backend_url.clone()))?
            .pop_if_empty()
            .extend(["v1", "apps", app.as_str(), "config"]);
        let mut req = self
            .inner
            .client
            .get(url)
            .timeout(c.request_timeout)
            .header(reqwest::header::ACCEPT, "application/msgpack");
        if let Some(etag) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, format!("\"{etag}\""));
        }
        if let Some(t) = &c.backend_token {
            req = req.bearer_auth(t);
        }
        let transport = |e: reqwest::Error| ConfigCacheError::Transport {
            app: app.clone(),
            message: e.to_string(),
        };
        let resp = req.send().await.map_err(transport)?;
        match resp.status().as_u16() {
            304 => Ok(Refresh::NotModified),
            200 => {
                let body = resp.bytes().await.map_err(transport)?;
                let bundle: ConfigBundle =
                    tern_protocol::decode_payload(&body).map_err(|e| ConfigCacheError::Decode {
                        app: app.clone(),
                        message: e.to_string(),
                    })?;
                if &bundle.app_id != app {
                    return Err(ConfigCacheError::AppMismatch {
                        app: app.clone(),
                        got: bundle.app_id,
                    });
                }
                Ok(Refresh::Fetched(bundle))
            }
            404 => Err(ConfigCacheError::UnknownApp(app.clone())),
            status => Err(ConfigCacheError::Status {
                app: app.clone(),
                status,
            }),
        }
    }

    /// Refreshes `apps`, at most `max_concurrent_fetches` at a time; returns how many
    /// failed.
    pub async fn refresh_apps(&self, apps: Vec<AppId>) -> usize {
        let failed = AtomicU64::new(0);
        futures_util::stream::iter(apps)
            .for_each_concurrent(self.inner.config.max_concurrent_fetches.max(1), |app| {
                let failed = &failed;
                async move {
                    if let Err(e) = self.refresh_app(&app).await {
                        tracing::debug!(error = %e, "config refresh failed; keeping the cached copy");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .await;
        self.publish_gauges();
        failed.load(Ordering::Relaxed) as usize
    }

    fn publish_gauges(&self) {
        let now = now_ms();
        let entries = self.read();
        let cached = entries.values().filter(|e| e.bundle().is_some()).count();
        let stale = entries.values().filter(|e| e.is_stale()).count();
        let oldest = entries
            .values()
            .filter_map(|e| e.age_ms(now))
            .max()
            .unwrap_or(0);
        drop(entries);
        metrics::gauge!("tern_relay_config_apps_cached").set(cached as f64);
        metrics::gauge!("tern_relay_config_stale_apps").set(stale as f64);
        metrics::gauge!("tern_relay_config_staleness_seconds").set(oldest as f64 / 1000.0);
    }

    /// The refresher: every `refresh_interval`, refreshes every app of `registry`,
    /// until `stop` turns true. A slow round delays the next one (no overlap).
    pub async fn run(self, registry: AppRegistry, stop: tokio::sync::watch::Receiver<bool>) {
        let mut every = crate::periodic::Every::new(self.inner.config.refresh_interval, stop);
        let mut failing = false;
        while every.tick().await {
            if self.cache_only() {
                // Operator: config serving degraded to the cache.
                metrics::counter!("tern_relay_config_poll_rounds_total", "outcome" => "skipped")
                    .increment(1);
                continue;
            }
            metrics::counter!("tern_relay_config_poll_rounds_total", "outcome" => "polled")
                .increment(1);
            let apps = registry.app_ids();
            let n = apps.len();
            let failed = self.refresh_apps(apps).await;
            // Log transitions only: a backend outage would otherwise log twice a second.
            if failed > 0 && !failing {
                tracing::warn!(
                    failed,
                    apps = n,
                    "config refresh failing; serving cached copies (stale)"
                );
            } else if failed == 0 && failing {
                tracing::info!(apps = n, "config refresh recovered");
            }
            failing = failed > 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(app: &str, version: u64, etag: &str) -> ConfigBundle {
        ConfigBundle {
            app_id: AppId::new(app),
            version,
            etag: ETag(etag.into()),
            ..ConfigBundle::default()
        }
    }

    const R: Duration = Duration::from_secs(2);
    const P: Duration = Duration::from_millis(500);

    #[test]
    fn etag_decides_between_modified_and_not_modified() {
        let mut c = CachedConfig::default();
        assert_eq!(
            c.lookup(None, R, P).lookup,
            Lookup::Retry(P),
            "not fetched yet"
        );
        let new = c.handle_refresh(Refresh::Fetched(bundle("a", 1, "e1")), 10);
        assert_eq!(new.as_deref(), Some(&bundle("a", 1, "e1")));
        let e1 = ETag("e1".into());
        let other = ETag("zz".into());
        assert_eq!(c.lookup(Some(&e1), R, P).lookup, Lookup::NotModified);
        assert!(matches!(c.lookup(None, R, P).lookup, Lookup::Modified(b) if b.etag == e1));
        assert!(matches!(
            c.lookup(Some(&other), R, P).lookup,
            Lookup::Modified(_)
        ));
        assert_eq!(
            c.handle_refresh(Refresh::Fetched(bundle("a", 1, "e1")), 20),
            None,
            "the same bundle again is no change"
        );
        assert_eq!(c.handle_refresh(Refresh::NotModified, 30), None);
        let new = c.handle_refresh(Refresh::Fetched(bundle("a", 2, "e2")), 40);
        assert_eq!(new.map(|b| b.version), Some(2));
        assert!(matches!(c.lookup(Some(&e1), R, P).lookup, Lookup::Modified(b) if b.version == 2));
    }

    #[test]
    fn a_failed_refresh_makes_the_copy_stale_until_one_succeeds() {
        let mut c = CachedConfig::default();
        c.handle_refresh(Refresh::Failed, 0);
        let s = c.lookup(None, R, P);
        assert_eq!(
            (s.lookup, s.stale),
            (Lookup::Retry(R), false),
            "nothing to serve: retry, and nothing stale was served"
        );
        c.handle_refresh(Refresh::Fetched(bundle("a", 1, "e1")), 1_000);
        assert!(!c.is_stale());
        c.handle_refresh(Refresh::Failed, 2_000);
        assert!(c.is_stale());
        let e1 = ETag("e1".into());
        let s = c.lookup(Some(&e1), R, P);
        assert_eq!((s.lookup, s.stale), (Lookup::NotModified, true));
        assert_eq!(
            c.age_ms(5_000),
            Some(4_000),
            "age counts from the last confirmation"
        );
        c.handle_refresh(Refresh::NotModified, 6_000);
        assert!(!c.is_stale(), "a 304 confirms the copy");
        assert_eq!(c.age_ms(6_500), Some(500));
    }

    #[test]
    fn a_restored_copy_is_fresh_until_a_refresh_fails() {
        let mut c = CachedConfig::restored(bundle("a", 3, "e3"), 100);
        assert!(!c.is_stale());
        assert_eq!(c.age_ms(1_100), Some(1_000));
        c.handle_refresh(Refresh::Failed, 2_000);
        let s = c.lookup(None, R, P);
        assert!(s.stale);
        assert!(matches!(s.lookup, Lookup::Modified(b) if b.version == 3));
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        assert_eq!(file_name(&AppId::new("demo-app_1")), "demo-app_1.bundle");
        assert_eq!(file_name(&AppId::new("a/b c")), "a%2Fb%20c.bundle");
        assert_eq!(file_name(&AppId::new("..")), "%2E%2E.bundle");
        let long_a = AppId::new("x".repeat(250) + "a");
        let long_b = AppId::new("x".repeat(250) + "b");
        let (na, nb) = (file_name(&long_a), file_name(&long_b));
        assert!(na.len() < 200, "{na}");
        assert_ne!(na, nb);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_cache_directory_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("cache");
        std::fs::create_dir(&at).unwrap();
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = ConfigCacheConfig::new("http://127.0.0.1:9").with_dir(&at);
        ConfigCache::new(config, reqwest::Client::new())
            .persist(&bundle("a", 1, "ea"))
            .await;
        let mode = std::fs::metadata(&at).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[tokio::test]
    async fn persisted_bundles_round_trip_through_a_new_cache() {
        let dir = tempfile::tempdir().unwrap();
        let config = ConfigCacheConfig::new("http://127.0.0.1:9").with_dir(dir.path());
        let cache = ConfigCache::new(config.clone(), reqwest::Client::new());
        let mut a = bundle("a/1", 4, "ea");
        a.values
            .insert("greeting".into(), tern_protocol::Value::String("hi".into()));
        cache.persist(&a).await;
        cache.persist(&bundle("b", 1, "eb1")).await;
        cache.persist(&bundle("b", 2, "eb2")).await;
        // Garbage next to them is skipped, temp files are ignored.
        std::fs::write(dir.path().join("junk.bundle"), b"not msgpack").unwrap();
        std::fs::write(dir.path().join(".b.bundle.1.tmp"), b"partial").unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");

        let restarted = ConfigCache::new(config, reqwest::Client::new());
        assert_eq!(restarted.load_persisted().unwrap(), 2);
        assert_eq!(restarted.bundle(&AppId::new("a/1")).as_deref(), Some(&a));
        assert_eq!(
            restarted.etag(&AppId::new("b")),
            Some(ETag("eb2".into())),
            "the rename replaced the older file"
        );
        let served = restarted.lookup(&AppId::new("a/1"), None);
        assert!(!served.stale);
        assert!(matches!(served.lookup, Lookup::Modified(b) if *b == a));
        // The backend at port 9 is unreachable: the copy stays, now stale.
        assert!(restarted.refresh_app(&AppId::new("a/1")).await.is_err());
        let served = restarted.lookup(&AppId::new("a/1"), Some(&ETag("ea".into())));
        assert_eq!((served.lookup, served.stale), (Lookup::NotModified, true));
        assert!(restarted.is_stale(&AppId::new("a/1")));
    }

    #[test]
    fn a_missing_directory_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = ConfigCacheConfig::new("http://x").with_dir(dir.path().join("absent"));
        let cache = ConfigCache::new(config, reqwest::Client::new());
        assert_eq!(cache.load_persisted().unwrap(), 0);
    }
}
