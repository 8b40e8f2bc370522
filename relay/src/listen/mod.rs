//! The listeners: QUIC (ALPN `tern/1`, one bidirectional stream per request) and HTTPS
//! (`POST /v1/rpc`, one frame per body), both handing every request frame to the same
//! [`Ingest`](crate::ingest::Ingest) handler; and the plain-HTTP serving of the admin
//! and metrics listeners ([`serve_http`]).
//!
//! Push streams: a QUIC stream whose first frame is a `SubscribeRequest` is not read to
//! its end (the client may keep its send side open): the relay reads exactly that frame,
//! writes `Subscribed`, then one frame per notice until the client stops the stream,
//! the connection ends or the subscription ends (relay stopping, or the client lagged:
//! see [`crate::remote::push`]), when it finishes the stream. `POST /v1/subscribe` does the same
//! as a streamed response body. A refused subscription gets one `ErrorReply` frame.
//!
//! A bad request never costs the connection: the handler answers it with a reply
//! frame; a request frame larger than the protocol allows is answered
//! `ErrorReply{too_large}` (QUIC: without being read to the end; HTTPS: `200`, after
//! the rest of the body is read and dropped).
//!
//! **Every resource an anonymous client can hold is bounded** ([`Limits`], shared by
//! both listeners through [`Budgets`]; each [`budget::Quota`] has a total and a
//! per-source share):
//!
//! | resource | bound | over it |
//! |---|---|---|
//! | memory of requests in flight (frames being read, being handled) | `request_bytes`, `request_bytes_per_source`; charged before allocation | QUIC stream reset `busy` (0x11); HTTPS `503` |
//! | time to send a request frame / body | `request_read_timeout` | QUIC stream reset `read_timeout` (0x12); HTTPS `408` |
//! | QUIC handshakes in progress | paced: as many as finished in the last `handshake_queue` (measured, at least `handshake_pace_floor`; [`pace`]); `max_handshakes`, `handshakes_per_source`, `handshake_timeout`; above `retry_above_handshakes` unproven addresses get a Retry | connection refused |
//! | datagrams not yet read (a storm's first packets) | `quic_socket_receive_buffer` (`SO_RCVBUF`, capped by the kernel) | dropped by the kernel |
//! | QUIC connections (taken after the handshake) | `max_connections`, `connections_per_source` | closed with `overloaded` (0x03) |
//! | HTTPS connections (file descriptors) | `https_max_connections`, `connections_per_source`; TLS within `handshake_timeout`; request heads within `header_timeout`, which is also the longest a connection may sit without a request | closed |
//! | HTTPS requests in progress | `https_max_requests`, `requests_per_source`, taken before the body is read | `503` |
//! | push subscriptions (QUIC and HTTPS) | `max_subscriptions`, `subscriptions_per_source`, apart from ingest | QUIC stream reset `busy`; HTTPS `503` |
//! | admin and metrics connections | `admin_max_connections` each (half per source), `header_timeout` | closed |
//!
//! Refusals are counted in `tern_relay_refused_total{limit, reason, transport}`,
//! deadlines in `tern_relay_deadline_exceeded_total{transport, phase}`, Retry packets
//! in `tern_relay_quic_retries_total`, paced refusals also in
//! `tern_relay_handshakes_paced_total`, with the pace's current limit in
//! `tern_relay_handshake_pace_limit` and the time from a first Initial to an
//! established connection in `tern_relay_quic_handshake_duration_seconds`; `tern_relay_limit{limit, scope}` and
//! `tern_relay_limit_in_use{limit}` show each budget and its use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_protocol::frame::{max_body_for_payload, HEADER_LEN};
use tern_protocol::limits::MAX_DEVICE_PAYLOAD;
use tern_protocol::{CodecConfig, ErrorReply, Message, RejectReason};

use crate::listen::tls::TlsError;

pub mod budget;
mod http;
mod https;
pub mod pace;
mod quic;
pub mod tls;

pub use budget::{Quota, Source};
pub use http::{serve_http, HttpHandle, PlainLimits};
pub use https::{https_router, serve_https};
pub use quic::{bind_quic, serve_quic};

