//! Store resets against the journal marker (see `crate::store::marker`): the store is driven
//! like the background thread drives it — journal records applied with checkpoints,
//! segments rotated and retired, batches handed out and acknowledged — and "killed"
//! by taking an image of its files while it is open (what a SIGKILL leaves), then
//! damaged the way a device loses a store: `tern.db` deleted, truncated, overwritten,
//! its `-wal` deleted, an older copy restored. A model backend records what was
//! delivered and checks that no `(device_id, seq)` ever names two events and no event
//! is delivered under two keys (which dedupe could not catch), and the unit tests and
//! the property test check that what is neither delivered nor queued is counted in
//! `reset_unknown`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use proptest::prelude::*;
use tern_protocol::{AppId, DeviceId, EventBody, Limits, SdkInfo, UserId, Value};

use super::*;
use crate::store::entry::Entry;
use crate::store::marker::{Found, Marker, Reconcile, MARKER_FILE};
use crate::store::StoreLimits;

/// Where the first segment's records start (after the magic).
const START: u64 = 8;

/// What happens to the store's files between the kill and the next start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    /// Nothing: a plain crash.
    None,
    /// `tern.db`, `-wal` and `-shm` deleted.
    DeleteAll,
    /// `tern.db` deleted, its `-wal` left behind.
    DeleteDb,
    /// `tern.db` truncated to 0 bytes (the `-wal` left).
    Truncate,
    /// The `-wal` deleted: the store rolls back to its last SQLite checkpoint.
    DeleteWal,
    /// `tern.db` overwritten with garbage (the corrupt-file path).
    Corrupt,
}

/// A store with a model journal and a model backend.
struct Rig {
    dir: tempfile::TempDir,
    db: Option<Db>,
    /// Records still on disk: `(position after the record, entry)`.
    journal: Vec<((u64, u64), Entry)>,
    /// The segment appends go to, and its length.
    segment: u64,
    offset: u64,
    /// Delivered at the backend: `(device, seq)` → event number, and back.
    by_key: HashMap<(DeviceId, u64), i64>,
    by_number: HashMap<i64, (DeviceId, u64)>,
    /// Every event number recorded.
    recorded: BTreeSet<i64>,
    next_number: i64,
}

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

fn number(body: &EventBody) -> i64 {
    match body {
        EventBody::Custom { props, .. } => match props.get("n") {
            Some(Value::Int(n)) => *n,
            _ => panic!("unnumbered event"),
        },
        _ => panic!("unexpected body"),
    }
}

fn open(dir: &Path) -> (Db, OpenReport) {
    Db::open(dir, StoreLimits::default(), Limits::default()).expect("open")
}

fn read_marker(dir: &Path) -> Marker {
    match Marker::read(dir).unwrap() {
        Found::Valid(m) => m,
        other => panic!("marker: {other:?}"),
    }
}

