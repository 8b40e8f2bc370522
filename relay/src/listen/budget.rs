//! Budgets shared by every client: a [`Quota`] holds at most a total number of units
//! (bytes, connections, handshakes, requests, subscriptions), and once half of them
//! are in use, a [`Source`] already holding its share gets no more — so no one client
//! can take what the others need, while a lone heavy client (a NAT, a test fleet on
//! one address) may still use capacity nobody else wants.
//!
//! A policy without I/O or clocks: the listeners ask [`Quota::try_take`] before they
//! allocate or admit, and give back by dropping the [`Held`] units. A
//! [`RequestBuffer`] is a request frame being read whose memory is charged to the
//! request-byte quota *before* it is allocated.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tern_protocol::frame::{FLAG_LZ4, HEADER_LEN};

/// Where a client comes from, as per-source limits count it: an IPv4 address, or the
/// /64 prefix of an IPv6 address (what one subscriber line gets). An IPv4-mapped IPv6
/// address counts as its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source(SourceKey);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6(u64),
}

impl Source {
    /// The source of `ip`.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(SourceKey::V4(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(SourceKey::V4(u32::from(v4))),
                None => Source(SourceKey::V6((u128::from(v6) >> 64) as u64)),
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            SourceKey::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(a)),
            SourceKey::V6(p) => write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(p) << 64)),
        }
    }
}

/// Why a [`Quota`] said no.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Every client together holds the total.
    #[error("at the limit for all clients")]
    Total,
    /// This source holds its share.
    #[error("at the limit for this source")]
    PerSource,
}

impl Refusal {
    /// The `reason` label of `tern_relay_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerSource => "per_source",
        }
    }
}

/// A bounded resource: at most `total` units held by everyone; once more than half of
/// them would be in use, at most `per_source` held by one source. (So a source can
/// hold up to half the total alone, and under contention the other half stays for
/// sources within their share.) Cheap to clone; clones share the counts.
#[derive(Clone, Debug)]
pub struct Quota {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    total: usize,
    per_source: usize,
    state: Mutex<State>,
    in_use: metrics::Gauge,
}

#[derive(Debug, Default)]
struct State {
    used: usize,
    /// Only sources holding something: the map never outgrows the holders.
    by_source: HashMap<Source, usize>,
}

impl Quota {
    /// A quota named `name` (the `limit` label of its metrics) of `total` units, at
    /// most `per_source` of them (capped at `total`) for one source.
    pub fn new(name: &'static str, total: usize, per_source: usize) -> Quota {
        let per_source = per_source.min(total);
        metrics::gauge!("tern_relay_limit", "limit" => name, "scope" => "total").set(total as f64);
        metrics::gauge!("tern_relay_limit", "limit" => name, "scope" => "per_source")
            .set(per_source as f64);
        Quota {
            inner: Arc::new(Inner {
                name,
                total,
                per_source,
                state: Mutex::new(State::default()),
                in_use: metrics::gauge!("tern_relay_limit_in_use", "limit" => name),
            }),
        }
    }

    /// Takes `n` units for `source`, or says why not (taking nothing).
    pub fn try_take(&self, source: Source, n: usize) -> Result<Held, Refusal> {
        let mut held = Held {
            quota: self.inner.clone(),
            source,
            n: 0,
        };
        held.try_grow(n)?;
        Ok(held)
    }

    /// What [`Quota::try_take`] would say to `n` units for `source` now.
    pub fn would_refuse(&self, source: Source, n: usize) -> Option<Refusal> {
        self.would_refuse_within(source, n, self.inner.total)
    }

    /// [`Quota::try_take`] with the total lowered to `total` for this call (a limit
    /// measured at the moment, as the QUIC handshake pace): the share then binds once
    /// more than half of *that* total would be in use.
    pub fn try_take_within(&self, source: Source, n: usize, total: usize) -> Result<Held, Refusal> {
        let total = total.min(self.inner.total);
        let mut state = self.inner.lock();
        self.inner.check_within(&state, source, n, total)?;
        state.used += n;
        *state.by_source.entry(source).or_default() += n;
        self.inner.in_use.set(state.used as f64);
        Ok(Held {
            quota: self.inner.clone(),
            source,
            n,
        })
    }

    /// What [`Quota::try_take_within`] would say.
    pub fn would_refuse_within(&self, source: Source, n: usize, total: usize) -> Option<Refusal> {
        let state = self.inner.lock();
        self.inner
            .check_within(&state, source, n, total.min(self.inner.total))
            .err()
    }

    /// Units held by everyone.
    pub fn used(&self) -> usize {
        self.inner.lock().used
    }

