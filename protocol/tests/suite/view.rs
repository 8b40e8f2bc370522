//! The borrowed fast path (`IngestView`) against the owned decoder and the rules of
//! `limits` (`ReceivedIngest`: decode, then `validate_received_batch` on the sizes as
//! received): on every payload it reads, it must agree with them exactly — the same
//! credentials, ids and event count, the same validation verdict (same error, same
//! text, so the same reject reason), the same batch bytes and event sizes — and it
//! must never read a payload the owned decoder refuses. On canonical encodings the
//! verdict is also `validate_batch`'s on the values (what the SDK checks). Payloads:
//! canonical encodings of random (often invalid) batches under random limits, other
//! valid encodings of them (field order, unknown fields, `nil` for absent fields, wide
//! integers and strings, `float 32`, the odd forms the fast path leaves to the owned
//! decoder), and random mutations of them. The rules themselves exist once (in
//! `limits`), so these tests check the plumbing: which parts reach which rule.

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use tern_protocol::limits::validate_batch;
use tern_protocol::*;

use crate::strategies::{auth, batch};

/// Checks agreement on one payload; returns whether the fast path read it.
fn agree(payload: &[u8], limits: &Limits) -> Result<bool, TestCaseError> {
    let received = ReceivedIngest::decode(payload);
    // `ReceivedIngest` decodes exactly what the owned decoder decodes (compared
    // encoded: NaN properties are not equal to themselves).
    match (&received, decode_payload::<IngestRequest>(payload)) {
        (Ok(r), Ok(d)) => prop_assert_eq!(
            encode_payload(&r.request).unwrap(),
            encode_payload(&d).unwrap()
        ),
        (Err(a), Err(b)) => prop_assert_eq!(a, &b),
        (a, b) => return Err(TestCaseError::fail(format!("{a:?} vs {b:?}"))),
    }
    let view = match IngestView::parse(payload, limits) {
        Ok(view) => view,
        Err(_) => return Ok(false),
    };
    let received = match received {
        Ok(o) => o,
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "the fast path read a payload the owned decoder refuses ({e}): {payload:02x?}"
            )))
        }
    };
    let owned = &received.request;
    prop_assert_eq!(view.auth_app_id, owned.auth.app_id.as_str());
    prop_assert_eq!(view.auth_key, owned.auth.key.as_str());
    let b = &view.batch;
    prop_assert_eq!(b.batch_id, owned.batch.batch_id);
    prop_assert_eq!(b.device_id, owned.batch.device_id);
    prop_assert_eq!(b.app_id, owned.batch.app_id.as_str());
    prop_assert_eq!(b.events, owned.batch.events.len());
    prop_assert_eq!(b.routing_key(), owned.batch.routing_key());
    prop_assert_eq!(
        b.validation().map_err(Clone::clone),
        received.validate(limits)
    );
    prop_assert_eq!(
        b.validation().map_err(|e| e.reject_reason()),
        received.validate(limits).map_err(|e| e.reject_reason())
    );
    prop_assert_eq!(
        b.events_encoded_len,
        received.event_sizes.iter().sum::<usize>()
    );
    prop_assert_eq!(received.event_sizes.len(), owned.batch.events.len());
    prop_assert_eq!(
        (b.offset, b.bytes),
        (received.batch_offset, received.batch_bytes)
    );
    prop_assert_eq!(&payload[b.offset..b.offset + b.bytes.len()], b.bytes);
    // The bytes the relay forwards decode to the same batch (compared encoded:
    // NaN properties are not equal to themselves).
    let canonical = encode_payload(&owned.batch).unwrap();
    let again: EventBatch = decode_payload(b.bytes).unwrap();
    prop_assert_eq!(encode_payload(&again).unwrap(), canonical.clone());
    // ... also spliced into a ForwardRequest, next to a batch encoded from a value.
    let relay = RelayId::new("relay-1");
    let cfg = CodecConfig::backend();
    let frame = codec::encode_forward_request_raw(&relay, &[b.bytes, &canonical], &cfg).unwrap();
    match Message::from_bytes(&frame, &cfg).unwrap() {
        Message::ForwardRequest(f) => {
            prop_assert_eq!(f.relay_id, relay);
            prop_assert_eq!(f.batches.len(), 2);
            for got in &f.batches {
                prop_assert_eq!(encode_payload(got).unwrap(), canonical.clone());
            }
        }
        other => return Err(TestCaseError::fail(format!("{other:?}"))),
    }
    Ok(true)
}

