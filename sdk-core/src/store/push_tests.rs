//! The push token in the store (protocol §8.3): `push_token` events only when the token
//! or the user changes or a refresh is due, the token kept across reopening, and the
//! cleared token of an opt-out or `delete_local_data` — the one batch that leaves while
//! opted out.

use tern_protocol::{AppId, EventBody, Limits, PushEnvironment, PushProvider, SdkInfo, UserId};

use super::*;
use crate::store::entry::Entry;

const T0: i64 = 1_700_000_000_000;
const DAY: i64 = 24 * 3600 * 1000;

fn open(dir: &Path) -> Db {
    Db::open(dir, StoreLimits::default(), Limits::default())
        .expect("open")
        .0
}

fn token(ts: i64, t: &str) -> Entry {
    Entry::PushToken {
        ts_ms: ts,
        session: None,
        provider: PushProvider::Apns,
        environment: Some(PushEnvironment::Production),
        token: t.into(),
    }
}

fn refresh(ts: i64) -> Entry {
    Entry::PushRefresh {
        ts_ms: ts,
        session: None,
        min_age_ms: 7 * DAY as u64,
    }
}

fn identify(user: Option<&str>) -> Entry {
    Entry::Identify {
        user: user.map(UserId::new),
    }
}

fn event() -> Entry {
    Entry::Event {
        ts_ms: T0,
        session: None,
        body: EventBody::Custom {
            name: "e".into(),
            props: Default::default(),
        },
    }
}

fn body(t: &str, cleared: bool) -> EventBody {
    EventBody::PushToken {
        provider: PushProvider::Apns,
        environment: Some(PushEnvironment::Production),
        token: t.into(),
        cleared,
    }
}

/// (user, body, ts) of every event the batches handed out hold, in order; acked.
fn drain(db: &mut Db) -> Vec<(Option<String>, EventBody, i64)> {
    db.form_batches(1000, 1 << 20, true).unwrap();
    let mut out = Vec::new();
    while let Some(b) = db
        .next_batch(&AppId::new("demo"), &SdkInfo::default())
        .unwrap()
    {
        let id = b.batch.batch_id;
        out.extend(
            b.batch
                .events
                .into_iter()
                .map(|e| (e.user_id.map(|u| u.as_str().to_owned()), e.body, e.ts_ms)),
        );
        db.ack(id).unwrap();
    }
    out
}

fn bodies(db: &mut Db) -> Vec<(Option<String>, EventBody)> {
    drain(db).into_iter().map(|(u, b, _)| (u, b)).collect()
}

#[test]
fn an_unchanged_token_records_nothing_and_a_new_one_records_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    db.apply(
        &[
            token(T0, "aa"),
            token(T0 + 1, "aa"),
            token(T0 + 2, "aa"),
            token(T0 + 3, "bb"),
            token(T0 + 4, "bb"),
        ],
        (1, 10),
    )
    .unwrap();
    assert_eq!(
        bodies(&mut db),
        [(None, body("aa", false)), (None, body("bb", false))]
    );
    // Kept across reopening: the same token again still records nothing.
    drop(db);
    let mut db = open(dir.path());
    assert_eq!(db.push_state().map(|p| p.token.as_str()), Some("bb"));
    db.apply(&[token(T0 + 5, "bb")], (1, 20)).unwrap();
    assert_eq!(bodies(&mut db), []);
    // The environment is part of the token: sandbox → production is a change.
    db.apply(
        &[Entry::PushToken {
            ts_ms: T0 + 6,
            session: None,
            provider: PushProvider::Apns,
            environment: Some(PushEnvironment::Sandbox),
            token: "bb".into(),
        }],
        (1, 30),
    )
    .unwrap();
    assert_eq!(drain(&mut db).len(), 1);
}

#[test]
fn a_user_change_records_the_token_under_the_new_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    db.apply(
        &[
            token(T0, "aa"),
            identify(Some("alice")),
            event(),
            identify(Some("alice")),
            Entry::Alias {
                ts_ms: T0 + 9,
                session: None,
                user: UserId::new("bob"),
            },
            Entry::Reset {
                anonymous_id: tern_protocol::AnonymousId::random(),
            },
            identify(None),
        ],
        (1, 10),
    )
    .unwrap();
    let got = bodies(&mut db);
    let alice = Some("alice".to_owned());
    let bob = Some("bob".to_owned());
    assert_eq!(
        got,
        [
            (None, body("aa", false)),
            (alice.clone(), body("aa", false)),
            (
                alice,
                EventBody::Custom {
                    name: "e".into(),
                    props: Default::default()
                }
            ),
            (
                bob.clone(),
                EventBody::Alias {
                    anonymous_id: got[3].1.clone().alias_anon(),
                    user_id: UserId::new("bob")
                }
            ),
            (bob, body("aa", false)),
            (None, body("aa", false)),
        ]
    );
}

trait AliasAnon {
    fn alias_anon(self) -> tern_protocol::AnonymousId;
}

impl AliasAnon for EventBody {
    fn alias_anon(self) -> tern_protocol::AnonymousId {
        match self {
            EventBody::Alias { anonymous_id, .. } => anonymous_id,
            other => panic!("not an alias: {other:?}"),
        }
    }
}

#[test]
fn a_refresh_records_the_token_again_only_when_the_last_one_is_old_enough() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    db.apply(
        &[
            refresh(T0),
            token(T0, "aa"),
            refresh(T0 + DAY),
            refresh(T0 + 7 * DAY - 1),
            refresh(T0 + 7 * DAY),
            refresh(T0 + 8 * DAY),
            refresh(T0 + 14 * DAY),
        ],
        (1, 10),
    )
    .unwrap();
    let times: Vec<i64> = drain(&mut db).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(times, [T0, T0 + 7 * DAY, T0 + 14 * DAY]);
    assert_eq!(db.push_state().map(|p| p.sent_ms), Some(T0 + 14 * DAY));
}

