//! An in-process local stack for end-to-end tests: the backend stub and relays on
//! loopback, with a shard map naming them and the CA devices must trust.
//!
//! Everything is real except the process boundary: the stub's HTTP server and each
//! relay started through `tern_relay::run::Relay::start`, the wiring `tern-relay`'s
//! `main` uses (self-signed certificate, spool in a temporary directory, config cache
//! polling the stub every 500 ms).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_protocol::{NodeState, RelayId, RelayNode, ShardMap};
use tern_relay::breaker::BreakerConfig;
use tern_relay::config::{RelayConfig, Secret};
use tern_relay::ingest::Ingest;
use tern_relay::push::PushHub;
use tern_relay::run::Running;
use tern_relay::tls::TlsMaterial;
use tern_server_stub::{Faults, Stub, StubConfig};
use tokio::sync::oneshot;

/// The demo apps the stack's stub serves.
pub const APPS: &str = r#"
[[apps]]
id = "demo"
keys = ["demo-key"]
[apps.values]
greeting = "hello"
"#;

/// The backend stub, served in-process.
pub struct Backend {
    /// Base URL.
    pub url: String,
    /// The stub (fault injection).
    pub stub: Arc<Stub>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Backend {
    /// Starts the stub on loopback with [`APPS`].
    pub async fn start() -> Backend {
        tern_relay::tls::install_crypto_provider();
        let config = StubConfig::parse(APPS).expect("stub config");
        let dir = tempfile::tempdir().expect("tempdir");
        let stub = Stub::open(config, dir.path()).expect("stub");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let stub = stub.clone();
            async move {
                let _ = tern_server_stub::run(listener, stub, async {
                    let _ = stopped.await;
                })
                .await;
            }
        });
        Backend {
            url,
            stub,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Hard down (connections aborted) or back up.
    pub fn set_down(&self, down: bool) {
        self.stub.set_faults(Faults {
            down,
            ..Faults::default()
        });
    }

    /// `GET /verify/summary`.
    pub async fn summary(&self) -> serde_json::Value {
        reqwest::get(format!("{}/verify/summary", self.url))
            .await
            .expect("summary")
            .json()
            .await
            .expect("summary json")
    }

    /// Waits until `events_unique` reaches `n` (or `deadline` passes); returns the
    /// last summary.
    pub async fn wait_events(&self, n: u64, deadline: Duration) -> serde_json::Value {
        let end = Instant::now() + deadline;
        loop {
            let s = self.summary().await;
            if s["events_unique"].as_u64() >= Some(n) || Instant::now() >= end {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `PUT /admin/apps/{app}/{path}` with a JSON body (`path`: `config`,
    /// `values/{key}`, `flags/{key}`); returns the new bundle (JSON).
    pub async fn admin_put(
        &self,
        app: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let resp = reqwest::Client::new()
            .put(format!("{}/admin/apps/{app}/{path}", self.url))
            .json(body)
            .send()
            .await
            .expect("admin put");
        assert!(
            resp.status().is_success(),
            "admin put {path}: {}",
            resp.status()
        );
        resp.json().await.expect("admin put json")
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// One relay, in-process: the real wiring ([`tern_relay::run::Relay::start`]).
pub struct Relay {
    /// Its id.
    pub id: RelayId,
    /// QUIC address.
    pub quic: SocketAddr,
    /// HTTPS address.
    pub https: SocketAddr,
    /// The request handler (counters).
    pub ingest: Ingest,
    /// The push hub (subscribers, counters).
    pub push: PushHub,
    /// The running relay (every address and service, the drain sequence).
    pub running: Running,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// Starts relay `id` forwarding to `backend`, with its certificate `tls`: spool,
    /// config cache and admin state in a temporary directory, config polled every
    /// 500 ms, a breaker that opens after 3 failed requests for 500 ms, forward
    /// requests cut at 2 s. Returns once the app registry is loaded.
    pub async fn start(backend: &Backend, id: &str, tls: &TlsMaterial) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut config = RelayConfig::default();
        config.relay_id = id.to_string();
        config.quic_listen = any;
        config.https_listen = any;
        config.metrics_listen = any;
        config.admin_listen = any;
        config.backend_url = backend.url.clone();
        config.spool_dir = dir.path().join("spool");
        config.config_cache_dir = Some(dir.path().join("config"));
        config.config_refresh_ms = 500;
        config.admin_token = Some(Secret(tern_relay::token::generate_token()));
        config.admin_state_file = Some(dir.path().join("admin.json"));
        std::fs::create_dir_all(&config.spool_dir).expect("spool dir");
        let running = tern_relay::run::Relay::new(config)
            .with_tls(tls.clone())
            .with_breaker(
                BreakerConfig::default()
                    .with_min_requests(3)
                    .with_open_for(Duration::from_millis(500))
                    .with_probes_to_close(1),
            )
            .with_forward_request_timeout(Duration::from_secs(2))
            .with_replay_idle_poll(Duration::from_millis(100))
            .start()
            .await
            .expect("relay start");
        let end = Instant::now() + Duration::from_secs(30);
        while !running.services.registry.is_loaded() {
            assert!(Instant::now() < end, "{id}: app registry not loaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Relay {
            id: RelayId::new(id),
            quic: running.addrs.quic,
            https: running.addrs.https,
            ingest: running.services.ingest.clone(),
            push: running.services.push_hub.clone(),
            running,
            _dir: dir,
        }
    }

    /// This relay as a shard-map node.
    pub fn node(&self) -> RelayNode {
        RelayNode {
            id: self.id.clone(),
            quic_addr: self.quic.to_string(),
            https_url: format!("https://{}", self.https),
            weight: 1,
            state: NodeState::Active,
        }
    }

    /// Stops the listeners and the replayer abruptly (like a crash, minus the spool,
    /// which stays on disk until the relay is dropped).
    pub fn kill(&self) {
        self.running.kill();
    }
}

/// The stub plus relays sharing one certificate, and the map and CA for devices.
pub struct Stack {
    /// The backend.
    pub backend: Backend,
    /// The relays.
    pub relays: Vec<Relay>,
    /// PEM of the certificate every relay uses (devices trust it).
    pub ca_pem: String,
}

impl Stack {
    /// Starts the stub and `n` relays.
    pub async fn start(n: usize) -> Stack {
        let backend = Backend::start().await;
        let (tls, ca_pem) =
            TlsMaterial::self_signed(&["localhost", "127.0.0.1"]).expect("certificate");
        let mut relays = Vec::new();
        for i in 1..=n {
            relays.push(Relay::start(&backend, &format!("relay-{i}"), &tls).await);
        }
        Stack {
            backend,
            relays,
            ca_pem,
        }
    }

    /// A shard map (version `version`) of every relay.
    pub fn shard_map(&self, version: u64) -> ShardMap {
        ShardMap {
            version,
            nodes: self.relays.iter().map(Relay::node).collect(),
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("url", &self.url).finish()
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.id)
            .field("quic", &self.quic)
            .field("https", &self.https)
            .finish()
    }
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("backend", &self.backend)
            .field("relays", &self.relays)
            .finish()
    }
}
