//! Operator input and bad luck against real processes: `tern-server-stub` and three
//! `tern-relay` processes on loopback, devices that are real `tern-sdk` instances in this
//! process. The backend's app registry goes empty, hangs or rotates keys; the shard-map
//! file turns empty, absurd or useless. Every verdict comes from the stub's counters and
//! the devices' own stats: no event recorded is lost, and no device is stranded.
//!
//! The last scenario runs in-process (`tern_tests::stack`) with a relay that serves an
//! unvalidated map, as a relay of an older version would.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};

use serde_json::Value as Json;
use tern_fleet::cluster::{Cluster, ClusterConfig};
use tern_protocol::{NodeState, RelayNode, ShardMap, MAX_SHARD_MAP_VERSION};
use tern_sdk::route::RouterConfig;
use tern_sdk::upload::UploadConfig;
use tern_sdk::{RefusalPolicy, RetryPolicy, Tern};
use tern_testkit::bins::Binaries;
use tern_testkit::wait::until;
use tern_tests::device;

const DELIVER: Duration = Duration::from_secs(180);

async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

async fn cluster() -> Cluster {
    let bins = tokio::task::spawn_blocking(Binaries::build_for_tests)
        .await
        .unwrap()
        .expect("building the binaries");
    let config = ClusterConfig {
        relay_env: vec![
            ("TERN_RELAY_REGISTRY_REFRESH_S".into(), "1".into()),
            ("TERN_RELAY_REGISTRY_TIMEOUT_MS".into(), "2000".into()),
        ],
        ..ClusterConfig::default()
    };
    Cluster::start(bins, config)
        .await
        .expect("starting the cluster")
}

/// A device of app `demo` with `key`, configured with `seeds`; short waits so a test
/// sees retries, refusals and fallbacks within seconds.
fn device(dir: &Path, key: &str, seeds: &ShardMap, ca: &str) -> Tern {
    device::start(
        device::builder(dir, key, seeds.clone(), ca)
            .flush_policy(device::flush(10))
            .upload(
                UploadConfig::default()
                    .with_transport(device::transport(
                        ca,
                        Duration::from_millis(1000),
                        Duration::from_secs(5),
                    ))
                    .with_router(
                        RouterConfig::default()
                            .with_down_backoff(Duration::from_millis(200), Duration::from_secs(2))
                            .with_seed_fallback(Duration::from_secs(3), Duration::from_secs(600)),
                    )
                    .with_retry(
                        RetryPolicy::default()
                            .with_base(Duration::from_millis(200))
                            .with_cap(Duration::from_secs(2)),
                    )
                    .with_refusal(RefusalPolicy::new(
                        Duration::from_millis(500),
                        Duration::from_secs(2),
                    )),
            ),
    )
}

fn track(tern: &Tern, n: usize) {
    device::track(tern, n);
    tern.flush();
}

