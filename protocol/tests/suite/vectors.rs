//! Checked-in test vectors under `tests/vectors/` (hex, 32 bytes a line).
//!
//! * `*_v1.hex` — golden encodings of this version: the encoder must reproduce them
//!   byte for byte, and the decoder must read them back.
//! * `*_future.hex` — messages from a hypothetical newer peer (new fields, new event
//!   kinds, new enum values): this version must decode them, keeping what it knows.
//! * `*_older.hex` — messages from an older or minimal peer that omits every optional
//!   field: this version must decode them with defaults.
//!
//! The future and older vectors are produced from the serde structs in this file that
//! describe those schemas; `UPDATE_VECTORS=1 cargo test -p tern-protocol` rewrites all
//! files, and without it the test fails if a file does not match.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use tern_protocol::*;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.chunks(32) {
        for b in chunk {
            s.push_str(&format!("{b:02x}"));
        }
        s.push('\n');
    }
    s
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// Compares `bytes` with the checked-in vector (or rewrites it under UPDATE_VECTORS=1)
/// and returns the checked-in bytes.
pub(crate) fn vector(name: &str, bytes: &[u8]) -> Vec<u8> {
    let p = path(name);
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(&p, to_hex(bytes)).unwrap();
    }
    let stored = from_hex(&std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_VECTORS=1 to create it)",
            p.display()
        )
    }));
    assert_eq!(
        to_hex(&stored),
        to_hex(bytes),
        "{name} differs from the checked-in vector: the wire encoding changed"
    );
    stored
}

pub fn sample_auth() -> Auth {
    Auth {
        app_id: AppId::new("demo"),
        key: "demo-key".into(),
    }
}

pub fn sample_batch(n: u64) -> EventBatch {
    let events = (1..=n)
        .map(|seq| Event {
            seq,
            ts_ms: 1_764_000_000_000 + seq as i64 * 250,
            user_id: Some(UserId::new("user-42")),
            session_id: Some(SessionId(7)),
            body: match seq % 4 {
                0 => EventBody::Purchase {
                    product_id: "sku-1".into(),
                    amount_micros: 1_990_000,
                    currency: "EUR".into(),
                    quantity: 1,
                    props: BTreeMap::new(),
                },
                1 => EventBody::Custom {
                    name: "screen_view".into(),
                    props: [
                        ("screen".to_string(), Value::from("home")),
                        ("ms".to_string(), Value::Int(120 + seq as i64)),
                        ("ratio".to_string(), Value::Float(0.5)),
                        ("first".to_string(), Value::Bool(seq == 1)),
                    ]
                    .into_iter()
                    .collect(),
                },
                2 => EventBody::UserProperties {
                    set: [("plan".to_string(), Value::from("pro"))]
                        .into_iter()
                        .collect(),
                    unset: vec!["trial".into()],
                },
                _ => EventBody::Custom {
                    name: "button_tap".into(),
                    props: [("id".to_string(), Value::from("buy"))]
                        .into_iter()
                        .collect(),
                },
            },
        })
        .collect();
    EventBatch {
        anonymous_id: None,
        context: None,
        batch_id: BatchId::parse("0192f3a0-7b1c-7cde-8f00-0123456789ab").unwrap(),
        app_id: AppId::new("demo"),
        device_id: DeviceId::parse("6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5").unwrap(),
        sdk: SdkInfo {
            name: "tern-kotlin".into(),
            version: "0.1.0".into(),
            platform: "android".into(),
            app_version: Some("3.2.1".into()),
        },
        sent_at_ms: 1_764_000_100_000,
        attempt: 0,
        events,
        health: SdkHealth {
            dropped_overflow: 3,
            retries: 2,
            queue_events: 10,
            queue_bytes: 2048,
            store_resets: 1,
            dropped_corrupt: 1,
            dropped_disk_full: 4,
            reset_unknown: 12,
            ..SdkHealth::default()
        },
    }
}

