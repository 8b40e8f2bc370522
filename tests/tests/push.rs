//! Push tokens and push events end to end with real processes (`tern-server-stub` and
//! three `tern-relay` processes on loopback, real `tern-sdk` devices in this process),
//! protocol §8.3:
//!
//! * device A sets an APNs token anonymously, identifies alice (the token moves to her),
//!   reports pushes of a campaign, rotates the token, restarts the SDK on the same
//!   directory and sets the same token again (nothing new), logs out and aliases carol
//!   (the token moves to carol);
//! * device B, signed in as bob with an FCM token delivered, opts out: its cleared token
//!   reaches the stub although the device is opted out;
//! * device C sets a token and deletes its local data: the cleared token comes from the
//!   device's new id and still removes the token.
//!
//! The stub's push view (`/verify/apps/{app}/push`) must then hold exactly A's newest
//! token under carol, the campaign's counts, and the two clearings; no sequence gap, no
//! duplicate.

use std::time::Duration;

use serde_json::{json, Value as Json};
use tern_fleet::cluster::{Cluster, ClusterConfig};
use tern_protocol::{PushEnvironment, PushProvider};
use tern_sdk::Tern;
use tern_testkit::bins::Binaries;
use tern_testkit::wait::{until, DEADLINE};
use tern_tests::device;

const TOKEN_A1: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const TOKEN_A2: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn start(dir: &std::path::Path, c: &Cluster) -> Tern {
    device::start(device::builder(
        dir,
        "demo-key",
        c.shard_map.clone(),
        &c.ca_pem,
    ))
}

fn apns(t: &Tern, token: &str) {
    t.set_push_token(PushProvider::Apns, Some(PushEnvironment::Sandbox), token)
        .expect("set_push_token");
}

/// Waits until `ok` holds for the stub's push view, returns it.
async fn push_view(c: &Cluster, what: &str, ok: impl Fn(&Json) -> bool) -> Json {
    let mut last = Json::Null;
    let reached = tokio::time::timeout(DEADLINE, async {
        loop {
            last = c
                .get_json("/verify/apps/demo/push")
                .await
                .expect("the stub's push view");
            if ok(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "{what}: the stub holds {last}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_tokens_follow_users_and_clearings_reach_the_stub() {
    let bins = tokio::task::spawn_blocking(Binaries::build_for_tests)
        .await
        .unwrap()
        .expect("building the binaries");
    let c = Cluster::start(bins, ClusterConfig::default())
        .await
        .expect("starting the cluster");

    // Device B: bob's FCM token delivered, then an opt-out.
    let dir_b = tempfile::tempdir().unwrap();
    let b = start(dir_b.path(), &c);
    b.alias("bob").expect("alias");
    b.set_push_token(PushProvider::Fcm, None, "fcm-bob:APA91b_x")
        .expect("set_push_token");
    assert!(b.flush_and_wait(DEADLINE), "bob's token not delivered");
    push_view(&c, "bob's token", |v| {
        v["users"]["bob"] == json!(["fcm-bob:APA91b_x"])
    })
    .await;
    b.opt_out(true).expect("opt_out");
    push_view(&c, "bob's token cleared while opted out", |v| {
        v["users"].get("bob").is_none()
    })
    .await;
    assert!(b.is_opted_out());

    // Device C: a token, then delete_local_data.
    let dir_c = tempfile::tempdir().unwrap();
    let d = start(dir_c.path(), &c);
    until("the store", DEADLINE, || d.stats().device_id.is_some()).await;
    let old_c = d.stats().device_id.expect("device id").to_string();
    d.set_push_token(PushProvider::Fcm, None, "fcm-c:1")
        .expect("set_push_token");
    assert!(d.flush_and_wait(DEADLINE), "C's token not delivered");
    push_view(&c, "C's token", |v| {
        v["devices"][&old_c]["token"] == "fcm-c:1"
    })
    .await;
    d.delete_local_data().expect("delete_local_data");
    assert!(d.flush_and_wait(DEADLINE), "C's clearing not delivered");

    // Device A.
    let dir_a = tempfile::tempdir().unwrap();
    let a = start(dir_a.path(), &c);
    until("the store", DEADLINE, || a.stats().device_id.is_some()).await;
    let device_a = a.stats().device_id.expect("device id").to_string();
    apns(&a, TOKEN_A1);
    a.identify(Some("alice")).expect("identify");
    a.push_received("spring-sale").expect("push_received");
    a.push_received("spring-sale").expect("push_received");
    a.push_opened("spring-sale", Some("buy"))
        .expect("push_opened");
    a.push_opened("spring-sale", None).expect("push_opened");
    apns(&a, TOKEN_A2);
    assert!(a.flush_and_wait(DEADLINE), "A's first run not delivered");
    push_view(&c, "alice's newest token", |v| {
        v["users"]["alice"] == json!([TOKEN_A2])
    })
    .await;
    assert!(a.shutdown(DEADLINE).clean);
    drop(a);
    let a = start(dir_a.path(), &c);
    until("the store", DEADLINE, || a.push_token().is_some()).await;
    apns(&a, TOKEN_A2); // unchanged: nothing recorded
    a.reset().expect("reset");
    a.alias("carol").expect("alias");
    assert!(a.flush_and_wait(DEADLINE), "A's second run not delivered");

    let view = push_view(&c, "the final view", |v| {
        v["users"] == json!({"carol": [TOKEN_A2]}) && v["tokens_cleared"] == 2
    })
    .await;
    let devices = view["devices"].as_object().expect("devices");
    assert_eq!(devices.len(), 1, "{view}");
    assert_eq!(devices[&device_a]["token"], TOKEN_A2, "{view}");
    assert_eq!(devices[&device_a]["provider"], "apns", "{view}");
    assert_eq!(devices[&device_a]["environment"], "sandbox", "{view}");
    assert_eq!(
        view["campaigns"],
        json!({"spring-sale": {"received": 2, "opened": 2, "actions": {"": 1, "buy": 1}}}),
        "{view}"
    );
    // Token events: B 1, C 1, A: anonymous, alice, rotated, anonymous after the reset,
    // carol — and none for the unchanged token after the restart.
    assert_eq!(view["token_events"], 7, "{view}");
    assert_eq!(view["token_events_stale"], 0, "{view}");
    let summary = c.summary().await.expect("summary");
    assert_eq!(summary["sequence_gaps"], 0, "{summary}");
    assert_eq!(summary["events_duplicate"], 0, "{summary}");
    eprintln!("push: {view}");
    for t in [a, b, d] {
        assert!(t.shutdown(DEADLINE).clean);
    }
}
