//! Static resources from a YAML file: clusters of brokers and topic routes, for the control plane's
//! `--static` file (and a sidecar bootstrap without a control plane).
//!
//! ```yaml
//! clusters:
//!   - name: brokers
//!     eds: false                      # optional: serve endpoints through EDS
//!     subset_selectors: [[writable]]  # optional; default: the generated clusters' selectors
//!     fallback: no_fallback           # or any_endpoint, or {default_subset: {k: v}}
//!     endpoints:
//!       - address: 127.0.0.1:10911
//!         broker_name: broker-a
//!         broker_id: 0
//!         cluster_name: DefaultCluster
//!         perm: 6
//!         read_queue_num: 8
//!         write_queue_num: 8
//!         lb: {zone: a}               # optional; merged over the generated envoy.lb keys
//! topics:
//!   - topic: TopicA
//!     cluster: brokers                # the standard routes: send -> writable, consume -> readable
//!   - topic: TopicB
//!     routes:                         # or explicit routes, first match wins
//!       - code: {regex: "10|310|320"}
//!         cluster: brokers
//!         subset: {writable: true}
//! route_config:                       # Envoy's rocketmq_proxy RouteConfiguration shape
//!   name: rocketmq
//!   routes:
//!     - match: {topic: {exact: TopicC}, headers: [{name: code, exact_match: "310"}]}
//!       route: {cluster: brokers, metadata_match: {filter_metadata: {envoy.lb: {writable: true}}}}
//! ```
//!
//! Unknown fields are errors. Syntax and type errors name the path of the bad field (serde_yaml_ng
//! reports it, with line and column); semantic errors (unknown cluster, bad topic name, bad regex,
//! duplicates) name it too, e.g. `topics[1].routes[0].cluster: unknown cluster "x"`.
//!
//! Endpoints get the `envoy.lb` keys the control plane generates for registered brokers (`role`,
//! `broker_name`, `broker_id`, `readable`, `writable`, from `broker_id` and `perm`), so the standard
//! routes' subsets work; keys given in `lb` override them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::model::{
    ClusterSpec, Endpoint, EndpointSource, HeaderMatch, LoadAssignment, MetaValue, RouteRule,
    StringMatch, SubsetFallback, TopicRouteSpec, VirtualHostSpec, LB_METADATA,
};
use crate::resources::{broker_endpoints, build_topic, default_subset_selectors, valid_topic};
use crate::{vhds_name, DEFAULT_ROUTE_CONFIG};

/// Largest static file read (guards against pointing the control plane at a huge file).
pub const MAX_STATIC_FILE: u64 = 16 << 20;

/// Headers a route may match on (the synthetic request headers the data path builds).
const MATCHABLE_HEADERS: [&str; 3] = ["code", "broker_name", "broker_id"];

/// Why a static file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum StaticConfigError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {len} bytes; at most {max} allowed")]
    TooLarge { path: String, len: u64, max: u64 },
    /// Not valid YAML for the schema; the message names the field path, line and column.
    #[error("{0}")]
    Syntax(String),
    /// Valid YAML, but the content does not hold together.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> StaticConfigError {
    StaticConfigError::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// schema

/// The file's top level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFile {
    #[serde(default)]
    pub clusters: Vec<ClusterDef>,
    #[serde(default)]
    pub topics: Vec<TopicDef>,
    /// Envoy's `envoy.filters.network.rocketmq_proxy` `route_config`.
    #[serde(default)]
    pub route_config: Option<EnvoyRouteConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterDef {
    pub name: String,
    pub endpoints: Vec<EndpointDef>,
    /// Serve the endpoints through EDS (a ClusterLoadAssignment named like the cluster).
    #[serde(default)]
    pub eds: bool,
    #[serde(default)]
    pub subset_selectors: Option<Vec<Vec<String>>>,
    #[serde(default)]
    pub fallback: Option<FallbackDef>,
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
}

