//! The orderly-pop table: which messages of each (group, topic, queue) an orderly pop handed
//! out and which of them were acked, persisted in `DIR/config/consumerOrderInfo.json`.
//!
//! It plays the part of Apache's `ConsumerOrderInfoManager`, one [`OrderInfo`] per queue with
//! the same fields (`popTime`, invisible time, the offsets handed out, a next-visible time per
//! offset, a consume count per offset, the commit bits, the attempt id), but not its JSON shape:
//! offsets are stored absolute and the table is a list of entries. What follows from it:
//!
//! * A queue is *blocked* while some offset of its batch is un-acked and not visible again
//!   yet (`popTime + invisibleTime`, or the time CHANGE_MESSAGE_INVISIBLETIME gave that offset).
//!   A pop carrying the attempt id of the batch's pop is not blocked (a client retrying the same
//!   pop gets the same messages, and their counts do not grow).
//! * A new batch replaces the old one; every offset the two share has its consume count raised
//!   by one ([`OrderCounts`]), as `mergeOffsetConsumedCount` does.
//! * An ack sets the offset's bit and yields the queue's next offset: the first un-acked offset
//!   of the batch, or the one after the batch once every bit is set; then the entry is dropped
//!   (Apache keeps it; nothing reads a fully acked entry but its consume counts, and those only
//!   matter for offsets handed out again, which a fully acked batch never is).
//!
//! Bounded: at most [`MAX_ORDER_QUEUES`] queues. A new queue over the limit first evicts the
//! entry idle longest among those that block nothing (its counts are lost, no message is);
//! when every entry blocks, the queue is not served ([`InstallError::Full`]). At most
//! [`MAX_BATCH`] offsets per batch (a pop returns at most 32).
//!
//! Persistence: [`OrderTable::persist`] replaces the file atomically (temporary file, fsync,
//! rename); the pop and ack paths call it, with the consumer offsets, before they answer, so a
//! batch a client was given, and an ack a client was told succeeded, survive a crash. A
//! malformed file stops the broker from starting, as a malformed offsets file does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::store::util::{read_bounded, validate_group, validate_topic, write_atomic};
use super::store::StoreError;

/// Most queues tracked at once.
pub const MAX_ORDER_QUEUES: usize = 4096;
/// Most offsets in one batch (the commit bits are one `u64`).
pub const MAX_BATCH: usize = 64;
/// Largest order file loaded (16 MiB).
pub const MAX_ORDER_FILE: u64 = 16 << 20;
/// Longest attempt id kept (longer ones are cut; they only need to compare equal).
const MAX_ATTEMPT_ID: usize = 128;

/// (group, topic, queue id).
pub type OrderKey = (String, String, i32);

/// The orderly batch of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderInfo {
    /// Pop time of the batch (ms); acks and change-invisible requests must name it.
    pub pop_time: i64,
    /// Invisible time of the batch (ms).
    pub invisible_time: i64,
    /// Queue offsets handed out, ascending.
    pub offsets: Vec<i64>,
    /// Next visible time per offset, set by CHANGE_MESSAGE_INVISIBLETIME.
    #[serde(default)]
    pub next_visible: BTreeMap<i64, i64>,
    /// How many times each offset was handed out before this batch (only non-zero counts).
    #[serde(default)]
    pub consumed: BTreeMap<i64, i32>,
    /// Last pop or ack (ms).
    pub last_consume: i64,
    /// Bit `i` set: `offsets[i]` is acked.
    #[serde(default)]
    pub commit_bits: u64,
    /// Attempt id of the pop that handed the batch out.
    #[serde(default)]
    pub attempt_id: Option<String>,
}

impl OrderInfo {
    fn acked(&self, i: usize) -> bool {
        i < 64 && self.commit_bits & (1 << i) != 0
    }

    /// When `offsets[i]` becomes visible again.
    fn visible_at(&self, i: usize) -> i64 {
        let o = self.offsets[i];
        self.next_visible
            .get(&o)
            .copied()
            .unwrap_or_else(|| self.pop_time.saturating_add(self.invisible_time))
    }

    /// `Some(t)`: blocked until `t` (the latest visible time among un-acked offsets not yet
    /// visible); `None`: not blocked.
    pub fn blocked_until(&self, now: i64) -> Option<i64> {
        (0..self.offsets.len())
            .filter(|&i| !self.acked(i))
            .map(|i| self.visible_at(i))
            .filter(|&t| now < t)
            .max()
    }

