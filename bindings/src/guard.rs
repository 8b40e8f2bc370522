//! Every exported call runs inside [`guard`]: a panic in the SDK becomes
//! [`TernError::Internal`] (or the caller's fallback value) instead of crossing the FFI.
//!
//! This only works with `panic = "unwind"`; with `panic = "abort"` a panic ends the
//! process before it could cross (see the bindings README on the panic strategy).

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::TernError;

/// The panic payload as text.
fn describe(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Runs `f`; a panic becomes [`TernError::Internal`].
pub(crate) fn guard<T>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, TernError>,
) -> Result<T, TernError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let message = describe(payload.as_ref());
            tracing::error!(call = what, panic = %message, "tern: a panic was contained at the FFI boundary");
            Err(TernError::Internal {
                call: what.to_owned(),
                detail: message,
            })
        }
    }
}

/// Runs `f` for a call that cannot fail; a panic returns `fallback` (and is logged).
pub(crate) fn guard_or<T>(what: &'static str, fallback: T, f: impl FnOnce() -> T) -> T {
    guard(what, || Ok(f())).unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_typed_error() {
        let r: Result<(), _> = guard("track", || panic!("boom {}", 1));
        match r {
            Err(TernError::Internal { call, detail }) => {
                assert_eq!(call, "track");
                assert_eq!(detail, "boom 1");
            }
            other => panic!("expected Internal, got {other:?}"),
        }
        let r: Result<(), _> = guard("flush", || std::panic::panic_any(7_u32));
        assert!(matches!(r, Err(TernError::Internal { .. })));
    }

    #[test]
    fn a_panic_in_an_infallible_call_returns_the_fallback() {
        assert_eq!(
            guard_or("config_string", "dflt".to_owned(), || panic!("x")),
            "dflt"
        );
        assert!(guard_or("flag_enabled", false, || true));
    }
}
