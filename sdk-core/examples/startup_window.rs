//! How long after `Tern::start` recorded events become durable (the journal opens),
//! and how long until the SQLite store is open: the durability window of the docs.
//! `cargo run --release -p tern-sdk --example startup_window -- [starts] [reopen]`:
//! each start into a new directory (a first launch), or with `reopen` into the same
//! one, which holds 100 queued events (every later launch).

use std::time::{Duration, Instant};

use tern_sdk::{Tern, TernConfig};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let starts: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50);
    let reopen = std::env::args().nth(2).as_deref() == Some("reopen");
    let (mut call, mut journal, mut store) = (Vec::new(), Vec::new(), Vec::new());
    let kept = tempfile::tempdir()?;
    let config =
        |dir: &std::path::Path| TernConfig::builder("app", "key", dir.join("tern")).build();
    if reopen {
        let tern = Tern::start(config(kept.path())?)?;
        for i in 0..100 {
            tern.track(&format!("event {i}"), Default::default())?;
        }
        tern.flush();
        tern.shutdown(Duration::from_secs(5));
    }
    for _ in 0..starts {
        let fresh = tempfile::tempdir()?;
        let dir = if reopen { kept.path() } else { fresh.path() };
        let t0 = Instant::now();
        let tern = Tern::start(config(dir)?)?;
        call.push(t0.elapsed().as_secs_f64() * 1e3);
        let mut journal_at = None;
        while t0.elapsed() < Duration::from_secs(10) {
            let s = tern.stats();
            if s.journal_ready && journal_at.is_none() {
                journal_at = Some(t0.elapsed());
            }
            if s.store_ready {
                store.push(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
            std::hint::spin_loop();
        }
        journal.push(journal_at.unwrap_or_default().as_secs_f64() * 1e3);
        tern.shutdown(Duration::from_secs(5));
    }
    println!(
        "startup over {starts} {} (ms): start() returns p50 {:.3} p99 {:.3}; journal open (durable from here) p50 {:.2} p99 {:.2}; store open p50 {:.2} p99 {:.2}",
        if reopen { "starts of a store with 100 queued events" } else { "fresh starts" },
        pct(&mut call, 0.5),
        pct(&mut call, 0.99),
        pct(&mut journal, 0.5),
        pct(&mut journal, 0.99),
        pct(&mut store, 0.5),
        pct(&mut store, 0.99)
    );
    Ok(())
}
