//! Identities (protocol §8.1): the alias table and the identity every stored event was
//! recorded under, so the verification API can show each identity's events and the
//! per-user histories merged through aliases.
//!
//! Written in the ingest transaction, for the events of fresh batches only, with the
//! same keys as the events (`(app, device, seq)`): a resent batch or event is not
//! counted twice. The first alias of an anonymous id wins; later ones are counted.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, Transaction};
use serde::{Deserialize, Serialize};
use tern_protocol::{EventBatch, EventBody};

/// Tables, created when the store opens.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS aliases (
    app_id       TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    seen         INTEGER NOT NULL,
    PRIMARY KEY (app_id, anonymous_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_identities (
    app_id    TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    identity  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    PRIMARY KEY (app_id, device_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS event_identities_by_identity ON event_identities (app_id, identity);
";

/// The identity an event was recorded under: `user:<id>`, `anonymous:<uuid>` (the
/// batch's anonymous id), or `device:<uuid>` for anonymous events of an SDK that sends
/// no anonymous id.
pub fn identity(batch: &EventBatch, user: Option<&str>) -> String {
    match (user, batch.anonymous_id) {
        (Some(u), _) => format!("user:{u}"),
        (None, Some(a)) => format!("anonymous:{a}"),
        (None, None) => format!("device:{}", batch.device_id),
    }
}

/// Records the identities and aliases of a freshly stored batch.
pub fn record(tx: &Transaction<'_>, batch: &EventBatch) -> rusqlite::Result<()> {
    let app = batch.app_id.as_str();
    let device = batch.device_id.to_string();
    let mut ident = tx.prepare_cached(
        "INSERT OR IGNORE INTO event_identities (app_id, device_id, seq, identity, kind) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut alias = tx.prepare_cached(
        "INSERT INTO aliases (app_id, anonymous_id, user_id, device_id, seen) VALUES (?1, ?2, ?3, ?4, 1)
         ON CONFLICT (app_id, anonymous_id) DO UPDATE SET seen = seen + 1",
    )?;
    for e in &batch.events {
        let fresh = ident.execute(params![
            app,
            device,
            i64::try_from(e.seq).unwrap_or(i64::MAX),
            identity(batch, e.user_id.as_ref().map(|u| u.as_str())),
            e.body.kind(),
        ])? == 1;
        if let (
            true,
            EventBody::Alias {
                anonymous_id,
                user_id,
            },
        ) = (fresh, &e.body)
        {
            alias.execute(params![
                app,
                anonymous_id.to_string(),
                user_id.as_str(),
                device
            ])?;
        }
    }
    Ok(())
}

/// `GET /verify/apps/{app_id}/identities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identities {
    /// The alias table: anonymous id → user (the first alias), with the device that
    /// sent it and how many distinct alias events named it.
    pub aliases: Vec<AliasRow>,
    /// Stored events per identity (`user:…`, `anonymous:…`, `device:…`).
    pub events: BTreeMap<String, u64>,
    /// The same events per identity and kind (`custom`, `alias`, `session_start`, …).
    pub kinds: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per user, the events of the merged history: the user's own plus those of every
    /// anonymous id aliased to it.
    pub merged: BTreeMap<String, u64>,
}

/// One row of the alias table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRow {
    /// The anonymous id.
    pub anonymous_id: String,
    /// The user it is linked to.
    pub user_id: String,
    /// The device whose alias event was stored first.
    pub device_id: String,
    /// Alias events naming this anonymous id (1 unless an app aliased it again).
    pub seen: u64,
}

/// Reads the identities of an app.
pub fn identities(conn: &Connection, app_id: &str) -> rusqlite::Result<Identities> {
    let mut out = Identities::default();
    let mut st = conn.prepare(
        "SELECT anonymous_id, user_id, device_id, seen FROM aliases WHERE app_id = ?1 ORDER BY anonymous_id",
    )?;
    out.aliases = st
        .query_map([app_id], |r| {
            Ok(AliasRow {
                anonymous_id: r.get(0)?,
                user_id: r.get(1)?,
                device_id: r.get(2)?,
                seen: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut st = conn.prepare(
        "SELECT identity, kind, count(*) FROM event_identities WHERE app_id = ?1 GROUP BY identity, kind",
    )?;
    let rows = st.query_map([app_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (identity, kind, n) = row?;
        let n = u64::try_from(n).unwrap_or(0);
        *out.events.entry(identity.clone()).or_default() += n;
        out.kinds.entry(identity).or_default().insert(kind, n);
    }
    for (identity, n) in &out.events {
        let user = if let Some(u) = identity.strip_prefix("user:") {
            Some(u.to_owned())
        } else if let Some(a) = identity.strip_prefix("anonymous:") {
            out.aliases
                .iter()
                .find(|row| row.anonymous_id == a)
                .map(|row| row.user_id.clone())
        } else {
            None
        };
        if let Some(u) = user {
            *out.merged.entry(u).or_default() += n;
        }
    }
    Ok(out)
}
