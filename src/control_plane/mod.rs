//! The control plane: the nameserver role on a Remoting port ([`namesrv`]), optionally routes
//! from an upstream nameserver ([`upstream`]), and static resources from a YAML file, all feeding
//! one xDS [`Catalog`] (what the ADS server serves).
//!
//! [`start`] binds the Remoting listener, the gRPC ADS listener and (optionally) an admin
//! server, and starts the broker sweeper, the static file reloader, the upstream fetcher and the
//! metrics publisher, each on one [`Drain`].
//!
//! [`ControlPlane::shutdown`] is the sidecar's lifecycle: `/ready` answers 503 at once, the
//! Remoting listener stops accepting and background loops start no new work; requests in flight
//! finish until the drain deadline; then connections close, the ADS server ends its streams
//! (with OK) and the upstream fetcher stops, every background task is awaited
//! ([`Drain::finish`]) and the admin server stops.

pub mod metrics;
pub mod namesrv;
pub mod traffic;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::remoting::tls::{ClientTls, ServerTls};
use anyhow::Context;
use rocketmesh_xds::catalog::{Catalog, CatalogOptions};
use rocketmesh_xds::model::UpstreamTls;
use rocketmesh_xds::server::{AdsSecurity, AdsServer, ServerOptions};
use rocketmesh_xds::static_config::{self, StaticResources};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::metrics::CpMetrics;
use self::namesrv::{NameServer, NamesrvOptions};
use self::upstream::{Upstream, UpstreamOptions};
use crate::admin::{AdminConfig, AdminServer, NodeSource, Ready};
use crate::remoting::{Drain, Server, ServerConfig};

/// How often the metrics publisher reads the registry and the ADS counters.
const METRICS_PERIOD: Duration = Duration::from_secs(1);
/// Longest the ADS server and the upstream fetcher may take to end once asked.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// Depth of the catalog's demand channel (topics waiting for the upstream fetcher). When full,
/// lookups answer "absent" instead of queueing without bound.
const DEMAND_QUEUE: usize = 4096;

/// Control plane settings.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Remoting (nameserver) listen address.
    pub remoting: SocketAddr,
    /// gRPC listen address of the ADS server (delta + SotW); none = no xDS (nameserver only).
    pub xds: Option<SocketAddr>,
    /// ADS server limits.
    pub xds_options: ServerOptions,
    /// Static resources file, loaded at start and reloaded on change.
    pub static_file: Option<PathBuf>,
    /// Upstream nameserver to read routes from on demand (`host:port`; a name is resolved at
    /// every connect).
    pub upstream_namesrv: Option<String>,
    /// Brokers silent longer than this are removed (Apache's nameserver: 120 s).
    pub broker_expiry: Duration,
    /// After start, topics not registered since are not reported removed or absent for this
    /// long (the registry is still filling: brokers re-register within one registration
    /// interval, 30 s); zero = no warm-up. See [`Catalog::begin_warmup`].
    pub warmup: Duration,
    /// Serve registered topics' endpoints through EDS instead of inline.
    pub eds: bool,
    /// Most brokers registered at once.
    pub max_brokers: usize,
    /// How often topics fetched from the upstream are refreshed.
    pub upstream_refresh: Duration,
    /// How long a topic the upstream does not know stays absent before it is asked again.
    pub upstream_absent_ttl: Duration,
    /// Deadline of one upstream request.
    pub upstream_timeout: Duration,
    /// Most upstream requests in flight.
    pub upstream_concurrency: usize,
    /// How often the static file's mtime and length are checked.
    pub static_poll: Duration,
    /// Remoting server limits.
    pub server: ServerConfig,
    /// Admin server (/ready, /healthz, /stats/prometheus, /config_dump); none = no admin server.
    pub admin: Option<SocketAddr>,
    /// On shutdown: how long requests in flight may take before connections are closed.
    pub drain_timeout: Duration,
    /// Where traffic policies and migrations are kept (`traffic.json`); none: in memory only.
    pub state_dir: Option<PathBuf>,
    /// Migration driver settings.
    pub migrate: traffic::migrate::MigrateOptions,
    /// TLS of the Remoting listener; None = plaintext.
    pub tls: Option<Arc<ServerTls>>,
    /// TLS and bearer tokens of the ADS listener.
    pub xds_security: AdsSecurity,
    /// TLS towards `upstream_namesrv`; None = plaintext.
    pub upstream_tls: Option<Arc<ClientTls>>,
    /// The `UpstreamTlsContext` every registered topic's cluster carries (sidecars then speak
    /// TLS to the brokers); None = plaintext clusters.
    pub cluster_tls: Option<UpstreamTls>,
}

