//! Type URLs, the validation error, resource and topic names, and `Any` packing.

use prost::Message;
use xds_api::pb::google::protobuf as pb;

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const VIRTUAL_HOST_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
pub const LOAD_ASSIGNMENT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const ROUTE_CONFIGURATION_TYPE: &str =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Request codes routed to writable brokers by generated routes (SEND_MESSAGE, V2, BATCH).
pub const SEND_CODES: &str = "10|310|320";
/// Request codes routed to readable brokers by generated routes (PULL_MESSAGE, POP_MESSAGE).
pub const CONSUME_CODES: &str = "11|200050";

/// Subset selectors of generated clusters.
pub fn default_subset_selectors() -> Vec<Vec<String>> {
    vec![
        vec!["writable".into()],
        vec!["readable".into()],
        vec!["broker_name".into()],
        vec!["broker_name".into(), "broker_id".into()],
    ]
}

/// A resource failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {reason}")]
pub struct ResourceError {
    pub kind: &'static str,
    pub name: String,
    pub reason: String,
}

impl ResourceError {
    pub(super) fn new(kind: &'static str, name: &str, reason: impl Into<String>) -> Self {
        ResourceError {
            kind,
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The cluster name the control plane gives a topic's cluster. Clients never derive it: they read it
/// from the virtual host.
pub fn topic_cluster_name(topic: &str) -> String {
    format!("rocketmq.topic.{topic}")
}

/// The topic of a VHDS resource name `<route_config>/<topic>` (topics never contain '/').
pub fn topic_of_vhds_name(name: &str) -> Option<&str> {
    let (rc, topic) = name.rsplit_once('/')?;
    (!rc.is_empty() && valid_topic(topic)).then_some(topic)
}

/// RocketMQ topic names: 1..=127 characters of `[%|a-zA-Z0-9_-]`.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 127
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
}

pub fn to_any<M: Message>(type_url: &str, m: &M) -> pb::Any {
    pb::Any {
        type_url: type_url.to_owned(),
        value: m.encode_to_vec(),
    }
}

pub fn from_any<M: Message + Default>(expected: &str, any: &pb::Any) -> Result<M, String> {
    if any.type_url != expected {
        return Err(format!(
            "type_url {:?} (expected {expected:?})",
            any.type_url
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("undecodable: {e}"))
}
