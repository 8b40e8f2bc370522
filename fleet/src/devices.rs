//! Simulated devices: each a real [`Tern`] (its own store, journal and uploader) in this
//! process, and a driver that records events across them at a target rate, with the
//! behaviour of a [`Profile`].
//!
//! Devices of one process may share a tokio runtime for their uploaders
//! ([`DeviceOptions::runtime`]): each still has its own store thread, journal, SQLite
//! database, QUIC endpoint (its own UDP socket) and connections, so what one device
//! writes to disk and sends on the wire is what it would send alone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tern_protocol::{AppId, Properties, ShardMap};
use tern_sdk::route::RouterConfig;
use tern_sdk::transport::TransportConfig;
use tern_sdk::upload::UploadConfig;
use tern_sdk::{FlushPolicy, RetryPolicy, Tern, TernConfig};

use crate::{FleetError, Result};

/// How every device of a fleet is set up.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
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
    /// A batch is cut when its oldest event is this old.
    pub max_batch_age: Duration,
    /// QUIC/TCP connect timeout.
    pub connect_timeout: Duration,
    /// Request timeout.
    pub request_timeout: Duration,
    /// First retry backoff.
    pub retry_base: Duration,
    /// Identify devices as users `user-<index>` (every other device), so routing uses
    /// user ids as well as device ids.
    pub identify: bool,
    /// How often a device on the HTTPS fallback tries QUIC again.
    pub quic_reprobe: Duration,
    /// Longest wait before recorded events are moved into the store in one
    /// transaction (`TernConfig::apply_delay`).
    pub apply_delay: Duration,
    /// Run the devices' uploaders as tasks on this runtime (`None`: each device has its
    /// own upload thread, as in an app).
    pub runtime: Option<tokio::runtime::Handle>,
    /// Give each device its own loopback source address ([`device_address`]), so
    /// relays count one source per device, as with phones (`false`: every device sends
    /// from 127.0.0.1 and meets the relays' per-source budgets together).
    pub own_address: bool,
    /// Devices whose stores may be opening at once while a fleet starts (0: no
    /// limit). Thousands of store threads opening SQLite at once on a few cores take
    /// the CPU from the devices' network tasks, whose handshakes then time out for the
    /// simulator's sake; a bound starts devices as fast as the machine opens stores.
    pub max_opening: usize,
    /// The app version devices start with (their context's, with a build named after
    /// it; `None`: none given) — see [`crate::context`].
    pub app_version: Option<String>,
    /// Devices record lifecycle events (`TernConfig::auto_lifecycle`).
    pub auto_lifecycle: bool,
}

/// The loopback address device `index` sends from when devices have their own
/// ([`DeviceOptions::own_address`]): `127.1.0.0` onwards (all of `127.0.0.0/8` is
/// loopback on Linux), one per device up to about sixteen million.
pub fn device_address(index: usize) -> std::net::IpAddr {
    let i = index as u32;
    std::net::IpAddr::from([127, 1 + ((i >> 16) & 0x7f) as u8, (i >> 8) as u8, i as u8])
}

impl DeviceOptions {
    /// Defaults that suit a local stack: 100-event batches cut after 250 ms, a 1 s
    /// connect timeout (a dead relay costs one second, then the next relay is tried),
    /// group apply within 100 ms.
    pub fn new(app_id: &str, app_key: &str, shard_map: ShardMap, ca_pem: &str) -> Self {
        DeviceOptions {
            app_id: app_id.to_owned(),
            app_key: app_key.to_owned(),
            shard_map,
            ca_pem: ca_pem.to_owned(),
            max_batch_events: 100,
            max_batch_age: Duration::from_millis(250),
            connect_timeout: Duration::from_millis(1000),
            request_timeout: Duration::from_secs(5),
            retry_base: Duration::from_millis(200),
            identify: true,
            quic_reprobe: Duration::from_secs(300),
            apply_delay: Duration::from_millis(100),
            runtime: None,
            own_address: true,
            max_opening: 0,
            app_version: None,
            auto_lifecycle: false,
        }
    }

