//! Integration tests: each test spawns the real `tern-server-stub` binary on
//! `127.0.0.1:0` with a temporary data dir, reads its ready line, and talks HTTP to it.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use tern_protocol::{
    AppId, BatchId, CodecConfig, DeviceId, Event, EventBatch, EventBody, ForwardOutcome,
    ForwardRequest, Message, RejectReason, RelayId, SdkHealth, SdkInfo, UserId,
};

const DEMO_CONFIG: &str = include_str!("../demo/apps.toml");

/// A running stub process, killed on drop.
struct StubProc {
    child: Child,
    base: String,
    stderr: Arc<Mutex<String>>,
}

impl StubProc {
    fn start(data_dir: &Path, config: &Path) -> Result<StubProc> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern-server-stub"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning the stub")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        if line.is_empty() {
            let _ = child.wait();
            bail!("stub exited before ready: {}", stderr.lock().unwrap());
        }
        let ready: Json = serde_json::from_str(&line).context("ready line is JSON")?;
        assert_eq!(ready["event"], "ready", "{line}");
        let listen = ready["listen"].as_str().context("listen")?.to_owned();
        Ok(StubProc {
            child,
            base: format!("http://{listen}"),
            stderr,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL, no chance to clean up.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StubProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temp data dir plus a config file in it.
struct Env {
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Env {
    fn new(config: &str) -> Result<Env> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("apps.toml"), config)?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Env { dir, client })
    }
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("apps.toml")
    }
    fn write_config(&self, text: &str) -> Result<()> {
        Ok(std::fs::write(self.config_path(), text)?)
    }
    fn start(&self) -> Result<StubProc> {
        StubProc::start(&self.dir.path().join("data"), &self.config_path())
    }

    async fn get_json(&self, stub: &StubProc, path: &str) -> Result<Json> {
        let resp = self.client.get(stub.url(path)).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        if status != StatusCode::OK {
            bail!("GET {path}: {status} {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    async fn summary(&self, stub: &StubProc) -> Result<Json> {
        self.get_json(stub, "/verify/summary").await
    }

    async fn post_ingest(
        &self,
        stub: &StubProc,
        body: Vec<u8>,
    ) -> reqwest::Result<reqwest::Response> {
        self.client
            .post(stub.url("/v1/ingest"))
            .header("content-type", tern_protocol::FRAME_CONTENT_TYPE)
            .body(body)
            .send()
            .await
    }

    async fn ingest(
        &self,
        stub: &StubProc,
        batches: Vec<EventBatch>,
    ) -> Result<Vec<ForwardOutcome>> {
        let n = batches.len();
        let ids: Vec<_> = batches.iter().map(|b| b.batch_id).collect();
        let resp = self.post_ingest(stub, frame(batches)).await?;
        let status = resp.status();
        assert_eq!(
            resp.headers()["content-type"],
            tern_protocol::FRAME_CONTENT_TYPE
        );
        let body = resp.bytes().await?;
        assert_eq!(status, StatusCode::OK);
        let Message::ForwardReply(reply) = Message::from_bytes(&body, &CodecConfig::backend())?
        else {
            bail!("not a ForwardReply");
        };
        assert_eq!(reply.results.len(), n);
        for (r, id) in reply.results.iter().zip(ids) {
            assert_eq!(r.batch_id, id, "results are in request order");
        }
        Ok(reply.results.into_iter().map(|r| r.outcome).collect())
    }

    async fn put_faults(&self, stub: &StubProc, faults: Json) -> Result<()> {
        let resp = self
            .client
            .put(stub.url("/admin/faults"))
            .json(&faults)
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await?);
        Ok(())
    }
}

fn event(seq: u64, user: Option<&str>, name: &str) -> Event {
    Event {
        seq,
        ts_ms: 1_700_000_000_000 + seq as i64,
        user_id: user.map(UserId::from),
        session_id: None,
        body: EventBody::Custom {
            name: name.into(),
            props: Default::default(),
        },
    }
}

fn purchase(seq: u64, user: &str) -> Event {
    Event {
        seq,
        ts_ms: 1_700_000_000_000,
        user_id: Some(UserId::from(user)),
        session_id: None,
        body: EventBody::Purchase {
            product_id: "sku-1".into(),
            amount_micros: 1_990_000,
            currency: "USD".into(),
            quantity: 1,
            props: Default::default(),
        },
    }
}

fn batch_of(app: &str, device: DeviceId, events: Vec<Event>) -> EventBatch {
    EventBatch {
        anonymous_id: None,
        batch_id: BatchId::from_uuid(uuid::Uuid::new_v4()),
        app_id: AppId::from(app),
        device_id: device,
        sdk: SdkInfo {
            name: "tern-test".into(),
            version: "0.1.0".into(),
            platform: "linux".into(),
            app_version: None,
        },
        sent_at_ms: 1_700_000_000_000,
        attempt: 0,
        events,
        health: SdkHealth::default(),
    }
}

fn batch(app: &str, device: DeviceId, seqs: impl IntoIterator<Item = u64>) -> EventBatch {
    batch_of(
        app,
        device,
        seqs.into_iter().map(|s| event(s, None, "tapped")).collect(),
    )
}

fn new_device() -> DeviceId {
    DeviceId::from_uuid(uuid::Uuid::new_v4())
}

fn frame(batches: Vec<EventBatch>) -> Vec<u8> {
    Message::ForwardRequest(ForwardRequest {
        relay_id: RelayId::from("relay-test"),
        batches,
    })
    .encode(&CodecConfig::backend())
    .expect("encodes")
}

