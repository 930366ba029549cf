//! The sidecar's admin view: readiness, `/config_dump` and `/clusters` (the admin server itself
//! is `crate::admin`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::dispatch::SidecarCore;
use crate::admin::{AdminSource, Readiness, Ready};
use crate::remoting::tls::{ClientTls, ServerTls};

/// What the admin server shows of a sidecar.
pub struct AdminView {
    pub core: Arc<SidecarCore>,
    pub ready: Ready,
    pub listeners: Vec<SocketAddr>,
    pub tls: Arc<ServerTls>,
    pub upstream_tls: Option<Arc<ClientTls>>,
    pub xds_tls: Option<Arc<ClientTls>>,
    pub xds_token: Option<PathBuf>,
}

impl AdminSource for AdminView {
    fn ready(&self) -> Readiness {
        self.ready.readiness()
    }

    fn publish_stats(&self) {
        self.core.ctx.stats.publish();
    }

    fn config_dump(&self) -> serde_json::Value {
        let (consumer_groups, producer_groups, clients) = self.core.groups.counts();
        let (queues, held) = self.core.pulls.counts();
        serde_json::json!({
            "sidecar": {
                "listeners": self.listeners.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "advertise": self.core.ctx.cfg.advertise,
                "virtual_broker": self.core.ctx.cfg.virtual_broker,
                "clients": {"consumer_groups": consumer_groups, "producer_groups": producer_groups, "clients": clients},
                "upstreams": self.core.ctx.upstreams.endpoints(),
                "pull_to_pop": {"virtual_queues": queues, "held_handles": held},
                // Per group: what its heartbeat says and whether its pulls are translated to
                // pops or relayed to the real queues.
                "consumer_groups": self.core.groups.describe(),
                // Keys and policies; secrets redacted.
                "access": self.core.access.dump(),
            },
            "xds": self.core.xds().config_dump(),
            // Paths, subjects, serials and expiry; never key material or the token.
            "tls": {
                "listeners": self.tls.dump(),
                "upstream": self.upstream_tls.as_ref().map(|t| t.dump()),
                "clusters": self.core.ctx.upstreams.cluster_tls_dump(),
                "xds": self.xds_tls.as_ref().map(|t| t.dump()),
                "xds_token_file": self.xds_token.as_ref().map(|p| p.display().to_string()),
            },
        })
    }

    fn clusters(&self) -> String {
        let snap = self.core.xds().snapshot();
        let mut topics: Vec<&String> = snap.topics.keys().collect();
        topics.sort();
        let mut out = String::new();
        for t in topics {
            if let Some(route) = snap.route(t) {
                for (name, c) in &route.clusters {
                    for e in c.endpoints.iter() {
                        out.push_str(&format!(
                            "{name}::{}::broker::{}/{} perm={} queues=r{}/w{} topic={t}\n",
                            e.address,
                            e.broker_name,
                            e.broker_id,
                            e.perm,
                            e.read_queue_num,
                            e.write_queue_num
                        ));
                    }
                }
            }
        }
        out.push_str(&self.core.ctx.upstreams.clusters_text());
        out
    }
}
