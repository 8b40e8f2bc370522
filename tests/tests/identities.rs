//! Alias and reset end to end with real processes (`tern-server-stub` and three
//! `tern-relay` processes on loopback, a real `tern-sdk` device in this process): a
//! device records anonymously, aliases a user and records, restarts the SDK on the same
//! directory and records, resets (logout) and records again. The stub's identities view
//! (`/verify/apps/{app}/identities`) must show the alias, each of the three identities
//! with exactly the events recorded under it (none lost, none under another identity),
//! the user's history merged with the aliased anonymous one, and no sequence gap.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tern_fleet::cluster::{Cluster, ClusterConfig};
use tern_sdk::{Properties, Tern};
use tern_testkit::bins::Binaries;
use tern_testkit::wait::{until, DEADLINE};
use tern_tests::device;

fn start(dir: &std::path::Path, c: &Cluster) -> Tern {
    device::start(device::builder(
        dir,
        "demo-key",
        c.shard_map.clone(),
        &c.ca_pem,
    ))
}

fn record(t: &Tern, name: &str, n: usize) {
    for _ in 0..n {
        t.track(name, Properties::new()).expect("track");
    }
}

/// Waits until the stub's custom events per identity are `want`, returns the view.
async fn identities_reaching(c: &Cluster, want: &BTreeMap<String, u64>) -> Json {
    let mut last = Json::Null;
    let reached = tokio::time::timeout(DEADLINE, async {
        loop {
            last = c
                .get_json("/verify/apps/demo/identities")
                .await
                .expect("the stub's identities");
            let custom: BTreeMap<String, u64> = last["kinds"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(id, kinds)| Some((id.clone(), kinds["custom"].as_u64()?)))
                .collect();
            if custom == *want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "expected custom events {want:?}, the stub holds {last}"
    );
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_and_reset_reach_the_stub_joined_and_unsplit() {
    let bins = tokio::task::spawn_blocking(Binaries::build_for_tests)
        .await
        .unwrap()
        .expect("building the binaries");
    let c = Cluster::start(bins, ClusterConfig::default())
        .await
        .expect("starting the cluster");
    let dir = tempfile::tempdir().unwrap();

    // Anonymous, then alias (login) and identified.
    let t = start(dir.path(), &c);
    until("the store", DEADLINE, || t.anonymous_id().is_some()).await;
    let a0 = t.anonymous_id().expect("anonymous id");
    let device = t.stats().device_id.expect("device id").to_string();
    record(&t, "browse", 5);
    t.alias("alice").expect("alias");
    record(&t, "buy", 4);
    assert!(t.flush_and_wait(DEADLINE), "first run not delivered");
    assert!(t.shutdown(DEADLINE).clean);
    drop(t);

    // An SDK restart on the same directory: still alice, same anonymous id.
    let t = start(dir.path(), &c);
    until("the store", DEADLINE, || t.anonymous_id().is_some()).await;
    assert_eq!(
        t.anonymous_id(),
        Some(a0),
        "the restart changed the anonymous id"
    );
    record(&t, "buy", 3);
    // Logout, then anonymous again under a new anonymous id.
    t.reset().expect("reset");
    record(&t, "browse", 6);
    assert!(t.wait_applied(DEADLINE));
    let a1 = t.anonymous_id().expect("anonymous id");
    assert_ne!(a1, a0, "reset kept the anonymous id");
    assert_eq!(
        t.stats().device_id.map(|d| d.to_string()),
        Some(device.clone())
    );
    assert!(t.flush_and_wait(DEADLINE), "second run not delivered");

    let want: BTreeMap<String, u64> = [
        (format!("anonymous:{a0}"), 5),
        ("user:alice".to_owned(), 7),
        (format!("anonymous:{a1}"), 6),
    ]
    .into();
    let view = identities_reaching(&c, &want).await;
    assert_eq!(
        view["aliases"],
        json!([{"anonymous_id": a0.to_string(), "user_id": "alice",
                "device_id": device, "seen": 1}]),
        "{view}"
    );
    assert_eq!(view["kinds"]["user:alice"]["alias"], 1, "{view}");
    // Every event of the device is under exactly one of the three identities.
    let identities: Vec<&String> = view["events"].as_object().expect("events").keys().collect();
    assert_eq!(identities.len(), 3, "{view}");
    let total: u64 = view["events"]
        .as_object()
        .expect("events")
        .values()
        .filter_map(Json::as_u64)
        .sum();
    let app = c.get_json("/verify/apps/demo").await.expect("app view");
    assert_eq!(app["unique_events"].as_u64(), Some(total), "{app}");
    // The merged history: alice's own events plus the aliased anonymous ones.
    let merged = view["events"]["user:alice"].as_u64().unwrap_or(0)
        + view["events"][format!("anonymous:{a0}")]
            .as_u64()
            .unwrap_or(0);
    assert_eq!(view["merged"]["alice"].as_u64(), Some(merged), "{view}");
    // The logged-out anonymous history is nobody's.
    assert_eq!(
        view["merged"].as_object().map(|m| m.len()),
        Some(1),
        "{view}"
    );
    let summary = c.summary().await.expect("summary");
    assert_eq!(summary["sequence_gaps"], 0, "{summary}");
    assert_eq!(summary["events_duplicate"], 0, "{summary}");
    eprintln!("identities: {view}");
    assert!(t.shutdown(DEADLINE).clean);
}
