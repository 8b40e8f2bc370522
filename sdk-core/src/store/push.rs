//! The device's push token in the store (protocol §8.3).
//!
//! The token the app set last is kept in the store meta (`push`, with the user it was
//! last recorded under and when) — in the same transaction as the events, so what the
//! store knows and what it recorded never disagree after a crash. Applying the journal
//! in order, the store records a `push_token` event:
//!
//! * for `Entry::PushToken` when the token differs from the one kept (or was last
//!   recorded under another user) — an unchanged token records nothing;
//! * after `identify`, `alias` and `reset` when the user differs from the one the token
//!   was last recorded under: under the new user, so the backend moves the token;
//! * for `Entry::PushRefresh` when the last one is at least its `min_age_ms` old;
//! * with `cleared` when opting out, on `delete_local_data` and `request_deletion`
//!   (after the deletion), and when messaging consent is denied, forgetting the token;
//! * again when messaging consent is granted (a token set while it was denied never
//!   left the device: its event was not kept).
//!
//! **The opt-out gate.** The cleared event of an opt-out is recorded although the
//! device is opted out, and its sequence number is kept (`push_clear`): batches never
//! put it with other events ([`Db::form_batches`]), and while opted out the store
//! hands out that batch alone ([`Db::next_push_clear_batch`]). Events kept from before
//! the opt-out stay on the device, as without push.

use rusqlite::Connection;
use tern_protocol::{AppId, EventBody, PushEnvironment, PushProvider, SdkInfo, SessionId, UserId};

use crate::error::Result;
use crate::store::entry::Entry;
use crate::store::{meta_get, Db, Meta, OutgoingBatch};

/// The push token the device holds, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushState {
    /// Who delivers to the device.
    pub provider: PushProvider,
    /// The APNs environment (absent for FCM).
    pub environment: Option<PushEnvironment>,
    /// The token.
    pub token: String,
    /// The user the last `push_token` event was recorded under (`None`: anonymous).
    pub sent_user: Option<UserId>,
    /// When the last `push_token` event was recorded (device clock, Unix ms).
    pub sent_ms: i64,
}

tern_protocol::wire_struct!(PushState {
    provider: req,
    environment: omit,
    token: req,
    sent_user: omit,
    sent_ms: req,
});

/// The last cleared token recorded at an opt-out, and its event's sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushClear {
    /// The `seq` of the cleared `push_token` event.
    pub seq: u64,
    /// The token given up.
    pub state: PushState,
}

tern_protocol::wire_struct!(PushClear {
    seq: req,
    state: req
});

impl PushState {
    fn body(&self, cleared: bool) -> EventBody {
        EventBody::PushToken {
            provider: self.provider.clone(),
            environment: self.environment.clone(),
            token: self.token.clone(),
            cleared,
        }
    }
}

/// A `push_token` event an entry implies.
pub(super) struct Implied {
    pub ts_ms: i64,
    pub session: Option<SessionId>,
    pub body: EventBody,
    /// Recorded although opted out: the cleared token of an opt-out.
    pub exempt: bool,
}

/// Reads the push state of the meta table (absent or unreadable: none).
pub(super) fn load(conn: &Connection) -> rusqlite::Result<(Option<PushState>, Option<PushClear>)> {
    let push = meta_get::<Vec<u8>>(conn, "push")?
        .and_then(|b| tern_protocol::wire::from_slice::<PushState>(&b).ok());
    let clear = meta_get::<Vec<u8>>(conn, "push_clear")?
        .and_then(|b| tern_protocol::wire::from_slice::<PushClear>(&b).ok());
    Ok((push, clear))
}

/// The meta rows of the push state (what [`load`] reads).
pub(super) fn rows(m: &Meta, out: &mut super::MetaRows) {
    out.push((
        "push",
        m.push.as_ref().map(tern_protocol::wire::to_vec).into(),
    ));
    out.push((
        "push_clear",
        m.push_clear
            .as_ref()
            .map(tern_protocol::wire::to_vec)
            .into(),
    ));
}

