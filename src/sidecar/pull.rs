//! Legacy consumers through the sidecar: PULL becomes POP (via `filters::consume::Translator`),
//! offsets are answered from the virtual offset space, commits become ACKs, send-backs become
//! CHANGE_MESSAGE_INVISIBLETIME, and held handles are renewed in the background.
//!
//! Acks go out as one BATCH_ACK_MESSAGE per broker and commit (a checkpoint's messages in one bit
//! set); a broker that answers REQUEST_CODE_NOT_SUPPORTED (older than 5.1) gets single
//! ACK_MESSAGEs from then on, and any other refusal of a batch is retried as single acks.
//!
//! Once a pull is answered with messages, the queue's next batch is popped in the background
//! (without long polling; see the translator's prefetch): the next pull is answered from it at
//! once, or waits for it while it is in flight.

use parking_lot::Mutex;
use rocketmesh_filters::clock::unix_ms;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, ChangeInvisibleTimeResponseHeader,
    ConsumerSendMsgBackRequestHeader, GetMaxOffsetRequestHeader, GetMinOffsetRequestHeader,
    OffsetResponseHeader, PopMessageRequestHeader, PopMessageResponseHeader,
    PullMessageRequestHeader, PullMessageResponseHeader, QueryConsumerOffsetRequestHeader,
    QueryConsumerOffsetResponseHeader, SearchOffsetRequestHeader,
    UpdateConsumerOffsetRequestHeader,
};
use rocketmesh_filters::codec::pop::PopHandle;
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_filters::consume::{
    batch_acks, AckBatch, HandleAction, Outcome, PrefetchTicket, PullPlan, PullReply, SendBackPlan,
    Translator, TranslatorConfig, VQueueKey,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::handler::{Reject, SidecarCore};
use crate::metrics::{Counter, Gauge};
use crate::remoting::Connection;

/// PULL sysFlag bit: the request carries a commit offset.
const FLAG_COMMIT_OFFSET: i32 = 1;
/// Wake-up shards for pulls waiting on a prefetch.
const PREFETCH_SHARDS: usize = 64;
/// Longest a pop parks at the broker for one pull (C++ asks 20 s; the SDK times out at 30 s).
const MAX_POLL: Duration = Duration::from_secs(20);

/// The translator and what waits on it.
#[derive(Debug)]
pub struct PullBridge {
    t: Mutex<Translator>,
    /// Woken by commits, for throttled pulls.
    committed: Notify,
    /// Woken when a prefetch pop finished, for pulls waiting on it; sharded by virtual queue so
    /// a pop wakes (about) only the pull of its own queue.
    prefetched: [Notify; PREFETCH_SHARDS],
    /// Brokers that do not know BATCH_ACK_MESSAGE: acked one message at a time.
    no_batch_ack: Mutex<HashSet<String>>,
    /// Acks waiting for the round in flight to finish.
    acks: Mutex<AckQueue>,
}

/// Acks are sent in rounds, one round in flight at a time: what commits cause meanwhile waits
/// and goes out together in the next round (fewer, larger BATCH_ACK_MESSAGEs under load, no
/// added delay when idle). Bounded by the handles held.
#[derive(Debug, Default)]
struct AckQueue {
    pending: Vec<HandleAction>,
    /// A round is in flight (its task sends `pending` next).
    flushing: bool,
}

impl PullBridge {
    pub fn new(cfg: TranslatorConfig) -> Self {
        PullBridge {
            t: Mutex::new(Translator::new(cfg)),
            committed: Notify::new(),
            prefetched: std::array::from_fn(|_| Notify::new()),
            no_batch_ack: Mutex::new(HashSet::new()),
            acks: Mutex::new(AckQueue::default()),
        }
    }

    fn batches_to(&self, broker: &str) -> bool {
        !self.no_batch_ack.lock().contains(broker)
    }

    fn prefetched(&self, key: &VQueueKey) -> &Notify {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.prefetched[(h % PREFETCH_SHARDS as u64) as usize]
    }

    pub fn connection_closed(&self, conn: u64) {
        self.t.lock().connection_closed(conn);
    }

    /// (virtual queues, held handles).
    pub fn counts(&self) -> (usize, usize) {
        self.t.lock().counts()
    }
}

impl SidecarCore {
    fn set_held_gauge(&self) {
        let held = self.pulls.t.lock().held();
        self.stats.gauge_set(
            Gauge::OutstandingHandles,
            held.try_into().unwrap_or(i64::MAX),
        );
    }

    /// Runs acks in the background (batched per broker, in rounds: see [`AckQueue`]); the
    /// outcome goes back to the translator.
    pub(super) fn spawn_acks(self: &Arc<Self>, acks: Vec<HandleAction>) {
        if acks.is_empty() {
            return;
        }
        {
            let mut q = self.pulls.acks.lock();
            q.pending.extend(acks);
            if q.flushing {
                return;
            }
            q.flushing = true;
        }
        let core = self.clone();
        tokio::spawn(async move {
            loop {
                let acks = {
                    let mut q = core.pulls.acks.lock();
                    if q.pending.is_empty() {
                        q.flushing = false;
                        break;
                    }
                    std::mem::take(&mut q.pending)
                };
                core.send_acks(acks).await;
            }
        });
    }

    /// One round of acks.
    async fn send_acks(self: &Arc<Self>, acks: Vec<HandleAction>) {
        let (batches, mut singles) = batch_acks(acks);
        let mut futs = Vec::new();
        for b in batches {
            if self.pulls.batches_to(&b.broker) {
                futs.push(self.clone().batch_ack_handles(b));
            } else {
                singles.extend(b.actions);
            }
        }
        let singles = singles
            .into_iter()
            .map(|a| async move { self.ack_handle(&a).await });
        futures_util::future::join(
            futures_util::future::join_all(futs),
            futures_util::future::join_all(singles),
        )
        .await;
        self.set_held_gauge();
    }

    /// One BATCH_ACK_MESSAGE; refused batches are acked one by one.
    async fn batch_ack_handles(self: Arc<Self>, b: AckBatch) {
        let outcome = self.send_batch_ack(&b).await;
        let fallback = match outcome {
            Some(outcome) => {
                self.pulls.t.lock().ack_done_all(&b.actions, outcome);
                return;
            }
            None => b.actions,
        };
        for a in fallback {
            self.ack_handle(&a).await;
        }
    }

    /// `None`: the broker refused the batch (acks to be sent singly).
    async fn send_batch_ack(&self, b: &AckBatch) -> Option<Outcome> {
        let first = b.actions.first()?;
        self.stats
            .add(Counter::AcksFromCommits, b.actions.len() as u64);
        let Ok((ep, timeout)) = self
            .broker_endpoint(&first.topic(), first.group(), &b.broker)
            .await
        else {
            // The broker is gone from the route: the handles cannot be acked; they are redelivered.
            return Some(Outcome::Done);
        };
        let body = bytes::Bytes::from(b.body.to_json());
        let req = RemotingCommand::request(rc::BATCH_ACK_MESSAGE).with_body(body);
        match self
            .upstreams
            .invoke(&ep.address, req, self.cfg.request_timeout, timeout)
            .await
        {
            Ok(resp) if resp.code() == response_code::SUCCESS => Some(Outcome::Done),
            Ok(resp) => {
                if resp.code() == response_code::REQUEST_CODE_NOT_SUPPORTED {
                    self.pulls.no_batch_ack.lock().insert(b.broker.clone());
                }
                tracing::debug!(code = resp.code(), remark = ?resp.remark(), "batch ack refused, acking singly");
                None
            }
            Err(e) => {
                tracing::debug!("batch ack not delivered, will retry: {e}");
                Some(Outcome::Retry)
            }
        }
    }

    /// One ACK_MESSAGE; its outcome goes back to the translator.
    async fn ack_handle(&self, a: &HandleAction) {
        let outcome = self.send_ack(a).await;
        self.pulls.t.lock().ack_done(&a.key, a.offset, outcome);
    }

    async fn send_ack(&self, a: &HandleAction) -> Outcome {
        self.stats.inc(Counter::AcksFromCommits);
        let topic = a.topic();
        let Ok((ep, timeout)) = self.broker_endpoint(&topic, a.group(), &a.broker).await else {
            // The broker is gone from the route: the handle cannot be acked; it is redelivered.
            return Outcome::Done;
        };
        let h = AckMessageRequestHeader {
            consumer_group: a.group().to_owned(),
            topic,
            queue_id: a.queue_id,
            offset: a.queue_offset,
            extra_info: a.extra_info(),
            ..Default::default()
        };
        let req = RemotingCommand::request_with_header(rc::ACK_MESSAGE, &h);
        match self
            .upstreams
            .invoke(&ep.address, req, self.cfg.request_timeout, timeout)
            .await
        {
            Ok(resp) if resp.code() == response_code::SUCCESS => Outcome::Done,
            Ok(resp) => {
                // The broker no longer has the handle (expired and revived): redelivered anyway.
                tracing::debug!(code = resp.code(), remark = ?resp.remark(), "ack refused");
                Outcome::Done
            }
            Err(e) => {
                tracing::debug!("ack not delivered, will retry: {e}");
                Outcome::Retry
            }
        }
    }

    async fn change_invisible(&self, a: &HandleAction) -> Result<PopHandle, String> {
        let topic = a.topic();
        let (ep, timeout) = self
            .broker_endpoint(&topic, a.group(), &a.broker)
            .await
            .map_err(|r| r.1)?;
        let h = ChangeInvisibleTimeRequestHeader {
            consumer_group: a.group().to_owned(),
            topic,
            queue_id: a.queue_id,
            offset: a.queue_offset,
            extra_info: a.extra_info(),
            invisible_time: a.invisible_time_ms,
            ..Default::default()
        };
        let req = RemotingCommand::request_with_header(rc::CHANGE_MESSAGE_INVISIBLETIME, &h);
        let resp = self
            .upstreams
            .invoke(&ep.address, req, self.cfg.request_timeout, timeout)
            .await
            .map_err(|e| e.to_string())?;
        if resp.code() != response_code::SUCCESS {
            return Err(format!(
                "broker answered {} {:?}",
                resp.code(),
                resp.remark()
            ));
        }
        let rh: ChangeInvisibleTimeResponseHeader =
            resp.decode_header().map_err(|e| e.to_string())?;
        Ok(a.handle
            .after_change_invisible(rh.pop_time, rh.invisible_time, rh.revive_qid))
    }

    /// PULL_MESSAGE (11) -> POP.
    pub(super) async fn pull(
        self: &Arc<Self>,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, Reject> {
        self.stats.inc(Counter::PullMessage);
        let h: PullMessageRequestHeader = req.decode_header()?;
        let key = VQueueKey {
            conn: conn.id(),
            group: h.consumer_group.clone(),
            topic: h.topic.clone(),
            queue: h.queue_id,
        };
        let not_found = |next: i64, max: i64| {
            let rh = PullMessageResponseHeader {
                suggest_which_broker_id: 0,
                next_begin_offset: next,
                min_offset: 0,
                max_offset: max,
                ..Default::default()
            };
            self.reply(req, response_code::PULL_NOT_FOUND, None)
                .with_header(&rh)
        };
        let route = self
            .route(&h.topic, Gauge::TotalPending)
            .await
            .map_err(super::handler::route_reject)?;
        let view = self.queue_view_cached(&route);
        let vq = &view.1;
        let Some((broker, real_queue)) = vq.read_target(h.queue_id) else {
            // A queue the route no longer has (stale SDK view): nothing there.
            return Ok(not_found(h.queue_offset, h.queue_offset));
        };
        let mut commit = (h.sys_flag & FLAG_COMMIT_OFFSET != 0).then_some(h.commit_offset);
        let suspend = Duration::from_millis(u64::try_from(h.suspend_timeout_millis).unwrap_or(0))
            .min(MAX_POLL);
        let target = self.pop_target(&route, broker, real_queue, &h);
        let mut waited_for_commit = false;
        let max_msgs = loop {
            // Enabled before the translator is asked, so a prefetch finishing in between is
            // not missed.
            let prefetched = self.pulls.prefetched(&key).notified();
            tokio::pin!(prefetched);
            prefetched.as_mut().enable();
            let committing = commit.is_some();
            let (acks, plan) =
                self.pulls
                    .t
                    .lock()
                    .begin_pull(&key, h.queue_offset, h.max_msg_nums, commit.take());
            self.spawn_acks(acks);
            if committing {
                self.pulls.committed.notify_waiters();
            }
            match plan {
                PullPlan::Pop { max_msgs } => break max_msgs,
                PullPlan::Refused(why) => return Err(Reject::system(why)),
                PullPlan::Ready(reply) => {
                    self.stats.inc(Counter::PullConverted);
                    if let Ok(target) = &target {
                        self.spawn_prefetch(&key, target);
                    }
                    self.set_held_gauge();
                    return self.pull_reply(req, Ok(reply));
                }
                PullPlan::Wait => {
                    // The prefetch does not long-poll: it is back within the request timeout.
                    let wait = self.cfg.request_timeout + Duration::from_secs(1);
                    if tokio::time::timeout(wait, prefetched).await.is_err() {
                        let max = self.pulls.t.lock().max_offset(&key);
                        return Ok(not_found(h.queue_offset, max));
                    }
                }
                PullPlan::Throttled => {
                    if waited_for_commit {
                        let max = self.pulls.t.lock().max_offset(&key);
                        return Ok(not_found(h.queue_offset, max));
                    }
                    // Hold the pull until the consumer commits (or the suspend time passes), as
                    // the broker's long polling would, instead of letting the SDK spin.
                    waited_for_commit = true;
                    let wait = self.pulls.committed.notified();
                    let _ =
                        tokio::time::timeout(suspend.max(Duration::from_millis(100)), wait).await;
                }
            }
        };
        let target = target?;
        self.stats.inc(Counter::PullConverted);
        let found = match self.pop_upstream(&target, max_msgs, suspend).await {
            Ok(found) => found,
            Err(PopFailed::Transport(e)) => {
                // Nothing was handed out: answer "nothing yet" so the SDK simply pulls again.
                tracing::debug!("pop for a pull failed: {e}");
                let max = self.pulls.t.lock().max_offset(&key);
                return Ok(not_found(h.queue_offset, max));
            }
            Err(PopFailed::Refused(r)) => return Err(r),
        };
        let (found_header, found_body) = found.unzip();
        let reply = {
            let mut t = self.pulls.t.lock();
            t.complete_pull(
                &key,
                h.queue_offset,
                &target.broker,
                found_header.as_ref().zip(found_body),
                self.cfg.advertise.parse().ok(),
                unix_ms(),
            )
        };
        if matches!(reply, Ok(PullReply::Found { .. })) {
            self.spawn_prefetch(&key, &target);
        }
        self.set_held_gauge();
        self.pull_reply(req, reply)
    }

    /// The answer to a PULL.
    fn pull_reply(
        &self,
        req: &RemotingCommand,
        reply: Result<PullReply, rocketmesh_filters::consume::ConsumeError>,
    ) -> Result<RemotingCommand, Reject> {
        let (code, rh, body) = match reply {
            Ok(PullReply::Found {
                next_begin,
                max_offset,
                body,
                ..
            }) => (response_code::SUCCESS, (next_begin, max_offset), Some(body)),
            Ok(PullReply::NotFound {
                next_begin,
                max_offset,
            }) => (
                response_code::PULL_NOT_FOUND,
                (next_begin, max_offset),
                None,
            ),
            Err(e) => {
                return Err(Reject::system(format!(
                    "cannot translate the pop response: {e}"
                )));
            }
        };
        let rh = PullMessageResponseHeader {
            suggest_which_broker_id: 0,
            next_begin_offset: rh.0,
            min_offset: 0,
            max_offset: rh.1,
            ..Default::default()
        };
        let resp = self.reply(req, code, None).with_header(&rh);
        Ok(match body {
            Some(body) => resp.with_body(body.freeze()),
            None => resp,
        })
    }

    /// Where and how a virtual queue's pops go.
    fn pop_target(
        &self,
        route: &rocketmesh_xds::model::TopicRoute,
        broker: &str,
        real_queue: i32,
        h: &PullMessageRequestHeader,
    ) -> Result<PopTarget, Reject> {
        let sel = route
            .select(&rocketmesh_xds::model::RouteRequest {
                code: rc::POP_MESSAGE,
                ..Default::default()
            })
            .ok_or_else(|| Reject::system(format!("No route for POP on topic {}", h.topic)))?;
        let Some(ep) = sel
            .endpoints
            .iter()
            .find(|e| e.broker_name == broker && e.is_master())
        else {
            return Err(Reject::system(format!(
                "broker {broker} is not readable for {}",
                h.topic
            )));
        };
        let header = PopMessageRequestHeader {
            consumer_group: h.consumer_group.clone(),
            topic: h.topic.clone(),
            queue_id: real_queue,
            invisible_time: self.pulls.t.lock().config().invisible_time_ms,
            // max_msg_nums, poll_time and born_time are set per pop (`pop_upstream`).
            // Start from the queue's first message for a new group: nothing produced before the
            // first pull is skipped.
            init_mode: 0,
            exp_type: Some(h.expression_type.clone().unwrap_or_else(|| "TAG".into())),
            exp: Some(
                h.subscription
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "*".into()),
            ),
            ..Default::default()
        };
        Ok(PopTarget {
            address: ep.address.clone(),
            broker: ep.broker_name.clone(),
            connect_timeout: sel
                .cluster
                .spec
                .connect_timeout_ms
                .map(Duration::from_millis),
            header,
        })
    }

    /// One POP of `target`: the response header and body when it found messages, `None` when it
    /// found none.
    async fn pop_upstream(
        &self,
        target: &PopTarget,
        max_msgs: i32,
        poll: Duration,
    ) -> Result<Option<(PopMessageResponseHeader, BytesMut)>, PopFailed> {
        let mut pop = target.header.clone();
        pop.max_msg_nums = max_msgs;
        pop.poll_time = poll.as_millis() as i64;
        pop.born_time = unix_ms();
        let pop_req = RemotingCommand::request_with_header(rc::POP_MESSAGE, &pop);
        let mut resp = self
            .upstreams
            .invoke(
                &target.address,
                pop_req,
                self.cfg.request_timeout + poll,
                target.connect_timeout,
            )
            .await
            .map_err(|e| PopFailed::Transport(e.to_string()))?;
        match resp.code() {
            response_code::SUCCESS => {
                let ph: PopMessageResponseHeader = resp
                    .decode_header()
                    .map_err(|e| PopFailed::Refused(e.into()))?;
                // Patched in place: no copy when the body is not shared (today the upstream
                // reader's frames share its read buffer, so this copies).
                let body = resp
                    .take_body()
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                Ok(Some((ph, body)))
            }
            response_code::PULL_NOT_FOUND
            | response_code::POLLING_TIMEOUT
            | response_code::POLLING_FULL
            | response_code::NO_MESSAGE => Ok(None),
            code => Err(PopFailed::Refused(Reject(
                code,
                resp.remark().unwrap_or("pop failed").to_owned(),
            ))),
        }
    }

    /// Pops ahead for `key` in the background while the translator wants more (see the
    /// translator's prefetch: one pop in flight per queue, a bounded buffer); pulls waiting for
    /// it are woken after each pop.
    fn spawn_prefetch(self: &Arc<Self>, key: &VQueueKey, target: &PopTarget) {
        let Some(ticket) = self.pulls.t.lock().begin_prefetch(key) else {
            return;
        };
        let core = self.clone();
        let key = key.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let mut ticket = Some(ticket);
            while let Some(t) = ticket {
                let more = core.prefetch(&key, &target, t).await;
                core.pulls.prefetched(&key).notify_waiters();
                // Back to back while records keep coming and the buffer has room.
                ticket = if more {
                    core.pulls.t.lock().begin_prefetch(&key)
                } else {
                    None
                };
            }
            core.set_held_gauge();
        });
    }

    /// One prefetch pop; true when it added records.
    async fn prefetch(&self, key: &VQueueKey, target: &PopTarget, ticket: PrefetchTicket) -> bool {
        let found = match self
            .pop_upstream(target, ticket.max_msgs, Duration::ZERO)
            .await
        {
            Ok(found) => found,
            Err(PopFailed::Transport(e)) => {
                tracing::debug!("prefetch pop failed: {e}");
                None
            }
            Err(PopFailed::Refused(Reject(code, why))) => {
                tracing::debug!(code, "prefetch pop refused: {why}");
                None
            }
        };
        let (found_header, found_body) = found.unzip();
        let done = self.pulls.t.lock().complete_prefetch(
            key,
            ticket,
            &target.broker,
            found_header.as_ref().zip(found_body),
            self.cfg.advertise.parse().ok(),
            unix_ms(),
        );
        done.unwrap_or_else(|e| {
            // Not stamped, not held: the broker redelivers the batch after its invisible time.
            tracing::warn!("cannot translate a prefetched pop response: {e}");
            false
        })
    }

    /// UPDATE_CONSUMER_OFFSET (15): commit -> acks.
    pub(super) fn update_offset(
        self: &Arc<Self>,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, Reject> {
        let h: UpdateConsumerOffsetRequestHeader = req.decode_header()?;
        let key = VQueueKey {
            conn: conn.id(),
            group: h.consumer_group,
            topic: h.topic,
            queue: h.queue_id,
        };
        let acks = self.pulls.t.lock().commit(&key, h.commit_offset);
        self.spawn_acks(acks);
        self.pulls.committed.notify_waiters();
        Ok(self.reply(req, response_code::SUCCESS, None))
    }

    /// QUERY_CONSUMER_OFFSET (14): the committed virtual offset.
    pub(super) fn query_offset(
        &self,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, Reject> {
        let h: QueryConsumerOffsetRequestHeader = req.decode_header()?;
        let key = VQueueKey {
            conn: conn.id(),
            group: h.consumer_group,
            topic: h.topic,
            queue: h.queue_id,
        };
        let offset = self.pulls.t.lock().committed(&key);
        Ok(self
            .reply(req, response_code::SUCCESS, None)
            .with_header(&QueryConsumerOffsetResponseHeader { offset }))
    }

    /// GET_MAX_OFFSET (30), GET_MIN_OFFSET (31), SEARCH_OFFSET_BY_TIMESTAMP (29) on virtual queues.
    pub(super) fn offset_probe(
        &self,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, Reject> {
        let offset = match req.code() {
            rc::GET_MIN_OFFSET => {
                let _h: GetMinOffsetRequestHeader = req.decode_header()?;
                0
            }
            rc::GET_MAX_OFFSET => {
                let h: GetMaxOffsetRequestHeader = req.decode_header()?;
                self.pulls
                    .t
                    .lock()
                    .max_offset_any(conn.id(), &h.topic, h.queue_id)
            }
            _ => {
                // Every virtual offset handed out is "now": searching by time lands at the end.
                let h: SearchOffsetRequestHeader = req.decode_header()?;
                self.pulls
                    .t
                    .lock()
                    .max_offset_any(conn.id(), &h.topic, h.queue_id)
            }
        };
        Ok(self
            .reply(req, response_code::SUCCESS, None)
            .with_header(&OffsetResponseHeader { offset }))
    }

    /// CONSUMER_SEND_MSG_BACK (36) -> CHANGE_MESSAGE_INVISIBLETIME (or the broker's DLQ).
    pub(super) async fn send_back(
        self: &Arc<Self>,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, Reject> {
        self.stats.inc(Counter::SendBacks);
        let h: ConsumerSendMsgBackRequestHeader = req.decode_header()?;
        let plan = self.pulls.t.lock().send_back(
            conn.id(),
            &h.group,
            h.offset,
            h.delay_level,
            h.max_reconsume_times.unwrap_or(16),
        );
        match plan {
            SendBackPlan::Retry(a) => match self.change_invisible(&a).await {
                Ok(_) => Ok(self.reply(req, response_code::SUCCESS, None)),
                Err(e) => {
                    self.pulls.t.lock().send_back_failed(&a.key, a.offset);
                    Err(Reject::system(format!("send back failed: {e}")))
                }
            },
            SendBackPlan::DeadLetter {
                broker,
                commit_log_offset,
                ack,
            } => {
                // The broker moves the message (by its real commit log offset; the consumer
                // named the virtual one) to %DLQ%<group>.
                let (ep, timeout) = self.broker_endpoint(&ack.topic(), ack.group(), &broker).await?;
                let mut fwd = req.clone();
                fwd.ext_mut().put("offset", commit_log_offset);
                match self.upstreams.invoke(&ep.address, fwd, self.cfg.request_timeout, timeout).await {
                    Ok(resp) if resp.code() == response_code::SUCCESS => {
                        self.spawn_acks(vec![ack]);
                        Ok(self.reply(req, response_code::SUCCESS, None))
                    }
                    Ok(resp) => {
                        self.pulls.t.lock().ack_done(&ack.key, ack.offset, Outcome::Retry);
                        Err(Reject(resp.code(), resp.remark().unwrap_or("send back refused").to_owned()))
                    }
                    Err(e) => {
                        self.pulls.t.lock().ack_done(&ack.key, ack.offset, Outcome::Retry);
                        Err(Reject::system(e.to_string()))
                    }
                }
            }
            SendBackPlan::Unknown => Err(Reject::system(format!(
                "message at commit log offset {} is not held for this consumer (reconnected?); it will be redelivered",
                h.offset
            ))),
        }
    }
}

/// Where a virtual queue's pops go: the broker's address and a POP header to fill in.
#[derive(Debug, Clone)]
struct PopTarget {
    address: String,
    broker: String,
    connect_timeout: Option<Duration>,
    header: PopMessageRequestHeader,
}

/// Why a POP brought nothing.
enum PopFailed {
    /// Not delivered or no answer: nothing was handed out.
    Transport(String),
    /// The broker refused it: the pull is refused the same way.
    Refused(Reject),
}

/// Renews held handles and retries owed acks, every second.
pub(super) async fn maintain(core: Arc<SidecarCore>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let (due, owed) = {
            let mut t = core.pulls.t.lock();
            (t.renewals_due(unix_ms()), t.pending_acks())
        };
        core.spawn_acks(owed);
        for a in due {
            let core = core.clone();
            tokio::spawn(async move {
                core.stats.inc(Counter::Renewals);
                let new = match core.change_invisible(&a).await {
                    Ok(h) => Some((h.to_extra_info(), h.pop_time, h.invisible_time)),
                    Err(e) => {
                        tracing::debug!("renewal failed, letting the message go: {e}");
                        None
                    }
                };
                core.pulls.t.lock().renewed(&a.key, a.offset, new);
            });
        }
        core.set_held_gauge();
    }
}
