//! tern-sdk integration suite: the public API against real files.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use tern_protocol::{EventBody, Value};
use tern_sdk::{Properties, StoreError, Tern, TernConfig, TrackError};

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &Path) -> TernConfig {
    TernConfig::builder("demo", "demo-key", dir)
        .build()
        .unwrap()
}

fn props(pairs: &[(&str, Value)]) -> Properties {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn n_prop(n: u64) -> Properties {
    props(&[("n", Value::Int(n as i64))])
}

/// All events queued in the store, via a fresh read-only look at the database.
fn stored(tern: &Tern) -> Vec<tern_protocol::Event> {
    assert!(tern.wait_applied(WAIT), "journal not applied in time");
    tern.form_batches(true).unwrap();
    let mut out = Vec::new();
    while let Some(b) = tern.next_batch().unwrap() {
        out.extend(b.batch.events.clone());
    }
    // The batches stay in flight (never acked), so a later run sends them again.
    out
}

#[test]
fn track_then_batches_carry_events_in_order_with_stable_ids() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    for n in 1..=250u64 {
        tern.track("level complete", n_prop(n)).unwrap();
    }
    assert!(tern.wait_applied(WAIT));
    assert_eq!(tern.stats().queued_events, 250);
    assert_eq!(
        tern.form_batches(false).unwrap(),
        2,
        "two full batches of 100"
    );
    assert_eq!(
        tern.form_batches(true).unwrap(),
        1,
        "the tail of 50 on force"
    );
    let first = tern.next_batch().unwrap().unwrap();
    assert_eq!(first.batch.events.len(), 100);
    assert_eq!(first.batch.events[0].seq, 1);
    assert_eq!(first.batch.attempt, 0);
    assert_eq!(first.batch.app_id.as_str(), "demo");
    tern_protocol::limits::validate_batch(&first.batch, &Default::default()).unwrap();
    let second = tern.next_batch().unwrap().unwrap();
    assert_ne!(first.batch.batch_id, second.batch.batch_id);
    assert_eq!(second.batch.events[0].seq, 101);

    // Retry keeps the id and counts the attempt.
    tern.retry(first.batch.batch_id).unwrap();
    tern.ack(second.batch.batch_id).unwrap();
    let again = tern.next_batch().unwrap().unwrap();
    assert_eq!(again.batch.batch_id, first.batch.batch_id);
    assert_eq!(again.batch.attempt, 1);
    assert_eq!(again.batch.events, first.batch.events);
    assert_eq!(tern.stats().retries, 1);

    // Reject drops and counts.
    tern.reject(again.batch.batch_id).unwrap();
    let s = tern.stats();
    assert_eq!(s.dropped_rejected, 100);
    assert_eq!(s.queued_events, 50);
    assert!(matches!(
        tern.ack(again.batch.batch_id),
        Err(StoreError::UnknownBatch(_))
    ));
    assert!(tern.shutdown(WAIT).clean);
}

#[test]
fn batch_ids_survive_restart_and_in_flight_batches_are_resent() {
    let dir = tempfile::tempdir().unwrap();
    let (id, events) = {
        let tern = Tern::start(config(dir.path())).unwrap();
        for n in 1..=30 {
            tern.track("e", n_prop(n)).unwrap();
        }
        assert!(tern.wait_applied(WAIT));
        tern.form_batches(true).unwrap();
        let b = tern.next_batch().unwrap().unwrap(); // in flight when we stop
        assert!(tern.shutdown(WAIT).clean);
        (b.batch.batch_id, b.batch.events)
    };
    let tern = Tern::start(config(dir.path())).unwrap();
    assert!(tern.wait_applied(WAIT));
    let b = tern
        .next_batch()
        .unwrap()
        .expect("in-flight batch is back in the queue");
    assert_eq!(b.batch.batch_id, id);
    assert_eq!(b.batch.events, events);
    tern.track("after", Properties::new()).unwrap();
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    tern.ack(id).unwrap();
    let next = tern.next_batch().unwrap().unwrap();
    assert_eq!(
        next.batch.events[0].seq, 31,
        "sequence continues across restarts"
    );
    tern.shutdown(WAIT);
}

#[test]
fn invalid_input_is_a_typed_error_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    let cases: Vec<Box<dyn Fn() -> Result<(), TrackError>>> = vec![
        Box::new(|| tern.track("", Properties::new())),
        Box::new(|| tern.track(" bad", Properties::new())),
        Box::new(|| tern.track("ok", props(&[("bad key!", Value::Int(1))]))),
        Box::new(|| tern.track("ok", props(&[("x", Value::Float(f64::NAN))]))),
        Box::new(|| tern.track("ok", props(&[("s", Value::String("x".repeat(2000)))]))),
        Box::new(|| tern.purchase("sku", 100, "usd", 1, Properties::new())),
        Box::new(|| tern.purchase("sku", 100, "USD", 0, Properties::new())),
        Box::new(|| {
            let many: Properties = (0..65).map(|i| (format!("k{i}"), Value::Int(i))).collect();
            tern.track("ok", many)
        }),
        Box::new(|| {
            let big: Properties = (0..40)
                .map(|i| (format!("k{i}"), Value::from("v".repeat(1000))))
                .collect();
            tern.track("ok", big)
        }),
    ];
    for (i, case) in cases.iter().enumerate() {
        match case() {
            Err(TrackError::Invalid(e)) => assert!(!e.to_string().is_empty()),
            other => panic!("case {i}: expected Invalid, got {other:?}"),
        }
    }
    assert!(matches!(
        tern.identify(Some("")),
        Err(TrackError::Invalid(_))
    ));
    assert!(tern.wait_applied(WAIT));
    let s = tern.stats();
    assert_eq!(s.queued_events, 0);
    assert_eq!(s.dropped_invalid, cases.len() as u64);
    tern.shutdown(WAIT);
}

