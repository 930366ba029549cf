//! Orderly Pop (`order=true`): POP_MESSAGE, ACK / BATCH_ACK and CHANGE_MESSAGE_INVISIBLETIME of
//! orderly-popped messages, as Apache's `PopMessageProcessor` / `AckMessageProcessor.ackOrderly`
//! / `ChangeInvisibleTimeProcessor` with `ConsumerOrderInfoManager` do. The state is
//! [`crate::order_info::OrderTable`].
//!
//! * An orderly pop reads each queue from the group's consumer offset (the pop position
//!   non-orderly pops share), never from the pop-retry topic, and skips a queue whose batch is
//!   still held: un-acked and not visible again. What it hands out is recorded as the queue's
//!   batch and the consumer offset stays at the batch's start; no checkpoint is written, so
//!   revive never moves these messages to the retry topic. The handles carry reviveQid 999.
//! * After the invisible time the same offsets (from the first un-acked one) go to the next
//!   orderly pop, in order; `orderCountInfo` says how often each was handed out before
//!   (`"0 qo<queueId>%<offset> <count>"` per offset handed out before, then
//!   `"0 <queueId> <min count>"` for older clients), and the records' reconsumeTimes are set to
//!   that count, as the Java client does with it.
//! * Max reconsume times: Apache's broker never sends an orderly message to the DLQ; the
//!   consumer does, when the count reaches its maximum (Java push consumer: send back to
//!   `%RETRY%<group>` with reconsumeTimes >= max, which the broker turns into the DLQ; proxy:
//!   forward to the DLQ), and then acks it. This broker does the same: the count grows forever
//!   until the consumer acks.
//! * An ack sets the offset's bit and commits the queue's next offset (the first un-acked offset
//!   of the batch); when the whole batch is acked the offset moves past it and a parked orderly
//!   pop is woken. An ack below the consumer offset, or naming an older batch, is a late ack:
//!   SUCCESS, nothing changes (Apache commits `offset + 1` for a queue it has no batch for; this
//!   broker does not, since that could skip messages). An offset not in the batch is
//!   MESSAGE_ILLEGAL.
//! * CHANGE_MESSAGE_INVISIBLETIME sets that offset's next visible time (extending or shortening
//!   the block) and answers the batch's own popTime, so the handle stays the batch's.
//! * Mixing, as Apache: a non-orderly pop of the same group ignores orderly batches. It reads
//!   from the shared pop position, which during an orderly batch is the batch's start, so it gets
//!   those messages too (with a checkpoint of its own) and moves the position past them; the
//!   orderly holder's acks are then below the offset (late), and orderly pops stay blocked until
//!   the batch's invisible time ends, then go on from the moved position.
//!
//! Durability: before a pop or an ack is answered, the consumer offsets and the order table are
//! written (fsync, rename), off the runtime's workers. A crash loses nothing a client was told;
//! a batch popped but not answered is recorded and blocks its queue until its invisible time,
//! then comes again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rocketmesh_filters::clock::unix_ms;
use rocketmesh_filters::codec::body::{BatchAck, TopicConfig};
use rocketmesh_filters::codec::codes::response_code as code;
use rocketmesh_filters::codec::headers::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, ChangeInvisibleTimeResponseHeader,
    PopMessageRequestHeader, PopMessageResponseHeader,
};
use rocketmesh_filters::codec::message::{patch_reconsume_times, RecordView};
use rocketmesh_filters::codec::pop::{
    build_msg_offset_info, build_order_count_info, build_start_offset_info, OrderCountKey,
    PopHandle, QueueKey, RetryFlag, POP_ORDER_REVIVE_QUEUE,
};
use rocketmesh_filters::codec::RemotingCommand;

use super::long_poll::ANY_QUEUE;
use super::order_info::{Commit, Gate, OrderCounts, OrderKey};
use super::pop::MAX_POLL;
use super::processor::{error, reply};
use super::store::{GetStatus, StoreError};
use super::Broker;

/// One queue's part of an orderly pop.
struct Read {
    queue_id: i32,
    start: i64,
    offsets: Vec<i64>,
    counts: OrderCounts,
}

