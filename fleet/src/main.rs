//! `tern-fleet`: the local Tern stack with simulated devices, and a delivery report.
//!
//! `tern-fleet run` (the default) starts `tern-server-stub` and three `tern-relay`
//! processes on loopback (local-disk spools, a temporary work directory), then a fleet
//! of simulated devices in `tern-fleet pod` processes — each device a real `tern-sdk`
//! with its own SQLite store — records events at the requested rate, applies the chaos
//! asked for, waits until the backend has every event, prints the delivery report and
//! exits non-zero if anything was lost. With `--replay-dir` the devices replay a relay's
//! recording instead (`tern_fleet::replay`): one simulated device per recorded device,
//! each recorded event recorded again through the SDK at the recorded pace × `--speed`.
//!
//! `tern-fleet pod` hosts a slice of a fleet (see `tern_fleet::pods`); `tern-fleet
//! device` is one device as its own process (used by the end-to-end tests to SIGKILL a
//! device mid-upload).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tern_fleet::cluster::{Cluster, ClusterConfig};
use tern_fleet::devices::{start_device, DeviceOptions, Profile};
use tern_fleet::pods::{PodProgram, PodSpec, Pods};
use tern_fleet::replay::{RecordingSummary, ReplayOptions, ReplayReport};
use tern_fleet::report::{FleetFacts, Report};
use tern_protocol::ShardMap;
use tern_testkit::bins::Binaries;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The local Tern stack with simulated devices, and a delivery report"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start the stack, drive the fleet, print the delivery report (the default).
    Run(RunArgs),
    /// Run one simulated device as this process.
    Device(DeviceArgs),
    /// Start only the stack (stub + relays) and keep it running until SIGTERM or
    /// Ctrl-C: for tests in other languages (the Kotlin host suite). Writes `stack.env`
    /// (stub URL, shard-map and certificate paths) into the work directory once every
    /// relay is ready, and prints `ready <path of stack.env>`.
    Stack(StackArgs),
    /// Host devices `first .. first + count` of a fleet, driven by a parent
    /// `tern-fleet run` over stdin/stdout (JSON lines).
    #[command(hide = true)]
    Pod(PodArgs),
}

#[derive(Args, Debug, Clone)]
struct PodArgs {
    /// The pod spec (JSON) the parent wrote.
    #[arg(long)]
    spec: PathBuf,
    /// First device index.
    #[arg(long)]
    first: usize,
    /// Devices.
    #[arg(long)]
    count: usize,
}

/// Where the relays forward accepted batches.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum SinkArg {
    /// The stub's `POST /v1/ingest` (the report reads its `/verify/*`).
    Backend,
    /// A Kafka-protocol broker (tansu) started with the stack; the report reads the
    /// topic back. Config still comes from the stub.
    Kafka,
}

/// Device behaviour profiles.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProfileArg {
    /// Always foreground and online; 100-event batches cut after 250 ms, 1 s connect
    /// timeout: the stack's throughput.
    FastCut,
    /// The SDK's defaults (100 events / 30 s batching, 3 s connect timeout), sessions
    /// in the foreground and spells in the background (flushing), network losses.
    Realistic,
}

