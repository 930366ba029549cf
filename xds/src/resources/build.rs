//! The control plane's resources for a registered topic (routes by request code, a cluster with
//! read/write subsets, endpoints per broker).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use crate::model::{
    perm, BrokerQueues, ClusterSpec, Endpoint, EndpointSource, HeaderMatch, LoadAssignment,
    MetaValue, RouteRule, StringMatch, SubsetFallback, TopicPolicy, TopicRouteSpec,
    VirtualHostSpec,
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
    broker_endpoints_with(b, None)
}

/// [`broker_endpoints`] under a traffic policy: `readable` / `writable` in `envoy.lb` are the
/// registration's perm and the policy's say together, and a weighted writable master carries its
/// weight (Envoy's `load_balancing_weight`). A broker the policy excludes has no endpoints.
pub fn broker_endpoints_with(b: &BrokerQueues, policy: Option<&TopicPolicy>) -> Vec<Endpoint> {
    let name = b.broker_name.as_str();
    if policy.is_some_and(|p| p.excludes(name)) {
        return Vec::new();
    }
    let may_read = policy.is_none_or(|p| p.readable(name));
    let may_write = policy.is_none_or(|p| p.writable(name));
    let weight = policy.and_then(|p| p.weight(name));
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
                    MetaValue::Bool(master && may_read && b.perm & perm::READ != 0),
                ),
                (
                    "writable".to_owned(),
                    MetaValue::Bool(master && may_write && b.perm & perm::WRITE != 0),
                ),
            ]);
            let writable = master && may_write && b.perm & perm::WRITE != 0;
            Endpoint {
                address: addr.clone(),
                broker_name: b.broker_name.clone(),
                broker_id: id,
                cluster_name: b.cluster_name.clone(),
                perm: b.perm,
                read_queue_num: b.read_queue_num,
                write_queue_num: b.write_queue_num,
                lb,
                weight: weight.filter(|_| writable),
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
    build_topic_with(vhost_name, route, None, eds)
}

/// [`build_topic`] under a traffic policy (see [`broker_endpoints_with`]).
pub fn build_topic_with(
    vhost_name: &str,
    route: &TopicRouteSpec,
    policy: Option<&TopicPolicy>,
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
    let endpoints: Vec<Endpoint> = route
        .brokers
        .iter()
        .flat_map(|b| broker_endpoints_with(b, policy))
        .collect();
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
    build_load_assignment_with(route, None)
}

/// [`build_load_assignment`] under a traffic policy.
pub fn build_load_assignment_with(
    route: &TopicRouteSpec,
    policy: Option<&TopicPolicy>,
) -> LoadAssignment {
    LoadAssignment {
        cluster_name: topic_cluster_name(&route.topic),
        endpoints: route
            .brokers
            .iter()
            .flat_map(|b| broker_endpoints_with(b, policy))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{load_assignment_from_proto, load_assignment_to_proto};

    fn spec() -> TopicRouteSpec {
        let b = |name: &str, port: u16| BrokerQueues {
            broker_name: name.into(),
            cluster_name: "C".into(),
            addrs: BTreeMap::from([(0, format!("127.0.0.1:{port}"))]),
            perm: 6,
            read_queue_num: 4,
            write_queue_num: 4,
        };
        TopicRouteSpec {
            topic: "T".into(),
            brokers: vec![
                b("broker-a", 10911),
                b("broker-b", 10912),
                b("broker-c", 10913),
            ],
        }
    }

    fn flag(e: &Endpoint, key: &str) -> bool {
        e.lb.get(key) == Some(&MetaValue::Bool(true))
    }

    #[test]
    fn policy_sets_weights_perms_and_exclusion() {
        let policy = TopicPolicy {
            weights: BTreeMap::from([("broker-a".into(), 90), ("broker-b".into(), 10)]),
            no_read: ["broker-c".to_owned()].into(),
            no_write: ["broker-c".to_owned()].into(),
        };
        let la = build_load_assignment_with(&spec(), Some(&policy));
        let names: Vec<&str> = la
            .endpoints
            .iter()
            .map(|e| e.broker_name.as_str())
            .collect();
        assert_eq!(names, ["broker-a", "broker-b"], "broker-c left the route");
        assert_eq!(la.endpoints[0].weight, Some(90));
        assert_eq!(la.endpoints[1].weight, Some(10));
        assert!(la
            .endpoints
            .iter()
            .all(|e| flag(e, "writable") && flag(e, "readable")));

        // Weighted: a broker without a weight is read-only; the proto round-trips the weights.
        let policy = TopicPolicy {
            weights: BTreeMap::from([("broker-b".into(), 1)]),
            ..Default::default()
        };
        let la = build_load_assignment_with(&spec(), Some(&policy));
        let w: Vec<(bool, bool, Option<u32>)> = la
            .endpoints
            .iter()
            .map(|e| (flag(e, "readable"), flag(e, "writable"), e.weight))
            .collect();
        assert_eq!(
            w,
            [
                (true, false, None),
                (true, true, Some(1)),
                (true, false, None)
            ]
        );
        let back = load_assignment_from_proto(&load_assignment_to_proto(&la)).unwrap();
        assert_eq!(back, la);
    }

    #[test]
    fn bad_policies_are_refused() {
        let zero = TopicPolicy {
            weights: BTreeMap::from([("a".into(), 0), ("b".into(), 0)]),
            ..Default::default()
        };
        assert!(zero.validate().unwrap_err().contains("sum to 0"));
        let huge = TopicPolicy {
            weights: BTreeMap::from([("a".into(), u32::MAX)]),
            ..Default::default()
        };
        assert!(huge.validate().is_err());
        assert!(TopicPolicy::default().validate().is_ok());
    }
}
