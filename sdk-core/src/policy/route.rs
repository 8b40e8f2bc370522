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
//! the very next attempt to that relay uses HTTPS (the connector gives a relay it never
//! completed a handshake with one more QUIC try first, reported as
//! [`Failure::Undecided`]), and HTTPS stays that relay's
//! transport until `quic_reprobe` has passed; then one request tries QUIC again
//! (protocol §2.2). A relay is marked down only when HTTPS fails too.
//!
//! A failed QUIC attempt is as often a relay that was restarting, or too busy to
//! answer in time, as a network that blocks UDP. So while HTTPS carries the data, the
//! router checks QUIC in the background ([`Router::take_probes`]): after
//! [`RouterConfig::quic_recheck`], then twice and four times that (each with up to
//! +50% jitter), a `ShardMapRequest` over QUIC; the first that gets a reply ends the
//! HTTPS spell. No data waits on a check, and a network that does block UDP costs
//! three background handshakes per spell.
//!
//! # Back-pressure is not a fault
//!
//! A relay that is up but pushing back — it refused a handshake or a request stream
//! under load, or it answered during a handshake or request that did not finish in
//! time ([`Failure::Busy`]) — is neither down nor unreachable over UDP: failing over
//! would move the storm to the next relay, and HTTPS would only swap a cheap transport
//! for a dearer one on the same busy relay. So a busy outcome changes neither the
//! relay's health nor its transport: the request is not tried elsewhere (the uploader
//! waits its jittered backoff and sends it again, to the same relay), and the next
//! handshake to that relay is given more time: [`Target::connect_permille`] doubles
//! with each busy outcome in a row (up to 4×) and carries up to +50% jitter, so devices
//! that failed together do not time out together again. Only after
//! [`RouterConfig::busy_limit`] busy outcomes in a row, the first of them heard at
//! least [`RouterConfig::busy_patience`] ago, is the next one taken for what it would
//! have been without this rule (a transport failure: HTTPS next), so a relay that
//! never lets a device in still has a way out. A device whose own timer fired late
//! with nothing heard ([`Failure::Undecided`]) cannot tell a busy relay from a dead
//! one: such outcomes count toward the limit but earn no patience.
//! A relay that was already failing
//! (backed off, probed) is backed off further by a busy outcome, like any failure.
//!
//! # Shard map
//!
//! [`Router::offer_map`] adopts a map only when it is valid ([`ShardMap::validate`]:
//! at least one usable relay, sane addresses, a bounded version — protocol §5.5) and
//! its version is newer; every reply carries the relay's shard-map version, and
//! [`Router::wants_map`] tells the uploader to fetch a newer one. A version the router
//! refused is not asked for again.
//!
//! # The seeds: a way back from any map
//!
//! The map the app was configured with (the *seeds*, [`Router::with_seeds`]) always
//! remains a way back, so no single bad map can strand a device:
//!
//! * When no relay of the adopted map has answered for
//!   [`RouterConfig::seed_fallback_after`] while requests kept being tried (every relay
//!   backed off, none healthy, with no gap longer than that between attempts), the
//!   router *falls back*: requests go to the seeds' relays, ranked the same way, for
//!   [`RouterConfig::seed_fallback_for`].
//! * While falling back, the map version a seed relay announces is wanted whenever it
//!   differs from the adopted one, and the map is requested from scratch
//!   ([`Router::request_version`] is 0): a valid map served by a seed relay is adopted
//!   **whatever its version**, lower ones included — the adopted map did not work, so
//!   the seed relays' current map is the better one. That also undoes a map whose
//!   version is so high that no later map could replace it.
//! * The fallback ends when a map is adopted, or after `seed_fallback_for`: then the
//!   adopted map is tried again (and the fallback starts again if it still fails).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use tern_protocol::routing::rank;
use tern_protocol::{AppId, RelayId, RelayNode, ShardMap, ShardMapError, MAX_SHARD_MAP_VERSION};

/// Background QUIC checks per HTTPS spell ([`RouterConfig::quic_recheck`]).
const QUIC_CHECKS: u32 = 3;

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
    /// How long a new QUIC handshake to the relay may take, in thousandths of the
    /// configured connect timeout: 1000 for a relay that has not pushed back; after
    /// `n` busy outcomes in a row `1000 · 2^min(n, 2)` plus up to half of that again,
    /// drawn at random (module docs, "Back-pressure is not a fault").
    pub connect_permille: u32,
}

