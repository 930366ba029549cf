//! QUERY_ASSIGNMENT (400) and SET_MESSAGE_REQUEST_MODE (401), which 5.x Remoting clients in pop
//! mode use to learn their queues. Behind the sidecar every consumer of a clustered group shares
//! every queue (pops, not exclusive pulls), so the answer is every virtual read queue of the
//! topic, in POP mode; broadcasting consumers get the same queues in PULL mode (each reads all
//! of them with its own offsets). Mode changes are accepted and change nothing: the sidecar
//! always serves a clustered group by pop.

use bytes::Bytes;
use rocketmesh_filters::codec::body::{
    MessageModel, MessageQueue, MessageQueueAssignment, MessageRequestMode,
    QueryAssignmentRequestBody, QueryAssignmentResponseBody, SetMessageRequestModeRequestBody,
};
use rocketmesh_filters::codec::codes::response_code;
use rocketmesh_filters::codec::RemotingCommand;

use super::context::Context;
use super::error::SidecarError;
use crate::metrics::Gauge;

/// QUERY_ASSIGNMENT: the topic's virtual read queues, POP for clustered groups.
pub async fn query(ctx: &Context, req: &RemotingCommand) -> Result<RemotingCommand, SidecarError> {
    let body = QueryAssignmentRequestBody::parse(req.body())
        .map_err(|e| SidecarError::bad_body("QueryAssignmentRequestBody", e))?;
    let route = ctx
        .router
        .route(&body.topic, Gauge::GetTopicRoutePending)
        .await?;
    let view = ctx.router.view(&route);
    let mode = match body.message_model {
        MessageModel::Broadcasting => MessageRequestMode::Pull,
        _ => MessageRequestMode::Pop,
    };
    let queues = view.queues.read_queue_nums();
    let answer = QueryAssignmentResponseBody {
        message_queue_assignments: (0..queues)
            .map(|q| MessageQueueAssignment {
                message_queue: MessageQueue {
                    broker_name: ctx.cfg.virtual_broker.clone(),
                    queue_id: q as i32,
                    topic: body.topic.clone(),
                },
                mode,
                ..MessageQueueAssignment::default()
            })
            .collect(),
    };
    Ok(ctx
        .reply(req, response_code::SUCCESS, None)
        .with_body(Bytes::from(answer.to_json())))
}

/// SET_MESSAGE_REQUEST_MODE: accepted (the body must be readable); pop is what the sidecar does.
pub fn set_mode(ctx: &Context, req: &RemotingCommand) -> Result<RemotingCommand, SidecarError> {
    SetMessageRequestModeRequestBody::parse(req.body())
        .map_err(|e| SidecarError::bad_body("SetMessageRequestModeRequestBody", e))?;
    Ok(ctx.reply(req, response_code::SUCCESS, None))
}
