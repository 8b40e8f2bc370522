//! `alias` events and the batch-level `anonymous_id` across versions (§5.2, §8.1, §11):
//! a golden encoding, an older peer reading them, a newer peer's additions read by this
//! version, and the relay's fast path agreeing with the owned decoder on them.

use serde::Serialize;
use tern_protocol::*;

use crate::peers::{self, OldBody};
use crate::vectors::{sample_auth, sample_batch, vector};

const ANON: &str = "3b1f8c2a-9d4e-4f60-8a7b-c5d6e7f80912";

/// The batch a device sends right after `alias("user-42")`: the `alias` event (under
/// the user), then an event of the user; recorded under anonymous id `ANON`.
fn alias_batch() -> EventBatch {
    let mut b = sample_batch(2);
    b.anonymous_id = Some(AnonymousId::parse(ANON).unwrap());
    b.events[0].body = EventBody::Alias {
        anonymous_id: AnonymousId::parse(ANON).unwrap(),
        user_id: UserId::new("user-42"),
    };
    b
}

fn alias_request() -> IngestRequest {
    IngestRequest {
        auth: sample_auth(),
        batch: alias_batch(),
    }
}

#[test]
fn golden_alias_request_encodes_and_decodes_exactly() {
    peers::golden(&alias_request(), "ingest_request_alias_v1.hex");
    // The alias batch routes by its user, like every identified batch (§8.1).
    assert_eq!(alias_batch().routing_key(), "user-42");
}

/// An older relay or backend reads the alias as an event of an unknown kind, kept in
/// order under its user, and ignores the batch's `anonymous_id` (§11).
#[test]
fn an_older_peer_reads_an_alias_as_an_unknown_event() {
    let old = peers::as_older_peer(&alias_request(), "ingest_request_alias_v1.hex");
    assert_eq!(old.batch.batch_id, alias_batch().batch_id);
    assert_eq!(old.batch.device_id, alias_batch().device_id);
    assert_eq!(
        old.batch.seen(),
        [
            (1, Some("user-42"), &OldBody::Unknown),
            (2, Some("user-42"), &OldBody::UserProperties {})
        ]
    );
    // What an older relay validates: the alias as an unknown kind passes.
    let mut older_view = alias_batch();
    older_view.events[0].body = EventBody::Unknown;
    older_view.anonymous_id = None;
    limits::validate_batch(&older_view, &Limits::default()).unwrap();
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FutureAliasBody {
    Alias {
        anonymous_id: &'static str,
        user_id: &'static str,
        /// A newer peer's addition.
        merged_at_ms: i64,
    },
}

#[derive(Serialize)]
struct FutureEvent {
    seq: u64,
    ts_ms: i64,
    user_id: &'static str,
    body: FutureAliasBody,
}

#[derive(Serialize)]
struct FutureBatch {
    batch_id: String,
    app_id: &'static str,
    device_id: String,
    sdk: SdkInfo,
    sent_at_ms: i64,
    events: Vec<FutureEvent>,
    /// Sent as text: §4 allows either form.
    anonymous_id: &'static str,
    /// A newer peer's batch-level addition.
    anonymous_since_ms: i64,
}

#[derive(Serialize)]
struct FutureRequest {
    auth: Auth,
    batch: FutureBatch,
}

/// A newer peer's request carrying one alias, UUIDs as text (§4 allows it), with
/// `batch_anon` as the batch's `anonymous_id`.
fn future_request(batch_anon: &'static str) -> FutureRequest {
    let b = alias_batch();
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
                body: FutureAliasBody::Alias {
                    anonymous_id: ANON,
                    user_id: "user-42",
                    merged_at_ms: 3,
                },
            }],
            anonymous_id: batch_anon,
            anonymous_since_ms: 1,
        },
    }
}

/// This version reads a newer peer's alias (an extra field in the body and in the
/// batch), and the relay's fast path reads it exactly as the owned decoder does.
#[test]
fn this_version_reads_a_newer_alias() {
    let anon = AnonymousId::parse(ANON).unwrap();
    let req = future_request(ANON);
    let payload = rmp_serde::to_vec_named(&req).unwrap();
    let stored = vector("ingest_request_alias_future.hex", &payload);
    let got: IngestRequest = decode_payload(&stored).unwrap();
    assert_eq!(got.batch.anonymous_id, Some(anon));
    assert_eq!(
        got.batch.events[0].body,
        EventBody::Alias {
            anonymous_id: anon,
            user_id: UserId::new("user-42")
        }
    );
    let view = IngestView::parse(&stored, &Limits::default()).unwrap();
    assert_eq!(view.batch.routing_key(), "user-42");
    assert!(view.batch.validation().is_ok());
}

/// A batch whose `anonymous_id`, or an alias whose ids, break the rules: the owned
/// decoder and the fast path refuse the same payloads (malformed), and an over-long
/// user id is `too_large` on both paths.
#[test]
fn bad_aliases_are_refused_alike_on_both_paths() {
    // 32 hex digits without hyphens: not a UUID form §4 accepts.
    let bad = rmp_serde::to_vec_named(&future_request("3b1f8c2a9d4e4f608a7bc5d6e7f80912")).unwrap();
    assert!(decode_payload::<IngestRequest>(&bad).is_err());
    assert!(IngestView::parse(&bad, &Limits::default()).is_err());

    let mut req = alias_request();
    req.batch.events[0].body = EventBody::Alias {
        anonymous_id: AnonymousId::parse(ANON).unwrap(),
        user_id: UserId::new("u".repeat(257)),
    };
    let payload = encode_payload(&req).unwrap();
    let view = IngestView::parse(&payload, &Limits::default()).unwrap();
    let fast = view.batch.validation().map_err(Clone::clone).unwrap_err();
    let owned = limits::validate_batch(&req.batch, &Limits::default()).unwrap_err();
    assert_eq!(fast, owned);
    assert_eq!(owned.reject_reason(), RejectReason::TooLarge);
}
