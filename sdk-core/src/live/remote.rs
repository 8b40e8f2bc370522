//! Live config, flags and in-app messages on the device: the state the public API
//! reads, the listener registry, and the `tern-live` dispatcher thread that computes
//! changes, picks messages and calls listeners.
//!
//! * **Reads** (`Tern::config_value`, `Tern::flag`, ...) take a short mutex to clone an
//!   `Arc` of the current bundle and evaluate on the caller's thread; no I/O.
//! * **Writes** come from the uploader thread (a fetched bundle, see `crate::upload`) and
//!   from the store thread (the cached bundle, loaded from SQLite when the store opens,
//!   before any network).
//! * **Listeners** are called on the `tern-live` thread, one call at a time, never
//!   while an SDK lock is held, so a listener may call back into the SDK. A listener
//!   that panics is caught (`catch_unwind`) and counted in
//!   [`LiveStats::listener_panics`]; the SDK carries on. (Builds with
//!   `panic = "abort"`, like the `mobile` profile, cannot catch: there a panicking
//!   listener aborts the app like any other panic of the app's code.)
//! * Work for the dispatcher goes through a bounded queue; when it is full (a listener
//!   blocking for a long time) new work is dropped and counted
//!   ([`LiveStats::dispatch_dropped`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tern_protocol::config::{ConfigBundle, ETag, InAppMessage};
use tern_protocol::rollout::{evaluate_flag, FlagDecision};
use tern_protocol::{AppId, Properties, UserId, Value};

use crate::live::messages::{pick, Audience, Fired, PacingState};

/// Bound of the dispatcher's queue.
const QUEUE: usize = 256;
/// Triggers kept while the store is still opening.
const PENDING_TRIGGERS: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What changed in a new config bundle, or in the flag decisions after `identify`.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ConfigChange {
    /// Version of the bundle now in use.
    pub version: u64,
    /// Its ETag.
    pub etag: ETag,
    /// Keys of config values added, changed or removed (sorted).
    pub changed_values: Vec<String>,
    /// Keys of flags whose decision for this device changed, or whose definition was
    /// added, changed or removed (sorted).
    pub changed_flags: Vec<String>,
    /// The bundle came from the device's cache (a start before any fetch).
    pub from_cache: bool,
}

/// Receives config changes. Called on the SDK's `tern-live` thread.
pub trait ConfigListener: Send + Sync {
    /// The config bundle or the flag decisions changed.
    fn on_config_changed(&self, change: &ConfigChange);
}

impl<F: Fn(&ConfigChange) + Send + Sync> ConfigListener for F {
    fn on_config_changed(&self, change: &ConfigChange) {
        self(change)
    }
}

/// Receives in-app messages to show. Called on the SDK's `tern-live` thread. The
/// impression (`action = "shown"`) is already recorded when this is called; record
/// button taps with `Tern::message_impression(id, action_id)`.
pub trait MessageListener: Send + Sync {
    /// Show `message` now.
    fn on_message(&self, message: &InAppMessage);
}

impl<F: Fn(&InAppMessage) + Send + Sync> MessageListener for F {
    fn on_message(&self, message: &InAppMessage) {
        self(message)
    }
}

/// What the device knows about its config bundle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigInfo {
    /// Bundle version (0 when there is none yet).
    pub version: u64,
    /// Bundle ETag, if there is a bundle.
    pub etag: Option<ETag>,
    /// When the bundle was last fetched or confirmed current (Unix ms).
    pub fetched_at_ms: Option<i64>,
    /// The bundle was loaded from the device's cache and no fetch has confirmed it yet
    /// in this run.
    pub from_cache: bool,
    /// The relay served its cached copy because the backend was unreachable.
    pub stale: bool,
}

