//! The nameserver role of the control plane, as a Remoting [`Handler`]: brokers register their
//! topic tables here (REGISTER_BROKER / UNREGISTER_BROKER), clients and tools read routes
//! (GET_ROUTEINFO_BY_TOPIC, GET_BROKER_CLUSTER_INFO, GET_ALL_TOPIC_LIST_FROM_NAMESERVER), and every
//! registry change is pushed into the xDS [`Catalog`] as [`TopicRouteSpec`]s.
//!
//! The registry is keyed by broker address. Brokers with the same name form a group (master id 0
//! plus slaves); a topic's share on a group comes from the master's registration when the master is
//! registered (the master is authoritative: a topic its table no longer has is gone from that
//! group), otherwise from the lowest-id slave that has the topic. A registration's topic table
//! replaces the previous one, so deleted topics and changed perms propagate.
//!
//! Only topics whose route actually changed are recomputed and pushed: a periodic re-registration
//! of an unchanged broker costs one comparison of its table and touches nothing. A broker joining
//! or leaving a group changes the addresses in every route of that group, so those are recomputed.
//!
//! Brokers leave on UNREGISTER_BROKER, when the connection they registered on closes (as Apache's
//! nameserver does on channel close), or when silent longer than the expiry ([`sweep`]).

use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocketmesh_filters::codec::body::{RegisterBrokerBody, RouteJsonStyle};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code as code};
use rocketmesh_filters::codec::headers::{
    GetRouteInfoRequestHeader, RegisterBrokerRequestHeader, RegisterBrokerResponseHeader,
    UnregisterBrokerRequestHeader,
};
use rocketmesh_filters::codec::{CommandHeader, RemotingCommand, ResponseEncoding};
use rocketmesh_xds::catalog::Catalog;
use rocketmesh_xds::resources::valid_topic;
use tokio_util::sync::CancellationToken;

use super::upstream::Upstream;
use crate::remoting::{Connection, Handler};

/// Nameserver settings.
#[derive(Debug, Clone, Copy)]
pub struct NamesrvOptions {
    /// Brokers silent longer than this are removed.
    pub broker_expiry: Duration,
    /// Most brokers (addresses) registered at once; more registrations are refused.
    pub max_brokers: usize,
    /// Encoding of responses.
    pub response_encoding: ResponseEncoding,
}

impl Default for NamesrvOptions {
    fn default() -> Self {
        Self {
            broker_expiry: Duration::from_secs(120),
            max_brokers: 4096,
            response_encoding: ResponseEncoding::Json,
        }
    }
}

mod registry;

use registry::*;

