//! `tern-bench-glean`: Tern `track()` vs Glean event `record()` in one run.
//!
//! ```text
//! tern-bench-glean [--events N] [--repeats R] [--threads 1,4] [--breakdown]
//! ```
//! Each trial runs in a fresh child process and a fresh temp dir; trials alternate
//! tern/glean (order flipped every repeat) and the table shows medians of the repeats.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Context, Result};
use tern_bench_glean::{breakdown, glean_side, tern_trial, Trial};

struct Args {
    events: u64,
    repeats: usize,
    threads: Vec<usize>,
    breakdown: bool,
}

fn parse() -> Result<(Args, Option<(String, usize)>)> {
    let mut a = Args {
        events: 200_000,
        repeats: 3,
        threads: vec![1, 4],
        breakdown: false,
    };
    let mut child = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--events" | "-n" => a.events = val("--events")?.replace('_', "").parse()?,
            "--repeats" => a.repeats = val("--repeats")?.parse()?,
            "--threads" => {
                a.threads = val("--threads")?
                    .split(',')
                    .map(|t| t.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--breakdown" => a.breakdown = true,
            "--child" => {
                let sdk = val("--child")?;
                let threads = val("--child")?.parse()?;
                child = Some((sdk, threads));
            }
            "-h" | "--help" => {
                println!("usage: tern-bench-glean [--events N] [--repeats R] [--threads 1,4] [--breakdown]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.repeats == 0 || a.threads.iter().any(|&t| t == 0) || a.events == 0 {
        bail!("--events, --repeats and --threads must be positive");
    }
    Ok((a, child))
}

fn run_child(sdk: &str, threads: usize, events: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let trial = match sdk {
        "tern" => tern_trial(dir.path(), events, threads)?,
        "glean" => glean_side::glean_trial(dir.path(), events, threads)?,
        other => bail!("unknown sdk {other}"),
    };
    println!("RESULT {}", serde_json::to_string(&trial)?);
    Ok(())
}

fn spawn(sdk: &str, threads: usize, events: u64) -> Result<Trial> {
    let out = Command::new(std::env::current_exe()?)
        .args([
            "--child",
            sdk,
            &threads.to_string(),
            "--events",
            &events.to_string(),
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{sdk} trial failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .context("child printed no RESULT line")?;
    Ok(serde_json::from_str(line)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

type Field = (&'static str, &'static str, fn(&Trial) -> f64);

const LATENCY: [Field; 6] = [
    ("p50", "us", |t| t.p50 / 1e3),
    ("p90", "us", |t| t.p90 / 1e3),
    ("p99", "us", |t| t.p99 / 1e3),
    ("p99.9", "us", |t| t.p999 / 1e3),
    ("max", "us", |t| t.max / 1e3),
    ("mean", "us", |t| t.mean / 1e3),
];
const TIMES: [Field; 3] = [
    ("all calls returned", "ms", |t| t.calls_done_ms),
    (
        "all durable vs kill (Tern journal / Glean events file)",
        "ms",
        |t| t.durable_ms,
    ),
    (
        "all in final store (Tern SQLite / Glean events file)",
        "ms",
        |t| t.stored_ms,
    ),
];

fn main() -> Result<()> {
    let (args, child) = parse()?;
    if let Some((sdk, threads)) = child {
        return run_child(&sdk, threads, args.events);
    }
    println!(
        "tern-bench-glean: {} events per trial, {} repeats, threads {:?}, glean 71; \
         each trial in a fresh process and temp dir",
        args.events, args.repeats, args.threads
    );
    let mut trials: BTreeMap<(usize, &str), Vec<Trial>> = BTreeMap::new();
    for rep in 0..args.repeats {
        for &threads in &args.threads {
            let order = if rep % 2 == 0 {
                ["tern", "glean"]
            } else {
                ["glean", "tern"]
            };
            for sdk in order {
                let events = args.events / threads as u64 * threads as u64;
                let t = spawn(sdk, threads, events)?;
                println!(
                    "  repeat {} {sdk:>5} x{threads}: p50 {:.2} us  p99 {:.2} us  p99.9 {:.2} us  max {:.0} us  \
                     returned {:.0} ms  durable {:.0} ms  stored {:.0} ms{}",
                    rep + 1,
                    t.p50 / 1e3,
                    t.p99 / 1e3,
                    t.p999 / 1e3,
                    t.max / 1e3,
                    t.calls_done_ms,
                    t.durable_ms,
                    t.stored_ms,
                    if sdk == "tern" {
                        format!("  (uploader acked {} batches, dropped {})", t.batches_acked, t.dropped)
                    } else {
                        String::new()
                    }
                );
                trials.entry((threads, sdk)).or_default().push(t);
            }
        }
    }

    println!();
    println!(
        "Medians of {} repeats, {} events per trial, 2 string properties/extras per event.",
        args.repeats, args.events
    );
    println!("ratio = glean / tern (> 1: Tern is better)");
    println!();
    println!("| metric | tern | glean | ratio |");
    println!("|---|---:|---:|---:|");
    let mut json = serde_json::Map::new();
    for &threads in &args.threads {
        let tern = &trials[&(threads, "tern")];
        let glean = &trials[&(threads, "glean")];
        let rows = LATENCY
            .iter()
            .map(|f| {
                (
                    format!(
                        "record latency {} ({threads} thread{})",
                        f.0,
                        if threads > 1 { "s" } else { "" }
                    ),
                    f,
                )
            })
            .chain(TIMES.iter().map(|f| {
                (
                    format!(
                        "{} ms, {} events, {threads} thread{}",
                        f.0,
                        args.events,
                        if threads > 1 { "s" } else { "" }
                    ),
                    f,
                )
            }));
        for (label, (key, unit, get)) in rows {
            let a = median(tern.iter().map(get).collect());
            let b = median(glean.iter().map(get).collect());
            let ratio = b / a;
            let fmt = |v: f64| {
                if *unit == "us" {
                    format!("{v:.2} µs")
                } else {
                    format!("{v:.0} ms")
                }
            };
            println!("| {label} | {} | {} | {ratio:.2}× |", fmt(a), fmt(b));
            json.insert(
                format!("t{threads}.{key}"),
                serde_json::json!({ "tern": a, "glean": b, "ratio": ratio, "unit": unit }),
            );
        }
    }
    let p99 = median(
        trials[&(args.threads[0], "tern")]
            .iter()
            .map(|t| t.p99 / 1e3)
            .collect(),
    );
    println!();
    println!(
        "Tern track() p99 with {} thread(s): {p99:.2} µs (issue target ≤ 10 µs: {})",
        args.threads[0],
        if p99 <= 10.0 { "met" } else { "missed" }
    );
    println!(
        "JSON {}",
        serde_json::json!({
            "bench": "tern-vs-glean",
            "events": args.events,
            "repeats": args.repeats,
            "glean_version": "71",
            "medians": json,
            "trials": trials.values().flatten().collect::<Vec<_>>(),
        })
    );

    if args.breakdown {
        let dir = tempfile::tempdir()?;
        println!();
        println!(
            "Tern track() path, step by step ({} calls each, one thread, no load):",
            args.events
        );
        println!("| step | p50 | p99 | p99.9 | mean |");
        println!("|---|---:|---:|---:|---:|");
        for s in breakdown::run(dir.path(), args.events)? {
            println!(
                "| {} | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs |",
                s.step,
                s.p50 as f64 / 1e3,
                s.p99 as f64 / 1e3,
                s.p999 as f64 / 1e3,
                s.mean / 1e3
            );
        }
    }
    Ok(())
}
