//! The store's schema: its tables, the migrations between versions, the additive
//! parts added within schema 2, and how a store file is set up when it opens (the rules
//! that keep this safe across upgrades and downgrades are in [the store's
//! docs](super)).
//!
//! Opening is on every app start's path, so it does no more than it must:
//!
//! - **A fresh store is copied, not built.** Creating the tables parses and runs every
//!   `CREATE` statement, most of a fresh open's CPU. A new `tern.db` is instead written
//!   from a template: the same schema, set up once per process by `set_up` in a
//!   scratch file and read back (with the header's file format set to WAL, as
//!   `journal_mode=WAL` sets it). The copy is written under a temporary name, synced
//!   and renamed, so a crash leaves no file or a whole one. The result is the same
//!   schema and the same `meta` rows a store set up in place has (a unit test compares
//!   them).
//! - **A complete store runs no DDL.** `set_up` records in `meta` the level of the
//!   additive parts it made sure of (`schema_parts`, [`SCHEMA_PARTS`]) and the file's
//!   schema cookie then (`schema_cookie`, SQLite's `PRAGMA schema_version`, which any
//!   change to the schema moves). A file of this schema version at this level or a
//!   later one, whose schema nobody has changed since, opens without the idempotent
//!   `CREATE ... IF NOT EXISTS` pass; any other is set up as before and recorded again.

use std::path::Path;
use std::sync::OnceLock;

use rusqlite::Connection;

use super::{consent, context, meta_get, meta_set, OpenFailure};

type Result<T, E = rusqlite::Error> = std::result::Result<T, E>;

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY NOT NULL,
    recorded_ms INTEGER NOT NULL,
    user_id     TEXT,
    bytes       INTEGER NOT NULL,
    crc         INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    batch_id    BLOB
);
CREATE INDEX IF NOT EXISTS events_by_batch ON events (batch_id);
CREATE TABLE IF NOT EXISTS batches (
    batch_id   BLOB PRIMARY KEY NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    events     INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
);
";

/// Schema 2: live config cache and message pacing (additive).
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS config_cache (
    app_id     TEXT PRIMARY KEY NOT NULL,
    etag       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    bundle     BLOB NOT NULL,
    fetched_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS message_pacing (
    message_id    TEXT PRIMARY KEY NOT NULL,
    impressions   INTEGER NOT NULL DEFAULT 0,
    last_shown_ms INTEGER
);
CREATE TABLE IF NOT EXISTS user_properties (
    key   TEXT PRIMARY KEY NOT NULL,
    kind  INTEGER NOT NULL,
    value
) WITHOUT ROWID;
";

/// Added within schema 2 (see the module docs): the experiment exposures recorded,
/// one row per (flag, variant, unit, config version) of the newest versions.
const EXPOSURES_TABLE: &str = "
CREATE TABLE IF NOT EXISTS exposures (
    flag           TEXT NOT NULL,
    variant        TEXT NOT NULL,
    unit           TEXT NOT NULL,
    config_version INTEGER NOT NULL,
    recorded_ms    INTEGER NOT NULL,
    PRIMARY KEY (flag, variant, unit, config_version)
) WITHOUT ROWID;
";
/// The `events.anon_id` column (the anonymous id an event was recorded under, as
/// text; NULL for events stored by an SDK without anonymous ids). Added, additively,
/// to any file that lacks it when the file is opened (rule 1 below): an older SDK names
/// its columns and leaves it NULL.
const ANON_COLUMN: &str = "ALTER TABLE events ADD COLUMN anon_id TEXT";

/// Migrations from version `i` to `i + 1`, applied in order to older files.
const MIGRATIONS: &[&str] = &[SCHEMA_V2];

/// The level of the additive parts of schema 2 this code creates (the `exposures`,
/// `contexts`, `held_events` and `deletion_requests` tables, the `events.anon_id` and
/// `events.ctx_id` columns). A later SDK that adds a part within schema 2 raises it.
pub const SCHEMA_PARTS: i64 = 1;
/// `meta` key: the highest [`SCHEMA_PARTS`] an SDK made sure of in this file.
const PARTS_KEY: &str = "schema_parts";
/// `meta` key: the schema cookie when the parts were last made sure of.
const COOKIE_KEY: &str = "schema_cookie";

fn cookie(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
}

/// This file has every part of this code's schema: recorded at this level or a later
/// one, and its schema unchanged since.
pub(super) fn is_complete(conn: &Connection) -> Result<bool> {
    let parts: Option<i64> = meta_get(conn, PARTS_KEY)?;
    let recorded: Option<i64> = meta_get(conn, COOKIE_KEY)?;
    Ok(parts.is_some_and(|p| p >= SCHEMA_PARTS) && recorded == Some(cookie(conn)?))
}

/// Records that the parts of this level are there, never lowering a later SDK's level.
fn record_complete(conn: &Connection) -> Result<()> {
    let parts = meta_get::<i64>(conn, PARTS_KEY)?
        .unwrap_or(0)
        .max(SCHEMA_PARTS);
    meta_set(conn, PARTS_KEY, &parts)?;
    meta_set(conn, COOKIE_KEY, &cookie(conn)?)
}

/// Offset and value of the SQLite header's file format bytes (write and read
/// version): 2 is WAL.
const FORMAT_BYTES: std::ops::Range<usize> = 18..20;
const FORMAT_WAL: u8 = 2;

/// A fresh store's file, set up once per process (in `dir`, the first store's
/// directory, then read and removed); `None` if that failed (stores are then set up
/// in place).
fn template(dir: &Path) -> Option<&'static [u8]> {
    static TEMPLATE: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let path = dir.join(TEMPLATE_FILE);
            let built = build_template(&path);
            let _ = std::fs::remove_file(&path);
            match built {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    tracing::warn!(error = %e, "could not set up the store template; stores are set up in place");
                    None
                }
            }
        })
        .as_deref()
}

