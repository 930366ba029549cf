//! Commits become acks: one BATCH_ACK_MESSAGE per broker and round (a checkpoint's messages in
//! one bit set); a broker that answers REQUEST_CODE_NOT_SUPPORTED (older than 5.1) gets single
//! ACK_MESSAGEs from then on, and any other refusal of a batch is retried as single acks. Held
//! handles are renewed (CHANGE_MESSAGE_INVISIBLETIME) from here too.
//!
//! Rounds: one in flight at a time; what commits cause meanwhile waits and goes out together in
//! the next round (fewer, larger batches under load, no added delay when idle). On shutdown
//! [`Acks::flush`] sends what is owed before the process lets go of its connections.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, ChangeInvisibleTimeResponseHeader,
};
use rocketmesh_filters::codec::pop::PopHandle;
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_filters::consume::{batch_acks, AckBatch, HandleAction, Outcome, Translator};
use tokio::sync::Notify;

use crate::metrics::{Counter, Gauge};
use crate::remoting::Drain;
use crate::sidecar::context::Context;

/// Acks waiting for the round in flight to finish. Bounded by the handles held.
#[derive(Debug, Default)]
struct AckQueue {
    pending: Vec<HandleAction>,
    /// A round is in flight (its task sends `pending` next).
    flushing: bool,
}

/// Sends acks and renewals for the translator's handles.
#[derive(Debug)]
pub struct Acks {
    ctx: Arc<Context>,
    t: Arc<Mutex<Translator>>,
    queue: Mutex<AckQueue>,
    /// Brokers that do not know BATCH_ACK_MESSAGE: acked one message at a time.
    no_batch_ack: Mutex<HashSet<String>>,
    /// Woken when a round ends with nothing queued.
    idle: Notify,
    drain: Drain,
}

impl Acks {
    pub fn new(ctx: Arc<Context>, t: Arc<Mutex<Translator>>, drain: Drain) -> Self {
        Acks {
            ctx,
            t,
            queue: Mutex::new(AckQueue::default()),
            no_batch_ack: Mutex::new(HashSet::new()),
            idle: Notify::new(),
            drain,
        }
    }

    /// Queues `acks` for the next round (starting one when none is in flight); outcomes go back
    /// to the translator.
    pub fn submit(self: &Arc<Self>, acks: Vec<HandleAction>) {
        if acks.is_empty() {
            return;
        }
        {
            let mut q = self.queue.lock();
            q.pending.extend(acks);
            if q.flushing {
                return;
            }
            q.flushing = true;
        }
        let me = self.clone();
        self.drain.spawn(async move {
            loop {
                let acks = {
                    let mut q = me.queue.lock();
                    if q.pending.is_empty() {
                        q.flushing = false;
                        break;
                    }
                    std::mem::take(&mut q.pending)
                };
                me.round(acks).await;
            }
            me.idle.notify_waiters();
        });
    }

