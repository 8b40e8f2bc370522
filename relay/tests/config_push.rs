//! Config cache and push streams against a real backend (the stub, served in-process on
//! loopback), over real QUIC and HTTPS clients, and through the binary.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tern_protocol::{
    AppId, CodecConfig, ConfigOutcome, ConfigReply, ConfigRequest, DeviceId, ETag, FrameDecoder,
    Message, PushNotice, RejectReason, ShardMap, SubscribeRequest, ALPN, FRAME_CONTENT_TYPE,
    HTTP_RPC_PATH, HTTP_SUBSCRIBE_PATH,
};
use tern_relay::ingest::Ingest;
use tern_relay::remote::cache::ConfigCache;
use tern_relay::remote::push::PushHub;
use tern_server_stub::{Faults, Scope};

use tern_testkit::device::{self, https_client, roundtrip};
use tern_testkit::wait::until;
use tern_testkit::{auth, Backend};

const APPS: &str = r#"
[[apps]]
id = "demo"
keys = ["demo-key"]
[apps.values]
greeting = "hello"

[[apps]]
id = "shop"
keys = ["shop-key"]
[apps.values]
currency = "EUR"
"#;

use tern_testkit::DEADLINE;

struct Relay {
    ingest: Ingest,
    cache: ConfigCache,
    hub: PushHub,
    quic: SocketAddr,
    https: SocketAddr,
    ca_pem: String,
    relay: tern_testkit::InProcess,
}

impl Relay {
    fn stop(&self) {
        self.relay.running.kill();
    }
}

/// A relay through `Relay::start` (the binary's wiring), in-process, with its config
/// cache persisted in `dir`, fetched once before it returns and, when `refresher`,
/// polled every 500 ms.
async fn start_relay(backend: &Backend, dir: &Path, refresher: bool) -> Relay {
    let relay = tern_testkit::InProcess::start_with(
        &backend.url,
        |mut c| {
            c.config_cache_dir = Some(dir.to_owned());
            c.config_refresh_ms = 500;
            c
        },
        |r| {
            r.with_config_request_timeout(Duration::from_millis(500))
                .with_config_polling(refresher)
        },
    )
    .await;
    let s = &relay.running.services;
    assert_eq!(s.config_cache.refresh_apps(s.registry.app_ids()).await, 0);
    Relay {
        ingest: s.ingest.clone(),
        cache: s.config_cache.clone(),
        hub: s.push_hub.clone(),
        quic: relay.running.addrs.quic,
        https: relay.running.addrs.https,
        ca_pem: relay.ca_pem.clone(),
        relay,
    }
}

fn config_frame(app: &str, key: &str, if_none_match: Option<&ETag>) -> Vec<u8> {
    Message::ConfigRequest(ConfigRequest {
        auth: auth(app, key),
        device_id: DeviceId::random(),
        user_id: None,
        if_none_match: if_none_match.cloned(),
    })
    .encode(&CodecConfig::device())
    .unwrap()
}

fn subscribe_frame(app: &str, key: &str) -> Vec<u8> {
    Message::SubscribeRequest(SubscribeRequest {
        auth: auth(app, key),
        device_id: DeviceId::random(),
        user_id: None,
        config_etag: None,
    })
    .encode(&CodecConfig::device())
    .unwrap()
}

fn config_reply(m: Message) -> ConfigReply {
    match m {
        Message::ConfigReply(r) => r,
        other => panic!("expected a ConfigReply, got {other:?}"),
    }
}

/// Etag and version of a `modified` reply.
fn modified(r: &ConfigReply) -> (ETag, u64, AppId) {
    match &r.outcome {
        ConfigOutcome::Modified { bundle } => {
            (bundle.etag.clone(), bundle.version, bundle.app_id.clone())
        }
        other => panic!("expected modified, got {other:?}"),
    }
}

/// Reads the next frame of a push stream, within [`DEADLINE`].
async fn next_quic_frame(recv: &mut quinn::RecvStream, decoder: &mut FrameDecoder) -> Message {
    let cfg = CodecConfig::device();
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(frame) = decoder.next_frame().unwrap() {
                return Message::decode(&frame, &cfg).unwrap();
            }
            let chunk = recv
                .read_chunk(64 * 1024, true)
                .await
                .unwrap()
                .expect("the push stream stays open");
            decoder.push(&chunk.bytes);
        }
    })
    .await
    .expect("a push frame within the deadline")
}

