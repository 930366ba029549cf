//! The broker's metrics, through the `metrics` facade.
//!
//! This crate only records; the process that runs the broker installs the recorder (the
//! `rocketmesh` binary's Prometheus recorder) *before* [`crate::start`], because handles bind to
//! the recorder installed when they are created. Without a recorder every handle is a no-op.
//!
//! Every series carries a `broker` label (the broker name): the demo runs several brokers in
//! one process, under one recorder.
//!
//! | kind | name | what |
//! |---|---|---|
//! | counter | `rocketmesh_broker_messages_appended_total` | messages written to the commit log |
//! | counter | `rocketmesh_broker_appended_bytes_total` | bytes of those records |
//! | histogram | `rocketmesh_broker_flush_seconds` | duration of flush rounds that synced something |
//! | gauge | `rocketmesh_broker_store_size_bytes` | commit log end offset (bytes written) |
//! | counter | `rocketmesh_broker_pull_requests_total` | PULL_MESSAGE requests answered |
//! | counter | `rocketmesh_broker_pop_requests_total` | POP_MESSAGE requests answered |
//! | counter | `rocketmesh_broker_popped_messages_total` | messages handed out by pops |
//! | counter | `rocketmesh_broker_acks_total` | acked pop handles (ACK and BATCH_ACK entries) |
//! | counter | `rocketmesh_broker_revived_total` | expired pop handles re-put into the retry topic |
//! | counter | `rocketmesh_broker_dlq_total` | messages moved to a DLQ (revive or send-back) |
//! | counter | `rocketmesh_broker_retries_total` | CONSUMER_SEND_MSG_BACK requests taken for retry |
//! | counter | `rocketmesh_broker_offset_commits_total` | consumer offset commits stored |
//! | counter | `rocketmesh_broker_acl_denied_total` | requests refused by `--acl` (NO_PERMISSION) |

use metrics::{Counter, Gauge, Histogram, Unit};

/// Name prefix of every broker metric.
pub const PREFIX: &str = "rocketmesh_broker";
/// Label naming the broker.
pub const BROKER_LABEL: &str = "broker";

/// The store's own handles (flush latency, size); no-ops by default.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Duration of a flush round that synced something.
    pub flush_seconds: Histogram,
    /// Commit log end offset.
    pub size_bytes: Gauge,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            flush_seconds: Histogram::noop(),
            size_bytes: Gauge::noop(),
        }
    }
}

/// Every handle of one broker, registered up front.
#[derive(Debug, Clone)]
pub struct BrokerMetrics {
    pub(crate) messages_appended: Counter,
    pub(crate) appended_bytes: Counter,
    pub(crate) pulls: Counter,
    pub(crate) pops: Counter,
    pub(crate) popped: Counter,
    pub(crate) acks: Counter,
    pub(crate) revived: Counter,
    pub(crate) dlq: Counter,
    pub(crate) retries: Counter,
    pub(crate) offset_commits: Counter,
    pub(crate) acl_denied: Counter,
    pub(crate) store: StoreMetrics,
}

fn name(stat: &str) -> String {
    format!("{PREFIX}_{stat}")
}

impl BrokerMetrics {
    /// Registers (and describes) every metric of broker `broker` with the installed recorder.
    pub fn register(broker: &str) -> Self {
        let counter = |stat: &str, help: &'static str| {
            let n = name(stat);
            metrics::describe_counter!(n.clone(), help);
            metrics::counter!(n, BROKER_LABEL => broker.to_owned())
        };
        let flush = name("flush_seconds");
        metrics::describe_histogram!(
            flush.clone(),
            Unit::Seconds,
            "Duration of store flush rounds that synced something"
        );
        let size = name("store_size_bytes");
        metrics::describe_gauge!(
            size.clone(),
            Unit::Bytes,
            "Commit log end offset: bytes written"
        );
        Self {
            messages_appended: counter(
                "messages_appended_total",
                "Messages written to the commit log",
            ),
            appended_bytes: counter(
                "appended_bytes_total",
                "Bytes of records written to the commit log",
            ),
            pulls: counter("pull_requests_total", "PULL_MESSAGE requests answered"),
            pops: counter("pop_requests_total", "POP_MESSAGE requests answered"),
            popped: counter("popped_messages_total", "Messages handed out by pops"),
            acks: counter(
                "acks_total",
                "Pop handles acked (ACK and BATCH_ACK entries)",
            ),
            revived: counter(
                "revived_total",
                "Expired pop handles re-put into the retry topic",
            ),
            dlq: counter("dlq_total", "Messages moved to a dead letter queue"),
            retries: counter(
                "retries_total",
                "CONSUMER_SEND_MSG_BACK requests taken for redelivery",
            ),
            offset_commits: counter("offset_commits_total", "Consumer offset commits stored"),
            acl_denied: counter(
                "acl_denied_total",
                "Requests refused by the ACL file (NO_PERMISSION)",
            ),
            store: StoreMetrics {
                flush_seconds: metrics::histogram!(flush, BROKER_LABEL => broker.to_owned()),
                size_bytes: metrics::gauge!(size, BROKER_LABEL => broker.to_owned()),
            },
        }
    }
}
