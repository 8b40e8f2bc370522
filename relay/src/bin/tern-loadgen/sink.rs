//! `tern-loadgen sink`: a backend that stores nothing, so a benchmark measures the
//! relay rather than the SQLite stub behind it.
//!
//! It serves the part of the backend API (protocol §10) a relay uses:
//!
//! * `GET /v1/apps` — one app (`--app`, `--key`), so the relay's registry loads;
//! * `POST /v1/ingest` — a `ForwardRequest` frame (LZ4 or not); answers a
//!   `ForwardReply` with `stored` for every batch, in request order. The payload is not
//!   decoded into owned types: a MessagePack walker reads each batch's `batch_id` and
//!   the length of its `events` array and skips everything else, so the sink costs a
//!   fraction of what the relay spends per batch;
//! * `GET /stats` — JSON counters (requests, batches, events, refused);
//! * `PUT /admin/ingest-status` with a status code as the body (`503`, `200`, ...):
//!   from then on `POST /v1/ingest` answers that status (200 = normal). With a 5xx
//!   the relay's forwards fail, its circuit breaker opens and it spools — the
//!   degraded-mode benchmark. `--ingest-status` sets it at start.
//!
//! A bearer token, if the relay sends one, is ignored. On start it prints one JSON line
//! `{"event":"ready","listen":"ADDR"}` on stdout; on SIGTERM or Ctrl-C it prints its
//! counters on stderr and exits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tern_protocol::frame::{max_body_for_payload, HEADER_LEN};
use tern_protocol::limits::MAX_BACKEND_PAYLOAD;
use tern_protocol::{
    BatchId, CodecConfig, ForwardOutcome, ForwardReply, ForwardResult, Message, MessageKind,
    BACKEND_INGEST_PATH, FRAME_CONTENT_TYPE,
};

/// `tern-loadgen sink` options.
#[derive(clap::Args, Debug, Clone)]
pub struct SinkArgs {
    /// Address to listen on (port 0 picks one; see the ready line).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The app listed by `GET /v1/apps`.
    #[arg(long, default_value = "demo")]
    pub app: String,
    /// Its key.
    #[arg(long, default_value = "demo-key")]
    pub key: String,
    /// Status `POST /v1/ingest` answers at start (200 = store everything).
    #[arg(long, default_value_t = 200)]
    pub ingest_status: u16,
}

#[derive(Debug)]
struct Sink {
    app: String,
    key: String,
    status: AtomicU16,
    requests: AtomicU64,
    batches: AtomicU64,
    events: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
}

impl Sink {
    fn stats(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "requests": get(&self.requests),
            "batches": get(&self.batches),
            "events": get(&self.events),
            "refused": get(&self.refused),
            "malformed": get(&self.malformed),
            "ingest_status": self.status.load(Ordering::Relaxed),
        })
    }
}

type Shared = Arc<Sink>;

fn router(sink: Shared) -> Router {
    Router::new()
        .route("/v1/apps", get(apps))
        .route(BACKEND_INGEST_PATH, post(ingest))
        .route("/stats", get(stats))
        .route("/admin/ingest-status", put(set_status))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(
            HEADER_LEN + max_body_for_payload(MAX_BACKEND_PAYLOAD),
        ))
        .with_state(sink)
}

async fn apps(State(s): State<Shared>) -> Response {
    Json(json!([{"app_id": s.app, "keys": [s.key]}])).into_response()
}

async fn stats(State(s): State<Shared>) -> Response {
    Json(s.stats()).into_response()
}

async fn set_status(State(s): State<Shared>, body: String) -> Response {
    match body.trim().parse::<u16>() {
        Ok(code) if StatusCode::from_u16(code).is_ok() => {
            s.status.store(code, Ordering::Relaxed);
            Json(s.stats()).into_response()
        }
        _ => (StatusCode::BAD_REQUEST, "body must be an HTTP status code").into_response(),
    }
}

