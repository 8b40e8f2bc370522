//! SDK configuration, built with [`TernConfig::builder`].

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tern_protocol::{AppId, Limits, SdkInfo, ShardMap};

use crate::error::ConfigError;
use crate::live::LiveConfig;
use crate::net::transport::TransportConfig;
use crate::policy::route::RouterConfig;
use crate::policy::schedule::{FlushPolicy, RefusalPolicy, RetryPolicy};

/// The bounds of the device store; defined with the store.
pub use crate::store::StoreLimits;

/// The most events [`crate::consent::ConsentConfig::max_pending_events`] may keep.
pub const MAX_PENDING_EVENTS: u64 = 100_000;
/// The most exposures [`StoreLimits::max_exposures`] may remember.
pub const MAX_EXPOSURES: usize = 1_000_000;

/// The longest [`TernConfig::apply_delay`].
pub const MAX_APPLY_DELAY: Duration = Duration::from_secs(5);

/// The longest connect timeout (`upload.transport.connect_timeout`).
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest request timeout (`upload.transport.request_timeout`).
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The longest QUIC re-probe interval (`upload.router.quic_reprobe`).
pub const MAX_QUIC_REPROBE: Duration = Duration::from_secs(24 * 60 * 60);

/// Uploader settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UploadConfig {
    /// Transport (trust, timeouts).
    pub transport: TransportConfig,
    /// Relay selection.
    pub router: RouterConfig,
    /// Backoff after failures.
    pub retry: RetryPolicy,
    /// Targets one send tries before the batch waits for a retry.
    pub attempts_per_send: usize,
    /// Longest sleep between looks at the store's backlog (60 s). The store wakes the
    /// uploader when it changes, and the scheduler's and live config's deadlines end
    /// the wait; this is only the safety net, kept long so that an idle app's uploader
    /// does not wake a phone every few seconds.
    pub tick: Duration,
    /// Wait after refusals that may be the server's fault (`unauthorized`, `blocked`,
    /// an unknown reason): long, jittered, capped.
    pub refusal: RefusalPolicy,
    /// Live config: refresh interval, debounce, backoffs, push subscription.
    pub live: LiveConfig,
    /// Run the uploader as a task on this runtime instead of on its own thread with its
    /// own current-thread runtime (`None`, the default, which apps use). For hosts that
    /// run many instances in one process — the fleet simulator runs thousands — or that
    /// already run a multi-thread tokio runtime with I/O and time enabled. What the
    /// uploader sends, and when, is the same either way. Its store calls (SQLite
    /// transactions) then run on the runtime's blocking pool, not on a worker: bound
    /// the pool (`max_blocking_threads`) to bound the threads. [`crate::Tern::shutdown`]
    /// waits for the task: call it from a thread that is not one of this runtime's
    /// workers.
    pub runtime: Option<tokio::runtime::Handle>,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            transport: TransportConfig::default(),
            router: RouterConfig::default(),
            retry: RetryPolicy::default(),
            attempts_per_send: 4,
            tick: Duration::from_secs(60),
            refusal: RefusalPolicy::default(),
            live: LiveConfig::default(),
            runtime: None,
        }
    }
}

impl UploadConfig {
    /// Sets the transport settings.
    pub fn with_transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// Sets the router settings.
    pub fn with_router(mut self, router: RouterConfig) -> Self {
        self.router = router;
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the wait after refusals that may be the server's fault (ingest and config).
    pub fn with_refusal(mut self, refusal: RefusalPolicy) -> Self {
        self.refusal = refusal;
        self.live = self.live.with_refusal(refusal);
        self
    }

    /// Sets the live-config settings.
    pub fn with_live(mut self, live: LiveConfig) -> Self {
        self.live = live;
        self
    }

    /// Runs the uploader on `runtime` instead of its own thread (see
    /// [`UploadConfig::runtime`]).
    pub fn with_runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }
}

