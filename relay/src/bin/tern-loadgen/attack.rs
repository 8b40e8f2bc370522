//! `tern-loadgen attack <kind>`: the exhaustion attacks an anonymous client can mount
//! on a relay (issue #18), for `relay/tests/attacks.rs` and `scripts/bench-attacks.sh`.
//!
//! | kind | what each slot does, again and again until `--duration` ends |
//! |---|---|
//! | `quic-streams` | `--connections` QUIC connections × `--streams` streams, each sending the header of a request frame and `--bytes` of its body, never the rest |
//! | `quic-handshakes` | `--connections` UDP sockets, each starting a QUIC handshake every `--interval` and never finishing one (with `--follow-retry`, after answering the relay's Retry) |
//! | `https-bodies` | `--connections` HTTPS connections, each `POST /v1/rpc` with `--bytes` of a body one byte longer, then silence |
//! | `slowloris` | `--connections` TCP connections (TLS unless `--plain`), each trickling a request head one byte per `--interval` |
//! | `subscriptions` | `--connections` HTTPS connections, each holding a `POST /v1/subscribe` push stream |
//!
//! Slots the relay cuts while they hold are opened again at once (after 50 ms), slots
//! it refuses after `--retry-delay`, so the pressure lasts.
//! Sources: the addresses of `--from`, one per slot in turn (on Linux every 127.0.0.0/8
//! address is local, so `127.0.0.2` is a different client than `127.0.0.1`).
//!
//! Output: one JSON line `{"event":"established",...}` once every slot has made its
//! first attempt, `{"event":"status","status":...}` the first time each answer is seen
//! (an HTTP status, a TLS outcome), then `{"event":"done",...}` with the counts: `attempts`,
//! `established` (reached the holding state), `refused` (cut before it), `cut` (cut
//! while holding), `held_peak`, `held_at_end`, and per kind `retries`, `statuses`,
//! `bytes_sent`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tern_protocol::{
    AppId, Auth, CodecConfig, DeviceId, Message, MessageKind, SubscribeRequest, ALPN,
    HTTP_RPC_PATH, HTTP_SUBSCRIBE_PATH,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Target;
use crate::http;
use crate::pace::parse_duration;

/// The attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Unfinished large request frames on many QUIC streams.
    QuicStreams,
    /// QUIC handshakes started and never completed, from many sockets.
    QuicHandshakes,
    /// HTTPS requests whose large bodies never finish.
    HttpsBodies,
    /// Request heads trickled one byte at a time over many connections.
    Slowloris,
    /// HTTPS push subscriptions held open.
    Subscriptions,
}

/// `tern-loadgen attack` arguments.
#[derive(clap::Args, Debug)]
pub struct AttackArgs {
    /// The attack.
    #[arg(value_enum)]
    kind: Kind,
    /// The relay's address: QUIC (UDP) for `quic-*`, HTTPS (TCP) for the others, or a
    /// plain-HTTP listener (admin, metrics) for `slowloris --plain`.
    #[arg(long)]
    target: String,
    /// PEM file of the CA to trust (the relay's `--dev-ca-out`).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// TLS server name.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Local addresses to attack from, one per slot in turn.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.2")]
    from: Vec<IpAddr>,
    /// Connections (`quic-handshakes`: UDP sockets).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// `quic-streams`: streams per connection.
    #[arg(long, default_value_t = 128)]
    streams: usize,
    /// Body bytes sent of each unfinished request (`quic-streams`, `https-bodies`).
    #[arg(long, default_value_t = 1_000_000)]
    bytes: usize,
    /// How long the attack lasts.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// `slowloris`: time between head bytes; `quic-handshakes`: between a socket's
    /// handshakes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Pause before a slot tries again after the relay refused it (a slot the relay
    /// cut while holding tries again after 50 ms).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    retry_delay: Duration,
    /// `quic-handshakes`: answer the relay's Retry (proving the address) before
    /// stalling.
    #[arg(long)]
    follow_retry: bool,
    /// `slowloris`: plain TCP (the admin and metrics listeners), no TLS.
    #[arg(long)]
    plain: bool,
    /// End the attack when standard input closes (or `--duration` runs out): a
    /// harness decides when it has seen enough.
    #[arg(long)]
    until_stdin_closes: bool,
    /// App id (`subscriptions`).
    #[arg(long, default_value = "demo")]
    app: String,
    /// App key (`subscriptions`).
    #[arg(long, default_value = "demo-key")]
    key: String,
}

