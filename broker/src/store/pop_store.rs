//! Pop checkpoints: the persistent part of Pop (`docs/remoting-protocol.md` section 6.4).
//!
//! A [`PopCheckpoint`] records the messages one POP handed out (queue offsets) and which of them
//! were acked. The table is keyed by [`PopKey`] `(group, topic, queue id, start offset, pop
//! time)`; the topic is the real topic the messages were read from (a retry topic included).
//!
//! Persistence: an append-only log `DIR/pop/checkpoint.log` of JSON lines, one per change
//! (`{"op":"add","ck":{..}}`, `{"op":"ack","key":{..},"offset":n}`, `{"op":"acks","key":{..},
//! "offsets":[n,..]}` for the offsets of one checkpoint a batch ack newly acked (one line, one
//! write), `{"op":"remove","key":{..}}`). Lines are collected in memory and written together
//! (`LOG_BUFFER`), by [`PopStore::sync`] (which then fsyncs the log; the store does it in each
//! full flush round), by [`PopStore::write_buffered`] (the store calls it before it persists
//! consumer offsets, so a pop position never reaches the disk ahead of the checkpoint that
//! redelivers what it skipped) and on drop: two `write`s per pop and batch ack were 5% of the
//! broker's cycles serving pops. A crash loses at most the lines of changes made since the pop
//! positions were last persisted, which are popped again. On open the log is replayed: a torn
//! last line is cut off, a malformed line elsewhere is skipped with a warning. When the log has
//! grown to more than `compact_threshold` lines and twice the live checkpoints, it is rewritten
//! with one `add` line per live checkpoint (temporary file, fsync, rename).
//!
//! A checkpoint whose every offset is acked is removed at once (replay does the same from the
//! `ack` lines, so no `remove` line is needed for it).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::error::{IoContext, Result, StoreError};
use super::util::{create_dir_all, sync_dir, tmp_path};

/// Most queue offsets one checkpoint may hold.
pub const MAX_OFFSETS_PER_CHECKPOINT: usize = 1024;
/// Longest log line accepted on replay.
pub const MAX_LOG_LINE: usize = 1 << 20;

/// Key of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PopKey {
    /// Consumer group.
    pub group: String,
    /// Real topic the messages were read from (a retry topic included).
    pub topic: String,
    /// Queue id.
    pub queue_id: i32,
    /// First queue offset of the checkpoint.
    pub start_offset: i64,
    /// Pop time (ms).
    pub pop_time: i64,
}

/// Which offsets of a checkpoint were acked (bit `i` = `msg_offsets[i]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AckBitmap(Vec<u64>);

impl AckBitmap {
    /// Sets bit `i`; returns true when it was not set.
    pub fn set(&mut self, i: usize) -> bool {
        let (w, b) = (i / 64, i % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        !was
    }

    /// True when bit `i` is set.
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Number of bits set.
    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// One pop checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopCheckpoint {
    /// Real topic the messages were read from.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Queue id.
    pub queue_id: i32,
    /// Retry flag of the handle (0 normal topic, 1 retry topic, 2 retry topic v2).
    pub retry: u8,
    /// First queue offset.
    pub start_offset: i64,
    /// Pop time (ms).
    pub pop_time: i64,
    /// Invisible time (ms).
    pub invisible_time: i64,
    /// Revive queue id.
    pub revive_queue_id: i32,
    /// Broker name.
    pub broker_name: String,
    /// Queue offsets handed out by this pop.
    pub msg_offsets: Vec<i64>,
    /// Which of `msg_offsets` were acked.
    #[serde(default)]
    pub acked: AckBitmap,
}

impl PopCheckpoint {
    /// The table key.
    pub fn key(&self) -> PopKey {
        PopKey {
            group: self.group.clone(),
            topic: self.topic.clone(),
            queue_id: self.queue_id,
            start_offset: self.start_offset,
            pop_time: self.pop_time,
        }
    }

    /// When the un-acked messages become visible again: `pop_time + invisible_time`.
    pub fn revive_time(&self) -> i64 {
        self.pop_time.saturating_add(self.invisible_time)
    }

