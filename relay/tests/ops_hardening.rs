//! Operations hardening through the relay binary (issue 18, items 7–9): replay past a
//! corrupt spool object with no device traffic, spool depth and room that stay true
//! during an outage, admin changes that apply when the settings disk cannot be
//! written, private traffic recordings, a safe admin token file, and settings a relay
//! refuses to start with.
//!
//! Every relay is the real `tern-relay` binary; the backend is the stub. Verdicts come
//! from counts (batches stored at the stub, the relay's metrics and status, files and
//! their modes), and every wait polls a condition up to a generous deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tern_protocol::{IngestOutcome, UserId};
use tern_testkit::outcome::{forwarded, spooled};
use tern_testkit::proc::{Proc, Started};
use tern_testkit::relay::AdminClient;
use tern_testkit::{batch, demo_apps, metrics, wait_for, Backend, Device, RelayProc};

/// Generous bound for slow convergence (a breaker whose open time grew during an
/// outage closes only after its next probe); never a performance threshold.
const LONG: Duration = Duration::from_secs(180);
/// Bound for things that follow within a few polling periods.
const SHORT: Duration = Duration::from_secs(60);

/// The relay id `RelayProc` starts with.
const RELAY: &str = "relay-admin";

async fn metrics(base: &str) -> String {
    metrics::scrape(base).await
}

/// The value of one sample of `name` whose labels include `labels` (e.g.
/// `target="primary"`), if exposed.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    metrics::sample(text, name, &[labels])
}

async fn stored(backend: &Backend) -> u64 {
    backend.summary().await["batches_stored"].as_u64().unwrap()
}

/// Files in `dir` whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Sends `n` batches of `app` one at a time; every one must be acknowledged as spooled.
async fn send_spooled(device: &Device, n: usize) {
    for i in 0..n {
        let o = device.send("demo", "demo-key", batch("demo", 5)).await;
        assert!(spooled(&o), "batch {i}: {o:?}");
    }
}

