//! The store's settings and the values its calls return.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

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
    /// Most entries of the message index (QUERY_MESSAGE keys; default
    /// [`index::DEFAULT_INDEX_MAX_ENTRIES`]): the oldest are evicted past it.
    pub index_max_entries: usize,
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
            index_max_entries: index::DEFAULT_INDEX_MAX_ENTRIES,
            metrics: crate::metrics::StoreMetrics::default(),
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
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
    /// Records handed out by [`MessageStore::get_messages`] (pulls and pops).
    pub messages_read: u64,
}
