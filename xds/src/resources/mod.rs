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

//!
//! Layout: `base` (type URLs, errors, names, `Any`), `meta`, `endpoint`, `cluster`, `route` (each
//! using only the ones before it), and `build` (the control plane's resources for a topic).

mod base;
mod build;
mod cluster;
mod endpoint;
mod meta;
mod route;
mod tls;

pub use base::*;
pub use build::*;
pub use cluster::*;
pub use endpoint::*;
pub use route::*;
pub use tls::{transport_socket, upstream_tls_of, TLS_SOCKET, UPSTREAM_TLS_CONTEXT};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use std::collections::BTreeMap;
    use xds_api::pb::envoy::config::cluster::v3 as pb_cluster;
    use xds_api::pb::envoy::config::route::v3 as pb_route;
    use xds_api::pb::envoy::r#type::matcher::v3 as pb_matcher;

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
