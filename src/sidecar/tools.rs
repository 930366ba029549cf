//! What admin tools and SDKs send beside producing and consuming
//! (`testdata/reference/tool-requests.md`), answered in the sidecar's one-virtual-broker view:
//!
//! ```text
//! 203 GET_CONSUMER_CONNECTION_LIST   local: the group's clients connected here (brokers only know
//!                                     the sidecar's merged client)
//! 206 GET_ALL_TOPIC_LIST             local: the topics this sidecar holds, and %RETRY% of its groups
//! 202 GET_TOPIC_STATS_INFO           fanned out to the topic's brokers, queues renamed to virtual
//! 208 GET_CONSUME_STATS              fanned out to the group's brokers, queues renamed to virtual
//! 12  QUERY_MESSAGE                  fanned out to the topic's brokers, records concatenated,
//!                                     queue ids renamed to virtual
//! 33  VIEW_MESSAGE_BY_ID             a virtual commit log offset this sidecar handed out ->
//!                                     (broker, real offset); the record comes back re-stamped
//! 307 GET_CONSUMER_RUNNING_INFO      to the local client named by clientId, its answer relayed
//! 309 CONSUME_MESSAGE_DIRECTLY       record fetched (33) from the broker in msgId, sent to the
//!                                     local client named by clientId, its answer relayed
//! ```
//!
//! Offset message ids in send results name the real broker (they are relayed unchanged), so a
//! tool reaches that broker directly, or through `--transparent`. Ids of messages delivered
//! through the Pull -> Pop translator name the sidecar; the last [`MAX_MINTED`] of them can be
//! viewed here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::join_all;
use rocketmesh_filters::codec::body::{ConsumeStats, MessageQueue, TopicList, TopicStatsTable};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::{
    ConsumeMessageDirectlyResultRequestHeader, GetConsumeStatsRequestHeader,
    GetConsumerConnectionListRequestHeader, GetConsumerRunningInfoRequestHeader,
    GetTopicStatsInfoRequestHeader, QueryMessageRequestHeader, QueryMessageResponseHeader,
    ViewMessageRequestHeader,
};
use rocketmesh_filters::codec::message::{decode_offset_msg_id, patch_records, MessageError};
use rocketmesh_filters::codec::pop::is_retry_topic;
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_filters::consume::MAX_MINTED;
use rocketmesh_filters::route::VirtualQueues;

use super::context::Context;
use super::error::SidecarError;
use super::groups::Groups;
use super::pull::PullBridge;
use crate::metrics::Gauge;
use crate::remoting::RequestError;

