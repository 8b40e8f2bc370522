//! `tern-loadgen` as a real process: against a real `tern-relay` with the loadgen's sink
//! behind it (happy path, open loop, and degraded: the sink refusing, the relay
//! spooling), and in raw reference mode. Counts only: no timing thresholds.

use std::process::Command;

use serde_json::Value;
use tern_testkit::proc::Proc;
use tern_testkit::{RelayProc, DEADLINE};

/// The loadgen's sink (a backend that counts) as a child process, and its URL.
fn start_sink(dir: &std::path::Path) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"));
    cmd.args(["sink", "--listen", "127.0.0.1:0"]);
    let (proc, ready) = Proc::spawn("sink", cmd, &dir.join("sink.log"), DEADLINE).unwrap();
    let url = format!("http://{}", ready["listen"].as_str().unwrap());
    (proc, url)
}

/// The relay against `backend`, in `dir`, and its QUIC address.
fn start_relay(backend: &str, dir: &std::path::Path) -> (RelayProc, String) {
    let relay = RelayProc::builder(backend)
        .dir(dir)
        // The default per-app limit (50k events/s) would answer Retry to a load test.
        .envs([
            ("TERN_RELAY_RATE_LIMIT_EVENTS_PER_SEC", "100000000"),
            ("TERN_RELAY_RATE_LIMIT_BURST", "100000000"),
        ])
        .log_level("error")
        .start();
    let quic = relay.quic.to_string();
    (relay, quic)
}

/// Runs the load generator with `args` and returns its JSON record.
fn loadgen(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"))
        .args(args)
        .args(["--json", "--drain-timeout", "20s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tern-loadgen {args:?} failed: {stderr}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let record: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bad JSON {stdout:?}: {e}; stderr: {stderr}"));
    eprintln!("{stderr}");
    record
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number: {v}"))
}

/// Every batch sent got an outcome, and none of them is an error.
fn assert_all_answered(r: &Value) {
    let o = |k: &str| n(r, &["outcomes", k]);
    let total = o("accepted_forwarded")
        + o("accepted_spooled")
        + o("retry")
        + o("rejected")
        + o("error_reply")
        + o("transport_error")
        + o("timed_out");
    assert_eq!(total, n(r, &["batches_sent"]), "{r}");
    assert_eq!(n(r, &["answered"]), total, "{r}");
    assert_eq!(n(r, &["errors"]), 0, "{r}");
    assert!(n(r, &["events_accepted"]) > 0, "{r}");
}

async fn sink_stats(url: &str) -> Value {
    reqwest::get(format!("{url}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_a_real_relay_and_sink_happy_and_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, sink_url) = start_sink(dir.path());
    let (_relay, quic) = start_relay(&sink_url, dir.path());
    let ca = dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let common = [
        "--target",
        quic.as_str(),
        "--ca",
        ca,
        "--connections",
        "3",
        "--concurrency",
        "4",
        "--events-per-batch",
        "20",
    ];

    // Closed loop, as fast as it goes.
    let args: Vec<&str> = common
        .iter()
        .copied()
        .chain(["--rate", "0", "--duration", "1s", "--warmup", "200ms"])
        .collect();
    let r = loadgen(&args);
    assert_all_answered(&r);
    assert_eq!(r["mode"], "relay");
    let forwarded = n(&r, &["outcomes", "accepted_forwarded"]);
    assert!(forwarded > 0, "{r}");
    assert_eq!(
        n(&r, &["events_accepted"]),
        20 * (forwarded + n(&r, &["outcomes", "accepted_spooled"]))
    );
    let s = sink_stats(&sink_url).await;
    assert!(
        n(&s, &["batches"]) >= forwarded,
        "the sink stored every forwarded batch: {s} vs {r}"
    );
    assert!(n(&s, &["events"]) >= 20 * forwarded, "{s}");

    // Open loop at a modest rate.
    let args: Vec<&str> = common
        .iter()
        .copied()
        .chain(["--rate", "2000", "--duration", "1s", "--warmup", "0s"])
        .collect();
    let r = loadgen(&args);
    assert_all_answered(&r);
    assert_eq!(n(&r, &["rate"]), 2000);

    // Degraded: the backend answers 503, the relay spools and still acknowledges.
    let resp = reqwest::Client::new()
        .put(format!("{sink_url}/admin/ingest-status"))
        .body("503")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let args: Vec<&str> = common
        .iter()
        .copied()
        .chain(["--rate", "0", "--duration", "1s", "--warmup", "200ms"])
        .collect();
    let r = loadgen(&args);
    assert_all_answered(&r);
    assert!(n(&r, &["outcomes", "accepted_spooled"]) > 0, "{r}");
    assert_eq!(n(&r, &["outcomes", "accepted_forwarded"]), 0, "{r}");
    assert!(n(&sink_stats(&sink_url).await, &["refused"]) > 0);
    let objects = spool_objects(&dir.path().join("spool"));
    assert!(objects > 0, "the spool directory holds objects");
}

/// `.tern` objects under `dir`, at any depth.
fn spool_objects(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                spool_objects(&p)
            } else {
                usize::from(p.extension().is_some_and(|x| x == "tern"))
            }
        })
        .sum()
}

#[test]
fn loadgen_raw_reference_mode_answers_everything() {
    let r = loadgen(&[
        "--raw",
        "--connections",
        "2",
        "--concurrency",
        "4",
        "--events-per-batch",
        "50",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
    ]);
    assert_eq!(r["mode"], "raw");
    assert_all_answered(&r);
    assert_eq!(
        n(&r, &["outcomes", "accepted_forwarded"]),
        n(&r, &["batches_sent"])
    );
    assert!(n(&r, &["bytes_per_batch"]) > 100);
}

#[test]
fn loadgen_refuses_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"))
        .args(["--connections", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"))
        .args(["--raw", "--events-per-batch", "0", "--duration", "100ms"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("events per batch"), "{stderr}");
}
