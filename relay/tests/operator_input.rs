//! What the relay does with input it does not get from a device: the app registry the
//! backend lists, and the shard-map file an operator writes. The real `tern-relay`
//! binary against the stub in this process (whose `/v1/apps` answer the tests set);
//! verdicts from replies, the admin API and counters.

use std::path::Path;
use std::time::{Duration, Instant};

use tern_protocol::{
    IngestOutcome, Message, NodeState, RelayId, RelayNode, ShardMap, ShardMapRequest,
};
use tern_server_stub::{Faults, RegistryEntry, Scope};
use tern_testkit::outcome::{accepted, unauthorized};
use tern_testkit::relay::AdminClient;
use tern_testkit::{auth, batch, metrics, wait_for, Backend, Device, RelayProc, DEADLINE};

/// Longer than [`DEADLINE`]: a refresh every second on a loaded machine.
const SLOW: Duration = Duration::from_secs(60);

/// The demo `shop` app as the apps file lists it (two keys).
fn shop() -> RegistryEntry {
    entry("shop", &["shop-key", "shop-key-rotated"])
}

fn entry(app: &str, keys: &[&str]) -> RegistryEntry {
    RegistryEntry {
        app_id: app.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
    }
}

async fn admin_get(relay: &RelayProc, path: &str) -> serde_json::Value {
    AdminClient::for_proc(relay, "test-operator")
        .get(path)
        .await
}

async fn admin_post(relay: &RelayProc, path: &str) -> (u16, serde_json::Value) {
    AdminClient::for_proc(relay, "test-operator")
        .post(path)
        .await
}

async fn metrics(relay: &RelayProc) -> String {
    relay.metrics_text().await
}

