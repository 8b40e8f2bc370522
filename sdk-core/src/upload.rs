//! The uploader: one background thread running a current-thread tokio runtime (or a
//! task on a runtime the host supplies, [`UploadConfig::runtime`]) that drives the store's batching through the [`Scheduler`], picks relays with the
//! [`Router`] and sends over the [`Connector`].
//!
//! Each loop turn reads the store's backlog (from memory: the store publishes it after
//! each change), lets the scheduler decide (cut batches, send), and waits for the first
//! of: a request finishing, a command (flush, network change, shutdown), the store
//! saying it changed (recorded events applied), the scheduler's next deadline, or a
//! long safety tick ([`UploadConfig::tick`]). An idle uploader does not poll the
//! store: on a phone it wakes for work, not five times a second.
//!
//! One send tries the key's relays in HRW order: a transport failure is reported to
//! the router and the same batch goes to the next target at once (the same relay over
//! HTTPS after a QUIC failure, then the next relay), up to
//! [`UploadConfig::attempts_per_send`] targets, so a dead relay costs one failed
//! attempt, not a backoff (one loop for batches and config requests, see
//! `crate::net::failover`). Only when every attempt failed does the batch go back to
//! the store (`retry`, same `batch_id`) and the scheduler back off. Replies:
//! `Accepted` → `ack` (deleted); `Retry{after}` → `retry`, and no send before `after`.
//! A refusal — `IngestReply{rejected}` or an `ErrorReply` — drops data only when its
//! reason is the batch's own fault (`RejectReason::is_request_fault`: `malformed`,
//! `too_large`, `invalid`, `app_mismatch`) → `reject` (dropped, counted in
//! `dropped_rejected`, never retried). Any other reason (`unauthorized`, `blocked`,
//! `unsupported_message`, a reason this version does not know) may be the server's
//! fault → `refused`: the batch is kept, counted in `auth_failures`, logged, shown in
//! `Stats::last_refusal`, and the scheduler waits long (`RefusalPolicy`). Config
//! requests follow the same rule (the cached bundle is never dropped).
//!
//! A reply carrying a newer shard-map version makes the uploader fetch the map from
//! that relay; a valid map is adopted (`Router::offer_map`: an invalid one is refused,
//! logged and counted) and persisted in the data directory (`shard_map.json`, written
//! atomically). At the next start the persisted map is used if it is still valid and
//! newer than the configured one; the configured map (the seeds) stays the way back
//! when no relay of the adopted map answers (see `crate::policy::route`).
//!
//! # Live config and the push stream
//!
//! The same loop drives the sans-IO [`LiveScheduler`]: config requests
//! (`ConfigRequest` with the held ETag) go to the device's relays in HRW order of the
//! device id, with the same failover as batches; a new bundle is persisted in SQLite
//! and installed (`crate::live::remote`). One push subscription is kept open to the first
//! relay of that ranking (a QUIC stream, or `POST /v1/subscribe` when the relay is on
//! HTTPS) and reopened with backoff. Notices: `subscribed` / `config_changed` with an
//! ETag other than the held one → a fetch (debounced); `shard_map_changed` → fetch
//! the map; `throttle{after}` → no batch is sent before `after` (to any relay: the
//! scheduler is per device); `draining` → the relay is treated as draining by the
//! router and the subscription moves to the next relay.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tern_protocol::config::{ConfigBundle, ETag};
use tern_protocol::DeviceId;
use tern_protocol::{
    Auth, BatchId, CodecConfig, ConfigOutcome, ConfigRequest, IngestRequest, Message, PushNotice,
    RejectReason, ShardMap, ShardMapRequest, SubscribeRequest, UserId,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::TernConfig;
use crate::error::StoreError;
use crate::live::{FetchResult, LiveAction, LiveScheduler};
use crate::net::failover::Failover;
use crate::net::transport::{Connector, ConnectorCounters, StreamItem, TransportSetupError};
use crate::policy::route::{Failure, MapOffer, Router, RouterStats, Target};
use crate::policy::schedule::{Action, Scheduler, UploadOutcome};
use crate::store::{Backlog, OutgoingBatch};

/// The uploader's settings; defined with the rest of the configuration.
pub use crate::config::UploadConfig;

/// What the uploader drives: the device store's batches and the live-config state.
/// [`crate::Tern`] is the host in the SDK; the uploader knows nothing else of it.
/// Calls come from the uploader thread and never block on the network. On a host's
/// shared runtime the store calls run on that runtime's blocking pool (see [`Run::store`]).
pub(crate) trait Host: Clone + Send + Sync + 'static {
    /// The configuration the host was started with (app, key, data directory, seed
    /// shard map, flush policy).
    fn config(&self) -> &TernConfig;
    /// What waits to be uploaded (empty until the store is open). Cheap: read from
    /// memory, never waits for SQLite (called on the uploader's runtime).
    fn backlog(&self) -> Result<Backlog, StoreError>;
    /// Notified when the store changed without the uploader asking (recorded events
    /// applied, the store opened, a flush formed batches).
    fn store_changed(&self) -> Arc<tokio::sync::Notify>;
    /// Cuts batches from the unbatched backlog; returns how many were formed.
    fn form_batches(&self, force: bool) -> Result<usize, StoreError>;
    /// The oldest formed batch not in flight, now marked in flight.
    fn next_batch(&self) -> Result<Option<OutgoingBatch>, StoreError>;
    /// The batch was accepted: delete it.
    fn ack(&self, batch: BatchId) -> Result<(), StoreError>;
    /// The batch was rejected for its own fault: drop and count it.
    fn reject(&self, batch: BatchId) -> Result<(), StoreError>;
    /// The batch was refused for a reason that may be the server's fault: keep it.
    fn refused(&self, batch: BatchId) -> Result<(), StoreError>;
    /// The batch will be sent again later with the same id.
    fn retry(&self, batch: BatchId) -> Result<(), StoreError>;
    /// A config request was refused for a reason that may be the server's fault.
    fn count_auth_failure(&self) -> Result<(), StoreError>;
    /// Records a refusal that may be the server's fault (shown in the stats).
    fn note_refusal(&self, what: String);
    /// Records the outcome of the last upload attempt (shown in the stats).
    fn note_upload_result(&self, result: String);
    /// The store has opened and the cached bundle is loaded.
    fn live_ready(&self) -> bool;
    /// The device id, once the store is open.
    fn device_id(&self) -> Option<DeviceId>;
    /// The user config requests are sent for.
    fn live_user(&self) -> Option<UserId>;
    /// The ETag of the config bundle in use.
    fn config_etag(&self) -> Option<ETag>;
    /// A fetched bundle: persist it, then put it in use.
    fn live_install(&self, bundle: ConfigBundle, stale: bool);
    /// The bundle in use is current.
    fn live_confirm(&self, stale: bool);
    /// Live config may talk to the relays: false while opted out (no config request,
    /// no push subscription: the device id is not sent).
    fn live_allowed(&self) -> bool;
}

