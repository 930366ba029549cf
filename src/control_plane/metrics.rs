//! The control plane's metrics, through the process-wide `metrics` recorder
//! ([`crate::metrics::install`]).
//!
//! | kind | name | what |
//! |---|---|---|
//! | gauge | `rocketmesh_cp_registered_brokers` | broker addresses registered (nameserver role) |
//! | gauge | `rocketmesh_cp_registered_topics` | topics those brokers serve |
//! | gauge | `rocketmesh_cp_xds_streams{flavour="delta"\|"sotw"}` | open ADS streams |
//! | counter | `rocketmesh_cp_xds_pushes_total` | discovery responses sent on ADS streams |
//! | counter | `rocketmesh_cp_xds_nacks_total` | responses the clients NACKed |
//!
//! The values are read from the registry and the ADS server's counters by
//! [`CpMetrics::publish`]: before every scrape of the control plane's admin server, and once a
//! second by a background task (for processes whose admin server is another component's, as in
//! the demo).

use std::sync::Arc;

use metrics::{Counter, Gauge};
use rocketmesh_xds::server::AdsServer;

use super::namesrv::NameServer;

/// Name prefix of every control plane metric.
pub const PREFIX: &str = "rocketmesh_cp";

/// The control plane's handles and where their values come from.
#[derive(Clone)]
pub struct CpMetrics {
    nameserver: Arc<NameServer>,
    ads: Option<AdsServer>,
    brokers: Gauge,
    topics: Gauge,
    delta_streams: Gauge,
    sotw_streams: Gauge,
    pushes: Counter,
    nacks: Counter,
}

impl std::fmt::Debug for CpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpMetrics").finish_non_exhaustive()
    }
}

impl CpMetrics {
    /// Registers every metric with the installed recorder.
    pub fn register(nameserver: Arc<NameServer>, ads: Option<AdsServer>) -> Self {
        let gauge = |stat: &str, help: &'static str| {
            let name = format!("{PREFIX}_{stat}");
            metrics::describe_gauge!(name.clone(), help);
            name
        };
        let counter = |stat: &str, help: &'static str| {
            let name = format!("{PREFIX}_{stat}");
            metrics::describe_counter!(name.clone(), help);
            metrics::counter!(name)
        };
        let streams = gauge("xds_streams", "Open ADS streams, by protocol flavour");
        Self {
            nameserver,
            ads,
            brokers: metrics::gauge!(gauge("registered_brokers", "Broker addresses registered")),
            topics: metrics::gauge!(gauge(
                "registered_topics",
                "Topics the registered brokers serve"
            )),
            delta_streams: metrics::gauge!(streams.clone(), "flavour" => "delta"),
            sotw_streams: metrics::gauge!(streams, "flavour" => "sotw"),
            pushes: counter(
                "xds_pushes_total",
                "Discovery responses sent on ADS streams",
            ),
            nacks: counter("xds_nacks_total", "Discovery responses NACKed by clients"),
        }
    }

    /// Reads the current values into the recorder.
    pub fn publish(&self) {
        self.brokers.set(self.nameserver.broker_count() as f64);
        self.topics.set(self.nameserver.topic_count() as f64);
        if let Some(ads) = &self.ads {
            let s = ads.stats();
            self.delta_streams.set(s.delta_streams as f64);
            self.sotw_streams.set(s.sotw_streams as f64);
            self.pushes.absolute(s.responses_sent);
            self.nacks.absolute(s.nacks);
        }
    }
}