#[test]
fn events_keep_the_user_they_were_recorded_under() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    tern.track("anon", Properties::new()).unwrap();
    tern.identify(Some("alice")).unwrap();
    tern.track("a1", Properties::new()).unwrap();
    tern.track("a2", Properties::new()).unwrap();
    tern.identify(Some("bob")).unwrap();
    tern.track("b1", Properties::new()).unwrap();
    tern.identify(None).unwrap();
    tern.track("anon2", Properties::new()).unwrap();
    let events = stored(&tern);
    let users: Vec<(String, Option<String>)> = events
        .iter()
        .map(|e| match &e.body {
            EventBody::Custom { name, .. } => {
                (name.clone(), e.user_id.as_ref().map(|u| u.to_string()))
            }
            other => (format!("{other:?}"), None),
        })
        .collect();
    assert_eq!(
        users,
        [
            ("anon".into(), None),
            ("a1".into(), Some("alice".into())),
            ("a2".into(), Some("alice".into())),
            ("b1".into(), Some("bob".into())),
            ("anon2".into(), None),
        ]
    );
    tern.shutdown(WAIT);
    // Batches hold one user's events each (routing is per user).
    let tern = Tern::start(config(dir.path())).unwrap();
    assert!(tern.wait_applied(WAIT));
    let mut batches = 0;
    while let Some(b) = tern.next_batch().unwrap() {
        let users: HashSet<_> = b.batch.events.iter().map(|e| e.user_id.clone()).collect();
        assert_eq!(users.len(), 1);
        batches += 1;
    }
    assert_eq!(batches, 4);
    assert_eq!(tern.stats().user_id, None);
    tern.identify(Some("carol")).unwrap();
    tern.shutdown(WAIT);
    let tern = Tern::start(config(dir.path())).unwrap();
    assert!(tern.wait_applied(WAIT));
    assert_eq!(
        tern.stats().user_id.map(|u| u.to_string()),
        Some("carol".into())
    );
    tern.shutdown(WAIT);
}

#[test]
fn opt_out_stops_recording_and_uploading_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    tern.track("before", Properties::new()).unwrap();
    tern.opt_out(true).unwrap();
    assert_eq!(
        tern.track("during", Properties::new()),
        Err(TrackError::OptedOut)
    );
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    assert!(
        tern.next_batch().unwrap().is_none(),
        "nothing is uploaded while opted out"
    );
    assert_eq!(
        tern.stats().queued_events,
        1,
        "events from before stay on the device"
    );
    tern.shutdown(WAIT);

    let tern = Tern::start(config(dir.path())).unwrap();
    assert!(tern.wait_applied(WAIT));
    assert!(tern.is_opted_out());
    assert_eq!(
        tern.track("still out", Properties::new()),
        Err(TrackError::OptedOut)
    );
    tern.opt_out(false).unwrap();
    tern.track("back", Properties::new()).unwrap();
    let names: Vec<String> = stored(&tern)
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::Custom { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["before", "back"]);
    tern.shutdown(WAIT);
}

#[test]
fn delete_local_data_removes_earlier_events_and_resets_identity() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    tern.identify(Some("alice")).unwrap();
    for n in 0..20 {
        tern.track("old", n_prop(n)).unwrap();
    }
    assert!(tern.wait_applied(WAIT));
    let old_device = tern.stats().device_id.unwrap();
    tern.delete_local_data().unwrap();
    tern.track("new", Properties::new()).unwrap();
    let events = stored(&tern);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[0].user_id, None);
    let s = tern.stats();
    assert_ne!(s.device_id.unwrap(), old_device);
    tern.shutdown(WAIT);
}

#[test]
fn deleted_data_leaves_no_bytes_behind() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    const MARKER: &str = "PRIVATE-5f3a9c71-marker";
    for _ in 0..50 {
        tern.track("secret", props(&[("note", Value::from(MARKER))]))
            .unwrap();
    }
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    tern.delete_local_data().unwrap();
    tern.track("kept", Properties::new()).unwrap();
    let contains_marker = |dir: &Path| {
        std::fs::read_dir(dir).unwrap().any(|e| {
            let bytes = std::fs::read(e.unwrap().path()).unwrap_or_default();
            bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())
        })
    };
    let mut clean = false;
    for _ in 0..2000 {
        assert!(tern.wait_applied(WAIT));
        if !contains_marker(dir.path()) {
            clean = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let holders: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let bytes = std::fs::read(p).unwrap_or_default();
            bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())
        })
        .collect();
    assert!(
        clean,
        "the deleted events' bytes are still on disk: {holders:?}"
    );
    assert_eq!(stored(&tern).len(), 1);
    tern.shutdown(WAIT);
}

