//! The downstream side: one Remoting handler for nameserver and broker requests alike.
//!
//! ```text
//! 105 GET_ROUTEINFO_BY_TOPIC        answered here: one virtual broker over the topic's writable /
//!                                   readable endpoints, every address = the sidecar's
//! 10/310/320 SEND                   virtual write queue -> (writable broker, queue) -> upstream
//! 200050 POP                        virtual read queue (or any readable broker for -1) -> upstream;
//!                                   records get a POP_CK handle naming that real broker
//! 200051 ACK, 200053 CHANGE_INVIS.  broker named in the pop handle (extraInfo) -> upstream
//! 200151 BATCH_ACK                  broker named in the body -> upstream
//! 34/35                             answered from the client table (groups.rs)
//! 38 GET_CONSUMER_LIST_BY_GROUP     "just you": the asking client only (see pull.rs)
//! 11 PULL, 14/15 offsets, 29/30/31, 36 SEND_BACK   the Pull -> Pop translator (pull.rs)
//! 37 END_TRANSACTION                broker encoded in the message's offsetMsgId (if pooled)
//! anything else                     REQUEST_CODE_NOT_SUPPORTED, remark names the code
//! ```
//!
//! Requests for a topic not yet known wait on the xDS client (one subscription per topic, bounded
//! by the route timeout): Missing -> TOPIC_NOT_EXIST at once, Timeout -> SYSTEM_ERROR saying what
//! timed out. A send whose topic is missing but names a `defaultTopic` (a legacy producer's
//! auto-create) goes to a writable broker of the default topic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rocketmesh_filters::codec::body::{
    BatchAckMessageRequestBody, ConsumerListBody, HeartbeatData, RouteJsonStyle,
};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, EndTransactionRequestHeader,
    GetConsumerListByGroupRequestHeader, GetRouteInfoRequestHeader, PopMessageRequestHeader,
    PopMessageResponseHeader, UnregisterClientRequestHeader,
};
use rocketmesh_filters::codec::message::{
    decode_offset_msg_id, encode_record, property_keys, RecordIter,
};
use rocketmesh_filters::codec::pop::{
    is_retry_topic, parse_pop_retry_topic, PopHandle, PopResponseInfo,
};
use rocketmesh_filters::codec::{RemotingCommand, ResponseEncoding};
use rocketmesh_filters::consume::TranslatorConfig;
use rocketmesh_filters::route::{topic_route_data, BrokerView, VirtualQueues};
use rocketmesh_xds::client::{RouteError, XdsClient};
use rocketmesh_xds::model::{Endpoint, RouteRequest, TopicRoute};

use super::groups::Groups;
use super::pull::PullBridge;
use super::upstream::{UpstreamError, Upstreams};
use crate::metrics::{Counter, Gauge, Stats};
use crate::remoting::{ClientError, Completion, Connection, Handler, RequestSlot};

/// Settings the handler needs.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// Address written into route answers (`host:port` of the main listener).
    pub advertise: String,
    /// Name of the virtual broker in route answers.
    pub virtual_broker: String,
    /// Upstream request timeout (pops add their poll time).
    pub request_timeout: Duration,
    pub response_encoding: ResponseEncoding,
}

/// Shared state of a sidecar's data path.
pub struct SidecarCore {
    pub cfg: HandlerConfig,
    pub xds: XdsClient,
    pub upstreams: Arc<Upstreams>,
    pub groups: Arc<Groups>,
    pub stats: Arc<Stats>,
    /// The Pull -> Pop translator.
    pub pulls: PullBridge,
    /// Half messages of transactional sends: message id -> broker address (END_TRANSACTION).
    pub txn: TxnBrokers,
    /// Queue views of recent routes, reused while the route snapshot is the same.
    views: parking_lot::Mutex<std::collections::HashMap<String, CachedView>>,
    rr: AtomicUsize,
}

impl std::fmt::Debug for SidecarCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarCore")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Remembers which broker holds each half message (bounded; oldest forgotten first).
#[derive(Debug, Default)]
pub struct TxnBrokers {
    inner: parking_lot::Mutex<(
        std::collections::HashMap<String, String>,
        std::collections::VecDeque<String>,
    )>,
}

/// Most half messages remembered (a check comes within the broker's check interval).
const MAX_TXN: usize = 65_536;