/// The uploader could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The transport could not be set up.
    #[error(transparent)]
    Setup(#[from] TransportSetupError),
    /// The background thread or runtime could not be created.
    #[error("starting the upload thread: {0}")]
    Thread(std::io::Error),
}

/// Counters of the uploader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadStats {
    /// Batches acknowledged.
    pub batches_acked: u64,
    /// Events in acknowledged batches.
    pub events_acked: u64,
    /// Batches rejected for their own fault (dropped).
    pub batches_rejected: u64,
    /// Batches refused for a reason that may be the server's fault (kept).
    pub batches_refused: u64,
    /// `Retry` replies.
    pub retry_replies: u64,
    /// Sends where every attempt failed.
    pub failed_sends: u64,
    /// Relay selection counters (QUIC/HTTPS successes, failures, failovers).
    pub router: RouterStats,
    /// The shard-map version in use.
    pub shard_map_version: u64,
    /// Config requests sent.
    pub config_fetches: u64,
    /// Config requests answered with a new bundle.
    pub config_modified: u64,
    /// Config requests answered `not_modified`.
    pub config_not_modified: u64,
    /// Config requests that failed, were told to retry or were rejected.
    pub config_failures: u64,
    /// Config requests refused for a reason that may be the server's fault.
    pub config_refusals: u64,
    /// Push notices received.
    pub push_notices: u64,
    /// Push subscriptions opened (attempts).
    pub push_subscriptions: u64,
    /// A push subscription is open and has delivered its first notice.
    pub push_connected: bool,
    /// TLS handshakes refused by certificate pinning (QUIC and HTTPS; the requests
    /// failed as transport failures, their batches kept).
    pub pin_failures: u64,
    /// QUIC handshakes that timed out after the relay was heard (counted as busy).
    pub handshake_timeouts_heard: u64,
    /// QUIC handshakes that timed out with nothing heard from the relay (HTTPS or the
    /// next relay is tried, after one more try for a relay never measured).
    pub handshake_timeouts_silent: u64,
    /// Of `handshake_timeouts_silent`: first handshakes to a relay given one more try
    /// before UDP was taken for blocked.
    pub handshake_second_chances: u64,
    /// QUIC handshakes that timed out with nothing heard, after a timer that fired
    /// late: this device was too busy to tell (counted as busy).
    pub handshake_timeouts_late: u64,
}

enum Command {
    Flush,
    Network(bool),
    Foreground,
    RefreshConfig,
    Shutdown,
    /// Stop as a killed process would: requests abandoned, connections not closed.
    #[cfg(feature = "simulation")]
    Kill,
}

