//! Reading a recording back: the segments [`super::record`] wrote under
//! `record/<relay>/`, as one timeline of [`RecordedBatch`]es in arrival order. Shared
//! by `tern-loadgen replay` (raw batches to a relay) and `tern-fleet run --replay-dir`
//! (device traffic through simulated devices).
//!
//! **Order.** Within one relay's directory, segments sort by name
//! (`<first-ms>-<seq>.json`: time, then the recorder's counter) and a segment holds its
//! batches in arrival order; the timelines of several relays (prefix `record`) are
//! merged by `at_ms`, ties to the relay whose directory sorts first. A batch whose
//! `at_ms` is earlier than the one before it (a clock step, an edited file) is returned
//! where it stands: callers pacing by time must not wait for the past.
//!
//! **Bounded memory.** The listing keeps each segment's key and size; batches are read
//! one segment at a time per relay directory, so a [`RecordingReader`] holds at most one
//! segment of each relay it merges, never the whole recording.
//!
//! **Hostile input.** A segment that cannot be read, is larger than
//! [`ReaderLimits::max_segment_bytes`], or does not parse as a [`Segment`] is skipped
//! and counted ([`ReadStats::segments_unreadable`]; the first
//! [`MAX_UNREADABLE_LISTED`] with their reason in [`ReadStats::unreadable`]); nothing in
//! a segment makes the reader panic. Objects not named `*.json` are not segments: they
//! are counted ([`ReadStats::other_objects`]) and left alone. Only a listing that fails
//! is an error.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;

use super::record::{RecordedBatch, Segment};

/// How many unreadable segments [`ReadStats::unreadable`] names (the count goes on).
pub const MAX_UNREADABLE_LISTED: usize = 16;

/// What can stop a recording from being read at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The directory of a local-disk store could not be opened.
    #[error("opening {dir}: {source}")]
    Open {
        /// The directory.
        dir: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// Listing the recording's segments failed.
    #[error("listing {prefix}: {source}")]
    List {
        /// The prefix listed.
        prefix: String,
        /// The store's error.
        source: object_store::Error,
    },
}

/// Bounds on what one segment may cost to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderLimits {
    /// A segment object larger than this is skipped (counted as unreadable) instead of
    /// read into memory. The recorder writes at most 1,000 batches per segment.
    pub max_segment_bytes: u64,
}

impl Default for ReaderLimits {
    fn default() -> Self {
        ReaderLimits {
            max_segment_bytes: 256 << 20,
        }
    }
}

impl ReaderLimits {
    /// Sets the largest segment read.
    pub fn with_max_segment_bytes(mut self, bytes: u64) -> Self {
        self.max_segment_bytes = bytes;
        self
    }
}

/// A segment that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// Its object key.
    pub key: String,
    /// Why it was skipped.
    pub reason: String,
}

/// What a [`RecordingReader`] found so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReadStats {
    /// Segment objects (`*.json`) under the prefix, from the listing.
    pub segments: u64,
    /// Segments read so far.
    pub segments_read: u64,
    /// Segments skipped so far: unreadable, too large, or not a segment.
    pub segments_unreadable: u64,
    /// Objects under the prefix that are not segments (not `*.json`), left alone.
    pub other_objects: u64,
    /// Batches returned so far.
    pub batches: u64,
    /// Events in them.
    pub events: u64,
    /// The first [`MAX_UNREADABLE_LISTED`] segments skipped, with the reason.
    pub unreadable: Vec<Unreadable>,
}

/// One relay directory's part of the recording.
struct RelayQueue {
    /// Segments not read yet, in name order, with their listed size.
    segments: VecDeque<(ObjectPath, u64)>,
    /// What is left of the segment being read.
    batches: VecDeque<RecordedBatch>,
}

/// Streams a recording's batches in time order; see the [module docs](self).
pub struct RecordingReader {
    store: Arc<dyn ObjectStore>,
    relays: Vec<RelayQueue>,
    limits: ReaderLimits,
    stats: ReadStats,
}

