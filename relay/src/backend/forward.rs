//! The forwarder: delivers validated batches to the backend, coalescing batches that
//! arrive together into one `ForwardRequest`, and tells each caller what became of its
//! batch.
//!
//! Callers (the ingest path) hand over one batch and await its [`Verdict`]. A single
//! coalescing task collects batches for at most `linger` (or until a request is full:
//! `max_batches` or `max_bytes`), posts them as one frame to the backend's
//! `POST /v1/ingest`, and answers every caller from the backend's per-batch results.
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

use bytes::Bytes;
use tern_protocol::{
    BatchId, CodecConfig, EventBatch, ForwardOutcome, ForwardReply, MessageKind, RejectReason,
    RelayId, BACKEND_INGEST_PATH, FRAME_CONTENT_TYPE,
};
use tokio::sync::{mpsc, oneshot, Semaphore};

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
    /// Sets the queue capacity.
    pub fn with_queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }
}

/// What became of one forwarded batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The backend has the batch (stored now, or already stored).
    Stored,
    /// The backend refused the batch permanently.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// Detail from the backend.
        detail: String,
    },
    /// Unknown whether the backend stored the batch; safe to resend or spool.
    Failed(ForwardError),
}

/// Why a forward did not produce an answer from the backend.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The forwarder's queue is full (backpressure).
    #[error("forward queue full")]
    QueueFull,
    /// The forwarder has stopped.
    #[error("forwarder stopped")]
    Closed,
    /// The request did not complete within the timeout.
    #[error("backend request timed out")]
    Timeout,
    /// Connecting or transferring failed.
    #[error("backend unreachable: {0}")]
    Transport(String),
    /// The backend throttled the relay.
    #[error("backend throttled; retry after {retry_after:?}")]
    Throttled {
        /// How long the backend asked to wait.
        retry_after: Duration,
    },
    /// The backend answered with an error status.
    #[error("backend answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The backend's reply could not be understood.
    #[error("bad backend reply: {0}")]
    BadReply(String),
    /// The batch could not be encoded (cannot happen for a validated batch).
    #[error("encoding failed: {0}")]
    Encode(String),
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

/// A batch as the forwarder and the spool carry it: its id and its MessagePack
/// encoding (one `EventBatch` value), spliced unchanged into `ForwardRequest`s and
/// spool objects. Ingest hands over the bytes the device sent (validated in place);
/// batches held as values are encoded once ([`RawBatch::encode`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawBatch {
    /// The batch's id (the backend's verdicts are matched against it).
    pub batch_id: BatchId,
    /// The batch's MessagePack value.
    pub bytes: Bytes,
}

impl RawBatch {
    /// Encodes a batch held as a value.
    pub fn encode(batch: &EventBatch) -> Result<RawBatch, ForwardError> {
        let bytes = tern_protocol::encode_payload(batch)
            .map_err(|e| ForwardError::Encode(e.to_string()))?;
        Ok(RawBatch {
            batch_id: batch.batch_id,
            bytes: Bytes::from(bytes),
        })
    }
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
    /// Starts the coalescing task on the current tokio runtime. Request outcomes are
    /// sent to `outcomes` (a bounded channel; outcomes are dropped if it is full).
    pub fn spawn(
        config: ForwarderConfig,
        client: reqwest::Client,
        outcomes: Option<mpsc::Sender<RequestOutcome>>,
    ) -> (Forwarder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let task = tokio::spawn(run(config, client, rx, outcomes));
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
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Job>,
    outcomes: Option<mpsc::Sender<RequestOutcome>>,
) {
    let url = format!(
        "{}{}",
        config.backend_url.trim_end_matches('/'),
        BACKEND_INGEST_PATH
    );
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    // One request per group: a request slot first, then the batches (see
    // `next_group`); `linger` only gathers what arrives together.
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
        let (client, url, config, outcomes) = (
            client.clone(),
            url.clone(),
            config.clone(),
            outcomes.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let batches = jobs.len();
            let result = send(&client, &url, &config, &jobs).await;
            let ok = result.is_ok();
            match result {
                Ok(verdicts) => {
                    for (job, verdict) in jobs.into_iter().zip(verdicts) {
                        let _ = job.reply.send(verdict);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, batches, "forward request failed");
                    for job in jobs {
                        let _ = job.reply.send(Verdict::Failed(e.clone()));
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

async fn send(
    client: &reqwest::Client,
    url: &str,
    config: &ForwarderConfig,
    jobs: &[Job],
) -> Result<Vec<Verdict>, ForwardError> {
    // The batches' bytes are spliced in as they are: nothing is decoded or re-encoded.
    let batches: Vec<&[u8]> = jobs.iter().map(|j| &j.batch.bytes[..]).collect();
    let body = tern_protocol::codec::encode_forward_request_raw(
        &config.relay_id,
        &batches,
        &CodecConfig::backend(),
    )
    .map_err(|e| ForwardError::Encode(e.to_string()))?;
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, FRAME_CONTENT_TYPE)
        .timeout(config.request_timeout)
        .body(body);
    if let Some(token) = &config.token {
        req = req.bearer_auth(token);
    }
    let response = req.send().await.map_err(classify)?;
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        let retry_after = retry_after(response.headers());
        return Err(ForwardError::Throttled { retry_after });
    }
    let body = response.bytes().await.map_err(classify)?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
        return Err(ForwardError::Status {
            status: status.as_u16(),
            body: text,
        });
    }
    let frame = tern_protocol::decode_single_frame(&body, CodecConfig::backend().max_payload)
        .map_err(|e| ForwardError::BadReply(e.to_string()))?;
    let reply: ForwardReply =
        tern_protocol::decode_expected(&frame, MessageKind::ForwardReply, &CodecConfig::backend())
            .map_err(|e| ForwardError::BadReply(e.to_string()))?;
    if reply.results.len() != jobs.len() {
        return Err(ForwardError::BadReply(format!(
            "{} results for {} batches",
            reply.results.len(),
            jobs.len()
        )));
    }
    Ok(jobs
        .iter()
        .zip(reply.results)
        .map(|(job, result)| verdict(job.batch.batch_id, result.batch_id, result.outcome))
        .collect())
}

fn verdict(sent: BatchId, answered: BatchId, outcome: ForwardOutcome) -> Verdict {
    if sent != answered {
        return Verdict::Failed(ForwardError::BadReply(format!(
            "result for {answered} where {sent} was sent"
        )));
    }
    match outcome {
        ForwardOutcome::Stored | ForwardOutcome::Duplicate => Verdict::Stored,
        ForwardOutcome::Rejected { reason, detail } => Verdict::Rejected { reason, detail },
        // An outcome this version does not know is not an acknowledgement.
        _ => Verdict::Failed(ForwardError::BadReply("unknown outcome".into())),
    }
}

fn classify(e: reqwest::Error) -> ForwardError {
    if e.is_timeout() {
        ForwardError::Timeout
    } else {
        ForwardError::Transport(e.to_string())
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let ms = headers
        .get("x-tern-retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let secs = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| s * 1000);
    Duration::from_millis(ms.or(secs).unwrap_or(1000))
}
