//! The request handler shared by every listener: one request frame in, one reply frame
//! out. Transport-agnostic, so QUIC streams and HTTPS bodies get identical semantics.
//!
//! For an `IngestRequest`: credentials are checked against the [`AppRegistry`], the
//! batch must belong to the authenticated app and pass the protocol's validation; then
//! it is forwarded, and the reply says what is true *now*:
//!
//! | forward verdict | reply |
//! |---|---|
//! | `Stored` | `Accepted { durability: forwarded }` |
//! | `Rejected{reason}` | `Rejected{reason}` |
//! | throttled by the backend | `Retry { after_ms }` with the backend's delay |
//! | queue full, timeout, transport or backend failure | `Retry { after_ms }` |
//!
//! Before forwarding, the app's token bucket must hold the batch's events (else
//! `Retry` with the exact wait; a blocked app gets a long `Retry`, never `Rejected`, so
//! devices keep the data), and the circuit breaker must be closed or admit a probe
//! (else `Retry` for as long as it stays open, without touching the backend).
//!
//! `ConfigRequest`s are answered from the config cache and push streams are opened on
//! the push hub when those are configured (`reads.rs`, [`IngestServices::config_cache`],
//! [`IngestServices::push_hub`]).
//!
//! **Reading a request** (docs/protocol.md §3, §6.3). The frame's checks run in the
//! spec's order — header, completeness, kind (a relay serves only device requests:
//! any other kind is `unsupported_message`, its body unread), payload size and LZ4 —
//! then the payload is decoded as its kind's message.
//!
//! An `IngestRequest` payload is read in place ([`tern_protocol::IngestView`]): a
//! borrowing, allocation-free walk that yields the credentials, the batch's ids and
//! event count, and the verdict of the §7 rules, and keeps the batch's bytes as the
//! device sent them; those bytes are what the forwarder splices into the backend's
//! `ForwardRequest` and the spool into its objects ([`RawBatch`]). A payload the walk
//! does not read (an unusual encoding, or a malformed one) goes through the owned
//! decoder ([`tern_protocol::ReceivedIngest`]), which measures the same sizes on the
//! same bytes and keeps the same batch bytes: either way the same reply, and the
//! device's bytes forwarded.
//!
//! Nothing is acknowledged before the backend or the spool has it: with a spool
//! ([`IngestServices::spool`]), an open breaker and backend failures become
//! `Accepted { spooled }` once the object holding the batch is stored, and `Retry` when
//! the spool cannot take it either (failing, or full), with the longer of the relay's
//! own wait and the backend's or the breaker's. A frame that cannot be decoded
//! gets an `ErrorReply` and the connection stays usable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use tern_protocol::limits::{validate_batch, Limits};
use tern_protocol::{
    decode_payload, AppId, BatchId, CodecConfig, DecodeError, DeviceId, Durability, ErrorReply,
    EventBatch, IngestOutcome, IngestReply, IngestView, Message, MessageKind, ReceivedIngest,
    RejectReason, ShardMap, ShardMapReply, ShardMapRequest, ValidationError,
};

use crate::backend::breaker::{CallOutcome, Permit};
use crate::backend::forward::{ForwardError, Forwarder, RawBatch, Verdict};
use crate::backend::sharedbreaker::SharedBreaker;
use crate::ingest::drain::Drain;
use crate::ingest::record::Recorder;
use crate::policy::apps::{AppRegistry, AuthCheck};
use crate::policy::controls::Controls;
use crate::policy::features::{Features, RelayFeature};
use crate::policy::ratelimit::{Decision, SharedLimiter};
use crate::remote::cache::ConfigCache;
use crate::remote::push::PushHub;
use crate::remote::shardmap::ServedShardMap;
use crate::spool::{Spool, SpoolError};

pub mod drain;
pub mod latency;
pub mod playback;
mod reads;
pub mod record;
pub use reads::{served_etag, PushStream};

