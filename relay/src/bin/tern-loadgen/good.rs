//! `tern-loadgen good`: a well-behaved device sending valid batches at a modest rate,
//! over QUIC or HTTPS, each batch once — the yardstick of the attack runs
//! (`tern-loadgen attack`, `scripts/bench-attacks.sh`, `relay/tests/attacks.rs`).
//!
//! Success is a batch answered `accepted` on its one attempt; everything else
//! (a transport failure, a refused connection, `503`, `retry`, no reply within
//! `--timeout`) is a failure, counted by kind. Latency is from the moment the batch is
//! sent (connection set-up included when one is needed) to its reply. One JSON line
//! on stdout.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tern_protocol::HTTP_RPC_PATH;

use crate::batches::Device;
use crate::client::{classify, request, Target};
use crate::http;
use crate::pace::parse_duration;
use crate::stats::{histogram, Outcome, Percentiles};

/// The transport of the good client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// A stream per batch on a QUIC connection.
    Quic,
    /// `POST /v1/rpc` per batch on a keep-alive HTTPS connection.
    Https,
}

/// `tern-loadgen good` arguments.
#[derive(clap::Args, Debug)]
pub struct GoodArgs {
    /// Transport.
    #[arg(long, value_enum, default_value = "quic")]
    transport: Transport,
    /// The relay's address for that transport (QUIC: UDP port; HTTPS: TCP port).
    #[arg(long)]
    target: String,
    /// PEM file of the CA to trust (the relay's `--dev-ca-out`).
    #[arg(long)]
    ca: PathBuf,
    /// TLS server name.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Local address to send from (e.g. 127.0.0.1 while attacks come from 127.0.0.2).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// App id.
    #[arg(long, default_value = "demo")]
    app: String,
    /// App key.
    #[arg(long, default_value = "demo-key")]
    key: String,
    /// Events per batch.
    #[arg(long, default_value_t = 10)]
    events_per_batch: usize,
    /// Devices sending at once, each with its own connection.
    #[arg(long, default_value_t = 2)]
    senders: usize,
    /// Batches per second per sender (a slow reply delays the next batch).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many batches per sender (0: no limit; `--duration` still ends
    /// the run).
    #[arg(long, default_value_t = 0)]
    batches: u64,
    /// Longest wait for one batch's reply (connection set-up included).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// A new connection (QUIC or TLS handshake) every N batches; 0 = keep one,
    /// reconnecting only after a failure.
    #[arg(long, default_value_t = 0)]
    reconnect_every: u64,
}

/// What one sender saw.
#[derive(Debug)]
struct Tally {
    batches: u64,
    accepted: u64,
    events_sent: u64,
    events_accepted: u64,
    connects: u64,
    failures: std::collections::BTreeMap<String, u64>,
    latency: hdrhistogram::Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            batches: 0,
            accepted: 0,
            events_sent: 0,
            events_accepted: 0,
            connects: 0,
            failures: Default::default(),
            latency: histogram(),
        }
    }

    fn merge(&mut self, o: &Tally) {
        self.batches += o.batches;
        self.accepted += o.accepted;
        self.events_sent += o.events_sent;
        self.events_accepted += o.events_accepted;
        self.connects += o.connects;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        let _ = self.latency.add(&o.latency);
    }

    fn fail(&mut self, kind: impl Into<String>) {
        *self.failures.entry(kind.into()).or_default() += 1;
    }
}

enum Conn {
    None,
    Quic(quinn::Endpoint, quinn::Connection),
    Https(Box<http::Client>),
}

struct Sender {
    args: Arc<GoodArgs>,
    addr: SocketAddr,
    ca_pem: String,
    tls: Arc<rustls::ClientConfig>,
    conn: Conn,
    since_connect: u64,
}

impl Sender {
    async fn connect(&mut self, tally: &mut Tally) -> Result<(), String> {
        tally.connects += 1;
        self.since_connect = 0;
        match self.args.transport {
            Transport::Quic => {
                let target = Target {
                    addr: self.addr,
                    server_name: self.args.server_name.clone(),
                    ca_pem: self.ca_pem.clone(),
                };
                let (ep, conn) = crate::client::connect_from(&target, self.args.bind)
                    .await
                    .map_err(|_| "quic_connect".to_owned())?;
                self.conn = Conn::Quic(ep, conn);
            }
            Transport::Https => {
                let client = http::Client::connect(
                    self.addr,
                    self.args.bind,
                    &self.tls,
                    &self.args.server_name,
                )
                .await
                .map_err(|e| {
                    if format!("{e:#}").contains("TCP") {
                        "tcp_connect".to_owned()
                    } else {
                        "tls_handshake".to_owned()
                    }
                })?;
                self.conn = Conn::Https(Box::new(client));
            }
        }
        Ok(())
    }

