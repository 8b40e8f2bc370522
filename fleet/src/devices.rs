//! Simulated devices: each a real [`Tern`] (its own store, journal and uploader) in this
//! process, and a driver that records events across them at a target rate.

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
}

impl DeviceOptions {
    /// Defaults that suit a local stack: 100-event batches cut after 250 ms, a 1 s
    /// connect timeout (a dead relay costs one second, then the next relay is tried).
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
        }
    }
}

/// Starts one device with its data in `dir`.
pub fn start_device(dir: &Path, o: &DeviceOptions) -> Result<Tern, String> {
    let config = TernConfig::builder(&o.app_id, &o.app_key, dir)
        .shard_map(o.shard_map.clone())
        .flush_policy(
            FlushPolicy::default()
                .with_max_batch_events(o.max_batch_events)
                .with_max_batch_age(o.max_batch_age),
        )
        .upload(
            UploadConfig::default()
                .with_transport(
                    TransportConfig::default()
                        .with_only_ca(o.ca_pem.clone())
                        .with_connect_timeout(o.connect_timeout)
                        .with_request_timeout(o.request_timeout),
                )
                .with_router(RouterConfig::default().with_quic_reprobe(o.quic_reprobe))
                .with_retry(RetryPolicy::default().with_base(o.retry_base)),
        )
        .build()
        .map_err(|e| e.to_string())?;
    Tern::start(config).map_err(|e| e.to_string())
}

/// Upload counters summed over a fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
}

/// A fleet of simulated devices.
#[derive(Debug)]
pub struct Fleet {
    devices: Vec<Tern>,
    recorded: Vec<u64>,
    refused: u64,
    root: PathBuf,
}

impl Fleet {
    /// Starts `n` devices with their data under `root/device-<i>`.
    pub fn start(n: usize, options: &DeviceOptions, root: &Path) -> Result<Fleet> {
        let mut devices = Vec::with_capacity(n);
        for i in 0..n {
            let dir = root.join(format!("device-{i}"));
            let tern = start_device(&dir, options)
                .map_err(|detail| FleetError::Device { index: i, detail })?;
            if options.identify && i % 2 == 1 {
                tern.identify(Some(&format!("user-{i}")))
                    .map_err(|e| FleetError::Device {
                        index: i,
                        detail: e.to_string(),
                    })?;
            }
            devices.push(tern);
        }
        Ok(Fleet {
            recorded: vec![0; n],
            devices,
            refused: 0,
            root: root.to_owned(),
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

    /// Events recorded (accepted by `track`), in total.
    pub fn recorded(&self) -> u64 {
        self.recorded.iter().sum()
    }

    /// Events `track` refused (validation, opted out): never counted as recorded.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Records events round-robin across the devices at `rate` events per second in
    /// total, until every device has recorded `per_device` events (when given), the
    /// `duration` has passed (when given), or `stop` is set. Calls `progress` with the
    /// total recorded about ten times a second. Returns the events recorded by this
    /// call.
    pub fn drive(
        &mut self,
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
        let limit = per_device.map(|p| p * n as u64);
        let mut sent = 0u64;
        let mut last_progress = Instant::now();
        let names = ["screen_view", "button_tap", "level_up", "search"];
        loop {
            if stop.load(Ordering::Relaxed)
                || limit.is_some_and(|l| sent >= l)
                || duration.is_some_and(|d| start.elapsed() >= d)
            {
                break;
            }
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let i = (sent % n as u64) as usize;
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
        progress(self.recorded());
        sent
    }

    /// Asks every device to send what it holds now.
    pub fn flush_all(&self) {
        for d in &self.devices {
            d.flush();
        }
    }

    /// Upload counters summed over the devices.
    pub fn totals(&self) -> UploadTotals {
        let mut t = UploadTotals::default();
        for d in &self.devices {
            let s = d.stats();
            t.quic_ok += s.upload.router.quic_ok;
            t.https_ok += s.upload.router.https_ok;
            t.failures += s.upload.router.failures;
            t.failovers += s.upload.router.failovers;
            t.retry_replies += s.upload.retry_replies;
            t.busy += s.upload.router.busy;
            t.events_acked += s.upload.events_acked;
            t.batches_rejected += s.upload.batches_rejected;
            t.queued_events += s.queued_events;
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

    /// Shuts every device down (flushing its journal into its store).
    pub fn shutdown(&self, timeout: Duration) {
        for d in &self.devices {
            d.shutdown(timeout);
        }
    }
}
