//! The YAML schema, as serde reads it (unknown keys rejected); [`super::convert`] validates it.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::MetaValue;

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
    /// Traffic policies for registered topics (topic -> policy), laid over their routes by the
    /// control plane; the admin API's policy for a topic wins over the file's.
    #[serde(default)]
    pub policies: BTreeMap<String, crate::model::TopicPolicy>,
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
    /// Upstream TLS: `{ca_file, cert_file?, key_file?, sni?, identities?: [{kind: uri|dns|ip|any,
    /// matcher: !exact|!prefix|!suffix|!contains VALUE}]}` (files as the sidecars see them).
    #[serde(default)]
    pub tls: Option<crate::model::UpstreamTls>,
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
    /// Write weight (Envoy's `load_balancing_weight`); 0 or absent = none.
    #[serde(default)]
    pub weight: Option<u32>,
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
    pub(super) fn text(&self) -> String {
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
