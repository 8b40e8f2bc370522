//! The SQLite store: one connection owned by a dedicated writer thread. Every
//! operation is a closure run on that thread, in arrival order, so the async runtime
//! never blocks on SQLite and writes never contend for the database lock.
//!
//! Durability: WAL with `synchronous=NORMAL`. A committed transaction survives a crash
//! or kill of the process; the last transactions before a power loss or OS crash may
//! be lost (they are in the WAL but not yet fsynced). That is the right trade for a
//! test stand-in that has to keep up with relay load tests.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tern_protocol::{
    ETag, EventBatch, EventBody, ForwardOutcome, ForwardResult, RejectReason, SdkHealth,
};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Content, StoredVersion};
use crate::error::{Error, Result};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Handle to the writer thread. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    tx: mpsc::Sender<Job>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS batches (
    batch_id       TEXT PRIMARY KEY,
    app_id         TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    events         INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    app_id    TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    user_id   TEXT,
    kind      TEXT NOT NULL,
    ts_ms     INTEGER NOT NULL,
    batch_id  TEXT NOT NULL,
    PRIMARY KEY (app_id, device_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    app_id           TEXT NOT NULL,
    device_id        TEXT NOT NULL,
    max_seq          INTEGER NOT NULL,
    unique_events    INTEGER NOT NULL,
    duplicate_events INTEGER NOT NULL,
    dropped_overflow INTEGER NOT NULL,
    dropped_invalid  INTEGER NOT NULL,
    dropped_rejected INTEGER NOT NULL,
    retries          INTEGER NOT NULL,
    store_resets     INTEGER NOT NULL,
    queue_events     INTEGER NOT NULL,
    queue_bytes      INTEGER NOT NULL,
    dropped_corrupt   INTEGER NOT NULL DEFAULT 0,
    dropped_disk_full INTEGER NOT NULL DEFAULT 0,
    reset_unknown     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, device_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS exposures (
    app_id         TEXT NOT NULL,
    flag           TEXT NOT NULL,
    variant        TEXT NOT NULL,
    unit           TEXT NOT NULL,
    config_version INTEGER NOT NULL,
    events         INTEGER NOT NULL,
    reason         TEXT,
    device_id      TEXT NOT NULL,
    first_ts_ms    INTEGER NOT NULL,
    PRIMARY KEY (app_id, flag, variant, unit, config_version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS app_config (
    app_id    TEXT PRIMARY KEY,
    version   INTEGER NOT NULL,
    etag      TEXT NOT NULL,
    file_etag TEXT NOT NULL,
    content   TEXT NOT NULL
) WITHOUT ROWID;
";

/// Health columns of `devices` added after its first version: added to an older
/// database when it opens (each defaults to 0).
const ADDED_DEVICE_COLUMNS: [&str; 3] = ["dropped_corrupt", "dropped_disk_full", "reset_unknown"];

/// The stored counters, in the order of [`Tally::deltas`].
const COUNTERS: [&str; 7] = [
    "batches_received",
    "batches_stored",
    "batches_duplicate",
    "batches_rejected",
    "events_unique",
    "events_duplicate",
    "events_in_duplicate_batches",
];

/// Opens (creating if needed) the database file and applies the schema.
pub fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(crate::identities::SCHEMA)?;
    conn.execute_batch(crate::deletions::SCHEMA)?;
    crate::deletions::note_existing(&conn)?;
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('devices')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for column in ADDED_DEVICE_COLUMNS {
        if !columns.iter().any(|c| c == column) {
            conn.execute_batch(&format!(
                "ALTER TABLE devices ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
            ))?;
        }
    }
    for name in COUNTERS {
        conn.execute(
            "INSERT OR IGNORE INTO counters (name, value) VALUES (?1, 0)",
            [name],
        )?;
    }
    Ok(conn)
}

impl Store {
    /// Moves `conn` onto a new writer thread.
    pub fn spawn(mut conn: Connection) -> Result<Store> {
        let (tx, mut rx) = mpsc::channel::<Job>(1024);
        std::thread::Builder::new()
            .name("tern-stub-store".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
                if let Err(e) = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
                    tracing::warn!(error = %e, "final WAL checkpoint failed");
                }
            })
            .map_err(|source| Error::Io {
                what: "spawning the store thread".into(),
                source,
            })?;
        Ok(Store { tx })
    }

    /// Runs `f` on the writer thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply_tx.send(f(conn));
        });
        self.tx.send(job).await.map_err(|_| Error::StoreClosed)?;
        Ok(reply_rx.await.map_err(|_| Error::StoreClosed)??)
    }
}

