//! The backend stub and N relays as child processes on loopback.
//!
//! One self-signed certificate (for `localhost` and `127.0.0.1`) serves every relay, and
//! devices trust exactly it. Ports are chosen once, so a relay restarted after a kill or
//! a drain comes back at the same address and the shard map never changes. Each relay
//! spools to its own directory (the embedded default, local disk) under the cluster's
//! work directory. With impairment on, devices reach each relay through a [`UdpProxy`]
//! (QUIC) and a [`TcpProxy`] (HTTPS) that share one [`Impairment`] per relay.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tern_protocol::{NodeState, RelayId, RelayNode, ShardMap};

use tern_testkit::bins::Binaries;
use tern_testkit::proc::{free_tcp_port, free_udp_port, Proc};
use tern_testkit::relay::RelayProc;

use crate::kafkalog::KafkaLog;
use crate::netem::{Impairment, TcpProxy, UdpProxy};
use crate::{FleetError, Result};

/// The demo apps (`demo` / `demo-key`, `shop` / `shop-key`), with values, flags and
/// messages.
pub const DEMO_APPS: &str = tern_testkit::stub::DEMO_APPS;

/// How long a process may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of relays.
    pub relays: usize,
    /// The stub's apps file (TOML text).
    pub apps_toml: String,
    /// Put the impairment proxies between devices and relays.
    pub impair: bool,
    /// Extra environment for every relay (`TERN_RELAY_*` settings).
    pub relay_env: Vec<(String, String)>,
    /// Where the data directories go; a temporary directory when `None`.
    pub work_dir: Option<PathBuf>,
    /// The relays forward to a Kafka-protocol broker started with the stack (their
    /// Kafka sink) instead of the stub; the report reads the topic back.
    pub kafka: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            relays: 3,
            apps_toml: DEMO_APPS.to_owned(),
            impair: false,
            relay_env: Vec::new(),
            work_dir: None,
            kafka: false,
        }
    }
}

/// One relay of the cluster.
#[derive(Debug)]
pub struct RelaySlot {
    /// Its shard-map id.
    pub id: RelayId,
    /// Its real QUIC address.
    pub quic: SocketAddr,
    /// Its real HTTPS address.
    pub https: SocketAddr,
    /// Its `/metrics`, `/healthz` and `/readyz` address.
    pub metrics: SocketAddr,
    /// Its admin API address (token in `admin.token` in the relay's directory).
    pub admin: SocketAddr,
    /// The impairment of the QUIC (UDP) path from devices (a no-op without proxies).
    pub udp: Arc<Impairment>,
    /// The impairment of the HTTPS (TCP) path from devices (delay and block only).
    pub tcp: Arc<Impairment>,
    proc: Option<RelayProc>,
    udp_proxy: Option<UdpProxy>,
    tcp_proxy: Option<TcpProxy>,
    dir: PathBuf,
    starts: u32,
}

impl RelaySlot {
    /// The relay's own directory (spool, config cache, admin state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin token the relay generated at start (read it after it started).
    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.join("admin.token")
    }
}

