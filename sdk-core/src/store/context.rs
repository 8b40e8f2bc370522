//! The device and app context events are recorded in, and the app lifecycle events
//! (protocol §5.2.1, §8.4), as the store keeps them.
//!
//! # Contexts
//!
//! A context change is a journal record ([`Entry::Context`], or the context a
//! [`Entry::Launch`] starts with), applied in order with the events. The store keeps
//! the distinct contexts in the `contexts` table (`id → encoded AppContext`, the
//! install id filled in) and the current one's id in `meta`; each event row keeps the
//! id current when it was applied (`events.ctx_id`, NULL for events of SDKs without
//! contexts). Batches are split where the id changes, so a batch names the context its
//! events were recorded in, not the one in force when it is sent. The recording path
//! never sees any of it: `track()` writes the journal only.
//!
//! The table is bounded: on every change, rows that are neither current nor referenced
//! by a queued event are deleted; beyond [`MAX_CONTEXTS`] rows the oldest referenced
//! one is dropped and its events are sent without a context (counted in
//! [`ContextMeta::dropped`]), so a network that flaps while offline cannot grow it.
//!
//! # Lifecycle
//!
//! [`expand_launches`] turns each [`Entry::Launch`] into a context change and the
//! lifecycle events it implies, decided against [`ContextMeta`] as the records before it
//! left it — `app_installed` for a store this version created itself (no marker, no
//! file moved aside), `app_updated` when the version or build differs from the last
//! launch's (previous unknown for a store of an SDK without lifecycle events), then
//! `app_opened`. The new state is written in the transaction that stores the events
//! and moves the checkpoint past the record, so each is recorded exactly once, across
//! SIGKILL too. `delete_local_data` replaces the install id (with the device id) and
//! records no new install: the app was not installed again.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tern_protocol::{AppContext, EventBody, InstallId};

use super::{meta_get, meta_set, u, Result};
use crate::store::entry::Entry;
use crate::store::marker::LaunchState;

/// Most rows in the `contexts` table.
pub const MAX_CONTEXTS: usize = 64;

/// Added within schema 2 (see the store's module docs): the distinct contexts of the
/// queued events and the current one.
pub(super) const CONTEXTS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS contexts (
    id      INTEGER PRIMARY KEY NOT NULL,
    payload BLOB NOT NULL
);
";

/// The `events.ctx_id` column, added to any file lacking it (rule 1 of the store's
/// module docs): an older SDK names its columns and leaves it NULL.
const CTX_COLUMN: &str = "ALTER TABLE events ADD COLUMN ctx_id INTEGER";

/// Creates the table and the column where missing.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(CONTEXTS_TABLE)?;
    let has: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'ctx_id'")?
        .exists([])?;
    if !has {
        conn.execute_batch(CTX_COLUMN)?;
    }
    Ok(())
}

/// The context and lifecycle part of the store's persistent state (`meta` rows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextMeta {
    /// This installation's id: chosen when the store is created, replaced by
    /// `delete_local_data`.
    pub install_id: InstallId,
    /// The `contexts` row events are recorded in now.
    pub current: Option<i64>,
    /// The app version of the last launch applied.
    pub app_version: Option<String>,
    /// The app build of the last launch applied.
    pub app_build: Option<String>,
    /// A launch was applied in this store (or the one it continues): the versions are
    /// known.
    pub launched: bool,
    /// The store was created by this version and has not seen a launch: the next one
    /// is an install.
    pub install_pending: bool,
    /// Contexts dropped to keep the table bounded (their events left without one).
    pub dropped: u64,
}

impl ContextMeta {
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<ContextMeta> {
        let flag =
            |k: &str| -> rusqlite::Result<bool> { Ok(meta_get::<i64>(conn, k)?.unwrap_or(0) != 0) };
        Ok(ContextMeta {
            install_id: meta_get::<String>(conn, "install_id")?
                .and_then(|s| InstallId::parse(&s).ok())
                .unwrap_or_else(InstallId::random),
            current: meta_get::<i64>(conn, "context_id")?,
            app_version: meta_get::<String>(conn, "app_version")?,
            app_build: meta_get::<String>(conn, "app_build")?,
            launched: flag("launched")?,
            install_pending: flag("install_pending")?,
            dropped: u(meta_get::<i64>(conn, "contexts_dropped")?.unwrap_or(0)),
        })
    }

    /// Its meta rows (what [`ContextMeta::load`] reads).
    pub(super) fn rows(&self, out: &mut super::MetaRows) {
        use rusqlite::types::Value;
        out.push(("install_id", Value::Text(self.install_id.to_string())));
        out.push(("context_id", self.current.into()));
        out.push(("app_version", self.app_version.clone().into()));
        out.push(("app_build", self.app_build.clone().into()));
        out.push(("launched", Value::Integer(i64::from(self.launched))));
        out.push((
            "install_pending",
            Value::Integer(i64::from(self.install_pending)),
        ));
        out.push((
            "contexts_dropped",
            Value::Integer(i64::try_from(self.dropped).unwrap_or(i64::MAX)),
        ));
    }

    /// What the journal marker keeps of it.
    pub fn launch_state(&self) -> LaunchState {
        LaunchState {
            install_id: self.install_id,
            app_version: self.app_version.clone(),
            app_build: self.app_build.clone(),
            launched: self.launched,
        }
    }

    /// Continues from the marker's state (a store rebuilt after a loss): never a new
    /// install.
    pub fn adopt(&mut self, launch: Option<&LaunchState>) {
        self.install_pending = false;
        if let Some(l) = launch {
            self.install_id = l.install_id;
            self.app_version = l.app_version.clone();
            self.app_build = l.app_build.clone();
            self.launched = l.launched;
        }
    }
}