/// A batch with the verdict of the checks that need no database: the app is known
/// and the batch passes validation.
#[derive(Debug)]
pub struct CheckedBatch {
    /// The batch.
    pub batch: EventBatch,
    /// `Err` when the batch is rejected before storage.
    pub verdict: std::result::Result<(), (RejectReason, String)>,
}

/// What one ingest transaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Batches in the request.
    pub received: u64,
    /// Batches stored now.
    pub stored: u64,
    /// Batches already stored earlier.
    pub duplicate: u64,
    /// Batches rejected.
    pub rejected: u64,
    /// Events stored now.
    pub events_unique: u64,
    /// Events of stored batches whose (device, seq) was already stored.
    pub events_duplicate: u64,
    /// Events in duplicate batches.
    pub events_in_duplicate_batches: u64,
}

impl Tally {
    fn deltas(&self) -> [u64; 7] {
        [
            self.received,
            self.stored,
            self.duplicate,
            self.rejected,
            self.events_unique,
            self.events_duplicate,
            self.events_in_duplicate_batches,
        ]
    }
}

fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Stores the batches of one request in one transaction and returns one result per
/// batch, in order, plus what changed.
pub fn ingest(
    conn: &mut Connection,
    batches: &[CheckedBatch],
) -> rusqlite::Result<(Vec<ForwardResult>, Tally)> {
    let tx = conn.transaction()?;
    let mut tally = Tally::default();
    let mut results = Vec::with_capacity(batches.len());
    let received_at = now_ms();
    {
        let mut insert_batch = tx.prepare_cached(
            "INSERT OR IGNORE INTO batches (batch_id, app_id, device_id, events, received_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut insert_event = tx.prepare_cached(
            "INSERT OR IGNORE INTO events (app_id, device_id, seq, user_id, kind, ts_ms, batch_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        // One row per exposure key; `events` counts the distinct exposure events stored
        // with it (a resent batch or event is a duplicate and never reaches this).
        let mut upsert_exposure = tx.prepare_cached(
            "INSERT INTO exposures (app_id, flag, variant, unit, config_version, events, reason,
                 device_id, first_ts_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8)
             ON CONFLICT (app_id, flag, variant, unit, config_version) DO UPDATE SET
                 events = events + 1",
        )?;
        let mut upsert_device = tx.prepare_cached(
            "INSERT INTO devices (app_id, device_id, max_seq, unique_events, duplicate_events,
                 dropped_overflow, dropped_invalid, dropped_rejected, retries, store_resets,
                 queue_events, queue_bytes, dropped_corrupt, dropped_disk_full, reset_unknown)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
             ON CONFLICT (app_id, device_id) DO UPDATE SET
                 max_seq = max(max_seq, excluded.max_seq),
                 unique_events = unique_events + excluded.unique_events,
                 duplicate_events = duplicate_events + excluded.duplicate_events,
                 dropped_overflow = max(dropped_overflow, excluded.dropped_overflow),
                 dropped_invalid = max(dropped_invalid, excluded.dropped_invalid),
                 dropped_rejected = max(dropped_rejected, excluded.dropped_rejected),
                 retries = max(retries, excluded.retries),
                 store_resets = max(store_resets, excluded.store_resets),
                 queue_events = max(queue_events, excluded.queue_events),
                 queue_bytes = max(queue_bytes, excluded.queue_bytes),
                 dropped_corrupt = max(dropped_corrupt, excluded.dropped_corrupt),
                 dropped_disk_full = max(dropped_disk_full, excluded.dropped_disk_full),
                 reset_unknown = max(reset_unknown, excluded.reset_unknown)",
        )?;
        for checked in batches {
            tally.received += 1;
            let batch = &checked.batch;
            let outcome = match &checked.verdict {
                Err((reason, detail)) => {
                    tally.rejected += 1;
                    ForwardOutcome::Rejected {
                        reason: reason.clone(),
                        detail: detail.clone(),
                    }
                }
                // A device that asked for deletion: acknowledged, dropped, counted.
                Ok(()) if crate::deletions::drop_if_deleted(&tx, batch)? => ForwardOutcome::Stored,
                Ok(()) => {
                    let batch_id = batch.batch_id.to_string();
                    let device_id = batch.device_id.to_string();
                    let app_id = batch.app_id.as_str();
                    let n = batch.events.len() as u64;
                    let fresh = insert_batch.execute(params![
                        batch_id,
                        app_id,
                        device_id,
                        sql_int(n),
                        received_at
                    ])? == 1;
                    let (mut unique, mut dup, mut max_seq) = (0u64, 0u64, 0u64);
                    if fresh {
                        for event in &batch.events {
                            let inserted = insert_event.execute(params![
                                app_id,
                                device_id,
                                sql_int(event.seq),
                                event.user_id.as_ref().map(|u| u.as_str()),
                                event.body.kind(),
                                event.ts_ms,
                                batch_id,
                            ])? == 1;
                            if inserted {
                                unique += 1;
                                if let EventBody::Exposure {
                                    flag,
                                    variant,
                                    config_version,
                                    reason,
                                } = &event.body
                                {
                                    let unit = match &event.user_id {
                                        Some(u) => u.as_str(),
                                        None => device_id.as_str(),
                                    };
                                    upsert_exposure.execute(params![
                                        app_id,
                                        flag,
                                        variant,
                                        unit,
                                        sql_int(*config_version),
                                        reason.as_ref().map(|r| r.as_str()),
                                        device_id,
                                        event.ts_ms,
                                    ])?;
                                }
                            } else {
                                dup += 1;
                            }
                            max_seq = max_seq.max(event.seq);
                        }
                    }
                    let h = &batch.health;
                    upsert_device.execute(params![
                        app_id,
                        device_id,
                        sql_int(max_seq),
                        sql_int(unique),
                        sql_int(dup),
                        sql_int(h.dropped_overflow),
                        sql_int(h.dropped_invalid),
                        sql_int(h.dropped_rejected),
                        sql_int(h.retries),
                        sql_int(h.store_resets),
                        sql_int(h.queue_events),
                        sql_int(h.queue_bytes),
                        sql_int(h.dropped_corrupt),
                        sql_int(h.dropped_disk_full),
                        sql_int(h.reset_unknown),
                    ])?;
                    if fresh {
                        crate::identities::record(&tx, batch)?;
                        crate::deletions::record(&tx, batch)?;
                        tally.stored += 1;
                        tally.events_unique += unique;
                        tally.events_duplicate += dup;
                        ForwardOutcome::Stored
                    } else {
                        tally.duplicate += 1;
                        tally.events_in_duplicate_batches += n;
                        ForwardOutcome::Duplicate
                    }
                }
            };
            results.push(ForwardResult {
                batch_id: batch.batch_id,
                outcome,
            });
        }
        let mut bump =
            tx.prepare_cached("UPDATE counters SET value = value + ?1 WHERE name = ?2")?;
        for (name, delta) in COUNTERS.iter().zip(tally.deltas()) {
            if delta > 0 {
                bump.execute(params![sql_int(delta), name])?;
            }
        }
    }
    tx.commit()?;
    Ok((results, tally))
}

