//! The log sink: the core's `tracing` events handed to a foreign callback (Logcat on
//! Android, `os_log` on Apple platforms), filtered by a level.
//!
//! A `tracing` subscriber is installed as the process-wide default the first time a
//! sink is installed; later installs replace the sink and its level. With the level at
//! `Off` (the default, and after [`set_log_level`]`(Off)`), `tracing`'s global
//! maximum level is `OFF`, so a disabled log statement costs one comparison of a
//! static. A sink that logs, or calls back into Tern, from inside `log` does not
//! receive those nested events (they are dropped, so a sink cannot recurse). A sink
//! that throws is contained.

use std::cell::Cell;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Once, RwLock};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// How much the SDK logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, uniffi::Enum)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Failures the SDK could not handle (a store that cannot open, a contained panic).
    Error,
    /// Refused calls (first of each kind per instance), uploads that keep failing.
    Warn,
    /// Start, stop, config changes.
    Info,
    /// Every refused call, upload attempts.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Off => LevelFilter::OFF,
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }

    fn of(level: &tracing::Level) -> Self {
        match *level {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }

    fn from_u8(n: u8) -> Self {
        [
            LogLevel::Off,
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ]
        .get(n as usize)
        .copied()
        .unwrap_or(LogLevel::Off)
    }
}

/// Receives the SDK's log lines, on the thread that logged (any SDK thread, or the
/// app's thread inside a call). Keep it quick and do not call Tern from it.
#[uniffi::export(callback_interface)]
pub trait LogSink: Send + Sync {
    /// One log line: `target` is the Rust module (e.g. `tern_sdk::upload`), `message`
    /// the text followed by its fields as `key=value`.
    fn log(&self, level: LogLevel, target: String, message: String);
}

static LEVEL: AtomicU8 = AtomicU8::new(0);
static SINK: RwLock<Option<Arc<dyn LogSink>>> = RwLock::new(None);
static INSTALL: Once = Once::new();
static INSTALLED: AtomicU8 = AtomicU8::new(0);
/// Lines a sink threw on (contained).
static SINK_FAILURES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IN_SINK: Cell<bool> = const { Cell::new(false) };
}

/// Installs `sink` as the SDK's log sink for this process (replacing an earlier one)
/// and sets the level. Returns whether the SDK's logs reach it: `false` when another
/// `tracing` subscriber was already the process default (only possible when the
/// library is linked into a Rust program that installed its own).
#[uniffi::export]
pub fn install_log_sink(sink: Box<dyn LogSink>, level: LogLevel) -> bool {
    crate::guard::guard_or("install_log_sink", false, || {
        *SINK.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(sink));
        INSTALL.call_once(|| {
            let ok = tracing::subscriber::set_global_default(Bridge).is_ok();
            INSTALLED.store(u8::from(ok), Ordering::Release);
        });
        set_level(level);
        INSTALLED.load(Ordering::Acquire) == 1
    })
}

/// Changes the level of the installed sink (`Off` silences it).
#[uniffi::export]
pub fn set_log_level(level: LogLevel) {
    crate::guard::guard_or("set_log_level", (), || set_level(level))
}

/// The current level.
#[uniffi::export]
pub fn log_level() -> LogLevel {
    LogLevel::from_u8(LEVEL.load(Ordering::Acquire))
}

fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Release);
    // `max_level_hint` changed: let `tracing` recompute its global maximum, so that
    // disabled statements stay a static comparison.
    tracing::callsite::rebuild_interest_cache();
}

/// Lines the sink threw on (contained), this process.
pub(crate) fn sink_failures() -> u64 {
    SINK_FAILURES.load(Ordering::Relaxed)
}

