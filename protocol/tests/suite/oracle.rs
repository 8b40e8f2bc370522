//! The hand-written codec (`tern_protocol::wire`) against a generic serde MessagePack
//! codec (`rmp-serde`, what earlier versions of this crate used and what other
//! implementations may use): the same bytes for every message, and never a value the
//! generic decoder would not read the same way.

use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tern_protocol::*;

use crate::strategies::*;
use crate::view::mutate;

/// The payload of `msg`, through serde.
fn serde_bytes(msg: &Message) -> Vec<u8> {
    fn enc<T: Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }
    match msg {
        Message::IngestRequest(m) => enc(m),
        Message::ConfigRequest(m) => enc(m),
        Message::ShardMapRequest(m) => enc(m),
        Message::SubscribeRequest(m) => enc(m),
        Message::ForwardRequest(m) => enc(m),
        Message::IngestReply(m) => enc(m),
        Message::ConfigReply(m) => enc(m),
        Message::ShardMapReply(m) => enc(m),
        Message::PushNotice(m) => enc(m),
        Message::ForwardReply(m) => enc(m),
        Message::ErrorReply(m) => enc(m),
        _ => unreachable!("every kind is listed"),
    }
}

/// Decodes `payload` as a `kind` message with both codecs; whenever the hand-written
/// one accepts it, serde accepts it too and reads the same value.
fn agree(kind: MessageKind, payload: &[u8]) -> Result<(), TestCaseError> {
    fn both<T: Decode + DeserializeOwned + PartialEq + std::fmt::Debug>(
        payload: &[u8],
    ) -> Result<(), TestCaseError> {
        if let Ok(ours) = decode_payload::<T>(payload) {
            let theirs: Result<T, _> = rmp_serde::from_slice(payload);
            prop_assert!(
                theirs.is_ok(),
                "accepted what serde refuses: {:02x?}",
                payload
            );
            prop_assert_eq!(ours, theirs.unwrap());
        }
        Ok(())
    }
    match kind {
        MessageKind::IngestRequest => both::<IngestRequest>(payload),
        MessageKind::ConfigRequest => both::<ConfigRequest>(payload),
        MessageKind::ShardMapRequest => both::<ShardMapRequest>(payload),
        MessageKind::SubscribeRequest => both::<SubscribeRequest>(payload),
        MessageKind::ForwardRequest => both::<ForwardRequest>(payload),
        MessageKind::IngestReply => both::<IngestReply>(payload),
        MessageKind::ConfigReply => both::<ConfigReply>(payload),
        MessageKind::ShardMapReply => both::<ShardMapReply>(payload),
        MessageKind::PushNotice => both::<PushNotice>(payload),
        MessageKind::ForwardReply => both::<ForwardReply>(payload),
        MessageKind::ErrorReply => both::<ErrorReply>(payload),
        _ => unreachable!("every kind is listed"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Same bytes as serde for every message; each codec reads the other's bytes back
    /// to the same value; `encoded_len` is the length.
    #[test]
    fn encodes_and_decodes_like_serde(msg in message_any()) {
        let cfg = CodecConfig::backend().with_compress_threshold(usize::MAX);
        let ours = msg.encode(&cfg).unwrap();
        let payload = &ours[frame::HEADER_LEN..];
        let theirs = serde_bytes(&msg);
        prop_assert_eq!(payload, &theirs[..]);
        agree(msg.kind(), &theirs)?;
        prop_assert_eq!(Message::from_bytes(&ours, &cfg).unwrap(), msg);
    }

    /// Damaged payloads: what the hand-written decoder accepts, serde reads the same.
    #[test]
    fn agrees_with_serde_on_damaged_payloads(
        msg in message_any(),
        muts in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let payload = mutate(serde_bytes(&msg), &muts);
        agree(msg.kind(), &payload)?;
    }
}

#[test]
fn events_and_batches_count_their_encoded_length() {
    let e = Event {
        seq: 300,
        ts_ms: -5,
        user_id: Some(UserId::new("u")),
        session_id: None,
        body: EventBody::Custom {
            name: "n".into(),
            props: [("k".to_string(), Value::Float(1.5))].into(),
        },
    };
    let bytes = rmp_serde::to_vec_named(&e).unwrap();
    assert_eq!(codec::encoded_len(&e).unwrap(), bytes.len());
    assert_eq!(encode_payload(&e).unwrap(), bytes);
}

#[test]
fn trailing_bytes_and_deep_nesting_are_refused_cleanly() {
    let reply = ErrorReply {
        shard_map_version: 1,
        reason: RejectReason::Malformed,
        detail: String::new(),
    };
    let mut bytes = encode_payload(&reply).unwrap();
    bytes.push(0xc0);
    let err = decode_payload::<ErrorReply>(&bytes).unwrap_err();
    assert!(err.to_string().contains("trailing bytes"), "{err}");

    // An unknown field nested 10,000 arrays deep: refused, no stack overflow.
    let mut deep = vec![0x82, 0xa1, b'x'];
    deep.extend(std::iter::repeat_n(0x91, 10_000));
    deep.push(0xc0);
    let err = decode_payload::<ErrorReply>(&deep).unwrap_err();
    assert!(err.to_string().contains("nested too deeply"), "{err}");

    // A map claiming 4 billion entries in a few bytes: refused, nothing allocated.
    let err = decode_payload::<ForwardReply>(&[
        0x81, 0xa7, b'r', b'e', b's', b'u', b'l', b't', b's', 0xdd, 0xff, 0xff, 0xff, 0xff,
    ])
    .unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}