/// The nameserver: registry, catalog feed and request handler.
pub struct NameServer {
    catalog: Arc<Catalog>,
    registry: Mutex<Registry>,
    upstream: Option<Arc<Upstream>>,
    opts: NamesrvOptions,
    /// Set when the control plane shuts down: the connections it closes then are not brokers
    /// leaving (see [`NameServer::begin_shutdown`]).
    shutting_down: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for NameServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameServer")
            .field("brokers", &self.broker_count())
            .field("upstream", &self.upstream)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl NameServer {
    /// A nameserver feeding `catalog`; GET_ROUTEINFO_BY_TOPIC for topics no broker registered here
    /// falls through to `upstream` when given.
    pub fn new(
        catalog: Arc<Catalog>,
        upstream: Option<Arc<Upstream>>,
        opts: NamesrvOptions,
    ) -> Self {
        Self {
            catalog,
            registry: Mutex::new(Registry::default()),
            upstream,
            opts,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The control plane is shutting down: from now on a closed connection does not remove the
    /// brokers registered over it. The control plane closes them itself; removing their topics
    /// would push "removed" to every xDS client before the ADS streams end, and sidecars would
    /// answer TOPIC_NOT_EXIST for topics whose brokers are alive (a restart must not look like
    /// every broker leaving). UNREGISTER_BROKER still removes: that is a broker leaving.
    pub fn begin_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The upstream nameserver this one falls through to, if any.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.upstream.as_ref()
    }

    /// Number of registered brokers (addresses).
    pub fn broker_count(&self) -> usize {
        self.registry.lock().brokers.len()
    }

    /// Number of topics registered brokers serve.
    pub fn topic_count(&self) -> usize {
        self.registry.lock().topic_index.len()
    }

    /// The address of `broker_name`'s registered master, if any.
    pub fn master_addr(&self, broker_name: &str) -> Option<String> {
        let reg = self.registry.lock();
        reg.groups.get(broker_name)?.members.get(&0).cloned()
    }

    /// Whether a registered broker has `topic`.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.registry.lock().topic_index.contains_key(topic)
    }

    /// Recomputes `affected` topics and pushes them into the catalog. Runs under the registry
    /// lock, so pushes are ordered like the registry changes that caused them.
    fn publish(&self, reg: &Registry, affected: HashSet<String>) {
        if affected.is_empty() {
            return;
        }
        let mut set = Vec::new();
        let mut removed = 0usize;
        for topic in affected {
            match reg.route_spec(&topic) {
                Some(spec) => set.push(spec),
                None => {
                    if self.catalog.remove_topic(&topic) {
                        removed += 1;
                    }
                }
            }
        }
        let changed = self.catalog.set_topics(set);
        if changed > 0 || removed > 0 {
            tracing::debug!(changed, removed, "topic routes pushed to the catalog");
        }
    }

    fn remove_where(&self, why: &str, pred: impl Fn(&BrokerEntry) -> bool) -> usize {
        let mut reg = self.registry.lock();
        let gone: Vec<String> = reg
            .brokers
            .iter()
            .filter(|(_, e)| pred(e))
            .map(|(a, _)| a.clone())
            .collect();
        let mut affected = HashSet::new();
        for addr in &gone {
            tracing::info!(%addr, "broker removed: {why}");
            affected.extend(reg.remove(addr));
        }
        self.publish(&reg, affected);
        gone.len()
    }

    /// Removes brokers silent longer than the expiry; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let expiry = self.opts.broker_expiry;
        self.remove_where("silent past the expiry", |e| {
            now.saturating_duration_since(e.last_update) > expiry
        })
    }

    /// Removes the brokers registered over connection `conn_id` (it closed).
    pub fn connection_closed(&self, conn_id: u64) -> usize {
        self.remove_where("its connection closed", |e| e.conn_id == conn_id)
    }

    fn reply(&self, req: &RemotingCommand, code: i32) -> RemotingCommand {
        req.response_to(code, self.opts.response_encoding)
    }

    fn error(
        &self,
        req: &RemotingCommand,
        code: i32,
        remark: impl Into<String>,
    ) -> RemotingCommand {
        self.reply(req, code).with_remark(remark)
    }

    // The error is the finished response, returned straight to the client.
    #[allow(clippy::result_large_err)]
    fn header<H: CommandHeader>(&self, req: &RemotingCommand) -> Result<H, RemotingCommand> {
        H::from_ext(req.ext()).map_err(|e| self.error(req, code::SYSTEM_ERROR, e.to_string()))
    }

