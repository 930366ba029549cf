//! The sidecar's xDS client: delta ADS with explicit, on-demand subscriptions (VirtualHost via VHDS
//! names `<route_config>/<topic>`, then the clusters those name, then EDS for clusters that use
//! it), and a SotW fallback (wildcard CDS + the whole RouteConfiguration) for servers without
//! delta.
//!
//! Discipline (ztunnel's client is the model; no code taken from it):
//! * every response is ACKed with its nonce, or NACKed with `error_detail`; rejected resources keep
//!   the last good version, accepted ones in the same response are applied;
//! * subscription changes go in their own nonce-less requests;
//! * `removed_resources` (or a resource without a body) means "does not exist": waiters fail at once;
//! * reconnect with jittered exponential backoff 10 ms -> 15 s, re-sending the subscriptions with
//!   `initial_resource_versions`; the last good snapshot keeps serving while disconnected.
//!
//! The data path calls [`XdsClient::route`]: a snapshot hit costs one `ArcSwap` load and a hash
//! lookup; a miss parks the caller on a per-topic watch shared by every concurrent waiter (one
//! subscription however many wait), bounded by a deadline.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint as GrpcEndpoint};
use tracing::{debug, info, warn};
use xds_api::pb::envoy::config::core::v3 as pb_core;
use xds_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds_api::pb::google::rpc::Status as RpcStatus;

use crate::cache::{build_table, Held, Resources, RouteTable, TopicState};
use crate::model::{ClusterSpec, EndpointSource, LoadAssignment, TopicRoute, VirtualHostSpec};
use crate::resources::{
    cluster_from_proto, from_any, load_assignment_from_proto, route_config_from_proto,
    topic_of_vhds_name, valid_topic, vhost_from_proto, CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE,
    ROUTE_CONFIGURATION_TYPE, VIRTUAL_HOST_TYPE,
};
use crate::{vhds_name, DEFAULT_ROUTE_CONFIG};

const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// google.rpc.Code INVALID_ARGUMENT, sent in NACKs.
const INVALID_ARGUMENT: i32 = 3;

/// Which ADS flavour to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdsMode {
    /// Delta with on-demand subscriptions; falls back to SotW if the server does not implement delta.
    Auto,
    Delta,
    /// State of the world: wildcard CDS and the whole RouteConfiguration. Holds every topic of the
    /// catalogue in memory: the memory-hungry mode, for servers without delta.
    Sotw,
}

/// xDS client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` (or a full `http://` URI) of the ADS server.
    pub server: String,
    pub node_id: String,
    pub node_cluster: String,
    /// RDS route configuration name; VHDS names are `<route_config>/<topic>`.
    pub route_config: String,
    pub mode: XdsMode,
    /// How long `route()` waits by default.
    pub route_timeout: Duration,
    /// A topic the server says does not exist stays subscribed this long (so its creation is
    /// pushed), then is dropped; the next request asks again.
    pub missing_ttl: Duration,
    /// Most topics subscribed at once. Past it, the oldest missing topics are dropped first; if
    /// none is missing, new topics are refused.
    pub max_topics: usize,
    pub connect_timeout: Duration,
    /// Largest xDS message accepted.
    pub max_message_bytes: usize,
}

impl ClientConfig {
    pub fn new(server: impl Into<String>) -> Self {
        ClientConfig {
            server: server.into(),
            node_id: format!("sidecar~127.0.0.1~rocketmesh-{}.local", std::process::id()),
            node_cluster: "rocketmesh".into(),
            route_config: DEFAULT_ROUTE_CONFIG.into(),
            mode: XdsMode::Auto,
            route_timeout: Duration::from_secs(5),
            missing_ttl: Duration::from_secs(30),
            max_topics: 100_000,
            connect_timeout: Duration::from_secs(2),
            max_message_bytes: 64 << 20,
        }
    }
}

/// Why `route()` gave no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("topic {0} does not exist")]
    Missing(String),
    #[error("no route for topic {topic} from the xDS server at {server} within {waited_ms} ms")]
    Timeout {
        topic: String,
        server: String,
        waited_ms: u64,
    },
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    #[error("subscription limit reached ({0} topics)")]
    Limit(usize),
    #[error("xDS client stopped")]
    Stopped,
}

/// Counters, for tests and `/stats`.
#[derive(Debug, Default)]
struct Counters {
    vhost_subscribes: AtomicU64,
    cluster_subscribes: AtomicU64,
    requests_sent: AtomicU64,
    responses: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
    route_waits: AtomicU64,
}

/// A snapshot of the client's counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ClientStats {
    /// Virtual host names subscribed (a name counted once per subscription, not per waiter).
    pub vhost_subscribes: u64,
    pub cluster_subscribes: u64,
    pub requests_sent: u64,
    pub responses: u64,
    pub acks: u64,
    pub nacks: u64,
    pub connects: u64,
    pub disconnects: u64,
    /// `route()` calls that had to wait for the server.
    pub route_waits: u64,
}

/// The last rejected response.
#[derive(Debug, Clone, Serialize)]
pub struct NackInfo {
    pub type_url: String,
    pub nonce: String,
    pub message: String,
    #[serde(serialize_with = "ser_time")]
    pub at: SystemTime,
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// One held resource, for `/config_dump`.
#[derive(Debug, Clone, Serialize)]
pub struct DumpedResource {
    pub type_url: &'static str,
    pub name: String,
    pub version: String,
    pub resource: serde_json::Value,
}

/// What `/config_dump` shows of the xDS client.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigDump {
    pub server: String,
    pub mode: XdsMode,
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_nack: Option<NackInfo>,
    pub generation: u64,
    pub topics_ready: Vec<String>,
    pub topics_missing: Vec<String>,
    pub resources: Vec<DumpedResource>,
    pub stats: ClientStats,
}

