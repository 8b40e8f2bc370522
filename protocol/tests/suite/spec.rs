//! Decoding and validation rules of docs/protocol.md §4 and §7, one test per rule,
//! on payloads written field by field (so that every byte is chosen here), through the
//! owned decoder and — for `IngestRequest`s — the in-place reader.

use tern_protocol::limits::{validate_batch, validate_received_batch};
use tern_protocol::wire::Writer;
use tern_protocol::*;

/// A field of a hand-written map.
enum F<'a> {
    Str(&'a str),
    U(u64),
    Nil,
    Bin(&'a [u8]),
    Map(Vec<(&'a str, F<'a>)>),
    Arr(Vec<F<'a>>),
}

fn write(w: &mut Writer, f: &F<'_>) {
    match f {
        F::Str(s) => w.str(s),
        F::U(u) => w.uint(*u),
        F::Nil => w.nil(),
        F::Bin(b) => w.bin(b),
        F::Map(entries) => {
            w.map(entries.len());
            for (k, v) in entries {
                w.str(k);
                write(w, v);
            }
        }
        F::Arr(items) => {
            w.array(items.len());
            for v in items {
                write(w, v);
            }
        }
    }
}

fn bytes(f: &F<'_>) -> Vec<u8> {
    let mut w = Writer::new();
    write(&mut w, f);
    w.into_bytes()
}

const ID: [u8; 16] = [7; 16];

/// An `IngestRequest` with one custom event; `batch_extra` and `body_extra` are added
/// to the batch's and the body's maps.
fn request<'a>(batch_extra: Vec<(&'a str, F<'a>)>, body_extra: Vec<(&'a str, F<'a>)>) -> F<'a> {
    let mut body = vec![("type", F::Str("custom")), ("name", F::Str("opened"))];
    body.extend(body_extra);
    let mut batch = vec![
        ("batch_id", F::Bin(&ID)),
        ("app_id", F::Str("demo")),
        ("device_id", F::Bin(&ID)),
        (
            "sdk",
            F::Map(vec![("name", F::Str("s")), ("version", F::Str("1"))]),
        ),
        ("sent_at_ms", F::U(5)),
        (
            "events",
            F::Arr(vec![F::Map(vec![
                ("seq", F::U(1)),
                ("ts_ms", F::U(2)),
                ("body", F::Map(body)),
            ])]),
        ),
    ];
    batch.extend(batch_extra);
    F::Map(vec![
        (
            "auth",
            F::Map(vec![("app_id", F::Str("demo")), ("key", F::Str("k"))]),
        ),
        ("batch", F::Map(batch)),
    ])
}

fn decode_ingest(f: &F<'_>) -> Result<IngestRequest, DecodeError> {
    decode_payload(&bytes(f))
}

#[test]
fn nil_in_a_field_with_a_default_is_the_field_absent() {
    let plain = decode_ingest(&request(vec![], vec![])).unwrap();
    for (batch_extra, body_extra) in [
        (vec![("attempt", F::Nil)], vec![]),
        (vec![("health", F::Nil)], vec![]),
        (vec![("health", F::Map(vec![("retries", F::Nil)]))], vec![]),
        (vec![], vec![("props", F::Nil)]),
    ] {
        let f = request(batch_extra, body_extra);
        assert_eq!(decode_ingest(&f).unwrap(), plain);
        let payload = bytes(&f);
        let view = IngestView::parse(&payload, &Limits::default()).unwrap();
        assert_eq!(view.batch.validation(), Ok(()));
    }
    // user_properties' set and unset, sdk.platform and app_version.
    let up = |set: F<'static>, unset: F<'static>| {
        let mut f = request(vec![], vec![]);
        if let F::Map(top) = &mut f {
            if let F::Map(batch) = &mut top[1].1 {
                batch[5].1 = F::Arr(vec![F::Map(vec![
                    ("seq", F::U(1)),
                    ("ts_ms", F::U(2)),
                    (
                        "body",
                        F::Map(vec![
                            ("type", F::Str("user_properties")),
                            ("set", set),
                            ("unset", unset),
                        ]),
                    ),
                ])]);
                batch[3].1 = F::Map(vec![
                    ("name", F::Str("s")),
                    ("version", F::Str("1")),
                    ("platform", F::Nil),
                    ("app_version", F::Nil),
                ]);
            }
        }
        f
    };
    let with_nil = decode_ingest(&up(F::Nil, F::Nil)).unwrap();
    let with_empty = decode_ingest(&up(F::Map(vec![]), F::Arr(vec![]))).unwrap();
    assert_eq!(with_nil, with_empty);
    assert_eq!(with_nil.batch.sdk.platform, "");
    IngestView::parse(&bytes(&up(F::Nil, F::Nil)), &Limits::default()).unwrap();
    // Replies: `detail` of an ErrorReply, `stale` of a ConfigReply.
    let e: ErrorReply = decode_payload(&bytes(&F::Map(vec![
        ("shard_map_version", F::U(1)),
        ("reason", F::Str("malformed")),
        ("detail", F::Nil),
    ])))
    .unwrap();
    assert_eq!(e.detail, "");
    let c: ConfigReply = decode_payload(&bytes(&F::Map(vec![
        ("shard_map_version", F::U(1)),
        ("stale", F::Nil),
        ("outcome", F::Map(vec![("status", F::Str("not_modified"))])),
    ])))
    .unwrap();
    assert!(!c.stale);
}

#[test]
fn nil_in_a_required_field_is_malformed() {
    for extra in ["sent_at_ms", "batch_id", "events", "sdk"] {
        let mut f = request(vec![], vec![]);
        if let F::Map(top) = &mut f {
            if let F::Map(batch) = &mut top[1].1 {
                for (k, v) in batch.iter_mut() {
                    if *k == extra {
                        *v = F::Nil;
                    }
                }
            }
        }
        assert!(decode_ingest(&f).is_err(), "nil {extra}");
        assert!(IngestView::parse(&bytes(&f), &Limits::default()).is_err());
    }
}

#[test]
fn a_repeated_key_is_malformed_unless_unknown() {
    // A field twice, even when one of them is nil.
    for extra in [
        vec![("attempt", F::Nil), ("attempt", F::U(1))],
        vec![("sent_at_ms", F::U(1))],
    ] {
        let err = decode_ingest(&request(extra, vec![])).unwrap_err();
        assert!(err.to_string().contains("duplicate field"), "{err}");
    }
    // A property key twice.
    let f = request(
        vec![],
        vec![("props", F::Map(vec![("k", F::U(1)), ("k", F::U(2))]))],
    );
    let err = decode_ingest(&f).unwrap_err();
    assert!(err.to_string().contains("repeated map key"), "{err}");
    // A config value key twice.
    let err = decode_payload::<ConfigBundle>(&bytes(&F::Map(vec![
        ("app_id", F::Str("a")),
        ("version", F::U(1)),
        ("etag", F::Str("e")),
        ("values", F::Map(vec![("x", F::U(1)), ("x", F::U(1))])),
    ])))
    .unwrap_err();
    assert!(err.to_string().contains("repeated map key"), "{err}");
    // An unknown key twice: ignored.
    decode_ingest(&request(vec![("zz", F::U(1)), ("zz", F::Nil)], vec![])).unwrap();
}

#[test]
fn uuids_are_16_bytes_or_hyphenated_text_in_either_case() {
    let id = "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5";
    let with = |text: &str| {
        let mut w = Writer::new();
        w.str(text);
        uuid::Uuid::decode(&mut tern_protocol::wire::Reader::new(&w.into_bytes()))
    };
    assert_eq!(with(id).unwrap().to_string(), id);
    assert_eq!(with(&id.to_uppercase()).unwrap().to_string(), id);
    for bad in [
        id.replace('-', ""),
        format!("{{{id}}}"),
        format!("urn:uuid:{id}"),
        id[..35].to_owned(),
        format!("{id}0"),
    ] {
        let err = with(&bad).unwrap_err();
        assert_eq!(
            err.kind,
            tern_protocol::wire::ReadErrorKind::BadUuid,
            "{bad}"
        );
    }
    for n in [0, 15, 17] {
        let mut w = Writer::new();
        w.bin(&vec![1; n]);
        assert!(
            uuid::Uuid::decode(&mut tern_protocol::wire::Reader::new(&w.into_bytes())).is_err()
        );
    }
}

/// `levels` arrays nested in an unknown field, the innermost holding `inner`.
fn nested_unknown(levels: usize, inner: bool) -> Vec<u8> {
    let mut p = vec![0x83];
    p.extend_from_slice(&bytes(&F::Str("shard_map_version")));
    p.push(1);
    p.extend_from_slice(&bytes(&F::Str("reason")));
    p.extend_from_slice(&bytes(&F::Str("invalid")));
    p.extend_from_slice(&bytes(&F::Str("zz")));
    for i in 0..levels {
        let last = i + 1 == levels;
        p.push(if last && !inner { 0x90 } else { 0x91 });
    }
    if inner {
        p.push(0x01);
    }
    p
}

#[test]
fn nesting_inside_an_ignored_value_is_limited_to_64_levels() {
    for inner in [false, true] {
        decode_payload::<ErrorReply>(&nested_unknown(64, inner)).unwrap();
        let err = decode_payload::<ErrorReply>(&nested_unknown(65, inner)).unwrap_err();
        assert!(err.to_string().contains("nested too deeply"), "{err}");
    }
}

#[test]
fn limits_over_a_maximum_are_too_large_and_every_other_rule_invalid() {
    let l = Limits::default();
    let event = |body: EventBody| Event {
        seq: 1,
        ts_ms: 0,
        user_id: None,
        session_id: None,
        body,
    };
    let custom = |name: &str, props: Properties| {
        event(EventBody::Custom {
            name: name.into(),
            props,
        })
    };
    let reason = |e: Event| limits::validate_event(&e, &l).unwrap_err().reject_reason();
    let props = |n: usize, len: usize| -> Properties {
        (0..n)
            .map(|i| (format!("k{i:03}"), Value::from("v".repeat(len))))
            .collect()
    };
    use RejectReason::{Invalid, TooLarge};
    assert_eq!(reason(custom(&"n".repeat(129), props(0, 0))), TooLarge);
    assert_eq!(reason(custom("", props(0, 0))), Invalid);
    assert_eq!(reason(custom("_x", props(0, 0))), Invalid);
    assert_eq!(reason(custom("e", props(65, 1))), TooLarge);
    assert_eq!(reason(custom("e", props(1, 1025))), TooLarge);
    let nan: Properties = [("x".to_string(), Value::Float(f64::NAN))].into();
    assert_eq!(reason(custom("e", nan)), Invalid);
    let mut e = custom("e", props(0, 0));
    e.user_id = Some(UserId::new("u".repeat(257)));
    assert_eq!(reason(e.clone()), TooLarge);
    e.user_id = Some(UserId::new(""));
    assert_eq!(reason(e), Invalid);
    assert_eq!(
        reason(event(EventBody::UserProperties {
            set: Properties::new(),
            unset: (0..65).map(|i| format!("k{i}")).collect(),
        })),
        TooLarge
    );
    assert_eq!(
        reason(event(EventBody::Purchase {
            product_id: "p".into(),
            amount_micros: -1,
            currency: "USD".into(),
            quantity: 1,
            props: Properties::new(),
        })),
        Invalid
    );
    // An event of 40 properties of 1000 bytes: over 32 KiB.
    assert_eq!(reason(custom("e", props(40, 1000))), TooLarge);
}

#[test]
fn sizes_are_the_bytes_as_received() {
    // The same batch, its event sent with a 40 KB unknown field: over the event limit
    // as received, although the decoded event is small.
    let pad = vec![0u8; 40_000];
    let f = request(vec![], vec![("zz_future", F::Bin(&pad))]);
    let payload = bytes(&f);
    let received = ReceivedIngest::decode(&payload).unwrap();
    assert!(received.event_sizes[0] > 40_000);
    assert_eq!(
        validate_batch(&received.request.batch, &Limits::default()),
        Ok(())
    );
    let err = received.validate(&Limits::default()).unwrap_err();
    assert!(
        matches!(err, ValidationError::EventTooLarge { .. }),
        "{err}"
    );
    assert_eq!(err.reject_reason(), RejectReason::TooLarge);
    let view = IngestView::parse(&payload, &Limits::default()).unwrap();
    assert_eq!(view.batch.validation(), Err(&err));
    assert_eq!(view.batch.bytes, received.batch_bytes);
    // Measured as encoded, the same sizes as received for canonical bytes.
    let canonical = encode_payload(&received.request).unwrap();
    let again = ReceivedIngest::decode(&canonical).unwrap();
    let encoded: Vec<usize> = again
        .request
        .batch
        .events
        .iter()
        .map(|e| codec::encoded_len(e).unwrap())
        .collect();
    assert_eq!(again.event_sizes, encoded);
    assert_eq!(
        validate_received_batch(&again.request.batch, &again.event_sizes, &Limits::default()),
        validate_batch(&again.request.batch, &Limits::default())
    );
}
