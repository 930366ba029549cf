//! What the ADS task holds and wants: the resource tables ([`Resources`]), the subscriptions per
//! type, and the topics whose route changed since the last snapshot. Lives behind a lock in the
//! client's shared state so `/config_dump` can read the tables when asked; only the ADS task
//! writes it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::cache::{build_table, update_table, Resources, RouteTable, Table};
use crate::model::EndpointSource;
use crate::resources::{topic_of_vhds_name, CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE, VIRTUAL_HOST_TYPE};
use crate::vhds_name;

/// Names subscribed, per type.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    /// Topics subscribed (VHDS `<route_config>/<topic>`), with when they were last wanted.
    pub topics: HashMap<String, Instant>,
    /// Cluster names subscribed.
    pub clusters: HashSet<String>,
    /// EDS service names subscribed.
    pub load_assignments: HashSet<String>,
}

/// SotW: what has arrived once, and the last version ACKed per type.
#[derive(Debug, Default)]
pub(crate) struct SotwProgress {
    pub routes: bool,
    pub clusters: bool,
    pub versions: HashMap<&'static str, String>,
}

/// What `want` did with a topic.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// Already subscribed (its last-wanted time refreshed).
    Known,
    /// Newly subscribed: a VHDS subscription must go out.
    New,
    /// Refused: `max_topics` reached and no missing topic to evict.
    Limit,
}