/// Counters of live config ([`crate::Stats::live`]; the fetch and push counters are in [`crate::upload::UploadStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LiveStats {
    /// Config changes delivered to listeners (one per change, not per listener).
    pub changes_notified: u64,
    /// In-app messages delivered (impressions recorded).
    pub messages_shown: u64,
    /// Listener calls that panicked (caught).
    pub listener_panics: u64,
    /// Dispatcher work dropped because its queue was full.
    pub dispatch_dropped: u64,
}

#[derive(Default)]
struct Counters {
    changes_notified: AtomicU64,
    messages_shown: AtomicU64,
    listener_panics: AtomicU64,
    dispatch_dropped: AtomicU64,
}

/// A registered listener. Cancelled on [`ListenerHandle::cancel`] or when the handle is
/// dropped; after `cancel` returns, no new call to the listener starts.
#[must_use = "dropping the handle removes the listener"]
pub struct ListenerHandle {
    registry: Weak<Registry>,
    id: u64,
    cancelled: Arc<AtomicBool>,
}

impl std::fmt::Debug for ListenerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerHandle")
            .field("id", &self.id)
            .field("cancelled", &self.cancelled.load(Ordering::Acquire))
            .finish()
    }
}

impl ListenerHandle {
    /// Removes the listener. Idempotent.
    pub fn cancel(&self) {
        if self.cancelled.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(r) = self.registry.upgrade() {
            lock(&r.config).retain(|s| s.id != self.id);
            lock(&r.messages).retain(|s| s.id != self.id);
        }
    }

    /// Whether the listener was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

struct Slot<T> {
    id: u64,
    cancelled: Arc<AtomicBool>,
    listener: T,
}

type Slots<L> = Mutex<Vec<Arc<Slot<Arc<L>>>>>;

#[derive(Default)]
struct Registry {
    next: AtomicU64,
    config: Slots<dyn ConfigListener>,
    messages: Slots<dyn MessageListener>,
}

/// Work for the dispatcher.
pub(crate) enum Job {
    /// The store opened: the cached bundle (if any), pacing and user properties.
    Loaded {
        bundle: Option<Arc<ConfigBundle>>,
        pacing: HashMap<String, PacingState>,
        props: Properties,
    },
    /// A new bundle is in use.
    Bundle(Arc<ConfigBundle>),
    /// A message trigger fired.
    Fired(Fired),
    /// The user changed: flag decisions are re-evaluated.
    UserChanged,
    /// User properties were set or removed.
    UserProps { set: Properties, unset: Vec<String> },
    /// Stop the thread.
    Stop,
}

/// What the dispatcher needs from the SDK.
pub(crate) trait Host: Send + Sync + 'static {
    /// Persists one impression; `None` when the store is not open.
    fn persist_impression(&self, message_id: &str, now_ms: i64) -> Option<PacingState>;
    /// Records the impression event (`message_impression(id, "shown")`).
    fn record_shown(&self, message_id: &str);
    /// Persists the user properties.
    fn persist_user_properties(&self, props: &Properties);
    /// The bucketing unit: user id if identified, else device id.
    fn unit(&self) -> Option<String>;
}

#[derive(Default)]
struct View {
    bundle: Option<Arc<ConfigBundle>>,
    fetched_ms: Option<i64>,
    from_cache: bool,
    stale: bool,
    user: Option<UserId>,
    /// `identify` was called in this process: its user wins over the stored one.
    user_set: bool,
    event_triggers: Arc<HashSet<String>>,
}

/// The receiving end of the dispatcher's queue (see [`Live::new`]).
pub(crate) struct Jobs {
    rx: Receiver<Job>,
    queued: Arc<AtomicUsize>,
}

impl Jobs {
    fn recv(&self) -> Option<Job> {
        let job = self.rx.recv().ok()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(job)
    }
}

/// The live-config state of one `Tern`.
pub(crate) struct Live {
    app_id: AppId,
    platform: String,
    view: Mutex<View>,
    has_event_triggers: AtomicBool,
    registry: Arc<Registry>,
    counters: Counters,
    jobs: Sender<Job>,
    /// Jobs sent and not yet received: at most [`QUEUE`].
    queued: Arc<AtomicUsize>,
    /// The store opened (or failed to): live config may start fetching.
    ready: AtomicBool,
    stopped: AtomicBool,
}

