//! Records and enums of the foreign API, and their conversions from the core's types.
//! Conversions only: no decisions are made here.

use std::collections::HashMap;
use std::time::Duration;

use tern_protocol::{NodeState, RelayId, RelayNode, ShardMap, Value};

use crate::error::TernError;

/// A property, config or flag value.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum PropertyValue {
    /// UTF-8 text.
    Text {
        /// The text.
        value: String,
    },
    /// A signed 64-bit integer.
    Integer {
        /// The number.
        value: i64,
    },
    /// A 64-bit float (NaN and infinities are refused as event properties).
    Real {
        /// The number.
        value: f64,
    },
    /// A boolean.
    Bool {
        /// The boolean.
        value: bool,
    },
    /// A value of a type the SDK does not record (a date, a list, an object ...),
    /// passed on by the Kotlin/Swift layer so that the refusal is decided, counted and
    /// reported here: an event carrying one is refused as `InvalidEvent`. Never
    /// returned by the SDK.
    Unsupported {
        /// The foreign type's name, for the error message.
        type_name: String,
    },
}

impl From<Value> for PropertyValue {
    fn from(v: Value) -> Self {
        match v {
            Value::String(value) => PropertyValue::Text { value },
            Value::Int(value) => PropertyValue::Integer { value },
            Value::Float(value) => PropertyValue::Real { value },
            Value::Bool(value) => PropertyValue::Bool { value },
        }
    }
}

/// The core's properties; a value of an unsupported type refuses the event.
pub(crate) fn to_properties(
    props: HashMap<String, PropertyValue>,
) -> Result<tern_sdk::Properties, TernError> {
    props
        .into_iter()
        .map(|(k, v)| {
            let value = match v {
                PropertyValue::Text { value } => Value::String(value),
                PropertyValue::Integer { value } => Value::Int(value),
                PropertyValue::Real { value } => Value::Float(value),
                PropertyValue::Bool { value } => Value::Bool(value),
                PropertyValue::Unsupported { type_name } => {
                    return Err(TernError::InvalidEvent {
                        field: format!("property {k:?}"),
                        reason: format!(
                            "unsupported type {type_name}: use text, integer, number or boolean"
                        ),
                    })
                }
            };
            Ok((k, value))
        })
        .collect()
}

/// A relay to bootstrap from (alternative to a shard-map JSON document).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct RelayEndpoint {
    /// Stable relay id (part of the routing hash).
    pub id: String,
    /// QUIC endpoint, `host:port`.
    pub quic_addr: String,
    /// HTTPS base URL, e.g. `https://relay-1.example.net:8443`.
    pub https_url: String,
}

