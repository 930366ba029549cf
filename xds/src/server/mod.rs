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

mod delta;
mod options;
mod sotw;
mod stream;

use parking_lot::Mutex;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

use crate::catalog::Catalog;
use rocketmesh_remoting::tls::TlsMode;

pub use options::{AdsSecurity, NackRecord, ServerOptions, ServerStats};

use delta::DeltaStream;
use sotw::SotwStream;
use stream::{
    drive, Outbound, Shared, StreamKind, StreamPermit, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT,
    STREAM_QUEUE,
};

/// The delta + SotW ADS server. Cheap to clone; clones share the catalog and the counters.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

impl AdsServer {
    pub fn new(catalog: Arc<Catalog>, opts: ServerOptions) -> Self {
        Self::new_secure(catalog, opts, AdsSecurity::default())
    }

    /// A server whose listener and streams are secured by `security`.
    pub fn new_secure(catalog: Arc<Catalog>, opts: ServerOptions, security: AdsSecurity) -> Self {
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
                security,
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
        let max = self.shared.opts.max_message_bytes;
        let stop = self.shared.shutdown.clone();
        let tls = self.shared.security.tls.clone();
        let service = AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(service);
        let shutdown = async move {
            shutdown.await;
            stop.send_replace(true);
        };
        match tls.filter(|t| t.mode() != TlsMode::Disabled) {
            Some(tls) => {
                info!(addr = ?local, mode = ?tls.mode(), "ADS server listening (TLS)");
                let incoming = ReceiverStream::new(crate::transport::incoming(listener, tls));
                builder
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
            None => {
                let incoming = TcpListenerStream::new(listener).map(|conn| {
                    conn.inspect(|s| {
                        // Pushes are small writes that must leave at once.
                        if let Err(e) = s.set_nodelay(true) {
                            debug!(error = %e, "cannot set TCP_NODELAY on an ADS connection");
                        }
                    })
                });
                info!(addr = ?local, "ADS server listening");
                builder
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
        }
    }

    /// Refuses a stream without an accepted bearer token (when tokens are required).
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Box<Status>> {
        match &self.shared.security.tokens {
            Some(tokens) => tokens.check(request),
            None => Ok(()),
        }
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
        self.authorize(&request).map_err(|e| *e)?;
        let permit = self.admit(StreamKind::Sotw).map_err(|e| *e)?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let peer = request.remote_addr();
        debug!(stream = permit.id, ?peer, "SotW ADS stream opened");
        let stream = SotwStream::new(Outbound::new(&self.shared, permit, tx));
        tokio::spawn(drive(stream, request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.authorize(&request).map_err(|e| *e)?;
        let permit = self.admit(StreamKind::Delta).map_err(|e| *e)?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let peer = request.remote_addr();
        debug!(stream = permit.id, ?peer, "delta ADS stream opened");
        let stream = DeltaStream::new(Outbound::new(&self.shared, permit, tx));
        tokio::spawn(drive(stream, request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
