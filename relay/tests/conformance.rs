//! Conformance of `tern-relay` with `docs/protocol.md`, written from the spec alone.
//!
//! Every case sends bytes built by hand (a small MessagePack writer below, not the
//! protocol crate's encoder) to a real `tern-relay` process — over QUIC and over
//! HTTPS, the same bytes on both — and asserts the exact reply the spec prescribes:
//! its kind and its reason. Case names cite the rule they check. Each section runs its
//! table of cases against its own relay (and in-process stub backend) and reports
//! every non-conformant case at once, then checks, from the stub's counters, that
//! exactly the batches answered `accepted` were stored.
//!
//! `TERN_RELAY_BIN=/path/to/tern-relay` runs the suite against another build of the
//! relay (e.g. an older one, to see which cases it fails).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tern_protocol::{
    BatchId, CodecConfig, ConfigOutcome, DeviceId, FrameDecoder, IngestOutcome, Message,
    PushNotice, RejectReason, ALPN, FRAME_CONTENT_TYPE, HTTP_RPC_PATH, HTTP_SUBSCRIBE_PATH,
};
use tern_testkit::device::{https_client, quic_endpoint, PushReader};
use tern_testkit::{demo_apps, Backend, RelayProc};

const APP: &str = "demo";
const KEY: &str = "demo-key";
/// §3 / §7: the device ↔ relay payload limit.
const MAX_PAYLOAD: usize = 1024 * 1024 + 16 * 1024;
/// §3: the largest frame body for that payload limit.
const MAX_BODY: usize = MAX_PAYLOAD + 4 + MAX_PAYLOAD / 255 + 16;
/// §7.
const MAX_EVENT: usize = 32 * 1024;
const MAX_BATCH: usize = 1024 * 1024;
/// An app id of exactly 256 bytes (§7), registered at the stub.
fn long_app() -> String {
    "a".repeat(256)
}

// ---------------------------------------------------------------------------------------
// A MessagePack writer, so that every byte of a case is chosen here
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum M {
    Map(Vec<(M, M)>),
    Arr(Vec<M>),
    Str(String),
    /// A `str` holding arbitrary (maybe not UTF-8) bytes.
    StrBytes(Vec<u8>),
    Bin(Vec<u8>),
    /// An integer, smallest encoding.
    U(u64),
    /// An integer as `uint 64`, whatever its value.
    U64(u64),
    I(i64),
    F32(f32),
    B(bool),
    Nil,
    Ext(i8, Vec<u8>),
}