/// Until the breaker reports `open` (sending spooled batches meanwhile, which is what
/// opens it while the backend is down).
async fn open_the_breaker(api: &AdminClient, device: &Device) {
    wait_for("the breaker open", SHORT, || async {
        send_spooled(device, 5).await;
        let s = api.status().await;
        match s["breaker"]["state"].as_str() {
            Some("open") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Item 7: replay and spool accounting
// ---------------------------------------------------------------------------------------

/// A corrupt object at the head of the spool, the breaker open and no device sending:
/// the replayer's probe must not stop at the oldest object (the breaker would never
/// close and nothing would be delivered). The corrupt object is moved aside (kept,
/// counted once) and every good batch reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_oldest_object_is_quarantined_and_the_spool_drains_without_traffic() {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&backend.url, dir.path(), &[], &[]);
    relay.wait_ready().await;
    let api = AdminClient::for_proc(&relay, "ops-test");
    let device = Device::connect(&relay.ca_pem, relay.quic).await;

    backend.set_down(true);
    open_the_breaker(&api, &device).await;
    let before = api.status().await["totals"]["accepted_spooled"]
        .as_u64()
        .unwrap();
    send_spooled(&device, 200 - before as usize).await;
    assert_eq!(api.status().await["totals"]["accepted_spooled"], 200);
    drop(device);

    // The oldest object of this relay's prefix is garbage.
    let prefix = dir.path().join("spool/spool").join(RELAY);
    let corrupt = prefix.join("0000000000001-000000.tern");
    let garbage = b"not a spool object: bytes of a damaged disk block".repeat(20);
    std::fs::write(&corrupt, &garbage).unwrap();

    backend.set_down(false);
    wait_for("all 200 spooled batches stored", LONG, || async {
        let n = stored(&backend).await;
        (n >= 200).then_some(()).ok_or(format!("{n} stored"))
    })
    .await;
    wait_for(
        "the spool drained with the corrupt object set aside",
        SHORT,
        || async {
            let s = api.status().await;
            let p = &s["replay"]["progress"];
            let tern = files_ending(&prefix, ".tern").len();
            (tern == 0 && p["objects_waiting"] == 0 && p["quarantined_waiting"] == 1)
                .then_some(())
                .ok_or(format!("{tern} objects on disk; progress {p}"))
        },
    )
    .await;
    let summary = backend.summary().await;
    assert_eq!(summary["batches_stored"], 200, "{summary}");
    // Kept as it was, beside its key, never deleted.
    assert!(!corrupt.exists());
    let aside = files_ending(&prefix, ".corrupt");
    assert_eq!(
        aside,
        vec![prefix.join("0000000000001-000000.tern.corrupt")]
    );
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage);
    // Counted once: it was not retried.
    let status = api.status().await;
    assert_eq!(status["replay"]["progress"]["objects_quarantined"], 1);
    let m = metrics(&relay.metrics).await;
    assert_eq!(
        metrics::total(&m, "tern_relay_spool_objects_quarantined_total"),
        1.0
    );
    assert_eq!(
        metrics::total(&m, "tern_relay_spool_corrupt_objects_total"),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "tern_relay_spool_quarantined_objects",
            "target=\"primary\""
        ),
        Some(1.0)
    );
    backend.stop().await;
}

/// While the breaker is open the replayer only probes; the spool's depth and lag used
/// to be published by replay passes alone, so they froze for the whole outage — when
/// the runbook's alerts need them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_depth_and_lag_advance_while_the_breaker_is_open() {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&backend.url, dir.path(), &[], &[]);
    relay.wait_ready().await;
    let api = AdminClient::for_proc(&relay, "ops-test");
    let device = Device::connect(&relay.ca_pem, relay.quic).await;
    backend.set_down(true);
    open_the_breaker(&api, &device).await;

    for round in 0..3 {
        send_spooled(&device, 10).await;
        // Nothing is replayed while the backend is down: every object written waits.
        wait_for(
            &format!("the depth gauge to count every object (round {round})"),
            SHORT,
            || async {
                let m = metrics(&relay.metrics).await;
                let written = metrics::total(&m, "tern_relay_spool_objects_written_total");
                let gauge = sample(&m, "tern_relay_spool_objects", "target=\"primary\"");
                let waiting = api.status().await["replay"]["progress"]["objects_waiting"]
                    .as_f64()
                    .unwrap();
                (gauge == Some(written) && waiting == written)
                    .then_some(())
                    .ok_or(format!(
                        "written {written}, gauge {gauge:?}, status {waiting}"
                    ))
            },
        )
        .await;
    }
    let lag = |m: &str| sample(m, "tern_relay_replay_lag_seconds", "target=\"primary\"");
    let first = lag(&metrics(&relay.metrics).await).expect("a lag gauge");
    wait_for("the lag gauge to grow by 2 s", SHORT, || async {
        let now = lag(&metrics(&relay.metrics).await).unwrap_or(0.0);
        (now >= first + 2.0)
            .then_some(())
            .ok_or(format!("lag {now} s, first read {first} s"))
    })
    .await;
    let state = api.status().await["breaker"]["state"].clone();
    assert!(
        state == "open" || state == "half_open",
        "measured during the outage: {state}"
    );
    backend.stop().await;
}