/// Everything `TernCore.start` needs. The Kotlin and Swift layers build it with a
/// builder; unset optional fields keep the core's defaults.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TernOptions {
    /// The app id.
    pub app_id: String,
    /// The app's key.
    pub app_key: String,
    /// Directory for the database and journal (created if missing); one instance per
    /// directory.
    pub data_dir: String,
    /// Bootstrap shard map as JSON (`{"version":1,"nodes":[...]}`, as relays serve it).
    #[uniffi(default = None)]
    pub shard_map_json: Option<String>,
    /// Bootstrap relays, used when `shard_map_json` is not set.
    #[uniffi(default = [])]
    pub relays: Vec<RelayEndpoint>,
    /// PEM certificate(s) to trust in addition to the built-in roots.
    #[uniffi(default = None)]
    pub ca_pem: Option<String>,
    /// Trust only `ca_pem` (private deployments, tests).
    #[uniffi(default = false)]
    pub trust_only_ca_pem: bool,
    /// Cut a batch at this many events (core default 100).
    #[uniffi(default = None)]
    pub max_batch_events: Option<u32>,
    /// Send everything once the oldest unsent event is this old (core default 30 s).
    #[uniffi(default = None)]
    pub max_batch_age_ms: Option<u64>,
    /// Bound of the device store in bytes (core default 10 MiB, minimum 64 KiB).
    #[uniffi(default = None)]
    pub max_store_bytes: Option<u64>,
    /// Session inactivity timeout (core default 30 min).
    #[uniffi(default = None)]
    pub session_timeout_ms: Option<u64>,
    /// Whether reading a flag records its exposure (core default on); when off, only
    /// `record_exposure` records exposures.
    #[uniffi(default = None)]
    pub auto_exposures: Option<bool>,
    /// The consent state of every purpose until the app first sets it (core default
    /// `Granted`); once set, the stored state wins.
    #[uniffi(default = None)]
    pub default_consent: Option<ConsentState>,
    /// Most events kept on the device while consent is pending (core default 1000,
    /// oldest dropped beyond it, counted).
    #[uniffi(default = None)]
    pub max_pending_events: Option<u64>,
    /// The push token is recorded again when the last `push_token` event is this old
    /// (core default 7 days; at least 1 s).
    #[uniffi(default = None)]
    pub push_refresh_interval_ms: Option<u64>,
    /// `android`, `ios`, ... (reported upstream; used by message targeting).
    #[uniffi(default = None)]
    pub platform: Option<String>,
    /// SDK name reported upstream, e.g. `tern-kotlin`.
    #[uniffi(default = None)]
    pub sdk_name: Option<String>,
    /// The host app's version, reported upstream.
    #[uniffi(default = None)]
    pub app_version: Option<String>,
    /// Certificate pins, `sha256/<base64>` of a public key (`SubjectPublicKeyInfo`):
    /// each relay's certificate chain must contain one of them, on top of the normal
    /// verification. The current key and at least one backup. Empty: no pinning.
    #[uniffi(default = [])]
    pub certificate_pins: Vec<String>,
    /// From this time on (ms since the Unix epoch) the pins are no longer enforced, so
    /// an app that is never updated cannot lock itself out. `None`: no expiry.
    #[uniffi(default = None)]
    pub certificate_pins_expire_at_ms: Option<u64>,
    /// Longest QUIC handshake or HTTPS connect before the attempt fails (core default
    /// 3 s; more than 0, at most 60 s).
    #[uniffi(default = None)]
    pub connect_timeout_ms: Option<u64>,
    /// Longest wait for a relay's reply (core default 10 s; more than 0, at most 10 min).
    #[uniffi(default = None)]
    pub request_timeout_ms: Option<u64>,
    /// The longest first wait after a failed upload; each further failure doubles it,
    /// up to 5 min (core default 1 s; more than 0, at most 5 min).
    #[uniffi(default = None)]
    pub retry_base_ms: Option<u64>,
    /// How long a relay QUIC failed for is used over HTTPS before QUIC is tried again
    /// (core default 5 min; more than 0, at most 24 h).
    #[uniffi(default = None)]
    pub quic_reprobe_ms: Option<u64>,
    /// Group apply: recorded events reach the store at most this long after the first
    /// of them (core default 1 s; 0 applies each at once; at most 5 s).
    #[uniffi(default = None)]
    pub apply_delay_ms: Option<u64>,
    /// The local IP address the SDK's QUIC and HTTPS sockets bind to (`None`: the OS
    /// picks). For simulators and tests that give each device its own source address;
    /// apps leave it unset.
    #[uniffi(default = None)]
    pub local_address: Option<String>,
    /// The app and device at start (protocol §5.2.1), filled by the platform glue.
    #[uniffi(default = None)]
    pub context: Option<crate::DeviceContext>,
    /// Automatic lifecycle events: `app_installed`, `app_updated`, `app_opened`
    /// (core default off; the Kotlin and Swift builders turn it on).
    #[uniffi(default = None)]
    pub auto_lifecycle: Option<bool>,
}

