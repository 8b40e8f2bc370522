//! Experiment exposures: which (flag, variant, unit, config version) this device has
//! recorded, so that each is recorded once (protocol §5.2, `exposure`).
//!
//! [`Exposures`] is the in-memory set the recording path consults (no I/O, a short
//! mutex in `Tern`). It is bounded: at most `cap` keys, and only keys of the newest
//! config version seen and later are kept — an exposure names the bundle version it
//! was evaluated with, and versions only grow (protocol §5.4), so keys of older
//! versions cannot recur (a relay serving an older cached bundle may bring one back:
//! then that key is recorded again, once). A key that does not fit is refused
//! ([`Admit::Full`]) and the caller counts it: a buggy or hostile app evaluating
//! unbounded distinct keys grows neither memory nor disk nor the event stream.
//!
//! Persistence is the store's (`exposures` table, written in the same transaction
//! that stores the exposure event, see [`crate::store`]): the set is loaded from it
//! when the store opens, after the journal was recovered and before any bundle is in
//! use, so a restart — a kill right after the read included — neither loses an
//! exposure (it is in the journal) nor records it again.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// One exposure's identity: the flag, the decision's name (`off`, `on`, or the variant
/// key), the bucketing unit (user id, or device id when anonymous) and the version of
/// the config bundle it was evaluated with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExposureKey {
    /// The flag's key.
    pub flag: String,
    /// `off`, `on`, or the variant's key.
    pub variant: String,
    /// The user id, or the device id (canonical text) when anonymous.
    pub unit: String,
    /// The bundle version.
    pub config_version: u64,
}

impl ExposureKey {
    /// A 64-bit digest of the key (length-prefixed fields, so no two keys share their
    /// input). Kept in memory instead of the strings; a collision (about 1 in 10^12
    /// at the default cap) would skip one exposure.
    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// What [`Exposures::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// New: the caller records it (and calls [`Exposures::forget`] if that fails).
    New,
    /// Recorded before.
    Seen,
    /// The set is full: not recorded.
    Full,
}

/// The set of exposures recorded (see the module docs).
#[derive(Debug)]
pub struct Exposures {
    /// Digest → config version.
    seen: HashMap<u64, u64>,
    /// The newest config version admitted; keys of older versions are dropped.
    newest: u64,
    cap: usize,
}

impl Exposures {
    /// An empty set holding at most `cap` keys.
    pub fn new(cap: usize) -> Self {
        Exposures {
            seen: HashMap::new(),
            newest: 0,
            cap,
        }
    }

    /// Whether `key` was admitted (no change).
    pub fn contains(&self, key: &ExposureKey) -> bool {
        self.seen.contains_key(&key.digest())
    }

    /// Admits `key` if it is new and fits. A key of a newer config version than any
    /// admitted first drops the keys of older versions.
    pub fn admit(&mut self, key: &ExposureKey) -> Admit {
        let digest = key.digest();
        if self.seen.contains_key(&digest) {
            return Admit::Seen;
        }
        if key.config_version > self.newest {
            self.newest = key.config_version;
            let newest = self.newest;
            self.seen.retain(|_, v| *v >= newest);
        }
        if self.seen.len() >= self.cap {
            return Admit::Full;
        }
        self.seen.insert(digest, key.config_version);
        Admit::New
    }

    /// Removes `key` (its recording failed: a later read tries again).
    pub fn forget(&mut self, key: &ExposureKey) {
        self.seen.remove(&key.digest());
    }

    /// Adds keys recorded by earlier runs (as the store kept them), within the cap,
    /// newest versions first.
    pub fn load(&mut self, mut keys: Vec<ExposureKey>) {
        keys.sort_by_key(|k| std::cmp::Reverse(k.config_version));
        for k in &keys {
            let _ = self.admit(k);
        }
    }

    /// Forgets everything (`delete_local_data`).
    pub fn clear(&mut self) {
        self.seen.clear();
        self.newest = 0;
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// No keys held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(flag: &str, variant: &str, unit: &str, v: u64) -> ExposureKey {
        ExposureKey {
            flag: flag.into(),
            variant: variant.into(),
            unit: unit.into(),
            config_version: v,
        }
    }

    #[test]
    fn each_flag_variant_unit_and_version_is_admitted_once() {
        let mut x = Exposures::new(100);
        assert_eq!(x.admit(&key("f", "on", "u", 1)), Admit::New);
        assert_eq!(x.admit(&key("f", "on", "u", 1)), Admit::Seen);
        // Any part differing is another exposure.
        assert_eq!(x.admit(&key("f", "off", "u", 1)), Admit::New);
        assert_eq!(x.admit(&key("f", "on", "u2", 1)), Admit::New);
        assert_eq!(x.admit(&key("g", "on", "u", 1)), Admit::New);
        assert_eq!(x.admit(&key("f", "on", "u", 2)), Admit::New);
        // Field boundaries are part of the key: ("ab", "c") is not ("a", "bc").
        assert_eq!(x.admit(&key("ab", "c", "u", 2)), Admit::New);
        assert_eq!(x.admit(&key("a", "bc", "u", 2)), Admit::New);
    }

    #[test]
    fn a_newer_config_version_drops_the_keys_of_older_ones() {
        let mut x = Exposures::new(100);
        for u in 0..10 {
            x.admit(&key("f", "on", &format!("u{u}"), 3));
        }
        assert_eq!(x.len(), 10);
        assert_eq!(x.admit(&key("f", "on", "u0", 4)), Admit::New);
        assert_eq!(x.len(), 1);
        assert!(!x.contains(&key("f", "on", "u1", 3)));
        // An older version (a stale bundle) is admitted beside the newer keys.
        assert_eq!(x.admit(&key("f", "on", "u1", 3)), Admit::New);
        assert_eq!(x.admit(&key("f", "on", "u1", 3)), Admit::Seen);
        assert_eq!(x.len(), 2);
    }

    #[test]
    fn the_set_is_bounded_and_refuses_what_does_not_fit() {
        let mut x = Exposures::new(3);
        for u in 0..3 {
            assert_eq!(x.admit(&key("f", "on", &format!("u{u}"), 1)), Admit::New);
        }
        for u in 3..1000 {
            assert_eq!(x.admit(&key("f", "on", &format!("u{u}"), 1)), Admit::Full);
        }
        assert_eq!(x.len(), 3);
        // Keys already in stay deduplicated.
        assert_eq!(x.admit(&key("f", "on", "u0", 1)), Admit::Seen);
        // A new config version makes room.
        assert_eq!(x.admit(&key("f", "on", "u9", 2)), Admit::New);
        assert_eq!(x.len(), 1);
    }

    #[test]
    fn forget_and_load_and_clear() {
        let mut x = Exposures::new(2);
        let k = key("f", "on", "u", 1);
        assert_eq!(x.admit(&k), Admit::New);
        x.forget(&k);
        assert_eq!(x.admit(&k), Admit::New);
        // Loading keeps the newest versions within the cap.
        let mut y = Exposures::new(2);
        y.load(vec![
            key("f", "on", "a", 1),
            key("f", "on", "b", 2),
            key("f", "on", "c", 2),
            key("f", "on", "d", 2),
        ]);
        assert_eq!(y.len(), 2);
        assert!(!y.contains(&key("f", "on", "a", 1)));
        y.clear();
        assert!(y.is_empty());
        assert_eq!(y.admit(&key("f", "on", "a", 1)), Admit::New);
    }
}
