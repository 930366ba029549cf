//! Consume queues: the per-(topic, queueId) index of the commit log,
//! `DIR/consumequeue/{topic}/{queueId}/{20-digit start index}`.
//!
//! Each entry is 20 bytes, big-endian: commit log offset (i64), record size (i32), tags code
//! (i64, Java `String.hashCode()` of the TAGS property, 0 without tags). The logical (queue)
//! offset of an entry is its index. A file holds a fixed number of entries and is named by the
//! index of its first entry; files are not preallocated, so the length of the last file gives
//! the number of entries.
//!
//! Consume queues are derived data: the store rebuilds them from the commit log whenever they
//! look wrong, so [`ConsumeQueue::load`] is strict and reports any structural anomaly as an
//! error instead of repairing it (except a torn last entry and trailing zero entries, which a
//! crash leaves behind and which are trimmed).

use parking_lot::Mutex;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use super::error::{IoContext, Result, StoreError};
use super::util::{
    create_dir_all, open_segment_files, segment_file_name, sync_dir, validate_topic,
};

/// Size of one consume queue entry.
pub const CQ_ENTRY_SIZE: u64 = 20;
/// Default number of entries per consume queue file (RocketMQ's 300 000).
pub const DEFAULT_ENTRIES_PER_SEGMENT: u64 = 300_000;

/// One consume queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    /// Physical offset of the record in the commit log.
    pub commit_log_offset: i64,
    /// Record size.
    pub size: i32,
    /// Tags code (Java hash of the TAGS property, 0 without tags).
    pub tags_code: i64,
}

impl CqEntry {
    /// The 20-byte encoding.
    pub fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..8].copy_from_slice(&self.commit_log_offset.to_be_bytes());
        b[8..12].copy_from_slice(&self.size.to_be_bytes());
        b[12..20].copy_from_slice(&self.tags_code.to_be_bytes());
        b
    }

    /// Decodes 20 bytes.
    pub fn decode(b: &[u8; 20]) -> Self {
        let mut o = [0u8; 8];
        o.copy_from_slice(&b[0..8]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[12..20]);
        Self {
            commit_log_offset: i64::from_be_bytes(o),
            size: i32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            tags_code: i64::from_be_bytes(t),
        }
    }

    /// True when the entry can point at a record (non-negative offset, positive size).
    pub fn is_plausible(&self) -> bool {
        self.commit_log_offset >= 0 && self.size > 0
    }

    /// Physical offset just past the record.
    pub fn end(&self) -> u64 {
        (self.commit_log_offset.max(0) as u64).saturating_add(self.size.max(0) as u64)
    }
}

#[derive(Debug)]
struct CqSegment {
    start: u64,
    path: PathBuf,
    file: File,
}

#[derive(Debug)]
struct Inner {
    segments: Vec<Arc<CqSegment>>,
    /// Index of the first entry (first segment start; 0 when there are no files).
    min: u64,
    /// Next index to write.
    max: u64,
    /// Index in `segments` of the first segment written since the last sync.
    dirty_from: Option<usize>,
    /// A file was created since the directory was last fsynced.
    dir_dirty: bool,
    /// Encoded entries `max - pending.len() / 20 .. max`, appended but not written to the last
    /// file yet (see [`PENDING_ENTRIES`]); always in the last segment.
    pending: Vec<u8>,
}

/// Entries kept in memory before they are written to the queue's file in one `pwrite`: one
/// 20-byte write per message was 9% of the broker's CPU on 1 KiB sends. Reads see them; a sync
/// writes them first (the checkpoint, which makes recovery trust the queues, is only written
/// after that sync); a crash loses at most these, which recovery rebuilds from the commit log
/// like any entry past the checkpoint.
const PENDING_ENTRIES: usize = 128;

/// One consume queue. Thread-safe (internal lock); appends are serialized by the store.
#[derive(Debug)]
pub struct ConsumeQueue {
    topic: String,
    queue_id: i32,
    dir: PathBuf,
    per_segment: u64,
    inner: Mutex<Inner>,
}

impl ConsumeQueue {
    /// The directory of a queue under the consume queue root.
    pub fn queue_dir(root: &Path, topic: &str, queue_id: i32) -> PathBuf {
        root.join(topic).join(queue_id.to_string())
    }

    /// Creates an empty queue (its directory is created, and fsynced with its parents).
    pub fn create(root: &Path, topic: &str, queue_id: i32, per_segment: u64) -> Result<Self> {
        validate_topic(topic)?;
        if queue_id < 0 {
            return Err(StoreError::InvalidQueueId(queue_id));
        }
        let dir = Self::queue_dir(root, topic, queue_id);
        let existed = dir.is_dir();
        create_dir_all(&dir)?;
        if !existed {
            let topic_dir = root.join(topic);
            sync_dir(&topic_dir)?;
            sync_dir(root)?;
            if let Some(parent) = root.parent() {
                sync_dir(parent)?;
            }
        }
        Self::load(root, topic, queue_id, per_segment)
    }