/// The counts, shared by every slot.
#[derive(Debug, Default)]
struct Counts {
    attempts: AtomicU64,
    established: AtomicU64,
    refused: AtomicU64,
    cut: AtomicU64,
    held: AtomicU64,
    held_peak: AtomicU64,
    retries: AtomicU64,
    bytes_sent: AtomicU64,
    first_done: AtomicU64,
    statuses: Mutex<BTreeMap<String, u64>>,
}

impl Counts {
    /// Counts an answer (an HTTP status, a TLS outcome); the first of each kind is also
    /// announced on its own line, so a test can wait until the attacker has seen it.
    fn status(&self, s: impl Into<String>) {
        let s = s.into();
        let mut m = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(s.clone()).or_default();
        *n += 1;
        if *n == 1 {
            println!("{}", json!({"event": "status", "status": s}));
        }
    }

    /// A slot reached its holding state; the guard counts it as held until dropped.
    fn hold(self: &Arc<Self>) -> HeldSlot {
        self.established.fetch_add(1, Ordering::Relaxed);
        let now = self.held.fetch_add(1, Ordering::Relaxed) + 1;
        self.held_peak.fetch_max(now, Ordering::Relaxed);
        HeldSlot(self.clone())
    }

    fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "attempts": g(&self.attempts),
            "established": g(&self.established),
            "refused": g(&self.refused),
            "cut": g(&self.cut),
            "held_peak": g(&self.held_peak),
            "held_at_end": g(&self.held),
            "retries": g(&self.retries),
            "bytes_sent": g(&self.bytes_sent),
            "statuses": *self.statuses.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }
}

struct HeldSlot(Arc<Counts>);

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything a slot needs.
struct Ctx {
    args: AttackArgs,
    addr: SocketAddr,
    ca_pem: String,
    end: Instant,
    stopped: tokio::sync::watch::Receiver<bool>,
    counts: Arc<Counts>,
    slots: u64,
}

/// The attack ended while a slot was waiting.
#[derive(Debug)]
struct Over;

impl Ctx {
    fn from(&self, slot: usize) -> IpAddr {
        self.args.from[slot % self.args.from.len()]
    }

    fn over(&self) -> bool {
        Instant::now() >= self.end || *self.stopped.borrow()
    }

    /// Resolves when the attack ends (`--duration`, or standard input closed).
    async fn ended(&self) {
        let mut stopped = self.stopped.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(self.end)) => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
    }

    /// Counts an attempt's outcome and waits before the slot's next attempt.
    async fn pause_after(&self, outcome: Attempt) {
        let pause = match outcome {
            Attempt::Refused => {
                self.counts.refused.fetch_add(1, Ordering::Relaxed);
                self.args.retry_delay
            }
            Attempt::Cut => {
                self.counts.cut.fetch_add(1, Ordering::Relaxed);
                Duration::from_millis(50)
            }
            Attempt::Ended => return,
        };
        let _ = self.within(tokio::time::sleep(pause)).await;
    }

    /// `fut`, unless the attack ends first.
    async fn within<F: std::future::Future>(&self, fut: F) -> Result<F::Output, Over> {
        tokio::select! {
            r = fut => Ok(r),
            _ = self.ended() => Err(Over),
        }
    }

    /// A slot's first attempt settled (held, or cut): counted once per slot (`flag`).
    fn settle(&self, flag: &AtomicBool) {
        if !flag.swap(true, Ordering::AcqRel) {
            self.first_attempt_done();
        }
    }

    /// A slot finished its first attempt; the last one announces the attack as set up.
    fn first_attempt_done(&self) {
        if self.counts.first_done.fetch_add(1, Ordering::AcqRel) + 1 == self.slots {
            println!(
                "{}",
                json!({"event": "established", "kind": kind_name(self.args.kind), "counts": self.counts.json()})
            );
        }
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::QuicStreams => "quic-streams",
        Kind::QuicHandshakes => "quic-handshakes",
        Kind::HttpsBodies => "https-bodies",
        Kind::Slowloris => "slowloris",
        Kind::Subscriptions => "subscriptions",
    }
}

