//! Relay selection and transport choice (sans-IO).
//!
//! [`Router`] decides *where* and *how* a request goes; it never opens a socket or
//! reads the clock. The uploader asks [`Router::pick`] for a [`Target`] (a relay and a
//! transport) for a routing key, performs the request, and reports what happened
//! ([`Router::handle_success`], [`Router::handle_failure`]).
//!
//! # Where
//!
//! The HRW ranking of `(app_id, user)` over the shard map's active relays (protocol §8)
//! is the order of preference: the owner first, then the failover order. A relay that
//! failed on every transport is *down* for a backoff (`base · 2^(n-1)`, capped) and is
//! skipped while down; the next relay of the ranking is used, so a device whose relay
//! dies moves to the next one on its first failure, not after a timeout per retry. A
//! relay that said it is draining is down until a newer shard map arrives. When every
//! relay is down, the one whose backoff ends first is picked (the device keeps trying;
//! the data waits in its store either way).
//!
//! # How
//!
//! QUIC first. When a QUIC attempt to a relay fails (handshake timeout, UDP blocked),
//! the very next attempt to that relay uses HTTPS, and HTTPS stays that relay's
//! transport until `quic_reprobe` has passed; then one request tries QUIC again
//! (protocol §2.2). A relay is marked down only when HTTPS fails too.
//!
//! # Shard map
//!
//! [`Router::set_map`] installs a map only when its version is newer; every reply
//! carries the relay's shard-map version, and [`Router::wants_map`] tells the uploader
//! to fetch a newer one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tern_protocol::routing::rank;
use tern_protocol::{AppId, RelayId, RelayNode, ShardMap};

/// Transport to a relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC (ALPN `tern/1`).
    Quic,
    /// HTTPS (`POST /v1/rpc`).
    Https,
}

/// Where and how to send one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The relay.
    pub relay: RelayNode,
    /// The transport.
    pub transport: Transport,
    /// The relay's position in the key's HRW ranking (0 = the owner).
    pub rank: usize,
}

/// Why a request to a relay failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection (refused, unreachable, handshake timeout) or it broke mid-request
    /// or no reply in time.
    Transport,
    /// The relay is draining (QUIC close code `draining` or a `Draining` notice).
    Draining,
    /// The connection was up but the relay went silent with a request outstanding
    /// (crashed or overloaded): the relay is backed off like a relay that failed on
    /// every transport, without switching it to HTTPS (the path was fine).
    Unresponsive,
}

/// Router settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterConfig {
    /// First backoff of a relay that failed on every transport.
    pub down_base: Duration,
    /// Longest backoff of a relay.
    pub down_cap: Duration,
    /// How long HTTPS is used for a relay after QUIC failed before QUIC is tried again.
    pub quic_reprobe: Duration,
    /// How long a draining relay is skipped if no newer shard map arrives.
    pub draining_for: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            down_base: Duration::from_millis(500),
            down_cap: Duration::from_secs(60),
            quic_reprobe: Duration::from_secs(300),
            draining_for: Duration::from_secs(300),
        }
    }
}

impl RouterConfig {
    /// Sets the QUIC re-probe interval.
    pub fn with_quic_reprobe(mut self, d: Duration) -> Self {
        self.quic_reprobe = d;
        self
    }

    /// Sets the relay backoff (first and longest).
    pub fn with_down_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.down_base = base;
        self.down_cap = cap.max(base);
        self
    }
}

#[derive(Clone, Debug, Default)]
struct RelayState {
    /// Consecutive failures on every transport.
    failures: u32,
    down_until: Option<Instant>,
    /// Set while HTTPS is the relay's transport: when to try QUIC again.
    https_until: Option<Instant>,
    /// A background probe of this relay is in flight.
    probing: bool,
}

impl RelayState {
    /// Takes data now: never failed, or failed and proven back by a probe or a reply.
    fn healthy(&self, now: Instant) -> bool {
        self.failures == 0 && self.down_until.is_none_or(|u| now >= u)
    }

    /// Failed on every transport and its backoff is over: due for a probe.
    fn probe_due(&self, now: Instant) -> bool {
        self.failures > 0 && !self.probing && self.down_until.is_none_or(|u| now >= u)
    }
}