impl ControlPlaneConfig {
    /// Defaults with the Remoting listener on `remoting`.
    pub fn new(remoting: SocketAddr) -> Self {
        Self {
            remoting,
            xds: None,
            xds_options: ServerOptions::default(),
            static_file: None,
            upstream_namesrv: None,
            broker_expiry: Duration::from_secs(120),
            warmup: Duration::from_secs(30),
            eds: false,
            max_brokers: NamesrvOptions::default().max_brokers,
            upstream_refresh: Duration::from_secs(30),
            upstream_absent_ttl: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(3),
            upstream_concurrency: 16,
            static_poll: Duration::from_secs(1),
            server: ServerConfig::default(),
            admin: None,
            drain_timeout: Duration::from_secs(5),
            state_dir: None,
            migrate: traffic::migrate::MigrateOptions::default(),
            tls: None,
            xds_security: AdsSecurity::default(),
            upstream_tls: None,
            cluster_tls: None,
        }
    }
}

/// A running control plane.
pub struct ControlPlane {
    /// The bound Remoting address.
    pub remoting_addr: SocketAddr,
    /// The bound ADS (gRPC) address, when serving xDS.
    pub xds_addr: Option<SocketAddr>,
    /// The bound admin address, when serving one.
    pub admin_addr: Option<SocketAddr>,
    /// The resource catalog (for the ADS server and introspection).
    pub catalog: Arc<Catalog>,
    /// Traffic policies and migrations (also served under the admin server's `/api/`).
    pub traffic: Arc<traffic::Traffic>,
    ads: Option<AdsServer>,
    nameserver: Arc<NameServer>,
    ready: Ready,
    server: Server,
    background: Drain,
    /// Stops what serves requests in flight (the ADS server's streams, the upstream fetcher
    /// that route look-ups wait on); cancelled after the Remoting server closed.
    closing: CancellationToken,
    closing_tasks: Vec<tokio::task::JoinHandle<Option<()>>>,
    admin: Option<AdminServer>,
    admin_stop: CancellationToken,
    metrics: CpMetrics,
    drain: Duration,
    static_reloads: Arc<StaticReloads>,
}

/// What the static file reloader has done: versions loaded (the first one included) and edits
/// refused (the last good content stayed).
#[derive(Debug, Default)]
pub struct StaticReloads {
    loaded: AtomicU64,
    rejected: AtomicU64,
}

impl StaticReloads {
    pub fn loaded(&self) -> u64 {
        self.loaded.load(Ordering::Relaxed)
    }
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("remoting_addr", &self.remoting_addr)
            .field("nameserver", &self.nameserver)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// The nameserver role (registry introspection).
    pub fn nameserver(&self) -> &Arc<NameServer> {
        &self.nameserver
    }

    /// The ADS server (stream and ACK/NACK statistics), when serving xDS.
    pub fn static_reloads(&self) -> &StaticReloads {
        &self.static_reloads
    }

    pub fn ads(&self) -> Option<&AdsServer> {
        self.ads.as_ref()
    }

    /// The readiness gate behind `/ready`.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Publishes the current registry and ADS figures to the metrics recorder.
    pub fn publish_metrics(&self) {
        self.metrics.publish();
    }

    /// Graceful shutdown (see the module docs), bounded by the drain deadline.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.drain;
        self.nameserver.begin_shutdown();
        self.ready.drain();
        self.server.stop_accepting();
        self.background.begin();
        if tokio::time::timeout_at(deadline, self.server.drained())
            .await
            .is_err()
        {
            let left = self.server.in_flight();
            tracing::warn!(left, "drain deadline passed with requests in flight");
        }
        self.server.close().await;
        self.closing.cancel();
        let ended = futures_util::future::join_all(self.closing_tasks);
        if tokio::time::timeout(CLOSE_LIMIT, ended).await.is_err() {
            tracing::warn!("the ADS server or the fetcher did not end within {CLOSE_LIMIT:?}");
        }
        self.background.finish().await;
        self.metrics.publish();
        self.admin_stop.cancel();
        if let Some(a) = self.admin {
            a.stopped().await;
        }
        tracing::info!("control plane stopped");
    }
}