fn is_rejected(outcome: &ForwardOutcome, want: RejectReason) -> bool {
    matches!(outcome, ForwardOutcome::Rejected { reason, .. } if *reason == want)
}

// ---------------------------------------------------------------------------------
// Ingest and dedupe

#[tokio::test]
async fn duplicate_batch_counts_once_also_after_sigkill_restart() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let device = new_device();
    let mut b = batch("demo", device, 1..=3);
    b.health = SdkHealth {
        retries: 2,
        queue_events: 7,
        store_resets: 1,
        reset_unknown: 40,
        dropped_corrupt: 2,
        dropped_disk_full: 5,
        ..SdkHealth::default()
    };
    assert_eq!(
        env.ingest(&stub, vec![b.clone()]).await?,
        [ForwardOutcome::Stored]
    );
    let mut retry = b.clone();
    retry.attempt = 1;
    retry.sent_at_ms += 5000;
    retry.health.retries = 1; // older counters never lower the maximum
    retry.health.reset_unknown = 3;
    assert_eq!(
        env.ingest(&stub, vec![retry.clone()]).await?,
        [ForwardOutcome::Duplicate]
    );

    stub.kill();
    let stub = env.start()?;
    assert_eq!(
        env.ingest(&stub, vec![retry]).await?,
        [ForwardOutcome::Duplicate]
    );
    let s = env.summary(&stub).await?;
    assert_eq!(s["batches_received"], 3);
    assert_eq!(s["batches_stored"], 1);
    assert_eq!(s["batches_duplicate"], 2);
    assert_eq!(s["events_unique"], 3);
    assert_eq!(s["events_in_duplicate_batches"], 6);
    assert_eq!(s["devices"], 1);
    assert_eq!(s["sequence_gaps"], 0);
    let d = env
        .get_json(&stub, &format!("/verify/apps/demo/devices/{device}"))
        .await?;
    assert_eq!(d["max_seq"], 3);
    assert_eq!(d["unique_events"], 3);
    assert_eq!(d["health"]["retries"], 2);
    assert_eq!(d["health"]["queue_events"], 7);
    assert_eq!(d["health"]["store_resets"], 1);
    assert_eq!(d["health"]["reset_unknown"], 40);
    assert_eq!(d["health"]["dropped_corrupt"], 2);
    assert_eq!(d["health"]["dropped_disk_full"], 5);
    Ok(())
}

#[tokio::test]
async fn event_duplicates_and_sequence_gaps() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let device = new_device();
    let outcomes = env
        .ingest(
            &stub,
            vec![
                batch("demo", device, [1, 2, 3]),
                // seq 3 again under a new batch_id: an event-level duplicate; 4..=5 missing.
                batch("demo", device, [3, 6, 7]),
                batch("demo", device, [10]),
            ],
        )
        .await?;
    assert_eq!(outcomes, vec![ForwardOutcome::Stored; 3]);
    let s = env.summary(&stub).await?;
    assert_eq!(s["batches_stored"], 3);
    assert_eq!(s["events_unique"], 6);
    assert_eq!(s["events_duplicate"], 1);
    assert_eq!(s["sequence_gaps"], 4);
    let d = env
        .get_json(&stub, &format!("/verify/apps/demo/devices/{device}"))
        .await?;
    assert_eq!(d["max_seq"], 10);
    assert_eq!(d["unique_events"], 6);
    assert_eq!(d["duplicate_events"], 1);
    assert_eq!(d["gaps"], 4);
    assert_eq!(d["gap_ranges"], json!([[4, 5], [8, 9]]));
    let seqs = env
        .get_json(&stub, &format!("/verify/apps/demo/devices/{device}/seqs"))
        .await?;
    assert_eq!(seqs, json!([1, 2, 3, 6, 7, 10]));
    let unknown = env
        .client
        .get(stub.url(&format!("/verify/apps/demo/devices/{}", new_device())))
        .send()
        .await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn latency_is_measured_from_the_event_timestamp_to_first_storage() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let empty = env.get_json(&stub, "/verify/latency").await?;
    assert_eq!(empty["events"], 0, "{empty}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let device = new_device();
    // Recorded 60 s, 30 s and 10 s before now.
    let events = [60_000, 30_000, 10_000]
        .iter()
        .enumerate()
        .map(|(i, age)| {
            let mut e = event(i as u64 + 1, None, "e");
            e.ts_ms = now_ms - age;
            e
        })
        .collect();
    let b = batch_of("demo", device, events);
    env.ingest(&stub, vec![b.clone()]).await?;
    // The same batch again is a duplicate: it does not move the first storage time.
    env.ingest(&stub, vec![b]).await?;
    let l = env.get_json(&stub, "/verify/latency").await?;
    assert_eq!(l["events"], 3, "{l}");
    let p50 = l["p50_ms"].as_i64().context("p50")?;
    let max = l["max_ms"].as_i64().context("max")?;
    assert!((30_000..40_000).contains(&p50), "{l}");
    assert!((60_000..70_000).contains(&max), "{l}");
    assert_eq!(l["p99_ms"], l["max_ms"], "{l}");
    Ok(())
}

