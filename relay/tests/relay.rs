//! tern-relay integration suite against a real backend (the stub, served in-process on
//! loopback): the forwarder on its own, then relays started through `Relay::start`
//! (`tern_testkit::InProcess`) or as the binary, driven through their services,
//! listeners and spool.

use std::sync::Arc;
use std::time::Duration;

use tern_protocol::{AppId, EventBatch, EventBody, RejectReason, RelayId};
use tern_relay::backend::forward::{
    ForwardError, Forwarder, ForwarderConfig, RequestOutcome, Verdict,
};
use tern_server_stub::Faults;
use tokio::sync::mpsc;

use tern_testkit::{batch, Backend};

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

/// The request handler as `Relay::start` wires it (registry, limiter, breaker, spool,
/// shard map), driven frame by frame through `Services::ingest`.
mod ingest {
    use super::*;
    use tern_protocol::{
        Auth, CodecConfig, Durability, IngestOutcome, Message, NodeState, RelayNode, ShardMap,
        ShardMapRequest,
    };
    use tern_relay::config::RelayConfig;
    use tern_relay::ingest::Ingest;
    use tern_relay::run::Relay;
    use tern_testkit::InProcess;

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

    /// A relay whose spool has no room (so a failed forward is `Retry`, never
    /// `Accepted`), serving [`map`], adjusted by `config` and `relay`.
    async fn start_with<'a>(
        backend: &Backend,
        config: impl FnOnce(RelayConfig) -> RelayConfig + 'a,
        relay: impl FnOnce(Relay) -> Relay + 'a,
    ) -> (InProcess, Ingest) {
        let r = InProcess::start_with(
            &backend.url,
            |mut c| {
                c.spool_max_bytes = 1;
                config(c)
            },
            |r| relay(r.with_forward_request_timeout(Duration::from_millis(500))),
        )
        .await;
        assert!(r.services().shard_map.set(map()));
        let ingest = r.services().ingest.clone();
        (r, ingest)
    }

    async fn setup(backend: &Backend) -> (InProcess, Ingest) {
        start_with(backend, |c| c, |r| r).await
    }

    fn request(app: &str, key: &str, batch: EventBatch) -> Vec<u8> {
        tern_testkit::ingest(app, key, batch)
            .encode(&CodecConfig::device())
            .unwrap()
    }

    async fn reply(ingest: &Ingest, frame: &[u8]) -> Message {
        Message::from_bytes(&ingest.handle_frame(frame).await, &CodecConfig::device()).unwrap()
    }

    async fn outcome(ingest: &Ingest, frame: &[u8]) -> IngestOutcome {
        match reply(ingest, frame).await {
            Message::IngestReply(r) => {
                // [`map`], or the newer map a test installs.
                assert!(r.shard_map_version >= 7, "{}", r.shard_map_version);
                r.outcome
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledges_only_what_the_backend_stored() {
        let backend = Backend::start(APPS).await;
        let (_relay, ingest) = setup(&backend).await;
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
        // A throttling backend's wait, when longer than the relay's own, is passed on.
        backend.stub.set_faults(Faults {
            throttle_retry_after_ms: Some(5000),
            ..Faults::default()
        });
        assert_eq!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 1))).await,
            IngestOutcome::Retry { after_ms: 5000 }
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
        let (_relay, ingest) = setup(&backend).await;
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
        use tern_relay::policy::ratelimit::Rate;
        let backend = Backend::start(APPS).await;
        let (relay, ingest) = start_with(
            &backend,
            |mut c| {
                c.rate_limit_events_per_sec = 10;
                c.rate_limit_burst = 10;
                c
            },
            |r| r,
        )
        .await;
        let services = relay.services();
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
        services
            .limiter
            .set_limit(AppId::new("demo"), Some(Rate::BLOCKED));
        assert_eq!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 1))).await,
            IngestOutcome::Retry { after_ms: 300_000 }
        );
        services.limiter.set_limit(AppId::new("demo"), None);
        assert_eq!(backend.summary().await["batches_stored"], 3);
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_breaker_spares_the_backend_then_probes_and_closes() {
        use tern_relay::backend::breaker::{BreakerConfig, BreakerState, Override};
        let backend = Backend::start(APPS).await;
        let (relay, ingest) = start_with(
            &backend,
            |c| c,
            |r| {
                r.with_breaker(
                    BreakerConfig::default()
                        .with_min_requests(3)
                        .with_open_for(Duration::from_millis(400))
                        .with_probes_to_close(1),
                )
            },
        )
        .await;
        let services = relay.services();
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
        assert!(matches!(
            services.breaker.state(),
            BreakerState::Open { .. }
        ));
        // Open: answered at once, the backend is not called (counted as refused by the
        // breaker, not as a failed forward); with no spool room, the relay's own wait.
        assert_eq!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 1))).await,
            IngestOutcome::Retry { after_ms: 2000 }
        );
        assert_eq!(
            ingest
                .counters()
                .breaker_open
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // The backend recovers; after the open time a probe succeeds and closes it.
        backend.stub.set_faults(Faults::default());
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(matches!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 2))).await,
            IngestOutcome::Accepted { .. }
        ));
        assert_eq!(services.breaker.state(), BreakerState::Closed);
        // Operator override.
        services.breaker.set_override(Some(Override::ForceOpen));
        assert!(matches!(
            outcome(&ingest, &request("demo", "demo-key", batch("demo", 1))).await,
            IngestOutcome::Retry { .. }
        ));
        services.breaker.set_override(None);
        let c = ingest.counters();
        assert_eq!(c.breaker_open.load(std::sync::atomic::Ordering::Relaxed), 2);
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn misrouted_batches_are_accepted_and_counted() {
        let backend = Backend::start(APPS).await;
        let (relay, ingest) = setup(&backend).await;
        let mut two = map();
        let mut other = two.nodes[0].clone();
        other.id = RelayId::new("relay-other");
        two.nodes.push(other);
        two.version += 1;
        assert!(relay.services().shard_map.set(two.clone()));
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
        let (_relay, ingest) = setup(&backend).await;
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
        backend.stop().await;
    }
}

