//! Upstream pools: a few multiplexed connections per broker endpoint (many requests in flight on
//! each, opaques remapped by [`RemotingClient`]), connect and request timeouts, and a short
//! cool-down for endpoints that refuse connections, so a dead broker is skipped instead of being
//! re-dialled by every request.
//!
//! The pools are the one way a request leaves the sidecar for a broker ([`Upstreams::invoke`],
//! [`Upstreams::try_forward`], [`Upstreams::send_oneway`]), so this is where requests are
//! signed with `--credentials`: after every rewrite, once, whatever path built the request.
//!
//! **Outlier detection** (Envoy's, consecutive gateway failures): a broker whose requests fail
//! `outlier_consecutive` times in a row at the transport (connect refused, connection lost,
//! timeout; any answer, whatever its code, is a success) is ejected for
//! `outlier_base_ejection` times the number of its ejections (at most `outlier_max_ejection`;
//! the multiplier decays by one per healthy ejection time). Routing skips ejected brokers while
//! others can serve (sends, pops over any broker); requests that name the broker (acks for its
//! handles) still go to it, so they get through as soon as it is back. Counted as
//! `outlier_detection_ejections_enforced_total` / `_active` and shown in `/clusters`.

use parking_lot::Mutex;
use rocketmesh_filters::clock::mono_ms;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocketmesh_filters::acl::{sign, Credentials};
use rocketmesh_filters::codec::RemotingCommand;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::metrics::{Counter, Gauge, Stats};
use crate::remoting::tls::{ClientTls, ClientTlsDump, ClientTlsOptions, DEFAULT_RELOAD_INTERVAL};
use crate::remoting::{ClientError, Completion, RemotingClient};
use rocketmesh_xds::model::UpstreamTls;

/// Upstream settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Connections per endpoint (each multiplexed).
    pub connections_per_endpoint: usize,
    /// Default connect timeout (a cluster's `connect_timeout` overrides it).
    pub connect_timeout: Duration,
    /// How long an endpoint that refused a connection is skipped.
    pub failure_cooldown: Duration,
    /// Most endpoints pooled at once (least recently used idle pools are dropped past it).
    pub max_endpoints: usize,
    /// Keys every upstream request is signed with (Apache's ACL signature); None = requests
    /// leave as built (an application's own signature, if any, stays).
    pub credentials: Option<Credentials>,
    /// Outlier detection: consecutive transport failures that eject a broker (0: off).
    pub outlier_consecutive: u32,
    /// Outlier detection: ejection time per ejection so far.
    pub outlier_base_ejection: Duration,
    /// Outlier detection: longest ejection.
    pub outlier_max_ejection: Duration,
    /// TLS to every broker (`--upstream-tls-*`); a cluster's own `UpstreamTlsContext` wins.
    pub tls: Option<Arc<ClientTls>>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connections_per_endpoint: 2,
            connect_timeout: Duration::from_secs(1),
            failure_cooldown: Duration::from_secs(2),
            max_endpoints: 1024,
            credentials: None,
            outlier_consecutive: 5,
            outlier_base_ejection: Duration::from_secs(2),
            outlier_max_ejection: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Why an upstream call failed.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// The request never left: no connection could be made (or the endpoint is cooling down).
    #[error("cannot connect to broker {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The request may have reached the broker.
    #[error("broker {addr}: {source}")]
    Call {
        addr: String,
        #[source]
        source: ClientError,
    },
}

impl UpstreamError {
    /// True when the request certainly did not reach the broker (safe to retry elsewhere).
    pub fn not_sent(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }
}

/// A request a broker sent us on one of our upstream connections.
#[derive(Debug)]
pub struct BrokerRequest {
    pub addr: String,
    pub cmd: RemotingCommand,
    pub client: RemotingClient,
}

#[derive(Debug, Default)]
struct PoolStats {
    requests: AtomicU64,
    errors: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    active: AtomicU64,
    ejections: AtomicU64,
}

/// Outlier detection state of one endpoint.
#[derive(Debug, Default)]
struct Outlier {
    consecutive: AtomicU32,
    /// Ejections counted into the next ejection's length (decays while healthy).
    multiplier: AtomicU32,
    /// Ejected until, ms (`mono_ms`; 0: not ejected).
    until: AtomicU64,
    /// When the last ejection ended or will end, ms (for the decay).
    last_end: AtomicU64,
}

