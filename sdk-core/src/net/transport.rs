//! Request/reply transport to relays: QUIC (quinn) with HTTPS (HTTP/1.1 on hyper, the
//! crate-private `https` module) as the fallback, both over rustls with the ring
//! provider.
//!
//! [`Connector`] sends one request frame to a [`Target`] chosen by the
//! [`crate::policy::route::Router`] and returns the reply frame. QUIC connections are cached
//! per relay and reused across requests (one bidirectional stream per request,
//! protocol §2.1); HTTPS keeps each relay's idle connection for the next request
//! (`POST /v1/rpc`, §2.2).
//!
//! Trust: the Mozilla root store (`webpki-roots`, the same on every platform) plus any
//! CA given in [`TransportConfig::extra_ca_pem`] (private deployments, tests); with
//! [`TransportConfig::only_extra_ca`] the built-in roots are left out. With
//! [`TransportConfig::pins`], the chain must also contain a pinned key
//! ([`crate::net::pinning`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tern_protocol::{
    CodecConfig, FrameDecoder, Message, PushNotice, RelayId, ALPN, HTTP_RPC_PATH,
    HTTP_SUBSCRIBE_PATH,
};

use crate::net::heard::{Heard, HeardSocket, Unread};
use crate::net::https::{HttpsClient, HttpsError};
use crate::net::pinning::{PinSet, PinningVerifier};
use crate::policy::route::{Failure, Target, Transport};

/// QUIC application error code a draining relay closes connections with (§2.1).
pub const CLOSE_DRAINING: u32 = 0x01;

/// QUIC application error code a relay at its connection limit closes a new
/// connection with (§2.1): back off, preferring the next relay.
pub const CLOSE_OVERLOADED: u32 = 0x03;

/// Stream error code of a request stream the relay cannot take now (§2.3 `busy`).
pub const STREAM_BUSY: u32 = 0x11;

/// Stream error code of a request frame the relay did not get in time (§2.3
/// `read_timeout`).
pub const STREAM_READ_TIMEOUT: u32 = 0x12;

/// Largest reply frame accepted.
pub const MAX_REPLY: usize = 4 << 20;

/// Transport settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TransportConfig {
    /// PEM certificates trusted in addition to (or, see `only_extra_ca`, instead of)
    /// the built-in roots.
    pub extra_ca_pem: Option<String>,
    /// Trust only `extra_ca_pem`.
    pub only_extra_ca: bool,
    /// Longest QUIC handshake (and HTTPS connect) before the attempt fails; a relay
    /// that pushed back gets more ([`Target::connect_permille`]), and so does one to
    /// which this device measured slow handshakes (three times their smoothed time, up
    /// to 15 s).
    pub connect_timeout: Duration,
    /// Longest wait for a reply.
    pub request_timeout: Duration,
    /// QUIC keep-alive (protocol: at least every 20 s while a push stream is open).
    pub keep_alive: Duration,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Certificate pins: the relay's chain must contain one of these keys, on top of
    /// the normal verification (`None`: no pinning).
    pub pins: Option<PinSet>,
    /// The local address QUIC and HTTPS sockets bind to (`None`: any IPv4 address,
    /// the OS picks). Apps leave it unset; the fleet simulator gives each simulated
    /// device its own loopback address, so relays see one source per device, as they
    /// see phones.
    pub local_address: Option<std::net::IpAddr>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            extra_ca_pem: None,
            only_extra_ca: false,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            pins: None,
            local_address: None,
        }
    }
}

impl TransportConfig {
    /// Trusts `pem` (one or more certificates) in addition to the built-in roots.
    pub fn with_extra_ca(mut self, pem: impl Into<String>) -> Self {
        self.extra_ca_pem = Some(pem.into());
        self
    }

    /// Trusts only `pem` (private deployments, tests).
    pub fn with_only_ca(mut self, pem: impl Into<String>) -> Self {
        self.extra_ca_pem = Some(pem.into());
        self.only_extra_ca = true;
        self
    }

    /// Sets the QUIC handshake timeout.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets the reply timeout.
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Pins the relays' certificates to `pins` (see [`crate::net::pinning`]).
    pub fn with_pins(mut self, pins: PinSet) -> Self {
        self.pins = Some(pins);
        self
    }

    /// Binds sockets to `address` (see [`TransportConfig::local_address`]).
    pub fn with_local_address(mut self, address: std::net::IpAddr) -> Self {
        self.local_address = Some(address);
        self
    }
}

/// Setting up the transport failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportSetupError {
    /// A trusted certificate could not be read.
    #[error("extra_ca_pem: {0}")]
    Certificate(String),
    /// No certificate to trust.
    #[error("extra_ca_pem: no certificate found (and the built-in roots are disabled)")]
    NoRoots,
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The local UDP socket could not be opened.
    #[error("quic endpoint: {0}")]
    Endpoint(std::io::Error),
}

/// One request failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The relay's address is not usable (`quic_addr` unresolvable, bad URL).
    #[error("relay {relay}: bad address: {detail}")]
    Address {
        /// The relay.
        relay: RelayId,
        /// What is wrong.
        detail: String,
    },
    /// No connection, a broken one, or no reply in time.
    #[error("relay {relay} over {transport:?}: {detail}")]
    Transport {
        /// The relay.
        relay: RelayId,
        /// The transport.
        transport: Transport,
        /// What happened.
        detail: String,
    },
    /// The relay closed the connection because it is draining.
    #[error("relay {0} is draining")]
    Draining(RelayId),
    /// The relay closed the new connection as `overloaded` (at its connection limit).
    #[error("relay {0} is overloaded")]
    Overloaded(RelayId),
    /// The relay is up but did not take the request now: it refused the handshake or
    /// the request stream under load, answered with a busy HTTP status, or was heard
    /// from during a handshake or request that did not finish in time.
    #[error("relay {relay} busy over {transport:?}: {detail}")]
    Busy {
        /// The relay.
        relay: RelayId,
        /// The transport.
        transport: Transport,
        /// What happened.
        detail: String,
    },
    /// A QUIC handshake timed out with nothing heard from the relay, and this device's
    /// own timer fired late: the device was too busy to tell a dead relay from a busy
    /// one ([`Failure::Undecided`]).
    #[error("relay {relay} undecided: {detail}")]
    Undecided {
        /// The relay.
        relay: RelayId,
        /// What happened.
        detail: String,
    },
    /// The QUIC connection was up but the relay stopped acknowledging anything while a
    /// request was outstanding (crashed, or too overloaded to answer): a fault of the
    /// relay, not of the path, so the next relay is tried rather than HTTPS.
    #[error("relay {relay} unresponsive: silent for {silence:?} with a request outstanding")]
    Unresponsive {
        /// The relay.
        relay: RelayId,
        /// How long it had been silent.
        silence: Duration,
    },
}