/// Everything `Tern::start` needs. Build it with [`TernConfig::builder`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TernConfig {
    /// The app.
    pub app_id: AppId,
    /// The app's key, sent with every request.
    pub app_key: String,
    /// Directory for the database and journal; created if missing. One `Tern`
    /// instance per directory.
    pub data_dir: PathBuf,
    /// Initial shard map (a bootstrap list of relays); replaced by newer maps the relays
    /// serve.
    pub shard_map: ShardMap,
    /// Store bounds.
    pub store_limits: StoreLimits,
    /// When to cut batches and how many to keep in flight.
    pub flush: FlushPolicy,
    /// A session ends after this long without activity. Default 30 minutes.
    pub session_timeout: Duration,
    /// Group apply: the store thread moves journal records into SQLite at most this
    /// long after the first of them was recorded, in one transaction (sooner when 64
    /// KiB are waiting, on `flush`, on shutdown). Recording is durable at the journal
    /// write either way; this trades up to this much delay before an event is
    /// batchable for one SQLite transaction and one wake-up per burst instead of per
    /// event. Default 1 s; zero applies every record at once. At most 5 s.
    pub apply_delay: Duration,
    /// Protocol limits applied in `track()`; may only be stricter than the default.
    pub limits: Limits,
    /// SDK identity reported upstream.
    pub sdk: SdkInfo,
    /// The uploader `Tern::start` runs when the shard map names at least one relay
    /// (`None`: nothing is sent automatically; the app or a test drives the uploader
    /// interface itself).
    pub upload: Option<UploadConfig>,
    /// Reading a flag (`Tern::flag`, `Tern::flag_enabled`) records its exposure, once
    /// per (flag, variant, unit, config version). Default on; when off, only
    /// `Tern::record_exposure` records exposures.
    pub auto_exposures: bool,
    /// Consent per purpose: the state until first set, and the bound on events held
    /// while pending (see [`crate::consent`]).
    pub consent: crate::consent::ConsentConfig,
    /// A `push_token` event is recorded again when the last one is this old (checked
    /// when the SDK opens and when the app comes to the foreground), so the backend
    /// can expire tokens it has not heard of. Default 7 days; at least 1 second.
    pub push_refresh_interval: Duration,
    /// The device and app context at start (protocol §5.2.1): app version and build,
    /// OS, device model, screen, and the dynamic parts' first values (locale, time
    /// zone, network), which `Tern::set_locale` and the like update. `build` fills in
    /// the app version (from [`Self::sdk`]) and the SDK version (this crate's).
    pub context: tern_protocol::AppContext,
    /// Automatic lifecycle events (`app_installed`, `app_updated`, `app_opened`;
    /// protocol §8.4). Default off in the core, so embedders that count their own
    /// events (tests, simulators) see only those; the app-facing options of the
    /// bindings turn it on by default.
    pub auto_lifecycle: bool,
}

