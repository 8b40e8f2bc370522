//! The shard-map file an operator gives the relay (protocol §5.5.1): reading it
//! strictly, validating it before it is served, reloading it on change or SIGHUP, and
//! keeping what happened for the admin status.
//!
//! A file is served only if it parses with the exact schema (unknown fields refused: a
//! typo'd field name is not silently ignored), meets [`ShardMap::validate_strict`] (the
//! protocol's rule every served map meets, plus version ≥ 1 and only known states), and
//! is newer than the map served. Anything else is refused with its reason — logged at
//! `error`, counted in `tern_relay_shard_map_refused_total{reason}`, shown in
//! `GET /admin/v1/shard-map` and the status — and the map served stays. At start, a
//! file that fails stops the relay with the reason.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tern_protocol::{NodeState, RelayId, RelayNode, ShardMap, ShardMapError};

use crate::remote::push::PushHub;

/// Largest shard-map file read, bytes.
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// How often the file's modification time is checked.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Why a shard-map file was not served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardMapFileError {
    /// The file could not be read.
    #[error("shard map file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("shard map file {path}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The file is not a shard map (JSON syntax, a missing or unknown field, a wrong
    /// type; the message has the line and column).
    #[error("shard map file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// The map breaks the validity rule.
    #[error("shard map file {path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// The rule broken, naming the node and field.
        source: ShardMapError,
    },
    /// The map's version is not newer than the one served.
    #[error("shard map file {path}: version {version} is not newer than the version {served} served{}", if *.same_content { "" } else { " (the content differs: give a changed map a higher version)" })]
    NotNewer {
        /// The file.
        path: String,
        /// The file's version.
        version: u64,
        /// The version served.
        served: u64,
        /// The file holds exactly the map served.
        same_content: bool,
    },
}

impl ShardMapFileError {
    /// A short stable name of the fault, for metric labels: `read`, `too_large`,
    /// `parse`, `not_newer`, or the [`ShardMapError::kind`] of an invalid map.
    pub fn kind(&self) -> &'static str {
        match self {
            ShardMapFileError::Read { .. } => "read",
            ShardMapFileError::TooLarge { .. } => "too_large",
            ShardMapFileError::Parse { .. } => "parse",
            ShardMapFileError::Invalid { source, .. } => source.kind(),
            ShardMapFileError::NotNewer { .. } => "not_newer",
        }
    }
}

/// The file's schema, strictly.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMap {
    version: u64,
    nodes: Vec<FileNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    id: String,
    quic_addr: String,
    https_url: String,
    weight: u32,
    state: String,
}