#[test]
fn eight_threads_every_event_once_and_gap_free_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    const PER_THREAD: u64 = 2_000;
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let tern = tern.clone();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    tern.track(
                        "tap",
                        props(&[("t", Value::Int(t as i64)), ("i", Value::Int(i as i64))]),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let events = stored(&tern);
    assert_eq!(events.len() as u64, 8 * PER_THREAD);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=8 * PER_THREAD).collect::<Vec<_>>(),
        "gap-free, strictly increasing"
    );
    let mut seen = HashSet::new();
    let mut last_per_thread = BTreeMap::new();
    for e in &events {
        let EventBody::Custom { props, .. } = &e.body else {
            panic!()
        };
        let (Value::Int(t), Value::Int(i)) = (&props["t"], &props["i"]) else {
            panic!()
        };
        assert!(seen.insert((*t, *i)), "duplicate event {t}/{i}");
        // Each thread's events keep their order.
        if let Some(prev) = last_per_thread.insert(*t, *i) {
            assert!(*i > prev);
        }
    }
    tern.shutdown(WAIT);
}

#[test]
fn store_is_bounded_dropping_oldest_and_counting() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TernConfig::builder("demo", "k", dir.path())
        .max_store_events(500)
        .build()
        .unwrap();
    let tern = Tern::start(cfg).unwrap();
    for n in 1..=1_200u64 {
        tern.track("e", n_prop(n)).unwrap();
    }
    assert!(tern.wait_applied(WAIT));
    let s = tern.stats();
    assert_eq!(s.queued_events, 500);
    assert_eq!(s.dropped_overflow, 700);
    let events = stored(&tern);
    let first = events.first().unwrap();
    assert_eq!(first.seq, 701, "the oldest were dropped");
    // The drop counter travels upstream.
    tern.form_batches(true).unwrap();
    tern.shutdown(WAIT);
    let tern = Tern::start(
        TernConfig::builder("demo", "k", dir.path())
            .max_store_events(500)
            .build()
            .unwrap(),
    )
    .unwrap();
    assert!(tern.wait_applied(WAIT));
    let b = tern.next_batch().unwrap().unwrap();
    assert_eq!(b.batch.health.dropped_overflow, 700);
    assert_eq!(b.batch.health.queue_events, 500);
    tern.shutdown(WAIT);
}

#[test]
fn bytes_bound_is_enforced_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TernConfig::builder("demo", "k", dir.path())
        .max_store_bytes(64 * 1024)
        .build()
        .unwrap();
    let tern = Tern::start(cfg).unwrap();
    let p = props(&[("blob", Value::from("x".repeat(900)))]);
    for _ in 0..300 {
        tern.track("big", p.clone()).unwrap();
    }
    assert!(tern.wait_applied(WAIT));
    let s = tern.stats();
    assert!(s.queued_bytes <= 64 * 1024, "{}", s.queued_bytes);
    assert!(s.dropped_overflow > 0);
    assert_eq!(s.queued_events + s.dropped_overflow, 300);
    tern.shutdown(WAIT);
}

#[test]
fn second_instance_on_the_same_directory_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let a = Tern::start(config(dir.path())).unwrap();
    // At once, not only after the first instance's thread got going.
    match Tern::start(config(dir.path())) {
        Err(StoreError::Locked(path)) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    a.track("still fine", Properties::new()).unwrap();
    assert_eq!(stored(&a).len(), 1);
    a.shutdown(WAIT);
    // Released at shutdown.
    Tern::start(config(dir.path())).unwrap().shutdown(WAIT);
}

/// Environment variable naming the directory the child process of
/// `a_second_process_on_the_same_directory_is_refused_at_start` holds.
const HOLD_DIR: &str = "TERN_TEST_HOLD_DIR";

