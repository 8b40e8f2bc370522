//! The store's part of consent and deletion requests (see [`crate::consent`]): the
//! `held_events` table (events kept while their purpose's consent is pending), the
//! `deletion_requests` table (requests waiting to be sent, each with the device id it
//! names and its fixed batch id), the consent state and counters in `meta`.
//!
//! Both tables are added, like `exposures`, within schema 2 with `IF NOT EXISTS`
//! whenever a file is opened: an older SDK leaves them alone (it sends nothing held,
//! and the deletion requests wait for a version that knows them).

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tern_protocol::{
    AnonymousId, AppId, BatchId, DeviceId, Event, EventBatch, EventBody, Purpose, SdkInfo,
    SessionId, UserId,
};

use crate::consent::{
    ConsentConfig, ConsentCounters, ConsentState, ConsentStates, MAX_DELETION_REQUESTS,
};
use crate::error::Result;
use crate::store::{i, meta_get, now_ms, u, Db, Meta, OutgoingBatch};

/// Added within schema 2 (see the module docs).
pub(crate) const CONSENT_TABLES: &str = "
CREATE TABLE IF NOT EXISTS held_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    purpose     TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL,
    user_id     TEXT,
    anon_id     TEXT,
    payload     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deletion_requests (
    batch_id   BLOB PRIMARY KEY NOT NULL,
    device_id  TEXT NOT NULL,
    anon_id    TEXT,
    payload    BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
);
";

const COUNTERS: [&str; 7] = [
    "consent_denied",
    "consent_pending_discarded",
    "consent_pending_overflow",
    "consent_pending_released",
    "deletion_requests",
    "deletion_requests_sent",
    "deletion_overflow",
];

fn counter_slots(c: &mut ConsentCounters) -> [&mut u64; 7] {
    [
        &mut c.denied,
        &mut c.pending_discarded,
        &mut c.pending_overflow,
        &mut c.pending_released,
        &mut c.deletion_requests,
        &mut c.deletion_requests_sent,
        &mut c.deletion_overflow,
    ]
}

/// Reads the consent state set so far (`consent` meta row, text form; purposes never
/// set are absent) and the counters.
pub(crate) fn load(conn: &Connection) -> rusqlite::Result<(String, ConsentCounters)> {
    let text = meta_get::<String>(conn, "consent")?.unwrap_or_default();
    let mut c = ConsentCounters::default();
    for (k, slot) in COUNTERS.iter().zip(counter_slots(&mut c)) {
        *slot = u(meta_get::<i64>(conn, k)?.unwrap_or(0));
    }
    let held: i64 = conn
        .prepare_cached("SELECT count(*) FROM held_events")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    c.pending_now = u(held);
    Ok((text, c))
}

/// The meta rows of what [`load`] reads.
pub(crate) fn rows(m: &Meta, out: &mut super::MetaRows) {
    out.push(("consent", rusqlite::types::Value::Text(m.consent.clone())));
    let mut c = m.consent_counters;
    for (k, slot) in COUNTERS.iter().zip(counter_slots(&mut c)) {
        out.push((k, rusqlite::types::Value::Integer(i(*slot))));
    }
}

/// Records `state` for `purpose` in the text form of the states set so far.
fn set_text(text: &str, purpose: Purpose, state: ConsentState) -> String {
    let mut parts: Vec<String> = text
        .split(',')
        .filter(|p| !p.is_empty() && p.split_once('=').map(|(k, _)| k) != Some(purpose.as_str()))
        .map(str::to_owned)
        .collect();
    parts.push(format!("{}={}", purpose.as_str(), state.as_str()));
    parts.join(",")
}

/// A held event released by a grant: the event (its `seq` to be given), the user and
/// the anonymous id (text) it was recorded under.
pub(crate) type Released = (Event, Option<UserId>, Option<String>);

/// A deletion request row: batch id, device id, anonymous id, event, attempts.
type DeletionRow = (Vec<u8>, String, Option<String>, Vec<u8>, i64);

