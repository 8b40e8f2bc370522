//! Consent per purpose (protocol §8.2) and deletion requests.
//!
//! Each [`Purpose`] (the mapping of event kinds to purposes is the one exhaustive
//! `match` of [`tern_protocol::EventBody::purpose`]) has a [`ConsentState`]:
//!
//! * **granted**: events of the purpose are stored and sent as usual;
//! * **pending**: they are recorded and kept on the device in the `held_events`
//!   table, without a sequence number, and never put in a batch. At most
//!   [`ConsentConfig::max_pending_events`] are kept; beyond that the **oldest** held
//!   event is dropped (as the store's own overflow does), counted in
//!   [`ConsentCounters::pending_overflow`]. When the purpose is granted they move into
//!   the queue in their recorded order (each with its original time, user and
//!   anonymous id; sequence numbers are given then, so a backend sees no gap); when it
//!   is denied they are deleted, counted in [`ConsentCounters::pending_discarded`];
//! * **denied**: events of the purpose are not kept. A recording call returns `Ok`
//!   (the app did nothing wrong) and the event is counted in
//!   [`ConsentCounters::denied`]; an event already in the journal when the denial is
//!   applied is discarded and counted the same way.
//!
//! `set_consent` goes through the journal like an event (ordered with the calls
//! around it, durable when it returns); the store keeps the state in its `meta` table
//! and in the journal marker. Until a purpose's state is first set, the
//! [`ConsentConfig::default_state`] of the SDK options applies; once set, the stored
//! state wins over the option.
//!
//! Events held while a purpose's state came from the option follow the option when it
//! changes (an app update): released or deleted when the store next applies records.
//!
//! Compatibility: the journal entries and the two tables are additive; an older SDK
//! (an app downgraded) skips the entries, leaves the tables alone — held events and
//! waiting deletion requests stay until a version that knows them runs — and does not
//! apply the states (it records everything, as before consent existed). A lost
//! `tern.db` continues with the states of the journal marker; its held events and
//! waiting deletion requests are lost with it.
//!
//! A **deletion request** (`request_deletion`) records one `deletion_request` event
//! under the current device id — whatever the consent states and the opt-out, it is
//! the person's own request — and then deletes the local data as
//! `delete_local_data` does (new device id). The request is kept apart (the
//! `deletion_requests` table, at most [`MAX_DELETION_REQUESTS`] rows) with its batch
//! id fixed, and sent before anything else, also while opted out.

pub use tern_protocol::Purpose;

/// The most deletion requests waiting to be sent; beyond it the oldest is dropped
/// (counted in [`ConsentCounters::deletion_overflow`]). Each request names a different
/// device id (every request changes it), so this bounds a loop of requests.
pub const MAX_DELETION_REQUESTS: u64 = 16;

/// The most events kept while a purpose's consent is pending, by default.
pub const DEFAULT_MAX_PENDING_EVENTS: u64 = 1000;

/// The consent state of one purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConsentState {
    /// Events of the purpose are stored and sent.
    #[default]
    Granted,
    /// Events of the purpose are not kept.
    Denied,
    /// Events of the purpose are kept on the device, not sent, until a decision.
    Pending,
}

impl ConsentState {
    /// The state's name as stored (`granted`, `denied`, `pending`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentState::Granted => "granted",
            ConsentState::Denied => "denied",
            ConsentState::Pending => "pending",
        }
    }

    /// The state named `s`, if this version knows it.
    pub fn parse(s: &str) -> Option<ConsentState> {
        [
            ConsentState::Granted,
            ConsentState::Denied,
            ConsentState::Pending,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

    /// As a small integer (for atomics).
    pub(crate) fn code(self) -> u8 {
        match self {
            ConsentState::Granted => 0,
            ConsentState::Denied => 1,
            ConsentState::Pending => 2,
        }
    }

    /// From [`ConsentState::code`].
    pub(crate) fn from_code(c: u8) -> ConsentState {
        match c {
            1 => ConsentState::Denied,
            2 => ConsentState::Pending,
            _ => ConsentState::Granted,
        }
    }
}

/// The consent state of every purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConsentStates {
    /// [`Purpose::Analytics`].
    pub analytics: ConsentState,
    /// [`Purpose::Messaging`].
    pub messaging: ConsentState,
}

impl ConsentStates {
    /// Every purpose in `state`.
    pub fn all(state: ConsentState) -> Self {
        ConsentStates {
            analytics: state,
            messaging: state,
        }
    }

    /// The state of `purpose`.
    pub fn get(&self, purpose: Purpose) -> ConsentState {
        match purpose {
            Purpose::Analytics => self.analytics,
            Purpose::Messaging => self.messaging,
        }
    }

    /// Sets the state of `purpose`.
    pub fn set(&mut self, purpose: Purpose, state: ConsentState) {
        match purpose {
            Purpose::Analytics => self.analytics = state,
            Purpose::Messaging => self.messaging = state,
        }
    }

    /// Reads the text form kept in the store (`analytics=granted,messaging=pending`)
    /// over `base`: purposes or states this version
    /// does not know are ignored.
    pub(crate) fn from_text(text: &str, base: ConsentStates) -> ConsentStates {
        let mut out = base;
        for part in text.split(',') {
            if let Some((p, s)) = part.split_once('=') {
                if let (Some(p), Some(s)) = (Purpose::parse(p), ConsentState::parse(s)) {
                    out.set(p, s);
                }
            }
        }
        out
    }
}

/// The consent options of the SDK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsentConfig {
    /// The state of a purpose until it is first set (default: granted, so apps that
    /// never ask for consent keep working).
    pub default_state: ConsentStates,
    /// Most events kept while consent is pending (all purposes together); the oldest
    /// goes first beyond it. Default [`DEFAULT_MAX_PENDING_EVENTS`].
    pub max_pending_events: u64,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            default_state: ConsentStates::default(),
            max_pending_events: DEFAULT_MAX_PENDING_EVENTS,
        }
    }
}

/// Consent counters. Cumulative (kept in the store's `meta` table); not sent upstream
/// (the backend is not told what the person did not consent to).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsentCounters {
    /// Events not kept because their purpose was denied.
    pub denied: u64,
    /// Held events deleted when their purpose was denied.
    pub pending_discarded: u64,
    /// Held events dropped (oldest first) beyond `max_pending_events`.
    pub pending_overflow: u64,
    /// Held events released into the queue when their purpose was granted.
    pub pending_released: u64,
    /// Events held now (a gauge).
    pub pending_now: u64,
    /// Deletion requests recorded.
    pub deletion_requests: u64,
    /// Deletion requests acknowledged by a relay.
    pub deletion_requests_sent: u64,
    /// Deletion requests dropped beyond [`MAX_DELETION_REQUESTS`].
    pub deletion_overflow: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_and_unknown_parts_are_ignored() {
        let s = ConsentStates {
            analytics: ConsentState::Pending,
            messaging: ConsentState::Denied,
        };
        let text = "analytics=pending,messaging=denied";
        assert_eq!(ConsentStates::from_text(text, ConsentStates::default()), s);
        let base = ConsentStates::all(ConsentState::Denied);
        let read = ConsentStates::from_text("ads=granted,analytics=maybe,messaging=granted", base);
        assert_eq!(read.analytics, ConsentState::Denied);
        assert_eq!(read.messaging, ConsentState::Granted);
        for c in [
            ConsentState::Granted,
            ConsentState::Denied,
            ConsentState::Pending,
        ] {
            assert_eq!(ConsentState::from_code(c.code()), c);
            assert_eq!(ConsentState::parse(c.as_str()), Some(c));
        }
    }
}
