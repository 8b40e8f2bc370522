//! One request to the relays a key ranks first, failing over from relay to relay: the
//! loop every uploader request (batches, config fetches) goes through.
//!
//! [`Failover::request`] asks the [`Router`] for a target, sends the frame through a
//! [`Requester`] (the [`Connector`] in the SDK) and reports the result back to the
//! router: a transport failure, or a reply the caller's decoder does not take as an
//! answer to this request, is a failure of that target and the same frame goes to the
//! next one at once (the same relay over HTTPS after a QUIC failure, then the next
//! relay), up to `attempts` targets — except after [`Failure::Busy`]: a relay that is up
//! and pushing back is not a reason to move the load elsewhere, so the request ends there
//! and waits for the caller's backoff. The first decoded reply is a success of its target.
//! Time comes from the injected clock, so the tests run on virtual time.

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use tern_protocol::AppId;

use crate::net::transport::Connector;
use crate::policy::route::{Failure, Router, Target};

/// Sends one request frame to one target and returns the reply frame.
pub(crate) trait Requester: Sync {
    /// The reply to `frame` from `target`, or how the request failed.
    fn request(
        &self,
        target: &Target,
        frame: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, Failure>> + Send;
}

impl Requester for Connector {
    async fn request(&self, target: &Target, frame: &[u8]) -> Result<Vec<u8>, Failure> {
        Connector::request(self, target, frame).await.map_err(|e| {
            tracing::debug!(relay = %target.relay.id, error = %e, "request failed");
            e.failure()
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where and how often one request is tried.
pub(crate) struct Failover<'a, R, C> {
    /// Picks the targets and learns what happened to them.
    pub router: &'a Mutex<Router>,
    /// Performs each attempt.
    pub requester: &'a R,
    /// Targets tried before giving up (at least one).
    pub attempts: usize,
    /// The current time (`Instant::now` in the SDK, a virtual clock in tests).
    pub clock: &'a C,
}

impl<R: Requester, C: Fn() -> Instant + Sync> Failover<'_, R, C> {
    /// Sends `frame` to `key`'s relays in the router's order until one answers with a
    /// reply `decode` accepts; returns what it decoded and the target that answered.
    /// `None` when every attempt failed or no target was available; every failure
    /// and the success have been reported to the router.
    pub(crate) async fn request<T>(
        &self,
        app: &AppId,
        key: &str,
        frame: &[u8],
        mut decode: impl FnMut(&[u8]) -> Option<T>,
    ) -> Option<(T, Target)> {
        for _ in 0..self.attempts.max(1) {
            let Some(target) = lock(self.router).pick(app, key, (self.clock)()) else {
                break;
            };
            let failure = match self.requester.request(&target, frame).await {
                Ok(reply) => match decode(&reply) {
                    Some(answer) => {
                        lock(self.router).handle_success(&target, (self.clock)());
                        return Some((answer, target));
                    }
                    // Not a reply to this request: as if the connection dropped.
                    None => Failure::Transport,
                },
                Err(failure) => failure,
            };
            lock(self.router).handle_failure(&target, failure, (self.clock)());
            if matches!(failure, Failure::Busy | Failure::Undecided) {
                // The relay is up and pushing back: the request waits for the caller's
                // backoff rather than moving the load to the next target.
                break;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use tern_protocol::{NodeState, RelayId, RelayNode, ShardMap};

    use super::*;
    use crate::policy::route::{RouterConfig, Transport};

    /// A scripted network on a virtual clock: each request takes one virtual second;
    /// relays in `dead` fail on every transport, relays in `garbled` answer with a
    /// frame the decoder refuses, relays in `busy` push back, the others echo the frame.
    struct Net {
        now: Mutex<Instant>,
        dead: HashSet<String>,
        garbled: HashSet<String>,
        busy: HashSet<String>,
        calls: Mutex<Vec<(String, Transport, Vec<u8>)>>,
    }

    impl Net {
        fn new(dead: &[&str], garbled: &[&str]) -> Self {
            Net {
                now: Mutex::new(Instant::now()),
                dead: dead.iter().map(|s| s.to_string()).collect(),
                garbled: garbled.iter().map(|s| s.to_string()).collect(),
                busy: HashSet::new(),
                calls: Mutex::new(Vec::new()),
            }
        }

        fn now(&self) -> Instant {
            *lock(&self.now)
        }

        fn advance(&self, d: Duration) {
            *lock(&self.now) += d;
        }

        fn calls(&self) -> Vec<(String, Transport, Vec<u8>)> {
            lock(&self.calls).clone()
        }
    }

    impl Requester for Net {
        fn request(
            &self,
            target: &Target,
            frame: &[u8],
        ) -> impl Future<Output = Result<Vec<u8>, Failure>> + Send {
            let id = target.relay.id.to_string();
            lock(&self.calls).push((id.clone(), target.transport, frame.to_vec()));
            self.advance(Duration::from_secs(1));
            let reply = if self.dead.contains(&id) {
                Err(Failure::Transport)
            } else if self.busy.contains(&id) {
                Err(Failure::Busy)
            } else if self.garbled.contains(&id) {
                Ok(b"garbled".to_vec())
            } else {
                Ok(frame.to_vec())
            };
            std::future::ready(reply)
        }
    }

    fn router(ids: &[&str]) -> Mutex<Router> {
        let map = ShardMap {
            version: 1,
            nodes: ids
                .iter()
                .map(|id| RelayNode {
                    id: RelayId::new(*id),
                    quic_addr: format!("{id}:4433"),
                    https_url: format!("https://{id}:8443"),
                    weight: 1,
                    state: NodeState::Active,
                })
                .collect(),
        };
        let config = RouterConfig::default()
            .with_down_backoff(Duration::from_secs(30), Duration::from_secs(300));
        Mutex::new(Router::new(config, map))
    }

    fn app() -> AppId {
        AppId::new("demo")
    }

    /// The relay the router ranks first for `key`.
    fn owner(router: &Mutex<Router>, key: &str, now: Instant) -> String {
        lock(router)
            .clone()
            .pick(&app(), key, now)
            .expect("a relay")
            .relay
            .id
            .to_string()
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Accepts the echoed frame, refuses anything else.
    fn echo(frame: &[u8]) -> impl FnMut(&[u8]) -> Option<Vec<u8>> + '_ {
        move |reply| (reply == frame).then(|| reply.to_vec())
    }

    fn failover<'a>(
        router: &'a Mutex<Router>,
        net: &'a Net,
        clock: &'a (impl Fn() -> Instant + Sync),
        attempts: usize,
    ) -> Failover<'a, Net, impl Fn() -> Instant + Sync> {
        Failover {
            router,
            requester: net,
            attempts,
            clock,
        }
    }

    #[test]
    fn the_owner_answers_in_one_attempt() {
        let router = router(&["r1", "r2", "r3"]);
        let net = Net::new(&[], &[]);
        let clock = || net.now();
        let owner = owner(&router, "user-1", net.now());
        let frame = b"frame".to_vec();
        let got =
            run(failover(&router, &net, &clock, 4).request(&app(), "user-1", &frame, echo(&frame)));
        let (reply, target) = got.expect("answered");
        assert_eq!(reply, frame);
        assert_eq!(target.relay.id.to_string(), owner);
        assert_eq!(net.calls().len(), 1);
        let stats = lock(&router).stats();
        assert_eq!((stats.quic_ok, stats.failures, stats.failovers), (1, 0, 0));
    }

    #[test]
    fn a_dead_owner_passes_the_same_frame_to_the_next_relay() {
        let router = router(&["r1", "r2", "r3"]);
        let start = Instant::now();
        let owner = owner(&router, "user-1", start);
        let net = Net::new(&[&owner], &[]);
        let clock = || net.now();
        let frame = b"batch 7".to_vec();
        let (_, target) =
            run(failover(&router, &net, &clock, 4).request(&app(), "user-1", &frame, echo(&frame)))
                .expect("answered by another relay");
        assert_ne!(target.relay.id.to_string(), owner);
        let calls = net.calls();
        // The owner over QUIC, the owner over HTTPS, then the next relay.
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(calls[0].0, owner);
        assert_eq!(calls[0].1, Transport::Quic);
        assert_eq!(calls[1].0, owner);
        assert_eq!(calls[1].1, Transport::Https);
        assert_eq!(calls[2].0, target.relay.id.to_string());
        assert!(
            calls.iter().all(|c| c.2 == frame),
            "one frame for every attempt"
        );
        let stats = lock(&router).stats();
        assert_eq!(stats.failures, 2);
        assert_eq!(stats.failovers, 1);
        // QUIC failed (HTTPS next), then HTTPS: backed off as unreachable.
        assert_eq!((stats.to_https, stats.down_unreachable), (1, 1));
    }

    #[test]
    fn a_reply_the_decoder_refuses_counts_as_a_failure() {
        let router = router(&["r1", "r2", "r3"]);
        let owner = owner(&router, "user-1", Instant::now());
        let net = Net::new(&[], &[&owner]);
        let clock = || net.now();
        let frame = b"frame".to_vec();
        let (_, target) =
            run(failover(&router, &net, &clock, 4).request(&app(), "user-1", &frame, echo(&frame)))
                .expect("answered");
        assert_ne!(target.relay.id.to_string(), owner);
        assert!(lock(&router).stats().failures >= 1);
        assert!(net.calls().iter().any(|c| c.0 == owner));
    }

    #[test]
    fn gives_up_after_the_attempts_and_reports_every_failure() {
        let router = router(&["r1", "r2", "r3"]);
        let net = Net::new(&["r1", "r2", "r3"], &[]);
        let clock = || net.now();
        let frame = b"frame".to_vec();
        let got =
            run(failover(&router, &net, &clock, 4).request(&app(), "user-1", &frame, echo(&frame)));
        assert!(got.is_none());
        assert_eq!(net.calls().len(), 4);
        assert_eq!(lock(&router).stats().failures, 4);
        // Zero attempts still tries once.
        let got =
            run(failover(&router, &net, &clock, 0).request(&app(), "user-1", &frame, echo(&frame)));
        assert!(got.is_none());
        assert_eq!(net.calls().len(), 5);
    }

    #[test]
    fn a_relay_that_failed_is_skipped_until_its_backoff_has_passed_on_the_clock() {
        let router = router(&["r1", "r2", "r3"]);
        let owner = owner(&router, "user-1", Instant::now());
        let mut net = Net::new(&[&owner], &[]);
        let frame = b"frame".to_vec();
        {
            let clock = || net.now();
            run(failover(&router, &net, &clock, 4).request(&app(), "user-1", &frame, echo(&frame)))
                .expect("answered");
        }
        // The owner is back, but down for its backoff (30 s of virtual time): the
        // next request goes straight to the other relay.
        net.dead.clear();
        let before = net.calls().len();
        {
            let clock = || net.now();
            let (_, target) = run(failover(&router, &net, &clock, 4).request(
                &app(),
                "user-1",
                &frame,
                echo(&frame),
            ))
            .expect("answered");
            assert_ne!(target.relay.id.to_string(), owner);
            assert_eq!(net.calls().len(), before + 1);
        }
        // After the backoff the next pick asks for a probe of it; until the probe
        // succeeds, requests still go to the other relay.
        net.advance(Duration::from_secs(60));
        assert!(lock(&router).take_probes().is_empty());
        {
            let clock = || net.now();
            let (_, target) = run(failover(&router, &net, &clock, 4).request(
                &app(),
                "user-1",
                &frame,
                echo(&frame),
            ))
            .expect("answered");
            assert_ne!(target.relay.id.to_string(), owner);
        }
        let probes = lock(&router).take_probes();
        assert_eq!(probes.len(), 1);
        assert_eq!(probes[0].relay.id.to_string(), owner);
        lock(&router).handle_probe(&probes[0], Ok(()), net.now());
        let clock = || net.now();
        let (_, target) =
            run(failover(&router, &net, &clock, 4).request(&app(), "user-1", &frame, echo(&frame)))
                .expect("answered");
        assert_eq!(target.relay.id.to_string(), owner);
    }
    #[test]
    fn a_busy_relay_keeps_the_request_instead_of_passing_it_on() {
        let router = router(&["r1", "r2", "r3"]);
        let owner = owner(&router, "user-1", Instant::now());
        let mut net = Net::new(&[], &[]);
        net.busy.insert(owner.clone());
        let clock = || net.now();
        let frame = b"batch 8".to_vec();
        let got =
            run(failover(&router, &net, &clock, 4).request(&app(), "user-1", &frame, echo(&frame)));
        assert!(got.is_none(), "the request waits for the caller's backoff");
        // One attempt, to the owner over QUIC: no other relay, no HTTPS.
        let calls = net.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(
            (calls[0].0.clone(), calls[0].1),
            (owner.clone(), Transport::Quic)
        );
        // The owner takes it next time.
        net.busy.clear();
        let clock = || net.now();
        let (_, target) =
            run(failover(&router, &net, &clock, 4).request(&app(), "user-1", &frame, echo(&frame)))
                .expect("answered");
        assert_eq!(
            (target.relay.id.to_string(), target.rank, target.transport),
            (owner, 0, Transport::Quic)
        );
        let st = lock(&router).stats();
        assert_eq!((st.failovers, st.https_ok, st.busy), (0, 0, 1));
    }
}
