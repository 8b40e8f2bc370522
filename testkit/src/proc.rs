//! Child processes that announce readiness with one JSON line on stdout
//! (`{"event":"ready",...}`), with their stderr in a log file: the relay and stub
//! binaries, the fleet's device processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{io_err, Error, Result};

/// How a process started by [`Proc::spawn_or_exit`] turned out.
#[derive(Debug)]
pub enum Started {
    /// It printed its ready line.
    Ready(Proc, serde_json::Value),
    /// It exited first.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Its whole stderr log.
        log: String,
    },
}

/// A running child process; SIGKILLed when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    // A mutex only so that `Proc` is `Sync` (a cluster is shared across tasks).
    lines: std::sync::Mutex<mpsc::Receiver<serde_json::Value>>,
    /// Its stdin, when it takes commands ([`Proc::spawn_commanded`]).
    stdin: Option<std::process::ChildStdin>,
}

impl Proc {
    /// Starts `cmd` (stderr to `log`), and waits up to `timeout` for its ready line,
    /// which is returned.
    pub fn spawn(
        name: &str,
        cmd: Command,
        log: &Path,
        timeout: Duration,
    ) -> Result<(Proc, serde_json::Value)> {
        let mut proc = Proc::start(name, cmd, log, false)?;
        let ready = proc.wait_line(|v| v["event"] == "ready", timeout)?;
        Ok((proc, ready))
    }

    /// [`Proc::spawn`] for a process that takes commands as JSON lines on its stdin
    /// ([`Proc::send`]); closing it (dropping the `Proc`) tells the process to end.
    pub fn spawn_commanded(
        name: &str,
        cmd: Command,
        log: &Path,
        timeout: Duration,
    ) -> Result<(Proc, serde_json::Value)> {
        let mut proc = Proc::start(name, cmd, log, true)?;
        let ready = proc.wait_line(|v| v["event"] == "ready", timeout)?;
        Ok((proc, ready))
    }

    /// Starts a process that takes commands (as [`Proc::spawn_commanded`]) without
    /// waiting for its ready line: to start several at once, then
    /// [`Proc::wait_line`] for each.
    pub fn start_commanded(name: &str, cmd: Command, log: &Path) -> Result<Proc> {
        Proc::start(name, cmd, log, true)
    }

    /// Writes `command` as one JSON line to the process's stdin.
    pub fn send(&mut self, command: &serde_json::Value) -> Result<()> {
        use std::io::Write;
        let what = format!("writing a command to {}", self.name);
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(Error::Io {
                what,
                source: std::io::Error::other("its stdin is not piped"),
            });
        };
        let mut line = command.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(io_err(what))
    }

    /// Starts `cmd` (stderr to `log`) and waits up to `timeout` for either its ready
    /// line or its exit (a process expected to refuse to start).
    pub fn spawn_or_exit(
        name: &str,
        cmd: Command,
        log: &Path,
        timeout: Duration,
    ) -> Result<Started> {
        let mut proc = Proc::start(name, cmd, log, false)?;
        match proc.wait_line(|v| v["event"] == "ready", timeout) {
            Ok(ready) => Ok(Started::Ready(proc, ready)),
            Err(e) => match proc.wait_exit(Duration::from_secs(10)) {
                Some(status) => Ok(Started::Exited {
                    status,
                    log: proc.log_text(),
                }),
                None => Err(e),
            },
        }
    }

    /// Starts `cmd` with stdout read line by line (JSON lines kept for
    /// [`Proc::wait_line`]) and stderr appended to `log`.
    fn start(name: &str, mut cmd: Command, log: &Path, commanded: bool) -> Result<Proc> {
        let err_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err(format!("opening {}", log.display())))?;
        cmd.stdin(if commanded {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err_file));
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            what: name.to_owned(),
            source,
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
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
            .map_err(io_err("starting a reader thread"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            lines: std::sync::Mutex::new(rx),
            stdin,
        })
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

    fn not_ready(&self, detail: String) -> Error {
        Error::NotReady {
            what: self.name.clone(),
            detail: format!(
                "{detail}; log {}:\n{}",
                self.log.display(),
                self.log_tail(20)
            ),
        }
    }

    /// Everything the process wrote to its stderr log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
                .map_err(io_err(format!("waiting for {}", self.name)))?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(Error::NotReady {
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
        .map_err(|source| Error::Spawn {
            what: "kill".into(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Io {
            what: format!("kill -{name} {pid}"),
            source: std::io::Error::other(format!("exited with {status}")),
        })
    }
}

/// A loopback UDP port free right now, for a server that binds it later (a relay whose
/// address the shard map names before it starts). See [`free_port`].
pub fn free_udp_port() -> Result<u16> {
    free_port("UDP", |p| {
        std::net::UdpSocket::bind(("127.0.0.1", p)).map(drop)
    })
}

/// A loopback TCP port free right now, for a server that binds it later. See
/// [`free_port`].
pub fn free_tcp_port() -> Result<u16> {
    free_port("TCP", |p| {
        std::net::TcpListener::bind(("127.0.0.1", p)).map(drop)
    })
}

/// A port that `bind` can take now, drawn at random below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`). The kernel hands ports of that range to
/// every socket bound to port 0 — each simulated device's QUIC endpoint, every outgoing
/// TCP connection — so a port picked there (the usual "bind port 0, read it, close")
/// can be taken by a client of another test before the server binds it, and the server
/// fails with "address in use". Below the range only an explicit bind can take it.
/// A port is handed out once per process: two servers of one cluster, given their
/// ports before either has bound, never get the same one.
pub fn free_port(what: &str, bind: impl Fn(u16) -> std::io::Result<()>) -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    const LOW: u16 = 10_000;
    let high = ephemeral_low().unwrap_or(32_768);
    if high > LOW + 1_000 {
        for _ in 0..500 {
            let p = rand::random_range(LOW..high);
            if !handed_out.contains(&p) && bind(p).is_ok() {
                handed_out.insert(p);
                return Ok(p);
            }
        }
    }
    // No room below the ephemeral range (or all of it taken): the kernel's choice.
    let mut last = std::io::Error::other("no port");
    for _ in 0..100 {
        match std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
        {
            Ok(p) if !handed_out.contains(&p) && bind(p).is_ok() => {
                handed_out.insert(p);
                return Ok(p);
            }
            Ok(_) => {}
            Err(e) => last = e,
        }
    }
    Err(Error::Io {
        what: format!("finding a free {what} port"),
        source: last,
    })
}

/// The first port of the kernel's ephemeral range, if it can be read.
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `RUST_LOG` for a child: the caller's, or `default`.
pub fn rust_log(default: &str) -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| default.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_can_be_bound() {
        let high = ephemeral_low().unwrap_or(32_768);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let udp = free_udp_port().unwrap();
            assert!(seen.insert(udp), "{udp} handed out twice");
            assert!(udp < high, "{udp} is in the ephemeral range (from {high})");
            std::net::UdpSocket::bind(("127.0.0.1", udp)).unwrap();
            let tcp = free_tcp_port().unwrap();
            assert!(seen.insert(tcp), "{tcp} handed out twice");
            assert!(tcp < high, "{tcp} is in the ephemeral range (from {high})");
            std::net::TcpListener::bind(("127.0.0.1", tcp)).unwrap();
        }
    }
}
