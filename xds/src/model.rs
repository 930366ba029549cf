//! rocketmesh's own view of routing resources. Nothing here depends on the xDS protos: the
//! conversions live in [`crate::resources`], so the rest of the code (data path, control plane,
//! admin) sees these types only.
//!
//! * [`VirtualHostSpec`]: one per topic (`domains: [topic]`), an ordered list of [`RouteRule`]s that
//!   match the request code (and, for Envoy-shaped configs, `broker_name`/`broker_id`) and name a
//!   cluster plus an `envoy.lb` subset.
//! * [`ClusterSpec`]: a set of broker [`Endpoint`]s (inline, or from EDS) with subset-LB settings.
//! * [`TopicRoute`]: what the data path gets from `route(topic)`: the virtual host and every cluster
//!   it names, resolved.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Endpoint metadata namespace read by Envoy's `rocketmq_proxy` filter (broker_name, broker_id,
/// cluster_name, perm, read_queue_num, write_queue_num).
pub const ROCKETMQ_METADATA: &str = "envoy.filters.network.rocketmq_proxy";
/// Endpoint metadata namespace used by Envoy's subset load balancer.
pub const LB_METADATA: &str = "envoy.lb";

/// RocketMQ permission bits (`PermName`).
pub mod perm {
    pub const PRIORITY: u32 = 8;
    pub const READ: u32 = 4;
    pub const WRITE: u32 = 2;
    pub const INHERIT: u32 = 1;
}

/// A scalar metadata value as used in `envoy.lb` subset matching. Envoy compares
/// `google.protobuf.Value`s by kind and content; so do we (a bool never equals the string "true").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetaValue {
    Bool(bool),
    /// Integral numbers. Envoy numbers are doubles; non-integral ones are rejected on conversion.
    Number(i64),
    String(String),
}

impl From<bool> for MetaValue {
    fn from(v: bool) -> Self {
        MetaValue::Bool(v)
    }
}
impl From<i64> for MetaValue {
    fn from(v: i64) -> Self {
        MetaValue::Number(v)
    }
}
impl From<&str> for MetaValue {
    fn from(v: &str) -> Self {
        MetaValue::String(v.to_owned())
    }
}

/// One broker address in a cluster, with the metadata Envoy's filter and subset LB read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// `host:port` the sidecar connects to.
    pub address: String,
    pub broker_name: String,
    /// 0 = master.
    pub broker_id: u64,
    /// The RocketMQ cluster the broker belongs to (TopicRouteData `cluster`).
    pub cluster_name: String,
    /// RocketMQ perm of this topic on this broker (see [`perm`]).
    pub perm: u32,
    pub read_queue_num: u32,
    pub write_queue_num: u32,
    /// `envoy.lb` metadata for subset selection (e.g. `writable: true`, `role: "master"`).
    #[serde(default)]
    pub lb: BTreeMap<String, MetaValue>,
    /// Envoy's `LbEndpoint.load_balancing_weight` (1..): this broker's share of the writes
    /// among the writable subset. `None` on every endpoint: shares follow queue counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl Endpoint {
    /// Whether this endpoint carries every `key: value` of `subset` in its `envoy.lb` metadata.
    pub fn matches(&self, subset: &BTreeMap<String, MetaValue>) -> bool {
        subset.iter().all(|(k, v)| self.lb.get(k) == Some(v))
    }

    pub fn is_master(&self) -> bool {
        self.broker_id == 0
    }
}

