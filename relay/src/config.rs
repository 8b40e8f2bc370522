//! Relay configuration, layered: built-in defaults, then a TOML file, then
//! `TERN_RELAY_*` environment variables, then command-line flags. Every error names the
//! setting at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tern_protocol::{RelayId, ShardMap};

use crate::backend::kafka::{KafkaSettings, KafkaSinkError};
use crate::listen::Limits;

/// Where a relay delivers accepted batches.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// The HTTP backend (`backend_url`, `POST /v1/ingest`).
    #[default]
    Backend,
    /// A Kafka cluster (`[kafka]`).
    Kafka,
}

impl std::str::FromStr for SinkKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "backend" => Ok(SinkKind::Backend),
            "kafka" => Ok(SinkKind::Kafka),
            other => Err(format!("{other:?} is not backend or kafka")),
        }
    }
}

/// A setting is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message has line and key).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A value is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The setting, as named in the file (`quic_listen`), or the environment variable.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// TLS settings: certificate files, or `dev` for a self-signed certificate.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Generate a self-signed certificate for `localhost` and `127.0.0.1`.
    pub dev: bool,
    /// Where `dev` writes the certificate's PEM for clients to trust.
    pub dev_ca_out: Option<PathBuf>,
}

/// S3 (or S3-compatible) spool settings. When present, the spool goes there instead of
/// `spool_dir`.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL for S3-compatible servers; AWS when absent.
    pub endpoint: Option<String>,
    /// Bucket.
    pub bucket: String,
    /// Region.
    pub region: String,
    /// Access key id (or `TERN_RELAY_S3_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// Secret access key (or `TERN_RELAY_S3_SECRET_ACCESS_KEY`). Never printed.
    pub secret_access_key: Option<String>,
    /// Allow plain HTTP (test servers only).
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Bounds of `idle_timeout_ms`: 100 ms to one day.
const MIN_IDLE_TIMEOUT_MS: u64 = 100;
const MAX_IDLE_TIMEOUT_MS: u64 = 86_400_000;

/// Whether `addr` is a loopback address (IPv4-mapped IPv6 included).
fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Checks that `id` can be one segment of an object key (`spool/<id>/...`,
/// `record/<id>/...`, lease names): ASCII letters, digits, `.`, `_` and `-`, not
/// starting with `.` — nothing an object store would split, escape or resolve.
fn check_key_segment(field: &str, id: &str) -> Result<(), ConfigError> {
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            field,
            format!("{id:?} has {c:?}: use ASCII letters, digits, '.', '_' and '-' (it names object keys)"),
        ));
    }
    if id.starts_with('.') {
        return Err(invalid(
            field,
            format!("{id:?} starts with '.' (it names object keys)"),
        ));
    }
    Ok(())
}

/// File descriptors kept free beyond the listeners' connection caps: the spool, the
/// config cache, backend connections, logs.
pub const FD_RESERVE: u64 = 256;

/// `TERN_RELAY_LIMITS_<FIELD>` over the `[limits]` table (the same names, durations in
/// milliseconds: `TERN_RELAY_LIMITS_HEADER_TIMEOUT_MS`).
struct LimitsEnv<'a, E>(&'a mut Limits, &'a E);

impl<E: Fn(&str) -> Option<String>> LimitsEnv<'_, E> {
    fn apply(self) -> Result<(), ConfigError> {
        let LimitsEnv(limits, env) = self;
        let read = |var: String| -> Result<Option<u64>, ConfigError> {
            env(&var)
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|e| invalid(&var, format!("{v:?}: {e}")))
                })
                .transpose()
        };
        macro_rules! from_env {
            ($($field:ident),* $(,)?) => {$(
                let var = concat!("TERN_RELAY_LIMITS_", stringify!($field)).to_uppercase();
                if let Some(v) = env(&var) {
                    limits.$field = v
                        .trim()
                        .parse()
                        .map_err(|e| invalid(&var, format!("{v:?}: {e}")))?;
                }
            )*};
        }
        macro_rules! ms_from_env {
            ($($field:ident),* $(,)?) => {$(
                let var = concat!("TERN_RELAY_LIMITS_", stringify!($field), "_MS").to_uppercase();
                if let Some(ms) = read(var)? {
                    limits.$field = Duration::from_millis(ms);
                }
            )*};
        }
        ms_from_env!(
            request_read_timeout,
            header_timeout,
            handshake_timeout,
            handshake_queue
        );
        from_env!(
            request_bytes,
            request_bytes_per_source,
            max_handshakes,
            handshakes_per_source,
            retry_above_handshakes,
            handshake_pace_floor,
            quic_socket_receive_buffer,
            connections_per_source,
            https_max_connections,
            https_max_requests,
            requests_per_source,
            max_subscriptions,
            subscriptions_per_source,
            http2_max_streams,
            quic_receive_window,
            quic_stream_receive_window,
            admin_max_connections,
        );
        Ok(())
    }
}