#[test]
fn a_second_process_on_the_same_directory_is_refused_at_start() {
    use std::io::{BufRead, Write};
    if let Some(dir) = std::env::var_os(HOLD_DIR) {
        // The child: hold the directory until the parent closes stdin.
        let tern = Tern::start(config(Path::new(&dir))).unwrap();
        tern.track("child", Properties::new()).unwrap();
        assert!(tern.wait_applied(WAIT));
        println!("holding");
        std::io::stdout().flush().unwrap();
        let _ = std::io::stdin().read_line(&mut String::new());
        tern.shutdown(WAIT);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_second_process_on_the_same_directory_is_refused_at_start",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_DIR, dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("holding") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child exited before holding the directory"
        );
    }
    match Tern::start(config(dir.path())) {
        Err(e @ StoreError::Locked(_)) => {
            assert!(e.to_string().contains("in use"), "{e}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    // Killed, however abruptly, the child's lock goes with it.
    child.kill().unwrap();
    child.wait().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    assert_eq!(stored(&tern).len(), 1, "the child's event is there");
    tern.shutdown(WAIT);
}

#[test]
fn timeouts_of_any_size_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    tern.track("e", Properties::new()).unwrap();
    assert!(tern.wait_applied(Duration::MAX));
    // Nothing uploads: only the cancel flag ends an endless wait.
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waiter = {
        let (tern, cancel) = (tern.clone(), cancel.clone());
        std::thread::spawn(move || tern.flush_and_wait_cancellable(Duration::MAX, &cancel))
    };
    cancel.store(true, std::sync::atomic::Ordering::Release);
    assert!(
        !waiter.join().unwrap(),
        "a cancelled wait reports not emptied"
    );
    assert!(tern.shutdown(Duration::MAX).clean);
    assert!(
        !tern.flush_and_wait(Duration::MAX),
        "after shutdown: at once"
    );
}

#[test]
fn calls_applied_later_keep_their_time_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    // Ten seconds ago: within the session timeout, so the session carries on.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 10_000;
    tern.apply(tern_sdk::Call::Foreground, t0).unwrap();
    tern.apply(
        tern_sdk::Call::Identify {
            user_id: Some("u1".into()),
        },
        t0 + 1,
    )
    .unwrap();
    tern.apply(
        tern_sdk::Call::Track {
            name: "queued".into(),
            props: n_prop(1),
        },
        t0 + 2,
    )
    .unwrap();
    tern.track("now", Properties::new()).unwrap();
    let events = stored(&tern);
    let seen: Vec<(&str, i64)> = events.iter().map(|e| (e.body.kind(), e.ts_ms)).collect();
    assert_eq!(seen[0], ("session_start", t0));
    assert_eq!(seen[1], ("custom", t0 + 2));
    assert_eq!(events[1].user_id.as_ref().map(|u| u.as_str()), Some("u1"));
    assert!(seen[2].1 > t0 + 2, "a call made now is stamped now");
    assert_eq!(tern.stats().events_recorded, 3);
    tern.shutdown(WAIT);
}

#[test]
fn refusals_are_counted_and_unkept_events_travel_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    // Invalid user properties count like any invalid event.
    let bad = props(&[("", Value::Int(1))]);
    assert!(matches!(
        tern.set_user_properties(bad, vec![]),
        Err(TrackError::Invalid(_))
    ));
    assert_eq!(tern.stats().dropped_invalid, 1);
    // Counted by a caller (the bindings' pre-start queue, a foreign conversion).
    tern.count_refused(tern_sdk::Refused::Unavailable, 3);
    tern.count_refused(tern_sdk::Refused::Invalid, 2);
    tern.opt_out(true).unwrap();
    assert_eq!(
        tern.track("x", Properties::new()),
        Err(TrackError::OptedOut)
    );
    tern.opt_out(false).unwrap();
    tern.track("kept", Properties::new()).unwrap();
    let s = tern.stats();
    assert_eq!(
        (
            s.dropped_invalid,
            s.dropped_unavailable,
            s.refused_opted_out
        ),
        (3, 3, 1)
    );
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    let batch = tern.next_batch().unwrap().expect("a batch");
    assert_eq!(batch.batch.health.dropped_unavailable, 3);
    assert_eq!(batch.batch.health.dropped_invalid, 3);
    tern.shutdown(WAIT);
    // Persisted: a later run reports the same cumulative counts.
    let again = Tern::start(config(dir.path())).unwrap();
    assert!(again.wait_applied(WAIT));
    assert_eq!(again.stats().dropped_unavailable, 3);
    again.shutdown(WAIT);
}

#[test]
fn shutdown_is_bounded_and_recording_after_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    for n in 0..1000 {
        tern.track("e", n_prop(n)).unwrap();
    }
    let report = tern.shutdown(WAIT);
    assert!(report.clean);
    assert_eq!(
        report.queued_events, 1000,
        "everything recorded is in the store at shutdown"
    );
    assert!(!tern.stats().store_ready);
    assert_eq!(
        tern.track("late", Properties::new()),
        Err(TrackError::ShutDown)
    );
    let again = Tern::start(config(dir.path())).unwrap();
    assert!(again.wait_applied(WAIT));
    assert_eq!(again.stats().queued_events, 1000);
    again.shutdown(WAIT);
}

#[test]
fn events_recorded_before_the_store_opens_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(&dir.path().join("not/yet/created"))).unwrap();
    // Immediately, before the background thread can have opened anything.
    for n in 0..50 {
        tern.track("early", n_prop(n)).unwrap();
    }
    assert_eq!(stored(&tern).len(), 50);
    tern.shutdown(WAIT);
}

#[test]
fn sessions_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    tern.on_foreground().unwrap();
    let session = tern.current_session().expect("foreground opens a session");
    tern.track("inside", Properties::new()).unwrap();
    tern.end_session().unwrap();
    assert_eq!(tern.current_session(), None);
    let events = stored(&tern);
    let kinds: Vec<&str> = events.iter().map(|e| e.body.kind()).collect();
    assert_eq!(kinds, ["session_start", "custom", "session_end"]);
    assert!(events.iter().all(|e| e.session_id == Some(session)));
    tern.shutdown(WAIT);
}

