//! The spool: where batches go when the backend cannot take them, so they can be
//! acknowledged as durable (`Accepted{spooled}`) and replayed later.
//!
//! Writes are group-committed: batches that arrive together (within `linger`, up to
//! `max_batches` / `max_bytes`) are encoded as one `ForwardRequest` frame (the backend
//! codec, LZ4-compressed) and written with **one object PUT**; every batch in it is
//! acknowledged only after the PUT returned. A failed PUT fails every batch in it
//! (the caller answers `Retry`: the device keeps the data).
//!
//! Storage is any [`object_store::ObjectStore`]: a local directory by default, S3 or
//! another store in production. Keys are `spool/<relay id>/<unix ms, 13 digits>-<n, 6
//! digits>.tern`, so listing a relay's prefix gives its objects oldest first, and any
//! relay can replay any prefix (see [`crate::replay`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tern_protocol::{CodecConfig, EventBatch, ForwardRequest, Message, RelayId};
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
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            linger: Duration::from_millis(10),
            max_batches: 4096,
            max_bytes: 16 * 1024 * 1024,
            queue_capacity: 16_384,
        }
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
    /// The spool writer stopped.
    #[error("spool stopped")]
    Closed,
    /// A spooled object could not be decoded.
    #[error("corrupt spool object {path}: {reason}")]
    Corrupt {
        /// The object.
        path: String,
        /// Why.
        reason: String,
    },
}

struct Job {
    batch: EventBatch,
    bytes: usize,
    reply: oneshot::Sender<Result<(), SpoolError>>,
}

/// Handle to the spool. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Job>,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The spool prefix of relay `relay`.
pub fn prefix_of(relay: &RelayId) -> ObjectPath {
    ObjectPath::from(format!("spool/{relay}"))
}

impl Spool {
    /// Starts the group-commit writer for `relay` on `store`.
    pub fn spawn(
        store: Arc<dyn ObjectStore>,
        relay: RelayId,
        config: SpoolConfig,
    ) -> (Spool, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let prefix = prefix_of(&relay);
        let task = tokio::spawn(writer(store.clone(), relay, prefix.clone(), config, rx));
        (Spool { tx, store, prefix }, task)
    }

    /// Writes one batch; returns once the object holding it is stored.
    pub async fn write(&self, batch: EventBatch, bytes: usize) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job {
            batch,
            bytes,
            reply,
        }) {
            Ok(()) => rx.await.unwrap_or(Err(SpoolError::Closed)),
            Err(mpsc::error::TrySendError::Full(_)) => Err(SpoolError::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SpoolError::Closed),
        }
    }

    /// The store the spool writes to.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// This relay's prefix.
    pub fn prefix(&self) -> &ObjectPath {
        &self.prefix
    }
}

static OBJECT_COUNTER: AtomicU64 = AtomicU64::new(0);

fn object_key(prefix: &ObjectPath) -> ObjectPath {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = OBJECT_COUNTER.fetch_add(1, Ordering::Relaxed) % 1_000_000;
    prefix.clone().join(format!("{ms:013}-{n:06}.tern"))
}

async fn writer(
    store: Arc<dyn ObjectStore>,
    relay: RelayId,
    prefix: ObjectPath,
    config: SpoolConfig,
    mut rx: mpsc::Receiver<Job>,
) {
    while let Some(first) = rx.recv().await {
        let jobs = crate::coalesce::collect(
            &mut rx,
            first,
            config.linger,
            config.max_batches,
            config.max_bytes,
            |j: &Job| j.bytes,
        )
        .await;
        let frame = Message::ForwardRequest(ForwardRequest {
            relay_id: relay.clone(),
            batches: jobs.iter().map(|j| j.batch.clone()).collect(),
        })
        .encode(&CodecConfig::backend());
        let result = match frame {
            Ok(frame) => {
                let key = object_key(&prefix);
                let n = jobs.len();
                match store.put(&key, PutPayload::from(Bytes::from(frame))).await {
                    Ok(_) => {
                        tracing::debug!(%key, batches = n, "spooled");
                        metrics::counter!("tern_relay_spool_objects_written_total").increment(1);
                        metrics::counter!("tern_relay_spool_batches_written_total")
                            .increment(n as u64);
                        Ok(())
                    }
                    Err(e) => Err(SpoolError::Store(e.to_string())),
                }
            }
            Err(e) => Err(SpoolError::Store(format!("encoding: {e}"))),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, batches = jobs.len(), "spool write failed");
        }
        for job in jobs {
            let _ = job.reply.send(result.clone());
        }
    }
}

/// Lists the objects under `prefix`, oldest first (by key).
pub async fn list_oldest(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
) -> Result<Vec<ObjectPath>, SpoolError> {
    let mut paths: Vec<ObjectPath> = store
        .list(Some(prefix))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| SpoolError::Store(e.to_string()))?;
    paths.retain(|p| p.as_ref().ends_with(".tern"));
    paths.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    Ok(paths)
}

/// Reads and decodes one spooled object.
pub async fn read_object(
    store: &dyn ObjectStore,
    path: &ObjectPath,
) -> Result<ForwardRequest, SpoolError> {
    let bytes = store
        .get(path)
        .await
        .map_err(|e| SpoolError::Store(e.to_string()))?
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
