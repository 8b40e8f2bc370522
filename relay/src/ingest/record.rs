//! Recording production traffic: a configurable sample of the batches a relay accepts,
//! written to the object store as time-ordered segments that `tern-loadgen replay`
//! plays back against a relay cluster and `tern-fleet run --replay-dir` through
//! simulated devices (at N× speed, with the original pacing), both reading them with
//! [`super::playback::RecordingReader`].
//!
//! What is recorded is set by an operator ([`RecordSettings`], through the admin API):
//! which apps (all when empty), what share of batches (`sample_bp`, basis points,
//! decided by the batch id, so a batch is in or out wherever it is seen), a cap in
//! batches per second, and privacy options.
//!
//! **Privacy is on by default.** Unless the operator opts out explicitly, user ids are
//! replaced by a keyed hash (`hash_user_ids`, default on; the key is new for every
//! recording and never written, so the hash is stable within a recording — per-user
//! ordering and routing are kept — and cannot be reversed or joined across
//! recordings), and property values (custom and purchase properties, user
//! properties set) are redacted: each value is replaced by a placeholder of the same
//! type and length (`"****"`, `0`, `0.0`, `false`), keys kept
//! (`keep_property_values`, default off). `drop_properties` drops properties
//! altogether. Recording clear user ids or values takes `"hash_user_ids": false` or
//! `"keep_property_values": true` in the request, and is logged as a warning.
//!
//! **Files.** On a local-disk store ([`RecorderConfig::with_local_dir`]) the segment
//! directories are made `0700` and every segment file `0600` (existing ones too, with
//! a warning), so recorded traffic is readable by the relay's user only.
//!
//! The request path only decides and hands over the batch's bytes (a reference-counted
//! slice, no copy) on a bounded queue; decoding, the privacy transforms and the PUTs
//! happen on the recorder's task. A full queue drops the sample (counted in
//! `tern_relay_record_dropped_total{cause="queue_full"}`), never delays a device.
//!
//! Segment objects: `record/<relay-id>/<first-ms>-<seq>.json`, each a JSON [`Segment`]
//! of at most `segment_max_batches` batches or `segment_max_age` of traffic; the open
//! segment is written when it is full, when it gets old, on [`Recorder::flush`] and
//! when recording is turned off.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tern_protocol::{BatchId, EventBatch, EventBody, RelayId, UserId};
use tokio::sync::{mpsc, oneshot};

/// What to record, as an operator sets it. Fields left out take their default; the
/// privacy fields default to private.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordSettings {
    /// Recording on.
    pub enabled: bool,
    /// Apps to record (empty: every app).
    pub apps: BTreeSet<String>,
    /// Share of batches, basis points (10000 = all).
    pub sample_bp: u32,
    /// Most batches recorded per second (0: no cap).
    pub max_batches_per_sec: u32,
    /// Replace user ids by a keyed hash (default on; `false` records them in clear).
    pub hash_user_ids: bool,
    /// Drop event properties (custom, purchase, user properties).
    pub drop_properties: bool,
    /// Keep property values in clear (default off: values are redacted, keys kept).
    pub keep_property_values: bool,
}

impl Default for RecordSettings {
    fn default() -> Self {
        RecordSettings {
            enabled: false,
            apps: BTreeSet::new(),
            sample_bp: 0,
            max_batches_per_sec: 0,
            hash_user_ids: true,
            drop_properties: false,
            keep_property_values: false,
        }
    }
}

impl RecordSettings {
    /// Whether these settings record user ids or property values in clear.
    pub fn records_in_clear(&self) -> bool {
        self.enabled
            && (!self.hash_user_ids || (self.keep_property_values && !self.drop_properties))
    }
}

/// One recorded batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedBatch {
    /// When the relay received it (Unix ms).
    pub at_ms: u64,
    /// The batch (after the privacy transforms).
    pub batch: EventBatch,
}

/// A segment object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// The recording relay.
    pub relay_id: String,
    /// User ids are hashed.
    pub hashed_user_ids: bool,
    /// Properties were dropped.
    pub dropped_properties: bool,
    /// Property values were replaced by placeholders (keys kept).
    #[serde(default)]
    pub redacted_property_values: bool,
    /// The batches, in arrival order.
    pub batches: Vec<RecordedBatch>,
}