impl TxnBrokers {
    pub fn remember(&self, msg_id: &str, addr: &str) {
        let mut g = self.inner.lock();
        let (map, order) = &mut *g;
        if map.insert(msg_id.to_owned(), addr.to_owned()).is_none() {
            order.push_back(msg_id.to_owned());
            while order.len() > MAX_TXN {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }

    pub fn lookup(&self, msg_id: &str) -> Option<String> {
        let g = self.inner.lock();
        g.0.get(msg_id).cloned()
    }
}

/// Most queue views cached (one per topic in use; cleared when full).
const MAX_CACHED_VIEWS: usize = 4096;

struct CachedView {
    route: Arc<TopicRoute>,
    view: Arc<(Vec<BrokerView>, VirtualQueues)>,
}

/// A failed request: the response code and remark to answer with.
#[derive(Debug)]
pub(crate) struct Reject(pub(crate) i32, pub(crate) String);

impl Reject {
    pub(crate) fn system(msg: impl Into<String>) -> Self {
        Reject(response_code::SYSTEM_ERROR, msg.into())
    }
}

impl From<rocketmesh_filters::codec::ext::HeaderError> for Reject {
    fn from(e: rocketmesh_filters::codec::ext::HeaderError) -> Self {
        Reject::system(e.to_string())
    }
}

pub(crate) fn route_reject(e: RouteError) -> Reject {
    match e {
        RouteError::Missing(topic) => Reject(
            response_code::TOPIC_NOT_EXIST,
            format!("No topic route info in name server for the topic: {topic}"),
        ),
        other => Reject::system(other.to_string()),
    }
}

fn upstream_reject(e: UpstreamError) -> Reject {
    Reject::system(e.to_string())
}

/// What a code sends where: a writable subset for sends, readable for pops.
const SEND_PROBE: i32 = rc::SEND_MESSAGE_V2;
const POP_PROBE: i32 = rc::POP_MESSAGE;

/// The queue view of a route: brokers (masters) with perms from the route's own subsets.
pub fn queue_view(route: &TopicRoute) -> (Vec<BrokerView>, VirtualQueues) {
    let masters = |code: i32| -> Vec<&Endpoint> {
        route
            .select(&RouteRequest {
                code,
                ..Default::default()
            })
            .map(|s| s.endpoints.into_iter().filter(|e| e.is_master()).collect())
            .unwrap_or_default()
    };
    let writable = masters(SEND_PROBE);
    let readable = masters(POP_PROBE);
    let mut views: Vec<BrokerView> = Vec::new();
    for e in writable.iter().chain(readable.iter()) {
        if views.iter().any(|v| v.name == e.broker_name) {
            continue;
        }
        let mut perm = 0;
        if writable.iter().any(|w| w.broker_name == e.broker_name) {
            perm |= rocketmesh_filters::codec::body::perm::PERM_WRITE;
        }
        if readable.iter().any(|r| r.broker_name == e.broker_name) {
            perm |= rocketmesh_filters::codec::body::perm::PERM_READ;
        }
        views.push(BrokerView {
            name: e.broker_name.clone(),
            cluster: e.cluster_name.clone(),
            perm,
            read_queues: e.read_queue_num,
            write_queues: e.write_queue_num,
        });
    }
    let vq = VirtualQueues::new(&views);
    (views, vq)
}

impl SidecarCore {
    pub fn new(
        cfg: HandlerConfig,
        xds: XdsClient,
        upstreams: Arc<Upstreams>,
        groups: Arc<Groups>,
        stats: Arc<Stats>,
        translator: TranslatorConfig,
    ) -> Self {
        SidecarCore {
            cfg,
            xds,
            upstreams,
            groups,
            stats,
            pulls: PullBridge::new(translator),
            views: parking_lot::Mutex::new(std::collections::HashMap::new()),
            txn: TxnBrokers::default(),
            rr: AtomicUsize::new(0),
        }
    }

    /// The queue view of `route`, computed once per route snapshot (a new xDS push makes a new
    /// `TopicRoute` and so a new view).
    pub(super) fn queue_view_cached(
        &self,
        route: &Arc<TopicRoute>,
    ) -> Arc<(Vec<BrokerView>, VirtualQueues)> {
        let mut views = self.views.lock();
        if let Some(c) = views.get(&route.topic) {
            if Arc::ptr_eq(&c.route, route) {
                return c.view.clone();
            }
        }
        let view = Arc::new(queue_view(route));
        if views.len() >= MAX_CACHED_VIEWS {
            views.clear();
        }
        views.insert(
            route.topic.clone(),
            CachedView {
                route: route.clone(),
                view: view.clone(),
            },
        );
        view
    }

    /// Requests being handled now (graceful drain waits for 0): the `request_active` gauge.
    pub fn in_flight(&self) -> usize {
        self.stats
            .level(Gauge::RequestActive)
            .try_into()
            .unwrap_or(0)
    }

    pub(super) fn reply(
        &self,
        req: &RemotingCommand,
        code: i32,
        remark: Option<String>,
    ) -> RemotingCommand {
        let mut r = req.response_to(code, self.cfg.response_encoding);
        if let Some(m) = remark {
            r = r.with_remark(m);
        }
        r
    }

    /// The topic's route, counting parked requests while it is being fetched.
    pub(super) async fn route(
        &self,
        topic: &str,
        pending: Gauge,
    ) -> Result<Arc<TopicRoute>, RouteError> {
        if let Some(r) = self.xds.snapshot().route(topic) {
            return Ok(r.clone());
        }
        let _p = self.stats.track(pending);
        let _t = self.stats.track(Gauge::TotalPending);
        self.xds.route(topic).await
    }

    fn next(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }

    async fn forward(
        &self,
        addr: &str,
        connect_timeout: Option<Duration>,
        req: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, UpstreamError> {
        let (code, opaque) = (req.code(), req.opaque());
        if req.is_oneway() {
            // No answer comes back; the caller discards what we return.
            self.upstreams.send_oneway(addr, req).await?;
            return Ok(RemotingCommand::request(code));
        }
        let start = Instant::now();
        let r = self
            .upstreams
            .invoke(addr, req, timeout, connect_timeout)
            .await;
        self.stats.upstream_rq_time(code, start.elapsed());
        match r {
            Ok(mut resp) => {
                self.stats.inc(Counter::Response);
                self.stats.inc(Counter::ResponseDecodingSuccess);
                resp.set_opaque(opaque);
                Ok(resp)
            }
            Err(e) => Err(e),
        }
    }

    // ----- 105 ---------------------------------------------------------------------------

    async fn get_route(&self, req: &RemotingCommand) -> Result<RemotingCommand, Reject> {
        self.stats.inc(Counter::GetTopicRoute);
        let _a = self.stats.track(Gauge::GetTopicRouteActive);
        let h: GetRouteInfoRequestHeader = req.decode_header()?;
        let route = self
            .route(&h.topic, Gauge::GetTopicRoutePending)
            .await
            .map_err(route_reject)?;
        let view = self.queue_view_cached(&route);
        let (views, vq) = (&view.0, &view.1);
        let data = topic_route_data(views, vq, &self.cfg.virtual_broker, &self.cfg.advertise);
        let style = RouteJsonStyle::for_request(
            req.version(),
            h.accept_standard_json_only.unwrap_or(false),
        );
        Ok(self
            .reply(req, response_code::SUCCESS, None)
            .with_body(data.encode(style)))
    }

    // ----- sends -------------------------------------------------------------------------

    async fn send(&self, req: RemotingCommand) -> Result<RemotingCommand, Reject> {
        let code = req.code();
        let (counter, active) = send_stats(code);
        self.stats.inc(counter);
        let _a = self.stats.track(active);
        let h = SendHeader::read(&req)?;
        let (topic, default_topic) = (h.topic.to_owned(), h.default_topic.to_owned());
        let (queue, k_queue, transactional) = (h.queue, h.k_queue, h.transactional);

        let route = match self.route(&topic, Gauge::SendMessagePending).await {
            Ok(r) => r,
            Err(RouteError::Missing(_)) if !default_topic.is_empty() && default_topic != topic => {
                // A legacy producer auto-creating the topic: it built its queues from the
                // default topic's route; the broker creates the topic on this send.
                self.route(&default_topic, Gauge::SendMessagePending)
                    .await
                    .map_err(route_reject)?
            }
            Err(e) => return Err(route_reject(e)),
        };
        let sel = route
            .select(&RouteRequest {
                code,
                ..Default::default()
            })
            .ok_or_else(|| {
                Reject::system(format!("No route for request code {code} on topic {topic}"))
            })?;
        let cluster_timeout = sel
            .cluster
            .spec
            .connect_timeout_ms
            .map(Duration::from_millis);
        let writable: Vec<&Endpoint> = sel
            .endpoints
            .iter()
            .copied()
            .filter(|e| e.is_master())
            .collect();
        let view = self.queue_view_cached(&route);
        let vq = &view.1;
        let target = self.send_queue(vq, queue).filter(|_| !writable.is_empty());
        let Some((vqueue, first, _)) = target else {
            return Err(Reject::system(format!(
                "no writable broker for topic {topic}"
            )));
        };
        // The broker for that virtual queue first, then the other writable brokers (only when
        // the request certainly did not reach the previous one).
        let mut order: Vec<&Endpoint> = writable
            .iter()
            .copied()
            .filter(|e| e.broker_name == first)
            .collect();
        order.extend(
            writable
                .iter()
                .copied()
                .filter(|e| e.broker_name != first && !self.upstreams.is_down(&e.address)),
        );
        let mut last_err = None;
        let attempts = order.len();
        let mut req = Some(req);
        for (i, ep) in order.into_iter().enumerate() {
            let local = match vq.write_target(vqueue) {
                Some((b, q)) if b == ep.broker_name => q,
                _ => vqueue % ep.write_queue_num.max(1) as i32,
            };
            // Only a retry needs the request again; only a changed queue id needs a new header
            // (otherwise the original header bytes are forwarded as they came).
            let mut attempt = if i + 1 == attempts {
                req.take().expect("one request per attempt")
            } else {
                req.clone().expect("kept for the last attempt")
            };
            if local != queue {
                attempt.ext_mut().put(k_queue, local);
            }
            match self
                .forward(
                    &ep.address,
                    cluster_timeout,
                    attempt,
                    self.cfg.request_timeout,
                )
                .await
            {
                Ok(mut resp) => {
                    let v = vq.virtual_write(&ep.broker_name, local).unwrap_or(vqueue);
                    let txn = transactional.then_some(ep.address.as_str());
                    self.finish_send(&mut resp, txn, v, local);
                    return Ok(resp);
                }
                Err(e) if e.not_sent() => {
                    tracing::debug!(broker = %ep.broker_name, "send not delivered, trying another writable broker: {e}");
                    last_err = Some(e);
                }
                Err(e) => return Err(upstream_reject(e)),
            }
        }
        Err(upstream_reject(last_err.expect("at least one attempt")))
    }

    /// Where a send goes first, the same for both send paths: the virtual queue (the SDK's
    /// when in range, else the next in rotation), its broker and that broker's queue id. `None`
    /// when the topic has no writable queue.
    fn send_queue<'v>(&self, vq: &'v VirtualQueues, queue: i32) -> Option<(i32, &'v str, i32)> {
        let nq = vq.write_queue_nums() as i32;
        if nq == 0 {
            return None;
        }
        let vqueue = if (0..nq).contains(&queue) {
            queue
        } else {
            (self.next() % nq as usize) as i32
        };
        let (broker, local) = vq.write_target(vqueue)?;
        Some((vqueue, broker, local))
    }

    /// A send's answer in the SDK's terms: the virtual queue id, and (for a transactional send
    /// to the broker at `txn_addr`) the half message remembered for END_TRANSACTION.
    fn finish_send(
        &self,
        resp: &mut RemotingCommand,
        txn_addr: Option<&str>,
        vqueue: i32,
        local: i32,
    ) {
        if let (Some(addr), response_code::SUCCESS) = (txn_addr, resp.code()) {
            for key in ["msgId", "transactionId"] {
                if let Some(id) = resp.ext().get(key) {
                    self.txn.remember(id, addr);
                }
            }
        }
        // The broker answers with its own queue id. When its queues start the virtual range
        // (`local == vqueue`) its ids are the virtual ones, and the answer goes back as it came,
        // its custom header not even read.
        if local != vqueue
            && resp
                .ext()
                .get("queueId")
                .is_some_and(|q| q.parse() != Ok(vqueue))
        {
            resp.ext_mut().put("queueId", vqueue);
        }
    }

    /// The common send, without a task: when the topic's route is at hand and the broker of the
    /// virtual queue has a live pooled connection, the request is queued there at once and the
    /// answer goes back to `conn` from the upstream connection's reader ([`SendDone`]). Anything
    /// else (a route to wait for, auto-creation, an endpoint to connect or skip, a header to
    /// refuse) is handed back for [`SidecarCore::send`], which answers the same way.
    #[allow(clippy::result_large_err)]
    fn try_send_inline(
        self: &Arc<Self>,
        mut req: RemotingCommand,
        conn: &Arc<Connection>,
        slot: RequestSlot,
    ) -> Result<(), (RemotingCommand, RequestSlot)> {
        if req.is_oneway() {
            return Err((req, slot));
        }
        let code = req.code();
        let Ok(h) = SendHeader::read(&req) else {
            return Err((req, slot));
        };
        let (queue, k_queue, transactional) = (h.queue, h.k_queue, h.transactional);
        let Some(route) = self.xds.snapshot().route(h.topic).cloned() else {
            return Err((req, slot));
        };
        let Some(sel) = route.select(&RouteRequest {
            code,
            ..Default::default()
        }) else {
            return Err((req, slot));
        };
        let view = self.queue_view_cached(&route);
        let Some((vqueue, broker, local)) = self.send_queue(&view.1, queue) else {
            return Err((req, slot));
        };
        let Some(ep) = sel
            .endpoints
            .iter()
            .find(|e| e.is_master() && e.broker_name == broker)
        else {
            return Err((req, slot));
        };
        if local != queue {
            req.ext_mut().put(k_queue, local);
        }
        let (counter, active) = send_stats(code);
        let start = Instant::now();
        // Counted as in flight before it can complete (on another thread, maybe at once).
        self.stats.gauge_add(Gauge::RequestActive, 1);
        self.stats.gauge_add(active, 1);
        let done = SendDone {
            core: self.clone(),
            conn: conn.clone(),
            slot,
            code,
            opaque: req.opaque(),
            language: req.language(),
            serialize: req.serialize_type(),
            vqueue,
            local,
            active,
            transactional: transactional.then(|| ep.address.clone()),
            start,
        };
        match self
            .upstreams
            .try_forward(&ep.address, req, start, self.cfg.request_timeout, done)
        {
            Ok(()) => {
                self.stats.inc(Counter::Request);
                self.stats.inc(Counter::RequestDecodingSuccess);
                self.stats.inc(counter);
                Ok(())
            }
            Err((mut req, done)) => {
                self.stats.gauge_add(Gauge::RequestActive, -1);
                self.stats.gauge_add(active, -1);
                if local != queue {
                    // Back to the SDK's queue id: the waiting path maps it again.
                    if queue >= 0 {
                        req.ext_mut().put(k_queue, queue);
                    } else {
                        req.ext_mut().remove(k_queue);
                    }
                }
                Err((req, done.slot))
            }
        }
    }

    // ----- pop / ack ---------------------------------------------------------------------

    async fn pop(&self, mut req: RemotingCommand) -> Result<RemotingCommand, Reject> {
        self.stats.inc(Counter::PopMessage);
        let _a = self.stats.track(Gauge::PopMessageActive);
        let h: PopMessageRequestHeader = req.decode_header()?;
        let route = self
            .route(&h.topic, Gauge::PopMessagePending)
            .await
            .map_err(route_reject)?;
        let sel = route
            .select(&RouteRequest {
                code: rc::POP_MESSAGE,
                ..Default::default()
            })
            .ok_or_else(|| Reject::system(format!("No route for POP on topic {}", h.topic)))?;
        let cluster_timeout = sel
            .cluster
            .spec
            .connect_timeout_ms
            .map(Duration::from_millis);
        let readable: Vec<&Endpoint> = sel
            .endpoints
            .iter()
            .copied()
            .filter(|e| e.is_master())
            .collect();
        if readable.is_empty() {
            return Err(Reject::system(format!(
                "no readable broker for topic {}",
                h.topic
            )));
        }
        // A pop naming a real broker (`bname`, which 5.x clients set to the broker of their
        // message queue) goes to that broker with its queue id untouched: the client builds its
        // pop handles, and so its ACKs, with that broker's name, so any other broker would be
        // wrong. The virtual broker's name (or none) means virtual queue ids.
        let named = h
            .bname
            .as_deref()
            .filter(|b| *b != self.cfg.virtual_broker)
            .and_then(|b| readable.iter().copied().find(|e| e.broker_name == b));
        let view = self.queue_view_cached(&route);
        let vq = &view.1;
        let poll = Duration::from_millis(u64::try_from(h.poll_time).unwrap_or(0).min(60_000));
        if let Some(ep) = named {
            let resp = self
                .forward(
                    &ep.address,
                    cluster_timeout,
                    req,
                    self.cfg.request_timeout + poll,
                )
                .await
                .map_err(upstream_reject)?;
            return Ok(stamp_pop_handles(resp, &ep.broker_name));
        }
        if let Some((b, q)) = vq.read_target(h.queue_id) {
            let Some(ep) = readable.iter().find(|e| e.broker_name == b) else {
                return Err(Reject::system(format!(
                    "broker {b} is not readable for {}",
                    h.topic
                )));
            };
            if q != h.queue_id {
                req.ext_mut().put("queueId", q);
            }
            let resp = self
                .forward(
                    &ep.address,
                    cluster_timeout,
                    req,
                    self.cfg.request_timeout + poll,
                )
                .await
                .map_err(upstream_reject)?;
            return Ok(stamp_pop_handles(resp, &ep.broker_name));
        }
        // Any broker (queueId -1): a long poll on one broker would keep the client waiting while
        // another has messages. Ask every readable broker without waiting first (starting from a
        // rotating one), and long-poll only when all are empty.
        let up: Vec<&Endpoint> = readable
            .iter()
            .copied()
            .filter(|e| !self.upstreams.is_down(&e.address))
            .collect();
        let pool = if up.is_empty() { readable.clone() } else { up };
        let start = self.next() % pool.len();
        let order: Vec<&Endpoint> = pool
            .iter()
            .cycle()
            .skip(start)
            .take(pool.len())
            .copied()
            .collect();
        req.ext_mut().put("queueId", -1);
        if order.len() > 1 && !poll.is_zero() {
            let mut quick = req.clone();
            quick.ext_mut().put("pollTime", 0);
            for ep in &order {
                match self
                    .forward(
                        &ep.address,
                        cluster_timeout,
                        quick.clone(),
                        self.cfg.request_timeout,
                    )
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
        let ep = order[0];
        let resp = self
            .forward(
                &ep.address,
                cluster_timeout,
                req,
                self.cfg.request_timeout + poll,
            )
            .await
            .map_err(upstream_reject)?;
        Ok(stamp_pop_handles(resp, &ep.broker_name))
    }

    /// The endpoint of `broker` serving `topic` (or, for a pop retry topic, its original topic).
    pub(super) async fn broker_endpoint(
        &self,
        topic: &str,
        group: &str,
        broker: &str,
    ) -> Result<(Endpoint, Option<Duration>), Reject> {
        let lookup = |route: &TopicRoute| {
            route
                .broker(broker, Some(0))
                .or_else(|| route.broker(broker, None))
                .map(|e| {
                    let timeout = route
                        .clusters
                        .values()
                        .find(|c| c.endpoints.iter().any(|x| x.address == e.address))
                        .and_then(|c| c.spec.connect_timeout_ms.map(Duration::from_millis));
                    (e.clone(), timeout)
                })
        };
        let first = self.route(topic, Gauge::TotalPending).await;
        if let Ok(r) = &first {
            if let Some(found) = lookup(r) {
                return Ok(found);
            }
        }
        if is_retry_topic(topic) {
            if let Some((_, original)) = parse_pop_retry_topic(topic, group) {
                let r = self
                    .route(&original, Gauge::TotalPending)
                    .await
                    .map_err(route_reject)?;
                if let Some(found) = lookup(&r) {
                    return Ok(found);
                }
            }
        }
        first.map_err(route_reject)?;
        Err(Reject::system(format!(
            "broker {broker} of the pop handle is not in the route of {topic}"
        )))
    }

    async fn ack_like(&self, req: RemotingCommand) -> Result<RemotingCommand, Reject> {
        let (topic, group, extra) = if req.code() == rc::ACK_MESSAGE {
            self.stats.inc(Counter::AckMessage);
            let h: AckMessageRequestHeader = req.decode_header()?;
            (h.topic, h.consumer_group, h.extra_info)
        } else {
            let h: ChangeInvisibleTimeRequestHeader = req.decode_header()?;
            (h.topic, h.consumer_group, h.extra_info)
        };
        let handle =
            PopHandle::parse(&extra).map_err(|e| Reject::system(format!("bad extraInfo: {e}")))?;
        let (ep, timeout) = self
            .broker_endpoint(&topic, &group, &handle.broker_name)
            .await?;
        self.forward(&ep.address, timeout, req, self.cfg.request_timeout)
            .await
            .map_err(upstream_reject)
    }

    async fn batch_ack(&self, req: RemotingCommand) -> Result<RemotingCommand, Reject> {
        self.stats.inc(Counter::AckMessage);
        let body = BatchAckMessageRequestBody::parse(req.body())
            .map_err(|e| Reject::system(format!("bad BATCH_ACK body: {e}")))?;
        let Some(first) = body.acks.first() else {
            return Ok(self.reply(&req, response_code::SUCCESS, None));
        };
        let (ep, timeout) = self
            .broker_endpoint(&first.topic, &first.consumer_group, &body.broker_name)
            .await?;
        self.forward(&ep.address, timeout, req, self.cfg.request_timeout)
            .await
            .map_err(upstream_reject)
    }

    async fn end_transaction(&self, req: RemotingCommand) -> Result<RemotingCommand, Reject> {
        let h: EndTransactionRequestHeader = req.decode_header()?;
        // The broker that stored the half message: remembered from the send (SDKs put the
        // message's unique id in msgId) or from the broker's check, else read from an offset
        // message id.
        let addr = match self.txn.lookup(&h.msg_id) {
            Some(a) => a,
            None => decode_offset_msg_id(&h.msg_id)
                .map_err(|_| {
                    Reject::system(format!(
                        "END_TRANSACTION: msgId {:?} names no half message sent through this sidecar",
                        h.msg_id
                    ))
                })?
                .0
                .to_string(),
        };
        // Only brokers we already talk to (the one that stored the half message is pooled).
        if !self.upstreams.endpoints().contains(&addr) {
            return Err(Reject::system(format!(
                "END_TRANSACTION: broker {addr} of msgId is not an upstream"
            )));
        }
        self.forward(&addr, None, req, self.cfg.request_timeout)
            .await
            .map_err(upstream_reject)
    }

    // ----- client table ------------------------------------------------------------------

    fn heartbeat(
        &self,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, Reject> {
        self.stats.inc(Counter::Heartbeat);
        let hb = HeartbeatData::parse(req.body())
            .map_err(|e| Reject::system(format!("bad heartbeat body: {e}")))?;
        if hb.client_id.is_empty() {
            return Err(Reject::system("heartbeat without clientID"));
        }
        self.groups.heartbeat(conn, &hb);
        Ok(self.reply(req, response_code::SUCCESS, None))
    }

    fn unregister(&self, req: &RemotingCommand) -> Result<RemotingCommand, Reject> {
        self.stats.inc(Counter::Unregister);
        let h: UnregisterClientRequestHeader = req.decode_header()?;
        self.groups.unregister(
            &h.client_id,
            h.producer_group.as_deref(),
            h.consumer_group.as_deref(),
        );
        Ok(self.reply(req, response_code::SUCCESS, None))
    }

    /// "Just you": a legacy consumer behind the sidecar rebalances alone and takes every queue;
    /// Pop (which its pulls become) shares the queues with every other consumer of the group.
    fn consumer_list(
        &self,
        req: &RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Result<RemotingCommand, Reject> {
        self.stats.inc(Counter::GetConsumerList);
        let h: GetConsumerListByGroupRequestHeader = req.decode_header()?;
        let body = ConsumerListBody {
            consumer_id_list: self
                .groups
                .client_of(conn.id(), &h.consumer_group)
                .into_iter()
                .collect(),
        };
        Ok(self
            .reply(req, response_code::SUCCESS, None)
            .with_body(body.to_json()))
    }

    /// Dispatches one request; None for oneway requests.
    pub async fn dispatch(
        self: &Arc<Self>,
        req: RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        self.stats.inc(Counter::Request);
        self.stats.inc(Counter::RequestDecodingSuccess);
        let _active = self.stats.track(Gauge::RequestActive);
        let oneway = req.is_oneway();
        let code = req.code();
        // What an error answer needs of the request, so forwarded requests can move on without
        // a copy of their header fields.
        let stub = RemotingCommand::request(code)
            .with_opaque(req.opaque())
            .with_language(req.language())
            .with_serialize_type(req.serialize_type());
        let result = match code {
            rc::GET_ROUTEINFO_BY_TOPIC => self.get_route(&req).await,
            rc::SEND_MESSAGE | rc::SEND_MESSAGE_V2 | rc::SEND_BATCH_MESSAGE => self.send(req).await,
            rc::POP_MESSAGE => self.pop(req).await,
            rc::ACK_MESSAGE | rc::CHANGE_MESSAGE_INVISIBLETIME => self.ack_like(req).await,
            rc::BATCH_ACK_MESSAGE => self.batch_ack(req).await,
            rc::END_TRANSACTION => self.end_transaction(req).await,
            rc::HEART_BEAT => self.heartbeat(&req, conn),
            rc::UNREGISTER_CLIENT => self.unregister(&req),
            rc::GET_CONSUMER_LIST_BY_GROUP => self.consumer_list(&req, conn),
            rc::PULL_MESSAGE => self.pull(&req, conn).await,
            rc::UPDATE_CONSUMER_OFFSET => self.update_offset(&req, conn),
            rc::QUERY_CONSUMER_OFFSET => self.query_offset(&req, conn),
            rc::GET_MAX_OFFSET | rc::GET_MIN_OFFSET | rc::SEARCH_OFFSET_BY_TIMESTAMP => {
                self.offset_probe(&req, conn)
            }
            rc::CONSUMER_SEND_MSG_BACK => self.send_back(&req, conn).await,
            _ => Ok(req.not_supported_response(self.cfg.response_encoding)),
        };
        let resp = match result {
            Ok(r) => {
                self.stats.inc(Counter::ResponseSuccess);
                r
            }
            Err(Reject(code_, remark)) => {
                self.stats.inc(Counter::ResponseError);
                tracing::debug!(code, remark = %remark, "request rejected");
                self.reply(&stub, code_, Some(remark))
            }
        };
        (!oneway).then_some(resp)
    }
}

/// Gives every record of a successful POP response the handle (`POP_CK`) naming `broker`, the
/// real broker that served it. Route answers name only the virtual broker, so an SDK building the
/// handle itself would name that one and its ACK could not be routed; SDKs keep a `POP_CK` they
/// find (as for the retry records a broker re-encodes), which makes acks stateless. Records that
/// already carry one are kept as they are; a response that cannot be read is passed on unchanged.
fn stamp_pop_handles(resp: RemotingCommand, broker: &str) -> RemotingCommand {
    if resp.code() != response_code::SUCCESS || resp.body().is_empty() {
        return resp;
    }
    let stamped = (|| -> Result<Bytes, String> {
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
    })();
    match stamped {
        Ok(body) => resp.with_body(body),
        Err(e) => {
            tracing::warn!(%broker, "POP response passed on without pop handles: {e}");
            resp
        }
    }
}

/// The counter and active gauge of a send code.
fn send_stats(code: i32) -> (Counter, Gauge) {
    match code {
        rc::SEND_MESSAGE => (Counter::SendMessageV1, Gauge::SendMessageV1Active),
        rc::SEND_BATCH_MESSAGE => (Counter::SendMessageBatch, Gauge::SendMessageV2Active),
        _ => (Counter::SendMessageV2, Gauge::SendMessageV2Active),
    }
}

/// What routing reads from a send's header. V1 names its fields, V2 (and batch from Java) uses
/// `a`..`n`.
struct SendHeader<'a> {
    topic: &'a str,
    /// `defaultTopic` ("" when absent): a legacy producer's auto-create.
    default_topic: &'a str,
    /// The SDK's (virtual) queue; -1 when absent.
    queue: i32,
    /// The key of the queue id, for rewriting it.
    k_queue: &'static str,
    /// The message is a transactional half message (`TRAN_MSG=true`).
    transactional: bool,
}

impl<'a> SendHeader<'a> {
    fn read(req: &'a RemotingCommand) -> Result<Self, rocketmesh_filters::codec::ext::HeaderError> {
        let ext = req.ext();
        let (k_topic, k_default, k_queue, k_props) = if ext.contains("b") {
            ("b", "c", "e", "i")
        } else {
            ("topic", "defaultTopic", "queueId", "properties")
        };
        Ok(SendHeader {
            topic: ext.required_str(k_topic)?,
            default_topic: ext.get(k_default).unwrap_or(""),
            queue: ext.optional(k_queue)?.unwrap_or(-1),
            k_queue,
            transactional: ext
                .get(k_props)
                .and_then(|p| {
                    rocketmesh_filters::codec::message::properties::lookup(
                        p,
                        property_keys::TRAN_MSG,
                    )
                })
                .is_some_and(|v| v == "true"),
        })
    }
}

/// The rest of a send taken by [`SidecarCore::try_send_inline`]: runs on the upstream
/// connection's reader when the broker answers (or the request times out or the connection
/// ends), and answers the client the way [`SidecarCore::send`] would.
struct SendDone {
    core: Arc<SidecarCore>,
    conn: Arc<Connection>,
    slot: RequestSlot,
    code: i32,
    opaque: i32,
    language: rocketmesh_filters::codec::codes::LanguageCode,
    serialize: rocketmesh_filters::codec::codes::SerializeType,
    /// The SDK's (virtual) queue, written back into the answer.
    vqueue: i32,
    /// The broker's queue the send went to.
    local: i32,
    active: Gauge,
    /// The broker's address, for a transactional send (END_TRANSACTION goes there).
    transactional: Option<String>,
    start: Instant,
}

impl Completion for SendDone {
    fn complete(self, result: Result<RemotingCommand, ClientError>) {
        let core = &self.core;
        let stats = &core.stats;
        stats.upstream_rq_time(self.code, self.start.elapsed());
        let resp = match result {
            Ok(mut resp) => {
                stats.inc(Counter::Response);
                stats.inc(Counter::ResponseDecodingSuccess);
                stats.inc(Counter::ResponseSuccess);
                resp.set_opaque(self.opaque);
                core.finish_send(
                    &mut resp,
                    self.transactional.as_deref(),
                    self.vqueue,
                    self.local,
                );
                resp
            }
            Err(e) => {
                stats.inc(Counter::ResponseError);
                let remark = match e {
                    ClientError::Timeout { addr, .. } | ClientError::Closed { addr, .. } => {
                        format!("broker {addr}: {e}")
                    }
                    other => other.to_string(),
                };
                tracing::debug!(code = self.code, remark = %remark, "request rejected");
                let stub = RemotingCommand::request(self.code)
                    .with_opaque(self.opaque)
                    .with_language(self.language)
                    .with_serialize_type(self.serialize);
                core.reply(&stub, response_code::SYSTEM_ERROR, Some(remark))
            }
        };
        stats.gauge_add(self.active, -1);
        stats.gauge_add(Gauge::RequestActive, -1);
        self.conn.deliver(resp, self.slot);
    }
}

/// The Remoting handler of the sidecar's listeners.
#[derive(Debug)]
pub struct SidecarHandler(pub Arc<SidecarCore>);

impl Handler for SidecarHandler {
    async fn handle(
        self: &Arc<Self>,
        req: RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        self.0.dispatch(req, conn).await
    }

    fn try_handle_inline(
        self: &Arc<Self>,
        request: RemotingCommand,
        conn: &Arc<Connection>,
        slot: RequestSlot,
    ) -> Result<(), (RemotingCommand, RequestSlot)> {
        match request.code() {
            rc::SEND_MESSAGE | rc::SEND_MESSAGE_V2 | rc::SEND_BATCH_MESSAGE => {
                self.0.try_send_inline(request, conn, slot)
            }
            _ => Err((request, slot)),
        }
    }

    fn on_open(&self, _conn: &Arc<Connection>) {
        self.0.stats.gauge_add(Gauge::DownstreamConnections, 1);
    }

    fn on_close(&self, conn: &Arc<Connection>) {
        self.0.stats.gauge_add(Gauge::DownstreamConnections, -1);
        self.0.groups.connection_closed(conn.id());
        // Nothing is acked that was not committed: the broker redelivers the rest.
        self.0.pulls.connection_closed(conn.id());
    }
}
