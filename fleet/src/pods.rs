//! A fleet spread over processes ("pods"): `tern-fleet pod` hosts a slice of the
//! devices, the parent ([`Pods`]) drives them all and sums what they report.
//!
//! Why processes: a device holds about eight file descriptors of its own (its lock
//! file, journal segment, SQLite database and WAL, its UDP socket, its connections),
//! and one process may hold only so many (20,000 on the machine the figures in
//! `BENCHMARKS.md` come from), so ten thousand devices cannot live in one process. In a
//! pod the devices' uploaders run as tasks on one shared tokio runtime
//! ([`tern_sdk::upload::UploadConfig::runtime`]) instead of a thread and runtime each;
//! each device keeps its own store thread, journal, database, QUIC endpoint and
//! connections.
//!
//! The pod protocol is JSON lines: the pod prints `ready` (its devices, how many of
//! them each relay of the map owns) once every store is open, then takes commands on
//! stdin — `drive` (profile, rate, duration; answered by `progress` lines and
//! `driven`), `stop` (end a drive early), `flush`, `status` (answered by `status`),
//! `shutdown` (answered by `down`; so is the end of stdin).
//!
//! A replay (`tern-fleet run --replay-dir`, [`crate::replay`]) adds one command:
//! `replay` (a fleet device index and that device's recorded events, re-recorded
//! through its SDK; answered by `replayed` with the pod's cumulative
//! [`crate::replay::ReplayCounts`]). The parent paces the recording and sends each
//! batch to the pod hosting its device ([`Pods::pod_of`], [`Pods::send`],
//! [`Pods::lines`]), with at most [`crate::replay::WINDOW`] unanswered per pod.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tern_protocol::ShardMap;
use tern_testkit::proc::Proc;

use crate::devices::{BehaviourCounts, DeviceOptions, Fleet, Profile, UploadTotals};
use crate::{io_err, FleetError, Result};

/// Everything a pod needs to start its devices (written to a file it is given).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodSpec {
    /// App id.
    pub app_id: String,
    /// App key.
    pub app_key: String,
    /// The shard map devices start with.
    pub shard_map: ShardMap,
    /// PEM of the only CA devices trust.
    pub ca_pem: String,
    /// Events per batch at most.
    pub max_batch_events: u32,
    /// Batch age, ms.
    pub max_batch_age_ms: u64,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Request timeout, ms.
    pub request_timeout_ms: u64,
    /// First retry backoff, ms.
    pub retry_base_ms: u64,
    /// Identify every other device as a user.
    pub identify: bool,
    /// QUIC re-probe interval on the HTTPS fallback, ms.
    pub quic_reprobe_ms: u64,
    /// Each device sends from its own loopback address.
    pub own_address: bool,
    /// Group apply delay, ms.
    pub apply_delay_ms: u64,
    /// Devices' data directories are `root/device-<i>`.
    pub root: PathBuf,
    /// Worker threads of the pod's shared runtime.
    pub runtime_threads: usize,
    /// Niceness of pod processes (0 to 19): the simulated devices give way to the
    /// relays and the stub, the system under test, as they would on separate machines.
    /// On one machine with thousands of device threads, the kernel's per-thread fair
    /// share would otherwise starve the relays' few threads and measure that.
    pub nice: u8,
}

impl PodSpec {
    /// The spec for devices set up with `o`, their data under `root`.
    pub fn new(o: &DeviceOptions, root: &Path) -> PodSpec {
        let ms = |d: Duration| d.as_millis() as u64;
        PodSpec {
            app_id: o.app_id.clone(),
            app_key: o.app_key.clone(),
            shard_map: o.shard_map.clone(),
            ca_pem: o.ca_pem.clone(),
            max_batch_events: o.max_batch_events,
            max_batch_age_ms: ms(o.max_batch_age),
            connect_timeout_ms: ms(o.connect_timeout),
            request_timeout_ms: ms(o.request_timeout),
            retry_base_ms: ms(o.retry_base),
            identify: o.identify,
            quic_reprobe_ms: ms(o.quic_reprobe),
            own_address: o.own_address,
            apply_delay_ms: ms(o.apply_delay),
            root: root.to_owned(),
            runtime_threads: 1,
            nice: 19,
        }
    }

