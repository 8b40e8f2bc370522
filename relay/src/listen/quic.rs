//! The QUIC listener: admission (Retry, handshake budget and deadline, connection
//! budget), request streams read under the byte budget and the read deadline, push
//! streams under the subscription budget.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tern_protocol::frame::{max_body_for_payload, HEADER_LEN};
use tern_protocol::limits::MAX_DEVICE_PAYLOAD;
use tern_protocol::{MessageKind, RejectReason};

use super::budget::{BufferError, Held, Refusal, RequestBuffer, Source};
use super::{
    deadline_exceeded, error_frame, max_request_frame, too_large, Budgets, ListenConfig,
    ListenError, CLOSE_OVERLOADED, STOP_BUSY, STOP_TIMEOUT, STOP_TOO_LARGE,
};
use crate::ingest::{Ingest, PushStream};
use crate::listen::tls::{TlsError, TlsMaterial};
use crate::remote::push::encode_notice;

/// Binds the QUIC endpoint: the transport settings bound what one connection may make
/// the relay buffer (flow-control windows, streams, datagrams), and the server
/// settings what connection attempts waiting to be looked at may.
pub fn bind_quic(config: &ListenConfig, tls: &TlsMaterial) -> Result<quinn::Endpoint, ListenError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.quic_server_config()?)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let limits = &config.limits;
    let varint = |v: u64| quinn::VarInt::from_u64(v).unwrap_or(quinn::VarInt::MAX);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(config.idle_timeout)
                .map_err(|e| TlsError::Rustls(e.to_string()))?,
        ))
        .max_concurrent_bidi_streams(config.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u32.into())
        .receive_window(varint(limits.quic_receive_window))
        .stream_receive_window(varint(limits.quic_stream_receive_window))
        .send_window(limits.quic_receive_window)
        // Liveness probes only (docs/protocol.md §2.1): their content is ignored, so
        // a small buffer; it must stay above 0 for the relay to accept them.
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    server.transport_config(Arc::new(transport));
    // Attempts not yet looked at: the accept loop looks at each at once, so these
    // bound a burst, not a backlog.
    server
        .max_incoming(limits.max_handshakes.max(1) * 2)
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(16 * 1024 * 1024);
    let bind_err = |source| ListenError::Bind {
        what: "quic",
        addr: config.quic,
        source,
    };
    let socket = std::net::UdpSocket::bind(config.quic).map_err(bind_err)?;
    set_receive_buffer(&socket, limits.quic_socket_receive_buffer);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_err(std::io::Error::other("no async runtime for QUIC")))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(bind_err)
}

/// Asks the kernel for `bytes` of receive buffer on the QUIC socket: a storm's first
/// packets arrive faster than any reader, and what does not fit is dropped before the
/// relay sees it (the devices would hear nothing and take UDP for blocked). The kernel
/// caps the size (`net.core.rmem_max` on Linux); what it gave is logged and exported
/// as `tern_relay_quic_socket_receive_buffer_bytes`.
fn set_receive_buffer(socket: &std::net::UdpSocket, bytes: usize) {
    let state = match quinn::udp::UdpSocketState::new(socket.into()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "QUIC socket: could not read its state");
            return;
        }
    };
    if let Err(e) = state.set_recv_buffer_size(socket.into(), bytes) {
        tracing::warn!(error = %e, bytes, "QUIC socket: could not set the receive buffer");
    }
    match state.recv_buffer_size(socket.into()) {
        Ok(got) => {
            metrics::gauge!("tern_relay_quic_socket_receive_buffer_bytes").set(got as f64);
            // Linux reports twice what it grants (the other half is its bookkeeping).
            if got < bytes {
                tracing::warn!(
                    asked = bytes,
                    got,
                    "QUIC socket receive buffer below limits.quic_socket_receive_buffer: \
                     raise net.core.rmem_max so a connection storm's first packets fit"
                );
            } else {
                tracing::debug!(asked = bytes, got, "QUIC socket receive buffer");
            }
        }
        Err(e) => tracing::warn!(error = %e, "QUIC socket: could not read the receive buffer"),
    }
}

/// Bytes of QUIC datagrams (liveness probes) buffered per connection.
const DATAGRAM_BUFFER: usize = 4096;

