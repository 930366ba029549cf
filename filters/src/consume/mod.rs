//! The Pull -> Pop translator (sans-IO): lets a legacy push consumer, which owns queues and pulls
//! them by offset, consume through Pop, where every consumer shares every queue.
//!
//! The sidecar feeds it events (a PULL arrived, the POP it caused returned, an offset was
//! committed, a message was sent back, time passed, a connection closed) and carries out what it
//! answers (pop here, ack these handles, change that one's invisible time). It owns no sockets and
//! no clock: time comes in as milliseconds.
//!
//! * **Virtual offsets.** Each (connection, group, topic, virtual queue) has its own offset space.
//!   A pull at offset `o` becomes a pop; the records that come back are re-stamped in place
//!   (queueId := the virtual queue, queueOffset := o, o+1, ...), and the translator remembers
//!   `virtual offset -> pop handle`. nextBeginOffset = o + n; an empty pop answers PULL_NOT_FOUND
//!   with nextBeginOffset = o. PULL_OFFSET_MOVED is never answered.
//! * **Virtual commit log offsets.** A record's commitLogOffset is re-stamped too, with a number
//!   unique in this translator: it is all a CONSUMER_SEND_MSG_BACK names the message by, and the
//!   real brokers' commit logs overlap (two brokers fed alike hold different messages at the same
//!   offsets), so the real offset would pick the wrong message. The real one is kept for the
//!   dead-letter forward.
//! * **Commits become acks.** A committed offset X (UPDATE_CONSUMER_OFFSET, or a pull's
//!   commitOffset) acks every handle below X that is still held; [`batch_acks`] groups them into
//!   one BATCH_ACK_MESSAGE per broker (one `BatchAck` per pop checkpoint) instead of one
//!   ACK_MESSAGE per message.
//! * **Send-back becomes change-invisible-time** with the delay of the level; that handle is then
//!   skipped by offset acks. Past the max reconsume times the message goes to the broker's DLQ.
//! * **Renewal.** Held handles are extended before they become visible again, up to a maximum
//!   holding time; past it they are let go so a hung consumer's messages reach the others.
//! * **Nothing is lost.** A handle is only acked for a committed offset; a connection that goes away
//!   takes its table with it and the broker redelivers everything not acked.
//! * **Bounded.** Handles per queue and queues in all are capped; a queue at its cap is throttled
//!   (no pop) until its consumer commits, as the SDK's own flow control would.
//! * **Prefetch.** Once a pull of a virtual queue is answered with messages, the sidecar pops
//!   ahead for that queue in the background ([`Translator::begin_prefetch`], without long
//!   polling): at most one pop in flight per virtual queue, and at most
//!   [`TranslatorConfig::prefetch_max`] messages buffered ahead (one prefetched batch of up to
//!   that size, filled by back-to-back pops of at most 32). Each pop's records are stamped at the
//!   end of the buffer (the queue's next virtual offsets) and their handles are held (counted
//!   against the bounds, renewed) but not delivered. The next pull at exactly the buffer's start
//!   is answered from it at once (one pop's records at most); a pull finding the buffer empty
//!   while a pop is in flight waits for it. A pull anywhere else (a rewind), a buffered handle
//!   that expires or fails its renewal, or the connection closing drops the whole buffer
//!   un-acked: the broker redelivers it once its invisible time is over. A prefetched handle is
//!   never acked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;
use thiserror::Error;

use crate::codec::body::{AckBitSet, BatchAck, BatchAckMessageRequestBody};
use crate::codec::headers::PopMessageResponseHeader;
use crate::codec::message::{
    decode_records, encode_record, patch_records, property_keys, MessageError, MessageVersion,
};
use crate::codec::pop::{is_retry_topic, PopError, PopHandle, PopResponseInfo, RetryFlag};

/// Translator limits and timings.
#[derive(Debug, Clone)]
pub struct TranslatorConfig {
    /// Invisible time asked for on pop and on renewal, ms.
    pub invisible_time_ms: i64,
    /// Renew a held handle when less than this is left of its invisible time, ms.
    pub renew_before_ms: i64,
    /// Longest a handle is held (renewed) for one consumer, ms (like the SDK's consumeTimeout).
    pub max_hold_ms: i64,
    /// Most handles held per virtual queue; past it the queue is throttled until a commit.
    pub max_held_per_queue: usize,
    /// Most virtual queues tracked in all.
    pub max_queues: usize,
    /// Most messages popped ahead (prefetched, not delivered) per virtual queue; 0 turns
    /// prefetching off. A prefetch pop starts only while at least 32 more fit.
    pub prefetch_max: usize,
}