#[tokio::test]
async fn per_user_and_per_kind_counts() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let (d1, d2) = (new_device(), new_device());
    let b1 = batch_of(
        "demo",
        d1,
        vec![
            event(1, None, "opened"),
            event(2, Some("alice"), "tapped"),
            purchase(3, "alice"),
        ],
    );
    let b2 = batch_of("demo", d2, vec![event(1, Some("bob"), "tapped")]);
    let b3 = batch_of("shop", d2, vec![event(1, Some("alice"), "tapped")]);
    env.ingest(&stub, vec![b1, b2, b3]).await?;
    let app = env.get_json(&stub, "/verify/apps/demo").await?;
    assert_eq!(app["unique_events"], 4);
    assert_eq!(
        app["users"],
        json!([
            {"user_id": null, "unique_events": 1},
            {"user_id": "alice", "unique_events": 2},
            {"user_id": "bob", "unique_events": 1},
        ])
    );
    assert_eq!(app["devices"].as_array().map(Vec::len), Some(2));
    let alice = env.get_json(&stub, "/verify/apps/demo/users/alice").await?;
    assert_eq!(
        alice,
        json!({"unique_events": 2, "by_kind": {"custom": 1, "purchase": 1}})
    );
    let alice_shop = env.get_json(&stub, "/verify/apps/shop/users/alice").await?;
    assert_eq!(alice_shop["unique_events"], 1);
    let missing = env.client.get(stub.url("/verify/apps/nope")).send().await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    Ok(())
}

fn exposure(seq: u64, user: Option<&str>, flag: &str, variant: &str, version: u64) -> Event {
    Event {
        body: EventBody::Exposure {
            flag: flag.into(),
            variant: variant.into(),
            config_version: version,
            reason: Some(tern_protocol::rollout::FlagReason::Variant),
        },
        ..event(seq, user, "unused")
    }
}

/// Exposures are stored per (app, flag, variant, unit, config version): a resent batch
/// or a resent event adds nothing, a device recording a key again shows as a
/// duplicated key, anonymous exposures are keyed by the device.
#[tokio::test]
async fn exposures_are_stored_per_flag_variant_unit_and_version() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let (d1, d2) = (new_device(), new_device());
    let b1 = batch_of(
        "demo",
        d1,
        vec![
            exposure(1, Some("ada"), "checkout", "blue", 3),
            exposure(2, Some("ada"), "checkout", "blue", 4),
            exposure(3, None, "checkout", "off", 4),
            event(4, Some("ada"), "tapped"),
        ],
    );
    let outcomes = env.ingest(&stub, vec![b1.clone(), b1.clone()]).await?;
    assert_eq!(
        outcomes,
        [ForwardOutcome::Stored, ForwardOutcome::Duplicate]
    );
    // The same events in another batch (a device store resent them): event duplicates.
    let mut again = batch_of("demo", d1, b1.events[..2].to_vec());
    again.batch_id = BatchId::from_uuid(uuid::Uuid::new_v4());
    env.ingest(&stub, vec![again]).await?;
    // Ada on another device, same key: one key, two exposure events.
    let b2 = batch_of(
        "demo",
        d2,
        vec![exposure(1, Some("ada"), "checkout", "blue", 4)],
    );
    // Another app's exposure is its own.
    let b3 = batch_of(
        "shop",
        d2,
        vec![exposure(2, Some("ada"), "checkout", "blue", 4)],
    );
    env.ingest(&stub, vec![b2, b3]).await?;
    let summary = env.summary(&stub).await?;
    assert_eq!(
        (
            summary["exposures"].as_u64(),
            summary["exposure_events"].as_u64()
        ),
        (Some(4), Some(5))
    );
    let demo = env.get_json(&stub, "/verify/apps/demo/exposures").await?;
    assert_eq!(
        (
            &demo["exposures"],
            &demo["exposure_events"],
            &demo["duplicated"]
        ),
        (&json!(3), &json!(4), &json!(1))
    );
    let rows: Vec<(String, String, String, u64, u64)> = demo["rows"]
        .as_array()
        .context("rows")?
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
    let key = |v: &str, unit: &str, version, events| {
        (
            "checkout".to_owned(),
            v.to_owned(),
            unit.to_owned(),
            version,
            events,
        )
    };
    assert_eq!(
        rows,
        [
            key("blue", "ada", 3, 1),
            key("blue", "ada", 4, 2),
            key("off", &d1.to_string(), 4, 1),
        ]
    );
    assert_eq!(demo["rows"][0]["reason"], "variant");
    let ada = env
        .get_json(&stub, "/verify/apps/demo/exposures?unit=ada")
        .await?;
    assert_eq!(
        (&ada["exposures"], &ada["exposure_events"]),
        (&json!(2), &json!(3))
    );
    // Exposures count as events of their kind.
    let by_kind = env.get_json(&stub, "/verify/apps/demo/users/ada").await?;
    assert_eq!(by_kind["by_kind"]["exposure"], 3);
    Ok(())
}

#[tokio::test]
async fn per_batch_rejects_do_not_affect_other_batches() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let device = new_device();
    let good1 = batch("demo", device, [1, 2]);
    let bad_name = batch_of("demo", new_device(), vec![event(1, None, "bad name!")]);
    let bad_order = batch("demo", new_device(), [2, 1]);
    let unknown_app = batch("nope", new_device(), [1]);
    let too_many = batch("demo", new_device(), 1..=1001);
    let good2 = batch("shop", device, [1]);
    let outcomes = env
        .ingest(
            &stub,
            vec![good1, bad_name, bad_order, unknown_app, too_many, good2],
        )
        .await?;
    assert_eq!(outcomes[0], ForwardOutcome::Stored);
    assert!(
        is_rejected(&outcomes[1], RejectReason::Invalid),
        "{:?}",
        outcomes[1]
    );
    if let ForwardOutcome::Rejected { detail, .. } = &outcomes[1] {
        assert!(detail.contains("event name"), "{detail}");
    }
    assert!(
        is_rejected(&outcomes[2], RejectReason::Invalid),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(
        outcomes[3],
        ForwardOutcome::Rejected {
            reason: RejectReason::Unauthorized,
            detail: "unknown app".into()
        }
    );
    assert!(
        is_rejected(&outcomes[4], RejectReason::TooLarge),
        "{:?}",
        outcomes[4]
    );
    assert_eq!(outcomes[5], ForwardOutcome::Stored);
    let s = env.summary(&stub).await?;
    assert_eq!(s["batches_received"], 6);
    assert_eq!(s["batches_stored"], 2);
    assert_eq!(s["batches_rejected"], 4);
    assert_eq!(s["events_unique"], 3);
    assert_eq!(s["devices"], 2, "one device in two apps");
    Ok(())
}

