//! tern-relay integration suite: services against a real backend (the stub, served
//! in-process on loopback).

use std::sync::Arc;
use std::time::Duration;

use tern_protocol::{AppId, Event, EventBatch, EventBody, RejectReason, RelayId};
use tern_relay::forward::{ForwardError, Forwarder, ForwarderConfig, RequestOutcome, Verdict};
use tern_server_stub::Faults;
use tokio::sync::mpsc;

mod common;
use common::{batch, Backend};

/// The apps of the stub behind every relay here.
const APPS: &str = "[[apps]]\nid = \"demo\"\nkeys = [\"demo-key\"]\n";

fn forwarder(
    backend: &Backend,
    f: impl FnOnce(ForwarderConfig) -> ForwarderConfig,
) -> (Forwarder, mpsc::Receiver<RequestOutcome>) {
    let (tx, rx) = mpsc::channel(10_000);
    let config = f(ForwarderConfig::new(
        &backend.url,
        RelayId::new("relay-test"),
    ));
    let (fwd, _task) = Forwarder::spawn(config, reqwest::Client::new(), Some(tx));
    (fwd, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesces_concurrent_batches_and_stores_each_once() {
    let backend = Backend::start(APPS).await;
    let (fwd, mut outcomes) = forwarder(&backend, |c| c.with_linger(Duration::from_millis(5)));
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let fwd = fwd.clone();
            tokio::spawn(async move { fwd.forward(batch("demo", 3)).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Verdict::Stored);
    }
    let mut requests = 0;
    let mut carried = 0;
    // Outcomes are reported just after the callers are answered: wait for all of them.
    while carried < 500 {
        let o = tokio::time::timeout(Duration::from_secs(5), outcomes.recv())
            .await
            .expect("every request is reported")
            .unwrap();
        assert!(o.ok);
        requests += 1;
        carried += o.batches;
    }
    assert_eq!(carried, 500);
    assert!(
        requests <= 50,
        "500 concurrent batches took {requests} backend requests"
    );
    let s = backend.summary().await;
    assert_eq!(s["batches_stored"], 500);
    assert_eq!(s["events_unique"], 1500);
    backend.stop().await;
}

#[tokio::test]
async fn duplicates_count_as_stored_and_rejections_are_per_batch() {
    let backend = Backend::start(APPS).await;
    let (fwd, _) = forwarder(&backend, |c| c);
    let b = batch("demo", 2);
    assert_eq!(fwd.forward(b.clone()).await, Verdict::Stored);
    assert_eq!(
        fwd.forward(b).await,
        Verdict::Stored,
        "a resend is acknowledged"
    );
    match fwd.forward(batch("nobody", 1)).await {
        Verdict::Rejected { reason, .. } => assert_eq!(reason, RejectReason::Unauthorized),
        other => panic!("{other:?}"),
    }
    let mut bad = batch("demo", 2);
    bad.events[1].seq = 1;
    match fwd.forward(bad).await {
        Verdict::Rejected { reason, detail } => {
            assert_eq!(reason, RejectReason::Invalid);
            assert!(detail.contains("seq"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    let s = backend.summary().await;
    assert_eq!(s["batches_stored"], 1);
    assert_eq!(s["batches_duplicate"], 1);
    assert_eq!(s["batches_rejected"], 2);
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_faults_become_failures_that_are_safe_to_resend() {
    let backend = Backend::start(APPS).await;
    let (fwd, mut outcomes) = forwarder(&backend, |c| {
        c.with_request_timeout(Duration::from_millis(300))
    });
    let set = |f: Faults| backend.stub.set_faults(f);

    set(Faults {
        down: true,
        ..Faults::default()
    });
    assert!(matches!(
        fwd.forward(batch("demo", 1)).await,
        Verdict::Failed(ForwardError::Transport(_))
    ));

    set(Faults {
        throttle_retry_after_ms: Some(1500),
        ..Faults::default()
    });
    assert_eq!(
        fwd.forward(batch("demo", 1)).await,
        Verdict::Failed(ForwardError::Throttled {
            retry_after: Duration::from_millis(1500)
        })
    );

    set(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    assert!(matches!(
        fwd.forward(batch("demo", 1)).await,
        Verdict::Failed(ForwardError::Status { status: 503, .. })
    ));

    set(Faults {
        latency_ms: 1000,
        ..Faults::default()
    });
    assert_eq!(
        fwd.forward(batch("demo", 1)).await,
        Verdict::Failed(ForwardError::Timeout)
    );

    // The ack is lost after the backend stored the batch: the resend is a duplicate.
    set(Faults {
        ack_loss_rate: 1.0,
        ..Faults::default()
    });
    let b = batch("demo", 4);
    assert!(matches!(
        fwd.forward(b.clone()).await,
        Verdict::Failed(ForwardError::Status { status: 500, .. })
    ));
    set(Faults::default());
    assert_eq!(fwd.forward(b).await, Verdict::Stored);
    // Let the timed-out request finish on the backend before counting.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let s = backend.summary().await;
    assert_eq!(s["batches_duplicate"], 1);
    // The ack-lost batch once; the timed-out one is unknown by definition: stored if the
    // backend finished it, not if it abandoned the request when the relay hung up.
    let unique = s["events_unique"].as_u64().unwrap();
    assert!((4..=5).contains(&unique), "{unique}");
    let mut failed = 0;
    while let Ok(o) = outcomes.try_recv() {
        failed += usize::from(!o.ok);
    }
    assert_eq!(failed, 5, "every failed request is reported to the breaker");
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_fails_fast() {
    let backend = Backend::start(APPS).await;
    backend.stub.set_faults(Faults {
        latency_ms: 500,
        ..Faults::default()
    });
    let (tx, _rx) = mpsc::channel(100);
    let mut config = ForwarderConfig::new(&backend.url, RelayId::new("r"))
        .with_queue_capacity(1)
        .with_max_batches(1);
    config.max_in_flight = 1;
    let (fwd, _task) = Forwarder::spawn(config, reqwest::Client::new(), Some(tx));
    let mut handles = Vec::new();
    for _ in 0..6 {
        let fwd = fwd.clone();
        handles.push(tokio::spawn(
            async move { fwd.forward(batch("demo", 1)).await },
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut full = 0;
    let mut stored = 0;
    for h in handles {
        match h.await.unwrap() {
            Verdict::Failed(ForwardError::QueueFull) => full += 1,
            Verdict::Stored => stored += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(full >= 1, "no backpressure");
    assert!(stored >= 2);
    assert_eq!(full + stored, 6);
    backend.stop().await;
}

mod ingest {
    use super::*;
    use tern_protocol::{
        Auth, CodecConfig, Durability, IngestOutcome, IngestRequest, Message, NodeState, RelayNode,
        ShardMap, ShardMapRequest,
    };
    use tern_relay::apps::{AppEntry, AppRegistry};
    use tern_relay::ingest::{Ingest, IngestConfig};

    fn map() -> ShardMap {
        ShardMap {
            version: 7,
            nodes: vec![RelayNode {
                id: RelayId::new("relay-test"),
                quic_addr: "127.0.0.1:4433".into(),
                https_url: "https://127.0.0.1:8443".into(),
                weight: 1,
                state: NodeState::Active,
            }],
        }
    }

    async fn setup(backend: &Backend) -> Ingest {
        let client = reqwest::Client::new();
        let registry = AppRegistry::default();
        assert_eq!(
            registry.refresh(&client, &backend.url, None).await.unwrap(),
            1
        );
        let (fwd, _) = forwarder(backend, |c| {
            c.with_request_timeout(Duration::from_millis(500))
        });
        Ingest::new(IngestConfig::default(), registry, fwd, map())
    }

    fn request(app: &str, key: &str, batch: EventBatch) -> Vec<u8> {
        Message::IngestRequest(IngestRequest {
            auth: Auth {
                app_id: AppId::new(app),
                key: key.into(),
            },
            batch,
        })
        .encode(&CodecConfig::device())
        .unwrap()
    }

    async fn reply(ingest: &Ingest, frame: &[u8]) -> Message {
        Message::from_bytes(&ingest.handle_frame(frame).await, &CodecConfig::device()).unwrap()
    }

    async fn outcome(ingest: &Ingest, frame: &[u8]) -> IngestOutcome {
        match reply(ingest, frame).await {
            Message::IngestReply(r) => {
                assert_eq!(r.shard_map_version, 7);
                r.outcome
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledges_only_what_the_backend_stored() {
        let backend = Backend::start(APPS).await;
        let ingest = setup(&backend).await;
        let b = batch("demo", 5);
        assert_eq!(
            outcome(&ingest, &request("demo", "demo-key", b.clone())).await,
            IngestOutcome::Accepted {
                durability: Durability::Forwarded
            }
        );
        // A resend (lost reply) is acknowledged again and stored once.
        assert!(matches!(
            outcome(&ingest, &request("demo", "demo-key", b)).await,
            IngestOutcome::Accepted { .. }
        ));
        let s = backend.summary().await;
        assert_eq!(
            (s["batches_stored"].as_u64(), s["events_unique"].as_u64()),
            (Some(1), Some(5))
        );

        // Backend down: Retry, not an acknowledgement; nothing stored.
        backend.stub.set_faults(Faults {
            down: true,
            ..Faults::default()
        });
        assert_eq!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 1))).await,
            IngestOutcome::Retry { after_ms: 2000 }
        );
        backend.stub.set_faults(Faults {
            throttle_retry_after_ms: Some(750),
            ..Faults::default()
        });
        assert_eq!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 1))).await,
            IngestOutcome::Retry { after_ms: 750 }
        );
        backend.stub.set_faults(Faults::default());
        let c = ingest.counters();
        assert_eq!(
            c.accepted_forwarded
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert_eq!(c.retried.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(backend.summary().await["batches_stored"], 1);
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_bad_requests_without_forwarding_and_keeps_serving() {
        let backend = Backend::start(APPS).await;
        let ingest = setup(&backend).await;
        let rejected = |o: IngestOutcome| match o {
            IngestOutcome::Rejected { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            rejected(outcome(&ingest, &request("demo", "wrong", batch("demo", 1))).await),
            RejectReason::Unauthorized
        );
        assert_eq!(
            rejected(outcome(&ingest, &request("nope", "demo-key", batch("nope", 1))).await),
            RejectReason::Unauthorized
        );
        assert_eq!(
            rejected(outcome(&ingest, &request("demo", "demo-key", batch("other", 1))).await),
            RejectReason::AppMismatch
        );
        let mut invalid = batch("demo", 2);
        invalid.events[0].body = EventBody::Custom {
            name: " bad name".into(),
            props: Default::default(),
        };
        assert_eq!(
            rejected(outcome(&ingest, &request("demo", "demo-key", invalid)).await),
            RejectReason::Invalid
        );
        assert_eq!(
            rejected(outcome(&ingest, &request("demo", "demo-key", batch("demo", 1001))).await),
            RejectReason::TooLarge
        );
        // Frames that are not requests at all.
        for (frame, want) in [
            (b"garbage".to_vec(), RejectReason::TooLarge), // "garb" is a huge length
            (
                vec![0, 0, 0, 5, 0x01, 0, 0xc1, 0xc1, 0xc1],
                RejectReason::Malformed,
            ),
            (vec![0, 0, 0, 2, 0x42, 0], RejectReason::UnsupportedMessage),
            (vec![0xff, 0xff, 0xff, 0xff, 1, 0], RejectReason::TooLarge),
        ] {
            match reply(&ingest, &frame).await {
                Message::ErrorReply(e) => assert_eq!(e.reason, want),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            backend.summary().await["batches_received"],
            0,
            "nothing reached the backend"
        );
        // Still serving.
        assert!(matches!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 1))).await,
            IngestOutcome::Accepted { .. }
        ));
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rate_limits_and_blocks_answer_retry_with_a_useful_wait() {
        use tern_relay::ratelimit::{Rate, RateLimiterConfig};
        let backend = Backend::start(APPS).await;
        let client = reqwest::Client::new();
        let registry = AppRegistry::default();
        registry.refresh(&client, &backend.url, None).await.unwrap();
        let (fwd, _) = forwarder(&backend, |c| c);
        let mut config = IngestConfig::default();
        config.rate_limit = RateLimiterConfig::default().with_default_limit(Rate::new(10, 10));
        let ingest = Ingest::new(config, registry, fwd, map());
        assert!(matches!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 8))).await,
            IngestOutcome::Accepted { .. }
        ));
        // 2 tokens left, 8 needed at 10/s: at most 600 ms; waiting that long is enough.
        let again = batch("demo", 8);
        let after_ms = match outcome(&ingest, &request("demo", "demo-key", again.clone())).await {
            IngestOutcome::Retry { after_ms } => after_ms,
            other => panic!("{other:?}"),
        };
        assert!((1..=600).contains(&after_ms), "{after_ms}");
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        assert!(matches!(
            outcome(&ingest, &request("demo", "demo-key", again)).await,
            IngestOutcome::Accepted { .. }
        ));
        // A batch larger than the burst still passes once the bucket is full.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(matches!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 50))).await,
            IngestOutcome::Accepted { .. }
        ));
        // An operator block: devices keep their data and come back much later.
        ingest.set_app_limit(AppId::new("demo"), Some(Rate::BLOCKED));
        assert_eq!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 1))).await,
            IngestOutcome::Retry { after_ms: 300_000 }
        );
        ingest.set_app_limit(AppId::new("demo"), None);
        assert_eq!(backend.summary().await["batches_stored"], 3);
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_breaker_spares_the_backend_then_probes_and_closes() {
        use tern_relay::breaker::{BreakerConfig, BreakerState, Override};
        let backend = Backend::start(APPS).await;
        let client = reqwest::Client::new();
        let registry = AppRegistry::default();
        registry.refresh(&client, &backend.url, None).await.unwrap();
        let (fwd, mut requests) = forwarder(&backend, |c| c);
        let mut config = IngestConfig::default();
        config.breaker = BreakerConfig::default()
            .with_min_requests(3)
            .with_open_for(Duration::from_millis(400))
            .with_probes_to_close(1);
        let ingest = Ingest::new(config, registry, fwd, map());
        backend.stub.set_faults(Faults {
            error_rate: 1.0,
            ..Faults::default()
        });
        for _ in 0..3 {
            assert_eq!(
                outcome(&ingest, &request("demo", "demo-key", batch("demo", 1))).await,
                IngestOutcome::Retry { after_ms: 2000 }
            );
        }
        assert!(matches!(ingest.breaker_state(), BreakerState::Open { .. }));
        // The forwarder reports each request's outcome just after answering its caller:
        // wait for the three failed requests to be reported before looking for a fourth.
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(5), requests.recv())
                .await
                .expect("failed request reported")
                .unwrap();
        }
        // Open: answered at once, the backend is not called.
        match outcome(&ingest, &request("demo", "demo-key", batch("demo", 1))).await {
            IngestOutcome::Retry { after_ms } => assert!(after_ms <= 400, "{after_ms}"),
            other => panic!("{other:?}"),
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), requests.recv())
                .await
                .is_err(),
            "the backend was called while open"
        );
        // The backend recovers; after the open time a probe succeeds and closes it.
        backend.stub.set_faults(Faults::default());
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(matches!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 2))).await,
            IngestOutcome::Accepted { .. }
        ));
        assert_eq!(ingest.breaker_state(), BreakerState::Closed);
        // Operator override.
        ingest.set_breaker_override(Some(Override::ForceOpen));
        assert!(matches!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 1))).await,
            IngestOutcome::Retry { .. }
        ));
        ingest.set_breaker_override(None);
        let c = ingest.counters();
        assert_eq!(c.breaker_open.load(std::sync::atomic::Ordering::Relaxed), 2);
        backend.stop().await;
    }

    #[tokio::test]
    async fn an_unloaded_registry_says_retry_never_unauthorized() {
        let backend = Backend::start(APPS).await;
        let (fwd, _) = forwarder(&backend, |c| c);
        let not_loaded = Ingest::new(
            IngestConfig::default(),
            AppRegistry::default(),
            fwd.clone(),
            map(),
        );
        assert!(matches!(
            outcome(&not_loaded, &request("demo", "demo-key", batch("demo", 1))).await,
            IngestOutcome::Retry { .. }
        ));
        let loaded_empty = Ingest::new(
            IngestConfig::default(),
            AppRegistry::new(vec![]),
            fwd,
            map(),
        );
        assert!(matches!(
            outcome(
                &loaded_empty,
                &request("demo", "demo-key", batch("demo", 1))
            )
            .await,
            IngestOutcome::Rejected {
                reason: RejectReason::Unauthorized,
                ..
            }
        ));
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn misrouted_batches_are_accepted_and_counted() {
        let backend = Backend::start(APPS).await;
        let client = reqwest::Client::new();
        let registry = AppRegistry::default();
        registry.refresh(&client, &backend.url, None).await.unwrap();
        let (fwd, _) = forwarder(&backend, |c| c);
        let mut two = map();
        let mut other = two.nodes[0].clone();
        other.id = RelayId::new("relay-other");
        two.nodes.push(other);
        let ingest = Ingest::new(IngestConfig::default(), registry, fwd, two.clone())
            .with_relay_id(RelayId::new("relay-test"));
        let mut expected = 0;
        for u in 0..40 {
            let mut b = batch("demo", 1);
            let user = format!("user-{u}");
            b.events[0].user_id = Some(tern_protocol::UserId::new(&user));
            let owner = tern_protocol::routing::owner(&two, &AppId::new("demo"), &user).unwrap();
            expected += u64::from(owner.id.as_str() != "relay-test");
            assert!(matches!(
                outcome(&ingest, &request("demo", "demo-key", b)).await,
                IngestOutcome::Accepted { .. }
            ));
        }
        assert!(expected > 0 && expected < 40);
        assert_eq!(
            ingest
                .counters()
                .misrouted
                .load(std::sync::atomic::Ordering::Relaxed),
            expected
        );
        backend.stop().await;
    }

    #[tokio::test]
    async fn serves_the_shard_map_to_authenticated_devices() {
        let backend = Backend::start(APPS).await;
        let ingest = setup(&backend).await;
        let ask = |key: &str, known| {
            Message::ShardMapRequest(ShardMapRequest {
                auth: Auth {
                    app_id: AppId::new("demo"),
                    key: key.into(),
                },
                known_version: known,
            })
            .encode(&CodecConfig::device())
            .unwrap()
        };
        match reply(&ingest, &ask("demo-key", 3)).await {
            Message::ShardMapReply(r) => assert_eq!(r.map.unwrap().version, 7),
            other => panic!("{other:?}"),
        }
        match reply(&ingest, &ask("demo-key", 7)).await {
            Message::ShardMapReply(r) => assert!(r.map.is_none()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            reply(&ingest, &ask("bad", 0)).await,
            Message::ErrorReply(_)
        ));
        let _unused = AppEntry {
            app_id: AppId::new("x"),
            keys: vec![],
        };
        backend.stop().await;
    }
}