/// The spool's byte account only followed the relay's own writes and deletes: with the
/// directory removed by hand it stayed full, and `/readyz` said "no room" on an empty
/// disk. It is now measured again from a listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_spool_directory_gives_its_room_back() {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    // 1.2 MB of another relay's objects in a 2 MB spool: less than the 1 MiB of
    // headroom readiness asks for is left.
    let other = dir.path().join("spool/spool/relay-gone");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("0000000000001-000000.tern"),
        vec![7u8; 1_200_000],
    )
    .unwrap();
    let relay = RelayProc::start(
        &backend.url,
        dir.path(),
        &[],
        &[
            ("TERN_RELAY_SPOOL_MAX_BYTES", "2000000"),
            // Leave the other relay's object alone.
            ("TERN_RELAY_REPLAY_TAKEOVER_AFTER_S", "0"),
        ],
    );
    let readyz = format!("{}/readyz", relay.metrics);
    let ready = || async {
        let r = reqwest::get(&readyz).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    wait_for("/readyz to report the full spool", SHORT, || async {
        let (code, text) = ready().await;
        (code == 503 && text.contains("spool"))
            .then_some(())
            .ok_or(format!("{code} {text}"))
    })
    .await;
    let api = AdminClient::for_proc(&relay, "ops-test");
    assert_eq!(
        api.status().await["spool"]["targets"][0]["bytes"],
        1_200_000
    );

    std::fs::remove_dir_all(dir.path().join("spool")).unwrap();
    wait_for("/readyz 200 on the emptied disk", SHORT, || async {
        let (code, text) = ready().await;
        (code == 200).then_some(()).ok_or(format!("{code} {text}"))
    })
    .await;
    let status = api.status().await;
    assert_eq!(
        status["spool"]["targets"][0]["bytes"], 0,
        "{}",
        status["spool"]
    );
    assert_eq!(status["spool"]["has_room"], true);
    let m = metrics(&relay.metrics).await;
    assert_eq!(
        sample(&m, "tern_relay_spool_bytes", "target=\"primary\""),
        Some(0.0)
    );

    // The spool works on the recreated directory, and its account follows.
    backend.set_down(true);
    let device = Device::connect(&relay.ca_pem, relay.quic).await;
    send_spooled(&device, 3).await;
    let written = files_ending(&dir.path().join("spool/spool").join(RELAY), ".tern");
    assert!(!written.is_empty());
    let on_disk: u64 = written
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let bytes = api.status().await["spool"]["targets"][0]["bytes"]
        .as_u64()
        .unwrap();
    assert!(bytes >= on_disk, "{bytes} counted, {on_disk} on disk");
    backend.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 8: admin changes when the settings file cannot be written
// ---------------------------------------------------------------------------------------

/// Starts a relay by a command of our own (a namespace wrapper), its stderr in a log
/// under `dir`: ready, or exited.
fn launch(cmd: Command, dir: &Path) -> Started {
    static N: AtomicUsize = AtomicUsize::new(0);
    let log = dir.join(format!("relay-{}.log", N.fetch_add(1, Ordering::Relaxed)));
    Proc::spawn_or_exit("tern-relay", cmd, &log, SHORT).expect("the relay starts or exits")
}

/// The process and its ready line; panics when it exited instead.
fn ready(started: Started) -> (Proc, Value) {
    match started {
        Started::Ready(proc, ready) => (proc, ready),
        Started::Exited { status, log } => panic!("the relay exited ({status}): {log}"),
    }
}

/// Waits until the process's log contains `text`.
async fn wait_log(proc: &Proc, text: &str) {
    wait_for(&format!("{text:?} in the log"), SHORT, || async {
        let log = proc.log_text();
        log.contains(text).then_some(()).ok_or(log)
    })
    .await;
}

/// The arguments `RelayProc` gives, for a relay in `dir`.
fn relay_args(backend_url: &str, dir: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "--dev",
        "--relay-id",
        RELAY,
        "--quic-listen",
        "127.0.0.1:0",
        "--https-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--backend-url",
        backend_url,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for (flag, path) in [
        ("--dev-ca-out", dir.join("ca.pem")),
        ("--spool-dir", dir.join("spool")),
        ("--admin-state-file", dir.join("admin.json")),
    ] {
        a.push(flag.into());
        a.push(path.display().to_string());
    }
    a
}

fn relay_command(args: &[String], dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern-relay"));
    cmd.current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn,tern_relay::audit=info");
    cmd
}

/// Runs the relay in a mount namespace of its own, where `state_dir` is a 64 KiB tmpfs
/// that is full from the start (the settings file cannot be written), with the admin
/// token from the environment (nothing needs writing at start).
fn relay_with_full_state_disk(
    args: &[String],
    dir: &Path,
    state_dir: &Path,
    token: &str,
) -> (Proc, Value) {
    let script = r#"mount -t tmpfs -o size=64k,mode=0700 tern-state "$STATE" \
        && { dd if=/dev/zero of="$STATE/filler" bs=4096 2>/dev/null; true; } \
        && exec "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.current_dir(dir)
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_tern-relay"))
        .args(args)
        .env("STATE", state_dir)
        .env("TERN_RELAY_ADMIN_TOKEN", token)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn,tern_relay::audit=info");
    ready(launch(cmd, dir))
}

/// Remounts `state_dir` in the mount namespace of process `pid`.
fn remount(pid: u32, state_dir: &Path, how: &str) {
    let ok = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "mount", "-o", how])
        .arg(state_dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "remount {how} failed");
}

