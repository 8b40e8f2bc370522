//! The append-only journal: the crash-safe hot path of `track()`.
//!
//! `track()` encodes its entry and appends it here with one `write(2)` under a short
//! mutex. When `write` returns, the bytes are in the kernel's page cache, so they
//! survive a kill of the process at any later instant (not a power loss: the journal is
//! not fsynced on the hot path). A background thread tails the journal and moves
//! entries into SQLite; the SQLite transaction records how far it got (the
//! checkpoint), so an entry is applied exactly once even if the process dies between
//! the two.
//!
//! Layout: segment files `journal-<16 hex digits>.log`, each starting with the 8-byte
//! magic `TERNJ001`, then records `len: u32 LE | crc32(payload): u32 LE | payload`.
//! The background thread rotates to a fresh segment once the current one is large and
//! fully applied, and deletes applied segments.
//!
//! The writer never blocks on SQLite and never waits for the background thread.
//! Recording threads append concurrently under a shared (read) lock: each record is
//! one `write(2)` to a file opened with `O_APPEND`, which POSIX makes atomic with
//! respect to other appends (the offset is set to the end and the data written with no
//! intervening modification), so records never interleave and no recording thread
//! waits for another one that was descheduled. The exclusive lock is taken only to
//! open, rotate and close segments. Should a write ever be short (disk full), the
//! reader resynchronises on the next valid record instead of losing the segment's
//! rest.
//!
//! Losses are counted and reported upstream (`SdkHealth`): an append the file refused
//! ([`AppendError::Write`]: disk full, I/O error) is an event `track()` refused,
//! `dropped_disk_full`; a damaged region the reader skipped ([`ReadOut::damaged`]) or a
//! final segment damaged at its end is at least one record lost, `dropped_corrupt`. A
//! record cut short at the very end of a segment is a write that never completed (its
//! call did not return `Ok`, or returned an error already counted) and is not counted.
//!
//! Which records an earlier store had applied, should that store be lost, is recorded
//! beside the journal in `journal.marker` ([`crate::store::marker`]); segments are deleted only
//! once that marker is past them.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{Result, StoreError};

/// Magic bytes at the start of every segment.
pub const MAGIC: &[u8; 8] = b"TERNJ001";
/// Bytes before each record's payload.
pub const RECORD_HEADER: usize = 8;
/// Largest payload a record may carry; anything larger is corruption.
pub const MAX_RECORD: usize = 1024 * 1024;
/// Most bytes kept in memory while the journal is not open yet (the first
/// milliseconds after `start`); beyond that the oldest entries are dropped and counted.
pub const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;

/// The file name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("journal-{n:016x}.log")
}

/// Parses a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("journal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Lists the segment numbers in `dir`, ascending.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("listing", dir, e))?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Appends one record (header + payload) to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

enum State {
    /// Not open yet: records wait in memory (bounded).
    Pending { buf: Vec<u8>, records: Vec<usize> },
    /// Appending to a segment.
    Open { file: File, segment: u64 },
    /// Shut down or failed: appends are refused.
    Closed { reason: String },
}

/// The writer half, shared by every recording thread.
pub struct Journal {
    state: RwLock<State>,
    /// Bytes of the current segment known to be fully written (header included).
    written: AtomicU64,
    /// The current segment number (valid once open).
    segment: AtomicU64,
    /// Records dropped from the in-memory buffer because it was full.
    pending_dropped: AtomicU64,
    /// Unit tests: refuse writes as a full disk would.
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("segment", &self.segment.load(Ordering::Relaxed))
            .field("written", &self.written.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The journal is closed (shut down, or the store could not open).
    #[error("{0}")]
    Closed(String),
    /// The file refused the bytes (disk full, I/O error, short write).
    #[error("{0}")]
    Write(String),
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Written to the segment file: durable against a process kill.
    Durable,
    /// Held in memory until the journal opens (the first milliseconds after start).
    Buffered,
}

impl Journal {
    /// A journal that buffers in memory until [`Journal::open_segment`] is called.
    pub fn new() -> Self {
        Journal {
            state: RwLock::new(State::Pending {
                buf: Vec::new(),
                records: Vec::new(),
            }),
            written: AtomicU64::new(0),
            segment: AtomicU64::new(0),
            pending_dropped: AtomicU64::new(0),
            #[cfg(test)]
            fail_writes: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Unit tests: makes every append to the file fail as on a full disk (`true`), or
    /// work again (`false`).
    #[cfg(test)]
    pub(crate) fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::Relaxed);
    }