    /// The SDK's own defaults, as an app ships them: 100-event batches cut after 30 s,
    /// a 3 s connect timeout, a 1 s first retry backoff, group apply within 1 s.
    pub fn app_defaults(app_id: &str, app_key: &str, shard_map: ShardMap, ca_pem: &str) -> Self {
        let flush = FlushPolicy::default();
        let transport = TransportConfig::default();
        DeviceOptions {
            max_batch_events: flush.max_batch_events,
            max_batch_age: flush.max_batch_age,
            connect_timeout: transport.connect_timeout,
            request_timeout: transport.request_timeout,
            retry_base: RetryPolicy::default().base,
            apply_delay: TernConfig::builder("a", "k", "d")
                .build()
                .map(|c| c.apply_delay)
                .unwrap_or(Duration::from_secs(1)),
            ..DeviceOptions::new(app_id, app_key, shard_map, ca_pem)
        }
    }
}

/// The context a fleet device starts with, as app version `version`.
pub fn device_context(version: &str) -> tern_protocol::AppContext {
    tern_protocol::AppContext {
        app_build: Some(format!("build-{version}")),
        os_name: Some("linux".into()),
        device_model: Some("tern-fleet".into()),
        network: Some(tern_protocol::NetworkType::Wifi),
        ..tern_protocol::AppContext::default()
    }
}

