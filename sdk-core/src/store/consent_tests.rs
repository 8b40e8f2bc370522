//! Consent and deletion requests in the store: held events released in order or
//! deleted, the bound on held events, denied events not kept, deletion requests sent
//! under the old device id before anything else, and all of it across reopening.

use tern_protocol::{AppId, DeviceId, EventBody, Limits, SdkInfo, UserId, Value};

use super::*;
use crate::consent::{ConsentConfig, ConsentState, ConsentStates, Purpose};
use crate::store::entry::Entry;

fn event(n: i64) -> Entry {
    Entry::Event {
        ts_ms: 1_700_000_000_000 + n,
        session: None,
        body: EventBody::Custom {
            name: "e".into(),
            props: [("n".to_string(), Value::Int(n))].into_iter().collect(),
        },
    }
}

fn shown(id: &str) -> Entry {
    Entry::Event {
        ts_ms: 1_700_000_000_000,
        session: None,
        body: EventBody::MessageImpression {
            message_id: id.into(),
            action: "shown".into(),
        },
    }
}

fn consent(p: Purpose, s: ConsentState) -> Entry {
    Entry::SetConsent {
        purpose: p.as_str().into(),
        state: s.as_str().into(),
    }
}

fn open_with(dir: &Path, default: ConsentState, max_pending: u64) -> Db {
    let mut db = Db::open(dir, StoreLimits::default(), Limits::default())
        .expect("open")
        .0;
    db.set_consent_config(ConsentConfig {
        default_state: ConsentStates::all(default),
        max_pending_events: max_pending,
    });
    db
}

/// What a sent event is, for these tests.
fn what(e: &Event) -> String {
    match &e.body {
        EventBody::Custom { props, .. } => match props.get("n") {
            Some(Value::Int(n)) => format!("e{n}"),
            _ => "e?".into(),
        },
        EventBody::MessageImpression { message_id, .. } => format!("m:{message_id}"),
        EventBody::DeletionRequest { .. } => "deletion".into(),
        other => other.kind().into(),
    }
}

/// Every batch, in order: its device id and events (`seq`, what).
fn drain(db: &mut Db) -> Vec<(DeviceId, Vec<(u64, String)>)> {
    db.form_batches(1000, 1 << 20, true).unwrap();
    let mut out = Vec::new();
    while let Some(b) = db
        .next_batch(&AppId::new("demo"), &SdkInfo::default())
        .unwrap()
    {
        let id = b.batch.batch_id;
        out.push((
            b.batch.device_id,
            b.batch.events.iter().map(|e| (e.seq, what(e))).collect(),
        ));
        db.ack(id).unwrap();
    }
    out
}

fn events_of(batches: &[(DeviceId, Vec<(u64, String)>)]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|(_, e)| e.iter().map(|(_, w)| w.clone()))
        .collect()
}

#[test]
fn the_default_is_granted_and_nothing_changes_for_apps_that_never_ask() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open_with(dir.path(), ConsentState::Granted, 10);
    db.apply(&[event(1), shown("a")], (0, 1)).unwrap();
    assert_eq!(events_of(&drain(&mut db)), ["e1", "m:a"]);
    assert_eq!(db.consent(), ConsentStates::default());
}

#[test]
fn pending_events_wait_and_leave_in_recorded_order_when_granted_with_no_seq_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open_with(dir.path(), ConsentState::Pending, 100);
    db.apply(&[event(1), shown("a"), event(2)], (0, 1)).unwrap();
    assert!(drain(&mut db).is_empty(), "nothing leaves while pending");
    assert_eq!(db.meta().consent_counters.pending_now, 3);
    // Messaging granted first: only the impression leaves.
    db.apply(
        &[
            consent(Purpose::Messaging, ConsentState::Granted),
            shown("b"),
        ],
        (0, 2),
    )
    .unwrap();
    let sent = drain(&mut db);
    assert_eq!(events_of(&sent), ["m:a", "m:b"]);
    assert_eq!(
        sent[0].1.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2]
    );
    // Then analytics, with a later event of its own after the grant.
    db.apply(
        &[
            event(3),
            consent(Purpose::Analytics, ConsentState::Granted),
            event(4),
        ],
        (0, 3),
    )
    .unwrap();
    let sent = drain(&mut db);
    assert_eq!(events_of(&sent), ["e1", "e2", "e3", "e4"]);
    let seqs: Vec<u64> = sent
        .iter()
        .flat_map(|(_, e)| e.iter().map(|(s, _)| *s))
        .collect();
    assert_eq!(
        seqs,
        [3, 4, 5, 6],
        "sequence numbers given at release: no gap"
    );
    let c = db.meta().consent_counters;
    assert_eq!((c.pending_released, c.pending_now), (4, 0));
}

