//! `tern-relay`: the edge relay service. Thin: command line, configuration, signals;
//! the wiring is [`tern_relay::run::Relay::start`].

use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::Parser;
use tern_relay::config::{Overrides, RelayConfig};
use tern_relay::run::Relay;

/// Tern edge relay. Settings come from the config file, then `TERN_RELAY_*`
/// environment variables, then these flags.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This relay's id in the shard map.
    #[arg(long)]
    relay_id: Option<String>,
    /// QUIC listen address (UDP), e.g. 127.0.0.1:4433; port 0 picks one.
    #[arg(long)]
    quic_listen: Option<std::net::SocketAddr>,
    /// HTTPS listen address (TCP).
    #[arg(long)]
    https_listen: Option<std::net::SocketAddr>,
    /// Metrics and health listen address (/metrics, /healthz, /readyz).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Backend base URL.
    #[arg(long)]
    backend_url: Option<String>,
    /// Backend bearer token.
    #[arg(long)]
    backend_token: Option<String>,
    /// Where accepted batches go: backend (the HTTP backend) or kafka (the [kafka]
    /// table of the config file; see docs/operations.md, "Sinks").
    #[arg(long)]
    sink: Option<tern_relay::config::SinkKind>,
    /// Kafka bootstrap brokers, host:port[,host:port...] (with --sink kafka).
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Kafka topic, or a per-app layout with {app} in it (with --sink kafka).
    #[arg(long)]
    kafka_topic: Option<String>,
    /// PEM certificate chain.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Use a generated self-signed certificate (development only).
    #[arg(long)]
    dev: bool,
    /// With --dev: write the certificate's PEM here for clients to trust.
    #[arg(long)]
    dev_ca_out: Option<PathBuf>,
    /// Shard map file (JSON).
    #[arg(long)]
    shard_map: Option<PathBuf>,
    /// Directory of the local-disk spool.
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Directory of the persisted config cache (default: next to the spool directory).
    #[arg(long)]
    config_cache_dir: Option<PathBuf>,
    /// How often each app's config is polled from the backend, milliseconds.
    #[arg(long)]
    config_refresh_ms: Option<u64>,
    /// Admin API listen address (default 127.0.0.1:9465). The token comes from the
    /// config file or TERN_RELAY_ADMIN_TOKEN, never the command line.
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Where operator settings are persisted (default: next to the spool directory).
    #[arg(long)]
    admin_state_file: Option<PathBuf>,
    /// Let --dev serve on a non-loopback address (test networks only; logged).
    #[arg(long)]
    allow_insecure_dev_tls_on_public_address: bool,
    /// Let the unauthenticated metrics listener use a non-loopback address (logged).
    #[arg(long)]
    allow_unauthenticated_metrics_on_public_address: bool,
    /// Let the admin API (plain HTTP) use a non-loopback address (logged).
    #[arg(long)]
    allow_plaintext_admin_on_public_address: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run() {
        eprintln!("tern-relay: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = RelayConfig::load(
        cli.config.as_deref(),
        |k| std::env::var(k).ok(),
        Overrides {
            relay_id: cli.relay_id,
            quic_listen: cli.quic_listen,
            https_listen: cli.https_listen,
            metrics_listen: cli.metrics_listen,
            backend_url: cli.backend_url,
            backend_token: cli.backend_token,
            sink: cli.sink,
            kafka_brokers: cli.kafka_brokers,
            kafka_topic: cli.kafka_topic,
            cert: cli.cert,
            key: cli.key,
            dev: cli.dev,
            dev_ca_out: cli.dev_ca_out,
            shard_map: cli.shard_map,
            spool_dir: cli.spool_dir,
            config_cache_dir: cli.config_cache_dir,
            config_refresh_ms: cli.config_refresh_ms,
            admin_listen: cli.admin_listen,
            admin_state_file: cli.admin_state_file,
            allow_insecure_dev_tls_on_public_address: cli.allow_insecure_dev_tls_on_public_address,
            allow_unauthenticated_metrics_on_public_address: cli
                .allow_unauthenticated_metrics_on_public_address,
            allow_plaintext_admin_on_public_address: cli.allow_plaintext_admin_on_public_address,
        },
    )?;
    for warning in config.override_warnings() {
        tracing::warn!("{warning}");
    }
    // Latencies as real histograms (aggregatable across relays), not summaries.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .context("metrics histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let running = Relay::new(config)
        .with_metrics(move || prometheus.render())
        .start()
        .await?;
    println!("{}", running.ready_line());
    // A drain starts on SIGTERM (or Ctrl-C) or on `POST /admin/v1/drain`; the
    // sequence is the same.
    let trigger = tokio::select! {
        _ = shutdown_signal() => "signal",
        _ = running.drain_requested() => "admin",
    };
    running.shutdown(trigger).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