fn n(s: &Json, k: &str) -> u64 {
    s[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {s}"))
}

/// Waits for `total` events at the stub; asserts exactly once.
async fn assert_delivered(c: &Cluster, total: u64, what: &str) -> Json {
    let s = c.wait_events(total, DELIVER).await.unwrap();
    eprintln!("{what}: stub {s}");
    assert_eq!(n(&s, "events_unique"), total, "{what}: lost events: {s}");
    assert_eq!(n(&s, "sequence_gaps"), 0, "{what}: {s}");
    assert_eq!(n(&s, "batches_rejected"), 0, "{what}: {s}");
    s
}

/// Waits until every relay's metric (summed over label sets containing `labels`)
/// reaches `at_least`.
async fn wait_relays(c: &Cluster, name: &str, labels: &[&str], at_least: f64) {
    let start = Instant::now();
    for i in 0..c.relays.len() {
        loop {
            let v = c.relay_metric(i, name, labels).await;
            if v >= at_least {
                break;
            }
            assert!(
                start.elapsed() < DELIVER,
                "relay {i}: {name}{labels:?} = {v}, waiting for {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn write_map_file(c: &Cluster, text: &str) {
    let file = c.dir().join("shard_map.json");
    let tmp = c.dir().join("shard_map.json.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
}

fn map_with(c: &Cluster, version: u64) -> ShardMap {
    ShardMap {
        version,
        ..c.shard_map.clone()
    }
}

/// The cluster's relays at addresses where nothing listens.
fn dead_map(c: &Cluster, version: u64) -> ShardMap {
    let nodes = c
        .relays
        .iter()
        .map(|r| {
            let port = tern_testkit::proc::free_tcp_port().unwrap();
            RelayNode {
                id: r.id.clone(),
                quic_addr: format!("127.0.0.1:{port}"),
                https_url: format!("https://127.0.0.1:{port}"),
                weight: 1,
                state: NodeState::Active,
            }
        })
        .collect();
    ShardMap { version, nodes }
}

fn persist_map(dir: &Path, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("shard_map.json"), text).unwrap();
}

// ---- the app registry --------------------------------------------------------------

/// Finding: the SDK dropped every batch answered `rejected{unauthorized}`. A device
/// shipped with a key the backend does not list yet keeps its events, counts the
/// refusals, and delivers everything once the key is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_refused_as_unauthorized_keeps_its_events_until_its_key_is_known() {
    let _serial = serial().await;
    let c = cluster().await;
    let work = tempfile::tempdir().unwrap();
    let tern = device(work.path(), "demo-key-next", &c.shard_map, &c.ca_pem);
    track(&tern, 100);
    until("refusals", DELIVER, || tern.stats().auth_failures >= 2).await;
    let st = tern.stats();
    assert_eq!(st.dropped_rejected, 0, "{st:?}");
    assert_eq!(st.queued_events, 100, "{st:?}");
    assert!(
        st.last_refusal
            .as_deref()
            .unwrap_or("")
            .contains("unauthorized"),
        "{st:?}"
    );
    assert_eq!(n(&c.summary().await.unwrap(), "events_unique"), 0);
    // The backend learns the key (next to the old one).
    c.put_json(
        "/admin/registry",
        &serde_json::json!([
            {"app_id": "demo", "keys": ["demo-key", "demo-key-next"]},
            {"app_id": "shop", "keys": ["shop-key"]},
        ]),
    )
    .await
    .unwrap();
    assert_delivered(&c, 100, "unauthorized, then known").await;
    let st = tern.stats();
    assert_eq!(
        (st.dropped_rejected, st.upload.batches_rejected),
        (0, 0),
        "{st:?}"
    );
    // Refusals counted in `auth_failures` include config requests; at least one was a
    // batch.
    assert!(st.upload.batches_refused >= 1, "{st:?}");
    assert!(st.auth_failures >= 2, "{st:?}");
    tern.shutdown(Duration::from_secs(5));
}

/// Finding: 100 of 100 events dropped after the backend answered `[]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_registry_from_the_backend_costs_no_events() {
    let _serial = serial().await;
    let c = cluster().await;
    c.put_json("/admin/registry", &serde_json::json!([]))
        .await
        .unwrap();
    // Every relay has fetched the empty list and held it.
    wait_relays(
        &c,
        "tern_relay_registry_refresh_total",
        &["result=\"suspicious\""],
        1.0,
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let tern = device(work.path(), "demo-key", &c.shard_map, &c.ca_pem);
    track(&tern, 100);
    assert_delivered(&c, 100, "empty registry").await;
    let st = tern.stats();
    assert_eq!((st.dropped_rejected, st.auth_failures), (0, 0), "{st:?}");
    tern.shutdown(Duration::from_secs(5));
}

/// Finding: 0 of 50 stored after a hung refresh followed by a key rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_registry_then_a_key_rotation_loses_nothing() {
    let _serial = serial().await;
    let c = cluster().await;
    c.put_json(
        "/admin/faults",
        &serde_json::json!({"latency_ms": 3_600_000, "scope": ["registry"]}),
    )
    .await
    .unwrap();
    wait_relays(
        &c,
        "tern_relay_registry_refresh_total",
        &["result=\"timeout\""],
        1.0,
    )
    .await;
    // While the relays' refreshes hang, the backend rotates demo's key outright.
    c.put_json(
        "/admin/registry",
        &serde_json::json!([
            {"app_id": "demo", "keys": ["demo-key-2"]},
            {"app_id": "shop", "keys": ["shop-key"]},
        ]),
    )
    .await
    .unwrap();
    c.put_json("/admin/faults", &serde_json::json!({}))
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let new = device(
        &work.path().join("new"),
        "demo-key-2",
        &c.shard_map,
        &c.ca_pem,
    );
    let old = device(
        &work.path().join("old"),
        "demo-key",
        &c.shard_map,
        &c.ca_pem,
    );
    track(&new, 50);
    track(&old, 50);
    assert_delivered(&c, 100, "hung registry, then a rotation").await;
    for t in [&new, &old] {
        assert_eq!(t.stats().dropped_rejected, 0);
        t.shutdown(Duration::from_secs(5));
    }
}

// ---- the shard map -----------------------------------------------------------------

/// Finding: after an empty v2, a fixed v3 never reached a restarted device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_v2_then_a_fixed_v3_reaches_a_restarted_device() {
    let _serial = serial().await;
    let c = cluster().await;
    let work = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (work.path().join("a"), work.path().join("b"));
    let a = device(&dir_a, "demo-key", &c.shard_map, &c.ca_pem);
    track(&a, 20);
    assert_delivered(&c, 20, "v1").await;
    let empty_v2 = ShardMap {
        version: 2,
        nodes: vec![],
    };
    write_map_file(&c, &serde_json::to_string(&empty_v2).unwrap());
    wait_relays(
        &c,
        "tern_relay_shard_map_refused_total",
        &["reason=\"nodes\""],
        1.0,
    )
    .await;
    for i in 0..c.relays.len() {
        assert_eq!(
            c.relay_metric(i, "tern_relay_shard_map_version", &[]).await,
            0.0
        );
    }
    // A device that persisted the empty v2 (an older relay served it, an older SDK kept
    // it) ignores it at start and delivers through its configured relays.
    persist_map(&dir_b, &serde_json::to_string(&empty_v2).unwrap());
    let b = device(&dir_b, "demo-key", &c.shard_map, &c.ca_pem);
    track(&b, 20);
    assert_delivered(&c, 40, "a persisted empty v2").await;
    let st = b.stats();
    assert_eq!(st.upload.shard_map_version, 1, "{st:?}");
    assert!(st.upload.router.maps_refused >= 1, "{st:?}");
    // The fixed v3.
    write_map_file(&c, &serde_json::to_string(&map_with(&c, 3)).unwrap());
    wait_relays(&c, "tern_relay_shard_map_version", &[], 3.0).await;
    track(&a, 20);
    assert_delivered(&c, 60, "v3").await;
    until("device a on v3", DELIVER, || {
        a.stats().upload.shard_map_version == 3
    })
    .await;
    // Restarted, both devices deliver (a from its persisted v3, b learns it).
    a.shutdown(Duration::from_secs(5));
    b.shutdown(Duration::from_secs(5));
    drop((a, b));
    let a = device(&dir_a, "demo-key", &c.shard_map, &c.ca_pem);
    // The uploader reads the persisted map as it starts.
    until("a's uploader started", DELIVER, || {
        a.stats().upload.shard_map_version != 0
    })
    .await;
    assert_eq!(a.stats().upload.shard_map_version, 3, "persisted v3 used");
    let b = device(&dir_b, "demo-key", &c.shard_map, &c.ca_pem);
    track(&a, 20);
    track(&b, 20);
    assert_delivered(&c, 100, "restarted devices").await;
    until("device b on v3", DELIVER, || {
        b.stats().upload.shard_map_version == 3
    })
    .await;
    a.shutdown(Duration::from_secs(5));
    b.shutdown(Duration::from_secs(5));
}

/// Finding: after `u64::MAX`, no later map could ever replace it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_version_of_u64_max_is_refused_by_relays_and_devices() {
    let _serial = serial().await;
    let c = cluster().await;
    let max = map_with(&c, u64::MAX);
    write_map_file(&c, &serde_json::to_string(&max).unwrap());
    wait_relays(
        &c,
        "tern_relay_shard_map_refused_total",
        &["reason=\"version\""],
        1.0,
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    // A device holding the u64::MAX map from an older run refuses it.
    let dir_c = work.path().join("c");
    persist_map(&dir_c, &serde_json::to_string(&max).unwrap());
    let dev_c = device(&dir_c, "demo-key", &c.shard_map, &c.ca_pem);
    until("c's uploader started", DELIVER, || {
        dev_c.stats().upload.shard_map_version != 0
    })
    .await;
    assert_eq!(dev_c.stats().upload.shard_map_version, 1);
    // A device holding a valid map at the largest version, of relays that are gone:
    // it falls back to its configured relays and takes their (lower) map.
    let dir_d = work.path().join("d");
    persist_map(
        &dir_d,
        &serde_json::to_string(&dead_map(&c, MAX_SHARD_MAP_VERSION)).unwrap(),
    );
    let dev_d = device(&dir_d, "demo-key", &c.shard_map, &c.ca_pem);
    until("d's uploader started", DELIVER, || {
        dev_d.stats().upload.shard_map_version != 0
    })
    .await;
    assert_eq!(
        dev_d.stats().upload.shard_map_version,
        MAX_SHARD_MAP_VERSION
    );
    track(&dev_c, 20);
    track(&dev_d, 20);
    assert_delivered(&c, 40, "u64::MAX refused").await;
    // The next map, v3, reaches both.
    write_map_file(&c, &serde_json::to_string(&map_with(&c, 3)).unwrap());
    wait_relays(&c, "tern_relay_shard_map_version", &[], 3.0).await;
    track(&dev_c, 20);
    track(&dev_d, 20);
    assert_delivered(&c, 80, "v3 after u64::MAX").await;
    for (name, t) in [("c", &dev_c), ("d", &dev_d)] {
        until(name, DELIVER, || t.stats().upload.shard_map_version == 3).await;
    }
    let d = dev_d.stats().upload.router;
    assert!(d.seed_fallbacks >= 1, "{d:?}");
    assert!(!d.in_fallback, "{d:?}");
    dev_c.shutdown(Duration::from_secs(5));
    dev_d.shutdown(Duration::from_secs(5));
}

/// A valid map whose every address is wrong cannot strand a device: it falls back to
/// the relays it was configured with, delivers through them, and adopts the fixed map
/// when the relays serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_of_unreachable_relays_falls_back_to_the_configured_relays() {
    let _serial = serial().await;
    let c = cluster().await;
    write_map_file(&c, &serde_json::to_string(&dead_map(&c, 2)).unwrap());
    wait_relays(&c, "tern_relay_shard_map_version", &[], 2.0).await;
    let work = tempfile::tempdir().unwrap();
    let tern = device(work.path(), "demo-key", &c.shard_map, &c.ca_pem);
    track(&tern, 10);
    assert_delivered(&c, 10, "before the dead map is adopted").await;
    until("the dead v2 adopted", DELIVER, || {
        tern.stats().upload.shard_map_version == 2
    })
    .await;
    track(&tern, 50);
    assert_delivered(&c, 60, "through the configured relays").await;
    let st = tern.stats().upload.router;
    assert!(st.seed_fallbacks >= 1, "{st:?}");
    // The operator fixes the map: the device adopts it through a configured relay.
    write_map_file(&c, &serde_json::to_string(&map_with(&c, 3)).unwrap());
    wait_relays(&c, "tern_relay_shard_map_version", &[], 3.0).await;
    track(&tern, 20);
    assert_delivered(&c, 80, "after the fix").await;
    until("v3 adopted", DELIVER, || {
        let u = tern.stats().upload;
        u.shard_map_version == 3 && !u.router.in_fallback
    })
    .await;
    tern.shutdown(Duration::from_secs(5));
}