/// `GET /verify/summary`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Summary {
    /// Batches in decoded ingest requests.
    pub batches_received: u64,
    /// Batches stored (first time their `batch_id` was seen).
    pub batches_stored: u64,
    /// Batches whose `batch_id` was already stored.
    pub batches_duplicate: u64,
    /// Batches rejected (unknown app, invalid, too large).
    pub batches_rejected: u64,
    /// Distinct (app, device, seq) events stored.
    pub events_unique: u64,
    /// Events of stored batches suppressed because their (app, device, seq) was stored.
    pub events_duplicate: u64,
    /// Events inside duplicate batches (never looked at individually).
    pub events_in_duplicate_batches: u64,
    /// Distinct (app, device) pairs seen.
    pub devices: u64,
    /// Missing sequence numbers, summed over devices (`max_seq - unique_events`).
    pub sequence_gaps: u64,
    /// Distinct experiment exposures stored: (app, flag, variant, unit, config version).
    #[serde(default)]
    pub exposures: u64,
    /// Exposure events stored (each distinct by (app, device, seq)); above `exposures`
    /// when devices recorded a key more than once.
    #[serde(default)]
    pub exposure_events: u64,
    /// Devices that asked for the deletion of their data (protocol §8.2).
    #[serde(default)]
    pub deletion_requests: u64,
    /// Stored events deleted by those requests.
    #[serde(default)]
    pub events_deleted: u64,
    /// Events of those devices received after their request: acknowledged, dropped.
    #[serde(default)]
    pub events_dropped_deleted: u64,
}

