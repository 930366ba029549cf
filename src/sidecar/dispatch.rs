//! The downstream side: one Remoting handler for nameserver and broker requests alike. It only
//! dispatches; each request family lives with the component that owns its state.
//!
//! ```text
//! 105 GET_ROUTEINFO_BY_TOPIC        answered here: one virtual broker over the topic's writable /
//!                                   readable endpoints, every address = the sidecar's
//! 10/310/320 SEND                   send.rs: virtual write queue -> (writable broker, queue)
//! 200050 POP, 200051 ACK, 200053, 200151 BATCH_ACK   pop.rs
//! 34/35, 38                         clients.rs (the client table, groups.rs)
//! 11 PULL, 14/15 offsets, 29/30/31, 36 SEND_BACK   pull/ (the Pull -> Pop translator)
//! 37 END_TRANSACTION                txn.rs: the broker that stored the half message
//! 400/401 QUERY_ASSIGNMENT, mode    assignment.rs: every virtual read queue, POP
//! 12, 33, 202, 203, 206, 208, 307, 309   tools.rs: admin / tool requests in the virtual view
//! anything else                     REQUEST_CODE_NOT_SUPPORTED, remark names the code
//! ```
//!
//! Requests for a topic not yet known wait on the xDS client (one subscription per topic, bounded
//! by the route timeout): Missing -> TOPIC_NOT_EXIST at once, Timeout -> SYSTEM_ERROR saying what
//! timed out.

use std::sync::Arc;

use rocketmesh_filters::codec::body::{BrokerData, ClusterInfo, RouteJsonStyle};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::GetRouteInfoRequestHeader;
use rocketmesh_filters::codec::{CodecError, RemotingCommand};
use rocketmesh_filters::route::topic_route_data;
use rocketmesh_xds::client::XdsClient;

use super::access::Access;
use super::assignment;
use super::clients;
use super::context::Context;
use super::error::SidecarError;
use super::groups::{Groups, PullMode};
use super::locks::Locks;
use super::pop;
use super::pull::{direct, PullBridge};
use super::send;
use super::tools;
use super::transparent::Transparent;
use super::txn::Transactions;
use crate::metrics::{Counter, Gauge};
use crate::remoting::{Admission, ConnTimeout, Connection, Handler, RequestSlot};
use tokio::net::TcpStream;

/// The sidecar's data path: the shared context and the components that own state.
#[derive(Debug)]
pub struct SidecarCore {
    pub ctx: Arc<Context>,
    pub groups: Arc<Groups>,
    pub txns: Arc<Transactions>,
    pub pulls: Arc<PullBridge>,
    pub transparent: Arc<Transparent>,
    pub locks: Arc<Locks>,
    /// Client signature verification and topic authorization.
    pub access: Arc<Access>,
}

impl SidecarCore {
    /// The xDS client (routes, `config_dump`).
    pub fn xds(&self) -> &XdsClient {
        self.ctx.router.xds()
    }

