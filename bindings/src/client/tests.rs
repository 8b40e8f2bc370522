//! The life cycle of `TernCore` against the real core: calls before open, after stop,
//! with the directory taken, refusals counted and reported, cancellable waits.

use super::*;
use std::future::Future;
use std::pin::pin;
use std::sync::Mutex as StdMutex;
use std::task::{Context, Poll, Wake, Waker};

const WAIT_MS: u64 = 30_000;

pub(crate) fn options(dir: &std::path::Path) -> TernOptions {
    TernOptions {
        platform: Some("test".into()),
        ..TernOptions::new("demo", "demo-key", dir)
    }
}

fn text(s: &str) -> PropertyValue {
    PropertyValue::Text { value: s.into() }
}

fn props(pairs: &[(&str, PropertyValue)]) -> HashMap<String, PropertyValue> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Records every reported refusal.
#[derive(Default, Clone)]
struct Errors(Arc<StdMutex<Vec<(String, TernError)>>>);

impl ErrorListener for Errors {
    fn on_error(&self, call: String, error: TernError) {
        self.0.lock().unwrap().push((call, error));
    }
}

impl Errors {
    fn take(&self) -> Vec<(String, TernError)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Every event in the store, read through the core's uploader interface.
fn stored(core: &TernCore) -> Vec<tern_protocol::Event> {
    let t = core.running().expect("running");
    assert!(t.wait_applied(Duration::from_millis(WAIT_MS)));
    t.form_batches(true).unwrap();
    let mut out = Vec::new();
    while let Some(b) = t.next_batch().unwrap() {
        out.extend(b.batch.events.clone());
    }
    out
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn waker() -> Waker {
    Waker::from(Arc::new(ThreadWaker(std::thread::current())))
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let waker = waker();
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 30 s: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn calls_before_open_are_kept_and_applied_in_order_with_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let core = TernCore::new();
    assert_eq!(core.state(), TernState::NotStarted);
    core.identify(Some("early-user".into()));
    core.track("first".into(), props(&[("k", text("v"))]));
    core.set_network_available(false);
    let listener = core.add_config_listener(Box::new(NoConfig));
    std::thread::sleep(Duration::from_millis(20));
    let before_open = now_ms();
    core.track("second".into(), HashMap::new());
    core.identify(None);
    assert_eq!(core.stats().pending_calls, 4);
    assert_eq!(core.stats().network_available, Some(false));
    // Getters answer with defaults meanwhile.
    assert_eq!(core.config_string("k".into(), "dflt".into()), "dflt");
    assert!(!core.is_opted_out());
    core.open(options(dir.path())).unwrap();
    assert_eq!(core.state(), TernState::Running);
    core.track("after".into(), HashMap::new());
    let events = stored(&core);
    let names: Vec<_> = events
        .iter()
        .map(|e| match &e.body {
            tern_protocol::EventBody::Custom { name, .. } => name.as_str(),
            _ => "other",
        })
        .collect();
    assert_eq!(names, ["first", "second", "after"]);
    assert_eq!(
        events[0].user_id.as_ref().map(|u| u.as_str()),
        Some("early-user")
    );
    assert_eq!(
        events[2].user_id, None,
        "identify(None) applied before `after`"
    );
    assert!(
        events[0].ts_ms < before_open,
        "kept with the time it was made"
    );
    let s = core.stats();
    assert_eq!((s.pending_calls, s.refused_not_started), (0, 0));
    assert!(!listener.is_cancelled());
    assert!(
        lock(&core.listeners).all_attached(),
        "listener attached at open"
    );
    core.shutdown(WAIT_MS);
}

/// Push calls made before open are kept and applied in order; refusals are typed on the
/// `try_*` forms and counted on the others.
#[test]
fn push_calls_before_and_after_open_reach_the_store() {
    use crate::push::{PushEnvironment, PushProvider};
    use tern_protocol::EventBody;
    let dir = tempfile::tempdir().unwrap();
    let core = TernCore::new();
    core.set_push_token(
        PushProvider::Apns,
        Some(PushEnvironment::Production),
        "0aff".into(),
    );
    core.push_received("spring".into());
    core.open(options(dir.path())).unwrap();
    core.try_set_push_token(
        PushProvider::Apns,
        Some(PushEnvironment::Production),
        "0aff".into(),
    )
    .unwrap();
    core.try_push_opened("spring".into(), Some("buy".into()))
        .unwrap();
    assert!(matches!(
        core.try_set_push_token(PushProvider::Apns, None, "0aff".into()),
        Err(TernError::InvalidEvent { .. })
    ));
    assert!(matches!(
        core.try_push_received(String::new()),
        Err(TernError::InvalidEvent { .. })
    ));
    core.set_push_token(PushProvider::Fcm, None, "has space".into());
    let bodies: Vec<_> = stored(&core).into_iter().map(|e| e.body).collect();
    assert_eq!(
        bodies,
        [
            EventBody::PushToken {
                provider: tern_protocol::PushProvider::Apns,
                environment: Some(tern_protocol::PushEnvironment::Production),
                token: "0aff".into(),
                cleared: false,
            },
            EventBody::PushReceived {
                campaign_id: "spring".into()
            },
            EventBody::PushOpened {
                campaign_id: "spring".into(),
                action: Some("buy".into())
            },
        ]
    );
    assert_eq!(core.stats().dropped_invalid, 3);
    core.shutdown(WAIT_MS);
}

struct NoConfig;

impl ConfigChangeListener for NoConfig {
    fn on_config_changed(&self, _change: crate::types::ConfigChange) {}
}

#[test]
fn the_queue_before_open_is_bounded_and_what_it_refuses_travels_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let core = TernCore::new();
    let errors = Errors::default();
    core.set_error_listener(Box::new(errors.clone()));
    for n in 0..MAX_PENDING_CALLS + 5 {
        core.track(
            "e".into(),
            props(&[("n", PropertyValue::Integer { value: n as i64 })]),
        );
    }
    let refused = errors.take();
    assert_eq!(refused.len(), 5);
    assert!(refused
        .iter()
        .all(|(c, e)| c == "track" && matches!(e, TernError::NotStarted { .. })));
    assert!(matches!(
        core.try_track("x".into(), HashMap::new()),
        Err(TernError::NotStarted { .. })
    ));
    let s = core.stats();
    assert_eq!(
        (
            s.pending_calls,
            s.refused_not_started,
            s.dropped_unavailable
        ),
        (MAX_PENDING_CALLS as u64, 6, 6)
    );
    core.open(options(dir.path())).unwrap();
    let events = stored(&core);
    assert_eq!(events.len(), MAX_PENDING_CALLS);
    let t = core.running().unwrap();
    let s = core.stats();
    assert_eq!(s.dropped_unavailable, 6, "handed to the core, counted once");
    // Upstream: the next batch's health carries it.
    t.track("one more", Properties::new()).unwrap();
    assert!(t.wait_applied(Duration::from_millis(WAIT_MS)));
    t.form_batches(true).unwrap();
    let b = t.next_batch().unwrap().expect("a batch");
    assert_eq!(b.batch.health.dropped_unavailable, 6);
    core.shutdown(WAIT_MS);
}

#[test]
fn recording_never_fails_and_every_refusal_is_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let core = TernCore::start(options(dir.path())).unwrap();
    let errors = Errors::default();
    core.set_error_listener(Box::new(errors.clone()));
    // Invalid input, including a foreign type the SDK does not record.
    core.track(String::new(), HashMap::new());
    core.track(
        "dated".into(),
        props(&[(
            "when",
            PropertyValue::Unsupported {
                type_name: "Date".into(),
            },
        )]),
    );
    core.purchase("sku".into(), 1, "euro".into(), 1, HashMap::new());
    core.purchase("sku".into(), 1, "EUR".into(), -1, HashMap::new());
    core.set_user_properties(
        props(&[(
            "x",
            PropertyValue::Unsupported {
                type_name: "List".into(),
            },
        )]),
        vec![],
    );
    let invalid = errors.take();
    assert_eq!(invalid.len(), 5, "{invalid:?}");
    assert!(invalid
        .iter()
        .all(|(_, e)| matches!(e, TernError::InvalidEvent { .. })));
    assert!(
        matches!(&invalid[1].1, TernError::InvalidEvent { field, .. } if field == "property \"when\"")
    );
    assert!(
        matches!(&invalid[3].1, TernError::InvalidEvent { field, .. } if field == "purchase quantity")
    );
    assert_eq!(core.stats().dropped_invalid, 5);
    // Opted out.
    core.opt_out(true);
    core.track("x".into(), HashMap::new());
    assert_eq!(
        core.try_purchase("sku".into(), 1, "EUR".into(), 1, HashMap::new()),
        Err(TernError::OptedOut)
    );
    assert_eq!(core.stats().refused_opted_out, 2);
    assert_eq!(errors.take().len(), 2);
    core.opt_out(false);
    core.track("kept".into(), HashMap::new());
    assert!(errors.take().is_empty());
    // After stop: counted no-ops, getters answer, stats keep the counters.
    assert!(core.shutdown(WAIT_MS).clean);
    core.track("late".into(), HashMap::new());
    core.identify(Some("u".into()));
    core.on_background();
    assert_eq!(
        core.try_track("late".into(), HashMap::new()),
        Err(TernError::ShutDown)
    );
    let s = core.stats();
    assert_eq!(s.state, TernState::Stopped);
    assert_eq!(s.refused_after_stop, 4);
    assert_eq!(s.dropped_invalid, 5);
    assert_eq!(s.queued_events, 1);
    assert_eq!(core.config_long("k".into(), 7), 7);
    assert_eq!(core.flag("f".into()), FlagDecision::Off);
    assert!(core.shutdown(WAIT_MS).clean, "idempotent");
    assert_eq!(errors.take().len(), 4);
    assert!(core.add_config_listener(Box::new(NoConfig)).is_cancelled());
}