impl RequestError {
    /// How the router should count it.
    pub fn failure(&self) -> Failure {
        match self {
            RequestError::Draining(_) => Failure::Draining,
            RequestError::Unresponsive { .. } | RequestError::Overloaded(_) => {
                Failure::Unresponsive
            }
            RequestError::Busy { .. } => Failure::Busy,
            RequestError::Undecided { .. } => Failure::Undecided,
            _ => Failure::Transport,
        }
    }
}

/// Builds the rustls client config: roots, pins, ALPN, ring.
pub fn client_tls(
    config: &TransportConfig,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TransportSetupError> {
    client_tls_counting(config, alpn, &Arc::default())
}

/// [`client_tls`], counting pin mismatches in `pin_failures`.
fn client_tls_counting(
    config: &TransportConfig,
    alpn: &[&[u8]],
    pin_failures: &Arc<AtomicU64>,
) -> Result<rustls::ClientConfig, TransportSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    if !config.only_extra_ca {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(pem) = &config.extra_ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| TransportSetupError::Certificate(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TransportSetupError::Certificate(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(TransportSetupError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportSetupError::Tls(e.to_string()))?;
    let mut tls = match &config.pins {
        None => builder.with_root_certificates(roots).with_no_client_auth(),
        Some(pins) => {
            let verifier = PinningVerifier::new(
                Arc::new(roots),
                provider,
                pins.clone(),
                pin_failures.clone(),
            )
            .map_err(|e| TransportSetupError::Tls(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
}

/// What a [`Connector`] counts, shared with whoever reports it (the uploader's stats).
///
/// A QUIC handshake that does not finish within the connect timeout is counted by what
/// the device could tell about it: the relay was *heard* (it answered but did not
/// finish: busy), *nothing was heard* (the relay is down, overloaded past answering, or
/// UDP does not get through: HTTPS or the next relay is tried), or the device's own
/// timer fired *late* (this device was too busy to tell). Under a connection storm these
/// say whether devices fell back to HTTPS because of the relays or because of
/// themselves.
#[derive(Debug, Default)]
pub struct ConnectorCounters {
    /// TLS handshakes refused by certificate pinning (QUIC and HTTPS).
    pub pin_failures: Arc<AtomicU64>,
    /// QUIC handshakes timed out with datagrams heard from the relay.
    pub handshake_timeouts_heard: AtomicU64,
    /// QUIC handshakes timed out with nothing heard from the relay.
    pub handshake_timeouts_silent: AtomicU64,
    /// QUIC handshakes timed out, nothing heard, after a timer that fired late or with
    /// the relay's datagrams still unread: this device was too busy to tell.
    pub handshake_timeouts_late: AtomicU64,
    /// Silent first handshakes to a relay given another try before HTTPS (of
    /// `handshake_timeouts_silent`).
    pub handshake_second_chances: AtomicU64,
    /// Requests ended because the relay went silent with the request outstanding
    /// ([`RequestError::Unresponsive`]: the relay is backed off, the request goes to
    /// the next relay).
    pub relay_silences: AtomicU64,
    /// Silences long enough to end a request that were not held against the relay:
    /// its datagrams were waiting unread in this device's socket (the device was too
    /// busy to read them), so the request kept waiting.
    pub silences_unread: AtomicU64,
}

/// Sends request frames to relays. Must be used inside a tokio runtime. Requests may
/// run concurrently (`&self`); the QUIC connection cache is shared.
pub struct Connector {
    config: TransportConfig,
    endpoint: quinn::Endpoint,
    http: HttpsClient,
    /// Open QUIC connections by relay, with the address each was made to: a map that
    /// moves a relay to another address is not answered by the old connection.
    connections: Mutex<HashMap<RelayId, (String, quinn::Connection)>>,
    /// The handshake in progress to each relay: requests that need a connection while
    /// one is being made wait for it and share its outcome, so a device makes one
    /// handshake at a time per relay (its uploader, config fetch and push subscription
    /// do not triple a connection storm).
    connecting: Mutex<HashMap<RelayId, Arc<tokio::sync::OnceCell<QuicOutcome>>>>,
    /// How long handshakes to each relay took, smoothed ([`HandshakeTimes`]): the
    /// connect timeout grows with what this device measured.
    handshake_times: Mutex<HandshakeTimes>,
    /// Per relay, the longest silence lately seen in a request that the relay then
    /// answered, decaying ([`PauseMemory`]): how long it pauses while alive.
    pauses: Mutex<PauseMemory>,
    counters: Arc<ConnectorCounters>,
    /// Datagrams received per relay address (was a relay heard during a handshake?).
    heard: Heard,
    /// What waits unread in the endpoint's socket (a relay's reply not read yet).
    unread: Unread,
}

/// Shortest silence that ends a request (see [`dead_peer`]).
const SILENCE_MIN: Duration = Duration::from_secs(1);

/// Resolves when the peer of `conn` looks dead: it has not sent a single datagram for
/// `max(1 s, 8 × RTT, floor)` although we have sent at least two since its last one.
/// `floor` comes from what this device measured of the relay (a relay that took
/// seconds per handshake under a storm, or that paused that long in recent requests
/// and then answered, may pause that long again without being dead). The longest
/// silence that ended with the relay heard again is kept in `longest`.
///
/// While a request is outstanding and the relay is quiet (it may be waiting on its
/// backend, with our request fully acknowledged), this sends a one-byte QUIC DATAGRAM
/// every 250 ms: DATAGRAM frames are ack-eliciting, so a live relay acknowledges each
/// within an RTT plus its ack delay (relays ignore the payload; docs/protocol.md §2.1),
/// and a dead or unreachable one stays silent. A crashed relay is thus detected in about
/// a second, instead of after the whole request timeout or the QUIC idle timeout, and a
/// relay that is merely slow to answer is never mistaken for a dead one. Time this task
/// itself was not scheduled (a starved device thread also delays reading the peer's
/// datagrams) counts at most two ticks, and a silence with the relay's datagrams
/// waiting unread in this device's socket (`unread`) starts over (counted in
/// `unread_count`), so a busy device does not blame the relay.
async fn dead_peer(
    conn: &quinn::Connection,
    unread: &Unread,
    floor: Duration,
    unread_count: &AtomicU64,
    longest: &Mutex<Duration>,
) -> Duration {
    const TICK: Duration = Duration::from_millis(50);
    const PING_EVERY: Duration = Duration::from_millis(250);
    let stats = conn.stats();
    let mut rx = stats.udp_rx.datagrams;
    let mut tx_at_rx = stats.udp_tx.datagrams;
    let mut silence = Duration::ZERO;
    let mut since_ping = Duration::ZERO;
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(TICK).await;
        let now = tokio::time::Instant::now();
        let step = (now - last).min(TICK * 2);
        last = now;
        let stats = conn.stats();
        if stats.udp_rx.datagrams != rx {
            rx = stats.udp_rx.datagrams;
            tx_at_rx = stats.udp_tx.datagrams;
            let mut l = lock(longest);
            *l = (*l).max(silence);
            drop(l);
            silence = Duration::ZERO;
            since_ping = Duration::ZERO;
            continue;
        }
        silence += step;
        since_ping += step;
        if silence >= PING_EVERY && since_ping >= PING_EVERY {
            // Fails only if the relay does not accept datagrams; then the rule below
            // still catches a relay that leaves our request data unacknowledged.
            let _ = conn.send_datagram(bytes::Bytes::from_static(&[0]));
            since_ping = Duration::ZERO;
        }
        let limit = (conn.rtt() * 8).max(SILENCE_MIN).max(floor);
        if silence >= limit && stats.udp_tx.datagrams >= tx_at_rx + 2 {
            if unread.from(conn.remote_address()) {
                // The relay spoke; this device has not read it yet.
                unread_count.fetch_add(1, Ordering::Relaxed);
                silence = Duration::ZERO;
                continue;
            }
            return silence;
        }
    }
}

/// How often [`scheduled_timeout`] looks at the clock.
const SCHEDULED_TICK: Duration = Duration::from_millis(250);

/// `fut`, or `None` once `limit` of this device's *scheduled* time has passed: time in
/// which this task could have run. A wake-up more than two ticks after the previous
/// one counts as two ticks ([`SCHEDULED_TICK`]), so a device whose threads were not
/// run (a host short of CPU, an app the OS paused) does not time out work that was
/// waiting on the device itself, not on the peer — and does not start that work over,
/// which would cost the peer as much again. A device that runs on time times out
/// after `limit`, rounded up to a tick.
async fn scheduled_timeout<F: std::future::Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let budget = async {
        let mut counted = Duration::ZERO;
        let mut last = tokio::time::Instant::now();
        while counted < limit {
            tokio::time::sleep(SCHEDULED_TICK.min(limit - counted)).await;
            let now = tokio::time::Instant::now();
            counted += (now - last).min(SCHEDULED_TICK * 2);
            last = now;
        }
    };
    tokio::select! {
        out = fut => Some(out),
        () = budget => None,
    }
}

/// What a QUIC handshake came to.
type QuicOutcome = Result<quinn::Connection, RequestError>;

/// Handshake times per relay, smoothed (EWMA, 1/4 weight on the newest), and the
/// connect timeout they give: at least the configured one, or [`HANDSHAKE_MARGIN`]
/// times the smoothed time this device measured to the relay, up to
/// [`MAX_MEASURED_CONNECT`]. A device on a slow link, or talking to a relay busy
/// enough to take a second per handshake, is not made to give up on handshakes that
/// were always going to take that long — and then to take the relay for unreachable.
#[derive(Debug, Default)]
struct HandshakeTimes {
    smoothed: HashMap<RelayId, Duration>,
    /// Over every relay: what a relay not measured yet is expected to take (the
    /// device's own link and load are part of every handshake).
    overall: Option<Duration>,
    /// Relays given a second handshake after a silent first one (see
    /// [`HandshakeTimes::second_chance`]). At most [`MAX_SECOND_CHANCES`].
    second_chances: std::collections::HashSet<RelayId>,
}

/// Relays remembered as given their second chance (a map holds a handful).
const MAX_SECOND_CHANCES: usize = 64;

/// The connect timeout is at least this many times the smoothed handshake time.
const HANDSHAKE_MARGIN: u32 = 3;

/// The measured connect timeout never exceeds this (the configured one may).
const MAX_MEASURED_CONNECT: Duration = Duration::from_secs(15);

impl HandshakeTimes {
    /// Whether a silent handshake timeout to `relay` gets another try before UDP is
    /// taken for blocked: once, while no handshake to it was ever measured. The
    /// timeout of a first handshake is a guess (the configured one), and a relay
    /// flooded by a storm of first handshakes — every device starting at once — may
    /// answer none of them in time; a network that blocks UDP costs one more timeout.
    fn second_chance(&mut self, relay: &RelayId) -> bool {
        if self.smoothed.contains_key(relay) || self.second_chances.contains(relay) {
            return false;
        }
        if self.second_chances.len() >= MAX_SECOND_CHANCES {
            self.second_chances.clear();
        }
        self.second_chances.insert(relay.clone());
        true
    }

    fn record(&mut self, relay: &RelayId, took: Duration) {
        let smooth = |s: &mut Duration| *s = (*s * 3 + took) / 4;
        smooth(self.smoothed.entry(relay.clone()).or_insert(took));
        smooth(self.overall.get_or_insert(took));
    }

    fn timeout(&self, relay: &RelayId, configured: Duration) -> Duration {
        let measured = self
            .smoothed
            .get(relay)
            .or(self.overall.as_ref())
            .map_or(Duration::ZERO, |s| s.saturating_mul(HANDSHAKE_MARGIN))
            .min(MAX_MEASURED_CONNECT);
        configured.max(measured)
    }
}

/// Per relay, the longest silence lately seen in an answered QUIC request: the relay
/// was alive through it, so a silence twice as long is needed before it is taken for
/// dead (up to [`MAX_PAUSE_ALLOWANCE`]). Each answered request folds its longest
/// silence in as `max(new, old × 7/8)`: one long pause is remembered for a few dozen
/// requests, then forgotten, so crash detection returns to about a second.
#[derive(Debug, Default)]
struct PauseMemory(HashMap<RelayId, Duration>);

/// The silence allowance learnt from pauses never exceeds this.
const MAX_PAUSE_ALLOWANCE: Duration = Duration::from_secs(10);

/// Relays remembered (a map holds a handful; more are forgotten wholesale).
const MAX_PAUSE_RELAYS: usize = 64;

impl PauseMemory {
    fn record(&mut self, relay: &RelayId, longest: Duration) {
        if !self.0.contains_key(relay) && self.0.len() >= MAX_PAUSE_RELAYS {
            self.0.clear();
        }
        let e = self.0.entry(relay.clone()).or_default();
        *e = longest.max(*e * 7 / 8);
    }

    fn allowance(&self, relay: &RelayId) -> Duration {
        self.0
            .get(relay)
            .map_or(Duration::ZERO, |p| p.saturating_mul(2))
            .min(MAX_PAUSE_ALLOWANCE)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("connections", &lock(&self.connections).len())
            .finish()
    }
}

impl Connector {
    /// A connector with `config`. Opens one UDP socket.
    pub fn new(config: TransportConfig) -> Result<Self, TransportSetupError> {
        Self::with_counters(config, Arc::default())
    }

    /// [`Connector::new`], counting in `counters` (shared with the caller, who reads
    /// them while the connector runs elsewhere).
    pub fn with_counters(
        config: TransportConfig,
        counters: Arc<ConnectorCounters>,
    ) -> Result<Self, TransportSetupError> {
        let pin_failures = counters.pin_failures.clone();
        let quic_tls = client_tls_counting(&config, &[ALPN], &pin_failures)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(quic_tls)
            .map_err(|e| TransportSetupError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(config.keep_alive));
        if let Ok(idle) = quinn::IdleTimeout::try_from(config.idle_timeout) {
            transport.max_idle_timeout(Some(idle));
        }
        client.transport_config(Arc::new(transport));
        let local = config
            .local_address
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let bind = SocketAddr::new(local, 0);
        let socket = std::net::UdpSocket::bind(bind).map_err(TransportSetupError::Endpoint)?;
        let unread = Unread::new(&socket).map_err(TransportSetupError::Endpoint)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let heard = Heard::default();
        let socket = Arc::new(HeardSocket::new(
            runtime
                .wrap_udp_socket(socket)
                .map_err(TransportSetupError::Endpoint)?,
            heard.clone(),
        ));
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket,
            runtime,
        )
        .map_err(TransportSetupError::Endpoint)?;
        endpoint.set_default_client_config(client);
        // HTTP/1.1 only: the fallback carries one small frame per request.
        let http_tls = client_tls_counting(&config, &[b"http/1.1"], &pin_failures)?;
        let http = HttpsClient::new(http_tls, config.connect_timeout, config.idle_timeout)
            .with_local_address(config.local_address);
        Ok(Connector {
            config,
            endpoint,
            http,
            connections: Mutex::new(HashMap::new()),
            connecting: Mutex::new(HashMap::new()),
            handshake_times: Mutex::new(HandshakeTimes::default()),
            pauses: Mutex::new(PauseMemory::default()),
            counters,
            heard,
            unread,
        })
    }

    /// Handshakes refused because no pinned key was in the relay's chain.
    pub fn pin_failures(&self) -> u64 {
        self.counters.pin_failures.load(Ordering::Relaxed)
    }

    /// Sends `frame` to `target` and returns the reply frame (not yet decoded).
    pub async fn request(&self, target: &Target, frame: &[u8]) -> Result<Vec<u8>, RequestError> {
        match target.transport {
            Transport::Quic => self.quic(target, frame).await,
            Transport::Https => self.https(target, frame).await,
        }
    }

    /// The QUIC connection to `target`'s relay, reused or new. While a handshake to the
    /// relay is in progress, callers wait for it and share its outcome.
    pub async fn quic_connection(
        &self,
        target: &Target,
    ) -> Result<quinn::Connection, RequestError> {
        let relay = &target.relay;
        {
            let mut cache = lock(&self.connections);
            if let Some((addr, c)) = cache.get(&relay.id) {
                if *addr == relay.quic_addr && c.close_reason().is_none() {
                    return Ok(c.clone());
                }
                // Closed, or made to an address the map no longer gives: requests still
                // on it finish; it closes when the last of them drops it.
                cache.remove(&relay.id);
            }
        }
        let attempt = lock(&self.connecting)
            .entry(relay.id.clone())
            .or_default()
            .clone();
        // One caller runs the handshake (another takes over if it is cancelled).
        let outcome = attempt.get_or_init(|| self.handshake(target)).await.clone();
        // The attempt is over: the next caller finds the connection in the cache, or
        // (after a failure) starts a new attempt.
        let mut connecting = lock(&self.connecting);
        if connecting
            .get(&relay.id)
            .is_some_and(|a| Arc::ptr_eq(a, &attempt))
        {
            connecting.remove(&relay.id);
        }
        outcome
    }

    /// One QUIC handshake to `target`'s relay; the connection is cached on success.
    async fn handshake(&self, target: &Target) -> QuicOutcome {
        let relay = &target.relay;
        let transport_err = |detail: String| RequestError::Transport {
            relay: relay.id.clone(),
            transport: Transport::Quic,
            detail,
        };
        let (host, addr) =
            resolve(&relay.quic_addr)
                .await
                .map_err(|detail| RequestError::Address {
                    relay: relay.id.clone(),
                    detail,
                })?;
        let heard_before = self.heard.watch(addr);
        let started = tokio::time::Instant::now();
        let connecting = self
            .endpoint
            .connect(addr, &host)
            .map_err(|e| transport_err(e.to_string()))?;
        let measured = lock(&self.handshake_times).timeout(&relay.id, self.config.connect_timeout);
        let timeout = target.connect_timeout(measured);
        let conn = match scheduled_timeout(timeout, connecting).await {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(classify(&relay.id, &e)),
            None => {
                // Before judging the relay, let this runtime's other tasks run once: the
                // endpoint may have datagrams waiting that it has not read yet.
                tokio::task::yield_now().await;
                let heard = self.heard.count(addr).saturating_sub(heard_before);
                // A timer that fires late, or the relay's datagrams still unread, mean
                // this device was too busy to tell; a busy device is not an unreachable
                // relay.
                let late = started.elapsed() > timeout + timeout / 2 || self.unread.from(addr);
                tracing::debug!(relay = %relay.id, ?timeout, heard, late, "quic handshake timed out");
                let counter = match (heard, late) {
                    (0, true) => &self.counters.handshake_timeouts_late,
                    (0, false) => &self.counters.handshake_timeouts_silent,
                    _ => &self.counters.handshake_timeouts_heard,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if late && heard == 0 {
                    return Err(RequestError::Undecided {
                        relay: relay.id.clone(),
                        detail: format!(
                            "handshake not finished within {timeout:?}, and this device was too busy to tell ({:?} passed)",
                            started.elapsed()
                        ),
                    });
                }
                if heard == 0 && lock(&self.handshake_times).second_chance(&relay.id) {
                    self.counters
                        .handshake_second_chances
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(RequestError::Undecided {
                        relay: relay.id.clone(),
                        detail: format!(
                            "first handshake not finished within {timeout:?}, nothing heard: \
                             tried again with more time before UDP is taken for blocked"
                        ),
                    });
                }
                return Err(if heard > 0 {
                    // The relay answered (a Retry, its first flight) but did not finish:
                    // up and busy, not unreachable.
                    RequestError::Busy {
                        relay: relay.id.clone(),
                        transport: Transport::Quic,
                        detail: format!(
                            "handshake not finished within {timeout:?}; {heard} datagrams from the relay"
                        ),
                    }
                } else {
                    transport_err(format!("handshake timed out ({timeout:?}); nothing heard"))
                });
            }
        };
        let took = started.elapsed();
        lock(&self.handshake_times).record(&relay.id, took);
        tracing::debug!(relay = %relay.id, handshake_ms = took.as_millis() as u64, "quic connected");
        lock(&self.connections).insert(relay.id.clone(), (relay.quic_addr.clone(), conn.clone()));
        Ok(conn)
    }

    async fn quic(&self, target: &Target, frame: &[u8]) -> Result<Vec<u8>, RequestError> {
        let conn = self.quic_connection(target).await?;
        let relay = target.relay.id.clone();
        // Three times the handshake time measured to this relay (the connect timeout
        // without its configured minimum): a relay slow to handshake is slow to answer;
        // twice the longest pause it came back from lately.
        let floor = lock(&self.handshake_times)
            .timeout(&relay, Duration::ZERO)
            .max(lock(&self.pauses).allowance(&relay));
        let longest = Mutex::new(Duration::ZERO);
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| classify(&relay, &e))?;
            send.write_all(frame).await.map_err(|e| {
                let code = match &e {
                    quinn::WriteError::Stopped(code) => Some(*code),
                    _ => None,
                };
                stream_err(&relay, &conn, code, e.to_string())
            })?;
            send.finish()
                .map_err(|e| quic_err(&relay, &conn, e.to_string()))?;
            recv.read_to_end(MAX_REPLY).await.map_err(|e| {
                let code = match &e {
                    quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) => Some(*code),
                    _ => None,
                };
                stream_err(&relay, &conn, code, e.to_string())
            })
        };
        let exchange = async {
            tokio::select! {
                r = exchange => r,
                silence = dead_peer(&conn, &self.unread, floor, &self.counters.silences_unread, &longest) => {
                    self.counters.relay_silences.fetch_add(1, Ordering::Relaxed);
                    conn.close(0u32.into(), b"peer silent");
                    Err(RequestError::Unresponsive { relay: relay.clone(), silence })
                }
            }
        };
        let outcome = tokio::time::timeout(self.config.request_timeout, exchange).await;
        if matches!(outcome, Ok(Ok(_))) {
            lock(&self.pauses).record(&relay, *lock(&longest));
        }
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            // The stream was refused; the connection is fine.
            Ok(Err(e @ RequestError::Busy { .. })) => Err(e),
            Ok(Err(e)) => {
                lock(&self.connections).remove(&target.relay.id);
                Err(e)
            }
            Err(_) => {
                // The relay kept acknowledging (else the silence rule would have fired
                // first): it is up but slow to answer, so the connection is kept and
                // the request waits and goes to it again.
                Err(RequestError::Busy {
                    relay: target.relay.id.clone(),
                    transport: Transport::Quic,
                    detail: format!("no reply within {:?}", self.config.request_timeout),
                })
            }
        }
    }

    async fn https(&self, target: &Target, frame: &[u8]) -> Result<Vec<u8>, RequestError> {
        let relay = &target.relay;
        let exchange = async {
            let response = self
                .http
                .post(&relay.https_url, HTTP_RPC_PATH, frame)
                .await?;
            response.bytes(&self.http, MAX_REPLY).await
        };
        match tokio::time::timeout(self.config.request_timeout, exchange).await {
            Ok(r) => r.map_err(|e| https_err(&relay.id, e)),
            Err(_) => Err(https_err(
                &relay.id,
                HttpsError::Transport("no reply in time".into()),
            )),
        }
    }

    /// Opens a push subscription to `target` with `frame` (a `SubscribeRequest`):
    /// a QUIC stream on the relay's cached connection, or `POST /v1/subscribe` with a
    /// streamed response. Read the notices with [`NoticeStream::next`].
    pub async fn subscribe(
        &self,
        target: &Target,
        frame: &[u8],
    ) -> Result<NoticeStream, RequestError> {
        let relay = target.relay.id.clone();
        match target.transport {
            Transport::Quic => {
                let conn = self.quic_connection(target).await?;
                let open = async {
                    let (mut send, recv) =
                        conn.open_bi().await.map_err(|e| classify(&relay, &e))?;
                    send.write_all(frame)
                        .await
                        .map_err(|e| quic_err(&relay, &conn, e.to_string()))?;
                    send.finish()
                        .map_err(|e| quic_err(&relay, &conn, e.to_string()))?;
                    Ok::<_, RequestError>(recv)
                };
                let recv = match tokio::time::timeout(self.config.request_timeout, open).await {
                    Ok(Ok(recv)) => recv,
                    Ok(Err(e)) => {
                        lock(&self.connections).remove(&relay);
                        return Err(e);
                    }
                    Err(_) => {
                        lock(&self.connections).remove(&relay);
                        return Err(RequestError::Transport {
                            relay,
                            transport: Transport::Quic,
                            detail: "opening the push stream timed out".into(),
                        });
                    }
                };
                Ok(NoticeStream {
                    relay,
                    source: Source::Quic(conn, recv),
                    decoder: FrameDecoder::new(MAX_REPLY),
                })
            }
            Transport::Https => {
                // The response is a long-lived stream: only its head has a deadline (the
                // first notice is awaited with the request timeout by the caller).
                let open = self
                    .http
                    .post(&target.relay.https_url, HTTP_SUBSCRIBE_PATH, frame);
                let response = match tokio::time::timeout(self.config.request_timeout, open).await {
                    Ok(r) => r.map_err(|e| https_err(&relay, e))?,
                    Err(_) => {
                        return Err(https_err(
                            &relay,
                            HttpsError::Transport("opening the push stream timed out".into()),
                        ))
                    }
                };
                Ok(NoticeStream {
                    relay,
                    source: Source::Https(response),
                    decoder: FrameDecoder::new(MAX_REPLY),
                })
            }
        }
    }

    /// Closes every QUIC connection (politely) and waits briefly for the closes to go
    /// out.
    pub async fn close(&self) {
        let all: Vec<quinn::Connection> = lock(&self.connections)
            .drain()
            .map(|(_, (_, c))| c)
            .collect();
        for c in all {
            c.close(0u32.into(), b"bye");
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), self.endpoint.wait_idle()).await;
    }
}

