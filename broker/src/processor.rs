//! Request processors of the broker node: one function per request code, dispatched by
//! [`BrokerHandler`].
//!
//! Error answers follow the Java broker's codes and remark texts where clients look at them;
//! a malformed custom header is answered with the code the Java broker would use for that
//! request and a remark naming the missing or malformed field.

use rocketmesh_filters::clock::unix_ms;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rocketmesh_filters::codec::body::{
    perm, BrokerData, ConsumerListBody, HeartbeatData, SubscriptionData, TopicConfig,
};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code as code};
use rocketmesh_filters::codec::headers::*;
use rocketmesh_filters::codec::message::{
    decode_batch, property_keys, BatchLimits, MessageExt, Properties,
};
use rocketmesh_filters::codec::pop::{dlq_topic, retry_topic_v4, RETRY_GROUP_TOPIC_PREFIX};
use rocketmesh_filters::codec::{CommandHeader, HeaderError, RemotingCommand};

use super::store::{GetStatus, PutResult, StoreError};
use super::topics::TopicError;
use super::Broker;
use rocketmesh_remoting::{Connection, Handler};

/// Most messages one pull returns.
pub const MAX_PULL_MESSAGES: i32 = 32;
/// Most bytes one pull returns (Java: maxTransferBytesOnMessageInMemory).
pub const MAX_PULL_BYTES: usize = 256 * 1024;
/// Longest a pull may be held (clients ask for 15-20 s; more is clamped).
pub const MAX_SUSPEND: Duration = Duration::from_secs(30);
/// Default maximum reconsume times (`maxReconsumeTimes=-1` means 16).
pub const DEFAULT_MAX_RECONSUME_TIMES: i32 = 16;

/// The broker's [`Handler`].
#[derive(Debug)]
pub struct BrokerHandler {
    pub(crate) broker: Arc<Broker>,
}

impl Handler for BrokerHandler {
    async fn handle(
        self: &Arc<Self>,
        req: RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        let b = &self.broker;
        if let Some(denied) = b.acl.as_ref().and_then(|acl| acl.check(b, &req, conn)) {
            return Some(denied);
        }
        let resp = match req.code() {
            rc::SEND_MESSAGE | rc::SEND_MESSAGE_V2 | rc::SEND_BATCH_MESSAGE => {
                send(b, &req, conn).await
            }
            rc::PULL_MESSAGE => pull(b, &req).await,
            rc::QUERY_CONSUMER_OFFSET => query_offset(b, &req),
            rc::UPDATE_CONSUMER_OFFSET => update_offset(b, &req),
            rc::GET_MAX_OFFSET => queue_offset(b, &req, OffsetKind::Max),
            rc::GET_MIN_OFFSET => queue_offset(b, &req, OffsetKind::Min),
            rc::SEARCH_OFFSET_BY_TIMESTAMP => search_offset(b, &req),
            rc::HEART_BEAT => heartbeat(b, &req, conn),
            rc::UNREGISTER_CLIENT => unregister(b, &req),
            rc::GET_CONSUMER_LIST_BY_GROUP => consumer_list(b, &req),
            rc::CONSUMER_SEND_MSG_BACK => send_back(b, &req).await,
            rc::GET_ROUTEINFO_BY_TOPIC => super::topic_admin::route(b, &req),
            rc::GET_BROKER_CLUSTER_INFO => super::topic_admin::cluster_info(b, &req),
            rc::UPDATE_AND_CREATE_TOPIC => super::topic_admin::create_topic(b, &req),
            rc::GET_ALL_TOPIC_CONFIG => super::topic_admin::all_topics(b, &req),
            rc::POP_MESSAGE => super::pop::pop(b, &req).await,
            rc::ACK_MESSAGE => super::pop::ack(b, &req).await,
            rc::BATCH_ACK_MESSAGE => super::pop::batch_ack(b, &req).await,
            rc::CHANGE_MESSAGE_INVISIBLETIME => super::pop::change_invisible(b, &req).await,
            rc::QUERY_ASSIGNMENT => super::assignment::query(b, &req),
            rc::LOCK_BATCH_MQ => super::locks::lock_batch(b, &req),
            rc::UNLOCK_BATCH_MQ => super::locks::unlock_batch(b, &req),
            rc::SET_MESSAGE_REQUEST_MODE => super::assignment::set_mode(b, &req),
            c if super::admin::handles(c) => super::admin::handle(b, &req).await,
            rc::END_TRANSACTION => {
                // Transactions are not supported; a oneway END_TRANSACTION needs no answer.
                not_supported(b, &req)
            }
            _ => not_supported(b, &req),
        };
        Some(resp)
    }

