//! Untrusted stream bytes → incremental frame decoder → message decoder.
//! The first byte picks how the input is chunked, so split headers are explored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_protocol::{CodecConfig, FrameDecoder, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let cfg = CodecConfig::device();
    let mut dec = FrameDecoder::new(cfg.max_payload);
    for piece in rest.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    if let Ok(msg) = Message::decode(&frame, &cfg) {
                        // Whatever decodes must re-encode, decode again, and encode to
                        // the same bytes (bytes, not values: NaN != NaN). Re-encoding
                        // uses the larger backend limit because a canonical encoding
                        // can be longer than the input (f32 widened to f64).
                        let wide = CodecConfig::backend();
                        let once = msg.encode(&wide).expect("re-encode");
                        let back = Message::from_bytes(&once, &wide).expect("re-decode");
                        assert_eq!(back.encode(&wide).expect("re-encode twice"), once);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = Message::from_bytes(rest, &cfg);
});