/// Serves QUIC connections on `endpoint` until it is closed.
///
/// Admission of each connection attempt, before any state is kept for it:
/// * draining: refused;
/// * the handshake budget is paced: no more in progress than the relay finished in
///   the last `limits.handshake_queue` (measured, at least
///   `limits.handshake_pace_floor`, at most `limits.max_handshakes`: [`super::pace`]);
///   an attempt over that total is refused at once;
/// * an address not yet validated gets a Retry (stateless: a spoofed source never
///   gets further) while more handshakes are in progress than
///   `limits.retry_above_handshakes`, or while its source holds its share of them;
/// * the handshake takes a unit of the handshake budget (total and per source;
///   refused when there is none) and must finish within `limits.handshake_timeout`;
/// * the established connection takes a connection slot (`max_connections`, per
///   source `limits.connections_per_source`) or is closed with `overloaded`.
///
/// Once the handler's [`Drain`](crate::ingest::drain::Drain) starts, new connections are
/// refused and open ones accept no new request streams (requests already accepted are
/// finished; the caller then closes the endpoint with
/// [`CLOSE_DRAINING`](super::CLOSE_DRAINING)).
pub async fn serve_quic(endpoint: quinn::Endpoint, ingest: Ingest, budgets: Arc<Budgets>) {
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
        let remote = incoming.remote_address();
        let source = Source::of(remote.ip());
        let handshakes = &budgets.quic_handshakes;
        // The handshake budget is paced: no more in progress than finish in the queue
        // time (`pace` module docs); the per-source share binds within that.
        let limit = {
            let mut pace = budgets.pace();
            pace.limit(std::time::Instant::now())
        };
        metrics::gauge!("tern_relay_handshake_pace_limit").set(limit as f64);
        let paced = limit < budgets.limits.max_handshakes;
        let refusal = handshakes.would_refuse_within(source, 1, limit);
        if refusal != Some(Refusal::Total)
            && !incoming.remote_address_validated()
            && incoming.may_retry()
            && (handshakes.used() >= budgets.limits.retry_above_handshakes || refusal.is_some())
        {
            // Prove the address first: costs the relay nothing, a spoofer everything.
            metrics::counter!("tern_relay_quic_retries_total").increment(1);
            let _ = incoming.retry();
            continue;
        }
        let handshake = match handshakes.try_take_within(source, 1, limit) {
            Ok(h) => h,
            Err(refusal) => {
                // At the total, the attempt would wait behind more handshakes than the
                // relay finishes in the queue time, and time out on the device: a
                // refusal (a few bytes, no state, never more than the Initial that
                // caused it) tells it to come back after its backoff.
                tracing::debug!(%remote, %refusal, limit, "QUIC handshake budget; refusing");
                handshakes.count_refusal(refusal, "quic");
                if paced && refusal == Refusal::Total {
                    metrics::counter!("tern_relay_handshakes_paced_total").increment(1);
                }
                metrics::counter!("tern_relay_connections_refused_total", "transport" => "quic")
                    .increment(1);
                incoming.refuse();
                continue;
            }
        };
        tokio::spawn(handshake_then_serve(
            incoming,
            handshake,
            ingest.clone(),
            budgets.clone(),
        ));
    }
}

async fn handshake_then_serve(
    incoming: quinn::Incoming,
    handshake: Held,
    ingest: Ingest,
    budgets: Arc<Budgets>,
) {
    let remote = incoming.remote_address();
    let started = tokio::time::Instant::now();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("tern_relay_handshake_failures_total").increment(1);
            tracing::debug!(error = %e, "quic handshake failed");
            return;
        }
    };
    // Dropping `connecting` on the deadline closes the attempt.
    let conn = match tokio::time::timeout(budgets.limits.handshake_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            metrics::counter!("tern_relay_handshake_failures_total").increment(1);
            tracing::debug!(error = %e, "quic handshake failed");
            return;
        }
        Err(_) => {
            deadline_exceeded("quic", "handshake");
            tracing::debug!(%remote, "quic handshake not finished in time; dropped");
            return;
        }
    };
    drop(handshake);
    budgets.pace().finished(std::time::Instant::now());
    metrics::histogram!("tern_relay_quic_handshake_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    let source = Source::of(remote.ip());
    let slot = match budgets.quic_connections.try_take(source, 1) {
        Ok(slot) => slot,
        Err(refusal) => {
            tracing::warn!(%remote, %refusal, "QUIC connection budget; closing");
            budgets.quic_connections.count_refusal(refusal, "quic");
            metrics::counter!("tern_relay_connections_refused_total", "transport" => "quic")
                .increment(1);
            conn.close(CLOSE_OVERLOADED.into(), b"overloaded");
            return;
        }
    };
    metrics::counter!("tern_relay_connections_total", "transport" => "quic").increment(1);
    let open = metrics::gauge!("tern_relay_connections", "transport" => "quic");
    open.increment(1.0);
    let counters = ingest.counters_arc();
    counters.quic_connections.fetch_add(1, Ordering::Relaxed);
    serve_connection(conn, source, ingest, budgets).await;
    counters.quic_connections.fetch_sub(1, Ordering::Relaxed);
    open.decrement(1.0);
    drop(slot);
}

