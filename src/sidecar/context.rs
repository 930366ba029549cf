//! What every part of the data path shares: settings, the router, the upstream pools and the
//! stats. Read-only after start; each component owns its own mutable state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rocketmesh_filters::codec::{RemotingCommand, ResponseEncoding};

use super::error::SidecarError;
use super::router::Router;
use super::upstream::Upstreams;
use crate::metrics::{Counter, Stats};

/// Settings of the data path.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// Address written into route answers (`host:port` of the main listener).
    pub advertise: String,
    /// Name of the virtual broker in route answers.
    pub virtual_broker: String,
    /// Upstream request timeout (pops add their poll time).
    pub request_timeout: Duration,
    pub response_encoding: ResponseEncoding,
}

/// The shared parts of the data path.
#[derive(Debug)]
pub struct Context {
    pub cfg: HandlerConfig,
    pub router: Router,
    pub upstreams: Arc<Upstreams>,
    pub stats: Arc<Stats>,
}

impl Context {
    /// A response to `req` with `code` (and a remark).
    pub fn reply(
        &self,
        req: &RemotingCommand,
        code: i32,
        remark: Option<String>,
    ) -> RemotingCommand {
        let mut r = req.response_to(code, self.cfg.response_encoding);
        if let Some(m) = remark {
            r = r.with_remark(m);
        }
        r
    }

    /// The answer to a failed request (`stub` carries the request's code, opaque, language and
    /// serialization).
    pub fn reject(&self, stub: &RemotingCommand, err: &SidecarError) -> RemotingCommand {
        tracing::debug!(code = stub.code(), remark = %err, "request rejected");
        self.reply(stub, err.code(), Some(err.to_string()))
    }

    /// Sends `req` to the broker at `addr` and returns its answer under the client's opaque
    /// (a oneway request returns a placeholder the caller drops).
    pub async fn forward(
        &self,
        addr: &str,
        connect_timeout: Option<Duration>,
        req: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, SidecarError> {
        let (code, opaque) = (req.code(), req.opaque());
        if req.is_oneway() {
            self.upstreams.send_oneway(addr, req).await?;
            return Ok(RemotingCommand::request(code));
        }
        let start = Instant::now();
        let r = self
            .upstreams
            .invoke(addr, req, timeout, connect_timeout)
            .await;
        self.stats.upstream_rq_time(code, start.elapsed());
        let mut resp = r?;
        self.stats.inc(Counter::Response);
        self.stats.inc(Counter::ResponseDecodingSuccess);
        resp.set_opaque(opaque);
        Ok(resp)
    }
}
