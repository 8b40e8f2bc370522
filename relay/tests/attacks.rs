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

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{sum_metric, Backend};
use serde_json::Value;
use tern_protocol::{CodecConfig, Message, RejectReason};

/// Scenarios take turns.
static SERIAL: Mutex<()> = Mutex::new(());

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

/// The limits every scenario runs with (old binaries ignore the variables they do not
/// know, which is how the scenarios were measured before the limits existed).
fn limits() -> Vec<(&'static str, String)> {
    [
        ("TERN_RELAY_LIMITS_REQUEST_BYTES", BUDGET.to_string()),
        ("TERN_RELAY_LIMITS_REQUEST_BYTES_PER_SOURCE", (4 * MIB).to_string()),
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

/// The relay binary as a child process.
struct Relay {
    child: Child,
    ready: Value,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// Starts the relay with the scenario limits, under `ulimit -n nofile` if given.
    fn start(backend: &str, nofile: Option<u32>) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let ulimit = nofile.map_or(String::new(), |n| format!("ulimit -n {n} && "));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{ulimit}exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_tern-relay"))
            .args(["--dev", "--relay-id", "relay-attacked"])
            .args(["--quic-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--backend-url", backend])
            .arg("--dev-ca-out")
            .arg(&ca)
            .arg("--spool-dir")
            .arg(dir.path().join("spool"))
            .arg("--admin-state-file")
            .arg(dir.path().join("admin.json"))
            .current_dir(dir.path())
            .envs(limits())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad ready line {line:?}: {e}"));
        Relay {
            child,
            ready,
            ca,
            _dir: dir,
        }
    }

    fn addr(&self, listener: &str) -> String {
        self.ready[listener].as_str().unwrap().to_owned()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr("metrics")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.metrics().await;
        let lines: String = text
            .lines()
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .map(|l| format!("{l}\n"))
            .collect();
        sum_metric(&lines, name)
    }

    async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.addr("metrics"));
        common::wait_async("relay ready", || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    fn admin_token(&self) -> String {
        let file = self.ready["admin_token_file"].as_str().unwrap();
        std::fs::read_to_string(file).unwrap().trim().to_owned()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
}

impl Attack {
    fn spawn(kind: &str, target: &str, ca: &Path, args: &[&str]) -> Attack {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"))
            .args(["attack", kind, "--target", target, "--from", ATTACKER])
            .arg("--ca")
            .arg(ca)
            .args(args)
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
        Attack { child, lines }
    }

    /// Waits for the line `{"event": event, ...}` (the attack is set up / done).
    fn wait(&self, event: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(_) => {}
                Err(e) => panic!("attacker: no {event:?} line within {limit:?}: {e}"),
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
fn good(transport: &str, target: &str, ca: &Path, duration: &str, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"))
        .args(["good", "--transport", transport, "--target", target])
        .arg("--ca")
        .arg(ca)
        .args(["--bind", GOOD, "--duration", duration, "--rate", "20", "--senders", "2"])
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
        assert!(
            g["batches"].as_u64().unwrap() >= 50,
            "{name}: the good client sent too few batches to judge: {g}"
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

/// The attack on `listener` with `args`, and meanwhile the good client over
/// `transport` with `good_args`.
async fn scenario(
    backend: &Backend,
    relay: &Relay,
    kind: &str,
    listener: &str,
    attack_args: &[&str],
    transport: &str,
    good_args: &[&str],
    during: impl AsyncFnOnce(),
) -> Measured {
    relay.wait_ready().await;
    let good_target = relay.addr(transport);
    // Warm the relay up (first connections, first forwards) before the baseline.
    let warm = good(transport, &good_target, &relay.ca, "1s", &[]);
    assert!(warm["accepted"].as_u64().unwrap() > 0, "warm-up failed: {warm}");
    let stored_before = stored_events(backend).await;
    let rss_before = rss(relay.pid());
    let sampler = Sampler::start(relay.pid());
    let attack = Attack::spawn(kind, &relay.addr(listener), &relay.ca, attack_args);
    attack.wait("established", Duration::from_secs(60));
    let good_result = {
        let (ca, target) = (relay.ca.clone(), good_target.clone());
        let transport = transport.to_owned();
        let extra: Vec<String> = good_args.iter().map(|s| s.to_string()).collect();
        let handle = std::thread::spawn(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            good(&transport, &target, &ca, "8s", &extra)
        });
        during().await;
        tokio::task::spawn_blocking(move || handle.join().unwrap())
            .await
            .unwrap()
    };
    let attack_result = attack.wait("done", Duration::from_secs(90));
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

/// Events the stub has stored, once it has stored every batch it received (the
/// relay acknowledges a forwarded batch only after the stub's reply, so by the time the
/// good client has its replies this is final).
async fn stored_events(backend: &Backend) -> u64 {
    backend.summary().await["events_unique"].as_u64().unwrap()
}

async fn start(nofile: Option<u32>) -> (Backend, Relay) {
    let backend = Backend::start(&common::demo_apps()).await;
    let relay = Relay::start(&backend.url, nofile);
    (backend, relay)
}

// ---------------------------------------------------------------------------------------
// The attacks
// ---------------------------------------------------------------------------------------

/// 4 connections x 100 streams, each holding 1 MB of a request frame it never
/// finishes: 400 MB if the relay buffered them. The relay charges what it buffers to
/// the request-byte budget (4 MiB per source here) and stops streams over it; streams
/// that stay are stopped at the read deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_frames_on_many_quic_streams_stay_within_the_byte_budget() {
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (backend, relay) = start(None).await;
    let m = scenario(
        &backend,
        &relay,
        "quic-streams",
        "quic",
        &["--connections", "4", "--streams", "100", "--duration", "14s"],
        "quic",
        &[],
        async || {},
    )
    .await;
    m.assert_common("quic-streams");
    let refused = relay
        .metric("tern_relay_refused_total", &["limit=\"request_bytes\""])
        .await;
    let late = relay
        .metric("tern_relay_deadline_exceeded_total", &["phase=\"request\""])
        .await;
    assert!(
        refused > 0.0 && late > 0.0,
        "streams over the budget are refused ({refused}) and the ones held are cut at the read deadline ({late})"
    );
    assert!(m.attack["counts"]["cut"].as_u64().unwrap() + m.attack["counts"]["refused"].as_u64().unwrap() > 0);
}

/// 60 sockets, each starting a QUIC handshake every second and never finishing it
/// (answering the relay's Retry first, so the address is proven): a relay that gave
/// each a connection slot would have none left for anyone. Slots are taken after the
/// handshake; pending handshakes are capped per source and cut at the handshake
/// deadline. The good client opens a new connection for every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_quic_handshakes_from_many_sockets_do_not_lock_others_out() {
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (backend, relay) = start(None).await;
    let m = scenario(
        &backend,
        &relay,
        "quic-handshakes",
        "quic",
        &[
            "--connections",
            "60",
            "--interval",
            "1s",
            "--follow-retry",
            "--duration",
            "14s",
        ],
        "quic",
        &["--reconnect-every", "1"],
        async || {},
    )
    .await;
    m.assert_common("quic-handshakes");
    let refused = relay
        .metric("tern_relay_refused_total", &["limit=\"quic_handshakes\""])
        .await;
    let retries = relay.metric("tern_relay_quic_retries_total", &[]).await;
    let timed_out = relay
        .metric("tern_relay_deadline_exceeded_total", &["phase=\"handshake\""])
        .await;
    assert!(
        refused > 0.0 && retries > 0.0 && timed_out > 0.0,
        "handshakes over the per-source cap refused ({refused}), unproven addresses sent a Retry ({retries}), stalled handshakes cut ({timed_out})"
    );
    let c = &m.attack["counts"];
    assert!(c["retries"].as_u64().unwrap() > 0 && c["refused"].as_u64().unwrap() > 0, "{c}");
}

/// 300 HTTPS requests with 1 MB bodies that never finish: 300 MB if the relay read
/// bodies before taking a request slot. Slots are taken first (8 per source here), body
/// bytes are charged to the budget and cut at the read deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_https_bodies_stay_within_the_byte_budget() {
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (backend, relay) = start(None).await;
    let m = scenario(
        &backend,
        &relay,
        "https-bodies",
        "https",
        &["--connections", "300", "--duration", "14s"],
        "https",
        &[],
        async || {},
    )
    .await;
    m.assert_common("https-bodies");
    let refused = relay
        .metric("tern_relay_refused_total", &["transport=\"https\""])
        .await;
    let late = relay
        .metric("tern_relay_deadline_exceeded_total", &["phase=\"request\""])
        .await;
    assert!(
        refused > 0.0 && late > 0.0,
        "requests over the per-source limits refused ({refused}), held bodies cut at the read deadline ({late})"
    );
}

/// 700 connections each to the HTTPS, admin and metrics listeners trickling a request
/// head, against a relay allowed 512 file descriptors: without a connection cap and a
/// header deadline the relay runs out of descriptors and its admin API, `/readyz` and
/// HTTPS ingest fail. The operator endpoints keep answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_every_tcp_listener_leaves_fds_and_operator_endpoints() {
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (backend, relay) = start(Some(512)).await;
    let plain = [
        "--connections",
        "700",
        "--interval",
        "500ms",
        "--duration",
        "14s",
        "--plain",
    ];
    relay.wait_ready().await;
    let admin_attack = Attack::spawn("slowloris", &relay.addr("admin"), &relay.ca, &plain);
    let metrics_attack = Attack::spawn("slowloris", &relay.addr("metrics"), &relay.ca, &plain);
    let token = relay.admin_token();
    let (readyz_url, admin_url) = (
        format!("http://{}/readyz", relay.addr("metrics")),
        format!("http://{}/admin/v1/status", relay.addr("admin")),
    );
    let operator_ok = Arc::new(AtomicU64::new(0));
    let operator_tries = Arc::new(AtomicU64::new(0));
    let m = scenario(
        &backend,
        &relay,
        "slowloris",
        "https",
        &["--connections", "700", "--interval", "500ms", "--duration", "14s"],
        "https",
        // A new connection for every batch: the listener must keep accepting.
        &["--reconnect-every", "1"],
        {
            let (ok, tries) = (operator_ok.clone(), operator_tries.clone());
            async move || {
                // The operator's view, from 127.0.0.1, while the attack runs.
                // A new connection per request: an operator arriving during the attack.
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
        },
    )
    .await;
    let admin_counts = admin_attack.wait("done", Duration::from_secs(90));
    let metrics_counts = metrics_attack.wait("done", Duration::from_secs(90));
    m.assert_common("slowloris");
    eprintln!("slowloris: admin attacker {admin_counts}, metrics attacker {metrics_counts}");
    let (ok, tries) = (
        operator_ok.load(Ordering::Relaxed),
        operator_tries.load(Ordering::Relaxed),
    );
    assert_eq!(ok, tries, "every /readyz and admin request answered during the attack");
    assert!(
        m.fds_peak < 512,
        "the relay stayed below its descriptor limit (peak {})",
        m.fds_peak
    );
    let header = relay
        .metric("tern_relay_deadline_exceeded_total", &["phase=\"header\""])
        .await;
    let refused = relay.metric("tern_relay_refused_total", &[]).await;
    assert!(
        header > 0.0 && refused > 0.0,
        "trickling heads cut at the header deadline ({header}), connections over the caps refused ({refused})"
    );
    for (name, c) in [
        ("https", &m.attack),
        ("admin", &admin_counts),
        ("metrics", &metrics_counts),
    ] {
        assert!(
            c["counts"]["cut"].as_u64().unwrap() > 0,
            "{name}: the relay closed trickling connections: {c}"
        );
    }
}

/// 60 held push subscriptions over HTTPS, against a relay that used to share its
/// HTTPS slots (40 here) between subscriptions and ingest: HTTPS ingest turned into
/// `503`. Subscriptions have their own budget (4 per source here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_subscriptions_do_not_take_https_ingest_slots() {
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (backend, relay) = start(None).await;
    let m = scenario(
        &backend,
        &relay,
        "subscriptions",
        "https",
        &["--connections", "60", "--duration", "14s"],
        "https",
        &[],
        async || {},
    )
    .await;
    m.assert_common("subscriptions");
    let refused = relay
        .metric("tern_relay_refused_total", &["limit=\"subscriptions\""])
        .await;
    assert!(refused > 0.0, "subscriptions over the per-source cap refused");
    let c = &m.attack["counts"];
    assert!(
        c["held_peak"].as_u64().unwrap() <= 4 && c["refused"].as_u64().unwrap() > 0,
        "the attacker held at most its 4 subscriptions: {c}"
    );
}

/// One request written on a fresh HTTPS connection (HTTP/1.1) while the response is
/// read: its status and body.
async fn raw_https(relay: &Relay, request: Vec<u8>) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pem = std::fs::read_to_string(&relay.ca).unwrap();
    let tls = tern_relay::tls::client_config(&pem, &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(relay.addr("https")).await.unwrap();
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
        let n = rd.read(&mut chunk).await.expect("a response, not a dropped connection");
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
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
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
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
        .metric("tern_relay_requests_too_large_total", &["transport=\"https\""])
        .await;
    assert_eq!(counted, 2.0, "both counted");
}
