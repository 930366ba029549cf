//! `rocketmesh sidecar`: the product. An unmodified SDK points its nameserver address at the
//! sidecar's listener and everything it does goes through here.
//!
//! * `handler`: the per-request dispatch (route answers, sends, pops, acks, client table);
//! * `upstream`: multiplexed pools per broker endpoint;
//! * `groups`: the client table (heartbeats, consumer lists, relay targets);
//! * this module: listeners, the xDS client (or a static bootstrap), the admin server, background
//!   tasks (client expiry, heartbeats to brokers on the clients' behalf, relay of broker-to-client
//!   requests) and graceful drain.

pub mod groups;
pub mod handler;
pub mod pull;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rocketmesh_filters::codec::body::{ConsumerData, HeartbeatData, ProducerData};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::NotifyConsumerIdsChangedRequestHeader;
use rocketmesh_filters::codec::message::{decode_records, property_keys};
use rocketmesh_filters::codec::{RemotingCommand, ResponseEncoding};
use rocketmesh_filters::consume::TranslatorConfig;
use rocketmesh_xds::client::{ClientConfig, XdsClient, XdsMode};
use rocketmesh_xds::static_config;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::groups::Groups;
use self::handler::{HandlerConfig, SidecarCore, SidecarHandler};
use self::upstream::{BrokerRequest, UpstreamConfig, Upstreams};
use crate::admin::{AdminConfig, AdminServer, AdminSource, Readiness, Ready};
use crate::metrics::{self, Stats};
use crate::remoting::{serve_until, ServerConfig};

/// Sidecar settings.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The SDK-facing listener; its bound address is advertised in route answers.
    pub listen: SocketAddr,
    /// More listeners (e.g. a broker port for iptables-redirected traffic).
    pub extra_listen: Vec<SocketAddr>,
    /// Admin server; None = no admin server.
    pub admin: Option<SocketAddr>,
    /// ADS server (`host:port`). Ignored when `bootstrap` is set.
    pub xds: Option<String>,
    pub xds_mode: XdsMode,
    /// Static clusters and routes (YAML, see `rocketmesh_xds::static_config`): no control plane.
    pub bootstrap: Option<PathBuf>,
    /// RDS route configuration name (VHDS names `<route_config>/<topic>`).
    pub route_config: String,
    /// The broker name route answers present (its queues map onto the real brokers').
    pub virtual_broker: String,
    /// Metrics prefix: `rocketmq.<stat_prefix>.*`.
    pub stat_prefix: String,
    pub upstream: UpstreamConfig,
    /// Upstream request timeout (a pop adds its poll time).
    pub request_timeout: Duration,
    /// Longest a request waits for its topic's route from xDS.
    pub route_timeout: Duration,
    /// Clients silent this long leave their groups.
    pub group_expiry: Duration,
    /// How often the clients' groups are announced to the brokers in use.
    pub broker_heartbeat: Duration,
    /// Longest graceful drain on shutdown.
    pub drain: Duration,
    /// Downstream limits (connections, requests in flight per connection, frame sizes).
    pub server: ServerConfig,
    /// Pull -> Pop translator settings (invisible time, renewal, max hold, table limits).
    pub translator: TranslatorConfig,
}

impl SidecarConfig {
    pub fn new(listen: SocketAddr) -> Self {
        SidecarConfig {
            listen,
            extra_listen: Vec::new(),
            admin: None,
            xds: None,
            xds_mode: XdsMode::Auto,
            bootstrap: None,
            route_config: rocketmesh_xds::DEFAULT_ROUTE_CONFIG.into(),
            virtual_broker: "rocketmesh".into(),
            stat_prefix: "rocketmesh".into(),
            upstream: UpstreamConfig::default(),
            request_timeout: Duration::from_secs(10),
            route_timeout: Duration::from_secs(5),
            group_expiry: Duration::from_secs(120),
            broker_heartbeat: Duration::from_secs(30),
            drain: Duration::from_secs(5),
            server: ServerConfig::default(),
            translator: TranslatorConfig::default(),
        }
    }
}

/// A running sidecar.
pub struct Sidecar {
    /// The bound SDK-facing address (advertised in route answers).
    pub addr: SocketAddr,
    pub extra_addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    core: Arc<SidecarCore>,
    ready: Ready,
    stop_accepting: CancellationToken,
    close: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    admin: Option<AdminServer>,
    admin_stop: CancellationToken,
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
    /// The data path's shared state (xDS client, pools, client table).
    pub fn core(&self) -> &Arc<SidecarCore> {
        &self.core
    }

    /// Waits until listeners are bound and xDS is connected (or the bootstrap loaded).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.ready.wait())
            .await
            .is_ok()
    }

    /// Graceful shutdown: stop accepting, let requests in flight finish (up to the drain
    /// deadline), then close connections, the admin server and the xDS client.
    pub async fn shutdown(self) {
        self.stop_accepting.cancel();
        let deadline = Instant::now() + self.drain;
        while self.core.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.core.in_flight();
        if left > 0 {
            tracing::warn!(left, "drain deadline passed with requests in flight");
        }
        self.close.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.core.upstreams.close_all();
        self.core.xds.shutdown();
        self.admin_stop.cancel();
        if let Some(a) = self.admin {
            a.stopped().await;
        }
    }
}

