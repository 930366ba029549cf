//! `--acl FILE`: Apache's `plain_acl.yml`, enforced on every request before its processor runs
//! (the decision is [`rocketmesh_filters::acl::plain`]'s), reloaded when the file changes
//! ([`rocketmesh_remoting::reload`]: a bad edit keeps the last good accounts).
//!
//! A refused request is answered NO_PERMISSION (16) with a remark naming the account and the
//! resource (never a secret), logged at debug and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocketmesh_filters::acl::PlainAcl;
use rocketmesh_filters::codec::codes::response_code as code;
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_remoting::reload::{ReloadError, Reloading};
use rocketmesh_remoting::server::Connection;

use super::Broker;

/// The broker's ACL: the accounts file and what it refused.
#[derive(Debug)]
pub struct BrokerAcl {
    pub(crate) file: Arc<Reloading<PlainAcl>>,
    denied: AtomicU64,
}

fn parse(text: &str) -> Result<PlainAcl, String> {
    PlainAcl::parse(text).map_err(|e| e.to_string())
}

impl BrokerAcl {
    /// Loads the accounts file (it must parse).
    pub fn load(path: &std::path::Path) -> Result<Self, ReloadError> {
        Ok(BrokerAcl {
            file: Reloading::load(path, "ACL file", parse)?,
            denied: AtomicU64::new(0),
        })
    }

    /// Requests refused so far.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// None when `req` may go on; else the NO_PERMISSION answer.
    pub(crate) fn check(
        &self,
        b: &Broker,
        req: &RemotingCommand,
        conn: &Connection,
    ) -> Option<RemotingCommand> {
        let acl = self.file.current();
        let peer = conn.peer();
        match acl.check(req, Some(peer.ip())) {
            Ok(()) => None,
            Err(denied) => {
                self.denied.fetch_add(1, Ordering::Relaxed);
                b.metrics.acl_denied.increment(1);
                tracing::debug!(%peer, code = req.code(), "ACL: {denied}");
                Some(super::processor::error(
                    b,
                    req,
                    code::NO_PERMISSION,
                    denied.to_string(),
                ))
            }
        }
    }
}
