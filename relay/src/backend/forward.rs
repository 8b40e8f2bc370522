//! The forwarder: delivers validated batches to the relay's sink, coalescing batches
//! that arrive together into one delivery, and tells each caller what became of its
//! batch.
//!
//! Callers (the ingest path, the replayers) hand over one batch and await its
//! [`Verdict`]. A single coalescing task collects batches for at most `linger` (or
//! until a delivery is full: `max_batches` or `max_bytes`), hands them to the
//! [`Sink`] as one group — the HTTP backend's
//! `POST /v1/ingest` ([`HttpSink`]) or Kafka
//! ([`KafkaSink`](crate::backend::kafka::KafkaSink)) — and answers every caller from the
//! sink's per-batch results.
//! Up to `max_in_flight` requests run at once; the queue in front is bounded
//! (`queue_capacity`), and a full queue is answered at once with
//! [`ForwardError::QueueFull`] — backpressure the ingest path turns into `Retry` or the
//! spool, never an unbounded buffer.
//!
//! A [`Verdict::Stored`] means the backend acknowledged the batch (stored now, or a
//! duplicate of one stored earlier). Anything that leaves it unknown whether the
//! backend stored the batch — timeouts, connection failures, 5xx, undecodable replies —
//! is a [`Verdict::Failed`]: the caller may resend the same batch (the backend dedupes
//! on `batch_id`) or spool it. Each request's latency and outcome is reported on
//! `outcomes` for the circuit breaker.

use std::borrow::Borrow;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tern_protocol::{EventBatch, RelayId};
use tokio::sync::{mpsc, oneshot, Semaphore};

pub use crate::backend::sink::{ForwardError, HttpSink, RawBatch, Sink, Verdict};

/// Settings of the forwarder.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ForwarderConfig {
    /// Backend base URL, e.g. `http://127.0.0.1:8080`.
    pub backend_url: String,
    /// Bearer token for the backend, if it requires one.
    pub token: Option<String>,
    /// This relay's id, sent with every request.
    pub relay_id: RelayId,
    /// Most batches in one backend request.
    pub max_batches: usize,
    /// Most encoded batch bytes in one backend request (approximate: as reported by
    /// the callers).
    pub max_bytes: usize,
    /// How long the first batch of a request waits for company.
    pub linger: Duration,
    /// Backend requests in flight at once.
    pub max_in_flight: usize,
    /// Batches waiting for a request; beyond this, `forward` fails fast.
    pub queue_capacity: usize,
    /// Deadline of one backend request, from send to the last byte of the reply.
    pub request_timeout: Duration,
}

impl ForwarderConfig {
    /// Defaults for `backend_url` with relay id `relay_id`.
    pub fn new(backend_url: impl Into<String>, relay_id: RelayId) -> Self {
        ForwarderConfig {
            backend_url: backend_url.into(),
            token: None,
            relay_id,
            max_batches: 256,
            max_bytes: 8 * 1024 * 1024,
            // No linger: a batch goes out with whatever is already queued. Coalescing
            // still happens under load (while every request slot is busy, batches
            // queue and the next request takes them all). A timed linger costs at
            // least ~1 ms (tokio's timer rounds up to the millisecond); measured at
            // 250k events/s it added 1.2–1.5 ms to the median ack and gained no
            // throughput (BENCHMARKS.md, "Relay ingest", run F).
            linger: Duration::ZERO,
            max_in_flight: 8,
            queue_capacity: 8192,
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Sets the backend bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    /// Sets the coalescing linger.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }
    /// Sets the request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
    /// Sets the most backend requests in flight at once (at least 1).
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
    /// Sets the most batches per backend request.
    pub fn with_max_batches(mut self, n: usize) -> Self {
        self.max_batches = n.max(1);
        self
    }
    /// The HTTP backend of these settings (URL, token, relay id, request timeout)
    /// as a sink, over `client`.
    pub fn http_sink(&self, client: reqwest::Client) -> HttpSink {
        HttpSink::new(
            &self.backend_url,
            self.token.clone(),
            self.relay_id.clone(),
            self.request_timeout,
            client,
        )
    }

    /// Sets the queue capacity.
    pub fn with_queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }
}

/// One backend request's result, for the circuit breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestOutcome {
    /// How long the request took.
    pub latency: Duration,
    /// Whether the backend answered it successfully (a `ForwardReply`).
    pub ok: bool,
    /// Batches it carried.
    pub batches: usize,
}

