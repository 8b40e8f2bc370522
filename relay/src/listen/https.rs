//! The HTTPS listener: its own accept loop (connection budget, TLS handshake deadline),
//! hyper with the header and idle deadlines ([`super::http`]), and the axum routes,
//! whose bodies are read only after a request slot (or a subscription unit) is taken,
//! under the byte budget and the read deadline.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http_body_util::BodyExt;
use tern_protocol::limits::MAX_DEVICE_PAYLOAD;
use tern_protocol::{RejectReason, FRAME_CONTENT_TYPE, HTTP_RPC_PATH, HTTP_SUBSCRIBE_PATH};

use super::budget::{BufferError, Refusal, RequestBuffer};
use super::http::{accept_loop, serve_connection, Builders, HttpHandle, HttpSettings};
use super::{
    deadline_exceeded, error_frame, max_request_frame, too_large, Budgets, ListenError, Peer,
};
use crate::ingest::{Ingest, PushStream};
use crate::listen::tls::TlsMaterial;
use crate::remote::push::encode_notice;

/// Body bytes of an oversized request read and thrown away (within the read deadline)
/// so the client gets its `ErrorReply{too_large}` instead of a reset connection.
const DISCARD_LIMIT: u64 = 8 * 1024 * 1024;

#[derive(Clone)]
struct HttpState {
    ingest: Ingest,
    budgets: Arc<Budgets>,
}

/// The HTTPS router: `POST /v1/rpc`, `POST /v1/subscribe` and `GET /healthz`. Every
/// request must carry the [`Peer`] extension (the listener inserts it).
pub fn https_router(ingest: Ingest, budgets: Arc<Budgets>) -> Router {
    Router::new()
        .route(HTTP_RPC_PATH, post(rpc))
        .route(HTTP_SUBSCRIBE_PATH, post(subscribe))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(HttpState { ingest, budgets })
}

/// A refusal the client should take as "try again later" (a transport failure,
/// docs/protocol.md §2.2).
fn unavailable(why: &'static str) -> Response {
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn frame_response(body: impl Into<Body>) -> Response {
    ([(header::CONTENT_TYPE, FRAME_CONTENT_TYPE)], body.into()).into_response()
}

/// How reading a request body ended.
enum BodyRead {
    Frame(RequestBuffer),
    TooLarge,
    Busy(Refusal),
    TimedOut,
    Failed,
}

/// Reads the body of `req` into a budgeted buffer within the read deadline.
async fn read_body(
    body: &mut Body,
    declared: Option<u64>,
    peer: Peer,
    budgets: &Budgets,
) -> BodyRead {
    let limit = max_request_frame();
    if declared.is_some_and(|n| n > limit as u64) {
        return BodyRead::TooLarge;
    }
    let mut buf = RequestBuffer::new(&budgets.request_bytes, peer.0, limit);
    let deadline = tokio::time::Instant::now() + budgets.limits.request_read_timeout;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return BodyRead::TimedOut,
            Ok(None) => return BodyRead::Frame(buf),
            Ok(Some(Err(_))) => return BodyRead::Failed,
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                match buf.push(&data) {
                    Ok(()) => {}
                    Err(BufferError::TooLarge) => return BodyRead::TooLarge,
                    Err(BufferError::Budget(r)) => return BodyRead::Busy(r),
                }
            }
        }
    }
}

/// Reads and drops the rest of an oversized body (up to [`DISCARD_LIMIT`], within the
/// read deadline), so that the reply is not lost to a connection reset.
async fn discard(body: &mut Body, budgets: &Budgets) {
    let deadline = tokio::time::Instant::now() + budgets.limits.request_read_timeout;
    let mut seen = 0u64;
    while seen < DISCARD_LIMIT {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            _ => return,
        }
    }
}

/// The response to a body that could not be read whole; `None` if it was.
async fn body_failure(
    read: BodyRead,
    body: &mut Body,
    state: &HttpState,
) -> Result<RequestBuffer, Response> {
    match read {
        BodyRead::Frame(frame) => Ok(frame),
        BodyRead::TooLarge => {
            too_large("https");
            discard(body, &state.budgets).await;
            Err(frame_response(error_frame(
                RejectReason::TooLarge,
                "request frame over the size limit",
            )))
        }
        BodyRead::Busy(refusal) => {
            state.budgets.request_bytes.count_refusal(refusal, "https");
            Err(unavailable("relay at its request-byte budget"))
        }
        BodyRead::TimedOut => {
            deadline_exceeded("https", "request");
            Err((StatusCode::REQUEST_TIMEOUT, "request body too slow").into_response())
        }
        BodyRead::Failed => Err((StatusCode::BAD_REQUEST, "request body failed").into_response()),
    }
}

