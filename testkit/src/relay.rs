//! The relay under test: in this process through [`tern_relay::run::Relay::start`]
//! (the wiring `tern-relay`'s `main` uses), or the `tern-relay` binary as a child
//! process that announced itself with its ready line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use tern_relay::config::{RelayConfig, Secret};
use tern_relay::listen::tls::TlsMaterial;
use tern_relay::run::{Relay, Running, Services};

use crate::device::Device;
use crate::proc::Proc;
use crate::wait::{wait_until, DEADLINE};

/// Loopback, port 0.
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A relay configuration with test defaults: relay `id` forwarding to `backend_url`,
/// every listener on loopback port 0, spool, config cache and admin state under `dir`,
/// a generated admin token.
pub fn config(id: &str, backend_url: &str, dir: &Path) -> RelayConfig {
    let mut config = RelayConfig::default();
    config.relay_id = id.into();
    config.quic_listen = any_port();
    config.https_listen = any_port();
    config.metrics_listen = any_port();
    config.admin_listen = any_port();
    config.backend_url = backend_url.into();
    config.spool_dir = dir.join("spool");
    config.config_cache_dir = Some(dir.join("config"));
    config.admin_state_file = Some(dir.join("admin.json"));
    config.admin_token = Some(Secret(tern_relay::ops::token::generate_token()));
    config
}

/// A certificate for `localhost` and `127.0.0.1` and its PEM (what devices trust).
pub fn self_signed() -> (TlsMaterial, String) {
    TlsMaterial::self_signed(&["localhost", "127.0.0.1"]).expect("self-signed certificate")
}

/// A relay started in-process in a temporary directory, with a self-signed certificate
/// whose PEM is `ca_pem`.
pub struct InProcess {
    /// The running relay: every address and service, the shutdown sequence.
    pub running: Running,
    /// PEM of the relay's certificate.
    pub ca_pem: String,
    /// Its state directory.
    pub dir: tempfile::TempDir,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("quic", &self.running.addrs.quic)
            .field("https", &self.running.addrs.https)
            .finish()
    }
}

/// How to start an [`InProcess`] relay; see [`InProcess::builder`].
pub struct Builder<'a> {
    backend_url: String,
    id: String,
    tls: Option<(TlsMaterial, String)>,
    config: Box<dyn FnOnce(RelayConfig) -> RelayConfig + 'a>,
    relay: Box<dyn FnOnce(Relay) -> Relay + 'a>,
}

impl std::fmt::Debug for Builder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("backend_url", &self.backend_url)
            .field("id", &self.id)
            .finish()
    }
}