// ---- batches that break rules, and limits that make rules bite ----

fn wild_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9][A-Za-z0-9_.:-]{0,12}",
        1 => ".{0,6}",
        1 => "[a-z ]{0,5}",
    ]
}

fn wild_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".{0,40}".prop_map(Value::String),
        any::<i64>().prop_map(Value::Int),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            any::<f32>().prop_map(f64::from)
        ]
        .prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
    ]
}

fn wild_props() -> impl Strategy<Value = Properties> {
    btree_map(wild_name(), wild_value(), 0..8)
}

fn wild_body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        (wild_name(), wild_props()).prop_map(|(name, props)| EventBody::Custom { name, props }),
        Just(EventBody::SessionStart),
        any::<u64>().prop_map(|duration_ms| EventBody::SessionEnd { duration_ms }),
        (
            ".{0,8}",
            prop_oneof![any::<i64>(), 0..10_000_000i64],
            "[A-Za-z]{2,4}",
            0u32..3,
            wild_props()
        )
            .prop_map(|(product_id, amount_micros, currency, quantity, props)| {
                EventBody::Purchase {
                    product_id,
                    amount_micros,
                    currency,
                    quantity,
                    props,
                }
            }),
        (wild_props(), vec(wild_name(), 0..4))
            .prop_map(|(set, unset)| EventBody::UserProperties { set, unset }),
        (".{0,6}", ".{0,6}")
            .prop_map(|(message_id, action)| EventBody::MessageImpression { message_id, action }),
        (".{0,6}", ".{0,6}", any::<u64>(), option::of(".{0,6}")).prop_map(
            |(flag, variant, config_version, reason)| EventBody::Exposure {
                flag,
                variant,
                config_version,
                reason: reason.map(|r| rollout::FlagReason::from(r.as_str())),
            }
        ),
        (any::<[u8; 16]>(), ".{0,6}").prop_map(|(a, user)| EventBody::Alias {
            anonymous_id: AnonymousId::from_bytes(a),
            user_id: UserId::new(user),
        }),
        (
            any::<[u8; 16]>(),
            option::of(".{0,6}"),
            option::of(any::<[u8; 16]>())
        )
            .prop_map(|(d, user, a)| EventBody::DeletionRequest {
                device_id: DeviceId::from_bytes(d),
                user_id: user.map(UserId::new),
                anonymous_id: a.map(AnonymousId::from_bytes),
            }),
        (
            prop_oneof![Just("fcm".to_owned()), Just("apns".to_owned()), ".{0,4}"],
            option::of(prop_oneof![Just("sandbox".to_owned()), ".{0,4}"]),
            prop_oneof![".{0,8}", "[a-f0-9]{1020,1030}"],
            any::<bool>(),
        )
            .prop_map(|(p, env, token, cleared)| EventBody::PushToken {
                provider: PushProvider::from(p.as_str()),
                environment: env.map(|e| PushEnvironment::from(e.as_str())),
                token,
                cleared,
            }),
        ".{0,6}".prop_map(|campaign_id| EventBody::PushReceived { campaign_id }),
        (".{0,6}", option::of(".{0,6}")).prop_map(|(campaign_id, action)| EventBody::PushOpened {
            campaign_id,
            action
        }),
        Just(EventBody::AppInstalled),
        (option::of(".{0,6}"), option::of(".{0,6}")).prop_map(
            |(previous_version, previous_build)| {
                EventBody::AppUpdated {
                    previous_version,
                    previous_build,
                }
            }
        ),
        any::<bool>().prop_map(|from_background| EventBody::AppOpened { from_background }),
    ]
}

