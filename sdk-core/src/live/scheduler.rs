//! When to fetch the config bundle and when to (re)open the push subscription
//! (sans-IO).
//!
//! [`LiveScheduler`] never opens a socket or reads the clock: the uploader thread feeds
//! it what happened (`handle_*(…, now)`) and asks it what to do ([`LiveScheduler::poll`])
//! and when to ask again ([`LiveScheduler::poll_timeout`]).
//!
//! # Fetching
//!
//! * Once started ([`LiveScheduler::handle_start`], after the cached bundle was loaded
//!   from SQLite), one fetch at once, then one every `refresh_interval` (jittered by up
//!   to a tenth, so a fleet does not poll in step).
//! * A push notice that the bundle changed (`ConfigChanged`, or `Subscribed` naming an
//!   ETag other than the one held) asks for a fetch after `debounce`: a burst of notices
//!   costs one fetch. A notice arriving during a fetch makes one more fetch follow it.
//! * A failed fetch (transport) is retried after a full-jitter exponential backoff
//!   (`retry`); a `Retry{after}` reply waits at least `after` (also for notices); a
//!   refusal that is the request's own fault (`Rejected`) waits `rejected_wait`; a
//!   refusal that may be the server's (`Refused`: bad credentials, unknown app, an
//!   unknown reason) waits long, jittered and capped (`refusal`), growing while it
//!   repeats. Either way the cached bundle stays in use.
//! * The app coming to the foreground fetches when the last successful fetch is older
//!   than `foreground_min_age`.
//! * While the network is down nothing is fetched; when it comes back, a fetch goes at
//!   once and the backoff is forgotten.
//!
//! # The push subscription
//!
//! One subscription is wanted while started and the network is up. When it ends or
//! cannot be opened it is reopened after a backoff (`resubscribe`, full jitter); the
//! backoff resets when a subscription delivers its first notice.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::policy::schedule::{RefusalPolicy, RetryPolicy};

/// Live-config settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LiveConfig {
    /// Fetch the bundle this often (default 5 minutes; push notices fetch sooner).
    pub refresh_interval: Duration,
    /// Wait after a change notice before fetching, to coalesce bursts (default 100 ms).
    pub debounce: Duration,
    /// Backoff after failed fetches.
    pub retry: RetryPolicy,
    /// Backoff between attempts to (re)open the push subscription.
    pub resubscribe: RetryPolicy,
    /// Wait after a config request refused for its own fault (default 1 hour).
    pub rejected_wait: Duration,
    /// Wait after config requests refused for a reason that may be the server's.
    pub refusal: RefusalPolicy,
    /// Coming to the foreground fetches when the last fetch is older (default 60 s).
    pub foreground_min_age: Duration,
    /// Keep a push subscription open (default true).
    pub push: bool,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            refresh_interval: Duration::from_secs(5 * 60),
            debounce: Duration::from_millis(100),
            retry: RetryPolicy::default(),
            resubscribe: RetryPolicy::default()
                .with_base(Duration::from_millis(500))
                .with_cap(Duration::from_secs(60)),
            rejected_wait: Duration::from_secs(3600),
            refusal: RefusalPolicy::default(),
            foreground_min_age: Duration::from_secs(60),
            push: true,
        }
    }
}

impl LiveConfig {
    /// Sets the refresh interval.
    pub fn with_refresh_interval(mut self, every: Duration) -> Self {
        self.refresh_interval = every;
        self
    }

    /// Sets the debounce of change notices.
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Sets the fetch backoff.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the resubscribe backoff.
    pub fn with_resubscribe(mut self, retry: RetryPolicy) -> Self {
        self.resubscribe = retry;
        self
    }

    /// Sets the wait after refusals that may be the server's fault.
    pub fn with_refusal(mut self, refusal: RefusalPolicy) -> Self {
        self.refusal = refusal;
        self
    }

    /// Keeps (`true`) or does not keep a push subscription.
    pub fn with_push(mut self, push: bool) -> Self {
        self.push = push;
        self
    }
}

