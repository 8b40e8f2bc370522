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

/// The largest shard-map version a relay serves and a device adopts: 2^53 − 1, the
/// largest integer a JSON number holds exactly (protocol §5.5). A map above it is
/// refused, so no map can take a version that no later map could exceed.
pub const MAX_SHARD_MAP_VERSION: u64 = (1 << 53) - 1;

/// The most nodes a shard map may list.
pub const MAX_SHARD_MAP_NODES: usize = 1024;

/// The largest node weight (relative capacity; the smallest is 1).
pub const MAX_NODE_WEIGHT: u32 = 10_000;

/// The longest `quic_addr` or `https_url`, bytes.
pub const MAX_NODE_ADDRESS_LEN: usize = 512;

/// Why a shard map is not valid (protocol §5.5). The message names the node (by id,
/// or by position when its id is the fault) and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardMapError {
    /// `version` is above [`MAX_SHARD_MAP_VERSION`].
    #[error("version: {0} is above the largest allowed ({MAX_SHARD_MAP_VERSION})")]
    VersionTooLarge(u64),
    /// `version` is 0, which means "no map" (refused in operator input only).
    #[error("version: must be at least 1 (0 means no map)")]
    VersionZero,
    /// `nodes` is empty.
    #[error("nodes: the map lists no relay")]
    NoNodes,
    /// `nodes` has more than [`MAX_SHARD_MAP_NODES`] entries.
    #[error("nodes: {0} relays, more than the {MAX_SHARD_MAP_NODES} allowed")]
    TooManyNodes(usize),
    /// A node's id is empty, too long or has control characters.
    #[error("nodes[{index}].id: {reason}")]
    InvalidId {
        /// The node's position in `nodes`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Two nodes share an id.
    #[error("nodes[{index}].id: {id:?} is also the id of nodes[{first}]")]
    DuplicateId {
        /// The id.
        id: String,
        /// The first node with it.
        first: usize,
        /// The repeated one.
        index: usize,
    },
    /// A node's `quic_addr` is not `host:port`.
    #[error("node {id:?}: quic_addr {addr:?}: {reason}")]
    InvalidQuicAddr {
        /// The node.
        id: String,
        /// The address as given.
        addr: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A node's `https_url` is not `https://host[:port][/path]`.
    #[error("node {id:?}: https_url {url:?}: {reason}")]
    InvalidHttpsUrl {
        /// The node.
        id: String,
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A node's weight is 0 or above [`MAX_NODE_WEIGHT`].
    #[error("node {id:?}: weight {weight} is not in 1..={MAX_NODE_WEIGHT}")]
    InvalidWeight {
        /// The node.
        id: String,
        /// The weight given.
        weight: u32,
    },
    /// A node's state is not one this version knows (refused in operator input only:
    /// a typo; devices treat it as not active).
    #[error("node {id:?}: state {state:?} is not active or draining")]
    UnknownState {
        /// The node.
        id: String,
        /// The state given.
        state: String,
    },
    /// No node is active: devices would have nowhere to send.
    #[error("nodes: no relay is active (devices would have nowhere to send)")]
    NoActiveNode,
}

impl ShardMapError {
    /// A short stable name of the fault, for metric labels: `version`, `nodes`, `id`,
    /// `duplicate_id`, `quic_addr`, `https_url`, `weight`, `state`, `no_active_node`.
    pub fn kind(&self) -> &'static str {
        match self {
            ShardMapError::VersionTooLarge(_) | ShardMapError::VersionZero => "version",
            ShardMapError::NoNodes | ShardMapError::TooManyNodes(_) => "nodes",
            ShardMapError::InvalidId { .. } => "id",
            ShardMapError::DuplicateId { .. } => "duplicate_id",
            ShardMapError::InvalidQuicAddr { .. } => "quic_addr",
            ShardMapError::InvalidHttpsUrl { .. } => "https_url",
            ShardMapError::InvalidWeight { .. } => "weight",
            ShardMapError::UnknownState { .. } => "state",
            ShardMapError::NoActiveNode => "no_active_node",
        }
    }
}

impl ShardMap {
    /// The rule every map a relay serves and a device adopts meets (protocol §5.5):
    /// version at most [`MAX_SHARD_MAP_VERSION`]; 1 to [`MAX_SHARD_MAP_NODES`] nodes;
    /// ids valid (`limits::validate_id`) and unique; every `quic_addr` a `host:port` and
    /// every `https_url` an `https://host[:port][/path]` URL (host: an IPv4 address, a
    /// bracketed IPv6 address or a DNS name; port 1–65535); weights in
    /// 1..=[`MAX_NODE_WEIGHT`]; at least one node `active`. A state this version does
    /// not know is allowed here (it means "not active").
    ///
    /// A map that passes routes every key to some node ([`crate::routing::owner`]).
    pub fn validate(&self) -> Result<(), ShardMapError> {
        if self.version > MAX_SHARD_MAP_VERSION {
            return Err(ShardMapError::VersionTooLarge(self.version));
        }
        if self.nodes.is_empty() {
            return Err(ShardMapError::NoNodes);
        }
        if self.nodes.len() > MAX_SHARD_MAP_NODES {
            return Err(ShardMapError::TooManyNodes(self.nodes.len()));
        }
        let mut seen: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::with_capacity(self.nodes.len());
        for (index, node) in self.nodes.iter().enumerate() {
            let id = node.id.as_str();
            crate::limits::validate_id("id", id, &crate::Limits::default()).map_err(|e| {
                ShardMapError::InvalidId {
                    index,
                    reason: e.to_string(),
                }
            })?;
            if let Some(&first) = seen.get(id) {
                return Err(ShardMapError::DuplicateId {
                    id: id.to_owned(),
                    first,
                    index,
                });
            }
            seen.insert(id, index);
            check_quic_addr(&node.quic_addr).map_err(|reason| ShardMapError::InvalidQuicAddr {
                id: id.to_owned(),
                addr: node.quic_addr.clone(),
                reason,
            })?;
            check_https_url(&node.https_url).map_err(|reason| ShardMapError::InvalidHttpsUrl {
                id: id.to_owned(),
                url: node.https_url.clone(),
                reason,
            })?;
            if !(1..=MAX_NODE_WEIGHT).contains(&node.weight) {
                return Err(ShardMapError::InvalidWeight {
                    id: id.to_owned(),
                    weight: node.weight,
                });
            }
        }
        if !self.nodes.iter().any(|n| n.state == NodeState::Active) {
            return Err(ShardMapError::NoActiveNode);
        }
        Ok(())
    }

    /// [`ShardMap::validate`] plus what only operator input must meet (a relay's
    /// shard-map file, protocol §5.5.1): version at least 1, and every state one this
    /// version knows (`active` or `draining`; anything else is a typo).
    pub fn validate_strict(&self) -> Result<(), ShardMapError> {
        if self.version == 0 {
            return Err(ShardMapError::VersionZero);
        }
        for node in &self.nodes {
            if let NodeState::Other(state) = &node.state {
                return Err(ShardMapError::UnknownState {
                    id: node.id.as_str().to_owned(),
                    state: state.clone(),
                });
            }
        }
        self.validate()
    }

    /// The nodes a device may send to: `active` ones (weights are at least 1 in a
    /// valid map).
    pub fn active_nodes(&self) -> impl Iterator<Item = &RelayNode> {
        self.nodes
            .iter()
            .filter(|n| n.state == NodeState::Active && n.weight > 0)
    }
}

/// Checks `host:port` (protocol §5.5).
fn check_quic_addr(addr: &str) -> Result<(), &'static str> {
    if addr.len() > MAX_NODE_ADDRESS_LEN {
        return Err("longer than 512 bytes");
    }
    let (host, port) = split_host_port(addr)?;
    check_host(host)?;
    match port {
        Some(p) => check_port(p),
        None => Err("no port (expected host:port)"),
    }
}

