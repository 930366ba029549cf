//! The sidecar's routing state.
//!
//! [`Resources`] is the xDS client's working set (owned by its task, mutated per response);
//! [`RouteTable`] is the immutable snapshot the data path reads. After every applied change the
//! task builds the next `RouteTable` from `Resources` and swaps it in with `arc-swap`; a request
//! reads one snapshot and never sees half an update.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::model::{
    ClusterSpec, EndpointSource, LoadAssignment, ResolvedCluster, TopicRoute, VirtualHostSpec,
};
use crate::vhds_name;

/// A resource as held by the client, with the version the server gave it.
#[derive(Debug, Clone, Serialize)]
pub struct Held<T> {
    pub version: String,
    pub value: Arc<T>,
    /// When it was applied (for `/config_dump`).
    #[serde(serialize_with = "ser_system_time")]
    pub applied_at: SystemTime,
}

impl<T> Held<T> {
    pub fn new(version: String, value: T) -> Self {
        Held {
            version,
            value: Arc::new(value),
            applied_at: SystemTime::now(),
        }
    }
}

fn ser_system_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    s.serialize_u64(ms)
}

/// How a topic stands in a snapshot.
#[derive(Debug, Clone)]
pub enum TopicState {
    Ready(Arc<TopicRoute>),
    /// The server said it does not exist (or a cluster it names does not).
    Missing {
        since: Instant,
    },
}

/// The immutable routing snapshot the data path reads.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Bumped on every swap.
    pub generation: u64,
    pub topics: HashMap<String, TopicState>,
}

impl RouteTable {
    pub fn get(&self, topic: &str) -> Option<&TopicState> {
        self.topics.get(topic)
    }

    pub fn route(&self, topic: &str) -> Option<&Arc<TopicRoute>> {
        match self.topics.get(topic) {
            Some(TopicState::Ready(r)) => Some(r),
            _ => None,
        }
    }
}

/// One kind of resource as the client holds it: the resources by name, and the names the server
/// reported as not existing (with since when).
#[derive(Debug)]
pub struct Table<T> {
    pub held: HashMap<String, Held<T>>,
    pub missing: HashMap<String, Instant>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            held: HashMap::new(),
            missing: HashMap::new(),
        }
    }
}

impl<T> Table<T> {
    pub fn get(&self, name: &str) -> Option<&Held<T>> {
        self.held.get(name)
    }

