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
//! them each relay of the map owns — or, from a pod that does not rank relays itself,
//! each device's `ids` for the parent to rank) once every store is open, then takes
//! commands on stdin — `drive` (profile, rate, duration; answered by `progress` lines
//! and `driven`), `stop` (end a drive early), `flush`, `status` (answered by `status`),
//! `shutdown` (answered by `down`; so is the end of stdin). From `ready` on, a pod may
//! also print a `health` line whenever its devices' failed, HTTPS or failover request
//! counts changed (at most four a second; `tern-fleet pod` does), stamped with the wall
//! clock, from which the parent keeps a timeline ([`Pods::timeline`]) and the report
//! the time each storm took to settle.
//!
//! Two programs speak it ([`PodProgram`]): `tern-fleet pod` ([`serve`]), whose devices
//! are `tern-sdk` instances, and the Kotlin pod (`bindings/kotlin/src/fleet`, built by
//! `bindings/scripts/build-fleet-kotlin.sh`), whose devices are the Kotlin layer an
//! Android app links (`dev.tern.Tern` over the generated bindings and the native
//! library, on the host JVM).
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tern_protocol::{AppId, DeviceId, ShardMap};
use tern_testkit::proc::Proc;

use crate::devices::{BehaviourCounts, DeviceOptions, Fleet, Profile, UploadTotals};
use crate::exposures::ExposureCounts;
use crate::{io_err, FleetError, Result};

/// Everything a pod needs to start its devices (written to a file it is given). The
/// Kotlin pod sets the same on each `dev.tern.Tern` through `TernConfig.Builder`, its
/// own address included (`Devices.kt`); all but `runtime_threads`: a Kotlin device has
/// its own upload thread (`fleet/README.md`).
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
    /// Niceness of pod processes (0 to 19), which their devices' network tasks (the
    /// shared runtime) keep: the simulated devices give way to the relays and the stub,
    /// the system under test, as they would on separate machines. On one machine with
    /// thousands of device threads, the kernel's per-thread fair share would otherwise
    /// starve the relays' few threads and measure that.
    pub nice: u8,
    /// Niceness of the threads that record (the driver, and the devices' store and
    /// live-config threads, which it starts, and the runtime's blocking pool, which
    /// runs the uploaders' store calls), at least `nice`: recording gives way to
    /// the devices' network tasks, so that a device's handshake is not timed out by
    /// thousands of other devices' SQLite work, which a phone does not share its CPU
    /// with.
    #[serde(default = "recording_nice")]
    pub recording_nice: u8,
    /// Niceness of each pod's scheduling group (0 to 19; `None`: [`fair_group_nice`]
    /// of the number of pods). A pod runs in a session of its own, so where the kernel
    /// groups scheduling by session (Linux autogroup,
    /// `/proc/sys/kernel/sched_autogroup_enabled`) a pod's thousands of threads
    /// compete with the relays and the stub as one entity at this niceness, not as
    /// thousands of threads at theirs: per-thread niceness alone does not do that
    /// (ten thousand store threads at niceness 19 outweigh a relay's few at 0).
    #[serde(default)]
    pub group_nice: Option<u8>,
    /// Devices whose stores may be opening at once in a pod
    /// ([`DeviceOptions::max_opening`]).
    #[serde(default)]
    pub max_opening: usize,
    /// Flags every device reads before and after each drive, recording exposures
    /// ([`crate::exposures`]); empty: none.
    #[serde(default)]
    pub exposure_flags: Vec<String>,
    /// Devices alias a user before each drive and reset after it
    /// ([`crate::logins`]).
    #[serde(default)]
    pub logins: bool,
    /// Devices start as app 1.0 with lifecycle events, change networks, and half are
    /// updated to 2.0 after the drive ([`crate::context`]).
    #[serde(default)]
    pub app_updates: bool,
    /// Devices play a consent role around each drive ([`crate::consent`]).
    #[serde(default)]
    pub consent: bool,
    /// Devices set push tokens and report pushes around each drive ([`crate::push`]).
    #[serde(default)]
    pub push: bool,
}

fn recording_nice() -> u8 {
    19
}