impl<'a> Builder<'a> {
    /// Relay id (default `relay-test`).
    pub fn id(mut self, id: &str) -> Builder<'a> {
        self.id = id.into();
        self
    }

    /// A certificate and its PEM (relays of one stack share one); default a fresh
    /// [`self_signed`] one.
    pub fn tls(mut self, tls: TlsMaterial, ca_pem: &str) -> Builder<'a> {
        self.tls = Some((tls, ca_pem.into()));
        self
    }

    /// Adjusts the configuration (after the defaults of [`config`]).
    pub fn config(mut self, f: impl FnOnce(RelayConfig) -> RelayConfig + 'a) -> Builder<'a> {
        self.config = Box::new(f);
        self
    }

    /// Adjusts the [`Relay`] before it starts (breaker, timeouts, metrics renderer).
    pub fn relay(mut self, f: impl FnOnce(Relay) -> Relay + 'a) -> Builder<'a> {
        self.relay = Box::new(f);
        self
    }

    /// Starts the relay; returns once its app registry is loaded.
    pub async fn start(self) -> InProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = (self.config)(config(&self.id, &self.backend_url, dir.path()));
        std::fs::create_dir_all(&config.spool_dir).expect("spool dir");
        let (tls, ca_pem) = self.tls.unwrap_or_else(self_signed);
        let running = (self.relay)(Relay::new(config).with_tls(tls))
            .start()
            .await
            .expect("relay start");
        let registry = running.services.registry.clone();
        wait_until("app registry loaded", DEADLINE, || {
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

impl InProcess {
    /// Every service of the running relay (shard map, push hub, spool...).
    pub fn services(&self) -> &Services {
        &self.running.services
    }

    /// A relay `relay-test` forwarding to `backend_url`, to adjust before starting.
    pub fn builder<'a>(backend_url: &str) -> Builder<'a> {
        Builder {
            backend_url: backend_url.into(),
            id: "relay-test".into(),
            tls: None,
            config: Box::new(|c| c),
            relay: Box::new(|r| r),
        }
    }

    /// The configuration [`InProcess::builder`] starts from, with state under `dir`.
    pub fn config(backend_url: &str, dir: &Path) -> RelayConfig {
        config("relay-test", backend_url, dir)
    }

    /// Starts a relay with the defaults; returns once its app registry is loaded.
    pub async fn start(backend_url: &str) -> InProcess {
        InProcess::builder(backend_url).start().await
    }

    /// Starts a relay with `config` and `relay` adjusting the defaults.
    pub async fn start_with<'a>(
        backend_url: &str,
        config: impl FnOnce(RelayConfig) -> RelayConfig + 'a,
        relay: impl FnOnce(Relay) -> Relay + 'a,
    ) -> InProcess {
        InProcess::builder(backend_url)
            .config(config)
            .relay(relay)
            .start()
            .await
    }

    /// QUIC address.
    pub fn quic(&self) -> SocketAddr {
        self.running.addrs.quic
    }

    /// HTTPS address.
    pub fn https(&self) -> SocketAddr {
        self.running.addrs.https
    }

    /// Base URL of `/metrics`, `/healthz`, `/readyz`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.running.addrs.metrics)
    }

    /// Base URL of the admin API.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.running.addrs.admin)
    }

    /// A device connected over QUIC.
    pub async fn device(&self) -> Device {
        Device::connect(&self.ca_pem, self.quic()).await
    }
}

/// How to start a [`RelayProc`]; see [`RelayProc::builder`].
#[derive(Debug, Clone)]
pub struct ProcBuilder {
    bin: PathBuf,
    backend_url: String,
    id: String,
    dir: Option<PathBuf>,
    dev: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
    nofile: Option<u32>,
    log_level: String,
    listen: Option<[SocketAddr; 4]>,
    spool_dir: Option<Option<PathBuf>>,
    config_file: Option<PathBuf>,
    tls_files: Option<(PathBuf, PathBuf)>,
    log: Option<PathBuf>,
    name: Option<String>,
    ready_timeout: Duration,
}

impl ProcBuilder {
    /// The binary (default: `TERN_RELAY_BIN`, else `tern-relay` beside the running
    /// test's executable, where cargo builds it for the relay's own tests).
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> ProcBuilder {
        self.bin = bin.into();
        self
    }

    /// Relay id (default `relay-admin`).
    pub fn id(mut self, id: &str) -> ProcBuilder {
        self.id = id.into();
        self
    }

    /// State directory (default a temporary one, kept with the process).
    pub fn dir(mut self, dir: &Path) -> ProcBuilder {
        self.dir = Some(dir.to_owned());
        self
    }

    /// Without `--dev` (then `args` must name a certificate).
    pub fn no_dev(mut self) -> ProcBuilder {
        self.dev = false;
        self
    }

    /// The certificate and key files to serve (instead of `--dev`).
    pub fn tls_files(mut self, cert: &Path, key: &Path) -> ProcBuilder {
        self.tls_files = Some((cert.to_owned(), key.to_owned()));
        self.dev = false;
        self
    }

    /// Listen addresses (QUIC, HTTPS, metrics, admin) instead of loopback port 0:
    /// a relay restarted on the same ports.
    pub fn listen(
        mut self,
        quic: SocketAddr,
        https: SocketAddr,
        metrics: SocketAddr,
        admin: SocketAddr,
    ) -> ProcBuilder {
        self.listen = Some([quic, https, metrics, admin]);
        self
    }

    /// The spool directory (default `spool` in its directory); `None`: no
    /// `--spool-dir` argument (a config file names the spool).
    pub fn spool_dir(mut self, dir: Option<&Path>) -> ProcBuilder {
        self.spool_dir = Some(dir.map(Path::to_owned));
        self
    }

    /// The file its stderr is appended to (default `relay.log` in its directory).
    pub fn log(mut self, log: &Path) -> ProcBuilder {
        self.log = Some(log.to_owned());
        self
    }

    /// The name errors and the reader thread use (default the relay id).
    pub fn name(mut self, name: &str) -> ProcBuilder {
        self.name = Some(name.into());
        self
    }

    /// How long to wait for the ready line (default [`DEADLINE`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> ProcBuilder {
        self.ready_timeout = timeout;
        self
    }

    /// Extra command-line arguments.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> ProcBuilder {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Extra environment variables.
    pub fn envs<K: AsRef<str>, V: AsRef<str>>(
        mut self,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> ProcBuilder {
        self.env.extend(
            env.into_iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())),
        );
        self
    }

    /// Runs under `ulimit -n nofile`.
    pub fn nofile(mut self, nofile: u32) -> ProcBuilder {
        self.nofile = Some(nofile);
        self
    }

    /// `RUST_LOG` unless the caller's environment sets one (default `warn`).
    pub fn log_level(mut self, level: &str) -> ProcBuilder {
        self.log_level = level.into();
        self
    }

    /// Starts the relay and waits for its ready line; panics when it does not come.
    pub fn start(self) -> RelayProc {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the relay and waits for its ready line.
    pub fn try_start(self) -> crate::Result<RelayProc> {
        let (dir, temp) = match self.dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir().map_err(crate::io_err("tempdir"))?;
                (t.path().to_owned(), Some(t))
            }
        };
        let ca = dir.join("ca.pem");
        let mut cmd = match self.nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let [quic, https, metrics, admin] = self.listen.unwrap_or([any_port(); 4]);
        cmd.current_dir(&dir)
            .args(["--quic-listen", &quic.to_string()])
            .args(["--https-listen", &https.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--admin-listen", &admin.to_string()]);
        if let Some(file) = &self.config_file {
            // The file names the relay, its backend, spool and TLS.
            cmd.arg("--config").arg(file).arg("--dev-ca-out").arg(&ca);
        } else {
            cmd.args(["--relay-id", &self.id])
                .args(["--backend-url", &self.backend_url]);
            if let Some(spool) = self.spool_dir.unwrap_or_else(|| Some(dir.join("spool"))) {
                cmd.arg("--spool-dir").arg(spool);
            }
            cmd.arg("--admin-state-file").arg(dir.join("admin.json"));
            if self.dev {
                cmd.arg("--dev").arg("--dev-ca-out").arg(&ca);
            }
        }
        if let Some((cert, key)) = &self.tls_files {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        cmd.args(&self.args)
            .env("RUST_LOG", crate::proc::rust_log(&self.log_level))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let log = self.log.unwrap_or_else(|| dir.join("relay.log"));
        let name = self.name.unwrap_or_else(|| self.id.clone());
        let (proc, ready) = Proc::spawn(&name, cmd, &log, self.ready_timeout)?;
        let addr = |key: &str| -> String { ready[key].as_str().unwrap_or_default().to_owned() };
        Ok(RelayProc {
            quic: addr("quic").parse().unwrap_or_else(|_| any_port()),
            https: addr("https").parse().unwrap_or_else(|_| any_port()),
            metrics: format!("http://{}", addr("metrics")),
            admin: format!("http://{}", addr("admin")),
            ca_pem: std::fs::read_to_string(&ca).unwrap_or_default(),
            dir,
            ready,
            proc,
            _temp: temp,
        })
    }
}

/// A `tern-relay` child process; SIGKILLed when dropped.
#[derive(Debug)]
pub struct RelayProc {
    /// The process (signals, exit, log tail).
    pub proc: Proc,
    /// Its ready line.
    pub ready: serde_json::Value,
    /// QUIC address.
    pub quic: SocketAddr,
    /// HTTPS address.
    pub https: SocketAddr,
    /// Base URL of `/metrics`, `/healthz`, `/readyz`.
    pub metrics: String,
    /// Base URL of the admin API.
    pub admin: String,
    /// PEM of the dev certificate (empty without `--dev`).
    pub ca_pem: String,
    /// Its state directory (spool, admin state, `relay.log`).
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// The relay binary next to the running test executable (cargo puts a package's
/// binaries in the directory above `deps/`), or `TERN_RELAY_BIN`.
pub fn default_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TERN_RELAY_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("tern-relay{}", std::env::consts::EXE_SUFFIX))
}

