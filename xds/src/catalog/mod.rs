//! The control plane's resource store: what the ADS server serves.
//!
//! Two kinds of content, usable together:
//! * **topic routes** as a nameserver knows them ([`TopicRouteSpec`], fed by broker registration or
//!   an upstream nameserver). Their VirtualHost / Cluster / ClusterLoadAssignment are derived on
//!   demand ([`crate::resources::build_topic`]), so 100,000 registered topics cost one small record
//!   each, not three materialised protos;
//! * **static resources** (virtual hosts, clusters, load assignments from a YAML file), which take
//!   precedence over derived ones of the same name.
//!
//! Every change bumps a revision, appends the changed keys to a bounded change log and wakes the
//! server's streams through a `watch` channel; a stream that fell behind the log re-checks all of
//! its names. Versions are content hashes ([`content_version`]), stable across restarts, so a
//! reconnecting client's `initial_resource_versions` are honoured.
//!
//! Names the catalog does not know are `Absent`, unless a demand handler is installed (upstream
//! nameserver mode): then the first lookup is `Pending` and the handler is asked to fetch it; the
//! fetcher answers with [`Catalog::set_topic`] or [`Catalog::mark_absent`].
//!
//! **Warm-up.** A control plane that just started holds only what registered since: its brokers
//! re-register within one registration interval. Between [`Catalog::begin_warmup`] and
//! [`Catalog::end_warmup`] a topic not seen since start (never set, removed or marked absent)
//! is `Pending`, not `Absent`, so no client is told that a topic it routes is gone because
//! the registry is still filling. Ending the warm-up records a change for every topic held back
//! that way (streams re-evaluate them: found by then, or now truly absent) and a
//! [`Changed::WarmupEnded`] for streams that held whole responses (SotW).

use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::model::{
    content_version, ClusterSpec, LoadAssignment, TopicPolicy, TopicRouteSpec, VirtualHostSpec,
};
use crate::resources::{build_load_assignment_with, build_topic_with, topic_cluster_name};
use crate::DEFAULT_ROUTE_CONFIG;

/// Most changes remembered for incremental pushes; a stream further behind re-checks everything.
const CHANGE_LOG_LIMIT: usize = 65_536;

/// The result of looking a name up.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<T> {
    Found(T),
    /// The catalog knows the name does not exist.
    Absent,
    /// Being fetched from an upstream nameserver; the answer comes as a change.
    Pending,
}

impl<T> Lookup<T> {
    pub fn found(self) -> Option<T> {
        match self {
            Lookup::Found(t) => Some(t),
            _ => None,
        }
    }
}

/// A resource and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub version: String,
    pub value: Arc<T>,
}

/// A key whose resources changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Changed {
    /// A topic's virtual host (and, for registered topics, its cluster and load assignment).
    Topic(String),
    /// A static cluster or load assignment.
    Cluster(String),
    /// The warm-up ended: what was held back may be answered now.
    WarmupEnded,
}

/// Resource store options.
#[derive(Debug, Clone, Default)]
pub struct CatalogOptions {
    /// Serve endpoints of registered topics through EDS instead of inline.
    pub eds: bool,
    /// TLS of every registered topic's cluster (the control plane's `--cluster-tls-*`): the
    /// sidecars then speak TLS to the brokers, with these files as they see them.
    pub upstream_tls: Option<crate::model::UpstreamTls>,
}

/// While warming up: topics seen since start, and topics answered `Pending` because they were
/// not (recorded as changed when the warm-up ends).
#[derive(Default)]
struct Warmup {
    seen: HashSet<String>,
    held_back: HashSet<String>,
}

#[derive(Default)]
struct State {
    rev: u64,
    routes: HashMap<String, Versioned<TopicRouteSpec>>,
    vhosts: HashMap<String, Versioned<VirtualHostSpec>>,
    clusters: HashMap<String, Versioned<ClusterSpec>>,
    load_assignments: HashMap<String, Versioned<LoadAssignment>>,
    /// Topics an upstream nameserver says do not exist.
    absent: HashSet<String>,
    /// Traffic policies laid over registered topics: the static file's, and the admin API's
    /// (which win for their topic).
    policies_static: HashMap<String, Versioned<TopicPolicy>>,
    policies_api: HashMap<String, Versioned<TopicPolicy>>,
    log: VecDeque<(u64, Changed)>,
}

impl State {
    /// The policy in force for `topic`: the admin API's, else the static file's.
    fn policy(&self, topic: &str) -> Option<&Versioned<TopicPolicy>> {
        self.policies_api
            .get(topic)
            .or_else(|| self.policies_static.get(topic))
    }

