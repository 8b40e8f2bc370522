//! Exhaustion attacks by anonymous clients (issue #18, items 4-6 and the first clause of
//! item 10), across real processes on loopback.
//!
//! Each scenario starts the real `tern-relay` binary with small limits (environment
//! variables `TERN_RELAY_LIMITS_*`), the stub as its backend (in this process), one
//! attacker — `tern-loadgen attack <kind>`, sending from `127.0.0.2` — and, once the
//! attack is set up, a good client — `tern-loadgen good`, sending valid batches from
//! `127.0.0.1`, each once. The verdicts are counts:
//!
//! * the good client's batches accepted / sent >= 0.99;
//! * the events the stub stored are those the good client saw acknowledged (no fewer;
//!   no more than those of its failed batches on top);
//! * the relay's peak RSS (`/proc/<pid>/status`, sampled every 50 ms) stays under its
//!   RSS before the attack + the configured request-byte budget + [`RSS_ALLOWANCE`];
//! * the attack was cut: the relay's refusal / deadline counters moved and the
//!   attacker saw its slots refused or closed.
//!
//! The scenarios take turns ([`SERIAL`]): each loads the machine, and RSS is read per
//! process anyway. No timing is asserted: deadlines are generous caps, and the one
//! barrier (the attacker's `established` line) is an event, not a sleep.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_protocol::{CodecConfig, Message, RejectReason};
use tern_testkit::{metrics, Backend, RelayProc};

/// Scenarios take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: u64 = 1 << 20;
/// The in-flight request budget the scenarios configure.
const BUDGET: u64 = 16 * MIB;
/// RSS above the pre-attack level + [`BUDGET`] that a scenario tolerates: per-connection
/// state (TLS and HTTP buffers, QUIC connection state) of the connections the limits
/// let in, allocator slack and the good client's own traffic.
const RSS_ALLOWANCE: u64 = 64 * MIB;
/// The attacker's source address; the good client sends from 127.0.0.1.
const ATTACKER: &str = "127.0.0.2";
const GOOD: &str = "127.0.0.1";
/// Batches each of the good client's two devices sends during an attack.
const GOOD_BATCHES: u32 = 60;

