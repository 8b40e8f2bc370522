//! Untrusted request bytes → the relay's request handler (`Ingest::handle_frame`), the
//! code every QUIC stream and HTTPS body goes through.
//!
//! The handler is built once: an app registry holding `demo`/`demo-key` (the app of the
//! protocol's test vectors, so seeds reach past authentication), no spool, and a
//! forwarder aimed at a loopback port nobody listens on. Properties, for every input:
//!
//! * the handler returns (no panic, no hang) and its reply is one well-formed frame of
//!   a *reply* kind, decodable with the device codec;
//! * input that does not decode is answered `ErrorReply`;
//! * an `IngestRequest` is answered with an `IngestReply` for the same `batch_id`, and
//!   never `Accepted`: with no backend and no spool nothing is durable, so an
//!   acknowledgement would be a lie (protocol §6.1);
//! * the handler reads `IngestRequest`s in place (`IngestView`) and falls back to the
//!   owned decoder for what it does not read; its decision must be the owned path's:
//!   a rejection with the reason the owned decode + the §7 rules on the sizes as
//!   received give (`ReceivedIngest`: credentials, app match, limits), otherwise
//!   `Retry`; and whatever the fast path reads, the owned decoder must read too (its
//!   bytes are what would be forwarded);
//! * a frame of a kind the relay does not serve is answered `unsupported_message`.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tern_protocol::limits::Limits;
use tern_protocol::{
    decode_single_frame_ref, AppId, CodecConfig, IngestOutcome, IngestView, Message, MessageKind,
    ReceivedIngest, RejectReason, RelayId, ShardMap,
};
use tern_relay::backend::forward::{Forwarder, ForwarderConfig};
use tern_relay::ingest::{Ingest, IngestConfig, IngestServices};
use tern_relay::policy::apps::{AppEntry, AppRegistry};

struct Harness {
    runtime: tokio::runtime::Runtime,
    ingest: Ingest,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Port 9 (discard) on loopback: connections are refused at once.
        let config = ForwarderConfig::new("http://127.0.0.1:9", RelayId::new("relay-fuzz"))
            .with_linger(Duration::ZERO)
            .with_request_timeout(Duration::from_millis(200));
        let ingest = runtime.block_on(async {
            let (forwarder, _task) = Forwarder::spawn(config, reqwest::Client::new(), None);
            let registry = AppRegistry::new(vec![AppEntry {
                app_id: AppId::new("demo"),
                keys: vec!["demo-key".into()],
            }]);
            Ingest::new(
                IngestConfig::default(),
                IngestServices::new(registry, forwarder, ShardMap::default()),
            )
        });
        Harness { runtime, ingest }
    })
}

/// The rejection the owned path gives (`None`: not rejected, so `Retry` here).
fn expected_rejection(received: &ReceivedIngest<'_>) -> Option<RejectReason> {
    let req = &received.request;
    if req.auth.app_id.as_str() != "demo" || req.auth.key != "demo-key" {
        return Some(RejectReason::Unauthorized);
    }
    if req.auth.app_id != req.batch.app_id {
        return Some(RejectReason::AppMismatch);
    }
    received
        .validate(&Limits::default())
        .err()
        .map(|e| e.reject_reason())
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let cfg = CodecConfig::device();
    let reply = h.runtime.block_on(h.ingest.handle_frame(data));
    let decoded = Message::from_bytes(&reply, &cfg)
        .unwrap_or_else(|e| panic!("the reply is not a valid frame: {e}; reply {reply:02x?}"));
    assert!(
        matches!(
            decoded,
            Message::IngestReply(_) | Message::ShardMapReply(_) | Message::ErrorReply(_)
        ),
        "not a reply: {decoded:?}"
    );
    match Message::from_bytes(data, &cfg) {
        Err(_) => assert!(
            matches!(decoded, Message::ErrorReply(_)),
            "undecodable input answered {decoded:?}"
        ),
        Ok(Message::IngestRequest(req)) => match decoded {
            Message::IngestReply(r) => {
                assert_eq!(r.batch_id, req.batch.batch_id, "reply for another batch");
                let frame = decode_single_frame_ref(data, cfg.max_payload).expect("decoded");
                let payload = frame.payload(cfg.max_payload).expect("decoded");
                let received = ReceivedIngest::decode(&payload).expect("decoded");
                match (expected_rejection(&received), &r.outcome) {
                    (Some(want), IngestOutcome::Rejected { reason, .. }) => {
                        assert_eq!(reason, &want, "rejected for another reason: {r:?}")
                    }
                    (None, IngestOutcome::Retry { .. }) => {}
                    (want, _) => panic!("expected {want:?} (None = retry), got {r:?}"),
                }
            }
            other => panic!("IngestRequest answered {other:?}"),
        },
        Ok(m) if !m.kind().is_device_request() || m.kind() == MessageKind::SubscribeRequest => {
            assert!(
                matches!(&decoded, Message::ErrorReply(e) if e.reason == RejectReason::UnsupportedMessage),
                "a {:?} frame answered {decoded:?}",
                m.kind()
            )
        }
        Ok(_) => {}
    }
    // What the fast path reads, the owned decoder reads.
    if let Ok(f) = decode_single_frame_ref(data, cfg.max_payload) {
        if f.kind == MessageKind::IngestRequest.as_u8() {
            if let Ok(payload) = f.payload(cfg.max_payload) {
                if IngestView::parse(&payload, &Limits::default()).is_ok() {
                    assert!(
                        matches!(
                            Message::from_bytes(data, &cfg),
                            Ok(Message::IngestRequest(_))
                        ),
                        "the fast path read a request the owned decoder refuses"
                    );
                }
            }
        }
    }
});