/// How long one broker may take to answer a fanned-out request.
const FAN_OUT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to answer 307 / 309 (Apache's broker: 10 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest merged QUERY_MESSAGE body; records past it are left out (frames stop at 16 MiB).
const MAX_QUERY_BODY: usize = 8 << 20;

/// A master broker of a topic: its name and address.
#[derive(Debug, Clone)]
struct Master {
    name: String,
    addr: String,
    connect_timeout: Option<Duration>,
}

/// The masters behind `topic` and its virtual queues (waiting for the route when not held).
async fn masters(
    ctx: &Context,
    topic: &str,
) -> Result<(Vec<Master>, Arc<super::router::QueueView>), SidecarError> {
    let route = ctx.router.route(topic, Gauge::TotalPending).await?;
    let view = ctx.router.view(&route);
    let masters = view
        .brokers
        .iter()
        .filter_map(|b| {
            let (e, connect_timeout) = super::router::broker_in(&route, &b.name)?;
            Some(Master {
                name: b.name.clone(),
                addr: e.address,
                connect_timeout,
            })
        })
        .collect();
    Ok((masters, view))
}

/// Sends a copy of `req` to each master; the answers in the same order (errors included).
async fn fan_out(
    ctx: &Context,
    masters: &[Master],
    req: &RemotingCommand,
) -> Vec<Result<RemotingCommand, SidecarError>> {
    join_all(masters.iter().map(|m| {
        let copy = req.clone();
        async move {
            ctx.forward(&m.addr, m.connect_timeout, copy, FAN_OUT_TIMEOUT)
                .await
        }
    }))
    .await
}

/// The virtual name of a broker's queue (`read` mapping first, as consumers see queues).
fn virtual_queue(ctx: &Context, queues: &VirtualQueues, mq: &MessageQueue) -> MessageQueue {
    match queues
        .virtual_read(&mq.broker_name, mq.queue_id)
        .or_else(|| queues.virtual_write(&mq.broker_name, mq.queue_id))
    {
        Some(q) => MessageQueue::new(mq.topic.clone(), ctx.router.virtual_broker(), q),
        None => mq.clone(),
    }
}

fn ok(ctx: &Context, req: &RemotingCommand, body: Vec<u8>) -> RemotingCommand {
    ctx.reply(req, response_code::SUCCESS, None).with_body(body)
}

/// 203: the group's clients connected to this sidecar.
pub fn consumer_connections(
    ctx: &Context,
    groups: &Groups,
    req: &RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    let h: GetConsumerConnectionListRequestHeader = req.decode_header()?;
    match groups.consumer_connection(&h.consumer_group) {
        Some(c) => Ok(ok(ctx, req, c.to_json())),
        None => Err(SidecarError::Refused {
            code: response_code::CONSUMER_NOT_ONLINE,
            remark: format!("the consumer group[{}] not online", h.consumer_group),
        }),
    }
}

/// 206: the topics this sidecar holds and the retry topics of its consumer groups. A sidecar
/// never holds the whole catalogue; ask the control plane's nameserver for that.
pub fn topic_list(ctx: &Context, groups: &Groups, req: &RemotingCommand) -> RemotingCommand {
    let table = ctx.router.xds().snapshot();
    let mut list = TopicList::default();
    list.topic_list.extend(
        table
            .topics
            .keys()
            .filter(|t| table.route(t).is_some())
            .cloned(),
    );
    list.topic_list.extend(
        groups
            .consumer_groups()
            .into_iter()
            .map(|g| format!("%RETRY%{g}")),
    );
    ok(ctx, req, list.to_json())
}

/// 202: each broker's queues of the topic, under their virtual names.
pub async fn topic_stats(
    ctx: &Context,
    req: &RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    let h: GetTopicStatsInfoRequestHeader = req.decode_header()?;
    let (masters, view) = masters(ctx, &h.topic).await?;
    let mut merged = TopicStatsTable::default();
    let mut answered = false;
    let mut last_error = None;
    for r in fan_out(ctx, &masters, req).await {
        match r {
            Ok(resp) if resp.code() == response_code::SUCCESS => {
                let part = TopicStatsTable::parse(resp.body())
                    .map_err(|e| SidecarError::bad_body("TopicStatsTable", e))?;
                answered = true;
                if let Some(t) = part.topic_put_tps {
                    *merged.topic_put_tps.get_or_insert(0.0) += t;
                }
                for (mq, o) in part.offset_table {
                    merged
                        .offset_table
                        .insert(virtual_queue(ctx, &view.queues, &mq), o);
                }
            }
            Ok(resp) => last_error = Some((resp.code(), resp.remark().unwrap_or("").to_owned())),
            Err(e) => last_error = Some((e.code(), e.to_string())),
        }
    }
    if !answered {
        let (code, remark) = last_error.unwrap_or((
            response_code::TOPIC_NOT_EXIST,
            format!("topic[{}] not exist", h.topic),
        ));
        return Err(SidecarError::Refused { code, remark });
    }
    Ok(ok(ctx, req, merged.to_json()))
}

/// 208: the group's progress at each broker, under virtual queue names.
pub async fn consume_stats(
    ctx: &Context,
    groups: &Groups,
    req: &RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    let h: GetConsumeStatsRequestHeader = req.decode_header()?;
    // Which topics: the one asked, else those the group subscribes here, else every topic held.
    let topics: BTreeSet<String> = match h.topic.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => std::iter::once(t.to_owned()).collect(),
        _ => {
            let subscribed = groups.subscribed_topics(&h.consumer_group);
            if subscribed.is_empty() {
                ctx.router.xds().snapshot().topics.keys().cloned().collect()
            } else {
                subscribed
            }
        }
    };
    // One request per broker address (a broker serving several of the topics answers for all
    // of them at once when no topic is named); views to rename queues per topic.
    let mut brokers: BTreeMap<String, Master> = BTreeMap::new();
    let mut views = BTreeMap::new();
    for topic in &topics {
        // Retry topics have no route of their own: their queues keep the real broker names.
        if is_retry_topic(topic) {
            continue;
        }
        let Ok((ms, view)) = masters(ctx, topic).await else {
            continue;
        };
        for m in ms {
            brokers.entry(m.addr.clone()).or_insert(m);
        }
        views.insert(topic.clone(), view);
    }
    let masters: Vec<Master> = brokers.into_values().collect();
    let mut merged = ConsumeStats::default();
    for r in fan_out(ctx, &masters, req).await {
        let Ok(resp) = r else { continue };
        if resp.code() != response_code::SUCCESS {
            continue;
        }
        let part = ConsumeStats::parse(resp.body())
            .map_err(|e| SidecarError::bad_body("ConsumeStats", e))?;
        merged.consume_tps += part.consume_tps;
        for (mq, o) in part.offset_table {
            let key = match views.get(&mq.topic) {
                Some(v) => virtual_queue(ctx, &v.queues, &mq),
                None => mq,
            };
            merged.offset_table.insert(key, o);
        }
    }
    Ok(ok(ctx, req, merged.to_json()))
}

