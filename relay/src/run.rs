//! The relay's wiring: [`Relay::start`] builds every service from a [`RelayConfig`],
//! binds the listeners and returns a [`Running`] relay with its bound addresses, its
//! services and the drain-and-stop sequence.
//!
//! The `tern-relay` binary is CLI → config → `Relay::start` → wait for a signal or an
//! admin drain → [`Running::shutdown`]. Tests start the same wiring in-process (port 0
//! everywhere, the addresses read from [`Running::addrs`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::breaker::BreakerConfig;
use crate::backend::forward::{Forwarder, ForwarderConfig};
use crate::backend::kafka::{KafkaSink, KafkaSinkError};
use crate::backend::sharedbreaker::SharedBreaker;
use crate::backend::sink::Sink;
use crate::config::SinkKind;
use crate::config::{ConfigError, RelayConfig};
use crate::ingest::drain::Drain;
use crate::ingest::record::{Recorder, RecorderConfig};
use crate::ingest::{Ingest, IngestConfig, IngestCounters, IngestServices};
use crate::listen::tls::{install_crypto_provider, TlsError, TlsMaterial};
use crate::listen::{
    bind_quic, serve_http, serve_https, serve_quic, Budgets, HttpHandle, ListenError, PlainLimits,
};
use crate::ops::admin::{Admin, AdminConfig, AdminError, AdminServices};
use crate::ops::token::TokenFileError;
use crate::policy::apps::{AppRegistry, RegistryError};
use crate::policy::controls::Controls;
use crate::policy::features::Features;
use crate::policy::ratelimit::{Rate, RateLimiterConfig, SharedLimiter};
use crate::remote::cache::{ConfigCache, ConfigCacheConfig};
use crate::remote::push::PushHub;
use crate::remote::shardmap::ServedShardMap;
use crate::spool::replay::{ReplayConfig, ReplayStatus, Replayer};
use crate::spool::{prefix_of, Spool, SpoolConfig, SpoolError, SpoolTarget};

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A setting is invalid (or a file it names cannot be read).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate could not be loaded or generated.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// `tls`: neither certificate files nor `dev`.
    #[error("tls: set both tls.cert and tls.key, or tls.dev = true")]
    NoCertificate,
    /// The spool could not be set up.
    #[error("spool_dir: {0}")]
    Spool(#[from] SpoolError),
    /// The app registry's client could not be built.
    #[error("app registry: {0}")]
    Registry(#[from] RegistryError),
    /// The Kafka sink could not be built (an invalid `[kafka]` setting, or a
    /// librdkafka property it refused).
    #[error(transparent)]
    Kafka(KafkaSinkError),
    /// A backend client could not be built.
    #[error("building the {what}: {source}")]
    Client {
        /// Which client.
        what: &'static str,
        /// Why.
        source: reqwest::Error,
    },
    /// The admin settings could not be loaded.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The generated admin token could not be written.
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    /// The QUIC listener could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A listener could not be bound, or a file written.
    #[error("{what}: {source}")]
    Io {
        /// The setting and address (`https_listen: binding 0.0.0.0:443`).
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// A relay to start: its configuration plus what only a host process (or a test) can
/// give: the metrics renderer, a certificate shared by several relays, tuning.
pub struct Relay {
    config: RelayConfig,
    tls: Option<TlsMaterial>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    breaker: Option<BreakerConfig>,
    forward_request_timeout: Option<Duration>,
    replay_idle_poll: Option<Duration>,
    config_request_timeout: Option<Duration>,
    config_polling: bool,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("relay_id", &self.config.relay_id)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay configured by `config` (already validated by [`RelayConfig::load`]).
    /// `/metrics` renders nothing until [`Relay::with_metrics`] gives it a renderer.
    pub fn new(config: RelayConfig) -> Self {
        Relay {
            config,
            tls: None,
            metrics: Arc::new(String::new),
            breaker: None,
            forward_request_timeout: None,
            replay_idle_poll: None,
            config_request_timeout: None,
            config_polling: true,
        }
    }

    /// What `/metrics` serves (the binary installs the process's Prometheus recorder
    /// and passes its `render`; the recorder is global, so in-process tests with
    /// several relays leave it out).
    pub fn with_metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.metrics = Arc::new(render);
        self
    }

    /// Serves with `tls` instead of the configured certificate (several in-process
    /// relays sharing one certificate that devices trust).
    pub fn with_tls(mut self, tls: TlsMaterial) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The forwarding breaker's settings (default: [`BreakerConfig::default`]).
    pub fn with_breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// The deadline of one forward request (default: the forwarder's).
    pub fn with_forward_request_timeout(mut self, timeout: Duration) -> Self {
        self.forward_request_timeout = Some(timeout);
        self
    }

    /// How often an idle replayer looks for spooled objects (default: the replayer's).
    pub fn with_replay_idle_poll(mut self, every: Duration) -> Self {
        self.replay_idle_poll = Some(every);
        self
    }

    /// The deadline of one config poll to the backend (default: the cache's).
    pub fn with_config_request_timeout(mut self, timeout: Duration) -> Self {
        self.config_request_timeout = Some(timeout);
        self
    }

    /// Whether the config cache polls the backend (default: yes, every
    /// `config_refresh_ms`). Off, configs are fetched only when a device asks for one
    /// the cache does not hold, or when [`ConfigCache::refresh_apps`] is called (tests
    /// that count the backend's requests).
    pub fn with_config_polling(mut self, poll: bool) -> Self {
        self.config_polling = poll;
        self
    }

    /// Builds every service, loads the persisted state (config cache, operator
    /// settings), binds the listeners and starts serving. Must run inside a Tokio
    /// runtime.
    pub async fn start(self) -> Result<Running, StartError> {
        let Relay {
            config,
            tls,
            metrics,
            breaker,
            forward_request_timeout,
            replay_idle_poll,
            config_request_timeout,
            config_polling,
        } = self;
        install_crypto_provider();
        let tls = match tls {
            Some(tls) => tls,
            None if config.tls.dev => {
                let (tls, pem) = TlsMaterial::self_signed(&["localhost", "127.0.0.1"])?;
                if let Some(out) = &config.tls.dev_ca_out {
                    std::fs::write(out, &pem).map_err(io(format!("writing {}", out.display())))?;
                }
                tls
            }
            None => match (&config.tls.cert, &config.tls.key) {
                (Some(cert), Some(key)) => TlsMaterial::from_pem_files(cert, key)?,
                _ => return Err(StartError::NoCertificate),
            },
        };
        let shard_map = config.load_shard_map()?;
        let relay_id = config.relay_id();
        let mut tasks = Vec::new();

        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|source| StartError::Client {
                what: "backend client",
                source,
            })?;
        // The app registry: refreshed with a deadline; removed keys keep a grace
        // period; suspicious lists wait for an operator (`apps`).
        let registry = AppRegistry::with_policy(config.registry_policy());
        tasks.push(tokio::spawn(registry.clone().run(
            registry.http_client()?,
            config.backend_url.clone(),
            config.backend_token.clone(),
            config.registry_refresh(),
        )));
        let mut fwd_config = ForwarderConfig::new(&config.backend_url, relay_id.clone())
            .with_linger(config.forward_linger())
            .with_max_in_flight(config.forward_max_in_flight);
        if let Some(t) = &config.backend_token {
            fwd_config = fwd_config.with_token(t);
        }
        if let Some(timeout) = forward_request_timeout {
            fwd_config = fwd_config.with_request_timeout(timeout);
        }
        // The sink: the HTTP backend, or Kafka (the registry and config still come
        // from the backend).
        let sink: Arc<dyn Sink> = match config.sink {
            SinkKind::Backend => Arc::new(fwd_config.http_sink(client)),
            SinkKind::Kafka => Arc::new(
                KafkaSink::new(config.kafka.clone(), relay_id.clone())
                    .map_err(StartError::Kafka)?,
            ),
        };
        tracing::info!(sink = sink.kind(), "forwarding accepted batches");
        // The forwarder and spool tasks end when their last handle is dropped.
        let (forwarder, _forward_task) = Forwarder::spawn_with(fwd_config, sink, None);
        // The spool: S3 (unbounded) with a bounded local-disk fallback, or the bounded
        // local directory alone.
        let store = config.spool_store()?;
        let primary = if config.spool_s3.is_some() {
            SpoolTarget::unbounded("primary", store)
        } else {
            SpoolTarget::bounded("primary", store, config.spool_max_bytes).await?
        };
        let primary_store = primary.store().clone();
        // This relay resumes its own prefix: a handover from its last drain is withdrawn.
        if let Err(e) =
            crate::spool::clear_handover(primary_store.as_ref(), &prefix_of(&relay_id)).await
        {
            tracing::warn!(error = %e, "could not clear the spool handover marker");
        }
        let fallback = match config.spool_fallback_store()? {
            Some(local) => {
                Some(SpoolTarget::bounded("fallback", local, config.spool_max_bytes).await?)
            }
            None => None,
        };
        let (spool, _spool_task) = Spool::spawn_with(
            primary.clone(),
            fallback.clone(),
            relay_id.clone(),
            SpoolConfig::default().with_store_timeout(config.spool_store_timeout()),
        );
        // The breaker and the rate limiter: one each, shared by the request handler,
        // the replayers and the admin API.
        let breaker = SharedBreaker::new(breaker.unwrap_or_default());
        let limiter = SharedLimiter::new(RateLimiterConfig::default().with_default_limit(
            Rate::new(config.rate_limit_events_per_sec, config.rate_limit_burst),
        ));
        // Config cache (persisted, polled from the backend) and push streams.
        let push_hub = PushHub::default();
        let mut cache_config = ConfigCacheConfig::new(&config.backend_url)
            .with_dir(config.config_cache_dir())
            .with_refresh_interval(config.config_refresh());
        if let Some(t) = &config.backend_token {
            cache_config = cache_config.with_token(t);
        }
        if let Some(timeout) = config_request_timeout {
            cache_config = cache_config.with_request_timeout(timeout);
        }
        // Its own connection pool: polls never wait behind large forward requests.
        let config_client =
            reqwest::Client::builder()
                .build()
                .map_err(|source| StartError::Client {
                    what: "config cache's backend client",
                    source,
                })?;
        let controls = Controls::new();
        let config_cache = ConfigCache::new(cache_config, config_client)
            .with_push_hub(push_hub.clone())
            .with_controls(controls.clone());
        match config_cache.load_persisted() {
            Ok(n) => {
                tracing::info!(apps = n, dir = %config.config_cache_dir().display(), "config cache loaded")
            }
            Err(e) => tracing::warn!(error = %e, "config cache not loaded; starting empty"),
        }
        let (stop_config, config_stopped) = watch::channel(false);
        let config_task = tokio::spawn({
            let (cache, registry) = (config_cache.clone(), registry.clone());
            async move {
                if config_polling {
                    cache.run(registry, config_stopped).await;
                }
            }
        });
        let drain = Drain::new();
        // Recorded traffic goes to the spool's primary store, under `record/<relay>/`.
        let mut recorder_config = RecorderConfig::default();
        if config.spool_s3.is_none() {
            // A local directory: segment files get private modes.
            recorder_config = recorder_config.with_local_dir(&config.spool_dir);
        }
        let (recorder, recorder_task) =
            Recorder::spawn(primary_store.clone(), relay_id.clone(), recorder_config);
        let shard_map = ServedShardMap::new(shard_map, Some(push_hub.clone()));
        let features = Features::default();
        let counters = Arc::new(IngestCounters::default());
        let ingest = Ingest::new(
            IngestConfig::default(),
            IngestServices {
                registry: registry.clone(),
                forwarder: forwarder.clone(),
                breaker: breaker.clone(),
                limiter: limiter.clone(),
                shard_map: shard_map.clone(),
                counters: counters.clone(),
                spool: Some(spool.clone()),
                relay_id: Some(relay_id.clone()),
                config_cache: Some(config_cache.clone()),
                push_hub: Some(push_hub.clone()),
                controls: controls.clone(),
                drain: drain.clone(),
                features: features.clone(),
                recorder: Some(recorder.clone()),
            },
        );
        // Operator settings from the last run apply before the first request is served.
        let replay_status = ReplayStatus::default();
        let admin_token = match &config.admin_token {
            Some(t) => t.0.clone(),
            None => {
                let token = crate::ops::token::generate_token();
                crate::ops::token::write_token_file(&config.admin_token_file(), &token)?;
                tracing::info!(file = %config.admin_token_file().display(), "admin token generated");
                token
            }
        };
        let admin = Admin::load(
            AdminConfig {
                token: admin_token,
                state_file: config.admin_state_file(),
                relay_id: config.relay_id.clone(),
            },
            AdminServices {
                counters: counters.clone(),
                registry: registry.clone(),
                breaker: breaker.clone(),
                limiter: limiter.clone(),
                shard_map: shard_map.clone(),
                spool: Some(spool.clone()),
                config_cache: Some(config_cache.clone()),
                push_hub: Some(push_hub.clone()),
                controls: controls.clone(),
                drain: drain.clone(),
                features: features.clone(),
                recorder: Some(recorder.clone()),
                replay: replay_status.clone(),
            },
        )?;
        if let Some(path) = config.shard_map.clone() {
            tasks.push(tokio::spawn(crate::remote::reload::watch(
                path,
                shard_map.clone(),
            )));
        }
        let (stop_replay, replay_stopped) = watch::channel(false);
        let mut replay_config = ReplayConfig::default().with_lease_ttl(config.replay_lease_ttl());
        if let Some(every) = replay_idle_poll {
            replay_config = replay_config.with_idle_poll(every);
        }
        // One replayer per spool target: the primary (which also takes over other
        // relays' prefixes), and the local fallback, this relay's own disk, which only
        // it replays.
        let targets = std::iter::once((
            primary,
            replay_config
                .clone()
                .with_takeover_after(config.replay_takeover_after()),
        ))
        .chain(fallback.map(|f| (f, replay_config)));
        let replay_tasks: Vec<_> = targets
            .map(|(target, replay_config)| {
                tokio::spawn(
                    Replayer::on_target(
                        target,
                        prefix_of(&relay_id),
                        forwarder.clone(),
                        breaker.clone(),
                        replay_config,
                    )
                    .with_holder(config.relay_id.clone())
                    .with_controls(controls.clone())
                    .with_status(replay_status.clone())
                    .run(replay_stopped.clone()),
                )
            })
            .collect();

        let listen = config.listen_config();
        if let Some(nofile) = open_file_limit() {
            config.check_fd_limit(nofile)?;
        }
        let budgets = Budgets::new(&listen);
        let endpoint = bind_quic(&listen, &tls)?;
        let quic_addr = endpoint
            .local_addr()
            .map_err(io("quic_listen: local address"))?;
        let tcp = std::net::TcpListener::bind(config.https_listen)
            .map_err(io(format!("https_listen: binding {}", config.https_listen)))?;
        tcp.set_nonblocking(true)
            .map_err(io("https_listen: non-blocking"))?;
        let https_addr = tcp
            .local_addr()
            .map_err(io("https_listen: local address"))?;
        let ops_listener = tokio::net::TcpListener::bind(config.metrics_listen)
            .await
            .map_err(io(format!(
                "metrics_listen: binding {}",
                config.metrics_listen
            )))?;
        let metrics_addr = ops_listener
            .local_addr()
            .map_err(io("metrics_listen: local address"))?;
        let ops =
            crate::ops::probes::router(move || metrics(), registry.clone(), Some(spool.clone()));
        // Operator listeners: capped, with the header deadline.
        let operator_limits = |name| PlainLimits {
            max_connections: listen.limits.admin_max_connections,
            header_timeout: listen.limits.header_timeout,
            name,
        };
        let operator_handle = HttpHandle::new();
        tasks.push(tokio::spawn(serve_http(
            ops_listener,
            ops,
            operator_limits("metrics"),
            operator_handle.clone(),
        )));
        let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .map_err(io(format!("admin_listen: binding {}", config.admin_listen)))?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(io("admin_listen: local address"))?;
        let (stop_admin, admin_stopped) = watch::channel(false);
        tasks.push(tokio::spawn(crate::ops::lag::sample(admin_stopped.clone())));
        tasks.push(tokio::spawn(admin.clone().run_sampler(admin_stopped)));
        tasks.push(tokio::spawn(serve_http(
            admin_listener,
            admin.router(),
            operator_limits("admin"),
            operator_handle.clone(),
        )));
        let https_handle = HttpHandle::new();
        let quic_task = tokio::spawn(serve_quic(
            endpoint.clone(),
            ingest.clone(),
            budgets.clone(),
        ));
        let https_task = tokio::spawn({
            let (handle, ingest) = (https_handle.clone(), ingest.clone());
            async move { serve_https(tcp, &tls, ingest, budgets, handle).await }
        });
        Ok(Running {
            addrs: Addrs {
                quic: quic_addr,
                https: https_addr,
                metrics: metrics_addr,
                admin: admin_addr,
            },
            services: Services {
                ingest,
                counters,
                registry,
                forwarder,
                breaker,
                limiter,
                shard_map,
                spool,
                config_cache,
                push_hub,
                controls,
                drain,
                features,
                recorder,
                admin,
                replay_status,
            },
            admin_token_file: config
                .admin_token
                .is_none()
                .then(|| config.admin_token_file()),
            config,
            primary_store,
            endpoint,
            https_handle,
            operator_handle,
            stop_config,
            stop_replay,
            stop_admin,
            quic_task,
            https_task,
            config_task,
            replay_tasks,
            recorder_task,
            tasks,
        })
    }
}

/// The addresses a started relay listens on (port 0 in the config is resolved here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addrs {
    /// QUIC (UDP).
    pub quic: SocketAddr,
    /// HTTPS (TCP).
    pub https: SocketAddr,
    /// Metrics and health (`/metrics`, `/healthz`, `/readyz`).
    pub metrics: SocketAddr,
    /// Admin API.
    pub admin: SocketAddr,
}

