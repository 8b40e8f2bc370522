#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod codec;
pub mod config;
pub mod consent;
pub mod context;
pub mod error;
pub mod event;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod messages;
pub mod push;
pub mod push_token;
pub mod received;
pub mod reply;
pub mod rollout;
pub mod routing;
pub mod shard;
pub mod value;
pub mod view;
pub mod wire;

pub use codec::{decode_expected, decode_payload, encode_payload, CodecConfig};
pub use config::{
    ConfigBundle, ConfigOutcome, ConfigReply, ETag, FeatureFlag, InAppMessage, MessageAction,
    Pacing, Targeting, Trigger, Variant,
};
pub use consent::Purpose;
pub use context::{AppContext, NetworkType};
pub use error::{DecodeError, EncodeError};
pub use event::{Event, EventBatch, EventBody, SdkHealth, SdkInfo};
pub use frame::{
    decode_frame, decode_single_frame, decode_single_frame_ref, encode_frame, Frame, FrameDecoder,
    FrameRef,
};
pub use ids::{AnonymousId, AppId, BatchId, DeviceId, InstallId, RelayId, SessionId, UserId};
pub use limits::{Limits, ValidationError};
pub use messages::{
    Auth, ConfigRequest, ForwardOutcome, ForwardReply, ForwardRequest, ForwardRequestRef,
    ForwardResult, IngestRequest, Message, MessageKind, ShardMapReply, ShardMapRequest,
    SubscribeRequest,
};
pub use push::PushNotice;
pub use push_token::{PushEnvironment, PushProvider};
pub use received::{ReceivedForward, ReceivedIngest};
pub use reply::{Durability, ErrorReply, IngestOutcome, IngestReply, RejectReason};
pub use rollout::{evaluate_flag, evaluate_flag_with_reason, FlagDecision, FlagReason};
pub use shard::{NodeState, RelayNode, ShardMap, ShardMapError, MAX_SHARD_MAP_VERSION};
pub use value::{Properties, Value};
pub use view::{BatchView, IngestView, ViewError};
pub use wire::{Decode, Encode};

/// The protocol version this crate implements.
pub const PROTOCOL_VERSION: u32 = 1;

/// The QUIC ALPN identifier of protocol version 1. A relay that does not offer it
/// fails the TLS handshake, so mismatched major versions never exchange frames.
pub const ALPN: &[u8] = b"tern/1";

/// HTTPS fallback: the path that carries one request frame per `POST` body and one
/// reply frame per response body.
pub const HTTP_RPC_PATH: &str = "/v1/rpc";

/// HTTPS fallback: the path of the push stream (a response body of consecutive
/// `PushNotice` frames).
pub const HTTP_SUBSCRIBE_PATH: &str = "/v1/subscribe";

/// Media type of a body holding Tern frames.
pub const FRAME_CONTENT_TYPE: &str = "application/x-tern-frame";

/// Backend API: `POST` a `ForwardRequest` frame, get a `ForwardReply` frame.
pub const BACKEND_INGEST_PATH: &str = "/v1/ingest";