    fn register_broker(&self, req: &RemotingCommand, conn_id: u64) -> RemotingCommand {
        let h: RegisterBrokerRequestHeader = match self.header(req) {
            Ok(h) => h,
            Err(resp) => return resp,
        };
        let body = req.body();
        if let Some(expected) = h.body_crc32.filter(|c| *c != 0) {
            if rocketmesh_filters::codec::message::body_crc(body) != expected {
                tracing::warn!(addr = %h.broker_addr, "REGISTER_BROKER body crc32 mismatch");
                return self.error(req, code::SYSTEM_ERROR, "crc32 not match");
            }
        }
        let Ok(broker_id) = u64::try_from(h.broker_id) else {
            return self.error(
                req,
                code::SYSTEM_ERROR,
                format!("invalid brokerId {}", h.broker_id),
            );
        };
        if h.broker_name.is_empty() || h.broker_addr.is_empty() {
            return self.error(
                req,
                code::SYSTEM_ERROR,
                "brokerName and brokerAddr must be set",
            );
        }
        let parsed = if body.is_empty() {
            RegisterBrokerBody::default()
        } else {
            match RegisterBrokerBody::decode(body, h.compressed.unwrap_or(false)) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(addr = %h.broker_addr, "bad REGISTER_BROKER body: {e}");
                    return self.error(req, code::SYSTEM_ERROR, e.to_string());
                }
            }
        };
        let wrapper = parsed.topic_config_serialize_wrapper;
        let mut skipped = 0usize;
        let topics: HashMap<String, QueueConf> = wrapper
            .topic_config_table
            .into_iter()
            .filter_map(|(name, c)| {
                // The table key is the topic; a config naming another topic is a broker bug,
                // the key wins (as Apache's nameserver indexes by it).
                if !valid_topic(&name) {
                    skipped += 1;
                    return None;
                }
                Some((
                    name,
                    QueueConf {
                        perm: c.perm,
                        read: c.read_queue_nums,
                        write: c.write_queue_nums,
                        sys_flag: c.topic_sys_flag,
                    },
                ))
            })
            .collect();
        if skipped > 0 {
            tracing::warn!(addr = %h.broker_addr, skipped, "ignored topics with invalid names");
        }
        let registration = Registration {
            addr: h.broker_addr.clone(),
            broker_name: h.broker_name.clone(),
            broker_id,
            cluster: h.cluster_name,
            ha_addr: h.ha_server_addr,
            topics,
            data_version: wrapper.data_version,
            conn_id,
        };
        let mut reg = self.registry.lock();
        match reg.register(registration, Instant::now(), self.opts.max_brokers) {
            Ok(affected) => {
                self.publish(&reg, affected);
                let (master_addr, ha_server_addr) = reg
                    .master_of(&h.broker_name, broker_id)
                    .map_or((None, None), |(m, ha)| (Some(m), Some(ha)));
                drop(reg);
                self.reply(req, code::SUCCESS)
                    .with_header(&RegisterBrokerResponseHeader {
                        ha_server_addr,
                        master_addr,
                    })
            }
            Err(reason) => {
                drop(reg);
                tracing::warn!(addr = %h.broker_addr, "registration refused: {reason}");
                self.error(req, code::SYSTEM_ERROR, reason)
            }
        }
    }

    fn unregister_broker(&self, req: &RemotingCommand) -> RemotingCommand {
        let h: UnregisterBrokerRequestHeader = match self.header(req) {
            Ok(h) => h,
            Err(resp) => return resp,
        };
        let mut reg = self.registry.lock();
        let matches = reg.brokers.get(&h.broker_addr).is_some_and(|e| {
            e.broker_name == h.broker_name && i64::try_from(e.broker_id).ok() == Some(h.broker_id)
        });
        if matches {
            tracing::info!(addr = %h.broker_addr, name = %h.broker_name, "broker unregistered");
            let affected = reg.remove(&h.broker_addr);
            self.publish(&reg, affected);
        }
        drop(reg);
        self.reply(req, code::SUCCESS)
    }

    async fn route_info(&self, req: &RemotingCommand) -> RemotingCommand {
        let h: GetRouteInfoRequestHeader = match self.header(req) {
            Ok(h) => h,
            Err(resp) => return resp,
        };
        let style = RouteJsonStyle::for_request(
            req.version(),
            h.accept_standard_json_only.unwrap_or(false),
        );
        let local = self.registry.lock().route_data(&h.topic);
        let route = match (local, &self.upstream) {
            (Some(route), _) => Some(route),
            (None, Some(upstream)) => match upstream.query(&h.topic).await {
                Ok(route) => route,
                Err(e) => {
                    return self.error(req, code::SYSTEM_ERROR, format!("upstream nameserver: {e}"))
                }
            },
            (None, None) => None,
        };
        match route {
            Some(route) => self
                .reply(req, code::SUCCESS)
                .with_body(route.encode(style)),
            // Restarted and still warming up: its brokers may not have registered again yet.
            // "Does not exist" would be a claim the registry cannot make; an SDK keeps the
            // route it has and asks again.
            None if self.catalog.warming_unknown(&h.topic) => self.error(
                req,
                code::SYSTEM_ERROR,
                format!(
                    "name server warming up after a restart: no broker has registered topic {} yet",
                    h.topic
                ),
            ),
            None => self.error(
                req,
                code::TOPIC_NOT_EXIST,
                format!(
                    "No topic route info in name server for the topic: {}",
                    h.topic
                ),
            ),
        }
    }

    fn cluster_info(&self, req: &RemotingCommand) -> RemotingCommand {
        let info = self.registry.lock().cluster_info();
        let standard = RouteJsonStyle::for_request(req.version(), false).is_standard();
        self.reply(req, code::SUCCESS)
            .with_body(info.to_json(standard))
    }

    fn topic_list(&self, req: &RemotingCommand) -> RemotingCommand {
        let topics: BTreeSet<String> = self.registry.lock().topic_index.keys().cloned().collect();
        let body = serde_json::json!({ "topicList": topics });
        self.reply(req, code::SUCCESS)
            .with_body(serde_json::to_vec(&body).unwrap_or_default())
    }
}

