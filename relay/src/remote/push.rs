//! The push hub: devices holding a push stream (a QUIC stream opened with a
//! `SubscribeRequest`, or an HTTPS `POST /v1/subscribe` response) register here per app
//! and receive [`PushNotice`]s as they happen:
//!
//! * `config_changed{version, etag}` for their own app, when the config cache sees a new
//!   bundle ([`crate::remote::cache`]);
//! * `shard_map_changed{version}` for everyone, when the relay installs a newer shard map
//!   ([`crate::remote::shardmap::ServedShardMap::set`]).
//!
//! **Slow subscribers never block the hub.** Each subscriber has a bounded queue
//! ([`PushHub::new`]); notices are offered with `try_send`. A subscriber whose queue is
//! full is **dropped**: its stream ends after the notices already queued, and the device
//! re-subscribes (§2 of the protocol: a client keeps one push stream open and reopens it
//! when it ends). The new stream starts with `Subscribed{shard_map_version,
//! config_etag}`, which carries everything a lost notice could have said, so dropping a
//! lagging subscriber delays a change for that device and never hides one. Dropped
//! subscribers are counted (`tern_relay_push_dropped_total`).
//!
//! Notices are hints (§5.6): the device reacts with ordinary requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tern_protocol::{AppId, CodecConfig, Message, PushNotice};
use tokio::sync::mpsc;

/// Default bound of each subscriber's queue.
pub const DEFAULT_SUBSCRIBER_QUEUE: usize = 16;

/// Counters of a hub.
#[derive(Debug, Default)]
pub struct PushCounters {
    /// Notices queued to subscribers (one per subscriber reached).
    pub notices_queued: AtomicU64,
    /// Subscribers dropped because their queue was full.
    pub dropped_lagging: AtomicU64,
}

/// Subscribers of one app: id → queue.
type Senders = Vec<(u64, mpsc::Sender<PushNotice>)>;

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    apps: HashMap<AppId, Senders>,
    count: usize,
    closed: bool,
}

#[derive(Debug)]
struct Inner {
    queue: usize,
    state: Mutex<State>,
    counters: PushCounters,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn publish_count(count: usize) {
    metrics::gauge!("tern_relay_push_subscribers").set(count as f64);
}

/// The hub. Cheap to clone; clones share the subscribers.
#[derive(Clone, Debug)]
pub struct PushHub {
    inner: Arc<Inner>,
}

impl Default for PushHub {
    fn default() -> Self {
        PushHub::new(DEFAULT_SUBSCRIBER_QUEUE)
    }
}

/// One registered subscriber. Dropping it unregisters it.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<PushNotice>,
    id: u64,
    app: AppId,
    hub: Arc<Inner>,
}

impl Subscription {
    /// The next notice; `None` when the subscription ended (the hub closed, or this
    /// subscriber lagged and was dropped): the stream should end, and the device
    /// re-subscribes.
    pub async fn recv(&mut self) -> Option<PushNotice> {
        self.rx.recv().await
    }

    /// The app subscribed to.
    pub fn app(&self) -> &AppId {
        &self.app
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        if remove(&mut state, &self.app, self.id) {
            publish_count(state.count);
        }
    }
}

/// Removes a subscriber; true if it was registered.
fn remove(state: &mut State, app: &AppId, id: u64) -> bool {
    let Some(subs) = state.apps.get_mut(app) else {
        return false;
    };
    let before = subs.len();
    subs.retain(|(i, _)| *i != id);
    let removed = before - subs.len();
    if subs.is_empty() {
        state.apps.remove(app);
    }
    state.count -= removed;
    removed > 0
}

impl PushHub {
    /// A hub whose subscribers each queue at most `queue` notices (at least 1).
    pub fn new(queue: usize) -> Self {
        PushHub {
            inner: Arc::new(Inner {
                queue: queue.max(1),
                state: Mutex::new(State::default()),
                counters: PushCounters::default(),
            }),
        }
    }