enum Source {
    Quic(quinn::Connection, quinn::RecvStream),
    Https(crate::net::https::Response),
}

/// An open push subscription: the notices a relay sends (protocol §5.6).
pub struct NoticeStream {
    relay: RelayId,
    source: Source,
    decoder: FrameDecoder,
}

impl std::fmt::Debug for NoticeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoticeStream")
            .field("relay", &self.relay)
            .finish()
    }
}

/// What a push stream delivered.
#[derive(Debug)]
pub enum StreamItem {
    /// A notice.
    Notice(PushNotice),
    /// The relay refused the subscription (`ErrorReply`).
    Refused(tern_protocol::ErrorReply),
}

impl NoticeStream {
    /// The next item; `Ok(None)` when the relay ended the stream. A framing or
    /// decoding error ends the stream (it is out of sync).
    pub async fn next(&mut self) -> Result<Option<StreamItem>, RequestError> {
        let codec = CodecConfig::device();
        loop {
            let transport = match self.source {
                Source::Quic(..) => Transport::Quic,
                Source::Https(_) => Transport::Https,
            };
            let err = |detail: String| RequestError::Transport {
                relay: self.relay.clone(),
                transport,
                detail,
            };
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    return match Message::decode(&frame, &codec) {
                        Ok(Message::PushNotice(n)) => Ok(Some(StreamItem::Notice(n))),
                        Ok(Message::ErrorReply(e)) => Ok(Some(StreamItem::Refused(e))),
                        Ok(other) => Err(err(format!(
                            "unexpected {:?} on the push stream",
                            other.kind()
                        ))),
                        Err(e) => Err(err(format!("push stream: {e}"))),
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(err(format!("push stream: {e}"))),
            }
            let chunk = match &mut self.source {
                Source::Quic(conn, recv) => {
                    let mut buf = [0u8; 4096];
                    match recv.read(&mut buf).await {
                        Ok(Some(n)) => buf[..n].to_vec(),
                        Ok(None) => return Ok(None),
                        Err(e) => return Err(quic_err(&self.relay, conn, e.to_string())),
                    }
                }
                Source::Https(response) => match response.chunk().await {
                    Ok(Some(bytes)) => bytes.to_vec(),
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(https_err(&self.relay, e)),
                },
            };
            self.decoder.push(&chunk);
        }
    }
}