impl Target {
    /// `timeout` scaled by [`Target::connect_permille`].
    pub fn connect_timeout(&self, timeout: Duration) -> Duration {
        timeout.saturating_mul(self.connect_permille.max(1)) / 1000
    }
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
    /// (crashed or overloaded), or it closed a new connection as `overloaded`: the
    /// relay is backed off like a relay that failed on every transport, without
    /// switching it to HTTPS (the path was fine).
    Unresponsive,
    /// The relay is up but pushing back: it refused the handshake (`CONNECTION_REFUSED`)
    /// or the request stream (`busy`, `read_timeout`) under load, or it was heard from
    /// during a handshake or request that did not finish in time. Neither a failover
    /// nor HTTPS: the request waits and goes to the same relay again (module docs).
    Busy,
    /// A QUIC handshake timed out with nothing heard from the relay, after the
    /// device's own timer fired late: the device was too busy to tell a dead relay from
    /// a busy one. Treated as [`Failure::Busy`] up to [`RouterConfig::busy_limit`], but
    /// it is no sign that the relay is up, so it never earns
    /// [`RouterConfig::busy_patience`]: a starved device does not wait out a dead relay.
    Undecided,
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
    /// First background check of QUIC after a QUIC failure moved a relay to HTTPS
    /// (then twice and four times as long; default 5 s; 0: no checks, HTTPS until
    /// `quic_reprobe`). See the module docs.
    pub quic_recheck: Duration,
    /// How long a draining relay is skipped if no newer shard map arrives.
    pub draining_for: Duration,
    /// Fall back to the seeds after no relay of the adopted map answered for this long
    /// while requests were tried (default 60 s).
    pub seed_fallback_after: Duration,
    /// How long a fallback to the seeds lasts before the adopted map is tried again,
    /// unless a seed relay's map is adopted first (default 10 minutes).
    pub seed_fallback_for: Duration,
    /// Busy outcomes in a row a relay is given before the next one counts as the
    /// transport failure it would otherwise be — once [`RouterConfig::busy_patience`]
    /// has passed too (default 4; 0: busy outcomes are transport failures).
    pub busy_limit: u32,
    /// How long a relay that was heard pushing back ([`Failure::Busy`]) may keep
    /// doing so before a busy outcome past [`RouterConfig::busy_limit`] counts as a
    /// transport failure (default 60 s; 0: the limit alone decides). A relay paces a
    /// storm — its restart, every device back online at once — over seconds to tens of
    /// seconds; without patience its devices would move to HTTPS and the next relay
    /// and make the storm theirs. Only a relay heard from earns it:
    /// [`Failure::Undecided`] outcomes count toward the limit alone.
    pub busy_patience: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            down_base: Duration::from_millis(500),
            down_cap: Duration::from_secs(60),
            quic_reprobe: Duration::from_secs(300),
            quic_recheck: Duration::from_secs(5),
            draining_for: Duration::from_secs(300),
            seed_fallback_after: Duration::from_secs(60),
            seed_fallback_for: Duration::from_secs(600),
            busy_limit: 4,
            busy_patience: Duration::from_secs(60),
        }
    }
}

impl RouterConfig {
    /// Sets the QUIC re-probe interval.
    pub fn with_quic_reprobe(mut self, d: Duration) -> Self {
        self.quic_reprobe = d;
        self
    }

    /// Sets the first background QUIC check after a fallback to HTTPS (see
    /// [`RouterConfig::quic_recheck`]; zero turns the checks off).
    pub fn with_quic_recheck(mut self, d: Duration) -> Self {
        self.quic_recheck = d;
        self
    }

    /// Sets when the router falls back to the seeds and for how long.
    pub fn with_seed_fallback(mut self, after: Duration, lasts: Duration) -> Self {
        self.seed_fallback_after = after;
        self.seed_fallback_for = lasts;
        self
    }

    /// Sets how many busy outcomes in a row a relay is given (see
    /// [`RouterConfig::busy_limit`]).
    pub fn with_busy_limit(mut self, n: u32) -> Self {
        self.busy_limit = n;
        self
    }

    /// Sets how long a relay may push back before the busy limit applies (see
    /// [`RouterConfig::busy_patience`]).
    pub fn with_busy_patience(mut self, d: Duration) -> Self {
        self.busy_patience = d;
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
    /// While HTTPS is the relay's transport: when to check QUIC in the background.
    quic_check_at: Option<Instant>,
    /// QUIC failures in this HTTPS spell (the first, then failed checks).
    quic_failures: u32,
    /// A background probe of this relay is in flight.
    probing: bool,
    /// Busy outcomes in a row (reset by any reply).
    busy: u32,
    /// When the first of them came.
    busy_since: Option<Instant>,
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
    /// Background QUIC checks of a relay on HTTPS that got a reply (back to QUIC).
    pub quic_checks_ok: u64,
    /// Times the router fell back to the seeds because no relay of the adopted map
    /// answered.
    pub seed_fallbacks: u64,
    /// Shard maps refused as invalid (never adopted).
    pub maps_refused: u64,
    /// Requests a relay pushed back on ([`Failure::Busy`]; also counted in
    /// `failures`).
    pub busy: u64,
    /// Failed requests that backed their relay off (its next requests go to the
    /// next relay, a failover), by cause: the relay went silent with the request
    /// outstanding or closed the connection as overloaded ([`Failure::Unresponsive`]).
    pub down_silent: u64,
    /// ... it failed over HTTPS after QUIC: unreachable ([`Failure::Transport`]).
    pub down_unreachable: u64,
    /// ... it pushed back ([`Failure::Busy`], [`Failure::Undecided`]) past the
    /// device's patience ([`RouterConfig::busy_limit`], [`RouterConfig::busy_patience`]).
    pub down_busy: u64,
    /// ... it is draining ([`Failure::Draining`]).
    pub down_draining: u64,
    /// Failed QUIC requests that moved their relay to HTTPS (UDP may be blocked),
    /// including push-backs past the device's patience.
    pub to_https: u64,
    /// Requests go to the seeds now.
    pub in_fallback: bool,
}

/// What [`Router::offer_map`] did with a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOffer {
    /// The map is in use now. `rescue`: adopted from a seed relay during a fallback,
    /// possibly with a lower version than the map it replaces.
    Adopted {
        /// Adopted during a fallback to the seeds.
        rescue: bool,
    },
    /// Valid but not newer than the map in use (nothing changed).
    NotNewer,
    /// Invalid: never adopted (the reason names the node and field).
    Refused(ShardMapError),
}

/// Relay selection state for one device.
#[derive(Clone, Debug)]
pub struct Router {
    config: RouterConfig,
    /// The adopted map (the seeds until a relay served a newer one).
    map: ShardMap,
    /// The app's configured map, when valid: the way back ([`Router::with_seeds`]).
    seeds: Option<ShardMap>,
    /// Falling back to the seeds until this instant.
    fallback_until: Option<Instant>,
    /// Since when no relay of the adopted map was healthy at a pick.
    unusable_since: Option<Instant>,
    /// The latest pick that found no healthy relay of the adopted map.
    last_unusable_pick: Option<Instant>,
    relays: HashMap<RelayId, RelayState>,
    newest_seen: u64,
    /// The version a seed relay announced during the fallback.
    seen_in_fallback: Option<u64>,
    /// The latest version refused as invalid: not fetched again.
    refused_version: Option<u64>,
    stats: RouterStats,
    probes: Vec<Target>,
    /// Draws the connect-timeout jitter.
    rng: SmallRng,
}

