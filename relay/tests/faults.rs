//! Fault scenarios across real processes on loopback.
//!
//! * The relay is the real `tern-relay` binary (`--dev`, ports 0, a ready line on
//!   stdout), so a scenario can SIGKILL it and start it again on the same spool.
//! * The backend is the stub served by `tern_server_stub::run` on its own thread and
//!   its own tokio runtime, reached only over HTTP (data plane, `/admin/faults`,
//!   `/verify/*`), exactly as the stub binary would be. (A dev-dependency's binaries are
//!   not built for this crate's tests, so the stub runs from its library.)
//! * Devices are QUIC clients that behave like the SDK: a device forms a batch of
//!   gap-free sequence numbers, sends it until it is `Accepted` (the same `batch_id` on
//!   every attempt, waiting `after_ms` after a `Retry`, reconnecting after a transport
//!   failure), and only then forms the next one.
//!
//! Every verdict comes from counters (the stub's `/verify/*`, the relay's `/metrics`,
//! the clients' own tallies, the spool directory), never from logs, and every wait for
//! an asynchronous outcome polls until a deadline. No timing is asserted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tern_protocol::{
    AppId, Auth, BatchId, CodecConfig, DeviceId, Durability, EventBatch, IngestOutcome,
    IngestRequest, Message, ALPN,
};
use tern_testkit::{wait_for, Backend, Batch, RelayProc};

const APP: &str = "demo";
const KEY: &str = "demo-key";

// ---------------------------------------------------------------------------------------
// The backend: the test kit's stub on its own thread and runtime, used over HTTP only
// ---------------------------------------------------------------------------------------

fn start_backend() -> Backend {
    Backend::start_blocking(&format!("[[apps]]\nid = \"{APP}\"\nkeys = [\"{KEY}\"]\n"))
}

/// Takes the data plane down (connections closed without a response: ingest, config
/// and the app registry) or back up.
async fn set_down(backend: &Backend, down: bool) {
    backend
        .put_faults(serde_json::json!({
            "down": down,
            "scope": ["ingest", "config", "registry"],
        }))
        .await;
}

// ---------------------------------------------------------------------------------------
// The relay: the real binary
// ---------------------------------------------------------------------------------------

/// Where a relay spools.
enum SpoolAt {
    /// `--spool-dir`.
    Dir(PathBuf),
    /// A config file with a `[spool_s3]` section for this endpoint, plus `extra` TOML
    /// lines at the top level (for settings a scenario needs, e.g. a fallback size).
    S3 { endpoint: String, extra: String },
}

struct Relay {
    proc: RelayProc,
    quic: SocketAddr,
    metrics_url: String,
    ca_pem: String,
}

impl Relay {
    /// Starts `tern-relay` with id `relay_id`; `work` is its directory and holds its
    /// log (`name` keeps the logs of several relays apart).
    fn start(backend: &Backend, relay_id: &str, spool: &SpoolAt, work: &Path, name: &str) -> Relay {
        // Default directories (config cache, spool fallback) land in `work`, shared by
        // a relay and the one restarted after it.
        let builder = RelayProc::builder(&backend.url)
            .id(relay_id)
            .dir(work)
            .name(name)
            .log(&work.join(format!("{name}.log")))
            .log_level("info")
            .envs([("NO_COLOR", "1")]);
        let builder = match spool {
            SpoolAt::Dir(spool) => builder.spool_dir(Some(spool)),
            SpoolAt::S3 { endpoint, extra } => {
                let config = work.join(format!("{name}.toml"));
                std::fs::write(
                    &config,
                    format!(
                        "{extra}\n[spool_s3]\nendpoint = \"{endpoint}\"\nbucket = \"tern-spool\"\n\
                         region = \"us-east-1\"\naccess_key_id = \"k\"\n\
                         secret_access_key = \"s\"\nallow_http = true\n"
                    ),
                )
                .unwrap();
                builder
                    .spool_dir(None)
                    .args(["--config".to_owned(), config.display().to_string()])
            }
        };
        let proc = builder.start();
        Relay {
            quic: proc.quic,
            metrics_url: proc.metrics.clone(),
            ca_pem: proc.ca_pem.clone(),
            proc,
        }
    }