// ---- a relay serving what it should not ---------------------------------------------

/// Relays of this version never serve an invalid map; one of an older version might.
/// The device refuses each invalid map and keeps delivering with the one it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_serving_an_invalid_map_cannot_make_a_device_adopt_it() {
    let stack = tern_tests::stack::Stack::start(2).await;
    let work = tempfile::tempdir().unwrap();
    let tern = device(work.path(), "demo-key", &stack.shard_map(1), &stack.ca_pem);
    let bad_maps = {
        let mut zero = stack.shard_map(3);
        zero.nodes[0].weight = 0;
        zero.nodes[1].weight = 0;
        vec![
            ShardMap {
                version: 2,
                nodes: vec![],
            },
            zero,
        ]
    };
    let mut recorded = 0;
    for (i, bad) in bad_maps.into_iter().enumerate() {
        for r in &stack.relays {
            assert!(r
                .running
                .services()
                .shard_map
                .serve_unvalidated(bad.clone()));
        }
        track(&tern, 10);
        recorded += 10;
        let s = stack.backend.wait_events(recorded, DELIVER).await;
        assert_eq!(s["events_unique"], recorded, "{s}");
        until("the refusal", DELIVER, || {
            tern.stats().upload.router.maps_refused > i as u64
        })
        .await;
        assert_eq!(tern.stats().upload.shard_map_version, 1);
    }
    // A version above 2^53 - 1 is not even fetched: no valid map can have it.
    for r in &stack.relays {
        assert!(r
            .running
            .services()
            .shard_map
            .serve_unvalidated(stack.shard_map(u64::MAX)));
    }
    track(&tern, 10);
    recorded += 10;
    let s = stack.backend.wait_events(recorded, DELIVER).await;
    assert_eq!(s["events_unique"], recorded, "{s}");
    assert_eq!(tern.stats().upload.shard_map_version, 1);
    assert_eq!(tern.stats().upload.router.maps_refused, 2);
    assert_eq!(tern.stats().dropped_rejected, 0);
    tern.shutdown(Duration::from_secs(5));
    let saved = tern_sdk::upload::load_map(work.path());
    assert!(saved.is_none(), "nothing persisted: {saved:?}");
}