#[derive(Debug, Default)]
struct Status {
    connected: bool,
    last_error: Option<String>,
    last_nack: Option<NackInfo>,
    mode: Option<XdsMode>,
    resources: Vec<DumpedResource>,
}

type Outcome = Option<Result<(), RouteError>>;

struct Inner {
    cfg: ClientConfig,
    table: ArcSwap<RouteTable>,
    /// Per-topic waiters; the entry is removed (and its watch fired) when the topic resolves.
    waiters: Mutex<HashMap<String, watch::Sender<Outcome>>>,
    cmds: Option<mpsc::Sender<String>>,
    counters: Counters,
    status: Mutex<Status>,
    connected: watch::Sender<bool>,
    stop: Notify,
}

/// Handle to the xDS client; cheap to clone. The ADS task stops when the last handle is dropped
/// or on [`XdsClient::shutdown`].
#[derive(Clone)]
pub struct XdsClient {
    inner: Arc<Inner>,
    _guard: Arc<StopOnDrop>,
}

struct StopOnDrop(Arc<Inner>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.notify_one();
    }
}

impl XdsClient {
    /// Starts the ADS task (on the current runtime). Returns at once; see
    /// [`XdsClient::wait_connected`].
    pub fn start(cfg: ClientConfig) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let inner = Arc::new(Inner {
            cfg,
            table: ArcSwap::from_pointee(RouteTable::default()),
            waiters: Mutex::new(HashMap::new()),
            cmds: Some(tx),
            counters: Counters::default(),
            status: Mutex::new(Status::default()),
            connected: watch::channel(false).0,
            stop: Notify::new(),
        });
        tokio::spawn(run(inner.clone(), rx));
        XdsClient {
            _guard: Arc::new(StopOnDrop(inner.clone())),
            inner,
        }
    }

    /// A client without a server: routes come from static resources (a bootstrap file) only.
    pub fn from_static(
        route_config: &str,
        vhosts: Vec<VirtualHostSpec>,
        clusters: Vec<ClusterSpec>,
        load_assignments: Vec<LoadAssignment>,
    ) -> Self {
        let mut cfg = ClientConfig::new("static");
        cfg.route_config = route_config.to_owned();
        let mut res = Resources::default();
        let mut topics = Vec::new();
        for v in vhosts {
            topics.push(v.topic.clone());
            res.vhosts.insert(
                vhds_name(route_config, &v.topic),
                Held::new("static".into(), v),
            );
        }
        for la in load_assignments {
            res.load_assignments
                .insert(la.cluster_name.clone(), Held::new("static".into(), la));
        }
        let names: Vec<String> = clusters.iter().map(|c| c.name.clone()).collect();
        for c in clusters {
            res.clusters
                .insert(c.name.clone(), Held::new("static".into(), c));
        }
        for n in names {
            res.refresh_cluster(&n);
        }
        let table = build_table(
            &res,
            route_config,
            topics.iter(),
            true,
            1,
            &RouteTable::default(),
        );
        let inner = Arc::new(Inner {
            cfg,
            table: ArcSwap::from_pointee(table),
            waiters: Mutex::new(HashMap::new()),
            cmds: None,
            counters: Counters::default(),
            status: Mutex::new(Status {
                connected: true,
                resources: dump(&res),
                ..Default::default()
            }),
            connected: watch::channel(true).0,
            stop: Notify::new(),
        });
        XdsClient {
            _guard: Arc::new(StopOnDrop(inner.clone())),
            inner,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.inner.table.load_full()
    }

    /// The route of `topic`, waiting at most the configured route timeout.
    pub async fn route(&self, topic: &str) -> Result<Arc<TopicRoute>, RouteError> {
        self.route_until(topic, Instant::now() + self.inner.cfg.route_timeout)
            .await
    }

    /// The route of `topic`, waiting until `deadline` at the latest. Concurrent callers for one
    /// topic share one subscription.
    pub async fn route_until(
        &self,
        topic: &str,
        deadline: Instant,
    ) -> Result<Arc<TopicRoute>, RouteError> {
        if let Some(r) = self.lookup(topic)? {
            return Ok(r);
        }
        if !valid_topic(topic) {
            return Err(RouteError::InvalidTopic(topic.to_owned()));
        }
        let Some(cmds) = &self.inner.cmds else {
            return Err(RouteError::Missing(topic.to_owned()));
        };
        let (mut rx, created) = {
            let mut waiters = self.inner.waiters.lock();
            // Re-check under the lock: the task swaps the snapshot before it resolves waiters.
            if let Some(r) = self.lookup(topic)? {
                return Ok(r);
            }
            match waiters.get(topic) {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = watch::channel(None);
                    waiters.insert(topic.to_owned(), tx);
                    (rx, true)
                }
            }
        };
        self.inner
            .counters
            .route_waits
            .fetch_add(1, Ordering::Relaxed);
        let timeout = || RouteError::Timeout {
            topic: topic.to_owned(),
            server: self.inner.cfg.server.clone(),
            waited_ms: self.inner.cfg.route_timeout.as_millis() as u64,
        };
        let wait = async {
            if created && cmds.send(topic.to_owned()).await.is_err() {
                return Err(RouteError::Stopped);
            }
            loop {
                if let Some(outcome) = rx.borrow_and_update().clone() {
                    return outcome;
                }
                if rx.changed().await.is_err() {
                    // The sender was dropped without an outcome: the task stopped.
                    return Err(RouteError::Stopped);
                }
            }
        };
        match tokio::time::timeout_at(deadline.into(), wait).await {
            Ok(Ok(())) => self.lookup(topic)?.ok_or_else(timeout),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timeout()),
        }
    }

    fn lookup(&self, topic: &str) -> Result<Option<Arc<TopicRoute>>, RouteError> {
        match self.inner.table.load().get(topic) {
            Some(TopicState::Ready(r)) => Ok(Some(r.clone())),
            Some(TopicState::Missing { .. }) => Err(RouteError::Missing(topic.to_owned())),
            None => Ok(None),
        }
    }

    /// Waits until the ADS stream is up (or `timeout` passes). Static clients are always connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        ClientStats {
            vhost_subscribes: c.vhost_subscribes.load(Ordering::Relaxed),
            cluster_subscribes: c.cluster_subscribes.load(Ordering::Relaxed),
            requests_sent: c.requests_sent.load(Ordering::Relaxed),
            responses: c.responses.load(Ordering::Relaxed),
            acks: c.acks.load(Ordering::Relaxed),
            nacks: c.nacks.load(Ordering::Relaxed),
            connects: c.connects.load(Ordering::Relaxed),
            disconnects: c.disconnects.load(Ordering::Relaxed),
            route_waits: c.route_waits.load(Ordering::Relaxed),
        }
    }

    /// Current resources with versions, the last NACK and the topics held.
    pub fn config_dump(&self) -> ConfigDump {
        let table = self.snapshot();
        let status = self.inner.status.lock();
        let mut ready = Vec::new();
        let mut missing = Vec::new();
        for (t, s) in &table.topics {
            match s {
                TopicState::Ready(_) => ready.push(t.clone()),
                TopicState::Missing { .. } => missing.push(t.clone()),
            }
        }
        ready.sort();
        missing.sort();
        ConfigDump {
            server: self.inner.cfg.server.clone(),
            mode: status.mode.unwrap_or(self.inner.cfg.mode),
            connected: status.connected,
            last_error: status.last_error.clone(),
            last_nack: status.last_nack.clone(),
            generation: table.generation,
            topics_ready: ready,
            topics_missing: missing,
            resources: status.resources.clone(),
            stats: self.stats(),
        }
    }

    /// Stops the ADS task. Waiters fail with [`RouteError::Stopped`]; the snapshot stays readable.
    pub fn shutdown(&self) {
        self.inner.stop.notify_one();
    }
}

