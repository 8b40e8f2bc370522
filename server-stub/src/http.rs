//! The HTTP surface: data plane (`/v1/*`), admin, verification, metrics and health.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tern_protocol::frame::{max_body_for_payload, HEADER_LEN};
use tern_protocol::limits::{Limits, MAX_BACKEND_PAYLOAD};
use tern_protocol::{
    decode_single_frame, CodecConfig, DecodeError, DeviceId, FeatureFlag, ForwardReply, Message,
    MessageKind, ReceivedForward, RejectReason, Value, BACKEND_INGEST_PATH, FRAME_CONTENT_TYPE,
};

use crate::config::{validate_flag, validate_value_entry, Content};
use crate::faults::{decide_ack_loss, decide_before, retry_after_secs, Before, Faults, Scope};
use crate::store::{self, CheckedBatch};
use crate::stub::{EditError, Published, RegistryEntry, Stub};

type Shared = Arc<Stub>;

/// Builds the router of a stub.
pub fn router(stub: Shared) -> Router {
    let data_plane = Router::new()
        .route(BACKEND_INGEST_PATH, post(ingest))
        .route("/v1/apps", get(registry))
        .route("/v1/apps/{app_id}/config", get(config))
        .route_layer(middleware::from_fn_with_state(stub.clone(), bearer_auth))
        .route_layer(middleware::from_fn_with_state(stub.clone(), inject_faults))
        .layer(DefaultBodyLimit::max(
            HEADER_LEN + max_body_for_payload(MAX_BACKEND_PAYLOAD),
        ));
    let admin = Router::new()
        .route("/admin/apps", get(admin_apps))
        .route(
            "/admin/apps/{app_id}/config",
            get(admin_get_config).put(admin_put_config),
        )
        .route(
            "/admin/apps/{app_id}/values/{key}",
            put(admin_put_value).delete(admin_delete_value),
        )
        .route(
            "/admin/apps/{app_id}/flags/{key}",
            put(admin_put_flag).delete(admin_delete_flag),
        )
        .route(
            "/admin/faults",
            get(get_faults).put(put_faults).delete(clear_faults),
        )
        .route(
            "/admin/registry",
            get(get_registry).put(put_registry).delete(clear_registry),
        );
    let verify = Router::new()
        .route("/verify/summary", get(verify_summary))
        .route("/verify/latency", get(verify_latency))
        .route("/verify/apps/{app_id}", get(verify_app))
        .route("/verify/apps/{app_id}/users/{user_id}", get(verify_user))
        .route("/verify/apps/{app_id}/exposures", get(verify_exposures))
        .route("/verify/apps/{app_id}/identities", get(verify_identities))
        .route("/verify/apps/{app_id}/deletions", get(verify_deletions))
        .route(
            "/verify/apps/{app_id}/devices/{device_id}",
            get(verify_device),
        )
        .route(
            "/verify/apps/{app_id}/devices/{device_id}/seqs",
            get(verify_device_seqs),
        );
    Router::new()
        .merge(data_plane)
        .merge(admin)
        .merge(verify)
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(render_metrics))
        .route_layer(middleware::from_fn_with_state(stub.clone(), track_duration))
        .with_state(stub)
}

// ---------------------------------------------------------------------------------
// Errors

/// A JSON error reply: `{"error": kind, "reason": text}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            reason: reason.into(),
        }
    }
    fn invalid(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", reason)
    }
    fn not_found(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", reason)
    }
    fn unknown_app(app_id: &str) -> Self {
        Self::not_found(format!("unknown app {app_id:?}"))
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.error, "reason": self.reason})),
        )
            .into_response()
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        ApiError::internal(e)
    }
}

