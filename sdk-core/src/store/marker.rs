//! The reset marker: a small file beside the journal recording how far the device
//! store got, so that a store which vanishes (deleted, truncated, corrupt, rolled back
//! to an older copy) is never mistaken for one that has applied nothing yet.
//!
//! # Why
//!
//! The journal keeps records until their segment is rotated; the store's checkpoint
//! says which of them were applied. The checkpoint, the device id and the sequence
//! numbers all live in the store, so without this file a lost store looks brand new:
//! the journal would be applied again, and every event of it sent a second time under
//! a new device id, where the backend cannot dedupe it.
//!
//! # What it holds
//!
//! `journal.marker` (not `tern.db*`, so tools that delete a database with its side
//! files leave it alone) is the magic `TERNM001` followed by one record framed like a
//! journal record (`len | crc32 | payload`), the payload a MessagePack map
//! ([`Marker`]; unknown keys are ignored, missing ones take defaults, so newer and
//! older SDKs read each other's markers):
//!
//! * a **frontier** — a consistent snapshot of the store at one moment: device id,
//!   next sequence number, journal checkpoint, user and opt-out state;
//! * `unknown` — how many events the store held at or below the frontier that were not
//!   yet acknowledged, i.e. whose delivery nobody could vouch for if the store vanished;
//! * the cumulative health counters, so they continue across a reset.
//!
//! It is replaced atomically (written to `journal.marker.tmp`, fsynced, renamed over,
//! directory fsynced) by the store ([`crate::store::Db`]), always on the thread that
//! holds the store, never on a recording thread.
//!
//! # The two rules the store keeps
//!
//! * **M1 — nothing leaves beyond the frontier.** Before the store hands the uploader
//!   a batch holding an event newer than the frontier (or of another identity), it moves
//!   the frontier to its current state and writes the marker. So every event that may
//!   have reached the backend has a journal position at or below the frontier and a
//!   sequence number below `next_seq`.
//! * **M2 — nothing beyond the frontier leaves the disk.** Before a journal segment is
//!   deleted (rotation, recovery at start, clean shutdown), the frontier is moved past
//!   it. So every record after the frontier is still in the journal.
//!
//! After a `delete_local_data` the frontier moves at once, so the marker never keeps the
//! deleted user id or device id. Otherwise the frontier stays put between hand-outs: the
//! marker lags the store, and that lag is the safe side — records between the frontier
//! and the store's real checkpoint were applied but (M1) never sent, so they may be
//! applied again.
//!
//! # Opening a store ([`reconcile`])
//!
//! * **No marker** (first start, or a journal written by an SDK version without
//!   markers): the store governs. The one case a reset can still resend
//!   in: an older SDK's journal whose store vanishes before this version has started
//!   once with it intact.
//! * **Store at or past the frontier** ([`Reconcile::Keep`]): the store is the one the
//!   marker describes, or newer; it governs.
//! * **Store behind the frontier, same device id** ([`Reconcile::RolledBack`]: an older
//!   copy restored, a lost `-wal`): the store keeps its queued events (resent under their
//!   old `(device_id, seq)`, which the backend dedupes); its checkpoint moves to the
//!   frontier and its sequence numbers continue above the frontier's.
//! * **Store behind the frontier, another device id** ([`Reconcile::Replaced`]: a new
//!   empty file after a deletion or truncation, a corrupt file replaced, or a copy of
//!   another identity): the store takes the frontier's identity — device id, sequence
//!   numbers, user, opt-out — and checkpoint; anything it held is discarded.
//!
//! In both reset cases `store_resets` grows by one and the marker's `unknown` (plus
//! discarded events) is added to `reset_unknown`. Records at or below the frontier are
//! **not** applied again (their events may have been delivered: not resent, counted as
//! unknown); records after it are (never sent: M1), and get the sequence numbers the
//! lost store would have given them, under the same device id. Segments deleted before
//! the reset held only records at or below the frontier (M2); events the lost store held
//! from them are in `unknown`.
//!
//! A crash between a store commit and the next marker write leaves the marker behind:
//! the records in between are applied again after a reset (safe, by M1). A crash
//! between a frontier write and the hand-out it preceded makes the marker ahead of what
//! was sent: the events in between count as unknown rather than being resent — the safe
//! side too. `unknown` written after acknowledgements may be stale (it is refreshed when
//! the queue empties and every few seconds): a stale value over-counts.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use tern_protocol::{AnonymousId, DeviceId, SdkHealth, UserId};

use crate::store::journal::{encode_record, RECORD_HEADER};