#[test]
fn opting_out_clears_the_token_in_a_batch_of_its_own_that_leaves_while_opted_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    let app = AppId::new("demo");
    let sdk = SdkInfo::default();
    db.apply(
        &[
            identify(Some("alice")),
            token(T0, "aa"),
            event(),
            Entry::OptOut { opted_out: true },
            event(),
            token(T0 + 1, "zz"),
        ],
        (1, 10),
    )
    .unwrap();
    assert!(db.push_state().is_none());
    db.form_batches(1000, 1 << 20, false).unwrap();
    // While opted out: the cleared token alone, then nothing.
    let b = db
        .next_push_clear_batch(&app, &sdk)
        .unwrap()
        .expect("batch");
    let seen: Vec<_> = b.batch.events.iter().map(|e| e.body.clone()).collect();
    assert_eq!(seen, [body("aa", true)]);
    assert_eq!(b.batch.events[0].user_id, Some(UserId::new("alice")));
    db.ack(b.batch.batch_id).unwrap();
    assert!(db.next_push_clear_batch(&app, &sdk).unwrap().is_none());
    // Opting in: the events kept from before the opt-out leave (none recorded while
    // opted out); the token set while opted out was not kept.
    db.apply(&[Entry::OptOut { opted_out: false }], (1, 20))
        .unwrap();
    let alice = Some("alice".to_owned());
    let custom = EventBody::Custom {
        name: "e".into(),
        props: Default::default(),
    };
    assert_eq!(
        bodies(&mut db),
        [(alice.clone(), body("aa", false)), (alice, custom)]
    );
    assert!(db.push_state().is_none());
    // Opting out again without a token records nothing.
    db.apply(&[Entry::OptOut { opted_out: true }], (1, 30))
        .unwrap();
    db.form_batches(1000, 1 << 20, true).unwrap();
    assert!(db.next_push_clear_batch(&app, &sdk).unwrap().is_none());
}

#[test]
fn delete_local_data_clears_the_token_under_the_new_device_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    let old = db.meta().device_id;
    db.apply(
        &[
            identify(Some("alice")),
            token(T0, "aa"),
            event(),
            Entry::DeleteLocalData,
            token(T0 + 1, "aa"),
        ],
        (1, 10),
    )
    .unwrap();
    assert_ne!(db.meta().device_id, old);
    // The cleared token (anonymous, the first event of the new identity), then the
    // token set again after the deletion.
    assert_eq!(
        bodies(&mut db),
        [(None, body("aa", true)), (None, body("aa", false))]
    );
}

#[test]
fn delete_local_data_while_opted_out_records_the_cleared_token_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    let app = AppId::new("demo");
    let sdk = SdkInfo::default();
    db.apply(
        &[
            token(T0, "aa"),
            event(),
            Entry::OptOut { opted_out: true },
            Entry::DeleteLocalData,
        ],
        (1, 10),
    )
    .unwrap();
    db.form_batches(1000, 1 << 20, false).unwrap();
    let b = db
        .next_push_clear_batch(&app, &sdk)
        .unwrap()
        .expect("batch");
    assert_eq!(b.batch.device_id, db.meta().device_id);
    let seen: Vec<_> = b.batch.events.iter().map(|e| e.body.clone()).collect();
    assert_eq!(seen, [body("aa", true)]);
    assert_eq!(b.batch.events[0].seq, 1);
    db.ack(b.batch.batch_id).unwrap();
    // Nothing else was kept, and the new identity's next event is not exempt.
    db.apply(&[Entry::OptOut { opted_out: false }, event()], (1, 20))
        .unwrap();
    db.apply(&[Entry::OptOut { opted_out: true }], (1, 30))
        .unwrap();
    db.form_batches(1000, 1 << 20, true).unwrap();
    assert!(db.next_push_clear_batch(&app, &sdk).unwrap().is_none());
}

fn messaging(state: &str) -> Entry {
    Entry::SetConsent {
        purpose: "messaging".into(),
        state: state.into(),
    }
}

/// Messaging consent and the token: denied gives the token up (a cleared event, sent
/// whatever the consent); a token set while denied is not kept, and is recorded once
/// when messaging is granted; granting again records nothing; a token held while
/// pending leaves once, when granted.
#[test]
fn messaging_consent_gives_the_token_up_and_a_grant_records_one_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    db.apply(&[token(T0, "aa")], (1, 10)).unwrap();
    assert_eq!(bodies(&mut db), vec![(None, body("aa", false))]);

    db.apply(&[messaging("denied"), token(T0 + 1, "bb")], (1, 20))
        .unwrap();
    assert_eq!(
        bodies(&mut db),
        vec![(None, body("aa", true))],
        "the old token given up; the new one not kept while denied"
    );

    db.apply(&[messaging("granted"), messaging("granted")], (1, 30))
        .unwrap();
    assert_eq!(
        bodies(&mut db),
        vec![(None, body("bb", false))],
        "recorded once at the grant"
    );

    db.apply(&[messaging("pending"), token(T0 + 2, "cc")], (1, 40))
        .unwrap();
    assert_eq!(bodies(&mut db), vec![], "held while pending");
    db.apply(&[messaging("granted")], (1, 50)).unwrap();
    assert_eq!(
        bodies(&mut db),
        vec![(None, body("cc", false))],
        "released once, not recorded again"
    );
}
