//! Remote configuration, feature flags and in-app messages: one versioned bundle per
//! app, fetched conditionally with an ETag.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::AppId;
use crate::value::{Properties, Value};

/// An opaque entity tag naming one exact content of a config bundle. Equal content
/// gives equal tags; compare for equality only.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ETag(pub String);

impl ETag {
    /// The tag's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ETag({:?})", self.0)
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One full, versioned configuration of an app: remote values, feature flags and in-app
/// messages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigBundle {
    /// The app the bundle belongs to.
    pub app_id: AppId,
    /// Monotonic version, bumped on every change.
    pub version: u64,
    /// Tag of this exact content.
    pub etag: ETag,
    /// Remote config values by key.
    #[serde(default)]
    pub values: BTreeMap<String, Value>,
    /// Feature flags.
    #[serde(default)]
    pub flags: Vec<FeatureFlag>,
    /// In-app messages.
    #[serde(default)]
    pub messages: Vec<InAppMessage>,
}

impl ConfigBundle {
    /// Finds a flag by key.
    pub fn flag(&self, key: &str) -> Option<&FeatureFlag> {
        self.flags.iter().find(|f| f.key == key)
    }
}

/// Buckets per rollout: a rollout is expressed in basis points (1/100 of a percent).
pub const BUCKETS: u32 = 10_000;

fn full_rollout() -> u32 {
    BUCKETS
}

/// A feature flag: boolean when it has no variants, multivariate otherwise.
///
/// Evaluation is defined in [`crate::rollout::evaluate_flag`] and is the same on device
/// and server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureFlag {
    /// Flag key, unique within the app.
    pub key: String,
    /// Master switch: a disabled flag is off for everyone.
    pub enabled: bool,
    /// Share of users the flag is on for, in basis points (0..=10000; 10000 = 100%).
    #[serde(default = "full_rollout")]
    pub rollout_bp: u32,
    /// Variants with relative weights; empty for a boolean flag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
    /// Bucketing salt; defaults to the flag key. Changing it reshuffles who is in the
    /// rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

/// One variant of a multivariate flag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Variant key, e.g. `control`, `blue`.
    pub key: String,
    /// Relative weight (0 disables the variant).
    pub weight: u32,
    /// Optional payload delivered with the variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// An in-app message and the rules for when to show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InAppMessage {
    /// Stable message id; impressions are reported against it.
    pub id: String,
    /// Title text.
    pub title: String,
    /// Body text.
    pub body: String,
    /// Buttons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<MessageAction>,
    /// When the message becomes eligible to show.
    pub trigger: Trigger,
    /// Who sees it.
    #[serde(default)]
    pub targeting: Targeting,
    /// How often.
    #[serde(default)]
    pub pacing: Pacing,
    /// Not shown before this time (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at_ms: Option<i64>,
    /// Not shown after this time (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at_ms: Option<i64>,
    /// Higher shows first when several are eligible.
    #[serde(default)]
    pub priority: i32,
}

/// A button on an in-app message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageAction {
    /// Reported as the impression's action.
    pub id: String,
    /// Button label.
    pub label: String,
    /// Deep link or URL to open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// When a message becomes eligible. Internally tagged by `on`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Trigger {
    /// When a session starts.
    SessionStart,
    /// When the app records a custom event with this name.
    Event {
        /// The event name.
        name: String,
    },
    /// As soon as the bundle is received.
    Immediate,
    /// A trigger this version does not know: the message is never shown.
    #[serde(other)]
    Unknown,
}

/// Who is eligible for a message. All given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Targeting {
    /// Platforms (`android`, `ios`, ...); empty means all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// User properties that must equal these values.
    #[serde(skip_serializing_if = "Properties::is_empty")]
    pub user_properties: Properties,
    /// Share of users eligible, in basis points, bucketed like a flag keyed by the
    /// message id. `None` means everyone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_bp: Option<u32>,
}

/// Frequency limits for a message, enforced on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pacing {
    /// Minimum seconds between two impressions of this message.
    pub min_interval_s: u64,
    /// Maximum impressions per device; 0 means unlimited.
    pub max_impressions: u32,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            min_interval_s: 0,
            max_impressions: 1,
        }
    }
}

/// The outcome of a config request. Internally tagged by `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConfigOutcome {
    /// The bundle differs from the one the device has: here it is.
    Modified {
        /// The full bundle.
        bundle: ConfigBundle,
    },
    /// The device's ETag is current.
    NotModified,
    /// Try again later.
    Retry {
        /// Milliseconds to wait.
        after_ms: u64,
    },
    /// Refused permanently (e.g. bad credentials).
    Rejected {
        /// Why.
        reason: crate::reply::RejectReason,
        /// Human-readable detail.
        #[serde(default)]
        detail: String,
    },
    /// An outcome this version does not know; keep the cached bundle and retry later.
    #[serde(other)]
    Unknown,
}

/// The reply to a [`crate::ConfigRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigReply {
    /// The relay's shard-map version.
    pub shard_map_version: u64,
    /// True when the relay served its cached copy because the backend was unreachable.
    #[serde(default)]
    pub stale: bool,
    /// The outcome.
    pub outcome: ConfigOutcome,
}

impl crate::wire::Encode for ETag {
    fn encode(&self, w: &mut crate::wire::Writer) {
        w.str(&self.0);
    }
}

impl crate::wire::Decode for ETag {
    fn decode(r: &mut crate::wire::Reader<'_>) -> Result<Self, crate::wire::ReadError> {
        r.str().map(|s| ETag(s.to_owned()))
    }
}

crate::wire_struct!(ConfigBundle {
    app_id: req,
    version: req,
    etag: req,
    values: def,
    flags: def,
    messages: def,
});

crate::wire_struct!(FeatureFlag {
    key: req,
    enabled: req,
    rollout_bp: with(full_rollout()),
    variants: omit,
    salt: omit,
});

crate::wire_struct!(Variant {
    key: req,
    weight: req,
    value: omit,
});

crate::wire_struct!(InAppMessage {
    id: req,
    title: req,
    body: req,
    actions: omit,
    trigger: req,
    targeting: def,
    pacing: def,
    starts_at_ms: omit,
    ends_at_ms: omit,
    priority: def,
});

crate::wire_struct!(MessageAction {
    id: req,
    label: req,
    url: omit,
});

crate::wire_enum!(Trigger, tag "on", other Unknown = "unknown" {
    SessionStart = "session_start" {},
    Event = "event" { name: req },
    Immediate = "immediate" {},
});

crate::wire_struct!(Targeting {
    platforms: omit,
    user_properties: omit,
    rollout_bp: omit,
});

crate::wire_struct!(Pacing {
    min_interval_s: with(Pacing::default().min_interval_s),
    max_impressions: with(Pacing::default().max_impressions),
});

crate::wire_enum!(ConfigOutcome, tag "status", other Unknown = "unknown" {
    Modified = "modified" { bundle: req },
    NotModified = "not_modified" {},
    Retry = "retry" { after_ms: req },
    Rejected = "rejected" { reason: req, detail: def },
});

crate::wire_struct!(ConfigReply {
    shard_map_version: req,
    stale: def,
    outcome: req,
});
