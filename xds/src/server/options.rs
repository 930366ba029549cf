//! The server's limits and what it reports.

use std::sync::Arc;

use rocketmesh_remoting::tls::ServerTls;
use serde::Serialize;

use crate::transport::TokenSet;

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

/// How the ADS listener is secured: TLS (a `rocketmesh_remoting::tls` policy: mode, client
/// certificates, allowed identities; ALPN `h2` is added) and accepted bearer tokens. Default:
/// plaintext, no token.
#[derive(Debug, Clone, Default)]
pub struct AdsSecurity {
    pub tls: Option<Arc<ServerTls>>,
    pub tokens: Option<Arc<TokenSet>>,
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
