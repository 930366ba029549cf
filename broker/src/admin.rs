//! The admin / tool requests a broker answers (`testdata/reference/tool-requests.md`), as
//! Apache's `QueryMessageProcessor` and `AdminBrokerProcessor` do:
//!
//! | code | answer |
//! |---|---|
//! | VIEW_MESSAGE_BY_ID (33) | the raw stored record at `offset` (checked: magic, size, boundary, CRC) |
//! | QUERY_MESSAGE (12) | records indexed under `topic#key` ([`crate::store::index`]), in offset order |
//! | GET_TOPIC_STATS_INFO (202) | min / max offset and last store time per write queue |
//! | GET_CONSUMER_CONNECTION_LIST (203) | the group's members from heartbeats |
//! | GET_CONSUME_STATS (208) | broker / committed offset and last consumed store time per read queue, plus `inFlight` (popped, not acked: a rocketmesh extension) |
//! | QUERY_TOPIC_CONSUME_BY_WHO (300) | groups subscribing to the topic, holding offsets on it or pop handles of it |
//! | GET_CONSUMER_RUNNING_INFO (307), CONSUME_MESSAGE_DIRECTLY (309) | relayed to the consumer ([`call_consumer`]) |
//! | GET_BROKER_RUNTIME_INFO (28) | a KVTable ([`crate::runtime`]) |
//! | GET_TOPIC_CONFIG (351) | the topic's config (5.x `TopicConfigAndQueueMapping` without mapping) |
//!
//! A missing or malformed header is answered with SYSTEM_ERROR naming the field (Apache's
//! remoting layer answers a header it cannot decode the same way).

use std::sync::Arc;

use rocketmesh_filters::codec::body::{
    ConsumeStats, GroupList, MessageQueue, OffsetWrapper, TopicOffset, TopicStatsTable,
};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code as code};
use rocketmesh_filters::codec::headers::*;
use rocketmesh_filters::codec::message::{decode_offset_msg_id, RecordView};
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_remoting::RequestError;

use super::processor::{concat, error, header, reply};
use super::store::index::{record_matches, MAX_QUERY_RESULTS};
use super::Broker;

/// QUERY_MESSAGE by unique key: Apache's `defaultQueryMaxNum`.
pub const UNIQUE_KEY_QUERY_MAX: i32 = 32;
/// Most record bytes one QUERY_MESSAGE answer carries (below the 16 MiB frame limit): trailing
/// records are dropped past it.
pub const MAX_QUERY_BODY: usize = 8 << 20;

/// Whether [`handle`] answers `code`.
pub(crate) fn handles(code: i32) -> bool {
    matches!(
        code,
        rc::VIEW_MESSAGE_BY_ID
            | rc::QUERY_MESSAGE
            | rc::GET_TOPIC_STATS_INFO
            | rc::GET_CONSUMER_CONNECTION_LIST
            | rc::GET_CONSUME_STATS
            | rc::QUERY_TOPIC_CONSUME_BY_WHO
            | rc::GET_CONSUMER_RUNNING_INFO
            | rc::CONSUME_MESSAGE_DIRECTLY
            | rc::GET_BROKER_RUNTIME_INFO
            | rc::GET_TOPIC_CONFIG
    )
}

/// Answers an admin request (see the module documentation).
pub(crate) async fn handle(b: &Arc<Broker>, req: &RemotingCommand) -> RemotingCommand {
    match req.code() {
        rc::VIEW_MESSAGE_BY_ID => view_message(b, req),
        rc::QUERY_MESSAGE => query_message(b, req),
        rc::GET_TOPIC_STATS_INFO => topic_stats(b, req),
        rc::GET_CONSUMER_CONNECTION_LIST => consumer_connections(b, req),
        rc::GET_CONSUME_STATS => consume_stats(b, req),
        rc::QUERY_TOPIC_CONSUME_BY_WHO => consumed_by(b, req),
        rc::GET_CONSUMER_RUNNING_INFO => running_info(b, req).await,
        rc::CONSUME_MESSAGE_DIRECTLY => consume_directly(b, req).await,
        rc::GET_BROKER_RUNTIME_INFO => super::runtime::runtime_info(b, req),
        rc::GET_TOPIC_CONFIG => topic_config(b, req),
        _ => req.not_supported_response(b.config.response_encoding),
    }
}

macro_rules! try_header {
    ($b:expr, $req:expr) => {
        match header($b, $req, code::SYSTEM_ERROR) {
            Ok(h) => h,
            Err(resp) => return resp,
        }
    };
}

fn not_found_by_offset(b: &Broker, req: &RemotingCommand, offset: i64) -> RemotingCommand {
    error(
        b,
        req,
        code::SYSTEM_ERROR,
        format!("can not find message by the offset, {offset}"),
    )
}

/// VIEW_MESSAGE_BY_ID (33).
fn view_message(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: ViewMessageRequestHeader = try_header!(b, req);
    match b.store.record_bytes(h.offset) {
        Ok(record) => reply(b, req, code::SUCCESS).with_body(record),
        Err(e) => {
            tracing::debug!(offset = h.offset, "VIEW_MESSAGE_BY_ID: {e}");
            not_found_by_offset(b, req, h.offset)
        }
    }
}