fn https_err(relay: &RelayId, e: HttpsError) -> RequestError {
    match e {
        HttpsError::Address(detail) => RequestError::Address {
            relay: relay.clone(),
            detail,
        },
        HttpsError::Transport(detail) => RequestError::Transport {
            relay: relay.clone(),
            transport: Transport::Https,
            detail,
        },
        HttpsError::Busy(detail) => RequestError::Busy {
            relay: relay.clone(),
            transport: Transport::Https,
            detail,
        },
    }
}

/// A request stream failed: refused by the relay under load (`busy`, `read_timeout`:
/// back-pressure), or as [`quic_err`] says.
fn stream_err(
    relay: &RelayId,
    conn: &quinn::Connection,
    code: Option<quinn::VarInt>,
    detail: String,
) -> RequestError {
    let busy = [STREAM_BUSY, STREAM_READ_TIMEOUT].map(quinn::VarInt::from_u32);
    match code {
        Some(code) if conn.close_reason().is_none() && busy.contains(&code) => RequestError::Busy {
            relay: relay.clone(),
            transport: Transport::Quic,
            detail,
        },
        _ => quic_err(relay, conn, detail),
    }
}

fn quic_err(relay: &RelayId, conn: &quinn::Connection, detail: String) -> RequestError {
    match conn.close_reason() {
        Some(reason) => classify(relay, &reason),
        None => RequestError::Transport {
            relay: relay.clone(),
            transport: Transport::Quic,
            detail,
        },
    }
}

