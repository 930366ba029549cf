//! The broker's durable message store (`docs/design.md` section 5).
//!
//! Layout under the data directory:
//!
//! | path | contents |
//! |---|---|
//! | `commitlog/{20-digit start offset}` | [`CommitLog`] segments: stored records (protocol section 5.1) |
//! | `consumequeue/{topic}/{queueId}/{20-digit start index}` | [`ConsumeQueue`] files, 20-byte entries |
//! | `checkpoint` | [`StoreCheckpoint`]: commit log offset up to which the consume queues are complete |
//! | `config/consumerOffset.json` | [`OffsetStore`] |
//! | `pop/checkpoint.log` | [`PopStore`] |
//!
//! [`MessageStore`] ties them together: it is `Send + Sync`, shared as `Arc<MessageStore>`,
//! synchronous inside (std mutexes, file I/O under them), with asynchronous durability waiting
//! ([`MessageStore::wait_durable`]). A background flush thread fsyncs: in
//! [`FlushMode::Sync`] as soon as there are unflushed writes (group commit: one round of fsyncs
//! covers every write made before it started), in [`FlushMode::Async`] every interval. A round
//! fsyncs the commit log segments first, then the consume queue files, then writes the
//! checkpoint, then publishes the new flushed offset. It also fsyncs the pop checkpoint log and
//! persists consumer offsets periodically.
//!
//! Recovery on open (see [`MessageStore::open`]): the commit log tail is validated and a torn
//! tail cut off, corrupt data before the tail is moved to `.corrupt` files, and the consume
//! queues are brought in line with the commit log: from the checkpoint when it and the queue
//! files look intact, otherwise rebuilt from the whole commit log.

pub mod checkpoint;
pub mod commit_log;
pub mod consume_queue;
pub mod error;
pub mod offsets;
pub mod pop_store;
pub mod util;

#[cfg(test)]
mod tests;

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rocketmesh_filters::codec::message::record::store_timestamp_position;
use rocketmesh_filters::codec::message::{MessageExt, RecordView};
use tokio::sync::watch;

use super::long_poll::ArrivalHub;
use tracing::{error, info, warn};

pub use checkpoint::StoreCheckpoint;
pub use commit_log::{Appended, CommitLog, RecoveryReport, ScannedRecord};
pub use consume_queue::{ConsumeQueue, CqEntry};
pub use error::{Result, StoreError};
pub use offsets::OffsetStore;
pub use pop_store::{AckOutcome, ChangeInvisibleOutcome, PopCheckpoint, PopKey, PopStore};
pub use util::{validate_group, validate_topic};

/// Most messages one [`MessageStore::get_messages`] call returns.
pub const MAX_PULL_MESSAGES: usize = 32;
/// Most record bytes one [`MessageStore::get_messages`] call returns (at least one record is
/// always returned when one matches).
pub const MAX_PULL_BYTES: usize = 256 * 1024;
/// Most consume queue entries one [`MessageStore::get_messages`] call scans.
pub const MAX_SCAN_ENTRIES: u64 = 800;
/// Default maximum message body size: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 << 20;

/// When the flush thread fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Every `interval`; callers need not wait for durability.
    Async {
        /// Time between flush rounds.
        interval: Duration,
    },
    /// Group commit: as soon as there are unflushed writes. Callers await
    /// [`MessageStore::wait_durable`] before acknowledging.
    Sync,
}

impl Default for FlushMode {
    fn default() -> Self {
        Self::Async {
            interval: Duration::from_millis(200),
        }
    }
}

/// Store configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root data directory.
    pub data_dir: PathBuf,
    /// Commit log segment size in bytes (default 64 MiB).
    pub commit_log_segment_size: u64,
    /// Entries per consume queue file (default 300 000).
    pub consume_queue_segment_entries: u64,
    /// Flush mode (default async, 200 ms).
    pub flush_mode: FlushMode,
    /// Largest message body accepted (default 4 MiB).
    pub max_message_size: usize,
    /// How often consumer offsets are persisted (default 5 s).
    pub offsets_persist_interval: Duration,
    /// Most live pop checkpoints (default 100 000).
    pub max_pop_checkpoints: usize,
    /// Pop checkpoint log lines before compaction is considered (default 10 000).
    pub pop_log_compact_threshold: usize,
    /// Flush latency and size handles (no-ops by default).
    pub metrics: crate::metrics::StoreMetrics,
}