#[tokio::test]
async fn malformed_bodies_are_400_and_change_nothing() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    env.ingest(&stub, vec![batch("demo", new_device(), [1])])
        .await?;
    let before = env.summary(&stub).await?;

    let good = frame(vec![batch("demo", new_device(), [1, 2, 3])]);
    let mut unknown_kind = good.clone();
    unknown_kind[4] = 0x7e;
    let wrong_kind = Message::ForwardReply(tern_protocol::ForwardReply { results: vec![] })
        .encode(&CodecConfig::backend())?;
    let payload = b"\x92\xc1\xc1"; // msgpack array holding the reserved byte 0xc1
    let mut corrupt = ((payload.len() + 2) as u32).to_be_bytes().to_vec();
    corrupt.extend_from_slice(&[0x10, 0]);
    corrupt.extend_from_slice(payload);
    let mut oversized = (u32::MAX).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0x10, 0, 1, 2, 3]);
    let mut trailing = good.clone();
    trailing.push(0);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"hello, backend".to_vec(), "exceeds the maximum"),
        ("empty", vec![], "truncated"),
        ("truncated", good[..good.len() - 3].to_vec(), "truncated"),
        ("unknown kind", unknown_kind, "unknown message kind 0x7e"),
        (
            "wrong kind",
            wrong_kind,
            "expected a ForwardRequest frame, got kind 0x90",
        ),
        ("corrupt msgpack", corrupt, "malformed payload"),
        ("oversized length", oversized, "exceeds the maximum"),
        ("trailing bytes", trailing, "trailing bytes"),
    ];
    for (name, body, reason) in cases {
        let resp = env.post_ingest(&stub, body).await?;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{name}");
        let j: Json = resp.json().await?;
        assert_eq!(j["error"], "malformed", "{name}");
        let got = j["reason"].as_str().unwrap_or_default();
        assert!(got.contains(reason), "{name}: {got}");
    }
    assert_eq!(env.summary(&stub).await?, before);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn ack_loss_commits_then_retry_is_duplicate() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    env.put_faults(&stub, json!({"ack_loss_rate": 1.0})).await?;
    let b = batch("demo", new_device(), [1, 2]);
    let resp = env.post_ingest(&stub, frame(vec![b.clone()])).await?;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(env.summary(&stub).await?["batches_stored"], 1);
    let resp = env.client.delete(stub.url("/admin/faults")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        env.ingest(&stub, vec![b]).await?,
        [ForwardOutcome::Duplicate]
    );
    let s = env.summary(&stub).await?;
    assert_eq!(s["batches_stored"], 1);
    assert_eq!(s["events_unique"], 2);
    Ok(())
}

#[tokio::test]
async fn down_aborts_the_connection_and_processes_nothing() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    env.put_faults(&stub, json!({"down": true})).await?;
    let b = batch("demo", new_device(), [1]);
    let err = env
        .post_ingest(&stub, frame(vec![b.clone()]))
        .await
        .expect_err("a down backend gives no HTTP response");
    assert!(err.status().is_none(), "{err:?}");
    let err = env
        .client
        .get(stub.url("/v1/apps/demo/config"))
        .send()
        .await
        .expect_err("config is in scope too");
    assert!(err.status().is_none(), "{err:?}");
    // Admin and verify stay up.
    let s = env.summary(&stub).await?;
    assert_eq!(s["batches_received"], 0);
    assert_eq!(env.get_json(&stub, "/admin/faults").await?["down"], true);
    let health = env.client.get(stub.url("/healthz")).send().await?;
    assert_eq!(health.text().await?, "ok");
    // Clearing restores service.
    env.client.delete(stub.url("/admin/faults")).send().await?;
    assert_eq!(env.ingest(&stub, vec![b]).await?, [ForwardOutcome::Stored]);
    Ok(())
}

