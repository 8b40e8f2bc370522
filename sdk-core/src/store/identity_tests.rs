//! Identities in the store: `alias` and `reset` applied in call order, batches that
//! never mix identities, and the anonymous id kept across reopening and store loss.

use tern_protocol::{AnonymousId, AppId, EventBody, Limits, SdkInfo, UserId, Value};

use super::*;
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

fn alias(user: &str) -> Entry {
    Entry::Alias {
        ts_ms: 1_700_000_000_000,
        session: None,
        user: UserId::new(user),
    }
}

fn open(dir: &Path) -> Db {
    Db::open(dir, StoreLimits::default(), Limits::default())
        .expect("open")
        .0
}

/// A batch as these tests see it: its anonymous id, each event's user and body.
type Seen = (Option<AnonymousId>, Vec<(Option<UserId>, EventBody)>);

/// Every formed batch, in order.
fn drain(db: &mut Db) -> Vec<Seen> {
    db.form_batches(1000, 1 << 20, true).unwrap();
    let mut out = Vec::new();
    while let Some(b) = db
        .next_batch(&AppId::new("demo"), &SdkInfo::default())
        .unwrap()
    {
        let id = b.batch.batch_id;
        out.push((
            b.batch.anonymous_id,
            b.batch
                .events
                .into_iter()
                .map(|e| (e.user_id, e.body))
                .collect(),
        ));
        db.ack(id).unwrap();
    }
    out
}

fn custom(n: i64) -> EventBody {
    let Entry::Event { body, .. } = event(n) else {
        unreachable!()
    };
    body
}

#[test]
fn alias_and_reset_apply_in_call_order_and_batches_never_mix_identities() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    let a0 = db.meta().anonymous_id;
    let props: Properties = [("plan".to_string(), Value::from("pro"))].into();
    db.save_user_properties(&props).unwrap();
    let (a1, a2) = (AnonymousId::random(), AnonymousId::random());
    db.apply(
        &[
            event(1),
            event(2),
            alias("alice"),
            event(3),
            Entry::Reset { anonymous_id: a1 },
            event(4),
            Entry::Reset { anonymous_id: a2 },
            event(5),
        ],
        (1, 100),
    )
    .unwrap();
    assert_eq!(db.meta().anonymous_id, a2);
    assert_eq!(db.meta().user, None);
    assert!(db.load_user_properties().unwrap().is_empty());
    let alice = Some(UserId::new("alice"));
    assert_eq!(
        drain(&mut db),
        [
            (Some(a0), vec![(None, custom(1)), (None, custom(2))]),
            (
                Some(a0),
                vec![
                    (
                        alice.clone(),
                        EventBody::Alias {
                            anonymous_id: a0,
                            user_id: UserId::new("alice"),
                        }
                    ),
                    (alice, custom(3)),
                ]
            ),
            (Some(a1), vec![(None, custom(4))]),
            (Some(a2), vec![(None, custom(5))]),
        ]
    );
    // The device id and its sequence numbers are not touched by a reset.
    assert_eq!(db.meta().next_seq, 7);
    drop(db);
    assert_eq!(open(dir.path()).meta().anonymous_id, a2);
}

#[test]
fn an_alias_while_opted_out_sets_the_user_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    db.apply(
        &[
            Entry::OptOut { opted_out: true },
            alias("bob"),
            Entry::OptOut { opted_out: false },
            event(1),
        ],
        (1, 10),
    )
    .unwrap();
    let batches = drain(&mut db);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].1, [(Some(UserId::new("bob")), custom(1))]);
}

#[test]
fn a_lost_store_continues_with_the_anonymous_id_of_the_marker() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    let a1 = AnonymousId::random();
    db.apply(&[event(1), Entry::Reset { anonymous_id: a1 }], (1, 50))
        .unwrap();
    db.advance_frontier().unwrap();
    drop(db);
    for f in ["tern.db", "tern.db-wal", "tern.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let db = open(dir.path());
    assert_eq!(db.meta().anonymous_id, a1);
    assert_eq!(db.meta().user, None);
}

#[test]
fn delete_local_data_gives_a_new_anonymous_id_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    let a0 = db.meta().anonymous_id;
    db.apply(&[Entry::DeleteLocalData, event(1)], (1, 10))
        .unwrap();
    let a = db.meta().anonymous_id;
    assert_ne!(a, a0);
    assert_eq!(drain(&mut db)[0].0, Some(a));
}

/// A file written before anonymous ids (no `anon_id` column) opens, gains the column,
/// and its queued events leave in batches without an anonymous id.
#[test]
fn events_stored_before_anonymous_ids_leave_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    db.apply(&[event(1)], (1, 10)).unwrap();
    db.conn
        .execute("UPDATE events SET anon_id = NULL", [])
        .unwrap();
    db.apply(&[event(2)], (1, 20)).unwrap();
    let batches = drain(&mut db);
    assert_eq!(
        batches.len(),
        2,
        "the NULL and the set identity are not mixed"
    );
    assert_eq!(batches[0].0, None);
    assert_eq!(batches[1].0, Some(db.meta().anonymous_id));
}
