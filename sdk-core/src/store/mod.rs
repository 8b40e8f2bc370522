//! The SQLite store: queued events, batches, and the device's persistent state.
//!
//! All access happens on one connection, owned by whoever holds the [`Db`] (the
//! background thread, behind a mutex shared with the uploader). `track()` never
//! touches it.
//!
//! # Schema and compatibility (rollback safety)
//!
//! `PRAGMA user_version` holds the schema version that last wrote the file and the
//! `meta` row `min_reader_version` the oldest schema version that may still use it.
//! This version (schema 2) opens any database with `min_reader_version <= 2`, including
//! ones written by newer SDKs (app downgrade).
//!
//! Schema 2 added, additively (so `min_reader_version` stays 1 and a schema-1 SDK
//! still opens the file): `config_cache` (the last config bundle per app, stored as
//! the `ConfigReply` frame encoding, so a cold start offline has config, flags and
//! messages), `message_pacing` (impressions per in-app message) and
//! `user_properties` (the user's properties as set on this device, for message
//! targeting). Its tables are created with `IF NOT EXISTS` when the file is opened,
//! also in a file of a newer schema that lacks them (a file recorded complete and
//! unchanged since is trusted instead: [`schema`]). `exposures` (the
//! experiment exposures recorded, for their deduplication across restarts: see
//! [`crate::live::exposures`]) was added the same way later, within schema 2: an SDK
//! that does not know it leaves it alone, and one that does creates it when missing,
//! so the version number did not need to move; so were `contexts` and the
//! `events.ctx_id` column ([`context`]). Rules that make that safe, binding on
//! every future schema version:
//!
//! 1. Changes within a reader line are additive: new tables, new columns with defaults
//!    or NULL. Existing columns keep their type and meaning.
//! 2. Code names its columns: no `SELECT *`, no `INSERT` without a column list. So an
//!    older SDK writes rows into a newer table layout and the new columns take defaults.
//! 3. An older SDK never lowers `user_version` and never drops what it does not know.
//! 4. A change older readers cannot survive raises `min_reader_version`; an older SDK
//!    then moves the file aside (kept, not deleted) and starts fresh, counting a store
//!    reset — the one case where a downgrade loses queued events.
//!
//! A database that fails to open or fails `PRAGMA quick_check` is renamed to
//! `tern.db.corrupt-<unix ms>` for diagnosis, a fresh one starts, and `store_resets`
//! is incremented (reported upstream in every batch).
//!
//! # Resets
//!
//! The store keeps the journal marker (`journal.marker`, see [`crate::store::marker`]) and
//! reconciles with it when it opens: a store that is behind the marker's frontier —
//! a fresh file after `tern.db` was deleted or truncated, a corrupt file replaced, an
//! older copy, a lost `-wal` — takes the frontier's device id, sequence numbers, user,
//! opt-out state and journal checkpoint, so records the lost store had applied are not
//! applied (and sent) again, and counts the events whose delivery it cannot know in
//! `reset_unknown`. The marker is written by [`Db::next_batch`] before a batch holding
//! newer events leaves (rule M1), by [`Db::before_removing_segment`] before a journal
//! segment is deleted (rule M2), after a `delete_local_data`, when the queue empties,
//! and by [`Db::sync_marker`]. The counters it adds (`dropped_corrupt`,
//! `dropped_disk_full`, `reset_unknown`) are `meta` rows: no schema change, so an
//! older SDK still opens the file (and ignores the marker).

pub mod consent;
pub mod context;
pub mod entry;
pub mod journal;
pub mod marker;
pub mod push;
pub mod schema;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tern_protocol::{
    AnonymousId, AppId, BatchId, CodecConfig, ConfigBundle, ConfigOutcome, ConfigReply, DeviceId,
    Event, EventBatch, EventBody, Limits, Message, Properties, SdkHealth, SdkInfo, UserId, Value,
};

use crate::consent::{ConsentConfig, ConsentCounters};
use crate::error::{Result, StoreError};
use crate::live::exposures::ExposureKey;
#[cfg(doc)]
use crate::live::exposures::Exposures;
use crate::live::messages::PacingState;
use crate::store::entry::Entry;
use crate::store::marker::{Found, Marker, Reconcile, StoreState};

/// Bounds of the device store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreLimits {
    /// Maximum bytes of queued events (encoded). Default 10 MiB.
    pub max_bytes: u64,
    /// Maximum number of queued events. Default 100,000.
    pub max_events: u64,
    /// Maximum number of experiment exposures remembered for deduplication (in memory
    /// and in the `exposures` table). Default 4096.
    pub max_exposures: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_bytes: 10 * 1024 * 1024,
            max_events: 100_000,
            max_exposures: 4096,
        }
    }
}

pub use schema::SCHEMA_VERSION;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "tern.db";

/// `user_properties.kind`: which `Value` variant `value` holds.
const KIND_STRING: i64 = 0;
const KIND_INT: i64 = 1;
const KIND_FLOAT: i64 = 2;
const KIND_BOOL: i64 = 3;

/// The device's persistent state, kept in the `meta` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    /// This installation's id.
    pub device_id: DeviceId,
    /// The next event's sequence number.
    pub next_seq: u64,
    /// The user events are currently recorded under.
    pub user: Option<UserId>,
    /// The anonymous id events are currently recorded under (replaced by `reset` and
    /// `delete_local_data`; kept across identify and alias).
    pub anonymous_id: AnonymousId,
    /// Recording and uploading are off.
    pub opted_out: bool,
    /// Journal position applied so far: `(segment, offset)`.
    pub checkpoint: (u64, u64),
    /// Cumulative health counters (queue gauges are filled in at send time).
    pub health: SdkHealth,
    /// The consent states set so far, as text (`analytics=pending,...`; purposes never
    /// set are absent and follow the option). See [`crate::consent`].
    pub consent: String,
    /// Consent and deletion counters (kept across `delete_local_data`).
    pub consent_counters: ConsentCounters,
    /// The push token the device holds ([`push`]).
    pub push: Option<push::PushState>,
    /// The cleared token of the last opt-out, whose batch leaves while opted out.
    pub push_clear: Option<push::PushClear>,
    /// Contexts, install id and the last launch's app version ([`context`]).
    pub context: context::ContextMeta,
}

/// What opening the store found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Set when the existing file could not be used and was moved here.
    pub moved_aside: Option<PathBuf>,
    /// Why it was moved aside.
    pub reset_reason: Option<String>,
    /// The schema version found in the file (0 for a new file).
    pub found_version: i64,
    /// Set when the journal marker showed the store to be behind what an earlier
    /// store had applied (see [`crate::store::marker`]): a reset, counted in `store_resets`.
    pub reset_by_marker: Option<Reconcile>,
    /// Events of the lost store whose delivery is unknown (added to `reset_unknown`).
    pub reset_unknown: u64,
}

/// A batch handed to the uploader.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingBatch {
    /// The batch, ready to encode.
    pub batch: EventBatch,
    /// Sum of the encoded sizes of its events.
    pub bytes: u64,
}

