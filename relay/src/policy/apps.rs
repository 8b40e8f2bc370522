//! The app registry: which apps exist and which keys are valid for each. Every device
//! request is checked against it before anything else happens.
//!
//! The registry comes from the backend (`GET /v1/apps`, refreshed every
//! `registry_refresh_s`), and a wrong answer from the backend must never lock devices
//! out. So a fetched list is not simply installed (protocol §10, `docs/operations.md`):
//!
//! * **Bounded fetch.** Each refresh has a deadline (connect timeout on the client, a
//!   timeout on the whole request, body read included) and a body size bound: a backend
//!   that never answers costs one failed refresh, never a frozen registry.
//! * **Additions at once.** A new app or a new key is valid as soon as a list names it.
//! * **Removals after a grace period.** A key that leaves the list stays valid for
//!   [`RegistryPolicy::key_grace`] (default 24 h): devices still shipping the old key
//!   keep delivering while apps update (key rotation with an overlap window). A key that
//!   comes back in time is simply listed again.
//! * **Suspicious lists are held.** A list that is empty, that removes more than
//!   [`RegistryPolicy::max_removed_share`] of the known apps, or that removes every key
//!   of an app still listed, is not believed: its additions are installed, its removals
//!   are *held* (the keys stay valid, no grace countdown) until an operator accepts the
//!   list ([`AppRegistry::accept_pending`], `POST /admin/v1/registry/accept`) or
//!   [`RegistryPolicy::accept_suspicious`] is set. It is counted, logged and shown in
//!   the admin status.
//! * **Not loaded yet** (no list installed since start, or only empty ones): devices
//!   get `Retry`, never `Rejected` (see `crate::ingest`).
//!
//! The rules are a plain state machine ([`AppRegistry::apply`] takes the list and
//! `now`); [`AppRegistry::refresh`] and [`AppRegistry::run`] are the I/O around it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tern_protocol::{AppId, Auth};

/// One app and its valid keys, as the backend's `GET /v1/apps` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AppEntry {
    /// The app.
    pub app_id: AppId,
    /// Its valid keys (several during a key rotation).
    pub keys: Vec<String>,
}

/// Why a registry could not be fetched or installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The request failed.
    #[error("fetching the app registry: {0}")]
    Fetch(String),
    /// The request did not finish within its deadline.
    #[error("fetching the app registry: no complete answer within {0:?}")]
    Timeout(Duration),
    /// The backend answered with an error status.
    #[error("the backend answered {0} for the app registry")]
    Status(u16),
    /// The body was not a registry.
    #[error("bad app registry: {0}")]
    Parse(String),
    /// The list parsed but breaks a rule (an empty app id or key, an app listed twice).
    #[error("invalid app registry: {0}")]
    Invalid(String),
    /// The list looks wrong; its removals are held until an operator accepts it.
    #[error("suspicious app registry not installed ({0}); accept it with POST /admin/v1/registry/accept")]
    Suspicious(String),
}

/// How fetched lists are installed.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RegistryPolicy {
    /// How long a key that left the list stays valid (default 24 h; 0: removed at once).
    pub key_grace: Duration,
    /// A list removing more than this share of the known apps is suspicious
    /// (default 0.5; an empty list always is).
    pub max_removed_share: f64,
    /// Install suspicious lists without waiting for an operator (default false).
    pub accept_suspicious: bool,
    /// Deadline of one whole refresh request, body included (default 10 s).
    pub timeout: Duration,
    /// Connect timeout of the refresh client (default 3 s).
    pub connect_timeout: Duration,
    /// Largest registry body read, bytes (default 64 MiB).
    pub max_body_bytes: usize,
}

impl Default for RegistryPolicy {
    fn default() -> Self {
        RegistryPolicy {
            key_grace: Duration::from_secs(24 * 3600),
            max_removed_share: 0.5,
            accept_suspicious: false,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_body_bytes: 64 << 20,
        }
    }
}

