//! The spool: where batches go when the backend cannot take them, so they can be
//! acknowledged as durable (`Accepted{spooled}`) and replayed later.
//!
//! Writes are group-committed: batches that arrive together (within `linger`, up to
//! `max_batches` / `max_bytes`) are encoded as one `ForwardRequest` frame (the backend
//! codec, LZ4-compressed) and written with **one object PUT**; every batch in it is
//! acknowledged only after the PUT returned. A failed PUT fails every batch in it
//! (the caller answers `Retry`: the device keeps the data).
//!
//! ## Targets, bounds and the local-disk fallback
//!
//! Objects go to the **primary** [`SpoolTarget`]: any [`object_store::ObjectStore`] (a
//! local directory by default, S3 in production). A target may be bounded
//! (`capacity` bytes, counted from a listing at start, then kept up to date by writes
//! and by the replayer's deletes); a bounded target without room is skipped, never
//! overfilled. When the primary fails (error or `store_timeout`), it is skipped for
//! `primary_retry_interval` and objects go to the optional **fallback** target, a
//! bounded local directory. When neither can take an object, the write fails and the
//! device is told to `Retry`: nothing is ever dropped. [`Spool::has_room`] is what
//! `/readyz` reports.
//!
//! ## Keys
//!
//! `spool/<relay id>/<unix ms, 13 digits>-<n, 6 digits>.tern`: listing a relay's
//! prefix gives its objects oldest first, the key says how old an object is without
//! reading it, and any relay can list `spool/` and replay any prefix (see
//! [`crate::spool::replay`], which takes a [`crate::spool::lease`] before replaying an object). One
//! object holds batches of many apps and shards (that is what makes one PUT carry many
//! batches), so the relay — the unit that writes, fails and is taken over — is the
//! prefix.

pub mod lease;
pub mod pacer;
pub mod replay;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use tern_protocol::{CodecConfig, EventBatch, ForwardRequest, Message, RelayId};

use crate::backend::forward::RawBatch;
use tokio::sync::{mpsc, oneshot};

/// Spool settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SpoolConfig {
    /// How long the first batch of an object waits for company.
    pub linger: Duration,
    /// Most batches in one object.
    pub max_batches: usize,
    /// Most (approximate) bytes in one object before it is sealed.
    pub max_bytes: usize,
    /// Batches waiting to be written; beyond this `write` fails fast.
    pub queue_capacity: usize,
    /// Objects being encoded and stored at once. While all are busy, batches queue
    /// and the next object takes them all.
    pub max_in_flight: usize,
    /// Longest wait for one PUT before the target counts as failed.
    pub store_timeout: Duration,
    /// After a failure of the primary target, how long objects go straight to the
    /// fallback before the primary is tried again.
    pub primary_retry_interval: Duration,
    /// Free bytes a target needs to count as having room ([`Spool::has_room`],
    /// readiness).
    pub ready_headroom: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            linger: Duration::from_millis(2),
            max_batches: 4096,
            max_bytes: 16 * 1024 * 1024,
            queue_capacity: 16_384,
            max_in_flight: 4,
            store_timeout: Duration::from_secs(5),
            primary_retry_interval: Duration::from_secs(5),
            ready_headroom: 1 << 20,
        }
    }
}

impl SpoolConfig {
    /// Sets the PUT timeout.
    pub fn with_store_timeout(mut self, d: Duration) -> Self {
        self.store_timeout = d;
        self
    }

    /// Sets how long a failed primary is skipped.
    pub fn with_primary_retry_interval(mut self, d: Duration) -> Self {
        self.primary_retry_interval = d;
        self
    }

    /// Sets the free bytes a target needs to count as having room.
    pub fn with_ready_headroom(mut self, bytes: u64) -> Self {
        self.ready_headroom = bytes;
        self
    }

    /// Sets the group-commit linger.
    pub fn with_linger(mut self, d: Duration) -> Self {
        self.linger = d;
        self
    }
}