fn enabled_at(level: &tracing::Level) -> bool {
    LogLevel::of(level) as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// The subscriber: formats each enabled event and hands it to the sink.
struct Bridge;

impl Subscriber for Bridge {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        enabled_at(metadata.level())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LogLevel::from_u8(LEVEL.load(Ordering::Acquire)).filter())
    }

    fn register_callsite(
        &self,
        _metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Decided per event by `enabled` (the level can change at run time).
        tracing::subscriber::Interest::sometimes()
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        if !enabled_at(meta.level()) || IN_SINK.with(Cell::get) {
            return;
        }
        let Some(sink) = SINK.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        let mut line = Line::default();
        event.record(&mut line);
        let message = if line.fields.is_empty() {
            line.message
        } else if line.message.is_empty() {
            line.fields
        } else {
            format!("{} {}", line.message, line.fields)
        };
        IN_SINK.with(|f| f.set(true));
        let r = catch_unwind(AssertUnwindSafe(|| {
            sink.log(
                LogLevel::of(meta.level()),
                meta.target().to_owned(),
                message,
            )
        }));
        IN_SINK.with(|f| f.set(false));
        if r.is_err() {
            SINK_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.push(field, format_args!("{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.push(field, format_args!("{value:?}"));
        }
    }
}

impl Line {
    fn push(&mut self, field: &Field, value: std::fmt::Arguments<'_>) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}={}", field.name(), value);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that keeps what it receives.
    #[derive(Default, Clone)]
    pub(crate) struct Recorder(pub(crate) Arc<Mutex<Vec<(LogLevel, String, String)>>>);

    impl LogSink for Recorder {
        fn log(&self, level: LogLevel, target: String, message: String) {
            if message.contains("sink throws") {
                panic!("a sink that throws");
            }
            // A sink that logs itself: not delivered again.
            tracing::error!("nested line from inside the sink");
            self.0.lock().unwrap().push((level, target, message));
        }
    }

    /// Serialises the tests that change the process-wide sink and level.
    pub(crate) static SINK_TESTS: Mutex<()> = Mutex::new(());

    #[test]
    fn lines_at_or_above_the_level_reach_the_sink_with_their_fields() {
        let _g = SINK_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let rec = Recorder::default();
        assert!(install_log_sink(Box::new(rec.clone()), LogLevel::Info));
        assert_eq!(log_level(), LogLevel::Info);
        tracing::debug!("below the level");
        tracing::info!(n = 3, what = "x", "hello");
        tracing::warn!(target: "tern_sdk::upload", "upload failed");
        // Other tests' threads may log meanwhile (the sink is process-wide): this test's
        // lines only.
        let mine = |rec: &Recorder| -> Vec<(LogLevel, String, String)> {
            rec.0
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, _, m)| {
                    ["below the level", "hello", "upload failed", "silenced"]
                        .iter()
                        .any(|p| m.starts_with(p))
                })
                .cloned()
                .collect()
        };
        let seen = mine(&rec);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].0, LogLevel::Info);
        assert_eq!(seen[0].2, "hello n=3 what=x");
        assert_eq!(
            seen[1],
            (
                LogLevel::Warn,
                "tern_sdk::upload".into(),
                "upload failed".into()
            )
        );
        set_log_level(LogLevel::Off);
        assert_eq!(LevelFilter::current(), LevelFilter::OFF);
        tracing::error!("silenced");
        assert_eq!(mine(&rec).len(), 2);
    }

    #[test]
    fn a_sink_that_throws_is_contained_and_counted() {
        let _g = SINK_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let rec = Recorder::default();
        install_log_sink(Box::new(rec.clone()), LogLevel::Warn);
        let before = sink_failures();
        tracing::warn!("the sink throws on this one");
        tracing::warn!("and not on this one");
        assert_eq!(sink_failures(), before + 1);
        // Other tests' threads may log meanwhile (the sink is process-wide): count this
        // test's lines only.
        let mine: Vec<String> = rec
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, m)| m.clone())
            .filter(|m| m.contains("this one"))
            .collect();
        assert_eq!(mine, vec!["and not on this one".to_string()]);
        set_log_level(LogLevel::Off);
    }
}