#[test]
fn denial_deletes_held_events_and_later_ones_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open_with(dir.path(), ConsentState::Pending, 100);
    db.apply(&[event(1), event(2), shown("a")], (0, 1)).unwrap();
    db.apply(
        &[
            consent(Purpose::Analytics, ConsentState::Denied),
            event(3),
            consent(Purpose::Messaging, ConsentState::Granted),
        ],
        (0, 2),
    )
    .unwrap();
    assert_eq!(events_of(&drain(&mut db)), ["m:a"]);
    let c = db.meta().consent_counters;
    assert_eq!((c.pending_discarded, c.denied, c.pending_now), (2, 1, 0));
    // Granting later brings back nothing that was denied.
    db.apply(
        &[consent(Purpose::Analytics, ConsentState::Granted)],
        (0, 3),
    )
    .unwrap();
    assert!(drain(&mut db).is_empty());
}

#[test]
fn held_events_are_bounded_and_the_oldest_go_first_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open_with(dir.path(), ConsentState::Pending, 3);
    let entries: Vec<Entry> = (1..=5).map(event).collect();
    db.apply(&entries, (0, 1)).unwrap();
    let c = db.meta().consent_counters;
    assert_eq!((c.pending_now, c.pending_overflow), (3, 2));
    db.apply(
        &[consent(Purpose::Analytics, ConsentState::Granted)],
        (0, 2),
    )
    .unwrap();
    assert_eq!(events_of(&drain(&mut db)), ["e3", "e4", "e5"]);
}

#[test]
fn the_stored_state_and_held_events_survive_reopening_and_win_over_the_option() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut db = open_with(dir.path(), ConsentState::Granted, 10);
        db.apply(
            &[
                consent(Purpose::Analytics, ConsentState::Pending),
                event(1),
                consent(Purpose::Messaging, ConsentState::Denied),
            ],
            (0, 1),
        )
        .unwrap();
    }
    // Reopened with another default: the states set win; nothing left.
    let mut db = open_with(dir.path(), ConsentState::Granted, 10);
    assert_eq!(db.consent().analytics, ConsentState::Pending);
    assert_eq!(db.consent().messaging, ConsentState::Denied);
    assert_eq!(db.meta().consent_counters.pending_now, 1);
    assert!(drain(&mut db).is_empty());
    db.apply(
        &[consent(Purpose::Analytics, ConsentState::Granted)],
        (0, 2),
    )
    .unwrap();
    assert_eq!(events_of(&drain(&mut db)), ["e1"]);
}

#[test]
fn a_lost_store_takes_the_consent_state_from_the_journal_marker() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut db = open_with(dir.path(), ConsentState::Granted, 10);
        db.apply(
            &[consent(Purpose::Analytics, ConsentState::Denied)],
            (1, 10),
        )
        .unwrap();
        db.advance_frontier().unwrap();
    }
    std::fs::remove_file(dir.path().join(DB_FILE)).unwrap();
    let db = open_with(dir.path(), ConsentState::Granted, 10);
    assert_eq!(db.consent().analytics, ConsentState::Denied);
}