async fn next_http_frame(resp: &mut reqwest::Response, decoder: &mut FrameDecoder) -> Message {
    let cfg = CodecConfig::device();
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(frame) = decoder.next_frame().unwrap() {
                return Message::decode(&frame, &cfg).unwrap();
            }
            let chunk = resp
                .chunk()
                .await
                .unwrap()
                .expect("the subscribe body stays open");
            decoder.push(&chunk);
        }
    })
    .await
    .expect("a push frame within the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_over_quic_and_https_with_etags_and_app_isolation() {
    let backend = Backend::start(APPS).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&backend, dir.path(), false).await;
    let conn = device::connect(&relay.ca_pem, relay.quic, &[ALPN])
        .await
        .unwrap();

    // Cold start: the whole bundle, fresh.
    let r = config_reply(roundtrip(&conn, &config_frame("demo", "demo-key", None)).await);
    assert!(!r.stale);
    let (etag, version, app) = modified(&r);
    assert_eq!((app.as_str(), version), ("demo", 1));
    match &r.outcome {
        ConfigOutcome::Modified { bundle } => assert_eq!(
            bundle.values.get("greeting"),
            Some(&tern_protocol::Value::String("hello".into()))
        ),
        _ => unreachable!(),
    }
    // The same ETag: not modified. Another one: the bundle again.
    let r = config_reply(roundtrip(&conn, &config_frame("demo", "demo-key", Some(&etag))).await);
    assert_eq!((r.outcome, r.stale), (ConfigOutcome::NotModified, false));
    let old = ETag("not-the-current-etag".into());
    let r = config_reply(roundtrip(&conn, &config_frame("demo", "demo-key", Some(&old))).await);
    assert_eq!(modified(&r).0, etag);

    // Isolation: shop's key does not open demo's bundle; shop gets its own.
    let r = config_reply(roundtrip(&conn, &config_frame("demo", "shop-key", None)).await);
    match r.outcome {
        ConfigOutcome::Rejected { reason, .. } => assert_eq!(reason, RejectReason::Unauthorized),
        other => panic!("{other:?}"),
    }
    let r = config_reply(roundtrip(&conn, &config_frame("nobody", "demo-key", None)).await);
    assert!(matches!(r.outcome, ConfigOutcome::Rejected { .. }));
    let r = config_reply(roundtrip(&conn, &config_frame("shop", "shop-key", None)).await);
    let (shop_etag, _, shop_app) = modified(&r);
    assert_eq!(shop_app.as_str(), "shop");
    assert_ne!(shop_etag, etag);

    // HTTPS carries the same requests.
    let client = https_client(&relay.ca_pem);
    let url = format!("https://localhost:{}{}", relay.https.port(), HTTP_RPC_PATH);
    let post = |body: Vec<u8>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client
                .post(&url)
                .header("content-type", FRAME_CONTENT_TYPE)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            config_reply(
                Message::from_bytes(&resp.bytes().await.unwrap(), &CodecConfig::device()).unwrap(),
            )
        }
    };
    assert_eq!(
        modified(&post(config_frame("demo", "demo-key", None)).await).0,
        etag
    );
    assert_eq!(
        post(config_frame("demo", "demo-key", Some(&etag)))
            .await
            .outcome,
        ConfigOutcome::NotModified
    );
    assert!(matches!(
        post(config_frame("demo", "shop-key", Some(&etag)))
            .await
            .outcome,
        ConfigOutcome::Rejected { .. }
    ));

    // The relay polled the backend conditionally: the second refresh is a 304.
    let before = backend_304s(&backend).await;
    assert_eq!(relay.cache.refresh_apps(vec![AppId::new("demo")]).await, 0);
    assert_eq!(backend_304s(&backend).await, before + 1);
    relay.stop();
    backend.stop().await;
}

