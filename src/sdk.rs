//! Requests built the way a RocketMQ SDK builds them, and the client's reading of the answers:
//! route look-ups, SEND_MESSAGE_V2, POP_MESSAGE and ACK_MESSAGE. Shared by `rocketmesh bench`
//! and `rocketmesh demo`, which talk to brokers and sidecars as an application would.

use rocketmesh_filters::clock::unix_ms;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rocketmesh_filters::codec::body::{
    AckBitSet, BatchAck, BatchAckMessageRequestBody, TopicRouteData,
};
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::{
    AckMessageRequestHeader, GetRouteInfoRequestHeader, PopMessageRequestHeader,
    PopMessageResponseHeader, SendMessageRequestHeaderV2,
};
use rocketmesh_filters::codec::message::{property_keys, Properties, RecordIter};
use rocketmesh_filters::codec::pop::{PopHandle, PopResponseInfo};
use rocketmesh_filters::codec::RemotingCommand;
use thiserror::Error;

use crate::remoting::{ClientError, RemotingClient};

/// The SDKs' auto-create key topic, sent as `defaultTopic`.
pub const DEFAULT_TOPIC: &str = "TBW102";

/// A failed SDK-style call.
#[derive(Debug, Error)]
pub enum SdkError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The peer answered with an error code.
    #[error("{what} refused: code {code} {remark}")]
    Refused {
        what: &'static str,
        code: i32,
        remark: String,
    },
    /// The answer could not be read.
    #[error("unreadable {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
}

/// GET_ROUTEINFO_BY_TOPIC; `None` when the topic does not exist.
pub async fn route(
    client: &RemotingClient,
    topic: &str,
    timeout: Duration,
) -> Result<Option<TopicRouteData>, SdkError> {
    let header = GetRouteInfoRequestHeader {
        topic: topic.to_owned(),
        accept_standard_json_only: Some(true),
    };
    let req = RemotingCommand::request_with_header(request_code::GET_ROUTEINFO_BY_TOPIC, &header);
    let resp = client.invoke(req, timeout).await?;
    match resp.code() {
        response_code::SUCCESS => {
            TopicRouteData::parse(resp.body())
                .map(Some)
                .map_err(|e| SdkError::Malformed {
                    what: "topic route",
                    reason: e.to_string(),
                })
        }
        response_code::TOPIC_NOT_EXIST => Ok(None),
        code => Err(SdkError::Refused {
            what: "route look-up",
            code,
            remark: resp.remark().unwrap_or_default().to_owned(),
        }),
    }
}

/// A synchronous SEND_MESSAGE_V2 of `body` to `queue_id` of `queue_nums` write queues, with the
/// message id `uniq_key` (`UNIQ_KEY`), as a 4.x producer sends it.
pub fn send_v2(
    producer_group: &str,
    topic: &str,
    queue_id: i32,
    queue_nums: i32,
    uniq_key: &str,
    body: Bytes,
) -> RemotingCommand {
    let mut props = Properties::default();
    props.insert(property_keys::UNIQ_KEY, uniq_key);
    props.insert(property_keys::WAIT, "true");
    let header = SendMessageRequestHeaderV2 {
        a: producer_group.to_owned(),
        b: topic.to_owned(),
        c: DEFAULT_TOPIC.into(),
        d: queue_nums,
        e: queue_id,
        f: 0,
        g: unix_ms(),
        h: 0,
        i: Some(props.to_wire_string()),
        j: Some(0),
        k: Some(false),
        m: Some(false),
        ..SendMessageRequestHeaderV2::default()
    };
    RemotingCommand::request_with_header(request_code::SEND_MESSAGE_V2, &header).with_body(body)
}

/// POP_MESSAGE of up to `max` messages (`queue_id` -1: any queue), every tag, starting from the
/// oldest message for a new group.
pub fn pop(
    consumer_group: &str,
    topic: &str,
    queue_id: i32,
    max: i32,
    invisible: Duration,
    poll: Duration,
) -> RemotingCommand {
    let header = PopMessageRequestHeader {
        consumer_group: consumer_group.to_owned(),
        topic: topic.to_owned(),
        queue_id,
        max_msg_nums: max,
        invisible_time: i64::try_from(invisible.as_millis()).unwrap_or(i64::MAX),
        poll_time: i64::try_from(poll.as_millis()).unwrap_or(i64::MAX),
        born_time: unix_ms(),
        init_mode: 0,
        exp_type: Some("TAG".into()),
        exp: Some("*".into()),
        ..PopMessageRequestHeader::default()
    };
    RemotingCommand::request_with_header(request_code::POP_MESSAGE, &header)
}