/// A change of subscriptions for one type (one nonce-less delta request).
#[derive(Debug)]
pub(crate) struct SubscriptionChange {
    pub type_url: &'static str,
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub res: Resources,
    pub subs: Subscriptions,
    pub sotw: SotwProgress,
    /// Topics whose route may have changed since the last snapshot (delta).
    dirty: HashSet<String>,
    /// The reconnect grace (see [`State::begin_grace`]): until then, removals of the resources
    /// in `grace_names` are deferred.
    grace_until: Option<Instant>,
    /// Resources held when the stream came up and not sent again since: (type URL, name).
    grace_names: HashSet<(&'static str, String)>,
    /// Removals deferred by the grace: (type URL, name).
    pub deferred: HashSet<(&'static str, String)>,
}

impl State {
    /// A stream just came up: for `grace`, a removal of a resource the client held at this
    /// moment is deferred, not applied. A control plane that restarted may not know yet what it
    /// knew before (its brokers re-register within an interval) and report a topic gone that
    /// only has not come back yet; the last good route keeps serving meanwhile. A resource the
    /// server sends again is known to it: its deferred removal is cancelled and a later one
    /// applies at once. Removals still deferred when the grace ends are applied then
    /// ([`State::take_deferred`]); so are removals after it, and of resources first received
    /// on this stream.
    pub fn begin_grace(&mut self, grace: Duration) {
        self.deferred.clear();
        self.grace_names.clear();
        self.grace_until = None;
        if grace.is_zero() {
            return;
        }
        let names = self
            .res
            .vhosts
            .held
            .keys()
            .map(|n| (VIRTUAL_HOST_TYPE, n.clone()))
            .chain(
                self.res
                    .clusters
                    .held
                    .keys()
                    .map(|n| (CLUSTER_TYPE, n.clone())),
            )
            .chain(
                self.res
                    .load_assignments
                    .held
                    .keys()
                    .map(|n| (LOAD_ASSIGNMENT_TYPE, n.clone())),
            );
        self.grace_names.extend(names);
        if !self.grace_names.is_empty() {
            self.grace_until = Some(Instant::now() + grace);
        }
    }

    /// Whether a removal of `name` (of `type_url`) is to be deferred now.
    pub fn defers_removal(&self, type_url: &'static str, name: &str) -> bool {
        self.grace_until.is_some_and(|t| Instant::now() < t)
            && self.grace_names.contains(&(type_url, name.to_owned()))
    }

    /// The server sent `name` again: it knows it, so its removal is no longer deferred.
    pub fn confirmed(&mut self, type_url: &'static str, name: &str) {
        if self.grace_names.is_empty() && self.deferred.is_empty() {
            return;
        }
        let key = (type_url, name.to_owned());
        self.grace_names.remove(&key);
        self.deferred.remove(&key);
    }

    /// When the grace ends, if it has not.
    pub fn grace_deadline(&self) -> Option<Instant> {
        self.grace_until.filter(|t| Instant::now() < *t)
    }

    /// Ends the grace: the removals still deferred, to apply now.
    pub fn take_deferred(&mut self) -> HashSet<(&'static str, String)> {
        self.grace_until = None;
        self.grace_names.clear();
        std::mem::take(&mut self.deferred)
    }

    /// Notes that `topics` need resolving again in the next snapshot.
    pub fn touch(&mut self, topics: impl IntoIterator<Item = String>) {
        self.dirty.extend(topics);
    }

    /// SotW: both the route configuration and the clusters have arrived once, so anything not
    /// held does not exist.
    pub fn sotw_complete(&self) -> bool {
        self.sotw.routes && self.sotw.clusters
    }

    /// Registers interest in `topic`.
    pub fn want(&mut self, topic: String, max_topics: usize, route_config: &str) -> Want {
        if let Some(t) = self.subs.topics.get_mut(&topic) {
            *t = Instant::now();
            return Want::Known;
        }
        if self.subs.topics.len() >= max_topics && !self.evict_one_missing(route_config) {
            return Want::Limit;
        }
        self.subs.topics.insert(topic.clone(), Instant::now());
        self.dirty.insert(topic);
        Want::New
    }

    /// Drops the subscribed topic that has been missing longest.
    fn evict_one_missing(&mut self, route_config: &str) -> bool {
        let oldest = self
            .res
            .vhosts
            .missing
            .iter()
            .filter_map(|(name, since)| topic_of_vhds_name(name).map(|t| (t.to_owned(), *since)))
            .filter(|(t, _)| self.subs.topics.contains_key(t))
            .min_by_key(|(_, since)| *since);
        match oldest {
            Some((t, _)) => {
                self.subs.topics.remove(&t);
                self.res.vhosts.missing.remove(&vhds_name(route_config, &t));
                self.dirty.insert(t);
                true
            }
            None => false,
        }
    }

    /// Drops topics that have been missing longer than `ttl` and not asked for within it.
    /// Returns the VHDS names to unsubscribe.
    pub fn expire_missing(&mut self, ttl: Duration, route_config: &str) -> Vec<String> {
        let expired: Vec<String> = self
            .res
            .vhosts
            .missing
            .iter()
            .filter(|(_, since)| since.elapsed() >= ttl)
            .map(|(n, _)| n.clone())
            .collect();
        let mut out = Vec::new();
        for name in expired {
            self.res.vhosts.missing.remove(&name);
            if let Some(t) = topic_of_vhds_name(&name) {
                if self
                    .subs
                    .topics
                    .get(t)
                    .is_some_and(|asked| asked.elapsed() >= ttl)
                {
                    self.subs.topics.remove(t);
                    out.push(vhds_name(route_config, t));
                    self.dirty.insert(t.to_owned());
                }
            }
        }
        out
    }

    /// Subscribed topics whose virtual host names one of `clusters`.
    pub fn topics_using(&self, clusters: &HashSet<String>, route_config: &str) -> Vec<String> {
        if clusters.is_empty() {
            return Vec::new();
        }
        self.subs
            .topics
            .keys()
            .filter(|t| {
                self.res
                    .vhosts
                    .get(&vhds_name(route_config, t))
                    .is_some_and(|v| v.value.routes.iter().any(|r| clusters.contains(&r.cluster)))
            })
            .cloned()
            .collect()
    }

    /// Subscribes to the clusters (and EDS resources) the held virtual hosts (clusters) need, and
    /// unsubscribes from ones nothing needs any more. Each change is its own request.
    pub fn sync_dependencies(&mut self, route_config: &str) -> Vec<SubscriptionChange> {
        let mut out = Vec::new();
        let vhost_names: Vec<String> = self
            .subs
            .topics
            .keys()
            .map(|t| vhds_name(route_config, t))
            .collect();
        let need: HashSet<String> = self.res.clusters_of(vhost_names.iter());
        let add: Vec<String> = need.difference(&self.subs.clusters).cloned().collect();
        let drop: Vec<String> = self.subs.clusters.difference(&need).cloned().collect();
        // A dropped cluster is named by no subscribed topic: no route changes with it.
        for n in &drop {
            self.subs.clusters.remove(n);
            self.res.clusters.held.remove(n);
            self.res.clusters.missing.remove(n);
            self.res.refresh_cluster(n);
        }
        if !add.is_empty() || !drop.is_empty() {
            self.subs.clusters.extend(add.iter().cloned());
            out.push(SubscriptionChange {
                type_url: CLUSTER_TYPE,
                subscribe: add,
                unsubscribe: drop,
            });
        }
        let need_eds: HashSet<String> = self
            .subs
            .clusters
            .iter()
            .filter_map(|c| self.res.clusters.get(c))
            .filter_map(|c| match &c.value.endpoints {
                EndpointSource::Eds(s) => Some(s.clone()),
                EndpointSource::Inline(_) => None,
            })
            .collect();
        let add: Vec<String> = need_eds
            .difference(&self.subs.load_assignments)
            .cloned()
            .collect();
        let drop: Vec<String> = self
            .subs
            .load_assignments
            .difference(&need_eds)
            .cloned()
            .collect();
        for n in &drop {
            self.subs.load_assignments.remove(n);
            self.res.load_assignments.held.remove(n);
            self.res.load_assignments.missing.remove(n);
        }
        if !add.is_empty() || !drop.is_empty() {
            self.subs.load_assignments.extend(add.iter().cloned());
            out.push(SubscriptionChange {
                type_url: LOAD_ASSIGNMENT_TYPE,
                subscribe: add,
                unsubscribe: drop,
            });
        }
        out
    }

    /// Every name subscribed for `type_url`, with the versions held (a stream's first request).
    pub fn initial(
        &self,
        type_url: &str,
        route_config: &str,
    ) -> (Vec<String>, BTreeMap<String, String>) {
        fn held_versions<T>(names: &[String], table: &Table<T>) -> BTreeMap<String, String> {
            names
                .iter()
                .filter_map(|n| table.get(n).map(|h| (n.clone(), h.version.clone())))
                .collect()
        }
        match type_url {
            VIRTUAL_HOST_TYPE => {
                let names: Vec<String> = self
                    .subs
                    .topics
                    .keys()
                    .map(|t| vhds_name(route_config, t))
                    .collect();
                let v = held_versions(&names, &self.res.vhosts);
                (names, v)
            }
            CLUSTER_TYPE => {
                let names: Vec<String> = self.subs.clusters.iter().cloned().collect();
                let v = held_versions(&names, &self.res.clusters);
                (names, v)
            }
            _ => {
                let names: Vec<String> = self.subs.load_assignments.iter().cloned().collect();
                let v = held_versions(&names, &self.res.load_assignments);
                (names, v)
            }
        }
    }

    /// The next snapshot. Delta: only the topics touched since the last one are resolved again;
    /// SotW (`complete_catalogue`): every held virtual host, since a response replaces a whole
    /// table.
    pub fn next_table(
        &mut self,
        route_config: &str,
        complete_catalogue: bool,
        generation: u64,
        previous: &RouteTable,
    ) -> RouteTable {
        let dirty = std::mem::take(&mut self.dirty);
        if complete_catalogue {
            let prefix = format!("{route_config}/");
            let topics: Vec<String> = self
                .res
                .vhosts
                .held
                .keys()
                .filter_map(|n| n.strip_prefix(&prefix).map(str::to_owned))
                .collect();
            return build_table(
                &self.res,
                route_config,
                topics.iter(),
                self.sotw_complete(),
                generation,
                previous,
            );
        }
        let topics = &self.subs.topics;
        update_table(
            &self.res,
            route_config,
            dirty.iter(),
            |t| topics.contains_key(t),
            generation,
            previous,
        )
    }
}