    /// Registers a subscriber for `app`; `None` once the hub is closed.
    pub fn subscribe(&self, app: AppId) -> Option<Subscription> {
        let (tx, rx) = mpsc::channel(self.inner.queue);
        let mut state = self.inner.lock();
        if state.closed {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.apps.entry(app.clone()).or_default().push((id, tx));
        state.count += 1;
        publish_count(state.count);
        Some(Subscription {
            rx,
            id,
            app,
            hub: self.inner.clone(),
        })
    }

    /// Queues `notice` to every subscriber of `app`; returns how many it reached.
    pub fn publish(&self, app: &AppId, notice: &PushNotice) -> usize {
        let mut state = self.inner.lock();
        let Some(subs) = state.apps.get_mut(app) else {
            return 0;
        };
        let (reached, dropped) = offer(subs, notice);
        if subs.is_empty() {
            state.apps.remove(app);
        }
        self.settle(&mut state, reached, dropped)
    }

    /// Queues `notice` to every subscriber of every app; returns how many it reached.
    pub fn broadcast(&self, notice: &PushNotice) -> usize {
        let mut state = self.inner.lock();
        let (mut reached, mut dropped) = (0, 0);
        for subs in state.apps.values_mut() {
            let (r, d) = offer(subs, notice);
            reached += r;
            dropped += d;
        }
        state.apps.retain(|_, subs| !subs.is_empty());
        self.settle(&mut state, reached, dropped)
    }

    fn settle(&self, state: &mut State, reached: usize, dropped: usize) -> usize {
        let c = &self.inner.counters;
        c.notices_queued
            .fetch_add(reached as u64, Ordering::Relaxed);
        metrics::counter!("tern_relay_push_notices_total").increment(reached as u64);
        if dropped > 0 {
            state.count -= dropped;
            c.dropped_lagging
                .fetch_add(dropped as u64, Ordering::Relaxed);
            metrics::counter!("tern_relay_push_dropped_total").increment(dropped as u64);
            tracing::debug!(dropped, "push subscribers lagging; dropped");
            publish_count(state.count);
        }
        reached
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.inner.lock().count
    }

    /// The counters.
    pub fn counters(&self) -> &PushCounters {
        &self.inner.counters
    }

    /// Ends every subscription now (their streams finish after the notices already
    /// queued) but keeps accepting new ones; returns how many were ended. For an
    /// operator turning live push off (new subscriptions are refused by the caller).
    pub fn disconnect_all(&self) -> usize {
        let mut state = self.inner.lock();
        let ended = state.count;
        state.apps.clear();
        state.count = 0;
        publish_count(0);
        ended
    }

    /// Ends every subscription (their streams finish after the notices already queued)
    /// and refuses new ones. For shutdown.
    pub fn close(&self) {
        let mut state = self.inner.lock();
        state.closed = true;
        state.apps.clear();
        state.count = 0;
        publish_count(0);
    }
}

/// Offers `notice` to each subscriber in `subs`, removing those whose queue is full or
/// gone. Returns (reached, dropped for lagging); subscribers already gone are removed
/// silently (and subtracted from the count by the caller through `dropped`).
fn offer(subs: &mut Senders, notice: &PushNotice) -> (usize, usize) {
    let (mut reached, mut dropped) = (0, 0);
    subs.retain(|(_, tx)| match tx.try_send(notice.clone()) {
        Ok(()) => {
            reached += 1;
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) | Err(mpsc::error::TrySendError::Closed(_)) => {
            dropped += 1;
            false
        }
    });
    (reached, dropped)
}

/// Encodes a notice as one frame.
pub fn encode_notice(notice: &PushNotice) -> Vec<u8> {
    Message::PushNotice(notice.clone())
        .encode(&CodecConfig::device())
        .unwrap_or_else(|e| {
            // Notices are a few dozen bytes; keep the stream going regardless.
            tracing::error!(error = %e, "encoding a push notice failed");
            Vec::new()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::ETag;

    fn changed(v: u64) -> PushNotice {
        PushNotice::ConfigChanged {
            version: v,
            etag: ETag(format!("e{v}")),
        }
    }

    #[tokio::test]
    async fn fans_out_per_app_and_broadcasts_to_all() {
        let hub = PushHub::new(4);
        let (a, b) = (AppId::new("a"), AppId::new("b"));
        let mut a1 = hub.subscribe(a.clone()).unwrap();
        let mut a2 = hub.subscribe(a.clone()).unwrap();
        let mut b1 = hub.subscribe(b.clone()).unwrap();
        assert_eq!(hub.subscribers(), 3);
        assert_eq!(hub.publish(&a, &changed(2)), 2);
        assert_eq!(hub.publish(&AppId::new("nobody"), &changed(9)), 0);
        assert_eq!(
            hub.broadcast(&PushNotice::ShardMapChanged { version: 5 }),
            3
        );
        assert_eq!(a1.recv().await, Some(changed(2)));
        assert_eq!(a2.recv().await, Some(changed(2)));
        assert_eq!(
            b1.recv().await,
            Some(PushNotice::ShardMapChanged { version: 5 }),
            "apps only see their own config notices"
        );
        assert_eq!(
            a1.recv().await,
            Some(PushNotice::ShardMapChanged { version: 5 })
        );
        drop(a2);
        assert_eq!(hub.subscribers(), 2, "dropping unregisters");
        assert_eq!(hub.publish(&a, &changed(3)), 1);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_dropped_without_blocking_the_others() {
        let hub = PushHub::new(2);
        let app = AppId::new("a");
        let mut slow = hub.subscribe(app.clone()).unwrap();
        let mut fast = hub.subscribe(app.clone()).unwrap();
        for v in 1..=2 {
            assert_eq!(hub.publish(&app, &changed(v)), 2);
            assert_eq!(fast.recv().await, Some(changed(v)));
        }
        // `slow` has not read anything: its queue (2) is full now.
        assert_eq!(hub.publish(&app, &changed(3)), 1, "only `fast` reached");
        assert_eq!(hub.counters().dropped_lagging.load(Ordering::Relaxed), 1);
        assert_eq!(hub.subscribers(), 1);
        assert_eq!(fast.recv().await, Some(changed(3)));
        // The dropped subscriber drains what was queued, then its stream ends.
        assert_eq!(slow.recv().await, Some(changed(1)));
        assert_eq!(slow.recv().await, Some(changed(2)));
        assert_eq!(slow.recv().await, None);
        drop(slow);
        assert_eq!(
            hub.subscribers(),
            1,
            "a dropped subscriber is not counted twice"
        );
    }

    #[tokio::test]
    async fn close_ends_every_subscription_and_refuses_new_ones() {
        let hub = PushHub::default();
        let mut s = hub.subscribe(AppId::new("a")).unwrap();
        hub.close();
        assert_eq!(s.recv().await, None);
        assert!(hub.subscribe(AppId::new("a")).is_none());
        assert_eq!(hub.subscribers(), 0);
        drop(s);
        assert_eq!(hub.subscribers(), 0);
    }

    #[tokio::test]
    async fn disconnect_all_ends_subscriptions_but_accepts_new_ones() {
        let hub = PushHub::default();
        let mut a = hub.subscribe(AppId::new("a")).unwrap();
        let mut b = hub.subscribe(AppId::new("b")).unwrap();
        assert_eq!(hub.disconnect_all(), 2);
        assert_eq!(a.recv().await, None);
        assert_eq!(b.recv().await, None);
        assert_eq!(hub.subscribers(), 0);
        let mut c = hub.subscribe(AppId::new("a")).unwrap();
        assert_eq!(hub.subscribers(), 1);
        let notice = PushNotice::ShardMapChanged { version: 9 };
        assert_eq!(hub.publish(&AppId::new("a"), &notice), 1);
        assert_eq!(c.recv().await, Some(notice));
        drop((a, b));
        assert_eq!(hub.subscribers(), 1);
    }

    #[test]
    fn notices_encode_as_frames() {
        let frame = encode_notice(&PushNotice::ShardMapChanged { version: 3 });
        assert_eq!(frame.len(), 39, "the worked example of protocol.md §13");
        assert_eq!(frame[4], 0x84);
    }
}
