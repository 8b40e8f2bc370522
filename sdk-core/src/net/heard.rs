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

/// A second handle on the endpoint's socket that looks at what waits in it unread.
///
/// At a handshake timeout the endpoint may not have read the relay's reply yet (its
/// task waits for a busy runtime): the relay answered, this device did not listen.
/// [`Unread::from`] peeks (`MSG_PEEK`: nothing is taken from quinn) at the first
/// datagram waiting.
#[derive(Debug)]
pub(crate) struct Unread(std::net::UdpSocket);

impl Unread {
    /// A handle on `socket` (a duplicate descriptor, non-blocking like quinn's).
    pub(crate) fn new(socket: &std::net::UdpSocket) -> io::Result<Unread> {
        let dup = socket.try_clone()?;
        dup.set_nonblocking(true)?;
        Ok(Unread(dup))
    }

    /// Whether the first datagram waiting unread came from `addr`.
    pub(crate) fn from(&self, addr: SocketAddr) -> bool {
        let mut byte = [0u8; 1];
        match self.0.peek_from(&mut byte) {
            Ok((_, from)) => canonical(from) == canonical(addr),
            Err(_) => false,
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

    #[test]
    fn unread_sees_a_waiting_datagram_without_taking_it() {
        let device = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let unread = Unread::new(&device).unwrap();
        let relay_addr = relay.local_addr().unwrap();
        assert!(!unread.from(relay_addr), "nothing waiting");
        relay
            .send_to(b"first flight", device.local_addr().unwrap())
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !unread.from(relay_addr) {
            assert!(std::time::Instant::now() < deadline, "never seen");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(unread.from(relay_addr), "peeking took nothing");
        let mut buf = [0u8; 64];
        let (n, from) = device.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"first flight"[..], relay_addr));
        assert!(!unread.from(relay_addr), "read: nothing waiting");
        stranger
            .send_to(b"x", device.local_addr().unwrap())
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !unread.from(stranger.local_addr().unwrap()) {
            assert!(std::time::Instant::now() < deadline, "never seen");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            !unread.from(relay_addr),
            "a stranger's datagram is not the relay's"
        );
    }
}
