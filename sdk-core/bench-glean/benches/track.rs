//! Criterion: one Tern `track()` (two string properties) with the store thread and a
//! busy uploader running, and one Glean event `record()` (two string extras) in the
//! same group. Glean keeps its default 500 events per "events" ping here, so it
//! assembles and (discarding) uploads pings while being measured.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tern_bench_glean::{glean_side, tern_props, TernUnderLoad, EVENT_NAME};

fn track(c: &mut Criterion) {
    let tern_dir = tempfile::tempdir().expect("tempdir");
    let glean_dir = tempfile::tempdir().expect("tempdir");
    let tern = TernUnderLoad::start(tern_dir.path()).expect("tern starts");
    glean_side::init(glean_dir.path(), 500);
    let metric = glean_side::metric();
    let props = tern_props();

    let mut g = c.benchmark_group("record_event_2_props");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("tern_track", |b| {
        b.iter_batched(
            || props.clone(),
            |p| tern.tern.track(EVENT_NAME, p).expect("track"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("glean_event_record", |b| {
        b.iter_batched(
            glean_side::extra,
            |e| metric.record(e),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    drop(tern);
    glean::shutdown();
}

criterion_group!(benches, track);
criterion_main!(benches);
