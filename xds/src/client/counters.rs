//! The client's counters: atomics read by [`XdsClient::stats`](super::XdsClient::stats) and
//! `/config_dump`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[derive(Debug, Default)]
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
