//! Events and the batches that carry them from a device to the backend.

use serde::{Deserialize, Serialize};

use crate::context::AppContext;
use crate::ids::{AnonymousId, AppId, BatchId, DeviceId, SessionId, UserId};
use crate::push_token::{PushEnvironment, PushProvider};
use crate::rollout::FlagReason;
use crate::value::Properties;

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Per-device sequence number: starts at 1, strictly increasing, no gaps, in the
    /// order the SDK accepted the events. The backend detects loss and duplicates with it.
    pub seq: u64,
    /// Device wall-clock time when the event was recorded, Unix milliseconds.
    pub ts_ms: i64,
    /// The user the event was recorded under (the id set by `identify` at that time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The session the event belongs to, if a session was open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// What happened.
    pub body: EventBody,
}

/// The kind-specific part of an event. Internally tagged by `type`; a kind unknown to
/// this version decodes as [`EventBody::Unknown`] (its fields are skipped).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventBody {
    /// An app-defined event.
    Custom {
        /// Event name; see [`crate::limits`] for the rules.
        name: String,
        /// Event properties.
        #[serde(default, skip_serializing_if = "Properties::is_empty")]
        props: Properties,
    },
    /// A session began (first foreground, or activity after the inactivity timeout).
    SessionStart,
    /// A session ended.
    SessionEnd {
        /// Session length in milliseconds.
        duration_ms: u64,
    },
    /// A purchase. Money is an integer amount of micro-units, never a float.
    Purchase {
        /// The store's product identifier.
        product_id: String,
        /// Price paid, in millionths of the currency unit (1.99 USD = 1_990_000).
        amount_micros: i64,
        /// ISO 4217 currency code, three upper-case letters.
        currency: String,
        /// Units bought; at least 1.
        quantity: u32,
        /// Extra properties.
        #[serde(default, skip_serializing_if = "Properties::is_empty")]
        props: Properties,
    },
    /// User properties were set or removed.
    UserProperties {
        /// Properties to set.
        #[serde(default, skip_serializing_if = "Properties::is_empty")]
        set: Properties,
        /// Property keys to remove.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unset: Vec<String>,
    },
    /// An in-app message was shown (impression) or acted on.
    MessageImpression {
        /// The message id.
        message_id: String,
        /// `shown`, `dismissed`, or an action id.
        action: String,
    },
    /// The event's unit (its user, or the device when anonymous) was exposed to a
    /// feature flag's decision: the flag was evaluated for it with the config bundle
    /// of `config_version`. A device records one per (flag, variant, unit, version).
    Exposure {
        /// The flag's key.
        flag: String,
        /// The decision: `"off"`, `"on"` (a boolean flag), or the variant's key (a
        /// multivariate flag; `"off"` when it evaluated off). `reason` tells a variant
        /// named like a decision apart.
        variant: String,
        /// The version of the config bundle the flag was evaluated with.
        config_version: u64,
        /// Why the flag evaluated so, when the device knows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<FlagReason>,
    },
    /// The device's anonymous identity `anonymous_id` is the user `user_id`: the
    /// backend merges the anonymous history into the user's (protocol §8.1). Recorded
    /// by the SDK's `alias`, under the user (the event's `user_id` equals `user_id`).
    Alias {
        /// The anonymous identity being linked (the batch-level `anonymous_id` of the
        /// device's anonymous batches).
        anonymous_id: AnonymousId,
        /// The identified user it is linked to.
        user_id: UserId,
    },
    /// The person using the app asked for their data to be deleted (the SDK's
    /// `request_deletion`, protocol §8.2). The backend deletes what it holds for
    /// `device_id` (and `user_id`, `anonymous_id` when present) and stops accepting
    /// that device's later events. Recorded under the user in force (if any).
    DeletionRequest {
        /// The device whose data is to be deleted (the batch's `device_id`).
        device_id: DeviceId,
        /// The user identified on the device when the request was made.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<UserId>,
        /// The device's anonymous identity when the request was made.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        anonymous_id: Option<AnonymousId>,
    },
    /// The device's push token for `provider` (protocol §8.3): recorded when it changes,
    /// when the user changes (under the new user, so the backend moves the token off
    /// the previous one) and periodically; with `cleared`, the device gave the token up
    /// (opt-out, local data deleted): the backend forgets it wherever it is stored.
    PushToken {
        /// Who delivers to the device.
        provider: PushProvider,
        /// The APNs environment; absent for FCM.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<PushEnvironment>,
        /// The token (a hex-encoded APNs device token, an FCM registration token).
        token: String,
        /// The device gave this token up: no pushes to it any more.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cleared: bool,
    },
    /// A push notification of campaign `campaign_id` reached the device.
    PushReceived {
        /// The campaign the push belongs to.
        campaign_id: String,
    },
    /// The user opened a push notification of campaign `campaign_id`.
    PushOpened {
        /// The campaign the push belongs to.
        campaign_id: String,
        /// The notification action chosen, if not the default tap.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
    },
    /// The app was installed: the first start of the SDK in a new store (protocol
    /// §8.4). Recorded once per installation.
    AppInstalled,
    /// The app's version or build changed since the SDK last started (§8.4).
    AppUpdated {
        /// The version before, when the device knew it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_version: Option<String>,
        /// The build before, when the device knew it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_build: Option<String>,
    },
    /// The app was opened: the SDK started (`from_background` false) or the app came
    /// to the foreground after being in the background (true) (§8.4).
    AppOpened {
        /// Whether the app came back from the background rather than starting.
        #[serde(default)]
        from_background: bool,
    },
    /// An event kind this version does not know. Never produced by an encoder; a
    /// backend counts it like any other event.
    #[serde(other)]
    Unknown,
}

