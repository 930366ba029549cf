//! The control plane's resources for a registered topic (routes by request code, a cluster with
//! read/write subsets, endpoints per broker).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use crate::model::{
    perm, BrokerQueues, ClusterSpec, Endpoint, EndpointSource, HeaderMatch, LoadAssignment,
    MetaValue, RouteRule, StringMatch, SubsetFallback, TopicRouteSpec, VirtualHostSpec,
};

use super::base::{default_subset_selectors, topic_cluster_name, CONSUME_CODES, SEND_CODES};

pub(super) static SEND_MATCH: LazyLock<StringMatch> =
    LazyLock::new(|| StringMatch::regex(SEND_CODES).expect("built-in pattern compiles"));
pub(super) static CONSUME_MATCH: LazyLock<StringMatch> =
    LazyLock::new(|| StringMatch::regex(CONSUME_CODES).expect("built-in pattern compiles"));

/// A `code` header matcher; compiled regexes are shared (cloning a Regex is a pointer copy), so
/// deriving resources for many topics compiles nothing.
pub(super) fn code_header(m: &LazyLock<StringMatch>) -> HeaderMatch {
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
        tls: None,
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
