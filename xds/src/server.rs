//! The control plane's ADS server: delta (`DeltaAggregatedResources`) and state-of-the-world
//! (`StreamAggregatedResources`) streams over the resources of a [`Catalog`].
//!
//! * **Delta** serves VirtualHost (VHDS names `<route_config>/<topic>`), Cluster and
//!   ClusterLoadAssignment. Each stream tracks, per type, the names the client subscribed to (Cluster
//!   may also be wildcard), the version of every resource the client holds and the names already
//!   reported missing; a resource is sent only when its version differs from the one the client
//!   holds, a missing one is reported once in `removed_resources`. A NACKed version is not resent:
//!   the next push comes with the next version.
//! * **SotW** serves Cluster (empty `resource_names` = all), RouteConfiguration (every known topic's
//!   virtual host, named `<route_config>/<topic>`) and ClusterLoadAssignment; a type is resent
//!   whenever a catalog change alters its content.
//!
//! Changes reach streams through the catalog's watch channel; each stream reads the catalog's change
//! log from its last revision and re-evaluates only the names a change touches (everything when it
//! fell behind the log). Responses go through a bounded per-stream queue: a client that does not read
//! holds its stream task back instead of growing a buffer. Streams, names per stream and message
//! sizes are limited by [`ServerOptions`].
//!
//! Nonces are `<stream id>-<n>`, unique per server instance; `system_version_info` (delta) and
//! `version_info` (SotW) carry the catalog revision; resource versions are the catalog's content
//! versions.

use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use prost::Message;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use xds_api::pb::google::protobuf::Any;
use xds_api::pb::google::rpc;

use crate::catalog::{Catalog, Lookup};
use crate::resources::{
    cluster_to_proto, load_assignment_to_proto, route_config_to_proto, to_any, topic_of_vhds_name,
    vhost_to_proto, CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE, ROUTE_CONFIGURATION_TYPE,
    VIRTUAL_HOST_TYPE,
};

/// Responses queued per stream before the stream task waits for the client to read.
const STREAM_QUEUE: usize = 16;
/// NACK messages longer than this are cut in logs and stats.
const MAX_ERROR_CHARS: usize = 1024;
/// HTTP/2 keepalive pings on idle connections, so dead peers free their streams.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Server limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Open ADS streams (delta + SotW); more are refused with `RESOURCE_EXHAUSTED`.
    pub max_streams: usize,
    /// Resource names one stream may subscribe to, over all types (a wildcard counts as one);
    /// more fail the stream with `INVALID_ARGUMENT`.
    pub max_names_per_stream: usize,
    /// Largest gRPC message accepted or sent. Delta responses are split to stay under it.
    pub max_message_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_streams: 4096,
            max_names_per_stream: 16_384,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The last NACK a client sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NackRecord {
    pub node_id: String,
    pub type_url: String,
    pub nonce: String,
    pub error_message: String,
}

/// A snapshot of the server's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// Open delta streams.
    pub delta_streams: usize,
    /// Open state-of-the-world streams.
    pub sotw_streams: usize,
    /// Streams accepted since start.
    pub streams_accepted: u64,
    /// Streams refused by `max_streams`.
    pub streams_rejected: u64,
    pub responses_sent: u64,
    pub acks: u64,
    pub nacks: u64,
    pub last_nack: Option<NackRecord>,
    /// Subscribed resource names over all open streams (a wildcard counts as one).
    pub subscriptions: u64,
}

struct Shared {
    catalog: Arc<Catalog>,
    opts: ServerOptions,
    open_streams: AtomicUsize,
    delta_streams: AtomicUsize,
    sotw_streams: AtomicUsize,
    streams_accepted: AtomicU64,
    streams_rejected: AtomicU64,
    responses_sent: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    subscriptions: AtomicU64,
    last_nack: Mutex<Option<NackRecord>>,
    next_stream_id: AtomicU64,
    /// Set when `serve`'s shutdown future completes: every stream task ends.
    shutdown: watch::Sender<bool>,
}

/// The delta + SotW ADS server. Cheap to clone; clones share the catalog and the counters.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

