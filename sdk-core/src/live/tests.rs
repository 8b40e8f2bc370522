//! Live config through the public API, without a network: bundles reach the SDK
//! through its SQLite cache (as on a cold start) or through the uploader's install
//! path (`Tern::live_install`, crate-internal).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_protocol::config::{
    ConfigBundle, ETag, FeatureFlag, InAppMessage, Pacing, Targeting, Trigger, Variant,
};
use tern_protocol::rollout::{evaluate_flag, FlagDecision};
use tern_protocol::{AppId, EventBody, Limits, Properties, Value};

use crate::store::Db;
use crate::{ConfigChange, StoreLimits, Tern, TernConfig};

const WAIT: Duration = Duration::from_secs(20);

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

fn start(dir: &Path) -> Tern {
    let tern = Tern::start(
        TernConfig::builder("demo", "demo-key", dir)
            .build()
            .unwrap(),
    )
    .unwrap();
    assert!(wait_until(
        || tern.live_ready() && tern.device_id().is_some()
    ));
    tern
}

/// Starts on a store seeded with a bundle and waits until the dispatcher has taken it
/// in (its "from cache" change is out), so listeners added next see only later changes.
fn start_loaded(dir: &Path) -> Tern {
    let tern = start(dir);
    assert!(wait_until(|| tern.stats().live.changes_notified >= 1));
    tern
}

fn flag(key: &str, rollout_bp: u32, variants: &[(&str, u32)]) -> FeatureFlag {
    FeatureFlag {
        key: key.into(),
        enabled: true,
        rollout_bp,
        variants: variants
            .iter()
            .map(|(k, w)| Variant {
                key: (*k).into(),
                weight: *w,
                value: Some(Value::from(format!("payload-{k}"))),
            })
            .collect(),
        salt: None,
    }
}

fn message(id: &str, trigger: Trigger, pacing: Pacing) -> InAppMessage {
    InAppMessage {
        id: id.into(),
        title: format!("title {id}"),
        body: "body".into(),
        actions: vec![],
        trigger,
        targeting: Targeting::default(),
        pacing,
        starts_at_ms: None,
        ends_at_ms: None,
        priority: 0,
    }
}

fn bundle(version: u64) -> ConfigBundle {
    let mut b = ConfigBundle {
        app_id: AppId::new("demo"),
        version,
        etag: ETag(format!("etag-{version}")),
        ..ConfigBundle::default()
    };
    b.values.insert("greeting".into(), Value::from("hello"));
    b.values.insert("max_items".into(), Value::from(7i64));
    b.values.insert("ratio".into(), Value::Float(0.25));
    b.values.insert("dark".into(), Value::from(true));
    b.flags = vec![
        flag("bool_on", 10_000, &[]),
        flag("half", 5_000, &[]),
        flag("colors", 10_000, &[("red", 1), ("green", 1), ("blue", 2)]),
        FeatureFlag {
            enabled: false,
            ..flag("disabled", 10_000, &[])
        },
    ];
    b
}

/// Writes `b` into the cache of the store in `dir`, as an earlier run would have.
fn seed_cache(dir: &Path, b: &ConfigBundle) {
    std::fs::create_dir_all(dir).unwrap();
    let (mut db, _) = Db::open(dir, StoreLimits::default(), Limits::default()).unwrap();
    db.save_config(b, 1_234).unwrap();
}

#[derive(Default)]
struct Recorder {
    changes: Mutex<Vec<ConfigChange>>,
    messages: Mutex<Vec<InAppMessage>>,
}

fn config_recorder(tern: &Tern) -> (Arc<Recorder>, crate::ListenerHandle) {
    let r = Arc::new(Recorder::default());
    let r2 = r.clone();
    let h = tern.add_config_listener(Arc::new(move |c: &ConfigChange| {
        r2.changes.lock().unwrap().push(c.clone());
    }));
    (r, h)
}

fn message_recorder(tern: &Tern) -> (Arc<Recorder>, crate::ListenerHandle) {
    let r = Arc::new(Recorder::default());
    let r2 = r.clone();
    let h = tern.add_message_listener(Arc::new(move |m: &InAppMessage| {
        r2.messages.lock().unwrap().push(m.clone());
    }));
    (r, h)
}