/// Settings of the request handler.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct IngestConfig {
    /// Validation limits (the protocol's, or stricter).
    pub limits: Limits,
    /// `Retry` delay when the backend failed without saying when to come back.
    pub retry_after: Duration,
    /// `Retry` delay when the forward queue is full.
    pub busy_retry_after: Duration,
    /// `Retry` delay for an app an operator blocked.
    pub blocked_retry_after: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            limits: Limits::default(),
            retry_after: Duration::from_secs(2),
            busy_retry_after: Duration::from_millis(250),
            blocked_retry_after: Duration::from_secs(300),
        }
    }
}

/// Counters of the handler. `accepted_forwarded + accepted_spooled` is what was
/// acknowledged; every acknowledged batch is in one of the two.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Batches acknowledged after the backend stored them.
    pub accepted_forwarded: AtomicU64,
    /// Batches acknowledged after the spool stored them.
    pub accepted_spooled: AtomicU64,
    /// Batches answered `Retry`.
    pub retried: AtomicU64,
    /// Batches answered `Rejected`.
    pub rejected: AtomicU64,
    /// Frames answered `ErrorReply`.
    pub errors: AtomicU64,
    /// Events in acknowledged batches.
    pub events_accepted: AtomicU64,
    /// Batches answered `Retry` by the rate limiter (or an operator block).
    pub rate_limited: AtomicU64,
    /// Batches answered `Retry` because the breaker was open.
    pub breaker_open: AtomicU64,
    /// Batches whose owner under the current shard map is another relay (accepted all
    /// the same: availability first).
    pub misrouted: AtomicU64,
    /// Batches spooled without calling the backend because an operator degraded
    /// forwarding.
    pub degraded_spooled: AtomicU64,
    /// Open QUIC connections.
    pub quic_connections: AtomicU64,
    /// Total time spent handling ingest requests, microseconds (with the batches
    /// handled, the mean handling time).
    pub handling_us: AtomicU64,
    /// Ingest handling times, microseconds (the admin API's per-second p99).
    pub handling_hist: crate::ingest::latency::LatencyHistogram,
    /// Per-app tallies (authenticated apps only, at most [`MAX_APP_TALLIES`]).
    pub apps: Mutex<HashMap<String, AppTally>>,
}

/// Most apps tallied separately in [`IngestCounters::apps`]; batches of further apps
/// are tallied under [`OTHER_APPS`].
pub const MAX_APP_TALLIES: usize = 10_000;
/// The tally of apps beyond [`MAX_APP_TALLIES`].
pub const OTHER_APPS: &str = "(other)";

/// What one app sent, by reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AppTally {
    /// Batches acknowledged (forwarded or spooled).
    pub batches_accepted: u64,
    /// Events in acknowledged batches.
    pub events_accepted: u64,
    /// Batches answered `Retry` (rate limit, block, backend or spool trouble).
    pub batches_retried: u64,
}

impl IngestCounters {
    /// A copy of the per-app tallies.
    pub fn app_tallies(&self) -> HashMap<String, AppTally> {
        lock(&self.apps).clone()
    }

    fn tally(&self, app: &str, f: impl FnOnce(&mut AppTally)) {
        let mut apps = lock(&self.apps);
        if let Some(t) = apps.get_mut(app) {
            f(t);
            return;
        }
        let key = if apps.len() < MAX_APP_TALLIES {
            app
        } else {
            OTHER_APPS
        };
        f(apps.entry(key.to_owned()).or_default());
    }
}