fn dump(res: &Resources) -> Vec<DumpedResource> {
    fn add<T: Serialize>(
        out: &mut Vec<DumpedResource>,
        type_url: &'static str,
        held: &HashMap<String, Held<T>>,
    ) {
        out.extend(held.iter().map(|(name, h)| DumpedResource {
            type_url,
            name: name.clone(),
            version: h.version.clone(),
            resource: serde_json::to_value(&*h.value).unwrap_or(serde_json::Value::Null),
        }));
    }
    let mut out = Vec::new();
    add(&mut out, VIRTUAL_HOST_TYPE, &res.vhosts);
    add(&mut out, CLUSTER_TYPE, &res.clusters);
    add(&mut out, LOAD_ASSIGNMENT_TYPE, &res.load_assignments);
    out.sort_by(|a, b| (a.type_url, &a.name).cmp(&(b.type_url, &b.name)));
    out
}

// =============================================================================================
// the ADS task

/// What the task wants from the server and what it holds.
struct Task {
    inner: Arc<Inner>,
    res: Resources,
    /// Topics subscribed (VHDS), with when they were last wanted.
    topics: HashMap<String, Instant>,
    /// Cluster / EDS names subscribed.
    clusters: HashSet<String>,
    load_assignments: HashSet<String>,
    /// SotW: both the route configuration and the clusters have arrived once.
    sotw_routes: bool,
    sotw_clusters: bool,
    sotw_versions: HashMap<&'static str, String>,
    mode: XdsMode,
    generation: u64,
}

/// Why a stream ended.
enum StreamEnd {
    Stopped,
    Error(String),
    Unimplemented,
}

