//! `tern-loadgen replay`: plays a recording made by relays (`PUT /admin/v1/record`,
//! segments under `record/<relay>/` in their object store) against a relay cluster, at
//! N× speed with the original pacing, and reports throughput, latency and outcomes.
//!
//! By default every batch gets a fresh batch id and every device a fresh device id
//! (consistently: a device's batches stay one device), so a backend counts the replay
//! as new traffic; `--keep-batch-ids` sends the recorded ids, so a backend that already
//! has them dedupes the replay.
//!
//! Segments are read with the relay library's reader (`tern_relay::ingest::playback`,
//! shared with `tern-fleet run --replay-dir`): relays merged into one timeline,
//! unreadable segments skipped and counted (`segments_unreadable` in the report).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tern_protocol::{AppId, Auth, BatchId, CodecConfig, DeviceId, IngestRequest, Message};
use tern_relay::ingest::playback::{ReadStats, RecordingReader};
use tern_relay::ingest::record::RecordedBatch;
use tokio::sync::Semaphore;

use crate::client::{connect, request, Target};
use crate::stats::{histogram, Outcome, Outcomes, Percentiles};

/// Arguments of `tern-loadgen replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Root of the object store holding the recording (the recording relay's local
    /// spool directory).
    #[arg(long)]
    store_dir: PathBuf,
    /// Recording prefix: `record` (every relay's) or `record/<relay-id>`.
    #[arg(long, default_value = "record")]
    prefix: String,
    /// A relay's QUIC address (host:port).
    #[arg(long)]
    target: String,
    /// TLS server name to verify.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// PEM file of the CA to trust.
    #[arg(long)]
    ca: PathBuf,
    /// An app's key, `APP=KEY` (repeat for each app in the recording; recordings do
    /// not hold keys).
    #[arg(long = "key", value_parser = parse_key, required = true)]
    keys: Vec<(String, String)>,
    /// Speed-up of the original pacing (2 = twice as fast; 0 = as fast as possible).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Send the recorded batch and device ids (a backend that has them dedupes the
    /// replay); default: fresh ids (counted as new traffic).
    #[arg(long)]
    keep_batch_ids: bool,
    /// QUIC connections to spread the batches over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Attempts per batch while the relay answers `Retry` (like a device).
    #[arg(long, default_value_t = 20)]
    attempts: u32,
    /// Print one JSON line on stdout (the human summary goes to stderr).
    #[arg(long)]
    json: bool,
}

fn parse_key(s: &str) -> Result<(String, String), String> {
    let (app, key) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected APP=KEY"))?;
    if app.is_empty() || key.is_empty() {
        return Err(format!("{s:?}: expected APP=KEY"));
    }
    Ok((app.to_owned(), key.to_owned()))
}

