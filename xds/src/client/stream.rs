//! The ADS task: connects, runs one delta or SotW stream at a time, reconnects with jittered
//! backoff (10 ms -> 15 s, reset after a stream that lived), and keeps taking subscriptions while
//! away. Each event (response, new topics, sweep) is handled synchronously under the state's
//! lock, then its requests are sent: no lock is held across an `await`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint as GrpcEndpoint};
use tracing::{debug, info, warn};
use xds_api::pb::envoy::config::core::v3 as pb_core;
use xds_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

use super::config::{RouteError, XdsMode};
use super::counters::Counters;
use super::dump::NackInfo;
use super::shared::Inner;
use super::state::{State, SubscriptionChange, Want};
use super::{delta, sotw};
use crate::cache::TopicState;
use crate::resources::{
    CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE, ROUTE_CONFIGURATION_TYPE, VIRTUAL_HOST_TYPE,
};
use crate::vhds_name;

const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Why a stream ended.
enum StreamEnd {
    Stopped,
    Error(String),
    Unimplemented,
}

/// The task's own view: the flavour in use and the snapshot generation.
struct Task {
    inner: Arc<Inner>,
    mode: XdsMode,
    generation: u64,
}

/// The ADS task; ends on `inner.stop` or when every command sender is gone.
pub(crate) async fn run(inner: Arc<Inner>, mut cmds: mpsc::Receiver<String>) {
    let mut task = Task {
        mode: if inner.cfg.mode == XdsMode::Sotw {
            XdsMode::Sotw
        } else {
            XdsMode::Delta
        },
        inner,
        generation: 0,
    };
    let mut backoff = INITIAL_BACKOFF;
    let stop = task.inner.clone();
    let stopped = stop.stop.notified();
    tokio::pin!(stopped);
    loop {
        let started = Instant::now();
        let end = tokio::select! {
            _ = &mut stopped => StreamEnd::Stopped,
            end = task.connect_and_run(&mut cmds) => end,
        };
        task.set_connected(false, None);
        match end {
            StreamEnd::Stopped => break,
            StreamEnd::Unimplemented
                if task.inner.cfg.mode == XdsMode::Auto && task.mode == XdsMode::Delta =>
            {
                warn!(server = %task.inner.cfg.server, "server does not implement delta xDS; falling back to SotW (holds the full catalogue)");
                task.mode = XdsMode::Sotw;
                continue;
            }
            StreamEnd::Unimplemented => {
                task.set_error("server does not implement this ADS stream".into())
            }
            StreamEnd::Error(e) => task.set_error(e),
        }
        task.inner.counters.disconnected();
        // A stream that lived a while resets the backoff.
        if started.elapsed() > Duration::from_secs(5) {
            backoff = INITIAL_BACKOFF;
        }
        let sleep_for = backoff.mul_f64(0.5 + fastrand::f64());
        backoff = (backoff * 2).min(MAX_BACKOFF);
        debug!(?sleep_for, "xDS reconnect backoff");
        let sleep = tokio::time::sleep(sleep_for);
        tokio::pin!(sleep);
        // Keep taking subscriptions while away; they go out on reconnect.
        loop {
            tokio::select! {
                _ = &mut stopped => return task.inner.waiters.fail_all(RouteError::Stopped),
                _ = &mut sleep => break,
                cmd = cmds.recv() => match cmd {
                    Some(topic) => {
                        task.on_topics(vec![topic]);
                    }
                    None => return task.inner.waiters.fail_all(RouteError::Stopped),
                },
            }
        }
        task.on_sweep();
    }
    task.inner.waiters.fail_all(RouteError::Stopped);
}

/// Completes when the reconnect grace ends with removals deferred; never while there is none.
async fn grace_ends(inner: &Inner) {
    // One look under the lock: nothing deferred, or deferred until a deadline (None: passed).
    let deferred = {
        let st = inner.state.lock();
        (!st.deferred.is_empty()).then(|| st.grace_deadline())
    };
    match deferred {
        None => std::future::pending().await,
        Some(Some(t)) => tokio::time::sleep_until(t.into()).await,
        // Deferred removals whose grace has passed are applied by the next loop turn.
        Some(None) => {}
    }
}

fn uri(server: &str) -> String {
    if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    }
}

impl Task {
    fn rc(&self) -> &str {
        &self.inner.cfg.route_config
    }

    fn set_connected(&self, up: bool, mode: Option<XdsMode>) {
        let mut s = self.inner.status.lock();
        s.connected = up;
        if up {
            s.last_error = None;
            s.mode = mode;
        }
        drop(s);
        self.inner.counters.set_connected(up);
        self.inner.connected.send_replace(up);
    }

    fn set_error(&self, e: String) {
        warn!(server = %self.inner.cfg.server, error = %e, "xDS stream ended; serving the last good config");
        self.inner.status.lock().last_error = Some(e);
    }