/// Re-stamps records from `broker` for a client of the sidecar: queue ids to virtual ones, and,
/// for a message this sidecar minted an id for, its store host and virtual commit log offset.
fn restamp(
    queues: Option<&VirtualQueues>,
    broker: &str,
    body: &mut BytesMut,
    minted: Option<(SocketAddr, i64)>,
) -> Result<(), SidecarError> {
    patch_records(body, |rec| -> Result<(), MessageError> {
        if let Some(q) = queues.and_then(|v| v.virtual_read(broker, rec.queue_id())) {
            rec.set_queue_id(q);
        }
        if let Some((host, offset)) = minted {
            rec.set_commit_log_offset(offset);
            rec.set_store_host(host);
        }
        Ok(())
    })
    .map_err(|e| SidecarError::bad_body("message records", e))?;
    Ok(())
}

/// 12: every broker of the topic asked, the records concatenated (broker order).
pub async fn query_message(
    ctx: &Context,
    req: &RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    let h: QueryMessageRequestHeader = req.decode_header()?;
    let (masters, view) = masters(ctx, &h.topic).await?;
    let mut body = BytesMut::new();
    let mut header = QueryMessageResponseHeader::default();
    for (m, r) in masters.iter().zip(fan_out(ctx, &masters, req).await) {
        let Ok(resp) = r else { continue };
        if let Ok(rh) = resp.decode_header::<QueryMessageResponseHeader>() {
            header.index_last_update_timestamp = header
                .index_last_update_timestamp
                .max(rh.index_last_update_timestamp);
            header.index_last_update_phyoffset = header
                .index_last_update_phyoffset
                .max(rh.index_last_update_phyoffset);
        }
        if resp.code() != response_code::SUCCESS || body.len() >= MAX_QUERY_BODY {
            continue;
        }
        let mut part = BytesMut::from(&resp.body()[..]);
        restamp(Some(&view.queues), &m.name, &mut part, None)?;
        body.extend_from_slice(&part);
    }
    let resp = if body.is_empty() {
        ctx.reply(
            req,
            response_code::QUERY_NOT_FOUND,
            Some("can not find message, maybe time range not correct".into()),
        )
    } else {
        ok(ctx, req, body.to_vec())
    };
    Ok(resp.with_header(&header))
}

/// Where the message behind an offset this sidecar handed out lives: (broker, its address,
/// real offset, virtual queue view).
async fn locate_minted(
    ctx: &Context,
    pulls: &PullBridge,
    offset: i64,
) -> Result<(Master, i64, Arc<super::router::QueueView>), SidecarError> {
    let not_found = || {
        SidecarError::Refused {
        code: response_code::SYSTEM_ERROR,
        remark: format!(
            "can not find message by the offset, {offset} (sidecar {} remembers the last {MAX_MINTED} \
             messages it delivered; ids in send results name the broker)",
            ctx.cfg.advertise
        ),
    }
    };
    let minted = pulls.minted(offset).ok_or_else(not_found)?;
    let (masters, view) = masters(ctx, &minted.topic).await?;
    let m = masters
        .into_iter()
        .find(|m| *m.name == *minted.broker)
        .ok_or_else(not_found)?;
    Ok((m, minted.real_commit_log_offset, view))
}

