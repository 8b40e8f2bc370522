//! The Kafka sink against a real Kafka-protocol broker: `tansu` on loopback with
//! SQLite storage (`tern_testkit::kafka`), the real `tern-relay` binary with
//! `sink = "kafka"`, the stub as the backend the registry comes from, and QUIC
//! devices that resend a batch until it is accepted.
//!
//! Every verdict comes from reading the topics back with a consumer: every batch a
//! device saw accepted is in its topic, byte for byte, keyed by app and user, with its
//! headers; a batch appears more than once only as the same batch id (a resend).
//!
//! A partition without a leader is made by `FaultProxy` in front of the broker (one
//! tansu broker leads every partition): it reports the partition as a cluster reports
//! an offline one.
//!
//! A record the broker refuses is made by a JSON schema on its topic (tansu validates
//! records against `schemas/<topic>.json`); a record refused everywhere, by the
//! producer's own size limit, which the dead letter topic has too.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_protocol::{BatchId, Durability, EventBatch, IngestOutcome};
use tern_relay::backend::kafka::{
    HEADER_APP_ID, HEADER_BATCH_ID, HEADER_DEVICE_ID, HEADER_EVENTS, HEADER_REFUSED,
    HEADER_SEQ_FIRST, HEADER_SEQ_LAST, HEADER_TOPIC,
};
use tern_testkit::kafka::{Broker, Record};
use tern_testkit::kafka_faults::FaultProxy;
use tern_testkit::relay::AdminClient;
use tern_testkit::{wait_for, Backend, Batch, Device, RelayProc};

const KEY: &str = "k-0123456789";
const EVENTS: &str = "tern.events";
const DEAD: &str = "tern.dead-letter";

fn backend(apps: &[&str]) -> Backend {
    let toml: String = apps
        .iter()
        .map(|a| format!("[[apps]]\nid = \"{a}\"\nkeys = [\"{KEY}\"]\n"))
        .collect();
    Backend::start_blocking(&toml)
}

/// A scenario's processes, stopped when dropped (the relay first).
struct Stack {
    relay: RelayProc,
    backend: Backend,
    broker: Broker,
    relay_dir: PathBuf,
}

/// A broker keeping its data in `dir/broker`.
fn start_broker(dir: &Path) -> Broker {
    Broker::start(&dir.join("broker")).unwrap_or_else(|e| panic!("{e}"))
}

/// `topics` and the dead letter topic created on `broker`, the stub with `apps`, and a
/// relay (in `dir/relay`) forwarding to `topic` with a delivery timeout (ms) and
/// `extra` TOML lines in its `[kafka]` table, ready.
async fn stack(
    dir: &Path,
    broker: Broker,
    apps: &[&str],
    topics: &[(&str, i32)],
    topic: &str,
    delivery_timeout_ms: u64,
    extra: &str,
) -> Stack {
    for (t, n) in topics.iter().chain(&[(DEAD, 1)]) {
        broker.create_topic(t, *n, &[]).await.unwrap();
    }
    let backend = backend(apps);
    let relay_dir = dir.join("relay");
    std::fs::create_dir_all(&relay_dir).unwrap();
    let relay = relay_with(
        &backend,
        &broker,
        topic,
        &relay_dir,
        delivery_timeout_ms,
        extra,
    );
    wait_ready(&relay).await;
    Stack {
        relay,
        backend,
        broker,
        relay_dir,
    }
}

/// The relay binary with the Kafka sink on `broker`, records to `topic`, with a
/// delivery timeout (ms) and `extra` TOML lines at the end of the `[kafka]` table. A scenario with the broker up gives a long timeout: a machine
/// loaded by other suites must not turn an acknowledgement into a spooled batch.
fn relay_with(
    backend: &Backend,
    broker: &Broker,
    topic: &str,
    dir: &Path,
    delivery_timeout_ms: u64,
    extra: &str,
) -> RelayProc {
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "sink = \"kafka\"\n[kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\n\
             dead_letter_topic = \"{DEAD}\"\ndelivery_timeout_ms = {delivery_timeout_ms}\n\
             linger_ms = 2\n{extra}\n",
            broker.bootstrap()
        ),
    )
    .unwrap();
    let relay = RelayProc::builder(&backend.url)
        .id("relay-k")
        .dir(dir)
        .log_level("info")
        .args(["--config".to_owned(), config.display().to_string()])
        .start();
    relay
}