impl EventBody {
    /// The kind name as written on the wire (`"unknown"` for unknown kinds).
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Custom { .. } => "custom",
            EventBody::SessionStart => "session_start",
            EventBody::SessionEnd { .. } => "session_end",
            EventBody::Purchase { .. } => "purchase",
            EventBody::UserProperties { .. } => "user_properties",
            EventBody::MessageImpression { .. } => "message_impression",
            EventBody::Exposure { .. } => "exposure",
            EventBody::Alias { .. } => "alias",
            EventBody::DeletionRequest { .. } => "deletion_request",
            EventBody::PushToken { .. } => "push_token",
            EventBody::PushReceived { .. } => "push_received",
            EventBody::PushOpened { .. } => "push_opened",
            EventBody::AppInstalled => "app_installed",
            EventBody::AppUpdated { .. } => "app_updated",
            EventBody::AppOpened { .. } => "app_opened",
            EventBody::Unknown => "unknown",
        }
    }
}

/// What the SDK is and where it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdkInfo {
    /// SDK name, e.g. `tern-kotlin`.
    pub name: String,
    /// SDK semantic version.
    pub version: String,
    /// `android`, `ios`, `linux`, ...
    #[serde(default)]
    pub platform: String,
    /// Host application version, if the app supplied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
}

/// Health counters of the SDK, reported upstream in every batch.
///
/// All counters are **cumulative since the device store was created**, so a batch
/// that is retried or delivered twice cannot make the backend double-count: the
/// backend keeps the maximum it has seen per device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SdkHealth {
    /// Events dropped because the device store was full (oldest dropped first).
    pub dropped_overflow: u64,
    /// Events refused by validation on the device (never stored).
    pub dropped_invalid: u64,
    /// Events in batches the relay answered `Rejected` (dropped, never retried).
    pub dropped_rejected: u64,
    /// Upload attempts that were retried (transport error or `Retry`).
    pub retries: u64,
    /// Device store databases found unusable or lost (corrupt, deleted, truncated,
    /// rolled back) and replaced.
    pub store_resets: u64,
    /// Events waiting in the device store when the batch was sent.
    pub queue_events: u64,
    /// Bytes waiting in the device store when the batch was sent.
    pub queue_bytes: u64,
    /// Records lost to damage on the device: journal regions that failed their
    /// checksum (each at least one record) and stored events that failed theirs.
    pub dropped_corrupt: u64,
    /// Events refused by `track()` because the journal could not be written (disk
    /// full or another write error).
    pub dropped_disk_full: u64,
    /// Events a lost device store held whose delivery could not be known after the
    /// reset: neither resent nor known to be delivered.
    pub reset_unknown: u64,
    /// Events a recording call refused because the SDK could not keep them (the store
    /// could not be opened, the queue of calls made before start was full). Written
    /// only when non-zero (absent = 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_unavailable: u64,
    /// Requests (ingest batches, config fetches) refused for a reason that may be the
    /// server's fault — `unauthorized`, `blocked`, an unknown reason; the data was kept
    /// (protocol §6.1). A rising count means this device's app key or app is not
    /// known to the relays. Omitted when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub auth_failures: u64,
}

