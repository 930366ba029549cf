//! `rocketmesh-xds`: the xDS side of rocketmesh.
//!
//! * [`model`]: our own routing types (topic routes, clusters, endpoints). The rest of rocketmesh
//!   sees only these; xds-api protos stay inside this crate.
//! * [`resources`]: model <-> Envoy resources, validated both ways.
//! * [`catalog`]: the control plane's resource store (what the ADS server serves).
//! * [`static_config`]: static clusters and topic routes from a YAML file.
//! * [`client`] / [`cache`]: the sidecar's on-demand delta ADS client and its route snapshot.
//! * [`server`]: the delta + SotW ADS server.
//! * [`static_config`]: the YAML schema of static resources (control plane `--static`, sidecar
//!   `--bootstrap`).
#![forbid(unsafe_code)]

pub mod cache;
pub mod catalog;
pub mod client;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod resources;
pub mod server;
pub mod static_config;
pub mod transport;

/// The default RDS route configuration name the sidecar subscribes under (`<route_config>/<topic>`).
pub const DEFAULT_ROUTE_CONFIG: &str = "rocketmq";

/// The VHDS resource name of a topic's virtual host: `<route_config>/<topic>`.
pub fn vhds_name(route_config: &str, topic: &str) -> String {
    format!("{route_config}/{topic}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn vhds_names() {
        assert_eq!(super::vhds_name("rocketmq", "TopicA"), "rocketmq/TopicA");
    }
}