/// What the request path uses: a handle on each service the wiring builds once
/// ([`crate::run::Services`]). Cheap to clone; clones share the services.
#[derive(Clone, Debug)]
pub struct IngestServices {
    /// Credentials are checked against it.
    pub registry: AppRegistry,
    /// Forwards batches to the backend.
    pub forwarder: Forwarder,
    /// The circuit breaker in front of the backend (shared with the replayers).
    pub breaker: SharedBreaker,
    /// Per-app rate limits (set by the admin API).
    pub limiter: SharedLimiter,
    /// The shard map served (batches another relay owns are counted as misrouted).
    pub shard_map: ServedShardMap,
    /// What the handler counted.
    pub counters: Arc<IngestCounters>,
    /// Batches the backend cannot take now (breaker open, forward failed) are written
    /// there and acknowledged `Accepted{spooled}` once stored; without one, `Retry`.
    pub spool: Option<Spool>,
    /// This relay, so batches it does not own under the shard map are counted as
    /// misrouted.
    pub relay_id: Option<tern_protocol::RelayId>,
    /// Serves `ConfigRequest`s (without it they are answered
    /// `ErrorReply{unsupported_message}`).
    pub config_cache: Option<ConfigCache>,
    /// Opens push streams (without it `SubscribeRequest`s are refused).
    pub push_hub: Option<PushHub>,
    /// Operator switches (degraded services).
    pub controls: Controls,
    /// Drain state, shared with the listeners.
    pub drain: Drain,
    /// Feature flags guarding relay code paths.
    pub features: Features,
    /// Accepted batches are offered to it (it records its sample, if on).
    pub recorder: Option<Recorder>,
}

impl IngestServices {
    /// What a handler cannot do without: `registry`, `forwarder` and `shard_map`
    /// (served without announcements), a breaker and a rate limiter with their default
    /// settings, fresh counters; no spool, config, push, recorder or relay id; the
    /// switches, drain and feature flags at their defaults. The wiring sets the rest.
    pub fn new(registry: AppRegistry, forwarder: Forwarder, shard_map: ShardMap) -> Self {
        IngestServices {
            registry,
            forwarder,
            breaker: SharedBreaker::new(crate::backend::breaker::BreakerConfig::default()),
            limiter: SharedLimiter::new(crate::policy::ratelimit::RateLimiterConfig::default()),
            shard_map: ServedShardMap::new(shard_map, None),
            counters: Arc::new(IngestCounters::default()),
            spool: None,
            relay_id: None,
            config_cache: None,
            push_hub: None,
            controls: Controls::default(),
            drain: Drain::default(),
            features: Features::default(),
            recorder: None,
        }
    }
}

/// The request handler.
#[derive(Clone, Debug)]
pub struct Ingest {
    config: Arc<IngestConfig>,
    svc: IngestServices,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// What the ingest decision needs of one `IngestRequest`, however it was read: in
/// place ([`IngestView`]) or decoded into owned values (the fallback).
struct Submission<'a> {
    auth_app_id: &'a str,
    auth_key: &'a str,
    batch_app_id: &'a str,
    batch_id: BatchId,
    device_id: DeviceId,
    events: u64,
    first_user_id: Option<&'a str>,
    /// The verdict of §7 on the batch.
    invalid: Option<&'a ValidationError>,
    batch: BatchSource<'a>,
}

/// Where the batch's bytes come from when it is forwarded or spooled.
enum BatchSource<'a> {
    /// The bytes the device sent (read in place).
    Raw(Bytes),
    /// A decoded batch, encoded when needed.
    Owned(&'a EventBatch),
}

impl<'a> Submission<'a> {
    /// A request decoded into owned values, with the §7 verdict on its batch and
    /// where its bytes come from.
    fn decoded(
        req: &'a tern_protocol::IngestRequest,
        invalid: Option<&'a ValidationError>,
        batch: BatchSource<'a>,
    ) -> Self {
        Submission {
            auth_app_id: req.auth.app_id.as_str(),
            auth_key: &req.auth.key,
            batch_app_id: req.batch.app_id.as_str(),
            batch_id: req.batch.batch_id,
            device_id: req.batch.device_id,
            events: req.batch.events.len() as u64,
            first_user_id: req
                .batch
                .events
                .first()
                .and_then(|e| e.user_id.as_ref())
                .map(|u| u.as_str()),
            invalid,
            batch,
        }
    }

    fn routing_key(&self) -> std::borrow::Cow<'_, str> {
        tern_protocol::routing::routing_key(self.first_user_id, &self.device_id)
    }

    fn raw(&self) -> Result<RawBatch, ForwardError> {
        match &self.batch {
            BatchSource::Raw(bytes) => Ok(RawBatch {
                batch_id: self.batch_id,
                bytes: bytes.clone(),
            }),
            BatchSource::Owned(batch) => RawBatch::encode(batch),
        }
    }
}