#[derive(Args, Debug, Clone)]
struct StackArgs {
    /// Relays in the cluster.
    #[arg(long, default_value_t = 1)]
    relays: usize,
    /// Work directory for logs, data, `shard_map.json`, `cert.pem` and `stack.env`.
    #[arg(long)]
    work_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 50)]
    devices: usize,
    /// Events per second across the whole fleet.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// How long devices record events (e.g. 20s, 1m, 500ms).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Relays in the cluster.
    #[arg(long, default_value_t = 3)]
    relays: usize,
    /// How devices behave.
    #[arg(long, value_enum, default_value_t = ProfileArg::FastCut)]
    profile: ProfileArg,
    /// Devices per `tern-fleet pod` process (a device holds about eight file
    /// descriptors; a process may hold `ulimit -n`).
    #[arg(long, default_value_t = 1000)]
    devices_per_pod: usize,
    /// Niceness of the pods' device network tasks (0 to 19); their recording
    /// threads (driver, store, live-config threads and uploaders' store calls) always
    /// run at 19. Below 19, devices' handshakes are not starved by their pod-mates'
    /// SQLite work; at 19, recording gets more of the CPU and handshakes time out.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=19))]
    pod_nice: u8,
    /// Niceness of each pod's scheduling group (0 to 19; Linux autogroup, each pod in
    /// a session of its own): how the pods as a whole share the CPU with the relays
    /// and the stub. Per-thread niceness alone cannot: thousands of device threads at
    /// 19 outweigh a relay's few at 0. Default: the pods together weigh about as much
    /// as the stack (11 for ten pods).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=19))]
    pod_group_nice: Option<u8>,
    /// SIGKILL the relay owning the most devices this far into the run.
    #[arg(long, value_parser = parse_duration)]
    kill_relay_at: Option<Duration>,
    /// Restart the killed relay this long after the kill.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    restart_after: Duration,
    /// Take the backend down this far into the run ...
    #[arg(long, value_parser = parse_duration)]
    backend_outage_at: Option<Duration>,
    /// ... for this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    backend_outage_for: Duration,
    /// Block UDP (QUIC) to every relay this far into the run ...
    #[arg(long, value_parser = parse_duration)]
    block_udp_at: Option<Duration>,
    /// ... for this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    block_udp_for: Duration,
    /// Drop this share of UDP datagrams on the device-relay path (0.0..1.0).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Add this delay on the device-relay path (both directions, UDP and TCP).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    delay: Duration,
    /// Give up waiting for delivery after this long once recording ended.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    deliver_timeout: Duration,
    /// Keep the stack running after the report until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Work directory for logs and data (default: a temporary one, removed at exit).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where the relays forward: the stub (`backend`) or a Kafka broker started with
    /// the stack (`kafka`; tansu from the tool cache or `TERN_TANSU`).
    #[arg(long, value_enum, default_value_t = SinkArg::Backend)]
    sink: SinkArg,
    /// No progress bars (plain lines).
    #[arg(long)]
    quiet: bool,
    /// Replay a relay's recording instead of generating events: the root of the object
    /// store holding it (the recording relay's spool directory, or a copy of its
    /// `record/` tree). One simulated device per recorded device; `--devices`, `--rate`
    /// and `--duration` do not apply.
    #[arg(long, conflicts_with_all = ["devices", "rate", "duration"])]
    replay_dir: Option<PathBuf>,
    /// The recording's prefix in `--replay-dir`: `record` (every relay's segments) or
    /// `record/<relay-id>`.
    #[arg(long, default_value = "record", requires = "replay_dir")]
    replay_prefix: String,
    /// Speed-up of the recording's pacing (10 = ten times as fast; 0 = as fast as the
    /// devices take it).
    #[arg(long, default_value_t = 1.0, requires = "replay_dir")]
    speed: f64,
    /// Recorded devices replayed at most (one simulated device each); the events of
    /// devices beyond are skipped and counted.
    #[arg(long, default_value_t = tern_fleet::replay::DEFAULT_MAX_DEVICES, requires = "replay_dir")]
    replay_max_devices: usize,
    /// Record every relay's accepted traffic from the start (`PUT /admin/v1/record`,
    /// every batch, private by default) into `<work-dir>/relay-<i>/spool/record/`, to
    /// replay later with `--replay-dir`.
    #[arg(long, requires = "work_dir")]
    record: bool,
    /// What the devices run: `rust` (`tern-sdk` in `tern-fleet pod` processes) or
    /// `kotlin` (the Kotlin layer, `dev.tern.Tern`, on the host JVM; build it first with
    /// `bindings/scripts/build-fleet-kotlin.sh [--release]`).
    #[arg(long, value_enum, default_value_t = LayerArg::Rust)]
    layer: LayerArg,
    /// Where the Kotlin pod is (default: `tern-fleet-kotlin/` beside this binary).
    #[arg(long, env = "TERN_FLEET_KOTLIN_POD")]
    kotlin_pod: Option<PathBuf>,
    /// Experiment exposures: devices read the demo app's flags before and after
    /// recording (each read records an exposure once per flag, variant, unit and config
    /// version), the config changes halfway through (a new version), and the report
    /// compares the exposures the devices recorded with those the stub stored.
    #[arg(long, conflicts_with = "replay_dir")]
    exposures: bool,
    /// Logins: each device aliases a user before recording and resets (logs out)
    /// after; the report compares the aliases the devices made with the stub's alias
    /// table (`fleet/src/logins.rs`).
    #[arg(long, conflicts_with = "replay_dir")]
    logins: bool,
    /// App updates: devices are installed as app 1.0 with lifecycle events on, half
    /// move to cellular, and after the drive the even ones are updated to 2.0; the
    /// report compares installs, updates and opens with the stub's contexts view
    /// (`fleet/src/context.rs`).
    #[arg(long, conflicts_with = "replay_dir")]
    app_updates: bool,
    /// Consent: devices start pending and grant after each drive, deny messaging and
    /// record impressions, or request deletion after each drive (by index); the report
    /// compares what they did with the stub's deletions and identities
    /// (`fleet/src/consent.rs`). Not with `--push` or `--app-updates`: their checks
    /// count what every device sent, and consent withholds part of it by design
    /// (messaging denied: no token, no push events; a deletion: new device and install
    /// ids).
    #[arg(long, conflicts_with_all = ["replay_dir", "push", "app_updates"])]
    consent: bool,
    /// Push notifications: devices set push tokens before recording; after, they report
    /// pushes received and opened, half rotate their token and a third change user; the
    /// report compares the tokens and pushes with the stub's push view
    /// (`fleet/src/push.rs`).
    #[arg(long, conflicts_with = "replay_dir")]
    push: bool,
}

