//! The message index behind QUERY_MESSAGE (12): `topic#key` -> commit log offsets, for each
//! space-separated value of a message's `KEYS` property and for its `UNIQ_KEY`, as Apache's
//! `IndexService` keys it.
//!
//! Design (in memory, bounded, rebuilt at open):
//! * A ring of at most `capacity` entries `{key hash, commit log offset, store timestamp, link}`
//!   (32 bytes each) in append order, and a fixed table of buckets (8 bytes each, half as many
//!   as entries) holding the newest entry of each bucket; each entry links to the previous entry
//!   of its bucket. When the ring is full the oldest entry is overwritten: links into it are
//!   recognised as stale by their sequence number, so nothing else needs cleaning. With the
//!   default capacity ([`DEFAULT_INDEX_MAX_ENTRIES`]) the index holds at most 40 MiB.
//! * Only 64-bit hashes are kept (randomly seeded per process): a look-up returns candidate
//!   offsets, and the caller reads each record and keeps those whose topic and key really
//!   match, so a hash collision costs a read, never a wrong answer.
//! * Appends happen under the store's write lock, in commit log order: one short lock and a hash
//!   per key on the send path.
//! * At open the index is rebuilt from the tail of the commit log ([`MessageIndex::rebuild`]):
//!   segments are read newest first until `capacity` entries are found (or the log ends), then
//!   indexed oldest first, so the index after a restart holds what it held before (the newest
//!   `capacity` keys). Start-up reads the commit log bytes that hold those keyed messages.

use parking_lot::Mutex;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use rocketmesh_filters::codec::message::record::{MAGIC_CODE_V1, MAGIC_CODE_V2, MIN_RECORD_LEN};
use rocketmesh_filters::codec::message::{property_keys, Properties, RecordView};
use tracing::{info, warn};

use super::commit_log::CommitLog;
use super::error::Result;

/// Default most index entries (about 1 M keys: 32 MiB of entries plus 4 MiB of buckets).
pub const DEFAULT_INDEX_MAX_ENTRIES: usize = 1 << 20;
/// Most offsets one look-up returns (Apache's `maxMsgsNumBatch`).
pub const MAX_QUERY_RESULTS: usize = 64;
/// Read size of the rebuild scan.
const REBUILD_CHUNK: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
struct Entry {
    hash: u64,
    offset: u64,
    timestamp: i64,
    /// Sequence number + 1 of the previous entry of the same bucket, 0 for none.
    prev: u64,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    /// The ring: entry with sequence number `s` lives at `s % capacity`.
    entries: Vec<Entry>,
    /// Sequence number of the next entry.
    next_seq: u64,
    /// Per bucket: sequence number + 1 of its newest entry, 0 for none.
    buckets: Vec<u64>,
    last_timestamp: i64,
    last_offset: i64,
}

impl Inner {
    fn oldest_seq(&self) -> u64 {
        self.next_seq - self.entries.len() as u64
    }

    fn bucket(&self, hash: u64) -> usize {
        (hash as usize) & (self.buckets.len() - 1)
    }

    fn push(&mut self, hash: u64, offset: u64, timestamp: i64) {
        let b = self.bucket(hash);
        let seq = self.next_seq;
        let e = Entry {
            hash,
            offset,
            timestamp,
            prev: self.buckets[b],
        };
        if self.entries.len() < self.capacity {
            let len = self.entries.len();
            if len == self.entries.capacity() {
                // Grow by doubling, but never past the capacity.
                let want = (len * 2).max(1024).min(self.capacity);
                self.entries.reserve_exact(want - len);
            }
            self.entries.push(e);
        } else {
            let slot = (seq % self.capacity as u64) as usize;
            self.entries[slot] = e;
        }
        self.buckets[b] = seq + 1;
        self.next_seq += 1;
    }
}

/// The index. See the module documentation.
#[derive(Debug)]
pub struct MessageIndex {
    hasher: RandomState,
    inner: Mutex<Inner>,
}

