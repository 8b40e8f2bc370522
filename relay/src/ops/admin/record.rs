//! `PUT /admin/v1/record`: traffic recording settings ([`crate::ingest::record`]).

use axum::extract::State;
use axum::{Extension, Json};

use super::settings::{ChangeReply, Settings};
use super::{body, check_app, invalid, Admin, AdminError, Operator};
use crate::ingest::record::RecordSettings;

pub(super) async fn set_record(
    State(admin): State<Admin>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    let b: RecordSettings = body(&bytes)?;
    if b.sample_bp > tern_protocol::rollout::BUCKETS {
        return Err(invalid(
            "sample_bp",
            format!("{} is above 10000 (100%)", b.sample_bp),
        ));
    }
    if b.enabled && b.sample_bp == 0 {
        return Err(invalid(
            "sample_bp",
            "recording with a 0% sample records nothing: give 1..=10000",
        ));
    }
    if let Some(app) = b.apps.iter().find(|a| check_app(a).is_err()) {
        return Err(invalid("apps", format!("{app:?} is not an app id")));
    }
    if admin.inner.svc.recorder.is_none() {
        return Err(invalid("record", "this relay has no recorder"));
    }
    let read = |s: &Settings| serde_json::to_value(&s.record).unwrap_or_default();
    let new = admin
        .change(&who, "record", read, |s| {
            s.record = b;
            Ok(())
        })
        .await?;
    Ok(Json(new))
}
