//! Per-stream plumbing shared by the delta and SotW streams: admission and the stream permit,
//! the bounded outbound queue with nonces and ACK/NACK bookkeeping, the [`AdsStream`] loop
//! ([`drive`]), and the resource types with their catalog lookup.

use parking_lot::Mutex;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use tracing::{debug, warn};
use xds_api::pb::google::protobuf::Any;
use xds_api::pb::google::rpc;

use super::options::{NackRecord, ServerOptions};
use crate::catalog::{Catalog, Lookup};
use crate::resources::{
    cluster_to_proto, load_assignment_to_proto, to_any, topic_of_vhds_name, vhost_to_proto,
    CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE, ROUTE_CONFIGURATION_TYPE, VIRTUAL_HOST_TYPE,
};

/// Responses queued per stream before the stream task waits for the client to read.
pub(super) const STREAM_QUEUE: usize = 16;
/// NACK messages longer than this are cut in logs and stats.
pub(super) const MAX_ERROR_CHARS: usize = 1024;
/// HTTP/2 keepalive pings on idle connections, so dead peers free their streams.
pub(super) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub(super) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What every stream of one server shares: the catalog, limits, counters, shutdown.
pub(super) struct Shared {
    pub(super) catalog: Arc<Catalog>,
    pub(super) opts: ServerOptions,
    pub(super) open_streams: AtomicUsize,
    pub(super) delta_streams: AtomicUsize,
    pub(super) sotw_streams: AtomicUsize,
    pub(super) streams_accepted: AtomicU64,
    pub(super) streams_rejected: AtomicU64,
    pub(super) responses_sent: AtomicU64,
    pub(super) acks: AtomicU64,
    pub(super) nacks: AtomicU64,
    pub(super) subscriptions: AtomicU64,
    pub(super) last_nack: Mutex<Option<NackRecord>>,
    pub(super) next_stream_id: AtomicU64,
    /// Set when `serve`'s shutdown future completes: every stream task ends.
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) security: super::AdsSecurity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamKind {
    Delta,
    Sotw,
}

impl StreamKind {
    pub(super) fn counter(self, s: &Shared) -> &AtomicUsize {
        match self {
            StreamKind::Delta => &s.delta_streams,
            StreamKind::Sotw => &s.sotw_streams,
        }
    }
}

/// One admitted stream: gives its slot and its subscriptions back when dropped.
pub(super) struct StreamPermit {
    pub(super) shared: Arc<Shared>,
    pub(super) kind: StreamKind,
    pub(super) id: u64,
    pub(super) subscriptions: u64,
}

impl StreamPermit {
    pub(super) fn set_subscriptions(&mut self, n: u64) {
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
pub(super) struct Stop;

/// A stream's way out: bounded queue, nonces, node id, ACK/NACK bookkeeping.
pub(super) struct Outbound<R> {
    pub(super) shared: Arc<Shared>,
    pub(super) permit: StreamPermit,
    pub(super) tx: mpsc::Sender<Result<R, Status>>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) node: String,
    pub(super) seq: u64,
}

impl<R> Outbound<R> {
    pub(super) fn new(
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

    pub(super) fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    pub(super) fn opts(&self) -> &ServerOptions {
        &self.shared.opts
    }

    pub(super) fn id(&self) -> u64 {
        self.permit.id
    }

    pub(super) fn next_nonce(&mut self) -> String {
        self.seq += 1;
        format!("{}-{}", self.permit.id, self.seq)
    }

    pub(super) fn learn_node(&mut self, node: Option<&xds_api::pb::envoy::config::core::v3::Node>) {
        if self.node.is_empty() {
            if let Some(n) = node.filter(|n| !n.id.is_empty()) {
                self.node = truncate(&n.id, MAX_ERROR_CHARS);
                debug!(stream = self.permit.id, node = %self.node, "ADS client identified");
            }
        }
    }

    /// Queues one response, waiting while the queue is full.
    pub(super) async fn send(&mut self, msg: R) -> Result<(), Stop> {
        tokio::select! {
            r = self.tx.send(Ok(msg)) => r.map_err(|_| Stop)?,
            _ = stopped(&mut self.shutdown) => return Err(Stop),
        }
        self.shared.responses_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Ends the stream with `status`, a client error worth a warning.
    pub(super) async fn fail(&mut self, status: Status) -> Stop {
        warn!(stream = self.permit.id, node = %self.node, error = %status.message(), "failing ADS stream");
        self.end_with(status).await
    }

    /// Ends the stream with `status`.
    pub(super) async fn end_with(&mut self, status: Status) -> Stop {
        tokio::select! {
            _ = self.tx.send(Err(status)) => {}
            _ = stopped(&mut self.shutdown) => {}
        }
        Stop
    }

    pub(super) fn record_reply(&self, type_url: &str, nonce: &str, error: Option<&rpc::Status>) {
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

    pub(super) fn too_many_names(&self, n: usize) -> Status {
        Status::invalid_argument(format!(
            "{n} resource names on one ADS stream exceed max_names_per_stream = {}",
            self.opts().max_names_per_stream
        ))
    }
}

/// What differs between the delta and the SotW stream; [`drive`] is the loop they share.
pub(super) trait AdsStream: Send + Sized + 'static {
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
pub(super) async fn drive<S: AdsStream>(mut stream: S, mut inbound: Streaming<S::Req>)
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
pub(super) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the server is gone: stop too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

pub(super) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

pub(super) fn map_lookup<T, U>(l: Lookup<T>, f: impl FnOnce(T) -> U) -> Lookup<U> {
    match l {
        Lookup::Found(t) => Lookup::Found(f(t)),
        Lookup::Absent => Lookup::Absent,
        Lookup::Pending => Lookup::Pending,
    }
}

/// The resource types this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    VirtualHost,
    Cluster,
    LoadAssignment,
    RouteConfiguration,
}

impl Kind {
    pub(super) fn of(type_url: &str) -> Option<Kind> {
        match type_url {
            VIRTUAL_HOST_TYPE => Some(Kind::VirtualHost),
            CLUSTER_TYPE => Some(Kind::Cluster),
            LOAD_ASSIGNMENT_TYPE => Some(Kind::LoadAssignment),
            ROUTE_CONFIGURATION_TYPE => Some(Kind::RouteConfiguration),
            _ => None,
        }
    }

    pub(super) fn url(self) -> &'static str {
        match self {
            Kind::VirtualHost => VIRTUAL_HOST_TYPE,
            Kind::Cluster => CLUSTER_TYPE,
            Kind::LoadAssignment => LOAD_ASSIGNMENT_TYPE,
            Kind::RouteConfiguration => ROUTE_CONFIGURATION_TYPE,
        }
    }
}

/// A named resource of one of the delta types, with its version, ready to send.
pub(super) fn lookup_named(catalog: &Catalog, kind: Kind, name: &str) -> Lookup<(String, Any)> {
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
