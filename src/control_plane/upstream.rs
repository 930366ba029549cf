//! Upstream nameserver mode (`--upstream-namesrv ADDR`): routes are read from an existing
//! nameserver on demand.
//!
//! The catalog asks for topics it does not know through its demand channel
//! ([`Catalog::with_demand`]); [`run_fetcher`] queries GET_ROUTEINFO_BY_TOPIC upstream (one
//! multiplexed connection, reconnected with backoff, 3 s per request, a bounded number of queries
//! at once) and answers with [`Catalog::set_topic`] or, on TOPIC_NOT_EXIST, [`Catalog::mark_absent`].
//! Topics found are refreshed every `refresh` interval (perm changes and moved brokers propagate);
//! absent marks are dropped after `absent_ttl` so the topic is asked again on the next lookup.
//! Failed queries (upstream unreachable) never turn into "absent": a topic nobody has a route for
//! yet is retried every second (a sidecar waiting for it times out rather than being told it does
//! not exist), and a route already known stays in force until a refresh succeeds.
//!
//! Topics registered by a broker on our own Remoting port win over upstream answers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocketmesh_filters::codec::body::{BodyError, TopicRouteData};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code as code};
use rocketmesh_filters::codec::headers::GetRouteInfoRequestHeader;
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_xds::catalog::Catalog;
use rocketmesh_xds::model::{BrokerQueues, TopicRouteSpec};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::namesrv::NameServer;
use crate::remoting::tls::ClientTls;
use crate::remoting::{ClientError, RemotingClient};

/// Upstream mode settings.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// The upstream nameserver.
    pub addr: String,
    /// Deadline of one query (and of a connect).
    pub request_timeout: Duration,
    /// How often fetched topics are queried again.
    pub refresh: Duration,
    /// How long a topic the upstream does not know stays "absent".
    pub absent_ttl: Duration,
    /// Most queries in flight at once.
    pub concurrency: usize,
    /// Most topics kept fresh; topics past it are fetched once on demand but not refreshed.
    pub max_tracked: usize,
    /// TLS to the upstream nameserver (`--upstream-tls-*`).
    pub tls: Option<Arc<ClientTls>>,
}

impl UpstreamOptions {
    /// Defaults for `addr`: 3 s requests, refresh every 30 s, absent for 10 s, 16 queries at once.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            request_timeout: Duration::from_secs(3),
            refresh: Duration::from_secs(30),
            absent_ttl: Duration::from_secs(10),
            concurrency: 16,
            max_tracked: 200_000,
            tls: None,
        }
    }
}

/// A failed upstream query.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{addr} is unreachable; next connect attempt in {retry_in:?}")]
    Backoff { addr: String, retry_in: Duration },
    #[error("{addr} answered code {code}: {remark}")]
    Refused {
        addr: String,
        code: i32,
        remark: String,
    },
    #[error("{addr} sent an unreadable route: {source}")]
    Body {
        addr: String,
        #[source]
        source: BodyError,
    },
}

#[derive(Debug, Default)]
struct Conn {
    client: Option<RemotingClient>,
    /// After a failed connect: not before this instant, and the next backoff.
    retry_at: Option<Instant>,
    backoff: Duration,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The upstream nameserver: one multiplexed connection, reconnected on demand with backoff.
#[derive(Debug)]
pub struct Upstream {
    opts: UpstreamOptions,
    conn: Mutex<Conn>,
    /// Answers (or failures) the fetcher has applied, on demand and on refresh.
    applied: AtomicU64,
}

impl Upstream {
    pub fn new(opts: UpstreamOptions) -> Self {
        Self {
            opts,
            conn: Mutex::new(Conn::default()),
            applied: AtomicU64::new(0),
        }
    }

    /// How many upstream answers the fetcher has applied so far (a refresh round is visible
    /// as this number moving).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    pub fn options(&self) -> &UpstreamOptions {
        &self.opts
    }