/// A `Retry` reply, counted by cause.
fn retry(cause: &'static str, after: Duration) -> IngestOutcome {
    metrics::counter!("tern_relay_retry_total", "cause" => cause).increment(1);
    IngestOutcome::Retry {
        after_ms: ms(after),
    }
}

impl Ingest {
    /// A handler with `config` using `services`.
    pub fn new(config: IngestConfig, services: IngestServices) -> Self {
        Ingest {
            config: Arc::new(config),
            svc: services,
        }
    }

    /// The counters.
    pub fn counters(&self) -> &IngestCounters {
        &self.svc.counters
    }

    /// The counters, shared (a listener keeps them across its tasks).
    pub fn counters_arc(&self) -> Arc<IngestCounters> {
        self.svc.counters.clone()
    }

    /// The drain state the listeners serving this handler share.
    pub fn drain(&self) -> &Drain {
        &self.svc.drain
    }

    /// Spools `batch` when a spool is configured; otherwise, or if the spool fails,
    /// `Retry`.
    async fn spool_or_retry(
        &self,
        batch: Option<RawBatch>,
        events: u64,
        cause: &'static str,
        after: Duration,
    ) -> IngestOutcome {
        if let (Some(spool), Some(batch)) = (&self.svc.spool, batch) {
            match spool.write_raw(batch).await {
                Ok(_) => {
                    self.svc
                        .counters
                        .events_accepted
                        .fetch_add(events, Ordering::Relaxed);
                    metrics::counter!("tern_relay_events_accepted_total").increment(events);
                    return IngestOutcome::Accepted {
                        durability: Durability::Spooled,
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "spool unavailable; asking the device to retry");
                    let cause = match e {
                        SpoolError::Full(_) | SpoolError::QueueFull => "spool_full",
                        _ => "spool_unavailable",
                    };
                    // The longer of the relay's own wait and the one it was given
                    // (a backend's throttle, an open breaker).
                    return retry(cause, after.max(self.config.retry_after));
                }
            }
        }
        retry(cause, after)
    }

    /// Counts the batch as misrouted when the shard map names another owner.
    fn note_routing(&self, app: &AppId, s: &Submission<'_>) {
        let Some(me) = &self.svc.relay_id else {
            return;
        };
        let map = self.map();
        if map.nodes.is_empty() {
            return;
        }
        let key = s.routing_key();
        if let Some(owner) = tern_protocol::routing::owner(&map, app, &key) {
            if &owner.id != me {
                self.svc.counters.misrouted.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tern_relay_misrouted_batches_total").increment(1);
            }
        }
    }

    fn map(&self) -> Arc<ShardMap> {
        self.svc.shard_map.current()
    }

    fn error(&self, reason: RejectReason, detail: impl Into<String>) -> Message {
        self.svc.counters.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tern_relay_error_replies_total").increment(1);
        Message::ErrorReply(ErrorReply {
            shard_map_version: self.map().version,
            reason,
            detail: detail.into(),
        })
    }

    /// Handles one request frame and returns the reply frame. Never fails: every
    /// problem becomes a reply.
    pub async fn handle_frame(&self, frame: &[u8]) -> Vec<u8> {
        let cfg = CodecConfig::device();
        let reply = self.reply_to(frame, &cfg).await;
        reply.encode(&cfg).unwrap_or_else(|e| {
            // Replies are small and always encodable; keep the contract regardless.
            tracing::error!(error = %e, "encoding a reply failed");
            Message::ErrorReply(ErrorReply {
                shard_map_version: 0,
                reason: RejectReason::Malformed,
                detail: String::new(),
            })
            .encode(&cfg)
            .unwrap_or_default()
        })
    }