/// QUERY_MESSAGE (12).
fn query_message(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: QueryMessageRequestHeader = try_header!(b, req);
    let unique = req.ext().get(UNIQUE_KEY_QUERY) == Some("true");
    let max = if unique {
        UNIQUE_KEY_QUERY_MAX
    } else {
        h.max_num
    };
    let max = usize::try_from(max).unwrap_or(0).min(MAX_QUERY_RESULTS);
    let index = b.store.index();
    let candidates = index.query(&h.topic, &h.key, max, h.begin_timestamp, h.end_timestamp);
    let mut records = Vec::new();
    let mut bytes = 0;
    for offset in candidates {
        let Ok(record) = b.store.record_bytes(offset as i64) else {
            continue;
        };
        let matches =
            RecordView::parse(&record).is_ok_and(|v| record_matches(&v, &h.topic, &h.key));
        if !matches {
            continue;
        }
        if bytes + record.len() > MAX_QUERY_BODY && !records.is_empty() {
            break;
        }
        bytes += record.len();
        records.push(record);
    }
    let (ts, phy) = index.last_update();
    let resp_header = QueryMessageResponseHeader {
        index_last_update_timestamp: ts,
        index_last_update_phyoffset: phy,
    };
    if records.is_empty() {
        return error(
            b,
            req,
            code::QUERY_NOT_FOUND,
            "can not find message, maybe time range not correct",
        )
        .with_header(&resp_header);
    }
    reply(b, req, code::SUCCESS)
        .with_header(&resp_header)
        .with_body(concat(&records))
}

/// Store time of the message at `queue_offset`, 0 when there is none.
fn store_time(b: &Broker, topic: &str, queue_id: i32, queue_offset: i64) -> i64 {
    if queue_offset < 0 {
        return 0;
    }
    match b.store.store_timestamp_at(topic, queue_id, queue_offset) {
        Ok(t) => t.unwrap_or(0),
        Err(e) => {
            tracing::warn!(%topic, queue_id, queue_offset, "store time not readable: {e}");
            0
        }
    }
}

/// GET_TOPIC_STATS_INFO (202).
fn topic_stats(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: GetTopicStatsInfoRequestHeader = try_header!(b, req);
    let Some(cfg) = b.topics.get(&h.topic) else {
        return error(
            b,
            req,
            code::TOPIC_NOT_EXIST,
            format!("topic[{}] not exist", h.topic),
        );
    };
    let mut table = TopicStatsTable::default();
    for q in 0..cfg.write_queue_nums {
        let max = b.max_offset(&h.topic, q).max(0);
        let offset = TopicOffset {
            min_offset: b.min_offset(&h.topic, q).max(0),
            max_offset: max,
            last_update_timestamp: if max > 0 {
                store_time(b, &h.topic, q, max - 1)
            } else {
                0
            },
        };
        let mq = MessageQueue::new(h.topic.as_str(), b.config.name.as_str(), q);
        table.offset_table.insert(mq, offset);
    }
    reply(b, req, code::SUCCESS).with_body(table.to_json())
}

/// GET_CONSUMER_CONNECTION_LIST (203).
fn consumer_connections(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: GetConsumerConnectionListRequestHeader = try_header!(b, req);
    match b.clients.consumer_connection(&h.consumer_group) {
        Some(c) => reply(b, req, code::SUCCESS).with_body(c.to_json()),
        None => error(
            b,
            req,
            code::CONSUMER_NOT_ONLINE,
            format!("the consumer group[{}] not online", h.consumer_group),
        ),
    }
}

/// GET_CONSUME_STATS (208).
fn consume_stats(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: GetConsumeStatsRequestHeader = try_header!(b, req);
    let group = h.consumer_group.as_str();
    let topics = match h.topic.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => vec![t.to_owned()],
        None => b.store.offsets().topics_of(group),
    };
    let subscribed = b.clients.subscribed_topics(group);
    let mut stats = ConsumeStats::default();
    for topic in topics {
        let Some(cfg) = b.topics.get(&topic) else {
            continue;
        };
        // As Apache: a group that subscribes to something is reported on those topics only
        // (and, here, on the pop-retry topics of those: their backlog is the group's too).
        let of_subscribed = |t: &str| {
            subscribed.iter().any(|x| x == t)
                || rocketmesh_filters::codec::pop::parse_pop_retry_topic(t, group)
                    .is_some_and(|(_, original)| subscribed.contains(&original))
        };
        if !subscribed.is_empty() && !of_subscribed(&topic) {
            continue;
        }
        let in_flight = b.store.pop().unacked(group, &topic);
        for q in 0..cfg.read_queue_nums {
            let consumer_offset = b.offsets_query(group, &topic, q).unwrap_or(0).max(0);
            let last_timestamp = if consumer_offset > 0 {
                store_time(b, &topic, q, consumer_offset - 1)
            } else {
                0
            };
            let wrapper = OffsetWrapper {
                broker_offset: b.max_offset(&topic, q).max(0),
                consumer_offset,
                last_timestamp,
                pull_offset: None,
                in_flight: Some(in_flight.get(&q).copied().unwrap_or(0)),
            };
            let mq = MessageQueue::new(topic.as_str(), b.config.name.as_str(), q);
            stats.offset_table.insert(mq, wrapper);
        }
    }
    // The broker keeps no per-group consume rate.
    stats.consume_tps = 0.0;
    reply(b, req, code::SUCCESS).with_body(stats.to_json())
}