    /// The device options (without a runtime).
    pub fn options(&self) -> DeviceOptions {
        let ms = Duration::from_millis;
        DeviceOptions {
            max_batch_events: self.max_batch_events,
            max_batch_age: ms(self.max_batch_age_ms),
            connect_timeout: ms(self.connect_timeout_ms),
            request_timeout: ms(self.request_timeout_ms),
            retry_base: ms(self.retry_base_ms),
            identify: self.identify,
            quic_reprobe: ms(self.quic_reprobe_ms),
            own_address: self.own_address,
            apply_delay: ms(self.apply_delay_ms),
            ..DeviceOptions::new(
                &self.app_id,
                &self.app_key,
                self.shard_map.clone(),
                &self.ca_pem,
            )
        }
    }
}

/// A command to a pod.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum PodCommand {
    /// Record at `rate` events/s for `duration_ms` (or until `stop`).
    Drive {
        /// Behaviour of the devices.
        profile: Profile,
        /// Events per second across the pod's devices.
        rate: f64,
        /// How long, ms.
        duration_ms: u64,
    },
    /// End a drive now.
    Stop,
    /// Every device sends what it holds.
    Flush,
    /// Report a [`PodStatus`].
    Status,
    /// Re-record a recorded device's events on fleet device `device` (hosted by this
    /// pod) through the SDK's calls ([`crate::replay::PodReplayer`]).
    Replay {
        /// The fleet's device index.
        device: usize,
        /// The recorded events, in recorded order.
        events: Vec<tern_protocol::Event>,
    },
    /// Shut the devices down and exit.
    Shutdown,
}

/// What a pod reports on `status` (and the parent sums).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PodStatus {
    /// Devices.
    pub devices: usize,
    /// Events recorded by the driver's `track` calls.
    pub tracked: u64,
    /// Events recorded by any call (with session events): what the backend must hold.
    pub events_recorded: u64,
    /// `track` calls refused.
    pub refused: u64,
    /// Upload counters.
    pub totals: UploadTotals,
    /// What the profile played out.
    pub behaviour: BehaviourCounts,
}

impl PodStatus {
    fn add(&mut self, o: &PodStatus) {
        self.devices += o.devices;
        self.tracked += o.tracked;
        self.events_recorded += o.events_recorded;
        self.refused += o.refused;
        self.totals.add(&o.totals);
        self.behaviour.backgrounded += o.behaviour.backgrounded;
        self.behaviour.foregrounded += o.behaviour.foregrounded;
        self.behaviour.network_lost += o.behaviour.network_lost;
    }
}

fn status_of(fleet: &Fleet) -> PodStatus {
    PodStatus {
        devices: fleet.devices().len(),
        tracked: fleet.recorded(),
        events_recorded: fleet.events_recorded(),
        refused: fleet.refused(),
        totals: fleet.totals(),
        behaviour: fleet.behaviour(),
    }
}

fn emit(v: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The pod side: starts devices `first .. first + count` of `spec` and serves commands
/// from stdin until `shutdown` or its end.
pub fn serve(spec: &PodSpec, first: usize, count: usize) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(spec.runtime_threads.max(1))
        .thread_name("pod-uploaders")
        .enable_all()
        .build()
        .map_err(io_err("starting the pod's runtime"))?;
    let mut options = spec.options();
    options.runtime = Some(runtime.handle().clone());
    let started = Instant::now();
    let mut fleet = Fleet::start_range(first, count, &options, &spec.root)?;
    if !fleet.wait_ready(Duration::from_secs(120)) {
        return Err(FleetError::NotReady {
            what: format!("pod of devices {first}..{}", first + count),
            detail: "device stores did not open within 120 s".into(),
        });
    }
    emit(serde_json::json!({
        "event": "ready",
        "devices": count,
        "owners": fleet.owners(&spec.shard_map, &spec.app_id),
        "start_ms": started.elapsed().as_millis() as u64,
    }));

    // Commands are read on their own thread, so `stop` reaches a drive in progress.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<PodCommand>();
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("pod-commands".into())
            .spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<PodCommand>(&line) {
                        Ok(PodCommand::Stop) => stop.store(true, Ordering::Relaxed),
                        Ok(cmd) => {
                            if tx.send(cmd).is_err() {
                                break;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, %line, "not a pod command"),
                    }
                }
                // End of stdin: the parent is gone or done.
                let _ = tx.send(PodCommand::Shutdown);
            })
            .map_err(io_err("starting the command reader"))?;
    }
    let mut replayer = crate::replay::PodReplayer::default();
    while let Ok(cmd) = rx.recv() {
        match cmd {
            PodCommand::Drive {
                profile,
                rate,
                duration_ms,
            } => {
                stop.store(false, Ordering::Relaxed);
                let mut last = 0;
                fleet.drive_profile(
                    profile,
                    rate,
                    None,
                    Some(Duration::from_millis(duration_ms)),
                    &stop,
                    |n| {
                        if n != last {
                            last = n;
                            emit(serde_json::json!({"event": "progress", "tracked": n}));
                        }
                    },
                );
                emit(serde_json::json!({"event": "driven", "status": status_of(&fleet)}));
            }
            PodCommand::Flush => fleet.flush_all(),
            PodCommand::Status => {
                emit(serde_json::json!({"event": "status", "status": status_of(&fleet)}));
            }
            PodCommand::Replay { device, events } => {
                replayer.apply(fleet.devices(), first, device, &events);
                emit(serde_json::json!({"event": "replayed", "counts": replayer.counts()}));
            }
            PodCommand::Stop => {}
            PodCommand::Shutdown => break,
        }
    }
    fleet.shutdown(Duration::from_secs(5));
    drop(runtime);
    emit(serde_json::json!({"event": "down"}));
    Ok(())
}

