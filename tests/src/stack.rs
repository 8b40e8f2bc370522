//! An in-process local stack for end-to-end tests: the backend stub and relays on
//! loopback, with a shard map naming them and the CA devices must trust.
//!
//! Everything is real except the process boundary: the stub's HTTP server, each
//! relay's QUIC and HTTPS listeners (self-signed certificate), forwarder, breaker, spool
//! (a temporary directory), replayer, config cache (polling the stub every 500 ms) and
//! push hub — wired like `tern-relay`'s `main`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_protocol::{NodeState, RelayId, RelayNode, ShardMap};
use tern_relay::apps::AppRegistry;
use tern_relay::breaker::BreakerConfig;
use tern_relay::configcache::{ConfigCache, ConfigCacheConfig};
use tern_relay::forward::{Forwarder, ForwarderConfig};
use tern_relay::ingest::{Ingest, IngestConfig};
use tern_relay::listen::{bind_quic, serve_https, serve_quic, Budgets, ListenConfig};
use tern_relay::push::PushHub;
use tern_relay::replay::{ReplayConfig, Replayer};
use tern_relay::spool::{prefix_of, Spool, SpoolConfig};
use tern_relay::tls::TlsMaterial;
use tern_server_stub::{Faults, Stub, StubConfig};
use tokio::sync::{oneshot, watch};

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

/// One relay, in-process.
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
    endpoint: quinn::Endpoint,
    handle: tern_relay::listen::HttpHandle,
    stop_replay: watch::Sender<bool>,
    _spool: tempfile::TempDir,
    _config: tempfile::TempDir,
}

impl Relay {
    /// Starts relay `id` forwarding to `backend`, with its certificate `tls`.
    pub async fn start(backend: &Backend, id: &str, tls: &TlsMaterial) -> Relay {
        let client = reqwest::Client::new();
        let registry = AppRegistry::default();
        registry
            .refresh(&client, &backend.url, None)
            .await
            .expect("registry");
        let (forwarder, _) = Forwarder::spawn(
            ForwarderConfig::new(&backend.url, RelayId::new(id))
                .with_request_timeout(Duration::from_secs(2)),
            client,
            None,
        );
        let spool_dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn object_store::ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(spool_dir.path()).expect("spool"),
        );
        let (spool, _) = Spool::spawn(store.clone(), RelayId::new(id), SpoolConfig::default());
        let mut config = IngestConfig::default();
        config.breaker = BreakerConfig::default()
            .with_min_requests(3)
            .with_open_for(Duration::from_millis(500))
            .with_probes_to_close(1);
        let push = PushHub::default();
        let config_dir = tempfile::tempdir().expect("tempdir");
        let cache = ConfigCache::new(
            ConfigCacheConfig::new(&backend.url).with_dir(config_dir.path()),
            reqwest::Client::new(),
        )
        .with_push_hub(push.clone());
        let (stop_replay, stopped) = watch::channel(false);
        tokio::spawn(cache.clone().run(registry.clone(), stopped.clone()));
        let ingest = Ingest::new(config, registry, forwarder.clone(), ShardMap::default())
            .with_spool(spool)
            .with_relay_id(RelayId::new(id))
            .with_config_cache(cache)
            .with_push_hub(push.clone());
        tokio::spawn(
            Replayer::new(
                store,
                prefix_of(&RelayId::new(id)),
                forwarder,
                ingest.clone(),
                ReplayConfig::default().with_idle_poll(Duration::from_millis(100)),
            )
            .run(stopped),
        );
        let listen = ListenConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:0".parse().expect("addr"),
        );
        let endpoint = bind_quic(&listen, tls).expect("quic");
        let budgets = Budgets::new(&listen);
        let quic = endpoint.local_addr().expect("addr");
        tokio::spawn(serve_quic(
            endpoint.clone(),
            ingest.clone(),
            budgets.clone(),
        ));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        tcp.set_nonblocking(true).expect("nonblocking");
        let https = tcp.local_addr().expect("addr");
        let handle = tern_relay::listen::HttpHandle::new();
        tokio::spawn({
            let (handle, ingest, tls) = (handle.clone(), ingest.clone(), tls.clone());
            async move {
                let _ = serve_https(tcp, &tls, ingest, budgets, handle).await;
            }
        });
        Relay {
            id: RelayId::new(id),
            quic,
            https,
            ingest,
            push,
            endpoint,
            handle,
            stop_replay,
            _spool: spool_dir,
            _config: config_dir,
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
        self.push.close();
        self.endpoint.close(0u32.into(), b"killed");
        self.handle.shutdown();
        let _ = self.stop_replay.send(true);
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