/// Reports by calling Tern again: the nested refusal is counted, not reported again.
struct Reentrant(Arc<TernCore>, Arc<AtomicU64>);

impl ErrorListener for Reentrant {
    fn on_error(&self, _call: String, _error: TernError) {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.track(String::new(), HashMap::new());
    }
}

#[test]
fn an_error_listener_that_calls_back_or_throws_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    let core = TernCore::start(options(dir.path())).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    core.set_error_listener(Box::new(Reentrant(core.clone(), calls.clone())));
    core.track(String::new(), HashMap::new());
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(core.stats().dropped_invalid, 2);
    struct Throws;
    impl ErrorListener for Throws {
        fn on_error(&self, _call: String, _error: TernError) {
            panic!("listener bug");
        }
    }
    core.set_error_listener(Box::new(Throws));
    core.track(String::new(), HashMap::new());
    assert_eq!(core.stats().error_listener_failures, 1);
    core.clear_error_listener();
    core.shutdown(WAIT_MS);
}

#[test]
fn a_taken_directory_makes_the_second_instance_a_counted_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let first = TernCore::start(options(dir.path())).unwrap();
    let second = TernCore::new();
    second.track("before".into(), HashMap::new());
    let errors = Errors::default();
    second.set_error_listener(Box::new(errors.clone()));
    let e = second.open(options(dir.path())).unwrap_err();
    assert!(
        matches!(&e, TernError::DataDirInUse { path } if path == &dir.path().display().to_string())
    );
    assert_eq!(errors.take(), vec![("open".to_owned(), e.clone())]);
    assert_eq!(second.state(), TernState::Unavailable);
    for _ in 0..10 {
        second.track("x".into(), HashMap::new());
    }
    assert_eq!(second.try_identify(None), Err(e.clone()));
    assert_eq!(
        second.open(options(dir.path())),
        Err(e.clone()),
        "the first outcome"
    );
    let s = second.stats();
    assert_eq!((s.refused_unavailable, s.dropped_pending), (11, 1));
    assert!(s.store_error.unwrap().contains("in use"));
    assert!(
        !block_on(second.flush_and_wait(u64::MAX)),
        "never opens: at once"
    );
    assert_eq!(errors.take().len(), 12, "11 refusals and the repeated open");
    first.track("fine".into(), HashMap::new());
    assert_eq!(stored(&first).len(), 1);
    first.shutdown(WAIT_MS);
    second.shutdown(WAIT_MS);
}