impl RelayProc {
    /// A relay forwarding to `backend_url`, to adjust before starting.
    pub fn builder(backend_url: &str) -> ProcBuilder {
        ProcBuilder {
            bin: default_bin(),
            backend_url: backend_url.into(),
            id: "relay-admin".into(),
            dir: None,
            dev: true,
            args: Vec::new(),
            env: Vec::new(),
            nofile: None,
            log_level: "warn".into(),
            listen: None,
            spool_dir: None,
            config_file: None,
            tls_files: None,
            log: None,
            name: None,
            ready_timeout: DEADLINE,
        }
    }

    /// A relay configured by the file `config` (its id, backend, spool and TLS; the
    /// listeners stay on loopback port 0 and a dev certificate's PEM is written to its
    /// directory), to adjust before starting.
    pub fn from_config_file(config: &Path) -> ProcBuilder {
        let mut builder = RelayProc::builder("");
        builder.config_file = Some(config.to_owned());
        builder
    }

    /// Starts the relay against `backend_url` in `dir` with extra `args` and `env`.
    pub fn start(backend_url: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> RelayProc {
        RelayProc::builder(backend_url)
            .dir(dir)
            .args(args)
            .envs(env.iter().copied())
            .start()
    }

    /// The admin token the relay generated (the file its ready line names).
    pub fn admin_token(&self) -> String {
        let file = self.ready["admin_token_file"]
            .as_str()
            .expect("a generated token file in the ready line");
        std::fs::read_to_string(file).expect("admin token file")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGTERM, then the exit status (panics when it does not exit within
    /// [`DEADLINE`]).
    pub fn terminate(mut self) -> ExitStatus {
        self.proc
            .terminate(DEADLINE)
            .expect("relay exits on SIGTERM")
    }

    /// Waits for the exit (within [`DEADLINE`]).
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.proc
            .wait_exit(DEADLINE)
            .expect("relay exits within the deadline")
    }

    /// SIGKILL, then reap (a crash).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Waits until the relay answers `/readyz` with 200.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.metrics);
        wait_until("relay ready", DEADLINE, || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// A device connected over QUIC.
    pub async fn device(&self) -> Device {
        Device::connect(&self.ca_pem, self.quic).await
    }

    /// The relay's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        crate::metrics::scrape(&self.metrics).await
    }
}

/// An authenticated client of a relay's admin API (bearer token, operator header).
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    operator: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client of the admin API at `base` with `token`, acting as `operator`.
    pub fn new(base: &str, token: &str, operator: &str) -> AdminClient {
        AdminClient {
            base: base.to_owned(),
            token: token.trim().to_owned(),
            operator: operator.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// A client of `relay`'s admin API with the token it generated.
    pub fn for_proc(relay: &RelayProc, operator: &str) -> AdminClient {
        AdminClient::new(&relay.admin, &relay.admin_token(), operator)
    }

    /// `method path` with an optional JSON body: the status and the reply (JSON, or
    /// the text as a JSON string).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("x-tern-operator", &self.operator);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("admin reply");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    async fn expect_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let what = format!("{method} {path}");
        let (status, reply) = self.call(method, path, body).await;
        assert_eq!(status, 200, "{what}: {reply}");
        reply
    }

    /// `GET path`, asserting 200.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        self.expect_ok(reqwest::Method::GET, path, None).await
    }

    /// `PUT path` with `body`, asserting 200.
    pub async fn put(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        self.expect_ok(reqwest::Method::PUT, path, Some(body)).await
    }

    /// `POST path` without a body: the status and the reply.
    pub async fn post(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, None).await
    }

    /// `DELETE path`, asserting 200.
    pub async fn delete(&self, path: &str) -> serde_json::Value {
        self.expect_ok(reqwest::Method::DELETE, path, None).await
    }

    /// `GET /admin/v1/status`, asserting 200.
    pub async fn status(&self) -> serde_json::Value {
        self.get("/admin/v1/status").await
    }
}
