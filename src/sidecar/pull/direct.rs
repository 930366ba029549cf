//! Pulls and offsets relayed to the real (broker, queue) behind a virtual queue, with the
//! client's own offsets: broadcasting consumers (every consumer gets every message) and pull
//! consumers (they pick queues and offsets themselves; pulling again from an old offset returns
//! the same messages). Only the queue id changes on the way (virtual -> real); the broker's
//! answer goes back as it is, except `suggestWhichBrokerId`, which is reset to the master: the
//! route the SDK holds names one broker, the sidecar.

use std::time::Duration;

use rocketmesh_filters::codec::codes::request_code as rc;
use rocketmesh_filters::codec::{HeaderError, RemotingCommand};

use super::super::context::Context;
use super::super::error::SidecarError;
use crate::metrics::{Counter, Gauge};

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

/// Relays `req` (PULL_MESSAGE, QUERY/UPDATE_CONSUMER_OFFSET, GET_MAX/MIN_OFFSET,
/// SEARCH_OFFSET_BY_TIMESTAMP) to the broker and queue behind its virtual `queueId`.
pub async fn relay(ctx: &Context, req: RemotingCommand) -> Result<RemotingCommand, SidecarError> {
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
