//! What this version and an older peer read of a stored request vector: shared by the
//! per-feature compatibility tests (`alias`, `consent`, `context`, `push`).

use tern_protocol::*;

use crate::vectors::vector;

/// Uncompressed frames, as the vectors are stored.
pub fn plain() -> CodecConfig {
    CodecConfig::device().with_compress_threshold(usize::MAX)
}

/// Encodes `request`, checks the bytes against the stored vector `name`, and decodes the
/// stored bytes: they must give `request` back, valid under the default limits. Returns
/// the frame's body, for the relay's fast path.
pub fn golden(request: &IngestRequest, name: &str) -> Vec<u8> {
    let frame = Message::IngestRequest(request.clone())
        .encode(&plain())
        .unwrap();
    let stored = vector(name, &frame);
    let Message::IngestRequest(back) = Message::from_bytes(&stored, &plain()).unwrap() else {
        panic!("{name}: not an ingest request")
    };
    assert_eq!(&back, request, "{name}");
    limits::validate_batch(&back.batch, &Limits::default()).unwrap();
    frame::decode_single_frame(&stored, 1 << 20).unwrap().body
}

/// What a peer from before the feature reads of the stored vector `name` (written
/// from `request`).
pub fn as_older_peer(request: &IngestRequest, name: &str) -> OldRequest {
    let frame = Message::IngestRequest(request.clone())
        .encode(&plain())
        .unwrap();
    let stored = vector(name, &frame);
    let body = frame::decode_single_frame(&stored, 1 << 20).unwrap().body;
    rmp_serde::from_slice(&body).unwrap()
}

/// The event kinds an older peer knows; every other kind is `Unknown` to it.
#[derive(serde::Deserialize, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OldBody {
    /// A custom event.
    Custom {
        /// Its name.
        name: String,
    },
    /// User properties (their content not read).
    UserProperties {},
    /// A kind it does not know.
    #[serde(other)]
    Unknown,
}

/// An event as an older peer reads it.
#[derive(serde::Deserialize)]
pub struct OldEvent {
    /// Its sequence number.
    pub seq: u64,
    /// Its user.
    pub user_id: Option<String>,
    /// Its body.
    pub body: OldBody,
}

/// A batch as an older peer reads it: unknown fields (a batch-level `anonymous_id`,
/// `context`) are ignored, as §4 requires of every peer.
#[derive(serde::Deserialize)]
pub struct OldBatch {
    /// The batch id.
    pub batch_id: BatchId,
    /// The device.
    pub device_id: DeviceId,
    /// The events.
    pub events: Vec<OldEvent>,
}

/// An ingest request as an older peer reads it.
#[derive(serde::Deserialize)]
pub struct OldRequest {
    /// The batch.
    pub batch: OldBatch,
}

impl OldBatch {
    /// Each event's sequence number, user and body, in order.
    pub fn seen(&self) -> Vec<(u64, Option<&str>, &OldBody)> {
        self.events
            .iter()
            .map(|e| (e.seq, e.user_id.as_deref(), &e.body))
            .collect()
    }
}
