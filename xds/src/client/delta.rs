//! Delta xDS, the resource side: applying a `DeltaDiscoveryResponse` to the [`State`] with one
//! generic handler per [`ResourceKind`], and building the requests (subscription changes, a
//! stream's first requests, ACK / NACK). No I/O; the stream task in [`super::stream`] sends.

use std::time::Instant;

use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use xds_api::pb::google::rpc::Status as RpcStatus;

use super::kinds::{Clusters, LoadAssignments, ResourceKind, Touched, VirtualHosts};
use super::state::{State, SubscriptionChange};
use crate::cache::Held;
use crate::resources::{from_any, CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE, VIRTUAL_HOST_TYPE};

/// google.rpc.Code INVALID_ARGUMENT, sent in NACKs.
pub(crate) const INVALID_ARGUMENT: i32 = 3;

/// Applies one response. Good resources are applied even when others are rejected; returns the
/// rejections (empty: ACK) and notes the topics whose route may have changed in `st`.
pub(crate) fn apply(
    st: &mut State,
    resp: &DeltaDiscoveryResponse,
    route_config: &str,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut touched = Touched::default();
    let (resources, removed) = (&resp.resources, &resp.removed_resources);
    match resp.type_url.as_str() {
        VIRTUAL_HOST_TYPE => {
            apply_kind::<VirtualHosts>(st, resources, removed, &mut touched, &mut errors)
        }
        CLUSTER_TYPE => apply_kind::<Clusters>(st, resources, removed, &mut touched, &mut errors),
        LOAD_ASSIGNMENT_TYPE => {
            apply_kind::<LoadAssignments>(st, resources, removed, &mut touched, &mut errors)
        }
        other => errors.push(format!("unexpected type_url {other:?}")),
    }
    let via_clusters = st.topics_using(&touched.clusters, route_config);
    st.touch(touched.topics);
    st.touch(via_clusters);
    errors
}

/// The generic per-type handler: decodes and validates each resource (all of its names or
/// none), stores the good ones, and forgets `removed` names (and resources without a body,
/// which mean "does not exist"), remembering subscribed ones as missing.
fn apply_kind<K: ResourceKind>(
    st: &mut State,
    resources: &[Resource],
    removed: &[String],
    touched: &mut Touched,
    errors: &mut Vec<String>,
) {
    let mut gone: Vec<String> = removed.to_vec();
    for r in resources {
        let names = K::names(r);
        let Some(any) = &r.resource else {
            gone.extend(names);
            continue;
        };
        let specs = from_any::<K::Proto>(K::TYPE_URL, any)
            .map_err(|e| format!("{} {:?}: {e}", K::LABEL, r.name))
            .and_then(|p| {
                names
                    .iter()
                    .map(|n| K::decode(n, &p))
                    .collect::<Result<Vec<_>, _>>()
            });
        match specs {
            Ok(specs) => {
                for (name, spec) in names.into_iter().zip(specs) {
                    st.confirmed(K::TYPE_URL, &name);
                    let table = K::table(&mut st.res);
                    table.missing.remove(&name);
                    table
                        .held
                        .insert(name.clone(), Held::new(r.version.clone(), spec));
                    K::changed(&mut st.res, &name, touched);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if !st.deferred.is_empty() || st.grace_deadline().is_some() {
        gone.retain(|name| {
            if !st.defers_removal(K::TYPE_URL, name)
                || !K::table(&mut st.res).held.contains_key(name)
            {
                return true;
            }
            tracing::info!(type_url = K::TYPE_URL, %name,
                "removal right after a reconnect: keeping the last good resource for the grace");
            st.deferred.insert((K::TYPE_URL, name.clone()));
            false
        });
    }
    remove::<K>(st, gone, touched);
}

/// Forgets `names` of kind `K`, remembering subscribed ones as missing.
fn remove<K: ResourceKind>(st: &mut State, names: Vec<String>, touched: &mut Touched) {
    let now = Instant::now();
    for name in names {
        let subscribed = K::subscribed(&st.subs, &name);
        let table = K::table(&mut st.res);
        table.held.remove(&name);
        if subscribed {
            table.missing.insert(name.clone(), now);
        }
        K::changed(&mut st.res, &name, touched);
    }
}

/// Ends the reconnect grace: applies the removals it deferred (still-subscribed names become
/// missing) and notes the topics they touch. Returns how many were applied.
pub(crate) fn end_grace(st: &mut State, route_config: &str) -> usize {
    let deferred = st.take_deferred();
    let n = deferred.len();
    let mut by_type: [Vec<String>; 3] = Default::default();
    for (type_url, name) in deferred {
        match type_url {
            VIRTUAL_HOST_TYPE => by_type[0].push(name),
            CLUSTER_TYPE => by_type[1].push(name),
            _ => by_type[2].push(name),
        }
    }
    let [vhosts, clusters, load_assignments] = by_type;
    let mut touched = Touched::default();
    remove::<VirtualHosts>(st, vhosts, &mut touched);
    remove::<Clusters>(st, clusters, &mut touched);
    remove::<LoadAssignments>(st, load_assignments, &mut touched);
    let via_clusters = st.topics_using(&touched.clusters, route_config);
    st.touch(touched.topics);
    st.touch(via_clusters);
    n
}

/// The ACK of `resp`, or its NACK when `errors` is not empty.
pub(crate) fn ack(resp: &DeltaDiscoveryResponse, errors: &[String]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        error_detail: (!errors.is_empty()).then(|| RpcStatus {
            code: INVALID_ARGUMENT,
            message: errors.join("; "),
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

/// A nonce-less subscription change.
pub(crate) fn subscribe(change: SubscriptionChange) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: change.type_url.to_owned(),
        resource_names_subscribe: change.subscribe,
        resource_names_unsubscribe: change.unsubscribe,
        ..Default::default()
    }
}

/// A stream's first request for `type_url`: every name held or wanted, with versions.
pub(crate) fn initial(
    st: &State,
    type_url: &str,
    route_config: &str,
) -> Option<DeltaDiscoveryRequest> {
    let (names, versions) = st.initial(type_url, route_config);
    if names.is_empty() {
        return None;
    }
    Some(DeltaDiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names_subscribe: names,
        initial_resource_versions: versions.into_iter().collect(),
        ..Default::default()
    })
}
