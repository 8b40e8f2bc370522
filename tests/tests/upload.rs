//! The SDK's uploader against the local stack (stub + relays, in-process, loopback):
//! real QUIC and HTTPS, real store, real relay pipeline. Assertions are on the stub's
//! verification counters.

use std::time::Duration;

use tern_protocol::ShardMap;
use tern_sdk::Tern;
use tern_tests::device::{self, track};
use tern_tests::stack::Stack;

const DEADLINE: Duration = Duration::from_secs(30);

fn start_device(dir: &std::path::Path, map: ShardMap, ca: &str) -> Tern {
    device::start(device::builder(dir, "demo-key", map, ca))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_delivered_exactly_once_over_quic() {
    let stack = Stack::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem);
    track(&tern, 1000);
    tern.flush();
    let s = stack.backend.wait_events(1000, DEADLINE).await;
    assert_eq!(s["events_unique"], 1000, "{s}");
    assert_eq!(s["events_duplicate"], 0, "{s}");
    // The device learns of the last acks a moment after the backend stored them.
    let deadline = std::time::Instant::now() + DEADLINE;
    while tern.stats().upload.events_acked < 1000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = tern.stats().upload;
    assert_eq!(st.events_acked, 1000, "{st:?}");
    // (A handshake slower than the connect timeout on a loaded machine may send a
    // request over HTTPS; QUIC must still carry the traffic.)
    assert!(st.router.quic_ok > st.router.https_ok, "{st:?}");
    // The store is empty once everything is acknowledged.
    let deadline = std::time::Instant::now() + DEADLINE;
    while tern.stats().queued_events > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tern.stats().queued_events, 0);
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_unreachable_delivery_falls_back_to_https() {
    let stack = Stack::start(1).await;
    // QUIC points at a UDP port nobody serves (as if UDP were blocked).
    let dead_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut map = stack.shard_map(1);
    map.nodes[0].quic_addr = dead_udp.local_addr().unwrap().to_string();
    drop(dead_udp);
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(dir.path(), map, &stack.ca_pem);
    track(&tern, 300);
    tern.flush();
    let s = stack.backend.wait_events(300, DEADLINE).await;
    assert_eq!(s["events_unique"], 300, "{s}");
    let deadline = std::time::Instant::now() + DEADLINE;
    while tern.stats().upload.events_acked < 300 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = tern.stats().upload;
    assert!(st.router.https_ok > 0, "{st:?}");
    assert_eq!(st.router.quic_ok, 0, "{st:?}");
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_relay_fails_over_to_the_next_in_the_ranking() {
    let stack = Stack::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let map = stack.shard_map(1);
    // Kill the relay that owns this device's anonymous key... which one that is depends
    // on the device id, so kill two of three: whoever owned it, one relay is left.
    stack.relays[0].kill();
    stack.relays[1].kill();
    let tern = start_device(dir.path(), map, &stack.ca_pem);
    track(&tern, 500);
    tern.flush();
    let s = stack.backend.wait_events(500, DEADLINE).await;
    assert_eq!(s["events_unique"], 500, "{s}; {:?}", tern.stats().upload);
    assert_eq!(s["events_duplicate"], 0, "{s}");
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_outage_is_absorbed_by_the_relay_spool() {
    let stack = Stack::start(1).await;
    stack.backend.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem);
    track(&tern, 400);
    tern.flush();
    // Acknowledged as spooled: the device's store empties while the backend is down.
    let deadline = std::time::Instant::now() + DEADLINE;
    while tern.stats().upload.events_acked < 400 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tern.stats().upload.events_acked, 400);
    assert_eq!(stack.backend.summary().await["events_unique"], 0);
    stack.backend.set_down(false);
    // No device sends anything more: the replayer's own probe closes the breaker and
    // the spool drains.
    let s = stack.backend.wait_events(400, DEADLINE).await;
    assert_eq!(s["events_unique"], 400, "{s}");
    assert_eq!(s["events_duplicate"], 0, "{s}");
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_shard_map_is_fetched_persisted_and_used_after_restart() {
    let stack = Stack::start(2).await;
    // The relays serve version 5 of a map in which only relay-2 is active.
    let mut newer = stack.shard_map(5);
    newer.nodes[0].state = tern_protocol::NodeState::Draining;
    for r in &stack.relays {
        assert!(r.running.services().shard_map.set(newer.clone()));
    }
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem);
    track(&tern, 50);
    tern.flush();
    let s = stack.backend.wait_events(50, DEADLINE).await;
    assert_eq!(s["events_unique"], 50, "{s}");
    let deadline = std::time::Instant::now() + DEADLINE;
    while tern.stats().upload.shard_map_version != 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tern.stats().upload.shard_map_version, 5);
    // Every acknowledgement heard before the restart (a batch whose reply was still on
    // its way would rightly be sent again, and forwarded twice).
    let deadline = std::time::Instant::now() + DEADLINE;
    while tern.stats().queued_events != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(tern.stats().queued_events, 0);
    tern.shutdown(Duration::from_secs(5));
    let saved = tern_sdk::upload::load_map(dir.path()).expect("persisted");
    assert_eq!(saved, newer);
    // Restarted with the old bootstrap map, the device uses the persisted newer one:
    // everything goes to relay-2.
    let before = stack.relays[1]
        .ingest
        .counters()
        .accepted_forwarded
        .load(std::sync::atomic::Ordering::Relaxed);
    let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem);
    let deadline = std::time::Instant::now() + DEADLINE;
    while tern.stats().upload.shard_map_version != 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        tern.stats().upload.shard_map_version,
        5,
        "the persisted map"
    );
    track(&tern, 50);
    tern.flush();
    let s = stack.backend.wait_events(100, DEADLINE).await;
    assert_eq!(s["events_unique"], 100, "{s}");
    // A relay counts a batch as forwarded when the backend's reply reaches it, a moment
    // after the backend stored it: wait for the counters to catch up.
    let forwarded = |i: usize| {
        stack.relays[i]
            .ingest
            .counters()
            .accepted_forwarded
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let stored = stack.backend.summary().await["batches_stored"]
        .as_u64()
        .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while forwarded(0) + forwarded(1) < stored && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        forwarded(1) > before,
        "relay-2 took the batches after the restart"
    );
    assert_eq!(forwarded(0) + forwarded(1), stored);
    tern.shutdown(Duration::from_secs(5));
}

