//! Live config, flags and messages end to end: the SDK against the local stack (stub +
//! relays with config cache and push hub, in-process, loopback). Config is changed
//! through the stub's admin API; the device hears of it through the relay's push
//! stream and fetches it.
//!
//! `config_changes_reach_the_device_listener` measures the propagation time (admin PUT
//! returned → device listener called) and prints it; the assertion only has a
//! generous deadline (timing thresholds never decide pass/fail).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tern_protocol::{InAppMessage, Properties, ShardMap};
use tern_sdk::{ConfigChange, FlagDecision, LiveConfig, RetryPolicy, Tern};
use tern_testkit::wait::{until, DEADLINE};
use tern_tests::device;
use tern_tests::stack::Stack;

fn start_device(dir: &std::path::Path, map: ShardMap, ca: &str) -> Tern {
    device::start(
        device::builder(dir, "demo-key", map, ca).upload(
            device::upload(ca).with_live(
                LiveConfig::default()
                    .with_retry(RetryPolicy::default().with_base(Duration::from_millis(200))),
            ),
        ),
    )
}

type Heard = Arc<Mutex<Vec<(Instant, ConfigChange)>>>;

fn listen(tern: &Tern) -> (Heard, tern_sdk::ListenerHandle) {
    let heard: Heard = Arc::default();
    let h = heard.clone();
    let handle = tern.add_config_listener(Arc::new(move |c: &ConfigChange| {
        h.lock().unwrap().push((Instant::now(), c.clone()));
    }));
    (heard, handle)
}

