//! HRW routing balance, weights and minimal movement; rollout bucketing.

use std::collections::HashMap;

use proptest::prelude::*;
use tern_protocol::rollout::{bucket, evaluate_flag, in_rollout, variant_draw, FlagDecision};
use tern_protocol::routing::{owner, rank, routing_key};
use tern_protocol::*;

fn node(id: &str, weight: u32) -> RelayNode {
    RelayNode {
        id: RelayId::new(id),
        quic_addr: format!("{id}.example:4433"),
        https_url: format!("https://{id}.example"),
        weight,
        state: NodeState::Active,
    }
}

fn map(nodes: Vec<RelayNode>) -> ShardMap {
    ShardMap { version: 1, nodes }
}

const USERS: usize = 100_000;

fn counts(m: &ShardMap) -> HashMap<String, usize> {
    let app = AppId::new("app-1");
    let mut c = HashMap::new();
    for u in 0..USERS {
        let owner = owner(m, &app, &format!("user-{u}")).unwrap();
        *c.entry(owner.id.to_string()).or_default() += 1;
    }
    c
}

#[test]
fn five_equal_nodes_balance_within_5_percent() {
    let m = map((1..=5).map(|i| node(&format!("relay-{i}"), 1)).collect());
    let c = counts(&m);
    let expected = USERS as f64 / 5.0;
    for (id, n) in &c {
        let dev = (*n as f64 - expected).abs() / expected;
        assert!(
            dev <= 0.05,
            "{id} owns {n} users, {:.2}% off the mean",
            dev * 100.0
        );
    }
    assert_eq!(c.len(), 5);
}

#[test]
fn weights_are_respected() {
    let m = map(vec![node("a", 1), node("b", 2), node("c", 3), node("d", 4)]);
    let c = counts(&m);
    for (id, w) in [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)] {
        let expected = USERS as f64 * w / 10.0;
        let dev = (c[id] as f64 - expected).abs() / expected;
        assert!(
            dev <= 0.05,
            "{id} (weight {w}) owns {} users, expected ~{expected}",
            c[id]
        );
    }
}

#[test]
fn removing_a_node_moves_only_its_users() {
    let app = AppId::new("app-1");
    let full = map((1..=5).map(|i| node(&format!("relay-{i}"), 1)).collect());
    let mut less = full.clone();
    less.nodes.retain(|n| n.id.as_str() != "relay-3");
    let mut moved = 0;
    for u in 0..USERS {
        let user = format!("user-{u}");
        let before = owner(&full, &app, &user).unwrap();
        let after = owner(&less, &app, &user).unwrap();
        if before.id.as_str() == "relay-3" {
            moved += 1;
            // The new owner is the old second choice: the ranking is the failover order.
            assert_eq!(after.id, rank(&full, &app, &user)[1].id);
        } else {
            assert_eq!(before.id, after.id, "{user} moved although its node stayed");
        }
    }
    assert!(moved > 0);
}

#[test]
fn adding_a_node_moves_users_only_to_it() {
    let app = AppId::new("app-1");
    let before_map = map((1..=4).map(|i| node(&format!("relay-{i}"), 1)).collect());
    let mut after_map = before_map.clone();
    after_map.nodes.push(node("relay-5", 1));
    for u in 0..20_000 {
        let user = format!("user-{u}");
        let before = owner(&before_map, &app, &user).unwrap();
        let after = owner(&after_map, &app, &user).unwrap();
        assert!(after.id == before.id || after.id.as_str() == "relay-5");
    }
}

#[test]
fn draining_and_zero_weight_nodes_get_no_users() {
    let app = AppId::new("a");
    let mut m = map(vec![node("a", 1), node("b", 1), node("c", 0)]);
    m.nodes[1].state = NodeState::Draining;
    for u in 0..1000 {
        let r = rank(&m, &app, &u.to_string());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].id.as_str(), "a");
    }
    m.nodes[0].state = NodeState::Draining;
    assert!(owner(&m, &app, "x").is_none());
    assert!(rank(&m, &app, "x").is_empty());
}