fn sample_bundle() -> ConfigBundle {
    ConfigBundle {
        app_id: AppId::new("demo"),
        version: 12,
        etag: ETag("9c1d0e2f".into()),
        values: [
            ("welcome_text".to_string(), Value::from("Hello")),
            ("max_items".to_string(), Value::Int(5)),
        ]
        .into_iter()
        .collect(),
        flags: vec![
            FeatureFlag {
                key: "new_checkout".into(),
                enabled: true,
                rollout_bp: 5000,
                variants: vec![],
                salt: None,
            },
            FeatureFlag {
                key: "button_color".into(),
                enabled: true,
                rollout_bp: 10_000,
                variants: vec![
                    Variant {
                        key: "red".into(),
                        weight: 1,
                        value: Some(Value::from("#f00")),
                    },
                    Variant {
                        key: "blue".into(),
                        weight: 1,
                        value: None,
                    },
                ],
                salt: Some("v2".into()),
            },
        ],
        messages: vec![InAppMessage {
            id: "welcome".into(),
            title: "Welcome".into(),
            body: "Thanks for installing".into(),
            actions: vec![MessageAction {
                id: "ok".into(),
                label: "OK".into(),
                url: None,
            }],
            trigger: Trigger::SessionStart,
            targeting: Targeting {
                platforms: vec!["android".into()],
                ..Targeting::default()
            },
            pacing: Pacing {
                min_interval_s: 3600,
                max_impressions: 3,
            },
            starts_at_ms: None,
            ends_at_ms: None,
            priority: 1,
        }],
    }
}

/// A batch of exposures as this version records them: a boolean flag on, a variant,
/// a flag off without a reason.
fn exposure_batch() -> EventBatch {
    let mut b = sample_batch(3);
    let bodies = [
        EventBody::Exposure {
            flag: "new_checkout".into(),
            variant: "on".into(),
            config_version: 12,
            reason: Some(rollout::FlagReason::InRollout),
        },
        EventBody::Exposure {
            flag: "button_color".into(),
            variant: "red".into(),
            config_version: 12,
            reason: Some(rollout::FlagReason::Variant),
        },
        EventBody::Exposure {
            flag: "dark_mode".into(),
            variant: "off".into(),
            config_version: 12,
            reason: None,
        },
    ];
    for (e, body) in b.events.iter_mut().zip(bodies) {
        e.body = body;
    }
    b
}

fn golden_messages() -> Vec<(&'static str, Message, CodecConfig)> {
    let plain = CodecConfig::device().with_compress_threshold(usize::MAX);
    vec![
        (
            "ingest_request_v1.hex",
            Message::IngestRequest(IngestRequest {
                auth: sample_auth(),
                batch: sample_batch(4),
            }),
            plain,
        ),
        (
            "ingest_request_lz4_v1.hex",
            Message::IngestRequest(IngestRequest {
                auth: sample_auth(),
                batch: sample_batch(40),
            }),
            CodecConfig::device(),
        ),
        (
            "ingest_request_exposure_v1.hex",
            Message::IngestRequest(IngestRequest {
                auth: sample_auth(),
                batch: exposure_batch(),
            }),
            plain,
        ),
        (
            "ingest_reply_v1.hex",
            Message::IngestReply(IngestReply {
                shard_map_version: 3,
                batch_id: sample_batch(1).batch_id,
                outcome: IngestOutcome::Accepted {
                    durability: Durability::Spooled,
                },
            }),
            plain,
        ),
        (
            "config_reply_v1.hex",
            Message::ConfigReply(ConfigReply {
                shard_map_version: 3,
                stale: false,
                outcome: ConfigOutcome::Modified {
                    bundle: sample_bundle(),
                },
            }),
            plain,
        ),
        (
            "shard_map_reply_v1.hex",
            Message::ShardMapReply(ShardMapReply {
                shard_map_version: 4,
                map: Some(ShardMap {
                    version: 4,
                    nodes: vec![RelayNode {
                        id: RelayId::new("relay-1"),
                        quic_addr: "relay-1.example:4433".into(),
                        https_url: "https://relay-1.example:8443".into(),
                        weight: 1,
                        state: NodeState::Draining,
                    }],
                }),
            }),
            plain,
        ),
        (
            "push_notice_v1.hex",
            Message::PushNotice(PushNotice::ConfigChanged {
                version: 13,
                etag: ETag("abc".into()),
            }),
            plain,
        ),
        (
            "forward_reply_v1.hex",
            Message::ForwardReply(ForwardReply {
                results: vec![
                    ForwardResult {
                        batch_id: sample_batch(1).batch_id,
                        outcome: ForwardOutcome::Duplicate,
                    },
                    ForwardResult {
                        batch_id: BatchId::from_bytes([1; 16]),
                        outcome: ForwardOutcome::Rejected {
                            reason: RejectReason::Invalid,
                            detail: "event name is empty".into(),
                        },
                    },
                ],
            }),
            plain,
        ),
    ]
}

