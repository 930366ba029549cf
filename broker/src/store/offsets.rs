//! Consumer offsets: `(group, topic, queueId) -> next offset to consume`
//! (`docs/remoting-protocol.md` section 4.6), persisted as JSON in
//! `DIR/config/consumerOffset.json`.
//!
//! The file uses RocketMQ's shape, `{"offsetTable":{"topic@group":{"0":12,"1":5}}}` (with the
//! queue ids as JSON string keys). It is replaced atomically (temporary file, fsync, rename,
//! directory fsync) by [`OffsetStore::persist`], which the store calls periodically from its
//! flush thread and at shutdown.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::util::{read_bounded, validate_group, validate_topic, write_atomic};

/// Largest offsets file loaded (64 MiB).
pub const MAX_OFFSETS_FILE: u64 = 64 << 20;

#[derive(Debug, Default, Serialize, Deserialize)]
struct OffsetFile {
    #[serde(rename = "offsetTable")]
    offset_table: BTreeMap<String, BTreeMap<String, i64>>,
}

type Key = (String, String, i32);

#[derive(Debug, Default)]
struct Inner {
    /// (group, topic, queue id) -> offset.
    table: BTreeMap<Key, i64>,
    dirty: bool,
}

/// The consumer offset table. Thread-safe.
#[derive(Debug)]
pub struct OffsetStore {
    path: PathBuf,
    inner: Mutex<Inner>,
    persist_lock: Mutex<()>,
}

impl OffsetStore {
    /// Loads the table from `path` (empty when the file does not exist). A malformed file is
    /// an error: starting with no offsets would silently make every group re-consume or skip.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let mut table = BTreeMap::new();
        if let Some(data) = read_bounded(&path, MAX_OFFSETS_FILE)? {
            let file: OffsetFile = serde_json::from_slice(&data)
                .map_err(|e| StoreError::corrupt(&path, e.column() as u64, e.to_string()))?;
            for (tg, queues) in file.offset_table {
                let bad = |reason: &str| StoreError::corrupt(&path, 0, format!("{reason}: {tg:?}"));
                let (topic, group) = tg.split_once('@').ok_or_else(|| bad("key without '@'"))?;
                validate_topic(topic)?;
                validate_group(group)?;
                for (qid, offset) in queues {
                    let qid: i32 = qid
                        .parse()
                        .ok()
                        .filter(|q| *q >= 0)
                        .ok_or_else(|| bad("bad queue id"))?;
                    table.insert((group.to_owned(), topic.to_owned(), qid), offset);
                }
            }
        }
        Ok(Self {
            path,
            inner: Mutex::new(Inner {
                table,
                dirty: false,
            }),
            persist_lock: Mutex::new(()),
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `offset` (the next offset to consume) for a group on a queue.
    pub fn commit(&self, group: &str, topic: &str, queue_id: i32, offset: i64) -> Result<()> {
        validate_group(group)?;
        validate_topic(topic)?;
        if queue_id < 0 {
            return Err(StoreError::InvalidQueueId(queue_id));
        }
        let mut inner = self.inner.lock();
        let key = (group.to_owned(), topic.to_owned(), queue_id);
        if inner.table.insert(key, offset) != Some(offset) {
            inner.dirty = true;
        }
        Ok(())
    }

    /// The stored offset, `None` when the group never committed one for this queue.
    pub fn query(&self, group: &str, topic: &str, queue_id: i32) -> Option<i64> {
        self.inner
            .lock()
            .table
            .get(&(group.to_owned(), topic.to_owned(), queue_id))
            .copied()
    }

    /// Every stored offset of a group on a topic, by queue id.
    pub fn query_topic(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        self.inner
            .lock()
            .table
            .iter()
            .filter(|((g, t, _), _)| g == group && t == topic)
            .map(|((_, _, q), o)| (*q, *o))
            .collect()
    }

    /// Topics the group has stored offsets for, sorted (GET_CONSUME_STATS without a topic).
    pub fn topics_of(&self, group: &str) -> Vec<String> {
        let mut topics: Vec<String> = self
            .inner
            .lock()
            .table
            .keys()
            .filter(|(g, _, _)| g == group)
            .map(|(_, t, _)| t.clone())
            .collect();
        topics.dedup();
        topics
    }

    /// Groups with stored offsets on `topic`, sorted (QUERY_TOPIC_CONSUME_BY_WHO).
    pub fn groups_of(&self, topic: &str) -> Vec<String> {
        let mut groups: Vec<String> = self
            .inner
            .lock()
            .table
            .keys()
            .filter(|(_, t, _)| t == topic)
            .map(|(g, _, _)| g.clone())
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }

    /// Removes every offset of a group on a topic; returns how many were removed.
    pub fn remove(&self, group: &str, topic: &str) -> usize {
        let mut inner = self.inner.lock();
        let before = inner.table.len();
        inner
            .table
            .retain(|(g, t, _), _| !(g == group && t == topic));
        let removed = before - inner.table.len();
        if removed > 0 {
            inner.dirty = true;
        }
        removed
    }

    /// True when there are changes not yet persisted.
    pub fn is_dirty(&self) -> bool {
        self.inner.lock().dirty
    }

    /// Writes the table if it changed since the last write; returns whether it wrote.
    pub fn persist(&self) -> Result<bool> {
        let _serial = self.persist_lock.lock();
        let data = {
            let mut inner = self.inner.lock();
            if !inner.dirty {
                return Ok(false);
            }
            inner.dirty = false;
            let mut file = OffsetFile::default();
            for ((group, topic, qid), offset) in &inner.table {
                file.offset_table
                    .entry(format!("{topic}@{group}"))
                    .or_default()
                    .insert(qid.to_string(), *offset);
            }
            serde_json::to_vec_pretty(&file).unwrap_or_default()
        };
        if let Err(e) = write_atomic(&self.path, &data) {
            self.inner.lock().dirty = true;
            return Err(e);
        }
        Ok(true)
    }
}