    /// Loads an existing queue directory. Fails on any structural anomaly (misaligned or
    /// missing files, a non-last file that is not full, a file longer than a segment). Trims a
    /// torn last entry and trailing all-zero entries.
    pub fn load(root: &Path, topic: &str, queue_id: i32, per_segment: u64) -> Result<Self> {
        validate_topic(topic)?;
        if queue_id < 0 {
            return Err(StoreError::InvalidQueueId(queue_id));
        }
        if per_segment == 0 || per_segment > (i32::MAX as u64) / CQ_ENTRY_SIZE {
            return Err(StoreError::InvalidConfig(format!(
                "consume queue entries per segment {per_segment} out of range"
            )));
        }
        let dir = Self::queue_dir(root, topic, queue_id);
        let seg_bytes = per_segment * CQ_ENTRY_SIZE;
        let files = open_segment_files(&dir, per_segment, seg_bytes, "consume queue")?;
        let count = files.len();
        let mut segments = Vec::with_capacity(count);
        let mut lens = Vec::with_capacity(count);
        for (i, f) in files.into_iter().enumerate() {
            if i + 1 < count && f.len != seg_bytes {
                return Err(StoreError::corrupt(
                    &f.path,
                    f.len,
                    "consume queue file before the last one is not full",
                ));
            }
            lens.push(f.len);
            segments.push(Arc::new(CqSegment {
                start: f.base,
                path: f.path,
                file: f.file,
            }));
        }
        let min = segments.first().map_or(0, |s| s.start);
        let mut max = match (segments.last(), lens.last()) {
            (Some(s), Some(&len)) => {
                if len % CQ_ENTRY_SIZE != 0 {
                    warn!(path = %s.path.display(), len, "trimming a torn consume queue entry");
                    s.file.set_len(len - len % CQ_ENTRY_SIZE).at(&s.path)?;
                }
                s.start + len / CQ_ENTRY_SIZE
            }
            _ => min,
        };
        let q = Self {
            topic: topic.to_owned(),
            queue_id,
            dir,
            per_segment,
            inner: Mutex::new(Inner {
                segments,
                min,
                max,
                dirty_from: None,
                dir_dirty: false,
                pending: Vec::new(),
            }),
        };
        // Trailing zero entries (left by a crash on some file systems).
        while max > min {
            match q.entry(max - 1)? {
                Some(e) if e == CqEntry::decode(&[0u8; 20]) => max -= 1,
                _ => break,
            }
        }
        q.truncate(max)?;
        Ok(q)
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The queue id.
    pub fn queue_id(&self) -> i32 {
        self.queue_id
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Entries per file.
    pub fn entries_per_segment(&self) -> u64 {
        self.per_segment
    }

    /// Smallest logical offset still stored.
    pub fn min_offset(&self) -> u64 {
        self.inner.lock().min
    }

    /// Next logical offset to be written (the number of entries ever written).
    pub fn max_offset(&self) -> u64 {
        self.inner.lock().max
    }

    /// Appends an entry at logical offset `index`, which must be the current max offset.
    pub fn append(&self, index: u64, entry: CqEntry) -> Result<()> {
        let mut inner = self.inner.lock();
        if index != inner.max {
            return Err(StoreError::corrupt(
                &self.dir,
                index,
                format!(
                    "consume queue append at {index} but the queue ends at {}",
                    inner.max
                ),
            ));
        }
        let start = index - index % self.per_segment;
        let seg_idx = match inner.segments.last() {
            Some(s) if s.start == start => inner.segments.len() - 1,
            last => {
                if let Some(s) = last {
                    if s.start + self.per_segment != start {
                        return Err(StoreError::corrupt(
                            &self.dir,
                            index,
                            "consume queue segments would not be contiguous",
                        ));
                    }
                }
                // The pending entries belong to the previous file.
                Self::write_pending(&mut inner)?;
                let path = self.dir.join(segment_file_name(start));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .at(&path)?;
                if inner.segments.is_empty() {
                    inner.min = start;
                }
                inner
                    .segments
                    .push(Arc::new(CqSegment { start, path, file }));
                inner.dir_dirty = true;
                inner.segments.len() - 1
            }
        };
        inner.pending.extend_from_slice(&entry.encode());
        inner.max = index + 1;
        inner.dirty_from = Some(inner.dirty_from.map_or(seg_idx, |d| d.min(seg_idx)));
        if inner.pending.len() >= PENDING_ENTRIES * CQ_ENTRY_SIZE as usize {
            Self::write_pending(&mut inner)?;
        }
        Ok(())
    }

    /// Writes the pending entries to the last file. On failure they stay pending.
    fn write_pending(inner: &mut Inner) -> Result<()> {
        if inner.pending.is_empty() {
            return Ok(());
        }
        let Some(seg) = inner.segments.last() else {
            return Err(StoreError::Unavailable(
                "consume queue entries without a file",
            ));
        };
        let first = inner.max - inner.pending.len() as u64 / CQ_ENTRY_SIZE;
        seg.file
            .write_all_at(&inner.pending, (first - seg.start) * CQ_ENTRY_SIZE)
            .at(&seg.path)?;
        inner.pending.clear();
        Ok(())
    }

    /// The entry at `index`, `None` outside `min..max`.
    pub fn entry(&self, index: u64) -> Result<Option<CqEntry>> {
        Ok(self.get(index, 1)?.into_iter().next())
    }

    /// Up to `max_entries` entries from `from` (fewer at the end of the queue; none outside
    /// `min..max`).
    pub fn get(&self, from: u64, max_entries: u64) -> Result<Vec<CqEntry>> {
        let (segs, min, end, file_end, tail) = {
            let inner = self.inner.lock();
            let (min, max) = (inner.min, inner.max);
            if from < min || from >= max {
                return Ok(Vec::new());
            }
            let to = max.min(from.saturating_add(max_entries));
            // Entries from `file_end` on are still in memory: copy the ones asked for.
            let file_end = max - inner.pending.len() as u64 / CQ_ENTRY_SIZE;
            let tail = if to > file_end {
                let a = (from.max(file_end) - file_end) * CQ_ENTRY_SIZE;
                let b = (to - file_end) * CQ_ENTRY_SIZE;
                inner.pending[a as usize..b as usize].to_vec()
            } else {
                Vec::new()
            };
            let segs = if from < file_end {
                inner.segments.clone()
            } else {
                Vec::new()
            };
            (segs, min, to, file_end, tail)
        };
        let mut out = Vec::with_capacity((end - from) as usize);
        let mut idx = from;
        let mut buf = Vec::new();
        let to = end.min(file_end);
        while idx < to {
            let start = idx - idx % self.per_segment;
            let Some(seg) = segs.get(((start - min) / self.per_segment) as usize) else {
                break;
            };
            let n = (to - idx).min(start + self.per_segment - idx);
            buf.resize((n * CQ_ENTRY_SIZE) as usize, 0);
            seg.file
                .read_exact_at(&mut buf, (idx - start) * CQ_ENTRY_SIZE)
                .at(&seg.path)?;
            for chunk in buf.chunks_exact(CQ_ENTRY_SIZE as usize) {
                let mut e = [0u8; 20];
                e.copy_from_slice(chunk);
                out.push(CqEntry::decode(&e));
            }
            idx += n;
        }
        if idx < to {
            return Ok(out);
        }
        for chunk in tail.chunks_exact(CQ_ENTRY_SIZE as usize) {
            let mut e = [0u8; 20];
            e.copy_from_slice(chunk);
            out.push(CqEntry::decode(&e));
        }
        Ok(out)
    }

    /// Drops every entry at or after `new_max` (no-op when `new_max >= max`). Files wholly past
    /// it are deleted.
    pub fn truncate(&self, new_max: u64) -> Result<()> {
        let mut inner = self.inner.lock();
        if new_max >= inner.max {
            return Ok(());
        }
        Self::write_pending(&mut inner)?;
        let new_max = new_max.max(inner.min);
        while let Some(last) = inner.segments.last() {
            if last.start >= new_max {
                fs::remove_file(&last.path).at(&last.path)?;
                inner.segments.pop();
                inner.dir_dirty = true;
            } else {
                let len = (new_max - last.start) * CQ_ENTRY_SIZE;
                last.file.set_len(len).at(&last.path)?;
                last.file.sync_all().at(&last.path)?;
                break;
            }
        }
        inner.max = new_max;
        if let Some(d) = inner.dirty_from {
            if d >= inner.segments.len() {
                inner.dirty_from = inner.segments.len().checked_sub(1);
            }
        }
        Ok(())
    }

    /// fsyncs the files written since the last sync (and the directory when files were
    /// created); returns the number of fsync calls.
    pub fn sync(&self) -> Result<usize> {
        let (segs, dir_dirty) = {
            let mut inner = self.inner.lock();
            Self::write_pending(&mut inner)?;
            let segs: Vec<Arc<CqSegment>> = match inner.dirty_from.take() {
                Some(from) => inner.segments.get(from..).unwrap_or(&[]).to_vec(),
                None => Vec::new(),
            };
            (segs, std::mem::take(&mut inner.dir_dirty))
        };
        let mut n = 0;
        if dir_dirty {
            sync_dir(&self.dir)?;
            n += 1;
        }
        for s in &segs {
            s.file.sync_data().at(&s.path)?;
            n += 1;
        }
        Ok(n)
    }

    /// Deletes the queue's directory (used when it is rebuilt from the commit log).
    pub fn remove_dir(root: &Path, topic: &str, queue_id: i32) -> Result<()> {
        let dir = Self::queue_dir(root, topic, queue_id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&dir, e)),
        }
    }
}