/// A spool operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The object store failed.
    #[error("object store: {0}")]
    Store(String),
    /// The write queue is full.
    #[error("spool queue full")]
    QueueFull,
    /// No target has room (bounded targets full, the primary failing).
    #[error("spool full: {0}")]
    Full(String),
    /// The spool writer stopped.
    #[error("spool stopped")]
    Closed,
    /// The object is gone (replayed and deleted by another relay).
    #[error("spool object {0} not found")]
    NotFound(String),
    /// A spooled object could not be decoded.
    #[error("corrupt spool object {path}: {reason}")]
    Corrupt {
        /// The object.
        path: String,
        /// Why.
        reason: String,
    },
}

/// One place spool objects go: an object store, optionally bounded in bytes.
///
/// Clones share the usage counter, so the writer and the replayer of one target keep
/// one account of its bytes. The account follows this relay's writes and deletes; what
/// happens outside the relay (an operator deleting files or the whole directory,
/// another relay writing into a shared one) is picked up by [`SpoolTarget::recount`],
/// which the replayer runs periodically.
#[derive(Clone)]
pub struct SpoolTarget {
    name: &'static str,
    store: Arc<dyn ObjectStore>,
    capacity: Option<u64>,
    used: Arc<AtomicU64>,
    /// Bytes reserved for PUTs not finished yet (not visible in a listing).
    in_flight: Arc<AtomicU64>,
    /// Bytes ever reserved (monotonic): what was reserved while a recount listed.
    reserved_total: Arc<AtomicU64>,
}

impl std::fmt::Debug for SpoolTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolTarget")
            .field("name", &self.name)
            .field("store", &self.store.to_string())
            .field("capacity", &self.capacity)
            .field("used", &self.used())
            .finish()
    }
}

impl SpoolTarget {
    /// An unbounded target (S3, or a directory whose room is not this relay's concern).
    pub fn unbounded(name: &'static str, store: Arc<dyn ObjectStore>) -> Self {
        SpoolTarget {
            name,
            store,
            capacity: None,
            used: Arc::new(AtomicU64::new(0)),
            in_flight: Arc::new(AtomicU64::new(0)),
            reserved_total: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A target bounded to `capacity` bytes under `spool/`; what is already there
    /// (objects left by an earlier run, or by other relays sharing it) is counted.
    pub async fn bounded(
        name: &'static str,
        store: Arc<dyn ObjectStore>,
        capacity: u64,
    ) -> Result<Self, SpoolError> {
        let used = listed_bytes(store.as_ref()).await?;
        let t = SpoolTarget {
            name,
            store,
            capacity: Some(capacity),
            used: Arc::new(AtomicU64::new(used)),
            in_flight: Arc::new(AtomicU64::new(0)),
            reserved_total: Arc::new(AtomicU64::new(0)),
        };
        t.publish();
        Ok(t)
    }

    /// Measures a bounded target again from a listing of `spool/` and replaces the
    /// account with it; returns the bytes now counted. Unbounded targets are not
    /// listed (their account only feeds a gauge) and keep theirs.
    ///
    /// PUTs in flight while the listing runs are counted whether or not the listing
    /// saw them, so a recount may count an object twice until the next one, never
    /// miss one: the bound is never overfilled because of a recount.
    pub async fn recount(&self) -> Result<u64, SpoolError> {
        if self.capacity.is_none() {
            return Ok(self.used());
        }
        let reserved_before = self.reserved_total.load(Ordering::SeqCst);
        let in_flight_before = self.in_flight.load(Ordering::SeqCst);
        let listed = listed_bytes(self.store.as_ref()).await?;
        let mut before = 0;
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                before = u;
                let reserved_since = self
                    .reserved_total
                    .load(Ordering::SeqCst)
                    .saturating_sub(reserved_before);
                Some(
                    listed
                        .saturating_add(in_flight_before)
                        .saturating_add(reserved_since),
                )
            });
        let now = self.used();
        if before.abs_diff(now) >= 1 << 20 {
            // Someone else changed the directory: files deleted by hand, a directory
            // removed, another relay sharing it.
            tracing::info!(
                target = self.name,
                before,
                now,
                "spool bytes recounted from a listing"
            );
        }
        self.publish();
        Ok(now)
    }