/// Where the template is set up (the bundled SQLite is built without
/// `sqlite3_serialize`, so it is set up in a file).
const TEMPLATE_FILE: &str = "tern.db-template";

fn build_template(path: &Path) -> Result<Vec<u8>, String> {
    let _ = std::fs::remove_file(path);
    {
        let mut conn = Connection::open(path).map_err(|e| e.to_string())?;
        // No side files and no syncs: the file is read back and removed.
        conn.execute_batch("PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF;")
            .map_err(|e| e.to_string())?;
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        match set_up(&tx) {
            Ok(_) => {}
            Err(OpenFailure::Unusable(why)) => return Err(why),
            Err(OpenFailure::Error(e)) => return Err(e.to_string()),
        }
        tx.commit().map_err(|e| e.to_string())?;
        conn.close().map_err(|(_, e)| e.to_string())?;
    }
    let mut bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    match bytes.get_mut(FORMAT_BYTES) {
        Some(format) => format.fill(FORMAT_WAL),
        None => return Err(format!("a set-up database of {} bytes", bytes.len())),
    }
    Ok(bytes)
}

/// Writes a fresh store file at `path` from the template, if neither it nor its WAL
/// exists. Returns whether it did; on any failure nothing is left behind and the store
/// is set up in place (which reports the error, if it persists).
pub(super) fn write_fresh(path: &Path) -> bool {
    let wal = path.with_file_name(format!(
        "{}-wal",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    ));
    if path.exists() || wal.exists() {
        return false;
    }
    let Some(bytes) = path.parent().and_then(template) else {
        return false;
    };
    let tmp = path.with_extension("db-new");
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    match written {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, path = %tmp.display(), "could not write the store template");
            let _ = std::fs::remove_file(&tmp);
            false
        }
    }
}

/// Creates the schema, or migrates it to [`SCHEMA_VERSION`], and adds the additive
/// tables and columns a store may lack. Returns the version found.
pub(super) fn set_up(conn: &Connection) -> Result<i64, OpenFailure> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    // Checked, not trusted: a file whose schema anyone changed since is set up again.
    if found == SCHEMA_VERSION && is_complete(conn).unwrap_or(false) {
        return Ok(found);
    }
    if found > SCHEMA_VERSION {
        let min_reader: i64 = meta_get(conn, "min_reader_version")?.unwrap_or(1);
        if min_reader > SCHEMA_VERSION {
            return Err(OpenFailure::Unusable(format!(
                "written by schema {found}, which needs readers of schema {min_reader} or newer"
            )));
        }
        // Additive and idempotent: a newer schema keeps these tables; one that
        // skipped them gets them without any change to what it has.
        conn.execute_batch(SCHEMA_V2)?;
        conn.execute_batch(EXPOSURES_TABLE)?;
    } else {
        conn.execute_batch(SCHEMA_V1)?;
        let from = found.max(1);
        for (step, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(from - 1).unwrap_or(0))
        {
            tracing::info!(from = step + 1, "migrating device store");
            conn.execute_batch(sql)?;
        }
        conn.execute_batch(EXPOSURES_TABLE)?;
        if found == 0 {
            // Before `user_version` is set: a file killed before it is created anew.
            context::mark_created(conn)?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        if meta_get::<i64>(conn, "min_reader_version")?.is_none() {
            meta_set(conn, "min_reader_version", &1i64)?;
        }
    }
    let has_anon: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'anon_id'")?
        .exists([])?;
    if !has_anon {
        conn.execute_batch(ANON_COLUMN)?;
    }
    conn.execute_batch(consent::CONSENT_TABLES)?;
    context::migrate(conn)?;
    record_complete(conn)?;
    Ok(found)
}
