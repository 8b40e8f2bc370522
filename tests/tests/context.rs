//! Contexts and lifecycle events end to end with real processes (`tern-server-stub`
//! and three `tern-relay` processes on loopback, a real `tern-sdk` device in this
//! process): a device is installed (version 1.0 on Wi-Fi), switches to cellular and
//! records, restarts without uploading (its events wait on the device), then the app is
//! updated to 2.0 and the device delivers everything, goes to the background and comes
//! back. The stub's contexts view (`/verify/apps/{app}/contexts`) must show one install,
//! one update naming 1.0, an open per launch and one from the background, each event
//! under the context it was recorded in — the waiting 1.0 events under 1.0 although they
//! were sent by 2.0 — one install id throughout, and no gap or duplicate.

use std::time::Duration;

use serde_json::{json, Value as Json};
use tern_fleet::cluster::{Cluster, ClusterConfig};
use tern_protocol::{AppContext, NetworkType};
use tern_sdk::{Properties, Tern, TernConfigBuilder};
use tern_testkit::bins::Binaries;
use tern_testkit::wait::{until, DEADLINE};
use tern_tests::device;

fn builder(dir: &std::path::Path, c: &Cluster, version: &str) -> TernConfigBuilder {
    device::builder(dir, "demo-key", c.shard_map.clone(), &c.ca_pem)
        .app_version(version)
        .context(AppContext {
            app_build: Some(format!("build-{version}")),
            os_name: Some("android".into()),
            device_model: Some("Pixel 8".into()),
            network: Some(NetworkType::Wifi),
            ..AppContext::default()
        })
        .auto_lifecycle(true)
}

fn record(t: &Tern, name: &str, n: usize) {
    for _ in 0..n {
        t.track(name, Properties::new()).expect("track");
    }
}

/// Waits until the stub holds `events` events of the app, returns its contexts view.
async fn contexts_when(c: &Cluster, events: u64) -> Json {
    let mut last = Json::Null;
    let reached = tokio::time::timeout(DEADLINE, async {
        loop {
            let app = c.get_json("/verify/apps/demo").await.expect("app view");
            if app["unique_events"].as_u64() == Some(events) {
                return;
            }
            last = app;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "expected {events} events, the stub holds {last}"
    );
    c.get_json("/verify/apps/demo/contexts")
        .await
        .expect("the stub's contexts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_and_lifecycle_events_reach_the_stub_as_the_device_lived_them() {
    let bins = tokio::task::spawn_blocking(Binaries::build_for_tests)
        .await
        .unwrap()
        .expect("building the binaries");
    let c = Cluster::start(bins, ClusterConfig::default())
        .await
        .expect("starting the cluster");
    let dir = tempfile::tempdir().unwrap();

    // Installed: 1.0 on Wi-Fi, then cellular.
    let t = device::start(builder(dir.path(), &c, "1.0"));
    until("the store", DEADLINE, || t.install_id().is_some()).await;
    let install = t.install_id().expect("install id").to_string();
    let device = t.stats().device_id.expect("device id").to_string();
    record(&t, "wifi", 3);
    t.set_network_type(Some(NetworkType::Cellular))
        .expect("network");
    record(&t, "cellular", 2);
    assert!(t.flush_and_wait(DEADLINE), "first run not delivered");
    assert!(t.shutdown(DEADLINE).clean);
    drop(t);

    // A restart that uploads nothing: its events wait on the device.
    let t = device::start(builder(dir.path(), &c, "1.0").manual_upload());
    record(&t, "offline", 4);
    assert!(t.wait_applied(DEADLINE));
    assert!(t.shutdown(DEADLINE).clean);
    drop(t);

    // Updated to 2.0: it sends the waiting 1.0 events and its own.
    let t = device::start(builder(dir.path(), &c, "2.0"));
    record(&t, "updated", 2);
    t.on_background().expect("background");
    t.on_foreground().expect("foreground");
    assert!(t.flush_and_wait(DEADLINE), "last run not delivered");
    assert_eq!(t.install_id().map(|i| i.to_string()), Some(install.clone()));
    let recorded = t.stats();
    // 5 + 2 lifecycle of the first run, 4 + 1 of the second, 2 + 2 + 1 (the open from the
    // background) + its session start of the third.
    let events = 5 + 2 + 5 + 2 + 2 + 1 + 1;
    let view = contexts_when(&c, events).await;
    let dev = &view["devices"][&device];

    let lifecycle: Vec<_> = dev["lifecycle"]
        .as_array()
        .expect("lifecycle")
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap_or("").to_owned(),
                l["app_version"].clone(),
                l["previous_version"].clone(),
                l["from_background"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let (v1, v2) = (json!("1.0"), json!("2.0"));
    assert_eq!(
        lifecycle,
        [
            ("app_installed".into(), v1.clone(), Json::Null, false),
            ("app_opened".into(), v1.clone(), Json::Null, false),
            ("app_opened".into(), v1.clone(), Json::Null, false),
            ("app_updated".into(), v2.clone(), v1.clone(), false),
            ("app_opened".into(), v2.clone(), Json::Null, false),
            ("app_opened".into(), v2.clone(), Json::Null, true),
        ],
        "{view}"
    );
    assert_eq!(
        (&view["installs"], &view["updates"], &view["opens"]),
        (&json!(1), &json!(1), &json!(4)),
        "{view}"
    );
    // Each event under the context it was recorded in: the second run's events (sent by
    // 2.0) under 1.0 on Wi-Fi, with the first run's Wi-Fi ones.
    let contexts: Vec<_> = dev["contexts"]
        .as_array()
        .expect("contexts")
        .iter()
        .map(|r| {
            let ctx = &r["context"];
            assert_eq!(ctx["install_id"], json!(install), "{view}");
            assert_eq!(ctx["device_model"], json!("Pixel 8"), "{view}");
            (
                ctx["app_version"].clone(),
                ctx["app_build"].clone(),
                ctx["network"].clone(),
                r["events"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        contexts,
        [
            (v1.clone(), json!("build-1.0"), json!("wifi"), 5 + 5),
            (v1, json!("build-1.0"), json!("cellular"), 2),
            (v2, json!("build-2.0"), json!("wifi"), 6),
        ],
        "{view}"
    );
    let summary = c.summary().await.expect("summary");
    assert_eq!(summary["sequence_gaps"], 0, "{summary}");
    assert_eq!(summary["events_duplicate"], 0, "{summary}");
    eprintln!("contexts: {view}; device stats {recorded:?}");
    assert!(t.shutdown(DEADLINE).clean);
}
