//! Operator switches read on the request paths: which services are degraded, whether
//! replay runs and how fast. Set through the admin API ([`crate::ops::admin`]); reads are
//! single atomic loads, so checking them on every request costs nothing measurable.
//!
//! | switch | normal | degraded |
//! |---|---|---|
//! | forwarding | batches go to the backend (spool on failure) | every batch goes to the spool; nothing calls the backend's ingest, replay waits |
//! | config | bundles polled from the backend and served | the cached bundles are served; the backend is not polled |
//! | messages | bundles served with their in-app messages | bundles served without messages (under their own ETag, so devices drop them) |
//! | push | push streams open and announce changes | open streams are ended and new ones refused; devices poll |
//! | replay | spooled objects drained at the adaptive rate (capped by `max_rate`) | paused: spooled objects wait |

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The switches, shared (clones see the same state).
#[derive(Clone, Debug, Default)]
pub struct Controls {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    forwarding_degraded: AtomicBool,
    config_cache_only: AtomicBool,
    messages_off: AtomicBool,
    push_off: AtomicBool,
    replay_paused: AtomicBool,
    /// Replay rate cap in batches per second; 0 = the configured default.
    replay_max_rate: AtomicU64,
    /// Bumped on every change, so pollers (the replayer) notice cheaply.
    generation: AtomicU64,
}

/// The state of every switch, as persisted and reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Switches {
    /// Forwarding degraded: spool everything.
    pub forwarding_degraded: bool,
    /// Config serving degraded: serve the cache only.
    pub config_cache_only: bool,
    /// In-app messages not served.
    pub messages_off: bool,
    /// Live push off.
    pub push_off: bool,
    /// Replay paused.
    pub replay_paused: bool,
    /// Replay rate cap, batches per second (`None`: the configured default).
    pub replay_max_rate: Option<u64>,
}

impl Controls {
    /// All services normal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forwarding degraded (spool only)?
    pub fn forwarding_degraded(&self) -> bool {
        self.inner.forwarding_degraded.load(Ordering::Relaxed)
    }
    /// Config serving degraded (cache only)?
    pub fn config_cache_only(&self) -> bool {
        self.inner.config_cache_only.load(Ordering::Relaxed)
    }
    /// Messages off?
    pub fn messages_off(&self) -> bool {
        self.inner.messages_off.load(Ordering::Relaxed)
    }
    /// Live push off?
    pub fn push_off(&self) -> bool {
        self.inner.push_off.load(Ordering::Relaxed)
    }
    /// Replay paused by the operator?
    pub fn replay_paused(&self) -> bool {
        self.inner.replay_paused.load(Ordering::Relaxed)
    }
    /// Replay may call the backend now: not paused and forwarding not degraded.
    pub fn replay_allowed(&self) -> bool {
        !self.replay_paused() && !self.forwarding_degraded()
    }
    /// The operator's replay rate cap (batches per second), if any.
    pub fn replay_max_rate(&self) -> Option<u64> {
        match self.inner.replay_max_rate.load(Ordering::Relaxed) {
            0 => None,
            r => Some(r),
        }
    }
    /// Changes so far (any switch).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Every switch now.
    pub fn switches(&self) -> Switches {
        Switches {
            forwarding_degraded: self.forwarding_degraded(),
            config_cache_only: self.config_cache_only(),
            messages_off: self.messages_off(),
            push_off: self.push_off(),
            replay_paused: self.replay_paused(),
            replay_max_rate: self.replay_max_rate(),
        }
    }

    /// Sets every switch to `s`.
    pub fn apply(&self, s: &Switches) {
        let i = &self.inner;
        i.forwarding_degraded
            .store(s.forwarding_degraded, Ordering::Relaxed);
        i.config_cache_only
            .store(s.config_cache_only, Ordering::Relaxed);
        i.messages_off.store(s.messages_off, Ordering::Relaxed);
        i.push_off.store(s.push_off, Ordering::Relaxed);
        i.replay_paused.store(s.replay_paused, Ordering::Relaxed);
        i.replay_max_rate
            .store(s.replay_max_rate.unwrap_or(0), Ordering::Relaxed);
        i.generation.fetch_add(1, Ordering::Release);
        publish(s);
    }
}

fn publish(s: &Switches) {
    for (service, degraded) in [
        ("forwarding", s.forwarding_degraded),
        ("config", s.config_cache_only),
        ("messages", s.messages_off),
        ("push", s.push_off),
        ("replay", s.replay_paused),
    ] {
        metrics::gauge!("tern_relay_service_degraded", "service" => service).set(if degraded {
            1.0
        } else {
            0.0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_state_and_generation_moves() {
        let a = Controls::new();
        let b = a.clone();
        assert_eq!(a.switches(), Switches::default());
        assert!(b.replay_allowed());
        let g = b.generation();
        a.apply(&Switches {
            forwarding_degraded: true,
            replay_max_rate: Some(50),
            ..Switches::default()
        });
        assert!(b.forwarding_degraded());
        assert!(!b.replay_allowed(), "degraded forwarding holds replay");
        assert_eq!(b.replay_max_rate(), Some(50));
        assert!(b.generation() > g);
        a.apply(&Switches {
            replay_paused: true,
            ..Switches::default()
        });
        assert!(!b.forwarding_degraded());
        assert!(!b.replay_allowed());
        assert_eq!(b.replay_max_rate(), None);
    }

    #[test]
    fn switches_round_trip_as_json_and_refuse_unknown_fields() {
        let s = Switches {
            messages_off: true,
            push_off: true,
            replay_max_rate: Some(10),
            ..Switches::default()
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Switches>(&text).unwrap(), s);
        assert_eq!(
            serde_json::from_str::<Switches>("{}").unwrap(),
            Switches::default()
        );
        assert!(serde_json::from_str::<Switches>(r#"{"forwarding":true}"#).is_err());
    }
}