/// Where segments of `relay` go.
pub fn record_prefix(relay: &RelayId) -> ObjectPath {
    ObjectPath::from(format!("record/{relay}"))
}

/// Settings of the recorder task.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RecorderConfig {
    /// Most batches per segment.
    pub segment_max_batches: usize,
    /// Oldest batch of an open segment before it is written.
    pub segment_max_age: Duration,
    /// Samples waiting for the task.
    pub queue: usize,
    /// The directory of a local-disk store (its files get private modes).
    pub local_dir: Option<std::path::PathBuf>,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            segment_max_batches: 1_000,
            segment_max_age: Duration::from_secs(5),
            queue: 4_096,
            local_dir: None,
        }
    }
}

impl RecorderConfig {
    /// Sets the segment age limit.
    pub fn with_segment_max_age(mut self, d: Duration) -> Self {
        self.segment_max_age = d;
        self
    }

    /// Names the directory behind a local-disk store: segment directories there are
    /// made `0700` and segment files `0600`.
    pub fn with_local_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.local_dir = Some(dir.into());
        self
    }
}

/// What the recorder did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecordStats {
    /// Batches recorded (written or in the open segment).
    pub batches: u64,
    /// Segments written.
    pub segments: u64,
    /// Samples dropped by the rate cap.
    pub capped: u64,
    /// Samples dropped because the queue was full or the batch undecodable.
    pub dropped: u64,
    /// Segment writes that failed (their batches are lost to the recording only).
    pub failed_writes: u64,
}

enum Job {
    /// A sampled batch and the privacy settings in force when it was offered.
    Batch {
        at_ms: u64,
        bytes: Bytes,
        privacy: Privacy,
    },
    Flush(oneshot::Sender<()>),
}

/// The recorder handle: cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("enabled", &self.shared.enabled.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Shared {
    enabled: AtomicBool,
    settings: Mutex<RecordSettings>,
    bucket: Mutex<Bucket>,
    /// Per-recording key of the user-id hash.
    salt: Mutex<String>,
    batches: AtomicU64,
    segments: AtomicU64,
    capped: AtomicU64,
    dropped: AtomicU64,
    failed_writes: AtomicU64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The sampling bucket of a batch, in `0..10000` (from its id: the same everywhere).
pub fn sample_bucket(id: &BatchId) -> u32 {
    (u128::from_be_bytes(*id.as_uuid().as_bytes()) % 10_000) as u32
}

impl Recorder {
    /// Starts the recorder task writing `relay`'s segments to `store`. Recording is
    /// off until [`Recorder::set`] turns it on.
    pub fn spawn(
        store: Arc<dyn ObjectStore>,
        relay: RelayId,
        config: RecorderConfig,
    ) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let shared = Arc::new(Shared {
            enabled: AtomicBool::new(false),
            settings: Mutex::new(RecordSettings::default()),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
            salt: Mutex::new(String::new()),
            batches: AtomicU64::new(0),
            segments: AtomicU64::new(0),
            capped: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed_writes: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(store, relay, config, rx, shared.clone()));
        (Recorder { tx, shared }, task)
    }

    /// Applies `settings`. Turning recording on starts a new recording (a new user-id
    /// hash key); turning it off writes the open segment.
    pub fn set(&self, settings: &RecordSettings) {
        let was = self.shared.enabled.load(Ordering::Relaxed);
        *lock(&self.shared.settings) = settings.clone();
        if settings.enabled && !was {
            *lock(&self.shared.salt) = crate::random_token();
            let mut b = lock(&self.shared.bucket);
            b.tokens = f64::from(settings.max_batches_per_sec);
            b.last = Instant::now();
        }
        if settings.records_in_clear() {
            tracing::warn!(
                target: "tern_relay::audit",
                hash_user_ids = settings.hash_user_ids,
                keep_property_values = settings.keep_property_values,
                "traffic recording keeps user ids or property values in clear (opted in)"
            );
        }
        self.shared
            .enabled
            .store(settings.enabled, Ordering::Relaxed);
        if was && !settings.enabled {
            let (done, _) = oneshot::channel();
            let _ = self.tx.try_send(Job::Flush(done));
        }
        metrics::gauge!("tern_relay_recording").set(if settings.enabled { 1.0 } else { 0.0 });
    }

