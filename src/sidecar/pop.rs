//! Pop consumers: 200050 POP from a readable broker (records get a POP_CK handle naming it),
//! 200051 ACK / 200053 CHANGE_INVISIBLE_TIME to the broker named in the handle, 200151 BATCH_ACK
//! to the broker named in the body.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rocketmesh_filters::codec::body::BatchAckMessageRequestBody;
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, PopMessageRequestHeader,
    PopMessageResponseHeader,
};
use rocketmesh_filters::codec::message::{encode_record, property_keys, RecordIter};
use rocketmesh_filters::codec::pop::{PopHandle, PopResponseInfo};
use rocketmesh_filters::codec::RemotingCommand;

use super::context::Context;
use super::error::SidecarError;
use super::router::PopPlan;
use crate::metrics::{Counter, Gauge};

/// Longest poll time honoured for one pop.
const MAX_POP_POLL_MS: u64 = 60_000;

/// POP: a virtual queue goes to its broker, a named broker to itself, queue -1 to any readable
/// broker (each asked without waiting first, long-polling only when all are empty).
pub async fn pop(ctx: &Context, mut req: RemotingCommand) -> Result<RemotingCommand, SidecarError> {
    ctx.stats.inc(Counter::PopMessage);
    let _a = ctx.stats.track(Gauge::PopMessageActive);
    let h: PopMessageRequestHeader = req.decode_header()?;
    let route = ctx.router.route(&h.topic, Gauge::PopMessagePending).await?;
    let view = ctx.router.view(&route);
    let poll = Duration::from_millis(u64::try_from(h.poll_time).unwrap_or(0).min(MAX_POP_POLL_MS));
    let timeout = ctx.cfg.request_timeout;
    let plan = ctx
        .router
        .plan_pop(&route, &view, h.queue_id, h.bname.as_deref(), |addr| {
            ctx.upstreams.is_down(addr)
        })?;
    let (order, connect_timeout) = match plan {
        PopPlan::One {
            endpoint,
            queue,
            connect_timeout,
        } => {
            if let Some(q) = queue {
                req.ext_mut().put("queueId", q);
            }
            let resp = ctx
                .forward(&endpoint.address, connect_timeout, req, timeout + poll)
                .await?;
            return Ok(stamp_pop_handles(resp, &endpoint.broker_name));
        }
        PopPlan::Any {
            order,
            connect_timeout,
        } => (order, connect_timeout),
    };
    // Any broker: a long poll on one broker would keep the client waiting while another has
    // messages.
    req.ext_mut().put("queueId", -1);
    if order.len() > 1 && !poll.is_zero() {
        let mut quick = req.clone();
        quick.ext_mut().put("pollTime", 0);
        for ep in &order {
            match ctx
                .forward(&ep.address, connect_timeout, quick.clone(), timeout)
                .await
            {
                Ok(resp) if resp.code() == response_code::SUCCESS => {
                    return Ok(stamp_pop_handles(resp, &ep.broker_name));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(broker = %ep.broker_name, "pop failed, trying the next broker: {e}")
                }
            }
        }
    }
    let Some(ep) = order.first() else {
        return Err(SidecarError::NoReadableBroker(h.topic));
    };
    let resp = ctx
        .forward(&ep.address, connect_timeout, req, timeout + poll)
        .await?;
    Ok(stamp_pop_handles(resp, &ep.broker_name))
}

/// ACK_MESSAGE and CHANGE_MESSAGE_INVISIBLETIME: to the broker the pop handle names.
pub async fn ack_like(
    ctx: &Context,
    req: RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    let (topic, group, extra) = if req.code() == rc::ACK_MESSAGE {
        ctx.stats.inc(Counter::AckMessage);
        let h: AckMessageRequestHeader = req.decode_header()?;
        (h.topic, h.consumer_group, h.extra_info)
    } else {
        let h: ChangeInvisibleTimeRequestHeader = req.decode_header()?;
        (h.topic, h.consumer_group, h.extra_info)
    };
    let handle = PopHandle::parse(&extra).map_err(|e| SidecarError::bad_body("extraInfo", e))?;
    let (ep, timeout) = ctx
        .router
        .broker_endpoint(&topic, &group, &handle.broker_name)
        .await?;
    ctx.forward(&ep.address, timeout, req, ctx.cfg.request_timeout)
        .await
}

/// BATCH_ACK_MESSAGE: to the broker its body names.
pub async fn batch_ack(
    ctx: &Context,
    req: RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    ctx.stats.inc(Counter::AckMessage);
    let body = BatchAckMessageRequestBody::parse(req.body())
        .map_err(|e| SidecarError::bad_body("BATCH_ACK body", e))?;
    let Some(first) = body.acks.first() else {
        return Ok(ctx.reply(&req, response_code::SUCCESS, None));
    };
    let (ep, timeout) = ctx
        .router
        .broker_endpoint(&first.topic, &first.consumer_group, &body.broker_name)
        .await?;
    ctx.forward(&ep.address, timeout, req, ctx.cfg.request_timeout)
        .await
}

/// Gives every record of a successful POP response the handle (`POP_CK`) naming `broker`, the
/// real broker that served it. Route answers name only the virtual broker, so an SDK building the
/// handle itself would name that one and its ACK could not be routed; SDKs keep a `POP_CK` they
/// find (as for the retry records a broker re-encodes), which makes acks stateless. Records that
/// already carry one are kept as they are; a response that cannot be read is passed on unchanged.
pub fn stamp_pop_handles(resp: RemotingCommand, broker: &str) -> RemotingCommand {
    if resp.code() != response_code::SUCCESS || resp.body().is_empty() {
        return resp;
    }
    match stamped_body(&resp, broker) {
        Ok(body) => resp.with_body(body),
        Err(e) => {
            tracing::warn!(%broker, "POP response passed on without pop handles: {e}");
            resp
        }
    }
}

fn stamped_body(resp: &RemotingCommand, broker: &str) -> Result<Bytes, String> {
    let h: PopMessageResponseHeader = resp.decode_header().map_err(|e| e.to_string())?;
    let info = PopResponseInfo::from_header(&h).map_err(|e| e.to_string())?;
    let mut body = BytesMut::with_capacity(resp.body().len() + 1024);
    for rec in RecordIter::new(resp.body()) {
        let rec = rec.map_err(|e| e.to_string())?;
        let ck = rec
            .property(property_keys::POP_CK)
            .map_err(|e| e.to_string())?;
        if ck.is_some_and(|ck| !ck.is_empty()) {
            body.extend_from_slice(rec.as_bytes());
            continue;
        }
        let handle = info
            .handle_for(
                rec.topic(),
                rec.queue_id(),
                rec.queue_offset(),
                None,
                broker,
            )
            .map_err(|e| e.to_string())?;
        let mut msg = rec.to_message_ext().map_err(|e| e.to_string())?;
        msg.properties
            .insert(property_keys::POP_CK, handle.to_extra_info());
        encode_record(&msg, &mut body).map_err(|e| e.to_string())?;
    }
    Ok(body.freeze())
}