/// With the settings file's disk full or read-only, an admin change (the breaker
/// override included) still applies in memory, says `persisted: false`, shows in
/// status and metrics, and is written as soon as the disk takes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_apply_when_the_settings_disk_is_full_or_read_only() {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).unwrap();
    let mut args = relay_args(&backend.url, dir.path());
    let state_file = state_dir.join("admin.json");
    let at = args.iter().position(|a| a == "--admin-state-file").unwrap();
    args[at + 1] = state_file.display().to_string();
    const TOKEN: &str = "ops-hardening-admin-token";
    let (relay, ready) = relay_with_full_state_disk(&args, dir.path(), &state_dir, TOKEN);
    let pid = relay.pid();
    let api = AdminClient::new(
        &format!("http://{}", ready["admin"].as_str().unwrap()),
        TOKEN,
        "ops-test",
    );
    let metrics_url = format!("http://{}", ready["metrics"].as_str().unwrap());
    let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let device = Device::connect(&ca, ready["quic"].as_str().unwrap().parse().unwrap()).await;
    wait_for("the app registry", SHORT, || async {
        let o = device.send("demo", "demo-key", batch("demo", 5)).await;
        forwarded(&o).then_some(()).ok_or(format!("{o:?}"))
    })
    .await;
    let forwarded_before = stored(&backend).await;

    // Disk full: the breaker override applies all the same.
    let reply = api
        .put("/admin/v1/breaker", json!({"override": "force_open"}))
        .await;
    assert_eq!(reply["persisted"], false, "{reply}");
    assert_eq!(reply["breaker"], "force_open", "{reply}");
    assert!(
        reply["persist_error"].as_str().unwrap().contains("space"),
        "{reply}"
    );
    for _ in 0..5 {
        let o = device.send("demo", "demo-key", batch("demo", 5)).await;
        assert!(spooled(&o), "forced open: spooled, got {o:?}");
    }
    assert_eq!(
        stored(&backend).await,
        forwarded_before,
        "the backend was not called"
    );

    // Read-only: another change applies too.
    remount(pid, &state_dir, "remount,ro");
    let reply = api
        .put("/admin/v1/apps/shop/block", json!({"reason": "INC-18"}))
        .await;
    assert_eq!(reply["persisted"], false, "{reply}");
    let o = device.send("shop", "shop-key", batch("shop", 5)).await;
    assert!(matches!(o, IngestOutcome::Retry { .. }), "blocked: {o:?}");

    let status = api.status().await;
    let p = &status["persistence"];
    assert_eq!(p["persisted"], false, "{p}");
    assert!(p["failures"].as_u64().unwrap() >= 2, "{p}");
    assert!(p["failing_since_ms"].as_u64().is_some(), "{p}");
    let audit = api
        .call(reqwest::Method::GET, "/admin/v1/audit", None)
        .await
        .1;
    assert_eq!(audit.as_array().unwrap().len(), 2);
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["persisted"] == false));
    let m = metrics(&metrics_url).await;
    assert_eq!(
        metrics::total(&m, "tern_relay_admin_settings_persisted"),
        0.0
    );
    assert!(metrics::total(&m, "tern_relay_admin_persist_failures_total") >= 2.0);

    // The disk is fixed: the settings in force are written without anyone asking.
    remount(pid, &state_dir, "remount,rw");
    let inside =
        PathBuf::from(format!("/proc/{pid}/root")).join(state_dir.strip_prefix("/").unwrap());
    std::fs::remove_file(inside.join("filler")).unwrap();
    wait_for("the settings persisted again", SHORT, || async {
        let m = metrics(&metrics_url).await;
        let gauge = metrics::total(&m, "tern_relay_admin_settings_persisted");
        let persisted = api.status().await["persistence"]["persisted"].clone();
        (gauge == 1.0 && persisted == true)
            .then_some(())
            .ok_or(format!("gauge {gauge}, status {persisted}"))
    })
    .await;
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(inside.join("admin.json")).unwrap()).unwrap();
    assert_eq!(on_disk["breaker"], "force_open");
    assert_eq!(on_disk["blocked_apps"]["shop"], "INC-18");
    // And changes are persisted as usual again.
    let reply = api
        .put("/admin/v1/breaker", json!({"override": "auto"}))
        .await;
    assert_eq!(reply["persisted"], true, "{reply}");
    assert!(reply.get("persist_error").is_none(), "{reply}");
    backend.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 9: recording privacy, the token file, settings refused at start
