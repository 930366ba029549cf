//! Validation of a parsed file and conversion to model resources; errors name the field path.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::model::{
    ClusterSpec, Endpoint, EndpointSource, HeaderMatch, LoadAssignment, RouteRule, StringMatch,
    SubsetFallback, TopicRouteSpec, VirtualHostSpec, LB_METADATA,
};
use crate::resources::{broker_endpoints, build_topic, default_subset_selectors, valid_topic};
use crate::{vhds_name, DEFAULT_ROUTE_CONFIG};

use super::error::{invalid, StaticConfigError};
use super::schema::{
    ClusterDef, EndpointDef, EnvoyHeaderMatcher, EnvoyRoute, EnvoyStringMatcher, FallbackDef,
    FallbackPolicy, RouteDef, StaticFile,
};

/// Headers a route may match on (the synthetic request headers the data path builds).
const MATCHABLE_HEADERS: [&str; 3] = ["code", "broker_name", "broker_id"];

/// The validated content of a static file, in model types (what `Catalog::replace_static` takes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StaticResources {
    pub vhosts: Vec<VirtualHostSpec>,
    pub clusters: Vec<ClusterSpec>,
    pub load_assignments: Vec<LoadAssignment>,
    /// Traffic policies for registered topics (see [`crate::model::TopicPolicy`]).
    pub policies: BTreeMap<String, crate::model::TopicPolicy>,
}

/// Validates and converts to model resources.
pub(super) fn into_resources(file: StaticFile) -> Result<StaticResources, StaticConfigError> {
    let mut out = StaticResources::default();
    let mut known: HashSet<String> = HashSet::new();
    for (i, c) in file.clusters.iter().enumerate() {
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
    for (i, t) in file.topics.iter().enumerate() {
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

    if let Some(rc) = &file.route_config {
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
    for (topic, policy) in &file.policies {
        let path = format!("policies.{topic}");
        check_topic(&path, topic)?;
        policy.validate().map_err(|e| invalid(path, e))?;
    }
    out.policies = file.policies;
    Ok(out)
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
            tls: c.tls.clone(),
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
        weight: e.weight.filter(|w| *w > 0),
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