/// What reading one queue gave.
enum Outcome {
    /// Messages (recorded as the queue's batch); the rest of the queue after them.
    Read(Read, i64),
    /// Nothing to read, or another pop holds the queue's claim; the rest of the queue.
    Nothing(i64),
    /// Held by another consumer until this time.
    Blocked(i64),
}

/// POP_MESSAGE with `order=true`; the header and topic are already checked.
pub(crate) async fn pop(
    b: &Arc<Broker>,
    req: &RemotingCommand,
    h: &PopMessageRequestHeader,
    cfg: &TopicConfig,
    filter: Option<&[i64]>,
    invisible: i64,
) -> RemotingCommand {
    let poll = Duration::from_millis(h.poll_time.max(0) as u64).min(MAX_POLL);
    let deadline = Instant::now() + poll;
    let want = h.max_msg_nums.max(1) as usize;
    loop {
        let waiter = b.store.arrivals().waiter(
            &h.topic,
            if h.queue_id < 0 {
                ANY_QUEUE
            } else {
                h.queue_id
            },
        );
        let arrived = waiter.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();

        let pop_time = unix_ms();
        let count = b.pop.counter.fetch_add(1, Ordering::Relaxed);
        let queues: Vec<i32> = if h.queue_id >= 0 {
            vec![h.queue_id]
        } else {
            let n = cfg.read_queue_nums.max(1);
            let start = (count % n as u64) as i32;
            (0..n).map(|i| (start + i) % n).collect()
        };
        let mut records: Vec<Bytes> = Vec::new();
        let mut reads: Vec<Read> = Vec::new();
        let mut rest = 0i64;
        let mut free_at: Option<i64> = None;
        for qid in queues {
            if records.len() >= want {
                let pos = b
                    .offsets_query(&h.consumer_group, &h.topic, qid)
                    .unwrap_or(0);
                rest += (b.max_offset(&h.topic, qid) - pos).max(0);
                continue;
            }
            let outcome = read_queue(
                b,
                h,
                qid,
                want - records.len(),
                filter,
                pop_time,
                invisible,
                &mut records,
            );
            match outcome {
                Ok(Outcome::Read(read, left)) => {
                    reads.push(read);
                    rest += left;
                }
                Ok(Outcome::Nothing(left)) => rest += left,
                Ok(Outcome::Blocked(until)) => {
                    free_at = Some(free_at.map_or(until, |f| f.min(until)));
                }
                Err(e) => return error(b, req, code::SYSTEM_ERROR, format!("pop failed: {e}")),
            }
        }
        if !reads.is_empty() {
            // Recorded before it is handed out: a crash after the answer loses nothing.
            if let Err(e) = persist(b).await {
                return error(
                    b,
                    req,
                    code::SYSTEM_ERROR,
                    format!("cannot record the orderly pop: {e}"),
                );
            }
        }
        if records.is_empty() {
            if Instant::now() < deadline && !b.draining.is_cancelled() {
                // A held queue frees itself when its invisible time ends: look again then.
                let until = match free_at {
                    Some(t) => {
                        let ms = t.saturating_sub(unix_ms()).max(1) as u64;
                        deadline.min(Instant::now() + Duration::from_millis(ms).min(MAX_POLL))
                    }
                    None => deadline,
                };
                tokio::select! {
                    () = &mut arrived => continue,
                    () = tokio::time::sleep_until(until.into()) => continue,
                    () = b.draining.cancelled() => continue,
                }
            }
            b.metrics.pops.increment(1);
            let header = PopMessageResponseHeader {
                pop_time,
                invisible_time: invisible,
                revive_qid: POP_ORDER_REVIVE_QUEUE,
                rest_num: rest,
                ..PopMessageResponseHeader::default()
            };
            return error(b, req, code::POLLING_TIMEOUT, "no new message").with_header(&header);
        }
        let starts: Vec<(RetryFlag, i32, i64)> = reads
            .iter()
            .map(|r| (RetryFlag::Normal, r.queue_id, r.start))
            .collect();
        let offsets: Vec<(RetryFlag, i32, &[i64])> = reads
            .iter()
            .map(|r| (RetryFlag::Normal, r.queue_id, r.offsets.as_slice()))
            .collect();
        let mut counts: Vec<(OrderCountKey, i32)> = Vec::new();
        for r in &reads {
            for &(offset, c) in &r.counts.per_offset {
                counts.push((
                    OrderCountKey::QueueOffset {
                        retry: RetryFlag::Normal,
                        queue_id: r.queue_id,
                        queue_offset: offset,
                    },
                    c,
                ));
            }
            let key = QueueKey::new(RetryFlag::Normal, r.queue_id);
            counts.push((OrderCountKey::Queue(key), r.counts.min));
        }
        let header = PopMessageResponseHeader {
            pop_time,
            invisible_time: invisible,
            revive_qid: POP_ORDER_REVIVE_QUEUE,
            rest_num: rest,
            start_offset_info: Some(build_start_offset_info(&starts)),
            msg_offset_info: Some(build_msg_offset_info(&offsets)),
            order_count_info: Some(build_order_count_info(&counts)),
        };
        return super::pop::found(b, req, &header, &records);
    }
}