/// Parses a shard-map file's text strictly and validates it
/// ([`ShardMap::validate_strict`]). `path` names the file in errors.
pub fn parse(text: &str, path: &str) -> Result<ShardMap, ShardMapFileError> {
    let f: FileMap = serde_json::from_str(text).map_err(|e| ShardMapFileError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let map = ShardMap {
        version: f.version,
        nodes: f
            .nodes
            .into_iter()
            .map(|n| RelayNode {
                id: RelayId::new(n.id),
                quic_addr: n.quic_addr,
                https_url: n.https_url,
                weight: n.weight,
                state: NodeState::from(n.state.as_str()),
            })
            .collect(),
    };
    map.validate_strict()
        .map_err(|source| ShardMapFileError::Invalid {
            path: path.to_owned(),
            source,
        })?;
    Ok(map)
}

/// Reads and validates the shard-map file at `path` ([`parse`]).
pub fn read(path: &Path) -> Result<ShardMap, ShardMapFileError> {
    let name = path.display().to_string();
    let read_err = |source| ShardMapFileError::Read {
        path: name.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_FILE_BYTES {
        return Err(ShardMapFileError::TooLarge { path: name });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    parse(&text, &name)
}

/// One refused attempt, as the operator sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Refusal {
    /// When (Unix ms).
    pub at_ms: u64,
    /// The version the refused map claimed, when it parsed.
    pub version: Option<u64>,
    /// The fault's short name ([`ShardMapFileError::kind`]).
    pub kind: &'static str,
    /// Why, naming the node and field.
    pub reason: String,
}

/// The shard-map part of the admin status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShardMapStatusView {
    /// The version served.
    pub version: u64,
    /// Relays in the map served.
    pub nodes: usize,
    /// When the map served was installed (Unix ms; absent for the map loaded at start).
    pub installed_at_ms: Option<u64>,
    /// Maps installed since start (reloads).
    pub installed: u64,
    /// Attempts refused since start.
    pub refused: u64,
    /// The latest refusal, if any (kept after later successes: compare `at_ms`).
    pub last_refusal: Option<Refusal>,
}

#[derive(Debug, Default)]
struct Inner {
    installed_at_ms: Option<u64>,
    installed: u64,
    refused: u64,
    last_refusal: Option<Refusal>,
}

/// What happened to shard maps offered to this relay. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ShardMapStatus {
    inner: Arc<Mutex<Inner>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl ShardMapStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A map was installed.
    pub fn note_installed(&self) {
        let mut i = self.lock();
        i.installed += 1;
        i.installed_at_ms = Some(unix_ms());
        metrics::counter!("tern_relay_shard_map_reloads_total", "result" => "installed")
            .increment(1);
    }

    /// A map was refused: logged, counted, kept for the status.
    pub fn note_refused(&self, version: Option<u64>, kind: &'static str, reason: String) {
        tracing::error!(
            version,
            kind,
            %reason,
            "shard map refused; the map served stays"
        );
        metrics::counter!("tern_relay_shard_map_refused_total", "reason" => kind).increment(1);
        let mut i = self.lock();
        i.refused += 1;
        i.last_refusal = Some(Refusal {
            at_ms: unix_ms(),
            version,
            kind,
            reason,
        });
    }

    /// The status, with the map served now.
    pub fn view(&self, served: &ShardMap) -> ShardMapStatusView {
        let i = self.lock();
        ShardMapStatusView {
            version: served.version,
            nodes: served.nodes.len(),
            installed_at_ms: i.installed_at_ms,
            installed: i.installed,
            refused: i.refused,
            last_refusal: i.last_refusal.clone(),
        }
    }
}

/// The shard map this relay serves, shared by the request handler (which answers
/// `ShardMapRequest`s and counts misrouted batches), the file watcher and the admin
/// API. A newer valid map replaces it and is announced on the push hub. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ServedShardMap {
    map: Arc<RwLock<Arc<ShardMap>>>,
    status: ShardMapStatus,
    push_hub: Option<PushHub>,
}

impl ServedShardMap {
    /// Serves `map` (validated by the caller: the config loader checks the file at
    /// start); newer maps are announced on `push_hub`, if any.
    pub fn new(map: ShardMap, push_hub: Option<PushHub>) -> Self {
        ServedShardMap {
            map: Arc::new(RwLock::new(Arc::new(map))),
            status: ShardMapStatus::default(),
            push_hub,
        }
    }

    /// The map served now.
    pub fn current(&self) -> Arc<ShardMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What happened to the maps offered to this relay.
    pub fn status(&self) -> &ShardMapStatus {
        &self.status
    }

    /// Installs `map` if it is valid ([`ShardMap::validate`], protocol §5.5) and newer
    /// than the map served; returns whether it did. An invalid map is refused with the
    /// rule it breaks (the caller reports it) and the map served stays.
    pub fn install(&self, map: ShardMap) -> Result<bool, ShardMapError> {
        map.validate()?;
        let installed = self.replace_if_newer(map);
        if installed {
            self.status.note_installed();
        }
        Ok(installed)
    }

    /// [`ServedShardMap::install`], reporting a refusal in the status and the log;
    /// returns whether the map was installed.
    pub fn set(&self, map: ShardMap) -> bool {
        let version = map.version;
        match self.install(map) {
            Ok(installed) => installed,
            Err(e) => {
                self.status
                    .note_refused(Some(version), e.kind(), e.to_string());
                false
            }
        }
    }