#[test]
fn golden_vectors_encode_and_decode_exactly() {
    for (name, msg, cfg) in golden_messages() {
        let bytes = msg.encode(&cfg).unwrap();
        let stored = vector(name, &bytes);
        assert_eq!(Message::from_bytes(&stored, &cfg).unwrap(), msg, "{name}");
    }
}

// ---------------------------------------------------------------------------
// A hypothetical newer protocol (v1.x): new fields everywhere, a new event kind,
// new enum values. This version must read it.

#[derive(Serialize)]
struct FutureAuth {
    app_id: &'static str,
    key: &'static str,
    key_version: u32,
}

#[derive(Serialize)]
struct FutureSdk {
    name: &'static str,
    version: &'static str,
    platform: &'static str,
    build: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FutureBody {
    Custom {
        name: &'static str,
        props: BTreeMap<&'static str, i64>,
        importance: u8,
    },
    ScreenView {
        screen: &'static str,
        duration_ms: u64,
    },
    SessionStart {
        cold_start: bool,
    },
}

#[derive(Serialize)]
struct FutureEvent {
    seq: u64,
    ts_ms: i64,
    user_id: &'static str,
    body: FutureBody,
    geo: (f64, f64),
}

#[derive(Serialize)]
struct FutureHealth {
    dropped_overflow: u64,
    retries: u64,
    dropped_disk_full: u64,
    dropped_thermal: u64,
}

#[derive(Serialize)]
struct FutureBatch {
    batch_id: BatchId,
    app_id: &'static str,
    device_id: DeviceId,
    sdk: FutureSdk,
    sent_at_ms: i64,
    attempt: u32,
    events: Vec<FutureEvent>,
    health: FutureHealth,
    region: &'static str,
}

#[derive(Serialize)]
struct FutureIngestRequest {
    auth: FutureAuth,
    batch: FutureBatch,
    priority: u8,
}

#[test]
fn this_version_reads_a_newer_ingest_request() {
    let b = sample_batch(1);
    let future = FutureIngestRequest {
        auth: FutureAuth {
            app_id: "demo",
            key: "demo-key",
            key_version: 2,
        },
        batch: FutureBatch {
            batch_id: b.batch_id,
            app_id: "demo",
            device_id: b.device_id,
            sdk: FutureSdk {
                name: "tern-swift",
                version: "2.0.0",
                platform: "ios",
                build: 99,
            },
            sent_at_ms: 5,
            attempt: 1,
            events: vec![
                FutureEvent {
                    seq: 1,
                    ts_ms: 10,
                    user_id: "u1",
                    body: FutureBody::Custom {
                        name: "tap",
                        props: [("n", 3)].into_iter().collect(),
                        importance: 9,
                    },
                    geo: (1.0, 2.0),
                },
                FutureEvent {
                    seq: 2,
                    ts_ms: 11,
                    user_id: "u1",
                    body: FutureBody::ScreenView {
                        screen: "home",
                        duration_ms: 5,
                    },
                    geo: (1.0, 2.0),
                },
                FutureEvent {
                    seq: 3,
                    ts_ms: 12,
                    user_id: "u1",
                    body: FutureBody::SessionStart { cold_start: true },
                    geo: (1.0, 2.0),
                },
            ],
            health: FutureHealth {
                dropped_overflow: 4,
                retries: 1,
                dropped_disk_full: 7,
                dropped_thermal: 2,
            },
            region: "eu-west",
        },
        priority: 1,
    };
    let frame = frame::encode_frame(
        MessageKind::IngestRequest.as_u8(),
        &serde_payload(&future).unwrap(),
        usize::MAX,
    );
    let stored = vector("ingest_request_future.hex", &frame);
    let Message::IngestRequest(req) = Message::from_bytes(&stored, &CodecConfig::device()).unwrap()
    else {
        panic!("wrong kind")
    };
    assert_eq!(req.auth, sample_auth());
    assert_eq!(req.batch.batch_id, b.batch_id);
    assert_eq!(req.batch.sdk.platform, "ios");
    assert_eq!(req.batch.sdk.app_version, None);
    assert_eq!(req.batch.attempt, 1);
    assert_eq!(req.batch.health.dropped_overflow, 4);
    assert_eq!(req.batch.health.dropped_invalid, 0);
    // `dropped_disk_full` was a newer peer's field when this vector was written and is
    // known now; `dropped_thermal` still is not.
    assert_eq!(req.batch.health.dropped_disk_full, 7);
    assert_eq!(req.batch.health.reset_unknown, 0);
    assert_eq!(req.batch.events.len(), 3);
    assert_eq!(
        req.batch.events[0].body,
        EventBody::Custom {
            name: "tap".into(),
            props: [("n".to_string(), Value::Int(3))].into_iter().collect()
        }
    );
    assert_eq!(req.batch.events[1].body, EventBody::Unknown);
    assert_eq!(req.batch.events[1].seq, 2);
    assert_eq!(req.batch.events[2].body, EventBody::SessionStart);
    // A relay of this version still validates a batch holding unknown kinds.
    limits::validate_batch(&req.batch, &Limits::default()).unwrap();
}

#[derive(Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum FutureOutcome {
    Accepted {
        durability: &'static str,
        replicas: u8,
    },
    Redirect {
        to: &'static str,
    },
    Rejected {
        reason: &'static str,
        detail: &'static str,
    },
}

