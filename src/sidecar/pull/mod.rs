//! Legacy consumers through the sidecar: PULL becomes POP (via `filters::consume::Translator`),
//! offsets are answered from the virtual offset space, commits become ACKs ([`acks`]), send-backs
//! become CHANGE_MESSAGE_INVISIBLETIME, held handles are renewed, and the next batch of a queue
//! is popped ahead ([`prefetch`]).
//!
//! The bridge owns its background work (ack rounds, prefetch pops, renewals) through one
//! [`Drain`]: [`PullBridge::begin_drain`] stops new pulls and prefetches and wakes parked pulls,
//! [`PullBridge::flush_acks`] sends what commits owe, [`PullBridge::close`] ends every task.

pub mod acks;
pub mod direct;
pub mod prefetch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rocketmesh_filters::clock::unix_ms;
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::{
    ConsumerSendMsgBackRequestHeader, GetMaxOffsetRequestHeader, GetMinOffsetRequestHeader,
    OffsetResponseHeader, PullMessageRequestHeader, PullMessageResponseHeader,
    QueryConsumerOffsetRequestHeader, QueryConsumerOffsetResponseHeader, SearchOffsetRequestHeader,
    UpdateConsumerOffsetRequestHeader,
};
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_filters::consume::{
    ConsumeError, Minted, Outcome, PullPlan, PullReply, SendBackPlan, Translator, TranslatorConfig,
    VQueueKey,
};
use tokio::sync::Notify;

use self::acks::{change_invisible, Acks};
use self::prefetch::{pop_target, pop_upstream, PopFailed, Prefetcher};
use super::context::Context;
use super::error::SidecarError;
use crate::metrics::{Counter, Gauge};
use crate::remoting::{Connection, Drain};

/// PULL sysFlag bit: the request carries a commit offset.
const FLAG_COMMIT_OFFSET: i32 = 1;
/// Longest a pop parks at the broker for one pull (C++ asks 20 s; the SDK times out at 30 s).
const MAX_POLL: Duration = Duration::from_secs(20);
/// How often held handles are renewed.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// The Pull -> Pop translator and its wiring.
#[derive(Debug)]
pub struct PullBridge {
    ctx: Arc<Context>,
    t: Arc<Mutex<Translator>>,
    /// Woken by commits, for throttled pulls.
    committed: Notify,
    acks: Arc<Acks>,
    prefetch: Arc<Prefetcher>,
    drain: Drain,
}

impl PullBridge {
    pub fn new(ctx: Arc<Context>, cfg: TranslatorConfig) -> Self {
        let t = Arc::new(Mutex::new(Translator::new(cfg)));
        let drain = Drain::new();
        PullBridge {
            acks: Arc::new(Acks::new(ctx.clone(), t.clone(), drain.clone())),
            prefetch: Arc::new(Prefetcher::new(ctx.clone(), t.clone(), drain.clone())),
            committed: Notify::new(),
            ctx,
            t,
            drain,
        }
    }