impl Handler for NameServer {
    async fn handle(
        self: &Arc<Self>,
        req: RemotingCommand,
        conn: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        let resp = match req.code() {
            rc::REGISTER_BROKER => {
                // A large table is parsed and diffed off the runtime's worker threads.
                let ns = self.clone();
                let conn_id = conn.id();
                let work = tokio::task::spawn_blocking(move || {
                    let resp = ns.register_broker(&req, conn_id);
                    (req, resp)
                });
                match work.await {
                    Ok((_, resp)) => resp,
                    Err(e) => {
                        tracing::error!("registration task failed: {e}");
                        return None;
                    }
                }
            }
            rc::UNREGISTER_BROKER => self.unregister_broker(&req),
            rc::GET_ROUTEINFO_BY_TOPIC => self.route_info(&req).await,
            rc::GET_BROKER_CLUSTER_INFO => self.cluster_info(&req),
            rc::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => self.topic_list(&req),
            _ => req.not_supported_response(self.opts.response_encoding),
        };
        Some(resp)
    }

    fn on_close(&self, conn: &Arc<Connection>) {
        if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            tracing::debug!(
                conn = conn.id(),
                "connection closed by the shutdown; its brokers stay registered"
            );
            return;
        }
        self.connection_closed(conn.id());
    }
}

/// The sweep period for an expiry: every min(10 s, expiry / 4).
pub fn sweep_period(expiry: Duration) -> Duration {
    (expiry / 4)
        .min(Duration::from_secs(10))
        .max(Duration::from_millis(10))
}