    /// The queue's next offset: the first un-acked offset, or the one after the batch.
    pub fn next_offset(&self) -> i64 {
        match (0..self.offsets.len()).find(|&i| !self.acked(i)) {
            Some(i) => self.offsets[i],
            None => self.offsets.last().map_or(0, |o| o.saturating_add(1)),
        }
    }

    fn fully_acked(&self) -> bool {
        (0..self.offsets.len()).all(|i| self.acked(i))
    }

    fn validate(&self) -> Result<(), &'static str> {
        if self.offsets.is_empty() {
            return Err("no offsets");
        }
        if self.offsets.len() > MAX_BATCH {
            return Err("too many offsets");
        }
        if self.offsets.windows(2).any(|w| w[0] >= w[1]) || self.offsets[0] < 0 {
            return Err("offsets not ascending");
        }
        if self.next_visible.len() > MAX_BATCH || self.consumed.len() > MAX_BATCH {
            return Err("too many per-offset entries");
        }
        Ok(())
    }
}

/// Consume counts of a new batch, for `orderCountInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderCounts {
    /// Offsets handed out before, with their count (ascending).
    pub per_offset: Vec<(i64, i32)>,
    /// The smallest count of the batch (0 when it holds a new offset).
    pub min: i32,
}

impl OrderCounts {
    /// The count of one offset of the batch.
    pub fn of(&self, offset: i64) -> i32 {
        self.per_offset
            .iter()
            .find(|(o, _)| *o == offset)
            .map_or(0, |(_, c)| *c)
    }
}

/// What a pop may do with a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Read it; `version` must still be current when the batch is installed.
    Open {
        /// Version of the entry seen (`None`: no entry).
        version: Option<u64>,
    },
    /// Another consumer holds un-acked messages until this time (ms).
    Blocked {
        /// When the block ends if nothing changes.
        until: i64,
    },
}

/// Why a batch was not installed (the pop then hands nothing out from that queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// An ack or another pop changed the entry since the gate was read.
    #[error("the queue's order state changed meanwhile")]
    Changed,
    /// Every tracked queue holds un-acked messages.
    #[error("too many queues popped orderly ({MAX_ORDER_QUEUES})")]
    Full,
    /// No offsets, or more than [`MAX_BATCH`].
    #[error("bad batch")]
    BadBatch,
}

/// Result of an orderly ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// No batch for the queue (a late ack): nothing changes.
    NoBatch,
    /// The batch has another pop time (the ack is for an older batch): nothing changes.
    OtherBatch,
    /// The offset is not in the batch.
    NotInBatch,
    /// Acked; the queue's next offset, and whether the queue is free for the next pop now.
    Next {
        /// First un-acked offset, or the one after the batch.
        offset: i64,
        /// No longer blocked.
        unblocked: bool,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    info: OrderInfo,
    /// In memory only: changes on every update of the entry.
    version: u64,
}