/// What a fetch came back with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchResult {
    /// A new bundle (installed by the caller).
    Modified,
    /// The held bundle is current.
    NotModified,
    /// The relay asked to wait.
    Retry {
        /// At least this long.
        after: Duration,
    },
    /// Refused for the request's own fault (`RejectReason::is_request_fault`).
    Rejected,
    /// Refused for a reason that may be the server's (bad credentials, unknown app,
    /// an unknown reason).
    Refused,
    /// No relay answered.
    Failed,
}

/// What the driver should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveAction {
    /// Send one config request (report with [`LiveScheduler::handle_fetched`]).
    Fetch,
    /// Open the push subscription (report with
    /// [`LiveScheduler::handle_subscription_ended`] when it ends).
    Subscribe,
}

/// Counters of the scheduler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveCounters {
    /// Fetches started.
    pub fetches: u64,
    /// Fetches that returned a new bundle.
    pub modified: u64,
    /// Fetches answered `not_modified`.
    pub not_modified: u64,
    /// Fetches that failed, were told to retry or were rejected.
    pub failures: u64,
    /// Subscriptions opened.
    pub subscriptions: u64,
}

/// The live-config scheduler. See the module docs.
#[derive(Debug)]
pub struct LiveScheduler {
    config: LiveConfig,
    rng: SmallRng,
    started: bool,
    network: bool,
    in_flight: bool,
    /// A change was announced during the fetch in flight: fetch again after it.
    again: bool,
    /// The next fetch (regular, backoff or debounced notice).
    next_fetch: Option<Instant>,
    /// No fetch before this (server `Retry{after}`, rejection).
    not_before: Option<Instant>,
    failures: u32,
    /// Consecutive `Refused` fetches.
    refusals: u32,
    last_success: Option<Instant>,
    sub_open: bool,
    sub_failures: u32,
    next_subscribe: Option<Instant>,
    counters: LiveCounters,
}

impl LiveScheduler {
    /// A scheduler with `config`; `seed` drives the jitter.
    pub fn new(config: LiveConfig, seed: u64) -> Self {
        LiveScheduler {
            config,
            rng: SmallRng::seed_from_u64(seed),
            started: false,
            network: true,
            in_flight: false,
            again: false,
            next_fetch: None,
            not_before: None,
            failures: 0,
            refusals: 0,
            last_success: None,
            sub_open: false,
            sub_failures: 0,
            next_subscribe: None,
            counters: LiveCounters::default(),
        }
    }

    /// Counters.
    pub fn counters(&self) -> LiveCounters {
        self.counters
    }

    /// Whether [`LiveScheduler::handle_start`] was called.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// The cached bundle is loaded: fetch at once and subscribe.
    pub fn handle_start(&mut self, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        self.next_fetch = Some(now);
        if self.config.push {
            self.next_subscribe = Some(now);
        }
    }

    fn jitter(&mut self, ceiling: Duration) -> Duration {
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }

    fn regular(&mut self, now: Instant) -> Instant {
        let every = self.config.refresh_interval;
        let spread = self.jitter(every / 10);
        now + every - spread
    }

    fn schedule_fetch(&mut self, at: Instant) {
        self.next_fetch = Some(self.next_fetch.map_or(at, |t| t.min(at)));
    }

    /// A fetch finished.
    pub fn handle_fetched(&mut self, result: FetchResult, now: Instant) {
        self.in_flight = false;
        let next = match result {
            FetchResult::Modified | FetchResult::NotModified => {
                if result == FetchResult::Modified {
                    self.counters.modified += 1;
                } else {
                    self.counters.not_modified += 1;
                }
                self.failures = 0;
                self.refusals = 0;
                self.last_success = Some(now);
                self.regular(now)
            }
            FetchResult::Retry { after } => {
                self.counters.failures += 1;
                self.failures = self.failures.saturating_add(1);
                let backoff = self.jitter(self.config.retry.ceiling(self.failures));
                let wait = after.max(backoff);
                self.not_before = Some(now + after);
                // A pending "fetch again" still waits for the server.
                now + wait
            }
            FetchResult::Rejected => {
                self.counters.failures += 1;
                self.again = false;
                self.not_before = Some(now + self.config.rejected_wait);
                now + self.config.rejected_wait
            }
            FetchResult::Refused => {
                self.counters.failures += 1;
                self.refusals = self.refusals.saturating_add(1);
                let draw = self.rng.random_range(0.0..=1.0);
                let wait = self.config.refusal.wait(self.refusals, draw);
                self.again = false;
                self.not_before = Some(now + wait);
                now + wait
            }
            FetchResult::Failed => {
                self.counters.failures += 1;
                self.failures = self.failures.saturating_add(1);
                now + self.jitter(self.config.retry.ceiling(self.failures))
            }
        };
        self.next_fetch = Some(next);
        let refused = matches!(result, FetchResult::Rejected | FetchResult::Refused);
        if std::mem::take(&mut self.again) && !refused {
            let at = self.urgent_at(now);
            if matches!(result, FetchResult::Modified | FetchResult::NotModified) {
                self.schedule_fetch(at);
            }
        }
    }

