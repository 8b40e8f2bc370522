//! Untrusted payload bytes into every payload decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_protocol::*;

fuzz_target!(|data: &[u8]| {
    let _ = decode_payload::<IngestRequest>(data);
    let _ = decode_payload::<ConfigRequest>(data);
    let _ = decode_payload::<ShardMapRequest>(data);
    let _ = decode_payload::<SubscribeRequest>(data);
    let _ = decode_payload::<ForwardRequest>(data);
    let _ = decode_payload::<IngestReply>(data);
    let _ = decode_payload::<ConfigReply>(data);
    let _ = decode_payload::<ShardMapReply>(data);
    let _ = decode_payload::<PushNotice>(data);
    let _ = decode_payload::<ForwardReply>(data);
    let _ = decode_payload::<ErrorReply>(data);
    if let Ok(batch) = decode_payload::<EventBatch>(data) {
        let _ = limits::validate_batch(&batch, &Limits::default());
    }
});
