//! The listeners: QUIC (ALPN `tern/1`, one bidirectional stream per request) and HTTPS
//! (`POST /v1/rpc`, one frame per body), both handing every request frame to the same
//! [`Ingest`] handler.
//!
//! Push streams: a QUIC stream whose first frame is a `SubscribeRequest` is not read to
//! its end (the client may keep its send side open): the relay reads exactly that frame,
//! writes `Subscribed`, then one frame per notice until the client stops the stream,
//! the connection ends or the subscription ends (relay stopping, or the client lagged:
//! see [`crate::push`]), when it finishes the stream. `POST /v1/subscribe` does the same
//! as a streamed response body. A refused subscription gets one `ErrorReply` frame.
//!
//! A bad request never costs the connection: the handler answers it with a reply
//! frame. Connections are capped (`max_connections`; beyond it QUIC connection attempts
//! are refused and HTTPS requests get `503`), QUIC connections idle longer than
//! `idle_timeout` are closed, and a request frame larger than the protocol allows is
//! answered `ErrorReply{too_large}` without being read to the end.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tern_protocol::frame::{max_body_for_payload, HEADER_LEN};
use tern_protocol::limits::MAX_DEVICE_PAYLOAD;
use tern_protocol::{
    CodecConfig, ErrorReply, Message, MessageKind, RejectReason, FRAME_CONTENT_TYPE, HTTP_RPC_PATH,
    HTTP_SUBSCRIBE_PATH,
};
use tokio::sync::Semaphore;

use crate::ingest::{Ingest, PushStream};
use crate::push::encode_notice;
use crate::tls::{TlsError, TlsMaterial};

/// QUIC application error code for closing a connection when the relay drains.
pub const CLOSE_DRAINING: u32 = 0x01;
/// QUIC application error code used with `STOP_SENDING` on an oversized request.
pub const STOP_TOO_LARGE: u32 = 0x10;

/// Largest request frame read from a stream or body.
pub fn max_request_frame() -> usize {
    HEADER_LEN + max_body_for_payload(MAX_DEVICE_PAYLOAD)
}

/// Listener settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ListenConfig {
    /// QUIC address (UDP).
    pub quic: SocketAddr,
    /// HTTPS address (TCP).
    pub https: SocketAddr,
    /// Most concurrent connections per listener.
    pub max_connections: usize,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Most concurrent request streams per QUIC connection.
    pub max_streams_per_connection: u32,
}

impl ListenConfig {
    /// Defaults on the given addresses.
    pub fn new(quic: SocketAddr, https: SocketAddr) -> Self {
        ListenConfig {
            quic,
            https,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
            max_streams_per_connection: 128,
        }
    }
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Binding failed.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// `quic` or `https`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

fn error_frame(reason: RejectReason, detail: &str) -> Vec<u8> {
    Message::ErrorReply(ErrorReply {
        shard_map_version: 0,
        reason,
        detail: detail.to_owned(),
    })
    .encode(&CodecConfig::device())
    .unwrap_or_default()
}

/// Binds the QUIC endpoint.
pub fn bind_quic(config: &ListenConfig, tls: &TlsMaterial) -> Result<quinn::Endpoint, ListenError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.quic_server_config()?)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(config.idle_timeout)
                .map_err(|e| TlsError::Rustls(e.to_string()))?,
        ))
        .max_concurrent_bidi_streams(config.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u32.into());
    server.transport_config(Arc::new(transport));
    quinn::Endpoint::server(server, config.quic).map_err(|source| ListenError::Bind {
        what: "quic",
        addr: config.quic,
        source,
    })
}