struct Job {
    batch: RawBatch,
    reply: oneshot::Sender<Verdict>,
}

/// Handle to the forwarder task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Forwarder {
    tx: mpsc::Sender<Job>,
}

impl Forwarder {
    /// Starts the coalescing task on the current tokio runtime, delivering to the HTTP
    /// backend of `config` with `client`. Request outcomes are sent to `outcomes` (a
    /// bounded channel; outcomes are dropped if it is full).
    pub fn spawn(
        config: ForwarderConfig,
        client: reqwest::Client,
        outcomes: Option<mpsc::Sender<RequestOutcome>>,
    ) -> (Forwarder, tokio::task::JoinHandle<()>) {
        let sink = Arc::new(config.http_sink(client));
        Forwarder::spawn_with(config, sink, outcomes)
    }

    /// Starts the coalescing task on the current tokio runtime, delivering to `sink`
    /// (`config`'s backend settings are then unused).
    pub fn spawn_with(
        config: ForwarderConfig,
        sink: Arc<dyn Sink>,
        outcomes: Option<mpsc::Sender<RequestOutcome>>,
    ) -> (Forwarder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let task = tokio::spawn(run(config, sink, rx, outcomes));
        (Forwarder { tx }, task)
    }

    /// Forwards one batch held as a value (encoded here) and waits for its verdict.
    pub async fn forward(&self, batch: impl Borrow<EventBatch>) -> Verdict {
        match RawBatch::encode(batch.borrow()) {
            Ok(raw) => self.forward_raw(raw).await,
            Err(e) => Verdict::Failed(e),
        }
    }

    /// Forwards one encoded batch and waits for its verdict.
    pub async fn forward_raw(&self, batch: RawBatch) -> Verdict {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { batch, reply }) {
            Ok(()) => rx.await.unwrap_or(Verdict::Failed(ForwardError::Closed)),
            Err(mpsc::error::TrySendError::Full(_)) => Verdict::Failed(ForwardError::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Verdict::Failed(ForwardError::Closed),
        }
    }
}

async fn run(
    config: ForwarderConfig,
    sink: Arc<dyn Sink>,
    mut rx: mpsc::Receiver<Job>,
    outcomes: Option<mpsc::Sender<RequestOutcome>>,
) {
    let permits = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    // One delivery per group: a slot first, then the batches (see `next_group`);
    // `linger` only gathers what arrives together.
    while let Some((permit, jobs)) = crate::backend::coalesce::next_group(
        &mut rx,
        &permits,
        config.linger,
        config.max_batches,
        config.max_bytes,
        |j: &Job| j.batch.bytes.len(),
    )
    .await
    {
        let (sink, outcomes) = (sink.clone(), outcomes.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let batches = jobs.len();
            let (raws, replies): (Vec<RawBatch>, Vec<oneshot::Sender<Verdict>>) =
                jobs.into_iter().map(|j| (j.batch, j.reply)).unzip();
            let result = sink.deliver(&raws).await;
            let ok = result.is_ok();
            match result {
                Ok(verdicts) if verdicts.len() == replies.len() => {
                    for (reply, verdict) in replies.into_iter().zip(verdicts) {
                        let _ = reply.send(verdict);
                    }
                }
                Ok(verdicts) => {
                    // A sink bug, answered as unknown: the callers may resend or spool.
                    tracing::error!(
                        sink = sink.kind(),
                        verdicts = verdicts.len(),
                        batches,
                        "the sink answered a different number of batches"
                    );
                    for reply in replies {
                        let _ = reply.send(Verdict::Failed(ForwardError::BadReply(
                            "verdicts do not match the batches".into(),
                        )));
                    }
                }
                Err(e) => {
                    tracing::warn!(sink = sink.kind(), error = %e, batches, "forward request failed");
                    for reply in replies {
                        let _ = reply.send(Verdict::Failed(e.clone()));
                    }
                }
            }
            let latency = started.elapsed();
            metrics::counter!("tern_relay_forward_requests_total", "ok" => if ok { "true" } else { "false" })
                .increment(1);
            metrics::histogram!("tern_relay_forward_duration_seconds")
                .record(latency.as_secs_f64());
            metrics::histogram!("tern_relay_forward_batches").record(batches as f64);
            if let Some(tx) = outcomes {
                let _ = tx.try_send(RequestOutcome {
                    latency,
                    ok,
                    batches,
                });
            }
            drop(permit);
        });
    }
}
