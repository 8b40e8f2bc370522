//! The operator's controls: service switches, replay, per-app limits and blocks,
//! the breaker override, drain.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::settings::{set_entry, BreakerSetting, ChangeReply, RateSetting, Settings};
use super::{body, check_app, invalid, Admin, AdminError, Operator};
use crate::policy::controls::Switches;

/// Smallest burst an operator may set: the largest batch must fit.
const MIN_BURST: u64 = 1_000;

impl Admin {
    /// Starts draining the relay (the binary then finishes requests in flight, closes
    /// connections with the `draining` code, hands its spool prefix over and exits 0).
    /// `false` if it was already draining.
    pub fn drain(&self, who: &Operator) -> bool {
        let started = self.inner.svc.drain.start();
        if started {
            self.record(
                who,
                "drain",
                serde_json::json!({ "draining": false }),
                serde_json::json!({ "draining": true }),
                true,
            );
        }
        started
    }
}

pub(super) async fn drain(
    State(admin): State<Admin>,
    Extension(who): Extension<Operator>,
) -> (StatusCode, Json<serde_json::Value>) {
    let started = admin.drain(&who);
    let d = &admin.inner.svc.drain;
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "draining": true,
            "already_draining": !started,
            "since_ms": d.started_at_ms(),
            "in_flight": d.in_flight(),
        })),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    degraded: bool,
}

pub(super) async fn set_service(
    State(admin): State<Admin>,
    Path(service): Path<String>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    let field: fn(&mut Switches) -> &mut bool = match service.as_str() {
        "forwarding" => |s| &mut s.forwarding_degraded,
        "config" => |s| &mut s.config_cache_only,
        "messages" => |s| &mut s.messages_off,
        "push" => |s| &mut s.push_off,
        _ => return Err(AdminError::UnknownService(service)),
    };
    let b: ServiceBody = body(&bytes)?;
    let read = move |s: &Settings| {
        let mut sw = s.switches;
        serde_json::json!({ "degraded": *field(&mut sw) })
    };
    let new = admin
        .change(&who, &format!("service.{service}"), read, |s| {
            *field(&mut s.switches) = b.degraded;
            Ok(())
        })
        .await?;
    Ok(Json(new))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    paused: Option<bool>,
    /// Absent: unchanged; `null`: the default; a number: the cap.
    #[serde(default, deserialize_with = "present")]
    max_rate: Option<Option<u64>>,
}

/// Deserializes a field that is present (possibly `null`) as `Some(..)`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

pub(super) async fn set_replay(
    State(admin): State<Admin>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    let b: ReplayBody = body(&bytes)?;
    if let Some(Some(rate)) = b.max_rate {
        if rate == 0 {
            return Err(invalid(
                "max_rate",
                "must be at least 1 batch per second (pause replay instead)",
            ));
        }
    }
    let read = |s: &Settings| {
        serde_json::json!({
            "paused": s.switches.replay_paused,
            "max_rate": s.switches.replay_max_rate,
        })
    };
    let new = admin
        .change(&who, "replay", read, |s| {
            if let Some(p) = b.paused {
                s.switches.replay_paused = p;
            }
            if let Some(rate) = b.max_rate {
                s.switches.replay_max_rate = rate;
            }
            Ok(())
        })
        .await?;
    Ok(Json(new))
}

pub(super) async fn set_app_limit(
    State(admin): State<Admin>,
    Path(app): Path<String>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    check_app(&app)?;
    let b: RateSetting = body(&bytes)?;
    if b.events_per_sec == 0 {
        return Err(invalid(
            "events_per_sec",
            "must be at least 1 (block the app instead)",
        ));
    }
    if b.burst < MIN_BURST {
        return Err(invalid(
            "burst",
            format!(
                "{} is below the largest batch ({MIN_BURST} events)",
                b.burst
            ),
        ));
    }
    set_entry(
        &admin,
        &who,
        ("app", app),
        "app.limit",
        |s| &mut s.app_limits,
        Some(b),
    )
    .await
}

pub(super) async fn clear_app_limit(
    State(admin): State<Admin>,
    Path(app): Path<String>,
    Extension(who): Extension<Operator>,
) -> Result<Json<ChangeReply>, AdminError> {
    check_app(&app)?;
    set_entry(
        &admin,
        &who,
        ("app", app),
        "app.limit",
        |s| &mut s.app_limits,
        None,
    )
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    #[serde(default)]
    reason: Option<String>,
}

pub(super) async fn block_app(
    State(admin): State<Admin>,
    Path(app): Path<String>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    check_app(&app)?;
    let b: BlockBody = body(&bytes)?;
    let reason = b.reason.unwrap_or_default();
    if reason.len() > 500 {
        return Err(invalid("reason", "at most 500 bytes"));
    }
    set_entry(
        &admin,
        &who,
        ("app", app),
        "app.block",
        |s| &mut s.blocked_apps,
        Some(reason),
    )
    .await
}

pub(super) async fn unblock_app(
    State(admin): State<Admin>,
    Path(app): Path<String>,
    Extension(who): Extension<Operator>,
) -> Result<Json<ChangeReply>, AdminError> {
    check_app(&app)?;
    set_entry(
        &admin,
        &who,
        ("app", app),
        "app.block",
        |s| &mut s.blocked_apps,
        None,
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerBody {
    #[serde(rename = "override")]
    setting: BreakerSetting,
}

pub(super) async fn set_breaker(
    State(admin): State<Admin>,
    Extension(who): Extension<Operator>,
    bytes: axum::body::Bytes,
) -> Result<Json<ChangeReply>, AdminError> {
    let b: BreakerBody = body(&bytes)?;
    let read = |s: &Settings| serde_json::json!({ "override": s.breaker });
    let new = admin
        .change(&who, "breaker", read, |s| {
            s.breaker = b.setting;
            Ok(())
        })
        .await?;
    Ok(Json(new))
}