/// Stores released events with `insert` (the `events` insert of [`Db::apply`]), each
/// with the next sequence number, under the identity it was recorded under. Returns the
/// events and bytes stored.
pub(crate) fn store_released(
    insert: &mut rusqlite::CachedStatement<'_>,
    meta: &mut Meta,
    released: Vec<Released>,
) -> Result<(u64, u64)> {
    let (mut n, mut bytes) = (0u64, 0u64);
    for (mut event, user, anon) in released {
        event.seq = meta.next_seq;
        let payload = tern_protocol::encode_payload(&event).unwrap_or_default();
        insert.execute(params![
            i(event.seq),
            event.ts_ms,
            user.as_ref().map(UserId::as_str),
            payload.len() as i64,
            crc32fast::hash(&payload),
            payload,
            anon,
            // Held events take the context in force when released.
            meta.context.current
        ])?;
        meta.next_seq += 1;
        n += 1;
        bytes += payload.len() as u64;
    }
    Ok((n, bytes))
}

/// What [`Db::consent_event`] decided for an event.
pub(crate) enum Verdict {
    /// Store it as usual.
    Store,
    /// Not stored (held or not kept): counted already.
    Done,
}

impl Db {
    /// Sets the consent options (before the journal is applied; the default state
    /// applies to purposes never set).
    pub fn set_consent_config(&mut self, config: ConsentConfig) {
        self.consent_config = config;
    }

    /// The consent state of every purpose as applied so far.
    pub fn consent(&self) -> ConsentStates {
        ConsentStates::from_text(&self.meta.consent, self.consent_config.default_state)
    }

    /// Deletion requests waiting to be sent (in flight included).
    pub fn deletion_requests_waiting(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM deletion_requests")?
            .query_row([], |r| r.get(0))?;
        Ok(u(n))
    }

    /// Applies a `set_consent` entry inside [`Db::apply`]'s transaction: the state is
    /// recorded; held events of the purpose are released into the queue (granted,
    /// returned in recorded order for the caller to store) or deleted (denied).
    pub(crate) fn apply_set_consent(
        tx: &Transaction<'_>,
        meta: &mut Meta,
        states: &mut ConsentStates,
        purpose: &str,
        state: &str,
    ) -> Result<Vec<Released>> {
        let (Some(purpose), Some(state)) = (Purpose::parse(purpose), ConsentState::parse(state))
        else {
            return Ok(Vec::new());
        };
        meta.consent = set_text(&meta.consent, purpose, state);
        states.set(purpose, state);
        Self::settle_held(tx, meta, purpose, state)
    }

    /// Held events of the purposes whose state is no longer pending — their state came
    /// from the option and the option changed (an app update): released or deleted as
    /// a `set_consent` would, at the start of [`Db::apply`].
    pub(crate) fn settle_stale_held(
        tx: &Transaction<'_>,
        meta: &mut Meta,
        states: &ConsentStates,
    ) -> Result<Vec<Released>> {
        let mut released = Vec::new();
        if meta.consent_counters.pending_now == 0 {
            return Ok(released);
        }
        for p in Purpose::ALL {
            let state = states.get(p);
            if state != ConsentState::Pending {
                released.extend(Self::settle_held(tx, meta, p, state)?);
            }
        }
        Ok(released)
    }

