//! The hot path of `track()` for the Kotlin layer: one plain C function taking the event
//! as one byte buffer, so a call from the JVM is one JNA direct call with primitive
//! arguments. The generated uniffi path costs four JNA calls per `track` (clone the
//! handle, lower the name, allocate the map's buffer, the call itself), each with a
//! call-status `Structure` that JNA fills and reads back by reflection — most of the
//! cost at the boundary (BENCHMARKS.md, "Kotlin track() at the boundary"). The call
//! lands in the same `TernCore::track` path (state, counting, reporting); only the
//! argument passing differs.
//!
//! The payload's format is [`crate::payload`]'s.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::client::FAST_PATH;

/// `TernCore::track` of instance `id` (from `TernCore::fast_path_id`) with the event in
/// `payload[..len]`. Returns 0 when recorded, 1 when refused (counted and reported as
/// by `track`), -1 for a null payload, -2 for an unknown id (the caller falls back to
/// the generated path), -3 for a contained panic. Never unwinds.
///
/// # Safety
///
/// `payload` is null or points to at least `len` readable bytes that stay valid and
/// unchanged for the duration of the call (JNA passing a Java `byte[]` guarantees it).
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tern_fast_track(id: u64, payload: *const u8, len: u32) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        if payload.is_null() {
            return -1;
        }
        // SAFETY: non-null, and the caller guarantees `len` readable bytes for the
        // duration of the call (see `# Safety`); the slice does not outlive it.
        let bytes = unsafe { std::slice::from_raw_parts(payload, len as usize) };
        let Some(core) = FAST_PATH.lookup(id) else {
            return -2;
        };
        match core.track_payload(bytes) {
            Ok(()) => 0,
            Err(_) => 1,
        }
    }))
    .unwrap_or(-3)
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use crate::client::TernCore;
    use crate::error::TernError;
    use crate::payload::decode;
    use tern_sdk::{Call, Value};

    fn fast(id: u64, p: &[u8]) -> i32 {
        // SAFETY: a live slice.
        unsafe { tern_fast_track(id, p.as_ptr(), p.len() as u32) }
    }

    fn text(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn payloads_decode_to_the_same_call_as_the_generated_path() {
        let mut p = Vec::new();
        text(&mut p, "viewed");
        p.extend_from_slice(&4u32.to_le_bytes());
        text(&mut p, "s");
        p.push(0);
        text(&mut p, "x");
        text(&mut p, "i");
        p.push(1);
        p.extend_from_slice(&(-3i64).to_le_bytes());
        text(&mut p, "r");
        p.push(2);
        p.extend_from_slice(&1.5f64.to_bits().to_le_bytes());
        text(&mut p, "b");
        p.push(3);
        p.push(1);
        let Call::Track { name, props } = decode(&p).unwrap() else {
            panic!("not a track call")
        };
        assert_eq!(name, "viewed");
        assert_eq!(props["s"], Value::String("x".into()));
        assert_eq!(props["i"], Value::Int(-3));
        assert_eq!(props["r"], Value::Float(1.5));
        assert_eq!(props["b"], Value::Bool(true));
        // Truncated anywhere, or with bytes left over: refused, never a panic.
        for cut in 0..p.len() {
            assert!(decode(&p[..cut]).is_err(), "cut at {cut}");
        }
        p.push(0);
        assert!(decode(&p).is_err());
    }

    #[test]
    fn an_unsupported_value_refuses_the_event_naming_the_property() {
        let mut p = Vec::new();
        text(&mut p, "e");
        p.extend_from_slice(&1u32.to_le_bytes());
        text(&mut p, "when");
        p.push(4);
        text(&mut p, "java.util.Date");
        assert!(
            matches!(decode(&p), Err(TernError::InvalidEvent { field, .. }) if field == "property \"when\"")
        );
    }

    #[test]
    fn the_c_entry_point_records_refuses_and_rejects_unknown_ids() {
        let dir = tempfile::tempdir().unwrap();
        let core = TernCore::new();
        let id = FAST_PATH.register(&core);
        assert_eq!(FAST_PATH.register(&core), id, "registered once");
        let mut p = Vec::new();
        text(&mut p, "fast");
        p.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(fast(id, &p), 0, "kept before open");
        let mut bad = Vec::new();
        text(&mut bad, "");
        bad.extend_from_slice(&0u32.to_le_bytes());
        core.open(crate::client::tests::options(dir.path()))
            .unwrap();
        assert_eq!(fast(id, &bad), 1);
        // SAFETY: null is allowed.
        assert_eq!(unsafe { tern_fast_track(id, std::ptr::null(), 0) }, -1);
        assert_eq!(fast(id + 1000, &p), -2);
        assert!(core.wait_applied(30_000));
        let s = core.stats();
        assert_eq!((s.queued_events, s.dropped_invalid), (1, 1));
        core.shutdown(30_000);
    }
}
