//! A broker node as a process component: the broker crate's node ([`broker::start`]) with the
//! process-wide metrics recorder installed first (the broker's handles bind to it) and,
//! optionally, an admin server of its own (`/ready`, `/healthz`, `/stats/prometheus`,
//! `/config_dump`).
//!
//! Shutdown ([`BrokerNode::shutdown`]): `/ready` answers 503 at once, then the broker drains
//! ([`broker::BrokerHandle::shutdown`]: stop accepting, in-flight requests until the drain
//! deadline, close, background tasks, store flush), then the admin server stops.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminConfig, AdminServer, NodeSource, Ready};
use crate::broker::{self, BrokerConfig, BrokerHandle};

/// A running broker node.
#[derive(Debug)]
pub struct BrokerNode {
    /// The bound Remoting address.
    pub addr: SocketAddr,
    /// The bound admin address, when serving one.
    pub admin_addr: Option<SocketAddr>,
    handle: BrokerHandle,
    ready: Ready,
    admin: Option<AdminServer>,
    admin_stop: CancellationToken,
}

impl BrokerNode {
    /// The broker itself.
    pub fn handle(&self) -> &BrokerHandle {
        &self.handle
    }

    /// The readiness gate behind `/ready`.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Graceful shutdown (see the module docs).
    pub async fn shutdown(self) {
        self.ready.drain();
        self.handle.shutdown().await;
        self.admin_stop.cancel();
        if let Some(a) = self.admin {
            a.stopped().await;
        }
    }
}

/// Starts a broker node; with `admin`, an admin server on that address.
pub async fn start(config: BrokerConfig, admin: Option<SocketAddr>) -> anyhow::Result<BrokerNode> {
    let ready = Ready::new();
    let starting = ready.block("broker");
    let prom = crate::metrics::install();
    let name = config.name.clone();
    let drain = config.drain_timeout;
    let tls = (config.tls.clone(), config.namesrv_tls.clone());
    let handle = broker::start(config)
        .await
        .with_context(|| format!("starting broker {name}"))?;
    let addr = handle.addr;
    let admin_stop = CancellationToken::new();
    let admin = match admin {
        Some(a) => {
            let acl = handle.acl_dumper();
            let dump = move || {
                serde_json::json!({
                    "role": "broker",
                    "name": name,
                    "remoting": addr.to_string(),
                    "acl": acl(),
                    // Paths, subjects, serials and expiry; never key material.
                    "tls": {
                        "listener": tls.0.as_ref().map(|t| t.dump()),
                        "namesrv": tls.1.as_ref().map(|t| t.dump()),
                    },
                })
            };
            let source = Arc::new(NodeSource::new(ready.clone(), dump, || {}));
            let acfg = AdminConfig {
                addr: a,
                drain_deadline: drain,
                ..AdminConfig::default()
            };
            match AdminServer::start(acfg, source, prom, admin_stop.clone()).await {
                Ok(s) => Some(s),
                Err(e) => {
                    handle.shutdown().await;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    drop(starting);
    // Not ready until registered: before that no route names this broker. An unreachable or
    // unresolvable nameserver is retried (and logged) by the registration loop meanwhile.
    let unregistered = ready.block("namesrv");
    let waiting = handle.registered_signal();
    tokio::spawn(async move {
        waiting.await;
        drop(unregistered);
    });
    Ok(BrokerNode {
        addr,
        admin_addr: admin.as_ref().map(AdminServer::local_addr),
        handle,
        ready,
        admin,
        admin_stop,
    })
}