    /// One batch, once: its outcome class (or the failure's kind).
    async fn send(&mut self, frame: &[u8], tally: &mut Tally) -> Result<(), String> {
        let every = self.args.reconnect_every;
        if matches!(self.conn, Conn::None) || (every > 0 && self.since_connect >= every) {
            if let Conn::Quic(ep, conn) = std::mem::replace(&mut self.conn, Conn::None) {
                conn.close(0u32.into(), b"reconnect");
                drop(ep);
            }
            self.connect(tally).await?;
        }
        self.since_connect += 1;
        let outcome = match &mut self.conn {
            Conn::None => return Err("not_connected".into()),
            Conn::Quic(_, conn) => request(conn, frame).await,
            Conn::Https(client) => match client.post(HTTP_RPC_PATH, frame).await {
                Ok((200, body)) => classify(&body),
                Ok((status, _)) => {
                    self.conn = Conn::None;
                    return Err(format!("http_{status}"));
                }
                Err(_) => {
                    self.conn = Conn::None;
                    return Err("http_transport".into());
                }
            },
        };
        match outcome {
            Outcome::Forwarded | Outcome::Spooled => Ok(()),
            Outcome::Transport => {
                self.conn = Conn::None;
                Err("transport".into())
            }
            other => Err(format!("{other:?}").to_lowercase()),
        }
    }
}

async fn run_sender(args: Arc<GoodArgs>, addr: SocketAddr, ca_pem: String, index: usize) -> Tally {
    let mut tally = Tally::new();
    let Ok(mut device) = Device::new(&args.app, &args.key, args.events_per_batch, index as u64)
    else {
        tally.fail("bad_arguments");
        return tally;
    };
    let Ok(tls) = http::tls(&ca_pem) else {
        tally.fail("bad_ca");
        return tally;
    };
    let mut sender = Sender {
        args: args.clone(),
        addr,
        ca_pem,
        tls,
        conn: Conn::None,
        since_connect: 0,
    };
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.01));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + args.duration;
    while Instant::now() < end && (args.batches == 0 || tally.batches < args.batches) {
        ticks.tick().await;
        let batch = device.next_batch();
        tally.batches += 1;
        tally.events_sent += batch.events;
        let sent = Instant::now();
        match tokio::time::timeout(args.timeout, sender.send(&batch.frame, &mut tally)).await {
            Ok(Ok(())) => {
                tally.accepted += 1;
                tally.events_accepted += batch.events;
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = tally.latency.record(us.max(1));
            }
            Ok(Err(kind)) => tally.fail(kind),
            Err(_) => {
                sender.conn = Conn::None;
                tally.fail("timeout");
            }
        }
    }
    if let Conn::Quic(ep, conn) = &sender.conn {
        conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    }
    tally
}

/// Runs the good client and prints its JSON line.
pub async fn run(args: GoodArgs) -> anyhow::Result<()> {
    let ca_pem = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("reading {}", args.ca.display()))?;
    let addr = Target::resolve(&args.target, &args.server_name, String::new())?.addr;
    let args = Arc::new(args);
    let tasks: Vec<_> = (0..args.senders.max(1))
        .map(|i| tokio::spawn(run_sender(args.clone(), addr, ca_pem.clone(), i)))
        .collect();
    let mut total = Tally::new();
    for t in tasks {
        total.merge(&t.await.context("a sender task failed")?);
    }
    let p = Percentiles::of(&total.latency);
    let ratio = if total.batches == 0 {
        0.0
    } else {
        total.accepted as f64 / total.batches as f64
    };
    let failed_events = total.events_sent - total.events_accepted;
    println!(
        "{}",
        json!({
            "event": "good",
            "transport": format!("{:?}", args.transport).to_lowercase(),
            "batches": total.batches,
            "accepted": total.accepted,
            "events_sent": total.events_sent,
            "events_accepted": total.events_accepted,
            "events_failed": failed_events,
            "success_ratio": ratio,
            "connects": total.connects,
            "failures": total.failures,
            "latency_ms": p.json_ms(),
        })
    );
    Ok(())
}