fn impressions(tern: &Tern) -> Vec<(String, String)> {
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    let mut out = Vec::new();
    while let Some(b) = tern.next_batch().unwrap() {
        for e in &b.batch.events {
            if let EventBody::MessageImpression { message_id, action } = &e.body {
                out.push((message_id.clone(), action.clone()));
            }
        }
        tern.ack(b.batch.batch_id).unwrap();
    }
    out
}

#[test]
fn a_cold_start_has_the_cached_values_before_any_network() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        Tern::start(
            TernConfig::builder("demo", "k", dir.path())
                .build()
                .unwrap()
        )
        .unwrap()
        .config_value("greeting"),
        None,
        "no bundle before the store opened"
    );
    let dir = tempfile::tempdir().unwrap();
    seed_cache(dir.path(), &bundle(3));
    let tern = start(dir.path());
    assert_eq!(tern.config_value("greeting"), Some(Value::from("hello")));
    assert_eq!(tern.config_string("greeting", "x"), "hello");
    assert_eq!(tern.config_string("missing", "x"), "x");
    assert_eq!(tern.config_string("max_items", "x"), "x", "wrong type");
    assert_eq!(tern.config_i64("max_items", 0), 7);
    assert_eq!(tern.config_f64("max_items", 0.0), 7.0);
    assert_eq!(tern.config_f64("ratio", 0.0), 0.25);
    assert!(tern.config_bool("dark", false));
    assert!(!tern.config_bool("greeting", false));
    assert_eq!(tern.config_values().len(), 4);
    let info = tern.config_info();
    assert_eq!(info.version, 3);
    assert_eq!(info.etag, Some(ETag("etag-3".into())));
    assert_eq!(info.fetched_at_ms, Some(1_234));
    assert!(info.from_cache);
    // A fetched bundle replaces it, is persisted, and survives a restart.
    let mut next = bundle(4);
    next.values.insert("greeting".into(), Value::from("hi"));
    tern.live_install(next, true);
    let info = tern.config_info();
    assert_eq!(
        (info.version, info.from_cache, info.stale),
        (4, false, true)
    );
    tern.shutdown(WAIT);
    drop(tern);
    let tern = start(dir.path());
    assert_eq!(tern.config_string("greeting", "x"), "hi");
    assert_eq!(tern.config_info().version, 4);
}

#[test]
fn a_cached_bundle_of_another_app_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut other = bundle(1);
    other.app_id = AppId::new("other");
    seed_cache(dir.path(), &other);
    let tern = start(dir.path());
    assert_eq!(tern.config_value("greeting"), None);
}

#[test]
fn flags_match_the_protocol_evaluation_for_device_then_user() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(1);
    seed_cache(dir.path(), &b);
    let tern = start_loaded(dir.path());
    let device = tern.device_id().unwrap().to_string();
    for f in &b.flags {
        assert_eq!(
            tern.flag(&f.key),
            evaluate_flag(f, "demo", &device),
            "{}",
            f.key
        );
    }
    assert_eq!(tern.flag("bool_on"), FlagDecision::On);
    assert!(tern.flag_enabled("bool_on"));
    assert_eq!(tern.flag("disabled"), FlagDecision::Off);
    assert_eq!(tern.flag("unknown"), FlagDecision::Off);
    assert!(matches!(tern.flag("colors"), FlagDecision::Variant { .. }));
    // Identified: the unit is the user id, at once (before the store applies it).
    let (rec, _h) = config_recorder(&tern);
    // Find users whose decisions differ from the device's, so a change is notified.
    let user = (0..1000)
        .map(|i| format!("user-{i}"))
        .find(|u| {
            b.flags
                .iter()
                .any(|f| evaluate_flag(f, "demo", u) != evaluate_flag(f, "demo", &device))
        })
        .unwrap();
    tern.identify(Some(&user)).unwrap();
    for f in &b.flags {
        assert_eq!(
            tern.flag(&f.key),
            evaluate_flag(f, "demo", &user),
            "{}",
            f.key
        );
    }
    let expected: Vec<String> = b
        .flags
        .iter()
        .filter(|f| evaluate_flag(f, "demo", &user) != evaluate_flag(f, "demo", &device))
        .map(|f| f.key.clone())
        .collect();
    assert!(wait_until(|| !rec.changes.lock().unwrap().is_empty()));
    let change = rec.changes.lock().unwrap()[0].clone();
    let mut expected = expected;
    expected.sort();
    assert_eq!(change.changed_flags, expected);
    assert!(change.changed_values.is_empty());
    // Percentage rollout over many units: about half.
    let half = b.flag("half").unwrap();
    let on = (0..2000)
        .filter(|i| evaluate_flag(half, "demo", &format!("u{i}")).is_on())
        .count();
    assert!((850..1150).contains(&on), "{on}");
}