    /// Starts the renewal loop (renews held handles and retries owed acks every second, until
    /// the drain begins).
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        self.drain.spawn(async move {
            let mut tick = tokio::time::interval(RENEW_EVERY);
            let mut reported_expired = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = me.drain.draining() => return,
                }
                let (due, owed, expired) = {
                    let mut t = me.t.lock();
                    (t.renewals_due(unix_ms()), t.pending_acks(), t.acks_expired())
                };
                if expired > reported_expired {
                    me.ctx.stats.add(Counter::AckExpired, expired - reported_expired);
                    tracing::warn!(
                        acks = expired - reported_expired,
                        "acks given up: their broker was unreachable until the handles became visible again (redelivered)"
                    );
                    reported_expired = expired;
                }
                me.acks.submit(owed);
                me.acks.renew(due);
                me.acks.set_held_gauge();
            }
        });
    }

    /// Whether the translator holds state for this connection's `topic` / virtual `queue`
    /// (then group-less offset requests are answered from the virtual space).
    pub fn knows(&self, conn: u64, topic: &str, queue: i32) -> bool {
        self.t.lock().knows_queue(conn, topic, queue)
    }

    /// The broker message behind a virtual commit log offset this sidecar handed out recently.
    pub fn minted(&self, offset: i64) -> Option<Minted> {
        self.t.lock().minted(offset).cloned()
    }

    pub fn connection_closed(&self, conn: u64) {
        self.t.lock().connection_closed(conn);
    }

    /// (virtual queues, held handles).
    pub fn counts(&self) -> (usize, usize) {
        self.t.lock().counts()
    }

    /// Drain, step 1: new pulls are refused (after their commit is taken), parked pulls answer
    /// at once, no prefetch or renewal starts.
    pub fn begin_drain(&self) {
        self.drain.begin();
        self.committed.notify_waiters();
        self.prefetch.wake_all();
    }

    /// Drain, step 2: sends every ack that commits owe, until `deadline`; true when none is left.
    pub async fn flush_acks(&self, deadline: Instant) -> bool {
        self.acks.flush(deadline).await
    }

    /// Drain, step 3: cancels what still runs and waits for every task to end.
    pub async fn close(&self) {
        self.drain.finish().await;
    }

    fn key(conn: &Connection, group: String, topic: String, queue: i32) -> VQueueKey {
        VQueueKey {
            conn: conn.id(),
            group,
            topic,
            queue,
        }
    }

    /// PULL_MESSAGE (11) -> POP.
    pub async fn pull(
        &self,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, SidecarError> {
        let ctx = &self.ctx;
        ctx.stats.inc(Counter::PullMessage);
        let h: PullMessageRequestHeader = req.decode_header()?;
        let key = Self::key(conn, h.consumer_group.clone(), h.topic.clone(), h.queue_id);
        let mut commit = (h.sys_flag & FLAG_COMMIT_OFFSET != 0).then_some(h.commit_offset);
        if self.drain.is_draining() {
            // The commit still becomes acks (they are flushed before exit); the pull is refused
            // so the SDK pulls again later, from another sidecar or this one restarted.
            if let Some(offset) = commit {
                let acks = self.t.lock().commit(&key, offset);
                self.acks.submit(acks);
            }
            return Err(SidecarError::Draining(ctx.cfg.advertise.clone()));
        }
        let not_found = |next: i64, max: i64| {
            let rh = PullMessageResponseHeader {
                suggest_which_broker_id: 0,
                next_begin_offset: next,
                min_offset: 0,
                max_offset: max,
                ..Default::default()
            };
            ctx.reply(req, response_code::PULL_NOT_FOUND, None)
                .with_header(&rh)
        };
        let route = ctx.router.route(&h.topic, Gauge::TotalPending).await?;
        let view = ctx.router.view(&route);
        let Some((broker, real_queue)) = view.queues.read_target(h.queue_id) else {
            // A queue the route no longer has (stale SDK view): nothing there.
            return Ok(not_found(h.queue_offset, h.queue_offset));
        };
        let suspend = Duration::from_millis(u64::try_from(h.suspend_timeout_millis).unwrap_or(0))
            .min(MAX_POLL);
        let invisible = self.t.lock().config().invisible_time_ms;
        let target = pop_target(ctx, &route, broker, real_queue, &h, invisible);
        let mut waited_for_commit = false;
        let max_msgs = loop {
            // Enabled before the translator is asked, so a prefetch finishing in between is not
            // missed.
            let prefetched = self.prefetch.wakeup(&key).notified();
            tokio::pin!(prefetched);
            prefetched.as_mut().enable();
            let committing = commit.is_some();
            let (acks, plan) =
                self.t
                    .lock()
                    .begin_pull(&key, h.queue_offset, h.max_msg_nums, commit.take());
            self.acks.submit(acks);
            if committing {
                self.committed.notify_waiters();
            }
            match plan {
                PullPlan::Pop { max_msgs } => break max_msgs,
                PullPlan::Refused(why) => return Err(SidecarError::Pull(why)),
                PullPlan::Ready(reply) => {
                    ctx.stats.inc(Counter::PullConverted);
                    if let Ok(target) = &target {
                        self.prefetch.spawn(&key, target);
                    }
                    self.acks.set_held_gauge();
                    return self.pull_reply(req, Ok(reply));
                }
                PullPlan::Wait => {
                    // The prefetch does not long-poll: it is back within the request timeout.
                    let wait = ctx.cfg.request_timeout + Duration::from_secs(1);
                    let woken = tokio::select! {
                        r = tokio::time::timeout(wait, prefetched) => r.is_ok(),
                        () = self.drain.draining() => false,
                    };
                    if !woken {
                        let max = self.t.lock().max_offset(&key);
                        return Ok(not_found(h.queue_offset, max));
                    }
                }
                PullPlan::Throttled => {
                    if waited_for_commit || self.drain.is_draining() {
                        let max = self.t.lock().max_offset(&key);
                        return Ok(not_found(h.queue_offset, max));
                    }
                    // Hold the pull until the consumer commits (or the suspend time passes), as
                    // the broker's long polling would, instead of letting the SDK spin.
                    waited_for_commit = true;
                    let wait = self.committed.notified();
                    let _ =
                        tokio::time::timeout(suspend.max(Duration::from_millis(100)), wait).await;
                }
            }
        };
        let target = target?;
        ctx.stats.inc(Counter::PullConverted);
        // A drain ends the long poll: the pop's messages (if any arrive) go back to the broker
        // after their invisible time.
        let popped = tokio::select! {
            r = pop_upstream(ctx, &target, max_msgs, suspend) => Some(r),
            () = self.drain.draining() => None,
        };
        let found = match popped {
            Some(Ok(found)) => found,
            None | Some(Err(PopFailed::Transport(_))) => {
                // Nothing was handed out: answer "nothing yet" so the SDK simply pulls again.
                if let Some(Err(PopFailed::Transport(e))) = &popped {
                    tracing::debug!("pop for a pull failed: {e}");
                    // The broker is unreachable (lost, cooling down, ejected): hold the pull a
                    // little, as an empty long poll would, so the SDK does not spin on it.
                    let pause = suspend.min(Duration::from_secs(1));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = self.drain.draining() => {}
                    }
                }
                let max = self.t.lock().max_offset(&key);
                return Ok(not_found(h.queue_offset, max));
            }
            Some(Err(PopFailed::Refused(r))) => return Err(r),
        };
        let (found_header, found_body) = found.unzip();
        let reply = self.t.lock().complete_pull(
            &key,
            h.queue_offset,
            &target.broker,
            found_header.as_ref().zip(found_body),
            ctx.cfg.advertise.parse().ok(),
            unix_ms(),
        );
        if matches!(reply, Ok(PullReply::Found { .. })) {
            self.prefetch.spawn(&key, &target);
        }
        self.acks.set_held_gauge();
        self.pull_reply(req, reply)
    }

    /// The answer to a PULL.
    fn pull_reply(
        &self,
        req: &RemotingCommand,
        reply: Result<PullReply, ConsumeError>,
    ) -> Result<RemotingCommand, SidecarError> {
        let (code, (next_begin, max_offset), body) = match reply {
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
                return Err(SidecarError::Pull(format!(
                    "cannot translate the pop response: {e}"
                )));
            }
        };
        let rh = PullMessageResponseHeader {
            suggest_which_broker_id: 0,
            next_begin_offset: next_begin,
            min_offset: 0,
            max_offset,
            ..Default::default()
        };
        let resp = self.ctx.reply(req, code, None).with_header(&rh);
        Ok(match body {
            Some(body) => resp.with_body(body.freeze()),
            None => resp,
        })
    }

    /// UPDATE_CONSUMER_OFFSET (15): commit -> acks.
    pub fn update_offset(
        &self,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, SidecarError> {
        let h: UpdateConsumerOffsetRequestHeader = req.decode_header()?;
        let key = Self::key(conn, h.consumer_group, h.topic, h.queue_id);
        let acks = self.t.lock().commit(&key, h.commit_offset);
        self.acks.submit(acks);
        self.committed.notify_waiters();
        Ok(self.ctx.reply(req, response_code::SUCCESS, None))
    }

    /// QUERY_CONSUMER_OFFSET (14): the committed virtual offset.
    pub fn query_offset(
        &self,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, SidecarError> {
        let h: QueryConsumerOffsetRequestHeader = req.decode_header()?;
        let key = Self::key(conn, h.consumer_group, h.topic, h.queue_id);
        let offset = self.t.lock().committed(&key);
        Ok(self
            .ctx
            .reply(req, response_code::SUCCESS, None)
            .with_header(&QueryConsumerOffsetResponseHeader { offset }))
    }

    /// GET_MAX_OFFSET (30), GET_MIN_OFFSET (31), SEARCH_OFFSET_BY_TIMESTAMP (29) on virtual queues.
    pub fn offset_probe(
        &self,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, SidecarError> {
        let offset = match req.code() {
            rc::GET_MIN_OFFSET => {
                let _h: GetMinOffsetRequestHeader = req.decode_header()?;
                0
            }
            rc::GET_MAX_OFFSET => {
                let h: GetMaxOffsetRequestHeader = req.decode_header()?;
                self.t
                    .lock()
                    .max_offset_any(conn.id(), &h.topic, h.queue_id)
            }
            _ => {
                // Every virtual offset handed out is "now": searching by time lands at the end.
                let h: SearchOffsetRequestHeader = req.decode_header()?;
                self.t
                    .lock()
                    .max_offset_any(conn.id(), &h.topic, h.queue_id)
            }
        };
        Ok(self
            .ctx
            .reply(req, response_code::SUCCESS, None)
            .with_header(&OffsetResponseHeader { offset }))
    }

    /// CONSUMER_SEND_MSG_BACK (36) -> CHANGE_MESSAGE_INVISIBLETIME (or the broker's DLQ).
    pub async fn send_back(
        &self,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, SidecarError> {
        let ctx = &self.ctx;
        ctx.stats.inc(Counter::SendBacks);
        let h: ConsumerSendMsgBackRequestHeader = req.decode_header()?;
        let plan = self.t.lock().send_back(
            conn.id(),
            &h.group,
            h.offset,
            h.delay_level,
            h.max_reconsume_times.unwrap_or(16),
        );
        match plan {
            SendBackPlan::Retry(a) => match change_invisible(ctx, &a).await {
                Ok(_) => Ok(ctx.reply(req, response_code::SUCCESS, None)),
                Err(e) => {
                    self.t.lock().send_back_failed(&a);
                    Err(SidecarError::Pull(format!("send back failed: {e}")))
                }
            },
            SendBackPlan::DeadLetter {
                broker,
                commit_log_offset,
                ack,
            } => {
                // The broker moves the message (by its real commit log offset; the consumer
                // named the virtual one) to %DLQ%<group>.
                let (ep, timeout) = ctx
                    .router
                    .broker_endpoint(&ack.topic(), ack.group(), &broker)
                    .await?;
                let mut fwd = req.clone();
                fwd.ext_mut().put("offset", commit_log_offset);
                let sent = ctx
                    .upstreams
                    .invoke(&ep.address, fwd, ctx.cfg.request_timeout, timeout)
                    .await;
                match sent {
                    Ok(resp) if resp.code() == response_code::SUCCESS => {
                        self.acks.submit(vec![ack]);
                        Ok(ctx.reply(req, response_code::SUCCESS, None))
                    }
                    Ok(resp) => {
                        self.t.lock().ack_done(&ack, Outcome::Retry);
                        Err(SidecarError::Refused {
                            code: resp.code(),
                            remark: resp.remark().unwrap_or("send back refused").to_owned(),
                        })
                    }
                    Err(e) => {
                        self.t.lock().ack_done(&ack, Outcome::Retry);
                        Err(e.into())
                    }
                }
            }
            SendBackPlan::Unknown => Err(SidecarError::Pull(format!(
                "message at commit log offset {} is not held for this consumer (reconnected?); it will be redelivered",
                h.offset
            ))),
        }
    }
}
