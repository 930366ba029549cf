//! RocketMQ topic routes <-> Envoy resources (VirtualHost, Cluster, ClusterLoadAssignment,
//! RouteConfiguration), both ways, validated. A resource that fails validation is rejected as a
//! whole with a reason (the xDS client NACKs it and keeps the last good one); nothing is half
//! applied.
//!
//! Shapes (design.md section 3):
//! * VirtualHost per topic: `domains: [topic]`; routes match the request code as a header named
//!   `code` and name a cluster with `metadata_match.filter_metadata["envoy.lb"]` picking a subset.
//! * Cluster per topic (name chosen by the control plane, see [`topic_cluster_name`]):
//!   `lb_subset_config` over `envoy.lb` keys with `NO_FALLBACK`; endpoints inline or through EDS, each
//!   with `envoy.filters.network.rocketmq_proxy` metadata as Envoy's filter reads it.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use prost::Message;
use xds_api::pb::envoy::config::cluster::v3 as pb_cluster;
use xds_api::pb::envoy::config::core::v3 as pb_core;
use xds_api::pb::envoy::config::endpoint::v3 as pb_endpoint;
use xds_api::pb::envoy::config::route::v3 as pb_route;
use xds_api::pb::envoy::r#type::matcher::v3 as pb_matcher;
use xds_api::pb::google::protobuf as pb;

use crate::model::{
    perm, regex_source, BrokerQueues, ClusterSpec, Endpoint, EndpointSource, HeaderMatch,
    LoadAssignment, MetaValue, RouteRule, StringMatch, SubsetFallback, TopicRouteSpec,
    VirtualHostSpec, LB_METADATA, ROCKETMQ_METADATA,
};

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const VIRTUAL_HOST_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
pub const LOAD_ASSIGNMENT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const ROUTE_CONFIGURATION_TYPE: &str =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Request codes routed to writable brokers by generated routes (SEND_MESSAGE, V2, BATCH).
pub const SEND_CODES: &str = "10|310|320";
/// Request codes routed to readable brokers by generated routes (PULL_MESSAGE, POP_MESSAGE).
pub const CONSUME_CODES: &str = "11|200050";

/// Subset selectors of generated clusters.
pub fn default_subset_selectors() -> Vec<Vec<String>> {
    vec![
        vec!["writable".into()],
        vec!["readable".into()],
        vec!["broker_name".into()],
        vec!["broker_name".into(), "broker_id".into()],
    ]
}

/// A resource failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {reason}")]
pub struct ResourceError {
    pub kind: &'static str,
    pub name: String,
    pub reason: String,
}

