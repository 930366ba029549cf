//! The resource types the client subscribes to, described once each for the generic delta
//! handler ([`super::delta`]): type URL, proto, validation into the model, the table it lives in,
//! whether a name is subscribed, and what else changes with it.

use std::collections::HashSet;

use serde::Serialize;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::route::v3::VirtualHost;
use xds_api::pb::envoy::service::discovery::v3::Resource;

use super::state::Subscriptions;
use crate::cache::{Resources, Table};
use crate::model::{ClusterSpec, LoadAssignment, VirtualHostSpec};
use crate::resources::{
    cluster_from_proto, load_assignment_from_proto, topic_of_vhds_name, vhost_from_proto,
    CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE, VIRTUAL_HOST_TYPE,
};

/// What a response changed: topics directly (their virtual host), and clusters (whose topics
/// are found afterwards, in one pass over the subscribed topics).
#[derive(Debug, Default)]
pub(crate) struct Touched {
    pub topics: HashSet<String>,
    pub clusters: HashSet<String>,
}

/// One xDS resource type as the client handles it.
pub(crate) trait ResourceKind {
    type Proto: prost::Message + Default;
    type Spec: Serialize;
    const TYPE_URL: &'static str;
    /// The proto's name, in error messages.
    const LABEL: &'static str;

    /// The names one delta `Resource` stands for.
    fn names(r: &Resource) -> Vec<String> {
        vec![r.name.clone()]
    }

    /// Validates `proto`, which arrived under the resource name `name`.
    fn decode(name: &str, proto: &Self::Proto) -> Result<Self::Spec, String>;

    fn table(res: &mut Resources) -> &mut Table<Self::Spec>;

    /// Whether the client asked for `name` (a removed name is only remembered as missing then).
    fn subscribed(subs: &Subscriptions, name: &str) -> bool;

    /// After `name` was added, replaced or removed: refreshes what derives from it and notes
    /// what it touched.
    fn changed(res: &mut Resources, name: &str, touched: &mut Touched);
}

/// VHDS virtual hosts, one per topic, named `<route_config>/<topic>`.
pub(crate) struct VirtualHosts;

impl ResourceKind for VirtualHosts {
    type Proto = VirtualHost;
    type Spec = VirtualHostSpec;
    const TYPE_URL: &'static str = VIRTUAL_HOST_TYPE;
    const LABEL: &'static str = "VirtualHost";

    /// VHDS may answer one request name with a resource carrying it as an alias.
    fn names(r: &Resource) -> Vec<String> {
        if r.aliases.is_empty() {
            vec![r.name.clone()]
        } else {
            r.aliases.clone()
        }
    }

    fn decode(name: &str, proto: &VirtualHost) -> Result<VirtualHostSpec, String> {
        vhost_from_proto(name, proto).map_err(|e| e.to_string())
    }

    fn table(res: &mut Resources) -> &mut Table<VirtualHostSpec> {
        &mut res.vhosts
    }

    fn subscribed(subs: &Subscriptions, name: &str) -> bool {
        topic_of_vhds_name(name).is_some_and(|t| subs.topics.contains_key(t))
    }

    fn changed(_: &mut Resources, name: &str, touched: &mut Touched) {
        if let Some(t) = topic_of_vhds_name(name) {
            touched.topics.insert(t.to_owned());
        }
    }
}

/// Delta CDS clusters.
pub(crate) struct Clusters;

impl ResourceKind for Clusters {
    type Proto = Cluster;
    type Spec = ClusterSpec;
    const TYPE_URL: &'static str = CLUSTER_TYPE;
    const LABEL: &'static str = "Cluster";

    fn decode(name: &str, proto: &Cluster) -> Result<ClusterSpec, String> {
        let spec = cluster_from_proto(proto).map_err(|e| e.to_string())?;
        if spec.name != name {
            return Err(format!(
                "Cluster {name:?}: resource name differs from cluster name {:?}",
                spec.name
            ));
        }
        Ok(spec)
    }

    fn table(res: &mut Resources) -> &mut Table<ClusterSpec> {
        &mut res.clusters
    }

    fn subscribed(subs: &Subscriptions, name: &str) -> bool {
        subs.clusters.contains(name)
    }

    fn changed(res: &mut Resources, name: &str, touched: &mut Touched) {
        res.refresh_cluster(name);
        touched.clusters.insert(name.to_owned());
    }
}

/// EDS load assignments, named by the clusters' `service_name`.
pub(crate) struct LoadAssignments;

impl ResourceKind for LoadAssignments {
    type Proto = ClusterLoadAssignment;
    type Spec = LoadAssignment;
    const TYPE_URL: &'static str = LOAD_ASSIGNMENT_TYPE;
    const LABEL: &'static str = "ClusterLoadAssignment";

    fn decode(_: &str, proto: &ClusterLoadAssignment) -> Result<LoadAssignment, String> {
        load_assignment_from_proto(proto).map_err(|e| e.to_string())
    }

    fn table(res: &mut Resources) -> &mut Table<LoadAssignment> {
        &mut res.load_assignments
    }

    fn subscribed(subs: &Subscriptions, name: &str) -> bool {
        subs.load_assignments.contains(name)
    }

    fn changed(res: &mut Resources, name: &str, touched: &mut Touched) {
        for c in res.clusters_using_eds(name) {
            res.refresh_cluster(&c);
            touched.clusters.insert(c);
        }
    }
}