fn get_u64(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(i)?.max(0) as u64)
}

/// Reads the summary counters.
pub fn summary(conn: &Connection) -> rusqlite::Result<Summary> {
    let mut s = Summary::default();
    let mut stmt = conn.prepare_cached("SELECT name, value FROM counters")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let value = get_u64(row, 1)?;
        match name.as_str() {
            "batches_received" => s.batches_received = value,
            "batches_stored" => s.batches_stored = value,
            "batches_duplicate" => s.batches_duplicate = value,
            "batches_rejected" => s.batches_rejected = value,
            "events_unique" => s.events_unique = value,
            "events_duplicate" => s.events_duplicate = value,
            "events_in_duplicate_batches" => s.events_in_duplicate_batches = value,
            _ => {}
        }
    }
    let (devices, gaps) = conn.query_row(
        &format!(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN {} THEN max_seq - unique_events ELSE 0 END), 0) FROM devices",
            crate::deletions::NOT_DELETED
        ),
        [],
        |r| Ok((get_u64(r, 0)?, get_u64(r, 1)?)),
    )?;
    s.devices = devices;
    s.sequence_gaps = gaps;
    (s.exposures, s.exposure_events) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(events), 0) FROM exposures",
        [],
        |r| Ok((get_u64(r, 0)?, get_u64(r, 1)?)),
    )?;
    (
        s.deletion_requests,
        s.events_deleted,
        s.events_dropped_deleted,
    ) = crate::deletions::totals(conn)?;
    Ok(s)
}

/// One stored exposure key of `GET /verify/apps/{app}/exposures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ExposureRow {
    /// The flag.
    pub flag: String,
    /// `off`, `on`, or the variant key.
    pub variant: String,
    /// The user id, or the device id of an anonymous exposure.
    pub unit: String,
    /// The config bundle version the flag was evaluated with.
    pub config_version: u64,
    /// Exposure events stored with this key: 1 unless a device recorded it again.
    pub events: u64,
    /// The reason of the first event, if it had one.
    pub reason: Option<String>,
    /// The device of the first event.
    pub device_id: String,
    /// The first event's device timestamp.
    pub first_ts_ms: i64,
}

/// `GET /verify/apps/{app}/exposures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AppExposures {
    /// The app.
    pub app_id: String,
    /// Distinct exposure keys of the app.
    pub exposures: u64,
    /// Exposure events of the app (≥ `exposures`).
    pub exposure_events: u64,
    /// Keys whose `events` is above 1.
    pub duplicated: u64,
    /// The keys, by flag, variant, unit and version; at most [`MAX_EXPOSURE_ROWS`]
    /// (the counts above cover all).
    pub rows: Vec<ExposureRow>,
}