/// The kernel's CPU weight of niceness 0 to 19 (`sched_prio_to_weight`).
const NICE_WEIGHT: [u32; 20] = [
    1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15,
];

/// The group niceness at which `pods` pods together weigh no more than one group at
/// niceness 0 — the relays, the stub and the driver, in the driver's session: when
/// both want the CPU, the simulated devices and the system under test get about half
/// each. Neither side starves the other: relays paused for seconds look dead to their
/// devices, and devices paused for seconds time their own handshakes out.
pub fn fair_group_nice(pods: usize) -> u8 {
    let share = NICE_WEIGHT[0] / pods.max(1) as u32;
    NICE_WEIGHT
        .iter()
        .position(|&w| w <= share)
        .unwrap_or(NICE_WEIGHT.len() - 1) as u8
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
            runtime_threads: 4,
            nice: 10,
            recording_nice: recording_nice(),
            group_nice: None,
            max_opening: 16,
            exposure_flags: Vec::new(),
            logins: false,
            app_updates: false,
            consent: false,
            push: false,
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

/// Which layer a fleet's devices run: what a pod process hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// `tern-sdk` instances in `tern-fleet pod` processes.
    #[default]
    Rust,
    /// The Kotlin layer (`dev.tern.Tern`) on the host JVM, in Kotlin pod processes.
    Kotlin,
}

impl Layer {
    /// `rust` or `kotlin`.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Rust => "rust",
            Layer::Kotlin => "kotlin",
        }
    }

    /// Whether the devices report per-request upload counters (requests over QUIC and
    /// HTTPS, failovers, `Retry` replies, busy push-backs, rejected batches). The Kotlin
    /// layer's `TernStats` does not have them: a Kotlin pod reports them as 0.
    pub fn reports_requests(self) -> bool {
        self == Layer::Rust
    }
}

/// Where `bindings/scripts/build-fleet-kotlin.sh` puts the Kotlin pod, beside the
/// `tern-fleet` binary of the same profile.
pub const KOTLIN_POD_DIR: &str = "tern-fleet-kotlin";

/// The program a pod process runs, and the one place its command line is built.
#[derive(Clone, Debug)]
pub enum PodProgram {
    /// `tern-fleet pod`: devices are `tern-sdk` instances.
    Rust {
        /// The `tern-fleet` binary.
        fleet_bin: PathBuf,
    },
    /// The Kotlin pod, `java ... dev.tern.fleet.PodKt`: devices are `dev.tern.Tern`.
    Kotlin {
        /// The `java` launcher.
        java: PathBuf,
        /// The directory `build-fleet-kotlin.sh` filled: `tern-fleet-kotlin.jar`,
        /// `lib/*.jar`, `native/libtern_bindings.so`.
        dir: PathBuf,
    },
}

impl PodProgram {
    /// The Kotlin pod in `dir`, or, without one, in [`KOTLIN_POD_DIR`] beside
    /// `fleet_bin`; run with `$JAVA_HOME/bin/java` when `JAVA_HOME` is set, else `java`
    /// from `PATH`. An error names the missing file and the script that builds it.
    pub fn kotlin(dir: Option<&Path>, fleet_bin: &Path) -> Result<PodProgram> {
        let dir = match dir {
            Some(d) => d.to_owned(),
            None => fleet_bin
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(KOTLIN_POD_DIR),
        };
        let profile = if fleet_bin.parent().and_then(Path::file_name) == Some("release".as_ref()) {
            " --release"
        } else {
            ""
        };
        for need in [
            dir.join("tern-fleet-kotlin.jar"),
            dir.join("lib"),
            dir.join("native"),
        ] {
            if !need.exists() {
                return Err(FleetError::NotReady {
                    what: "the Kotlin pod".into(),
                    detail: format!(
                        "{} is missing: build it with bindings/scripts/build-fleet-kotlin.sh{profile}, \
                         or pass --kotlin-pod DIR",
                        need.display()
                    ),
                });
            }
        }
        let java = std::env::var_os("JAVA_HOME")
            .map(|h| PathBuf::from(h).join("bin").join("java"))
            .unwrap_or_else(|| PathBuf::from("java"));
        Ok(PodProgram::Kotlin { java, dir })
    }

