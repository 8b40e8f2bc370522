//! Contexts and lifecycle events (protocol §5.2.1, §8.4): the context every stored
//! event was recorded in (its batch's), and the lifecycle events each device sent, so
//! the verification API can show the distinct contexts per device and its installs,
//! updates and opens.
//!
//! Written in the ingest transaction, for the events of fresh batches only, with the
//! same keys as the events (`(app, device, seq)`): a resent batch or event is not
//! counted twice.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, Transaction};
use serde::{Deserialize, Serialize};
use tern_protocol::{AppContext, EventBatch, EventBody};

/// Tables, created when the store opens.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS event_contexts (
    app_id    TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    context   TEXT NOT NULL,
    PRIMARY KEY (app_id, device_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lifecycle_events (
    app_id           TEXT NOT NULL,
    device_id        TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    app_version      TEXT,
    previous_version TEXT,
    previous_build   TEXT,
    from_background  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, device_id, seq)
) WITHOUT ROWID;
";

/// The key of a context: its JSON (fields in declaration order, absent ones omitted);
/// `""` for events of batches without a context.
fn key(context: Option<&AppContext>) -> String {
    context
        .and_then(|c| serde_json::to_string(c).ok())
        .unwrap_or_default()
}

/// Records the contexts and lifecycle events of a freshly stored batch.
pub fn record(tx: &Transaction<'_>, batch: &EventBatch) -> rusqlite::Result<()> {
    let app = batch.app_id.as_str();
    let device = batch.device_id.to_string();
    let ctx = key(batch.context.as_ref());
    let version = batch.context.as_ref().and_then(|c| c.app_version.clone());
    let mut per_event = tx.prepare_cached(
        "INSERT OR IGNORE INTO event_contexts (app_id, device_id, seq, context) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut lifecycle = tx.prepare_cached(
        "INSERT OR IGNORE INTO lifecycle_events (app_id, device_id, seq, kind, app_version, previous_version, previous_build, from_background) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for e in &batch.events {
        let seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
        per_event.execute(params![app, device, seq, ctx])?;
        let (prev_v, prev_b, bg) = match &e.body {
            EventBody::AppInstalled => (None, None, false),
            EventBody::AppUpdated {
                previous_version,
                previous_build,
            } => (previous_version.clone(), previous_build.clone(), false),
            EventBody::AppOpened { from_background } => (None, None, *from_background),
            _ => continue,
        };
        lifecycle.execute(params![
            app,
            device,
            seq,
            e.body.kind(),
            version,
            prev_v,
            prev_b,
            i64::from(bg)
        ])?;
    }
    Ok(())
}

/// `GET /verify/apps/{app_id}/contexts`: per device, its distinct contexts and its
/// lifecycle events; and the app's totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Contexts {
    /// Per device id.
    pub devices: BTreeMap<String, DeviceContexts>,
    /// `app_installed` events stored, all devices.
    pub installs: u64,
    /// `app_updated` events stored.
    pub updates: u64,
    /// `app_opened` events stored (from the background or not).
    pub opens: u64,
}

/// One device's contexts and lifecycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceContexts {
    /// The distinct contexts its events were recorded in, with their event counts;
    /// `None` for events sent without one.
    pub contexts: Vec<ContextRow>,
    /// Its lifecycle events in sequence order.
    pub lifecycle: Vec<LifecycleRow>,
}

/// A context and how many stored events were recorded in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextRow {
    /// The context (`None`: events of batches without one).
    pub context: Option<AppContext>,
    /// Stored events recorded in it.
    pub events: u64,
}

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleRow {
    /// Its sequence number.
    pub seq: u64,
    /// `app_installed`, `app_updated` or `app_opened`.
    pub kind: String,
    /// The app version of its batch's context.
    pub app_version: Option<String>,
    /// `app_updated`: the version before.
    pub previous_version: Option<String>,
    /// `app_updated`: the build before.
    pub previous_build: Option<String>,
    /// `app_opened`: back from the background.
    pub from_background: bool,
}

/// Reads the contexts and lifecycle events of an app.
pub fn contexts(conn: &Connection, app_id: &str) -> rusqlite::Result<Contexts> {
    let mut out = Contexts::default();
    let mut st = conn.prepare(
        "SELECT device_id, context, count(*) FROM event_contexts WHERE app_id = ?1 \
         GROUP BY device_id, context ORDER BY device_id, min(seq)",
    )?;
    let rows = st.query_map([app_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (device, ctx, n) = row?;
        out.devices
            .entry(device)
            .or_default()
            .contexts
            .push(ContextRow {
                context: serde_json::from_str(&ctx).ok(),
                events: u64::try_from(n).unwrap_or(0),
            });
    }
    let mut st = conn.prepare(
        "SELECT device_id, seq, kind, app_version, previous_version, previous_build, from_background \
         FROM lifecycle_events WHERE app_id = ?1 ORDER BY device_id, seq",
    )?;
    let rows = st.query_map([app_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            LifecycleRow {
                seq: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                kind: r.get(2)?,
                app_version: r.get(3)?,
                previous_version: r.get(4)?,
                previous_build: r.get(5)?,
                from_background: r.get::<_, i64>(6)? != 0,
            },
        ))
    })?;
    for row in rows {
        let (device, l) = row?;
        match l.kind.as_str() {
            "app_installed" => out.installs += 1,
            "app_updated" => out.updates += 1,
            _ => out.opens += 1,
        }
        out.devices.entry(device).or_default().lifecycle.push(l);
    }
    Ok(out)
}
