//! Deletion requests (protocol §8.2): the stub records each device's request, deletes
//! what it stored of that device (its events and their identities), and from then on
//! accepts and drops the device's batches — acknowledged (`stored`), so the device never
//! retries them, counted per device — and never a refusal, which could make a device
//! resend forever or lose other data of the same batch.
//!
//! The request is acted on for the **batch's** device id (a body naming another device
//! is counted in `mismatched`, not honoured). The user id and anonymous id it names are
//! recorded for the verification view; deleting a user's events stored from other
//! devices is a backend's policy, which the stub does not apply. Sequence gaps of a
//! deleted device are not counted in `/verify/summary` (its unsent events were deleted
//! on the device, by request).

use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use tern_protocol::{EventBatch, EventBody};

/// Tables, created when the store opens.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deletions (
    app_id          TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    user_id         TEXT,
    anonymous_id    TEXT,
    requests        INTEGER NOT NULL,
    mismatched      INTEGER NOT NULL DEFAULT 0,
    requested_ts_ms INTEGER NOT NULL,
    events_deleted  INTEGER NOT NULL,
    batches_dropped INTEGER NOT NULL DEFAULT 0,
    events_dropped  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, device_id)
) WITHOUT ROWID;
";

/// The SQL condition "this `devices` row's device asked for deletion", for summaries.
pub const NOT_DELETED: &str =
    "NOT EXISTS (SELECT 1 FROM deletions d WHERE d.app_id = devices.app_id AND d.device_id = devices.device_id)";

/// Whether any store of this process holds a deletion: until one does, the ingest path
/// skips the per-batch lookup. Process-wide, so a `true` may be another store's — only
/// ever a lookup too many, never one too few.
static ANY: AtomicBool = AtomicBool::new(false);

/// Notes the deletions an opened store already holds (call when it opens).
pub fn note_existing(conn: &Connection) -> rusqlite::Result<()> {
    let any: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM deletions)", [], |r| r.get(0))?;
    if any {
        ANY.store(true, Ordering::Release);
    }
    Ok(())
}

fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whether `batch` carries a deletion request.
pub fn requests_deletion(batch: &EventBatch) -> bool {
    batch
        .events
        .iter()
        .any(|e| matches!(e.body, EventBody::DeletionRequest { .. }))
}

/// If the batch's device asked for deletion (and this batch is not a deletion request
/// itself, e.g. a resend), counts the batch as dropped and returns true: the caller
/// acknowledges it without storing anything.
pub fn drop_if_deleted(tx: &Transaction<'_>, batch: &EventBatch) -> rusqlite::Result<bool> {
    if !ANY.load(Ordering::Acquire) || requests_deletion(batch) {
        return Ok(false);
    }
    let n = tx
        .prepare_cached(
            "UPDATE deletions SET batches_dropped = batches_dropped + 1,
                 events_dropped = events_dropped + ?3
             WHERE app_id = ?1 AND device_id = ?2",
        )?
        .execute(params![
            batch.app_id.as_str(),
            batch.device_id.to_string(),
            sql_int(batch.events.len() as u64)
        ])?;
    Ok(n > 0)
}