/// File name of the marker inside the data directory.
pub const MARKER_FILE: &str = "journal.marker";
/// The temporary file the marker is written to before it is renamed over.
pub const MARKER_TMP: &str = "journal.marker.tmp";
/// Magic bytes at the start of the marker file.
pub const MAGIC: &[u8; 8] = b"TERNM001";
/// Largest marker payload read; anything larger is damage.
const MAX_PAYLOAD: usize = 64 * 1024;

/// What the store had applied and handed out at its frontier (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Marker {
    /// The device id at the frontier.
    pub device_id: DeviceId,
    /// The next sequence number at the frontier: every event handed out has a lower one.
    pub next_seq: u64,
    /// Journal segment of the frontier's checkpoint.
    pub segment: u64,
    /// Offset in that segment.
    pub offset: u64,
    /// The user at the frontier.
    pub user: Option<UserId>,
    /// The opt-out state at the frontier.
    pub opted_out: bool,
    /// Events held at or below the frontier and not yet acknowledged when written.
    pub unknown: u64,
    /// Cumulative health counters when written (queue gauges zero).
    pub health: SdkHealth,
    /// The anonymous id at the frontier (absent in markers of older SDKs).
    pub anonymous_id: Option<AnonymousId>,
    /// The consent states set at the frontier, as text (see [`crate::consent`]);
    /// absent when none was set, and in markers of older SDKs.
    pub consent: Option<String>,
}

tern_protocol::wire_struct!(Marker {
    device_id: req,
    next_seq: req,
    segment: req,
    offset: req,
    user: omit,
    opted_out: def,
    unknown: def,
    health: def,
    anonymous_id: omit,
    consent: omit,
});

/// What reading the marker found.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    /// No marker file.
    Absent,
    /// A marker file that does not verify (short, bad magic, checksum, encoding).
    Damaged(String),
    /// A valid marker.
    Valid(Marker),
}

impl Found {
    /// The marker, if valid.
    pub fn marker(&self) -> Option<&Marker> {
        match self {
            Found::Valid(m) => Some(m),
            _ => None,
        }
    }
}

impl Marker {
    /// The frontier's journal checkpoint `(segment, offset)`.
    pub fn checkpoint(&self) -> (u64, u64) {
        (self.segment, self.offset)
    }

    /// The file's bytes: magic, then one framed record.
    pub fn to_bytes(&self) -> Vec<u8> {
        let payload = tern_protocol::wire::to_vec(self);
        let mut out = MAGIC.to_vec();
        encode_record(&mut out, &payload);
        out
    }

    /// Reads the file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Marker, String> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("bad magic".to_owned())?;
        let header = rest.get(..RECORD_HEADER).ok_or("short header".to_owned())?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_PAYLOAD {
            return Err(format!("length {len} too large"));
        }
        let payload = rest
            .get(RECORD_HEADER..RECORD_HEADER + len)
            .ok_or("short payload".to_owned())?;
        if crc32fast::hash(payload) != crc {
            return Err("checksum mismatch".into());
        }
        tern_protocol::wire::from_slice(payload).map_err(|e| e.to_string())
    }

    /// Reads `dir/journal.marker`.
    pub fn read(dir: &Path) -> std::io::Result<Found> {
        match fs::read(dir.join(MARKER_FILE)) {
            Ok(bytes) => Ok(match Marker::from_bytes(&bytes) {
                Ok(m) => Found::Valid(m),
                Err(e) => Found::Damaged(e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Found::Absent),
            Err(e) => Err(e),
        }
    }

    /// Replaces `dir/journal.marker` atomically and durably: temporary file, fsync,
    /// rename, fsync of the directory.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(MARKER_TMP);
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(&self.to_bytes())?;
        file.sync_data()?;
        drop(file);
        fs::rename(&tmp, dir.join(MARKER_FILE))?;
        File::open(dir)?.sync_all()
    }
}

/// The store as it was found when it opened: the input of [`reconcile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreState {
    /// Its device id.
    pub device_id: DeviceId,
    /// Its journal checkpoint.
    pub checkpoint: (u64, u64),
}

/// How a store relates to the marker (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconcile {
    /// No marker, or the store is at or past the frontier: the store governs.
    Keep,
    /// Behind the frontier with the same device id: an older copy of this store.
    RolledBack,
    /// Behind the frontier with another device id: not the store the marker describes.
    Replaced,
}

/// Decides how the store found on open relates to the marker.
pub fn reconcile(store: &StoreState, marker: Option<&Marker>) -> Reconcile {
    match marker {
        None => Reconcile::Keep,
        Some(m) if store.checkpoint >= m.checkpoint() => Reconcile::Keep,
        Some(m) if store.device_id == m.device_id => Reconcile::RolledBack,
        Some(_) => Reconcile::Replaced,
    }
}