    /// The reply to one request frame: the checks of §3 in their order, then the
    /// request (§6.3).
    async fn reply_to(&self, frame: &[u8], cfg: &CodecConfig) -> Message {
        let f = match tern_protocol::decode_single_frame_ref(frame, cfg.max_payload) {
            Ok(f) => f,
            Err(e) => return self.decode_error(&e),
        };
        // The kind before the body: a relay serves device requests only.
        let kind = match MessageKind::from_u8(f.kind) {
            Some(MessageKind::SubscribeRequest) => {
                return self.error(
                    RejectReason::UnsupportedMessage,
                    "a SubscribeRequest opens a push stream: send it as the first frame of its own QUIC stream, or to POST /v1/subscribe",
                )
            }
            Some(kind) if kind.is_device_request() => kind,
            Some(kind) => {
                return self.error(
                    RejectReason::UnsupportedMessage,
                    format!("{kind:?} is not a request a relay serves"),
                )
            }
            None => return self.decode_error(&DecodeError::UnknownKind(f.kind)),
        };
        let payload = match f.payload(cfg.max_payload) {
            Ok(p) => p,
            Err(e) => return self.decode_error(&e),
        };
        match kind {
            MessageKind::IngestRequest => self.ingest_payload(payload).await,
            MessageKind::ConfigRequest => match decode_payload(&payload) {
                Ok(req) => self.config_request(&req),
                Err(e) => self.decode_error(&e),
            },
            MessageKind::ShardMapRequest => match decode_payload(&payload) {
                Ok(req) => self.shard_map_request(&req),
                Err(e) => self.decode_error(&e),
            },
            other => self.error(
                RejectReason::UnsupportedMessage,
                format!("{other:?} is not a request a relay serves"),
            ),
        }
    }

    /// An `IngestRequest` payload: read in place when [`IngestView`] reads it (and the
    /// in-place feature is on for the app), else decoded into owned values — the same
    /// rules on the same bytes either way, and the device's batch bytes forwarded.
    async fn ingest_payload(&self, payload: std::borrow::Cow<'_, [u8]>) -> Message {
        // One buffer per request: the batch forwarded or spooled is a slice of it.
        let payload = match payload {
            std::borrow::Cow::Owned(v) => Bytes::from(v),
            std::borrow::Cow::Borrowed(b) => Bytes::copy_from_slice(b),
        };
        let limits = &self.config.limits;
        if let Ok(view) = IngestView::parse(&payload, limits) {
            if self
                .svc
                .features
                .is_on(RelayFeature::IngestInPlace, view.auth_app_id)
            {
                let b = &view.batch;
                let submission = Submission {
                    auth_app_id: view.auth_app_id,
                    auth_key: view.auth_key,
                    batch_app_id: b.app_id,
                    batch_id: b.batch_id,
                    device_id: b.device_id,
                    events: b.events as u64,
                    first_user_id: b.first_user_id,
                    invalid: b.validation().err(),
                    batch: BatchSource::Raw(payload.slice(b.offset..b.offset + b.bytes.len())),
                };
                return Message::IngestReply(self.ingest(submission).await);
            }
            // Flag off for this app: the owned decoder answers (the same reply).
            metrics::counter!("tern_relay_ingest_path_total", "path" => "owned_by_flag")
                .increment(1);
        }
        let received = match ReceivedIngest::decode(&payload) {
            Ok(r) => r,
            Err(e) => return self.decode_error(&e),
        };
        let verdict = received.validate(limits);
        let bytes = payload
            .slice(received.batch_offset..received.batch_offset + received.batch_bytes.len());
        let submission = Submission::decoded(
            &received.request,
            verdict.as_ref().err(),
            BatchSource::Raw(bytes),
        );
        Message::IngestReply(self.ingest(submission).await)
    }

    fn decode_error(&self, e: &DecodeError) -> Message {
        self.error(e.reject_reason(), e.to_string())
    }