    /// A registered topic's version with its policy's folded in.
    fn topic_version(&self, topic: &str, route: &Versioned<TopicRouteSpec>) -> String {
        match self.policy(topic) {
            Some(p) => format!("{}-p{}", route.version, p.version),
            None => route.version.clone(),
        }
    }

    fn record(&mut self, changed: Vec<Changed>) -> bool {
        if changed.is_empty() {
            return false;
        }
        self.rev += 1;
        for c in changed {
            if self.log.len() == CHANGE_LOG_LIMIT {
                self.log.pop_front();
            }
            self.log.push_back((self.rev, c));
        }
        true
    }
}

/// The control plane's resource store. Cheap to share (`Arc<Catalog>`).
pub struct Catalog {
    opts: CatalogOptions,
    state: RwLock<State>,
    changed: watch::Sender<u64>,
    demand: Option<mpsc::Sender<String>>,
    pending: Mutex<HashSet<String>>,
    /// `Some` while warming up (see the module docs). Taken after `state` when both are held.
    warmup: Mutex<Option<Warmup>>,
}

impl Catalog {
    pub fn new(opts: CatalogOptions) -> Self {
        Catalog {
            opts,
            state: RwLock::new(State::default()),
            changed: watch::channel(0).0,
            demand: None,
            pending: Mutex::new(HashSet::new()),
            warmup: Mutex::new(None),
        }
    }

    /// A catalog that asks `demand` for topics it does not know (upstream nameserver mode).
    pub fn with_demand(opts: CatalogOptions, demand: mpsc::Sender<String>) -> Self {
        Catalog {
            demand: Some(demand),
            ..Catalog::new(opts)
        }
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state.read()
    }

