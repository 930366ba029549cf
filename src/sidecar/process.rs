//! A sidecar process: start (listeners, xDS client or bootstrap, admin server, background
//! tasks) and one shutdown path.
//!
//! Shutdown ([`Sidecar::shutdown`], SIGTERM in `main`): `/ready` turns 503 at once, listeners
//! stop accepting, the pull bridge stops taking new pulls and wakes parked ones; requests in
//! flight finish and owed acks are sent until the drain deadline; then connections are closed
//! (what still runs is cancelled) and every task is awaited. Nothing is left detached.
//!
//! The admin server and the xDS client run on a small runtime of their own (one thread), so a
//! scrape, a config dump or a large xDS push never stalls the data path's event loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rocketmesh_xds::client::{ClientConfig, XdsClient};
use rocketmesh_xds::static_config;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::access::Access;
use super::admin_view::AdminView;
use super::background::{expire_clients, heartbeat_brokers, relay_broker_requests};
use super::context::{Context, HandlerConfig};
use super::dispatch::SidecarCore;
use super::groups::Groups;
use super::locks::Locks;
use super::pull::PullBridge;
use super::router::Router;
use super::transparent::Transparent;
use super::txn::Transactions;
use super::upstream::{BrokerRequest, Upstreams};
use super::SidecarConfig;
use crate::admin::{AdminConfig, AdminServer, Ready};
use crate::metrics::{self, Stats};
use crate::remoting::advertise::{advertised, vip_port};
use crate::remoting::tls::ServerTls;
use crate::remoting::{Drain, Server};

/// Bound on the broker -> client requests waiting to be relayed.
const RELAY_QUEUE: usize = 256;