/// VIEW_MESSAGE_BY_ID at `master` for `real` offset; the record's body (as the broker sent it).
async fn view_at(
    ctx: &Context,
    master: &Master,
    real: i64,
    like: &RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    let h = ViewMessageRequestHeader {
        offset: real,
        topic: None,
    };
    let req = RemotingCommand::request_with_header(rc::VIEW_MESSAGE_BY_ID, &h)
        .with_opaque(like.opaque())
        .with_language(like.language())
        .with_serialize_type(like.serialize_type());
    ctx.forward(&master.addr, master.connect_timeout, req, FAN_OUT_TIMEOUT)
        .await
}

/// 33: a message this sidecar delivered, by its virtual commit log offset.
pub async fn view_message(
    ctx: &Context,
    pulls: &PullBridge,
    req: &RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    let h: ViewMessageRequestHeader = req.decode_header()?;
    let (master, real, view) = locate_minted(ctx, pulls, h.offset).await?;
    let mut resp = view_at(ctx, &master, real, req).await?;
    if resp.code() == response_code::SUCCESS {
        let mut body = BytesMut::from(&resp.body()[..]);
        let host = ctx.cfg.advertise.parse().ok();
        restamp(
            Some(&view.queues),
            &master.name,
            &mut body,
            host.map(|a| (a, h.offset)),
        )?;
        resp.set_body(body.freeze());
    }
    Ok(resp)
}

/// 307: asks the local client named by `clientId`, as a broker would.
pub async fn running_info(
    groups: &Groups,
    req: &RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    let h: GetConsumerRunningInfoRequestHeader = req.decode_header()?;
    call_client(groups, &h.consumer_group, &h.client_id, req.clone()).await
}

/// 309: the message named by `msgId` sent to the local client named by `clientId`.
pub async fn consume_directly(
    ctx: &Context,
    groups: &Groups,
    pulls: &PullBridge,
    req: &RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    let h: ConsumeMessageDirectlyResultRequestHeader = req.decode_header()?;
    let client = h.client_id.clone().unwrap_or_default();
    let msg_id = h.msg_id.clone().unwrap_or_default();
    let (addr, offset) = decode_offset_msg_id(&msg_id).map_err(|e| SidecarError::Refused {
        code: response_code::SYSTEM_ERROR,
        remark: format!("msgId {msg_id:?}: {e}"),
    })?;
    let own = ctx.cfg.advertise.parse::<SocketAddr>().ok();
    // An id this sidecar minted, or one naming a broker (a send result's id).
    let (master, real, view, minted) = if Some(addr) == own {
        let (m, real, view) = locate_minted(ctx, pulls, offset).await?;
        (m, real, Some(view), own.map(|a| (a, offset)))
    } else {
        let m = Master {
            name: String::new(),
            addr: addr.to_string(),
            connect_timeout: None,
        };
        (m, offset, None, None)
    };
    let found = view_at(ctx, &master, real, req).await?;
    if found.code() != response_code::SUCCESS {
        return Ok(found);
    }
    let mut body = BytesMut::from(&found.body()[..]);
    restamp(
        view.as_ref().map(|v| &v.queues),
        &master.name,
        &mut body,
        minted,
    )?;
    let mut fwd = req.clone();
    fwd.ext_mut().put("brokerName", ctx.router.virtual_broker());
    fwd.set_body(body.freeze());
    call_client(groups, &h.consumer_group, &client, fwd).await
}

/// Sends `cmd` to the consumer `client` of `group` connected here and relays its answer.
async fn call_client(
    groups: &Groups,
    group: &str,
    client: &str,
    cmd: RemotingCommand,
) -> Result<RemotingCommand, SidecarError> {
    let opaque = cmd.opaque();
    let conn = groups
        .consumer(group, client)
        .ok_or_else(|| SidecarError::Refused {
            code: response_code::SYSTEM_ERROR,
            remark: format!("The Consumer {group} {client} not online"),
        })?;
    let mut out = cmd;
    out.drop_raw_header();
    match conn.request(out, CLIENT_TIMEOUT).await {
        Ok(mut resp) => {
            resp.set_opaque(opaque);
            Ok(resp)
        }
        Err(RequestError::Timeout(t)) => Err(SidecarError::Refused {
            code: response_code::CONSUME_MSG_TIMEOUT,
            remark: format!(
                "consumer {client} of {group} did not answer within {} s",
                t.as_secs()
            ),
        }),
        Err(e) => Err(SidecarError::Refused {
            code: response_code::SYSTEM_ERROR,
            remark: format!("consumer {client} of {group}: {e}"),
        }),
    }
}
