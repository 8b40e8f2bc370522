//! `GET /admin/v1/features`, `PUT`/`DELETE /admin/v1/features/{name}`: relay feature
//! flags ([`crate::policy::features`]).

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Serialize;

use super::settings::{set_entry, ChangeReply};
use super::{body, invalid, Admin, AdminError, Operator};
use crate::policy::features::{FeatureSetting, RelayFeature};

/// One relay feature flag as `GET /admin/v1/features` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct FeatureView {
    /// The flag's name.
    pub name: &'static str,
    /// What it guards.
    pub description: &'static str,
    /// The setting in force.
    pub setting: FeatureSetting,
    /// Whether an operator set it (else: the default).
    pub overridden: bool,
    /// The default.
    pub default: FeatureSetting,
}

pub(super) async fn features(State(admin): State<Admin>) -> Json<Vec<FeatureView>> {
    let settings = admin.settings();
    Json(
        RelayFeature::ALL
            .into_iter()
            .map(|f| FeatureView {
                name: f.name(),
                description: f.description(),
                setting: admin.inner.svc.features.setting(f),
                overridden: settings.features.contains_key(f.name()),
                default: f.default_setting(),
            })
            .collect(),
    )
}

fn feature_named(name: &str) -> Result<RelayFeature, AdminError> {
    RelayFeature::from_name(name).ok_or_else(|| AdminError::UnknownFeature(name.to_owned()))
}

pub(super) async fn set_feature(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    let feature = feature_named(&name)?;
    let b: FeatureSetting = body(&bytes)?;
    if b.rollout_bp > tern_protocol::rollout::BUCKETS {
        return Err(invalid(
            "rollout_bp",
            format!("{} is above 10000 (100%)", b.rollout_bp),
        ));
    }
    set_entry(
        &admin,
        &who,
        ("feature", feature.name().to_owned()),
        "feature",
        |s| &mut s.features,
        Some(b),
    )
    .await
}

pub(super) async fn clear_feature(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    Extension(who): Extension<Operator>,
) -> Result<Json<ChangeReply>, AdminError> {
    let feature = feature_named(&name)?;
    set_entry(
        &admin,
        &who,
        ("feature", feature.name().to_owned()),
        "feature",
        |s| &mut s.features,
        None,
    )
    .await
}