/// The stub's count of `304` config answers.
async fn backend_304s(backend: &Backend) -> u64 {
    let text = reqwest::get(format!("{}/metrics", backend.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("tern_stub_config_requests_total{status=\"304\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_serves_the_stale_copy_and_a_restart_serves_it_from_disk() {
    let backend = Backend::start(APPS).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&backend, dir.path(), false).await;
    let ask = |ingest: Ingest, etag: Option<ETag>| async move {
        let frame = config_frame("demo", "demo-key", etag.as_ref());
        config_reply(
            Message::from_bytes(&ingest.handle_frame(&frame).await, &CodecConfig::device())
                .unwrap(),
        )
    };
    let fresh = ask(relay.ingest.clone(), None).await;
    assert!(!fresh.stale);
    let (etag, version, _) = modified(&fresh);

    // Backend unreachable: the refresh fails, the copy is served, marked stale.
    backend.set_down(true);
    assert_eq!(relay.cache.refresh_apps(vec![AppId::new("demo")]).await, 1);
    let r = ask(relay.ingest.clone(), None).await;
    assert!(r.stale, "served from cache while the backend is down");
    assert_eq!(modified(&r).0, etag);
    let r = ask(relay.ingest.clone(), Some(etag.clone())).await;
    assert_eq!((r.outcome, r.stale), (ConfigOutcome::NotModified, true));
    // Back up: fresh again.
    backend.set_down(false);
    assert_eq!(relay.cache.refresh_apps(vec![AppId::new("demo")]).await, 0);
    assert!(!ask(relay.ingest.clone(), None).await.stale);
    relay.stop();

    // The bundle is on disk, written atomically (no temp files left).
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(files.contains(&"demo.bundle".to_string()), "{files:?}");
    assert!(!files.iter().any(|f| f.ends_with(".tmp")), "{files:?}");

    // A new relay instance while the backend's config endpoint is gone (its app
    // registry still loads): the persisted copy is served, stale once a refresh failed.
    backend.stub.set_faults(Faults {
        down: true,
        scope: vec![Scope::Config],
        ..Faults::default()
    });
    let relay = tern_testkit::InProcess::start_with(
        &backend.url,
        |mut c| {
            c.config_cache_dir = Some(dir.path().to_owned());
            c
        },
        |r| {
            r.with_config_request_timeout(Duration::from_millis(500))
                .with_config_polling(false)
        },
    )
    .await;
    let s = relay.services();
    for app in ["demo", "shop"] {
        assert!(
            s.config_cache.etag(&AppId::new(app)).is_some(),
            "{app} loaded from disk"
        );
    }
    assert_eq!(s.config_cache.refresh_apps(s.registry.app_ids()).await, 2);
    let r = ask(s.ingest.clone(), None).await;
    assert!(r.stale);
    let (e, v, _) = modified(&r);
    assert_eq!((e, v), (etag, version), "the last known bundle survives");
    relay.running.kill();
    backend.stop().await;
}

/// A relay started while the backend's registry and config endpoints fail: config
/// requests are answered `Retry` (never `unauthorized`) until the registry is loaded,
/// and again until the app's config could be fetched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_requests_wait_for_the_registry_and_the_first_fetch() {
    let backend = Backend::start(APPS).await;
    let faults = |scope: Vec<Scope>| Faults {
        down: !scope.is_empty(),
        scope,
        ..Faults::default()
    };
    backend
        .stub
        .set_faults(faults(vec![Scope::Registry, Scope::Config]));
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = tern_testkit::relay::self_signed();
    let running = tern_relay::run::Relay::new(tern_testkit::relay::config(
        "relay-test",
        &backend.url,
        dir.path(),
    ))
    .with_tls(tls)
    .with_config_request_timeout(Duration::from_millis(500))
    .with_config_polling(false)
    .start()
    .await
    .unwrap();
    let s = running.services.clone();
    let ask = || async {
        let frame = config_frame("demo", "demo-key", None);
        config_reply(
            Message::from_bytes(&s.ingest.handle_frame(&frame).await, &CodecConfig::device())
                .unwrap(),
        )
        .outcome
    };
    assert!(!s.registry.is_loaded());
    assert!(
        matches!(ask().await, ConfigOutcome::Retry { .. }),
        "registry not loaded: retry, never unauthorized"
    );
    backend.stub.set_faults(faults(vec![Scope::Config]));
    s.registry
        .refresh(&reqwest::Client::new(), &backend.url, None)
        .await
        .unwrap();
    match ask().await {
        ConfigOutcome::Retry { after_ms } => assert!(after_ms > 0),
        other => panic!("no bundle and no config endpoint: retry, got {other:?}"),
    }
    backend.stub.set_faults(Faults::default());
    assert_eq!(s.config_cache.refresh_apps(s.registry.app_ids()).await, 0);
    assert!(matches!(ask().await, ConfigOutcome::Modified { .. }));
    running.kill();
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_subscriber_hears_of_config_and_shard_map_changes() {
    let backend = Backend::start(APPS).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&backend, dir.path(), true).await;
    let conn = device::connect(&relay.ca_pem, relay.quic, &[ALPN])
        .await
        .unwrap();
    let etag = relay.cache.etag(&AppId::new("demo")).unwrap();

    // A subscriber that keeps its send side open (the relay must not wait for its end).
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&subscribe_frame("demo", "demo-key"))
        .await
        .unwrap();
    let mut decoder = FrameDecoder::new(CodecConfig::device().max_payload);
    assert_eq!(
        next_quic_frame(&mut recv, &mut decoder).await,
        Message::PushNotice(PushNotice::Subscribed {
            shard_map_version: 0,
            config_etag: Some(etag.clone()),
        })
    );
    // Another app's subscriber, and plain requests on the same connection meanwhile.
    let (mut shop_send, mut shop_recv) = conn.open_bi().await.unwrap();
    shop_send
        .write_all(&subscribe_frame("shop", "shop-key"))
        .await
        .unwrap();
    shop_send.finish().unwrap();
    let mut shop_decoder = FrameDecoder::new(CodecConfig::device().max_payload);
    assert!(matches!(
        next_quic_frame(&mut shop_recv, &mut shop_decoder).await,
        Message::PushNotice(PushNotice::Subscribed { .. })
    ));
    until("two subscribers", DEADLINE, || relay.hub.subscribers() == 2).await;
    let r = config_reply(roundtrip(&conn, &config_frame("demo", "demo-key", Some(&etag))).await);
    assert_eq!(r.outcome, ConfigOutcome::NotModified);

    // An operator edits demo's config on the backend: the subscriber hears of it.
    let edited = Instant::now();
    let new_etag = backend
        .set_value("demo", "greeting", "bonjour".into())
        .await;
    let notice = next_quic_frame(&mut recv, &mut decoder).await;
    let latency = edited.elapsed();
    println!("config change reached the QUIC subscriber after {latency:?} (poll interval 500 ms)");
    assert_eq!(
        notice,
        Message::PushNotice(PushNotice::ConfigChanged {
            version: 2,
            etag: new_etag.clone(),
        })
    );
    // Acting on it: the old ETag now gets the new bundle.
    let r = config_reply(roundtrip(&conn, &config_frame("demo", "demo-key", Some(&etag))).await);
    assert_eq!(modified(&r).0, new_etag);

    // A newer shard map reaches every subscriber; shop never heard of demo's change.
    assert!(relay.relay.services().shard_map.set(ShardMap {
        version: 4,
        nodes: vec![tern_protocol::RelayNode {
            id: tern_protocol::RelayId::new("relay-1"),
            quic_addr: "127.0.0.1:4433".into(),
            https_url: "https://127.0.0.1:8443".into(),
            weight: 1,
            state: tern_protocol::NodeState::Active,
        }],
    }));
    let shard = Message::PushNotice(PushNotice::ShardMapChanged { version: 4 });
    assert_eq!(next_quic_frame(&mut recv, &mut decoder).await, shard);
    assert_eq!(
        next_quic_frame(&mut shop_recv, &mut shop_decoder).await,
        shard
    );

    // A wrong key is refused with one ErrorReply, then the stream ends.
    let (mut bad_send, mut bad_recv) = conn.open_bi().await.unwrap();
    bad_send
        .write_all(&subscribe_frame("demo", "shop-key"))
        .await
        .unwrap();
    let reply = tokio::time::timeout(DEADLINE, bad_recv.read_to_end(1 << 16))
        .await
        .unwrap()
        .unwrap();
    match Message::from_bytes(&reply, &CodecConfig::device()).unwrap() {
        Message::ErrorReply(e) => assert_eq!(e.reason, RejectReason::Unauthorized),
        other => panic!("{other:?}"),
    }

    // The client goes away: its subscriptions end.
    conn.close(0u32.into(), b"done");
    until("subscribers to leave", DEADLINE, || {
        relay.hub.subscribers() == 0
    })
    .await;
    relay.stop();
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_subscribe_streams_notices() {
    let backend = Backend::start(APPS).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&backend, dir.path(), true).await;
    let client = https_client(&relay.ca_pem);
    let url = format!(
        "https://localhost:{}{}",
        relay.https.port(),
        HTTP_SUBSCRIBE_PATH
    );
    let subscribe = |body: Vec<u8>| {
        client
            .post(&url)
            .header("content-type", FRAME_CONTENT_TYPE)
            .body(body)
            .send()
    };

    // Refused: one ErrorReply as the whole body.
    let resp = subscribe(subscribe_frame("demo", "wrong")).await.unwrap();
    assert_eq!(resp.status(), 200);
    match Message::from_bytes(&resp.bytes().await.unwrap(), &CodecConfig::device()).unwrap() {
        Message::ErrorReply(e) => assert_eq!(e.reason, RejectReason::Unauthorized),
        other => panic!("{other:?}"),
    }

    let mut resp = subscribe(subscribe_frame("demo", "demo-key"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut decoder = FrameDecoder::new(CodecConfig::device().max_payload);
    match next_http_frame(&mut resp, &mut decoder).await {
        Message::PushNotice(PushNotice::Subscribed { config_etag, .. }) => {
            assert_eq!(config_etag, relay.cache.etag(&AppId::new("demo")))
        }
        other => panic!("{other:?}"),
    }
    until("the subscriber", DEADLINE, || relay.hub.subscribers() == 1).await;
    let edited = Instant::now();
    let new_etag = backend.set_value("demo", "greeting", "hola".into()).await;
    let notice = next_http_frame(&mut resp, &mut decoder).await;
    println!(
        "config change reached the HTTPS subscriber after {:?}",
        edited.elapsed()
    );
    assert_eq!(
        notice,
        Message::PushNotice(PushNotice::ConfigChanged {
            version: 2,
            etag: new_etag,
        })
    );
    drop(resp);
    until("the subscriber to leave", DEADLINE, || {
        relay.hub.subscribers() == 0
    })
    .await;
    relay.stop();
    backend.stop().await;
}

mod binary {
    use super::*;
    use tern_testkit::{wait_for, RelayProc};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_binary_serves_config_and_persists_it() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("config-cache");
        let relay = RelayProc::builder(&backend.url)
            .dir(dir.path())
            .args([
                "--config-refresh-ms".to_owned(),
                "200".to_owned(),
                "--config-cache-dir".to_owned(),
                cache_dir.display().to_string(),
            ])
            .start();
        let conn = relay.device().await.conn;
        // Registry and first fetch happen in the background: Retry until then.
        let reply = wait_for("a bundle", DEADLINE, || async {
            let r = config_reply(roundtrip(&conn, &config_frame("demo", "demo-key", None)).await);
            match r.outcome {
                ConfigOutcome::Retry { .. } => Err(format!("{r:?}")),
                _ => Ok(r),
            }
        })
        .await;
        assert_eq!(modified(&reply).2.as_str(), "demo");
        assert!(cache_dir.join("demo.bundle").exists());
        wait_for("the config metrics", DEADLINE, || async {
            let text = relay.metrics_text().await;
            if text.contains("tern_relay_config_apps_cached 2")
                && text.contains("tern_relay_config_fetches_total{outcome=\"not_modified\"}")
            {
                Ok(())
            } else {
                Err(text)
            }
        })
        .await;
        let exit = tokio::task::spawn_blocking(move || relay.terminate())
            .await
            .unwrap();
        assert!(exit.success(), "{exit}");
        backend.stop().await;
    }
}