async fn ingest(State(s): State<Shared>, body: Bytes) -> Response {
    s.requests.fetch_add(1, Ordering::Relaxed);
    let status = s.status.load(Ordering::Relaxed);
    if status != 200 {
        s.refused.fetch_add(1, Ordering::Relaxed);
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (code, "tern-loadgen sink: refusing on purpose").into_response();
    }
    let batches = match summarize(&body) {
        Ok(b) => b,
        Err(reason) => {
            s.malformed.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "malformed", "reason": reason})),
            )
                .into_response();
        }
    };
    let events: u64 = batches.iter().map(|(_, n)| n).sum();
    s.batches.fetch_add(batches.len() as u64, Ordering::Relaxed);
    s.events.fetch_add(events, Ordering::Relaxed);
    let reply = Message::ForwardReply(ForwardReply {
        results: batches
            .into_iter()
            .map(|(batch_id, _)| ForwardResult {
                batch_id,
                outcome: ForwardOutcome::Stored,
            })
            .collect(),
    })
    .encode(&CodecConfig::backend());
    match reply {
        Ok(frame) => ([(header::CONTENT_TYPE, FRAME_CONTENT_TYPE)], frame).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The batch ids and event counts of a `ForwardRequest` frame, in order.
pub fn summarize(body: &[u8]) -> Result<Vec<(BatchId, u64)>, String> {
    let frame =
        tern_protocol::decode_single_frame(body, MAX_BACKEND_PAYLOAD).map_err(|e| e.to_string())?;
    if frame.kind != MessageKind::ForwardRequest.as_u8() {
        return Err(format!(
            "frame kind {:#04x} is not a ForwardRequest",
            frame.kind
        ));
    }
    let payload = frame
        .payload(MAX_BACKEND_PAYLOAD)
        .map_err(|e| e.to_string())?;
    forward_request_batches(&payload)
}

/// Walks a `ForwardRequest` payload: `{relay_id, batches: [{batch_id, events: [..],
/// ...}]}`; unknown keys are skipped, as the protocol requires.
fn forward_request_batches(payload: &[u8]) -> Result<Vec<(BatchId, u64)>, String> {
    let mut c = Cursor::new(payload);
    let mut out = Vec::new();
    for _ in 0..c.map_len()? {
        if c.str()? != b"batches" {
            c.skip()?;
            continue;
        }
        let n = c.array_len()?;
        out.reserve(n.min(65_536));
        for _ in 0..n {
            let mut id = None;
            let mut events = 0u64;
            for _ in 0..c.map_len()? {
                match c.str()? {
                    b"batch_id" => id = Some(c.uuid()?),
                    b"events" => {
                        let len = c.array_len()?;
                        for _ in 0..len {
                            c.skip()?;
                        }
                        events = len as u64;
                    }
                    _ => c.skip()?,
                }
            }
            out.push((id.ok_or("a batch without batch_id")?, events));
        }
    }
    Ok(out)
}

/// A bounds-checked reader of MessagePack.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("truncated payload")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// A big-endian unsigned integer of `n` bytes (1, 2, 4 or 8).
    fn be(&mut self, n: usize) -> Result<usize, String> {
        let v = self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        usize::try_from(v).map_err(|_| "length out of range".to_string())
    }

    fn map_len(&mut self) -> Result<usize, String> {
        match self.byte()? {
            m @ 0x80..=0x8f => Ok(usize::from(m & 0x0f)),
            0xde => self.be(2),
            0xdf => self.be(4),
            m => Err(format!("expected a map, found marker {m:#04x}")),
        }
    }

    fn array_len(&mut self) -> Result<usize, String> {
        match self.byte()? {
            m @ 0x90..=0x9f => Ok(usize::from(m & 0x0f)),
            0xdc => self.be(2),
            0xdd => self.be(4),
            m => Err(format!("expected an array, found marker {m:#04x}")),
        }
    }

    fn str(&mut self) -> Result<&'a [u8], String> {
        let n = match self.byte()? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            m => return Err(format!("expected a string, found marker {m:#04x}")),
        };
        self.take(n)
    }

    /// A UUID: `bin 8` of 16 bytes, or the hyphenated text form (§4).
    fn uuid(&mut self) -> Result<BatchId, String> {
        let at = self.pos;
        if self.byte()? == 0xc4 {
            let n = self.be(1)?;
            let bytes: [u8; 16] = self
                .take(n)?
                .try_into()
                .map_err(|_| format!("a {n}-byte uuid"))?;
            return Ok(BatchId::from_bytes(bytes));
        }
        self.pos = at;
        let text = std::str::from_utf8(self.str()?).map_err(|e| e.to_string())?;
        BatchId::parse(text).map_err(|e| e.to_string())
    }

    /// Skips one value, however deeply nested (iteratively: no recursion to overflow).
    fn skip(&mut self) -> Result<(), String> {
        let mut pending: usize = 1;
        while pending > 0 {
            pending -= 1;
            let m = self.byte()?;
            let skip = match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
                0x80..=0x8f => {
                    pending = pending.saturating_add(2 * usize::from(m & 0x0f));
                    0
                }
                0x90..=0x9f => {
                    pending = pending.saturating_add(usize::from(m & 0x0f));
                    0
                }
                0xa0..=0xbf => usize::from(m & 0x1f),
                0xc4 | 0xd9 => self.be(1)?,
                0xc5 | 0xda => self.be(2)?,
                0xc6 | 0xdb => self.be(4)?,
                0xc7 => self.be(1)? + 1,
                0xc8 => self.be(2)? + 1,
                0xc9 => self.be(4)?.saturating_add(1),
                0xcc | 0xd0 => 1,
                0xcd | 0xd1 => 2,
                0xca | 0xce | 0xd2 => 4,
                0xcb | 0xcf | 0xd3 => 8,
                0xd4 => 2,
                0xd5 => 3,
                0xd6 => 5,
                0xd7 => 9,
                0xd8 => 17,
                0xdc => {
                    pending = pending.saturating_add(self.be(2)?);
                    0
                }
                0xdd => {
                    pending = pending.saturating_add(self.be(4)?);
                    0
                }
                0xde => {
                    pending = pending.saturating_add(self.be(2)?.saturating_mul(2));
                    0
                }
                0xdf => {
                    pending = pending.saturating_add(self.be(4)?.saturating_mul(2));
                    0
                }
                _ => return Err(format!("invalid marker {m:#04x}")),
            };
            self.take(skip)?;
        }
        Ok(())
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs the sink until SIGTERM or Ctrl-C.
pub async fn serve(args: SinkArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    // Small replies must not wait for Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let sink = Arc::new(Sink {
        app: args.app,
        key: args.key,
        status: AtomicU16::new(args.ingest_status),
        requests: AtomicU64::new(0),
        batches: AtomicU64::new(0),
        events: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
    });
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{}",
            json!({"event": "ready", "listen": addr.to_string()})
        )?;
        out.flush()?;
    }
    axum::serve(listener, router(sink.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    eprintln!("{}", json!({"event": "stopped", "stats": sink.stats()}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::{
        AppId, DeviceId, Event, EventBatch, EventBody, ForwardRequest, Properties, RelayId,
        SdkInfo, Value,
    };

    fn batch(events: u64) -> EventBatch {
        let props: Properties = [
            ("s".to_string(), Value::String("x".repeat(300))),
            ("i".to_string(), Value::Int(-70_000)),
            ("f".to_string(), Value::Float(1.5)),
            ("b".to_string(), Value::Bool(true)),
        ]
        .into();
        EventBatch {
            anonymous_id: None,
            context: None,
            batch_id: BatchId::new_v7(),
            app_id: AppId::new("demo"),
            device_id: DeviceId::random(),
            sdk: SdkInfo::default(),
            sent_at_ms: 1_700_000_000_000,
            attempt: 2,
            events: (1..=events)
                .map(|seq| Event {
                    seq,
                    ts_ms: -5,
                    user_id: None,
                    session_id: None,
                    body: match seq % 3 {
                        0 => EventBody::SessionStart,
                        1 => EventBody::Custom {
                            name: "e".into(),
                            props: props.clone(),
                        },
                        _ => EventBody::Purchase {
                            product_id: "p".into(),
                            amount_micros: 1_990_000,
                            currency: "EUR".into(),
                            quantity: 1,
                            props: props.clone(),
                        },
                    },
                })
                .collect(),
            health: Default::default(),
        }
    }

    #[test]
    fn the_walker_finds_every_batch_in_real_frames() {
        for sizes in [vec![], vec![1], vec![3, 0, 17, 1000], vec![5; 300]] {
            let batches: Vec<EventBatch> = sizes.iter().map(|&n| batch(n)).collect();
            let expected: Vec<(BatchId, u64)> = batches
                .iter()
                .map(|b| (b.batch_id, b.events.len() as u64))
                .collect();
            // The backend codec: LZ4 above 1 KiB, as the relay sends it.
            let frame = Message::ForwardRequest(ForwardRequest {
                relay_id: RelayId::new("relay-1"),
                batches,
            })
            .encode(&CodecConfig::backend())
            .unwrap();
            assert_eq!(summarize(&frame).unwrap(), expected, "{sizes:?}");
        }
    }

    #[test]
    fn text_uuids_and_unknown_keys_are_accepted() {
        let id = BatchId::new_v7();
        let payload = serde_json::json!({
            "future_field": {"nested": [1, 2.5, null, "x", {"a": true}]},
            "relay_id": "r",
            "batches": [{"extra": [[], {}], "batch_id": id.to_string(), "events": [{}, {}]}],
        });
        let bytes = rmp_encode(&payload);
        assert_eq!(forward_request_batches(&bytes).unwrap(), vec![(id, 2)]);
    }

    fn rmp_encode(v: &serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let good = Message::ForwardRequest(ForwardRequest {
            relay_id: RelayId::new("relay-1"),
            batches: vec![batch(10)],
        })
        .encode(&CodecConfig::backend().with_compress_threshold(usize::MAX))
        .unwrap();
        let payload = &good[HEADER_LEN..];
        // Every truncation fails cleanly.
        for cut in 0..payload.len() {
            assert!(
                forward_request_batches(&payload[..cut]).is_err(),
                "cut {cut}"
            );
        }
        assert!(forward_request_batches(&[0xc1]).is_err());
        assert!(forward_request_batches(&[
            0x81, 0xa7, b'b', b'a', b't', b'c', b'h', b'e', b's', 0xdd, 0xff, 0xff, 0xff, 0xff
        ])
        .is_err());
        assert!(
            summarize(b"\x00\x00\x00\x02\x01\x00").is_err(),
            "wrong kind"
        );
    }

    #[tokio::test]
    async fn the_sink_answers_stored_and_can_be_told_to_fail() {
        let sink = Arc::new(Sink {
            app: "demo".into(),
            key: "k".into(),
            status: AtomicU16::new(200),
            requests: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            events: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        });
        let batches = vec![batch(4), batch(6)];
        let ids: Vec<BatchId> = batches.iter().map(|b| b.batch_id).collect();
        let frame = Message::ForwardRequest(ForwardRequest {
            relay_id: RelayId::new("relay-1"),
            batches,
        })
        .encode(&CodecConfig::backend())
        .unwrap();
        let resp = ingest(State(sink.clone()), Bytes::from(frame.clone())).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        match Message::from_bytes(&body, &CodecConfig::backend()).unwrap() {
            Message::ForwardReply(r) => {
                let got: Vec<BatchId> = r.results.iter().map(|r| r.batch_id).collect();
                assert_eq!(got, ids);
                assert!(r
                    .results
                    .iter()
                    .all(|r| r.outcome == ForwardOutcome::Stored));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sink.stats()["events"], 10);
        let resp = set_status(State(sink.clone()), "503".into()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = ingest(State(sink.clone()), Bytes::from(frame)).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(sink.stats()["refused"], 1);
        assert_eq!(sink.stats()["batches"], 2);
        let resp = set_status(State(sink.clone()), "nope".into()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
}