impl AdsServer {
    pub fn new(catalog: Arc<Catalog>, opts: ServerOptions) -> Self {
        AdsServer {
            shared: Arc::new(Shared {
                catalog,
                opts,
                open_streams: AtomicUsize::new(0),
                delta_streams: AtomicUsize::new(0),
                sotw_streams: AtomicUsize::new(0),
                streams_accepted: AtomicU64::new(0),
                streams_rejected: AtomicU64::new(0),
                responses_sent: AtomicU64::new(0),
                acks: AtomicU64::new(0),
                nacks: AtomicU64::new(0),
                subscriptions: AtomicU64::new(0),
                last_nack: Mutex::new(None),
                next_stream_id: AtomicU64::new(1),
                shutdown: watch::channel(false).0,
            }),
        }
    }

    pub fn stats(&self) -> ServerStats {
        let s = &self.shared;
        ServerStats {
            delta_streams: s.delta_streams.load(Ordering::Relaxed),
            sotw_streams: s.sotw_streams.load(Ordering::Relaxed),
            streams_accepted: s.streams_accepted.load(Ordering::Relaxed),
            streams_rejected: s.streams_rejected.load(Ordering::Relaxed),
            responses_sent: s.responses_sent.load(Ordering::Relaxed),
            acks: s.acks.load(Ordering::Relaxed),
            nacks: s.nacks.load(Ordering::Relaxed),
            last_nack: s.last_nack.lock().clone(),
            subscriptions: s.subscriptions.load(Ordering::Relaxed),
        }
    }

