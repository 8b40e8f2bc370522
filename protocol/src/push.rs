//! Notices a relay pushes to a subscribed device on the long-lived push stream.

use serde::{Deserialize, Serialize};

use crate::config::ETag;

/// A server-to-client notice. Internally tagged by `type`. Notices are hints: the
/// device reacts by fetching (config, shard map) through ordinary requests, so a lost
/// notice only delays, never corrupts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PushNotice {
    /// First notice on a new subscription: the relay's current versions.
    Subscribed {
        /// The relay's shard-map version.
        shard_map_version: u64,
        /// The current config bundle's ETag for the device's app, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config_etag: Option<ETag>,
    },
    /// The app's config bundle (values, flags or messages) changed: fetch it.
    ConfigChanged {
        /// New bundle version.
        version: u64,
        /// New bundle ETag.
        etag: ETag,
    },
    /// A newer shard map exists: fetch it.
    ShardMapChanged {
        /// The new version.
        version: u64,
    },
    /// Slow down: send no ingest requests to this relay for `after_ms`.
    Throttle {
        /// Milliseconds to pause uploads.
        after_ms: u64,
    },
    /// This relay is draining: finish the request in flight and move to the next relay
    /// of the HRW ranking.
    Draining {
        /// The relay's shard-map version, already marking it draining.
        shard_map_version: u64,
    },
    /// A notice this version does not know; ignore it.
    #[serde(other)]
    Unknown,
}

crate::wire_enum!(PushNotice, tag "type", other Unknown = "unknown" {
    Subscribed = "subscribed" { shard_map_version: req, config_etag: omit },
    ConfigChanged = "config_changed" { version: req, etag: req },
    ShardMapChanged = "shard_map_changed" { version: req },
    Throttle = "throttle" { after_ms: req },
    Draining = "draining" { shard_map_version: req },
});
