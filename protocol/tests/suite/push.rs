//! `push_token`, `push_received` and `push_opened` events across versions (§5.2, §8.3,
//! §11): a golden encoding, an older peer reading them, a newer peer's additions read
//! by this version, and the relay's fast path agreeing with the owned decoder.

use serde::Serialize;
use tern_protocol::*;

use crate::peers::{self, OldBody};
use crate::vectors::{sample_auth, sample_batch, vector};

const APNS_TOKEN: &str = "7a1c0e5f9b3d2a4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f";

/// A batch with each push body: an APNs sandbox token, an FCM token given up, a push
/// received, a push opened with an action.
fn push_batch() -> EventBatch {
    let mut b = sample_batch(4);
    b.events[0].body = EventBody::PushToken {
        provider: PushProvider::Apns,
        environment: Some(PushEnvironment::Sandbox),
        token: APNS_TOKEN.into(),
        cleared: false,
    };
    b.events[1].body = EventBody::PushToken {
        provider: PushProvider::Fcm,
        environment: None,
        token: "dGVzdA:APA91b-fcm_token".into(),
        cleared: true,
    };
    b.events[2].body = EventBody::PushReceived {
        campaign_id: "spring-sale".into(),
    };
    b.events[3].body = EventBody::PushOpened {
        campaign_id: "spring-sale".into(),
        action: Some("buy".into()),
    };
    b
}

fn push_request() -> IngestRequest {
    IngestRequest {
        auth: sample_auth(),
        batch: push_batch(),
    }
}

#[test]
fn golden_push_request_encodes_and_decodes_exactly() {
    let body = peers::golden(&push_request(), "ingest_request_push_v1.hex");
    let kinds: Vec<_> = push_batch().events.iter().map(|e| e.body.kind()).collect();
    assert_eq!(
        kinds,
        ["push_token", "push_token", "push_received", "push_opened"]
    );
    // Routing is unchanged: by the batch's first event's user (§8).
    assert_eq!(push_batch().routing_key(), "user-42");
    let view = IngestView::parse(&body, &Limits::default()).unwrap();
    assert!(view.batch.validation().is_ok());
}

