//! Checks of the translator's internal state, for property tests and fuzz targets (not an API:
//! hidden from the docs, may change at any time).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::{Bytes, BytesMut};

use super::queue::HeldState;
use super::{
    HandleAction, Outcome, PrefetchTicket, PullPlan, PullReply, SendBackPlan, Translator,
    TranslatorConfig, VQueueKey,
};
use crate::codec::headers::PopMessageResponseHeader;
use crate::codec::message::{decode_records, encode_record, MessageExt};

/// One held handle, as the translator tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldInfo {
    pub key: VQueueKey,
    /// Virtual offset.
    pub offset: i64,
    pub broker: String,
    /// Real queue id and offset (the message's identity at its broker).
    pub queue_id: i32,
    pub queue_offset: i64,
    /// The virtual commit log offset handed to the consumer.
    pub commit_log_offset: i64,
    /// "outstanding", "acking", "sent_back" or "prefetched".
    pub state: &'static str,
}

/// Every handle held, in no particular order.
pub fn held(t: &Translator) -> Vec<HeldInfo> {
    let mut out = Vec::with_capacity(t.held);
    for q in t.queues.values() {
        for (o, h) in &q.held {
            out.push(HeldInfo {
                key: (*q.key).clone(),
                offset: *o,
                broker: h.broker.to_string(),
                queue_id: h.handle.queue_id,
                queue_offset: h.handle.queue_offset,
                commit_log_offset: h.commit_log_offset,
                state: match h.state {
                    HeldState::Outstanding => "outstanding",
                    HeldState::Acking => "acking",
                    HeldState::SentBack => "sent_back",
                    HeldState::Prefetched => "prefetched",
                },
            });
        }
    }
    out
}

/// Checks the translator's tables agree with each other and stay within the configured bounds;
/// the first violation found, as text.
pub fn check(t: &Translator) -> Result<(), String> {
    let cfg = &t.cfg;
    if t.queues.len() > cfg.max_queues {
        return Err(format!(
            "{} queues tracked, max {}",
            t.queues.len(),
            cfg.max_queues
        ));
    }
    let mut total = 0;
    for (k, q) in &t.queues {
        if *q.key != *k {
            return Err(format!("queue {k:?} names itself {:?}", q.key));
        }
        total += q.held.len();
        if q.held.len() > cfg.max_held_per_queue {
            return Err(format!(
                "{k:?} holds {} handles, max {}",
                q.held.len(),
                cfg.max_held_per_queue
            ));
        }
        if q.buffered() > cfg.prefetch_max {
            return Err(format!(
                "{k:?} buffers {} records ahead, max {}",
                q.buffered(),
                cfg.prefetch_max
            ));
        }
        // The buffer ahead is contiguous from `next`, and exactly its offsets are prefetched.
        let mut at = q.next;
        for c in &q.ahead {
            if c.start != at || c.lens.is_empty() {
                return Err(format!("{k:?} chunk at {} expected at {at}", c.start));
            }
            if c.lens.iter().sum::<usize>() != c.body.len() {
                return Err(format!("{k:?} chunk at {} lengths disagree", c.start));
            }
            at += c.lens.len() as i64;
        }
        for (o, h) in &q.held {
            let in_buffer = *o >= q.next && *o < at;
            if in_buffer != (h.state == HeldState::Prefetched) {
                return Err(format!(
                    "{k:?} offset {o} in state {:?}, buffer {}..{at}",
                    h.state, q.next
                ));
            }
            match t.by_phys.get(&h.commit_log_offset) {
                Some((pk, po)) if **pk == *k && *po == *o => {}
                other => {
                    return Err(format!(
                        "{k:?} offset {o}: commit log offset {} maps to {other:?}",
                        h.commit_log_offset
                    ))
                }
            }
        }
    }
    if total != t.held {
        return Err(format!("held count {} but {total} in the queues", t.held));
    }
    if t.by_phys.len() != t.held {
        return Err(format!(
            "{} commit log offsets mapped for {} handles",
            t.by_phys.len(),
            t.held
        ));
    }
    Ok(())
}

