//! Endpoints with their metadata, and ClusterLoadAssignments.

use std::collections::{BTreeMap, HashMap};

use xds_api::pb::envoy::config::core::v3 as pb_core;
use xds_api::pb::envoy::config::endpoint::v3 as pb_endpoint;
use xds_api::pb::google::protobuf as pb;

use crate::model::{Endpoint, LoadAssignment, LB_METADATA, ROCKETMQ_METADATA};

use super::base::ResourceError;
use super::meta::{meta_of, num, string, struct_of};

pub(super) fn endpoint_to_proto(e: &Endpoint) -> pb_endpoint::LbEndpoint {
    let (host, port) = split_host_port(&e.address).unwrap_or((e.address.as_str(), 0));
    let address = pb_core::Address {
        address: Some(pb_core::address::Address::SocketAddress(
            pb_core::SocketAddress {
                address: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port_specifier: Some(pb_core::socket_address::PortSpecifier::PortValue(
                    u32::from(port),
                )),
                ..Default::default()
            },
        )),
    };
    let rocketmq = pb::Struct {
        fields: HashMap::from([
            ("broker_name".to_owned(), string(&e.broker_name)),
            ("broker_id".to_owned(), num(e.broker_id)),
            ("cluster_name".to_owned(), string(&e.cluster_name)),
            ("perm".to_owned(), num(u64::from(e.perm))),
            (
                "read_queue_num".to_owned(),
                num(u64::from(e.read_queue_num)),
            ),
            (
                "write_queue_num".to_owned(),
                num(u64::from(e.write_queue_num)),
            ),
        ]),
    };
    let mut filter_metadata = HashMap::from([(ROCKETMQ_METADATA.to_owned(), rocketmq)]);
    if !e.lb.is_empty() {
        filter_metadata.insert(LB_METADATA.to_owned(), struct_of(&e.lb));
    }
    pb_endpoint::LbEndpoint {
        host_identifier: Some(pb_endpoint::lb_endpoint::HostIdentifier::Endpoint(
            pb_endpoint::Endpoint {
                address: Some(address),
                ..Default::default()
            },
        )),
        metadata: Some(pb_core::Metadata {
            filter_metadata,
            ..Default::default()
        }),
        load_balancing_weight: e.weight.map(|value| pb::UInt32Value { value }),
        ..Default::default()
    }
}

pub(super) fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

pub(super) fn struct_u64(s: &pb::Struct, key: &str, default: u64) -> Result<u64, String> {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        None => Ok(default),
        Some(pb::value::Kind::NumberValue(n)) if n.fract() == 0.0 && *n >= 0.0 && *n < 9.0e15 => {
            Ok(*n as u64)
        }
        // Some control planes write numbers as strings.
        Some(pb::value::Kind::StringValue(s)) => s
            .parse()
            .map_err(|_| format!("{key}: {s:?} is not a number")),
        Some(_) => Err(format!("{key} must be a non-negative integer")),
    }
}

pub(super) fn struct_str(s: &pb::Struct, key: &str) -> Result<String, String> {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(pb::value::Kind::StringValue(v)) if !v.is_empty() => Ok(v.clone()),
        Some(_) => Err(format!("{key} must be a non-empty string")),
        None => Err(format!("{key} is missing")),
    }
}

/// Defaults for absent endpoint metadata. Envoy's filter defaults perm and queue counts to 0, which
/// makes the broker unusable; we default to a read-write broker with RocketMQ's 8 queues.
pub(super) const DEFAULT_PERM: u64 = 6;
pub(super) const DEFAULT_QUEUES: u64 = 8;

pub(super) fn endpoint_from_proto(lb: &pb_endpoint::LbEndpoint) -> Result<Endpoint, String> {
    let Some(pb_endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
        return Err("endpoint without an address (named endpoints are not supported)".into());
    };
    let Some(pb_core::address::Address::SocketAddress(sa)) =
        ep.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        return Err("endpoint address must be a socket address".into());
    };
    let Some(pb_core::socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
        return Err(format!("endpoint {} has no port_value", sa.address));
    };
    if sa.address.is_empty() || port == 0 || port > 65535 {
        return Err(format!("bad endpoint address {}:{port}", sa.address));
    }
    let address = if sa.address.contains(':') {
        format!("[{}]:{port}", sa.address)
    } else {
        format!("{}:{port}", sa.address)
    };
    let meta = lb.metadata.as_ref();
    let Some(rmq) = meta.and_then(|m| m.filter_metadata.get(ROCKETMQ_METADATA)) else {
        return Err(format!(
            "endpoint {address} has no {ROCKETMQ_METADATA} metadata"
        ));
    };
    let bad = |e: String| format!("endpoint {address}: {e}");
    let lb_meta = match meta.and_then(|m| m.filter_metadata.get(LB_METADATA)) {
        Some(s) => meta_of(s).map_err(|e| bad(format!("{LB_METADATA}: {e}")))?,
        None => BTreeMap::new(),
    };
    let to_u32 =
        |v: u64, key: &str| u32::try_from(v).map_err(|_| bad(format!("{key} out of range")));
    // Envoy requires load_balancing_weight >= 1 when set.
    let weight = match lb.load_balancing_weight.as_ref().map(|w| w.value) {
        Some(0) => return Err(bad("load_balancing_weight must be at least 1".into())),
        w => w,
    };
    Ok(Endpoint {
        broker_name: struct_str(rmq, "broker_name").map_err(bad)?,
        cluster_name: struct_str(rmq, "cluster_name").map_err(bad)?,
        broker_id: struct_u64(rmq, "broker_id", 0).map_err(bad)?,
        perm: to_u32(struct_u64(rmq, "perm", DEFAULT_PERM).map_err(bad)?, "perm")?,
        read_queue_num: to_u32(
            struct_u64(rmq, "read_queue_num", DEFAULT_QUEUES).map_err(bad)?,
            "read_queue_num",
        )?,
        write_queue_num: to_u32(
            struct_u64(rmq, "write_queue_num", DEFAULT_QUEUES).map_err(bad)?,
            "write_queue_num",
        )?,
        lb: lb_meta,
        weight,
        address,
    })
}

pub(super) fn endpoints_from_proto(
    cla: &pb_endpoint::ClusterLoadAssignment,
) -> Result<Vec<Endpoint>, String> {
    let mut out = Vec::new();
    for locality in &cla.endpoints {
        for lb in &locality.lb_endpoints {
            out.push(endpoint_from_proto(lb)?);
        }
    }
    Ok(out)
}

pub(super) fn load_assignment_proto(
    cluster_name: &str,
    endpoints: &[Endpoint],
) -> pb_endpoint::ClusterLoadAssignment {
    pb_endpoint::ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints: vec![pb_endpoint::LocalityLbEndpoints {
            lb_endpoints: endpoints.iter().map(endpoint_to_proto).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn load_assignment_to_proto(la: &LoadAssignment) -> pb_endpoint::ClusterLoadAssignment {
    load_assignment_proto(&la.cluster_name, &la.endpoints)
}

pub fn load_assignment_from_proto(
    cla: &pb_endpoint::ClusterLoadAssignment,
) -> Result<LoadAssignment, ResourceError> {
    if cla.cluster_name.is_empty() {
        return Err(ResourceError::new(
            "ClusterLoadAssignment",
            "",
            "cluster_name is empty",
        ));
    }
    let endpoints = endpoints_from_proto(cla)
        .map_err(|e| ResourceError::new("ClusterLoadAssignment", &cla.cluster_name, e))?;
    Ok(LoadAssignment {
        cluster_name: cla.cluster_name.clone(),
        endpoints,
    })
}