/// Handle to the running uploader.
#[derive(Debug)]
pub struct Uploader {
    tx: mpsc::UnboundedSender<Command>,
    stats: Arc<Mutex<UploadStats>>,
    driver: Mutex<Option<Driver>>,
    counters: Arc<ConnectorCounters>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const MAP_FILE: &str = "shard_map.json";

/// Loads the persisted shard map of `data_dir`, if any and readable (parsed, not
/// validated: the router refuses an invalid one).
pub fn load_map(data_dir: &Path) -> Option<ShardMap> {
    let text = std::fs::read(data_dir.join(MAP_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn save_map(data_dir: &Path, map: &ShardMap) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{MAP_FILE}.tmp"));
    let bytes = serde_json::to_vec(map).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, data_dir.join(MAP_FILE))
}

impl Uploader {
    /// Starts uploading `host`'s events. The shard map is the newer of the configured
    /// one and the one persisted by an earlier run.
    pub(crate) fn start<H: Host>(host: H, config: UploadConfig) -> Result<Uploader, UploadError> {
        // Fail on bad trust settings here, synchronously, not in the thread.
        crate::net::transport::client_tls(&config.transport, &[tern_protocol::ALPN])?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(UploadStats::default()));
        let thread_stats = stats.clone();
        let counters = Arc::new(ConnectorCounters::default());
        let thread_counters = counters.clone();
        let host_runtime = config.runtime.clone();
        let offload_store = host_runtime.is_some();
        let body = async move {
            match Connector::with_counters(config.transport.clone(), thread_counters) {
                Ok(connector) => {
                    let (sub_tx, sub_rx) = mpsc::channel(64);
                    let mut run = Run::new(host, config, connector, thread_stats, sub_tx)
                        .offloading_store(offload_store);
                    let killed = run.run(rx, sub_rx).await;
                    run.stop_subscription();
                    if !killed {
                        run.connector.close().await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "uploader could not start"),
            }
        };
        let driver = match host_runtime {
            Some(handle) => {
                // Dropped when the task ends, however it ends (finished, panicked, or
                // dropped with its runtime): `shutdown` waits for that.
                let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
                handle.spawn(async move {
                    body.await;
                    drop(done_tx);
                });
                Driver::Task(done_rx)
            }
            None => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(UploadError::Thread)?;
                let thread = std::thread::Builder::new()
                    .name("tern-upload".into())
                    .spawn(move || runtime.block_on(body))
                    .map_err(UploadError::Thread)?;
                Driver::Thread(thread)
            }
        };
        Ok(Uploader {
            tx,
            stats,
            driver: Mutex::new(Some(driver)),
            counters,
        })
    }

    /// Cut and send everything now (the app went to the background, or the user asked).
    pub fn flush(&self) {
        let _ = self.tx.send(Command::Flush);
    }

    /// The platform reports network reachability.
    pub fn set_network(&self, available: bool) {
        let _ = self.tx.send(Command::Network(available));
    }

    /// The app came to the foreground (config is fetched if it is old).
    pub fn foreground(&self) {
        let _ = self.tx.send(Command::Foreground);
    }

    /// Fetch the config bundle now.
    pub fn refresh_config(&self) {
        let _ = self.tx.send(Command::RefreshConfig);
    }

    /// Counters.
    pub fn stats(&self) -> UploadStats {
        let mut stats = *lock(&self.stats);
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        stats.pin_failures = load(&self.counters.pin_failures);
        stats.handshake_timeouts_heard = load(&self.counters.handshake_timeouts_heard);
        stats.handshake_timeouts_silent = load(&self.counters.handshake_timeouts_silent);
        stats.handshake_second_chances = load(&self.counters.handshake_second_chances);
        stats.handshake_timeouts_late = load(&self.counters.handshake_timeouts_late);
        stats
    }

    /// Stops the uploader: requests in flight are abandoned (their batches stay in the
    /// store and are sent again, with the same ids, next time). Idempotent.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        self.wait_stopped();
    }

    /// Stops the uploader as a kill of the app would: requests in flight abandoned,
    /// connections dropped without a close (the relays see them time out).
    #[cfg(feature = "simulation")]
    pub fn kill(&self) {
        let _ = self.tx.send(Command::Kill);
        self.wait_stopped();
    }

