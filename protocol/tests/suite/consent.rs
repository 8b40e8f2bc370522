//! `deletion_request` events across versions (§5.2, §8.2, §11): a golden encoding, an
//! older peer reading one, a newer peer's additions read by this version, and the
//! relay's fast path agreeing with the owned decoder on them.

use serde::Serialize;
use tern_protocol::*;

use crate::peers::{self, OldBody};
use crate::vectors::{sample_auth, sample_batch, vector};

const ANON: &str = "3b1f8c2a-9d4e-4f60-8a7b-c5d6e7f80912";

/// The batch a device sends after `request_deletion()` while `user-42` is identified:
/// an event of the user, then the deletion request (the last event the device sends
/// under this device id).
fn deletion_batch() -> EventBatch {
    let mut b = sample_batch(2);
    b.events[1].body = EventBody::DeletionRequest {
        device_id: b.device_id,
        user_id: Some(UserId::new("user-42")),
        anonymous_id: Some(AnonymousId::parse(ANON).unwrap()),
    };
    b
}

fn deletion_request() -> IngestRequest {
    IngestRequest {
        auth: sample_auth(),
        batch: deletion_batch(),
    }
}

#[test]
fn golden_deletion_request_encodes_and_decodes_exactly() {
    peers::golden(&deletion_request(), "ingest_request_deletion_v1.hex");
    // Routed like any batch of its first event's user: nothing moves (§8.2).
    assert_eq!(deletion_batch().routing_key(), "user-42");
}

/// An anonymous device's request: no user, no anonymous id, still a valid event.
#[test]
fn an_anonymous_deletion_request_is_valid() {
    let mut b = sample_batch(1);
    b.events[0].user_id = None;
    b.events[0].body = EventBody::DeletionRequest {
        device_id: b.device_id,
        user_id: None,
        anonymous_id: None,
    };
    limits::validate_batch(&b, &Limits::default()).unwrap();
    let payload = encode_payload(&b).unwrap();
    let back: EventBatch = decode_payload(&payload).unwrap();
    assert_eq!(back, b);
}

/// An older relay or backend reads the deletion request as an event of an unknown
/// kind, kept in order under its user (§11): an older relay forwards it unchanged.
#[test]
fn an_older_peer_reads_a_deletion_request_as_an_unknown_event() {
    let old = peers::as_older_peer(&deletion_request(), "ingest_request_deletion_v1.hex");
    assert_eq!(old.batch.batch_id, deletion_batch().batch_id);
    assert_eq!(old.batch.device_id, deletion_batch().device_id);
    assert_eq!(old.batch.seen()[1], (2, Some("user-42"), &OldBody::Unknown));
    // What an older relay validates: the request as an unknown kind passes.
    let mut older_view = deletion_batch();
    older_view.events[1].body = EventBody::Unknown;
    limits::validate_batch(&older_view, &Limits::default()).unwrap();
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FutureDeletionBody {
    DeletionRequest {
        device_id: String,
        user_id: &'static str,
        anonymous_id: &'static str,
        /// A newer peer's addition.
        scope: &'static str,
    },
}

#[derive(Serialize)]
struct FutureEvent {
    seq: u64,
    ts_ms: i64,
    user_id: &'static str,
    body: FutureDeletionBody,
}

#[derive(Serialize)]
struct FutureBatch {
    batch_id: String,
    app_id: &'static str,
    device_id: String,
    sdk: SdkInfo,
    sent_at_ms: i64,
    events: Vec<FutureEvent>,
}

#[derive(Serialize)]
struct FutureRequest {
    auth: Auth,
    batch: FutureBatch,
}

/// A newer peer's request carrying one deletion request with an extra field, UUIDs as
/// text (§4 allows it).
fn future_request(body_device: String) -> FutureRequest {
    let b = deletion_batch();
    FutureRequest {
        auth: sample_auth(),
        batch: FutureBatch {
            batch_id: b.batch_id.to_string(),
            app_id: "demo",
            device_id: b.device_id.to_string(),
            sdk: b.sdk.clone(),
            sent_at_ms: 5,
            events: vec![FutureEvent {
                seq: 1,
                ts_ms: 4,
                user_id: "user-42",
                body: FutureDeletionBody::DeletionRequest {
                    device_id: body_device,
                    user_id: "user-42",
                    anonymous_id: ANON,
                    scope: "everything",
                },
            }],
        },
    }
}

/// This version reads a newer peer's deletion request (an extra field in the body), and
/// the relay's fast path reads it exactly as the owned decoder does.
#[test]
fn this_version_reads_a_newer_deletion_request() {
    let device = deletion_batch().device_id;
    let req = future_request(device.to_string());
    let payload = rmp_serde::to_vec_named(&req).unwrap();
    let stored = vector("ingest_request_deletion_future.hex", &payload);
    let got: IngestRequest = decode_payload(&stored).unwrap();
    assert_eq!(
        got.batch.events[0].body,
        EventBody::DeletionRequest {
            device_id: device,
            user_id: Some(UserId::new("user-42")),
            anonymous_id: Some(AnonymousId::parse(ANON).unwrap()),
        }
    );
    let view = IngestView::parse(&stored, &Limits::default()).unwrap();
    assert_eq!(view.batch.routing_key(), "user-42");
    assert!(view.batch.validation().is_ok());
}

/// A deletion request whose ids break the rules: the owned decoder and the fast path
/// refuse the same payloads (malformed), and an over-long user id is `too_large` on
/// both paths.
#[test]
fn bad_deletion_requests_are_refused_alike_on_both_paths() {
    let bad = rmp_serde::to_vec_named(&future_request("not-a-uuid".into())).unwrap();
    assert!(decode_payload::<IngestRequest>(&bad).is_err());
    assert!(IngestView::parse(&bad, &Limits::default()).is_err());

    let mut req = deletion_request();
    req.batch.events[1].body = EventBody::DeletionRequest {
        device_id: req.batch.device_id,
        user_id: Some(UserId::new("u".repeat(257))),
        anonymous_id: None,
    };
    let payload = encode_payload(&req).unwrap();
    let view = IngestView::parse(&payload, &Limits::default()).unwrap();
    let fast = view.batch.validation().map_err(Clone::clone).unwrap_err();
    let owned = limits::validate_batch(&req.batch, &Limits::default()).unwrap_err();
    assert_eq!(fast, owned);
    assert_eq!(owned.reject_reason(), RejectReason::TooLarge);
}
