//! Process metrics: the global `metrics` recorder (Prometheus exposition, served by
//! [`crate::admin`] at `/stats/prometheus`) and the sidecar's stat names.
//!
//! # Names
//!
//! The names follow Envoy's `rocketmq_proxy` network filter so existing dashboards keep working.
//! Envoy publishes them as `rocketmq.<stat_prefix>.<stat>`; the metrics are registered under
//! exactly that dotted name and the Prometheus exporter turns every character Prometheus does not
//! allow into `_`, so with `stat_prefix: mq` the counter `request` is scraped as
//! `rocketmq_mq_request`. Counters get no `_total` suffix (Envoy's exposition has none either).
//!
//! | kind | stats | Envoy |
//! |---|---|---|
//! | counter | `request`, `request_decoding_error`, `request_decoding_success` | same |
//! | counter | `response`, `response_decoding_error`, `response_decoding_success`, `response_error`, `response_success` | same |
//! | counter | `heartbeat`, `unregister`, `get_topic_route`, `send_message_v1`, `send_message_v2`, `pop_message`, `ack_message`, `get_consumer_list` | same |
//! | counter | `maintenance_failure` | same |
//! | counter | `send_message_batch`, `pull_message` | ours: request codes Envoy does not handle |
//! | counter | `client_auth_denied`, `authz_denied{reason="produce"\|"consume"\|"group"\|"unreadable"}` | ours: requests the sidecar refused (`--verify-client-signatures`, `--authz`) |
//! | counter | `pull_converted`, `acks_from_commits`, `send_backs`, `renewals` | ours: the pull→pop translator (pulls answered by pops, acks derived from offset commits, messages sent back, invisible-time renewals) |
//! | gauge | `request_active`, `send_message_v1_active`, `send_message_v2_active`, `pop_message_active`, `get_topic_route_active` | same |
//! | gauge | `send_message_pending`, `pop_message_pending`, `get_topic_route_pending`, `total_pending` | same (Envoy never updates them; we count requests parked on on-demand xDS) |
//! | gauge | `outstanding_handles`, `downstream_connections` | ours: pop handles not yet acked, open SDK connections |
//! | histogram | `upstream_rq_time{code}` (seconds) | replaces Envoy's unused `request_time_ms` |
//!
//! # Use
//!
//! Call [`install`] once at start (later calls return the same handle), then build one [`Stats`]
//! per stat prefix. `Stats` registers every handle up front. Counters and gauges are counted in
//! the `Stats`' own atomics (one relaxed add on the data path, where a recorder handle costs a
//! generation bump too, and a compare-and-swap loop for a float gauge) and handed to the
//! recorder by [`Stats::publish`], which the admin server calls before every scrape.
//!
//! Bounded: the histogram's `code` label keeps at most [`MAX_CODE_LABELS`] distinct values, later
//! codes share `code="other"`; a background thread drains histogram samples every
//! [`UPKEEP_INTERVAL`] whether or not anyone scrapes.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// First segment of every stat name, as in Envoy.
pub const ROOT: &str = "rocketmq";

/// Histogram buckets in seconds: 100 µs to 10 s, roughly 1-2.5-5 per decade.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often histogram samples are folded into buckets when nobody scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Most distinct `code` label values per [`Stats`]; further codes are recorded as `other`.
pub const MAX_CODE_LABELS: usize = 32;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder on first call and returns its handle; later
/// calls return the same handle.
///
/// # Panics
///
/// If another `metrics` recorder was installed by other means first: the sidecar's metrics would
/// silently go nowhere, which is a wiring bug.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("LATENCY_BUCKETS is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process");
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                // Rendering drains histograms too, so scrapes still bound the memory.
                tracing::warn!("metrics upkeep thread not started: {e}");
            }
            tracing::debug!("prometheus metrics recorder installed");
            handle
        })
        .clone()
}

/// A stat prefix that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid stat prefix {0:?}: must be non-empty ASCII letters, digits and '_'")]
pub struct InvalidStatPrefix(pub String);

macro_rules! stat_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $stat:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stat's name below the prefix, as Envoy spells it.
            pub const fn stat(self) -> &'static str {
                match self {
                    $($name::$variant => $stat,)+
                }
            }
        }
    };
}

