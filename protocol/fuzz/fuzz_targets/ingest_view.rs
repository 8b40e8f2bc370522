//! Untrusted payload bytes into the borrowed fast path (`IngestView::parse`), checked
//! against the owned decoder (`ReceivedIngest`): whatever the fast path reads, the
//! owned decoder reads too, with the same credentials, ids, event count, event sizes
//! and validation verdict (`validate_received_batch`), and the batch bytes it keeps
//! are the owned reading's and decode to the same batch. (Input it does not read is
//! the owned decoder's to judge; the `payloads` target covers that.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_protocol::*;

fuzz_target!(|data: &[u8]| {
    // The first byte picks tighter limits now and then, so the size rules bite.
    let (limits, payload) = match data.split_first() {
        Some((&b, rest)) if b & 0x80 != 0 => {
            let mut l = Limits::default();
            l.max_event_bytes = 64 + usize::from(b & 0x3f) * 8;
            l.max_batch_bytes = 256 + usize::from(b & 0x3f) * 32;
            l.max_properties = usize::from(b & 0x07);
            l.max_batch_events = 1 + usize::from(b & 0x0f);
            (l, rest)
        }
        _ => (Limits::default(), data),
    };
    let Ok(view) = IngestView::parse(payload, &limits) else {
        return;
    };
    let received = ReceivedIngest::decode(payload)
        .unwrap_or_else(|e| panic!("fast path read what the owned decoder refuses: {e}"));
    let owned = &received.request;
    assert_eq!(view.auth_app_id, owned.auth.app_id.as_str());
    assert_eq!(view.auth_key, owned.auth.key);
    let b = &view.batch;
    assert_eq!(b.batch_id, owned.batch.batch_id);
    assert_eq!(b.device_id, owned.batch.device_id);
    assert_eq!(b.app_id, owned.batch.app_id.as_str());
    assert_eq!(b.events, owned.batch.events.len());
    assert_eq!(b.routing_key(), owned.batch.routing_key());
    assert_eq!(
        b.validation().map_err(Clone::clone),
        received.validate(&limits)
    );
    assert_eq!(b.bytes, received.batch_bytes);
    assert_eq!(
        b.events_encoded_len,
        received.event_sizes.iter().sum::<usize>()
    );
    let again: EventBatch = decode_payload(b.bytes).expect("the kept batch bytes decode");
    assert_eq!(
        encode_payload(&again).unwrap(),
        encode_payload(&owned.batch).unwrap(),
        "the kept batch bytes decode to another batch"
    );
});
