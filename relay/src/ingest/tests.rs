//! The request handler on its own: an unloaded app registry, and the in-place path
//! (`IngestView`, original bytes forwarded) against the owned path (decode into
//! `IngestRequest`, `validate_batch`, encode for the backend). The handler wired into a
//! running relay is tested through `Relay::start` in `relay/tests/relay.rs`.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tern_protocol::limits::Limits;
use tern_protocol::{
    encode_frame, encode_payload, AppId, Auth, BatchId, CodecConfig, DeviceId, ErrorReply, Event,
    EventBatch, EventBody, ForwardOutcome, ForwardReply, ForwardResult, IngestOutcome,
    IngestRequest, IngestView, Message, MessageKind, Properties, RejectReason, RelayId, SdkInfo,
    ShardMap, UserId, Value,
};

use super::{Ingest, IngestConfig, IngestServices};
use crate::backend::forward::{Forwarder, ForwarderConfig};
use crate::policy::apps::{AppEntry, AppRegistry};
use crate::policy::ratelimit::{Rate, RateLimiterConfig, SharedLimiter};

type Received = Arc<Mutex<Vec<EventBatch>>>;

/// A backend that stores nothing, answers `stored` and remembers what it got.
async fn recording_backend() -> (String, Received) {
    let received: Received = Arc::default();
    async fn ingest(State(rx): State<Received>, body: bytes::Bytes) -> Vec<u8> {
        let cfg = CodecConfig::backend();
        let Ok(Message::ForwardRequest(req)) = Message::from_bytes(&body, &cfg) else {
            panic!("the relay sent a ForwardRequest the owned decoder refuses");
        };
        let results = req
            .batches
            .iter()
            .map(|b| ForwardResult {
                batch_id: b.batch_id,
                outcome: ForwardOutcome::Stored,
            })
            .collect();
        rx.lock().unwrap().extend(req.batches);
        Message::ForwardReply(ForwardReply { results })
            .encode(&cfg)
            .unwrap()
    }
    let app = axum::Router::new()
        .route("/v1/ingest", axum::routing::post(ingest))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

fn demo_registry() -> AppRegistry {
    AppRegistry::new(vec![AppEntry {
        app_id: AppId::new("demo"),
        keys: vec!["demo-key".into()],
    }])
}

/// A batch of `app` from a fresh device, without events.
fn empty_batch(app: &str) -> EventBatch {
    EventBatch {
        anonymous_id: None,
        app_id: AppId::new(app),
        device_id: DeviceId::random(),
        batch_id: BatchId::new_v7(),
        sdk: SdkInfo::default(),
        sent_at_ms: 0,
        attempt: 0,
        events: Vec::new(),
        health: Default::default(),
    }
}

fn request(app: &str, key: &str, batch: EventBatch) -> Vec<u8> {
    Message::IngestRequest(IngestRequest {
        auth: Auth {
            app_id: AppId::new(app),
            key: key.into(),
        },
        batch,
    })
    .encode(&CodecConfig::device())
    .unwrap()
}

async fn outcome(ingest: &Ingest, frame: &[u8]) -> IngestOutcome {
    match Message::from_bytes(&ingest.handle_frame(frame).await, &CodecConfig::device()).unwrap() {
        Message::IngestReply(r) => r.outcome,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unloaded_registry_says_retry_never_unauthorized() {
    let (url, received) = recording_backend().await;
    let (fwd, _task) = Forwarder::spawn(
        ForwarderConfig::new(&url, RelayId::new("relay-test")),
        reqwest::Client::new(),
        None,
    );
    let mut b = empty_batch("demo");
    b.events.push(Event {
        seq: 1,
        ts_ms: 1_700_000_000_000,
        user_id: None,
        session_id: None,
        body: EventBody::SessionStart,
    });
    let not_loaded = Ingest::new(
        IngestConfig::default(),
        IngestServices::new(AppRegistry::default(), fwd.clone(), ShardMap::default()),
    );
    assert!(matches!(
        outcome(&not_loaded, &request("demo", "demo-key", b.clone())).await,
        IngestOutcome::Retry { .. }
    ));
    let loaded_empty = Ingest::new(
        IngestConfig::default(),
        IngestServices::new(AppRegistry::new(vec![]), fwd.clone(), ShardMap::default()),
    );
    assert!(matches!(
        outcome(&loaded_empty, &request("demo", "demo-key", b.clone())).await,
        IngestOutcome::Rejected {
            reason: RejectReason::Unauthorized,
            ..
        }
    ));
    assert!(received.lock().unwrap().is_empty(), "nothing forwarded");
    // The same request once the registry knows the app: forwarded.
    let loaded = Ingest::new(
        IngestConfig::default(),
        IngestServices::new(demo_registry(), fwd, ShardMap::default()),
    );
    assert!(matches!(
        outcome(&loaded, &request("demo", "demo-key", b)).await,
        IngestOutcome::Accepted { .. }
    ));
    assert_eq!(received.lock().unwrap().len(), 1);
}

fn props() -> impl Strategy<Value = Properties> {
    proptest::collection::btree_map(
        prop_oneof![12 => "[a-z][a-z_]{0,6}", 1 => ".{0,3}"],
        prop_oneof![
            ".{0,8}".prop_map(Value::String),
            any::<i64>().prop_map(Value::Int),
            prop_oneof![9 => any::<f64>(), 1 => Just(f64::NAN)].prop_map(Value::Float),
            any::<bool>().prop_map(Value::Bool),
        ],
        0..4,
    )
}

fn body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        4 => (prop_oneof![9 => "[a-z][a-z_]{0,8}", 1 => ".{0,4}"], props())
            .prop_map(|(name, props)| EventBody::Custom { name, props }),
        1 => Just(EventBody::SessionStart),
        1 => ("[a-z]{0,4}", -2i64..5, "[A-Za-z]{3}", 0u32..3, props()).prop_map(
            |(product_id, amount_micros, currency, quantity, props)| EventBody::Purchase {
                product_id,
                amount_micros,
                currency,
                quantity,
                props,
            }
        ),
        // A deletion request (protocol §8.2): routed and forwarded unchanged.
        1 => (any::<[u8; 16]>(), option::of(prop_oneof![4 => "[a-z]{1,6}", 1 => ".{0,3}"]))
            .prop_map(|(device, user)| EventBody::DeletionRequest {
                device_id: DeviceId::from_bytes(device),
                user_id: user.map(UserId::new),
                anonymous_id: None,
            }),
    ]
}

/// (request, damage to its payload: (index, byte) overwrites)
fn case() -> impl Strategy<Value = (IngestRequest, Vec<(usize, u8)>)> {
    let events = proptest::collection::vec(
        (
            prop_oneof![9 => 1u64..3, 1 => Just(0)],
            option::of(prop_oneof![6 => "[a-z]{1,6}", 1 => ".{0,3}"]),
            body(),
        ),
        0..6,
    );
    (
        events,
        prop_oneof![8 => Just("demo"), 1 => Just("other")],
        prop_oneof![8 => Just("demo-key"), 1 => Just("wrong")],
        prop_oneof![8 => Just("demo"), 1 => Just("elsewhere")],
        prop_oneof![3 => Just(vec![]), 1 => proptest::collection::vec((any::<usize>(), any::<u8>()), 1..3)],
    )
        .prop_map(|(events, auth_app, key, batch_app, damage)| {
            let mut b = empty_batch(batch_app);
            let mut seq = 0;
            b.events = events
                .into_iter()
                .map(|(step, user, body)| {
                    seq += step;
                    Event {
                        seq,
                        ts_ms: 1_700_000_000_000,
                        user_id: user.map(UserId::new),
                        session_id: None,
                        body,
                    }
                })
                .collect();
            let req = IngestRequest {
                auth: Auth {
                    app_id: AppId::new(auth_app),
                    key: key.into(),
                },
                batch: b,
            };
            (req, damage)
        })
}

/// On random requests — valid, invalid, with wrong credentials, and damaged — both
/// paths give the same reply, and what reaches the backend decodes to the batch the
/// owned decoder sees.
#[test]
fn the_in_place_path_agrees_with_the_owned_path() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ingest, received) = rt.block_on(async {
        let (url, received) = recording_backend().await;
        let config =
            ForwarderConfig::new(&url, RelayId::new("relay-test")).with_linger(Duration::ZERO);
        let (fwd, _task) = Forwarder::spawn(config, reqwest::Client::new(), None);
        let services = IngestServices {
            limiter: SharedLimiter::new(
                RateLimiterConfig::default()
                    .with_default_limit(Rate::new(100_000_000, 100_000_000)),
            ),
            ..IngestServices::new(demo_registry(), fwd, ShardMap::default())
        };
        (Ingest::new(IngestConfig::default(), services), received)
    });
    let cfg = CodecConfig::device();
    let read_in_place = Cell::new(0u32);
    let accepted = Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });
    runner
        .run(&case(), |(req, damage)| {
            let mut payload = encode_payload(&req).unwrap();
            for (i, byte) in &damage {
                let n = payload.len();
                payload[i % n] = *byte;
            }
            let frame = encode_frame(MessageKind::IngestRequest.as_u8(), &payload, 1024);
            if IngestView::parse(&payload, &Limits::default()).is_ok() {
                read_in_place.set(read_in_place.get() + 1);
            }
            // The handler: in place when it can.
            received.lock().unwrap().clear();
            let fast =
                Message::from_bytes(&rt.block_on(ingest.handle_frame(&frame)), &cfg).unwrap();
            let forwarded = std::mem::take(&mut *received.lock().unwrap());
            // The owned path.
            let (owned_msg, slow) = match Message::from_bytes(&frame, &cfg) {
                Ok(msg) => (Some(msg.clone()), rt.block_on(ingest.handle(msg))),
                Err(e) => (
                    None,
                    Message::ErrorReply(ErrorReply {
                        shard_map_version: 0,
                        reason: e.reject_reason(),
                        detail: e.to_string(),
                    }),
                ),
            };
            prop_assert_eq!(&fast, &slow);
            if let Message::IngestReply(r) = &fast {
                if let IngestOutcome::Accepted { .. } = r.outcome {
                    accepted.set(accepted.get() + 1);
                    let Some(Message::IngestRequest(owned)) = owned_msg else {
                        return Err(TestCaseError::fail("accepted an undecodable request"));
                    };
                    prop_assert_eq!(forwarded.len(), 1);
                    prop_assert_eq!(
                        encode_payload(&forwarded[0]).unwrap(),
                        encode_payload(&owned.batch).unwrap()
                    );
                } else {
                    prop_assert!(forwarded.is_empty());
                }
            }
            Ok(())
        })
        .unwrap();
    // The cases exercise both paths and both decisions (counts, not timings).
    let (read_in_place, accepted) = (read_in_place.get(), accepted.get());
    assert!(read_in_place > 100, "only {read_in_place} read in place");
    assert!(accepted > 20, "only {accepted} accepted");
}
