//! proptest strategies for every wire type.

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use tern_protocol::*;

pub fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}"
}

pub fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

pub fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::String),
        any::<i64>().prop_map(Value::Int),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
    ]
}

pub fn props() -> impl Strategy<Value = Properties> {
    btree_map(name(), value(), 0..6)
}

pub fn body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        (name(), props()).prop_map(|(name, props)| EventBody::Custom { name, props }),
        Just(EventBody::SessionStart),
        any::<u64>().prop_map(|duration_ms| EventBody::SessionEnd { duration_ms }),
        (name(), any::<i64>(), "[A-Z]{3}", any::<u32>(), props()).prop_map(
            |(product_id, amount_micros, currency, quantity, props)| EventBody::Purchase {
                product_id,
                amount_micros,
                currency,
                quantity,
                props
            }
        ),
        (props(), vec(name(), 0..3))
            .prop_map(|(set, unset)| EventBody::UserProperties { set, unset }),
        (name(), name())
            .prop_map(|(message_id, action)| EventBody::MessageImpression { message_id, action }),
        (name(), name(), any::<u64>(), option::of(flag_reason())).prop_map(
            |(flag, variant, config_version, reason)| EventBody::Exposure {
                flag,
                variant,
                config_version,
                reason,
            }
        ),
        Just(EventBody::AppInstalled),
        (option::of(name()), option::of(name())).prop_map(|(previous_version, previous_build)| {
            EventBody::AppUpdated {
                previous_version,
                previous_build,
            }
        }),
        any::<bool>().prop_map(|from_background| EventBody::AppOpened { from_background }),
    ]
}

pub fn context() -> impl Strategy<Value = AppContext> {
    (
        vec(option::of(text()), 8),
        option::of(prop_oneof![
            Just(NetworkType::Wifi),
            Just(NetworkType::Cellular),
            Just(NetworkType::None),
            name().prop_map(|s| NetworkType::from(s.as_str())),
        ]),
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
                network,
                screen_width: w,
                screen_height: h,
                install_id: install.map(InstallId::from_bytes),
            }
        })
}

pub fn flag_reason() -> impl Strategy<Value = rollout::FlagReason> {
    use rollout::FlagReason;
    prop_oneof![
        Just(FlagReason::Disabled),
        Just(FlagReason::OutsideRollout),
        Just(FlagReason::InRollout),
        Just(FlagReason::Variant),
        Just(FlagReason::NoWeights),
        name().prop_map(|s| FlagReason::from(s.as_str())),
    ]
}

pub fn event() -> impl Strategy<Value = Event> {
    (
        any::<u64>(),
        any::<i64>(),
        option::of(text()),
        option::of(any::<u64>()),
        body(),
    )
        .prop_map(|(seq, ts_ms, user, session, body)| Event {
            seq,
            ts_ms,
            user_id: user.map(UserId::new),
            session_id: session.map(SessionId),
            body,
        })
}

pub fn health() -> impl Strategy<Value = SdkHealth> {
    (any::<[u64; 11]>(), prop_oneof![Just(0u64), any::<u64>()]).prop_map(|(c, auth)| SdkHealth {
        dropped_overflow: c[0],
        dropped_invalid: c[1],
        dropped_rejected: c[2],
        retries: c[3],
        store_resets: c[4],
        queue_events: c[5],
        queue_bytes: c[6],
        dropped_corrupt: c[7],
        dropped_disk_full: c[8],
        reset_unknown: c[9],
        dropped_unavailable: c[10],
        auth_failures: auth,
    })
}

pub fn batch() -> impl Strategy<Value = EventBatch> {
    (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        name(),
        (text(), text(), text(), option::of(text())),
        any::<i64>(),
        any::<u32>(),
        vec(event(), 0..8),
        health(),
        option::of(context()),
    )
        .prop_map(
            |(bid, did, app, (n, v, p, av), sent_at_ms, attempt, events, health, context)| {
                EventBatch {
                    anonymous_id: None,
                    context,
                    batch_id: BatchId::from_bytes(bid),
                    app_id: AppId::new(app),
                    device_id: DeviceId::from_bytes(did),
                    sdk: SdkInfo {
                        name: n,
                        version: v,
                        platform: p,
                        app_version: av,
                    },
                    sent_at_ms,
                    attempt,
                    events,
                    health,
                }
            },
        )
}

