//! The replayer: drains the spool into the backend once it is healthy again.
//!
//! While the circuit breaker is closed, it lists the spool prefix oldest first, reads
//! one object, forwards its batches (paced by the adaptive [`ReplayPacer`], which
//! backs off when backend latency rises or requests fail), and deletes the object only
//! after **every** batch in it was stored (or refused permanently) by the backend. A
//! failure leaves the object in place and the replayer backs off; the backend dedupes
//! whatever part of it had already arrived. State lives only in the object store, so a
//! restarted relay resumes where it stopped, and any relay can replay any prefix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::watch;

use crate::breaker::BreakerState;
use crate::forward::{Forwarder, Verdict};
use crate::ingest::Ingest;
use crate::pacer::{PacerConfig, ReplayPacer};
use crate::spool::{list_oldest, read_object, SpoolError};

/// Replay settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReplayConfig {
    /// Adaptive pacing (batches per second).
    pub pacer: PacerConfig,
    /// How often an idle replayer looks again.
    pub idle_poll: Duration,
    /// Pause after a failed replay attempt.
    pub failure_backoff: Duration,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            pacer: PacerConfig::default()
                .with_max_rate(5_000.0)
                .with_min_rate(20.0),
            idle_poll: Duration::from_millis(250),
            failure_backoff: Duration::from_secs(1),
        }
    }
}

/// Drains one spool prefix.
pub struct Replayer {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    forwarder: Forwarder,
    ingest: Ingest,
    config: ReplayConfig,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// What one pass over the spool did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayPass {
    /// Objects fully delivered and deleted.
    pub objects: u64,
    /// Batches delivered (stored or refused permanently by the backend).
    pub batches: u64,
    /// True if a failure stopped the pass.
    pub failed: bool,
}

impl Replayer {
    /// A replayer for `prefix` of `store`, forwarding with `forwarder` while `ingest`'s
    /// breaker is closed.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        forwarder: Forwarder,
        ingest: Ingest,
        config: ReplayConfig,
    ) -> Self {
        Replayer {
            store,
            prefix,
            forwarder,
            ingest,
            config,
        }
    }

    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut pacer = ReplayPacer::new(self.config.pacer.clone(), Instant::now());
        loop {
            if *stop.borrow() {
                return;
            }
            let wait = if self.ingest.breaker_state() != BreakerState::Closed {
                self.config.idle_poll
            } else {
                match self.pass(&mut pacer).await {
                    Ok(p) if p.failed => self.config.failure_backoff,
                    Ok(p) if p.objects == 0 => self.config.idle_poll,
                    Ok(_) => Duration::ZERO,
                    Err(e) => {
                        tracing::warn!(error = %e, "replay pass failed");
                        self.config.failure_backoff
                    }
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// One pass: replays the oldest objects until one fails or none is left (at most
    /// 64 objects per pass, so the breaker is re-checked regularly).
    pub async fn pass(&self, pacer: &mut ReplayPacer) -> Result<ReplayPass, SpoolError> {
        let mut out = ReplayPass::default();
        let objects = list_oldest(self.store.as_ref(), &self.prefix).await?;
        metrics::gauge!("tern_relay_spool_objects").set(objects.len() as f64);
        for path in objects.into_iter().take(64) {
            let request = match read_object(self.store.as_ref(), &path).await {
                Ok(r) => r,
                Err(e @ SpoolError::Corrupt { .. }) => {
                    // Kept for an operator; never deleted unread.
                    tracing::error!(error = %e, "skipping a corrupt spool object");
                    metrics::counter!("tern_relay_spool_corrupt_objects_total").increment(1);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut sends = Vec::with_capacity(request.batches.len());
            for batch in request.batches {
                loop {
                    let now = Instant::now();
                    if pacer.poll_send(now) {
                        break;
                    }
                    let next = pacer
                        .next_send_at(now)
                        .unwrap_or(now + Duration::from_millis(100));
                    tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
                }
                let forwarder = self.forwarder.clone();
                let bytes = tern_protocol::codec::encoded_len(&batch).unwrap_or(0);
                sends.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let verdict = forwarder.forward(batch, bytes).await;
                    (verdict, started.elapsed())
                }));
            }
            let mut all_done = true;
            for send in sends {
                let (verdict, latency) = send.await.unwrap_or((
                    Verdict::Failed(crate::forward::ForwardError::Closed),
                    Duration::ZERO,
                ));
                let done = matches!(verdict, Verdict::Stored | Verdict::Rejected { .. });
                pacer.handle_result(latency, done, Instant::now());
                if done {
                    out.batches += 1;
                } else {
                    all_done = false;
                }
            }
            if !all_done {
                out.failed = true;
                return Ok(out);
            }
            self.store
                .delete(&path)
                .await
                .map_err(|e| SpoolError::Store(e.to_string()))?;
            out.objects += 1;
            metrics::counter!("tern_relay_spool_objects_replayed_total").increment(1);
        }
        Ok(out)
    }
}