/// The keys a message is indexed under: each space-separated `KEYS` value, then `UNIQ_KEY`.
pub fn index_keys<'a>(
    keys: Option<&'a str>,
    uniq_key: Option<&'a str>,
) -> impl Iterator<Item = &'a str> {
    keys.unwrap_or("")
        .split(' ')
        .chain(uniq_key)
        .filter(|k| !k.is_empty())
}

/// Whether a stored record belongs to `topic` and is indexed under `key`.
pub fn record_matches(view: &RecordView<'_>, topic: &str, key: &str) -> bool {
    if view.topic() != topic {
        return false;
    }
    let Ok(props) = view.properties_str() else {
        return false;
    };
    let keys = rocketmesh_filters::codec::message::properties::lookup(props, property_keys::KEYS);
    let uniq =
        rocketmesh_filters::codec::message::properties::lookup(props, property_keys::UNIQ_KEY);
    index_keys(keys, uniq).any(|k| k == key)
}

impl MessageIndex {
    /// An empty index of at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let buckets = (capacity / 2).max(1).next_power_of_two();
        Self {
            hasher: RandomState::new(),
            inner: Mutex::new(Inner {
                capacity,
                entries: Vec::new(),
                next_seq: 0,
                buckets: vec![0; buckets],
                last_timestamp: 0,
                last_offset: 0,
            }),
        }
    }

    fn hash(&self, topic: &str, key: &str) -> u64 {
        self.hasher.hash_one((topic, '#', key))
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries held.
    pub fn capacity(&self) -> usize {
        self.inner.lock().capacity
    }

    /// Store timestamp and commit log offset of the last message indexed (0, 0 before any):
    /// QUERY_MESSAGE's `indexLastUpdateTimestamp` / `indexLastUpdatePhyoffset`.
    pub fn last_update(&self) -> (i64, i64) {
        let inner = self.inner.lock();
        (inner.last_timestamp, inner.last_offset)
    }

    /// Indexes stored messages, in commit log order: `(topic, properties, offset, store
    /// timestamp)`. One lock hold for the whole batch.
    pub fn add<'a>(&self, msgs: impl IntoIterator<Item = (&'a str, &'a Properties, u64, i64)>) {
        let mut hashes: Vec<(u64, u64, i64)> = Vec::new();
        for (topic, props, offset, ts) in msgs {
            for k in index_keys(props.get(property_keys::KEYS), props.uniq_key()) {
                hashes.push((self.hash(topic, k), offset, ts));
            }
        }
        let Some(&(_, last_offset, last_ts)) = hashes.last() else {
            return;
        };
        let mut inner = self.inner.lock();
        for (h, offset, ts) in hashes {
            inner.push(h, offset, ts);
        }
        inner.last_offset = last_offset as i64;
        inner.last_timestamp = last_ts;
    }

    /// Candidate commit log offsets of `topic#key` stored within `begin..=end` (ms), newest
    /// first among at most `max` (capped at [`MAX_QUERY_RESULTS`]) candidates, returned in
    /// ascending order. Candidates may include hash collisions: check the records.
    pub fn query(&self, topic: &str, key: &str, max: usize, begin: i64, end: i64) -> Vec<u64> {
        let max = max.min(MAX_QUERY_RESULTS);
        let hash = self.hash(topic, key);
        let mut out = Vec::new();
        let inner = self.inner.lock();
        let oldest = inner.oldest_seq();
        let mut link = inner.buckets[inner.bucket(hash)];
        // Each step goes to a strictly older live entry: at most `capacity` steps.
        while link != 0 && out.len() < max {
            let seq = link - 1;
            if seq < oldest {
                break;
            }
            let e = inner.entries[(seq % inner.capacity as u64) as usize];
            if e.hash == hash && (begin..=end).contains(&e.timestamp) && !out.contains(&e.offset) {
                out.push(e.offset);
            }
            link = e.prev;
        }
        drop(inner);
        out.sort_unstable();
        out
    }

    /// Rebuilds the index from the tail of `log` (see the module documentation). Records that
    /// cannot be read are skipped (recovery has already cut the log at the first invalid one).
    pub fn rebuild(&self, log: &CommitLog) -> Result<()> {
        let started = std::time::Instant::now();
        let capacity = self.capacity();
        let (min, end, seg) = (log.min_offset(), log.end_offset(), log.segment_size());
        if end <= min {
            return Ok(());
        }
        let mut segments: Vec<Vec<(u64, u64, i64)>> = Vec::new();
        let mut found = 0usize;
        let mut base = (end - 1) - (end - 1) % seg;
        loop {
            let entries = self.scan_segment(log, base, (base + seg).min(end))?;
            found += entries.len();
            segments.push(entries);
            if found >= capacity || base <= min {
                break;
            }
            base -= seg;
        }
        let mut skip = found.saturating_sub(capacity);
        let mut inner = self.inner.lock();
        for entries in segments.iter().rev() {
            let take = &entries[skip.min(entries.len())..];
            skip -= skip.min(entries.len());
            for &(h, offset, ts) in take {
                inner.push(h, offset, ts);
                inner.last_offset = offset as i64;
                inner.last_timestamp = ts;
            }
        }
        info!(
            entries = inner.entries.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "message index rebuilt from the commit log"
        );
        Ok(())
    }

    /// `(hash, offset, store timestamp)` of every key of the records in `from..to` (one
    /// segment), in order.
    fn scan_segment(&self, log: &CommitLog, from: u64, to: u64) -> Result<Vec<(u64, u64, i64)>> {
        let mut out = Vec::new();
        let mut pos = from;
        while pos + 8 <= to {
            let chunk = log.read(pos, REBUILD_CHUNK.min(to - pos))?;
            let mut at = 0usize;
            while let Some(hdr) = chunk.get(at..at + 8) {
                let size = i32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
                let magic = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                if magic != MAGIC_CODE_V1 && magic != MAGIC_CODE_V2 {
                    // The BLANK record ending a segment (or the end of the data).
                    return Ok(out);
                }
                let size = match usize::try_from(size) {
                    Ok(s) if s >= MIN_RECORD_LEN => s,
                    _ => {
                        warn!(
                            offset = pos + at as u64,
                            "index rebuild stops at a bad record size"
                        );
                        return Ok(out);
                    }
                };
                let Some(rec) = chunk.get(at..at + size) else {
                    if at == 0 {
                        // One record larger than the chunk: read it alone.
                        if pos + size as u64 > to {
                            return Ok(out);
                        }
                        let rec = log.read(pos, size as u64)?;
                        self.scan_record(&rec, pos, &mut out);
                        at = size;
                    }
                    break;
                };
                self.scan_record(rec, pos + at as u64, &mut out);
                at += size;
            }
            pos += at as u64;
        }
        Ok(out)
    }

    fn scan_record(&self, rec: &[u8], offset: u64, out: &mut Vec<(u64, u64, i64)>) {
        let Ok(view) = RecordView::parse(rec) else {
            warn!(offset, "index rebuild skips a record it cannot parse");
            return;
        };
        let Ok(props) = view.properties_str() else {
            return;
        };
        let keys =
            rocketmesh_filters::codec::message::properties::lookup(props, property_keys::KEYS);
        let uniq =
            rocketmesh_filters::codec::message::properties::lookup(props, property_keys::UNIQ_KEY);
        let ts = view.store_timestamp();
        for k in index_keys(keys, uniq) {
            out.push((self.hash(view.topic(), k), offset, ts));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(keys: &str, uniq: Option<&str>) -> Properties {
        let mut p = Properties::new();
        p.insert(property_keys::KEYS, keys);
        if let Some(u) = uniq {
            p.insert(property_keys::UNIQ_KEY, u);
        }
        p
    }

    #[test]
    fn keys_and_unique_keys_are_found_in_offset_order_within_the_time_range() {
        let idx = MessageIndex::new(100);
        let a = props("k1 k2", Some("U1"));
        let b = props("k1", Some("U2"));
        idx.add([
            ("T", &a, 10, 1000),
            ("T", &b, 20, 2000),
            ("X", &b, 30, 3000),
        ]);
        assert_eq!(idx.query("T", "k1", 64, 0, i64::MAX), vec![10, 20]);
        assert_eq!(idx.query("T", "k2", 64, 0, i64::MAX), vec![10]);
        assert_eq!(idx.query("T", "U2", 64, 0, i64::MAX), vec![20]);
        assert_eq!(idx.query("X", "k1", 64, 0, i64::MAX), vec![30]);
        assert_eq!(idx.query("T", "k1", 64, 1500, 2500), vec![20]);
        assert!(idx.query("T", "nope", 64, 0, i64::MAX).is_empty());
        // The newest `max` are kept.
        assert_eq!(idx.query("T", "k1", 1, 0, i64::MAX), vec![20]);
        assert_eq!(idx.last_update(), (3000, 30));
    }

    #[test]
    fn the_oldest_entries_are_evicted_at_capacity() {
        let idx = MessageIndex::new(4);
        let p = props("k", None);
        for i in 0..10u64 {
            idx.add([("T", &p, i, i as i64)]);
        }
        assert_eq!(idx.len(), 4);
        assert_eq!(idx.query("T", "k", 64, 0, i64::MAX), vec![6, 7, 8, 9]);
        let q = props("other", None);
        idx.add([("T", &q, 10, 10)]);
        assert_eq!(idx.query("T", "k", 64, 0, i64::MAX), vec![7, 8, 9]);
        assert_eq!(idx.query("T", "other", 64, 0, i64::MAX), vec![10]);
    }

    #[test]
    fn results_are_capped() {
        let idx = MessageIndex::new(1000);
        let p = props("k", None);
        for i in 0..200u64 {
            idx.add([("T", &p, i, 0)]);
        }
        let r = idx.query("T", "k", usize::MAX, 0, i64::MAX);
        assert_eq!(r.len(), MAX_QUERY_RESULTS);
        assert_eq!(r[0], 200 - MAX_QUERY_RESULTS as u64);
    }

    fn keyed(topic: &str, i: usize) -> rocketmesh_filters::codec::message::MessageExt {
        let mut p = props(&format!("k{} all", i % 3), Some(&format!("U{i}")));
        p.insert(property_keys::TAGS, "t");
        rocketmesh_filters::codec::message::MessageExt {
            topic: topic.to_owned(),
            body: bytes::Bytes::from(vec![b'x'; 300]),
            properties: p,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            ..Default::default()
        }
    }

    fn open(dir: &std::path::Path, capacity: usize) -> std::sync::Arc<super::super::MessageStore> {
        let mut c = super::super::StoreConfig::new(dir);
        c.commit_log_segment_size = 4096;
        c.index_max_entries = capacity;
        super::super::MessageStore::open(c).unwrap()
    }

    #[test]
    fn the_store_indexes_at_put_and_rebuilds_the_same_index_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1000);
        let mut offsets = Vec::new();
        for i in 0..40 {
            offsets.push(store.put(keyed("T", i)).unwrap().commit_log_offset);
        }
        let idx = store.index();
        let k0: Vec<u64> = offsets.iter().copied().step_by(3).collect();
        assert_eq!(idx.query("T", "k0", 64, 0, i64::MAX), k0);
        assert_eq!(idx.query("T", "U7", 64, 0, i64::MAX), vec![offsets[7]]);
        let last = idx.last_update();
        store.shutdown().unwrap();
        drop(store);

        // Reopened (the 40 records span several 4 KiB segments): the same answers.
        let store = open(dir.path(), 1000);
        let idx = store.index();
        assert_eq!(idx.len(), 120);
        assert_eq!(idx.query("T", "k0", 64, 0, i64::MAX), k0);
        assert_eq!(idx.query("T", "U39", 64, 0, i64::MAX), vec![offsets[39]]);
        assert_eq!(idx.last_update(), last);
        store.shutdown().unwrap();
        drop(store);

        // A smaller index keeps the newest entries only.
        let store = open(dir.path(), 30);
        let idx = store.index();
        assert_eq!(idx.len(), 30);
        assert_eq!(
            idx.query("T", "all", 64, 0, i64::MAX),
            offsets[30..].to_vec()
        );
        assert!(idx.query("T", "U0", 64, 0, i64::MAX).is_empty());
    }
}