// ---------------------------------------------------------------------------------------

/// Turned on with nothing but a sample, a recording keeps neither user ids nor property
/// values in clear, and its files are readable by their owner only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_private_by_default_in_owner_only_files() {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&backend.url, dir.path(), &[], &[]);
    relay.wait_ready().await;
    let api = AdminClient::for_proc(&relay, "ops-test");
    let reply = api
        .put(
            "/admin/v1/record",
            json!({"enabled": true, "sample_bp": 10000}),
        )
        .await;
    assert_eq!(reply["record"]["hash_user_ids"], true, "{reply}");
    assert_eq!(reply["record"]["keep_property_values"], false, "{reply}");
    let device = Device::connect(&relay.ca_pem, relay.quic).await;
    for i in 0..10 {
        let mut b = batch("demo", 2);
        for e in &mut b.events {
            e.user_id = Some(UserId::new(format!("user-secret-{i}")));
            e.body = tern_protocol::EventBody::Custom {
                name: "signup".into(),
                props: [
                    ("email".to_string(), format!("person{i}@example.com").into()),
                    ("plan".to_string(), "platinum".into()),
                ]
                .into_iter()
                .collect(),
            };
        }
        let o = device.send("demo", "demo-key", b).await;
        assert!(forwarded(&o), "{o:?}");
    }
    assert_eq!(api.status().await["record"]["batches"], 10);
    drop(device);
    // The drain writes the open segment.
    assert!(relay.terminate().success());

    let record = dir.path().join("spool/record");
    let seg_dir = record.join(RELAY);
    assert_eq!(mode(&record), 0o700);
    assert_eq!(mode(&seg_dir), 0o700);
    let segs = files_ending(&seg_dir, ".json");
    assert!(!segs.is_empty());
    let mut batches = 0;
    for seg in &segs {
        assert_eq!(mode(seg), 0o600, "{}", seg.display());
        let text = std::fs::read_to_string(seg).unwrap();
        for clear in ["user-secret", "@example.com", "platinum"] {
            assert!(!text.contains(clear), "{clear:?} in {}", seg.display());
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["hashed_user_ids"], true);
        assert_eq!(v["redacted_property_values"], true);
        batches += v["batches"].as_array().unwrap().len();
        // Keys are kept for realistic replays; values are placeholders.
        let props = &v["batches"][0]["batch"]["events"][0]["body"]["props"];
        assert_eq!(props["plan"], "********", "{props}");
    }
    assert_eq!(batches, 10);
    backend.stop().await;
}