async fn serve_connection(
    conn: quinn::Connection,
    source: Source,
    ingest: Ingest,
    budgets: Arc<Budgets>,
) {
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
                tokio::spawn(serve_stream(
                    send,
                    recv,
                    source,
                    ingest.clone(),
                    budgets.clone(),
                ));
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
    Request(RequestBuffer),
    /// Exactly one complete `SubscribeRequest` frame; the stream stays open.
    Subscribe(RequestBuffer),
    /// More than [`max_request_frame`] bytes.
    TooLarge,
    /// The byte budget refused the memory.
    Busy(super::budget::Refusal),
    /// Not complete within the read deadline.
    TimedOut,
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

/// Reads a request stream: to its end, except that a
/// complete `SubscribeRequest` frame at its start is returned at once. Every byte is
/// charged to the request-byte budget before it is buffered, and the whole frame must
/// arrive within `limits.request_read_timeout`.
async fn read_request(recv: &mut quinn::RecvStream, source: Source, budgets: &Budgets) -> Read {
    let limit = max_request_frame();
    let mut buf = RequestBuffer::new(&budgets.request_bytes, source, limit);
    let deadline = tokio::time::Instant::now() + budgets.limits.request_read_timeout;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, recv.read_chunk(64 * 1024, true)).await
        {
            Err(_) => return Read::TimedOut,
            Ok(r) => r,
        };
        match chunk {
            Ok(Some(chunk)) => {
                match buf.push(&chunk.bytes) {
                    Ok(()) => {}
                    Err(BufferError::TooLarge) => return Read::TooLarge,
                    Err(BufferError::Budget(r)) => return Read::Busy(r),
                }
                if let Some(len) = subscribe_frame_len(buf.bytes()) {
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

/// Stops reading and resets the reply side of a stream the relay will not serve: a
/// transport failure for the client, which retries the same request later.
fn abandon(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: u32) {
    let _ = recv.stop(code.into());
    let _ = send.reset(code.into());
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    source: Source,
    ingest: Ingest,
    budgets: Arc<Budgets>,
) {
    // In flight until the reply is written: a drain waits for it.
    let in_flight = ingest.drain().track();
    let (reply, _charge) = match read_request(&mut recv, source, &budgets).await {
        Read::Request(mut frame) => {
            if let Err(refusal) = frame.charge_payload(MAX_DEVICE_PAYLOAD) {
                budgets.request_bytes.count_refusal(refusal, "quic");
                abandon(&mut send, &mut recv, STOP_BUSY);
                return;
            }
            (ingest.handle_frame(frame.bytes()).await, Some(frame))
        }
        Read::Subscribe(frame) => {
            drop(in_flight);
            let frame = frame.bytes().to_vec();
            return serve_push(send, recv, &frame, source, ingest, budgets).await;
        }
        Read::TooLarge => {
            let _ = recv.stop(STOP_TOO_LARGE.into());
            too_large("quic");
            (
                error_frame(RejectReason::TooLarge, "request frame over the size limit"),
                None,
            )
        }
        Read::Busy(refusal) => {
            budgets.request_bytes.count_refusal(refusal, "quic");
            abandon(&mut send, &mut recv, STOP_BUSY);
            return;
        }
        Read::TimedOut => {
            deadline_exceeded("quic", "request");
            abandon(&mut send, &mut recv, STOP_TIMEOUT);
            return;
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
/// client's send side, which it may legitimately keep open. The stream holds a unit
/// of the subscription budget while it lasts; without one it is reset (`busy`).
async fn serve_push(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    frame: &[u8],
    source: Source,
    ingest: Ingest,
    budgets: Arc<Budgets>,
) {
    let _unit = match budgets.subscriptions.try_take(source, 1) {
        Ok(unit) => unit,
        Err(refusal) => {
            budgets.subscriptions.count_refusal(refusal, "quic");
            abandon(&mut send, &mut recv, STOP_BUSY);
            return;
        }
    };
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