/// Field-wise maximum of two sets of cumulative counters (queue gauges zero).
pub fn max_health(a: &SdkHealth, b: &SdkHealth) -> SdkHealth {
    SdkHealth {
        dropped_overflow: a.dropped_overflow.max(b.dropped_overflow),
        dropped_invalid: a.dropped_invalid.max(b.dropped_invalid),
        dropped_rejected: a.dropped_rejected.max(b.dropped_rejected),
        retries: a.retries.max(b.retries),
        store_resets: a.store_resets.max(b.store_resets),
        dropped_corrupt: a.dropped_corrupt.max(b.dropped_corrupt),
        dropped_disk_full: a.dropped_disk_full.max(b.dropped_disk_full),
        reset_unknown: a.reset_unknown.max(b.reset_unknown),
        ..SdkHealth::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Marker {
        Marker {
            device_id: DeviceId::random(),
            next_seq: 42,
            segment: 3,
            offset: 1_000,
            user: Some(UserId::new("u-1")),
            opted_out: false,
            unknown: 7,
            health: SdkHealth {
                retries: 2,
                store_resets: 1,
                ..SdkHealth::default()
            },
            anonymous_id: Some(AnonymousId::random()),
            consent: Some("analytics=denied".into()),
        }
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Marker::read(dir.path()).unwrap(), Found::Absent);
        let m = sample();
        m.write(dir.path()).unwrap();
        assert_eq!(Marker::read(dir.path()).unwrap(), Found::Valid(m.clone()));
        assert!(!dir.path().join(MARKER_TMP).exists());
        let mut m2 = m.clone();
        m2.user = None;
        m2.next_seq = 43;
        m2.write(dir.path()).unwrap();
        assert_eq!(Marker::read(dir.path()).unwrap(), Found::Valid(m2));
    }

    #[test]
    fn damage_of_any_byte_is_detected() {
        let bytes = sample().to_bytes();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x41;
            assert!(Marker::from_bytes(&bad).is_err(), "byte {i}");
        }
        for cut in 0..bytes.len() {
            assert!(Marker::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MARKER_FILE), b"TERNM001\xff\xff").unwrap();
        assert!(matches!(
            Marker::read(dir.path()).unwrap(),
            Found::Damaged(_)
        ));
    }

    #[test]
    fn newer_and_older_markers_read() {
        // A newer SDK's marker with a field this version does not know.
        let m = sample();
        let mut w = tern_protocol::wire::Writer::new();
        w.map(5);
        w.field("device_id", &m.device_id);
        w.field("next_seq", &m.next_seq);
        w.field("segment", &m.segment);
        w.field("offset", &m.offset);
        w.field("epoch", &9u32);
        let mut bytes = MAGIC.to_vec();
        encode_record(&mut bytes, &w.into_bytes());
        let read = Marker::from_bytes(&bytes).unwrap();
        assert_eq!(
            (read.device_id, read.next_seq, read.checkpoint()),
            (m.device_id, 42, (3, 1_000))
        );
        assert_eq!((read.user, read.opted_out, read.unknown), (None, false, 0));
        // Required fields stay required.
        let mut w = tern_protocol::wire::Writer::new();
        w.map(1);
        w.field("next_seq", &1u64);
        let mut bytes = MAGIC.to_vec();
        encode_record(&mut bytes, &w.into_bytes());
        assert!(Marker::from_bytes(&bytes).is_err());
    }

    #[test]
    fn reconcile_cases() {
        let m = sample();
        let at = |device_id, checkpoint| StoreState {
            device_id,
            checkpoint,
        };
        let other = DeviceId::random();
        assert_eq!(reconcile(&at(other, (0, 0)), None), Reconcile::Keep);
        // The store is the marker's, at or past its frontier (the marker lags).
        assert_eq!(
            reconcile(&at(m.device_id, (3, 1_000)), Some(&m)),
            Reconcile::Keep
        );
        assert_eq!(
            reconcile(&at(m.device_id, (4, 8)), Some(&m)),
            Reconcile::Keep
        );
        // Past the frontier under another id: a `delete_local_data` the marker has not
        // caught up with.
        assert_eq!(reconcile(&at(other, (3, 1_001)), Some(&m)), Reconcile::Keep);
        // Behind it.
        assert_eq!(
            reconcile(&at(m.device_id, (3, 999)), Some(&m)),
            Reconcile::RolledBack
        );
        assert_eq!(
            reconcile(&at(m.device_id, (2, 5_000)), Some(&m)),
            Reconcile::RolledBack
        );
        assert_eq!(reconcile(&at(other, (0, 0)), Some(&m)), Reconcile::Replaced);
        assert_eq!(reconcile(&at(other, (2, 9)), Some(&m)), Reconcile::Replaced);
    }
}