    /// The target's name (`primary`, `fallback`), used in metrics and logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The byte bound, if any.
    pub fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    /// Bytes in the target's objects, as far as this relay knows (0 for an unbounded
    /// target until it writes).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Whether `bytes` more fit.
    pub fn has_room(&self, bytes: u64) -> bool {
        self.capacity
            .is_none_or(|cap| self.used().saturating_add(bytes) <= cap)
    }

    /// Takes `bytes` of the target's room if they fit (atomically: concurrent object
    /// writes never overfill a bounded target together).
    /// A reservation is in flight until [`SpoolTarget::finished`].
    fn reserve(&self, bytes: u64) -> bool {
        // Counted as reserved before it is taken, so a concurrent recount counts it
        // whatever it lists.
        self.reserved_total.fetch_add(bytes, Ordering::SeqCst);
        self.in_flight.fetch_add(bytes, Ordering::SeqCst);
        let ok = match self.capacity {
            None => {
                self.used.fetch_add(bytes, Ordering::SeqCst);
                true
            }
            Some(cap) => self
                .used
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                    u.checked_add(bytes).filter(|n| *n <= cap)
                })
                .is_ok(),
        };
        if ok {
            self.publish();
        } else {
            self.finished(bytes);
        }
        ok
    }

    /// The PUT of a reserved object ended (stored, or failed and released).
    fn finished(&self, bytes: u64) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Accounts for an object of `bytes` deleted from the target.
    pub fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(bytes))
            });
        self.publish();
    }

    fn publish(&self) {
        metrics::gauge!("tern_relay_spool_bytes", "target" => self.name).set(self.used() as f64);
        if let Some(cap) = self.capacity {
            metrics::gauge!("tern_relay_spool_capacity_bytes", "target" => self.name)
                .set(cap as f64);
        }
    }
}

/// Where [`Spool::write`] stored a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// In the primary target.
    Primary,
    /// In the local-disk fallback (the primary was failing or full).
    Fallback,
}

struct Job {
    batch: RawBatch,
    reply: oneshot::Sender<Result<Stored, SpoolError>>,
}

struct Shared {
    primary: SpoolTarget,
    fallback: Option<SpoolTarget>,
    /// The primary failed; skip it until then.
    primary_down_until: Mutex<Option<Instant>>,
    config: SpoolConfig,
}

impl Shared {
    fn primary_usable(&self, now: Instant) -> bool {
        let g = self
            .primary_down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        g.is_none_or(|until| now >= until)
    }

    fn mark_primary_down(&self, now: Instant) {
        *self
            .primary_down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(now + self.config.primary_retry_interval);
        metrics::gauge!("tern_relay_spool_primary_up").set(0.0);
    }

    fn mark_primary_up(&self) {
        let mut g = self
            .primary_down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if g.take().is_some() {
            tracing::info!("spool primary store is back");
        }
        metrics::gauge!("tern_relay_spool_primary_up").set(1.0);
    }

    /// Room for one more object of typical size somewhere.
    fn has_room(&self) -> bool {
        let probe = self.config.ready_headroom;
        (self.primary_usable(Instant::now()) && self.primary.has_room(probe))
            || self.fallback.as_ref().is_some_and(|f| f.has_room(probe))
    }
}

/// Handle to the spool. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    prefix: ObjectPath,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("prefix", &self.prefix)
            .field("primary", &self.shared.primary)
            .field("fallback", &self.shared.fallback)
            .finish()
    }
}

/// The spool prefix of relay `relay`.
pub fn prefix_of(relay: &RelayId) -> ObjectPath {
    ObjectPath::from(format!("spool/{relay}"))
}