/// How a handed-out batch fares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Delivered and acknowledged.
    Acked,
    /// Delivered, the acknowledgement lost: the batch stays (sent again later).
    AckLost,
    /// Never reached the backend.
    Failed,
    /// No answer yet (delivered or not): the batch stays in flight.
    InFlight { delivered: bool },
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut rig = Rig {
            db: None,
            journal: Vec::new(),
            segment: 1,
            offset: START,
            by_key: HashMap::new(),
            by_number: HashMap::new(),
            recorded: BTreeSet::new(),
            next_number: 1,
            dir,
        };
        rig.start(Loss::None);
        rig
    }

    fn db(&mut self) -> &mut Db {
        self.db.as_mut().expect("open")
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn append(&mut self, entry: Entry) {
        self.offset += 10;
        self.journal.push(((self.segment, self.offset), entry));
    }

    /// `track()`: `n` events into the journal.
    fn record(&mut self, n: usize) {
        for _ in 0..n {
            let k = self.next_number;
            self.next_number += 1;
            self.recorded.insert(k);
            self.append(event(k));
        }
    }

    /// The background thread: applies what is after the checkpoint, in chunks.
    fn apply(&mut self) {
        let ck = self.db().meta().checkpoint;
        let pending: Vec<_> = self
            .journal
            .iter()
            .filter(|(pos, _)| *pos > ck)
            .cloned()
            .collect();
        for chunk in pending.chunks(7) {
            let entries: Vec<Entry> = chunk.iter().map(|(_, e)| e.clone()).collect();
            let last = chunk.last().unwrap().0;
            self.db().apply(&entries, last).unwrap();
        }
    }

    /// Rotation: everything applied, a new segment, the old one retired.
    fn rotate(&mut self) {
        self.apply();
        let old = self.segment;
        self.segment += 1;
        self.offset = START;
        let at = (self.segment, self.offset);
        self.db().apply(&[], at).unwrap();
        self.db().before_removing_segment(old).unwrap();
        self.journal.retain(|(pos, _)| pos.0 > old);
    }

    /// The uploader: forms batches, hands out one, and delivers it as `outcome` says.
    /// Returns false when there was nothing to send.
    fn send(&mut self, outcome: Outcome) -> bool {
        let db = self.db.as_mut().unwrap();
        db.form_batches(5, 1 << 20, true).unwrap();
        let Some(out) = db
            .next_batch(&AppId::new("demo"), &SdkInfo::default())
            .unwrap()
        else {
            return false;
        };
        let b = out.batch;
        if matches!(
            outcome,
            Outcome::Acked | Outcome::AckLost | Outcome::InFlight { delivered: true }
        ) {
            for e in &b.events {
                let n = number(&e.body);
                let key = (b.device_id, e.seq);
                if let Some(prev) = self.by_key.insert(key, n) {
                    assert_eq!(
                        prev, n,
                        "(device, seq {}) reused for another event: {prev} then {n}",
                        e.seq
                    );
                }
                if let Some(prev) = self.by_number.insert(n, key) {
                    assert_eq!(
                        prev, key,
                        "event {n} delivered twice under different keys: dedupe cannot see it"
                    );
                }
            }
        }
        let db = self.db.as_mut().unwrap();
        match outcome {
            Outcome::Acked => {
                db.ack(b.batch_id).unwrap();
            }
            Outcome::AckLost | Outcome::Failed => db.retry(b.batch_id).unwrap(),
            Outcome::InFlight { .. } => {}
        }
        true
    }

    /// Sends and acknowledges until nothing is left (what was in flight included).
    fn drain(&mut self) {
        self.db().release_in_flight();
        while self.send(Outcome::Acked) {}
    }

    fn file(&self, suffix: &str) -> std::path::PathBuf {
        self.dir().join(format!("{DB_FILE}{suffix}"))
    }

    /// SIGKILL: the files as they are while the store is open; then `loss`; then a
    /// start like the background thread's (new segment, recovery, old segments
    /// retired behind the frontier).
    fn kill(&mut self, loss: Loss) -> OpenReport {
        let db = std::fs::read(self.file("")).unwrap();
        let wal = std::fs::read(self.file("-wal")).ok();
        self.db = None;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(self.file(suffix));
        }
        let write_wal = |rig: &Rig| {
            if let Some(w) = &wal {
                std::fs::write(rig.file("-wal"), w).unwrap();
            }
        };
        match loss {
            Loss::None => {
                std::fs::write(self.file(""), &db).unwrap();
                write_wal(self);
            }
            Loss::DeleteAll => {}
            Loss::DeleteDb => write_wal(self),
            Loss::Truncate => {
                std::fs::write(self.file(""), b"").unwrap();
                write_wal(self);
            }
            Loss::DeleteWal => std::fs::write(self.file(""), &db).unwrap(),
            Loss::Corrupt => {
                let mut bad = db.clone();
                bad.resize(bad.len().max(16), 0);
                bad[..16].copy_from_slice(b"garbage garbage!");
                std::fs::write(self.file(""), bad).unwrap();
            }
        }
        self.start(loss)
    }

    fn start(&mut self, _loss: Loss) -> OpenReport {
        // Each start appends to a fresh segment above every earlier one.
        let old_last = self.segment;
        self.segment += 1;
        self.offset = START;
        let (db, report) = open(self.dir());
        self.db = Some(db);
        let ck = self.db().meta().checkpoint;
        if self.segment <= ck.0 {
            self.segment = ck.0 + 1;
        }
        // Recovery: what is after the checkpoint.
        self.apply();
        let at = (self.segment, self.offset);
        self.db().apply(&[], at).unwrap();
        self.db().before_removing_segment(old_last).unwrap();
        let cur = self.segment;
        self.journal.retain(|(pos, _)| pos.0 >= cur);
        report
    }

    /// Forces SQLite to move the WAL into the database file (as its auto-checkpoint
    /// does every 1,000 pages), so a later lost `-wal` rolls back to this point.
    fn sqlite_checkpoint(&mut self) {
        self.db()
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }

    fn health(&mut self) -> SdkHealth {
        self.db().meta().health
    }

    fn delivered(&self) -> usize {
        self.by_number.len()
    }

    fn queued_numbers(&mut self) -> BTreeSet<i64> {
        let mut st = self
            .db()
            .conn
            .prepare("SELECT payload FROM events")
            .unwrap();
        let rows: Vec<Vec<u8>> = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        rows.iter()
            .map(|p| number(&tern_protocol::decode_payload::<Event>(p).unwrap().body))
            .collect()
    }

    /// Everything recorded is delivered, still queued, or counted as unknown.
    fn assert_accounted(&mut self) {
        let queued = self.queued_numbers();
        let lost: Vec<i64> = self
            .recorded
            .iter()
            .filter(|n| !self.by_number.contains_key(n) && !queued.contains(n))
            .copied()
            .collect();
        let h = self.health();
        assert!(
            lost.len() as u64 <= h.reset_unknown,
            "{} events gone uncounted (reset_unknown {}): {:?}",
            lost.len(),
            h.reset_unknown,
            &lost[..lost.len().min(10)]
        );
    }
}

