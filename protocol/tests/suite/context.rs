//! The batch-level `context` and the lifecycle events (`app_installed`, `app_updated`,
//! `app_opened`) across versions (§5.2.1, §8.4, §11): a golden encoding, an older peer
//! reading them, a newer peer's additions (a new network kind, new fields) read by
//! this version, and the relay's fast path agreeing with the owned decoder on them.

use serde::Serialize;
use tern_protocol::*;

use crate::peers::{self, OldBody};
use crate::vectors::{sample_auth, sample_batch, vector};

const INSTALL: &str = "9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a";

fn sample_context() -> AppContext {
    AppContext {
        app_version: Some("2.1.0".into()),
        app_build: Some("210".into()),
        os_name: Some("android".into()),
        os_version: Some("14".into()),
        device_model: Some("Pixel 8".into()),
        locale: Some("en-GB".into()),
        time_zone: Some("Europe/London".into()),
        sdk_version: Some("0.1.0".into()),
        network: Some(NetworkType::Wifi),
        screen_width: Some(1080),
        screen_height: Some(2400),
        install_id: Some(InstallId::parse(INSTALL).unwrap()),
    }
}

/// What a device sends after an update from 2.0.0 (build 200): the update, the open,
/// then an event of the app; all under the new context.
fn lifecycle_batch() -> EventBatch {
    let mut b = sample_batch(3);
    b.context = Some(sample_context());
    b.events[0].body = EventBody::AppUpdated {
        previous_version: Some("2.0.0".into()),
        previous_build: Some("200".into()),
    };
    b.events[1].body = EventBody::AppOpened {
        from_background: false,
    };
    b.events[2].body = EventBody::AppInstalled;
    b
}

fn lifecycle_request() -> IngestRequest {
    IngestRequest {
        auth: sample_auth(),
        batch: lifecycle_batch(),
    }
}

#[test]
fn golden_context_request_encodes_and_decodes_exactly() {
    let body = peers::golden(&lifecycle_request(), "ingest_request_context_v1.hex");
    let view = IngestView::parse(&body, &Limits::default()).unwrap();
    assert!(view.batch.validation().is_ok());
    // Routing is unchanged by either (§8.4).
    assert_eq!(lifecycle_batch().routing_key(), "user-42");
}

/// A batch without a context, and bodies with their optional fields absent, encode
/// byte-identically to what an SDK before contexts wrote: nothing is added.
#[test]
fn absent_context_and_optional_fields_are_not_written() {
    let mut b = sample_batch(1);
    let before = encode_payload(&b).unwrap();
    b.context = None;
    assert_eq!(encode_payload(&b).unwrap(), before);
    b.events[0].body = EventBody::AppUpdated {
        previous_version: None,
        previous_build: None,
    };
    let body = encode_payload(&b.events[0].body).unwrap();
    let as_map: std::collections::BTreeMap<String, String> = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(as_map.len(), 1, "{as_map:?}");
}

/// An older relay or backend reads the lifecycle events as events of an unknown kind,
/// in order, and ignores the batch's `context` (§11).
#[test]
fn an_older_peer_reads_lifecycle_events_as_unknown_and_skips_the_context() {
    let old = peers::as_older_peer(&lifecycle_request(), "ingest_request_context_v1.hex");
    assert_eq!(old.batch.batch_id, lifecycle_batch().batch_id);
    let seen: Vec<_> = old
        .batch
        .seen()
        .into_iter()
        .map(|(seq, _, b)| (seq, b))
        .collect();
    assert_eq!(
        seen,
        [
            (1, &OldBody::Unknown),
            (2, &OldBody::Unknown),
            (3, &OldBody::Unknown)
        ]
    );
    // What an older relay validates: unknown kinds pass, the context is not read.
    let mut older_view = lifecycle_batch();
    older_view.context = None;
    for e in &mut older_view.events {
        e.body = EventBody::Unknown;
    }
    limits::validate_batch(&older_view, &Limits::default()).unwrap();
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FutureBody {
    AppOpened {
        from_background: bool,
        /// A newer peer's addition.
        cold_start_ms: u64,
    },
    AppUpdated {
        previous_version: &'static str,
        /// A newer peer's addition.
        previous_sdk: &'static str,
    },
}

#[derive(Serialize)]
struct FutureEvent {
    seq: u64,
    ts_ms: i64,
    body: FutureBody,
}

#[derive(Serialize)]
struct FutureContext {
    app_version: &'static str,
    /// A network kind this version does not know.
    network: &'static str,
    screen_width: u32,
    /// Sent as text: §4 allows either form.
    install_id: &'static str,
    /// A newer peer's addition to the context.
    battery_pct: u8,
}

#[derive(Serialize)]
struct FutureBatch {
    batch_id: String,
    app_id: &'static str,
    device_id: String,
    sdk: SdkInfo,
    sent_at_ms: i64,
    events: Vec<FutureEvent>,
    context: FutureContext,
}

#[derive(Serialize)]
struct FutureRequest {
    auth: Auth,
    batch: FutureBatch,
}

fn future_request(app_version: &'static str) -> FutureRequest {
    let b = lifecycle_batch();
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
                    body: FutureBody::AppUpdated {
                        previous_version: "1.9",
                        previous_sdk: "0.0.9",
                    },
                },
                FutureEvent {
                    seq: 2,
                    ts_ms: 4,
                    body: FutureBody::AppOpened {
                        from_background: true,
                        cold_start_ms: 812,
                    },
                },
            ],
            context: FutureContext {
                app_version,
                network: "satellite",
                screen_width: 390,
                install_id: INSTALL,
                battery_pct: 80,
            },
        },
    }
}