pub fn auth() -> impl Strategy<Value = Auth> {
    (name(), text()).prop_map(|(a, key)| Auth {
        app_id: AppId::new(a),
        key,
    })
}

pub fn reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        Just(RejectReason::Unauthorized),
        Just(RejectReason::Malformed),
        Just(RejectReason::TooLarge),
        Just(RejectReason::Invalid),
        Just(RejectReason::Blocked),
        "[a-z_]{1,12}".prop_map(|s| RejectReason::from(s.as_str())),
    ]
}

pub fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Forwarded),
        Just(Durability::Spooled),
        "[a-z]{1,10}".prop_map(|s| Durability::from(s.as_str())),
    ]
}

pub fn outcome() -> impl Strategy<Value = IngestOutcome> {
    prop_oneof![
        durability().prop_map(|durability| IngestOutcome::Accepted { durability }),
        any::<u64>().prop_map(|after_ms| IngestOutcome::Retry { after_ms }),
        (reason(), text()).prop_map(|(reason, detail)| IngestOutcome::Rejected { reason, detail }),
    ]
}

pub fn flag() -> impl Strategy<Value = FeatureFlag> {
    (
        name(),
        any::<bool>(),
        0u32..=10_000,
        vec((name(), any::<u32>(), option::of(value())), 0..4),
        option::of(name()),
    )
        .prop_map(|(key, enabled, rollout_bp, variants, salt)| FeatureFlag {
            key,
            enabled,
            rollout_bp,
            variants: variants
                .into_iter()
                .map(|(key, weight, value)| Variant { key, weight, value })
                .collect(),
            salt,
        })
}

pub fn message() -> impl Strategy<Value = InAppMessage> {
    (
        name(),
        text(),
        text(),
        prop_oneof![
            Just(Trigger::SessionStart),
            Just(Trigger::Immediate),
            name().prop_map(|name| Trigger::Event { name })
        ],
        (vec(name(), 0..2), props(), option::of(0u32..=10_000)),
        (any::<u64>(), any::<u32>()),
        (
            option::of(any::<i64>()),
            option::of(any::<i64>()),
            any::<i32>(),
        ),
    )
        .prop_map(
            |(
                id,
                title,
                body,
                trigger,
                (platforms, user_properties, rollout_bp),
                (min_interval_s, max_impressions),
                (starts_at_ms, ends_at_ms, priority),
            )| {
                InAppMessage {
                    id,
                    title,
                    body,
                    actions: vec![MessageAction {
                        id: "ok".into(),
                        label: "OK".into(),
                        url: None,
                    }],
                    trigger,
                    targeting: Targeting {
                        platforms,
                        user_properties,
                        rollout_bp,
                    },
                    pacing: Pacing {
                        min_interval_s,
                        max_impressions,
                    },
                    starts_at_ms,
                    ends_at_ms,
                    priority,
                }
            },
        )
}

pub fn bundle() -> impl Strategy<Value = ConfigBundle> {
    (
        name(),
        any::<u64>(),
        text(),
        btree_map(name(), value(), 0..4),
        vec(flag(), 0..3),
        vec(message(), 0..2),
    )
        .prop_map(
            |(app, version, etag, values, flags, messages)| ConfigBundle {
                app_id: AppId::new(app),
                version,
                etag: ETag(etag),
                values,
                flags,
                messages,
            },
        )
}

pub fn shard_map() -> impl Strategy<Value = ShardMap> {
    (
        any::<u64>(),
        vec((name(), any::<u16>(), 0u32..100, any::<bool>()), 0..5),
    )
        .prop_map(|(version, nodes)| ShardMap {
            version,
            nodes: nodes
                .into_iter()
                .map(|(id, port, weight, active)| RelayNode {
                    quic_addr: format!("127.0.0.1:{port}"),
                    https_url: format!("https://127.0.0.1:{port}"),
                    id: RelayId::new(id),
                    weight,
                    state: if active {
                        NodeState::Active
                    } else {
                        NodeState::Draining
                    },
                })
                .collect(),
        })
}