    /// Units held by `source`.
    pub fn used_by(&self, source: Source) -> usize {
        self.inner
            .lock()
            .by_source
            .get(&source)
            .copied()
            .unwrap_or(0)
    }

    /// Sources holding something.
    pub fn sources(&self) -> usize {
        self.inner.lock().by_source.len()
    }

    /// The total bound.
    pub fn total(&self) -> usize {
        self.inner.total
    }

    /// The per-source bound.
    pub fn per_source(&self) -> usize {
        self.inner.per_source
    }

    /// The quota's name.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Counts a refusal in `tern_relay_refused_total{limit, reason, transport}`.
    pub fn count_refusal(&self, refusal: Refusal, transport: &'static str) {
        metrics::counter!(
            "tern_relay_refused_total",
            "limit" => self.inner.name,
            "reason" => refusal.label(),
            "transport" => transport
        )
        .increment(1);
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rule: the total always binds; the share binds once more than half the total
    /// would be in use.
    fn check(&self, state: &State, source: Source, n: usize) -> Result<(), Refusal> {
        self.check_within(state, source, n, self.total)
    }

    fn check_within(
        &self,
        state: &State,
        source: Source,
        n: usize,
        total: usize,
    ) -> Result<(), Refusal> {
        let used = state.used.saturating_add(n);
        let mine = state
            .by_source
            .get(&source)
            .copied()
            .unwrap_or(0)
            .saturating_add(n);
        if used > total / 2 && mine > self.per_source {
            return Err(Refusal::PerSource);
        }
        if used > total {
            return Err(Refusal::Total);
        }
        Ok(())
    }
}

/// Units taken from a [`Quota`], given back when dropped.
#[derive(Debug)]
pub struct Held {
    quota: Arc<Inner>,
    source: Source,
    n: usize,
}

impl Held {
    /// Takes `extra` more units, or says why not (keeping what is held).
    pub fn try_grow(&mut self, extra: usize) -> Result<(), Refusal> {
        if extra == 0 {
            return Ok(());
        }
        let q = &self.quota;
        let mut state = q.lock();
        q.check(&state, self.source, extra)?;
        state.used += extra;
        *state.by_source.entry(self.source).or_default() += extra;
        q.in_use.set(state.used as f64);
        self.n += extra;
        Ok(())
    }

    /// Units held.
    pub fn amount(&self) -> usize {
        self.n
    }

    /// The source holding them.
    pub fn source(&self) -> Source {
        self.source
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.n == 0 {
            return;
        }
        let q = &self.quota;
        let mut state = q.lock();
        state.used -= self.n;
        if let Some(mine) = state.by_source.get_mut(&self.source) {
            *mine -= self.n;
            if *mine == 0 {
                state.by_source.remove(&self.source);
            }
        }
        q.in_use.set(state.used as f64);
    }
}

/// Why a request frame could not be buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferError {
    /// Over the largest request frame.
    TooLarge,
    /// The request-byte quota refused the memory.
    Budget(Refusal),
}

/// A request frame being read. Every allocation of its buffer is charged to the
/// request-byte quota before it is made, and so is, once the frame is complete, the
/// payload an LZ4-compressed frame declares (the handler decompresses it). The
/// charge lasts as long as the buffer: keep it until the reply is written.
#[derive(Debug)]
pub struct RequestBuffer {
    buf: Vec<u8>,
    held: Held,
    max: usize,
}

impl RequestBuffer {
    /// An empty buffer for a frame of at most `max` bytes from `source`.
    pub fn new(quota: &Quota, source: Source, max: usize) -> RequestBuffer {
        RequestBuffer {
            buf: Vec::new(),
            held: Held {
                quota: quota.inner.clone(),
                source,
                n: 0,
            },
            max,
        }
    }