/// A batch of events from one device of one app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Fixed on the device when the batch is formed; stable across retries.
    pub batch_id: BatchId,
    /// The app that recorded the events.
    pub app_id: AppId,
    /// The device that recorded the events.
    pub device_id: DeviceId,
    /// The SDK that sent them.
    pub sdk: SdkInfo,
    /// Device wall-clock time of this send attempt, Unix milliseconds. Changes between
    /// retries (the backend may use it to correct clock skew); never part of dedupe.
    pub sent_at_ms: i64,
    /// 0 for the first attempt, then 1, 2, ... Informational.
    #[serde(default)]
    pub attempt: u32,
    /// The events, in strictly increasing `seq` order.
    pub events: Vec<Event>,
    /// SDK health counters at send time.
    #[serde(default)]
    pub health: SdkHealth,
    /// The device's anonymous identity when the batch's events were recorded (every
    /// event of a batch was recorded under one). Absent from older SDKs, and for
    /// events stored before the device had one: the backend then attributes anonymous
    /// events to the device id (protocol §8.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<AnonymousId>,
    /// The device and app context the batch's events were recorded in (every event
    /// of a batch was recorded under one; protocol §5.2.1). Absent from older SDKs and
    /// for events recorded before the device had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<AppContext>,
}

crate::wire_struct!(Event {
    seq: req,
    ts_ms: req,
    user_id: omit,
    session_id: omit,
    body: req,
});

crate::wire_enum!(EventBody, tag "type", other Unknown = "unknown" {
    Custom = "custom" { name: req, props: omit },
    SessionStart = "session_start" {},
    SessionEnd = "session_end" { duration_ms: req },
    Purchase = "purchase" {
        product_id: req,
        amount_micros: req,
        currency: req,
        quantity: req,
        props: omit,
    },
    UserProperties = "user_properties" { set: omit, unset: omit },
    MessageImpression = "message_impression" { message_id: req, action: req },
    Exposure = "exposure" { flag: req, variant: req, config_version: req, reason: omit },
    Alias = "alias" { anonymous_id: req, user_id: req },
    DeletionRequest = "deletion_request" { device_id: req, user_id: omit, anonymous_id: omit },
    PushToken = "push_token" { provider: req, environment: omit, token: req, cleared: omit },
    PushReceived = "push_received" { campaign_id: req },
    PushOpened = "push_opened" { campaign_id: req, action: omit },
    AppInstalled = "app_installed" {},
    AppUpdated = "app_updated" { previous_version: omit, previous_build: omit },
    AppOpened = "app_opened" { from_background: def },
});

crate::wire_struct!(SdkInfo {
    name: req,
    version: req,
    platform: def,
    app_version: omit,
});

crate::wire_struct!(SdkHealth {
    dropped_overflow: def,
    dropped_invalid: def,
    dropped_rejected: def,
    retries: def,
    store_resets: def,
    queue_events: def,
    queue_bytes: def,
    dropped_corrupt: def,
    dropped_disk_full: def,
    reset_unknown: def,
    dropped_unavailable: omit,
    auth_failures: omit,
});

fn is_zero(n: &u64) -> bool {
    *n == 0
}

crate::wire_struct!(EventBatch {
    batch_id: req,
    app_id: req,
    device_id: req,
    sdk: req,
    sent_at_ms: req,
    attempt: def,
    events: req,
    health: def,
    anonymous_id: omit,
    context: omit,
});