    /// Serves ADS on `listener` until `shutdown` completes; then every open stream is ended (with
    /// an OK status) and the connections are closed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let local = listener.local_addr().ok();
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            conn.inspect(|s| {
                // Pushes are small writes that must leave at once.
                if let Err(e) = s.set_nodelay(true) {
                    debug!(error = %e, "cannot set TCP_NODELAY on an ADS connection");
                }
            })
        });
        let max = self.shared.opts.max_message_bytes;
        let stop = self.shared.shutdown.clone();
        let service = AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        info!(addr = ?local, "ADS server listening");
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                stop.send_replace(true);
            })
            .await
    }

    /// Takes a stream slot, or refuses the stream with `RESOURCE_EXHAUSTED`.
    fn admit(&self, kind: StreamKind) -> Result<StreamPermit, Box<Status>> {
        let s = &self.shared;
        let max = s.opts.max_streams;
        if s.open_streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            s.streams_rejected.fetch_add(1, Ordering::Relaxed);
            warn!(limit = max, "refusing an ADS stream: too many open streams");
            return Err(Box::new(Status::resource_exhausted(format!(
                "too many ADS streams (max_streams = {max})"
            ))));
        }
        s.streams_accepted.fetch_add(1, Ordering::Relaxed);
        kind.counter(s).fetch_add(1, Ordering::Relaxed);
        Ok(StreamPermit {
            shared: self.shared.clone(),
            kind,
            id: s.next_stream_id.fetch_add(1, Ordering::Relaxed),
            subscriptions: 0,
        })
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let permit = self.admit(StreamKind::Sotw).map_err(|e| *e)?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let peer = request.remote_addr();
        debug!(stream = permit.id, ?peer, "SotW ADS stream opened");
        let stream = SotwStream {
            out: Outbound::new(&self.shared, permit, tx),
            types: HashMap::new(),
        };
        tokio::spawn(drive(stream, request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let permit = self.admit(StreamKind::Delta).map_err(|e| *e)?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let peer = request.remote_addr();
        debug!(stream = permit.id, ?peer, "delta ADS stream opened");
        let stream = DeltaStream {
            out: Outbound::new(&self.shared, permit, tx),
            types: HashMap::new(),
        };
        tokio::spawn(drive(stream, request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

// ---------------------------------------------------------------------------------------------
// per-stream plumbing shared by both protocols

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    Delta,
    Sotw,
}

impl StreamKind {
    fn counter(self, s: &Shared) -> &AtomicUsize {
        match self {
            StreamKind::Delta => &s.delta_streams,
            StreamKind::Sotw => &s.sotw_streams,
        }
    }
}

/// One admitted stream: gives its slot and its subscriptions back when dropped.
struct StreamPermit {
    shared: Arc<Shared>,
    kind: StreamKind,
    id: u64,
    subscriptions: u64,
}

impl StreamPermit {
    fn set_subscriptions(&mut self, n: u64) {
        let s = &self.shared.subscriptions;
        if n > self.subscriptions {
            s.fetch_add(n - self.subscriptions, Ordering::Relaxed);
        } else {
            s.fetch_sub(self.subscriptions - n, Ordering::Relaxed);
        }
        self.subscriptions = n;
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.set_subscriptions(0);
        self.kind
            .counter(&self.shared)
            .fetch_sub(1, Ordering::Relaxed);
        self.shared.open_streams.fetch_sub(1, Ordering::AcqRel);
        debug!(stream = self.id, kind = ?self.kind, "ADS stream closed");
    }
}

/// The stream task must end (client gone, shutdown, or the stream failed).
#[derive(Debug)]
struct Stop;

/// A stream's way out: bounded queue, nonces, node id, ACK/NACK bookkeeping.
struct Outbound<R> {
    shared: Arc<Shared>,
    permit: StreamPermit,
    tx: mpsc::Sender<Result<R, Status>>,
    shutdown: watch::Receiver<bool>,
    node: String,
    seq: u64,
}

impl<R> Outbound<R> {
    fn new(
        shared: &Arc<Shared>,
        permit: StreamPermit,
        tx: mpsc::Sender<Result<R, Status>>,
    ) -> Self {
        Outbound {
            shared: shared.clone(),
            permit,
            tx,
            shutdown: shared.shutdown.subscribe(),
            node: String::new(),
            seq: 0,
        }
    }

    fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    fn opts(&self) -> &ServerOptions {
        &self.shared.opts
    }

    fn id(&self) -> u64 {
        self.permit.id
    }

    fn next_nonce(&mut self) -> String {
        self.seq += 1;
        format!("{}-{}", self.permit.id, self.seq)
    }

    fn learn_node(&mut self, node: Option<&xds_api::pb::envoy::config::core::v3::Node>) {
        if self.node.is_empty() {
            if let Some(n) = node.filter(|n| !n.id.is_empty()) {
                self.node = truncate(&n.id, MAX_ERROR_CHARS);
                debug!(stream = self.permit.id, node = %self.node, "ADS client identified");
            }
        }
    }

    /// Queues one response, waiting while the queue is full.
    async fn send(&mut self, msg: R) -> Result<(), Stop> {
        tokio::select! {
            r = self.tx.send(Ok(msg)) => r.map_err(|_| Stop)?,
            _ = stopped(&mut self.shutdown) => return Err(Stop),
        }
        self.shared.responses_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Ends the stream with `status`, a client error worth a warning.
    async fn fail(&mut self, status: Status) -> Stop {
        warn!(stream = self.permit.id, node = %self.node, error = %status.message(), "failing ADS stream");
        self.end_with(status).await
    }

    /// Ends the stream with `status`.
    async fn end_with(&mut self, status: Status) -> Stop {
        tokio::select! {
            _ = self.tx.send(Err(status)) => {}
            _ = stopped(&mut self.shutdown) => {}
        }
        Stop
    }

    fn record_reply(&self, type_url: &str, nonce: &str, error: Option<&rpc::Status>) {
        let s = &self.shared;
        match error {
            None => {
                s.acks.fetch_add(1, Ordering::Relaxed);
                debug!(stream = self.permit.id, node = %self.node, type_url, nonce, "ACK");
            }
            Some(e) => {
                s.nacks.fetch_add(1, Ordering::Relaxed);
                let message = truncate(&e.message, MAX_ERROR_CHARS);
                warn!(stream = self.permit.id, node = %self.node, type_url, nonce, code = e.code,
                    error = %message, "NACK: the client rejected a response");
                *s.last_nack.lock() = Some(NackRecord {
                    node_id: self.node.clone(),
                    type_url: truncate(type_url, MAX_ERROR_CHARS),
                    nonce: truncate(nonce, MAX_ERROR_CHARS),
                    error_message: message,
                });
            }
        }
    }

    fn too_many_names(&self, n: usize) -> Status {
        Status::invalid_argument(format!(
            "{n} resource names on one ADS stream exceed max_names_per_stream = {}",
            self.opts().max_names_per_stream
        ))
    }
}

/// What differs between the delta and the SotW stream; [`drive`] is the loop they share.
trait AdsStream: Send + Sized + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    /// For logs: "delta" or "SotW".
    const FLAVOUR: &'static str;
    fn out(&mut self) -> &mut Outbound<Self::Resp>;
    fn on_request(&mut self, req: Self::Req) -> impl Future<Output = Result<(), Stop>> + Send;
    fn on_change(&mut self, last_rev: &mut u64) -> impl Future<Output = Result<(), Stop>> + Send;
}

/// Runs one ADS stream until the client goes, the stream fails or the server shuts down:
/// requests from the client and catalog changes, one at a time.
async fn drive<S: AdsStream>(mut stream: S, mut inbound: Streaming<S::Req>)
where
    Streaming<S::Req>: Send,
    S::Req: prost::Message + Default,
{
    let mut changes = stream.out().catalog().subscribe();
    changes.borrow_and_update();
    let mut last_rev = stream.out().catalog().revision();
    let mut shutdown = stream.out().shared.shutdown.subscribe();
    loop {
        let step = tokio::select! {
            _ = stopped(&mut shutdown) => Err(Stop),
            msg = inbound.message() => match msg {
                Ok(Some(req)) => stream.on_request(req).await,
                Ok(None) => Err(Stop),
                Err(status) => {
                    let out = stream.out();
                    debug!(stream = out.id(), node = %out.node, error = %status, "{} ADS stream read failed", S::FLAVOUR);
                    Err(out.end_with(status).await)
                }
            },
            r = changes.changed() => match r {
                Ok(()) => stream.on_change(&mut last_rev).await,
                Err(_) => Err(Stop),
            },
        };
        if step.is_err() {
            break;
        }
    }
}

/// Completes once the server shuts down.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the server is gone: stop too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn map_lookup<T, U>(l: Lookup<T>, f: impl FnOnce(T) -> U) -> Lookup<U> {
    match l {
        Lookup::Found(t) => Lookup::Found(f(t)),
        Lookup::Absent => Lookup::Absent,
        Lookup::Pending => Lookup::Pending,
    }
}

/// The resource types this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    VirtualHost,
    Cluster,
    LoadAssignment,
    RouteConfiguration,
}

impl Kind {
    fn of(type_url: &str) -> Option<Kind> {
        match type_url {
            VIRTUAL_HOST_TYPE => Some(Kind::VirtualHost),
            CLUSTER_TYPE => Some(Kind::Cluster),
            LOAD_ASSIGNMENT_TYPE => Some(Kind::LoadAssignment),
            ROUTE_CONFIGURATION_TYPE => Some(Kind::RouteConfiguration),
            _ => None,
        }
    }

    fn url(self) -> &'static str {
        match self {
            Kind::VirtualHost => VIRTUAL_HOST_TYPE,
            Kind::Cluster => CLUSTER_TYPE,
            Kind::LoadAssignment => LOAD_ASSIGNMENT_TYPE,
            Kind::RouteConfiguration => ROUTE_CONFIGURATION_TYPE,
        }
    }
}

