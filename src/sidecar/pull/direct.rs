//! Pulls and offsets relayed to the real (broker, queue) behind a virtual queue, with the
//! client's own offsets: broadcasting consumers (every consumer gets every message) and pull
//! consumers (they pick queues and offsets themselves; pulling again from an old offset returns
//! the same messages). Only the queue id changes on the way (virtual -> real); the broker's
//! answer goes back as it is, except `suggestWhichBrokerId`, which is reset to the master: the
//! route the SDK holds names one broker, the sidecar.

use std::time::Duration;

use rocketmesh_filters::codec::body::MessageQueue;
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::QueryConsumerOffsetRequestHeader;
use rocketmesh_filters::codec::{HeaderError, RemotingCommand};

use super::super::context::Context;
use super::super::error::SidecarError;
use super::super::locks::Locks;
use crate::metrics::{Counter, Gauge};

/// PULL sysFlag bit: the request carries the consumer's commit offset.
const FLAG_COMMIT_OFFSET: i64 = 1;
/// PULL sysFlag bit: the broker may hold the pull until a message arrives.
pub const FLAG_SUSPEND: i32 = 2;
/// Longest a relayed pull may be held at the broker (Apache's broker: 15 s; C++ asks 20 s).
const MAX_SUSPEND: Duration = Duration::from_secs(30);

fn field<'a>(req: &'a RemotingCommand, key: &'static str) -> Result<&'a str, SidecarError> {
    req.ext()
        .get(key)
        .ok_or(SidecarError::BadHeader(HeaderError::Missing { field: key }))
}

fn int_field(req: &RemotingCommand, key: &'static str) -> Result<i64, SidecarError> {
    let v = field(req, key)?;
    v.trim()
        .parse()
        .map_err(|_| SidecarError::BadHeader(HeaderError::invalid(key, v, "an integer")))
}

/// An orderly consumer's connection: its queue locks decide which of its offsets reach brokers.
#[derive(Debug, Clone, Copy)]
pub struct Orderly<'a> {
    pub locks: &'a Locks,
    pub conn: u64,
}

/// The group's committed offset of `q` at the broker (None: none, or no answer).
async fn committed_offset(
    ctx: &Context,
    addr: &str,
    connect_timeout: Option<Duration>,
    group: &str,
    q: &MessageQueue,
) -> Option<i64> {
    let h = QueryConsumerOffsetRequestHeader {
        consumer_group: group.to_owned(),
        topic: q.topic.clone(),
        queue_id: q.queue_id,
        ..Default::default()
    };
    let req = RemotingCommand::request_with_header(rc::QUERY_CONSUMER_OFFSET, &h);
    let resp = ctx
        .forward(addr, connect_timeout, req, ctx.cfg.request_timeout)
        .await
        .ok()?;
    if resp.code() != response_code::SUCCESS {
        return None;
    }
    resp.ext()
        .get("offset")
        .and_then(|o| o.trim().parse::<i64>().ok())
        .filter(|o| *o >= 0)
}

/// Relays `req` (PULL_MESSAGE, QUERY/UPDATE_CONSUMER_OFFSET, GET_MAX/MIN_OFFSET,
/// SEARCH_OFFSET_BY_TIMESTAMP) to the broker and queue behind its virtual `queueId`.
pub async fn relay(
    ctx: &Context,
    req: RemotingCommand,
    orderly: Option<Orderly<'_>>,
) -> Result<RemotingCommand, SidecarError> {
    let code = req.code();
    let topic = field(&req, "topic")?.to_owned();
    let vqueue = int_field(&req, "queueId")?;
    let route = ctx.router.route(&topic, Gauge::TotalPending).await?;
    let view = ctx.router.view(&route);
    let target = i32::try_from(vqueue)
        .ok()
        .and_then(|q| view.queues.read_target(q));
    let Some((broker, real_queue)) = target else {
        return Err(SidecarError::NoRoute { code, topic });
    };
    let broker = broker.to_owned();
    let group = req
        .ext()
        .get("consumerGroup")
        .unwrap_or_default()
        .to_owned();
    let (endpoint, connect_timeout) = ctx.router.broker_endpoint(&topic, &group, &broker).await?;
    let mut timeout = ctx.cfg.request_timeout;
    if code == rc::PULL_MESSAGE {
        ctx.stats.inc(Counter::PullMessage);
        ctx.stats.inc(Counter::PullDirect);
        let flags = int_field(&req, "sysFlag").unwrap_or(0);
        if flags & i64::from(FLAG_SUSPEND) != 0 {
            let suspend = int_field(&req, "suspendTimeoutMillis").unwrap_or(0);
            timeout += Duration::from_millis(u64::try_from(suspend).unwrap_or(0)).min(MAX_SUSPEND);
        }
    }
    let mut fwd = req;
    fwd.ext_mut().put("queueId", real_queue);
    if let Some(o) = orderly {
        let real = MessageQueue::new(topic.clone(), broker.clone(), real_queue);
        let holds = o.locks.holds(o.conn, &group, &real);
        if code == rc::UPDATE_CONSUMER_OFFSET && !holds {
            // Every orderly consumer behind a sidecar was given every queue, and persists an
            // offset for each: only the lock holder's may reach the broker.
            return Ok(ctx.reply(&fwd, response_code::SUCCESS, None));
        }
        if code == rc::PULL_MESSAGE {
            let flags = int_field(&fwd, "sysFlag").unwrap_or(0);
            let mut drop_commit = !holds;
            if o.locks.take_fresh(o.conn, &group, &real) {
                // Newly locked: the client computed its offset when it was given the queue,
                // maybe long before; the last holder's committed offset is where it goes on.
                let committed =
                    committed_offset(ctx, &endpoint.address, connect_timeout, &group, &real).await;
                let asked = int_field(&fwd, "queueOffset").unwrap_or(0);
                if let Some(c) = committed.filter(|c| *c > asked) {
                    tracing::debug!(%group, ?real, asked, committed = c, "pull moved to the committed offset");
                    fwd.ext_mut().put("queueOffset", c);
                    drop_commit |= int_field(&fwd, "commitOffset").unwrap_or(0) < c;
                }
            }
            if drop_commit && flags & FLAG_COMMIT_OFFSET != 0 {
                fwd.ext_mut().put("sysFlag", flags & !FLAG_COMMIT_OFFSET);
            }
        }
    }
    let mut resp = ctx
        .forward(&endpoint.address, connect_timeout, fwd, timeout)
        .await?;
    if code == rc::PULL_MESSAGE && resp.ext().get("suggestWhichBrokerId").is_some() {
        resp.ext_mut().put("suggestWhichBrokerId", 0);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_bad_fields_are_header_errors() {
        let mut req = RemotingCommand::request(rc::PULL_MESSAGE);
        req.ext_mut().put("topic", "T");
        req.ext_mut().put("queueId", "x");
        assert_eq!(field(&req, "topic").unwrap(), "T");
        assert!(matches!(
            field(&req, "consumerGroup"),
            Err(SidecarError::BadHeader(_))
        ));
        assert!(matches!(
            int_field(&req, "queueId"),
            Err(SidecarError::BadHeader(_))
        ));
    }
}