#[test]
fn listeners_hear_changes_until_cancelled_or_dropped_and_panics_are_contained() {
    let dir = tempfile::tempdir().unwrap();
    seed_cache(dir.path(), &bundle(1));
    let tern = start_loaded(dir.path());
    let (kept, kept_handle) = config_recorder(&tern);
    let (cancelled, cancelled_handle) = config_recorder(&tern);
    let (dropped, dropped_handle) = config_recorder(&tern);
    let panics = Arc::new(AtomicUsize::new(0));
    let p = panics.clone();
    let _panicking = tern.add_config_listener(Arc::new(move |_: &ConfigChange| {
        p.fetch_add(1, Ordering::SeqCst);
        panic!("listener bug");
    }));
    // Version 2 changes one value and one flag definition.
    let mut v2 = bundle(2);
    v2.values.insert("greeting".into(), Value::from("hey"));
    v2.values.remove("dark");
    v2.flags[0].enabled = false;
    tern.live_install(v2, false);
    assert!(wait_until(|| kept.changes.lock().unwrap().len() == 1));
    let change = kept.changes.lock().unwrap()[0].clone();
    assert_eq!(change.version, 2);
    assert_eq!(change.changed_values, vec!["dark", "greeting"]);
    assert_eq!(change.changed_flags, vec!["bool_on"]);
    assert!(!change.from_cache);
    assert!(wait_until(|| cancelled.changes.lock().unwrap().len() == 1));
    assert!(wait_until(|| dropped.changes.lock().unwrap().len() == 1));
    assert!(wait_until(|| tern.stats().live.listener_panics == 1));
    // Cancel one, drop another; the panicking one keeps being called and caught.
    cancelled_handle.cancel();
    assert!(cancelled_handle.is_cancelled());
    drop(dropped_handle);
    tern.live_install(bundle(3), false);
    assert!(wait_until(|| kept.changes.lock().unwrap().len() == 2));
    assert!(wait_until(|| tern.stats().live.listener_panics == 2));
    assert_eq!(cancelled.changes.lock().unwrap().len(), 1);
    assert_eq!(dropped.changes.lock().unwrap().len(), 1);
    assert_eq!(panics.load(Ordering::SeqCst), 2);
    // The SDK still works.
    tern.track("after panics", Properties::new()).unwrap();
    assert_eq!(tern.config_info().version, 3);
    drop(kept_handle);
}

#[test]
fn messages_follow_triggers_and_pacing_and_pacing_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bundle(1);
    b.messages = vec![
        message(
            "once",
            Trigger::Event {
                name: "level_up".into(),
            },
            Pacing {
                min_interval_s: 0,
                max_impressions: 1,
            },
        ),
        message(
            "gold-only",
            Trigger::SessionStart,
            Pacing {
                min_interval_s: 3600,
                max_impressions: 0,
            },
        ),
    ];
    b.messages[1]
        .targeting
        .user_properties
        .insert("tier".into(), Value::from("gold"));
    seed_cache(dir.path(), &b);
    let tern = start_loaded(dir.path());
    // No listener yet: nothing is picked, nothing counted.
    tern.track("level_up", Properties::new()).unwrap();
    let (rec, handle) = message_recorder(&tern);
    tern.track("level_up", Properties::new()).unwrap();
    tern.track("level_up", Properties::new()).unwrap();
    tern.track("other", Properties::new()).unwrap();
    assert!(wait_until(|| rec.messages.lock().unwrap().len() == 1));
    // Session start: the targeted message needs tier = gold.
    tern.start_session().unwrap();
    let mut props = Properties::new();
    props.insert("tier".into(), Value::from("gold"));
    tern.set_user_properties(props, vec![]).unwrap();
    tern.start_session().unwrap();
    tern.start_session().unwrap(); // within min_interval: not again
    assert!(wait_until(|| rec.messages.lock().unwrap().len() == 2));
    std::thread::sleep(Duration::from_millis(300));
    let ids: Vec<String> = rec
        .messages
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(ids, vec!["once", "gold-only"]);
    assert_eq!(tern.stats().live.messages_shown, 2);
    assert_eq!(
        impressions(&tern),
        vec![
            ("once".to_owned(), "shown".to_owned()),
            ("gold-only".to_owned(), "shown".to_owned())
        ]
    );
    drop(handle);
    tern.shutdown(WAIT);
    drop(tern);
    // After a restart the pacing and the user properties are remembered.
    let tern = start_loaded(dir.path());
    let (rec, _handle) = message_recorder(&tern);
    tern.track("level_up", Properties::new()).unwrap();
    tern.start_session().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(rec.messages.lock().unwrap().is_empty());
    // A new bundle version raising the cap makes "once" eligible again.
    let mut b2 = b.clone();
    b2.version = 2;
    b2.etag = ETag("etag-2".into());
    b2.messages[0].pacing.max_impressions = 2;
    tern.live_install(b2, false);
    tern.track("level_up", Properties::new()).unwrap();
    assert!(wait_until(|| rec.messages.lock().unwrap().len() == 1));
}

