//! The client table's requests: 34 HEART_BEAT, 35 UNREGISTER_CLIENT, 38
//! GET_CONSUMER_LIST_BY_GROUP, answered from [`Groups`] without a broker.

use std::sync::Arc;

use rocketmesh_filters::codec::body::{ConsumerListBody, HeartbeatData};
use rocketmesh_filters::codec::codes::response_code;
use rocketmesh_filters::codec::headers::{
    GetConsumerListByGroupRequestHeader, UnregisterClientRequestHeader,
};
use rocketmesh_filters::codec::RemotingCommand;

use super::context::Context;
use super::error::SidecarError;
use super::groups::Groups;
use crate::metrics::Counter;
use crate::remoting::Connection;

pub fn heartbeat(
    ctx: &Context,
    groups: &Groups,
    req: &RemotingCommand,
    conn: &Arc<Connection>,
) -> Result<RemotingCommand, SidecarError> {
    ctx.stats.inc(Counter::Heartbeat);
    let hb = HeartbeatData::parse(req.body())
        .map_err(|e| SidecarError::bad_body("heartbeat body", e))?;
    if hb.client_id.is_empty() {
        return Err(SidecarError::bad_body("heartbeat body", "no clientID"));
    }
    groups.heartbeat(conn, &hb, (req.language().name(), req.version()));
    Ok(ctx.reply(req, response_code::SUCCESS, None))
}

pub fn unregister(
    ctx: &Context,
    groups: &Groups,
    req: &RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    ctx.stats.inc(Counter::Unregister);
    let h: UnregisterClientRequestHeader = req.decode_header()?;
    groups.unregister(
        &h.client_id,
        h.producer_group.as_deref(),
        h.consumer_group.as_deref(),
    );
    Ok(ctx.reply(req, response_code::SUCCESS, None))
}

/// "Just you": a legacy consumer behind the sidecar rebalances alone and takes every queue; Pop
/// (which its pulls become) shares the queues with every other consumer of the group.
pub fn consumer_list(
    ctx: &Context,
    groups: &Groups,
    req: &RemotingCommand,
    conn: &Arc<Connection>,
) -> Result<RemotingCommand, SidecarError> {
    ctx.stats.inc(Counter::GetConsumerList);
    let h: GetConsumerListByGroupRequestHeader = req.decode_header()?;
    let body = ConsumerListBody {
        consumer_id_list: groups
            .client_of(conn.id(), &h.consumer_group)
            .into_iter()
            .collect(),
    };
    Ok(ctx
        .reply(req, response_code::SUCCESS, None)
        .with_body(body.to_json()))
}