    /// The layer its devices run.
    pub fn layer(&self) -> Layer {
        match self {
            PodProgram::Rust { .. } => Layer::Rust,
            PodProgram::Kotlin { .. } => Layer::Kotlin,
        }
    }

    /// The command that hosts devices `first .. first + count` of the spec in
    /// `spec_file`, at the spec's niceness.
    fn command(&self, spec: &PodSpec, spec_file: &Path, first: usize, count: usize) -> Command {
        // A Rust pod lowers its recording threads itself (`serve`); a JVM cannot
        // name the threads the layer starts, so a Kotlin pod runs at the recording
        // niceness throughout.
        let nice = match self {
            PodProgram::Rust { .. } => spec.nice,
            PodProgram::Kotlin { .. } => spec.recording_nice.max(spec.nice),
        };
        let mut cmd = Command::new("nice");
        cmd.arg("-n").arg(nice.min(19).to_string());
        own_session(&mut cmd);
        match self {
            PodProgram::Rust { fleet_bin } => {
                cmd.arg(fleet_bin)
                    .arg("pod")
                    .env("RUST_LOG", tern_testkit::proc::rust_log("warn"));
            }
            PodProgram::Kotlin { java, dir } => {
                let sep = if cfg!(windows) { ";" } else { ":" };
                let classpath = format!(
                    "{}{sep}{}",
                    dir.join("tern-fleet-kotlin.jar").display(),
                    dir.join("lib").join("*").display()
                );
                cmd.arg(java)
                    .arg(format!(
                        "-Djna.library.path={}",
                        dir.join("native").display()
                    ))
                    .arg("-cp")
                    .arg(classpath)
                    .arg("dev.tern.fleet.PodKt");
            }
        }
        cmd.arg("--spec")
            .arg(spec_file)
            .arg("--first")
            .arg(first.to_string())
            .arg("--count")
            .arg(count.to_string());
        cmd
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
    /// Flag reads and the exposures they recorded (zero without `exposure_flags`).
    #[serde(default)]
    pub exposures: ExposureCounts,
    /// Logins and logouts (zero without `logins`).
    #[serde(default)]
    pub logins: crate::logins::LoginCounts,
    /// App updates and network changes (zero without `app_updates`).
    #[serde(default)]
    pub app_updates: crate::context::UpdateCounts,
    /// Consent calls and counters (zero without `consent`).
    #[serde(default)]
    pub consent: crate::consent::ConsentCounts,
    /// Push tokens and pushes (zero without `push`).
    #[serde(default)]
    pub push: crate::push::PushCounts,
}

impl PodStatus {
    fn add(&mut self, o: &PodStatus) {
        self.logins.add(&o.logins);
        self.app_updates.add(&o.app_updates);
        self.consent.add(&o.consent);
        self.push.add(&o.push);
        self.devices += o.devices;
        self.tracked += o.tracked;
        self.events_recorded += o.events_recorded;
        self.refused += o.refused;
        self.totals.add(&o.totals);
        self.behaviour.backgrounded += o.behaviour.backgrounded;
        self.behaviour.foregrounded += o.behaviour.foregrounded;
        self.behaviour.network_lost += o.behaviour.network_lost;
        self.behaviour.killed += o.behaviour.killed;
        self.behaviour.relaunched += o.behaviour.relaunched;
        self.behaviour.relaunch_failed += o.behaviour.relaunch_failed;
        self.exposures.add(&o.exposures);
    }
}

fn status_of(
    fleet: &Fleet,
    reads: &ExposureCounts,
    logins: &crate::logins::LoginCounts,
    updates: &crate::context::UpdateCounts,
    consent: &crate::consent::ConsentCounts,
    push: crate::push::PushCounts,
) -> PodStatus {
    PodStatus {
        app_updates: *updates,
        consent: consent.with_devices(fleet.devices()),
        push,
        exposures: ExposureCounts::of(fleet.devices(), fleet.retired_exposures(), reads),
        logins: *logins,
        devices: fleet.devices().len(),
        tracked: fleet.recorded(),
        events_recorded: fleet.events_recorded(),
        refused: fleet.refused(),
        totals: fleet.totals(),
        behaviour: fleet.behaviour(),
    }
}

/// Threads of a pod's runtime that run store calls at once: beyond that, devices'
/// store calls queue (each device still waits for its own).
const MAX_STORE_CALLS: usize = 16;

/// Makes `cmd` start a session of its own (Unix): its own scheduling group where the
/// kernel groups by session (see [`PodSpec::group_nice`]). A pod still ends with its
/// stdin, so it does not outlive the driver.
#[allow(unsafe_code)]
fn own_session(cmd: &mut Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: `setsid` is async-signal-safe and touches no memory; it fails only
        // for a process group leader, which a freshly forked child is not.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    #[cfg(not(unix))]
    let _ = cmd;
}

/// Sets the niceness of the scheduling group (Linux autogroup) of process `pid`,
/// which must lead a session of its own ([`own_session`]). Fails where the kernel
/// has no autogroups or has them turned off.
fn set_group_nice(pid: u32, nice: u8) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let enabled = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")?;
        if enabled.trim() != "1" {
            return Err(std::io::Error::other("autogroup is turned off"));
        }
        std::fs::write(format!("/proc/{pid}/autogroup"), nice.min(19).to_string())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (pid, nice);
        Err(std::io::Error::other("no scheduling groups on this OS"))
    }
}