/// One message of a POP response, with the handle its ACK needs.
#[derive(Debug, Clone)]
pub struct Popped {
    pub handle: PopHandle,
    /// `UNIQ_KEY`, the producer's message id.
    pub uniq_key: Option<String>,
    pub body: Bytes,
    pub queue_id: i32,
    pub queue_offset: i64,
    /// The broker that stored it.
    pub store_host: SocketAddr,
}

/// Reads the messages of a SUCCESS POP response as an SDK's `processPopResponse` does: a record's
/// `POP_CK` is its handle; a record without one gets a handle built from the response header,
/// naming `broker` (the broker the pop was sent to).
pub fn popped(resp: &RemotingCommand, broker: &str) -> Result<Vec<Popped>, SdkError> {
    let bad = |reason: String| SdkError::Malformed {
        what: "POP response",
        reason,
    };
    let header: PopMessageResponseHeader = resp.decode_header().map_err(|e| bad(e.to_string()))?;
    let info = PopResponseInfo::from_header(&header).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for rec in RecordIter::new(resp.body()) {
        let rec = rec.map_err(|e| bad(e.to_string()))?;
        let pop_ck = rec
            .property(property_keys::POP_CK)
            .map_err(|e| bad(e.to_string()))?;
        let handle = info
            .handle_for(
                rec.topic(),
                rec.queue_id(),
                rec.queue_offset(),
                pop_ck,
                broker,
            )
            .map_err(|e| bad(e.to_string()))?;
        let uniq_key = rec
            .property(property_keys::UNIQ_KEY)
            .map_err(|e| bad(e.to_string()))?
            .map(str::to_owned);
        out.push(Popped {
            handle,
            uniq_key,
            body: resp.body().slice_ref(rec.body()),
            queue_id: rec.queue_id(),
            queue_offset: rec.queue_offset(),
            store_host: rec.store_host(),
        });
    }
    Ok(out)
}

/// ACK_MESSAGE for a popped message of `topic` (the handle names the real topic, queue, offset and
/// broker).
pub fn ack(consumer_group: &str, topic: &str, handle: &PopHandle) -> RemotingCommand {
    let header = AckMessageRequestHeader {
        consumer_group: consumer_group.to_owned(),
        topic: handle.real_topic(topic, consumer_group),
        queue_id: handle.queue_id,
        offset: handle.queue_offset,
        extra_info: handle.to_extra_info(),
        bname: Some(handle.broker_name.to_string()),
    };
    RemotingCommand::request_with_header(request_code::ACK_MESSAGE, &header)
}

/// BATCH_ACK_MESSAGE for popped messages of `topic`, as a 5.x client acks a pop's messages
/// together: one `BatchAck` per checkpoint (the handle's checkpoint start, queue, pop time and
/// retry flag), a bit per message. Every handle must name the same broker (one pop's do);
/// `None` when `handles` is empty or a message lies outside its checkpoint's bit range.
pub fn batch_ack<'a>(
    consumer_group: &str,
    topic: &str,
    handles: impl IntoIterator<Item = &'a PopHandle>,
) -> Option<RemotingCommand> {
    let mut body = BatchAckMessageRequestBody::default();
    for h in handles {
        let bit = usize::try_from(h.queue_offset.checked_sub(h.ck_queue_offset)?)
            .ok()
            .filter(|b| *b < AckBitSet::MAX_BITS)?;
        if body.broker_name.is_empty() {
            body.broker_name = h.broker_name.to_string();
        }
        let retry = h.retry.as_str();
        let same_ck = |a: &BatchAck| {
            a.queue_id == h.queue_id
                && a.start_offset == h.ck_queue_offset
                && a.pop_time == h.pop_time
                && a.invisible_time == h.invisible_time
                && a.revive_queue_id == h.revive_qid
                && a.retry == retry
        };
        let i = match body.acks.iter().position(same_ck) {
            Some(i) => i,
            None => {
                body.acks.push(BatchAck {
                    consumer_group: consumer_group.to_owned(),
                    topic: topic.to_owned(),
                    retry: retry.to_owned(),
                    start_offset: h.ck_queue_offset,
                    queue_id: h.queue_id,
                    revive_queue_id: h.revive_qid,
                    pop_time: h.pop_time,
                    invisible_time: h.invisible_time,
                    bit_set: AckBitSet::new(),
                });
                body.acks.len() - 1
            }
        };
        body.acks[i].bit_set.set(bit);
    }
    if body.acks.is_empty() {
        return None;
    }
    Some(
        RemotingCommand::request(request_code::BATCH_ACK_MESSAGE)
            .with_body(Bytes::from(body.to_json())),
    )
}
