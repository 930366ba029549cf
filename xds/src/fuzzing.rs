//! The decode -> model path under arbitrary input, with invariants, shared by the cargo-fuzz
//! target (`xds/fuzz`, not built in CI) and a plain test over random and mutated inputs
//! (`xds/tests/decode_fuzz.rs`, run in CI). Not an API for callers.
//!
//! [`check`] panics when an invariant breaks; a decode error or a rejected resource is fine.
//! The first input byte picks the message: a `DeltaDiscoveryResponse` applied to a client state
//! (as the ADS task applies it), or a lone `Cluster`, `VirtualHost` or `ClusterLoadAssignment`
//! through its validator. Invariants: nothing panics; the model is never larger than the proto
//! (no endpoint, route or resource appears from nowhere); a snapshot holds only subscribed topics.

use prost::Message;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::route::v3::VirtualHost;

use crate::client::apply_delta_bytes;
use crate::model::EndpointSource;
use crate::resources::{cluster_from_proto, load_assignment_from_proto, vhost_from_proto};

fn lb_endpoints(cla: &ClusterLoadAssignment) -> usize {
    cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum()
}

/// Runs one input; panics if an invariant does not hold.
pub fn check(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(p) = apply_delta_bytes(bytes) {
                assert!(p.held <= p.names, "{p:?}: more held than named");
                assert!(
                    p.rejected <= p.resources + 1,
                    "{p:?}: more rejections than resources"
                );
                assert!(
                    p.topics <= p.subscribed_topics,
                    "{p:?}: unsubscribed topic in snapshot"
                );
            }
        }
        1 => {
            let Ok(c) = Cluster::decode(bytes) else {
                return;
            };
            if let Ok(spec) = cluster_from_proto(&c) {
                assert_eq!(spec.name, c.name);
                if let EndpointSource::Inline(eps) = &spec.endpoints {
                    let proto = c.load_assignment.as_ref().map_or(0, lb_endpoints);
                    assert!(eps.len() <= proto, "{} endpoints from {proto}", eps.len());
                }
                let selectors = c
                    .lb_subset_config
                    .as_ref()
                    .map_or(0, |s| s.subset_selectors.len());
                assert_eq!(spec.subset_selectors.len(), selectors);
            }
        }
        2 => {
            let Ok(v) = VirtualHost::decode(bytes) else {
                return;
            };
            for name in [v.name.as_str(), "rocketmq/T"] {
                if let Ok(spec) = vhost_from_proto(name, &v) {
                    assert_eq!(spec.routes.len(), v.routes.len());
                    assert!(spec.cluster_names().len() <= spec.routes.len());
                }
            }
        }
        _ => {
            let Ok(cla) = ClusterLoadAssignment::decode(bytes) else {
                return;
            };
            if let Ok(la) = load_assignment_from_proto(&cla) {
                assert_eq!(la.cluster_name, cla.cluster_name);
                assert!(la.endpoints.len() <= lb_endpoints(&cla));
            }
        }
    }
}