    /// The offsets not acked yet.
    pub fn unacked_offsets(&self) -> Vec<i64> {
        self.msg_offsets
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.acked.contains(*i))
            .map(|(_, o)| *o)
            .collect()
    }

    /// True when every offset is acked.
    pub fn is_fully_acked(&self) -> bool {
        (0..self.msg_offsets.len()).all(|i| self.acked.contains(i))
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StoreError::InvalidCheckpoint(m.to_owned()));
        if self.msg_offsets.is_empty() {
            return bad("no message offsets");
        }
        if self.msg_offsets.len() > MAX_OFFSETS_PER_CHECKPOINT {
            return bad("too many message offsets");
        }
        if self.acked.0.len() > MAX_OFFSETS_PER_CHECKPOINT / 64 + 1 {
            return bad("ack bitmap too long");
        }
        Ok(())
    }
}

/// Result of an ack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// The offset was un-acked and is now acked.
    pub acked: bool,
    /// No such checkpoint, or the offset is not in it.
    pub not_found: bool,
    /// The ack completed the checkpoint, which was removed.
    pub completed: bool,
}

/// Result of [`PopStore::change_invisible`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeInvisibleOutcome {
    /// The new single-message checkpoint (`None` when the original was not found).
    pub new_checkpoint: Option<PopCheckpoint>,
    /// The ack of the original handle.
    pub original: AckOutcome,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum LogRecord {
    Add {
        ck: PopCheckpoint,
    },
    Ack {
        key: PopKey,
        offset: i64,
    },
    /// Several offsets of one checkpoint (a batch ack).
    Acks {
        key: PopKey,
        offsets: Vec<i64>,
    },
    Remove {
        key: PopKey,
    },
}

#[derive(Debug)]
struct Inner {
    table: BTreeMap<PopKey, PopCheckpoint>,
    log: File,
    lines: usize,
    dirty: bool,
    /// Lines not written to `log` yet.
    buf: Vec<u8>,
}

/// Bytes of log lines collected before they are written.
const LOG_BUFFER: usize = 64 * 1024;

/// The pop checkpoint table. Thread-safe.
#[derive(Debug)]
pub struct PopStore {
    path: PathBuf,
    max_live: usize,
    compact_threshold: usize,
    inner: Mutex<Inner>,
}

/// Reads one line of at most `max` bytes into `buf` (without the newline). Returns
/// `Ok(None)` at end of input, `Ok(Some(true))` for a complete line, `Ok(Some(false))` for a
/// line cut by the end of input or by the length limit (the rest of an over-long line is
/// skipped).
fn read_line_bounded(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut any = false;
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(false));
        }
        any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if !too_long {
            if buf.len() + part.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let used = done.unwrap_or(part.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(!too_long));
        }
    }
}

