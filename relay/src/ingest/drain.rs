//! Draining: the relay stops taking new work, tells its devices to move on, finishes
//! what it accepted, and exits — for rolling updates without losing an event.
//!
//! [`Drain`] is the shared state: a flag the listeners watch (stop accepting
//! connections and request streams) and a count of request streams in flight that the
//! shutdown waits on before it closes the QUIC connections with the `draining` code.
//! The sequence itself is in the binary (`main.rs`): it is triggered by
//! `POST /admin/v1/drain` or SIGTERM, and is the same for both.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// Drain state, shared (clones see the same).
#[derive(Clone, Debug)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    draining: watch::Sender<bool>,
    in_flight: AtomicUsize,
    idle: Notify,
    push_open: AtomicUsize,
    push_idle: Notify,
    started_at_ms: AtomicU64,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            inner: Arc::new(Inner {
                draining: watch::Sender::new(false),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
                push_open: AtomicUsize::new(0),
                push_idle: Notify::new(),
                started_at_ms: AtomicU64::new(0),
            }),
        }
    }
}

/// Held while a request stream is being served.
#[derive(Debug)]
pub struct InFlight {
    inner: Arc<Inner>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.inner.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// Held while a push stream is open (until its last notice is acknowledged).
#[derive(Debug)]
pub struct PushOpen {
    inner: Arc<Inner>,
}

impl Drop for PushOpen {
    fn drop(&mut self) {
        if self.inner.push_open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.push_idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Not draining.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining; `false` if it already was.
    pub fn start(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let started = self.inner.draining.send_if_modified(|d| {
            let was = *d;
            *d = true;
            !was
        });
        if started {
            self.inner.started_at_ms.store(now, Ordering::Relaxed);
            metrics::gauge!("tern_relay_draining").set(1.0);
        }
        started
    }

    /// Draining?
    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// When draining started (Unix ms), if it did.
    pub fn started_at_ms(&self) -> Option<u64> {
        self.is_draining()
            .then(|| self.inner.started_at_ms.load(Ordering::Relaxed))
    }

    /// Resolves once draining has started.
    pub async fn started(&self) {
        let mut rx = self.inner.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Counts a request stream as in flight until the guard drops.
    pub fn track(&self) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            inner: self.inner.clone(),
        }
    }

    /// Counts a push stream as open until the guard drops.
    pub fn track_push(&self) -> PushOpen {
        self.inner.push_open.fetch_add(1, Ordering::AcqRel);
        PushOpen {
            inner: self.inner.clone(),
        }
    }

    /// Push streams open now.
    pub fn push_open(&self) -> usize {
        self.inner.push_open.load(Ordering::Acquire)
    }

    /// Waits until every push stream has ended (its last notice delivered), at most
    /// `timeout`; whether it got there.
    pub async fn wait_push_closed(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.inner.push_idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.push_open() == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Request streams in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no request stream is in flight, at most `timeout`; whether it got
    /// there.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.in_flight() == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_once_and_wait_for_in_flight_work() {
        let d = Drain::new();
        assert!(!d.is_draining());
        assert_eq!(d.started_at_ms(), None);
        let a = d.track();
        let b = d.track();
        assert_eq!(d.in_flight(), 2);
        assert!(d.start());
        assert!(!d.start(), "a second start is a no-op");
        assert!(d.is_draining());
        assert!(d.started_at_ms().is_some());
        d.started().await;
        assert!(!d.wait_idle(Duration::from_millis(20)).await);
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.wait_idle(Duration::from_secs(10)).await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished() || d.in_flight() == 0);
        drop(b);
        assert!(waiter.await.unwrap());
        assert!(d.wait_idle(Duration::ZERO).await);
    }
}
