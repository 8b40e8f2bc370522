//! Reference for the Kotlin `track()` benchmark (`bindings/scripts/bench-kotlin.sh`):
//! the same event recorded through the core (`tern_sdk::Tern::track`) and through the
//! exported Rust method (`TernCore::track`, everything but the FFI), timed per call the
//! way the Kotlin side times it.
//!
//! `cargo run --release -p tern-bindings --example track_bench -- <dir> <calls>`

use std::collections::HashMap;
use std::time::Instant;

use tern_bindings::{PropertyValue, TernCore, TernOptions};

fn percentiles(mut ns: Vec<u64>) -> (u64, u64, u64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)];
    (at(0.5), at(0.99), at(0.999))
}

fn report(what: &str, ns: Vec<u64>) {
    let n = ns.len();
    let (p50, p99, p999) = percentiles(ns);
    println!("{what}: calls={n} p50_ns={p50} p99_ns={p99} p999_ns={p999}");
}

fn options(dir: &std::path::Path) -> TernOptions {
    TernOptions {
        platform: Some("bench".into()),
        ..TernOptions::new("bench", "bench-key", dir)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("usage: track_bench <dir> <calls>"));
    let calls: usize = args.get(2).map_or(200_000, |n| n.parse().expect("calls"));
    let warmup = calls / 10;

    // The core, as an app written in Rust would call it.
    let core_dir = dir.join("core");
    let config = tern_sdk::TernConfig::builder("bench", "bench-key", &core_dir)
        .manual_upload()
        .build()
        .expect("config");
    let tern = tern_sdk::Tern::start(config).expect("start");
    let props: tern_sdk::Properties = [
        ("screen".to_owned(), tern_sdk::Value::String("home".into())),
        ("n".to_owned(), tern_sdk::Value::Int(3)),
    ]
    .into_iter()
    .collect();
    assert!(tern.wait_applied(std::time::Duration::from_secs(30)));
    let mut ns = Vec::with_capacity(calls);
    for i in 0..warmup + calls {
        let p = props.clone();
        let t0 = Instant::now();
        tern.track("bench_event", p).expect("track");
        let dt = t0.elapsed().as_nanos() as u64;
        if i >= warmup {
            ns.push(dt);
        }
    }
    report("rust core Tern::track", ns);
    tern.shutdown(std::time::Duration::from_secs(30));

    // The exported method without the FFI: conversion, state check, guard, core.
    let core = TernCore::start(options(&dir.join("export"))).expect("start");
    assert!(core.wait_applied(30_000));
    let props: HashMap<String, PropertyValue> = [
        (
            "screen".to_owned(),
            PropertyValue::Text {
                value: "home".into(),
            },
        ),
        ("n".to_owned(), PropertyValue::Integer { value: 3 }),
    ]
    .into_iter()
    .collect();
    let mut ns = Vec::with_capacity(calls);
    for i in 0..warmup + calls {
        let p = props.clone();
        let t0 = Instant::now();
        core.track("bench_event".to_owned(), p);
        let dt = t0.elapsed().as_nanos() as u64;
        if i >= warmup {
            ns.push(dt);
        }
    }
    report("rust export TernCore::track", ns);
    core.shutdown(30_000);
}