impl Router {
    /// A router over `map`, which is also its seeds.
    pub fn new(config: RouterConfig, map: ShardMap) -> Self {
        Router::with_seeds(config, map, None)
    }

    /// A router whose way back is `seeds` (the app's configured map), starting with
    /// `saved` (a map adopted in an earlier run) when it is valid and newer than the
    /// seeds. An invalid `saved` map is ignored; invalid seeds give no fallback.
    pub fn with_seeds(config: RouterConfig, seeds: ShardMap, saved: Option<ShardMap>) -> Self {
        let seeds_ok = seeds.validate().is_ok();
        let mut refused = 0;
        let saved = saved.filter(|m| {
            let ok = m.validate().is_ok();
            refused += u64::from(!ok);
            ok
        });
        let map = match saved {
            Some(m) if m.version > seeds.version || !seeds_ok => m,
            _ => seeds.clone(),
        };
        Router {
            config,
            newest_seen: map.version,
            map,
            seeds: seeds_ok.then_some(seeds),
            fallback_until: None,
            unusable_since: None,
            last_unusable_pick: None,
            relays: HashMap::new(),
            seen_in_fallback: None,
            refused_version: None,
            stats: RouterStats {
                maps_refused: refused,
                ..RouterStats::default()
            },
            probes: Vec::new(),
            rng: SmallRng::seed_from_u64(0x7e27),
        }
    }