impl TernConfig {
    /// Starts a builder for `app_id` with its `app_key`, storing data in `data_dir`.
    pub fn builder(
        app_id: impl Into<String>,
        app_key: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> TernConfigBuilder {
        TernConfigBuilder {
            config: TernConfig {
                app_id: AppId::new(app_id),
                app_key: app_key.into(),
                data_dir: data_dir.into(),
                shard_map: ShardMap::default(),
                store_limits: StoreLimits::default(),
                flush: FlushPolicy::default(),
                session_timeout: Duration::from_secs(30 * 60),
                apply_delay: Duration::from_secs(1),
                limits: Limits::default(),
                sdk: SdkInfo {
                    name: "tern-rust".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    platform: std::env::consts::OS.into(),
                    app_version: None,
                },
                upload: Some(UploadConfig::default()),
                auto_exposures: true,
                consent: crate::consent::ConsentConfig::default(),
                push_refresh_interval: Duration::from_secs(7 * 24 * 3600),
                context: tern_protocol::AppContext::default(),
                auto_lifecycle: false,
            },
            pins: None,
            pins_expire_at: None,
        }
    }
}

/// Builder of [`TernConfig`]; `build` validates and names the field at fault.
#[derive(Clone, Debug)]
pub struct TernConfigBuilder {
    config: TernConfig,
    /// Certificate pins as given, parsed by `build`.
    pins: Option<Vec<String>>,
    pins_expire_at: Option<SystemTime>,
}

impl TernConfigBuilder {
    /// The bootstrap shard map.
    pub fn shard_map(mut self, map: ShardMap) -> Self {
        self.config.shard_map = map;
        self
    }
    /// Maximum bytes of queued events.
    pub fn max_store_bytes(mut self, bytes: u64) -> Self {
        self.config.store_limits.max_bytes = bytes;
        self
    }
    /// Maximum number of queued events.
    pub fn max_store_events(mut self, events: u64) -> Self {
        self.config.store_limits.max_events = events;
        self
    }
    /// Batching and in-flight policy.
    pub fn flush_policy(mut self, policy: FlushPolicy) -> Self {
        self.config.flush = policy;
        self
    }
    /// Session inactivity timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.config.session_timeout = timeout;
        self
    }
    /// Group apply delay (see [`TernConfig::apply_delay`]).
    pub fn apply_delay(mut self, delay: Duration) -> Self {
        self.config.apply_delay = delay;
        self
    }
    /// Stricter protocol limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }
    /// SDK name, version and platform (set by the Kotlin and Swift layers).
    pub fn sdk_info(mut self, sdk: SdkInfo) -> Self {
        self.config.sdk = sdk;
        self
    }
    /// Uploader settings (trust, timeouts, backoff).
    pub fn upload(mut self, upload: UploadConfig) -> Self {
        self.config.upload = Some(upload);
        self
    }
    /// Nothing is sent automatically: the caller drives the uploader interface
    /// (`Tern::next_batch`, `ack`, ...) itself.
    pub fn manual_upload(mut self) -> Self {
        self.config.upload = None;
        self
    }
    /// The push token refresh interval (see [`TernConfig::push_refresh_interval`]).
    pub fn push_refresh_interval(mut self, interval: Duration) -> Self {
        self.config.push_refresh_interval = interval;
        self
    }

    /// Whether flag reads record exposures (see [`TernConfig::auto_exposures`]).
    pub fn auto_exposures(mut self, on: bool) -> Self {
        self.config.auto_exposures = on;
        self
    }
    /// Most exposures remembered for deduplication (see [`StoreLimits::max_exposures`]).
    pub fn max_exposures(mut self, n: usize) -> Self {
        self.config.store_limits.max_exposures = n;
        self
    }
    /// The consent state of every purpose until the app first sets it (default:
    /// granted). See [`crate::consent`].
    pub fn default_consent(mut self, states: crate::consent::ConsentStates) -> Self {
        self.config.consent.default_state = states;
        self
    }
    /// Most events kept while consent is pending (see
    /// [`crate::consent::ConsentConfig::max_pending_events`]).
    pub fn max_pending_events(mut self, n: u64) -> Self {
        self.config.consent.max_pending_events = n;
        self
    }
    /// The device and app context at start (see [`TernConfig::context`]).
    pub fn context(mut self, context: tern_protocol::AppContext) -> Self {
        self.config.context = context;
        self
    }
    /// Whether lifecycle events are recorded (see [`TernConfig::auto_lifecycle`]).
    pub fn auto_lifecycle(mut self, on: bool) -> Self {
        self.config.auto_lifecycle = on;
        self
    }
    /// The host app's version, reported upstream.
    pub fn app_version(mut self, version: impl Into<String>) -> Self {
        self.config.sdk.app_version = Some(version.into());
        self
    }
    /// Certificate pinning: the relays' certificate chains must contain one of these
    /// public keys (`sha256/<base64 of the SHA-256 of the SubjectPublicKeyInfo>`, as
    /// OkHttp and TrustKit write them), on top of the normal verification. Give the
    /// current key and at least one backup key. Applied to the uploader's transport
    /// whatever [`Self::upload`] sets; see [`crate::net::pinning`].
    pub fn certificate_pins<I, S>(mut self, pins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.pins = Some(pins.into_iter().map(Into::into).collect());
        self
    }
    /// From `at` on, the certificate pins are no longer enforced (so an app that is
    /// never updated cannot lock itself out once the pinned keys are retired).
    pub fn certificate_pins_expire_at(mut self, at: SystemTime) -> Self {
        self.pins_expire_at = Some(at);
        self
    }