    /// Dispatches one request; None for oneway requests.
    pub async fn dispatch(
        &self,
        req: RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        let ctx = &*self.ctx;
        ctx.stats.inc(Counter::Request);
        ctx.stats.inc(Counter::RequestDecodingSuccess);
        let _active = ctx.stats.track(Gauge::RequestActive);
        let oneway = req.is_oneway();
        let code = req.code();
        // What an error answer needs of the request, so forwarded requests can move on without
        // a copy of their header fields.
        let stub = RemotingCommand::request(code)
            .with_opaque(req.opaque())
            .with_language(req.language())
            .with_serialize_type(req.serialize_type());
        // Before anything else, on the request as the application sent it.
        if let Some(denied) = self.access.check(ctx, &req, conn) {
            ctx.stats.inc(Counter::ResponseError);
            return (!oneway).then_some(denied);
        }
        let groups = &*self.groups;
        let result = match code {
            // A connection meant for a real broker (transparent mode): relayed unchanged.
            _ if conn.label().is_some() => {
                let label = conn.label().map_or("", |l| &**l);
                let dialled = conn.original_dst().unwrap_or_else(|| conn.local());
                self.transparent.forward(ctx, label, dialled, req).await
            }
            rc::GET_ROUTEINFO_BY_TOPIC => get_route(ctx, &req).await,
            rc::GET_BROKER_CLUSTER_INFO => Ok(cluster_info(ctx, &req)),
            rc::SEND_MESSAGE | rc::SEND_MESSAGE_V2 | rc::SEND_BATCH_MESSAGE => {
                send::send(ctx, &self.txns, req).await
            }
            rc::POP_MESSAGE => pop::pop(ctx, req).await,
            rc::ACK_MESSAGE | rc::CHANGE_MESSAGE_INVISIBLETIME => pop::ack_like(ctx, req).await,
            rc::BATCH_ACK_MESSAGE => pop::batch_ack(ctx, req).await,
            rc::END_TRANSACTION => self.txns.end_transaction(ctx, req).await,
            rc::QUERY_ASSIGNMENT => assignment::query(ctx, &req).await,
            rc::SET_MESSAGE_REQUEST_MODE => assignment::set_mode(ctx, &req),
            rc::HEART_BEAT => clients::heartbeat(ctx, groups, &req, conn),
            rc::LOCK_BATCH_MQ => self.locks.lock(ctx, groups, &req, conn.id()).await,
            rc::UNLOCK_BATCH_MQ => self.locks.unlock(ctx, &req, conn.id()).await,
            rc::UNREGISTER_CLIENT => clients::unregister(ctx, groups, &req),
            rc::GET_CONSUMER_LIST_BY_GROUP => clients::consumer_list(ctx, groups, &req, conn),
            rc::PULL_MESSAGE
            | rc::UPDATE_CONSUMER_OFFSET
            | rc::QUERY_CONSUMER_OFFSET
            | rc::GET_MAX_OFFSET
            | rc::GET_MIN_OFFSET
            | rc::SEARCH_OFFSET_BY_TIMESTAMP
                if self.relays_directly(&req, conn) =>
            {
                let orderly = self
                    .groups
                    .is_orderly(req.ext().get("consumerGroup").unwrap_or_default())
                    .then_some(direct::Orderly {
                        locks: &self.locks,
                        conn: conn.id(),
                    });
                direct::relay(ctx, req, orderly).await
            }
            rc::PULL_MESSAGE => self.pulls.pull(&req, conn).await,
            rc::UPDATE_CONSUMER_OFFSET => self.pulls.update_offset(&req, conn),
            rc::QUERY_CONSUMER_OFFSET => self.pulls.query_offset(&req, conn),
            rc::GET_MAX_OFFSET | rc::GET_MIN_OFFSET | rc::SEARCH_OFFSET_BY_TIMESTAMP => {
                self.pulls.offset_probe(&req, conn)
            }
            rc::CONSUMER_SEND_MSG_BACK => self.pulls.send_back(&req, conn).await,
            rc::GET_CONSUMER_CONNECTION_LIST => tools::consumer_connections(ctx, groups, &req),
            rc::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => Ok(tools::topic_list(ctx, groups, &req)),
            rc::GET_TOPIC_STATS_INFO => tools::topic_stats(ctx, &req).await,
            rc::GET_CONSUME_STATS => tools::consume_stats(ctx, groups, &req).await,
            rc::QUERY_MESSAGE => tools::query_message(ctx, &req).await,
            rc::VIEW_MESSAGE_BY_ID => tools::view_message(ctx, &self.pulls, &req).await,
            rc::GET_CONSUMER_RUNNING_INFO => tools::running_info(groups, &req).await,
            rc::CONSUME_MESSAGE_DIRECTLY => {
                tools::consume_directly(ctx, groups, &self.pulls, &req).await
            }
            _ => Ok(req.not_supported_response(ctx.cfg.response_encoding)),
        };
        let resp = match result {
            Ok(r) => {
                ctx.stats.inc(Counter::ResponseSuccess);
                r
            }
            Err(e) => {
                ctx.stats.inc(Counter::ResponseError);
                ctx.reject(&stub, &e)
            }
        };
        (!oneway).then_some(resp)
    }
}

impl SidecarCore {
    /// Whether a pull or offset request goes to the real queue (broadcasting and pull
    /// consumers) rather than through the Pull -> Pop translator. Requests naming a group
    /// follow the group's mode ([`pull_mode`]); the group-less ones (max / min / search
    /// offsets) go direct when the translator holds nothing for that queue on this connection
    /// and a direct consumer lives on it.
    fn relays_directly(&self, req: &RemotingCommand, conn: &Connection) -> bool {
        let ext = req.ext();
        if let Some(group) = ext.get("consumerGroup") {
            let suspend = req.code() == rc::PULL_MESSAGE
                && ext
                    .get("sysFlag")
                    .and_then(|f| f.trim().parse::<i32>().ok())
                    .is_some_and(|f| f & direct::FLAG_SUSPEND != 0);
            // Offset requests of an unknown group keep today's answer (the translator's).
            let suspend = suspend || req.code() != rc::PULL_MESSAGE;
            return matches!(self.groups.pull_mode(group, suspend), PullMode::Direct(_));
        }
        let (Some(topic), Some(queue)) = (
            ext.get("topic"),
            ext.get("queueId")
                .and_then(|q| q.trim().parse::<i32>().ok()),
        ) else {
            return false;
        };
        !self.pulls.knows(conn.id(), topic, queue) && self.groups.has_direct_consumer(conn.id())
    }
}