/// Devices whose uploaders run as tasks on one shared runtime, each sending from its own
/// loopback address (what `tern-fleet` pods do), deliver exactly what they recorded,
/// and `shutdown` waits for each uploader task to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_sharing_a_runtime_deliver_from_their_own_addresses() {
    let stack = Stack::start(3).await;
    let dirs: Vec<_> = (0..20).map(|_| tempfile::tempdir().unwrap()).collect();
    let devices: Vec<Tern> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let address = std::net::IpAddr::from([127, 1, 0, i as u8 + 1]);
            let upload = device::upload(&stack.ca_pem)
                .with_transport(
                    device::transport(
                        &stack.ca_pem,
                        Duration::from_millis(500),
                        Duration::from_secs(3),
                    )
                    .with_local_address(address),
                )
                .with_runtime(tokio::runtime::Handle::current());
            device::start(
                device::builder(dir.path(), "demo-key", stack.shard_map(1), &stack.ca_pem)
                    .upload(upload),
            )
        })
        .collect();
    for tern in &devices {
        track(tern, 100);
        tern.flush();
    }
    let s = stack.backend.wait_events(2000, DEADLINE).await;
    assert_eq!(s["events_unique"], 2000, "{s}");
    assert_eq!(s["events_duplicate"], 0, "{s}");
    let deadline = std::time::Instant::now() + DEADLINE;
    while devices.iter().any(|d| d.stats().upload.events_acked < 100)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for d in &devices {
        assert_eq!(d.stats().upload.events_acked, 100, "{:?}", d.stats().upload);
    }
    // Shutdown blocks until the uploader task has ended; done off the runtime's
    // workers, as the config's docs ask.
    let report = tokio::task::spawn_blocking(move || {
        devices
            .iter()
            .map(|d| d.shutdown(Duration::from_secs(5)).queued_events)
            .sum::<u64>()
    })
    .await
    .unwrap();
    assert_eq!(report, 0);
}