    /// Handles one decoded request, as [`Ingest::handle_frame`] handles its encoding
    /// by this crate (an `IngestRequest`'s sizes are its encoded sizes, and its batch
    /// is forwarded encoded).
    pub async fn handle(&self, msg: Message) -> Message {
        match msg {
            Message::IngestRequest(req) => {
                let verdict = validate_batch(&req.batch, &self.config.limits);
                let submission = Submission::decoded(
                    &req,
                    verdict.as_ref().err(),
                    BatchSource::Owned(&req.batch),
                );
                Message::IngestReply(self.ingest(submission).await)
            }
            Message::ShardMapRequest(req) => self.shard_map_request(&req),
            Message::ConfigRequest(req) => self.config_request(&req),
            Message::SubscribeRequest(_) => self.error(
                RejectReason::UnsupportedMessage,
                "a SubscribeRequest opens a push stream: send it as the first frame of its own QUIC stream, or to POST /v1/subscribe",
            ),
            other => self.error(
                RejectReason::UnsupportedMessage,
                format!("{:?} is not a request a relay serves", other.kind()),
            ),
        }
    }

    fn shard_map_request(&self, req: &ShardMapRequest) -> Message {
        if self.svc.registry.check(&req.auth) != AuthCheck::Ok {
            return self.error(RejectReason::Unauthorized, "unknown app or wrong key");
        }
        let map = self.map();
        Message::ShardMapReply(ShardMapReply {
            shard_map_version: map.version,
            map: (map.version > req.known_version).then(|| (*map).clone()),
        })
    }

    async fn ingest(&self, req: Submission<'_>) -> IngestReply {
        let batch_id = req.batch_id;
        let events = req.events;
        // Tallied per app for accepted and retried batches (a rejection may carry any
        // string as its app; the tally map is bounded either way).
        let app = req.batch_app_id;
        // The batch's bytes for the recorder (a shared slice), only while recording.
        let recorded = match &self.svc.recorder {
            Some(r) if r.is_enabled() => match &req.batch {
                BatchSource::Raw(bytes) => Some(bytes.clone()),
                BatchSource::Owned(b) => RawBatch::encode(b).ok().map(|r| r.bytes),
            },
            _ => None,
        };
        let started = Instant::now();
        let outcome = self.ingest_outcome(req).await;
        let c = &self.svc.counters;
        let label = match &outcome {
            IngestOutcome::Accepted {
                durability: Durability::Spooled,
            } => {
                c.accepted_spooled.fetch_add(1, Ordering::Relaxed);
                "accepted_spooled"
            }
            IngestOutcome::Accepted { .. } => {
                c.accepted_forwarded.fetch_add(1, Ordering::Relaxed);
                "accepted_forwarded"
            }
            IngestOutcome::Retry { .. } => {
                c.retried.fetch_add(1, Ordering::Relaxed);
                c.tally(app, |t| t.batches_retried += 1);
                "retry"
            }
            _ => {
                c.rejected.fetch_add(1, Ordering::Relaxed);
                "rejected"
            }
        };
        if let (IngestOutcome::Accepted { .. }, Some(rec), Some(bytes)) =
            (&outcome, &self.svc.recorder, recorded)
        {
            rec.offer(app, &batch_id, bytes);
        }
        if matches!(outcome, IngestOutcome::Accepted { .. }) {
            c.tally(app, |t| {
                t.batches_accepted += 1;
                t.events_accepted += events;
            });
        }
        metrics::counter!("tern_relay_batches_total", "outcome" => label).increment(1);
        metrics::counter!("tern_relay_events_total", "outcome" => label).increment(events);
        let took = started.elapsed();
        let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        c.handling_us.fetch_add(took_us, Ordering::Relaxed);
        c.handling_hist.record(took_us);
        metrics::histogram!("tern_relay_ingest_duration_seconds", "outcome" => label)
            .record(took.as_secs_f64());
        IngestReply {
            shard_map_version: self.map().version,
            batch_id,
            outcome,
        }
    }

