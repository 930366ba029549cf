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
//! [`FlushMode::Sync`] as soon as there are unflushed writes (group commit: one commit log fsync
//! covers every write made before it started, and its offset is published at once), in
//! [`FlushMode::Async`] every interval. A full round (every round in async mode; at most every
//! 200 ms, when quiet and before offsets are persisted in sync mode) also fsyncs the consume
//! queue files written, then writes the checkpoint and fsyncs the pop checkpoint log. Consumer
//! offsets are persisted periodically. The read side (pulls, look-ups by offset or time) is in
//! `read.rs`.
//!
//! Recovery on open (see [`MessageStore::open`]): the commit log tail is validated and a torn
//! tail cut off, corrupt data before the tail is moved to `.corrupt` files, and the consume
//! queues are brought in line with the commit log: from the checkpoint when it and the queue
//! files look intact, otherwise rebuilt from the whole commit log.

pub mod checkpoint;
pub mod commit_log;
mod config;
pub mod consume_queue;
pub mod error;
pub mod index;
pub mod offsets;
pub mod pop_store;
mod read;
mod recovery;
pub mod util;

#[cfg(test)]
mod tests;

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rocketmesh_filters::codec::message::record::store_timestamp_position;
use rocketmesh_filters::codec::message::{MessageExt, RecordView};
use tokio::sync::watch;

use super::long_poll::ArrivalHub;
use tracing::error;

pub use checkpoint::StoreCheckpoint;
pub use commit_log::{Appended, CommitLog, RecoveryReport, ScannedRecord};
pub use config::{FlushMode, GetResult, GetStatus, PutResult, StoreConfig, StoreStats};
pub use consume_queue::{ConsumeQueue, CqEntry};
pub use error::{Result, StoreError};
pub use index::MessageIndex;
pub use offsets::OffsetStore;
pub use pop_store::{AckOutcome, ChangeInvisibleOutcome, PopCheckpoint, PopKey, PopStore};
use recovery::{check_plausible, check_record, out_of_log};
pub use util::{validate_group, validate_topic};

/// Most messages one [`MessageStore::get_messages`] call returns.
pub const MAX_PULL_MESSAGES: usize = 32;
/// Most record bytes one [`MessageStore::get_messages`] call returns (at least one record is
/// always returned when one matches).
pub const MAX_PULL_BYTES: usize = 256 * 1024;
/// Longest commit log span read with one `pread` for the records of one pull.
const MAX_SPAN_READ: u64 = 256 * 1024;
/// A span is read whole only when at most this many times the bytes of its records.
const SPAN_WASTE: u64 = 8;
/// Most consume queue entries one [`MessageStore::get_messages`] call scans.
pub const MAX_SCAN_ENTRIES: u64 = 800;
/// In sync flush mode, the longest time between two full flush rounds (consume queues,
/// checkpoint, pop log) while group commits (the commit log only) keep coming.
const SYNC_FULL_ROUND: Duration = Duration::from_millis(200);
/// Default maximum message body size: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 << 20;

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
    index: MessageIndex,
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
    messages_read: AtomicU64,
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

        let queues = recovery::recover_queues(&commit_log, &cq_root, per_segment, ckpt)?;
        let index = MessageIndex::new(config.index_max_entries);
        index.rebuild(&commit_log)?;

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
            index,
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
            messages_read: AtomicU64::new(0),
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

    /// The message index (QUERY_MESSAGE).
    pub fn index(&self) -> &MessageIndex {
        &self.index
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
        // Under the write lock: the index is appended in commit log order.
        let stored = msgs.iter().zip(&appended);
        self.index
            .add(stored.map(|(m, a)| (m.topic.as_str(), &m.properties, a.offset, now)));
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
            messages_read: self.messages_read.load(Ordering::Relaxed),
        }
    }

    /// Runs one flush round now: fsyncs the commit log up to its current end and publishes the
    /// flushed offset, then fsyncs the consume queues written meanwhile, writes the checkpoint
    /// and fsyncs the pop checkpoint log. Called by the flush thread; callable directly.
    pub fn flush(&self) -> Result<()> {
        self.flush_checked(true)
    }

    /// A flush round; `full == false` makes it a group-commit round: only the commit log is
    /// fsynced and its offset published (what a sync-flush send waits for), the rest is left to
    /// the next full round.
    fn flush_checked(&self, full: bool) -> Result<()> {
        let r = self.flush_round(full);
        if let Err(e) = &r {
            error!("flush failed; the store refuses further writes: {e}");
            self.poisoned.store(true, Ordering::Release);
            self.durable_tx.send_modify(|d| d.failed = true);
        }
        r
    }

    // A message is durable once the commit log holding it is: recovery replays the commit log
    // from the last checkpoint and rebuilds the consume queue entries past it, so the queues and
    // the checkpoint need not be fsynced before a send is answered. The checkpoint is written
    // only after the queues it vouches for are fsynced.
    fn flush_round(&self, full: bool) -> Result<()> {
        let started = Instant::now();
        let mut progress = self.flush_progress.lock();
        let (end, dirty, ckpt) = {
            let mut ws = self.write_state();
            let end = self.commit_log.end_offset();
            if full {
                let queues = self.queues.read().len();
                let ckpt = StoreCheckpoint {
                    commit_log_offset: end,
                    queues: queues as u64,
                    queue_entries: ws.total_entries,
                };
                (end, std::mem::take(&mut ws.dirty), Some(ckpt))
            } else {
                (end, HashMap::new(), None)
            }
        };
        let mut n = 0;
        if end != progress.flushed || progress.last_checkpoint.is_none() {
            n += self.commit_log.sync(progress.flushed, end)?;
        }
        progress.flushed = end;
        self.durable_tx.send_if_modified(|d| {
            if d.offset < end {
                d.offset = end;
                true
            } else {
                false
            }
        });
        if let Some(ckpt) = ckpt {
            for q in dirty.values() {
                n += q.sync()?;
            }
            if progress.last_checkpoint != Some(ckpt) {
                ckpt.save(&self.checkpoint_path)?;
                progress.last_checkpoint = Some(ckpt);
            }
            if self.pop.sync()? {
                n += 1;
            }
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
        Ok(())
    }

    /// Persists consumer offsets (when changed).
    pub fn persist_offsets(&self) -> Result<()> {
        // Pop positions are consumer offsets: never on disk ahead of their checkpoints.
        self.pop.write_buffered()?;
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
    let mut last_full = Instant::now();
    loop {
        let woken = {
            let mut f = signal.lock();
            if !f.stop && !f.pending {
                let _ = signal.cv.wait_for(&mut f, wait);
            }
            if f.stop {
                return;
            }
            std::mem::replace(&mut f.pending, false)
        };
        let Some(store) = store.upgrade() else { return };
        let persist = last_persist.elapsed() >= persist_every;
        // Sync mode: a round woken by writes is a group commit (the commit log only); the
        // queues, the checkpoint and the pop log follow every SYNC_FULL_ROUND, when the store is
        // quiet, and before consumer offsets are persisted (pop positions must never be durable
        // ahead of the pop checkpoints that redeliver what they skip).
        let full = !matches!(mode, FlushMode::Sync)
            || !woken
            || persist
            || last_full.elapsed() >= SYNC_FULL_ROUND;
        if full {
            last_full = Instant::now();
        }
        if !store.poisoned.load(Ordering::Acquire) {
            let _ = store.flush_checked(full);
        }
        if persist {
            last_persist = Instant::now();
            if let Err(e) = store.persist_offsets() {
                error!("persisting consumer offsets failed: {e}");
            }
        }
    }
}
