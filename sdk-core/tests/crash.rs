//! Durability under SIGKILL: an event whose `track()` returned `Ok` survives a kill of
//! the process at any instant, exactly once and intact.
//!
//! The parent runs ROUNDS rounds on one data directory. In each, it starts a child
//! (this same binary, with `TERN_CRASH_CHILD` set) in which four threads record
//! numbered events and print `A <n>` after each `track()` returns (`B <n>` while the
//! journal has not opened yet — the documented first milliseconds after `start`, in
//! which events wait in memory; on a loaded machine that window can outlast the kill,
//! so those are not counted as acknowledged), while a simulated
//! uploader forms batches, prints `D <batch> <n>...` before acknowledging a batch, and
//! sometimes retries instead. The parent SIGKILLs the child after a random delay —
//! landing mid-batch, mid-apply, mid-ack — then opens the store itself and checks:
//!
//! * every acknowledged number is in the store or was being delivered (or was evicted
//!   by the store's size bound, which counts what it evicts: never here with a 64 MiB bound);
//! * no number is stored twice; every stored record passes its checksum;
//! * stored sequence numbers strictly increase; a batch that was being delivered and is
//!   still stored kept its batch id (so the backend dedupes the resend);
//! * the store keeps working (the next round, and a final recording).
//!
//! Then the same for experiment exposures (`exposure_parent`): children read flags of
//! a cached bundle as random users, forever, and print `R <flag> <variant> <user>
//! <version>` after each read that recorded an exposure; the parent SIGKILLs them and
//! checks that every printed exposure is stored and that no (flag, variant, user,
//! version) is ever stored twice — across kills, restarts and deliveries — while the
//! bundle's version moves every third round.
//!
//! `TERN_CRASH_ROUNDS` overrides the number of rounds (default 60; a third of it for
//! exposures).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tern_protocol::config::{ConfigBundle, ETag, FeatureFlag, Variant};
use tern_protocol::{AppId, BatchId, EventBody, Limits, Value};
use tern_sdk::store::Db;
use tern_sdk::{FlushPolicy, Properties, StoreLimits, Tern, TernConfig};

const WAIT: Duration = Duration::from_secs(30);

fn config(dir: &Path) -> TernConfig {
    // A store bound well above what the rounds queue: this test is about crashes, and
    // events the bound evicts by design (`dropped_overflow`) are not losses (`verify`
    // accounts for them should a fast machine still reach it).
    TernConfig::builder("crash", "key", dir)
        .flush_policy(FlushPolicy::default().with_max_batch_events(50))
        .max_store_bytes(64 << 20)
        // Every exposure key of a version fits (`FLAGS` × `USERS`).
        .max_exposures(100_000)
        .build()
        .expect("config")
}

fn number(body: &EventBody) -> Option<i64> {
    match body {
        EventBody::Custom { props, .. } => match props.get("n") {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        },
        _ => None,
    }
}