impl RegistryPolicy {
    /// Sets [`RegistryPolicy::key_grace`].
    pub fn with_key_grace(mut self, grace: Duration) -> Self {
        self.key_grace = grace;
        self
    }

    /// Sets [`RegistryPolicy::max_removed_share`].
    pub fn with_max_removed_share(mut self, share: f64) -> Self {
        self.max_removed_share = share;
        self
    }

    /// Sets [`RegistryPolicy::accept_suspicious`].
    pub fn with_accept_suspicious(mut self, accept: bool) -> Self {
        self.accept_suspicious = accept;
        self
    }

    /// Sets the refresh deadlines (whole request, connect).
    pub fn with_timeouts(mut self, timeout: Duration, connect_timeout: Duration) -> Self {
        self.timeout = timeout;
        self.connect_timeout = connect_timeout;
        self
    }
}

/// App id → valid keys: what request handlers read.
type Keys = Arc<HashMap<AppId, Vec<String>>>;

/// Where a known key stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyState {
    /// In the installed list.
    Listed,
    /// Left the list; valid until `until`.
    Retiring { until: Instant },
    /// Left the list in a suspicious list: valid, no countdown, until accepted.
    Held,
}

/// A list held back because it looked wrong.
#[derive(Clone, Debug)]
struct Pending {
    reason: String,
    since: Instant,
    since_ms: u64,
    entries: Vec<AppEntry>,
    apps_removed: Vec<AppId>,
    keys_removed: usize,
}

#[derive(Debug, Default)]
struct State {
    apps: BTreeMap<AppId, BTreeMap<String, KeyState>>,
    pending: Option<Pending>,
    last_ok_ms: Option<u64>,
    last_error: Option<String>,
    counts: RefreshCounts,
}

/// Refresh results since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RefreshCounts {
    /// Lists installed (changed or not).
    pub installed: u64,
    /// Lists held as suspicious.
    pub suspicious: u64,
    /// Refreshes that failed (transport, status, timeout, parse, invalid list).
    pub failed: u64,
    /// Of those, timeouts.
    pub timed_out: u64,
    /// Keys removed after their grace period.
    pub keys_expired: u64,
}

/// What applying one list did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Applied {
    /// Apps in the list.
    pub apps: usize,
    /// Keys (of new or known apps) valid since this list.
    pub keys_added: usize,
    /// Keys that left the list and entered the grace period (or were removed at once
    /// when the grace is 0).
    pub keys_retiring: usize,
    /// Set when the list was held: why it looked wrong.
    pub held: Option<String>,
}

/// The registry, shared by every request handler. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct AppRegistry {
    apps: Arc<RwLock<Keys>>,
    loaded: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    policy: Arc<RwLock<RegistryPolicy>>,
}

/// The result of checking credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthCheck {
    /// Known app, valid key.
    Ok,
    /// Unknown app or wrong key (not told apart, so keys cannot be probed per app).
    Denied,
}

/// `GET /admin/v1/registry` and the `registry` part of the admin status. Key values are
/// never shown.
#[derive(Clone, Debug, Serialize)]
pub struct RegistryStatus {
    /// A list has been installed since start (before that devices get `Retry`).
    pub loaded: bool,
    /// Apps with at least one valid key.
    pub apps: usize,
    /// Keys in the installed list.
    pub keys_listed: usize,
    /// Keys that left the list and are valid until their grace period ends.
    pub keys_retiring: usize,
    /// Keys kept valid because the list removing them is held.
    pub keys_held: usize,
    /// Retiring keys by app: when the last one expires (Unix ms).
    pub retiring: BTreeMap<String, u64>,
    /// When a list was last fetched and installed or held (Unix ms).
    pub last_refresh_ok_ms: Option<u64>,
    /// The last refresh error, cleared by the next success.
    pub last_error: Option<String>,
    /// Refresh results since start.
    pub counts: RefreshCounts,
    /// The held list, if any.
    pub pending: Option<PendingStatus>,
    /// The grace period of removed keys, seconds.
    pub key_grace_s: u64,
    /// The share of known apps a list may remove without being held.
    pub max_removed_share: f64,
}