impl From<EditError> for ApiError {
    fn from(e: EditError) -> Self {
        match e {
            EditError::Invalid(e) => ApiError::invalid(e.to_string()),
            EditError::NotFound(what) => ApiError::not_found(what),
            EditError::Internal(e) => ApiError::internal(e),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body; errors become 400 with serde's message (which names the field).
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(e.to_string()))
}

// ---------------------------------------------------------------------------------
// Middleware

async fn track_duration(State(stub): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    stub.metrics
        .request_duration(route)
        .record(start.elapsed().as_secs_f64());
    resp
}

async fn bearer_auth(State(stub): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(token) = &stub.ingest_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let reason = match given {
            None => Some("missing bearer token"),
            Some(t) if t != token => Some("wrong bearer token"),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            let mut resp =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason).into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    next.run(req).await
}

fn scope_of(path: Option<&MatchedPath>) -> Option<Scope> {
    match path.map(|p| p.as_str()) {
        Some(BACKEND_INGEST_PATH) => Some(Scope::Ingest),
        Some("/v1/apps/{app_id}/config") => Some(Scope::Config),
        Some("/v1/apps") => Some(Scope::Registry),
        _ => None,
    }
}

/// A response whose body fails before its first byte: hyper then closes the
/// connection without writing the response head, so the client sees a transport
/// error and no status.
fn aborted_connection() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("injected fault: down"))
    });
    Response::new(Body::from_stream(stream))
}

async fn inject_faults(State(stub): State<Shared>, req: Request, next: Next) -> Response {
    let Some(scope) = scope_of(req.extensions().get::<MatchedPath>()) else {
        return next.run(req).await;
    };
    let faults = stub.faults();
    if !faults.applies_to(scope) {
        return next.run(req).await;
    }
    let m = &stub.metrics;
    match decide_before(&faults, rand::random::<f64>()) {
        Before::Down => {
            m.fault("down").increment(1);
            return aborted_connection();
        }
        Before::Throttle { retry_after_ms } => {
            m.fault("throttle").increment(1);
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                format!("injected fault: retry after {retry_after_ms} ms"),
            )
            .into_response();
            let h = resp.headers_mut();
            h.insert(header::RETRY_AFTER, retry_after_secs(retry_after_ms).into());
            h.insert("x-tern-retry-after-ms", retry_after_ms.into());
            return resp;
        }
        Before::Error => {
            m.fault("error").increment(1);
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "injected fault: error_rate",
            )
            .into_response();
        }
        Before::Process { latency_ms } => {
            if latency_ms > 0 {
                m.fault("latency").increment(1);
                tokio::time::sleep(Duration::from_millis(latency_ms)).await;
            }
        }
    }
    let mut resp = next.run(req).await;
    if scope == Scope::Ingest
        && resp.status() == StatusCode::OK
        && decide_ack_loss(&faults, rand::random::<f64>())
    {
        m.fault("ack_loss").increment(1);
        resp = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ack_lost",
            "injected fault: the request was processed and committed, the ack is lost",
        )
        .into_response();
    }
    if let Some(bps) = faults.drip_bytes_per_sec {
        m.fault("drip").increment(1);
        resp = drip(resp, bps).await;
    }
    resp
}

