//! `rocketmesh-xds`: the xDS side of rocketmesh (client with on-demand subscriptions, route
//! snapshot cache, ADS server and the RocketMQ <-> Envoy resource model).
//!
//! Built in the issue "Control plane and on-demand xDS client"; this crate is the home for it.
#![forbid(unsafe_code)]

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