/// The one check of the listeners' limits (file and environment alike), naming the
/// `[limits]` field at fault.
fn validate_limits(l: &Limits) -> Result<(), ConfigError> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let frame = crate::listen::max_request_frame();
    // One largest frame and the payload it decompresses to.
    let one_request = 2 * frame;
    if l.request_bytes_per_source < one_request {
        return Err(invalid(
            "limits.request_bytes_per_source",
            format!(
                "{} is below one largest request ({one_request} bytes: a frame and its payload)",
                l.request_bytes_per_source
            ),
        ));
    }
    if l.request_bytes < l.request_bytes_per_source {
        return Err(invalid(
            "limits.request_bytes",
            format!(
                "{} is below limits.request_bytes_per_source ({})",
                l.request_bytes, l.request_bytes_per_source
            ),
        ));
    }
    for (field, ms) in [
        ("limits.request_read_timeout_ms", ms(l.request_read_timeout)),
        ("limits.header_timeout_ms", ms(l.header_timeout)),
        ("limits.handshake_timeout_ms", ms(l.handshake_timeout)),
        ("limits.handshake_queue_ms", ms(l.handshake_queue)),
    ] {
        if !(100..=600_000).contains(&ms) {
            return Err(invalid(
                field,
                format!("{ms} is not within 100..=600000 ms"),
            ));
        }
    }
    for (field, total, per_source, per_field) in [
        (
            "limits.max_handshakes",
            l.max_handshakes,
            l.handshakes_per_source,
            "limits.handshakes_per_source",
        ),
        (
            "limits.https_max_connections",
            l.https_max_connections,
            l.connections_per_source,
            "limits.connections_per_source",
        ),
        (
            "limits.https_max_requests",
            l.https_max_requests,
            l.requests_per_source,
            "limits.requests_per_source",
        ),
        (
            "limits.max_subscriptions",
            l.max_subscriptions,
            l.subscriptions_per_source,
            "limits.subscriptions_per_source",
        ),
    ] {
        if total == 0 {
            return Err(invalid(field, "must be at least 1"));
        }
        if per_source == 0 {
            return Err(invalid(per_field, "must be at least 1"));
        }
    }
    if l.handshake_pace_floor == 0 {
        return Err(invalid("limits.handshake_pace_floor", "must be at least 1"));
    }
    if !(64 * 1024..=1 << 30).contains(&l.quic_socket_receive_buffer) {
        return Err(invalid(
            "limits.quic_socket_receive_buffer",
            format!(
                "{} is not within 65536..=1073741824 bytes",
                l.quic_socket_receive_buffer
            ),
        ));
    }
    if l.http2_max_streams == 0 {
        return Err(invalid("limits.http2_max_streams", "must be at least 1"));
    }
    if l.admin_max_connections < 2 {
        return Err(invalid(
            "limits.admin_max_connections",
            "must be at least 2",
        ));
    }
    for (field, window) in [
        ("limits.quic_receive_window", l.quic_receive_window),
        (
            "limits.quic_stream_receive_window",
            l.quic_stream_receive_window,
        ),
    ] {
        if !(16 * 1024..=1 << 30).contains(&window) {
            return Err(invalid(
                field,
                format!("{window} is not within 16384..=1073741824 bytes"),
            ));
        }
    }
    Ok(())
}

/// The relay's settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RelayConfig {
    /// This relay's id in the shard map.
    pub relay_id: String,
    /// QUIC (UDP) listen address.
    pub quic_listen: SocketAddr,
    /// HTTPS (TCP) listen address.
    pub https_listen: SocketAddr,
    /// Metrics and health listen address (`/metrics`, `/healthz`, `/readyz`).
    pub metrics_listen: SocketAddr,
    /// Backend base URL.
    pub backend_url: String,
    /// Backend bearer token.
    pub backend_token: Option<String>,
    /// Where accepted batches go: `backend` (the backend's `POST /v1/ingest`, the
    /// default) or `kafka` (`[kafka]`). The app registry, config, flags and messages
    /// come from `backend_url` either way.
    pub sink: SinkKind,
    /// The Kafka sink (`sink = "kafka"`).
    pub kafka: KafkaSettings,
    /// TLS.
    pub tls: TlsSettings,
    /// Shard map file (JSON), served to devices.
    pub shard_map: Option<PathBuf>,
    /// Directory of the local-disk spool (the embedded default object store).
    pub spool_dir: PathBuf,
    /// S3 spool; when set, objects go there and `spool_dir` becomes the local-disk
    /// fallback used while S3 fails.
    pub spool_s3: Option<S3Settings>,
    /// Bound of the local-disk spool directory (primary or fallback), bytes. When it
    /// is full (and S3, if any, is failing) devices are told to retry and `/readyz`
    /// reports not ready. 0 disables the local fallback of an S3 spool.
    pub spool_max_bytes: u64,
    /// Longest wait for one spool PUT, milliseconds.
    pub spool_store_timeout_ms: u64,
    /// Replay other relays' spool objects older than this many seconds (their relay
    /// is dead or stuck); 0 = only this relay's own prefix.
    pub replay_takeover_after_s: u64,
    /// Lifetime of a replay lease, seconds.
    pub replay_lease_ttl_s: u64,
    /// Most concurrent QUIC connections (established; handshakes in progress are
    /// bounded by `limits.max_handshakes`, HTTPS connections by
    /// `limits.https_max_connections`).
    pub max_connections: usize,
    /// QUIC idle timeout, milliseconds.
    pub idle_timeout_ms: u64,
    /// How often the app registry is refreshed from the backend, seconds.
    pub registry_refresh_s: u64,
    /// Deadline of one whole registry refresh (`GET /v1/apps`, body included), ms.
    pub registry_timeout_ms: u64,
    /// Connect timeout of registry refreshes, milliseconds.
    pub registry_connect_timeout_ms: u64,
    /// How long a key that left the backend's list stays valid, seconds (key rotation
    /// overlap; 0: removed at once).
    pub registry_key_grace_s: u64,
    /// A fetched list removing more than this share (0 to 1) of the known apps is held
    /// until an operator accepts it (an empty list always is).
    pub registry_max_removed_share: f64,
    /// Install suspicious registry lists without an operator's acceptance.
    pub registry_accept_suspicious: bool,
    /// Default per-app rate limit, events per second.
    pub rate_limit_events_per_sec: u64,
    /// Default per-app burst, events.
    pub rate_limit_burst: u64,
    /// Directory of the persisted config cache (one file per app). Default: a
    /// `tern-relay-config-cache` directory next to `spool_dir`.
    pub config_cache_dir: Option<PathBuf>,
    /// How often every app's config is polled from the backend, milliseconds.
    pub config_refresh_ms: u64,
    /// How long the forwarder lets a batch wait for others to share its backend
    /// request when a request slot is free, microseconds. 0: a batch goes out at once
    /// with whatever is already queued (batches still coalesce while every slot is
    /// busy). Trades backend requests per second against ack latency.
    pub forward_linger_us: u64,
    /// Backend requests the forwarder keeps in flight at once.
    pub forward_max_in_flight: usize,
    /// Admin API listen address (loopback by default: the API is plain HTTP).
    pub admin_listen: SocketAddr,
    /// Admin API bearer token. Unset: a random token is generated at start and
    /// written to `admin_token_file()` (mode 0600).
    pub admin_token: Option<Secret>,
    /// Where operator settings are persisted. Default: `tern-relay-admin.json` next
    /// to `spool_dir`.
    pub admin_state_file: Option<PathBuf>,
    /// Lets `tls.dev` (a self-signed certificate whose private key is generated at
    /// start) serve QUIC or HTTPS on a non-loopback address. Off: such a relay refuses
    /// to start. For test networks only; logged as a warning when used.
    pub allow_insecure_dev_tls_on_public_address: bool,
    /// Lets `metrics_listen` (unauthenticated `/metrics`, `/healthz`, `/readyz`) be a
    /// non-loopback address. Off: such a relay refuses to start. Turn it on only
    /// when the network in front of it limits who can scrape; logged as a warning.
    pub allow_unauthenticated_metrics_on_public_address: bool,
    /// Lets `admin_listen` (the admin API: plain HTTP, a bearer token in every
    /// request) be a non-loopback address. Off: such a relay refuses to start. Turn it
    /// on only when TLS or a private network sits in front of it; logged as a warning.
    pub allow_plaintext_admin_on_public_address: bool,
    /// What anonymous clients may hold (`[limits]`).
    pub limits: Limits,
}

