//! Routing: the topic's route (from the xDS snapshot, or waited for), its queue view, and the
//! choice of broker and queue for sends, pops and acks. The choices are plain functions of the
//! route, the view and the request, so both send paths and every consumer path agree.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rocketmesh_filters::codec::body::perm;
use rocketmesh_filters::codec::codes::request_code as rc;
use rocketmesh_filters::codec::pop::{is_retry_topic, parse_pop_retry_topic};
use rocketmesh_filters::route::{BrokerView, VirtualQueues};
use rocketmesh_xds::client::XdsClient;
use rocketmesh_xds::model::{Endpoint, RouteRequest, Selection, TopicRoute};

use super::error::SidecarError;
use crate::metrics::{Gauge, Stats};

/// Most queue views cached (one per topic in use; cleared when full).
const MAX_CACHED_VIEWS: usize = 4096;

/// The queue view of a route: the brokers (masters) with their perms, and the virtual queues
/// SDKs see over them.
#[derive(Debug)]
pub struct QueueView {
    pub brokers: Vec<BrokerView>,
    pub queues: VirtualQueues,
}

/// Builds the queue view of `route` from its own writable and readable subsets.
pub fn queue_view(route: &TopicRoute) -> QueueView {
    let masters = |code: i32| -> Vec<&Endpoint> {
        route
            .select(&RouteRequest {
                code,
                ..Default::default()
            })
            .map(|s| s.endpoints.into_iter().filter(|e| e.is_master()).collect())
            .unwrap_or_default()
    };
    let writable = masters(rc::SEND_MESSAGE_V2);
    let readable = masters(rc::POP_MESSAGE);
    let mut brokers: Vec<BrokerView> = Vec::new();
    for e in writable.iter().chain(readable.iter()) {
        if brokers.iter().any(|v| v.name == e.broker_name) {
            continue;
        }
        let mut p = 0;
        if writable.iter().any(|w| w.broker_name == e.broker_name) {
            p |= perm::PERM_WRITE;
        }
        if readable.iter().any(|r| r.broker_name == e.broker_name) {
            p |= perm::PERM_READ;
        }
        brokers.push(BrokerView {
            name: e.broker_name.clone(),
            cluster: e.cluster_name.clone(),
            perm: p,
            read_queues: e.read_queue_num,
            write_queues: e.write_queue_num,
            weight: writable
                .iter()
                .find(|w| w.broker_name == e.broker_name)
                .and_then(|w| w.weight),
        });
    }
    let queues = VirtualQueues::new(&brokers);
    QueueView { brokers, queues }
}

struct CachedView {
    route: Arc<TopicRoute>,
    view: Arc<QueueView>,
}

/// Routes and queue views of the topics in use.
pub struct Router {
    xds: XdsClient,
    virtual_broker: String,
    stats: Arc<Stats>,
    /// Queue views of recent routes, reused while the route snapshot is the same.
    views: Mutex<HashMap<String, CachedView>>,
    rr: AtomicUsize,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("virtual_broker", &self.virtual_broker)
            .finish_non_exhaustive()
    }
}

impl Router {
    pub fn new(xds: XdsClient, virtual_broker: String, stats: Arc<Stats>) -> Self {
        Router {
            xds,
            virtual_broker,
            stats,
            views: Mutex::new(HashMap::new()),
            rr: AtomicUsize::new(0),
        }
    }

    pub fn xds(&self) -> &XdsClient {
        &self.xds
    }

    /// The name of the one broker route answers present.
    pub fn virtual_broker(&self) -> &str {
        &self.virtual_broker
    }

    /// The topic's route when the snapshot has it (no waiting).
    pub fn cached(&self, topic: &str) -> Option<Arc<TopicRoute>> {
        self.xds.snapshot().route(topic).cloned()
    }

    /// The topic's route, subscribing and waiting (bounded by the route timeout) when it is not
    /// known yet; `pending` counts the requests parked meanwhile.
    pub async fn route(
        &self,
        topic: &str,
        pending: Gauge,
    ) -> Result<Arc<TopicRoute>, SidecarError> {
        if let Some(r) = self.cached(topic) {
            return Ok(r);
        }
        let _p = self.stats.track(pending);
        let _t = self.stats.track(Gauge::TotalPending);
        Ok(self.xds.route(topic).await?)
    }