/// One step of a consumer, a broker and the sidecar's timers, as the translator sees them.
#[derive(Debug, Clone)]
pub enum Event {
    /// A PULL of (conn, queue) at the queue's next offset moved by `delta` (negative: a rewind),
    /// optionally committing (next offset - `commit_back`) first.
    Pull {
        conn: u8,
        queue: u8,
        delta: i8,
        max: u8,
        commit_back: Option<u8>,
    },
    /// The pop of a pending pull returned `count` records (0: nothing found).
    PopDone {
        which: u8,
        count: u8,
        retry: bool,
        reconsumed: u8,
    },
    /// The sidecar tries to start a prefetch.
    Prefetch { conn: u8, queue: u8 },
    /// A prefetch pop returned `count` records.
    PrefetchDone { which: u8, count: u8 },
    /// UPDATE_CONSUMER_OFFSET at (next offset - `back`).
    Commit { conn: u8, queue: u8, back: u8 },
    /// An ack in flight ended; `all`: every ack in flight, as one batch.
    AckOutcome { which: u8, ok: bool, all: bool },
    /// The sidecar's retry timer: acks owed again.
    PendingAcks,
    /// Time passes and renewals fall due.
    Tick { advance_ms: u16 },
    /// A renewal in flight ended.
    RenewOutcome { which: u8, ok: bool },
    /// CONSUMER_SEND_MSG_BACK of a delivered message.
    SendBack {
        conn: u8,
        queue: u8,
        which: u8,
        level: u8,
        max_reconsume: i8,
    },
    /// A send-back's change-invisible-time ended.
    SendBackOutcome { which: u8, ok: bool },
    /// A downstream connection closed.
    Close { conn: u8 },
}

impl Event {
    /// Reads events off `data` until it runs out (for fuzzing: any bytes are a sequence).
    pub fn parse_all(mut data: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = Self::parse(&mut data) {
            out.push(e);
        }
        out
    }

    fn parse(data: &mut &[u8]) -> Option<Event> {
        let mut next = || -> Option<u8> {
            let (b, rest) = data.split_first()?;
            *data = rest;
            Some(*b)
        };
        let tag = next()?;
        let e = match tag % 13 {
            0 => Event::Pull {
                conn: next()? % 3,
                queue: next()? % 3,
                delta: match next()? % 8 {
                    0 => -2,
                    1 => -1,
                    2 => 1,
                    _ => 0,
                },
                max: next()? % 6 + 1,
                commit_back: Some(next()?).filter(|b| b % 2 == 0).map(|b| b / 2 % 4),
            },
            1 | 2 => Event::PopDone {
                which: next()?,
                count: next()? % 7,
                retry: next()? % 4 == 0,
                reconsumed: next()? % 3,
            },
            3 => Event::Prefetch {
                conn: next()? % 3,
                queue: next()? % 3,
            },
            4 => Event::PrefetchDone {
                which: next()?,
                count: next()? % 9,
            },
            5 => Event::Commit {
                conn: next()? % 3,
                queue: next()? % 3,
                back: next()? % 4,
            },
            6 => {
                let b = next()?;
                Event::AckOutcome {
                    which: b / 4,
                    ok: b % 2 == 0,
                    all: b % 4 >= 2,
                }
            }
            7 => Event::PendingAcks,
            8 => Event::Tick {
                advance_ms: u16::from_le_bytes([next()?, next()? % 16]),
            },
            9 => {
                let b = next()?;
                Event::RenewOutcome {
                    which: b / 2,
                    ok: b % 2 == 0,
                }
            }
            10 => Event::SendBack {
                conn: next()? % 3,
                queue: next()? % 3,
                which: next()?,
                level: next()? % 4,
                max_reconsume: (next()? % 4) as i8 - 1,
            },
            11 => {
                let b = next()?;
                Event::SendBackOutcome {
                    which: b / 2,
                    ok: b % 2 == 0,
                }
            }
            _ => Event::Close { conn: next()? % 3 },
        };
        Some(e)
    }
}

/// The configuration the harness runs with: small bounds, so that they are reached.
pub fn harness_config() -> TranslatorConfig {
    TranslatorConfig {
        invisible_time_ms: 1_000,
        renew_before_ms: 300,
        max_hold_ms: 4_000,
        max_held_per_queue: 8,
        max_queues: 5,
        prefetch_max: 6,
    }
}