    async fn client(&self) -> Result<RemotingClient, UpstreamError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let addr = self.opts.addr.clone();
        if let Some(at) = conn.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(UpstreamError::Backoff {
                    addr,
                    retry_in: at - now,
                });
            }
        }
        let tls = self.opts.tls.as_deref();
        match RemotingClient::connect_to_tls(&addr, self.opts.request_timeout, tls, None).await {
            Ok(c) => {
                if conn.retry_at.take().is_some() {
                    tracing::info!(%addr, "upstream nameserver reachable again");
                }
                conn.backoff = Duration::ZERO;
                conn.client = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                conn.backoff = (conn.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                conn.retry_at = Some(Instant::now() + conn.backoff);
                conn.client = None;
                tracing::warn!(%addr, "cannot reach the upstream nameserver: {e}");
                Err(e.into())
            }
        }
    }

    /// GET_ROUTEINFO_BY_TOPIC upstream: `Ok(None)` when the upstream says TOPIC_NOT_EXIST.
    pub async fn query(&self, topic: &str) -> Result<Option<TopicRouteData>, UpstreamError> {
        let addr = self.opts.addr.clone();
        let client = self.client().await?;
        let header = GetRouteInfoRequestHeader {
            topic: topic.to_owned(),
            accept_standard_json_only: Some(true),
        };
        let req = RemotingCommand::request_with_header(rc::GET_ROUTEINFO_BY_TOPIC, &header);
        let resp = client.invoke(req, self.opts.request_timeout).await?;
        match resp.code() {
            code::SUCCESS => TopicRouteData::parse(resp.body())
                .map(Some)
                .map_err(|source| UpstreamError::Body { addr, source }),
            code::TOPIC_NOT_EXIST => Ok(None),
            other => Err(UpstreamError::Refused {
                addr,
                code: other,
                remark: resp.remark().unwrap_or_default().to_owned(),
            }),
        }
    }
}

/// A nameserver's TopicRouteData as our model: one [`BrokerQueues`] per queue data that has
/// broker addresses, sorted by broker name (stable content versions).
pub fn route_spec(topic: &str, route: &TopicRouteData) -> TopicRouteSpec {
    let mut brokers: Vec<BrokerQueues> = route
        .queue_datas
        .iter()
        .filter_map(|q| {
            let b = route.broker(&q.broker_name)?;
            let addrs: std::collections::BTreeMap<u64, String> = b
                .broker_addrs
                .iter()
                .filter_map(|(&id, addr)| Some((u64::try_from(id).ok()?, addr.clone())))
                .collect();
            if addrs.is_empty() {
                return None;
            }
            Some(BrokerQueues {
                broker_name: q.broker_name.clone(),
                cluster_name: b.cluster.clone(),
                addrs,
                perm: u32::try_from(q.perm).unwrap_or(0),
                read_queue_num: u32::try_from(q.read_queue_nums).unwrap_or(0),
                write_queue_num: u32::try_from(q.write_queue_nums).unwrap_or(0),
            })
        })
        .collect();
    brokers.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
    brokers.dedup_by(|a, b| a.broker_name == b.broker_name);
    TopicRouteSpec {
        topic: topic.to_owned(),
        brokers,
    }
}

type Outcome = (String, Result<Option<TopicRouteData>, UpstreamError>);

/// The fetcher's bookkeeping.
#[derive(Default)]
struct Fetcher {
    /// Found upstream: last successful fetch.
    tracked: HashMap<String, Instant>,
    /// Absent upstream: when marked.
    absent: HashMap<String, Instant>,
    /// Failed queries, retried on the next tick.
    failed: HashSet<String>,
    /// Waiting to be queried, and the set of queued or in-flight topics (no duplicates).
    queue: VecDeque<String>,
    queued: HashSet<String>,
}

impl Fetcher {
    fn enqueue(&mut self, topic: String) {
        if self.queued.insert(topic.clone()) {
            self.queue.push_back(topic);
        }
    }
}

/// Serves the catalog's demand until `shutdown`.
pub async fn run_fetcher(
    upstream: Arc<Upstream>,
    catalog: Arc<Catalog>,
    nameserver: Arc<NameServer>,
    mut demand: mpsc::Receiver<String>,
    shutdown: CancellationToken,
) {
    let opts = upstream.opts.clone();
    let mut state = Fetcher::default();
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(opts.refresh));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut demand_open = true;
    loop {
        while tasks.len() < opts.concurrency.max(1) {
            let Some(topic) = state.queue.pop_front() else {
                break;
            };
            let upstream = upstream.clone();
            tasks.spawn(async move {
                let result = upstream.query(&topic).await;
                (topic, result)
            });
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            topic = demand.recv(), if demand_open => match topic {
                Some(topic) => state.enqueue(topic),
                None => demand_open = false,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                Ok((topic, result)) => {
                    state.queued.remove(&topic);
                    apply(&mut state, &catalog, &nameserver, &opts, topic, result);
                    upstream.applied.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::error!("upstream query task failed: {e}"),
            },
            _ = tick.tick() => refresh(&mut state, &catalog, &opts, Instant::now()),
        }
    }
    // Queries still out are cancelled and awaited: none outlives the fetcher.
    tasks.shutdown().await;
}