/// The limits every scenario runs with (old binaries ignore the variables they do not
/// know, which is how the scenarios were measured before the limits existed).
fn limits() -> Vec<(&'static str, String)> {
    [
        ("TERN_RELAY_LIMITS_REQUEST_BYTES", BUDGET.to_string()),
        (
            "TERN_RELAY_LIMITS_REQUEST_BYTES_PER_SOURCE",
            (4 * MIB).to_string(),
        ),
        ("TERN_RELAY_LIMITS_REQUEST_READ_TIMEOUT_MS", "5000".into()),
        ("TERN_RELAY_LIMITS_HEADER_TIMEOUT_MS", "2000".into()),
        ("TERN_RELAY_LIMITS_HANDSHAKE_TIMEOUT_MS", "3000".into()),
        ("TERN_RELAY_LIMITS_MAX_HANDSHAKES", "64".into()),
        ("TERN_RELAY_LIMITS_HANDSHAKES_PER_SOURCE", "4".into()),
        ("TERN_RELAY_LIMITS_RETRY_ABOVE_HANDSHAKES", "8".into()),
        ("TERN_RELAY_LIMITS_CONNECTIONS_PER_SOURCE", "16".into()),
        ("TERN_RELAY_LIMITS_HTTPS_MAX_CONNECTIONS", "128".into()),
        ("TERN_RELAY_LIMITS_HTTPS_MAX_REQUESTS", "64".into()),
        ("TERN_RELAY_LIMITS_REQUESTS_PER_SOURCE", "8".into()),
        ("TERN_RELAY_LIMITS_MAX_SUBSCRIPTIONS", "32".into()),
        ("TERN_RELAY_LIMITS_SUBSCRIPTIONS_PER_SOURCE", "4".into()),
        ("TERN_RELAY_LIMITS_ADMIN_MAX_CONNECTIONS", "16".into()),
        ("TERN_RELAY_MAX_CONNECTIONS", "40".into()),
        ("TERN_RELAY_RATE_LIMIT_EVENTS_PER_SEC", "100000000".into()),
        ("TERN_RELAY_RATE_LIMIT_BURST", "100000000".into()),
    ]
    .into_iter()
    .collect()
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// The relay binary as a child process, with the scenario limits.
struct Relay {
    proc: RelayProc,
    ca: PathBuf,
}

impl Relay {
    /// Starts the relay with the scenario limits, under `ulimit -n nofile` if given.
    fn start(backend: &str, nofile: Option<u32>) -> Relay {
        let mut builder = RelayProc::builder(backend)
            .id("relay-attacked")
            .envs(limits())
            .log_level("error");
        if let Some(n) = nofile {
            builder = builder.nofile(n);
        }
        let proc = builder.start();
        Relay {
            ca: proc.dir.join("ca.pem"),
            proc,
        }
    }

    fn addr(&self, listener: &str) -> String {
        self.proc.ready[listener].as_str().unwrap().to_owned()
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metrics::sum(&self.proc.metrics_text().await, name, labels)
    }

    async fn wait_ready(&self) {
        self.proc.wait_ready().await
    }

    fn admin_token(&self) -> String {
        self.proc.admin_token().trim().to_owned()
    }
}

/// Resident set size of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Open file descriptors of `pid`.
fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Samples a process's RSS and fd count every 50 ms until dropped; keeps the peaks.
struct Sampler {
    rss_peak: Arc<AtomicU64>,
    fds_peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let rss_peak = Arc::new(AtomicU64::new(rss(pid)));
        let fds_peak = Arc::new(AtomicU64::new(fds(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (rss_peak, fds_peak, stop) = (rss_peak.clone(), fds_peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    rss_peak.fetch_max(rss(pid), Ordering::Relaxed);
                    fds_peak.fetch_max(fds(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Sampler {
            rss_peak,
            fds_peak,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.rss_peak.load(Ordering::Relaxed),
            self.fds_peak.load(Ordering::Relaxed),
        )
    }
}

/// A `tern-loadgen attack` child; its JSON lines arrive on a channel.
struct Attack {
    child: Child,
    lines: std::sync::mpsc::Receiver<Value>,
    /// The answers it has announced seeing (`{"event":"status"}` lines read so far).
    seen: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl Attack {
    fn spawn(kind: &str, target: &str, ca: &Path, args: &[&str]) -> Attack {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"))
            .args(["attack", kind, "--target", target, "--from", ATTACKER])
            .args(["--until-stdin-closes", "--duration", "300s"])
            .arg("--ca")
            .arg(ca)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Attack {
            child,
            lines,
            seen: Default::default(),
        }
    }

    /// Ends the attack (closes its standard input) and returns its final counts.
    fn stop(&mut self) -> Value {
        drop(self.child.stdin.take());
        self.wait("done", Duration::from_secs(90))
    }

    /// Waits for the line `{"event": event, ...}` (the attack is set up / done).
    fn wait(&self, event: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(v) => self.note(&v),
                Err(e) => panic!("attacker: no {event:?} line within {limit:?}: {e}"),
            }
        }
    }

    fn note(&self, line: &Value) {
        if line["event"] == "status" {
            if let Some(s) = line["status"].as_str() {
                self.seen.borrow_mut().insert(s.to_owned());
            }
        }
    }

    /// Waits until the attacker has been answered with `status` (a barrier: an answer
    /// the relay sent may still be on its way when the relay's counter has moved).
    fn wait_status(&self, status: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.seen.borrow().contains(status) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => self.note(&v),
                Err(e) => panic!(
                    "attacker: not answered {status:?} within {limit:?} (seen {:?}): {e}",
                    self.seen.borrow()
                ),
            }
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tern-loadgen good` against `target` and returns its JSON line.
/// `batches` per sender (2 senders, 20 batches/s each at most), each sent once.
fn good(transport: &str, target: &str, ca: &Path, batches: u32, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"))
        .args(["good", "--transport", transport, "--target", target])
        .arg("--ca")
        .arg(ca)
        .args([
            "--bind",
            GOOD,
            "--rate",
            "20",
            "--senders",
            "2",
            "--duration",
            "600s",
        ])
        .args(["--batches", &batches.to_string()])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tern-loadgen good failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("bad good line {line:?}: {e}"))
}

// ---------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------

/// What a scenario measured.
struct Measured {
    good: Value,
    attack: Value,
    rss_before: u64,
    rss_peak: u64,
    fds_peak: u64,
    stored_events: u64,
}

impl Measured {
    fn print(&self, name: &str) {
        eprintln!(
            "{name}: good {} ({} of {} batches, p99 {} ms, failures {}); relay RSS {} -> peak {} MiB, fds peak {}; attacker {}",
            self.good["success_ratio"],
            self.good["accepted"],
            self.good["batches"],
            self.good["latency_ms"]["p99"],
            self.good["failures"],
            self.rss_before / MIB,
            self.rss_peak / MIB,
            self.fds_peak,
            self.attack["counts"],
        );
    }

    /// The verdicts every scenario shares.
    fn assert_common(&self, name: &str) {
        self.print(name);
        let g = &self.good;
        let ratio = g["success_ratio"].as_f64().unwrap();
        assert_eq!(
            g["batches"].as_u64().unwrap(),
            2 * u64::from(GOOD_BATCHES),
            "{name}: the good client sent every batch: {g}"
        );
        assert!(
            ratio >= 0.99,
            "{name}: the good client's success ratio fell to {ratio}: {g}"
        );
        let acked = g["events_accepted"].as_u64().unwrap();
        let failed = g["events_failed"].as_u64().unwrap();
        assert!(
            self.stored_events >= acked && self.stored_events <= acked + failed,
            "{name}: the stub stored {} events; the good client had {acked} acknowledged \
             and {failed} failed",
            self.stored_events
        );
        let ceiling = self.rss_before + BUDGET + RSS_ALLOWANCE;
        assert!(
            self.rss_peak <= ceiling,
            "{name}: relay RSS peaked at {} MiB, over {} MiB before + {} MiB budget + {} MiB allowance",
            self.rss_peak / MIB,
            self.rss_before / MIB,
            BUDGET / MIB,
            RSS_ALLOWANCE / MIB
        );
    }
}

/// One attack and the good client meanwhile.
struct Scenario<'a> {
    /// `tern-loadgen attack` kind and arguments.
    kind: &'a str,
    attack: &'a [&'a str],
    /// The relay listener attacked (`quic`, `https`).
    listener: &'a str,
    /// The good client's transport and extra arguments.
    transport: &'a str,
    good: &'a [&'a str],
    /// Relay counters (name, label filters) that must have moved before the attack is
    /// stopped: the relay cut the attacker (a barrier on an event, not a sleep).
    cut_by: &'a [(&'a str, &'a [&'a str])],
    /// Answers the attacker must have seen before it is stopped (HTTP statuses).
    answered: &'a [&'a str],
}

impl Scenario<'_> {
    /// Warms the relay up, starts the attack, runs the good client (and `during`)
    /// once the attack is set up, waits for `cut_by`, stops the attack.
    async fn run(&self, backend: &Backend, relay: &Relay, during: impl AsyncFnOnce()) -> Measured {
        relay.wait_ready().await;
        let good_target = relay.addr(self.transport);
        // Warm the relay up (first connections, first forwards) before the baseline.
        let warm = good(self.transport, &good_target, &relay.ca, 5, &[]);
        assert!(
            warm["accepted"].as_u64().unwrap() > 0,
            "warm-up failed: {warm}"
        );
        let stored_before = stored_events(backend).await;
        let rss_before = rss(relay.pid());
        let sampler = Sampler::start(relay.pid());
        let mut attack = Attack::spawn(
            self.kind,
            &relay.addr(self.listener),
            &relay.ca,
            self.attack,
        );
        attack.wait("established", Duration::from_secs(60));
        let good_result = {
            let (ca, target) = (relay.ca.clone(), good_target.clone());
            let transport = self.transport.to_owned();
            let extra: Vec<String> = self.good.iter().map(|s| s.to_string()).collect();
            let handle = std::thread::spawn(move || {
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                good(&transport, &target, &ca, GOOD_BATCHES, &extra)
            });
            during().await;
            tokio::task::spawn_blocking(move || handle.join().unwrap())
                .await
                .unwrap()
        };
        for (name, labels) in self.cut_by {
            let what = format!("{name}{labels:?} to move");
            tern_testkit::wait_until(&what, Duration::from_secs(60), || async {
                relay.metric(name, labels).await > 0.0
            })
            .await;
        }
        for status in self.answered {
            attack.wait_status(status, Duration::from_secs(60));
        }
        let attack_result = attack.stop();
        let (rss_peak, fds_peak) = sampler.finish();
        let stored_events = stored_events(backend).await - stored_before;
        Measured {
            good: good_result,
            attack: attack_result,
            rss_before,
            rss_peak,
            fds_peak,
            stored_events,
        }
    }
}

/// Events the stub has stored (final once the good client has its replies: the relay
/// acknowledges a forwarded batch only after the stub's reply).
async fn stored_events(backend: &Backend) -> u64 {
    backend.summary().await["events_unique"].as_u64().unwrap()
}

async fn start(nofile: Option<u32>) -> (Backend, Relay) {
    let backend = Backend::start(&tern_testkit::demo_apps()).await;
    let relay = Relay::start(&backend.url, nofile);
    (backend, relay)
}

// ---------------------------------------------------------------------------------------
// The attacks
// ---------------------------------------------------------------------------------------

/// 4 connections x 100 streams, each sending 1 MB of a request frame it never
/// finishes: 400 MB if the relay buffered them. The relay charges what it buffers to
/// the request-byte budget (its source may hold half of it alone) and resets streams
/// over it (`busy`); streams that stay are reset at the read deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_frames_on_many_quic_streams_stay_within_the_byte_budget() {
    let _turn = SERIAL.lock().await;
    let (backend, relay) = start(None).await;
    let m = Scenario {
        kind: "quic-streams",
        attack: &["--connections", "4", "--streams", "100"],
        listener: "quic",
        transport: "quic",
        good: &[],
        cut_by: &[
            ("tern_relay_refused_total", &["limit=\"request_bytes\""]),
            ("tern_relay_deadline_exceeded_total", &["phase=\"request\""]),
        ],
        answered: &[],
    }
    .run(&backend, &relay, async || {})
    .await;
    m.assert_common("quic-streams");
    let c = &m.attack["counts"];
    assert!(
        c["refused"].as_u64().unwrap() > 0 && c["cut"].as_u64().unwrap() > 0,
        "the attacker saw streams refused and held ones cut: {c}"
    );
}

/// 60 sockets, each starting a QUIC handshake every second and never finishing it
/// (answering the relay's Retry first, so the address is proven): a relay that gave
/// each attempt a connection slot at once had none left for anyone. Slots are taken
/// after the handshake; handshakes in progress are budgeted (with a per-source share)
/// and cut at the handshake deadline. The good client opens a new connection for every
/// batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_quic_handshakes_from_many_sockets_do_not_lock_others_out() {
    let _turn = SERIAL.lock().await;
    let (backend, relay) = start(None).await;
    let m = Scenario {
        kind: "quic-handshakes",
        attack: &["--connections", "60", "--interval", "1s", "--follow-retry"],
        listener: "quic",
        transport: "quic",
        good: &["--reconnect-every", "1"],
        cut_by: &[
            ("tern_relay_refused_total", &["limit=\"quic_handshakes\""]),
            ("tern_relay_quic_retries_total", &[]),
            (
                "tern_relay_deadline_exceeded_total",
                &["phase=\"handshake\""],
            ),
        ],
        answered: &[],
    }
    .run(&backend, &relay, async || {})
    .await;
    m.assert_common("quic-handshakes");
    let c = &m.attack["counts"];
    assert!(
        c["retries"].as_u64().unwrap() > 0
            && c["refused"].as_u64().unwrap() > 0
            && c["cut"].as_u64().unwrap() > 0,
        "the attacker was sent Retries, refused, and its stalled handshakes dropped: {c}"
    );
}

/// 300 HTTPS requests with 1 MB bodies that never finish: 300 MB if the relay read
/// bodies before taking a request slot. Slots are taken first, body bytes are charged
/// to the budget, held bodies are cut at the read deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_https_bodies_stay_within_the_byte_budget() {
    let _turn = SERIAL.lock().await;
    let (backend, relay) = start(None).await;
    let m = Scenario {
        kind: "https-bodies",
        attack: &["--connections", "300"],
        listener: "https",
        transport: "https",
        good: &[],
        cut_by: &[
            ("tern_relay_refused_total", &["transport=\"https\""]),
            ("tern_relay_deadline_exceeded_total", &["phase=\"request\""]),
        ],
        answered: &["408", "503"],
    }
    .run(&backend, &relay, async || {})
    .await;
    m.assert_common("https-bodies");
    let c = &m.attack["counts"];
    assert!(
        c["statuses"]["408"].as_u64().unwrap_or(0) > 0
            && c["statuses"]["503"].as_u64().unwrap_or(0) > 0,
        "the attacker got 503s (over its share) and 408s (held bodies too slow): {c}"
    );
}

/// 700 connections each to the HTTPS, admin and metrics listeners trickling a request
/// head, against a relay allowed 512 file descriptors: without connection caps and a
/// header deadline the relay runs out of descriptors. Operator requests and the good
/// client (a new connection per batch) keep being served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_every_tcp_listener_leaves_fds_and_operator_endpoints() {
    let _turn = SERIAL.lock().await;
    let (backend, relay) = start(Some(512)).await;
    relay.wait_ready().await;
    let plain = ["--connections", "700", "--interval", "500ms", "--plain"];
    let mut admin_attack = Attack::spawn("slowloris", &relay.addr("admin"), &relay.ca, &plain);
    let mut metrics_attack = Attack::spawn("slowloris", &relay.addr("metrics"), &relay.ca, &plain);
    admin_attack.wait("established", Duration::from_secs(60));
    metrics_attack.wait("established", Duration::from_secs(60));
    let token = relay.admin_token();
    let (readyz_url, admin_url) = (
        format!("http://{}/readyz", relay.addr("metrics")),
        format!("http://{}/admin/v1/status", relay.addr("admin")),
    );
    let operator_ok = Arc::new(AtomicU64::new(0));
    let operator_tries = Arc::new(AtomicU64::new(0));
    let m = Scenario {
        kind: "slowloris",
        attack: &["--connections", "700", "--interval", "500ms"],
        listener: "https",
        transport: "https",
        // A new connection for every batch: the listener must keep accepting.
        good: &["--reconnect-every", "1"],
        cut_by: &[
            (
                "tern_relay_deadline_exceeded_total",
                &["transport=\"https\"", "phase=\"header\""],
            ),
            (
                "tern_relay_deadline_exceeded_total",
                &["transport=\"admin\"", "phase=\"header\""],
            ),
            (
                "tern_relay_deadline_exceeded_total",
                &["transport=\"metrics\"", "phase=\"header\""],
            ),
            ("tern_relay_refused_total", &["limit=\"https_connections\""]),
            ("tern_relay_refused_total", &["limit=\"admin_connections\""]),
            (
                "tern_relay_refused_total",
                &["limit=\"metrics_connections\""],
            ),
        ],
        answered: &[],
    }
    .run(&backend, &relay, {
        let (ok, tries) = (operator_ok.clone(), operator_tries.clone());
        async move || {
            // The operator's view, from 127.0.0.1, while the attack runs; a new
            // connection per request: an operator arriving during the attack.
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .local_address(GOOD.parse::<std::net::IpAddr>().ok())
                .build()
                .unwrap();
            for _ in 0..10 {
                for (url, auth) in [(&readyz_url, false), (&admin_url, true)] {
                    tries.fetch_add(1, Ordering::Relaxed);
                    let mut req = http.get(url.as_str());
                    if auth {
                        req = req.bearer_auth(&token);
                    }
                    if req.send().await.is_ok_and(|r| r.status().is_success()) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    })
    .await;
    let admin_counts = admin_attack.stop();
    let metrics_counts = metrics_attack.stop();
    m.assert_common("slowloris");
    eprintln!("slowloris: admin attacker {admin_counts}, metrics attacker {metrics_counts}");
    let (ok, tries) = (
        operator_ok.load(Ordering::Relaxed),
        operator_tries.load(Ordering::Relaxed),
    );
    assert_eq!(
        ok, tries,
        "every /readyz and admin request answered during the attack"
    );
    // 128 HTTPS + 2 x 16 operator connections + the relay's own files and sockets.
    assert!(
        m.fds_peak < 512 - 100,
        "the relay kept clear of its descriptor limit (peak {})",
        m.fds_peak
    );
    for (name, c) in [
        ("https", &m.attack),
        ("admin", &admin_counts),
        ("metrics", &metrics_counts),
    ] {
        assert!(
            c["counts"]["cut"].as_u64().unwrap() > 0
                && c["counts"]["refused"].as_u64().unwrap() > 0,
            "{name}: the relay refused connections over the caps and closed trickling ones: {c}"
        );
    }
}

/// 60 held push subscriptions over HTTPS do not take the HTTPS ingest slots (40
/// here): subscriptions have their own budget (32, 4 per source once half is used),
/// and HTTPS ingest keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_subscriptions_do_not_take_https_ingest_slots() {
    let _turn = SERIAL.lock().await;
    let (backend, relay) = start(None).await;
    let m = Scenario {
        kind: "subscriptions",
        attack: &["--connections", "60"],
        listener: "https",
        transport: "https",
        good: &[],
        cut_by: &[("tern_relay_refused_total", &["limit=\"subscriptions\""])],
        answered: &[],
    }
    .run(&backend, &relay, async || {})
    .await;
    m.assert_common("subscriptions");
    let c = &m.attack["counts"];
    assert!(
        c["held_peak"].as_u64().unwrap() <= 16 && c["refused"].as_u64().unwrap() > 0,
        "the attacker held at most half the subscription budget (32): {c}"
    );
}

/// One request written on a fresh HTTPS connection (HTTP/1.1) while the response is
/// read: its status and body.
async fn raw_https(relay: &Relay, request: Vec<u8>) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pem = std::fs::read_to_string(&relay.ca).unwrap();
    let tls = tern_relay::listen::tls::client_config(&pem, &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(relay.addr("https"))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        // The relay may answer before it has read everything; a failed write is fine.
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr
    });
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = rd
            .read(&mut chunk)
            .await
            .expect("a response, not a dropped connection");
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = rd.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside the response body");
        body.extend_from_slice(&chunk[..n]);
    }
    drop(writer);
    (status, body)
}

/// `docs/protocol.md` §2.2: every protocol outcome of `POST /v1/rpc` is `200` with a
/// reply frame — a body over the frame limit included (announced by `Content-Length`
/// or discovered while reading a chunked body), not `413` or a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_https_bodies_get_200_and_error_reply_too_large() {
    let _turn = SERIAL.lock().await;
    let (_backend, relay) = start(None).await;
    relay.wait_ready().await;
    let over = tern_relay::listen::max_request_frame() + 1;
    let mut frame = u32::try_from(over - 4).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&[0x01, 0x00]);
    frame.resize(over, 0);
    let ct = tern_protocol::FRAME_CONTENT_TYPE;
    let mut with_length =
        format!("POST /v1/rpc HTTP/1.1\r\nHost: relay\r\nContent-Type: {ct}\r\nContent-Length: {over}\r\n\r\n")
            .into_bytes();
    with_length.extend_from_slice(&frame);
    let mut chunked =
        format!("POST /v1/rpc HTTP/1.1\r\nHost: relay\r\nContent-Type: {ct}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    for c in frame.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for (how, request) in [("content-length", with_length), ("chunked", chunked)] {
        let (status, body) = raw_https(&relay, request).await;
        assert_eq!(status, 200, "{how}: {}", String::from_utf8_lossy(&body));
        match Message::from_bytes(&body, &CodecConfig::device()) {
            Ok(Message::ErrorReply(e)) if e.reason == RejectReason::TooLarge => {}
            other => panic!("{how}: expected ErrorReply{{too_large}}, got {other:?}"),
        }
    }
    let counted = relay
        .metric(
            "tern_relay_requests_too_large_total",
            &["transport=\"https\""],
        )
        .await;
    assert_eq!(counted, 2.0, "both counted");
}