const BROKER: &str = "broker-a";

/// Drives a translator with [`Event`]s, playing the consumer and the broker, and checks after
/// every event that:
/// * a message is acked at most once (an ack that failed may be sent again);
/// * only messages the consumer committed are acked (or dead-lettered after a send-back);
/// * every ack names a handle the translator held (not one it forgot: its connection closed,
///   its queue was rewound past it, it expired);
/// * the tables agree and stay within their bounds ([`check`]).
#[derive(Debug)]
pub struct Harness {
    pub t: Translator,
    now: i64,
    /// The broker's next queue offset (one counter: a message's identity).
    real_next: i64,
    /// Pulls waiting for their pop: (queue, offset, the pop's max messages).
    pulls: Vec<(VQueueKey, i64, i32)>,
    prefetches: Vec<(VQueueKey, PrefetchTicket)>,
    acks: Vec<HandleAction>,
    renewals: Vec<HandleAction>,
    send_backs: Vec<HandleAction>,
    /// Per queue: virtual offset -> (message identity, virtual commit log offset) delivered.
    delivered: HashMap<VQueueKey, BTreeMap<i64, (i64, i64)>>,
    /// Messages the consumer committed (or sent back past the max reconsume times).
    committed: HashSet<i64>,
    /// Messages with an ack in flight or done.
    acked: HashSet<i64>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new(harness_config())
    }
}

impl Harness {
    pub fn new(cfg: TranslatorConfig) -> Self {
        Harness {
            t: Translator::new(cfg),
            now: 1_000_000,
            real_next: 0,
            pulls: Vec::new(),
            prefetches: Vec::new(),
            acks: Vec::new(),
            renewals: Vec::new(),
            send_backs: Vec::new(),
            delivered: HashMap::new(),
            committed: HashSet::new(),
            acked: HashSet::new(),
        }
    }

    /// Runs every event, checking after each; the first violation, naming the event.
    pub fn run(&mut self, events: &[Event]) -> Result<(), String> {
        for (i, e) in events.iter().enumerate() {
            self.apply(e)
                .map_err(|err| format!("event {i} {e:?}: {err}"))?;
        }
        Ok(())
    }

    fn key(conn: u8, queue: u8) -> VQueueKey {
        VQueueKey {
            conn: u64::from(conn),
            group: "g".into(),
            topic: "T".into(),
            queue: i32::from(queue),
        }
    }