async fn run(inner: Arc<Inner>, mut cmds: mpsc::Receiver<String>) {
    let mut task = Task {
        mode: if inner.cfg.mode == XdsMode::Sotw {
            XdsMode::Sotw
        } else {
            XdsMode::Delta
        },
        inner,
        res: Resources::default(),
        topics: HashMap::new(),
        clusters: HashSet::new(),
        load_assignments: HashSet::new(),
        sotw_routes: false,
        sotw_clusters: false,
        sotw_versions: HashMap::new(),
        generation: 0,
    };
    let mut backoff = INITIAL_BACKOFF;
    let stop = task.inner.clone();
    let stopped = stop.stop.notified();
    tokio::pin!(stopped);
    loop {
        let started = Instant::now();
        let end = tokio::select! {
            _ = &mut stopped => StreamEnd::Stopped,
            end = task.connect_and_run(&mut cmds) => end,
        };
        task.set_connected(false, None);
        match end {
            StreamEnd::Stopped => break,
            StreamEnd::Unimplemented
                if task.inner.cfg.mode == XdsMode::Auto && task.mode == XdsMode::Delta =>
            {
                warn!(server = %task.inner.cfg.server, "server does not implement delta xDS; falling back to SotW (holds the full catalogue)");
                task.mode = XdsMode::Sotw;
                continue;
            }
            StreamEnd::Unimplemented => {
                task.set_error("server does not implement this ADS stream".into())
            }
            StreamEnd::Error(e) => task.set_error(e),
        }
        task.inner
            .counters
            .disconnects
            .fetch_add(1, Ordering::Relaxed);
        // A stream that lived a while resets the backoff.
        if started.elapsed() > Duration::from_secs(5) {
            backoff = INITIAL_BACKOFF;
        }
        let sleep_for = backoff.mul_f64(0.5 + fastrand::f64());
        backoff = (backoff * 2).min(MAX_BACKOFF);
        debug!(?sleep_for, "xDS reconnect backoff");
        let sleep = tokio::time::sleep(sleep_for);
        tokio::pin!(sleep);
        // Keep taking subscriptions while away; they go out on reconnect.
        loop {
            tokio::select! {
                _ = &mut stopped => return task.fail_all(RouteError::Stopped),
                _ = &mut sleep => break,
                cmd = cmds.recv() => match cmd {
                    Some(topic) => {
                        task.want(topic);
                    }
                    None => return task.fail_all(RouteError::Stopped),
                },
            }
        }
        task.expire_missing();
    }
    task.fail_all(RouteError::Stopped);
}

fn uri(server: &str) -> String {
    if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    }
}

impl Task {
    fn set_connected(&self, up: bool, mode: Option<XdsMode>) {
        let mut s = self.inner.status.lock();
        s.connected = up;
        if up {
            s.last_error = None;
            s.mode = mode;
        }
        drop(s);
        self.inner.connected.send_replace(up);
    }

    fn set_error(&self, e: String) {
        warn!(server = %self.inner.cfg.server, error = %e, "xDS stream ended; serving the last good config");
        self.inner.status.lock().last_error = Some(e);
    }

    fn node(&self) -> pb_core::Node {
        pb_core::Node {
            id: self.inner.cfg.node_id.clone(),
            cluster: self.inner.cfg.node_cluster.clone(),
            user_agent_name: "rocketmesh".into(),
            ..Default::default()
        }
    }

