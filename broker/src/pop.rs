//! Pop consumption: POP_MESSAGE, ACK_MESSAGE, BATCH_ACK_MESSAGE, CHANGE_MESSAGE_INVISIBLETIME
//! and the revive service (protocol notes section 6).
//!
//! * A pop reads from the group's pop position of each queue (queue -1 = every read queue,
//!   starting from a rotating one), advances the position at once, and records a checkpoint per
//!   queue read: the offsets handed out, the pop time and the invisible time. Pop-retry messages
//!   (`%RETRY%<group>_<topic>`) are read first one time in five, and top up a batch otherwise.
//! * An ack marks its offset in the checkpoint; a batch ack marks many (one log line per
//!   checkpoint).
//! * Change-invisible-time writes a one-message checkpoint with the new time and acks the old one.
//! * The revive service re-puts every message still un-acked when its checkpoint expires into the
//!   pop-retry topic with `reconsumeTimes + 1` (or the group's DLQ after the maximum), and then
//!   drops the checkpoint. A crash in between can deliver a message twice, never lose it.
//! * Records are returned as stored; retry records keep their retry topic, from which clients
//!   derive the handle's retry flag (the Java client resets the topic to the one it asked for).
//! * A pop with `order=true` is served by [`crate::pop_order`] (one consumer of the group per
//!   queue at a time, no checkpoint, no retry topic); acks, batch-ack entries and
//!   change-invisible requests whose handle has reviveQid 999 go there too. Everything else here
//!   is unaware of orderly batches, as in Apache.

use parking_lot::Mutex;
use rocketmesh_filters::clock::unix_ms;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rocketmesh_filters::codec::body::BatchAckMessageRequestBody;
use rocketmesh_filters::codec::codes::response_code as code;
use rocketmesh_filters::codec::headers::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, ChangeInvisibleTimeResponseHeader,
    PopMessageRequestHeader, PopMessageResponseHeader,
};
use rocketmesh_filters::codec::message::{decode_record, property_keys};
use rocketmesh_filters::codec::pop::{
    build_msg_offset_info, build_start_offset_info, dlq_topic, parse_pop_retry_topic,
    pop_retry_topic_v1, PopHandle, RetryFlag, POP_ORDER_REVIVE_QUEUE,
};
use rocketmesh_filters::codec::RemotingCommand;
use tokio_util::sync::CancellationToken;

use super::long_poll::ANY_QUEUE;
use super::processor::{
    concat, error, header, readable_topic, reply, tag_filter, tag_subscription,
    DEFAULT_MAX_RECONSUME_TIMES,
};
use super::store::{GetStatus, PopCheckpoint, PopKey, StoreError};
use super::Broker;

/// Number of revive queues (only reported in handles, as `reviveQid`).
pub const REVIVE_QUEUES: u64 = 8;
/// Shortest and longest invisible time accepted.
pub const MIN_INVISIBLE: i64 = 1_000;
/// Longest invisible time accepted (12 h).
pub const MAX_INVISIBLE: i64 = 12 * 3600 * 1000;
/// Longest pop long-poll.
pub const MAX_POLL: Duration = Duration::from_secs(30);
/// Percentage of pops that read the retry topic first.
const RETRY_FIRST_PERCENT: u64 = 20;
/// How often expired checkpoints are revived.
const REVIVE_TICK: Duration = Duration::from_millis(500);

/// Per-broker Pop state that is not persisted.
#[derive(Debug, Default)]
pub struct PopState {
    pub(crate) counter: AtomicU64,
    /// Queues being popped right now, by (group, topic, queue): reading a queue's pop position,
    /// reading messages and advancing the position must not interleave between two pops, or both
    /// would hand out the same messages.
    busy: Mutex<HashSet<(String, String, i32)>>,
}

impl PopState {
    /// Claims a queue for one pop; `None` when another pop holds it (the caller skips the queue,
    /// as a Java broker does).
    pub(crate) fn try_lock(
        &self,
        group: &str,
        topic: &str,
        queue_id: i32,
    ) -> Option<QueueLock<'_>> {
        let key = (group.to_owned(), topic.to_owned(), queue_id);
        let mut busy = self.busy.lock();
        // `then`, not `then_some`: a lock built and dropped on contention would release the
        // other pop's claim (and deadlock on this mutex).
        busy.insert(key.clone())
            .then(|| QueueLock { state: self, key })
    }
}