/// The `push_token` event `entry` implies, given the meta after the entry's own effect
/// (the user set, the opt-out switched, the data deleted); updates the push state.
/// `now_ms` dates the events of entries that carry no time (`identify`, `reset`,
/// `opt_out`, `delete_local_data`).
pub(super) fn implied(meta: &mut Meta, entry: &Entry, now_ms: i64) -> Option<Implied> {
    let record = |meta: &mut Meta, ts_ms: i64, session: Option<SessionId>| {
        let user = meta.user.clone();
        let p = meta.push.as_mut()?;
        p.sent_user = user;
        p.sent_ms = ts_ms;
        Some(Implied {
            ts_ms,
            session,
            body: p.body(false),
            exempt: false,
        })
    };
    match entry {
        Entry::PushToken {
            ts_ms,
            session,
            provider,
            environment,
            token,
        } => {
            if meta.opted_out {
                return None;
            }
            let unchanged = meta.push.as_ref().is_some_and(|p| {
                p.provider == *provider
                    && p.environment == *environment
                    && p.token == *token
                    && p.sent_user == meta.user
            });
            if unchanged {
                return None;
            }
            meta.push = Some(PushState {
                provider: provider.clone(),
                environment: environment.clone(),
                token: token.clone(),
                sent_user: None,
                sent_ms: *ts_ms,
            });
            record(meta, *ts_ms, *session)
        }
        Entry::PushRefresh {
            ts_ms,
            session,
            min_age_ms,
        } => {
            let due = meta.push.as_ref().is_some_and(|p| {
                i128::from(*ts_ms) - i128::from(p.sent_ms) >= i128::from(*min_age_ms)
            });
            if meta.opted_out || !due {
                return None;
            }
            record(meta, *ts_ms, *session)
        }
        Entry::Identify { .. } | Entry::Alias { .. } | Entry::Reset { .. } => {
            let moved = meta.push.as_ref().is_some_and(|p| p.sent_user != meta.user);
            if meta.opted_out || !moved {
                return None;
            }
            let (ts_ms, session) = match entry {
                Entry::Alias { ts_ms, session, .. } => (*ts_ms, *session),
                _ => (now_ms, None),
            };
            record(meta, ts_ms, session)
        }
        Entry::OptOut { opted_out: true } => {
            let p = meta.push.take()?;
            Some(Implied {
                ts_ms: now_ms,
                session: None,
                body: p.body(true),
                exempt: true,
            })
        }
        Entry::SetConsent { purpose, state } if purpose == "messaging" => match state.as_str() {
            // Messaging denied: the token is given up as at an opt-out (the cleared
            // event is sent whatever the consent); the app sets it again to subscribe.
            "denied" => {
                let p = meta.push.take()?;
                Some(Implied {
                    ts_ms: now_ms,
                    session: None,
                    body: p.body(true),
                    exempt: false,
                })
            }
            // Granted: a token whose event was not kept (set while messaging was
            // denied) never left; record it now.
            "granted"
                if !meta.opted_out && meta.push.as_ref().is_some_and(|p| p.sent_ms == NOT_SENT) =>
            {
                record(meta, now_ms, None)
            }
            _ => None,
        },
        Entry::DeleteLocalData | Entry::RequestDeletion { .. } => {
            // The sequence numbers start again: the old cleared event's is void. Opted
            // out, the token was given up at the opt-out and its event was deleted with
            // the rest, so it is recorded again.
            let old_clear = meta.push_clear.take();
            let (p, exempt) = match meta.push.take() {
                Some(p) => (p, meta.opted_out),
                None if meta.opted_out => (old_clear?.state, true),
                None => return None,
            };
            Some(Implied {
                ts_ms: now_ms,
                session: None,
                body: p.body(true),
                exempt,
            })
        }
        _ => None,
    }
}

/// `sent_ms` of a token whose last `push_token` event was not kept (messaging consent
/// denied): recorded again when messaging is granted, due for a refresh at once.
pub(super) const NOT_SENT: i64 = i64::MIN;

/// The event `body` was not kept (consent): a `push_token` of the current token is
/// marked as never sent.
pub(super) fn not_kept(meta: &mut Meta, body: &EventBody) {
    if let (
        EventBody::PushToken {
            token,
            cleared: false,
            ..
        },
        Some(p),
    ) = (body, meta.push.as_mut())
    {
        if p.token == *token {
            p.sent_ms = NOT_SENT;
        }
    }
}

/// An exempt event was stored with `seq`: remember it as the opt-out's cleared token.
pub(super) fn stored_exempt(meta: &mut Meta, seq: u64, body: &EventBody) {
    if let EventBody::PushToken {
        provider,
        environment,
        token,
        ..
    } = body
    {
        meta.push_clear = Some(PushClear {
            seq,
            state: PushState {
                provider: provider.clone(),
                environment: environment.clone(),
                token: token.clone(),
                sent_user: meta.user.clone(),
                sent_ms: 0,
            },
        });
    }
}

impl Db {
    /// The `seq` of the opt-out's cleared `push_token` event, which batches never
    /// share with other events.
    pub(super) fn push_clear_seq(&self) -> Option<i64> {
        self.meta
            .push_clear
            .as_ref()
            .and_then(|c| i64::try_from(c.seq).ok())
    }

    /// While opted out: the batch holding the opt-out's cleared `push_token` event, the
    /// only one that leaves the device then (see the module docs). `None` when there is
    /// none (never formed, already delivered, or in flight).
    pub fn next_push_clear_batch(
        &mut self,
        app_id: &AppId,
        sdk: &SdkInfo,
    ) -> Result<Option<OutgoingBatch>> {
        match self.push_clear_seq() {
            Some(seq) => self.next_batch_from(app_id, sdk, Some(seq)),
            None => Ok(None),
        }
    }

    /// The push token the store holds (applied so far).
    pub fn push_state(&self) -> Option<&PushState> {
        self.meta.push.as_ref()
    }
}