    fn wait_stopped(&self) {
        match lock(&self.driver).take() {
            Some(Driver::Thread(t)) => {
                let _ = t.join();
            }
            Some(Driver::Task(done)) => {
                // Err once the task has ended and dropped its sender.
                let _ = done.recv();
            }
            None => {}
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where the upload loop runs.
#[derive(Debug)]
enum Driver {
    /// Its own thread and current-thread runtime.
    Thread(JoinHandle<()>),
    /// A task on the host's runtime; the receiver errs when the task has ended.
    Task(std::sync::mpsc::Receiver<()>),
}

/// What one send came back with.
struct SendResult {
    batch_id: tern_protocol::BatchId,
    events: u64,
    outcome: UploadOutcome,
    /// A relay announced this shard-map version, and where to fetch it.
    map_hint: Option<(u64, crate::policy::route::Target)>,
    /// A refusal that may be the server's fault: the reason and detail.
    refusal: Option<String>,
}

/// What one config fetch came back with.
struct FetchDone {
    result: FetchResult,
    bundle: Option<tern_protocol::ConfigBundle>,
    stale: bool,
    map_hint: Option<(u64, Target)>,
    /// A refusal that may be the server's fault: the reason and detail.
    refusal: Option<String>,
}

/// What the push subscription task reports.
enum SubEvent {
    Notice {
        generation: u64,
        notice: PushNotice,
        target: Target,
    },
    Ended {
        generation: u64,
        /// Ended before delivering any notice.
        failed: bool,
        failure: Option<Failure>,
        target: Target,
    },
}

struct Subscription {
    generation: u64,
    relay: tern_protocol::RelayId,
    task: tokio::task::JoinHandle<()>,
}

struct Run<H> {
    host: H,
    live: LiveScheduler,
    sub: Option<Subscription>,
    sub_generation: u64,
    sub_tx: mpsc::Sender<SubEvent>,
    config: UploadConfig,
    connector: Arc<Connector>,
    router: Arc<Mutex<Router>>,
    sched: Scheduler,
    stats: Arc<Mutex<UploadStats>>,
    data_dir: PathBuf,
    codec: CodecConfig,
    /// The uploader runs on a host's runtime, shared with other work: store calls go to
    /// its blocking pool.
    offload_store: bool,
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl<H: Host> Run<H> {
    fn new(
        host: H,
        config: UploadConfig,
        connector: Connector,
        stats: Arc<Mutex<UploadStats>>,
        sub_tx: mpsc::Sender<SubEvent>,
    ) -> Self {
        let tc = host.config();
        let data_dir = tc.data_dir.clone();
        let saved = load_map(&data_dir);
        if let Some(Err(e)) = saved.as_ref().map(ShardMap::validate) {
            tracing::warn!(error = %e, "the persisted shard map is not valid; ignored");
        }
        let seed = u64::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8]
                .try_into()
                .unwrap_or([7; 8]),
        );
        let router = Router::with_seeds(config.router, tc.shard_map.clone(), saved)
            .with_jitter_seed(seed.rotate_left(41));
        {
            let mut s = lock(&stats);
            s.shard_map_version = router.map().version;
            s.router = router.stats();
        }
        let sched = Scheduler::new(tc.flush, config.retry, seed).with_refusal(config.refusal);
        Run {
            live: LiveScheduler::new(config.live, seed.rotate_left(17)),
            sub: None,
            sub_generation: 0,
            sub_tx,
            router: Arc::new(Mutex::new(router)),
            host,
            config,
            connector: Arc::new(connector),
            sched,
            stats,
            data_dir,
            codec: CodecConfig::device(),
            offload_store: false,
        }
    }

    /// Store calls go to the runtime's blocking pool (the uploader shares a host's
    /// runtime).
    fn offloading_store(mut self, offload: bool) -> Self {
        self.offload_store = offload;
        self
    }

    /// Runs `f`, a call into the store: a SQLite transaction, which may first wait for
    /// the store thread to release the store. On the uploader's own thread it is a
    /// plain call. On a host's runtime, shared with other work (the fleet simulator
    /// runs a thousand devices' uploaders on one), it runs on the runtime's blocking
    /// pool, so neither the transaction nor the wait holds a worker that other tasks'
    /// handshakes and timers need. Either way this uploader waits for the result
    /// before it goes on: what a device does is the same.
    async fn store<R: Send + 'static>(&self, f: impl FnOnce(&H) -> R + Send + 'static) -> R {
        if !self.offload_store {
            return f(&self.host);
        }
        let host = self.host.clone();
        match tokio::task::spawn_blocking(move || f(&host)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down, and this task with it.
            Err(_) => std::future::pending().await,
        }
    }

    fn feed_backlog(&mut self, now: Instant) {
        let Ok(b) = self.host.backlog() else {
            return;
        };
        let oldest = b.oldest_recorded_ms.map(|ms| {
            let age = u64::try_from(unix_ms().saturating_sub(ms)).unwrap_or(0);
            now.checked_sub(Duration::from_millis(age)).unwrap_or(now)
        });
        self.sched.handle_backlog(b.events, b.bytes, oldest, now);
        self.sched.handle_queue(b.ready_batches, now);
    }

    /// Runs until a shutdown (false) or a kill (true).
    async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        mut sub_rx: mpsc::Receiver<SubEvent>,
    ) -> bool {
        let mut sends: JoinSet<SendResult> = JoinSet::new();
        let mut fetches: JoinSet<FetchDone> = JoinSet::new();
        let mut probes: JoinSet<()> = JoinSet::new();
        let store_changed = self.host.store_changed();
        loop {
            let now = Instant::now();
            self.poll_live(now, &mut fetches);
            self.feed_backlog(now);
            while let Some(action) = self.sched.poll(now) {
                match action {
                    Action::FormBatches { force } => {
                        if let Err(e) = self.store(move |h| h.form_batches(force)).await {
                            tracing::warn!(error = %e, "forming batches failed");
                        }
                        self.feed_backlog(now);
                    }
                    Action::Send => match self.store(|h| h.next_batch()).await {
                        Ok(Some(out)) => {
                            self.sched.handle_sent(now);
                            sends.spawn(self.send(out.batch));
                        }
                        Ok(None) => {
                            self.sched.handle_queue(0, now);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the next batch failed");
                            break;
                        }
                    },
                }
            }
            let due = lock(&self.router).take_probes();
            for target in due {
                probes.spawn(self.probe(target));
            }
            let deadline = self
                .sched
                .poll_timeout()
                .map_or(now + self.config.tick, |t| t.min(now + self.config.tick));
            // While live config is not allowed its due actions wait (not polled).
            let deadline = match self.live.poll_timeout() {
                Some(t) if self.host.live_allowed() => t.max(now).min(deadline),
                _ => deadline,
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Flush) => {
                        let now = Instant::now();
                        self.feed_backlog(now);
                        self.sched.handle_flush(now);
                    }
                    Some(Command::Network(up)) => {
                        let now = Instant::now();
                        self.sched.handle_network(up, now);
                        if !up && self.sub.is_some() {
                            self.stop_subscription();
                            self.live.handle_subscription_ended(false, now);
                        }
                        self.live.handle_network(up, now);
                    }
                    Some(Command::Foreground) => self.live.handle_foreground(Instant::now()),
                    Some(Command::RefreshConfig) => {
                        self.live.handle_refresh_requested(Instant::now());
                    }
                    Some(Command::Shutdown) | None => {
                        sends.abort_all();
                        fetches.abort_all();
                        probes.abort_all();
                        return false;
                    }
                    #[cfg(feature = "simulation")]
                    Some(Command::Kill) => {
                        sends.abort_all();
                        fetches.abort_all();
                        probes.abort_all();
                        return true;
                    }
                },
                Some(done) = fetches.join_next(), if !fetches.is_empty() => {
                    if let Ok(done) = done {
                        self.fetched(done).await;
                    }
                }
                Some(event) = sub_rx.recv() => self.sub_event(event).await,
                Some(_) = probes.join_next(), if !probes.is_empty() => {
                    lock(&self.stats).router = lock(&self.router).stats();
                }
                Some(done) = sends.join_next(), if !sends.is_empty() => {
                    if let Ok(result) = done {
                        self.finish(result).await;
                    }
                }
                () = store_changed.notified() => {}
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
            }
        }
    }

    /// Applies one send's result to the store, the scheduler and the counters.
    async fn finish(&mut self, r: SendResult) {
        let now = Instant::now();
        let (outcome, batch) = (r.outcome, r.batch_id);
        let store_result = self
            .store(move |h| match outcome {
                UploadOutcome::Accepted => h.ack(batch),
                UploadOutcome::Rejected => h.reject(batch),
                UploadOutcome::Refused => h.refused(batch),
                UploadOutcome::Retry { .. } | UploadOutcome::TransportError => h.retry(batch),
            })
            .await;
        if let Err(e) = store_result {
            tracing::warn!(error = %e, "recording an upload result failed");
        }
        self.sched.handle_outcome(r.outcome, now);
        if let Some(why) = &r.refusal {
            let next_in_s = self
                .sched
                .stats()
                .blocked_until
                .map_or(0, |t| t.saturating_duration_since(now).as_secs());
            tracing::warn!(
                batch_id = %r.batch_id,
                refusal = %why,
                next_attempt_in_s = next_in_s,
                "batch refused for a reason that may be the server's; kept, waiting before the next attempt"
            );
            self.host.note_refusal(format!("ingest: {why}"));
        }
        {
            let mut s = lock(&self.stats);
            match r.outcome {
                UploadOutcome::Accepted => {
                    s.batches_acked += 1;
                    s.events_acked += r.events;
                }
                UploadOutcome::Rejected => s.batches_rejected += 1,
                UploadOutcome::Refused => s.batches_refused += 1,
                UploadOutcome::Retry { .. } => s.retry_replies += 1,
                UploadOutcome::TransportError => s.failed_sends += 1,
            }
            s.router = lock(&self.router).stats();
        }
        self.host.note_upload_result(format!("{:?}", r.outcome));
        if let Some((version, target)) = r.map_hint {
            self.observe_map(version, &target).await;
        }
    }

    /// Probes a relay that failed, or checks QUIC to a relay served over HTTPS (see
    /// [`Router::take_probes`]), with a `ShardMapRequest`: any reply means it is back.
    /// No batch waits on a probe.
    fn probe(&self, target: Target) -> impl std::future::Future<Output = ()> + Send + 'static {
        let frame = Message::ShardMapRequest(ShardMapRequest {
            auth: self.auth(),
            known_version: lock(&self.router).request_version(),
        })
        .encode(&self.codec);
        let (connector, router, codec) = (self.connector.clone(), self.router.clone(), self.codec);
        async move {
            let result = match frame {
                Ok(frame) => match connector.request(&target, &frame).await {
                    Ok(reply) => match Message::from_bytes(&reply, &codec) {
                        Ok(Message::ShardMapReply(_)) | Ok(Message::ErrorReply(_)) => Ok(()),
                        _ => Err(Failure::Transport),
                    },
                    Err(e) => Err(e.failure()),
                },
                Err(_) => Err(Failure::Transport),
            };
            tracing::debug!(relay = %target.relay.id, ?result, "probe");
            lock(&router).handle_probe(&target, result, Instant::now());
        }
    }

    /// A relay announced shard-map `version`: fetch the map from it if newer.
    async fn observe_map(&mut self, version: u64, target: &Target) {
        let wants = {
            let mut router = lock(&self.router);
            router.observe_version(version);
            router.wants_map()
        };
        if wants {
            self.fetch_map(target).await;
        }
    }

    fn auth(&self) -> Auth {
        let tc = self.host.config();
        Auth {
            app_id: tc.app_id.clone(),
            key: tc.app_key.clone(),
        }
    }

    /// Starts live config once the store is open (cached bundle loaded, device id
    /// known), then runs what the live scheduler asks for.
    fn poll_live(&mut self, now: Instant, fetches: &mut JoinSet<FetchDone>) {
        if !self.host.live_allowed() {
            // Opted out: nothing is fetched and the push subscription is closed; what
            // is due waits for the opt-in.
            if self.sub.is_some() {
                self.stop_subscription();
                self.live.handle_subscription_ended(false, now);
            }
            return;
        }
        if !self.live.is_started() {
            if !self.host.live_ready() {
                return;
            }
            self.live.handle_start(now);
        }
        while let Some(action) = self.live.poll(now) {
            match action {
                LiveAction::Fetch => {
                    lock(&self.stats).config_fetches += 1;
                    fetches.spawn(self.fetch_config());
                }
                LiveAction::Subscribe => {
                    lock(&self.stats).push_subscriptions += 1;
                    self.start_subscription(now);
                }
            }
        }
    }

    fn device_key(&self) -> Option<(tern_protocol::DeviceId, String)> {
        let device = self.host.device_id()?;
        Some((device, device.to_string()))
    }

    /// One config request, to the device's relays in order until one answers.
    fn fetch_config(&self) -> impl std::future::Future<Output = FetchDone> + Send + 'static {
        let request = self.device_key().map(|(device_id, key)| {
            (
                ConfigRequest {
                    auth: self.auth(),
                    device_id,
                    user_id: self.host.live_user(),
                    if_none_match: self.host.config_etag(),
                },
                key,
            )
        });
        let app = self.host.config().app_id.clone();
        let router = self.router.clone();
        let connector = self.connector.clone();
        let codec = self.codec;
        let attempts = self.config.attempts_per_send.max(1);
        async move {
            let failed = FetchDone {
                result: FetchResult::Failed,
                bundle: None,
                stale: false,
                map_hint: None,
                refusal: None,
            };
            let Some((request, key)) = request else {
                return failed;
            };
            let Ok(frame) = Message::ConfigRequest(request).encode(&codec) else {
                return failed;
            };
            let decode = |reply: &[u8]| {
                let mut refusal = None;
                let mut refused = |reason: RejectReason, detail: &str| {
                    if reason.is_request_fault() {
                        tracing::warn!(%reason, %detail, "config request rejected");
                        FetchResult::Rejected
                    } else {
                        let why = format!("{reason}: {detail}");
                        tracing::warn!(refusal = %why, "config request refused for a reason that may be the server's; the cached bundle stays");
                        refusal = Some(why);
                        FetchResult::Refused
                    }
                };
                let (result, bundle, stale, version) = match Message::from_bytes(reply, &codec) {
                    Ok(Message::ConfigReply(r)) => {
                        let (result, bundle) = match r.outcome {
                            ConfigOutcome::Modified { bundle } if bundle.app_id == app => {
                                (FetchResult::Modified, Some(bundle))
                            }
                            ConfigOutcome::NotModified => (FetchResult::NotModified, None),
                            ConfigOutcome::Retry { after_ms } => (
                                FetchResult::Retry {
                                    after: Duration::from_millis(after_ms),
                                },
                                None,
                            ),
                            ConfigOutcome::Rejected { reason, detail } => {
                                (refused(reason, &detail), None)
                            }
                            // Another app's bundle, or an outcome this version does not
                            // know: keep the cached bundle and try again later.
                            _ => (FetchResult::Failed, None),
                        };
                        (result, bundle, r.stale, r.shard_map_version)
                    }
                    Ok(Message::ErrorReply(e)) => {
                        let result = refused(e.reason, &e.detail);
                        (result, None, false, e.shard_map_version)
                    }
                    // Not a reply to this request: as if the connection dropped.
                    _ => return None,
                };
                let done = FetchDone {
                    result,
                    bundle,
                    stale,
                    map_hint: None,
                    refusal,
                };
                Some((done, version))
            };
            let failover = Failover {
                router: &router,
                requester: &*connector,
                attempts,
                clock: &Instant::now,
            };
            match failover.request(&app, &key, &frame, decode).await {
                Some(((done, version), target)) => FetchDone {
                    map_hint: Some((version, target)),
                    ..done
                },
                None => failed,
            }
        }
    }

    async fn fetched(&mut self, done: FetchDone) {
        let now = Instant::now();
        {
            let mut s = lock(&self.stats);
            match done.result {
                FetchResult::Modified => s.config_modified += 1,
                FetchResult::NotModified => s.config_not_modified += 1,
                FetchResult::Refused => {
                    s.config_failures += 1;
                    s.config_refusals += 1;
                }
                _ => s.config_failures += 1,
            }
            s.router = lock(&self.router).stats();
        }
        if let Some(why) = &done.refusal {
            if let Err(e) = self.host.count_auth_failure() {
                tracing::debug!(error = %e, "counting a refusal failed");
            }
            self.host.note_refusal(format!("config: {why}"));
        }
        match (done.result, done.bundle) {
            (FetchResult::Modified, Some(bundle)) => {
                tracing::debug!(version = bundle.version, etag = %bundle.etag, "config bundle updated");
                self.host.live_install(bundle, done.stale);
            }
            (FetchResult::NotModified, _) => self.host.live_confirm(done.stale),
            _ => {}
        }
        self.live.handle_fetched(done.result, now);
        if matches!(
            done.result,
            FetchResult::Modified | FetchResult::NotModified
        ) {
            self.check_subscription_relay(now);
        }
        if let Some((version, target)) = done.map_hint {
            self.observe_map(version, &target).await;
        }
    }

    /// Moves the push subscription to the device's preferred relay when that is no
    /// longer the one it is open to (the owner is back after a failover, or a new
    /// shard map changed the ranking). Checked after each successful fetch and map
    /// change, so a recovered owner is probed at most once per refresh.
    fn check_subscription_relay(&mut self, now: Instant) {
        let Some(sub) = &self.sub else {
            return;
        };
        let Some((_, key)) = self.device_key() else {
            return;
        };
        let app = self.host.config().app_id.clone();
        let preferred = lock(&self.router).pick(&app, &key, now).map(|t| t.relay.id);
        if preferred.is_some_and(|p| p != sub.relay) {
            tracing::debug!(from = %sub.relay, "moving the push subscription to the preferred relay");
            self.stop_subscription();
            self.live.handle_subscription_ended(false, now);
        }
    }

    fn stop_subscription(&mut self) {
        if let Some(sub) = self.sub.take() {
            sub.task.abort();
        }
        lock(&self.stats).push_connected = false;
    }

    /// Opens the push subscription to the device's first relay in a task that
    /// forwards its notices to the loop.
    fn start_subscription(&mut self, now: Instant) {
        self.stop_subscription();
        let app = self.host.config().app_id.clone();
        let target = self
            .device_key()
            .and_then(|(_, key)| lock(&self.router).pick(&app, &key, now));
        let request = self.device_key().map(|(device_id, _)| SubscribeRequest {
            auth: self.auth(),
            device_id,
            user_id: self.host.live_user(),
            config_etag: self.host.config_etag(),
        });
        let frame = request.and_then(|r| Message::SubscribeRequest(r).encode(&self.codec).ok());
        let (Some(target), Some(frame)) = (target, frame) else {
            self.live.handle_subscription_ended(true, now);
            return;
        };
        self.sub_generation += 1;
        let generation = self.sub_generation;
        let relay_id = target.relay.id.clone();
        let connector = self.connector.clone();
        let tx = self.sub_tx.clone();
        let first_timeout = self.config.transport.request_timeout;
        let task = tokio::spawn(async move {
            let mut got_any = false;
            let failure = match connector.subscribe(&target, &frame).await {
                Err(e) => {
                    tracing::debug!(error = %e, "push subscription failed");
                    Some(e.failure())
                }
                Ok(mut stream) => loop {
                    let next = if got_any {
                        stream.next().await
                    } else {
                        match tokio::time::timeout(first_timeout, stream.next()).await {
                            Ok(r) => r,
                            Err(_) => break Some(Failure::Transport),
                        }
                    };
                    match next {
                        Ok(Some(StreamItem::Notice(notice))) => {
                            got_any = true;
                            let event = SubEvent::Notice {
                                generation,
                                notice,
                                target: target.clone(),
                            };
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(StreamItem::Refused(e))) => {
                            tracing::warn!(reason = ?e.reason, "push subscription refused");
                            break None;
                        }
                        Ok(None) => break None,
                        Err(e) => {
                            tracing::debug!(error = %e, "push stream ended");
                            break Some(e.failure());
                        }
                    }
                },
            };
            let _ = tx
                .send(SubEvent::Ended {
                    generation,
                    failed: !got_any,
                    failure,
                    target,
                })
                .await;
        });
        self.sub = Some(Subscription {
            generation,
            relay: relay_id,
            task,
        });
    }

    async fn sub_event(&mut self, event: SubEvent) {
        let current = self.sub.as_ref().map(|s| s.generation);
        let now = Instant::now();
        match event {
            SubEvent::Ended {
                generation,
                failed,
                failure,
                target,
            } => {
                if current != Some(generation) {
                    return;
                }
                self.sub = None;
                lock(&self.stats).push_connected = false;
                if let (true, Some(f)) = (failed, failure) {
                    lock(&self.router).handle_failure(&target, f, now);
                }
                self.live.handle_subscription_ended(failed, now);
            }
            SubEvent::Notice {
                generation,
                notice,
                target,
            } => {
                if current != Some(generation) {
                    return;
                }
                {
                    let mut s = lock(&self.stats);
                    s.push_notices += 1;
                    s.push_connected = true;
                }
                self.live.handle_subscription_alive();
                let held = self.host.config_etag();
                match notice {
                    PushNotice::Subscribed {
                        shard_map_version,
                        config_etag,
                    } => {
                        if config_etag.is_some() && config_etag != held {
                            self.live.handle_config_changed(now);
                        }
                        self.observe_map(shard_map_version, &target).await;
                    }
                    PushNotice::ConfigChanged { etag, version } if Some(&etag) != held.as_ref() => {
                        tracing::debug!(version, %etag, "config changed (push)");
                        self.live.handle_config_changed(now);
                    }
                    PushNotice::ShardMapChanged { version } => {
                        self.observe_map(version, &target).await;
                    }
                    PushNotice::Throttle { after_ms } => {
                        self.sched
                            .handle_pause(Duration::from_millis(after_ms), now);
                    }
                    PushNotice::Draining { shard_map_version } => {
                        lock(&self.router).handle_failure(&target, Failure::Draining, now);
                        self.stop_subscription();
                        self.live.handle_subscription_ended(false, now);
                        self.observe_map(shard_map_version, &target).await;
                    }
                    _ => {}
                }
            }
        }
    }

    async fn fetch_map(&mut self, target: &crate::policy::route::Target) {
        let tc = self.host.config();
        let known = lock(&self.router).request_version();
        let frame = Message::ShardMapRequest(ShardMapRequest {
            auth: Auth {
                app_id: tc.app_id.clone(),
                key: tc.app_key.clone(),
            },
            known_version: known,
        })
        .encode(&self.codec);
        let Ok(frame) = frame else { return };
        let reply = match self.connector.request(target, &frame).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "fetching the shard map failed");
                return;
            }
        };
        if let Ok(Message::ShardMapReply(r)) = Message::from_bytes(&reply, &self.codec) {
            if let Some(map) = r.map {
                let version = map.version;
                let offer = lock(&self.router).offer_map(map.clone());
                match offer {
                    MapOffer::Adopted { rescue } => {
                        self.check_subscription_relay(Instant::now());
                        tracing::info!(version, rescue, relay = %target.relay.id, "shard map updated");
                        lock(&self.stats).shard_map_version = version;
                        if let Err(e) = save_map(&self.data_dir, &map) {
                            tracing::warn!(error = %e, "persisting the shard map failed");
                        }
                    }
                    MapOffer::Refused(e) => {
                        tracing::warn!(version, relay = %target.relay.id, error = %e, "shard map refused: not valid; the map in use stays");
                    }
                    MapOffer::NotNewer => {}
                }
                lock(&self.stats).router = lock(&self.router).stats();
            }
        }
    }

    /// One send: the batch to the key's relays in order until one answers.
    fn send(
        &self,
        batch: tern_protocol::EventBatch,
    ) -> impl std::future::Future<Output = SendResult> + Send + 'static {
        let tc = self.host.config();
        let auth = Auth {
            app_id: tc.app_id.clone(),
            key: tc.app_key.clone(),
        };
        let app = tc.app_id.clone();
        let router = self.router.clone();
        let connector = self.connector.clone();
        let codec = self.codec;
        let attempts = self.config.attempts_per_send.max(1);
        async move {
            let batch_id = batch.batch_id;
            let events = batch.events.len() as u64;
            let key = batch.routing_key();
            let frame = match (Message::IngestRequest(IngestRequest { auth, batch })).encode(&codec)
            {
                Ok(f) => f,
                Err(e) => {
                    // The store only holds valid events; an unencodable batch would
                    // fail forever.
                    tracing::error!(error = %e, "a batch could not be encoded; dropping it");
                    return SendResult {
                        batch_id,
                        events,
                        outcome: UploadOutcome::Rejected,
                        map_hint: None,
                        refusal: None,
                    };
                }
            };
            // One rule for both kinds of refusal (protocol §6.1): drop only for a
            // fault of the batch itself; keep for anything that may be the server's.
            let classify = |reason: RejectReason, detail: &str| {
                if reason.is_request_fault() {
                    tracing::warn!(%batch_id, %reason, %detail, "batch rejected by the relay; dropped");
                    (UploadOutcome::Rejected, None)
                } else {
                    (UploadOutcome::Refused, Some(format!("{reason}: {detail}")))
                }
            };
            let decode = |reply: &[u8]| match Message::from_bytes(reply, &codec) {
                Ok(Message::IngestReply(r)) if r.batch_id == batch_id => {
                    let (outcome, refusal) = match r.outcome {
                        tern_protocol::IngestOutcome::Rejected { reason, detail } => {
                            classify(reason, &detail)
                        }
                        other => (UploadOutcome::from(&other), None),
                    };
                    Some((outcome, refusal, r.shard_map_version))
                }
                Ok(Message::ErrorReply(e)) => {
                    let (outcome, refusal) = classify(e.reason, &e.detail);
                    Some((outcome, refusal, e.shard_map_version))
                }
                // Not a reply to this request: as if the connection dropped.
                _ => None,
            };
            let failover = Failover {
                router: &router,
                requester: &*connector,
                attempts,
                clock: &Instant::now,
            };
            if let Some(((outcome, refusal, version), target)) =
                failover.request(&app, &key, &frame, decode).await
            {
                return SendResult {
                    batch_id,
                    events,
                    outcome,
                    map_hint: Some((version, target)),
                    refusal,
                };
            }
            SendResult {
                batch_id,
                events,
                outcome: UploadOutcome::TransportError,
                map_hint: None,
                refusal: None,
            }
        }
    }
}