/// Marks a file just created by this version: its first launch is an install.
pub(super) fn mark_created(conn: &Connection) -> rusqlite::Result<()> {
    meta_set(conn, "install_pending", &1i64)
}

/// Replaces each [`Entry::Launch`] by what it records: its context as an
/// [`Entry::Context`], then (when its lifecycle events are on) the lifecycle events,
/// deciding against `state` and updating it. Borrows when there is no launch.
pub fn expand_launches<'a>(
    entries: &'a [Entry],
    state: &mut ContextMeta,
) -> std::borrow::Cow<'a, [Entry]> {
    if !entries.iter().any(|e| matches!(e, Entry::Launch { .. })) {
        return std::borrow::Cow::Borrowed(entries);
    }
    let mut out = Vec::with_capacity(entries.len() + 3);
    for e in entries {
        let Entry::Launch {
            ts_ms,
            context,
            lifecycle,
        } = e
        else {
            out.push(e.clone());
            continue;
        };
        out.push(Entry::Context {
            context: context.clone(),
        });
        let changed = !state.launched
            || state.app_version != context.app_version
            || state.app_build != context.app_build;
        let implied = if state.install_pending {
            Some(EventBody::AppInstalled)
        } else if !state.launched {
            // A store of an SDK from before lifecycle events: the app was updated to
            // this one; the previous version is unknown.
            Some(EventBody::AppUpdated {
                previous_version: None,
                previous_build: None,
            })
        } else if changed {
            Some(EventBody::AppUpdated {
                previous_version: state.app_version.clone(),
                previous_build: state.app_build.clone(),
            })
        } else {
            None
        };
        if *lifecycle {
            let opened = EventBody::AppOpened {
                from_background: false,
            };
            for body in implied.into_iter().chain([opened]) {
                out.push(Entry::Event {
                    ts_ms: *ts_ms,
                    session: None,
                    body,
                });
            }
        }
        state.install_pending = false;
        state.launched = true;
        state.app_version = context.app_version.clone();
        state.app_build = context.app_build.clone();
    }
    std::borrow::Cow::Owned(out)
}

/// Makes `context` (with the install id filled in) the current one: the row of an
/// identical context, or a new row; prunes rows no longer used. Returns the id.
pub(super) fn set_current(
    tx: &Transaction<'_>,
    state: &mut ContextMeta,
    context: &AppContext,
) -> Result<i64> {
    let mut ctx = context.clone();
    ctx.install_id = Some(state.install_id);
    let payload = tern_protocol::encode_payload(&ctx).unwrap_or_default();
    let found: Option<i64> = tx
        .prepare_cached("SELECT id FROM contexts WHERE payload = ?1")?
        .query_row([&payload], |r| r.get(0))
        .optional()?;
    let id = match found {
        Some(id) => id,
        None => {
            tx.prepare_cached("INSERT INTO contexts (payload) VALUES (?1)")?
                .execute([&payload])?;
            tx.last_insert_rowid()
        }
    };
    state.current = Some(id);
    prune(tx, state)?;
    Ok(id)
}

/// Deletes the rows neither current nor used by a queued event; beyond
/// [`MAX_CONTEXTS`], drops the oldest used ones (their events then go without one).
pub(super) fn prune(tx: &Transaction<'_>, state: &mut ContextMeta) -> Result<()> {
    let current = state.current.unwrap_or(-1);
    tx.prepare_cached(
        "DELETE FROM contexts WHERE id != ?1 \
         AND id NOT IN (SELECT ctx_id FROM events WHERE ctx_id IS NOT NULL)",
    )?
    .execute([current])?;
    let rows: i64 = tx
        .prepare_cached("SELECT count(*) FROM contexts")?
        .query_row([], |r| r.get(0))?;
    let over = usize::try_from(rows)
        .unwrap_or(0)
        .saturating_sub(MAX_CONTEXTS);
    if over > 0 {
        let oldest: Vec<i64> = {
            let mut st =
                tx.prepare_cached("SELECT id FROM contexts WHERE id != ?1 ORDER BY id LIMIT ?2")?;
            let ids = st.query_map(params![current, over as i64], |r| r.get(0))?;
            ids.collect::<rusqlite::Result<_>>()?
        };
        for id in oldest {
            tx.prepare_cached("UPDATE events SET ctx_id = NULL WHERE ctx_id = ?1")?
                .execute([id])?;
            tx.prepare_cached("DELETE FROM contexts WHERE id = ?1")?
                .execute([id])?;
            state.dropped += 1;
        }
        tracing::warn!(
            over,
            "too many distinct contexts queued: the oldest dropped"
        );
    }
    Ok(())
}

/// `delete_local_data`: a new install id, and the current context kept under it (the
/// table is emptied with the events).
pub(super) fn after_delete(tx: &Transaction<'_>, state: &mut ContextMeta) -> Result<()> {
    let current = match state.current {
        Some(id) => read(tx, id)?,
        None => None,
    };
    tx.prepare_cached("DELETE FROM contexts")?.execute([])?;
    state.install_id = InstallId::random();
    state.current = None;
    if let Some(ctx) = current {
        set_current(tx, state, &ctx)?;
    }
    Ok(())
}

/// The context of row `id`, if it is there and decodes.
pub(super) fn read(conn: &Connection, id: i64) -> Result<Option<AppContext>> {
    let payload: Option<Vec<u8>> = conn
        .prepare_cached("SELECT payload FROM contexts WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(payload.and_then(|p| tern_protocol::decode_payload::<AppContext>(&p).ok()))
}