    // A panic while holding these locks cannot leave the state half-updated in a way
    // that matters (at worst a partial record, which the reader skips).
    fn lock(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn shared(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `records` (each already framed by [`encode_record`], concatenated in
    /// `bytes`) with one `write(2)`, atomically with respect to other appends.
    pub fn append(&self, bytes: &[u8]) -> std::result::Result<Appended, AppendError> {
        {
            let state = self.shared();
            match &*state {
                State::Open { file, .. } => return self.write_once(file, bytes),
                State::Closed { reason } => return Err(AppendError::Closed(reason.clone())),
                State::Pending { .. } => {}
            }
        }
        let mut state = self.lock();
        match &mut *state {
            // Opened while we switched locks.
            State::Open { file, .. } => self.write_once(file, bytes),
            State::Pending { buf, records } => {
                while !records.is_empty() && buf.len() + bytes.len() > MAX_PENDING_BYTES {
                    let first = records.remove(0);
                    buf.drain(..first);
                    self.pending_dropped.fetch_add(1, Ordering::Relaxed);
                }
                buf.extend_from_slice(bytes);
                // Entries of one append stay together: they are dropped together too.
                records.push(bytes.len());
                Ok(Appended::Buffered)
            }
            State::Closed { reason } => Err(AppendError::Closed(reason.clone())),
        }
    }

    fn write_once(
        &self,
        mut file: &File,
        bytes: &[u8],
    ) -> std::result::Result<Appended, AppendError> {
        #[cfg(test)]
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(AppendError::Write(
                "No space left on device (os error 28)".into(),
            ));
        }
        // Exactly one write call: a second call for a remainder could land after
        // another thread's record. A short write fails this append; the reader skips
        // the fragment.
        match file.write(bytes) {
            Ok(n) if n == bytes.len() => {
                self.written.fetch_add(n as u64, Ordering::AcqRel);
                Ok(Appended::Durable)
            }
            Ok(n) => {
                self.written.fetch_add(n as u64, Ordering::AcqRel);
                Err(AppendError::Write(format!(
                    "short write to the journal ({n} of {} bytes)",
                    bytes.len()
                )))
            }
            Err(e) => Err(AppendError::Write(e.to_string())),
        }
    }

    /// Creates segment `n` in `dir`, writes what was buffered, and switches appends to
    /// it. Returns the previous segment number, if one was open.
    pub fn open_segment(&self, dir: &Path, n: u64) -> Result<Option<u64>> {
        let path = dir.join(segment_name(n));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io("creating journal segment", &path, e))?;
        file.write_all(MAGIC)
            .map_err(|e| StoreError::io("writing journal segment", &path, e))?;
        let mut state = self.lock();
        let previous = match std::mem::replace(
            &mut *state,
            State::Closed {
                reason: "switching segments".into(),
            },
        ) {
            State::Pending { buf, .. } => {
                if let Err(e) = file.write_all(&buf) {
                    *state = State::Closed {
                        reason: e.to_string(),
                    };
                    return Err(StoreError::io("writing journal segment", &path, e));
                }
                self.written
                    .store((MAGIC.len() + buf.len()) as u64, Ordering::Release);
                None
            }
            State::Open { segment, .. } => {
                self.written.store(MAGIC.len() as u64, Ordering::Release);
                Some(segment)
            }
            closed @ State::Closed { .. } => {
                *state = closed;
                return Err(StoreError::Closed);
            }
        };
        self.segment.store(n, Ordering::Release);
        *state = State::Open { file, segment: n };
        Ok(previous)
    }

    /// Renames the open segment to number `n` (keeping the file open and its
    /// contents): used when the store's checkpoint shows that numbers up to `n - 1`
    /// were already used by earlier runs whose files are gone.
    pub fn renumber(&self, dir: &Path, n: u64) -> Result<()> {
        let state = self.lock();
        let State::Open { segment, .. } = &*state else {
            return Err(StoreError::Closed);
        };
        let from = dir.join(segment_name(*segment));
        let to = dir.join(segment_name(n));
        fs::rename(&from, &to).map_err(|e| StoreError::io("renaming journal segment", &from, e))?;
        drop(state);
        let mut state = self.lock();
        if let State::Open { segment, .. } = &mut *state {
            *segment = n;
        }
        self.segment.store(n, Ordering::Release);
        Ok(())
    }

    /// The current segment and how many of its bytes are completely written.
    /// Stays valid after [`Journal::close`]: the last segment and its final length.
    pub fn position(&self) -> (u64, u64) {
        let _state = self.shared();
        (
            self.segment.load(Ordering::Acquire),
            self.written.load(Ordering::Acquire),
        )
    }

    /// Bytes of the current segment known to be written, without taking the lock.
    pub fn written_hint(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// True once appends go to a file.
    pub fn is_open(&self) -> bool {
        matches!(&*self.shared(), State::Open { .. })
    }

    /// Refuses further appends with `reason`.
    pub fn close(&self, reason: &str) {
        *self.lock() = State::Closed {
            reason: reason.to_owned(),
        };
    }

    /// Records dropped from the pre-open buffer.
    pub fn pending_dropped(&self) -> u64 {
        self.pending_dropped.load(Ordering::Relaxed)
    }
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

/// Why reading a segment stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Reached `upto` (or the end of the file) on a record boundary.
    End,
    /// A record is cut short at the end: it was being written (or the write was lost).
    Torn,
    /// Reading stopped on a damaged record that no later valid record follows within
    /// the bytes read (the damage may be an append still in progress: read again
    /// later).
    Corrupt,
    /// The segment does not start with the magic bytes.
    BadMagic,
}

/// Records read from one segment.
#[derive(Debug)]
pub struct ReadOut {
    /// `(offset just after the record, payload)` in order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Why reading stopped.
    pub stop: Stop,
    /// Offset of the first byte not consumed.
    pub end: u64,
    /// Bytes skipped over damaged records before valid ones (resynchronisation).
    pub skipped: u64,
    /// Damaged regions skipped (each held at least one record).
    pub damaged: u64,
}

/// Reads records of segment file `path` starting at byte `from` (0 means "from the
/// start": the magic is checked), up to byte `upto` if given, and at most
/// `max_records`.
pub fn read_segment(
    path: &PathBuf,
    from: u64,
    upto: Option<u64>,
    max_records: usize,
) -> Result<ReadOut> {
    let mut file =
        File::open(path).map_err(|e| StoreError::io("opening journal segment", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| StoreError::io("reading journal segment", path, e))?
        .len();
    let limit = upto.map_or(len, |u| u.min(len));
    let mut pos = from;
    if pos == 0 {
        let mut magic = [0u8; 8];
        if limit < 8 || file.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Ok(ReadOut {
                records: Vec::new(),
                stop: if limit < 8 {
                    Stop::Torn
                } else {
                    Stop::BadMagic
                },
                end: 0,
                skipped: 0,
                damaged: 0,
            });
        }
        pos = 8;
    } else {
        file.seek(SeekFrom::Start(pos))
            .map_err(|e| StoreError::io("reading journal segment", path, e))?;
    }
    let to_read = limit.saturating_sub(pos) as usize;
    let mut bytes = Vec::with_capacity(to_read.min(64 * 1024 * 1024));
    file.take(to_read as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| StoreError::io("reading journal segment", path, e))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut skipped = 0u64;
    let mut damaged = 0u64;
    let stop = loop {
        if records.len() >= max_records || at == bytes.len() {
            break Stop::End;
        }
        match record_at(&bytes, at) {
            Record::Valid(len) => {
                at += RECORD_HEADER + len;
                records.push((pos + at as u64, bytes[at - len..at].to_vec()));
            }
            Record::Torn => break Stop::Torn,
            Record::Damaged => match resync(&bytes, at + 1) {
                Some(next) => {
                    tracing::warn!(
                        offset = pos + at as u64,
                        skipped = next - at,
                        "journal record damaged; resynchronised"
                    );
                    skipped += (next - at) as u64;
                    damaged += 1;
                    at = next;
                }
                None => break Stop::Corrupt,
            },
        }
    };
    Ok(ReadOut {
        records,
        stop,
        end: pos + at as u64,
        skipped,
        damaged,
    })
}

enum Record {
    /// A complete record with this payload length.
    Valid(usize),
    /// The bytes end inside the record.
    Torn,
    /// Impossible length or checksum mismatch.
    Damaged,
}

fn record_at(bytes: &[u8], at: usize) -> Record {
    let Some(header) = bytes.get(at..at + RECORD_HEADER) else {
        return Record::Torn;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD {
        return Record::Damaged;
    }
    let Some(payload) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
        return Record::Torn;
    };
    if crc32fast::hash(payload) == crc {
        Record::Valid(len)
    } else {
        Record::Damaged
    }
}

/// The first offset at or after `from` where a complete valid record starts.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(RECORD_HEADER - 1))
        .find(|&i| matches!(record_at(bytes, i), Record::Valid(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        encode_record(&mut b, payload);
        b
    }

    #[test]
    fn buffered_then_durable_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new();
        assert_eq!(j.append(&rec(b"one")).unwrap(), Appended::Buffered);
        assert_eq!(j.open_segment(dir.path(), 1).unwrap(), None);
        assert_eq!(j.append(&rec(b"two")).unwrap(), Appended::Durable);
        let (seg, written) = j.position();
        assert_eq!(seg, 1);
        let out = read_segment(
            &dir.path().join(segment_name(1)),
            0,
            Some(written),
            usize::MAX,
        )
        .unwrap();
        assert_eq!(out.stop, Stop::End);
        let payloads: Vec<_> = out.records.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(payloads, [b"one".as_slice(), b"two"]);
        assert_eq!(out.end, written);
        // Resume from the middle.
        let first_end = out.records[0].0;
        let rest = read_segment(
            &dir.path().join(segment_name(1)),
            first_end,
            None,
            usize::MAX,
        )
        .unwrap();
        assert_eq!(rest.records.len(), 1);
    }

    #[test]
    fn torn_and_corrupt_tails_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(7));
        let mut bytes = MAGIC.to_vec();
        bytes.extend(rec(b"good"));
        let good_end = bytes.len() as u64;
        let mut torn = bytes.clone();
        torn.extend(&rec(b"partial record")[..10]);
        fs::write(&path, &torn).unwrap();
        let out = read_segment(&path, 0, None, usize::MAX).unwrap();
        assert_eq!(
            (out.records.len(), out.stop, out.end),
            (1, Stop::Torn, good_end)
        );

        let mut corrupt = bytes.clone();
        let mut bad = rec(b"flipped");
        bad[9] ^= 0xFF;
        corrupt.extend(&bad);
        fs::write(&path, &corrupt).unwrap();
        let out = read_segment(&path, 0, None, usize::MAX).unwrap();
        assert_eq!((out.records.len(), out.stop), (1, Stop::Corrupt));
        assert_eq!(out.end, good_end, "a damaged tail is not consumed");

        // A short write followed by later records: the fragment is skipped.
        let mut resync = bytes.clone();
        resync.extend(&rec(b"cut short by a full disk")[..13]);
        resync.extend(rec(b"after"));
        resync.extend(rec(b"and after"));
        fs::write(&path, &resync).unwrap();
        let out = read_segment(&path, 0, None, usize::MAX).unwrap();
        let payloads: Vec<_> = out.records.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(payloads, [b"good".as_slice(), b"after", b"and after"]);
        assert_eq!(
            (out.stop, out.skipped, out.damaged, out.end),
            (Stop::End, 13, 1, resync.len() as u64)
        );

        fs::write(&path, b"NOTMAGIC").unwrap();
        assert_eq!(
            read_segment(&path, 0, None, 10).unwrap().stop,
            Stop::BadMagic
        );
    }

    #[test]
    fn concurrent_appends_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(Journal::new());
        j.open_segment(dir.path(), 1).unwrap();
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let payload = vec![t; 50 + (i as usize % 300)];
                        j.append(&rec(&payload)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (_, written) = j.position();
        let out = read_segment(&dir.path().join(segment_name(1)), 0, None, usize::MAX).unwrap();
        assert_eq!(
            (out.records.len(), out.stop, out.skipped, out.end),
            (4000, Stop::End, 0, written)
        );
        assert!(out
            .records
            .iter()
            .all(|(_, p)| p.iter().all(|b| *b == p[0])));
    }

    #[test]
    fn pending_buffer_is_bounded() {
        let j = Journal::new();
        let big = rec(&vec![7u8; 1024 * 1024 - 64]);
        for _ in 0..6 {
            j.append(&big).unwrap();
        }
        assert!(j.pending_dropped() >= 2);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(0xabc)), Some(0xabc));
        assert_eq!(parse_segment_name("journal-1.log"), None);
        assert_eq!(parse_segment_name("other"), None);
    }
}