    /// The queue view of `route`, computed once per route snapshot (an xDS update makes a new
    /// `TopicRoute` and so a new view).
    pub fn view(&self, route: &Arc<TopicRoute>) -> Arc<QueueView> {
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

    /// A rotating number (round robin over queues and brokers).
    pub fn next(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }

    /// Where a send goes (see [`SendPlan`]); `queue` is the SDK's virtual queue (-1: any).
    pub fn plan_send<'r>(
        &self,
        route: &'r TopicRoute,
        view: &'r QueueView,
        code: i32,
        queue: i32,
    ) -> Result<SendPlan<'r>, SidecarError> {
        let sel = select(route, code)?;
        let vq = &view.queues;
        let nq = vq.write_queue_nums() as i32;
        let vqueue = if (0..nq).contains(&queue) {
            queue
        } else if nq > 0 {
            (self.next() % nq as usize) as i32
        } else {
            -1
        };
        let has_writable = sel.endpoints.iter().any(|e| e.is_master());
        let Some((broker, _)) = vq.write_target(vqueue).filter(|_| has_writable) else {
            return Err(SidecarError::NoWritableBroker(route.topic.clone()));
        };
        let first = sel
            .endpoints
            .iter()
            .copied()
            .find(|e| e.is_master() && e.broker_name == broker);
        Ok(SendPlan {
            vqueue,
            topic: &route.topic,
            first_broker: broker,
            first,
            connect_timeout: connect_timeout(&sel),
            sel,
            vq,
        })
    }

    /// Where a pop goes (see [`PopPlan`]). `bname` is the broker a 5.x client names.
    pub fn plan_pop<'r>(
        &self,
        route: &'r TopicRoute,
        view: &'r QueueView,
        queue_id: i32,
        bname: Option<&str>,
        is_down: impl Fn(&str) -> bool,
    ) -> Result<PopPlan<'r>, SidecarError> {
        let sel = select(route, rc::POP_MESSAGE)?;
        let connect_timeout = connect_timeout(&sel);
        let readable: Vec<&'r Endpoint> = sel
            .endpoints
            .iter()
            .copied()
            .filter(|e| e.is_master())
            .collect();
        if readable.is_empty() {
            return Err(SidecarError::NoReadableBroker(route.topic.clone()));
        }
        // A pop naming a real broker (`bname`, which 5.x clients set to the broker of their
        // message queue) goes to that broker with its queue id untouched: the client builds its
        // pop handles, and so its ACKs, with that broker's name. The virtual broker's name (or
        // none) means virtual queue ids.
        let named = bname
            .filter(|b| *b != self.virtual_broker)
            .and_then(|b| readable.iter().copied().find(|e| e.broker_name == b));
        if let Some(endpoint) = named {
            return Ok(PopPlan::One {
                endpoint,
                queue: None,
                connect_timeout,
            });
        }
        if let Some((b, q)) = view.queues.read_target(queue_id) {
            let Some(endpoint) = readable.iter().copied().find(|e| e.broker_name == b) else {
                return Err(SidecarError::NotReadable {
                    broker: b.to_owned(),
                    topic: route.topic.clone(),
                });
            };
            return Ok(PopPlan::One {
                endpoint,
                queue: (q != queue_id).then_some(q),
                connect_timeout,
            });
        }
        // Any broker (queueId -1): the live ones from a rotating start.
        let up: Vec<&Endpoint> = readable
            .iter()
            .copied()
            .filter(|e| !is_down(&e.address))
            .collect();
        let pool = if up.is_empty() { readable } else { up };
        let start = self.next() % pool.len();
        let order = pool
            .iter()
            .cycle()
            .skip(start)
            .take(pool.len())
            .copied()
            .collect();
        Ok(PopPlan::Any {
            order,
            connect_timeout,
        })
    }

    /// The readable master `broker` of `route`, with its cluster's connect timeout.
    pub fn readable<'r>(
        &self,
        route: &'r TopicRoute,
        broker: &str,
    ) -> Result<(&'r Endpoint, Option<Duration>), SidecarError> {
        let sel = select(route, rc::POP_MESSAGE)?;
        let ep = sel
            .endpoints
            .iter()
            .copied()
            .find(|e| e.broker_name == broker && e.is_master())
            .ok_or_else(|| SidecarError::NotReadable {
                broker: broker.to_owned(),
                topic: route.topic.clone(),
            })?;
        Ok((ep, connect_timeout(&sel)))
    }

    /// The endpoint of `broker` serving `topic` (or, for a pop retry topic, its original topic):
    /// where an ack or change of invisible time for a handle of that broker goes.
    pub async fn broker_endpoint(
        &self,
        topic: &str,
        group: &str,
        broker: &str,
    ) -> Result<(Endpoint, Option<Duration>), SidecarError> {
        let first = self.route(topic, Gauge::TotalPending).await;
        if let Ok(r) = &first {
            if let Some(found) = broker_in(r, broker) {
                return Ok(found);
            }
        }
        if is_retry_topic(topic) {
            if let Some((_, original)) = parse_pop_retry_topic(topic, group) {
                let r = self.route(&original, Gauge::TotalPending).await?;
                if let Some(found) = broker_in(&r, broker) {
                    return Ok(found);
                }
            }
        }
        first?;
        Err(SidecarError::UnknownBroker {
            broker: broker.to_owned(),
            topic: topic.to_owned(),
        })
    }
}

