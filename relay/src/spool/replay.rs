//! The replayer: drains the spool into the backend once it is healthy again.
//!
//! While the circuit breaker is closed, it lists its relay's prefix oldest first and,
//! for each object, takes a [`crate::spool::lease`] (so no other relay replays it at the same
//! time), reads it, forwards its batches (paced by the adaptive [`ReplayPacer`], which
//! backs off when backend latency rises or requests fail), and deletes the object only
//! after **every** batch in it was stored (or refused permanently) by the backend. A
//! failure leaves the object in place and the replayer backs off; the backend dedupes
//! whatever part of it had already arrived. State lives only in the object store, so a
//! restarted relay resumes where it stopped.
//!
//! **Corrupt objects** (undecodable) are quarantined: moved aside to `<key>.corrupt`
//! under a lease, counted in `tern_relay_spool_objects_quarantined_total` and in
//! [`ReplayProgress`], never deleted and never read again — so a bad object can stall
//! neither replay nor the breaker probe that replay needs when no device is sending. An
//! object that cannot even be moved aside is skipped for the life of the process.
//!
//! **Depth while the backend is down.** The spool's depth and lag (gauges and
//! [`ReplayProgress`]) are refreshed in every state — breaker open, replay held by an
//! operator — because that is when operators need them. A bounded target's byte
//! account is also measured again from a listing every `recount_interval`, so files
//! removed behind the relay's back (an operator clearing the directory) free room and
//! readiness at once.
//!
//! **Takeover.** With `takeover_after` set, a replayer whose own prefix is empty also
//! looks at the other relays' prefixes under `spool/` and replays objects older than
//! that — objects their own relay has not drained (it died, or its replay is stuck).
//! The lease keeps two relays off one object; the backend's dedupe makes the rare
//! overlap harmless.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::sync::watch;

use crate::backend::breaker::{BreakerState, CallOutcome};
use crate::backend::forward::{ForwardError, Forwarder, Verdict};
use crate::backend::sharedbreaker::SharedBreaker;
use crate::policy::controls::Controls;
use crate::spool::lease::{self, Acquire};
use crate::spool::pacer::{PacerConfig, ReplayPacer};
use crate::spool::{list_all, list_prefixes, object_time_ms, read_object, SpoolError, SpoolTarget};

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
    /// How long a replay lease lasts.
    pub lease_ttl: Duration,
    /// Replay other relays' objects older than this (`None`: only this relay's own).
    pub takeover_after: Option<Duration>,
    /// How often a bounded target's byte account is measured again from a listing
    /// (less often when listing takes long: at most 5% of the time).
    pub recount_interval: Duration,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            pacer: PacerConfig::default()
                .with_max_rate(5_000.0)
                .with_min_rate(20.0),
            idle_poll: Duration::from_millis(250),
            failure_backoff: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(60),
            takeover_after: None,
            recount_interval: Duration::from_secs(5),
        }
    }
}

impl ReplayConfig {
    /// Enables takeover of other relays' objects older than `after`.
    pub fn with_takeover_after(mut self, after: Option<Duration>) -> Self {
        self.takeover_after = after;
        self
    }

    /// Sets the lease lifetime.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets how often an idle replayer looks again.
    pub fn with_idle_poll(mut self, d: Duration) -> Self {
        self.idle_poll = d;
        self
    }

    /// Sets how often a bounded target's byte account is measured again.
    pub fn with_recount_interval(mut self, d: Duration) -> Self {
        self.recount_interval = d;
        self
    }
}

/// What the replayers have done, shared with the admin API (clones share state).
#[derive(Clone, Debug, Default)]
pub struct ReplayStatus {
    inner: Arc<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    /// Per spool target: depth at its last listing.
    depth: std::sync::Mutex<std::collections::BTreeMap<String, Depth>>,
    batches_replayed: AtomicU64,
    objects_quarantined: AtomicU64,
    objects_replayed: AtomicU64,
    objects_taken_over: AtomicU64,
    rate_milli: AtomicU64,
}

/// One target's depth at its last listing.
#[derive(Clone, Copy, Debug, Default)]
struct Depth {
    objects: u64,
    lag_ms: u64,
    quarantined: u64,
}