    pub fn is_missing(&self, name: &str) -> bool {
        self.missing.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// The client's working set of resources, by resource name.
#[derive(Debug, Default)]
pub struct Resources {
    pub vhosts: Table<VirtualHostSpec>,
    pub clusters: Table<ClusterSpec>,
    pub load_assignments: Table<LoadAssignment>,
    /// Clusters with their endpoints resolved, rebuilt when a cluster or its EDS resource changes.
    resolved: HashMap<String, ResolvedCluster>,
}

/// The outcome of resolving one topic against [`Resources`].
#[derive(Debug)]
pub enum Resolution {
    Ready(TopicRoute),
    Missing,
    /// Something it needs has not arrived yet.
    Waiting,
}

impl Resources {
    /// Re-resolves the endpoints of `cluster` (after it or its EDS resource changed).
    pub fn refresh_cluster(&mut self, cluster: &str) {
        let Some(c) = self.clusters.get(cluster) else {
            self.resolved.remove(cluster);
            return;
        };
        let endpoints: Arc<[_]> = match &c.value.endpoints {
            EndpointSource::Inline(eps) => eps.clone().into(),
            EndpointSource::Eds(service) => match self.load_assignments.get(service) {
                Some(la) => la.value.endpoints.clone().into(),
                None => Arc::from(Vec::new()),
            },
        };
        self.resolved.insert(
            cluster.to_owned(),
            ResolvedCluster {
                spec: c.value.clone(),
                endpoints,
            },
        );
    }

    /// Clusters whose endpoints come from the EDS resource `service`.
    pub fn clusters_using_eds(&self, service: &str) -> Vec<String> {
        self.clusters
            .held
            .iter()
            .filter(|(_, c)| matches!(&c.value.endpoints, EndpointSource::Eds(s) if s == service))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Resolves `topic` (its virtual host named `<route_config>/<topic>`). `complete` says the
    /// client holds the full catalogue (SotW): anything not present is missing, not pending.
    pub fn resolve(&self, route_config: &str, topic: &str, complete: bool) -> Resolution {
        let name = vhds_name(route_config, topic);
        if self.vhosts.is_missing(&name) {
            return Resolution::Missing;
        }
        let Some(vhost) = self.vhosts.get(&name) else {
            return if complete {
                Resolution::Missing
            } else {
                Resolution::Waiting
            };
        };
        let mut clusters = BTreeMap::new();
        for cname in vhost.value.cluster_names() {
            if self.clusters.is_missing(cname) {
                return Resolution::Missing;
            }
            let Some(c) = self.clusters.get(cname) else {
                return if complete {
                    Resolution::Missing
                } else {
                    Resolution::Waiting
                };
            };
            if let EndpointSource::Eds(service) = &c.value.endpoints {
                if !self.load_assignments.held.contains_key(service)
                    && !self.load_assignments.is_missing(service)
                    && !complete
                {
                    return Resolution::Waiting;
                }
            }
            match self.resolved.get(cname) {
                Some(r) => clusters.insert(cname.to_owned(), r.clone()),
                None => return Resolution::Waiting,
            };
        }
        Resolution::Ready(TopicRoute {
            topic: topic.to_owned(),
            vhost: vhost.value.clone(),
            clusters,
        })
    }

    /// Cluster names referenced by the virtual hosts in `names`.
    pub fn clusters_of<'a>(
        &'a self,
        names: impl IntoIterator<Item = &'a String>,
    ) -> HashSet<String> {
        names
            .into_iter()
            .filter_map(|n| self.vhosts.get(n))
            .flat_map(|v| {
                v.value
                    .cluster_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Builds a snapshot of `topics` from `res`. Topics still waiting are left out.
pub fn build_table<'a>(
    res: &Resources,
    route_config: &str,
    topics: impl IntoIterator<Item = &'a String>,
    complete: bool,
    generation: u64,
    previous: &RouteTable,
) -> RouteTable {
    let mut out = HashMap::new();
    for topic in topics {
        if let Some(state) = state_of(res, route_config, topic, complete, previous) {
            out.insert(topic.clone(), state);
        }
    }
    RouteTable {
        generation,
        topics: out,
    }
}

/// The next snapshot after a change that can only have affected the topics in `touched`: every
/// other topic of `previous` is carried over as it is (its `Arc` shared), each touched topic still
/// `wanted` is resolved again, and touched topics no longer wanted are dropped. Delta only (a
/// complete catalogue is rebuilt with [`build_table`]).
pub fn update_table<'a>(
    res: &Resources,
    route_config: &str,
    touched: impl IntoIterator<Item = &'a String>,
    wanted: impl Fn(&str) -> bool,
    generation: u64,
    previous: &RouteTable,
) -> RouteTable {
    let mut topics = previous.topics.clone();
    for topic in touched {
        let state = if wanted(topic) {
            state_of(res, route_config, topic, false, previous)
        } else {
            None
        };
        match state {
            Some(s) => topics.insert(topic.clone(), s),
            None => topics.remove(topic),
        };
    }
    RouteTable { generation, topics }
}

/// How `topic` stands in the next snapshot (`None`: still waiting, left out).
fn state_of(
    res: &Resources,
    route_config: &str,
    topic: &str,
    complete: bool,
    previous: &RouteTable,
) -> Option<TopicState> {
    match res.resolve(route_config, topic, complete) {
        Resolution::Ready(r) => {
            // Keep the previous Arc when nothing changed, so readers holding it stay cheap.
            Some(match previous.route(topic) {
                Some(prev) if **prev == r => TopicState::Ready(prev.clone()),
                _ => TopicState::Ready(Arc::new(r)),
            })
        }
        Resolution::Missing => {
            let since = match previous.get(topic) {
                Some(TopicState::Missing { since }) => *since,
                _ => res
                    .vhosts
                    .missing
                    .get(&vhds_name(route_config, topic))
                    .copied()
                    .unwrap_or_else(Instant::now),
            };
            Some(TopicState::Missing { since })
        }
        Resolution::Waiting => None,
    }
}