/// Records the deletion requests of a freshly stored batch and deletes what is stored of
/// its device.
pub fn record(tx: &Transaction<'_>, batch: &EventBatch) -> rusqlite::Result<()> {
    let app = batch.app_id.as_str();
    let device = batch.device_id.to_string();
    for e in &batch.events {
        let EventBody::DeletionRequest {
            device_id,
            user_id,
            anonymous_id,
        } = &e.body
        else {
            continue;
        };
        ANY.store(true, Ordering::Release);
        let mismatched = i64::from(*device_id != batch.device_id);
        tx.execute(
            "INSERT INTO deletions (app_id, device_id, user_id, anonymous_id, requests, mismatched,
                 requested_ts_ms, events_deleted)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, 0)
             ON CONFLICT (app_id, device_id) DO UPDATE SET
                 requests = requests + 1, mismatched = mismatched + excluded.mismatched",
            params![
                app,
                device,
                user_id.as_ref().map(|u| u.as_str()),
                anonymous_id.map(|a| a.to_string()),
                mismatched,
                e.ts_ms
            ],
        )?;
        let gone = tx.execute(
            "DELETE FROM events WHERE app_id = ?1 AND device_id = ?2",
            params![app, device],
        )?;
        tx.execute(
            "DELETE FROM event_identities WHERE app_id = ?1 AND device_id = ?2",
            params![app, device],
        )?;
        tx.execute(
            "UPDATE deletions SET events_deleted = events_deleted + ?3 WHERE app_id = ?1 AND device_id = ?2",
            params![app, device, gone as i64],
        )?;
    }
    Ok(())
}

/// One device's deletion in `GET /verify/apps/{app}/deletions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionRow {
    /// The device that asked.
    pub device_id: String,
    /// The user identified on it when it asked.
    pub user_id: Option<String>,
    /// Its anonymous id when it asked.
    pub anonymous_id: Option<String>,
    /// Distinct deletion-request events stored for it (1 unless it asked again).
    pub requests: u64,
    /// Requests whose body named another device (not honoured for that device).
    pub mismatched: u64,
    /// Device time of the first request, Unix ms.
    pub requested_ts_ms: i64,
    /// Stored events deleted (the request itself included).
    pub events_deleted: u64,
    /// Batches of the device received after the request: acknowledged and dropped.
    pub batches_dropped: u64,
    /// Their events.
    pub events_dropped: u64,
}

/// `GET /verify/apps/{app_id}/deletions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletions {
    /// Devices that asked for deletion.
    pub devices: u64,
    /// Stored events deleted.
    pub events_deleted: u64,
    /// Events received after a request and dropped.
    pub events_dropped: u64,
    /// The devices, by device id (at most [`MAX_ROWS`]).
    pub deletions: Vec<DeletionRow>,
}

/// The most rows the view lists.
pub const MAX_ROWS: usize = 10_000;

fn get_u64(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(i)?.max(0) as u64)
}

/// Reads the deletions of an app.
pub fn deletions(conn: &Connection, app_id: &str) -> rusqlite::Result<Deletions> {
    let mut out = Deletions::default();
    (out.devices, out.events_deleted, out.events_dropped) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(events_deleted), 0), COALESCE(SUM(events_dropped), 0)
         FROM deletions WHERE app_id = ?1",
        [app_id],
        |r| Ok((get_u64(r, 0)?, get_u64(r, 1)?, get_u64(r, 2)?)),
    )?;
    let mut st = conn.prepare(
        "SELECT device_id, user_id, anonymous_id, requests, mismatched, requested_ts_ms,
             events_deleted, batches_dropped, events_dropped
         FROM deletions WHERE app_id = ?1 ORDER BY device_id LIMIT ?2",
    )?;
    out.deletions = st
        .query_map(params![app_id, MAX_ROWS as i64], |r| {
            Ok(DeletionRow {
                device_id: r.get(0)?,
                user_id: r.get(1)?,
                anonymous_id: r.get(2)?,
                requests: get_u64(r, 3)?,
                mismatched: get_u64(r, 4)?,
                requested_ts_ms: r.get(5)?,
                events_deleted: get_u64(r, 6)?,
                batches_dropped: get_u64(r, 7)?,
                events_dropped: get_u64(r, 8)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(out)
}

/// The summary's totals: (devices that asked, events deleted, events dropped after).
pub fn totals(conn: &Connection) -> rusqlite::Result<(u64, u64, u64)> {
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(events_deleted), 0), COALESCE(SUM(events_dropped), 0)
         FROM deletions",
        [],
        |r| Ok((get_u64(r, 0)?, get_u64(r, 1)?, get_u64(r, 2)?)),
    )
    .optional()
    .map(Option::unwrap_or_default)
}
