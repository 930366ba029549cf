//! The admin server: a small HTTP/1.1 server (hyper) on a loopback address.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the list of routes |
//! | `GET /ready` | 200 `LIVE` when ready, else 503 with one reason per line |
//! | `GET /healthz` | 200 `ok` while the process serves (liveness) |
//! | `GET /stats/prometheus` | the `metrics` recorder's Prometheus text exposition |
//! | `GET /config_dump` | [`AdminSource::config_dump`] as pretty JSON |
//! | `GET /clusters` | [`AdminSource::clusters`], Envoy-like text |
//!
//! | `GET|POST /api/...` | [`AdminSource::api`]'s JSON API, when the process has one (the control plane's traffic API); bodies up to [`MAX_API_BODY`] |
//!
//! Other paths answer 404, other methods 405. Other requests' bodies are never read.
//!
//! Bounded: at most [`AdminConfig::max_connections`] connections. At the cap a new connection
//! closes the connection idle longest (between requests, or still sending a head: a slow or
//! stuck client) to take its place, so a kubelet probe is answered however many idle
//! connections are held open; only when every connection is inside a request, or too many new
//! ones wait for a slot at once, does it get a 503 and close. Request heads must arrive within [`AdminConfig::header_read_timeout`] (which
//! also closes idle keep-alive connections), head size is capped, and a connection serves at most
//! [`AdminConfig::max_requests_per_connection`] requests and lives at most
//! [`AdminConfig::max_connection_age`].
//!
//! Shutdown: when the token is cancelled the listener closes, idle connections close, in-flight
//! requests finish, and whatever is still open after [`AdminConfig::drain_deadline`] is dropped.
//!
//! [`Ready`] is the readiness gate the sidecar feeds into [`AdminSource::ready`]: each startup
//! step holds a [`BlockReady`] guard and the process is ready once every guard is gone.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Whether the process should receive traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Ready.
    Ready,
    /// Not ready, with what is still missing.
    NotReady {
        /// One line per missing piece.
        reasons: Vec<String>,
    },
}

impl Readiness {
    /// `true` for [`Readiness::Ready`].
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }
}

/// Largest request body the JSON API reads.
pub const MAX_API_BODY: usize = 64 * 1024;

/// A JSON answer: status and body.
pub type ApiResponse = (StatusCode, serde_json::Value);

/// A JSON API served under `/api/` (method, path, query string, body).
pub trait Api: Send + Sync + 'static {
    fn call(
        &self,
        method: Method,
        path: String,
        query: Option<String>,
        body: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ApiResponse> + Send>>;
}

/// What the admin server shows; implemented by the process wiring.
pub trait AdminSource: Send + Sync + 'static {
    /// Readiness for `/ready`.
    fn ready(&self) -> Readiness;
    /// The current configuration for `/config_dump`.
    fn config_dump(&self) -> serde_json::Value;
    /// Envoy-like text for `/clusters`: one line per cluster/endpoint with its stats.
    fn clusters(&self) -> String;
    /// Hands counts kept outside the recorder to it; called before every `/stats/prometheus`
    /// render (see [`crate::metrics::Stats::publish`]).
    fn publish_stats(&self) {}
    /// The JSON API under `/api/`, if this process serves one.
    fn api(&self) -> Option<Arc<dyn Api>> {
        None
    }
}

/// The [`AdminSource`] of a process without upstream clusters (a broker node, the control
/// plane): readiness from its [`Ready`] gate, a config dump and a stats hook from closures.
pub struct NodeSource {
    ready: Ready,
    dump: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    publish: Box<dyn Fn() + Send + Sync>,
    api: Option<Arc<dyn Api>>,
}

impl NodeSource {
    /// `dump` answers `/config_dump`; `publish` runs before every `/stats/prometheus` render.
    pub fn new(
        ready: Ready,
        dump: impl Fn() -> serde_json::Value + Send + Sync + 'static,
        publish: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Self {
            ready,
            dump: Box::new(dump),
            publish: Box::new(publish),
            api: None,
        }
    }

    /// Serves `api` under `/api/`.
    pub fn with_api(mut self, api: Arc<dyn Api>) -> Self {
        self.api = Some(api);
        self
    }
}

