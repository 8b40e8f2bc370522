//! `tern-loadgen kafka`: the raw reference of the relay's Kafka sink — the same
//! client (the relay's `KafkaSink`: librdkafka, idempotent, `acks=all`, the same
//! compression and linger), producing the same records (one realistic `EventBatch` per
//! record, keyed by app and user, with the sink's headers) straight to the broker, with
//! no relay in front. `scripts/bench-kafka.sh` runs it beside `tern-loadgen` against a
//! relay whose sink is the same broker, and reports relay → Kafka against it.
//!
//! Closed loop: `--concurrency` deliveries in flight, each the next as soon as the
//! last is acknowledged. One JSON line on stdout: events/s (acknowledged within the
//! measured window), ack latency percentiles, failures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde_json::json;
use tern_protocol::{CodecConfig, IngestView, Limits, RelayId};
use tern_relay::backend::kafka::{KafkaSettings, KafkaSink};
use tern_relay::backend::sink::{RawBatch, Sink, Verdict};

use crate::batches::Device;
use crate::pace::parse_duration;
use crate::stats::{histogram, Percentiles};

/// `tern-loadgen kafka` arguments.
#[derive(clap::Args, Debug)]
pub struct KafkaArgs {
    /// Bootstrap brokers, host:port[,...].
    #[arg(long)]
    brokers: String,
    /// Topic.
    #[arg(long, default_value = "tern.events")]
    topic: String,
    /// App id of the batches.
    #[arg(long, default_value = "demo")]
    app: String,
    /// Events per batch (1-1000).
    #[arg(long, default_value_t = 100)]
    events_per_batch: usize,
    /// Deliveries in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before measuring starts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
}

/// Batches pre-built per task (distinct batch ids; cycled).
const POOL: usize = 32;

pub async fn run(args: KafkaArgs) -> anyhow::Result<()> {
    let mut settings = KafkaSettings::default();
    settings.brokers = args.brokers.clone();
    settings.topic = args.topic.clone();
    let sink = Arc::new(
        KafkaSink::new(settings, RelayId::new("loadgen-raw")).context("building the producer")?,
    );
    let mut pools = Vec::with_capacity(args.concurrency);
    for t in 0..args.concurrency {
        let mut device = Device::new(&args.app, "unused", args.events_per_batch, t as u64 + 1)?;
        let mut pool = Vec::with_capacity(POOL);
        for _ in 0..POOL {
            let frame = device.next_batch().frame;
            let max = CodecConfig::device().max_payload;
            let frame = tern_protocol::decode_single_frame(&frame, max)
                .context("decoding a generated frame")?;
            let payload = frame
                .payload(max)
                .context("decompressing a generated frame")?;
            let view = IngestView::parse(&payload, &Limits::default())
                .map_err(|e| anyhow::anyhow!("reading a generated batch: {e}"))?;
            pool.push((
                RawBatch {
                    batch_id: view.batch.batch_id,
                    bytes: Bytes::copy_from_slice(view.batch.bytes),
                },
                view.batch.events as u64,
            ));
        }
        pools.push(pool);
    }
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let latency = Arc::new(Mutex::new(histogram()));
    let (events, failed, sent) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let cpu0 = cpu_seconds();
    let mut tasks = Vec::new();
    for pool in pools {
        let (sink, latency, events, failed, sent) = (
            sink.clone(),
            latency.clone(),
            events.clone(),
            failed.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            for (batch, n) in pool.iter().cycle() {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let verdicts = sink.deliver(std::slice::from_ref(batch)).await;
                let done = Instant::now();
                if t0 < measure_from {
                    continue;
                }
                sent.fetch_add(*n, Ordering::Relaxed);
                match verdicts.as_deref() {
                    Ok([Verdict::Stored]) if done <= end => {
                        events.fetch_add(*n, Ordering::Relaxed);
                        let _ = local.record(
                            u64::try_from((done - t0).as_micros())
                                .unwrap_or(u64::MAX)
                                .max(1),
                        );
                    }
                    Ok([Verdict::Stored]) => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latency
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add(&local)
                .ok();
        }));
    }
    for t in tasks {
        t.await.context("a producing task")?;
    }
    let cpu = cpu_seconds() - cpu0;
    let p = Percentiles::of(&latency.lock().unwrap_or_else(|p| p.into_inner()));
    let events = events.load(Ordering::Relaxed);
    let eps = events as f64 / args.duration.as_secs_f64();
    eprintln!(
        "kafka raw: {eps:.0} events/s acknowledged, ack p50 {:.2} ms p99 {:.2} ms, {} failed",
        p.p50,
        p.p99,
        failed.load(Ordering::Relaxed)
    );
    println!(
        "{}",
        json!({
            "mode": "kafka-raw",
            "events_per_sec": eps,
            "events_acked": events,
            "events_sent": sent.load(Ordering::Relaxed),
            "failed": failed.load(Ordering::Relaxed),
            "latency_ms": p.json_ms(),
            "loadgen_cpu_s": cpu,
            "concurrency": args.concurrency,
            "events_per_batch": args.events_per_batch,
        })
    );
    Ok(())
}

/// This process's user + system CPU time, seconds.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (u, k) = (
                f.get(11)?.parse::<f64>().ok()?,
                f.get(12)?.parse::<f64>().ok()?,
            );
            Some((u + k) / 100.0)
        })
        .unwrap_or(0.0)
}