#[test]
fn an_immediate_message_waits_for_a_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bundle(1);
    b.messages = vec![message("hello", Trigger::Immediate, Pacing::default())];
    seed_cache(dir.path(), &b);
    let tern = start(dir.path());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(tern.stats().live.messages_shown, 0);
    let (rec, _h) = message_recorder(&tern);
    assert!(wait_until(|| rec.messages.lock().unwrap().len() == 1));
    // Pacing default: one impression.
    tern.live_install(bundle(2), false);
    let mut b3 = b.clone();
    b3.version = 3;
    b3.etag = ETag("etag-3".into());
    tern.live_install(b3, false);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rec.messages.lock().unwrap().len(), 1);
}

#[test]
fn a_schema_1_store_migrates_and_keeps_its_events() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("tern.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID;
             CREATE TABLE events (seq INTEGER PRIMARY KEY NOT NULL, recorded_ms INTEGER NOT NULL,
                 user_id TEXT, bytes INTEGER NOT NULL, crc INTEGER NOT NULL, payload BLOB NOT NULL,
                 batch_id BLOB);
             CREATE INDEX events_by_batch ON events (batch_id);
             CREATE TABLE batches (batch_id BLOB PRIMARY KEY NOT NULL, first_seq INTEGER NOT NULL,
                 last_seq INTEGER NOT NULL, events INTEGER NOT NULL, bytes INTEGER NOT NULL,
                 created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0);
             INSERT INTO meta (key, value) VALUES ('min_reader_version', 1), ('next_seq', 1);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let tern = start(dir.path());
    tern.track("kept", Properties::new()).unwrap();
    assert!(tern.wait_applied(WAIT));
    assert_eq!(tern.stats().store_resets, 0);
    assert_eq!(tern.config_info().version, 0);
    tern.live_install(bundle(1), false);
    tern.shutdown(WAIT);
    drop(tern);
    let conn = rusqlite::Connection::open(dir.path().join("tern.db")).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, crate::store::SCHEMA_VERSION);
    let min_reader: i64 = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'min_reader_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        min_reader, 1,
        "schema 2 is additive: schema-1 SDKs still open it"
    );
    let cached: i64 = conn
        .query_row("SELECT version FROM config_cache", [], |r| r.get(0))
        .unwrap();
    assert_eq!(cached, 1);
    let events: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events, 1);
}

#[test]
fn a_newer_schema_without_the_live_tables_gets_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/future_schema_v3.db"),
        dir.path().join("tern.db"),
    )
    .unwrap();
    let tern = start(dir.path());
    assert_eq!(tern.stats().store_resets, 0);
    tern.live_install(bundle(5), false);
    tern.shutdown(WAIT);
    drop(tern);
    let tern = start(dir.path());
    assert_eq!(tern.config_info().version, 5);
}

// ---------------------------------------------------------------------------------
// Experiment exposures

/// (flag, variant, user, config version, reason) of every exposure event waiting, then
/// acknowledged.
type Seen = (String, String, Option<String>, u64, Option<String>);