/// Sets the calling thread's niceness to `nice` (Linux: niceness is per thread, and
/// threads it starts inherit it). Raising niceness needs no privilege; failure only
/// costs fidelity, so it is logged.
#[allow(unsafe_code)]
fn lower_this_threads_priority(nice: u8) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread, no memory passed.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, i32::from(nice.min(19)))
        };
        if rc != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not lower the recording threads' priority"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
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
    // The runtime's workers run the devices' network tasks at the pod's niceness; the
    // threads of its blocking pool, which run the uploaders' store calls (SQLite
    // transactions, see `UploadConfig::runtime`), are recording work: they lower their
    // own priority as they start. The workers are the first threads to start.
    let workers = spec.runtime_threads.max(1);
    let started_threads = Arc::new(AtomicUsize::new(0));
    let runtime = {
        let started_threads = started_threads.clone();
        let recording_nice = spec.recording_nice.max(spec.nice);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .max_blocking_threads(MAX_STORE_CALLS)
            .thread_name("pod-uploaders")
            .on_thread_start(move || {
                if started_threads.fetch_add(1, Ordering::SeqCst) >= workers {
                    lower_this_threads_priority(recording_nice);
                }
            })
            .enable_all()
            .build()
            .map_err(io_err("starting the pod's runtime"))?
    };
    // Nothing is spawned until every worker has started (and counted itself).
    let deadline = Instant::now() + Duration::from_secs(10);
    while started_threads.load(Ordering::SeqCst) < workers && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    // The runtime's threads exist now (at the pod's niceness); the threads this one
    // starts from here on (devices' store and live-config threads) inherit the
    // recording niceness.
    lower_this_threads_priority(spec.recording_nice.max(spec.nice));
    let mut options = spec.options();
    options.runtime = Some(runtime.handle().clone());
    options.max_opening = spec.max_opening;
    if spec.app_updates {
        crate::context::configure(&mut options);
    }
    // How late the devices' runtime runs a 10 ms timer: the simulator's own delay,
    // reported in the health lines (from before the devices start, so the fleet's
    // start storm is covered).
    let lag = Arc::new(AtomicU64::new(0));
    {
        let lag = lag.clone();
        runtime.spawn(async move {
            let tick = Duration::from_millis(10);
            loop {
                let t = tokio::time::Instant::now();
                tokio::time::sleep(tick).await;
                let late = t.elapsed().saturating_sub(tick);
                lag.fetch_max(late.as_millis() as u64, Ordering::Relaxed);
            }
        });
    }
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

    let health_done = Arc::new(AtomicBool::new(false));
    let health = spawn_health(fleet.devices().to_vec(), lag, health_done.clone())?;

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
    let mut reads = ExposureCounts::default();
    let read_flags = |fleet: &Fleet, reads: &mut ExposureCounts| {
        if !spec.exposure_flags.is_empty() {
            crate::exposures::read_flags(fleet.devices(), &spec.exposure_flags, reads);
        }
    };
    let mut logins = crate::logins::LoginCounts::default();
    let mut updates = crate::context::UpdateCounts::default();
    let mut consent = crate::consent::ConsentCounts::default();
    let mut push = crate::push::PushPod::default();
    while let Ok(cmd) = rx.recv() {
        match cmd {
            PodCommand::Drive {
                profile,
                rate,
                duration_ms,
            } => {
                stop.store(false, Ordering::Relaxed);
                if spec.logins {
                    crate::logins::login(fleet.devices(), first, &mut logins);
                }
                if spec.consent {
                    crate::consent::before_drive(fleet.devices(), first, &mut consent);
                }
                if spec.push {
                    push.before_drive(fleet.devices(), first);
                }
                read_flags(&fleet, &mut reads);
                if spec.app_updates {
                    crate::context::before_drive(&fleet, first, &mut updates);
                }
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
                read_flags(&fleet, &mut reads);
                if spec.logins {
                    crate::logins::logout(fleet.devices(), &mut logins);
                }
                if spec.app_updates {
                    crate::context::after_drive(&mut fleet, first, &mut updates);
                }
                if spec.consent {
                    crate::consent::after_drive(fleet.devices(), first, &mut consent);
                }
                if spec.push {
                    push.after_drive(fleet.devices(), first);
                }
                emit(
                    serde_json::json!({"event": "driven", "status": status_of(&fleet, &reads, &logins, &updates, &consent, push.counts(first))}),
                );
            }
            PodCommand::Flush => fleet.flush_all(),
            PodCommand::Status => {
                emit(
                    serde_json::json!({"event": "status", "status": status_of(&fleet, &reads, &logins, &updates, &consent, push.counts(first))}),
                );
            }
            PodCommand::Replay { device, events } => {
                replayer.apply(fleet.devices(), first, device, &events);
                emit(serde_json::json!({"event": "replayed", "counts": replayer.counts()}));
            }
            PodCommand::Stop => {}
            PodCommand::Shutdown => break,
        }
    }
    health_done.store(true, Ordering::Relaxed);
    let _ = health.join();
    fleet.shutdown(Duration::from_secs(5));
    drop(runtime);
    emit(serde_json::json!({"event": "down"}));
    Ok(())
}

