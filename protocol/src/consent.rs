//! Consent purposes (protocol §8.2): which purpose each event kind serves. Consent
//! itself stays on the device; what this module fixes is the one mapping every
//! device applies, so that "the user granted analytics" means the same events
//! everywhere.

use crate::event::EventBody;

/// A purpose the person using the app can consent to separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Purpose {
    /// Product analytics: custom events, purchases, sessions, user properties,
    /// experiment exposures, aliases, lifecycle events.
    Analytics,
    /// Messaging: in-app message impressions, push tokens, pushes received and opened.
    Messaging,
}

impl Purpose {
    /// Every purpose, in a fixed order.
    pub const ALL: [Purpose; 2] = [Purpose::Analytics, Purpose::Messaging];

    /// The purpose's name (`analytics`, `messaging`).
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Analytics => "analytics",
            Purpose::Messaging => "messaging",
        }
    }

    /// The purpose named `s`, if this version knows it.
    pub fn parse(s: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl EventBody {
    /// The purpose an event of this kind serves, or `None` for an event that is sent
    /// whatever the consent (a `deletion_request`: the person's own request).
    ///
    /// One exhaustive `match` (inside the crate that defines [`EventBody`], so the
    /// compiler refuses a new kind until it is mapped here).
    pub fn purpose(&self) -> Option<Purpose> {
        match self {
            EventBody::Custom { .. }
            | EventBody::SessionStart
            | EventBody::SessionEnd { .. }
            | EventBody::Purchase { .. }
            | EventBody::UserProperties { .. }
            | EventBody::Exposure { .. }
            | EventBody::Alias { .. }
            | EventBody::AppInstalled
            | EventBody::AppUpdated { .. }
            | EventBody::AppOpened { .. } => Some(Purpose::Analytics),
            EventBody::MessageImpression { .. }
            | EventBody::PushReceived { .. }
            | EventBody::PushOpened { .. }
            | EventBody::PushToken { cleared: false, .. } => Some(Purpose::Messaging),
            // The person's own requests: a deletion, a push token given up (no more
            // pushes to it) — sent whatever the consent.
            EventBody::DeletionRequest { .. } | EventBody::PushToken { cleared: true, .. } => None,
            // Never produced by a device; counted with analytics if it ever were.
            EventBody::Unknown => Some(Purpose::Analytics),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_message_impressions_are_messaging() {
        for p in Purpose::ALL {
            assert_eq!(Purpose::parse(p.as_str()), Some(p));
        }
        assert_eq!(Purpose::parse("ads"), None);
        let shown = EventBody::MessageImpression {
            message_id: "m".into(),
            action: "shown".into(),
        };
        assert_eq!(shown.purpose(), Some(Purpose::Messaging));
        assert_eq!(EventBody::SessionStart.purpose(), Some(Purpose::Analytics));
        let deletion = EventBody::DeletionRequest {
            device_id: crate::DeviceId::from_bytes([1; 16]),
            user_id: None,
            anonymous_id: None,
        };
        assert_eq!(deletion.purpose(), None);
        let token = |cleared| EventBody::PushToken {
            provider: crate::PushProvider::Fcm,
            environment: None,
            token: "t".into(),
            cleared,
        };
        assert_eq!(token(false).purpose(), Some(Purpose::Messaging));
        assert_eq!(
            token(true).purpose(),
            None,
            "giving a token up is always sent"
        );
        let opened = EventBody::PushOpened {
            campaign_id: "c".into(),
            action: None,
        };
        assert_eq!(opened.purpose(), Some(Purpose::Messaging));
    }
}
