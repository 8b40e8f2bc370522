//! Deterministic percentage-rollout bucketing and feature-flag evaluation, identical
//! on the device and on the server.
//!
//! ```text
//! bucket(app, salt, unit)  = xxh3_64("rollout" ‖ 0 ‖ app ‖ 0 ‖ salt ‖ 0 ‖ unit) mod 10000
//! variant(app, salt, unit) = xxh3_64("variant" ‖ 0 ‖ app ‖ 0 ‖ salt ‖ 0 ‖ unit) mod Σweights
//! ```
//!
//! `unit` is the user id, or the device id when the user is anonymous. A unit is in a
//! rollout of `bp` basis points when `bucket < bp`, so growing a rollout only adds
//! units. The variant draw uses an independent hash, so a unit keeps its variant while
//! the rollout grows.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::config::FeatureFlag;
use crate::value::{open_enum, Value};

pub use crate::config::BUCKETS;

fn hash(domain: &str, app_id: &str, salt: &str, unit: &str) -> u64 {
    let mut h = Xxh3::new();
    for (i, part) in [domain, app_id, salt, unit].into_iter().enumerate() {
        if i > 0 {
            h.update(&[0]);
        }
        h.update(part.as_bytes());
    }
    h.digest()
}

/// The rollout bucket of a unit, in `0..10000`.
pub fn bucket(app_id: &str, salt: &str, unit: &str) -> u32 {
    (hash("rollout", app_id, salt, unit) % u64::from(BUCKETS)) as u32
}

/// The variant draw of a unit for a flag whose variant weights sum to `total_weight`
/// (> 0): a number in `0..total_weight`, independent of the unit's bucket.
pub fn variant_draw(app_id: &str, salt: &str, unit: &str, total_weight: u64) -> u64 {
    hash("variant", app_id, salt, unit) % total_weight.max(1)
}

/// True when `unit` is inside a rollout of `rollout_bp` basis points.
pub fn in_rollout(app_id: &str, salt: &str, unit: &str, rollout_bp: u32) -> bool {
    bucket(app_id, salt, unit) < rollout_bp
}

/// The result of evaluating a flag for one unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FlagDecision {
    /// The flag is off (disabled, or the unit is outside the rollout).
    Off,
    /// A boolean flag is on.
    On,
    /// A multivariate flag chose this variant.
    Variant {
        /// The variant key.
        key: String,
        /// Its payload, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
    },
}

impl FlagDecision {
    /// True unless the decision is `Off`.
    pub fn is_on(&self) -> bool {
        !matches!(self, FlagDecision::Off)
    }

    /// The decision as an exposure names it (protocol §5.2, `exposure`): `"off"`,
    /// `"on"`, or the variant's key.
    pub fn variant_name(&self) -> &str {
        match self {
            FlagDecision::Off => "off",
            FlagDecision::On => "on",
            FlagDecision::Variant { key, .. } => key,
        }
    }
}

open_enum! {
    /// Why a flag evaluated as it did ([`evaluate_flag_with_reason`]); carried by
    /// exposure events. A value this version does not know is kept as text.
    pub enum FlagReason {
        /// Off: the flag is disabled.
        Disabled = "disabled",
        /// Off: the unit's bucket is at or above the flag's `rollout_bp`.
        OutsideRollout = "outside_rollout",
        /// On: a boolean flag and the unit is inside its rollout.
        InRollout = "in_rollout",
        /// A multivariate flag drew this variant for a unit inside its rollout.
        Variant = "variant",
        /// Off: a multivariate flag whose variant weights sum to 0.
        NoWeights = "no_weights",
    }
}

/// Evaluates `flag` for `unit` of `app_id`.
///
/// Off when the flag is disabled or the unit's bucket is at or above `rollout_bp`;
/// otherwise `On` for a boolean flag, or the variant whose cumulative weight range
/// contains the variant draw. A multivariate flag whose weights sum to 0 is `Off`.
pub fn evaluate_flag(flag: &FeatureFlag, app_id: &str, unit: &str) -> FlagDecision {
    evaluate_flag_with_reason(flag, app_id, unit).0
}

/// [`evaluate_flag`], with the rule of protocol §9 that decided it.
pub fn evaluate_flag_with_reason(
    flag: &FeatureFlag,
    app_id: &str,
    unit: &str,
) -> (FlagDecision, FlagReason) {
    if !flag.enabled {
        return (FlagDecision::Off, FlagReason::Disabled);
    }
    let salt = flag.salt.as_deref().unwrap_or(&flag.key);
    if !in_rollout(app_id, salt, unit, flag.rollout_bp) {
        return (FlagDecision::Off, FlagReason::OutsideRollout);
    }
    if flag.variants.is_empty() {
        return (FlagDecision::On, FlagReason::InRollout);
    }
    let total: u64 = flag.variants.iter().map(|v| u64::from(v.weight)).sum();
    if total == 0 {
        return (FlagDecision::Off, FlagReason::NoWeights);
    }
    let mut draw = variant_draw(app_id, salt, unit, total);
    for variant in &flag.variants {
        let w = u64::from(variant.weight);
        if draw < w {
            let decision = FlagDecision::Variant {
                key: variant.key.clone(),
                value: variant.value.clone(),
            };
            return (decision, FlagReason::Variant);
        }
        draw -= w;
    }
    // Not reached: the draw is below the weights' sum.
    (FlagDecision::Off, FlagReason::NoWeights)
}