impl Default for TranslatorConfig {
    fn default() -> Self {
        TranslatorConfig {
            invisible_time_ms: 60_000,
            renew_before_ms: 15_000,
            max_hold_ms: 15 * 60_000,
            max_held_per_queue: 1024,
            max_queues: 16_384,
            prefetch_max: 64,
        }
    }
}

/// One legacy consumer's view of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VQueueKey {
    /// The downstream connection (one SDK client instance).
    pub conn: u64,
    pub group: String,
    /// The topic as the consumer subscribed it.
    pub topic: String,
    /// The virtual queue id the consumer pulls.
    pub queue: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeldState {
    /// Delivered, not yet committed.
    Outstanding,
    /// An ack for it is in flight.
    Acking,
    /// Sent back (invisible time changed to the retry delay): skipped by offset acks.
    SentBack,
    /// Popped ahead and stamped, not delivered yet: never acked; dropped with its batch.
    Prefetched,
}

#[derive(Debug, Clone)]
struct Held {
    broker: Arc<str>,
    handle: PopHandle,
    /// The virtual commit log offset the consumer was given (the send-back key).
    commit_log_offset: i64,
    /// The message's commit log offset on its broker.
    real_commit_log_offset: i64,
    reconsume_times: i32,
    /// When it was first delivered to this consumer.
    first_pop_ms: i64,
    /// When the broker would make it visible again unless renewed.
    visible_at_ms: i64,
    renewing: bool,
    state: HeldState,
}

#[derive(Debug)]
struct VQueue {
    /// The queue's own key, shared by its handles' actions.
    key: Arc<VQueueKey>,
    /// The next virtual offset to deliver.
    next: i64,
    committed: i64,
    held: BTreeMap<i64, Held>,
    /// The max message count of the last pull (for prefetches).
    last_max: i32,
    /// Prefetched records from `next` on, one chunk per pop, oldest first.
    ahead: VecDeque<Chunk>,
    /// The generation of the prefetch pop in flight.
    in_flight: Option<u64>,
    /// Bumped whenever a prefetch starts or is dropped: a late pop result of an older one is
    /// not stamped.
    generation: u64,
}

/// One prefetch pop's records, stamped at `start..`, not delivered yet.
#[derive(Debug)]
struct Chunk {
    start: i64,
    body: BytesMut,
    /// Byte length of each record left, in order.
    lens: VecDeque<usize>,
}

impl VQueue {
    fn buffered(&self) -> usize {
        self.ahead.iter().map(|c| c.lens.len()).sum()
    }

    fn ahead_end(&self) -> i64 {
        self.ahead
            .back()
            .map_or(self.next, |c| c.start + c.lens.len() as i64)
    }

    fn new(key: &VQueueKey) -> Self {
        VQueue {
            key: Arc::new(key.clone()),
            next: 0,
            committed: 0,
            held: BTreeMap::new(),
            last_max: 32,
            ahead: VecDeque::new(),
            in_flight: None,
            generation: 0,
        }
    }
}

/// A prefetch to run: pop up to `max_msgs` and report with [`Translator::complete_prefetch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchTicket {
    pub generation: u64,
    pub max_msgs: i32,
}

/// What to do for a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullPlan {
    /// Pop up to this many messages (from the broker and queue the virtual queue maps to).
    Pop { max_msgs: i32 },
    /// Too many messages held and not committed: wait for a commit, then answer not-found.
    Throttled,
    /// Answered from the prefetched batch (start the next prefetch).
    Ready(PullReply),
    /// The batch at this offset is being prefetched: wait for it, then begin the pull again.
    Wait,
    /// Refused (a table is full); answer an error with this text.
    Refused(String),
}

/// The answer to a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullReply {
    Found {
        next_begin: i64,
        max_offset: i64,
        body: BytesMut,
        count: usize,
    },
    NotFound {
        next_begin: i64,
        max_offset: i64,
    },
}

/// A handle to ack (or to change invisible time of) at a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleAction {
    pub key: Arc<VQueueKey>,
    /// Virtual offset (to report the outcome back).
    pub offset: i64,
    /// The broker that served the pop.
    pub broker: Arc<str>,
    /// Real queue id and offset of the message.
    pub queue_id: i32,
    pub queue_offset: i64,
    /// The pop handle (`extraInfo` once formatted).
    pub handle: PopHandle,
    /// The pop checkpoint the handle belongs to (what BATCH_ACK_MESSAGE names).
    pub checkpoint: CheckpointRef,
    /// New invisible time for change-invisible actions, ms.
    pub invisible_time_ms: i64,
}

/// A broker's pop checkpoint, as a pop handle names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckpointRef {
    /// The checkpoint's start offset (`extraInfo` field 0).
    pub start_offset: i64,
    pub pop_time: i64,
    pub invisible_time: i64,
    pub revive_qid: i32,
    pub retry: RetryFlag,
}