    /// Releases (granted) or deletes (denied) the held events of `purpose`.
    fn settle_held(
        tx: &Transaction<'_>,
        meta: &mut Meta,
        purpose: Purpose,
        state: ConsentState,
    ) -> Result<Vec<Released>> {
        let mut released = Vec::new();
        match state {
            ConsentState::Pending => {}
            ConsentState::Denied => {
                let n = tx
                    .prepare_cached("DELETE FROM held_events WHERE purpose = ?1")?
                    .execute([purpose.as_str()])?;
                meta.consent_counters.pending_discarded += n as u64;
                meta.consent_counters.pending_now =
                    meta.consent_counters.pending_now.saturating_sub(n as u64);
            }
            ConsentState::Granted => {
                let rows: Vec<(Option<String>, Option<String>, Vec<u8>)> = {
                    let mut st = tx.prepare_cached(
                        "SELECT user_id, anon_id, payload FROM held_events WHERE purpose = ?1 ORDER BY id",
                    )?;
                    let rows = st.query_map([purpose.as_str()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                let n = tx
                    .prepare_cached("DELETE FROM held_events WHERE purpose = ?1")?
                    .execute([purpose.as_str()])?;
                meta.consent_counters.pending_now =
                    meta.consent_counters.pending_now.saturating_sub(n as u64);
                for (user, anon, payload) in rows {
                    match tern_protocol::decode_payload::<Event>(&payload) {
                        Ok(e) => {
                            meta.consent_counters.pending_released += 1;
                            released.push((e, user.map(UserId::new), anon));
                        }
                        Err(_) => meta.health.dropped_corrupt += 1,
                    }
                }
            }
        }
        Ok(released)
    }

    /// Decides what happens to an event about to be stored, by its purpose's consent:
    /// stored, held (pending; the oldest held event goes beyond the bound) or not kept
    /// (denied).
    pub(crate) fn consent_event(
        config: &ConsentConfig,
        max_event_bytes: usize,
        tx: &Transaction<'_>,
        meta: &mut Meta,
        states: &ConsentStates,
        event: &Event,
    ) -> Result<Verdict> {
        let Some(purpose) = event.body.purpose() else {
            return Ok(Verdict::Store);
        };
        match states.get(purpose) {
            ConsentState::Granted => Ok(Verdict::Store),
            ConsentState::Denied => {
                meta.consent_counters.denied += 1;
                Ok(Verdict::Done)
            }
            ConsentState::Pending => {
                let payload = tern_protocol::encode_payload(event).unwrap_or_default();
                if payload.is_empty() || payload.len() > max_event_bytes {
                    meta.health.dropped_invalid += 1;
                    return Ok(Verdict::Done);
                }
                tx.prepare_cached("INSERT INTO held_events (purpose, recorded_ms, user_id, anon_id, payload) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![
                        purpose.as_str(),
                        event.ts_ms,
                        meta.user.as_ref().map(UserId::as_str),
                        meta.anonymous_id.to_string(),
                        payload
                    ],
                )?;
                meta.consent_counters.pending_now += 1;
                if meta.consent_counters.pending_now > config.max_pending_events {
                    let n = tx
                        .prepare_cached(
                            "DELETE FROM held_events WHERE id = (SELECT min(id) FROM held_events)",
                        )?
                        .execute([])?;
                    meta.consent_counters.pending_overflow += n as u64;
                    meta.consent_counters.pending_now -= n as u64;
                }
                Ok(Verdict::Done)
            }
        }
    }

    /// Keeps a deletion request naming the identities in `meta` (before the local
    /// data is deleted): its event takes the device's next sequence number, its batch
    /// id is fixed now. Beyond [`MAX_DELETION_REQUESTS`] the oldest is dropped.
    pub(crate) fn keep_deletion_request(
        tx: &Transaction<'_>,
        meta: &mut Meta,
        ts_ms: i64,
        session: Option<SessionId>,
    ) -> Result<()> {
        let event = Event {
            seq: meta.next_seq,
            ts_ms,
            user_id: meta.user.clone(),
            session_id: session,
            body: EventBody::DeletionRequest {
                device_id: meta.device_id,
                user_id: meta.user.clone(),
                anonymous_id: Some(meta.anonymous_id),
            },
        };
        let payload = tern_protocol::encode_payload(&event).unwrap_or_default();
        let id = BatchId::new_v7();
        tx.prepare_cached("INSERT INTO deletion_requests (batch_id, device_id, anon_id, payload, created_ms, attempts) VALUES (?1, ?2, ?3, ?4, ?5, 0)")?.execute(params![
                id.as_uuid().as_bytes().as_slice(),
                meta.device_id.to_string(),
                meta.anonymous_id.to_string(),
                payload,
                now_ms()
            ],
        )?;
        meta.consent_counters.deletion_requests += 1;
        let n: i64 = tx
            .prepare_cached("SELECT count(*) FROM deletion_requests")?
            .query_row([], |r| r.get(0))?;
        if u(n) > MAX_DELETION_REQUESTS {
            let gone = tx.prepare_cached("DELETE FROM deletion_requests WHERE batch_id = (SELECT batch_id FROM deletion_requests ORDER BY created_ms, rowid LIMIT 1)")?.execute([],
            )?;
            meta.consent_counters.deletion_overflow += gone as u64;
        }
        Ok(())
    }

    /// The oldest deletion request not in flight, as a batch of its own under the
    /// device id it names, now marked in flight.
    pub fn next_deletion_batch(
        &mut self,
        app_id: &AppId,
        sdk: &SdkInfo,
    ) -> Result<Option<OutgoingBatch>> {
        let rows: Vec<DeletionRow> = {
            let mut st = self.conn.prepare_cached(
                "SELECT batch_id, device_id, anon_id, payload, attempts FROM deletion_requests ORDER BY created_ms, rowid",
            )?;
            let rows = st.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (id_bytes, device, anon, payload, attempts) in rows {
            let parsed = <[u8; 16]>::try_from(id_bytes.as_slice())
                .ok()
                .map(BatchId::from_bytes)
                .zip(DeviceId::parse(&device).ok())
                .zip(tern_protocol::decode_payload::<Event>(&payload).ok());
            let Some(((id, device_id), event)) = parsed else {
                // Unreadable: nothing could ever send it.
                self.conn
                    .prepare_cached("DELETE FROM deletion_requests WHERE batch_id = ?1")?
                    .execute([&id_bytes])?;
                self.meta.health.dropped_corrupt += 1;
                self.save_meta_now()?;
                continue;
            };
            if self.in_flight.contains(&id) {
                continue;
            }
            self.in_flight.insert(id);
            let bytes = payload.len() as u64;
            return Ok(Some(OutgoingBatch {
                batch: EventBatch {
                    anonymous_id: anon.as_deref().and_then(|a| AnonymousId::parse(a).ok()),
                    batch_id: id,
                    app_id: app_id.clone(),
                    device_id,
                    sdk: sdk.clone(),
                    sent_at_ms: now_ms(),
                    attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
                    events: vec![event],
                    // The counters belong to the device id in use, not to this one.
                    health: tern_protocol::SdkHealth::default(),
                    // The request speaks for the device, not for a context.
                    context: None,
                },
                bytes,
            }));
        }
        Ok(None)
    }

    /// An upload outcome for batch `id`, if it is a deletion request's: accepted or
    /// rejected removes it (a rejection is counted in `dropped_rejected`), otherwise
    /// its attempt count grows. Returns whether `id` was one.
    pub(crate) fn deletion_outcome(&mut self, id: BatchId, done: Option<bool>) -> Result<bool> {
        let key = id.as_uuid().as_bytes().as_slice();
        let exists = self
            .conn
            .prepare_cached("SELECT 1 FROM deletion_requests WHERE batch_id = ?1")?
            .query_row([key], |_| Ok(()))
            .optional()?
            .is_some();
        if !exists {
            return Ok(false);
        }
        self.in_flight.remove(&id);
        match done {
            Some(accepted) => {
                self.conn
                    .prepare_cached("DELETE FROM deletion_requests WHERE batch_id = ?1")?
                    .execute([key])?;
                if accepted {
                    self.meta.consent_counters.deletion_requests_sent += 1;
                } else {
                    self.meta.health.dropped_rejected += 1;
                }
            }
            None => {
                self.conn
                    .prepare_cached(
                        "UPDATE deletion_requests SET attempts = attempts + 1 WHERE batch_id = ?1",
                    )?
                    .execute([key])?;
                self.meta.health.retries += 1;
            }
        }
        self.save_meta_now()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_text_replaces_one_purpose_and_keeps_the_others() {
        let t = set_text("", Purpose::Analytics, ConsentState::Pending);
        assert_eq!(t, "analytics=pending");
        let t = set_text(&t, Purpose::Messaging, ConsentState::Denied);
        let t = set_text(&t, Purpose::Analytics, ConsentState::Granted);
        assert_eq!(t, "messaging=denied,analytics=granted");
        let s = ConsentStates::from_text(&t, ConsentStates::all(ConsentState::Pending));
        assert_eq!(s.analytics, ConsentState::Granted);
        assert_eq!(s.messaging, ConsentState::Denied);
    }
}
