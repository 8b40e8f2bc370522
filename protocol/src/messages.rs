//! Requests, the remaining replies, and [`Message`]: every message that crosses a
//! Tern connection, each with its one-byte frame kind.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigReply, ETag};
use crate::event::EventBatch;
use crate::ids::{AppId, BatchId, DeviceId, RelayId, UserId};
use crate::push::PushNotice;
use crate::reply::{ErrorReply, IngestReply, RejectReason};
use crate::shard::ShardMap;

/// Per-app credentials carried by every device request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// The app.
    pub app_id: AppId,
    /// The app's key. Redacted in `Debug` output.
    pub key: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("app_id", &self.app_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Device → relay: deliver one batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestRequest {
    /// Credentials; `auth.app_id` must equal `batch.app_id`.
    pub auth: Auth,
    /// The batch.
    pub batch: EventBatch,
}

/// Device → relay: fetch the app's config bundle if it changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigRequest {
    /// Credentials.
    pub auth: Auth,
    /// The asking device.
    pub device_id: DeviceId,
    /// The current user, if identified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The ETag of the bundle the device holds; `None` on a cold start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_none_match: Option<ETag>,
}

/// Device → relay: fetch the shard map if newer than `known_version`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardMapRequest {
    /// Credentials.
    pub auth: Auth,
    /// The version the device holds (0 if none).
    pub known_version: u64,
}

/// Relay → device: the shard map, or `None` when the device's version is current.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardMapReply {
    /// The relay's shard-map version.
    pub shard_map_version: u64,
    /// The map, when newer than the device's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<ShardMap>,
}

/// Device → relay: open the long-lived push stream. The relay answers on the same
/// stream with a sequence of [`PushNotice`] frames until either side closes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// Credentials.
    pub auth: Auth,
    /// The subscribing device.
    pub device_id: DeviceId,
    /// The current user, if identified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The ETag of the config bundle the device holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_etag: Option<ETag>,
}

/// Relay → backend: deliver batches (coalesced from many devices).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// The relay sending them.
    pub relay_id: RelayId,
    /// The batches, each validated by the relay.
    pub batches: Vec<EventBatch>,
}

/// A [`ForwardRequest`] by reference: encodes to exactly the same bytes, without
/// cloning the batches (a relay coalescing many batches into one request keeps them
/// where they are). Encode with [`crate::codec::encode_forward_request`].
#[derive(Clone, Debug, Serialize)]
pub struct ForwardRequestRef<'a> {
    /// The relay sending them.
    pub relay_id: &'a RelayId,
    /// The batches.
    pub batches: Vec<&'a EventBatch>,
}

/// The backend's verdict on one forwarded batch. Internally tagged by `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ForwardOutcome {
    /// Stored now; the backend had not seen this `batch_id`.
    Stored,
    /// Already stored earlier; nothing changed. As good as `Stored` for the sender.
    Duplicate,
    /// Refused permanently.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// Human-readable detail.
        #[serde(default)]
        detail: String,
    },
    /// An outcome this version does not know; treat the batch as not acknowledged.
    #[serde(other)]
    Unknown,
}

/// The verdict on one batch of a [`ForwardRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardResult {
    /// The batch.
    pub batch_id: BatchId,
    /// The verdict.
    pub outcome: ForwardOutcome,
}

/// Backend → relay: one result per forwarded batch, in request order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardReply {
    /// The results.
    pub results: Vec<ForwardResult>,
}

/// The one-byte kind in every frame header. Requests have the high bit clear,
/// replies and notices have it set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum MessageKind {
    /// [`IngestRequest`]
    IngestRequest = 0x01,
    /// [`ConfigRequest`]
    ConfigRequest = 0x02,
    /// [`ShardMapRequest`]
    ShardMapRequest = 0x03,
    /// [`SubscribeRequest`]
    SubscribeRequest = 0x04,
    /// [`ForwardRequest`] (relay → backend)
    ForwardRequest = 0x10,
    /// [`IngestReply`]
    IngestReply = 0x81,
    /// [`ConfigReply`]
    ConfigReply = 0x82,
    /// [`ShardMapReply`]
    ShardMapReply = 0x83,
    /// [`PushNotice`]
    PushNotice = 0x84,
    /// [`ForwardReply`] (backend → relay)
    ForwardReply = 0x90,
    /// [`ErrorReply`]
    ErrorReply = 0xFF,
}

