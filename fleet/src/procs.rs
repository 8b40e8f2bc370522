//! Child processes that announce readiness with one JSON line on stdout
//! (`{"event":"ready",...}`), with their stderr in a log file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{FleetError, Result};

/// A running child process; SIGKILLed when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    // A mutex only so that `Proc` is `Sync` (a cluster is shared across tasks).
    lines: std::sync::Mutex<mpsc::Receiver<serde_json::Value>>,
}

impl Proc {
    /// Starts `cmd` (stderr to `log`), and waits up to `timeout` for its ready line,
    /// which is returned.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        timeout: Duration,
    ) -> Result<(Proc, serde_json::Value)> {
        let err_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(crate::io_err(format!("opening {}", log.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_file));
        let mut child = cmd.spawn().map_err(|source| FleetError::Spawn {
            what: name.to_owned(),
            source,
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                // Every JSON line is passed on; the rest is ignored. Reading until EOF
                // keeps the child from blocking on a full pipe.
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        let _ = tx.send(v);
                    }
                }
            })
            .map_err(crate::io_err("starting a reader thread"))?;
        let mut proc = Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            lines: std::sync::Mutex::new(rx),
        };
        let ready = proc.wait_line(|v| v["event"] == "ready", timeout)?;
        Ok((proc, ready))
    }

    /// Waits for the next stdout JSON line matching `pred` (earlier lines are skipped).
    pub fn wait_line(
        &mut self,
        pred: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = self
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .recv_timeout(left.min(Duration::from_millis(100)));
            match next {
                Ok(v) if pred(&v) => return Ok(v),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(self.not_ready(format!("exited with {status}")));
                    }
                    if left.is_zero() {
                        return Err(self.not_ready(format!("no such line within {timeout:?}")));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    return Err(self.not_ready(format!("stdout closed (exit: {status:?})")));
                }
            }
        }
    }

    /// The JSON lines printed since the last look, without waiting.
    pub fn drain_lines(&mut self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_iter()
            .collect()
    }

    fn not_ready(&self, detail: String) -> FleetError {
        FleetError::NotReady {
            what: self.name.clone(),
            detail: format!(
                "{detail}; log {}:\n{}",
                self.log.display(),
                self.log_tail(20)
            ),
        }
    }

    /// The last `n` lines of the process's stderr log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `timeout` for the exit (SIGKILL after that, reported
    /// as an error).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        signal(self.child.id(), "TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(crate::io_err(format!("waiting for {}", self.name)))?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(FleetError::NotReady {
                    what: self.name.clone(),
                    detail: format!("did not exit within {timeout:?} of SIGTERM; killed"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a signal (`TERM`, `HUP`, ...) with `kill(1)`.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map_err(|source| FleetError::Spawn {
            what: "kill".into(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(FleetError::Io {
            what: format!("kill -{name} {pid}"),
            source: std::io::Error::other(format!("exited with {status}")),
        })
    }
}

/// A loopback UDP port free right now.
pub fn free_udp_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(crate::io_err("binding UDP"))?;
    Ok(s.local_addr().map_err(crate::io_err("local addr"))?.port())
}

/// A loopback TCP port free right now.
pub fn free_tcp_port() -> Result<u16> {
    let s = std::net::TcpListener::bind("127.0.0.1:0").map_err(crate::io_err("binding TCP"))?;
    Ok(s.local_addr().map_err(crate::io_err("local addr"))?.port())
}