fn exposures(tern: &Tern) -> Vec<Seen> {
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).unwrap();
    let mut out = Vec::new();
    while let Some(b) = tern.next_batch().unwrap() {
        for e in &b.batch.events {
            if let EventBody::Exposure {
                flag,
                variant,
                config_version,
                reason,
            } = &e.body
            {
                out.push((
                    flag.clone(),
                    variant.clone(),
                    e.user_id.as_ref().map(|u| u.as_str().to_owned()),
                    *config_version,
                    reason.as_ref().map(|r| r.as_str().to_owned()),
                ));
            }
        }
        tern.ack(b.batch.batch_id).unwrap();
    }
    out.sort();
    out
}

fn start_with(
    dir: &Path,
    f: impl FnOnce(crate::TernConfigBuilder) -> crate::TernConfigBuilder,
) -> Tern {
    let tern = Tern::start(
        f(TernConfig::builder("demo", "demo-key", dir))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert!(wait_until(
        || tern.live_ready() && tern.device_id().is_some()
    ));
    tern
}

/// The expected exposure of flag `f` of bundle `b` for `unit`, recorded under `user`.
fn expected(b: &ConfigBundle, f: &str, unit: &str, user: Option<&str>) -> Seen {
    let flag = b.flag(f).unwrap();
    let (d, reason) = tern_protocol::rollout::evaluate_flag_with_reason(flag, "demo", unit);
    (
        f.to_owned(),
        d.variant_name().to_owned(),
        user.map(str::to_owned),
        b.version,
        Some(reason.as_str().to_owned()),
    )
}

#[test]
fn reading_a_flag_records_one_exposure_per_flag_variant_unit_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(1);
    seed_cache(dir.path(), &b);
    let tern = start(dir.path());
    let device = tern.device_id().unwrap().to_string();
    for _ in 0..3 {
        for f in &b.flags {
            assert_eq!(tern.flag(&f.key), evaluate_flag(f, "demo", &device));
            tern.flag_enabled(&f.key);
        }
        // A flag the bundle does not have exposes nothing.
        assert_eq!(tern.flag("unknown"), FlagDecision::Off);
    }
    let mut want: Vec<Seen> = b
        .flags
        .iter()
        .map(|f| expected(&b, &f.key, &device, None))
        .collect();
    want.sort();
    assert_eq!(exposures(&tern), want);
    // `off` and `on` name a boolean flag's decisions; the disabled flag says why.
    assert!(want.contains(&(
        "disabled".into(),
        "off".into(),
        None,
        1,
        Some("disabled".into())
    )));
    let s = tern.stats().exposures;
    assert_eq!(
        (s.recorded, s.already_recorded, s.over_cap, s.failed),
        (4, 20, 0, 0)
    );
    assert_eq!(s.remembered, 4);
    // A new user is a new unit, recorded under that user.
    tern.identify(Some("ada")).unwrap();
    assert_eq!(
        tern.flag("colors"),
        evaluate_flag(b.flag("colors").unwrap(), "demo", "ada")
    );
    tern.flag("colors");
    assert_eq!(
        exposures(&tern),
        [expected(&b, "colors", "ada", Some("ada"))]
    );
    // A new config version is a new exposure; the older version's keys are dropped.
    tern.live_install(bundle(2), false);
    tern.flag("colors");
    tern.flag("colors");
    assert_eq!(
        exposures(&tern),
        [expected(&bundle(2), "colors", "ada", Some("ada"))]
    );
    assert_eq!(tern.stats().exposures.remembered, 1);
}

#[test]
fn exposures_are_not_recorded_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(5);
    seed_cache(dir.path(), &b);
    let tern = start(dir.path());
    let device = tern.device_id().unwrap().to_string();
    tern.flag("colors");
    tern.identify(Some("ada")).unwrap();
    tern.flag("colors");
    tern.flag("half");
    tern.shutdown(WAIT);
    drop(tern);
    let tern = start(dir.path());
    for _ in 0..2 {
        tern.flag("colors");
        tern.flag("half");
        tern.identify(None).unwrap();
        tern.flag("colors");
        // The one key not read before the restart.
        tern.flag("half");
        tern.identify(Some("ada")).unwrap();
    }
    let s = tern.stats().exposures;
    assert_eq!((s.recorded, s.already_recorded), (1, 7), "{s:?}");
    let mut want = vec![
        expected(&b, "colors", &device, None),
        expected(&b, "colors", "ada", Some("ada")),
        expected(&b, "half", "ada", Some("ada")),
        expected(&b, "half", &device, None),
    ];
    want.sort();
    assert_eq!(exposures(&tern), want);
    tern.shutdown(WAIT);
    drop(tern);
    // The store's table holds one row per key (of the newest version only).
    let (db, _) = Db::open(dir.path(), StoreLimits::default(), Limits::default()).unwrap();
    assert_eq!(db.load_exposures().unwrap().len(), 4);
}

