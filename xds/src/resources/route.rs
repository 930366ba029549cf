//! VirtualHosts (one per topic) and RouteConfigurations.

use std::collections::{BTreeMap, HashMap};

use xds_api::pb::envoy::config::core::v3 as pb_core;
use xds_api::pb::envoy::config::route::v3 as pb_route;
use xds_api::pb::envoy::r#type::matcher::v3 as pb_matcher;

use crate::model::{
    regex_source, HeaderMatch, RouteRule, StringMatch, VirtualHostSpec, LB_METADATA,
};

use super::base::{topic_of_vhds_name, valid_topic, ResourceError};
use super::meta::{meta_of, struct_of};

pub(super) fn header_to_proto(h: &HeaderMatch) -> pb_route::HeaderMatcher {
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

pub(super) fn header_from_proto(h: &pb_route::HeaderMatcher) -> Result<HeaderMatch, String> {
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