impl std::fmt::Debug for RecordingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingReader")
            .field("relays", &self.relays.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RecordingReader {
    /// Lists the segments under `prefix` (`record` for every relay's, or
    /// `record/<relay-id>`) in `store`.
    pub async fn open(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self, ReadError> {
        let listed: Vec<_> = store
            .list(Some(&ObjectPath::from(prefix)))
            .try_collect()
            .await
            .map_err(|source| ReadError::List {
                prefix: prefix.to_owned(),
                source,
            })?;
        let mut stats = ReadStats::default();
        // Relay directory (the key without its file name) -> its segments.
        let mut dirs: BTreeMap<String, Vec<(ObjectPath, u64)>> = BTreeMap::new();
        for meta in listed {
            let key = meta.location;
            let Some(name) = key.filename() else {
                continue;
            };
            if !name.ends_with(".json") {
                stats.other_objects += 1;
                continue;
            }
            let dir = key.as_ref()[..key.as_ref().len() - name.len()].to_owned();
            dirs.entry(dir).or_default().push((key, meta.size));
            stats.segments += 1;
        }
        let relays = dirs
            .into_values()
            .map(|mut segments| {
                segments.sort_by(|a, b| a.0.cmp(&b.0));
                RelayQueue {
                    segments: segments.into(),
                    batches: VecDeque::new(),
                }
            })
            .collect();
        Ok(RecordingReader {
            store,
            relays,
            limits: ReaderLimits::default(),
            stats,
        })
    }

    /// [`RecordingReader::open`] over a local-disk store rooted at `dir` (a relay's
    /// spool directory, or a copy of its `record/` tree).
    pub async fn open_dir(dir: &Path, prefix: &str) -> Result<Self, ReadError> {
        let store =
            object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|source| {
                ReadError::Open {
                    dir: dir.display().to_string(),
                    source,
                }
            })?;
        RecordingReader::open(Arc::new(store), prefix).await
    }

    /// Sets the bounds on reading a segment.
    pub fn with_limits(mut self, limits: ReaderLimits) -> Self {
        self.limits = limits;
        self
    }

    /// What was found so far (the listing's counts at once, the rest as batches are
    /// read).
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    /// The next batch in time order; `None` at the end of the recording.
    pub async fn next(&mut self) -> Option<RecordedBatch> {
        for i in 0..self.relays.len() {
            while self.relays[i].batches.is_empty() {
                let Some((key, size)) = self.relays[i].segments.pop_front() else {
                    break;
                };
                match self.read_segment(&key, size).await {
                    Ok(segment) => {
                        self.stats.segments_read += 1;
                        self.relays[i].batches = segment.batches.into();
                    }
                    Err(reason) => self.skip(&key, reason),
                }
            }
        }
        let (i, _) = self
            .relays
            .iter()
            .enumerate()
            .filter_map(|(i, q)| q.batches.front().map(|b| (i, b.at_ms)))
            .min_by_key(|&(i, at_ms)| (at_ms, i))?;
        let batch = self.relays[i].batches.pop_front()?;
        self.stats.batches += 1;
        self.stats.events += batch.batch.events.len() as u64;
        Some(batch)
    }

    async fn read_segment(&self, key: &ObjectPath, size: u64) -> Result<Segment, String> {
        if size > self.limits.max_segment_bytes {
            return Err(format!(
                "{size} bytes, more than the {} read at most",
                self.limits.max_segment_bytes
            ));
        }
        if size == 0 {
            return Err("empty".into());
        }
        // The listed size and no more: a file growing meanwhile cannot make us read
        // past the bound.
        let bytes = self
            .store
            .get_range(key, 0..size)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        serde_json::from_slice::<Segment>(&bytes).map_err(|e| format!("not a segment: {e}"))
    }

    fn skip(&mut self, key: &ObjectPath, reason: String) {
        // The callers report skipped segments (with the reason) themselves.
        tracing::debug!(key = %key, %reason, "skipping an unreadable recording segment");
        self.stats.segments_unreadable += 1;
        if self.stats.unreadable.len() < MAX_UNREADABLE_LISTED {
            self.stats.unreadable.push(Unreadable {
                key: key.to_string(),
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use proptest::prelude::*;
    use tern_protocol::{AppId, BatchId, DeviceId, EventBatch, SdkInfo};

    fn recorded(at_ms: u64, events: usize) -> RecordedBatch {
        RecordedBatch {
            at_ms,
            batch: EventBatch {
                anonymous_id: None,
                context: None,
                batch_id: BatchId::new_v7(),
                app_id: AppId::new("demo"),
                device_id: DeviceId::random(),
                sdk: SdkInfo::default(),
                sent_at_ms: 0,
                attempt: 0,
                events: (0..events)
                    .map(|i| tern_protocol::Event {
                        seq: i as u64 + 1,
                        ts_ms: at_ms as i64,
                        user_id: None,
                        session_id: None,
                        body: tern_protocol::EventBody::Custom {
                            name: "e".into(),
                            props: Default::default(),
                        },
                    })
                    .collect(),
                health: Default::default(),
            },
        }
    }

    fn segment(relay: &str, batches: Vec<RecordedBatch>) -> Vec<u8> {
        serde_json::to_vec(&Segment {
            relay_id: relay.into(),
            hashed_user_ids: true,
            dropped_properties: false,
            redacted_property_values: true,
            batches,
        })
        .unwrap()
    }

    async fn put(store: &InMemory, key: &str, bytes: Vec<u8>) {
        store
            .put(&ObjectPath::from(key), bytes.into())
            .await
            .unwrap();
    }

    async fn read_all(reader: &mut RecordingReader) -> Vec<RecordedBatch> {
        let mut out = Vec::new();
        while let Some(b) = reader.next().await {
            out.push(b);
        }
        out
    }

    #[tokio::test]
    async fn relays_merge_into_one_timeline_and_bad_segments_are_counted_and_skipped() {
        let store = Arc::new(InMemory::new());
        put(
            &store,
            "record/r1/0000000001000-000001.json",
            segment("r1", vec![recorded(1000, 2), recorded(1300, 1)]),
        )
        .await;
        put(
            &store,
            "record/r1/0000000002000-000002.json",
            segment("r1", vec![recorded(2000, 1)]),
        )
        .await;
        put(
            &store,
            "record/r2/0000000001100-000001.json",
            segment("r2", vec![recorded(1100, 3), recorded(2500, 1)]),
        )
        .await;
        // Between r1's two good segments: garbage, an empty file, a truncated segment.
        put(
            &store,
            "record/r1/0000000001500-000001.json",
            b"{not json".to_vec(),
        )
        .await;
        put(&store, "record/r1/0000000001600-000001.json", Vec::new()).await;
        let mut cut = segment("r1", vec![recorded(1700, 1)]);
        cut.truncate(cut.len() / 2);
        put(&store, "record/r1/0000000001700-000001.json", cut).await;
        put(&store, "record/r1/notes.txt", b"hello".to_vec()).await;

        let mut reader = RecordingReader::open(store.clone(), "record")
            .await
            .unwrap();
        assert_eq!(reader.stats().segments, 6);
        assert_eq!(reader.stats().other_objects, 1);
        let times: Vec<u64> = read_all(&mut reader)
            .await
            .iter()
            .map(|b| b.at_ms)
            .collect();
        assert_eq!(times, [1000, 1100, 1300, 2000, 2500]);
        let s = reader.stats();
        assert_eq!((s.segments_read, s.segments_unreadable), (3, 3));
        assert_eq!((s.batches, s.events), (5, 8));
        assert!(s.unreadable[0].key.ends_with("1500-000001.json"), "{s:?}");
        assert!(s.unreadable[0].reason.starts_with("not a segment"), "{s:?}");
        assert_eq!(s.unreadable[1].reason, "empty");

        // One relay's prefix only.
        let mut r2 = RecordingReader::open(store, "record/r2").await.unwrap();
        let times: Vec<u64> = read_all(&mut r2).await.iter().map(|b| b.at_ms).collect();
        assert_eq!(times, [1100, 2500]);
    }

    #[tokio::test]
    async fn a_segment_above_the_size_bound_is_skipped_unread() {
        let store = Arc::new(InMemory::new());
        let big = segment("r1", (0..50).map(|i| recorded(i, 10)).collect());
        let len = big.len() as u64;
        put(&store, "record/r1/0000000000000-000001.json", big).await;
        put(
            &store,
            "record/r1/0000000000100-000002.json",
            segment("r1", vec![recorded(100, 1)]),
        )
        .await;
        let mut reader = RecordingReader::open(store, "record")
            .await
            .unwrap()
            .with_limits(ReaderLimits::default().with_max_segment_bytes(len - 1));
        assert_eq!(read_all(&mut reader).await.len(), 1);
        assert_eq!(reader.stats().segments_unreadable, 1);
        assert!(reader.stats().unreadable[0].reason.contains("read at most"));
    }

    #[tokio::test]
    async fn an_empty_or_missing_prefix_is_an_empty_recording() {
        let store = Arc::new(InMemory::new());
        let mut reader = RecordingReader::open(store, "record/nobody").await.unwrap();
        assert!(reader.next().await.is_none());
        assert_eq!(reader.stats(), &ReadStats::default());
        assert!(
            RecordingReader::open_dir(Path::new("/nonexistent/tern/recording"), "record")
                .await
                .is_err()
        );
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any relays' time-ordered segments come out as one time-ordered stream with
        /// every batch exactly once.
        #[test]
        fn the_merge_keeps_every_batch_once_in_time_order(
            relays in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::collection::vec((0u64..50, 0usize..3), 1..5), 1..4),
                1..4),
        ) {
            block_on(async {
                let store = Arc::new(InMemory::new());
                let mut expected = Vec::new();
                for (r, segments) in relays.iter().enumerate() {
                    let mut t = 0u64;
                    for (s, steps) in segments.iter().enumerate() {
                        let batches: Vec<_> = steps
                            .iter()
                            .map(|&(dt, n)| {
                                t += dt;
                                recorded(t, n)
                            })
                            .collect();
                        let first = batches[0].at_ms;
                        expected.extend(batches.iter().map(|b| (b.at_ms, b.batch.batch_id)));
                        let key = format!("record/r{r}/{first:013}-{s:06}.json");
                        put(&store, &key, segment("r", batches)).await;
                    }
                }
                let mut reader = RecordingReader::open(store, "record").await.unwrap();
                let got: Vec<_> = read_all(&mut reader)
                    .await
                    .iter()
                    .map(|b| (b.at_ms, b.batch.batch_id))
                    .collect();
                prop_assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "{got:?}");
                let mut sorted_got = got.clone();
                sorted_got.sort();
                expected.sort();
                prop_assert_eq!(sorted_got, expected);
                Ok(())
            })?;
        }

        /// Arbitrary bytes in segment files never panic the reader: each is a segment
        /// or counted as unreadable.
        #[test]
        fn arbitrary_segment_bytes_are_read_or_counted(
            files in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..6),
        ) {
            block_on(async {
                let store = Arc::new(InMemory::new());
                for (i, bytes) in files.iter().enumerate() {
                    put(&store, &format!("record/r1/{i:013}-000001.json"), bytes.clone()).await;
                }
                let mut reader = RecordingReader::open(store, "record").await.unwrap();
                read_all(&mut reader).await;
                let s = reader.stats();
                prop_assert_eq!(s.segments_read + s.segments_unreadable, files.len() as u64);
                Ok(())
            })?;
        }

        /// A real segment with one byte changed, or cut short, anywhere: read (when the
        /// change leaves a segment) or counted, never a panic.
        #[test]
        fn a_damaged_real_segment_is_read_or_counted(
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            block_on(async {
                let mut bytes = segment("r1", vec![recorded(1, 3), recorded(2, 1)]);
                let i = at.index(bytes.len());
                if cut {
                    bytes.truncate(i);
                } else {
                    bytes[i] = byte;
                }
                let store = Arc::new(InMemory::new());
                put(&store, "record/r1/0000000000001-000001.json", bytes).await;
                let mut reader = RecordingReader::open(store, "record").await.unwrap();
                let batches = read_all(&mut reader).await.len() as u64;
                let s = reader.stats();
                prop_assert_eq!(s.segments_read + s.segments_unreadable, 1);
                prop_assert_eq!(s.batches, batches);
                Ok(())
            })?;
        }
    }
}
