//! Which in-app message to show when a trigger fires (pure functions, no I/O).
//!
//! A message is eligible for a trigger when all of these hold:
//!
//! * its [`Trigger`] matches (session start, a custom event of that name, or
//!   `Immediate` when a bundle arrives); an unknown trigger never matches;
//! * `now` is inside `[starts_at_ms, ends_at_ms]` (each bound optional);
//! * targeting: the device's platform is listed (or the list is empty); every listed
//!   user property equals the user's value; the unit (user id, else device id) is
//!   inside `rollout_bp`, bucketed like a flag with the message id as salt
//!   (`tern_protocol::rollout`);
//! * pacing: fewer than `max_impressions` impressions so far (0 = unlimited) and at
//!   least `min_interval_s` since the last one.
//!
//! Among eligible messages the highest `priority` wins; ties go to the message listed
//! first in the bundle.

use std::collections::HashMap;

use tern_protocol::config::{ConfigBundle, InAppMessage, Trigger};
use tern_protocol::rollout::in_rollout;
use tern_protocol::Properties;

/// What fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fired {
    /// A session started.
    SessionStart,
    /// A custom event with this name was recorded.
    Event(String),
    /// A bundle was received (or loaded), or a message listener was added.
    Immediate,
}

/// How often a message was shown on this device (persisted in SQLite).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacingState {
    /// Impressions so far.
    pub impressions: u32,
    /// Unix ms of the last impression.
    pub last_shown_ms: Option<i64>,
}

/// Who and where the device is, for targeting.
#[derive(Clone, Copy, Debug)]
pub struct Audience<'a> {
    /// The app (bucketing input).
    pub app_id: &'a str,
    /// The bucketing unit: user id if identified, else device id.
    pub unit: &'a str,
    /// `android`, `ios`, ...
    pub platform: &'a str,
    /// The user's properties as set on this device.
    pub user_properties: &'a Properties,
}

fn trigger_matches(trigger: &Trigger, fired: &Fired) -> bool {
    match (trigger, fired) {
        (Trigger::SessionStart, Fired::SessionStart) => true,
        (Trigger::Immediate, Fired::Immediate) => true,
        (Trigger::Event { name }, Fired::Event(fired)) => name == fired,
        _ => false,
    }
}

/// Whether `message` may be shown for `fired` now.
pub fn eligible(
    message: &InAppMessage,
    fired: &Fired,
    who: &Audience<'_>,
    pacing: PacingState,
    now_ms: i64,
) -> bool {
    if !trigger_matches(&message.trigger, fired) {
        return false;
    }
    if message.starts_at_ms.is_some_and(|t| now_ms < t)
        || message.ends_at_ms.is_some_and(|t| now_ms > t)
    {
        return false;
    }
    let t = &message.targeting;
    if !t.platforms.is_empty() && !t.platforms.iter().any(|p| p == who.platform) {
        return false;
    }
    if !t
        .user_properties
        .iter()
        .all(|(k, v)| who.user_properties.get(k) == Some(v))
    {
        return false;
    }
    if let Some(bp) = t.rollout_bp {
        if !in_rollout(who.app_id, &message.id, who.unit, bp) {
            return false;
        }
    }
    let p = &message.pacing;
    if p.max_impressions > 0 && pacing.impressions >= p.max_impressions {
        return false;
    }
    if let Some(last) = pacing.last_shown_ms {
        let since_s = now_ms.saturating_sub(last) / 1000;
        if since_s < i64::try_from(p.min_interval_s).unwrap_or(i64::MAX) {
            return false;
        }
    }
    true
}

/// The message to show for `fired`, if any: the eligible message of highest priority.
pub fn pick<'b>(
    bundle: &'b ConfigBundle,
    fired: &Fired,
    who: &Audience<'_>,
    pacing: &HashMap<String, PacingState>,
    now_ms: i64,
) -> Option<&'b InAppMessage> {
    let mut best: Option<&InAppMessage> = None;
    for m in &bundle.messages {
        let state = pacing.get(&m.id).copied().unwrap_or_default();
        if eligible(m, fired, who, state, now_ms) && best.is_none_or(|b| m.priority > b.priority) {
            best = Some(m);
        }
    }
    best
}

