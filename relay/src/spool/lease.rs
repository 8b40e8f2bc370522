//! Replay leases: at most one relay replays a spool object at a time.
//!
//! Before replaying an object `…/<key>.tern`, a relay creates a lease file next to it,
//! `…/<key>.tern.lease-<generation, 6 digits>`, with a **conditional create**
//! (`PutMode::Create`: S3 `If-None-Match: *`, a no-clobber link on a local disk). The
//! lease holds the holder's relay id and an expiry. A lease whose expiry passed can be
//! taken over by creating the *next* generation — again conditionally, so when two
//! relays race for an expired lease exactly one wins; no lease file is ever
//! overwritten or deleted to take it over. After the object is replayed and deleted,
//! its holder deletes the lease files; lease files left without their object (a holder
//! that died between the two deletes) are removed once expired.
//!
//! A lease only makes double replays rare (a holder slower than its lease's lifetime
//! can overlap its successor); the backend's dedupe on `batch_id` makes them harmless.

use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::spool::SpoolError;

const LEASE_MARK: &str = ".lease-";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseBody {
    holder: String,
    expires_at_ms: u64,
}

/// A lease this relay holds on one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The leased object.
    pub object: ObjectPath,
    /// The generation held.
    pub generation: u32,
    /// When it expires (unix ms).
    pub expires_at_ms: u64,
}

/// The result of trying to take a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The lease is ours.
    Acquired(Lease),
    /// Another relay holds a live lease.
    Held {
        /// Its relay id.
        holder: String,
        /// When its lease expires (unix ms).
        expires_at_ms: u64,
    },
}

/// The lease file of `object` at `generation`.
pub fn lease_path(object: &ObjectPath, generation: u32) -> ObjectPath {
    ObjectPath::from(format!("{object}{LEASE_MARK}{generation:06}"))
}

/// If `path` is a lease file: the object it leases and its generation.
pub fn parse_lease_path(path: &ObjectPath) -> Option<(ObjectPath, u32)> {
    let s = path.as_ref();
    let i = s.rfind(LEASE_MARK)?;
    let (object, rest) = (&s[..i], &s[i + LEASE_MARK.len()..]);
    if !object.ends_with(".tern") || rest.len() != 6 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((ObjectPath::from(object), rest.parse().ok()?))
}

/// The lease generations of `object` found in a listing, ascending.
pub fn generations(listing: &[ObjectMeta], object: &ObjectPath) -> Vec<u32> {
    let mut g: Vec<u32> = listing
        .iter()
        .filter_map(|m| parse_lease_path(&m.location))
        .filter(|(o, _)| o == object)
        .map(|(_, g)| g)
        .collect();
    g.sort_unstable();
    g
}