/// `no_fallback`, `any_endpoint`, or `{default_subset: {key: value}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FallbackDef {
    Policy(FallbackPolicy),
    DefaultSubset(DefaultSubsetDef),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackPolicy {
    NoFallback,
    AnyEndpoint,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultSubsetDef {
    pub default_subset: BTreeMap<String, MetaValue>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointDef {
    pub address: String,
    pub broker_name: String,
    #[serde(default)]
    pub broker_id: u64,
    pub cluster_name: String,
    #[serde(default = "default_perm")]
    pub perm: u32,
    #[serde(default = "default_queues")]
    pub read_queue_num: u32,
    #[serde(default = "default_queues")]
    pub write_queue_num: u32,
    #[serde(default)]
    pub lb: BTreeMap<String, MetaValue>,
}

fn default_perm() -> u32 {
    crate::model::perm::READ | crate::model::perm::WRITE
}

fn default_queues() -> u32 {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDef {
    pub topic: String,
    /// Standard routes to this cluster.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Explicit routes, first match wins.
    #[serde(default)]
    pub routes: Option<Vec<RouteDef>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDef {
    #[serde(default)]
    pub name: String,
    /// Matcher on the request code.
    #[serde(default)]
    pub code: Option<CodeMatchDef>,
    pub cluster: String,
    /// `envoy.lb` subset.
    #[serde(default)]
    pub subset: BTreeMap<String, MetaValue>,
}

/// `{exact: 310}` or `{regex: "10|310|320"}` (RE2 syntax, matched against the whole code).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeMatchDef {
    #[serde(default)]
    pub exact: Option<CodeValue>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// A request code written as a number or a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CodeValue {
    Number(i64),
    Text(String),
}

impl CodeValue {
    fn text(&self) -> String {
        match self {
            CodeValue::Number(n) => n.to_string(),
            CodeValue::Text(s) => s.clone(),
        }
    }
}

/// Envoy `extensions.filters.network.rocketmq_proxy.v3.RouteConfiguration`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyRouteConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub routes: Vec<EnvoyRoute>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyRoute {
    #[serde(rename = "match")]
    pub route_match: EnvoyRouteMatch,
    pub route: EnvoyRouteAction,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyRouteMatch {
    pub topic: EnvoyStringMatcher,
    #[serde(default)]
    pub headers: Vec<EnvoyHeaderMatcher>,
}

/// Envoy `type.matcher.v3.StringMatcher` (the topic matcher; only `exact` can become a per-topic
/// virtual host).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyStringMatcher {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub safe_regex: Option<EnvoyRegex>,
    #[serde(default)]
    pub ignore_case: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyRegex {
    pub regex: String,
    /// `google_re2: {}`; accepted and ignored.
    #[serde(default)]
    pub google_re2: Option<serde_yaml_ng::Value>,
}

/// Envoy `config.route.v3.HeaderMatcher` (the common specifiers).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyHeaderMatcher {
    pub name: String,
    #[serde(default)]
    pub exact_match: Option<String>,
    #[serde(default)]
    pub prefix_match: Option<String>,
    #[serde(default)]
    pub suffix_match: Option<String>,
    #[serde(default)]
    pub contains_match: Option<String>,
    #[serde(default)]
    pub safe_regex_match: Option<EnvoyRegex>,
    #[serde(default)]
    pub present_match: Option<bool>,
    #[serde(default)]
    pub string_match: Option<EnvoyStringMatcher>,
    #[serde(default)]
    pub invert_match: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyRouteAction {
    pub cluster: String,
    #[serde(default)]
    pub metadata_match: Option<EnvoyMetadata>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyMetadata {
    #[serde(default)]
    pub filter_metadata: BTreeMap<String, BTreeMap<String, MetaValue>>,
}

// ---------------------------------------------------------------------------------------------
// result

/// The validated content of a static file, in model types (what `Catalog::replace_static` takes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StaticResources {
    pub vhosts: Vec<VirtualHostSpec>,
    pub clusters: Vec<ClusterSpec>,
    pub load_assignments: Vec<LoadAssignment>,
}

/// Reads and validates a static file.
pub fn load(path: &Path) -> Result<StaticResources, StaticConfigError> {
    let shown = path.display().to_string();
    let io = |source| StaticConfigError::Io {
        path: shown.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_STATIC_FILE {
        return Err(StaticConfigError::TooLarge {
            path: shown,
            len,
            max: MAX_STATIC_FILE,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse(&text)
}

/// Parses and validates static YAML.
pub fn parse(text: &str) -> Result<StaticResources, StaticConfigError> {
    let file: StaticFile = if text.trim().is_empty() {
        StaticFile::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| StaticConfigError::Syntax(e.to_string()))?
    };
    file.into_resources()
}

impl StaticFile {
    /// Validates and converts to model resources.
    pub fn into_resources(self) -> Result<StaticResources, StaticConfigError> {
        let mut out = StaticResources::default();
        let mut known: HashSet<String> = HashSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let path = format!("clusters[{i}]");
            let (spec, la) = convert_cluster(&path, c)?;
            if !known.insert(spec.name.clone()) {
                return Err(invalid(
                    format!("{path}.name"),
                    format!("duplicate cluster {:?}", spec.name),
                ));
            }
            out.clusters.push(spec);
            out.load_assignments.extend(la);
        }

        let check_cluster = |path: String, name: &str| {
            if known.contains(name) {
                Ok(())
            } else {
                Err(invalid(path, format!("unknown cluster {name:?}")))
            }
        };
        let mut topics: HashSet<String> = HashSet::new();
        for (i, t) in self.topics.iter().enumerate() {
            let path = format!("topics[{i}]");
            check_topic(&format!("{path}.topic"), &t.topic)?;
            if !topics.insert(t.topic.clone()) {
                return Err(invalid(
                    format!("{path}.topic"),
                    format!("duplicate topic {:?}", t.topic),
                ));
            }
            let name = vhds_name(DEFAULT_ROUTE_CONFIG, &t.topic);
            let vhost = match (&t.cluster, &t.routes) {
                (Some(cluster), None) => {
                    check_cluster(format!("{path}.cluster"), cluster)?;
                    standard_vhost(&name, &t.topic, cluster)
                }
                (None, Some(routes)) => {
                    if routes.is_empty() {
                        return Err(invalid(format!("{path}.routes"), "no routes"));
                    }
                    let mut rules = Vec::with_capacity(routes.len());
                    for (j, r) in routes.iter().enumerate() {
                        let rpath = format!("{path}.routes[{j}]");
                        check_cluster(format!("{rpath}.cluster"), &r.cluster)?;
                        rules.push(convert_route(&rpath, r)?);
                    }
                    VirtualHostSpec {
                        name,
                        topic: t.topic.clone(),
                        routes: rules,
                    }
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(path, "give either `cluster` or `routes`, not both"))
                }
                (None, None) => return Err(invalid(path, "needs `cluster` or `routes`")),
            };
            out.vhosts.push(vhost);
        }

        if let Some(rc) = &self.route_config {
            let rc_name = rc.name.as_deref().unwrap_or(DEFAULT_ROUTE_CONFIG);
            if rc_name.is_empty() || rc_name.contains('/') {
                return Err(invalid(
                    "route_config.name",
                    "must be non-empty and contain no '/'",
                ));
            }
            // Topic -> routes, in file order; topics in first-seen order.
            let mut order: Vec<String> = Vec::new();
            let mut by_topic: HashMap<String, Vec<RouteRule>> = HashMap::new();
            for (i, r) in rc.routes.iter().enumerate() {
                let path = format!("route_config.routes[{i}]");
                let topic = envoy_topic(&format!("{path}.match.topic"), &r.route_match.topic)?;
                if topics.contains(&topic) {
                    return Err(invalid(
                        format!("{path}.match.topic"),
                        format!("topic {topic:?} is also listed under `topics`"),
                    ));
                }
                check_cluster(format!("{path}.route.cluster"), &r.route.cluster)?;
                let rule = convert_envoy_route(&path, r)?;
                if !by_topic.contains_key(&topic) {
                    order.push(topic.clone());
                }
                by_topic.entry(topic).or_default().push(rule);
            }
            for topic in order {
                let routes = by_topic.remove(&topic).unwrap_or_default();
                out.vhosts.push(VirtualHostSpec {
                    name: vhds_name(rc_name, &topic),
                    topic,
                    routes,
                });
            }
        }
        Ok(out)
    }
}

fn check_topic(path: &str, topic: &str) -> Result<(), StaticConfigError> {
    if valid_topic(topic) {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("invalid topic name {topic:?} (1..=127 characters of [%|a-zA-Z0-9_-])"),
        ))
    }
}

/// The routes `resources::build_topic` generates for a registered topic, towards `cluster`.
fn standard_vhost(name: &str, topic: &str, cluster: &str) -> VirtualHostSpec {
    let template = TopicRouteSpec {
        topic: topic.to_owned(),
        brokers: Vec::new(),
    };
    let (mut vhost, _) = build_topic(name, &template, false);
    for r in &mut vhost.routes {
        r.cluster = cluster.to_owned();
    }
    vhost
}

fn convert_cluster(
    path: &str,
    c: &ClusterDef,
) -> Result<(ClusterSpec, Option<LoadAssignment>), StaticConfigError> {
    if c.name.is_empty() {
        return Err(invalid(format!("{path}.name"), "must not be empty"));
    }
    let mut endpoints = Vec::with_capacity(c.endpoints.len());
    let mut seen = HashSet::new();
    for (i, e) in c.endpoints.iter().enumerate() {
        let epath = format!("{path}.endpoints[{i}]");
        let ep = convert_endpoint(&epath, e)?;
        if !seen.insert((ep.broker_name.clone(), ep.broker_id)) {
            return Err(invalid(
                epath,
                format!(
                    "duplicate broker {} id {} in the cluster",
                    ep.broker_name, ep.broker_id
                ),
            ));
        }
        endpoints.push(ep);
    }
    let subset_selectors = match &c.subset_selectors {
        Some(s) => {
            for (i, keys) in s.iter().enumerate() {
                if keys.is_empty() || keys.iter().any(String::is_empty) {
                    return Err(invalid(
                        format!("{path}.subset_selectors[{i}]"),
                        "a selector needs non-empty keys",
                    ));
                }
            }
            s.clone()
        }
        None => default_subset_selectors(),
    };
    let fallback = match &c.fallback {
        None | Some(FallbackDef::Policy(FallbackPolicy::NoFallback)) => SubsetFallback::NoFallback,
        Some(FallbackDef::Policy(FallbackPolicy::AnyEndpoint)) => SubsetFallback::AnyEndpoint,
        Some(FallbackDef::DefaultSubset(d)) => {
            SubsetFallback::DefaultSubset(d.default_subset.clone())
        }
    };
    let (source, la) = if c.eds {
        (
            EndpointSource::Eds(c.name.clone()),
            Some(LoadAssignment {
                cluster_name: c.name.clone(),
                endpoints,
            }),
        )
    } else {
        (EndpointSource::Inline(endpoints), None)
    };
    Ok((
        ClusterSpec {
            name: c.name.clone(),
            endpoints: source,
            subset_selectors,
            fallback,
            connect_timeout_ms: c.connect_timeout_ms,
        },
        la,
    ))
}

fn convert_endpoint(path: &str, e: &EndpointDef) -> Result<Endpoint, StaticConfigError> {
    let Some((host, port)) = e.address.rsplit_once(':') else {
        return Err(invalid(
            format!("{path}.address"),
            format!("{:?} is not host:port", e.address),
        ));
    };
    if host.is_empty() || !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
        return Err(invalid(
            format!("{path}.address"),
            format!("{:?} is not host:port", e.address),
        ));
    }
    for (field, value) in [
        ("broker_name", &e.broker_name),
        ("cluster_name", &e.cluster_name),
    ] {
        if value.is_empty() {
            return Err(invalid(format!("{path}.{field}"), "must not be empty"));
        }
    }
    if e.perm > 15 {
        return Err(invalid(
            format!("{path}.perm"),
            format!("{} is not a RocketMQ perm (0..=15)", e.perm),
        ));
    }
    // The generated envoy.lb keys, then the file's own over them.
    let generated = broker_endpoints(&crate::model::BrokerQueues {
        broker_name: e.broker_name.clone(),
        cluster_name: e.cluster_name.clone(),
        addrs: BTreeMap::from([(e.broker_id, e.address.clone())]),
        perm: e.perm,
        read_queue_num: e.read_queue_num,
        write_queue_num: e.write_queue_num,
    });
    let mut lb = generated
        .into_iter()
        .next()
        .map(|g| g.lb)
        .unwrap_or_default();
    lb.extend(e.lb.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(Endpoint {
        address: e.address.clone(),
        broker_name: e.broker_name.clone(),
        broker_id: e.broker_id,
        cluster_name: e.cluster_name.clone(),
        perm: e.perm,
        read_queue_num: e.read_queue_num,
        write_queue_num: e.write_queue_num,
        lb,
    })
}

fn regex_at(path: &str, pattern: &str) -> Result<StringMatch, StaticConfigError> {
    StringMatch::regex(pattern).map_err(|e| invalid(path, format!("bad regex: {e}")))
}

fn convert_route(path: &str, r: &RouteDef) -> Result<RouteRule, StaticConfigError> {
    let headers = match &r.code {
        None => Vec::new(),
        Some(code) => {
            let matcher = match (&code.exact, &code.regex) {
                (Some(v), None) => StringMatch::Exact(v.text()),
                (None, Some(p)) => regex_at(&format!("{path}.code.regex"), p)?,
                _ => {
                    return Err(invalid(
                        format!("{path}.code"),
                        "give exactly one of `exact` or `regex`",
                    ))
                }
            };
            vec![HeaderMatch {
                name: "code".into(),
                matcher,
                invert: false,
            }]
        }
    };
    Ok(RouteRule {
        name: r.name.clone(),
        headers,
        cluster: r.cluster.clone(),
        subset: r.subset.clone(),
    })
}

fn envoy_topic(path: &str, m: &EnvoyStringMatcher) -> Result<String, StaticConfigError> {
    let other = m.prefix.is_some() || m.suffix.is_some() || m.contains.is_some();
    match (&m.exact, other || m.safe_regex.is_some(), m.ignore_case) {
        (Some(t), false, false) => {
            check_topic(&format!("{path}.exact"), t)?;
            Ok(t.clone())
        }
        _ => Err(invalid(
            path,
            "only `exact` topic matchers (without ignore_case) can be served as per-topic virtual hosts",
        )),
    }
}

fn envoy_string_match(
    path: &str,
    m: &EnvoyStringMatcher,
) -> Result<StringMatch, StaticConfigError> {
    if m.ignore_case {
        return Err(invalid(format!("{path}.ignore_case"), "is not supported"));
    }
    let mut found: Vec<StringMatch> = Vec::new();
    if let Some(s) = &m.exact {
        found.push(StringMatch::Exact(s.clone()));
    }
    if let Some(s) = &m.prefix {
        found.push(StringMatch::Prefix(s.clone()));
    }
    if let Some(s) = &m.suffix {
        found.push(StringMatch::Suffix(s.clone()));
    }
    if let Some(s) = &m.contains {
        found.push(StringMatch::Contains(s.clone()));
    }
    if let Some(r) = &m.safe_regex {
        found.push(regex_at(&format!("{path}.safe_regex.regex"), &r.regex)?);
    }
    one_matcher(path, found)
}

fn one_matcher(path: &str, mut found: Vec<StringMatch>) -> Result<StringMatch, StaticConfigError> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(invalid(path, "no matcher given")),
        _ => Err(invalid(path, "more than one matcher given")),
    }
}