#[test]
fn a_dropped_or_cancelled_flush_wait_ends_its_thread() {
    let dir = tempfile::tempdir().unwrap();
    let core = TernCore::start(options(dir.path())).unwrap();
    core.track("waits forever: no relay".into(), HashMap::new());
    {
        let mut wait = Box::pin(core.flush_and_wait(u64::MAX));
        let waker = waker();
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        assert_eq!(core.stats().flush_waits, 1);
        // Dropped here, as a cancelled coroutine frees it.
    }
    eventually("the dropped wait's thread ends", || {
        core.stats().flush_waits == 0
    });
    // Swift's path: an explicit cancel resolves the future with `false`.
    let waiter = {
        let core = core.clone();
        std::thread::spawn(move || block_on(core.flush_and_wait(u64::MAX)))
    };
    eventually("the wait starts", || core.stats().flush_waits == 1);
    core.cancel_flush_waits();
    assert!(!waiter.join().unwrap());
    eventually("its thread ends", || core.stats().flush_waits == 0);
    // Shutdown ends waits too.
    let waiter = {
        let core = core.clone();
        std::thread::spawn(move || block_on(core.flush_and_wait(u64::MAX)))
    };
    eventually("the wait starts", || core.stats().flush_waits == 1);
    core.shutdown(WAIT_MS);
    assert!(!waiter.join().unwrap());
}