    fn urgent_at(&self, now: Instant) -> Instant {
        let at = now + self.config.debounce;
        self.not_before.map_or(at, |nb| at.max(nb))
    }

    /// A push notice says the bundle changed (its ETag differs from the held one):
    /// fetch soon (debounced), or again right after the fetch in flight.
    pub fn handle_config_changed(&mut self, now: Instant) {
        if !self.started {
            return;
        }
        if self.in_flight {
            self.again = true;
            return;
        }
        let at = self.urgent_at(now);
        // A notice proves the relay is reachable: it cuts a transport backoff short.
        if self.failures > 0 && self.not_before.is_none_or(|nb| now >= nb) {
            self.next_fetch = Some(at);
        } else {
            self.schedule_fetch(at);
        }
    }

    /// The caller asks for a fetch now (e.g. `Tern::refresh_config`).
    pub fn handle_refresh_requested(&mut self, now: Instant) {
        self.handle_config_changed(now);
    }

    /// The app came to the foreground.
    pub fn handle_foreground(&mut self, now: Instant) {
        let stale = self
            .last_success
            .is_none_or(|t| now.saturating_duration_since(t) >= self.config.foreground_min_age);
        if stale && !self.in_flight {
            let at = self.not_before.map_or(now, |nb| now.max(nb));
            self.schedule_fetch(at);
        }
    }

    /// Network reachability changed. Down: nothing is fetched or subscribed (the driver
    /// closes the subscription and reports it ended). Up: fetch and subscribe at once.
    pub fn handle_network(&mut self, available: bool, now: Instant) {
        let was = self.network;
        self.network = available;
        if available && !was && self.started {
            self.failures = 0;
            self.sub_failures = 0;
            let at = self.not_before.map_or(now, |nb| now.max(nb));
            self.next_fetch = Some(at);
            if self.config.push && !self.sub_open {
                self.next_subscribe = Some(now);
            }
        }
    }

    /// Whether the network is considered up.
    pub fn network_available(&self) -> bool {
        self.network
    }

    /// The subscription delivered a notice (it works): the resubscribe backoff resets.
    pub fn handle_subscription_alive(&mut self) {
        self.sub_failures = 0;
    }

    /// The subscription ended (`failed`: it could not be opened or broke before its
    /// first notice). It is reopened after a backoff.
    pub fn handle_subscription_ended(&mut self, failed: bool, now: Instant) {
        self.sub_open = false;
        if !self.config.push || !self.started {
            return;
        }
        if failed {
            self.sub_failures = self.sub_failures.saturating_add(1);
        }
        let ceiling = self
            .config
            .resubscribe
            .ceiling(self.sub_failures.max(1))
            .min(if failed {
                Duration::MAX
            } else {
                self.config.resubscribe.base
            });
        let wait = self.jitter(ceiling);
        self.next_subscribe = Some(now + wait);
    }

