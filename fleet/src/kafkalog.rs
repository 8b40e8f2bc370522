//! The stack with the relays' Kafka sink (`tern-fleet run --sink kafka`): a
//! Kafka-protocol broker (tansu, `tern_testkit::kafka`) beside the stub, its topics
//! created, and the delivery report's counters read back from the topic instead of the
//! stub's `/verify/*` — the same fields, so the report and its verdict do not change.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use tern_protocol::{BatchId, DeviceId, EventBatch};
use tern_testkit::kafka::Broker;

use crate::{FleetError, Result};

/// The topic every relay produces to.
pub const TOPIC: &str = "tern.events";
/// The relays' dead letter topic.
pub const DEAD_LETTER: &str = "tern.dead-letter";
/// Partitions of [`TOPIC`].
const PARTITIONS: i32 = 6;

/// The broker and what the report reads from it.
#[derive(Debug, Clone)]
pub struct KafkaLog {
    broker: Arc<Broker>,
    /// What was read so far: each record is read once, however often the report
    /// polls.
    read: Arc<std::sync::Mutex<Reader>>,
}

/// The next offset of each partition of the two topics, and the counters so far.
#[derive(Debug, Default)]
struct Reader {
    next: HashMap<i32, i64>,
    next_dead: HashMap<i32, i64>,
    records: usize,
    tally: Tally,
}

impl KafkaLog {
    /// Starts the broker with its data in `dir` and creates the topics.
    pub async fn start(dir: &Path) -> Result<KafkaLog> {
        let broker = Broker::start(dir)?;
        broker.create_topic(TOPIC, PARTITIONS, &[]).await?;
        broker.create_topic(DEAD_LETTER, 1, &[]).await?;
        Ok(KafkaLog {
            broker: Arc::new(broker),
            read: Arc::default(),
        })
    }

    /// `host:port` of the broker.
    pub fn bootstrap(&self) -> String {
        self.broker.bootstrap()
    }

    /// The relays' settings for this broker (`TERN_RELAY_*`).
    pub fn relay_env(&self) -> Vec<(String, String)> {
        vec![
            ("TERN_RELAY_SINK".into(), "kafka".into()),
            ("TERN_RELAY_KAFKA_BROKERS".into(), self.bootstrap()),
            ("TERN_RELAY_KAFKA_TOPIC".into(), TOPIC.into()),
        ]
    }

    /// Reads the topic back: the stub's `/verify/summary` and `/verify/latency`
    /// fields, computed from the records (dead-lettered records count as delivered
    /// too: they are durable in the cluster).
    pub async fn read(&self) -> Result<(serde_json::Value, serde_json::Value)> {
        let broker = self.broker.clone();
        let read = self.read.clone();
        tokio::task::spawn_blocking(move || {
            // One reader at a time: the offsets and the tally move together.
            let mut guard = read.lock().unwrap_or_else(|p| p.into_inner());
            let r = &mut *guard;
            let records = broker.read_topic_from(TOPIC, &r.next)?;
            let dead = broker.read_topic_from(DEAD_LETTER, &r.next_dead)?;
            for (list, next) in [(&records, &mut r.next), (&dead, &mut r.next_dead)] {
                for rec in list {
                    let batch: EventBatch =
                        tern_protocol::decode_payload(&rec.value).map_err(|e| {
                            FleetError::Verify(format!(
                                "record {}/{} is not an EventBatch: {e}",
                                rec.partition, rec.offset
                            ))
                        })?;
                    r.tally.add(&batch, rec.timestamp_ms);
                    let n = next.entry(rec.partition).or_default();
                    *n = (*n).max(rec.offset + 1);
                }
            }
            r.records += records.len() + dead.len();
            Ok::<_, FleetError>(r.tally.summary(r.records))
        })
        .await
        .map_err(|e| FleetError::Verify(format!("reading the topic: {e}")))?
    }
}