#[test]
fn a_flush_wait_before_open_waits_for_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let core = TernCore::new();
    let waiter = {
        let core = core.clone();
        std::thread::spawn(move || block_on(core.flush_and_wait(WAIT_MS)))
    };
    eventually("the wait starts", || core.stats().flush_waits == 1);
    core.open(options(dir.path())).unwrap();
    assert!(waiter.join().unwrap(), "an empty store: emptied once open");
    core.shutdown(WAIT_MS);
}

#[test]
fn listeners_stay_until_cancelled_or_stopped_whatever_happens_to_the_handle() {
    let dir = tempfile::tempdir().unwrap();
    let core = TernCore::start(options(dir.path())).unwrap();
    drop(core.add_config_listener(Box::new(NoConfig)));
    let kept = core.add_config_listener(Box::new(NoConfig));
    assert_eq!(
        lock(&core.listeners).len(),
        2,
        "a dropped handle keeps its listener"
    );
    kept.cancel();
    assert!(kept.is_cancelled());
    assert_eq!(lock(&core.listeners).len(), 1);
    let live = core.add_config_listener(Box::new(NoConfig));
    core.shutdown(WAIT_MS);
    assert_eq!(lock(&core.listeners).len(), 0, "shutdown removes them");
    assert!(live.is_cancelled());
}

#[test]
fn network_settings_reach_the_core_config_and_unset_ones_keep_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let ms = Duration::from_millis;
    let defaults = options(dir.path()).into_core().unwrap();
    let core_defaults = tern_sdk::TernConfig::builder("a", "k", "d")
        .build()
        .unwrap();
    assert_eq!(defaults.apply_delay, core_defaults.apply_delay);
    let (got, want) = (defaults.upload.unwrap(), core_defaults.upload.unwrap());
    assert_eq!(
        got.transport.connect_timeout,
        want.transport.connect_timeout
    );
    assert_eq!(
        got.transport.request_timeout,
        want.transport.request_timeout
    );
    assert_eq!(got.transport.local_address, None);
    assert_eq!(got.retry, want.retry);
    assert_eq!(got.router, want.router);

    let c = TernOptions {
        // No certificate, but the transport with the CA is the one the settings are in.
        ca_pem: Some(String::new()),
        connect_timeout_ms: Some(1_000),
        request_timeout_ms: Some(5_000),
        retry_base_ms: Some(200),
        quic_reprobe_ms: Some(300_000),
        apply_delay_ms: Some(100),
        local_address: Some("127.1.2.3".into()),
        push_refresh_interval_ms: Some(3_600_000),
        ..options(dir.path())
    }
    .into_core()
    .unwrap();
    assert_eq!(c.apply_delay, ms(100));
    assert_eq!(c.push_refresh_interval, ms(3_600_000));
    assert_eq!(
        options(dir.path())
            .into_core()
            .unwrap()
            .push_refresh_interval,
        ms(7 * 24 * 3_600_000)
    );
    let u = c.upload.unwrap();
    assert_eq!(u.transport.extra_ca_pem.as_deref(), Some(""));
    assert_eq!(u.transport.connect_timeout, ms(1_000));
    assert_eq!(u.transport.request_timeout, ms(5_000));
    assert_eq!(u.transport.local_address, Some([127, 1, 2, 3].into()));
    assert_eq!(u.retry.base, ms(200));
    assert_eq!(u.router.quic_reprobe, ms(300_000));
    let v6 = TernOptions {
        local_address: Some("::1".into()),
        ..options(dir.path())
    };
    let u = v6.into_core().unwrap().upload.unwrap();
    assert_eq!(
        u.transport.local_address,
        Some(std::net::Ipv6Addr::LOCALHOST.into())
    );
}

