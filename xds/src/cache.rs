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

/// The client's working set of resources, by resource name.
#[derive(Debug, Default)]
pub struct Resources {
    pub vhosts: HashMap<String, Held<VirtualHostSpec>>,
    pub clusters: HashMap<String, Held<ClusterSpec>>,
    pub load_assignments: HashMap<String, Held<LoadAssignment>>,
    /// Names the server reported as not existing, per kind.
    pub missing_vhosts: HashMap<String, Instant>,
    pub missing_clusters: HashSet<String>,
    pub missing_load_assignments: HashSet<String>,
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
            .iter()
            .filter(|(_, c)| matches!(&c.value.endpoints, EndpointSource::Eds(s) if s == service))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Resolves `topic` (its virtual host named `<route_config>/<topic>`). `complete` says the
    /// client holds the full catalogue (SotW): anything not present is missing, not pending.
    pub fn resolve(&self, route_config: &str, topic: &str, complete: bool) -> Resolution {
        let name = vhds_name(route_config, topic);
        if self.missing_vhosts.contains_key(&name) {
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
            if self.missing_clusters.contains(cname) {
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
                if !self.load_assignments.contains_key(service)
                    && !self.missing_load_assignments.contains(service)
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
        match res.resolve(route_config, topic, complete) {
            Resolution::Ready(r) => {
                // Keep the previous Arc when nothing changed, so readers holding it stay cheap.
                let state = match previous.route(topic) {
                    Some(prev) if **prev == r => TopicState::Ready(prev.clone()),
                    _ => TopicState::Ready(Arc::new(r)),
                };
                out.insert(topic.clone(), state);
            }
            Resolution::Missing => {
                let since = match previous.get(topic) {
                    Some(TopicState::Missing { since }) => *since,
                    _ => res
                        .missing_vhosts
                        .get(&vhds_name(route_config, topic))
                        .copied()
                        .unwrap_or_else(Instant::now),
                };
                out.insert(topic.clone(), TopicState::Missing { since });
            }
            Resolution::Waiting => {}
        }
    }
    RouteTable {
        generation,
        topics: out,
    }
}