/// A batch-level context whose strings may break the §7 rules.
fn wild_context() -> impl Strategy<Value = Option<AppContext>> {
    option::of(
        (
            vec(
                option::of(prop_oneof![3 => "[a-z0-9.]{1,6}", 1 => ".{0,6}"]),
                8,
            ),
            option::of(prop_oneof!["wifi", "cellular", ".{0,6}"]),
            option::of(any::<u32>()),
            option::of(any::<u32>()),
            option::of(any::<[u8; 16]>()),
        )
            .prop_map(|(strings, network, w, h, install)| {
                let mut s = strings.into_iter();
                let mut next = || s.next().flatten();
                AppContext {
                    app_version: next(),
                    app_build: next(),
                    os_name: next(),
                    os_version: next(),
                    device_model: next(),
                    locale: next(),
                    time_zone: next(),
                    sdk_version: next(),
                    network: network.map(|n: String| NetworkType::from(n.as_str())),
                    screen_width: w,
                    screen_height: h,
                    install_id: install.map(InstallId::from_bytes),
                }
            }),
    )
}

fn wild_events() -> impl Strategy<Value = Vec<Event>> {
    (
        vec(
            (
                1u64..4,
                any::<i64>(),
                option::of(prop_oneof![3 => "[a-z]{1,8}", 1 => ".{0,4}"]),
                option::of(any::<u64>()),
                wild_body(),
            ),
            0..8,
        ),
        any::<bool>(),
    )
        .prop_map(|(parts, increasing)| {
            let mut seq = 0;
            parts
                .into_iter()
                .map(|(step, ts_ms, user, session, body)| {
                    seq = if increasing { seq + step } else { step - 1 };
                    Event {
                        seq,
                        ts_ms,
                        user_id: user.map(UserId::new),
                        session_id: session.map(SessionId),
                        body,
                    }
                })
                .collect()
        })
}

fn wild_request() -> impl Strategy<Value = IngestRequest> {
    (
        batch(),
        wild_events(),
        prop_oneof![3 => Just(None), 1 => option::of(".{0,4}")],
        wild_context(),
    )
        .prop_map(|(mut batch, events, app, context)| {
            batch.events = events;
            batch.context = context;
            if let Some(app) = app {
                batch.app_id = AppId::new(app);
            }
            IngestRequest {
                auth: Auth {
                    app_id: batch.app_id.clone(),
                    key: "k".into(),
                },
                batch,
            }
        })
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        1 => Just(Limits::default()),
        2 => (1usize..20, 0usize..6, 0usize..40, 1usize..10, 20usize..400, 1usize..8, 50usize..2000)
            .prop_map(|(name, props, string, id, event, events, batch)| {
                let mut l = Limits::default();
                l.max_name_len = name;
                l.max_properties = props;
                l.max_string_len = string;
                l.max_id_len = id;
                l.max_event_bytes = event;
                l.max_batch_events = events;
                l.max_batch_bytes = batch;
                l
            }),
    ]
}

// ---- other valid encodings of the same request ----

/// A MessagePack value written by hand, so that the tests can choose the encoding.
#[derive(Clone, Debug)]
enum M {
    Map(Vec<(String, M)>),
    Arr(Vec<M>),
    Str(String),
    Bin(Vec<u8>),
    U(u64),
    I(i64),
    F(f64),
    B(bool),
    Nil,
}

/// How to write it.
#[derive(Clone, Copy, Debug)]
struct Style {
    /// Integers as 64-bit, strings as `str 8`+, maps and arrays as 16-bit headers.
    wide: bool,
    /// Floats that fit as `float 32`.
    f32: bool,
}