/// A held (suspicious) list, as the operator sees it.
#[derive(Clone, Debug, Serialize)]
pub struct PendingStatus {
    /// Why it looks wrong.
    pub reason: String,
    /// Since when it is held (Unix ms; the first list of the streak).
    pub since_ms: u64,
    /// Apps the list would remove (at most 100 named).
    pub apps_removed: Vec<String>,
    /// Number of apps it would remove.
    pub apps_removed_count: usize,
    /// Keys it would remove (they enter the grace period once accepted).
    pub keys_removed: usize,
    /// Apps the list names.
    pub apps_in_list: usize,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ms_at(now: Instant, now_ms: u64, at: Instant) -> u64 {
    let ahead = at.saturating_duration_since(now).as_millis();
    now_ms.saturating_add(u64::try_from(ahead).unwrap_or(u64::MAX))
}

impl AppRegistry {
    /// A registry holding `entries`, installed as given (tests and in-process stacks).
    pub fn new(entries: Vec<AppEntry>) -> Self {
        let r = AppRegistry::default();
        r.replace(entries);
        r
    }

    /// An empty registry (not loaded) installing lists under `policy`.
    pub fn with_policy(policy: RegistryPolicy) -> Self {
        let r = AppRegistry::default();
        *r.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
        r
    }