/// The custom-event names that trigger a message of `bundle`.
pub fn event_triggers(bundle: &ConfigBundle) -> std::collections::HashSet<String> {
    bundle
        .messages
        .iter()
        .filter_map(|m| match &m.trigger {
            Trigger::Event { name } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::config::{Pacing, Targeting};
    use tern_protocol::Value;

    fn msg(id: &str, trigger: Trigger) -> InAppMessage {
        InAppMessage {
            id: id.into(),
            title: "t".into(),
            body: "b".into(),
            actions: vec![],
            trigger,
            targeting: Targeting::default(),
            pacing: Pacing::default(),
            starts_at_ms: None,
            ends_at_ms: None,
            priority: 0,
        }
    }

    fn who<'a>(props: &'a Properties, unit: &'a str) -> Audience<'a> {
        Audience {
            app_id: "demo",
            unit,
            platform: "android",
            user_properties: props,
        }
    }

    #[test]
    fn triggers_must_match() {
        let props = Properties::new();
        let w = who(&props, "u1");
        let p = PacingState::default();
        let e = msg("a", Trigger::Event { name: "buy".into() });
        assert!(eligible(&e, &Fired::Event("buy".into()), &w, p, 0));
        assert!(!eligible(&e, &Fired::Event("sell".into()), &w, p, 0));
        assert!(!eligible(&e, &Fired::SessionStart, &w, p, 0));
        let s = msg("b", Trigger::SessionStart);
        assert!(eligible(&s, &Fired::SessionStart, &w, p, 0));
        let i = msg("c", Trigger::Immediate);
        assert!(eligible(&i, &Fired::Immediate, &w, p, 0));
        let u = msg("d", Trigger::Unknown);
        for f in [Fired::SessionStart, Fired::Immediate] {
            assert!(!eligible(&u, &f, &w, p, 0));
        }
    }

    #[test]
    fn time_window_platform_and_properties() {
        let mut props = Properties::new();
        props.insert("tier".into(), Value::from("gold"));
        let w = who(&props, "u1");
        let p = PacingState::default();
        let mut m = msg("a", Trigger::SessionStart);
        m.starts_at_ms = Some(100);
        m.ends_at_ms = Some(200);
        assert!(!eligible(&m, &Fired::SessionStart, &w, p, 99));
        assert!(eligible(&m, &Fired::SessionStart, &w, p, 150));
        assert!(!eligible(&m, &Fired::SessionStart, &w, p, 201));
        let mut m = msg("b", Trigger::SessionStart);
        m.targeting.platforms = vec!["ios".into()];
        assert!(!eligible(&m, &Fired::SessionStart, &w, p, 0));
        m.targeting.platforms.push("android".into());
        assert!(eligible(&m, &Fired::SessionStart, &w, p, 0));
        let mut m = msg("c", Trigger::SessionStart);
        m.targeting
            .user_properties
            .insert("tier".into(), Value::from("gold"));
        assert!(eligible(&m, &Fired::SessionStart, &w, p, 0));
        m.targeting
            .user_properties
            .insert("tier".into(), Value::from("silver"));
        assert!(!eligible(&m, &Fired::SessionStart, &w, p, 0));
        m.targeting.user_properties.clear();
        m.targeting
            .user_properties
            .insert("age".into(), Value::from(3i64));
        assert!(!eligible(&m, &Fired::SessionStart, &w, p, 0));
    }

    #[test]
    fn rollout_is_bucketed_by_message_id() {
        let props = Properties::new();
        let mut m = msg("promo", Trigger::SessionStart);
        m.targeting.rollout_bp = Some(2_500);
        let mut inside = 0;
        for i in 0..4_000 {
            let unit = format!("user-{i}");
            let w = who(&props, &unit);
            let got = eligible(&m, &Fired::SessionStart, &w, PacingState::default(), 0);
            assert_eq!(got, in_rollout("demo", "promo", &unit, 2_500));
            inside += usize::from(got);
        }
        assert!((800..1200).contains(&inside), "{inside}");
    }

    #[test]
    fn pacing_limits_count_and_interval() {
        let props = Properties::new();
        let w = who(&props, "u1");
        let mut m = msg("a", Trigger::SessionStart);
        m.pacing = Pacing {
            min_interval_s: 60,
            max_impressions: 2,
        };
        let f = Fired::SessionStart;
        let state = |n, last| PacingState {
            impressions: n,
            last_shown_ms: last,
        };
        assert!(eligible(&m, &f, &w, state(0, None), 0));
        assert!(!eligible(&m, &f, &w, state(1, Some(1_000)), 30_000));
        assert!(eligible(&m, &f, &w, state(1, Some(1_000)), 61_000));
        assert!(!eligible(&m, &f, &w, state(2, Some(1_000)), 1_000_000));
        m.pacing.max_impressions = 0; // unlimited
        assert!(eligible(&m, &f, &w, state(500, Some(1_000)), 1_000_000));
    }

    #[test]
    fn highest_priority_wins_then_bundle_order() {
        let props = Properties::new();
        let w = who(&props, "u1");
        let mut bundle = ConfigBundle::default();
        let mut low = msg("low", Trigger::SessionStart);
        low.priority = 1;
        let mut high = msg("high", Trigger::SessionStart);
        high.priority = 5;
        let mut high2 = msg("high2", Trigger::SessionStart);
        high2.priority = 5;
        bundle.messages = vec![low, high, high2];
        let mut pacing = HashMap::new();
        let got = pick(&bundle, &Fired::SessionStart, &w, &pacing, 0).unwrap();
        assert_eq!(got.id, "high");
        pacing.insert(
            "high".into(),
            PacingState {
                impressions: 1,
                last_shown_ms: Some(0),
            },
        );
        let got = pick(&bundle, &Fired::SessionStart, &w, &pacing, 0).unwrap();
        assert_eq!(got.id, "high2");
        assert!(pick(&bundle, &Fired::Immediate, &w, &pacing, 0).is_none());
    }
}