/// Starts the control plane. Fails fast on a bad static file or a listener that cannot bind.
pub async fn start(config: ControlPlaneConfig) -> anyhow::Result<ControlPlane> {
    let catalog_opts = CatalogOptions {
        eds: config.eds,
        upstream_tls: config.cluster_tls.clone(),
    };
    let (catalog, demand) = match config.upstream_namesrv {
        Some(_) => {
            let (tx, rx) = mpsc::channel(DEMAND_QUEUE);
            (Catalog::with_demand(catalog_opts, tx), Some(rx))
        }
        None => (Catalog::new(catalog_opts), None),
    };
    let catalog = Arc::new(catalog);
    if !config.warmup.is_zero() {
        catalog.begin_warmup();
    }

    // Static resources first: a bad file stops the start.
    let static_reloads = Arc::new(StaticReloads::default());
    let static_state = match &config.static_file {
        Some(path) => {
            let stamp = file_stamp(path);
            let resources = static_config::load(path)
                .with_context(|| format!("loading static resources from {}", path.display()))?;
            apply_static(&catalog, path, resources);
            static_reloads.loaded.fetch_add(1, Ordering::Relaxed);
            Some((path.clone(), stamp))
        }
        None => None,
    };

    let upstream = config.upstream_namesrv.clone().map(|addr| {
        Arc::new(Upstream::new(UpstreamOptions {
            request_timeout: config.upstream_timeout,
            refresh: config.upstream_refresh,
            absent_ttl: config.upstream_absent_ttl,
            concurrency: config.upstream_concurrency,
            tls: config.upstream_tls.clone(),
            ..UpstreamOptions::new(addr)
        }))
    });
    let nameserver = Arc::new(NameServer::new(
        catalog.clone(),
        upstream.clone(),
        NamesrvOptions {
            broker_expiry: config.broker_expiry,
            max_brokers: config.max_brokers,
            response_encoding: config.server.response_encoding,
        },
    ));

    if let Some(dir) = &config.state_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
    }
    let traffic = traffic::Traffic::open(
        catalog.clone(),
        nameserver.clone(),
        config.state_dir.as_deref(),
        config.migrate.clone(),
    )
    .context("loading the traffic state")?;

    let listener = crate::remoting::bind(config.remoting, config.server.max_connections)
        .with_context(|| format!("binding the Remoting listener on {}", config.remoting))?;
    let remoting_addr = listener.local_addr()?;
    let xds_listener = match config.xds {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the xDS listener on {addr}"))?,
        ),
        None => None,
    };
    let xds_addr = xds_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;

    let ready = Ready::new();
    let starting = ready.block("listeners");
    // Handles bind to the recorder installed when they are created.
    let prom = crate::metrics::install();
    let ads = xds_listener.as_ref().map(|_| {
        AdsServer::new_secure(
            catalog.clone(),
            config.xds_options.clone(),
            config.xds_security.clone(),
        )
    });
    let metrics = CpMetrics::register(nameserver.clone(), ads.clone());
    // The admin server first: if it cannot bind, nothing else has started yet.
    let admin_stop = CancellationToken::new();
    let admin = match config.admin {
        Some(addr) => {
            let dump = {
                let (ns, catalog, ads) = (nameserver.clone(), catalog.clone(), ads.clone());
                let tls = (
                    config.tls.clone(),
                    config.xds_security.clone(),
                    config.upstream_tls.clone(),
                );
                move || {
                    serde_json::json!({
                        "role": "control-plane",
                        "remoting": remoting_addr.to_string(),
                        "xds": xds_addr.map(|a| a.to_string()),
                        "registered_brokers": ns.broker_count(),
                        "registered_topics": ns.topic_count(),
                        "catalog_revision": catalog.revision(),
                        "ads": ads.as_ref().map(AdsServer::stats),
                        // Paths, subjects, serials and expiry; never key material or tokens.
                        "tls": {
                            "remoting": tls.0.as_ref().map(|t| t.dump()),
                            "ads": tls.1.tls.as_ref().map(|t| t.dump()),
                            "ads_token_file": tls.1.tokens.as_ref().map(|t| t.path().display().to_string()),
                            "ads_unauthenticated": tls.1.tokens.as_ref().map(|t| t.refused()),
                            "upstream": tls.2.as_ref().map(|t| t.dump()),
                        },
                    })
                }
            };
            let publish = {
                let m = metrics.clone();
                move || m.publish()
            };
            let source = Arc::new(
                NodeSource::new(ready.clone(), dump, publish)
                    .with_api(traffic::api::handler(traffic.clone())),
            );
            let acfg = AdminConfig {
                addr,
                drain_deadline: config.drain_timeout,
                ..AdminConfig::default()
            };
            Some(AdminServer::start(acfg, source, prom, admin_stop.clone()).await?)
        }
        None => None,
    };

    let background = Drain::new();
    // Background loops stop starting work when the drain begins; Drain::finish awaits them.
    let stop = background.draining_token();
    let tls = config
        .tls
        .clone()
        .unwrap_or_else(|| ServerTls::disabled("namesrv"));
    let server = Server::start_tls(listener, nameserver.clone(), config.server, tls);
    background.spawn(namesrv::sweep(nameserver.clone(), stop.clone()));
    if let Some((path, stamp)) = static_state {
        background.spawn(reload_static(
            catalog.clone(),
            static_reloads.clone(),
            path,
            stamp,
            config.static_poll,
            stop.clone(),
        ));
    }
    // The fetcher (route look-ups in flight wait on it) and the ADS server's streams end on
    // their own signal, after the Remoting server closed.
    let closing = CancellationToken::new();
    let mut closing_tasks = Vec::new();
    if let (Some(upstream), Some(demand)) = (upstream, demand) {
        closing_tasks.push(background.spawn(upstream::run_fetcher(
            upstream,
            catalog.clone(),
            nameserver.clone(),
            demand,
            closing.clone(),
        )));
    }
    if let (Some(server), Some(listener)) = (ads.clone(), xds_listener) {
        let closing = closing.clone();
        closing_tasks.push(background.spawn(async move {
            if let Err(e) = server.serve(listener, closing.cancelled_owned()).await {
                tracing::error!("ADS server failed: {e}");
            }
        }));
    }
    if !config.warmup.is_zero() {
        background.spawn(end_warmup(catalog.clone(), config.warmup, stop.clone()));
    }
    background.spawn(traffic::migrate::run(traffic.clone(), stop.clone()));
    background.spawn(publish_metrics(metrics.clone(), stop));
    let admin_addr = admin.as_ref().map(AdminServer::local_addr);
    drop(starting);
    tracing::info!(
        remoting = %remoting_addr,
        xds = ?xds_addr,
        upstream = ?config.upstream_namesrv,
        static_file = ?config.static_file,
        admin = ?admin_addr,
        "control plane serving"
    );
    Ok(ControlPlane {
        remoting_addr,
        xds_addr,
        admin_addr,
        catalog,
        traffic,
        ads,
        nameserver,
        ready,
        server,
        background,
        closing,
        closing_tasks,
        admin,
        admin_stop,
        metrics,
        drain: config.drain_timeout,
        static_reloads,
    })
}