fn child(dir: &Path, round: i64) {
    let tern = Tern::start(config(dir)).expect("start");
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..4i64 {
        let tern = tern.clone();
        threads.push(std::thread::spawn(move || {
            let out = std::io::stdout();
            // Until the journal has opened (the first milliseconds after `start`, longer
            // on a loaded machine), `track()` keeps events in memory: the documented
            // window in which a kill can lose them. Those are reported as `B`, not as
            // acknowledged.
            let mut durable = false;
            for i in 0.. {
                let n = (round << 32) | (t << 24) | i;
                let mut props = Properties::new();
                props.insert("n".into(), Value::Int(n));
                props.insert("pad".into(), Value::from("x".repeat((i % 7 * 40) as usize)));
                durable = durable || tern.stats().journal_ready;
                tern.track("crash test", props).expect("track");
                let mark = if durable { "A" } else { "B" };
                writeln!(out.lock(), "{mark} {n}").expect("stdout");
                if i % 64 == 0 {
                    std::thread::yield_now();
                }
            }
        }));
    }
    let uploader = {
        let tern = tern.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(round as u64);
            let out = std::io::stdout();
            while !stop.load(Ordering::Relaxed) {
                let _ = tern.form_batches(rng.random_bool(0.3));
                match tern.next_batch() {
                    Ok(Some(b)) => {
                        if rng.random_bool(0.2) {
                            tern.retry(b.batch.batch_id).expect("retry");
                            continue;
                        }
                        let nums: Vec<String> = b
                            .batch
                            .events
                            .iter()
                            .filter_map(|e| number(&e.body))
                            .map(|n| n.to_string())
                            .collect();
                        writeln!(out.lock(), "D {} {}", b.batch.batch_id, nums.join(" "))
                            .expect("stdout");
                        tern.ack(b.batch.batch_id).expect("ack");
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                    Err(e) => {
                        eprintln!("uploader: {e}");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        })
    };
    for t in threads {
        let _ = t.join();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = uploader.join();
}

#[derive(Default)]
struct Ledger {
    acked: HashSet<i64>,
    delivered: HashSet<i64>,
    delivering_batch: HashMap<i64, BatchId>,
}

/// Opens the store, checks the invariants, returns how many events are stored.
fn verify(dir: &Path, ledger: &mut Ledger, round: usize) -> usize {
    let tern = Tern::start(config(dir)).expect("start");
    assert!(
        tern.wait_applied(WAIT),
        "round {round}: journal not applied"
    );
    tern.form_batches(true).expect("form");
    let mut stored: HashMap<i64, (u64, BatchId)> = HashMap::new();
    let mut batches = Vec::new();
    let mut last_seq = 0;
    while let Some(b) = tern.next_batch().expect("next_batch") {
        batches.push(b.batch.batch_id);
        for e in &b.batch.events {
            assert!(
                e.seq > last_seq,
                "round {round}: seq {} after {last_seq}",
                e.seq
            );
            last_seq = e.seq;
            let n = number(&e.body).expect("numbered event");
            if let Some(prev) = stored.insert(n, (e.seq, b.batch.batch_id)) {
                panic!(
                    "round {round}: event {n} stored twice (seqs {} and {})",
                    prev.0, e.seq
                );
            }
        }
    }
    let s = tern.stats();
    assert_eq!(s.corrupt_records, 0, "round {round}: corrupt records");
    assert_eq!(s.store_resets, 0, "round {round}: store was reset");
    assert_eq!(s.reset_unknown, 0, "round {round}: store was reset");
    let lost: Vec<&i64> = ledger
        .acked
        .iter()
        .filter(|n| !stored.contains_key(n) && !ledger.delivered.contains(n))
        .collect();
    // The store's bound evicts the oldest queued events by design and counts them
    // (`dropped_overflow`, cumulative over the store's life): only what it does not
    // account for is lost.
    if lost.len() as u64 > s.dropped_overflow {
        let files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut by_round: HashMap<i64, usize> = HashMap::new();
        for n in &lost {
            *by_round.entry(**n >> 32).or_default() += 1;
        }
        panic!(
            "round {round}: {} acknowledged events lost (by round: {by_round:?}), e.g. {:?}; stats {s:?}; files {files:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
    for (n, (_, batch)) in &stored {
        if let Some(sent) = ledger.delivering_batch.get(n) {
            assert_eq!(
                sent, batch,
                "round {round}: event {n} changed batch id after delivery began"
            );
        }
    }
    // Deliver every other round, like an uploader catching up, so the next children
    // also run against a nearly empty store.
    let count = stored.len();
    if round % 2 == 1 {
        for id in batches {
            tern.ack(id).expect("ack");
        }
        ledger.delivered.extend(stored.keys());
    }
    assert!(tern.shutdown(WAIT).clean);
    count
}

fn parent() {
    let rounds: usize = std::env::var("TERN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current_exe");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x7e51);
    let mut ledger = Ledger::default();
    let mut total_acked = 0usize;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .env("TERN_CRASH_CHILD", dir.path())
            .env("TERN_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        let delay = rng.random_range(15..400);
        std::thread::sleep(Duration::from_millis(delay));
        // SAFETY-free: kill(2) through the standard library sends SIGKILL on Unix.
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(!status.success(), "child exited by itself: {status}");
        let lines = reader.join().expect("reader");
        let mut acked_now = 0;
        let mut buffered_now = 0;
        for line in &lines {
            let mut parts = line.split(' ');
            match parts.next() {
                Some("A") => {
                    if let Some(n) = parts.next().and_then(|p| p.parse().ok()) {
                        ledger.acked.insert(n);
                        acked_now += 1;
                    }
                }
                // Recorded before the journal opened: a kill may lose them.
                Some("B") => buffered_now += 1,
                Some("D") => {
                    let Some(batch) = parts.next().and_then(|p| BatchId::parse(p).ok()) else {
                        continue;
                    };
                    for n in parts.filter_map(|p| p.parse::<i64>().ok()) {
                        ledger.delivered.insert(n);
                        ledger.delivering_batch.insert(n, batch);
                    }
                }
                _ => {}
            }
        }
        total_acked += acked_now;
        let stored = verify(dir.path(), &mut ledger, round);
        println!(
            "round {round:>2}: killed after {delay:>3} ms, {acked_now:>6} acknowledged ({buffered_now} before the journal opened), {stored:>6} stored, {} delivered so far",
            ledger.delivered.len()
        );
    }
    // The store still works after all of that.
    let tern = Tern::start(config(dir.path())).expect("start");
    let mut props = Properties::new();
    props.insert("n".into(), Value::Int(-1));
    tern.track("after the storm", props).expect("track");
    assert!(tern.wait_applied(WAIT));
    assert!(tern.shutdown(WAIT).clean);
    assert!(total_acked > 0, "the children acknowledged nothing");
    println!("crash test: {rounds} rounds, {total_acked} acknowledged events, none lost, none duplicated");
    exposure_parent(rounds.div_ceil(3));
    println!("2 passed, 0 failed");
}

// ---------------------------------------------------------------------------------
// Exposures

const FLAGS: usize = 40;
const USERS: usize = 400;

/// The bundle of version `version`: boolean flags at half rollout and three-way
/// multivariate flags.
fn exposure_bundle(version: u64) -> ConfigBundle {
    let flags = (0..FLAGS)
        .map(|i| FeatureFlag {
            key: format!("flag-{i}"),
            enabled: true,
            rollout_bp: if i % 2 == 0 { 5_000 } else { 10_000 },
            variants: if i % 2 == 0 {
                vec![]
            } else {
                ["a", "b", "c"]
                    .into_iter()
                    .map(|k| Variant {
                        key: k.into(),
                        weight: 1,
                        value: None,
                    })
                    .collect()
            },
            salt: None,
        })
        .collect();
    ConfigBundle {
        app_id: AppId::new("crash"),
        version,
        etag: ETag(format!("v{version}")),
        flags,
        ..ConfigBundle::default()
    }
}

fn exposure_child(dir: &Path, round: i64, version: u64) {
    let tern = Tern::start(config(dir)).expect("start");
    while tern.config_info().version != version {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut rng = rand::rngs::SmallRng::seed_from_u64(round as u64);
    let out = std::io::stdout();
    loop {
        let user = format!("user-{}", rng.random_range(0..USERS));
        tern.identify(Some(&user)).expect("identify");
        for _ in 0..8 {
            let flag = format!("flag-{}", rng.random_range(0..FLAGS));
            let before = tern.stats().exposures.recorded;
            let decision = tern.flag(&flag);
            if tern.stats().exposures.recorded > before {
                writeln!(
                    out.lock(),
                    "R {flag} {} {user} {version}",
                    decision.variant_name()
                )
                .expect("stdout");
            }
        }
    }
}

type ExposureKey = (String, String, String, u64);

/// Opens the store; checks that every exposure the children printed is stored now or
/// was delivered before, and that none was ever stored twice; delivers everything.
fn verify_exposures(
    dir: &Path,
    printed: &HashSet<ExposureKey>,
    delivered: &mut HashSet<ExposureKey>,
    round: usize,
) -> usize {
    let tern = Tern::start(config(dir)).expect("start");
    assert!(
        tern.wait_applied(WAIT),
        "round {round}: journal not applied"
    );
    tern.form_batches(true).expect("form");
    let mut stored = 0;
    while let Some(b) = tern.next_batch().expect("next_batch") {
        for e in &b.batch.events {
            let EventBody::Exposure {
                flag,
                variant,
                config_version,
                ..
            } = &e.body
            else {
                continue;
            };
            let user = e.user_id.as_ref().expect("identified").as_str().to_owned();
            let key = (flag.clone(), variant.clone(), user, *config_version);
            assert!(
                delivered.insert(key.clone()),
                "round {round}: exposure {key:?} stored twice"
            );
            stored += 1;
        }
        tern.ack(b.batch.batch_id).expect("ack");
    }
    let missing: Vec<_> = printed.difference(delivered).collect();
    assert!(
        missing.is_empty(),
        "round {round}: {} recorded exposures lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    assert_eq!(tern.stats().corrupt_records, 0, "round {round}");
    assert!(tern.shutdown(WAIT).clean);
    stored
}

fn exposure_parent(rounds: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current_exe");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0xe7905);
    let mut printed: HashSet<ExposureKey> = HashSet::new();
    let mut delivered: HashSet<ExposureKey> = HashSet::new();
    for round in 0..rounds {
        let version = 1 + round as u64 / 3;
        {
            // The bundle a fetch would have cached: no instance is running.
            let (mut db, _) =
                Db::open(dir.path(), StoreLimits::default(), Limits::default()).expect("db");
            db.save_config(&exposure_bundle(version), 1).expect("cache");
        }
        let mut child = Command::new(&exe)
            .env("TERN_CRASH_CHILD", dir.path())
            .env("TERN_CRASH_ROUND", round.to_string())
            .env("TERN_CRASH_EXPOSURES", version.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        let delay = rng.random_range(15..300);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(!status.success(), "child exited by itself: {status}");
        let mut now = 0;
        for line in reader.join().expect("reader") {
            let p: Vec<&str> = line.split(' ').collect();
            if let ["R", flag, variant, user, v] = p[..] {
                let key = (
                    flag.into(),
                    variant.into(),
                    user.into(),
                    v.parse().expect("v"),
                );
                assert!(
                    printed.insert(key),
                    "round {round}: {line:?} recorded again (after a restart)"
                );
                now += 1;
            }
        }
        let stored = verify_exposures(dir.path(), &printed, &mut delivered, round);
        println!(
            "exposures round {round:>2}: version {version}, killed after {delay:>3} ms, {now:>4} recorded, {stored:>4} stored, {} delivered so far",
            delivered.len()
        );
    }
    assert!(!printed.is_empty(), "the children recorded no exposure");
    println!(
        "exposure crash test: {rounds} rounds, {} exposures recorded, none lost, none twice",
        printed.len()
    );
}

fn main() {
    if let (Ok(dir), Ok(version)) = (
        std::env::var("TERN_CRASH_CHILD"),
        std::env::var("TERN_CRASH_EXPOSURES"),
    ) {
        let round = std::env::var("TERN_CRASH_ROUND")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        exposure_child(Path::new(&dir), round, version.parse().unwrap_or(1));
        return;
    }
    if let Ok(dir) = std::env::var("TERN_CRASH_CHILD") {
        let round = std::env::var("TERN_CRASH_ROUND")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        child(Path::new(&dir), round);
        return;
    }
    parent();
}