/// This version reads a newer peer's context (an unknown network kind kept as text,
/// an extra field) and lifecycle events with extra fields, and the relay's fast path
/// agrees.
#[test]
fn this_version_reads_a_newer_context_and_lifecycle_events() {
    let payload = rmp_serde::to_vec_named(&future_request("2.2.0")).unwrap();
    let stored = vector("ingest_request_context_future.hex", &payload);
    let got: IngestRequest = decode_payload(&stored).unwrap();
    let ctx = got.batch.context.clone().unwrap();
    assert_eq!(ctx.network, Some(NetworkType::Other("satellite".into())));
    assert_eq!(ctx.app_version.as_deref(), Some("2.2.0"));
    assert_eq!(ctx.screen_width, Some(390));
    assert_eq!(ctx.screen_height, None);
    assert_eq!(ctx.install_id, Some(InstallId::parse(INSTALL).unwrap()));
    assert_eq!(
        got.batch.events[0].body,
        EventBody::AppUpdated {
            previous_version: Some("1.9".into()),
            previous_build: None
        }
    );
    assert_eq!(
        got.batch.events[1].body,
        EventBody::AppOpened {
            from_background: true
        }
    );
    limits::validate_batch(&got.batch, &Limits::default()).unwrap();
    let view = IngestView::parse(&stored, &Limits::default()).unwrap();
    assert!(view.batch.validation().is_ok());
}

/// A context or an `app_updated` that breaks §7 is refused alike on both paths, with
/// the same error; a context field of the wrong type is malformed on both.
#[test]
fn bad_contexts_are_refused_alike_on_both_paths() {
    let l = Limits::default();
    let check = |req: &IngestRequest| {
        let payload = encode_payload(req).unwrap();
        let view = IngestView::parse(&payload, &l).unwrap();
        let fast = view.batch.validation().map_err(Clone::clone).unwrap_err();
        let owned = limits::validate_batch(&req.batch, &l).unwrap_err();
        assert_eq!(fast, owned);
        owned
    };
    let mut req = lifecycle_request();
    req.batch.context.as_mut().unwrap().locale = Some("l".repeat(257));
    assert_eq!(check(&req).reject_reason(), RejectReason::TooLarge);
    req.batch.context.as_mut().unwrap().os_name = Some("a\nb".into());
    // Field order: `os_name` before `locale`.
    assert!(matches!(
        check(&req),
        ValidationError::InvalidChar { field, .. } if field == "context.os_name"
    ));

    let mut req = lifecycle_request();
    req.batch.events[0].body = EventBody::AppUpdated {
        previous_version: Some(String::new()),
        previous_build: None,
    };
    assert!(matches!(
        check(&req),
        ValidationError::Empty { field } if field == "previous_version"
    ));

    // A screen width that is not an integer: not a valid encoding.
    #[derive(Serialize)]
    struct BadContext {
        screen_width: &'static str,
    }
    #[derive(Serialize)]
    struct BadBatch {
        batch_id: String,
        app_id: &'static str,
        device_id: String,
        sdk: SdkInfo,
        sent_at_ms: i64,
        events: Vec<FutureEvent>,
        context: BadContext,
    }
    #[derive(Serialize)]
    struct BadRequest {
        auth: Auth,
        batch: BadBatch,
    }
    let good = future_request("2.2.0").batch;
    let bad = rmp_serde::to_vec_named(&BadRequest {
        auth: sample_auth(),
        batch: BadBatch {
            batch_id: good.batch_id,
            app_id: good.app_id,
            device_id: good.device_id,
            sdk: good.sdk,
            sent_at_ms: 1,
            events: good.events,
            context: BadContext {
                screen_width: "wide",
            },
        },
    })
    .unwrap();
    assert!(decode_payload::<IngestRequest>(&bad).is_err());
    assert!(IngestView::parse(&bad, &l).is_err());
}