#[derive(Debug)]
struct Pool {
    addr: String,
    slots: Vec<tokio::sync::Mutex<Option<RemotingClient>>>,
    next: AtomicUsize,
    /// Cool-down end after a failed connect, ms since `EPOCH` (0: none). Atomics, not locks:
    /// every request reads them.
    down_until: AtomicU64,
    /// [`Upstreams::uses`] at the last look-up: the least recent idle pool is evicted first.
    last_used: AtomicU64,
    stats: PoolStats,
    outlier: Outlier,
}

impl Pool {
    /// Cooling down after a refused connect (nothing is dialled meanwhile).
    fn is_cooling(&self) -> bool {
        // No clock read in the common case (never failed, or recovered since).
        let until = self.down_until.load(Ordering::Relaxed);
        until != 0 && mono_ms() < until
    }

    /// Ejected by outlier detection; an ejection found over is cleared here (`stats` counts
    /// it out of the active gauge).
    fn is_ejected(&self, stats: Option<&Stats>) -> bool {
        let until = self.outlier.until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if mono_ms() < until {
            return true;
        }
        if self
            .outlier
            .until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!(addr = %self.addr, "outlier ejection over: the broker takes traffic again");
            if let Some(s) = stats {
                s.gauge_add(Gauge::OutlierEjectionsActive, -1);
            }
        }
        false
    }

    fn is_down(&self, stats: Option<&Stats>) -> bool {
        self.is_cooling() || self.is_ejected(stats)
    }

    /// A request got an answer: the failure run ends; a healthy ejection time since the last
    /// ejection takes one off the multiplier.
    fn success(&self, cfg: &UpstreamConfig) {
        let o = &self.outlier;
        if o.consecutive.load(Ordering::Relaxed) != 0 {
            o.consecutive.store(0, Ordering::Relaxed);
        }
        let m = o.multiplier.load(Ordering::Relaxed);
        if m > 0 {
            let healthy_since = o.last_end.load(Ordering::Relaxed);
            let step = cfg.outlier_base_ejection.as_millis() as u64;
            if mono_ms() > healthy_since + step {
                o.multiplier.store(m - 1, Ordering::Relaxed);
                o.last_end.store(mono_ms(), Ordering::Relaxed);
            }
        }
    }

    /// A request failed at the transport; the `outlier_consecutive`-th in a row ejects.
    fn failure(&self, cfg: &UpstreamConfig, stats: Option<&Stats>) {
        if cfg.outlier_consecutive == 0 {
            return;
        }
        let o = &self.outlier;
        let n = o.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n < cfg.outlier_consecutive || self.is_ejected(stats) {
            return;
        }
        o.consecutive.store(0, Ordering::Relaxed);
        let m = o.multiplier.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = (cfg.outlier_base_ejection.as_millis() as u64)
            .saturating_mul(u64::from(m))
            .min(cfg.outlier_max_ejection.as_millis() as u64);
        let until = mono_ms() + ms;
        if o.until
            .compare_exchange(0, until, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            o.last_end.store(until, Ordering::Relaxed);
            self.stats.ejections.fetch_add(1, Ordering::Relaxed);
            if let Some(s) = stats {
                s.inc(Counter::OutlierEjections);
                s.gauge_add(Gauge::OutlierEjectionsActive, 1);
            }
            tracing::warn!(addr = %self.addr, failures = n, ejection_ms = ms, "outlier detection: broker ejected");
        }
    }
}

impl Pool {
    /// The next slot in rotation and its connection when it is up, without waiting on the slot.
    fn try_live(&self) -> (usize, Option<RemotingClient>) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let live = match self.slots[i].try_lock() {
            Ok(slot) => slot.as_ref().filter(|c| !c.is_closed()).cloned(),
            Err(_) => None,
        };
        (i, live)
    }

    /// Closes every connection of the pool (waiting requests fail).
    fn close(&self) {
        for slot in &self.slots {
            if let Ok(mut s) = slot.try_lock() {
                if let Some(c) = s.take() {
                    c.close();
                }
            }
        }
    }
}

/// Keeps a pool's counters right around a [`Upstreams::try_forward`] completion.
struct PoolDone<C> {
    pool: Arc<Pool>,
    cfg: Arc<UpstreamConfig>,
    stats: Option<Arc<Stats>>,
    inner: C,
}