fn classify(relay: &RelayId, e: &quinn::ConnectionError) -> RequestError {
    match e {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from_u32(CLOSE_DRAINING) =>
        {
            RequestError::Draining(relay.clone())
        }
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from_u32(CLOSE_OVERLOADED) =>
        {
            RequestError::Overloaded(relay.clone())
        }
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            // At its handshake limit: up, pushing back (§2.3 QUIC refusals).
            RequestError::Busy {
                relay: relay.clone(),
                transport: Transport::Quic,
                detail: e.to_string(),
            }
        }
        other => RequestError::Transport {
            relay: relay.clone(),
            transport: Transport::Quic,
            detail: other.to_string(),
        },
    }
}

/// Resolves `host:port` to the TLS server name and an address.
async fn resolve(quic_addr: &str) -> Result<(String, SocketAddr), String> {
    let (host, _) = quic_addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{quic_addr:?} is not host:port"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addr = tokio::net::lookup_host(quic_addr)
        .await
        .map_err(|e| format!("{quic_addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{quic_addr}: no address"))?;
    Ok((host, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_the_builtin_store_plus_extra_cas() {
        let tls = client_tls(&TransportConfig::default(), &[ALPN]).unwrap();
        assert_eq!(tls.alpn_protocols, vec![ALPN.to_vec()]);
        let e = client_tls(&TransportConfig::default().with_only_ca(""), &[ALPN]).unwrap_err();
        assert!(matches!(e, TransportSetupError::NoRoots), "{e}");
        let e = client_tls(
            &TransportConfig::default().with_extra_ca(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            ),
            &[ALPN],
        )
        .unwrap_err();
        assert!(matches!(e, TransportSetupError::Certificate(_)), "{e}");
    }

    /// A loopback relay stand-in with a self-signed certificate for 127.0.0.1: QUIC
    /// (ALPN `tern/1`) and HTTPS (`POST /v1/rpc`) both answer a request with its own
    /// bytes. Returns the target node, the certificate (PEM) and its pin.
    async fn echo_relay() -> (tern_protocol::RelayNode, String, String) {
        let (node, pem, pin, _) = counting_echo_relay().await;
        (node, pem, pin)
    }

    /// [`echo_relay`], also counting the QUIC connection attempts it accepted.
    async fn counting_echo_relay() -> (
        tern_protocol::RelayNode,
        String,
        String,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use http_body_util::{BodyExt, Full};
        use rustls_pki_types::PrivateKeyDer;

        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let pin = crate::net::pinning::Pin::of_certificate(cert.cert.der())
            .unwrap()
            .to_string();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = |alpn: &[u8]| {
            let mut c = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key.clone_key())
                .unwrap();
            c.alpn_protocols = vec![alpn.to_vec()];
            c
        };
        // QUIC: echo each bidirectional stream.
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server(ALPN)).unwrap();
        let endpoint = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(quic)),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .unwrap();
        let quic_addr = endpoint.local_addr().unwrap();
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = attempts.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let body = recv.read_to_end(MAX_REPLY).await.unwrap_or_default();
                        let _ = send.write_all(&body).await;
                        let _ = send.finish();
                    }
                });
            }
        });
        // HTTPS: echo each POST body.
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server(b"http/1.1")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let https_port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(body)))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let node = tern_protocol::RelayNode {
            id: RelayId::new("r1"),
            quic_addr: quic_addr.to_string(),
            https_url: format!("https://127.0.0.1:{https_port}"),
            weight: 1,
            state: tern_protocol::NodeState::Active,
        };
        (node, cert.cert.pem(), pin, attempts)
    }

    /// On a device that runs on time, the scheduled timeout is the plain one.
    #[tokio::test(start_paused = true)]
    async fn a_scheduled_timeout_on_time_is_its_limit() {
        let started = tokio::time::Instant::now();
        let out =
            scheduled_timeout(Duration::from_millis(1100), std::future::pending::<()>()).await;
        assert_eq!(out, None);
        assert_eq!(started.elapsed(), Duration::from_millis(1100));
        assert_eq!(
            scheduled_timeout(Duration::from_secs(1), async { 7 }).await,
            Some(7)
        );
    }

    /// Time in which the device's runtime did not run counts two ticks at most: after
    /// a 2 s stall, a 1 s timeout still waits for most of its second.
    #[test]
    fn a_scheduled_timeout_does_not_count_a_stalled_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (plain, scheduled) = rt.block_on(async {
            let started = tokio::time::Instant::now();
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Blocks the only thread: no task of this runtime runs for 2 s.
                std::thread::sleep(Duration::from_secs(2));
            });
            let plain = async {
                let r = tokio::time::timeout(Duration::from_secs(1), std::future::pending::<()>())
                    .await;
                assert!(r.is_err());
                started.elapsed()
            };
            let scheduled = async {
                let r =
                    scheduled_timeout(Duration::from_secs(1), std::future::pending::<()>()).await;
                assert_eq!(r, None);
                started.elapsed()
            };
            tokio::join!(plain, scheduled)
        });
        // The plain timeout fires as soon as the thread runs again; the scheduled one
        // has counted 0.5 s of the stall and waits about 0.5 s more.
        assert!(plain >= Duration::from_millis(2100), "{plain:?}");
        assert!(
            scheduled >= plain + Duration::from_millis(400),
            "{plain:?} {scheduled:?}"
        );
    }

    #[test]
    fn the_connect_timeout_grows_with_measured_handshakes_within_bounds() {
        let (r1, r2) = (RelayId::new("r1"), RelayId::new("r2"));
        let configured = Duration::from_secs(3);
        let mut t = HandshakeTimes::default();
        assert_eq!(t.timeout(&r1, configured), configured, "nothing measured");
        t.record(&r1, Duration::from_millis(20));
        assert_eq!(t.timeout(&r1, configured), configured, "fast handshakes");
        // Slow handshakes to r1: the timeout follows (smoothed).
        for _ in 0..20 {
            t.record(&r1, Duration::from_secs(2));
        }
        let grown = t.timeout(&r1, configured);
        assert!(
            grown > Duration::from_millis(5900) && grown <= Duration::from_secs(6),
            "{grown:?}"
        );
        // A relay not measured yet is expected to take what the others took.
        assert_eq!(t.timeout(&r2, configured), grown);
        for _ in 0..20 {
            t.record(&r2, Duration::from_millis(10));
        }
        assert_eq!(t.timeout(&r2, configured), configured);
        // Bounded, whatever was measured; a longer configured timeout stands.
        t.record(&r1, Duration::from_secs(3600));
        assert_eq!(t.timeout(&r1, configured), MAX_MEASURED_CONNECT);
        assert_eq!(
            t.timeout(&r1, Duration::from_secs(20)),
            Duration::from_secs(20)
        );
        // One slow handshake moves it by a quarter.
        let mut t = HandshakeTimes::default();
        let r2 = RelayId::new("r2");
        t.record(&r2, Duration::from_millis(400));
        t.record(&r2, Duration::from_millis(2000));
        assert_eq!(t.timeout(&r2, Duration::ZERO), Duration::from_millis(2400));
    }

    /// Requests that need a connection while one is being made wait for it: sixteen
    /// at once make one handshake.
    #[tokio::test]
    async fn concurrent_requests_share_one_handshake() {
        let (node, pem, _, attempts) = counting_echo_relay().await;
        let connector =
            Arc::new(Connector::new(TransportConfig::default().with_only_ca(&pem)).unwrap());
        let target = Target {
            relay: node,
            transport: Transport::Quic,
            rank: 0,
            connect_permille: 1000,
        };
        let requests: Vec<_> = (0..16)
            .map(|i| {
                let (connector, target) = (connector.clone(), target.clone());
                tokio::spawn(async move {
                    let body = format!("ping {i}");
                    let reply = connector.request(&target, body.as_bytes()).await.unwrap();
                    assert_eq!(reply, body.as_bytes());
                })
            })
            .collect();
        for r in requests {
            r.await.unwrap();
        }
        assert_eq!(attempts.load(Ordering::Relaxed), 1, "one handshake for all");
        // A later request reuses the connection.
        connector.request(&target, b"again").await.unwrap();
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }

    /// Sends one request over each transport with `pins`; the outcomes and the
    /// connector's pin-failure count.
    async fn pinned_requests(
        node: &tern_protocol::RelayNode,
        pem: &str,
        pins: PinSet,
    ) -> (
        Result<Vec<u8>, RequestError>,
        Result<Vec<u8>, RequestError>,
        u64,
    ) {
        let config = TransportConfig::default()
            .with_only_ca(pem)
            .with_connect_timeout(Duration::from_secs(10))
            .with_request_timeout(Duration::from_secs(20))
            .with_pins(pins);
        let connector = Connector::new(config).unwrap();
        let target = |transport| Target {
            relay: node.clone(),
            transport,
            rank: 0,
            connect_permille: 1000,
        };
        let quic = connector.request(&target(Transport::Quic), b"ping").await;
        let https = connector.request(&target(Transport::Https), b"ping").await;
        let failures = connector.pin_failures();
        connector.close().await;
        (quic, https, failures)
    }

    /// A QUIC handshake that times out: `Busy` when the relay was heard from during it
    /// (it answered, but did not finish); when nothing came back, one more try for a
    /// relay never measured, then a transport failure.
    #[tokio::test]
    async fn a_handshake_timeout_is_busy_only_when_the_relay_answered() {
        // Answers every datagram with one of its own (never a valid QUIC reply): a relay
        // that is there but does not finish the handshake.
        let answering = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let answering_addr = answering.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((_, from)) = answering.recv_from(&mut buf).await {
                let _ = answering.send_to(b"busy", from).await;
            }
        });
        // Receives and never answers: a relay that is gone (or UDP dropped).
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let connector =
            Connector::new(TransportConfig::default().with_connect_timeout(Duration::from_secs(2)))
                .unwrap();
        let target = |addr: SocketAddr| Target {
            relay: tern_protocol::RelayNode {
                id: RelayId::new("r1"),
                quic_addr: addr.to_string(),
                https_url: "https://127.0.0.1:1".into(),
                weight: 1,
                state: tern_protocol::NodeState::Active,
            },
            transport: Transport::Quic,
            rank: 0,
            connect_permille: 1000,
        };
        let e = connector
            .request(&target(answering_addr), b"x")
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::Busy { .. }), "{e}");
        assert_eq!(e.failure(), Failure::Busy);
        // Never heard, never measured: one more try before UDP is taken for blocked.
        let e = connector
            .request(&target(silent_addr), b"x")
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::Undecided { .. }), "{e}");
        assert_eq!(e.failure(), Failure::Undecided);
        let e = connector
            .request(&target(silent_addr), b"x")
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::Transport { .. }), "{e}");
        assert_eq!(e.failure(), Failure::Transport);
        let c = &connector.counters;
        assert_eq!(c.handshake_timeouts_silent.load(Ordering::Relaxed), 2);
        assert_eq!(c.handshake_second_chances.load(Ordering::Relaxed), 1);
        drop(silent);
    }

    /// With a local address set, QUIC datagrams and HTTPS connections come from it.
    #[tokio::test]
    async fn sockets_bind_to_the_local_address_when_one_is_set() {
        let local = std::net::IpAddr::from([127, 1, 2, 3]);
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = tern_protocol::RelayNode {
            id: RelayId::new("r1"),
            quic_addr: udp.local_addr().unwrap().to_string(),
            https_url: format!("https://{}", tcp.local_addr().unwrap()),
            weight: 1,
            state: tern_protocol::NodeState::Active,
        };
        let connector = Connector::new(
            TransportConfig::default()
                .with_connect_timeout(Duration::from_millis(300))
                .with_local_address(local),
        )
        .unwrap();
        let target = |transport| Target {
            relay: node.clone(),
            transport,
            rank: 0,
            connect_permille: 1000,
        };
        let (quic_target, https_target) = (target(Transport::Quic), target(Transport::Https));
        let (quic, (_, from)) = tokio::join!(connector.request(&quic_target, b"x"), async {
            let mut buf = [0u8; 2048];
            udp.recv_from(&mut buf).await.unwrap()
        });
        assert!(quic.is_err());
        assert_eq!(from.ip(), local);
        let (https, accepted) = tokio::join!(connector.request(&https_target, b"x"), tcp.accept());
        let (conn, peer) = accepted.unwrap();
        drop(conn);
        assert!(https.is_err());
        assert_eq!(peer.ip(), local);
        connector.close().await;
    }

    #[test]
    fn refusals_under_load_are_back_pressure() {
        let relay = RelayId::new("r1");
        let refused = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::CONNECTION_REFUSED,
            frame_type: None,
            reason: bytes::Bytes::new(),
        });
        assert_eq!(classify(&relay, &refused).failure(), Failure::Busy);
        let app_close = |code: u32| {
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: bytes::Bytes::new(),
            })
        };
        // `overloaded`: back off and prefer the next relay (§2.1), not HTTPS.
        assert_eq!(
            classify(&relay, &app_close(CLOSE_OVERLOADED)).failure(),
            Failure::Unresponsive
        );
        assert_eq!(
            classify(&relay, &app_close(CLOSE_DRAINING)).failure(),
            Failure::Draining
        );
        assert_eq!(
            classify(&relay, &app_close(0)).failure(),
            Failure::Transport
        );
        assert_eq!(
            classify(&relay, &quinn::ConnectionError::TimedOut).failure(),
            Failure::Transport
        );
    }

    const STRANGER: &str = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    /// Forwards UDP between a device and `to` until `silent` is set, then drops
    /// everything both ways (a relay that stopped mid-request, seen from the device).
    async fn cuttable_path(
        to: SocketAddr,
        silent: Arc<std::sync::atomic::AtomicBool>,
    ) -> SocketAddr {
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(to).await.unwrap();
        let addr = front.local_addr().unwrap();
        let device = Arc::new(Mutex::new(None::<SocketAddr>));
        let (f, b, d, cut) = (front.clone(), back.clone(), device.clone(), silent.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                *lock(&d) = Some(from);
                if !cut.load(Ordering::Relaxed) {
                    let _ = b.send(&buf[..n]).await;
                }
            }
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *lock(&device);
                if let (false, Some(to)) = (silent.load(Ordering::Relaxed), to) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
        addr
    }

    /// A relay that goes silent with a request outstanding ends the request as
    /// `Unresponsive` (back it off, try the next relay) long before the request
    /// timeout, and is counted; a relay that answers is not.
    #[tokio::test]
    async fn a_relay_silent_mid_request_is_unresponsive_and_counted() {
        let (node, pem, _) = echo_relay().await;
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let quic_addr: SocketAddr = node.quic_addr.parse().unwrap();
        let path = cuttable_path(quic_addr, silent.clone()).await;
        let node = tern_protocol::RelayNode {
            quic_addr: path.to_string(),
            ..node
        };
        let connector = Connector::new(
            TransportConfig::default()
                .with_only_ca(&pem)
                .with_connect_timeout(Duration::from_secs(10))
                .with_request_timeout(Duration::from_secs(120)),
        )
        .unwrap();
        let target = Target {
            relay: node,
            transport: Transport::Quic,
            rank: 0,
            connect_permille: 1000,
        };
        assert_eq!(connector.request(&target, b"one").await.unwrap(), b"one");
        silent.store(true, Ordering::Relaxed);
        let e = connector.request(&target, b"two").await.unwrap_err();
        assert!(matches!(e, RequestError::Unresponsive { .. }), "{e}");
        assert_eq!(e.failure(), Failure::Unresponsive);
        let c = &connector.counters;
        assert_eq!(c.relay_silences.load(Ordering::Relaxed), 1);
        assert_eq!(c.silences_unread.load(Ordering::Relaxed), 0);
        connector.close().await;
    }

    #[tokio::test]
    async fn pinned_requests_over_quic_and_https() {
        let (node, pem, pin) = echo_relay().await;

        // The relay's key pinned: both transports work.
        let (quic, https, failures) =
            pinned_requests(&node, &pem, PinSet::parse([&pin]).unwrap()).await;
        assert_eq!(quic.unwrap(), b"ping");
        assert_eq!(https.unwrap(), b"ping");
        assert_eq!(failures, 0);

        // A rotated set (an old key no longer served, and the relay's): both work.
        let (quic, https, failures) =
            pinned_requests(&node, &pem, PinSet::parse([STRANGER, &pin]).unwrap()).await;
        assert_eq!(quic.unwrap(), b"ping");
        assert_eq!(https.unwrap(), b"ping");
        assert_eq!(failures, 0);

        // No pinned key in the chain: both refused at the handshake as transport
        // failures (the uploader keeps the batch and retries), and counted.
        let (quic, https, failures) =
            pinned_requests(&node, &pem, PinSet::parse([STRANGER]).unwrap()).await;
        for (name, result) in [("quic", quic), ("https", https)] {
            let e = result.unwrap_err();
            assert!(matches!(e, RequestError::Transport { .. }), "{name}: {e}");
            assert_eq!(e.failure(), Failure::Transport, "{name}");
        }
        assert_eq!(failures, 2);

        // The same pins past their expiry: not enforced.
        let expired = PinSet::parse([STRANGER])
            .unwrap()
            .expiring_at(std::time::UNIX_EPOCH + Duration::from_secs(1));
        let (quic, https, failures) = pinned_requests(&node, &pem, expired).await;
        assert_eq!(quic.unwrap(), b"ping");
        assert_eq!(https.unwrap(), b"ping");
        assert_eq!(failures, 0);
    }

    #[test]
    fn pauses_a_relay_came_back_from_raise_its_allowance_then_fade() {
        let (r1, r2) = (RelayId::new("r1"), RelayId::new("r2"));
        let mut p = PauseMemory::default();
        assert_eq!(p.allowance(&r1), Duration::ZERO);
        p.record(&r1, Duration::from_millis(1600));
        assert_eq!(p.allowance(&r1), Duration::from_millis(3200));
        assert_eq!(p.allowance(&r2), Duration::ZERO, "per relay");
        // Quick requests: the allowance decays by 1/8 each, below a second in ten.
        for _ in 0..10 {
            p.record(&r1, Duration::from_millis(20));
        }
        assert!(
            p.allowance(&r1) < Duration::from_secs(1),
            "{:?}",
            p.allowance(&r1)
        );
        // Never beyond the cap, and a bounded map.
        p.record(&r1, Duration::from_secs(60));
        assert_eq!(p.allowance(&r1), MAX_PAUSE_ALLOWANCE);
        for i in 0..200 {
            p.record(&RelayId::new(format!("x{i}")), Duration::from_secs(1));
        }
        assert!(p.0.len() <= MAX_PAUSE_RELAYS);
    }

    #[tokio::test]
    async fn addresses_are_checked() {
        assert!(resolve("no-port").await.is_err());
        let (host, addr) = resolve("127.0.0.1:4433").await.unwrap();
        assert_eq!(host, "127.0.0.1");
        assert_eq!(addr.port(), 4433);
        let (host, _) = resolve("[::1]:4433").await.unwrap();
        assert_eq!(host, "::1");
    }
}