/// QUIC application error code for closing a connection when the relay drains.
pub const CLOSE_DRAINING: u32 = 0x01;
/// QUIC application error code for closing a connection over the relay's limits.
pub const CLOSE_OVERLOADED: u32 = 0x03;
/// QUIC application error code used with `STOP_SENDING` on an oversized request.
pub const STOP_TOO_LARGE: u32 = 0x10;
/// QUIC application error code of a request stream refused for a budget
/// (`STOP_SENDING` and `RESET_STREAM`): the client retries later.
pub const STOP_BUSY: u32 = 0x11;
/// QUIC application error code of a request stream whose frame did not arrive within
/// the read deadline (`STOP_SENDING` and `RESET_STREAM`).
pub const STOP_TIMEOUT: u32 = 0x12;

/// Largest request frame read from a stream or body.
pub fn max_request_frame() -> usize {
    HEADER_LEN + max_body_for_payload(MAX_DEVICE_PAYLOAD)
}

/// What anonymous clients may hold, in total and per source (see the module table).
/// `Default` holds the documented defaults (`docs/operations.md`, "Under attack").
///
/// It is also the config file's `[limits]` table, field for field (durations in
/// milliseconds, as `request_read_timeout_ms`, `header_timeout_ms`,
/// `handshake_timeout_ms`), overridden by `TERN_RELAY_LIMITS_<FIELD>`; the config loader
/// checks it ([`crate::config::RelayConfig::load`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Limits {
    /// Bytes of request data in flight (being read or handled), all clients.
    pub request_bytes: usize,
    /// Bytes of request data in flight from one source.
    pub request_bytes_per_source: usize,
    /// A whole request frame (QUIC stream, HTTPS body) must arrive within this long.
    #[serde(rename = "request_read_timeout_ms", deserialize_with = "millis")]
    pub request_read_timeout: Duration,
    /// An HTTP request head must arrive within this long; a connection without a
    /// request open for this long is closed (HTTPS, admin, metrics).
    #[serde(rename = "header_timeout_ms", deserialize_with = "millis")]
    pub header_timeout: Duration,
    /// QUIC and TLS handshakes must finish within this long.
    #[serde(rename = "handshake_timeout_ms", deserialize_with = "millis")]
    pub handshake_timeout: Duration,
    /// QUIC handshakes in progress, all clients.
    pub max_handshakes: usize,
    /// QUIC handshakes in progress from one source.
    pub handshakes_per_source: usize,
    /// Above this many handshakes in progress, a client whose address is not yet
    /// validated gets a Retry first (0: always).
    pub retry_above_handshakes: usize,
    /// Handshake pacing: at most as many QUIC handshakes run at once as the relay
    /// finished in this long, measured ([`pace`]); attempts beyond are refused at
    /// once, which devices take for back-pressure. Keep it well below the devices'
    /// connect timeout (3 s by default); it is used as at most `handshake_timeout`.
    #[serde(rename = "handshake_queue_ms", deserialize_with = "millis")]
    pub handshake_queue: Duration,
    /// Handshake pacing never admits fewer than this many at once (what an idle relay
    /// starts with, before anything is measured); `max_handshakes` bounds it. The
    /// measured rate counts the clients' part of each handshake too (round trips, a
    /// slow phone), so a low floor would let slow clients shrink the pace to it: keep it
    /// at what the relay can always afford to have in progress.
    pub handshake_pace_floor: usize,
    /// Bytes the kernel may buffer of datagrams arriving on the QUIC socket before the
    /// relay reads them (`SO_RCVBUF`): room for the first packets of a connection storm.
    /// The kernel caps it at `net.core.rmem_max`; the relay logs what it got.
    pub quic_socket_receive_buffer: usize,
    /// Connections from one source (QUIC and HTTPS each).
    pub connections_per_source: usize,
    /// TCP connections on the HTTPS listener (file descriptors).
    pub https_max_connections: usize,
    /// HTTPS requests in progress, all clients (subscriptions not counted).
    pub https_max_requests: usize,
    /// HTTPS requests in progress from one source.
    pub requests_per_source: usize,
    /// Push subscriptions open (QUIC and HTTPS), all clients.
    pub max_subscriptions: usize,
    /// Push subscriptions open from one source.
    pub subscriptions_per_source: usize,
    /// Concurrent HTTP/2 streams per HTTPS connection.
    pub http2_max_streams: u32,
    /// QUIC connection-level flow-control window (bytes the peer may send ahead).
    pub quic_receive_window: u64,
    /// QUIC per-stream flow-control window.
    pub quic_stream_receive_window: u64,
    /// Connections to the admin listener, and to the metrics listener, each.
    pub admin_max_connections: usize,
}