/// One pod, seen from the parent.
#[derive(Debug)]
struct Pod {
    proc: Proc,
    count: usize,
    tracked: u64,
}

/// The parent side: a fleet of `tern-fleet pod` processes.
#[derive(Debug)]
pub struct Pods {
    pods: Vec<Pod>,
    owners: Vec<usize>,
    /// How long the slowest pod took to start its devices and open their stores.
    pub start_time: Duration,
}

impl Pods {
    /// Starts `n` devices in pods of at most `per_pod`, all at once, and waits until
    /// every pod is ready. `fleet_bin` is the `tern-fleet` binary; pod logs go to
    /// `log_dir/pod-<k>.log`.
    pub fn start(
        fleet_bin: &Path,
        n: usize,
        per_pod: usize,
        spec: &PodSpec,
        log_dir: &Path,
    ) -> Result<Pods> {
        let per_pod = per_pod.max(1);
        std::fs::create_dir_all(&spec.root)
            .map_err(io_err(format!("creating {}", spec.root.display())))?;
        let spec_file = log_dir.join("pod-spec.json");
        std::fs::write(
            &spec_file,
            serde_json::to_vec(spec).map_err(|e| FleetError::Io {
                what: "encoding the pod spec".into(),
                source: std::io::Error::other(e),
            })?,
        )
        .map_err(io_err(format!("writing {}", spec_file.display())))?;
        let started = Instant::now();
        let mut pods = Vec::new();
        let mut first = 0;
        while first < n {
            let count = per_pod.min(n - first);
            let k = pods.len();
            let mut cmd = Command::new("nice");
            cmd.arg("-n")
                .arg(spec.nice.min(19).to_string())
                .arg(fleet_bin)
                .arg("pod")
                .arg("--spec")
                .arg(&spec_file)
                .arg("--first")
                .arg(first.to_string())
                .arg("--count")
                .arg(count.to_string())
                .env("RUST_LOG", tern_testkit::proc::rust_log("warn"));
            let proc = Proc::start_commanded(
                &format!("pod-{k}"),
                cmd,
                &log_dir.join(format!("pod-{k}.log")),
            )?;
            pods.push(Pod {
                proc,
                count,
                tracked: 0,
            });
            first += count;
        }
        let mut owners = vec![0usize; spec.shard_map.nodes.len()];
        for pod in &mut pods {
            let ready = pod
                .proc
                .wait_line(|v| v["event"] == "ready", Duration::from_secs(300))?;
            if let Some(o) = ready["owners"].as_array() {
                for (i, c) in o.iter().enumerate() {
                    if let Some(slot) = owners.get_mut(i) {
                        *slot += c.as_u64().unwrap_or(0) as usize;
                    }
                }
            }
        }
        Ok(Pods {
            pods,
            owners,
            start_time: started.elapsed(),
        })
    }

    /// Processes.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// No pods.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// For each relay of the map, how many devices' routing keys it owns.
    pub fn owners(&self) -> &[usize] {
        &self.owners
    }

