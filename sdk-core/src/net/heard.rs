//! The device's QUIC socket, counting the datagrams each relay address sent it.
//!
//! A QUIC handshake that does not finish within the connect timeout means one of two
//! very different things: nothing came back (the relay is down, or UDP does not get
//! through), or the relay answered — a `Retry`, its first flight — but is too busy to
//! finish in time. The first is a reason to try HTTPS or the next relay; the second is
//! back-pressure ([`crate::policy::route::Failure::Busy`]). quinn does not say which, so
//! the connector wraps the endpoint's socket in [`HeardSocket`] and compares the count
//! for the relay's address before and after the attempt.
//!
//! Only addresses the connector [`watch`](Heard::watch)es are counted (the relays it
//! connects to, at most [`MAX_WATCHED`]), so a stranger spraying datagrams at the
//! device's port cannot grow the table.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Relay addresses counted at most (a map holds a handful of relays; a new map's
/// addresses replace the oldest when the table is full).
pub(crate) const MAX_WATCHED: usize = 64;

/// Datagrams received per watched address. Cheap to clone; clones share the counts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Heard {
    counts: Arc<Mutex<HashMap<SocketAddr, u64>>>,
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Heard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, u64>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts counting datagrams from `addr` (if not yet) and returns the count so far.
    pub(crate) fn watch(&self, addr: SocketAddr) -> u64 {
        let addr = canonical(addr);
        let mut counts = self.lock();
        if !counts.contains_key(&addr) && counts.len() >= MAX_WATCHED {
            counts.clear();
        }
        *counts.entry(addr).or_insert(0)
    }

    /// Datagrams received from `addr` since it was first watched (0 if it is not).
    pub(crate) fn count(&self, addr: SocketAddr) -> u64 {
        self.lock().get(&canonical(addr)).copied().unwrap_or(0)
    }

    fn note(&self, meta: &[RecvMeta]) {
        let mut counts = self.lock();
        for m in meta {
            if let Some(c) = counts.get_mut(&canonical(m.addr)) {
                *c = c.saturating_add(1);
            }
        }
    }
}

/// A socket that delegates to quinn's and counts what it receives in a [`Heard`].
pub(crate) struct HeardSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    heard: Heard,
}

impl HeardSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, heard: Heard) -> Self {
        HeardSocket { inner, heard }
    }
}

impl fmt::Debug for HeardSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeardSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncUdpSocket for HeardSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &polled {
            self.heard.note(&meta[..(*n).min(meta.len())]);
        }
        polled
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(addr: &str) -> RecvMeta {
        RecvMeta {
            addr: addr.parse().unwrap(),
            ..RecvMeta::default()
        }
    }

    #[test]
    fn only_watched_addresses_are_counted_and_the_table_is_bounded() {
        let heard = Heard::default();
        let relay: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        assert_eq!(heard.watch(relay), 0);
        heard.note(&[
            meta("127.0.0.1:4433"),
            meta("10.0.0.9:1"),
            meta("[::ffff:127.0.0.1]:4433"),
        ]);
        // The v4-mapped form is the same relay; the stranger is not counted.
        assert_eq!(heard.count(relay), 2);
        assert_eq!(heard.count("10.0.0.9:1".parse().unwrap()), 0);
        assert_eq!(heard.watch(relay), 2, "watching again keeps the count");
        for port in 0..MAX_WATCHED as u16 * 2 {
            heard.watch(SocketAddr::from(([10, 0, 0, 1], port)));
        }
        assert!(heard.lock().len() <= MAX_WATCHED);
    }
}