impl MessageKind {
    /// All kinds this version knows.
    pub const ALL: [MessageKind; 11] = [
        MessageKind::IngestRequest,
        MessageKind::ConfigRequest,
        MessageKind::ShardMapRequest,
        MessageKind::SubscribeRequest,
        MessageKind::ForwardRequest,
        MessageKind::IngestReply,
        MessageKind::ConfigReply,
        MessageKind::ShardMapReply,
        MessageKind::PushNotice,
        MessageKind::ForwardReply,
        MessageKind::ErrorReply,
    ];

    /// The kind's byte.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The kind for a byte, if this version knows it.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_u8() == byte)
    }

    /// True for kinds a device sends to a relay.
    pub const fn is_device_request(self) -> bool {
        matches!(
            self,
            MessageKind::IngestRequest
                | MessageKind::ConfigRequest
                | MessageKind::ShardMapRequest
                | MessageKind::SubscribeRequest
        )
    }
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
// `IngestRequest` (an `EventBatch` inline) is the largest variant and the most common
// one; a `Message` is short-lived (encoded or decoded and taken apart at once), so
// boxing it would buy nothing but an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Message {
    /// Device → relay.
    IngestRequest(IngestRequest),
    /// Device → relay.
    ConfigRequest(ConfigRequest),
    /// Device → relay.
    ShardMapRequest(ShardMapRequest),
    /// Device → relay.
    SubscribeRequest(SubscribeRequest),
    /// Relay → backend.
    ForwardRequest(ForwardRequest),
    /// Relay → device.
    IngestReply(IngestReply),
    /// Relay → device.
    ConfigReply(ConfigReply),
    /// Relay → device.
    ShardMapReply(ShardMapReply),
    /// Relay → device, on the push stream.
    PushNotice(PushNotice),
    /// Backend → relay.
    ForwardReply(ForwardReply),
    /// Any server → client, when a frame could not be handled.
    ErrorReply(ErrorReply),
}

impl Message {
    /// The frame kind of this message.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::IngestRequest(_) => MessageKind::IngestRequest,
            Message::ConfigRequest(_) => MessageKind::ConfigRequest,
            Message::ShardMapRequest(_) => MessageKind::ShardMapRequest,
            Message::SubscribeRequest(_) => MessageKind::SubscribeRequest,
            Message::ForwardRequest(_) => MessageKind::ForwardRequest,
            Message::IngestReply(_) => MessageKind::IngestReply,
            Message::ConfigReply(_) => MessageKind::ConfigReply,
            Message::ShardMapReply(_) => MessageKind::ShardMapReply,
            Message::PushNotice(_) => MessageKind::PushNotice,
            Message::ForwardReply(_) => MessageKind::ForwardReply,
            Message::ErrorReply(_) => MessageKind::ErrorReply,
        }
    }
}

crate::wire_struct!(Auth {
    app_id: req,
    key: req
});

crate::wire_struct!(IngestRequest {
    auth: req,
    batch: req
});

crate::wire_struct!(ConfigRequest {
    auth: req,
    device_id: req,
    user_id: omit,
    if_none_match: omit,
});

crate::wire_struct!(ShardMapRequest {
    auth: req,
    known_version: req,
});

crate::wire_struct!(ShardMapReply {
    shard_map_version: req,
    map: omit,
});

crate::wire_struct!(SubscribeRequest {
    auth: req,
    device_id: req,
    user_id: omit,
    config_etag: omit,
});

crate::wire_struct!(ForwardRequest {
    relay_id: req,
    batches: req,
});

/// The same bytes as the owned [`ForwardRequest`] with the same content.
impl crate::wire::Encode for ForwardRequestRef<'_> {
    fn encode(&self, w: &mut crate::wire::Writer) {
        w.map(2);
        w.field("relay_id", self.relay_id);
        w.field("batches", &self.batches);
    }
}

crate::wire_enum!(ForwardOutcome, tag "status", other Unknown = "unknown" {
    Stored = "stored" {},
    Duplicate = "duplicate" {},
    Rejected = "rejected" { reason: req, detail: def },
});

crate::wire_struct!(ForwardResult {
    batch_id: req,
    outcome: req,
});

crate::wire_struct!(ForwardReply { results: req });
