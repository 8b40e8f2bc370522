//! Weighted rendezvous (highest random weight, HRW) routing of a user to relays.
//!
//! For a key `k = (app_id, user)` every active node `n` gets the score
//!
//! ```text
//! h     = xxh3_64( n.id ‖ 0x00 ‖ app_id ‖ 0x00 ‖ user )      (seed 0)
//! u     = ((h >> 11) + 0.5) / 2^53                          (uniform in (0, 1))
//! score = n.weight / -ln(u)
//! ```
//!
//! and nodes are ranked by descending score (ties by ascending node id). The first
//! node owns the key; the rest of the ranking is the failover order. A node of weight
//! `w` owns a share `w / Σw` of keys, and adding or removing a node moves only the keys
//! it gains or owned.

use std::borrow::Cow;

use xxhash_rust::xxh3::Xxh3;

use crate::event::EventBatch;
use crate::ids::{AppId, DeviceId};
use crate::shard::{NodeState, RelayNode, ShardMap};

/// The `user` part of a routing key (docs/protocol.md §8) — also the unit of rollout
/// bucketing (§9): the user id when there is one, else the device id in canonical
/// lower-case hyphenated form (`6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5`), however the
/// device id was sent. A batch is routed by its first event's user.
pub fn routing_key<'a>(user_id: Option<&'a str>, device_id: &DeviceId) -> Cow<'a, str> {
    match user_id {
        Some(user) => Cow::Borrowed(user),
        None => Cow::Owned(device_id.as_uuid().hyphenated().to_string()),
    }
}

/// The HRW score of `node` for the key `(app_id, user)`.
pub fn score(node: &RelayNode, app_id: &str, user: &str) -> f64 {
    let mut hasher = Xxh3::new();
    hasher.update(node.id.as_str().as_bytes());
    hasher.update(&[0]);
    hasher.update(app_id.as_bytes());
    hasher.update(&[0]);
    hasher.update(user.as_bytes());
    let h = hasher.digest();
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(node.weight) / -u.ln()
}

/// All active nodes of `map` ranked for `(app_id, user)`: the owner first, then the
/// failover order. Draining nodes and nodes of weight 0 are left out. Empty if no node
/// is active.
pub fn rank<'m>(map: &'m ShardMap, app_id: &AppId, user: &str) -> Vec<&'m RelayNode> {
    let mut scored: Vec<(f64, &RelayNode)> = map
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Active && n.weight > 0)
        .map(|n| (score(n, app_id.as_str(), user), n))
        .collect();
    scored.sort_by(|(sa, na), (sb, nb)| sb.total_cmp(sa).then_with(|| na.id.cmp(&nb.id)));
    scored.into_iter().map(|(_, n)| n).collect()
}

/// The owner of `(app_id, user)`: the first node of [`rank`].
pub fn owner<'m>(map: &'m ShardMap, app_id: &AppId, user: &str) -> Option<&'m RelayNode> {
    map.nodes
        .iter()
        .filter(|n| n.state == NodeState::Active && n.weight > 0)
        .map(|n| (score(n, app_id.as_str(), user), n))
        .max_by(|(sa, na), (sb, nb)| sa.total_cmp(sb).then_with(|| nb.id.cmp(&na.id)))
        .map(|(_, n)| n)
}

impl EventBatch {
    /// The routing key of this batch's device for anonymous events: the device id in
    /// canonical hyphenated form ([`routing_key`]).
    pub fn device_routing_key(&self) -> String {
        routing_key(None, &self.device_id).into_owned()
    }

    /// The routing key of the batch ([`routing_key`]): the user id of
    /// its first event, or the device id when that event is anonymous. SDKs form
    /// batches that hold one user's events, so this is the user the batch belongs to.
    pub fn routing_key(&self) -> String {
        let user = self.events.first().and_then(|e| e.user_id.as_ref());
        routing_key(user.map(|u| u.as_str()), &self.device_id).into_owned()
    }
}
