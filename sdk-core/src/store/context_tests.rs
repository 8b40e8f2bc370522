//! Contexts and lifecycle events in the store: launches decided against the version
//! kept (install once, update with the previous version, open every time), batches
//! that name the context their events were recorded in, the bounded `contexts` table,
//! the install id across reopening, store loss and `delete_local_data`.

use tern_protocol::{AppContext, AppId, EventBody, Limits, NetworkType, SdkInfo, Value};

use super::context::MAX_CONTEXTS;
use super::*;
use crate::store::entry::Entry;

fn event(n: i64) -> Entry {
    Entry::Event {
        ts_ms: 1_700_000_000_000 + n,
        session: None,
        body: custom(n),
    }
}

fn custom(n: i64) -> EventBody {
    EventBody::Custom {
        name: "e".into(),
        props: [("n".to_string(), Value::Int(n))].into_iter().collect(),
    }
}

fn ctx(version: &str, network: NetworkType) -> AppContext {
    AppContext {
        app_version: Some(version.into()),
        app_build: Some(format!("b{version}")),
        os_name: Some("android".into()),
        network: Some(network),
        ..AppContext::default()
    }
}

fn launch(version: &str) -> Entry {
    Entry::Launch {
        ts_ms: 1_700_000_000_000,
        context: ctx(version, NetworkType::Wifi),
        lifecycle: true,
    }
}

fn open(dir: &Path) -> Db {
    Db::open(dir, StoreLimits::default(), Limits::default())
        .expect("open")
        .0
}

/// A batch as these tests see it: its context and its events' bodies.
type Seen = (Option<AppContext>, Vec<EventBody>);

fn drain(db: &mut Db) -> Vec<Seen> {
    db.form_batches(1000, 1 << 20, true).unwrap();
    let mut out = Vec::new();
    while let Some(b) = db
        .next_batch(&AppId::new("demo"), &SdkInfo::default())
        .unwrap()
    {
        let id = b.batch.batch_id;
        out.push((
            b.batch.context,
            b.batch.events.into_iter().map(|e| e.body).collect(),
        ));
        db.ack(id).unwrap();
    }
    out
}

/// The context as sent: with this store's install id.
fn sent(db: &Db, mut c: AppContext) -> Option<AppContext> {
    c.install_id = Some(db.meta().context.install_id);
    Some(c)
}

fn opened() -> EventBody {
    EventBody::AppOpened {
        from_background: false,
    }
}

#[test]
fn a_new_store_records_the_install_once_then_opens_then_the_update_with_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    db.apply(&[launch("1.0"), event(1)], (1, 10)).unwrap();
    let c1 = sent(&db, ctx("1.0", NetworkType::Wifi));
    assert_eq!(
        drain(&mut db),
        [(
            c1.clone(),
            vec![EventBody::AppInstalled, opened(), custom(1)]
        )]
    );
    drop(db);
    // The same version again: an open, no install.
    let mut db = open(dir.path());
    db.apply(&[launch("1.0")], (1, 20)).unwrap();
    assert_eq!(drain(&mut db), [(c1, vec![opened()])]);
    // A new version: the update names the previous one; its batch names the new one.
    db.apply(&[launch("1.1"), launch("1.1")], (1, 30)).unwrap();
    let c2 = sent(&db, ctx("1.1", NetworkType::Wifi));
    let updated = EventBody::AppUpdated {
        previous_version: Some("1.0".into()),
        previous_build: Some("b1.0".into()),
    };
    assert_eq!(drain(&mut db), [(c2, vec![updated, opened(), opened()])]);
}

#[test]
fn lifecycle_off_records_nothing_but_keeps_the_version_and_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    let quiet = Entry::Launch {
        ts_ms: 1,
        context: ctx("3.0", NetworkType::Cellular),
        lifecycle: false,
    };
    db.apply(&[quiet, event(1)], (1, 10)).unwrap();
    let c = sent(&db, ctx("3.0", NetworkType::Cellular));
    assert_eq!(drain(&mut db), [(c, vec![custom(1)])]);
    // Turned on later: no install, no update for the version already seen.
    db.apply(&[launch("3.0")], (1, 20)).unwrap();
    assert_eq!(drain(&mut db)[0].1, [opened()]);
}

/// A store written by an SDK from before lifecycle events (no launch state in `meta`)
/// is not a new install: the first launch is an update from an unknown version.
#[test]
fn a_store_of_an_older_sdk_is_updated_not_installed() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    db.apply(&[event(1)], (1, 10)).unwrap();
    db.conn
        .execute(
            "DELETE FROM meta WHERE key IN ('install_pending', 'launched', 'app_version', 'app_build', 'context_id')",
            [],
        )
        .unwrap();
    db.conn
        .execute("UPDATE events SET ctx_id = NULL", [])
        .unwrap();
    drop(db);
    let mut db = open(dir.path());
    db.apply(&[launch("2.0")], (1, 20)).unwrap();
    let batches = drain(&mut db);
    // The old event leaves without a context, the launch's with the new one.
    assert_eq!(batches[0], (None, vec![custom(1)]));
    assert_eq!(
        batches[1].1,
        [
            EventBody::AppUpdated {
                previous_version: None,
                previous_build: None
            },
            opened()
        ]
    );
}

