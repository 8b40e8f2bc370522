//! Every message survives encode → frame → decode unchanged, with and without
//! compression, and through the incremental stream decoder in arbitrary chunks.

use proptest::prelude::*;
use tern_protocol::*;

use crate::strategies::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn message_roundtrip(msg in message_any()) {
        let cfg = CodecConfig::backend();
        let bytes = msg.encode(&cfg).unwrap();
        prop_assert_eq!(Message::from_bytes(&bytes, &cfg).unwrap(), msg.clone());

        // Force compression on every payload, and disable it: both decode the same.
        for threshold in [0, usize::MAX] {
            let cfg = CodecConfig::backend().with_compress_threshold(threshold);
            let bytes = msg.encode(&cfg).unwrap();
            prop_assert_eq!(Message::from_bytes(&bytes, &cfg).unwrap(), msg.clone());
        }
    }

    #[test]
    fn forward_request_by_reference_encodes_identically(
        batches in proptest::collection::vec(batch(), 0..4),
    ) {
        let relay_id = RelayId::new("relay-7");
        for cfg in [CodecConfig::backend(), CodecConfig::backend().with_compress_threshold(0)] {
            let owned = Message::ForwardRequest(ForwardRequest {
                relay_id: relay_id.clone(),
                batches: batches.clone(),
            })
            .encode(&cfg)
            .unwrap();
            let by_ref = codec::encode_forward_request(
                &ForwardRequestRef { relay_id: &relay_id, batches: batches.iter().collect() },
                &cfg,
            )
            .unwrap();
            prop_assert_eq!(owned, by_ref);
        }
    }

    #[test]
    fn stream_decoder_reassembles_any_chunking(
        msgs in proptest::collection::vec(message_any(), 1..4),
        cuts in proptest::collection::vec(1usize..64, 1..50),
    ) {
        let cfg = CodecConfig::backend().with_compress_threshold(64);
        let wire: Vec<u8> = msgs.iter().flat_map(|m| m.encode(&cfg).unwrap()).collect();
        let mut dec = FrameDecoder::new(cfg.max_payload);
        let mut out = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let n = cuts[i % cuts.len()].min(wire.len() - pos);
            dec.push(&wire[pos..pos + n]);
            pos += n;
            i += 1;
            while let Some(frame) = dec.next_frame().unwrap() {
                out.push(Message::decode(&frame, &cfg).unwrap());
            }
        }
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert_eq!(out, msgs);
    }

    #[test]
    fn encoded_len_matches_encoding(b in batch()) {
        prop_assert_eq!(codec::encoded_len(&b).unwrap(), encode_payload(&b).unwrap().len());
    }
}

#[test]
fn large_batches_are_compressed_and_small_ones_are_not() {
    let cfg = CodecConfig::device();
    let small = Message::PushNotice(PushNotice::ShardMapChanged { version: 3 });
    let bytes = small.encode(&cfg).unwrap();
    assert_eq!(bytes[5], 0, "small payload must not be compressed");

    let batch = crate::vectors::sample_batch(200);
    let plain = encode_payload(&IngestRequest {
        auth: crate::vectors::sample_auth(),
        batch: batch.clone(),
    })
    .unwrap();
    let msg = Message::IngestRequest(IngestRequest {
        auth: crate::vectors::sample_auth(),
        batch,
    });
    let bytes = msg.encode(&cfg).unwrap();
    assert_eq!(bytes[5], frame::FLAG_LZ4);
    assert!(
        bytes.len() * 2 < plain.len(),
        "{} vs {}",
        bytes.len(),
        plain.len()
    );
    assert_eq!(Message::from_bytes(&bytes, &cfg).unwrap(), msg);
}

#[test]
fn encoder_refuses_payload_over_the_limit() {
    let cfg = CodecConfig::device().with_max_payload(100);
    let msg = Message::IngestRequest(IngestRequest {
        auth: crate::vectors::sample_auth(),
        batch: crate::vectors::sample_batch(10),
    });
    assert!(matches!(
        msg.encode(&cfg),
        Err(EncodeError::TooLarge { max: 100, .. })
    ));
}