    /// Sends every ack owed for committed offsets (retrying failed ones) until none is owed or
    /// `deadline` passes; true when nothing was left owed.
    pub async fn flush(self: &Arc<Self>, deadline: Instant) -> bool {
        let mut first = true;
        loop {
            let idle = self.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            let owed = self.t.lock().pending_acks();
            if !owed.is_empty() && !first {
                // A retry: not back to back against a broker that just failed.
                let pause =
                    tokio::time::sleep_until((Instant::now() + Duration::from_millis(100)).into());
                if tokio::time::timeout_at(deadline.into(), pause)
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            first = false;
            self.submit(owed);
            if !self.queue.lock().flushing {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), idle)
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Renews `due` handles (one task each; a failed renewal lets the message go).
    pub fn renew(self: &Arc<Self>, due: Vec<HandleAction>) {
        for a in due {
            let me = self.clone();
            self.drain.spawn(async move {
                me.ctx.stats.inc(Counter::Renewals);
                let new = match change_invisible(&me.ctx, &a).await {
                    Ok(h) => Some((h.to_extra_info(), h.pop_time, h.invisible_time)),
                    Err(e) => {
                        tracing::debug!("renewal failed, letting the message go: {e}");
                        None
                    }
                };
                me.t.lock().renewed(&a, new);
            });
        }
    }

    /// The handles-held gauge, from the translator.
    pub fn set_held_gauge(&self) {
        let held = self.t.lock().held();
        self.ctx.stats.gauge_set(
            Gauge::OutstandingHandles,
            held.try_into().unwrap_or(i64::MAX),
        );
    }

    /// One round of acks.
    async fn round(self: &Arc<Self>, acks: Vec<HandleAction>) {
        let (batches, mut singles) = batch_acks(acks);
        let mut batched = Vec::new();
        for b in batches {
            if self.no_batch_ack.lock().contains(&b.broker) {
                singles.extend(b.actions);
            } else {
                batched.push(self.batch(b));
            }
        }
        let singles = singles.into_iter().map(|a| self.single(a));
        futures_util::future::join(
            futures_util::future::join_all(batched),
            futures_util::future::join_all(singles),
        )
        .await;
        self.set_held_gauge();
    }

    /// One BATCH_ACK_MESSAGE; a refused batch is acked one by one.
    async fn batch(&self, b: AckBatch) {
        match self.send_batch(&b).await {
            Some(outcome) => self.t.lock().ack_done_all(&b.actions, outcome),
            None => {
                for a in b.actions {
                    self.single(a).await;
                }
            }
        }
    }

    /// `None`: the broker refused the batch (acks to be sent singly).
    async fn send_batch(&self, b: &AckBatch) -> Option<Outcome> {
        let first = b.actions.first()?;
        let ctx = &self.ctx;
        ctx.stats
            .add(Counter::AcksFromCommits, b.actions.len() as u64);
        let Ok((ep, timeout)) = ctx
            .router
            .broker_endpoint(&first.topic(), first.group(), &b.broker)
            .await
        else {
            // The broker is not in the route now (lost, or re-registering): the acks are kept
            // and retried until it is back or their handles turn visible (then counted as
            // `ack_expired` and redelivered).
            ctx.stats.add(Counter::AckRetry, b.actions.len() as u64);
            return Some(Outcome::Retry);
        };
        let body = bytes::Bytes::from(b.body.to_json());
        let req = RemotingCommand::request(rc::BATCH_ACK_MESSAGE).with_body(body);
        match ctx
            .upstreams
            .invoke(&ep.address, req, ctx.cfg.request_timeout, timeout)
            .await
        {
            Ok(resp) if resp.code() == response_code::SUCCESS => Some(Outcome::Done),
            Ok(resp) => {
                if resp.code() == response_code::REQUEST_CODE_NOT_SUPPORTED {
                    self.no_batch_ack.lock().insert(b.broker.clone());
                }
                tracing::debug!(code = resp.code(), remark = ?resp.remark(), "batch ack refused, acking singly");
                None
            }
            Err(e) => {
                tracing::debug!("batch ack not delivered, will retry: {e}");
                ctx.stats.add(Counter::AckRetry, b.actions.len() as u64);
                Some(Outcome::Retry)
            }
        }
    }

    /// One ACK_MESSAGE; its outcome goes back to the translator.
    async fn single(&self, a: HandleAction) {
        let outcome = self.send_single(&a).await;
        self.t.lock().ack_done(&a, outcome);
    }

    async fn send_single(&self, a: &HandleAction) -> Outcome {
        let ctx = &self.ctx;
        ctx.stats.inc(Counter::AcksFromCommits);
        let topic = a.topic();
        let Ok((ep, timeout)) = ctx
            .router
            .broker_endpoint(&topic, a.group(), &a.broker)
            .await
        else {
            // Not in the route now: kept and retried, as above.
            ctx.stats.inc(Counter::AckRetry);
            return Outcome::Retry;
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
        match ctx
            .upstreams
            .invoke(&ep.address, req, ctx.cfg.request_timeout, timeout)
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
                ctx.stats.inc(Counter::AckRetry);
                Outcome::Retry
            }
        }
    }
}

/// CHANGE_MESSAGE_INVISIBLETIME for a held handle; the renewed handle on success.
pub async fn change_invisible(ctx: &Context, a: &HandleAction) -> Result<PopHandle, String> {
    let topic = a.topic();
    let (ep, timeout) = ctx
        .router
        .broker_endpoint(&topic, a.group(), &a.broker)
        .await
        .map_err(|e| e.to_string())?;
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
    let resp = ctx
        .upstreams
        .invoke(&ep.address, req, ctx.cfg.request_timeout, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if resp.code() != response_code::SUCCESS {
        return Err(format!(
            "broker answered {} {:?}",
            resp.code(),
            resp.remark()
        ));
    }
    let rh: ChangeInvisibleTimeResponseHeader = resp.decode_header().map_err(|e| e.to_string())?;
    Ok(a.handle
        .after_change_invisible(rh.pop_time, rh.invisible_time, rh.revive_qid))
}