/// Checks `https://host[:port][/path]` (protocol §5.5).
fn check_https_url(url: &str) -> Result<(), &'static str> {
    if url.len() > MAX_NODE_ADDRESS_LEN {
        return Err("longer than 512 bytes");
    }
    let rest = url
        .strip_prefix("https://")
        .ok_or("the scheme must be https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if path
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '?' || c == '#')
    {
        return Err("the path has a space, a control character, a query or a fragment");
    }
    if authority.contains('@') {
        return Err("user information is not allowed");
    }
    let (host, port) = split_host_port(authority)?;
    check_host(host)?;
    match port {
        Some(p) => check_port(p),
        None => Ok(()),
    }
}

/// Splits `host[:port]`, where an IPv6 host is in brackets. The host keeps its
/// brackets.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), &'static str> {
    if s.starts_with('[') {
        let end = s.find(']').ok_or("an IPv6 host needs its closing ]")?;
        let (host, rest) = s.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err("text after the IPv6 host is not :port"),
            },
        };
    }
    match s.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Err("an IPv6 host must be in brackets"),
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
    }
}

fn check_port(port: &str) -> Result<(), &'static str> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port is not a number");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("the port is not in 1-65535"),
        Ok(_) => Ok(()),
    }
}

/// An IPv4 address, a bracketed IPv6 address, or a DNS name (labels of letters,
/// digits, `-` and `_`, 1–63 bytes, not starting or ending with `-`; 253 bytes at
/// most; an optional final dot).
fn check_host(host: &str) -> Result<(), &'static str> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or("an IPv6 host needs its closing ]")?;
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| "not an IPv6 address");
    }
    if host.is_empty() {
        return Err("no host");
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err("the host name is empty or longer than 253 bytes");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err("the host is not an IP address or a valid DNS name");
        }
    }
    // All-numeric names that are not IPv4 addresses ("1.2.3", "300.1.1.1").
    if name
        .split('.')
        .next_back()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the host is not an IP address or a valid DNS name");
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ids::AppId;
    use crate::routing::{owner, rank};

    fn node(id: &str) -> RelayNode {
        RelayNode {
            id: RelayId::new(id),
            quic_addr: "relay-1.example.net:4433".into(),
            https_url: "https://relay-1.example.net:8443".into(),
            weight: 1,
            state: NodeState::Active,
        }
    }

    fn map(nodes: Vec<RelayNode>) -> ShardMap {
        ShardMap { version: 2, nodes }
    }

    #[test]
    fn a_sound_map_passes_both_rules() {
        let mut m = map(vec![node("relay-1"), node("relay-2")]);
        m.nodes[1].state = NodeState::Draining;
        m.nodes[1].quic_addr = "[::1]:4433".into();
        m.nodes[1].https_url = "https://10.0.0.2:8443/tern/".into();
        assert_eq!(m.validate(), Ok(()));
        assert_eq!(m.validate_strict(), Ok(()));
        m.version = MAX_SHARD_MAP_VERSION;
        assert_eq!(m.validate(), Ok(()));
    }

    #[test]
    fn each_kind_of_bad_map_is_refused_naming_the_field() {
        let ok = || map(vec![node("relay-1"), node("relay-2")]);
        let cases: Vec<(&str, ShardMap, &str)> = vec![
            (
                "version",
                ShardMap {
                    version: u64::MAX,
                    ..ok()
                },
                "version",
            ),
            (
                "version",
                ShardMap {
                    version: MAX_SHARD_MAP_VERSION + 1,
                    ..ok()
                },
                "version",
            ),
            ("nodes", map(vec![]), "nodes"),
            (
                "nodes",
                map((0..=MAX_SHARD_MAP_NODES)
                    .map(|i| node(&format!("r{i}")))
                    .collect()),
                "nodes",
            ),
            ("id", map(vec![node("")]), "nodes[0].id"),
            (
                "id",
                map(vec![node("relay-1"), node("a\u{7}b")]),
                "nodes[1].id",
            ),
            (
                "duplicate_id",
                map(vec![node("relay-1"), node("relay-1")]),
                "nodes[1].id",
            ),
            (
                "weight",
                map(vec![RelayNode {
                    weight: 0,
                    ..node("relay-1")
                }]),
                "weight 0",
            ),
            (
                "weight",
                map(vec![RelayNode {
                    weight: MAX_NODE_WEIGHT + 1,
                    ..node("relay-1")
                }]),
                "weight",
            ),
            (
                "no_active_node",
                map(vec![RelayNode {
                    state: NodeState::Draining,
                    ..node("relay-1")
                }]),
                "no relay is active",
            ),
            (
                "no_active_node",
                map(vec![RelayNode {
                    state: NodeState::Other("actve".into()),
                    ..node("relay-1")
                }]),
                "no relay is active",
            ),
        ];
        let bad_quic = [
            "relay-1",
            "relay-1:",
            "relay-1:0",
            "relay-1:65536",
            "relay-1:44a",
            ":4433",
            "::1:4433",
            "[::1:4433",
            "[nope]:4433",
            "relay one:4433",
            "-relay:4433",
            "1.2.3:4433",
            "300.1.1.1:4433",
            "",
        ];
        let bad_https = [
            "http://relay-1:8443",
            "relay-1:8443",
            "https://",
            "https://:8443",
            "https://relay-1:0",
            "https://relay-1:x",
            "https://user@relay-1",
            "https://relay-1/a b",
            "https://relay-1/?q",
            "https://[::1",
        ];
        let mut all = cases;
        for q in bad_quic {
            let mut m = ok();
            m.nodes[1].quic_addr = q.into();
            all.push(("quic_addr", m, "node \"relay-2\": quic_addr"));
        }
        for u in bad_https {
            let mut m = ok();
            m.nodes[0].https_url = u.into();
            all.push(("https_url", m, "node \"relay-1\": https_url"));
        }
        for (kind, m, text) in all {
            let e = m.validate().expect_err(kind);
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.to_string().contains(text), "{kind}: {e}");
            let typo = m
                .nodes
                .iter()
                .any(|n| matches!(n.state, NodeState::Other(_)));
            let strict = if typo { "state" } else { kind };
            assert_eq!(m.validate_strict().err().map(|e| e.kind()), Some(strict));
        }
    }

    #[test]
    fn operator_input_also_refuses_version_zero_and_unknown_states() {
        let mut m = map(vec![node("relay-1"), node("relay-2")]);
        m.nodes[1].state = NodeState::Other("actve".into());
        assert_eq!(m.validate(), Ok(()), "devices treat it as not active");
        let e = m.validate_strict().unwrap_err();
        assert_eq!(e.kind(), "state");
        assert!(e.to_string().contains("\"actve\""), "{e}");
        let zero = ShardMap {
            version: 0,
            nodes: vec![node("relay-1")],
        };
        assert_eq!(zero.validate(), Ok(()), "a bootstrap map may be version 0");
        assert_eq!(zero.validate_strict(), Err(ShardMapError::VersionZero));
    }

    fn arb_node() -> impl Strategy<Value = RelayNode> {
        let ids = prop_oneof![
            4 => "r[0-9]",
            1 => Just(String::new()),
            1 => Just("x\ny".to_owned()),
        ];
        let quic = prop_oneof![
            4 => Just("127.0.0.1:4433".to_owned()),
            2 => "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}:[0-9]{1,5}",
            1 => Just("[::1]:4433".to_owned()),
            1 => ".{0,12}",
        ];
        let https = prop_oneof![
            4 => Just("https://127.0.0.1:8443".to_owned()),
            2 => "https://[a-z]{1,8}(:[0-9]{1,5})?(/[a-z]{0,4})?",
            1 => ".{0,16}",
        ];
        let state = prop_oneof![
            4 => Just(NodeState::Active),
            2 => Just(NodeState::Draining),
            1 => "[a-z]{1,6}".prop_map(|s| NodeState::from(s.as_str())),
        ];
        (ids, quic, https, 0u32..=12_000, state).prop_map(
            |(id, quic_addr, https_url, weight, state)| RelayNode {
                id: RelayId::new(id),
                quic_addr,
                https_url,
                weight,
                state,
            },
        )
    }

    proptest! {
        /// Whatever the map, a map the rule accepts routes every key to one of its
        /// active nodes, and its failover ranking is never empty.
        #[test]
        fn every_accepted_map_routes_every_key(
            nodes in proptest::collection::vec(arb_node(), 0..8),
            version in prop_oneof![Just(0u64), Just(1), Just(MAX_SHARD_MAP_VERSION), Just(MAX_SHARD_MAP_VERSION + 1), Just(u64::MAX), any::<u64>()],
            keys in proptest::collection::vec(("[a-z]{1,4}", ".{0,8}"), 1..16),
        ) {
            let m = ShardMap { version, nodes };
            if m.validate_strict().is_ok() {
                prop_assert!(m.validate().is_ok(), "the strict rule implies the rule");
            }
            if m.validate().is_ok() {
                prop_assert!(m.version <= MAX_SHARD_MAP_VERSION);
                for (app, user) in &keys {
                    let app = AppId::new(app.as_str());
                    let o = owner(&m, &app, user);
                    prop_assert!(o.is_some(), "{m:?} routes nothing for {user:?}");
                    let o = o.unwrap();
                    prop_assert_eq!(o.state.clone(), NodeState::Active);
                    let r = rank(&m, &app, user);
                    prop_assert_eq!(&r[0].id, &o.id);
                }
                // JSON carries the version exactly.
                let back: ShardMap = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
                prop_assert_eq!(back, m);
            }
        }
    }
}