/// A named resource of one of the delta types, with its version, ready to send.
fn lookup_named(catalog: &Catalog, kind: Kind, name: &str) -> Lookup<(String, Any)> {
    match kind {
        Kind::VirtualHost => match topic_of_vhds_name(name) {
            Some(topic) => map_lookup(catalog.vhost(topic, name), |v| {
                (v.version, to_any(kind.url(), &vhost_to_proto(&v.value)))
            }),
            None => Lookup::Absent,
        },
        Kind::Cluster => map_lookup(catalog.cluster(name), |c| {
            (c.version, to_any(kind.url(), &cluster_to_proto(&c.value)))
        }),
        Kind::LoadAssignment => map_lookup(catalog.load_assignment(name), |l| {
            (
                l.version,
                to_any(kind.url(), &load_assignment_to_proto(&l.value)),
            )
        }),
        // Not a named, individually versioned resource here (SotW builds it whole).
        Kind::RouteConfiguration => Lookup::Absent,
    }
}

// ---------------------------------------------------------------------------------------------
// delta

const DELTA_KINDS: [Kind; 3] = [Kind::VirtualHost, Kind::Cluster, Kind::LoadAssignment];

/// One type's state on a delta stream.
#[derive(Default)]
struct DeltaType {
    /// A request of this type was seen (the first one may carry initial versions / legacy wildcard).
    seen: bool,
    /// Cluster only: the client wants every cluster.
    wildcard: bool,
    subscribed: HashSet<String>,
    /// VirtualHost only: topic -> subscribed VHDS names of that topic.
    by_topic: HashMap<String, HashSet<String>>,
    /// name -> the version the client holds (sent, or announced in initial_resource_versions).
    held: HashMap<String, String>,
    /// Explicitly subscribed names already reported in removed_resources.
    reported_missing: HashSet<String>,
}