impl AdminSource for NodeSource {
    fn ready(&self) -> Readiness {
        self.ready.readiness()
    }
    fn config_dump(&self) -> serde_json::Value {
        (self.dump)()
    }
    fn clusters(&self) -> String {
        "no upstream clusters in this process\n".to_owned()
    }
    fn publish_stats(&self) {
        (self.publish)()
    }
    fn api(&self) -> Option<Arc<dyn Api>> {
        self.api.clone()
    }
}

/// Admin server limits.
#[derive(Clone, Copy, Debug)]
pub struct AdminConfig {
    /// Address to bind; keep it on loopback.
    pub addr: SocketAddr,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Time allowed for a request head to arrive, and for an idle keep-alive connection to send
    /// its next request.
    pub header_read_timeout: Duration,
    /// Largest read buffer per connection, which caps the request head (at least 8 KiB).
    pub max_head_size: usize,
    /// Requests served per connection before it is closed.
    pub max_requests_per_connection: u64,
    /// Longest a connection is kept open.
    pub max_connection_age: Duration,
    /// Time in-flight requests get to finish after shutdown begins.
    pub drain_deadline: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 15000)),
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            max_head_size: 16 * 1024,
            max_requests_per_connection: 1000,
            max_connection_age: Duration::from_secs(300),
            drain_deadline: Duration::from_secs(5),
        }
    }
}

/// A running admin server.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
    registry: Arc<Registry>,
}

impl AdminServer {
    /// Binds `config.addr` and serves until `shutdown` is cancelled. `stats` is rendered at
    /// `/stats/prometheus` (normally [`crate::metrics::install`]). Limits below hyper's minimums
    /// (8 KiB head buffer, one connection, one request per connection) are raised to them.
    pub async fn start(
        config: AdminConfig,
        source: Arc<dyn AdminSource>,
        stats: PrometheusHandle,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        // hyper panics on smaller buffers; raise rather than fail.
        let config = AdminConfig {
            max_head_size: config.max_head_size.max(8192),
            max_connections: config.max_connections.max(1),
            max_requests_per_connection: config.max_requests_per_connection.max(1),
            ..config
        };
        // The accept queue holds a burst of probes and scrapes (std's default is 128).
        let listener = crate::remoting::bind(config.addr, 1024)
            .with_context(|| format!("binding the admin server to {}", config.addr))?;
        let local_addr = listener.local_addr().context("admin listener address")?;
        tracing::info!(%local_addr, "admin server listening");
        let app = Arc::new(App { source, stats });
        let registry = Arc::new(Registry::default());
        let task = tokio::spawn(serve(
            listener,
            config,
            app,
            shutdown,
            Arc::clone(&registry),
        ));
        Ok(Self {
            local_addr,
            task,
            registry,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections being served now (accepted and holding a slot).
    pub fn connections(&self) -> usize {
        self.registry.open.lock().len()
    }

    /// Waits until the server has stopped: shutdown was requested and connections drained or
    /// their deadline passed.
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            tracing::error!("admin server task failed: {e}");
        }
    }
}

struct App {
    source: Arc<dyn AdminSource>,
    stats: PrometheusHandle,
}

const BUSY_RESPONSE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\nconnection: close\r\n\r\nbusy\n";

/// One open connection, as the accept loop sees it when it must make room.
#[derive(Debug)]
struct Tracked {
    /// Inside a request (its handler runs).
    busy: AtomicBool,
    /// When it last finished a request, or opened (ms on the process clock).
    idle_since: AtomicU64,
    /// Cancelled to close it (gracefully: an idle connection closes at once).
    shed: CancellationToken,
}

/// Open connections by id.
#[derive(Debug, Default)]
struct Registry {
    next: AtomicU64,
    open: parking_lot::Mutex<HashMap<u64, Arc<Tracked>>>,
}

impl Registry {
    fn add(&self) -> (u64, Arc<Tracked>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let t = Arc::new(Tracked {
            busy: AtomicBool::new(false),
            idle_since: AtomicU64::new(rocketmesh_filters::clock::mono_ms()),
            shed: CancellationToken::new(),
        });
        self.open.lock().insert(id, Arc::clone(&t));
        (id, t)
    }

