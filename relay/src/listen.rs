//! The listeners: QUIC (ALPN `tern/1`, one bidirectional stream per request) and HTTPS
//! (`POST /v1/rpc`, one frame per body), both handing every request frame to the same
//! [`Ingest`] handler.
//!
//! A bad request never costs the connection: the handler answers it with a reply
//! frame. Connections are capped (`max_connections`; beyond it QUIC connection attempts
//! are refused and HTTPS requests get `503`), QUIC connections idle longer than
//! `idle_timeout` are closed, and a request frame larger than the protocol allows is
//! answered `ErrorReply{too_large}` without being read to the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tern_protocol::frame::{max_body_for_payload, HEADER_LEN};
use tern_protocol::limits::MAX_DEVICE_PAYLOAD;
use tern_protocol::{
    CodecConfig, ErrorReply, Message, RejectReason, FRAME_CONTENT_TYPE, HTTP_RPC_PATH,
};
use tokio::sync::Semaphore;

use crate::ingest::Ingest;
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
pub async fn serve_quic(endpoint: quinn::Endpoint, ingest: Ingest, max_connections: usize) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "connection cap reached; refusing");
            incoming.refuse();
            continue;
        };
        let ingest = ingest.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => serve_connection(conn, ingest).await,
                Err(e) => tracing::debug!(error = %e, "quic handshake failed"),
            }
            drop(slot);
        });
    }
}

async fn serve_connection(conn: quinn::Connection, ingest: Ingest) {
    loop {
        match conn.accept_bi().await {
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

async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, ingest: Ingest) {
    let reply = match recv.read_to_end(max_request_frame()).await {
        Ok(frame) => ingest.handle_frame(&frame).await,
        Err(quinn::ReadToEndError::TooLong) => {
            let _ = recv.stop(STOP_TOO_LARGE.into());
            error_frame(RejectReason::TooLarge, "request frame over the size limit")
        }
        Err(e) => {
            tracing::debug!(error = %e, "request stream failed");
            return;
        }
    };
    if send.write_all(&reply).await.is_ok() {
        let _ = send.finish();
    }
}

#[derive(Clone)]
struct HttpState {
    ingest: Ingest,
    slots: Arc<Semaphore>,
}

/// The HTTPS router: `POST /v1/rpc` and `GET /healthz`.
pub fn https_router(ingest: Ingest, max_concurrent: usize) -> Router {
    Router::new()
        .route(HTTP_RPC_PATH, post(rpc))
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