#[test]
fn a_deleted_store_continues_the_identity_and_resends_nothing() {
    let mut rig = Rig::new();
    let device = rig.db().meta().device_id;
    rig.record(12);
    rig.apply();
    rig.drain();
    assert_eq!(rig.delivered(), 12);
    let report = rig.kill(Loss::DeleteAll);
    assert_eq!(report.reset_by_marker, Some(Reconcile::Replaced));
    assert_eq!(report.reset_unknown, 0, "everything was acknowledged");
    let meta = rig.db().meta().clone();
    assert_eq!(meta.device_id, device);
    assert_eq!(meta.next_seq, 13);
    assert_eq!(
        (meta.health.store_resets, meta.health.reset_unknown),
        (1, 0)
    );
    // The journal still held all twelve; none is queued again.
    assert_eq!(rig.db().queued(), (0, 0));
    rig.record(3);
    rig.apply();
    rig.drain();
    assert_eq!(rig.delivered(), 15);
    assert_eq!(rig.by_key.keys().map(|k| k.1).max(), Some(15));
    rig.assert_accounted();
}

#[test]
fn a_crash_between_commit_and_marker_write_applies_again_only_what_never_left() {
    let mut rig = Rig::new();
    rig.record(5);
    rig.apply();
    rig.drain();
    // Applied (seqs 6..=10 in the lost store) but never handed out: the marker still
    // has its frontier at seq 6.
    rig.record(5);
    rig.apply();
    assert_eq!(rig.db().meta().next_seq, 11);
    assert_eq!(read_marker(rig.dir()).next_seq, 6);
    let report = rig.kill(Loss::DeleteAll);
    assert_eq!(report.reset_unknown, 0);
    // Applied again, with the numbers the lost store had given them.
    assert_eq!(rig.db().meta().next_seq, 11);
    assert_eq!(rig.db().queued().0, 5);
    rig.drain();
    assert_eq!(rig.delivered(), 10);
    assert_eq!(rig.health().reset_unknown, 0);
    rig.assert_accounted();
}