    fn remove(&self, id: u64) {
        self.open.lock().remove(&id);
    }

    /// Asks the connection idle longest to close; false when every one is inside a request
    /// (or already asked).
    fn shed_oldest_idle(&self) -> bool {
        let open = self.open.lock();
        let oldest = open
            .values()
            .filter(|t| !t.busy.load(Ordering::Acquire) && !t.shed.is_cancelled())
            .min_by_key(|t| t.idle_since.load(Ordering::Relaxed));
        match oldest {
            Some(t) => {
                t.shed.cancel();
                true
            }
            None => false,
        }
    }
}

/// How long a new connection waits for a slot when none could be made at once.
const SHED_WAIT: Duration = Duration::from_millis(500);
/// Connections waiting for a slot at once; past that, new ones get 503 at once.
const MAX_WAITING: usize = 64;

/// For a connection that found no slot at once (every open one was already asked to close, or
/// the overflow is full): keeps asking the connection idle longest to close and takes the first
/// slot that frees, for at most [`SHED_WAIT`].
async fn make_room(
    slots: &Arc<Semaphore>,
    overflow: &Arc<Semaphore>,
    registry: &Registry,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let deadline = tokio::time::Instant::now() + SHED_WAIT;
    loop {
        if registry.shed_oldest_idle() {
            if let Ok(p) = Arc::clone(overflow).try_acquire_owned() {
                return Some(p);
            }
        }
        let step = tokio::time::Instant::now() + Duration::from_millis(20);
        match tokio::time::timeout_at(step.min(deadline), Arc::clone(slots).acquire_owned()).await {
            Ok(Ok(p)) => return Some(p),
            Ok(Err(_)) => return None,
            Err(_) if tokio::time::Instant::now() >= deadline => return None,
            Err(_) => {}
        }
    }
}

async fn serve(
    listener: TcpListener,
    config: AdminConfig,
    app: Arc<App>,
    shutdown: CancellationToken,
    registry: Arc<Registry>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let overflow = Arc::new(Semaphore::new(config.max_connections));
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let mut conns = JoinSet::new();
    let mut accept_backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = joined {
                    tracing::error!("admin connection task failed: {e}");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accept_backoff = Duration::from_millis(10);
                    // At the cap, the connection idle longest is closed to make room, and the
                    // new one is let in at once on an overflow slot (at most as many again):
                    // the newest connection, a probe say, always gets in while anyone is idle.
                    let permit = Arc::clone(&slots).try_acquire_owned().ok().or_else(|| {
                        registry
                            .shed_oldest_idle()
                            .then(|| Arc::clone(&overflow).try_acquire_owned().ok())
                            .flatten()
                    });
                    let wait = match permit {
                        Some(_) => None,
                        // Nothing to shed, or the overflow is full: wait (bounded) for a slot.
                        None => match Arc::clone(&waiting).try_acquire_owned() {
                            Ok(w) => Some(w),
                            Err(_) => {
                                tracing::debug!(%peer, "admin connection refused: too many waiting for a slot");
                                // Best effort: a full socket buffer just means a plain close.
                                let _ = stream.try_write(BUSY_RESPONSE);
                                continue;
                            }
                        },
                    };
                    let app = Arc::clone(&app);
                    let shutdown = shutdown.clone();
                    let slots = Arc::clone(&slots);
                    let overflow = Arc::clone(&overflow);
                    let registry = Arc::clone(&registry);
                    conns.spawn(async move {
                        let permit = match (permit, wait) {
                            (Some(p), _) => p,
                            (None, _waiting) => match make_room(&slots, &overflow, &registry).await {
                                Some(p) => p,
                                None => {
                                    tracing::debug!(%peer, "admin connection refused: no slot freed in time");
                                    let _ = stream.try_write(BUSY_RESPONSE);
                                    return;
                                }
                            },
                        };
                        let (id, tracked) = registry.add();
                        let serve = serve_connection(stream, peer, config, app, shutdown, &tracked);
                        tokio::pin!(serve);
                        let mut permit = permit;
                        if Arc::ptr_eq(permit.semaphore(), &overflow) {
                            // Let in on an overflow slot: trade it for a regular one as soon as
                            // the connection it replaced has closed, so the cap holds.
                            tokio::select! {
                                () = &mut serve => {}
                                regular = Arc::clone(&slots).acquire_owned() => {
                                    if let Ok(regular) = regular {
                                        permit = regular;
                                    }
                                    serve.await;
                                }
                            }
                        } else {
                            serve.await;
                        }
                        registry.remove(id);
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}; retrying in {accept_backoff:?}");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(accept_backoff) => {}
                    }
                    accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                }
            },
        }
    }
    drop(listener);
    let open = conns.len();
    tracing::debug!(open, "admin server draining");
    let drained = tokio::time::timeout(config.drain_deadline, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = conns.len(),
            deadline = ?config.drain_deadline,
            "admin connections still open at the drain deadline; closing them"
        );
        conns.shutdown().await;
    }
    tracing::info!("admin server stopped");
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: AdminConfig,
    app: Arc<App>,
    shutdown: CancellationToken,
    tracked: &Arc<Tracked>,
) {
    let served = Arc::new(AtomicU64::new(0));
    let limit = config.max_requests_per_connection;
    let in_service = Arc::clone(tracked);
    let service = service_fn(move |req| {
        let app = Arc::clone(&app);
        let served = Arc::clone(&served);
        let tracked = Arc::clone(&in_service);
        async move {
            tracked.busy.store(true, Ordering::Release);
            let mut response = match app.api_for(&req) {
                Some(api) => serve_api(api, req).await,
                None => app.handle(&req),
            };
            tracked
                .idle_since
                .store(rocketmesh_filters::clock::mono_ms(), Ordering::Relaxed);
            tracked.busy.store(false, Ordering::Release);
            if served.fetch_add(1, Ordering::Relaxed) + 1 >= limit {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_head_size)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let age = tokio::time::sleep(config.max_connection_age);
    tokio::pin!(age);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "admin connection ended: {e}");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut age, if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tracked.shed.cancelled(), if !closing => {
                // Room for a newer connection (a probe, say): this one was idle longest. Not in
                // a request, so it is dropped at once (hyper's graceful close would wait for a
                // head that has not come, or never will); one that just took a request ends
                // after answering it.
                if !tracked.busy.load(Ordering::Acquire) {
                    tracing::debug!(%peer, "admin connection closed to make room");
                    return;
                }
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

const INDEX: &str = "rocketmesh admin\n\
    \n\
    /ready              200 when ready to take traffic, 503 with reasons otherwise\n\
    /healthz            200 while the process runs\n\
    /stats/prometheus   metrics, Prometheus text format\n\
    /config_dump        current configuration, JSON\n\
    /clusters           clusters and endpoints with their stats\n";

/// Reads the body (bounded) and answers through the JSON API.
async fn serve_api(api: Arc<dyn Api>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt as _;
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_API_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({ "error": format!("request body: {e}") }),
            )
        }
    };
    let (status, value) = api
        .call(
            parts.method,
            parts.uri.path().to_owned(),
            parts.uri.query().map(str::to_owned),
            body,
        )
        .await;
    json_response(status, &value)
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    body.push('\n');
    respond(status, "application/json", body)
}

impl App {
    /// The JSON API, when `req` is for it and the process has one.
    fn api_for(&self, req: &Request<Incoming>) -> Option<Arc<dyn Api>> {
        let path = req.uri().path();
        (path == "/api" || path.starts_with("/api/"))
            .then(|| self.source.api())
            .flatten()
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let known = matches!(
            path,
            "/" | "/ready" | "/healthz" | "/stats/prometheus" | "/config_dump" | "/clusters"
        );
        if !known {
            return text(StatusCode::NOT_FOUND, format!("no route {path}\n"));
        }
        if req.method() != Method::GET {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} {path}: only GET\n", req.method()),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return response;
        }
        match path {
            "/" => text(StatusCode::OK, INDEX.to_owned()),
            "/ready" => match self.source.ready() {
                Readiness::Ready => text(StatusCode::OK, "LIVE\n".to_owned()),
                Readiness::NotReady { reasons } => {
                    let mut body = String::from("NOT READY\n");
                    for reason in reasons {
                        body.push_str(&reason);
                        body.push('\n');
                    }
                    text(StatusCode::SERVICE_UNAVAILABLE, body)
                }
            },
            "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
            "/stats/prometheus" => {
                self.source.publish_stats();
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.stats.render(),
                )
            }
            "/config_dump" => match serde_json::to_string_pretty(&self.source.config_dump()) {
                Ok(mut json) => {
                    json.push('\n');
                    respond(StatusCode::OK, "application/json", json)
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("config dump failed: {e}\n"),
                ),
            },
            _ => text(StatusCode::OK, self.source.clusters()),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The readiness gate: ready once no [`BlockReady`] guard is alive.
///
/// Register every startup step before serving `/ready` (a gate with no blockers is ready).
/// Cloning shares the gate.
#[derive(Clone, Debug)]
pub struct Ready {
    inner: Arc<ReadyInner>,
}

#[derive(Debug)]
struct ReadyInner {
    blockers: watch::Sender<BTreeMap<usize, String>>,
    /// Set once shutdown began: not ready again, whatever the blockers.
    draining: std::sync::atomic::AtomicBool,
    next_id: AtomicUsize,
    created: Instant,
}

impl Default for Ready {
    fn default() -> Self {
        Self::new()
    }
}

impl Ready {
    /// A gate with no blockers.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(ReadyInner {
                blockers: watch::Sender::new(BTreeMap::new()),
                draining: std::sync::atomic::AtomicBool::new(false),
                next_id: AtomicUsize::new(0),
                created: Instant::now(),
            }),
        }
    }

    /// Holds readiness back until the returned guard is dropped; `name` shows in `/ready`.
    pub fn block(&self, name: impl Into<String>) -> BlockReady {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let name = name.into();
        self.inner.blockers.send_modify(|b| {
            b.insert(id, name);
        });
        BlockReady {
            gate: Arc::clone(&self.inner),
            id,
        }
    }

    /// Shutdown began: `/ready` answers 503 `draining` from now on, so load balancers and
    /// kubelets stop sending new work while in-flight work finishes.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        tracing::info!("draining: /ready now answers 503");
    }

    /// `true` once [`Ready::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// `true` when no blocker is alive and shutdown has not begun.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.inner.blockers.borrow().is_empty()
    }

    /// The blockers still alive, oldest first.
    pub fn pending(&self) -> Vec<String> {
        self.inner.blockers.borrow().values().cloned().collect()
    }

    /// Readiness, with one `waiting for <name>` reason per live blocker.
    pub fn readiness(&self) -> Readiness {
        if self.is_draining() {
            return Readiness::NotReady {
                reasons: vec!["draining".to_owned()],
            };
        }
        let blockers = self.inner.blockers.borrow();
        if blockers.is_empty() {
            Readiness::Ready
        } else {
            Readiness::NotReady {
                reasons: blockers
                    .values()
                    .map(|name| format!("waiting for {name}"))
                    .collect(),
            }
        }
    }

    /// Resolves once no blocker is alive.
    pub async fn wait(&self) {
        let mut rx = self.inner.blockers.subscribe();
        // The sender lives in `self.inner`, so the channel cannot close while we wait.
        let _ = rx.wait_for(BTreeMap::is_empty).await;
    }
}

/// Holds a [`Ready`] gate closed while alive.
#[derive(Debug)]
#[must_use = "readiness is released as soon as the guard is dropped"]
pub struct BlockReady {
    gate: Arc<ReadyInner>,
    id: usize,
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        let mut released = None;
        let mut now_ready = false;
        self.gate.blockers.send_modify(|b| {
            released = b.remove(&self.id);
            now_ready = b.is_empty();
        });
        let name = released.unwrap_or_default();
        if now_ready {
            tracing::info!(
                elapsed = ?self.gate.created.elapsed(),
                "ready (last blocker: {name})"
            );
        } else {
            tracing::debug!("readiness blocker {name} released");
        }
    }
}