/// The counters of [`KafkaLog::read`].
#[derive(Debug, Default)]
struct Tally {
    batches: HashSet<BatchId>,
    batches_duplicate: u64,
    events_in_duplicate_batches: u64,
    events_duplicate: u64,
    seqs: HashMap<DeviceId, (HashSet<u64>, u64)>,
    latencies_ms: Vec<i64>,
}

impl Tally {
    fn add(&mut self, batch: &EventBatch, timestamp_ms: Option<i64>) {
        if !self.batches.insert(batch.batch_id) {
            self.batches_duplicate += 1;
            self.events_in_duplicate_batches += batch.events.len() as u64;
            return;
        }
        let (seen, max) = self.seqs.entry(batch.device_id).or_default();
        for e in &batch.events {
            if seen.insert(e.seq) {
                *max = (*max).max(e.seq);
                if let Some(t) = timestamp_ms {
                    self.latencies_ms.push((t - e.ts_ms).max(0));
                }
            } else {
                self.events_duplicate += 1;
            }
        }
    }

    fn summary(&mut self, records: usize) -> (serde_json::Value, serde_json::Value) {
        let unique: u64 = self.seqs.values().map(|(s, _)| s.len() as u64).sum();
        // Sequence numbers start at 1 on every device: the missing ones below the
        // highest seen are gaps.
        let gaps: u64 = self
            .seqs
            .values()
            .map(|(s, max)| max.saturating_sub(s.len() as u64))
            .sum();
        self.latencies_ms.sort_unstable();
        let pct = |q: f64| -> i64 {
            if self.latencies_ms.is_empty() {
                return 0;
            }
            let i = ((self.latencies_ms.len() - 1) as f64 * q).round() as usize;
            self.latencies_ms[i]
        };
        let summary = serde_json::json!({
            "records": records,
            "batches_received": records,
            "batches_stored": self.batches.len(),
            "batches_duplicate": self.batches_duplicate,
            "events_unique": unique,
            "events_duplicate": self.events_duplicate,
            "events_in_duplicate_batches": self.events_in_duplicate_batches,
            "sequence_gaps": gaps,
            "devices": self.seqs.len(),
        });
        let latency = serde_json::json!({
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "events": self.latencies_ms.len(),
        });
        (summary, latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_testkit::Batch;

    #[test]
    fn resends_are_counted_as_duplicates_and_missing_seqs_as_gaps() {
        let device = DeviceId::random();
        let a = Batch::new("demo").device(device).events(3).build();
        let b = Batch::new("demo")
            .device(device)
            .first_seq(6)
            .events(2)
            .build();
        let mut t = Tally::default();
        t.add(&a, Some(1_001));
        t.add(&a, Some(1_050)); // a resend: the same batch id
        t.add(&b, Some(1_101));
        let (s, l) = t.summary(3);
        assert_eq!(s["events_unique"], 5);
        assert_eq!(s["batches_duplicate"], 1);
        assert_eq!(s["events_in_duplicate_batches"], 3);
        assert_eq!(s["sequence_gaps"], 2, "seqs 4 and 5 never arrived");
        assert_eq!(s["devices"], 1);
        assert_eq!(l["p50_ms"], 1_000);
    }

    #[test]
    fn counters_grow_across_reads_as_if_read_at_once() {
        let device = DeviceId::random();
        let a = Batch::new("demo").device(device).events(3).build();
        let b = Batch::new("demo")
            .device(device)
            .first_seq(4)
            .events(2)
            .build();
        let mut t = Tally::default();
        t.add(&a, Some(1_001));
        let (first, _) = t.summary(1);
        assert_eq!(first["events_unique"], 3);
        t.add(&a, Some(1_050)); // a resend read by the next poll
        t.add(&b, Some(1_101));
        let (s, _) = t.summary(3);
        assert_eq!(s["events_unique"], 5);
        assert_eq!(s["batches_duplicate"], 1);
        assert_eq!(s["sequence_gaps"], 0);
        assert_eq!(s["records"], 3);
    }
}
