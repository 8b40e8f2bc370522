//! Consent and deletion end to end with real processes (`tern-server-stub` and three
//! `tern-relay` processes on loopback, real `tern-sdk` devices in this process):
//!
//! * a device whose consent starts **pending** records analytics events and message
//!   impressions: nothing reaches the stub; analytics is then granted and messaging
//!   denied, and the stub holds exactly the analytics events, in order, no impression,
//!   no gap;
//! * an **opted-out** device sends no config request, opens no push subscription and
//!   sends no event — the one thing it sends is the deletion request it is asked for,
//!   which also serves as the barrier for "nothing else happened";
//! * an identified device **requests deletion**: the stub records it (device, user),
//!   deletes the device's stored events, and the events recorded after the request
//!   arrive under the device's new id.

use std::time::Duration;

use serde_json::Value as Json;
use tern_fleet::cluster::{Cluster, ClusterConfig};
use tern_sdk::{ConsentState, ConsentStates, Properties, Purpose, Tern};
use tern_testkit::bins::Binaries;
use tern_testkit::wait::{until, DEADLINE};
use tern_tests::device;

fn start(dir: &std::path::Path, c: &Cluster, default: ConsentState) -> Tern {
    device::start(
        device::builder(dir, "demo-key", c.shard_map.clone(), &c.ca_pem)
            .default_consent(ConsentStates::all(default)),
    )
}

fn record(t: &Tern, name: &str, n: usize) {
    for _ in 0..n {
        t.track(name, Properties::new()).expect("track");
    }
}

/// Polls `path` until `done` holds on it; returns the last view.
async fn view_until(c: &Cluster, path: &str, done: impl Fn(&Json) -> bool) -> Json {
    let mut last = Json::Null;
    let reached = tokio::time::timeout(DEADLINE, async {
        loop {
            last = c.get_json(path).await.unwrap_or(Json::Null);
            if done(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{path} never reached the expected state: {last}"
    );
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_and_deletion_reach_the_stub_as_the_devices_decided() {
    let bins = tokio::task::spawn_blocking(Binaries::build_for_tests)
        .await
        .unwrap()
        .expect("building the binaries");
    let c = Cluster::start(bins, ClusterConfig::default())
        .await
        .expect("starting the cluster");

    // 1. Pending, then analytics granted and messaging denied.
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), &c, ConsentState::Pending);
    until("the store", DEADLINE, || t.anonymous_id().is_some()).await;
    let anon = t.anonymous_id().expect("anonymous id");
    record(&t, "held", 4);
    t.message_impression("m1", "shown").expect("impression");
    assert!(t.flush_and_wait(DEADLINE), "flush");
    assert_eq!(t.stats().consent_counters.pending_now, 5);
    assert_eq!(t.stats().upload.batches_acked, 0, "a pending event left");
    t.set_consent(Purpose::Analytics, ConsentState::Granted)
        .expect("grant");
    t.set_consent(Purpose::Messaging, ConsentState::Denied)
        .expect("deny");
    t.message_impression("m2", "shown").expect("impression");
    record(&t, "granted", 2);
    assert!(t.flush_and_wait(DEADLINE), "not delivered");
    let key = format!("anonymous:{anon}");
    let ids = view_until(&c, "/verify/apps/demo/identities", |v| {
        v["kinds"][&key]["custom"].as_u64() == Some(6)
    })
    .await;
    let kinds = ids["kinds"][&key].as_object().expect("kinds").clone();
    assert_eq!(kinds.len(), 1, "only custom events: {ids}");
    let s = t.stats();
    assert_eq!(s.refused_consent, 1, "the impression after the denial");
    assert_eq!(
        s.consent_counters.pending_discarded, 1,
        "the held impression"
    );
    assert_eq!(s.consent_counters.pending_released, 4);
    assert!(t.shutdown(DEADLINE).clean);
    drop(t);

    // 2. Opted out from the start: nothing but the deletion request leaves.
    let dir_b = tempfile::tempdir().unwrap();
    let b = start(dir_b.path(), &c, ConsentState::Granted);
    b.opt_out(true).expect("opt out");
    assert!(b.track("ignored", Properties::new()).is_err());
    until("the store", DEADLINE, || b.stats().store_ready).await;
    let b_device = b.stats().device_id.expect("device id").to_string();
    b.request_deletion().expect("request deletion");
    let deletions = view_until(&c, "/verify/apps/demo/deletions", |v| {
        v["deletions"]
            .as_array()
            .is_some_and(|d| d.iter().any(|r| r["device_id"] == b_device.as_str()))
    })
    .await;
    let row = deletions["deletions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["device_id"] == b_device.as_str())
        .expect("row");
    assert_eq!(row["events_deleted"], 1, "only the request itself: {row}");
    let s = b.stats();
    assert_eq!(
        s.upload.config_fetches, 0,
        "an opted-out device fetched config"
    );
    assert_eq!(
        s.upload.push_subscriptions, 0,
        "an opted-out device subscribed"
    );
    assert_eq!(s.upload.batches_acked, 1, "only the deletion request");
    assert!(b.shutdown(DEADLINE).clean);
    drop(b);

    // 3. Identified, recorded, deletion requested, recorded again.
    let dir_c = tempfile::tempdir().unwrap();
    let t = start(dir_c.path(), &c, ConsentState::Granted);
    until("the store", DEADLINE, || t.stats().store_ready).await;
    let old = t.stats().device_id.expect("device id").to_string();
    t.identify(Some("carol")).expect("identify");
    record(&t, "before", 5);
    assert!(t.flush_and_wait(DEADLINE), "not delivered");
    view_until(&c, &format!("/verify/apps/demo/devices/{old}"), |v| {
        v["unique_events"].as_u64() == Some(5)
    })
    .await;
    t.request_deletion().expect("request deletion");
    record(&t, "after", 3);
    assert!(t.wait_applied(DEADLINE));
    let new = t.stats().device_id.expect("device id").to_string();
    assert_ne!(new, old);
    assert!(t.flush_and_wait(DEADLINE), "not delivered");
    let deletions = view_until(&c, "/verify/apps/demo/deletions", |v| {
        v["deletions"]
            .as_array()
            .is_some_and(|d| d.iter().any(|r| r["device_id"] == old.as_str()))
    })
    .await;
    let row = deletions["deletions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["device_id"] == old.as_str())
        .expect("row")
        .clone();
    assert_eq!(row["user_id"], "carol", "{row}");
    assert_eq!(
        row["events_deleted"], 6,
        "five events and the request: {row}"
    );
    assert_eq!(row["events_dropped"], 0, "{row}");
    view_until(&c, &format!("/verify/apps/demo/devices/{new}"), |v| {
        v["unique_events"].as_u64() == Some(3)
    })
    .await;
    assert_eq!(t.stats().consent_counters.deletion_requests_sent, 1);
    let summary = c.summary().await.expect("summary");
    assert_eq!(summary["deletion_requests"], 2, "{summary}");
    assert_eq!(summary["sequence_gaps"], 0, "{summary}");
    assert_eq!(summary["events_duplicate"], 0, "{summary}");
    eprintln!("deletions: {deletions}");
    assert!(t.shutdown(DEADLINE).clean);
}