impl StoreConfig {
    /// The defaults, with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            commit_log_segment_size: commit_log::DEFAULT_SEGMENT_SIZE,
            consume_queue_segment_entries: consume_queue::DEFAULT_ENTRIES_PER_SEGMENT,
            flush_mode: FlushMode::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            offsets_persist_interval: Duration::from_secs(5),
            max_pop_checkpoints: 100_000,
            pop_log_compact_threshold: 10_000,
            metrics: crate::metrics::StoreMetrics::default(),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StoreError::InvalidConfig(m));
        if let FlushMode::Async { interval } = self.flush_mode {
            if interval.is_zero() {
                return bad("async flush interval must not be zero".into());
            }
        }
        if self.offsets_persist_interval.is_zero() {
            return bad("offsets persist interval must not be zero".into());
        }
        if self.max_message_size == 0 || self.max_message_size > i32::MAX as usize {
            return bad(format!(
                "max message size {} out of range",
                self.max_message_size
            ));
        }
        Ok(())
    }
}

/// Where a message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// Physical offset of the record.
    pub commit_log_offset: u64,
    /// Logical offset in its consume queue.
    pub queue_offset: i64,
    /// Record size.
    pub size: u32,
    /// Store timestamp written in the record (ms).
    pub store_timestamp: i64,
    /// offsetMsgId (store host + physical offset).
    pub msg_id: String,
}

impl PutResult {
    /// Physical offset just past the record: pass it to [`MessageStore::wait_durable`].
    pub fn end_offset(&self) -> u64 {
        self.commit_log_offset + u64::from(self.size)
    }
}

/// Outcome of [`MessageStore::get_messages`] (RocketMQ `GetMessageStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    /// Records were found.
    Found,
    /// The queue has never had a message (max offset 0).
    NoMessageInQueue,
    /// The offset equals the max offset: nothing new yet.
    OffsetOverflowOne,
    /// The offset is beyond the max offset.
    OffsetOverflowBadly,
    /// The offset is below the min offset.
    OffsetTooSmall,
    /// Entries were scanned but the filter rejected them all.
    NoMatchedMessage,
    /// The queue does not exist.
    NoMatchedLogicQueue,
}

/// Result of [`MessageStore::get_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// Status.
    pub status: GetStatus,
    /// Whole stored records, in queue order (concatenated they form a Pull body).
    pub records: Vec<Bytes>,
    /// The offset to pull from next.
    pub next_begin_offset: i64,
    /// The queue's min offset.
    pub min_offset: i64,
    /// The queue's max offset.
    pub max_offset: i64,
}

impl GetResult {
    /// The records concatenated: a Pull response body.
    pub fn body(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.total_bytes());
        for r in &self.records {
            b.extend_from_slice(r);
        }
        b.freeze()
    }

    /// Total size of the records.
    pub fn total_bytes(&self) -> usize {
        self.records.iter().map(Bytes::len).sum()
    }
}

/// Counters of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// `put` / `put_batch` calls that succeeded.
    pub puts: u64,
    /// Messages stored.
    pub messages: u64,
    /// Flush rounds that synced something (each covers every write made before it).
    pub flushes: u64,
    /// fsync / fdatasync calls made by flush rounds (files and directories).
    pub fsyncs: u64,
    /// Commit log offset known durable.
    pub flushed_offset: u64,
    /// Commit log end offset.
    pub written_offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Durable {
    offset: u64,
    failed: bool,
    stopped: bool,
}

#[derive(Debug, Default)]
struct FlushFlags {
    pending: bool,
    stop: bool,
}

#[derive(Debug, Default)]
struct FlushSignal {
    flags: Mutex<FlushFlags>,
    cv: Condvar,
}

impl FlushSignal {
    fn lock(&self) -> MutexGuard<'_, FlushFlags> {
        self.flags.lock()
    }
}

type QueueKey = (String, i32);

#[derive(Debug, Default)]
struct WriteState {
    /// Queues written since the last flush round.
    dirty: HashMap<QueueKey, Arc<ConsumeQueue>>,
    /// Sum of the max offsets of all queues.
    total_entries: u64,
}

#[derive(Debug, Default)]
struct FlushProgress {
    flushed: u64,
    last_checkpoint: Option<StoreCheckpoint>,
}

/// The message store. See the module documentation.
#[derive(Debug)]
pub struct MessageStore {
    config: StoreConfig,
    commit_log: CommitLog,
    cq_root: PathBuf,
    checkpoint_path: PathBuf,
    queues: RwLock<HashMap<QueueKey, Arc<ConsumeQueue>>>,
    write: Mutex<WriteState>,
    flush_progress: Mutex<FlushProgress>,
    offsets: OffsetStore,
    pop: PopStore,
    durable_tx: watch::Sender<Durable>,
    arrivals: ArrivalHub,
    signal: Arc<FlushSignal>,
    flush_thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    poisoned: AtomicBool,
    puts: AtomicU64,
    messages: AtomicU64,
    flushes: AtomicU64,
    fsyncs: AtomicU64,
}

/// Re-indexes commit log records into consume queues during recovery.
struct Dispatcher<'a> {
    root: &'a Path,
    per_segment: u64,
    queues: &'a mut HashMap<QueueKey, Arc<ConsumeQueue>>,
    /// Full rebuild: every record is visited; otherwise a gap aborts the walk.
    full: bool,
    /// Full rebuild: per queue, the offset after the last record seen.
    seen: HashMap<QueueKey, u64>,
    appended: u64,
}

