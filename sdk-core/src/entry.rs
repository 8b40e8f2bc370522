//! What the journal records: events and the state changes that affect the events
//! recorded after them, in the order the app made the calls.

use serde::{Deserialize, Serialize};
use tern_protocol::{EventBody, SessionId, UserId};

/// One journal entry. MessagePack with named fields and an internal `k` tag, so an
/// older SDK reading a journal written by a newer one (app downgrade) skips entry kinds
/// it does not know instead of failing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Entry {
    /// An event, recorded at `ts_ms` in session `session`.
    Event {
        /// Device clock, Unix ms.
        ts_ms: i64,
        /// The open session, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionId>,
        /// The event.
        body: EventBody,
    },
    /// `identify`: events after this entry belong to `user` (`None`: anonymous).
    Identify {
        /// The new user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// An entry kind this version does not know; skipped.
    #[serde(other)]
    Unknown,
}

impl Entry {
    /// Encodes the entry as a journal payload.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain types cannot fail.
        tern_protocol::encode_payload(self).unwrap_or_default()
    }

    /// Decodes a journal payload; `None` if it is not a valid entry.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        tern_protocol::decode_payload(bytes).ok()
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
        ];
        for e in entries {
            assert_eq!(Entry::decode(&e.encode()), Some(e));
        }
        #[derive(Serialize)]
        struct Future {
            k: &'static str,
            x: u8,
        }
        let bytes = tern_protocol::encode_payload(&Future {
            k: "consent_v2",
            x: 1,
        })
        .unwrap();
        assert_eq!(Entry::decode(&bytes), Some(Entry::Unknown));
        assert_eq!(Entry::decode(b"\xc1garbage"), None);
    }
}
