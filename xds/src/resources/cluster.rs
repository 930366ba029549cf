//! Clusters: subset config, inline or EDS endpoints.

use xds_api::pb::envoy::config::cluster::v3 as pb_cluster;
use xds_api::pb::envoy::config::core::v3 as pb_core;
use xds_api::pb::google::protobuf as pb;

use crate::model::{ClusterSpec, EndpointSource, SubsetFallback};

use super::base::ResourceError;
use super::endpoint::{endpoints_from_proto, load_assignment_proto};
use super::meta::{meta_of, struct_of};

pub(super) const EDS: i32 = pb_cluster::cluster::DiscoveryType::Eds as i32;
pub(super) const STATIC: i32 = pb_cluster::cluster::DiscoveryType::Static as i32;

pub fn cluster_to_proto(c: &ClusterSpec) -> pb_cluster::Cluster {
    use pb_cluster::cluster::{
        lb_subset_config::{LbSubsetFallbackPolicy, LbSubsetSelector},
        ClusterDiscoveryType, EdsClusterConfig, LbSubsetConfig,
    };
    let (fallback, default_subset) = match &c.fallback {
        SubsetFallback::NoFallback => (LbSubsetFallbackPolicy::NoFallback, None),
        SubsetFallback::AnyEndpoint => (LbSubsetFallbackPolicy::AnyEndpoint, None),
        SubsetFallback::DefaultSubset(d) => {
            (LbSubsetFallbackPolicy::DefaultSubset, Some(struct_of(d)))
        }
    };
    let mut out = pb_cluster::Cluster {
        name: c.name.clone(),
        connect_timeout: c.connect_timeout_ms.map(|ms| pb::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
        lb_subset_config: Some(LbSubsetConfig {
            fallback_policy: fallback as i32,
            default_subset,
            subset_selectors: c
                .subset_selectors
                .iter()
                .map(|keys| LbSubsetSelector {
                    keys: keys.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        transport_socket: c.tls.as_ref().map(super::tls::transport_socket),
        ..Default::default()
    };
    match &c.endpoints {
        EndpointSource::Inline(eps) => {
            out.cluster_discovery_type = Some(ClusterDiscoveryType::Type(STATIC));
            out.load_assignment = Some(load_assignment_proto(&c.name, eps));
        }
        EndpointSource::Eds(service) => {
            out.cluster_discovery_type = Some(ClusterDiscoveryType::Type(EDS));
            out.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(pb_core::ConfigSource {
                    config_source_specifier: Some(
                        pb_core::config_source::ConfigSourceSpecifier::Ads(
                            pb_core::AggregatedConfigSource {},
                        ),
                    ),
                    resource_api_version: pb_core::ApiVersion::V3 as i32,
                    ..Default::default()
                }),
                service_name: if service == &c.name {
                    String::new()
                } else {
                    service.clone()
                },
            });
        }
    }
    out
}

pub fn cluster_from_proto(c: &pb_cluster::Cluster) -> Result<ClusterSpec, ResourceError> {
    use pb_cluster::cluster::{lb_subset_config::LbSubsetFallbackPolicy, ClusterDiscoveryType};
    let err = |r: String| ResourceError::new("Cluster", &c.name, r);
    if c.name.is_empty() {
        return Err(err("name is empty".into()));
    }
    let kind = match &c.cluster_discovery_type {
        None => STATIC,
        Some(ClusterDiscoveryType::Type(t)) => *t,
        Some(ClusterDiscoveryType::ClusterType(t)) => {
            return Err(err(format!(
                "custom cluster type {:?} is not supported",
                t.name
            )))
        }
    };
    let endpoints = match kind {
        EDS => {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            EndpointSource::Eds(service)
        }
        STATIC => {
            let eps = match &c.load_assignment {
                Some(cla) => endpoints_from_proto(cla).map_err(err)?,
                None => Vec::new(),
            };
            EndpointSource::Inline(eps)
        }
        other => {
            let name = pb_cluster::cluster::DiscoveryType::try_from(other)
                .map(|t| t.as_str_name().to_owned())
                .unwrap_or_else(|_| other.to_string());
            return Err(err(format!(
                "discovery type {name} is not supported (use STATIC or EDS)"
            )));
        }
    };
    let (subset_selectors, fallback) = match &c.lb_subset_config {
        None => (Vec::new(), SubsetFallback::AnyEndpoint),
        Some(s) => {
            let fallback = match LbSubsetFallbackPolicy::try_from(s.fallback_policy) {
                Ok(LbSubsetFallbackPolicy::NoFallback) => SubsetFallback::NoFallback,
                Ok(LbSubsetFallbackPolicy::AnyEndpoint) => SubsetFallback::AnyEndpoint,
                Ok(LbSubsetFallbackPolicy::DefaultSubset) => SubsetFallback::DefaultSubset(
                    s.default_subset
                        .as_ref()
                        .map(meta_of)
                        .transpose()
                        .map_err(|e| err(format!("default_subset: {e}")))?
                        .unwrap_or_default(),
                ),
                Err(_) => {
                    return Err(err(format!(
                        "unknown fallback_policy {}",
                        s.fallback_policy
                    )))
                }
            };
            let selectors: Vec<Vec<String>> = s
                .subset_selectors
                .iter()
                .map(|sel| sel.keys.clone())
                .collect();
            if selectors.iter().any(Vec::is_empty) {
                return Err(err("a subset selector has no keys".into()));
            }
            (selectors, fallback)
        }
    };
    let connect_timeout_ms = c
        .connect_timeout
        .as_ref()
        .map(|d| {
            if d.seconds < 0 || d.nanos < 0 {
                Err(err("negative connect_timeout".into()))
            } else {
                Ok(d.seconds as u64 * 1000 + d.nanos as u64 / 1_000_000)
            }
        })
        .transpose()?;
    let tls = super::tls::upstream_tls_of(c.transport_socket.as_ref()).map_err(err)?;
    Ok(ClusterSpec {
        name: c.name.clone(),
        endpoints,
        subset_selectors,
        fallback,
        connect_timeout_ms,
        tls,
    })
}