impl Dispatcher<'_> {
    fn dispatch(&mut self, r: &ScannedRecord) -> Result<bool> {
        if validate_topic(&r.topic).is_err() || r.queue_id < 0 || r.queue_offset < 0 {
            warn!(
                offset = r.offset,
                topic = %r.topic,
                queue_id = r.queue_id,
                "commit log record with an invalid topic, queue id or queue offset is not indexed"
            );
            return Ok(true);
        }
        let key = (r.topic.clone(), r.queue_id);
        let q = match self.queues.get(&key) {
            Some(q) => Arc::clone(q),
            None => {
                let q = Arc::new(ConsumeQueue::create(
                    self.root,
                    &r.topic,
                    r.queue_id,
                    self.per_segment,
                )?);
                self.queues.insert(key.clone(), Arc::clone(&q));
                q
            }
        };
        let o = r.queue_offset as u64;
        let entry = CqEntry {
            commit_log_offset: r.offset as i64,
            size: r.size as i32,
            tags_code: r.tags_code,
        };
        let max = q.max_offset();
        if o == max {
            q.append(o, entry)?;
            self.appended += 1;
        } else if o < max {
            if o >= q.min_offset() && q.entry(o)? != Some(entry) {
                warn!(
                    topic = %r.topic,
                    queue_id = r.queue_id,
                    queue_offset = o,
                    "consume queue entry disagrees with the commit log; truncating and re-indexing"
                );
                q.truncate(o)?;
                q.append(o, entry)?;
                self.appended += 1;
            }
        } else if !self.full {
            // Entries are missing before this record: index everything again.
            return Ok(false);
        } else {
            error!(
                offset = r.offset,
                topic = %r.topic,
                queue_id = r.queue_id,
                queue_offset = o,
                expected = max,
                "commit log record is out of sequence for its queue and is not indexed"
            );
            return Ok(true);
        }
        if self.full {
            self.seen.insert(key, o + 1);
        }
        Ok(true)
    }
}