impl Live {
    /// A live state and the receiving end of its dispatcher queue. The queue holds
    /// at most [`QUEUE`] jobs, counted here; its memory grows with the jobs queued
    /// (std's unbounded channel, in blocks of 31) instead of all of it up front, as a
    /// bounded std channel does (24 KiB per instance, almost never used).
    pub(crate) fn new(app_id: AppId, platform: String) -> (Live, Jobs) {
        let (jobs, rx) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Live {
                app_id,
                platform,
                view: Mutex::new(View::default()),
                has_event_triggers: AtomicBool::new(false),
                registry: Arc::new(Registry::default()),
                counters: Counters::default(),
                jobs,
                queued: queued.clone(),
                ready: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
            },
            Jobs { rx, queued },
        )
    }

    /// Queues `job`; a full queue drops it (counted in `dispatch_dropped`).
    pub(crate) fn send(&self, job: Job) {
        if !self.try_send(job) {
            self.counters
                .dispatch_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues `job` unless [`QUEUE`] jobs wait. A dispatcher that is gone takes it
    /// (nothing is counted).
    fn try_send(&self, job: Job) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        true
    }

    /// Stops the dispatcher (after the job it is running, if any; with a full queue,
    /// after the next one, which sees `stopped`).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let _ = self.try_send(Job::Stop);
    }

    /// Whether the cached bundle was loaded (or the store failed to open).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The store could not be opened: live config starts without a cache.
    pub(crate) fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub(crate) fn stats(&self) -> LiveStats {
        let c = &self.counters;
        LiveStats {
            changes_notified: c.changes_notified.load(Ordering::Relaxed),
            messages_shown: c.messages_shown.load(Ordering::Relaxed),
            listener_panics: c.listener_panics.load(Ordering::Relaxed),
            dispatch_dropped: c.dispatch_dropped.load(Ordering::Relaxed),
        }
    }

    /// The bundle in use.
    pub(crate) fn bundle(&self) -> Option<Arc<ConfigBundle>> {
        lock(&self.view).bundle.clone()
    }

    pub(crate) fn info(&self) -> ConfigInfo {
        let v = lock(&self.view);
        ConfigInfo {
            version: v.bundle.as_ref().map_or(0, |b| b.version),
            etag: v.bundle.as_ref().map(|b| b.etag.clone()),
            fetched_at_ms: v.fetched_ms,
            from_cache: v.from_cache,
            stale: v.stale,
        }
    }

    pub(crate) fn user(&self) -> Option<UserId> {
        lock(&self.view).user.clone()
    }

    /// The store opened with `user` applied; kept unless `identify` ran already.
    pub(crate) fn set_stored_user(&self, user: Option<UserId>) {
        let mut v = lock(&self.view);
        if !v.user_set {
            v.user = user;
        }
    }

    /// `identify` (or `delete_local_data`, with `None`). Returns whether it changed.
    pub(crate) fn set_user(&self, user: Option<UserId>) -> bool {
        let mut v = lock(&self.view);
        v.user_set = true;
        let changed = v.user != user;
        v.user = user;
        changed
    }

    fn install(&self, bundle: &Arc<ConfigBundle>, fetched_ms: i64, from_cache: bool, stale: bool) {
        let triggers = Arc::new(crate::live::messages::event_triggers(bundle));
        self.has_event_triggers
            .store(!triggers.is_empty(), Ordering::Release);
        let mut v = lock(&self.view);
        v.bundle = Some(bundle.clone());
        v.fetched_ms = Some(fetched_ms);
        v.from_cache = from_cache;
        v.stale = stale;
        v.event_triggers = triggers;
    }

    /// The cached bundle was loaded (store thread). Ignored when a fetched bundle is
    /// already in use.
    pub(crate) fn load_cached(
        &self,
        cached: Option<(ConfigBundle, i64)>,
        pacing: HashMap<String, PacingState>,
        props: Properties,
    ) {
        let mut bundle = None;
        if let Some((b, at)) = cached {
            if self.bundle().is_none() && b.app_id == self.app_id {
                let b = Arc::new(b);
                self.install(&b, at, true, false);
                bundle = Some(b);
            }
        }
        self.send(Job::Loaded {
            bundle,
            pacing,
            props,
        });
        self.mark_ready();
    }

    /// A fetched bundle (uploader thread), already persisted.
    pub(crate) fn install_fetched(&self, bundle: ConfigBundle, fetched_ms: i64, stale: bool) {
        let b = Arc::new(bundle);
        self.install(&b, fetched_ms, false, stale);
        self.send(Job::Bundle(b));
    }

    /// A fetch confirmed the bundle in use (`not_modified`).
    pub(crate) fn confirm(&self, fetched_ms: i64, stale: bool) {
        let mut v = lock(&self.view);
        v.fetched_ms = Some(fetched_ms);
        v.from_cache = false;
        v.stale = stale;
    }

    /// Cheap check on the recording path: does any message trigger on `name`?
    pub(crate) fn triggers_on(&self, name: &str) -> bool {
        if !self.has_event_triggers.load(Ordering::Acquire) {
            return false;
        }
        lock(&self.view).event_triggers.contains(name)
    }

    pub(crate) fn value(&self, key: &str) -> Option<Value> {
        lock(&self.view)
            .bundle
            .as_ref()
            .and_then(|b| b.values.get(key).cloned())
    }

    pub(crate) fn flag(&self, key: &str, unit: Option<&str>) -> FlagDecision {
        let Some(bundle) = self.bundle() else {
            return FlagDecision::Off;
        };
        match (bundle.flag(key), unit) {
            (Some(flag), Some(unit)) => evaluate_flag(flag, self.app_id.as_str(), unit),
            _ => FlagDecision::Off,
        }
    }

    pub(crate) fn add_config_listener(&self, l: Arc<dyn ConfigListener>) -> ListenerHandle {
        let (id, cancelled) = self.new_slot();
        lock(&self.registry.config).push(Arc::new(Slot {
            id,
            cancelled: cancelled.clone(),
            listener: l,
        }));
        self.handle(id, cancelled)
    }

    pub(crate) fn add_message_listener(&self, l: Arc<dyn MessageListener>) -> ListenerHandle {
        let (id, cancelled) = self.new_slot();
        lock(&self.registry.messages).push(Arc::new(Slot {
            id,
            cancelled: cancelled.clone(),
            listener: l,
        }));
        // Messages waiting for a listener (`Immediate`) get their chance now.
        self.send(Job::Fired(Fired::Immediate));
        self.handle(id, cancelled)
    }

    fn new_slot(&self) -> (u64, Arc<AtomicBool>) {
        (
            self.registry.next.fetch_add(1, Ordering::Relaxed),
            Arc::new(AtomicBool::new(false)),
        )
    }

    fn handle(&self, id: u64, cancelled: Arc<AtomicBool>) -> ListenerHandle {
        ListenerHandle {
            registry: Arc::downgrade(&self.registry),
            id,
            cancelled,
        }
    }
}

