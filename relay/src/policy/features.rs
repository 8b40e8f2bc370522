//! Feature-flagged relay behaviour: a new code path of the relay is guarded by a flag
//! that an operator rolls out to a percentage of apps through the admin API, and rolls
//! back instantly. Bucketing is the devices' own ([`tern_protocol::rollout`]): the unit
//! is the app id and the salt the flag's name, so growing a rollout only adds apps.
//!
//! | flag | default | guards |
//! |---|---|---|
//! | `ingest_in_place` | on (100%) | reading `IngestRequest`s in place ([`tern_protocol::IngestView`]) and forwarding the device's bytes; off: the owned decoder and re-encoding (the pre-#4 path) |
//!
//! A flag an operator never set has its default; [`Features::set`] with `None` returns
//! it there.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// A relay code path behind a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RelayFeature {
    /// Read `IngestRequest`s in place and forward the device's batch bytes.
    IngestInPlace,
}

impl RelayFeature {
    /// Every flag.
    pub const ALL: [RelayFeature; 1] = [RelayFeature::IngestInPlace];

    /// The flag's name in the admin API.
    pub fn name(self) -> &'static str {
        match self {
            RelayFeature::IngestInPlace => "ingest_in_place",
        }
    }

    /// What it guards.
    pub fn description(self) -> &'static str {
        match self {
            RelayFeature::IngestInPlace => {
                "read IngestRequests in place and forward the device's batch bytes (off: owned decode and re-encode)"
            }
        }
    }

    /// The setting when no operator set one.
    pub fn default_setting(self) -> FeatureSetting {
        match self {
            RelayFeature::IngestInPlace => FeatureSetting {
                enabled: true,
                rollout_bp: tern_protocol::rollout::BUCKETS,
            },
        }
    }

    /// The flag called `name`.
    pub fn from_name(name: &str) -> Option<RelayFeature> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A flag's setting: on for apps whose bucket is below `rollout_bp` (basis points).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSetting {
    /// Off for every app when false.
    pub enabled: bool,
    /// Share of apps, in basis points (0..=10000).
    pub rollout_bp: u32,
}

impl FeatureSetting {
    /// Whether `app` gets the guarded path under this setting.
    pub fn is_on_for(&self, feature: RelayFeature, app: &str) -> bool {
        self.enabled
            && (self.rollout_bp >= tern_protocol::rollout::BUCKETS
                || tern_protocol::rollout::in_rollout(app, feature.name(), app, self.rollout_bp))
    }
}

/// The flags in force, shared (clones see the same).
#[derive(Clone, Debug, Default)]
pub struct Features {
    overrides: Arc<RwLock<BTreeMap<RelayFeature, FeatureSetting>>>,
}

impl Features {
    /// Every flag at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `app` gets `feature`'s path now.
    pub fn is_on(&self, feature: RelayFeature, app: &str) -> bool {
        self.setting(feature).is_on_for(feature, app)
    }

    /// `feature`'s setting now.
    pub fn setting(&self, feature: RelayFeature) -> FeatureSetting {
        self.overrides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&feature)
            .copied()
            .unwrap_or_else(|| feature.default_setting())
    }

    /// Sets `feature` (`None`: back to its default).
    pub fn set(&self, feature: RelayFeature, setting: Option<FeatureSetting>) {
        let mut o = self.overrides.write().unwrap_or_else(|p| p.into_inner());
        match setting {
            Some(s) => {
                o.insert(feature, s);
            }
            None => {
                o.remove(&feature);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_rollout_by_app() {
        let f = Features::new();
        let flag = RelayFeature::IngestInPlace;
        assert_eq!(RelayFeature::from_name("ingest_in_place"), Some(flag));
        assert_eq!(RelayFeature::from_name("nope"), None);
        assert!(f.is_on(flag, "any-app"));
        f.set(
            flag,
            Some(FeatureSetting {
                enabled: true,
                rollout_bp: 0,
            }),
        );
        assert!(!f.is_on(flag, "any-app"));
        // Half the apps, decided by the devices' bucketing with the flag as salt.
        f.set(
            flag,
            Some(FeatureSetting {
                enabled: true,
                rollout_bp: 5_000,
            }),
        );
        let apps: Vec<String> = (0..2_000).map(|i| format!("app-{i}")).collect();
        let on = apps.iter().filter(|a| f.is_on(flag, a)).count();
        assert!((800..1_200).contains(&on), "{on} of 2000 apps on at 50%");
        for a in &apps {
            assert_eq!(
                f.is_on(flag, a),
                tern_protocol::rollout::in_rollout(a, "ingest_in_place", a, 5_000)
            );
        }
        // Growing the rollout only adds apps.
        let at_half: Vec<bool> = apps.iter().map(|a| f.is_on(flag, a)).collect();
        f.set(
            flag,
            Some(FeatureSetting {
                enabled: true,
                rollout_bp: 7_500,
            }),
        );
        for (a, was) in apps.iter().zip(at_half) {
            assert!(!was || f.is_on(flag, a), "{a} left the rollout as it grew");
        }
        f.set(
            flag,
            Some(FeatureSetting {
                enabled: false,
                rollout_bp: 10_000,
            }),
        );
        assert!(!f.is_on(flag, "any-app"));
        f.set(flag, None);
        assert!(f.is_on(flag, "any-app"));
    }
}
