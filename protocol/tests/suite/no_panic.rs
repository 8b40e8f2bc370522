//! Arbitrary bytes into every decoder: typed errors, never a panic, never an
//! allocation driven by an unchecked length.

use proptest::prelude::*;
use tern_protocol::*;

fn all_payload_decoders(p: &[u8]) {
    let _ = decode_payload::<IngestRequest>(p);
    let _ = decode_payload::<ConfigRequest>(p);
    let _ = decode_payload::<ShardMapRequest>(p);
    let _ = decode_payload::<SubscribeRequest>(p);
    let _ = decode_payload::<ForwardRequest>(p);
    let _ = decode_payload::<IngestReply>(p);
    let _ = decode_payload::<ConfigReply>(p);
    let _ = decode_payload::<ShardMapReply>(p);
    let _ = decode_payload::<PushNotice>(p);
    let _ = decode_payload::<ForwardReply>(p);
    let _ = decode_payload::<ErrorReply>(p);
    let _ = decode_payload::<EventBatch>(p);
    let _ = decode_payload::<ConfigBundle>(p);
    let _ = decode_payload::<Value>(p);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let cfg = CodecConfig::device();
        let _ = Message::from_bytes(&bytes, &cfg);
        let _ = decode_frame(&bytes, cfg.max_payload);
        let mut dec = FrameDecoder::new(cfg.max_payload);
        dec.push(&bytes);
        while let Ok(Some(frame)) = dec.next_frame() {
            let _ = Message::decode(&frame, &cfg);
        }
        all_payload_decoders(&bytes);
    }

    /// Frames with a well-formed header and arbitrary body reach the payload decoders.
    #[test]
    fn valid_header_arbitrary_body_never_panics(
        kind in any::<u8>(),
        compressed in any::<bool>(),
        declared in any::<u32>(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let cfg = CodecConfig::device();
        let mut b = Vec::new();
        if compressed {
            b.extend_from_slice(&declared.to_le_bytes());
        }
        b.extend_from_slice(&body);
        let mut wire = ((b.len() + 2) as u32).to_be_bytes().to_vec();
        wire.push(kind);
        wire.push(u8::from(compressed));
        wire.extend_from_slice(&b);
        match Message::from_bytes(&wire, &cfg) {
            Ok(_) => {}
            Err(e) => { let _ = e.reject_reason(); let _ = e.to_string(); }
        }
    }

    /// Valid messages with bytes flipped: still only typed errors.
    #[test]
    fn mutated_messages_never_panic(
        msg in crate::strategies::message_any(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let cfg = CodecConfig::backend().with_compress_threshold(32);
        let mut bytes = msg.encode(&cfg).unwrap();
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        let _ = Message::from_bytes(&bytes, &cfg);
        if bytes.len() > 6 { all_payload_decoders(&bytes[6..]); }
    }
}

#[test]
fn oversized_length_is_refused_before_buffering() {
    let mut dec = FrameDecoder::new(1024);
    dec.push(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00]);
    assert!(matches!(
        dec.next_frame(),
        Err(DecodeError::FrameTooLarge { .. })
    ));
}

#[test]
fn decompression_bomb_is_refused() {
    // Declares 1 GiB of output in a tiny compressed body.
    let mut body = (1u32 << 30).to_le_bytes().to_vec();
    body.extend_from_slice(&[0x1F, 0x00]);
    let mut wire = ((body.len() + 2) as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&[MessageKind::IngestRequest.as_u8(), frame::FLAG_LZ4]);
    wire.extend_from_slice(&body);
    let err = Message::from_bytes(&wire, &CodecConfig::device()).unwrap_err();
    assert!(matches!(err, DecodeError::PayloadTooLarge { .. }), "{err}");
    assert_eq!(err.reject_reason(), RejectReason::TooLarge);
}

#[test]
fn typed_errors_for_each_framing_fault() {
    let cfg = CodecConfig::device();
    let good = Message::PushNotice(PushNotice::Throttle { after_ms: 5 })
        .encode(&cfg)
        .unwrap();
    // Truncated.
    assert!(matches!(
        Message::from_bytes(&good[..good.len() - 1], &cfg),
        Err(DecodeError::Truncated { needed: 1 })
    ));
    assert!(matches!(
        Message::from_bytes(&good[..3], &cfg),
        Err(DecodeError::Truncated { needed: 3 })
    ));
    // Trailing bytes.
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        Message::from_bytes(&long, &cfg),
        Err(DecodeError::TrailingBytes(1))
    ));
    // Unknown kind.
    let mut unknown = good.clone();
    unknown[4] = 0x42;
    let err = Message::from_bytes(&unknown, &cfg).unwrap_err();
    assert_eq!(err, DecodeError::UnknownKind(0x42));
    assert_eq!(err.reject_reason(), RejectReason::UnsupportedMessage);
    // Reserved flag bit.
    let mut flags = good.clone();
    flags[5] = 0x80;
    assert_eq!(
        Message::from_bytes(&flags, &cfg).unwrap_err(),
        DecodeError::UnsupportedFlags(0x80)
    );
    // Length shorter than the header.
    assert_eq!(
        Message::from_bytes(&[0, 0, 0, 1, 0x84, 0], &cfg).unwrap_err(),
        DecodeError::FrameTooShort(1)
    );
    // Wrong kind where a specific reply is expected.
    let frame = decode_single_frame(&good, cfg.max_payload).unwrap();
    assert!(matches!(
        decode_expected::<IngestReply>(&frame, MessageKind::IngestReply, &cfg),
        Err(DecodeError::UnexpectedKind { .. })
    ));
    // A payload of the wrong shape.
    let mut wrong = frame::encode_frame(
        MessageKind::IngestReply.as_u8(),
        &rmp_serde::to_vec_named(&42u8).unwrap(),
        1024,
    );
    assert!(matches!(
        Message::from_bytes(&wrong, &cfg),
        Err(DecodeError::Payload(_))
    ));
    wrong.truncate(0);
}
