//! Start-up recovery of the consume queues from the commit log: load what is on disk, replay the
//! commit log from the checkpoint (or from the start when the queues miss entries), trim queue
//! entries the commit log does not back, and spot-check each queue file against its records.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rocketmesh_filters::codec::message::RecordView;
use tracing::{error, info, warn};

use super::{
    validate_topic, CommitLog, ConsumeQueue, CqEntry, QueueKey, Result, ScannedRecord,
    StoreCheckpoint, StoreError,
};

/// The consume queues of a store, recovered against `commit_log` (see the module docs).
pub(super) fn recover_queues(
    commit_log: &CommitLog,
    cq_root: &Path,
    per_segment: u64,
    ckpt: Option<StoreCheckpoint>,
) -> Result<HashMap<QueueKey, Arc<ConsumeQueue>>> {
    let started = Instant::now();
    let (mut queues, dropped) = load_queues(cq_root, per_segment)?;
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
            root: cq_root,
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
            trim_to_seen(cq_root, &mut queues, &seen)?;
        } else if !trim_and_check(commit_log, &queues, end)?
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
    Ok(queues)
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

/// Reads the record a consume queue entry points at and checks that it is the record of
/// `topic`/`queue_id` at `queue_offset`.
pub(super) fn verify_record(
    cl: &CommitLog,
    e: &CqEntry,
    topic: &str,
    queue_id: i32,
    queue_offset: u64,
) -> Result<Bytes> {
    check_plausible(cl, e, topic, queue_id, queue_offset)?;
    let offset = e.commit_log_offset as u64;
    let bytes = cl
        .read(offset, e.size as u64)
        .map_err(|err| out_of_log(cl, err, offset, topic, queue_id, queue_offset))?;
    check_record(cl, e, &bytes, topic, queue_id, queue_offset)?;
    Ok(bytes)
}

/// An entry that cannot point at a record is corruption.
pub(super) fn check_plausible(
    cl: &CommitLog,
    e: &CqEntry,
    topic: &str,
    queue_id: i32,
    queue_offset: u64,
) -> Result<()> {
    if e.is_plausible() {
        return Ok(());
    }
    Err(StoreError::corrupt(
        cl.dir(),
        e.commit_log_offset.max(0) as u64,
        format!("implausible consume queue entry {e:?} for {topic}/{queue_id}@{queue_offset}"),
    ))
}

/// A read for a consume queue entry that falls outside the commit log is corruption.
pub(super) fn out_of_log(
    cl: &CommitLog,
    err: StoreError,
    offset: u64,
    topic: &str,
    queue_id: i32,
    queue_offset: u64,
) -> StoreError {
    match err {
        StoreError::OutOfRange { .. } => cl.corrupt_at(
            offset,
            format!(
                "consume queue entry {topic}/{queue_id}@{queue_offset} points outside the commit log"
            ),
        ),
        other => other,
    }
}

/// Checks that `bytes`, read where the entry `e` points, is the record it names.
pub(super) fn check_record(
    cl: &CommitLog,
    e: &CqEntry,
    bytes: &[u8],
    topic: &str,
    queue_id: i32,
    queue_offset: u64,
) -> Result<()> {
    let offset = e.commit_log_offset as u64;
    let ok = match RecordView::parse(bytes) {
        Ok(v) => {
            v.len() == bytes.len()
                && v.topic() == topic
                && v.queue_id() == queue_id
                && v.queue_offset() == queue_offset as i64
                && v.commit_log_offset() == offset as i64
        }
        Err(_) => false,
    };
    if ok {
        return Ok(());
    }
    Err(cl.corrupt_at(
        offset,
        format!("record does not match consume queue entry {topic}/{queue_id}@{queue_offset}"),
    ))
}
