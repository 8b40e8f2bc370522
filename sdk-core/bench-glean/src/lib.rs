//! Tern `track()` against Glean's event `record()`: caller-side latency (HDR
//! histogram) and time until the events are on disk. See README.md.
//!
//! Both SDKs are driven the same way: `threads` recording threads released together,
//! each timing every call with [`Instant`], while the SDK's own background work runs.
//! Glean is a process-wide singleton, so each trial runs in a fresh child process
//! (see `main.rs`); Tern runs the same way so that both start from the same state.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tern_sdk::{Properties, Tern, TernConfig, Value};

/// Event name used by both SDKs.
pub const EVENT_NAME: &str = "screen_view";
/// Property / extra keys and values: two strings, as in the issue.
pub const PROPS: [(&str, &str); 2] = [("screen", "home"), ("variant", "b")];

/// One trial's figures. Latencies in nanoseconds, times in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Trial {
    /// "tern" or "glean".
    pub sdk: String,
    /// Recording threads.
    pub threads: usize,
    /// Events recorded (all threads).
    pub events: u64,
    /// Latency percentiles of one recording call, ns.
    pub p50: f64,
    /// 90th percentile, ns.
    pub p90: f64,
    /// 99th percentile, ns.
    pub p99: f64,
    /// 99.9th percentile, ns.
    pub p999: f64,
    /// Largest, ns.
    pub max: f64,
    /// Mean, ns.
    pub mean: f64,
    /// From the first call until all calls had returned, ms. For Tern every event is
    /// then in the journal (durable against a process kill).
    pub calls_done_ms: f64,
    /// From the first call until every event is in the SDK's events file (durable
    /// against a process kill; page cache, no fsync). Tern: = `calls_done_ms`
    /// (journal); Glean: its `events/events` file holds all N lines.
    pub durable_ms: f64,
    /// From the first call until every event is in the SDK's long-term store.
    /// Tern: SQLite (`wait_applied`). Glean: its events file (it has no other store
    /// for events until a ping is assembled) — the same as `durable_ms`.
    pub stored_ms: f64,
    /// Tern only: batches the uploader thread acked during the trial.
    pub batches_acked: u64,
    /// Tern only: events dropped because the store was full.
    pub dropped: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds")
}

fn fill(trial: &mut Trial, h: &Histogram<u64>) {
    trial.events = h.len();
    trial.p50 = h.value_at_quantile(0.50) as f64;
    trial.p90 = h.value_at_quantile(0.90) as f64;
    trial.p99 = h.value_at_quantile(0.99) as f64;
    trial.p999 = h.value_at_quantile(0.999) as f64;
    trial.max = h.max() as f64;
    trial.mean = h.mean();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `threads` threads that each call `record` `per_thread` times, released
/// together; returns the merged histogram, the start instant and the last return.
fn drive<F>(threads: usize, per_thread: u64, record: F) -> (Histogram<u64>, Instant, Instant)
where
    F: Fn() + Send + Sync + 'static,
{
    let record = Arc::new(record);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<JoinHandle<(Histogram<u64>, Instant)>> = (0..threads)
        .map(|_| {
            let record = record.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut h = histogram();
                barrier.wait();
                let mut last = Instant::now();
                for _ in 0..per_thread {
                    let t = Instant::now();
                    record();
                    last = Instant::now();
                    h.record((last - t).as_nanos().max(1) as u64)
                        .expect("latency within histogram bounds");
                }
                (h, last)
            })
        })
        .collect();
    let start = Instant::now();
    barrier.wait();
    let mut merged = histogram();
    let mut last = start;
    for handle in handles {
        let (h, l) = handle.join().expect("recording thread panicked");
        merged.add(&h).expect("same histogram bounds");
        last = last.max(l);
    }
    (merged, start, last)
}

/// The two string properties, as Tern takes them.
pub fn tern_props() -> Properties {
    PROPS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect()
}