fn content_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn rpc(
    State(state): State<HttpState>,
    Extension(peer): Extension<Peer>,
    req: Request,
) -> Response {
    // The slot first: a body is read only for a request the relay will serve.
    let _slot = match state.budgets.https_requests.try_take(peer.0, 1) {
        Ok(slot) => slot,
        Err(refusal) => {
            state.budgets.https_requests.count_refusal(refusal, "https");
            return unavailable("relay at its request limit");
        }
    };
    let declared = content_length(&req);
    let mut body = req.into_body();
    let read = read_body(&mut body, declared, peer, &state.budgets).await;
    let mut frame = match body_failure(read, &mut body, &state).await {
        Ok(frame) => frame,
        Err(response) => return response,
    };
    if let Err(refusal) = frame.charge_payload(MAX_DEVICE_PAYLOAD) {
        state.budgets.request_bytes.count_refusal(refusal, "https");
        return unavailable("relay at its request-byte budget");
    }
    let reply = state.ingest.handle_frame(frame.bytes()).await;
    drop(frame);
    frame_response(reply)
}

/// `POST /v1/subscribe`: a streamed body of notice frames, `Subscribed` first. The
/// subscription holds a unit of the subscription budget (not a request slot) while it
/// lasts, and ends when the client goes away (the body is dropped) or the subscription
/// ends.
async fn subscribe(
    State(state): State<HttpState>,
    Extension(peer): Extension<Peer>,
    req: Request,
) -> Response {
    let unit = match state.budgets.subscriptions.try_take(peer.0, 1) {
        Ok(unit) => unit,
        Err(refusal) => {
            state.budgets.subscriptions.count_refusal(refusal, "https");
            return unavailable("relay at its subscription limit");
        }
    };
    let declared = content_length(&req);
    let mut body = req.into_body();
    let read = read_body(&mut body, declared, peer, &state.budgets).await;
    let frame = match body_failure(read, &mut body, &state).await {
        Ok(frame) => frame,
        Err(response) => return response,
    };
    let opened = state.ingest.open_push_stream(frame.bytes()).await;
    drop(frame);
    let body = match opened {
        PushStream::Refused(reply) => Body::from(reply),
        PushStream::Open {
            first,
            subscription,
        } => {
            use futures_util::StreamExt;
            let first = futures_util::stream::once(async move {
                Ok::<_, std::convert::Infallible>(Bytes::from(first))
            });
            let rest =
                futures_util::stream::unfold((subscription, unit), |(mut sub, unit)| async move {
                    let notice = sub.recv().await?;
                    Some((Ok(Bytes::from(encode_notice(&notice))), (sub, unit)))
                });
            Body::from_stream(first.chain(rest))
        }
    };
    frame_response(body)
}

/// Serves HTTPS on `listener` until `handle` stops it: each TCP connection takes a
/// unit of the HTTPS connection budget (`limits.https_max_connections`, per source
/// `limits.connections_per_source`) or is closed at once; its TLS handshake must
/// finish within `limits.handshake_timeout`; then [`https_router`] serves it, HTTP/2
/// when the client chose it by ALPN, else HTTP/1.1.
pub async fn serve_https(
    listener: std::net::TcpListener,
    tls: &TlsMaterial,
    ingest: Ingest,
    budgets: Arc<Budgets>,
    handle: HttpHandle,
) -> Result<(), ListenError> {
    let addr = listener
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let bind_error = |source: std::io::Error| ListenError::Bind {
        what: "https",
        addr,
        source,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.https_server_config()?);
    listener.set_nonblocking(true).map_err(bind_error)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_error)?;
    let router = https_router(ingest, budgets.clone());
    let builders = Arc::new(Builders::new(HttpSettings {
        header_timeout: budgets.limits.header_timeout,
        h2_max_streams: budgets.limits.http2_max_streams,
        transport: "https",
    }));
    let handshake_timeout = budgets.limits.handshake_timeout;
    let quota = budgets.https_connections.clone();
    accept_loop(listener, handle, "https", quota, move |tcp, peer, stop| {
        let (acceptor, router, builders) = (acceptor.clone(), router.clone(), builders.clone());
        Box::pin(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics::counter!("tern_relay_handshake_failures_total", "transport" => "https")
                        .increment(1);
                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    deadline_exceeded("https", "handshake");
                    return;
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_connection(tls, h2, peer, router, &builders, stop).await;
        })
    })
    .await;
    Ok(())
}