impl TernOptions {
    /// Options for `app_id` with `app_key`, data in `data_dir`, and every other
    /// setting unset (the core's defaults) — what the Kotlin and Swift builders start
    /// from; for Rust callers (tests, benchmarks). Not part of the foreign API.
    pub fn new(app_id: &str, app_key: &str, data_dir: &std::path::Path) -> Self {
        TernOptions {
            app_id: app_id.to_owned(),
            app_key: app_key.to_owned(),
            data_dir: data_dir.display().to_string(),
            shard_map_json: None,
            relays: Vec::new(),
            ca_pem: None,
            trust_only_ca_pem: false,
            max_batch_events: None,
            max_batch_age_ms: None,
            max_store_bytes: None,
            session_timeout_ms: None,
            auto_exposures: None,
            default_consent: None,
            max_pending_events: None,
            push_refresh_interval_ms: None,
            platform: None,
            sdk_name: None,
            app_version: None,
            certificate_pins: Vec::new(),
            certificate_pins_expire_at_ms: None,
            connect_timeout_ms: None,
            request_timeout_ms: None,
            retry_base_ms: None,
            quic_reprobe_ms: None,
            apply_delay_ms: None,
            local_address: None,
            context: None,
            auto_lifecycle: None,
        }
    }

    /// The core config; validation (by the core) names the field at fault.
    pub(crate) fn into_core(self) -> Result<tern_sdk::TernConfig, TernError> {
        let map = match (&self.shard_map_json, self.relays.is_empty()) {
            (Some(json), _) => {
                serde_json::from_str::<ShardMap>(json).map_err(|e| TernError::InvalidConfig {
                    field: "shard_map_json".into(),
                    reason: e.to_string(),
                })?
            }
            (None, false) => ShardMap {
                version: 0,
                nodes: self
                    .relays
                    .iter()
                    .map(|r| RelayNode {
                        id: RelayId::new(r.id.clone()),
                        quic_addr: r.quic_addr.clone(),
                        https_url: r.https_url.clone(),
                        weight: 1,
                        state: NodeState::Active,
                    })
                    .collect(),
            },
            (None, true) => ShardMap::default(),
        };
        let upload = self.upload()?;
        let mut b =
            tern_sdk::TernConfig::builder(self.app_id, self.app_key, self.data_dir).shard_map(map);
        let mut flush = tern_sdk::FlushPolicy::default();
        if let Some(n) = self.max_batch_events {
            flush = flush.with_max_batch_events(n);
        }
        if let Some(ms) = self.max_batch_age_ms {
            flush = flush.with_max_batch_age(Duration::from_millis(ms));
        }
        b = b.flush_policy(flush);
        if let Some(bytes) = self.max_store_bytes {
            b = b.max_store_bytes(bytes);
        }
        if let Some(on) = self.auto_exposures {
            b = b.auto_exposures(on);
        }
        if let Some(ctx) = self.context {
            b = b.context(ctx.into_core());
        }
        if let Some(on) = self.auto_lifecycle {
            b = b.auto_lifecycle(on);
        }
        if let Some(state) = self.default_consent {
            b = b.default_consent(tern_sdk::ConsentStates::all(state.into()));
        }
        if let Some(n) = self.max_pending_events {
            b = b.max_pending_events(n);
        }
        if let Some(ms) = self.session_timeout_ms {
            b = b.session_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = self.push_refresh_interval_ms {
            b = b.push_refresh_interval(Duration::from_millis(ms));
        }
        if let Some(ms) = self.apply_delay_ms {
            b = b.apply_delay(Duration::from_millis(ms));
        }
        b = b.upload(upload);
        if !self.certificate_pins.is_empty() {
            b = b.certificate_pins(self.certificate_pins);
        }
        if let Some(ms) = self.certificate_pins_expire_at_ms {
            b = b.certificate_pins_expire_at(std::time::UNIX_EPOCH + Duration::from_millis(ms));
        }
        let defaults = tern_protocol::SdkInfo {
            name: self.sdk_name.unwrap_or_else(|| "tern-uniffi".into()),
            version: env!("CARGO_PKG_VERSION").into(),
            platform: self.platform.unwrap_or_else(|| std::env::consts::OS.into()),
            app_version: self.app_version,
        };
        b = b.sdk_info(defaults);
        Ok(b.build()?)
    }

    /// The uploader settings: unset fields keep the core's defaults.
    fn upload(&self) -> Result<tern_sdk::upload::UploadConfig, TernError> {
        let mut transport = tern_sdk::transport::TransportConfig::default();
        if let Some(pem) = &self.ca_pem {
            transport = if self.trust_only_ca_pem {
                transport.with_only_ca(pem.clone())
            } else {
                transport.with_extra_ca(pem.clone())
            };
        }
        if let Some(ms) = self.connect_timeout_ms {
            transport = transport.with_connect_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = self.request_timeout_ms {
            transport = transport.with_request_timeout(Duration::from_millis(ms));
        }
        if let Some(text) = &self.local_address {
            let address = text.parse().map_err(|e| TernError::InvalidConfig {
                field: "local_address".into(),
                reason: format!("{text:?} is not an IP address: {e}"),
            })?;
            transport = transport.with_local_address(address);
        }
        let mut upload = tern_sdk::upload::UploadConfig::default().with_transport(transport);
        if let Some(ms) = self.retry_base_ms {
            upload = upload
                .with_retry(tern_sdk::RetryPolicy::default().with_base(Duration::from_millis(ms)));
        }
        if let Some(ms) = self.quic_reprobe_ms {
            upload = upload.with_router(
                tern_sdk::route::RouterConfig::default()
                    .with_quic_reprobe(Duration::from_millis(ms)),
            );
        }
        Ok(upload)
    }
}

/// The decision of a feature flag for this device/user.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum FlagDecision {
    /// Off (disabled, unknown, outside the rollout, or no config yet).
    Off,
    /// A boolean flag is on.
    On,
    /// A multivariate flag chose this variant.
    Variant {
        /// The variant key.
        key: String,
        /// Its payload, if any.
        value: Option<PropertyValue>,
    },
}

impl From<tern_sdk::FlagDecision> for FlagDecision {
    fn from(d: tern_sdk::FlagDecision) -> Self {
        match d {
            tern_sdk::FlagDecision::On => FlagDecision::On,
            tern_sdk::FlagDecision::Variant { key, value } => FlagDecision::Variant {
                key,
                value: value.map(Into::into),
            },
            // Off, and any decision kind this version does not know.
            _ => FlagDecision::Off,
        }
    }
}

/// What `try_record_exposure` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ExposureOutcome {
    /// Recorded now (durable like an event).
    Recorded,
    /// Recorded before for this flag, variant, user and config version.
    AlreadyRecorded,
    /// Nothing to expose: no config yet (or not open yet), or no flag of that key.
    NoFlag,
    /// Not recorded: the set of remembered exposures is full (counted).
    OverCap,
}