/// Serves QUIC connections on `endpoint` until it is closed.
///
/// Once the handler's [`Drain`](crate::drain::Drain) starts, new connections are
/// refused and open ones accept no new request streams (requests already accepted are
/// finished; the caller then closes the endpoint with [`CLOSE_DRAINING`]).
pub async fn serve_quic(endpoint: quinn::Endpoint, ingest: Ingest, max_connections: usize) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let drain = ingest.drain().clone();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = drain.started() => {
                // Refuse new handshakes outright instead of leaving them pending.
                endpoint.set_server_config(None);
                tracing::info!("draining: no new QUIC connections");
                return;
            }
        };
        let Some(incoming) = incoming else {
            return;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "connection cap reached; refusing");
            metrics::counter!("tern_relay_connections_refused_total", "transport" => "quic")
                .increment(1);
            incoming.refuse();
            continue;
        };
        let ingest = ingest.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    metrics::counter!("tern_relay_connections_total", "transport" => "quic")
                        .increment(1);
                    let open = metrics::gauge!("tern_relay_connections", "transport" => "quic");
                    open.increment(1.0);
                    let counters = ingest.counters_arc();
                    counters.quic_connections.fetch_add(1, Ordering::Relaxed);
                    serve_connection(conn, ingest).await;
                    counters.quic_connections.fetch_sub(1, Ordering::Relaxed);
                    open.decrement(1.0);
                }
                Err(e) => {
                    metrics::counter!("tern_relay_handshake_failures_total").increment(1);
                    tracing::debug!(error = %e, "quic handshake failed")
                }
            }
            drop(slot);
        });
    }
}

async fn serve_connection(conn: quinn::Connection, ingest: Ingest) {
    let drain = ingest.drain().clone();
    loop {
        let stream = tokio::select! {
            s = conn.accept_bi() => s,
            // Draining: no new request streams; the ones accepted finish, then the
            // endpoint closes every connection with the `draining` code. The handle is
            // kept until then: dropping the last one would close the connection with
            // code 0, which devices would take for a failure, not a drain.
            _ = drain.started() => {
                conn.closed().await;
                return;
            }
        };
        match stream {
            Ok((send, recv)) => {
                let ingest = ingest.clone();
                tokio::spawn(serve_stream(send, recv, ingest));
            }
            Err(e) => {
                tracing::debug!(remote = %conn.remote_address(), reason = %e, "connection ended");
                return;
            }
        }
    }
}

/// What the start of a request stream turned out to be.
enum Read {
    /// The whole stream, up to its end: one request frame (or garbage, answered by the
    /// handler).
    Request(Vec<u8>),
    /// Exactly one complete `SubscribeRequest` frame; the stream stays open.
    Subscribe(Vec<u8>),
    /// More than [`max_request_frame`] bytes.
    TooLarge,
    /// The stream failed.
    Failed(quinn::ReadError),
}

/// The length of the frame at the start of `buf` if it is a `SubscribeRequest` within
/// the size limit.
fn subscribe_frame_len(buf: &[u8]) -> Option<usize> {
    let header = buf.first_chunk::<HEADER_LEN>()?;
    if header[4] != MessageKind::SubscribeRequest.as_u8() {
        return None;
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let body = len.checked_sub(2)?;
    (body <= max_body_for_payload(MAX_DEVICE_PAYLOAD)).then_some(HEADER_LEN + body)
}

/// Reads a request stream: to its end (as before push streams existed), except that a
/// complete `SubscribeRequest` frame at its start is returned at once.
async fn read_request(recv: &mut quinn::RecvStream) -> Read {
    let limit = max_request_frame();
    let mut buf = Vec::new();
    loop {
        match recv.read_chunk(limit, true).await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk.bytes);
                if buf.len() > limit {
                    return Read::TooLarge;
                }
                if let Some(len) = subscribe_frame_len(&buf) {
                    if buf.len() >= len {
                        buf.truncate(len);
                        return Read::Subscribe(buf);
                    }
                }
            }
            Ok(None) => return Read::Request(buf),
            Err(e) => return Read::Failed(e),
        }
    }
}

