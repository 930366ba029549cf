//! Sends (10 SEND_MESSAGE, 310 SEND_MESSAGE_V2, 320 SEND_BATCH_MESSAGE): the SDK's virtual write
//! queue -> (writable broker, its queue) -> upstream, and the answer back in virtual terms.
//!
//! Two paths, one plan ([`super::router::SendPlan`]): the common send is queued on a live pooled
//! connection without a task ([`try_send_inline`], answered from the upstream reader by
//! [`SendDone`]); anything else (a route to wait for, auto-creation, a connect, a retry on another
//! broker) runs [`send`] on a task. Both answer the same way through [`finish_send`].

use std::sync::Arc;
use std::time::Instant;

use rocketmesh_filters::codec::codes::{
    request_code as rc, response_code, LanguageCode, SerializeType,
};
use rocketmesh_filters::codec::ext::HeaderError;
use rocketmesh_filters::codec::message::{properties, property_keys};
use rocketmesh_filters::codec::RemotingCommand;

use super::context::Context;
use super::error::SidecarError;
use super::txn::Transactions;
use crate::metrics::{Counter, Gauge};
use crate::remoting::{ClientError, Completion, Connection, RequestSlot};

/// A send on a task: waits for the route if needed (a legacy producer's auto-create goes to a
/// writable broker of its `defaultTopic`), then tries the virtual queue's broker and, only when
/// the request certainly did not reach it, the other writable brokers.
pub async fn send(
    ctx: &Context,
    txns: &Transactions,
    req: RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    let code = req.code();
    let (counter, active) = send_stats(code);
    ctx.stats.inc(counter);
    let _a = ctx.stats.track(active);
    let h = SendHeader::read(&req)?;
    let (topic, default_topic) = (h.topic.to_owned(), h.default_topic.to_owned());
    let (queue, k_queue, transactional) = (h.queue, h.k_queue, h.transactional);

    let route = match ctx.router.route(&topic, Gauge::SendMessagePending).await {
        Ok(r) => r,
        Err(SidecarError::TopicMissing(_))
            if !default_topic.is_empty() && default_topic != topic =>
        {
            // A legacy producer auto-creating the topic: it built its queues from the default
            // topic's route; the broker creates the topic on this send.
            ctx.router
                .route(&default_topic, Gauge::SendMessagePending)
                .await?
        }
        Err(e) => return Err(e),
    };
    let view = ctx.router.view(&route);
    let plan = ctx.router.plan_send(&route, &view, code, queue)?;
    let attempts = plan.attempts(|addr| ctx.upstreams.is_down(addr))?;
    let last = attempts.len() - 1;
    let mut req = Some(req);
    let mut failure = None;
    for (i, t) in attempts.iter().enumerate() {
        // Only a retry needs the request again; only a changed queue id needs a new header
        // (otherwise the original header bytes are forwarded as they came).
        let attempt = if i == last { req.take() } else { req.clone() };
        let Some(mut attempt) = attempt else { break };
        if t.local != queue {
            attempt.ext_mut().put(k_queue, t.local);
        }
        let addr = &t.endpoint.address;
        match ctx
            .forward(addr, plan.connect_timeout, attempt, ctx.cfg.request_timeout)
            .await
        {
            Ok(mut resp) => {
                let txn = transactional.then_some(addr.as_str());
                finish_send(txns, &mut resp, txn, plan.virtual_queue(t), t.local);
                return Ok(resp);
            }
            Err(e) if e.retryable() => {
                tracing::debug!(broker = %t.endpoint.broker_name, "send not delivered, trying another writable broker: {e}");
                if i < last {
                    ctx.stats.inc(Counter::SendFailover);
                }
                failure = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(failure.unwrap_or(SidecarError::NoWritableBroker(topic)))
}

/// The common send, without a task: when the topic's route is at hand and the virtual queue's
/// broker has a live pooled connection, the request is queued there at once and the answer goes
/// back to `conn` from the upstream connection's reader ([`SendDone`]). Anything else is handed
/// back for [`send`], which answers the same way.
#[allow(clippy::result_large_err)]
pub fn try_send_inline(
    ctx: &Arc<Context>,
    txns: &Arc<Transactions>,
    mut req: RemotingCommand,
    conn: &Arc<Connection>,
    slot: RequestSlot,
) -> Result<(), (RemotingCommand, RequestSlot)> {
    if req.is_oneway() {
        return Err((req, slot));
    }
    let code = req.code();
    let Ok(h) = SendHeader::read(&req) else {
        return Err((req, slot));
    };
    let (queue, k_queue, transactional) = (h.queue, h.k_queue, h.transactional);
    let Some(route) = ctx.router.cached(h.topic) else {
        return Err((req, slot));
    };
    let view = ctx.router.view(&route);
    let Ok(plan) = ctx.router.plan_send(&route, &view, code, queue) else {
        return Err((req, slot));
    };
    let Some(t) = plan.first() else {
        return Err((req, slot));
    };
    if t.local != queue {
        req.ext_mut().put(k_queue, t.local);
    }
    let (counter, active) = send_stats(code);
    let start = Instant::now();
    // Counted as in flight before it can complete (on another thread, maybe at once).
    ctx.stats.gauge_add(Gauge::RequestActive, 1);
    ctx.stats.gauge_add(active, 1);
    let done = SendDone {
        ctx: ctx.clone(),
        txns: txns.clone(),
        conn: conn.clone(),
        slot,
        code,
        opaque: req.opaque(),
        language: req.language(),
        serialize: req.serialize_type(),
        vqueue: plan.virtual_queue(&t),
        local: t.local,
        active,
        transactional: transactional.then(|| t.endpoint.address.clone()),
        start,
    };
    match ctx.upstreams.try_forward(
        &t.endpoint.address,
        req,
        start,
        ctx.cfg.request_timeout,
        done,
    ) {
        Ok(()) => {
            ctx.stats.inc(Counter::Request);
            ctx.stats.inc(Counter::RequestDecodingSuccess);
            ctx.stats.inc(counter);
            Ok(())
        }
        Err((mut req, done)) => {
            ctx.stats.gauge_add(Gauge::RequestActive, -1);
            ctx.stats.gauge_add(active, -1);
            if t.local != queue {
                // Back to the SDK's queue id: the task path plans again.
                if queue >= 0 {
                    req.ext_mut().put(k_queue, queue);
                } else {
                    req.ext_mut().remove(k_queue);
                }
            }
            Err((req, done.slot))
        }
    }
}

/// A send's answer in the SDK's terms: the virtual queue id, and (for a transactional send to
/// the broker at `txn_addr`) the half message remembered for END_TRANSACTION.
fn finish_send(
    txns: &Transactions,
    resp: &mut RemotingCommand,
    txn_addr: Option<&str>,
    vqueue: i32,
    local: i32,
) {
    if let (Some(addr), response_code::SUCCESS) = (txn_addr, resp.code()) {
        for key in ["msgId", "transactionId"] {
            if let Some(id) = resp.ext().get(key) {
                txns.remember(id, addr);
            }
        }
    }
    // The broker answers with its own queue id. When its queues start the virtual range
    // (`local == vqueue`) its ids are the virtual ones, and the answer goes back as it came, its
    // custom header not even read.
    if local != vqueue
        && resp
            .ext()
            .get("queueId")
            .is_some_and(|q| q.parse() != Ok(vqueue))
    {
        resp.ext_mut().put("queueId", vqueue);
    }
}

/// The counter and active gauge of a send code.
fn send_stats(code: i32) -> (Counter, Gauge) {
    match code {
        rc::SEND_MESSAGE => (Counter::SendMessageV1, Gauge::SendMessageV1Active),
        rc::SEND_BATCH_MESSAGE => (Counter::SendMessageBatch, Gauge::SendMessageV2Active),
        _ => (Counter::SendMessageV2, Gauge::SendMessageV2Active),
    }
}

/// What routing reads from a send's header. V1 names its fields, V2 (and batch from Java) uses
/// `a`..`n`.
struct SendHeader<'a> {
    topic: &'a str,
    /// `defaultTopic` ("" when absent): a legacy producer's auto-create.
    default_topic: &'a str,
    /// The SDK's (virtual) queue; -1 when absent.
    queue: i32,
    /// The key of the queue id, for rewriting it.
    k_queue: &'static str,
    /// The message is a transactional half message (`TRAN_MSG=true`).
    transactional: bool,
}

impl<'a> SendHeader<'a> {
    fn read(req: &'a RemotingCommand) -> Result<Self, HeaderError> {
        let ext = req.ext();
        let (k_topic, k_default, k_queue, k_props) = if ext.contains("b") {
            ("b", "c", "e", "i")
        } else {
            ("topic", "defaultTopic", "queueId", "properties")
        };
        Ok(SendHeader {
            topic: ext.required_str(k_topic)?,
            default_topic: ext.get(k_default).unwrap_or(""),
            queue: ext.optional(k_queue)?.unwrap_or(-1),
            k_queue,
            transactional: ext
                .get(k_props)
                .and_then(|p| properties::lookup(p, property_keys::TRAN_MSG))
                .is_some_and(|v| v == "true"),
        })
    }
}

/// The rest of a send taken by [`try_send_inline`]: runs on the upstream connection's reader
/// when the broker answers (or the request times out or the connection ends), and answers the
/// client the way [`send`] would.
struct SendDone {
    ctx: Arc<Context>,
    txns: Arc<Transactions>,
    conn: Arc<Connection>,
    slot: RequestSlot,
    code: i32,
    opaque: i32,
    language: LanguageCode,
    serialize: SerializeType,
    /// The SDK's (virtual) queue, written back into the answer.
    vqueue: i32,
    /// The broker's queue the send went to.
    local: i32,
    active: Gauge,
    /// The broker's address, for a transactional send (END_TRANSACTION goes there).
    transactional: Option<String>,
    start: Instant,
}

impl Completion for SendDone {
    fn complete(self, result: Result<RemotingCommand, ClientError>) {
        let ctx = &self.ctx;
        let stats = &ctx.stats;
        stats.upstream_rq_time(self.code, self.start.elapsed());
        let resp = match result {
            Ok(mut resp) => {
                stats.inc(Counter::Response);
                stats.inc(Counter::ResponseDecodingSuccess);
                stats.inc(Counter::ResponseSuccess);
                resp.set_opaque(self.opaque);
                finish_send(
                    &self.txns,
                    &mut resp,
                    self.transactional.as_deref(),
                    self.vqueue,
                    self.local,
                );
                resp
            }
            Err(e) => {
                stats.inc(Counter::ResponseError);
                let remark = match e {
                    ClientError::Timeout { addr, .. } | ClientError::Closed { addr, .. } => {
                        format!("broker {addr}: {e}")
                    }
                    other => other.to_string(),
                };
                tracing::debug!(code = self.code, remark = %remark, "request rejected");
                let stub = RemotingCommand::request(self.code)
                    .with_opaque(self.opaque)
                    .with_language(self.language)
                    .with_serialize_type(self.serialize);
                ctx.reply(&stub, response_code::SYSTEM_ERROR, Some(remark))
            }
        };
        stats.gauge_add(self.active, -1);
        stats.gauge_add(Gauge::RequestActive, -1);
        self.conn.deliver(resp, self.slot);
    }
}