mod listeners {
    use super::*;
    use tern_protocol::{Durability, IngestOutcome, Message, ALPN};
    use tern_testkit::device::{self, https_client, https_post, roundtrip_lenient as roundtrip};
    use tern_testkit::InProcess;

    /// A relay through `Relay::start` (the binary's wiring), in-process.
    async fn start_relay(backend: &Backend) -> InProcess {
        InProcess::start(&backend.url).await
    }

    async fn quic_client(relay: &InProcess, alpn: &[u8]) -> Result<quinn::Connection, String> {
        device::connect(&relay.ca_pem, relay.quic(), &[alpn]).await
    }

    fn ingest_frame(batch: EventBatch) -> Vec<u8> {
        device::frame(&tern_testkit::ingest("demo", "demo-key", batch))
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
        relay.running.kill();
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
        relay.running.kill();
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn https_serves_the_same_requests() {
        let backend = Backend::start(APPS).await;
        let relay = start_relay(&backend).await;
        let client = https_client(&relay.ca_pem);
        let post = |body: Vec<u8>| {
            let (client, addr) = (client.clone(), relay.https());
            async move {
                let (status, reply) = https_post(&client, addr, body).await.unwrap();
                assert_eq!(status, 200);
                Message::from_bytes(&reply, &tern_protocol::CodecConfig::device()).unwrap()
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
        relay.running.kill();
        backend.stop().await;
    }
}

mod binary {
    use super::*;
    use std::process::Command;
    use tern_protocol::{IngestOutcome, Message};
    use tern_testkit::proc::signal;
    use tern_testkit::{device, wait_for, Device, RelayProc, DEADLINE};

    /// Sends `frame` until the reply is not `Retry` (the registry loads in the
    /// background: until then the relay says Retry; it must never reject a device for
    /// an app it simply has not heard of yet); the reply.
    async fn once_loaded(device: &Device, frame: &[u8]) -> Message {
        wait_for("a reply other than Retry", DEADLINE, || async {
            match device.roundtrip_frame(frame).await {
                Message::IngestReply(r) if matches!(r.outcome, IngestOutcome::Retry { .. }) => {
                    Err(format!("{r:?}"))
                }
                Message::ErrorReply(e) => Err(format!("{e:?}")),
                other => Ok(other),
            }
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_binary_serves_quic_and_stops_cleanly_on_sigterm() {
        let backend = Backend::start(APPS).await;
        let relay = RelayProc::builder(&backend.url).id("relay-bin").start();
        assert_eq!(relay.ready["event"], "ready");
        let device = relay.device().await;
        let frame = device::frame(&tern_testkit::ingest("demo", "demo-key", batch("demo", 3)));
        match once_loaded(&device, &frame).await {
            Message::IngestReply(r) => {
                assert!(matches!(r.outcome, IngestOutcome::Accepted { .. }), "{r:?}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(backend.summary().await["batches_stored"], 1);
        // Operability endpoints.
        let get = |path: &str| reqwest::get(format!("{}{path}", relay.metrics));
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
        let exit = tokio::task::spawn_blocking(move || relay.terminate())
            .await
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
        let mut relay = RelayProc::builder(&backend.url)
            .id("relay-bin")
            .dir(dir.path())
            .args(["--shard-map".to_owned(), map_file.display().to_string()])
            .start();
        let device = relay.device().await;
        let frame = device::frame(&Message::ShardMapRequest(tern_protocol::ShardMapRequest {
            auth: tern_testkit::auth("demo", "demo-key"),
            known_version: 0,
        }));
        let version = || async {
            match device.roundtrip_frame(&frame).await {
                Message::ShardMapReply(r) => Ok(r.shard_map_version),
                other => Err(format!("{other:?}")), // registry not loaded yet
            }
        };
        assert_eq!(wait_for("a shard map reply", DEADLINE, version).await, 1);
        write_map(2);
        signal(relay.pid(), "HUP").unwrap();
        wait_for("the shard map reloaded", DEADLINE, || async {
            match version().await {
                Ok(2) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let exit = tokio::task::spawn_blocking(move || {
            signal(relay.pid(), "TERM").unwrap();
            relay.wait_exit()
        })
        .await
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

/// The spool as `Relay::start` wires it (local directory, group commit, replayers under
/// leases, takeover and handover), against the stub.
mod spool {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::{ObjectStore, ObjectStoreExt};
    use tern_protocol::{CodecConfig, Durability, IngestOutcome, Message};
    use tern_relay::backend::breaker::BreakerConfig;
    use tern_relay::ingest::{Ingest, IngestCounters};
    use tern_relay::spool::replay::{ReplayConfig, Replayer};
    use tern_relay::spool::{list_oldest, prefix_of};
    use tern_testkit::{wait_until, InProcess, DEADLINE};

    /// A relay spooling into `dir` (shared by the relays of a test, like a bucket).
    struct Node {
        relay: InProcess,
        store: Arc<dyn ObjectStore>,
    }

    impl Node {
        fn ingest(&self) -> &Ingest {
            &self.relay.services().ingest
        }

        fn counters(&self) -> &IngestCounters {
            &self.relay.services().counters
        }

        /// Dies like a crashed process: nothing replayed or handed over.
        fn kill(self) {
            self.relay.running.kill();
        }
    }

    async fn relay(backend: &Backend, dir: &std::path::Path) -> Node {
        relay_named(backend, dir, "relay-test", |c| c).await
    }

    async fn relay_named(
        backend: &Backend,
        dir: &std::path::Path,
        id: &str,
        config: impl FnOnce(tern_relay::config::RelayConfig) -> tern_relay::config::RelayConfig,
    ) -> Node {
        let spool_dir = dir.to_path_buf();
        let relay = InProcess::builder(&backend.url)
            .id(id)
            .config(move |mut c| {
                c.spool_dir = spool_dir;
                config(c)
            })
            .relay(|r| {
                r.with_forward_request_timeout(Duration::from_millis(500))
                    .with_replay_idle_poll(Duration::from_millis(50))
                    .with_breaker(
                        BreakerConfig::default()
                            .with_min_requests(3)
                            .with_open_for(Duration::from_millis(300))
                            .with_probes_to_close(1),
                    )
            })
            .start()
            .await;
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap());
        Node { relay, store }
    }

    fn frame(b: EventBatch) -> Vec<u8> {
        tern_testkit::ingest("demo", "demo-key", b)
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

    async fn wait_stored(backend: &Backend, n: u64) -> serde_json::Value {
        wait_until(&format!("{n} batches stored"), DEADLINE, || async {
            backend.summary().await["batches_stored"].as_u64() == Some(n)
        })
        .await;
        backend.summary().await
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

    async fn wait_no_leftovers(store: &dyn ObjectStore) {
        wait_until(
            "spooled objects and their leases deleted",
            DEADLINE,
            || async { leftovers(store).await.is_empty() },
        )
        .await;
    }

    fn down(backend: &Backend) {
        backend.stub.set_faults(Faults {
            down: true,
            ..Faults::default()
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backend_outage_is_spooled_then_replayed_exactly_once() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        let r = relay(&backend, dir.path()).await;
        down(&backend);
        let outcomes = send_all(r.ingest(), 200).await;
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

        // The backend recovers: the breaker closes on a probe (live traffic or the
        // replayer's), the replayer drains.
        backend.stub.set_faults(Faults::default());
        assert!(matches!(
            send_all(r.ingest(), 1).await[0],
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
        wait_no_leftovers(r.store.as_ref()).await;
        let c = r.counters();
        let acked = c
            .accepted_forwarded
            .load(std::sync::atomic::Ordering::Relaxed)
            + c.accepted_spooled
                .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            acked, 201,
            "conservation: every acknowledgement is forwarded or spooled"
        );
        let replayed = r.relay.services().replay_status.progress().batches_replayed;
        assert!(replayed >= 200, "every spooled batch replayed: {replayed}");
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_resumes_in_a_new_relay_instance() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        let r = relay(&backend, dir.path()).await;
        down(&backend);
        for o in send_all(r.ingest(), 50).await {
            assert!(matches!(o, IngestOutcome::Accepted { .. }));
        }
        r.kill();
        backend.stub.set_faults(Faults::default());
        // A new relay over the same spool directory (a restart) replays it.
        let r = relay(&backend, dir.path()).await;
        let s = wait_stored(&backend, 50).await;
        assert_eq!(s["events_unique"], 250);
        wait_no_leftovers(r.store.as_ref()).await;
        backend.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_relay_takes_over_a_dead_relays_spool_under_leases() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        // relay-a spools during an outage, then dies without replaying.
        let a = relay_named(&backend, dir.path(), "relay-a", |c| c).await;
        down(&backend);
        for o in send_all(a.ingest(), 120).await {
            assert_eq!(
                o,
                IngestOutcome::Accepted {
                    durability: Durability::Spooled
                }
            );
        }
        a.kill();
        backend.stub.set_faults(Faults::default());
        // Two live relays sharing the store both take over relay-a's prefix once its
        // objects are a second old: the leases keep them off each other's objects.
        let takeover = |mut c: tern_relay::config::RelayConfig| {
            c.replay_takeover_after_s = 1;
            c
        };
        let b = relay_named(&backend, dir.path(), "relay-b", takeover).await;
        let c = relay_named(&backend, dir.path(), "relay-c", takeover).await;
        let s = wait_stored(&backend, 120).await;
        assert_eq!(s["events_unique"], 600);
        // The deletes follow the backend's acks.
        wait_no_leftovers(b.store.as_ref()).await;
        let taken_over = |n: &Node| {
            n.relay
                .services()
                .replay_status
                .progress()
                .objects_taken_over
        };
        assert!(taken_over(&b) + taken_over(&c) > 0);
        let s = backend.summary().await;
        assert_eq!(s["batches_stored"], 120);
        // Duplicates are harmless (deduped) but the leases should have prevented them.
        assert_eq!(s["batches_duplicate"], 0, "{s}");
        backend.stop().await;
    }

    /// The replayer on its own over the shared store, with the services of a running
    /// relay whose own spool is elsewhere: what one pass takes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_takeover_a_relay_leaves_other_prefixes_alone() {
        let backend = Backend::start(APPS).await;
        let dir = tempfile::tempdir().unwrap();
        let a = relay_named(&backend, dir.path(), "relay-a", |c| c).await;
        down(&backend);
        send_all(a.ingest(), 10).await;
        a.kill();
        backend.stub.set_faults(Faults::default());
        let elsewhere = tempfile::tempdir().unwrap();
        let b = relay_named(&backend, elsewhere.path(), "relay-b", |c| c).await;
        let shared: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let services = b.relay.services();
        let replayer = |config: ReplayConfig| {
            Replayer::new(
                shared.clone(),
                prefix_of(&RelayId::new("relay-b")),
                services.forwarder.clone(),
                services.breaker.clone(),
                config,
            )
        };
        let mut pacer = tern_relay::spool::pacer::ReplayPacer::new(
            tern_relay::spool::pacer::PacerConfig::default(),
            std::time::Instant::now(),
        );
        let pass = replayer(ReplayConfig::default().with_takeover_after(None))
            .pass(&mut pacer)
            .await
            .unwrap();
        assert_eq!(pass.objects, 0);
        // With takeover, objects younger than the threshold are left to their owner.
        let replayer =
            replayer(ReplayConfig::default().with_takeover_after(Some(Duration::from_secs(3600))));
        assert_eq!(replayer.pass(&mut pacer).await.unwrap().objects, 0);
        assert_eq!(backend.summary().await["batches_stored"], 0);
        let a_prefix = prefix_of(&RelayId::new("relay-a"));
        assert!(!list_oldest(shared.as_ref(), &a_prefix)
            .await
            .unwrap()
            .is_empty());
        // relay-a drained and handed its prefix over: taken over at once, whatever
        // the threshold.
        tern_relay::spool::write_handover(shared.as_ref(), &a_prefix, &RelayId::new("relay-a"))
            .await
            .unwrap();
        let pass = replayer.pass(&mut pacer).await.unwrap();
        assert!(
            pass.objects > 0 && pass.taken_over == pass.objects,
            "{pass:?}"
        );
        assert_eq!(backend.summary().await["batches_stored"], 10);
        assert!(list_oldest(shared.as_ref(), &a_prefix)
            .await
            .unwrap()
            .is_empty());
        // relay-a comes back: it withdraws the marker.
        tern_relay::spool::clear_handover(shared.as_ref(), &a_prefix)
            .await
            .unwrap();
        assert!(shared
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
        down(&backend);
        for o in send_all(r.ingest(), 5).await {
            assert!(matches!(o, IngestOutcome::Retry { .. }), "{o:?}");
        }
        let c = r.counters();
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
        assert_eq!(c.retried.load(std::sync::atomic::Ordering::Relaxed), 5);
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
    use tern_protocol::{Auth, CodecConfig, Durability, IngestOutcome, IngestRequest, Message};
    use tern_relay::config::S3Settings;
    use tern_relay::ingest::Ingest;
    use tern_relay::spool::{list_oldest, prefix_of};
    use tern_testkit::{wait_until, Device, InProcess, RelayProc, DEADLINE};

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
        let port = tern_testkit::proc::free_tcp_port().unwrap();
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

    /// A relay `relay-s3` spooling to `s3` signed with `secret`, without a local-disk
    /// fallback.
    async fn relay(backend: &Backend, s3: &S3, secret: &str) -> InProcess {
        let settings = S3Settings {
            endpoint: Some(s3.url.clone()),
            bucket: "tern-spool".into(),
            region: "us-east-1".into(),
            access_key_id: Some(KEY.into()),
            secret_access_key: Some(secret.into()),
            allow_http: true,
        };
        InProcess::builder(&backend.url)
            .id("relay-s3")
            .config(|mut c| {
                c.spool_s3 = Some(settings);
                c.spool_max_bytes = 0;
                c
            })
            .relay(|r| {
                r.with_forward_request_timeout(Duration::from_millis(500))
                    .with_replay_idle_poll(Duration::from_millis(50))
            })
            .start()
            .await
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
        let relay = relay(&backend, &s3, SECRET).await;
        let ingest = &relay.services().ingest;
        backend.stub.set_faults(Faults {
            down: true,
            ..Faults::default()
        });
        for o in send(ingest, 30).await {
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
        // The backend recovers: the relay's replayer drains the bucket.
        backend.stub.set_faults(Faults::default());
        wait_until("30 batches replayed from S3", DEADLINE, || async {
            backend.summary().await["batches_stored"] == 30
        })
        .await;
        wait_until("replayed objects deleted from S3", DEADLINE, || async {
            list_oldest(store.as_ref(), &prefix)
                .await
                .unwrap()
                .is_empty()
        })
        .await;
        assert!(relay.services().replay_status.progress().batches_replayed >= 30);
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
        let relay = relay(&backend, &s3, "wrong-secret").await;
        let ingest = &relay.services().ingest;
        backend.stub.set_faults(Faults {
            down: true,
            ..Faults::default()
        });
        for o in send(ingest, 3).await {
            assert!(matches!(o, IngestOutcome::Retry { .. }), "{o:?}");
        }
        let spooled = &relay.services().counters.accepted_spooled;
        assert_eq!(spooled.load(std::sync::atomic::Ordering::Relaxed), 0);
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
        let a = tern_relay::spool::lease::acquire(store.as_ref(), &object, &[], "a", ttl, 1_000)
            .await
            .unwrap();
        assert!(
            matches!(a, tern_relay::spool::lease::Acquire::Acquired(_)),
            "{a:?}"
        );
        // A contender with a stale listing must lose the create, not overwrite.
        let b = tern_relay::spool::lease::acquire(store.as_ref(), &object, &[], "b", ttl, 1_000)
            .await
            .unwrap();
        assert_eq!(
            b,
            tern_relay::spool::lease::Acquire::Held {
                holder: "a".into(),
                expires_at_ms: 31_000
            }
        );
        tern_relay::spool::lease::release(store.as_ref(), &object, 1)
            .await
            .unwrap();
    }

    struct RelayBin {
        proc: RelayProc,
        device: Device,
        metrics: String,
    }

    impl RelayBin {
        async fn start(config_toml: &str, dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
            let config = dir.join("relay.toml");
            std::fs::write(&config, config_toml).unwrap();
            // Default directories (spool fallback, config cache) land in the temp dir.
            let proc = RelayProc::from_config_file(&config)
                .dir(dir)
                .envs([("TERN_RELAY_S3_SECRET_ACCESS_KEY", SECRET)])
                .envs(env.iter().copied())
                .start();
            RelayBin {
                device: proc.device().await,
                metrics: proc.metrics.clone(),
                proc,
            }
        }

        async fn send(&self, batch: EventBatch) -> IngestOutcome {
            self.device.send("demo", "demo-key", batch).await
        }

        async fn wait_registry(&self) {
            wait_until("the app registry loaded", DEADLINE, || async {
                tern_testkit::metrics::scrape(&self.metrics)
                    .await
                    .contains("tern_relay_registry_apps 1")
            })
            .await;
        }

        async fn readyz(&self) -> (u16, String) {
            let r = reqwest::get(format!("{}/readyz", self.metrics))
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }

        async fn stop(self) {
            let exit = tokio::task::spawn_blocking(move || self.proc.terminate())
                .await
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