/// The dispatcher thread's state.
pub(crate) struct Dispatcher<H: Host> {
    live: Arc<Live>,
    host: Weak<H>,
    loaded: bool,
    pending: Vec<Fired>,
    bundle: Option<Arc<ConfigBundle>>,
    decisions: BTreeMap<String, FlagDecision>,
    pacing: HashMap<String, PacingState>,
    props: Properties,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl<H: Host> Dispatcher<H> {
    pub(crate) fn new(live: Arc<Live>, host: Weak<H>) -> Self {
        Dispatcher {
            live,
            host,
            loaded: false,
            pending: Vec::new(),
            bundle: None,
            decisions: BTreeMap::new(),
            pacing: HashMap::new(),
            props: Properties::new(),
        }
    }

    /// Runs until `Job::Stop` or until every sender is gone.
    pub(crate) fn run(mut self, jobs: Jobs) {
        while let Some(job) = jobs.recv() {
            if matches!(job, Job::Stop) || self.live.stopped.load(Ordering::Acquire) {
                break;
            }
            let Some(host) = self.host.upgrade() else {
                break;
            };
            self.handle(job, &*host);
        }
    }

    fn handle(&mut self, job: Job, host: &H) {
        match job {
            Job::Loaded {
                bundle,
                pacing,
                props,
            } => {
                self.loaded = true;
                self.pacing = pacing;
                self.props = props;
                if let Some(b) = bundle {
                    self.new_bundle(b, true, host);
                }
                for fired in std::mem::take(&mut self.pending) {
                    self.fire(&fired, host);
                }
            }
            Job::Bundle(b) => self.new_bundle(b, false, host),
            Job::Fired(fired) => {
                if self.loaded {
                    self.fire(&fired, host);
                } else if self.pending.len() < PENDING_TRIGGERS && !self.pending.contains(&fired) {
                    self.pending.push(fired);
                }
            }
            Job::UserChanged => {
                // Properties belong to the previous user.
                if !self.props.is_empty() {
                    self.props.clear();
                    host.persist_user_properties(&self.props);
                }
                if let Some(b) = self.bundle.clone() {
                    let decisions = self.evaluate(&b, host);
                    let changed = diff_keys(&self.decisions, &decisions);
                    self.decisions = decisions;
                    if !changed.is_empty() {
                        self.notify(&ConfigChange {
                            version: b.version,
                            etag: b.etag.clone(),
                            changed_values: Vec::new(),
                            changed_flags: changed,
                            from_cache: false,
                        });
                    }
                }
            }
            Job::UserProps { set, unset } => {
                for k in unset {
                    self.props.remove(&k);
                }
                self.props.extend(set);
                host.persist_user_properties(&self.props);
            }
            Job::Stop => {}
        }
    }

    fn evaluate(&self, b: &ConfigBundle, host: &H) -> BTreeMap<String, FlagDecision> {
        let Some(unit) = host.unit() else {
            return BTreeMap::new();
        };
        // Inserted one by one: `collect()` into a map would link a sort (size).
        let mut out = BTreeMap::new();
        for f in &b.flags {
            out.insert(
                f.key.clone(),
                evaluate_flag(f, self.live.app_id.as_str(), &unit),
            );
        }
        out
    }

    fn new_bundle(&mut self, b: Arc<ConfigBundle>, from_cache: bool, host: &H) {
        if self.bundle.as_ref().is_some_and(|old| old.etag == b.etag) {
            return;
        }
        let decisions = self.evaluate(&b, host);
        let empty = ConfigBundle::default();
        let old = self.bundle.as_deref().unwrap_or(&empty);
        let changed_values = diff_keys(&old.values, &b.values);
        // Maps and sets are filled by `insert`/`extend`, not `collect()`, which would
        // link a sort into the library (size).
        let mut old_flags = BTreeMap::new();
        for f in &old.flags {
            old_flags.insert(f.key.as_str(), f);
        }
        let mut new_flags = BTreeMap::new();
        for f in &b.flags {
            new_flags.insert(f.key.as_str(), f);
        }
        let mut changed_flags = BTreeSet::new();
        changed_flags.extend(diff_keys(&old_flags, &new_flags));
        changed_flags.extend(diff_keys(&self.decisions, &decisions));
        self.decisions = decisions;
        self.bundle = Some(b.clone());
        self.notify(&ConfigChange {
            version: b.version,
            etag: b.etag.clone(),
            changed_values,
            changed_flags: changed_flags.into_iter().collect(),
            from_cache,
        });
        self.fire(&Fired::Immediate, host);
    }

    fn notify(&self, change: &ConfigChange) {
        let slots = lock(&self.live.registry.config).clone();
        for s in slots {
            if s.cancelled.load(Ordering::Acquire) {
                continue;
            }
            if catch_unwind(AssertUnwindSafe(|| s.listener.on_config_changed(change))).is_err() {
                self.live
                    .counters
                    .listener_panics
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!("a config listener panicked; the SDK continues");
            }
        }
        // Counted once every listener was called: a listener added after the count
        // moved never hears of this change.
        self.live
            .counters
            .changes_notified
            .fetch_add(1, Ordering::Relaxed);
    }

    fn fire(&mut self, fired: &Fired, host: &H) {
        let Some(bundle) = self.bundle.clone() else {
            return;
        };
        let slots: Vec<_> = lock(&self.live.registry.messages)
            .iter()
            .filter(|s| !s.cancelled.load(Ordering::Acquire))
            .cloned()
            .collect();
        // Nobody can show it: the message stays eligible for later.
        if slots.is_empty() {
            return;
        }
        let Some(unit) = host.unit() else {
            return;
        };
        let now = now_ms();
        let who = Audience {
            app_id: self.live.app_id.as_str(),
            unit: &unit,
            platform: &self.live.platform,
            user_properties: &self.props,
        };
        let Some(message) = pick(&bundle, fired, &who, &self.pacing, now).cloned() else {
            return;
        };
        let state = host
            .persist_impression(&message.id, now)
            .unwrap_or_else(|| {
                let old = self.pacing.get(&message.id).copied().unwrap_or_default();
                PacingState {
                    impressions: old.impressions.saturating_add(1),
                    last_shown_ms: Some(now),
                }
            });
        self.pacing.insert(message.id.clone(), state);
        host.record_shown(&message.id);
        self.live
            .counters
            .messages_shown
            .fetch_add(1, Ordering::Relaxed);
        for s in slots {
            if s.cancelled.load(Ordering::Acquire) {
                continue;
            }
            if catch_unwind(AssertUnwindSafe(|| s.listener.on_message(&message))).is_err() {
                self.live
                    .counters
                    .listener_panics
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!("a message listener panicked; the SDK continues");
            }
        }
    }
}

/// Keys present in only one map or with different values, sorted.
fn diff_keys<K: Ord + ToString, V: PartialEq>(
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
) -> Vec<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for (k, v) in a {
        if b.get(k) != Some(v) {
            out.insert(k.to_string());
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.insert(k.to_string());
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    fn live() -> (Live, Jobs) {
        Live::new(AppId::new("app"), "android".into())
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_takes_jobs_again_once_read() {
        let (live, jobs) = live();
        for _ in 0..QUEUE + 10 {
            live.send(Job::UserChanged);
        }
        assert_eq!(live.stats().dispatch_dropped, 10);
        for _ in 0..3 {
            assert!(matches!(jobs.recv(), Some(Job::UserChanged)));
        }
        for _ in 0..5 {
            live.send(Job::UserChanged);
        }
        assert_eq!(live.stats().dispatch_dropped, 12, "three places freed");
        let mut read = 0;
        while jobs.rx.try_recv().is_ok() {
            read += 1;
        }
        assert_eq!(read, QUEUE);
    }

    #[test]
    fn jobs_for_a_dispatcher_that_is_gone_are_neither_kept_nor_counted() {
        let (live, jobs) = live();
        drop(jobs);
        for _ in 0..QUEUE * 2 {
            live.send(Job::UserChanged);
        }
        assert_eq!(live.stats().dispatch_dropped, 0);
        assert_eq!(live.queued.load(Ordering::Acquire), 0);
        live.stop();
        assert!(live.stopped.load(Ordering::Acquire));
    }
}