#[test]
fn dropping_every_handle_stops_the_background_thread() {
    let dir = tempfile::tempdir().unwrap();
    {
        let tern = Tern::start(config(dir.path())).unwrap();
        tern.track("x", Properties::new()).unwrap();
        assert!(tern.wait_applied(WAIT));
    }
    // The directory lock is released once the thread stops.
    let mut ok = false;
    for _ in 0..2000 {
        let t = match Tern::start(config(dir.path())) {
            Ok(t) => t,
            Err(StoreError::Locked(_)) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        if t.wait_applied(Duration::from_millis(200)) {
            assert_eq!(t.stats().queued_events, 1);
            t.shutdown(WAIT);
            ok = true;
            break;
        }
        t.shutdown(WAIT);
    }
    assert!(ok);
}

#[test]
fn corrupt_database_is_moved_aside_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let device_id = {
        let tern = Tern::start(config(dir.path())).unwrap();
        tern.track("lost with the database", Properties::new())
            .unwrap();
        assert!(tern.wait_applied(WAIT));
        let id = tern.stats().device_id.unwrap();
        tern.shutdown(WAIT);
        id
    };
    // Overwrite the header: no longer an SQLite file.
    let db = dir.path().join("tern.db");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..16].copy_from_slice(b"garbage garbage!");
    std::fs::write(&db, bytes).unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    tern.track("after reset", Properties::new()).unwrap();
    let events = stored(&tern);
    assert_eq!(events.len(), 1);
    let s = tern.stats();
    assert_eq!(s.store_resets, 1);
    // The journal marker keeps the identity and the sequence numbers going; the event
    // the corrupt file held (never sent) is counted, not silently gone.
    assert_eq!(s.device_id, Some(device_id));
    assert_eq!(events[0].seq, 2);
    assert_eq!(s.reset_unknown, 1);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("tern.db.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "kept for diagnosis");
    tern.shutdown(WAIT);

    // A truncated file too: the same device's second reset.
    std::fs::write(dir.path().join("tern.db"), b"SQLite format 3\0").unwrap();
    let _ = std::fs::remove_file(dir.path().join("tern.db-wal"));
    let tern = Tern::start(config(dir.path())).unwrap();
    assert!(tern.wait_applied(WAIT));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let s = tern.stats();
    assert_eq!(
        (s.store_resets, s.reset_unknown, s.device_id),
        (2, 2, Some(device_id)),
        "fresh store after the second reset: {names:?}"
    );
    tern.shutdown(WAIT);
}

/// The fixture is a database written by a hypothetical schema 3 (extra columns and
/// tables, `min_reader_version` 1) holding three queued events, two of them already in
/// a batch. See `fixtures/README.md`.
#[test]
fn database_from_a_newer_sdk_opens_without_losing_events() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/future_schema_v3.db"),
        dir.path().join("tern.db"),
    )
    .unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    assert!(tern.wait_applied(WAIT));
    let s = tern.stats();
    assert_eq!(s.store_resets, 0, "{:?}", s.store_error);
    assert_eq!(s.queued_events, 3);
    tern.track("recorded by the older sdk", Properties::new())
        .unwrap();
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    let first = tern.next_batch().unwrap().unwrap();
    assert_eq!(
        first.batch.batch_id.to_string(),
        "0192f3a0-7b1c-7cde-8f00-0123456789ab"
    );
    assert_eq!(
        first.batch.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    // Event 3 was stored without an anonymous id (the fixture's schema has no
    // `anon_id`), event 4 under this store's: a batch never mixes identities
    // (protocol §8.1), so each leaves in its own batch, both kept.
    let second = tern.next_batch().unwrap().unwrap();
    assert_eq!(
        second
            .batch
            .events
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [3]
    );
    assert_eq!(second.batch.anonymous_id, None);
    let third = tern.next_batch().unwrap().unwrap();
    assert_eq!(
        third.batch.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [4]
    );
    assert_eq!(third.batch.anonymous_id, tern.anonymous_id());
    tern.shutdown(WAIT);
    // The newer version marker is kept (never lowered).
    assert_eq!(rusqlite_version(dir.path()), 3);
}

/// `PRAGMA user_version`, read from the SQLite header (offset 60, big-endian).
fn rusqlite_version(dir: &Path) -> i64 {
    let bytes = std::fs::read(dir.join("tern.db")).unwrap();
    i64::from(u32::from_be_bytes([
        bytes[60], bytes[61], bytes[62], bytes[63],
    ]))
}

#[test]
fn store_survives_many_restarts_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = 0u64;
    for round in 0..5u64 {
        let tern = Tern::start(config(dir.path())).unwrap();
        for n in 0..200 {
            tern.track("r", n_prop(round * 1000 + n)).unwrap();
            expected += 1;
        }
        tern.shutdown(WAIT);
    }
    let tern = Tern::start(config(dir.path())).unwrap();
    let events = stored(&tern);
    assert_eq!(events.len() as u64, expected);
    assert_eq!(events.last().unwrap().seq, expected);
    tern.shutdown(WAIT);
}