#[derive(Serialize)]
struct FutureIngestReply {
    shard_map_version: u64,
    batch_id: BatchId,
    outcome: FutureOutcome,
    server_time_ms: i64,
}

#[test]
fn this_version_reads_newer_replies() {
    let id = sample_batch(1).batch_id;
    let cases = [
        (
            "ingest_reply_accepted_future.hex",
            FutureOutcome::Accepted {
                durability: "replicated",
                replicas: 3,
            },
            IngestOutcome::Accepted {
                durability: Durability::Other("replicated".into()),
            },
        ),
        (
            "ingest_reply_redirect_future.hex",
            FutureOutcome::Redirect { to: "relay-9" },
            IngestOutcome::Unknown,
        ),
        (
            "ingest_reply_rejected_future.hex",
            FutureOutcome::Rejected {
                reason: "quota_exceeded",
                detail: "monthly quota",
            },
            IngestOutcome::Rejected {
                reason: RejectReason::Other("quota_exceeded".into()),
                detail: "monthly quota".into(),
            },
        ),
    ];
    for (name, outcome, expected) in cases {
        let payload = serde_payload(&FutureIngestReply {
            shard_map_version: 8,
            batch_id: id,
            outcome,
            server_time_ms: 1,
        })
        .unwrap();
        let frame = frame::encode_frame(MessageKind::IngestReply.as_u8(), &payload, usize::MAX);
        let stored = vector(name, &frame);
        let Message::IngestReply(reply) =
            Message::from_bytes(&stored, &CodecConfig::device()).unwrap()
        else {
            panic!("wrong kind")
        };
        assert_eq!(reply.outcome, expected, "{name}");
        assert_eq!(reply.shard_map_version, 8);
    }
}

#[derive(Serialize)]
struct FutureFlag {
    key: &'static str,
    enabled: bool,
    rollout_bp: u32,
    rules: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(tag = "on", rename_all = "snake_case")]