fn convert_envoy_header(
    path: &str,
    h: &EnvoyHeaderMatcher,
) -> Result<HeaderMatch, StaticConfigError> {
    if !MATCHABLE_HEADERS.contains(&h.name.as_str()) {
        return Err(invalid(
            format!("{path}.name"),
            format!(
                "header {:?} is not matchable ({})",
                h.name,
                MATCHABLE_HEADERS.join(", ")
            ),
        ));
    }
    let mut found: Vec<StringMatch> = Vec::new();
    if let Some(s) = &h.exact_match {
        found.push(StringMatch::Exact(s.clone()));
    }
    if let Some(s) = &h.prefix_match {
        found.push(StringMatch::Prefix(s.clone()));
    }
    if let Some(s) = &h.suffix_match {
        found.push(StringMatch::Suffix(s.clone()));
    }
    if let Some(s) = &h.contains_match {
        found.push(StringMatch::Contains(s.clone()));
    }
    if let Some(r) = &h.safe_regex_match {
        found.push(regex_at(
            &format!("{path}.safe_regex_match.regex"),
            &r.regex,
        )?);
    }
    match h.present_match {
        Some(true) => found.push(StringMatch::Present),
        Some(false) => {
            return Err(invalid(
                format!("{path}.present_match"),
                "only `true` is supported (use invert_match)",
            ))
        }
        None => {}
    }
    if let Some(sm) = &h.string_match {
        found.push(envoy_string_match(&format!("{path}.string_match"), sm)?);
    }
    // Envoy: a header matcher without a specifier matches presence.
    let matcher = if found.is_empty() {
        StringMatch::Present
    } else {
        one_matcher(path, found)?
    };
    Ok(HeaderMatch {
        name: h.name.clone(),
        matcher,
        invert: h.invert_match,
    })
}