impl From<tern_sdk::ExposureOutcome> for ExposureOutcome {
    fn from(o: tern_sdk::ExposureOutcome) -> Self {
        match o {
            tern_sdk::ExposureOutcome::Recorded => ExposureOutcome::Recorded,
            tern_sdk::ExposureOutcome::AlreadyRecorded => ExposureOutcome::AlreadyRecorded,
            tern_sdk::ExposureOutcome::OverCap => ExposureOutcome::OverCap,
            // NoFlag, and any outcome this version does not know: nothing recorded.
            _ => ExposureOutcome::NoFlag,
        }
    }
}

/// A purpose the person using the app consents to separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConsentPurpose {
    /// Custom events, purchases, sessions, user properties, exposures, aliases.
    Analytics,
    /// In-app message impressions (and push records).
    Messaging,
}

impl From<ConsentPurpose> for tern_sdk::Purpose {
    fn from(p: ConsentPurpose) -> Self {
        match p {
            ConsentPurpose::Analytics => tern_sdk::Purpose::Analytics,
            ConsentPurpose::Messaging => tern_sdk::Purpose::Messaging,
        }
    }
}

/// The consent state of a purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConsentState {
    /// Events of the purpose are stored and sent.
    Granted,
    /// Events of the purpose are not kept (the calls still succeed; counted).
    Denied,
    /// Events of the purpose are kept on the device, not sent, until a decision.
    Pending,
}