/// A Tern instance with a busy uploader thread; stops the thread on drop.
#[derive(Debug)]
pub struct TernUnderLoad {
    /// The SDK.
    pub tern: Tern,
    stop: Arc<AtomicBool>,
    uploader: Option<JoinHandle<u64>>,
}

impl TernUnderLoad {
    /// Starts Tern in `dir`, waits until its journal and store are open, and starts
    /// an uploader thread that cuts batches, takes them and acks them in a loop
    /// (sleeping 1 ms only when there was nothing to do).
    pub fn start(dir: &Path) -> Result<Self> {
        // Room for every event of a run (as Glean gets `max_events = 2N`): the bench
        // measures recording and persisting, not the store's overflow eviction.
        let config = TernConfig::builder("bench", "bench-key", dir)
            .max_store_events(10_000_000)
            .max_store_bytes(4 * 1024 * 1024 * 1024)
            .build()?;
        let tern = Tern::start(config)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = tern.stats();
            if s.journal_ready && s.store_ready {
                break;
            }
            if let Some(e) = s.store_error {
                bail!("tern store failed to open: {e}");
            }
            if Instant::now() > deadline {
                bail!("tern did not open its store within 10 s");
            }
            thread::sleep(Duration::from_millis(1));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let uploader = {
            let tern = tern.clone();
            let stop = stop.clone();
            thread::Builder::new()
                .name("bench-uploader".into())
                .spawn(move || {
                    let mut acked = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        let formed = tern.form_batches(false).unwrap_or(0);
                        let mut did = formed > 0;
                        while let Ok(Some(b)) = tern.next_batch() {
                            if tern.ack(b.batch.batch_id).is_ok() {
                                acked += 1;
                            }
                            did = true;
                        }
                        if !did {
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                    acked
                })?
        };
        Ok(TernUnderLoad {
            tern,
            stop,
            uploader: Some(uploader),
        })
    }

    /// Stops the uploader; returns the batches it acked.
    pub fn stop_uploader(&mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.uploader
            .take()
            .map(|h| h.join().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for TernUnderLoad {
    fn drop(&mut self) {
        self.stop_uploader();
    }
}

/// One Tern trial in `dir`.
pub fn tern_trial(dir: &Path, events: u64, threads: usize) -> Result<Trial> {
    let mut run = TernUnderLoad::start(dir)?;
    let tern = run.tern.clone();
    let props = tern_props();
    let (h, start, last) = drive(threads, events / threads as u64, move || {
        // Building the argument map is the caller's work; it is inside the timing
        // for both SDKs (Glean builds its extras map inside `record`).
        tern.track(EVENT_NAME, props.clone()).expect("track");
    });
    if !run.tern.wait_applied(Duration::from_secs(120)) {
        bail!("tern did not apply its journal within 120 s");
    }
    let applied = Instant::now();
    let acked = run.stop_uploader();
    let stats = run.tern.stats();
    run.tern.shutdown(Duration::from_secs(30));
    let mut t = Trial {
        sdk: "tern".into(),
        threads,
        calls_done_ms: ms(last - start),
        durable_ms: ms(last - start),
        stored_ms: ms(applied - start),
        batches_acked: acked,
        dropped: stats.dropped_overflow + stats.dropped_invalid,
        ..Trial::default()
    };
    fill(&mut t, &h);
    Ok(t)
}

/// Glean side: extras of the benchmark event.
pub mod glean_side {
    use super::*;
    use glean::net::{CapablePingUploadRequest, PingUploader, UploadResult};
    use glean::private::EventMetric;
    use glean::{ClientInfoMetrics, CommonMetricData, ConfigurationBuilder, Lifetime};

    /// Category of the benchmark event metric.
    pub const CATEGORY: &str = "bench";

    /// The two string extras.
    #[derive(Clone, Debug, Default)]
    pub struct Extra {
        /// First extra.
        pub screen: Option<String>,
        /// Second extra.
        pub variant: Option<String>,
    }

    impl glean::traits::ExtraKeys for Extra {
        const ALLOWED_KEYS: &'static [&'static str] = &["screen", "variant"];
        fn into_ffi_extra(self) -> HashMap<String, String> {
            let mut m = HashMap::with_capacity(2);
            if let Some(v) = self.screen {
                m.insert("screen".to_owned(), v);
            }
            if let Some(v) = self.variant {
                m.insert("variant".to_owned(), v);
            }
            m
        }
    }

    /// The extras the benchmark records.
    pub fn extra() -> Extra {
        Extra {
            screen: Some(PROPS[0].1.to_owned()),
            variant: Some(PROPS[1].1.to_owned()),
        }
    }

    /// An uploader that accepts every ping and throws it away. (With upload
    /// disabled Glean records nothing, so upload stays enabled.)
    #[derive(Debug)]
    pub struct Discard;

    impl PingUploader for Discard {
        fn upload(&self, _request: CapablePingUploadRequest) -> UploadResult {
            UploadResult::http_status(200)
        }
    }

    /// Initializes (or re-initializes) Glean in `dir` and blocks until its
    /// initialization has finished. `max_events`: events per "events" ping.
    pub fn init(dir: &Path, max_events: usize) {
        let cfg = ConfigurationBuilder::new(true, dir, "tern.bench")
            .with_uploader(Discard)
            .with_max_events(max_events)
            .with_delay_ping_lifetime_io(false)
            .with_server_endpoint("http://127.0.0.1:9")
            .build();
        // `test_reset_glean` = destroy (no-op the first time) + initialize + join the
        // init thread: the only public way to wait until Glean is ready.
        glean::test_reset_glean(cfg, ClientInfoMetrics::unknown(), false);
    }

    /// The benchmark event metric, sent in the built-in "events" ping.
    pub fn metric() -> EventMetric<Extra> {
        EventMetric::new(CommonMetricData {
            name: EVENT_NAME.into(),
            category: CATEGORY.into(),
            send_in_pings: vec!["events".into()],
            lifetime: Lifetime::Ping,
            ..Default::default()
        })
    }

    /// Where Glean 71 appends one JSON line per event of the "events" ping
    /// (`glean-core/src/event_database`: `<data_path>/events/<store name>`).
    pub fn events_file(dir: &Path) -> PathBuf {
        dir.join("events").join("events")
    }

    /// Counts complete lines naming our event, reading a file incrementally.
    #[derive(Debug, Default)]
    pub struct LineCounter {
        offset: u64,
        partial: Vec<u8>,
        /// Matching lines seen so far.
        pub count: u64,
    }

    impl LineCounter {
        /// Reads what was appended since the last call.
        pub fn poll(&mut self, path: &Path) -> std::io::Result<u64> {
            let mut f = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self.count),
                Err(e) => return Err(e),
            };
            f.seek(SeekFrom::Start(self.offset))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            self.offset += buf.len() as u64;
            self.partial.extend_from_slice(&buf);
            let needle = format!("\"name\":\"{EVENT_NAME}\"");
            let mut consumed = 0;
            for line in self.partial.split_inclusive(|b| *b == b'\n') {
                if line.last() != Some(&b'\n') {
                    break;
                }
                consumed += line.len();
                if line.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    self.count += 1;
                }
            }
            self.partial.drain(..consumed);
            Ok(self.count)
        }
    }

