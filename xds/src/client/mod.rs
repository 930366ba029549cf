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
//!
//! Layout (each module uses only those listed before it):
//! * `config`: settings, [`XdsMode`], [`RouteError`];
//! * `counters`: the counters behind [`ClientStats`];
//! * `subscribe`: the per-topic waits of the data path;
//! * `state`: the resource tables, subscriptions and the topics to rebuild;
//! * `kinds`: the resource types as the generic delta handler sees them;
//! * `delta`, `sotw`: applying responses and building requests, no I/O;
//! * `dump`: `/config_dump`, built when asked;
//! * `shared`: what handles and the task share;
//! * `stream`: the ADS task (connect, streams, reconnect with backoff);
//! * this file: the public [`XdsClient`].

mod config;
mod counters;
mod delta;
mod dump;
mod kinds;
mod shared;
mod sotw;
mod state;
mod stream;
mod subscribe;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};

pub use config::{ClientConfig, RouteError, XdsMode};
pub use counters::ClientStats;
pub use dump::{ConfigDump, DumpedResource, NackInfo};

use crate::cache::{build_table, Held, RouteTable, TopicState};
use crate::model::{ClusterSpec, LoadAssignment, TopicRoute, VirtualHostSpec};
use crate::resources::valid_topic;
use crate::vhds_name;
use counters::Counters;
use shared::{Inner, Status};
use state::State;
use subscribe::Waiters;

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
            waiters: Waiters::default(),
            cmds: Some(tx),
            counters: Counters::new(),
            status: Mutex::new(Status::default()),
            state: Mutex::new(State::default()),
            connected: watch::channel(false).0,
            stop: Notify::new(),
        });
        tokio::spawn(stream::run(inner.clone(), rx));
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
        let mut st = State::default();
        let res = &mut st.res;
        let mut topics = Vec::new();
        for v in vhosts {
            topics.push(v.topic.clone());
            res.vhosts.held.insert(
                vhds_name(route_config, &v.topic),
                Held::new("static".into(), v),
            );
        }
        for la in load_assignments {
            res.load_assignments
                .held
                .insert(la.cluster_name.clone(), Held::new("static".into(), la));
        }
        let names: Vec<String> = clusters.iter().map(|c| c.name.clone()).collect();
        for c in clusters {
            res.clusters
                .held
                .insert(c.name.clone(), Held::new("static".into(), c));
        }
        for n in names {
            res.refresh_cluster(&n);
        }
        let table = build_table(
            res,
            route_config,
            topics.iter(),
            true,
            1,
            &RouteTable::default(),
        );
        let inner = Arc::new(Inner {
            cfg,
            table: ArcSwap::from_pointee(table),
            waiters: Waiters::default(),
            cmds: None,
            counters: Counters::new(),
            status: Mutex::new(Status {
                connected: true,
                ..Default::default()
            }),
            state: Mutex::new(st),
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
        // Re-checked under the waiters' lock: the task swaps the snapshot before it resolves
        // waiters.
        let waiting = match self
            .inner
            .waiters
            .join(topic, || self.lookup(topic).transpose())
        {
            Ok(w) => w,
            Err(known) => return known,
        };
        Counters::add(&self.inner.counters.route_waits, 1);
        let timeout = || RouteError::Timeout {
            topic: topic.to_owned(),
            server: self.inner.cfg.server.clone(),
            waited_ms: self.inner.cfg.route_timeout.as_millis() as u64,
        };
        let wait = async {
            if waiting.created && cmds.send(topic.to_owned()).await.is_err() {
                return Err(RouteError::Stopped);
            }
            subscribe::outcome(waiting.rx).await
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
        self.inner.counters.snapshot()
    }

    /// Current resources with versions, the last NACK and the topics held.
    pub fn config_dump(&self) -> ConfigDump {
        let table = self.snapshot();
        // Built from the tables now, not kept up to date per response. Only names, versions and
        // `Arc`s are taken under the lock; the JSON is made after it is released.
        let held = {
            let st = self.inner.state.lock();
            let sotw = self.inner.status.lock().mode == Some(XdsMode::Sotw);
            if sotw && st.res.vhosts.len() > dump::MAX_SOTW_DUMPED_VHOSTS {
                Vec::new()
            } else {
                dump::collect(&st.res)
            }
        };
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
            resources: dump::render(held),
            stats: self.stats(),
        }
    }

    /// Stops the ADS task. Waiters fail with [`RouteError::Stopped`]; the snapshot stays readable.
    pub fn shutdown(&self) {
        self.inner.stop.notify_one();
    }
}

/// What [`apply_delta_bytes`] left in a fresh client state.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaProbe {
    /// Resources in the response (bodies or not).
    pub resources: usize,
    /// Names they stand for (names and aliases).
    pub names: usize,
    /// Resources held after applying it.
    pub held: usize,
    /// Rejections (each one bad resource, or the whole response for an unknown type).
    pub rejected: usize,
    /// Topics subscribed, and topics in the snapshot built after it.
    pub subscribed_topics: usize,
    pub topics: usize,
}

/// Decodes `bytes` as a `DeltaDiscoveryResponse` and applies it as the ADS task would to a fresh
/// state subscribed to every name the response carries, then builds the snapshot. No I/O. For
/// the fuzz target (`xds/fuzz`) and its CI twin (`xds/tests/decode_fuzz.rs`), not for callers.
#[doc(hidden)]
pub fn apply_delta_bytes(bytes: &[u8]) -> Result<DeltaProbe, prost::DecodeError> {
    use prost::Message;
    let resp = xds_api::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse::decode(bytes)?;
    let rc = crate::DEFAULT_ROUTE_CONFIG;
    let mut st = State::default();
    let mut names = 0;
    for r in &resp.resources {
        for n in std::iter::once(&r.name).chain(&r.aliases) {
            names += 1;
            if let Some(t) = crate::resources::topic_of_vhds_name(n) {
                st.want(t.to_owned(), usize::MAX, rc);
            }
            st.subs.clusters.insert(n.clone());
            st.subs.load_assignments.insert(n.clone());
        }
    }
    let rejected = delta::apply(&mut st, &resp, rc).len();
    let held = st.res.vhosts.len() + st.res.clusters.len() + st.res.load_assignments.len();
    let _ = st.sync_dependencies(rc);
    let table = st.next_table(rc, false, 1, &RouteTable::default());
    Ok(DeltaProbe {
        resources: resp.resources.len(),
        names,
        held,
        rejected,
        subscribed_topics: st.subs.topics.len(),
        topics: table.topics.len(),
    })
}