/// Every device of a fleet coming back online at once, against a relay whose
/// handshake pace starts low (32 at once, as many more as it finishes in 250 ms): the
/// relay refuses what it cannot finish in time, and the devices take the refusals for
/// back-pressure — they back off and come back to the same relay over QUIC. Every
/// event arrives; nothing goes over HTTPS; every failed request was a busy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_returning_online_at_once_are_paced_not_sent_to_https() {
    const DEVICES: usize = 200;
    const EVENTS: usize = 5;
    let backend = tern_tests::stack::Backend::start(tern_tests::stack::APPS).await;
    let (tls, ca_pem) = tern_testkit::relay::self_signed();
    let relay =
        tern_tests::stack::Relay::start_with(&backend, "relay-1", &tls, &ca_pem, |mut c| {
            c.limits.handshake_pace_floor = 32;
            c.limits.handshake_queue = Duration::from_millis(250);
            c
        })
        .await;
    let map = ShardMap {
        version: 1,
        nodes: vec![relay.node()],
    };
    let dirs: Vec<_> = (0..DEVICES).map(|_| tempfile::tempdir().unwrap()).collect();
    let devices: Vec<Tern> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let address = std::net::IpAddr::from([127, 2, (i / 250) as u8, (i % 250) as u8 + 1]);
            // The SDK's own connect timeout (3 s) and backoff (full jitter from 1 s).
            let upload = tern_sdk::upload::UploadConfig::default()
                .with_transport(
                    tern_sdk::net::transport::TransportConfig::default()
                        .with_only_ca(&ca_pem)
                        .with_local_address(address),
                )
                .with_runtime(tokio::runtime::Handle::current())
                // A storm paced over seconds is waited for (several requesters of a
                // device report busy outcomes: the limit alone would be used up fast).
                .with_router(
                    tern_sdk::route::RouterConfig::default()
                        .with_busy_patience(Duration::from_secs(60)),
                );
            let tern = device::start(
                device::builder(dir.path(), "demo-key", map.clone(), &ca_pem).upload(upload),
            );
            tern.set_network_available(false);
            track(&tern, EVENTS);
            tern
        })
        .collect();
    // Back online together: every device connects at once.
    for tern in &devices {
        tern.set_network_available(true);
        tern.flush();
    }
    let total = (DEVICES * EVENTS) as u64;
    let s = backend.wait_events(total, Duration::from_secs(120)).await;
    assert_eq!(s["events_unique"], total, "{s}");
    assert_eq!(s["devices"], DEVICES as u64, "{s}");
    let (mut busy, mut failures, mut https, mut quic) = (0, 0, 0, 0);
    for d in &devices {
        let r = d.stats().upload.router;
        busy += r.busy;
        failures += r.failures;
        https += r.https_ok;
        quic += r.quic_ok;
    }
    eprintln!("quic {quic} https {https} busy {busy} failures {failures}");
    assert!(busy > 0, "the storm was paced: some handshakes refused");
    assert_eq!(https, 0, "back-pressure sent nothing to HTTPS");
    assert_eq!(failures, busy, "every failed request was a busy one");
    tokio::task::spawn_blocking(move || {
        for d in &devices {
            d.shutdown(Duration::from_secs(5));
        }
    })
    .await
    .unwrap();
}