async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, ingest: Ingest) {
    // In flight until the reply is written: a drain waits for it.
    let in_flight = ingest.drain().track();
    let reply = match read_request(&mut recv).await {
        Read::Request(frame) => ingest.handle_frame(&frame).await,
        Read::Subscribe(frame) => {
            drop(in_flight);
            return serve_push(send, recv, &frame, ingest).await;
        }
        Read::TooLarge => {
            let _ = recv.stop(STOP_TOO_LARGE.into());
            error_frame(RejectReason::TooLarge, "request frame over the size limit")
        }
        Read::Failed(e) => {
            tracing::debug!(error = %e, "request stream failed");
            return;
        }
    };
    if send.write_all(&reply).await.is_ok() {
        let _ = send.finish();
        // The reply is queued; wait (bounded) until the peer has it, so that closing
        // the connection for a drain cannot discard an acknowledgement.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
    drop(in_flight);
}

/// Serves a push stream until the client stops it, the connection ends or the
/// subscription ends. `recv` is kept open meanwhile: dropping it would stop the
/// client's send side, which it may legitimately keep open.
async fn serve_push(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    frame: &[u8],
    ingest: Ingest,
) {
    let _open = ingest.drain().track_push();
    let (first, mut subscription) = match ingest.open_push_stream(frame).await {
        PushStream::Refused(reply) => {
            if send.write_all(&reply).await.is_ok() {
                let _ = send.finish();
            }
            return;
        }
        PushStream::Open {
            first,
            subscription,
        } => (first, subscription),
    };
    if send.write_all(&first).await.is_err() {
        return;
    }
    // Resolves when the client stops the stream or the connection is lost.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            notice = subscription.recv() => match notice {
                Some(n) => {
                    if send.write_all(&encode_notice(&n)).await.is_err() {
                        break;
                    }
                }
                None => {
                    // The hub ended the subscription (a drain): make sure the last
                    // notices (e.g. `Draining`) reach the device before the
                    // connection closes.
                    if send.finish().is_ok() {
                        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                    }
                    break;
                }
            },
            _ = &mut stopped => break,
        }
    }
    drop(recv);
}

#[derive(Clone)]
struct HttpState {
    ingest: Ingest,
    slots: Arc<Semaphore>,
}

/// The HTTPS router: `POST /v1/rpc`, `POST /v1/subscribe` and `GET /healthz`.
pub fn https_router(ingest: Ingest, max_concurrent: usize) -> Router {
    Router::new()
        .route(HTTP_RPC_PATH, post(rpc))
        .route(HTTP_SUBSCRIBE_PATH, post(subscribe))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(max_request_frame()))
        .with_state(HttpState {
            ingest,
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
        })
}

async fn rpc(State(state): State<HttpState>, body: Bytes) -> Response {
    let Ok(_slot) = state.slots.try_acquire() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "relay at its connection limit",
        )
            .into_response();
    };
    let reply = state.ingest.handle_frame(&body).await;
    ([(header::CONTENT_TYPE, FRAME_CONTENT_TYPE)], reply).into_response()
}

/// `POST /v1/subscribe`: a streamed body of notice frames, `Subscribed` first. The
/// subscription holds one of the listener's slots while it lasts, and ends when the
/// client goes away (the body is dropped) or the subscription ends.
async fn subscribe(State(state): State<HttpState>, body: Bytes) -> Response {
    let Ok(slot) = state.slots.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "relay at its connection limit",
        )
            .into_response();
    };
    let body = match state.ingest.open_push_stream(&body).await {
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
                futures_util::stream::unfold((subscription, slot), |(mut sub, slot)| async move {
                    let notice = sub.recv().await?;
                    Some((Ok(Bytes::from(encode_notice(&notice))), (sub, slot)))
                });
            Body::from_stream(first.chain(rest))
        }
    };
    ([(header::CONTENT_TYPE, FRAME_CONTENT_TYPE)], body).into_response()
}

/// Serves HTTPS on `listener` until `handle` is told to shut down.
pub async fn serve_https(
    listener: std::net::TcpListener,
    tls: &TlsMaterial,
    ingest: Ingest,
    max_concurrent: usize,
    handle: axum_server::Handle<SocketAddr>,
) -> Result<(), ListenError> {
    let rustls = axum_server::tls_rustls::RustlsConfig::from_config(tls.https_server_config()?);
    let addr = listener.local_addr().map_err(|source| ListenError::Bind {
        what: "https",
        addr: "0.0.0.0:0"
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        source,
    })?;
    axum_server::from_tcp_rustls(listener, rustls)
        .map_err(|source| ListenError::Bind {
            what: "https",
            addr,
            source,
        })?
        .handle(handle)
        .serve(https_router(ingest, max_concurrent).into_make_service())
        .await
        .map_err(|source| ListenError::Bind {
            what: "https",
            addr,
            source,
        })
}