/// The running stack.
#[derive(Debug)]
pub struct Cluster {
    bins: Binaries,
    config: ClusterConfig,
    /// The stub's base URL (`http://127.0.0.1:port`).
    pub stub_url: String,
    stub: Proc,
    /// The relays, in shard-map order.
    pub relays: Vec<RelaySlot>,
    /// PEM of the certificate devices must trust.
    pub ca_pem: String,
    /// The shard map devices start with (also the file every relay serves).
    pub shard_map: ShardMap,
    /// The broker of the relays' Kafka sink, when `ClusterConfig::kafka`.
    pub kafka: Option<KafkaLog>,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts the stub, then the relays, and waits until every relay is ready.
    pub async fn start(bins: Binaries, mut config: ClusterConfig) -> Result<Cluster> {
        let (dir, temp) = match &config.work_dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .map_err(crate::io_err(format!("creating {}", d.display())))?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("tern-stack.")
                    .tempdir()
                    .map_err(crate::io_err("creating a temporary directory"))?;
                (t.path().to_owned(), Some(t))
            }
        };
        let apps = dir.join("apps.toml");
        write(&apps, &config.apps_toml)?;
        let kafka = if config.kafka {
            let kafka = KafkaLog::start(&dir.join("kafka")).await?;
            config.relay_env.extend(kafka.relay_env());
            Some(kafka)
        } else {
            None
        };
        let stub_dir = dir.join("stub");
        std::fs::create_dir_all(&stub_dir).map_err(crate::io_err("creating the stub directory"))?;
        let (stub, stub_url) = tern_testkit::stub::spawn_process(
            &bins.stub,
            &apps,
            &stub_dir,
            &dir.join("stub.log"),
            READY_TIMEOUT,
        )?;

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| FleetError::Certificate(e.to_string()))?;
        let ca_pem = cert.cert.pem();
        write(&dir.join("cert.pem"), &ca_pem)?;
        write(&dir.join("key.pem"), &cert.signing_key.serialize_pem())?;

        let mut relays = Vec::new();
        for i in 1..=config.relays {
            let (udp, tcp) = (Impairment::new(), Impairment::new());
            let quic: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, free_udp_port()?).into();
            let https: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, free_tcp_port()?).into();
            let metrics: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, free_tcp_port()?).into();
            let admin: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, free_tcp_port()?).into();
            let (udp_proxy, tcp_proxy) = if config.impair {
                let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
                (
                    Some(UdpProxy::start(any, quic, udp.clone()).await?),
                    Some(TcpProxy::start(any, https, tcp.clone()).await?),
                )
            } else {
                (None, None)
            };
            let relay_dir = dir.join(format!("relay-{i}"));
            std::fs::create_dir_all(&relay_dir)
                .map_err(crate::io_err("creating a relay directory"))?;
            relays.push(RelaySlot {
                id: RelayId::new(format!("relay-{i}")),
                quic,
                https,
                metrics,
                admin,
                udp,
                tcp,
                proc: None,
                udp_proxy,
                tcp_proxy,
                dir: relay_dir,
                starts: 0,
            });
        }
        let shard_map = ShardMap {
            version: 1,
            nodes: relays
                .iter()
                .map(|r| RelayNode {
                    id: r.id.clone(),
                    quic_addr: r
                        .udp_proxy
                        .as_ref()
                        .map_or(r.quic, UdpProxy::addr)
                        .to_string(),
                    https_url: format!(
                        "https://{}",
                        r.tcp_proxy.as_ref().map_or(r.https, TcpProxy::addr)
                    ),
                    weight: 1,
                    state: NodeState::Active,
                })
                .collect(),
        };
        write(
            &dir.join("shard_map.json"),
            &serde_json::to_string_pretty(&shard_map).expect("shard map serializes"),
        )?;
        let mut cluster = Cluster {
            bins,
            config,
            stub_url,
            stub,
            relays,
            ca_pem,
            shard_map,
            kafka,
            dir,
            _temp: temp,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|source| FleetError::Http {
                    what: "building the HTTP client".into(),
                    source,
                })?,
        };
        for i in 0..cluster.relays.len() {
            cluster.start_relay(i)?;
        }
        for i in 0..cluster.relays.len() {
            cluster.wait_relay_ready(i, READY_TIMEOUT).await?;
        }
        Ok(cluster)
    }

    /// The work directory (logs, data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The binaries in use.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// Starts relay `i` (again) on its ports, with its spool directory.
    pub fn start_relay(&mut self, i: usize) -> Result<()> {
        let dir = self.dir.clone();
        let stub_url = self.stub_url.clone();
        let env = self.config.relay_env.clone();
        let relay_bin = self.bins.relay.clone();
        let slot = self.relays.get_mut(i).ok_or(FleetError::NoSuchRelay(i))?;
        slot.starts += 1;
        let proc = RelayProc::builder(&stub_url)
            .bin(relay_bin)
            .id(slot.id.as_str())
            .dir(&slot.dir)
            .listen(slot.quic, slot.https, slot.metrics, slot.admin)
            .tls_files(&dir.join("cert.pem"), &dir.join("key.pem"))
            .args([
                "--shard-map".to_owned(),
                dir.join("shard_map.json").display().to_string(),
                "--config-cache-dir".to_owned(),
                slot.dir.join("config-cache").display().to_string(),
            ])
            .envs(env)
            .log(&dir.join(format!("{}.log", slot.id.as_str())))
            .name(&format!("{} (start {})", slot.id.as_str(), slot.starts))
            .ready_timeout(READY_TIMEOUT)
            .try_start()?;
        slot.proc = Some(proc);
        Ok(())
    }

    /// Waits until relay `i` answers `/readyz` with 200.
    pub async fn wait_relay_ready(&self, i: usize, timeout: Duration) -> Result<()> {
        let slot = self.relays.get(i).ok_or(FleetError::NoSuchRelay(i))?;
        let url = format!("http://{}/readyz", slot.metrics);
        let ready = tern_testkit::wait::poll_value(
            timeout,
            || async {
                self.http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
            |ready| *ready,
        )
        .await;
        if ready {
            Ok(())
        } else {
            Err(FleetError::NotReady {
                what: slot.id.as_str().to_owned(),
                detail: format!("/readyz not 200 within {timeout:?}"),
            })
        }
    }

    /// SIGKILLs relay `i` (no drain, nothing sealed: a crash).
    pub fn kill_relay(&mut self, i: usize) -> Result<()> {
        let slot = self.relays.get_mut(i).ok_or(FleetError::NoSuchRelay(i))?;
        if let Some(mut p) = slot.proc.take() {
            p.kill();
        }
        Ok(())
    }

    /// SIGTERMs relay `i` and waits for its graceful exit; returns whether it exited 0.
    pub fn stop_relay(&mut self, i: usize, timeout: Duration) -> Result<bool> {
        let slot = self.relays.get_mut(i).ok_or(FleetError::NoSuchRelay(i))?;
        match slot.proc.take() {
            Some(mut p) => Ok(p.proc.terminate(timeout)?.success()),
            None => Ok(true),
        }
    }

    /// Stops relay `i` with SIGTERM and starts it again, waiting for readiness.
    pub async fn restart_relay(&mut self, i: usize) -> Result<bool> {
        let clean = self.stop_relay(i, Duration::from_secs(30))?;
        self.start_relay(i)?;
        self.wait_relay_ready(i, READY_TIMEOUT).await?;
        Ok(clean)
    }

    /// Drains relay `i` through its admin API (`POST /admin/v1/drain` with the token
    /// the relay generated into its directory) and waits for its exit; returns whether
    /// it exited 0.
    pub async fn drain_relay(&mut self, i: usize, timeout: Duration) -> Result<bool> {
        let slot = self.relays.get(i).ok_or(FleetError::NoSuchRelay(i))?;
        let token_file = slot.admin_token_file();
        let token = std::fs::read_to_string(&token_file)
            .map_err(crate::io_err(format!("reading {}", token_file.display())))?;
        let what = format!("POST {}/admin/v1/drain", slot.id.as_str());
        send(
            what,
            self.http
                .post(format!("http://{}/admin/v1/drain", slot.admin))
                .bearer_auth(token.trim())
                .header("x-tern-operator", "tern-fleet"),
        )
        .await?;
        let slot = self.relays.get_mut(i).ok_or(FleetError::NoSuchRelay(i))?;
        let Some(mut p) = slot.proc.take() else {
            return Ok(true);
        };
        let status = tokio::task::spawn_blocking(move || {
            let status = p.proc.wait_exit(timeout);
            (status, p)
        })
        .await
        .map_err(|e| FleetError::NotReady {
            what: "drain".into(),
            detail: e.to_string(),
        })?;
        match status {
            (Some(status), _) => Ok(status.success()),
            (None, mut p) => {
                p.kill();
                Err(FleetError::NotReady {
                    what: slot.id.as_str().to_owned(),
                    detail: format!("did not exit within {timeout:?} of a drain; killed"),
                })
            }
        }
    }

    /// Whether relay `i`'s process is running.
    pub fn relay_running(&mut self, i: usize) -> bool {
        self.relays
            .get_mut(i)
            .and_then(|s| s.proc.as_mut())
            .is_some_and(|p| p.proc.is_running())
    }

    /// The stub's process, e.g. to read its log.
    pub fn stub(&self) -> &Proc {
        &self.stub
    }

    /// Applies `f` to the UDP and the TCP impairment of the path to every relay.
    pub fn impair_all(&self, f: impl Fn(&Impairment)) {
        assert!(self.config.impair, "impair_all needs ClusterConfig::impair");
        for r in &self.relays {
            f(&r.udp);
            f(&r.tcp);
        }
    }

    /// Blocks (or unblocks) UDP to every relay. Needs `impair: true`.
    pub fn block_udp(&self, blocked: bool) {
        assert!(self.config.impair, "block_udp needs ClusterConfig::impair");
        // Only the UDP side: HTTPS stays open.
        for r in &self.relays {
            r.udp.set_blocked(blocked);
        }
    }

    /// Takes the backend down (connections aborted, nothing processed) or back up.
    pub async fn backend_down(&self, down: bool) -> Result<()> {
        let body = if down {
            serde_json::json!({ "down": true, "scope": ["ingest"] })
        } else {
            serde_json::json!({})
        };
        self.put_json("/admin/faults", &body).await
    }

    /// `PUT` JSON to the stub.
    pub async fn put_json(&self, path: &str, body: &serde_json::Value) -> Result<()> {
        let request = self.http.put(format!("{}{path}", self.stub_url)).json(body);
        send(format!("PUT {path}"), request).await.map(|_| ())
    }

    /// `GET` JSON from the stub.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let what = format!("GET {path}");
        let r = send(
            what.clone(),
            self.http.get(format!("{}{path}", self.stub_url)),
        )
        .await?;
        r.json()
            .await
            .map_err(|source| FleetError::Http { what, source })
    }

    /// What was delivered: the stub's `/verify/summary`, or the same fields read
    /// back from the Kafka topic when the relays forward there.
    pub async fn summary(&self) -> Result<serde_json::Value> {
        match &self.kafka {
            Some(k) => Ok(k.read().await?.0),
            None => self.get_json("/verify/summary").await,
        }
    }

    /// Delivery latency percentiles: the stub's `/verify/latency`, or from the
    /// records' timestamps in the Kafka topic.
    pub async fn latency(&self) -> Result<serde_json::Value> {
        match &self.kafka {
            Some(k) => Ok(k.read().await?.1),
            None => self.get_json("/verify/latency").await,
        }
    }

    /// Polls the summary until `events_unique >= n` or the deadline; returns the last.
    pub async fn wait_events(&self, n: u64, timeout: Duration) -> Result<serde_json::Value> {
        tern_testkit::wait::poll_value_every(
            timeout,
            Duration::from_millis(100),
            || self.summary(),
            |s| match s {
                Ok(s) => s["events_unique"].as_u64().unwrap_or(0) >= n,
                Err(_) => true,
            },
        )
        .await
    }

    /// Relay `i`'s Prometheus text.
    pub async fn relay_metrics(&self, i: usize) -> Result<String> {
        let slot = self.relays.get(i).ok_or(FleetError::NoSuchRelay(i))?;
        let what = format!("GET {}/metrics", slot.id.as_str());
        let request = self.http.get(format!("http://{}/metrics", slot.metrics));
        let r = send(what.clone(), request).await?;
        r.text()
            .await
            .map_err(|source| FleetError::Http { what, source })
    }

    /// Sum of a metric's samples on relay `i` whose label set contains every
    /// `label="value"` in `labels` (0 when absent or the relay is down).
    pub async fn relay_metric(&self, i: usize, name: &str, labels: &[&str]) -> f64 {
        let Ok(text) = self.relay_metrics(i).await else {
            return 0.0;
        };
        tern_testkit::metrics::sum(&text, name, labels)
    }

    /// Every relay's id, in order.
    pub fn relay_ids(&self) -> Vec<String> {
        self.relays
            .iter()
            .map(|r| r.id.as_str().to_owned())
            .collect()
    }

    /// Every relay's metrics URL.
    pub fn metrics_urls(&self) -> Vec<String> {
        self.relays
            .iter()
            .map(|r| format!("http://{}/metrics", r.metrics))
            .collect()
    }

    /// Stops the relays (SIGTERM, graceful) and the stub.
    pub fn shutdown(&mut self) {
        for i in 0..self.relays.len() {
            let _ = self.stop_relay(i, Duration::from_secs(15));
        }
        self.stub.kill();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in &mut self.relays {
            if let Some(mut p) = r.proc.take() {
                p.kill();
            }
            if let Some(p) = r.udp_proxy.as_mut() {
                p.stop();
            }
            if let Some(p) = r.tcp_proxy.as_mut() {
                p.stop();
            }
        }
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(crate::io_err(format!("writing {}", path.display())))
}

/// Sends `request` (`what` names it in errors); a non-success status is an error.
async fn send(what: String, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
    request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|source| FleetError::Http { what, source })
}