/// Reads up to `want` messages of one queue from the group's consumer offset, if no other
/// consumer holds it, and records them as the queue's batch.
#[allow(clippy::too_many_arguments)]
fn read_queue(
    b: &Broker,
    h: &PopMessageRequestHeader,
    queue_id: i32,
    want: usize,
    filter: Option<&[i64]>,
    pop_time: i64,
    invisible: i64,
    records: &mut Vec<Bytes>,
) -> Result<Outcome, StoreError> {
    let (group, topic) = (h.consumer_group.as_str(), h.topic.as_str());
    let Some(_claim) = b.pop.try_lock(group, topic, queue_id) else {
        return Ok(Outcome::Nothing(0));
    };
    let key: OrderKey = (group.to_owned(), topic.to_owned(), queue_id);
    let attempt = h.attempt_id.as_deref().filter(|a| !a.is_empty());
    let version = match b.pop_order.gate(&key, attempt, pop_time) {
        Gate::Open { version } => version,
        Gate::Blocked { until } => return Ok(Outcome::Blocked(until)),
    };
    let min = b.min_offset(topic, queue_id);
    let max = b.max_offset(topic, queue_id);
    let start = match b.offsets_query(group, topic, queue_id) {
        Some(o) => o.max(min),
        None if h.init_mode == 1 => (max - 1).max(min),
        None => min,
    };
    if start >= max {
        return Ok(Outcome::Nothing(0));
    }
    let got = b.get(topic, queue_id, start, want, 256 * 1024, filter)?;
    let left = (got.max_offset - got.next_begin_offset).max(0);
    match got.status {
        GetStatus::Found => {}
        GetStatus::NoMatchedMessage => {
            // Nothing the subscription wants up to next_begin: Apache moves the offset past.
            b.offsets_commit(group, topic, queue_id, got.next_begin_offset);
            return Ok(Outcome::Nothing(left));
        }
        _ => return Ok(Outcome::Nothing(left)),
    }
    let mut offsets = Vec::with_capacity(got.records.len());
    for rec in &got.records {
        let view = RecordView::parse(rec).map_err(|e| StoreError::Internal(e.to_string()))?;
        offsets.push(view.queue_offset());
    }
    let installed = b.pop_order.install(
        &key,
        version,
        attempt,
        pop_time,
        invisible,
        &offsets,
        unix_ms(),
        // The offset stays at the batch's start until the batch is acked.
        || b.offsets_commit(group, topic, queue_id, start),
    );
    let counts = match installed {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%group, %topic, queue_id, "orderly pop skips the queue: {e}");
            return Ok(Outcome::Nothing(0));
        }
    };
    for (rec, &offset) in got.records.iter().zip(&offsets) {
        let count = counts.of(offset);
        if count > 0 {
            let mut copy = rec.to_vec();
            patch_reconsume_times(&mut copy, count)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            records.push(Bytes::from(copy));
        } else {
            records.push(rec.clone());
        }
    }
    let read = Read {
        queue_id,
        start,
        offsets,
        counts,
    };
    Ok(Outcome::Read(read, left))
}

/// Writes the consumer offsets and the order table, off the runtime's workers.
async fn persist(b: &Broker) -> Result<(), StoreError> {
    let store = b.store.clone();
    let table = b.pop_order.clone();
    let done = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        store.persist_offsets()?;
        table.persist().map(|_| ())
    })
    .await;
    done.map_err(|e| StoreError::Internal(e.to_string()))?
}

