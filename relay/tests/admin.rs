//! The admin API through the relay binary: every control's effect end to end, against
//! the stub as the backend, with a QUIC device client.

use std::time::Duration;

use serde_json::{json, Value};
use tern_protocol::{ConfigOutcome, IngestOutcome, Message, PushNotice};
use tern_testkit::outcome::{forwarded, spooled};
use tern_testkit::relay::AdminClient;
use tern_testkit::{
    assert_unchanged, batch, demo_apps, metrics, wait_for, wait_until, Backend, Device, RelayProc,
    DEADLINE,
};

/// The stub, one relay in a temp dir, an admin client and a device connection.
struct Stack {
    backend: Backend,
    _dir: tempfile::TempDir,
    relay: RelayProc,
    api: AdminClient,
    device: Device,
}

async fn stack() -> Stack {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&backend.url, dir.path(), &[], &[]);
    relay.wait_ready().await;
    let api = AdminClient::for_proc(&relay, "test-operator");
    let device = Device::connect(&relay.ca_pem, relay.quic).await;
    Stack {
        backend,
        _dir: dir,
        relay,
        api,
        device,
    }
}

async fn received(backend: &Backend) -> u64 {
    backend.summary().await["batches_received"]
        .as_u64()
        .unwrap()
}

/// Barrier for "replay is held": two listings of the held replayer that both see
/// spooled objects (their lag grows from one to the next). The replayer is one loop
/// that lists the spool about once a second while held and replays only when allowed,
/// so once a second held listing happened, no replay pass ran since the first one.
async fn held_listings(api: &AdminClient) {
    let listing = || async {
        let p = api.status().await["replay"]["progress"].clone();
        match (p["objects_waiting"].as_u64(), p["lag_ms"].as_u64()) {
            (Some(n), Some(lag)) if n >= 1 => Ok(lag),
            _ => Err(p.to_string()),
        }
    };
    let first = wait_for("a listing of the held spool", DEADLINE, listing).await;
    wait_for("a later listing of the held spool", DEADLINE, || async {
        match listing().await {
            Ok(lag) if lag > first => Ok(()),
            other => Err(format!("{other:?} (first lag {first} ms)")),
        }
    })
    .await;
}