/// What happens when a route's subset matches no endpoint (Envoy `LbSubsetFallbackPolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubsetFallback {
    /// No endpoint: a send never lands on a read-only broker.
    #[default]
    NoFallback,
    AnyEndpoint,
    DefaultSubset(BTreeMap<String, MetaValue>),
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointSource {
    /// Inline `load_assignment`.
    Inline(Vec<Endpoint>),
    /// EDS: a ClusterLoadAssignment resource with this name.
    Eds(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub name: String,
    pub endpoints: EndpointSource,
    /// `lb_subset_config.subset_selectors[].keys`. Empty = every subset key set is allowed.
    #[serde(default)]
    pub subset_selectors: Vec<Vec<String>>,
    #[serde(default)]
    pub fallback: SubsetFallback,
    /// Upstream connect timeout, milliseconds.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// TLS to the cluster's endpoints (Envoy's `transport_socket` with an
    /// `UpstreamTlsContext`); None = plaintext, or the sidecar's `--upstream-tls-*`. Left out
    /// of the canonical JSON when absent, so plaintext clusters keep their content versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

/// A cluster's upstream TLS, the file-based shape Istio sends: files as the *sidecar* sees
/// them (mounted certificates), the SNI to send, and the identities the broker must present.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpstreamTls {
    /// `validation_context.trusted_ca.filename`: the CA bundle.
    pub ca_file: String,
    /// `tls_certificates[0]`: the client certificate and key (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// `match_typed_subject_alt_names` (DNS / URI / IP) and `match_subject_alt_names` (any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<rocketmesh_remoting::tls::SanMatcher>,
}

/// An EDS resource (ClusterLoadAssignment).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoadAssignment {
    pub cluster_name: String,
    pub endpoints: Vec<Endpoint>,
}

/// How a header value is matched (Envoy `StringMatcher` / `HeaderMatcher` subset).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Full-string match of a RE2-style pattern.
    Regex(#[serde(with = "regex_serde")] Arc<regex::Regex>),
    Present,
}

impl PartialEq for StringMatch {
    fn eq(&self, other: &Self) -> bool {
        use StringMatch::*;
        match (self, other) {
            (Exact(a), Exact(b))
            | (Prefix(a), Prefix(b))
            | (Suffix(a), Suffix(b))
            | (Contains(a), Contains(b)) => a == b,
            (Regex(a), Regex(b)) => a.as_str() == b.as_str(),
            (Present, Present) => true,
            _ => false,
        }
    }
}
impl Eq for StringMatch {}

impl std::hash::Hash for StringMatch {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            StringMatch::Exact(s)
            | StringMatch::Prefix(s)
            | StringMatch::Suffix(s)
            | StringMatch::Contains(s) => s.hash(state),
            StringMatch::Regex(r) => r.as_str().hash(state),
            StringMatch::Present => {}
        }
    }
}

impl StringMatch {
    /// Compiles `pattern` anchored at both ends, the way Envoy's safe_regex matches a whole value.
    pub fn regex(pattern: &str) -> Result<Self, regex::Error> {
        Ok(StringMatch::Regex(compile_full(pattern)?))
    }

    pub fn matches(&self, value: Option<&str>) -> bool {
        let Some(v) = value else { return false };
        match self {
            StringMatch::Exact(s) => v == s,
            StringMatch::Prefix(s) => v.starts_with(s.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Contains(s) => v.contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(v),
            StringMatch::Present => true,
        }
    }
}

/// Most distinct patterns kept compiled for reuse. Control planes repeat the same few patterns in
/// every virtual host, so interning turns "one compiled regex per route per topic" (tens of KiB
/// each) into one per pattern.
const REGEX_CACHE_LIMIT: usize = 1024;

static REGEX_CACHE: std::sync::LazyLock<
    parking_lot::Mutex<std::collections::HashMap<String, Arc<regex::Regex>>>,
> = std::sync::LazyLock::new(Default::default);

fn compile_full(pattern: &str) -> Result<Arc<regex::Regex>, regex::Error> {
    let mut cache = REGEX_CACHE.lock();
    if let Some(r) = cache.get(pattern) {
        return Ok(r.clone());
    }
    // Compile the bare pattern first: it proves the pattern is balanced on its own, so wrapping it
    // cannot change its meaning (e.g. "a)|(b").
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()?;
    let r = Arc::new(
        regex::RegexBuilder::new(&anchored(pattern))
            .size_limit(1 << 20)
            .build()?,
    );
    if cache.len() < REGEX_CACHE_LIMIT {
        cache.insert(pattern.to_owned(), r.clone());
    }
    Ok(r)
}

fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// The original (un-anchored) pattern of a compiled full-match regex.
pub fn regex_source(r: &regex::Regex) -> &str {
    r.as_str()
        .strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(r.as_str())
}

mod regex_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        r: &std::sync::Arc<regex::Regex>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(super::regex_source(r))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<std::sync::Arc<regex::Regex>, D::Error> {
        let p = String::deserialize(d)?;
        super::compile_full(&p).map_err(serde::de::Error::custom)
    }
}