/// Reads every segment under `prefix` in `store_dir`, oldest batch first (the shared
/// reader: relays merged into one timeline; unreadable segments skipped and counted).
async fn load_recording(
    store_dir: &std::path::Path,
    prefix: &str,
) -> anyhow::Result<(ReadStats, Vec<RecordedBatch>)> {
    let mut reader = RecordingReader::open_dir(store_dir, prefix)
        .await
        .with_context(|| format!("reading the recording in {}", store_dir.display()))?;
    let mut batches = Vec::new();
    while let Some(b) = reader.next().await {
        batches.push(b);
    }
    Ok((reader.stats().clone(), batches))
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("reading {}", args.ca.display()))?;
    let target = Target::resolve(&args.target, &args.server_name, pem)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(replay(&args, &target))?;
    let human = format!(
        "tern-loadgen replay {} -> {}: {} segments, {} batches ({} events) at {}x in {:.2} s\n  throughput   {:.0} events/s  {:.1} batches/s\n  latency      p50 {:.3} ms  p90 {:.3}  p99 {:.3}  max {:.3}\n  outcomes     forwarded {}  spooled {}  retry {}  rejected {}  error_reply {}  transport {}\n",
        args.prefix,
        args.target,
        report["segments"],
        report["batches"],
        report["events"],
        args.speed,
        report["wall_s"].as_f64().unwrap_or(0.0),
        report["events_per_sec"].as_f64().unwrap_or(0.0),
        report["batches_per_sec"].as_f64().unwrap_or(0.0),
        report["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        report["latency_ms"]["p90"].as_f64().unwrap_or(0.0),
        report["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        report["latency_ms"]["max"].as_f64().unwrap_or(0.0),
        report["outcomes"]["accepted_forwarded"],
        report["outcomes"]["accepted_spooled"],
        report["outcomes"]["retry"],
        report["outcomes"]["rejected"],
        report["outcomes"]["error_reply"],
        report["outcomes"]["transport_error"],
    );
    if args.json {
        eprint!("{human}");
        println!("{report}");
    } else {
        print!("{human}");
    }
    let o = &report["outcomes"];
    let failed = ["rejected", "error_reply", "transport_error", "retry"]
        .iter()
        .map(|k| o[k].as_u64().unwrap_or(0))
        .sum::<u64>();
    if failed > 0 {
        bail!("{failed} batches were not accepted");
    }
    Ok(())
}

async fn replay(args: &ReplayArgs, target: &Target) -> anyhow::Result<serde_json::Value> {
    let (read, mut batches) = load_recording(&args.store_dir, &args.prefix).await?;
    if read.segments_unreadable > 0 {
        eprintln!(
            "tern-loadgen replay: {} unreadable segments skipped: {}",
            read.segments_unreadable,
            read.unreadable
                .iter()
                .map(|u| format!("{} ({})", u.key, u.reason))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if batches.is_empty() {
        bail!(
            "no recorded batches under {} in {}",
            args.prefix,
            args.store_dir.display()
        );
    }
    let keys: HashMap<String, String> = args.keys.iter().cloned().collect();
    if let Some(b) = batches
        .iter()
        .find(|b| !keys.contains_key(b.batch.app_id.as_str()))
    {
        bail!(
            "no --key for app {} (the recording holds its batches)",
            b.batch.app_id
        );
    }
    if !args.keep_batch_ids {
        let mut devices: HashMap<DeviceId, DeviceId> = HashMap::new();
        for r in &mut batches {
            r.batch.batch_id = BatchId::new_v7();
            let d = *devices
                .entry(r.batch.device_id)
                .or_insert_with(DeviceId::random);
            r.batch.device_id = d;
        }
    }
    let mut conns = Vec::new();
    for _ in 0..args.connections.max(1) {
        conns.push(connect(target).await?);
    }
    let conns = Arc::new(conns);
    let first_at = batches[0].at_ms;
    let events: u64 = batches.iter().map(|b| b.batch.events.len() as u64).sum();
    let total = batches.len();
    let slots = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
    let results = Arc::new(Mutex::new((Outcomes::default(), histogram())));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, r) in batches.into_iter().enumerate() {
        let due = if args.speed > 0.0 {
            t0 + Duration::from_secs_f64((r.at_ms - first_at) as f64 / 1000.0 / args.speed)
        } else {
            t0
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        let permit = slots.clone().acquire_owned().await?;
        let frame = Message::IngestRequest(IngestRequest {
            auth: Auth {
                app_id: AppId::new(r.batch.app_id.as_str()),
                key: keys[r.batch.app_id.as_str()].clone(),
            },
            batch: r.batch,
        })
        .encode(&CodecConfig::device())
        .context("encoding a recorded batch")?;
        let (conns, results, attempts) = (conns.clone(), results.clone(), args.attempts.max(1));
        tasks.spawn(async move {
            let conn = &conns[i % conns.len()].1;
            let mut outcome = Outcome::Transport;
            for attempt in 0..attempts {
                outcome = request(conn, &frame).await;
                if outcome != Outcome::Retry {
                    break;
                }
                if attempt + 1 < attempts {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let latency = due.elapsed();
            let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
            let o = &mut r.0;
            match outcome {
                Outcome::Forwarded => o.accepted_forwarded += 1,
                Outcome::Spooled => o.accepted_spooled += 1,
                Outcome::Retry => o.retry += 1,
                Outcome::Rejected => o.rejected += 1,
                Outcome::ErrorReply => o.error_reply += 1,
                Outcome::Transport => o.transport_error += 1,
            }
            let _ = r.1.record(
                u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
            );
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    for (endpoint, conn) in conns.iter() {
        conn.close(0u32.into(), b"replay done");
        endpoint.wait_idle().await;
    }
    let (outcomes, hist) = {
        let r = results.lock().unwrap_or_else(|p| p.into_inner());
        (r.0, r.1.clone())
    };
    let p = Percentiles::of(&hist);
    Ok(json!({
        "mode": "replay",
        "segments": read.segments,
        "segments_unreadable": read.segments_unreadable,
        "batches": total,
        "events": events,
        "speed": args.speed,
        "keep_batch_ids": args.keep_batch_ids,
        "wall_s": wall,
        "events_per_sec": events as f64 / wall,
        "batches_per_sec": total as f64 / wall,
        "latency_ms": p.json_ms(),
        "outcomes": outcomes.json_value(),
    }))
}