async fn read_body(
    store: &dyn ObjectStore,
    path: &ObjectPath,
) -> Result<Option<LeaseBody>, SpoolError> {
    match store.get(path).await {
        Ok(r) => {
            let bytes = r
                .bytes()
                .await
                .map_err(|e| SpoolError::Store(e.to_string()))?;
            // An unreadable lease counts as expired: it protects nothing.
            Ok(serde_json::from_slice(&bytes).ok().or(Some(LeaseBody {
                holder: String::new(),
                expires_at_ms: 0,
            })))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(SpoolError::Store(e.to_string())),
    }
}

/// Tries to take the lease on `object` for `holder` for `ttl`, given the generations
/// already present (from a listing; a stale listing only makes the create fail).
pub async fn acquire(
    store: &dyn ObjectStore,
    object: &ObjectPath,
    existing: &[u32],
    holder: &str,
    ttl: Duration,
    now_ms: u64,
) -> Result<Acquire, SpoolError> {
    let next = match existing.iter().max() {
        None => 1,
        Some(&g) => match read_body(store, &lease_path(object, g)).await? {
            Some(body) if body.expires_at_ms > now_ms => {
                if body.holder == holder {
                    // Ours (a replay interrupted by a failure, or our previous run).
                    return Ok(Acquire::Acquired(Lease {
                        object: object.clone(),
                        generation: g,
                        expires_at_ms: body.expires_at_ms,
                    }));
                }
                return Ok(Acquire::Held {
                    holder: body.holder,
                    expires_at_ms: body.expires_at_ms,
                });
            }
            // Expired (or deleted meanwhile): the next generation takes over.
            _ => g + 1,
        },
    };
    let expires_at_ms = now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    let body = serde_json::to_vec(&LeaseBody {
        holder: holder.to_owned(),
        expires_at_ms,
    })
    .map_err(|e| SpoolError::Store(e.to_string()))?;
    let path = lease_path(object, next);
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .put_opts(&path, PutPayload::from(Bytes::from(body)), opts)
        .await
    {
        Ok(_) => Ok(Acquire::Acquired(Lease {
            object: object.clone(),
            generation: next,
            expires_at_ms,
        })),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => {
            // Someone else created it first.
            match read_body(store, &path).await? {
                Some(b) => Ok(Acquire::Held {
                    holder: b.holder,
                    expires_at_ms: b.expires_at_ms,
                }),
                None => Ok(Acquire::Held {
                    holder: String::new(),
                    expires_at_ms: 0,
                }),
            }
        }
        Err(e @ object_store::Error::NotImplemented { .. }) => Err(SpoolError::Store(format!(
            "the spool store cannot create objects conditionally, which replay leases need: {e}"
        ))),
        Err(e) => Err(SpoolError::Store(e.to_string())),
    }
}

/// Deletes lease generations `1..=up_to` of `object` (after the object is gone).
pub async fn release(
    store: &dyn ObjectStore,
    object: &ObjectPath,
    up_to: u32,
) -> Result<(), SpoolError> {
    for g in 1..=up_to {
        match store.delete(&lease_path(object, g)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(SpoolError::Store(e.to_string())),
        }
    }
    Ok(())
}

/// Deletes expired lease files whose object no longer exists (their holder died
/// between deleting the object and its leases). Returns how many it deleted.
pub async fn sweep_orphans(
    store: &dyn ObjectStore,
    listing: &[ObjectMeta],
    now_ms: u64,
) -> Result<u64, SpoolError> {
    let objects: std::collections::HashSet<&str> = listing
        .iter()
        .map(|m| m.location.as_ref())
        .filter(|p| p.ends_with(".tern"))
        .collect();
    let mut n = 0;
    for m in listing {
        let Some((object, _)) = parse_lease_path(&m.location) else {
            continue;
        };
        if objects.contains(object.as_ref()) {
            continue;
        }
        let expired = match read_body(store, &m.location).await? {
            Some(b) => b.expires_at_ms <= now_ms,
            None => continue,
        };
        if expired {
            match store.delete(&m.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => n += 1,
                Err(e) => return Err(SpoolError::Store(e.to_string())),
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    use super::*;

    fn object() -> ObjectPath {
        ObjectPath::from("spool/relay-a/0001700000000-000001.tern")
    }

    #[test]
    fn lease_paths_round_trip_and_other_names_are_not_leases() {
        let p = lease_path(&object(), 7);
        assert_eq!(
            p.as_ref(),
            "spool/relay-a/0001700000000-000001.tern.lease-000007"
        );
        assert_eq!(parse_lease_path(&p), Some((object(), 7)));
        assert_eq!(parse_lease_path(&object()), None);
        assert_eq!(
            parse_lease_path(&ObjectPath::from("spool/a/x.tern.lease-12")),
            None
        );
        assert_eq!(
            parse_lease_path(&ObjectPath::from("spool/a/x.txt.lease-000001")),
            None
        );
    }

    async fn contend(store: Arc<dyn ObjectStore>) {
        let ttl = Duration::from_secs(30);
        let now = 1_000_000;
        // First come, first served.
        let a = acquire(store.as_ref(), &object(), &[], "a", ttl, now)
            .await
            .unwrap();
        assert!(matches!(a, Acquire::Acquired(Lease { generation: 1, .. })));
        // A relay with a stale listing (it did not see generation 1) loses the create.
        let b = acquire(store.as_ref(), &object(), &[], "b", ttl, now)
            .await
            .unwrap();
        assert_eq!(
            b,
            Acquire::Held {
                holder: "a".into(),
                expires_at_ms: now + 30_000
            }
        );
        // With the listing: still held while live.
        let b = acquire(store.as_ref(), &object(), &[1], "b", ttl, now + 1)
            .await
            .unwrap();
        assert!(matches!(b, Acquire::Held { .. }));
        // The holder itself gets it back.
        let a2 = acquire(store.as_ref(), &object(), &[1], "a", ttl, now + 1)
            .await
            .unwrap();
        assert!(matches!(a2, Acquire::Acquired(Lease { generation: 1, .. })));
        // Expired: exactly one of two contenders takes generation 2.
        let later = now + 30_001;
        let b = acquire(store.as_ref(), &object(), &[1], "b", ttl, later)
            .await
            .unwrap();
        let c = acquire(store.as_ref(), &object(), &[1], "c", ttl, later)
            .await
            .unwrap();
        assert!(
            matches!(b, Acquire::Acquired(Lease { generation: 2, .. })),
            "{b:?}"
        );
        assert_eq!(
            c,
            Acquire::Held {
                holder: "b".into(),
                expires_at_ms: later + 30_000
            }
        );
        // Release removes every generation; orphan sweeping leaves live leases alone.
        release(store.as_ref(), &object(), 2).await.unwrap();
        let listing: Vec<ObjectMeta> =
            crate::spool::list_all(store.as_ref(), &ObjectPath::from("spool"))
                .await
                .unwrap();
        assert!(listing.is_empty(), "{listing:?}");
        let o2 = ObjectPath::from("spool/relay-a/0001700000000-000002.tern");
        acquire(store.as_ref(), &o2, &[], "a", ttl, now)
            .await
            .unwrap();
        let listing = crate::spool::list_all(store.as_ref(), &ObjectPath::from("spool"))
            .await
            .unwrap();
        assert_eq!(
            sweep_orphans(store.as_ref(), &listing, now).await.unwrap(),
            0
        );
        assert_eq!(
            sweep_orphans(store.as_ref(), &listing, now + 30_000)
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn conditional_create_gives_one_holder_in_memory() {
        contend(Arc::new(InMemory::new())).await;
    }

    #[tokio::test]
    async fn conditional_create_gives_one_holder_on_local_disk() {
        let dir = tempfile::tempdir().unwrap();
        contend(Arc::new(
            LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
        ))
        .await;
    }

    #[tokio::test]
    async fn an_unreadable_lease_counts_as_expired() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        store
            .put(
                &lease_path(&object(), 1),
                PutPayload::from_static(b"garbage"),
            )
            .await
            .unwrap();
        let a = acquire(
            store.as_ref(),
            &object(),
            &[1],
            "a",
            Duration::from_secs(1),
            5,
        )
        .await
        .unwrap();
        assert!(matches!(a, Acquire::Acquired(Lease { generation: 2, .. })));
    }
}