/// Re-sends a response's body in small chunks at `bytes_per_sec`.
async fn drip(resp: Response, bytes_per_sec: u64) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let bps = bytes_per_sec.max(1);
    // About ten chunks per second, at least one byte each.
    let chunk = usize::try_from((bps / 10).max(1)).unwrap_or(usize::MAX);
    let stream = futures_util::stream::unfold(bytes, move |mut rest| async move {
        if rest.is_empty() {
            return None;
        }
        let piece = rest.split_to(chunk.min(rest.len()));
        let wait = Duration::from_secs_f64(piece.len() as f64 / bps as f64);
        tokio::time::sleep(wait).await;
        Some((Ok::<_, std::io::Error>(piece), rest))
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

// ---------------------------------------------------------------------------------
// Data plane

/// Decodes an ingest body and checks every batch for what needs no database. The
/// limits of docs/protocol.md §7 are measured on the batches' bytes as received
/// (`ReceivedForward`), as the relay that forwarded them measured them.
fn decode_and_check(stub: &Stub, body: &[u8]) -> Result<Vec<CheckedBatch>, DecodeError> {
    let cfg = CodecConfig::backend();
    let frame = decode_single_frame(body, cfg.max_payload)?;
    if frame.kind != MessageKind::ForwardRequest.as_u8() {
        return Err(match MessageKind::from_u8(frame.kind) {
            None => DecodeError::UnknownKind(frame.kind),
            Some(_) => DecodeError::UnexpectedKind {
                expected: MessageKind::ForwardRequest,
                got: frame.kind,
            },
        });
    }
    let received = ReceivedForward::decode(&frame.payload(cfg.max_payload)?)?;
    let limits = Limits::default();
    let verdicts: Vec<_> = (0..received.request.batches.len())
        .map(|i| received.validate(i, &limits))
        .collect();
    Ok(received
        .request
        .batches
        .into_iter()
        .zip(verdicts)
        .map(|(batch, limits_verdict)| {
            let verdict = if stub.app(batch.app_id.as_str()).is_none() {
                Err((RejectReason::Unauthorized, "unknown app".to_owned()))
            } else if let Err(e) = limits_verdict {
                Err((e.reject_reason(), e.to_string()))
            } else if let Some(e) = batch.events.iter().find(|e| e.seq > i64::MAX as u64) {
                Err((
                    RejectReason::Invalid,
                    format!("event seq {} is out of range", e.seq),
                ))
            } else {
                Ok(())
            };
            CheckedBatch { batch, verdict }
        })
        .collect())
}

async fn ingest(State(stub): State<Shared>, body: Bytes) -> Response {
    let m = &stub.metrics;
    let checker = stub.clone();
    let checked = match tokio::task::spawn_blocking(move || decode_and_check(&checker, &body)).await
    {
        Ok(Ok(checked)) => checked,
        Ok(Err(e)) => {
            m.ingest_request("malformed").increment(1);
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "malformed", "reason": e.to_string()})),
            )
                .into_response();
        }
        Err(e) => {
            m.ingest_request("error").increment(1);
            return ApiError::internal(e).into_response();
        }
    };
    let (results, tally) = match stub
        .store
        .call(move |conn| store::ingest(conn, &checked))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            m.ingest_request("error").increment(1);
            return ApiError::internal(e).into_response();
        }
    };
    m.ingest_request("ok").increment(1);
    m.batch("stored").increment(tally.stored);
    m.batch("duplicate").increment(tally.duplicate);
    m.batch("rejected").increment(tally.rejected);
    m.events("unique").increment(tally.events_unique);
    m.events("duplicate").increment(tally.events_duplicate);
    match Message::ForwardReply(ForwardReply { results }).encode(&CodecConfig::backend()) {
        Ok(frame) => (
            [(header::CONTENT_TYPE, FRAME_CONTENT_TYPE)],
            Bytes::from(frame),
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

async fn registry(State(stub): State<Shared>) -> Response {
    Json(stub.registry()).into_response()
}

/// True when an `If-None-Match` header value matches `etag` (quoted or bare, weak
/// or strong, a list, or `*`).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .map(|t| t.strip_prefix("W/").unwrap_or(t))
        .map(|t| t.trim_matches('"'))
        .any(|t| t == "*" || t == etag)
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

fn etag_header(published: &Published) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", published.bundle.etag))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

async fn config(
    State(stub): State<Shared>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let app = stub
        .app(&app_id)
        .ok_or_else(|| ApiError::unknown_app(&app_id))?;
    let published = app.published();
    let etag = etag_header(&published);
    if if_none_match(&headers, published.bundle.etag.as_str()) {
        stub.metrics.config_request(304).increment(1);
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    stub.metrics.config_request(200).increment(1);
    let mut resp = if wants_json(&headers) {
        Json(&published.bundle).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/msgpack")],
            published.msgpack.clone(),
        )
            .into_response()
    };
    resp.headers_mut().insert(header::ETAG, etag);
    Ok(resp)
}

// ---------------------------------------------------------------------------------
// Admin

async fn admin_apps(State(stub): State<Shared>) -> Response {
    let apps: Vec<_> = stub
        .apps
        .iter()
        .map(|(id, app)| {
            let p = app.published();
            json!({"app_id": id, "version": p.bundle.version, "etag": p.bundle.etag})
        })
        .collect();
    Json(apps).into_response()
}

fn bundle_json(published: &Published) -> Response {
    let mut resp = Json(&published.bundle).into_response();
    resp.headers_mut()
        .insert(header::ETAG, etag_header(published));
    resp
}

async fn admin_get_config(
    State(stub): State<Shared>,
    Path(app_id): Path<String>,
) -> ApiResult<Response> {
    let app = stub
        .app(&app_id)
        .ok_or_else(|| ApiError::unknown_app(&app_id))?;
    Ok(bundle_json(&app.published()))
}

async fn edit(
    stub: &Stub,
    app_id: &str,
    f: impl FnOnce(&mut Content) -> Result<(), EditError>,
) -> ApiResult<Response> {
    match stub.edit_config(app_id, f).await? {
        Some(published) => Ok(bundle_json(&published)),
        None => Err(ApiError::unknown_app(app_id)),
    }
}

/// The body of an edit of `app_id`'s content: an unknown app is refused before the
/// body is read, so a typo in the path is not reported as a bad body.
fn app_body<T: DeserializeOwned>(stub: &Stub, app_id: &str, body: &[u8]) -> ApiResult<T> {
    if stub.app(app_id).is_none() {
        return Err(ApiError::unknown_app(app_id));
    }
    parse_json(body)
}

async fn admin_put_config(
    State(stub): State<Shared>,
    Path(app_id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let new: Content = app_body(&stub, &app_id, &body)?;
    edit(&stub, &app_id, move |c| {
        *c = new;
        Ok(())
    })
    .await
}

async fn admin_put_value(
    State(stub): State<Shared>,
    Path((app_id, key)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let value: Value = app_body(&stub, &app_id, &body)?;
    validate_value_entry(&key, &value, &Limits::default())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    edit(&stub, &app_id, move |c| {
        c.values.insert(key, value);
        Ok(())
    })
    .await
}

async fn admin_delete_value(
    State(stub): State<Shared>,
    Path((app_id, key)): Path<(String, String)>,
) -> ApiResult<Response> {
    edit(&stub, &app_id, move |c| {
        c.values
            .remove(&key)
            .map(|_| ())
            .ok_or_else(|| EditError::NotFound(format!("no value {key:?}")))
    })
    .await
}

async fn admin_put_flag(
    State(stub): State<Shared>,
    Path((app_id, key)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let flag: FeatureFlag = app_body(&stub, &app_id, &body)?;
    if flag.key != key {
        return Err(ApiError::invalid(format!(
            "key: {:?} does not match the path's flag key {key:?}",
            flag.key
        )));
    }
    validate_flag(&flag).map_err(|e| ApiError::invalid(e.to_string()))?;
    edit(&stub, &app_id, move |c| {
        match c.flags.iter_mut().find(|f| f.key == key) {
            Some(existing) => *existing = flag,
            None => c.flags.push(flag),
        }
        Ok(())
    })
    .await
}

async fn admin_delete_flag(
    State(stub): State<Shared>,
    Path((app_id, key)): Path<(String, String)>,
) -> ApiResult<Response> {
    edit(&stub, &app_id, move |c| {
        let before = c.flags.len();
        c.flags.retain(|f| f.key != key);
        if c.flags.len() == before {
            return Err(EditError::NotFound(format!("no flag {key:?}")));
        }
        Ok(())
    })
    .await
}

async fn get_faults(State(stub): State<Shared>) -> Json<Faults> {
    Json(stub.faults())
}

async fn put_faults(State(stub): State<Shared>, body: Bytes) -> ApiResult<Json<Faults>> {
    let faults: Faults = parse_json(&body)?;
    faults
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    tracing::info!(?faults, "faults set");
    stub.set_faults(faults.clone());
    Ok(Json(faults))
}

async fn get_registry(State(stub): State<Shared>) -> Json<Vec<RegistryEntry>> {
    Json(stub.registry())
}

async fn put_registry(
    State(stub): State<Shared>,
    body: Bytes,
) -> ApiResult<Json<Vec<RegistryEntry>>> {
    let entries: Vec<RegistryEntry> = parse_json(&body)?;
    tracing::info!(apps = entries.len(), "registry override set");
    stub.set_registry(Some(entries.clone()));
    Ok(Json(entries))
}

async fn clear_registry(State(stub): State<Shared>) -> Json<Vec<RegistryEntry>> {
    tracing::info!("registry override cleared");
    stub.set_registry(None);
    Json(stub.registry())
}

async fn clear_faults(State(stub): State<Shared>) -> Json<Faults> {
    tracing::info!("faults cleared");
    stub.set_faults(Faults::default());
    Json(Faults::default())
}

// ---------------------------------------------------------------------------------
// Verification

async fn query<T, F>(stub: &Stub, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
{
    Ok(stub.store.call(move |conn| f(conn)).await?)
}

fn json_ok<T: Serialize>(v: T) -> Response {
    Json(v).into_response()
}

async fn verify_summary(State(stub): State<Shared>) -> ApiResult<Response> {
    Ok(json_ok(query(&stub, store::summary).await?))
}

async fn verify_latency(State(stub): State<Shared>) -> ApiResult<Response> {
    Ok(json_ok(query(&stub, store::latency).await?))
}

fn known_app(stub: &Stub, app_id: &str) -> ApiResult<()> {
    stub.app(app_id)
        .map(|_| ())
        .ok_or_else(|| ApiError::unknown_app(app_id))
}

async fn verify_app(State(stub): State<Shared>, Path(app_id): Path<String>) -> ApiResult<Response> {
    known_app(&stub, &app_id)?;
    Ok(json_ok(
        query(&stub, move |c| store::app_stats(c, &app_id)).await?,
    ))
}

async fn verify_identities(
    State(stub): State<Shared>,
    Path(app_id): Path<String>,
) -> ApiResult<Response> {
    known_app(&stub, &app_id)?;
    Ok(json_ok(
        query(&stub, move |c| crate::identities::identities(c, &app_id)).await?,
    ))
}

async fn verify_deletions(
    State(stub): State<Shared>,
    Path(app_id): Path<String>,
) -> ApiResult<Response> {
    known_app(&stub, &app_id)?;
    Ok(json_ok(
        query(&stub, move |c| crate::deletions::deletions(c, &app_id)).await?,
    ))
}

async fn verify_user(
    State(stub): State<Shared>,
    Path((app_id, user_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    known_app(&stub, &app_id)?;
    Ok(json_ok(
        query(&stub, move |c| store::user_stats(c, &app_id, &user_id)).await?,
    ))
}

/// `?unit=` of `/verify/apps/{app}/exposures`.
#[derive(serde::Deserialize)]
struct ExposureQuery {
    unit: Option<String>,
}

async fn verify_exposures(
    State(stub): State<Shared>,
    Path(app_id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<ExposureQuery>,
) -> ApiResult<Response> {
    known_app(&stub, &app_id)?;
    Ok(json_ok(
        query(&stub, move |c| {
            store::app_exposures(c, &app_id, q.unit.as_deref())
        })
        .await?,
    ))
}

fn device_key(device_id: &str) -> ApiResult<String> {
    DeviceId::parse(device_id)
        .map(|d| d.to_string())
        .map_err(|e| ApiError::invalid(format!("device_id: {e}")))
}

async fn verify_device(
    State(stub): State<Shared>,
    Path((app_id, device_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    known_app(&stub, &app_id)?;
    let device = device_key(&device_id)?;
    match query(&stub, move |c| store::device_stats(c, &app_id, &device)).await? {
        Some(stats) => Ok(json_ok(stats)),
        None => Err(ApiError::not_found(format!(
            "nothing stored for device {device_id}"
        ))),
    }
}

async fn verify_device_seqs(
    State(stub): State<Shared>,
    Path((app_id, device_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    known_app(&stub, &app_id)?;
    let device = device_key(&device_id)?;
    Ok(json_ok(
        query(&stub, move |c| store::device_seqs(c, &app_id, &device)).await?,
    ))
}

async fn render_metrics(State(stub): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        stub.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        let mut h = HeaderMap::new();
        assert!(!if_none_match(&h, "abc"));
        for v in ["\"abc\"", "abc", "W/\"abc\"", "\"x\", \"abc\"", "*"] {
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            assert!(if_none_match(&h, "abc"), "{v}");
        }
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"abd\""));
        assert!(!if_none_match(&h, "abc"));
    }
}
