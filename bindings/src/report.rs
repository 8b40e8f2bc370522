//! Refused calls are reported: to the log sink (the first of each kind per instance at
//! `Warn`, the rest at `Debug`; opt-out refusals always at `Debug`) and to the app's
//! optional [`ErrorListener`]. Counting is the caller's job (`client.rs` and the core).

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::TernError;

/// Receives every call the SDK refused (the non-throwing recording calls return
/// normally; this is where their errors go), on the thread that made the call — or,
/// for calls made before start, the thread that opened the instance. Keep it quick.
/// Calls into Tern made from inside `on_error` are not reported again; an exception
/// thrown here is contained and counted (`TernStats.listener_panics` is for the
/// config/message listeners; this one counts in `error_listener_failures`).
#[uniffi::export(callback_interface)]
pub trait ErrorListener: Send + Sync {
    /// `call` (`track`, `identify`, ...) was refused with `error`.
    fn on_error(&self, call: String, error: TernError);
}

thread_local! {
    static IN_LISTENER: Cell<bool> = const { Cell::new(false) };
}

/// Kinds of [`TernError`], for "first of each kind at `Warn`".
const KINDS: usize = 10;

fn kind(e: &TernError) -> usize {
    match e {
        TernError::InvalidConfig { .. } => 0,
        TernError::InvalidEvent { .. } => 1,
        TernError::OptedOut => 2,
        TernError::ShutDown => 3,
        TernError::DataDirInUse { .. } => 4,
        TernError::StoreUnavailable { .. } => 5,
        TernError::Io { .. } => 6,
        TernError::Internal { .. } => 7,
        TernError::NotStarted { .. } => 8,
        #[allow(unreachable_patterns)]
        _ => 9,
    }
}

/// One instance's reporting.
#[derive(Default)]
pub(crate) struct Reporter {
    listener: RwLock<Option<Arc<dyn ErrorListener>>>,
    warned: [AtomicBool; KINDS],
    listener_failures: AtomicU64,
}

impl Reporter {
    pub(crate) fn set_listener(&self, listener: Option<Arc<dyn ErrorListener>>) {
        *self.listener.write().unwrap_or_else(|p| p.into_inner()) = listener;
    }

    pub(crate) fn listener_failures(&self) -> u64 {
        self.listener_failures.load(Ordering::Relaxed)
    }

    /// Logs `error` of `call` and hands it to the listener. Never panics.
    pub(crate) fn report(&self, call: &str, error: &TernError) {
        let k = kind(error);
        let first = !self.warned[k].swap(true, Ordering::Relaxed);
        if matches!(error, TernError::OptedOut) || !first {
            tracing::debug!(call, %error, "tern: call refused");
        } else {
            tracing::warn!(call, %error, "tern: call refused (later refusals of this kind are logged at debug level)");
        }
        if IN_LISTENER.with(Cell::get) {
            return;
        }
        let listener = self
            .listener
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(listener) = listener else {
            return;
        };
        IN_LISTENER.with(|f| f.set(true));
        let r = catch_unwind(AssertUnwindSafe(|| {
            listener.on_error(call.to_owned(), error.clone())
        }));
        IN_LISTENER.with(|f| f.set(false));
        if r.is_err() {
            self.listener_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}