enum FutureTrigger {
    ScreenView { screen: &'static str },
}

#[derive(Serialize)]
struct FutureMessage {
    id: &'static str,
    title: &'static str,
    body: &'static str,
    trigger: FutureTrigger,
    image_url: &'static str,
}

#[derive(Serialize)]
struct FutureBundle {
    app_id: &'static str,
    version: u64,
    etag: &'static str,
    values: BTreeMap<&'static str, &'static str>,
    flags: Vec<FutureFlag>,
    messages: Vec<FutureMessage>,
    experiments: Vec<u32>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FuturePush {
    Reauthenticate { within_ms: u64 },
}

#[test]
fn this_version_reads_newer_config_and_push() {
    let bundle = FutureBundle {
        app_id: "demo",
        version: 40,
        etag: "e40",
        values: [("k", "v")].into_iter().collect(),
        flags: vec![FutureFlag {
            key: "f",
            enabled: true,
            rollout_bp: 100,
            rules: vec!["country == 'FR'"],
        }],
        messages: vec![FutureMessage {
            id: "m",
            title: "t",
            body: "b",
            trigger: FutureTrigger::ScreenView { screen: "home" },
            image_url: "https://x/y.png",
        }],
        experiments: vec![1, 2],
    };
    let stored = vector("config_bundle_future.hex", &serde_payload(&bundle).unwrap());
    let got: ConfigBundle = decode_payload(&stored).unwrap();
    assert_eq!(got.version, 40);
    assert_eq!(got.flags[0].rollout_bp, 100);
    assert!(got.flags[0].variants.is_empty());
    assert_eq!(got.messages[0].trigger, Trigger::Unknown);
    assert_eq!(got.messages[0].pacing, Pacing::default());

    let push = frame::encode_frame(
        MessageKind::PushNotice.as_u8(),
        &serde_payload(&FuturePush::Reauthenticate { within_ms: 5 }).unwrap(),
        usize::MAX,
    );
    let stored = vector("push_notice_future.hex", &push);
    assert_eq!(
        Message::from_bytes(&stored, &CodecConfig::device()).unwrap(),
        Message::PushNotice(PushNotice::Unknown)
    );
}

// ---------------------------------------------------------------------------
// An older or minimal peer that sends only the required fields.

#[derive(Serialize)]
struct OlderSdk {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OlderBody {
    Custom { name: &'static str },
}

#[derive(Serialize)]
struct OlderEvent {
    seq: u64,
    ts_ms: i64,
    body: OlderBody,
}

#[derive(Serialize)]
struct OlderBatch {
    batch_id: BatchId,
    app_id: &'static str,
    device_id: DeviceId,
    sdk: OlderSdk,
    sent_at_ms: i64,
    events: Vec<OlderEvent>,
}

#[derive(Serialize)]
struct OlderIngestRequest {
    auth: FutureAuthOld,
    batch: OlderBatch,
}

#[derive(Serialize)]
struct FutureAuthOld {
    app_id: &'static str,
    key: &'static str,
}

#[derive(Serialize)]
struct OlderFlag {
    key: &'static str,
    enabled: bool,
}

#[derive(Serialize)]
struct OlderMessage {
    id: &'static str,
    title: &'static str,
    body: &'static str,
    trigger: OlderTrigger,
}

#[derive(Serialize)]
#[serde(tag = "on", rename_all = "snake_case")]
enum OlderTrigger {
    Immediate,
}

#[derive(Serialize)]
struct OlderBundle {
    app_id: &'static str,
    version: u64,
    etag: &'static str,
    flags: Vec<OlderFlag>,
    messages: Vec<OlderMessage>,
}

#[derive(Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum OlderConfigOutcome {
    Modified { bundle: OlderBundle },
}

#[derive(Serialize)]
struct OlderConfigReply {
    shard_map_version: u64,
    outcome: OlderConfigOutcome,
}

#[test]
fn this_version_reads_older_minimal_messages() {
    let b = sample_batch(1);
    let older = OlderIngestRequest {
        auth: FutureAuthOld {
            app_id: "demo",
            key: "demo-key",
        },
        batch: OlderBatch {
            batch_id: b.batch_id,
            app_id: "demo",
            device_id: b.device_id,
            sdk: OlderSdk {
                name: "tern-kotlin",
                version: "0.0.9",
            },
            sent_at_ms: 1,
            events: vec![OlderEvent {
                seq: 1,
                ts_ms: 2,
                body: OlderBody::Custom { name: "open" },
            }],
        },
    };
    let frame = frame::encode_frame(
        MessageKind::IngestRequest.as_u8(),
        &serde_payload(&older).unwrap(),
        usize::MAX,
    );
    let stored = vector("ingest_request_older.hex", &frame);
    let Message::IngestRequest(req) = Message::from_bytes(&stored, &CodecConfig::device()).unwrap()
    else {
        panic!("wrong kind")
    };
    assert_eq!(req.batch.attempt, 0);
    assert_eq!(req.batch.health, SdkHealth::default());
    assert_eq!(req.batch.sdk.platform, "");
    assert_eq!(req.batch.events[0].user_id, None);
    assert_eq!(
        req.batch.events[0].body,
        EventBody::Custom {
            name: "open".into(),
            props: Properties::new()
        }
    );

    let reply = OlderConfigReply {
        shard_map_version: 1,
        outcome: OlderConfigOutcome::Modified {
            bundle: OlderBundle {
                app_id: "demo",
                version: 2,
                etag: "e2",
                flags: vec![OlderFlag {
                    key: "f",
                    enabled: true,
                }],
                messages: vec![OlderMessage {
                    id: "m",
                    title: "t",
                    body: "b",
                    trigger: OlderTrigger::Immediate,
                }],
            },
        },
    };
    let frame = frame::encode_frame(
        MessageKind::ConfigReply.as_u8(),
        &serde_payload(&reply).unwrap(),
        usize::MAX,
    );
    let stored = vector("config_reply_older.hex", &frame);
    let Message::ConfigReply(reply) = Message::from_bytes(&stored, &CodecConfig::device()).unwrap()
    else {
        panic!("wrong kind")
    };
    assert!(!reply.stale);
    let ConfigOutcome::Modified { bundle } = reply.outcome else {
        panic!("not modified")
    };
    assert!(bundle.values.is_empty());
    assert_eq!(
        bundle.flags[0].rollout_bp, 10_000,
        "missing rollout means 100%"
    );
    assert_eq!(bundle.messages[0].targeting, Targeting::default());
    assert_eq!(bundle.messages[0].pacing, Pacing::default());
}

// ---------------------------------------------------------------------------
// Exposures (`exposure` events) across versions.

/// The event bodies a peer of this version from before `exposure` decodes: the kinds it
/// knew, and `unknown` for every other one (the same serde shape as `EventBody` then).
#[derive(serde::Deserialize, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PreExposureBody {
    Custom {
        name: String,
    },
    SessionStart,
    SessionEnd {
        duration_ms: u64,
    },
    Purchase {
        product_id: String,
    },
    UserProperties {},
    MessageImpression {
        message_id: String,
        action: String,
    },
    #[serde(other)]
    Unknown,
}

#[derive(serde::Deserialize)]
struct PreExposureEvent {
    seq: u64,
    body: PreExposureBody,
}

#[derive(serde::Deserialize)]
struct PreExposureBatch {
    batch_id: BatchId,
    events: Vec<PreExposureEvent>,
}

#[derive(serde::Deserialize)]
struct PreExposureRequest {
    batch: PreExposureBatch,
}

/// An older peer (a relay or backend from before `exposure`) reads this version's
/// exposures as events of an unknown kind (§11): the batch and every event are kept,
/// in order, and an unknown kind passes its content rules.
#[test]
fn an_older_peer_reads_exposures_as_unknown_events() {
    // The golden vector (uncompressed): its body is the payload.
    let stored =
        from_hex(&std::fs::read_to_string(path("ingest_request_exposure_v1.hex")).unwrap());
    let body = frame::decode_single_frame(&stored, 1 << 20).unwrap().body;
    let old: PreExposureRequest = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(old.batch.batch_id, exposure_batch().batch_id);
    assert_eq!(
        old.batch
            .events
            .iter()
            .map(|e| (e.seq, &e.body))
            .collect::<Vec<_>>(),
        [
            (1, &PreExposureBody::Unknown),
            (2, &PreExposureBody::Unknown),
            (3, &PreExposureBody::Unknown)
        ]
    );
    // This version's own reading of the golden vector keeps every field.
    let Message::IngestRequest(req) = Message::from_bytes(&stored, &CodecConfig::device()).unwrap()
    else {
        panic!("wrong kind")
    };
    assert_eq!(req.batch, exposure_batch());
    limits::validate_batch(&req.batch, &Limits::default()).unwrap();
    // What an older relay validates: the same batch with the kinds it does not know.
    let mut older_view = req.batch.clone();
    for e in &mut older_view.events {
        e.body = EventBody::Unknown;
    }
    limits::validate_batch(&older_view, &Limits::default()).unwrap();
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FutureExposureBody {
    /// A newer peer's exposure: more fields, a reason this version does not know.
    Exposure {
        flag: &'static str,
        variant: &'static str,
        config_version: u64,
        reason: &'static str,
        rule_id: &'static str,
        holdout: bool,
    },
    /// A minimal exposure: the required fields only.
    #[serde(rename = "exposure")]
    MinimalExposure {
        flag: &'static str,
        variant: &'static str,
        config_version: u64,
    },
}

#[derive(Serialize)]
struct FutureExposureEvent {
    seq: u64,
    ts_ms: i64,
    user_id: &'static str,
    body: FutureExposureBody,
}

#[derive(Serialize)]
struct FutureExposureBatch {
    batch_id: BatchId,
    app_id: &'static str,
    device_id: DeviceId,
    sdk: OlderSdk,
    sent_at_ms: i64,
    events: Vec<FutureExposureEvent>,
}

#[derive(Serialize)]
struct FutureExposureRequest {
    auth: FutureAuthOld,
    batch: FutureExposureBatch,
}

/// This version reads exposures from a newer peer (unknown fields ignored, an unknown
/// reason kept as text) and minimal ones (no reason).
#[test]
fn this_version_reads_newer_and_minimal_exposures() {
    let b = sample_batch(1);
    let request = FutureExposureRequest {
        auth: FutureAuthOld {
            app_id: "demo",
            key: "demo-key",
        },
        batch: FutureExposureBatch {
            batch_id: b.batch_id,
            app_id: "demo",
            device_id: b.device_id,
            sdk: OlderSdk {
                name: "tern-swift",
                version: "2.0.0",
            },
            sent_at_ms: 5,
            events: vec![
                FutureExposureEvent {
                    seq: 1,
                    ts_ms: 10,
                    user_id: "u1",
                    body: FutureExposureBody::Exposure {
                        flag: "checkout_color",
                        variant: "green",
                        config_version: 41,
                        reason: "targeting_match",
                        rule_id: "r-7",
                        holdout: false,
                    },
                },
                FutureExposureEvent {
                    seq: 2,
                    ts_ms: 11,
                    user_id: "u1",
                    body: FutureExposureBody::MinimalExposure {
                        flag: "new_checkout",
                        variant: "off",
                        config_version: 41,
                    },
                },
            ],
        },
    };
    let frame = frame::encode_frame(
        MessageKind::IngestRequest.as_u8(),
        &serde_payload(&request).unwrap(),
        usize::MAX,
    );
    let stored = vector("ingest_request_exposure_future.hex", &frame);
    let Message::IngestRequest(req) = Message::from_bytes(&stored, &CodecConfig::device()).unwrap()
    else {
        panic!("wrong kind")
    };
    assert_eq!(
        req.batch.events[0].body,
        EventBody::Exposure {
            flag: "checkout_color".into(),
            variant: "green".into(),
            config_version: 41,
            reason: Some(rollout::FlagReason::Other("targeting_match".into())),
        }
    );
    assert_eq!(
        req.batch.events[1].body,
        EventBody::Exposure {
            flag: "new_checkout".into(),
            variant: "off".into(),
            config_version: 41,
            reason: None,
        }
    );
    limits::validate_batch(&req.batch, &Limits::default()).unwrap();
    // The relay's fast path reads it too, with the same verdict.
    let payload = serde_payload(&request).unwrap();
    let view = IngestView::parse(&payload, &Limits::default()).unwrap();
    assert!(view.batch.validation().is_ok());
}

/// Encodes a value the way a generic serde MessagePack encoder does: the stand-in for
/// other implementations and future versions (types this crate does not have).
fn serde_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}
