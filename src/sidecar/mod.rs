//! `rocketmesh sidecar`: the product. An unmodified SDK points its nameserver address at the
//! sidecar's listener and everything it does goes through here.
//!
//! Components, each owning its state; dependencies point down only:
//!
//! ```text
//! process      start, shutdown (drain), listeners, admin + xDS on their own runtime
//!  ├ background    client expiry, heartbeats to brokers, broker -> client relay
//!  ├ admin_view    /ready, /config_dump, /clusters
//!  └ dispatch      SidecarCore: the Remoting handler; only dispatches
//!     ├ access     --verify-client-signatures, --authz: checked before anything else
//!     ├ send       both send paths, from one SendPlan
//!     ├ pop        pop / ack / change invisible / batch ack
//!     ├ txn        Transactions: half message -> broker
//!     ├ assignment QUERY_ASSIGNMENT: the virtual read queues, POP
//!     ├ clients    heartbeat / unregister / consumer list over groups::Groups
//!     └ pull/      PullBridge: Pull -> Pop (acks, prefetch, renewals), owns its tasks
//!        └ context     Context: settings, Router, Upstreams, Stats (shared, read-only)
//!           ├ router   routes, queue views, choice of broker/queue (SendPlan, PopPlan)
//!           ├ upstream pools per broker endpoint
//!           └ error    SidecarError -> response code + remark
//! ```

pub mod access;
pub mod admin_view;
pub mod assignment;
pub mod background;
pub mod clients;
pub mod context;
pub mod dispatch;
pub mod error;
pub mod groups;
pub mod locks;
pub mod pop;
pub mod process;
pub mod pull;
pub mod router;
pub mod send;
pub mod tools;
mod transparent;
pub mod txn;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rocketmesh_filters::consume::TranslatorConfig;
use rocketmesh_xds::client::XdsMode;

use self::transparent::TransparentConfig;
use self::upstream::UpstreamConfig;
use crate::remoting::tls::{ClientTls, ServerTls};
use crate::remoting::ServerConfig;

pub use self::dispatch::SidecarCore;
pub use self::error::SidecarError;
pub use self::process::{start, Sidecar};

/// Sidecar settings.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The SDK-facing listener; its bound address is advertised in route answers unless
    /// `advertise` says otherwise.
    pub listen: SocketAddr,
    /// The address route answers name (`HOST:PORT`); None = the bound listen address, or
    /// `pod_ip` with the bound port when the listen address is unspecified
    /// ([`crate::remoting::advertise::advertised`]).
    pub advertise: Option<String>,
    /// The pod's IP (the binary reads `POD_IP`).
    pub pod_ip: Option<String>,
    /// Also accept on the listen port minus 2 (4.x clients with `vipChannelEnabled` connect
    /// there). Not opened for port 0.
    pub vip_channel: bool,
    /// More listeners (e.g. a broker port for iptables-redirected traffic).
    pub extra_listen: Vec<SocketAddr>,
    /// Admin server; None = no admin server.
    pub admin: Option<SocketAddr>,
    /// ADS server (`host:port`). Ignored when `bootstrap` is set.
    pub xds: Option<String>,
    pub xds_mode: XdsMode,
    /// Static clusters and routes (YAML, see `rocketmesh_xds::static_config`): no control plane.
    pub bootstrap: Option<PathBuf>,
    /// RDS route configuration name (VHDS names `<route_config>/<topic>`).
    pub route_config: String,
    /// The broker name route answers present (its queues map onto the real brokers').
    pub virtual_broker: String,
    /// Metrics prefix: `rocketmq.<stat_prefix>.*`.
    pub stat_prefix: String,
    pub upstream: UpstreamConfig,
    /// Upstream request timeout (a pop adds its poll time).
    pub request_timeout: Duration,
    /// Longest a request waits for its topic's route from xDS.
    pub route_timeout: Duration,
    /// After each xDS (re)connect, a removal of a route the sidecar holds is deferred this long
    /// (last good route kept; cancelled if the route comes back), see
    /// `rocketmesh_xds::client::ClientConfig::reconnect_grace`.
    pub xds_reconnect_grace: Duration,
    /// Clients silent this long leave their groups.
    pub group_expiry: Duration,
    /// How often the clients' groups are announced to the brokers in use.
    pub broker_heartbeat: Duration,
    /// Longest graceful drain on shutdown (requests in flight, owed acks), then force-close.
    pub drain: Duration,
    /// Downstream limits (connections, requests in flight per connection, frame sizes).
    pub server: ServerConfig,
    /// Pull -> Pop translator settings (invisible time, renewal, max hold, table limits).
    pub translator: TranslatorConfig,
    /// Transparent mode: classify iptables-redirected connections by original destination.
    pub transparent: TransparentConfig,
    /// Signing upstream requests, checking the applications' signatures, topic authorization.
    pub access: access::AccessConfig,
    /// TLS of the SDK-facing listeners; None = plaintext.
    pub tls: Option<Arc<ServerTls>>,
    /// TLS of the ADS connection; None = plaintext.
    pub xds_tls: Option<Arc<ClientTls>>,
    /// Bearer token file for the ADS connection.
    pub xds_token: Option<PathBuf>,
}

impl SidecarConfig {
    pub fn new(listen: SocketAddr) -> Self {
        SidecarConfig {
            listen,
            advertise: None,
            pod_ip: None,
            vip_channel: true,
            extra_listen: Vec::new(),
            admin: None,
            xds: None,
            xds_mode: XdsMode::Auto,
            bootstrap: None,
            route_config: rocketmesh_xds::DEFAULT_ROUTE_CONFIG.into(),
            virtual_broker: "rocketmesh".into(),
            stat_prefix: "rocketmesh".into(),
            upstream: UpstreamConfig::default(),
            request_timeout: Duration::from_secs(10),
            route_timeout: Duration::from_secs(5),
            xds_reconnect_grace: Duration::from_secs(30),
            group_expiry: Duration::from_secs(120),
            broker_heartbeat: Duration::from_secs(30),
            drain: Duration::from_secs(5),
            server: ServerConfig::default(),
            translator: TranslatorConfig::default(),
            transparent: TransparentConfig::default(),
            access: access::AccessConfig::default(),
            tls: None,
            xds_tls: None,
            xds_token: None,
        }
    }
}