impl From<ConsentState> for tern_sdk::ConsentState {
    fn from(s: ConsentState) -> Self {
        match s {
            ConsentState::Granted => tern_sdk::ConsentState::Granted,
            ConsentState::Denied => tern_sdk::ConsentState::Denied,
            ConsentState::Pending => tern_sdk::ConsentState::Pending,
        }
    }
}

impl From<tern_sdk::ConsentState> for ConsentState {
    fn from(s: tern_sdk::ConsentState) -> Self {
        match s {
            tern_sdk::ConsentState::Granted => ConsentState::Granted,
            tern_sdk::ConsentState::Denied => ConsentState::Denied,
            tern_sdk::ConsentState::Pending => ConsentState::Pending,
        }
    }
}

/// What the device knows about its config bundle.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConfigInfo {
    /// Bundle version (0 before any bundle).
    pub version: u64,
    /// Bundle ETag, if there is a bundle.
    pub etag: Option<String>,
    /// When the bundle was last fetched or confirmed (Unix ms).
    pub fetched_at_ms: Option<i64>,
    /// Loaded from the device cache and not confirmed by a fetch in this run.
    pub from_cache: bool,
    /// The relay served a stale copy (backend unreachable).
    pub stale: bool,
}

impl ConfigInfo {
    /// Before any bundle.
    pub(crate) fn none() -> Self {
        ConfigInfo {
            version: 0,
            etag: None,
            fetched_at_ms: None,
            from_cache: false,
            stale: false,
        }
    }
}

impl From<tern_sdk::ConfigInfo> for ConfigInfo {
    fn from(i: tern_sdk::ConfigInfo) -> Self {
        ConfigInfo {
            version: i.version,
            etag: i.etag.map(|e| e.as_str().to_owned()),
            fetched_at_ms: i.fetched_at_ms,
            from_cache: i.from_cache,
            stale: i.stale,
        }
    }
}

/// What changed in the config (a new bundle, or flag decisions after `identify`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConfigChange {
    /// Bundle version now in use.
    pub version: u64,
    /// Its ETag.
    pub etag: String,
    /// Keys of values added, changed or removed (sorted).
    pub changed_values: Vec<String>,
    /// Keys of flags whose decision or definition changed (sorted).
    pub changed_flags: Vec<String>,
    /// The bundle came from the device cache.
    pub from_cache: bool,
}

impl From<&tern_sdk::ConfigChange> for ConfigChange {
    fn from(c: &tern_sdk::ConfigChange) -> Self {
        ConfigChange {
            version: c.version,
            etag: c.etag.as_str().to_owned(),
            changed_values: c.changed_values.clone(),
            changed_flags: c.changed_flags.clone(),
            from_cache: c.from_cache,
        }
    }
}

/// A button of an in-app message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MessageAction {
    /// Reported as the impression's action.
    pub id: String,
    /// Button label.
    pub label: String,
    /// Deep link or URL to open.
    pub url: Option<String>,
}

/// An in-app message to show now.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct InAppMessage {
    /// Stable id; report taps with `message_impression(id, action_id)`.
    pub id: String,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Buttons.
    pub actions: Vec<MessageAction>,
    /// Higher shows first.
    pub priority: i32,
}

impl From<&tern_sdk::InAppMessage> for InAppMessage {
    fn from(m: &tern_sdk::InAppMessage) -> Self {
        InAppMessage {
            id: m.id.clone(),
            title: m.title.clone(),
            body: m.body.clone(),
            actions: m
                .actions
                .iter()
                .map(|a| MessageAction {
                    id: a.id.clone(),
                    label: a.label.clone(),
                    url: a.url.clone(),
                })
                .collect(),
            priority: m.priority,
        }
    }
}

