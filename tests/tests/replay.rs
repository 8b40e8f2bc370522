//! Recorded traffic as a QA suite, with real processes: a relay records what a fleet of
//! simulated devices sends (`PUT /admin/v1/record`), then `tern-fleet run
//! --replay-dir` replays that recording as device traffic — one `tern-sdk` per
//! recorded device in `tern-fleet pod` processes — against a fresh stack at high speed.
//! Every verdict comes from the stub's counters; times are printed, never asserted.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tern_fleet::cluster::{Cluster, ClusterConfig};
use tern_fleet::devices::{DeviceOptions, Fleet};
use tern_protocol::Properties;
use tern_relay::ingest::playback::RecordingReader;
use tern_testkit::bins::Binaries;
use tern_testkit::relay::AdminClient;

const DELIVER: Duration = Duration::from_secs(120);

/// What the test's own reading of a recording finds (the shared reader, resends
/// counted once).
struct Recorded {
    segments: u64,
    batches: u64,
    events: u64,
    devices: usize,
}

async fn read_recording(dir: &Path) -> Recorded {
    let mut reader = RecordingReader::open_dir(dir, "record").await.unwrap();
    let (mut batches, mut events) = (0, 0);
    let mut devices = HashSet::new();
    let mut ids = HashSet::new();
    while let Some(r) = reader.next().await {
        if ids.insert(r.batch.batch_id) {
            batches += 1;
            events += r.batch.events.len() as u64;
        }
        devices.insert(r.batch.device_id);
    }
    assert_eq!(reader.stats().segments_unreadable, 0);
    Recorded {
        segments: reader.stats().segments,
        batches,
        events,
        devices: devices.len(),
    }
}