    fn on_close(&self, conn: &Arc<Connection>) {
        let changed = self.broker.clients.connection_closed(conn.id());
        self.broker.notify_groups(&changed);
    }
}

pub(crate) fn reply(b: &Broker, req: &RemotingCommand, code: i32) -> RemotingCommand {
    req.response_to(code, b.config.response_encoding)
}

pub(crate) fn error(
    b: &Broker,
    req: &RemotingCommand,
    code: i32,
    remark: impl Into<String>,
) -> RemotingCommand {
    reply(b, req, code).with_remark(remark)
}

fn not_supported(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    req.not_supported_response(b.config.response_encoding)
}

/// Parses a typed header or answers with `code` and a remark naming the field.
// The error is the finished response, returned straight to the client, never propagated.
#[allow(clippy::result_large_err)]
pub(crate) fn header<H: CommandHeader>(
    b: &Broker,
    req: &RemotingCommand,
    code: i32,
) -> Result<H, RemotingCommand> {
    H::from_ext(req.ext()).map_err(|e: HeaderError| error(b, req, code, e.to_string()))
}

fn store_error(b: &Broker, req: &RemotingCommand, e: StoreError) -> RemotingCommand {
    tracing::error!("store error: {e}");
    error(b, req, code::SYSTEM_ERROR, format!("store error: {e}"))
}

// ----- send -----

async fn send(b: &Arc<Broker>, req: &RemotingCommand, conn: &Arc<Connection>) -> RemotingCommand {
    let h = match SendMessageRequestHeader::from_command_ext(req.code(), req.ext()) {
        Ok(h) => h,
        Err(e) => return error(b, req, code::MESSAGE_ILLEGAL, e.to_string()),
    };
    let topic_cfg =
        match b
            .topics
            .for_send(&h.topic, Some(&h.default_topic), h.default_topic_queue_nums)
        {
            Ok(cfg) => cfg,
            Err(TopicError::InvalidName { topic, reason }) => {
                return error(
                    b,
                    req,
                    code::MESSAGE_ILLEGAL,
                    format!("the topic[{topic}] is not valid: {reason}"),
                )
            }
            Err(e @ TopicError::NotExist { .. }) => {
                return error(b, req, code::TOPIC_NOT_EXIST, e.to_string())
            }
            Err(e) => return error(b, req, code::SYSTEM_ERROR, e.to_string()),
        };
    if !perm::is_writable(topic_cfg.perm) {
        return error(
            b,
            req,
            code::NO_PERMISSION,
            format!("the topic[{}] sending is forbidden", h.topic),
        );
    }
    let mut queue_id = h.queue_id;
    if queue_id < 0 {
        queue_id = (unix_ms() % i64::from(topic_cfg.write_queue_nums)) as i32;
    }
    if queue_id >= topic_cfg.write_queue_nums {
        return error(
            b,
            req,
            code::SYSTEM_ERROR,
            format!(
                "request queueId[{queue_id}] is illegal, topic: {} writeQueueNums: {}",
                h.topic, topic_cfg.write_queue_nums
            ),
        );
    }
    let header_props = Properties::parse(h.properties.as_deref().unwrap_or(""));
    let mut reconsume_times = h.reconsume_times.unwrap_or(0);
    let mut topic = h.topic.clone();
    // A retry message that used up its attempts goes to the group's dead letter queue.
    if let Some(group) = h.topic.strip_prefix(RETRY_GROUP_TOPIC_PREFIX) {
        let max = h.max_reconsume_times.unwrap_or(DEFAULT_MAX_RECONSUME_TIMES);
        if reconsume_times >= max {
            topic = dlq_topic(group);
            if let Err(e) = b.topics.ensure(&topic, 1) {
                return error(b, req, code::SYSTEM_ERROR, e.to_string());
            }
            queue_id = 0;
            reconsume_times = reconsume_times.max(max);
        }
    }
    let born_host = conn.peer();
    let mut messages = Vec::new();
    if h.is_batch(req.code()) {
        let limits = BatchLimits {
            max_body_len: b.config.max_message_size,
            ..BatchLimits::default()
        };
        let batch = match decode_batch(req.body(), &limits) {
            Ok(batch) if !batch.is_empty() => batch,
            Ok(_) => return error(b, req, code::MESSAGE_ILLEGAL, "empty batch"),
            Err(e) => {
                return error(
                    b,
                    req,
                    code::MESSAGE_ILLEGAL,
                    format!("bad batch body: {e}"),
                )
            }
        };
        for m in batch {
            let mut props = m.properties;
            for (k, v) in header_props.iter() {
                if props.get(k).is_none() {
                    props.insert(k, v);
                }
            }
            messages.push(b.new_message(
                &topic,
                queue_id,
                m.flag,
                h.sys_flag,
                h.born_timestamp,
                born_host,
                reconsume_times,
                m.body,
                props,
            ));
        }
    } else {
        if req.body().len() > b.config.max_message_size {
            return error(
                b,
                req,
                code::MESSAGE_ILLEGAL,
                format!(
                    "the message body size over max value, MAX: {}",
                    b.config.max_message_size
                ),
            );
        }
        messages.push(b.new_message(
            &topic,
            queue_id,
            h.flag,
            h.sys_flag,
            h.born_timestamp,
            born_host,
            reconsume_times,
            req.body().clone(),
            header_props,
        ));
    }
    // A single message with a DELAY level goes through the schedule topic (batches cannot be
    // delayed, as in RocketMQ).
    let delayed = match messages.as_slice() {
        [m] => super::schedule::requested_level(m),
        _ => None,
    };
    let put = match delayed {
        Some(level) => {
            let Some(msg) = messages.pop() else {
                return error(b, req, code::SYSTEM_ERROR, "no message to send");
            };
            b.put_delayed(msg, level).await
        }
        None => b.put(messages).await,
    };
    let results = match put {
        Ok(r) => r,
        Err(e) => return store_error(b, req, e),
    };
    send_response(b, req, queue_id, &results)
}