#[test]
fn events_recorded_under_one_context_are_sent_with_it_after_the_context_changed() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    let a = ctx("1.0", NetworkType::Wifi);
    let b = ctx("1.0", NetworkType::Cellular);
    db.apply(
        &[
            launch("1.0"),
            event(1),
            Entry::Context { context: b.clone() },
            event(2),
            Entry::Context { context: a.clone() },
            event(3),
        ],
        (1, 10),
    )
    .unwrap();
    // Sent after the app updated: each batch keeps the context of its events.
    db.apply(&[launch("1.1")], (1, 20)).unwrap();
    let batches = drain(&mut db);
    let (sa, sb) = (sent(&db, a), sent(&db, b));
    assert_eq!(
        batches,
        [
            (
                sa.clone(),
                vec![EventBody::AppInstalled, opened(), custom(1)]
            ),
            (sb, vec![custom(2)]),
            (sa, vec![custom(3)]),
            (
                sent(&db, ctx("1.1", NetworkType::Wifi)),
                vec![
                    EventBody::AppUpdated {
                        previous_version: Some("1.0".into()),
                        previous_build: Some("b1.0".into()),
                    },
                    opened()
                ]
            ),
        ]
    );
    // Identical contexts share a row; rows no event uses are pruned at the next change.
    db.apply(
        &[Entry::Context {
            context: ctx("1.1", NetworkType::None),
        }],
        (1, 30),
    )
    .unwrap();
    let rows: i64 = db
        .conn
        .query_row("SELECT count(*) FROM contexts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "only the current context is left");
}

#[test]
fn the_contexts_table_is_bounded_and_its_overflow_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    let n = MAX_CONTEXTS + 10;
    let mut entries = Vec::new();
    for k in 0..n {
        entries.push(Entry::Context {
            context: AppContext {
                locale: Some(format!("l-{k}")),
                ..AppContext::default()
            },
        });
        entries.push(event(k as i64));
    }
    db.apply(&entries, (1, 10)).unwrap();
    let rows: i64 = db
        .conn
        .query_row("SELECT count(*) FROM contexts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize, MAX_CONTEXTS);
    assert_eq!(db.meta().context.dropped, 10);
    let batches = drain(&mut db);
    // The oldest ten events lost their context (one batch without), the rest kept
    // theirs, each in its own batch, none mislabelled.
    assert_eq!(batches.len(), 1 + MAX_CONTEXTS);
    assert_eq!(batches[0].0, None);
    assert_eq!(batches[0].1.len(), 10);
    for (k, (c, bodies)) in batches[1..].iter().enumerate() {
        let k = k + 10;
        assert_eq!(c.as_ref().unwrap().locale, Some(format!("l-{k}")));
        assert_eq!(bodies, &[custom(k as i64)]);
    }
    // Persisted.
    drop(db);
    assert_eq!(open(dir.path()).meta().context.dropped, 10);
}

#[test]
fn the_install_id_survives_reopening_and_store_loss_and_is_replaced_by_delete_local_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path());
    let install = db.meta().context.install_id;
    db.apply(&[launch("1.0"), event(1)], (1, 10)).unwrap();
    db.advance_frontier().unwrap();
    drop(db);
    assert_eq!(open(dir.path()).meta().context.install_id, install);
    // The database is lost: the store continues from the marker — the same
    // installation, no second install, no update for the same version.
    for f in ["tern.db", "tern.db-wal", "tern.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let mut db = open(dir.path());
    assert_eq!(db.meta().context.install_id, install);
    assert!(!db.meta().context.install_pending);
    db.apply(&[launch("1.0")], (1, 20)).unwrap();
    assert_eq!(drain(&mut db)[0].1, [opened()]);
    // delete_local_data: a new installation id, the context kept under it, no install.
    db.apply(&[Entry::DeleteLocalData, event(2)], (1, 30))
        .unwrap();
    let renewed = db.meta().context.install_id;
    assert_ne!(renewed, install);
    let batches = drain(&mut db);
    assert_eq!(
        batches,
        [(sent(&db, ctx("1.0", NetworkType::Wifi)), vec![custom(2)])]
    );
    drop(db);
    assert_eq!(open(dir.path()).meta().context.install_id, renewed);
}

/// A fresh file whose first launch was not applied before the process died is still
/// an install on the next start (the mark is in the file from its creation).
#[test]
fn a_fresh_store_reopened_before_its_first_launch_still_records_the_install() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let mut db = open(dir.path());
    assert!(db.meta().context.install_pending);
    db.apply(&[launch("1.0")], (1, 10)).unwrap();
    assert_eq!(drain(&mut db)[0].1, [EventBody::AppInstalled, opened()]);
}