mod listeners {
    use super::*;
    use std::net::SocketAddr;
    use tern_protocol::{
        Auth, CodecConfig, Durability, IngestOutcome, IngestRequest, Message, ALPN,
        FRAME_CONTENT_TYPE, HTTP_RPC_PATH,
    };
    use tern_relay::tls::client_config;

    struct Relay {
        quic: SocketAddr,
        https: SocketAddr,
        ca_pem: String,
        relay: common::InProcess,
    }

    /// A relay through `Relay::start` (the binary's wiring), in-process.
    async fn start_relay(backend: &Backend) -> Relay {
        let relay = common::InProcess::start(&backend.url).await;
        Relay {
            quic: relay.running.addrs.quic,
            https: relay.running.addrs.https,
            ca_pem: relay.ca_pem.clone(),
            relay,
        }
    }

    async fn quic_client(relay: &Relay, alpn: &[u8]) -> Result<quinn::Connection, String> {
        let tls = client_config(&relay.ca_pem, &[alpn]).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        ep.connect(relay.quic, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    }

    async fn roundtrip(conn: &quinn::Connection, frame: &[u8]) -> Message {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let _ = send.write_all(frame).await;
        let _ = send.finish();
        let reply = recv.read_to_end(1 << 20).await.unwrap();
        Message::from_bytes(&reply, &CodecConfig::device()).unwrap()
    }

    fn ingest_frame(batch: EventBatch) -> Vec<u8> {
        Message::IngestRequest(IngestRequest {
            auth: Auth {
                app_id: AppId::new("demo"),
                key: "demo-key".into(),
            },
            batch,
        })
        .encode(&CodecConfig::device())
        .unwrap()
    }

    fn accepted(m: Message) -> bool {
        matches!(
            m,
            Message::IngestReply(tern_protocol::IngestReply {
                outcome: IngestOutcome::Accepted {
                    durability: Durability::Forwarded
                },
                ..
            })
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic_serves_requests_and_survives_bad_ones() {
        let backend = Backend::start(APPS).await;
        let relay = start_relay(&backend).await;
        let conn = quic_client(&relay, ALPN).await.unwrap();
        // Many requests on one connection, concurrently.
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let conn = conn.clone();
                tokio::spawn(async move { roundtrip(&conn, &ingest_frame(batch("demo", 4))).await })
            })
            .collect();
        for t in tasks {
            assert!(accepted(t.await.unwrap()));
        }
        // Garbage, then an oversized request: error replies, and the connection lives on.
        match roundtrip(&conn, &[0, 0, 0, 5, 0x01, 0, 0xc1, 0xc1, 0xc1]).await {
            Message::ErrorReply(e) => assert_eq!(e.reason, RejectReason::Malformed),
            other => panic!("{other:?}"),
        }
        match roundtrip(&conn, &vec![0u8; 1_200_000]).await {
            Message::ErrorReply(e) => assert_eq!(e.reason, RejectReason::TooLarge),
            other => panic!("{other:?}"),
        }
        assert!(accepted(
            roundtrip(&conn, &ingest_frame(batch("demo", 1))).await
        ));
        assert_eq!(backend.summary().await["batches_stored"], 51);
        relay.relay.running.kill();
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic_requires_the_protocol_alpn() {
        let backend = Backend::start(APPS).await;
        let relay = start_relay(&backend).await;
        let err = quic_client(&relay, b"tern/99").await.unwrap_err();
        assert!(
            err.to_lowercase().contains("alpn")
                || err.contains("no_application_protocol")
                || err.contains("120"),
            "{err}"
        );
        relay.relay.running.kill();
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn https_serves_the_same_requests() {
        let backend = Backend::start(APPS).await;
        let relay = start_relay(&backend).await;
        let tls = client_config(&relay.ca_pem, &[b"h2", b"http/1.1"]).unwrap();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap();
        let url = format!("https://localhost:{}{}", relay.https.port(), HTTP_RPC_PATH);
        let post = |body: Vec<u8>| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let resp = client
                    .post(&url)
                    .header("content-type", FRAME_CONTENT_TYPE)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                Message::from_bytes(&resp.bytes().await.unwrap(), &CodecConfig::device()).unwrap()
            }
        };
        let b = batch("demo", 3);
        assert!(accepted(post(ingest_frame(b.clone())).await));
        assert!(
            accepted(post(ingest_frame(b)).await),
            "resend acknowledged again"
        );
        match post(b"nonsense".to_vec()).await {
            Message::ErrorReply(_) => {}
            other => panic!("{other:?}"),
        }
        let s = backend.summary().await;
        assert_eq!(
            (
                s["batches_stored"].as_u64(),
                s["batches_duplicate"].as_u64()
            ),
            (Some(1), Some(1))
        );
        relay.relay.running.kill();
        backend.stop().await;
    }
}

mod binary {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use tern_protocol::{Auth, CodecConfig, IngestOutcome, IngestRequest, Message, ALPN};