impl<C: Completion> Completion for PoolDone<C> {
    fn complete(self, result: Result<RemotingCommand, ClientError>) {
        let stats = &self.pool.stats;
        stats.active.fetch_sub(1, Ordering::Relaxed);
        if result.is_err() {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            self.pool.failure(&self.cfg, self.stats.as_deref());
        } else {
            self.pool.success(&self.cfg);
        }
        self.inner.complete(result);
    }
}

/// Which TLS a broker address takes from the routes (a cluster's `UpstreamTlsContext`).
pub type ClusterTlsLookup = Arc<dyn Fn(&str) -> Option<UpstreamTls> + Send + Sync>;

/// Most distinct cluster TLS settings built at once (past it the cache starts again).
const MAX_CLUSTER_TLS: usize = 64;

/// Every upstream pool of a sidecar.
pub struct Upstreams {
    cfg: Arc<UpstreamConfig>,
    /// Where outlier ejections are counted (none in unit tests).
    stats: Option<Arc<Stats>>,
    /// Looked up at every connect (not per request): a cluster's TLS wins over `cfg.tls`.
    cluster_tls: Option<ClusterTlsLookup>,
    /// Client TLS built per distinct cluster setting.
    built_tls: Mutex<HashMap<UpstreamTls, Arc<ClientTls>>>,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    /// Pool look-ups so far: the recency order of [`Pool::last_used`] (a count, not a clock
    /// read per request).
    uses: AtomicU64,
    inbound: mpsc::Sender<BrokerRequest>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("cfg", &self.cfg)
            .field("pools", &self.pools.lock().len())
            .finish_non_exhaustive()
    }
}

impl Upstreams {
    /// Requests brokers send us are delivered to `inbound` (bounded; dropped when full).
    pub fn new(cfg: UpstreamConfig, inbound: mpsc::Sender<BrokerRequest>) -> Self {
        Upstreams {
            cfg: Arc::new(cfg),
            stats: None,
            pools: Mutex::new(HashMap::new()),
            uses: AtomicU64::new(0),
            inbound,
            cluster_tls: None,
            built_tls: Mutex::new(HashMap::new()),
        }
    }