/// The rule and endpoints for `code` on `route`.
fn select(route: &TopicRoute, code: i32) -> Result<Selection<'_>, SidecarError> {
    route
        .select(&RouteRequest {
            code,
            ..Default::default()
        })
        .ok_or_else(|| SidecarError::NoRoute {
            code,
            topic: route.topic.clone(),
        })
}

fn connect_timeout(sel: &Selection<'_>) -> Option<Duration> {
    sel.cluster
        .spec
        .connect_timeout_ms
        .map(Duration::from_millis)
}

/// `broker` (its master if it has one) in `route`, with its cluster's connect timeout.
pub(crate) fn broker_in(route: &TopicRoute, broker: &str) -> Option<(Endpoint, Option<Duration>)> {
    let e = route
        .broker(broker, Some(0))
        .or_else(|| route.broker(broker, None))?;
    let timeout = route
        .clusters
        .values()
        .find(|c| c.endpoints.iter().any(|x| x.address == e.address))
        .and_then(|c| c.spec.connect_timeout_ms.map(Duration::from_millis));
    Some((e.clone(), timeout))
}

/// Where one send goes: the virtual queue, the broker that holds it, and the other writable
/// brokers to try when a send certainly did not leave. Both send paths (inline and on a task)
/// are built from this, so they cannot disagree.
#[derive(Debug)]
pub struct SendPlan<'r> {
    /// The virtual queue the send is for (the SDK's when in range, else the next in rotation).
    pub vqueue: i32,
    /// The writable master holding `vqueue` (None: the view names a broker the route's
    /// writable subset no longer has; the other writable brokers are tried).
    first: Option<&'r Endpoint>,
    /// The broker name of `vqueue` in the view.
    first_broker: &'r str,
    topic: &'r str,
    pub connect_timeout: Option<Duration>,
    sel: Selection<'r>,
    vq: &'r VirtualQueues,
}

/// One attempt of a send: the broker endpoint and that broker's queue id.
#[derive(Debug, Clone, Copy)]
pub struct SendTarget<'r> {
    pub endpoint: &'r Endpoint,
    pub local: i32,
}

impl<'r> SendPlan<'r> {
    /// The first attempt, when the virtual queue's broker is writable.
    pub fn first(&self) -> Option<SendTarget<'r>> {
        self.first.map(|e| self.target(e))
    }

    /// Every attempt in order: the virtual queue's broker, then the other writable brokers that
    /// are not down (cooling down after a failed connect, or ejected as an outlier). A virtual
    /// queue's broker that is down goes last, so a send meets a live broker first. Never empty.
    pub fn attempts(
        &self,
        is_down: impl Fn(&str) -> bool,
    ) -> Result<Vec<SendTarget<'r>>, SidecarError> {
        let first = self.first();
        let first_down = first.is_some_and(|t| is_down(&t.endpoint.address));
        let mut out: Vec<SendTarget<'r>> = first.filter(|_| !first_down).into_iter().collect();
        out.extend(
            self.sel
                .endpoints
                .iter()
                .copied()
                .filter(|e| {
                    e.is_master() && e.broker_name != self.first_broker && !is_down(&e.address)
                })
                .map(|e| self.target(e)),
        );
        out.extend(first.filter(|_| first_down));
        if out.is_empty() {
            return Err(SidecarError::NoWritableBroker(self.topic.to_owned()));
        }
        Ok(out)
    }

    /// The virtual queue an SDK sees for a send that went to `t`.
    pub fn virtual_queue(&self, t: &SendTarget<'_>) -> i32 {
        if t.endpoint.broker_name == self.first_broker {
            return self.vqueue;
        }
        self.vq
            .virtual_write(&t.endpoint.broker_name, t.local)
            .unwrap_or(self.vqueue)
    }

    fn target(&self, e: &'r Endpoint) -> SendTarget<'r> {
        let local = match self.vq.write_target(self.vqueue) {
            Some((b, q)) if b == e.broker_name => q,
            _ => self.vqueue % e.write_queue_num.max(1) as i32,
        };
        SendTarget { endpoint: e, local }
    }
}

/// Where one pop goes.
#[derive(Debug)]
pub enum PopPlan<'r> {
    /// One broker; `queue` is its queue id when it differs from the request's.
    One {
        endpoint: &'r Endpoint,
        queue: Option<i32>,
        connect_timeout: Option<Duration>,
    },
    /// Any queue of any readable broker, asked in this order.
    Any {
        order: Vec<&'r Endpoint>,
        connect_timeout: Option<Duration>,
    },
}