    /// Whether anything could be recorded now (one atomic load: the request path's
    /// check before it keeps a batch's bytes).
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::Relaxed)
    }

    /// Offers one accepted batch (`bytes`: its MessagePack encoding).
    pub fn offer(&self, app: &str, id: &BatchId, bytes: Bytes) {
        if !self.is_enabled() {
            return;
        }
        let privacy = {
            let s = lock(&self.shared.settings);
            if !s.apps.is_empty() && !s.apps.contains(app) {
                return;
            }
            if sample_bucket(id) >= s.sample_bp {
                return;
            }
            if s.max_batches_per_sec > 0 {
                let cap = f64::from(s.max_batches_per_sec);
                let mut b = lock(&self.shared.bucket);
                let now = Instant::now();
                b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * cap).min(cap);
                b.last = now;
                if b.tokens < 1.0 {
                    self.shared.capped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("tern_relay_record_dropped_total", "cause" => "rate_cap")
                        .increment(1);
                    return;
                }
                b.tokens -= 1.0;
            }
            Privacy::of(&s)
        };
        let job = Job::Batch {
            at_ms: now_ms(),
            bytes,
            privacy,
        };
        if self.tx.try_send(job).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tern_relay_record_dropped_total", "cause" => "queue_full")
                .increment(1);
        }
    }

    /// Writes the open segment; returns once it is stored (or failed).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> RecordSettings {
        lock(&self.shared.settings).clone()
    }

    /// What the recorder did.
    pub fn stats(&self) -> RecordStats {
        let s = &self.shared;
        RecordStats {
            batches: s.batches.load(Ordering::Relaxed),
            segments: s.segments.load(Ordering::Relaxed),
            capped: s.capped.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            failed_writes: s.failed_writes.load(Ordering::Relaxed),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What happens to properties in a recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PropertyPolicy {
    /// Kept as they are (opted in).
    Keep,
    /// Values replaced by placeholders, keys kept (the default).
    Redact,
    /// Dropped altogether.
    Drop,
}

/// The privacy transforms applied to a batch (a segment holds batches of one kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Privacy {
    hash_user_ids: bool,
    properties: PropertyPolicy,
}

impl Privacy {
    fn of(s: &RecordSettings) -> Self {
        Privacy {
            hash_user_ids: s.hash_user_ids,
            properties: PropertyPolicy::of(s),
        }
    }
}

impl PropertyPolicy {
    fn of(s: &RecordSettings) -> Self {
        if s.drop_properties {
            PropertyPolicy::Drop
        } else if s.keep_property_values {
            PropertyPolicy::Keep
        } else {
            PropertyPolicy::Redact
        }
    }
}

/// A placeholder of the same type (and, for text, length) as `v`.
fn redacted(v: &tern_protocol::Value) -> tern_protocol::Value {
    use tern_protocol::Value;
    match v {
        Value::String(s) => Value::String("*".repeat(s.chars().count())),
        Value::Int(_) => Value::Int(0),
        Value::Float(_) => Value::Float(0.0),
        Value::Bool(_) => Value::Bool(false),
    }
}

/// The privacy transforms.
fn transform(batch: &mut EventBatch, hash_users: Option<&str>, policy: PropertyPolicy) {
    for e in &mut batch.events {
        if let (Some(salt), Some(user)) = (hash_users, &e.user_id) {
            let h = xxhash_rust::xxh3::xxh3_64(format!("{salt}\0{}", user.as_str()).as_bytes());
            e.user_id = Some(UserId::new(format!("h-{h:016x}")));
        }
        match (&mut e.body, policy) {
            (_, PropertyPolicy::Keep) => {}
            (
                EventBody::Custom { props, .. } | EventBody::Purchase { props, .. },
                PropertyPolicy::Drop,
            ) => props.clear(),
            (EventBody::UserProperties { set, unset }, PropertyPolicy::Drop) => {
                set.clear();
                unset.clear();
            }
            (
                EventBody::Custom { props: values, .. }
                | EventBody::Purchase { props: values, .. }
                | EventBody::UserProperties { set: values, .. },
                PropertyPolicy::Redact,
            ) => {
                for v in values.values_mut() {
                    *v = redacted(v);
                }
            }
            _ => {}
        }
    }
}

/// Makes `dir` and its parents below `root` `0700` (creating them), and every file
/// already in `dir` `0600`; warns about anything that was more open.
#[cfg(unix)]
fn make_private(root: &std::path::Path, dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // The directories: `crate::private::private_dir` creates and narrows each (and
    // warns for each it narrowed).
    let mut d = dir;
    while d != root && d.starts_with(root) {
        crate::private::private_dir(d)?;
        let Some(parent) = d.parent() else { break };
        d = parent;
    }
    let mut fixed = 0u32;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
            fixed += 1;
        }
    }
    if fixed > 0 {
        tracing::warn!(
            dir = %dir.display(),
            fixed,
            "recording files were readable by others: made 0600"
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_root: &std::path::Path, _dir: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

/// Sets a written segment file to `0600`.
#[cfg(unix)]
fn make_file_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn make_file_private(_path: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

/// Where segments go.
struct Output {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    relay: RelayId,
    /// On a local-disk store: its root and the segment directory.
    local: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The segment directory was made private.
    private: bool,
}

async fn run(
    store: Arc<dyn ObjectStore>,
    relay: RelayId,
    config: RecorderConfig,
    mut rx: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
) {
    let prefix = record_prefix(&relay);
    let local = config.local_dir.clone().map(|root| {
        let dir = prefix
            .parts()
            .fold(root.clone(), |d, part| d.join(part.as_ref()));
        (root, dir)
    });
    let mut out = Output {
        store,
        prefix,
        relay,
        local,
        private: false,
    };
    let mut open: Vec<RecordedBatch> = Vec::new();
    let mut open_privacy = Privacy::of(&RecordSettings::default());
    let mut opened_at = Instant::now();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(config.segment_max_age.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let job = tokio::select! {
            job = rx.recv() => job,
            _ = tick.tick() => {
                if !open.is_empty() && opened_at.elapsed() >= config.segment_max_age {
                    write(&mut out, &mut open, open_privacy, &mut seq, &shared).await;
                }
                continue;
            }
        };
        match job {
            None => {
                write(&mut out, &mut open, open_privacy, &mut seq, &shared).await;
                return;
            }
            Some(Job::Flush(done)) => {
                write(&mut out, &mut open, open_privacy, &mut seq, &shared).await;
                let _ = done.send(());
            }
            Some(Job::Batch {
                at_ms,
                bytes,
                privacy,
            }) => {
                let Ok(mut batch) = tern_protocol::decode_payload::<EventBatch>(&bytes) else {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if privacy != open_privacy {
                    // A segment says how its batches were transformed: one kind each.
                    write(&mut out, &mut open, open_privacy, &mut seq, &shared).await;
                    open_privacy = privacy;
                }
                let salt = privacy.hash_user_ids.then(|| lock(&shared.salt).clone());
                transform(&mut batch, salt.as_deref(), privacy.properties);
                if open.is_empty() {
                    opened_at = Instant::now();
                }
                open.push(RecordedBatch { at_ms, batch });
                shared.batches.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tern_relay_record_batches_total").increment(1);
                if open.len() >= config.segment_max_batches {
                    write(&mut out, &mut open, open_privacy, &mut seq, &shared).await;
                }
            }
        }
    }
}

async fn write(
    out: &mut Output,
    open: &mut Vec<RecordedBatch>,
    privacy: Privacy,
    seq: &mut u64,
    shared: &Shared,
) {
    if open.is_empty() {
        return;
    }
    let segment = Segment {
        relay_id: out.relay.as_str().to_owned(),
        hashed_user_ids: privacy.hash_user_ids,
        dropped_properties: privacy.properties == PropertyPolicy::Drop,
        redacted_property_values: privacy.properties == PropertyPolicy::Redact,
        batches: std::mem::take(open),
    };
    let first = segment.batches[0].at_ms;
    *seq += 1;
    let name = format!("{first:013}-{:06}.json", *seq % 1_000_000);
    let key = out.prefix.clone().join(name.as_str());
    let body = match serde_json::to_vec(&segment) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "encoding a recording segment failed");
            shared.failed_writes.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    // On local disk the directory is private before the first file lands in it.
    if let (Some((root, dir)), false) = (&out.local, out.private) {
        match make_private(root, dir) {
            Ok(()) => out.private = true,
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "could not make the recording directory private; segment not written");
                shared.failed_writes.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    match out.store.put(&key, body.into()).await {
        Ok(_) => {
            if let Some((_, dir)) = &out.local {
                if let Err(e) = make_file_private(&dir.join(&name)) {
                    tracing::warn!(error = %e, key = %key, "could not make a recording segment 0600");
                }
            }
            shared.segments.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tern_relay_record_segments_total").increment(1);
        }
        Err(e) => {
            tracing::warn!(error = %e, key = %key, "writing a recording segment failed");
            shared.failed_writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::{AppId, DeviceId, Event, SdkInfo};

    fn batch(app: &str, user: &str) -> EventBatch {
        EventBatch {
            anonymous_id: None,
            context: None,
            batch_id: BatchId::new_v7(),
            app_id: AppId::new(app),
            device_id: DeviceId::random(),
            sdk: SdkInfo::default(),
            sent_at_ms: 0,
            attempt: 0,
            events: vec![Event {
                seq: 1,
                ts_ms: 1,
                user_id: Some(UserId::new(user)),
                session_id: None,
                body: EventBody::Custom {
                    name: "e".into(),
                    props: [("k".to_string(), tern_protocol::Value::from(1i64))]
                        .into_iter()
                        .collect(),
                },
            }],
            health: Default::default(),
        }
    }

    fn bytes(b: &EventBatch) -> Bytes {
        Bytes::from(tern_protocol::encode_payload(b).unwrap())
    }

    async fn segments(store: &dyn ObjectStore) -> Vec<Segment> {
        use futures_util::TryStreamExt;
        let mut metas: Vec<_> = store
            .list(Some(&ObjectPath::from("record")))
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let mut out = Vec::new();
        for m in metas {
            let data = store.get(&m.location).await.unwrap().bytes().await.unwrap();
            out.push(serde_json::from_slice(&data).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn records_the_selected_sample_with_privacy_transforms() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (rec, _task) =
            Recorder::spawn(store.clone(), RelayId::new("r1"), RecorderConfig::default());
        let b = batch("demo", "alice");
        rec.offer("demo", &b.batch_id, bytes(&b));
        rec.flush().await;
        assert!(segments(&*store).await.is_empty(), "off by default");
        rec.set(&RecordSettings {
            enabled: true,
            apps: ["demo".to_string()].into_iter().collect(),
            sample_bp: 10_000,
            max_batches_per_sec: 0,
            hash_user_ids: true,
            drop_properties: true,
            keep_property_values: false,
        });
        let a1 = batch("demo", "alice");
        let a2 = batch("demo", "alice");
        let other = batch("shop", "bob");
        for b in [&a1, &a2, &other] {
            rec.offer(b.app_id.as_str(), &b.batch_id, bytes(b));
        }
        rec.flush().await;
        let segs = segments(&*store).await;
        assert_eq!(segs.len(), 1);
        let s = &segs[0];
        assert!(s.hashed_user_ids && s.dropped_properties);
        assert_eq!(s.batches.len(), 2, "only the selected app");
        let users: Vec<_> = s
            .batches
            .iter()
            .map(|r| r.batch.events[0].user_id.clone().unwrap())
            .collect();
        assert_ne!(users[0].as_str(), "alice");
        assert_eq!(users[0], users[1], "the hash is stable within a recording");
        assert!(
            matches!(&s.batches[0].batch.events[0].body, EventBody::Custom { props, .. } if props.is_empty())
        );
        assert_eq!(s.batches[0].batch.batch_id, a1.batch_id);
        assert_eq!(rec.stats().batches, 2);
        assert_eq!(rec.stats().segments, 1);
    }

    #[tokio::test]
    async fn sampling_is_by_batch_id_and_the_rate_cap_holds() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (rec, _task) =
            Recorder::spawn(store.clone(), RelayId::new("r1"), RecorderConfig::default());
        rec.set(&RecordSettings {
            enabled: true,
            sample_bp: 2_500,
            ..RecordSettings::default()
        });
        let batches: Vec<_> = (0..2_000).map(|_| batch("demo", "u")).collect();
        let expected = batches
            .iter()
            .filter(|b| sample_bucket(&b.batch_id) < 2_500)
            .count();
        for b in &batches {
            rec.offer("demo", &b.batch_id, bytes(b));
        }
        rec.flush().await;
        assert_eq!(rec.stats().batches as usize, expected);
        assert!((300..700).contains(&expected), "{expected} of 2000 at 25%");
        // Cap: 5 per second, everything sampled: a burst of 50 records about 5.
        rec.set(&RecordSettings {
            enabled: false,
            ..RecordSettings::default()
        });
        rec.set(&RecordSettings {
            enabled: true,
            sample_bp: 10_000,
            max_batches_per_sec: 5,
            ..RecordSettings::default()
        });
        let before = rec.stats().batches;
        for b in batches.iter().take(50) {
            rec.offer("demo", &b.batch_id, bytes(b));
        }
        rec.flush().await;
        let recorded = rec.stats().batches - before;
        assert!((5..=7).contains(&recorded), "{recorded}");
        assert!(rec.stats().capped >= 43);
    }

    fn props_batch(user: &str) -> EventBatch {
        let mut b = batch("demo", user);
        b.events[0].body = EventBody::Custom {
            name: "signup".into(),
            props: [
                (
                    "email".to_string(),
                    tern_protocol::Value::from("ann@example.com"),
                ),
                ("age".to_string(), tern_protocol::Value::from(41i64)),
            ]
            .into_iter()
            .collect(),
        };
        b
    }

    #[tokio::test]
    async fn privacy_is_the_default_and_clear_text_is_an_explicit_opt_in() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (rec, _task) =
            Recorder::spawn(store.clone(), RelayId::new("r1"), RecorderConfig::default());
        // Only the switch and the sample given: private.
        let settings: RecordSettings =
            serde_json::from_str(r#"{"enabled": true, "sample_bp": 10000}"#).unwrap();
        assert!(settings.hash_user_ids && !settings.keep_property_values);
        assert!(!settings.records_in_clear());
        rec.set(&settings);
        let b = props_batch("ann-user-id");
        rec.offer("demo", &b.batch_id, bytes(&b));
        // Opted in: user ids and values in clear, in a segment of their own.
        rec.set(&RecordSettings {
            hash_user_ids: false,
            keep_property_values: true,
            ..settings.clone()
        });
        let c = props_batch("bob-user-id");
        rec.offer("demo", &c.batch_id, bytes(&c));
        rec.flush().await;
        let segs = segments(&*store).await;
        assert_eq!(segs.len(), 2, "one segment per privacy setting");
        let private = serde_json::to_string(&segs[0]).unwrap();
        assert!(segs[0].hashed_user_ids && segs[0].redacted_property_values);
        assert!(!private.contains("ann-user-id") && !private.contains("ann@example.com"));
        let EventBody::Custom { props, .. } = &segs[0].batches[0].batch.events[0].body else {
            panic!()
        };
        assert_eq!(props["email"], tern_protocol::Value::from("*".repeat(15)));
        assert_eq!(props["age"], tern_protocol::Value::from(0i64));
        let clear = serde_json::to_string(&segs[1]).unwrap();
        assert!(!segs[1].hashed_user_ids && !segs[1].redacted_property_values);
        assert!(clear.contains("bob-user-id") && clear.contains("ann@example.com"));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn segments_on_local_disk_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A directory left open by an earlier version, with an open segment in it.
        let seg_dir = dir.path().join("record/r1");
        std::fs::create_dir_all(&seg_dir).unwrap();
        std::fs::set_permissions(&seg_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(seg_dir.join("old.json"), b"{}").unwrap();
        std::fs::set_permissions(
            seg_dir.join("old.json"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let (rec, _task) = Recorder::spawn(
            store,
            RelayId::new("r1"),
            RecorderConfig::default().with_local_dir(dir.path()),
        );
        rec.set(&RecordSettings {
            enabled: true,
            sample_bp: 10_000,
            ..RecordSettings::default()
        });
        let b = batch("demo", "u");
        rec.offer("demo", &b.batch_id, bytes(&b));
        rec.flush().await;
        assert_eq!(rec.stats().segments, 1);
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("record")), 0o700);
        assert_eq!(mode(&seg_dir), 0o700);
        let files: Vec<_> = std::fs::read_dir(&seg_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 2);
        for f in files {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }
}