/// Counters for the SDK's stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Requests that succeeded over QUIC.
    pub quic_ok: u64,
    /// Requests that succeeded over HTTPS.
    pub https_ok: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Times a request went to a relay other than the key's owner.
    pub failovers: u64,
}

/// Relay selection state for one device.
#[derive(Clone, Debug)]
pub struct Router {
    config: RouterConfig,
    map: ShardMap,
    relays: HashMap<RelayId, RelayState>,
    newest_seen: u64,
    stats: RouterStats,
    probes: Vec<Target>,
}

impl Router {
    /// A router over `map`.
    pub fn new(config: RouterConfig, map: ShardMap) -> Self {
        Router {
            config,
            newest_seen: map.version,
            map,
            relays: HashMap::new(),
            stats: RouterStats::default(),
            probes: Vec::new(),
        }
    }

    /// The map in use.
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// Counters.
    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    /// Installs `map` if it is newer than the one in use; returns whether it did.
    /// Draining marks are cleared (the new map says who drains); failure backoffs of
    /// relays still in the map are kept.
    pub fn set_map(&mut self, map: ShardMap) -> bool {
        if map.version <= self.map.version {
            return false;
        }
        self.newest_seen = self.newest_seen.max(map.version);
        self.relays
            .retain(|id, _| map.nodes.iter().any(|n| &n.id == id));
        for s in self.relays.values_mut() {
            if s.failures == 0 {
                s.down_until = None;
            }
        }
        self.map = map;
        true
    }

    /// Notes a relay's shard-map version (every reply carries one).
    pub fn observe_version(&mut self, version: u64) {
        self.newest_seen = self.newest_seen.max(version);
    }

    /// Whether a relay announced a newer shard map than the one in use.
    pub fn wants_map(&self) -> bool {
        self.newest_seen > self.map.version
    }

    /// Where to send a request for routing key `user` of `app` now; `None` only when
    /// the map has no active relay.
    ///
    /// A relay that failed on every transport (or went silent) is not given data again
    /// when its backoff ends: it is queued for a background probe (see
    /// [`Router::take_probes`]) and the data goes to the next healthy relay, so no
    /// batch pays a handshake timeout to find out whether a dead relay is back. Only
    /// when no relay is healthy does data go to the one back soonest.
    pub fn pick(&mut self, app: &AppId, user: &str, now: Instant) -> Option<Target> {
        let ranking: Vec<RelayNode> = rank(&self.map, app, user).into_iter().cloned().collect();
        let mut up = None;
        for (i, n) in ranking.iter().enumerate() {
            match self.relays.get_mut(&n.id) {
                Some(s) if !s.healthy(now) => {
                    if s.probe_due(now) {
                        s.probing = true;
                        let transport = match s.https_until {
                            Some(until) if now < until => Transport::Https,
                            _ => Transport::Quic,
                        };
                        self.probes.push(Target {
                            relay: n.clone(),
                            transport,
                            rank: i,
                        });
                    }
                }
                _ => {
                    up = Some((i, n));
                    break;
                }
            }
        }
        let (i, node) = match up {
            Some(x) => x,
            // Everyone is down: the one back soonest.
            None => ranking.iter().enumerate().min_by_key(|(_, n)| {
                self.relays
                    .get(&n.id)
                    .and_then(|s| s.down_until)
                    .unwrap_or(now)
            })?,
        };
        let transport = match self.relays.get(&node.id).and_then(|s| s.https_until) {
            Some(until) if now < until => Transport::Https,
            _ => Transport::Quic,
        };
        Some(Target {
            relay: node.clone(),
            transport,
            rank: i,
        })
    }

    /// The request to `target` got a reply (any reply: the relay works).
    pub fn handle_success(&mut self, target: &Target, now: Instant) {
        let s = self.relays.entry(target.relay.id.clone()).or_default();
        s.failures = 0;
        s.down_until = None;
        match target.transport {
            Transport::Quic => {
                s.https_until = None;
                self.stats.quic_ok += 1;
            }
            Transport::Https => {
                // Keep HTTPS until the re-probe time (set when QUIC failed).
                if s.https_until.is_none_or(|u| now >= u) {
                    s.https_until = Some(now + self.config.quic_reprobe);
                }
                self.stats.https_ok += 1;
            }
        }
        if target.rank > 0 {
            self.stats.failovers += 1;
        }
    }