    /// The policy in force.
    pub fn policy(&self) -> RegistryPolicy {
        *self.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the whole registry at once: no grace, nothing held (for tests and
    /// in-process stacks; fetched lists go through [`AppRegistry::apply`]).
    pub fn replace(&self, entries: Vec<AppEntry>) {
        let mut st = self.state();
        st.apps = entries
            .into_iter()
            .map(|e| {
                let keys = e.keys.into_iter().map(|k| (k, KeyState::Listed)).collect();
                (e.app_id, keys)
            })
            .collect();
        st.pending = None;
        self.publish(&st);
        self.loaded.store(true, Ordering::Release);
    }

    /// Applies one fetched list at `now` under the policy (see the module docs):
    /// additions at once, removals into the grace period — or held when the list looks
    /// wrong, unless `accepted` (an operator accepted it) or the policy accepts
    /// suspicious lists. An invalid list changes nothing.
    pub fn apply(
        &self,
        entries: Vec<AppEntry>,
        now: Instant,
        accepted: bool,
    ) -> Result<Applied, RegistryError> {
        let policy = self.policy();
        let mut wanted: BTreeMap<AppId, BTreeSet<String>> = BTreeMap::new();
        for e in &entries {
            if e.app_id.as_str().is_empty() {
                return Err(RegistryError::Invalid("an app with an empty app_id".into()));
            }
            if e.keys.iter().any(String::is_empty) {
                return Err(RegistryError::Invalid(format!(
                    "app {} has an empty key",
                    e.app_id
                )));
            }
            if wanted
                .insert(e.app_id.clone(), e.keys.iter().cloned().collect())
                .is_some()
            {
                return Err(RegistryError::Invalid(format!(
                    "app {} is listed twice",
                    e.app_id
                )));
            }
        }
        let mut st = self.state();
        // What the list would remove: keys valid without a deadline (listed or held).
        let mut known_apps = 0usize;
        let mut apps_removed = Vec::new();
        let mut apps_emptied = Vec::new();
        let mut keys_removed = 0usize;
        for (app, keys) in &st.apps {
            let firm: Vec<&String> = keys
                .iter()
                .filter(|(_, s)| !matches!(s, KeyState::Retiring { .. }))
                .map(|(k, _)| k)
                .collect();
            if firm.is_empty() {
                continue;
            }
            known_apps += 1;
            match wanted.get(app) {
                None => {
                    apps_removed.push(app.clone());
                    keys_removed += firm.len();
                }
                Some(new) => {
                    let gone = firm.iter().filter(|k| !new.contains(**k)).count();
                    keys_removed += gone;
                    if gone == firm.len() {
                        apps_emptied.push(app.clone());
                    }
                }
            }
        }
        let never_loaded = !self.loaded.load(Ordering::Acquire);
        let suspicion = if wanted.is_empty() && (known_apps > 0 || never_loaded) {
            Some("the list is empty".to_owned())
        } else if known_apps > 0
            && apps_removed.len() as f64 > policy.max_removed_share * known_apps as f64
        {
            Some(format!(
                "it removes {} of {} known apps (more than the share {})",
                apps_removed.len(),
                known_apps,
                policy.max_removed_share
            ))
        } else {
            apps_emptied.first().map(|app| {
                format!(
                    "it removes every key of app {app} ({} app(s) lose all their keys)",
                    apps_emptied.len()
                )
            })
        };
        let hold = suspicion.is_some() && !accepted && !policy.accept_suspicious;
        let mut applied = Applied {
            apps: wanted.len(),
            ..Applied::default()
        };
        // Additions (and keys listed again) are valid at once, held list or not.
        for (app, keys) in &wanted {
            let have = st.apps.entry(app.clone()).or_default();
            for k in keys {
                match have.insert(k.clone(), KeyState::Listed) {
                    None => applied.keys_added += 1,
                    Some(KeyState::Retiring { .. }) => {
                        tracing::info!(app = %app, "a retiring key is listed again");
                    }
                    Some(_) => {}
                }
            }
        }
        // Removals.
        let grace = policy.key_grace;
        for (app, keys) in st.apps.iter_mut() {
            let listed = wanted.get(app);
            for (_, s) in keys
                .iter_mut()
                .filter(|(k, _)| listed.is_none_or(|l| !l.contains(*k)))
            {
                match (*s, hold) {
                    (KeyState::Listed, true) => *s = KeyState::Held,
                    (KeyState::Listed | KeyState::Held, false) => {
                        applied.keys_retiring += 1;
                        *s = KeyState::Retiring { until: now + grace };
                    }
                    _ => {}
                }
            }
        }
        if !hold && grace.is_zero() {
            Self::drop_expired(&mut st, now);
        }
        if hold {
            let reason = suspicion.unwrap_or_default();
            let (since, since_ms) = match &st.pending {
                Some(p) => (p.since, p.since_ms),
                None => (now, unix_ms()),
            };
            st.pending = Some(Pending {
                reason: reason.clone(),
                since,
                since_ms,
                entries,
                apps_removed,
                keys_removed,
            });
            st.counts.suspicious += 1;
            metrics::counter!("tern_relay_registry_refresh_total", "result" => "suspicious")
                .increment(1);
            applied.held = Some(reason);
        } else {
            if let Some(p) = st.pending.take() {
                tracing::info!(reason = %p.reason, held_for_s = now.saturating_duration_since(p.since).as_secs(), "the held app registry is resolved");
            }
            st.counts.installed += 1;
            metrics::counter!("tern_relay_registry_refresh_total", "result" => "installed")
                .increment(1);
            // An empty list installs only when an operator accepted it.
            self.loaded.store(true, Ordering::Release);
        }
        st.last_ok_ms = Some(unix_ms());
        st.last_error = None;
        self.publish(&st);
        if applied.keys_added > 0 || applied.keys_retiring > 0 {
            tracing::info!(
                apps = applied.apps,
                keys_added = applied.keys_added,
                keys_retiring = applied.keys_retiring,
                grace_s = grace.as_secs(),
                "app registry changed; removed keys stay valid for the grace period"
            );
        }
        Ok(applied)
    }

    /// An operator accepts the held list: it is applied as if it had looked right
    /// (its removals enter the grace period). `None` when nothing is held.
    pub fn accept_pending(&self, now: Instant) -> Option<Result<Applied, RegistryError>> {
        let entries = self.state().pending.as_ref()?.entries.clone();
        Some(self.apply(entries, now, true))
    }

    /// Removes keys whose grace period has ended (and apps left without keys).
    /// Returns how many keys were removed.
    pub fn expire(&self, now: Instant) -> usize {
        let mut st = self.state();
        let n = Self::drop_expired(&mut st, now);
        if n > 0 {
            self.publish(&st);
        }
        n
    }

    fn drop_expired(st: &mut State, now: Instant) -> usize {
        let mut n = 0;
        for (app, keys) in st.apps.iter_mut() {
            let before = keys.len();
            keys.retain(|_, s| !matches!(s, KeyState::Retiring { until } if *until <= now));
            let gone = before - keys.len();
            if gone > 0 {
                tracing::info!(app = %app, keys = gone, "grace period over: keys removed from the registry");
            }
            n += gone;
        }
        st.apps.retain(|_, keys| !keys.is_empty());
        st.counts.keys_expired += n as u64;
        metrics::counter!("tern_relay_registry_keys_expired_total").increment(n as u64);
        n
    }

    /// Rebuilds what request handlers read, and the gauges.
    fn publish(&self, st: &State) {
        let map: HashMap<AppId, Vec<String>> = st
            .apps
            .iter()
            .map(|(a, keys)| (a.clone(), keys.keys().cloned().collect()))
            .collect();
        let count = |f: fn(&KeyState) -> bool| {
            st.apps
                .values()
                .flat_map(|k| k.values())
                .filter(|s| f(s))
                .count() as f64
        };
        metrics::gauge!("tern_relay_registry_apps").set(map.len() as f64);
        metrics::gauge!("tern_relay_registry_retiring_keys")
            .set(count(|s| matches!(s, KeyState::Retiring { .. })));
        metrics::gauge!("tern_relay_registry_held_keys")
            .set(count(|s| matches!(s, KeyState::Held)));
        metrics::gauge!("tern_relay_registry_suspicious").set(if st.pending.is_some() {
            1.0
        } else {
            0.0
        });
        *self.apps.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
    }

    /// Records a failed refresh (kept for the status; the installed list stays).
    pub fn note_failure(&self, e: &RegistryError) {
        let mut st = self.state();
        st.counts.failed += 1;
        if matches!(e, RegistryError::Timeout(_)) {
            st.counts.timed_out += 1;
        }
        st.last_error = Some(e.to_string());
        let result = match e {
            RegistryError::Timeout(_) => "timeout",
            RegistryError::Invalid(_) | RegistryError::Parse(_) => "invalid",
            _ => "failed",
        };
        metrics::counter!("tern_relay_registry_refresh_total", "result" => result).increment(1);
    }

    /// True once a registry was installed (fetched or given). Before that, an unknown
    /// app may simply not be known *yet*: callers must not reject devices for it.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Keys {
        self.apps.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Number of apps.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// The registered apps.
    pub fn app_ids(&self) -> Vec<AppId> {
        self.snapshot().keys().cloned().collect()
    }

    /// True when no app is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a list is held as suspicious.
    pub fn has_pending(&self) -> bool {
        self.state().pending.is_some()
    }

    /// What an operator sees (no key values).
    pub fn status(&self) -> RegistryStatus {
        let st = self.state();
        let policy = self.policy();
        let (now, now_ms) = (tokio::time::Instant::now().into_std(), unix_ms());
        let mut s = RegistryStatus {
            loaded: self.is_loaded(),
            apps: st.apps.len(),
            keys_listed: 0,
            keys_retiring: 0,
            keys_held: 0,
            retiring: BTreeMap::new(),
            last_refresh_ok_ms: st.last_ok_ms,
            last_error: st.last_error.clone(),
            counts: st.counts,
            pending: st.pending.as_ref().map(|p| PendingStatus {
                reason: p.reason.clone(),
                since_ms: p.since_ms,
                apps_removed: p
                    .apps_removed
                    .iter()
                    .take(100)
                    .map(|a| a.as_str().to_owned())
                    .collect(),
                apps_removed_count: p.apps_removed.len(),
                keys_removed: p.keys_removed,
                apps_in_list: p.entries.len(),
            }),
            key_grace_s: policy.key_grace.as_secs(),
            max_removed_share: policy.max_removed_share,
        };
        for (app, keys) in &st.apps {
            for state in keys.values() {
                match state {
                    KeyState::Listed => s.keys_listed += 1,
                    KeyState::Held => s.keys_held += 1,
                    KeyState::Retiring { until } => {
                        s.keys_retiring += 1;
                        let at = ms_at(now, now_ms, *until);
                        let e = s.retiring.entry(app.as_str().to_owned()).or_insert(at);
                        *e = (*e).max(at);
                    }
                }
            }
        }
        s
    }

    /// Checks a request's credentials. Key comparison takes the same time whatever
    /// the key's content.
    pub fn check(&self, auth: &Auth) -> AuthCheck {
        self.check_key(auth.app_id.as_str(), &auth.key)
    }

    /// [`AppRegistry::check`] on borrowed credentials (read in place from a request).
    pub fn check_key(&self, app_id: &str, key: &str) -> AuthCheck {
        let apps = self.snapshot();
        let Some(keys) = apps.get(app_id) else {
            return AuthCheck::Denied;
        };
        let mut ok = false;
        for k in keys {
            ok |= constant_time_eq::constant_time_eq(k.as_bytes(), key.as_bytes());
        }
        if ok {
            AuthCheck::Ok
        } else {
            AuthCheck::Denied
        }
    }

    /// The HTTP client for refreshes: the policy's connect timeout.
    pub fn http_client(&self) -> Result<reqwest::Client, RegistryError> {
        reqwest::Client::builder()
            .connect_timeout(self.policy().connect_timeout)
            .build()
            .map_err(|e| RegistryError::Fetch(e.to_string()))
    }

    /// Fetches the registry from the backend (`GET {base}/v1/apps`) within the policy's
    /// deadline and applies it ([`AppRegistry::apply`]). Returns the number of apps in
    /// the list; a held list is [`RegistryError::Suspicious`] (its additions were
    /// installed). Failures are recorded for the status.
    pub async fn refresh(
        &self,
        client: &reqwest::Client,
        base_url: &str,
        token: Option<&str>,
    ) -> Result<usize, RegistryError> {
        let policy = self.policy();
        let fetched = tokio::time::timeout(
            policy.timeout,
            fetch(client, base_url, token, policy.max_body_bytes),
        )
        .await
        .unwrap_or(Err(RegistryError::Timeout(policy.timeout)));
        let result = fetched
            .and_then(|entries| self.apply(entries, tokio::time::Instant::now().into_std(), false));
        match result {
            Ok(a) => match a.held {
                Some(reason) => Err(RegistryError::Suspicious(reason)),
                None => Ok(a.apps),
            },
            Err(e) => {
                self.note_failure(&e);
                Err(e)
            }
        }
    }

    /// Refreshes every `every` (every 500 ms until a list is installed) and expires
    /// keys past their grace period, forever. Failures keep the installed list.
    pub async fn run(
        self,
        client: reqwest::Client,
        base_url: String,
        token: Option<String>,
        every: Duration,
    ) {
        loop {
            match self.refresh(&client, &base_url, token.as_deref()).await {
                Ok(n) => tracing::debug!(apps = n, "app registry refreshed"),
                Err(e @ RegistryError::Suspicious(_)) => {
                    tracing::warn!(error = %e, "app registry held; the known keys stay valid")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "app registry refresh failed; keeping the last one")
                }
            }
            self.expire(tokio::time::Instant::now().into_std());
            let wait = if self.is_loaded() {
                every
            } else {
                Duration::from_millis(500)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One `GET /v1/apps`, body bounded.
async fn fetch(
    client: &reqwest::Client,
    base_url: &str,
    token: Option<&str>,
    max_body: usize,
) -> Result<Vec<AppEntry>, RegistryError> {
    let mut req = client.get(format!("{}/v1/apps", base_url.trim_end_matches('/')));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| RegistryError::Fetch(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(RegistryError::Status(resp.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| RegistryError::Fetch(e.to_string()))?
    {
        if body.len() + chunk.len() > max_body {
            return Err(RegistryError::Invalid(format!(
                "the body is larger than {max_body} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| RegistryError::Parse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(app: &str, keys: &[&str]) -> AppEntry {
        AppEntry {
            app_id: AppId::new(app),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn ok(r: &AppRegistry, app: &str, key: &str) -> bool {
        r.check_key(app, key) == AuthCheck::Ok
    }

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn checks_keys_per_app() {
        let r = AppRegistry::new(vec![entry("a", &["old", "new"]), entry("b", &["b-key"])]);
        let auth = |app: &str, key: &str| Auth {
            app_id: AppId::new(app),
            key: key.into(),
        };
        assert_eq!(r.check(&auth("a", "old")), AuthCheck::Ok);
        assert_eq!(r.check(&auth("a", "new")), AuthCheck::Ok);
        assert_eq!(
            r.check(&auth("a", "b-key")),
            AuthCheck::Denied,
            "keys are per app"
        );
        assert_eq!(r.check(&auth("a", "")), AuthCheck::Denied);
        assert_eq!(r.check(&auth("zzz", "old")), AuthCheck::Denied);
        r.replace(vec![]);
        assert_eq!(r.check(&auth("a", "old")), AuthCheck::Denied);
    }

    #[test]
    fn a_rotated_key_stays_valid_for_the_grace_period_then_goes() {
        let r = AppRegistry::with_policy(RegistryPolicy::default().with_key_grace(24 * H));
        let t0 = Instant::now();
        r.apply(vec![entry("a", &["k1"])], t0, false).unwrap();
        // Rotation without the overlap list (this relay missed it): the new key works
        // at once, the old one for the grace period.
        let a = r.apply(vec![entry("a", &["k2"])], t0 + H, false);
        // Every key of `a` replaced: held, both valid, no countdown.
        assert!(a.unwrap().held.unwrap().contains("every key of app a"));
        assert!(ok(&r, "a", "k1") && ok(&r, "a", "k2"));
        assert_eq!(r.expire(t0 + 100 * H), 0, "held keys do not expire");
        // The usual rotation: overlap list, then the new key alone.
        let r = AppRegistry::with_policy(RegistryPolicy::default().with_key_grace(24 * H));
        r.apply(vec![entry("a", &["k1"])], t0, false).unwrap();
        r.apply(vec![entry("a", &["k1", "k2"])], t0, false).unwrap();
        let a = r.apply(vec![entry("a", &["k2"])], t0 + H, false).unwrap();
        assert_eq!((a.keys_retiring, a.held), (1, None));
        assert!(ok(&r, "a", "k1") && ok(&r, "a", "k2"));
        assert_eq!(r.status().keys_retiring, 1);
        assert_eq!(r.expire(t0 + 24 * H), 0, "one hour of grace left");
        assert!(ok(&r, "a", "k1"));
        assert_eq!(r.expire(t0 + 25 * H), 1);
        assert!(!ok(&r, "a", "k1") && ok(&r, "a", "k2"));
        // A key listed again before it expires is simply valid again.
        r.apply(vec![entry("a", &["k2", "k3"])], t0, false).unwrap();
        r.apply(vec![entry("a", &["k3"])], t0, false).unwrap();
        r.apply(vec![entry("a", &["k2", "k3"])], t0 + H, false)
            .unwrap();
        assert_eq!(r.expire(t0 + 1000 * H), 0);
        assert!(ok(&r, "a", "k2"));
    }

    #[test]
    fn an_empty_or_shrunken_list_is_held_until_accepted() {
        let r = AppRegistry::with_policy(RegistryPolicy::default().with_key_grace(H));
        let t0 = Instant::now();
        let four = vec![
            entry("a", &["ka"]),
            entry("b", &["kb"]),
            entry("c", &["kc"]),
            entry("d", &["kd"]),
        ];
        r.apply(four.clone(), t0, false).unwrap();
        let a = r.apply(vec![], t0, false).unwrap();
        assert_eq!(a.held.as_deref(), Some("the list is empty"));
        assert!(["a", "b", "c", "d"]
            .iter()
            .all(|app| ok(&r, app, &format!("k{app}"))));
        assert_eq!(r.expire(t0 + 1000 * H), 0);
        // Three of four apps gone: more than half.
        let a = r
            .apply(vec![entry("a", &["ka"]), entry("e", &["ke"])], t0, false)
            .unwrap();
        assert!(a.held.unwrap().contains("removes 3 of 4 known apps"));
        assert!(
            ok(&r, "e", "ke"),
            "additions are installed even from a held list"
        );
        assert!(ok(&r, "b", "kb"));
        let st = r.status();
        let p = st.pending.unwrap();
        assert_eq!(
            (p.apps_removed_count, p.keys_removed, st.keys_held),
            (3, 3, 3)
        );
        assert_eq!(st.counts.suspicious, 2);
        // The operator accepts: removals enter the grace period.
        let a = r.accept_pending(t0).unwrap().unwrap();
        assert_eq!((a.held, a.keys_retiring), (None, 3));
        assert!(!r.has_pending());
        assert!(ok(&r, "b", "kb"), "still in its grace period");
        assert_eq!(r.expire(t0 + H), 3);
        assert!(!ok(&r, "b", "kb") && ok(&r, "a", "ka") && ok(&r, "e", "ke"));
        assert!(r.accept_pending(t0).is_none(), "nothing held any more");
        // One of four apps removed: not suspicious.
        let r = AppRegistry::with_policy(RegistryPolicy::default().with_key_grace(Duration::ZERO));
        r.apply(four.clone(), t0, false).unwrap();
        let a = r.apply(four[..3].to_vec(), t0, false).unwrap();
        assert_eq!((a.held, a.keys_retiring), (None, 1));
        assert!(!ok(&r, "d", "kd"), "no grace: removed at once");
    }

    #[test]
    fn the_policy_may_accept_suspicious_lists_and_empty_first_lists_do_not_load() {
        let r = AppRegistry::with_policy(RegistryPolicy::default());
        let t0 = Instant::now();
        let a = r.apply(vec![], t0, false).unwrap();
        assert!(a.held.is_some());
        assert!(!r.is_loaded(), "an empty first list is not a registry");
        r.apply(vec![entry("a", &["k"])], t0, false).unwrap();
        assert!(r.is_loaded() && !r.has_pending());
        let r = AppRegistry::with_policy(
            RegistryPolicy::default()
                .with_accept_suspicious(true)
                .with_key_grace(Duration::ZERO),
        );
        r.apply(vec![entry("a", &["k"])], t0, false).unwrap();
        let a = r.apply(vec![], t0, false).unwrap();
        assert_eq!(a.held, None);
        assert!(!ok(&r, "a", "k"));
    }

    #[test]
    fn invalid_lists_change_nothing() {
        let r = AppRegistry::with_policy(RegistryPolicy::default());
        let t0 = Instant::now();
        r.apply(vec![entry("a", &["k"])], t0, false).unwrap();
        for bad in [
            vec![entry("", &["k"])],
            vec![entry("a", &[""])],
            vec![entry("a", &["k"]), entry("a", &["k2"])],
        ] {
            assert!(matches!(
                r.apply(bad, t0, false),
                Err(RegistryError::Invalid(_))
            ));
        }
        assert!(ok(&r, "a", "k"));
        assert_eq!(r.status().keys_listed, 1);
    }

    #[tokio::test]
    async fn a_refresh_that_never_answers_times_out() {
        // A server that accepts and then says nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                held.push(s);
            }
        });
        let r = AppRegistry::with_policy(
            RegistryPolicy::default()
                .with_timeouts(Duration::from_millis(200), Duration::from_millis(200)),
        );
        let client = r.http_client().unwrap();
        let e = r.refresh(&client, &url, None).await.unwrap_err();
        assert!(matches!(e, RegistryError::Timeout(_)), "{e}");
        assert_eq!(r.status().counts.timed_out, 1);
        hold.abort();
    }
}