async fn stored(backend: &Backend) -> u64 {
    backend.summary().await["batches_stored"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_need_the_token_and_bad_input_gets_a_typed_error() {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&backend.url, dir.path(), &[], &[]);
    let api = AdminClient::for_proc(&relay, "test-operator");
    let http = reqwest::Client::new();
    let url = format!("{}/admin/v1/status", relay.admin);
    let no_token = http.get(&url).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let body: Value = no_token.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let wrong = http
        .get(&url)
        .bearer_auth("x".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // The token file is the owner's only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file = relay.ready["admin_token_file"].as_str().unwrap();
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "token file mode {mode:o}");
    }

    let status = api.get("/admin/v1/status").await;
    assert_eq!(status["relay_id"], "relay-admin");
    assert_eq!(status["breaker"]["state"], "closed");
    assert_eq!(status["settings"]["switches"]["forwarding_degraded"], false);

    let cases = [
        (
            "/admin/v1/services/teleport",
            json!({"degraded": true}),
            404,
            None,
        ),
        (
            "/admin/v1/services/push",
            json!({"degraded": "yes"}),
            400,
            Some("body"),
        ),
        (
            "/admin/v1/services/push",
            json!({"off": true}),
            400,
            Some("body"),
        ),
        (
            "/admin/v1/apps/demo/limit",
            json!({"events_per_sec": 100, "burst": 10}),
            400,
            Some("burst"),
        ),
        (
            "/admin/v1/apps/demo/limit",
            json!({"events_per_sec": 0, "burst": 5000}),
            400,
            Some("events_per_sec"),
        ),
        (
            "/admin/v1/replay",
            json!({"max_rate": 0}),
            400,
            Some("max_rate"),
        ),
        (
            "/admin/v1/breaker",
            json!({"override": "sideways"}),
            400,
            Some("body"),
        ),
    ];
    for (path, body, want, field) in cases {
        let (status, reply) = api.call(reqwest::Method::PUT, path, Some(body)).await;
        assert_eq!(status, want, "{path}: {reply}");
        if let Some(field) = field {
            assert_eq!(reply["field"], field, "{path}: {reply}");
        }
    }
    // Nothing above changed anything, and nothing was audited.
    assert_eq!(
        api.get("/admin/v1/settings").await,
        json!({
            "switches": {"forwarding_degraded": false, "config_cache_only": false,
                         "messages_off": false, "push_off": false, "replay_paused": false,
                         "replay_max_rate": null},
            "app_limits": {}, "blocked_apps": {}, "breaker": "auto", "features": {},
            "record": {"enabled": false, "apps": [], "sample_bp": 0, "max_batches_per_sec": 0,
                       "hash_user_ids": true, "drop_properties": false,
                       "keep_property_values": false}
        })
    );
    assert_eq!(api.get("/admin/v1/audit").await, json!([]));
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_forwarding_spools_without_calling_the_backend_then_replays_on_restore() {
    let Stack {
        backend,
        _dir,
        relay,
        api,
        device,
    } = stack().await;
    assert!(forwarded(
        &device.send("demo", "demo-key", batch("demo", 10)).await
    ));
    assert_eq!(received(&backend).await, 1);

    api.put("/admin/v1/services/forwarding", json!({"degraded": true}))
        .await;
    for _ in 0..5 {
        let o = device.send("demo", "demo-key", batch("demo", 10)).await;
        assert!(spooled(&o), "{o:?}");
    }
    // Neither ingest nor replay nor a breaker probe calls the backend meanwhile.
    assert_unchanged(
        "batches the backend received while forwarding was degraded",
        1,
        held_listings(&api),
        || received(&backend),
    )
    .await;
    let status = api.get("/admin/v1/status").await;
    assert_eq!(status["totals"]["degraded_spooled"], 5);
    assert_eq!(status["replay"]["held_by_degraded_forwarding"], true);
    // Replay is held, yet the spool's depth stays current for operators.
    wait_until(
        "the spool depth reported while replay is held",
        DEADLINE,
        || async {
            let s = api.get("/admin/v1/status").await;
            (1..=5).contains(&s["replay"]["progress"]["objects_waiting"].as_u64().unwrap())
        },
    )
    .await;

    api.put("/admin/v1/services/forwarding", json!({"degraded": false}))
        .await;
    wait_until("replay of the 5 spooled batches", DEADLINE, || async {
        stored(&backend).await == 6
    })
    .await;
    wait_until("the spool empty", DEADLINE, || async {
        let s = api.get("/admin/v1/status").await;
        s["replay"]["progress"]["objects_waiting"] == 0
            && s["replay"]["progress"]["batches_replayed"] == 5
    })
    .await;
    assert!(forwarded(
        &device.send("demo", "demo-key", batch("demo", 10)).await
    ));
    let summary = backend.summary().await;
    assert_eq!(summary["batches_stored"], 7);
    assert_eq!(summary["batches_duplicate"], 0);

    let audit = api.get("/admin/v1/audit").await;
    let audit = audit.as_array().unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0]["action"], "service.forwarding");
    assert_eq!(audit[0]["operator"], "test-operator");
    assert_eq!(audit[0]["before"], json!({"degraded": false}));
    assert_eq!(audit[0]["after"], json!({"degraded": true}));
    assert!(audit[0]["remote"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let metrics = reqwest::get(format!("{}/metrics", relay.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metrics::total(&metrics, "tern_relay_admin_changes_total"),
        2.0
    );
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_app_gets_retry_other_apps_do_not_and_the_block_survives_a_restart() {
    let Stack {
        backend,
        _dir: dir,
        relay,
        api,
        device,
    } = stack().await;
    api.put("/admin/v1/apps/demo/block", json!({"reason": "incident 7"}))
        .await;
    let o = device.send("demo", "demo-key", batch("demo", 5)).await;
    assert!(
        matches!(o, IngestOutcome::Retry { after_ms } if after_ms >= 60_000),
        "{o:?}"
    );
    assert!(forwarded(
        &device.send("shop", "shop-key", batch("shop", 5)).await
    ));
    // A per-app limit: a burst of 1,000 events admits one 1,000-event batch, then Retry.
    api.put(
        "/admin/v1/apps/shop/limit",
        json!({"events_per_sec": 1, "burst": 1000}),
    )
    .await;
    assert!(forwarded(
        &device.send("shop", "shop-key", batch("shop", 1000)).await
    ));
    let o = device.send("shop", "shop-key", batch("shop", 1000)).await;
    assert!(matches!(o, IngestOutcome::Retry { .. }), "{o:?}");
    let status = api.get("/admin/v1/status").await;
    assert_eq!(status["settings"]["blocked_apps"]["demo"], "incident 7");
    assert_eq!(
        status["settings"]["app_limits"]["shop"],
        json!({"events_per_sec": 1, "burst": 1000})
    );
    drop(device);

    // Restart: the block and the limit are back before the first request.
    assert!(relay.terminate().success());
    let relay = RelayProc::start(&backend.url, dir.path(), &[], &[]);
    relay.wait_ready().await;
    let api = AdminClient::for_proc(&relay, "test-operator");
    let device = Device::connect(&relay.ca_pem, relay.quic).await;
    let o = device.send("demo", "demo-key", batch("demo", 5)).await;
    assert!(matches!(o, IngestOutcome::Retry { .. }), "{o:?}");
    assert_eq!(
        api.get("/admin/v1/settings").await["app_limits"]["shop"]["burst"],
        1000
    );
    api.delete("/admin/v1/apps/demo/block").await;
    api.delete("/admin/v1/apps/shop/limit").await;
    assert!(forwarded(
        &device.send("demo", "demo-key", batch("demo", 5)).await
    ));
    assert!(forwarded(
        &device.send("shop", "shop-key", batch("shop", 1000)).await
    ));
    assert!(forwarded(
        &device.send("shop", "shop-key", batch("shop", 1000)).await
    ));
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_override_and_replay_pause_and_rate() {
    let Stack {
        backend,
        _dir,
        relay: _relay,
        api,
        device,
    } = stack().await;
    api.put("/admin/v1/replay", json!({"paused": true, "max_rate": 50}))
        .await;
    api.put("/admin/v1/breaker", json!({"override": "force_open"}))
        .await;
    assert_eq!(
        api.get("/admin/v1/status").await["breaker"]["state"],
        "forced_open"
    );
    for _ in 0..4 {
        assert!(spooled(
            &device.send("demo", "demo-key", batch("demo", 3)).await
        ));
    }
    api.put("/admin/v1/breaker", json!({"override": "auto"}))
        .await;
    // Replay is paused: the spooled batches wait.
    assert_unchanged(
        "batches the backend received while replay was paused",
        0,
        held_listings(&api),
        || received(&backend),
    )
    .await;
    let status = api.get("/admin/v1/status").await;
    assert_eq!(status["replay"]["paused"], true);
    assert_eq!(status["replay"]["max_rate"], 50);
    api.put("/admin/v1/replay", json!({"paused": false})).await;
    wait_until("replay after resume", DEADLINE, || async {
        stored(&backend).await == 4
    })
    .await;
    // `null` restores the configured rate; the pause flag is untouched.
    let s = api.put("/admin/v1/replay", json!({"max_rate": null})).await;
    assert_eq!(s["switches"]["replay_max_rate"], Value::Null);
    assert_eq!(s["switches"]["replay_paused"], false);
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_cache_only_messages_off_and_push_off() {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(
        &backend.url,
        dir.path(),
        &["--config-refresh-ms", "100"],
        &[],
    );
    relay.wait_ready().await;
    let api = AdminClient::for_proc(&relay, "test-operator");
    let device = Device::connect(&relay.ca_pem, relay.quic).await;
    let bundle = |m: Message| match m {
        Message::ConfigReply(r) => match r.outcome {
            ConfigOutcome::Modified { bundle } => bundle,
            other => panic!("expected a bundle, got {other:?}"),
        },
        other => panic!("expected a ConfigReply, got {other:?}"),
    };
    wait_until("the demo bundle cached", DEADLINE, || async {
        matches!(
            device.config("demo", "demo-key").await,
            Message::ConfigReply(r) if matches!(r.outcome, ConfigOutcome::Modified { .. })
        )
    })
    .await;

    // Config serving degraded: the backend is no longer polled, the cache still serves.
    api.put("/admin/v1/services/config", json!({"degraded": true}))
        .await;
    // Barrier: a round skipped after the switch, so no earlier round is in flight
    // (rounds never overlap); then three more skipped rounds without a backend poll.
    let skipped = || async {
        let text = tern_testkit::metrics::scrape(&relay.metrics).await;
        tern_testkit::metrics::sum(
            &text,
            "tern_relay_config_poll_rounds_total",
            &["outcome=skipped"],
        ) as u64
    };
    wait_until("a poll round skipped", DEADLINE, || async {
        skipped().await >= 1
    })
    .await;
    let polls = backend.metric("tern_stub_config_requests_total").await;
    let seen = skipped().await;
    wait_until("three more rounds skipped", DEADLINE, || async {
        skipped().await >= seen + 3
    })
    .await;
    assert_eq!(
        backend.metric("tern_stub_config_requests_total").await,
        polls,
        "the backend was polled while config serving was degraded"
    );
    let full = bundle(device.config("demo", "demo-key").await);
    assert!(!full.messages.is_empty(), "the demo app has a message");
    api.put("/admin/v1/services/config", json!({"degraded": false}))
        .await;
    wait_until("polling again", DEADLINE, || async {
        backend.metric("tern_stub_config_requests_total").await > polls
    })
    .await;

    // Messages off: subscribers hear of a change; the bundle comes without messages
    // under its own ETag; on again, the full bundle is back.
    let (mut push, first) = device.subscribe("demo", "demo-key").await;
    assert!(
        matches!(first, Message::PushNotice(PushNotice::Subscribed { .. })),
        "{first:?}"
    );
    api.put("/admin/v1/services/messages", json!({"degraded": true}))
        .await;
    // The announcement of the message-less bundle (skipping any of the full one).
    let etag = loop {
        let notice = push.next().await.expect("a config notice");
        let Message::PushNotice(PushNotice::ConfigChanged { etag, .. }) = notice else {
            panic!("expected ConfigChanged, got {notice:?}");
        };
        if etag != full.etag {
            break etag;
        }
    };
    let stripped = bundle(device.config("demo", "demo-key").await);
    assert!(stripped.messages.is_empty());
    assert_eq!(stripped.etag, etag);
    assert_ne!(stripped.etag, full.etag);
    assert_eq!(stripped.values, full.values);
    api.put("/admin/v1/services/messages", json!({"degraded": false}))
        .await;
    let back = bundle(device.config("demo", "demo-key").await);
    assert_eq!(back.etag, full.etag);
    assert_eq!(back.messages.len(), full.messages.len());

    // Push off: the open stream ends, a new one is refused; on again, it opens.
    api.put("/admin/v1/services/push", json!({"degraded": true}))
        .await;
    loop {
        match push.next().await {
            None => break,
            Some(Message::PushNotice(PushNotice::ConfigChanged { .. })) => continue,
            Some(other) => panic!("expected the stream to end, got {other:?}"),
        }
    }
    let (_, refused) = device.subscribe("demo", "demo-key").await;
    assert!(matches!(refused, Message::ErrorReply(_)), "{refused:?}");
    assert_eq!(
        api.get("/admin/v1/status").await["connections"]["push_subscribers"],
        0
    );
    api.put("/admin/v1/services/push", json!({"degraded": false}))
        .await;
    let (_push, first) = device.subscribe("demo", "demo-key").await;
    assert!(
        matches!(first, Message::PushNotice(PushNotice::Subscribed { .. })),
        "{first:?}"
    );
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_rates_per_app_and_history() {
    let Stack {
        backend,
        _dir,
        relay: _relay,
        api,
        device,
    } = stack().await;
    let sender = tokio::spawn(async move {
        for _ in 0..40 {
            device.send("demo", "demo-key", batch("demo", 50)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        device
    });
    wait_until("a per-app rate", DEADLINE, || async {
        let s = api.get("/admin/v1/status").await;
        s["rates"]["per_app_events_per_sec"]["demo"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
            && s["connections"]["quic"] == 1
    })
    .await;
    let _device = sender.await.unwrap();
    let history = api.get("/admin/v1/history").await;
    let history = history.as_array().unwrap();
    assert!(!history.is_empty());
    assert!(history
        .iter()
        .any(|s| s["events_per_sec"].as_f64().unwrap() > 0.0));
    let status = api.get("/admin/v1/status").await;
    assert_eq!(status["totals"]["accepted_forwarded"], 40);
    assert_eq!(status["totals"]["events_accepted"], 2000);
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load_answers_what_it_accepted_tells_devices_and_exits_0() {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProc::start(&backend.url, dir.path(), &[], &[]);
    relay.wait_ready().await;
    let api = AdminClient::for_proc(&relay, "test-operator");
    let listener = Device::connect(&relay.ca_pem, relay.quic).await;
    let (mut push, _) = listener.subscribe("demo", "demo-key").await;
    let device = std::sync::Arc::new(Device::connect(&relay.ca_pem, relay.quic).await);
    // 8 senders in a closed loop until the relay stops answering.
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let device = device.clone();
            tokio::spawn(async move {
                let (mut accepted, mut refused) = (0u64, 0u64);
                loop {
                    match device.try_send("demo", "demo-key", batch("demo", 20)).await {
                        Ok(o) if forwarded(&o) || spooled(&o) => accepted += 1,
                        Ok(other) => panic!("unexpected outcome {other:?}"),
                        Err(_) => {
                            refused += 1;
                            break;
                        }
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    // Drain under load: once the senders' requests are being answered.
    wait_until("the senders' requests answered", DEADLINE, || async {
        let s = api.get("/admin/v1/status").await;
        s["totals"]["accepted_forwarded"].as_u64().unwrap_or(0) >= 16
    })
    .await;
    let (status, reply) = api
        .call(reqwest::Method::POST, "/admin/v1/drain", None)
        .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["draining"], true);
    // Push subscribers hear it first, then their stream ends (config notices from the
    // relay's first config fetch may come before it).
    let notice = loop {
        match push.next().await {
            Some(Message::PushNotice(PushNotice::ConfigChanged { .. })) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(
            notice,
            Some(Message::PushNotice(PushNotice::Draining { .. }))
        ),
        "{notice:?}"
    );
    let mut accepted = 0;
    for s in senders {
        let (a, refused) = s.await.unwrap();
        assert_eq!(refused, 1);
        accepted += a;
    }
    // The connection was closed with the `draining` code.
    assert_eq!(device.close_code(), Some(1));
    let exit = tokio::task::spawn_blocking(move || relay.wait_exit())
        .await
        .unwrap();
    assert!(exit.success(), "a drained relay exits 0: {exit:?}");
    // Every acknowledged batch is stored, once. A batch forwarded just as the drain
    // closed the connection may be stored with its reply lost (at-least-once allows
    // that): at most one per sender, the one it had in flight.
    let summary = backend.summary().await;
    assert!(accepted > 0);
    let stored = summary["batches_stored"].as_u64().unwrap();
    assert!(
        (accepted..=accepted + 8).contains(&stored),
        "accepted {accepted}, {summary}"
    );
    assert_eq!(summary["batches_duplicate"], 0);
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_relay_hands_its_spool_over_and_resumes_it_after_restart() {
    let Stack {
        backend,
        _dir: dir,
        relay,
        api,
        device,
    } = stack().await;
    api.put("/admin/v1/services/forwarding", json!({"degraded": true}))
        .await;
    for _ in 0..3 {
        assert!(spooled(
            &device.send("demo", "demo-key", batch("demo", 5)).await
        ));
    }
    drop(device);
    assert!(relay.terminate().success());
    let marker = dir.path().join("spool/spool/relay-admin/HANDOVER");
    let text = std::fs::read_to_string(&marker).expect("a handover marker");
    assert!(text.contains("relay-admin"), "{text}");
    assert_eq!(received(&backend).await, 0);

    let relay = RelayProc::start(&backend.url, dir.path(), &[], &[]);
    relay.wait_ready().await;
    assert!(!marker.exists(), "the marker is withdrawn at start");
    let api = AdminClient::for_proc(&relay, "test-operator");
    // Forwarding is still degraded (persisted): restore it and the spool drains.
    assert_eq!(
        api.get("/admin/v1/settings").await["switches"]["forwarding_degraded"],
        true
    );
    api.put("/admin/v1/services/forwarding", json!({"degraded": false}))
        .await;
    wait_until("replay after restart", DEADLINE, || async {
        stored(&backend).await == 3
    })
    .await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_feature_flag_routes_apps_by_rollout_and_rolls_back_at_once() {
    let Stack {
        backend,
        _dir,
        relay,
        api,
        device,
    } = stack().await;
    let owned_by_flag = || async {
        let text = reqwest::get(format!("{}/metrics", relay.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics::total(&text, "tern_relay_ingest_path_total")
    };
    let flags = api.get("/admin/v1/features").await;
    assert_eq!(flags[0]["name"], "ingest_in_place");
    assert_eq!(
        flags[0]["setting"],
        json!({"enabled": true, "rollout_bp": 10000})
    );
    assert_eq!(flags[0]["overridden"], false);
    let (status, reply) = api
        .call(
            reqwest::Method::PUT,
            "/admin/v1/features/warp_drive",
            Some(json!({"enabled": true, "rollout_bp": 1})),
        )
        .await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (404, Some("unknown_feature"))
    );
    let (status, reply) = api
        .call(
            reqwest::Method::PUT,
            "/admin/v1/features/ingest_in_place",
            Some(json!({"enabled": true, "rollout_bp": 10001})),
        )
        .await;
    assert_eq!((status, reply["field"].as_str()), (400, Some("rollout_bp")));

    // On (default): the in-place path, nothing routed away.
    assert!(forwarded(
        &device.send("demo", "demo-key", batch("demo", 5)).await
    ));
    assert_eq!(owned_by_flag().await, 0.0);
    // 50% of apps: each app on the side the devices' bucketing puts it.
    api.put(
        "/admin/v1/features/ingest_in_place",
        json!({"enabled": true, "rollout_bp": 5000}),
    )
    .await;
    let mut expected_owned = 0.0;
    for (app, key) in [("demo", "demo-key"), ("shop", "shop-key")] {
        let before = owned_by_flag().await;
        assert!(forwarded(&device.send(app, key, batch(app, 5)).await));
        let in_place = tern_protocol::rollout::in_rollout(app, "ingest_in_place", app, 5000);
        if !in_place {
            expected_owned += 1.0;
        }
        assert_eq!(
            owned_by_flag().await - before,
            if in_place { 0.0 } else { 1.0 },
            "{app}"
        );
    }
    // Off: every app takes the owned path, with the same answers.
    api.put(
        "/admin/v1/features/ingest_in_place",
        json!({"enabled": false, "rollout_bp": 10000}),
    )
    .await;
    assert!(forwarded(
        &device.send("demo", "demo-key", batch("demo", 5)).await
    ));
    assert_eq!(owned_by_flag().await, expected_owned + 1.0);
    // Rolled back to the default at once.
    api.delete("/admin/v1/features/ingest_in_place").await;
    assert!(forwarded(
        &device.send("demo", "demo-key", batch("demo", 5)).await
    ));
    assert_eq!(owned_by_flag().await, expected_owned + 1.0);
    assert_eq!(backend.summary().await["batches_stored"], 5);
    backend.stop().await;
}

/// Runs `tern-loadgen replay` against `relay`; the JSON report.
fn replay(recording: &std::path::Path, relay: &RelayProc, keep_ids: bool) -> Value {
    let ca = relay.dir.join("ca.pem");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tern-loadgen"));
    cmd.arg("replay")
        .arg("--store-dir")
        .arg(recording)
        .args(["--target", &relay.quic.to_string()])
        .arg("--ca")
        .arg(&ca)
        .args(["--key", "demo=demo-key", "--speed", "0", "--json"]);
    if keep_ids {
        cmd.arg("--keep-batch-ids");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_sample_replays_to_the_same_counts() {
    // Record on relay A.
    let backend_a = Backend::start(&demo_apps()).await;
    let dir_a = tempfile::tempdir().unwrap();
    let relay_a = RelayProc::start(&backend_a.url, dir_a.path(), &[], &[]);
    relay_a.wait_ready().await;
    let api = AdminClient::for_proc(&relay_a, "test-operator");
    let (status, reply) = api
        .call(
            reqwest::Method::PUT,
            "/admin/v1/record",
            Some(json!({"enabled": true, "sample_bp": 0})),
        )
        .await;
    assert_eq!((status, reply["field"].as_str()), (400, Some("sample_bp")));
    api.put(
        "/admin/v1/record",
        json!({"enabled": true, "apps": ["demo"], "sample_bp": 10000,
               "hash_user_ids": true, "drop_properties": true}),
    )
    .await;
    let device = Device::connect(&relay_a.ca_pem, relay_a.quic).await;
    let mut events = 0;
    for i in 0..20u64 {
        let mut b = batch("demo", 3 + i % 4);
        for e in &mut b.events {
            e.user_id = Some(tern_protocol::UserId::new(format!("user-{}", i % 5)));
        }
        events += b.events.len() as u64;
        assert!(forwarded(&device.send("demo", "demo-key", b).await));
    }
    for _ in 0..5 {
        assert!(forwarded(
            &device.send("shop", "shop-key", batch("shop", 2)).await
        ));
    }
    let status = api.get("/admin/v1/status").await;
    assert_eq!(status["record"]["batches"], 20, "only demo is recorded");
    drop(device);
    // The drain writes the open segment.
    assert!(relay_a.terminate().success());
    let recording = dir_a.path().join("spool");
    let seg_dir = recording.join("record/relay-admin");
    let segs: Vec<_> = std::fs::read_dir(&seg_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!segs.is_empty());
    let text = std::fs::read_to_string(&segs[0]).unwrap();
    assert!(
        !text.contains("user-1"),
        "user ids are hashed in the recording"
    );

    // Replay into relay B, a fresh backend: the same counts.
    let backend_b = Backend::start(&demo_apps()).await;
    let dir_b = tempfile::tempdir().unwrap();
    let relay_b = RelayProc::start(&backend_b.url, dir_b.path(), &[], &[]);
    relay_b.wait_ready().await;
    let report = replay(&recording, &relay_b, true);
    assert_eq!(report["batches"], 20);
    assert_eq!(report["events"], events);
    assert_eq!(report["outcomes"]["accepted_forwarded"], 20);
    let s = backend_b.summary().await;
    assert_eq!(s["batches_stored"], 20, "{s}");
    assert_eq!(s["events_unique"], events, "{s}");
    assert_eq!(
        s["events_unique"],
        backend_a.summary().await["events_unique"].as_u64().unwrap() - 10
    );
    // The same ids again: the backend dedupes the whole replay.
    replay(&recording, &relay_b, true);
    let s = backend_b.summary().await;
    assert_eq!(
        (
            s["batches_stored"].as_u64(),
            s["batches_duplicate"].as_u64()
        ),
        (Some(20), Some(20)),
        "{s}"
    );
    // Fresh ids: counted as new traffic.
    replay(&recording, &relay_b, false);
    let s = backend_b.summary().await;
    assert_eq!(s["batches_stored"], 40, "{s}");
    assert_eq!(s["events_unique"], 2 * events, "{s}");
    backend_a.stop().await;
    backend_b.stop().await;
}