/// Starts one device with its data in `dir`, sending from `local_address` when given.
pub fn start_device(
    dir: &Path,
    o: &DeviceOptions,
    local_address: Option<std::net::IpAddr>,
) -> Result<Tern, String> {
    let mut transport = TransportConfig::default()
        .with_only_ca(o.ca_pem.clone())
        .with_connect_timeout(o.connect_timeout)
        .with_request_timeout(o.request_timeout);
    if let Some(a) = local_address {
        transport = transport.with_local_address(a);
    }
    let mut upload = UploadConfig::default()
        .with_transport(transport)
        .with_router(RouterConfig::default().with_quic_reprobe(o.quic_reprobe))
        .with_retry(RetryPolicy::default().with_base(o.retry_base));
    if let Some(rt) = &o.runtime {
        upload = upload.with_runtime(rt.clone());
    }
    let config = TernConfig::builder(&o.app_id, &o.app_key, dir)
        .shard_map(o.shard_map.clone())
        .apply_delay(o.apply_delay)
        .flush_policy(
            FlushPolicy::default()
                .with_max_batch_events(o.max_batch_events)
                .with_max_batch_age(o.max_batch_age),
        )
        .upload(upload)
        .auto_lifecycle(o.auto_lifecycle);
    let config = match &o.app_version {
        Some(v) => config.app_version(v).context(device_context(v)),
        None => config,
    }
    .build()
    .map_err(|e| e.to_string())?;
    // A pod asks the kernel for two threads per device in a burst; a "try again"
    // (EAGAIN: the process table momentarily full) is retried for up to 5 s.
    let mut waited = Duration::ZERO;
    loop {
        match Tern::start(config.clone()) {
            Ok(tern) => return Ok(tern),
            Err(e) if is_try_again(&e) && waited < TRY_AGAIN_FOR => {
                tracing::warn!(dir = %dir.display(), error = %e, "starting a device: trying again");
                std::thread::sleep(TRY_AGAIN_STEP);
                waited += TRY_AGAIN_STEP;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// How long [`start_device`] retries a start the kernel said to try again.
const TRY_AGAIN_FOR: Duration = Duration::from_secs(5);
/// Between two such tries.
const TRY_AGAIN_STEP: Duration = Duration::from_millis(100);

/// Whether `e` comes from an OS "try again" (`EAGAIN`, e.g. no thread could be made).
fn is_try_again(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::WouldBlock)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Upload counters summed over a fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadTotals {
    /// Requests that succeeded over QUIC.
    pub quic_ok: u64,
    /// Requests that succeeded over HTTPS.
    pub https_ok: u64,
    /// Requests that failed (transport).
    pub failures: u64,
    /// Requests sent to a relay other than the key's owner.
    pub failovers: u64,
    /// `Retry` replies.
    pub retry_replies: u64,
    /// Requests a relay pushed back (busy: refused or reset under its limits, heard
    /// during a handshake that did not finish): kept for the same relay.
    pub busy: u64,
    /// Events acknowledged.
    pub events_acked: u64,
    /// Batches rejected.
    pub batches_rejected: u64,
    /// Events still queued on the devices.
    pub queued_events: u64,
    /// QUIC handshakes that timed out after the relay was heard (busy).
    #[serde(default)]
    pub handshake_timeouts_heard: u64,
    /// QUIC handshakes that timed out with nothing heard (HTTPS or the next relay
    /// was tried).
    #[serde(default)]
    pub handshake_timeouts_silent: u64,
    /// Of those, first handshakes to a relay given one more try before HTTPS.
    #[serde(default)]
    pub handshake_second_chances: u64,
    /// QUIC handshakes that timed out with nothing heard after the device's timer
    /// fired late (the simulated device was starved of CPU; counted as busy).
    #[serde(default)]
    pub handshake_timeouts_late: u64,
    /// Relays served over HTTPS after a QUIC failure that a background QUIC check
    /// brought back to QUIC.
    #[serde(default)]
    pub quic_checks_ok: u64,
    /// Why relays were backed off and requests moved (see [`Backoffs`]).
    #[serde(default)]
    pub backoffs: Backoffs,
}

/// Why devices backed relays off (every failover follows one) or moved them to
/// HTTPS, summed over devices: `tern_sdk`'s `RouterStats::down_*`, `to_https` and the
/// connector's silence counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backoffs {
    /// The relay went silent with a request outstanding, or closed as overloaded.
    pub silent: u64,
    /// The relay failed over HTTPS after QUIC.
    pub unreachable: u64,
    /// The relay pushed back past the device's patience.
    pub busy: u64,
    /// The relay was draining.
    pub draining: u64,
    /// QUIC requests that moved their relay to HTTPS.
    pub to_https: u64,
    /// Silences not held against the relay: its reply waited unread on the device.
    pub silences_unread: u64,
}

impl Backoffs {
    fn add(&mut self, o: &Backoffs) {
        self.silent += o.silent;
        self.unreachable += o.unreachable;
        self.busy += o.busy;
        self.draining += o.draining;
        self.to_https += o.to_https;
        self.silences_unread += o.silences_unread;
    }

    /// Relays backed off, every cause.
    pub fn total(&self) -> u64 {
        self.silent + self.unreachable + self.busy + self.draining
    }
}

impl UploadTotals {
    /// Adds `o` to these totals.
    pub fn add(&mut self, o: &UploadTotals) {
        self.quic_ok += o.quic_ok;
        self.https_ok += o.https_ok;
        self.failures += o.failures;
        self.failovers += o.failovers;
        self.retry_replies += o.retry_replies;
        self.busy += o.busy;
        self.events_acked += o.events_acked;
        self.batches_rejected += o.batches_rejected;
        self.queued_events += o.queued_events;
        self.handshake_timeouts_heard += o.handshake_timeouts_heard;
        self.handshake_timeouts_silent += o.handshake_timeouts_silent;
        self.handshake_second_chances += o.handshake_second_chances;
        self.handshake_timeouts_late += o.handshake_timeouts_late;
        self.quic_checks_ok += o.quic_checks_ok;
        self.backoffs.add(&o.backoffs);
    }
}

/// How simulated devices behave while the fleet records.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "profile", rename_all = "snake_case")]
pub enum Profile {
    /// Every device is in the foreground and online the whole run (with the short
    /// batching of [`DeviceOptions::new`]: the stack's throughput, not an app's).
    FastCut,
    /// What apps do: each device alternates foreground sessions and background spells
    /// (reported with `on_foreground` / `on_background`, which start and end sessions
    /// and flush, as the platform glue does), records only in the foreground, and loses
    /// its network now and then (`set_network_available`), recording offline. Lengths
    /// are exponentially distributed around the means; every device starts in the
    /// foreground at a random point of its first session.
    Realistic {
        /// Mean foreground session.
        foreground_mean: Duration,
        /// Mean background spell.
        background_mean: Duration,
        /// Mean time between network losses of one device.
        flap_every_mean: Duration,
        /// Mean network loss.
        flap_mean: Duration,
        /// Mean time between kills of one device's app (the OS reclaiming it, a
        /// crash, the user swiping it away): [`Tern::kill`], no shutdown. `None`: no
        /// kills.
        #[serde(default)]
        kill_every_mean: Option<Duration>,
        /// Mean time until a killed app is launched again (in the foreground).
        #[serde(default = "default_relaunch_mean")]
        relaunch_mean: Duration,
    },
}

fn default_relaunch_mean() -> Duration {
    Duration::from_secs(5)
}

impl Profile {
    /// The realistic profile with means that show each behaviour within a run of tens
    /// of seconds: 40 s sessions, 10 s in the background, a 5 s network loss every
    /// 2 minutes per device, an app kill every 10 minutes per device, relaunched after
    /// 5 s.
    pub fn realistic() -> Profile {
        Profile::Realistic {
            foreground_mean: Duration::from_secs(40),
            background_mean: Duration::from_secs(10),
            flap_every_mean: Duration::from_secs(120),
            flap_mean: Duration::from_secs(5),
            kill_every_mean: Some(Duration::from_secs(600)),
            relaunch_mean: default_relaunch_mean(),
        }
    }
}

/// Counts of the behaviour a [`Profile`] played out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BehaviourCounts {
    /// Devices sent to the background.
    pub backgrounded: u64,
    /// Devices brought back to the foreground.
    pub foregrounded: u64,
    /// Network losses started.
    pub network_lost: u64,
    /// Apps killed ([`Tern::kill`]).
    #[serde(default)]
    pub killed: u64,
    /// Killed apps launched again.
    #[serde(default)]
    pub relaunched: u64,
    /// Relaunches that failed (the device stays down; its events are still counted
    /// by the backend once a later run opens its store).
    #[serde(default)]
    pub relaunch_failed: u64,
}

/// One device's place in the realistic profile.
#[derive(Clone, Copy, Debug)]
struct DeviceState {
    foreground: bool,
    online: bool,
    /// Next foreground/background switch.
    switch_at: Instant,
    /// Next network loss (online) or its end (offline).
    flap_at: Instant,
    /// Next kill (alive) or relaunch (killed).
    kill_at: Option<Instant>,
    /// The app is killed: not recording, waiting for its relaunch.
    killed: bool,
}

/// An exponentially distributed duration with mean `mean`.
fn exp(rng: &mut impl rand::Rng, mean: Duration) -> Duration {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    Duration::from_secs_f64(-u.ln() * mean.as_secs_f64())
}

/// One instance's upload counters.
fn upload_totals(s: &tern_sdk::Stats) -> UploadTotals {
    UploadTotals {
        quic_ok: s.upload.router.quic_ok,
        https_ok: s.upload.router.https_ok,
        failures: s.upload.router.failures,
        failovers: s.upload.router.failovers,
        retry_replies: s.upload.retry_replies,
        busy: s.upload.router.busy,
        events_acked: s.upload.events_acked,
        batches_rejected: s.upload.batches_rejected,
        queued_events: s.queued_events,
        handshake_timeouts_heard: s.upload.handshake_timeouts_heard,
        handshake_timeouts_silent: s.upload.handshake_timeouts_silent,
        handshake_second_chances: s.upload.handshake_second_chances,
        handshake_timeouts_late: s.upload.handshake_timeouts_late,
        quic_checks_ok: s.upload.router.quic_checks_ok,
        backoffs: Backoffs {
            silent: s.upload.router.down_silent,
            unreachable: s.upload.router.down_unreachable,
            busy: s.upload.router.down_busy,
            draining: s.upload.router.down_draining,
            to_https: s.upload.router.to_https,
            silences_unread: s.upload.silences_unread,
        },
    }
}

/// A fleet of simulated devices.
#[derive(Debug)]
pub struct Fleet {
    devices: Vec<Tern>,
    recorded: Vec<u64>,
    refused: u64,
    root: PathBuf,
    behaviour: BehaviourCounts,
    /// How devices are started (again, after a kill).
    options: DeviceOptions,
    /// Index of the first device (devices are `first ..`).
    first: usize,
    /// What killed instances had done (their events recorded, upload counters).
    retired: UploadTotals,
    retired_events: u64,
    /// Exposure counters of killed instances: (recorded, already recorded, over the
    /// cap, failed).
    retired_exposures: [u64; 4],
}

/// The longest a starting fleet waits for an opening store to free its slot
/// ([`DeviceOptions::max_opening`]) before it gives up naming the device.
const OPENING_WAIT: Duration = Duration::from_secs(120);

impl Fleet {
    /// Starts `n` devices with their data under `root/device-<i>`.
    pub fn start(n: usize, options: &DeviceOptions, root: &Path) -> Result<Fleet> {
        Fleet::start_range(0, n, options, root)
    }

    /// Starts devices `first .. first + n` (data under `root/device-<i>`, users
    /// `user-<i>` when identified): one slice of a fleet spread over processes.
    pub fn start_range(
        first: usize,
        n: usize,
        options: &DeviceOptions,
        root: &Path,
    ) -> Result<Fleet> {
        let mut devices: Vec<Tern> = Vec::with_capacity(n);
        // Indices (into `devices`) of stores still opening, oldest first.
        let mut opening = std::collections::VecDeque::new();
        for i in first..first + n {
            let waiting = Instant::now();
            while options.max_opening > 0 && opening.len() >= options.max_opening {
                opening.retain(|&k: &usize| {
                    let st = devices[k].stats();
                    st.device_id.is_none() && st.store_error.is_none()
                });
                if opening.len() >= options.max_opening {
                    if waiting.elapsed() > OPENING_WAIT {
                        let oldest = opening.front().copied().unwrap_or_default();
                        return Err(FleetError::Device {
                            index: first + oldest,
                            detail: format!(
                                "its store did not open within {} s (and {} more opening)",
                                OPENING_WAIT.as_secs(),
                                opening.len() - 1
                            ),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let dir = root.join(format!("device-{i}"));
            let address = options.own_address.then(|| device_address(i));
            let tern = start_device(&dir, options, address)
                .map_err(|detail| FleetError::Device { index: i, detail })?;
            if options.identify && i % 2 == 1 {
                tern.identify(Some(&format!("user-{i}")))
                    .map_err(|e| FleetError::Device {
                        index: i,
                        detail: e.to_string(),
                    })?;
            }
            opening.push_back(devices.len());
            devices.push(tern);
        }
        Ok(Fleet {
            recorded: vec![0; n],
            devices,
            refused: 0,
            root: root.to_owned(),
            behaviour: BehaviourCounts::default(),
            options: options.clone(),
            first,
            retired: UploadTotals::default(),
            retired_events: 0,
            retired_exposures: [0; 4],
        })
    }

    /// Waits until every device's store is open (so its device id, and with it its
    /// routing key, is known). False on timeout.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.devices.iter().any(|d| d.stats().device_id.is_none()) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// The devices.
    pub fn devices(&self) -> &[Tern] {
        &self.devices
    }

    /// Where the devices keep their data.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Events recorded by the driver's `track` calls, in total.
    pub fn recorded(&self) -> u64 {
        self.recorded.iter().sum()
    }

    /// Events the devices recorded in this process by any call (`track`, and the
    /// session events of `on_foreground` / `on_background` / `identify`): what the
    /// backend must end up holding from a fleet that was not restarted.
    pub fn events_recorded(&self) -> u64 {
        self.retired_events
            + self
                .devices
                .iter()
                .map(|d| d.stats().events_recorded)
                .sum::<u64>()
    }

    /// Exposure counters of the instances app kills replaced: (recorded, already
    /// recorded, over the cap, failed); the devices' current instances count the rest.
    pub fn retired_exposures(&self) -> [u64; 4] {
        self.retired_exposures
    }

    /// Events `track` refused (validation, opted out): never counted as recorded.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// What the profile played out so far.
    pub fn behaviour(&self) -> BehaviourCounts {
        self.behaviour
    }

    /// Records events round-robin across the devices at `rate` events per second in
    /// total, until every device has recorded `per_device` events (when given), the
    /// `duration` has passed (when given), or `stop` is set. Calls `progress` with the
    /// total recorded about ten times a second. Returns the events recorded by this
    /// call. Every device is in the foreground and online ([`Profile::FastCut`]).
    pub fn drive(
        &mut self,
        rate: f64,
        per_device: Option<u64>,
        duration: Option<Duration>,
        stop: &AtomicBool,
        progress: impl FnMut(u64),
    ) -> u64 {
        self.drive_profile(Profile::FastCut, rate, per_device, duration, stop, progress)
    }

    /// [`Fleet::drive`] with the behaviour of `profile`: under
    /// [`Profile::Realistic`] events go round-robin to the devices in the foreground
    /// (the total rate is kept while some are in the background).
    pub fn drive_profile(
        &mut self,
        profile: Profile,
        rate: f64,
        per_device: Option<u64>,
        duration: Option<Duration>,
        stop: &AtomicBool,
        mut progress: impl FnMut(u64),
    ) -> u64 {
        let n = self.devices.len();
        if n == 0 {
            return 0;
        }
        let start = Instant::now();
        let mut rng = rand::rng();
        let mut states: Vec<DeviceState> = Vec::new();
        if let Profile::Realistic {
            foreground_mean,
            flap_every_mean,
            kill_every_mean,
            ..
        } = profile
        {
            states = (0..n)
                .map(|_| DeviceState {
                    foreground: true,
                    online: true,
                    // A random point of the first session (memoryless: the remaining
                    // time is exponential with the same mean).
                    switch_at: start + exp(&mut rng, foreground_mean),
                    flap_at: start + exp(&mut rng, flap_every_mean),
                    kill_at: kill_every_mean.map(|m| start + exp(&mut rng, m)),
                    killed: false,
                })
                .collect();
        }
        let limit = per_device.map(|p| p * n as u64);
        let mut sent = 0u64;
        let mut cursor = 0usize;
        let mut last_progress = Instant::now();
        let mut last_sweep = Instant::now();
        let names = ["screen_view", "button_tap", "level_up", "search"];
        loop {
            if stop.load(Ordering::Relaxed)
                || limit.is_some_and(|l| sent >= l)
                || duration.is_some_and(|d| start.elapsed() >= d)
            {
                break;
            }
            if !states.is_empty() && last_sweep.elapsed() >= Duration::from_millis(50) {
                last_sweep = Instant::now();
                self.sweep(profile, &mut states, &mut rng);
            }
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // The next device in the foreground (all of them under the fast-cut
            // profile); none in the foreground: wait for the next sweep.
            let mut i = None;
            for k in 0..n {
                let c = (cursor + k) % n;
                if states.is_empty() || (states[c].foreground && !states[c].killed) {
                    i = Some(c);
                    break;
                }
            }
            let Some(i) = i else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            cursor = (i + 1) % n;
            let mut props = Properties::new();
            props.insert("i".into(), (self.recorded[i] as i64).into());
            props.insert("screen".into(), "home".into());
            let name = names[(sent % names.len() as u64) as usize];
            match self.devices[i].track(name, props) {
                Ok(()) => self.recorded[i] += 1,
                Err(_) => self.refused += 1,
            }
            sent += 1;
            if last_progress.elapsed() >= Duration::from_millis(100) {
                progress(self.recorded());
                last_progress = Instant::now();
            }
        }
        // Back to the foreground and online, so delivery can finish.
        for (i, st) in states.iter_mut().enumerate() {
            if st.killed {
                self.relaunch(i, st);
                continue;
            }
            if !st.online {
                self.devices[i].set_network_available(true);
            }
            if !st.foreground {
                let _ = self.devices[i].on_foreground();
                self.behaviour.foregrounded += 1;
            }
        }
        progress(self.recorded());
        sent
    }

    /// Applies the switches that are due.
    fn sweep(&mut self, profile: Profile, states: &mut [DeviceState], rng: &mut impl rand::Rng) {
        let Profile::Realistic {
            foreground_mean,
            background_mean,
            flap_every_mean,
            flap_mean,
            kill_every_mean,
            relaunch_mean,
        } = profile
        else {
            return;
        };
        let now = Instant::now();
        for (i, st) in states.iter_mut().enumerate() {
            if let (Some(at), Some(every)) = (st.kill_at, kill_every_mean) {
                if now >= at {
                    if st.killed {
                        self.relaunch(i, st);
                        st.kill_at = Some(now + exp(rng, every));
                    } else if self.kill(i) {
                        st.killed = true;
                        st.kill_at = Some(now + exp(rng, relaunch_mean));
                    } else {
                        // Still opening its journal: the one window in which a kill
                        // loses events (see `Tern`'s durability notes); later.
                        st.kill_at = Some(now + Duration::from_millis(100));
                    }
                }
            }
            if st.killed {
                continue;
            }
            if now >= st.switch_at {
                st.foreground = !st.foreground;
                let d = &self.devices[i];
                if st.foreground {
                    let _ = d.on_foreground();
                    self.behaviour.foregrounded += 1;
                    st.switch_at = now + exp(rng, foreground_mean);
                } else {
                    let _ = d.on_background();
                    self.behaviour.backgrounded += 1;
                    st.switch_at = now + exp(rng, background_mean);
                }
            }
            if now >= st.flap_at {
                st.online = !st.online;
                self.devices[i].set_network_available(st.online);
                if st.online {
                    st.flap_at = now + exp(rng, flap_every_mean);
                } else {
                    self.behaviour.network_lost += 1;
                    st.flap_at = now + exp(rng, flap_mean);
                }
            }
        }
    }

    /// Kills device `i`'s app ([`Tern::kill`]) once its journal is open; false (and
    /// nothing done) before. What the instance did is kept for the totals.
    fn kill(&mut self, i: usize) -> bool {
        let d = &self.devices[i];
        let before = d.stats();
        if !before.journal_ready {
            return false;
        }
        d.kill();
        // After the kill: nothing changes them any more.
        let s = d.stats();
        self.retire(&s);
        self.behaviour.killed += 1;
        true
    }

    /// Keeps what an instance that stopped (killed, or shut down for an update) did in
    /// the fleet's counters; nothing changes its stats any more.
    fn retire(&mut self, s: &tern_sdk::Stats) {
        self.retired_events += s.events_recorded;
        let x = s.exposures;
        for (r, v) in self.retired_exposures.iter_mut().zip([
            x.recorded,
            x.already_recorded,
            x.over_cap,
            x.failed,
        ]) {
            *r += v;
        }
        let mut t = upload_totals(s);
        t.queued_events = 0;
        self.retired.add(&t);
    }

    /// Launches killed device `i`'s app again, in the foreground and online.
    fn relaunch(&mut self, i: usize, st: &mut DeviceState) {
        let index = self.first + i;
        let dir = self.root.join(format!("device-{index}"));
        let address = self.options.own_address.then(|| device_address(index));
        match start_device(&dir, &self.options, address) {
            Ok(tern) => {
                let _ = tern.on_foreground();
                self.devices[i] = tern;
                st.killed = false;
                st.foreground = true;
                st.online = true;
                self.behaviour.relaunched += 1;
            }
            Err(e) => {
                tracing::warn!(device = index, error = %e, "relaunching a killed device failed");
                self.behaviour.relaunch_failed += 1;
            }
        }
    }

    /// Relaunches device `i` with `options` — an app update: the running instance is
    /// shut down (what it did is kept in the fleet's counters, as for a kill), then the
    /// app starts again on the same data directory, in the foreground.
    pub fn relaunch_with(&mut self, i: usize, options: &DeviceOptions) -> Result<(), String> {
        let index = self.first + i;
        let d = &self.devices[i];
        d.shutdown(Duration::from_secs(10));
        let s = d.stats();
        self.retire(&s);
        let dir = self.root.join(format!("device-{index}"));
        let address = options.own_address.then(|| device_address(index));
        let tern = start_device(&dir, options, address)?;
        let _ = tern.on_foreground();
        self.devices[i] = tern;
        Ok(())
    }

    /// The options devices are started with.
    pub fn options(&self) -> &DeviceOptions {
        &self.options
    }

    /// Asks every device to send what it holds now.
    pub fn flush_all(&self) {
        for d in &self.devices {
            d.flush();
        }
    }

    /// Upload counters summed over the devices.
    /// Those of killed instances included.
    pub fn totals(&self) -> UploadTotals {
        let mut t = self.retired;
        for d in &self.devices {
            t.add(&upload_totals(&d.stats()));
        }
        t
    }

    /// For each relay of `map`, how many devices' routing keys it owns (user id when
    /// identified, else device id).
    pub fn owners(&self, map: &ShardMap, app: &str) -> Vec<usize> {
        let app = AppId::new(app);
        let mut counts = vec![0; map.nodes.len()];
        for d in &self.devices {
            let s = d.stats();
            let key = match (&s.user_id, &s.device_id) {
                (Some(u), _) => u.as_str().to_owned(),
                (None, Some(dev)) => dev.to_string(),
                (None, None) => continue,
            };
            if let Some(owner) = tern_protocol::routing::owner(map, &app, &key) {
                if let Some(i) = map.nodes.iter().position(|n| n.id == owner.id) {
                    counts[i] += 1;
                }
            }
        }
        counts
    }

    /// Shuts every device down (flushing its journal into its store), up to 64 at a
    /// time: a device's shutdown mostly waits (its connections closing, up to 200 ms),
    /// so a thousand one after another would take minutes.
    pub fn shutdown(&self, timeout: Duration) {
        let chunk = self.devices.len().div_ceil(64).max(1);
        std::thread::scope(|scope| {
            for part in self.devices.chunks(chunk) {
                scope.spawn(move || {
                    for d in part {
                        d.shutdown(timeout);
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "spawning the store thread")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// EAGAIN anywhere in the chain is a "try again"; other OS errors are not.
    #[test]
    fn only_eagain_is_tried_again() {
        let eagain = Wrapped(std::io::Error::from_raw_os_error(11));
        assert!(is_try_again(&eagain));
        let enoent = Wrapped(std::io::Error::from_raw_os_error(2));
        assert!(!is_try_again(&enoent));
        assert!(!is_try_again(&std::fmt::Error));
    }
}
