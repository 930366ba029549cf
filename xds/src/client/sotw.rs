//! State-of-the-world xDS, the resource side: a response replaces a whole table (wildcard CDS,
//! the RouteConfiguration's virtual hosts, the named EDS resources), or is rejected whole. No
//! I/O; the stream task in [`super::stream`] sends.

use std::collections::{HashMap, HashSet};

use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_api::pb::google::rpc::Status as RpcStatus;

use super::delta::INVALID_ARGUMENT;
use super::state::State;
use crate::cache::Held;
use crate::model::{ClusterSpec, EndpointSource};
use crate::resources::{
    cluster_from_proto, from_any, load_assignment_from_proto, route_config_from_proto,
    CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE, ROUTE_CONFIGURATION_TYPE, VIRTUAL_HOST_TYPE,
};

/// What applying one response did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Rejections; empty means ACK (and the table was replaced).
    pub errors: Vec<String>,
    /// The clusters now need a different set of EDS resources: re-request EDS.
    pub eds_changed: bool,
}

pub(crate) fn apply(st: &mut State, resp: &DiscoveryResponse, route_config: &str) -> Applied {
    let mut out = Applied::default();
    let errors = &mut out.errors;
    match resp.type_url.as_str() {
        CLUSTER_TYPE => {
            let mut next: HashMap<String, Held<ClusterSpec>> =
                HashMap::with_capacity(resp.resources.len());
            for any in &resp.resources {
                match from_any(CLUSTER_TYPE, any)
                    .and_then(|p| cluster_from_proto(&p).map_err(|e| e.to_string()))
                {
                    Ok(spec) => {
                        let version = match st.res.clusters.get(&spec.name) {
                            Some(old) if *old.value == spec => old.version.clone(),
                            _ => resp.version_info.clone(),
                        };
                        next.insert(spec.name.clone(), Held::new(version, spec));
                    }
                    Err(e) => errors.push(e),
                }
            }
            if errors.is_empty() {
                let names: Vec<String> = next.keys().cloned().collect();
                keep_through_grace(st, CLUSTER_TYPE, &mut next, |st| &mut st.res.clusters.held);
                st.res.clusters.held = next;
                st.res.clusters.missing.clear();
                st.subs.clusters = names.iter().cloned().collect();
                for n in &names {
                    st.res.refresh_cluster(n);
                }
                st.sotw.clusters = true;
                let eds: HashSet<String> = st
                    .res
                    .clusters
                    .held
                    .values()
                    .filter_map(|c| match &c.value.endpoints {
                        EndpointSource::Eds(s) => Some(s.clone()),
                        EndpointSource::Inline(_) => None,
                    })
                    .collect();
                if eds != st.subs.load_assignments {
                    st.subs.load_assignments = eds;
                    out.eds_changed = true;
                }
            }
        }
        ROUTE_CONFIGURATION_TYPE => {
            let mut next = HashMap::new();
            for any in &resp.resources {
                let parsed = from_any::<RouteConfiguration>(ROUTE_CONFIGURATION_TYPE, any)
                    .and_then(|p| {
                        if p.name != route_config {
                            return Ok(None);
                        }
                        route_config_from_proto(&p)
                            .map(Some)
                            .map_err(|e| e.to_string())
                    });
                match parsed {
                    Ok(Some(vhosts)) => {
                        for v in vhosts {
                            let version = match st.res.vhosts.get(&v.name) {
                                Some(old) if *old.value == v => old.version.clone(),
                                _ => resp.version_info.clone(),
                            };
                            next.insert(v.name.clone(), Held::new(version, v));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
            }
            if errors.is_empty() {
                keep_through_grace(st, VIRTUAL_HOST_TYPE, &mut next, |st| {
                    &mut st.res.vhosts.held
                });
                st.res.vhosts.held = next;
                st.res.vhosts.missing.clear();
                st.sotw.routes = true;
            }
        }
        LOAD_ASSIGNMENT_TYPE => {
            let mut next = HashMap::new();
            for any in &resp.resources {
                match from_any(LOAD_ASSIGNMENT_TYPE, any)
                    .and_then(|p| load_assignment_from_proto(&p).map_err(|e| e.to_string()))
                {
                    Ok(la) => {
                        next.insert(
                            la.cluster_name.clone(),
                            Held::new(resp.version_info.clone(), la),
                        );
                    }
                    Err(e) => errors.push(e),
                }
            }
            if errors.is_empty() {
                st.res.load_assignments.held = next;
                let names: Vec<String> = st.res.clusters.held.keys().cloned().collect();
                for n in names {
                    st.res.refresh_cluster(&n);
                }
            }
        }
        other => errors.push(format!("unexpected type_url {other:?}")),
    }
    if out.errors.is_empty() {
        if let Some(k) = [CLUSTER_TYPE, ROUTE_CONFIGURATION_TYPE, LOAD_ASSIGNMENT_TYPE]
            .into_iter()
            .find(|k| *k == resp.type_url)
        {
            st.sotw.versions.insert(k, resp.version_info.clone());
        }
    }
    out
}

/// During the reconnect grace ([`State::begin_grace`]), a response that leaves out resources the
/// client holds does not drop them: they are carried into `next` and their removal deferred.
/// Resources in `next` cancel a deferred removal.
fn keep_through_grace<T>(
    st: &mut State,
    type_url: &'static str,
    next: &mut HashMap<String, Held<T>>,
    held: impl Fn(&mut State) -> &mut HashMap<String, Held<T>>,
) {
    for name in next.keys() {
        st.confirmed(type_url, name);
    }
    if st.grace_deadline().is_none() {
        return;
    }
    let mut dropped: Vec<String> = held(st)
        .keys()
        .filter(|n| !next.contains_key(*n))
        .cloned()
        .collect();
    dropped.retain(|n| st.defers_removal(type_url, n));
    for name in dropped {
        if let Some(h) = held(st).remove(&name) {
            tracing::info!(type_url, %name,
                "left out right after a reconnect: keeping the last good resource for the grace");
            st.deferred.insert((type_url, name.clone()));
            next.insert(name, h);
        }
    }
}

/// The last version ACKed for `type_url` ("" before the first).
pub(crate) fn last_version<'a>(st: &'a State, type_url: &str) -> &'a str {
    st.sotw
        .versions
        .get(type_url)
        .map(String::as_str)
        .unwrap_or("")
}

/// A request for `type_url`: the names it subscribes (the route configuration; the EDS names;
/// none, i.e. wildcard, for clusters), ACKing `version` / `nonce`, or NACKing with `error`.
pub(crate) fn request(
    st: &State,
    route_config: &str,
    type_url: &str,
    version: &str,
    nonce: &str,
    error: Option<String>,
) -> DiscoveryRequest {
    let names = match type_url {
        ROUTE_CONFIGURATION_TYPE => vec![route_config.to_owned()],
        LOAD_ASSIGNMENT_TYPE => {
            let mut n: Vec<String> = st.subs.load_assignments.iter().cloned().collect();
            n.sort();
            n
        }
        _ => Vec::new(),
    };
    DiscoveryRequest {
        version_info: version.to_owned(),
        type_url: type_url.to_owned(),
        resource_names: names,
        response_nonce: nonce.to_owned(),
        error_detail: error.map(|message| RpcStatus {
            code: INVALID_ARGUMENT,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}