    /// Relays due for a probe since the last call: send each a cheap request (the
    /// uploader sends a `ShardMapRequest`) and report with [`Router::handle_probe`].
    pub fn take_probes(&mut self) -> Vec<Target> {
        std::mem::take(&mut self.probes)
    }

    /// The outcome of a probe of `target`: `Ok` (any reply) makes the relay healthy
    /// again, QUIC first; a failure backs it off further (or, after QUIC, lets the next
    /// probe try HTTPS). Probes do not count as requests in the stats.
    pub fn handle_probe(&mut self, target: &Target, result: Result<(), Failure>, now: Instant) {
        let s = self.relays.entry(target.relay.id.clone()).or_default();
        s.probing = false;
        match result {
            Ok(()) => {
                // Back. QUIC first again, even after an HTTPS probe: the QUIC probe may
                // have failed only because the relay was still down; if UDP really is
                // blocked, the first request falls back to HTTPS as usual.
                s.failures = 0;
                s.down_until = None;
                s.https_until = None;
            }
            Err(failure) => self.apply_failure(target, failure, now),
        }
    }

    /// The request to `target` failed.
    pub fn handle_failure(&mut self, target: &Target, failure: Failure, now: Instant) {
        self.stats.failures += 1;
        self.apply_failure(target, failure, now);
    }