/// Where an instance is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TernState {
    /// Created, not opened yet: calls are kept (bounded) until it opens.
    NotStarted,
    /// Open: calls go to the device store.
    Running,
    /// Opening failed (see `TernStats.store_error`): calls are counted no-ops.
    Unavailable,
    /// Shut down: calls are counted no-ops.
    Stopped,
}

/// A snapshot of the SDK's state and health counters.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TernStats {
    /// The life-cycle state.
    pub state: TernState,
    /// Recorded events are durable when the call returns.
    pub journal_ready: bool,
    /// The device store is open.
    pub store_ready: bool,
    /// Why the store could not be opened, if it could not.
    pub store_error: Option<String>,
    /// The device id (once the store is open).
    pub device_id: Option<String>,
    /// The user events are recorded under.
    pub user_id: Option<String>,
    /// Events waiting on the device.
    pub queued_events: u64,
    /// Bytes waiting on the device.
    pub queued_bytes: u64,
    /// Events dropped because the store was full. Cumulative.
    pub dropped_overflow: u64,
    /// Events refused by validation. Cumulative.
    pub dropped_invalid: u64,
    /// Events in batches the relay rejected. Cumulative.
    pub dropped_rejected: u64,
    /// Events recorded just as the user opted out, discarded when stored (this process).
    pub dropped_opted_out: u64,
    /// Recording calls refused because the user opted out (this process).
    pub refused_opted_out: u64,
    /// Events refused because the SDK could not keep them: the store could not be
    /// opened, or the queue of calls made before start was full. Cumulative; reported
    /// upstream.
    pub dropped_unavailable: u64,
    /// Events refused because the device journal could not be written (disk full or
    /// another write error). Cumulative; reported upstream.
    pub dropped_disk_full: u64,
    /// Records lost to damage on the device (journal regions or stored events that
    /// failed their checksum). Cumulative; reported upstream.
    pub dropped_corrupt: u64,
    /// Events a lost device store held whose delivery could not be known: neither
    /// resent nor known delivered. Cumulative; reported upstream.
    pub reset_unknown: u64,
    /// Events written to the device journal, session boundaries included (this process).
    pub events_recorded: u64,
    /// Recording calls waiting for the instance to open.
    pub pending_calls: u64,
    /// Recording calls refused because the queue of calls made before start was full.
    pub refused_not_started: u64,
    /// Calls kept before start and dropped because the instance never opened (start
    /// failed, or it was shut down first).
    pub dropped_pending: u64,
    /// Recording calls refused because the instance was shut down.
    pub refused_after_stop: u64,
    /// Recording calls refused because the instance could not start (`store_error`
    /// says why, e.g. the data directory is in use by another process).
    pub refused_unavailable: u64,
    /// Panics contained at the boundary (bugs: please report).
    pub internal_errors: u64,
    /// Calls of the error listener that threw (contained).
    pub error_listener_failures: u64,
    /// Log lines the log sink threw on (contained; this process).
    pub log_sink_failures: u64,
    /// `flush_and_wait` calls in progress.
    pub flush_waits: u64,
    /// The network state the platform last reported (`set_network_available`), if any.
    pub network_available: Option<bool>,
    /// Upload retries. Cumulative.
    pub retries: u64,
    /// Outcome of the last upload attempt.
    pub last_upload: Option<String>,
    /// Batches acknowledged by a relay (this process).
    pub batches_acked: u64,
    /// Events in acknowledged batches (this process).
    pub events_acked: u64,
    /// Config requests sent (this process).
    pub config_fetches: u64,
    /// A push subscription is open.
    pub push_connected: bool,
    /// Config changes delivered to listeners.
    pub changes_notified: u64,
    /// In-app messages delivered.
    pub messages_shown: u64,
    /// Listener calls that panicked or threw (contained).
    pub listener_panics: u64,
    /// Exposure events recorded (flag reads and `record_exposure`, this process).
    pub exposures_recorded: u64,
    /// Flag reads and `record_exposure` calls whose exposure was recorded before.
    pub exposures_already_recorded: u64,
    /// Exposures not recorded because the set of remembered exposures was full.
    pub exposures_over_cap: u64,
    /// Automatic exposures whose recording failed (the read still answered).
    pub exposures_failed: u64,
    /// Recording calls whose purpose was denied: nothing kept (this process).
    pub refused_consent: u64,
    /// Events found denied when moved into the store, not kept (cumulative).
    pub consent_denied: u64,
    /// Events held now, waiting for consent.
    pub consent_pending: u64,
    /// Held events sent on when their purpose was granted (cumulative).
    pub consent_pending_released: u64,
    /// Held events deleted when their purpose was denied (cumulative).
    pub consent_pending_discarded: u64,
    /// Held events dropped, oldest first, beyond `max_pending_events` (cumulative).
    pub consent_pending_overflow: u64,
    /// Deletion requests recorded (cumulative).
    pub deletion_requests: u64,
    /// Deletion requests acknowledged upstream (cumulative).
    pub deletion_requests_sent: u64,
}