/// The request counts a `health` line carries, summed over a pod's devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Requests that failed (busy included).
    pub failures: u64,
    /// Requests a relay pushed back.
    pub busy: u64,
    /// Requests acknowledged over HTTPS.
    pub https_ok: u64,
    /// Requests that went to a relay other than the owner.
    pub failovers: u64,
    /// The longest a 10 ms timer on the pod's device runtime fired late since the last
    /// line, ms (over pods: the longest).
    #[serde(default)]
    pub runtime_lag_ms: u64,
}

impl Health {
    fn of(devices: &[tern_sdk::Tern]) -> Health {
        let mut h = Health::default();
        for d in devices {
            let r = d.stats().upload.router;
            h.failures += r.failures;
            h.busy += r.busy;
            h.https_ok += r.https_ok;
            h.failovers += r.failovers;
        }
        h
    }

    fn add(&mut self, o: &Health) {
        self.failures += o.failures;
        self.busy += o.busy;
        self.https_ok += o.https_ok;
        self.failovers += o.failovers;
        self.runtime_lag_ms = self.runtime_lag_ms.max(o.runtime_lag_ms);
    }

    /// Anything that is not a plain QUIC success to the owner: failed requests, HTTPS
    /// use, failovers.
    pub fn troubles(&self) -> u64 {
        self.failures + self.https_ok + self.failovers
    }
}