impl DeltaType {
    fn interested(&self, name: &str) -> bool {
        self.wildcard || self.subscribed.contains(name)
    }

    fn subscribe(&mut self, kind: Kind, name: String) -> bool {
        if kind == Kind::VirtualHost {
            if let Some(topic) = topic_of_vhds_name(&name) {
                self.by_topic
                    .entry(topic.to_owned())
                    .or_default()
                    .insert(name.clone());
            }
        }
        self.subscribed.insert(name)
    }

    fn unsubscribe(&mut self, name: &str) {
        if self.subscribed.remove(name) {
            if let Some(topic) = topic_of_vhds_name(name) {
                if let Some(names) = self.by_topic.get_mut(topic) {
                    names.remove(name);
                    if names.is_empty() {
                        self.by_topic.remove(topic);
                    }
                }
            }
        }
        self.held.remove(name);
        self.reported_missing.remove(name);
    }

    /// Brings the client's copy of `name` up to date: new version -> `resources`, gone ->
    /// `removed` (once), pending -> nothing yet.
    fn evaluate(&mut self, catalog: &Catalog, kind: Kind, name: &str, out: &mut DeltaBatch) {
        if !self.interested(name) {
            return;
        }
        match lookup_named(catalog, kind, name) {
            Lookup::Found((version, any)) => {
                self.reported_missing.remove(name);
                if self.held.get(name) != Some(&version) {
                    self.held.insert(name.to_owned(), version.clone());
                    out.resources.push(Resource {
                        name: name.to_owned(),
                        version,
                        resource: Some(any),
                        ..Default::default()
                    });
                }
            }
            Lookup::Absent => {
                let held = self.held.remove(name).is_some();
                let explicit = self.subscribed.contains(name);
                let first_report = explicit && self.reported_missing.insert(name.to_owned());
                // Wildcard-only names the client never had need no removal.
                if held || first_report {
                    out.removed.push(name.to_owned());
                }
            }
            Lookup::Pending => {}
        }
    }

    fn count(&self) -> usize {
        self.subscribed.len() + usize::from(self.wildcard)
    }
}

#[derive(Default)]
struct DeltaBatch {
    resources: Vec<Resource>,
    removed: Vec<String>,
}

struct DeltaStream {
    out: Outbound<DeltaDiscoveryResponse>,
    types: HashMap<Kind, DeltaType>,
}