    /// Serves `map` without validating it, as a relay of an older version would: for
    /// tests of what devices do with a bad map.
    #[cfg(feature = "testing")]
    pub fn serve_unvalidated(&self, map: ShardMap) -> bool {
        self.replace_if_newer(map)
    }

    fn replace_if_newer(&self, map: ShardMap) -> bool {
        let version = map.version;
        let mut cur = self.map.write().unwrap_or_else(|p| p.into_inner());
        let installed = if map.version > cur.version {
            metrics::gauge!("tern_relay_shard_map_version").set(map.version as f64);
            *cur = Arc::new(map);
            true
        } else {
            false
        };
        drop(cur);
        if let (true, Some(hub)) = (installed, &self.push_hub) {
            hub.broadcast(&tern_protocol::PushNotice::ShardMapChanged { version });
        }
        installed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "version": 3,
        "nodes": [
            {"id": "relay-1", "quic_addr": "10.0.0.1:4433", "https_url": "https://10.0.0.1:8443", "weight": 1, "state": "active"},
            {"id": "relay-2", "quic_addr": "relay-2.example.net:4433", "https_url": "https://relay-2.example.net", "weight": 2, "state": "draining"}
        ]
    }"#;

    #[test]
    fn a_good_file_parses() {
        let m = parse(GOOD, "f").unwrap();
        assert_eq!((m.version, m.nodes.len()), (3, 2));
        assert_eq!(m.nodes[1].state, NodeState::Draining);
    }

    #[test]
    fn every_kind_of_bad_file_is_refused_with_its_reason() {
        let node = |id: &str, extra: &str| {
            format!(
                r#"{{"id": "{id}", "quic_addr": "10.0.0.1:4433", "https_url": "https://10.0.0.1:8443", "weight": 1, "state": "active"{extra}}}"#
            )
        };
        let with = |version: &str, nodes: &[String]| {
            format!(
                r#"{{"version": {version}, "nodes": [{}]}}"#,
                nodes.join(",")
            )
        };
        let good = node("relay-1", "");
        let cases: Vec<(String, &str, &str)> = vec![
            ("not json".into(), "parse", "expected"),
            (with("2", &[]), "nodes", "no relay"),
            (
                with("2", &[good.replace("\"active\"", "\"actve\"")]),
                "state",
                "\"actve\"",
            ),
            (
                with("2", &[good.replace("\"weight\": 1", "\"weight\": 0")]),
                "weight",
                "weight 0",
            ),
            (
                with("2", &[good.replace("10.0.0.1:4433", "10.0.0.1")]),
                "quic_addr",
                "quic_addr",
            ),
            (
                with(
                    "2",
                    &[good.replace("https://10.0.0.1:8443", "10.0.0.1:8443")],
                ),
                "https_url",
                "https_url",
            ),
            (
                with("2", &[good.clone(), good.clone()]),
                "duplicate_id",
                "nodes[1].id",
            ),
            (with("2", &[node("", "")]), "id", "nodes[0].id"),
            (
                with(&u64::MAX.to_string(), std::slice::from_ref(&good)),
                "version",
                "18446744073709551615",
            ),
            (
                with("0", std::slice::from_ref(&good)),
                "version",
                "at least 1",
            ),
            (
                with("-1", std::slice::from_ref(&good)),
                "parse",
                "invalid value",
            ),
            (
                with("2", &[node("relay-1", r#", "wieght": 2"#)]),
                "parse",
                "unknown field `wieght`",
            ),
            (
                with("2", &[good.replace(", \"weight\": 1", "")]),
                "parse",
                "missing field `weight`",
            ),
            (
                with("2", &[good.replace("\"active\"", "\"draining\"")]),
                "no_active_node",
                "no relay is active",
            ),
        ];
        for (text, kind, says) in cases {
            let e = parse(&text, "map.json").expect_err(&text);
            assert_eq!(e.kind(), kind, "{text}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains(says) && msg.starts_with("shard map file map.json"),
                "{text}: {msg}"
            );
        }
    }
}