    fn ready_line(child: &mut std::process::Child) -> serde_json::Value {
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad ready line {line:?}: {e}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_binary_serves_quic_and_stops_cleanly_on_sigterm() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern-relay"))
            .args([
                "--dev",
                "--quic-listen",
                "127.0.0.1:0",
                "--https-listen",
                "127.0.0.1:0",
            ])
            .arg("--dev-ca-out")
            .arg(&ca)
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--backend-url", &backend.url, "--relay-id", "relay-bin"])
            .arg("--spool-dir")
            .arg(dir.path().join("spool"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let ready = ready_line(&mut child);
        assert_eq!(ready["event"], "ready");
        let quic: std::net::SocketAddr = ready["quic"].as_str().unwrap().parse().unwrap();
        let pem = std::fs::read_to_string(&ca).unwrap();
        let tls = tern_relay::tls::client_config(&pem, &[ALPN]).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = ep.connect(quic, "localhost").unwrap().await.unwrap();
        let frame = Message::IngestRequest(IngestRequest {
            auth: Auth {
                app_id: AppId::new("demo"),
                key: "demo-key".into(),
            },
            batch: batch("demo", 3),
        })
        .encode(&CodecConfig::device())
        .unwrap();
        // The registry loads in the background: until then the relay says Retry (it
        // must never reject a device for an app it simply has not heard of yet).
        let mut accepted = false;
        for _ in 0..100 {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&frame).await.unwrap();
            send.finish().unwrap();
            let reply = recv.read_to_end(1 << 20).await.unwrap();
            match Message::from_bytes(&reply, &CodecConfig::device()).unwrap() {
                Message::IngestReply(r) => match r.outcome {
                    IngestOutcome::Accepted { .. } => {
                        accepted = true;
                        break;
                    }
                    IngestOutcome::Retry { .. } => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        }
        assert!(accepted);
        assert_eq!(backend.summary().await["batches_stored"], 1);
        // Operability endpoints.
        let metrics_url = format!("http://{}", ready["metrics"].as_str().unwrap());
        let get = |path: &str| reqwest::get(format!("{metrics_url}{path}"));
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        let text = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(
            text.contains("tern_relay_batches_total{outcome=\"accepted_forwarded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tern_relay_events_accepted_total 3"),
            "{text}"
        );
        assert!(text.contains("tern_relay_breaker_state 0"), "{text}");
        assert!(
            text.contains(
                "tern_relay_ingest_duration_seconds_count{outcome=\"accepted_forwarded\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tern_relay_connections{transport=\"quic\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tern_relay_ingest_duration_seconds_bucket"),
            "latency is a histogram: {text}"
        );
        assert!(
            text.contains("tern_relay_events_total{outcome=\"accepted_forwarded\"} 3"),
            "{text}"
        );
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(exit.success(), "{exit}");
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_shard_map_reloads_on_sighup() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        let map_file = dir.path().join("shard-map.json");
        let write_map = |version: u64| {
            std::fs::write(
                &map_file,
                format!(
                    r#"{{"version":{version},"nodes":[{{"id":"relay-bin","quic_addr":"127.0.0.1:1","https_url":"https://127.0.0.1:2","weight":1,"state":"active"}}]}}"#
                ),
            )
            .unwrap()
        };
        write_map(1);
        let ca = dir.path().join("ca.pem");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern-relay"))
            .args([
                "--dev",
                "--quic-listen",
                "127.0.0.1:0",
                "--https-listen",
                "127.0.0.1:0",
            ])
            .args(["--metrics-listen", "127.0.0.1:0", "--relay-id", "relay-bin"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--backend-url", &backend.url])
            .arg("--dev-ca-out")
            .arg(&ca)
            .arg("--spool-dir")
            .arg(dir.path().join("spool"))
            .arg("--shard-map")
            .arg(&map_file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let ready = ready_line(&mut child);
        let quic: std::net::SocketAddr = ready["quic"].as_str().unwrap().parse().unwrap();
        let tls = tern_relay::tls::client_config(&std::fs::read_to_string(&ca).unwrap(), &[ALPN])
            .unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        )));
        let conn = ep.connect(quic, "localhost").unwrap().await.unwrap();
        let frame = Message::ShardMapRequest(tern_protocol::ShardMapRequest {
            auth: Auth {
                app_id: AppId::new("demo"),
                key: "demo-key".into(),
            },
            known_version: 0,
        })
        .encode(&CodecConfig::device())
        .unwrap();
        let version = |conn: quinn::Connection, frame: Vec<u8>| async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&frame).await.unwrap();
            send.finish().unwrap();
            match Message::from_bytes(
                &recv.read_to_end(1 << 20).await.unwrap(),
                &CodecConfig::device(),
            )
            .unwrap()
            {
                Message::ShardMapReply(r) => Some(r.shard_map_version),
                _ => None, // registry not loaded yet
            }
        };
        let mut seen = None;
        for _ in 0..100 {
            seen = version(conn.clone(), frame.clone()).await;
            if seen.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen, Some(1));
        write_map(2);
        let _ = Command::new("kill")
            .arg("-HUP")
            .arg(child.id().to_string())
            .status();
        let mut reloaded = false;
        for _ in 0..100 {
            if version(conn.clone(), frame.clone()).await == Some(2) {
                reloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(reloaded, "shard map not reloaded");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let exit = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(exit.success(), "{exit}");
        backend.stop().await;
    }

    #[test]
    fn a_bad_setting_exits_non_zero_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, "quic_listen = \"nowhere\"\n[tls]\ndev = true\n").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tern-relay"))
            // Default directories (spool fallback, config cache) land in the temp dir.
            .current_dir(dir.path())
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("relay.toml"), "{err}");
        let out = Command::new(env!("CARGO_BIN_EXE_tern-relay"))
            // Default directories (spool fallback, config cache) land in the temp dir.
            .current_dir(dir.path())
            .env("TERN_RELAY_QUIC_LISTEN", "nowhere")
            .arg("--dev")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("TERN_RELAY_QUIC_LISTEN"));
    }
}