async fn wait_ready(relay: &RelayProc) {
    let url = format!("{}/readyz", relay.metrics);
    wait_for("relay /readyz", Duration::from_secs(20), || async {
        match reqwest::get(&url).await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

async fn read(broker: &Broker, topic: &str) -> Vec<Record> {
    tokio::task::block_in_place(|| broker.read_topic(topic)).unwrap_or_else(|e| panic!("{e}"))
}

/// What the devices saw: every batch accepted, by id, with how it was made durable.
#[derive(Default)]
struct Sent {
    accepted: BTreeMap<BatchId, (EventBatch, Durability)>,
    sends: u64,
}

/// Sends `batch` until it is accepted (a `Retry` is waited out, a transport failure
/// reconnects), as a device does. Returns the final durability.
async fn send_until_accepted(
    dev: &mut Device,
    ca: &str,
    addr: std::net::SocketAddr,
    app: &str,
    batch: &EventBatch,
    sent: &Mutex<Sent>,
) -> Durability {
    loop {
        sent.lock().unwrap().sends += 1;
        match dev.try_send(app, KEY, batch.clone()).await {
            Ok(IngestOutcome::Accepted { durability }) => {
                sent.lock()
                    .unwrap()
                    .accepted
                    .insert(batch.batch_id, (batch.clone(), durability.clone()));
                return durability;
            }
            Ok(IngestOutcome::Retry { after_ms, .. }) => {
                tokio::time::sleep(Duration::from_millis(after_ms.clamp(10, 500))).await;
            }
            Ok(other) => panic!("batch {} not accepted: {other:?}", batch.batch_id),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(d) = Device::try_connect(ca, addr, &[tern_protocol::ALPN]).await {
                    *dev = d;
                }
            }
        }
    }
}

/// `devices` devices of `app`, each sending `batches` batches of 10 events of one user
/// (`u<i>`), one at a time; every `resend_every`-th batch is sent a second time after
/// it was accepted (a device that lost the reply). Returns when all are accepted.
async fn drive(
    relay: &RelayProc,
    app: &str,
    devices: usize,
    batches: u64,
    resend_every: u64,
    sent: Arc<Mutex<Sent>>,
) {
    let mut tasks = Vec::new();
    for d in 0..devices {
        let (ca, addr, app, sent) = (
            relay.ca_pem.clone(),
            relay.quic,
            app.to_owned(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut dev = Device::connect(&ca, addr).await;
            let device = tern_protocol::DeviceId::random();
            for b in 0..batches {
                let batch = Batch::new(&app)
                    .device(device)
                    .user(&format!("{app}-u{d}"))
                    .first_seq(b * 10 + 1)
                    .events(10)
                    .build();
                send_until_accepted(&mut dev, &ca, addr, &app, &batch, &sent).await;
                if resend_every > 0 && b % resend_every == 0 {
                    send_until_accepted(&mut dev, &ca, addr, &app, &batch, &sent).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Checks `records` against what the devices saw accepted (of `app`, or all):
/// every accepted batch present with its exact bytes' content, key and headers; each
/// user's batches in one partition in `seq` order; extra copies only of the same
/// batch id. Returns (records, distinct batch ids).
fn verify(records: &[Record], sent: &Sent, app: Option<&str>, in_order: bool) -> (usize, usize) {
    let mut by_id: HashMap<BatchId, Vec<&Record>> = HashMap::new();
    for r in records {
        let id: BatchId = r
            .header(HEADER_BATCH_ID)
            .expect("batch id header")
            .parse()
            .expect("batch id parses");
        by_id.entry(id).or_default().push(r);
    }
    // One user's records in one partition; with `in_order`, in `seq` order there (a
    // resend repeats a range right after it). A replayed spool may land after newer
    // batches sent directly, so the outage scenario does not ask for order.
    let mut user_partition: HashMap<Vec<u8>, (i32, u64)> = HashMap::new();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in sorted {
        let first: u64 = r.header(HEADER_SEQ_FIRST).unwrap().parse().unwrap();
        let entry = user_partition
            .entry(r.key.clone())
            .or_insert((r.partition, first));
        assert_eq!(entry.0, r.partition, "one user's records in one partition");
        if in_order {
            assert!(first >= entry.1, "a user's records in seq order");
        }
        entry.1 = first;
    }
    let mut expected = 0;
    for (id, (batch, _)) in &sent.accepted {
        if app.is_some_and(|a| batch.app_id.as_str() != a) {
            continue;
        }
        expected += 1;
        let copies = by_id
            .get(id)
            .unwrap_or_else(|| panic!("accepted batch {id} is not in the topic"));
        for r in copies {
            let back: EventBatch = tern_protocol::decode_payload(&r.value)
                .expect("the value is the batch's MessagePack");
            assert_eq!(&back, batch, "the record holds the batch as sent");
            let user = batch.events[0].user_id.as_ref().unwrap();
            let mut key = batch.app_id.as_str().as_bytes().to_vec();
            key.push(0);
            key.extend_from_slice(user.as_str().as_bytes());
            assert_eq!(r.key, key, "key = app, NUL, routing user");
            assert_eq!(r.header(HEADER_APP_ID), Some(batch.app_id.as_str()));
            assert_eq!(
                r.header(HEADER_DEVICE_ID),
                Some(batch.device_id.as_uuid().hyphenated().to_string().as_str())
            );
            assert_eq!(
                r.header(HEADER_SEQ_FIRST),
                Some(batch.events[0].seq.to_string().as_str())
            );
            assert_eq!(
                r.header(HEADER_SEQ_LAST),
                Some(batch.events.last().unwrap().seq.to_string().as_str())
            );
            assert_eq!(r.header(HEADER_EVENTS), Some("10"));
        }
    }
    let unknown: Vec<&BatchId> = by_id
        .keys()
        .filter(|id| !sent.accepted.contains_key(id))
        .collect();
    assert!(
        unknown.is_empty(),
        "records of batches no device sent: {unknown:?}"
    );
    assert_eq!(by_id.len(), expected, "distinct batches in the topic");
    (records.len(), by_id.len())
}

/// Prints the relay's warnings and errors (shown with `--nocapture`, and with a
/// failing test's output).
fn print_warnings(dir: &Path) {
    let log = std::fs::read_to_string(dir.join("relay.log")).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(20)
    {
        println!("relay: {line}");
    }
}

/// Waits until the relay's spool is empty (everything spooled was replayed).
async fn wait_spool_empty(dir: &Path) {
    wait_for("the spool replayed", Duration::from_secs(90), || async {
        match spool_files(dir) {
            0 => Ok(()),
            n => Err(format!("{n} spool files")),
        }
    })
    .await
}

fn spool_files(dir: &Path) -> usize {
    fn walk(p: &Path, n: &mut usize) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, n);
                } else if !path.to_string_lossy().contains(".lease") {
                    *n += 1;
                }
            }
        }
    }
    let mut n = 0;
    walk(&dir.join("spool"), &mut n);
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_accepted_batch_is_in_the_topic_keyed_by_user_and_duplicated_only_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let Stack {
        relay,
        backend,
        broker,
        relay_dir,
    } = stack(
        dir.path(),
        start_broker(dir.path()),
        &["demo"],
        &[(EVENTS, 4)],
        EVENTS,
        20_000,
        "",
    )
    .await;

    let sent = Arc::new(Mutex::new(Sent::default()));
    drive(&relay, "demo", 16, 30, 7, sent.clone()).await;
    wait_spool_empty(&relay_dir).await;
    let sent = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    let forwarded = sent
        .accepted
        .values()
        .filter(|(_, d)| *d == Durability::Forwarded)
        .count();
    let records = read(&broker, EVENTS).await;
    let (n, distinct) = verify(&records, &sent, None, true);
    println!(
        "{} sends, {} batches accepted ({forwarded} forwarded), {n} records, {distinct} distinct",
        sent.sends,
        sent.accepted.len()
    );
    assert_eq!(distinct, 16 * 30);
    // Resends (every 7th batch) are second records of the same batch id, no more.
    assert!(n >= distinct && n <= distinct + 16 * 5, "{n} records");
    // The backend got no batch: ingest went to Kafka alone.
    let summary = backend.summary().await;
    assert_eq!(summary["batches_received"], 0, "{summary}");
    assert!(
        read(&broker, DEAD).await.is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_killed_mid_load_is_spooled_around_and_replayed_when_it_returns_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let Stack {
        relay,
        backend: _backend,
        mut broker,
        relay_dir,
    } = stack(
        dir.path(),
        start_broker(dir.path()),
        &["demo"],
        &[(EVENTS, 2)],
        EVENTS,
        3_000,
        "",
    )
    .await;

    // Before the outage: acknowledged records.
    let sent = Arc::new(Mutex::new(Sent::default()));
    drive(&relay, "demo", 4, 10, 0, sent.clone()).await;
    let before = sent.lock().unwrap().accepted.len();
    assert_eq!(before, 40);

    // The broker dies under load: devices keep sending, the relay spools.
    let load = {
        let sent = sent.clone();
        let (ca, addr) = (relay.ca_pem.clone(), relay.quic);
        tokio::spawn(async move {
            let mut dev = Device::connect(&ca, addr).await;
            let device = tern_protocol::DeviceId::random();
            for b in 0..40u64 {
                let batch = Batch::new("demo")
                    .device(device)
                    .user("outage-user")
                    .first_seq(b * 10 + 1)
                    .events(10)
                    .build();
                send_until_accepted(&mut dev, &ca, addr, "demo", &batch, &sent).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.kill();
    wait_for(
        "batches spooled while the broker is down",
        Duration::from_secs(60),
        || {
            let sent = sent.clone();
            async move {
                let spooled = sent
                    .lock()
                    .unwrap()
                    .accepted
                    .values()
                    .filter(|(_, d)| *d == Durability::Spooled)
                    .count();
                if spooled >= 10 {
                    Ok(())
                } else {
                    Err(format!("{spooled} spooled"))
                }
            }
        },
    )
    .await;
    assert!(spool_files(&relay_dir) > 0, "spool objects on disk");

    // The broker returns on its data; the replay delivers the spool.
    broker.restart().unwrap_or_else(|e| panic!("{e}"));
    load.await.unwrap();
    wait_spool_empty(&relay_dir).await;
    let sent = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    let spooled = sent
        .accepted
        .values()
        .filter(|(_, d)| *d == Durability::Spooled)
        .count();
    let records = read(&broker, EVENTS).await;
    let (n, distinct) = verify(&records, &sent, None, false);
    println!(
        "{} accepted ({spooled} spooled), {n} records, {distinct} distinct",
        sent.accepted.len()
    );
    assert_eq!(
        distinct, 80,
        "the records from before the restart and the replayed ones"
    );
    assert!(spooled >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_topic_spools_only_its_own_apps_batches_until_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    // Per-app topics; `late`'s does not exist yet (an operator has not created it).
    let Stack {
        relay,
        backend: _backend,
        broker,
        relay_dir,
    } = stack(
        dir.path(),
        start_broker(dir.path()),
        &["demo", "late"],
        &[("tern.events.demo", 2)],
        "tern.events.{app}",
        3_000,
        "",
    )
    .await;

    let sent = Arc::new(Mutex::new(Sent::default()));
    let (a, b) = tokio::join!(
        drive(&relay, "demo", 4, 10, 0, sent.clone()),
        drive(&relay, "late", 2, 5, 0, sent.clone()),
    );
    let _ = (a, b);
    {
        let s = sent.lock().unwrap();
        let late_forwarded = s
            .accepted
            .values()
            .filter(|(b, d)| b.app_id.as_str() == "late" && *d == Durability::Forwarded)
            .count();
        assert_eq!(late_forwarded, 0, "no acknowledgement without the topic");
    }

    broker
        .create_topic("tern.events.late", 1, &[])
        .await
        .unwrap();
    wait_spool_empty(&relay_dir).await;
    let late = read(&broker, "tern.events.late").await;
    let demo = read(&broker, "tern.events.demo").await;
    let dead = read(&broker, DEAD).await;
    let s = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    assert_eq!(
        verify(&demo, &s, Some("demo"), false).1,
        40,
        "the other app's batches reached their topic"
    );
    assert_eq!(verify(&late, &s, Some("late"), false).1, 10);
    assert!(dead.is_empty(), "a missing topic is no refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_without_a_leader_spools_only_its_users_batches_until_it_has_one() {
    // Partition 1 of the topic is leaderless (the proxy in front of the broker reports
    // it as a cluster reports an offline partition) from before the relay starts:
    // the records of users whose key hashes there cannot be acknowledged. Those
    // batches time out and are spooled, one by one; partition 0's users flow on.
    // Once the partition has a leader again, replay brings the rest.
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start().unwrap_or_else(|e| panic!("{e}"));
    proxy.faults().set_leader_down(EVENTS, 1, true);
    let broker =
        Broker::start_behind(&dir.path().join("broker"), &proxy).unwrap_or_else(|e| panic!("{e}"));
    let Stack {
        relay,
        backend: _backend,
        broker,
        relay_dir,
    } = stack(
        dir.path(),
        broker,
        &["demo"],
        &[(EVENTS, 2)],
        EVENTS,
        3_000,
        "",
    )
    .await;

    let sent = Arc::new(Mutex::new(Sent::default()));
    drive(&relay, "demo", 8, 4, 0, sent.clone()).await;
    let spooled_while_down = spool_files(&relay_dir);
    assert!(
        spooled_while_down > 0,
        "the leaderless partition's batches spooled"
    );

    proxy.faults().set_leader_down(EVENTS, 1, false);
    wait_spool_empty(&relay_dir).await;
    let records = read(&broker, EVENTS).await;
    let dead = read(&broker, DEAD).await;
    print_warnings(&relay_dir);
    let s = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    assert_eq!(
        verify(&records, &s, Some("demo"), false).1,
        32,
        "every batch there"
    );
    assert!(dead.is_empty(), "a leaderless partition is no refusal");
    // Per partition: how each batch was acknowledged to its device.
    let mut by_partition: BTreeMap<i32, (usize, usize)> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in &records {
        let id: BatchId = r.header(HEADER_BATCH_ID).unwrap().parse().unwrap();
        if !seen.insert(id) {
            continue;
        }
        let entry = by_partition.entry(r.partition).or_default();
        match s.accepted[&id].1 {
            Durability::Forwarded => entry.0 += 1,
            Durability::Spooled => entry.1 += 1,
            ref other => panic!("accepted as {other:?}"),
        }
    }
    println!("(forwarded, spooled) by partition: {by_partition:?}");
    let (down_fwd, down_spooled) = by_partition.get(&1).copied().unwrap_or_default();
    let (up_fwd, _) = by_partition.get(&0).copied().unwrap_or_default();
    assert!(down_spooled > 0, "users on the leaderless partition");
    assert_eq!(
        down_fwd, 0,
        "nothing acknowledged as forwarded without a leader"
    );
    assert!(
        up_fwd > 0,
        "the partition with a leader took records meanwhile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_the_broker_refuses_goes_to_the_dead_letter_topic_with_why() {
    // The broker validates `strict`'s topic against a JSON schema, which the
    // relay's MessagePack records never pass: it refuses each (`INVALID_RECORD`).
    // They go to the dead letter topic with the broker's error and the topic they
    // were meant for, and count as delivered; `demo` flows to its own topic.
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        broker.schemas().join("tern.events.strict.json"),
        r#"{"type": "object", "properties": {"value": {"type": "object"}}}"#,
    )
    .unwrap();
    let Stack {
        relay,
        backend: _backend,
        broker,
        relay_dir,
    } = stack(
        dir.path(),
        broker,
        &["demo", "strict"],
        &[("tern.events.demo", 2), ("tern.events.strict", 1)],
        "tern.events.{app}",
        20_000,
        "",
    )
    .await;

    let sent = Arc::new(Mutex::new(Sent::default()));
    // One record in flight at a time: tansu 0.6.0 cannot take the epoch bump that
    // librdkafka makes after a refusal (`todo!()` in its `InitProducerId`, a panic on a
    // produce with an epoch it did not store), after which it refuses everything. The
    // sink replaces the producer instead and purges the old one; what that old one
    // had in flight beside the refused record could still reach the broker.
    drive(&relay, "strict", 1, 5, 0, sent.clone()).await;
    drive(&relay, "demo", 2, 5, 0, sent.clone()).await;
    wait_spool_empty(&relay_dir).await;
    let demo = read(&broker, "tern.events.demo").await;
    let strict = read(&broker, "tern.events.strict").await;
    let dead = read(&broker, DEAD).await;
    print_warnings(&relay_dir);
    let s = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    assert_eq!(verify(&demo, &s, Some("demo"), true).1, 10);
    assert!(strict.is_empty(), "the broker kept none");
    assert_eq!(
        verify(&dead, &s, Some("strict"), false).1,
        5,
        "all dead-lettered"
    );
    for r in &dead {
        assert_eq!(r.header(HEADER_TOPIC), Some("tern.events.strict"));
        let why = r.header(HEADER_REFUSED).unwrap_or_default();
        assert!(why.contains("InvalidRecord"), "why: {why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_whose_topic_cannot_exist_goes_to_the_dead_letter_topic_with_why() {
    // Per-app topics, and an app id of 240 characters: its topic name would be longer
    // than Kafka allows (249), so its records are refused for good. They go to the
    // dead letter topic with why and where they were meant to go, and count as
    // delivered; `demo` flows to its own topic.
    let dir = tempfile::tempdir().unwrap();
    let long = format!("app-{}", "x".repeat(236));
    let Stack {
        relay,
        backend: _backend,
        broker,
        relay_dir,
    } = stack(
        dir.path(),
        start_broker(dir.path()),
        &["demo", &long],
        &[("tern.events.demo", 2)],
        "tern.events.{app}",
        20_000,
        "",
    )
    .await;

    let sent = Arc::new(Mutex::new(Sent::default()));
    tokio::join!(
        drive(&relay, &long, 2, 5, 0, sent.clone()),
        drive(&relay, "demo", 2, 5, 0, sent.clone()),
    );
    wait_spool_empty(&relay_dir).await;
    let demo = read(&broker, "tern.events.demo").await;
    let dead = read(&broker, DEAD).await;
    print_warnings(&relay_dir);
    let s = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    assert_eq!(verify(&demo, &s, Some("demo"), true).1, 10);
    assert_eq!(
        verify(&dead, &s, Some(&long), false).1,
        10,
        "all dead-lettered"
    );
    let meant = format!("tern.events.{long}");
    for r in &dead {
        assert_eq!(r.header(HEADER_TOPIC), Some(meant.as_str()));
        let why = r.header(HEADER_REFUSED).unwrap_or_default();
        assert!(why.contains("longer than 249"), "why: {why}");
    }
    let metrics = tern_testkit::metrics::scrape(&relay.metrics).await;
    let dead_lettered = tern_testkit::metrics::sum(
        &metrics,
        "tern_relay_kafka_records_total",
        &["result=\"dead_lettered\""],
    );
    assert!(dead_lettered >= 10.0, "dead-lettered: {dead_lettered}");
    // Refused before anything was sent: no producer replaced for it.
    let renewals =
        tern_testkit::metrics::sum(&metrics, "tern_relay_kafka_producer_renewals_total", &[]);
    assert_eq!(renewals, 0.0, "producers replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_refused_everywhere_stays_spooled_and_holds_back_no_other_object() {
    // The producer refuses records over 4,000 bytes (`message.max.bytes`): the big
    // batches of `big` cannot go to their topic nor to the dead letter topic. Not the
    // device's fault: they are accepted and kept. With forwarding degraded they are
    // spooled ahead of `demo`'s batches; once it is restored, replay delivers
    // `demo`'s objects past the kept ones.
    let dir = tempfile::tempdir().unwrap();
    let Stack {
        relay,
        backend: _backend,
        broker,
        relay_dir,
    } = stack(
        dir.path(),
        start_broker(dir.path()),
        &["demo", "big"],
        &[("tern.events.demo", 2), ("tern.events.big", 2)],
        "tern.events.{app}",
        20_000,
        "[kafka.properties]\n\"message.max.bytes\" = \"4000\"",
    )
    .await;
    let api = AdminClient::for_proc(&relay, "test-operator");
    api.put(
        "/admin/v1/services/forwarding",
        serde_json::json!({"degraded": true}),
    )
    .await;

    let sent = Arc::new(Mutex::new(Sent::default()));
    {
        let (ca, addr) = (relay.ca_pem.clone(), relay.quic);
        let mut dev = Device::connect(&ca, addr).await;
        let device = tern_protocol::DeviceId::random();
        for b in 0..5u64 {
            let batch = Batch::new("big")
                .device(device)
                .user("big-u")
                .name(&"x".repeat(100))
                .first_seq(b * 100 + 1)
                .events(100)
                .build();
            send_until_accepted(&mut dev, &ca, addr, "big", &batch, &sent).await;
        }
    }
    drive(&relay, "demo", 4, 10, 0, sent.clone()).await;
    let spooled = |app: &str| {
        let s = sent.lock().unwrap();
        s.accepted
            .values()
            .filter(|(b, x)| b.app_id.as_str() == app && *x == Durability::Spooled)
            .count()
    };
    assert_eq!((spooled("big"), spooled("demo")), (5, 40), "all spooled");
    assert!(read(&broker, "tern.events.demo").await.is_empty());

    api.put(
        "/admin/v1/services/forwarding",
        serde_json::json!({"degraded": false}),
    )
    .await;
    wait_for(
        "demo's objects replayed past big's",
        Duration::from_secs(90),
        || async {
            let demo = read(&broker, "tern.events.demo").await;
            let ids: std::collections::HashSet<_> = demo
                .iter()
                .filter_map(|r| r.header(HEADER_BATCH_ID).map(str::to_owned))
                .collect();
            match ids.len() {
                40 => Ok(()),
                n => Err(format!("{n} of 40 batches")),
            }
        },
    )
    .await;
    let demo = read(&broker, "tern.events.demo").await;
    let big_topic = read(&broker, "tern.events.big").await;
    let dead = read(&broker, DEAD).await;
    print_warnings(&relay_dir);
    let s = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    assert_eq!(verify(&demo, &s, Some("demo"), false).1, 40);
    assert!(big_topic.is_empty() && dead.is_empty());
    // Kept (never dropped) through later passes, and counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        spool_files(&relay_dir) > 0,
        "the refused batches stay spooled"
    );
    let metrics = tern_testkit::metrics::scrape(&relay.metrics).await;
    let refused = tern_testkit::metrics::sum(
        &metrics,
        "tern_relay_kafka_records_total",
        &["result=\"refused\""],
    );
    assert!(refused >= 5.0, "refusals counted: {refused}");
}