/// A header matcher on the synthetic request headers (`code`, and for acks `broker_name` /
/// `broker_id`), like Envoy's filter builds them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    pub matcher: StringMatch,
    #[serde(default)]
    pub invert: bool,
}

/// One route of a topic's virtual host: first match wins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteRule {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    pub cluster: String,
    /// `metadata_match.filter_metadata["envoy.lb"]`.
    #[serde(default)]
    pub subset: BTreeMap<String, MetaValue>,
}

/// The request attributes routes can match on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteRequest<'a> {
    pub code: i32,
    pub broker_name: Option<&'a str>,
    pub broker_id: Option<u64>,
}

impl RouteRule {
    pub fn matches(&self, req: &RouteRequest<'_>) -> bool {
        let code = req.code.to_string();
        let id = req.broker_id.map(|i| i.to_string());
        self.headers.iter().all(|h| {
            let value = match h.name.as_str() {
                "code" => Some(code.as_str()),
                "broker_name" => req.broker_name,
                "broker_id" => id.as_deref(),
                _ => None,
            };
            h.matcher.matches(value) != h.invert
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VirtualHostSpec {
    /// Resource name (`<route_config>/<topic>` when served through VHDS).
    pub name: String,
    pub topic: String,
    pub routes: Vec<RouteRule>,
}

impl VirtualHostSpec {
    /// Cluster names in route order, without duplicates.
    pub fn cluster_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.routes {
            if !out.contains(&r.cluster.as_str()) {
                out.push(&r.cluster);
            }
        }
        out
    }
}

/// A cluster with its endpoints resolved (inline or from EDS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedCluster {
    pub spec: Arc<ClusterSpec>,
    pub endpoints: Arc<[Endpoint]>,
}

impl ResolvedCluster {
    /// Endpoints of the subset `subset`, honouring the selectors and the fallback policy.
    pub fn subset(&self, subset: &BTreeMap<String, MetaValue>) -> Vec<&Endpoint> {
        if subset.is_empty() {
            return self.endpoints.iter().collect();
        }
        let allowed = self.spec.subset_selectors.is_empty()
            || self.spec.subset_selectors.iter().any(|keys| {
                keys.len() == subset.len() && keys.iter().all(|k| subset.contains_key(k))
            });
        if allowed {
            let hit: Vec<&Endpoint> = self
                .endpoints
                .iter()
                .filter(|e| e.matches(subset))
                .collect();
            if !hit.is_empty() {
                return hit;
            }
        }
        match &self.spec.fallback {
            SubsetFallback::NoFallback => Vec::new(),
            SubsetFallback::AnyEndpoint => self.endpoints.iter().collect(),
            SubsetFallback::DefaultSubset(d) => {
                self.endpoints.iter().filter(|e| e.matches(d)).collect()
            }
        }
    }
}

/// Everything the data path needs for one topic: its virtual host and every cluster it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicRoute {
    pub topic: String,
    pub vhost: Arc<VirtualHostSpec>,
    pub clusters: BTreeMap<String, ResolvedCluster>,
}

/// The outcome of routing one request.
#[derive(Debug)]
pub struct Selection<'a> {
    pub rule: &'a RouteRule,
    pub cluster: &'a ResolvedCluster,
    /// Endpoints of the rule's subset; empty when the subset has no member and no fallback applies.
    pub endpoints: Vec<&'a Endpoint>,
}