/// The handover marker of a prefix: written by a relay that drained with objects left,
/// so other relays replay them at once instead of after `replay_takeover_after`.
pub fn handover_marker(prefix: &ObjectPath) -> ObjectPath {
    prefix.clone().join("HANDOVER")
}

/// Writes the handover marker of `prefix` (JSON: who, when).
pub async fn write_handover(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
    relay: &RelayId,
) -> Result<(), SpoolError> {
    let body = serde_json::json!({ "relay_id": relay.as_str(), "at_ms": now_ms() }).to_string();
    store
        .put(&handover_marker(prefix), body.into_bytes().into())
        .await
        .map(|_| ())
        .map_err(|e| SpoolError::Store(e.to_string()))
}

/// Removes the handover marker of `prefix` (a relay resuming its own prefix).
pub async fn clear_handover(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
) -> Result<(), SpoolError> {
    match store.delete(&handover_marker(prefix)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(SpoolError::Store(e.to_string())),
    }
}

/// The root under which every relay's prefix lives.
pub fn spool_root() -> ObjectPath {
    ObjectPath::from("spool")
}

impl Spool {
    /// Starts the group-commit writer for `relay` on an unbounded `store` without
    /// fallback.
    pub fn spawn(
        store: Arc<dyn ObjectStore>,
        relay: RelayId,
        config: SpoolConfig,
    ) -> (Spool, tokio::task::JoinHandle<()>) {
        Self::spawn_with(
            SpoolTarget::unbounded("primary", store),
            None,
            relay,
            config,
        )
    }

    /// Starts the group-commit writer for `relay` on `primary`, falling back to
    /// `fallback` when the primary fails or is full.
    pub fn spawn_with(
        primary: SpoolTarget,
        fallback: Option<SpoolTarget>,
        relay: RelayId,
        config: SpoolConfig,
    ) -> (Spool, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let prefix = prefix_of(&relay);
        let shared = Arc::new(Shared {
            primary,
            fallback,
            primary_down_until: Mutex::new(None),
            config,
        });
        metrics::gauge!("tern_relay_spool_primary_up").set(1.0);
        let task = tokio::spawn(writer(shared.clone(), relay, prefix.clone(), rx));
        (Spool { tx, shared, prefix }, task)
    }

    /// Writes one batch held as a value (encoded here); returns once the object
    /// holding it is stored, saying where.
    pub async fn write(
        &self,
        batch: impl std::borrow::Borrow<EventBatch>,
    ) -> Result<Stored, SpoolError> {
        let raw = RawBatch::encode(batch.borrow())
            .map_err(|e| SpoolError::Store(format!("encoding: {e}")))?;
        self.write_raw(raw).await
    }

    /// Writes one encoded batch; returns once the object holding it is stored, saying
    /// where.
    pub async fn write_raw(&self, batch: RawBatch) -> Result<Stored, SpoolError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { batch, reply }) {
            Ok(()) => rx.await.unwrap_or(Err(SpoolError::Closed)),
            Err(mpsc::error::TrySendError::Full(_)) => Err(SpoolError::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SpoolError::Closed),
        }
    }

    /// The primary target's store.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.shared.primary.store.clone()
    }

    /// The primary target.
    pub fn primary(&self) -> &SpoolTarget {
        &self.shared.primary
    }

    /// The fallback target, if configured.
    pub fn fallback(&self) -> Option<&SpoolTarget> {
        self.shared.fallback.as_ref()
    }

    /// Whether an object of typical size could be written now: the primary is not
    /// known to be failing and has room, or the fallback has room. `/readyz` reports
    /// this, so a load balancer stops sending devices to a relay that could only
    /// answer `Retry` when the backend fails.
    pub fn has_room(&self) -> bool {
        self.shared.has_room()
    }

    /// This relay's prefix.
    pub fn prefix(&self) -> &ObjectPath {
        &self.prefix
    }
}

static OBJECT_COUNTER: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn object_key(prefix: &ObjectPath) -> ObjectPath {
    let n = OBJECT_COUNTER.fetch_add(1, Ordering::Relaxed) % 1_000_000;
    prefix.clone().join(format!("{:013}-{n:06}.tern", now_ms()))
}