impl From<tern_sdk::Stats> for TernStats {
    fn from(s: tern_sdk::Stats) -> Self {
        TernStats {
            state: TernState::Running,
            journal_ready: s.journal_ready,
            store_ready: s.store_ready,
            store_error: s.store_error,
            device_id: s.device_id.map(|d| d.to_string()),
            user_id: s.user_id.map(|u| u.as_str().to_owned()),
            queued_events: s.queued_events,
            queued_bytes: s.queued_bytes,
            dropped_overflow: s.dropped_overflow,
            dropped_invalid: s.dropped_invalid,
            dropped_rejected: s.dropped_rejected,
            dropped_opted_out: s.dropped_opted_out,
            refused_opted_out: s.refused_opted_out,
            dropped_unavailable: s.dropped_unavailable,
            dropped_disk_full: s.dropped_disk_full,
            dropped_corrupt: s.dropped_corrupt,
            reset_unknown: s.reset_unknown,
            events_recorded: s.events_recorded,
            pending_calls: 0,
            refused_not_started: 0,
            dropped_pending: 0,
            refused_after_stop: 0,
            refused_unavailable: 0,
            internal_errors: 0,
            error_listener_failures: 0,
            log_sink_failures: 0,
            flush_waits: 0,
            network_available: None,
            retries: s.retries,
            last_upload: s.last_upload,
            batches_acked: s.upload.batches_acked,
            events_acked: s.upload.events_acked,
            config_fetches: s.upload.config_fetches,
            push_connected: s.upload.push_connected,
            changes_notified: s.live.changes_notified,
            messages_shown: s.live.messages_shown,
            listener_panics: s.live.listener_panics,
            exposures_recorded: s.exposures.recorded,
            exposures_already_recorded: s.exposures.already_recorded,
            exposures_over_cap: s.exposures.over_cap,
            exposures_failed: s.exposures.failed,
            refused_consent: s.refused_consent,
            consent_denied: s.consent_counters.denied,
            consent_pending: s.consent_counters.pending_now,
            consent_pending_released: s.consent_counters.pending_released,
            consent_pending_discarded: s.consent_counters.pending_discarded,
            consent_pending_overflow: s.consent_counters.pending_overflow,
            deletion_requests: s.consent_counters.deletion_requests,
            deletion_requests_sent: s.consent_counters.deletion_requests_sent,
        }
    }
}

/// What `shutdown` achieved.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ShutdownReport {
    /// Everything recorded reached the store and files were closed in time (when
    /// false nothing is lost: the next start applies the rest).
    pub clean: bool,
    /// Events queued on the device at shutdown.
    pub queued_events: u64,
}

impl From<tern_sdk::ShutdownReport> for ShutdownReport {
    fn from(r: tern_sdk::ShutdownReport) -> Self {
        ShutdownReport {
            clean: r.clean,
            queued_events: r.queued_events,
        }
    }
}