#[test]
fn with_automatic_exposures_off_only_record_exposure_records() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(2);
    seed_cache(dir.path(), &b);
    let tern = start_with(dir.path(), |c| c.auto_exposures(false));
    let device = tern.device_id().unwrap().to_string();
    for f in &b.flags {
        tern.flag(&f.key);
    }
    assert_eq!(exposures(&tern), []);
    use crate::ExposureOutcome::*;
    assert_eq!(tern.record_exposure("colors").unwrap(), Recorded);
    assert_eq!(tern.record_exposure("colors").unwrap(), AlreadyRecorded);
    assert_eq!(tern.record_exposure("unknown").unwrap(), NoFlag);
    assert_eq!(exposures(&tern), [expected(&b, "colors", &device, None)]);
    // Opted out: refused like any recording call, and nothing is remembered.
    tern.opt_out(true).unwrap();
    assert!(matches!(
        tern.record_exposure("half"),
        Err(crate::TrackError::OptedOut)
    ));
    tern.opt_out(false).unwrap();
    assert_eq!(tern.record_exposure("half").unwrap(), Recorded);
    tern.shutdown(WAIT);
    assert!(matches!(
        tern.record_exposure("bool_on"),
        Err(crate::TrackError::ShutDown)
    ));
}

#[test]
fn an_opted_out_flag_read_records_nothing_and_the_read_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(2);
    seed_cache(dir.path(), &b);
    let tern = start(dir.path());
    tern.opt_out(true).unwrap();
    assert_eq!(tern.flag("bool_on"), FlagDecision::On);
    let s = tern.stats();
    assert_eq!((s.exposures.recorded, s.exposures.failed), (0, 0));
    assert_eq!(s.refused_opted_out, 0, "a flag read is not a refused call");
    tern.opt_out(false).unwrap();
    tern.flag("bool_on");
    assert_eq!(exposures(&tern).len(), 1);
}

#[test]
fn the_exposures_remembered_are_bounded_and_the_refusals_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bundle(1);
    b.flags = (0..10)
        .map(|i| flag(&format!("f{i}"), 10_000, &[]))
        .collect();
    seed_cache(dir.path(), &b);
    let tern = start_with(dir.path(), |c| c.max_exposures(3));
    for _ in 0..2 {
        for i in 0..10 {
            assert_eq!(tern.flag(&format!("f{i}")), FlagDecision::On);
        }
    }
    let s = tern.stats().exposures;
    assert_eq!((s.recorded, s.over_cap, s.remembered), (3, 14, 3), "{s:?}");
    assert_eq!(exposures(&tern).len(), 3);
    tern.shutdown(WAIT);
    drop(tern);
    // Across a restart: the same three, still bounded.
    let tern = start_with(dir.path(), |c| c.max_exposures(3));
    for i in 0..10 {
        tern.flag(&format!("f{i}"));
    }
    let s = tern.stats().exposures;
    assert_eq!(
        (s.recorded, s.already_recorded, s.over_cap),
        (0, 3, 7),
        "{s:?}"
    );
    tern.shutdown(WAIT);
    drop(tern);
    let (db, _) = Db::open(dir.path(), StoreLimits::default(), Limits::default()).unwrap();
    assert_eq!(db.load_exposures().unwrap().len(), 3);
}

#[test]
fn delete_local_data_forgets_the_exposures() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(1);
    seed_cache(dir.path(), &b);
    let tern = start(dir.path());
    tern.identify(Some("ada")).unwrap();
    tern.flag("colors");
    assert!(tern.wait_applied(WAIT));
    tern.delete_local_data().unwrap();
    tern.identify(Some("ada")).unwrap();
    tern.flag("colors");
    assert_eq!(
        exposures(&tern),
        [expected(&b, "colors", "ada", Some("ada"))]
    );
    tern.shutdown(WAIT);
    drop(tern);
    let (db, _) = Db::open(dir.path(), StoreLimits::default(), Limits::default()).unwrap();
    assert_eq!(db.load_exposures().unwrap().len(), 1);
}
