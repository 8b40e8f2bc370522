//! The Kafka sink: accepted batches as records of a Kafka topic (Apache Kafka,
//! Redpanda, MSK: one protocol), through librdkafka (`rdkafka`).
//!
//! **Why librdkafka.** Its producer is the reference outside the JVM: idempotent
//! (`enable.idempotence`: the broker drops a retried record it already has, and keeps
//! each partition's records in order across retries), acknowledged by every in-sync
//! replica (`acks=all`), with a per-record delivery report, compression and the Java
//! client's partitioner. The pure-Rust clients (`rskafka`, `kafka`) have no idempotent
//! producer. It is built from source and linked statically.
//!
//! **Records.** One record per batch. The value is the batch's MessagePack `EventBatch`
//! exactly as the device sent it (what the HTTP backend receives inside a
//! `ForwardRequest`). The key is the app id, a NUL byte and the batch's routing user
//! (protocol §8), so all of one user's batches land in one partition, in order — the
//! relays' sharding on the user, all the way down; the partitioner is the Java client's
//! (`murmur2_random`), so other producers of the same keys agree. Headers let a
//! consumer deduplicate and route without decoding: [`HEADER_BATCH_ID`],
//! [`HEADER_APP_ID`], [`HEADER_DEVICE_ID`], [`HEADER_SEQ_FIRST`], [`HEADER_SEQ_LAST`],
//! [`HEADER_EVENTS`], [`HEADER_RELAY_ID`], [`HEADER_FORMAT`]. A batch sent twice (a
//! device's resend after a lost reply, a spool replay) is a second record with the same
//! batch id: at-least-once, duplicates only as the same batch id.
//!
//! **Verdicts.** [`Verdict::Stored`] only after the record's delivery report says every
//! in-sync replica has it. A record not acknowledged within `delivery_timeout_ms`
//! (broker down, a partition without a leader, a topic not created yet) is
//! [`Verdict::Failed`], per batch: the ingest path spools it and replay sends it again,
//! as with a failing HTTP backend; other batches of the same group stand on their own.
//! When every batch of a group failed that way the group is an error, which the
//! circuit breaker counts. A record the broker **refuses** for good (too large for the
//! topic, a policy, an authorization) is not the device's fault: it goes to the dead
//! letter topic with a [`HEADER_REFUSED`] header saying why, and counts as stored
//! there; if the dead letter topic refuses it too, it is
//! [`ForwardError::Refused`] and stays in the relay's spool.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{join_all, BoxFuture};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use serde::Deserialize;
use tern_protocol::{BatchView, Limits, RejectReason, RelayId};

use crate::backend::sink::{ForwardError, RawBatch, Sink, Verdict};

/// Header: the batch id (UUID, hyphenated) — a consumer's deduplication key.
pub const HEADER_BATCH_ID: &str = "tern-batch-id";
/// Header: the app id.
pub const HEADER_APP_ID: &str = "tern-app-id";
/// Header: the device id (UUID, hyphenated).
pub const HEADER_DEVICE_ID: &str = "tern-device-id";
/// Header: the first event's `seq` (decimal; absent for a batch without events).
pub const HEADER_SEQ_FIRST: &str = "tern-seq-first";
/// Header: the last event's `seq` (decimal; absent for a batch without events).
pub const HEADER_SEQ_LAST: &str = "tern-seq-last";
/// Header: the number of events (decimal).
pub const HEADER_EVENTS: &str = "tern-events";
/// Header: the relay that produced the record.
pub const HEADER_RELAY_ID: &str = "tern-relay-id";
/// Header: the value's format, [`FORMAT`].
pub const HEADER_FORMAT: &str = "tern-format";
/// Header of dead letter records: why the broker refused the record.
pub const HEADER_REFUSED: &str = "tern-refused";
/// Header of dead letter records: the topic that refused it.
pub const HEADER_TOPIC: &str = "tern-topic";
/// The value's format: one MessagePack `EventBatch` (docs/protocol.md §4).
pub const FORMAT: &str = "event-batch+msgpack;v=1";