impl MessageStore {
    /// Opens the store under `config.data_dir` (creating it), recovers it and starts the flush
    /// thread.
    ///
    /// Recovery:
    /// 1. The commit log is walked from the segment holding the checkpoint offset (from the
    ///    first segment without a usable checkpoint), checking every record; the log is cut at
    ///    the first invalid record ([`CommitLog::recover`] documents the torn-tail /
    ///    corruption policy: a torn tail is truncated, corruption before the tail ends the log
    ///    there and the rest is kept in `.corrupt` files).
    /// 2. Consume queues are loaded; one that fails to load is deleted. Records after the
    ///    checkpoint are re-indexed; entries pointing past the end of the log are dropped, and
    ///    the first and last entry of every queue are checked against the commit log.
    /// 3. When there is no valid checkpoint, a queue was deleted or is missing (fewer queues or
    ///    entries than the checkpoint recorded), an entry fails the check, or a record after
    ///    the checkpoint does not follow its queue's last entry, every queue is rebuilt from
    ///    the whole commit log instead (existing matching entries are kept).
    /// 4. Everything is fsynced and a new checkpoint written before `open` returns.
    pub fn open(config: StoreConfig) -> Result<Arc<Self>> {
        config.validate()?;
        let dir = config.data_dir.clone();
        util::create_dir_all(&dir)?;
        let commit_log = CommitLog::open(dir.join("commitlog"), config.commit_log_segment_size)?;
        let cq_root = dir.join("consumequeue");
        util::create_dir_all(&cq_root)?;
        let checkpoint_path = dir.join("checkpoint");
        let ckpt = StoreCheckpoint::load(&checkpoint_path);
        let per_segment = config.consume_queue_segment_entries;

        let started = Instant::now();
        let (mut queues, dropped) = Self::load_queues(&cq_root, per_segment)?;
        let mut full = match ckpt {
            None => true,
            Some(c) => {
                let entries: u64 = queues.values().map(|q| q.max_offset()).sum();
                dropped || (queues.len() as u64) < c.queues || entries < c.queue_entries
            }
        };
        let report = loop {
            let from = if full {
                0
            } else {
                ckpt.map_or(0, |c| c.commit_log_offset)
            };
            let mut d = Dispatcher {
                root: &cq_root,
                per_segment,
                queues: &mut queues,
                full,
                seen: HashMap::new(),
                appended: 0,
            };
            let report = commit_log.recover(from, &mut |r| d.dispatch(r))?;
            if report.aborted {
                info!("consume queues miss entries before the checkpoint; rebuilding them from the whole commit log");
                full = true;
                continue;
            }
            let end = report.end;
            if full {
                let seen = std::mem::take(&mut d.seen);
                Self::trim_to_seen(&cq_root, &mut queues, &seen)?;
            } else if !Self::trim_and_check(&commit_log, &queues, end)?
                || queues.values().map(|q| q.max_offset()).sum::<u64>()
                    < ckpt.map_or(0, |c| c.queue_entries)
            {
                info!("consume queue entries disagree with the commit log; rebuilding them from the whole commit log");
                full = true;
                continue;
            }
            break report;
        };
        info!(
            commit_log_end = report.end,
            records_walked = report.records,
            truncated_bytes = report.truncated_bytes,
            full_rebuild = full,
            queues = queues.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "message store recovered"
        );

        let offsets = OffsetStore::load(dir.join("config").join("consumerOffset.json"))?;
        util::create_dir_all(&dir.join("config"))?;
        let pop = PopStore::open(
            dir.join("pop").join("checkpoint.log"),
            config.max_pop_checkpoints,
            config.pop_log_compact_threshold,
        )?;

        let total_entries = queues.values().map(|q| q.max_offset()).sum();
        let dirty = queues.clone();
        let (durable_tx, _) = watch::channel(Durable {
            offset: 0,
            failed: false,
            stopped: false,
        });
        let store = Arc::new(Self {
            commit_log,
            cq_root,
            checkpoint_path,
            queues: RwLock::new(queues),
            write: Mutex::new(WriteState {
                dirty,
                total_entries,
            }),
            flush_progress: Mutex::new(FlushProgress::default()),
            offsets,
            pop,
            durable_tx,
            arrivals: ArrivalHub::new(),
            signal: Arc::new(FlushSignal::default()),
            flush_thread: Mutex::new(None),
            closed: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            puts: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            config,
        });
        // Make everything recovered durable (and write a fresh checkpoint) before serving.
        store.flush()?;
        let weak = Arc::downgrade(&store);
        let signal = Arc::clone(&store.signal);
        let mode = store.config.flush_mode;
        let persist_every = store.config.offsets_persist_interval;
        let handle = std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || flush_loop(weak, signal, mode, persist_every))
            .map_err(|e| StoreError::io(&dir, e))?;
        *store.flush_thread.lock() = Some(handle);
        Ok(store)
    }

    /// Loads every consume queue directory; deletes (and reports) those that fail to load.
    fn load_queues(
        root: &Path,
        per_segment: u64,
    ) -> Result<(HashMap<QueueKey, Arc<ConsumeQueue>>, bool)> {
        let mut queues = HashMap::new();
        let mut dropped = false;
        for topic_entry in fs::read_dir(root).map_err(|e| StoreError::io(root, e))? {
            let topic_entry = topic_entry.map_err(|e| StoreError::io(root, e))?;
            let Some(topic) = topic_entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let topic_dir = topic_entry.path();
            if validate_topic(&topic).is_err() || !topic_dir.is_dir() {
                warn!(path = %topic_dir.display(), "ignoring unexpected entry in the consume queue directory");
                continue;
            }
            for q_entry in fs::read_dir(&topic_dir).map_err(|e| StoreError::io(&topic_dir, e))? {
                let q_entry = q_entry.map_err(|e| StoreError::io(&topic_dir, e))?;
                let qid = q_entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<i32>().ok())
                    .filter(|q| *q >= 0 && q.to_string() == q_entry.file_name().to_string_lossy());
                let Some(qid) = qid.filter(|_| q_entry.path().is_dir()) else {
                    warn!(path = %q_entry.path().display(), "ignoring unexpected entry in a consume queue directory");
                    continue;
                };
                match ConsumeQueue::load(root, &topic, qid, per_segment) {
                    Ok(q) => {
                        queues.insert((topic.clone(), qid), Arc::new(q));
                    }
                    Err(e) => {
                        warn!("discarding consume queue {topic}/{qid} (it will be rebuilt): {e}");
                        ConsumeQueue::remove_dir(root, &topic, qid)?;
                        dropped = true;
                    }
                }
            }
        }
        Ok((queues, dropped))
    }

    /// After a full rebuild: cuts every queue to the records seen, deletes queues no record
    /// belongs to.
    fn trim_to_seen(
        root: &Path,
        queues: &mut HashMap<QueueKey, Arc<ConsumeQueue>>,
        seen: &HashMap<QueueKey, u64>,
    ) -> Result<()> {
        let mut gone = Vec::new();
        for (key, q) in queues.iter() {
            match seen.get(key) {
                Some(&n) => {
                    if q.max_offset() > n {
                        warn!(topic = %key.0, queue_id = key.1, "dropping consume queue entries not backed by the commit log");
                        q.truncate(n)?;
                    }
                }
                None => gone.push(key.clone()),
            }
        }
        for key in gone {
            warn!(topic = %key.0, queue_id = key.1, "deleting a consume queue no commit log record belongs to");
            queues.remove(&key);
            ConsumeQueue::remove_dir(root, &key.0, key.1)?;
        }
        Ok(())
    }

    /// Drops entries pointing past `end` and checks the first and last entries of each queue
    /// file; false when an entry does not match its record.
    fn trim_and_check(
        cl: &CommitLog,
        queues: &HashMap<QueueKey, Arc<ConsumeQueue>>,
        end: u64,
    ) -> Result<bool> {
        for ((topic, qid), q) in queues {
            let mut max = q.max_offset();
            let min = q.min_offset();
            while max > min {
                match q.entry(max - 1)? {
                    Some(e) if e.is_plausible() && e.end() <= end => break,
                    _ => max -= 1,
                }
            }
            if max < q.max_offset() {
                warn!(topic = %topic, queue_id = qid, "dropping consume queue entries past the end of the commit log");
                q.truncate(max)?;
            }
            // The first and last entry of every file: catches a damaged or foreign file
            // cheaply (entries in the middle of a file are checked when read).
            let per = q.entries_per_segment();
            let mut checks = Vec::new();
            let mut s = min;
            while s < max {
                checks.push(s);
                checks.push((s - s % per + per).min(max) - 1);
                s = s - s % per + per;
            }
            for idx in checks {
                let Some(e) = q.entry(idx)? else {
                    return Ok(false);
                };
                if verify_record(cl, &e, topic, *qid, idx).is_err() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn write_state(&self) -> MutexGuard<'_, WriteState> {
        self.write.lock()
    }

    fn queue(&self, topic: &str, queue_id: i32) -> Option<Arc<ConsumeQueue>> {
        let queues = self.queues.read();
        queues.get(&(topic.to_owned(), queue_id)).cloned()
    }

    fn queue_or_create(&self, topic: &str, queue_id: i32) -> Result<Arc<ConsumeQueue>> {
        if let Some(q) = self.queue(topic, queue_id) {
            return Ok(q);
        }
        let mut queues = self.queues.write();
        let key = (topic.to_owned(), queue_id);
        if let Some(q) = queues.get(&key) {
            return Ok(Arc::clone(q));
        }
        let q = Arc::new(ConsumeQueue::create(
            &self.cq_root,
            topic,
            queue_id,
            self.config.consume_queue_segment_entries,
        )?);
        queues.insert(key, Arc::clone(&q));
        Ok(q)
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The commit log (read access for tools and tests).
    pub fn commit_log(&self) -> &CommitLog {
        &self.commit_log
    }

    /// Consumer offsets.
    pub fn offsets(&self) -> &OffsetStore {
        &self.offsets
    }

    /// Pop checkpoints.
    pub fn pop(&self) -> &PopStore {
        &self.pop
    }

    fn check_writable(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the store is shut down"));
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("an earlier write or fsync failed"));
        }
        Ok(())
    }

    fn poison_on_io<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(StoreError::Io { .. }) = &r {
            error!("message store write failed; refusing further writes");
            self.poisoned.store(true, Ordering::Release);
        }
        r
    }

    /// Stores one message. The store sets the queue offset (next of its consume queue), the
    /// store timestamp (now) and the commit log offset; everything else comes from `msg`.
    pub fn put(&self, msg: MessageExt) -> Result<PutResult> {
        let mut r = self.put_batch(vec![msg])?;
        r.pop().ok_or(StoreError::Unavailable("empty put result"))
    }

    /// Stores messages in order under one lock hold (SEND_BATCH): messages of the same queue get
    /// consecutive queue offsets. Either every message is checked valid and written, or none
    /// is (except after an I/O error, which also makes the store refuse further writes).
    pub fn put_batch(&self, mut msgs: Vec<MessageExt>) -> Result<Vec<PutResult>> {
        self.check_writable()?;
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        for m in &msgs {
            validate_topic(&m.topic)?;
            if m.queue_id < 0 {
                return Err(StoreError::InvalidQueueId(m.queue_id));
            }
            if m.body.len() > self.config.max_message_size {
                return Err(StoreError::MessageTooLarge {
                    size: m.body.len(),
                    max: self.config.max_message_size,
                });
            }
            let size = m.encoded_len() as u64;
            if size > self.commit_log.max_record_size() {
                return Err(StoreError::RecordTooLarge {
                    size,
                    segment_size: self.commit_log.segment_size(),
                });
            }
        }
        let mut ws = self.write_state();
        self.check_writable()?;
        let now = rocketmesh_filters::clock::unix_ms();
        let mut next: HashMap<QueueKey, (Arc<ConsumeQueue>, u64)> = HashMap::new();
        let mut qs = Vec::with_capacity(msgs.len());
        for m in msgs.iter_mut() {
            let key = (m.topic.clone(), m.queue_id);
            let slot = match next.get_mut(&key) {
                Some(s) => s,
                None => {
                    let q = self.queue_or_create(&m.topic, m.queue_id)?;
                    let max = q.max_offset();
                    next.entry(key.clone()).or_insert((q, max))
                }
            };
            m.queue_offset = slot.1 as i64;
            slot.1 += 1;
            m.store_timestamp = now;
            qs.push((key, Arc::clone(&slot.0)));
        }
        let appended = self.poison_on_io(self.commit_log.append(&mut msgs))?;
        let mut results = Vec::with_capacity(msgs.len());
        for ((m, a), (key, q)) in msgs.iter().zip(&appended).zip(qs) {
            let entry = CqEntry {
                commit_log_offset: a.offset as i64,
                size: a.size as i32,
                tags_code: commit_log::tags_code_of_message(m),
            };
            self.poison_on_io(q.append(m.queue_offset as u64, entry))?;
            ws.total_entries += 1;
            ws.dirty.entry(key).or_insert(q);
            results.push(PutResult {
                commit_log_offset: a.offset,
                queue_offset: m.queue_offset,
                size: a.size,
                store_timestamp: now,
                msg_id: m.offset_msg_id(),
            });
        }
        drop(ws);
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.messages
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        if self.config.flush_mode == FlushMode::Sync {
            let mut f = self.signal.lock();
            f.pending = true;
            self.signal.cv.notify_one();
        }
        // Wake parked pulls and pops once per queue written (a batch writes one queue).
        let mut last: Option<(&str, i32)> = None;
        for m in &msgs {
            let target = (m.topic.as_str(), m.queue_id);
            if last != Some(target) {
                self.arrivals.arrived(target.0, target.1);
                last = Some(target);
            }
        }
        Ok(results)
    }

    /// Waits until the commit log is durable up to `end_offset` (a [`PutResult::end_offset`]).
    /// In sync flush mode this is the group commit wait; in async mode it resolves after the
    /// next interval flush. Fails when a flush failed, or when the store shut down before the
    /// offset was flushed.
    pub async fn wait_durable(&self, end_offset: u64) -> Result<()> {
        let mut rx = self.durable_tx.subscribe();
        let d = *rx
            .wait_for(|d| d.offset >= end_offset || d.failed || d.stopped)
            .await
            .map_err(|_| StoreError::Unavailable("the store is shut down"))?;
        if d.offset >= end_offset {
            Ok(())
        } else if d.failed {
            Err(StoreError::Unavailable("an fsync failed"))
        } else {
            Err(StoreError::Unavailable("the store is shut down"))
        }
    }

    /// Commit log offset known durable.
    pub fn flushed_offset(&self) -> u64 {
        self.durable_tx.borrow().offset
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            puts: self.puts.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            flushed_offset: self.flushed_offset(),
            written_offset: self.commit_log.end_offset(),
        }
    }

    /// Runs one flush round now: fsyncs the commit log up to its current end, then the consume
    /// queues written meanwhile, writes the checkpoint and publishes the flushed offset; also
    /// fsyncs the pop checkpoint log. Called by the flush thread; callable directly.
    pub fn flush(&self) -> Result<()> {
        let r = self.flush_round();
        if let Err(e) = &r {
            error!("flush failed; the store refuses further writes: {e}");
            self.poisoned.store(true, Ordering::Release);
            self.durable_tx.send_modify(|d| d.failed = true);
        }
        r
    }

    fn flush_round(&self) -> Result<()> {
        let started = Instant::now();
        let mut progress = self.flush_progress.lock();
        let (end, dirty, ckpt) = {
            let mut ws = self.write_state();
            let queues = self.queues.read().len();
            let end = self.commit_log.end_offset();
            let ckpt = StoreCheckpoint {
                commit_log_offset: end,
                queues: queues as u64,
                queue_entries: ws.total_entries,
            };
            (end, std::mem::take(&mut ws.dirty), ckpt)
        };
        let mut n = 0;
        if end != progress.flushed || !dirty.is_empty() {
            n += self.commit_log.sync(progress.flushed, end)?;
            for q in dirty.values() {
                n += q.sync()?;
            }
        }
        if progress.last_checkpoint != Some(ckpt) {
            ckpt.save(&self.checkpoint_path)?;
            progress.last_checkpoint = Some(ckpt);
        }
        if self.pop.sync()? {
            n += 1;
        }
        if n > 0 {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            self.fsyncs.fetch_add(n as u64, Ordering::Relaxed);
            self.config
                .metrics
                .flush_seconds
                .record(started.elapsed().as_secs_f64());
        }
        self.config.metrics.size_bytes.set(end as f64);
        progress.flushed = end;
        self.durable_tx.send_if_modified(|d| {
            if d.offset < end {
                d.offset = end;
                true
            } else {
                false
            }
        });
        Ok(())
    }

    /// Persists consumer offsets (when changed).
    pub fn persist_offsets(&self) -> Result<()> {
        self.offsets.persist().map(|_| ())
    }

    /// Stops the flush thread, flushes everything and persists consumer offsets and pop
    /// checkpoints. Later writes fail; reads keep working. Idempotent (later calls return
    /// `Ok`).
    pub fn shutdown(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        {
            let mut f = self.signal.lock();
            f.stop = true;
            self.signal.cv.notify_all();
        }
        let handle = self.flush_thread.lock().take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                error!("the store flush thread panicked");
            }
        }
        let r1 = if self.poisoned.load(Ordering::Acquire) {
            Ok(())
        } else {
            self.flush()
        };
        let r2 = self.persist_offsets();
        self.durable_tx.send_modify(|d| d.stopped = true);
        r1.and(r2)
    }

    /// The hub that wakes requests parked until a message arrives on a queue; every put
    /// signals it once per queue written.
    pub fn arrivals(&self) -> &ArrivalHub {
        &self.arrivals
    }

    /// The max offset of a queue (next offset to be written; 0 when the queue does not exist).
    pub fn max_offset(&self, topic: &str, queue_id: i32) -> i64 {
        self.queue(topic, queue_id)
            .map_or(0, |q| q.max_offset() as i64)
    }

    /// The min offset of a queue (0 when the queue does not exist).
    pub fn min_offset(&self, topic: &str, queue_id: i32) -> i64 {
        self.queue(topic, queue_id)
            .map_or(0, |q| q.min_offset() as i64)
    }

    /// Queue ids of a topic, ascending.
    pub fn queue_ids(&self, topic: &str) -> Vec<i32> {
        let queues = self.queues.read();
        let mut ids: Vec<i32> = queues
            .keys()
            .filter(|(t, _)| t == topic)
            .map(|(_, q)| *q)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Topics with at least one queue, sorted.
    pub fn topics(&self) -> Vec<String> {
        let queues = self.queues.read();
        let mut topics: Vec<String> = queues.keys().map(|(t, _)| t.clone()).collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }

    /// Reads the decoded record at a physical offset (CONSUMER_SEND_MSG_BACK, offsetMsgId
    /// look-ups). Checks the record's layout, stored offset and body CRC.
    pub fn lookup_by_phys_offset(&self, phys_offset: i64) -> Result<MessageExt> {
        let offset = u64::try_from(phys_offset).map_err(|_| StoreError::OutOfRange {
            offset: 0,
            size: 0,
            min: self.commit_log.min_offset(),
            max: self.commit_log.end_offset(),
        })?;
        self.commit_log.read_record(offset)
    }

    /// Pulls messages from a queue, following RocketMQ's `DefaultMessageStore.getMessage`
    /// (4.9) on a master (protocol notes section 4.2):
    ///
    /// | case | status | next_begin_offset |
    /// |---|---|---|
    /// | no such queue | `NoMatchedLogicQueue` | 0 |
    /// | max offset 0 | `NoMessageInQueue` | 0 |
    /// | offset < min | `OffsetTooSmall` | min |
    /// | offset == max | `OffsetOverflowOne` | offset |
    /// | offset > max | `OffsetOverflowBadly` | 0 if min is 0, else max |
    /// | otherwise | `Found` / `NoMatchedMessage` | offset + entries scanned |
    ///
    /// Entries are scanned from `offset` (at most [`MAX_SCAN_ENTRIES`]); those whose tags code
    /// `filter` rejects are skipped (but count as scanned); the records of the others are read
    /// until `max_count` (capped at [`MAX_PULL_MESSAGES`]) or `max_bytes` (capped at
    /// [`MAX_PULL_BYTES`]; the first record is always taken) is reached. A consume queue entry
    /// that does not point at a matching record is reported as [`StoreError::Corrupt`].
    pub fn get_messages(
        &self,
        topic: &str,
        queue_id: i32,
        offset: i64,
        max_count: usize,
        max_bytes: usize,
        filter: impl Fn(i64) -> bool,
    ) -> Result<GetResult> {
        let mut res = GetResult {
            status: GetStatus::NoMatchedLogicQueue,
            records: Vec::new(),
            next_begin_offset: 0,
            min_offset: 0,
            max_offset: 0,
        };
        let Some(q) = self.queue(topic, queue_id) else {
            return Ok(res);
        };
        let (min, max) = (q.min_offset() as i64, q.max_offset() as i64);
        res.min_offset = min;
        res.max_offset = max;
        if max == 0 {
            res.status = GetStatus::NoMessageInQueue;
        } else if offset < min {
            res.status = GetStatus::OffsetTooSmall;
            res.next_begin_offset = min;
        } else if offset == max {
            res.status = GetStatus::OffsetOverflowOne;
            res.next_begin_offset = offset;
        } else if offset > max {
            res.status = GetStatus::OffsetOverflowBadly;
            res.next_begin_offset = if min == 0 { 0 } else { max };
        } else {
            let max_count = max_count.clamp(1, MAX_PULL_MESSAGES);
            let max_bytes = max_bytes.clamp(1, MAX_PULL_BYTES);
            let entries = q.get(offset as u64, MAX_SCAN_ENTRIES)?;
            res.status = GetStatus::NoMatchedMessage;
            let mut scanned = 0i64;
            let mut total = 0usize;
            for e in entries {
                if res.records.len() >= max_count
                    || (!res.records.is_empty() && total + e.size.max(0) as usize > max_bytes)
                {
                    break;
                }
                let idx = offset + scanned;
                scanned += 1;
                if !filter(e.tags_code) {
                    continue;
                }
                let bytes = verify_record(&self.commit_log, &e, topic, queue_id, idx as u64)?;
                total += bytes.len();
                res.records.push(bytes);
                res.status = GetStatus::Found;
            }
            res.next_begin_offset = offset + scanned;
        }
        Ok(res)
    }

    /// The first queue offset whose record was stored at or after `timestamp_ms` (binary
    /// search over the queue by store timestamp, which the store assigns in append order);
    /// the max offset when there is none; 0 when the queue does not exist.
    pub fn search_offset_by_timestamp(
        &self,
        topic: &str,
        queue_id: i32,
        timestamp_ms: i64,
    ) -> Result<i64> {
        let Some(q) = self.queue(topic, queue_id) else {
            return Ok(0);
        };
        let (mut lo, mut hi) = (q.min_offset(), q.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(e) = q.entry(mid)? else { break };
            if self.store_timestamp_of(&e)? >= timestamp_ms {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo as i64)
    }

    fn store_timestamp_of(&self, e: &CqEntry) -> Result<i64> {
        let offset = e.commit_log_offset.max(0) as u64;
        let hdr = self.commit_log.read(offset, 40)?;
        let sys_flag = i32::from_be_bytes([hdr[36], hdr[37], hdr[38], hdr[39]]);
        let pos = store_timestamp_position(sys_flag) as u64;
        if pos + 8 > e.size.max(0) as u64 {
            return Err(self
                .commit_log
                .corrupt_at(offset, "record too short for its store timestamp"));
        }
        let ts = self.commit_log.read(offset + pos, 8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&ts);
        Ok(i64::from_be_bytes(b))
    }
}

/// Reads the record a consume queue entry points at and checks that it is the record of
/// `topic`/`queue_id` at `queue_offset`.
fn verify_record(
    cl: &CommitLog,
    e: &CqEntry,
    topic: &str,
    queue_id: i32,
    queue_offset: u64,
) -> Result<Bytes> {
    if !e.is_plausible() {
        return Err(StoreError::corrupt(
            cl.dir(),
            e.commit_log_offset.max(0) as u64,
            format!("implausible consume queue entry {e:?} for {topic}/{queue_id}@{queue_offset}"),
        ));
    }
    let offset = e.commit_log_offset as u64;
    let bytes = cl
        .read(offset, e.size as u64)
        .map_err(|err| match err {
            StoreError::OutOfRange { .. } => cl.corrupt_at(
                offset,
                format!("consume queue entry {topic}/{queue_id}@{queue_offset} points outside the commit log"),
            ),
            other => other,
        })?;
    let ok = match RecordView::parse(&bytes) {
        Ok(v) => {
            v.len() == bytes.len()
                && v.topic() == topic
                && v.queue_id() == queue_id
                && v.queue_offset() == queue_offset as i64
                && v.commit_log_offset() == offset as i64
        }
        Err(_) => false,
    };
    if !ok {
        return Err(cl.corrupt_at(
            offset,
            format!("record does not match consume queue entry {topic}/{queue_id}@{queue_offset}"),
        ));
    }
    Ok(bytes)
}

impl Drop for MessageStore {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            error!("message store shutdown failed: {e}");
        }
    }
}

/// The flush thread: waits for work (sync mode) or the interval (async mode), runs flush
/// rounds, persists consumer offsets every `persist_every`. Holds only a weak reference to the
/// store between rounds, so dropping the last `Arc` stops it.
fn flush_loop(
    store: Weak<MessageStore>,
    signal: Arc<FlushSignal>,
    mode: FlushMode,
    persist_every: Duration,
) {
    let wait = match mode {
        FlushMode::Async { interval } => interval,
        FlushMode::Sync => persist_every.min(Duration::from_secs(1)),
    };
    let mut last_persist = Instant::now();
    loop {
        {
            let mut f = signal.lock();
            if !f.stop && !f.pending {
                let _ = signal.cv.wait_for(&mut f, wait);
            }
            if f.stop {
                return;
            }
            f.pending = false;
        }
        let Some(store) = store.upgrade() else { return };
        if !store.poisoned.load(Ordering::Acquire) {
            let _ = store.flush();
        }
        if last_persist.elapsed() >= persist_every {
            last_persist = Instant::now();
            if let Err(e) = store.persist_offsets() {
                error!("persisting consumer offsets failed: {e}");
            }
        }
    }
}