fn n(v: &Json, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_replayed_through_the_fleet_stores_every_recorded_event_once() {
    let bins = tokio::task::spawn_blocking(Binaries::build_for_tests)
        .await
        .unwrap()
        .expect("building the binaries");
    let work = tempfile::tempdir().unwrap();

    // 1. A relay recording everything it accepts (private by default: user ids
    //    hashed, property values redacted).
    let mut recorded_stack = Cluster::start(
        bins.clone(),
        ClusterConfig {
            relays: 1,
            work_dir: Some(work.path().join("recorded-stack")),
            ..ClusterConfig::default()
        },
    )
    .await
    .expect("starting the recording stack");
    let relay = &recorded_stack.relays[0];
    let token = std::fs::read_to_string(relay.admin_token_file()).unwrap();
    let api = AdminClient::new(&format!("http://{}", relay.admin), &token, "qa");
    api.put(
        "/admin/v1/record",
        json!({"enabled": true, "sample_bp": 10000}),
    )
    .await;
    let spool = relay.dir().join("spool");

    // 2. Traffic: 12 devices (every other one identified), 40 custom events each, and
    //    on three of them a session with a purchase, user properties and an
    //    impression: every event kind the SDK records.
    let options = DeviceOptions::new(
        "demo",
        "demo-key",
        recorded_stack.shard_map.clone(),
        &recorded_stack.ca_pem,
    );
    let fleet = Fleet::start(12, &options, &work.path().join("devices")).unwrap();
    assert!(fleet.wait_ready(Duration::from_secs(60)));
    for d in &fleet.devices()[..3] {
        let mut props = Properties::new();
        props.insert("plan".into(), "gold".into());
        d.start_session().unwrap();
        d.purchase("gems-100", 1_990_000, "EUR", 1, props.clone())
            .unwrap();
        d.set_user_properties(props, vec!["trial".into()]).unwrap();
        d.message_impression("welcome", "shown").unwrap();
        d.end_session().unwrap();
    }
    let fleet = tokio::task::spawn_blocking(move || {
        let mut fleet = fleet;
        fleet.drive(240.0, Some(40), None, &AtomicBool::new(false), |_| {});
        fleet.flush_all();
        fleet
    })
    .await
    .unwrap();
    let sent = fleet.events_recorded();
    assert_eq!(sent, 12 * 40 + 3 * 5);
    let s = recorded_stack.wait_events(sent, DELIVER).await.unwrap();
    assert_eq!(n(&s, "events_unique"), sent, "{s}");
    fleet.shutdown(Duration::from_secs(5));
    drop(fleet);
    // The drain (SIGTERM) writes the recording's open segment.
    recorded_stack.shutdown();

    let recording = read_recording(&spool).await;
    eprintln!(
        "recorded: {} segments, {} batches, {} events from {} devices",
        recording.segments, recording.batches, recording.events, recording.devices
    );
    assert_eq!(
        recording.events, sent,
        "every accepted batch is in the recording"
    );
    assert_eq!(recording.devices, 12);

    // 3. Hostile input beside it: garbage, a truncated copy of a real segment, and a
    //    file that is not a segment at all.
    let seg_dir = spool.join("record/relay-1");
    let real = std::fs::read_dir(&seg_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let bytes = std::fs::read(&real).unwrap();
    std::fs::write(
        seg_dir.join("0000000000001-000001.json"),
        b"{\"relay_id\": [",
    )
    .unwrap();
    std::fs::write(
        seg_dir.join("0000000000002-000001.json"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    std::fs::write(seg_dir.join("notes.txt"), b"not a segment").unwrap();

    // 4. Replay through the fleet against a fresh stack (two relays, the devices in
    //    three pods), at 20x.
    let report = work.path().join("replay.json");
    let t = Instant::now();
    let mut cmd = std::process::Command::new(&bins.fleet);
    cmd.arg("run")
        .arg("--replay-dir")
        .arg(&spool)
        .args(["--speed", "20", "--relays", "2", "--devices-per-pod", "5"])
        .args(["--deliver-timeout", "90s", "--quiet", "--json"])
        .arg(&report)
        .arg("--work-dir")
        .arg(work.path().join("replay-stack"))
        .env("RUST_LOG", "warn");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "tern-fleet replay in {:.1} s:\n{stdout}\n{}",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tern-fleet run --replay-dir failed");
    let j: Json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let r = &j["replay"];

    // What was read: the recording, the two damaged segments skipped and counted.
    let rec = &r["recording"];
    assert_eq!(n(rec, "segments"), recording.segments + 2, "{rec}");
    assert_eq!(n(rec, "segments_unreadable"), 2, "{rec}");
    assert_eq!(n(rec, "other_objects"), 1, "{rec}");
    assert_eq!(n(rec, "batches"), recording.batches, "{rec}");
    assert_eq!(n(rec, "events"), recording.events, "{rec}");
    assert_eq!(n(rec, "devices"), 12, "{rec}");
    for kind in [
        "custom",
        "purchase",
        "user_properties",
        "message_impression",
        "session_start",
        "session_end",
    ] {
        assert!(n(&rec["events_by_kind"], kind) > 0, "{kind}: {rec}");
    }

    // What was replayed: every recorded event one SDK call, the recorded users
    // identified, nothing refused or skipped.
    let c = &r["run"]["counts"];
    assert_eq!(n(c, "events"), recording.events, "{c}");
    assert_eq!(n(c, "calls"), recording.events, "{c}");
    assert_eq!(
        (n(c, "refused"), n(c, "unknown"), n(c, "misrouted")),
        (0, 0, 0),
        "{c}"
    );
    assert!(n(c, "identify") >= 6, "the six identified devices: {c}");
    assert_eq!(n(c, "devices"), 12, "{c}");

    // What the backend holds: every recorded event once (no more: a replay that sent
    // a batch twice would show as extra events, since the SDK numbers them anew), from
    // every recorded device, nothing lost, no holes.
    assert_eq!(n(r, "devices_recorded_events"), recording.events, "{r}");
    assert_eq!(n(r, "events_stored"), recording.events, "{r}");
    assert_eq!(n(r, "devices_heard"), recording.devices as u64, "{r}");
    assert_eq!(n(&j, "delivered"), recording.events, "{j}");
    assert_eq!((n(&j, "lost"), n(&j, "sequence_gaps")), (0, 0), "{j}");
    eprintln!(
        "replayed {} events of {} devices; the backend suppressed {} resent copies",
        recording.events,
        recording.devices,
        n(r, "duplicates_suppressed")
    );
}
