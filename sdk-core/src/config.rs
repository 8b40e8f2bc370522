//! SDK configuration, built with [`TernConfig::builder`].

use std::path::PathBuf;
use std::time::Duration;

use tern_protocol::{AppId, Limits, SdkInfo, ShardMap};

use crate::error::ConfigError;
use crate::schedule::FlushPolicy;

/// Bounds of the device store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreLimits {
    /// Maximum bytes of queued events (encoded). Default 10 MiB.
    pub max_bytes: u64,
    /// Maximum number of queued events. Default 100,000.
    pub max_events: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_bytes: 10 * 1024 * 1024,
            max_events: 100_000,
        }
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
    /// Protocol limits applied in `track()`; may only be stricter than the default.
    pub limits: Limits,
    /// SDK identity reported upstream.
    pub sdk: SdkInfo,
    /// The uploader `Tern::start` runs when the shard map names at least one relay
    /// (`None`: nothing is sent automatically; the app or a test drives the uploader
    /// interface itself).
    pub upload: Option<crate::upload::UploadConfig>,
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
                limits: Limits::default(),
                sdk: SdkInfo {
                    name: "tern-rust".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    platform: std::env::consts::OS.into(),
                    app_version: None,
                },
                upload: Some(crate::upload::UploadConfig::default()),
            },
        }
    }
}

/// Builder of [`TernConfig`]; `build` validates and names the field at fault.
#[derive(Clone, Debug)]
pub struct TernConfigBuilder {
    config: TernConfig,
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
    pub fn upload(mut self, upload: crate::upload::UploadConfig) -> Self {
        self.config.upload = Some(upload);
        self
    }
    /// Nothing is sent automatically: the caller drives the uploader interface
    /// (`Tern::next_batch`, `ack`, ...) itself.
    pub fn manual_upload(mut self) -> Self {
        self.config.upload = None;
        self
    }
    /// The host app's version, reported upstream.
    pub fn app_version(mut self, version: impl Into<String>) -> Self {
        self.config.sdk.app_version = Some(version.into());
        self
    }

    /// Validates and returns the config.
    pub fn build(self) -> Result<TernConfig, ConfigError> {
        let c = self.config;
        let protocol = Limits::default();
        tern_protocol::limits::validate_id("app_id", c.app_id.as_str(), &protocol).map_err(
            |e| ConfigError {
                field: "app_id",
                reason: e.to_string(),
            },
        )?;
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
        if let Some(upload) = &c.upload {
            crate::transport::client_tls(&upload.transport, &[tern_protocol::ALPN]).map_err(
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
        ];
        for (field, got, max) in looser {
            if got > max {
                return Err(ConfigError {
                    field,
                    reason: format!("{got} is looser than the protocol limit {max}"),
                });
            }
        }
        if c.session_timeout.is_zero() {
            return Err(ConfigError {
                field: "session_timeout",
                reason: "must be positive".into(),
            });
        }
        Ok(c)
    }
}