/// The services of a started relay, each built once by [`Relay::start`]: one handle
/// each (all cheap clones sharing state). Each service is given the handles it uses
/// when it is built ([`IngestServices`], [`AdminServices`], the replayers'); none
/// reaches another through a third.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Services {
    /// The request handler shared by the listeners.
    pub ingest: Ingest,
    /// The request handler's counters.
    pub counters: Arc<IngestCounters>,
    /// The app registry.
    pub registry: AppRegistry,
    /// The forwarder to the backend.
    pub forwarder: Forwarder,
    /// The circuit breaker in front of the backend (request handler and replayers).
    pub breaker: SharedBreaker,
    /// Per-app rate limits.
    pub limiter: SharedLimiter,
    /// The shard map served.
    pub shard_map: ServedShardMap,
    /// The spool.
    pub spool: Spool,
    /// The config cache.
    pub config_cache: ConfigCache,
    /// Push streams.
    pub push_hub: PushHub,
    /// Operator switches.
    pub controls: Controls,
    /// Drain state.
    pub drain: Drain,
    /// Relay feature flags.
    pub features: Features,
    /// Traffic recording.
    pub recorder: Recorder,
    /// The admin API's state.
    pub admin: Admin,
    /// The replayers' progress.
    pub replay_status: ReplayStatus,
}

