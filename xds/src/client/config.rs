//! The client's settings and the errors [`XdsClient::route`](super::XdsClient::route) returns.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rocketmesh_remoting::tls::ClientTls;

use serde::Serialize;

use crate::DEFAULT_ROUTE_CONFIG;

/// Which ADS flavour to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdsMode {
    /// Delta with on-demand subscriptions; falls back to SotW if the server does not implement delta.
    Auto,
    Delta,
    /// State of the world: wildcard CDS and the whole RouteConfiguration. Holds every topic of the
    /// catalogue in memory: the memory-hungry mode, for servers without delta.
    Sotw,
}

/// xDS client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` (or a full `http://` URI) of the ADS server.
    pub server: String,
    pub node_id: String,
    pub node_cluster: String,
    /// RDS route configuration name; VHDS names are `<route_config>/<topic>`.
    pub route_config: String,
    pub mode: XdsMode,
    /// How long `route()` waits by default.
    pub route_timeout: Duration,
    /// A topic the server says does not exist stays subscribed this long (so its creation is
    /// pushed), then is dropped; the next request asks again.
    pub missing_ttl: Duration,
    /// Most topics subscribed at once. Past it, the oldest missing topics are dropped first; if
    /// none is missing, new topics are refused.
    pub max_topics: usize,
    pub connect_timeout: Duration,
    /// After each (re)connect, removals of resources the client holds are deferred this long
    /// and dropped if the server sends the resource again meanwhile: a restarted control plane
    /// may report topics gone whose brokers have not re-registered yet. Zero = none.
    pub reconnect_grace: Duration,
    /// Largest xDS message accepted.
    pub max_message_bytes: usize,
    /// TLS to the server (CA, optional client certificate, SNI); None = plaintext.
    pub tls: Option<Arc<ClientTls>>,
    /// A file holding the bearer token sent as `authorization: Bearer <token>` on every
    /// stream; read at every (re)connect, so a rotated token is picked up.
    pub token_file: Option<PathBuf>,
}

impl ClientConfig {
    pub fn new(server: impl Into<String>) -> Self {
        ClientConfig {
            server: server.into(),
            node_id: format!("sidecar~127.0.0.1~rocketmesh-{}.local", std::process::id()),
            node_cluster: "rocketmesh".into(),
            route_config: DEFAULT_ROUTE_CONFIG.into(),
            mode: XdsMode::Auto,
            route_timeout: Duration::from_secs(5),
            missing_ttl: Duration::from_secs(30),
            max_topics: 100_000,
            connect_timeout: Duration::from_secs(2),
            reconnect_grace: Duration::from_secs(30),
            max_message_bytes: 64 << 20,
            tls: None,
            token_file: None,
        }
    }
}

/// Why `route()` gave no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("topic {0} does not exist")]
    Missing(String),
    #[error("no route for topic {topic} from the xDS server at {server} within {waited_ms} ms")]
    Timeout {
        topic: String,
        server: String,
        waited_ms: u64,
    },
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    #[error("subscription limit reached ({0} topics)")]
    Limit(usize),
    #[error("xDS client stopped")]
    Stopped,
}