impl TopicRoute {
    /// The first matching route and its endpoints, or None when no route matches.
    pub fn select(&self, req: &RouteRequest<'_>) -> Option<Selection<'_>> {
        let rule = self.vhost.routes.iter().find(|r| r.matches(req))?;
        let cluster = self.clusters.get(&rule.cluster)?;
        Some(Selection {
            rule,
            cluster,
            endpoints: cluster.subset(&rule.subset),
        })
    }

    /// Every endpoint of every cluster, deduplicated by (broker_name, broker_id, address).
    pub fn all_endpoints(&self) -> Vec<&Endpoint> {
        let mut out: Vec<&Endpoint> = Vec::new();
        for c in self.clusters.values() {
            for e in c.endpoints.iter() {
                if !out.iter().any(|o| {
                    o.broker_name == e.broker_name
                        && o.broker_id == e.broker_id
                        && o.address == e.address
                }) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// The endpoint of a named broker (e.g. the one that served a pop), master preferred.
    pub fn broker(&self, broker_name: &str, broker_id: Option<u64>) -> Option<&Endpoint> {
        let mut candidates = self
            .clusters
            .values()
            .flat_map(|c| c.endpoints.iter())
            .filter(|e| {
                e.broker_name == broker_name && broker_id.is_none_or(|id| e.broker_id == id)
            });
        let first = candidates.next()?;
        Some(if first.is_master() {
            first
        } else {
            candidates.find(|e| e.is_master()).unwrap_or(first)
        })
    }
}

/// One broker's share of a topic, as a nameserver knows it (QueueData + BrokerData).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BrokerQueues {
    pub broker_name: String,
    pub cluster_name: String,
    /// broker id -> `host:port`.
    pub addrs: BTreeMap<u64, String>,
    pub perm: u32,
    pub read_queue_num: u32,
    pub write_queue_num: u32,
}

/// The operator's traffic policy for one topic, laid over its registered route by the control
/// plane (see `ARCHITECTURE.md`, "Traffic management"). Brokers are named; a broker the policy
/// does not name keeps what its registration says, except under `weights` (below).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicPolicy {
    /// Write weights by broker name. Empty: sends spread by queue count. Otherwise only brokers
    /// with a weight above 0 are writable, in proportion to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, u32>,
    /// Brokers not readable for the topic.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub no_read: BTreeSet<String>,
    /// Brokers not writable for the topic.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub no_write: BTreeSet<String>,
}

/// Largest write weight (so any sum fits Envoy's uint32 limit on a locality's weights).
pub const MAX_WEIGHT: u32 = 1_000_000;

impl TopicPolicy {
    /// Whether the policy changes nothing.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty() && self.no_read.is_empty() && self.no_write.is_empty()
    }

    /// Whether `broker` may take writes (before its perm is considered).
    pub fn writable(&self, broker: &str) -> bool {
        !self.no_write.contains(broker)
            && (self.weights.is_empty() || self.weights.get(broker).is_some_and(|w| *w > 0))
    }

    /// Whether `broker` may be read (before its perm is considered).
    pub fn readable(&self, broker: &str) -> bool {
        !self.no_read.contains(broker)
    }

    /// The write weight pushed for `broker` (None when the policy has no weights).
    pub fn weight(&self, broker: &str) -> Option<u32> {
        self.weights.get(broker).copied().filter(|w| *w > 0)
    }

    /// Checks what does not depend on the route: weights that leave nothing writable.
    pub fn validate(&self) -> Result<(), String> {
        if !self.weights.is_empty() && self.weights.values().all(|w| *w == 0) {
            return Err("weights sum to 0: no broker would take writes".into());
        }
        if let Some((b, w)) = self.weights.iter().find(|(_, w)| **w > MAX_WEIGHT) {
            return Err(format!("weight of {b} is {w}; at most {MAX_WEIGHT}"));
        }
        if let Some(b) = self.weights.keys().find(|b| b.is_empty()) {
            return Err(format!("empty broker name in weights ({b:?})"));
        }
        Ok(())
    }

    /// Whether `broker` has left the topic's route (neither readable nor writable).
    pub fn excludes(&self, broker: &str) -> bool {
        !self.readable(broker) && !self.writable(broker)
    }
}

/// A topic's route as registered with a nameserver.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TopicRouteSpec {
    pub topic: String,
    pub brokers: Vec<BrokerQueues>,
}