impl ResourceError {
    fn new(kind: &'static str, name: &str, reason: impl Into<String>) -> Self {
        ResourceError {
            kind,
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The cluster name the control plane gives a topic's cluster. Clients never derive it: they read it
/// from the virtual host.
pub fn topic_cluster_name(topic: &str) -> String {
    format!("rocketmq.topic.{topic}")
}

/// The topic of a VHDS resource name `<route_config>/<topic>` (topics never contain '/').
pub fn topic_of_vhds_name(name: &str) -> Option<&str> {
    let (rc, topic) = name.rsplit_once('/')?;
    (!rc.is_empty() && valid_topic(topic)).then_some(topic)
}

/// RocketMQ topic names: 1..=127 characters of `[%|a-zA-Z0-9_-]`.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 127
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
}

static SEND_MATCH: LazyLock<StringMatch> =
    LazyLock::new(|| StringMatch::regex(SEND_CODES).expect("built-in pattern compiles"));
static CONSUME_MATCH: LazyLock<StringMatch> =
    LazyLock::new(|| StringMatch::regex(CONSUME_CODES).expect("built-in pattern compiles"));

/// A `code` header matcher; compiled regexes are shared (cloning a Regex is a pointer copy), so
/// deriving resources for many topics compiles nothing.
fn code_header(m: &LazyLock<StringMatch>) -> HeaderMatch {
    HeaderMatch {
        name: "code".into(),
        matcher: StringMatch::clone(m),
        invert: false,
    }
}

/// Endpoints of one broker's share of a topic, with both metadata namespaces filled in.
pub fn broker_endpoints(b: &BrokerQueues) -> Vec<Endpoint> {
    b.addrs
        .iter()
        .map(|(&id, addr)| {
            let master = id == 0;
            let lb = BTreeMap::from([
                (
                    "role".to_owned(),
                    MetaValue::from(if master { "master" } else { "slave" }),
                ),
                (
                    "broker_name".to_owned(),
                    MetaValue::from(b.broker_name.as_str()),
                ),
                ("broker_id".to_owned(), MetaValue::Number(id as i64)),
                // Pop and sends need the master (pop checkpoints are written there).
                (
                    "readable".to_owned(),
                    MetaValue::Bool(master && b.perm & perm::READ != 0),
                ),
                (
                    "writable".to_owned(),
                    MetaValue::Bool(master && b.perm & perm::WRITE != 0),
                ),
            ]);
            Endpoint {
                address: addr.clone(),
                broker_name: b.broker_name.clone(),
                broker_id: id,
                cluster_name: b.cluster_name.clone(),
                perm: b.perm,
                read_queue_num: b.read_queue_num,
                write_queue_num: b.write_queue_num,
                lb,
            }
        })
        .collect()
}

/// The virtual host and cluster the control plane serves for a registered topic route.
/// `vhost_name` is the name the client subscribed with (`<route_config>/<topic>`).
pub fn build_topic(
    vhost_name: &str,
    route: &TopicRouteSpec,
    eds: bool,
) -> (VirtualHostSpec, ClusterSpec) {
    let cluster = topic_cluster_name(&route.topic);
    let vhost = VirtualHostSpec {
        name: vhost_name.to_owned(),
        topic: route.topic.clone(),
        routes: vec![
            RouteRule {
                name: "send".into(),
                headers: vec![code_header(&SEND_MATCH)],
                cluster: cluster.clone(),
                subset: BTreeMap::from([("writable".into(), MetaValue::Bool(true))]),
            },
            RouteRule {
                name: "consume".into(),
                headers: vec![code_header(&CONSUME_MATCH)],
                cluster: cluster.clone(),
                subset: BTreeMap::from([("readable".into(), MetaValue::Bool(true))]),
            },
            RouteRule {
                name: "default".into(),
                headers: vec![],
                cluster: cluster.clone(),
                subset: BTreeMap::new(),
            },
        ],
    };
    let endpoints: Vec<Endpoint> = route.brokers.iter().flat_map(broker_endpoints).collect();
    let spec = ClusterSpec {
        name: cluster.clone(),
        endpoints: if eds {
            EndpointSource::Eds(cluster)
        } else {
            EndpointSource::Inline(endpoints)
        },
        subset_selectors: default_subset_selectors(),
        fallback: SubsetFallback::NoFallback,
        connect_timeout_ms: Some(1000),
    };
    (vhost, spec)
}

/// The EDS resource of a generated topic cluster.
pub fn build_load_assignment(route: &TopicRouteSpec) -> LoadAssignment {
    LoadAssignment {
        cluster_name: topic_cluster_name(&route.topic),
        endpoints: route.brokers.iter().flat_map(broker_endpoints).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// metadata

fn meta_to_value(v: &MetaValue) -> pb::Value {
    use pb::value::Kind;
    pb::Value {
        kind: Some(match v {
            MetaValue::Bool(b) => Kind::BoolValue(*b),
            MetaValue::Number(n) => Kind::NumberValue(*n as f64),
            MetaValue::String(s) => Kind::StringValue(s.clone()),
        }),
    }
}

fn value_to_meta(v: &pb::Value) -> Result<MetaValue, String> {
    use pb::value::Kind;
    match &v.kind {
        Some(Kind::BoolValue(b)) => Ok(MetaValue::Bool(*b)),
        Some(Kind::StringValue(s)) => Ok(MetaValue::String(s.clone())),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Ok(MetaValue::Number(*n as i64))
        }
        Some(Kind::NumberValue(n)) => Err(format!("number {n} is not an integer")),
        _ => Err("value must be a string, bool or number".into()),
    }
}

fn struct_of(map: &BTreeMap<String, MetaValue>) -> pb::Struct {
    pb::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), meta_to_value(v)))
            .collect(),
    }
}

fn meta_of(s: &pb::Struct) -> Result<BTreeMap<String, MetaValue>, String> {
    s.fields
        .iter()
        .map(|(k, v)| {
            value_to_meta(v)
                .map(|m| (k.clone(), m))
                .map_err(|e| format!("{k}: {e}"))
        })
        .collect()
}