    /// One Glean trial in `dir` (call in a fresh process: Glean is a singleton).
    pub fn glean_trial(dir: &Path, events: u64, threads: usize) -> Result<Trial> {
        // Large enough that no "events" ping is cut mid-trial (that would move the
        // events out of the file being watched).
        init(dir, (events as usize).saturating_mul(2).max(1000));
        let metric = Arc::new(metric());
        let m = metric.clone();
        let (h, start, last) = drive(threads, events / threads as u64, move || {
            m.record(extra());
        });
        let expected = h.len();
        let path = events_file(dir);
        let mut counter = LineCounter::default();
        let deadline = Instant::now() + Duration::from_secs(120);
        let on_disk = loop {
            if counter.poll(&path).context("reading glean's events file")? >= expected {
                break Instant::now();
            }
            if Instant::now() > deadline {
                bail!(
                    "glean wrote {} of {expected} events to {} within 120 s",
                    counter.count,
                    path.display()
                );
            }
            thread::sleep(Duration::from_millis(1));
        };
        let mut t = Trial {
            sdk: "glean".into(),
            threads,
            calls_done_ms: ms(last - start),
            durable_ms: ms(on_disk - start),
            stored_ms: ms(on_disk - start),
            ..Trial::default()
        };
        fill(&mut t, &h);
        glean::shutdown();
        Ok(t)
    }
}