/// The generated admin token was written through whatever was at its path: a symbolic
/// link was followed, and the token landed in its target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_never_written_through_a_symbolic_link() {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("admin.token")).unwrap();
    let args = relay_args(&backend.url, dir.path());
    let (code, stderr) = match launch(relay_command(&args, dir.path()), dir.path()) {
        Started::Exited { status, log } => (status.code(), log),
        Started::Ready(_, ready) => panic!("started: {ready}"),
    };
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("admin.token") && stderr.contains("symbolic link"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(std::fs::symlink_metadata(dir.path().join("admin.token"))
        .unwrap()
        .file_type()
        .is_symlink());
    backend.stop().await;
}

/// An existing token file kept its mode when the token was written again (0644:
/// readable by every local user). It is replaced by a private one, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_file_readable_by_others_is_replaced_by_a_private_one() {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "stale-token").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = relay_args(&backend.url, dir.path());
    let (proc, ready) = ready(launch(relay_command(&args, dir.path()), dir.path()));
    assert_eq!(mode(&token_file), 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(token.len(), 64, "a fresh token");
    wait_log(&proc, "admin token file was readable by others").await;
    // The new token is the one the relay accepts.
    let api = AdminClient::new(
        &format!("http://{}", ready["admin"].as_str().unwrap()),
        &token,
        "ops-test",
    );
    api.status().await;
    backend.stop().await;
}