#[test]
fn routing_is_pinned_across_versions() {
    // Fixed expectations: a change to the hash or the score formula would silently
    // re-shard every user, so it must show up here.
    let m = map((1..=5).map(|i| node(&format!("relay-{i}"), 1)).collect());
    let app = AppId::new("demo");
    let got: Vec<String> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|u| owner(&m, &app, u).unwrap().id.to_string())
        .collect();
    let pinned = include_str!("../vectors/hrw_owners.txt").trim();
    assert_eq!(got.join(","), pinned);
}

proptest! {
    #[test]
    fn rank_is_a_permutation_led_by_the_owner(
        weights in proptest::collection::vec(1u32..10, 1..8),
        user in ".{0,20}",
    ) {
        let m = map(weights.iter().enumerate().map(|(i, w)| node(&format!("n{i}"), *w)).collect());
        let app = AppId::new("app");
        let r = rank(&m, &app, &user);
        prop_assert_eq!(r.len(), weights.len());
        prop_assert_eq!(&r[0].id, &owner(&m, &app, &user).unwrap().id);
        let mut ids: Vec<_> = r.iter().map(|n| n.id.to_string()).collect();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), weights.len());
    }
}

fn flag(rollout_bp: u32, variants: &[(&str, u32)]) -> FeatureFlag {
    FeatureFlag {
        key: "checkout".into(),
        enabled: true,
        rollout_bp,
        variants: variants
            .iter()
            .map(|(k, w)| Variant {
                key: (*k).into(),
                weight: *w,
                value: None,
            })
            .collect(),
        salt: None,
    }
}

#[test]
fn rollout_share_matches_percentage() {
    for bp in [1_000u32, 2_500, 5_000, 9_000] {
        let on = (0..USERS)
            .filter(|u| in_rollout("app", "flag", &format!("u{u}"), bp))
            .count();
        let expected = USERS as f64 * f64::from(bp) / 10_000.0;
        let dev = (on as f64 - expected).abs() / expected;
        assert!(dev <= 0.05, "bp={bp}: {on} users on, expected ~{expected}");
    }
    assert!((0..1000).all(|u| !in_rollout("a", "f", &u.to_string(), 0)));
    assert!((0..1000).all(|u| in_rollout("a", "f", &u.to_string(), 10_000)));
}

#[test]
fn growing_a_rollout_only_adds_users_and_keeps_variants() {
    let small = flag(2_000, &[("red", 1), ("blue", 1)]);
    let big = flag(6_000, &[("red", 1), ("blue", 1)]);
    for u in 0..20_000 {
        let unit = format!("u{u}");
        let a = evaluate_flag(&small, "app", &unit);
        let b = evaluate_flag(&big, "app", &unit);
        if a.is_on() {
            assert_eq!(a, b, "{unit} changed variant when the rollout grew");
        }
    }
}