/// The most rows `GET /verify/apps/{app}/exposures` lists.
pub const MAX_EXPOSURE_ROWS: usize = 10_000;

/// The exposures stored for one app, optionally of one unit only.
pub fn app_exposures(
    conn: &Connection,
    app_id: &str,
    unit: Option<&str>,
) -> rusqlite::Result<AppExposures> {
    let (exposures, exposure_events, duplicated) = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(events), 0), COALESCE(SUM(events > 1), 0)
             FROM exposures WHERE app_id = ?1 AND (?2 IS NULL OR unit = ?2)",
        )?
        .query_row(params![app_id, unit], |r| {
            Ok((get_u64(r, 0)?, get_u64(r, 1)?, get_u64(r, 2)?))
        })?;
    let mut stmt = conn.prepare_cached(
        "SELECT flag, variant, unit, config_version, events, reason, device_id, first_ts_ms
         FROM exposures WHERE app_id = ?1 AND (?2 IS NULL OR unit = ?2)
         ORDER BY flag, variant, unit, config_version LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![app_id, unit, MAX_EXPOSURE_ROWS as i64], |r| {
            Ok(ExposureRow {
                flag: r.get(0)?,
                variant: r.get(1)?,
                unit: r.get(2)?,
                config_version: get_u64(r, 3)?,
                events: get_u64(r, 4)?,
                reason: r.get(5)?,
                device_id: r.get(6)?,
                first_ts_ms: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(AppExposures {
        app_id: app_id.to_owned(),
        exposures,
        exposure_events,
        duplicated,
        rows,
    })
}

/// `GET /verify/latency`: delivery latency of the stored events — from the device's
/// event timestamp to the moment the backend first stored the event's batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Latency {
    /// Events measured.
    pub events: u64,
    /// Median, milliseconds.
    pub p50_ms: i64,
    /// 90th percentile, milliseconds.
    pub p90_ms: i64,
    /// 99th percentile, milliseconds.
    pub p99_ms: i64,
    /// Largest, milliseconds.
    pub max_ms: i64,
}

/// Delivery latency over every stored event (nearest-rank percentiles). Device clocks
/// are the host clock in tests; on real devices clock skew makes this approximate.
pub fn latency(conn: &Connection) -> rusqlite::Result<Latency> {
    let mut stmt = conn.prepare_cached(
        "SELECT b.received_at_ms - e.ts_ms FROM events e JOIN batches b ON b.batch_id = e.batch_id",
    )?;
    let mut values = stmt
        .query_map([], |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    if values.is_empty() {
        return Ok(Latency::default());
    }
    values.sort_unstable();
    let rank = |q: f64| {
        let i = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        values[i]
    };
    Ok(Latency {
        events: values.len() as u64,
        p50_ms: rank(0.50),
        p90_ms: rank(0.90),
        p99_ms: rank(0.99),
        max_ms: values[values.len() - 1],
    })
}

/// Unique events of one user (or of anonymous events, `user_id = None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserCount {
    /// The user; `null` for anonymous events.
    pub user_id: Option<String>,
    /// Unique events.
    pub unique_events: u64,
}

/// Unique events of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceCount {
    /// The device.
    pub device_id: String,
    /// Unique events.
    pub unique_events: u64,
    /// Highest seq seen.
    pub max_seq: u64,
}

/// `GET /verify/apps/{app}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppStats {
    /// The app.
    pub app_id: String,
    /// Unique events of the app.
    pub unique_events: u64,
    /// Per user, anonymous events under `user_id: null`.
    pub users: Vec<UserCount>,
    /// Per device.
    pub devices: Vec<DeviceCount>,
}