/// Seconds since the Unix epoch, by the wall clock (comparable across the pods and the
/// parent, which share a machine).
pub fn wall_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Prints a `health` line every 250 ms in which the devices' counts changed, until
/// `done`.
fn spawn_health(
    devices: Vec<tern_sdk::Tern>,
    lag: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pod-health".into())
        .spawn(move || {
            let mut last = Health::default();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let mut h = Health::of(&devices);
                h.runtime_lag_ms = lag.swap(0, Ordering::Relaxed);
                if h != last {
                    last = h;
                    emit(serde_json::json!({
                        "event": "health",
                        "at": wall_seconds(),
                        "health": h,
                    }));
                }
            }
        })
        .map_err(io_err("starting the health reporter"))
}

/// One pod, seen from the parent.
#[derive(Debug)]
struct Pod {
    proc: Proc,
    count: usize,
    tracked: u64,
    health: Health,
}

/// The parent side: a fleet of `tern-fleet pod` processes.
#[derive(Debug)]
pub struct Pods {
    pods: Vec<Pod>,
    owners: Vec<usize>,
    timeline: Vec<(f64, Health)>,
    layer: Layer,
    /// How long the slowest pod took to start its devices and open their stores.
    pub start_time: Duration,
}

impl Pods {
    /// Starts `n` devices in `tern-fleet pod` processes of at most `per_pod`, all at
    /// once, and waits until every pod is ready. `fleet_bin` is the `tern-fleet`
    /// binary; pod logs go to `log_dir/pod-<k>.log`.
    pub fn start(
        fleet_bin: &Path,
        n: usize,
        per_pod: usize,
        spec: &PodSpec,
        log_dir: &Path,
    ) -> Result<Pods> {
        let program = PodProgram::Rust {
            fleet_bin: fleet_bin.to_owned(),
        };
        Pods::start_with(&program, n, per_pod, spec, log_dir)
    }

    /// [`Pods::start`] with the pods running `program`.
    pub fn start_with(
        program: &PodProgram,
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
        let group_nice = spec
            .group_nice
            .unwrap_or_else(|| fair_group_nice(n.div_ceil(per_pod)));
        while first < n {
            let count = per_pod.min(n - first);
            let k = pods.len();
            let proc = Proc::start_commanded(
                &format!("pod-{k}"),
                program.command(spec, &spec_file, first, count),
                &log_dir.join(format!("pod-{k}.log")),
            )?;
            if let Err(e) = set_group_nice(proc.pid(), group_nice) {
                if k == 0 {
                    eprintln!(
                        "  warning: the pods share the relays' scheduling group ({e}): \
                         under load, their threads may starve the relays"
                    );
                }
            }
            pods.push(Pod {
                proc,
                count,
                tracked: 0,
                health: Health::default(),
            });
            first += count;
        }
        let mut owners = vec![0usize; spec.shard_map.nodes.len()];
        for pod in &mut pods {
            let ready = pod
                .proc
                .wait_line(|v| v["event"] == "ready", Duration::from_secs(300))?;
            let counts = match ready["owners"].as_array() {
                Some(o) => o.iter().map(|c| c.as_u64().unwrap_or(0) as usize).collect(),
                None => owners_of_ids(&ready, &spec.shard_map, &spec.app_id, pod.proc.name())?,
            };
            for (slot, c) in owners.iter_mut().zip(counts) {
                *slot += c;
            }
        }
        Ok(Pods {
            pods,
            owners,
            timeline: Vec::new(),
            layer: program.layer(),
            start_time: started.elapsed(),
        })
    }