#[test]
fn variant_weights_are_respected() {
    let f = flag(10_000, &[("a", 1), ("b", 3), ("off", 0)]);
    let mut c: HashMap<String, usize> = HashMap::new();
    for u in 0..USERS {
        match evaluate_flag(&f, "app", &format!("u{u}")) {
            FlagDecision::Variant { key, .. } => *c.entry(key).or_default() += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!c.contains_key("off"));
    let share_b = c["b"] as f64 / USERS as f64;
    assert!((share_b - 0.75).abs() < 0.0375, "b share {share_b}");
}

#[test]
fn disabled_and_degenerate_flags_are_off() {
    let mut f = flag(10_000, &[]);
    assert_eq!(evaluate_flag(&f, "a", "u"), FlagDecision::On);
    f.enabled = false;
    assert_eq!(evaluate_flag(&f, "a", "u"), FlagDecision::Off);
    let zero = flag(10_000, &[("x", 0)]);
    assert_eq!(evaluate_flag(&zero, "a", "u"), FlagDecision::Off);
}

/// Every rule of §9 gives its reason, and the decision is `evaluate_flag`'s; an
/// exposure names the decision `off`, `on` or the variant's key.
#[test]
fn each_rule_of_flag_evaluation_names_its_reason() {
    use tern_protocol::rollout::{evaluate_flag_with_reason, FlagReason};
    let check = |f: &FeatureFlag, unit: &str, reason: FlagReason, name: &str| {
        let (decision, got) = evaluate_flag_with_reason(f, "demo", unit);
        assert_eq!(decision, evaluate_flag(f, "demo", unit));
        assert_eq!((got, decision.variant_name()), (reason, name), "{unit}");
    };
    let mut on = flag(10_000, &[]);
    check(&on, "u", FlagReason::InRollout, "on");
    on.enabled = false;
    check(&on, "u", FlagReason::Disabled, "off");
    check(&flag(0, &[]), "u", FlagReason::OutsideRollout, "off");
    check(
        &flag(10_000, &[("x", 0)]),
        "u",
        FlagReason::NoWeights,
        "off",
    );
    check(
        &flag(10_000, &[("only", 1)]),
        "u",
        FlagReason::Variant,
        "only",
    );
    // A variant may be called `off`: the reason tells it from a decision.
    check(
        &flag(10_000, &[("off", 1)]),
        "u",
        FlagReason::Variant,
        "off",
    );
}

#[test]
fn bucketing_is_pinned_across_versions() {
    let got: Vec<String> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|u| bucket("demo", "new_checkout", u).to_string())
        .collect();
    let pinned = include_str!("../vectors/rollout_buckets.txt").trim();
    assert_eq!(got.join(","), pinned);
}

/// Compares `text` with the checked-in vector `name` (rewritten under
/// `UPDATE_VECTORS=1`).
fn pinned_text(name: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let stored = std::fs::read_to_string(&path).unwrap();
    assert_eq!(stored, text, "{name}: the pinned example changed");
}

/// docs/protocol.md §8, weighted nodes: the whole ranking of each user over nodes of
/// weights 1, 2 and 4, next to a draining node and a node of weight 0 (both unranked).
#[test]
fn weighted_routing_is_pinned() {
    let mut nodes = vec![node("relay-a", 1), node("relay-b", 2), node("relay-c", 4)];
    nodes.push(RelayNode {
        state: NodeState::Draining,
        ..node("relay-d", 8)
    });
    nodes.push(node("relay-e", 0));
    let m = map(nodes);
    let app = AppId::new("demo");
    let mut text = String::from(
        "# docs/protocol.md §8: app demo; nodes relay-a (weight 1), relay-b (2), relay-c (4),\n\
         # relay-d (8, draining) and relay-e (0) -- the last two are never ranked.\n\
         # user: ranking, owner first\n",
    );
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let ranking: Vec<String> = rank(&m, &app, user)
            .iter()
            .map(|n| n.id.to_string())
            .collect();
        text.push_str(&format!("{user}: {}\n", ranking.join(" ")));
    }
    // One score written out, for implementers checking their arithmetic.
    let a = &m.nodes[0];
    let h = xxhash_rust::xxh3::xxh3_64(b"relay-a\0demo\0alice");
    text.push_str(&format!(
        "# XXH3_64(\"relay-a\" 00 \"demo\" 00 \"alice\") = {h:#018x}; score(relay-a, alice) = {:.17e}\n",
        routing::score(a, "demo", "alice")
    ));
    pinned_text("hrw_weighted.txt", &text);
}