/// An older relay or backend reads the push events as events of an unknown kind, kept
/// in order under their user (§11), and its validation passes them.
#[test]
fn an_older_peer_reads_push_events_as_unknown_events() {
    let old = peers::as_older_peer(&push_request(), "ingest_request_push_v1.hex");
    assert_eq!(old.batch.batch_id, push_batch().batch_id);
    assert_eq!(
        old.batch.seen(),
        (1..=4)
            .map(|seq| (seq, Some("user-42"), &OldBody::Unknown))
            .collect::<Vec<_>>()
    );
    let mut older_view = push_batch();
    for e in &mut older_view.events {
        e.body = EventBody::Unknown;
    }
    limits::validate_batch(&older_view, &Limits::default()).unwrap();
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FuturePushBody {
    PushToken {
        /// A provider this version does not know.
        provider: &'static str,
        token: &'static str,
        /// A newer peer's addition.
        topics: Vec<&'static str>,
    },
    PushOpened {
        campaign_id: &'static str,
        action: &'static str,
        /// A newer peer's addition.
        opened_from: &'static str,
    },
}

#[derive(Serialize)]
struct FutureEvent {
    seq: u64,
    ts_ms: i64,
    body: FuturePushBody,
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

fn future_request(token: &'static str) -> FutureRequest {
    let b = push_batch();
    FutureRequest {
        auth: sample_auth(),
        batch: FutureBatch {
            batch_id: b.batch_id.to_string(),
            app_id: "demo",
            device_id: b.device_id.to_string(),
            sdk: b.sdk.clone(),
            sent_at_ms: 5,
            events: vec![
                FutureEvent {
                    seq: 1,
                    ts_ms: 4,
                    body: FuturePushBody::PushToken {
                        provider: "hms",
                        token,
                        topics: vec!["news"],
                    },
                },
                FutureEvent {
                    seq: 2,
                    ts_ms: 4,
                    body: FuturePushBody::PushOpened {
                        campaign_id: "c-1",
                        action: "open",
                        opened_from: "lock_screen",
                    },
                },
            ],
        },
    }
}

/// This version reads a newer peer's push events (a new provider, extra fields), and
/// the relay's fast path reads them exactly as the owned decoder does.
#[test]
fn this_version_reads_newer_push_events() {
    let payload = rmp_serde::to_vec_named(&future_request("tok:en-1")).unwrap();
    let stored = vector("ingest_request_push_future.hex", &payload);
    let got: IngestRequest = decode_payload(&stored).unwrap();
    assert_eq!(
        got.batch.events[0].body,
        EventBody::PushToken {
            provider: PushProvider::Other("hms".into()),
            environment: None,
            token: "tok:en-1".into(),
            cleared: false,
        }
    );
    assert_eq!(
        got.batch.events[1].body,
        EventBody::PushOpened {
            campaign_id: "c-1".into(),
            action: Some("open".into()),
        }
    );
    let view = IngestView::parse(&stored, &Limits::default()).unwrap();
    assert!(view.batch.validation().is_ok());
    limits::validate_batch(&got.batch, &Limits::default()).unwrap();
}

/// A token with a space, an over-long token, an empty campaign id: both paths give the
/// same verdict, naming the same field.
#[test]
fn bad_push_bodies_are_refused_alike_on_both_paths() {
    let long: &'static str = Box::leak("f".repeat(1025).into_boxed_str());
    for (token, reason) in [
        ("a b", RejectReason::Invalid),
        (long, RejectReason::TooLarge),
    ] {
        let payload = rmp_serde::to_vec_named(&future_request(token)).unwrap();
        let view = IngestView::parse(&payload, &Limits::default()).unwrap();
        let fast = view.batch.validation().map_err(Clone::clone).unwrap_err();
        let got: IngestRequest = decode_payload(&payload).unwrap();
        let owned = limits::validate_batch(&got.batch, &Limits::default()).unwrap_err();
        assert_eq!(fast, owned);
        assert_eq!(owned.reject_reason(), reason, "{owned}");
    }
    let mut req = push_request();
    req.batch.events[2].body = EventBody::PushReceived {
        campaign_id: String::new(),
    };
    let payload = encode_payload(&req).unwrap();
    let view = IngestView::parse(&payload, &Limits::default()).unwrap();
    let fast = view.batch.validation().map_err(Clone::clone).unwrap_err();
    let owned = limits::validate_batch(&req.batch, &Limits::default()).unwrap_err();
    assert_eq!(fast, owned);
    assert!(owned.to_string().contains("campaign_id"), "{owned}");
    // A push_token without its provider is malformed on both paths.
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum NoProvider {
        PushToken { token: &'static str },
    }
    #[derive(Serialize)]
    struct E {
        seq: u64,
        ts_ms: i64,
        body: NoProvider,
    }
    #[derive(Serialize)]
    struct B {
        batch_id: String,
        app_id: &'static str,
        device_id: String,
        sdk: SdkInfo,
        sent_at_ms: i64,
        events: Vec<E>,
    }
    #[derive(Serialize)]
    struct R {
        auth: Auth,
        batch: B,
    }
    let b = push_batch();
    let bad = rmp_serde::to_vec_named(&R {
        auth: sample_auth(),
        batch: B {
            batch_id: b.batch_id.to_string(),
            app_id: "demo",
            device_id: b.device_id.to_string(),
            sdk: b.sdk,
            sent_at_ms: 1,
            events: vec![E {
                seq: 1,
                ts_ms: 1,
                body: NoProvider::PushToken { token: "t" },
            }],
        },
    })
    .unwrap();
    assert!(decode_payload::<IngestRequest>(&bad).is_err());
    assert!(IngestView::parse(&bad, &Limits::default()).is_err());
}