/// GET_BROKER_CLUSTER_INFO (106): what route answers present, one virtual broker at the
/// sidecar's advertised address, in the cluster of the brokers behind it (the first held route
/// names it; `DefaultCluster` before any).
fn cluster_info(ctx: &Context, req: &RemotingCommand) -> RemotingCommand {
    let table = ctx.router.xds().snapshot();
    let mut clusters: Vec<&str> = table
        .topics
        .keys()
        .filter_map(|t| table.route(t))
        .flat_map(|r| r.clusters.values())
        .flat_map(|c| c.endpoints.iter().map(|e| e.cluster_name.as_str()))
        .filter(|c| !c.is_empty())
        .collect();
    clusters.sort_unstable();
    let cluster = clusters
        .first()
        .copied()
        .unwrap_or("DefaultCluster")
        .to_owned();
    let name = ctx.cfg.virtual_broker.clone();
    let mut info = ClusterInfo::default();
    info.broker_addr_table.insert(
        name.clone(),
        BrokerData {
            cluster: cluster.clone(),
            broker_name: name.clone(),
            broker_addrs: std::iter::once((0, ctx.cfg.advertise.clone())).collect(),
            ..BrokerData::default()
        },
    );
    info.cluster_addr_table
        .insert(cluster, std::iter::once(name).collect());
    let standard = RouteJsonStyle::for_request(req.version(), false).is_standard();
    ctx.reply(req, response_code::SUCCESS, None)
        .with_body(info.to_json(standard))
}

/// GET_ROUTEINFO_BY_TOPIC (105): the topic's queue view as one virtual broker at our address.
async fn get_route(ctx: &Context, req: &RemotingCommand) -> Result<RemotingCommand, SidecarError> {
    ctx.stats.inc(Counter::GetTopicRoute);
    let _a = ctx.stats.track(Gauge::GetTopicRouteActive);
    let h: GetRouteInfoRequestHeader = req.decode_header()?;
    let route = ctx
        .router
        .route(&h.topic, Gauge::GetTopicRoutePending)
        .await?;
    let view = ctx.router.view(&route);
    let data = topic_route_data(
        &view.brokers,
        &view.queues,
        &ctx.cfg.virtual_broker,
        &ctx.cfg.advertise,
    );
    let style =
        RouteJsonStyle::for_request(req.version(), h.accept_standard_json_only.unwrap_or(false));
    Ok(ctx
        .reply(req, response_code::SUCCESS, None)
        .with_body(data.encode(style)))
}

impl Handler for SidecarCore {
    async fn handle(
        self: &Arc<Self>,
        req: RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        self.dispatch(req, conn).await
    }

    fn admit(self: &Arc<Self>, stream: TcpStream, peer: std::net::SocketAddr) -> Admission {
        if !self.transparent.enabled() {
            return Admission::Serve {
                stream,
                original_dst: None,
                label: None,
            };
        }
        self.transparent.admit(&self.ctx, stream, peer)
    }

    fn try_handle_inline(
        self: &Arc<Self>,
        request: RemotingCommand,
        conn: &Arc<Connection>,
        slot: RequestSlot,
    ) -> Result<(), (RemotingCommand, RequestSlot)> {
        if conn.label().is_some() {
            // An intercepted broker connection: relayed unchanged, on a task.
            return Err((request, slot));
        }
        if self.access.decide(&request, conn.peer()).is_err() {
            // Refused: the dispatch path answers (and counts) it.
            return Err((request, slot));
        }
        match request.code() {
            rc::SEND_MESSAGE | rc::SEND_MESSAGE_V2 | rc::SEND_BATCH_MESSAGE => {
                send::try_send_inline(&self.ctx, &self.txns, request, conn, slot)
            }
            _ => Err((request, slot)),
        }
    }

    fn on_decode_error(&self, _conn: &Arc<Connection>, _error: &CodecError) {
        // A frame that came in and could not be read is still a request, as Envoy counts it.
        self.ctx.stats.inc(Counter::Request);
        self.ctx.stats.inc(Counter::RequestDecodingError);
    }

    fn on_timeout(&self, _conn: &Arc<Connection>, why: ConnTimeout) {
        self.ctx.stats.inc(match why {
            ConnTimeout::PartialFrame => Counter::DownstreamFrameTimeout,
            ConnTimeout::Idle => Counter::DownstreamIdleTimeout,
        });
    }

    fn on_open(&self, _conn: &Arc<Connection>) {
        self.ctx.stats.gauge_add(Gauge::DownstreamConnections, 1);
    }

    fn on_close(&self, conn: &Arc<Connection>) {
        self.ctx.stats.gauge_add(Gauge::DownstreamConnections, -1);
        self.groups.connection_closed(conn.id());
        // Nothing is acked that was not committed: the broker redelivers the rest.
        self.pulls.connection_closed(conn.id());
        // An orderly consumer's queues go to the others at their next re-lock.
        self.locks.release(self.ctx.clone(), conn.id());
    }
}