/// A snapshot of [`ReplayStatus`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayProgress {
    /// Objects waiting in this relay's own prefix at the last pass (all targets).
    pub objects_waiting: u64,
    /// Age of the oldest waiting object at the last pass (oldest of all targets),
    /// milliseconds.
    pub lag_ms: u64,
    /// Batches replayed since start.
    pub batches_replayed: u64,
    /// Objects replayed and deleted since start.
    pub objects_replayed: u64,
    /// Of those, objects of other relays' prefixes.
    pub objects_taken_over: u64,
    /// Corrupt objects this process moved aside (`<key>.corrupt`) since start.
    pub objects_quarantined: u64,
    /// Quarantined objects lying in this relay's prefix at the last listing (all
    /// targets): kept for an operator to inspect and remove.
    pub quarantined_waiting: u64,
    /// The pacer's current rate, batches per second (rounded down).
    pub rate_per_sec: u64,
}

impl ReplayStatus {
    /// The counters now.
    pub fn progress(&self) -> ReplayProgress {
        let i = &self.inner;
        let (objects_waiting, lag_ms, quarantined_waiting) = i
            .depth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .fold((0, 0, 0), |(n, lag, q), d| {
                (n + d.objects, lag.max(d.lag_ms), q + d.quarantined)
            });
        ReplayProgress {
            objects_waiting,
            lag_ms,
            quarantined_waiting,
            objects_quarantined: i.objects_quarantined.load(Ordering::Relaxed),
            batches_replayed: i.batches_replayed.load(Ordering::Relaxed),
            objects_replayed: i.objects_replayed.load(Ordering::Relaxed),
            objects_taken_over: i.objects_taken_over.load(Ordering::Relaxed),
            rate_per_sec: i.rate_milli.load(Ordering::Relaxed) / 1000,
        }
    }
}

/// Drains one spool prefix (and, with takeover, the stale objects of others).
pub struct Replayer {
    target: SpoolTarget,
    prefix: ObjectPath,
    holder: String,
    forwarder: Forwarder,
    breaker: SharedBreaker,
    config: ReplayConfig,
    /// Batches delivered apart from their object (by a probe, or by a pass that kept
    /// the object for its other batches), not to be sent again with it. At most
    /// [`DELIVERED_KEPT`]; beyond that they are sent again (the same batch ids).
    probed: std::sync::Mutex<std::collections::HashSet<tern_protocol::BatchId>>,
    /// Objects kept for a batch the sink refused for good, with when to try them
    /// again ([`STUCK_RETRY`]): skipped until then, so they cannot fill every pass.
    stuck: std::sync::Mutex<std::collections::HashMap<ObjectPath, std::time::Instant>>,
    /// Corrupt objects that could not be moved aside: skipped until the process ends.
    unmovable: std::sync::Mutex<std::collections::HashSet<ObjectPath>>,
    controls: Controls,
    status: ReplayStatus,
}

/// How long an object kept for a refused batch waits before it is tried again.
const STUCK_RETRY: Duration = Duration::from_secs(30);

/// Most batches remembered as delivered apart from their object.
const DELIVERED_KEPT: usize = 65_536;

/// Most corrupt objects remembered as unmovable (each is skipped; beyond this, the
/// set is forgotten and they are examined again).
const UNMOVABLE_KEPT: usize = 4096;

/// Suffix of a quarantined (corrupt) spool object.
pub const QUARANTINE_SUFFIX: &str = ".corrupt";

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("target", &self.target.name())
            .field("prefix", &self.prefix)
            .field("holder", &self.holder)
            .finish()
    }
}