#[test]
fn events_handed_out_but_unacknowledged_are_counted_never_resent() {
    for delivered in [true, false] {
        let outcome = Outcome::InFlight { delivered };
        let mut rig = Rig::new();
        rig.record(10);
        rig.apply();
        // Two batches of five handed out, no answer heard.
        assert!(rig.send(outcome));
        assert!(rig.send(outcome));
        let report = rig.kill(Loss::DeleteAll);
        assert_eq!(report.reset_unknown, 10, "{outcome:?}");
        assert_eq!(rig.db().queued().0, 0, "{outcome:?}: not applied again");
        rig.record(1);
        rig.apply();
        rig.drain();
        let h = rig.health();
        assert_eq!((h.store_resets, h.reset_unknown), (1, 10));
        // The new event continues above every number handed out.
        let device = rig.db().meta().device_id;
        let expected = if delivered { 11 } else { 1 };
        assert_eq!(rig.delivered(), expected, "{outcome:?}");
        assert!(rig.by_key.contains_key(&(device, 11)));
        rig.assert_accounted();
    }
}

#[test]
fn deleted_truncated_and_corrupt_stores_count_one_reset_each() {
    for loss in [
        Loss::DeleteAll,
        Loss::DeleteDb,
        Loss::Truncate,
        Loss::Corrupt,
    ] {
        let mut rig = Rig::new();
        let device = rig.db().meta().device_id;
        rig.record(4);
        rig.apply();
        rig.send(Outcome::Acked);
        rig.record(2);
        rig.apply();
        rig.send(Outcome::Failed); // seqs 5, 6 handed out, fate unknown
        let report = rig.kill(loss);
        assert_eq!(
            report.reset_by_marker,
            Some(Reconcile::Replaced),
            "{loss:?}"
        );
        assert_eq!(
            report.moved_aside.is_some(),
            loss == Loss::Corrupt,
            "{loss:?}"
        );
        let m = rig.db().meta().clone();
        assert_eq!(
            (
                m.device_id,
                m.next_seq,
                m.health.store_resets,
                m.health.reset_unknown
            ),
            (device, 7, 1, 2),
            "{loss:?}"
        );
        // A second reset of the same device counts on from the first.
        rig.record(1);
        rig.apply();
        rig.drain();
        rig.kill(loss);
        assert_eq!(rig.health().store_resets, 2, "{loss:?}");
        rig.assert_accounted();
    }
}

#[test]
fn a_lost_wal_rolls_back_keeping_the_identity_and_queued_events() {
    let mut rig = Rig::new();
    let device = rig.db().meta().device_id;
    rig.record(6);
    rig.apply();
    rig.sqlite_checkpoint(); // the database file has the six events queued
    rig.drain(); // acknowledged: only the WAL knows
    rig.record(3);
    rig.apply();
    rig.send(Outcome::Failed); // seqs 7..=9 handed out, unknown
    let report = rig.kill(Loss::DeleteWal);
    assert_eq!(report.reset_by_marker, Some(Reconcile::RolledBack));
    assert_eq!(report.reset_unknown, 3);
    let m = rig.db().meta().clone();
    assert_eq!((m.device_id, m.next_seq), (device, 10));
    assert_eq!(m.health.store_resets, 1);
    // The rolled-back copy still queues the six delivered events: sent again under
    // the same (device, seq), which the backend dedupes.
    assert_eq!(rig.db().queued().0, 6);
    rig.record(1);
    rig.apply();
    rig.drain();
    assert_eq!(rig.delivered(), 7);
    assert!(rig.by_key.contains_key(&(device, 10)));
    rig.assert_accounted();
}