/// The placeholder of a per-app topic name.
pub const APP_PLACEHOLDER: &str = "{app}";

/// librdkafka properties the sink sets itself; `[kafka.properties]` may not.
const OWNED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "compression.type",
    "compression.codec",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "linger.ms",
    "queue.buffering.max.ms",
    "queue.buffering.max.kbytes",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "retries",
    "message.send.max.retries",
    "partitioner",
    "transactional.id",
    "client.id",
    "enable.gapless.guarantee",
];

/// The `[kafka]` table of the relay config (`docs/operations.md`, "Sinks").
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port` separated by commas.
    pub brokers: String,
    /// The topic of every record, or a per-app layout with `{app}` in it (e.g.
    /// `tern.events.{app}`; the app id is escaped to Kafka's topic alphabet). Topics
    /// must exist: the sink never creates them.
    pub topic: String,
    /// Where records the broker refuses for good go, with a `tern-refused` header.
    pub dead_letter_topic: String,
    /// `none`, `gzip`, `snappy` or `lz4`.
    pub compression: String,
    /// How long a record may wait for its acknowledgement (retries included) before
    /// its batch counts as failed and is spooled, milliseconds.
    pub delivery_timeout_ms: u64,
    /// How long the producer waits to fill a request to a partition, milliseconds.
    pub linger_ms: u64,
    /// Most bytes of records waiting in the producer, KiB.
    pub max_buffered_kib: u64,
    /// The client id the brokers see. Default: the relay id.
    pub client_id: Option<String>,
    /// More librdkafka properties (TLS, SASL, timeouts...). Those the sink owns
    /// (acks, idempotence, compression, timeouts above...) are refused.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            topic: "tern.events".into(),
            dead_letter_topic: "tern.dead-letter".into(),
            compression: "lz4".into(),
            delivery_timeout_ms: 5_000,
            linger_ms: 5,
            max_buffered_kib: 128 * 1024,
            client_id: None,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaSettings {
    /// Checks the settings; the error names the field (`kafka.<field>: why`).
    pub fn validate(&self) -> Result<(), KafkaSinkError> {
        let bad = |field: &str, why: String| KafkaSinkError::Invalid {
            field: format!("kafka.{field}"),
            reason: why,
        };
        if self.brokers.trim().is_empty() {
            return Err(bad("brokers", "empty".into()));
        }
        for b in self.brokers.split(',') {
            let b = b.trim();
            let ok = b
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(bad("brokers", format!("{b:?} is not host:port")));
            }
        }
        let layout = TopicLayout::new(&self.topic);
        if let Err(why) = check_topic(&layout.topic_for("app")) {
            return Err(bad("topic", format!("{:?}: {why}", self.topic)));
        }
        if self.topic.matches(APP_PLACEHOLDER).count() > 1 {
            return Err(bad(
                "topic",
                format!("{:?}: one {APP_PLACEHOLDER} at most", self.topic),
            ));
        }
        if let Err(why) = check_topic(&self.dead_letter_topic) {
            return Err(bad(
                "dead_letter_topic",
                format!("{:?}: {why}", self.dead_letter_topic),
            ));
        }
        if self.dead_letter_topic == self.topic {
            return Err(bad(
                "dead_letter_topic",
                "must differ from the topic (a refused record would be refused again)".into(),
            ));
        }
        if !matches!(
            self.compression.as_str(),
            "none" | "gzip" | "snappy" | "lz4"
        ) {
            return Err(bad(
                "compression",
                format!("{:?} is not none, gzip, snappy or lz4", self.compression),
            ));
        }
        if !(1_000..=300_000).contains(&self.delivery_timeout_ms) {
            return Err(bad(
                "delivery_timeout_ms",
                format!("{} is not within 1000..=300000", self.delivery_timeout_ms),
            ));
        }
        if self.linger_ms > 1_000 {
            return Err(bad("linger_ms", format!("{} is over 1000", self.linger_ms)));
        }
        if !(1_024..=4 * 1024 * 1024).contains(&self.max_buffered_kib) {
            return Err(bad(
                "max_buffered_kib",
                format!("{} is not within 1024..=4194304", self.max_buffered_kib),
            ));
        }
        for key in self.properties.keys() {
            if OWNED_PROPERTIES.contains(&key.as_str()) {
                return Err(bad(
                    "properties",
                    format!("{key:?} is set by the sink (see its own setting)"),
                ));
            }
        }
        Ok(())
    }

    /// The librdkafka producer configuration of these settings.
    fn client_config(&self, relay_id: &RelayId) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers)
            .set(
                "client.id",
                self.client_id.as_deref().unwrap_or(relay_id.as_str()),
            )
            // Exactly one copy per send, in order per partition, acknowledged by every
            // in-sync replica (idempotence implies acks=all; both are stated).
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &self.compression)
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .set("linger.ms", self.linger_ms.to_string())
            .set(
                "queue.buffering.max.kbytes",
                self.max_buffered_kib.to_string(),
            )
            // The Java client's partitioner: other producers of the same keys agree.
            .set("partitioner", "murmur2_random");
        c
    }
}

/// Why the Kafka sink could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSinkError {
    /// A setting is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The setting, as named in the config file (`kafka.topic`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// librdkafka refused the configuration.
    #[error("kafka producer: {0}")]
    Client(#[from] KafkaError),
}

/// Topic of each record: one topic, or one per app.
#[derive(Clone, Debug)]
struct TopicLayout {
    /// Text before and after `{app}`; `None` for a single topic.
    per_app: Option<(String, String)>,
    single: String,
}

impl TopicLayout {
    fn new(topic: &str) -> TopicLayout {
        match topic.split_once(APP_PLACEHOLDER) {
            Some((before, after)) => TopicLayout {
                per_app: Some((before.to_string(), after.to_string())),
                single: String::new(),
            },
            None => TopicLayout {
                per_app: None,
                single: topic.to_string(),
            },
        }
    }

    fn topic_for(&self, app: &str) -> String {
        match &self.per_app {
            None => self.single.clone(),
            Some((before, after)) => {
                let mut t = String::with_capacity(before.len() + app.len() + after.len());
                t.push_str(before);
                escape_app(app, &mut t);
                t.push_str(after);
                t
            }
        }
    }
}

/// Writes `app` in Kafka's topic alphabet (`[A-Za-z0-9.-]` kept, every other byte as
/// `_XX`, `_` included), so distinct apps never share a topic.
fn escape_app(app: &str, out: &mut String) {
    for b in app.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
}

/// Kafka's rule for a topic name.
fn check_topic(t: &str) -> Result<(), &'static str> {
    if t.is_empty() {
        return Err("empty");
    }
    if t.len() > 249 {
        return Err("longer than 249 characters");
    }
    if t == "." || t == ".." {
        return Err("not a topic name");
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("characters outside [A-Za-z0-9._-]");
    }
    Ok(())
}

/// The Kafka sink. See the [module docs](self).
pub struct KafkaSink {
    settings: KafkaSettings,
    relay_id: RelayId,
    layout: TopicLayout,
    /// Rebuilt after a fatal error (an idempotent producer that lost its sequence
    /// cannot go on).
    producer: Mutex<Handle>,
    /// Limits for reading batch metadata (the batches were validated on ingest).
    limits: Limits,
    /// The refusal logs (a batch refused everywhere comes back with every replay pass).
    refusals: Throttle,
    stuck: Throttle,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("settings", &self.settings)
            .field("relay_id", &self.relay_id)
            .finish_non_exhaustive()
    }
}

/// What became of one record.
enum Produced {
    Acked,
    /// Refused for good (by the broker, or by the producer before sending), with why.
    Refused(String),
    /// Refused by the producer before it was sent: no sequence was spent on it.
    RefusedLocally(String),
    Failed(ForwardError),
}

impl KafkaSink {
    /// Validates `settings` and creates the producer (no connection yet: brokers
    /// are reached on the first record, and an unreachable broker is a failed batch,
    /// spooled, never a failed start).
    pub fn new(settings: KafkaSettings, relay_id: RelayId) -> Result<KafkaSink, KafkaSinkError> {
        settings.validate()?;
        let producer: Producer_ = settings
            .client_config(&relay_id)
            .create_with_context(SinkContext::new())?;
        Ok(KafkaSink {
            layout: TopicLayout::new(&settings.topic),
            settings,
            relay_id,
            producer: Mutex::new(Handle::new(producer)),
            limits: Limits::default(),
            refusals: Throttle::new(),
            stuck: Throttle::new(),
        })
    }

    /// The sink's own wait for a delivery report: librdkafka's timeout and a margin.
    fn deadline(&self) -> Duration {
        Duration::from_millis(self.settings.delivery_timeout_ms + 500)
    }

    fn producer(&self) -> Handle {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces `used` with a new producer (a new producer id, sequences from 0),
    /// unless another delivery did already.
    ///
    /// Done when a record of `used` was refused, timed out or failed at the broker:
    /// its idempotence state (the sequence of the partition) is then uncertain, and
    /// librdkafka would bump the producer's epoch and go on; a new producer id does
    /// the same job with fewer assumptions about the broker (tansu 0.6.0, which the
    /// tests run against, fails every produce after an epoch bump). `used` is purged:
    /// the records it still holds, queued or in flight, are answered failed at once
    /// and spooled — duplicates, if the broker had them, only as the same batch id —
    /// and it sends nothing more. At most one replacement per failed
    /// producer, so an outage costs one per `delivery_timeout_ms`.
    fn retire(&self, used: &Producer_, why: &'static str) {
        let mut current = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        let same = current
            .get()
            .is_some_and(|c| c.client().native_ptr() == used.client().native_ptr());
        if !same {
            return; // already replaced
        }
        match self
            .settings
            .client_config(&self.relay_id)
            .create_with_context(SinkContext::new())
        {
            Ok(p) => {
                if let Some((code, reason)) = used.client().fatal_error() {
                    tracing::error!(?code, %reason, "kafka producer failed fatally; a new one replaces it");
                } else {
                    tracing::info!(why, "kafka producer replaced");
                }
                metrics::counter!("tern_relay_kafka_producer_renewals_total", "why" => why)
                    .increment(1);
                let old = std::mem::replace(&mut *current, Handle::new(p));
                drop(current);
                // It sends nothing more: what it still holds is answered failed (and
                // spooled) now, not re-sent under a bumped epoch. Its last clone is
                // dropped on the blocking pool (`Handle`).
                if let Some(old) = old.get() {
                    old.purge(PurgeConfig::default().queue().inflight().non_blocking());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "kafka producer could not be replaced")
            }
        }
    }

    /// Replaces `used` if it failed fatally.
    fn renew_if_fatal(&self, used: &Producer_) {
        if used.client().fatal_error().is_some() {
            self.retire(used, "fatal");
        }
    }

    async fn deliver_one(&self, producer: &Producer_, batch: &RawBatch) -> Verdict {
        let view = match BatchView::parse(&batch.bytes, &self.limits) {
            Ok(v) => v,
            Err(e) => {
                // The same bytes would be refused by any backend: the device's fault.
                return Verdict::Rejected {
                    reason: RejectReason::Malformed,
                    detail: format!("batch unreadable: {e}"),
                };
            }
        };
        let mut key = Vec::with_capacity(view.app_id.len() + 40);
        key.extend_from_slice(view.app_id.as_bytes());
        key.push(0);
        key.extend_from_slice(view.routing_key().as_bytes());
        let batch_id = view.batch_id.to_string();
        let device_id = view.device_id.as_uuid().hyphenated().to_string();
        let events = view.events.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(8)
            .insert(header(HEADER_BATCH_ID, &batch_id))
            .insert(header(HEADER_APP_ID, view.app_id))
            .insert(header(HEADER_DEVICE_ID, &device_id))
            .insert(header(HEADER_EVENTS, &events))
            .insert(header(HEADER_RELAY_ID, self.relay_id.as_str()))
            .insert(header(HEADER_FORMAT, FORMAT));
        if let Some((first, last)) = view.seq_range {
            headers = headers
                .insert(header(HEADER_SEQ_FIRST, &first.to_string()))
                .insert(header(HEADER_SEQ_LAST, &last.to_string()));
        }
        let topic = self.layout.topic_for(view.app_id);
        let started = Instant::now();
        let produced = match check_topic(&topic) {
            // Nothing sent, no sequence spent: the producer stays.
            Err(why) => Produced::RefusedLocally(format!("topic {topic:?}: {why}")),
            Ok(()) => {
                produce(
                    producer,
                    FutureRecord::to(&topic)
                        .key(&key[..])
                        .payload(&batch.bytes[..])
                        .headers(headers.clone()),
                    self.deadline(),
                )
                .await
            }
        };
        match &produced {
            Produced::Acked | Produced::Failed(ForwardError::QueueFull) => {}
            Produced::Refused(_) => self.retire(producer, "refused"),
            Produced::RefusedLocally(_) => {}
            Produced::Failed(ForwardError::Timeout) => self.retire(producer, "timeout"),
            Produced::Failed(_) => self.retire(producer, "failed"),
        }
        match produced {
            Produced::Acked => {
                record_ack("acked", started.elapsed());
                Verdict::Stored
            }
            Produced::Failed(e) => {
                metrics::counter!("tern_relay_kafka_records_total", "result" => "failed")
                    .increment(1);
                Verdict::Failed(e)
            }
            Produced::Refused(why) | Produced::RefusedLocally(why) => {
                if let Some(suppressed) = self.refusals.allow() {
                    tracing::warn!(%topic, batch_id = %batch_id, %why, suppressed, "a record was refused; sending it to the dead letter topic");
                }
                let headers = headers
                    .insert(header(HEADER_REFUSED, &why))
                    .insert(header(HEADER_TOPIC, &topic));
                // On the producer that replaced the one whose record was refused.
                let handle = self.producer();
                let Some(fresh) = handle.get() else {
                    return Verdict::Failed(ForwardError::Closed);
                };
                let dead = produce(
                    fresh,
                    FutureRecord::to(&self.settings.dead_letter_topic)
                        .key(&key[..])
                        .payload(&batch.bytes[..])
                        .headers(headers),
                    self.deadline(),
                )
                .await;
                if !matches!(dead, Produced::Acked) {
                    self.retire(fresh, "failed");
                }
                match dead {
                    Produced::Acked => {
                        record_ack("dead_lettered", started.elapsed());
                        Verdict::Stored
                    }
                    Produced::Refused(again)
                    | Produced::RefusedLocally(again)
                    | Produced::Failed(ForwardError::Refused(again)) => {
                        metrics::counter!("tern_relay_kafka_records_total", "result" => "refused")
                            .increment(1);
                        if let Some(suppressed) = self.stuck.allow() {
                            tracing::error!(batch_id = %batch_id, %why, dead_letter = %again, suppressed, "the dead letter topic refused a record too; it stays in the spool");
                        }
                        Verdict::Failed(ForwardError::Refused(format!(
                            "{why}; dead letter topic: {again}"
                        )))
                    }
                    Produced::Failed(e) => {
                        metrics::counter!("tern_relay_kafka_records_total", "result" => "failed")
                            .increment(1);
                        Verdict::Failed(e)
                    }
                }
            }
        }
    }

    async fn deliver_all(&self, batches: &[RawBatch]) -> Result<Vec<Verdict>, ForwardError> {
        let handle = self.producer();
        let Some(producer) = handle.get() else {
            return Err(ForwardError::Closed);
        };
        let verdicts = join_all(batches.iter().map(|b| self.deliver_one(producer, b))).await;
        self.renew_if_fatal(producer);
        // Nothing acknowledged and every batch failed without a refusal: the cluster
        // is unreachable for this group, which the breaker should hear as one failure.
        let unreachable = verdicts.iter().all(|v| {
            matches!(
                v,
                Verdict::Failed(ForwardError::Timeout | ForwardError::Transport(_))
            )
        });
        if unreachable {
            if let Some(Verdict::Failed(e)) = verdicts.into_iter().next() {
                return Err(e);
            }
            return Ok(Vec::new());
        }
        Ok(verdicts)
    }
}

impl Sink for KafkaSink {
    fn deliver<'a>(
        &'a self,
        batches: &'a [RawBatch],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, ForwardError>> {
        Box::pin(self.deliver_all(batches))
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

fn record_ack(result: &'static str, latency: Duration) {
    metrics::counter!("tern_relay_kafka_records_total", "result" => result).increment(1);
    metrics::histogram!("tern_relay_kafka_ack_seconds").record(latency.as_secs_f64());
}

/// Produces one record and waits for its delivery report.
///
/// librdkafka expires unacknowledged records on its own schedule, which with every
/// broker down ran up to ten seconds past `message.timeout.ms`: the sink keeps its own
/// deadline, a little after librdkafka's. A record librdkafka still delivers after
/// that is a second copy of a batch that was spooled: the same batch id.
async fn produce(
    producer: &Producer_,
    record: FutureRecord<'_, [u8], [u8]>,
    deadline: Duration,
) -> Produced {
    let delivery = match producer.send_result(record) {
        Ok(d) => d,
        Err((e, _)) => {
            return match classify(e) {
                Produced::Refused(why) => Produced::RefusedLocally(why),
                other => other,
            }
        }
    };
    match tokio::time::timeout(deadline, delivery).await {
        Ok(Ok(Ok(_))) => Produced::Acked,
        Ok(Ok(Err((e, _)))) => classify(e),
        Ok(Err(_)) => Produced::Failed(ForwardError::Closed),
        Err(_) => Produced::Failed(ForwardError::Timeout),
    }
}

/// The producer with the sink's client context.
type Producer_ = FutureProducer<SinkContext>;

/// A shared producer whose last clone is dropped on the blocking pool (when there is a
/// runtime): librdkafka's drop purges, flushes for up to 500 ms and joins its threads,
/// which must not hold a runtime worker that serves devices.
#[derive(Clone)]
struct Handle(Arc<Owned>);

/// The producer a [`Handle`] shares; `None` only while it is being dropped.
struct Owned(Option<Producer_>);

impl Handle {
    fn new(producer: Producer_) -> Handle {
        Handle(Arc::new(Owned(Some(producer))))
    }

    /// The producer (always there while a handle exists).
    fn get(&self) -> Option<&Producer_> {
        self.0 .0.as_ref()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(producer) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || drop(producer));
                }
                Err(_) => drop(producer),
            }
        }
    }
}

/// At most one log line per 10 s for a repeating condition, counting the rest.
struct Throttle {
    start: Instant,
    /// Milliseconds after `start` of the last line allowed, plus one (0: none yet).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= 10_000;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// librdkafka's logs and client errors, as the relay reports them: every client
/// error counted (`tern_relay_kafka_client_errors_total`), logged at `warn` at most
/// once per 10 s (an unreachable cluster reports every reconnect, on every broker);
/// librdkafka's own log lines at `debug`, its warnings and errors at `info`.
struct SinkContext {
    errors: Throttle,
}

impl SinkContext {
    fn new() -> SinkContext {
        SinkContext {
            errors: Throttle::new(),
        }
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::info!(target: "librdkafka", facility = fac, "{message}")
            }
            _ => tracing::debug!(target: "librdkafka", facility = fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error
            .rdkafka_error_code()
            .map_or_else(|| "other".to_string(), |c| format!("{c:?}"));
        metrics::counter!("tern_relay_kafka_client_errors_total", "code" => code).increment(1);
        if let Some(suppressed) = self.errors.allow() {
            tracing::warn!(%error, reason, suppressed, "kafka client error (more of them in the last 10 s: suppressed)");
        }
    }
}

/// A refusal for good (the record itself, against this topic's settings or the
/// cluster's policy) or a failure that a later send may overcome.
fn classify(e: KafkaError) -> Produced {
    let code = e.rdkafka_error_code();
    match code {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed,
        ) => Produced::Refused(e.to_string()),
        Some(RDKafkaErrorCode::QueueFull) => Produced::Failed(ForwardError::QueueFull),
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut) => {
            Produced::Failed(ForwardError::Timeout)
        }
        _ => Produced::Failed(ForwardError::Transport(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_app_topics_escape_app_ids_injectively() {
        let l = TopicLayout::new("tern.events.{app}");
        assert_eq!(l.topic_for("demo-1.x"), "tern.events.demo-1.x");
        assert_eq!(l.topic_for("a_b"), "tern.events.a_5Fb");
        assert_eq!(l.topic_for("a/b"), "tern.events.a_2Fb");
        assert_ne!(l.topic_for("a_2Fb"), l.topic_for("a/b"));
        assert_eq!(l.topic_for("é"), "tern.events._C3_A9");
        assert_eq!(TopicLayout::new("one").topic_for("x"), "one");
        assert!(check_topic(&l.topic_for(&"x".repeat(300))).is_err());
    }

    #[test]
    fn settings_are_refused_with_the_field_named() {
        let ok = KafkaSettings::default();
        ok.validate().unwrap();
        let cases: Vec<(KafkaSettings, &str)> = vec![
            (
                KafkaSettings {
                    brokers: "".into(),
                    ..ok.clone()
                },
                "kafka.brokers",
            ),
            (
                KafkaSettings {
                    brokers: "a:1,b".into(),
                    ..ok.clone()
                },
                "kafka.brokers",
            ),
            (
                KafkaSettings {
                    topic: "bad topic".into(),
                    ..ok.clone()
                },
                "kafka.topic",
            ),
            (
                KafkaSettings {
                    topic: "{app}.{app}".into(),
                    ..ok.clone()
                },
                "kafka.topic",
            ),
            (
                KafkaSettings {
                    dead_letter_topic: ok.topic.clone(),
                    ..ok.clone()
                },
                "kafka.dead_letter_topic",
            ),
            (
                KafkaSettings {
                    compression: "brotli".into(),
                    ..ok.clone()
                },
                "kafka.compression",
            ),
            (
                KafkaSettings {
                    delivery_timeout_ms: 10,
                    ..ok.clone()
                },
                "kafka.delivery_timeout_ms",
            ),
            (
                KafkaSettings {
                    linger_ms: 5_000,
                    ..ok.clone()
                },
                "kafka.linger_ms",
            ),
            (
                KafkaSettings {
                    max_buffered_kib: 1,
                    ..ok.clone()
                },
                "kafka.max_buffered_kib",
            ),
            (
                KafkaSettings {
                    properties: [("acks".to_string(), "1".to_string())].into(),
                    ..ok.clone()
                },
                "kafka.properties",
            ),
            (
                KafkaSettings {
                    properties: [("enable.idempotence".to_string(), "false".to_string())].into(),
                    ..ok.clone()
                },
                "kafka.properties",
            ),
        ];
        for (settings, field) in cases {
            let e = settings.validate().unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn librdkafka_refuses_an_unknown_property_before_anything_connects() {
        let settings = KafkaSettings {
            properties: [("no.such.property".to_string(), "1".to_string())].into(),
            ..KafkaSettings::default()
        };
        let e = KafkaSink::new(settings, RelayId::new("r")).unwrap_err();
        assert!(matches!(e, KafkaSinkError::Client(_)), "{e}");
        KafkaSink::new(KafkaSettings::default(), RelayId::new("r")).unwrap();
    }

    #[test]
    fn refusals_are_told_from_failures() {
        let refused = classify(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge,
        ));
        assert!(matches!(refused, Produced::Refused(_)));
        let timeout = classify(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        ));
        assert!(matches!(timeout, Produced::Failed(ForwardError::Timeout)));
        let unknown_topic = classify(KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
        assert!(
            matches!(unknown_topic, Produced::Failed(ForwardError::Transport(_))),
            "a topic not created yet is a failure (spooled), not a refusal"
        );
    }
}
