//! Where accepted batches go: the [`Sink`] interface the forwarder delivers through,
//! and its HTTP implementation, the backend's `POST /v1/ingest` ([`HttpSink`]). The
//! Kafka implementation is [`KafkaSink`](crate::backend::kafka::KafkaSink); the relay
//! config's `sink` chooses one (`docs/operations.md`, "Sinks").
//!
//! Everything around a sink is the same whichever is chosen: the forwarder's
//! coalescing and in-flight bound, the circuit breaker (fed by the forwarder's
//! request outcomes and the ingest path's verdicts), the spool and its replay, the
//! admin degrade switch, drain and traffic recording.
//!
//! The contract every sink keeps: [`Verdict::Stored`] only when the batch is durable
//! downstream (the backend stored it, or every record of it was acknowledged by all
//! in-sync replicas); [`Verdict::Rejected`] only for what the downstream refuses
//! because of the batch itself, with a reason the device may act on; anything else —
//! unknown, failed, refused for reasons of the downstream's own — is
//! [`Verdict::Failed`], and the batch is resent or spooled, never dropped.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tern_protocol::{
    BatchId, CodecConfig, ForwardOutcome, ForwardReply, MessageKind, RelayId, BACKEND_INGEST_PATH,
    FRAME_CONTENT_TYPE,
};

use bytes::Bytes;
use tern_protocol::{EventBatch, RejectReason};

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
    /// The sink refused the batch for good (a Kafka broker's refusal of the record:
    /// too large for the topic, a policy, an authorization), and it could not be put
    /// aside either. Not the device's fault: the batch is kept (spooled), never dropped.
    #[error("sink refused the batch: {0}")]
    Refused(String),
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

/// A destination for accepted batches.
///
/// [`Sink::deliver`] gets one coalesced group and answers one [`Verdict`] per batch,
/// in order, or an error when nothing is known about any of them (the downstream is
/// unreachable: the circuit breaker counts it as a failed request). Called
/// concurrently, up to the forwarder's `max_in_flight` groups at once.
pub trait Sink: Send + Sync + 'static {
    /// Delivers `batches`; see the trait docs.
    fn deliver<'a>(
        &'a self,
        batches: &'a [RawBatch],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, ForwardError>>;

    /// A short name for logs and metrics (`backend`, `kafka`).
    fn kind(&self) -> &'static str;
}

/// The HTTP backend: one `ForwardRequest` frame per group to `POST /v1/ingest`, the
/// batches' bytes spliced in unchanged, answered by the backend's per-batch results
/// (stored or duplicate: [`Verdict::Stored`]).
#[derive(Clone, Debug)]
pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    relay_id: RelayId,
    timeout: Duration,
}

impl HttpSink {
    /// The backend at `backend_url` (base URL), with an optional bearer `token`,
    /// sending as `relay_id`, each request bounded by `timeout`, over `client`.
    pub fn new(
        backend_url: &str,
        token: Option<String>,
        relay_id: RelayId,
        timeout: Duration,
        client: reqwest::Client,
    ) -> HttpSink {
        HttpSink {
            client,
            url: format!(
                "{}{}",
                backend_url.trim_end_matches('/'),
                BACKEND_INGEST_PATH
            ),
            token,
            relay_id,
            timeout,
        }
    }

    async fn send(&self, batches: &[RawBatch]) -> Result<Vec<Verdict>, ForwardError> {
        // The batches' bytes are spliced in as they are: nothing is decoded or re-encoded.
        let raw: Vec<&[u8]> = batches.iter().map(|b| &b.bytes[..]).collect();
        let body = tern_protocol::codec::encode_forward_request_raw(
            &self.relay_id,
            &raw,
            &CodecConfig::backend(),
        )
        .map_err(|e| ForwardError::Encode(e.to_string()))?;
        let mut req = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, FRAME_CONTENT_TYPE)
            .timeout(self.timeout)
            .body(body);
        if let Some(token) = &self.token {
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
        let reply: ForwardReply = tern_protocol::decode_expected(
            &frame,
            MessageKind::ForwardReply,
            &CodecConfig::backend(),
        )
        .map_err(|e| ForwardError::BadReply(e.to_string()))?;
        if reply.results.len() != batches.len() {
            return Err(ForwardError::BadReply(format!(
                "{} results for {} batches",
                reply.results.len(),
                batches.len()
            )));
        }
        Ok(batches
            .iter()
            .zip(reply.results)
            .map(|(batch, result)| verdict(batch.batch_id, result.batch_id, result.outcome))
            .collect())
    }
}

impl Sink for HttpSink {
    fn deliver<'a>(
        &'a self,
        batches: &'a [RawBatch],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, ForwardError>> {
        Box::pin(self.send(batches))
    }

    fn kind(&self) -> &'static str {
        "backend"
    }
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