fn convert_envoy_route(path: &str, r: &EnvoyRoute) -> Result<RouteRule, StaticConfigError> {
    let mut headers = Vec::with_capacity(r.route_match.headers.len());
    for (i, h) in r.route_match.headers.iter().enumerate() {
        headers.push(convert_envoy_header(
            &format!("{path}.match.headers[{i}]"),
            h,
        )?);
    }
    let mut subset = BTreeMap::new();
    if let Some(m) = &r.route.metadata_match {
        for key in m.filter_metadata.keys() {
            if key != LB_METADATA {
                return Err(invalid(
                    format!("{path}.route.metadata_match.filter_metadata"),
                    format!("only {LB_METADATA:?} is supported, not {key:?}"),
                ));
            }
        }
        if let Some(lb) = m.filter_metadata.get(LB_METADATA) {
            subset = lb.clone();
        }
    }
    Ok(RouteRule {
        name: String::new(),
        headers,
        cluster: r.route.cluster.clone(),
        subset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RouteRequest;

    const GOOD: &str = r#"
clusters:
  - name: brokers
    endpoints:
      - address: 127.0.0.1:10911
        broker_name: broker-a
        cluster_name: DefaultCluster
      - address: 127.0.0.1:10921
        broker_name: broker-b
        broker_id: 0
        cluster_name: DefaultCluster
        perm: 4
        read_queue_num: 4
        write_queue_num: 4
        lb: {zone: b}
  - name: eds-brokers
    eds: true
    fallback: any_endpoint
    endpoints:
      - address: 127.0.0.1:10931
        broker_name: broker-c
        cluster_name: C2
topics:
  - topic: TopicA
    cluster: brokers
  - topic: TopicB
    routes:
      - name: send
        code: {exact: 310}
        cluster: brokers
        subset: {writable: true}
      - code: {regex: "11|200050"}
        cluster: eds-brokers
route_config:
  name: rc
  routes:
    - match:
        topic: {exact: TopicC}
        headers: [{name: code, exact_match: "310"}]
      route:
        cluster: brokers
        metadata_match: {filter_metadata: {envoy.lb: {writable: true}}}
    - match: {topic: {exact: TopicC}}
      route: {cluster: eds-brokers}
"#;

    #[test]
    fn parses_every_shape() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.clusters.len(), 2);
        assert_eq!(r.load_assignments.len(), 1);
        assert_eq!(r.load_assignments[0].cluster_name, "eds-brokers");
        let brokers = &r.clusters[0];
        let EndpointSource::Inline(eps) = &brokers.endpoints else {
            panic!("inline expected")
        };
        assert_eq!(eps[0].perm, 6);
        assert_eq!(eps[0].lb.get("writable"), Some(&MetaValue::Bool(true)));
        assert_eq!(eps[1].lb.get("writable"), Some(&MetaValue::Bool(false)));
        assert_eq!(eps[1].lb.get("zone"), Some(&MetaValue::from("b")));
        assert_eq!(r.clusters[1].fallback, SubsetFallback::AnyEndpoint);
        assert_eq!(
            r.clusters[1].endpoints,
            EndpointSource::Eds("eds-brokers".into())
        );

        let topics: Vec<&str> = r.vhosts.iter().map(|v| v.topic.as_str()).collect();
        assert_eq!(topics, ["TopicA", "TopicB", "TopicC"]);
        let a = &r.vhosts[0];
        assert_eq!(a.name, "rocketmq/TopicA");
        assert_eq!(a.routes.len(), 3);
        assert!(a.routes.iter().all(|r| r.cluster == "brokers"));
        let send = RouteRequest {
            code: 310,
            ..Default::default()
        };
        let pop = RouteRequest {
            code: 200050,
            ..Default::default()
        };
        let first = |v: &VirtualHostSpec, req: &RouteRequest<'_>| {
            v.routes.iter().position(|r| r.matches(req))
        };
        assert_eq!(first(a, &send), Some(0));
        assert_eq!(first(a, &pop), Some(1));
        let b = &r.vhosts[1];
        assert_eq!(
            b.routes[0].headers[0].matcher,
            StringMatch::Exact("310".into())
        );
        assert_eq!(first(b, &pop), Some(1));
        let c = &r.vhosts[2];
        assert_eq!(c.name, "rc/TopicC");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(
            c.routes[0].subset.get("writable"),
            Some(&MetaValue::Bool(true))
        );
        assert_eq!(first(c, &pop), Some(1));
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_fields_name_their_path() {
        let e = err("clusters:\n  - name: c\n    endpoints:\n      - address: a:1\n        broker_name: b\n        cluster_name: C\n        colour: red\n");
        assert!(e.contains("clusters[0].endpoints[0]"), "{e}");
        assert!(e.contains("colour"), "{e}");
        let e = err("topic: []\n");
        assert!(e.contains("unknown field `topic`"), "{e}");
    }

    #[test]
    fn type_errors_name_their_path() {
        let e = err("clusters:\n  - name: c\n    endpoints:\n      - address: a:1\n        broker_name: b\n        cluster_name: C\n        perm: many\n");
        assert!(e.contains("clusters[0].endpoints[0].perm"), "{e}");
    }

    #[test]
    fn semantic_errors_name_their_path() {
        let cluster = "clusters:\n  - name: c\n    endpoints:\n      - {address: 'h:1', broker_name: b, cluster_name: C}\n";
        let cases = [
            (
                format!("{cluster}topics:\n  - {{topic: T, cluster: nope}}\n"),
                "topics[0].cluster: unknown cluster \"nope\"",
            ),
            (
                format!("{cluster}topics:\n  - {{topic: 'bad/topic', cluster: c}}\n"),
                "topics[0].topic: invalid topic name",
            ),
            (
                format!("{cluster}topics:\n  - {{topic: T, cluster: c}}\n  - {{topic: T, cluster: c}}\n"),
                "topics[1].topic: duplicate topic",
            ),
            (
                format!("{cluster}topics:\n  - topic: T\n    routes:\n      - {{cluster: c, code: {{regex: '(10'}}}}\n"),
                "topics[0].routes[0].code.regex: bad regex",
            ),
            (
                format!("{cluster}topics:\n  - {{topic: T}}\n"),
                "topics[0]: needs `cluster` or `routes`",
            ),
            (
                "clusters:\n  - name: c\n    endpoints:\n      - {address: 'nohost', broker_name: b, cluster_name: C}\n".to_owned(),
                "clusters[0].endpoints[0].address",
            ),
            (
                "clusters:\n  - name: c\n    endpoints:\n      - {address: 'h:1', broker_name: b, cluster_name: C, perm: 99}\n".to_owned(),
                "clusters[0].endpoints[0].perm",
            ),
            (
                format!("{cluster}  - name: c\n    endpoints: []\n"),
                "clusters[1].name: duplicate cluster",
            ),
            (
                format!("{cluster}route_config:\n  routes:\n    - match: {{topic: {{prefix: T}}}}\n      route: {{cluster: c}}\n"),
                "route_config.routes[0].match.topic: only `exact`",
            ),
            (
                format!("{cluster}route_config:\n  routes:\n    - match: {{topic: {{exact: T}}, headers: [{{name: tag, exact_match: x}}]}}\n      route: {{cluster: c}}\n"),
                "route_config.routes[0].match.headers[0].name",
            ),
            (
                format!("{cluster}route_config:\n  routes:\n    - match: {{topic: {{exact: T}}}}\n      route: {{cluster: zz}}\n"),
                "route_config.routes[0].route.cluster: unknown cluster",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    #[test]
    fn empty_file_is_empty_config() {
        assert_eq!(parse("").unwrap(), StaticResources::default());
        assert_eq!(parse("# nothing\n").unwrap(), StaticResources::default());
    }

    #[test]
    fn example_file_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/xds/static.yaml");
        let r = load(Path::new(path)).unwrap();
        assert!(!r.vhosts.is_empty());
        assert!(!r.clusters.is_empty());
    }
}