/// Caches a bundle with a boolean flag `on` (full rollout) in `dir`, as a fetch by an
/// earlier run would have.
fn seed_flag_bundle(dir: &std::path::Path) {
    use tern_protocol::config::{ConfigBundle, ETag, FeatureFlag};
    let bundle = ConfigBundle {
        app_id: tern_protocol::AppId::new("demo"),
        version: 7,
        etag: ETag("e7".into()),
        flags: vec![FeatureFlag {
            key: "on".into(),
            enabled: true,
            rollout_bp: 10_000,
            variants: vec![],
            salt: None,
        }],
        ..ConfigBundle::default()
    };
    let (mut db, _) = tern_sdk::store::Db::open(
        dir,
        tern_sdk::StoreLimits::default(),
        tern_protocol::Limits::default(),
    )
    .unwrap();
    db.save_config(&bundle, 1).unwrap();
}

fn exposures(core: &TernCore) -> Vec<(String, String, u64)> {
    stored(core)
        .into_iter()
        .filter_map(|e| match e.body {
            tern_protocol::EventBody::Exposure {
                flag,
                variant,
                config_version,
                ..
            } => Some((flag, variant, config_version)),
            _ => None,
        })
        .collect()
}

#[test]
fn flag_reads_record_exposures_once_and_record_exposure_never_throws() {
    let dir = tempfile::tempdir().unwrap();
    seed_flag_bundle(dir.path());
    let core = TernCore::new();
    let errors = Errors::default();
    core.set_error_listener(Box::new(errors.clone()));
    // Before open: no config, nothing to expose, nothing queued.
    assert_eq!(
        core.try_record_exposure("on".into()),
        Ok(ExposureOutcome::NoFlag)
    );
    core.open(options(dir.path())).unwrap();
    eventually("the cached bundle", || core.config_info().version == 7);
    assert_eq!(core.flag("on".into()), FlagDecision::On);
    assert!(core.flag_enabled("on".into()));
    assert_eq!(
        core.try_record_exposure("on".into()),
        Ok(ExposureOutcome::AlreadyRecorded)
    );
    assert_eq!(
        core.try_record_exposure("missing".into()),
        Ok(ExposureOutcome::NoFlag)
    );
    assert_eq!(exposures(&core), [("on".into(), "on".into(), 7)]);
    let s = core.stats();
    assert_eq!((s.exposures_recorded, s.exposures_already_recorded), (1, 2));
    // Refusals: typed from the `try_` form, reported from the other.
    core.opt_out(true);
    assert_eq!(
        core.try_record_exposure("on".into()),
        Err(TernError::OptedOut)
    );
    core.record_exposure("on".into());
    assert!(core.shutdown(WAIT_MS).clean);
    assert_eq!(
        core.try_record_exposure("on".into()),
        Err(TernError::ShutDown)
    );
    let reported = errors.take();
    assert_eq!(
        reported,
        [
            ("record_exposure".to_owned(), TernError::OptedOut),
            ("record_exposure".to_owned(), TernError::OptedOut),
            ("record_exposure".to_owned(), TernError::ShutDown),
        ]
    );
    assert_eq!(core.stats().refused_after_stop, 1);
}

#[test]
fn with_auto_exposures_off_only_record_exposure_records() {
    let dir = tempfile::tempdir().unwrap();
    seed_flag_bundle(dir.path());
    let core = TernCore::start(TernOptions {
        auto_exposures: Some(false),
        ..options(dir.path())
    })
    .unwrap();
    eventually("the cached bundle", || core.config_info().version == 7);
    assert_eq!(core.flag("on".into()), FlagDecision::On);
    assert_eq!(core.stats().exposures_recorded, 0);
    assert_eq!(
        core.try_record_exposure("on".into()),
        Ok(ExposureOutcome::Recorded)
    );
    assert_eq!(exposures(&core), [("on".into(), "on".into(), 7)]);
    core.shutdown(WAIT_MS);
}