struct AdminView {
    core: Arc<SidecarCore>,
    ready: Ready,
    listeners: Vec<SocketAddr>,
}

impl AdminSource for AdminView {
    fn ready(&self) -> Readiness {
        self.ready.readiness()
    }

    fn publish_stats(&self) {
        self.core.stats.publish();
    }

    fn config_dump(&self) -> serde_json::Value {
        let (consumer_groups, producer_groups, clients) = self.core.groups.counts();
        serde_json::json!({
            "sidecar": {
                "listeners": self.listeners.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "advertise": self.core.cfg.advertise,
                "virtual_broker": self.core.cfg.virtual_broker,
                "clients": {"consumer_groups": consumer_groups, "producer_groups": producer_groups, "clients": clients},
                "upstreams": self.core.upstreams.endpoints(),
                "pull_to_pop": {"virtual_queues": self.core.pulls.counts().0, "held_handles": self.core.pulls.counts().1},
            },
            "xds": self.core.xds.config_dump(),
        })
    }

    fn clusters(&self) -> String {
        let snap = self.core.xds.snapshot();
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
        out.push_str(&self.core.upstreams.clusters_text());
        out
    }
}

/// Starts listeners, the xDS client (or bootstrap), the admin server and background tasks.
pub async fn start(cfg: SidecarConfig) -> anyhow::Result<Sidecar> {
    let ready = Ready::new();
    let listeners_block = ready.block("listeners");
    let config_block = ready.block("xds");

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let mut extra = Vec::new();
    for a in &cfg.extra_listen {
        extra.push(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {a}"))?,
        );
    }
    let extra_addrs: Vec<SocketAddr> = extra
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;

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
            c.node_id = format!("sidecar~{}~rocketmesh-{}.local", addr.ip(), addr.port());
            XdsClient::start(c)
        }
    };

    let prom = metrics::install();
    let stats = Arc::new(Stats::new(&cfg.stat_prefix).context("stat prefix")?);
    let (inbound_tx, inbound_rx) = mpsc::channel::<BrokerRequest>(256);
    let upstreams = Arc::new(Upstreams::new(cfg.upstream.clone(), inbound_tx));
    let groups = Arc::new(Groups::new(cfg.group_expiry));
    let core = Arc::new(SidecarCore::new(
        HandlerConfig {
            advertise: addr.to_string(),
            virtual_broker: cfg.virtual_broker.clone(),
            request_timeout: cfg.request_timeout,
            response_encoding: cfg.server.response_encoding,
        },
        xds.clone(),
        upstreams.clone(),
        groups.clone(),
        stats,
        cfg.translator.clone(),
    ));
    let handler = Arc::new(SidecarHandler(core.clone()));
    let stop_accepting = CancellationToken::new();
    let close = CancellationToken::new();
    let mut tasks = Vec::new();
    for l in std::iter::once(listener).chain(extra) {
        tasks.push(tokio::spawn(serve_until(
            l,
            handler.clone(),
            cfg.server,
            stop_accepting.clone(),
            close.clone(),
        )));
    }
    drop(listeners_block);
    tasks.push(tokio::spawn(expire_clients(groups.clone(), close.clone())));
    tasks.push(tokio::spawn(pull::maintain(core.clone(), close.clone())));
    tasks.push(tokio::spawn(heartbeat_brokers(
        core.clone(),
        addr,
        cfg.broker_heartbeat,
        close.clone(),
    )));
    tasks.push(tokio::spawn(relay_broker_requests(
        core.clone(),
        inbound_rx,
        close.clone(),
    )));
    {
        let xds = xds.clone();
        let stop = close.clone();
        tasks.push(tokio::spawn(async move {
            // Ready once the ADS stream is up (a bootstrap client is up at once). Shutdown ends
            // the wait: the server may never answer.
            loop {
                tokio::select! {
                    up = xds.wait_connected(Duration::from_secs(5)) => if up { break },
                    () = stop.cancelled() => return,
                }
                tracing::info!("waiting for the xDS server");
            }
            drop(config_block);
        }));
    }

    let admin_stop = CancellationToken::new();
    let mut listeners = vec![addr];
    listeners.extend(&extra_addrs);
    let admin = match cfg.admin {
        Some(a) => {
            let view = Arc::new(AdminView {
                core: core.clone(),
                ready: ready.clone(),
                listeners,
            });
            let mut acfg = AdminConfig {
                addr: a,
                ..AdminConfig::default()
            };
            acfg.drain_deadline = cfg.drain;
            Some(AdminServer::start(acfg, view, prom, admin_stop.clone()).await?)
        }
        None => None,
    };
    let admin_addr = admin.as_ref().map(AdminServer::local_addr);
    tracing::info!(%addr, ?extra_addrs, ?admin_addr, "sidecar listening");
    Ok(Sidecar {
        addr,
        extra_addrs,
        admin_addr,
        core,
        ready,
        stop_accepting,
        close,
        tasks,
        admin,
        admin_stop,
        drain: cfg.drain,
    })
}

