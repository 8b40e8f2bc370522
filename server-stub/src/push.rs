//! Push tokens and push events (protocol §8.3), as a backend keeps them: each app's
//! tokens with the device and the user they belong to, and per campaign how many
//! pushes were received and opened.
//!
//! Written in the ingest transaction, for the events of fresh batches only, each event
//! once (keyed like the events, `(app, device, seq)`: a resent event changes nothing).
//! A token is stored once per app (keyed by its value): a `push_token` moves it to the
//! event's device and user — off the user it was stored under — and replaces that
//! device's earlier token; a cleared one removes it wherever it is. Events of one
//! device apply in `seq` order: one older than what the device's token row was last
//! written by (a batch kept back by an opt-out and delivered later) changes nothing.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use tern_protocol::{EventBatch, EventBody};

/// Tables, created when the store opens.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS push_tokens (
    app_id       TEXT NOT NULL,
    token        TEXT NOT NULL,
    provider     TEXT NOT NULL,
    environment  TEXT,
    device_id    TEXT NOT NULL,
    user_id      TEXT,
    seq          INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (app_id, token)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS push_tokens_by_device ON push_tokens (app_id, device_id);
CREATE TABLE IF NOT EXISTS push_device_seq (
    app_id    TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (app_id, device_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS push_seen (
    app_id    TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (app_id, device_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS push_campaigns (
    app_id      TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    action      TEXT NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (app_id, campaign_id, kind, action)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS push_counts (
    app_id TEXT NOT NULL,
    what   TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (app_id, what)
) WITHOUT ROWID;
";

fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn count(tx: &Transaction<'_>, app: &str, what: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO push_counts (app_id, what, n) VALUES (?1, ?2, 1)
         ON CONFLICT (app_id, what) DO UPDATE SET n = n + 1",
    )?
    .execute(params![app, what])?;
    Ok(())
}

/// Records the push events of a freshly stored batch.
pub fn record(tx: &Transaction<'_>, batch: &EventBatch) -> rusqlite::Result<()> {
    let app = batch.app_id.as_str();
    let device = batch.device_id.to_string();
    for e in &batch.events {
        let is_push = matches!(
            e.body,
            EventBody::PushToken { .. }
                | EventBody::PushReceived { .. }
                | EventBody::PushOpened { .. }
        );
        if !is_push {
            continue;
        }
        let seq = sql_int(e.seq);
        let fresh = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO push_seen (app_id, device_id, seq) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![app, device, seq])?
            == 1;
        if !fresh {
            continue;
        }
        match &e.body {
            EventBody::PushToken {
                provider,
                environment,
                token,
                cleared,
            } => {
                count(
                    tx,
                    app,
                    if *cleared {
                        "tokens_cleared"
                    } else {
                        "token_events"
                    },
                )?;
                let newest: Option<i64> = tx
                    .prepare_cached(
                        "SELECT seq FROM push_device_seq WHERE app_id = ?1 AND device_id = ?2",
                    )?
                    .query_row(params![app, device], |r| r.get(0))
                    .optional()?;
                if newest.is_some_and(|n| n > seq) {
                    count(tx, app, "token_events_stale")?;
                    continue;
                }
                tx.prepare_cached(
                    "INSERT INTO push_device_seq (app_id, device_id, seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT (app_id, device_id) DO UPDATE SET seq = excluded.seq",
                )?
                .execute(params![app, device, seq])?;
                // The device's earlier token is replaced (or, cleared, removed).
                tx.prepare_cached("DELETE FROM push_tokens WHERE app_id = ?1 AND device_id = ?2")?
                    .execute(params![app, device])?;
                if *cleared {
                    tx.prepare_cached("DELETE FROM push_tokens WHERE app_id = ?1 AND token = ?2")?
                        .execute(params![app, token])?;
                } else {
                    tx.prepare_cached(
                        "INSERT INTO push_tokens (app_id, token, provider, environment, device_id, user_id, seq, last_seen_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (app_id, token) DO UPDATE SET provider = excluded.provider,
                           environment = excluded.environment, device_id = excluded.device_id,
                           user_id = excluded.user_id, seq = excluded.seq,
                           last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
                    )?
                    .execute(params![
                        app,
                        token,
                        provider.as_str(),
                        environment.as_ref().map(|e| e.as_str()),
                        device,
                        e.user_id.as_ref().map(|u| u.as_str()),
                        seq,
                        e.ts_ms
                    ])?;
                }
            }
            EventBody::PushReceived { campaign_id } => {
                campaign(tx, app, campaign_id, "received", "")?;
            }
            EventBody::PushOpened {
                campaign_id,
                action,
            } => {
                campaign(
                    tx,
                    app,
                    campaign_id,
                    "opened",
                    action.as_deref().unwrap_or(""),
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn campaign(
    tx: &Transaction<'_>,
    app: &str,
    campaign_id: &str,
    kind: &str,
    action: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO push_campaigns (app_id, campaign_id, kind, action, n) VALUES (?1, ?2, ?3, ?4, 1)
         ON CONFLICT (app_id, campaign_id, kind, action) DO UPDATE SET n = n + 1",
    )?
    .execute(params![app, campaign_id, kind, action])?;
    Ok(())
}

/// `GET /verify/apps/{app_id}/push`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushView {
    /// Per device, its current token.
    pub devices: BTreeMap<String, TokenRow>,
    /// Per user, the tokens of the user's devices, sorted.
    pub users: BTreeMap<String, Vec<String>>,
    /// Per campaign: pushes received, opened, and opened per action (`""`: the
    /// default tap).
    pub campaigns: BTreeMap<String, CampaignRow>,
    /// `push_token` events stored (not cleared), cleared ones, and those older than
    /// what their device had sent (ignored).
    pub token_events: u64,
    /// Cleared `push_token` events stored.
    pub tokens_cleared: u64,
    /// `push_token` events older than their device's newest one (changed nothing).
    pub token_events_stale: u64,
}

/// A stored token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRow {
    /// The token.
    pub token: String,
    /// `fcm`, `apns`, ...
    pub provider: String,
    /// The APNs environment.
    pub environment: Option<String>,
    /// The user it belongs to (`None`: anonymous).
    pub user_id: Option<String>,
    /// Device time of the newest `push_token` event that named it (Unix ms).
    pub last_seen_ms: i64,
}

/// Push counts of one campaign.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRow {
    /// `push_received` events.
    pub received: u64,
    /// `push_opened` events.
    pub opened: u64,
    /// `push_opened` events per action.
    pub actions: BTreeMap<String, u64>,
}

/// Reads the push state of an app.
pub fn view(conn: &Connection, app_id: &str) -> rusqlite::Result<PushView> {
    let mut out = PushView::default();
    let mut st = conn.prepare(
        "SELECT device_id, token, provider, environment, user_id, last_seen_ms FROM push_tokens WHERE app_id = ?1",
    )?;
    let rows = st.query_map([app_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            TokenRow {
                token: r.get(1)?,
                provider: r.get(2)?,
                environment: r.get(3)?,
                user_id: r.get(4)?,
                last_seen_ms: r.get(5)?,
            },
        ))
    })?;
    for row in rows {
        let (device, t) = row?;
        if let Some(u) = &t.user_id {
            out.users
                .entry(u.clone())
                .or_default()
                .push(t.token.clone());
        }
        out.devices.insert(device, t);
    }
    for tokens in out.users.values_mut() {
        tokens.sort();
    }
    let mut st =
        conn.prepare("SELECT campaign_id, kind, action, n FROM push_campaigns WHERE app_id = ?1")?;
    let rows = st.query_map([app_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
        ))
    })?;
    for row in rows {
        let (c, kind, action, n) = row?;
        let c = out.campaigns.entry(c).or_default();
        if kind == "received" {
            c.received += n;
        } else {
            c.opened += n;
            *c.actions.entry(action).or_default() += n;
        }
    }
    let mut st = conn.prepare("SELECT what, n FROM push_counts WHERE app_id = ?1")?;
    let rows = st.query_map([app_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        ))
    })?;
    for row in rows {
        let (what, n) = row?;
        match what.as_str() {
            "token_events" => out.token_events = n,
            "tokens_cleared" => out.tokens_cleared = n,
            "token_events_stale" => out.token_events_stale = n,
            _ => {}
        }
    }
    Ok(out)
}