/// A secret setting: shown as `<redacted>` in logs and debug output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            relay_id: "relay-1".into(),
            quic_listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            https_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            backend_url: "http://127.0.0.1:8080".into(),
            backend_token: None,
            sink: SinkKind::Backend,
            kafka: KafkaSettings::default(),
            tls: TlsSettings::default(),
            shard_map: None,
            spool_dir: PathBuf::from("tern-relay-spool"),
            spool_s3: None,
            spool_max_bytes: 1 << 30,
            spool_store_timeout_ms: 5_000,
            replay_takeover_after_s: 60,
            replay_lease_ttl_s: 60,
            max_connections: 10_000,
            idle_timeout_ms: 60_000,
            registry_refresh_s: 30,
            registry_timeout_ms: 10_000,
            registry_connect_timeout_ms: 3_000,
            registry_key_grace_s: 24 * 3600,
            registry_max_removed_share: 0.5,
            registry_accept_suspicious: false,
            rate_limit_events_per_sec: 50_000,
            rate_limit_burst: 100_000,
            config_cache_dir: None,
            config_refresh_ms: 500,
            forward_linger_us: 0,
            forward_max_in_flight: 8,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
            admin_token: None,
            admin_state_file: None,
            allow_insecure_dev_tls_on_public_address: false,
            allow_unauthenticated_metrics_on_public_address: false,
            allow_plaintext_admin_on_public_address: false,
            limits: Limits::default(),
        }
    }
}

/// Command-line overrides (`None`: not given).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--relay-id`
    pub relay_id: Option<String>,
    /// `--quic-listen`
    pub quic_listen: Option<SocketAddr>,
    /// `--https-listen`
    pub https_listen: Option<SocketAddr>,
    /// `--metrics-listen`
    pub metrics_listen: Option<SocketAddr>,
    /// `--backend-url`
    pub backend_url: Option<String>,
    /// `--backend-token`
    pub backend_token: Option<String>,
    /// `--sink`
    pub sink: Option<SinkKind>,
    /// `--kafka-brokers`
    pub kafka_brokers: Option<String>,
    /// `--kafka-topic`
    pub kafka_topic: Option<String>,
    /// `--cert`
    pub cert: Option<PathBuf>,
    /// `--key`
    pub key: Option<PathBuf>,
    /// `--dev`
    pub dev: bool,
    /// `--dev-ca-out`
    pub dev_ca_out: Option<PathBuf>,
    /// `--shard-map`
    pub shard_map: Option<PathBuf>,
    /// `--spool-dir`
    pub spool_dir: Option<PathBuf>,
    /// `--config-cache-dir`
    pub config_cache_dir: Option<PathBuf>,
    /// `--config-refresh-ms`
    pub config_refresh_ms: Option<u64>,
    /// `--admin-listen`
    pub admin_listen: Option<SocketAddr>,
    /// `--admin-state-file`
    pub admin_state_file: Option<PathBuf>,
    /// `--allow-insecure-dev-tls-on-public-address`
    pub allow_insecure_dev_tls_on_public_address: bool,
    /// `--allow-unauthenticated-metrics-on-public-address`
    pub allow_unauthenticated_metrics_on_public_address: bool,
    /// `--allow-plaintext-admin-on-public-address`
    pub allow_plaintext_admin_on_public_address: bool,
}