stat_enum! {
    /// Monotonic counters.
    Counter {
        /// Every frame received from a client, decodable or not.
        Request => "request",
        /// Client frames that failed to decode.
        RequestDecodingError => "request_decoding_error",
        /// Client frames decoded.
        RequestDecodingSuccess => "request_decoding_success",
        /// Every frame received from an upstream broker.
        Response => "response",
        /// Upstream frames that failed to decode.
        ResponseDecodingError => "response_decoding_error",
        /// Upstream frames decoded.
        ResponseDecodingSuccess => "response_decoding_success",
        /// Requests that ended without an upstream answer (reset, timeout, no route).
        ResponseError => "response_error",
        /// Requests answered.
        ResponseSuccess => "response_success",
        /// HEART_BEAT (34).
        Heartbeat => "heartbeat",
        /// UNREGISTER_CLIENT (35).
        Unregister => "unregister",
        /// GET_ROUTEINFO_BY_TOPIC (105).
        GetTopicRoute => "get_topic_route",
        /// SEND_MESSAGE (10).
        SendMessageV1 => "send_message_v1",
        /// SEND_MESSAGE_V2 (310).
        SendMessageV2 => "send_message_v2",
        /// SEND_BATCH_MESSAGE (320).
        SendMessageBatch => "send_message_batch",
        /// POP_MESSAGE (200050).
        PopMessage => "pop_message",
        /// ACK_MESSAGE (200051) and BATCH_ACK_MESSAGE (200151).
        AckMessage => "ack_message",
        /// PULL_MESSAGE (11).
        PullMessage => "pull_message",
        /// GET_CONSUMER_LIST_BY_GROUP (38).
        GetConsumerList => "get_consumer_list",
        /// Background upkeep (expiry, revive of stale state) that failed.
        MaintenanceFailure => "maintenance_failure",
        /// Pulls answered by the pull→pop translator.
        PullConverted => "pull_converted",
        /// Pulls relayed to the real queue with the client's offsets (broadcasting and pull
        /// consumers).
        PullDirect => "pull_direct",
        /// Acks the translator derived from consumer offset commits.
        AcksFromCommits => "acks_from_commits",
        /// Messages sent back (CONSUMER_SEND_MSG_BACK) through the translator.
        SendBacks => "send_backs",
        /// Invisible-time renewals (CHANGE_INVISIBLE_TIME) issued for held pop handles.
        Renewals => "renewals",
        /// Client connections closed because a frame did not complete in time.
        DownstreamFrameTimeout => "downstream_cx_rx_frame_timeout",
        /// Client connections closed after being idle (no frame, nothing in flight).
        DownstreamIdleTimeout => "downstream_cx_idle_timeout",
        /// Transparent mode: connections not redirected (or to our own address).
        DownstreamDirect => "downstream_cx_transparent_direct",
        /// Transparent mode: redirected connections meant for a nameserver port.
        DownstreamToNameserver => "downstream_cx_transparent_nameserver",
        /// Transparent mode: redirected connections meant for a broker the routes name.
        DownstreamToBroker => "downstream_cx_transparent_broker",
        /// Transparent mode: connections to unknown destinations relayed at L4.
        DownstreamPassthrough => "downstream_cx_transparent_passthrough",
        /// Transparent mode: connections to unknown destinations closed.
        DownstreamUnknownRefused => "downstream_cx_transparent_refused",
        /// Requests of intercepted broker connections relayed to that broker unchanged.
        TransparentBrokerRequest => "transparent_broker_request",
        /// `--verify-client-signatures`: application requests refused (bad or missing signature,
        /// or no permission under the accounts file).
        ClientAuthDenied => "client_auth_denied",
        /// `--authz`: sends to a topic the policy does not list under `produce`.
        AuthzDeniedProduce => "authz_denied",
        /// `--authz`: consumption of a topic not listed under `consume`.
        AuthzDeniedConsume => "authz_denied",
        /// `--authz`: a consumer group not listed under `groups`.
        AuthzDeniedGroup => "authz_denied",
        /// `--authz`: requests whose topics and groups could not be read.
        AuthzDeniedUnreadable => "authz_denied",
        /// Sends not delivered to their queue's broker (certainly not sent) and tried on another
        /// writable broker.
        SendFailover => "send_failover",
        /// Acks to a broker that could not be reached, kept to be sent again.
        AckRetry => "ack_retry",
        /// Owed acks given up because their handle became visible again (redelivered).
        AckExpired => "ack_expired",
        /// Outlier detection: brokers ejected after consecutive failures.
        OutlierEjections => "outlier_detection_ejections_enforced_total",
    }
}