/// Stable content version of a resource: FNV-1a 64 over its canonical JSON (maps are ordered), so
/// the same content has the same version across restarts (needed for `initial_resource_versions`).
pub fn content_version<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str, id: u64, writable: bool) -> Endpoint {
        Endpoint {
            address: format!("127.0.0.1:{}", 10911 + id),
            broker_name: name.into(),
            broker_id: id,
            cluster_name: "C".into(),
            perm: if writable { 6 } else { 4 },
            read_queue_num: 4,
            write_queue_num: 4,
            lb: BTreeMap::from([
                ("writable".into(), writable.into()),
                ("readable".into(), true.into()),
            ]),
            weight: None,
        }
    }

    fn route() -> TopicRoute {
        let cluster = ClusterSpec {
            name: "c1".into(),
            endpoints: EndpointSource::Inline(vec![]),
            subset_selectors: vec![vec!["writable".into()], vec!["readable".into()]],
            fallback: SubsetFallback::NoFallback,
            connect_timeout_ms: None,
            tls: None,
        };
        let vhost = VirtualHostSpec {
            name: "rocketmq/T".into(),
            topic: "T".into(),
            routes: vec![
                RouteRule {
                    name: "send".into(),
                    headers: vec![HeaderMatch {
                        name: "code".into(),
                        matcher: StringMatch::regex("10|310|320").unwrap(),
                        invert: false,
                    }],
                    cluster: "c1".into(),
                    subset: BTreeMap::from([("writable".into(), true.into())]),
                },
                RouteRule {
                    name: "any".into(),
                    headers: vec![],
                    cluster: "c1".into(),
                    subset: BTreeMap::new(),
                },
            ],
        };
        TopicRoute {
            topic: "T".into(),
            vhost: Arc::new(vhost),
            clusters: BTreeMap::from([(
                "c1".into(),
                ResolvedCluster {
                    spec: Arc::new(cluster),
                    endpoints: vec![ep("a", 0, true), ep("b", 0, false), ep("b", 1, false)].into(),
                },
            )]),
        }
    }

    #[test]
    fn regex_matches_whole_value() {
        let m = StringMatch::regex("10|310").unwrap();
        assert!(m.matches(Some("310")));
        assert!(!m.matches(Some("3100")));
        assert!(!m.matches(Some("1")));
        assert!(!m.matches(None));
        assert_eq!(
            regex_source(match &m {
                StringMatch::Regex(r) => r,
                _ => unreachable!(),
            }),
            "10|310"
        );
    }

    #[test]
    fn sends_go_to_writable_only() {
        let r = route();
        let s = r
            .select(&RouteRequest {
                code: 310,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(s.rule.name, "send");
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoints[0].broker_name, "a");
        let s = r
            .select(&RouteRequest {
                code: 200050,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(s.endpoints.len(), 3);
    }

    #[test]
    fn no_fallback_means_no_endpoint() {
        let mut r = route();
        let c = r.clusters.get_mut("c1").unwrap();
        c.endpoints = vec![ep("b", 0, false)].into();
        let s = r
            .select(&RouteRequest {
                code: 10,
                ..Default::default()
            })
            .unwrap();
        assert!(s.endpoints.is_empty());
    }

    #[test]
    fn broker_lookup_prefers_master() {
        let r = route();
        assert_eq!(r.broker("b", None).unwrap().broker_id, 0);
        assert_eq!(r.broker("b", Some(1)).unwrap().broker_id, 1);
        assert!(r.broker("zz", None).is_none());
        assert_eq!(r.all_endpoints().len(), 3);
    }

    #[test]
    fn versions_are_stable_and_content_based() {
        let a = route();
        let b = route();
        assert_eq!(content_version(&*a.vhost), content_version(&*b.vhost));
        let mut v = (*a.vhost).clone();
        v.routes.pop();
        assert_ne!(content_version(&*a.vhost), content_version(&v));
    }
}