    /// The layer the devices run.
    pub fn layer(&self) -> Layer {
        self.layer
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
            for (k, slot) in done.iter_mut().enumerate() {
                for line in self.pods[k].proc.drain_lines() {
                    let pod = &mut self.pods[k];
                    match line["event"].as_str() {
                        Some("health") => self.absorb_health(k, &line),
                        Some("progress") => pod.tracked = line["tracked"].as_u64().unwrap_or(0),
                        Some("driven") => {
                            let s: PodStatus = parse_status(&line, &pod.proc)?;
                            pod.tracked = s.tracked;
                            *slot = Some(s);
                        }
                        _ => {}
                    }
                }
                let pod = &mut self.pods[k];
                if slot.is_none() && !pod.proc.is_running() {
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

    fn absorb_health(&mut self, k: usize, line: &serde_json::Value) {
        let Ok(h) = serde_json::from_value::<Health>(line["health"].clone()) else {
            return;
        };
        self.pods[k].health = h;
        let mut sum = Health::default();
        for pod in &self.pods {
            sum.add(&pod.health);
        }
        let at = line["at"].as_f64().unwrap_or_else(wall_seconds);
        self.timeline.push((at, sum));
    }

    /// Reads what the pods printed since the last call (their `health` lines) without
    /// waiting.
    pub fn poll(&mut self) {
        for k in 0..self.pods.len() {
            for line in self.pods[k].proc.drain_lines() {
                if line["event"] == "health" {
                    self.absorb_health(k, &line);
                }
            }
        }
    }

    /// The devices' summed [`Health`] each time it changed: (wall-clock seconds, as
    /// [`wall_seconds`], counts).
    pub fn timeline(&self) -> &[(f64, Health)] {
        &self.timeline
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
        let (health, lines): (Vec<_>, Vec<_>) =
            lines.into_iter().partition(|l| l["event"] == "health");
        for line in &health {
            self.absorb_health(k, line);
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
        for k in 0..self.pods.len() {
            let line = self.wait_event(k, "status", Duration::from_secs(60))?;
            sum.add(&parse_status(&line, &self.pods[k].proc)?);
        }
        Ok(sum)
    }

    /// Waits for pod `k`'s next `event` line; the `health` lines before it go into the
    /// timeline, anything else is dropped.
    fn wait_event(
        &mut self,
        k: usize,
        event: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.pods[k]
                .proc
                .wait_line(|v| v["event"] == event || v["event"] == "health", left)?;
            if line["event"] != "health" {
                return Ok(line);
            }
            self.absorb_health(k, &line);
        }
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

/// For each relay of `map`, how many of the devices a `ready` line lists as `ids`
/// (`[{"device": id, "user": id or null}, ...]`) it owns: the routing rule of
/// `tern_protocol::routing`, applied here for pods that do not rank relays themselves.
fn owners_of_ids(
    ready: &serde_json::Value,
    map: &ShardMap,
    app: &str,
    pod: &str,
) -> Result<Vec<usize>> {
    let bad = |detail: String| FleetError::NotReady {
        what: pod.to_owned(),
        detail,
    };
    let ids = ready["ids"]
        .as_array()
        .ok_or_else(|| bad(format!("ready line with neither owners nor ids: {ready}")))?;
    let app = AppId::new(app);
    let mut counts = vec![0; map.nodes.len()];
    for id in ids {
        let device = id["device"]
            .as_str()
            .and_then(|d| DeviceId::parse(d).ok())
            .ok_or_else(|| bad(format!("ready line with a bad device id: {id}")))?;
        let key = tern_protocol::routing::routing_key(id["user"].as_str(), &device);
        if let Some(owner) = tern_protocol::routing::owner(map, &app, &key) {
            if let Some(i) = map.nodes.iter().position(|n| n.id == owner.id) {
                counts[i] += 1;
            }
        }
    }
    Ok(counts)
}

fn parse_status(line: &serde_json::Value, proc: &Proc) -> Result<PodStatus> {
    serde_json::from_value(line["status"].clone()).map_err(|e| FleetError::NotReady {
        what: proc.name().to_owned(),
        detail: format!("unreadable status {line}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_together_weigh_no_more_than_the_stack() {
        assert_eq!(fair_group_nice(1), 0);
        assert_eq!(fair_group_nice(2), 4);
        assert_eq!(fair_group_nice(10), 11);
        assert_eq!(fair_group_nice(0), 0);
        assert_eq!(fair_group_nice(1000), 19);
        for pods in 1..=60 {
            let w = NICE_WEIGHT[usize::from(fair_group_nice(pods))] as usize;
            assert!(w * pods <= 1024 || fair_group_nice(pods) == 19, "{pods}");
        }
    }
    use tern_protocol::{NodeState, RelayId, RelayNode};

    fn map() -> ShardMap {
        ShardMap {
            version: 1,
            nodes: (1..=3)
                .map(|i| RelayNode {
                    id: RelayId::new(format!("relay-{i}")),
                    quic_addr: format!("127.0.0.1:{}", 4000 + i),
                    https_url: format!("https://127.0.0.1:{}", 5000 + i),
                    weight: 1,
                    state: NodeState::Active,
                })
                .collect(),
        }
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_kotlin_pod_is_the_jvm_on_the_built_jar_with_the_rust_pods_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let bin_dir = dir.path().join("release");
        let pod = bin_dir.join(KOTLIN_POD_DIR);
        for d in ["lib", "native"] {
            std::fs::create_dir_all(pod.join(d)).unwrap();
        }
        std::fs::write(pod.join("tern-fleet-kotlin.jar"), b"").unwrap();
        let program = PodProgram::kotlin(None, &bin_dir.join("tern-fleet")).unwrap();
        assert_eq!(program.layer(), Layer::Kotlin);
        let spec = PodSpec::new(
            &DeviceOptions::new("demo", "demo-key", map(), "pem"),
            dir.path(),
        );
        let a = args(&program.command(&spec, Path::new("/w/pod-spec.json"), 10, 5));
        let cp = format!(
            "{}:{}",
            pod.join("tern-fleet-kotlin.jar").display(),
            pod.join("lib/*").display()
        );
        let tail = [
            "-cp",
            &cp,
            "dev.tern.fleet.PodKt",
            "--spec",
            "/w/pod-spec.json",
            "--first",
            "10",
            "--count",
            "5",
        ];
        assert_eq!(&a[..2], ["-n", "19"]);
        assert!(a[2].ends_with("java"), "{a:?}");
        assert_eq!(
            a[3],
            format!("-Djna.library.path={}", pod.join("native").display())
        );
        assert_eq!(&a[4..], tail);

        let rust = PodProgram::Rust {
            fleet_bin: "/bin/tern-fleet".into(),
        };
        assert_eq!(rust.layer(), Layer::Rust);
        let a = args(&rust.command(&spec, Path::new("/w/pod-spec.json"), 10, 5));
        assert_eq!(&a[2..4], ["/bin/tern-fleet", "pod"]);
        assert_eq!(&a[4..], &tail[3..]);
    }

    #[test]
    fn a_missing_kotlin_pod_names_the_script_that_builds_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = PodProgram::kotlin(None, &dir.path().join("release/tern-fleet"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bindings/scripts/build-fleet-kotlin.sh --release"),
            "{e}"
        );
        assert!(e.contains("tern-fleet-kotlin.jar is missing"), "{e}");
        let e = PodProgram::kotlin(Some(dir.path()), Path::new("target/debug/tern-fleet"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("build-fleet-kotlin.sh, or pass --kotlin-pod"),
            "{e}"
        );
    }

    #[test]
    fn owners_of_listed_ids_follow_the_routing_rule() {
        let map = map();
        let devices: Vec<DeviceId> = (0..60).map(|_| DeviceId::random()).collect();
        let ids: Vec<serde_json::Value> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let user = (i % 2 == 1).then(|| format!("user-{i}"));
                serde_json::json!({"device": d.to_string(), "user": user})
            })
            .collect();
        let mut expected = vec![0; 3];
        for (i, d) in devices.iter().enumerate() {
            let user = (i % 2 == 1).then(|| format!("user-{i}"));
            let key = tern_protocol::routing::routing_key(user.as_deref(), d);
            let owner = tern_protocol::routing::owner(&map, &AppId::new("demo"), &key).unwrap();
            expected[map.nodes.iter().position(|n| n.id == owner.id).unwrap()] += 1;
        }
        let ready = serde_json::json!({"event": "ready", "ids": ids});
        let owners = owners_of_ids(&ready, &map, "demo", "pod-0").unwrap();
        assert_eq!(owners, expected);
        assert_eq!(owners.iter().sum::<usize>(), 60);
        assert!(owners_of_ids(
            &serde_json::json!({"event": "ready"}),
            &map,
            "demo",
            "pod-0"
        )
        .is_err());
        let bad = serde_json::json!({"ids": [{"device": "nope", "user": null}]});
        assert!(owners_of_ids(&bad, &map, "demo", "pod-0").is_err());
    }
}