    /// Waits until the relay has loaded the app registry (`/readyz`).
    async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.metrics_url);
        wait_for("relay /readyz", Duration::from_secs(15), || async {
            match reqwest::get(&url).await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    async fn metrics(&self) -> Result<Metrics, String> {
        let text = reqwest::get(format!("{}/metrics", self.metrics_url))
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Metrics(text))
    }

    fn target(&self) -> Target {
        Target {
            addr: self.quic,
            ca_pem: self.ca_pem.clone(),
        }
    }

    /// SIGKILL, no goodbye.
    fn kill(&mut self) {
        self.proc.kill();
    }

    fn log_tail(&self) -> String {
        self.proc.proc.log_tail(30)
    }
}

/// A Prometheus text page.
struct Metrics(String);

impl Metrics {
    /// The value of the sample named exactly `series` (name plus labels), 0 if absent.
    fn get(&self, series: &str) -> u64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse::<f64>().ok())?
            })
            .map_or(0, |v| v as u64)
    }

    fn accepted(&self) -> (u64, u64) {
        (
            self.get("tern_relay_batches_total{outcome=\"accepted_forwarded\"}"),
            self.get("tern_relay_batches_total{outcome=\"accepted_spooled\"}"),
        )
    }

    fn breaker_closed(&self) -> bool {
        self.0.lines().any(|l| l == "tern_relay_breaker_state 0")
    }
}

/// `.tern` objects (and anything else) left under a spool directory.
fn spool_files(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    walk(dir, &mut all);
    all.into_iter()
        .partition(|p| p.extension().is_some_and(|e| e == "tern"))
}

// ---------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------

/// Which relay the devices talk to (changes when a relay is restarted: new ports, new
/// dev certificate).
#[derive(Clone, Debug)]
struct Target {
    addr: SocketAddr,
    ca_pem: String,
}

#[derive(Clone, Debug, Default)]
struct Tally {
    /// Every acknowledged batch: (device, events), with the relay generation that
    /// acknowledged it.
    acked: HashMap<BatchId, (DeviceId, u64)>,
    forwarded: u64,
    spooled: u64,
    /// Acknowledgements per relay generation (index into the targets used).
    acked_by_generation: HashMap<u64, u64>,
    retries: u64,
    transport_failures: u64,
    /// Batches first sent to one relay generation and acknowledged by a later one.
    resent_to_new_relay: u64,
    /// Anything a device must never see here: `Rejected`, `ErrorReply`, a batch
    /// acknowledged twice.
    anomalies: Vec<String>,
    /// Devices that gave up (deadline) with a batch still unacknowledged.
    unfinished: Vec<DeviceId>,
    /// Events acknowledged per device (seqs 1..=n).
    per_device: HashMap<DeviceId, u64>,
}

impl Tally {
    fn acked_events(&self) -> u64 {
        self.acked.values().map(|(_, n)| n).sum()
    }

    /// One line for the test's output (`--nocapture`).
    fn report(&self, scenario: &str) {
        eprintln!(
            "{scenario}: {} batches / {} events acknowledged ({} forwarded, {} spooled), \
             {} retries, {} transport failures, {} resent to a new relay, {} devices",
            self.acked.len(),
            self.acked_events(),
            self.forwarded,
            self.spooled,
            self.retries,
            self.transport_failures,
            self.resent_to_new_relay,
            self.per_device.len()
        );
    }
}

/// A fleet of devices sending through the current target until told to stop.
struct Fleet {
    target: Arc<RwLock<(u64, Target)>>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    give_up_at: Arc<Mutex<Option<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Shape of the load.
#[derive(Clone, Copy, Debug)]
struct Load {
    devices: usize,
    events_per_batch: u64,
    pause: Duration,
    /// Longest wait honoured after a `Retry` (the devices' own cap).
    max_retry_wait: Duration,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            devices: 6,
            events_per_batch: 5,
            pause: Duration::from_millis(10),
            max_retry_wait: Duration::from_secs(2),
        }
    }
}