fn num(n: u64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::NumberValue(n as f64)),
    }
}

fn string(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::StringValue(s.to_owned())),
    }
}

// ---------------------------------------------------------------------------------------------
// endpoints

fn endpoint_to_proto(e: &Endpoint) -> pb_endpoint::LbEndpoint {
    let (host, port) = split_host_port(&e.address).unwrap_or((e.address.as_str(), 0));
    let address = pb_core::Address {
        address: Some(pb_core::address::Address::SocketAddress(
            pb_core::SocketAddress {
                address: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port_specifier: Some(pb_core::socket_address::PortSpecifier::PortValue(
                    u32::from(port),
                )),
                ..Default::default()
            },
        )),
    };
    let rocketmq = pb::Struct {
        fields: HashMap::from([
            ("broker_name".to_owned(), string(&e.broker_name)),
            ("broker_id".to_owned(), num(e.broker_id)),
            ("cluster_name".to_owned(), string(&e.cluster_name)),
            ("perm".to_owned(), num(u64::from(e.perm))),
            (
                "read_queue_num".to_owned(),
                num(u64::from(e.read_queue_num)),
            ),
            (
                "write_queue_num".to_owned(),
                num(u64::from(e.write_queue_num)),
            ),
        ]),
    };
    let mut filter_metadata = HashMap::from([(ROCKETMQ_METADATA.to_owned(), rocketmq)]);
    if !e.lb.is_empty() {
        filter_metadata.insert(LB_METADATA.to_owned(), struct_of(&e.lb));
    }
    pb_endpoint::LbEndpoint {
        host_identifier: Some(pb_endpoint::lb_endpoint::HostIdentifier::Endpoint(
            pb_endpoint::Endpoint {
                address: Some(address),
                ..Default::default()
            },
        )),
        metadata: Some(pb_core::Metadata {
            filter_metadata,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

fn struct_u64(s: &pb::Struct, key: &str, default: u64) -> Result<u64, String> {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        None => Ok(default),
        Some(pb::value::Kind::NumberValue(n)) if n.fract() == 0.0 && *n >= 0.0 && *n < 9.0e15 => {
            Ok(*n as u64)
        }
        // Some control planes write numbers as strings.
        Some(pb::value::Kind::StringValue(s)) => s
            .parse()
            .map_err(|_| format!("{key}: {s:?} is not a number")),
        Some(_) => Err(format!("{key} must be a non-negative integer")),
    }
}

fn struct_str(s: &pb::Struct, key: &str) -> Result<String, String> {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(pb::value::Kind::StringValue(v)) if !v.is_empty() => Ok(v.clone()),
        Some(_) => Err(format!("{key} must be a non-empty string")),
        None => Err(format!("{key} is missing")),
    }
}

/// Defaults for absent endpoint metadata. Envoy's filter defaults perm and queue counts to 0, which
/// makes the broker unusable; we default to a read-write broker with RocketMQ's 8 queues.
const DEFAULT_PERM: u64 = 6;
const DEFAULT_QUEUES: u64 = 8;

fn endpoint_from_proto(lb: &pb_endpoint::LbEndpoint) -> Result<Endpoint, String> {
    let Some(pb_endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
        return Err("endpoint without an address (named endpoints are not supported)".into());
    };
    let Some(pb_core::address::Address::SocketAddress(sa)) =
        ep.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        return Err("endpoint address must be a socket address".into());
    };
    let Some(pb_core::socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
        return Err(format!("endpoint {} has no port_value", sa.address));
    };
    if sa.address.is_empty() || port == 0 || port > 65535 {
        return Err(format!("bad endpoint address {}:{port}", sa.address));
    }
    let address = if sa.address.contains(':') {
        format!("[{}]:{port}", sa.address)
    } else {
        format!("{}:{port}", sa.address)
    };
    let meta = lb.metadata.as_ref();
    let Some(rmq) = meta.and_then(|m| m.filter_metadata.get(ROCKETMQ_METADATA)) else {
        return Err(format!(
            "endpoint {address} has no {ROCKETMQ_METADATA} metadata"
        ));
    };
    let bad = |e: String| format!("endpoint {address}: {e}");
    let lb_meta = match meta.and_then(|m| m.filter_metadata.get(LB_METADATA)) {
        Some(s) => meta_of(s).map_err(|e| bad(format!("{LB_METADATA}: {e}")))?,
        None => BTreeMap::new(),
    };
    let to_u32 =
        |v: u64, key: &str| u32::try_from(v).map_err(|_| bad(format!("{key} out of range")));
    Ok(Endpoint {
        broker_name: struct_str(rmq, "broker_name").map_err(bad)?,
        cluster_name: struct_str(rmq, "cluster_name").map_err(bad)?,
        broker_id: struct_u64(rmq, "broker_id", 0).map_err(bad)?,
        perm: to_u32(struct_u64(rmq, "perm", DEFAULT_PERM).map_err(bad)?, "perm")?,
        read_queue_num: to_u32(
            struct_u64(rmq, "read_queue_num", DEFAULT_QUEUES).map_err(bad)?,
            "read_queue_num",
        )?,
        write_queue_num: to_u32(
            struct_u64(rmq, "write_queue_num", DEFAULT_QUEUES).map_err(bad)?,
            "write_queue_num",
        )?,
        lb: lb_meta,
        address,
    })
}

fn endpoints_from_proto(cla: &pb_endpoint::ClusterLoadAssignment) -> Result<Vec<Endpoint>, String> {
    let mut out = Vec::new();
    for locality in &cla.endpoints {
        for lb in &locality.lb_endpoints {
            out.push(endpoint_from_proto(lb)?);
        }
    }
    Ok(out)
}

fn load_assignment_proto(
    cluster_name: &str,
    endpoints: &[Endpoint],
) -> pb_endpoint::ClusterLoadAssignment {
    pb_endpoint::ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints: vec![pb_endpoint::LocalityLbEndpoints {
            lb_endpoints: endpoints.iter().map(endpoint_to_proto).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn load_assignment_to_proto(la: &LoadAssignment) -> pb_endpoint::ClusterLoadAssignment {
    load_assignment_proto(&la.cluster_name, &la.endpoints)
}

pub fn load_assignment_from_proto(
    cla: &pb_endpoint::ClusterLoadAssignment,
) -> Result<LoadAssignment, ResourceError> {
    if cla.cluster_name.is_empty() {
        return Err(ResourceError::new(
            "ClusterLoadAssignment",
            "",
            "cluster_name is empty",
        ));
    }
    let endpoints = endpoints_from_proto(cla)
        .map_err(|e| ResourceError::new("ClusterLoadAssignment", &cla.cluster_name, e))?;
    Ok(LoadAssignment {
        cluster_name: cla.cluster_name.clone(),
        endpoints,
    })
}

// ---------------------------------------------------------------------------------------------
// clusters

const EDS: i32 = pb_cluster::cluster::DiscoveryType::Eds as i32;
const STATIC: i32 = pb_cluster::cluster::DiscoveryType::Static as i32;

pub fn cluster_to_proto(c: &ClusterSpec) -> pb_cluster::Cluster {
    use pb_cluster::cluster::{
        lb_subset_config::{LbSubsetFallbackPolicy, LbSubsetSelector},
        ClusterDiscoveryType, EdsClusterConfig, LbSubsetConfig,
    };
    let (fallback, default_subset) = match &c.fallback {
        SubsetFallback::NoFallback => (LbSubsetFallbackPolicy::NoFallback, None),
        SubsetFallback::AnyEndpoint => (LbSubsetFallbackPolicy::AnyEndpoint, None),
        SubsetFallback::DefaultSubset(d) => {
            (LbSubsetFallbackPolicy::DefaultSubset, Some(struct_of(d)))
        }
    };
    let mut out = pb_cluster::Cluster {
        name: c.name.clone(),
        connect_timeout: c.connect_timeout_ms.map(|ms| pb::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
        lb_subset_config: Some(LbSubsetConfig {
            fallback_policy: fallback as i32,
            default_subset,
            subset_selectors: c
                .subset_selectors
                .iter()
                .map(|keys| LbSubsetSelector {
                    keys: keys.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    match &c.endpoints {
        EndpointSource::Inline(eps) => {
            out.cluster_discovery_type = Some(ClusterDiscoveryType::Type(STATIC));
            out.load_assignment = Some(load_assignment_proto(&c.name, eps));
        }
        EndpointSource::Eds(service) => {
            out.cluster_discovery_type = Some(ClusterDiscoveryType::Type(EDS));
            out.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(pb_core::ConfigSource {
                    config_source_specifier: Some(
                        pb_core::config_source::ConfigSourceSpecifier::Ads(
                            pb_core::AggregatedConfigSource {},
                        ),
                    ),
                    resource_api_version: pb_core::ApiVersion::V3 as i32,
                    ..Default::default()
                }),
                service_name: if service == &c.name {
                    String::new()
                } else {
                    service.clone()
                },
            });
        }
    }
    out
}

pub fn cluster_from_proto(c: &pb_cluster::Cluster) -> Result<ClusterSpec, ResourceError> {
    use pb_cluster::cluster::{lb_subset_config::LbSubsetFallbackPolicy, ClusterDiscoveryType};
    let err = |r: String| ResourceError::new("Cluster", &c.name, r);
    if c.name.is_empty() {
        return Err(err("name is empty".into()));
    }
    let kind = match &c.cluster_discovery_type {
        None => STATIC,
        Some(ClusterDiscoveryType::Type(t)) => *t,
        Some(ClusterDiscoveryType::ClusterType(t)) => {
            return Err(err(format!(
                "custom cluster type {:?} is not supported",
                t.name
            )))
        }
    };
    let endpoints = match kind {
        EDS => {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            EndpointSource::Eds(service)
        }
        STATIC => {
            let eps = match &c.load_assignment {
                Some(cla) => endpoints_from_proto(cla).map_err(err)?,
                None => Vec::new(),
            };
            EndpointSource::Inline(eps)
        }
        other => {
            let name = pb_cluster::cluster::DiscoveryType::try_from(other)
                .map(|t| t.as_str_name().to_owned())
                .unwrap_or_else(|_| other.to_string());
            return Err(err(format!(
                "discovery type {name} is not supported (use STATIC or EDS)"
            )));
        }
    };
    let (subset_selectors, fallback) = match &c.lb_subset_config {
        None => (Vec::new(), SubsetFallback::AnyEndpoint),
        Some(s) => {
            let fallback = match LbSubsetFallbackPolicy::try_from(s.fallback_policy) {
                Ok(LbSubsetFallbackPolicy::NoFallback) => SubsetFallback::NoFallback,
                Ok(LbSubsetFallbackPolicy::AnyEndpoint) => SubsetFallback::AnyEndpoint,
                Ok(LbSubsetFallbackPolicy::DefaultSubset) => SubsetFallback::DefaultSubset(
                    s.default_subset
                        .as_ref()
                        .map(meta_of)
                        .transpose()
                        .map_err(|e| err(format!("default_subset: {e}")))?
                        .unwrap_or_default(),
                ),
                Err(_) => {
                    return Err(err(format!(
                        "unknown fallback_policy {}",
                        s.fallback_policy
                    )))
                }
            };
            let selectors: Vec<Vec<String>> = s
                .subset_selectors
                .iter()
                .map(|sel| sel.keys.clone())
                .collect();
            if selectors.iter().any(Vec::is_empty) {
                return Err(err("a subset selector has no keys".into()));
            }
            (selectors, fallback)
        }
    };
    let connect_timeout_ms = c
        .connect_timeout
        .as_ref()
        .map(|d| {
            if d.seconds < 0 || d.nanos < 0 {
                Err(err("negative connect_timeout".into()))
            } else {
                Ok(d.seconds as u64 * 1000 + d.nanos as u64 / 1_000_000)
            }
        })
        .transpose()?;
    Ok(ClusterSpec {
        name: c.name.clone(),
        endpoints,
        subset_selectors,
        fallback,
        connect_timeout_ms,
    })
}

// ---------------------------------------------------------------------------------------------
// virtual hosts and route configurations

fn header_to_proto(h: &HeaderMatch) -> pb_route::HeaderMatcher {
    use pb_matcher::string_matcher::MatchPattern;
    use pb_route::header_matcher::HeaderMatchSpecifier;
    let spec = match &h.matcher {
        StringMatch::Present => HeaderMatchSpecifier::PresentMatch(true),
        m => HeaderMatchSpecifier::StringMatch(pb_matcher::StringMatcher {
            match_pattern: Some(match m {
                StringMatch::Exact(s) => MatchPattern::Exact(s.clone()),
                StringMatch::Prefix(s) => MatchPattern::Prefix(s.clone()),
                StringMatch::Suffix(s) => MatchPattern::Suffix(s.clone()),
                StringMatch::Contains(s) => MatchPattern::Contains(s.clone()),
                StringMatch::Regex(r) => MatchPattern::SafeRegex(pb_matcher::RegexMatcher {
                    regex: regex_source(r).to_owned(),
                    ..Default::default()
                }),
                StringMatch::Present => unreachable!("handled above"),
            }),
            ignore_case: false,
        }),
    };
    pb_route::HeaderMatcher {
        name: h.name.clone(),
        invert_match: h.invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn header_from_proto(h: &pb_route::HeaderMatcher) -> Result<HeaderMatch, String> {
    use pb_matcher::string_matcher::MatchPattern;
    use pb_route::header_matcher::HeaderMatchSpecifier;
    if !matches!(h.name.as_str(), "code" | "broker_name" | "broker_id") {
        return Err(format!(
            "header {:?} is not matchable (code, broker_name, broker_id)",
            h.name
        ));
    }
    let regex =
        |p: &str| StringMatch::regex(p).map_err(|e| format!("header {}: bad regex: {e}", h.name));
    let matcher = match &h.header_match_specifier {
        None => StringMatch::Present,
        Some(HeaderMatchSpecifier::ExactMatch(s)) => StringMatch::Exact(s.clone()),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => StringMatch::Prefix(s.clone()),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => StringMatch::Suffix(s.clone()),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => StringMatch::Contains(s.clone()),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => regex(&r.regex)?,
        Some(HeaderMatchSpecifier::PresentMatch(true)) => StringMatch::Present,
        Some(HeaderMatchSpecifier::StringMatch(sm)) => {
            if sm.ignore_case {
                return Err(format!("header {}: ignore_case is not supported", h.name));
            }
            match &sm.match_pattern {
                Some(MatchPattern::Exact(s)) => StringMatch::Exact(s.clone()),
                Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(s.clone()),
                Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(s.clone()),
                Some(MatchPattern::Contains(s)) => StringMatch::Contains(s.clone()),
                Some(MatchPattern::SafeRegex(r)) => regex(&r.regex)?,
                Some(MatchPattern::Custom(_)) | None => {
                    return Err(format!("header {}: unsupported string matcher", h.name))
                }
            }
        }
        Some(other) => return Err(format!("header {}: unsupported matcher {other:?}", h.name)),
    };
    Ok(HeaderMatch {
        name: h.name.clone(),
        matcher,
        invert: h.invert_match,
    })
}

pub fn vhost_to_proto(v: &VirtualHostSpec) -> pb_route::VirtualHost {
    pb_route::VirtualHost {
        name: v.name.clone(),
        domains: vec![v.topic.clone()],
        routes: v
            .routes
            .iter()
            .map(|r| pb_route::Route {
                name: r.name.clone(),
                r#match: Some(pb_route::RouteMatch {
                    path_specifier: Some(pb_route::route_match::PathSpecifier::Prefix(
                        String::new(),
                    )),
                    headers: r.headers.iter().map(header_to_proto).collect(),
                    ..Default::default()
                }),
                action: Some(pb_route::route::Action::Route(pb_route::RouteAction {
                    cluster_specifier: Some(pb_route::route_action::ClusterSpecifier::Cluster(
                        r.cluster.clone(),
                    )),
                    metadata_match: (!r.subset.is_empty()).then(|| pb_core::Metadata {
                        filter_metadata: HashMap::from([(
                            LB_METADATA.to_owned(),
                            struct_of(&r.subset),
                        )]),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Validates a VirtualHost. `name` is the resource name it arrived under (VHDS
/// `<route_config>/<topic>`, or the vhost's own name inside a RouteConfiguration).
pub fn vhost_from_proto(
    name: &str,
    v: &pb_route::VirtualHost,
) -> Result<VirtualHostSpec, ResourceError> {
    let err = |r: String| ResourceError::new("VirtualHost", name, r);
    let topic = match v.domains.as_slice() {
        [t] => t.clone(),
        [] => return Err(err("domains is empty (expected [topic])".into())),
        more => {
            return Err(err(format!(
                "{} domains (expected exactly one topic)",
                more.len()
            )))
        }
    };
    if !valid_topic(&topic) {
        return Err(err(format!("domain {topic:?} is not a valid topic name")));
    }
    if let Some(t) = topic_of_vhds_name(name) {
        if t != topic {
            return Err(err(format!(
                "domain {topic:?} does not match the requested topic {t:?}"
            )));
        }
    }
    if v.routes.is_empty() {
        return Err(err("no routes".into()));
    }
    let mut routes = Vec::with_capacity(v.routes.len());
    for (i, r) in v.routes.iter().enumerate() {
        let label = if r.name.is_empty() {
            format!("route #{i}")
        } else {
            format!("route {:?}", r.name)
        };
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| err(format!("{label}: no match")))?;
        let headers = m
            .headers
            .iter()
            .map(header_from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(format!("{label}: {e}")))?;
        let action = match &r.action {
            Some(pb_route::route::Action::Route(a)) => a,
            _ => return Err(err(format!("{label}: only route actions are supported"))),
        };
        let cluster = match &action.cluster_specifier {
            Some(pb_route::route_action::ClusterSpecifier::Cluster(c)) if !c.is_empty() => {
                c.clone()
            }
            _ => return Err(err(format!("{label}: the action must name one cluster"))),
        };
        let subset = match action
            .metadata_match
            .as_ref()
            .and_then(|m| m.filter_metadata.get(LB_METADATA))
        {
            Some(s) => meta_of(s).map_err(|e| err(format!("{label}: metadata_match: {e}")))?,
            None => BTreeMap::new(),
        };
        routes.push(RouteRule {
            name: r.name.clone(),
            headers,
            cluster,
            subset,
        });
    }
    Ok(VirtualHostSpec {
        name: name.to_owned(),
        topic,
        routes,
    })
}

pub fn route_config_to_proto<'a>(
    name: &str,
    vhosts: impl IntoIterator<Item = &'a VirtualHostSpec>,
) -> pb_route::RouteConfiguration {
    pb_route::RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vhosts.into_iter().map(vhost_to_proto).collect(),
        ..Default::default()
    }
}

/// The virtual hosts of a SotW RouteConfiguration. A bad virtual host fails the whole
/// configuration (SotW replaces everything at once).
pub fn route_config_from_proto(
    rc: &pb_route::RouteConfiguration,
) -> Result<Vec<VirtualHostSpec>, ResourceError> {
    rc.virtual_hosts
        .iter()
        .map(|v| {
            let name = format!(
                "{}/{}",
                rc.name,
                v.domains.first().map(String::as_str).unwrap_or("")
            );
            vhost_from_proto(&name, v)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Any

pub fn to_any<M: Message>(type_url: &str, m: &M) -> pb::Any {
    pb::Any {
        type_url: type_url.to_owned(),
        value: m.encode_to_vec(),
    }
}

pub fn from_any<M: Message + Default>(expected: &str, any: &pb::Any) -> Result<M, String> {
    if any.type_url != expected {
        return Err(format!(
            "type_url {:?} (expected {expected:?})",
            any.type_url
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("undecodable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TopicRouteSpec {
        TopicRouteSpec {
            topic: "TopicA".into(),
            brokers: vec![
                BrokerQueues {
                    broker_name: "broker-a".into(),
                    cluster_name: "DefaultCluster".into(),
                    addrs: BTreeMap::from([
                        (0, "127.0.0.1:10911".into()),
                        (1, "127.0.0.1:10921".into()),
                    ]),
                    perm: 6,
                    read_queue_num: 4,
                    write_queue_num: 4,
                },
                BrokerQueues {
                    broker_name: "broker-b".into(),
                    cluster_name: "DefaultCluster".into(),
                    addrs: BTreeMap::from([(0, "[::1]:10912".into())]),
                    perm: 4,
                    read_queue_num: 8,
                    write_queue_num: 8,
                },
            ],
        }
    }

    #[test]
    fn topic_round_trips_through_protos() {
        let (vhost, cluster) = build_topic("rocketmq/TopicA", &spec(), false);
        let back = vhost_from_proto("rocketmq/TopicA", &vhost_to_proto(&vhost)).unwrap();
        assert_eq!(back, vhost);
        let bytes = to_any(CLUSTER_TYPE, &cluster_to_proto(&cluster));
        let decoded: pb_cluster::Cluster = from_any(CLUSTER_TYPE, &bytes).unwrap();
        let back = cluster_from_proto(&decoded).unwrap();
        assert_eq!(back, cluster);
        let EndpointSource::Inline(eps) = &back.endpoints else {
            panic!()
        };
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[2].address, "[::1]:10912");
        assert_eq!(eps[2].lb["writable"], MetaValue::Bool(false));
        assert_eq!(
            eps[1].lb["readable"],
            MetaValue::Bool(false),
            "slaves neither pop nor take sends"
        );
    }

    #[test]
    fn eds_clusters_round_trip() {
        let (_, cluster) = build_topic("rocketmq/TopicA", &spec(), true);
        let back = cluster_from_proto(&cluster_to_proto(&cluster)).unwrap();
        assert_eq!(
            back.endpoints,
            EndpointSource::Eds("rocketmq.topic.TopicA".into())
        );
        let la = build_load_assignment(&spec());
        assert_eq!(
            load_assignment_from_proto(&load_assignment_to_proto(&la)).unwrap(),
            la
        );
    }

    #[test]
    fn bad_resources_are_rejected_with_a_reason() {
        let (vhost, cluster) = build_topic("rocketmq/TopicA", &spec(), false);
        let mut p = vhost_to_proto(&vhost);
        p.domains = vec!["TopicB".into()];
        let e = vhost_from_proto("rocketmq/TopicA", &p).unwrap_err();
        assert!(e.reason.contains("does not match"), "{e}");
        let mut p = vhost_to_proto(&vhost);
        p.routes[0].r#match.as_mut().unwrap().headers[0].header_match_specifier = Some(
            pb_route::header_matcher::HeaderMatchSpecifier::SafeRegexMatch(
                pb_matcher::RegexMatcher {
                    regex: "(".into(),
                    ..Default::default()
                },
            ),
        );
        assert!(vhost_from_proto("rocketmq/TopicA", &p)
            .unwrap_err()
            .reason
            .contains("bad regex"));
        let mut c = cluster_to_proto(&cluster);
        c.load_assignment.as_mut().unwrap().endpoints[0].lb_endpoints[0]
            .metadata
            .as_mut()
            .unwrap()
            .filter_metadata
            .get_mut(ROCKETMQ_METADATA)
            .unwrap()
            .fields
            .remove("broker_name");
        let e = cluster_from_proto(&c).unwrap_err();
        assert!(e.reason.contains("broker_name is missing"), "{e}");
        let mut c = cluster_to_proto(&cluster);
        c.cluster_discovery_type = Some(pb_cluster::cluster::ClusterDiscoveryType::Type(
            pb_cluster::cluster::DiscoveryType::StrictDns as i32,
        ));
        assert!(cluster_from_proto(&c)
            .unwrap_err()
            .reason
            .contains("STRICT_DNS"));
    }

    #[test]
    fn envoy_defaults_are_fixed() {
        // An Envoy-shaped endpoint with only the required keys.
        let (_, cluster) = build_topic("rocketmq/TopicA", &spec(), false);
        let mut c = cluster_to_proto(&cluster);
        for f in ["perm", "read_queue_num", "write_queue_num", "broker_id"] {
            c.load_assignment.as_mut().unwrap().endpoints[0].lb_endpoints[0]
                .metadata
                .as_mut()
                .unwrap()
                .filter_metadata
                .get_mut(ROCKETMQ_METADATA)
                .unwrap()
                .fields
                .remove(f);
        }
        let back = cluster_from_proto(&c).unwrap();
        let EndpointSource::Inline(eps) = back.endpoints else {
            panic!()
        };
        assert_eq!(
            (eps[0].perm, eps[0].read_queue_num, eps[0].broker_id),
            (6, 8, 0)
        );
    }

    #[test]
    fn vhds_names() {
        assert_eq!(topic_of_vhds_name("rocketmq/TopicA"), Some("TopicA"));
        assert_eq!(topic_of_vhds_name("a/b/%RETRY%g"), Some("%RETRY%g"));
        assert_eq!(topic_of_vhds_name("TopicA"), None);
        assert_eq!(topic_of_vhds_name("/TopicA"), None);
        assert_eq!(topic_of_vhds_name("rc/bad topic"), None);
    }
}
