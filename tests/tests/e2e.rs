//! End-to-end scenarios with real processes: `tern-server-stub` and three `tern-relay`
//! processes on loopback, devices that are real `tern-sdk` instances (in this process,
//! or a `tern-fleet device` process where the device itself is killed). Every verdict
//! comes from the stub's verification counters; times are measured and printed (they
//! are recorded in BENCHMARKS.md), never asserted.
//!
//! The scenarios run one at a time (they share two cores; a failover time measured
//! while another scenario loads the machine would mean little).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard};

use serde_json::Value as Json;
use tern_fleet::cluster::{Cluster, ClusterConfig};
use tern_fleet::devices::{DeviceOptions, Fleet};
use tern_testkit::bins::Binaries;
use tern_testkit::proc::Proc;

const DELIVER: Duration = Duration::from_secs(180);

async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

async fn cluster(config: ClusterConfig) -> Cluster {
    let bins = tokio::task::spawn_blocking(Binaries::build_for_tests)
        .await
        .unwrap()
        .expect("building the binaries");
    Cluster::start(bins, config)
        .await
        .expect("starting the cluster")
}

fn options(c: &Cluster) -> DeviceOptions {
    DeviceOptions::new("demo", "demo-key", c.shard_map.clone(), &c.ca_pem)
}