/// A started relay.
pub struct Running {
    /// Bound addresses.
    pub addrs: Addrs,
    /// The services.
    pub services: Services,
    admin_token_file: Option<std::path::PathBuf>,
    config: RelayConfig,
    primary_store: Arc<dyn object_store::ObjectStore>,
    endpoint: quinn::Endpoint,
    https_handle: HttpHandle,
    operator_handle: HttpHandle,
    stop_config: watch::Sender<bool>,
    stop_replay: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    quic_task: JoinHandle<()>,
    https_task: JoinHandle<Result<(), ListenError>>,
    config_task: JoinHandle<()>,
    replay_tasks: Vec<JoinHandle<()>>,
    recorder_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("relay_id", &self.config.relay_id)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The `ready` line the binary prints (JSON): relay id, addresses, the generated
    /// admin token's file, the dev certificate's file.
    pub fn ready_line(&self) -> serde_json::Value {
        serde_json::json!({
            "event": "ready",
            "relay_id": self.config.relay_id,
            "quic": self.addrs.quic.to_string(),
            "https": self.addrs.https.to_string(),
            "metrics": self.addrs.metrics.to_string(),
            "admin": self.addrs.admin.to_string(),
            "admin_token_file": self
                .admin_token_file
                .as_ref()
                .map(|p| p.display().to_string()),
            "dev_ca": self.config.tls.dev_ca_out.as_ref().map(|p| p.display().to_string()),
        })
    }

