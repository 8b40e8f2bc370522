//! Helpers shared by the relay's integration suites: the stub as an in-process backend,
//! the relay binary as a child process, and a QUIC device client.

#![allow(dead_code)] // each suite uses its own subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_protocol::{
    AppId, Auth, BatchId, CodecConfig, ConfigRequest, DeviceId, Event, EventBatch, EventBody,
    FrameDecoder, IngestOutcome, IngestRequest, Message, SdkInfo, SubscribeRequest, ALPN,
};
use tern_server_stub::{Faults, Stub, StubConfig};
use tokio::sync::oneshot;

/// Generous bound for anything asynchronous; never a performance threshold.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// The stub's demo apps (`demo` with values, flags and a message; `shop`).
pub fn demo_apps() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../server-stub/demo/apps.toml"
    ))
    .unwrap()
}

/// The stub on loopback, in this process.
pub struct Backend {
    pub url: String,
    pub stub: Arc<Stub>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Backend {
    /// Starts the stub with the apps of `apps_toml`.
    pub async fn start(apps_toml: &str) -> Backend {
        tern_relay::tls::install_crypto_provider();
        let config = StubConfig::parse(apps_toml).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stub = Stub::open(config, dir.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let stub = stub.clone();
            async move {
                tern_server_stub::run(listener, stub, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            }
        });
        Backend {
            url,
            stub,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    /// `/verify/summary`.
    pub async fn summary(&self) -> serde_json::Value {
        reqwest::get(format!("{}/verify/summary", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The sum of a counter (all label sets) in the stub's `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sum_metric(&text, name)
    }

    /// Edits a config value through the stub's admin API; returns the new bundle's
    /// ETag.
    pub async fn set_value(
        &self,
        app: &str,
        key: &str,
        value: serde_json::Value,
    ) -> tern_protocol::ETag {
        let resp = reqwest::Client::new()
            .put(format!("{}/admin/apps/{app}/values/{key}", self.url))
            .json(&value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let bundle: serde_json::Value = resp.json().await.unwrap();
        tern_protocol::ETag(bundle["etag"].as_str().unwrap().to_owned())
    }

    /// The backend fails every request (or recovers).
    pub fn down(&self, down: bool) {
        self.stub.set_faults(Faults {
            down,
            ..Faults::default()
        });
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.await;
    }
}

/// The sum of every sample of `name` in a Prometheus text exposition.
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `tern-relay` child process in `dir` (spool, config cache and admin state there).
pub struct RelayProc {
    pub child: Child,
    pub ready: serde_json::Value,
    pub quic: SocketAddr,
    pub metrics: String,
    pub admin: String,
    pub ca_pem: String,
    pub dir: PathBuf,
}

impl RelayProc {
    /// Starts the relay against `backend_url` with extra `args` and `env`. The binary
    /// is this build's, or the one named by `TERN_RELAY_BIN` (to run a suite against
    /// another build).
    pub fn start(backend_url: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let ca = dir.join("ca.pem");
        let bin = std::env::var_os("TERN_RELAY_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_tern-relay").into());
        let mut child = Command::new(bin)
            .current_dir(dir)
            .args(["--dev", "--relay-id", "relay-admin"])
            .args([
                "--quic-listen",
                "127.0.0.1:0",
                "--https-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--backend-url", backend_url])
            .arg("--dev-ca-out")
            .arg(&ca)
            .arg("--spool-dir")
            .arg(dir.join("spool"))
            .arg("--admin-state-file")
            .arg(dir.join("admin.json"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad ready line {line:?}: {e}"));
        RelayProc {
            quic: ready["quic"].as_str().unwrap().parse().unwrap(),
            metrics: format!("http://{}", ready["metrics"].as_str().unwrap()),
            admin: format!("http://{}", ready["admin"].as_str().unwrap()),
            ca_pem: std::fs::read_to_string(&ca).unwrap(),
            dir: dir.to_owned(),
            ready,
            child,
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// Waits until the relay answers `/readyz` with 200.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.metrics);
        wait_async("relay ready", || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A relay started in-process through [`tern_relay::run::Relay::start`] (the wiring
/// the binary uses), in a temporary directory: every listener on loopback port 0, a
/// self-signed certificate whose PEM is `ca_pem`.
pub struct InProcess {
    pub running: tern_relay::run::Running,
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
}

impl InProcess {
    /// A configuration for a relay `relay-test` forwarding to `backend_url`, with its
    /// state under `dir`; callers adjust it before [`InProcess::start`].
    pub fn config(backend_url: &str, dir: &Path) -> tern_relay::config::RelayConfig {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut config = tern_relay::config::RelayConfig::default();
        config.relay_id = "relay-test".into();
        config.quic_listen = any;
        config.https_listen = any;
        config.metrics_listen = any;
        config.admin_listen = any;
        config.backend_url = backend_url.into();
        config.spool_dir = dir.join("spool");
        config.config_cache_dir = Some(dir.join("config"));
        config.admin_state_file = Some(dir.join("admin.json"));
        config.admin_token = Some(tern_relay::config::Secret(
            tern_relay::token::generate_token(),
        ));
        config
    }

    /// Starts a relay with the default [`InProcess::config`]; returns once its app
    /// registry is loaded.
    pub async fn start(backend_url: &str) -> InProcess {
        Self::start_with(backend_url, |c| c, |r| r).await
    }

    /// Starts a relay with `config` and `relay` adjusting the defaults; returns once its
    /// app registry is loaded.
    pub async fn start_with(
        backend_url: &str,
        config: impl FnOnce(tern_relay::config::RelayConfig) -> tern_relay::config::RelayConfig,
        relay: impl FnOnce(tern_relay::run::Relay) -> tern_relay::run::Relay,
    ) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = config(Self::config(backend_url, dir.path()));
        std::fs::create_dir_all(&config.spool_dir).unwrap();
        let (tls, ca_pem) =
            tern_relay::tls::TlsMaterial::self_signed(&["localhost", "127.0.0.1"]).unwrap();
        let running = relay(tern_relay::run::Relay::new(config).with_tls(tls))
            .start()
            .await
            .unwrap();
        let registry = running.services.registry.clone();
        wait_async("app registry loaded", || {
            let loaded = registry.is_loaded();
            async move { loaded }
        })
        .await;
        InProcess {
            running,
            ca_pem,
            dir,
        }
    }
}

/// A device-side QUIC connection to a relay.
pub struct Device {
    pub conn: quinn::Connection,
    _ep: quinn::Endpoint,
}

impl Device {
    pub async fn connect(ca_pem: &str, addr: SocketAddr) -> Device {
        let tls = tern_relay::tls::client_config(ca_pem, &[ALPN]).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
        Device { conn, _ep: ep }
    }

    /// One request, one reply.
    pub async fn roundtrip(&self, msg: &Message) -> Message {
        let frame = msg.encode(&CodecConfig::device()).unwrap();
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        send.write_all(&frame).await.unwrap();
        send.finish().unwrap();
        let reply = recv.read_to_end(1 << 20).await.unwrap();
        Message::from_bytes(&reply, &CodecConfig::device()).unwrap()
    }

    /// Sends `batch` with `app`'s credentials; the outcome.
    pub async fn send(&self, app: &str, key: &str, batch: EventBatch) -> IngestOutcome {
        let msg = Message::IngestRequest(IngestRequest {
            auth: auth(app, key),
            batch,
        });
        match self.roundtrip(&msg).await {
            Message::IngestReply(r) => r.outcome,
            other => panic!("expected an IngestReply, got {other:?}"),
        }
    }

    /// Sends `batch`; `Err` (with the connection's close reason) when the stream or
    /// the connection failed instead of a reply.
    pub async fn try_send(
        &self,
        app: &str,
        key: &str,
        batch: EventBatch,
    ) -> Result<IngestOutcome, String> {
        let frame = Message::IngestRequest(IngestRequest {
            auth: auth(app, key),
            batch,
        })
        .encode(&CodecConfig::device())
        .unwrap();
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let reply = recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
        match Message::from_bytes(&reply, &CodecConfig::device()).map_err(|e| e.to_string())? {
            Message::IngestReply(r) => Ok(r.outcome),
            other => Err(format!("expected an IngestReply, got {other:?}")),
        }
    }

    /// The connection's close code, once closed by the relay.
    pub fn close_code(&self) -> Option<u64> {
        match self.conn.close_reason()? {
            quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }

    /// A config request.
    pub async fn config(&self, app: &str, key: &str) -> Message {
        self.roundtrip(&Message::ConfigRequest(ConfigRequest {
            auth: auth(app, key),
            device_id: DeviceId::random(),
            user_id: None,
            if_none_match: None,
        }))
        .await
    }

    /// Opens a push stream: the stream and its first frame.
    pub async fn subscribe(&self, app: &str, key: &str) -> (PushReader, Message) {
        let frame = Message::SubscribeRequest(SubscribeRequest {
            auth: auth(app, key),
            device_id: DeviceId::random(),
            user_id: None,
            config_etag: None,
        })
        .encode(&CodecConfig::device())
        .unwrap();
        let (mut send, recv) = self.conn.open_bi().await.unwrap();
        send.write_all(&frame).await.unwrap();
        send.finish().unwrap();
        let mut reader = PushReader {
            recv,
            decoder: FrameDecoder::new(CodecConfig::device().max_payload),
        };
        let first = reader.next().await.expect("a first frame");
        (reader, first)
    }
}

/// The reading end of a push stream.
pub struct PushReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl PushReader {
    /// The next frame, or `None` once the relay finished the stream (within
    /// [`DEADLINE`]).
    pub async fn next(&mut self) -> Option<Message> {
        let cfg = CodecConfig::device();
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(frame) = self.decoder.next_frame().unwrap() {
                    return Some(Message::decode(&frame, &cfg).unwrap());
                }
                match self.recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                    Ok(None) | Err(_) => return None,
                }
            }
        })
        .await
        .expect("a push frame or the end of the stream within the deadline")
    }
}

pub fn auth(app: &str, key: &str) -> Auth {
    Auth {
        app_id: AppId::new(app),
        key: key.into(),
    }
}

/// A batch of `events` custom events from a fresh device.
pub fn batch(app: &str, events: u64) -> EventBatch {
    EventBatch {
        batch_id: BatchId::new_v7(),
        app_id: AppId::new(app),
        device_id: DeviceId::random(),
        sdk: SdkInfo::default(),
        sent_at_ms: 0,
        attempt: 0,
        events: (1..=events)
            .map(|seq| Event {
                seq,
                ts_ms: 1,
                user_id: None,
                session_id: None,
                body: EventBody::Custom {
                    name: "e".into(),
                    props: Default::default(),
                },
            })
            .collect(),
        health: Default::default(),
    }
}

/// Waits until the async check `f` holds, polling, within [`DEADLINE`].
pub async fn wait_async<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_async_for(what, DEADLINE, f).await
}

/// Waits until the async check `f` holds, polling, within `limit`.
pub async fn wait_async_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