impl PopStore {
    /// Opens (creating if needed) the checkpoint log at `path` and replays it.
    pub fn open(
        path: impl Into<PathBuf>,
        max_live: usize,
        compact_threshold: usize,
    ) -> Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            create_dir_all(dir)?;
        }
        let mut table = BTreeMap::new();
        let mut lines = 0usize;
        let mut bad_lines = 0usize;
        match File::open(&path) {
            Ok(f) => {
                let mut r = BufReader::new(f);
                let mut buf = Vec::new();
                while let Some(complete) =
                    read_line_bounded(&mut r, &mut buf, MAX_LOG_LINE).at(&path)?
                {
                    let parsed = if complete {
                        serde_json::from_slice::<LogRecord>(&buf).ok()
                    } else {
                        None
                    };
                    match parsed {
                        Some(rec) => {
                            lines += 1;
                            Self::apply(&mut table, rec, max_live);
                        }
                        None => {
                            warn!(
                                path = %path.display(),
                                line = lines + bad_lines + 1,
                                "skipping a malformed or torn pop checkpoint log line"
                            );
                            bad_lines += 1;
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&path, e)),
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .at(&path)?;
        let store = Self {
            path,
            max_live,
            compact_threshold,
            inner: Mutex::new(Inner {
                table,
                log,
                lines,
                dirty: false,
                buf: Vec::new(),
            }),
        };
        // Always rewrite after a replay that found bad lines, so a torn tail is not followed by
        // new lines; otherwise only when the log is large.
        {
            let mut inner = store.inner.lock();
            if bad_lines > 0 || inner.lines > store.compact_threshold.max(2 * inner.table.len()) {
                store.compact(&mut inner)?;
            }
        }
        Ok(store)
    }

    fn apply(table: &mut BTreeMap<PopKey, PopCheckpoint>, rec: LogRecord, max_live: usize) {
        match rec {
            LogRecord::Add { ck } => {
                if ck.validate().is_err() {
                    warn!("skipping an invalid pop checkpoint in the log");
                    return;
                }
                let key = ck.key();
                if table.len() >= max_live && !table.contains_key(&key) {
                    warn!("pop checkpoint log holds more than {max_live} live checkpoints; dropping one");
                    return;
                }
                table.insert(key, ck);
            }
            LogRecord::Ack { key, offset } => {
                if let Some(ck) = table.get_mut(&key) {
                    if let Some(i) = ck.msg_offsets.iter().position(|o| *o == offset) {
                        ck.acked.set(i);
                    }
                    if ck.is_fully_acked() {
                        table.remove(&key);
                    }
                }
            }
            LogRecord::Acks { key, offsets } => {
                if let Some(ck) = table.get_mut(&key) {
                    for offset in offsets {
                        if let Some(i) = ck.msg_offsets.iter().position(|o| *o == offset) {
                            ck.acked.set(i);
                        }
                    }
                    if ck.is_fully_acked() {
                        table.remove(&key);
                    }
                }
            }
            LogRecord::Remove { key } => {
                table.remove(&key);
            }
        }
    }

    fn log(&self, inner: &mut Inner, rec: &LogRecord) -> Result<()> {
        let mark = inner.buf.len();
        if serde_json::to_writer(&mut inner.buf, rec).is_err() {
            inner.buf.truncate(mark);
            return Err(StoreError::Internal("cannot encode a pop log line".into()));
        }
        inner.buf.push(b'\n');
        inner.lines += 1;
        inner.dirty = true;
        if inner.buf.len() >= LOG_BUFFER {
            self.write_buf(inner)?;
        }
        if inner.lines > self.compact_threshold.max(2 * inner.table.len()) {
            self.compact(inner)?;
        }
        Ok(())
    }

    fn write_buf(&self, inner: &mut Inner) -> Result<()> {
        if !inner.buf.is_empty() {
            inner.log.write_all(&inner.buf).at(&self.path)?;
            inner.buf.clear();
        }
        Ok(())
    }

    /// Writes the lines collected in memory to the log (no fsync).
    pub fn write_buffered(&self) -> Result<()> {
        self.write_buf(&mut self.inner.lock())
    }

    /// Rewrites the log with one `add` line per live checkpoint.
    fn compact(&self, inner: &mut Inner) -> Result<()> {
        // The table holds every change, the lines not yet written included.
        inner.buf.clear();
        let tmp = tmp_path(&self.path);
        {
            let mut f = std::io::BufWriter::new(File::create(&tmp).at(&tmp)?);
            for ck in inner.table.values() {
                let mut line =
                    serde_json::to_vec(&LogRecord::Add { ck: ck.clone() }).unwrap_or_default();
                line.push(b'\n');
                f.write_all(&line).at(&tmp)?;
            }
            let f = f
                .into_inner()
                .map_err(|e| StoreError::io(&tmp, e.into_error()))?;
            f.sync_all().at(&tmp)?;
        }
        std::fs::rename(&tmp, &self.path).at(&self.path)?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        inner.log = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .at(&self.path)?;
        inner.lines = inner.table.len();
        inner.dirty = false;
        debug!(live = inner.lines, "compacted the pop checkpoint log");
        Ok(())
    }

    /// The log path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Un-acked popped messages of `group` on `topic`, by queue id (in flight: popped, neither
    /// acked nor revived yet).
    pub fn unacked(&self, group: &str, topic: &str) -> std::collections::BTreeMap<i32, i64> {
        let mut out = std::collections::BTreeMap::new();
        for ck in self.inner.lock().table.values() {
            if ck.group == group && ck.topic == topic {
                let n = ck.msg_offsets.len() - ck.acked.count().min(ck.msg_offsets.len());
                *out.entry(ck.queue_id).or_insert(0) += n as i64;
            }
        }
        out
    }

    /// Groups with a live checkpoint on `topic`.
    pub fn groups_of(&self, topic: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .inner
            .lock()
            .table
            .values()
            .filter(|ck| ck.topic == topic)
            .map(|ck| ck.group.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Number of live checkpoints.
    pub fn len(&self) -> usize {
        self.inner.lock().table.len()
    }

    /// True when there are no live checkpoints.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of lines in the log (for tests and metrics).
    pub fn log_lines(&self) -> usize {
        self.inner.lock().lines
    }

    /// A copy of a checkpoint.
    pub fn get(&self, key: &PopKey) -> Option<PopCheckpoint> {
        self.inner.lock().table.get(key).cloned()
    }

    /// Adds a checkpoint (replacing one with the same key). Fails when it has no offsets or
    /// too many, or when the maximum number of live checkpoints is reached.
    pub fn add_checkpoint(&self, ck: PopCheckpoint) -> Result<PopKey> {
        ck.validate()?;
        let key = ck.key();
        let mut inner = self.inner.lock();
        if inner.table.len() >= self.max_live && !inner.table.contains_key(&key) {
            return Err(StoreError::TooManyCheckpoints { max: self.max_live });
        }
        inner.table.insert(key.clone(), ck.clone());
        self.log(&mut inner, &LogRecord::Add { ck })?;
        Ok(key)
    }

    fn ack_locked(&self, inner: &mut Inner, key: &PopKey, queue_offset: i64) -> Result<AckOutcome> {
        let Some(ck) = inner.table.get_mut(key) else {
            return Ok(AckOutcome {
                not_found: true,
                ..AckOutcome::default()
            });
        };
        let Some(i) = ck.msg_offsets.iter().position(|o| *o == queue_offset) else {
            return Ok(AckOutcome {
                not_found: true,
                ..AckOutcome::default()
            });
        };
        if !ck.acked.set(i) {
            return Ok(AckOutcome::default());
        }
        let completed = ck.is_fully_acked();
        if completed {
            inner.table.remove(key);
        }
        self.log(
            inner,
            &LogRecord::Ack {
                key: key.clone(),
                offset: queue_offset,
            },
        )?;
        Ok(AckOutcome {
            acked: true,
            not_found: false,
            completed,
        })
    }

    /// Acks one queue offset of a checkpoint. A checkpoint whose offsets are all acked is
    /// removed.
    pub fn ack(&self, key: &PopKey, queue_offset: i64) -> Result<AckOutcome> {
        let mut inner = self.inner.lock();
        self.ack_locked(&mut inner, key, queue_offset)
    }

    /// Acks several queue offsets of one checkpoint (a batch ack) with one log line: the offsets
    /// newly acked. Offsets not in the checkpoint, or acked already, are skipped. Returns how
    /// many were newly acked and whether the checkpoint was completed (and removed); `None` when
    /// there is no such checkpoint.
    pub fn ack_many(
        &self,
        key: &PopKey,
        offsets: impl IntoIterator<Item = i64>,
    ) -> Result<Option<(usize, bool)>> {
        let mut inner = self.inner.lock();
        let Some(ck) = inner.table.get_mut(key) else {
            return Ok(None);
        };
        let mut newly = Vec::new();
        for offset in offsets {
            if let Some(i) = ck.msg_offsets.iter().position(|o| *o == offset) {
                if ck.acked.set(i) {
                    newly.push(offset);
                }
            }
        }
        if newly.is_empty() {
            return Ok(Some((0, false)));
        }
        let completed = ck.is_fully_acked();
        if completed {
            inner.table.remove(key);
        }
        let n = newly.len();
        let rec = if n == 1 {
            LogRecord::Ack {
                key: key.clone(),
                offset: newly[0],
            }
        } else {
            LogRecord::Acks {
                key: key.clone(),
                offsets: newly,
            }
        };
        self.log(&mut inner, &rec)?;
        Ok(Some((n, completed)))
    }

    /// CHANGE_MESSAGE_INVISIBLETIME: adds a single-message checkpoint for `queue_offset`
    /// (`start_offset = queue_offset`, the new pop and invisible times, the rest copied from the
    /// original) and acks the offset in the original, under one lock.
    ///
    /// When the original does not exist, does not contain the offset or has it acked already,
    /// nothing is written and the outcome has `new_checkpoint: None` (the handle is dead). A
    /// checkpoint already present under the new key is replaced.
    pub fn change_invisible(
        &self,
        key: &PopKey,
        queue_offset: i64,
        new_pop_time: i64,
        new_invisible_time: i64,
    ) -> Result<ChangeInvisibleOutcome> {
        let mut inner = self.inner.lock();
        let dead = ChangeInvisibleOutcome {
            new_checkpoint: None,
            original: AckOutcome {
                not_found: true,
                ..AckOutcome::default()
            },
        };
        let Some(orig) = inner.table.get(key) else {
            return Ok(dead);
        };
        let Some(i) = orig.msg_offsets.iter().position(|o| *o == queue_offset) else {
            return Ok(dead);
        };
        if orig.acked.contains(i) {
            return Ok(ChangeInvisibleOutcome {
                new_checkpoint: None,
                original: AckOutcome::default(),
            });
        }
        // The new checkpoint must not share the original's key (same start offset and a pop in
        // the same millisecond), or acking the original below would ack the new one too.
        let new_pop_time = if queue_offset == orig.start_offset && new_pop_time <= orig.pop_time {
            orig.pop_time + 1
        } else {
            new_pop_time
        };
        let ck = PopCheckpoint {
            start_offset: queue_offset,
            pop_time: new_pop_time,
            invisible_time: new_invisible_time,
            msg_offsets: vec![queue_offset],
            acked: AckBitmap::default(),
            ..orig.clone()
        };
        let frees_one = orig.unacked_offsets().len() == 1;
        let new_key = ck.key();
        if inner.table.len() >= self.max_live && !frees_one && !inner.table.contains_key(&new_key) {
            return Err(StoreError::TooManyCheckpoints { max: self.max_live });
        }
        inner.table.insert(new_key, ck.clone());
        self.log(&mut inner, &LogRecord::Add { ck: ck.clone() })?;
        let original = self.ack_locked(&mut inner, key, queue_offset)?;
        Ok(ChangeInvisibleOutcome {
            new_checkpoint: Some(ck),
            original,
        })
    }

    /// Checkpoints whose revive time (`pop_time + invisible_time`) is at or before `now_ms`,
    /// oldest first, with their un-acked offsets. They stay in the table until [`remove`]d
    /// (the revive service removes each after re-putting its messages).
    ///
    /// [`remove`]: PopStore::remove
    pub fn expired(&self, now_ms: i64) -> Vec<(PopCheckpoint, Vec<i64>)> {
        let inner = self.inner.lock();
        let mut out: Vec<(PopCheckpoint, Vec<i64>)> = inner
            .table
            .values()
            .filter(|ck| ck.revive_time() <= now_ms)
            .map(|ck| (ck.clone(), ck.unacked_offsets()))
            .collect();
        out.sort_by_key(|(ck, _)| ck.revive_time());
        out
    }

    /// Removes a checkpoint; returns it when it existed.
    pub fn remove(&self, key: &PopKey) -> Result<Option<PopCheckpoint>> {
        let mut inner = self.inner.lock();
        let Some(ck) = inner.table.remove(key) else {
            return Ok(None);
        };
        self.log(&mut inner, &LogRecord::Remove { key: key.clone() })?;
        Ok(Some(ck))
    }

    /// fsyncs the log if it changed since the last sync; returns whether it did.
    pub fn sync(&self) -> Result<bool> {
        let file = {
            let mut inner = self.inner.lock();
            if !inner.dirty {
                return Ok(false);
            }
            self.write_buf(&mut inner)?;
            inner.dirty = false;
            inner.log.try_clone().at(&self.path)?
        };
        if let Err(e) = file.sync_data() {
            self.inner.lock().dirty = true;
            return Err(StoreError::io(&self.path, e));
        }
        Ok(true)
    }
}

impl Drop for PopStore {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        if !inner.buf.is_empty() {
            if let Err(e) = inner.log.write_all(&inner.buf) {
                warn!(path = %self.path.display(), "writing the pop checkpoint log: {e}");
            }
        }
    }
}