pub fn push() -> impl Strategy<Value = PushNotice> {
    prop_oneof![
        (any::<u64>(), option::of(text())).prop_map(|(v, e)| PushNotice::Subscribed {
            shard_map_version: v,
            config_etag: e.map(ETag)
        }),
        (any::<u64>(), text()).prop_map(|(version, e)| PushNotice::ConfigChanged {
            version,
            etag: ETag(e)
        }),
        any::<u64>().prop_map(|version| PushNotice::ShardMapChanged { version }),
        any::<u64>().prop_map(|after_ms| PushNotice::Throttle { after_ms }),
        any::<u64>().prop_map(|v| PushNotice::Draining {
            shard_map_version: v
        }),
    ]
}

/// Every message kind.
pub fn message_any() -> impl Strategy<Value = Message> {
    prop_oneof![
        (auth(), batch())
            .prop_map(|(auth, batch)| Message::IngestRequest(IngestRequest { auth, batch })),
        (
            auth(),
            any::<[u8; 16]>(),
            option::of(text()),
            option::of(text())
        )
            .prop_map(|(auth, d, u, e)| Message::ConfigRequest(ConfigRequest {
                auth,
                device_id: DeviceId::from_bytes(d),
                user_id: u.map(UserId::new),
                if_none_match: e.map(ETag)
            })),
        (auth(), any::<u64>()).prop_map(|(auth, known_version)| Message::ShardMapRequest(
            ShardMapRequest {
                auth,
                known_version
            }
        )),
        (
            auth(),
            any::<[u8; 16]>(),
            option::of(text()),
            option::of(text())
        )
            .prop_map(
                |(auth, d, u, e)| Message::SubscribeRequest(SubscribeRequest {
                    auth,
                    device_id: DeviceId::from_bytes(d),
                    user_id: u.map(UserId::new),
                    config_etag: e.map(ETag)
                })
            ),
        (name(), vec(batch(), 0..3)).prop_map(|(r, batches)| Message::ForwardRequest(
            ForwardRequest {
                relay_id: RelayId::new(r),
                batches
            }
        )),
        (any::<u64>(), any::<[u8; 16]>(), outcome()).prop_map(|(v, b, outcome)| {
            Message::IngestReply(IngestReply {
                shard_map_version: v,
                batch_id: BatchId::from_bytes(b),
                outcome,
            })
        }),
        (
            any::<u64>(),
            any::<bool>(),
            prop_oneof![
                bundle().prop_map(|bundle| ConfigOutcome::Modified { bundle }),
                Just(ConfigOutcome::NotModified),
                any::<u64>().prop_map(|after_ms| ConfigOutcome::Retry { after_ms }),
                (reason(), text())
                    .prop_map(|(reason, detail)| ConfigOutcome::Rejected { reason, detail }),
            ]
        )
            .prop_map(|(v, stale, outcome)| Message::ConfigReply(ConfigReply {
                shard_map_version: v,
                stale,
                outcome
            })),
        (any::<u64>(), option::of(shard_map())).prop_map(|(v, map)| Message::ShardMapReply(
            ShardMapReply {
                shard_map_version: v,
                map
            }
        )),
        push().prop_map(Message::PushNotice),
        vec(
            (
                any::<[u8; 16]>(),
                prop_oneof![
                    Just(ForwardOutcome::Stored),
                    Just(ForwardOutcome::Duplicate),
                    (reason(), text())
                        .prop_map(|(reason, detail)| ForwardOutcome::Rejected { reason, detail }),
                ]
            ),
            0..4
        )
        .prop_map(|rs| Message::ForwardReply(ForwardReply {
            results: rs
                .into_iter()
                .map(|(b, outcome)| ForwardResult {
                    batch_id: BatchId::from_bytes(b),
                    outcome
                })
                .collect()
        })),
        (any::<u64>(), reason(), text()).prop_map(|(v, reason, detail)| Message::ErrorReply(
            ErrorReply {
                shard_map_version: v,
                reason,
                detail
            }
        )),
    ]
}