    async fn ingest_outcome(&self, req: Submission<'_>) -> IngestOutcome {
        let rejected =
            |reason: RejectReason, detail: String| IngestOutcome::Rejected { reason, detail };
        if self.svc.registry.check_key(req.auth_app_id, req.auth_key) != AuthCheck::Ok {
            if !self.svc.registry.is_loaded() {
                // Not "unauthorized" but "not known yet": a rejection would make the
                // device drop the batch.
                return retry("registry_not_loaded", self.config.busy_retry_after);
            }
            return rejected(
                RejectReason::Unauthorized,
                "unknown app or wrong key".into(),
            );
        }
        if req.auth_app_id != req.batch_app_id {
            return rejected(
                RejectReason::AppMismatch,
                format!(
                    "batch of app {} sent with credentials of app {}",
                    req.batch_app_id, req.auth_app_id
                ),
            );
        }
        if let Some(e) = req.invalid {
            return rejected(e.reject_reason(), e.to_string());
        }
        let events = req.events;
        let app = AppId::new(req.batch_app_id);
        self.note_routing(&app, &req);
        // Rate limit: a batch larger than the burst costs the whole burst, so it passes
        // when the bucket is full instead of never.
        let decision = self
            .svc
            .limiter
            .check_batch(&app, events, Instant::now().into_std());
        match decision {
            Decision::Allow => {}
            Decision::Deny { retry_after } => {
                self.svc
                    .counters
                    .rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                return retry("rate_limited", retry_after);
            }
            Decision::Blocked | Decision::TooLarge { .. } => {
                self.svc
                    .counters
                    .rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                return retry("rate_limited", self.config.blocked_retry_after);
            }
        }
        let batch = match req.raw() {
            Ok(batch) => batch,
            Err(e) => {
                // Cannot happen for a batch that decoded; keep the data on the device.
                tracing::error!(error = %e, "encoding a batch failed");
                return retry("encode", self.config.retry_after);
            }
        };
        if self.svc.controls.forwarding_degraded() {
            // Operator: forwarding degraded. The backend is not called at all.
            self.svc
                .counters
                .degraded_spooled
                .fetch_add(1, Ordering::Relaxed);
            return self
                .spool_or_retry(Some(batch), events, "degraded", self.config.retry_after)
                .await;
        }
        // Take the permit before matching: the lock must not live across an await.
        let permit = self
            .svc
            .breaker
            .lock()
            .try_acquire(Instant::now().into_std());
        let ticket = match permit {
            Permit::Allowed(ticket) => ticket,
            Permit::Rejected { retry_in } => {
                self.svc
                    .counters
                    .breaker_open
                    .fetch_add(1, Ordering::Relaxed);
                self.svc.breaker.publish_state();
                return self
                    .spool_or_retry(Some(batch), events, "breaker_open", retry_in)
                    .await;
            }
        };
        // Kept for the spool in case the backend fails (shared bytes, not copied).
        let fallback = self.svc.spool.as_ref().map(|_| batch.clone());
        let started = Instant::now();
        let verdict = self.svc.forwarder.forward_raw(batch).await;
        let latency = started.elapsed();
        let health = match &verdict {
            Verdict::Stored | Verdict::Rejected { .. } => CallOutcome::Success { latency },
            // The backend never saw it: says nothing about the backend's health.
            Verdict::Failed(
                ForwardError::QueueFull
                | ForwardError::Closed
                | ForwardError::Encode(_)
                | ForwardError::Refused(_),
            ) => CallOutcome::Cancelled,
            Verdict::Failed(_) => CallOutcome::Failure { latency },
        };
        self.svc
            .breaker
            .lock()
            .handle_result(ticket, health, Instant::now().into_std());
        self.svc.breaker.publish_state();
        match verdict {
            Verdict::Stored => {
                self.svc
                    .counters
                    .events_accepted
                    .fetch_add(events, Ordering::Relaxed);
                metrics::counter!("tern_relay_events_accepted_total").increment(events);
                IngestOutcome::Accepted {
                    durability: Durability::Forwarded,
                }
            }
            Verdict::Rejected { reason, detail } => rejected(reason, detail),
            Verdict::Failed(ForwardError::Throttled { retry_after }) => {
                self.spool_or_retry(fallback, events, "backend", retry_after)
                    .await
            }
            Verdict::Failed(ForwardError::QueueFull) => {
                self.spool_or_retry(fallback, events, "busy", self.config.busy_retry_after)
                    .await
            }
            Verdict::Failed(e) => {
                tracing::debug!(error = %e, "forward failed; spooling or asking the device to retry");
                self.spool_or_retry(fallback, events, "backend", self.config.retry_after)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests;