    fn apply_failure(&mut self, target: &Target, failure: Failure, now: Instant) {
        let config = self.config;
        let s = self.relays.entry(target.relay.id.clone()).or_default();
        match (failure, target.transport) {
            (Failure::Draining, _) => {
                s.down_until = Some(now + config.draining_for);
            }
            (Failure::Transport, Transport::Quic) => {
                // Maybe only UDP is blocked: HTTPS next, the relay is not down yet.
                s.https_until = Some(now + config.quic_reprobe);
            }
            (Failure::Transport, Transport::Https) | (Failure::Unresponsive, _) => {
                s.failures = s.failures.saturating_add(1);
                let shift = (s.failures - 1).min(20);
                let wait = config
                    .down_base
                    .saturating_mul(1u32 << shift)
                    .min(config.down_cap);
                s.down_until = Some(now + wait);
                // Next time try QUIC first again: the failure may have been the relay,
                // not the network.
                s.https_until = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tern_protocol::NodeState;

    use super::*;

    fn node(id: &str, state: NodeState) -> RelayNode {
        RelayNode {
            id: RelayId::new(id),
            quic_addr: format!("{id}:4433"),
            https_url: format!("https://{id}:8443"),
            weight: 1,
            state,
        }
    }

    fn map(version: u64, ids: &[&str]) -> ShardMap {
        ShardMap {
            version,
            nodes: ids.iter().map(|id| node(id, NodeState::Active)).collect(),
        }
    }

    fn app() -> AppId {
        AppId::new("demo")
    }

    #[test]
    fn the_owner_first_then_the_failover_order() {
        let m = map(1, &["r1", "r2", "r3"]);
        let ranking: Vec<RelayId> = rank(&m, &app(), "u1")
            .iter()
            .map(|n| n.id.clone())
            .collect();
        let mut r = Router::new(RouterConfig::default(), m);
        let t0 = Instant::now();
        let t = r.pick(&app(), "u1", t0).unwrap();
        assert_eq!(t.relay.id, ranking[0]);
        assert_eq!((t.transport, t.rank), (Transport::Quic, 0));
        // QUIC fails: the same relay over HTTPS.
        r.handle_failure(&t, Failure::Transport, t0);
        let t = r.pick(&app(), "u1", t0).unwrap();
        assert_eq!(
            (t.relay.id.clone(), t.transport),
            (ranking[0].clone(), Transport::Https)
        );
        // HTTPS fails too: the relay is down, the next one takes over, over QUIC.
        r.handle_failure(&t, Failure::Transport, t0);
        let t = r.pick(&app(), "u1", t0).unwrap();
        assert_eq!(
            (t.relay.id.clone(), t.transport, t.rank),
            (ranking[1].clone(), Transport::Quic, 1)
        );
        r.handle_success(&t, t0);
        assert_eq!(r.stats().failovers, 1);
        // After the backoff the owner is probed (not given data) ...
        let later = t0 + RouterConfig::default().down_base;
        assert_eq!(r.pick(&app(), "u1", later).unwrap().relay.id, ranking[1]);
        let probe = r.take_probes().pop().expect("a probe of the owner");
        assert_eq!(probe.relay.id, ranking[0]);
        // ... and gets the data back once the probe succeeds.
        r.handle_probe(&probe, Ok(()), later);
        assert_eq!(r.pick(&app(), "u1", later).unwrap().relay.id, ranking[0]);
    }

    #[test]
    fn an_unresponsive_relay_is_backed_off_and_the_next_one_used_over_quic() {
        let m = map(1, &["r1", "r2", "r3"]);
        let ranking: Vec<RelayId> = rank(&m, &app(), "u1")
            .iter()
            .map(|n| n.id.clone())
            .collect();
        let mut r = Router::new(RouterConfig::default(), m);
        let t0 = Instant::now();
        let t = r.pick(&app(), "u1", t0).unwrap();
        r.handle_failure(&t, Failure::Unresponsive, t0);
        // Not the same relay over HTTPS (the path worked; the relay did not).
        let t = r.pick(&app(), "u1", t0).unwrap();
        assert_eq!(
            (t.relay.id.clone(), t.transport, t.rank),
            (ranking[1].clone(), Transport::Quic, 1)
        );
        // Backed off like a relay down on every transport, then probed over QUIC.
        let later = t0 + RouterConfig::default().down_base;
        r.pick(&app(), "u1", later).unwrap();
        let probe = r.take_probes().pop().expect("a probe of the owner");
        assert_eq!(
            (probe.relay.id.clone(), probe.transport),
            (ranking[0].clone(), Transport::Quic)
        );
    }

    #[test]
    fn a_recovering_owner_is_probed_in_the_background_while_data_fails_over() {
        let m = map(1, &["r1", "r2", "r3"]);
        let ranking: Vec<RelayId> = rank(&m, &app(), "u1")
            .iter()
            .map(|n| n.id.clone())
            .collect();
        let base = RouterConfig::default().down_base;
        let mut r = Router::new(RouterConfig::default(), m);
        let t0 = Instant::now();
        let owner = r.pick(&app(), "u1", t0).unwrap();
        r.handle_failure(&owner, Failure::Unresponsive, t0);
        assert!(r.take_probes().is_empty(), "no probe during the backoff");
        // Backoff over: data still goes to the next relay; one probe of the owner.
        let t1 = t0 + base;
        for _ in 0..3 {
            assert_eq!(r.pick(&app(), "u1", t1).unwrap().relay.id, ranking[1]);
        }
        let probes = r.take_probes();
        assert_eq!(probes.len(), 1, "one probe at a time");
        assert_eq!(
            (probes[0].relay.id.clone(), probes[0].transport),
            (ranking[0].clone(), Transport::Quic)
        );
        // QUIC probe fails: the next probe tries HTTPS at once (maybe only UDP is out).
        r.handle_probe(&probes[0], Err(Failure::Transport), t1);
        assert_eq!(r.pick(&app(), "u1", t1).unwrap().relay.id, ranking[1]);
        let probes = r.take_probes();
        assert_eq!(probes[0].transport, Transport::Https);
        // HTTPS fails too: a longer backoff, no probe before it ends.
        r.handle_probe(&probes[0], Err(Failure::Transport), t1);
        r.pick(&app(), "u1", t1 + base);
        assert!(r.take_probes().is_empty(), "the backoff doubled");
        let t2 = t1 + base * 2;
        r.pick(&app(), "u1", t2);
        let probes = r.take_probes();
        assert_eq!(probes.len(), 1);
        // The owner answers: it gets the data again, over QUIC; probes are not requests.
        r.handle_probe(&probes[0], Ok(()), t2);
        let t = r.pick(&app(), "u1", t2).unwrap();
        assert_eq!(
            (t.relay.id.clone(), t.transport),
            (ranking[0].clone(), Transport::Quic)
        );
        assert_eq!(r.stats().failures, 1);
    }

    #[test]
    fn with_no_healthy_relay_data_goes_to_the_one_back_soonest() {
        let mut r = Router::new(RouterConfig::default(), map(1, &["r1"]));
        let t0 = Instant::now();
        let t = r.pick(&app(), "u", t0).unwrap();
        r.handle_failure(&t, Failure::Unresponsive, t0);
        let t = r
            .pick(&app(), "u", t0 + RouterConfig::default().down_base)
            .unwrap();
        assert_eq!(t.relay.id.as_str(), "r1");
    }

    #[test]
    fn https_sticks_until_the_reprobe_then_quic_is_tried_again() {
        let cfg = RouterConfig::default().with_quic_reprobe(Duration::from_secs(10));
        let mut r = Router::new(cfg, map(1, &["r1"]));
        let t0 = Instant::now();
        let t = r.pick(&app(), "u", t0).unwrap();
        r.handle_failure(&t, Failure::Transport, t0);
        let t = r.pick(&app(), "u", t0).unwrap();
        assert_eq!(t.transport, Transport::Https);
        r.handle_success(&t, t0 + Duration::from_secs(1));
        assert_eq!(
            r.pick(&app(), "u", t0 + Duration::from_secs(9))
                .unwrap()
                .transport,
            Transport::Https
        );
        let t = r.pick(&app(), "u", t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(t.transport, Transport::Quic, "re-probe");
        r.handle_success(&t, t0 + Duration::from_secs(10));
        assert_eq!(
            r.pick(&app(), "u", t0 + Duration::from_secs(11))
                .unwrap()
                .transport,
            Transport::Quic
        );
        assert_eq!((r.stats().quic_ok, r.stats().https_ok), (1, 1));
    }

    #[test]
    fn a_draining_relay_is_skipped_until_a_newer_map() {
        let mut r = Router::new(RouterConfig::default(), map(1, &["r1", "r2"]));
        let t0 = Instant::now();
        let first = r.pick(&app(), "u", t0).unwrap();
        r.handle_failure(&first, Failure::Draining, t0);
        let second = r.pick(&app(), "u", t0 + Duration::from_secs(1)).unwrap();
        assert_ne!(second.relay.id, first.relay.id);
        // A map where the drained relay is back (restarted) brings it back at once.
        assert!(r.set_map(map(2, &["r1", "r2"])));
        assert_eq!(
            r.pick(&app(), "u", t0 + Duration::from_secs(1))
                .unwrap()
                .relay
                .id,
            first.relay.id
        );
    }

    #[test]
    fn maps_only_move_forward_and_newer_versions_are_wanted() {
        let mut r = Router::new(RouterConfig::default(), map(5, &["r1"]));
        assert!(!r.set_map(map(4, &["r2"])));
        assert!(!r.set_map(map(5, &["r2"])));
        assert!(!r.wants_map());
        r.observe_version(7);
        assert!(r.wants_map());
        assert!(r.set_map(map(7, &["r2"])));
        assert!(!r.wants_map());
        assert_eq!(
            r.pick(&app(), "u", Instant::now()).unwrap().relay.id,
            RelayId::new("r2")
        );
    }

    #[test]
    fn no_active_relay_means_no_target() {
        let mut r = Router::new(
            RouterConfig::default(),
            ShardMap {
                version: 1,
                nodes: vec![node("r1", NodeState::Draining)],
            },
        );
        assert_eq!(r.pick(&app(), "u", Instant::now()), None);
        let mut r = Router::new(RouterConfig::default(), ShardMap::default());
        assert_eq!(r.pick(&app(), "u", Instant::now()), None);
    }

    proptest! {
        /// Whatever fails, a target is always offered while the map has a relay, it is
        /// always one of the map's active relays, and relay backoffs never exceed the cap.
        #[test]
        fn always_a_target_and_bounded_backoff(
            ops in proptest::collection::vec((0u8..4, 0u64..5_000), 1..200),
            n in 1usize..5,
        ) {
            let ids: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
            let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
            let cfg = RouterConfig::default().with_down_backoff(Duration::from_millis(100), Duration::from_secs(2));
            let mut r = Router::new(cfg, map(1, &refs));
            let t0 = Instant::now();
            let mut now = t0;
            for (op, dt) in ops {
                now += Duration::from_millis(dt);
                let t = r.pick(&app(), "user", now).expect("a target");
                prop_assert!(ids.contains(&t.relay.id.as_str().to_owned()));
                match op {
                    0 => r.handle_success(&t, now),
                    1 => r.handle_failure(&t, Failure::Transport, now),
                    2 => r.handle_failure(&t, Failure::Draining, now),
                    _ => {}
                }
                for s in r.relays.values() {
                    if let Some(until) = s.down_until {
                        prop_assert!(until <= now + cfg.draining_for.max(cfg.down_cap));
                    }
                }
            }
        }
    }
}