/// What waits to be uploaded: the input of the upload scheduler.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Events not yet in a batch.
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When the oldest of them was recorded (Unix ms).
    pub oldest_recorded_ms: Option<i64>,
    /// Formed batches not in flight.
    pub ready_batches: usize,
}

/// What applying journal entries did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Events stored.
    pub events: u64,
    /// Events discarded because the user had opted out.
    pub opted_out: u64,
    /// Events dropped as invalid when stored (encoded size over the limit).
    pub invalid: u64,
    /// Events dropped to keep the store within its bounds.
    pub overflow: u64,
    /// Entries of kinds this version does not know.
    pub unknown: u64,
    /// A `delete_local_data` entry was applied.
    pub deleted: bool,
    /// Exposure events whose key went into the `exposures` table.
    pub exposures: u64,
    /// Events the store recorded by itself, which no recording call counted: the
    /// lifecycle events a launch implied (`app_installed`, `app_updated`, `app_opened`
    /// at start: [`context::expand_launches`]), the `push_token` events entries
    /// implied (see [`push`]) and deletion requests kept to be sent.
    pub implied_events: u64,
}

/// Whether a (expanded) entry is a lifecycle event a launch implied.
fn entry_from_launch(entry: &Entry) -> bool {
    matches!(
        entry,
        Entry::Event {
            body: EventBody::AppInstalled
                | EventBody::AppUpdated { .. }
                | EventBody::AppOpened {
                    from_background: false
                },
            ..
        }
    )
}

/// The SQLite store.
pub struct Db {
    conn: Connection,
    path: PathBuf,
    dir: PathBuf,
    /// The frontier (see [`crate::store::marker`]): every event handed out is at or below it.
    frontier: Marker,
    /// The marker as last written (skips identical writes).
    marker_written: Option<Marker>,
    /// The last marker write failed (to be tried again).
    marker_failed: bool,
    limits: StoreLimits,
    event_limits: Limits,
    meta: Meta,
    in_flight: HashSet<BatchId>,
    queued_events: u64,
    queued_bytes: u64,
    corrupt_events: u64,
    /// Rows in `exposures` and the newest config version among them.
    exposures: (usize, u64),
    /// The last [`Db::backlog`] with what it was read at: the connection's
    /// `total_changes` and the batches in flight. The connection is the database's
    /// only one (exclusive locking), so no row changes without the count moving.
    backlog_cache: std::cell::Cell<Option<(u64, usize, Backlog)>>,
    /// The consent options ([`Db::set_consent_config`]).
    consent_config: ConsentConfig,
    /// The `meta` rows as the database holds them (see [`Db::write_meta`]); empty
    /// when unknown.
    meta_rows: MetaRows,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .field("queued_events", &self.queued_events)
            .field("queued_bytes", &self.queued_bytes)
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

enum OpenFailure {
    /// Unusable file: move it aside and start fresh.
    Unusable(String),
    /// A real error (I/O, permissions): report it.
    Error(StoreError),
}

impl From<rusqlite::Error> for OpenFailure {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match e.sqlite_error_code() {
            Some(NotADatabase | DatabaseCorrupt) => OpenFailure::Unusable(e.to_string()),
            _ => OpenFailure::Error(StoreError::Sqlite(e)),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn meta_get<T: rusqlite::types::FromSql>(
    conn: &Connection,
    key: &str,
) -> rusqlite::Result<Option<T>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get::<_, Option<T>>(0))
        .optional()
        .map(Option::flatten)
}

fn meta_set(conn: &Connection, key: &str, value: &dyn rusqlite::ToSql) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
        .execute(params![key, value])?;
    Ok(())
}

/// Prepared statements a store connection keeps (more than the store's distinct
/// statements, so the cache never evicts one in use again).
const STATEMENT_CACHE: usize = 96;