/// docs/protocol.md §8, anonymous events: the key is the device id in lower-case
/// hyphenated form, however the device id was sent (here: upper-case text).
#[test]
fn anonymous_routing_is_pinned() {
    let m = map((1..=5).map(|i| node(&format!("relay-{i}"), 1)).collect());
    let app = AppId::new("demo");
    let mut text = String::from(
        "# docs/protocol.md §8: app demo; nodes relay-1..relay-5 (weight 1); batches whose\n\
         # first event has no user_id are routed by the device id, lower-case hyphenated.\n\
         # device_id: owner\n",
    );
    for id in [
        "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5",
        "0192f3a0-7b1c-7cde-8f00-0123456789ab",
        "ffffffff-ffff-4fff-bfff-ffffffffffff",
    ] {
        let device: DeviceId = id.parse().unwrap();
        // Sent as upper-case text in an otherwise minimal request.
        let payload = anonymous_request(&id.to_uppercase());
        let req: IngestRequest = decode_payload(&payload).unwrap();
        assert_eq!(req.batch.device_id, device);
        assert_eq!(req.batch.routing_key(), id);
        let view = IngestView::parse(&payload, &Limits::default()).unwrap();
        assert_eq!(view.batch.routing_key(), id);
        assert_eq!(routing_key(None, &device), id);
        let owner = owner(&m, &app, &req.batch.routing_key()).unwrap();
        text.push_str(&format!("{id}: {}\n", owner.id));
    }
    pinned_text("hrw_anonymous.txt", &text);
}

/// An `IngestRequest` payload of one anonymous event from device `device_text`.
fn anonymous_request(device_text: &str) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, t: &str) {
        out.push(0xa0 | t.len() as u8);
        out.extend_from_slice(t.as_bytes());
    }
    let mut p = vec![0x82];
    s(&mut p, "auth");
    p.push(0x82);
    s(&mut p, "app_id");
    s(&mut p, "demo");
    s(&mut p, "key");
    s(&mut p, "k");
    s(&mut p, "batch");
    p.push(0x86);
    s(&mut p, "batch_id");
    p.extend_from_slice(&[0xc4, 16]);
    p.extend_from_slice(&[7; 16]);
    s(&mut p, "app_id");
    s(&mut p, "demo");
    s(&mut p, "device_id");
    p.push(0xd9);
    p.push(device_text.len() as u8);
    p.extend_from_slice(device_text.as_bytes());
    s(&mut p, "sdk");
    p.push(0x82);
    s(&mut p, "name");
    s(&mut p, "x");
    s(&mut p, "version");
    s(&mut p, "1");
    s(&mut p, "sent_at_ms");
    p.push(0);
    s(&mut p, "events");
    p.push(0x91);
    p.push(0x83);
    s(&mut p, "seq");
    p.push(1);
    s(&mut p, "ts_ms");
    p.push(0);
    s(&mut p, "body");
    p.push(0x81);
    s(&mut p, "type");
    s(&mut p, "session_start");
    p
}

/// docs/protocol.md §9, a multivariate flag: bucket, variant draw and decision per
/// unit (users, and an anonymous device id).
#[test]
fn flag_variants_are_pinned() {
    let f = FeatureFlag {
        key: "checkout_color".into(),
        enabled: true,
        rollout_bp: 8_000,
        variants: [("control", 1), ("blue", 1), ("green", 2)]
            .iter()
            .map(|(k, w)| Variant {
                key: (*k).into(),
                weight: *w,
                value: Some(Value::from(*k)),
            })
            .collect(),
        salt: None,
    };
    let mut text = String::from(
        "# docs/protocol.md §9: app demo; flag checkout_color (no salt: the key is the salt),\n\
         # enabled, rollout_bp 8000, variants control (weight 1), blue (1), green (2).\n\
         # unit: bucket, draw (mod 4), decision\n",
    );
    for unit in [
        "alice",
        "bob",
        "carol",
        "dave",
        "erin",
        "frank",
        "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5",
    ] {
        let b = bucket("demo", "checkout_color", unit);
        let d = variant_draw("demo", "checkout_color", unit, 4);
        let decision = match evaluate_flag(&f, "demo", unit) {
            FlagDecision::Off => "off".to_owned(),
            FlagDecision::On => "on".to_owned(),
            FlagDecision::Variant { key, .. } => key,
        };
        // The decision follows from bucket and draw as §9 says.
        let expect = if b >= 8_000 {
            "off"
        } else {
            ["control", "blue", "green", "green"][d as usize]
        };
        assert_eq!(decision, expect, "{unit}");
        text.push_str(&format!("{unit}: {b}, {d}, {decision}\n"));
    }
    pinned_text("flag_variants.txt", &text);
}