/// Per-user and per-device counts of one app.
pub fn app_stats(conn: &Connection, app_id: &str) -> rusqlite::Result<AppStats> {
    let mut stmt = conn.prepare_cached(
        "SELECT user_id, COUNT(*) FROM events WHERE app_id = ?1 GROUP BY user_id ORDER BY user_id",
    )?;
    let users = stmt
        .query_map([app_id], |r| {
            Ok(UserCount {
                user_id: r.get(0)?,
                unique_events: get_u64(r, 1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT device_id, unique_events, max_seq FROM devices WHERE app_id = ?1 ORDER BY device_id",
    )?;
    let devices = stmt
        .query_map([app_id], |r| {
            Ok(DeviceCount {
                device_id: r.get(0)?,
                unique_events: get_u64(r, 1)?,
                max_seq: get_u64(r, 2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(AppStats {
        app_id: app_id.to_owned(),
        unique_events: users.iter().map(|u| u.unique_events).sum(),
        users,
        devices,
    })
}

/// `GET /verify/apps/{app}/users/{user}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserStats {
    /// Unique events of the user.
    pub unique_events: u64,
    /// Unique events by kind (`custom`, `purchase`, ...).
    pub by_kind: std::collections::BTreeMap<String, u64>,
}

/// Counts of one user of one app.
pub fn user_stats(conn: &Connection, app_id: &str, user_id: &str) -> rusqlite::Result<UserStats> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, COUNT(*) FROM events WHERE app_id = ?1 AND user_id = ?2 GROUP BY kind",
    )?;
    let by_kind = stmt
        .query_map([app_id, user_id], |r| {
            Ok((r.get::<_, String>(0)?, get_u64(r, 1)?))
        })?
        .collect::<rusqlite::Result<std::collections::BTreeMap<_, _>>>()?;
    Ok(UserStats {
        unique_events: by_kind.values().sum(),
        by_kind,
    })
}

/// `GET /verify/apps/{app}/devices/{device}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceStats {
    /// Highest seq stored.
    pub max_seq: u64,
    /// Distinct seqs stored.
    pub unique_events: u64,
    /// Event-level duplicates suppressed.
    pub duplicate_events: u64,
    /// Missing seqs in `1..=max_seq`.
    pub gaps: u64,
    /// The first 100 missing ranges, inclusive.
    pub gap_ranges: Vec<[u64; 2]>,
    /// Per-counter maximum of the SDK health reported by the device.
    pub health: SdkHealth,
}

/// The most gap ranges returned.
pub const MAX_GAP_RANGES: usize = 100;

/// Counts of one device, `None` if nothing was stored for it.
pub fn device_stats(
    conn: &Connection,
    app_id: &str,
    device_id: &str,
) -> rusqlite::Result<Option<DeviceStats>> {
    let row = conn
        .prepare_cached(
            "SELECT max_seq, unique_events, duplicate_events, dropped_overflow, dropped_invalid,
                    dropped_rejected, retries, store_resets, queue_events, queue_bytes,
                    dropped_corrupt, dropped_disk_full, reset_unknown
             FROM devices WHERE app_id = ?1 AND device_id = ?2",
        )?
        .query_row([app_id, device_id], |r| {
            Ok((
                get_u64(r, 0)?,
                get_u64(r, 1)?,
                get_u64(r, 2)?,
                SdkHealth {
                    dropped_overflow: get_u64(r, 3)?,
                    dropped_invalid: get_u64(r, 4)?,
                    dropped_rejected: get_u64(r, 5)?,
                    retries: get_u64(r, 6)?,
                    store_resets: get_u64(r, 7)?,
                    queue_events: get_u64(r, 8)?,
                    queue_bytes: get_u64(r, 9)?,
                    dropped_corrupt: get_u64(r, 10)?,
                    dropped_disk_full: get_u64(r, 11)?,
                    reset_unknown: get_u64(r, 12)?,
                    // dropped_unavailable and auth_failures are not kept by the stub.
                    ..SdkHealth::default()
                },
            ))
        })
        .optional()?;
    let Some((max_seq, unique_events, duplicate_events, health)) = row else {
        return Ok(None);
    };
    let mut gap_ranges = Vec::new();
    if max_seq > unique_events {
        let mut expected = 1u64;
        let mut stmt = conn.prepare_cached(
            "SELECT seq FROM events WHERE app_id = ?1 AND device_id = ?2 ORDER BY seq",
        )?;
        let mut rows = stmt.query([app_id, device_id])?;
        while let Some(row) = rows.next()? {
            if gap_ranges.len() == MAX_GAP_RANGES {
                break;
            }
            let seq = get_u64(row, 0)?;
            if seq > expected {
                gap_ranges.push([expected, seq - 1]);
            }
            expected = seq + 1;
        }
    }
    Ok(Some(DeviceStats {
        max_seq,
        unique_events,
        duplicate_events,
        gaps: max_seq.saturating_sub(unique_events),
        gap_ranges,
        health,
    }))
}

/// The stored seqs of one device, ascending.
pub fn device_seqs(conn: &Connection, app_id: &str, device_id: &str) -> rusqlite::Result<Vec<u64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq FROM events WHERE app_id = ?1 AND device_id = ?2 ORDER BY seq",
    )?;
    let seqs = stmt
        .query_map([app_id, device_id], |r| get_u64(r, 0))?
        .collect();
    seqs
}

/// The stored config of one app, if any.
pub fn load_config(
    conn: &Connection,
    app_id: &str,
) -> rusqlite::Result<Option<(StoredVersion, String)>> {
    conn.query_row(
        "SELECT version, etag, file_etag, content FROM app_config WHERE app_id = ?1",
        [app_id],
        |r| {
            Ok((
                StoredVersion {
                    version: get_u64(r, 0)?,
                    etag: ETag(r.get(1)?),
                    file_etag: ETag(r.get(2)?),
                },
                r.get::<_, String>(3)?,
            ))
        },
    )
    .optional()
}

/// Persists the config of one app.
pub fn save_config(
    conn: &Connection,
    app_id: &str,
    stored: &StoredVersion,
    content: &Content,
) -> rusqlite::Result<()> {
    let json = serde_json::to_string(content).expect("config content always serializes");
    conn.execute(
        "INSERT INTO app_config (app_id, version, etag, file_etag, content)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (app_id) DO UPDATE SET version = excluded.version, etag = excluded.etag,
             file_etag = excluded.file_etag, content = excluded.content",
        params![
            app_id,
            sql_int(stored.version),
            stored.etag.as_str(),
            stored.file_etag.as_str(),
            json
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stub database from before the reset counters: opening it adds the columns
    /// (0 for the devices already known), and they then keep per-device maxima.
    #[test]
    fn an_older_database_gains_the_added_health_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stub.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE devices (
                    app_id TEXT NOT NULL, device_id TEXT NOT NULL, max_seq INTEGER NOT NULL,
                    unique_events INTEGER NOT NULL, duplicate_events INTEGER NOT NULL,
                    dropped_overflow INTEGER NOT NULL, dropped_invalid INTEGER NOT NULL,
                    dropped_rejected INTEGER NOT NULL, retries INTEGER NOT NULL,
                    store_resets INTEGER NOT NULL, queue_events INTEGER NOT NULL,
                    queue_bytes INTEGER NOT NULL, PRIMARY KEY (app_id, device_id)
                 ) WITHOUT ROWID;
                 INSERT INTO devices VALUES ('demo', 'd1', 3, 3, 0, 0, 0, 0, 4, 1, 0, 0);",
            )
            .unwrap();
        }
        let conn = open_connection(&path).unwrap();
        // Opening twice is a no-op.
        drop(conn);
        let conn = open_connection(&path).unwrap();
        let d = device_stats(&conn, "demo", "d1").unwrap().unwrap();
        assert_eq!(
            (
                d.health.retries,
                d.health.store_resets,
                d.health.reset_unknown
            ),
            (4, 1, 0)
        );
        conn.execute(
            "UPDATE devices SET reset_unknown = max(reset_unknown, 9), dropped_corrupt = 2",
            [],
        )
        .unwrap();
        let d = device_stats(&conn, "demo", "d1").unwrap().unwrap();
        assert_eq!((d.health.reset_unknown, d.health.dropped_corrupt), (9, 2));
    }
}