#[test]
fn an_older_copy_restored_is_a_rollback() {
    let mut rig = Rig::new();
    rig.record(3);
    rig.apply();
    rig.sqlite_checkpoint();
    let copy = std::fs::read(rig.file("")).unwrap();
    rig.drain();
    rig.record(3);
    rig.apply();
    rig.drain();
    rig.db = None;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(rig.file(suffix));
    }
    std::fs::write(rig.file(""), copy).unwrap();
    let report = rig.start(Loss::None);
    assert_eq!(report.reset_by_marker, Some(Reconcile::RolledBack));
    assert_eq!(report.reset_unknown, 0);
    assert_eq!(rig.db().meta().next_seq, 7);
    rig.drain(); // the three old ones again: duplicates the backend drops
    assert_eq!(rig.delivered(), 6);
    rig.assert_accounted();
}

#[test]
fn segments_are_deleted_only_behind_the_frontier() {
    let mut rig = Rig::new();
    rig.record(4);
    rig.apply();
    assert_eq!(read_marker(rig.dir()).next_seq, 1);
    // Rotation retires the segment holding the four: the frontier moves past them
    // first, so losing the store now counts them instead of losing them silently.
    rig.rotate();
    let m = read_marker(rig.dir());
    assert_eq!((m.next_seq, m.unknown), (5, 4));
    assert_eq!(m.checkpoint(), (rig.segment, START));
    let report = rig.kill(Loss::DeleteAll);
    assert_eq!(report.reset_unknown, 4);
    rig.assert_accounted();
}

#[test]
fn the_marker_follows_acknowledgements_and_deletion() {
    let mut rig = Rig::new();
    rig.append(Entry::Identify {
        user: Some(UserId::new("u-7")),
    });
    rig.record(3);
    rig.apply();
    assert!(rig.send(Outcome::Failed));
    let m = read_marker(rig.dir());
    assert_eq!((m.next_seq, m.unknown), (4, 3));
    assert_eq!(m.user, Some(UserId::new("u-7")));
    rig.drain();
    assert_eq!(read_marker(rig.dir()).unknown, 0, "the queue emptied");
    let old = rig.db().meta().device_id;
    rig.append(Entry::DeleteLocalData);
    rig.apply();
    let m = read_marker(rig.dir());
    let new = rig.db().meta().device_id;
    assert_ne!(new, old);
    assert_eq!((m.device_id, m.user.clone(), m.next_seq), (new, None, 1));
    let bytes = std::fs::read(rig.dir().join(MARKER_FILE)).unwrap();
    assert!(!bytes.windows(3).any(|w| w == b"u-7"), "no deleted user id");
}

#[test]
fn the_user_and_opt_out_continue_after_a_reset() {
    let mut rig = Rig::new();
    rig.append(Entry::Identify {
        user: Some(UserId::new("u-1")),
    });
    rig.record(2);
    rig.apply();
    rig.drain();
    rig.append(Entry::OptOut { opted_out: true });
    rig.rotate(); // frontier past the opt-out
    rig.kill(Loss::DeleteAll);
    let m = rig.db().meta().clone();
    assert_eq!((m.user, m.opted_out), (Some(UserId::new("u-1")), true));
}