#[test]
fn a_deletion_request_leaves_first_under_the_old_device_and_the_data_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open_with(dir.path(), ConsentState::Granted, 10);
    let old = db.meta().device_id;
    let old_anon = db.meta().anonymous_id;
    db.apply(
        &[
            Entry::Identify {
                user: Some(UserId::new("alice")),
            },
            event(1),
            event(2),
            Entry::RequestDeletion {
                ts_ms: 5,
                session: None,
            },
            event(3),
        ],
        (0, 1),
    )
    .unwrap();
    let new = db.meta().device_id;
    assert_ne!(new, old);
    assert_eq!(db.meta().user, None);
    db.form_batches(1000, 1 << 20, true).unwrap();
    let b = db
        .next_batch(&AppId::new("demo"), &SdkInfo::default())
        .unwrap()
        .unwrap();
    assert_eq!(b.batch.device_id, old);
    assert_eq!(b.batch.events.len(), 1);
    let e = &b.batch.events[0];
    // The next sequence number of the old device: no gap at the backend.
    assert_eq!(e.seq, 3);
    assert_eq!(e.user_id, Some(UserId::new("alice")));
    assert_eq!(
        e.body,
        EventBody::DeletionRequest {
            device_id: old,
            user_id: Some(UserId::new("alice")),
            anonymous_id: Some(old_anon),
        }
    );
    // Retried with the same batch id until acknowledged.
    let id = b.batch.batch_id;
    db.retry(id).unwrap();
    let again = db
        .next_batch(&AppId::new("demo"), &SdkInfo::default())
        .unwrap()
        .unwrap();
    assert_eq!(again.batch.batch_id, id);
    assert_eq!(again.batch.attempt, 1);
    db.ack(id).unwrap();
    // Then only what came after it, under the new device id.
    let rest = drain(&mut db);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, new);
    assert_eq!(rest[0].1, [(1, "e3".to_string())]);
    let c = db.meta().consent_counters;
    assert_eq!((c.deletion_requests, c.deletion_requests_sent), (1, 1));
    assert_eq!(db.deletion_requests_waiting().unwrap(), 0);
}

#[test]
fn a_deletion_request_is_kept_whatever_the_consent_and_the_opt_out_and_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let old;
    {
        let mut db = open_with(dir.path(), ConsentState::Denied, 10);
        old = db.meta().device_id;
        db.apply(
            &[
                Entry::OptOut { opted_out: true },
                Entry::RequestDeletion {
                    ts_ms: 5,
                    session: None,
                },
            ],
            (0, 1),
        )
        .unwrap();
        assert_eq!(db.backlog().unwrap().ready_batches, 1);
    }
    let mut db = open_with(dir.path(), ConsentState::Denied, 10);
    assert_eq!(db.deletion_requests_waiting().unwrap(), 1);
    let b = db
        .next_deletion_batch(&AppId::new("demo"), &SdkInfo::default())
        .unwrap()
        .unwrap();
    assert_eq!(b.batch.device_id, old);
    assert_eq!(what(&b.batch.events[0]), "deletion");
    db.ack(b.batch.batch_id).unwrap();
    assert_eq!(db.deletion_requests_waiting().unwrap(), 0);
    assert_eq!(db.backlog().unwrap().ready_batches, 0);
}

#[test]
fn deletion_requests_are_bounded_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open_with(dir.path(), ConsentState::Granted, 10);
    let n = crate::consent::MAX_DELETION_REQUESTS + 3;
    let entries: Vec<Entry> = (0..n)
        .map(|k| Entry::RequestDeletion {
            ts_ms: k as i64,
            session: None,
        })
        .collect();
    db.apply(&entries, (0, 1)).unwrap();
    assert_eq!(
        db.deletion_requests_waiting().unwrap(),
        crate::consent::MAX_DELETION_REQUESTS
    );
    assert_eq!(db.meta().consent_counters.deletion_overflow, 3);
}

#[test]
fn events_held_under_a_default_follow_a_changed_default_at_the_next_apply() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut db = open_with(dir.path(), ConsentState::Pending, 10);
        db.apply(&[event(1), shown("a")], (0, 1)).unwrap();
    }
    // The app now ships with messaging denied... and analytics granted by default.
    let mut db = Db::open(dir.path(), StoreLimits::default(), Limits::default())
        .expect("open")
        .0;
    db.set_consent_config(ConsentConfig {
        default_state: ConsentStates {
            analytics: ConsentState::Granted,
            messaging: ConsentState::Denied,
        },
        max_pending_events: 10,
    });
    db.apply(&[event(2)], (0, 2)).unwrap();
    assert_eq!(events_of(&drain(&mut db)), ["e1", "e2"]);
    let c = db.meta().consent_counters;
    assert_eq!(
        (c.pending_released, c.pending_discarded, c.pending_now),
        (1, 1, 0)
    );
}
