//! `tern-relay`: the edge relay service. Thin: configuration, wiring, signals.

use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tern_relay::apps::AppRegistry;
use tern_relay::config::{Overrides, RelayConfig};
use tern_relay::forward::{Forwarder, ForwarderConfig};
use tern_relay::ingest::{Ingest, IngestConfig};
use tern_relay::listen::{
    bind_quic, serve_http, serve_https, serve_quic, Budgets, HttpHandle, PlainLimits,
};
use tern_relay::ratelimit::{Rate, RateLimiterConfig};
use tern_relay::replay::{ReplayConfig, Replayer};
use tern_relay::spool::{prefix_of, SpoolConfig, SpoolTarget};
use tern_relay::tls::{install_crypto_provider, TlsMaterial};

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
        },
    )?;
    for warning in config.override_warnings() {
        tracing::warn!("{warning}");
    }
    install_crypto_provider();
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

    let tls = if config.tls.dev {
        let (tls, pem) = TlsMaterial::self_signed(&["localhost", "127.0.0.1"])?;
        if let Some(out) = &config.tls.dev_ca_out {
            std::fs::write(out, &pem).with_context(|| format!("writing {}", out.display()))?;
        }
        tls
    } else {
        match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => TlsMaterial::from_pem_files(cert, key)?,
            _ => anyhow::bail!("tls: set both tls.cert and tls.key, or tls.dev = true"),
        }
    };
    let shard_map = config.load_shard_map()?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()
        .context("building the backend client")?;
    // The app registry: refreshed with a deadline; removed keys keep a grace period;
    // suspicious lists wait for an operator (`apps`).
    let registry = AppRegistry::with_policy(config.registry_policy());
    tokio::spawn(
        registry.clone().run(
            registry
                .http_client()
                .context("building the registry client")?,
            config.backend_url.clone(),
            config.backend_token.clone(),
            config.registry_refresh(),
        ),
    );
    let mut fwd_config = ForwarderConfig::new(&config.backend_url, config.relay_id())
        .with_linger(config.forward_linger())
        .with_max_in_flight(config.forward_max_in_flight);
    if let Some(t) = &config.backend_token {
        fwd_config = fwd_config.with_token(t);
    }
    let (forwarder, _task) = Forwarder::spawn(fwd_config, client, None);
    // The spool: S3 (unbounded) with a bounded local-disk fallback, or the bounded
    // local directory alone.
    let store = config.spool_store()?;
    let primary = if config.spool_s3.is_some() {
        SpoolTarget::unbounded("primary", store)
    } else {
        SpoolTarget::bounded("primary", store, config.spool_max_bytes)
            .await
            .context("spool_dir: measuring the spool")?
    };
    let primary_store = primary.store().clone();
    // This relay resumes its own prefix: a handover from its last drain is withdrawn.
    if let Err(e) =
        tern_relay::spool::clear_handover(primary_store.as_ref(), &prefix_of(&config.relay_id()))
            .await
    {
        tracing::warn!(error = %e, "could not clear the spool handover marker");
    }
    let fallback = match config.spool_fallback_store()? {
        Some(local) => Some(
            SpoolTarget::bounded("fallback", local, config.spool_max_bytes)
                .await
                .context("spool_dir: measuring the fallback spool")?,
        ),
        None => None,
    };
    let (spool, _spool_task) = tern_relay::spool::Spool::spawn_with(
        primary.clone(),
        fallback.clone(),
        config.relay_id(),
        SpoolConfig::default().with_store_timeout(config.spool_store_timeout()),
    );
    let ops_spool = spool.clone();
    let mut ingest_config = IngestConfig::default();
    ingest_config.rate_limit = RateLimiterConfig::default().with_default_limit(Rate::new(
        config.rate_limit_events_per_sec,
        config.rate_limit_burst,
    ));
    let ingest_registry = registry.clone();
    let ingest = Ingest::new(ingest_config, registry, forwarder.clone(), shard_map)
        .with_spool(spool)
        .with_relay_id(config.relay_id());
    // Config cache (persisted, polled from the backend) and push streams.
    let push_hub = tern_relay::push::PushHub::default();
    let mut cache_config = tern_relay::configcache::ConfigCacheConfig::new(&config.backend_url)
        .with_dir(config.config_cache_dir())
        .with_refresh_interval(config.config_refresh());
    if let Some(t) = &config.backend_token {
        cache_config = cache_config.with_token(t);
    }
    // Its own connection pool: polls never wait behind large forward requests.
    let config_client = reqwest::Client::builder()
        .build()
        .context("building the config cache's backend client")?;
    let controls = tern_relay::controls::Controls::new();
    let config_cache = tern_relay::configcache::ConfigCache::new(cache_config, config_client)
        .with_push_hub(push_hub.clone())
        .with_controls(controls.clone());
    match config_cache.load_persisted() {
        Ok(n) => {
            tracing::info!(apps = n, dir = %config.config_cache_dir().display(), "config cache loaded")
        }
        Err(e) => tracing::warn!(error = %e, "config cache not loaded; starting empty"),
    }
    let (stop_config, config_stopped) = tokio::sync::watch::channel(false);
    let config_task = tokio::spawn(
        config_cache
            .clone()
            .run(ingest_registry.clone(), config_stopped),
    );
    let drain = tern_relay::drain::Drain::new();
    // Recorded traffic goes to the spool's primary store, under `record/<relay>/`.
    let mut recorder_config = tern_relay::record::RecorderConfig::default();
    if config.spool_s3.is_none() {
        // A local directory: segment files get private modes.
        recorder_config = recorder_config.with_local_dir(&config.spool_dir);
    }
    let (recorder, recorder_task) = tern_relay::record::Recorder::spawn(
        primary_store.clone(),
        config.relay_id(),
        recorder_config,
    );
    let ingest = ingest
        .with_recorder(recorder.clone())
        .with_config_cache(config_cache)
        .with_push_hub(push_hub.clone())
        .with_controls(controls.clone())
        .with_drain(drain.clone());
    // Operator settings from the last run apply before the first request is served.
    let replay_status = tern_relay::replay::ReplayStatus::default();
    let admin_token = match &config.admin_token {
        Some(t) => t.0.clone(),
        None => {
            let token = tern_relay::admin::generate_token();
            write_token_file(&config.admin_token_file(), &token)?;
            tracing::info!(file = %config.admin_token_file().display(), "admin token generated");
            token
        }
    };
    let admin = tern_relay::admin::Admin::load(
        tern_relay::admin::AdminConfig {
            token: admin_token,
            state_file: config.admin_state_file(),
            relay_id: config.relay_id.clone(),
        },
        ingest.clone(),
        replay_status.clone(),
        Some(ops_spool.clone()),
    )?;
    if let Some(path) = config.shard_map.clone() {
        tokio::spawn(tern_relay::shardmap::watch(path, ingest.clone()));
    }
    let (stop_replay, replay_stopped) = tokio::sync::watch::channel(false);
    let replay_config = ReplayConfig::default().with_lease_ttl(config.replay_lease_ttl());
    let mut replay_tasks = vec![tokio::spawn(
        Replayer::on_target(
            primary,
            prefix_of(&config.relay_id()),
            forwarder.clone(),
            ingest.clone(),
            replay_config
                .clone()
                .with_takeover_after(config.replay_takeover_after()),
        )
        .with_holder(config.relay_id.clone())
        .with_controls(controls.clone())
        .with_status(replay_status.clone())
        .run(replay_stopped.clone()),
    )];
    if let Some(fallback) = fallback {
        // The fallback is this relay's own disk: only it replays it.
        replay_tasks.push(tokio::spawn(
            Replayer::on_target(
                fallback,
                prefix_of(&config.relay_id()),
                forwarder,
                ingest.clone(),
                replay_config,
            )
            .with_holder(config.relay_id.clone())
            .with_controls(controls.clone())
            .with_status(replay_status.clone())
            .run(replay_stopped),
        ));
    }

    let listen = config.listen_config();
    if let Some(nofile) = open_file_limit() {
        config.check_fd_limit(nofile)?;
    }
    let budgets = Budgets::new(&listen);
    let endpoint = bind_quic(&listen, &tls)?;
    let quic_addr = endpoint.local_addr()?;
    let tcp = std::net::TcpListener::bind(config.https_listen)
        .with_context(|| format!("https_listen: binding {}", config.https_listen))?;
    tcp.set_nonblocking(true)?;
    let https_addr = tcp.local_addr()?;
    let ops_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("metrics_listen: binding {}", config.metrics_listen))?;
    let metrics_addr = ops_listener.local_addr()?;
    let ops = tern_relay::ops::router(
        move || prometheus.render(),
        ingest_registry.clone(),
        Some(ops_spool),
    );
    // Operator listeners: capped, with the header deadline (their handles live as
    // long as the process).
    let operator_limits = |name| PlainLimits {
        max_connections: listen.limits.admin_max_connections,
        header_timeout: listen.limits.header_timeout,
        name,
    };
    tokio::spawn(serve_http(
        ops_listener,
        ops,
        operator_limits("metrics"),
        HttpHandle::new(),
    ));
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("admin_listen: binding {}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    if !admin_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %admin_addr,
            "the admin API listens beyond loopback over plain HTTP: put it behind TLS or a tunnel"
        );
    }
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(admin.clone().run_sampler(admin_stopped));
    tokio::spawn(serve_http(
        admin_listener,
        admin.router(),
        operator_limits("admin"),
        HttpHandle::new(),
    ));
    let handle = HttpHandle::new();
    let quic_task = tokio::spawn(serve_quic(
        endpoint.clone(),
        ingest.clone(),
        budgets.clone(),
    ));
    let https_task = tokio::spawn({
        let (handle, tls, ingest) = (handle.clone(), Arc::new(tls), ingest.clone());
        async move { serve_https(tcp, &tls, ingest, budgets, handle).await }
    });
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "relay_id": config.relay_id,
            "quic": quic_addr.to_string(),
            "https": https_addr.to_string(),
            "metrics": metrics_addr.to_string(),
            "admin": admin_addr.to_string(),
            "admin_token_file": config
                .admin_token
                .is_none()
                .then(|| config.admin_token_file().display().to_string()),
            "dev_ca": config.tls.dev_ca_out.as_ref().map(|p| p.display().to_string()),
        })
    );

    // A drain starts on SIGTERM (or Ctrl-C) or on `POST /admin/v1/drain`; the
    // sequence is the same.
    let trigger = tokio::select! {
        _ = shutdown_signal() => "signal",
        _ = drain.started() => "admin",
    };
    drain.start();
    let t0 = std::time::Instant::now();
    tracing::info!(
        trigger,
        in_flight = drain.in_flight(),
        "draining: no new connections or requests, finishing requests in flight"
    );
    // 1. Devices with a push stream hear it first and move to their next relay.
    let told = push_hub.broadcast(&tern_protocol::PushNotice::Draining {
        shard_map_version: ingest.shard_map().version,
    });
    // 2. Requests already accepted get their answer (forwarded or spooled).
    let finished = drain.wait_idle(std::time::Duration::from_secs(10)).await;
    if !finished {
        tracing::warn!(
            in_flight = drain.in_flight(),
            "draining: requests still in flight after 10 s; closing anyway (their devices resend)"
        );
    }
    // 3. Push streams end, HTTPS finishes its requests, QUIC connections close with
    //    the `draining` code (devices treat it as "use the next relay").
    push_hub.close();
    drain
        .wait_push_closed(std::time::Duration::from_secs(3))
        .await;
    let _ = stop_config.send(true);
    handle.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    endpoint.close(tern_relay::listen::CLOSE_DRAINING.into(), b"relay draining");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), endpoint.wait_idle()).await;
    quic_task.abort();
    let _ = https_task.await;
    // 4. Every request has its answer, so every spool write a device waited for is
    //    stored: nothing is left open. Stop the replayers between objects.
    let _ = stop_replay.send(true);
    let _ = stop_admin.send(true);
    for t in replay_tasks {
        let _ = t.await;
    }
    let _ = config_task.await;
    // The recording's open segment is written.
    recorder.flush().await;
    drop(recorder_task);
    // 5. Objects left in this relay's prefix are handed over: other relays sharing
    //    the store replay them now rather than after `replay_takeover_after_s`.
    let prefix = prefix_of(&config.relay_id());
    match tern_relay::spool::list_objects(primary_store.as_ref(), &prefix).await {
        Ok(objects) if !objects.is_empty() => {
            match tern_relay::spool::write_handover(
                primary_store.as_ref(),
                &prefix,
                &config.relay_id(),
            )
            .await
            {
                Ok(()) => tracing::info!(%prefix, "spool prefix handed over"),
                Err(e) => tracing::warn!(error = %e, "could not hand the spool prefix over"),
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not list the spool prefix for handover"),
    }
    tracing::info!(
        trigger,
        push_streams_told = told,
        took_ms = t0.elapsed().as_millis() as u64,
        "drained"
    );
    let c = ingest.counters();
    tracing::info!(
        accepted_forwarded = c
            .accepted_forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        accepted_spooled = c
            .accepted_spooled
            .load(std::sync::atomic::Ordering::Relaxed),
        retried = c.retried.load(std::sync::atomic::Ordering::Relaxed),
        rejected = c.rejected.load(std::sync::atomic::Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}

/// The process's soft open-file limit (Linux: `/proc/self/limits`); `None` where it
/// cannot be read.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    // "unlimited" never binds.
    soft.parse().ok()
}

/// Writes a generated admin token, readable by the owner only.
///
/// The file is written whole to a new temporary file (created `0600`, never through a
/// symbolic link) and renamed over `path`, so a reader holding the old file never sees
/// the new token and an old file's looser mode is not kept (the log says so). A
/// symbolic link at `path` is refused: the token would land wherever it points.
fn write_token_file(path: &std::path::Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => anyhow::bail!(
            "admin token file {} is a symbolic link: refusing to write the admin token \
             through it (remove the link, or set admin_token / TERN_RELAY_ADMIN_TOKEN)",
            path.display()
        ),
        Ok(meta) if !meta.is_file() => anyhow::bail!(
            "admin token file {} exists and is not a regular file",
            path.display()
        ),
        Ok(meta) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        file = %path.display(),
                        mode = format!("{mode:04o}"),
                        "the existing admin token file was readable by others: replaced by a 0600 file"
                    );
                }
            }
            #[cfg(not(unix))]
            let _ = meta;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("admin token file {}", path.display())),
    }
    let tmp = path.with_extension("token.tmp");
    // A leftover from an interrupted start (never followed if it is a link).
    match std::fs::symlink_metadata(&tmp) {
        Ok(_) => std::fs::remove_file(&tmp)
            .with_context(|| format!("removing a stale {}", tmp.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}", tmp.display())),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("admin token file {}", tmp.display()))?;
    f.write_all(token.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing the admin token to {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("moving the admin token to {}", path.display()))?;
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