/// The write time encoded in a spool object's key (unix ms), if it is one.
pub fn object_time_ms(path: &ObjectPath) -> Option<u64> {
    let name = path.filename()?;
    let stem = name.strip_suffix(".tern")?;
    let (ms, n) = stem.split_once('-')?;
    if ms.len() != 13 || n.len() != 6 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ms.parse().ok()
}

/// Stores one object in `target`, whose room for it the caller reserved; the
/// reservation is returned if the PUT fails.
async fn put(
    target: &SpoolTarget,
    key: &ObjectPath,
    frame: &Bytes,
    timeout: Duration,
) -> Result<(), SpoolError> {
    let result = match tokio::time::timeout(
        timeout,
        target.store.put(key, PutPayload::from(frame.clone())),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(SpoolError::Store(e.to_string())),
        Err(_) => Err(SpoolError::Store(format!(
            "PUT timed out after {timeout:?}"
        ))),
    };
    if result.is_err() {
        target.release(frame.len() as u64);
    }
    target.finished(frame.len() as u64);
    result
}

/// Stores one object: the primary if usable and not full, else the fallback.
async fn store_object(
    shared: &Shared,
    key: &ObjectPath,
    frame: Bytes,
) -> Result<Stored, SpoolError> {
    let size = frame.len() as u64;
    let timeout = shared.config.store_timeout;
    let why = if !shared.primary_usable(Instant::now()) {
        "primary store failing".to_owned()
    } else if !shared.primary.reserve(size) {
        format!(
            "primary full ({} of {} bytes)",
            shared.primary.used(),
            shared.primary.capacity.unwrap_or(0)
        )
    } else {
        match put(&shared.primary, key, &frame, timeout).await {
            Ok(()) => {
                shared.mark_primary_up();
                return Ok(Stored::Primary);
            }
            Err(e) => {
                tracing::warn!(error = %e, %key, "spool primary store failed");
                metrics::counter!("tern_relay_spool_store_failures_total", "target" => "primary")
                    .increment(1);
                shared.mark_primary_down(Instant::now());
                e.to_string()
            }
        }
    };
    let Some(fallback) = &shared.fallback else {
        return Err(if why.starts_with("primary full") {
            SpoolError::Full(why)
        } else {
            SpoolError::Store(why)
        });
    };
    if !fallback.reserve(size) {
        return Err(SpoolError::Full(format!(
            "{why}; fallback full ({} of {} bytes)",
            fallback.used(),
            fallback.capacity.unwrap_or(0)
        )));
    }
    match put(fallback, key, &frame, timeout).await {
        Ok(()) => {
            metrics::counter!("tern_relay_spool_fallback_objects_total").increment(1);
            Ok(Stored::Fallback)
        }
        Err(e) => {
            metrics::counter!("tern_relay_spool_store_failures_total", "target" => "fallback")
                .increment(1);
            Err(SpoolError::Store(format!("{why}; fallback: {e}")))
        }
    }
}

async fn writer(
    shared: Arc<Shared>,
    relay: RelayId,
    prefix: ObjectPath,
    mut rx: mpsc::Receiver<Job>,
) {
    let config = shared.config.clone();
    let relay = Arc::new(relay);
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1)));
    // One object per group: a slot first, then the batches (see `next_group`).
    while let Some((slot, jobs)) = crate::backend::coalesce::next_group(
        &mut rx,
        &slots,
        config.linger,
        config.max_batches,
        config.max_bytes,
        |j: &Job| j.batch.bytes.len(),
    )
    .await
    {
        let (shared, relay, prefix) = (shared.clone(), relay.clone(), prefix.clone());
        tokio::spawn(async move {
            write_object(&shared, &relay, &prefix, jobs).await;
            drop(slot);
        });
    }
    // Wait for the objects still being written.
    let _ = slots.acquire_many(config.max_in_flight.max(1) as u32).await;
    tracing::debug!("spool writer stopped: every queued batch was written or refused");
}