    async fn connect_and_run(&mut self, cmds: &mut mpsc::Receiver<String>) -> StreamEnd {
        let endpoint = match GrpcEndpoint::from_shared(uri(&self.inner.cfg.server)) {
            Ok(e) => e
                .connect_timeout(self.inner.cfg.connect_timeout)
                .tcp_nodelay(true),
            Err(e) => return StreamEnd::Error(format!("bad xDS server address: {e}")),
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return StreamEnd::Error(format!("connect {}: {e}", self.inner.cfg.server)),
        };
        let client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.inner.cfg.max_message_bytes)
            .max_encoding_message_size(self.inner.cfg.max_message_bytes);
        match self.mode {
            XdsMode::Sotw => self.run_sotw(client, cmds).await,
            _ => self.run_delta(client, cmds).await,
        }
    }

    // ----- topics wanted -----------------------------------------------------------------

    /// Registers interest in `topic`. Returns whether a new subscription is needed.
    fn want(&mut self, topic: String) -> bool {
        // Already resolved (e.g. the caller raced a swap): wake it now.
        let state = self.resolve_state(&topic);
        if let Some(outcome) = state {
            self.notify(&topic, outcome);
        }
        if let Some(t) = self.topics.get_mut(&topic) {
            *t = Instant::now();
            return false;
        }
        if self.topics.len() >= self.inner.cfg.max_topics && !self.evict_one_missing() {
            self.notify(&topic, Err(RouteError::Limit(self.inner.cfg.max_topics)));
            return false;
        }
        self.topics.insert(topic, Instant::now());
        true
    }

    fn resolve_state(&self, topic: &str) -> Option<Result<(), RouteError>> {
        match self.inner.table.load().get(topic) {
            Some(TopicState::Ready(_)) => Some(Ok(())),
            Some(TopicState::Missing { .. }) => Some(Err(RouteError::Missing(topic.to_owned()))),
            None if self.mode == XdsMode::Sotw && self.sotw_routes && self.sotw_clusters => {
                Some(Err(RouteError::Missing(topic.to_owned())))
            }
            None => None,
        }
    }

    fn evict_one_missing(&mut self) -> bool {
        let rc = &self.inner.cfg.route_config;
        let oldest = self
            .res
            .missing_vhosts
            .iter()
            .filter_map(|(name, since)| topic_of_vhds_name(name).map(|t| (t.to_owned(), *since)))
            .filter(|(t, _)| self.topics.contains_key(t))
            .min_by_key(|(_, since)| *since);
        match oldest {
            Some((t, _)) => {
                self.topics.remove(&t);
                self.res.missing_vhosts.remove(&vhds_name(rc, &t));
                true
            }
            None => false,
        }
    }

    /// Drops topics that have been missing longer than the TTL (delta only). Returns the VHDS
    /// names to unsubscribe.
    fn expire_missing(&mut self) -> Vec<String> {
        if self.mode == XdsMode::Sotw {
            return Vec::new();
        }
        let ttl = self.inner.cfg.missing_ttl;
        let rc = self.inner.cfg.route_config.clone();
        let expired: Vec<String> = self
            .res
            .missing_vhosts
            .iter()
            .filter(|(_, since)| since.elapsed() >= ttl)
            .map(|(n, _)| n.clone())
            .collect();
        let mut out = Vec::new();
        for name in expired {
            self.res.missing_vhosts.remove(&name);
            if let Some(t) = topic_of_vhds_name(&name) {
                if self
                    .topics
                    .get(t)
                    .is_some_and(|asked| asked.elapsed() >= ttl)
                {
                    self.topics.remove(t);
                    out.push(vhds_name(&rc, t));
                }
            }
        }
        if !out.is_empty() {
            self.publish();
        }
        out
    }

    fn notify(&self, topic: &str, outcome: Result<(), RouteError>) {
        let mut waiters = self.inner.waiters.lock();
        if let Some(tx) = waiters.remove(topic) {
            tx.send_replace(Some(outcome));
        }
    }

    fn fail_all(&self, e: RouteError) {
        let mut waiters = self.inner.waiters.lock();
        for (_, tx) in waiters.drain() {
            tx.send_replace(Some(Err(e.clone())));
        }
    }

    /// Builds and swaps the next snapshot, then wakes waiters whose topic resolved.
    fn publish(&mut self) {
        self.generation += 1;
        let complete = self.mode == XdsMode::Sotw;
        let rc = self.inner.cfg.route_config.clone();
        let previous = self.inner.table.load_full();
        let table = if complete {
            let topics: Vec<String> = self
                .res
                .vhosts
                .keys()
                .filter_map(|n| n.strip_prefix(&format!("{rc}/")).map(str::to_owned))
                .collect();
            build_table(
                &self.res,
                &rc,
                topics.iter(),
                self.sotw_routes && self.sotw_clusters,
                self.generation,
                &previous,
            )
        } else {
            build_table(
                &self.res,
                &rc,
                self.topics.keys(),
                false,
                self.generation,
                &previous,
            )
        };
        self.inner.table.store(Arc::new(table));
        {
            let mut s = self.inner.status.lock();
            s.resources = if complete && self.res.vhosts.len() > 1000 {
                Vec::new()
            } else {
                dump(&self.res)
            };
        }
        let pending: Vec<String> = {
            let waiters = self.inner.waiters.lock();
            waiters.keys().cloned().collect()
        };
        for topic in pending {
            if let Some(outcome) = self.resolve_state(&topic) {
                self.notify(&topic, outcome);
            }
        }
    }

    fn record_nack(&self, type_url: &str, nonce: &str, message: &str) {
        warn!(
            type_url,
            nonce,
            error = message,
            "rejecting xDS update; keeping the last good resources"
        );
        self.inner.counters.nacks.fetch_add(1, Ordering::Relaxed);
        self.inner.status.lock().last_nack = Some(NackInfo {
            type_url: type_url.to_owned(),
            nonce: nonce.to_owned(),
            message: message.to_owned(),
            at: SystemTime::now(),
        });
    }

    // ----- delta -------------------------------------------------------------------------

    fn delta_subscribe(
        &self,
        type_url: &str,
        names: Vec<String>,
        unsubscribe: Vec<String>,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names_subscribe: names,
            resource_names_unsubscribe: unsubscribe,
            ..Default::default()
        }
    }

    /// The first request of a stream for one type: every name held or wanted, with versions.
    fn delta_initial(&self, type_url: &str) -> Option<DeltaDiscoveryRequest> {
        let rc = &self.inner.cfg.route_config;
        fn held_versions<T>(
            names: &[String],
            held: &HashMap<String, Held<T>>,
        ) -> BTreeMap<String, String> {
            names
                .iter()
                .filter_map(|n| held.get(n).map(|h| (n.clone(), h.version.clone())))
                .collect()
        }
        let (names, versions) = match type_url {
            VIRTUAL_HOST_TYPE => {
                let names: Vec<String> = self.topics.keys().map(|t| vhds_name(rc, t)).collect();
                let v = held_versions(&names, &self.res.vhosts);
                (names, v)
            }
            CLUSTER_TYPE => {
                let names: Vec<String> = self.clusters.iter().cloned().collect();
                let v = held_versions(&names, &self.res.clusters);
                (names, v)
            }
            _ => {
                let names: Vec<String> = self.load_assignments.iter().cloned().collect();
                let v = held_versions(&names, &self.res.load_assignments);
                (names, v)
            }
        };
        if names.is_empty() {
            return None;
        }
        Some(DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names_subscribe: names,
            initial_resource_versions: versions.into_iter().collect(),
            ..Default::default()
        })
    }

    async fn run_delta(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        cmds: &mut mpsc::Receiver<String>,
    ) -> StreamEnd {
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
        let mut first = true;
        let mut initial = Vec::new();
        for t in [VIRTUAL_HOST_TYPE, CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE] {
            if let Some(mut req) = self.delta_initial(t) {
                if first {
                    req.node = Some(self.node());
                    first = false;
                }
                initial.push(req);
            }
        }
        // Queue the initial requests before opening the stream (the channel has room).
        for req in initial {
            let _ = tx.try_send(req);
        }
        let response = match client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r,
            Err(s) if s.code() == tonic::Code::Unimplemented => return StreamEnd::Unimplemented,
            Err(s) => return StreamEnd::Error(format!("delta ADS: {s}")),
        };
        let mut stream = response.into_inner();
        self.inner.counters.connects.fetch_add(1, Ordering::Relaxed);
        self.set_connected(true, Some(XdsMode::Delta));
        info!(server = %self.inner.cfg.server, "delta ADS stream up");
        let mut sweep =
            tokio::time::interval(self.inner.cfg.missing_ttl.max(Duration::from_millis(100)) / 2);
        sweep.tick().await;
        let node = self.node();
        let inner = self.inner.clone();
        let send = |req: DeltaDiscoveryRequest, first: &mut bool| {
            let mut req = req;
            if *first {
                req.node = Some(node.clone());
                *first = false;
            }
            inner.counters.requests_sent.fetch_add(1, Ordering::Relaxed);
            req
        };
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let resp = match msg {
                        None => return StreamEnd::Error("server closed the stream".into()),
                        Some(Err(s)) if s.code() == tonic::Code::Unimplemented => return StreamEnd::Unimplemented,
                        Some(Err(s)) => return StreamEnd::Error(format!("delta ADS: {s}")),
                        Some(Ok(r)) => r,
                    };
                    self.inner.counters.responses.fetch_add(1, Ordering::Relaxed);
                    let (ack, follow) = self.apply_delta(resp);
                    if tx.send(send(ack, &mut first)).await.is_err() {
                        return StreamEnd::Error("request stream closed".into());
                    }
                    for req in follow {
                        if tx.send(send(req, &mut first)).await.is_err() {
                            return StreamEnd::Error("request stream closed".into());
                        }
                    }
                }
                cmd = cmds.recv() => {
                    let Some(topic) = cmd else { return StreamEnd::Stopped };
                    let mut new = Vec::new();
                    if self.want(topic.clone()) { new.push(topic); }
                    // Batch whatever else is queued into the same request.
                    while let Ok(t) = cmds.try_recv() {
                        if self.want(t.clone()) { new.push(t); }
                    }
                    if !new.is_empty() {
                        let rc = self.inner.cfg.route_config.clone();
                        let names: Vec<String> = new.iter().map(|t| vhds_name(&rc, t)).collect();
                        self.inner.counters.vhost_subscribes.fetch_add(names.len() as u64, Ordering::Relaxed);
                        debug!(?names, "subscribing (VHDS)");
                        let req = self.delta_subscribe(VIRTUAL_HOST_TYPE, names, Vec::new());
                        if tx.send(send(req, &mut first)).await.is_err() {
                            return StreamEnd::Error("request stream closed".into());
                        }
                    }
                }
                _ = sweep.tick() => {
                    let gone = self.expire_missing();
                    if !gone.is_empty() {
                        debug!(?gone, "unsubscribing missing topics");
                        let req = self.delta_subscribe(VIRTUAL_HOST_TYPE, Vec::new(), gone);
                        if tx.send(send(req, &mut first)).await.is_err() {
                            return StreamEnd::Error("request stream closed".into());
                        }
                    }
                }
            }
        }
    }

    /// Applies one delta response. Returns the ACK/NACK and any follow-up subscription changes.
    fn apply_delta(
        &mut self,
        resp: DeltaDiscoveryResponse,
    ) -> (DeltaDiscoveryRequest, Vec<DeltaDiscoveryRequest>) {
        let mut errors: Vec<String> = Vec::new();
        let type_url = resp.type_url.clone();
        let rc = self.inner.cfg.route_config.clone();
        let mut removed: Vec<String> = resp.removed_resources.clone();
        match type_url.as_str() {
            VIRTUAL_HOST_TYPE => {
                for r in &resp.resources {
                    let names: Vec<String> = if r.aliases.is_empty() {
                        vec![r.name.clone()]
                    } else {
                        r.aliases.clone()
                    };
                    let Some(any) = &r.resource else {
                        // VHDS: a resource without a body means the name does not resolve.
                        removed.extend(names);
                        continue;
                    };
                    let parsed = from_any(VIRTUAL_HOST_TYPE, any)
                        .map_err(|e| format!("VirtualHost {:?}: {e}", r.name))
                        .and_then(|p| {
                            let mut out = Vec::new();
                            for n in &names {
                                out.push(vhost_from_proto(n, &p).map_err(|e| e.to_string())?);
                            }
                            Ok(out)
                        });
                    match parsed {
                        Ok(specs) => {
                            for spec in specs {
                                let n = spec.name.clone();
                                self.res.missing_vhosts.remove(&n);
                                self.res
                                    .vhosts
                                    .insert(n, Held::new(r.version.clone(), spec));
                            }
                        }
                        Err(e) => errors.push(e),
                    }
                }
                let now = Instant::now();
                for n in removed {
                    self.res.vhosts.remove(&n);
                    if topic_of_vhds_name(&n).is_some_and(|t| self.topics.contains_key(t)) {
                        self.res.missing_vhosts.insert(n, now);
                    }
                }
            }
            CLUSTER_TYPE => {
                for r in &resp.resources {
                    let Some(any) = &r.resource else {
                        removed.push(r.name.clone());
                        continue;
                    };
                    match from_any(CLUSTER_TYPE, any)
                        .map_err(|e| format!("Cluster {:?}: {e}", r.name))
                        .and_then(|p| cluster_from_proto(&p).map_err(|e| e.to_string()))
                    {
                        Ok(spec) if spec.name != r.name => errors.push(format!(
                            "Cluster {:?}: resource name differs from cluster name {:?}",
                            r.name, spec.name
                        )),
                        Ok(spec) => {
                            self.res.missing_clusters.remove(&r.name);
                            self.res
                                .clusters
                                .insert(r.name.clone(), Held::new(r.version.clone(), spec));
                            self.res.refresh_cluster(&r.name);
                        }
                        Err(e) => errors.push(e),
                    }
                }
                for n in removed {
                    self.res.clusters.remove(&n);
                    self.res.refresh_cluster(&n);
                    if self.clusters.contains(&n) {
                        self.res.missing_clusters.insert(n);
                    }
                }
            }
            LOAD_ASSIGNMENT_TYPE => {
                for r in &resp.resources {
                    let Some(any) = &r.resource else {
                        removed.push(r.name.clone());
                        continue;
                    };
                    match from_any(LOAD_ASSIGNMENT_TYPE, any)
                        .map_err(|e| format!("ClusterLoadAssignment {:?}: {e}", r.name))
                        .and_then(|p| load_assignment_from_proto(&p).map_err(|e| e.to_string()))
                    {
                        Ok(la) => {
                            self.res.missing_load_assignments.remove(&r.name);
                            self.res
                                .load_assignments
                                .insert(r.name.clone(), Held::new(r.version.clone(), la));
                            for c in self.res.clusters_using_eds(&r.name) {
                                self.res.refresh_cluster(&c);
                            }
                        }
                        Err(e) => errors.push(e),
                    }
                }
                for n in removed {
                    self.res.load_assignments.remove(&n);
                    if self.load_assignments.contains(&n) {
                        self.res.missing_load_assignments.insert(n.clone());
                    }
                    for c in self.res.clusters_using_eds(&n) {
                        self.res.refresh_cluster(&c);
                    }
                }
            }
            other => errors.push(format!("unexpected type_url {other:?}")),
        }
        let follow = self.sync_dependencies(&rc);
        self.publish();
        let mut ack = DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        };
        if errors.is_empty() {
            self.inner.counters.acks.fetch_add(1, Ordering::Relaxed);
        } else {
            let message = errors.join("; ");
            self.record_nack(&type_url, &resp.nonce, &message);
            ack.error_detail = Some(RpcStatus {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            });
        }
        (ack, follow)
    }

    /// Subscribes to clusters (and EDS resources) the held virtual hosts (clusters) need, and
    /// unsubscribes from ones nothing needs any more. Each change is its own nonce-less request.
    fn sync_dependencies(&mut self, rc: &str) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        let vhost_names: Vec<String> = self.topics.keys().map(|t| vhds_name(rc, t)).collect();
        let need: HashSet<String> = self.res.clusters_of(vhost_names.iter());
        let add: Vec<String> = need.difference(&self.clusters).cloned().collect();
        let drop: Vec<String> = self.clusters.difference(&need).cloned().collect();
        for n in &drop {
            self.clusters.remove(n);
            self.res.clusters.remove(n);
            self.res.missing_clusters.remove(n);
            self.res.refresh_cluster(n);
        }
        if !add.is_empty() || !drop.is_empty() {
            self.inner
                .counters
                .cluster_subscribes
                .fetch_add(add.len() as u64, Ordering::Relaxed);
            self.clusters.extend(add.iter().cloned());
            out.push(self.delta_subscribe(CLUSTER_TYPE, add, drop));
        }
        let need_eds: HashSet<String> = self
            .clusters
            .iter()
            .filter_map(|c| self.res.clusters.get(c))
            .filter_map(|c| match &c.value.endpoints {
                EndpointSource::Eds(s) => Some(s.clone()),
                EndpointSource::Inline(_) => None,
            })
            .collect();
        let add: Vec<String> = need_eds
            .difference(&self.load_assignments)
            .cloned()
            .collect();
        let drop: Vec<String> = self
            .load_assignments
            .difference(&need_eds)
            .cloned()
            .collect();
        for n in &drop {
            self.load_assignments.remove(n);
            self.res.load_assignments.remove(n);
            self.res.missing_load_assignments.remove(n);
        }
        if !add.is_empty() || !drop.is_empty() {
            self.load_assignments.extend(add.iter().cloned());
            out.push(self.delta_subscribe(LOAD_ASSIGNMENT_TYPE, add, drop));
        }
        out
    }

    // ----- SotW --------------------------------------------------------------------------

    fn sotw_request(
        &self,
        type_url: &str,
        version: &str,
        nonce: &str,
        error: Option<String>,
    ) -> DiscoveryRequest {
        let names = match type_url {
            ROUTE_CONFIGURATION_TYPE => vec![self.inner.cfg.route_config.clone()],
            LOAD_ASSIGNMENT_TYPE => {
                let mut n: Vec<String> = self.load_assignments.iter().cloned().collect();
                n.sort();
                n
            }
            _ => Vec::new(),
        };
        DiscoveryRequest {
            version_info: version.to_owned(),
            type_url: type_url.to_owned(),
            resource_names: names,
            response_nonce: nonce.to_owned(),
            error_detail: error.map(|message| RpcStatus {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    async fn run_sotw(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        cmds: &mut mpsc::Receiver<String>,
    ) -> StreamEnd {
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
        let mut first = self.sotw_request(CLUSTER_TYPE, "", "", None);
        first.node = Some(self.node());
        let _ = tx.try_send(first);
        let _ = tx.try_send(self.sotw_request(ROUTE_CONFIGURATION_TYPE, "", "", None));
        if !self.load_assignments.is_empty() {
            let _ = tx.try_send(self.sotw_request(LOAD_ASSIGNMENT_TYPE, "", "", None));
        }
        let response = match client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r,
            Err(s) => return StreamEnd::Error(format!("SotW ADS: {s}")),
        };
        let mut stream = response.into_inner();
        self.inner.counters.connects.fetch_add(1, Ordering::Relaxed);
        self.set_connected(true, Some(XdsMode::Sotw));
        info!(server = %self.inner.cfg.server, "SotW ADS stream up (wildcard CDS + full RouteConfiguration)");
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let resp = match msg {
                        None => return StreamEnd::Error("server closed the stream".into()),
                        Some(Err(s)) => return StreamEnd::Error(format!("SotW ADS: {s}")),
                        Some(Ok(r)) => r,
                    };
                    self.inner.counters.responses.fetch_add(1, Ordering::Relaxed);
                    for req in self.apply_sotw(resp) {
                        self.inner.counters.requests_sent.fetch_add(1, Ordering::Relaxed);
                        if tx.send(req).await.is_err() {
                            return StreamEnd::Error("request stream closed".into());
                        }
                    }
                }
                cmd = cmds.recv() => {
                    let Some(topic) = cmd else { return StreamEnd::Stopped };
                    // Everything is already subscribed; just note the interest (and answer it if known).
                    self.want(topic);
                }
            }
        }
    }

    fn apply_sotw(&mut self, resp: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        let type_url = resp.type_url.as_str();
        let mut errors = Vec::new();
        let mut follow = Vec::new();
        match type_url {
            CLUSTER_TYPE => {
                let mut next: HashMap<String, Held<ClusterSpec>> =
                    HashMap::with_capacity(resp.resources.len());
                for any in &resp.resources {
                    match from_any(CLUSTER_TYPE, any)
                        .and_then(|p| cluster_from_proto(&p).map_err(|e| e.to_string()))
                    {
                        Ok(spec) => {
                            let version = match self.res.clusters.get(&spec.name) {
                                Some(old) if *old.value == spec => old.version.clone(),
                                _ => resp.version_info.clone(),
                            };
                            next.insert(spec.name.clone(), Held::new(version, spec));
                        }
                        Err(e) => errors.push(e),
                    }
                }
                if errors.is_empty() {
                    let names: Vec<String> = next.keys().cloned().collect();
                    self.res.clusters = next;
                    self.res.missing_clusters.clear();
                    self.clusters = names.iter().cloned().collect();
                    for n in &names {
                        self.res.refresh_cluster(n);
                    }
                    self.sotw_clusters = true;
                    let eds: HashSet<String> = self
                        .res
                        .clusters
                        .values()
                        .filter_map(|c| match &c.value.endpoints {
                            EndpointSource::Eds(s) => Some(s.clone()),
                            EndpointSource::Inline(_) => None,
                        })
                        .collect();
                    if eds != self.load_assignments {
                        self.load_assignments = eds;
                        follow.push(
                            self.sotw_request(
                                LOAD_ASSIGNMENT_TYPE,
                                self.sotw_versions
                                    .get(LOAD_ASSIGNMENT_TYPE)
                                    .map(String::as_str)
                                    .unwrap_or(""),
                                "",
                                None,
                            ),
                        );
                    }
                }
            }
            ROUTE_CONFIGURATION_TYPE => {
                let rc = self.inner.cfg.route_config.clone();
                let mut next = HashMap::new();
                for any in &resp.resources {
                    let parsed = from_any::<
                        xds_api::pb::envoy::config::route::v3::RouteConfiguration,
                    >(ROUTE_CONFIGURATION_TYPE, any)
                    .and_then(|p| {
                        if p.name != rc {
                            return Ok(None);
                        }
                        route_config_from_proto(&p)
                            .map(Some)
                            .map_err(|e| e.to_string())
                    });
                    match parsed {
                        Ok(Some(vhosts)) => {
                            for v in vhosts {
                                let version = match self.res.vhosts.get(&v.name) {
                                    Some(old) if *old.value == v => old.version.clone(),
                                    _ => resp.version_info.clone(),
                                };
                                next.insert(v.name.clone(), Held::new(version, v));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => errors.push(e),
                    }
                }
                if errors.is_empty() {
                    self.res.vhosts = next;
                    self.res.missing_vhosts.clear();
                    self.sotw_routes = true;
                }
            }
            LOAD_ASSIGNMENT_TYPE => {
                let mut next = HashMap::new();
                for any in &resp.resources {
                    match from_any(LOAD_ASSIGNMENT_TYPE, any)
                        .and_then(|p| load_assignment_from_proto(&p).map_err(|e| e.to_string()))
                    {
                        Ok(la) => {
                            next.insert(
                                la.cluster_name.clone(),
                                Held::new(resp.version_info.clone(), la),
                            );
                        }
                        Err(e) => errors.push(e),
                    }
                }
                if errors.is_empty() {
                    self.res.load_assignments = next;
                    let names: Vec<String> = self.res.clusters.keys().cloned().collect();
                    for n in names {
                        self.res.refresh_cluster(&n);
                    }
                }
            }
            other => errors.push(format!("unexpected type_url {other:?}")),
        }
        let reply = if errors.is_empty() {
            self.inner.counters.acks.fetch_add(1, Ordering::Relaxed);
            if let Some(k) = [CLUSTER_TYPE, ROUTE_CONFIGURATION_TYPE, LOAD_ASSIGNMENT_TYPE]
                .into_iter()
                .find(|k| *k == type_url)
            {
                self.sotw_versions.insert(k, resp.version_info.clone());
            }
            self.publish();
            self.sotw_request(type_url, &resp.version_info, &resp.nonce, None)
        } else {
            let message = errors.join("; ");
            self.record_nack(type_url, &resp.nonce, &message);
            let last = self
                .sotw_versions
                .get(type_url)
                .cloned()
                .unwrap_or_default();
            self.sotw_request(type_url, &last, &resp.nonce, Some(message))
        };
        let mut out = vec![reply];
        out.extend(follow);
        out
    }
}
