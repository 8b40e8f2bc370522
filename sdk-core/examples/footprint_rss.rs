//! Steady memory overhead of the SDK in a host process, tracking a steady rate of
//! events while a simulated uploader acknowledges batches (`scripts/footprint.sh`).
//!
//! `cargo run --release -p tern-sdk --example footprint_rss -- [seconds] [events/s]`
//! Prints the host's RSS before `Tern::start` and the SDK's overhead over it (median
//! and max of one sample per second over the second half of the run).

use std::time::{Duration, Instant};

use tern_protocol::Value;
use tern_sdk::{Properties, Tern, TernConfig};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let rate: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    // Warm the allocator and the page cache of the binary before the baseline.
    let props_template: Properties = [
        ("screen".to_string(), Value::from("home")),
        ("ms".to_string(), Value::Int(120)),
    ]
    .into_iter()
    .collect();
    std::thread::sleep(Duration::from_millis(200));
    let baseline = rss_kib();

    let tern = Tern::start(TernConfig::builder("app", "key", dir.path()).build()?)?;
    let uploader = {
        let tern = tern.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < deadline {
                let _ = tern.form_batches(false);
                while let Ok(Some(b)) = tern.next_batch() {
                    let _ = tern.ack(b.batch.batch_id);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut sent = 0u64;
    let mut next_sample = 1u64;
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    while start.elapsed() < Duration::from_secs(seconds) {
        // Pace by deadline: event k is due at start + k / rate.
        let due = start + interval * u32::try_from(sent).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut p = props_template.clone();
        p.insert("n".into(), Value::Int(sent as i64));
        tern.track("screen view", p)?;
        sent += 1;
        let elapsed = start.elapsed().as_secs();
        if elapsed >= next_sample {
            next_sample = elapsed + 1;
            if elapsed >= seconds / 2 {
                samples.push(rss_kib().saturating_sub(baseline));
            }
        }
    }
    uploader.join().ok();
    let stats = tern.stats();
    tern.shutdown(Duration::from_secs(10));
    samples.sort_unstable();
    let median = samples.get(samples.len() / 2).copied().unwrap_or(0);
    let max = samples.last().copied().unwrap_or(0);
    println!(
        "rss: host baseline {:.1} MiB; SDK overhead while tracking {rate} events/s for {seconds} s: median {:.2} MiB, max {:.2} MiB ({} events, {} still queued)",
        baseline as f64 / 1024.0,
        median as f64 / 1024.0,
        max as f64 / 1024.0,
        sent,
        stats.queued_events
    );
    Ok(())
}
