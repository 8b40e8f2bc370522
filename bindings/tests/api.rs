//! The exported API driven from Rust, as the foreign code would call it.

use std::collections::HashMap;

use tern_bindings::{FlagDecision, PropertyValue, TernCore, TernError, TernOptions};

fn options(dir: &std::path::Path) -> TernOptions {
    TernOptions {
        max_batch_events: Some(10),
        max_batch_age_ms: Some(1000),
        platform: Some("android".into()),
        app_version: Some("1.0".into()),
        ..TernOptions::new("demo", "demo-key", dir)
    }
}

#[test]
fn records_reads_and_maps_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = TernCore::start(options(dir.path())).unwrap();
    let props = HashMap::from([
        ("s".to_owned(), PropertyValue::Text { value: "x".into() }),
        ("i".to_owned(), PropertyValue::Integer { value: 3 }),
        ("r".to_owned(), PropertyValue::Real { value: 1.5 }),
        ("b".to_owned(), PropertyValue::Bool { value: true }),
    ]);
    t.try_track("viewed".into(), props).unwrap();
    t.try_purchase("sku".into(), 1_000_000, "EUR".into(), 1, HashMap::new())
        .unwrap();
    t.try_identify(Some("u1".into())).unwrap();
    // The non-throwing form returns normally; the `try_` form says why.
    t.track(String::new(), HashMap::new());
    assert!(matches!(
        t.try_track(String::new(), HashMap::new()),
        Err(TernError::InvalidEvent { ref field, .. }) if field == "event name"
    ));
    let nan = HashMap::from([("n".to_owned(), PropertyValue::Real { value: f64::NAN })]);
    assert!(matches!(
        t.try_track("x".into(), nan),
        Err(TernError::InvalidEvent { .. })
    ));
    assert_eq!(t.flag("nope".into()), FlagDecision::Off);
    assert_eq!(t.config_string("k".into(), "d".into()), "d");
    assert!(t.wait_applied(10_000));
    let stats = t.stats();
    assert_eq!(stats.queued_events, 2);
    assert_eq!(stats.user_id.as_deref(), Some("u1"));
    assert_eq!(stats.dropped_invalid, 3);
    t.try_opt_out(true).unwrap();
    assert_eq!(
        t.try_track("x".into(), HashMap::new()),
        Err(TernError::OptedOut)
    );
    assert!(t.shutdown(5_000).clean);
    assert_eq!(
        t.try_track("x".into(), HashMap::new()),
        Err(TernError::ShutDown)
    );
    t.track("x".into(), HashMap::new());
    assert_eq!(t.stats().refused_after_stop, 2);
}

#[test]
fn invalid_options_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.app_id = String::new();
    assert!(matches!(
        TernCore::start(o),
        Err(TernError::InvalidConfig { ref field, .. }) if field == "app_id"
    ));
    let mut o = options(dir.path());
    o.shard_map_json = Some("{".into());
    assert!(matches!(
        TernCore::start(o),
        Err(TernError::InvalidConfig { ref field, .. }) if field == "shard_map_json"
    ));
    let mut o = options(dir.path());
    o.certificate_pins = vec!["sha256/not-a-pin".into()];
    assert!(matches!(
        TernCore::start(o),
        Err(TernError::InvalidConfig { ref field, .. }) if field == "certificate_pins"
    ));
    type Set = fn(&mut TernOptions);
    let network: [(Set, &str); 11] = [
        (
            |o| o.local_address = Some("127.1.0.300".into()),
            "local_address",
        ),
        (|o| o.local_address = Some(String::new()), "local_address"),
        (
            |o| o.connect_timeout_ms = Some(0),
            "upload.transport.connect_timeout",
        ),
        (
            |o| o.connect_timeout_ms = Some(60_001),
            "upload.transport.connect_timeout",
        ),
        (
            |o| o.request_timeout_ms = Some(0),
            "upload.transport.request_timeout",
        ),
        (
            |o| o.request_timeout_ms = Some(u64::MAX),
            "upload.transport.request_timeout",
        ),
        (|o| o.retry_base_ms = Some(0), "upload.retry.base"),
        (|o| o.retry_base_ms = Some(300_001), "upload.retry.base"),
        (
            |o| o.quic_reprobe_ms = Some(0),
            "upload.router.quic_reprobe",
        ),
        (
            |o| o.quic_reprobe_ms = Some(u64::MAX),
            "upload.router.quic_reprobe",
        ),
        (|o| o.apply_delay_ms = Some(5_001), "apply_delay"),
    ];
    for (set, expected) in network {
        let core = TernCore::new();
        let mut o = options(dir.path());
        set(&mut o);
        match core.open(o) {
            Err(TernError::InvalidConfig { field, reason }) => {
                assert_eq!(field, expected, "{reason}");
            }
            other => panic!("{expected}: {other:?}"),
        }
        // The refusal leaves a counted no-op instance, never a throwing one.
        core.track("x".into(), HashMap::new());
        assert_eq!(core.stats().refused_unavailable, 1, "{expected}");
    }
}

/// Consent and deletion calls made before open are kept and applied in order with the
/// others; a denied call is not an error; the counters reach the stats.
#[test]
fn consent_and_deletion_calls_queue_before_open_and_apply_in_order() {
    use tern_bindings::{ConsentPurpose, ConsentState};
    let dir = tempfile::tempdir().unwrap();
    let t = TernCore::new();
    assert_eq!(t.consent(ConsentPurpose::Analytics), None, "before open");
    t.try_set_consent(ConsentPurpose::Analytics, ConsentState::Pending)
        .unwrap();
    t.try_track("held".into(), HashMap::new()).unwrap();
    t.set_consent(ConsentPurpose::Messaging, ConsentState::Denied);
    t.open(TernOptions {
        default_consent: Some(ConsentState::Granted),
        max_pending_events: Some(10),
        ..options(dir.path())
    })
    .unwrap();
    assert!(t.wait_applied(10_000));
    assert_eq!(
        t.consent(ConsentPurpose::Analytics),
        Some(ConsentState::Pending)
    );
    assert_eq!(t.try_message_impression("m".into(), "shown".into()), Ok(()));
    let s = t.stats();
    assert_eq!(
        (s.consent_pending, s.queued_events, s.refused_consent),
        (1, 0, 1)
    );
    t.set_consent(ConsentPurpose::Analytics, ConsentState::Granted);
    t.try_request_deletion().unwrap();
    assert!(t.wait_applied(10_000));
    let s = t.stats();
    assert_eq!(
        (s.consent_pending, s.queued_events),
        (0, 0),
        "deleted locally"
    );
    assert_eq!(s.deletion_requests, 1);
    // An invalid option is named.
    let bad = TernCore::start(TernOptions {
        max_pending_events: Some(0),
        ..options(tempfile::tempdir().unwrap().path())
    });
    assert!(matches!(
        bad,
        Err(TernError::InvalidConfig { ref field, .. }) if field == "consent.max_pending_events"
    ));
    assert!(t.shutdown(5_000).clean);
}