    /// Seeds the connect-timeout jitter (give each device its own seed, so devices
    /// that failed together do not retry together).
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        self.rng = SmallRng::seed_from_u64(seed);
        self
    }

    /// [`Target::connect_permille`] for a relay with `busy` busy outcomes in a row.
    fn connect_permille(&mut self, busy: u32) -> u32 {
        if busy == 0 {
            return 1000;
        }
        let base = 1000u32 << busy.min(2);
        base + self.rng.random_range(0..=base / 2)
    }

    /// The adopted map (during a fallback requests go to the seeds instead).
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// Whether requests go to the seeds now.
    pub fn in_fallback(&self) -> bool {
        self.fallback_until.is_some()
    }

    /// The map requests are routed over now: the seeds during a fallback, else the
    /// adopted map.
    fn routing_map(&self) -> &ShardMap {
        match (&self.fallback_until, &self.seeds) {
            (Some(_), Some(seeds)) => seeds,
            _ => &self.map,
        }
    }

    /// Counters.
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            in_fallback: self.in_fallback(),
            ..self.stats
        }
    }

    /// Installs `map` if it is valid and newer than the one in use; returns whether it
    /// did ([`Router::offer_map`]).
    pub fn set_map(&mut self, map: ShardMap) -> bool {
        matches!(self.offer_map(map), MapOffer::Adopted { .. })
    }

    /// Offers a map a relay served. Invalid maps are refused (and their version is not
    /// asked for again). Otherwise a newer map is adopted; during a fallback to the
    /// seeds any version other than the adopted one is (see the module docs). Draining
    /// marks are cleared (the new map says who drains); failure backoffs of relays
    /// still in the map are kept, except after a rescue (a fresh start).
    pub fn offer_map(&mut self, map: ShardMap) -> MapOffer {
        if let Err(e) = map.validate() {
            self.refused_version = Some(map.version);
            self.stats.maps_refused += 1;
            return MapOffer::Refused(e);
        }
        let rescue = self.in_fallback();
        if rescue {
            if map.version == self.map.version {
                return MapOffer::NotNewer;
            }
            self.relays.clear();
            self.probes.clear();
            self.fallback_until = None;
            self.seen_in_fallback = None;
            self.newest_seen = map.version;
        } else {
            if map.version <= self.map.version {
                return MapOffer::NotNewer;
            }
            self.newest_seen = self.newest_seen.max(map.version);
            self.relays
                .retain(|id, _| map.nodes.iter().any(|n| &n.id == id));
            for s in self.relays.values_mut() {
                if s.failures == 0 {
                    s.down_until = None;
                }
            }
        }
        self.unusable_since = None;
        self.map = map;
        MapOffer::Adopted { rescue }
    }

    /// Notes a relay's shard-map version (every reply carries one). Versions above the
    /// protocol's bound are ignored (no valid map can have them).
    pub fn observe_version(&mut self, version: u64) {
        if version > MAX_SHARD_MAP_VERSION {
            return;
        }
        if self.in_fallback() {
            self.seen_in_fallback = Some(version);
        } else {
            self.newest_seen = self.newest_seen.max(version);
        }
    }

    /// Whether a relay announced a map worth fetching: newer than the one in use, or —
    /// during a fallback — any version other than the adopted one. A version refused
    /// as invalid is not wanted again.
    pub fn wants_map(&self) -> bool {
        let wanted = if self.in_fallback() {
            self.seen_in_fallback.filter(|v| *v != self.map.version)
        } else {
            Some(self.newest_seen).filter(|v| *v > self.map.version)
        };
        wanted.is_some_and(|v| Some(v) != self.refused_version)
    }

    /// The `known_version` to send in a `ShardMapRequest`: the adopted map's version,
    /// or 0 during a fallback (so a seed relay sends its map whatever its version).
    pub fn request_version(&self) -> u64 {
        if self.in_fallback() {
            0
        } else {
            self.map.version
        }
    }

    /// Ends a fallback whose time is up (the adopted map is tried again, fresh), and
    /// starts one when the adopted map has been unusable for long enough.
    fn update_fallback(&mut self, healthy: bool, now: Instant) {
        if let Some(until) = self.fallback_until {
            if now >= until {
                tracing::info!("seed fallback over: trying the adopted shard map again");
                self.fallback_until = None;
                self.seen_in_fallback = None;
                self.relays.clear();
                self.probes.clear();
                self.unusable_since = None;
                self.last_unusable_pick = None;
            }
            return;
        }
        if healthy {
            self.unusable_since = None;
            self.last_unusable_pick = None;
            return;
        }
        let after = self.config.seed_fallback_after;
        // Evidence must be continuous: a long gap without attempts (offline, idle)
        // starts the count again.
        let continuous = self
            .last_unusable_pick
            .is_some_and(|last| now.saturating_duration_since(last) <= after);
        if !continuous {
            self.unusable_since = Some(now);
        }
        self.last_unusable_pick = Some(now);
        let since = self.unusable_since.unwrap_or(now);
        let seeds_differ = self
            .seeds
            .as_ref()
            .is_some_and(|s| s.nodes != self.map.nodes);
        if seeds_differ && now.saturating_duration_since(since) >= after {
            tracing::warn!(
                version = self.map.version,
                unusable_s = now.saturating_duration_since(since).as_secs(),
                "no relay of the shard map answers: falling back to the configured relays"
            );
            self.fallback_until = Some(now + self.config.seed_fallback_for);
            self.stats.seed_fallbacks += 1;
            self.relays.clear();
            self.probes.clear();
            self.seen_in_fallback = None;
            self.unusable_since = None;
            self.last_unusable_pick = None;
        }
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
        if self.fallback_until.is_some() {
            self.update_fallback(true, now);
        }
        let ranking = self.ranking(app, user);
        if !self.in_fallback() && !ranking.is_empty() {
            let healthy = ranking
                .iter()
                .any(|n| self.relays.get(&n.id).is_none_or(|s| s.healthy(now)));
            self.update_fallback(healthy, now);
            if self.in_fallback() {
                return self.pick(app, user, now);
            }
        }
        self.pick_in(ranking, now)
    }

    fn ranking(&self, app: &AppId, user: &str) -> Vec<RelayNode> {
        rank(self.routing_map(), app, user)
            .into_iter()
            .cloned()
            .collect()
    }

    fn pick_in(&mut self, ranking: Vec<RelayNode>, now: Instant) -> Option<Target> {
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
                            connect_permille: 1000,
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
        let state = self.relays.get(&node.id);
        let transport = match state.and_then(|s| s.https_until) {
            Some(until) if now < until => Transport::Https,
            _ => Transport::Quic,
        };
        let busy = state.map_or(0, |s| s.busy);
        let node = node.clone();
        if transport == Transport::Https {
            if let Some(s) = self.relays.get_mut(&node.id) {
                if !s.probing && s.quic_check_at.is_some_and(|at| now >= at) {
                    s.probing = true;
                    s.quic_check_at = None;
                    self.probes.push(Target {
                        relay: node.clone(),
                        transport: Transport::Quic,
                        rank: i,
                        connect_permille: 1000,
                    });
                }
            }
        }
        Some(Target {
            connect_permille: self.connect_permille(busy),
            relay: node,
            transport,
            rank: i,
        })
    }

    /// The request to `target` got a reply (any reply: the relay works).
    pub fn handle_success(&mut self, target: &Target, now: Instant) {
        let s = self.relays.entry(target.relay.id.clone()).or_default();
        s.failures = 0;
        s.down_until = None;
        s.busy = 0;
        s.busy_since = None;
        match target.transport {
            Transport::Quic => {
                s.https_until = None;
                s.quic_check_at = None;
                s.quic_failures = 0;
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
        // A background check of QUIC for a relay that works over HTTPS.
        let check =
            target.transport == Transport::Quic && s.failures == 0 && s.https_until.is_some();
        match result {
            Ok(()) => {
                // Back. QUIC first again, even after an HTTPS probe: the QUIC probe may
                // have failed only because the relay was still down; if UDP really is
                // blocked, the first request falls back to HTTPS as usual.
                if check {
                    self.stats.quic_checks_ok += 1;
                }
                s.failures = 0;
                s.down_until = None;
                s.https_until = None;
                s.quic_check_at = None;
                s.quic_failures = 0;
                s.busy = 0;
                s.busy_since = None;
            }
            Err(failure) if check && failure != Failure::Draining => {
                // Still no QUIC: HTTPS stays, the next check later. A slow or busy
                // answer counts as no answer here: the relay is served over HTTPS.
                self.quic_failed(&target.relay.id, now);
            }
            Err(failure) => {
                // A failed probe extends a backoff; it is not a request's failure.
                let _ = self.apply_failure(target, failure, now);
            }
        }
    }

    /// QUIC to `relay` failed (a request or a background check) while HTTPS carries
    /// its data: schedules the next check, if any is left in this spell.
    fn quic_failed(&mut self, relay: &RelayId, now: Instant) {
        let recheck = self.config.quic_recheck;
        let Some(s) = self.relays.get_mut(relay) else {
            return;
        };
        s.quic_failures = s.quic_failures.saturating_add(1);
        s.quic_check_at = None;
        if !recheck.is_zero() && s.quic_failures <= QUIC_CHECKS {
            let base = recheck.saturating_mul(1 << (s.quic_failures - 1));
            let jitter = base.mul_f64(self.rng.random_range(0.0..=0.5));
            s.quic_check_at = Some(now + base + jitter);
        }
    }

    /// The request to `target` failed.
    pub fn handle_failure(&mut self, target: &Target, failure: Failure, now: Instant) {
        self.stats.failures += 1;
        if matches!(failure, Failure::Busy | Failure::Undecided) {
            self.stats.busy += 1;
        }
        match self.apply_failure(target, failure, now) {
            Effect::Kept => {}
            Effect::ToHttps => self.stats.to_https += 1,
            Effect::Down => {
                let counter = match failure {
                    Failure::Unresponsive => &mut self.stats.down_silent,
                    Failure::Transport => &mut self.stats.down_unreachable,
                    Failure::Busy | Failure::Undecided => &mut self.stats.down_busy,
                    Failure::Draining => &mut self.stats.down_draining,
                };
                *counter += 1;
            }
        }
    }

    /// Applies `failure` of `target` to its relay's state; says what it did.
    fn apply_failure(&mut self, target: &Target, failure: Failure, now: Instant) -> Effect {
        let config = self.config;
        let s = self.relays.entry(target.relay.id.clone()).or_default();
        let mut failure = failure;
        if matches!(failure, Failure::Busy | Failure::Undecided) {
            s.busy = s.busy.saturating_add(1);
            if failure == Failure::Busy {
                // Heard from: up. Patience runs from the first push-back in a row.
                s.busy_since.get_or_insert(now);
            }
            let patient = s.busy <= config.busy_limit
                || s.busy_since.is_some_and(|since| {
                    now.saturating_duration_since(since) < config.busy_patience
                });
            if s.failures == 0 && patient {
                // Up and pushing back: healthy, same transport (module docs).
                return Effect::Kept;
            }
            // Already failing (a probe), or out of patience: what it would have been.
            s.busy = 0;
            s.busy_since = None;
            failure = Failure::Transport;
        } else {
            s.busy = 0;
            s.busy_since = None;
        }
        match (failure, target.transport) {
            (Failure::Draining, _) => {
                s.down_until = Some(now + config.draining_for);
                Effect::Down
            }
            (Failure::Transport, Transport::Quic) => {
                // Maybe only UDP is blocked: HTTPS next, the relay is not down yet.
                // QUIC is checked in the background meanwhile (module docs).
                s.https_until = Some(now + config.quic_reprobe);
                self.quic_failed(&target.relay.id, now);
                Effect::ToHttps
            }
            (Failure::Transport, Transport::Https)
            | (Failure::Unresponsive, _)
            | (Failure::Busy, _)
            | (Failure::Undecided, _) => {
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
                s.quic_check_at = None;
                s.quic_failures = 0;
                Effect::Down
            }
        }
    }
}

/// What a failure did to its relay's state.
enum Effect {
    /// Nothing: a push-back within the device's patience.
    Kept,
    /// The relay is served over HTTPS for a while.
    ToHttps,
    /// The relay is backed off: requests go to the next relay.
    Down,
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

    /// The relays of `m` in `key`'s HRW order.
    fn ranking_of(m: &ShardMap, key: &str) -> Vec<RelayId> {
        rank(m, &app(), key).iter().map(|n| n.id.clone()).collect()
    }

    #[test]
    fn the_owner_first_then_the_failover_order() {
        let m = map(1, &["r1", "r2", "r3"]);
        let ranking = ranking_of(&m, "u1");
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

    /// A QUIC failure moves the relay to HTTPS; QUIC is checked in the background
    /// (after 5 s, up to +50%), and the first check that gets a reply brings it back:
    /// a relay that was only restarting is not served over HTTPS for five minutes.
    #[test]
    fn a_relay_on_https_after_a_quic_failure_returns_to_quic_when_a_check_succeeds() {
        let m = map(1, &["r1", "r2", "r3"]);
        let ranking = ranking_of(&m, "u1");
        let mut r = Router::new(RouterConfig::default(), m);
        let t0 = Instant::now();
        let t = r.pick(&app(), "u1", t0).unwrap();
        r.handle_failure(&t, Failure::Transport, t0);
        let t = r.pick(&app(), "u1", t0).unwrap();
        assert_eq!(
            (t.relay.id.clone(), t.transport),
            (ranking[0].clone(), Transport::Https)
        );
        r.handle_success(&t, t0);
        // Not before the first check is due.
        let early = t0 + Duration::from_millis(4_999);
        assert_eq!(
            r.pick(&app(), "u1", early).unwrap().transport,
            Transport::Https
        );
        assert!(r.take_probes().is_empty());
        // Due by 7.5 s at the latest: a QUIC check of the same relay, beside the data,
        // which still goes over HTTPS.
        let due = t0 + Duration::from_millis(7_500);
        let t = r.pick(&app(), "u1", due).unwrap();
        assert_eq!(
            (t.relay.id.clone(), t.transport),
            (ranking[0].clone(), Transport::Https)
        );
        let checks = r.take_probes();
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(
            (checks[0].relay.id.clone(), checks[0].transport),
            (ranking[0].clone(), Transport::Quic)
        );
        // One check at a time.
        r.pick(&app(), "u1", due).unwrap();
        assert!(r.take_probes().is_empty());
        r.handle_probe(&checks[0], Ok(()), due);
        let t = r.pick(&app(), "u1", due).unwrap();
        assert_eq!(
            (t.relay.id.clone(), t.transport, t.rank),
            (ranking[0].clone(), Transport::Quic, 0)
        );
        let st = r.stats();
        assert_eq!((st.quic_checks_ok, st.failovers, st.https_ok), (1, 0, 1));
    }

    /// Where UDP is blocked, a spell on HTTPS costs three background checks (after
    /// about 5, 10 and 20 s, each up to +50%), then none until the 5-minute re-probe;
    /// a check that fails, even slowly (busy), never moves the data off HTTPS or off
    /// the relay. With `quic_recheck` zero there are no checks.
    #[test]
    fn failed_quic_checks_back_off_and_stop_after_three() {
        for (recheck, expected) in [(Duration::from_secs(5), 3), (Duration::ZERO, 0)] {
            let m = map(1, &["r1", "r2", "r3"]);
            let ranking = ranking_of(&m, "u1");
            let config = RouterConfig::default().with_quic_recheck(recheck);
            let mut r = Router::new(config, m).with_jitter_seed(9);
            let t0 = Instant::now();
            let t = r.pick(&app(), "u1", t0).unwrap();
            r.handle_failure(&t, Failure::Transport, t0);
            let mut checks = Vec::new();
            let mut now = t0;
            while now < t0 + Duration::from_secs(299) {
                let t = r.pick(&app(), "u1", now).unwrap();
                assert_eq!(
                    (t.relay.id.clone(), t.transport),
                    (ranking[0].clone(), Transport::Https)
                );
                r.handle_success(&t, now);
                for c in r.take_probes() {
                    checks.push(now.duration_since(t0));
                    let failure = if checks.len() == 2 {
                        Failure::Busy
                    } else {
                        Failure::Transport
                    };
                    r.handle_probe(&c, Err(failure), now);
                }
                now += Duration::from_millis(100);
            }
            assert_eq!(checks.len(), expected, "{checks:?}");
            if expected == 3 {
                let s = |d: Duration| d.as_secs_f64();
                assert!((5.0..=7.6).contains(&s(checks[0])), "{checks:?}");
                let gaps = [s(checks[1] - checks[0]), s(checks[2] - checks[1])];
                assert!((10.0..=15.1).contains(&gaps[0]), "{checks:?}");
                assert!((20.0..=30.1).contains(&gaps[1]), "{checks:?}");
            }
            // The re-probe: QUIC again for the data.
            let t = r.pick(&app(), "u1", t0 + Duration::from_secs(301)).unwrap();
            assert_eq!(t.transport, Transport::Quic);
            assert_eq!(r.stats().quic_checks_ok, 0);
        }
    }

    #[test]
    fn an_unresponsive_relay_is_backed_off_and_the_next_one_used_over_quic() {
        let m = map(1, &["r1", "r2", "r3"]);
        let ranking = ranking_of(&m, "u1");
        let mut r = Router::new(RouterConfig::default(), m);
        let t0 = Instant::now();
        let t = r.pick(&app(), "u1", t0).unwrap();
        r.handle_failure(&t, Failure::Unresponsive, t0);
        let st = r.stats();
        assert_eq!(
            (st.down_silent, st.to_https, st.down_unreachable),
            (1, 0, 0)
        );
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
        let ranking = ranking_of(&m, "u1");
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
        assert_eq!(r.stats().down_draining, 1);
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

    fn fail_all(r: &mut Router, at: Instant) {
        // Every relay the router offers fails, as a dead map's would.
        for _ in 0..8 {
            let t = r.pick(&app(), "u", at).unwrap();
            r.handle_failure(&t, Failure::Unresponsive, at);
        }
    }

    #[test]
    fn invalid_maps_are_never_adopted_and_not_fetched_again() {
        let mut r = Router::new(RouterConfig::default(), map(1, &["r1"]));
        assert!(matches!(r.offer_map(map(2, &[])), MapOffer::Refused(_)));
        r.observe_version(2);
        assert!(!r.wants_map(), "a refused version is not fetched again");
        r.observe_version(3);
        assert!(r.wants_map());
        let mut zero_weight = map(3, &["r2"]);
        zero_weight.nodes[0].weight = 0;
        let mut typo = map(3, &["r2"]);
        typo.nodes[0].state = NodeState::from("actve");
        let mut bad_addr = map(3, &["r2"]);
        bad_addr.nodes[0].quic_addr = "r2".into();
        let max = ShardMap {
            version: u64::MAX,
            ..map(3, &["r2"])
        };
        for bad in [zero_weight, typo, bad_addr, max, map(3, &["r2", "r2"])] {
            assert!(matches!(r.offer_map(bad), MapOffer::Refused(_)));
        }
        assert_eq!(r.stats().maps_refused, 6);
        assert_eq!(r.map().version, 1);
        assert_eq!(
            r.pick(&app(), "u", Instant::now())
                .unwrap()
                .relay
                .id
                .as_str(),
            "r1"
        );
        // Versions no valid map can have are ignored.
        r.observe_version(u64::MAX);
        assert!(r.set_map(map(3, &["r2"])));
        assert!(!r.wants_map());
        // A persisted map that is invalid is ignored at start.
        let r = Router::with_seeds(RouterConfig::default(), map(1, &["r1"]), Some(map(9, &[])));
        assert_eq!((r.map().version, r.stats().maps_refused), (1, 1));
    }

    #[test]
    fn a_dead_map_falls_back_to_the_seeds_and_a_seed_relays_map_rescues_it() {
        let cfg = RouterConfig::default()
            .with_seed_fallback(Duration::from_secs(60), Duration::from_secs(600));
        // The adopted map (an earlier run) lists relays that never answer, under a
        // version so high nothing newer can come.
        let dead = map(MAX_SHARD_MAP_VERSION, &["d1", "d2"]);
        let mut r = Router::with_seeds(cfg, map(1, &["s1", "s2"]), Some(dead));
        assert_eq!(r.map().version, MAX_SHARD_MAP_VERSION);
        let t0 = Instant::now();
        let mut at = t0;
        while at < t0 + Duration::from_secs(60) {
            fail_all(&mut r, at);
            assert!(!r.in_fallback());
            at += Duration::from_secs(5);
        }
        // A minute of failures with no gap: the seeds take over.
        let t = r.pick(&app(), "u", at).unwrap();
        assert!(r.in_fallback());
        assert!(t.relay.id.as_str().starts_with('s'), "{t:?}");
        assert_eq!((r.stats().seed_fallbacks, r.request_version()), (1, 0));
        r.handle_success(&t, at);
        // The seed relay serves version 4: lower, but adopted (the rescue).
        r.observe_version(4);
        assert!(r.wants_map());
        let v4 = map(4, &["s1", "s2", "s3"]);
        assert_eq!(r.offer_map(v4), MapOffer::Adopted { rescue: true });
        assert!(!r.in_fallback() && !r.wants_map());
        assert_eq!(r.map().version, 4);
        // From here, only newer maps.
        assert_eq!(r.offer_map(map(3, &["s1"])), MapOffer::NotNewer);
        assert!(r.set_map(map(5, &["s1"])));
    }

    #[test]
    fn a_fallback_ends_after_its_time_and_gaps_restart_the_count() {
        let cfg = RouterConfig::default()
            .with_seed_fallback(Duration::from_secs(60), Duration::from_secs(600));
        let mut r = Router::with_seeds(cfg, map(1, &["s1"]), Some(map(2, &["d1"])));
        let t0 = Instant::now();
        // Failures, then an idle hour (offline), then failures again: no fallback yet.
        fail_all(&mut r, t0);
        fail_all(&mut r, t0 + Duration::from_secs(30));
        let later = t0 + Duration::from_secs(3600);
        fail_all(&mut r, later);
        assert!(!r.in_fallback(), "the idle gap restarted the count");
        let mut at = later;
        while !r.in_fallback() {
            at += Duration::from_secs(10);
            fail_all(&mut r, at);
            assert!(at <= later + Duration::from_secs(70));
        }
        // The seed relay serves the same map version: nothing to fetch, the seeds are
        // used until the fallback's time is up; then the adopted map again.
        r.observe_version(2);
        assert!(!r.wants_map());
        assert_eq!(r.offer_map(map(2, &["d1"])), MapOffer::NotNewer);
        let end = at + Duration::from_secs(600);
        assert_eq!(
            r.pick(&app(), "u", end - Duration::from_secs(1))
                .unwrap()
                .relay
                .id
                .as_str(),
            "s1"
        );
        assert_eq!(r.pick(&app(), "u", end).unwrap().relay.id.as_str(), "d1");
        assert!(!r.in_fallback());
    }

    #[test]
    fn no_fallback_when_the_seeds_are_the_map_in_use() {
        let cfg = RouterConfig::default()
            .with_seed_fallback(Duration::from_secs(1), Duration::from_secs(600));
        let mut r = Router::new(cfg, map(1, &["r1", "r2"]));
        let t0 = Instant::now();
        for i in 0..100 {
            fail_all(&mut r, t0 + Duration::from_millis(500 * i));
        }
        assert!(!r.in_fallback());
        assert_eq!(r.stats().seed_fallbacks, 0);
    }

    /// `n` busy outcomes from the relay `t` points at, checking the router keeps
    /// offering it (same transport, no failover) with a growing, jittered allowance.
    fn push_back(r: &mut Router, at: Instant, n: u32) -> Target {
        let mut t = r.pick(&app(), "u1", at).unwrap();
        for _ in 0..n {
            r.handle_failure(&t, Failure::Busy, at);
            t = r.pick(&app(), "u1", at).unwrap();
        }
        t
    }

    #[test]
    fn back_pressure_neither_fails_over_nor_falls_back_to_https() {
        let m = map(1, &["r1", "r2", "r3"]);
        let owner = rank(&m, &app(), "u1")[0].id.clone();
        let mut r = Router::new(RouterConfig::default(), m);
        let t0 = Instant::now();
        let first = r.pick(&app(), "u1", t0).unwrap();
        assert_eq!(
            first.connect_permille, 1000,
            "no extra time before any push-back"
        );
        let limit = RouterConfig::default().busy_limit;
        let mut allowances = Vec::new();
        let mut t = first;
        for i in 0..limit {
            r.handle_failure(&t, Failure::Busy, t0 + Duration::from_secs(u64::from(i)));
            t = r
                .pick(&app(), "u1", t0 + Duration::from_secs(u64::from(i)))
                .unwrap();
            // Still the owner, still QUIC: neither a failover nor HTTPS.
            assert_eq!(
                (t.relay.id.clone(), t.transport, t.rank),
                (owner.clone(), Transport::Quic, 0),
                "after busy outcome {}",
                i + 1
            );
            allowances.push(t.connect_permille);
        }
        // 2×, then 4× (capped) the connect timeout, each with up to +50% jitter.
        assert!((2000..=3000).contains(&allowances[0]), "{allowances:?}");
        for a in &allowances[1..] {
            assert!((4000..=6000).contains(a), "{allowances:?}");
        }
        assert!(r.take_probes().is_empty(), "a busy relay is not probed");
        // A reply: back to the plain timeout.
        r.handle_success(&t, t0 + Duration::from_secs(10));
        let t = r.pick(&app(), "u1", t0 + Duration::from_secs(10)).unwrap();
        assert_eq!((t.connect_permille, t.transport), (1000, Transport::Quic));
        let st = r.stats();
        assert_eq!(
            (st.busy, st.failures, st.failovers, st.https_ok),
            (4, 4, 0, 0)
        );
        // Kept: no backoff, no HTTPS.
        assert_eq!((st.down_busy, st.to_https), (0, 0));
    }

    #[test]
    fn a_relay_that_never_lets_a_device_in_is_treated_as_before_after_the_limit() {
        let cfg = RouterConfig::default()
            .with_busy_limit(2)
            .with_busy_patience(Duration::ZERO);
        let m = map(1, &["r1", "r2"]);
        let owner = rank(&m, &app(), "u1")[0].id.clone();
        let mut r = Router::new(cfg, m);
        let t0 = Instant::now();
        let t = push_back(&mut r, t0, 2);
        assert_eq!(
            (t.relay.id.clone(), t.transport),
            (owner.clone(), Transport::Quic)
        );
        // The third in a row is a transport failure of QUIC: HTTPS next, same relay.
        r.handle_failure(&t, Failure::Busy, t0);
        let t = r.pick(&app(), "u1", t0).unwrap();
        assert_eq!((t.relay.id.clone(), t.transport), (owner, Transport::Https));
        assert_eq!(t.connect_permille, 1000, "the count starts again");
        // Busy over HTTPS up to the limit: still the owner.
        let t = push_back(&mut r, t0, 2);
        assert_eq!((t.transport, t.rank), (Transport::Https, 0));
        assert_eq!((r.stats().to_https, r.stats().down_busy), (1, 0));
        // One more: out of patience over HTTPS too, backed off (by push-backs).
        r.handle_failure(&t, Failure::Busy, t0);
        let st = r.stats();
        assert_eq!(
            (
                st.to_https,
                st.down_busy,
                st.down_silent,
                st.down_unreachable
            ),
            (1, 1, 0, 0)
        );
    }

    #[test]
    fn a_relay_pacing_a_storm_is_waited_for_until_the_patience_runs_out() {
        let m = map(1, &["r1", "r2"]);
        let owner = rank(&m, &app(), "u1")[0].id.clone();
        let config = RouterConfig::default().with_busy_patience(Duration::from_secs(60));
        let mut r = Router::new(config, m);
        let t0 = Instant::now();
        let patience = config.busy_patience;
        // Far more busy outcomes than the limit (several requesters of one device),
        // all within the patience: still the owner, over QUIC.
        let mut t = r.pick(&app(), "u1", t0).unwrap();
        for i in 0..40u32 {
            let at = t0 + patience * i / 41;
            r.handle_failure(&t, Failure::Busy, at);
            t = r.pick(&app(), "u1", at).unwrap();
            assert_eq!(
                (t.relay.id.clone(), t.transport),
                (owner.clone(), Transport::Quic)
            );
        }
        // Past the patience (and the limit): the next one is a transport failure.
        r.handle_failure(&t, Failure::Busy, t0 + patience);
        let t = r.pick(&app(), "u1", t0 + patience).unwrap();
        assert_eq!(
            (t.relay.id.clone(), t.transport),
            (owner.clone(), Transport::Https)
        );
        // A reply in between starts the clock again.
        let mut r = Router::new(config, map(1, &["r1", "r2"]));
        let t = push_back(&mut r, t0, 10);
        r.handle_success(&t, t0 + patience / 2);
        let t = push_back(&mut r, t0 + patience, 10);
        assert_eq!((t.relay.id, t.transport), (owner, Transport::Quic));
    }

    #[test]
    fn a_device_too_busy_to_tell_does_not_wait_out_a_dead_relay() {
        // Late timers with nothing heard count toward the busy limit but never earn
        // the patience: past the limit, QUIC has failed (HTTPS next), however soon.
        let m = map(1, &["r1", "r2"]);
        let owner = rank(&m, &app(), "u1")[0].id.clone();
        let config = RouterConfig::default();
        assert_eq!(config.busy_patience, Duration::from_secs(60));
        let mut r = Router::new(config, m);
        let t0 = Instant::now();
        let mut t = r.pick(&app(), "u1", t0).unwrap();
        for _ in 0..config.busy_limit {
            r.handle_failure(&t, Failure::Undecided, t0);
            t = r.pick(&app(), "u1", t0).unwrap();
            assert_eq!(
                (t.relay.id.clone(), t.transport),
                (owner.clone(), Transport::Quic)
            );
        }
        r.handle_failure(&t, Failure::Undecided, t0);
        let t = r.pick(&app(), "u1", t0).unwrap();
        assert_eq!((t.relay.id, t.transport), (owner.clone(), Transport::Https));
        assert_eq!(r.stats().busy, u64::from(config.busy_limit) + 1);
        // Once heard pushing back, the same relay is waited for within the patience,
        // undecided outcomes in between included.
        let mut r = Router::new(config, map(1, &["r1", "r2"]));
        let mut t = r.pick(&app(), "u1", t0).unwrap();
        r.handle_failure(&t, Failure::Busy, t0);
        for i in 0..20u32 {
            let at = t0 + Duration::from_secs(u64::from(i));
            r.handle_failure(&t, Failure::Undecided, at);
            t = r.pick(&app(), "u1", at).unwrap();
            assert_eq!(
                (t.relay.id.clone(), t.transport),
                (owner.clone(), Transport::Quic)
            );
        }
    }

    #[test]
    fn a_dead_relay_still_fails_over_on_its_first_failures() {
        // Busy outcomes before do not slow down the failover of a relay that dies.
        let m = map(1, &["r1", "r2", "r3"]);
        let ranking = ranking_of(&m, "u1");
        let mut r = Router::new(RouterConfig::default(), m);
        let t0 = Instant::now();
        let t = push_back(&mut r, t0, 1);
        r.handle_failure(&t, Failure::Transport, t0);
        let t = r.pick(&app(), "u1", t0).unwrap();
        assert_eq!(
            (t.relay.id.clone(), t.transport),
            (ranking[0].clone(), Transport::Https)
        );
        r.handle_failure(&t, Failure::Transport, t0);
        let t = r.pick(&app(), "u1", t0).unwrap();
        assert_eq!((t.relay.id.clone(), t.rank), (ranking[1].clone(), 1));
    }

    #[test]
    fn a_busy_probe_keeps_a_failed_relay_backed_off() {
        let m = map(1, &["r1", "r2"]);
        let ranking = ranking_of(&m, "u1");
        let base = RouterConfig::default().down_base;
        let mut r = Router::new(RouterConfig::default(), m);
        let t0 = Instant::now();
        let t = r.pick(&app(), "u1", t0).unwrap();
        r.handle_failure(&t, Failure::Unresponsive, t0);
        r.pick(&app(), "u1", t0 + base);
        let probe = r.take_probes().pop().expect("a probe");
        r.handle_probe(&probe, Err(Failure::Busy), t0 + base);
        // Not given data back: the next relay still takes it.
        let t = r.pick(&app(), "u1", t0 + base).unwrap();
        assert_eq!(t.relay.id, ranking[1]);
    }

    #[test]
    fn devices_that_pushed_back_together_get_different_connect_timeouts() {
        let t0 = Instant::now();
        let allowances: std::collections::BTreeSet<u32> = (0..200u64)
            .map(|seed| {
                let mut r =
                    Router::new(RouterConfig::default(), map(1, &["r1"])).with_jitter_seed(seed);
                push_back(&mut r, t0, 1).connect_permille
            })
            .collect();
        // Spread over [2000, 3000]: many distinct values, both ends of the range used.
        assert!(allowances.len() > 100, "{}", allowances.len());
        assert!(*allowances.first().unwrap() < 2200, "{allowances:?}");
        assert!(*allowances.last().unwrap() > 2800, "{allowances:?}");
        assert!(allowances.iter().all(|a| (2000..=3000).contains(a)));
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