impl AdsStream for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    const FLAVOUR: &'static str = "delta";

    fn out(&mut self) -> &mut Outbound<Self::Resp> {
        &mut self.out
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Stop> {
        self.out.learn_node(req.node.as_ref());
        let Some(kind) = Kind::of(&req.type_url).filter(|k| DELTA_KINDS.contains(k)) else {
            warn!(stream = self.out.id(), node = %self.out.node, type_url = %truncate(&req.type_url, 200),
                "ignoring a delta request for a type this server does not serve");
            return Ok(());
        };
        if !req.response_nonce.is_empty() {
            self.out.record_reply(
                &req.type_url,
                &req.response_nonce,
                req.error_detail.as_ref(),
            );
        }
        let max = self.out.opts().max_names_per_stream;
        let incoming = req.resource_names_subscribe.len() + req.initial_resource_versions.len();
        if incoming > max {
            return Err(self.out.fail(self.out.too_many_names(incoming)).await);
        }

        let st = self.types.entry(kind).or_default();
        let first = !st.seen;
        st.seen = true;
        let mut to_evaluate = BTreeSet::new();
        let mut wildcard_added = false;
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.unsubscribe(name);
            }
        }
        // Legacy wildcard: a first Cluster request naming nothing.
        if first
            && kind == Kind::Cluster
            && req.resource_names_subscribe.is_empty()
            && req.resource_names_unsubscribe.is_empty()
        {
            st.wildcard = true;
            wildcard_added = true;
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                if kind == Kind::Cluster {
                    wildcard_added |= !st.wildcard;
                    st.wildcard = true;
                } else {
                    warn!(stream = self.out.id(), node = %self.out.node, type_url = kind.url(),
                        "ignoring a wildcard subscription: this type is on demand only");
                }
                continue;
            }
            st.subscribe(kind, name.clone());
            to_evaluate.insert(name);
        }
        if first {
            for (name, version) in req.initial_resource_versions {
                if st.interested(&name) {
                    st.held.insert(name.clone(), version);
                    to_evaluate.insert(name);
                }
            }
        }
        let total: usize = self.types.values().map(DeltaType::count).sum();
        if total > max {
            return Err(self.out.fail(self.out.too_many_names(total)).await);
        }
        self.out.permit.set_subscriptions(total as u64);

        let catalog = self.out.shared.catalog.clone();
        if wildcard_added {
            to_evaluate.extend(catalog.cluster_names());
        }
        let rev = catalog.revision();
        let st = self.types.entry(kind).or_default();
        let mut batch = DeltaBatch::default();
        for name in &to_evaluate {
            st.evaluate(&catalog, kind, name, &mut batch);
        }
        self.flush(kind, rev, batch).await
    }

    async fn on_change(&mut self, last_rev: &mut u64) -> Result<(), Stop> {
        let catalog = self.out.shared.catalog.clone();
        let mut names: HashMap<Kind, BTreeSet<String>> = HashMap::new();
        match catalog.changes_since(*last_rev) {
            Some((rev, changes)) => {
                *last_rev = rev;
                for change in &changes {
                    let (topic, cluster_names) = Catalog::names_of(change);
                    if let (Some(topic), Some(st)) = (topic, self.types.get(&Kind::VirtualHost)) {
                        if let Some(vhds) = st.by_topic.get(topic) {
                            names
                                .entry(Kind::VirtualHost)
                                .or_default()
                                .extend(vhds.iter().cloned());
                        }
                    }
                    for kind in [Kind::Cluster, Kind::LoadAssignment] {
                        if let Some(st) = self.types.get(&kind) {
                            for n in &cluster_names {
                                if st.interested(n) || st.held.contains_key(n) {
                                    names.entry(kind).or_default().insert(n.clone());
                                }
                            }
                        }
                    }
                }
            }
            None => {
                // Fell behind the change log: re-check everything.
                *last_rev = catalog.revision();
                debug!(
                    stream = self.out.id(),
                    "ADS stream behind the change log; re-checking all names"
                );
                for (&kind, st) in &self.types {
                    let set = names.entry(kind).or_default();
                    set.extend(st.subscribed.iter().cloned());
                    set.extend(st.held.keys().cloned());
                    if st.wildcard {
                        set.extend(catalog.cluster_names());
                    }
                }
            }
        }
        let rev = *last_rev;
        for kind in DELTA_KINDS {
            let (Some(set), Some(st)) = (names.remove(&kind), self.types.get_mut(&kind)) else {
                continue;
            };
            let mut batch = DeltaBatch::default();
            for name in &set {
                st.evaluate(&catalog, kind, name, &mut batch);
            }
            self.flush(kind, rev, batch).await?;
        }
        Ok(())
    }
}