/// Encodes `jobs` as one object, stores it, and answers every job.
async fn write_object(shared: &Shared, relay: &RelayId, prefix: &ObjectPath, jobs: Vec<Job>) {
    // The batches' bytes spliced in unchanged.
    let batches: Vec<&[u8]> = jobs.iter().map(|j| &j.batch.bytes[..]).collect();
    let frame =
        tern_protocol::codec::encode_forward_request_raw(relay, &batches, &CodecConfig::backend());
    drop(batches);
    let n = jobs.len();
    let result = match frame {
        Ok(frame) => {
            let key = object_key(prefix);
            let r = store_object(shared, &key, Bytes::from(frame)).await;
            if let Ok(place) = &r {
                tracing::debug!(%key, batches = n, ?place, "spooled");
                metrics::counter!("tern_relay_spool_objects_written_total").increment(1);
                metrics::counter!("tern_relay_spool_batches_written_total").increment(n as u64);
            }
            r
        }
        Err(e) => Err(SpoolError::Store(format!("encoding: {e}"))),
    };
    if let Err(e) = &result {
        tracing::warn!(error = %e, batches = n, "spool write failed");
    }
    for job in jobs {
        let _ = job.reply.send(result.clone());
    }
}

/// Bytes of everything under `spool/` (objects of every relay, leases, markers,
/// quarantined objects). A missing directory is empty.
async fn listed_bytes(store: &dyn ObjectStore) -> Result<u64, SpoolError> {
    Ok(store
        .list(Some(&spool_root()))
        .map_ok(|m| m.size)
        .try_collect::<Vec<u64>>()
        .await
        .map_err(|e| SpoolError::Store(e.to_string()))?
        .into_iter()
        .sum())
}

/// Lists the objects under `prefix`, oldest first (by key).
pub async fn list_oldest(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
) -> Result<Vec<ObjectPath>, SpoolError> {
    Ok(list_objects(store, prefix)
        .await?
        .into_iter()
        .map(|m| m.location)
        .collect())
}

/// Lists the spool objects under `prefix` with their sizes, oldest first (by key).
/// Lease files and anything else that is not a spool object are left out.
pub async fn list_objects(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
) -> Result<Vec<ObjectMeta>, SpoolError> {
    let mut metas: Vec<ObjectMeta> = list_all(store, prefix).await?;
    metas.retain(|m| m.location.as_ref().ends_with(".tern"));
    metas.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
    Ok(metas)
}

/// Everything under `prefix`.
pub(crate) async fn list_all(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
) -> Result<Vec<ObjectMeta>, SpoolError> {
    store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|e| SpoolError::Store(e.to_string()))
}

/// The relay prefixes present under `spool/` (for takeover).
pub async fn list_prefixes(store: &dyn ObjectStore) -> Result<Vec<ObjectPath>, SpoolError> {
    let listing = store
        .list_with_delimiter(Some(&spool_root()))
        .await
        .map_err(|e| SpoolError::Store(e.to_string()))?;
    let mut p = listing.common_prefixes;
    p.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    Ok(p)
}

