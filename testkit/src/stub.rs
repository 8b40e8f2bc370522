//! The backend stub: in this process (its own thread and tokio runtime, reached over
//! HTTP like the binary, with the [`Stub`] handle for fault injection), or the
//! `tern-server-stub` binary as a child process with its ready line.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tern_server_stub::{Faults, Stub, StubConfig};

use crate::proc::Proc;
use crate::Result;

/// The stub's demo apps (`demo` with values, flags and a message; `shop`), from
/// `server-stub/demo/apps.toml`.
pub const DEMO_APPS: &str = include_str!("../../server-stub/demo/apps.toml");

/// One app, `demo` with key `demo-key` and a `greeting` value.
pub const MINIMAL_APPS: &str = r#"
[[apps]]
id = "demo"
keys = ["demo-key"]
[apps.values]
greeting = "hello"
"#;

/// [`DEMO_APPS`] as an owned string (for suites that append apps to it).
pub fn demo_apps() -> String {
    DEMO_APPS.to_owned()
}

/// The stub on loopback, served in this process on its own thread and runtime (so it
/// keeps serving whatever the test's runtime does: paused time, a blocked thread).
/// Stopped when dropped.
pub struct Backend {
    /// Base URL (`http://127.0.0.1:port`).
    pub url: String,
    /// The stub (fault injection, counters).
    pub stub: Arc<Stub>,
    /// An HTTP client for the stub's API.
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: Option<std::sync::mpsc::Receiver<()>>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("url", &self.url).finish()
    }
}

impl Backend {
    /// Starts the stub with the apps of `apps_toml` (panics when it cannot).
    pub async fn start(apps_toml: &str) -> Backend {
        Backend::start_blocking(apps_toml)
    }

    /// [`Backend::start`] for synchronous callers.
    pub fn start_blocking(apps_toml: &str) -> Backend {
        tern_relay::listen::tls::install_crypto_provider();
        let config = StubConfig::parse(apps_toml).expect("stub apps");
        let dir = tempfile::tempdir().expect("tempdir");
        let stub = Stub::open(config, dir.path()).expect("stub");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped) = std::sync::mpsc::channel::<()>();
        let served = stub.clone();
        std::thread::Builder::new()
            .name("stub".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("stub runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let _ = tern_server_stub::run(listener, served, async {
                        let _ = stop_rx.await;
                    })
                    .await;
                });
                let _ = stopped_tx.send(());
            })
            .expect("stub thread");
        Backend {
            url,
            stub,
            http: reqwest::Client::new(),
            stop: Some(stop),
            stopped: Some(stopped),
            _dir: dir,
        }
    }

    /// `GET {path}` as JSON, or a description of the failure.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{path}: {}", resp.status()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// `GET /verify/summary`.
    pub async fn summary(&self) -> serde_json::Value {
        self.get("/verify/summary").await.expect("stub summary")
    }

    /// Waits until the summary's `events_unique` reaches `n` or `limit` passes;
    /// returns the last summary either way.
    pub async fn wait_events(&self, n: u64, limit: Duration) -> serde_json::Value {
        crate::wait::poll_value(
            limit,
            || self.summary(),
            |s| s["events_unique"].as_u64() >= Some(n),
        )
        .await
    }

    /// The stub's `/metrics` text.
    pub async fn metrics(&self) -> String {
        crate::metrics::scrape(&self.url).await
    }

    /// The sum of a counter (all label sets) in the stub's `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        crate::metrics::sum(&self.metrics().await, name, &[])
    }

    /// `PUT /admin/apps/{app}/{path}` with a JSON body (`path`: `config`,
    /// `values/{key}`, `flags/{key}`); asserts success and returns the new bundle.
    pub async fn admin_put(
        &self,
        app: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let resp = self
            .http
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

    /// Edits a config value through the stub's admin API; returns the new bundle's
    /// ETag.
    pub async fn set_value(
        &self,
        app: &str,
        key: &str,
        value: serde_json::Value,
    ) -> tern_protocol::ETag {
        let bundle = self.admin_put(app, &format!("values/{key}"), &value).await;
        tern_protocol::ETag(bundle["etag"].as_str().expect("etag").to_owned())
    }

    /// The backend fails every request (connections aborted) or recovers.
    pub fn set_down(&self, down: bool) {
        self.stub.set_faults(Faults {
            down,
            ..Faults::default()
        });
    }

    /// `PUT /admin/faults` with `faults` (the stub's fault API, as an operator of the
    /// binary would call it); asserts success.
    pub async fn put_faults(&self, faults: serde_json::Value) {
        let resp = self
            .http
            .put(format!("{}/admin/faults", self.url))
            .json(&faults)
            .send()
            .await
            .expect("put faults");
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    /// Stops the server and waits until it has stopped.
    pub async fn stop(mut self) {
        self.halt();
        if let Some(stopped) = self.stopped.take() {
            let _ =
                tokio::task::spawn_blocking(move || stopped.recv_timeout(crate::DEADLINE)).await;
        }
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts the `tern-server-stub` binary `bin` serving `apps` (a file) with its data in
/// `data_dir` and stderr appended to `log`; returns the process and its base URL once
/// it printed its ready line.
pub fn spawn_process(
    bin: &Path,
    apps: &Path,
    data_dir: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<(Proc, String)> {
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--config")
        .arg(apps)
        .env("RUST_LOG", crate::proc::rust_log("warn"));
    let (proc, ready) = Proc::spawn("tern-server-stub", cmd, log, timeout)?;
    let listen = ready["listen"].as_str().unwrap_or_default();
    Ok((proc, format!("http://{listen}")))
}