impl DeltaStream {
    /// Sends a batch as one response, or several when it would not fit `max_message_bytes`.
    async fn flush(&mut self, kind: Kind, rev: u64, batch: DeltaBatch) -> Result<(), Stop> {
        if batch.resources.is_empty() && batch.removed.is_empty() {
            return Ok(());
        }
        // Room for the envelope (type url, nonce, version) and per-field framing.
        let budget = (self.out.opts().max_message_bytes / 4 * 3).max(1);
        let mut chunks: Vec<(Vec<Resource>, Vec<String>)> = vec![(Vec::new(), Vec::new())];
        let mut size = 0;
        let mut push = |len: usize, chunks: &mut Vec<(Vec<Resource>, Vec<String>)>| {
            let last = chunks.last().map(|(r, n)| r.len() + n.len()).unwrap_or(0);
            if size + len > budget && last > 0 {
                chunks.push((Vec::new(), Vec::new()));
                size = 0;
            }
            size += len;
        };
        for name in batch.removed {
            push(name.len() + 8, &mut chunks);
            if let Some(c) = chunks.last_mut() {
                c.1.push(name);
            }
        }
        for r in batch.resources {
            push(r.encoded_len() + 8, &mut chunks);
            if let Some(c) = chunks.last_mut() {
                c.0.push(r);
            }
        }
        for (resources, removed_resources) in chunks {
            let nonce = self.out.next_nonce();
            debug!(stream = self.out.id(), node = %self.out.node, type_url = kind.url(), %nonce,
                resources = resources.len(), removed = removed_resources.len(), "delta push");
            self.out
                .send(DeltaDiscoveryResponse {
                    system_version_info: rev.to_string(),
                    resources,
                    type_url: kind.url().to_owned(),
                    removed_resources,
                    nonce,
                    ..Default::default()
                })
                .await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// state of the world

const SOTW_KINDS: [Kind; 3] = [
    Kind::Cluster,
    Kind::RouteConfiguration,
    Kind::LoadAssignment,
];

#[derive(Default)]
struct SotwType {
    /// Requested names, sorted and unique.
    names: Vec<String>,
    /// Cluster only: every cluster.
    wildcard: bool,
    /// Nonce of the last response; replies carrying another nonce are stale and ignored.
    nonce: String,
    /// Digest of the last response's resources, so changes that do not alter them send nothing.
    digest: Option<u64>,
}

struct SotwStream {
    out: Outbound<DiscoveryResponse>,
    types: HashMap<Kind, SotwType>,
}

impl AdsStream for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    const FLAVOUR: &'static str = "SotW";

    fn out(&mut self) -> &mut Outbound<Self::Resp> {
        &mut self.out
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), Stop> {
        self.out.learn_node(req.node.as_ref());
        let Some(kind) = Kind::of(&req.type_url).filter(|k| SOTW_KINDS.contains(k)) else {
            warn!(stream = self.out.id(), node = %self.out.node, type_url = %truncate(&req.type_url, 200),
                "ignoring a SotW request for a type this server does not serve");
            return Ok(());
        };
        let max = self.out.opts().max_names_per_stream;
        if req.resource_names.len() > max {
            return Err(self
                .out
                .fail(self.out.too_many_names(req.resource_names.len()))
                .await);
        }
        let st = self.types.entry(kind).or_default();
        // A nonce from before this stream (a reconnecting client) is not a reply to anything here:
        // the request is served as a fresh one.
        if !req.response_nonce.is_empty() && !st.nonce.is_empty() {
            if req.response_nonce != st.nonce {
                debug!(stream = self.out.id(), node = %self.out.node, type_url = kind.url(),
                    nonce = %truncate(&req.response_nonce, 200), "ignoring a reply to a superseded response");
                return Ok(());
            }
            self.out.record_reply(
                &req.type_url,
                &req.response_nonce,
                req.error_detail.as_ref(),
            );
        }
        let first = st.nonce.is_empty();
        let mut names = req.resource_names;
        names.sort();
        names.dedup();
        let wildcard =
            kind == Kind::Cluster && (names.is_empty() || names.iter().any(|n| n == "*"));
        names.retain(|n| n != "*");
        let changed = first || names != st.names || wildcard != st.wildcard;
        st.names = names;
        st.wildcard = wildcard;

        let total: usize = self
            .types
            .values()
            .map(|t| t.names.len() + usize::from(t.wildcard))
            .sum();
        if total > max {
            return Err(self.out.fail(self.out.too_many_names(total)).await);
        }
        self.out.permit.set_subscriptions(total as u64);
        if changed {
            self.respond(kind, true).await?;
        }
        Ok(())
    }

    async fn on_change(&mut self, last_rev: &mut u64) -> Result<(), Stop> {
        let catalog = self.out.shared.catalog.clone();
        let mut affected: HashSet<Kind> = HashSet::new();
        match catalog.changes_since(*last_rev) {
            Some((rev, changes)) => {
                *last_rev = rev;
                for change in &changes {
                    let (topic, cluster_names) = Catalog::names_of(change);
                    for (&kind, st) in &self.types {
                        let hit = match kind {
                            Kind::RouteConfiguration => topic.is_some() && !st.names.is_empty(),
                            _ => {
                                st.wildcard
                                    || cluster_names
                                        .iter()
                                        .any(|n| st.names.binary_search(n).is_ok())
                            }
                        };
                        if hit {
                            affected.insert(kind);
                        }
                    }
                }
            }
            None => {
                *last_rev = catalog.revision();
                affected.extend(self.types.keys().copied());
            }
        }
        for kind in SOTW_KINDS {
            if affected.contains(&kind) {
                self.respond(kind, false).await?;
            }
        }
        Ok(())
    }
}

impl SotwStream {
    /// Sends the whole current state of `kind`; unless `force`, only when it differs from the
    /// last response.
    async fn respond(&mut self, kind: Kind, force: bool) -> Result<(), Stop> {
        let catalog = self.out.shared.catalog.clone();
        let Some(st) = self.types.get(&kind) else {
            return Ok(());
        };
        if !st.wildcard && st.names.is_empty() {
            return Ok(());
        }
        let rev = catalog.revision();
        let resources: Vec<Any> = match kind {
            Kind::RouteConfiguration => {
                let topics = catalog.topics();
                st.names
                    .iter()
                    .map(|rc| {
                        let vhosts: Vec<_> = topics
                            .iter()
                            .filter_map(|t| catalog.vhost(t, &crate::vhds_name(rc, t)).found())
                            .collect();
                        to_any(
                            kind.url(),
                            &route_config_to_proto(rc, vhosts.iter().map(|v| &*v.value)),
                        )
                    })
                    .collect()
            }
            _ => {
                let all;
                let names = if st.wildcard {
                    all = catalog.cluster_names();
                    &all
                } else {
                    &st.names
                };
                names
                    .iter()
                    .filter_map(|n| lookup_named(&catalog, kind, n).found().map(|(_, any)| any))
                    .collect()
            }
        };
        let mut h = DefaultHasher::new();
        for r in &resources {
            r.value.hash(&mut h);
        }
        let digest = h.finish();
        if !force && st.digest == Some(digest) {
            return Ok(());
        }
        let nonce = self.out.next_nonce();
        if let Some(st) = self.types.get_mut(&kind) {
            st.nonce = nonce.clone();
            st.digest = Some(digest);
        }
        debug!(stream = self.out.id(), node = %self.out.node, type_url = kind.url(), %nonce,
            resources = resources.len(), "SotW push");
        self.out
            .send(DiscoveryResponse {
                version_info: rev.to_string(),
                resources,
                type_url: kind.url().to_owned(),
                nonce,
                ..Default::default()
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("äöüß", 2), "äö...");
    }

    #[test]
    fn type_urls_round_trip() {
        for k in [
            Kind::VirtualHost,
            Kind::Cluster,
            Kind::LoadAssignment,
            Kind::RouteConfiguration,
        ] {
            assert_eq!(Kind::of(k.url()), Some(k));
        }
        assert_eq!(Kind::of("type.googleapis.com/foo"), None);
    }
}