/// A running sidecar.
pub struct Sidecar {
    /// The bound SDK-facing address.
    pub addr: SocketAddr,
    /// The address route answers name.
    pub advertised: String,
    /// The VIP channel's bound address (listen port - 2), when open.
    pub vip_addr: Option<SocketAddr>,
    pub extra_addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    core: Arc<SidecarCore>,
    ready: Ready,
    servers: Vec<Server>,
    background: Drain,
    admin: Option<AdminServer>,
    admin_stop: CancellationToken,
    control: ControlRuntime,
    drain: Duration,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("addr", &self.addr)
            .field("admin", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Sidecar {
    /// The data path (xDS client, pools, client table, translator).
    pub fn core(&self) -> &Arc<SidecarCore> {
        &self.core
    }

    /// Waits until listeners are bound and xDS is connected (or the bootstrap loaded).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.ready.wait())
            .await
            .is_ok()
    }

    /// Requests taken and not answered yet, on every listener.
    pub fn in_flight(&self) -> usize {
        self.servers.iter().map(Server::in_flight).sum()
    }

    /// Graceful shutdown (see the module docs), bounded by the drain deadline.
    pub async fn shutdown(self) {
        let deadline = Instant::now() + self.drain;
        self.ready.drain();
        for s in &self.servers {
            s.stop_accepting();
        }
        self.core.pulls.begin_drain();
        let answered = futures_util::future::join_all(self.servers.iter().map(Server::drained));
        if tokio::time::timeout_at(deadline.into(), answered)
            .await
            .is_err()
        {
            let left = self.in_flight();
            tracing::warn!(left, "drain deadline passed with requests in flight");
        }
        if !self.core.pulls.flush_acks(deadline).await {
            tracing::warn!("drain deadline passed with acks owed: those messages are redelivered");
        }
        futures_util::future::join_all(self.servers.into_iter().map(Server::close)).await;
        self.core.pulls.close().await;
        self.core.transparent.close();
        self.core.locks.close().await;
        self.background.finish().await;
        self.core.ctx.upstreams.close_all();
        self.core.xds().shutdown();
        self.admin_stop.cancel();
        if let Some(a) = self.admin {
            a.stopped().await;
        }
        self.control.stop().await;
        tracing::info!("sidecar stopped");
    }
}

/// Starts listeners, the xDS client (or bootstrap), the admin server and background tasks.
pub async fn start(cfg: SidecarConfig) -> anyhow::Result<Sidecar> {
    let ready = Ready::new();
    let listeners_block = ready.block("listeners");
    let config_block = ready.block("xds");
    let control = ControlRuntime::new().context("starting the admin/xDS runtime")?;

    // Accept queues sized from the connection limit (a burst of SDKs connecting at once waits
    // in the kernel, not for SYN retransmits).
    let backlog = cfg.server.max_connections;
    // Checked before binding: a sidecar that could not tell SDKs where it is never listens.
    advertised(cfg.advertise.as_deref(), cfg.listen, cfg.pod_ip.as_deref())?;
    let listener = crate::remoting::bind(cfg.listen, backlog)
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let advertised = advertised(cfg.advertise.as_deref(), addr, cfg.pod_ip.as_deref())?;
    let mut extra = Vec::new();
    let vip_addr = match vip_port(cfg.listen.port()).filter(|_| cfg.vip_channel) {
        Some(port) => {
            let vip = SocketAddr::new(cfg.listen.ip(), port);
            let l = crate::remoting::bind(vip, backlog).with_context(|| {
                format!(
                    "binding the VIP channel {vip} (listen port - 2, where 4.x clients with \
                     vipChannelEnabled connect; turn it off with --vip-channel false)"
                )
            })?;
            let bound = l.local_addr()?;
            extra.push(l);
            Some(bound)
        }
        None => None,
    };
    for a in &cfg.extra_listen {
        extra.push(crate::remoting::bind(*a, backlog).with_context(|| format!("binding {a}"))?);
    }
    let extra_addrs: Vec<SocketAddr> = extra
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;

    // Before the xDS client: it registers its metrics (`xds_*`) with the recorder current when
    // it starts, and a client started first would count into no recorder at all.
    let prom = metrics::install();
    let xds = match &cfg.bootstrap {
        Some(path) => {
            let r = static_config::load(path)
                .with_context(|| format!("loading bootstrap {}", path.display()))?;
            XdsClient::from_static(&cfg.route_config, r.vhosts, r.clusters, r.load_assignments)
        }
        None => {
            let server = cfg
                .xds
                .clone()
                .context("no xDS server and no bootstrap file")?;
            let mut c = ClientConfig::new(server);
            c.route_config = cfg.route_config.clone();
            c.mode = cfg.xds_mode;
            c.route_timeout = cfg.route_timeout;
            c.reconnect_grace = cfg.xds_reconnect_grace;
            c.node_id = format!("sidecar~{}~rocketmesh-{}.local", addr.ip(), addr.port());
            c.tls = cfg.xds_tls.clone();
            c.token_file = cfg.xds_token.clone();
            // The ADS stream's task runs on the control runtime.
            let _on_control = control.handle.enter();
            XdsClient::start(c)
        }
    };

    // Where a redirected connection counts as meant for us (transparent mode).
    let mut own: Vec<String> = std::iter::once(addr)
        .chain(extra_addrs.iter().copied())
        .map(|a| a.to_string())
        .collect();
    own.push(advertised.clone());
    let stats = Arc::new(Stats::new(&cfg.stat_prefix).context("stat prefix")?);
    let access = Arc::new(Access::load(&cfg.access)?);
    let mut upstream_cfg = cfg.upstream.clone();
    upstream_cfg.credentials = access.credentials.clone();
    let (inbound_tx, inbound_rx) = mpsc::channel::<BrokerRequest>(RELAY_QUEUE);
    let ctx = Arc::new(Context {
        cfg: HandlerConfig {
            advertise: advertised.clone(),
            virtual_broker: cfg.virtual_broker.clone(),
            request_timeout: cfg.request_timeout,
            response_encoding: cfg.server.response_encoding,
        },
        router: Router::new(xds.clone(), cfg.virtual_broker.clone(), stats.clone()),
        upstreams: Arc::new(
            Upstreams::new(upstream_cfg, inbound_tx)
                .with_stats(stats.clone())
                .with_cluster_tls(cluster_tls(&xds)),
        ),
        stats,
    });
    let pulls = Arc::new(PullBridge::new(ctx.clone(), cfg.translator.clone()));
    pulls.start();
    let core = Arc::new(SidecarCore {
        ctx,
        groups: Arc::new(Groups::new(cfg.group_expiry)),
        txns: Arc::new(Transactions::default()),
        pulls,
        transparent: Arc::new(Transparent::new(cfg.transparent.clone(), own)),
        locks: Arc::new(Locks::default()),
        access,
    });
    let tls = cfg
        .tls
        .clone()
        .unwrap_or_else(|| ServerTls::disabled("sidecar"));
    let servers: Vec<Server> = std::iter::once(listener)
        .chain(extra)
        .map(|l| Server::start_tls(l, core.clone(), cfg.server, tls.clone()))
        .collect();
    drop(listeners_block);

    let background = Drain::new();
    core.access.spawn_reloads(&background);
    background.spawn(expire_clients(core.groups.clone()));
    background.spawn(heartbeat_brokers(core.clone(), addr, cfg.broker_heartbeat));
    background.spawn(relay_broker_requests(
        core.clone(),
        inbound_rx,
        background.clone(),
    ));
    background.spawn(async move {
        // Ready once the ADS stream is up (a bootstrap client is up at once).
        while !xds.wait_connected(Duration::from_secs(5)).await {
            tracing::info!("waiting for the xDS server");
        }
        drop(config_block);
    });

    let admin_stop = CancellationToken::new();
    let mut listeners = vec![addr];
    listeners.extend(&extra_addrs);
    let admin = match cfg.admin {
        Some(a) => {
            let view = Arc::new(AdminView {
                core: core.clone(),
                ready: ready.clone(),
                listeners,
                tls: tls.clone(),
                upstream_tls: cfg.upstream.tls.clone(),
                xds_tls: cfg.xds_tls.clone(),
                xds_token: cfg.xds_token.clone(),
            });
            let acfg = AdminConfig {
                addr: a,
                drain_deadline: cfg.drain,
                ..AdminConfig::default()
            };
            let stop = admin_stop.clone();
            let started = control
                .handle
                .spawn(async move { AdminServer::start(acfg, view, prom, stop).await });
            Some(started.await.context("admin server start")??)
        }
        None => None,
    };
    let admin_addr = admin.as_ref().map(AdminServer::local_addr);
    tracing::info!(%addr, %advertised, ?vip_addr, ?extra_addrs, ?admin_addr, "sidecar listening");
    Ok(Sidecar {
        addr,
        advertised,
        vip_addr,
        extra_addrs,
        admin_addr,
        core,
        ready,
        servers,
        background,
        admin,
        admin_stop,
        control,
        drain: cfg.drain,
    })
}

/// A broker address's TLS from the routes: the first cluster (of any topic held) listing it
/// as an endpoint and carrying an `UpstreamTlsContext`. Called when a connection is made, not
/// per request.
fn cluster_tls(xds: &XdsClient) -> super::upstream::ClusterTlsLookup {
    let xds = xds.clone();
    Arc::new(move |addr: &str| {
        let snap = xds.snapshot();
        snap.topics
            .keys()
            .filter_map(|t| snap.route(t))
            .flat_map(|r| r.clusters.values())
            .find(|c| c.spec.tls.is_some() && c.endpoints.iter().any(|e| e.address == addr))
            .and_then(|c| c.spec.tls.clone())
    })
}

/// A one-thread runtime for the admin server and the xDS client.
struct ControlRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlRuntime {
    fn new() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("rocketmesh-control".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                // Tasks still there (none after a clean shutdown) are dropped with the runtime.
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(ControlRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the runtime and waits for its thread.
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for ControlRuntime {
    fn drop(&mut self) {
        // A sidecar dropped without shutdown: let the thread end on its own.
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