    /// Resolves when an operator starts a drain (`POST /admin/v1/drain`).
    pub async fn drain_requested(&self) {
        self.services.drain.started().await
    }

    /// Stops abruptly, like a crash: push streams, listeners, replayers and pollers
    /// stop; nothing is flushed or handed over (spooled objects stay in the store).
    pub fn kill(&self) {
        self.services.push_hub.close();
        self.endpoint.close(0u32.into(), b"killed");
        // A crashed process's port is silent; a closed quinn endpoint would still
        // refuse new handshakes from it (`CONNECTION_REFUSED`, which devices rightly
        // take for a relay at its limit and wait for). Move the endpoint to a
        // throwaway socket so the port goes away as with a crash.
        let throwaway = self
            .endpoint
            .local_addr()
            .and_then(|a| std::net::UdpSocket::bind((a.ip(), 0)));
        match throwaway.and_then(|s| self.endpoint.rebind(s)) {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "kill: the QUIC port stays open"),
        }
        self.https_handle.shutdown();
        self.operator_handle.shutdown();
        let _ = self.stop_replay.send(true);
        let _ = self.stop_config.send(true);
        let _ = self.stop_admin.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Drains and stops (`trigger` names what started it, for the log):
    ///
    /// 1. devices with a push stream hear `draining` first and move to their next relay;
    /// 2. requests already accepted get their answer (forwarded or spooled);
    /// 3. push streams end, HTTPS finishes its requests, QUIC connections close with
    ///    the `draining` code;
    /// 4. replayers stop between objects, the recording's open segment is written;
    /// 5. objects left in this relay's spool prefix are handed over to the relays
    ///    sharing the store.
    pub async fn shutdown(self, trigger: &'static str) {
        let Running {
            services,
            config,
            primary_store,
            endpoint,
            https_handle,
            operator_handle,
            stop_config,
            stop_replay,
            stop_admin,
            quic_task,
            https_task,
            config_task,
            replay_tasks,
            recorder_task,
            tasks,
            ..
        } = self;
        let drain = &services.drain;
        drain.start();
        let t0 = tokio::time::Instant::now();
        tracing::info!(
            trigger,
            in_flight = drain.in_flight(),
            "draining: no new connections or requests, finishing requests in flight"
        );
        // 1. Devices with a push stream hear it first and move to their next relay.
        let told = services
            .push_hub
            .broadcast(&tern_protocol::PushNotice::Draining {
                shard_map_version: services.shard_map.current().version,
            });
        // 2. Requests already accepted get their answer (forwarded or spooled).
        let finished = drain.wait_idle(Duration::from_secs(10)).await;
        if !finished {
            tracing::warn!(
                in_flight = drain.in_flight(),
                "draining: requests still in flight after 10 s; closing anyway (their devices resend)"
            );
        }
        // 3. Push streams end, HTTPS finishes its requests, QUIC connections close with
        //    the `draining` code (devices treat it as "use the next relay").
        services.push_hub.close();
        drain.wait_push_closed(Duration::from_secs(3)).await;
        let _ = stop_config.send(true);
        https_handle.graceful_shutdown(Some(Duration::from_secs(10)));
        endpoint.close(crate::listen::CLOSE_DRAINING.into(), b"relay draining");
        let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
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
        services.recorder.flush().await;
        drop(recorder_task);
        // 5. Objects left in this relay's prefix are handed over: other relays sharing
        //    the store replay them now rather than after `replay_takeover_after_s`.
        let relay_id = config.relay_id();
        let prefix = prefix_of(&relay_id);
        match crate::spool::list_objects(primary_store.as_ref(), &prefix).await {
            Ok(objects) if !objects.is_empty() => {
                match crate::spool::write_handover(primary_store.as_ref(), &prefix, &relay_id).await
                {
                    Ok(()) => tracing::info!(%prefix, "spool prefix handed over"),
                    Err(e) => tracing::warn!(error = %e, "could not hand the spool prefix over"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not list the spool prefix for handover"),
        }
        operator_handle.shutdown();
        for t in tasks {
            t.abort();
        }
        tracing::info!(
            trigger,
            push_streams_told = told,
            took_ms = t0.elapsed().as_millis() as u64,
            "drained"
        );
        let c = &services.counters;
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            accepted_forwarded = load(&c.accepted_forwarded),
            accepted_spooled = load(&c.accepted_spooled),
            retried = load(&c.retried),
            rejected = load(&c.rejected),
            "stopped"
        );
    }
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