    /// Counts outlier ejections in `stats`.
    pub fn with_stats(mut self, stats: Arc<Stats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Takes each connection's TLS from the cluster that names its address, when one does.
    pub fn with_cluster_tls(mut self, lookup: ClusterTlsLookup) -> Self {
        self.cluster_tls = Some(lookup);
        self
    }

    /// The TLS a new connection to `addr` uses: its cluster's, else `--upstream-tls-*`.
    fn tls_for(&self, addr: &str) -> Result<Option<Arc<ClientTls>>, String> {
        let Some(spec) = self.cluster_tls.as_ref().and_then(|l| l(addr)) else {
            return Ok(self.cfg.tls.clone());
        };
        if let Some(t) = self.built_tls.lock().get(&spec) {
            return Ok(Some(t.clone()));
        }
        let opts = ClientTlsOptions {
            ca: spec.ca_file.clone().into(),
            cert: spec.cert_file.clone().map(Into::into),
            key: spec.key_file.clone().map(Into::into),
            sni: spec.sni.clone(),
            identities: spec.identities.clone(),
            alpn: Vec::new(),
        };
        let tls = ClientTls::new(opts, DEFAULT_RELOAD_INTERVAL)
            .map_err(|e| format!("the cluster's TLS settings: {e}"))?;
        let mut built = self.built_tls.lock();
        if built.len() >= MAX_CLUSTER_TLS {
            built.clear();
        }
        built.insert(spec, tls.clone());
        Ok(Some(tls))
    }

    /// What `/config_dump` shows of the TLS built for clusters.
    pub fn cluster_tls_dump(&self) -> Vec<ClientTlsDump> {
        self.built_tls.lock().values().map(|t| t.dump()).collect()
    }

    fn pool(&self, addr: &str) -> Arc<Pool> {
        let mut pools = self.pools.lock();
        if let Some(p) = pools.get(addr) {
            p.last_used
                .store(self.uses.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
            return p.clone();
        }
        if pools.len() >= self.cfg.max_endpoints {
            // Drop the least recently used idle pool (its connections close with the last clone).
            if let Some(victim) = pools
                .iter()
                .filter(|(_, p)| p.stats.active.load(Ordering::Relaxed) == 0)
                .min_by_key(|(_, p)| p.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
            {
                if let Some(p) = pools.remove(&victim) {
                    p.close();
                }
            }
        }
        let pool = Arc::new(Pool {
            addr: addr.to_owned(),
            slots: (0..self.cfg.connections_per_endpoint.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            down_until: AtomicU64::new(0),
            last_used: AtomicU64::new(self.uses.fetch_add(1, Ordering::Relaxed)),
            stats: PoolStats::default(),
            outlier: Outlier::default(),
        });
        pools.insert(addr.to_owned(), pool.clone());
        pool
    }

    /// `cmd` as it goes upstream: signed when the sidecar has credentials (replacing the
    /// application's `AccessKey`/`Signature`: a rewritten request would not verify anyway).
    fn outgoing(&self, mut cmd: RemotingCommand) -> RemotingCommand {
        if let Some(creds) = &self.cfg.credentials {
            sign(&mut cmd, creds);
        }
        cmd
    }

    /// Whether `addr` refused a connection recently or is ejected as an outlier (callers
    /// prefer other endpoints).
    pub fn is_down(&self, addr: &str) -> bool {
        let pool = self.pools.lock().get(addr).cloned();
        pool.is_some_and(|p| p.is_down(self.stats.as_deref()))
    }

    async fn connection(
        &self,
        pool: &Pool,
        connect_timeout: Duration,
    ) -> Result<RemotingClient, UpstreamError> {
        if pool.is_cooling() {
            return Err(UpstreamError::Connect {
                addr: pool.addr.clone(),
                reason: "endpoint is cooling down after a failed connect".into(),
            });
        }
        let (i, live) = pool.try_live();
        if let Some(c) = live {
            return Ok(c);
        }
        let mut slot = pool.slots[i].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let (tx, mut rx) = mpsc::channel::<RemotingCommand>(64);
        let tls = match self.tls_for(&pool.addr) {
            Ok(t) => t,
            Err(reason) => {
                pool.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                return Err(UpstreamError::Connect {
                    addr: pool.addr.clone(),
                    reason,
                });
            }
        };
        match RemotingClient::connect_to_tls(&pool.addr, connect_timeout, tls.as_deref(), Some(tx))
            .await
        {
            Ok(c) => {
                pool.stats.connects.fetch_add(1, Ordering::Relaxed);
                pool.down_until.store(0, Ordering::Relaxed);
                // Relay what the broker asks of us (NOTIFY_CONSUMER_IDS_CHANGED, ...). The task
                // ends when the connection does (its reader owns the sender); pools close their
                // connections explicitly when dropped, so this clone does not keep one alive.
                let (inbound, addr, client) = (self.inbound.clone(), pool.addr.clone(), c.clone());
                tokio::spawn(async move {
                    while let Some(cmd) = rx.recv().await {
                        let req = BrokerRequest {
                            addr: addr.clone(),
                            cmd,
                            client: client.clone(),
                        };
                        if inbound.try_send(req).is_err() {
                            tracing::debug!(%addr, "dropping a broker request: relay queue full");
                        }
                    }
                });
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                pool.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                pool.failure(&self.cfg, self.stats.as_deref());
                pool.down_until.store(
                    mono_ms() + self.cfg.failure_cooldown.as_millis() as u64,
                    Ordering::Relaxed,
                );
                Err(UpstreamError::Connect {
                    addr: pool.addr.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Sends `cmd` to the broker at `addr` and waits for its answer.
    pub async fn invoke(
        &self,
        addr: &str,
        cmd: RemotingCommand,
        timeout: Duration,
        connect_timeout: Option<Duration>,
    ) -> Result<RemotingCommand, UpstreamError> {
        let cmd = self.outgoing(cmd);
        let pool = self.pool(addr);
        pool.stats.requests.fetch_add(1, Ordering::Relaxed);
        let client = match self
            .connection(&pool, connect_timeout.unwrap_or(self.cfg.connect_timeout))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                pool.stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        pool.stats.active.fetch_add(1, Ordering::Relaxed);
        let r = client.invoke(cmd, timeout).await;
        pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        if r.is_ok() {
            pool.success(&self.cfg);
        }
        r.map_err(|source| {
            pool.stats.errors.fetch_add(1, Ordering::Relaxed);
            pool.failure(&self.cfg, self.stats.as_deref());
            if matches!(source, ClientError::Connect { .. }) {
                UpstreamError::Connect {
                    addr: addr.to_owned(),
                    reason: source.to_string(),
                }
            } else {
                UpstreamError::Call {
                    addr: addr.to_owned(),
                    source,
                }
            }
        })
    }

    /// Sends `cmd` to `addr` on a connection that is already up, without waiting: `done` gets
    /// the answer (or the error) later, on that connection's reader. Hands both back when no
    /// live connection is at hand or it cannot take the request now (the caller then goes the
    /// waiting way: [`Upstreams::invoke`] connects, waits for room, and can retry elsewhere).
    /// The timeout runs from `now`, the caller's reading of the clock.
    #[allow(clippy::result_large_err)]
    pub fn try_forward<C: Completion>(
        &self,
        addr: &str,
        cmd: RemotingCommand,
        now: Instant,
        timeout: Duration,
        done: C,
    ) -> Result<(), (RemotingCommand, C)> {
        let pool = self.pool(addr);
        if pool.is_down(self.stats.as_deref()) {
            return Err((cmd, done));
        }
        let Some(client) = pool.try_live().1 else {
            return Err((cmd, done));
        };
        // Signed here and again if handed back to `invoke`: signing replaces the signature.
        let cmd = self.outgoing(cmd);
        pool.stats.active.fetch_add(1, Ordering::Relaxed);
        let tracked = PoolDone {
            pool: pool.clone(),
            cfg: self.cfg.clone(),
            stats: self.stats.clone(),
            inner: done,
        };
        match client.try_invoke_at(cmd, now, timeout, tracked) {
            Ok(()) => {
                pool.stats.requests.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err((cmd, tracked)) => {
                pool.stats.active.fetch_sub(1, Ordering::Relaxed);
                Err((cmd, tracked.inner))
            }
        }
    }

    /// Sends a oneway request (no answer expected).
    pub async fn send_oneway(&self, addr: &str, cmd: RemotingCommand) -> Result<(), UpstreamError> {
        let cmd = self.outgoing(cmd);
        let pool = self.pool(addr);
        let client = self.connection(&pool, self.cfg.connect_timeout).await?;
        client
            .invoke_oneway(cmd)
            .await
            .map_err(|source| UpstreamError::Call {
                addr: addr.to_owned(),
                source,
            })
    }

    /// Closes every pooled connection (shutdown).
    pub fn close_all(&self) {
        for p in self.pools.lock().drain().map(|(_, p)| p) {
            p.close();
        }
    }

    /// Addresses pooled now.
    pub fn endpoints(&self) -> Vec<String> {
        let mut v: Vec<String> = self.pools.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Envoy-style `/clusters` lines for the pooled endpoints.
    pub fn clusters_text(&self) -> String {
        let pools = self.pools.lock();
        let mut names: Vec<&String> = pools.keys().collect();
        names.sort();
        let mut out = String::new();
        for name in names {
            let p = &pools[name];
            let s = &p.stats;
            let cooling = p.is_cooling();
            let ejected = p.is_ejected(self.stats.as_deref());
            for (k, v) in [
                ("rq_total", s.requests.load(Ordering::Relaxed)),
                ("rq_error", s.errors.load(Ordering::Relaxed)),
                ("rq_active", s.active.load(Ordering::Relaxed)),
                ("cx_total", s.connects.load(Ordering::Relaxed)),
                (
                    "cx_connect_fail",
                    s.connect_failures.load(Ordering::Relaxed),
                ),
                ("outlier_ejections", s.ejections.load(Ordering::Relaxed)),
                (
                    "outlier_consecutive_failures",
                    u64::from(p.outlier.consecutive.load(Ordering::Relaxed)),
                ),
            ] {
                out.push_str(&format!("upstream::{name}::{k}::{v}\n"));
            }
            let flags = match (ejected, cooling) {
                (true, true) => "/failed_outlier_check/failed_connect",
                (true, false) => "/failed_outlier_check",
                (false, true) => "/failed_connect",
                (false, false) => "healthy",
            };
            out.push_str(&format!("upstream::{name}::health_flags::{flags}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remoting::{Connection, Handler, Server, ServerConfig};
    use rocketmesh_filters::acl::verify;
    use rocketmesh_filters::codec::{response_code, ResponseEncoding};

    /// A broker that counts requests whose signature verifies under `SECRET` and those that do
    /// not, and answers NO_PERMISSION to the latter.
    #[derive(Default)]
    struct Checking {
        signed: AtomicU64,
        unsigned: AtomicU64,
    }

    const SECRET: &str = "mesh-secret";

    impl Handler for Checking {
        async fn handle(
            self: &Arc<Self>,
            req: RemotingCommand,
            _conn: &Arc<Connection>,
        ) -> Option<RemotingCommand> {
            let ok = verify(&req, SECRET) && req.ext().get("AccessKey") == Some("mesh");
            let n = if ok { &self.signed } else { &self.unsigned };
            n.fetch_add(1, Ordering::Relaxed);
            let code = if ok {
                response_code::SUCCESS
            } else {
                response_code::NO_PERMISSION
            };
            Some(req.response_to(code, ResponseEncoding::Json))
        }
    }

    struct Done(tokio::sync::oneshot::Sender<i32>);

    impl Completion for Done {
        fn complete(self, result: Result<RemotingCommand, ClientError>) {
            let _ = self.0.send(result.map_or(-1, |r| r.code()));
        }
    }

    /// The application's request, with its own (stale) keys.
    fn app_request(code: i32) -> RemotingCommand {
        let mut r = RemotingCommand::request(code).with_body(&b"body"[..]);
        r.ext_mut().insert("topic", "T");
        r.ext_mut().insert("AccessKey", "app");
        r.ext_mut().insert("Signature", "app-signature");
        r
    }

    /// Every way out of the pools signs: a request that left unsigned (or with the
    /// application's keys) would be counted by the checking broker.
    #[tokio::test]
    async fn every_upstream_path_signs() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let broker = Arc::new(Checking::default());
        let server = Server::start(listener, broker.clone(), ServerConfig::default());
        let (tx, _rx) = mpsc::channel(1);
        let cfg = UpstreamConfig {
            credentials: Some(Credentials {
                access_key: "mesh".into(),
                secret_key: SECRET.into(),
                security_token: None,
            }),
            // One connection: try_forward takes only a slot that is already up.
            connections_per_endpoint: 1,
            ..UpstreamConfig::default()
        };
        let up = Upstreams::new(cfg, tx);
        let t = Duration::from_secs(5);
        let r = up.invoke(&addr, app_request(10), t, None).await.unwrap();
        assert_eq!(r.code(), response_code::SUCCESS);
        let (done, answer) = tokio::sync::oneshot::channel();
        // The connection is up now, so try_forward takes the request.
        assert!(up
            .try_forward(&addr, app_request(11), Instant::now(), t, Done(done))
            .is_ok());
        assert_eq!(answer.await.unwrap(), response_code::SUCCESS);
        up.send_oneway(&addr, app_request(34).oneway())
            .await
            .unwrap();
        let deadline = Instant::now() + t;
        while broker.signed.load(Ordering::Relaxed) < 3 {
            assert!(
                Instant::now() < deadline,
                "the oneway request never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(broker.unsigned.load(Ordering::Relaxed), 0);
        up.close_all();
        server.close().await;
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_time() {
        let cfg = UpstreamConfig {
            outlier_consecutive: 3,
            outlier_base_ejection: Duration::from_millis(40),
            outlier_max_ejection: Duration::from_millis(100),
            ..UpstreamConfig::default()
        };
        let stats = Arc::new(Stats::new("t").unwrap());
        let (tx, _rx) = mpsc::channel(1);
        let ups = Upstreams::new(cfg, tx).with_stats(stats.clone());
        let pool = ups.pool("127.0.0.1:1");
        let fail = |n| (0..n).for_each(|_| pool.failure(&ups.cfg, Some(&stats)));
        fail(2);
        pool.success(&ups.cfg);
        fail(2);
        assert!(!ups.is_down("127.0.0.1:1"), "a success ends the run");
        fail(1);
        assert!(ups.is_down("127.0.0.1:1"));
        assert!(ups
            .clusters_text()
            .contains("health_flags::/failed_outlier_check"));
        let t0 = std::time::Instant::now();
        while ups.is_down("127.0.0.1:1") {
            std::thread::sleep(Duration::from_millis(5));
        }
        let first = t0.elapsed();
        // Ejected again at once: twice as long (the multiplier has not decayed).
        fail(3);
        let t0 = std::time::Instant::now();
        while ups.is_down("127.0.0.1:1") {
            std::thread::sleep(Duration::from_millis(5));
        }
        let second = t0.elapsed();
        assert!(first >= Duration::from_millis(35) && second >= Duration::from_millis(75));
        assert!(second < Duration::from_millis(100) + Duration::from_millis(60));
        assert!(ups.clusters_text().contains("outlier_ejections::2"));
    }
}