/// Where Tern's `track()` time goes: each step of its recording path, timed alone
/// through the crate's public pieces (validate, size check, encode, journal append).
pub mod breakdown {
    use super::*;
    use tern_protocol::{EventBody, Limits};
    use tern_sdk::entry::Entry;
    use tern_sdk::journal::{encode_record, Journal};

    /// Percentiles (ns) of one step.
    #[derive(Clone, Debug, Serialize)]
    pub struct Step {
        /// What was timed.
        pub step: &'static str,
        /// Median, ns.
        pub p50: u64,
        /// 99th percentile, ns.
        pub p99: u64,
        /// 99.9th percentile, ns.
        pub p999: u64,
        /// Mean, ns.
        pub mean: f64,
    }

    fn step(name: &'static str, n: u64, mut f: impl FnMut()) -> Step {
        let mut h = histogram();
        for _ in 0..n {
            let t = Instant::now();
            f();
            h.record(t.elapsed().as_nanos().max(1) as u64)
                .expect("in bounds");
        }
        Step {
            step: name,
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            mean: h.mean(),
        }
    }

    /// Times each step `n` times, single-threaded, no background load.
    pub fn run(dir: &Path, n: u64) -> Result<Vec<Step>> {
        let limits = Limits::default();
        let props = tern_props();
        let body = EventBody::Custom {
            name: EVENT_NAME.into(),
            props: props.clone(),
        };
        let entry = Entry::Event {
            ts_ms: 1_700_000_000_000,
            session: None,
            body: body.clone(),
        };
        let mut record = Vec::new();
        encode_record(&mut record, &entry.encode());
        let journal = Journal::new();
        journal.open_segment(dir, 1)?;
        let raw = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("raw"))?;
        let mut out = vec![step("Instant::now() pair (timer overhead)", n, || {})];
        out.push(step("clone props + build EventBody", n, || {
            std::hint::black_box(EventBody::Custom {
                name: EVENT_NAME.to_owned(),
                props: props.clone(),
            });
        }));
        out.push(step("validate_body", n, || {
            let _ = std::hint::black_box(tern_protocol::limits::validate_body(&body, &limits));
        }));
        out.push(step("encoded_len (size check)", n, || {
            let _ = std::hint::black_box(tern_protocol::codec::encoded_len(&entry));
        }));
        out.push(step("Entry::encode + encode_record", n, || {
            let mut buf = Vec::with_capacity(256);
            encode_record(&mut buf, &entry.encode());
            std::hint::black_box(buf);
        }));
        out.push(step("Journal::append (mutex + write(2))", n, || {
            journal.append(&record).expect("append");
        }));
        out.push(step("raw write(2) of the same bytes, O_APPEND", n, || {
            use std::io::Write;
            (&raw).write_all(&record).expect("write");
        }));
        out.push(step("SystemTime::now (now_ms)", n, || {
            std::hint::black_box(std::time::SystemTime::now());
        }));
        Ok(out)
    }
}