    /// Validates and returns the config.
    pub fn build(self) -> Result<TernConfig, ConfigError> {
        let mut c = self.config;
        let protocol = Limits::default();
        tern_protocol::limits::validate_id("app_id", c.app_id.as_str(), &protocol).map_err(
            |e| ConfigError {
                field: "app_id",
                reason: e.to_string(),
            },
        )?;
        if c.context.app_version.is_none() {
            c.context.app_version = c.sdk.app_version.clone();
        }
        c.context.sdk_version = Some(env!("CARGO_PKG_VERSION").into());
        tern_protocol::limits::validate_context(&c.context, &protocol).map_err(|e| {
            ConfigError {
                field: "context",
                reason: e.to_string(),
            }
        })?;
        if c.app_key.is_empty() {
            return Err(ConfigError {
                field: "app_key",
                reason: "is empty".into(),
            });
        }
        if c.data_dir.as_os_str().is_empty() {
            return Err(ConfigError {
                field: "data_dir",
                reason: "is empty".into(),
            });
        }
        if c.store_limits.max_bytes < 64 * 1024 {
            return Err(ConfigError {
                field: "store_limits.max_bytes",
                reason: format!("{} is below the minimum of 65536", c.store_limits.max_bytes),
            });
        }
        match (self.pins, self.pins_expire_at) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(ConfigError {
                    field: "certificate_pins_expire_at",
                    reason: "set without certificate_pins".into(),
                })
            }
            (Some(pins), expire_at) => {
                let mut set =
                    crate::net::pinning::PinSet::parse(&pins).map_err(|e| ConfigError {
                        field: "certificate_pins",
                        reason: e.to_string(),
                    })?;
                if let Some(at) = expire_at {
                    set = set.expiring_at(at);
                }
                if set.pins().len() < 2 {
                    tracing::warn!(
                        "certificate_pins: a single pin and no backup: a key change on the \
                         relays will stop uploads from this app version until the pins expire"
                    );
                }
                let Some(upload) = &mut c.upload else {
                    return Err(ConfigError {
                        field: "certificate_pins",
                        reason: "set with manual_upload (there is no uploader to pin)".into(),
                    });
                };
                upload.transport.pins = Some(set);
            }
        }
        if let Some(upload) = &c.upload {
            crate::net::transport::client_tls(&upload.transport, &[tern_protocol::ALPN]).map_err(
                |e| ConfigError {
                    field: "upload.transport.extra_ca_pem",
                    reason: e.to_string(),
                },
            )?;
        }
        if c.store_limits.max_events == 0 {
            return Err(ConfigError {
                field: "store_limits.max_events",
                reason: "must be at least 1".into(),
            });
        }
        let l = &c.limits;
        let looser = [
            ("limits.max_name_len", l.max_name_len, protocol.max_name_len),
            (
                "limits.max_properties",
                l.max_properties,
                protocol.max_properties,
            ),
            (
                "limits.max_string_len",
                l.max_string_len,
                protocol.max_string_len,
            ),
            ("limits.max_id_len", l.max_id_len, protocol.max_id_len),
            (
                "limits.max_event_bytes",
                l.max_event_bytes,
                protocol.max_event_bytes,
            ),
            (
                "limits.max_batch_events",
                l.max_batch_events,
                protocol.max_batch_events,
            ),
            (
                "limits.max_batch_bytes",
                l.max_batch_bytes,
                protocol.max_batch_bytes,
            ),
            (
                "limits.max_push_token_len",
                l.max_push_token_len,
                protocol.max_push_token_len,
            ),
        ];
        for (field, got, max) in looser {
            if got > max {
                return Err(ConfigError {
                    field,
                    reason: format!("{got} is looser than the protocol limit {max}"),
                });
            }
        }
        if !(1..=MAX_EXPOSURES).contains(&c.store_limits.max_exposures) {
            return Err(ConfigError {
                field: "store_limits.max_exposures",
                reason: format!(
                    "{} is outside 1..={MAX_EXPOSURES} (turn exposures off with auto_exposures(false))",
                    c.store_limits.max_exposures
                ),
            });
        }
        if !(1..=MAX_PENDING_EVENTS).contains(&c.consent.max_pending_events) {
            return Err(ConfigError {
                field: "consent.max_pending_events",
                reason: format!(
                    "{} is outside 1..={MAX_PENDING_EVENTS}",
                    c.consent.max_pending_events
                ),
            });
        }
        if c.push_refresh_interval < Duration::from_secs(1) {
            return Err(ConfigError {
                field: "push_refresh_interval",
                reason: "must be at least 1 second".into(),
            });
        }
        if c.session_timeout.is_zero() {
            return Err(ConfigError {
                field: "session_timeout",
                reason: "must be positive".into(),
            });
        }
        if c.apply_delay > MAX_APPLY_DELAY {
            return Err(ConfigError {
                field: "apply_delay",
                reason: format!("{:?} is above {MAX_APPLY_DELAY:?}", c.apply_delay),
            });
        }
        if let Some(u) = &c.upload {
            // Zero would time out every attempt or retry at once; the bounds keep the
            // uploader's deadlines (`now + d`) far from overflowing.
            let waits = [
                (
                    "upload.transport.connect_timeout",
                    u.transport.connect_timeout,
                    MAX_CONNECT_TIMEOUT,
                ),
                (
                    "upload.transport.request_timeout",
                    u.transport.request_timeout,
                    MAX_REQUEST_TIMEOUT,
                ),
                ("upload.retry.base", u.retry.base, u.retry.cap),
                (
                    "upload.router.quic_reprobe",
                    u.router.quic_reprobe,
                    MAX_QUIC_REPROBE,
                ),
            ];
            for (field, got, max) in waits {
                if got.is_zero() {
                    return Err(ConfigError {
                        field,
                        reason: "must be positive".into(),
                    });
                }
                if got > max {
                    return Err(ConfigError {
                        field,
                        reason: format!("{got:?} is above {max:?}"),
                    });
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN_A: &str = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    const PIN_B: &str = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn builder() -> TernConfigBuilder {
        TernConfig::builder("app", "key", "/tmp/tern-config-test")
    }

    #[test]
    fn network_waits_must_be_positive_and_bounded_naming_the_field() {
        use crate::net::transport::TransportConfig;
        use crate::policy::route::RouterConfig;
        let s = Duration::from_secs;
        let with = |t: TransportConfig, retry: RetryPolicy, router: RouterConfig| {
            builder().upload(
                UploadConfig::default()
                    .with_transport(t)
                    .with_retry(retry)
                    .with_router(router),
            )
        };
        let t = TransportConfig::default;
        let (r, q) = (RetryPolicy::default, RouterConfig::default);
        let at_the_bounds = with(
            t().with_connect_timeout(MAX_CONNECT_TIMEOUT)
                .with_request_timeout(MAX_REQUEST_TIMEOUT),
            r().with_base(r().cap),
            q().with_quic_reprobe(MAX_QUIC_REPROBE),
        );
        at_the_bounds.build().unwrap();
        let cases = [
            (
                with(t().with_connect_timeout(Duration::ZERO), r(), q()),
                "upload.transport.connect_timeout",
                "must be positive",
            ),
            (
                with(t().with_connect_timeout(s(61)), r(), q()),
                "upload.transport.connect_timeout",
                "61s is above 60s",
            ),
            (
                with(t().with_request_timeout(Duration::ZERO), r(), q()),
                "upload.transport.request_timeout",
                "must be positive",
            ),
            (
                with(t().with_request_timeout(Duration::MAX), r(), q()),
                "upload.transport.request_timeout",
                "is above 600s",
            ),
            (
                with(t(), r().with_base(Duration::ZERO), q()),
                "upload.retry.base",
                "must be positive",
            ),
            (
                with(t(), r().with_base(s(301)), q()),
                "upload.retry.base",
                "301s is above 300s",
            ),
            (
                with(t(), r(), q().with_quic_reprobe(Duration::ZERO)),
                "upload.router.quic_reprobe",
                "must be positive",
            ),
            (
                with(t(), r(), q().with_quic_reprobe(Duration::MAX)),
                "upload.router.quic_reprobe",
                "is above 86400s",
            ),
            (builder().apply_delay(s(6)), "apply_delay", "6s is above 5s"),
        ];
        for (b, field, reason) in cases {
            let e = b.build().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains(reason), "{e}");
        }
        // Without an uploader there is nothing to check.
        builder().manual_upload().build().unwrap();
    }

    #[test]
    fn certificate_pins_are_validated_naming_the_field_and_reach_the_transport() {
        let c = builder()
            .certificate_pins([PIN_A, PIN_B])
            .certificate_pins_expire_at(std::time::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
            .build()
            .unwrap();
        let pins = c.upload.unwrap().transport.pins.unwrap();
        assert_eq!(pins.pins().len(), 2);
        assert_eq!(pins.pins()[0].to_string(), PIN_A);
        assert_eq!(
            pins.expires_at(),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        // The builder's pins win over a transport set with `upload` afterwards.
        let c = builder()
            .certificate_pins([PIN_A])
            .upload(UploadConfig::default())
            .build()
            .unwrap();
        assert!(c.upload.unwrap().transport.pins.is_some());

        let cases: [(TernConfigBuilder, &str, &str); 5] = [
            (
                builder().certificate_pins([PIN_A, "sha256/short="]),
                "certificate_pins",
                "pin 1 (\"sha256/short=\")",
            ),
            (
                builder().certificate_pins([&PIN_A[..20]]),
                "certificate_pins",
                "pin 0",
            ),
            (
                builder().certificate_pins(Vec::<String>::new()),
                "certificate_pins",
                "no pins given",
            ),
            (
                builder().certificate_pins_expire_at(std::time::UNIX_EPOCH),
                "certificate_pins_expire_at",
                "set without certificate_pins",
            ),
            (
                builder().certificate_pins([PIN_A]).manual_upload(),
                "certificate_pins",
                "manual_upload",
            ),
        ];
        for (b, field, reason) in cases {
            let e = b.build().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains(reason), "{e}");
        }
    }

    #[test]
    fn exposures_are_on_by_default_and_their_bound_is_validated() {
        let c = builder().build().unwrap();
        assert!(c.auto_exposures);
        assert_eq!(c.store_limits.max_exposures, 4096);
        let c = builder()
            .auto_exposures(false)
            .max_exposures(10)
            .build()
            .unwrap();
        assert!(!c.auto_exposures);
        assert_eq!(c.store_limits.max_exposures, 10);
        for n in [0, MAX_EXPOSURES + 1] {
            let e = builder().max_exposures(n).build().unwrap_err();
            assert_eq!(e.field, "store_limits.max_exposures", "{e}");
        }
    }
}