/// The `meta` rows, in a fixed order: (key, value).
type MetaRows = Vec<(&'static str, rusqlite::types::Value)>;

/// The `meta` rows that hold `m`, in a fixed order (see [`Db::write_meta`]).
fn meta_rows(m: &Meta) -> MetaRows {
    use rusqlite::types::Value;
    let mut rows: MetaRows = Vec::with_capacity(48);
    rows.push(("device_id", Value::Text(m.device_id.to_string())));
    rows.push(("next_seq", Value::Integer(i(m.next_seq))));
    rows.push((
        "user_id",
        m.user.as_ref().map(|u| u.as_str().to_owned()).into(),
    ));
    rows.push(("anonymous_id", Value::Text(m.anonymous_id.to_string())));
    rows.push(("opted_out", Value::Integer(i64::from(m.opted_out))));
    rows.push(("checkpoint_segment", Value::Integer(i(m.checkpoint.0))));
    rows.push(("checkpoint_offset", Value::Integer(i(m.checkpoint.1))));
    let h = &m.health;
    for (k, v) in [
        ("dropped_overflow", h.dropped_overflow),
        ("dropped_invalid", h.dropped_invalid),
        ("dropped_rejected", h.dropped_rejected),
        ("retries", h.retries),
        ("store_resets", h.store_resets),
        ("dropped_corrupt", h.dropped_corrupt),
        ("dropped_disk_full", h.dropped_disk_full),
        ("reset_unknown", h.reset_unknown),
        ("dropped_unavailable", h.dropped_unavailable),
        ("auth_failures", h.auth_failures),
    ] {
        rows.push((k, Value::Integer(i(v))));
    }
    push::rows(m, &mut rows);
    m.context.rows(&mut rows);
    consent::rows(m, &mut rows);
    rows
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Db {
    /// Opens (or creates) `dir/tern.db`. An unusable file is moved aside and replaced;
    /// the store is then reconciled with the journal marker (see [`crate::store::marker`]).
    /// The returned report says what happened; `store_resets` is already incremented.
    pub fn open(dir: &Path, limits: StoreLimits, event_limits: Limits) -> Result<(Db, OpenReport)> {
        Self::open_with(dir, limits, event_limits, true)
    }

    /// [`Db::open`], a fresh file written from the schema template or (`template`
    /// false, for the tests that compare the two) set up in place.
    fn open_with(
        dir: &Path,
        limits: StoreLimits,
        event_limits: Limits,
        template: bool,
    ) -> Result<(Db, OpenReport)> {
        let path = dir.join(DB_FILE);
        let (mut db, mut report) = match Self::try_open(&path, limits, event_limits, template) {
            Ok((db, found_version)) => (
                db,
                OpenReport {
                    found_version,
                    ..OpenReport::default()
                },
            ),
            Err(OpenFailure::Error(e)) => return Err(e),
            Err(OpenFailure::Unusable(reason)) => {
                let aside = dir.join(format!("{DB_FILE}.corrupt-{}", now_ms()));
                std::fs::rename(&path, &aside)
                    .map_err(|e| StoreError::io("moving aside", &path, e))?;
                for suffix in ["-wal", "-shm"] {
                    let side = dir.join(format!("{DB_FILE}{suffix}"));
                    if side.exists() {
                        let _ = std::fs::rename(
                            &side,
                            dir.join(format!("{}{suffix}", aside.display())),
                        );
                    }
                }
                tracing::warn!(%reason, aside = %aside.display(), "device store unusable; moved aside, starting fresh");
                let (db, _) = match Self::try_open(&path, limits, event_limits, template) {
                    Ok(ok) => ok,
                    Err(OpenFailure::Error(e)) => return Err(e),
                    Err(OpenFailure::Unusable(r)) => {
                        return Err(StoreError::Sqlite(rusqlite::Error::InvalidParameterName(r)))
                    }
                };
                (
                    db,
                    OpenReport {
                        moved_aside: Some(aside),
                        reset_reason: Some(reason),
                        ..OpenReport::default()
                    },
                )
            }
        };
        db.reconcile(&mut report)?;
        Ok((db, report))
    }

    /// Compares the store with the journal marker, adopts the marker's frontier if
    /// the store is behind it, counts the reset, and writes the marker.
    fn reconcile(&mut self, report: &mut OpenReport) -> Result<()> {
        let found = Marker::read(&self.dir).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "journal marker unreadable; ignored");
            Found::Absent
        });
        if let Found::Damaged(why) = &found {
            tracing::warn!(%why, "journal marker damaged; ignored");
        }
        let marker = found.marker();
        let verdict = marker::reconcile(
            &StoreState {
                device_id: self.meta.device_id,
                checkpoint: self.meta.checkpoint,
            },
            marker,
        );
        let mut meta = self.meta.clone();
        let mut discarded = 0;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let (Reconcile::RolledBack | Reconcile::Replaced, Some(m)) = (verdict, marker) {
            if verdict == Reconcile::Replaced {
                // Another identity's events (a fresh file has none): the marker's
                // identity is the later one, so they are stale. Counted as unknown.
                discarded = self.queued_events;
                tx.prepare_cached("DELETE FROM events")?.execute([])?;
                tx.prepare_cached("DELETE FROM batches")?.execute([])?;
                meta.device_id = m.device_id;
                meta.next_seq = m.next_seq;
            } else {
                meta.next_seq = meta.next_seq.max(m.next_seq);
            }
            meta.checkpoint = m.checkpoint();
            meta.user = m.user.clone();
            if let Some(a) = m.anonymous_id {
                meta.anonymous_id = a;
            }
            meta.opted_out = m.opted_out;
            if let Some(c) = &m.consent {
                meta.consent = c.clone();
            }
            meta.context.adopt(m.launch.as_ref());
            meta.health = marker::max_health(&meta.health, &m.health);
            report.reset_unknown = m.unknown + discarded;
            meta.health.reset_unknown += report.reset_unknown;
            report.reset_by_marker = Some(verdict);
            tracing::warn!(
                ?verdict,
                unknown = report.reset_unknown,
                device_id = %meta.device_id,
                next_seq = meta.next_seq,
                "device store behind the journal marker: continuing from the marker"
            );
        }
        if report.moved_aside.is_some() || report.reset_by_marker.is_some() {
            // A store that replaces a lost one is not a new install.
            meta.context.install_pending = false;
            meta.health.store_resets += 1;
        }
        let rows = Self::write_meta(&tx, &self.meta_rows, &meta)?;
        tx.commit()?;
        self.meta_rows = rows;
        self.meta = meta;
        if discarded > 0 {
            self.queued_events = 0;
            self.queued_bytes = 0;
        }
        // The frontier: the marker's while it describes this store (nothing was handed
        // out beyond it), else the store as it is now.
        self.frontier = match marker {
            Some(m) if verdict == Reconcile::Keep && m.device_id == self.meta.device_id => {
                m.clone()
            }
            _ => self.snapshot(),
        };
        self.sync_marker()?;
        Ok(())
    }

    fn try_open(
        path: &Path,
        limits: StoreLimits,
        event_limits: Limits,
        template: bool,
    ) -> std::result::Result<(Db, i64), OpenFailure> {
        if template {
            schema::write_fresh(path);
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement the store runs stays prepared: parsing SQL again costs more
        // than running most of them (rusqlite keeps 16 by default; the store has more).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // One connection, in one process (the data directory's lock): exclusive
        // locking, set before the first WAL access, keeps the WAL index in the
        // connection's memory instead of a shared `-shm` file — one descriptor and one
        // mapping less per store, and no lock calls per transaction. The database and
        // its WAL are written as in shared mode.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Deleted events (acked, dropped, or `delete_local_data`) are overwritten, not
        // left in free pages.
        conn.pragma_update(None, "secure_delete", "ON")?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(OpenFailure::Unusable(format!("quick_check: {check}")));
        }
        // The schema is created or brought up to date in one transaction: one commit
        // instead of one per statement, and a store killed while it is created is
        // left as it was (no `user_version`, so it is created again).
        let mut conn = conn;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = schema::set_up(&tx)?;
        tx.commit()?;
        let meta = Self::load_meta(&conn)?;
        let mut db = Db {
            frontier: Marker {
                device_id: meta.device_id,
                next_seq: meta.next_seq,
                segment: meta.checkpoint.0,
                offset: meta.checkpoint.1,
                user: None,
                opted_out: false,
                unknown: 0,
                health: SdkHealth::default(),
                anonymous_id: Some(meta.anonymous_id),
                consent: None,
                launch: Some(meta.context.launch_state()),
            },
            marker_written: None,
            marker_failed: false,
            meta,
            conn,
            path: path.to_owned(),
            dir: path.parent().map(Path::to_owned).unwrap_or_default(),
            limits,
            event_limits,
            in_flight: HashSet::new(),
            exposures: (0, 0),
            backlog_cache: std::cell::Cell::new(None),
            consent_config: ConsentConfig::default(),
            meta_rows: MetaRows::new(),
            queued_events: 0,
            queued_bytes: 0,
            corrupt_events: 0,
        };
        let (n, bytes): (i64, i64) = db
            .conn
            .prepare_cached("SELECT count(*), coalesce(sum(bytes), 0) FROM events")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        db.queued_events = u(n);
        db.queued_bytes = u(bytes);
        let (rows, newest): (i64, i64) = db
            .conn
            .prepare_cached("SELECT count(*), coalesce(max(config_version), 0) FROM exposures")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        db.exposures = (usize::try_from(rows).unwrap_or(usize::MAX), u(newest));
        // The meta rows (a new device id among them) are written by `reconcile`, in the
        // transaction that follows every open.
        Ok((db, found))
    }

    fn load_meta(conn: &Connection) -> rusqlite::Result<Meta> {
        let (push, push_clear) = push::load(conn)?;
        let device_id = meta_get::<String>(conn, "device_id")?
            .and_then(|s| DeviceId::parse(&s).ok())
            .unwrap_or_else(DeviceId::random);
        let counter =
            |k: &str| -> rusqlite::Result<u64> { Ok(u(meta_get::<i64>(conn, k)?.unwrap_or(0))) };
        let (consent, consent_counters) = consent::load(conn)?;
        Ok(Meta {
            consent,
            consent_counters,
            device_id,
            next_seq: counter("next_seq")?.max(1),
            user: meta_get::<String>(conn, "user_id")?.map(UserId::new),
            anonymous_id: meta_get::<String>(conn, "anonymous_id")?
                .and_then(|s| AnonymousId::parse(&s).ok())
                .unwrap_or_else(AnonymousId::random),
            opted_out: counter("opted_out")? != 0,
            checkpoint: (
                counter("checkpoint_segment")?,
                counter("checkpoint_offset")?,
            ),
            health: SdkHealth {
                dropped_overflow: counter("dropped_overflow")?,
                dropped_invalid: counter("dropped_invalid")?,
                dropped_rejected: counter("dropped_rejected")?,
                retries: counter("retries")?,
                store_resets: counter("store_resets")?,
                queue_events: 0,
                queue_bytes: 0,
                dropped_corrupt: counter("dropped_corrupt")?,
                dropped_disk_full: counter("dropped_disk_full")?,
                reset_unknown: counter("reset_unknown")?,
                dropped_unavailable: counter("dropped_unavailable")?,
                auth_failures: counter("auth_failures")?,
            },
            push,
            push_clear,
            context: context::ContextMeta::load(conn)?,
        })
    }

    /// Writes the rows of `m` that differ from `written` (the rows as the database
    /// holds them; empty: unknown, so every row is written) and returns `m`'s rows. The
    /// caller keeps them as the database's once the write is committed: an apply
    /// changes two or three of the forty-odd rows, and each row written is an SQL
    /// statement in the transaction.
    fn write_meta(conn: &Connection, written: &MetaRows, m: &Meta) -> rusqlite::Result<MetaRows> {
        let rows = meta_rows(m);
        for (k, (key, value)) in rows.iter().enumerate() {
            if written
                .get(k)
                .is_none_or(|(wk, wv)| wk != key || wv != value)
            {
                meta_set(conn, key, value)?;
            }
        }
        Ok(rows)
    }

    /// Writes the whole of [`Db::meta`] that changed, in a transaction of its own.
    fn save_meta_now(&mut self) -> Result<()> {
        let written = std::mem::take(&mut self.meta_rows);
        let tx = self.conn.transaction()?;
        let rows = Self::write_meta(&tx, &written, &self.meta)?;
        tx.commit()?;
        self.meta_rows = rows;
        Ok(())
    }

    /// The persistent state.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Adds to the invalid-event counter (events refused in `track()`), persisted with
    /// the next write.
    pub fn add_invalid(&mut self, n: u64) {
        self.meta.health.dropped_invalid += n;
    }

    /// Adds to the counter of events refused because they could not be kept (the store
    /// could not be opened, the queue of calls made before start was full), persisted
    /// with the next write.
    pub fn add_unavailable(&mut self, n: u64) {
        self.meta.health.dropped_unavailable += n;
    }

    /// Adds to the counter of events refused because the journal could not be written
    /// (disk full or another write error), persisted with the next write.
    pub fn add_disk_full(&mut self, n: u64) {
        self.meta.health.dropped_disk_full += n;
    }

    /// Adds to the counter of records lost to damage (journal regions or records that
    /// failed their checksum or encoding), persisted with the next write — the journal
    /// reader adds them just before the [`Db::apply`] that moves the checkpoint past
    /// the damage, so each is counted once.
    pub fn add_corrupt(&mut self, n: u64) {
        self.meta.health.dropped_corrupt += n;
    }

    /// The store's state now, as a frontier.
    fn snapshot(&self) -> Marker {
        Marker {
            device_id: self.meta.device_id,
            next_seq: self.meta.next_seq,
            segment: self.meta.checkpoint.0,
            offset: self.meta.checkpoint.1,
            user: self.meta.user.clone(),
            opted_out: self.meta.opted_out,
            unknown: 0,
            health: SdkHealth::default(),
            anonymous_id: Some(self.meta.anonymous_id),
            consent: (!self.meta.consent.is_empty()).then(|| self.meta.consent.clone()),
            launch: Some(self.meta.context.launch_state()),
        }
    }

    /// The frontier as it would be written now: with the number of events at or below
    /// it still held, and the current counters.
    fn marker_now(&self) -> Result<Marker> {
        let unknown = if self.frontier.device_id != self.meta.device_id {
            // A `delete_local_data` since: none of the frontier identity's events is left.
            0
        } else if self.frontier.next_seq >= self.meta.next_seq {
            // Every stored event is at or below the frontier.
            self.queued_events
        } else {
            let n: i64 = self
                .conn
                .prepare_cached("SELECT count(*) FROM events WHERE seq < ?1")?
                .query_row([i(self.frontier.next_seq)], |r| r.get(0))?;
            u(n)
        };
        let mut health = self.meta.health;
        health.queue_events = 0;
        health.queue_bytes = 0;
        Ok(Marker {
            unknown,
            health,
            ..self.frontier.clone()
        })
    }

    /// Writes the journal marker if it changed (unknown count, counters, frontier).
    /// Returns whether it wrote. A failed write is logged and tried again next time:
    /// it never stops uploads (the marker only matters if the store is lost too).
    pub fn sync_marker(&mut self) -> Result<bool> {
        let m = self.marker_now()?;
        if self.marker_written.as_ref() == Some(&m) {
            return Ok(false);
        }
        match m.write(&self.dir) {
            Ok(()) => {
                self.marker_written = Some(m);
                self.marker_failed = false;
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing the journal marker failed");
                self.marker_failed = true;
                Ok(false)
            }
        }
    }

    /// The last marker write failed: [`Db::sync_marker`] should be called again.
    pub fn marker_failed(&self) -> bool {
        self.marker_failed
    }

    /// Moves the frontier to the store's current state and writes the marker.
    pub fn advance_frontier(&mut self) -> Result<()> {
        self.frontier = self.snapshot();
        self.sync_marker().map(|_| ())
    }

    /// Journal segment `segment` is about to be deleted: moves the frontier past it
    /// first (rule M2 of [`crate::store::marker`]). The checkpoint must already be past it.
    pub fn before_removing_segment(&mut self, segment: u64) -> Result<()> {
        if self.frontier.segment <= segment {
            self.advance_frontier()?;
        }
        Ok(())
    }

    /// The frontier (see [`crate::store::marker`]).
    pub fn frontier(&self) -> &Marker {
        &self.frontier
    }

    /// Events and bytes queued.
    pub fn queued(&self) -> (u64, u64) {
        (self.queued_events, self.queued_bytes)
    }

    /// Events found corrupt (CRC mismatch) and dropped since open.
    pub fn corrupt_events(&self) -> u64 {
        self.corrupt_events
    }

    /// Applies journal entries in one transaction, up to journal position `checkpoint`,
    /// then enforces the store bounds.
    pub fn apply(&mut self, entries: &[Entry], checkpoint: (u64, u64)) -> Result<Applied> {
        let mut out = Applied::default();
        let mut meta = self.meta.clone();
        let mut exposures = self.exposures;
        let mut cleared = false;
        let mut added_events = 0u64;
        let mut added_bytes = 0u64;
        let mut states = self.consent();
        // Launches become the context and lifecycle records they imply.
        let entries = context::expand_launches(entries, &mut meta.context);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (seq, recorded_ms, user_id, bytes, crc, payload, anon_id, ctx_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let apply_ms = now_ms();
            let stale = Self::settle_stale_held(&tx, &mut meta, &states)?;
            let (n, b) = consent::store_released(&mut insert, &mut meta, stale)?;
            (out.events, added_events, added_bytes) =
                (out.events + n, added_events + n, added_bytes + b);
            for entry in entries.iter() {
                if let Entry::SetConsent { purpose, state } = entry {
                    // Held events released by a grant, stored in their recorded order
                    // under the identity they were recorded under.
                    let released =
                        Self::apply_set_consent(&tx, &mut meta, &mut states, purpose, state)?;
                    let (n, b) = consent::store_released(&mut insert, &mut meta, released)?;
                    (out.events, added_events, added_bytes) =
                        (out.events + n, added_events + n, added_bytes + b);
                    // Then the `push_token` event it implies (below).
                }
                // The events an entry records: its own, or the alias it implies.
                let own = match entry {
                    Entry::Event {
                        ts_ms,
                        session,
                        body,
                    } => Some((*ts_ms, *session, body.clone())),
                    Entry::Alias {
                        ts_ms,
                        session,
                        user,
                    } => {
                        meta.user = Some(user.clone());
                        let body = EventBody::Alias {
                            anonymous_id: meta.anonymous_id,
                            user_id: user.clone(),
                        };
                        Some((*ts_ms, *session, body))
                    }
                    Entry::Identify { user } => {
                        meta.user = user.clone();
                        None
                    }
                    Entry::Reset { anonymous_id } => {
                        meta.user = None;
                        meta.anonymous_id = *anonymous_id;
                        tx.prepare_cached("DELETE FROM user_properties")?
                            .execute([])?;
                        None
                    }
                    Entry::OptOut { opted_out } => {
                        meta.opted_out = *opted_out;
                        None
                    }
                    Entry::Context { context } => {
                        context::set_current(&tx, &mut meta.context, context)?;
                        continue;
                    }
                    // Expanded above.
                    Entry::Launch { .. } => continue,
                    Entry::DeleteLocalData | Entry::RequestDeletion { .. } => {
                        if let Entry::RequestDeletion { ts_ms, session } = entry {
                            Self::keep_deletion_request(&tx, &mut meta, *ts_ms, *session)?;
                            out.implied_events += 1;
                        }
                        tx.prepare_cached("DELETE FROM held_events")?.execute([])?;
                        meta.consent_counters.pending_now = 0;
                        tx.prepare_cached("DELETE FROM events")?.execute([])?;
                        tx.prepare_cached("DELETE FROM batches")?.execute([])?;
                        tx.prepare_cached("DELETE FROM message_pacing")?
                            .execute([])?;
                        tx.prepare_cached("DELETE FROM user_properties")?
                            .execute([])?;
                        tx.prepare_cached("DELETE FROM exposures")?.execute([])?;
                        context::after_delete(&tx, &mut meta.context)?;
                        exposures = (0, 0);
                        meta.device_id = DeviceId::random();
                        meta.anonymous_id = AnonymousId::random();
                        meta.next_seq = 1;
                        meta.user = None;
                        meta.health = SdkHealth::default();
                        cleared = true;
                        out.deleted = true;
                        added_events = 0;
                        added_bytes = 0;
                        None
                    }
                    // Recorded by `push::implied` only.
                    Entry::PushToken { .. } | Entry::PushRefresh { .. } => None,
                    Entry::Unknown => {
                        out.unknown += 1;
                        continue;
                    }
                    // Applied above.
                    Entry::SetConsent { .. } => None,
                };
                // Then the `push_token` event the entry implies (§8.3).
                let implied = push::implied(&mut meta, entry, apply_ms)
                    .map(|p| (p.ts_ms, p.session, p.body, p.exempt, true));
                for (ts_ms, session, body, exempt, implied) in own
                    .map(|(t, s, b)| (t, s, b, false, false))
                    .into_iter()
                    .chain(implied)
                {
                    if meta.opted_out && !exempt {
                        out.opted_out += 1;
                        continue;
                    }
                    let event = Event {
                        seq: meta.next_seq,
                        ts_ms,
                        user_id: meta.user.clone(),
                        session_id: session,
                        body,
                    };
                    // Consent per purpose: held while pending, not kept when denied.
                    let verdict = Self::consent_event(
                        &self.consent_config,
                        self.event_limits.max_event_bytes,
                        &tx,
                        &mut meta,
                        &states,
                        &event,
                    )?;
                    if let consent::Verdict::Done = verdict {
                        if states.get(tern_protocol::Purpose::Messaging)
                            == crate::consent::ConsentState::Denied
                        {
                            push::not_kept(&mut meta, &event.body);
                        }
                        continue;
                    }
                    let payload = tern_protocol::encode_payload(&event).unwrap_or_default();
                    if payload.is_empty() || payload.len() > self.event_limits.max_event_bytes {
                        out.invalid += 1;
                        meta.health.dropped_invalid += 1;
                        continue;
                    }
                    insert.execute(params![
                        i(event.seq),
                        ts_ms,
                        meta.user.as_ref().map(UserId::as_str),
                        payload.len() as i64,
                        crc32fast::hash(&payload),
                        payload,
                        meta.anonymous_id.to_string(),
                        meta.context.current
                    ])?;
                    if let EventBody::Exposure {
                        flag,
                        variant,
                        config_version,
                        ..
                    } = &event.body
                    {
                        let unit = match &meta.user {
                            Some(u) => u.as_str().to_owned(),
                            None => meta.device_id.to_string(),
                        };
                        let key = ExposureKey {
                            flag: flag.clone(),
                            variant: variant.clone(),
                            unit,
                            config_version: *config_version,
                        };
                        if Self::remember_exposure(
                            &tx,
                            &mut exposures,
                            self.limits.max_exposures,
                            &key,
                            ts_ms,
                        )? {
                            out.exposures += 1;
                        }
                    }
                    if exempt {
                        push::stored_exempt(&mut meta, event.seq, &event.body);
                    }
                    if implied || entry_from_launch(entry) {
                        out.implied_events += 1;
                    }
                    meta.next_seq += 1;
                    out.events += 1;
                    added_events += 1;
                    added_bytes += payload.len() as u64;
                }
            }
        }
        meta.checkpoint = checkpoint;
        let rows = Self::write_meta(&tx, &self.meta_rows, &meta)?;
        tx.commit()?;
        self.meta_rows = rows;
        self.meta = meta;
        self.exposures = exposures;
        if cleared {
            self.in_flight.clear();
            self.queued_events = 0;
            self.queued_bytes = 0;
        }
        self.queued_events += added_events;
        self.queued_bytes += added_bytes;
        if cleared {
            // Deleted rows were overwritten (`secure_delete`); move the WAL's copies of
            // those pages into the database and truncate it, so no old page image stays.
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            // The marker must not keep the deleted identity or user id.
            self.advance_frontier()?;
        }
        out.overflow = self.enforce_bounds()?;
        Ok(out)
    }

    /// Keeps an exposure's key, in the transaction that stores its event: rows of older
    /// config versions go first when it is newer (as in [`Exposures::admit`]); beyond
    /// `cap` rows it is not kept. `rows` is the table's (count, newest version).
    /// Returns whether a row was added.
    fn remember_exposure(
        tx: &rusqlite::Transaction<'_>,
        rows: &mut (usize, u64),
        cap: usize,
        key: &ExposureKey,
        at_ms: i64,
    ) -> Result<bool> {
        if key.config_version > rows.1 {
            let removed = tx
                .prepare_cached("DELETE FROM exposures WHERE config_version < ?1")?
                .execute([i(key.config_version)])?;
            rows.0 = rows.0.saturating_sub(removed);
            rows.1 = key.config_version;
        }
        if rows.0 >= cap {
            return Ok(false);
        }
        let added = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO exposures (flag, variant, unit, config_version, recorded_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                key.flag,
                key.variant,
                key.unit,
                i(key.config_version),
                at_ms
            ])?;
        rows.0 += added;
        Ok(added > 0)
    }

    /// The exposures earlier runs recorded (see [`crate::live::exposures`]).
    pub fn load_exposures(&self) -> Result<Vec<ExposureKey>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT flag, variant, unit, config_version FROM exposures")?;
        let keys = st
            .query_map([], |r| {
                Ok(ExposureKey {
                    flag: r.get(0)?,
                    variant: r.get(1)?,
                    unit: r.get(2)?,
                    config_version: u(r.get(3)?),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(keys)
    }

    /// Drops the oldest events (whole batches when they belong to one, skipping batches
    /// in flight) until the store is within its bounds. Returns the events dropped.
    pub fn enforce_bounds(&mut self) -> Result<u64> {
        let mut dropped = 0u64;
        while self.queued_events > self.limits.max_events
            || self.queued_bytes > self.limits.max_bytes
        {
            let rows: Vec<(i64, i64, Option<Vec<u8>>)> = {
                let mut st = self.conn.prepare_cached(
                    "SELECT seq, bytes, batch_id FROM events ORDER BY seq LIMIT 512",
                )?;
                let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            if rows.is_empty() {
                break;
            }
            let tx = self.conn.transaction()?;
            let mut progressed = false;
            let mut done_batches = HashSet::new();
            let before = dropped;
            for (seq, bytes, batch) in rows {
                if self.queued_events <= self.limits.max_events
                    && self.queued_bytes <= self.limits.max_bytes
                {
                    break;
                }
                match batch
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .map(BatchId::from_bytes)
                {
                    Some(id) if self.in_flight.contains(&id) => continue,
                    Some(id) => {
                        if !done_batches.insert(id) {
                            continue;
                        }
                        let (n, b): (i64, i64) = tx.prepare_cached("SELECT count(*), coalesce(sum(bytes), 0) FROM events WHERE batch_id = ?1")?.query_row([id.as_uuid().as_bytes().as_slice()],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )?;
                        tx.prepare_cached("DELETE FROM events WHERE batch_id = ?1")?
                            .execute([id.as_uuid().as_bytes().as_slice()])?;
                        tx.prepare_cached("DELETE FROM batches WHERE batch_id = ?1")?
                            .execute([id.as_uuid().as_bytes().as_slice()])?;
                        self.queued_events = self.queued_events.saturating_sub(u(n));
                        self.queued_bytes = self.queued_bytes.saturating_sub(u(b));
                        dropped += u(n);
                    }
                    None => {
                        tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?
                            .execute([seq])?;
                        self.queued_events = self.queued_events.saturating_sub(1);
                        self.queued_bytes = self.queued_bytes.saturating_sub(u(bytes));
                        dropped += 1;
                    }
                }
                progressed = true;
            }
            self.meta.health.dropped_overflow += dropped - before;
            let rows = Self::write_meta(&tx, &self.meta_rows, &self.meta)?;
            tx.commit()?;
            self.meta_rows = rows;
            if !progressed {
                break;
            }
        }
        if dropped > 0 {
            tracing::warn!(dropped, "device store full: dropped the oldest events");
        }
        Ok(dropped)
    }

    /// Groups unbatched events into batches: consecutive events of one user, at most
    /// `max_events` events and `max_bytes` bytes each. A group that can still grow (the
    /// newest user's, below both limits) is cut only when `force` is set. Returns the
    /// number of batches formed. Each batch gets its `batch_id` here, once.
    pub fn form_batches(&mut self, max_events: u64, max_bytes: u64, force: bool) -> Result<usize> {
        // The identity an event was recorded under: its user and its anonymous id. A
        // batch never mixes identities (protocol §5.2, §8.1).
        // And its context (§5.2.1): a batch names the context its events were recorded in.
        type Identity = (Option<String>, Option<String>, Option<i64>);
        let rows: Vec<(i64, Identity, i64)> = {
            let mut st = self.conn.prepare_cached(
                "SELECT seq, user_id, bytes, anon_id, ctx_id FROM events WHERE batch_id IS NULL ORDER BY seq",
            )?;
            let rows = st.query_map([], |r| {
                Ok((r.get(0)?, (r.get(1)?, r.get(3)?, r.get(4)?), r.get(2)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // (first_seq, last_seq, events, bytes)
        let mut groups: Vec<(i64, i64, u64, u64, bool)> = Vec::new();
        // The opt-out's cleared push token goes alone (see `push`).
        let alone = self.push_clear_seq();
        let mut current: Option<(i64, i64, u64, u64, Identity)> = None;
        for (seq, user, bytes) in rows {
            let bytes = u(bytes);
            if let Some((first, last, n, b, cur_user)) = current.take() {
                let apart = alone == Some(seq) || alone == Some(first);
                if cur_user == user && !apart && n < max_events && b + bytes <= max_bytes {
                    current = Some((first, seq, n + 1, b + bytes, cur_user));
                    continue;
                }
                groups.push((first, last, n, b, true));
            }
            current = Some((seq, seq, 1, bytes, user));
        }
        if let Some((first, last, n, b, _)) = current {
            let full = n >= max_events || b >= max_bytes || alone == Some(first);
            groups.push((first, last, n, b, full || force));
        }
        let tx = self.conn.transaction()?;
        let mut formed = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO batches (batch_id, first_seq, last_seq, events, bytes, created_ms, attempts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
            )?;
            let mut assign = tx.prepare_cached(
                "UPDATE events SET batch_id = ?1 WHERE seq BETWEEN ?2 AND ?3 AND batch_id IS NULL",
            )?;
            let created = now_ms();
            for (first, last, n, b, cut) in groups {
                if !cut {
                    continue;
                }
                let id = BatchId::new_v7();
                let id_bytes = id.as_uuid().as_bytes().to_vec();
                insert.execute(params![id_bytes, first, last, i(n), i(b), created])?;
                assign.execute(params![id_bytes, first, last])?;
                formed += 1;
            }
        }
        tx.commit()?;
        Ok(formed)
    }

    /// The unbatched backlog and the formed batches waiting.
    pub fn backlog(&self) -> Result<Backlog> {
        // The uploader asks on every turn of its loop; most turns nothing has changed.
        let key = (self.conn.total_changes(), self.in_flight.len());
        if let Some((changes, in_flight, b)) = self.backlog_cache.get() {
            if (changes, in_flight) == key {
                return Ok(b);
            }
        }
        let b = self.read_backlog()?;
        self.backlog_cache.set(Some((key.0, key.1, b)));
        Ok(b)
    }

    fn read_backlog(&self) -> Result<Backlog> {
        let (n, b, oldest): (i64, i64, Option<i64>) = self.conn.prepare_cached("SELECT count(*), coalesce(sum(bytes), 0), min(recorded_ms) FROM events WHERE batch_id IS NULL")?.query_row([],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(Backlog {
            events: u(n),
            bytes: u(b),
            oldest_recorded_ms: oldest,
            ready_batches: self.ready_batches()?,
        })
    }

    /// Formed batches not in flight.
    pub fn ready_batches(&self) -> Result<usize> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT (SELECT count(*) FROM batches) + (SELECT count(*) FROM deletion_requests)",
            )?
            .query_row([], |r| r.get(0))?;
        Ok(usize::try_from(n)
            .unwrap_or(0)
            .saturating_sub(self.in_flight.len()))
    }

    /// Takes the oldest formed batch not in flight, marks it in flight and returns it.
    /// Events that fail their checksum are dropped (counted); a batch left empty is
    /// deleted.
    pub fn next_batch(&mut self, app_id: &AppId, sdk: &SdkInfo) -> Result<Option<OutgoingBatch>> {
        // Deletion requests first (see `crate::consent`).
        if let Some(b) = self.next_deletion_batch(app_id, sdk)? {
            return Ok(Some(b));
        }
        self.next_batch_from(app_id, sdk, None)
    }

    /// [`Db::next_batch`], among the batches starting at `first_seq` only when given.
    fn next_batch_from(
        &mut self,
        app_id: &AppId,
        sdk: &SdkInfo,
        first_seq: Option<i64>,
    ) -> Result<Option<OutgoingBatch>> {
        loop {
            let candidates: Vec<(Vec<u8>, i64, i64)> = {
                let mut st = self.conn.prepare_cached(
                    "SELECT batch_id, attempts, bytes FROM batches WHERE ?2 IS NULL OR first_seq = ?2 ORDER BY first_seq LIMIT ?1",
                )?;
                let rows = st.query_map(
                    params![i(self.in_flight.len() as u64 + 1), first_seq],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let Some((id_bytes, attempts, bytes)) = candidates.into_iter().find(|(id, _, _)| {
                <[u8; 16]>::try_from(id.as_slice())
                    .map(|b| !self.in_flight.contains(&BatchId::from_bytes(b)))
                    .unwrap_or(true)
            }) else {
                return Ok(None);
            };
            let id = match <[u8; 16]>::try_from(id_bytes.as_slice()) {
                Ok(b) => BatchId::from_bytes(b),
                Err(_) => {
                    self.conn
                        .prepare_cached("DELETE FROM batches WHERE batch_id = ?1")?
                        .execute([&id_bytes])?;
                    continue;
                }
            };
            type Row = (i64, u32, Vec<u8>, Option<String>, Option<i64>);
            let rows: Vec<Row> = {
                let mut st = self.conn.prepare_cached(
                    "SELECT bytes, crc, payload, anon_id, ctx_id FROM events WHERE batch_id = ?1 ORDER BY seq",
                )?;
                let rows = st.query_map([&id_bytes], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            // One anonymous id per batch (`form_batches`); NULL for events stored by an
            // SDK without anonymous ids.
            let anonymous_id = rows
                .first()
                .and_then(|r| r.3.as_deref())
                .and_then(|a| AnonymousId::parse(a).ok());
            // Likewise one context (NULL: recorded before the device had one).
            let ctx = match rows.first().and_then(|r| r.4) {
                Some(id) => context::read(&self.conn, id)?,
                None => None,
            };
            let mut events = Vec::with_capacity(rows.len());
            let mut corrupt = 0;
            for (_, crc, payload, _, _) in rows {
                match (crc32fast::hash(&payload) == crc)
                    .then(|| tern_protocol::decode_payload::<Event>(&payload).ok())
                    .flatten()
                {
                    Some(e) => events.push(e),
                    None => corrupt += 1,
                }
            }
            if corrupt > 0 {
                self.corrupt_events += corrupt;
                self.meta.health.dropped_corrupt += corrupt;
                self.save_meta_now()?;
            }
            if events.is_empty() {
                self.remove_batch(id)?;
                continue;
            }
            // Rule M1: nothing leaves beyond the frontier.
            let newest = events.last().map_or(0, |e| e.seq);
            if newest >= self.frontier.next_seq || self.frontier.device_id != self.meta.device_id {
                self.advance_frontier()?;
            }
            self.in_flight.insert(id);
            let mut health = self.meta.health;
            health.queue_events = self.queued_events;
            health.queue_bytes = self.queued_bytes;
            return Ok(Some(OutgoingBatch {
                batch: EventBatch {
                    anonymous_id,
                    context: ctx,
                    batch_id: id,
                    app_id: app_id.clone(),
                    device_id: self.meta.device_id,
                    sdk: sdk.clone(),
                    sent_at_ms: now_ms(),
                    attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
                    events,
                    health,
                },
                bytes: u(bytes),
            }));
        }
    }

    fn remove_batch(&mut self, id: BatchId) -> Result<u64> {
        let key = id.as_uuid().as_bytes().as_slice();
        let tx = self.conn.transaction()?;
        let (n, b): (i64, i64) = tx
            .prepare_cached(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM events WHERE batch_id = ?1",
            )?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))?;
        tx.prepare_cached("DELETE FROM events WHERE batch_id = ?1")?
            .execute([key])?;
        let deleted = tx
            .prepare_cached("DELETE FROM batches WHERE batch_id = ?1")?
            .execute([key])?;
        tx.commit()?;
        self.in_flight.remove(&id);
        if deleted == 0 {
            return Err(StoreError::UnknownBatch(id));
        }
        self.queued_events = self.queued_events.saturating_sub(u(n));
        self.queued_bytes = self.queued_bytes.saturating_sub(u(b));
        Ok(u(n))
    }

    /// The batch was accepted: delete it and its events. When the queue empties, the
    /// marker is brought up to date (nothing is unknown any more).
    pub fn ack(&mut self, id: BatchId) -> Result<u64> {
        if self.deletion_outcome(id, Some(true))? {
            return Ok(1);
        }
        let n = self.remove_batch(id)?;
        if self.queued_events == 0 {
            self.sync_marker()?;
        }
        Ok(n)
    }

    /// The batch was rejected permanently: delete it and count its events as dropped.
    pub fn reject(&mut self, id: BatchId) -> Result<u64> {
        if self.deletion_outcome(id, Some(false))? {
            return Ok(1);
        }
        let n = self.remove_batch(id)?;
        self.meta.health.dropped_rejected += n;
        self.save_meta_now()?;
        if self.queued_events == 0 {
            self.sync_marker()?;
        }
        Ok(n)
    }

    /// The batch will be sent again later (same id): it leaves the in-flight set and
    /// its attempt count grows.
    pub fn retry(&mut self, id: BatchId) -> Result<()> {
        if self.deletion_outcome(id, None)? {
            return Ok(());
        }
        self.in_flight.remove(&id);
        let n = self
            .conn
            .prepare_cached("UPDATE batches SET attempts = attempts + 1 WHERE batch_id = ?1")?
            .execute([id.as_uuid().as_bytes().as_slice()])?;
        if n == 0 {
            return Err(StoreError::UnknownBatch(id));
        }
        self.meta.health.retries += 1;
        self.save_meta_now()?;
        Ok(())
    }

    /// The batch was refused for a reason that may be the server's fault: it is kept
    /// (sent again later with the same id, like [`Db::retry`]) and counted in
    /// `auth_failures`.
    pub fn refused(&mut self, id: BatchId) -> Result<()> {
        self.retry(id)?;
        self.count_auth_failure()
    }

    /// Counts one request refused for a reason that may be the server's fault
    /// (`auth_failures`).
    pub fn count_auth_failure(&mut self) -> Result<()> {
        self.meta.health.auth_failures += 1;
        self.save_meta_now()?;
        Ok(())
    }

    /// Returns every in-flight batch to the queue (the uploader stopped).
    pub fn release_in_flight(&mut self) {
        self.in_flight.clear();
    }

    /// Persists counters changed outside a transaction.
    pub fn flush_meta(&mut self) -> Result<()> {
        self.save_meta_now()
    }

    /// Stores `bundle` as the cached config of its app, replacing the previous one.
    /// The bytes are a `ConfigReply` frame (the wire encoding, LZ4 above 1 KiB), so
    /// reading it back reuses the reply decoder instead of linking a second one.
    pub fn save_config(&mut self, bundle: &ConfigBundle, fetched_ms: i64) -> Result<()> {
        let bytes = Message::ConfigReply(ConfigReply {
            shard_map_version: 0,
            stale: false,
            outcome: ConfigOutcome::Modified {
                bundle: bundle.clone(),
            },
        })
        .encode(&CodecConfig::device())
        .map_err(|e| StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        self.conn
            .prepare_cached(
                "INSERT INTO config_cache (app_id, etag, version, bundle, fetched_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (app_id) DO UPDATE SET etag = excluded.etag, version = excluded.version, \
                 bundle = excluded.bundle, fetched_ms = excluded.fetched_ms",
            )?
            .execute(params![
                bundle.app_id.as_str(),
                bundle.etag.as_str(),
                i(bundle.version),
                bytes,
                fetched_ms
            ])?;
        Ok(())
    }

    /// The cached config bundle of `app` and when it was fetched (Unix ms). A row that
    /// no longer decodes is ignored (the next fetch replaces it).
    pub fn load_config(&self, app: &AppId) -> Result<Option<(ConfigBundle, i64)>> {
        let row: Option<(Vec<u8>, i64)> = self
            .conn
            .prepare_cached("SELECT bundle, fetched_ms FROM config_cache WHERE app_id = ?1")?
            .query_row([app.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(row.and_then(
            |(bytes, at)| match Message::from_bytes(&bytes, &CodecConfig::device()) {
                Ok(Message::ConfigReply(ConfigReply {
                    outcome: ConfigOutcome::Modified { bundle },
                    ..
                })) => Some((bundle, at)),
                _ => {
                    tracing::warn!("cached config bundle unreadable; ignored");
                    None
                }
            },
        ))
    }

    /// Impressions per in-app message.
    pub fn load_pacing(&self) -> Result<HashMap<String, PacingState>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT message_id, impressions, last_shown_ms FROM message_pacing")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                PacingState {
                    impressions: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(u32::MAX),
                    last_shown_ms: r.get(2)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records one impression of `message_id` at `now_ms`; returns the new state.
    pub fn record_impression(&mut self, message_id: &str, now_ms: i64) -> Result<PacingState> {
        self.conn
            .prepare_cached(
                "INSERT INTO message_pacing (message_id, impressions, last_shown_ms) VALUES (?1, 1, ?2) \
                 ON CONFLICT (message_id) DO UPDATE SET impressions = impressions + 1, last_shown_ms = excluded.last_shown_ms",
            )?
            .execute(params![message_id, now_ms])?;
        let (n, last): (i64, Option<i64>) = self
            .conn
            .prepare_cached(
                "SELECT impressions, last_shown_ms FROM message_pacing WHERE message_id = ?1",
            )?
            .query_row([message_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(PacingState {
            impressions: u32::try_from(n).unwrap_or(u32::MAX),
            last_shown_ms: last,
        })
    }

    /// The user properties last set on this device (for message targeting).
    pub fn load_user_properties(&self) -> Result<Properties> {
        let mut st = self
            .conn
            .prepare_cached("SELECT key, kind, value FROM user_properties")?;
        let rows = st.query_map([], |r| {
            let key: String = r.get(0)?;
            let value = match r.get::<_, i64>(1)? {
                KIND_STRING => r.get::<_, String>(2).map(Value::String).ok(),
                KIND_INT => r.get::<_, i64>(2).map(Value::Int).ok(),
                KIND_FLOAT => r.get::<_, f64>(2).map(Value::Float).ok(),
                KIND_BOOL => r.get::<_, i64>(2).map(|b| Value::Bool(b != 0)).ok(),
                _ => None,
            };
            Ok(value.map(|v| (key, v)))
        })?;
        let mut props = Properties::new();
        for row in rows {
            if let Some((k, v)) = row? {
                props.insert(k, v);
            }
        }
        Ok(props)
    }

    /// Persists the user properties known on this device (replacing the stored set).
    pub fn save_user_properties(&mut self, props: &Properties) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached("DELETE FROM user_properties")?
            .execute([])?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO user_properties (key, kind, value) VALUES (?1, ?2, ?3)",
            )?;
            for (k, v) in props {
                match v {
                    Value::String(s) => insert.execute(params![k, KIND_STRING, s])?,
                    Value::Int(n) => insert.execute(params![k, KIND_INT, n])?,
                    Value::Float(f) => insert.execute(params![k, KIND_FLOAT, f])?,
                    Value::Bool(b) => insert.execute(params![k, KIND_BOOL, i64::from(*b)])?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod consent_tests;
#[cfg(test)]
mod context_tests;
#[cfg(test)]
mod identity_tests;
#[cfg(test)]
mod push_tests;
#[cfg(test)]
mod schema_tests;
#[cfg(test)]
mod tests;