#[derive(Debug, Default)]
struct Inner {
    table: BTreeMap<OrderKey, Entry>,
    /// Bumped by every change; entry versions are taken from it.
    generation: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileEntry {
    group: String,
    topic: String,
    queue_id: i32,
    info: OrderInfo,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OrderFile {
    table: Vec<FileEntry>,
}

/// The orderly-pop table. Thread-safe.
#[derive(Debug)]
pub struct OrderTable {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Generation last written to the file.
    written: Mutex<u64>,
}

impl OrderTable {
    /// Loads `DIR/config/consumerOrderInfo.json` (empty when absent).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("config").join("consumerOrderInfo.json");
        let mut table = BTreeMap::new();
        if let Some(data) = read_bounded(&path, MAX_ORDER_FILE)? {
            let file: OrderFile = serde_json::from_slice(&data)
                .map_err(|e| StoreError::corrupt(&path, e.column() as u64, e.to_string()))?;
            if file.table.len() > MAX_ORDER_QUEUES {
                return Err(StoreError::corrupt(&path, 0, "too many entries"));
            }
            for e in file.table {
                validate_group(&e.group)?;
                validate_topic(&e.topic)?;
                let bad = |reason: &str| {
                    let what = format!("{}@{}:{}: {reason}", e.topic, e.group, e.queue_id);
                    StoreError::corrupt(&path, 0, what)
                };
                if e.queue_id < 0 {
                    return Err(bad("negative queue id"));
                }
                e.info.validate().map_err(bad)?;
                let entry = Entry {
                    info: e.info,
                    version: 0,
                };
                table.insert((e.group, e.topic, e.queue_id), entry);
            }
        }
        Ok(Self {
            path,
            inner: Mutex::new(Inner {
                table,
                generation: 0,
            }),
            written: Mutex::new(0),
        })
    }

    /// Queues tracked.
    pub fn len(&self) -> usize {
        self.inner.lock().table.len()
    }

    /// True when no queue is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch of a queue (introspection).
    pub fn get(&self, key: &OrderKey) -> Option<OrderInfo> {
        self.inner.lock().table.get(key).map(|e| e.info.clone())
    }

    /// May a pop with `attempt_id` read the queue now?
    pub fn gate(&self, key: &OrderKey, attempt_id: Option<&str>, now: i64) -> Gate {
        let inner = self.inner.lock();
        let Some(e) = inner.table.get(key) else {
            return Gate::Open { version: None };
        };
        let same_attempt = attempt_id.is_some() && e.info.attempt_id.as_deref() == attempt_id;
        match e.info.blocked_until(now) {
            Some(until) if !same_attempt => Gate::Blocked { until },
            _ => Gate::Open {
                version: Some(e.version),
            },
        }
    }

    /// Records the batch a pop read (offsets ascending), if the entry is still at `expected`;
    /// `then` runs under the table's lock once it is recorded (the caller commits the queue's
    /// consumer offset there, so no ack can slip between the two).
    #[allow(clippy::too_many_arguments)]
    pub fn install(
        &self,
        key: &OrderKey,
        expected: Option<u64>,
        attempt_id: Option<&str>,
        pop_time: i64,
        invisible_time: i64,
        offsets: &[i64],
        now: i64,
        then: impl FnOnce(),
    ) -> Result<OrderCounts, InstallError> {
        let mut inner = self.inner.lock();
        let current = inner.table.get(key);
        if current.map(|e| e.version) != expected {
            return Err(InstallError::Changed);
        }
        let attempt_id = attempt_id.map(|a| a.chars().take(MAX_ATTEMPT_ID).collect::<String>());
        let mut info = OrderInfo {
            pop_time,
            invisible_time,
            offsets: offsets.to_vec(),
            next_visible: BTreeMap::new(),
            consumed: BTreeMap::new(),
            last_consume: now,
            commit_bits: 0,
            attempt_id,
        };
        info.validate().map_err(|_| InstallError::BadBatch)?;
        if let Some(prev) = current.map(|e| &e.info) {
            if prev.attempt_id.is_some() && prev.attempt_id == info.attempt_id {
                info.consumed = prev.consumed.clone();
            } else {
                for &o in &info.offsets {
                    if prev.offsets.binary_search(&o).is_ok() {
                        let c = prev.consumed.get(&o).copied().unwrap_or(0);
                        info.consumed.insert(o, c.saturating_add(1));
                    }
                }
            }
        } else if inner.table.len() >= MAX_ORDER_QUEUES {
            let idle = inner
                .table
                .iter()
                .filter(|(_, e)| e.info.blocked_until(now).is_none())
                .min_by_key(|(_, e)| e.info.last_consume)
                .map(|(k, _)| k.clone());
            match idle {
                Some(k) => {
                    tracing::debug!(group = %k.0, topic = %k.1, queue = k.2, "order info evicted");
                    inner.table.remove(&k);
                }
                None => return Err(InstallError::Full),
            }
        }
        let counts = OrderCounts {
            per_offset: info.consumed.iter().map(|(o, c)| (*o, *c)).collect(),
            min: if info.consumed.len() == info.offsets.len() {
                info.consumed.values().copied().min().unwrap_or(0)
            } else {
                0
            },
        };
        inner.generation += 1;
        let version = inner.generation;
        inner.table.insert(key.clone(), Entry { info, version });
        then();
        Ok(counts)
    }

    /// Acks `offset` of the batch popped at `pop_time`; on [`Commit::Next`], `then` runs under
    /// the table's lock with the queue's next offset (the caller commits it there).
    pub fn commit(
        &self,
        key: &OrderKey,
        offset: i64,
        pop_time: i64,
        now: i64,
        then: impl FnOnce(i64),
    ) -> Commit {
        let mut inner = self.inner.lock();
        let version = inner.generation + 1;
        let Some(e) = inner.table.get_mut(key) else {
            return Commit::NoBatch;
        };
        if e.info.pop_time != pop_time {
            return Commit::OtherBatch;
        }
        let Some(i) = e.info.offsets.iter().position(|&o| o == offset) else {
            return Commit::NotInBatch;
        };
        e.info.commit_bits |= 1 << i;
        e.info.last_consume = now;
        e.version = version;
        let next = e.info.next_offset();
        let unblocked = e.info.blocked_until(now).is_none();
        let done = e.info.fully_acked();
        inner.generation = version;
        if done {
            inner.table.remove(key);
        }
        then(next);
        Commit::Next {
            offset: next,
            unblocked,
        }
    }

    /// CHANGE_MESSAGE_INVISIBLETIME of an orderly message: `offset` of the batch popped at
    /// `pop_time` becomes visible again at `visible_at`. False when there is no such batch.
    pub fn extend(&self, key: &OrderKey, offset: i64, pop_time: i64, visible_at: i64) -> bool {
        let mut inner = self.inner.lock();
        let version = inner.generation + 1;
        let Some(e) = inner.table.get_mut(key) else {
            return false;
        };
        if e.info.pop_time != pop_time || !e.info.offsets.contains(&offset) {
            return false;
        }
        e.info.next_visible.insert(offset, visible_at);
        e.version = version;
        inner.generation = version;
        true
    }

    /// Writes the table if it changed since the last write; returns whether it wrote. Writes
    /// never go backwards: a writer that finds a newer table already written skips.
    pub fn persist(&self) -> Result<bool, StoreError> {
        let mut written = self.written.lock();
        let (generation, data) = {
            let inner = self.inner.lock();
            if inner.generation <= *written {
                return Ok(false);
            }
            let file = OrderFile {
                table: inner
                    .table
                    .iter()
                    .map(|((g, t, q), e)| FileEntry {
                        group: g.clone(),
                        topic: t.clone(),
                        queue_id: *q,
                        info: e.info.clone(),
                    })
                    .collect(),
            };
            let data =
                serde_json::to_vec(&file).map_err(|e| StoreError::Internal(e.to_string()))?;
            (inner.generation, data)
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        write_atomic(&self.path, &data)?;
        *written = generation;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(q: i32) -> OrderKey {
        ("g".into(), "T".into(), q)
    }

    fn install(t: &OrderTable, q: i32, pop_time: i64, offs: &[i64]) -> OrderCounts {
        let v = match t.gate(&key(q), None, pop_time) {
            Gate::Open { version } => version,
            Gate::Blocked { .. } => panic!("blocked"),
        };
        t.install(&key(q), v, None, pop_time, 1_000, offs, pop_time, || {})
            .unwrap()
    }

    #[test]
    fn blocks_until_acked_or_visible_and_counts_redeliveries() {
        let dir = tempfile::tempdir().unwrap();
        let t = OrderTable::open(dir.path()).unwrap();
        let c = install(&t, 0, 10_000, &[0, 1, 2]);
        assert_eq!(c, OrderCounts::default());
        assert_eq!(
            t.gate(&key(0), None, 10_500),
            Gate::Blocked { until: 11_000 }
        );
        // another queue is not blocked
        assert_eq!(t.gate(&key(1), None, 10_500), Gate::Open { version: None });
        // ack 0: next offset 1, still blocked
        let mut committed = None;
        let r = t.commit(&key(0), 0, 10_000, 10_600, |n| committed = Some(n));
        assert_eq!(
            r,
            Commit::Next {
                offset: 1,
                unblocked: false
            }
        );
        assert_eq!(committed, Some(1));
        // an ack naming another pop time or offset changes nothing
        assert_eq!(
            t.commit(&key(0), 1, 9_999, 10_600, |_| {}),
            Commit::OtherBatch
        );
        assert_eq!(
            t.commit(&key(0), 7, 10_000, 10_600, |_| {}),
            Commit::NotInBatch
        );
        // expired: open again; the same offsets come back counted once
        assert!(matches!(
            t.gate(&key(0), None, 11_000),
            Gate::Open { version: Some(_) }
        ));
        let c = install(&t, 0, 11_000, &[1, 2, 3]);
        assert_eq!(c.per_offset, vec![(1, 1), (2, 1)]);
        assert_eq!(c.min, 0, "offset 3 is new");
        let c = install(&t, 0, 12_000, &[1, 2]);
        assert_eq!(c.per_offset, vec![(1, 2), (2, 2)]);
        assert_eq!(c.min, 2);
        assert_eq!(c.of(2), 2);
        // ack everything: next offset after the batch, entry dropped
        t.commit(&key(0), 1, 12_000, 12_100, |_| {});
        let r = t.commit(&key(0), 2, 12_000, 12_100, |_| {});
        assert_eq!(
            r,
            Commit::Next {
                offset: 3,
                unblocked: true
            }
        );
        assert!(t.is_empty());
        assert_eq!(
            t.commit(&key(0), 2, 12_000, 12_100, |_| {}),
            Commit::NoBatch
        );
    }

    #[test]
    fn same_attempt_is_not_blocked_and_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let t = OrderTable::open(dir.path()).unwrap();
        let k = key(0);
        t.install(&k, None, Some("a1"), 1_000, 5_000, &[4, 5], 1_000, || {})
            .unwrap();
        assert!(matches!(
            t.gate(&k, Some("a2"), 2_000),
            Gate::Blocked { .. }
        ));
        let Gate::Open { version } = t.gate(&k, Some("a1"), 2_000) else {
            panic!("the same attempt is let through");
        };
        let c = t
            .install(&k, version, Some("a1"), 2_000, 5_000, &[4, 5], 2_000, || {})
            .unwrap();
        assert_eq!(c, OrderCounts::default());
    }

    #[test]
    fn change_invisible_extends_the_block_and_versions_guard_installs() {
        let dir = tempfile::tempdir().unwrap();
        let t = OrderTable::open(dir.path()).unwrap();
        let k = key(0);
        install(&t, 0, 1_000, &[0, 1]);
        assert!(t.extend(&k, 1, 1_000, 9_000));
        assert!(!t.extend(&k, 1, 999, 9_000), "another batch");
        assert_eq!(t.gate(&k, None, 5_000), Gate::Blocked { until: 9_000 });
        let Gate::Open { version } = t.gate(&k, None, 9_000) else {
            panic!("visible again at 9000");
        };
        // an ack between the gate and the install makes the install fail
        t.commit(&k, 0, 1_000, 9_000, |_| {});
        assert_eq!(
            t.install(&k, version, None, 9_001, 1_000, &[1], 9_001, || {}),
            Err(InstallError::Changed)
        );
    }

    #[test]
    fn bounded_and_evicts_only_entries_that_block_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = OrderTable::open(dir.path()).unwrap();
        for q in 0..MAX_ORDER_QUEUES as i32 {
            t.install(&key(q), None, None, 1_000, 1_000, &[0], 1_000, || {})
                .unwrap();
        }
        let extra: OrderKey = ("g".into(), "T".into(), MAX_ORDER_QUEUES as i32);
        assert_eq!(
            t.install(&extra, None, None, 1_500, 1_000, &[0], 1_500, || {}),
            Err(InstallError::Full)
        );
        // once expired, one is evicted for the newcomer
        t.install(&extra, None, None, 3_000, 1_000, &[0], 3_000, || {})
            .unwrap();
        assert_eq!(t.len(), MAX_ORDER_QUEUES);
    }

    #[test]
    fn persists_and_reloads_and_rejects_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = OrderTable::open(dir.path()).unwrap();
        install(&t, 3, 1_000, &[7, 8, 9]);
        t.commit(&key(3), 7, 1_000, 1_100, |_| {});
        assert!(t.extend(&key(3), 8, 1_000, 50_000));
        assert!(t.persist().unwrap());
        assert!(!t.persist().unwrap(), "unchanged: not written again");
        let again = OrderTable::open(dir.path()).unwrap();
        assert_eq!(again.get(&key(3)), t.get(&key(3)));
        assert_eq!(
            again.gate(&key(3), None, 2_000),
            Gate::Blocked { until: 50_000 }
        );

        let path = dir.path().join("config").join("consumerOrderInfo.json");
        for bad in [
            "{",
            r#"{"table":[{"group":"g","topic":"T","queueId":0,"info":{"popTime":1,"invisibleTime":1,"offsets":[],"lastConsume":1}}]}"#,
            r#"{"table":[{"group":"g/..","topic":"T","queueId":0,"info":{"popTime":1,"invisibleTime":1,"offsets":[1],"lastConsume":1}}]}"#,
            r#"{"table":[{"group":"g","topic":"T","queueId":-1,"info":{"popTime":1,"invisibleTime":1,"offsets":[1],"lastConsume":1}}]}"#,
            r#"{"table":[{"group":"g","topic":"T","queueId":0,"info":{"popTime":1,"invisibleTime":1,"offsets":[2,1],"lastConsume":1}}]}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(OrderTable::open(dir.path()).is_err(), "{bad}");
        }
    }
}