    fn pick<T>(v: &mut Vec<T>, which: u8) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            let i = usize::from(which) % v.len();
            Some(v.swap_remove(i))
        }
    }

    /// A pop response of `count` fresh messages, popped now.
    fn pop_response(
        &mut self,
        count: u8,
        retry: bool,
        reconsumed: u8,
    ) -> Option<(PopMessageResponseHeader, BytesMut)> {
        if count == 0 {
            return None;
        }
        let qid = 0;
        let (topic, flag) = if retry { ("%RETRY%g_T", 1) } else { ("T", 0) };
        let start = self.real_next;
        let mut body = BytesMut::new();
        let mut offsets = Vec::new();
        for i in 0..i64::from(count) {
            let m = MessageExt {
                topic: topic.into(),
                queue_id: qid,
                queue_offset: start + i,
                commit_log_offset: (start + i) * 100,
                reconsume_times: i32::from(reconsumed),
                body: Bytes::from(format!("m{}", start + i)),
                ..MessageExt::default()
            };
            encode_record(&m, &mut body).ok()?;
            offsets.push((start + i).to_string());
        }
        self.real_next += i64::from(count);
        let header = PopMessageResponseHeader {
            pop_time: self.now,
            invisible_time: self.t.config().invisible_time_ms,
            revive_qid: 0,
            rest_num: 0,
            start_offset_info: Some(format!("{flag} {qid} {start}")),
            msg_offset_info: Some(format!("{flag} {qid} {}", offsets.join(","))),
            order_count_info: None,
        };
        Some((header, body))
    }

    /// Records what a reply delivered to the consumer.
    fn delivered(&mut self, key: &VQueueKey, body: &BytesMut) -> Result<(), String> {
        let msgs = decode_records(&body.clone().freeze()).map_err(|e| e.to_string())?;
        let held = held(&self.t);
        let d = self.delivered.entry(key.clone()).or_default();
        for m in msgs {
            let h = held
                .iter()
                .find(|h| h.key == *key && h.offset == m.queue_offset)
                .ok_or_else(|| format!("delivered offset {} is not held", m.queue_offset))?;
            if h.state != "outstanding" {
                return Err(format!("delivered {h:?}"));
            }
            if m.topic != key.topic {
                return Err(format!("delivered under topic {}", m.topic));
            }
            d.insert(m.queue_offset, (h.queue_offset, m.commit_log_offset));
        }
        Ok(())
    }

    /// The consumer committed `offset` of `key`: what it was delivered below it is committed.
    fn consumer_commits(&mut self, key: &VQueueKey, offset: i64) {
        if let Some(d) = self.delivered.get(key) {
            self.committed
                .extend(d.range(..offset).map(|(_, (id, _))| *id));
        }
    }

    /// Checks acks the translator asked for against the held table before the event.
    fn check_acks(
        &mut self,
        before: &[HeldInfo],
        acks: Vec<HandleAction>,
        dead_letter: bool,
    ) -> Result<(), String> {
        for a in acks {
            let id = a.queue_offset;
            let was = before
                .iter()
                .find(|h| h.key == *a.key && h.offset == a.offset && h.queue_offset == id);
            match was {
                Some(h) if h.state == "outstanding" => {}
                other => return Err(format!("acked {a:?}, held as {other:?}")),
            }
            if !dead_letter && !self.committed.contains(&id) {
                return Err(format!(
                    "acked message {id} (offset {}) never committed",
                    a.offset
                ));
            }
            if !self.acked.insert(id) {
                return Err(format!("acked message {id} twice"));
            }
            self.acks.push(a);
        }
        Ok(())
    }

    fn check_renewals(
        &mut self,
        before: &[HeldInfo],
        due: Vec<HandleAction>,
    ) -> Result<(), String> {
        for a in due {
            let ok = before.iter().any(|h| {
                h.key == *a.key
                    && h.offset == a.offset
                    && h.queue_offset == a.queue_offset
                    && (h.state == "outstanding" || h.state == "prefetched")
            });
            if !ok {
                return Err(format!("renewing {a:?}, not held"));
            }
            self.renewals.push(a);
        }
        Ok(())
    }

    /// Applies one event and checks the invariants.
    pub fn apply(&mut self, e: &Event) -> Result<(), String> {
        let before = held(&self.t);
        match *e {
            Event::Pull {
                conn,
                queue,
                delta,
                max,
                commit_back,
            } => {
                let k = Self::key(conn, queue);
                let next = self.t.max_offset(&k);
                let commit = commit_back.map(|b| next - i64::from(b));
                if let Some(c) = commit.filter(|c| *c > 0) {
                    self.consumer_commits(&k, c);
                }
                let offset = (next + i64::from(delta)).max(0);
                let (acks, plan) = self.t.begin_pull(&k, offset, i32::from(max), commit);
                self.check_acks(&before, acks, false)?;
                match plan {
                    PullPlan::Pop { max_msgs } => {
                        if max_msgs < 1 || max_msgs > i32::from(max) {
                            return Err(format!("pop of {max_msgs} for a pull of {max}"));
                        }
                        self.pulls.push((k, offset, max_msgs));
                    }
                    PullPlan::Ready(PullReply::Found { body, count, .. }) => {
                        if count == 0 || count > usize::from(max) {
                            return Err(format!("{count} records for a pull of {max}"));
                        }
                        self.delivered(&k, &body)?;
                    }
                    PullPlan::Ready(PullReply::NotFound { .. })
                    | PullPlan::Throttled
                    | PullPlan::Wait
                    | PullPlan::Refused(_) => {}
                }
            }
            Event::PopDone {
                which,
                count,
                retry,
                reconsumed,
            } => {
                let Some((k, offset, max_msgs)) = Self::pick(&mut self.pulls, which) else {
                    return Ok(());
                };
                // A conforming broker returns no more than asked.
                let count = count.min(u8::try_from(max_msgs).unwrap_or(u8::MAX));
                let found = self.pop_response(count, retry, reconsumed);
                let found = found.as_ref().map(|(h, b)| (h, b.clone()));
                let reply = self
                    .t
                    .complete_pull(&k, offset, BROKER, found, None, self.now)
                    .map_err(|e| e.to_string())?;
                if let PullReply::Found { body, .. } = reply {
                    self.delivered(&k, &body)?;
                }
            }
            Event::Prefetch { conn, queue } => {
                let k = Self::key(conn, queue);
                if let Some(ticket) = self.t.begin_prefetch(&k) {
                    self.prefetches.push((k, ticket));
                }
            }
            Event::PrefetchDone { which, count } => {
                let Some((k, ticket)) = Self::pick(&mut self.prefetches, which) else {
                    return Ok(());
                };
                let count = count.min(u8::try_from(ticket.max_msgs).unwrap_or(u8::MAX));
                let found = self.pop_response(count, false, 0);
                let found = found.as_ref().map(|(h, b)| (h, b.clone()));
                self.t
                    .complete_prefetch(&k, ticket, BROKER, found, None, self.now)
                    .map_err(|e| e.to_string())?;
            }
            Event::Commit { conn, queue, back } => {
                let k = Self::key(conn, queue);
                let offset = self.t.max_offset(&k) - i64::from(back);
                self.consumer_commits(&k, offset);
                let acks = self.t.commit(&k, offset);
                self.check_acks(&before, acks, false)?;
            }
            Event::AckOutcome { which, ok, all } => {
                let outcome = if ok { Outcome::Done } else { Outcome::Retry };
                let done: Vec<HandleAction> = if all {
                    std::mem::take(&mut self.acks)
                } else {
                    Self::pick(&mut self.acks, which).into_iter().collect()
                };
                if !ok {
                    for a in &done {
                        self.acked.remove(&a.queue_offset);
                    }
                }
                if all {
                    self.t.ack_done_all(&done, outcome);
                } else if let Some(a) = done.first() {
                    self.t.ack_done(a, outcome);
                }
            }
            Event::PendingAcks => {
                let acks = self.t.pending_acks();
                self.check_acks(&before, acks, false)?;
            }
            Event::Tick { advance_ms } => {
                self.now += i64::from(advance_ms);
                let due = self.t.renewals_due(self.now);
                self.check_renewals(&before, due)?;
            }
            Event::RenewOutcome { which, ok } => {
                let Some(a) = Self::pick(&mut self.renewals, which) else {
                    return Ok(());
                };
                let new = ok.then(|| (a.extra_info(), self.now, a.invisible_time_ms));
                self.t.renewed(&a, new);
            }
            Event::SendBack {
                conn,
                queue,
                which,
                level,
                max_reconsume,
            } => {
                let k = Self::key(conn, queue);
                let Some(d) = self.delivered.get(&k).filter(|d| !d.is_empty()) else {
                    return Ok(());
                };
                let (id, phys) = *d
                    .values()
                    .nth(usize::from(which) % d.len())
                    .expect("index within the map");
                let plan = self.t.send_back(
                    k.conn,
                    &k.group,
                    phys,
                    i32::from(level),
                    i32::from(max_reconsume),
                );
                match plan {
                    SendBackPlan::Retry(a) => {
                        if a.queue_offset != id {
                            return Err(format!("send-back of message {id} changes {a:?}"));
                        }
                        self.send_backs.push(a);
                    }
                    SendBackPlan::DeadLetter { ack, .. } => {
                        if ack.queue_offset != id {
                            return Err(format!("dead-letter of message {id} acks {ack:?}"));
                        }
                        self.check_acks(&before, vec![ack], true)?;
                    }
                    SendBackPlan::Unknown => {}
                }
            }
            Event::SendBackOutcome { which, ok } => {
                let Some(a) = Self::pick(&mut self.send_backs, which) else {
                    return Ok(());
                };
                if !ok {
                    self.t.send_back_failed(&a);
                }
            }
            Event::Close { conn } => {
                self.t.connection_closed(u64::from(conn));
                self.delivered.retain(|k, _| k.conn != u64::from(conn));
                self.pulls.retain(|(k, _, _)| k.conn != u64::from(conn));
            }
        }
        check(&self.t)
    }
}