impl RelayConfig {
    /// Loads the layers: `file` (if any), then the environment (as given by `env`, so
    /// tests need not touch the process environment), then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: Overrides,
    ) -> Result<RelayConfig, ConfigError> {
        let mut c = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
            }
            None => RelayConfig::default(),
        };
        c.apply_env(env)?;
        c.apply_overrides(overrides);
        c.validate()?;
        Ok(c)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.parse()
                .map_err(|e: T::Err| invalid(var, format!("{v:?}: {e}")))
        }
        let get = |name: &str| {
            env(&format!("TERN_RELAY_{name}")).map(|v| (format!("TERN_RELAY_{name}"), v))
        };
        if let Some((_, v)) = get("RELAY_ID") {
            self.relay_id = v;
        }
        if let Some((k, v)) = get("QUIC_LISTEN") {
            self.quic_listen = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("HTTPS_LISTEN") {
            self.https_listen = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("METRICS_LISTEN") {
            self.metrics_listen = parse(&k, &v)?;
        }
        if let Some((_, v)) = get("BACKEND_URL") {
            self.backend_url = v;
        }
        if let Some((_, v)) = get("BACKEND_TOKEN") {
            self.backend_token = Some(v);
        }
        if let Some((k, v)) = get("SINK") {
            self.sink = parse(&k, &v)?;
        }
        if let Some((_, v)) = get("KAFKA_BROKERS") {
            self.kafka.brokers = v;
        }
        if let Some((_, v)) = get("KAFKA_TOPIC") {
            self.kafka.topic = v;
        }
        if let Some((_, v)) = get("SHARD_MAP") {
            self.shard_map = Some(v.into());
        }
        if let Some((_, v)) = get("SPOOL_DIR") {
            self.spool_dir = v.into();
        }
        if let Some((k, v)) = get("SPOOL_MAX_BYTES") {
            self.spool_max_bytes = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("REPLAY_TAKEOVER_AFTER_S") {
            self.replay_takeover_after_s = parse(&k, &v)?;
        }
        if let Some((_, v)) = get("CONFIG_CACHE_DIR") {
            self.config_cache_dir = Some(v.into());
        }
        if let Some((k, v)) = get("CONFIG_REFRESH_MS") {
            self.config_refresh_ms = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("ADMIN_LISTEN") {
            self.admin_listen = parse(&k, &v)?;
        }
        if let Some((_, v)) = get("ADMIN_TOKEN") {
            self.admin_token = Some(Secret(v));
        }
        if let Some((_, v)) = get("ADMIN_STATE_FILE") {
            self.admin_state_file = Some(v.into());
        }
        if let Some((k, v)) = get("FORWARD_LINGER_US") {
            self.forward_linger_us = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("FORWARD_MAX_IN_FLIGHT") {
            self.forward_max_in_flight = parse(&k, &v)?;
        }
        if let Some(s3) = self.spool_s3.as_mut() {
            if let Some((_, v)) = get("S3_ACCESS_KEY_ID") {
                s3.access_key_id = Some(v);
            }
            if let Some((_, v)) = get("S3_SECRET_ACCESS_KEY") {
                s3.secret_access_key = Some(v);
            }
        }
        if let Some((k, v)) = get("MAX_CONNECTIONS") {
            self.max_connections = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("RATE_LIMIT_EVENTS_PER_SEC") {
            self.rate_limit_events_per_sec = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("RATE_LIMIT_BURST") {
            self.rate_limit_burst = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("IDLE_TIMEOUT_MS") {
            self.idle_timeout_ms = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("ALLOW_INSECURE_DEV_TLS_ON_PUBLIC_ADDRESS") {
            self.allow_insecure_dev_tls_on_public_address = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("ALLOW_UNAUTHENTICATED_METRICS_ON_PUBLIC_ADDRESS") {
            self.allow_unauthenticated_metrics_on_public_address = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("ALLOW_PLAINTEXT_ADMIN_ON_PUBLIC_ADDRESS") {
            self.allow_plaintext_admin_on_public_address = parse(&k, &v)?;
        }
        LimitsEnv(&mut self.limits, &env).apply()?;
        if let Some((k, v)) = get("REGISTRY_REFRESH_S") {
            self.registry_refresh_s = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("REGISTRY_TIMEOUT_MS") {
            self.registry_timeout_ms = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("REGISTRY_CONNECT_TIMEOUT_MS") {
            self.registry_connect_timeout_ms = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("REGISTRY_KEY_GRACE_S") {
            self.registry_key_grace_s = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("REGISTRY_MAX_REMOVED_SHARE") {
            self.registry_max_removed_share = parse(&k, &v)?;
        }
        if let Some((k, v)) = get("REGISTRY_ACCEPT_SUSPICIOUS") {
            self.registry_accept_suspicious = parse(&k, &v)?;
        }
        Ok(())
    }

    fn apply_overrides(&mut self, o: Overrides) {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = o.$field { self.$field = v; } )* };
        }
        set!(
            relay_id,
            quic_listen,
            https_listen,
            metrics_listen,
            backend_url,
            spool_dir
        );
        if o.backend_token.is_some() {
            self.backend_token = o.backend_token;
        }
        if let Some(v) = o.sink {
            self.sink = v;
        }
        if let Some(v) = o.kafka_brokers {
            self.kafka.brokers = v;
        }
        if let Some(v) = o.kafka_topic {
            self.kafka.topic = v;
        }
        if o.shard_map.is_some() {
            self.shard_map = o.shard_map;
        }
        if o.config_cache_dir.is_some() {
            self.config_cache_dir = o.config_cache_dir;
        }
        if let Some(v) = o.config_refresh_ms {
            self.config_refresh_ms = v;
        }
        if let Some(v) = o.admin_listen {
            self.admin_listen = v;
        }
        if o.admin_state_file.is_some() {
            self.admin_state_file = o.admin_state_file;
        }
        if o.cert.is_some() {
            self.tls.cert = o.cert;
        }
        if o.key.is_some() {
            self.tls.key = o.key;
        }
        if o.dev_ca_out.is_some() {
            self.tls.dev_ca_out = o.dev_ca_out;
        }
        self.tls.dev |= o.dev;
        self.allow_insecure_dev_tls_on_public_address |= o.allow_insecure_dev_tls_on_public_address;
        self.allow_unauthenticated_metrics_on_public_address |=
            o.allow_unauthenticated_metrics_on_public_address;
        self.allow_plaintext_admin_on_public_address |= o.allow_plaintext_admin_on_public_address;
    }

    fn validate(&self) -> Result<(), ConfigError> {
        tern_protocol::limits::validate_id("relay_id", &self.relay_id, &Default::default())
            .map_err(|e| invalid("relay_id", e.to_string()))?;
        if !(self.backend_url.starts_with("http://") || self.backend_url.starts_with("https://")) {
            return Err(invalid(
                "backend_url",
                format!("{:?} is not an http(s) URL", self.backend_url),
            ));
        }
        if self.sink == SinkKind::Kafka {
            self.kafka.validate().map_err(|e| match e {
                KafkaSinkError::Invalid { field, reason } => invalid(field, reason),
                other => invalid("kafka", other.to_string()),
            })?;
        }
        match (&self.tls.cert, &self.tls.key, self.tls.dev) {
            (Some(_), Some(_), false) | (None, None, true) => {}
            (_, _, true) => return Err(invalid("tls", "use either dev or cert and key, not both")),
            _ => {
                return Err(invalid(
                    "tls",
                    "set both tls.cert and tls.key, or tls.dev = true",
                ))
            }
        }
        if let Some(s3) = &self.spool_s3 {
            if s3.bucket.is_empty() {
                return Err(invalid("spool_s3.bucket", "is empty"));
            }
            if s3.region.is_empty() {
                return Err(invalid("spool_s3.region", "is empty"));
            }
            if s3.access_key_id.is_none() != s3.secret_access_key.is_none() {
                return Err(invalid(
                    "spool_s3",
                    "set both access_key_id and secret_access_key (or neither)",
                ));
            }
        }
        if self.spool_s3.is_none() && self.spool_max_bytes == 0 {
            return Err(invalid(
                "spool_max_bytes",
                "0 leaves the local-disk spool no room (0 only disables the fallback of an S3 spool)",
            ));
        }
        if self.spool_store_timeout_ms == 0 {
            return Err(invalid("spool_store_timeout_ms", "must be at least 1"));
        }
        if self.replay_lease_ttl_s == 0 {
            return Err(invalid("replay_lease_ttl_s", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.rate_limit_burst < tern_protocol::Limits::default().max_batch_events as u64 {
            return Err(invalid(
                "rate_limit_burst",
                format!(
                    "{} is below the largest batch (1000 events)",
                    self.rate_limit_burst
                ),
            ));
        }
        if self.config_refresh_ms < 10 {
            return Err(invalid("config_refresh_ms", "must be at least 10"));
        }
        if self.rate_limit_events_per_sec == 0 {
            return Err(invalid("rate_limit_events_per_sec", "must be at least 1"));
        }
        if self.forward_linger_us > 100_000 {
            return Err(invalid(
                "forward_linger_us",
                format!("{} is above 100000 (100 ms)", self.forward_linger_us),
            ));
        }
        if let Some(t) = &self.admin_token {
            if t.0.trim().len() < 16 {
                return Err(invalid(
                    "admin_token",
                    "must have at least 16 characters (or leave it unset to generate one)",
                ));
            }
        }
        if self.forward_max_in_flight == 0 {
            return Err(invalid("forward_max_in_flight", "must be at least 1"));
        }
        if self.registry_timeout_ms == 0 {
            return Err(invalid("registry_timeout_ms", "must be at least 1"));
        }
        if self.registry_connect_timeout_ms == 0 {
            return Err(invalid("registry_connect_timeout_ms", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.registry_max_removed_share) {
            return Err(invalid(
                "registry_max_removed_share",
                format!("{} is not in [0, 1]", self.registry_max_removed_share),
            ));
        }
        validate_limits(&self.limits)?;
        self.validate_ops()
    }

    /// Checks of the settings that keep a relay safe to operate: ids usable as object
    /// keys, timeouts that exist, development shortcuts kept off public addresses.
    fn validate_ops(&self) -> Result<(), ConfigError> {
        check_key_segment("relay_id", &self.relay_id)?;
        if !(MIN_IDLE_TIMEOUT_MS..=MAX_IDLE_TIMEOUT_MS).contains(&self.idle_timeout_ms) {
            return Err(invalid(
                "idle_timeout_ms",
                format!(
                    "{} is outside {MIN_IDLE_TIMEOUT_MS}..={MAX_IDLE_TIMEOUT_MS} \
                     (0 would keep idle connections forever)",
                    self.idle_timeout_ms
                ),
            ));
        }
        if self.tls.dev && !self.allow_insecure_dev_tls_on_public_address {
            for (field, addr) in [
                ("quic_listen", self.quic_listen),
                ("https_listen", self.https_listen),
            ] {
                if !is_loopback(addr) {
                    return Err(invalid(
                        "tls.dev",
                        format!(
                            "a self-signed development certificate on {field} = {addr}, \
                             which is not a loopback address: give tls.cert and tls.key, \
                             or set allow_insecure_dev_tls_on_public_address \
                             (--allow-insecure-dev-tls-on-public-address) for a test network"
                        ),
                    ));
                }
            }
        }
        if !is_loopback(self.metrics_listen)
            && !self.allow_unauthenticated_metrics_on_public_address
        {
            return Err(invalid(
                "metrics_listen",
                format!(
                    "{} is not a loopback address and /metrics has no authentication: \
                     keep it on loopback, or set allow_unauthenticated_metrics_on_public_address \
                     (--allow-unauthenticated-metrics-on-public-address) when the network \
                     limits who can reach it",
                    self.metrics_listen
                ),
            ));
        }
        if !is_loopback(self.admin_listen) && !self.allow_plaintext_admin_on_public_address {
            return Err(invalid(
                "admin_listen",
                format!(
                    "{} is not a loopback address and the admin API is plain HTTP (its \
                     bearer token would cross the network in clear): keep it on loopback \
                     behind a tunnel, or set allow_plaintext_admin_on_public_address \
                     (--allow-plaintext-admin-on-public-address) when TLS or a private \
                     network sits in front of it",
                    self.admin_listen
                ),
            ));
        }
        Ok(())
    }

    /// Warnings about overrides in force (the binary logs them at start).
    pub fn override_warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.tls.dev && (!is_loopback(self.quic_listen) || !is_loopback(self.https_listen)) {
            w.push(format!(
                "allow_insecure_dev_tls_on_public_address: serving a self-signed development \
                 certificate on {} / {} (not loopback); never do this in production",
                self.quic_listen, self.https_listen
            ));
        }
        if !is_loopback(self.metrics_listen) {
            w.push(format!(
                "allow_unauthenticated_metrics_on_public_address: /metrics, /healthz and /readyz \
                 answer anyone who reaches {} without authentication",
                self.metrics_listen
            ));
        }
        if !is_loopback(self.admin_listen) {
            w.push(format!(
                "allow_plaintext_admin_on_public_address: the admin API answers on {} over \
                 plain HTTP",
                self.admin_listen
            ));
        }
        w
    }

    /// Checks that the connection caps fit the process's open-file limit `nofile`:
    /// HTTPS, admin and metrics connections each take a descriptor, and
    /// [`FD_RESERVE`] more are kept for the spool, the config cache and the backend.
    pub fn check_fd_limit(&self, nofile: u64) -> Result<(), ConfigError> {
        let l = &self.limits;
        let needed =
            l.https_max_connections as u64 + 2 * l.admin_max_connections as u64 + FD_RESERVE;
        if needed > nofile {
            return Err(invalid(
                "limits.https_max_connections",
                format!(
                    "{} HTTPS + 2 x {} admin/metrics connections + {FD_RESERVE} reserved \
                     descriptors exceed the open-file limit ({nofile}); raise it (ulimit -n) \
                     or lower the caps",
                    l.https_max_connections, l.admin_max_connections
                ),
            ));
        }
        Ok(())
    }

    /// The listeners' settings.
    pub fn listen_config(&self) -> crate::listen::ListenConfig {
        let mut listen = crate::listen::ListenConfig::new(self.quic_listen, self.https_listen);
        listen.max_connections = self.max_connections;
        listen.idle_timeout = self.idle_timeout();
        listen.limits = self.limits.clone();
        listen
    }

    /// The relay id.
    pub fn relay_id(&self) -> RelayId {
        RelayId::new(&self.relay_id)
    }

    /// The QUIC idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The registry refresh interval.
    pub fn registry_refresh(&self) -> Duration {
        Duration::from_secs(self.registry_refresh_s.max(1))
    }

    /// How fetched app registries are installed (deadlines, key grace, suspicion).
    pub fn registry_policy(&self) -> crate::policy::apps::RegistryPolicy {
        crate::policy::apps::RegistryPolicy::default()
            .with_timeouts(
                Duration::from_millis(self.registry_timeout_ms),
                Duration::from_millis(self.registry_connect_timeout_ms),
            )
            .with_key_grace(Duration::from_secs(self.registry_key_grace_s))
            .with_max_removed_share(self.registry_max_removed_share)
            .with_accept_suspicious(self.registry_accept_suspicious)
    }

    /// The spool PUT timeout.
    pub fn spool_store_timeout(&self) -> Duration {
        Duration::from_millis(self.spool_store_timeout_ms)
    }

    /// Takeover age for replay (`None`: disabled).
    pub fn replay_takeover_after(&self) -> Option<Duration> {
        (self.replay_takeover_after_s > 0)
            .then(|| Duration::from_secs(self.replay_takeover_after_s))
    }

    /// Replay lease lifetime.
    pub fn replay_lease_ttl(&self) -> Duration {
        Duration::from_secs(self.replay_lease_ttl_s)
    }

    /// The local-disk spool directory as an object store (created if missing).
    pub fn local_spool_store(
        &self,
    ) -> Result<std::sync::Arc<dyn object_store::ObjectStore>, ConfigError> {
        // Devices' events: no other local user may read them (`crate::private`).
        crate::private::private_dir(&self.spool_dir)
            .map_err(|e| invalid("spool_dir", format!("{}: {e}", self.spool_dir.display())))?;
        // fsync: `Accepted{spooled}` promises the batch survives a power loss or OS
        // crash too, not just a relay crash (one fsync per object, i.e. per group commit).
        object_store::local::LocalFileSystem::new_with_prefix(&self.spool_dir)
            .map(|s| {
                std::sync::Arc::new(s.with_fsync(true))
                    as std::sync::Arc<dyn object_store::ObjectStore>
            })
            .map_err(|e| invalid("spool_dir", e.to_string()))
    }

    /// The local-disk fallback of an S3 spool: `spool_dir`, when `spool_s3` is set and
    /// `spool_max_bytes` > 0.
    pub fn spool_fallback_store(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn object_store::ObjectStore>>, ConfigError> {
        if self.spool_s3.is_none() || self.spool_max_bytes == 0 {
            return Ok(None);
        }
        self.local_spool_store().map(Some)
    }

    /// The config cache directory: `config_cache_dir`, or `tern-relay-config-cache`
    /// next to `spool_dir`.
    pub fn config_cache_dir(&self) -> PathBuf {
        match &self.config_cache_dir {
            Some(dir) => dir.clone(),
            None => self
                .spool_dir
                .parent()
                .unwrap_or(Path::new(""))
                .join("tern-relay-config-cache"),
        }
    }

    /// The config polling interval.
    pub fn config_refresh(&self) -> Duration {
        Duration::from_millis(self.config_refresh_ms)
    }

    /// Where operator settings are persisted.
    pub fn admin_state_file(&self) -> PathBuf {
        match &self.admin_state_file {
            Some(p) => p.clone(),
            None => self.beside_spool("tern-relay-admin.json"),
        }
    }

    /// Where a generated admin token is written.
    pub fn admin_token_file(&self) -> PathBuf {
        self.admin_state_file().with_extension("token")
    }

    fn beside_spool(&self, name: &str) -> PathBuf {
        self.spool_dir.parent().unwrap_or(Path::new("")).join(name)
    }

    /// The forwarder's coalescing linger.
    pub fn forward_linger(&self) -> Duration {
        Duration::from_micros(self.forward_linger_us)
    }

    /// The spool's object store: S3 when `spool_s3` is set, else the local directory
    /// `spool_dir` (created if missing).
    pub fn spool_store(
        &self,
    ) -> Result<std::sync::Arc<dyn object_store::ObjectStore>, ConfigError> {
        if let Some(s3) = &self.spool_s3 {
            let mut b = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(&s3.bucket)
                .with_region(&s3.region)
                // Fail fast: a failing store sends objects to the local fallback, and
                // a device waiting for its ack should not wait minutes. (Client options
                // first: they replace what `with_allow_http` sets.)
                .with_client_options(
                    object_store::ClientOptions::new()
                        .with_connect_timeout(Duration::from_secs(2))
                        .with_timeout(self.spool_store_timeout()),
                )
                .with_allow_http(s3.allow_http)
                .with_retry(object_store::RetryConfig {
                    max_retries: 2,
                    retry_timeout: self.spool_store_timeout(),
                    ..Default::default()
                });
            if let Some(endpoint) = &s3.endpoint {
                b = b
                    .with_endpoint(endpoint)
                    .with_virtual_hosted_style_request(false);
            }
            if let (Some(k), Some(sk)) = (&s3.access_key_id, &s3.secret_access_key) {
                b = b.with_access_key_id(k).with_secret_access_key(sk);
            }
            return b
                .build()
                .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn object_store::ObjectStore>)
                .map_err(|e| invalid("spool_s3", e.to_string()));
        }
        self.local_spool_store()
    }

    /// Loads and validates the shard map file ([`crate::remote::shardmap::read`]: strict
    /// schema, the protocol's validity rule), or an empty map (version 0) when none is
    /// configured. A file that fails is an error naming the node and field at fault.
    pub fn load_shard_map(&self) -> Result<ShardMap, ConfigError> {
        let Some(path) = &self.shard_map else {
            return Ok(ShardMap::default());
        };
        crate::remote::shardmap::read(path).map_err(|e| invalid("shard_map", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn dev() -> Overrides {
        Overrides {
            dev: true,
            ..Overrides::default()
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_local_spool_directory_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = RelayConfig::load(
            None,
            |_| None,
            Overrides {
                spool_dir: Some(spool.clone()),
                ..dev()
            },
        )
        .unwrap();
        c.local_spool_store().unwrap();
        let mode = std::fs::metadata(&spool).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, "relay_id = \"from-file\"\nquic_listen = \"127.0.0.1:5000\"\nbackend_url = \"http://file\"\n[tls]\ndev = true\n").unwrap();
        let env = |k: &str| (k == "TERN_RELAY_QUIC_LISTEN").then(|| "127.0.0.1:6000".to_string());
        let c = RelayConfig::load(
            Some(&file),
            env,
            Overrides {
                backend_url: Some("http://cli".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.relay_id, "from-file");
        assert_eq!(c.quic_listen.port(), 6000, "env beats file");
        assert_eq!(c.backend_url, "http://cli", "flags beat env and file");
        assert_eq!(c.https_listen.port(), 8443, "default kept");
        let c = RelayConfig::load(
            Some(&file),
            |k: &str| (k == "TERN_RELAY_SPOOL_DIR").then(|| "/from/env".to_string()),
            Overrides {
                spool_dir: Some("/from/cli".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(
            c.spool_dir,
            PathBuf::from("/from/cli"),
            "--spool-dir applies"
        );
    }

    #[test]
    fn s3_settings_are_checked_and_secrets_come_from_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(
            &file,
            "[tls]\ndev = true\n[spool_s3]\nregion = \"us-east-1\"\n",
        )
        .unwrap();
        let e = RelayConfig::load(Some(&file), no_env, Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("spool_s3.bucket"), "{e}");
        std::fs::write(
            &file,
            "[tls]\ndev = true\n[spool_s3]\nbucket = \"b\"\nregion = \"r\"\naccess_key_id = \"k\"\n",
        )
        .unwrap();
        let e = RelayConfig::load(Some(&file), no_env, Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("spool_s3:"), "{e}");
        let env = |k: &str| (k == "TERN_RELAY_S3_SECRET_ACCESS_KEY").then(|| "s3cr3t".to_string());
        let c = RelayConfig::load(Some(&file), env, Overrides::default()).unwrap();
        let s3 = c.spool_s3.as_ref().unwrap();
        assert_eq!(s3.secret_access_key.as_deref(), Some("s3cr3t"));
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "secrets are redacted in Debug"
        );
        assert!(c.spool_store().is_ok());
    }

    #[test]
    fn config_cache_settings_layer_and_default_next_to_the_spool() {
        let c = RelayConfig::load(
            None,
            no_env,
            Overrides {
                spool_dir: Some("/var/lib/tern/spool".into()),
                ..dev()
            },
        )
        .unwrap();
        assert_eq!(c.spool_dir, PathBuf::from("/var/lib/tern/spool"));
        assert_eq!(
            c.config_cache_dir(),
            PathBuf::from("/var/lib/tern/tern-relay-config-cache")
        );
        assert_eq!(c.config_refresh(), Duration::from_millis(500));
        let env = |k: &str| match k {
            "TERN_RELAY_CONFIG_CACHE_DIR" => Some("/env/cache".to_string()),
            "TERN_RELAY_CONFIG_REFRESH_MS" => Some("250".to_string()),
            _ => None,
        };
        let c = RelayConfig::load(None, env, dev()).unwrap();
        assert_eq!(c.config_cache_dir(), PathBuf::from("/env/cache"));
        assert_eq!(c.config_refresh(), Duration::from_millis(250));
        let c = RelayConfig::load(
            None,
            env,
            Overrides {
                config_cache_dir: Some("/cli/cache".into()),
                config_refresh_ms: Some(1000),
                ..dev()
            },
        )
        .unwrap();
        assert_eq!(c.config_cache_dir(), PathBuf::from("/cli/cache"));
        assert_eq!(c.config_refresh(), Duration::from_secs(1));
        let e = RelayConfig::load(
            None,
            no_env,
            Overrides {
                config_refresh_ms: Some(0),
                ..dev()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("config_refresh_ms"), "{e}");
    }

    #[test]
    fn forwarding_knobs_from_env_and_file_are_checked() {
        let c = RelayConfig::load(None, no_env, dev()).unwrap();
        assert_eq!(c.forward_linger(), Duration::ZERO);
        assert_eq!(c.forward_max_in_flight, 8);
        let env = |k: &str| match k {
            "TERN_RELAY_FORWARD_LINGER_US" => Some("500".to_string()),
            "TERN_RELAY_FORWARD_MAX_IN_FLIGHT" => Some("16".to_string()),
            _ => None,
        };
        let c = RelayConfig::load(None, env, dev()).unwrap();
        assert_eq!(c.forward_linger(), Duration::from_micros(500));
        assert_eq!(c.forward_max_in_flight, 16);
        let bad = |k: &str| (k == "TERN_RELAY_FORWARD_MAX_IN_FLIGHT").then(|| "0".to_string());
        let e = RelayConfig::load(None, bad, dev()).unwrap_err().to_string();
        assert!(e.starts_with("forward_max_in_flight"), "{e}");
        let bad = |k: &str| (k == "TERN_RELAY_FORWARD_LINGER_US").then(|| "soon".to_string());
        let e = RelayConfig::load(None, bad, dev()).unwrap_err().to_string();
        assert!(e.contains("TERN_RELAY_FORWARD_LINGER_US"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, "forward_linger_us = 200000\n").unwrap();
        let e = RelayConfig::load(Some(&file), no_env, dev())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("forward_linger_us"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, "quic_listen = \"not an address\"\n").unwrap();
        let e = RelayConfig::load(Some(&file), no_env, dev())
            .unwrap_err()
            .to_string();
        assert!(e.contains("quic_listen") && e.contains("relay.toml"), "{e}");
        std::fs::write(&file, "unknown_setting = 1\n").unwrap();
        let e = RelayConfig::load(Some(&file), no_env, dev())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown_setting"), "{e}");
        let env = |k: &str| (k == "TERN_RELAY_MAX_CONNECTIONS").then(|| "many".to_string());
        let e = RelayConfig::load(None, env, dev()).unwrap_err().to_string();
        assert!(e.starts_with("TERN_RELAY_MAX_CONNECTIONS"), "{e}");
        let e = RelayConfig::load(None, no_env, Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("tls:"), "{e}");
        let bad = Overrides {
            backend_url: Some("ftp://x".into()),
            ..dev()
        };
        let e = RelayConfig::load(None, no_env, bad)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backend_url"), "{e}");
    }

    #[test]
    fn unsafe_operations_settings_are_refused_naming_the_field() {
        let err = |env: &dyn Fn(&str) -> Option<String>, o: Overrides| {
            RelayConfig::load(None, env, o).unwrap_err().to_string()
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, "idle_timeout_ms = 0\n").unwrap();
        let e = RelayConfig::load(Some(&file), no_env, dev())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("idle_timeout_ms"), "{e}");
        let e = err(
            &|k: &str| (k == "TERN_RELAY_IDLE_TIMEOUT_MS").then(|| "0".to_string()),
            dev(),
        );
        assert!(e.starts_with("idle_timeout_ms"), "{e}");
        for bad in ["a/b", "..", ".hidden", "relay 1", "r\u{e9}lay", "spool%2f"] {
            let e = err(
                &no_env,
                Overrides {
                    relay_id: Some(bad.into()),
                    ..dev()
                },
            );
            assert!(e.starts_with("relay_id"), "{bad:?}: {e}");
        }
        for good in ["relay-1", "eu_west.3", "R2"] {
            RelayConfig::load(
                None,
                no_env,
                Overrides {
                    relay_id: Some(good.into()),
                    ..dev()
                },
            )
            .unwrap();
        }
        // Development TLS and open metrics stay on loopback unless overridden.
        let public: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        let e = err(
            &no_env,
            Overrides {
                quic_listen: Some(public),
                ..dev()
            },
        );
        assert!(e.starts_with("tls.dev") && e.contains("quic_listen"), "{e}");
        let e = err(
            &no_env,
            Overrides {
                https_listen: Some("[::]:8443".parse().unwrap()),
                ..dev()
            },
        );
        assert!(
            e.starts_with("tls.dev") && e.contains("https_listen"),
            "{e}"
        );
        let e = err(
            &no_env,
            Overrides {
                metrics_listen: Some("0.0.0.0:9464".parse().unwrap()),
                ..dev()
            },
        );
        assert!(e.starts_with("metrics_listen"), "{e}");
        let c = RelayConfig::load(
            None,
            no_env,
            Overrides {
                quic_listen: Some("127.0.0.2:4433".parse().unwrap()),
                metrics_listen: Some("[::ffff:127.0.0.1]:9464".parse().unwrap()),
                ..dev()
            },
        )
        .unwrap();
        assert!(
            c.override_warnings().is_empty(),
            "loopback needs no override"
        );
        let c = RelayConfig::load(
            None,
            no_env,
            Overrides {
                quic_listen: Some(public),
                metrics_listen: Some("0.0.0.0:9464".parse().unwrap()),
                allow_insecure_dev_tls_on_public_address: true,
                allow_unauthenticated_metrics_on_public_address: true,
                ..dev()
            },
        )
        .unwrap();
        assert_eq!(c.override_warnings().len(), 2);
        let admin: SocketAddr = "0.0.0.0:9465".parse().unwrap();
        let refused = RelayConfig::load(
            None,
            no_env,
            Overrides {
                admin_listen: Some(admin),
                ..dev()
            },
        );
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains("admin_listen")),
            "{refused:?}"
        );
        let c = RelayConfig::load(
            None,
            no_env,
            Overrides {
                admin_listen: Some(admin),
                allow_plaintext_admin_on_public_address: true,
                ..dev()
            },
        )
        .unwrap();
        assert_eq!(c.override_warnings().len(), 1);
        let env = |k: &str| {
            matches!(
                k,
                "TERN_RELAY_ALLOW_UNAUTHENTICATED_METRICS_ON_PUBLIC_ADDRESS"
                    | "TERN_RELAY_METRICS_LISTEN"
            )
            .then(|| {
                if k.ends_with("LISTEN") {
                    "0.0.0.0:9464".to_string()
                } else {
                    "true".to_string()
                }
            })
        };
        RelayConfig::load(None, env, dev()).unwrap();
    }

    #[test]
    fn limits_layer_from_file_and_env_and_reach_the_listeners() {
        let c = RelayConfig::load(None, no_env, dev()).unwrap();
        assert_eq!(c.limits.request_bytes, 256 << 20, "documented default");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(
            &file,
            "max_connections = 500\n[limits]\nrequest_bytes = 67108864\nheader_timeout_ms = 2000\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "TERN_RELAY_LIMITS_HANDSHAKES_PER_SOURCE" => Some("8".to_string()),
            "TERN_RELAY_LIMITS_HANDSHAKE_TIMEOUT_MS" => Some("1500".to_string()),
            _ => None,
        };
        let c = RelayConfig::load(Some(&file), env, dev()).unwrap();
        let listen = c.listen_config();
        assert_eq!(listen.max_connections, 500);
        assert_eq!(listen.limits.request_bytes, 64 << 20);
        assert_eq!(listen.limits.header_timeout, Duration::from_secs(2));
        assert_eq!(listen.limits.handshakes_per_source, 8);
        assert_eq!(listen.limits.handshake_timeout, Duration::from_millis(1500));
        assert_eq!(
            listen.limits.request_read_timeout,
            Duration::from_secs(30),
            "default kept"
        );
    }

    #[test]
    fn bad_limits_are_refused_naming_the_field() {
        let bad = |var: &'static str, value: &'static str| {
            let env = move |k: &str| (k == var).then(|| value.to_string());
            RelayConfig::load(None, env, dev()).unwrap_err().to_string()
        };
        let e = bad("TERN_RELAY_LIMITS_REQUEST_BYTES_PER_SOURCE", "1000");
        assert!(e.starts_with("limits.request_bytes_per_source"), "{e}");
        let e = bad("TERN_RELAY_LIMITS_REQUEST_BYTES", "4194304");
        assert!(e.starts_with("limits.request_bytes:"), "{e}");
        let e = bad("TERN_RELAY_LIMITS_HEADER_TIMEOUT_MS", "0");
        assert!(e.starts_with("limits.header_timeout_ms"), "{e}");
        let e = bad("TERN_RELAY_LIMITS_HEADER_TIMEOUT_MS", "soon");
        assert!(e.starts_with("TERN_RELAY_LIMITS_HEADER_TIMEOUT_MS"), "{e}");
        let e = bad("TERN_RELAY_LIMITS_SUBSCRIPTIONS_PER_SOURCE", "0");
        assert!(e.starts_with("limits.subscriptions_per_source"), "{e}");
        let e = bad("TERN_RELAY_LIMITS_MAX_HANDSHAKES", "0");
        assert!(e.starts_with("limits.max_handshakes"), "{e}");
        let e = bad("TERN_RELAY_LIMITS_QUIC_RECEIVE_WINDOW", "10");
        assert!(e.starts_with("limits.quic_receive_window"), "{e}");
        let e = bad("TERN_RELAY_LIMITS_HTTPS_MAX_CONNECTIONS", "lots");
        assert!(
            e.starts_with("TERN_RELAY_LIMITS_HTTPS_MAX_CONNECTIONS"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, "[limits]\nrequest_byte = 1\n").unwrap();
        let e = RelayConfig::load(Some(&file), no_env, dev())
            .unwrap_err()
            .to_string();
        assert!(e.contains("request_byte"), "{e}");
    }

    #[test]
    fn connection_caps_must_fit_the_open_file_limit() {
        let c = RelayConfig::load(None, no_env, dev()).unwrap();
        // 4096 HTTPS + 2 x 64 + 256 reserved.
        assert!(c.check_fd_limit(4480).is_ok());
        let e = c.check_fd_limit(4479).unwrap_err().to_string();
        assert!(e.starts_with("limits.https_max_connections"), "{e}");
        assert!(e.contains("4479"), "{e}");
    }
}