/// Acks one orderly offset; `Err` carries the remark of a MESSAGE_ILLEGAL answer.
fn ack_offset(
    b: &Broker,
    group: &str,
    topic: &str,
    queue_id: i32,
    offset: i64,
    pop_time: i64,
) -> Result<(), String> {
    let key: OrderKey = (group.to_owned(), topic.to_owned(), queue_id);
    let current = b.offsets_query(group, topic, queue_id).unwrap_or(-1);
    if offset < current {
        return Ok(());
    }
    let outcome = b
        .pop_order
        .commit(&key, offset, pop_time, unix_ms(), |next| {
            // Never backwards: a non-orderly pop may have moved the position past the batch.
            let now = b.offsets_query(group, topic, queue_id).unwrap_or(-1);
            if next > now {
                b.offsets_commit(group, topic, queue_id, next);
            }
        });
    match outcome {
        Commit::NoBatch | Commit::OtherBatch => Ok(()),
        Commit::NotInBatch => Err(format!(
            "offset {offset} is not in the orderly batch of {topic}@{group}:{queue_id}"
        )),
        Commit::Next { unblocked, .. } => {
            b.metrics.acks.increment(1);
            if unblocked {
                b.store.arrivals().arrived(topic, queue_id);
            }
            Ok(())
        }
    }
}

/// ACK_MESSAGE of an orderly handle (reviveQid 999).
pub(crate) async fn ack(
    b: &Broker,
    req: &RemotingCommand,
    h: &AckMessageRequestHeader,
    handle: &PopHandle,
) -> RemotingCommand {
    let acked = ack_offset(
        b,
        &h.consumer_group,
        &h.topic,
        h.queue_id,
        h.offset,
        handle.pop_time,
    );
    if let Err(e) = persist(b).await {
        return error(b, req, code::SYSTEM_ERROR, format!("ack failed: {e}"));
    }
    match acked {
        Ok(()) => reply(b, req, code::SUCCESS),
        Err(remark) => error(b, req, code::MESSAGE_ILLEGAL, remark),
    }
}

/// The orderly entries of a BATCH_ACK_MESSAGE (reviveQueueId 999); `Err` is the remark of a
/// MESSAGE_ILLEGAL answer (every offset is still tried, as Apache does).
pub(crate) async fn batch_ack(b: &Broker, acks: &[&BatchAck]) -> Result<(), String> {
    let mut illegal = None;
    for a in acks {
        let (min, max) = (
            b.min_offset(&a.topic, a.queue_id),
            b.max_offset(&a.topic, a.queue_id),
        );
        for offset in a.acked_offsets() {
            if offset < min || offset >= max {
                continue;
            }
            if let Err(e) = ack_offset(
                b,
                &a.consumer_group,
                &a.topic,
                a.queue_id,
                offset,
                a.pop_time,
            ) {
                illegal = Some(e);
            }
        }
    }
    persist(b).await.map_err(|e| format!("ack failed: {e}"))?;
    illegal.map_or(Ok(()), Err)
}

/// CHANGE_MESSAGE_INVISIBLETIME of an orderly handle.
pub(crate) async fn change_invisible(
    b: &Broker,
    req: &RemotingCommand,
    h: &ChangeInvisibleTimeRequestHeader,
    handle: &PopHandle,
    invisible: i64,
) -> RemotingCommand {
    let key: OrderKey = (h.consumer_group.clone(), h.topic.clone(), h.queue_id);
    let current = b
        .offsets_query(&h.consumer_group, &h.topic, h.queue_id)
        .unwrap_or(-1);
    let mut header = ChangeInvisibleTimeResponseHeader {
        pop_time: handle.pop_time,
        invisible_time: handle.invisible_time,
        revive_qid: POP_ORDER_REVIVE_QUEUE,
    };
    if h.offset >= current {
        let visible_at = unix_ms().saturating_add(invisible);
        if b.pop_order
            .extend(&key, h.offset, handle.pop_time, visible_at)
        {
            if let Err(e) = persist(b).await {
                return error(
                    b,
                    req,
                    code::SYSTEM_ERROR,
                    format!("change invisible time failed: {e}"),
                );
            }
        }
        header.invisible_time = visible_at.saturating_sub(handle.pop_time);
    }
    reply(b, req, code::SUCCESS).with_header(&header)
}