stat_enum! {
    /// Gauges: current levels.
    Gauge {
        /// Requests in flight, all codes.
        RequestActive => "request_active",
        /// SEND_MESSAGE requests in flight.
        SendMessageV1Active => "send_message_v1_active",
        /// SEND_MESSAGE_V2 requests in flight.
        SendMessageV2Active => "send_message_v2_active",
        /// POP_MESSAGE requests in flight.
        PopMessageActive => "pop_message_active",
        /// GET_ROUTEINFO_BY_TOPIC requests in flight.
        GetTopicRouteActive => "get_topic_route_active",
        /// Sends parked until their topic's route arrives.
        SendMessagePending => "send_message_pending",
        /// Pops parked until their topic's route arrives.
        PopMessagePending => "pop_message_pending",
        /// Route lookups parked until their topic's route arrives.
        GetTopicRoutePending => "get_topic_route_pending",
        /// All parked requests.
        TotalPending => "total_pending",
        /// Pop handles handed out by the translator and not yet acked.
        OutstandingHandles => "outstanding_handles",
        /// Open client connections.
        DownstreamConnections => "downstream_connections",
        /// Outlier detection: brokers ejected now.
        OutlierEjectionsActive => "outlier_detection_ejections_active",
    }
}

impl Counter {
    /// The label that tells apart counters sharing one stat name (`authz_denied{reason}`).
    pub const fn label(self) -> Option<(&'static str, &'static str)> {
        match self {
            Counter::AuthzDeniedProduce => Some(("reason", "produce")),
            Counter::AuthzDeniedConsume => Some(("reason", "consume")),
            Counter::AuthzDeniedGroup => Some(("reason", "group")),
            Counter::AuthzDeniedUnreadable => Some(("reason", "unreadable")),
            _ => None,
        }
    }
}

/// Name of the upstream latency histogram below the prefix.
pub const UPSTREAM_RQ_TIME: &str = "upstream_rq_time";

/// Label of [`UPSTREAM_RQ_TIME`] carrying the request code.
pub const CODE_LABEL: &str = "code";

/// The full dotted name of `stat` under `stat_prefix`: `rocketmq.<stat_prefix>.<stat>`.
pub fn full_name(stat_prefix: &str, stat: &str) -> String {
    format!("{ROOT}.{stat_prefix}.{stat}")
}

/// The stats of one stat prefix, with every handle registered up front.
///
/// Build it after [`install`]: handles bind to the recorder installed when they are created.
/// Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct Stats {
    inner: Arc<StatsInner>,
}

struct StatsInner {
    prefix: String,
    /// Counts so far, one per [`Counter`].
    counts: Vec<AtomicU64>,
    /// Current levels, one per [`Gauge`].
    levels: Vec<AtomicI64>,
    /// The recorder's handles and what was last handed to them (deltas are handed on, so
    /// several `Stats` of one prefix add up as the handles themselves would).
    published: Mutex<Published>,
    histogram_name: String,
    by_code: Mutex<HashMap<i32, metrics::Histogram>>,
    /// Handles of the data path's codes, looked up without the lock once registered.
    hot: [OnceLock<metrics::Histogram>; HOT_CODES.len()],
    other_code: metrics::Histogram,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl Stats {
    /// Registers (and describes) every stat under `rocketmq.<stat_prefix>.`.
    pub fn new(stat_prefix: &str) -> Result<Self, InvalidStatPrefix> {
        let valid = !stat_prefix.is_empty()
            && stat_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(InvalidStatPrefix(stat_prefix.to_owned()));
        }
        let counters = Counter::ALL
            .iter()
            .map(|c| {
                let name = full_name(stat_prefix, c.stat());
                metrics::describe_counter!(name.clone(), counter_help(*c));
                match c.label() {
                    Some((key, value)) => metrics::counter!(name, key => value),
                    None => metrics::counter!(name),
                }
            })
            .collect();
        let gauges = Gauge::ALL
            .iter()
            .map(|g| {
                let name = full_name(stat_prefix, g.stat());
                metrics::describe_gauge!(name.clone(), gauge_help(*g));
                metrics::gauge!(name)
            })
            .collect();
        let histogram_name = full_name(stat_prefix, UPSTREAM_RQ_TIME);
        metrics::describe_histogram!(
            histogram_name.clone(),
            metrics::Unit::Seconds,
            "Time from forwarding a request upstream to its response, by request code"
        );
        let other_code = metrics::histogram!(histogram_name.clone(), CODE_LABEL => "other");
        Ok(Self {
            inner: Arc::new(StatsInner {
                prefix: stat_prefix.to_owned(),
                counts: Counter::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
                levels: Gauge::ALL.iter().map(|_| AtomicI64::new(0)).collect(),
                published: Mutex::new(Published {
                    counters,
                    counts: vec![0; Counter::ALL.len()],
                    gauges,
                    levels: vec![0; Gauge::ALL.len()],
                }),
                histogram_name,
                by_code: Mutex::new(HashMap::new()),
                hot: Default::default(),
                other_code,
            }),
        })
    }