/// What identifies a version of the static file: modification time and length.
type FileStamp = Option<(SystemTime, u64)>;

fn file_stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn apply_static(catalog: &Catalog, path: &Path, r: StaticResources) {
    let (vhosts, clusters, las) = (r.vhosts.len(), r.clusters.len(), r.load_assignments.len());
    let changed = catalog.replace_static(r.vhosts, r.clusters, r.load_assignments);
    let policies = r.policies.len();
    catalog.replace_static_policies(r.policies);
    tracing::info!(
        file = %path.display(), vhosts, clusters, load_assignments = las, policies, changed,
        "static resources loaded"
    );
}

/// Polls the static file every `period`; a changed file is loaded and replaces the static
/// resources, a bad one is logged and the last good content stays.
async fn reload_static(
    catalog: Arc<Catalog>,
    reloads: Arc<StaticReloads>,
    path: PathBuf,
    mut seen: FileStamp,
    period: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let p = path.clone();
        let Ok((stamp, loaded)) = tokio::task::spawn_blocking(move || {
            let stamp = file_stamp(&p);
            (stamp, (stamp != seen).then(|| static_config::load(&p)))
        })
        .await
        else {
            continue;
        };
        let Some(loaded) = loaded else { continue };
        seen = stamp;
        match loaded {
            Ok(resources) => {
                apply_static(&catalog, &path, resources);
                reloads.loaded.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(
                    file = %path.display(),
                    "static resources not reloaded, keeping the last good ones: {e}"
                );
                reloads.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Ends the catalog's warm-up `after` its start (see [`ControlPlaneConfig::warmup`]).
async fn end_warmup(catalog: Arc<Catalog>, after: Duration, stop: CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(after) => {
            let held = catalog.end_warmup();
            tracing::info!(?after, held_back = held, "warm-up over: unknown topics are absent from now on");
        }
        () = stop.cancelled() => {}
    }
}

/// Publishes the control plane's figures every [`METRICS_PERIOD`] until the drain begins.
async fn publish_metrics(metrics: CpMetrics, stop: CancellationToken) {
    let mut tick = tokio::time::interval(METRICS_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => metrics.publish(),
            () = stop.cancelled() => return,
        }
    }
}