    /// Appends `bytes`, growing (and charging) the buffer as needed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), BufferError> {
        let needed = self.buf.len() + bytes.len();
        if needed > self.max {
            return Err(BufferError::TooLarge);
        }
        if needed > self.buf.capacity() {
            // Grow geometrically, but never past the frame the header announces (when
            // it is known and the data stays within it) or the limit.
            let mut target = needed.max(self.buf.capacity() * 2).max(4096);
            if let Some(total) = self.announced(bytes) {
                if needed <= total {
                    target = target.min(total);
                }
            }
            let target = target.min(self.max);
            let extra = target.saturating_sub(self.held.amount());
            self.held.try_grow(extra).map_err(BufferError::Budget)?;
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The whole frame's length as its header announces it, once the header is in
    /// (counting `incoming`, not yet appended).
    fn announced(&self, incoming: &[u8]) -> Option<usize> {
        let mut header = [0u8; 4];
        let have = self.buf.len().min(4);
        header[..have].copy_from_slice(&self.buf[..have]);
        let more = (4 - have).min(incoming.len());
        header[have..have + more].copy_from_slice(&incoming[..more]);
        (have + more == 4)
            .then(|| HEADER_LEN + (u32::from_be_bytes(header) as usize).saturating_sub(2))
    }

    /// Charges the payload a compressed frame declares (the handler allocates it when
    /// it decompresses), up to `max_payload` (larger declarations are refused by the
    /// decoder before it allocates).
    pub fn charge_payload(&mut self, max_payload: usize) -> Result<(), Refusal> {
        let Some(header) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(());
        };
        if header[5] & FLAG_LZ4 == 0 {
            return Ok(());
        }
        let Some(declared) = self.buf.get(HEADER_LEN..HEADER_LEN + 4) else {
            return Ok(());
        };
        let declared = u32::from_le_bytes([declared[0], declared[1], declared[2], declared[3]]);
        let declared = (declared as usize).min(max_payload);
        self.held.try_grow(declared)
    }

    /// The bytes read so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes read so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Nothing read yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes charged to the quota.
    pub fn charged(&self) -> usize {
        self.held.amount()
    }

