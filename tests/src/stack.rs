//! An in-process local stack for end-to-end tests: the backend stub and relays on
//! loopback, with a shard map naming them and the CA devices must trust.
//!
//! Everything is real except the process boundary: the stub's HTTP server and each
//! relay started by the test kit through `tern_relay::run::Relay::start`, the wiring
//! `tern-relay`'s `main` uses (self-signed certificate, spool in a temporary directory,
//! config cache polling the stub every 500 ms).

use std::net::SocketAddr;
use std::time::Duration;

use tern_protocol::{NodeState, RelayId, RelayNode, ShardMap};
use tern_relay::backend::breaker::BreakerConfig;
use tern_relay::ingest::Ingest;
use tern_relay::listen::tls::TlsMaterial;
use tern_relay::remote::push::PushHub;
use tern_testkit::InProcess;

/// The demo app the stack's stub serves (`demo` / `demo-key`, a `greeting` value).
pub const APPS: &str = tern_testkit::stub::MINIMAL_APPS;

/// The backend stub, served in-process (the test kit's).
pub type Backend = tern_testkit::Backend;

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
    /// The running relay (every address and service, the drain sequence) and its
    /// state directory.
    pub running: InProcess,
}

impl Relay {
    /// Starts relay `id` forwarding to `backend`, with its certificate `tls`: spool,
    /// config cache and admin state in a temporary directory, config polled every
    /// 500 ms, a breaker that opens after 3 failed requests for 500 ms, forward
    /// requests cut at 2 s. Returns once the app registry is loaded.
    pub async fn start(backend: &Backend, id: &str, tls: &TlsMaterial, ca_pem: &str) -> Relay {
        Relay::start_with(backend, id, tls, ca_pem, |c| c).await
    }

    /// [`Relay::start`] with `config` adjusting the relay's settings (limits, for one).
    pub async fn start_with(
        backend: &Backend,
        id: &str,
        tls: &TlsMaterial,
        ca_pem: &str,
        config: impl FnOnce(tern_relay::config::RelayConfig) -> tern_relay::config::RelayConfig,
    ) -> Relay {
        let relay = InProcess::builder(&backend.url)
            .id(id)
            .tls(tls.clone(), ca_pem)
            .config(|mut c| {
                c.config_refresh_ms = 500;
                config(c)
            })
            .relay(|r| {
                r.with_breaker(
                    BreakerConfig::default()
                        .with_min_requests(3)
                        .with_open_for(Duration::from_millis(500))
                        .with_probes_to_close(1),
                )
                .with_forward_request_timeout(Duration::from_secs(2))
                .with_replay_idle_poll(Duration::from_millis(100))
            })
            .start()
            .await;
        Relay {
            id: RelayId::new(id),
            quic: relay.quic(),
            https: relay.https(),
            ingest: relay.running.services.ingest.clone(),
            push: relay.running.services.push_hub.clone(),
            running: relay,
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
        self.running.running.kill();
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
        let backend = Backend::start(APPS).await;
        let (tls, ca_pem) = tern_testkit::relay::self_signed();
        let mut relays = Vec::new();
        for i in 1..=n {
            relays.push(Relay::start(&backend, &format!("relay-{i}"), &tls, &ca_pem).await);
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