/// What one pass over the spool did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayPass {
    /// Objects fully delivered and deleted.
    pub objects: u64,
    /// Of those, objects of other relays' prefixes.
    pub taken_over: u64,
    /// Batches delivered (stored or refused permanently by the backend).
    pub batches: u64,
    /// Objects skipped because another relay holds their lease.
    pub leased_elsewhere: u64,
    /// Objects kept because the sink refused one of their batches for good (a
    /// Kafka record refused by its topic and by the dead letter topic): never
    /// dropped, retried by later passes, and not in the way of the objects behind them.
    pub stuck: u64,
    /// True if a failure stopped the pass.
    pub failed: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Replayer {
    /// A replayer for `prefix` of an unbounded `store`, forwarding with `forwarder`
    /// while `breaker` (the relay's, [`crate::run::Services::breaker`]) is closed.
    /// Its leases name it by the prefix's last segment (the relay id).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        forwarder: Forwarder,
        breaker: SharedBreaker,
        config: ReplayConfig,
    ) -> Self {
        Self::on_target(
            SpoolTarget::unbounded("primary", store),
            prefix,
            forwarder,
            breaker,
            config,
        )
    }

    /// A replayer for `prefix` of `target`, keeping the target's byte account.
    pub fn on_target(
        target: SpoolTarget,
        prefix: ObjectPath,
        forwarder: Forwarder,
        breaker: SharedBreaker,
        config: ReplayConfig,
    ) -> Self {
        let holder = prefix.filename().unwrap_or("relay").to_owned();
        Replayer {
            target,
            prefix,
            holder,
            forwarder,
            breaker,
            config,
            probed: Default::default(),
            stuck: Default::default(),
            unmovable: Default::default(),
            controls: Controls::default(),
            status: ReplayStatus::default(),
        }
    }

    /// Obeys the operator switches in `controls`: replay waits while paused or while
    /// forwarding is degraded (it calls nobody then, not even a breaker probe), and
    /// the operator's rate cap replaces the configured maximum.
    pub fn with_controls(mut self, controls: Controls) -> Self {
        self.controls = controls;
        self
    }

    /// Reports progress into `status`.
    pub fn with_status(mut self, status: ReplayStatus) -> Self {
        self.status = status;
        self
    }

    /// Applies the operator's rate cap to `pacer` when the switches changed.
    fn follow_controls(&self, pacer: &mut ReplayPacer, seen: &mut Option<u64>) {
        let generation = self.controls.generation();
        if *seen == Some(generation) {
            return;
        }
        *seen = Some(generation);
        let max = self
            .controls
            .replay_max_rate()
            .map_or(self.config.pacer.max_rate, |r| r as f64);
        if let Err(e) = pacer.set_max_rate(max) {
            tracing::warn!(error = %e, "replay rate cap not applied");
        }
    }

    /// Names the lease holder (default: the prefix's last segment).
    pub fn with_holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    fn store(&self) -> &dyn ObjectStore {
        self.target.store().as_ref()
    }

    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut pacer = ReplayPacer::new(self.config.pacer.clone(), Instant::now().into_std());
        let mut seen = None;
        let mut held_since_listing = Instant::now() - Duration::from_secs(1);
        let mut next_recount = Instant::now() + self.config.recount_interval;
        loop {
            if *stop.borrow() {
                return;
            }
            if Instant::now() >= next_recount {
                // In every state: files removed behind the relay's back free room now.
                let started = Instant::now();
                if let Err(e) = self.target.recount().await {
                    tracing::debug!(error = %e, "recounting the spool's bytes failed");
                }
                // A huge directory is listed less often: at most 5% of the time.
                next_recount = Instant::now()
                    + self
                        .config
                        .recount_interval
                        .max(started.elapsed().saturating_mul(20));
            }
            self.follow_controls(&mut pacer, &mut seen);
            self.status
                .inner
                .rate_milli
                .store((pacer.rate() * 1000.0) as u64, Ordering::Relaxed);
            if !self.controls.replay_allowed() {
                // Held: nothing is replayed, but the depth stays current (once a second).
                if held_since_listing.elapsed() >= Duration::from_secs(1) {
                    self.refresh_depth().await;
                    held_since_listing = Instant::now();
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.config.idle_poll) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let flowing = matches!(
                self.breaker.state(),
                BreakerState::Closed | BreakerState::ForcedClosed
            );
            let wait = if !flowing {
                // Without live traffic nothing would ever probe the backend and the
                // spool would wait forever: probe with the oldest spooled batch. (The
                // probe's listing also keeps the depth current during the outage.)
                self.probe().await;
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

    /// Publishes the spool depth of this relay's prefix (objects waiting, age of the
    /// oldest) as metrics and in the shared status.
    fn report_depth(&self, listing: &[ObjectMeta], now: u64) {
        let own = objects_of(listing);
        let quarantined = listing
            .iter()
            .filter(|m| m.location.as_ref().ends_with(QUARANTINE_SUFFIX))
            .count() as u64;
        let t = self.target.name();
        metrics::gauge!("tern_relay_spool_objects", "target" => t).set(own.len() as f64);
        metrics::gauge!("tern_relay_spool_quarantined_objects", "target" => t)
            .set(quarantined as f64);
        let lag = own
            .first()
            .and_then(|m| object_time_ms(&m.location))
            .map_or(0.0, |ms| now.saturating_sub(ms) as f64 / 1000.0);
        metrics::gauge!("tern_relay_replay_lag_seconds", "target" => t).set(lag);
        self.status
            .inner
            .depth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                t.to_string(),
                Depth {
                    objects: own.len() as u64,
                    lag_ms: (lag * 1000.0) as u64,
                    quarantined,
                },
            );
    }

    /// Lists this relay's prefix only to report its depth (replay held by an operator:
    /// the spool still grows and operators must see it).
    async fn refresh_depth(&self) {
        match list_all(self.store(), &self.prefix).await {
            Ok(listing) => self.report_depth(&listing, now_ms()),
            Err(e) => tracing::debug!(error = %e, "listing the spool for its depth failed"),
        }
    }

    /// Whether `path` is passed over now: unmovable, or kept for a refused batch and not
    /// due again yet.
    fn is_skipped(&self, path: &ObjectPath) -> bool {
        if self
            .unmovable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(path)
        {
            return true;
        }
        let mut stuck = self.stuck.lock().unwrap_or_else(|p| p.into_inner());
        match stuck.get(path) {
            Some(until) if std::time::Instant::now() < *until => true,
            Some(_) => {
                stuck.remove(path);
                false
            }
            None => false,
        }
    }

    /// Moves the corrupt object `path` (whose lease of `generation` this replayer
    /// holds) aside to `<key>.corrupt`, counts it, and releases the lease. An object
    /// that cannot be moved is remembered and skipped from then on.
    async fn quarantine(&self, path: &ObjectPath, generation: u32, e: &SpoolError) {
        let aside = ObjectPath::from(format!("{path}{QUARANTINE_SUFFIX}"));
        match self.store().rename(path, &aside).await {
            Ok(()) => {
                tracing::error!(
                    error = %e,
                    object = %path,
                    moved_to = %aside,
                    "quarantined a corrupt spool object: kept for inspection, not replayed"
                );
                self.status
                    .inner
                    .objects_quarantined
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tern_relay_spool_objects_quarantined_total").increment(1);
                metrics::counter!("tern_relay_spool_corrupt_objects_total").increment(1);
            }
            Err(move_error) => {
                tracing::error!(
                    error = %e,
                    %move_error,
                    object = %path,
                    "a corrupt spool object could not be moved aside: skipped until restart"
                );
                metrics::counter!("tern_relay_spool_corrupt_objects_total").increment(1);
                let mut skip = self.unmovable.lock().unwrap_or_else(|p| p.into_inner());
                if skip.len() >= UNMOVABLE_KEPT {
                    skip.clear();
                }
                skip.insert(path.clone());
            }
        }
        let _ = lease::release(self.store(), path, generation).await;
    }

    /// The first batch of the oldest readable object in `listing` (corrupt objects on
    /// the way are quarantined; objects leased elsewhere or gone are passed over).
    async fn oldest_batch(&self, listing: &[ObjectMeta]) -> Option<tern_protocol::EventBatch> {
        for meta in objects_of(listing).into_iter().take(PROBE_SCAN) {
            let path = &meta.location;
            if self.is_skipped(path) {
                continue;
            }
            match read_object(self.store(), path).await {
                Ok(request) => match request.batches.into_iter().next() {
                    Some(batch) => return Some(batch),
                    None => continue,
                },
                Err(e @ SpoolError::Corrupt { .. }) => {
                    // Quarantined under a lease, like replay would: another relay may
                    // be taking this prefix over.
                    match self.lease(path, listing).await {
                        Ok(Acquire::Acquired(l)) => self.quarantine(path, l.generation, &e).await,
                        Ok(Acquire::Held { .. }) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "leasing a corrupt object failed");
                            return None;
                        }
                    }
                }
                Err(SpoolError::NotFound(_)) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "reading a spool object to probe failed");
                    return None;
                }
            }
        }
        None
    }

    /// Counts one replayed batch as delivered (in the pass, the status and the metric).
    fn note_replayed(&self, out: &mut ReplayPass) {
        out.batches += 1;
        self.status
            .inner
            .batches_replayed
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tern_relay_replay_batches_total").increment(1);
    }

    /// When the breaker admits a call (a half-open probe is due), forwards the oldest
    /// spooled batch of this relay's prefix and reports the result to the breaker, so
    /// the breaker closes once the backend is back even if no device is sending. A batch
    /// the probe delivered is not sent again with its object.
    pub async fn probe(&self) {
        let listing = match list_all(self.store(), &self.prefix).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "listing the spool to probe failed");
                return;
            }
        };
        self.report_depth(&listing, now_ms());
        if objects_of(&listing).is_empty() {
            return;
        }
        // The permit first: objects are read only when a probe is due.
        let Some(ticket) = self.breaker.try_permit() else {
            return;
        };
        let Some(batch) = self.oldest_batch(&listing).await else {
            self.breaker.report(ticket, CallOutcome::Cancelled);
            return;
        };
        let id = batch.batch_id;
        let started = Instant::now();
        let verdict = self.forwarder.forward(batch).await;
        let latency = started.elapsed();
        if matches!(verdict, Verdict::Stored | Verdict::Rejected { .. }) {
            self.probed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id);
        }
        let outcome = match verdict {
            Verdict::Stored | Verdict::Rejected { .. } => CallOutcome::Success { latency },
            Verdict::Failed(
                ForwardError::QueueFull
                | ForwardError::Closed
                | ForwardError::Encode(_)
                | ForwardError::Refused(_),
            ) => CallOutcome::Cancelled,
            Verdict::Failed(_) => CallOutcome::Failure { latency },
        };
        tracing::debug!(?outcome, "replayer probed the backend");
        metrics::counter!("tern_relay_replay_probes_total").increment(1);
        self.breaker.report(ticket, outcome);
    }

    /// One pass: replays this relay's oldest objects until one fails or none is left
    /// (at most 64 objects per pass, so the breaker is re-checked regularly); then,
    /// with takeover enabled and nothing of its own left, other relays' stale objects.
    pub async fn pass(&self, pacer: &mut ReplayPacer) -> Result<ReplayPass, SpoolError> {
        let mut out = ReplayPass::default();
        let now = now_ms();
        let listing = list_all(self.store(), &self.prefix).await?;
        self.report_depth(&listing, now);
        let own: Vec<&ObjectMeta> = objects_of(&listing)
            .into_iter()
            .filter(|m| !self.is_skipped(&m.location))
            .collect();
        if let Err(e) = lease::sweep_orphans(self.store(), &listing, now).await {
            tracing::debug!(error = %e, "sweeping orphaned leases failed");
        }
        for meta in own.iter().take(64) {
            if !self.controls.replay_allowed() {
                // Paused (or forwarding degraded) by an operator: stop between objects.
                return Ok(out);
            }
            if self.replay_one(meta, &listing, pacer, &mut out).await? {
                return Ok(out);
            }
        }
        if !own.is_empty() {
            return Ok(out);
        }
        let Some(after) = self.config.takeover_after else {
            return Ok(out);
        };
        let cutoff = now.saturating_sub(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        let mut budget = 64usize;
        for prefix in list_prefixes(self.store()).await? {
            if prefix == self.prefix {
                continue;
            }
            let listing = list_all(self.store(), &prefix).await?;
            // A drained relay handed its prefix over: everything in it is due now.
            let marker = crate::spool::handover_marker(&prefix);
            let handed_over = listing.iter().any(|m| m.location == marker);
            let stale: Vec<&ObjectMeta> = objects_of(&listing)
                .into_iter()
                .filter(|m| !self.is_skipped(&m.location))
                .filter(|m| {
                    handed_over || object_time_ms(&m.location).is_some_and(|ms| ms <= cutoff)
                })
                .collect();
            for meta in stale {
                if budget == 0 {
                    return Ok(out);
                }
                budget -= 1;
                let before = out.objects;
                if self.replay_one(meta, &listing, pacer, &mut out).await? {
                    return Ok(out);
                }
                if out.objects > before {
                    out.taken_over += 1;
                    self.status
                        .inner
                        .objects_taken_over
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("tern_relay_spool_objects_taken_over_total").increment(1);
                    tracing::info!(object = %meta.location, "replayed another relay's object");
                }
            }
        }
        Ok(out)
    }

    /// Tries to take the lease of the object at `path` for this relay (`listing`: the
    /// prefix as listed, holding the object's lease generations).
    async fn lease(
        &self,
        path: &ObjectPath,
        listing: &[ObjectMeta],
    ) -> Result<Acquire, SpoolError> {
        let generations = lease::generations(listing, path);
        lease::acquire(
            self.store(),
            path,
            &generations,
            &self.holder,
            self.config.lease_ttl,
            now_ms(),
        )
        .await
    }

    /// Replays one object under a lease. Returns `true` when a failure should end the
    /// pass.
    async fn replay_one(
        &self,
        meta: &ObjectMeta,
        listing: &[ObjectMeta],
        pacer: &mut ReplayPacer,
        out: &mut ReplayPass,
    ) -> Result<bool, SpoolError> {
        let path = &meta.location;
        let lease = match self.lease(path, listing).await? {
            Acquire::Acquired(l) => l,
            Acquire::Held { holder, .. } => {
                tracing::debug!(object = %path, %holder, "leased by another relay; skipped");
                out.leased_elsewhere += 1;
                return Ok(false);
            }
        };
        let request = match read_object(self.store(), path).await {
            Ok(r) => r,
            Err(e @ SpoolError::Corrupt { .. }) => {
                // Kept for an operator (never deleted unread), but moved out of the
                // way so it cannot stall replay: `<key>.corrupt` is not listed again.
                self.quarantine(path, lease.generation, &e).await;
                return Ok(false);
            }
            // Replayed and deleted by someone else since the listing: drop the lease
            // just taken on nothing.
            Err(SpoolError::NotFound(_)) => {
                let _ = lease::release(self.store(), path, lease.generation).await;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let mut sends = Vec::with_capacity(request.batches.len());
        for batch in request.batches {
            let probed = self
                .probed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&batch.batch_id);
            if probed {
                // Delivered by the probe already: replayed all the same.
                self.note_replayed(out);
                continue;
            }
            loop {
                let now = Instant::now().into_std();
                if pacer.poll_send(now) {
                    break;
                }
                let next = pacer
                    .next_send_at(now)
                    .unwrap_or(now + Duration::from_millis(100));
                tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
            }
            let forwarder = self.forwarder.clone();
            let id = batch.batch_id;
            sends.push(tokio::spawn(async move {
                let started = Instant::now();
                let verdict = forwarder.forward(batch).await;
                (id, verdict, started.elapsed())
            }));
        }
        let mut delivered = Vec::new();
        let mut all_done = true;
        let mut only_refused = true;
        for send in sends {
            let Ok((id, verdict, latency)) = send.await else {
                all_done = false;
                only_refused = false;
                continue;
            };
            let done = matches!(verdict, Verdict::Stored | Verdict::Rejected { .. });
            // A refusal for good is the sink's answer, no sign of its health: paced
            // as an answer.
            let refused = matches!(verdict, Verdict::Failed(ForwardError::Refused(_)));
            pacer.handle_result(latency, done || refused, Instant::now().into_std());
            if done {
                self.note_replayed(out);
                delivered.push(id);
            } else {
                all_done = false;
                only_refused &= refused;
            }
        }
        if !all_done {
            // The object stays; what of it was delivered is not sent again with it.
            let mut kept = self.probed.lock().unwrap_or_else(|p| p.into_inner());
            for id in delivered {
                if kept.len() >= DELIVERED_KEPT {
                    break;
                }
                kept.insert(id);
            }
            drop(kept);
            if only_refused {
                // Retried by the next pass; the objects behind it go on now.
                tracing::debug!(object = %path, "object kept: the sink refused a batch of it");
                let mut stuck = self.stuck.lock().unwrap_or_else(|p| p.into_inner());
                if stuck.len() >= UNMOVABLE_KEPT {
                    stuck.clear();
                }
                stuck.insert(path.clone(), std::time::Instant::now() + STUCK_RETRY);
                out.stuck += 1;
                return Ok(false);
            }
            out.failed = true;
            return Ok(true);
        }
        match self.store().delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(SpoolError::Store(e.to_string())),
        }
        self.target.release(meta.size);
        if let Err(e) = lease::release(self.store(), path, lease.generation).await {
            tracing::debug!(error = %e, "releasing a lease failed; it will be swept");
        }
        out.objects += 1;
        self.status
            .inner
            .objects_replayed
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tern_relay_spool_objects_replayed_total").increment(1);
        Ok(false)
    }
}

/// Objects a probe looks through for a readable batch (corrupt ones are quarantined on
/// the way).
const PROBE_SCAN: usize = 16;

fn objects_of(listing: &[ObjectMeta]) -> Vec<&ObjectMeta> {
    let mut v: Vec<&ObjectMeta> = listing
        .iter()
        .filter(|m| m.location.as_ref().ends_with(".tern"))
        .collect();
    v.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
    v
}