/// Waits for a change naming `key` (value or flag) heard after `since`; returns the
/// time from `since` to the listener call.
async fn heard_change(heard: &Heard, key: &str, since: Instant) -> Duration {
    let mut at = None;
    until(key, DEADLINE, || {
        at = heard.lock().unwrap().iter().find_map(|(t, c)| {
            let named = c
                .changed_values
                .iter()
                .chain(&c.changed_flags)
                .any(|k| k == key);
            (*t >= since && named).then_some(*t)
        });
        at.is_some()
    })
    .await;
    at.unwrap() - since
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_reach_the_device_listener() {
    let stack = Stack::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem);
    let (heard, _handle) = listen(&tern);
    // At start: the stack's bundle (greeting = hello).
    let first = until("the first bundle", DEADLINE, || {
        tern.config_info().version > 0
    })
    .await;
    assert_eq!(tern.config_string("greeting", "?"), "hello");
    println!("first bundle after start: {:.0} ms", ms(first));
    until("the push subscription", DEADLINE, || {
        tern.stats().upload.push_connected
    })
    .await;

    // Values: each change measured from the admin PUT returning to the listener call,
    // split at the moment a relay queued the `config_changed` notice (the reference:
    // the relay's 500 ms backend poll plus its push, which the SDK cannot shorten).
    let notices = || -> u64 {
        stack
            .relays
            .iter()
            .map(|r| r.push.counters().notices_queued.load(Ordering::Relaxed))
            .sum()
    };
    let mut samples = Vec::new();
    let mut device_share = Vec::new();
    for i in 0..8 {
        let value = format!("hello-{i}");
        let before = notices();
        stack
            .backend
            .admin_put("demo", "values/greeting", &json!(value))
            .await;
        let t_put = Instant::now();
        let mut t_relay = None;
        let mut t_heard = None;
        until("greeting", DEADLINE, || {
            if t_relay.is_none() && notices() > before {
                t_relay = Some(Instant::now());
            }
            t_heard = heard.lock().unwrap().iter().find_map(|(t, c)| {
                (*t >= t_put && c.changed_values.iter().any(|k| k == "greeting")).then_some(*t)
            });
            t_heard.is_some()
        })
        .await;
        assert_eq!(tern.config_string("greeting", "?"), value);
        let t_heard = t_heard.unwrap();
        samples.push(t_heard - t_put);
        if let Some(t_relay) = t_relay.filter(|t| *t <= t_heard) {
            device_share.push(t_heard - t_relay);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    device_share.sort();
    if !device_share.is_empty() {
        println!(
            "of which relay notice queued -> device listener (SDK share), {} samples: min {:.0} ms, median {:.0} ms, max {:.0} ms",
            device_share.len(),
            ms(device_share[0]),
            ms(device_share[device_share.len() / 2]),
            ms(*device_share.last().unwrap())
        );
    }
    // A flag: rolled out to everyone, then off.
    let t_put = Instant::now();
    stack
        .backend
        .admin_put(
            "demo",
            "flags/new_checkout",
            &json!({"key": "new_checkout", "enabled": true, "rollout_bp": 10000}),
        )
        .await;
    samples.push(heard_change(&heard, "new_checkout", t_put).await);
    assert_eq!(tern.flag("new_checkout"), FlagDecision::On);
    assert!(tern.flag_enabled("new_checkout"));
    let t_put = Instant::now();
    stack
        .backend
        .admin_put(
            "demo",
            "flags/new_checkout",
            &json!({"key": "new_checkout", "enabled": false}),
        )
        .await;
    let before = heard.lock().unwrap().len();
    until("the flag switched off", DEADLINE, || {
        heard.lock().unwrap().len() > before && !tern.flag_enabled("new_checkout")
    })
    .await;
    samples.push(t_put.elapsed());

    samples.sort();
    let median = samples[samples.len() / 2];
    println!(
        "config propagation (admin PUT -> device listener), {} changes: min {:.0} ms, median {:.0} ms, max {:.0} ms",
        samples.len(),
        ms(samples[0]),
        ms(median),
        ms(*samples.last().unwrap())
    );
    let s = tern.stats();
    println!("device counters: {:?}", s.upload);
    assert!(s.upload.push_notices >= 10, "{:?}", s.upload);
    assert!(s.upload.config_modified >= 10, "{:?}", s.upload);
    assert_eq!(s.live.listener_panics, 0);
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_with_the_relays_down_has_the_last_values() {
    let stack = Stack::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    stack
        .backend
        .admin_put("demo", "values/banner", &json!("summer sale"))
        .await;
    stack
        .backend
        .admin_put(
            "demo",
            "flags/beta",
            &json!({"key": "beta", "enabled": true, "rollout_bp": 10000}),
        )
        .await;
    {
        let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem);
        until("the bundle with the banner", DEADLINE, || {
            tern.config_string("banner", "") == "summer sale" && tern.flag_enabled("beta")
        })
        .await;
        tern.shutdown(Duration::from_secs(5));
    }
    for r in &stack.relays {
        r.kill();
    }
    let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem);
    let loaded = until("the cached bundle", DEADLINE, || {
        tern.config_info().version > 0
    })
    .await;
    println!(
        "cold start, relays down: cached bundle in use after {:.1} ms",
        ms(loaded)
    );
    assert_eq!(tern.config_string("banner", ""), "summer sale");
    assert_eq!(tern.config_string("greeting", ""), "hello");
    assert!(tern.flag_enabled("beta"));
    assert!(tern.config_info().from_cache);
    // The device keeps trying (and failing) in the background; values stay.
    until("a failed fetch", DEADLINE, || {
        tern.stats().upload.config_failures > 0
    })
    .await;
    assert_eq!(tern.config_string("banner", ""), "summer sale");
    assert!(tern.config_info().from_cache);
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_message_is_shown_once_and_its_impression_reaches_the_backend() {
    let stack = Stack::start(2).await;
    stack
        .backend
        .admin_put(
            "demo",
            "config",
            &json!({
                "values": {"greeting": "hello"},
                "messages": [{
                    "id": "welcome",
                    "title": "Welcome!",
                    "body": "Level up for a prize",
                    "trigger": {"on": "event", "name": "level_up"},
                    "pacing": {"min_interval_s": 0, "max_impressions": 1},
                    "priority": 1
                }, {
                    "id": "ios-only",
                    "title": "iOS",
                    "body": "never on this platform",
                    "trigger": {"on": "event", "name": "level_up"},
                    "targeting": {"platforms": ["ios"]},
                    "pacing": {"max_impressions": 0},
                    "priority": 9
                }]
            }),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem);
    tern.identify(Some("msg-user")).unwrap();
    let shown: Arc<Mutex<Vec<InAppMessage>>> = Arc::default();
    let s = shown.clone();
    let _handle = tern.add_message_listener(Arc::new(move |m: &InAppMessage| {
        s.lock().unwrap().push(m.clone());
    }));
    until("the bundle with the message", DEADLINE, || {
        tern.config_bundle()
            .is_some_and(|b| b.messages.iter().any(|m| m.id == "welcome"))
    })
    .await;
    for _ in 0..3 {
        tern.track("level_up", Properties::new()).unwrap();
    }
    until("the message", DEADLINE, || {
        !shown.lock().unwrap().is_empty()
    })
    .await;
    tern.flush();
    let url = format!("{}/verify/apps/demo/users/msg-user", stack.backend.url);
    let start = Instant::now();
    loop {
        let stats: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        if stats["by_kind"]["message_impression"].as_u64() == Some(1)
            && stats["by_kind"]["custom"].as_u64() == Some(3)
        {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "impression not at the backend: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Barrier: the three triggers are at the backend with one impression, so every
    // trigger was evaluated: the message was shown once, the other one never.
    let ids: Vec<String> = shown.lock().unwrap().iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids, vec!["welcome"]);
    assert_eq!(tern.stats().live.messages_shown, 1);
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_unreachable_the_push_stream_runs_over_https() {
    let stack = Stack::start(1).await;
    // QUIC points at a UDP port nobody serves (as if UDP were blocked).
    let dead_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut map = stack.shard_map(1);
    map.nodes[0].quic_addr = dead_udp.local_addr().unwrap().to_string();
    drop(dead_udp);
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(dir.path(), map, &stack.ca_pem);
    let (heard, _handle) = listen(&tern);
    until("the first bundle", DEADLINE, || {
        tern.config_info().version > 0
    })
    .await;
    until("the push subscription", DEADLINE, || {
        tern.stats().upload.push_connected
    })
    .await;
    assert_eq!(stack.relays[0].push.subscribers(), 1);
    let t_put = Instant::now();
    stack
        .backend
        .admin_put("demo", "values/greeting", &json!("over https"))
        .await;
    let d = heard_change(&heard, "greeting", t_put).await;
    println!(
        "config propagation over the HTTPS push stream: {:.0} ms",
        ms(d)
    );
    assert_eq!(tern.config_string("greeting", ""), "over https");
    let st = tern.stats().upload;
    assert!(st.router.https_ok > 0, "{st:?}");
    assert_eq!(st.router.quic_ok, 0, "{st:?}");
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_notice_moves_the_subscription_to_the_next_relay() {
    let stack = Stack::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem);
    let (heard, _handle) = listen(&tern);
    until("the push subscription", DEADLINE, || {
        tern.stats().upload.push_connected
    })
    .await;
    let subscribers =
        || -> Vec<usize> { stack.relays.iter().map(|r| r.push.subscribers()).collect() };
    until("one subscriber", DEADLINE, || {
        subscribers().iter().sum::<usize>() == 1
    })
    .await;
    let owner = subscribers().iter().position(|n| *n == 1).unwrap();
    let other = 1 - owner;
    let sent = stack.relays[owner].push.publish(
        &tern_protocol::AppId::new("demo"),
        &tern_protocol::PushNotice::Draining {
            shard_map_version: 1,
        },
    );
    assert_eq!(sent, 1);
    until("the subscription on the other relay", DEADLINE, || {
        subscribers()[other] == 1 && subscribers()[owner] == 0
    })
    .await;
    let t_put = Instant::now();
    stack
        .backend
        .admin_put("demo", "values/greeting", &json!("after draining"))
        .await;
    heard_change(&heard, "greeting", t_put).await;
    assert_eq!(tern.config_string("greeting", ""), "after draining");
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_down_closes_the_push_stream_and_up_catches_up() {
    let stack = Stack::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem);
    until("the push subscription", DEADLINE, || {
        tern.stats().upload.push_connected
    })
    .await;
    assert_eq!(stack.relays[0].push.subscribers(), 1);
    tern.set_network_available(false);
    until("the push stream closed", DEADLINE, || {
        stack.relays[0].push.subscribers() == 0 && !tern.stats().upload.push_connected
    })
    .await;
    // A device that stays online: once it has heard of the change, the relay has the
    // new bundle and pushed it (the barrier for "nothing reached the offline device").
    let witness_dir = tempfile::tempdir().unwrap();
    let witness = start_device(witness_dir.path(), stack.shard_map(1), &stack.ca_pem);
    until("the witness's push subscription", DEADLINE, || {
        witness.stats().upload.push_connected && stack.relays[0].push.subscribers() == 1
    })
    .await;
    let fetches = tern.stats().upload.config_fetches;
    stack
        .backend
        .admin_put("demo", "values/greeting", &json!("while offline"))
        .await;
    until("the change at the online witness", DEADLINE, || {
        witness.config_string("greeting", "") == "while offline"
    })
    .await;
    assert_eq!(
        tern.config_string("greeting", ""),
        "hello",
        "no fetch while offline"
    );
    assert_eq!(tern.stats().upload.config_fetches, fetches);
    tern.set_network_available(true);
    until("the change after reconnecting", DEADLINE, || {
        tern.config_string("greeting", "") == "while offline"
    })
    .await;
    until("the push subscription again", DEADLINE, || {
        tern.stats().upload.push_connected && stack.relays[0].push.subscribers() == 2
    })
    .await;
    witness.shutdown(Duration::from_secs(5));
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_map_change_is_pushed_and_fetched_without_any_upload() {
    let stack = Stack::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem);
    until("the push subscription", DEADLINE, || {
        tern.stats().upload.push_connected
    })
    .await;
    assert_eq!(tern.stats().upload.shard_map_version, 1);
    // Every relay installs map 2 (and broadcasts `shard_map_changed` to subscribers).
    for r in &stack.relays {
        assert!(r.running.services().shard_map.set(stack.shard_map(2)));
    }
    until("map 2 on the device", DEADLINE, || {
        tern.stats().upload.shard_map_version == 2
    })
    .await;
    assert_eq!(tern.stats().upload.batches_acked, 0, "no upload carried it");
    tern.shutdown(Duration::from_secs(5));
}
