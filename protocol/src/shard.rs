//! The shard map: which relays exist, where to reach them, and their weights.

use serde::{Deserialize, Serialize};

use crate::ids::RelayId;
use crate::value::open_enum;

open_enum! {
    /// Whether a relay takes new traffic.
    pub enum NodeState {
        /// Takes traffic.
        Active = "active",
        /// Finishing in-flight work before a restart; devices move to the next relay
        /// in their ranking.
        Draining = "draining",
    }
}

/// One relay in the shard map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayNode {
    /// Stable identifier; part of the HRW hash, so renaming a node moves its users.
    pub id: RelayId,
    /// QUIC endpoint, `host:port`.
    pub quic_addr: String,
    /// HTTPS base URL, e.g. `https://relay-1.example.net:8443`.
    pub https_url: String,
    /// Relative capacity, at least 1. A node of weight 2 owns about twice the users
    /// of a node of weight 1.
    pub weight: u32,
    /// Active or draining.
    pub state: NodeState,
}

/// The versioned list of relays. Versions only increase.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// Monotonic version.
    pub version: u64,
    /// The relays.
    pub nodes: Vec<RelayNode>,
}

crate::wire_struct!(RelayNode {
    id: req,
    quic_addr: req,
    https_url: req,
    weight: req,
    state: req,
});

crate::wire_struct!(ShardMap {
    version: req,
    nodes: req,
});