/// What simulated devices run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LayerArg {
    /// `tern-sdk` instances.
    Rust,
    /// The Kotlin layer an Android app links, on the host JVM.
    Kotlin,
}

#[derive(Args, Debug, Clone)]
struct DeviceArgs {
    /// The device's data directory (its store survives restarts).
    #[arg(long)]
    data_dir: PathBuf,
    /// Shard map (JSON file).
    #[arg(long)]
    shard_map: PathBuf,
    /// PEM of the CA to trust.
    #[arg(long)]
    ca: PathBuf,
    /// App id.
    #[arg(long, default_value = "demo")]
    app: String,
    /// App key.
    #[arg(long, default_value = "demo-key")]
    key: String,
    /// Events to record.
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// Events per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// After recording, keep uploading and never shut down: print a `status` line
    /// (`queued`, `retries`, `store_resets`, `reset_unknown`) whenever it changes, until
    /// the process is killed (for tests that kill an app without a shutdown).
    #[arg(long)]
    hold: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 20s, 500ms, 2m)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("`{s}`: a duration must be a non-negative number"));
    }
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        other => return Err(format!("`{s}`: unknown unit `{other}` (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Device(args)) => device(args),
        Some(Cmd::Run(args)) => run(args),
        Some(Cmd::Stack(args)) => stack(args),
        Some(Cmd::Pod(args)) => pod(args),
        None => run(cli.run),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tern-fleet: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(mut args: RunArgs) -> anyhow::Result<i32> {
    if !(0.0..1.0).contains(&args.loss) {
        bail!("--loss must be in 0.0..1.0, got {}", args.loss);
    }
    if args.devices == 0 || args.relays == 0 {
        bail!("--devices and --relays must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be positive");
    }
    if args.exposures && args.sink != SinkArg::Backend {
        bail!("--exposures needs the backend sink (the Kafka read-back does not count exposures)");
    }
    if args.app_updates && args.sink != SinkArg::Backend {
        bail!("--app-updates needs the backend sink (the Kafka read-back does not count lifecycle events)");
    }
    if args.consent && args.sink != SinkArg::Backend {
        bail!("--consent needs the backend sink (the Kafka read-back does not count consent)");
    }
    if args.logins && args.sink != SinkArg::Backend {
        bail!("--logins needs the backend sink (the Kafka read-back does not count logins)");
    }
    if args.push && args.sink != SinkArg::Backend {
        bail!("--push needs the backend sink (the Kafka read-back does not count pushes)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // A replay: what the recording holds decides the devices (read before the stack
    // starts, so a bad directory costs nothing).
    let replay = match &args.replay_dir {
        Some(dir) => Some(scan_recording(&rt, dir, &args)?),
        None => None,
    };
    if let Some((_, summary)) = &replay {
        args.devices = summary.devices_replayed as usize;
    }
    let bins = Binaries::beside_current_exe()?;
    let program = match args.layer {
        LayerArg::Rust => PodProgram::Rust {
            fleet_bin: bins.fleet.clone(),
        },
        LayerArg::Kotlin => PodProgram::kotlin(args.kotlin_pod.as_deref(), &bins.fleet)?,
    };
    let impair = args.block_udp_at.is_some() || args.loss > 0.0 || !args.delay.is_zero();
    let config = ClusterConfig {
        relays: args.relays,
        impair,
        work_dir: args.work_dir.clone(),
        kafka: args.sink == SinkArg::Kafka,
        ..ClusterConfig::default()
    };
    println!(
        "starting the stack: tern-server-stub{} and {} relays ...",
        if config.kafka {
            ", a Kafka broker (tansu)"
        } else {
            ""
        },
        args.relays
    );
    let cluster = rt.block_on(Cluster::start(bins, config))?;
    if impair {
        cluster.impair_all(|i| i.set_delay(args.delay, args.delay / 4));
        for r in &cluster.relays {
            r.udp.set_loss(args.loss);
        }
    }
    println!(
        "  stub     {}  (/verify/summary, /admin/*)",
        cluster.stub_url
    );
    if let Some(k) = &cluster.kafka {
        println!(
            "  kafka    {}  topic {} (the relays' sink; the report reads it back)",
            k.bootstrap(),
            tern_fleet::kafkalog::TOPIC
        );
    }
    for (r, node) in cluster.relays.iter().zip(&cluster.shard_map.nodes) {
        println!(
            "  {}  quic {}  https {}  metrics http://{}/metrics",
            r.id.as_str(),
            node.quic_addr,
            node.https_url,
            r.metrics
        );
    }
    println!("  work dir {}", cluster.dir().display());
    if args.record {
        rt.block_on(tern_fleet::replay::record_every_relay(&cluster))?;
        println!(
            "  recording every relay's traffic into {}",
            cluster.dir().join("relay-<i>/spool/record/").display()
        );
    }

    let (options, profile) = match args.profile {
        ProfileArg::FastCut => (
            DeviceOptions::new(
                "demo",
                "demo-key",
                cluster.shard_map.clone(),
                &cluster.ca_pem,
            ),
            Profile::FastCut,
        ),
        ProfileArg::Realistic => (
            DeviceOptions::app_defaults(
                "demo",
                "demo-key",
                cluster.shard_map.clone(),
                &cluster.ca_pem,
            ),
            Profile::realistic(),
        ),
    };
    let mut spec = PodSpec::new(&options, &cluster.dir().join("devices"));
    spec.nice = args.pod_nice;
    spec.group_nice = args.pod_group_nice;
    // Replayed devices identify as the recording says.
    spec.identify &= replay.is_none();
    if args.exposures {
        spec.exposure_flags = tern_fleet::exposures::DEMO_FLAGS
            .iter()
            .map(|f| f.to_string())
            .collect();
    }
    spec.logins = args.logins;
    spec.app_updates = args.app_updates;
    spec.consent = args.consent;
    spec.push = args.push;
    let pods_n = args.devices.div_ceil(args.devices_per_pod.max(1));
    println!(
        "starting {} devices ({} layer) in {pods_n} processes ...",
        args.devices,
        program.layer().name()
    );
    let mut fleet = Pods::start_with(
        &program,
        args.devices,
        args.devices_per_pod,
        &spec,
        cluster.dir(),
    )?;
    println!(
        "  every device store open after {:.1} s",
        fleet.start_time.as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: finishing the run");
                stop.store(true, Ordering::Relaxed);
            }
        });
    }

    let planned = match &replay {
        Some((_, summary)) => summary.events_to_replay(),
        None => (args.rate * args.duration.as_secs_f64()) as u64,
    };
    let bars = MultiProgress::new();
    if args.quiet {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {msg}")
        .expect("template")
        .progress_chars("=> ");
    let rec_bar = bars.add(ProgressBar::new(planned).with_style(style.clone()));
    rec_bar.set_prefix("recorded");
    let del_bar = bars.add(ProgressBar::new(planned).with_style(style));
    del_bar.set_prefix("delivered");

    // The backend's count, polled while the fleet records.
    let delivered = Arc::new(AtomicU64::new(0));
    let chaos_log = Arc::new(std::sync::Mutex::new(Vec::<(Duration, String)>::new()));
    let start = Instant::now();
    let start_wall = tern_fleet::pods::wall_seconds();
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let owners = fleet.owners().to_vec();
    let victim = owners
        .iter()
        .enumerate()
        .max_by_key(|(_, n)| **n)
        .map(|(i, _)| i)
        .unwrap_or(0);
    let chaos = rt.spawn(chaos_plan(
        cluster.clone(),
        args.clone(),
        victim,
        owners[victim],
        chaos_log.clone(),
        bars.clone(),
    ));
    let poller = {
        let (cluster, delivered, del_bar) = (cluster.clone(), delivered.clone(), del_bar.clone());
        rt.spawn(async move {
            loop {
                let s = { cluster.lock().await.summary().await };
                if let Ok(s) = s {
                    let n = s["events_unique"].as_u64().unwrap_or(0);
                    delivered.store(n, Ordering::Relaxed);
                    del_bar.set_position(n);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let mut last_line = 0;
    let mut on_progress = |n: u64| {
        rec_bar.set_position(n);
        if args.quiet && n / 10_000 > last_line {
            last_line = n / 10_000;
            println!("recorded {n}");
        }
    };
    let (driven, replay_run) = match &replay {
        Some((replay_options, _)) => {
            let run = tern_fleet::rehearse::drive(
                rt.handle(),
                &mut fleet,
                replay_options,
                args.devices,
                &stop,
                &mut on_progress,
            )?;
            (fleet.status()?, Some(run))
        }
        None => (
            fleet.drive(profile, args.rate, args.duration, &stop, &mut on_progress)?,
            None,
        ),
    };
    let record_time = start.elapsed();
    // Every event the devices recorded, session events included: what the backend
    // must hold.
    let mut recorded = driven.events_recorded;
    rec_bar.set_length(replay_run.as_ref().map_or(driven.tracked, |r| r.events));
    rec_bar.finish();
    del_bar.set_length(recorded);
    fleet.flush_all()?;
    // Chaos that is still pending (e.g. the restart after a kill) completes first.
    rt.block_on(async { chaos.await.ok() });

    let deadline = Instant::now() + args.deliver_timeout;
    let mut last_flush = Instant::now();
    loop {
        while delivered.load(Ordering::Relaxed) < recorded && Instant::now() < deadline {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if last_flush.elapsed() >= Duration::from_secs(1) {
                fleet.flush_all()?;
                last_flush = Instant::now();
            }
            fleet.poll();
            std::thread::sleep(Duration::from_millis(200));
        }
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        // Events the stores recorded by themselves after the drive's count (push
        // tokens, lifecycle events, deletion requests applied later) count too: done
        // when the count is stable and the devices hold nothing unsent.
        let now = fleet.status()?;
        if now.events_recorded <= recorded && now.totals.queued_events == 0 {
            break;
        }
        recorded = recorded.max(now.events_recorded);
        del_bar.set_length(recorded);
        fleet.flush_all()?;
        last_flush = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
    }
    fleet.poll();
    poller.abort();
    let deliver_time = start.elapsed();
    del_bar.finish();
    let status = fleet.status()?;
    let chaos_done = chaos_log.lock().expect("chaos log").clone();
    let mut markers = vec![(0.0, "fleet start".to_owned())];
    markers.extend(chaos_done.iter().map(|(at, line)| {
        let what = line.split_once(": ").map_or(line.as_str(), |(_, w)| w);
        (at.as_secs_f64(), what.to_owned())
    }));
    let timeline = fleet
        .timeline()
        .iter()
        .map(|(at, h)| (at - start_wall, *h))
        .collect();
    let report = rt.block_on(async {
        let c = cluster.lock().await;
        Report::collect(
            &c,
            FleetFacts {
                devices: args.devices,
                pods: fleet.len(),
                profile: match args.profile {
                    ProfileArg::FastCut => "fast-cut".into(),
                    ProfileArg::Realistic => "realistic".into(),
                },
                layer: fleet.layer(),
                start_time: fleet.start_time,
                recorded,
                totals: status.totals,
                behaviour: status.behaviour,
                record_time,
                deliver_time,
                chaos: chaos_done.into_iter().map(|(_, line)| line).collect(),
                markers,
                timeline,
                exposures: args.exposures.then_some(status.exposures),
            },
        )
        .await
    })?;
    let update_report = if args.app_updates {
        Some(rt.block_on(async {
            let c = cluster.lock().await;
            tern_fleet::context::UpdateReport::collect(
                status.app_updates,
                status.behaviour.relaunched,
                &c,
                "demo",
            )
            .await
        })?)
    } else {
        None
    };
    let login_report = if args.logins {
        Some(rt.block_on(async {
            let c = cluster.lock().await;
            tern_fleet::logins::LoginReport::collect(status.logins, &c, "demo").await
        })?)
    } else {
        None
    };
    let consent_report = if args.consent {
        Some(rt.block_on(async {
            let c = cluster.lock().await;
            tern_fleet::consent::ConsentReport::collect(status.consent, &c, "demo").await
        })?)
    } else {
        None
    };
    let push_report = if args.push {
        Some(rt.block_on(async {
            let c = cluster.lock().await;
            tern_fleet::push::PushReport::collect(status.push, &c, "demo").await
        })?)
    } else {
        None
    };
    let replay_report = match (replay, replay_run) {
        (Some((replay_options, summary)), Some(run)) => Some(rt.block_on(async {
            let c = cluster.lock().await;
            ReplayReport::collect(&c, &replay_options, summary, run, recorded).await
        })?),
        _ => None,
    };
    println!();
    print!("{}", report.render());
    if let Some(r) = &replay_report {
        print!("{}", r.render());
    }
    if let Some(r) = &login_report {
        print!("{}", r.render());
    }
    if let Some(r) = &update_report {
        print!("{}", r.render());
    }
    if let Some(r) = &consent_report {
        print!("{}", r.render());
    }
    if let Some(r) = &push_report {
        print!("{}", r.render());
    }
    if let Some(path) = &args.json {
        let mut json = serde_json::to_value(&report)?;
        if let Some(r) = &replay_report {
            json["replay"] = serde_json::to_value(r)?;
        }
        if let Some(r) = &login_report {
            json["logins"] = serde_json::to_value(r)?;
        }
        if let Some(r) = &update_report {
            json["app_updates"] = serde_json::to_value(r)?;
        }
        if let Some(r) = &consent_report {
            json["consent"] = serde_json::to_value(r)?;
        }
        if let Some(r) = &push_report {
            json["push"] = serde_json::to_value(r)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.keep_running && !stop.load(Ordering::Relaxed) {
        println!("the stack keeps running; Ctrl-C to stop");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fleet.shutdown(Duration::from_secs(30));
    rt.block_on(async { cluster.lock().await.shutdown() });
    let replay_ok = replay_report.as_ref().is_none_or(ReplayReport::ok);
    let logins_ok = login_report
        .as_ref()
        .is_none_or(tern_fleet::logins::LoginReport::ok);
    let updates_ok = update_report
        .as_ref()
        .is_none_or(tern_fleet::context::UpdateReport::ok);
    let consent_ok = consent_report
        .as_ref()
        .is_none_or(tern_fleet::consent::ConsentReport::ok);
    let push_ok = push_report
        .as_ref()
        .is_none_or(tern_fleet::push::PushReport::ok);
    Ok(
        if report.ok() && replay_ok && logins_ok && updates_ok && consent_ok && push_ok {
            0
        } else {
            1
        },
    )
}

/// Reads the recording to replay once: what it holds, printed, and the options.
fn scan_recording(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    args: &RunArgs,
) -> anyhow::Result<(ReplayOptions, RecordingSummary)> {
    if !(args.speed.is_finite() && args.speed >= 0.0) {
        bail!(
            "--speed must be 0 (as fast as possible) or more, got {}",
            args.speed
        );
    }
    if args.replay_max_devices == 0 {
        bail!("--replay-max-devices must be at least 1");
    }
    let options = ReplayOptions::new(dir, &args.replay_prefix)
        .with_speed(args.speed)
        .with_max_devices(args.replay_max_devices);
    println!(
        "reading the recording {} in {} ...",
        args.replay_prefix,
        dir.display()
    );
    let s = rt.block_on(tern_fleet::replay::scan(&options))?;
    println!(
        "  {} segments ({} unreadable, skipped), {} batches, {} events, {} devices, {:.1} s of traffic",
        s.segments,
        s.segments_unreadable,
        s.batches,
        s.events,
        s.devices,
        s.span().as_secs_f64()
    );
    for u in &s.unreadable {
        println!("  skipped {}: {}", u.key, u.reason);
    }
    if s.devices > s.devices_replayed {
        println!(
            "  the recording holds {} devices; replaying the first {} to appear (--replay-max-devices): the other {} devices' {} events are skipped",
            s.devices,
            s.devices_replayed,
            s.devices - s.devices_replayed,
            s.events_over_cap
        );
    }
    if s.events_to_replay() == 0 {
        bail!(
            "no recorded events to replay under {} in {}",
            args.replay_prefix,
            dir.display()
        );
    }
    if args.speed > 0.0 {
        println!(
            "  at {}x the replay takes about {:.1} s",
            args.speed,
            s.span().as_secs_f64() / args.speed
        );
    }
    Ok((options, s))
}

/// Applies the chaos switches at their times, logging what was done.
async fn chaos_plan(
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    args: RunArgs,
    victim: usize,
    victim_devices: usize,
    log: Arc<std::sync::Mutex<Vec<(Duration, String)>>>,
    bars: MultiProgress,
) {
    let start = tokio::time::Instant::now();
    let mut steps: Vec<(Duration, &str)> = Vec::new();
    if let Some(at) = args.kill_relay_at {
        steps.push((at, "kill"));
        steps.push((at + args.restart_after, "restart"));
    }
    if let Some(at) = args.backend_outage_at {
        steps.push((at, "backend down"));
        steps.push((at + args.backend_outage_for, "backend up"));
    }
    if let Some(at) = args.block_udp_at {
        steps.push((at, "block udp"));
        steps.push((at + args.block_udp_for, "unblock udp"));
    }
    if args.exposures {
        steps.push((args.duration / 2, "config change"));
    }
    steps.sort_by_key(|(at, _)| *at);
    for (at, what) in steps {
        tokio::time::sleep_until(start + at).await;
        let mut c = cluster.lock().await;
        let line = match what {
            "kill" => {
                let id = c.relays[victim].id.as_str().to_owned();
                match c.kill_relay(victim) {
                    Ok(()) => format!(
                        "{:.1}s: SIGKILL {id} (owner of {victim_devices} of {} devices)",
                        at.as_secs_f64(),
                        args.devices
                    ),
                    Err(e) => format!("kill {id} failed: {e}"),
                }
            }
            "restart" => {
                let id = c.relays[victim].id.as_str().to_owned();
                let started = match c.start_relay(victim) {
                    Ok(()) => c.wait_relay_ready(victim, Duration::from_secs(30)).await,
                    Err(e) => Err(e),
                };
                match started {
                    Ok(()) => format!("{:.1}s: {id} restarted", at.as_secs_f64()),
                    Err(e) => format!("restarting {id} failed: {e}"),
                }
            }
            "config change" => {
                // A new config version: the flags read after the drive are new exposures.
                let value = serde_json::json!(format!("exposures {}", at.as_millis()));
                match c
                    .put_json("/admin/apps/demo/values/welcome_text", &value)
                    .await
                {
                    Ok(()) => format!("{:.1}s: config changed (new version)", at.as_secs_f64()),
                    Err(e) => format!("config change failed: {e}"),
                }
            }
            "backend down" | "backend up" => {
                let down = what == "backend down";
                match c.backend_down(down).await {
                    Ok(()) => format!("{:.1}s: {what}", at.as_secs_f64()),
                    Err(e) => format!("{what} failed: {e}"),
                }
            }
            _ => {
                let block = what == "block udp";
                c.block_udp(block);
                format!("{:.1}s: {what}", at.as_secs_f64())
            }
        };
        let _ = bars.println(format!("chaos: {line}"));
        log.lock().expect("chaos log").push((at, line));
    }
}

fn stack(args: StackArgs) -> anyhow::Result<i32> {
    if args.relays == 0 {
        bail!("--relays must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let bins = Binaries::beside_current_exe()?;
    let config = ClusterConfig {
        relays: args.relays,
        work_dir: Some(args.work_dir.clone()),
        ..ClusterConfig::default()
    };
    let mut cluster = rt.block_on(Cluster::start(bins, config))?;
    let env_file = cluster.dir().join("stack.env");
    let env = format!(
        "TERN_STUB_URL={}\nTERN_SHARD_MAP_FILE={}\nTERN_CA_FILE={}\n",
        cluster.stub_url,
        cluster.dir().join("shard_map.json").display(),
        cluster.dir().join("cert.pem").display(),
    );
    std::fs::write(&env_file, env).with_context(|| format!("writing {}", env_file.display()))?;
    println!("ready {}", env_file.display());
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    cluster.shutdown();
    Ok(0)
}

fn pod(args: PodArgs) -> anyhow::Result<i32> {
    let spec: tern_fleet::pods::PodSpec = serde_json::from_slice(
        &std::fs::read(&args.spec).with_context(|| format!("reading {}", args.spec.display()))?,
    )
    .context("parsing the pod spec")?;
    tern_fleet::pods::serve(&spec, args.first, args.count)?;
    Ok(0)
}

fn device(args: DeviceArgs) -> anyhow::Result<i32> {
    let map: ShardMap = serde_json::from_slice(
        &std::fs::read(&args.shard_map)
            .with_context(|| format!("reading {}", args.shard_map.display()))?,
    )
    .context("parsing the shard map")?;
    let ca = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("reading {}", args.ca.display()))?;
    let options = DeviceOptions::new(&args.app, &args.key, map, &ca);
    let tern = start_device(&args.data_dir, &options, None).map_err(anyhow::Error::msg)?;
    let mut waited = 0;
    while tern.stats().device_id.is_none() && waited < 500 {
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    let stats = tern.stats();
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "device_id": stats.device_id.map(|d| d.to_string()),
            "queued": stats.queued_events,
        })
    );
    let start = Instant::now();
    let mut recorded = 0u64;
    let mut props_i = 0i64;
    while recorded < args.events {
        let due = (start.elapsed().as_secs_f64() * args.rate) as u64;
        if recorded >= due {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let mut props = tern_protocol::Properties::new();
        props.insert("i".into(), props_i.into());
        props_i += 1;
        tern.track("device_event", props).context("track")?;
        recorded += 1;
        if recorded.is_multiple_of(100) {
            println!(
                "{}",
                serde_json::json!({ "event": "recorded", "n": recorded })
            );
        }
    }
    println!(
        "{}",
        serde_json::json!({ "event": "recorded", "n": recorded })
    );
    tern.wait_applied(Duration::from_secs(30));
    if args.hold {
        let mut last = None;
        loop {
            tern.flush();
            let s = tern.stats();
            let now = (
                s.queued_events,
                s.journal_backlog_bytes,
                s.retries,
                s.store_resets,
                s.reset_unknown,
            );
            if last != Some(now) {
                last = Some(now);
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "status",
                        "queued": s.queued_events,
                        "journal_backlog": s.journal_backlog_bytes,
                        "retries": s.retries,
                        "store_resets": s.store_resets,
                        "reset_unknown": s.reset_unknown,
                    })
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Send everything, then exit cleanly.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tern.flush();
        let s = tern.stats();
        if s.queued_events == 0 && s.journal_backlog_bytes == 0 && s.store_ready {
            break;
        }
        if Instant::now() >= deadline {
            bail!("{} events still queued after 120 s", s.queued_events);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = tern.shutdown(Duration::from_secs(5));
    println!(
        "{}",
        serde_json::json!({ "event": "done", "recorded": recorded, "queued": report.queued_events })
    );
    Ok(0)
}