fn apply(
    state: &mut Fetcher,
    catalog: &Catalog,
    nameserver: &NameServer,
    opts: &UpstreamOptions,
    topic: String,
    result: Result<Option<TopicRouteData>, UpstreamError>,
) {
    if nameserver.has_topic(&topic) {
        // Registered locally meanwhile: the local registry owns it now.
        state.tracked.remove(&topic);
        state.absent.remove(&topic);
        state.failed.remove(&topic);
        return;
    }
    match result {
        Ok(Some(route)) => {
            state.failed.remove(&topic);
            state.absent.remove(&topic);
            let spec = route_spec(&topic, &route);
            if catalog.set_topic(spec) {
                tracing::debug!(%topic, "upstream route updated");
            }
            if state.tracked.len() < opts.max_tracked || state.tracked.contains_key(&topic) {
                state.tracked.insert(topic, Instant::now());
            } else {
                tracing::warn!(%topic, limit = opts.max_tracked, "too many upstream topics to keep fresh; this one is not refreshed");
            }
        }
        Ok(None) => {
            state.failed.remove(&topic);
            state.tracked.remove(&topic);
            tracing::debug!(%topic, "topic absent upstream");
            catalog.mark_absent(&topic);
            state.absent.insert(topic, Instant::now());
        }
        Err(e) => {
            tracing::debug!(%topic, "upstream query failed: {e}");
            // A known route stays and is tried again at the next refresh; a topic someone is
            // waiting for is retried on the next tick.
            if !state.tracked.contains_key(&topic) {
                state.failed.insert(topic);
            }
        }
    }
}

fn refresh(state: &mut Fetcher, catalog: &Catalog, opts: &UpstreamOptions, now: Instant) {
    let expired: Vec<String> = state
        .absent
        .iter()
        .filter(|(_, at)| now.saturating_duration_since(**at) >= opts.absent_ttl)
        .map(|(t, _)| t.clone())
        .collect();
    for topic in expired {
        state.absent.remove(&topic);
        catalog.forget_absent(&topic);
    }
    let stale: Vec<String> = state
        .tracked
        .iter()
        .filter(|(_, at)| now.saturating_duration_since(**at) >= opts.refresh)
        .map(|(t, _)| t.clone())
        .collect();
    for topic in stale {
        // Re-stamped when the answer arrives; stamping now keeps it from being queued twice.
        state.tracked.insert(topic.clone(), now);
        state.enqueue(topic);
    }
    let failed: Vec<String> = state.failed.drain().collect();
    for topic in failed {
        state.enqueue(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocketmesh_filters::codec::body::{BrokerData, QueueData};

    #[test]
    fn route_data_becomes_a_spec() {
        let route = TopicRouteData {
            queue_datas: vec![
                QueueData {
                    broker_name: "b".into(),
                    perm: 4,
                    read_queue_nums: 2,
                    write_queue_nums: 2,
                    topic_sys_flag: 0,
                },
                QueueData {
                    broker_name: "a".into(),
                    perm: 6,
                    read_queue_nums: 8,
                    write_queue_nums: 8,
                    topic_sys_flag: 0,
                },
                QueueData {
                    broker_name: "no-addrs".into(),
                    perm: 6,
                    ..QueueData::default()
                },
            ],
            broker_datas: vec![
                BrokerData {
                    broker_addrs: [(0, "h:1".to_owned()), (1, "h:2".to_owned())].into(),
                    broker_name: "a".into(),
                    cluster: "C".into(),
                    ..BrokerData::default()
                },
                BrokerData {
                    broker_addrs: [(0, "h:3".to_owned()), (-1, "bad".to_owned())].into(),
                    broker_name: "b".into(),
                    cluster: "C".into(),
                    ..BrokerData::default()
                },
            ],
            ..TopicRouteData::default()
        };
        let spec = route_spec("T", &route);
        assert_eq!(spec.brokers.len(), 2);
        assert_eq!(spec.brokers[0].broker_name, "a");
        assert_eq!(spec.brokers[0].addrs.len(), 2);
        assert_eq!(spec.brokers[1].perm, 4);
        assert_eq!(spec.brokers[1].addrs.len(), 1);
    }
}