impl HandleAction {
    /// The topic to name in the request (the retry topic for retry messages).
    pub fn topic(&self) -> String {
        self.handle.real_topic(&self.key.topic, &self.key.group)
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.key.group
    }

    /// The pop handle as `extraInfo`.
    pub fn extra_info(&self) -> String {
        self.handle.to_extra_info()
    }
}

impl CheckpointRef {
    fn of(h: &PopHandle) -> Self {
        CheckpointRef {
            start_offset: h.ck_queue_offset,
            pop_time: h.pop_time,
            invisible_time: h.invisible_time,
            revive_qid: h.revive_qid,
            retry: h.retry,
        }
    }
}

/// Acks for one broker, as one BATCH_ACK_MESSAGE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckBatch {
    /// The broker (also the body's `brokerName`).
    pub broker: String,
    pub body: BatchAckMessageRequestBody,
    /// The acks it carries (for their outcomes, and for single acks if the batch is refused).
    pub actions: Vec<HandleAction>,
}

/// Groups acks into one BATCH_ACK_MESSAGE per (broker, subscribed topic), with one `BatchAck` per
/// pop checkpoint: bit *i* acks the checkpoint's start offset + *i*, `t` is the subscribed topic
/// and `r` the retry flag (the broker rebuilds the retry topic from them), as a 5.x client
/// batches. Acks whose offset does not fit their checkpoint's bit set are returned apart, for
/// single ACK_MESSAGEs.
pub fn batch_acks(actions: Vec<HandleAction>) -> (Vec<AckBatch>, Vec<HandleAction>) {
    let mut batches: Vec<AckBatch> = Vec::new();
    // Where each action goes, its batch or (None) a single ack; worked out first so that the keys
    // can borrow from the actions.
    let mut slots: Vec<Option<usize>> = Vec::with_capacity(actions.len());
    {
        let mut by_target: HashMap<(&str, &str), usize> = HashMap::new();
        let mut by_ck: HashMap<(usize, &str, i32, CheckpointRef), usize> = HashMap::new();
        // The slot of the previous action: a commit's acks come in runs of one queue and one
        // pop (the same key and broker handles), which skip the look-ups.
        let mut last: Option<(&HandleAction, usize, usize)> = None;
        for a in &actions {
            let ck = a.checkpoint;
            let bit = a
                .queue_offset
                .checked_sub(ck.start_offset)
                .and_then(|b| usize::try_from(b).ok())
                .filter(|b| *b < AckBitSet::MAX_BITS);
            let Some(bit) = bit else {
                slots.push(None);
                continue;
            };
            let same_run = last.filter(|(p, _, _)| {
                Arc::ptr_eq(&p.key, &a.key)
                    && Arc::ptr_eq(&p.broker, &a.broker)
                    && p.queue_id == a.queue_id
                    && p.checkpoint == ck
            });
            let (bi, ai) = match same_run {
                Some((_, bi, ai)) => (bi, ai),
                None => {
                    let bi = *by_target
                        .entry((&*a.broker, a.key.topic.as_str()))
                        .or_insert_with(|| {
                            batches.push(AckBatch {
                                broker: a.broker.to_string(),
                                body: BatchAckMessageRequestBody {
                                    acks: Vec::new(),
                                    broker_name: a.broker.to_string(),
                                },
                                actions: Vec::new(),
                            });
                            batches.len() - 1
                        });
                    let batch = &mut batches[bi];
                    let ai = *by_ck
                        .entry((bi, a.key.group.as_str(), a.queue_id, ck))
                        .or_insert_with(|| {
                            batch.body.acks.push(BatchAck {
                                consumer_group: a.key.group.clone(),
                                topic: a.key.topic.clone(),
                                retry: ck.retry.as_str().to_owned(),
                                start_offset: ck.start_offset,
                                queue_id: a.queue_id,
                                revive_queue_id: ck.revive_qid,
                                pop_time: ck.pop_time,
                                invisible_time: ck.invisible_time,
                                bit_set: AckBitSet::new(),
                            });
                            batch.body.acks.len() - 1
                        });
                    (bi, ai)
                }
            };
            last = Some((a, bi, ai));
            let batch = &mut batches[bi];
            batch.body.acks[ai].bit_set.set(bit);
            slots.push(Some(bi));
        }
    }
    let mut singles = Vec::new();
    for (a, slot) in actions.into_iter().zip(slots) {
        match slot {
            Some(bi) => batches[bi].actions.push(a),
            None => singles.push(a),
        }
    }
    (batches, singles)
}

