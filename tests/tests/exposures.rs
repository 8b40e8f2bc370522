//! Experiment exposures end to end with real processes (`tern-server-stub` and three
//! `tern-relay` processes on loopback, a real `tern-sdk` device in this process): a
//! device reads flags again and again — anonymous and as a user, across a restart of
//! the SDK on the same directory — and the stub's view holds exactly one exposure per
//! (flag, variant, unit, config version); a config change (a new version) makes each
//! read flag a new exposure, once. Verdicts come from the stub's `/verify/*` views.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value as Json;
use tern_fleet::cluster::{Cluster, ClusterConfig};
use tern_sdk::{ExposureOutcome, Tern};
use tern_testkit::bins::Binaries;
use tern_testkit::wait::{until, DEADLINE};
use tern_tests::device;

/// The demo app's flags (`tern_testkit::stub::DEMO_APPS`): a boolean flag at 50 % and
/// a three-way multivariate flag.
const FLAGS: [&str; 2] = ["new_checkout", "button_color"];

/// (flag, variant, unit, config version, events stored with it).
type Row = (String, String, String, u64, u64);

fn start(dir: &std::path::Path, c: &Cluster) -> Tern {
    device::start(device::builder(
        dir,
        "demo-key",
        c.shard_map.clone(),
        &c.ca_pem,
    ))
}

/// Reads every flag `times` times; returns the exposures the reads make, as rows with
/// one event each.
fn read_flags(t: &Tern, unit: &str, times: usize) -> BTreeSet<Row> {
    let version = t.config_info().version;
    let mut out = BTreeSet::new();
    for _ in 0..times {
        for f in FLAGS {
            let variant = t.flag(f).variant_name().to_owned();
            assert_eq!(t.flag_enabled(f), variant != "off");
            out.insert((f.to_owned(), variant, unit.to_owned(), version, 1));
        }
    }
    out
}

async fn stub_rows(c: &Cluster, unit: &str) -> (Json, BTreeSet<Row>) {
    let view = c
        .get_json(&format!("/verify/apps/demo/exposures?unit={unit}"))
        .await
        .expect("the stub's exposures");
    let rows = view["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["flag"].as_str().unwrap_or_default().to_owned(),
                r["variant"].as_str().unwrap_or_default().to_owned(),
                r["unit"].as_str().unwrap_or_default().to_owned(),
                r["config_version"].as_u64().unwrap_or_default(),
                r["events"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    (view, rows)
}

/// Waits until the stub's rows for `unit` are `want` (every exposure event stored),
/// then checks no key was stored twice.
async fn expect_rows(c: &Cluster, unit: &str, want: &BTreeSet<Row>) {
    let mut last = (Json::Null, BTreeSet::new());
    let reached = tokio::time::timeout(DEADLINE, async {
        loop {
            last = stub_rows(c, unit).await;
            if last.1 == *want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "unit {unit}: the stub holds {:?}, expected {want:?}",
        last.1
    );
    assert_eq!(last.0["duplicated"], 0, "{}", last.0);
    assert_eq!(
        last.0["exposure_events"].as_u64(),
        Some(want.len() as u64),
        "{}",
        last.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_exposure_per_flag_variant_unit_and_version_reaches_the_stub() {
    let bins = tokio::task::spawn_blocking(Binaries::build_for_tests)
        .await
        .unwrap()
        .expect("building the binaries");
    let c = Cluster::start(bins, ClusterConfig::default())
        .await
        .expect("starting the cluster");
    let dir = tempfile::tempdir().unwrap();

    // First run: anonymous reads, then as `ada`, each flag read many times.
    let t = start(dir.path(), &c);
    until("the first bundle", DEADLINE, || t.config_info().version > 0).await;
    let v1 = t.config_info().version;
    until("the store", DEADLINE, || t.stats().device_id.is_some()).await;
    let device = t.stats().device_id.expect("device id").to_string();
    let anonymous = read_flags(&t, &device, 5);
    t.identify(Some("ada")).unwrap();
    let mut ada = read_flags(&t, "ada", 5);
    let s = t.stats().exposures;
    // 2 units × 2 flags × 5 rounds × 2 reads (`flag`, `flag_enabled`): 4 recorded.
    assert_eq!((s.recorded, s.already_recorded), (4, 36), "{s:?}");
    assert!(t.flush_and_wait(DEADLINE), "first run not delivered");
    assert!(t.shutdown(DEADLINE).clean);
    drop(t);

    // Second run on the same directory: the same reads record nothing again.
    let t = start(dir.path(), &c);
    until("the cached bundle", DEADLINE, || {
        t.config_info().version > 0
    })
    .await;
    assert_eq!(
        t.config_info().version,
        v1,
        "the config changed under the test"
    );
    assert_eq!(read_flags(&t, "ada", 3), ada);
    t.identify(None).unwrap();
    assert_eq!(read_flags(&t, &device, 3), anonymous);
    assert_eq!(
        t.record_exposure("button_color").unwrap(),
        ExposureOutcome::AlreadyRecorded
    );
    assert_eq!(t.stats().exposures.recorded, 0);
    expect_rows(&c, &device, &anonymous).await;
    expect_rows(&c, "ada", &ada).await;

    // A config change: a new version, so each flag read is a new exposure, once.
    c.put_json(
        "/admin/apps/demo/values/welcome_text",
        &serde_json::json!("exposures"),
    )
    .await
    .unwrap();
    until("the new config version", DEADLINE, || {
        t.config_info().version > v1
    })
    .await;
    t.identify(Some("ada")).unwrap();
    let v2 = read_flags(&t, "ada", 4);
    assert!(v2.iter().all(|r| r.3 > v1), "{v2:?}");
    ada.extend(v2);
    assert_eq!(t.stats().exposures.recorded, 2);
    assert!(t.flush_and_wait(DEADLINE), "second run not delivered");
    expect_rows(&c, "ada", &ada).await;
    expect_rows(&c, &device, &anonymous).await;
    let summary = c.summary().await.unwrap();
    assert_eq!(summary["exposures"], 6, "{summary}");
    assert_eq!(summary["exposure_events"], 6, "{summary}");
    eprintln!("exposures: stub {summary}");
    assert!(t.shutdown(DEADLINE).clean);
}