fn send_response(
    b: &Broker,
    req: &RemotingCommand,
    queue_id: i32,
    results: &[PutResult],
) -> RemotingCommand {
    let msg_id = results
        .iter()
        .map(|r| r.msg_id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let header = SendMessageResponseHeader {
        msg_id,
        queue_id,
        queue_offset: results.first().map(|r| r.queue_offset).unwrap_or(0),
        msg_region: Some("DefaultRegion".into()),
        trace_on: Some(true),
        ..SendMessageResponseHeader::default()
    };
    reply(b, req, code::SUCCESS).with_header(&header)
}

// ----- pull -----

/// A consumer's subscription expression, which must be a TAG expression (`expr_type` absent or
/// `TAG`): SUBSCRIPTION_PARSE_FAILED otherwise.
// The error is the finished response, returned straight to the client.
#[allow(clippy::result_large_err)]
pub(crate) fn tag_subscription(
    b: &Broker,
    req: &RemotingCommand,
    topic: &str,
    expr_type: Option<&str>,
    expr: &str,
) -> Result<SubscriptionData, RemotingCommand> {
    if expr_type.is_some_and(|t| !t.eq_ignore_ascii_case("TAG")) {
        return Err(error(
            b,
            req,
            code::SUBSCRIPTION_PARSE_FAILED,
            "only TAG expressions are supported by this broker",
        ));
    }
    Ok(SubscriptionData::from_expression(topic, expr))
}

/// The tag filter of a subscription: `None` accepts everything.
pub(crate) fn tag_filter(sub: Option<&SubscriptionData>) -> Option<Vec<i64>> {
    let sub = sub?;
    if sub.is_sub_all() {
        return None;
    }
    Some(sub.code_set.iter().map(|c| i64::from(*c)).collect())
}

/// The config of a topic a consumer reads: TOPIC_NOT_EXIST or NO_PERMISSION otherwise.
// The error is the finished response, returned straight to the client.
#[allow(clippy::result_large_err)]
pub(crate) fn readable_topic(
    b: &Broker,
    req: &RemotingCommand,
    topic: &str,
) -> Result<TopicConfig, RemotingCommand> {
    let Some(cfg) = b.topics.get(topic) else {
        return Err(error(
            b,
            req,
            code::TOPIC_NOT_EXIST,
            format!("topic[{topic}] not exist, apply first please!"),
        ));
    };
    if !perm::is_readable(cfg.perm) {
        return Err(error(
            b,
            req,
            code::NO_PERMISSION,
            format!("the topic[{topic}] reading is forbidden"),
        ));
    }
    Ok(cfg)
}

async fn pull(b: &Arc<Broker>, req: &RemotingCommand) -> RemotingCommand {
    let h: PullMessageRequestHeader = match header(b, req, code::SYSTEM_ERROR) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let cfg = match readable_topic(b, req, &h.topic) {
        Ok(cfg) => cfg,
        Err(resp) => return resp,
    };
    if h.queue_id < 0 || h.queue_id >= cfg.read_queue_nums {
        return error(
            b,
            req,
            code::SYSTEM_ERROR,
            format!(
                "queueId[{}] is illegal, topic:[{}] topicConfig.readQueueNums:[{}]",
                h.queue_id, h.topic, cfg.read_queue_nums
            ),
        );
    }
    let flags = h.pull_sys_flag();
    let sub = match h.subscription.as_deref() {
        Some(expr) if flags.has_subscription() => {
            match tag_subscription(b, req, &h.topic, h.expression_type.as_deref(), expr) {
                Ok(sub) => Some(sub),
                Err(resp) => return resp,
            }
        }
        _ => b.clients.subscription(&h.consumer_group, &h.topic),
    };
    let filter = tag_filter(sub.as_ref());
    if flags.has_commit_offset() && flags.has_suspend() && h.commit_offset >= 0 {
        b.offsets_commit(&h.consumer_group, &h.topic, h.queue_id, h.commit_offset);
    }
    let max = h.max_msg_nums.clamp(1, MAX_PULL_MESSAGES) as usize;
    let suspend = if flags.has_suspend() {
        Duration::from_millis(h.suspend_timeout_millis.max(0) as u64).min(MAX_SUSPEND)
    } else {
        Duration::ZERO
    };
    let deadline = Instant::now() + suspend;
    loop {
        // Register for arrivals before looking, so nothing slips between look and wait.
        let notify = b.store.arrivals().waiter(&h.topic, h.queue_id);
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let result = match b.get(
            &h.topic,
            h.queue_id,
            h.queue_offset,
            max,
            MAX_PULL_BYTES,
            filter.as_deref(),
        ) {
            Ok(r) => r,
            Err(e) => return store_error(b, req, e),
        };
        let (resp_code, next) = match result.status {
            GetStatus::Found => (code::SUCCESS, result.next_begin_offset),
            GetStatus::NoMatchedMessage => (code::PULL_RETRY_IMMEDIATELY, result.next_begin_offset),
            GetStatus::OffsetOverflowOne => (code::PULL_NOT_FOUND, h.queue_offset),
            GetStatus::NoMessageInQueue | GetStatus::NoMatchedLogicQueue if h.queue_offset == 0 => {
                (code::PULL_NOT_FOUND, 0)
            }
            GetStatus::NoMessageInQueue | GetStatus::NoMatchedLogicQueue => {
                (code::PULL_OFFSET_MOVED, result.min_offset)
            }
            GetStatus::OffsetOverflowBadly => (code::PULL_OFFSET_MOVED, result.max_offset),
            GetStatus::OffsetTooSmall => (code::PULL_OFFSET_MOVED, result.min_offset),
        };
        // A draining broker answers parked pulls now instead of holding its drain.
        let hold = resp_code == code::PULL_NOT_FOUND
            && Instant::now() < deadline
            && !b.draining.is_cancelled();
        if hold {
            tokio::select! {
                () = &mut notified => continue,
                () = tokio::time::sleep_until(deadline.into()) => continue,
                () = b.draining.cancelled() => continue,
            }
        }
        b.metrics.pulls.increment(1);
        let header = PullMessageResponseHeader {
            suggest_which_broker_id: 0,
            next_begin_offset: next,
            min_offset: result.min_offset,
            max_offset: result.max_offset,
            ..PullMessageResponseHeader::default()
        };
        let mut resp = reply(b, req, resp_code).with_header(&header);
        if resp_code == code::SUCCESS {
            resp.set_body(concat(&result.records));
        }
        return resp;
    }
}

pub(crate) fn concat(records: &[Bytes]) -> Bytes {
    if records.len() == 1 {
        return records[0].clone();
    }
    let mut body = BytesMut::with_capacity(records.iter().map(Bytes::len).sum());
    for r in records {
        body.extend_from_slice(r);
    }
    body.freeze()
}

// ----- offsets -----

fn query_offset(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: QueryConsumerOffsetRequestHeader = match header(b, req, code::SYSTEM_ERROR) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let offset = match b.offsets_query(&h.consumer_group, &h.topic, h.queue_id) {
        Some(o) => Some(o),
        // No stored offset: a queue that still starts at 0 is read from 0 (as a Java broker does
        // while offset 0 is still present); otherwise the client decides from consumeFromWhere.
        None if h.set_zero_if_not_found != Some(false)
            && b.min_offset(&h.topic, h.queue_id) <= 0 =>
        {
            Some(0)
        }
        None => None,
    };
    match offset {
        Some(offset) => {
            reply(b, req, code::SUCCESS).with_header(&QueryConsumerOffsetResponseHeader { offset })
        }
        None => error(
            b,
            req,
            code::QUERY_NOT_FOUND,
            "Not found, maybe this group consumer boot first",
        ),
    }
}

fn update_offset(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: UpdateConsumerOffsetRequestHeader = match header(b, req, code::SYSTEM_ERROR) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    b.offsets_commit(&h.consumer_group, &h.topic, h.queue_id, h.commit_offset);
    reply(b, req, code::SUCCESS)
}

enum OffsetKind {
    Max,
    Min,
}

fn queue_offset(b: &Broker, req: &RemotingCommand, kind: OffsetKind) -> RemotingCommand {
    let topic_qid = match kind {
        OffsetKind::Max => header::<GetMaxOffsetRequestHeader>(b, req, code::SYSTEM_ERROR)
            .map(|h| (h.topic, h.queue_id)),
        OffsetKind::Min => header::<GetMinOffsetRequestHeader>(b, req, code::SYSTEM_ERROR)
            .map(|h| (h.topic, h.queue_id)),
    };
    let (topic, qid) = match topic_qid {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let offset = match kind {
        OffsetKind::Max => b.max_offset(&topic, qid),
        OffsetKind::Min => b.min_offset(&topic, qid),
    };
    reply(b, req, code::SUCCESS).with_header(&OffsetResponseHeader { offset })
}

fn search_offset(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: SearchOffsetRequestHeader = match header(b, req, code::SYSTEM_ERROR) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    match b.search_offset(&h.topic, h.queue_id, h.timestamp) {
        Ok(offset) => reply(b, req, code::SUCCESS).with_header(&OffsetResponseHeader { offset }),
        Err(e) => store_error(b, req, e),
    }
}

// ----- clients -----

fn heartbeat(b: &Arc<Broker>, req: &RemotingCommand, conn: &Arc<Connection>) -> RemotingCommand {
    let hb = match HeartbeatData::parse(req.body()) {
        Ok(hb) => hb,
        Err(e) => return error(b, req, code::SYSTEM_ERROR, e.to_string()),
    };
    for c in &hb.consumer_data_set {
        if let Err(e) = b.topics.ensure(&retry_topic_v4(&c.group_name), 1) {
            tracing::warn!(group = %c.group_name, "cannot create the retry topic: {e}");
        }
    }
    let changed = b
        .clients
        .heartbeat(conn, &hb, super::clients::ClientMeta::of(req));
    b.notify_groups(&changed);
    reply(b, req, code::SUCCESS)
}

fn unregister(b: &Arc<Broker>, req: &RemotingCommand) -> RemotingCommand {
    let h: UnregisterClientRequestHeader = match header(b, req, code::SYSTEM_ERROR) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let group = h.consumer_group.as_deref();
    if b.clients
        .unregister(&h.client_id, h.producer_group.as_deref(), group)
    {
        if let Some(g) = group {
            b.notify_groups(&[g.to_owned()]);
        }
    }
    reply(b, req, code::SUCCESS)
}

fn consumer_list(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let h: GetConsumerListByGroupRequestHeader = match header(b, req, code::SYSTEM_ERROR) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let ids = b.clients.consumer_ids(&h.consumer_group);
    if ids.is_empty() {
        return error(
            b,
            req,
            code::SYSTEM_ERROR,
            format!("no consumer for this group, {}", h.consumer_group),
        );
    }
    reply(b, req, code::SUCCESS).with_body(
        ConsumerListBody {
            consumer_id_list: ids,
        }
        .to_json(),
    )
}

/// CONSUMER_SEND_MSG_BACK: the message at `offset` (physical) goes to `%RETRY%<group>` after the
/// delay of its level, or to `%DLQ%<group>` once it used up its reconsume times.
async fn send_back(b: &Arc<Broker>, req: &RemotingCommand) -> RemotingCommand {
    let h: ConsumerSendMsgBackRequestHeader = match header(b, req, code::SYSTEM_ERROR) {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let original = match b.lookup(h.offset) {
        Ok(m) => m,
        Err(e) => {
            return error(
                b,
                req,
                code::SYSTEM_ERROR,
                format!("look message by offset failed, {}: {e}", h.offset),
            );
        }
    };
    let max = h.max_reconsume_times.unwrap_or(DEFAULT_MAX_RECONSUME_TIMES);
    let reconsume = original.reconsume_times + 1;
    let origin_topic = original
        .properties
        .get(property_keys::RETRY_TOPIC)
        .map(str::to_owned)
        .unwrap_or_else(|| original.topic.clone());
    let mut props = original.properties.clone();
    props.insert(property_keys::RETRY_TOPIC, origin_topic.as_str());
    if props.get(property_keys::ORIGIN_MESSAGE_ID).is_none() {
        let id = h
            .origin_msg_id
            .clone()
            .unwrap_or_else(|| original.offset_msg_id());
        props.insert(property_keys::ORIGIN_MESSAGE_ID, id);
    }
    props.remove(property_keys::POP_CK);
    let (topic, delay_level) = if reconsume > max || h.delay_level < 0 {
        (dlq_topic(&h.group), 0)
    } else {
        let level = if h.delay_level == 0 {
            3 + original.reconsume_times
        } else {
            h.delay_level
        };
        (
            retry_topic_v4(&h.group),
            level.clamp(1, super::schedule::MAX_DELAY_LEVEL),
        )
    };
    if let Err(e) = b.topics.ensure(&topic, 1) {
        return error(b, req, code::SYSTEM_ERROR, e.to_string());
    }
    let msg = b.new_message(
        &topic,
        0,
        original.flag,
        original.sys_flag,
        original.born_timestamp,
        original.born_host,
        reconsume,
        original.body.clone(),
        props,
    );
    let put = if delay_level > 0 {
        b.put_delayed(msg, delay_level).await
    } else {
        b.put(vec![msg]).await
    };
    match put {
        Ok(_) => {
            if delay_level > 0 {
                b.metrics.retries.increment(1);
            } else {
                b.metrics.dlq.increment(1);
            }
            reply(b, req, code::SUCCESS)
        }
        Err(e) => store_error(b, req, e),
    }
}

impl Broker {
    pub(crate) fn broker_data(&self) -> BrokerData {
        BrokerData {
            cluster: self.config.cluster.clone(),
            broker_name: self.config.name.clone(),
            broker_addrs: std::iter::once((0, self.config.advertise.clone().unwrap_or_default()))
                .collect(),
            ..BrokerData::default()
        }
    }

    /// A new message for the store, stamped with this broker's host and cluster.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_message(
        &self,
        topic: &str,
        queue_id: i32,
        flag: i32,
        sys_flag: i32,
        born_timestamp: i64,
        born_host: SocketAddr,
        reconsume_times: i32,
        body: Bytes,
        mut properties: Properties,
    ) -> MessageExt {
        if properties.get(property_keys::CLUSTER).is_none() {
            properties.insert(property_keys::CLUSTER, self.config.cluster.as_str());
        }
        MessageExt {
            topic: topic.to_owned(),
            queue_id,
            flag,
            // transaction and IPv6 bits are recomputed by the store; keep compression bits
            sys_flag,
            born_timestamp,
            born_host,
            store_host: self.store_host,
            reconsume_times,
            body,
            properties,
            ..MessageExt::default()
        }
    }
}
