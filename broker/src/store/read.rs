//! The store's read side: queue extents, pulls ([`MessageStore::get_messages`], one commit log
//! read per pull where the records lie close together), look-ups by commit log offset and by
//! store time.

use super::*;

impl MessageStore {
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

    /// The raw, checked record at a physical offset (VIEW_MESSAGE_BY_ID, QUERY_MESSAGE).
    pub fn record_bytes(&self, phys_offset: i64) -> Result<Bytes> {
        match u64::try_from(phys_offset) {
            Ok(offset) => self.commit_log.read_record_bytes(offset),
            Err(_) => Err(StoreError::OutOfRange {
                offset: 0,
                size: 0,
                min: self.commit_log.min_offset(),
                max: self.commit_log.end_offset(),
            }),
        }
    }

    /// Reads the records of `picked` (queue offset, entry; ascending) into `out`, checking each.
    /// Records close together in the commit log (another queue's records between them, as
    /// round-robin producers leave them) are read with one `pread` of the span they lie in
    /// and sliced out of it: one read per pull instead of one per record.
    fn read_records(
        &self,
        picked: &[(u64, CqEntry)],
        topic: &str,
        queue_id: i32,
        out: &mut Vec<Bytes>,
    ) -> Result<()> {
        let seg_size = self.commit_log.segment_size();
        let mut i = 0;
        while i < picked.len() {
            let start = picked[i].1.commit_log_offset as u64;
            let (mut end, mut useful) = (picked[i].1.end(), picked[i].1.size as u64);
            let mut j = i + 1;
            while let Some((_, e)) = picked.get(j) {
                let (o, e_end) = (e.commit_log_offset as u64, e.end());
                let fits = o >= end
                    && o / seg_size == start / seg_size
                    && (e_end - 1) / seg_size == start / seg_size
                    && e_end - start <= MAX_SPAN_READ
                    && e_end - start <= SPAN_WASTE * (useful + e.size as u64);
                if !fits {
                    break;
                }
                (end, useful) = (e_end, useful + e.size as u64);
                j += 1;
            }
            let span = self.commit_log.read(start, end - start).map_err(|err| {
                let (idx, _) = picked[i];
                out_of_log(&self.commit_log, err, start, topic, queue_id, idx)
            })?;
            for (idx, e) in &picked[i..j] {
                let from = (e.commit_log_offset as u64 - start) as usize;
                let rec = span.slice(from..from + e.size as usize);
                check_record(&self.commit_log, e, &rec, topic, queue_id, *idx)?;
                out.push(rec);
            }
            i = j;
        }
        Ok(())
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
            // Which entries: the filter and the count and byte budgets, from the queue alone.
            let mut picked: Vec<(u64, CqEntry)> = Vec::new();
            for e in entries {
                if picked.len() >= max_count
                    || (!picked.is_empty() && total + e.size.max(0) as usize > max_bytes)
                {
                    break;
                }
                let idx = (offset + scanned) as u64;
                scanned += 1;
                if !filter(e.tags_code) {
                    continue;
                }
                check_plausible(&self.commit_log, &e, topic, queue_id, idx)?;
                total += e.size as usize;
                picked.push((idx, e));
            }
            self.read_records(&picked, topic, queue_id, &mut res.records)?;
            if !res.records.is_empty() {
                res.status = GetStatus::Found;
            }
            res.next_begin_offset = offset + scanned;
            self.messages_read
                .fetch_add(res.records.len() as u64, Ordering::Relaxed);
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

    /// Store timestamp of the message at `queue_offset` of a queue; `None` when the queue or
    /// the entry does not exist.
    pub fn store_timestamp_at(
        &self,
        topic: &str,
        queue_id: i32,
        queue_offset: i64,
    ) -> Result<Option<i64>> {
        let Some(q) = self.queue(topic, queue_id) else {
            return Ok(None);
        };
        let Ok(idx) = u64::try_from(queue_offset) else {
            return Ok(None);
        };
        if idx < q.min_offset() {
            return Ok(None);
        }
        match q.entry(idx)? {
            Some(e) => self.store_timestamp_of(&e).map(Some),
            None => Ok(None),
        }
    }

    /// Store timestamp of the first message in the commit log, -1 when it is empty (Apache's
    /// `getEarliestMessageTime`).
    pub fn earliest_message_time(&self) -> i64 {
        let min = self.commit_log.min_offset();
        self.commit_log
            .read_record_bytes(min)
            .ok()
            .and_then(|b| RecordView::parse(&b).ok().map(|v| v.store_timestamp()))
            .unwrap_or(-1)
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