/// A duration given in milliseconds.
fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_millis)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_bytes: 256 << 20,
            request_bytes_per_source: 16 << 20,
            request_read_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 4096,
            handshakes_per_source: 64,
            retry_above_handshakes: 1024,
            handshake_queue: Duration::from_secs(1),
            handshake_pace_floor: 1024,
            quic_socket_receive_buffer: 8 << 20,
            connections_per_source: 1024,
            https_max_connections: 4096,
            https_max_requests: 4096,
            requests_per_source: 256,
            max_subscriptions: 10_000,
            subscriptions_per_source: 256,
            http2_max_streams: 16,
            quic_receive_window: 2 << 20,
            quic_stream_receive_window: 1_250_000,
            admin_max_connections: 64,
        }
    }
}

/// Listener settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ListenConfig {
    /// QUIC address (UDP).
    pub quic: SocketAddr,
    /// HTTPS address (TCP).
    pub https: SocketAddr,
    /// Most concurrent QUIC connections (established; handshakes are counted apart).
    pub max_connections: usize,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Most concurrent request streams per QUIC connection.
    pub max_streams_per_connection: u32,
    /// What anonymous clients may hold.
    pub limits: Limits,
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
            limits: Limits::default(),
        }
    }
}

/// The budgets of both listeners, built once from a [`ListenConfig`] and shared: the
/// request bytes and the subscriptions are one budget across QUIC and HTTPS.
#[derive(Debug)]
#[non_exhaustive]
pub struct Budgets {
    /// The limits the budgets were built from (deadlines included).
    pub limits: Limits,
    /// Request data in flight, bytes.
    pub request_bytes: Quota,
    /// QUIC handshakes in progress.
    pub quic_handshakes: Quota,
    /// How many QUIC handshakes may run at once, from how many finish ([`pace`]).
    pub handshake_pace: std::sync::Mutex<pace::HandshakePace>,
    /// Established QUIC connections.
    pub quic_connections: Quota,
    /// HTTPS (TCP) connections.
    pub https_connections: Quota,
    /// HTTPS requests in progress.
    pub https_requests: Quota,
    /// Push subscriptions.
    pub subscriptions: Quota,
}

impl Budgets {
    /// The handshake pace, locked (a poisoned lock is taken over: the pace is counts).
    pub fn pace(&self) -> std::sync::MutexGuard<'_, pace::HandshakePace> {
        self.handshake_pace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The budgets of `config`.
    pub fn new(config: &ListenConfig) -> Arc<Budgets> {
        let l = &config.limits;
        Arc::new(Budgets {
            request_bytes: Quota::new("request_bytes", l.request_bytes, l.request_bytes_per_source),
            quic_handshakes: Quota::new(
                "quic_handshakes",
                l.max_handshakes,
                l.handshakes_per_source,
            ),
            handshake_pace: std::sync::Mutex::new(pace::HandshakePace::new(
                l.handshake_queue.min(l.handshake_timeout),
                l.handshake_pace_floor,
                l.max_handshakes,
            )),
            quic_connections: Quota::new(
                "quic_connections",
                config.max_connections,
                l.connections_per_source,
            ),
            https_connections: Quota::new(
                "https_connections",
                l.https_max_connections,
                l.connections_per_source,
            ),
            https_requests: Quota::new(
                "https_requests",
                l.https_max_requests,
                l.requests_per_source,
            ),
            subscriptions: Quota::new(
                "subscriptions",
                l.max_subscriptions,
                l.subscriptions_per_source,
            ),
            limits: l.clone(),
        })
    }
}

/// The source of an HTTP request (a request extension the listeners insert).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub Source);

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

/// Counts a request frame over the size limit.
fn too_large(transport: &'static str) {
    metrics::counter!("tern_relay_requests_too_large_total", "transport" => transport).increment(1);
}

/// Counts a deadline that cut a client off.
fn deadline_exceeded(transport: &'static str, phase: &'static str) {
    metrics::counter!(
        "tern_relay_deadline_exceeded_total",
        "transport" => transport,
        "phase" => phase
    )
    .increment(1);
}