fn header(out: &mut Vec<u8>, n: usize, fix: Option<(u8, usize)>, w8: Option<u8>, w16: u8, w32: u8) {
    if let Some((base, max)) = fix {
        if n <= max {
            out.push(base | n as u8);
            return;
        }
    }
    if let Some(marker) = w8 {
        if n <= 0xff {
            out.push(marker);
            out.push(n as u8);
            return;
        }
    }
    if n <= 0xffff {
        out.push(w16);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(w32);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

impl M {
    fn s(text: &str) -> M {
        M::Str(text.to_owned())
    }

    fn map(entries: &[(&str, M)]) -> M {
        M::Map(entries.iter().map(|(k, v)| (M::s(k), v.clone())).collect())
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn len(&self) -> usize {
        self.bytes().len()
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            M::Map(entries) => {
                header(out, entries.len(), Some((0x80, 15)), None, 0xde, 0xdf);
                for (k, v) in entries {
                    k.write(out);
                    v.write(out);
                }
            }
            M::Arr(items) => {
                header(out, items.len(), Some((0x90, 15)), None, 0xdc, 0xdd);
                for v in items {
                    v.write(out);
                }
            }
            M::Str(s) => M::StrBytes(s.as_bytes().to_vec()).write(out),
            M::StrBytes(b) => {
                header(out, b.len(), Some((0xa0, 31)), Some(0xd9), 0xda, 0xdb);
                out.extend_from_slice(b);
            }
            M::Bin(b) => {
                header(out, b.len(), None, Some(0xc4), 0xc5, 0xc6);
                out.extend_from_slice(b);
            }
            M::U(v) => match *v {
                0..=0x7f => out.push(*v as u8),
                0x80..=0xff => out.extend_from_slice(&[0xcc, *v as u8]),
                0x100..=0xffff => {
                    out.push(0xcd);
                    out.extend_from_slice(&(*v as u16).to_be_bytes());
                }
                0x1_0000..=0xffff_ffff => {
                    out.push(0xce);
                    out.extend_from_slice(&(*v as u32).to_be_bytes());
                }
                _ => M::U64(*v).write(out),
            },
            M::U64(v) => {
                out.push(0xcf);
                out.extend_from_slice(&v.to_be_bytes());
            }
            M::I(v) if *v >= 0 => M::U(*v as u64).write(out),
            M::I(v) if *v >= -32 => out.push(*v as i8 as u8),
            M::I(v) => {
                out.push(0xd3);
                out.extend_from_slice(&v.to_be_bytes());
            }
            M::F32(x) => {
                out.push(0xca);
                out.extend_from_slice(&x.to_be_bytes());
            }
            M::B(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            M::Nil => out.push(0xc0),
            M::Ext(t, data) => {
                header(out, data.len(), None, Some(0xc7), 0xc8, 0xc9);
                out.push(*t as u8);
                out.extend_from_slice(data);
            }
        }
    }

    /// The map with `key` set to `v` (replaced where it is, else appended).
    fn set(self, key: &str, v: M) -> M {
        let M::Map(mut entries) = self else {
            panic!("set {key} on a non-map")
        };
        match entries
            .iter_mut()
            .find(|(k, _)| matches!(k, M::Str(s) if s == key))
        {
            Some(entry) => entry.1 = v,
            None => entries.push((M::s(key), v)),
        }
        M::Map(entries)
    }

    /// The map with one more entry, even if `key` is already there.
    fn push(self, key: M, v: M) -> M {
        let M::Map(mut entries) = self else {
            panic!("push on a non-map")
        };
        entries.push((key, v));
        M::Map(entries)
    }

    /// The map without `key`.
    fn del(self, key: &str) -> M {
        let M::Map(entries) = self else {
            panic!("del {key} on a non-map")
        };
        M::Map(
            entries
                .into_iter()
                .filter(|(k, _)| !matches!(k, M::Str(s) if s == key))
                .collect(),
        )
    }

    /// The map with the value at `key` replaced by `f(value)`.
    fn edit(self, key: &str, f: impl FnOnce(M) -> M) -> M {
        let M::Map(entries) = self else {
            panic!("edit {key} on a non-map")
        };
        let mut f = Some(f);
        M::Map(
            entries
                .into_iter()
                .map(|(k, v)| match &k {
                    M::Str(s) if s == key => {
                        let v = (f.take().expect("key once"))(v);
                        (k, v)
                    }
                    _ => (k, v),
                })
                .collect(),
        )
    }

    /// The array with item `i` replaced by `f(item)`.
    fn item(self, i: usize, f: impl FnOnce(M) -> M) -> M {
        let M::Arr(mut items) = self else {
            panic!("item on a non-array")
        };
        items[i] = f(items[i].clone());
        M::Arr(items)
    }
}

// ---------------------------------------------------------------------------------------
// Requests built from the spec's tables (§5)
// ---------------------------------------------------------------------------------------

fn uuid_bin() -> M {
    M::Bin(BatchId::new_v7().as_uuid().as_bytes().to_vec())
}

fn auth(app: &str, key: &str) -> M {
    M::map(&[("app_id", M::s(app)), ("key", M::s(key))])
}

fn sdk() -> M {
    M::map(&[("name", M::s("conformance")), ("version", M::s("1.0"))])
}

fn custom(name: &str) -> M {
    M::map(&[("type", M::s("custom")), ("name", M::s(name))])
}

fn event(seq: u64, body: M) -> M {
    M::map(&[
        ("seq", M::U(seq)),
        ("ts_ms", M::I(1_764_000_000_000)),
        ("body", body),
    ])
}

/// A valid batch of `app` with the given events (a new batch and device id).
fn batch_of(app: &str, events: Vec<M>) -> M {
    M::map(&[
        ("batch_id", uuid_bin()),
        ("app_id", M::s(app)),
        ("device_id", uuid_bin()),
        ("sdk", sdk()),
        ("sent_at_ms", M::I(1_764_000_000_500)),
        ("events", M::Arr(events)),
    ])
}

/// A valid batch of one custom event.
fn batch() -> M {
    batch_of(APP, vec![event(1, custom("opened"))])
}

/// An `IngestRequest` with the demo app's credentials.
fn ingest(batch: M) -> M {
    M::map(&[("auth", auth(APP, KEY)), ("batch", batch)])
}

/// `ingest(batch())` with `f` applied to its batch.
fn ingest_with(f: impl FnOnce(M) -> M) -> M {
    ingest(f(batch()))
}

/// `ingest(batch())` with `f` applied to its (only) event.
fn ingest_event(f: impl FnOnce(M) -> M) -> M {
    ingest_with(|b| b.edit("events", |e| e.item(0, f)))
}

/// `ingest(batch())` with `f` applied to its event's body.
fn ingest_body(body: M) -> M {
    ingest_event(|e| e.set("body", body))
}

fn config_request() -> M {
    M::map(&[("auth", auth(APP, KEY)), ("device_id", uuid_bin())])
}

fn shard_map_request() -> M {
    M::map(&[("auth", auth(APP, KEY)), ("known_version", M::U(0))])
}

fn subscribe_request() -> M {
    M::map(&[("auth", auth(APP, KEY)), ("device_id", uuid_bin())])
}

fn frame(kind: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 2) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(body);
    out
}

fn ingest_frame(payload: &M) -> Vec<u8> {
    frame(0x01, 0, &payload.bytes())
}

/// An LZ4 frame (flag 0x01): `uncompressed_len` LE, then the block.
fn lz4_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    // The protocol crate's frame encoder compresses when it saves bytes; the payloads
    // given here are repetitive enough.
    let f = tern_protocol::encode_frame(kind, payload, 0);
    assert_eq!(f[5], 0x01, "the payload did not compress");
    f
}

/// A batch of `n` minimal events.
fn events(n: u64) -> Vec<M> {
    (1..=n).map(|seq| event(seq, custom("e"))).collect()
}

/// `f(n)` for the `n` (near `size` minus `f(0)`'s length) that makes it exactly `size`
/// bytes long, if one does.
fn fit(size: usize, max_n: usize, f: impl Fn(usize) -> M) -> Option<M> {
    let guess = size.checked_sub(f(0).len())?;
    (guess.saturating_sub(8)..=guess.min(max_n))
        .map(f)
        .find(|m| m.len() == size)
}

/// An event of exactly `size` encoded bytes: a custom event padded with string
/// properties (each within the 1024-byte string limit, at most 64 of them).
fn custom_event_of_size(seq: u64, size: usize) -> M {
    (0..63usize)
        .find_map(|full| {
            fit(size, 1024, |rest| {
                let mut props: Vec<(M, M)> = (0..full)
                    .map(|i| (M::s(&format!("p{i:02}")), M::s(&"x".repeat(1000))))
                    .collect();
                props.push((M::s("rest"), M::s(&"y".repeat(rest))));
                event(seq, custom("big").set("props", M::Map(props)))
            })
        })
        .unwrap_or_else(|| panic!("no custom event of {size} bytes"))
}

/// `base` with an unknown field `pad` (bin) added — to the map itself or to the map at
/// `key_in` — that makes it exactly `size` bytes.
fn padded(base: M, key_in: Option<&str>, size: usize) -> M {
    fit(size, size, |n| match key_in {
        None => base.clone().set("pad", M::Bin(vec![0x5a; n])),
        Some(k) => base
            .clone()
            .edit(k, |inner| inner.set("pad", M::Bin(vec![0x5a; n]))),
    })
    .unwrap_or_else(|| panic!("no padding gives {size} bytes"))
}

/// An event of an unknown kind of exactly `size` bytes.
fn unknown_event_of_size(seq: u64, size: usize) -> M {
    padded(
        event(seq, M::map(&[("type", M::s("future_kind"))])),
        Some("body"),
        size,
    )
}

// ---------------------------------------------------------------------------------------
// What the spec says the reply is
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Want {
    /// `ErrorReply{reason}`.
    Error(RejectReason),
    /// `IngestReply{accepted}`.
    Accepted,
    /// `IngestReply{rejected: reason}`.
    Rejected(RejectReason),
    /// `ConfigReply{modified}`.
    ConfigModified,
    /// `ConfigReply{rejected: reason}`.
    ConfigRejected(RejectReason),
    /// `ShardMapReply`.
    ShardMap,
}

fn describe(msg: &Message) -> String {
    match msg {
        Message::ErrorReply(e) => format!("ErrorReply{{{}}} ({})", e.reason, e.detail),
        Message::IngestReply(r) => match &r.outcome {
            IngestOutcome::Rejected { reason, detail } => {
                format!("IngestReply{{rejected: {reason}}} ({detail})")
            }
            other => format!("IngestReply{{{other:?}}}"),
        },
        Message::ConfigReply(r) => match &r.outcome {
            ConfigOutcome::Rejected { reason, .. } => format!("ConfigReply{{rejected: {reason}}}"),
            ConfigOutcome::Modified { .. } => "ConfigReply{modified}".into(),
            other => format!("ConfigReply{{{other:?}}}"),
        },
        other => format!("{:?}", other.kind()),
    }
}

fn judge(reply: &[u8], want: &Want) -> Result<(), String> {
    let msg = Message::from_bytes(reply, &CodecConfig::device())
        .map_err(|e| format!("the reply is not one valid frame: {e}"))?;
    let ok = match (want, &msg) {
        (Want::Error(r), Message::ErrorReply(e)) => &e.reason == r,
        (Want::Accepted, Message::IngestReply(r)) => {
            matches!(r.outcome, IngestOutcome::Accepted { .. })
        }
        (Want::Rejected(want), Message::IngestReply(r)) => {
            matches!(&r.outcome, IngestOutcome::Rejected { reason, .. } if reason == want)
        }
        (Want::ConfigModified, Message::ConfigReply(r)) => {
            matches!(r.outcome, ConfigOutcome::Modified { .. })
        }
        (Want::ConfigRejected(want), Message::ConfigReply(r)) => {
            matches!(&r.outcome, ConfigOutcome::Rejected { reason, .. } if reason == want)
        }
        (Want::ShardMap, Message::ShardMapReply(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("got {}", describe(&msg)))
    }
}

struct Case {
    name: String,
    frame: Vec<u8>,
    want: Want,
}

fn case(name: impl Into<String>, frame: Vec<u8>, want: Want) -> Case {
    Case {
        name: name.into(),
        frame,
        want,
    }
}

// ---------------------------------------------------------------------------------------
// A relay, a backend and clients
// ---------------------------------------------------------------------------------------

struct Env {
    backend: Backend,
    relay: RelayProc,
    _dir: tempfile::TempDir,
    conn: quinn::Connection,
    _ep: quinn::Endpoint,
    http: reqwest::Client,
    https: SocketAddr,
}

impl Env {
    async fn start() -> Env {
        let apps = format!(
            "{}\n[[apps]]\nid = \"{}\"\nkeys = [\"long-key\"]\n",
            demo_apps(),
            long_app()
        );
        let backend = Backend::start(&apps).await;
        let dir = tempfile::tempdir().unwrap();
        let relay = RelayProc::start(
            &backend.url,
            dir.path(),
            &[],
            &[
                ("TERN_RELAY_RATE_LIMIT_EVENTS_PER_SEC", "1000000000"),
                ("TERN_RELAY_RATE_LIMIT_BURST", "1000000000"),
            ],
        );
        relay.wait_ready().await;
        let ep = quic_endpoint(&relay.ca_pem, &[ALPN]);
        let conn = ep.connect(relay.quic, "localhost").unwrap().await.unwrap();
        let https = relay.ready["https"].as_str().unwrap().parse().unwrap();
        let http = https_client(&relay.ca_pem);
        let env = Env {
            backend,
            relay,
            _dir: dir,
            conn,
            _ep: ep,
            http,
            https,
        };
        // Credentials are judged once the relay has loaded the app list, and config is
        // served once its cache holds the demo app's bundle.
        // A generous cap: the machine may be loaded; no timing is asserted.
        let started = std::time::Instant::now();
        loop {
            let sm = env
                .quic(&frame(0x03, 0, &shard_map_request().bytes()))
                .await;
            let cfg = env.quic(&frame(0x02, 0, &config_request().bytes())).await;
            if sm.is_ok_and(|r| judge(&r, &Want::ShardMap).is_ok())
                && cfg.is_ok_and(|r| judge(&r, &Want::ConfigModified).is_ok())
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the relay did not serve the demo app's shard map and config"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        env
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    /// One request stream: the bytes, FIN, the whole reply.
    async fn quic(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(4 << 20).await.map_err(|e| e.to_string())
    }

    /// Batches the stub has rejected so far.
    async fn rejected_at_backend(&self) -> u64 {
        self.backend.summary().await["batches_rejected"]
            .as_u64()
            .unwrap_or(0)
    }

    /// `POST /v1/rpc`: a 200 with a frame's content type, and its body.
    async fn https(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let resp = self
            .http
            .post(self.url(HTTP_RPC_PATH))
            .header("content-type", FRAME_CONTENT_TYPE)
            .body(bytes.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if status != 200 || ctype != FRAME_CONTENT_TYPE {
            return Err(format!(
                "§2.2: status {status}, content-type {ctype:?} ({} body bytes)",
                body.len()
            ));
        }
        Ok(body.to_vec())
    }

    /// Runs `cases` over both transports; panics listing every non-conformant one.
    /// Then checks that the stub stored exactly the accepted batches.
    /// `also_stored`: batches stored by the caller's own requests (negative: accepted
    /// cases that repeat an earlier batch).
    async fn run(&self, section: &str, cases: Vec<Case>, also_stored: i64) {
        let mut failures = Vec::new();
        let mut accepted = 0i64;
        for c in &cases {
            for transport in ["QUIC", "HTTPS"] {
                let rejected_before = self.rejected_at_backend().await;
                let got = match transport {
                    "QUIC" => self.quic(&c.frame).await,
                    _ => self.https(&c.frame).await,
                };
                if let Err(e) = got.and_then(|reply| judge(&reply, &c.want)) {
                    failures.push(format!(
                        "  {} [{transport}]: want {:?}, {e}",
                        c.name, c.want
                    ));
                } else if self.rejected_at_backend().await != rejected_before {
                    // The reply came from the backend: the relay forwarded a batch
                    // it should have refused itself (§7 is checked on receipt).
                    failures.push(format!(
                        "  {} [{transport}]: the relay forwarded the batch and the backend rejected it",
                        c.name
                    ));
                }
            }
            if c.want == Want::Accepted {
                accepted += 1;
            }
        }
        println!(
            "{section}: {} of {} cases conform on both transports",
            cases.len() - failures.len().min(cases.len()),
            cases.len()
        );
        assert!(
            failures.is_empty(),
            "{section}: {} non-conformant:\n{}",
            failures.len(),
            failures.join("\n")
        );
        // Every accepted batch (sent twice: the second is a duplicate) was stored, and
        // nothing else reached the backend.
        let want = (accepted + also_stored) as u64;
        let summary = self.backend.summary().await;
        assert_eq!(
            summary["batches_stored"].as_u64(),
            Some(want),
            "{section}: stored batches at the stub: {summary}"
        );
        assert_eq!(
            summary["batches_rejected"].as_u64(),
            Some(0),
            "{section}: {summary}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// §2 Transports
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn section_2_1_quic() {
    let env = Env::start().await;
    let sm = frame(0x03, 0, &shard_map_request().bytes());

    // "A relay MUST NOT complete a handshake without a common ALPN."
    for alpn in [&b"tern/2"[..], b"h3"] {
        let ep = quic_endpoint(&env.relay.ca_pem, &[alpn]);
        let r = ep.connect(env.relay.quic, "localhost").unwrap().await;
        assert!(r.is_err(), "§2.1 handshake completed with ALPN {alpn:?}");
    }

    // "When that host is an IP address, the client sends no SNI ...; a relay MUST
    // complete handshakes that carry no SNI."
    let ep = quic_endpoint(&env.relay.ca_pem, &[ALPN]);
    let conn = ep.connect(env.relay.quic, "127.0.0.1").unwrap().await;
    let conn = conn.expect("§2.1 a handshake without SNI (IP literal) completes");
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    s.write_all(&sm).await.unwrap();
    s.finish().unwrap();
    judge(&r.read_to_end(1 << 20).await.unwrap(), &Want::ShardMap).unwrap();

    // "A relay MUST accept QUIC DATAGRAM frames (advertise max_datagram_frame_size > 0)
    // and MUST ignore their content."
    assert!(
        env.conn.max_datagram_size().is_some(),
        "§2.1 the relay does not advertise DATAGRAM support"
    );
    for payload in [&b"\x00"[..], b"not a frame", &[0xff; 64]] {
        env.conn
            .send_datagram(Bytes::copy_from_slice(payload))
            .unwrap();
    }

    // "Errors inside a stream never close the connection."
    for garbage in [&[0u8, 0, 0, 1][..], &[0, 0, 0, 1, 1, 0], &[]] {
        judge(
            &env.quic(garbage).await.unwrap(),
            &Want::Error(RejectReason::Malformed),
        )
        .unwrap();
    }
    judge(&env.quic(&sm).await.unwrap(), &Want::ShardMap).unwrap();
    assert!(
        env.conn.close_reason().is_none(),
        "§2.1 the connection was closed"
    );

    // "A relay reads a request stream until the client finishes its send side and
    // answers only then": a frame written in pieces is one request.
    let whole = ingest_frame(&ingest(batch()));
    let (mut s, mut r) = env.conn.open_bi().await.unwrap();
    for piece in whole.chunks(7) {
        s.write_all(piece).await.unwrap();
        tokio::task::yield_now().await;
    }
    s.finish().unwrap();
    judge(&r.read_to_end(1 << 20).await.unwrap(), &Want::Accepted)
        .expect("§2.1 a frame written in pieces, then FIN");

    // "The stream carries exactly one frame: bytes after it make the request malformed."
    let mut two = ingest_frame(&ingest(batch()));
    two.extend_from_slice(&sm);
    judge(
        &env.quic(&two).await.unwrap(),
        &Want::Error(RejectReason::Malformed),
    )
    .expect("§2.1 two frames on one request stream");

    // Push stream: "The server ... writes a sequence of PushNotice frames, the first
    // being Subscribed"; the client MAY keep its send side open, and whatever it writes
    // after the SubscribeRequest frame is ignored.
    for trailer in [&b""[..], b"\x00\x01\x02 trailing garbage"] {
        let (mut s, r) = env.conn.open_bi().await.unwrap();
        s.write_all(&frame(0x04, 0, &subscribe_request().bytes()))
            .await
            .unwrap();
        s.write_all(trailer).await.unwrap();
        let mut push = PushReader::new(r);
        match push.next().await {
            Some(Message::PushNotice(PushNotice::Subscribed { .. })) => {}
            other => panic!("§2.1 push stream (no FIN, trailer {trailer:?}) began with {other:?}"),
        }
    }
    // "If the subscription is refused, the server writes one ErrorReply and finishes."
    let (mut s, r) = env.conn.open_bi().await.unwrap();
    let refused = M::map(&[("auth", auth(APP, "wrong")), ("device_id", uuid_bin())]);
    s.write_all(&frame(0x04, 0, &refused.bytes()))
        .await
        .unwrap();
    s.finish().unwrap();
    let mut push = PushReader::new(r);
    match push.next().await {
        Some(Message::ErrorReply(e)) => assert_eq!(e.reason, RejectReason::Unauthorized),
        other => panic!("§2.1/§6.3 refused subscription answered {other:?}"),
    }
    assert!(
        push.next().await.is_none(),
        "§2.1 the refused push stream was not finished"
    );

    // The connection survived all of it.
    judge(&env.quic(&sm).await.unwrap(), &Want::ShardMap).unwrap();
    assert!(env.conn.close_reason().is_none());
    // One batch accepted above (the frame written in pieces).
    env.run("§2.1", vec![], 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn section_2_2_https() {
    let env = Env::start().await;
    let sm = frame(0x03, 0, &shard_map_request().bytes());
    let post = |url: String, ctype: Option<&'static str>, body: Vec<u8>| {
        let http = env.http.clone();
        async move {
            let mut req = http.post(url).body(body);
            if let Some(t) = ctype {
                req = req.header("content-type", t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, ctype, resp.bytes().await.unwrap().to_vec())
        }
    };
    let mut failures = Vec::new();
    let mut check = |name: &str, got: (u16, Option<String>, Vec<u8>), want: Want| {
        let (status, ctype, body) = got;
        if status != 200 || ctype.as_deref() != Some(FRAME_CONTENT_TYPE) {
            failures.push(format!("  {name}: status {status}, content-type {ctype:?}"));
        } else if let Err(e) = judge(&body, &want) {
            failures.push(format!("  {name}: want {want:?}, {e}"));
        }
    };

    // Content-Type: "a relay MUST NOT refuse a request because of its Content-Type".
    let rpc = env.url(HTTP_RPC_PATH);
    for ctype in [None, Some("text/plain"), Some("application/octet-stream")] {
        check(
            &format!("§2.2 a request with Content-Type {ctype:?} is served"),
            post(rpc.clone(), ctype, sm.clone()).await,
            Want::ShardMap,
        );
    }
    // "A relay MUST express every protocol outcome, including refusals, as a reply
    // frame with status 200."
    let wrong = M::map(&[("auth", auth(APP, "wrong")), ("known_version", M::U(0))]);
    check(
        "§2.2 a refusal is a 200 with a reply frame",
        post(rpc.clone(), None, frame(0x03, 0, &wrong.bytes())).await,
        Want::Error(RejectReason::Unauthorized),
    );
    // Bodies.
    check(
        "§2.2 an empty body is malformed",
        post(rpc.clone(), None, vec![]).await,
        Want::Error(RejectReason::Malformed),
    );
    let mut two = sm.clone();
    two.extend_from_slice(&sm);
    check(
        "§2.2 a body of two frames is malformed",
        post(rpc.clone(), None, two).await,
        Want::Error(RejectReason::Malformed),
    );
    check(
        "§2.2 a SubscribeRequest sent to /v1/rpc is unsupported_message",
        post(
            rpc.clone(),
            None,
            frame(0x04, 0, &subscribe_request().bytes()),
        )
        .await,
        Want::Error(RejectReason::UnsupportedMessage),
    );
    let sub = env.url(HTTP_SUBSCRIBE_PATH);
    check(
        "§2.2 another kind sent to /v1/subscribe is unsupported_message",
        post(sub.clone(), None, sm.clone()).await,
        Want::Error(RejectReason::UnsupportedMessage),
    );
    let wrong_sub = M::map(&[("auth", auth(APP, "wrong")), ("device_id", uuid_bin())]);
    check(
        "§2.2/§6.3 a refused subscription is one ErrorReply{unauthorized}",
        post(sub.clone(), None, frame(0x04, 0, &wrong_sub.bytes())).await,
        Want::Error(RejectReason::Unauthorized),
    );
    // "/v1/subscribe: 200 with a streamed body of PushNotice frames, the first being
    // Subscribed."
    let mut resp = env
        .http
        .post(&sub)
        .body(frame(0x04, 0, &subscribe_request().bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut decoder = FrameDecoder::new(MAX_PAYLOAD);
    let first = tokio::time::timeout(tern_testkit::DEADLINE, async {
        loop {
            if let Some(f) = decoder.next_frame().unwrap() {
                return Message::decode(&f, &CodecConfig::device()).unwrap();
            }
            let chunk = resp.chunk().await.unwrap().expect("a streamed body");
            decoder.push(&chunk);
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(first, Message::PushNotice(PushNotice::Subscribed { .. })),
        "§2.2 /v1/subscribe began with {first:?}"
    );
    drop(resp);
    // "The same holds for the host of https_url": an IP literal, no SNI.
    let ip_url = format!("https://127.0.0.1:{}{HTTP_RPC_PATH}", env.https.port());
    check(
        "§2.1/§2.2 an HTTPS request to an IP literal (no SNI) is served",
        post(ip_url, None, sm.clone()).await,
        Want::ShardMap,
    );
    assert!(
        failures.is_empty(),
        "§2.2: {} non-conformant:\n{}",
        failures.len(),
        failures.join("\n")
    );
    env.run("§2.2", vec![], 0).await;
}

// ---------------------------------------------------------------------------------------
// §3 Framing
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn section_3_framing() {
    let env = Env::start().await;
    use RejectReason::*;
    let good = ingest(batch()).bytes();
    let mut cases = vec![
        case(
            "§3 a well-formed uncompressed IngestRequest frame is accepted",
            frame(0x01, 0, &good),
            Want::Accepted,
        ),
        case(
            "§3 #1 fewer than 6 bytes (a partial header) is malformed",
            vec![0, 0, 0],
            Want::Error(Malformed),
        ),
        case(
            "§3 #2 length 0 is malformed",
            vec![0, 0, 0, 0, 1, 0],
            Want::Error(Malformed),
        ),
        case(
            "§3 #2 length 1 is malformed",
            vec![0, 0, 0, 1, 1, 0],
            Want::Error(Malformed),
        ),
        case(
            "§3 #8 length 2 (an empty body) is a frame whose empty payload is malformed",
            vec![0, 0, 0, 2, 1, 0],
            Want::Error(Malformed),
        ),
    ];
    // #3: the declared body length against max_payload + 4 + max_payload/255 + 16.
    let mut at_max = ((MAX_BODY + 2) as u32).to_be_bytes().to_vec();
    at_max.extend_from_slice(&[0x01, 0x00]);
    cases.push(case(
        "§3 #3/#5 a body of exactly the maximum length is not too large (here: truncated, malformed)",
        at_max,
        Want::Error(Malformed),
    ));
    let mut over = ((MAX_BODY + 3) as u32).to_be_bytes().to_vec();
    over.extend_from_slice(&[0x01, 0x00]);
    cases.push(case(
        "§3 #3 a body one byte over the maximum length is too_large",
        over,
        Want::Error(TooLarge),
    ));
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend_from_slice(&[0x01, 0x00, 1, 2, 3]);
    cases.push(case(
        "§3 #3 a length of 2^32 - 1 is too_large",
        huge,
        Want::Error(TooLarge),
    ));
    // #4: reserved flag bits.
    for bit in 1..8 {
        let flag = 1u8 << bit;
        cases.push(case(
            format!("§3 #4 reserved flag bit {flag:#04x} set is malformed"),
            frame(0x01, flag, &good),
            Want::Error(Malformed),
        ));
    }
    cases.push(case(
        "§3 #4 reserved flags are checked before the kind",
        frame(0x7e, 0x80, b""),
        Want::Error(Malformed),
    ));
    // #5: truncated, trailing.
    let full = frame(0x01, 0, &good);
    cases.push(case(
        "§3 #5 a frame cut short (fewer than length bytes) is malformed",
        full[..full.len() - 1].to_vec(),
        Want::Error(Malformed),
    ));
    let mut trailing = full.clone();
    trailing.push(0);
    cases.push(case(
        "§3 #5 one byte after the frame is malformed",
        trailing,
        Want::Error(Malformed),
    ));
    // #6: kinds.
    for kind in [0x00u8, 0x05, 0x0f, 0x11, 0x7f, 0x80, 0x85, 0x91, 0xfe] {
        cases.push(case(
            format!("§3 #6 unknown kind {kind:#04x} is unsupported_message"),
            frame(kind, 0, &good),
            Want::Error(UnsupportedMessage),
        ));
    }
    for (kind, name) in [
        (0x10u8, "ForwardRequest"),
        (0x81, "IngestReply"),
        (0x82, "ConfigReply"),
        (0x83, "ShardMapReply"),
        (0x84, "PushNotice"),
        (0x90, "ForwardReply"),
        (0xff, "ErrorReply"),
    ] {
        cases.push(case(
            format!("§3 #6 a {name} ({kind:#04x}) sent to a relay is unsupported_message, its body unread"),
            frame(kind, 0, b"\xc1 not a payload"),
            Want::Error(UnsupportedMessage),
        ));
    }
    let fwd = M::map(&[("relay_id", M::s("r")), ("batches", M::Arr(vec![batch()]))]);
    cases.push(case(
        "§3 #6 a well-formed ForwardRequest sent to a relay is unsupported_message",
        frame(0x10, 0, &fwd.bytes()),
        Want::Error(UnsupportedMessage),
    ));
    cases.push(case(
        "§3 #6 unknown kind with a compressed body: unsupported_message before decompression",
        frame(0x05, 0x01, b"\xff\xff\xff\xff garbage"),
        Want::Error(UnsupportedMessage),
    ));
    // #7: payload size and LZ4.
    let lz = lz4_frame(
        0x01,
        &ingest_with(|b| b.set("events", M::Arr(events(50)))).bytes(),
    );
    cases.push(case(
        "§3 #7 an LZ4 frame whose block decodes to uncompressed_len is accepted",
        lz.clone(),
        Want::Accepted,
    ));
    let declared = u32::from_le_bytes(lz[6..10].try_into().unwrap());
    for (delta, what) in [(1i64, "one more"), (-1, "one fewer")] {
        let mut f = lz.clone();
        let d = (i64::from(declared) + delta) as u32;
        f[6..10].copy_from_slice(&d.to_le_bytes());
        cases.push(case(
            format!("§3 #7 LZ4 uncompressed_len declaring {what} byte than the block holds is malformed"),
            f,
            Want::Error(Malformed),
        ));
    }
    let mut corrupt = lz.clone();
    let n = corrupt.len();
    corrupt.truncate(n - 3);
    let body_len = (corrupt.len() - 4) as u32;
    corrupt[..4].copy_from_slice(&body_len.to_be_bytes());
    cases.push(case(
        "§3 #7 a truncated LZ4 block is malformed",
        corrupt,
        Want::Error(Malformed),
    ));
    cases.push(case(
        "§3 #7 an LZ4 body shorter than its 4-byte length is malformed",
        frame(0x01, 0x01, &[1, 2, 3]),
        Want::Error(Malformed),
    ));
    let mut at_cap = lz.clone();
    at_cap[6..10].copy_from_slice(&(MAX_PAYLOAD as u32).to_le_bytes());
    cases.push(case(
        "§3 #7 LZ4 uncompressed_len = max_payload is within the limit (here: mismatch, malformed)",
        at_cap,
        Want::Error(Malformed),
    ));
    let mut over_cap = lz.clone();
    over_cap[6..10].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    cases.push(case(
        "§3 #7 LZ4 uncompressed_len = max_payload + 1 is too_large",
        over_cap,
        Want::Error(TooLarge),
    ));
    // The payload cap of §7 is max_payload of §3, compressed or not. An IngestRequest
    // padded with an unknown top-level field to exactly the cap is read; one byte more
    // is too large.
    let padded_request = |total: usize| {
        let base = ingest(batch());
        fit(total, total, |n| {
            base.clone().set("padding", M::Bin(vec![0; n]))
        })
        .unwrap_or_else(|| panic!("cannot pad to {total}"))
    };
    cases.push(case(
        "§3/§7 an uncompressed payload of exactly max_payload (1,064,960 bytes) is read",
        frame(0x01, 0, &padded_request(MAX_PAYLOAD).bytes()),
        Want::Accepted,
    ));
    cases.push(case(
        "§3/§7 an uncompressed payload of max_payload + 1 bytes is too_large",
        frame(0x01, 0, &padded_request(MAX_PAYLOAD + 1).bytes()),
        Want::Error(TooLarge),
    ));
    cases.push(case(
        "§3/§7 a compressed payload of exactly max_payload is read",
        lz4_frame(0x01, &padded_request(MAX_PAYLOAD).bytes()),
        Want::Accepted,
    ));
    cases.push(case(
        "§3/§7 a compressed payload of max_payload + 1 is too_large",
        lz4_frame(0x01, &padded_request(MAX_PAYLOAD + 1).bytes()),
        Want::Error(TooLarge),
    ));
    // #8.
    cases.push(case(
        "§3 #8 a payload that is not a message is malformed",
        frame(0x01, 0, b"\x93\x01\x02\x03"),
        Want::Error(Malformed),
    ));
    env.run("§3", cases, 0).await;
}

// ---------------------------------------------------------------------------------------
// §4 Payload encoding
// ---------------------------------------------------------------------------------------

/// `depth` arrays nested inside each other, the innermost holding `inner`.
fn nested(depth: usize, inner: Option<M>) -> M {
    let mut v = M::Arr(inner.into_iter().collect());
    for _ in 1..depth {
        v = M::Arr(vec![v]);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn section_4_encoding() {
    let env = Env::start().await;
    use RejectReason::*;
    let ok = |name: &str, m: M| case(name, ingest_frame(&m), Want::Accepted);
    let bad = |name: &str, m: M| case(name, ingest_frame(&m), Want::Error(Malformed));
    let uuid_text = |upper: bool| {
        let t = DeviceId::random().to_string();
        M::Str(if upper { t.to_uppercase() } else { t })
    };
    let ext = M::Ext(7, vec![1, 2, 3, 4, 5]);
    let cases = vec![
        // Structs are maps keyed by name, in any order.
        ok("§4 fields in any order", {
            let M::Map(mut e) = batch() else { unreachable!() };
            e.reverse();
            ingest(M::Map(e))
        }),
        bad("§4 a struct sent as a positional array is malformed", {
            M::map(&[("auth", M::Arr(vec![M::s(APP), M::s(KEY)])), ("batch", batch())])
        }),
        ok(
            "§4 a tagged enum's tag may come last",
            ingest_body(M::map(&[("name", M::s("late_tag")), ("type", M::s("custom"))])),
        ),
        // Integers and floats.
        ok(
            "§4 integers in a wider encoding than needed (uint 64) are read",
            ingest_event(|e| e.set("seq", M::U64(1)).set("ts_ms", M::U64(1_764_000_000_000))),
        ),
        bad(
            "§4 an integer that does not fit the field (attempt = 2^32) is malformed",
            ingest_with(|b| b.set("attempt", M::U(1 << 32))),
        ),
        bad(
            "§4 a negative u64 (seq = -1) is malformed",
            ingest_event(|e| e.set("seq", M::I(-1))),
        ),
        ok(
            "§4 a float 32 property value is read",
            ingest_body(custom("f").set("props", M::map(&[("x", M::F32(1.5))]))),
        ),
        // Strings.
        bad(
            "§4 a bin where a str is expected is malformed",
            ingest_body(M::map(&[("type", M::s("custom")), ("name", M::Bin(b"e".to_vec()))])),
        ),
        bad(
            "§4 a str that is not UTF-8 is malformed",
            ingest_body(M::map(&[("type", M::s("custom")), ("name", M::StrBytes(vec![0xff, 0xfe]))])),
        ),
        // UUIDs.
        ok(
            "§4 a UUID in lower-case hyphenated text is read",
            ingest_with(|b| b.set("device_id", uuid_text(false)).set("batch_id", uuid_text(false))),
        ),
        ok(
            "§4 a UUID in upper-case hyphenated text is read",
            ingest_with(|b| b.set("device_id", uuid_text(true)).set("batch_id", uuid_text(true))),
        ),
        bad(
            "§4 a UUID as 32 hex digits without hyphens is malformed",
            ingest_with(|b| {
                b.set(
                    "device_id",
                    M::Str(DeviceId::random().as_uuid().simple().to_string()),
                )
            }),
        ),
        bad(
            "§4 a UUID in braces is malformed",
            ingest_with(|b| b.set("device_id", M::Str(format!("{{{}}}", DeviceId::random())))),
        ),
        bad(
            "§4 a urn:uuid: UUID is malformed",
            ingest_with(|b| b.set("device_id", M::Str(format!("urn:uuid:{}", DeviceId::random())))),
        ),
        bad(
            "§4 a UUID as bin of 15 bytes is malformed",
            ingest_with(|b| b.set("device_id", M::Bin(vec![7; 15]))),
        ),
        bad(
            "§4 a UUID as bin of 17 bytes is malformed",
            ingest_with(|b| b.set("batch_id", M::Bin(vec![7; 17]))),
        ),
        // Optional fields and defaults: absent or nil.
        ok(
            "§4 optional fields may be absent (attempt, health, platform, app_version, user_id, session_id, props)",
            ingest(batch()),
        ),
        ok(
            "§4 nil in optional fields is absent (user_id, session_id, app_version)",
            ingest_with(|b| {
                b.edit("sdk", |s| s.set("app_version", M::Nil))
                    .edit("events", |e| {
                        e.item(0, |e| e.set("user_id", M::Nil).set("session_id", M::Nil))
                    })
            }),
        ),
        ok(
            "§4 nil in fields with a default is absent: attempt, health",
            ingest_with(|b| b.set("attempt", M::Nil).set("health", M::Nil)),
        ),
        ok(
            "§4 nil in fields with a default is absent: sdk.platform",
            ingest_with(|b| b.edit("sdk", |s| s.set("platform", M::Nil))),
        ),
        ok(
            "§4 nil in fields with a default is absent: health counters",
            ingest_with(|b| {
                b.set(
                    "health",
                    M::map(&[("retries", M::Nil), ("queue_events", M::U(3))]),
                )
            }),
        ),
        ok(
            "§4 nil in fields with a default is absent: custom props",
            ingest_body(custom("e").set("props", M::Nil)),
        ),
        ok(
            "§4 nil in fields with a default is absent: purchase props",
            ingest_body(M::map(&[
                ("type", M::s("purchase")),
                ("product_id", M::s("sku")),
                ("amount_micros", M::U(990_000)),
                ("currency", M::s("EUR")),
                ("quantity", M::U(1)),
                ("props", M::Nil),
            ])),
        ),
        ok(
            "§4 nil in fields with a default is absent: user_properties set and unset",
            ingest_body(M::map(&[
                ("type", M::s("user_properties")),
                ("set", M::Nil),
                ("unset", M::Nil),
            ])),
        ),
        bad(
            "§4 nil in a required field (seq) is malformed",
            ingest_event(|e| e.set("seq", M::Nil)),
        ),
        bad(
            "§4 nil in a required field (sent_at_ms) is malformed",
            ingest_with(|b| b.set("sent_at_ms", M::Nil)),
        ),
        bad(
            "§4 nil as a property value is malformed",
            ingest_body(custom("e").set("props", M::map(&[("k", M::Nil)]))),
        ),
        // Values.
        bad(
            "§4 a bin property value is malformed",
            ingest_body(custom("e").set("props", M::map(&[("k", M::Bin(vec![1]))]))),
        ),
        bad(
            "§4 an array property value is malformed",
            ingest_body(custom("e").set("props", M::map(&[("k", M::Arr(vec![]))]))),
        ),
        bad(
            "§4 an integer property value above i64::MAX is malformed",
            ingest_body(custom("e").set("props", M::map(&[("k", M::U(1 << 63))]))),
        ),
        // Unknown keys.
        ok("§4 unknown keys are ignored at every level, extension types included", {
            let u = |m: M| m.set("zz_future", ext.clone());
            M::map(&[
                ("auth", u(auth(APP, KEY))),
                (
                    "batch",
                    u(batch()
                        .edit("sdk", u)
                        .set("health", u(M::map(&[("retries", M::U(1))])))
                        .edit("events", |e| e.item(0, |e| u(e).edit("body", u)))),
                ),
                ("zz_top", M::map(&[("nested", M::Arr(vec![M::Nil, ext.clone()]))])),
            ])
        }),
        ok(
            "§4 a key that is not UTF-8 is an unknown key",
            ingest_with(|b| b.push(M::StrBytes(vec![0xc3, 0x28]), M::U(1))),
        ),
        ok(
            "§4 a repeated unknown key is ignored",
            ingest_with(|b| b.push(M::s("zz"), M::U(1)).push(M::s("zz"), M::U(2))),
        ),
        ok(
            "§4 unknown event kinds are read (and accepted)",
            ingest_body(M::map(&[("type", M::s("app_rated")), ("stars", M::U(5))])),
        ),
        // Nesting inside an ignored value.
        ok(
            "§4 64 levels of nesting inside an unknown field are read",
            ingest_with(|b| b.set("zz", nested(64, Some(M::Nil)))),
        ),
        bad(
            "§4 65 levels of nesting inside an unknown field are malformed",
            ingest_with(|b| b.set("zz", nested(65, None))),
        ),
        ok(
            "§4 nesting restarts at level 1 in an unknown field of an event body",
            ingest_body(custom("e").set("zz", nested(64, Some(M::U(1))))),
        ),
        bad(
            "§4 65 levels inside an unknown event kind's field are malformed",
            ingest_body(M::map(&[("type", M::s("future")), ("x", nested(65, None))])),
        ),
        // Repeated keys.
        bad(
            "§4 a field named twice is malformed",
            ingest_with(|b| b.push(M::s("sent_at_ms"), M::U(1))),
        ),
        bad(
            "§4 an optional field named twice (once nil) is malformed",
            ingest_with(|b| b.push(M::s("attempt"), M::Nil).push(M::s("attempt"), M::U(1))),
        ),
        bad(
            "§4 a tag named twice is malformed",
            ingest_body(custom("e").push(M::s("type"), M::s("custom"))),
        ),
        bad(
            "§4 a property key repeated in a Properties map is malformed",
            ingest_body(custom("e").set(
                "props",
                M::Map(vec![(M::s("k"), M::U(1)), (M::s("k"), M::U(2))]),
            )),
        ),
        // One value.
        case(
            "§4 bytes after the payload's value are malformed",
            frame(0x01, 0, &{
                let mut p = ingest(batch()).bytes();
                p.push(0xc0);
                p
            }),
            Want::Error(Malformed),
        ),
        case(
            "§4 the reserved marker 0xc1 is malformed",
            frame(0x01, 0, &{
                let mut p = ingest_with(|b| b.set("zz", M::Nil)).bytes();
                let n = p.len();
                p[n - 1] = 0xc1;
                p
            }),
            Want::Error(Malformed),
        ),
    ];
    let accepted_once = cases.iter().filter(|c| c.want == Want::Accepted).count();
    assert!(accepted_once > 10);
    env.run("§4", cases, 0).await;
}

// ---------------------------------------------------------------------------------------
// §5, §6.3 Messages and how a relay answers them
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn section_5_and_6_3_requests() {
    let env = Env::start().await;
    use RejectReason::*;
    let mut cases = Vec::new();
    // §5.2: every required field of an IngestRequest.
    let required: Vec<(&str, M)> = vec![
        ("auth", ingest(batch()).del("auth")),
        ("batch", ingest(batch()).del("batch")),
        (
            "auth.app_id",
            M::map(&[("auth", M::map(&[("key", M::s(KEY))])), ("batch", batch())]),
        ),
        (
            "auth.key",
            M::map(&[
                ("auth", M::map(&[("app_id", M::s(APP))])),
                ("batch", batch()),
            ]),
        ),
        ("batch.batch_id", ingest_with(|b| b.del("batch_id"))),
        ("batch.app_id", ingest_with(|b| b.del("app_id"))),
        ("batch.device_id", ingest_with(|b| b.del("device_id"))),
        ("batch.sdk", ingest_with(|b| b.del("sdk"))),
        (
            "batch.sdk.name",
            ingest_with(|b| b.edit("sdk", |s| s.del("name"))),
        ),
        (
            "batch.sdk.version",
            ingest_with(|b| b.edit("sdk", |s| s.del("version"))),
        ),
        ("batch.sent_at_ms", ingest_with(|b| b.del("sent_at_ms"))),
        ("batch.events", ingest_with(|b| b.del("events"))),
        ("event.seq", ingest_event(|e| e.del("seq"))),
        ("event.ts_ms", ingest_event(|e| e.del("ts_ms"))),
        ("event.body", ingest_event(|e| e.del("body"))),
        (
            "body.type",
            ingest_body(M::map(&[("name", M::s("no_tag"))])),
        ),
        (
            "custom.name",
            ingest_body(M::map(&[("type", M::s("custom"))])),
        ),
        (
            "session_end.duration_ms",
            ingest_body(M::map(&[("type", M::s("session_end"))])),
        ),
        (
            "purchase.currency",
            ingest_body(M::map(&[
                ("type", M::s("purchase")),
                ("product_id", M::s("sku")),
                ("amount_micros", M::U(1)),
                ("quantity", M::U(1)),
            ])),
        ),
        (
            "message_impression.action",
            ingest_body(M::map(&[
                ("type", M::s("message_impression")),
                ("message_id", M::s("m1")),
            ])),
        ),
    ];
    for (field, m) in required {
        cases.push(case(
            format!("§5.2 IngestRequest without required field {field} is malformed"),
            ingest_frame(&m),
            Want::Error(Malformed),
        ));
    }
    // Every event kind of §5.2, valid.
    for (kind, body) in [
        (
            "custom",
            custom("opened").set(
                "props",
                M::map(&[("a", M::s("x")), ("b", M::I(-4)), ("c", M::B(true))]),
            ),
        ),
        ("session_start", M::map(&[("type", M::s("session_start"))])),
        (
            "session_end",
            M::map(&[("type", M::s("session_end")), ("duration_ms", M::U(60_000))]),
        ),
        (
            "purchase",
            M::map(&[
                ("type", M::s("purchase")),
                ("product_id", M::s("sku")),
                ("amount_micros", M::U(1_990_000)),
                ("currency", M::s("USD")),
                ("quantity", M::U(2)),
            ]),
        ),
        (
            "user_properties",
            M::map(&[
                ("type", M::s("user_properties")),
                ("set", M::map(&[("plan", M::s("pro"))])),
                ("unset", M::Arr(vec![M::s("trial")])),
            ]),
        ),
        (
            "message_impression",
            M::map(&[
                ("type", M::s("message_impression")),
                ("message_id", M::s("m1")),
                ("action", M::s("shown")),
            ]),
        ),
    ] {
        cases.push(case(
            format!("§5.2 a valid {kind} event is accepted"),
            ingest_frame(&ingest_body(body)),
            Want::Accepted,
        ));
    }
    // §5.4–§5.6: the other requests' required fields.
    for (name, kind, m) in [
        (
            "ConfigRequest without auth",
            0x02u8,
            config_request().del("auth"),
        ),
        (
            "ConfigRequest without device_id",
            0x02,
            config_request().del("device_id"),
        ),
        (
            "ShardMapRequest without auth",
            0x03,
            shard_map_request().del("auth"),
        ),
        (
            "ShardMapRequest without known_version",
            0x03,
            shard_map_request().del("known_version"),
        ),
    ] {
        cases.push(case(
            format!("§5 {name} is malformed"),
            frame(kind, 0, &m.bytes()),
            Want::Error(Malformed),
        ));
    }
    cases.push(case(
        "§5.4 a ConfigRequest with only its required fields gets the bundle",
        frame(0x02, 0, &config_request().bytes()),
        Want::ConfigModified,
    ));
    cases.push(case(
        "§5.4 a ConfigRequest with nil optional fields gets the bundle",
        frame(
            0x02,
            0,
            &config_request()
                .set("user_id", M::Nil)
                .set("if_none_match", M::Nil)
                .bytes(),
        ),
        Want::ConfigModified,
    ));
    cases.push(case(
        "§5.5 a ShardMapRequest gets a ShardMapReply",
        frame(0x03, 0, &shard_map_request().bytes()),
        Want::ShardMap,
    ));
    // §6.3 credentials, per request kind.
    for (who, app, key) in [
        ("a wrong key", APP, "wrong"),
        ("an unknown app", "nobody", "demo-key"),
    ] {
        cases.push(case(
            format!("§6.3 an IngestRequest with {who} is IngestReply{{rejected: unauthorized}}"),
            ingest_frame(&M::map(&[
                ("auth", auth(app, key)),
                ("batch", batch_of(app, events(1))),
            ])),
            Want::Rejected(Unauthorized),
        ));
        cases.push(case(
            format!("§6.3 a ConfigRequest with {who} is ConfigReply{{rejected: unauthorized}}"),
            frame(
                0x02,
                0,
                &config_request().set("auth", auth(app, key)).bytes(),
            ),
            Want::ConfigRejected(Unauthorized),
        ));
        cases.push(case(
            format!("§6.3 a ShardMapRequest with {who} is ErrorReply{{unauthorized}}"),
            frame(
                0x03,
                0,
                &shard_map_request().set("auth", auth(app, key)).bytes(),
            ),
            Want::Error(Unauthorized),
        ));
    }
    cases.push(case(
        "§6.3/§12 a batch of another app is IngestReply{rejected: app_mismatch}",
        ingest_frame(&ingest(batch_of("shop", events(1)))),
        Want::Rejected(AppMismatch),
    ));
    // §6.3 the order of the steps.
    cases.push(case(
        "§6.3 malformed before unauthorized",
        ingest_frame(&M::map(&[
            ("auth", auth(APP, "wrong")),
            ("batch", batch().del("events")),
        ])),
        Want::Error(Malformed),
    ));
    cases.push(case(
        "§6.3 unauthorized before app_mismatch and invalid",
        ingest_frame(&M::map(&[
            ("auth", auth(APP, "wrong")),
            ("batch", batch_of("shop", vec![event(0, custom("_bad"))])),
        ])),
        Want::Rejected(Unauthorized),
    ));
    cases.push(case(
        "§6.3 app_mismatch before too_large",
        ingest_frame(&ingest(batch_of("shop", events(1001)))),
        Want::Rejected(AppMismatch),
    ));
    // §6.1 idempotency: the same batch twice is accepted twice and stored once.
    let again = ingest_frame(&ingest(batch()));
    cases.push(case(
        "§6.1 a batch is accepted",
        again.clone(),
        Want::Accepted,
    ));
    cases.push(case(
        "§6.1 the same batch again (same batch_id) is accepted again",
        again,
        Want::Accepted,
    ));
    // The repeated case stores nothing new.
    env.run("§5/§6.3", cases, -1).await;
}

// ---------------------------------------------------------------------------------------
// §7 Limits and validation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn section_7_limits() {
    let env = Env::start().await;
    use RejectReason::*;
    let props = |entries: Vec<(String, M)>| {
        M::Map(entries.into_iter().map(|(k, v)| (M::Str(k), v)).collect())
    };
    let n_props = |n: usize| props((0..n).map(|i| (format!("k{i:03}"), M::U(1))).collect());
    let purchase = |amount: i64, currency: &str, quantity: u64| {
        M::map(&[
            ("type", M::s("purchase")),
            ("product_id", M::s("sku")),
            ("amount_micros", M::I(amount)),
            ("currency", M::s(currency)),
            ("quantity", M::U(quantity)),
        ])
    };
    let impression = |id: &str, action: &str| {
        M::map(&[
            ("type", M::s("message_impression")),
            ("message_id", M::s(id)),
            ("action", M::s(action)),
        ])
    };
    let user_props = |set: M, unset: Vec<String>| {
        M::map(&[
            ("type", M::s("user_properties")),
            ("set", set),
            ("unset", M::Arr(unset.into_iter().map(M::Str).collect())),
        ])
    };
    let body_case =
        |name: String, body: M, want: Want| case(name, ingest_frame(&ingest_body(body)), want);
    let mut cases = Vec::new();
    // Names and keys: 1–128 bytes.
    let name_in_event = |n: &str| custom(n);
    let name_as_key = |n: &str| custom("e").set("props", M::map(&[(n, M::U(1))]));
    let name_as_unset = |n: &str| user_props(M::Map(vec![]), vec![n.to_owned()]);
    for (what, mk) in [
        ("event name", &name_in_event as &dyn Fn(&str) -> M),
        ("property key", &name_as_key),
        ("unset entry", &name_as_unset),
    ] {
        cases.push(body_case(
            format!("§7 {what} of 128 bytes passes"),
            mk(&"n".repeat(128)),
            Want::Accepted,
        ));
        cases.push(body_case(
            format!("§7 {what} of 129 bytes is too_large"),
            mk(&"n".repeat(129)),
            Want::Rejected(TooLarge),
        ));
        cases.push(body_case(
            format!("§7 an empty {what} is invalid"),
            mk(""),
            Want::Rejected(Invalid),
        ));
        cases.push(body_case(
            format!("§7 {what} with a trailing space is invalid"),
            mk("name "),
            Want::Rejected(Invalid),
        ));
        cases.push(body_case(
            format!("§7 {what} starting with '_' is invalid"),
            mk("_name"),
            Want::Rejected(Invalid),
        ));
        cases.push(body_case(
            format!("§7 {what} with a non-ASCII letter is invalid"),
            mk("naïve"),
            Want::Rejected(Invalid),
        ));
        cases.push(body_case(
            format!("§7 {what} of every allowed character passes"),
            mk("a1 _-.:Z"),
            Want::Accepted,
        ));
    }
    // Property counts: ≤ 64.
    cases.push(body_case(
        "§7 64 properties pass".into(),
        custom("e").set("props", n_props(64)),
        Want::Accepted,
    ));
    cases.push(body_case(
        "§7 65 properties are too_large".into(),
        custom("e").set("props", n_props(65)),
        Want::Rejected(TooLarge),
    ));
    cases.push(body_case(
        "§7 64 set entries pass".into(),
        user_props(n_props(64), vec![]),
        Want::Accepted,
    ));
    cases.push(body_case(
        "§7 65 set entries are too_large".into(),
        user_props(n_props(65), vec![]),
        Want::Rejected(TooLarge),
    ));
    let keys = |n: usize| (0..n).map(|i| format!("k{i:03}")).collect::<Vec<_>>();
    cases.push(body_case(
        "§7 64 unset entries pass".into(),
        user_props(M::Map(vec![]), keys(64)),
        Want::Accepted,
    ));
    cases.push(body_case(
        "§7 65 unset entries are too_large".into(),
        user_props(M::Map(vec![]), keys(65)),
        Want::Rejected(TooLarge),
    ));
    // String values: ≤ 1024 bytes. Floats: finite.
    for (len, want) in [(1024, Want::Accepted), (1025, Want::Rejected(TooLarge))] {
        cases.push(body_case(
            format!("§7 a string value of {len} bytes: {want:?}"),
            custom("e").set("props", M::map(&[("s", M::s(&"v".repeat(len)))])),
            want,
        ));
    }
    for x in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        cases.push(body_case(
            format!("§7 a float value {x} is invalid"),
            custom("e").set("props", M::map(&[("x", M::F32(x))])),
            Want::Rejected(Invalid),
        ));
    }
    // Ids: 1–256 bytes, no control characters.
    let with_user = |user: &str| ingest_event(|e| e.set("user_id", M::s(user)));
    for (len, want) in [(256, Want::Accepted), (257, Want::Rejected(TooLarge))] {
        cases.push(case(
            format!("§7 a user_id of {len} bytes: {want:?}"),
            ingest_frame(&with_user(&"u".repeat(len))),
            want.clone(),
        ));
        cases.push(body_case(
            format!("§7 a product_id of {len} bytes: {want:?}"),
            purchase(1, "USD", 1).set("product_id", M::s(&"p".repeat(len))),
            want.clone(),
        ));
        cases.push(body_case(
            format!("§7 a message_id of {len} bytes: {want:?}"),
            impression(&"m".repeat(len), "shown"),
            want.clone(),
        ));
        cases.push(body_case(
            format!("§7 an action of {len} bytes: {want:?}"),
            impression("m", &"a".repeat(len)),
            want,
        ));
    }
    cases.push(case(
        "§7 an empty user_id is invalid",
        ingest_frame(&with_user("")),
        Want::Rejected(Invalid),
    ));
    cases.push(case(
        "§7 a user_id with a control character is invalid",
        ingest_frame(&with_user("a\u{7}b")),
        Want::Rejected(Invalid),
    ));
    cases.push(body_case(
        "§7 an empty message_id is invalid".into(),
        impression("", "shown"),
        Want::Rejected(Invalid),
    ));
    let long = long_app();
    cases.push(case(
        "§7 an app_id of 256 bytes passes",
        ingest_frame(&M::map(&[
            ("auth", auth(&long, "long-key")),
            ("batch", batch_of(&long, events(1))),
        ])),
        Want::Accepted,
    ));
    // Purchases.
    cases.push(body_case(
        "§7 a purchase with amount 0 passes".into(),
        purchase(0, "JPY", 1),
        Want::Accepted,
    ));
    cases.push(body_case(
        "§7 a negative amount is invalid".into(),
        purchase(-1, "USD", 1),
        Want::Rejected(Invalid),
    ));
    for cur in ["usd", "US", "USDX", "U5D"] {
        cases.push(body_case(
            format!("§7 currency {cur:?} is invalid"),
            purchase(1, cur, 1),
            Want::Rejected(Invalid),
        ));
    }
    cases.push(body_case(
        "§7 quantity 0 is invalid".into(),
        purchase(1, "USD", 0),
        Want::Rejected(Invalid),
    ));
    // Events per batch: 1–1000, seq ≥ 1 and strictly increasing.
    let with_events = |ev: Vec<M>| ingest_frame(&ingest(batch_of(APP, ev)));
    cases.push(case(
        "§7 a batch of 1000 events passes",
        with_events(events(1000)),
        Want::Accepted,
    ));
    cases.push(case(
        "§7 a batch of 1001 events is too_large",
        with_events(events(1001)),
        Want::Rejected(TooLarge),
    ));
    cases.push(case(
        "§7 a batch of no events is invalid",
        with_events(vec![]),
        Want::Rejected(Invalid),
    ));
    cases.push(case(
        "§7 seq 0 is invalid",
        with_events(vec![event(0, custom("e"))]),
        Want::Rejected(Invalid),
    ));
    cases.push(case(
        "§7 a repeated seq is invalid",
        with_events(vec![event(3, custom("e")), event(3, custom("e"))]),
        Want::Rejected(Invalid),
    ));
    cases.push(case(
        "§7 a decreasing seq is invalid",
        with_events(vec![event(5, custom("e")), event(4, custom("e"))]),
        Want::Rejected(Invalid),
    ));
    cases.push(case(
        "§7 gaps in seq pass",
        with_events(vec![event(5, custom("e")), event(9, custom("e"))]),
        Want::Accepted,
    ));
    // One event: ≤ 32 KiB, as received (unknown fields and unknown kinds included).
    for (size, want) in [
        (MAX_EVENT, Want::Accepted),
        (MAX_EVENT + 1, Want::Rejected(TooLarge)),
    ] {
        cases.push(case(
            format!("§7 a custom event of {size} bytes: {want:?}"),
            with_events(vec![custom_event_of_size(1, size)]),
            want.clone(),
        ));
        cases.push(case(
            format!("§7 an event of an unknown kind of {size} bytes: {want:?}"),
            with_events(vec![unknown_event_of_size(1, size)]),
            want.clone(),
        ));
        cases.push(case(
            format!("§7 an event of {size} bytes with an unknown field: {want:?}"),
            with_events(vec![padded(event(1, custom("e")), None, size)]),
            want.clone(),
        ));
        cases.push(case(
            format!("§7 an event whose body has an unknown field, {size} bytes in all: {want:?}"),
            with_events(vec![padded(event(1, custom("e")), Some("body"), size)]),
            want,
        ));
    }
    // One batch: the sum of its events' sizes ≤ 1 MiB.
    let full: Vec<M> = (1..=32)
        .map(|s| unknown_event_of_size(s, MAX_EVENT))
        .collect();
    assert_eq!(full.iter().map(M::len).sum::<usize>(), MAX_BATCH);
    cases.push(case(
        "§7 a batch of exactly 1 MiB of events passes",
        with_events(full),
        Want::Accepted,
    ));
    let mut over: Vec<M> = (1..=31)
        .map(|s| unknown_event_of_size(s, MAX_EVENT))
        .collect();
    over.push(unknown_event_of_size(32, 16_385));
    over.push(unknown_event_of_size(33, 16_384));
    assert_eq!(over.iter().map(M::len).sum::<usize>(), MAX_BATCH + 1);
    cases.push(case(
        "§7 a batch of 1 MiB + 1 byte of events is too_large",
        with_events(over),
        Want::Rejected(TooLarge),
    ));
    // Unknown kinds pass the content rules.
    cases.push(case(
        "§7 an unknown kind's fields are not checked",
        ingest_frame(&ingest_body(M::map(&[
            ("type", M::s("future")),
            ("name", M::s("_not a name!")),
            ("x", M::F32(f32::NAN)),
        ]))),
        Want::Accepted,
    ));
    // The order of §7: the first broken rule decides.
    cases.push(case(
        "§7 order: the event count before the events (1001 events, the first invalid)",
        with_events({
            let mut e = events(1001);
            e[0] = event(1, custom("_bad"));
            e
        }),
        Want::Rejected(TooLarge),
    ));
    cases.push(case(
        "§7 order: events in array order (an invalid event before a too-large one)",
        with_events(vec![
            event(1, custom("_bad")),
            event(2, custom(&"n".repeat(129))),
        ]),
        Want::Rejected(Invalid),
    ));
    cases.push(case(
        "§7 order: user_id before the body",
        ingest_frame(&ingest_event(|e| {
            e.set("user_id", M::s(&"u".repeat(257)))
                .set("body", custom("_bad"))
        })),
        Want::Rejected(TooLarge),
    ));
    cases.push(case(
        "§7 order: property keys in ascending order (the first key's rule decides)",
        ingest_frame(&ingest_body(custom("e").set(
            "props",
            M::Map(vec![
                (M::s("b_bad key!"), M::U(1)),
                (M::s("a"), M::s(&"v".repeat(1025))),
            ]),
        ))),
        Want::Rejected(TooLarge),
    ));
    cases.push(case(
        "§7 order: the content before the event's size",
        with_events(vec![padded(event(1, custom("_bad")), None, MAX_EVENT + 10)]),
        Want::Rejected(Invalid),
    ));
    env.run("§7", cases, 0).await;
}
