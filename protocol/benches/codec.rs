//! Encoding benchmark: encode + decode of a 100-event batch in each candidate
//! self-describing format, against `serde_json` measured in the same run, and the
//! crate's hand-written MessagePack codec (`wire`) against `rmp-serde` on the same
//! bytes.
//!
//! `cargo bench -p tern-protocol --bench codec` prints criterion's statistics, then a
//! summary table (median of repeated timed loops) with sizes and ratios to JSON.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use tern_protocol::*;

fn batch() -> IngestRequest {
    let events = (1..=100u64)
        .map(|seq| Event {
            seq,
            ts_ms: 1_764_000_000_000 + seq as i64 * 137,
            user_id: Some(UserId::new("user-4242")),
            session_id: Some(SessionId(17)),
            body: if seq % 10 == 0 {
                EventBody::Purchase {
                    product_id: "com.example.coins_500".into(),
                    amount_micros: 4_990_000,
                    currency: "USD".into(),
                    quantity: 1,
                    props: BTreeMap::new(),
                }
            } else {
                EventBody::Custom {
                    name: ["screen_view", "button_tap", "level_complete"][seq as usize % 3].into(),
                    props: [
                        ("screen".to_string(), Value::from("store")),
                        ("duration_ms".to_string(), Value::Int(250 + seq as i64)),
                        ("score".to_string(), Value::Float(0.25 * seq as f64)),
                        ("premium".to_string(), Value::Bool(seq % 2 == 0)),
                    ]
                    .into_iter()
                    .collect(),
                }
            },
        })
        .collect();
    IngestRequest {
        auth: Auth {
            app_id: AppId::new("demo"),
            key: "k-0123456789abcdef".into(),
        },
        batch: EventBatch {
            anonymous_id: None,
            context: None,
            batch_id: BatchId::new_v7(),
            app_id: AppId::new("demo"),
            device_id: DeviceId::random(),
            sdk: SdkInfo {
                name: "tern-kotlin".into(),
                version: "0.1.0".into(),
                platform: "android".into(),
                app_version: Some("5.4.0".into()),
            },
            sent_at_ms: 1_764_000_100_000,
            attempt: 0,
            events,
            health: SdkHealth::default(),
        },
    }
}

type RoundTrip = Box<dyn Fn(&IngestRequest) -> usize>;

fn candidates(req: &IngestRequest) -> Vec<(&'static str, RoundTrip)> {
    let msg = Message::IngestRequest(req.clone());
    vec![
        (
            "json",
            Box::new(|r| {
                let bytes = serde_json::to_vec(r).unwrap();
                let back: IngestRequest = serde_json::from_slice(&bytes).unwrap();
                black_box(back);
                bytes.len()
            }),
        ),
        (
            "cbor",
            Box::new(|r| {
                let mut bytes = Vec::new();
                ciborium::into_writer(r, &mut bytes).unwrap();
                let back: IngestRequest = ciborium::from_reader(&bytes[..]).unwrap();
                black_box(back);
                bytes.len()
            }),
        ),
        (
            "msgpack (rmp-serde)",
            Box::new(|r| {
                // The generic serde codec the crate used before `wire` (same bytes).
                let bytes = rmp_serde::to_vec_named(r).unwrap();
                let back: IngestRequest = rmp_serde::from_slice(&bytes).unwrap();
                black_box(back);
                bytes.len()
            }),
        ),
        (
            "msgpack (wire)",
            Box::new(|r| {
                let bytes = encode_payload(r).unwrap();
                let back: IngestRequest = decode_payload(&bytes).unwrap();
                black_box(back);
                bytes.len()
            }),
        ),
        (
            "msgpack+lz4 frame",
            Box::new(move |_| {
                let cfg = CodecConfig::device();
                let bytes = msg.encode(&cfg).unwrap();
                black_box(Message::from_bytes(&bytes, &cfg).unwrap());
                bytes.len()
            }),
        ),
        (
            "json+lz4",
            Box::new(|r| {
                let bytes = lz4_flex::block::compress_prepend_size(&serde_json::to_vec(r).unwrap());
                let plain = lz4_flex::block::decompress_size_prepended(&bytes).unwrap();
                let back: IngestRequest = serde_json::from_slice(&plain).unwrap();
                black_box(back);
                bytes.len()
            }),
        ),
    ]
}

fn time_ns(f: &RoundTrip, req: &IngestRequest) -> f64 {
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_millis(50) {
        black_box(f(req));
        n += 1;
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let req = batch();
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    {
        let mut g = c.benchmark_group("encode+decode 100-event batch");
        g.throughput(Throughput::Elements(100));
        for (name, f) in candidates(&req) {
            g.bench_function(name, |b| b.iter(|| f(black_box(&req))));
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("per-event work");
        let app = AppId::new("demo");
        let map = ShardMap {
            version: 1,
            nodes: (1..=5)
                .map(|i| RelayNode {
                    id: RelayId::new(format!("relay-{i}")),
                    quic_addr: String::new(),
                    https_url: String::new(),
                    weight: 1,
                    state: NodeState::Active,
                })
                .collect(),
        };
        g.bench_function("validate_batch (100 events)", |b| {
            b.iter(|| limits::validate_batch(black_box(&req.batch), &Limits::default()))
        });
        g.bench_function("hrw owner of 5 nodes", |b| {
            b.iter(|| routing::owner(&map, &app, black_box("user-4242")).map(|n| n.weight))
        });
        g.finish();
    }
    c.final_summary();

    // Same-run summary. Candidates are timed round-robin (50 ms each per round, 21
    // rounds) so machine noise hits all of them alike; the speed ratio is the median of
    // the per-round ratios to serde_json.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let cands = candidates(&req);
    let mut rounds: Vec<Vec<f64>> = Vec::new();
    for _ in 0..21 {
        rounds.push(cands.iter().map(|(_, f)| time_ns(f, &req)).collect());
    }
    let json_len = (cands[0].1)(&req);
    println!("\nformat                bytes   size/json   us/roundtrip   speed vs json (median of 21 rounds)");
    for (i, (name, f)) in cands.iter().enumerate() {
        let len = f(&req);
        let ns = median(rounds.iter().map(|r| r[i]).collect());
        let speed = median(rounds.iter().map(|r| r[0] / r[i]).collect());
        println!(
            "{name:<20} {len:>6}   {:>8.2}x   {:>11.1}   {speed:>11.2}x",
            len as f64 / json_len as f64,
            ns / 1000.0,
        );
    }
    let idx = |name: &str| cands.iter().position(|(n, _)| *n == name).unwrap();
    let (serde, wire) = (idx("msgpack (rmp-serde)"), idx("msgpack (wire)"));
    let speed = median(rounds.iter().map(|r| r[serde] / r[wire]).collect());
    println!("msgpack (wire) vs msgpack (rmp-serde), same bytes: {speed:.2}x the speed (median of 21 rounds)");
}