/// Unsafe settings are each refused with an error naming the setting; the three
/// public-address overrides start the relay with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_settings_refuse_to_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let base = relay_args("http://127.0.0.1:9", dir.path());
    // `extra` flags replace the base's (a flag given twice is a usage error).
    let with = |extra: &[&str]| {
        let mut a = base.clone();
        let mut i = 0;
        while i < extra.len() {
            let flag = extra[i];
            let value = extra.get(i + 1).filter(|v| !v.starts_with("--"));
            match (a.iter().position(|x| x == flag), value) {
                (Some(at), Some(v)) => a[at + 1] = v.to_string(),
                (_, v) => {
                    a.push(flag.to_string());
                    a.extend(v.map(|v| v.to_string()));
                }
            }
            i += 1 + usize::from(value.is_some());
        }
        a
    };
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, "idle_timeout_ms = 0\n").unwrap();
    let config = config.display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&["--config", &config]), "idle_timeout_ms:"),
        (with(&["--relay-id", "../escape"]), "relay_id:"),
        (with(&["--relay-id", "eu/1"]), "relay_id:"),
        (with(&["--quic-listen", "0.0.0.0:0"]), "tls.dev:"),
        (with(&["--https-listen", "[::]:0"]), "tls.dev:"),
        (with(&["--metrics-listen", "0.0.0.0:0"]), "metrics_listen:"),
        (with(&["--admin-listen", "0.0.0.0:0"]), "admin_listen:"),
    ];
    let mut wrong = Vec::new();
    for (args, field) in cases {
        // In a network namespace of its own: a relay that does start binds nothing
        // reachable from outside.
        let (code, stderr) = match launch(isolated(&args, dir.path()), dir.path()) {
            Started::Exited { status, log } => (status.code(), log),
            Started::Ready(_, ready) => {
                wrong.push(format!("{field} started: {ready}"));
                continue;
            }
        };
        if code != Some(1) || !stderr.contains(field) {
            wrong.push(format!("{field} not named (exit {code:?}): {stderr}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Explicitly overridden: it starts, and says what it was allowed to do.
    let args = with(&[
        "--quic-listen",
        "0.0.0.0:0",
        "--https-listen",
        "0.0.0.0:0",
        "--metrics-listen",
        "0.0.0.0:0",
        "--allow-insecure-dev-tls-on-public-address",
        "--allow-unauthenticated-metrics-on-public-address",
        "--admin-listen",
        "0.0.0.0:0",
        "--allow-plaintext-admin-on-public-address",
    ]);
    let (proc, ready) = ready(launch(isolated(&args, dir.path()), dir.path()));
    assert!(ready.get("quic").is_some());
    wait_log(&proc, "allow_insecure_dev_tls_on_public_address").await;
    wait_log(&proc, "allow_unauthenticated_metrics_on_public_address").await;
    wait_log(&proc, "allow_plaintext_admin_on_public_address").await;
}

/// The relay in a private network namespace (only its own loopback up).
fn isolated(args: &[String], dir: &Path) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.current_dir(dir)
        .args([
            "--net",
            "sh",
            "-c",
            r#"ip link set lo up && exec "$@""#,
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_tern-relay"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn");
    cmd
}

/// A settings disk that hangs — the write's temp file is a FIFO nobody reads, so
/// opening it never returns — holds up no admin change: each is answered and applied,
/// and reported as not persisted; once the disk comes back, the settings in force are
/// written without anyone asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_answered_while_the_settings_disk_hangs() {
    const TOKEN: &str = "ops-hardening-admin-token";
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = relay_command(&relay_args(&backend.url, dir.path()), dir.path());
    cmd.env("TERN_RELAY_ADMIN_TOKEN", TOKEN);
    let (_relay, ready) = match launch(cmd, dir.path()) {
        Started::Ready(proc, ready) => (proc, ready),
        Started::Exited { status, log } => panic!("exited {status}: {log}"),
    };
    let api = AdminClient::new(
        &format!("http://{}", ready["admin"].as_str().unwrap()),
        TOKEN,
        "ops-test",
    );
    let fifo = dir.path().join("admin.json.tmp");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo");
    // Answered at all (a hung change would never be): not a timing threshold.
    let change = |path: &'static str, body: Value| {
        let api = &api;
        async move {
            tokio::time::timeout(Duration::from_secs(120), api.put(path, body))
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer while the disk hangs"))
        }
    };
    let reply = change("/admin/v1/breaker", json!({"override": "force_open"})).await;
    assert_eq!(reply["persisted"], false, "{reply}");
    assert_eq!(reply["breaker"], "force_open", "{reply}");
    let why = reply["persist_error"].as_str().unwrap_or_default();
    assert!(why.contains("did not finish"), "{reply}");
    let reply = change("/admin/v1/apps/shop/block", json!({"reason": "INC-7"})).await;
    assert_eq!(reply["persisted"], false, "{reply}");
    let why = reply["persist_error"].as_str().unwrap_or_default();
    assert!(why.contains("has not finished"), "{reply}");
    assert_eq!(api.status().await["persistence"]["persisted"], false);

    // The disk comes back: the FIFO is moved away (the hung write already opened it)
    // and read, so the hung write ends; then the settings in force are written.
    let moved = dir.path().join("hung.fifo");
    std::fs::rename(&fifo, &moved).unwrap();
    let reader = std::thread::spawn(move || std::fs::read(&moved));
    wait_for("the settings persisted again", SHORT, || async {
        let persisted = api.status().await["persistence"]["persisted"].clone();
        (persisted == true)
            .then_some(())
            .ok_or(format!("status {persisted}"))
    })
    .await;
    let first = reader.join().unwrap().unwrap();
    let first: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(
        first["breaker"], "force_open",
        "the hung write held the first change"
    );
    assert!(first["blocked_apps"].get("shop").is_none());
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("admin.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk["breaker"], "force_open");
    assert_eq!(on_disk["blocked_apps"]["shop"], "INC-7");
    backend.stop().await;
}