async fn expire_clients(groups: Arc<Groups>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => { groups.expire(); }
            () = stop.cancelled() => return,
        }
    }
}

/// Announces the clients' groups to every broker in use, as one client (the sidecar), so brokers
/// know the groups (consumer notifications, transaction checks) although the clients never talk
/// to them directly.
async fn heartbeat_brokers(
    core: Arc<SidecarCore>,
    addr: SocketAddr,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let beats = core.groups.heartbeats();
        if beats.is_empty() {
            continue;
        }
        let mut merged = HeartbeatData {
            client_id: format!("rocketmesh@{addr}"),
            ..HeartbeatData::default()
        };
        for hb in beats {
            for c in hb.consumer_data_set {
                if !merged
                    .consumer_data_set
                    .iter()
                    .any(|m: &ConsumerData| m.group_name == c.group_name)
                {
                    merged.consumer_data_set.push(c);
                }
            }
            for p in hb.producer_data_set {
                if !merged
                    .producer_data_set
                    .iter()
                    .any(|m: &ProducerData| m.group_name == p.group_name)
                {
                    merged.producer_data_set.push(p);
                }
            }
        }
        let body = merged.to_json();
        for ep in core.upstreams.endpoints() {
            let cmd = RemotingCommand::request(rc::HEART_BEAT).with_body(body.clone());
            if let Err(e) = core
                .upstreams
                .invoke(&ep, cmd, Duration::from_secs(3), None)
                .await
            {
                tracing::debug!(broker = %ep, "heartbeat on the clients' behalf failed: {e}");
            }
        }
    }
}

/// Relays requests brokers send on our upstream connections to a client of the right group.
async fn relay_broker_requests(
    core: Arc<SidecarCore>,
    mut rx: mpsc::Receiver<BrokerRequest>,
    stop: CancellationToken,
) {
    loop {
        let req = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            () = stop.cancelled() => return,
        };
        let core = core.clone();
        tokio::spawn(async move { relay_one(&core, req).await });
    }
}

async fn relay_one(core: &SidecarCore, r: BrokerRequest) {
    let BrokerRequest { addr, cmd, client } = r;
    let code = cmd.code();
    let targets = match code {
        rc::NOTIFY_CONSUMER_IDS_CHANGED => {
            match cmd.decode_header::<NotifyConsumerIdsChangedRequestHeader>() {
                Ok(h) => core.groups.consumer_connections(&h.consumer_group),
                Err(_) => Vec::new(),
            }
        }
        rc::CHECK_TRANSACTION_STATE => {
            // The producer answers with END_TRANSACTION naming these ids: route it back here.
            for key in ["msgId", "transactionId"] {
                if let Some(id) = cmd.ext().get(key) {
                    core.txn.remember(id, &addr);
                }
            }
            // The half message's producer group is in its properties.
            let group = decode_records(cmd.body())
                .ok()
                .and_then(|msgs| msgs.into_iter().next())
                .and_then(|m| m.properties.get(property_keys::PGROUP).map(str::to_owned));
            group
                .map(|g| core.groups.producer_connections(&g))
                .unwrap_or_default()
        }
        _ => match cmd.ext().get("consumerGroup") {
            Some(g) => core.groups.consumer_connections(g),
            None => Vec::new(),
        },
    };
    let oneway = cmd.is_oneway();
    let opaque = cmd.opaque();
    if code == rc::NOTIFY_CONSUMER_IDS_CHANGED {
        for conn in &targets {
            conn.notify(cmd.clone());
        }
        return;
    }
    let Some(conn) = targets.into_iter().next() else {
        tracing::debug!(broker = %addr, code, "no client to relay a broker request to");
        if !oneway {
            let resp = cmd
                .response_to(response_code::SYSTEM_ERROR, ResponseEncoding::Json)
                .with_remark(format!(
                    "no client of the group is connected to sidecar {}",
                    core.cfg.advertise
                ));
            let _ = client.respond(resp).await;
        }
        return;
    };
    if oneway || code == rc::CHECK_TRANSACTION_STATE {
        conn.notify(cmd);
        return;
    }
    match conn.invoke(cmd.clone(), Duration::from_secs(5)).await {
        Some(mut resp) => {
            resp.set_opaque(opaque);
            let _ = client.respond(resp).await;
        }
        None => {
            let resp = cmd
                .response_to(response_code::SYSTEM_ERROR, ResponseEncoding::Json)
                .with_remark("the client did not answer within 5 s");
            let _ = client.respond(resp).await;
        }
    }
}