/// A claimed queue; released on drop.
pub(crate) struct QueueLock<'a> {
    state: &'a PopState,
    key: (String, String, i32),
}

impl Drop for QueueLock<'_> {
    fn drop(&mut self) {
        let mut busy = self.state.busy.lock();
        busy.remove(&self.key);
    }
}

struct QueueRead {
    retry: RetryFlag,
    queue_id: i32,
    start: i64,
    offsets: Vec<i64>,
}

/// POP_MESSAGE.
pub(crate) async fn pop(b: &Arc<Broker>, req: &RemotingCommand) -> RemotingCommand {
    let h: PopMessageRequestHeader = match header(b, req, code::INVALID_PARAMETER) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    if h.max_msg_nums <= 0 || h.max_msg_nums > 32 {
        return error(
            b,
            req,
            code::INVALID_PARAMETER,
            format!(
                "the max message num {} must be within 1..=32",
                h.max_msg_nums
            ),
        );
    }
    let cfg = match readable_topic(b, req, &h.topic) {
        Ok(cfg) => cfg,
        Err(resp) => return resp,
    };
    if h.queue_id >= cfg.read_queue_nums {
        return error(
            b,
            req,
            code::INVALID_PARAMETER,
            format!(
                "queueId[{}] is illegal, topic:[{}] readQueueNums:[{}]",
                h.queue_id, h.topic, cfg.read_queue_nums
            ),
        );
    }
    let expr = h.exp.as_deref().unwrap_or("*");
    let sub = match tag_subscription(b, req, &h.topic, h.exp_type.as_deref(), expr) {
        Ok(sub) => sub,
        Err(resp) => return resp,
    };
    let invisible = h.invisible_time.clamp(MIN_INVISIBLE, MAX_INVISIBLE);
    let filter = tag_filter(Some(&sub));
    if h.order == Some(true) {
        return super::pop_order::pop(b, req, &h, &cfg, filter.as_deref(), invisible).await;
    }
    let retry_topic = pop_retry_topic_v1(&h.consumer_group, &h.topic);
    let poll = Duration::from_millis(h.poll_time.max(0) as u64).min(MAX_POLL);
    let deadline = Instant::now() + poll;
    loop {
        let topic_waiter = b.store.arrivals().waiter(
            &h.topic,
            if h.queue_id < 0 {
                ANY_QUEUE
            } else {
                h.queue_id
            },
        );
        let retry_waiter = b.store.arrivals().waiter(&retry_topic, ANY_QUEUE);
        let (t, r) = (topic_waiter.notified(), retry_waiter.notified());
        tokio::pin!(t, r);
        t.as_mut().enable();
        r.as_mut().enable();

        let pop_time = unix_ms();
        let count = b.pop.counter.fetch_add(1, Ordering::Relaxed);
        let revive_qid = (count % REVIVE_QUEUES) as i32;
        let want = h.max_msg_nums as usize;
        let mut records: Vec<Bytes> = Vec::new();
        let mut reads: Vec<QueueRead> = Vec::new();
        let retry_first = count % 100 < RETRY_FIRST_PERCENT;
        let retry_exists = b.topics.get(&retry_topic).is_some();
        let read_retry =
            |records: &mut Vec<Bytes>, reads: &mut Vec<QueueRead>| -> Result<(), StoreError> {
                if retry_exists && records.len() < want {
                    read_queue(
                        b,
                        &h.consumer_group,
                        &retry_topic,
                        0,
                        RetryFlag::RetryV1,
                        0,
                        want - records.len(),
                        None,
                        records,
                        reads,
                    )?;
                }
                Ok(())
            };
        let result: Result<(), StoreError> = (|| {
            if retry_first {
                read_retry(&mut records, &mut reads)?;
            }
            let queues: Vec<i32> = if h.queue_id >= 0 {
                vec![h.queue_id]
            } else {
                let n = cfg.read_queue_nums.max(1);
                let start = (count % n as u64) as i32;
                (0..n).map(|i| (start + i) % n).collect()
            };
            for qid in queues {
                if records.len() >= want {
                    break;
                }
                read_queue(
                    b,
                    &h.consumer_group,
                    &h.topic,
                    qid,
                    RetryFlag::Normal,
                    h.init_mode,
                    want - records.len(),
                    filter.as_deref(),
                    &mut records,
                    &mut reads,
                )?;
            }
            if !retry_first {
                read_retry(&mut records, &mut reads)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            return error(b, req, code::SYSTEM_ERROR, format!("pop failed: {e}"));
        }
        if records.is_empty() {
            // A draining broker answers parked pops now instead of holding its drain.
            if Instant::now() < deadline && !b.draining.is_cancelled() {
                tokio::select! {
                    () = &mut t => continue,
                    () = &mut r => continue,
                    () = tokio::time::sleep_until(deadline.into()) => continue,
                    () = b.draining.cancelled() => continue,
                }
            }
            b.metrics.pops.increment(1);
            let header = PopMessageResponseHeader {
                pop_time,
                invisible_time: invisible,
                revive_qid,
                rest_num: 0,
                ..PopMessageResponseHeader::default()
            };
            return error(b, req, code::POLLING_TIMEOUT, "no new message").with_header(&header);
        }
        // Checkpoints first: a message is handed out only once its redelivery is guaranteed.
        for read in &reads {
            let ck = PopCheckpoint {
                topic: match read.retry {
                    RetryFlag::Normal => h.topic.clone(),
                    _ => retry_topic.clone(),
                },
                group: h.consumer_group.clone(),
                queue_id: read.queue_id,
                retry: read.retry as u8,
                start_offset: read.start,
                pop_time,
                invisible_time: invisible,
                revive_queue_id: revive_qid,
                broker_name: b.config.name.clone(),
                msg_offsets: read.offsets.clone(),
                acked: Default::default(),
            };
            if let Err(e) = b.store.pop().add_checkpoint(ck) {
                // Not handing the messages out; put the pop position back so they are popped again.
                for read in &reads {
                    let topic = if read.retry == RetryFlag::Normal {
                        &h.topic
                    } else {
                        &retry_topic
                    };
                    b.offsets_commit(&h.consumer_group, topic, read.queue_id, read.start);
                }
                return error(
                    b,
                    req,
                    code::SYSTEM_ERROR,
                    format!("cannot record the pop checkpoint: {e}"),
                );
            }
        }
        let starts: Vec<(RetryFlag, i32, i64)> = reads
            .iter()
            .map(|r| (r.retry, r.queue_id, r.start))
            .collect();
        let offsets: Vec<(RetryFlag, i32, &[i64])> = reads
            .iter()
            .map(|r| (r.retry, r.queue_id, r.offsets.as_slice()))
            .collect();
        let rest: i64 = (0..cfg.read_queue_nums)
            .map(|q| {
                let pos = b.offsets_query(&h.consumer_group, &h.topic, q).unwrap_or(0);
                (b.max_offset(&h.topic, q) - pos).max(0)
            })
            .sum();
        let header = PopMessageResponseHeader {
            pop_time,
            invisible_time: invisible,
            revive_qid,
            rest_num: rest,
            start_offset_info: Some(build_start_offset_info(&starts)),
            msg_offset_info: Some(build_msg_offset_info(&offsets)),
            ..PopMessageResponseHeader::default()
        };
        return found(b, req, &header, &records);
    }
}

/// The answer to a pop that found messages (plain or orderly), counted.
pub(crate) fn found(
    b: &Broker,
    req: &RemotingCommand,
    header: &PopMessageResponseHeader,
    records: &[Bytes],
) -> RemotingCommand {
    b.metrics.pops.increment(1);
    b.metrics.popped.increment(records.len() as u64);
    reply(b, req, code::SUCCESS)
        .with_header(header)
        .with_body(concat(records))
}

/// Reads up to `want` messages of one queue from the group's pop position and advances it.
#[allow(clippy::too_many_arguments)]
fn read_queue(
    b: &Broker,
    group: &str,
    topic: &str,
    queue_id: i32,
    retry: RetryFlag,
    init_mode: i32,
    want: usize,
    filter: Option<&[i64]>,
    records: &mut Vec<Bytes>,
    reads: &mut Vec<QueueRead>,
) -> Result<(), StoreError> {
    let Some(_claim) = b.pop.try_lock(group, topic, queue_id) else {
        return Ok(());
    };
    let min = b.min_offset(topic, queue_id);
    let max = b.max_offset(topic, queue_id);
    let start = match b.offsets_query(group, topic, queue_id) {
        Some(o) => o.max(min),
        // No position yet: MIN (0) starts at the oldest message, MAX (1) at the newest one;
        // retry topics always start at the oldest.
        None if init_mode == 1 && retry == RetryFlag::Normal => (max - 1).max(min),
        None => min,
    };
    if start >= max {
        return Ok(());
    }
    let got = b.get(topic, queue_id, start, want, 256 * 1024, filter)?;
    match got.status {
        GetStatus::Found => {
            let mut offsets = Vec::with_capacity(got.records.len());
            for rec in &got.records {
                let view = rocketmesh_filters::codec::message::RecordView::parse(rec)
                    .map_err(|e| StoreError::Internal(e.to_string()))?;
                offsets.push(view.queue_offset());
            }
            records.extend(got.records.iter().cloned());
            reads.push(QueueRead {
                retry,
                queue_id,
                start,
                offsets,
            });
            b.offsets_commit(group, topic, queue_id, got.next_begin_offset);
        }
        GetStatus::NoMatchedMessage => {
            b.offsets_commit(group, topic, queue_id, got.next_begin_offset)
        }
        _ => {}
    }
    Ok(())
}

fn key_of(handle: &PopHandle, group: &str, real_topic: &str) -> PopKey {
    PopKey {
        group: group.to_owned(),
        topic: real_topic.to_owned(),
        queue_id: handle.queue_id,
        start_offset: handle.ck_queue_offset,
        pop_time: handle.pop_time,
    }
}

/// The pop handle of an ack or change-invisible request, checked: `extraInfo` parses and the
/// offset lies in the queue. Otherwise the error response (INVALID_PARAMETER or NO_MESSAGE).
// The error is the finished response, returned straight to the client.
#[allow(clippy::result_large_err)]
fn checked_handle(
    b: &Broker,
    req: &RemotingCommand,
    extra_info: &str,
    topic: &str,
    queue_id: i32,
    offset: i64,
) -> Result<PopHandle, RemotingCommand> {
    let handle = PopHandle::parse(extra_info).map_err(|e| {
        error(
            b,
            req,
            code::INVALID_PARAMETER,
            format!("bad extraInfo: {e}"),
        )
    })?;
    if offset < b.min_offset(topic, queue_id) || offset >= b.max_offset(topic, queue_id) {
        return Err(error(
            b,
            req,
            code::NO_MESSAGE,
            format!("offset {offset} is out of range of {topic}:{queue_id}"),
        ));
    }
    Ok(handle)
}

/// ACK_MESSAGE.
pub(crate) async fn ack(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: AckMessageRequestHeader = match header(b, req, code::INVALID_PARAMETER) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let handle = match checked_handle(b, req, &h.extra_info, &h.topic, h.queue_id, h.offset) {
        Ok(handle) => handle,
        Err(resp) => return resp,
    };
    if handle.is_order() {
        return super::pop_order::ack(b, req, &h, &handle).await;
    }
    match b
        .store
        .pop()
        .ack(&key_of(&handle, &h.consumer_group, &h.topic), h.offset)
    {
        // An ack for a checkpoint already revived is late, not wrong: the message was redelivered.
        Ok(_) => {
            b.metrics.acks.increment(1);
            reply(b, req, code::SUCCESS)
        }
        Err(e) => error(b, req, code::SYSTEM_ERROR, format!("ack failed: {e}")),
    }
}

/// BATCH_ACK_MESSAGE.
pub(crate) async fn batch_ack(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let body = match BatchAckMessageRequestBody::parse(req.body()) {
        Ok(body) => body,
        Err(e) => return error(b, req, code::INVALID_PARAMETER, e.to_string()),
    };
    let (orderly, acks): (Vec<_>, Vec<_>) = body
        .acks
        .iter()
        .partition(|a| a.revive_queue_id == POP_ORDER_REVIVE_QUEUE);
    for a in acks {
        let retry = RetryFlag::parse(&a.retry).unwrap_or(RetryFlag::Normal);
        let real_topic = match retry {
            RetryFlag::Normal => a.topic.clone(),
            RetryFlag::RetryV1 => pop_retry_topic_v1(&a.consumer_group, &a.topic),
            RetryFlag::RetryV2 => {
                rocketmesh_filters::codec::pop::pop_retry_topic_v2(&a.consumer_group, &a.topic)
            }
        };
        let key = PopKey {
            group: a.consumer_group.clone(),
            topic: real_topic,
            queue_id: a.queue_id,
            start_offset: a.start_offset,
            pop_time: a.pop_time,
        };
        // One log line for the checkpoint's offsets, not one per offset.
        let n = a.acked_offsets().count() as u64;
        if let Err(e) = b.store.pop().ack_many(&key, a.acked_offsets()) {
            return error(b, req, code::SYSTEM_ERROR, format!("ack failed: {e}"));
        }
        b.metrics.acks.increment(n);
    }
    if !orderly.is_empty() {
        if let Err(remark) = super::pop_order::batch_ack(b, &orderly).await {
            return error(b, req, code::MESSAGE_ILLEGAL, remark);
        }
    }
    reply(b, req, code::SUCCESS)
}

/// CHANGE_MESSAGE_INVISIBLETIME.
pub(crate) async fn change_invisible(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: ChangeInvisibleTimeRequestHeader = match header(b, req, code::INVALID_PARAMETER) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let handle = match checked_handle(b, req, &h.extra_info, &h.topic, h.queue_id, h.offset) {
        Ok(handle) => handle,
        Err(resp) => return resp,
    };
    let now = unix_ms();
    let invisible = h.invisible_time.clamp(0, MAX_INVISIBLE);
    if handle.is_order() {
        return super::pop_order::change_invisible(b, req, &h, &handle, invisible).await;
    }
    let key = key_of(&handle, &h.consumer_group, &h.topic);
    match b
        .store
        .pop()
        .change_invisible(&key, h.offset, now, invisible)
    {
        Ok(out) => match out.new_checkpoint {
            Some(ck) => {
                reply(b, req, code::SUCCESS).with_header(&ChangeInvisibleTimeResponseHeader {
                    pop_time: ck.pop_time,
                    invisible_time: ck.invisible_time,
                    revive_qid: ck.revive_queue_id,
                })
            }
            None => error(
                b,
                req,
                code::NO_MESSAGE,
                "the message handle is no longer valid (acked or already redelivered)",
            ),
        },
        Err(e) => error(
            b,
            req,
            code::SYSTEM_ERROR,
            format!("change invisible time failed: {e}"),
        ),
    }
}

/// Revives expired checkpoints until `shutdown`.
pub async fn revive(b: Arc<Broker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REVIVE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let expired = b.store.pop().expired(unix_ms());
        if !expired.is_empty() {
            tracing::debug!(
                count = expired.len(),
                live = b.store.pop().len(),
                "reviving expired pop checkpoints"
            );
        }
        for (ck, unacked) in expired {
            match revive_one(&b, &ck, &unacked).await {
                Ok(()) => {
                    if let Err(e) = b.store.pop().remove(&ck.key()) {
                        tracing::warn!("cannot drop a revived checkpoint: {e}");
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %ck.topic, queue = ck.queue_id, "revive failed, will retry: {e}")
                }
            }
        }
    }
}

async fn revive_one(b: &Broker, ck: &PopCheckpoint, unacked: &[i64]) -> Result<(), StoreError> {
    let original_topic = match parse_pop_retry_topic(&ck.topic, &ck.group) {
        Some((_, t)) => t,
        None => ck.topic.clone(),
    };
    let retry_topic = pop_retry_topic_v1(&ck.group, &original_topic);
    for &offset in unacked {
        let got = b.get(&ck.topic, ck.queue_id, offset, 1, 8 << 20, None)?;
        let Some(record) = got
            .records
            .first()
            .filter(|_| got.status == GetStatus::Found)
        else {
            tracing::warn!(topic = %ck.topic, queue = ck.queue_id, offset, "message to revive is gone");
            continue;
        };
        let (msg, _) = decode_record(record).map_err(|e| StoreError::Internal(e.to_string()))?;
        let reconsume = msg.reconsume_times + 1;
        let (topic, dead) = if reconsume > DEFAULT_MAX_RECONSUME_TIMES {
            (dlq_topic(&ck.group), true)
        } else {
            (retry_topic.clone(), false)
        };
        b.topics
            .ensure(&topic, 1)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut props = msg.properties.clone();
        if props.get(property_keys::FIRST_POP_TIME).is_none() {
            props.insert(property_keys::FIRST_POP_TIME, ck.pop_time.to_string());
        }
        if dead {
            props.insert(property_keys::DLQ_ORIGIN_TOPIC, original_topic.as_str());
        }
        props.remove(property_keys::POP_CK);
        let revived = b.new_message(
            &topic,
            0,
            msg.flag,
            msg.sys_flag,
            msg.born_timestamp,
            msg.born_host,
            reconsume,
            msg.body.clone(),
            props,
        );
        b.put(vec![revived]).await?;
        if dead {
            b.metrics.dlq.increment(1);
        } else {
            b.metrics.revived.increment(1);
        }
    }
    Ok(())
}