/// Removes silent brokers until `shutdown`.
pub async fn sweep(ns: Arc<NameServer>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(sweep_period(ns.opts.broker_expiry));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let removed = ns.expire(Instant::now());
        if removed > 0 {
            tracing::info!(removed, "expired silent brokers");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocketmesh_filters::codec::body::DataVersion;
    use rocketmesh_xds::catalog::CatalogOptions;
    use std::collections::BTreeMap;

    fn reg(addr: &str, name: &str, id: u64, topics: &[(&str, i32)]) -> Registration {
        Registration {
            addr: addr.into(),
            broker_name: name.into(),
            broker_id: id,
            cluster: "C".into(),
            ha_addr: format!("{addr}-ha"),
            topics: topics
                .iter()
                .map(|(t, perm)| {
                    (
                        (*t).to_owned(),
                        QueueConf {
                            perm: *perm,
                            read: 4,
                            write: 4,
                            sys_flag: 0,
                        },
                    )
                })
                .collect(),
            data_version: DataVersion::default(),
            conn_id: 1,
        }
    }

    fn sorted(s: HashSet<String>) -> Vec<String> {
        let mut v: Vec<String> = s.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn registry_diffs_only_what_changed() {
        let mut r = Registry::default();
        let now = Instant::now();
        let a = r
            .register(reg("a:1", "A", 0, &[("T1", 6), ("T2", 6)]), now, 10)
            .unwrap();
        assert_eq!(sorted(a), ["T1", "T2"]);
        let same = r
            .register(reg("a:1", "A", 0, &[("T1", 6), ("T2", 6)]), now, 10)
            .unwrap();
        assert!(same.is_empty(), "unchanged re-registration touches nothing");
        let perm = r
            .register(reg("a:1", "A", 0, &[("T1", 4), ("T3", 6)]), now, 10)
            .unwrap();
        assert_eq!(sorted(perm), ["T1", "T2", "T3"]);
        assert!(r.route_spec("T2").is_none());
        assert_eq!(r.route_spec("T1").unwrap().brokers[0].perm, 4);

        // A slave joins: every route of the group gains its address.
        let slave = r
            .register(reg("a:2", "A", 1, &[("T1", 6)]), now, 10)
            .unwrap();
        assert_eq!(sorted(slave), ["T1", "T3"]);
        let spec = r.route_spec("T1").unwrap();
        assert_eq!(spec.brokers.len(), 1);
        assert_eq!(spec.brokers[0].addrs.len(), 2);
        assert_eq!(spec.brokers[0].perm, 4, "the master's config wins");
        assert_eq!(
            r.master_of("A", 1),
            Some(("a:1".to_owned(), "a:1-ha".to_owned()))
        );

        // Master leaves: the slave's config serves T1, T3 is gone.
        let gone = r.remove("a:1");
        assert_eq!(sorted(gone), ["T1", "T3"]);
        assert_eq!(r.route_spec("T1").unwrap().brokers[0].perm, 6);
        assert!(r.route_spec("T3").is_none());
        assert!(!r.topic_index.contains_key("T3"));

        // Limit.
        assert!(r.register(reg("b:1", "B", 0, &[]), now, 1).is_err());
    }

    #[test]
    fn replaced_address_and_promotion() {
        let mut r = Registry::default();
        let now = Instant::now();
        r.register(reg("a:1", "A", 0, &[("T", 6)]), now, 10)
            .unwrap();
        // The same broker comes back on another port.
        r.register(reg("a:9", "A", 0, &[("T", 6)]), now, 10)
            .unwrap();
        assert_eq!(r.brokers.len(), 1);
        let spec = r.route_spec("T").unwrap();
        assert_eq!(
            spec.brokers[0].addrs,
            BTreeMap::from([(0, "a:9".to_owned())])
        );
        // A slave at a:2 is promoted to master at the same address.
        r.register(reg("a:2", "A", 1, &[("T", 6)]), now, 10)
            .unwrap();
        r.register(reg("a:2", "A", 0, &[("T", 4)]), now, 10)
            .unwrap();
        assert_eq!(r.brokers.len(), 1, "a:9 displaced by the new master");
        let spec = r.route_spec("T").unwrap();
        assert_eq!(
            spec.brokers[0].addrs,
            BTreeMap::from([(0, "a:2".to_owned())])
        );
        assert_eq!(r.topic_index["T"]["A"], 1);
    }

    #[test]
    fn unchanged_re_registration_of_many_topics_touches_nothing() {
        let catalog = Arc::new(Catalog::new(CatalogOptions::default()));
        let ns = NameServer::new(catalog.clone(), None, NamesrvOptions::default());
        let names: Vec<String> = (0..100_000).map(|i| format!("T{i}")).collect();
        let topics: Vec<(&str, i32)> = names.iter().map(|t| (t.as_str(), 6)).collect();
        let apply = |r: Registration| {
            let mut g = ns.registry.lock();
            let affected = g.register(r, Instant::now(), 10).unwrap();
            let n = affected.len();
            ns.publish(&g, affected);
            n
        };
        assert_eq!(apply(reg("a:1", "A", 0, &topics)), 100_000);
        assert_eq!(catalog.stats()["topics"], 100_000);
        let rev = catalog.revision();
        assert_eq!(apply(reg("a:1", "A", 0, &topics)), 0);
        assert_eq!(catalog.revision(), rev, "the catalog was not touched");
        let mut one_changed = topics.clone();
        one_changed[7].1 = 4;
        assert_eq!(apply(reg("a:1", "A", 0, &one_changed)), 1);
        assert_eq!(catalog.revision(), rev + 1);
    }

    #[test]
    fn catalog_sees_changes_and_removals() {
        let catalog = Arc::new(Catalog::new(CatalogOptions::default()));
        let ns = NameServer::new(catalog.clone(), None, NamesrvOptions::default());
        {
            let mut r = ns.registry.lock();
            let affected = r
                .register(reg("a:1", "A", 0, &[("T", 6)]), Instant::now(), 10)
                .unwrap();
            ns.publish(&r, affected);
        }
        assert_eq!(catalog.topic_route("T").unwrap().brokers[0].perm, 6);
        let rev = catalog.revision();
        assert_eq!(ns.expire(Instant::now()), 0);
        assert_eq!(catalog.revision(), rev);
        assert_eq!(ns.connection_closed(1), 1);
        assert!(catalog.topic_route("T").is_none());
    }
}