    /// The next thing to do now, if any. Call until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<LiveAction> {
        if !self.started || !self.network {
            return None;
        }
        if !self.in_flight && self.next_fetch.is_some_and(|t| now >= t) {
            self.in_flight = true;
            self.next_fetch = None;
            self.counters.fetches += 1;
            return Some(LiveAction::Fetch);
        }
        if !self.sub_open && self.next_subscribe.is_some_and(|t| now >= t) {
            self.sub_open = true;
            self.next_subscribe = None;
            self.counters.subscriptions += 1;
            return Some(LiveAction::Subscribe);
        }
        None
    }

    /// When to call [`LiveScheduler::poll`] next (`None`: only after an input).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.started || !self.network {
            return None;
        }
        let fetch = if self.in_flight {
            None
        } else {
            self.next_fetch
        };
        let sub = if self.sub_open {
            None
        } else {
            self.next_subscribe
        };
        match (fetch, sub) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    /// A virtual clock driving a scheduler: runs `poll` at every deadline.
    struct Sim {
        s: LiveScheduler,
        now: Instant,
        fetches: Vec<Duration>,
        subscribes: Vec<Duration>,
        t0: Instant,
    }

    impl Sim {
        fn new(config: LiveConfig) -> Self {
            let now = Instant::now();
            Sim {
                s: LiveScheduler::new(config, 7),
                now,
                t0: now,
                fetches: Vec::new(),
                subscribes: Vec::new(),
            }
        }

        /// Polls now; records actions. Returns the actions.
        fn step(&mut self) -> Vec<LiveAction> {
            let mut out = Vec::new();
            while let Some(a) = self.s.poll(self.now) {
                match a {
                    LiveAction::Fetch => self.fetches.push(self.now - self.t0),
                    LiveAction::Subscribe => self.subscribes.push(self.now - self.t0),
                }
                out.push(a);
            }
            out
        }

        /// Advances to the next deadline (not beyond `limit` from t0).
        fn advance(&mut self, limit: Duration) -> bool {
            match self.s.poll_timeout() {
                Some(t) if t <= self.t0 + limit => {
                    self.now = self.now.max(t);
                    true
                }
                _ => {
                    self.now = self.t0 + limit;
                    false
                }
            }
        }
    }

    #[test]
    fn nothing_before_start_then_fetch_and_subscribe_at_once() {
        let mut sim = Sim::new(LiveConfig::default());
        assert!(sim.step().is_empty());
        assert_eq!(sim.s.poll_timeout(), None);
        sim.s.handle_start(sim.now);
        assert_eq!(sim.step(), vec![LiveAction::Fetch, LiveAction::Subscribe]);
        // In flight: nothing more, no deadline until the fetch reports.
        assert!(sim.step().is_empty());
        assert_eq!(sim.s.poll_timeout(), None);
    }

    #[test]
    fn refreshes_on_the_interval_with_bounded_jitter() {
        let every = Duration::from_secs(300);
        let mut sim = Sim::new(LiveConfig::default().with_push(false));
        sim.s.handle_start(sim.now);
        for _ in 0..20 {
            assert_eq!(sim.step(), vec![LiveAction::Fetch]);
            sim.s.handle_fetched(FetchResult::NotModified, sim.now);
            assert!(sim.advance(Duration::from_secs(100_000)));
        }
        sim.step();
        for pair in sim.fetches.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap <= every && gap >= every - every / 10, "{gap:?}");
        }
        assert_eq!(sim.s.counters().not_modified, 20);
    }

    #[test]
    fn a_change_notice_fetches_after_the_debounce_and_bursts_coalesce() {
        let mut sim = Sim::new(LiveConfig::default().with_push(false));
        sim.s.handle_start(sim.now);
        sim.step();
        sim.s.handle_fetched(FetchResult::Modified, sim.now);
        sim.now += 10 * S;
        let t_notice = sim.now;
        for _ in 0..5 {
            sim.s.handle_config_changed(sim.now);
            sim.now += 10 * MS;
        }
        // Five notices within 50 ms: one fetch, 100 ms after the first.
        sim.now = t_notice;
        assert!(sim.advance(Duration::from_secs(20)));
        assert_eq!(sim.now - t_notice, 100 * MS);
        assert_eq!(sim.step(), vec![LiveAction::Fetch]);
        sim.s.handle_fetched(FetchResult::Modified, sim.now);
        // Next is the regular refresh, minutes away.
        assert!(sim.s.poll_timeout().unwrap() - sim.now > Duration::from_secs(200));
    }

    #[test]
    fn a_notice_during_a_fetch_fetches_again_after_it() {
        let mut sim = Sim::new(LiveConfig::default().with_push(false));
        sim.s.handle_start(sim.now);
        sim.step();
        sim.s.handle_config_changed(sim.now + 5 * MS);
        sim.now += 20 * MS;
        sim.s.handle_fetched(FetchResult::NotModified, sim.now);
        assert_eq!(sim.s.poll_timeout(), Some(sim.now + 100 * MS));
        sim.now += 100 * MS;
        assert_eq!(sim.step(), vec![LiveAction::Fetch]);
    }

    #[test]
    fn failures_back_off_with_jitter_and_a_notice_cuts_the_backoff() {
        let cfg = LiveConfig::default()
            .with_push(false)
            .with_retry(RetryPolicy::default().with_base(S).with_cap(60 * S));
        let mut sim = Sim::new(cfg);
        sim.s.handle_start(sim.now);
        let mut ceilings = Vec::new();
        for n in 1..=10u32 {
            assert_eq!(sim.step(), vec![LiveAction::Fetch]);
            let at = sim.now;
            sim.s.handle_fetched(FetchResult::Failed, at);
            let wait = sim.s.poll_timeout().unwrap() - at;
            let ceiling = cfg.retry.ceiling(n);
            assert!(wait <= ceiling, "{n}: {wait:?} > {ceiling:?}");
            ceilings.push(ceiling);
            sim.now = at + wait;
        }
        assert_eq!(*ceilings.last().unwrap(), 60 * S);
        assert_eq!(sim.s.counters().failures, 10);
        // Failing again, then a push notice arrives: fetch after the debounce, not the
        // (up to 60 s) backoff.
        sim.step();
        sim.s.handle_fetched(FetchResult::Failed, sim.now);
        sim.s.handle_config_changed(sim.now);
        assert_eq!(sim.s.poll_timeout(), Some(sim.now + 100 * MS));
        // Success resets the backoff.
        sim.now += 100 * MS;
        sim.step();
        sim.s.handle_fetched(FetchResult::Modified, sim.now);
        sim.now += 300 * S;
        sim.step();
        sim.s.handle_fetched(FetchResult::Failed, sim.now);
        assert!(sim.s.poll_timeout().unwrap() - sim.now <= S);
    }

    #[test]
    fn server_retry_after_is_honoured_even_by_notices() {
        let mut sim = Sim::new(LiveConfig::default().with_push(false));
        sim.s.handle_start(sim.now);
        sim.step();
        sim.s
            .handle_fetched(FetchResult::Retry { after: 30 * S }, sim.now);
        let t = sim.now;
        sim.s.handle_config_changed(t + S);
        assert!(sim.s.poll_timeout().unwrap() >= t + 30 * S);
        sim.now = t + 29 * S;
        assert!(sim.step().is_empty());
        sim.now = sim.s.poll_timeout().unwrap();
        assert_eq!(sim.step(), vec![LiveAction::Fetch]);
    }

    #[test]
    fn rejected_waits_long() {
        let mut sim = Sim::new(LiveConfig::default().with_push(false));
        sim.s.handle_start(sim.now);
        sim.step();
        sim.s.handle_fetched(FetchResult::Rejected, sim.now);
        assert_eq!(
            sim.s.poll_timeout(),
            Some(sim.now + Duration::from_secs(3600))
        );
        sim.s.handle_config_changed(sim.now);
        assert!(sim.s.poll_timeout().unwrap() >= sim.now + Duration::from_secs(3600));
    }

    #[test]
    fn refused_waits_long_and_longer_while_it_repeats() {
        let refusal = RefusalPolicy::new(Duration::from_secs(60), Duration::from_secs(3600));
        let mut sim = Sim::new(LiveConfig::default().with_push(false).with_refusal(refusal));
        sim.s.handle_start(sim.now);
        sim.step();
        let mut ceiling = Duration::from_secs(60);
        for _ in 0..8 {
            sim.s.handle_fetched(FetchResult::Refused, sim.now);
            let at = sim.s.poll_timeout().unwrap();
            let wait = at - sim.now;
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{wait:?} vs {ceiling:?}"
            );
            // A change notice does not cut it short.
            sim.s.handle_config_changed(sim.now);
            assert!(sim.s.poll_timeout().unwrap() >= at);
            sim.now = at;
            assert_eq!(sim.step(), vec![LiveAction::Fetch]);
            ceiling = (ceiling * 2).min(Duration::from_secs(3600));
        }
        // A success resets it.
        sim.s.handle_fetched(FetchResult::NotModified, sim.now);
        sim.now = sim.s.poll_timeout().unwrap();
        sim.step();
        sim.s.handle_fetched(FetchResult::Refused, sim.now);
        assert!(sim.s.poll_timeout().unwrap() <= sim.now + Duration::from_secs(60));
    }

    #[test]
    fn network_down_pauses_everything_and_up_resumes_at_once() {
        let mut sim = Sim::new(LiveConfig::default());
        sim.s.handle_start(sim.now);
        sim.step();
        sim.s.handle_fetched(FetchResult::Failed, sim.now);
        sim.s.handle_network(false, sim.now);
        sim.s.handle_subscription_ended(false, sim.now);
        assert_eq!(sim.s.poll_timeout(), None);
        sim.now += 600 * S;
        assert!(sim.step().is_empty());
        sim.s.handle_network(true, sim.now);
        assert_eq!(sim.step(), vec![LiveAction::Fetch, LiveAction::Subscribe]);
    }

    #[test]
    fn foreground_fetches_only_when_the_bundle_is_old() {
        let mut sim = Sim::new(LiveConfig::default().with_push(false));
        sim.s.handle_start(sim.now);
        sim.step();
        sim.s.handle_fetched(FetchResult::NotModified, sim.now);
        sim.now += 10 * S;
        sim.s.handle_foreground(sim.now);
        assert!(sim.step().is_empty());
        sim.now += 60 * S;
        sim.s.handle_foreground(sim.now);
        assert_eq!(sim.step(), vec![LiveAction::Fetch]);
    }

    #[test]
    fn subscription_reopens_with_backoff_that_resets_when_it_works() {
        let cfg = LiveConfig::default();
        let mut sim = Sim::new(cfg);
        sim.s.handle_start(sim.now);
        sim.step();
        sim.s.handle_fetched(FetchResult::NotModified, sim.now);
        // Fails to open five times: waits grow within the ceilings.
        for n in 1..=5u32 {
            let at = sim.now;
            sim.s.handle_subscription_ended(true, at);
            let next = sim.s.poll_timeout().unwrap();
            assert!(next - at <= cfg.resubscribe.ceiling(n));
            sim.now = next;
            assert_eq!(sim.step(), vec![LiveAction::Subscribe]);
        }
        // Works, then ends normally (the relay closed it): back within the base wait.
        sim.s.handle_subscription_alive();
        sim.s.handle_subscription_ended(false, sim.now);
        assert!(sim.s.poll_timeout().unwrap() - sim.now <= cfg.resubscribe.base);
        assert_eq!(sim.s.counters().subscriptions, 6);
    }

    #[test]
    fn same_seed_same_schedule() {
        let run = || {
            let mut sim = Sim::new(LiveConfig::default().with_push(false));
            sim.s.handle_start(sim.now);
            for i in 0..30 {
                sim.step();
                let r = if i % 3 == 0 {
                    FetchResult::Failed
                } else {
                    FetchResult::NotModified
                };
                sim.s.handle_fetched(r, sim.now);
                sim.advance(Duration::from_secs(1_000_000));
            }
            sim.fetches
        };
        assert_eq!(run(), run());
    }

    #[derive(Clone, Debug)]
    enum Input {
        Advance(u64),
        Complete(u8),
        Notice,
        Network(bool),
        Foreground,
        SubEnded(bool),
    }

    fn input() -> impl proptest::strategy::Strategy<Value = Input> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u64..5_000).prop_map(Input::Advance),
            3 => (0u8..5).prop_map(Input::Complete),
            2 => Just(Input::Notice),
            1 => any::<bool>().prop_map(Input::Network),
            1 => Just(Input::Foreground),
            1 => any::<bool>().prop_map(Input::SubEnded),
        ]
    }

    proptest::proptest! {
        /// Whatever happens: at most one fetch in flight, at most one subscription,
        /// nothing while the network is down, deadlines never in the past, and a change
        /// notice is never lost — a fetch that starts after it always follows.
        #[test]
        fn no_double_fetch_and_no_lost_notice(
            inputs in proptest::collection::vec(input(), 1..200),
            seed in 0u64..1000,
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            // A long refresh interval, so the regular refresh cannot hide a lost notice.
            let config = LiveConfig::default().with_refresh_interval(Duration::from_secs(24 * 3600));
            let mut s = LiveScheduler::new(config, seed);
            let mut last_rejected: Option<Instant> = None;
            s.handle_start(now);
            let (mut in_flight, mut sub_open, mut network) = (false, false, true);
            let mut notice_at: Option<Instant> = None;
            let results = [
                FetchResult::Modified,
                FetchResult::NotModified,
                FetchResult::Failed,
                FetchResult::Retry { after: Duration::from_secs(3) },
                FetchResult::Rejected,
            ];
            let step = |s: &mut LiveScheduler,
                        now: Instant,
                        in_flight: &mut bool,
                        sub_open: &mut bool,
                        notice_at: &mut Option<Instant>,
                        network: bool| {
                while let Some(a) = s.poll(now) {
                    proptest::prop_assert!(network, "action while the network is down");
                    match a {
                        LiveAction::Fetch => {
                            proptest::prop_assert!(!*in_flight, "two fetches in flight");
                            *in_flight = true;
                            if notice_at.is_some_and(|t| now >= t) {
                                *notice_at = None;
                            }
                        }
                        LiveAction::Subscribe => {
                            proptest::prop_assert!(!*sub_open, "two subscriptions");
                            *sub_open = true;
                        }
                    }
                }
                Ok(())
            };
            for i in inputs {
                match i {
                    Input::Advance(ms) => {
                        now += Duration::from_millis(ms);
                    }
                    Input::Complete(r) => {
                        if in_flight {
                            in_flight = false;
                            let result = results[usize::from(r)];
                            if result == FetchResult::Rejected {
                                last_rejected = Some(now);
                            }
                            s.handle_fetched(result, now);
                        }
                    }
                    Input::Notice => {
                        s.handle_config_changed(now);
                        notice_at.get_or_insert(now);
                    }
                    Input::Network(up) => {
                        network = up;
                        s.handle_network(up, now);
                        if !up && sub_open {
                            sub_open = false;
                            s.handle_subscription_ended(false, now);
                        }
                    }
                    Input::Foreground => s.handle_foreground(now),
                    Input::SubEnded(failed) => {
                        if sub_open {
                            sub_open = false;
                            s.handle_subscription_ended(failed, now);
                        }
                    }
                }
                step(&mut s, now, &mut in_flight, &mut sub_open, &mut notice_at, network)?;
                // Everything due was just done: the next deadline is in the future.
                proptest::prop_assert!(s.poll_timeout().is_none_or(|t| t > now));
            }
            // Network up, fetches succeed: a pending notice is served within the longest
            // backoff (plus a server wait and the debounce), or after a rejection's wait.
            network = true;
            s.handle_network(true, now);
            let slack = Duration::from_secs(4);
            let mut end = now + config.retry.cap + slack;
            if let Some(t) = last_rejected {
                end = end.max(t + config.rejected_wait + slack);
            }
            while notice_at.is_some() && now < end {
                if in_flight {
                    in_flight = false;
                    s.handle_fetched(FetchResult::NotModified, now);
                }
                step(&mut s, now, &mut in_flight, &mut sub_open, &mut notice_at, network)?;
                match s.poll_timeout() {
                    Some(t) if !in_flight => now = now.max(t),
                    _ => now += Duration::from_millis(10),
                }
            }
            proptest::prop_assert!(notice_at.is_none(), "a change notice was lost");
        }
    }
}
