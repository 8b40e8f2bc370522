//! The hand-written codec (`tern_protocol::wire`) against a generic serde MessagePack
//! codec (`rmp-serde`, what earlier versions of this crate used and what other
//! implementations may use): the same bytes for every message, and never a value the
//! generic decoder would not read the same way. One rule of §4 the generic decoder
//! does not know: `nil` in a field with a default is the field absent (serde's derive
//! refuses `nil` for a non-`Option` field); the comparison gives serde the payload with
//! its `nil` fields removed, which is what that rule means.

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
            let theirs: Result<T, _> = rmp_serde::from_slice(payload).or_else(|e| {
                let stripped = without_nil_fields(payload).ok_or(e)?;
                rmp_serde::from_slice(&stripped)
            });
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

/// `payload` (one MessagePack value) with every map entry whose value is `nil`
/// removed, at every level; `None` if it is not one well-formed value.
fn without_nil_fields(payload: &[u8]) -> Option<Vec<u8>> {
    fn len_at(p: &[u8], at: usize, width: usize) -> Option<usize> {
        let b = p.get(at..at + width)?;
        Some(b.iter().fold(0usize, |n, &x| n << 8 | usize::from(x)))
    }
    fn header(out: &mut Vec<u8>, n: usize, fix: u8, w16: u8, w32: u8) {
        if n < 16 {
            out.push(fix | n as u8);
        } else if n <= 0xffff {
            out.push(w16);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(w32);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    fn value(p: &[u8], pos: &mut usize, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > 200 {
            return None;
        }
        let b = *p.get(*pos)?;
        let (entries, map, skip) = match b {
            0x80..=0x8f => (usize::from(b & 0x0f), true, 1),
            0xde => (len_at(p, *pos + 1, 2)?, true, 3),
            0xdf => (len_at(p, *pos + 1, 4)?, true, 5),
            0x90..=0x9f => (usize::from(b & 0x0f), false, 1),
            0xdc => (len_at(p, *pos + 1, 2)?, false, 3),
            0xdd => (len_at(p, *pos + 1, 4)?, false, 5),
            _ => {
                let n = match b {
                    0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 1,
                    0xa0..=0xbf => 1 + usize::from(b & 0x1f),
                    0xc4 | 0xd9 => 2 + len_at(p, *pos + 1, 1)?,
                    0xc5 | 0xda => 3 + len_at(p, *pos + 1, 2)?,
                    0xc6 | 0xdb => 5 + len_at(p, *pos + 1, 4)?,
                    0xc7 => 3 + len_at(p, *pos + 1, 1)?,
                    0xc8 => 4 + len_at(p, *pos + 1, 2)?,
                    0xc9 => 6 + len_at(p, *pos + 1, 4)?,
                    0xcc | 0xd0 => 2,
                    0xcd | 0xd1 | 0xd4 => 3,
                    0xd5 => 4,
                    0xca | 0xce | 0xd2 => 5,
                    0xd6 => 6,
                    0xcb | 0xcf | 0xd3 => 9,
                    0xd7 => 10,
                    0xd8 => 18,
                    _ => return None,
                };
                out.extend_from_slice(p.get(*pos..*pos + n)?);
                *pos += n;
                return Some(());
            }
        };
        *pos += skip;
        if !map {
            header(out, entries, 0x90, 0xdc, 0xdd);
            for _ in 0..entries {
                value(p, pos, out, depth + 1)?;
            }
            return Some(());
        }
        let mut kept = Vec::new();
        let mut count = 0;
        for _ in 0..entries {
            let mut entry = Vec::new();
            value(p, pos, &mut entry, depth + 1)?;
            if p.get(*pos) == Some(&0xc0) {
                *pos += 1;
                continue;
            }
            value(p, pos, &mut entry, depth + 1)?;
            kept.extend_from_slice(&entry);
            count += 1;
        }
        header(out, count, 0x80, 0xde, 0xdf);
        out.extend_from_slice(&kept);
        Some(())
    }
    let mut out = Vec::new();
    let mut pos = 0;
    value(payload, &mut pos, &mut out, 0)?;
    (pos == payload.len()).then_some(out)
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