    fn node(&self) -> pb_core::Node {
        pb_core::Node {
            id: self.inner.cfg.node_id.clone(),
            cluster: self.inner.cfg.node_cluster.clone(),
            user_agent_name: "rocketmesh".into(),
            ..Default::default()
        }
    }

    async fn connect_and_run(&mut self, cmds: &mut mpsc::Receiver<String>) -> StreamEnd {
        let endpoint = match GrpcEndpoint::from_shared(uri(&self.inner.cfg.server)) {
            Ok(e) => e
                .connect_timeout(self.inner.cfg.connect_timeout)
                .tcp_nodelay(true),
            Err(e) => return StreamEnd::Error(format!("bad xDS server address: {e}")),
        };
        let connected = match &self.inner.cfg.tls {
            Some(tls) => {
                let target = self.inner.cfg.server.clone();
                let target = match target.split_once("://") {
                    Some((_, rest)) => rest.trim_end_matches('/').to_owned(),
                    None => target,
                };
                endpoint
                    .connect_with_connector(crate::transport::TlsConnector {
                        tls: tls.clone(),
                        target,
                    })
                    .await
            }
            None => endpoint.connect().await,
        };
        let channel = match connected {
            Ok(c) => c,
            Err(e) => return StreamEnd::Error(format!("connect {}: {e}", self.inner.cfg.server)),
        };
        let client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.inner.cfg.max_message_bytes)
            .max_encoding_message_size(self.inner.cfg.max_message_bytes);
        match self.mode {
            XdsMode::Sotw => self.run_sotw(client, cmds).await,
            _ => self.run_delta(client, cmds).await,
        }
    }

    // ----- events, handled under the state's lock -----------------------------------------

    /// How `topic` stands now, if it is decided.
    fn resolve_state(&self, st: &State, topic: &str) -> Option<Result<(), RouteError>> {
        match self.inner.table.load().get(topic) {
            Some(TopicState::Ready(_)) => Some(Ok(())),
            Some(TopicState::Missing { .. }) => Some(Err(RouteError::Missing(topic.to_owned()))),
            None if self.mode == XdsMode::Sotw && st.sotw_complete() => {
                Some(Err(RouteError::Missing(topic.to_owned())))
            }
            None => None,
        }
    }

    /// Topics asked for by the data path. Returns the VHDS names newly to subscribe.
    fn on_topics(&mut self, topics: Vec<String>) -> Vec<String> {
        let inner = self.inner.clone();
        let mut st = inner.state.lock();
        let mut new = Vec::new();
        for topic in topics {
            // Already resolved (e.g. the caller raced a swap): wake it now.
            if let Some(outcome) = self.resolve_state(&st, &topic) {
                inner.waiters.notify(&topic, outcome);
            }
            match st.want(topic.clone(), inner.cfg.max_topics, self.rc()) {
                Want::Known => {}
                Want::New => new.push(vhds_name(self.rc(), &topic)),
                Want::Limit => inner
                    .waiters
                    .notify(&topic, Err(RouteError::Limit(inner.cfg.max_topics))),
            }
        }
        inner.counters.set_topics(st.subs.topics.len());
        new
    }

    /// Drops topics missing past the TTL (delta only). Returns the VHDS names to unsubscribe.
    fn on_sweep(&mut self) -> Vec<String> {
        if self.mode == XdsMode::Sotw {
            return Vec::new();
        }
        let inner = self.inner.clone();
        let mut st = inner.state.lock();
        let gone = st.expire_missing(inner.cfg.missing_ttl, self.rc());
        if !gone.is_empty() {
            inner.counters.set_topics(st.subs.topics.len());
            self.publish(&mut st);
        }
        gone
    }

    /// The reconnect grace ended: applies the removals it deferred. Returns the subscription
    /// changes that follow (delta; SotW sends none).
    fn on_grace_end(&mut self) -> Vec<DeltaDiscoveryRequest> {
        let inner = self.inner.clone();
        let mut st = inner.state.lock();
        let applied = delta::end_grace(&mut st, self.rc());
        if applied == 0 {
            return Vec::new();
        }
        info!(
            removals = applied,
            "reconnect grace over: applying the removals it deferred"
        );
        let changes = if self.mode == XdsMode::Sotw {
            Vec::new()
        } else {
            st.sync_dependencies(self.rc())
        };
        self.publish(&mut st);
        changes.into_iter().map(delta::subscribe).collect()
    }

    /// Builds and swaps the next snapshot, then wakes waiters whose topic resolved.
    fn publish(&mut self, st: &mut State) {
        self.generation += 1;
        let previous = self.inner.table.load_full();
        let table = st.next_table(
            &self.inner.cfg.route_config,
            self.mode == XdsMode::Sotw,
            self.generation,
            &previous,
        );
        self.inner.table.store(Arc::new(table));
        for topic in self.inner.waiters.pending() {
            if let Some(outcome) = self.resolve_state(st, &topic) {
                self.inner.waiters.notify(&topic, outcome);
            }
        }
    }

    fn record(&self, type_url: &str, nonce: &str, errors: &[String]) {
        self.inner.counters.answered(type_url, !errors.is_empty());
        if errors.is_empty() {
            return;
        }
        let message = errors.join("; ");
        warn!(
            type_url,
            nonce,
            error = %message,
            "rejecting xDS update; keeping the last good resources"
        );
        self.inner.status.lock().last_nack = Some(NackInfo {
            type_url: type_url.to_owned(),
            nonce: nonce.to_owned(),
            message,
            at: SystemTime::now(),
        });
    }

    /// Applies one delta response. Returns the ACK/NACK, then any subscription changes.
    fn on_delta(&mut self, resp: DeltaDiscoveryResponse) -> Vec<DeltaDiscoveryRequest> {
        let inner = self.inner.clone();
        let mut st = inner.state.lock();
        let errors = delta::apply(&mut st, &resp, self.rc());
        let changes = st.sync_dependencies(self.rc());
        self.publish(&mut st);
        drop(st);
        self.record(&resp.type_url, &resp.nonce, &errors);
        let mut out = vec![delta::ack(&resp, &errors)];
        for change in changes {
            if change.type_url == CLUSTER_TYPE {
                Counters::add(
                    &inner.counters.cluster_subscribes,
                    change.subscribe.len() as u64,
                );
            }
            out.push(delta::subscribe(change));
        }
        out
    }

    /// Applies one SotW response. Returns the ACK/NACK, then an EDS request if the clusters
    /// now need other EDS resources.
    fn on_sotw(&mut self, resp: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        let inner = self.inner.clone();
        let mut st = inner.state.lock();
        let rc = inner.cfg.route_config.as_str();
        let applied = sotw::apply(&mut st, &resp, rc);
        let type_url = resp.type_url.as_str();
        let reply = if applied.errors.is_empty() {
            self.publish(&mut st);
            sotw::request(&st, rc, type_url, &resp.version_info, &resp.nonce, None)
        } else {
            let last = sotw::last_version(&st, type_url).to_owned();
            let message = applied.errors.join("; ");
            sotw::request(&st, rc, type_url, &last, &resp.nonce, Some(message))
        };
        let mut out = vec![reply];
        if applied.eds_changed {
            let version = sotw::last_version(&st, LOAD_ASSIGNMENT_TYPE);
            out.push(sotw::request(
                &st,
                rc,
                LOAD_ASSIGNMENT_TYPE,
                version,
                "",
                None,
            ));
        }
        drop(st);
        self.record(type_url, &resp.nonce, &applied.errors);
        out
    }

    // ----- delta stream --------------------------------------------------------------------

    async fn run_delta(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        cmds: &mut mpsc::Receiver<String>,
    ) -> StreamEnd {
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
        let initial: Vec<DeltaDiscoveryRequest> = {
            let st = self.inner.state.lock();
            [VIRTUAL_HOST_TYPE, CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE]
                .into_iter()
                .filter_map(|t| delta::initial(&st, t, self.rc()))
                .collect()
        };
        let mut first = true;
        // Queue the initial requests before opening the stream (the channel has room).
        for mut req in initial {
            if first {
                req.node = Some(self.node());
                first = false;
            }
            let _ = tx.try_send(req);
        }
        let request = match crate::transport::bearer(
            ReceiverStream::new(rx),
            self.inner.cfg.token_file.as_deref(),
        ) {
            Ok(r) => r,
            Err(e) => return StreamEnd::Error(e),
        };
        let response = match client.delta_aggregated_resources(request).await {
            Ok(r) => r,
            Err(s) if s.code() == tonic::Code::Unimplemented => return StreamEnd::Unimplemented,
            Err(s) => return StreamEnd::Error(format!("delta ADS: {s}")),
        };
        let mut stream = response.into_inner();
        Counters::add(&self.inner.counters.connects, 1);
        self.inner
            .state
            .lock()
            .begin_grace(self.inner.cfg.reconnect_grace);
        self.set_connected(true, Some(XdsMode::Delta));
        info!(server = %self.inner.cfg.server, "delta ADS stream up");
        let mut sweep =
            tokio::time::interval(self.inner.cfg.missing_ttl.max(Duration::from_millis(100)) / 2);
        sweep.tick().await;
        let node = self.node();
        let inner = self.inner.clone();
        let send = |mut req: DeltaDiscoveryRequest, first: &mut bool| {
            if *first {
                req.node = Some(node.clone());
                *first = false;
            }
            Counters::add(&inner.counters.requests_sent, 1);
            req
        };
        loop {
            let out: Vec<DeltaDiscoveryRequest> = tokio::select! {
                msg = stream.next() => {
                    let resp = match msg {
                        None => return StreamEnd::Error("server closed the stream".into()),
                        Some(Err(s)) if s.code() == tonic::Code::Unimplemented => return StreamEnd::Unimplemented,
                        Some(Err(s)) => return StreamEnd::Error(format!("delta ADS: {s}")),
                        Some(Ok(r)) => r,
                    };
                    let n = resp.resources.len() + resp.removed_resources.len();
                    self.inner.counters.response(&resp.type_url, n);
                    self.on_delta(resp)
                }
                cmd = cmds.recv() => {
                    let Some(topic) = cmd else { return StreamEnd::Stopped };
                    let mut topics = vec![topic];
                    // Batch whatever else is queued into the same request.
                    while let Ok(t) = cmds.try_recv() {
                        topics.push(t);
                    }
                    let names = self.on_topics(topics);
                    if names.is_empty() {
                        Vec::new()
                    } else {
                        Counters::add(&self.inner.counters.vhost_subscribes, names.len() as u64);
                        debug!(?names, "subscribing (VHDS)");
                        vec![delta::subscribe(SubscriptionChange {
                            type_url: VIRTUAL_HOST_TYPE,
                            subscribe: names,
                            unsubscribe: Vec::new(),
                        })]
                    }
                }
                () = grace_ends(&inner) => self.on_grace_end(),
                _ = sweep.tick() => {
                    let gone = self.on_sweep();
                    if gone.is_empty() {
                        Vec::new()
                    } else {
                        debug!(?gone, "unsubscribing missing topics");
                        vec![delta::subscribe(SubscriptionChange {
                            type_url: VIRTUAL_HOST_TYPE,
                            subscribe: Vec::new(),
                            unsubscribe: gone,
                        })]
                    }
                }
            };
            for req in out {
                if tx.send(send(req, &mut first)).await.is_err() {
                    return StreamEnd::Error("request stream closed".into());
                }
            }
        }
    }

    // ----- SotW stream ---------------------------------------------------------------------

    async fn run_sotw(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        cmds: &mut mpsc::Receiver<String>,
    ) -> StreamEnd {
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
        {
            let st = self.inner.state.lock();
            let rc = self.rc();
            // With the versions last accepted (empty on the first stream), as Envoy does: a
            // server can tell a reconnecting client, which holds state, from a fresh one.
            let request = |type_url| {
                let version = sotw::last_version(&st, type_url);
                sotw::request(&st, rc, type_url, version, "", None)
            };
            let mut first = request(CLUSTER_TYPE);
            first.node = Some(self.node());
            let _ = tx.try_send(first);
            let _ = tx.try_send(request(ROUTE_CONFIGURATION_TYPE));
            if !st.subs.load_assignments.is_empty() {
                let _ = tx.try_send(request(LOAD_ASSIGNMENT_TYPE));
            }
        }
        let request = match crate::transport::bearer(
            ReceiverStream::new(rx),
            self.inner.cfg.token_file.as_deref(),
        ) {
            Ok(r) => r,
            Err(e) => return StreamEnd::Error(e),
        };
        let response = match client.stream_aggregated_resources(request).await {
            Ok(r) => r,
            Err(s) => return StreamEnd::Error(format!("SotW ADS: {s}")),
        };
        let mut stream = response.into_inner();
        Counters::add(&self.inner.counters.connects, 1);
        self.inner
            .state
            .lock()
            .begin_grace(self.inner.cfg.reconnect_grace);
        self.set_connected(true, Some(XdsMode::Sotw));
        info!(server = %self.inner.cfg.server, "SotW ADS stream up (wildcard CDS + full RouteConfiguration)");
        let inner = self.inner.clone();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let resp = match msg {
                        None => return StreamEnd::Error("server closed the stream".into()),
                        Some(Err(s)) => return StreamEnd::Error(format!("SotW ADS: {s}")),
                        Some(Ok(r)) => r,
                    };
                    self.inner.counters.response(&resp.type_url, resp.resources.len());
                    for req in self.on_sotw(resp) {
                        Counters::add(&self.inner.counters.requests_sent, 1);
                        if tx.send(req).await.is_err() {
                            return StreamEnd::Error("request stream closed".into());
                        }
                    }
                }
                cmd = cmds.recv() => {
                    let Some(topic) = cmd else { return StreamEnd::Stopped };
                    // Everything is already subscribed; just note the interest (and answer it if known).
                    self.on_topics(vec![topic]);
                }
                () = grace_ends(&inner) => {
                    // Subscriptions follow the responses in SotW: nothing to request.
                    self.on_grace_end();
                }
            }
        }
    }
}