    /// Keeps the first `len` bytes (the charge stays).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn a_lowered_total_binds_the_total_and_the_share_within_it() {
        let q = Quota::new("test", 100, 2);
        // Paced to 6: the share binds past 3, the total at 6.
        let a = q.try_take_within(src("10.0.0.1"), 3, 6).unwrap();
        assert_eq!(
            q.try_take_within(src("10.0.0.1"), 1, 6).unwrap_err(),
            Refusal::PerSource
        );
        // Unpaced, the same source may still grow (less than half of 100 in use).
        let a2 = q.try_take(src("10.0.0.1"), 1).unwrap();
        let _b = q.try_take_within(src("10.0.0.2"), 2, 6).unwrap();
        assert_eq!(
            q.would_refuse_within(src("10.0.0.3"), 1, 6),
            Some(Refusal::Total)
        );
        assert_eq!(
            q.try_take_within(src("10.0.0.3"), 1, 6).unwrap_err(),
            Refusal::Total
        );
        assert_eq!(q.used(), 6);
        // A lowered total above the configured one is the configured one.
        for n in [1, 40, 95] {
            assert_eq!(
                q.would_refuse_within(src("10.0.0.3"), n, 1000),
                q.would_refuse(src("10.0.0.3"), n)
            );
        }
        drop((a, a2));
        assert_eq!(q.used(), 2);
        assert_eq!(q.used_by(src("10.0.0.1")), 0);
    }

    #[test]
    fn a_source_exceeds_its_share_only_while_less_than_half_is_in_use() {
        let q = Quota::new("test", 10, 2);
        let a = q.try_take(src("10.0.0.1"), 4).unwrap();
        let a2 = q.try_take(src("10.0.0.1"), 1).unwrap();
        assert_eq!(q.used(), 5, "half the total, alone, over its share");
        assert_eq!(
            q.try_take(src("10.0.0.1"), 1).unwrap_err(),
            Refusal::PerSource
        );
        assert_eq!(q.would_refuse(src("10.0.0.1"), 1), Some(Refusal::PerSource));
        // Others still get their share of the rest.
        let _b = q.try_take(src("10.0.0.2"), 2).unwrap();
        assert_eq!(
            q.try_take(src("10.0.0.2"), 1).unwrap_err(),
            Refusal::PerSource
        );
        let _c = q.try_take(src("10.0.0.3"), 2).unwrap();
        assert_eq!(q.would_refuse(src("10.0.0.4"), 1), None);
        let _d = q.try_take(src("10.0.0.4"), 1).unwrap();
        assert_eq!(q.try_take(src("10.0.0.5"), 1).unwrap_err(), Refusal::Total);
        assert_eq!(q.used(), 10);
        drop(a);
        assert_eq!(q.used_by(src("10.0.0.1")), 1);
        drop(a2);
        assert_eq!(q.used_by(src("10.0.0.1")), 0);
        assert_eq!(q.sources(), 3, "sources holding nothing are forgotten");
    }

    #[test]
    fn the_total_binds_across_sources() {
        let q = Quota::new("test", 5, 4);
        let _a = q.try_take(src("10.0.0.1"), 2).unwrap();
        let _b = q.try_take(src("10.0.0.2"), 2).unwrap();
        assert_eq!(q.try_take(src("10.0.0.3"), 2).unwrap_err(), Refusal::Total);
        let _c = q.try_take(src("10.0.0.3"), 1).unwrap();
        assert_eq!(q.try_take(src("10.0.0.4"), 1).unwrap_err(), Refusal::Total);
        assert_eq!(q.used(), 5);
    }

    #[test]
    fn a_refused_take_or_growth_holds_nothing_more() {
        let q = Quota::new("test", 10, 10);
        let mut h = q.try_take(src("10.0.0.1"), 6).unwrap();
        let other = q.try_take(src("10.0.0.2"), 3).unwrap();
        assert_eq!(h.try_grow(2).unwrap_err(), Refusal::Total);
        assert_eq!((h.amount(), q.used()), (6, 9));
        h.try_grow(1).unwrap();
        assert_eq!(q.used(), 10);
        drop(h);
        drop(other);
        assert_eq!(q.used(), 0);
    }

    #[test]
    fn per_source_is_capped_at_the_total() {
        let q = Quota::new("test", 3, 100);
        assert_eq!(q.per_source(), 3);
    }

    #[test]
    fn ipv6_sources_are_their_64_prefix_and_mapped_v4_is_v4() {
        assert_eq!(src("2001:db8:1:2::1"), src("2001:db8:1:2:ffff::9"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:10.0.0.1"), src("10.0.0.1"));
        assert_eq!(src("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(src("10.0.0.1").to_string(), "10.0.0.1");
    }

    fn frame(body: usize, flags: u8) -> Vec<u8> {
        let mut f = u32::try_from(body + 2).unwrap().to_be_bytes().to_vec();
        f.extend_from_slice(&[0x01, flags]);
        f.resize(HEADER_LEN + body, 7);
        f
    }

    #[test]
    fn a_request_buffer_charges_its_allocation_before_making_it() {
        let q = Quota::new("bytes", 1 << 20, 1 << 20);
        let f = frame(100_000, 0);
        let mut b = RequestBuffer::new(&q, src("10.0.0.1"), 200_000);
        for chunk in f.chunks(1200) {
            b.push(chunk).unwrap();
            assert!(b.charged() >= b.bytes().len());
            assert_eq!(q.used(), b.charged());
        }
        assert_eq!(b.bytes(), &f[..]);
        assert_eq!(
            b.charged(),
            f.len(),
            "growth stops at the announced frame length"
        );
        drop(b);
        assert_eq!(q.used(), 0);
    }

    #[test]
    fn a_request_buffer_over_its_source_share_is_refused_and_keeps_its_charge() {
        // Half the total is 64 KiB: past it, the 64 KiB share binds.
        let q = Quota::new("bytes", 128 * 1024, 64 * 1024);
        let mut b = RequestBuffer::new(&q, src("10.0.0.1"), 1 << 20);
        let f = frame(200_000, 0);
        let mut refused = None;
        for chunk in f.chunks(8192) {
            if let Err(e) = b.push(chunk) {
                refused = Some(e);
                break;
            }
        }
        assert_eq!(refused, Some(BufferError::Budget(Refusal::PerSource)));
        assert!(q.used() <= 64 * 1024);
        assert_eq!(q.used(), b.charged());
        // Another source is unaffected.
        let mut other = RequestBuffer::new(&q, src("10.0.0.2"), 1 << 20);
        other.push(&frame(10_000, 0)).unwrap();
        assert!(q.used() <= q.total());
    }

    #[test]
    fn a_request_buffer_refuses_frames_over_its_limit() {
        let q = Quota::new("bytes", 1 << 20, 1 << 20);
        let mut b = RequestBuffer::new(&q, src("10.0.0.1"), 1000);
        assert_eq!(b.push(&[0u8; 1001]), Err(BufferError::TooLarge));
        assert_eq!(q.used(), 0);
    }

    #[test]
    fn a_compressed_frame_is_charged_its_declared_payload() {
        let q = Quota::new("bytes", 1 << 20, 1 << 20);
        let mut f = frame(100, FLAG_LZ4);
        f[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&50_000u32.to_le_bytes());
        let mut b = RequestBuffer::new(&q, src("10.0.0.1"), 1000);
        b.push(&f).unwrap();
        let before = b.charged();
        b.charge_payload(40_000).unwrap();
        assert_eq!(b.charged(), before + 40_000, "capped at the payload limit");
        let mut plain = RequestBuffer::new(&q, src("10.0.0.1"), 1000);
        plain.push(&frame(100, 0)).unwrap();
        let before = plain.charged();
        plain.charge_payload(40_000).unwrap();
        assert_eq!(plain.charged(), before);
    }
}
