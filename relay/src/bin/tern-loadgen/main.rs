//! `tern-loadgen`: a load generator for the relay's QUIC ingest, a raw-QUIC reference
//! to compare it with, and a backend sink to put behind it.
//!
//! ```text
//! tern-loadgen --target 127.0.0.1:4433 --ca ca.pem --connections 32 --concurrency 8 \
//!              --events-per-batch 100 --rate 0 --duration 10s --json
//! tern-loadgen --raw ...                     # same clients, same bytes, in-process raw QUIC server
//! tern-loadgen sink --listen 127.0.0.1:7070  # a backend that counts and stores nothing
//! tern-loadgen replay --store-dir spool/ --target 127.0.0.1:4433 --ca ca.pem \
//!              --key demo=demo-key --speed 2   # a relay recording, at 2x
//! tern-loadgen attack quic-streams --target 127.0.0.1:4433 --ca ca.pem --from 127.0.0.2
//! tern-loadgen good --transport https --target 127.0.0.1:8443 --ca ca.pem  # the yardstick
//! ```
//!
//! See `relay/README.md` ("Load tool") and `scripts/bench-relay.sh`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod attack;
mod batches;
mod client;
mod good;
mod http;
mod kafka;
mod pace;
mod raw;
mod replay;
mod sink;
mod stats;

/// Load generator for tern-relay's QUIC ingest (and a backend sink to put behind it).
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A backend for the relay that answers `stored` for every batch and keeps nothing.
    Sink(sink::SinkArgs),
    /// Replays a relay recording (`record/` segments) against a relay, at N× speed.
    Replay(replay::ReplayArgs),
    /// An exhaustion attack on a relay (memory, connections, handshakes, slots).
    Attack(attack::AttackArgs),
    /// A well-behaved device sending valid batches, counting successes and latency.
    Good(good::GoodArgs),
    /// The raw reference of the Kafka sink: its producer, the same records, straight
    /// to the broker (no relay).
    Kafka(kafka::KafkaArgs),
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// The relay's QUIC address (host:port).
    #[arg(long, required_unless_present = "raw")]
    target: Option<String>,
    /// TLS server name to verify.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// PEM file of the CA (or self-signed certificate) to trust, e.g. the relay's
    /// `--dev-ca-out`.
    #[arg(long, required_unless_present = "raw")]
    ca: Option<PathBuf>,
    /// Reference mode: start an in-process raw QUIC server (the relay's TLS, ALPN and
    /// transport config; reads each request, answers a fixed reply) and load it instead.
    #[arg(long, conflicts_with_all = ["target", "ca"])]
    raw: bool,
    /// App id of the batches.
    #[arg(long, default_value = "demo")]
    app: String,
    /// App key.
    #[arg(long, default_value = "demo-key")]
    key: String,
    /// QUIC connections, each a simulated device with its own socket.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Request streams in flight per connection.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Events per batch (1-1000).
    #[arg(long, default_value_t = 100)]
    events_per_batch: usize,
    /// Offered load in events/s, open loop (latency counted from when each batch was
    /// due); 0 = closed loop, as fast as replies come.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Measured time (`10`, `10s`, `500ms`, `1m`).
    #[arg(long, default_value = "10s", value_parser = pace::parse_duration)]
    duration: Duration,
    /// Load before measuring starts (counted apart).
    #[arg(long, default_value = "1s", value_parser = pace::parse_duration)]
    warmup: Duration,
    /// How long to wait for replies after the last send.
    #[arg(long, default_value = "10s", value_parser = pace::parse_duration)]
    drain_timeout: Duration,
    /// Print one JSON line on stdout (the human summary goes to stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    tern_relay::listen::tls::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Sink(args)) => runtime().and_then(|rt| rt.block_on(sink::serve(args))),
        Some(Command::Replay(args)) => replay::run(args),
        Some(Command::Attack(args)) => runtime().and_then(|rt| rt.block_on(attack::run(args))),
        Some(Command::Good(args)) => runtime().and_then(|rt| rt.block_on(good::run(args))),
        Some(Command::Kafka(args)) => runtime().and_then(|rt| rt.block_on(kafka::run(args))),
        None => load(cli.load),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn load(args: LoadArgs) -> anyhow::Result<()> {
    let load = client::Load {
        app: args.app,
        key: args.key,
        connections: args.connections,
        concurrency: args.concurrency,
        events_per_batch: args.events_per_batch,
        rate: args.rate,
        duration: args.duration,
        warmup: args.warmup,
        drain_timeout: args.drain_timeout,
    };
    let (raw, target, mode) = if args.raw {
        let server = raw::RawServer::start()?;
        let target = client::Target {
            addr: server.addr,
            server_name: "localhost".into(),
            ca_pem: server.ca_pem.clone(),
        };
        (Some(server), target, "raw")
    } else {
        let (Some(addr), Some(ca)) = (&args.target, &args.ca) else {
            anyhow::bail!("--target and --ca are required (or --raw)");
        };
        let pem =
            std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
        (
            None,
            client::Target::resolve(addr, &args.server_name, pem)?,
            "relay",
        )
    };
    let cpu_before = stats::process_cpu();
    let report = runtime()?.block_on(client::run(mode, &target, &load));
    if let Some(server) = raw {
        server.stop();
    }
    let mut report = report?;
    report.cpu = cpu_before
        .zip(stats::process_cpu())
        .map(|(a, b)| b.saturating_sub(a));
    if args.json {
        eprint!("{}", report.human());
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    Ok(())
}