    /// Records at `rate` events/s across all devices (each pod its share) for
    /// `duration`, or until `stop` is set; `progress` gets the total of `track` calls
    /// about ten times a second. Returns the summed status at the end of the drive.
    pub fn drive(
        &mut self,
        profile: Profile,
        rate: f64,
        duration: Duration,
        stop: &AtomicBool,
        mut progress: impl FnMut(u64),
    ) -> Result<PodStatus> {
        let n: usize = self.pods.iter().map(|p| p.count).sum();
        for pod in &mut self.pods {
            let cmd = PodCommand::Drive {
                profile,
                rate: rate * pod.count as f64 / n as f64,
                duration_ms: duration.as_millis() as u64,
            };
            pod.proc
                .send(&serde_json::to_value(cmd).expect("serialisable"))?;
            pod.tracked = 0;
        }
        let mut done: Vec<Option<PodStatus>> = vec![None; self.pods.len()];
        let mut stop_sent = false;
        while done.iter().any(Option::is_none) {
            if stop.load(Ordering::Relaxed) && !stop_sent {
                stop_sent = true;
                for pod in &mut self.pods {
                    let _ = pod.proc.send(&serde_json::json!({"cmd": "stop"}));
                }
            }
            for (k, pod) in self.pods.iter_mut().enumerate() {
                for line in pod.proc.drain_lines() {
                    match line["event"].as_str() {
                        Some("progress") => pod.tracked = line["tracked"].as_u64().unwrap_or(0),
                        Some("driven") => {
                            let s: PodStatus = parse_status(&line, &pod.proc)?;
                            pod.tracked = s.tracked;
                            done[k] = Some(s);
                        }
                        _ => {}
                    }
                }
                if done[k].is_none() && !pod.proc.is_running() {
                    return Err(FleetError::NotReady {
                        what: pod.proc.name().to_owned(),
                        detail: format!("exited while driving; log:\n{}", pod.proc.log_tail(20)),
                    });
                }
            }
            progress(self.pods.iter().map(|p| p.tracked).sum());
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut sum = PodStatus::default();
        for s in done.iter().flatten() {
            sum.add(s);
        }
        Ok(sum)
    }

    /// The pod hosting fleet device `device` (devices are spread over the pods in
    /// order).
    pub fn pod_of(&self, device: usize) -> Option<usize> {
        let mut first = 0;
        for (k, pod) in self.pods.iter().enumerate() {
            if device < first + pod.count {
                return Some(k);
            }
            first += pod.count;
        }
        None
    }

    /// Sends `cmd` to pod `k`.
    pub fn send(&mut self, k: usize, cmd: &PodCommand) -> Result<()> {
        let pod = self.pods.get_mut(k).ok_or_else(|| FleetError::NotReady {
            what: format!("pod-{k}"),
            detail: "no such pod".into(),
        })?;
        let line = serde_json::to_value(cmd).map_err(|e| FleetError::Io {
            what: "encoding a pod command".into(),
            source: std::io::Error::other(e),
        })?;
        Ok(pod.proc.send(&line)?)
    }

    /// The JSON lines pod `k` printed since the last look; an error once it has exited
    /// (with the tail of its log).
    pub fn lines(&mut self, k: usize) -> Result<Vec<serde_json::Value>> {
        let Some(pod) = self.pods.get_mut(k) else {
            return Ok(Vec::new());
        };
        let lines = pod.proc.drain_lines();
        if lines.is_empty() && !pod.proc.is_running() {
            return Err(FleetError::NotReady {
                what: pod.proc.name().to_owned(),
                detail: format!("exited; log:\n{}", pod.proc.log_tail(20)),
            });
        }
        Ok(lines)
    }

    /// Every device sends what it holds now.
    pub fn flush_all(&mut self) -> Result<()> {
        for pod in &mut self.pods {
            pod.proc.send(&serde_json::json!({"cmd": "flush"}))?;
        }
        Ok(())
    }

    /// The summed status of every pod.
    pub fn status(&mut self) -> Result<PodStatus> {
        for pod in &mut self.pods {
            pod.proc.send(&serde_json::json!({"cmd": "status"}))?;
        }
        let mut sum = PodStatus::default();
        for pod in &mut self.pods {
            let line = pod
                .proc
                .wait_line(|v| v["event"] == "status", Duration::from_secs(60))?;
            sum.add(&parse_status(&line, &pod.proc)?);
        }
        Ok(sum)
    }

    /// Shuts every pod down (each device flushes its journal into its store), waiting
    /// up to `timeout` for all of them; a pod still running then is killed (its
    /// devices' journals keep what their stores lack).
    pub fn shutdown(&mut self, timeout: Duration) {
        for pod in &mut self.pods {
            let _ = pod.proc.send(&serde_json::json!({"cmd": "shutdown"}));
        }
        // One deadline for all: they shut down side by side.
        let deadline = Instant::now() + timeout;
        for pod in &mut self.pods {
            let left = deadline.saturating_duration_since(Instant::now());
            if pod.proc.wait_exit(left).is_none() {
                pod.proc.kill();
            }
        }
    }
}

fn parse_status(line: &serde_json::Value, proc: &Proc) -> Result<PodStatus> {
    serde_json::from_value(line["status"].clone()).map_err(|e| FleetError::NotReady {
        what: proc.name().to_owned(),
        detail: format!("unreadable status {line}: {e}"),
    })
}