/// Reads and decodes one spooled object.
pub async fn read_object(
    store: &dyn ObjectStore,
    path: &ObjectPath,
) -> Result<ForwardRequest, SpoolError> {
    let bytes = store
        .get(path)
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => SpoolError::NotFound(path.to_string()),
            e => SpoolError::Store(e.to_string()),
        })?
        .bytes()
        .await
        .map_err(|e| SpoolError::Store(e.to_string()))?;
    match Message::from_bytes(&bytes, &CodecConfig::backend()) {
        Ok(Message::ForwardRequest(req)) => Ok(req),
        Ok(other) => Err(SpoolError::Corrupt {
            path: path.to_string(),
            reason: format!("holds a {:?} frame", other.kind()),
        }),
        Err(e) => Err(SpoolError::Corrupt {
            path: path.to_string(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;
    use tern_protocol::{AppId, BatchId, DeviceId, Event, EventBatch, EventBody};

    use super::*;

    fn batch() -> EventBatch {
        EventBatch {
            anonymous_id: None,
            context: None,
            batch_id: BatchId::new_v7(),
            app_id: AppId::new("demo"),
            device_id: DeviceId::random(),
            sdk: Default::default(),
            sent_at_ms: 0,
            attempt: 0,
            events: vec![Event {
                seq: 1,
                ts_ms: 1,
                user_id: None,
                session_id: None,
                body: EventBody::Custom {
                    name: "opened".into(),
                    props: Default::default(),
                },
            }],
            health: Default::default(),
        }
    }

    /// A local directory that can be made to fail: while `broken`, its root is a
    /// regular file, so every write fails (even for root).
    struct Breakable {
        _dir: tempfile::TempDir,
        root: std::path::PathBuf,
        store: Arc<dyn ObjectStore>,
    }

    impl Breakable {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("store");
            std::fs::create_dir(&root).unwrap();
            let store = Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap());
            Breakable {
                _dir: dir,
                root,
                store,
            }
        }
        fn set_broken(&self, broken: bool) {
            if broken {
                std::fs::remove_dir_all(&self.root).unwrap();
                std::fs::write(&self.root, b"not a directory").unwrap();
            } else {
                std::fs::remove_file(&self.root).unwrap();
                std::fs::create_dir(&self.root).unwrap();
            }
        }
    }

    fn quick() -> SpoolConfig {
        SpoolConfig::default()
            .with_linger(Duration::from_millis(1))
            .with_store_timeout(Duration::from_secs(5))
            .with_primary_retry_interval(Duration::from_millis(200))
            .with_ready_headroom(256)
    }

    #[test]
    fn object_keys_carry_their_write_time() {
        let key = object_key(&prefix_of(&RelayId::new("r1")));
        let ms = object_time_ms(&key).unwrap();
        assert!(ms.abs_diff(now_ms()) < 60_000);
        assert_eq!(
            object_time_ms(&ObjectPath::from("spool/r1/0001700000000123-000001.tern")),
            None
        );
        assert_eq!(
            object_time_ms(&ObjectPath::from("spool/r1/0001700000000-000001.tern")),
            Some(1_700_000_000)
        );
        assert_eq!(
            object_time_ms(&ObjectPath::from(
                "spool/r1/0001700000000-000001.tern.lease-000001"
            )),
            None
        );
    }

    #[tokio::test]
    async fn a_bounded_target_counts_what_is_there_and_refuses_to_overfill() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        store
            .put(
                &ObjectPath::from("spool/old/0001700000000-000001.tern"),
                PutPayload::from(vec![0u8; 1000]),
            )
            .await
            .unwrap();
        let target = SpoolTarget::bounded("primary", store, 4000).await.unwrap();
        assert_eq!(target.used(), 1000);
        let (spool, _) = Spool::spawn_with(target.clone(), None, RelayId::new("r1"), quick());
        // Objects are a few hundred bytes: the bound is reached after a handful.
        let mut stored = 0;
        let mut full = None;
        for _ in 0..100 {
            match spool.write(batch()).await {
                Ok(Stored::Primary) => stored += 1,
                Ok(other) => panic!("{other:?}"),
                Err(e) => {
                    full = Some(e);
                    break;
                }
            }
        }
        assert!(stored > 0, "some objects fit");
        assert!(matches!(full, Some(SpoolError::Full(_))), "{full:?}");
        assert!(target.used() <= 4000, "never overfilled: {}", target.used());
        assert!(!spool.has_room());
        // Replay deletes make room again.
        target.release(target.used());
        assert!(spool.has_room());
        assert_eq!(spool.write(batch()).await, Ok(Stored::Primary));
    }

    #[tokio::test]
    async fn a_failing_primary_falls_back_to_local_disk_then_recovers() {
        let primary = Breakable::new();
        let fallback_dir = tempfile::tempdir().unwrap();
        let fallback_store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(fallback_dir.path()).unwrap());
        let fallback = SpoolTarget::bounded("fallback", fallback_store.clone(), 1 << 20)
            .await
            .unwrap();
        let (spool, _) = Spool::spawn_with(
            SpoolTarget::unbounded("primary", primary.store.clone()),
            Some(fallback.clone()),
            RelayId::new("r1"),
            quick(),
        );
        assert_eq!(spool.write(batch()).await, Ok(Stored::Primary));
        primary.set_broken(true);
        assert_eq!(spool.write(batch()).await, Ok(Stored::Fallback));
        // Skipped while marked down: straight to the fallback.
        assert_eq!(spool.write(batch()).await, Ok(Stored::Fallback));
        assert!(spool.has_room(), "the fallback has room");
        let in_fallback = list_oldest(fallback_store.as_ref(), &prefix_of(&RelayId::new("r1")))
            .await
            .unwrap();
        assert_eq!(in_fallback.len(), 2);
        assert!(fallback.used() > 0);
        // Each object decodes to the batch it holds.
        let req = read_object(fallback_store.as_ref(), &in_fallback[0])
            .await
            .unwrap();
        assert_eq!(req.batches.len(), 1);
        primary.set_broken(false);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(spool.write(batch()).await, Ok(Stored::Primary));
    }

    #[tokio::test]
    async fn no_room_anywhere_is_an_error_never_a_silent_drop() {
        let primary = Breakable::new();
        primary.set_broken(true);
        let fallback = SpoolTarget::bounded("fallback", Arc::new(InMemory::new()), 0)
            .await
            .unwrap();
        let (spool, _) = Spool::spawn_with(
            SpoolTarget::unbounded("primary", primary.store.clone()),
            Some(fallback),
            RelayId::new("r1"),
            quick(),
        );
        let e = spool.write(batch()).await.unwrap_err();
        assert!(
            matches!(e, SpoolError::Full(ref m) if m.contains("fallback full")),
            "{e}"
        );
        assert!(!spool.has_room());
        // Without a fallback, the store's failure is the error.
        let (spool, _) = Spool::spawn_with(
            SpoolTarget::unbounded("primary", primary.store.clone()),
            None,
            RelayId::new("r2"),
            quick(),
        );
        assert!(matches!(
            spool.write(batch()).await,
            Err(SpoolError::Store(_))
        ));
        assert!(!spool.has_room());
    }

    #[tokio::test]
    async fn a_recount_follows_files_changed_behind_the_relays_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("spool-root");
        std::fs::create_dir(&root).unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap());
        let target = SpoolTarget::bounded("primary", store.clone(), 1 << 20)
            .await
            .unwrap();
        let (spool, _) = Spool::spawn_with(target.clone(), None, RelayId::new("r1"), quick());
        for _ in 0..3 {
            assert_eq!(spool.write(batch()).await, Ok(Stored::Primary));
        }
        let written = target.used();
        assert!(written > 0);
        assert_eq!(target.recount().await.unwrap(), written, "nothing changed");
        // Another relay sharing the directory wrote an object.
        store
            .put(
                &ObjectPath::from("spool/other/0001700000000-000001.tern"),
                PutPayload::from(vec![0u8; 1000]),
            )
            .await
            .unwrap();
        assert_eq!(target.recount().await.unwrap(), written + 1000);
        // An operator removed the whole directory: the room is back.
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(target.recount().await.unwrap(), 0);
        assert!(spool.has_room());
        // Writing recreates it, and the account follows.
        assert_eq!(spool.write(batch()).await, Ok(Stored::Primary));
        assert!(target.used() > 0);
        assert_eq!(target.recount().await.unwrap(), target.used());
        // An unbounded target is not listed.
        let unbounded = SpoolTarget::unbounded("primary", store);
        assert_eq!(unbounded.recount().await.unwrap(), 0);
    }
}