/// The sans-IO scheduler (virtual clock) drives the real store through the uploader
/// interface, against scripted relay outcomes: the same batch id across a transport
/// error and a `Retry{after}`, the wait honoured, a rejected batch dropped and counted,
/// the partial tail cut by a flush.
#[test]
fn scheduler_drives_the_store_through_the_uploader_interface() {
    use std::time::Instant;
    use tern_sdk::schedule::{Action, Scheduler, UploadOutcome};
    use tern_sdk::{FlushPolicy, RetryPolicy};

    let dir = tempfile::tempdir().unwrap();
    let policy = FlushPolicy::default().with_max_batch_events(50);
    let tern = Tern::start(
        TernConfig::builder("demo", "k", dir.path())
            .flush_policy(policy)
            .build()
            .unwrap(),
    )
    .unwrap();
    for n in 1..=120 {
        tern.track("e", n_prop(n)).unwrap();
    }
    assert!(tern.wait_applied(WAIT));

    let base = Instant::now();
    let mut now = base;
    let mut sched = Scheduler::new(policy, RetryPolicy::default(), 7);
    let mut script = vec![
        UploadOutcome::TransportError,
        UploadOutcome::Retry {
            after: Duration::from_secs(2),
        },
        UploadOutcome::Accepted,
        UploadOutcome::Rejected,
        UploadOutcome::Accepted,
    ]
    .into_iter();
    let mut sent = Vec::new();
    let mut delivered = Vec::new();
    let mut retry_sent_at = None;
    let mut flushed = false;
    let mut oldest: Option<Instant> = None;
    for _ in 0..1000 {
        let b = tern.backlog().unwrap();
        // The uploader maps the oldest unbatched event's age onto its clock.
        oldest = if b.events == 0 {
            None
        } else {
            oldest.or(Some(now))
        };
        sched.handle_backlog(b.events, b.bytes, oldest, now);
        sched.handle_queue(b.ready_batches, now);
        match sched.poll(now) {
            Some(Action::FormBatches { force }) => {
                tern.form_batches(force).unwrap();
            }
            Some(Action::Send) => {
                let out = tern.next_batch().unwrap().expect("a ready batch");
                sched.handle_sent(now);
                let outcome = script.next().expect("no more sends expected");
                let id = out.batch.batch_id;
                sent.push((id, now - base));
                match outcome {
                    UploadOutcome::Accepted => {
                        delivered.extend(out.batch.events.iter().map(|e| e.seq));
                        tern.ack(id).unwrap();
                    }
                    UploadOutcome::Rejected => tern.reject(id).unwrap(),
                    UploadOutcome::Retry { .. } => {
                        retry_sent_at = Some(now);
                        tern.retry(id).unwrap();
                    }
                    UploadOutcome::TransportError => tern.retry(id).unwrap(),
                    UploadOutcome::Refused => tern.refused(id).unwrap(),
                }
                sched.handle_outcome(outcome, now);
            }
            None => match sched.poll_timeout() {
                Some(t) if t > now => now = t,
                Some(_) => now += Duration::from_millis(1),
                None if b.events == 0 && b.ready_batches == 0 => break,
                None if !flushed => {
                    // The app goes to the background: the partial tail is cut and sent.
                    flushed = true;
                    sched.handle_flush(now);
                }
                None => now += Duration::from_secs(1),
            },
        }
    }
    assert!(script.next().is_none(), "every scripted outcome was used");
    let ids: Vec<_> = sent.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids[0], ids[1], "retried with the same batch id");
    assert_eq!(ids[1], ids[2], "retried with the same batch id");
    assert_ne!(ids[2], ids[3]);
    assert_ne!(ids[3], ids[4]);
    let after_retry = sent[2].1 - (retry_sent_at.unwrap() - base);
    assert!(
        after_retry >= Duration::from_secs(2),
        "Retry{{after}} honoured: {after_retry:?}"
    );
    assert_eq!(delivered, (1..=50).chain(101..=120).collect::<Vec<u64>>());
    let s = tern.stats();
    assert_eq!(s.retries, 2);
    assert_eq!(s.dropped_rejected, 50);
    assert_eq!(s.queued_events, 0);
    tern.shutdown(WAIT);
}

#[test]
fn flush_and_wait_returns_once_the_store_is_empty_or_the_timeout_passes() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    assert!(
        tern.flush_and_wait(WAIT),
        "an empty store is flushed at once"
    );
    for n in 1..=30 {
        tern.track("e", n_prop(n)).unwrap();
    }
    // Nobody uploads (no relays): it gives up after the timeout.
    assert!(!tern.flush_and_wait(Duration::from_millis(200)));
    // A stand-in uploader acks everything while another thread waits.
    let waiter = {
        let tern = tern.clone();
        std::thread::spawn(move || tern.flush_and_wait(WAIT))
    };
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    while let Some(b) = tern.next_batch().unwrap() {
        tern.ack(b.batch.batch_id).unwrap();
    }
    assert!(waiter.join().unwrap(), "the waiter sees the store empty");
    assert_eq!(tern.stats().queued_events, 0);
    assert!(tern.shutdown(WAIT).clean);
    assert!(!tern.flush_and_wait(WAIT), "after shutdown nothing is sent");
}