/// Polls the admin API until `check` holds on `path`'s JSON, within `limit`.
async fn wait_admin(
    relay: &RelayProc,
    path: &str,
    what: &str,
    limit: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(what, limit, || async {
        let v = admin_get(relay, path).await;
        if check(&v) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await
}

/// Sends until the outcome satisfies `ok`, within `limit` (a registry change reaches
/// the relay at its next refresh).
async fn wait_outcome(
    device: &Device,
    key: &str,
    what: &str,
    limit: Duration,
    ok: impl Fn(&IngestOutcome) -> bool,
) {
    wait_for(what, limit, || async {
        let o = device.send("demo", key, batch("demo", 1)).await;
        if ok(&o) {
            Ok(())
        } else {
            Err(format!("{o:?}"))
        }
    })
    .await
}

async fn start_relay(backend: &Backend, dir: &Path, env: &[(&str, &str)]) -> RelayProc {
    let mut all = vec![("TERN_RELAY_REGISTRY_REFRESH_S", "1")];
    all.extend_from_slice(env);
    let relay = RelayProc::start(&backend.url, dir, &[], &all);
    relay.wait_ready().await;
    relay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_registry_is_held_until_an_operator_accepts_it() {
    let backend = Backend::start(&tern_testkit::demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(
        &backend,
        dir.path(),
        &[("TERN_RELAY_REGISTRY_KEY_GRACE_S", "0")],
    )
    .await;
    let device = Device::connect(&relay.ca_pem, relay.quic).await;
    assert!(accepted(
        &device.send("demo", "demo-key", batch("demo", 1)).await
    ));
    let (code, body) = admin_post(&relay, "/admin/v1/registry/accept").await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("nothing_pending"))
    );

    // The backend answers an empty list: the relay holds it, the keys stay valid.
    backend.stub.set_registry(Some(vec![]));
    let st = wait_admin(
        &relay,
        "/admin/v1/registry",
        "the empty list held",
        SLOW,
        |v| v["pending"]["reason"] == "the list is empty",
    )
    .await;
    assert_eq!(st["pending"]["apps_removed_count"], 2, "{st}");
    assert_eq!(st["pending"]["keys_removed"], 3, "{st}");
    assert_eq!(st["keys_held"], 3, "{st}");
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        outcomes.push(device.send("demo", "demo-key", batch("demo", 5)).await);
    }
    assert_eq!(
        outcomes.iter().filter(|o| accepted(o)).count(),
        20,
        "{outcomes:?}"
    );
    // Every accepted batch is at the backend (accepted means forwarded or spooled).
    let start = Instant::now();
    let s = loop {
        let s = backend.summary().await;
        if s["events_unique"] == 101 || start.elapsed() > DEADLINE {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s["events_unique"], 101, "{s}");
    let status = admin_get(&relay, "/admin/v1/status").await;
    assert_eq!(status["registry"]["pending"]["reason"], "the list is empty");
    let m = metrics(&relay).await;
    assert!(
        metrics::sum(
            &m,
            "tern_relay_registry_refresh_total",
            &["result=\"suspicious\""]
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(metrics::total(&m, "tern_relay_registry_suspicious"), 1.0);

    // The operator accepts it: with no grace period the keys are gone at once.
    let (code, body) = admin_post(&relay, "/admin/v1/registry/accept").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["keys_retiring"].as_u64(), body["key_grace_s"].as_u64()),
        (Some(3), Some(0))
    );
    assert!(unauthorized(
        &device.send("demo", "demo-key", batch("demo", 1)).await
    ));
    let audit = admin_get(&relay, "/admin/v1/audit").await;
    let last = audit.as_array().unwrap().last().unwrap();
    assert_eq!(last["action"], "registry.accept", "{audit}");
    assert_eq!(last["operator"], "test-operator");
    assert_eq!(last["before"]["held"]["reason"], "the list is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_registry_refresh_times_out_and_a_rotated_key_is_learned() {
    let backend = Backend::start(&tern_testkit::demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(
        &backend,
        dir.path(),
        &[
            ("TERN_RELAY_REGISTRY_TIMEOUT_MS", "2000"),
            ("TERN_RELAY_REGISTRY_CONNECT_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let device = Device::connect(&relay.ca_pem, relay.quic).await;
    assert!(accepted(
        &device.send("demo", "demo-key", batch("demo", 1)).await
    ));
    // `GET /v1/apps` stops answering (an hour per request).
    backend.stub.set_faults(Faults {
        latency_ms: 3_600_000,
        scope: vec![Scope::Registry],
        ..Faults::default()
    });
    let st = wait_admin(
        &relay,
        "/admin/v1/registry",
        "a timed-out refresh",
        SLOW,
        |v| v["counts"]["timed_out"].as_u64() >= Some(1),
    )
    .await;
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("no complete answer"),
        "{st}"
    );
    // Meanwhile the backend rotates demo's key (overlap list), and answers again.
    backend.stub.set_registry(Some(vec![
        entry("demo", &["demo-key", "demo-key-2"]),
        shop(),
    ]));
    backend.stub.set_faults(Faults::default());
    wait_outcome(&device, "demo-key-2", "the new key", SLOW, accepted).await;
    // The old key leaves the list: valid for the grace period (24 h by default).
    backend
        .stub
        .set_registry(Some(vec![entry("demo", &["demo-key-2"]), shop()]));
    let st = wait_admin(
        &relay,
        "/admin/v1/registry",
        "the old key retiring",
        SLOW,
        |v| v["keys_retiring"] == 1,
    )
    .await;
    assert!(
        st["pending"].is_null(),
        "a rotation with overlap is not suspicious: {st}"
    );
    assert!(st["retiring"]["demo"].as_u64().is_some(), "{st}");
    assert!(accepted(
        &device.send("demo", "demo-key", batch("demo", 1)).await
    ));
    assert!(accepted(
        &device.send("demo", "demo-key-2", batch("demo", 1)).await
    ));
    assert!(unauthorized(
        &device.send("demo", "never-a-key", batch("demo", 1)).await
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_left_the_registry_stops_working_after_its_grace_period() {
    let backend = Backend::start(&tern_testkit::demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(
        &backend,
        dir.path(),
        &[("TERN_RELAY_REGISTRY_KEY_GRACE_S", "3")],
    )
    .await;
    let device = Device::connect(&relay.ca_pem, relay.quic).await;
    backend.stub.set_registry(Some(vec![
        entry("demo", &["demo-key", "demo-key-2"]),
        shop(),
    ]));
    wait_outcome(&device, "demo-key-2", "the new key", SLOW, accepted).await;
    backend
        .stub
        .set_registry(Some(vec![entry("demo", &["demo-key-2"]), shop()]));
    wait_admin(
        &relay,
        "/admin/v1/registry",
        "the old key retiring",
        SLOW,
        |v| v["keys_retiring"] == 1,
    )
    .await;
    wait_outcome(
        &device,
        "demo-key",
        "the grace period to end",
        SLOW,
        unauthorized,
    )
    .await;
    let st = wait_admin(&relay, "/admin/v1/registry", "the key expired", SLOW, |v| {
        v["counts"]["keys_expired"] == 1
    })
    .await;
    assert_eq!(st["keys_retiring"], 0, "{st}");
    assert!(accepted(
        &device.send("demo", "demo-key-2", batch("demo", 1)).await
    ));
}

// ---- the shard-map file ----------------------------------------------------------

fn node(id: &str, port: u16) -> RelayNode {
    RelayNode {
        id: RelayId::new(id),
        quic_addr: format!("127.0.0.1:{port}"),
        https_url: format!("https://127.0.0.1:{}", port + 1),
        weight: 1,
        state: NodeState::Active,
    }
}

fn good_map(version: u64) -> ShardMap {
    ShardMap {
        version,
        nodes: vec![node("relay-admin", 4433), node("relay-b", 4435)],
    }
}

/// Writes `text` to `path` atomically with a new modification time.
fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn json(map: &ShardMap) -> String {
    serde_json::to_string_pretty(map).unwrap()
}

/// The version a device is told (every reply carries it) and the map it can fetch.
async fn served(device: &Device) -> (u64, Option<ShardMap>) {
    match device
        .roundtrip(&Message::ShardMapRequest(ShardMapRequest {
            auth: auth("demo", "demo-key"),
            known_version: 0,
        }))
        .await
    {
        Message::ShardMapReply(r) => (r.shard_map_version, r.map),
        other => panic!("expected a ShardMapReply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_shard_map_file_is_refused_with_its_reason_and_the_served_map_stays() {
    let backend = Backend::start(&tern_testkit::demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shard_map.json");
    write_file(&file, &json(&good_map(1)));
    let relay = RelayProc::start(
        &backend.url,
        dir.path(),
        &["--shard-map", file.to_str().unwrap()],
        &[],
    );
    relay.wait_ready().await;
    let device = Device::connect(&relay.ca_pem, relay.quic).await;
    assert_eq!(served(&device).await, (1, Some(good_map(1))));

    let with = |f: &dyn Fn(&mut ShardMap)| {
        let mut m = good_map(2);
        f(&mut m);
        json(&m)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("nodes", with(&|m| m.nodes.clear()), "no relay"),
        (
            "state",
            with(&|m| m.nodes[1].state = NodeState::from("actve")),
            "\"actve\"",
        ),
        ("weight", with(&|m| m.nodes[0].weight = 0), "weight 0"),
        (
            "quic_addr",
            with(&|m| m.nodes[1].quic_addr = "relay-b".into()),
            "no port",
        ),
        (
            "https_url",
            with(&|m| m.nodes[0].https_url = "http://127.0.0.1:4434".into()),
            "https://",
        ),
        (
            "duplicate_id",
            with(&|m| m.nodes[1].id = RelayId::new("relay-admin")),
            "nodes[1].id",
        ),
        (
            "version",
            with(&|m| m.version = u64::MAX),
            "18446744073709551615",
        ),
        (
            "no_active_node",
            with(&|m| {
                for n in &mut m.nodes {
                    n.state = NodeState::Draining;
                }
            }),
            "no relay is active",
        ),
        (
            "parse",
            json(&good_map(2)).replacen("\"weight\"", "\"wieght\"", 1),
            "unknown field `wieght`",
        ),
        ("parse", "{\"version\": 2, \"nodes\": [".into(), "EOF"),
        (
            "not_newer",
            json(&ShardMap {
                version: 1,
                nodes: vec![node("relay-admin", 4433)],
            }),
            "not newer",
        ),
    ];
    for (i, (kind, text, says)) in cases.iter().enumerate() {
        write_file(&file, text);
        let want = i as u64 + 1;
        let st = wait_admin(&relay, "/admin/v1/shard-map", kind, SLOW, |v| {
            v["refused"].as_u64() >= Some(want)
        })
        .await;
        let last = &st["last_refusal"];
        assert_eq!(last["kind"], *kind, "{st}");
        assert!(
            last["reason"].as_str().unwrap().contains(says),
            "{kind}: {st}"
        );
        assert_eq!(st["version"], 1, "{kind}: the served map stays");
        assert_eq!(served(&device).await, (1, Some(good_map(1))), "{kind}");
    }
    let m = metrics(&relay).await;
    assert_eq!(
        metrics::total(&m, "tern_relay_shard_map_refused_total"),
        cases.len() as f64,
        "{m}"
    );
    assert!(
        m.contains("tern_relay_shard_map_refused_total{reason=\"version\"} 1"),
        "{m}"
    );
    // A good newer map is installed.
    write_file(&file, &json(&good_map(3)));
    wait_admin(&relay, "/admin/v1/shard-map", "v3", SLOW, |v| {
        v["version"] == 3
    })
    .await;
    assert_eq!(served(&device).await, (3, Some(good_map(3))));
    let status = admin_get(&relay, "/admin/v1/status").await;
    assert_eq!(status["shard_map"]["installed"], 1, "{status}");
    assert_eq!(status["shard_map"]["refused"], cases.len(), "{status}");
}

#[test]
fn a_relay_does_not_start_with_an_invalid_shard_map_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shard_map.json");
    let mut m = good_map(u64::MAX);
    m.nodes[1].weight = 3;
    write_file(&file, &json(&m));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern-relay"))
        .current_dir(dir.path())
        .args([
            "--dev",
            "--quic-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .arg("--shard-map")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no ready line");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shard_map:") && err.contains("version: 18446744073709551615 is above"),
        "{err}"
    );
}