/// Runs the attack and prints its JSON lines.
pub async fn run(args: AttackArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.from.is_empty(), "--from names no address");
    let ca_pem = match &args.ca {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None if args.plain => String::new(),
        None => anyhow::bail!("--ca is required for TLS attacks"),
    };
    let addr = Target::resolve(&args.target, &args.server_name, String::new())?.addr;
    let slots = match args.kind {
        Kind::QuicStreams => (args.connections * args.streams.max(1)) as u64,
        _ => args.connections as u64,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Without the flag the sender lives (unsignalled) until the attack is over.
    let _unsignalled = if args.until_stdin_closes {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = stop.send(true);
        });
        None
    } else {
        Some(stop)
    };
    let ctx = Arc::new(Ctx {
        end: Instant::now() + args.duration,
        stopped,
        args,
        addr,
        ca_pem,
        counts: Arc::new(Counts::default()),
        slots,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..ctx.args.connections {
        let ctx = ctx.clone();
        match ctx.args.kind {
            Kind::QuicStreams => tasks.spawn(quic_streams(ctx, slot)),
            Kind::QuicHandshakes => tasks.spawn(quic_handshakes(ctx, slot)),
            Kind::HttpsBodies => tasks.spawn(slot_loop(ctx, slot, https_body)),
            Kind::Slowloris => tasks.spawn(slot_loop(ctx, slot, slowloris)),
            Kind::Subscriptions => tasks.spawn(slot_loop(ctx, slot, subscription)),
        };
    }
    while tasks.join_next().await.is_some() {}
    println!(
        "{}",
        json!({"event": "done", "kind": kind_name(ctx.args.kind), "counts": ctx.counts.json()})
    );
    Ok(())
}

/// What one attempt of a TCP slot came to.
enum Attempt {
    /// Cut before it held anything.
    Refused,
    /// Held, then cut by the relay.
    Cut,
    /// Held until the attack ended.
    Ended,
}

type AttemptFn = fn(
    Arc<Ctx>,
    usize,
    Arc<AtomicBool>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Attempt> + Send>>;

/// Runs `attempt` in slot `slot` until the attack ends.
async fn slot_loop(ctx: Arc<Ctx>, slot: usize, attempt: AttemptFn) {
    let settled = Arc::new(AtomicBool::new(false));
    while !ctx.over() {
        ctx.counts.attempts.fetch_add(1, Ordering::Relaxed);
        let outcome = attempt(ctx.clone(), slot, settled.clone()).await;
        ctx.settle(&settled);
        ctx.pause_after(outcome).await;
    }
    ctx.settle(&settled);
}

async fn tls_connect(
    ctx: &Ctx,
    slot: usize,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = http::tcp(ctx.addr, Some(ctx.from(slot))).await.ok()?;
    let tls = http::tls(&ctx.ca_pem).ok()?;
    match ctx
        .within(http::handshake(tcp, &tls, &ctx.args.server_name))
        .await
    {
        Ok(Ok(s)) => Some(s),
        Ok(Err(_)) => {
            ctx.counts.status("tls_failed");
            None
        }
        Err(_) => {
            ctx.counts.status("tls_unfinished");
            None
        }
    }
}

/// Waits until the relay closes the stream or answers (`Cut`), or the attack ends.
async fn hold_reading<S: AsyncReadExt + Unpin>(ctx: &Ctx, stream: &mut S) -> Attempt {
    let mut buf = Vec::new();
    match ctx.within(http::read_head(stream, &mut buf)).await {
        Err(_) => Attempt::Ended,
        Ok(Ok(head)) => {
            ctx.counts.status(head.status.to_string());
            Attempt::Cut
        }
        Ok(Err(_)) => {
            ctx.counts.status("closed");
            Attempt::Cut
        }
    }
}

fn https_body(
    ctx: Arc<Ctx>,
    slot: usize,
    settled: Arc<AtomicBool>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Attempt> + Send>> {
    Box::pin(async move {
        let Some(mut stream) = tls_connect(&ctx, slot).await else {
            return Attempt::Refused;
        };
        let head = http::request_head(HTTP_RPC_PATH, ctx.args.bytes + 1);
        if stream.write_all(head.as_bytes()).await.is_err() {
            return Attempt::Refused;
        }
        let chunk = vec![0u8; 16 * 1024];
        let mut left = ctx.args.bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            let write = ctx.within(stream.write_all(&chunk[..n])).await;
            match write {
                Ok(Ok(())) => {
                    ctx.counts.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    left -= n;
                }
                Ok(Err(_)) => {
                    // The relay stopped reading: see what it said, if anything.
                    let mut buf = Vec::new();
                    match tokio::time::timeout(
                        Duration::from_secs(1),
                        http::read_head(&mut stream, &mut buf),
                    )
                    .await
                    {
                        Ok(Ok(h)) => ctx.counts.status(h.status.to_string()),
                        _ => ctx.counts.status("closed"),
                    }
                    return Attempt::Refused;
                }
                Err(_) => return Attempt::Ended,
            }
        }
        let _ = stream.flush().await;
        let _held = ctx.counts.hold();
        ctx.settle(&settled);
        hold_reading(&ctx, &mut stream).await
    })
}

fn slowloris(
    ctx: Arc<Ctx>,
    slot: usize,
    settled: Arc<AtomicBool>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Attempt> + Send>> {
    Box::pin(async move {
        let head: &[u8] = if ctx.args.plain {
            b"GET /metrics HTTP/1.1\r\nHost: relay\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        } else {
            b"POST /v1/rpc HTTP/1.1\r\nHost: relay\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        };
        if ctx.args.plain {
            let Ok(stream) = http::tcp(ctx.addr, Some(ctx.from(slot))).await else {
                return Attempt::Refused;
            };
            trickle(&ctx, stream, head, &settled).await
        } else {
            let Some(stream) = tls_connect(&ctx, slot).await else {
                return Attempt::Refused;
            };
            trickle(&ctx, stream, head, &settled).await
        }
    })
}

/// Sends `head` one byte per interval (repeating its last byte), watching for the
/// relay to close the connection.
async fn trickle<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    ctx: &Ctx,
    stream: S,
    head: &[u8],
    settled: &AtomicBool,
) -> Attempt {
    let (mut rd, mut wr) = tokio::io::split(stream);
    if wr.write_all(&head[..1]).await.is_err() || wr.flush().await.is_err() {
        return Attempt::Refused;
    }
    // Held once the relay has let the first byte in without closing at once.
    let mut probe = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(200), rd.read(&mut probe)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {
            ctx.counts.status("closed");
            return Attempt::Refused;
        }
        Ok(Ok(_)) => {
            ctx.counts.status("answered");
            return Attempt::Refused;
        }
        Err(_) => {}
    }
    let _held = ctx.counts.hold();
    ctx.settle(settled);
    let mut i = 1usize;
    loop {
        let next = tokio::time::Instant::now() + ctx.args.interval;
        tokio::select! {
            r = rd.read(&mut probe) => {
                ctx.counts.status(match r { Ok(0) | Err(_) => "closed", Ok(_) => "answered" });
                return Attempt::Cut;
            }
            _ = ctx.ended() => return Attempt::Ended,
            _ = tokio::time::sleep_until(next) => {
                let b = head[i.min(head.len() - 1)];
                i += 1;
                if wr.write_all(&[b]).await.is_err() || wr.flush().await.is_err() {
                    ctx.counts.status("closed");
                    return Attempt::Cut;
                }
                ctx.counts.bytes_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn subscription(
    ctx: Arc<Ctx>,
    slot: usize,
    settled: Arc<AtomicBool>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Attempt> + Send>> {
    Box::pin(async move {
        let Some(mut stream) = tls_connect(&ctx, slot).await else {
            return Attempt::Refused;
        };
        let frame = Message::SubscribeRequest(SubscribeRequest {
            auth: Auth {
                app_id: AppId::new(&ctx.args.app),
                key: ctx.args.key.clone(),
            },
            device_id: DeviceId::random(),
            user_id: None,
            config_etag: None,
        })
        .encode(&CodecConfig::device())
        .unwrap_or_default();
        let mut request = http::request_head(HTTP_SUBSCRIBE_PATH, frame.len()).into_bytes();
        request.extend_from_slice(&frame);
        if stream.write_all(&request).await.is_err() {
            return Attempt::Refused;
        }
        let mut buf = Vec::new();
        let head = match ctx.within(http::read_head(&mut stream, &mut buf)).await {
            Err(_) => return Attempt::Ended,
            Ok(Err(_)) => {
                ctx.counts.status("closed");
                return Attempt::Refused;
            }
            Ok(Ok(h)) => h,
        };
        ctx.counts.status(head.status.to_string());
        if head.status != 200 {
            return Attempt::Refused;
        }
        // The first notice must be `Subscribed` (a refusal is one `ErrorReply` frame).
        let mut decoder = tern_protocol::FrameDecoder::new(CodecConfig::device().max_payload);
        // Body bytes that came with the head.
        decoder.push(&dechunk(&mut buf, &[]));
        let mut raw = Vec::new();
        let first = loop {
            if let Ok(Some(f)) = decoder.next_frame() {
                break Message::decode(&f, &CodecConfig::device()).ok();
            }
            match ctx.within(stream.read_buf(&mut raw)).await {
                Err(_) => return Attempt::Ended,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    ctx.counts.status("closed");
                    return Attempt::Refused;
                }
                Ok(Ok(_)) => {
                    // Strip the chunked framing: keep what follows each chunk size line.
                    decoder.push(&dechunk(&mut buf, &raw));
                    raw.clear();
                }
            }
        };
        if !matches!(first, Some(Message::PushNotice(_))) {
            ctx.counts.status("refused_frame");
            return Attempt::Refused;
        }
        let _held = ctx.counts.hold();
        ctx.settle(&settled);
        let mut sink = [0u8; 4096];
        loop {
            match ctx.within(stream.read(&mut sink)).await {
                Err(_) => return Attempt::Ended,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    ctx.counts.status("ended");
                    return Attempt::Cut;
                }
                Ok(Ok(_)) => {}
            }
        }
    })
}

/// Appends `raw` to `pending` and returns the chunk data complete so far (chunked
/// transfer coding), leaving partial chunks in `pending`.
fn dechunk(pending: &mut Vec<u8>, raw: &[u8]) -> Vec<u8> {
    pending.extend_from_slice(raw);
    let mut out = Vec::new();
    loop {
        let Some(line_end) = pending.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let Ok(size) = usize::from_str_radix(
            std::str::from_utf8(&pending[..line_end])
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        ) else {
            return out;
        };
        if pending.len() < line_end + 2 + size + 2 {
            return out;
        }
        out.extend_from_slice(&pending[line_end + 2..line_end + 2 + size]);
        pending.drain(..line_end + 2 + size + 2);
    }
}

/// The header of an `IngestRequest` frame whose body is `body_len` bytes.
fn ingest_frame_header(body_len: usize) -> Vec<u8> {
    let len = u32::try_from(body_len + 2).unwrap_or(u32::MAX);
    let mut h = len.to_be_bytes().to_vec();
    h.push(MessageKind::IngestRequest.as_u8());
    h.push(0);
    h
}

/// One QUIC connection: `--streams` streams, each re-opened when the relay stops it;
/// the connection itself re-opened when it is closed.
async fn quic_streams(ctx: Arc<Ctx>, slot: usize) {
    let target = Target {
        addr: ctx.addr,
        server_name: ctx.args.server_name.clone(),
        ca_pem: ctx.ca_pem.clone(),
    };
    let settled: Vec<Arc<AtomicBool>> = (0..ctx.args.streams)
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    while !ctx.over() {
        let conn = match crate::client::connect_from(&target, Some(ctx.from(slot))).await {
            Ok((ep, conn)) => Some((ep, conn)),
            Err(_) => {
                ctx.counts.status("connect_failed");
                None
            }
        };
        let Some((_ep, conn)) = conn else {
            for flag in &settled {
                ctx.counts.attempts.fetch_add(1, Ordering::Relaxed);
                ctx.counts.refused.fetch_add(1, Ordering::Relaxed);
                ctx.settle(flag);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut streams = tokio::task::JoinSet::new();
        for flag in &settled {
            let (ctx, conn, flag) = (ctx.clone(), conn.clone(), flag.clone());
            streams.spawn(async move {
                while !ctx.over() && conn.close_reason().is_none() {
                    ctx.counts.attempts.fetch_add(1, Ordering::Relaxed);
                    let outcome = quic_stream(&ctx, &conn, &flag).await;
                    ctx.settle(&flag);
                    ctx.pause_after(outcome).await;
                }
                ctx.settle(&flag);
            });
        }
        while streams.join_next().await.is_some() {}
        if let Some(reason) = conn.close_reason() {
            ctx.counts.status(format!("connection_closed: {reason}"));
        }
        conn.close(0u32.into(), b"done");
    }
    for flag in &settled {
        ctx.settle(flag);
    }
}

async fn quic_stream(ctx: &Ctx, conn: &quinn::Connection, settled: &AtomicBool) -> Attempt {
    let Ok(Ok((mut send, _recv))) = ctx.within(conn.open_bi()).await else {
        return if ctx.over() {
            Attempt::Ended
        } else {
            Attempt::Refused
        };
    };
    let header = ingest_frame_header(ctx.args.bytes + 1);
    if send.write_all(&header).await.is_err() {
        return Attempt::Refused;
    }
    // In place once the stream is open and announces its frame.
    ctx.settle(settled);
    // Held once the first chunk is in; the rest follows while the attack is on.
    let chunk = vec![0u8; 64 * 1024];
    let mut left = ctx.args.bytes;
    let mut held = None;
    while left > 0 {
        let n = left.min(chunk.len());
        match ctx.within(send.write_all(&chunk[..n])).await {
            Err(_) => return Attempt::Ended,
            Ok(Err(e)) => {
                ctx.counts.status(format!("write: {e}"));
                return if held.is_some() {
                    Attempt::Cut
                } else {
                    Attempt::Refused
                };
            }
            Ok(Ok(())) => {}
        }
        left -= n;
        ctx.counts.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        if held.is_none() {
            held = Some(ctx.counts.hold());
        }
    }
    let _held = held;
    match ctx.within(send.stopped()).await {
        Err(_) => Attempt::Ended,
        Ok(r) => {
            ctx.counts.status(match r {
                Ok(Some(code)) => format!("stopped: {code}"),
                Ok(None) => "stream_finished".to_owned(),
                Err(_) => "connection_lost".to_owned(),
            });
            Attempt::Cut
        }
    }
}

/// Whether a datagram is a QUIC v1 Retry packet (long header, type 3).
fn is_retry(datagram: &[u8]) -> bool {
    datagram
        .first()
        .is_some_and(|b| b & 0xc0 == 0xc0 && (b >> 4) & 0x03 == 3)
        && datagram.get(1..5) == Some(&[0, 0, 0, 1])
}

/// A handshake in progress, never to be finished.
struct Pending {
    conn: quinn_proto::Connection,
    handle: quinn_proto::ConnectionHandle,
    answered_retry: bool,
    held: Option<HeldSlot>,
    lost: bool,
}

/// One UDP socket starting a handshake every `--interval`, none ever finished.
async fn quic_handshakes(ctx: Arc<Ctx>, slot: usize) {
    let from = SocketAddr::new(ctx.from(slot), 0);
    let Ok(socket) = tokio::net::UdpSocket::bind(from).await else {
        ctx.counts.status("bind_failed");
        ctx.first_attempt_done();
        return;
    };
    let Ok(tls) = tern_relay::listen::tls::client_config(&ctx.ca_pem, &[ALPN]) else {
        ctx.first_attempt_done();
        return;
    };
    let Ok(crypto) = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls) else {
        ctx.first_attempt_done();
        return;
    };
    let client = quinn_proto::ClientConfig::new(Arc::new(crypto));
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let mut pending: Vec<Pending> = Vec::new();
    let mut buf = Vec::with_capacity(2048);
    let mut recv = vec![0u8; 65536];
    let mut next_attempt = tokio::time::Instant::now();
    let mut first = true;
    loop {
        tokio::select! {
            _ = ctx.ended() => break,
            _ = tokio::time::sleep_until(next_attempt) => {
                next_attempt += ctx.args.interval;
                // Forget handshakes the relay has closed; cap the rest (the attacker's
                // own memory).
                pending.retain(|p| !p.lost);
                if pending.len() >= 256 {
                    pending.remove(0);
                }
                ctx.counts.attempts.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                match endpoint.connect(now, client.clone(), ctx.addr, &ctx.args.server_name) {
                    Ok((handle, mut conn)) => {
                        buf.clear();
                        while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                            let _ = socket.send_to(&buf[..t.size], t.destination).await;
                            buf.clear();
                        }
                        pending.push(Pending { conn, handle, answered_retry: false, held: None, lost: false });
                    }
                    Err(e) => ctx.counts.status(format!("connect: {e}")),
                }
                if first {
                    first = false;
                    ctx.first_attempt_done();
                }
            }
            r = socket.recv_from(&mut recv) => {
                let Ok((n, remote)) = r else { continue };
                let data = &recv[..n];
                let retry = is_retry(data);
                let now = Instant::now();
                buf.clear();
                let event = endpoint.handle(
                    now,
                    remote,
                    None,
                    None,
                    bytes::BytesMut::from(data),
                    &mut buf,
                );
                let Some(quinn_proto::DatagramEvent::ConnectionEvent(handle, event)) = event else {
                    continue;
                };
                let Some(p) = pending.iter_mut().find(|p| p.handle == handle && !p.lost) else {
                    continue;
                };
                p.conn.handle_event(event);
                if retry {
                    ctx.counts.retries.fetch_add(1, Ordering::Relaxed);
                    if ctx.args.follow_retry && !p.answered_retry {
                        p.answered_retry = true;
                        buf.clear();
                        while let Some(t) = p.conn.poll_transmit(now, 1, &mut buf) {
                            let _ = socket.send_to(&buf[..t.size], t.destination).await;
                            buf.clear();
                        }
                    }
                    continue;
                }
                while let Some(ev) = p.conn.poll() {
                    if let quinn_proto::Event::ConnectionLost { reason } = ev {
                        p.lost = true;
                        let refused = matches!(
                            &reason,
                            quinn_proto::ConnectionError::ConnectionClosed(c)
                                if c.error_code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED
                        );
                        if refused {
                            ctx.counts.status("refused");
                        } else {
                            ctx.counts.status(format!("lost: {reason}"));
                        }
                        if p.held.take().is_some() {
                            ctx.counts.cut.fetch_add(1, Ordering::Relaxed);
                        } else {
                            ctx.counts.refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // The relay answered with its own handshake flight: it holds state for
                // this handshake now.
                if !p.lost && p.held.is_none() {
                    p.held = Some(ctx.counts.hold());
                }
            }
        }
    }
    if first {
        ctx.first_attempt_done();
    }
}