    fn write(&self) -> parking_lot::RwLockWriteGuard<'_, State> {
        self.state.write()
    }

    fn publish(&self, rev: u64) {
        self.changed.send_replace(rev);
    }

    /// Starts the warm-up: until [`Catalog::end_warmup`], topics not seen since this call are
    /// `Pending` rather than `Absent`.
    pub fn begin_warmup(&self) {
        let s = self.read();
        let mut seen: HashSet<String> = s.routes.keys().cloned().collect();
        seen.extend(s.vhosts.keys().cloned());
        seen.extend(s.absent.iter().cloned());
        *self.warmup.lock() = Some(Warmup {
            seen,
            held_back: HashSet::new(),
        });
    }

    /// Ends the warm-up (idempotent): every topic held back and not seen since is recorded as
    /// changed, so streams answer it now (absent); returns how many.
    pub fn end_warmup(&self) -> usize {
        let mut s = self.write();
        let Some(w) = self.warmup.lock().take() else {
            return 0;
        };
        // Those seen since were pushed by their own change.
        let mut changed: Vec<Changed> = w
            .held_back
            .into_iter()
            .filter(|t| !w.seen.contains(t))
            .map(Changed::Topic)
            .collect();
        let n = changed.len();
        changed.push(Changed::WarmupEnded);
        s.record(changed);
        let rev = s.rev;
        drop(s);
        self.publish(rev);
        n
    }

    /// Whether the warm-up is on.
    pub fn is_warming(&self) -> bool {
        self.warmup.lock().is_some()
    }

    /// Whether `topic` is unknown only because the warm-up is on (not seen since start): it may
    /// yet be registered, so it must not be reported as absent.
    pub fn warming_unknown(&self, topic: &str) -> bool {
        self.warmup
            .lock()
            .as_ref()
            .is_some_and(|w| !w.seen.contains(topic))
    }

    fn note_seen<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        if let Some(w) = self.warmup.lock().as_mut() {
            for t in topics {
                if !w.seen.contains(t) {
                    w.seen.insert(t.to_owned());
                }
            }
        }
    }

    /// `Absent`, or `Pending` (remembered, answered when the warm-up ends) for a topic the
    /// warm-up holds back.
    fn absent_or_held<T>(&self, topic: &str) -> Lookup<T> {
        match self.warmup.lock().as_mut() {
            Some(w) if !w.seen.contains(topic) => {
                if !w.held_back.contains(topic) {
                    w.held_back.insert(topic.to_owned());
                }
                Lookup::Pending
            }
            _ => Lookup::Absent,
        }
    }

    /// Current revision; bumps on every effective change.
    pub fn revision(&self) -> u64 {
        self.read().rev
    }

    /// Wakes whenever the revision changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Keys changed after revision `since`, or None when the log no longer reaches back that far.
    pub fn changes_since(&self, since: u64) -> Option<(u64, Vec<Changed>)> {
        let s = self.read();
        if since >= s.rev {
            return Some((s.rev, Vec::new()));
        }
        match s.log.front() {
            Some(&(first, _)) if first <= since + 1 => {}
            _ => return None,
        }
        let mut seen = HashSet::new();
        let out = s
            .log
            .iter()
            .filter(|(rev, _)| *rev > since)
            .filter(|(_, c)| seen.insert(c.clone()))
            .map(|(_, c)| c.clone())
            .collect();
        Some((s.rev, out))
    }

    /// Sets (or replaces) a registered topic's route. Returns whether anything changed.
    pub fn set_topic(&self, route: TopicRouteSpec) -> bool {
        let topic = route.topic.clone();
        self.pending.lock().remove(&topic);
        let version = content_version(&route);
        let mut s = self.write();
        self.note_seen([topic.as_str()]);
        let was_absent = s.absent.remove(&topic);
        if !was_absent && s.routes.get(&topic).is_some_and(|v| v.version == version) {
            return false;
        }
        s.routes.insert(
            topic.clone(),
            Versioned {
                version,
                value: Arc::new(route),
            },
        );
        s.record(vec![Changed::Topic(topic)]);
        let rev = s.rev;
        drop(s);
        self.publish(rev);
        true
    }

    /// Applies many topic routes at once (one revision). Topics not in `routes` are kept.
    pub fn set_topics(&self, routes: impl IntoIterator<Item = TopicRouteSpec>) -> usize {
        let mut s = self.write();
        let mut changed = Vec::new();
        for route in routes {
            let version = content_version(&route);
            self.note_seen([route.topic.as_str()]);
            let was_absent = s.absent.remove(&route.topic);
            if !was_absent
                && s.routes
                    .get(&route.topic)
                    .is_some_and(|v| v.version == version)
            {
                continue;
            }
            changed.push(Changed::Topic(route.topic.clone()));
            s.routes.insert(
                route.topic.clone(),
                Versioned {
                    version,
                    value: Arc::new(route),
                },
            );
        }
        let n = changed.len();
        if s.record(changed) {
            let rev = s.rev;
            drop(s);
            self.publish(rev);
        }
        n
    }

    /// Removes a registered topic. Returns whether it existed.
    pub fn remove_topic(&self, topic: &str) -> bool {
        let mut s = self.write();
        if s.routes.remove(topic).is_none() {
            return false;
        }
        s.record(vec![Changed::Topic(topic.to_owned())]);
        let rev = s.rev;
        drop(s);
        self.publish(rev);
        true
    }

    /// Records that an upstream nameserver does not know `topic` (answers Pending lookups).
    pub fn mark_absent(&self, topic: &str) {
        self.pending.lock().remove(topic);
        let mut s = self.write();
        self.note_seen([topic]);
        let existed = s.routes.remove(topic).is_some();
        if !s.absent.insert(topic.to_owned()) && !existed {
            return;
        }
        s.record(vec![Changed::Topic(topic.to_owned())]);
        let rev = s.rev;
        drop(s);
        self.publish(rev);
    }

    /// Forgets that `topic` was absent upstream, so the next lookup asks again.
    pub fn forget_absent(&self, topic: &str) {
        self.write().absent.remove(topic);
    }

    /// Replaces every static resource at once (a static file (re)load). Registered topics stay.
    pub fn replace_static(
        &self,
        vhosts: Vec<VirtualHostSpec>,
        clusters: Vec<ClusterSpec>,
        load_assignments: Vec<LoadAssignment>,
    ) -> usize {
        fn diff<T: serde::Serialize>(
            old: &mut HashMap<String, Versioned<T>>,
            new: Vec<(String, T)>,
            mk: impl Fn(String) -> Changed,
            out: &mut Vec<Changed>,
        ) {
            let mut next = HashMap::with_capacity(new.len());
            for (key, value) in new {
                let version = content_version(&value);
                if old.get(&key).is_none_or(|v| v.version != version) {
                    out.push(mk(key.clone()));
                }
                next.insert(
                    key,
                    Versioned {
                        version,
                        value: Arc::new(value),
                    },
                );
            }
            for key in old.keys() {
                if !next.contains_key(key) {
                    out.push(mk(key.clone()));
                }
            }
            *old = next;
        }
        let mut s = self.write();
        self.note_seen(vhosts.iter().map(|v| v.topic.as_str()));
        let mut changed = Vec::new();
        let vh = vhosts.into_iter().map(|v| (v.topic.clone(), v)).collect();
        diff(&mut s.vhosts, vh, Changed::Topic, &mut changed);
        let cl = clusters.into_iter().map(|c| (c.name.clone(), c)).collect();
        diff(&mut s.clusters, cl, Changed::Cluster, &mut changed);
        let la = load_assignments
            .into_iter()
            .map(|l| (l.cluster_name.clone(), l))
            .collect();
        diff(&mut s.load_assignments, la, Changed::Cluster, &mut changed);
        changed.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        changed.dedup();
        let n = changed.len();
        if s.record(changed) {
            let rev = s.rev;
            drop(s);
            self.publish(rev);
        }
        n
    }

    /// A topic `s` does not hold. Without a demand handler the warm-up is checked under `s`, so
    /// a registration cannot slip in between and be reported absent.
    fn unknown_topic<T>(
        &self,
        s: parking_lot::RwLockReadGuard<'_, State>,
        topic: &str,
    ) -> Lookup<T> {
        let absent = s.absent.contains(topic);
        let Some(demand) = &self.demand else {
            return self.absent_or_held(topic);
        };
        drop(s);
        if absent {
            return Lookup::Absent;
        }
        let mut pending = self.pending.lock();
        if pending.contains(topic) {
            return Lookup::Pending;
        }
        match demand.try_send(topic.to_owned()) {
            Ok(()) => {
                pending.insert(topic.to_owned());
                Lookup::Pending
            }
            // The fetcher is saturated: say so rather than hold a client forever; it will ask again.
            Err(_) => {
                drop(pending);
                self.absent_or_held(topic)
            }
        }
    }

    /// The virtual host of `topic`, named `name` (the requested VHDS name).
    pub fn vhost(&self, topic: &str, name: &str) -> Lookup<Versioned<VirtualHostSpec>> {
        let s = self.read();
        if let Some(v) = s.vhosts.get(topic) {
            let mut spec = (*v.value).clone();
            spec.name = name.to_owned();
            return Lookup::Found(Versioned {
                version: v.version.clone(),
                value: Arc::new(spec),
            });
        }
        if let Some(r) = s.routes.get(topic) {
            let policy = s.policy(topic).map(|p| &*p.value);
            let (vhost, _) = build_topic_with(name, &r.value, policy, self.opts.eds);
            return Lookup::Found(Versioned {
                version: s.topic_version(topic, r),
                value: Arc::new(vhost),
            });
        }
        self.unknown_topic(s, topic)
    }

    /// A cluster by name: static ones first, then the derived cluster of a registered topic.
    pub fn cluster(&self, name: &str) -> Lookup<Versioned<ClusterSpec>> {
        let s = self.read();
        if let Some(c) = s.clusters.get(name) {
            return Lookup::Found(c.clone());
        }
        let Some(topic) = Self::topic_of_cluster(name) else {
            return Lookup::Absent;
        };
        if let Some(r) = s.routes.get(topic) {
            let (_, mut cluster) = build_topic_with(
                &crate::vhds_name(DEFAULT_ROUTE_CONFIG, topic),
                &r.value,
                s.policy(topic).map(|p| &*p.value),
                self.opts.eds,
            );
            cluster.tls = self.opts.upstream_tls.clone();
            return Lookup::Found(Versioned {
                version: self.derived_version(&s.topic_version(topic, r)),
                value: Arc::new(cluster),
            });
        }
        self.unknown_topic(s, topic)
    }

    /// An EDS resource by cluster (service) name.
    pub fn load_assignment(&self, name: &str) -> Lookup<Versioned<LoadAssignment>> {
        let s = self.read();
        if let Some(l) = s.load_assignments.get(name) {
            return Lookup::Found(l.clone());
        }
        let Some(topic) = Self::topic_of_cluster(name) else {
            return Lookup::Absent;
        };
        match s.routes.get(topic) {
            Some(r) => Lookup::Found(Versioned {
                version: s.topic_version(topic, r),
                value: Arc::new(build_load_assignment_with(
                    &r.value,
                    s.policy(topic).map(|p| &*p.value),
                )),
            }),
            None => self.absent_or_held(topic),
        }
    }

    fn derived_version(&self, v: &str) -> String {
        let mut out = v.to_owned();
        if self.opts.eds {
            out.push_str("-eds");
        }
        if let Some(tls) = &self.opts.upstream_tls {
            // A restart with other TLS settings must not look unchanged to clients.
            out.push_str("-tls");
            out.push_str(&crate::model::content_version(tls));
        }
        out
    }

    fn topic_of_cluster(name: &str) -> Option<&str> {
        let prefix = topic_cluster_name("");
        name.strip_prefix(prefix.as_str()).filter(|t| !t.is_empty())
    }

    /// The resource names a change touches, per kind: (topics, cluster / load-assignment names).
    pub fn names_of(change: &Changed) -> (Option<&str>, Vec<String>) {
        match change {
            Changed::Topic(t) => (Some(t), vec![topic_cluster_name(t)]),
            Changed::Cluster(c) => (None, vec![c.clone()]),
            Changed::WarmupEnded => (None, Vec::new()),
        }
    }

    /// Sets (`Some`) or clears the admin API's policy for `topic`; an empty policy clears it.
    /// Returns whether the policy in force changed.
    pub fn set_policy(&self, topic: &str, policy: Option<TopicPolicy>) -> bool {
        let mut s = self.write();
        let before = s.policy(topic).map(|p| p.version.clone());
        match policy.filter(|p| !p.is_empty()) {
            Some(p) => {
                let version = content_version(&p);
                s.policies_api.insert(
                    topic.to_owned(),
                    Versioned {
                        version,
                        value: Arc::new(p),
                    },
                );
            }
            None => {
                s.policies_api.remove(topic);
            }
        }
        self.policy_changed(s, [(topic.to_owned(), before)])
    }

    /// Replaces the static file's policies (a static file (re)load).
    pub fn replace_static_policies(&self, policies: BTreeMap<String, TopicPolicy>) -> bool {
        let mut s = self.write();
        let topics: HashSet<String> = s
            .policies_static
            .keys()
            .cloned()
            .chain(policies.keys().cloned())
            .collect();
        let before: Vec<(String, Option<String>)> = topics
            .into_iter()
            .map(|t| {
                let v = s.policy(&t).map(|p| p.version.clone());
                (t, v)
            })
            .collect();
        s.policies_static = policies
            .into_iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, p)| {
                let version = content_version(&p);
                (
                    t,
                    Versioned {
                        version,
                        value: Arc::new(p),
                    },
                )
            })
            .collect();
        self.policy_changed(s, before)
    }

    /// Records a change for every topic whose policy in force differs from `before`.
    fn policy_changed(
        &self,
        mut s: parking_lot::RwLockWriteGuard<'_, State>,
        before: impl IntoIterator<Item = (String, Option<String>)>,
    ) -> bool {
        let changed: Vec<Changed> = before
            .into_iter()
            .filter(|(t, v)| s.policy(t).map(|p| &p.version) != v.as_ref())
            .map(|(t, _)| Changed::Topic(t))
            .collect();
        if !s.record(changed) {
            return false;
        }
        let rev = s.rev;
        drop(s);
        self.publish(rev);
        true
    }

    /// The policy in force for `topic`, if any.
    pub fn policy(&self, topic: &str) -> Option<Arc<TopicPolicy>> {
        self.read().policy(topic).map(|p| p.value.clone())
    }

    /// Every topic with a policy in force, sorted.
    pub fn policy_topics(&self) -> Vec<String> {
        let s = self.read();
        let mut out: Vec<String> = s
            .policies_api
            .keys()
            .chain(s.policies_static.keys())
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every topic with a virtual host (static or registered), sorted.
    pub fn topics(&self) -> Vec<String> {
        let s = self.read();
        let mut out: Vec<String> = s
            .vhosts
            .keys()
            .chain(s.routes.keys().filter(|t| !s.vhosts.contains_key(*t)))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// Every cluster name (static and derived), sorted.
    pub fn cluster_names(&self) -> Vec<String> {
        let s = self.read();
        let mut out: Vec<String> = s.clusters.keys().cloned().collect();
        out.extend(
            s.routes
                .keys()
                .map(|t| topic_cluster_name(t))
                .filter(|n| !s.clusters.contains_key(n)),
        );
        out.sort();
        out
    }

    /// Registered topic routes (for GET_ROUTEINFO_BY_TOPIC-style reads and introspection).
    pub fn topic_route(&self, topic: &str) -> Option<Arc<TopicRouteSpec>> {
        self.read().routes.get(topic).map(|v| v.value.clone())
    }

    /// Counts for introspection: (registered topics, static vhosts, static clusters, revision).
    pub fn stats(&self) -> BTreeMap<&'static str, u64> {
        let s = self.read();
        BTreeMap::from([
            ("topics", s.routes.len() as u64),
            ("static_virtual_hosts", s.vhosts.len() as u64),
            ("static_clusters", s.clusters.len() as u64),
            ("static_load_assignments", s.load_assignments.len() as u64),
            ("revision", s.rev),
        ])
    }
}

#[cfg(test)]
mod tests;