#[tokio::test]
async fn throttle_error_rate_and_latency() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let b = batch("demo", new_device(), [1]);

    env.put_faults(
        &stub,
        json!({"throttle_retry_after_ms": 1500, "error_rate": 1.0}),
    )
    .await?;
    let resp = env.post_ingest(&stub, frame(vec![b.clone()])).await?;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "throttle wins over error_rate"
    );
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_eq!(resp.headers()["x-tern-retry-after-ms"], "1500");

    env.put_faults(&stub, json!({"error_rate": 1.0})).await?;
    let resp = env.post_ingest(&stub, frame(vec![b.clone()])).await?;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let resp = env
        .client
        .get(stub.url("/v1/apps/demo/config"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(env.summary(&stub).await?["batches_received"], 0);

    // Scope: config only, so ingest goes through.
    env.put_faults(&stub, json!({"error_rate": 1.0, "scope": ["config"]}))
        .await?;
    assert_eq!(env.ingest(&stub, vec![b]).await?, [ForwardOutcome::Stored]);
    let resp = env
        .client
        .get(stub.url("/v1/apps/demo/config"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    env.put_faults(&stub, json!({"latency_ms": 300})).await?;
    let start = Instant::now();
    let resp = env
        .client
        .get(stub.url("/v1/apps/demo/config"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(300));

    // The registry is not in the default scope.
    env.put_faults(&stub, json!({"error_rate": 1.0})).await?;
    let resp = env.client.get(stub.url("/v1/apps")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    env.put_faults(&stub, json!({"error_rate": 1.0, "scope": ["registry"]}))
        .await?;
    let resp = env.client.get(stub.url("/v1/apps")).send().await?;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    Ok(())
}

#[tokio::test]
async fn drip_sends_the_body_slowly() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let full = env
        .client
        .get(stub.url("/v1/apps/demo/config"))
        .send()
        .await?
        .bytes()
        .await?;
    env.put_faults(&stub, json!({"drip_bytes_per_sec": 2000}))
        .await?;
    let start = Instant::now();
    let dripped = env
        .client
        .get(stub.url("/v1/apps/demo/config"))
        .send()
        .await?
        .bytes()
        .await?;
    let min = Duration::from_millis((full.len() as u64 * 1000 / 2000).saturating_sub(100));
    assert!(start.elapsed() >= min, "{:?} < {min:?}", start.elapsed());
    assert_eq!(dripped, full);

    let resp = env
        .ingest(&stub, vec![batch("demo", new_device(), [1])])
        .await?;
    assert_eq!(
        resp,
        [ForwardOutcome::Stored],
        "dripped frames still decode"
    );
    Ok(())
}

#[tokio::test]
async fn fault_settings_are_validated_and_spare_the_control_plane() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    for (body, field) in [
        (json!({"error_rate": 1.5}), "error_rate"),
        (json!({"ack_loss_rate": -0.5}), "ack_loss_rate"),
        (json!({"latency": 5}), "latency"),
        (json!({"scope": ["everything"]}), "everything"),
    ] {
        let resp = env
            .client
            .put(stub.url("/admin/faults"))
            .json(&body)
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let j: Json = resp.json().await?;
        assert!(
            j["reason"].as_str().unwrap_or_default().contains(field),
            "{j}"
        );
    }
    let all = json!({"latency_ms": 0, "error_rate": 1.0, "ack_loss_rate": 1.0, "down": false,
        "throttle_retry_after_ms": 10, "drip_bytes_per_sec": null,
        "scope": ["ingest", "config", "registry"]});
    env.put_faults(&stub, all.clone()).await?;
    assert_eq!(env.get_json(&stub, "/admin/faults").await?, all);
    for path in [
        "/healthz",
        "/metrics",
        "/verify/summary",
        "/admin/apps",
        "/admin/apps/demo/config",
        "/verify/apps/demo",
    ] {
        let resp = env.client.get(stub.url(path)).send().await?;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    env.client.delete(stub.url("/admin/faults")).send().await?;
    assert_eq!(
        env.get_json(&stub, "/admin/faults").await?["error_rate"],
        0.0
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Config

async fn fetch_config(env: &Env, stub: &StubProc, inm: Option<&str>) -> Result<reqwest::Response> {
    let mut req = env.client.get(stub.url("/v1/apps/demo/config"));
    if let Some(tag) = inm {
        req = req.header("if-none-match", tag);
    }
    Ok(req.send().await?)
}

fn etag_of(resp: &reqwest::Response) -> String {
    resp.headers()["etag"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn config_etag_conditional_get_and_admin_edits() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let resp = fetch_config(&env, &stub, None).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/msgpack");
    let etag = etag_of(&resp);
    assert!(etag.starts_with('"') && etag.ends_with('"'));
    let bundle: tern_protocol::ConfigBundle = tern_protocol::decode_payload(&resp.bytes().await?)?;
    assert_eq!(bundle.version, 1);
    assert_eq!(format!("\"{}\"", bundle.etag), etag);
    assert_eq!(
        bundle.values["welcome_text"],
        tern_protocol::Value::from("Hello")
    );
    assert_eq!(
        bundle.flag("new_checkout").map(|f| f.rollout_bp),
        Some(5000)
    );

    for inm in [etag.as_str(), etag.trim_matches('"'), "*"] {
        let resp = fetch_config(&env, &stub, Some(inm)).await?;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{inm}");
        assert_eq!(etag_of(&resp), etag);
        assert!(resp.bytes().await?.is_empty());
    }
    let json_resp = env
        .client
        .get(stub.url("/v1/apps/demo/config"))
        .header("accept", "application/json")
        .send()
        .await?;
    assert_eq!(json_resp.headers()["content-type"], "application/json");
    let j: Json = json_resp.json().await?;
    assert_eq!(j["etag"], bundle.etag.as_str());

    // Replace the whole config.
    let put = env
        .client
        .put(stub.url("/admin/apps/demo/config"))
        .json(&json!({"values": {"welcome_text": "Hi"}, "flags": [], "messages": []}))
        .send()
        .await?;
    assert_eq!(put.status(), StatusCode::OK);
    let new: Json = put.json().await?;
    assert_eq!(new["version"], 2);
    assert_ne!(new["etag"], bundle.etag.as_str());
    let resp = fetch_config(&env, &stub, Some(&etag)).await?;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "old etag now gets the new content"
    );
    let new_etag = etag_of(&resp);
    let b: tern_protocol::ConfigBundle = tern_protocol::decode_payload(&resp.bytes().await?)?;
    assert_eq!(b.version, 2);
    assert!(b.flags.is_empty());
    assert_eq!(
        fetch_config(&env, &stub, Some(&new_etag)).await?.status(),
        StatusCode::NOT_MODIFIED
    );

    // Same content again: no version bump.
    let same = env
        .client
        .put(stub.url("/admin/apps/demo/config"))
        .json(&json!({"values": {"welcome_text": "Hi"}}))
        .send()
        .await?;
    assert_eq!(same.json::<Json>().await?["version"], 2);

    // Values and flags one by one.
    let v = env
        .client
        .put(stub.url("/admin/apps/demo/values/max_items"))
        .json(&json!(42))
        .send()
        .await?
        .json::<Json>()
        .await?;
    assert_eq!(v["version"], 3);
    assert_eq!(v["values"]["max_items"], 42);
    let f = env
        .client
        .put(stub.url("/admin/apps/demo/flags/beta"))
        .json(&json!({"key": "beta", "enabled": true, "rollout_bp": 2500}))
        .send()
        .await?
        .json::<Json>()
        .await?;
    assert_eq!(f["version"], 4);
    assert_eq!(f["flags"][0]["rollout_bp"], 2500);
    let del = env
        .client
        .delete(stub.url("/admin/apps/demo/values/max_items"))
        .send()
        .await?
        .json::<Json>()
        .await?;
    assert_eq!(del["version"], 5);
    assert!(del["values"].get("max_items").is_none());
    let del = env
        .client
        .delete(stub.url("/admin/apps/demo/flags/beta"))
        .send()
        .await?
        .json::<Json>()
        .await?;
    assert_eq!(del["version"], 6);
    let admin = env.get_json(&stub, "/admin/apps/demo/config").await?;
    assert_eq!(admin, del);

    // Errors.
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            env.client
                .put(stub.url("/admin/apps/demo/flags/x"))
                .json(&json!({"key": "y", "enabled": true})),
            StatusCode::BAD_REQUEST,
            "key",
        ),
        (
            env.client
                .put(stub.url("/admin/apps/demo/flags/x"))
                .json(&json!({"key": "x", "enabled": true, "rollout_bp": 12000})),
            StatusCode::BAD_REQUEST,
            "rollout_bp: 12000 is over 10000",
        ),
        (
            env.client.put(stub.url("/admin/apps/demo/config")).json(
                &json!({"flags": [{"key": "a", "enabled": true}, {"key": "a", "enabled": false}]}),
            ),
            StatusCode::BAD_REQUEST,
            "flags[1].key: duplicate flag key",
        ),
        (
            env.client
                .put(stub.url("/admin/apps/demo/config"))
                .json(&json!({"valuez": {}})),
            StatusCode::BAD_REQUEST,
            "valuez",
        ),
        (
            env.client
                .put(stub.url("/admin/apps/demo/values/k"))
                .json(&json!({"nested": 1})),
            StatusCode::BAD_REQUEST,
            "string, integer, float or boolean",
        ),
        (
            env.client.delete(stub.url("/admin/apps/demo/values/never")),
            StatusCode::NOT_FOUND,
            "never",
        ),
        (
            env.client
                .put(stub.url("/admin/apps/nope/config"))
                .json(&json!({})),
            StatusCode::NOT_FOUND,
            "unknown app",
        ),
        (
            env.client.get(stub.url("/v1/apps/nope/config")),
            StatusCode::NOT_FOUND,
            "unknown app",
        ),
    ];
    for (req, status, text) in cases {
        let resp = req.send().await?;
        assert_eq!(resp.status(), status, "{text}");
        let j: Json = resp.json().await?;
        assert!(
            j["reason"].as_str().unwrap_or_default().contains(text),
            "{text}: {j}"
        );
    }
    assert_eq!(
        env.get_json(&stub, "/admin/apps/demo/config").await?["version"],
        6
    );
    Ok(())
}

#[tokio::test]
async fn config_versions_persist_across_restarts() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let v1 = env.get_json(&stub, "/admin/apps").await?;
    assert_eq!(v1[0]["version"], 1);
    drop(stub);

    // Unchanged file: same version and etag.
    let stub = env.start()?;
    assert_eq!(env.get_json(&stub, "/admin/apps").await?, v1);
    // An admin change survives a restart with an unchanged file.
    env.client
        .put(stub.url("/admin/apps/demo/values/welcome_text"))
        .json(&json!("Howdy"))
        .send()
        .await?;
    stub.kill();
    let stub = env.start()?;
    let b = env.get_json(&stub, "/admin/apps/demo/config").await?;
    assert_eq!(b["version"], 2);
    assert_eq!(b["values"]["welcome_text"], "Howdy");
    drop(stub);

    // A changed file wins, with a higher version.
    env.write_config(&DEMO_CONFIG.replace("welcome_text = \"Hello\"", "welcome_text = \"Hej\""))?;
    let stub = env.start()?;
    let b = env.get_json(&stub, "/admin/apps/demo/config").await?;
    assert_eq!(b["version"], 3);
    assert_eq!(b["values"]["welcome_text"], "Hej");
    // Content-derived etags: the same content always has the same tag.
    let shop = env.get_json(&stub, "/admin/apps").await?;
    assert_eq!(shop[1], v1[1]);
    Ok(())
}

#[tokio::test]
async fn bad_config_file_exits_nonzero_naming_the_field() -> Result<()> {
    let cases = [
        (
            "[[apps]]\nid = 'a'\nkeys = ['k']\n[[apps.flags]]\nkey = 'f'\nenabled = true\nrollout_bp = 12000\n",
            "apps[0].flags[0].rollout_bp: 12000 is over 10000",
        ),
        ("[[apps]]\nid = 'a'\nkeys = []\n", "apps[0].keys"),
        (
            "[[apps]]\nid = 'a'\nkeys = ['k']\n[[apps]]\nid = 'a'\nkeys = ['k']\n",
            "apps[1].id: duplicate app id",
        ),
        ("[[apps]]\nid = 'a'\nkeys = ['k']\nbogus = 1\n", "bogus"),
        ("[[apps]]\nid = 'a'\nkeys = 'k'\n", "keys"),
    ];
    for (text, want) in cases {
        let env = Env::new(text)?;
        let out = Command::new(env!("CARGO_BIN_EXE_tern-server-stub"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(env.dir.path().join("data"))
            .arg("--config")
            .arg(env.config_path())
            .output()?;
        assert!(!out.status.success(), "{want}");
        assert!(out.stdout.is_empty(), "no ready line");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{want}: {stderr}");
        assert!(stderr.contains("apps.toml"), "names the file: {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let mut stub = env.start()?;
    env.ingest(&stub, vec![batch("demo", new_device(), [1])])
        .await?;
    let status = Command::new("kill")
        .args(["-TERM", &stub.child.id().to_string()])
        .status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = stub.child.try_wait()? {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(code.success(), "{code:?}: {}", stub.stderr.lock().unwrap());
    Ok(())
}

#[tokio::test]
async fn bearer_token_guards_the_data_plane_only() -> Result<()> {
    let config = format!("ingest_token = \"s3cret\"\n{DEMO_CONFIG}");
    let env = Env::new(&config)?;
    let stub = env.start()?;
    let body = frame(vec![batch("demo", new_device(), [1])]);
    for auth in [None, Some("Bearer nope"), Some("s3cret")] {
        let mut req = env.client.post(stub.url("/v1/ingest")).body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await?;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(resp.json::<Json>().await?["error"], "unauthorized");
    }
    let resp = env.client.get(stub.url("/v1/apps")).send().await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(env.summary(&stub).await?["batches_received"], 0);

    let resp = env
        .client
        .post(stub.url("/v1/ingest"))
        .bearer_auth("s3cret")
        .body(body)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let apps: Json = env
        .client
        .get(stub.url("/v1/apps"))
        .bearer_auth("s3cret")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        apps,
        json!([
            {"app_id": "demo", "keys": ["demo-key"]},
            {"app_id": "shop", "keys": ["shop-key", "shop-key-rotated"]},
        ])
    );
    let resp = env
        .client
        .get(stub.url("/v1/apps/demo/config"))
        .bearer_auth("s3cret")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn metrics_expose_the_counters() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let device = new_device();
    let b = batch("demo", device, [1, 2]);
    env.ingest(&stub, vec![b.clone(), batch("nope", device, [1])])
        .await?;
    env.ingest(&stub, vec![b, batch("demo", device, [2, 3])])
        .await?;
    env.post_ingest(&stub, b"junk".to_vec()).await?;
    let etag = etag_of(&fetch_config(&env, &stub, None).await?);
    fetch_config(&env, &stub, Some(&etag)).await?;
    env.put_faults(&stub, json!({"error_rate": 1.0})).await?;
    fetch_config(&env, &stub, None).await?;
    let text = env
        .client
        .get(stub.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    for line in [
        "tern_stub_ingest_requests_total{outcome=\"ok\"} 2",
        "tern_stub_ingest_requests_total{outcome=\"malformed\"} 1",
        "tern_stub_batches_total{outcome=\"stored\"} 2",
        "tern_stub_batches_total{outcome=\"duplicate\"} 1",
        "tern_stub_batches_total{outcome=\"rejected\"} 1",
        "tern_stub_events_total{outcome=\"unique\"} 3",
        "tern_stub_events_total{outcome=\"duplicate\"} 1",
        "tern_stub_config_requests_total{status=\"200\"} 1",
        "tern_stub_config_requests_total{status=\"304\"} 1",
        "tern_stub_faults_injected_total{kind=\"error\"} 1",
        "tern_stub_request_duration_seconds_bucket{route=\"/v1/ingest\",le=\"+Inf\"} 3",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_ingest_counts_every_event_once() -> Result<()> {
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let (requests, batches_per_request, events_per_batch) = (40u64, 10u64, 100u64);
    let devices: Vec<DeviceId> = (0..batches_per_request).map(|_| new_device()).collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for r in 0..requests {
        let batches: Vec<_> = devices
            .iter()
            .map(|d| {
                let first = r * events_per_batch + 1;
                batch("demo", *d, first..first + events_per_batch)
            })
            .collect();
        let body = frame(batches);
        let (client, url) = (env.client.clone(), stub.url("/v1/ingest"));
        tasks.push(tokio::spawn(async move {
            let resp = client.post(url).body(body).send().await?;
            anyhow::ensure!(resp.status() == StatusCode::OK);
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let total = requests * batches_per_request * events_per_batch;
    eprintln!(
        "ingested {total} events in {:?} (debug build, informational only)",
        start.elapsed()
    );
    let s = env.summary(&stub).await?;
    assert_eq!(s["batches_stored"], requests * batches_per_request);
    assert_eq!(s["events_unique"], total);
    assert_eq!(s["sequence_gaps"], 0);
    let seqs = env
        .get_json(
            &stub,
            &format!("/verify/apps/demo/devices/{}/seqs", devices[0]),
        )
        .await?;
    assert_eq!(
        seqs.as_array().map(Vec::len),
        Some((requests * events_per_batch) as usize)
    );
    Ok(())
}

/// Aliases and identities (protocol §8.1): anonymous events under their batch's
/// anonymous id, the alias table (first alias wins), merged per-user counts, and a
/// resent batch counted once.
#[tokio::test]
async fn aliases_merge_anonymous_histories_into_users() -> Result<()> {
    use tern_protocol::{AnonymousId, UserId};
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let d = new_device();
    let (a0, a1) = (AnonymousId::random(), AnonymousId::random());
    let mut anon = batch_of(
        "demo",
        d,
        vec![event(1, None, "opened"), event(2, None, "tapped")],
    );
    anon.anonymous_id = Some(a0);
    let alias = |seq: u64, a: AnonymousId, user: &str| Event {
        seq,
        ts_ms: 1_700_000_000_000,
        user_id: Some(UserId::new(user)),
        session_id: None,
        body: EventBody::Alias {
            anonymous_id: a,
            user_id: UserId::new(user),
        },
    };
    let mut login = batch_of(
        "demo",
        d,
        vec![alias(3, a0, "alice"), event(4, Some("alice"), "tapped")],
    );
    login.anonymous_id = Some(a0);
    let mut after_reset = batch_of("demo", d, vec![event(5, None, "opened")]);
    after_reset.anonymous_id = Some(a1);
    // A second alias of a0 (to someone else) does not move its history.
    let mut again = batch_of("demo", d, vec![alias(6, a0, "mallory")]);
    again.anonymous_id = Some(a0);
    // An older SDK: no anonymous id, its anonymous events are the device's.
    let old = batch_of("demo", new_device(), vec![event(1, None, "opened")]);
    env.ingest(
        &stub,
        vec![anon.clone(), login.clone(), after_reset, again, old.clone()],
    )
    .await?;
    // Resent batches change nothing.
    env.ingest(&stub, vec![anon, login]).await?;
    let ids = env.get_json(&stub, "/verify/apps/demo/identities").await?;
    assert_eq!(
        ids["aliases"],
        json!([{"anonymous_id": a0.to_string(), "user_id": "alice",
                "device_id": d.to_string(), "seen": 2}])
    );
    assert_eq!(
        ids["events"],
        json!({
            format!("anonymous:{a0}"): 2,
            format!("anonymous:{a1}"): 1,
            format!("device:{}", old.device_id): 1,
            "user:alice": 2,
            "user:mallory": 1,
        })
    );
    assert_eq!(ids["merged"], json!({"alice": 4, "mallory": 1}));
    Ok(())
}

/// Push tokens and push events (protocol §8.2): a token moves to the user it was last
/// sent under, a rotated token replaces the device's old one, a cleared token goes (also
/// from a new device id), an older event of a device changes nothing, pushes are
/// counted per campaign, and resent batches count once.
#[tokio::test]
async fn push_tokens_follow_devices_and_users_and_pushes_count_per_campaign() -> Result<()> {
    use tern_protocol::{PushEnvironment, PushProvider};
    let env = Env::new(DEMO_CONFIG)?;
    let stub = env.start()?;
    let ev = |seq: u64, user: Option<&str>, body: EventBody| Event {
        seq,
        ts_ms: 1_700_000_000_000 + seq as i64,
        user_id: user.map(UserId::from),
        session_id: None,
        body,
    };
    let tok = |t: &str, cleared: bool| EventBody::PushToken {
        provider: PushProvider::Apns,
        environment: Some(PushEnvironment::Sandbox),
        token: t.into(),
        cleared,
    };
    let (d1, d2, d3) = (new_device(), new_device(), new_device());
    let first = batch_of(
        "demo",
        d1,
        vec![
            ev(1, None, tok("aaa", false)),
            ev(2, Some("alice"), tok("aaa", false)),
            ev(
                3,
                Some("alice"),
                EventBody::PushReceived {
                    campaign_id: "spring".into(),
                },
            ),
            ev(
                4,
                Some("alice"),
                EventBody::PushOpened {
                    campaign_id: "spring".into(),
                    action: None,
                },
            ),
        ],
    );
    let rotated = batch_of(
        "demo",
        d1,
        vec![
            ev(6, Some("alice"), tok("ccc", false)),
            ev(
                7,
                Some("alice"),
                EventBody::PushOpened {
                    campaign_id: "spring".into(),
                    action: Some("buy".into()),
                },
            ),
        ],
    );
    // Sent before the rotation, delivered after it: changes nothing.
    let late = batch_of("demo", d1, vec![ev(5, Some("alice"), tok("aaa", false))]);
    let bob = batch_of("demo", d2, vec![ev(1, Some("bob"), tok("bbb", false))]);
    // d2 deleted its local data: its cleared token comes from a new device id.
    let cleared = batch_of("demo", d3, vec![ev(1, None, tok("bbb", true))]);
    env.ingest(&stub, vec![first.clone(), rotated, bob]).await?;
    env.ingest(&stub, vec![late, first]).await?;
    let v = env.get_json(&stub, "/verify/apps/demo/push").await?;
    assert_eq!(v["users"], json!({"alice": ["ccc"], "bob": ["bbb"]}));
    assert_eq!(v["devices"][d1.to_string()]["token"], "ccc");
    assert_eq!(v["devices"][d1.to_string()]["environment"], "sandbox");
    assert_eq!(
        v["devices"][d1.to_string()]["last_seen_ms"],
        1_700_000_000_006i64
    );
    assert_eq!(
        v["campaigns"],
        json!({"spring": {"received": 1, "opened": 2, "actions": {"": 1, "buy": 1}}})
    );
    assert_eq!(v["token_events"], 5);
    assert_eq!(v["token_events_stale"], 1);
    env.ingest(&stub, vec![cleared]).await?;
    let v = env.get_json(&stub, "/verify/apps/demo/push").await?;
    assert_eq!(v["users"], json!({"alice": ["ccc"]}));
    assert_eq!(v["devices"].as_object().map(|d| d.len()), Some(1));
    assert_eq!(v["tokens_cleared"], 1);
    Ok(())
}
