//! What the journal records: events and the state changes that affect the events
//! recorded after them, in the order the app made the calls.

use tern_protocol::{AnonymousId, EventBody, SessionId, UserId};

/// One journal entry. MessagePack with named fields and an internal `k` tag, so an
/// older SDK reading a journal written by a newer one (app downgrade) skips entry kinds
/// it does not know instead of failing.
#[derive(Clone, Debug, PartialEq)]
// The serde form is the test oracle for the hand-written encoding below.
#[cfg_attr(test, derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(test, serde(tag = "k", rename_all = "snake_case"))]
pub enum Entry {
    /// An event, recorded at `ts_ms` in session `session`.
    Event {
        /// Device clock, Unix ms.
        ts_ms: i64,
        /// The open session, if any.
        #[cfg_attr(test, serde(default, skip_serializing_if = "Option::is_none"))]
        session: Option<SessionId>,
        /// The event.
        body: EventBody,
    },
    /// `identify`: events after this entry belong to `user` (`None`: anonymous).
    Identify {
        /// The new user.
        #[cfg_attr(test, serde(default, skip_serializing_if = "Option::is_none"))]
        user: Option<UserId>,
    },
    /// `opt_out`: while true, events after this entry are discarded and nothing is
    /// uploaded.
    OptOut {
        /// The new state.
        opted_out: bool,
    },
    /// `delete_local_data`: everything recorded before this entry is deleted, and the
    /// device gets a new identity.
    DeleteLocalData,
    /// `alias`: an `alias` event linking the anonymous id in force to `user` is
    /// recorded under `user` (at `ts_ms`, in session `session`), and events after this
    /// entry belong to `user`.
    Alias {
        /// Device clock, Unix ms.
        ts_ms: i64,
        /// The open session, if any.
        #[cfg_attr(test, serde(default, skip_serializing_if = "Option::is_none"))]
        session: Option<SessionId>,
        /// The identified user.
        user: UserId,
    },
    /// `reset` (logout): events after this entry are anonymous, under the new
    /// anonymous id `anonymous_id` (chosen when the call was made, so a replay of the
    /// journal gives the same one), and the user properties are cleared.
    Reset {
        /// The new anonymous id.
        anonymous_id: AnonymousId,
    },
    /// `set_consent`: events of `purpose` after this entry follow consent `state`
    /// (see [`crate::consent`]). Names as text: a purpose or state this version does
    /// not know is skipped.
    SetConsent {
        /// The purpose (`analytics`, `messaging`).
        purpose: String,
        /// The state (`granted`, `denied`, `pending`).
        state: String,
    },
    /// `request_deletion`: a `deletion_request` event naming the device id, user and
    /// anonymous id in force is kept to be sent (at `ts_ms`, in session `session`),
    /// then the local data is deleted as by [`Entry::DeleteLocalData`].
    RequestDeletion {
        /// Device clock, Unix ms.
        ts_ms: i64,
        /// The open session, if any.
        #[cfg_attr(test, serde(default, skip_serializing_if = "Option::is_none"))]
        session: Option<SessionId>,
    },
    /// An entry kind this version does not know; skipped.
    #[cfg_attr(test, serde(other))]
    Unknown,
}

tern_protocol::wire_enum!(Entry, tag "k", other Unknown = "unknown" {
    Event = "event" { ts_ms: req, session: omit, body: req },
    Identify = "identify" { user: omit },
    OptOut = "opt_out" { opted_out: req },
    DeleteLocalData = "delete_local_data" {},
    Alias = "alias" { ts_ms: req, session: omit, user: req },
    Reset = "reset" { anonymous_id: req },
    SetConsent = "set_consent" { purpose: req, state: req },
    RequestDeletion = "request_deletion" { ts_ms: req, session: omit },
});

impl Entry {
    /// Encodes the entry as a journal payload.
    pub fn encode(&self) -> Vec<u8> {
        tern_protocol::wire::to_vec(self)
    }

    /// Decodes a journal payload; `None` if it is not a valid entry.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        tern_protocol::wire::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_kinds() {
        let entries = [
            Entry::Event {
                ts_ms: 5,
                session: Some(SessionId(9)),
                body: EventBody::SessionStart,
            },
            Entry::Identify {
                user: Some(UserId::new("u")),
            },
            Entry::Identify { user: None },
            Entry::OptOut { opted_out: true },
            Entry::DeleteLocalData,
            Entry::Alias {
                ts_ms: 7,
                session: Some(SessionId(2)),
                user: UserId::new("u"),
            },
            Entry::Alias {
                ts_ms: 8,
                session: None,
                user: UserId::new("v"),
            },
            Entry::Reset {
                anonymous_id: AnonymousId::random(),
            },
            Entry::SetConsent {
                purpose: "analytics".into(),
                state: "pending".into(),
            },
            Entry::RequestDeletion {
                ts_ms: 9,
                session: Some(SessionId(3)),
            },
            Entry::RequestDeletion {
                ts_ms: 10,
                session: None,
            },
        ];
        for e in entries {
            // Journals written by earlier versions (encoded through serde) read back,
            // and new ones are byte-identical to them.
            let oracle = rmp_serde::to_vec_named(&e).unwrap();
            assert_eq!(e.encode(), oracle, "{e:?}");
            assert_eq!(Entry::decode(&oracle), Some(e.clone()));
            assert_eq!(Entry::decode(&e.encode()), Some(e));
        }
        // {"k": "consent_v2", "x": 1}: a kind from a newer SDK.
        let mut w = tern_protocol::wire::Writer::new();
        w.map(2);
        w.field("k", "consent_v2");
        w.field("x", &1u32);
        let bytes = w.into_bytes();
        assert_eq!(Entry::decode(&bytes), Some(Entry::Unknown));
        assert_eq!(Entry::decode(b"\xc1garbage"), None);
    }
}
