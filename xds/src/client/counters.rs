//! The client's counters: atomics read by [`XdsClient::stats`](super::XdsClient::stats) and
//! `/config_dump`, and the same events exported through the `metrics` facade (scraped from
//! whatever recorder the process installed; the sidecar's is Prometheus, where the dots become
//! `_`). Names follow Envoy's xDS subscription stats where one exists:
//!
//! | kind | name | labels | meaning |
//! |---|---|---|---|
//! | counter | `xds.update_attempt` | `type` | responses received |
//! | counter | `xds.update_success` | `type` | responses ACKed |
//! | counter | `xds.update_rejected` | `type` | responses NACKed (the error is logged and kept as `last_nack` in `/config_dump`) |
//! | counter | `xds.resources_received` | `type` | resources in responses (delta: added/changed and removed names) |
//! | counter | `xds.control_plane.reconnects` | | streams that ended and are retried |
//! | gauge | `xds.control_plane.connected_state` | | 1 while an ADS stream is up |
//! | gauge | `xds.subscribed_topics` | | topics subscribed on demand |
//!
//! `type` is one of [`TYPE_LABELS`]: bounded whatever the server sends.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::resources::{
    CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE, ROUTE_CONFIGURATION_TYPE, VIRTUAL_HOST_TYPE,
};

pub const UPDATE_ATTEMPT: &str = "xds.update_attempt";
pub const UPDATE_SUCCESS: &str = "xds.update_success";
pub const UPDATE_REJECTED: &str = "xds.update_rejected";
pub const RESOURCES_RECEIVED: &str = "xds.resources_received";
pub const RECONNECTS: &str = "xds.control_plane.reconnects";
pub const CONNECTED_STATE: &str = "xds.control_plane.connected_state";
pub const SUBSCRIBED_TOPICS: &str = "xds.subscribed_topics";
/// Values of the `type` label, in the order of [`type_index`].
pub const TYPE_LABELS: [&str; 5] = [
    "virtual_host",
    "cluster",
    "load_assignment",
    "route_configuration",
    "other",
];

fn type_index(type_url: &str) -> usize {
    match type_url {
        VIRTUAL_HOST_TYPE => 0,
        CLUSTER_TYPE => 1,
        LOAD_ASSIGNMENT_TYPE => 2,
        ROUTE_CONFIGURATION_TYPE => 3,
        _ => 4,
    }
}

/// Recorder handles of one type.
struct PerType {
    attempt: metrics::Counter,
    success: metrics::Counter,
    rejected: metrics::Counter,
    received: metrics::Counter,
}

/// The exported metrics, registered once when the client starts (with the recorder current
/// then).
pub(crate) struct Exported {
    per_type: [PerType; TYPE_LABELS.len()],
    reconnects: metrics::Counter,
    connected: metrics::Gauge,
    topics: metrics::Gauge,
}

impl std::fmt::Debug for Exported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exported")
    }
}

impl Exported {
    fn register() -> Self {
        metrics::describe_counter!(UPDATE_ATTEMPT, "xDS responses received");
        metrics::describe_counter!(UPDATE_SUCCESS, "xDS responses accepted (ACK sent)");
        metrics::describe_counter!(UPDATE_REJECTED, "xDS responses rejected (NACK sent)");
        metrics::describe_counter!(RESOURCES_RECEIVED, "xDS resources received");
        metrics::describe_counter!(RECONNECTS, "ADS streams ended and retried");
        metrics::describe_gauge!(CONNECTED_STATE, "1 while the ADS stream is up");
        metrics::describe_gauge!(SUBSCRIBED_TOPICS, "topics subscribed on demand");
        Exported {
            per_type: TYPE_LABELS.map(|t| PerType {
                attempt: metrics::counter!(UPDATE_ATTEMPT, "type" => t),
                success: metrics::counter!(UPDATE_SUCCESS, "type" => t),
                rejected: metrics::counter!(UPDATE_REJECTED, "type" => t),
                received: metrics::counter!(RESOURCES_RECEIVED, "type" => t),
            }),
            reconnects: metrics::counter!(RECONNECTS),
            connected: metrics::gauge!(CONNECTED_STATE),
            topics: metrics::gauge!(SUBSCRIBED_TOPICS),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub vhost_subscribes: AtomicU64,
    pub cluster_subscribes: AtomicU64,
    pub requests_sent: AtomicU64,
    pub responses: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub route_waits: AtomicU64,
    exported: Exported,
}

/// A snapshot of the client's counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ClientStats {
    /// Virtual host names subscribed (a name counted once per subscription, not per waiter).
    pub vhost_subscribes: u64,
    pub cluster_subscribes: u64,
    pub requests_sent: u64,
    pub responses: u64,
    pub acks: u64,
    pub nacks: u64,
    pub connects: u64,
    pub disconnects: u64,
    /// `route()` calls that had to wait for the server.
    pub route_waits: u64,
}

impl Counters {
    /// Registers the exported metrics with the current recorder.
    pub fn new() -> Self {
        Counters {
            vhost_subscribes: AtomicU64::new(0),
            cluster_subscribes: AtomicU64::new(0),
            requests_sent: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            nacks: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            route_waits: AtomicU64::new(0),
            exported: Exported::register(),
        }
    }

    /// A response of `type_url` with `resources` resources arrived.
    pub fn response(&self, type_url: &str, resources: usize) {
        Self::add(&self.responses, 1);
        let t = &self.exported.per_type[type_index(type_url)];
        t.attempt.increment(1);
        t.received.increment(resources as u64);
    }

    /// The response was ACKed (`rejected == false`) or NACKed.
    pub fn answered(&self, type_url: &str, rejected: bool) {
        let t = &self.exported.per_type[type_index(type_url)];
        if rejected {
            Self::add(&self.nacks, 1);
            t.rejected.increment(1);
        } else {
            Self::add(&self.acks, 1);
            t.success.increment(1);
        }
    }

    /// A stream ended; the task will reconnect.
    pub fn disconnected(&self) {
        Self::add(&self.disconnects, 1);
        self.exported.reconnects.increment(1);
    }

    pub fn set_connected(&self, up: bool) {
        self.exported.connected.set(if up { 1.0 } else { 0.0 });
    }

    pub fn set_topics(&self, n: usize) {
        self.exported.topics.set(n as f64);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ClientStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            vhost_subscribes: get(&self.vhost_subscribes),
            cluster_subscribes: get(&self.cluster_subscribes),
            requests_sent: get(&self.requests_sent),
            responses: get(&self.responses),
            acks: get(&self.acks),
            nacks: get(&self.nacks),
            connects: get(&self.connects),
            disconnects: get(&self.disconnects),
            route_waits: get(&self.route_waits),
        }
    }
}