fn make_batch(device: DeviceId, first_seq: u64, n: u64) -> EventBatch {
    Batch::new(APP)
        .device(device)
        .first_seq(first_seq)
        .events(n)
        .name("fault")
        .ts_base(1_700_000_000_000)
        .build()
}

async fn connect(target: &Target) -> Result<quinn::Connection, String> {
    // A dead relay is noticed in seconds, not the default 30 s.
    let ep = tern_testkit::device::quic_endpoint_with_idle_timeout(
        &target.ca_pem,
        &[ALPN],
        Duration::from_secs(3),
    );
    let connecting = ep
        .connect(target.addr, "localhost")
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(3), connecting)
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())
}

async fn roundtrip(conn: &quinn::Connection, frame: &[u8]) -> Result<Message, String> {
    let io = tern_testkit::device::try_roundtrip_bytes(conn, frame);
    let reply = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| "request timed out".to_string())??;
    Message::from_bytes(&reply, &CodecConfig::device()).map_err(|e| format!("bad reply: {e}"))
}

async fn device(
    target: Arc<RwLock<(u64, Target)>>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    load: Load,
    give_up_at: Arc<Mutex<Option<Instant>>>,
) {
    let id = DeviceId::random();
    let mut next_seq = 1;
    let mut pending: Option<EventBatch> = None;
    let mut formed_in = 0;
    let mut conn: Option<(u64, quinn::Connection)> = None;
    loop {
        if pending.is_none() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            pending = Some(make_batch(id, next_seq, load.events_per_batch));
            formed_in = target.read().unwrap().0;
        }
        if give_up_at
            .lock()
            .unwrap()
            .is_some_and(|t| Instant::now() >= t)
        {
            tally.lock().unwrap().unfinished.push(id);
            return;
        }
        let (generation, current) = target.read().unwrap().clone();
        if conn
            .as_ref()
            .is_none_or(|(g, c)| *g != generation || c.close_reason().is_some())
        {
            match connect(&current).await {
                Ok(c) => conn = Some((generation, c)),
                Err(_) => {
                    conn = None;
                    tally.lock().unwrap().transport_failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some((_, c)) = conn.as_ref() else {
            continue;
        };
        let batch = pending.as_mut().unwrap();
        batch.attempt = batch.attempt.saturating_add(1);
        let frame = Message::IngestRequest(IngestRequest {
            auth: Auth {
                app_id: AppId::new(APP),
                key: KEY.into(),
            },
            batch: batch.clone(),
        })
        .encode(&CodecConfig::device())
        .unwrap();
        match roundtrip(c, &frame).await {
            Ok(Message::IngestReply(reply)) => {
                let batch_id = batch.batch_id;
                if reply.batch_id != batch_id {
                    tally
                        .lock()
                        .unwrap()
                        .anomalies
                        .push(format!("reply for {} to {batch_id}", reply.batch_id));
                }
                match reply.outcome {
                    IngestOutcome::Accepted { durability } => {
                        let n = load.events_per_batch;
                        {
                            let mut t = tally.lock().unwrap();
                            if t.acked.insert(batch_id, (id, n)).is_some() {
                                t.anomalies.push(format!("{batch_id} acknowledged twice"));
                            }
                            if durability == Durability::Spooled {
                                t.spooled += 1;
                            } else {
                                t.forwarded += 1;
                            }
                            *t.acked_by_generation.entry(generation).or_default() += 1;
                            if generation != formed_in {
                                t.resent_to_new_relay += 1;
                            }
                            *t.per_device.entry(id).or_default() += n;
                        }
                        next_seq += n;
                        pending = None;
                        tokio::time::sleep(load.pause).await;
                    }
                    IngestOutcome::Retry { after_ms } => {
                        tally.lock().unwrap().retries += 1;
                        let wait = Duration::from_millis(after_ms).min(load.max_retry_wait);
                        tokio::time::sleep(wait).await;
                    }
                    other => {
                        // A device would drop a rejected batch: a gap. Record it, and
                        // keep the batch so the data still arrives (the test fails on the
                        // anomaly anyway).
                        tally
                            .lock()
                            .unwrap()
                            .anomalies
                            .push(format!("{batch_id}: {other:?}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            Ok(other) => {
                tally
                    .lock()
                    .unwrap()
                    .anomalies
                    .push(format!("unexpected reply {other:?}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                conn = None;
                tally.lock().unwrap().transport_failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Fleet {
    fn start(target: Target, load: Load) -> Fleet {
        let target = Arc::new(RwLock::new((0, target)));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let give_up_at = Arc::new(Mutex::new(None));
        let tasks = (0..load.devices)
            .map(|_| {
                tokio::spawn(device(
                    target.clone(),
                    tally.clone(),
                    stop.clone(),
                    load,
                    give_up_at.clone(),
                ))
            })
            .collect();
        Fleet {
            target,
            tally,
            stop,
            give_up_at,
            tasks,
        }
    }

    fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    /// Points the devices at a new relay.
    fn retarget(&self, target: Target) -> u64 {
        let mut t = self.target.write().unwrap();
        t.0 += 1;
        t.1 = target;
        t.0
    }

    /// Waits until `cond` holds for the tally.
    async fn wait(&self, what: &str, limit: Duration, cond: impl Fn(&Tally) -> bool) -> Tally {
        wait_for(what, limit, || async {
            let t = self.tally();
            if cond(&t) {
                Ok(t)
            } else {
                Err(format!(
                    "forwarded {}, spooled {}, retries {}, transport failures {}",
                    t.forwarded, t.spooled, t.retries, t.transport_failures
                ))
            }
        })
        .await
    }

    /// Stops forming new batches; every device finishes the batch it holds (sends it
    /// until acknowledged) or gives up after `limit`. Returns the final tally.
    async fn finish(self, limit: Duration) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        *self.give_up_at.lock().unwrap() = Some(Instant::now() + limit);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.tally.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------------------

/// The devices saw nothing they should not have, and every device delivered all it
/// formed.
fn assert_clean(tally: &Tally) {
    assert!(
        tally.anomalies.is_empty(),
        "anomalies: {:?}",
        tally.anomalies
    );
    assert!(
        tally.unfinished.is_empty(),
        "{} devices still held an unacknowledged batch at the deadline",
        tally.unfinished.len()
    );
}

/// The backend holds every acknowledged batch and event exactly once: as many stored
/// batches and unique events as were acknowledged, no event stored twice, no sequence
/// gap, and per device exactly seqs `1..=n` for the `n` events it had acknowledged.
async fn assert_exactly_once(backend: &Backend, tally: &Tally) {
    assert_clean(tally);
    let batches = tally.acked.len() as u64;
    let events = tally.acked_events();
    let s = wait_for(
        "the backend to hold every acknowledged batch",
        Duration::from_secs(30),
        || async {
            let s = backend.summary().await;
            let stored = s["batches_stored"].as_u64().unwrap_or(0);
            let unique = s["events_unique"].as_u64().unwrap_or(0);
            if stored >= batches && unique >= events {
                Ok(s)
            } else {
                Err(format!("{s} (want {batches} batches, {events} events)"))
            }
        },
    )
    .await;
    assert_eq!(s["batches_stored"], batches, "batches stored: {s}");
    assert_eq!(s["events_unique"], events, "unique events: {s}");
    assert_eq!(s["events_duplicate"], 0, "an event stored twice: {s}");
    assert_eq!(s["sequence_gaps"], 0, "a sequence gap: {s}");
    assert_eq!(s["devices"], tally.per_device.len() as u64, "{s}");
    for (device, n) in &tally.per_device {
        let d = backend
            .get(&format!("/verify/apps/{APP}/devices/{device}"))
            .await
            .unwrap();
        assert_eq!(
            (
                d["max_seq"].as_u64(),
                d["unique_events"].as_u64(),
                d["duplicate_events"].as_u64(),
                d["gaps"].as_u64()
            ),
            (Some(*n), Some(*n), Some(0), Some(0)),
            "device {device}: {d}"
        );
    }
}

/// Conservation on the relay's `/metrics`: `accepted_forwarded + accepted_spooled`
/// equals the acknowledgements its devices received.
async fn assert_conservation(relay: &Relay, acked: u64) {
    let (fwd, spooled) = wait_for(
        "relay acknowledgement counters",
        Duration::from_secs(10),
        || async {
            let (f, s) = relay.metrics().await?.accepted();
            if f + s >= acked {
                Ok((f, s))
            } else {
                Err(format!("forwarded {f} + spooled {s} < {acked}"))
            }
        },
    )
    .await;
    assert_eq!(
        fwd + spooled,
        acked,
        "relay counted {fwd} forwarded + {spooled} spooled, devices received {acked} acks"
    );
}

/// The spool directory ends with no `.tern` object. Other files (an object store's
/// staging files) are reported, not failed on.
async fn assert_spool_drained(dir: &Path, relay: &Relay) {
    wait_for("the spool to drain", Duration::from_secs(30), || async {
        let (objects, _) = spool_files(dir);
        if objects.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} objects left: {:?}\n{}",
                objects.len(),
                objects,
                relay.log_tail()
            ))
        }
    })
    .await;
    let (_, other) = spool_files(dir);
    if !other.is_empty() {
        eprintln!("note: non-object files left in the spool: {other:?}");
    }
}

async fn breaker_closed(relay: &Relay) {
    wait_for(
        "the relay's breaker to close",
        Duration::from_secs(30),
        || async {
            let m = relay.metrics().await?;
            if m.breaker_closed() {
                Ok(())
            } else {
                Err(m
                    .0
                    .lines()
                    .filter(|l| l.starts_with("tern_relay_breaker_state"))
                    .collect::<Vec<_>>()
                    .join(" "))
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// The backend goes down for a few seconds while devices send: the relay spools
/// (`Accepted{spooled}`), and after recovery the replayer drains the spool; the backend
/// ends up with every acknowledged batch exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_outage_under_load_is_spooled_then_replayed_exactly_once() {
    let backend = start_backend();
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let relay = Relay::start(
        &backend,
        "relay-outage",
        &SpoolAt::Dir(spool.clone()),
        work.path(),
        "relay",
    );
    relay.wait_ready().await;
    let fleet = Fleet::start(relay.target(), Load::default());
    let limit = Duration::from_secs(20);
    fleet
        .wait("forwarded acks", limit, |t| t.forwarded >= 50)
        .await;

    set_down(&backend, true).await;
    let down = fleet.tally();
    fleet
        .wait("spooled acks during the outage", limit, |t| {
            t.spooled >= down.spooled + 50
        })
        .await;
    let (objects, _) = spool_files(&spool);
    assert!(!objects.is_empty(), "spooled batches are in --spool-dir");
    // Stay down a few seconds under load.
    tokio::time::sleep(Duration::from_secs(3)).await;
    set_down(&backend, false).await;
    let up = fleet.tally();
    fleet
        .wait(
            "forwarded acks after recovery",
            Duration::from_secs(30),
            |t| t.forwarded >= up.forwarded + 50,
        )
        .await;
    breaker_closed(&relay).await;
    let tally = fleet.finish(Duration::from_secs(20)).await;
    tally.report("outage");

    assert!(tally.spooled > 0);
    assert_spool_drained(&spool, &relay).await;
    assert_exactly_once(&backend, &tally).await;
    assert_conservation(&relay, tally.acked.len() as u64).await;
}

/// SIGKILL of the relay while it spools (backend down, devices sending), then a restart
/// on the same spool with the backend back: the new relay replays what the dead one
/// spooled, devices resend what was never acknowledged, and the backend ends up with
/// every batch exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_spooling_then_restart_loses_and_duplicates_nothing() {
    let backend = start_backend();
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let at = SpoolAt::Dir(spool.clone());
    let mut first = Relay::start(&backend, "relay-kill", &at, work.path(), "first");
    first.wait_ready().await;
    let fleet = Fleet::start(first.target(), Load::default());
    let limit = Duration::from_secs(20);
    fleet
        .wait("forwarded acks", limit, |t| t.forwarded >= 30)
        .await;

    set_down(&backend, true).await;
    let down = fleet.tally();
    fleet
        .wait("spooled acks during the outage", limit, |t| {
            t.spooled >= down.spooled + 50
        })
        .await;
    let (objects, other) = spool_files(&spool);
    first.kill();
    let killed = fleet.tally();
    assert!(
        !objects.is_empty(),
        "spooled batches are on disk: {other:?} {}",
        first.log_tail()
    );
    fleet
        .wait("devices to notice the dead relay", limit, |t| {
            t.transport_failures > killed.transport_failures
        })
        .await;

    set_down(&backend, false).await;
    let second = Relay::start(&backend, "relay-kill", &at, work.path(), "second");
    second.wait_ready().await;
    let generation = fleet.retarget(second.target());
    fleet
        .wait(
            "acks from the restarted relay",
            Duration::from_secs(30),
            |t| t.acked_by_generation.get(&generation).copied().unwrap_or(0) >= 50,
        )
        .await;
    let tally = fleet.finish(Duration::from_secs(20)).await;
    tally.report("sigkill");
    assert!(
        tally.resent_to_new_relay > 0,
        "batches unacknowledged at the kill were resent to the new relay"
    );

    assert!(tally.spooled > 0);
    assert_spool_drained(&spool, &second).await;
    assert_exactly_once(&backend, &tally).await;
    assert_conservation(&second, tally.acked_by_generation[&generation]).await;
}

/// A loopback URL nothing listens on.
fn dead_endpoint() -> String {
    let port = tern_testkit::proc::free_tcp_port().unwrap();
    format!("http://127.0.0.1:{port}")
}

/// While neither the backend nor the spool can take a batch, devices are told to retry
/// and nothing is acknowledged: between `settled` (taken once the first `Retry` of the
/// outage arrived) and `later`, no acknowledgement of any kind, and more unacknowledged
/// attempts (`Retry`, or no answer within the device's request timeout: the relay holds
/// a request while the object store client retries its PUT).
///
/// Kept apart so it is easy to adapt: a relay with a local fallback of capacity 0 must
/// still pass it unchanged; one with a non-zero fallback would expect `spooled` acks.
fn assert_outage_answers_retry(settled: &Tally, later: &Tally, relay: &Metrics) {
    assert_eq!(
        later.spooled, 0,
        "nothing can be spooled with the store down"
    );
    assert_eq!(relay.accepted().1, 0, "the relay counted a spooled ack");
    assert_eq!(
        later.forwarded, settled.forwarded,
        "a batch was acknowledged as forwarded while the backend was down"
    );
    assert!(settled.retries > 0, "devices were told to retry");
    assert!(
        unacknowledged(later) > unacknowledged(settled),
        "devices kept trying during the outage"
    );
}

/// Attempts that got no acknowledgement.
fn unacknowledged(t: &Tally) -> u64 {
    t.retries + t.transport_failures
}

/// Backend and object store both down (an S3 spool whose endpoint nobody listens on,
/// and the local-disk fallback disabled):
/// devices get `Retry`, never `Accepted`, and keep their data; once the backend is
/// back, everything arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_and_object_store_down_means_retry_and_nothing_is_lost() {
    let backend = start_backend();
    let work = tempfile::tempdir().unwrap();
    let at = SpoolAt::S3 {
        endpoint: dead_endpoint(),
        // No local-disk fallback (with one, the relay would spool there instead).
        extra: "spool_max_bytes = 0\nspool_store_timeout_ms = 1000".into(),
    };
    let relay = Relay::start(&backend, "relay-nostore", &at, work.path(), "relay");
    relay.wait_ready().await;
    let fleet = Fleet::start(relay.target(), Load::default());
    let limit = Duration::from_secs(20);
    fleet
        .wait("forwarded acks", limit, |t| t.forwarded >= 30)
        .await;

    set_down(&backend, true).await;
    let down = fleet.tally();
    let settled = fleet
        .wait("retries during the outage", Duration::from_secs(30), |t| {
            t.retries > down.retries
        })
        .await;
    fleet
        .wait(
            "more unacknowledged attempts during the outage",
            limit,
            |t| unacknowledged(t) >= unacknowledged(&settled) + Load::default().devices as u64,
        )
        .await;
    let later = fleet.tally();
    let metrics = relay.metrics().await.unwrap();
    assert_outage_answers_retry(&settled, &later, &metrics);

    set_down(&backend, false).await;
    fleet
        .wait(
            "forwarded acks after recovery",
            Duration::from_secs(30),
            |t| t.forwarded >= later.forwarded + 30,
        )
        .await;
    let tally = fleet.finish(Duration::from_secs(20)).await;
    tally.report("no store");
    assert_eq!(tally.spooled, 0);
    assert_exactly_once(&backend, &tally).await;
    assert_conservation(&relay, tally.acked.len() as u64).await;
}

// ---------------------------------------------------------------------------------------
// Robustness: hostile streams on one connection
// ---------------------------------------------------------------------------------------

mod hostile {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};

    fn valid_frames() -> Vec<Vec<u8>> {
        [1, 5, 200]
            .into_iter()
            .map(|events| {
                Message::IngestRequest(IngestRequest {
                    auth: Auth {
                        app_id: AppId::new(APP),
                        key: KEY.into(),
                    },
                    batch: make_batch(DeviceId::random(), 1, events),
                })
                .encode(&CodecConfig::device())
                .unwrap()
            })
            .chain(std::iter::once(
                Message::ShardMapRequest(tern_protocol::ShardMapRequest {
                    auth: Auth {
                        app_id: AppId::new(APP),
                        key: KEY.into(),
                    },
                    known_version: 0,
                })
                .encode(&CodecConfig::device())
                .unwrap(),
            ))
            .collect()
    }

    #[derive(Clone, Debug)]
    enum Mutation {
        Random(Vec<u8>),
        Flip(Index, u8),
        FlipMany(Vec<(Index, u8)>),
        Truncate(Index),
        Append(Vec<u8>),
        Twice,
        Length(u32),
        Empty,
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048).prop_map(Mutation::Random),
            (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
            proptest::collection::vec((any::<Index>(), 1..=255u8), 2..16)
                .prop_map(Mutation::FlipMany),
            any::<Index>().prop_map(Mutation::Truncate),
            proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
            Just(Mutation::Twice),
            any::<u32>().prop_map(Mutation::Length),
            Just(Mutation::Empty),
        ]
    }

    fn apply(frame: &[u8], m: &Mutation) -> Vec<u8> {
        let mut f = frame.to_vec();
        match m {
            Mutation::Random(bytes) => return bytes.clone(),
            Mutation::Flip(i, x) => {
                let i = i.index(f.len());
                f[i] ^= x;
            }
            Mutation::FlipMany(flips) => {
                for (i, x) in flips {
                    let i = i.index(f.len());
                    f[i] ^= x;
                }
            }
            Mutation::Truncate(i) => f.truncate(i.index(f.len())),
            Mutation::Append(tail) => f.extend_from_slice(tail),
            Mutation::Twice => f.extend_from_slice(frame),
            Mutation::Length(n) => {
                // The frame header's 4-byte length field.
                f[..4].copy_from_slice(&n.to_be_bytes());
            }
            Mutation::Empty => f.clear(),
        }
        f
    }

    /// `n` hostile inputs: random bytes and mutations of valid requests, generated by
    /// proptest from a fixed seed (reproducible).
    fn inputs(n: usize) -> Vec<Vec<u8>> {
        let frames = valid_frames();
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            ),
        );
        let strategy = (0..frames.len(), mutation());
        (0..n)
            .map(|_| {
                let (which, m) = strategy.new_tree(&mut runner).unwrap().current();
                apply(&frames[which], &m)
            })
            .collect()
    }

    /// Many random and mutated frames on separate streams of one QUIC connection to
    /// the real relay: each gets a well-formed reply frame, the connection survives, and
    /// a valid request afterwards on the same connection is `Accepted`. Whatever the
    /// relay acknowledged among the mutants is exactly what the backend stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_streams_never_cost_the_connection() {
        let backend = start_backend();
        let work = tempfile::tempdir().unwrap();
        let relay = Relay::start(
            &backend,
            "relay-hostile",
            &SpoolAt::Dir(work.path().join("spool")),
            work.path(),
            "relay",
        );
        relay.wait_ready().await;
        let conn = connect(&relay.target()).await.unwrap();
        let inputs = inputs(600);
        // Mutants of one valid frame often keep its batch_id: the backend stores each id
        // once (and answers the rest `Duplicate`), so count distinct ids.
        let mut accepted = std::collections::HashSet::new();
        let mut acks = 0u64;
        let mut kinds: HashMap<String, u64> = HashMap::new();
        for chunk in inputs.chunks(32) {
            let tasks: Vec<_> = chunk
                .iter()
                .cloned()
                .map(|input| {
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        let reply = roundtrip(&conn, &input).await;
                        (input, reply)
                    })
                })
                .collect();
            for t in tasks {
                let (input, reply) = t.await.unwrap();
                let reply = reply.unwrap_or_else(|e| {
                    panic!(
                        "no reply frame for {} bytes {:02x?}: {e}",
                        input.len(),
                        &input[..input.len().min(64)]
                    )
                });
                let kind = match &reply {
                    Message::IngestReply(r) => match r.outcome {
                        IngestOutcome::Accepted { .. } => {
                            accepted.insert(r.batch_id);
                            acks += 1;
                            "accepted"
                        }
                        IngestOutcome::Retry { .. } => "retry",
                        _ => "rejected",
                    },
                    Message::ShardMapReply(_) => "shard_map",
                    Message::ErrorReply(_) => "error",
                    other => panic!("not a reply: {other:?}"),
                };
                *kinds.entry(kind.into()).or_default() += 1;
            }
        }
        assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
        // Most inputs are garbage; some mutants must still be requests.
        assert!(kinds.get("error").copied().unwrap_or(0) > 0, "{kinds:?}");

        let batch = make_batch(DeviceId::random(), 1, 3);
        let batch_id = batch.batch_id;
        let frame = Message::IngestRequest(IngestRequest {
            auth: Auth {
                app_id: AppId::new(APP),
                key: KEY.into(),
            },
            batch,
        })
        .encode(&CodecConfig::device())
        .unwrap();
        match roundtrip(&conn, &frame).await.unwrap() {
            Message::IngestReply(r) => assert_eq!(
                r.outcome,
                IngestOutcome::Accepted {
                    durability: Durability::Forwarded
                },
                "after {kinds:?}"
            ),
            other => panic!("{other:?}"),
        }
        accepted.insert(batch_id);
        acks += 1;
        let accepted = accepted.len() as u64;
        let s = wait_for("stored batches", Duration::from_secs(10), || async {
            let s = backend.summary().await;
            if s["batches_stored"].as_u64() >= Some(accepted) {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        })
        .await;
        assert_eq!(s["batches_stored"], accepted, "{s} after {kinds:?}");
        assert_conservation(&relay, acks).await;
        eprintln!("hostile replies: {kinds:?}; {accepted} distinct batches stored");
    }
}

/// Devices go quiet after an outage (everything they had was spooled): once the backend
/// is back, the relay must still drain its spool on its own.
/// (The replayer probes the breaker with the oldest spooled batch; before it did, only
/// live device requests could close the breaker and the spool stayed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_drains_after_recovery_without_device_traffic() {
    let backend = start_backend();
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let relay = Relay::start(
        &backend,
        "relay-quiet",
        &SpoolAt::Dir(spool.clone()),
        work.path(),
        "relay",
    );
    relay.wait_ready().await;
    set_down(&backend, true).await;
    let fleet = Fleet::start(relay.target(), Load::default());
    fleet
        .wait("spooled acks", Duration::from_secs(20), |t| {
            t.spooled >= 100
        })
        .await;
    let tally = fleet.finish(Duration::from_secs(20)).await;
    tally.report("quiet");
    assert!(!spool_files(&spool).0.is_empty());
    set_down(&backend, false).await;
    assert_spool_drained(&spool, &relay).await;
    assert_exactly_once(&backend, &tally).await;
}