/// A journal segment left by an earlier run with a record that fails its checksum in
/// the middle and another at its end: the good records are applied, each damaged
/// region is counted once in `dropped_corrupt` — in `stats()` and in the health sent
/// upstream — and a restart does not count them again.
#[test]
fn journal_damage_is_counted_once_and_reported_upstream() {
    use tern_sdk::entry::Entry;
    use tern_sdk::journal::{encode_record, segment_name, MAGIC, RECORD_HEADER};
    let dir = tempfile::tempdir().unwrap();
    let record = |n: u64, damage: bool| {
        let entry = Entry::Event {
            ts_ms: 1_700_000_000_000,
            session: None,
            body: EventBody::Custom {
                name: "journaled".into(),
                props: n_prop(n),
            },
        };
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &entry.encode());
        if damage {
            bytes[RECORD_HEADER + 2] ^= 0x5a;
        }
        bytes
    };
    let mut segment = MAGIC.to_vec();
    for (n, damage) in [(1, false), (2, true), (3, false), (4, true)] {
        segment.extend(record(n, damage));
    }
    std::fs::write(dir.path().join(segment_name(1)), &segment).unwrap();

    let tern = Tern::start(config(dir.path())).unwrap();
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    let b = tern.next_batch().unwrap().expect("a batch");
    let numbers: Vec<_> = b
        .batch
        .events
        .iter()
        .map(|e| match &e.body {
            EventBody::Custom { props, .. } => props["n"].clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(numbers, [Value::Int(1), Value::Int(3)]);
    let h = b.batch.health;
    assert_eq!(
        (h.dropped_corrupt, h.reset_unknown, h.store_resets),
        (2, 0, 0)
    );
    assert_eq!(tern.stats().dropped_corrupt, 2);
    tern.shutdown(WAIT);

    let tern = Tern::start(config(dir.path())).unwrap();
    tern.track("later", Properties::new()).unwrap();
    assert_eq!(stored(&tern).len(), 3);
    assert_eq!(tern.stats().dropped_corrupt, 2, "not counted again");
    tern.shutdown(WAIT);
}

#[test]
fn a_store_that_cannot_open_refuses_with_its_reason_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the first journal segment of an earlier run would be: recovery
    // cannot read it, so the store never opens.
    std::fs::create_dir_all(dir.path().join(tern_sdk::journal::segment_name(1))).unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    let mut error = None;
    for _ in 0..4000 {
        error = tern.stats().store_error;
        if error.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(error.is_some(), "the store opened");
    assert!(matches!(
        tern.track("x", Properties::new()),
        Err(TrackError::StoreUnavailable(_))
    ));
    assert_eq!(tern.stats().dropped_unavailable, 1);
    assert!(
        !tern.wait_applied(Duration::MAX),
        "nothing can be applied: at once"
    );
    assert!(!tern.flush_and_wait(Duration::MAX));
    tern.shutdown(WAIT);
}

/// The context through the API: the static part from the config, the dynamic parts
/// from the platform's calls (invalid values refused and counted nowhere, equal ones
/// recording nothing), and `app_opened` after a background only.
#[test]
fn context_calls_and_foreground_opens_reach_the_batches() {
    use tern_protocol::{AppContext, NetworkType};
    let dir = tempfile::tempdir().unwrap();
    let cfg = TernConfig::builder("demo", "demo-key", dir.path())
        .app_version("4.2")
        .context(AppContext {
            os_name: Some("ios".into()),
            locale: Some("en-GB".into()),
            ..AppContext::default()
        })
        .auto_lifecycle(true)
        .build()
        .unwrap();
    assert_eq!(cfg.context.app_version.as_deref(), Some("4.2"));
    assert_eq!(
        cfg.context.sdk_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let bad = TernConfig::builder("demo", "demo-key", dir.path())
        .context(AppContext {
            device_model: Some("x\u{0}".into()),
            ..AppContext::default()
        })
        .build()
        .unwrap_err();
    assert_eq!(bad.field, "context");

    let tern = Tern::start(cfg).unwrap();
    tern.on_foreground().unwrap();
    tern.track("a", Properties::new()).unwrap();
    tern.set_network_type(Some(NetworkType::Cellular)).unwrap();
    tern.set_network_type(Some(NetworkType::Cellular)).unwrap();
    assert!(tern.set_time_zone(Some("")).is_err());
    tern.set_time_zone(Some("Europe/Paris")).unwrap();
    tern.on_background().unwrap();
    tern.on_foreground().unwrap();
    tern.track("b", Properties::new()).unwrap();
    assert_eq!(tern.context().network, Some(NetworkType::Cellular));
    assert_eq!(tern.stats().dropped_invalid, 0);

    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    let mut seen = Vec::new();
    let mut total = 0;
    while let Some(b) = tern.next_batch().unwrap() {
        total += b.batch.events.len() as u64;
        let c = b.batch.context.clone().unwrap();
        assert_eq!(c.install_id, tern.install_id());
        assert_eq!(
            (c.os_name.as_deref(), c.locale.as_deref()),
            (Some("ios"), Some("en-GB"))
        );
        for e in b.batch.events {
            let what = match e.body {
                EventBody::Custom { name, .. } => name,
                EventBody::SessionStart | EventBody::SessionEnd { .. } => continue,
                other => other.kind().to_owned(),
            };
            seen.push((what, c.network.clone(), c.time_zone.clone()));
        }
    }
    let cell = Some(NetworkType::Cellular);
    let paris = Some("Europe/Paris".to_string());
    assert_eq!(
        seen,
        [
            ("app_installed".to_string(), None, None),
            ("app_opened".to_string(), None, None),
            ("a".to_string(), None, None),
            ("app_opened".to_string(), cell.clone(), paris.clone()),
            ("b".to_string(), cell, paris),
        ]
    );
    // What the device recorded counts the launch's lifecycle events the store added.
    assert_eq!(tern.stats().events_recorded, total);
    tern.shutdown(WAIT);
}
/// Consent through the API: a denied purpose's call returns `Ok`, writes nothing and is
/// counted; a pending purpose's events are kept, not batched, and join the queue on a
/// grant; a state set persists across a restart over a different default, and events
/// held under the old default follow the new one.
#[test]
fn consent_states_decide_what_is_kept_and_sent_and_persist() {
    use tern_sdk::{ConsentState, ConsentStates, Purpose};
    let dir = tempfile::tempdir().unwrap();
    let with_default = |s: ConsentState| {
        TernConfig::builder("demo", "demo-key", dir.path())
            .default_consent(ConsentStates::all(s))
            .build()
            .unwrap()
    };
    let tern = Tern::start(with_default(ConsentState::Pending)).unwrap();
    assert_eq!(tern.consent(Purpose::Analytics), ConsentState::Pending);
    tern.track("held", n_prop(1)).unwrap();
    tern.set_consent(Purpose::Messaging, ConsentState::Denied)
        .unwrap();
    assert_eq!(tern.message_impression("m", "shown"), Ok(()));
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    assert!(
        tern.next_batch().unwrap().is_none(),
        "a held event was batched"
    );
    let s = tern.stats();
    assert_eq!((s.refused_consent, s.consent_counters.pending_now), (1, 1));
    assert_eq!(s.events_recorded, 1, "the denied impression was journaled");
    tern.shutdown(WAIT);

    // Restarted with another default: messaging was set (denied) and stays so;
    // analytics never was, so the new default (granted) applies and releases the
    // event held under the old one.
    let tern = Tern::start(with_default(ConsentState::Granted)).unwrap();
    assert!(tern.wait_applied(WAIT));
    assert_eq!(tern.consent(Purpose::Analytics), ConsentState::Granted);
    assert_eq!(tern.consent(Purpose::Messaging), ConsentState::Denied);
    assert_eq!(tern.stats().consent_counters.pending_released, 1);
    tern.track("after", n_prop(2)).unwrap();
    let sent: Vec<_> = stored(&tern).into_iter().map(|e| (e.seq, e.body)).collect();
    assert_eq!(
        sent,
        [
            (
                1,
                EventBody::Custom {
                    name: "held".into(),
                    props: n_prop(1)
                }
            ),
            (
                2,
                EventBody::Custom {
                    name: "after".into(),
                    props: n_prop(2)
                }
            )
        ]
    );
    tern.shutdown(WAIT);
}

/// While opted out only a deletion request leaves; the data it covered is gone.
#[test]
fn a_deletion_request_leaves_while_opted_out_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    tern.track("before", Properties::new()).unwrap();
    assert!(tern.wait_applied(WAIT));
    let old = tern.stats().device_id.unwrap();
    tern.opt_out(true).unwrap();
    tern.request_deletion().unwrap();
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    let b = tern.next_batch().unwrap().expect("the deletion request");
    assert_eq!(b.batch.device_id, old);
    assert!(matches!(
        b.batch.events[0].body,
        EventBody::DeletionRequest { device_id, .. } if device_id == old
    ));
    assert!(
        tern.next_batch().unwrap().is_none(),
        "more than the request"
    );
    tern.ack(b.batch.batch_id).unwrap();
    let s = tern.stats();
    assert_ne!(s.device_id, Some(old));
    assert_eq!(s.queued_events, 0);
    assert_eq!(s.consent_counters.deletion_requests_sent, 1);
    tern.shutdown(WAIT);
}

/// An idle SDK's store thread sleeps until there is work (a phone's battery; the CPU
/// of a fleet of simulated devices): once the launch is applied and the journal marker
/// refreshed, seconds of idleness take no round of work (the thread used to wake every
/// second), and the next event is applied at once.
#[test]
fn an_idle_store_thread_sleeps_until_there_is_work() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::start(config(dir.path())).unwrap();
    tern.track("first", n_prop(1)).unwrap();
    assert!(tern.wait_applied(WAIT));
    // The marker is refreshed within 5 s of the apply; then nothing is due.
    std::thread::sleep(Duration::from_secs(6));
    let before = tern.stats().store_steps;
    std::thread::sleep(Duration::from_secs(4));
    let idle = tern.stats().store_steps - before;
    assert!(idle <= 1, "{idle} rounds of work in 4 s of idleness");
    tern.track("second", n_prop(2)).unwrap();
    assert!(tern.wait_applied(WAIT));
    let s = tern.stats();
    assert_eq!(
        s.queued_events, s.events_recorded,
        "everything recorded is stored"
    );
    assert!(s.store_steps > before + idle);
}