fn n(s: &Json, k: &str) -> u64 {
    s[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {s}"))
}

/// Waits for every recorded event at the stub and asserts exactly-once delivery.
async fn assert_all_delivered(c: &Cluster, recorded: u64, what: &str) -> Json {
    let s = c.wait_events(recorded, DELIVER).await.unwrap();
    eprintln!("{what}: recorded {recorded}, stub {s}");
    assert_eq!(n(&s, "events_unique"), recorded, "{what}: lost events: {s}");
    assert_eq!(n(&s, "sequence_gaps"), 0, "{what}: {s}");
    assert_eq!(n(&s, "batches_rejected"), 0, "{what}: {s}");
    s
}

/// Drives `fleet` on its own thread; returns the fleet and events recorded.
fn drive_in_background(
    mut fleet: Fleet,
    rate: f64,
    per_device: Option<u64>,
    duration: Option<Duration>,
) -> std::thread::JoinHandle<Fleet> {
    std::thread::spawn(move || {
        let stop = AtomicBool::new(false);
        fleet.drive(rate, per_device, duration, &stop, |_| {});
        fleet.flush_all();
        fleet
    })
}

async fn join(h: std::thread::JoinHandle<Fleet>) -> Fleet {
    tokio::task::spawn_blocking(move || h.join().expect("driver thread"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_100_devices_x_1000_events_exactly_once() {
    let _serial = serial().await;
    let c = cluster(ClusterConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(100, &options(&c), work.path()).unwrap();
    let t = Instant::now();
    let fleet = join(drive_in_background(fleet, 20_000.0, Some(1000), None)).await;
    assert_eq!(fleet.recorded(), 100_000);
    let s = assert_all_delivered(&c, 100_000, "happy path").await;
    let totals = fleet.totals();
    eprintln!(
        "happy path: 100,000 events from 100 devices delivered in {:.1} s; QUIC {} / HTTPS {} requests; duplicates suppressed {}",
        t.elapsed().as_secs_f64(),
        totals.quic_ok,
        totals.https_ok,
        n(&s, "events_duplicate") + n(&s, "events_in_duplicate_batches")
    );
    // Nothing blocks QUIC here, but on an oversubscribed machine (two cores, 100
    // devices, debug builds, other builds running) QUIC handshakes can outlast the 1 s
    // connect timeout and devices then use HTTPS until their re-probe: both transports
    // count; the share is printed above.
    assert!(totals.quic_ok > 0, "{totals:?}");
    fleet.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_outage_mid_run_is_spooled_and_replayed_exactly_once() {
    let _serial = serial().await;
    let c = cluster(ClusterConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(20, &options(&c), work.path()).unwrap();
    let driver = drive_in_background(fleet, 3000.0, None, Some(Duration::from_secs(7)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.backend_down(true).await.unwrap();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut spooled = 0.0;
    for i in 0..3 {
        spooled += c
            .relay_metric(
                i,
                "tern_relay_events_total",
                &["outcome=\"accepted_spooled\""],
            )
            .await;
    }
    c.backend_down(false).await.unwrap();
    eprintln!(
        "backend outage of {:.1} s: {spooled} events spooled by the relays",
        down_at.elapsed().as_secs_f64()
    );
    let fleet = join(driver).await;
    assert!(spooled > 0.0, "the relays spooled during the outage");
    assert_all_delivered(&c, fleet.recorded(), "backend outage").await;
    // Replay empties every spool.
    let deadline = Instant::now() + DELIVER;
    loop {
        let mut objects = 0.0;
        for i in 0..3 {
            objects += c.relay_metric(i, "tern_relay_spool_objects", &[]).await;
        }
        if objects == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{objects} spool objects left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_busiest_relay_devices_fail_over_nothing_lost() {
    let _serial = serial().await;
    let mut c = cluster(ClusterConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(30, &options(&c), work.path()).unwrap();
    // Wait until every device knows its id (routing keys), then pick the victim.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet
        .devices()
        .iter()
        .any(|d| d.stats().device_id.is_none())
    {
        assert!(Instant::now() < deadline, "stores did not open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let owners = fleet.owners(&c.shard_map, "demo");
    let victim = (0..owners.len()).max_by_key(|&i| owners[i]).unwrap();
    let victim_id = c.shard_map.nodes[victim].id.clone();
    let victims: Vec<tern_sdk::Tern> = fleet
        .devices()
        .iter()
        .filter(|d| {
            let s = d.stats();
            let key = s
                .user_id
                .map(|u| u.as_str().to_owned())
                .unwrap_or_else(|| s.device_id.unwrap().to_string());
            tern_protocol::routing::owner(&c.shard_map, &tern_protocol::AppId::new("demo"), &key)
                .is_some_and(|o| o.id == victim_id)
        })
        .cloned()
        .collect();
    assert_eq!(victims.len(), owners[victim]);
    let driver = drive_in_background(fleet, 3000.0, None, Some(Duration::from_secs(8)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: Vec<u64> = victims
        .iter()
        .map(|d| d.stats().upload.events_acked)
        .collect();
    c.kill_relay(victim).unwrap();
    let killed_at = Instant::now();
    // Failover time per device: from the kill until the device's first ack after it
    // (only another relay can ack now).
    let mut recovered: Vec<Option<Duration>> = vec![None; victims.len()];
    while recovered.iter().any(Option::is_none) && killed_at.elapsed() < Duration::from_secs(60) {
        for (i, d) in victims.iter().enumerate() {
            if recovered[i].is_none() && d.stats().upload.events_acked > before[i] {
                recovered[i] = Some(killed_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut times: Vec<Duration> = recovered
        .iter()
        .map(|r| r.expect("a device never recovered"))
        .collect();
    times.sort();
    eprintln!(
        "failover after SIGKILL of {} (owner of {} of 30 devices): first ack elsewhere after p50 {:?}, max {:?}",
        victim_id.as_str(),
        victims.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
    let fleet = join(driver).await;
    let failovers: u64 = victims
        .iter()
        .map(|d| d.stats().upload.router.failovers)
        .sum();
    assert!(failovers > 0, "the victim's devices went to other relays");
    // The killed relay comes back and replays what it had spooled (if anything).
    c.start_relay(victim).unwrap();
    c.wait_relay_ready(victim, Duration::from_secs(30))
        .await
        .unwrap();
    assert_all_delivered(&c, fleet.recorded(), "relay SIGKILL").await;
    fleet.shutdown(Duration::from_secs(5));
}

/// The shared half of the UDP-block scenarios: with UDP blocked, 10 devices deliver
/// everything over HTTPS and none over QUIC; after `unblock`, they deliver again and
/// return to QUIC within their 2 s re-probe interval.
async fn https_while_blocked_then_quic_again(
    c: &Cluster,
    connect_timeout: Duration,
    how: &str,
    unblock: impl FnOnce(),
) {
    let work = tempfile::tempdir().unwrap();
    let mut o = options(c);
    o.quic_reprobe = Duration::from_secs(2);
    o.connect_timeout = connect_timeout;
    let fleet = Fleet::start(10, &o, work.path()).unwrap();
    let fleet = join(drive_in_background(fleet, 2000.0, Some(200), None)).await;
    assert_all_delivered(c, fleet.recorded(), how).await;
    let blocked = fleet.totals();
    eprintln!(
        "{how}: QUIC {} / HTTPS {} requests",
        blocked.quic_ok, blocked.https_ok
    );
    assert_eq!(
        blocked.quic_ok, 0,
        "no QUIC request can succeed while UDP is blocked"
    );
    assert!(blocked.https_ok > 0);

    unblock();
    let fleet = join(drive_in_background(
        fleet,
        500.0,
        None,
        Some(Duration::from_secs(6)),
    ))
    .await;
    assert_all_delivered(c, fleet.recorded(), "UDP allowed again").await;
    let after = fleet.totals();
    eprintln!(
        "UDP allowed again: QUIC {} / HTTPS {} requests",
        after.quic_ok, after.https_ok
    );
    assert!(
        after.quic_ok > 0,
        "devices went back to QUIC after the re-probe interval"
    );
    fleet.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_delivers_over_https_and_quic_resumes_when_unblocked() {
    let _serial = serial().await;
    let c = cluster(ClusterConfig {
        impair: true,
        ..ClusterConfig::default()
    })
    .await;
    c.block_udp(true);
    https_while_blocked_then_quic_again(&c, Duration::from_secs(1), "the proxy blocks UDP", || {
        c.block_udp(false)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_device_mid_upload_then_restart_loses_nothing() {
    let _serial = serial().await;
    let c = cluster(ClusterConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("device");
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, &c.ca_pem).unwrap();
    let map = c.dir().join("shard_map.json");
    let device = |events: u64, run: &str| {
        let mut cmd = std::process::Command::new(&c.binaries().fleet);
        cmd.arg("device")
            .arg("--data-dir")
            .arg(&data)
            .arg("--shard-map")
            .arg(&map)
            .arg("--ca")
            .arg(&ca)
            .arg("--events")
            .arg(events.to_string())
            .arg("--rate")
            .arg("5000");
        Proc::spawn(
            &format!("device ({run})"),
            cmd,
            &work.path().join(format!("device-{run}.log")),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let (mut first, ready) = device(50_000, "first");
    let device_id = ready["device_id"].as_str().unwrap().to_owned();
    // Kill it while it records and uploads: wait until the backend has some of its
    // events, so batches are in flight.
    let line = first
        .wait_line(
            |v| v["event"] == "recorded" && v["n"].as_u64() >= Some(5_000),
            Duration::from_secs(60),
        )
        .unwrap();
    let s = c.wait_events(1, Duration::from_secs(30)).await.unwrap();
    assert!(n(&s, "events_unique") > 0);
    first.kill();
    let recorded_first = first
        .drain_lines()
        .iter()
        .filter_map(|v| v["n"].as_u64())
        .max()
        .unwrap_or(0)
        .max(line["n"].as_u64().unwrap());
    let (mut second, ready) = device(2_000, "second");
    assert_eq!(
        ready["device_id"],
        device_id.as_str(),
        "the same device after the restart"
    );
    let done = second
        .wait_line(|v| v["event"] == "done", Duration::from_secs(120))
        .unwrap();
    assert_eq!(done["queued"], 0);
    let d = c
        .get_json(&format!("/verify/apps/demo/devices/{device_id}"))
        .await
        .unwrap();
    let s = c.summary().await.unwrap();
    eprintln!("device SIGKILL: at least {recorded_first} recorded before the kill, 2000 after; device {d}; stub {s}");
    // Every seq from 1 to the last is stored once: nothing recorded before the kill
    // (durable when `track` returned) was lost, and re-sent batches were suppressed.
    assert_eq!(n(&d, "gaps"), 0, "{d}");
    assert_eq!(n(&d, "unique_events"), n(&d, "max_seq"), "{d}");
    assert!(n(&d, "unique_events") >= recorded_first + 2_000, "{d}");
}

/// Issue #18 item 3: a device store lost between runs. A `tern-fleet device` process
/// delivers its events and is SIGKILLed (no shutdown: the journal still holds them),
/// then its `tern.db` is deleted, truncated, or deleted with its `-wal`. The restarted
/// device keeps its id and sequence numbers (journal marker) and sends nothing twice;
/// batches handed out without an answer (a relay-less map) before a reset are counted
/// in `reset_unknown`, which equals the gap the backend sees. Verdicts from the stub:
/// events stored exactly once per `(device, seq)`, no event under another device id,
/// and the health the device reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_device_store_resends_nothing_and_reports_what_it_cannot_know() {
    let _serial = serial().await;
    let c = cluster(ClusterConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("device");
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, &c.ca_pem).unwrap();
    let map = c.dir().join("shard_map.json");
    // The same map with every relay at a port nothing listens on: batches are handed
    // out and never answered.
    let dead_map = work.path().join("dead_map.json");
    let mut m: Json = serde_json::from_slice(&std::fs::read(&map).unwrap()).unwrap();
    for node in m["nodes"].as_array_mut().unwrap() {
        node["quic_addr"] = "127.0.0.1:1".into();
        node["https_url"] = "https://127.0.0.1:1".into();
    }
    std::fs::write(&dead_map, serde_json::to_vec(&m).unwrap()).unwrap();
    let device = |map: &std::path::Path, events: u64, hold: bool, run: &str| {
        let mut cmd = std::process::Command::new(&c.binaries().fleet);
        cmd.arg("device")
            .arg("--data-dir")
            .arg(&data)
            .arg("--shard-map")
            .arg(map)
            .arg("--ca")
            .arg(&ca)
            .arg("--events")
            .arg(events.to_string())
            .arg("--rate")
            .arg("5000");
        if hold {
            cmd.arg("--hold");
        }
        Proc::spawn(
            &format!("device ({run})"),
            cmd,
            &work.path().join(format!("device-{run}.log")),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let db = |suffix: &str| data.join(format!("tern.db{suffix}"));
    let delivered =
        |v: &Json| v["event"] == "status" && v["queued"] == 0 && v["journal_backlog"] == 0;

    // 1. Deliver N, then SIGKILL.
    const N: u64 = 2_000;
    let (mut p, ready) = device(&map, N, true, "1");
    let device_id = ready["device_id"].as_str().unwrap().to_owned();
    p.wait_line(delivered, DELIVER).unwrap();
    p.kill();
    let dev = format!("/verify/apps/demo/devices/{device_id}");
    assert_eq!(n(&c.get_json(&dev).await.unwrap(), "unique_events"), N);

    // 2. tern.db deleted (its -wal and -shm left behind): M more, then SIGKILL.
    const M: u64 = 500;
    std::fs::remove_file(db("")).unwrap();
    let (mut p, ready) = device(&map, M, true, "2");
    assert_eq!(ready["device_id"], device_id.as_str(), "the same device");
    let status = p.wait_line(delivered, DELIVER).unwrap();
    p.kill();
    let d = c.get_json(&dev).await.unwrap();
    let s = c.summary().await.unwrap();
    eprintln!("store deleted after {N} delivered: status {status}; device {d}; stub {s}");
    assert_eq!(n(&d, "unique_events"), N + M, "{d}");
    assert_eq!(n(&d, "max_seq"), N + M, "{d}");
    assert_eq!(n(&d, "duplicate_events"), 0, "{d}");
    assert_eq!(
        n(&s, "events_unique"),
        N + M,
        "no event under another id: {s}"
    );
    assert_eq!(n(&d["health"], "store_resets"), 1, "{d}");
    assert_eq!(n(&d["health"], "reset_unknown"), 0, "all acknowledged: {d}");

    // 3. tern.db truncated; K recorded with no relay reachable: handed out, no answer.
    const K: u64 = 300;
    std::fs::write(db(""), b"").unwrap();
    let (mut p, ready) = device(&dead_map, K, true, "3");
    assert_eq!(ready["device_id"], device_id.as_str());
    let status = p
        .wait_line(
            |v| v["event"] == "status" && v["journal_backlog"] == 0 && n(v, "retries") >= 1,
            DELIVER,
        )
        .unwrap();
    p.kill();
    assert_eq!(status["store_resets"], 2, "{status}");

    // 4. tern.db, -wal and -shm deleted: L more, delivered, clean exit.
    const L: u64 = 200;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(db(suffix));
    }
    let (mut p, ready) = device(&map, L, false, "4");
    assert_eq!(ready["device_id"], device_id.as_str());
    let done = p.wait_line(|v| v["event"] == "done", DELIVER).unwrap();
    assert_eq!(done["queued"], 0);
    let d = c.get_json(&dev).await.unwrap();
    let s = c.summary().await.unwrap();
    eprintln!(
        "store truncated with {K} unanswered, then deleted with its WAL: device {d}; stub {s}"
    );
    let h = &d["health"];
    let unknown = n(h, "reset_unknown");
    assert_eq!(n(h, "store_resets"), 3, "{d}");
    assert!((1..=K).contains(&unknown), "{d}");
    // What the lost store could not vouch for is missing, counted; everything else is
    // stored once; nothing arrived twice or under another id.
    assert_eq!(n(&d, "max_seq"), N + M + K + L, "{d}");
    assert_eq!(n(&d, "unique_events"), N + M + K + L - unknown, "{d}");
    assert_eq!(n(&d, "gaps"), unknown, "{d}");
    assert_eq!(n(&d, "duplicate_events"), 0, "{d}");
    assert_eq!(n(&s, "events_unique"), N + M + K + L - unknown, "{s}");
    assert_eq!(n(&s, "batches_duplicate"), 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_all_relays_under_load_loses_nothing() {
    let _serial = serial().await;
    let mut c = cluster(ClusterConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(20, &options(&c), work.path()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let stop = stop.clone();
        let mut fleet = fleet;
        std::thread::spawn(move || {
            fleet.drive(2000.0, None, Some(Duration::from_secs(120)), &stop, |_| {});
            fleet.flush_all();
            fleet
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        let t = Instant::now();
        // Relays 1 and 3 drain on SIGTERM, relay 2 through its admin API: one path.
        let (clean, how) = if i == 1 {
            let clean = c.drain_relay(i, Duration::from_secs(30)).await.unwrap();
            c.start_relay(i).unwrap();
            c.wait_relay_ready(i, Duration::from_secs(30))
                .await
                .unwrap();
            (clean, "admin drain")
        } else {
            (c.restart_relay(i).await.unwrap(), "SIGTERM")
        };
        eprintln!(
            "rolling restart: relay-{} ({how}) back in {:.2} s (clean exit: {clean})",
            i + 1,
            t.elapsed().as_secs_f64()
        );
        assert!(clean, "a drain ({how}) makes the relay exit 0");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let fleet = join(driver).await;
    assert_all_delivered(&c, fleet.recorded(), "rolling restart").await;
    fleet.shutdown(Duration::from_secs(5));
}

/// `relay/scripts/rolling-restart.sh` against the cluster under load: the script drives
/// the shard map and the drains; this test plays the supervisor its `--restart` hook
/// asks to start a relay again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rolling_restart_script_upgrades_the_cluster_under_load_losing_nothing() {
    let _serial = serial().await;
    let mut c = cluster(ClusterConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(20, &options(&c), work.path()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let stop = stop.clone();
        let mut fleet = fleet;
        std::thread::spawn(move || {
            fleet.drive(2000.0, None, Some(Duration::from_secs(180)), &stop, |_| {});
            fleet.flush_all();
            fleet
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hooks = work.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../relay/scripts/rolling-restart.sh"
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(script);
    for slot in &c.relays {
        cmd.args(["--relay", slot.id.as_str()])
            .arg(format!("http://{}", slot.admin))
            .arg(format!("http://{}", slot.metrics))
            .arg("--token-file")
            .arg(format!(
                "{}={}",
                slot.id.as_str(),
                slot.admin_token_file().display()
            ));
    }
    let map_before: Json =
        serde_json::from_str(&std::fs::read_to_string(c.dir().join("shard_map.json")).unwrap())
            .unwrap();
    cmd.arg("--restart")
        .arg(format!("touch {}/restart-{{id}}", hooks.display()))
        .arg("--shard-map")
        .arg(c.dir().join("shard_map.json"))
        .args(["--settle", "1", "--exit-timeout", "60"]);
    let t = Instant::now();
    let mut script = cmd.spawn().unwrap();
    let status = loop {
        if let Some(status) = script.try_wait().unwrap() {
            break status;
        }
        for i in 0..c.relays.len() {
            let hook = hooks.join(format!("restart-{}", c.relays[i].id.as_str()));
            if hook.exists() {
                std::fs::remove_file(&hook).unwrap();
                c.start_relay(i).unwrap();
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "the script took too long"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "rolling-restart.sh: 3 relays in {:.1} s, {status}",
        t.elapsed().as_secs_f64()
    );
    assert!(status.success(), "rolling-restart.sh failed: {status}");
    // Every relay ran the drain (exit 0 is what the script waited for) and is back
    // active in a newer map.
    let map: Json =
        serde_json::from_str(&std::fs::read_to_string(c.dir().join("shard_map.json")).unwrap())
            .unwrap();
    assert_eq!(n(&map, "version"), n(&map_before, "version") + 6);
    assert!(map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["state"] == "active"));
    for i in 0..c.relays.len() {
        assert!(c.relay_running(i), "relay {} runs again", i + 1);
    }
    stop.store(true, Ordering::Relaxed);
    let fleet = join(driver).await;
    let s = assert_all_delivered(&c, fleet.recorded(), "rolling-restart.sh").await;
    eprintln!(
        "rolling-restart.sh: duplicate batches suppressed by the backend: {}",
        n(&s, "batches_duplicate")
    );
    fleet.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_app_devices_back_off_and_nothing_is_lost() {
    let _serial = serial().await;
    let c = cluster(ClusterConfig {
        relay_env: vec![
            ("TERN_RELAY_RATE_LIMIT_EVENTS_PER_SEC".into(), "300".into()),
            ("TERN_RELAY_RATE_LIMIT_BURST".into(), "1000".into()),
        ],
        ..ClusterConfig::default()
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(10, &options(&c), work.path()).unwrap();
    let t = Instant::now();
    let fleet = join(drive_in_background(fleet, 5000.0, Some(500), None)).await;
    assert_all_delivered(&c, fleet.recorded(), "rate limited").await;
    let mut limited = 0.0;
    for i in 0..3 {
        limited += c
            .relay_metric(i, "tern_relay_retry_total", &["cause=\"rate_limited\""])
            .await;
    }
    let totals = fleet.totals();
    eprintln!(
        "rate limit 300 events/s per relay: 5000 events delivered in {:.1} s; {limited} Retry replies, {} honoured by devices",
        t.elapsed().as_secs_f64(),
        totals.retry_replies
    );
    assert!(limited > 0.0, "the relays rate-limited the app");
    assert!(totals.retry_replies > 0, "devices saw Retry and backed off");
    fleet.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_loss_and_200ms_delay_everything_delivered() {
    let _serial = serial().await;
    let c = cluster(ClusterConfig {
        impair: true,
        ..ClusterConfig::default()
    })
    .await;
    c.impair_all(|i| i.set_delay(Duration::from_millis(200), Duration::from_millis(20)));
    for r in &c.relays {
        r.udp.set_loss(0.3);
    }
    let work = tempfile::tempdir().unwrap();
    let mut o = options(&c);
    o.connect_timeout = Duration::from_secs(3);
    o.request_timeout = Duration::from_secs(10);
    let fleet = Fleet::start(10, &o, work.path()).unwrap();
    let t = Instant::now();
    let fleet = join(drive_in_background(fleet, 1000.0, Some(300), None)).await;
    assert_all_delivered(&c, fleet.recorded(), "30% loss, 200 ms delay").await;
    let totals = fleet.totals();
    let (mut fwd, mut dropped) = (0, 0);
    for r in &c.relays {
        fwd += r.udp.forwarded.load(Ordering::Relaxed);
        dropped += r.udp.dropped.load(Ordering::Relaxed);
    }
    eprintln!(
        "30% loss + 200 ms delay: 3000 events delivered in {:.1} s; QUIC {} / HTTPS {} requests; {dropped} of {} datagrams dropped",
        t.elapsed().as_secs_f64(),
        totals.quic_ok,
        totals.https_ok,
        fwd + dropped
    );
    assert!(dropped > 0, "the proxy really dropped datagrams");
    fleet.shutdown(Duration::from_secs(5));
}

/// Runs `program args` and panics with its output unless it succeeds.
fn must(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run ({e}): the test command installs it"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kernel variant of the UDP-block scenario: the test re-runs itself in a private
/// network namespace (`unshare --net`, so the rule touches nothing outside it, and the
/// namespace disappears with the process), brings its loopback up and drops all UDP
/// with iptables. Devices must deliver over HTTPS, then return to QUIC once the rule is
/// removed. Needs root and iptables (the test command installs iptables); without them
/// it fails, never skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_dropped_by_iptables_in_a_private_netns_https_then_quic_again() {
    const INSIDE: &str = "TERN_E2E_IN_NETNS";
    if std::env::var_os(INSIDE).is_none() {
        let _serial = serial().await;
        let bins = tokio::task::spawn_blocking(Binaries::build_for_tests)
            .await
            .unwrap()
            .expect("building the binaries");
        let bin_dir = bins.relay.parent().unwrap().to_owned();
        let exe = std::env::current_exe().unwrap();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("unshare")
                .arg("--net")
                .arg("--")
                .arg(exe)
                .args([
                    "--exact",
                    "udp_dropped_by_iptables_in_a_private_netns_https_then_quic_again",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(INSIDE, "1")
                .env("TERN_BIN_DIR", bin_dir)
                .status()
        })
        .await
        .unwrap()
        .expect("unshare could not run: it needs util-linux and root");
        assert!(
            status.success(),
            "the scenario inside the namespace failed: {status}"
        );
        return;
    }
    must("ip", &["link", "set", "lo", "up"]);
    must("iptables", &["-A", "OUTPUT", "-p", "udp", "-j", "DROP"]);
    let bins = Binaries::beside_current_exe().expect("binaries (TERN_BIN_DIR)");
    let c = Cluster::start(bins, ClusterConfig::default())
        .await
        .expect("cluster");
    https_while_blocked_then_quic_again(
        &c,
        Duration::from_millis(500),
        "iptables drops UDP",
        || must("iptables", &["-D", "OUTPUT", "-p", "udp", "-j", "DROP"]),
    )
    .await;
}

/// A config change made at the backend reaches every connected device (real relay
/// processes, push streams over QUIC): measured from the admin `PUT` returning to each
/// device's listener hearing the changed key; printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_reaches_connected_devices() {
    let _serial = serial().await;
    let c = cluster(ClusterConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(10, &options(&c), work.path()).unwrap();
    assert!(fleet.wait_ready(Duration::from_secs(60)));
    let heard: Arc<std::sync::Mutex<Vec<(usize, String, Instant)>>> = Arc::default();
    let mut handles = Vec::new();
    for (i, d) in fleet.devices().iter().enumerate() {
        let heard = heard.clone();
        handles.push(d.add_config_listener(Arc::new(
            move |ch: &tern_sdk::remote::ConfigChange| {
                let now = Instant::now();
                let mut h = heard.lock().unwrap();
                for k in &ch.changed_values {
                    h.push((i, k.clone(), now));
                }
            },
        )));
    }
    // Every device has the bundle and a push subscription before the change.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fleet
        .devices()
        .iter()
        .all(|d| d.config_info().version > 0 && d.stats().upload.push_connected)
    {
        assert!(Instant::now() < deadline, "devices did not subscribe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut all = Vec::new();
    for round in 0..3 {
        let value = format!("hello from round {round}");
        c.put_json(
            "/admin/apps/demo/values/welcome_text",
            &serde_json::json!(value),
        )
        .await
        .unwrap();
        let t_put = Instant::now();
        let deadline = t_put + Duration::from_secs(30);
        let times = loop {
            let times: Vec<Duration> = {
                let h = heard.lock().unwrap();
                (0..10)
                    .filter_map(|i| {
                        h.iter()
                            .find(|(d, k, t)| *d == i && k == "welcome_text" && *t >= t_put)
                            .map(|(_, _, t)| *t - t_put)
                    })
                    .collect()
            };
            if times.len() == 10 {
                break times;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of 10 devices heard the change",
                times.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        for d in fleet.devices() {
            assert_eq!(d.config_string("welcome_text", "?"), value);
        }
        all.extend(times);
        heard.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    all.sort();
    eprintln!(
        "config change -> listener on 10 devices (real relay processes), 3 changes: p50 {:?}, max {:?}",
        all[all.len() / 2],
        all[all.len() - 1]
    );
    drop(handles);
    fleet.shutdown(Duration::from_secs(5));
}

/// The realistic profile with app kills many times more often than the default, so a
/// short run kills most devices at least once: each kill (`Tern::kill`: no shutdown,
/// journal not applied, requests in flight dropped) and relaunch must lose and
/// duplicate nothing the backend can see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_kills_in_the_realistic_profile_lose_nothing() {
    use tern_fleet::devices::Profile;
    let _serial = serial().await;
    let c = cluster(ClusterConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(20, &options(&c), work.path()).unwrap();
    assert!(fleet.wait_ready(Duration::from_secs(30)));
    let profile = Profile::Realistic {
        foreground_mean: Duration::from_secs(3),
        background_mean: Duration::from_millis(500),
        flap_every_mean: Duration::from_secs(4),
        flap_mean: Duration::from_millis(500),
        kill_every_mean: Some(Duration::from_millis(1500)),
        relaunch_mean: Duration::from_millis(300),
    };
    let fleet = tokio::task::spawn_blocking(move || {
        let stop = AtomicBool::new(false);
        fleet.drive_profile(
            profile,
            2000.0,
            None,
            Some(Duration::from_secs(8)),
            &stop,
            |_| {},
        );
        fleet.flush_all();
        fleet
    })
    .await
    .unwrap();
    let b = fleet.behaviour();
    eprintln!("app kills: {b:?}");
    // 20 devices x 8 s / 1.5 s: about 100 kills expected; far fewer means kills are
    // not happening.
    assert!(b.killed >= 20, "{b:?}");
    assert_eq!(b.relaunched, b.killed, "{b:?}");
    assert_eq!(b.relaunch_failed, 0, "{b:?}");
    let recorded = fleet.events_recorded();
    assert!(
        fleet.recorded() > 1000,
        "the driver recorded little: {}",
        fleet.recorded()
    );
    let s = assert_all_delivered(&c, recorded, "app kills").await;
    eprintln!(
        "app kills: {} events from 20 devices ({} kills), duplicates suppressed {}",
        recorded,
        b.killed,
        n(&s, "events_duplicate") + n(&s, "events_in_duplicate_batches")
    );
    fleet.shutdown(Duration::from_secs(5));
}