mod spool {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::{ObjectStore, ObjectStoreExt};
    use tern_protocol::{
        Auth, CodecConfig, Durability, IngestOutcome, IngestRequest, Message, ShardMap,
    };
    use tern_relay::apps::AppRegistry;
    use tern_relay::breaker::BreakerConfig;
    use tern_relay::ingest::{Ingest, IngestConfig};
    use tern_relay::replay::{ReplayConfig, Replayer};
    use tern_relay::spool::{list_oldest, prefix_of, Spool, SpoolConfig};
    use tokio::sync::watch;

    struct Relay {
        ingest: Ingest,
        forwarder: Forwarder,
        store: Arc<dyn ObjectStore>,
    }

    async fn relay(backend: &Backend, dir: &std::path::Path) -> Relay {
        relay_named(backend, dir, "relay-test").await
    }

    async fn relay_named(backend: &Backend, dir: &std::path::Path, id: &str) -> Relay {
        let client = reqwest::Client::new();
        let registry = AppRegistry::default();
        registry.refresh(&client, &backend.url, None).await.unwrap();
        let (forwarder, _) = forwarder(backend, |c| {
            c.with_request_timeout(Duration::from_millis(500))
        });
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap());
        let (spool, _) = Spool::spawn(store.clone(), RelayId::new(id), SpoolConfig::default());
        let mut config = IngestConfig::default();
        config.breaker = BreakerConfig::default()
            .with_min_requests(3)
            .with_open_for(Duration::from_millis(300))
            .with_probes_to_close(1);
        let ingest =
            Ingest::new(config, registry, forwarder.clone(), ShardMap::default()).with_spool(spool);
        Relay {
            ingest,
            forwarder,
            store,
        }
    }

    fn frame(b: EventBatch) -> Vec<u8> {
        Message::IngestRequest(IngestRequest {
            auth: Auth {
                app_id: AppId::new("demo"),
                key: "demo-key".into(),
            },
            batch: b,
        })
        .encode(&CodecConfig::device())
        .unwrap()
    }

    async fn send_all(ingest: &Ingest, n: usize) -> Vec<IngestOutcome> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let ingest = ingest.clone();
                tokio::spawn(async move {
                    let reply = ingest.handle_frame(&frame(batch("demo", 5))).await;
                    match Message::from_bytes(&reply, &CodecConfig::device()).unwrap() {
                        Message::IngestReply(r) => r.outcome,
                        other => panic!("{other:?}"),
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    fn start_replayer(r: &Relay) -> watch::Sender<bool> {
        let (stop, stopped) = watch::channel(false);
        let replayer = Replayer::new(
            r.store.clone(),
            prefix_of(&RelayId::new("relay-test")),
            r.forwarder.clone(),
            r.ingest.breaker().clone(),
            ReplayConfig::default(),
        );
        tokio::spawn(replayer.run(stopped));
        stop
    }

    async fn wait_stored(backend: &Backend, n: u64) -> serde_json::Value {
        for _ in 0..400 {
            let s = backend.summary().await;
            if s["batches_stored"].as_u64() == Some(n) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not all batches replayed: {}", backend.summary().await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backend_outage_is_spooled_then_replayed_exactly_once() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        let r = relay(&backend, dir.path()).await;
        backend.stub.set_faults(Faults {
            down: true,
            ..Faults::default()
        });
        let outcomes = send_all(&r.ingest, 200).await;
        for o in &outcomes {
            assert_eq!(
                *o,
                IngestOutcome::Accepted {
                    durability: Durability::Spooled
                }
            );
        }
        assert_eq!(backend.summary().await["batches_stored"], 0);
        let prefix = prefix_of(&RelayId::new("relay-test"));
        let objects = list_oldest(r.store.as_ref(), &prefix).await.unwrap().len();
        assert!(
            (1..200).contains(&objects),
            "group commit: {objects} objects for 200 batches"
        );

        // The backend recovers: the breaker closes on a probe, the replayer drains.
        backend.stub.set_faults(Faults::default());
        let stop = start_replayer(&r);
        tokio::time::sleep(Duration::from_millis(350)).await;
        // A live request probes and closes the breaker.
        assert!(matches!(
            send_all(&r.ingest, 1).await[0],
            IngestOutcome::Accepted { .. }
        ));
        let s = wait_stored(&backend, 201).await;
        // Exactly once in effect: every event stored once. A replayed batch whose
        // forward timed out on a loaded machine may be sent again under its own batch
        // id (at least once, by design); the backend suppresses it as a duplicate batch
        // — never as a new event.
        assert_eq!(s["events_unique"], 1005, "{s}");
        assert_eq!(s["events_duplicate"], 0, "{s}");
        assert_eq!(s["sequence_gaps"], 0, "{s}");
        for _ in 0..100 {
            if list_oldest(r.store.as_ref(), &prefix)
                .await
                .unwrap()
                .is_empty()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            list_oldest(r.store.as_ref(), &prefix)
                .await
                .unwrap()
                .is_empty(),
            "spool drained"
        );
        let c = r.ingest.counters();
        let acked = c
            .accepted_forwarded
            .load(std::sync::atomic::Ordering::Relaxed)
            + c.accepted_spooled
                .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            acked, 201,
            "conservation: every acknowledgement is forwarded or spooled"
        );
        let _ = stop.send(true);
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_resumes_in_a_new_relay_instance() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        {
            let r = relay(&backend, dir.path()).await;
            backend.stub.set_faults(Faults {
                down: true,
                ..Faults::default()
            });
            for o in send_all(&r.ingest, 50).await {
                assert!(matches!(o, IngestOutcome::Accepted { .. }));
            }
        }
        backend.stub.set_faults(Faults::default());
        // A new relay over the same spool directory (a restart) replays it.
        let r = relay(&backend, dir.path()).await;
        let stop = start_replayer(&r);
        let s = wait_stored(&backend, 50).await;
        assert_eq!(s["events_unique"], 250);
        let _ = stop.send(true);
        backend.stop().await;
    }

    /// Lists every file left under `spool/` (objects and lease files).
    async fn leftovers(store: &dyn ObjectStore) -> Vec<String> {
        use futures_util::TryStreamExt;
        store
            .list(Some(&object_store::path::Path::from("spool")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_relay_takes_over_a_dead_relays_spool_under_leases() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        // relay-a spools during an outage, then dies (is dropped) without replaying.
        {
            let a = relay_named(&backend, dir.path(), "relay-a").await;
            backend.stub.set_faults(Faults {
                down: true,
                ..Faults::default()
            });
            for o in send_all(&a.ingest, 120).await {
                assert_eq!(
                    o,
                    IngestOutcome::Accepted {
                        durability: Durability::Spooled
                    }
                );
            }
        }
        backend.stub.set_faults(Faults::default());
        // Two live relays sharing the store both take over relay-a's prefix at once:
        // the leases keep them off each other's objects.
        let b = relay_named(&backend, dir.path(), "relay-b").await;
        let c = relay_named(&backend, dir.path(), "relay-c").await;
        let mut stops = Vec::new();
        for (r, id) in [(&b, "relay-b"), (&c, "relay-c")] {
            let (stop, stopped) = watch::channel(false);
            let replayer = Replayer::new(
                r.store.clone(),
                prefix_of(&RelayId::new(id)),
                r.forwarder.clone(),
                r.ingest.breaker().clone(),
                ReplayConfig::default()
                    .with_takeover_after(Some(Duration::ZERO))
                    .with_idle_poll(Duration::from_millis(20)),
            );
            tokio::spawn(replayer.run(stopped));
            stops.push(stop);
        }
        let s = wait_stored(&backend, 120).await;
        assert_eq!(s["events_unique"], 600);
        // Wait for the deletes (they follow the backend's acks).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !leftovers(b.store.as_ref()).await.is_empty() && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            leftovers(b.store.as_ref()).await,
            Vec::<String>::new(),
            "objects and their leases are deleted"
        );
        let s = backend.summary().await;
        assert_eq!(s["batches_stored"], 120);
        // Duplicates are harmless (deduped) but the leases should have prevented them.
        assert_eq!(s["batches_duplicate"], 0, "{s}");
        for stop in stops {
            let _ = stop.send(true);
        }
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_takeover_a_relay_leaves_other_prefixes_alone() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        {
            let a = relay_named(&backend, dir.path(), "relay-a").await;
            backend.stub.set_faults(Faults {
                down: true,
                ..Faults::default()
            });
            send_all(&a.ingest, 10).await;
        }
        backend.stub.set_faults(Faults::default());
        let b = relay_named(&backend, dir.path(), "relay-b").await;
        let replayer = Replayer::new(
            b.store.clone(),
            prefix_of(&RelayId::new("relay-b")),
            b.forwarder.clone(),
            b.ingest.breaker().clone(),
            ReplayConfig::default(),
        );
        let mut pacer = tern_relay::pacer::ReplayPacer::new(
            tern_relay::pacer::PacerConfig::default(),
            std::time::Instant::now(),
        );
        let pass = replayer.pass(&mut pacer).await.unwrap();
        assert_eq!(pass.objects, 0);
        // With takeover, objects younger than the threshold are left to their owner.
        let replayer = Replayer::new(
            b.store.clone(),
            prefix_of(&RelayId::new("relay-b")),
            b.forwarder.clone(),
            b.ingest.breaker().clone(),
            ReplayConfig::default().with_takeover_after(Some(Duration::from_secs(3600))),
        );
        assert_eq!(replayer.pass(&mut pacer).await.unwrap().objects, 0);
        assert_eq!(backend.summary().await["batches_stored"], 0);
        let a_prefix = prefix_of(&RelayId::new("relay-a"));
        assert!(!list_oldest(b.store.as_ref(), &a_prefix)
            .await
            .unwrap()
            .is_empty());
        // relay-a drained and handed its prefix over: taken over at once, whatever
        // the threshold.
        tern_relay::spool::write_handover(b.store.as_ref(), &a_prefix, &RelayId::new("relay-a"))
            .await
            .unwrap();
        let pass = replayer.pass(&mut pacer).await.unwrap();
        assert!(
            pass.objects > 0 && pass.taken_over == pass.objects,
            "{pass:?}"
        );
        assert_eq!(backend.summary().await["batches_stored"], 10);
        assert!(list_oldest(b.store.as_ref(), &a_prefix)
            .await
            .unwrap()
            .is_empty());
        // relay-a comes back: it withdraws the marker.
        tern_relay::spool::clear_handover(b.store.as_ref(), &a_prefix)
            .await
            .unwrap();
        assert!(b
            .store
            .head(&tern_relay::spool::handover_marker(&a_prefix))
            .await
            .is_err());
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backend_and_spool_both_down_means_retry() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool-root");
        std::fs::create_dir(&spool_dir).unwrap();
        let r = relay(&backend, &spool_dir).await;
        // The spool's storage disappears: a file where its directory was.
        std::fs::remove_dir_all(&spool_dir).unwrap();
        std::fs::write(&spool_dir, b"not a directory").unwrap();
        backend.stub.set_faults(Faults {
            down: true,
            ..Faults::default()
        });
        for o in send_all(&r.ingest, 5).await {
            assert!(matches!(o, IngestOutcome::Retry { .. }), "{o:?}");
        }
        let c = r.ingest.counters();
        assert_eq!(
            c.accepted_spooled
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        assert_eq!(
            c.accepted_forwarded
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        backend.stop().await;
    }
}

/// The spool against a real S3-compatible server (`s3s-fs`, started on loopback by the
/// test). `scripts/test.sh` installs it into the tool cache and sets `TERN_S3S_FS`; without it these tests fail
/// (they never skip).
mod s3 {
    use super::*;
    use object_store::aws::AmazonS3Builder;
    use object_store::ObjectStore;
    use std::process::{Child, Command, Stdio};
    use tern_protocol::{
        Auth, CodecConfig, Durability, IngestOutcome, IngestRequest, Message, ShardMap,
    };
    use tern_relay::apps::AppRegistry;
    use tern_relay::ingest::{Ingest, IngestConfig};
    use tern_relay::replay::{ReplayConfig, Replayer};
    use tern_relay::spool::{list_oldest, prefix_of, Spool, SpoolConfig};

    const KEY: &str = "tern-test-access";
    const SECRET: &str = "tern-test-secret-0123456789";

    struct S3 {
        child: Child,
        url: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for S3 {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn s3s_fs() -> std::path::PathBuf {
        if let Some(p) = std::env::var_os("TERN_S3S_FS") {
            return p.into();
        }
        let cache = std::env::var_os("TERN_TOOLS_DIR")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(std::path::PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache"))
                    })
                    .map(|c| c.join("tern-tools"))
            })
            .unwrap_or_default();
        let local = cache.join("bin/s3s-fs");
        if local.exists() {
            return local;
        }
        panic!(
            "s3s-fs not found (looked at $TERN_S3S_FS and {}): run scripts/test.sh, which installs it",
            local.display()
        );
    }

    async fn start_s3() -> S3 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tern-spool")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return S3 {
                    child,
                    url: format!("http://127.0.0.1:{port}"),
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("s3s-fs did not start");
    }

    fn store(s3: &S3, secret: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&s3.url)
                .with_bucket_name("tern-spool")
                .with_region("us-east-1")
                .with_access_key_id(KEY)
                .with_secret_access_key(secret)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .build()
                .unwrap(),
        )
    }

    async fn relay(backend: &Backend, store: Arc<dyn ObjectStore>) -> (Ingest, Forwarder) {
        let client = reqwest::Client::new();
        let registry = AppRegistry::default();
        registry.refresh(&client, &backend.url, None).await.unwrap();
        let (forwarder, _) = forwarder(backend, |c| {
            c.with_request_timeout(Duration::from_millis(500))
        });
        let (spool, _) = Spool::spawn(store, RelayId::new("relay-s3"), SpoolConfig::default());
        let ingest = Ingest::new(
            IngestConfig::default(),
            registry,
            forwarder.clone(),
            ShardMap::default(),
        )
        .with_spool(spool);
        (ingest, forwarder)
    }

    async fn send(ingest: &Ingest, n: usize) -> Vec<IngestOutcome> {
        let mut out = Vec::new();
        for _ in 0..n {
            let frame = Message::IngestRequest(IngestRequest {
                auth: Auth {
                    app_id: AppId::new("demo"),
                    key: "demo-key".into(),
                },
                batch: batch("demo", 4),
            })
            .encode(&CodecConfig::device())
            .unwrap();
            match Message::from_bytes(&ingest.handle_frame(&frame).await, &CodecConfig::device())
                .unwrap()
            {
                Message::IngestReply(r) => out.push(r.outcome),
                other => panic!("{other:?}"),
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spool_list_replay_and_delete_on_s3() {
        let s3 = start_s3().await;
        let backend = Backend::start(APPS).await;
        let store = store(&s3, SECRET);
        let (ingest, forwarder) = relay(&backend, store.clone()).await;
        backend.stub.set_faults(Faults {
            down: true,
            ..Faults::default()
        });
        for o in send(&ingest, 30).await {
            assert_eq!(
                o,
                IngestOutcome::Accepted {
                    durability: Durability::Spooled
                }
            );
        }
        let prefix = prefix_of(&RelayId::new("relay-s3"));
        let listed = list_oldest(store.as_ref(), &prefix).await.unwrap();
        assert!(!listed.is_empty(), "objects listed on S3");
        backend.stub.set_faults(Faults::default());
        let replayer = Replayer::new(
            store.clone(),
            prefix.clone(),
            forwarder,
            ingest.breaker().clone(),
            ReplayConfig::default(),
        );
        let mut pacer =
            tern_relay::pacer::ReplayPacer::new(Default::default(), std::time::Instant::now());
        let mut replayed = 0;
        for _ in 0..50 {
            replayed += replayer.pass(&mut pacer).await.unwrap().batches;
            if list_oldest(store.as_ref(), &prefix)
                .await
                .unwrap()
                .is_empty()
            {
                break;
            }
        }
        assert_eq!(replayed, 30);
        assert!(
            list_oldest(store.as_ref(), &prefix)
                .await
                .unwrap()
                .is_empty(),
            "deleted after replay"
        );
        let s = backend.summary().await;
        assert_eq!(
            (s["batches_stored"].as_u64(), s["events_unique"].as_u64()),
            (Some(30), Some(120))
        );
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_s3_write_is_never_acknowledged() {
        let s3 = start_s3().await;
        let backend = Backend::start(APPS).await;
        // Wrong secret: the server checks signatures, every PUT fails.
        let (ingest, _) = relay(&backend, store(&s3, "wrong-secret")).await;
        backend.stub.set_faults(Faults {
            down: true,
            ..Faults::default()
        });
        for o in send(&ingest, 3).await {
            assert!(matches!(o, IngestOutcome::Retry { .. }), "{o:?}");
        }
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_binary_spools_to_s3_from_its_config() {
        let s3 = start_s3().await;
        let backend = Backend::start(APPS).await;
        backend.stub.set_faults(Faults {
            down: true,
            ..Faults::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let relay = RelayBin::start(
            &format!(
                "relay_id = \"relay-s3bin\"\nbackend_url = \"{}\"\n[tls]\ndev = true\n[spool_s3]\nendpoint = \"{}\"\nbucket = \"tern-spool\"\nregion = \"us-east-1\"\naccess_key_id = \"{KEY}\"\nallow_http = true\n",
                backend.url, s3.url
            ),
            dir.path(),
            &[],
        )
        .await;
        // The registry loads in the background (until then: Retry, never Rejected).
        relay.wait_registry().await;
        assert_eq!(
            relay.send(batch("demo", 2)).await,
            IngestOutcome::Accepted {
                durability: Durability::Spooled
            }
        );
        let objects = list_oldest(
            store(&s3, SECRET).as_ref(),
            &prefix_of(&RelayId::new("relay-s3bin")),
        )
        .await
        .unwrap();
        assert_eq!(objects.len(), 1, "the batch is in S3");
        relay.stop().await;
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_leases_are_conditional_creates_on_s3() {
        let s3 = start_s3().await;
        let store = store(&s3, SECRET);
        let object = object_store::path::Path::from("spool/relay-x/0001700000000-000001.tern");
        let ttl = Duration::from_secs(30);
        let a = tern_relay::lease::acquire(store.as_ref(), &object, &[], "a", ttl, 1_000)
            .await
            .unwrap();
        assert!(
            matches!(a, tern_relay::lease::Acquire::Acquired(_)),
            "{a:?}"
        );
        // A contender with a stale listing must lose the create, not overwrite.
        let b = tern_relay::lease::acquire(store.as_ref(), &object, &[], "b", ttl, 1_000)
            .await
            .unwrap();
        assert_eq!(
            b,
            tern_relay::lease::Acquire::Held {
                holder: "a".into(),
                expires_at_ms: 31_000
            }
        );
        tern_relay::lease::release(store.as_ref(), &object, 1)
            .await
            .unwrap();
    }

    struct RelayBin {
        child: std::process::Child,
        conn: quinn::Connection,
        metrics: String,
        _ep: quinn::Endpoint,
    }

    impl RelayBin {
        async fn start(config_toml: &str, dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
            use std::io::{BufRead, BufReader};
            let config = dir.join("relay.toml");
            std::fs::write(&config, config_toml).unwrap();
            let ca = dir.join("ca.pem");
            let mut child = Command::new(env!("CARGO_BIN_EXE_tern-relay"))
                // Default directories (spool fallback, config cache) land in the temp dir.
                .current_dir(dir)
                .arg("--config")
                .arg(&config)
                .env("TERN_RELAY_S3_SECRET_ACCESS_KEY", SECRET)
                .envs(env.iter().copied())
                .args([
                    "--quic-listen",
                    "127.0.0.1:0",
                    "--https-listen",
                    "127.0.0.1:0",
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    "127.0.0.1:0",
                ])
                .arg("--dev-ca-out")
                .arg(&ca)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
            let quic: std::net::SocketAddr = ready["quic"].as_str().unwrap().parse().unwrap();
            let tls = tern_relay::tls::client_config(
                &std::fs::read_to_string(&ca).unwrap(),
                &[tern_protocol::ALPN],
            )
            .unwrap();
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
                quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
            )));
            let conn = ep.connect(quic, "localhost").unwrap().await.unwrap();
            RelayBin {
                child,
                conn,
                metrics: format!("http://{}", ready["metrics"].as_str().unwrap()),
                _ep: ep,
            }
        }

        async fn send(&self, batch: EventBatch) -> IngestOutcome {
            let frame = Message::IngestRequest(IngestRequest {
                auth: Auth {
                    app_id: AppId::new("demo"),
                    key: "demo-key".into(),
                },
                batch,
            })
            .encode(&CodecConfig::device())
            .unwrap();
            let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
            send.write_all(&frame).await.unwrap();
            send.finish().unwrap();
            let reply = recv.read_to_end(1 << 20).await.unwrap();
            match Message::from_bytes(&reply, &CodecConfig::device()).unwrap() {
                Message::IngestReply(r) => r.outcome,
                other => panic!("{other:?}"),
            }
        }

        async fn wait_registry(&self) {
            for _ in 0..100 {
                let text = reqwest::get(format!("{}/metrics", self.metrics))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                if text.contains("tern_relay_registry_apps 1") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the relay never loaded the app registry");
        }

        async fn readyz(&self) -> (u16, String) {
            let r = reqwest::get(format!("{}/readyz", self.metrics))
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }

        async fn stop(mut self) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let exit = tokio::task::spawn_blocking(move || self.child.wait())
                .await
                .unwrap()
                .unwrap();
            assert!(exit.success(), "{exit}");
        }
    }

    /// An S3 endpoint where nothing listens (s3s-fs started, then killed).
    async fn dead_s3() -> String {
        let s3 = start_s3().await;
        let url = s3.url.clone();
        drop(s3);
        url
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn when_s3_fails_the_binary_spools_to_local_disk_and_replays_it() {
        let s3_url = dead_s3().await;
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        let fallback_dir = dir.path().join("fallback");
        let relay = RelayBin::start(
            &format!(
                "relay_id = \"relay-fb\"\nbackend_url = \"{}\"\nspool_dir = \"{}\"\nspool_store_timeout_ms = 1000\n[tls]\ndev = true\n[spool_s3]\nendpoint = \"{s3_url}\"\nbucket = \"tern-spool\"\nregion = \"us-east-1\"\naccess_key_id = \"{KEY}\"\nallow_http = true\n",
                backend.url,
                fallback_dir.display()
            ),
            dir.path(),
            &[],
        )
        .await;
        relay.wait_registry().await;
        backend.stub.set_faults(Faults {
            down: true,
            ..Faults::default()
        });
        for _ in 0..3 {
            assert_eq!(
                relay.send(batch("demo", 4)).await,
                IngestOutcome::Accepted {
                    durability: Durability::Spooled
                }
            );
        }
        let local: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&fallback_dir).unwrap());
        let prefix = prefix_of(&RelayId::new("relay-fb"));
        assert!(!list_oldest(local.as_ref(), &prefix)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(relay.readyz().await.0, 200, "the fallback has room");
        // The backend recovers: the fallback's replayer drains the local disk.
        backend.stub.set_faults(Faults::default());
        let mut stored = 0;
        for _ in 0..200 {
            stored = backend.summary().await["batches_stored"].as_u64().unwrap();
            if stored == 3
                && list_oldest(local.as_ref(), &prefix)
                    .await
                    .unwrap()
                    .is_empty()
            {
                break;
            }
            // Live traffic probes the breaker closed.
            let _ = relay.send(batch("demo", 1)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(stored >= 3, "replayed: {stored}");
        assert!(list_oldest(local.as_ref(), &prefix)
            .await
            .unwrap()
            .is_empty());
        let s = backend.summary().await;
        assert_eq!(s["batches_duplicate"], 0, "{s}");
        relay.stop().await;
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_s3_down_and_no_local_room_devices_are_told_to_retry() {
        let s3_url = dead_s3().await;
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        let relay = RelayBin::start(
            &format!(
                "relay_id = \"relay-nofb\"\nbackend_url = \"{}\"\nspool_dir = \"{}\"\nspool_store_timeout_ms = 1000\n[tls]\ndev = true\n[spool_s3]\nendpoint = \"{s3_url}\"\nbucket = \"tern-spool\"\nregion = \"us-east-1\"\naccess_key_id = \"{KEY}\"\nallow_http = true\n",
                backend.url,
                dir.path().join("fallback").display()
            ),
            dir.path(),
            // The environment layer disables the fallback.
            &[("TERN_RELAY_SPOOL_MAX_BYTES", "0")],
        )
        .await;
        relay.wait_registry().await;
        backend.stub.set_faults(Faults {
            down: true,
            ..Faults::default()
        });
        for _ in 0..3 {
            let o = relay.send(batch("demo", 2)).await;
            assert!(matches!(o, IngestOutcome::Retry { .. }), "{o:?}");
        }
        let (status, body) = relay.readyz().await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("spool"), "{body}");
        let text = reqwest::get(format!("{}/metrics", relay.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains("outcome=\"accepted_spooled\""), "{text}");
        relay.stop().await;
        backend.stop().await;
    }
}

/// The in-place ingest path (`IngestView`, original bytes forwarded) against the owned
/// path (decode into `IngestRequest`, `validate_batch`, encode for the backend): on
/// random requests — valid, invalid, with wrong credentials, and damaged — both give
/// the same reply, and what reaches the backend decodes to the batch the owned decoder
/// sees.
mod in_place {
    use std::cell::Cell;
    use std::sync::Mutex;

    use axum::extract::State;
    use proptest::option;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use tern_protocol::limits::Limits;
    use tern_protocol::{
        encode_frame, encode_payload, Auth, CodecConfig, ErrorReply, ForwardOutcome, ForwardReply,
        ForwardResult, IngestOutcome, IngestRequest, IngestView, Message, MessageKind, Properties,
        ShardMap, UserId, Value,
    };
    use tern_relay::apps::{AppEntry, AppRegistry};
    use tern_relay::ingest::{Ingest, IngestConfig};
    use tern_relay::ratelimit::{Rate, RateLimiterConfig};

    use super::*;

    type Received = Arc<Mutex<Vec<EventBatch>>>;

    /// A backend that stores nothing, answers `stored` and remembers what it got.
    async fn recording_backend() -> (String, Received) {
        let received: Received = Arc::default();
        async fn ingest(State(rx): State<Received>, body: bytes::Bytes) -> Vec<u8> {
            let cfg = CodecConfig::backend();
            let Ok(Message::ForwardRequest(req)) = Message::from_bytes(&body, &cfg) else {
                panic!("the relay sent a ForwardRequest the owned decoder refuses");
            };
            let results = req
                .batches
                .iter()
                .map(|b| ForwardResult {
                    batch_id: b.batch_id,
                    outcome: ForwardOutcome::Stored,
                })
                .collect();
            rx.lock().unwrap().extend(req.batches);
            Message::ForwardReply(ForwardReply { results })
                .encode(&cfg)
                .unwrap()
        }
        let app = axum::Router::new()
            .route("/v1/ingest", axum::routing::post(ingest))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, received)
    }

    fn props() -> impl Strategy<Value = Properties> {
        proptest::collection::btree_map(
            prop_oneof![12 => "[a-z][a-z_]{0,6}", 1 => ".{0,3}"],
            prop_oneof![
                ".{0,8}".prop_map(Value::String),
                any::<i64>().prop_map(Value::Int),
                prop_oneof![9 => any::<f64>(), 1 => Just(f64::NAN)].prop_map(Value::Float),
                any::<bool>().prop_map(Value::Bool),
            ],
            0..4,
        )
    }

    fn body() -> impl Strategy<Value = EventBody> {
        prop_oneof![
            4 => (prop_oneof![9 => "[a-z][a-z_]{0,8}", 1 => ".{0,4}"], props())
                .prop_map(|(name, props)| EventBody::Custom { name, props }),
            1 => Just(EventBody::SessionStart),
            1 => ("[a-z]{0,4}", -2i64..5, "[A-Za-z]{3}", 0u32..3, props()).prop_map(
                |(product_id, amount_micros, currency, quantity, props)| EventBody::Purchase {
                    product_id,
                    amount_micros,
                    currency,
                    quantity,
                    props,
                }
            ),
        ]
    }

    /// (request, damage to its payload: (index, byte) overwrites)
    fn case() -> impl Strategy<Value = (IngestRequest, Vec<(usize, u8)>)> {
        let events = proptest::collection::vec(
            (
                prop_oneof![9 => 1u64..3, 1 => Just(0)],
                option::of(prop_oneof![6 => "[a-z]{1,6}", 1 => ".{0,3}"]),
                body(),
            ),
            0..6,
        );
        (
            events,
            prop_oneof![8 => Just("demo"), 1 => Just("other")],
            prop_oneof![8 => Just("demo-key"), 1 => Just("wrong")],
            prop_oneof![8 => Just("demo"), 1 => Just("elsewhere")],
            prop_oneof![3 => Just(vec![]), 1 => proptest::collection::vec((any::<usize>(), any::<u8>()), 1..3)],
        )
            .prop_map(|(events, auth_app, key, batch_app, damage)| {
                let mut b = batch(batch_app, 0);
                let mut seq = 0;
                b.events = events
                    .into_iter()
                    .map(|(step, user, body)| {
                        seq += step;
                        Event {
                            seq,
                            ts_ms: 1_700_000_000_000,
                            user_id: user.map(UserId::new),
                            session_id: None,
                            body,
                        }
                    })
                    .collect();
                let req = IngestRequest {
                    auth: Auth {
                        app_id: AppId::new(auth_app),
                        key: key.into(),
                    },
                    batch: b,
                };
                (req, damage)
            })
    }

    #[test]
    fn agrees_with_the_owned_path() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ingest = rt.block_on(async {
            let (url, received) = recording_backend().await;
            let config =
                ForwarderConfig::new(&url, RelayId::new("relay-test")).with_linger(Duration::ZERO);
            let (fwd, _task) = Forwarder::spawn(config, reqwest::Client::new(), None);
            let registry = AppRegistry::new(vec![AppEntry {
                app_id: AppId::new("demo"),
                keys: vec!["demo-key".into()],
            }]);
            let mut config = IngestConfig::default();
            config.rate_limit = RateLimiterConfig::default()
                .with_default_limit(Rate::new(100_000_000, 100_000_000));
            (
                Ingest::new(config, registry, fwd, ShardMap::default()),
                received,
            )
        });
        let (ingest, received) = ingest;
        let cfg = CodecConfig::device();
        let read_in_place = Cell::new(0u32);
        let accepted = Cell::new(0u32);
        let mut runner = TestRunner::new(Config {
            cases: 400,
            ..Config::default()
        });
        runner
            .run(&case(), |(req, damage)| {
                let mut payload = encode_payload(&req).unwrap();
                for (i, byte) in &damage {
                    let n = payload.len();
                    payload[i % n] = *byte;
                }
                let frame = encode_frame(MessageKind::IngestRequest.as_u8(), &payload, 1024);
                if IngestView::parse(&payload, &Limits::default()).is_ok() {
                    read_in_place.set(read_in_place.get() + 1);
                }
                // The handler: in place when it can.
                received.lock().unwrap().clear();
                let fast =
                    Message::from_bytes(&rt.block_on(ingest.handle_frame(&frame)), &cfg).unwrap();
                let forwarded = std::mem::take(&mut *received.lock().unwrap());
                // The owned path, as the handler worked before.
                let (owned_msg, slow) = match Message::from_bytes(&frame, &cfg) {
                    Ok(msg) => (Some(msg.clone()), rt.block_on(ingest.handle(msg))),
                    Err(e) => (
                        None,
                        Message::ErrorReply(ErrorReply {
                            shard_map_version: 0,
                            reason: e.reject_reason(),
                            detail: e.to_string(),
                        }),
                    ),
                };
                prop_assert_eq!(&fast, &slow);
                if let Message::IngestReply(r) = &fast {
                    if let IngestOutcome::Accepted { .. } = r.outcome {
                        accepted.set(accepted.get() + 1);
                        let Some(Message::IngestRequest(owned)) = owned_msg else {
                            return Err(TestCaseError::fail("accepted an undecodable request"));
                        };
                        prop_assert_eq!(forwarded.len(), 1);
                        prop_assert_eq!(
                            encode_payload(&forwarded[0]).unwrap(),
                            encode_payload(&owned.batch).unwrap()
                        );
                    } else {
                        prop_assert!(forwarded.is_empty());
                    }
                }
                Ok(())
            })
            .unwrap();
        // The cases exercise both paths and both decisions (counts, not timings).
        let (read_in_place, accepted) = (read_in_place.get(), accepted.get());
        assert!(read_in_place > 100, "only {read_in_place} read in place");
        assert!(accepted > 20, "only {accepted} accepted");
    }
}
