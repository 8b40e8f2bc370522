//! `flush_and_wait` as a future that can be cancelled: the waiting happens on a helper
//! thread (the core's wait is blocking), which the future's drop — a cancelled Kotlin
//! coroutine frees the future — or [`Waits::cancel_all`] (Swift task cancellation)
//! tells to stop; it then returns within the core's polling interval (20 ms).

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::state::State;

/// Most waits in progress per instance; more return `false` at once.
pub const MAX_FLUSH_WAITS: u64 = 16;

#[derive(Default)]
struct Shared {
    cancel: AtomicBool,
    done: Mutex<(Option<bool>, Option<Waker>)>,
}

impl Shared {
    fn finish(&self, emptied: bool) {
        let waker = {
            let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
            d.0 = Some(emptied);
            d.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The waits of one instance.
#[derive(Default)]
pub(crate) struct Waits {
    active: AtomicU64,
    all: Mutex<Vec<Weak<Shared>>>,
}

impl Waits {
    /// Waits in progress (helper threads running).
    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// Ends every wait in progress.
    pub(crate) fn cancel_all(&self) {
        let all = std::mem::take(&mut *self.all.lock().unwrap_or_else(|p| p.into_inner()));
        for w in all.iter().filter_map(Weak::upgrade) {
            w.cancel.store(true, Ordering::Release);
        }
    }
}

/// A wait in progress; resolves to whether the store emptied.
pub(crate) struct FlushWait {
    shared: Arc<Shared>,
}

impl FlushWait {
    /// A wait that is already over.
    pub(crate) fn done(emptied: bool) -> Self {
        let shared = Arc::new(Shared::default());
        shared.finish(emptied);
        FlushWait { shared }
    }

    /// Starts waiting on a helper thread: for the instance to open (if it is not
    /// started yet), then for the core's `flush_and_wait_cancellable`.
    pub(crate) fn start(
        waits: &Arc<Waits>,
        state: Arc<RwLock<State>>,
        timeout: Duration,
    ) -> FlushWait {
        if waits.active.fetch_add(1, Ordering::AcqRel) >= MAX_FLUSH_WAITS {
            waits.active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                max = MAX_FLUSH_WAITS,
                "tern: too many flush_and_wait calls in progress"
            );
            return FlushWait::done(false);
        }
        let shared = Arc::new(Shared::default());
        {
            let mut all = waits.all.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(&shared));
        }
        let (s, w) = (shared.clone(), waits.clone());
        let spawned = std::thread::Builder::new()
            .name("tern-flush-wait".into())
            .spawn(move || {
                let emptied = catch_unwind(AssertUnwindSafe(|| wait(&state, timeout, &s.cancel)))
                    .unwrap_or(false);
                s.finish(emptied);
                w.active.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            waits.active.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(error = %e, "tern: could not start a flush wait");
            shared.finish(false);
        }
        FlushWait { shared }
    }
}

fn wait(state: &RwLock<State>, timeout: Duration, cancel: &AtomicBool) -> bool {
    let deadline = Instant::now().checked_add(timeout);
    let tern = loop {
        match &*state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Running(t) => break t.clone(),
            State::Pending => {}
            State::Unavailable(_) | State::Stopped(_) => return false,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) || cancel.load(Ordering::Acquire) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let left = deadline.map_or(Duration::MAX, |d| {
        d.saturating_duration_since(Instant::now())
    });
    tern.flush_and_wait_cancellable(left, cancel)
}

impl Future for FlushWait {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let mut d = self.shared.done.lock().unwrap_or_else(|p| p.into_inner());
        match d.0 {
            Some(emptied) => Poll::Ready(emptied),
            None => {
                d.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for FlushWait {
    fn drop(&mut self) {
        // Nobody waits for the outcome any more: let the helper thread go.
        self.shared.cancel.store(true, Ordering::Release);
    }
}