impl M {
    fn write(&self, s: Style, out: &mut Vec<u8>) {
        match self {
            M::Map(entries) => {
                if s.wide {
                    out.push(0xde);
                    out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                } else {
                    out.extend(rmp_len(entries.len(), 0x80, 0xde));
                }
                for (k, v) in entries {
                    M::Str(k.clone()).write(s, out);
                    v.write(s, out);
                }
            }
            M::Arr(items) => {
                if s.wide {
                    out.push(0xdc);
                    out.extend_from_slice(&(items.len() as u16).to_be_bytes());
                } else {
                    out.extend(rmp_len(items.len(), 0x90, 0xdc));
                }
                for v in items {
                    v.write(s, out);
                }
            }
            M::Str(t) => {
                if s.wide && t.len() < 256 {
                    out.extend_from_slice(&[0xd9, t.len() as u8]);
                    out.extend_from_slice(t.as_bytes());
                } else {
                    out.extend(rmp_serde::to_vec(t).unwrap());
                }
            }
            M::Bin(b) => {
                out.extend_from_slice(&[0xc4, b.len() as u8]);
                out.extend_from_slice(b);
            }
            M::U(u) if s.wide => {
                out.push(0xcf);
                out.extend_from_slice(&u.to_be_bytes());
            }
            M::U(u) => out.extend(rmp_serde::to_vec(u).unwrap()),
            M::I(i) if s.wide => {
                out.push(0xd3);
                out.extend_from_slice(&i.to_be_bytes());
            }
            M::I(i) => out.extend(rmp_serde::to_vec(i).unwrap()),
            M::F(x) if s.f32 && f64::from(*x as f32).to_bits() == x.to_bits() => {
                out.push(0xca);
                out.extend_from_slice(&(*x as f32).to_be_bytes());
            }
            M::F(x) => out.extend(rmp_serde::to_vec(x).unwrap()),
            M::B(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            M::Nil => out.push(0xc0),
        }
    }
}

fn rmp_len(n: usize, fix: u8, sixteen: u8) -> Vec<u8> {
    if n < 16 {
        vec![fix | n as u8]
    } else {
        let mut v = vec![sixteen];
        v.extend_from_slice(&(n as u16).to_be_bytes());
        v
    }
}

/// Variations applied while building the value.
#[derive(Clone, Copy, Debug)]
struct Twist {
    /// Rotate every map's entries by this much (the body's tag stays first unless
    /// `tag_not_first`).
    rotate: usize,
    /// Add an unknown field (with a nested value) to every map.
    unknown_fields: bool,
    /// Properties in descending key order (the fast path leaves it to the owned path).
    props_descending: bool,
    /// The body's tag moved to the end (left to the owned path).
    tag_not_first: bool,
    /// Optional fields and fields with a default that are absent (or at their default)
    /// written as `nil`.
    nil_optionals: bool,
    /// `session_start` bodies carry extra fields (ignored by both).
    session_start_extras: bool,
}

fn map(mut entries: Vec<(&str, M)>, t: Twist) -> M {
    if t.unknown_fields {
        entries.push((
            "zz_future",
            M::Arr(vec![M::Map(vec![("x".into(), M::Nil)]), M::Bin(vec![1, 2])]),
        ));
    }
    if !entries.is_empty() {
        let r = t.rotate % entries.len();
        entries.rotate_left(r);
    }
    M::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

fn value_m(v: &Value) -> M {
    match v {
        Value::String(s) => M::Str(s.clone()),
        Value::Int(i) => M::I(*i),
        Value::Float(x) => M::F(*x),
        Value::Bool(b) => M::B(*b),
    }
}

fn props_m(p: &Properties, t: Twist) -> M {
    let mut entries: Vec<(String, M)> = p.iter().map(|(k, v)| (k.clone(), value_m(v))).collect();
    if t.props_descending {
        entries.reverse();
    }
    M::Map(entries)
}

fn opt(entries: &mut Vec<(&'static str, M)>, key: &'static str, v: Option<M>, t: Twist) {
    match v {
        Some(v) => entries.push((key, v)),
        None if t.nil_optionals => entries.push((key, M::Nil)),
        None => {}
    }
}

fn body_m(b: &EventBody, t: Twist) -> M {
    let mut fields: Vec<(&str, M)> = Vec::new();
    let props = |fields: &mut Vec<(&str, M)>, key, p: &Properties| {
        if !p.is_empty() {
            fields.push((key, props_m(p, t)));
        } else if t.nil_optionals {
            fields.push((key, M::Nil));
        }
    };
    match b {
        EventBody::Custom { name, props: p } => {
            fields.push(("name", M::Str(name.clone())));
            props(&mut fields, "props", p);
        }
        EventBody::SessionStart if t.session_start_extras => {
            fields.push(("name", M::I(-5)));
            fields.push(("props", M::Nil));
        }
        EventBody::SessionEnd { duration_ms } => fields.push(("duration_ms", M::U(*duration_ms))),
        EventBody::Purchase {
            product_id,
            amount_micros,
            currency,
            quantity,
            props: p,
        } => {
            fields.push(("product_id", M::Str(product_id.clone())));
            fields.push(("amount_micros", M::I(*amount_micros)));
            fields.push(("currency", M::Str(currency.clone())));
            fields.push(("quantity", M::U(u64::from(*quantity))));
            props(&mut fields, "props", p);
        }
        EventBody::UserProperties { set, unset } => {
            props(&mut fields, "set", set);
            if !unset.is_empty() {
                fields.push(("unset", M::Arr(unset.iter().cloned().map(M::Str).collect())));
            } else if t.nil_optionals {
                fields.push(("unset", M::Nil));
            }
        }
        EventBody::MessageImpression { message_id, action } => {
            fields.push(("message_id", M::Str(message_id.clone())));
            fields.push(("action", M::Str(action.clone())));
        }
        EventBody::Exposure {
            flag,
            variant,
            config_version,
            reason,
        } => {
            fields.push(("flag", M::Str(flag.clone())));
            fields.push(("variant", M::Str(variant.clone())));
            fields.push(("config_version", M::U(*config_version)));
            let reason = reason.as_ref().map(|r| M::Str(r.as_str().to_owned()));
            opt(&mut fields, "reason", reason, t);
        }
        EventBody::Alias {
            anonymous_id,
            user_id,
        } => {
            // The text form (§4) on rotated encodings, `bin` otherwise.
            let anon = if t.rotate % 2 == 1 {
                M::Str(anonymous_id.to_string())
            } else {
                M::Bin(anonymous_id.as_uuid().as_bytes().to_vec())
            };
            fields.push(("anonymous_id", anon));
            fields.push(("user_id", M::Str(user_id.as_str().into())));
        }
        EventBody::DeletionRequest {
            device_id,
            user_id,
            anonymous_id,
        } => {
            // The text form (§4) on rotated encodings, `bin` otherwise.
            let uuid = |u: &uuid::Uuid| {
                if t.rotate % 2 == 1 {
                    M::Str(u.to_string())
                } else {
                    M::Bin(u.as_bytes().to_vec())
                }
            };
            fields.push(("device_id", uuid(device_id.as_uuid())));
            let user = user_id.as_ref().map(|u| M::Str(u.as_str().into()));
            opt(&mut fields, "user_id", user, t);
            let anon = anonymous_id.as_ref().map(|a| uuid(a.as_uuid()));
            opt(&mut fields, "anonymous_id", anon, t);
        }
        EventBody::PushToken {
            provider,
            environment,
            token,
            cleared,
        } => {
            fields.push(("provider", M::Str(provider.as_str().to_owned())));
            let env = environment.as_ref().map(|e| M::Str(e.as_str().to_owned()));
            opt(&mut fields, "environment", env, t);
            fields.push(("token", M::Str(token.clone())));
            if *cleared {
                fields.push(("cleared", M::B(true)));
            }
        }
        EventBody::PushReceived { campaign_id } => {
            fields.push(("campaign_id", M::Str(campaign_id.clone())));
        }
        EventBody::PushOpened {
            campaign_id,
            action,
        } => {
            fields.push(("campaign_id", M::Str(campaign_id.clone())));
            opt(&mut fields, "action", action.clone().map(M::Str), t);
        }
        EventBody::AppUpdated {
            previous_version,
            previous_build,
        } => {
            opt(
                &mut fields,
                "previous_version",
                previous_version.clone().map(M::Str),
                t,
            );
            opt(
                &mut fields,
                "previous_build",
                previous_build.clone().map(M::Str),
                t,
            );
        }
        EventBody::AppOpened { from_background } => {
            fields.push(("from_background", M::B(*from_background)))
        }
        _ => {}
    }
    let M::Map(mut entries) = map(fields, t) else {
        unreachable!()
    };
    let tag = ("type".to_owned(), M::Str(b.kind().to_owned()));
    if t.tag_not_first {
        entries.push(tag);
    } else {
        entries.insert(0, tag);
    }
    M::Map(entries)
}

fn event_m(e: &Event, t: Twist) -> M {
    let mut f = vec![("seq", M::U(e.seq)), ("ts_ms", M::I(e.ts_ms))];
    opt(
        &mut f,
        "user_id",
        e.user_id.as_ref().map(|u| M::Str(u.as_str().into())),
        t,
    );
    opt(&mut f, "session_id", e.session_id.map(|s| M::U(s.0)), t);
    f.push(("body", body_m(&e.body, t)));
    map(f, t)
}

fn request_m(r: &IngestRequest, t: Twist) -> M {
    let b = &r.batch;
    let mut sdk = vec![
        ("name", M::Str(b.sdk.name.clone())),
        ("version", M::Str(b.sdk.version.clone())),
    ];
    let platform = (!b.sdk.platform.is_empty()).then(|| M::Str(b.sdk.platform.clone()));
    opt(&mut sdk, "platform", platform, t);
    opt(
        &mut sdk,
        "app_version",
        b.sdk.app_version.clone().map(M::Str),
        t,
    );
    let h = &b.health;
    let health = vec![
        ("dropped_overflow", M::U(h.dropped_overflow)),
        ("dropped_invalid", M::U(h.dropped_invalid)),
        ("dropped_rejected", M::U(h.dropped_rejected)),
        ("retries", M::U(h.retries)),
        ("store_resets", M::U(h.store_resets)),
        ("queue_events", M::U(h.queue_events)),
        ("queue_bytes", M::U(h.queue_bytes)),
        ("dropped_corrupt", M::U(h.dropped_corrupt)),
        ("dropped_disk_full", M::U(h.dropped_disk_full)),
        ("reset_unknown", M::U(h.reset_unknown)),
    ];
    let mut batch = vec![
        ("batch_id", M::Bin(b.batch_id.as_uuid().as_bytes().to_vec())),
        ("app_id", M::Str(b.app_id.as_str().into())),
        (
            "device_id",
            M::Bin(b.device_id.as_uuid().as_bytes().to_vec()),
        ),
        ("sdk", map(sdk, t)),
        ("sent_at_ms", M::I(b.sent_at_ms)),
        (
            "events",
            M::Arr(b.events.iter().map(|e| event_m(e, t)).collect()),
        ),
    ];
    let attempt = (b.attempt != 0).then(|| M::U(u64::from(b.attempt)));
    opt(&mut batch, "attempt", attempt, t);
    let health = (b.health != SdkHealth::default()).then(|| map(health, t));
    opt(&mut batch, "health", health, t);
    let anonymous_id = b
        .anonymous_id
        .map(|a| M::Bin(a.as_uuid().as_bytes().to_vec()));
    opt(&mut batch, "anonymous_id", anonymous_id, t);
    let context = b.context.as_ref().map(|c| {
        let mut f = Vec::new();
        let strings = [
            ("app_version", &c.app_version),
            ("app_build", &c.app_build),
            ("os_name", &c.os_name),
            ("os_version", &c.os_version),
            ("device_model", &c.device_model),
            ("locale", &c.locale),
            ("time_zone", &c.time_zone),
            ("sdk_version", &c.sdk_version),
        ];
        for (k, v) in strings {
            opt(&mut f, k, v.clone().map(M::Str), t);
        }
        let network = c.network.as_ref().map(|n| M::Str(n.as_str().into()));
        opt(&mut f, "network", network, t);
        opt(
            &mut f,
            "screen_width",
            c.screen_width.map(|w| M::U(w.into())),
            t,
        );
        opt(
            &mut f,
            "screen_height",
            c.screen_height.map(|h| M::U(h.into())),
            t,
        );
        // The text form (§4) on rotated encodings, `bin` otherwise.
        let install = c.install_id.map(|i| {
            if t.rotate % 2 == 1 {
                M::Str(i.to_string())
            } else {
                M::Bin(i.as_uuid().as_bytes().to_vec())
            }
        });
        opt(&mut f, "install_id", install, t);
        map(f, t)
    });
    opt(&mut batch, "context", context, t);
    let auth = vec![
        ("app_id", M::Str(r.auth.app_id.as_str().into())),
        ("key", M::Str(r.auth.key.clone())),
    ];
    map(vec![("auth", map(auth, t)), ("batch", map(batch, t))], t)
}

fn twist() -> impl Strategy<Value = Twist> {
    (
        0usize..9,
        any::<bool>(),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        any::<bool>(),
    )
        .prop_map(|(rotate, unknown_fields, pd, tnf, nil, extras)| Twist {
            rotate,
            unknown_fields,
            props_descending: pd,
            tag_not_first: tnf,
            nil_optionals: nil,
            session_start_extras: extras,
        })
}

/// Applies byte-level damage: overwrite, insert, delete, truncate.
pub(crate) fn mutate(mut p: Vec<u8>, muts: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, op, byte) in muts {
        if p.is_empty() {
            break;
        }
        let i = at % p.len();
        match op % 4 {
            0 => p[i] = byte,
            1 => p.insert(i, byte),
            2 => {
                p.remove(i);
            }
            _ => p.truncate(i),
        }
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Canonical encodings: the fast path reads every one, and agrees.
    #[test]
    fn agrees_with_the_owned_path_on_canonical_requests(
        req in prop_oneof![wild_request(), (auth(), batch()).prop_map(|(auth, batch)| IngestRequest { auth, batch })],
        limits in limits(),
    ) {
        let payload = encode_payload(&req).unwrap();
        prop_assert!(agree(&payload, &limits)?, "canonical payload not read by the fast path");
        // Canonical bytes: the sizes as received are the encoded sizes, so the SDK's
        // check on the values gives the same verdict.
        let view = IngestView::parse(&payload, &limits).unwrap();
        prop_assert_eq!(
            view.batch.validation().map_err(Clone::clone),
            validate_batch(&req.batch, &limits)
        );
    }

    /// Other encodings of the same request: read and agreeing, or left to the owned
    /// path — and always read when only field order, unknown fields, integer and
    /// string widths and float width differ.
    #[test]
    fn agrees_on_other_encodings(
        req in wild_request(),
        t in twist(),
        wide in any::<bool>(),
        f32 in any::<bool>(),
        limits in limits(),
    ) {
        let mut payload = Vec::new();
        request_m(&req, t).write(Style { wide, f32 }, &mut payload);
        prop_assert!(decode_payload::<IngestRequest>(&payload).is_ok());
        let read = agree(&payload, &limits)?;
        if !(t.props_descending || t.tag_not_first) {
            prop_assert!(read, "a plain variation (nil for absent fields included) was not read by the fast path");
        }
    }

    /// Damaged payloads: whatever the fast path reads, the owned path reads the same.
    #[test]
    fn agrees_on_mutated_payloads(
        req in wild_request(),
        t in twist(),
        wide in any::<bool>(),
        muts in vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
        limits in limits(),
    ) {
        let mut payload = Vec::new();
        request_m(&req, t).write(Style { wide, f32: false }, &mut payload);
        let damaged = mutate(payload, &muts);
        agree(&damaged, &limits)?;
    }

    /// Arbitrary bytes: never a panic, and never read when the owned decoder refuses.
    #[test]
    fn arbitrary_bytes(bytes in vec(any::<u8>(), 0..256)) {
        agree(&bytes, &Limits::default())?;
    }

    /// `decode_single_frame_ref` is `decode_single_frame` without the copy.
    #[test]
    fn borrowed_frames_match_owned_frames(
        bytes in vec(any::<u8>(), 0..64),
        header in (any::<bool>(), 0u8..3, any::<u8>()),
    ) {
        let mut wire = bytes.clone();
        if header.0 {
            let mut h = ((bytes.len() + 2) as u32).to_be_bytes().to_vec();
            h.push(header.2);
            h.push(header.1);
            h.extend_from_slice(&bytes);
            wire = h;
        }
        let max = 1024;
        let owned = decode_single_frame(&wire, max);
        let borrowed = decode_single_frame_ref(&wire, max);
        match (owned, borrowed) {
            (Ok(o), Ok(b)) => {
                prop_assert_eq!((o.kind, o.flags, &o.body[..]), (b.kind, b.flags, b.body));
                prop_assert_eq!(o.payload(max).map(|p| p.into_owned()), b.payload(max).map(|p| p.into_owned()));
            }
            (Err(o), Err(b)) => prop_assert_eq!(o, b),
            (o, b) => return Err(TestCaseError::fail(format!("{o:?} vs {b:?}"))),
        }
    }
}

#[test]
fn reads_the_checked_in_vectors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    for (name, must_read) in [
        ("ingest_request_v1.hex", true),
        ("ingest_request_lz4_v1.hex", true),
        ("ingest_request_future.hex", true),
        ("ingest_request_older.hex", true),
    ] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        let wire: Vec<u8> = digits
            .chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect();
        let cfg = CodecConfig::device();
        let frame = decode_single_frame_ref(&wire, cfg.max_payload).unwrap();
        let payload = frame.payload(cfg.max_payload).unwrap();
        let read = agree(&payload, &Limits::default()).unwrap();
        assert_eq!(read, must_read, "{name}");
    }
}