    /// The stat prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Adds one to a counter.
    pub fn inc(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Adds `n` to a counter.
    pub fn add(&self, counter: Counter, n: u64) {
        self.inner.counts[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's count so far in this `Stats`.
    pub fn count(&self, counter: Counter) -> u64 {
        self.inner.counts[counter as usize].load(Ordering::Relaxed)
    }

    /// Moves a gauge by `delta`.
    pub fn gauge_add(&self, gauge: Gauge, delta: i64) {
        self.inner.levels[gauge as usize].fetch_add(delta, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn gauge_set(&self, gauge: Gauge, level: i64) {
        self.inner.levels[gauge as usize].store(level, Ordering::Relaxed);
    }

    /// A gauge's level in this `Stats`.
    pub fn level(&self, gauge: Gauge) -> i64 {
        self.inner.levels[gauge as usize].load(Ordering::Relaxed)
    }

    /// Raises `gauge` by one until the returned guard is dropped (Envoy's `*_active` pattern).
    pub fn track(&self, gauge: Gauge) -> GaugeGuard {
        self.gauge_add(gauge, 1);
        GaugeGuard {
            stats: self.clone(),
            gauge,
        }
    }

    /// Hands the counts and levels to the recorder (what changed since the last call), so a
    /// render of the recorder shows them. Called before every scrape; cheap when nothing moved.
    pub fn publish(&self) {
        // A poisoned lock only holds handles and numbers, which stay valid.
        let mut p = self.inner.published.lock();
        let p = &mut *p;
        for (i, count) in self.inner.counts.iter().enumerate() {
            let now = count.load(Ordering::Relaxed);
            if now != p.counts[i] {
                p.counters[i].increment(now.wrapping_sub(p.counts[i]));
                p.counts[i] = now;
            }
        }
        for (i, level) in self.inner.levels.iter().enumerate() {
            let now = level.load(Ordering::Relaxed);
            if now != p.levels[i] {
                p.gauges[i].increment((now - p.levels[i]) as f64);
                p.levels[i] = now;
            }
        }
    }

    /// Records one upstream round trip of a request with `code`.
    pub fn upstream_rq_time(&self, code: i32, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        match HOT_CODES.iter().position(|&c| c == code) {
            Some(i) => self.inner.hot[i]
                .get_or_init(|| self.code_histogram(code))
                .record(secs),
            None => self.code_histogram(code).record(secs),
        }
    }

    fn code_histogram(&self, code: i32) -> metrics::Histogram {
        // A poisoned map only holds handles, which stay valid.
        let mut by_code = self.inner.by_code.lock();
        if let Some(h) = by_code.get(&code) {
            return h.clone();
        }
        if by_code.len() >= MAX_CODE_LABELS {
            return self.inner.other_code.clone();
        }
        let h =
            metrics::histogram!(self.inner.histogram_name.clone(), CODE_LABEL => code.to_string());
        by_code.insert(code, h.clone());
        h
    }
}

/// Codes of every forwarded message (sends, pull, pop, acks): their latency histograms are kept
/// where the data path finds them without a lock.
const HOT_CODES: [i32; 7] = {
    use rocketmesh_filters::codec::request_code as rc;
    [
        rc::SEND_MESSAGE,
        rc::SEND_MESSAGE_V2,
        rc::SEND_BATCH_MESSAGE,
        rc::PULL_MESSAGE,
        rc::POP_MESSAGE,
        rc::ACK_MESSAGE,
        rc::BATCH_ACK_MESSAGE,
    ]
};

/// The recorder's side of a [`Stats`]: its handles and the values they were last given.
struct Published {
    counters: Vec<metrics::Counter>,
    counts: Vec<u64>,
    gauges: Vec<metrics::Gauge>,
    levels: Vec<i64>,
}

/// Holds a gauge one higher while alive.
#[derive(Debug)]
#[must_use = "the gauge drops back as soon as the guard is dropped"]
pub struct GaugeGuard {
    stats: Stats,
    gauge: Gauge,
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.stats.gauge_add(self.gauge, -1);
    }
}

fn counter_help(c: Counter) -> &'static str {
    match c {
        Counter::Request => "Frames received from clients, decodable or not",
        Counter::RequestDecodingError => "Client frames that failed to decode",
        Counter::RequestDecodingSuccess => "Client frames decoded",
        Counter::Response => "Frames received from upstream brokers",
        Counter::ResponseDecodingError => "Upstream frames that failed to decode",
        Counter::ResponseDecodingSuccess => "Upstream frames decoded",
        Counter::ResponseError => "Requests that ended without an upstream answer",
        Counter::ResponseSuccess => "Requests answered",
        Counter::Heartbeat => "HEART_BEAT requests",
        Counter::Unregister => "UNREGISTER_CLIENT requests",
        Counter::GetTopicRoute => "GET_ROUTEINFO_BY_TOPIC requests",
        Counter::SendMessageV1 => "SEND_MESSAGE requests",
        Counter::SendMessageV2 => "SEND_MESSAGE_V2 requests",
        Counter::SendMessageBatch => "SEND_BATCH_MESSAGE requests",
        Counter::PopMessage => "POP_MESSAGE requests",
        Counter::AckMessage => "ACK_MESSAGE and BATCH_ACK_MESSAGE requests",
        Counter::PullMessage => "PULL_MESSAGE requests",
        Counter::GetConsumerList => "GET_CONSUMER_LIST_BY_GROUP requests",
        Counter::MaintenanceFailure => "Background maintenance runs that failed",
        Counter::PullConverted => "Pulls answered by the pull-to-pop translator",
        Counter::PullDirect => {
            "Pulls relayed to the real queue with the client's offsets (broadcasting, pull consumers)"
        }
        Counter::AcksFromCommits => "Acks derived from consumer offset commits",
        Counter::SendBacks => "Messages sent back through the translator",
        Counter::Renewals => "Invisible-time renewals of held pop handles",
        Counter::DownstreamFrameTimeout => {
            "Client connections closed: a frame did not complete in time"
        }
        Counter::DownstreamIdleTimeout => "Client connections closed after being idle",
        Counter::DownstreamDirect => "Transparent mode: connections not redirected",
        Counter::DownstreamToNameserver => {
            "Transparent mode: redirected connections meant for a nameserver port"
        }
        Counter::DownstreamToBroker => {
            "Transparent mode: redirected connections meant for a known broker"
        }
        Counter::DownstreamPassthrough => {
            "Transparent mode: connections to unknown destinations relayed at L4"
        }
        Counter::DownstreamUnknownRefused => {
            "Transparent mode: connections to unknown destinations closed"
        }
        Counter::TransparentBrokerRequest => {
            "Requests of intercepted broker connections relayed unchanged"
        }
        Counter::ClientAuthDenied => {
            "Application requests refused by --verify-client-signatures (NO_PERMISSION)"
        }
        Counter::AuthzDeniedProduce
        | Counter::AuthzDeniedConsume
        | Counter::AuthzDeniedGroup
        | Counter::AuthzDeniedUnreadable => {
            "Application requests refused by the --authz policy (NO_PERMISSION), by reason"
        }
        Counter::SendFailover => "Sends tried on another writable broker (first not sent)",
        Counter::AckRetry => "Acks kept for a retry (broker unreachable)",
        Counter::AckExpired => "Owed acks given up: the handle became visible again",
        Counter::OutlierEjections => "Brokers ejected by outlier detection",
    }
}

fn gauge_help(g: Gauge) -> &'static str {
    match g {
        Gauge::RequestActive => "Requests in flight",
        Gauge::SendMessageV1Active => "SEND_MESSAGE requests in flight",
        Gauge::SendMessageV2Active => "SEND_MESSAGE_V2 requests in flight",
        Gauge::PopMessageActive => "POP_MESSAGE requests in flight",
        Gauge::GetTopicRouteActive => "GET_ROUTEINFO_BY_TOPIC requests in flight",
        Gauge::SendMessagePending => "Sends waiting for their topic's route",
        Gauge::PopMessagePending => "Pops waiting for their topic's route",
        Gauge::GetTopicRoutePending => "Route lookups waiting for their topic's route",
        Gauge::TotalPending => "Requests waiting for a route",
        Gauge::OutstandingHandles => "Pop handles not yet acked",
        Gauge::DownstreamConnections => "Open client connections",
        Gauge::OutlierEjectionsActive => "Brokers ejected by outlier detection now",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_envoy_shaped() {
        assert_eq!(
            full_name("mq", Counter::Request.stat()),
            "rocketmq.mq.request"
        );
        assert_eq!(Counter::ALL.len(), 41);
        assert_eq!(Gauge::ALL.len(), 12);
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        for (i, g) in Gauge::ALL.iter().enumerate() {
            assert_eq!(*g as usize, i);
        }
    }

    #[test]
    fn prefix_is_validated() {
        assert!(Stats::new("mq_1").is_ok());
        assert!(Stats::new("").is_err());
        assert!(Stats::new("a.b").is_err());
        assert!(Stats::new("a b").is_err());
    }

    #[test]
    fn buckets_are_increasing() {
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