/// QUERY_TOPIC_CONSUME_BY_WHO (300): as Apache, the groups subscribing to the topic and those
/// holding offsets on it; here also those holding pop handles of it.
fn consumed_by(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: QueryTopicConsumeByWhoRequestHeader = try_header!(b, req);
    let mut list = GroupList::default();
    list.group_list
        .extend(b.clients.groups_subscribing(&h.topic));
    list.group_list
        .extend(b.store.offsets().groups_of(&h.topic));
    list.group_list.extend(b.store.pop().groups_of(&h.topic));
    reply(b, req, code::SUCCESS).with_body(list.to_json())
}

/// GET_TOPIC_CONFIG (351): the topic's config as the body of a 5.x
/// `TopicConfigAndQueueMapping` (no static-topic mapping: `mappingDetail` omitted).
fn topic_config(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let topic = match req.ext().required_str("topic") {
        Ok(t) => t.to_owned(),
        Err(e) => return error(b, req, code::SYSTEM_ERROR, e.to_string()),
    };
    match b.topics.get(&topic) {
        Some(cfg) => match serde_json::to_vec(&cfg) {
            Ok(body) => reply(b, req, code::SUCCESS).with_body(body),
            Err(e) => error(b, req, code::SYSTEM_ERROR, e.to_string()),
        },
        None => error(
            b,
            req,
            code::TOPIC_NOT_EXIST,
            format!("No topic in this broker. topic: {topic}"),
        ),
    }
}

/// GET_CONSUMER_RUNNING_INFO (307): relayed to the consumer.
async fn running_info(b: &Arc<Broker>, req: &RemotingCommand) -> RemotingCommand {
    let h: GetConsumerRunningInfoRequestHeader = try_header!(b, req);
    let call = RemotingCommand::request(req.code())
        .with_ext(req.ext().clone())
        .with_body(req.body().clone());
    call_consumer(b, req, call, &h.consumer_group, &h.client_id).await
}

/// CONSUME_MESSAGE_DIRECTLY (309): the record named by `msgId` (its offset part) relayed to the
/// consumer with this broker's name.
async fn consume_directly(b: &Arc<Broker>, req: &RemotingCommand) -> RemotingCommand {
    let h: ConsumeMessageDirectlyResultRequestHeader = try_header!(b, req);
    let Some(msg_id) = h.msg_id.as_deref() else {
        return error(b, req, code::SYSTEM_ERROR, "missing msgId");
    };
    let offset = match decode_offset_msg_id(msg_id) {
        Ok((_, offset)) => offset,
        Err(e) => return error(b, req, code::SYSTEM_ERROR, e.to_string()),
    };
    let record = match b.store.record_bytes(offset) {
        Ok(r) => r,
        Err(_) => return not_found_by_offset(b, req, offset),
    };
    let mut ext = req.ext().clone();
    ext.insert("brokerName", &b.config.name);
    let call = RemotingCommand::request(req.code())
        .with_ext(ext)
        .with_body(record);
    let client_id = h.client_id.as_deref().unwrap_or("");
    call_consumer(b, req, call, &h.consumer_group, client_id).await
}

/// Apache's `callConsumer`: sends `call` to the connection `client_id` of `group` registered
/// with, waits up to [`crate::BrokerConfig::call_consumer_timeout`], and answers the tool with
/// the consumer's code, remark, ext fields and body.
async fn call_consumer(
    b: &Arc<Broker>,
    req: &RemotingCommand,
    call: RemotingCommand,
    group: &str,
    client_id: &str,
) -> RemotingCommand {
    let Some(conn) = b.clients.consumer_member(group, client_id) else {
        return error(
            b,
            req,
            code::SYSTEM_ERROR,
            format!("The Consumer <{group}> <{client_id}> not online"),
        );
    };
    let timeout = b.config.call_consumer_timeout;
    match conn.request(call, timeout).await {
        Ok(answer) => {
            let mut resp = reply(b, req, answer.code())
                .with_ext(answer.ext().clone())
                .with_body(answer.body().clone());
            if let Some(remark) = answer.remark() {
                resp = resp.with_remark(remark);
            }
            resp
        }
        Err(RequestError::Timeout(t)) => error(
            b,
            req,
            code::CONSUME_MSG_TIMEOUT,
            format!(
                "consumer <{group}> <{client_id}> Timeout: the consumer did not answer within {} ms",
                t.as_millis()
            ),
        ),
        Err(e) => error(
            b,
            req,
            code::SYSTEM_ERROR,
            format!("invoke consumer <{group}> <{client_id}> Exception: {e}"),
        ),
    }
}