/// What to do with a CONSUMER_SEND_MSG_BACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendBackPlan {
    /// Change the handle's invisible time to the retry delay.
    Retry(HandleAction),
    /// Past the max reconsume times: forward the send-back to this broker (its DLQ), naming the
    /// message by its real commit log offset, then ack.
    DeadLetter {
        broker: String,
        commit_log_offset: i64,
        ack: HandleAction,
    },
    /// The message is not held for this consumer (e.g. after a reconnect).
    Unknown,
}

/// How an ack or renewal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (acked, or the broker no longer knows the handle: it is redelivered either way).
    Done,
    /// Not delivered (transport failure): keep it and try again later.
    Retry,
}

#[derive(Debug, Error)]
pub enum ConsumeError {
    #[error("pop response: {0}")]
    Pop(#[from] PopError),
    #[error("pop response body: {0}")]
    Message(#[from] MessageError),
}

/// RocketMQ's delay levels (messageDelayLevel), ms.
pub const DELAY_LEVELS_MS: [i64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000,
    480_000, 540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

/// The delay of a send-back: `level` > 0 picks that level; 0 lets the broker decide, which is
/// level 3 + reconsumeTimes (as Apache's broker does); clamped to the last level.
pub fn send_back_delay_ms(level: i32, reconsume_times: i32) -> i64 {
    let level = if level > 0 {
        level
    } else {
        3 + reconsume_times.max(0)
    };
    DELAY_LEVELS_MS[(level.clamp(1, DELAY_LEVELS_MS.len() as i32) - 1) as usize]
}

/// Hashes the translator's own integer keys (virtual commit log offsets, handed out in
/// sequence): one multiply instead of SipHash, whose flooding resistance buys nothing for keys
/// no peer chooses.
#[derive(Default, Clone, Copy)]
struct OffsetHasher(u64);

impl std::hash::Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_i64(&mut self, n: i64) {
        // Fibonacci hashing: sequential keys spread over the high bits hashbrown looks at.
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type OffsetMap<V> = HashMap<i64, V, std::hash::BuildHasherDefault<OffsetHasher>>;

/// The translator state of one sidecar.
#[derive(Debug)]
pub struct Translator {
    cfg: TranslatorConfig,
    queues: HashMap<VQueueKey, VQueue>,
    /// Virtual commit log offset (unique in the translator) -> (queue, virtual offset), for
    /// send-backs.
    by_phys: OffsetMap<(Arc<VQueueKey>, i64)>,
    /// The next virtual commit log offset to hand out.
    next_phys: i64,
    held: usize,
}

impl Translator {
    pub fn new(cfg: TranslatorConfig) -> Self {
        Translator {
            cfg,
            queues: HashMap::new(),
            by_phys: OffsetMap::default(),
            next_phys: 0,
            held: 0,
        }
    }

    pub fn config(&self) -> &TranslatorConfig {
        &self.cfg
    }

    /// Handles held in all (the `outstanding_handles` gauge).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Forgets (never acks) the handles of `key` at `from` and beyond that are in `state`.
    fn remove_held_from(&mut self, key: &VQueueKey, from: i64, state: HeldState) {
        let Some(vq) = self.queues.get(key) else {
            return;
        };
        let dropped: Vec<i64> = vq
            .held
            .range(from..)
            .filter(|(_, h)| h.state == state)
            .map(|(o, _)| *o)
            .collect();
        for o in dropped {
            self.remove_held(key, o);
        }
    }

    /// Forgets one handle (acked, or left to the broker to redeliver).
    fn remove_held(&mut self, key: &VQueueKey, offset: i64) {
        self.ack_done(key, offset, Outcome::Done);
    }

    fn action(key: &Arc<VQueueKey>, offset: i64, h: &Held, invisible_time_ms: i64) -> HandleAction {
        HandleAction {
            key: key.clone(),
            offset,
            broker: h.broker.clone(),
            queue_id: h.handle.queue_id,
            queue_offset: h.handle.queue_offset,
            handle: h.handle.clone(),
            checkpoint: CheckpointRef::of(&h.handle),
            invisible_time_ms,
        }
    }

    /// Drops the queue's prefetched batch (or the result of the one in flight): its handles are
    /// forgotten, never acked; the broker redelivers them after their invisible time.
    fn drop_prefetch(&mut self, key: &VQueueKey) {
        let Some(vq) = self.queues.get_mut(key) else {
            return;
        };
        if vq.ahead.is_empty() && vq.in_flight.is_none() {
            return;
        }
        vq.ahead.clear();
        vq.in_flight = None;
        vq.generation += 1;
        let next = vq.next;
        self.remove_held_from(key, next, HeldState::Prefetched);
    }

    /// A PULL for `key` at `offset`, optionally committing `commit` first.
    /// Returns the acks the commit causes and what to do for the pull.
    pub fn begin_pull(
        &mut self,
        key: &VQueueKey,
        offset: i64,
        max_msgs: i32,
        commit: Option<i64>,
    ) -> (Vec<HandleAction>, PullPlan) {
        let acks = match commit {
            Some(c) if c > 0 => self.commit(key, c),
            _ => Vec::new(),
        };
        if !self.queues.contains_key(key) && self.queues.len() >= self.cfg.max_queues {
            return (
                acks,
                PullPlan::Refused(format!("too many queues tracked ({})", self.cfg.max_queues)),
            );
        }
        let offset = offset.max(0);
        let vq = self
            .queues
            .entry(key.clone())
            .or_insert_with(|| VQueue::new(key));
        vq.last_max = max_msgs.clamp(1, 32);
        if offset == vq.next {
            if let Some(chunk) = vq.ahead.front_mut() {
                // The front chunk's records, as many as asked for.
                let n = chunk.lens.len().min(vq.last_max as usize);
                let bytes: usize = chunk.lens.drain(..n).sum();
                let body = chunk.body.split_to(bytes);
                let start = chunk.start;
                chunk.start += n as i64;
                if chunk.lens.is_empty() {
                    vq.ahead.pop_front();
                }
                let end = start + n as i64;
                for (_, h) in vq.held.range_mut(start..end) {
                    if h.state == HeldState::Prefetched {
                        h.state = HeldState::Outstanding;
                    }
                }
                vq.next = end;
                let reply = PullReply::Found {
                    next_begin: end,
                    max_offset: end,
                    body,
                    count: n,
                };
                return (acks, PullPlan::Ready(reply));
            }
            if vq.in_flight.is_some() {
                return (acks, PullPlan::Wait);
            }
        } else {
            // The consumer reads somewhere else: what was popped ahead is not for it.
            self.drop_prefetch(key);
        }
        let vq = self.queues.get_mut(key).expect("just inserted");
        if offset < vq.next {
            // The consumer went back (offset reset): what it held past `offset` is no longer
            // in its process queue. Stop tracking it; the broker redelivers it when it expires.
            self.remove_held_from(key, offset, HeldState::Outstanding);
        }
        let vq = self.queues.get_mut(key).expect("just inserted");
        vq.next = offset;
        let room = self.cfg.max_held_per_queue.saturating_sub(vq.held.len());
        if room == 0 {
            return (acks, PullPlan::Throttled);
        }
        let max = vq.last_max.min(room as i32);
        (acks, PullPlan::Pop { max_msgs: max })
    }

    /// Whether `key` still has no room (for a throttled pull waiting on a commit).
    pub fn is_throttled(&self, key: &VQueueKey) -> bool {
        self.queues
            .get(key)
            .is_some_and(|q| q.held.len() >= self.cfg.max_held_per_queue)
    }

    /// The POP caused by a pull at `offset` returned: `found` with its header and body, or
    /// nothing. Re-stamps the records in place into the virtual offset space (queue offsets and
    /// commit log offsets), and their store host to `store_host` when given (SDKs send a message
    /// back to its store host: it must be the sidecar, never the real broker).
    pub fn complete_pull(
        &mut self,
        key: &VQueueKey,
        offset: i64,
        broker: &str,
        found: Option<(&PopMessageResponseHeader, BytesMut)>,
        store_host: Option<std::net::SocketAddr>,
        now_ms: i64,
    ) -> Result<PullReply, ConsumeError> {
        // Another pull of the same queue prefetched meanwhile: this one's records take the
        // offsets, the batch ahead is dropped.
        self.drop_prefetch(key);
        let Some(vq) = self.queues.get_mut(key) else {
            // The connection closed meanwhile; nothing to stamp into.
            return Ok(PullReply::NotFound {
                next_begin: offset,
                max_offset: offset,
            });
        };
        let Some((header, body)) = found else {
            return Ok(PullReply::NotFound {
                next_begin: vq.next.max(offset),
                max_offset: vq.next,
            });
        };
        let start = vq.next.max(offset);
        let (next, body, lens) = self.stamp(
            key,
            start,
            broker,
            header,
            body,
            store_host,
            now_ms,
            HeldState::Outstanding,
        )?;
        self.queues.get_mut(key).expect("checked above").next = next;
        let count = lens.len();
        if count == 0 {
            return Ok(PullReply::NotFound {
                next_begin: start,
                max_offset: next,
            });
        }
        Ok(PullReply::Found {
            next_begin: next,
            max_offset: next,
            body,
            count,
        })
    }

    /// Stamps a pop response's records at virtual offsets `start..` of `key` (which must exist)
    /// and holds their handles in `state`. Returns (the offset after the last, body, each record's byte length).
    #[allow(clippy::too_many_arguments)]
    fn stamp(
        &mut self,
        key: &VQueueKey,
        start: i64,
        broker: &str,
        header: &PopMessageResponseHeader,
        mut body: BytesMut,
        store_host: Option<std::net::SocketAddr>,
        now_ms: i64,
        state: HeldState,
    ) -> Result<(i64, BytesMut, VecDeque<usize>), ConsumeError> {
        let info = PopResponseInfo::from_header(header)?;
        let shared_broker: Arc<str> = Arc::from(broker);
        let mut next = start;
        let mut phys = self.next_phys;
        let mut new_held: Vec<(i64, Held)> = Vec::with_capacity(32);
        let mut lens: VecDeque<usize> = VecDeque::with_capacity(32);
        patch_records(&mut body, |rec| -> Result<(), ConsumeError> {
            lens.push_back(rec.len());
            let pop_ck = rec.property(property_keys::POP_CK)?.map(str::to_owned);
            let handle = info.handle_for_shared(
                rec.topic(),
                rec.queue_id(),
                rec.queue_offset(),
                pop_ck.as_deref(),
                &shared_broker,
            )?;
            new_held.push((
                next,
                Held {
                    broker: shared_broker.clone(),
                    commit_log_offset: phys,
                    real_commit_log_offset: rec.commit_log_offset(),
                    reconsume_times: rec.reconsume_times(),
                    first_pop_ms: now_ms,
                    visible_at_ms: handle.pop_time + handle.invisible_time,
                    handle,
                    renewing: false,
                    state,
                },
            ));
            rec.set_queue_id(key.queue);
            rec.set_queue_offset(next);
            rec.set_commit_log_offset(phys);
            if let Some(host) = store_host {
                rec.set_store_host(host);
            }
            next += 1;
            phys += 1;
            Ok(())
        })?;
        self.next_phys = phys;
        // Pop-retry messages come from `%RETRY%<group>_<topic>`; a legacy consumer only
        // accepts its subscribed topic (and `%RETRY%<group>` with RETRY_TOPIC), so those records
        // are re-encoded under the subscribed topic. Their handles keep the retry topic for acks.
        if new_held.iter().any(|(_, h)| h.handle.retry.is_retry()) {
            let mut msgs = decode_records(&body.clone().freeze())?;
            let mut out = BytesMut::with_capacity(body.len());
            lens.clear();
            for m in &mut msgs {
                if m.topic != key.topic && is_retry_topic(&m.topic) {
                    m.topic = key.topic.clone();
                    m.version = MessageVersion::for_topic_len(m.topic.len());
                }
                let before = out.len();
                encode_record(m, &mut out)?;
                lens.push_back(out.len() - before);
            }
            body = out;
        }
        let vq = self.queues.get_mut(key).expect("the caller checked");
        for (o, h) in new_held {
            self.by_phys
                .insert(h.commit_log_offset, (vq.key.clone(), o));
            if vq.held.insert(o, h).is_none() {
                self.held += 1;
            }
        }
        Ok((next, body, lens))
    }

    /// Starts a prefetch pop for `key` when none is in flight, at least 32 more messages fit in
    /// its buffer ahead and it has room for more handles: the caller pops (without long
    /// polling) and reports with [`complete_prefetch`](Self::complete_prefetch).
    pub fn begin_prefetch(&mut self, key: &VQueueKey) -> Option<PrefetchTicket> {
        let vq = self.queues.get_mut(key)?;
        if vq.in_flight.is_some() {
            return None;
        }
        let fits = self.cfg.prefetch_max.saturating_sub(vq.buffered());
        let room = self.cfg.max_held_per_queue.saturating_sub(vq.held.len());
        let max = fits.min(room).min(vq.last_max as usize);
        if max == 0 || fits < 32.min(vq.last_max as usize) {
            return None;
        }
        vq.generation += 1;
        vq.in_flight = Some(vq.generation);
        Some(PrefetchTicket {
            generation: vq.generation,
            max_msgs: max as i32,
        })
    }

    /// The prefetch pop of `ticket` returned. Its records are stamped at the end of the queue's
    /// buffer ahead and held, undelivered, for the next pulls; returns whether records were
    /// added. A result the queue no longer waits for (the connection closed, the consumer
    /// rewound) is dropped: never acked, redelivered by the broker after the invisible time.
    #[allow(clippy::too_many_arguments)]
    pub fn complete_prefetch(
        &mut self,
        key: &VQueueKey,
        ticket: PrefetchTicket,
        broker: &str,
        found: Option<(&PopMessageResponseHeader, BytesMut)>,
        store_host: Option<std::net::SocketAddr>,
        now_ms: i64,
    ) -> Result<bool, ConsumeError> {
        let Some(vq) = self.queues.get_mut(key) else {
            return Ok(false);
        };
        if vq.in_flight != Some(ticket.generation) {
            return Ok(false);
        }
        vq.in_flight = None;
        let start = vq.ahead_end();
        let Some((header, body)) = found else {
            return Ok(false);
        };
        let (_, body, lens) = self.stamp(
            key,
            start,
            broker,
            header,
            body,
            store_host,
            now_ms,
            HeldState::Prefetched,
        )?;
        if lens.is_empty() {
            return Ok(false);
        }
        self.queues
            .get_mut(key)
            .expect("checked above")
            .ahead
            .push_back(Chunk { start, body, lens });
        Ok(true)
    }

    /// The consumer committed `offset`: every held handle below it is acked.
    pub fn commit(&mut self, key: &VQueueKey, offset: i64) -> Vec<HandleAction> {
        let Some(vq) = self.queues.get_mut(key) else {
            return Vec::new();
        };
        vq.committed = vq.committed.max(offset);
        let mut out = Vec::new();
        let mut sent_back = Vec::new();
        for (o, h) in vq.held.range_mut(..offset) {
            match h.state {
                HeldState::Outstanding => {
                    h.state = HeldState::Acking;
                    out.push(Self::action(&vq.key, *o, h, 0));
                }
                HeldState::SentBack => sent_back.push(*o),
                HeldState::Acking | HeldState::Prefetched => {}
            }
        }
        for o in sent_back {
            self.remove_held(key, o);
        }
        out
    }

    /// An ack finished.
    pub fn ack_done(&mut self, key: &VQueueKey, offset: i64, outcome: Outcome) {
        if let Some(vq) = self.queues.get_mut(key) {
            Self::settle(vq, &mut self.held, &mut self.by_phys, offset, outcome);
        }
    }

    /// The end of one ack of `vq`: done forgets the handle, retry owes it again.
    fn settle(
        vq: &mut VQueue,
        held: &mut usize,
        by_phys: &mut OffsetMap<(Arc<VQueueKey>, i64)>,
        offset: i64,
        outcome: Outcome,
    ) {
        match outcome {
            Outcome::Done => {
                if let Some(h) = vq.held.remove(&offset) {
                    *held -= 1;
                    by_phys.remove(&h.commit_log_offset);
                }
            }
            Outcome::Retry => {
                if let Some(h) = vq.held.get_mut(&offset) {
                    h.state = HeldState::Outstanding;
                }
            }
        }
    }

    /// Acks finished, all with the same outcome: like [`Translator::ack_done`] for each, with
    /// one queue look-up per run of actions of the same queue (a commit's acks come in runs).
    pub fn ack_done_all(&mut self, actions: &[HandleAction], outcome: Outcome) {
        let mut rest = actions;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .position(|a| !Arc::ptr_eq(&a.key, &first.key) && a.key != first.key)
                .unwrap_or(rest.len());
            let (now, later) = rest.split_at(run);
            rest = later;
            let Some(vq) = self.queues.get_mut(&*first.key) else {
                continue;
            };
            for a in now {
                Self::settle(vq, &mut self.held, &mut self.by_phys, a.offset, outcome);
            }
        }
    }

    /// Acks still owed for committed offsets (retries after transport failures).
    pub fn pending_acks(&mut self) -> Vec<HandleAction> {
        let keys: Vec<(VQueueKey, i64)> = self
            .queues
            .iter()
            .map(|(k, q)| (k.clone(), q.committed))
            .collect();
        keys.into_iter()
            .flat_map(|(k, c)| self.commit(&k, c))
            .collect()
    }

    /// CONSUMER_SEND_MSG_BACK of the message at (virtual) `commit_log_offset`.
    pub fn send_back(
        &mut self,
        conn: u64,
        group: &str,
        commit_log_offset: i64,
        delay_level: i32,
        max_reconsume_times: i32,
    ) -> SendBackPlan {
        let Some((key, o)) = self
            .by_phys
            .get(&commit_log_offset)
            .filter(|(k, _)| k.conn == conn && k.group == group)
            .cloned()
        else {
            return SendBackPlan::Unknown;
        };
        let Some(h) = self.queues.get_mut(&key).and_then(|q| q.held.get_mut(&o)) else {
            return SendBackPlan::Unknown;
        };
        if h.state != HeldState::Outstanding {
            return SendBackPlan::Unknown;
        }
        let max = if max_reconsume_times < 0 {
            16
        } else {
            max_reconsume_times
        };
        if h.reconsume_times >= max {
            h.state = HeldState::Acking;
            let ack = Self::action(&key, o, h, 0);
            return SendBackPlan::DeadLetter {
                broker: h.broker.to_string(),
                commit_log_offset: h.real_commit_log_offset,
                ack,
            };
        }
        h.state = HeldState::SentBack;
        let delay = send_back_delay_ms(delay_level, h.reconsume_times);
        SendBackPlan::Retry(Self::action(&key, o, h, delay))
    }

    /// A send-back's change-invisible-time failed: the message stays held so it is acked or
    /// redelivered normally.
    pub fn send_back_failed(&mut self, key: &VQueueKey, offset: i64) {
        if let Some(h) = self
            .queues
            .get_mut(key)
            .and_then(|q| q.held.get_mut(&offset))
        {
            if h.state == HeldState::SentBack {
                h.state = HeldState::Outstanding;
            }
        }
    }

    /// Handles to extend now (held, not committed, close to visible, within the max hold time).
    /// Handles past the max hold time or already visible again are dropped: the broker
    /// redelivers them to whoever pops next.
    pub fn renewals_due(&mut self, now_ms: i64) -> Vec<HandleAction> {
        let mut out = Vec::new();
        let mut expired = Vec::new();
        let mut expired_prefetch = Vec::new();
        for q in self.queues.values_mut() {
            for (o, h) in q.held.iter_mut() {
                let prefetched = match h.state {
                    HeldState::Outstanding => false,
                    HeldState::Prefetched => true,
                    HeldState::Acking | HeldState::SentBack => continue,
                };
                if h.renewing {
                    continue;
                }
                if now_ms >= h.visible_at_ms {
                    if prefetched {
                        expired_prefetch.push(q.key.clone());
                    } else {
                        expired.push((q.key.clone(), *o));
                    }
                } else if h.visible_at_ms - now_ms <= self.cfg.renew_before_ms
                    && now_ms - h.first_pop_ms < self.cfg.max_hold_ms
                {
                    h.renewing = true;
                    out.push(Self::action(&q.key, *o, h, self.cfg.invisible_time_ms));
                }
            }
        }
        for (k, o) in expired {
            self.remove_held(&k, o);
        }
        // A batch is delivered whole: one of its handles gone drops the rest with it.
        for k in expired_prefetch {
            self.drop_prefetch(&k);
        }
        out
    }

    /// A renewal finished: `Some((extra_info, pop_time, invisible_time))` of the new handle, or
    /// None when it failed (the handle is then let go).
    pub fn renewed(&mut self, key: &VQueueKey, offset: i64, new: Option<(String, i64, i64)>) {
        let Some(h) = self
            .queues
            .get_mut(key)
            .and_then(|q| q.held.get_mut(&offset))
        else {
            return;
        };
        h.renewing = false;
        match new.and_then(|(extra, pop, inv)| PopHandle::parse(&extra).ok().map(|p| (p, pop, inv)))
        {
            Some((mut handle, pop_time, invisible)) => {
                handle.pop_time = pop_time;
                handle.invisible_time = invisible;
                h.visible_at_ms = pop_time + invisible;
                h.handle = handle;
            }
            None => match h.state {
                HeldState::Outstanding => {
                    self.remove_held(key, offset);
                }
                HeldState::Prefetched => self.drop_prefetch(key),
                HeldState::Acking | HeldState::SentBack => {}
            },
        }
    }

    /// The consumer's connection closed: forget its queues. Nothing is acked (commits already
    /// were); the broker redelivers the rest.
    pub fn connection_closed(&mut self, conn: u64) {
        let keys: Vec<VQueueKey> = self
            .queues
            .keys()
            .filter(|k| k.conn == conn)
            .cloned()
            .collect();
        for k in keys {
            if let Some(q) = self.queues.remove(&k) {
                self.held -= q.held.len();
            }
        }
        self.by_phys.retain(|_, (k, _)| k.conn != conn);
    }

    /// QUERY_CONSUMER_OFFSET: the committed offset (0 for a queue never pulled).
    pub fn committed(&self, key: &VQueueKey) -> i64 {
        self.queues.get(key).map_or(0, |q| q.committed)
    }

    /// GET_MAX_OFFSET (and SEARCH_OFFSET_BY_TIMESTAMP): the next virtual offset to hand out.
    pub fn max_offset(&self, key: &VQueueKey) -> i64 {
        self.queues.get(key).map_or(0, |q| q.next)
    }

    /// GET_MAX_OFFSET / SEARCH_OFFSET_BY_TIMESTAMP name no group: the largest next offset of any
    /// group of this connection on (topic, queue).
    pub fn max_offset_any(&self, conn: u64, topic: &str, queue: i32) -> i64 {
        self.queues
            .iter()
            .filter(|(k, _)| k.conn == conn && k.topic == topic && k.queue == queue)
            .map(|(_, q)| q.next)
            .max()
            .unwrap_or(0)
    }

    /// (virtual queues, held handles) for introspection.
    pub fn counts(&self) -> (usize, usize) {
        (self.queues.len(), self.held)
    }
}

#[cfg(test)]
mod tests;