#[test]
fn without_a_marker_the_store_governs() {
    let mut rig = Rig::new();
    rig.record(3);
    rig.apply();
    rig.drain();
    std::fs::remove_file(rig.dir().join(MARKER_FILE)).unwrap();
    let report = rig.kill(Loss::None);
    assert_eq!(report.reset_by_marker, None);
    assert_eq!(rig.health().store_resets, 0);
    assert!(
        rig.dir().join(MARKER_FILE).exists(),
        "written again at open"
    );
    // A damaged marker is ignored the same way.
    std::fs::write(rig.dir().join(MARKER_FILE), b"TERNM001 not a marker").unwrap();
    let report = rig.kill(Loss::None);
    assert_eq!(report.reset_by_marker, None);
    assert_eq!(read_marker(rig.dir()).next_seq, 4);
    // An SDK version without markers, whose store is then lost: the journal is
    // applied again (the one case a reset can still resend in).
    rig.record(2);
    rig.apply();
    std::fs::remove_file(rig.dir().join(MARKER_FILE)).unwrap();
    let report = rig.kill(Loss::DeleteAll);
    assert_eq!(report.reset_by_marker, None);
    assert_eq!(rig.db().queued().0, 2);
}

#[test]
fn a_plain_crash_is_not_a_reset() {
    let mut rig = Rig::new();
    for _ in 0..5 {
        rig.record(7);
        rig.apply();
        rig.send(Outcome::Acked);
        rig.send(Outcome::AckLost);
        let report = rig.kill(Loss::None);
        assert_eq!(report.reset_by_marker, None);
    }
    rig.drain();
    assert_eq!(rig.health().store_resets, 0);
    assert_eq!(rig.delivered(), 35);
}

#[derive(Clone, Debug)]
enum Op {
    Record(usize),
    Apply,
    Send(Outcome),
    Rotate,
    Checkpoint,
    Kill(Loss),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..12).prop_map(Op::Record),
        3 => Just(Op::Apply),
        2 => Just(Op::Send(Outcome::Acked)),
        1 => Just(Op::Send(Outcome::AckLost)),
        1 => Just(Op::Send(Outcome::Failed)),
        1 => any::<bool>().prop_map(|delivered| Op::Send(Outcome::InFlight { delivered })),
        1 => Just(Op::Rotate),
        1 => Just(Op::Checkpoint),
        1 => prop_oneof![
            Just(Loss::None),
            Just(Loss::DeleteAll),
            Just(Loss::DeleteDb),
            Just(Loss::Truncate),
            Just(Loss::DeleteWal),
            Just(Loss::Corrupt),
        ]
        .prop_map(Op::Kill),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any interleaving of recording, applying, sending (acknowledged or not),
    /// rotation, SQLite checkpoints and kills with any kind of store loss (and the
    /// cached backlog always equal to a fresh read): no
    /// `(device_id, seq)` names two events, no event reaches the backend under two
    /// keys, and every recorded event ends delivered, queued, or counted unknown.
    #[test]
    fn resets_never_resend_or_reuse_and_count_what_they_lose(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let mut rig = Rig::new();
        for op in ops {
            match op {
                Op::Record(n) => rig.record(n),
                Op::Apply => rig.apply(),
                Op::Send(outcome) => {
                    rig.send(outcome);
                }
                Op::Rotate => rig.rotate(),
                Op::Checkpoint => rig.sqlite_checkpoint(),
                Op::Kill(loss) => {
                    rig.kill(loss);
                }
            }
            // The cached backlog is what a fresh read gives.
            prop_assert_eq!(rig.db().backlog().unwrap(), rig.db().read_backlog().unwrap());
        }
        rig.apply();
        rig.drain();
        prop_assert_eq!(rig.db().queued().0, 0);
        rig.assert_accounted();
    }
}

#[test]
fn an_open_store_holds_no_shared_memory_file() {
    // One descriptor fewer per store (issue 19: ten thousand stores in one process):
    // the WAL index stays in the connection's memory. The data still goes through the
    // WAL and is all there after a reopen.
    let mut rig = Rig::new();
    rig.record(5);
    rig.apply();
    let dir = rig.dir.path().to_owned();
    assert!(
        dir.join("tern.db-wal").exists(),
        "writes go through the WAL"
    );
    assert!(!dir.join("tern.db-shm").exists(), "no -shm file while open");
    rig.drain();
    assert_eq!(rig.delivered(), 5);
    rig.assert_accounted();
}
