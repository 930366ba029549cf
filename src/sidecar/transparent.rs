//! Transparent mode (`sidecar --transparent`): connections an iptables REDIRECT brought here,
//! classified by where the application meant to go (`SO_ORIGINAL_DST`, IPv4 and IPv6).
//!
//! ```text
//! original destination                          served as
//! none, or one of our own listeners / advertised   Direct: as any SDK connection today
//! an endpoint of a broker in the routes held       Broker: that broker's traffic, forwarded
//!   (or its VIP port, + 2)                            to its current endpoint as it is
//! a nameserver port (--nameserver-ports, 9876)     Nameserver: as today (routes name us)
//! anything else                                    Unknown: L4 relay (--passthrough-unknown)
//!                                                    or closed; logged and counted either way
//! ```
//!
//! A Broker connection comes from an SDK that learned a real broker's address elsewhere (an
//! older route, a tool given `-b host:port`): its queue ids and offsets are that broker's own,
//! so its requests are relayed unchanged (no virtual queues, no pull -> pop) to the broker's
//! endpoint as the control plane names it now, re-resolved by name at every connect. A broker
//! is known once a topic it serves is held by this sidecar; before that its address is Unknown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_xds::cache::RouteTable;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::error::SidecarError;
use crate::metrics::Counter;
use crate::remoting::Admission;

/// Transparent-mode settings.
#[derive(Debug, Clone)]
pub struct TransparentConfig {
    /// Read each connection's original destination and classify it (off: every connection is
    /// served as today).
    pub enabled: bool,
    /// Destination ports served as the nameserver (where the application's `namesrv` points).
    pub nameserver_ports: Vec<u16>,
    /// Relay connections to unknown destinations at L4 (else close them).
    pub passthrough_unknown: bool,
    /// Most L4 relays at once; more are closed (counted as refused).
    pub max_passthrough: usize,
    /// Connect deadline of an L4 relay's upstream side.
    pub connect_timeout: Duration,
    /// Longest a request relayed to a broker may take (a PULL's long poll included).
    pub broker_request_timeout: Duration,
}

impl Default for TransparentConfig {
    fn default() -> Self {
        TransparentConfig {
            enabled: false,
            nameserver_ports: vec![9876],
            passthrough_unknown: false,
            max_passthrough: 1024,
            connect_timeout: Duration::from_secs(3),
            broker_request_timeout: Duration::from_secs(35),
        }
    }
}

/// Where a redirected connection was meant to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Direct,
    Nameserver,
    /// A broker the routes name: `broker_name/broker_id`.
    Broker(Arc<str>),
    Unknown,
}

/// The classifier and the L4 relays.
#[derive(Debug)]
pub struct Transparent {
    cfg: TransparentConfig,
    /// Our listeners' bound addresses and the advertised address.
    own: Vec<String>,
    /// (route table generation, endpoint address -> broker label), rebuilt when the table moves.
    index: Mutex<(u64, Arc<EndpointIndex>)>,
    relays: Arc<Semaphore>,
    stop: CancellationToken,
}

/// Endpoint addresses (and their VIP addresses) -> `broker_name/broker_id`, and back.
#[derive(Debug, Default)]
struct EndpointIndex {
    by_addr: HashMap<String, Arc<str>>,
    by_label: HashMap<Arc<str>, String>,
}

impl EndpointIndex {
    fn build(table: &RouteTable) -> Self {
        let mut ix = EndpointIndex::default();
        for route in table.topics.keys().filter_map(|t| table.route(t)) {
            for cluster in route.clusters.values() {
                for ep in cluster.endpoints.iter() {
                    let label: Arc<str> = format!("{}/{}", ep.broker_name, ep.broker_id).into();
                    if let Some(vip) = crate::remoting::advertise::vip_address(&ep.address) {
                        ix.by_addr.entry(vip).or_insert_with(|| label.clone());
                    }
                    ix.by_addr.insert(ep.address.clone(), label.clone());
                    ix.by_label.insert(label, ep.address.clone());
                }
            }
        }
        ix
    }
}

/// The original destination of a redirected connection (None when it was not redirected or
/// the kernel has no record: no conntrack entry).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    // An IPv4 connection accepted on a dual-stack [::] listener has a v4-mapped local address;
    // its NAT record is IPv4's.
    let v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    let found = if v4 {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    found.ok()?.as_socket()
}

impl Transparent {
    pub fn new(cfg: TransparentConfig, own: Vec<String>) -> Self {
        let relays = Arc::new(Semaphore::new(cfg.max_passthrough));
        Transparent {
            cfg,
            own,
            index: Mutex::new((u64::MAX, Arc::default())),
            relays,
            stop: CancellationToken::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    fn index(&self, ctx: &Context) -> Arc<EndpointIndex> {
        let table = ctx.router.xds().snapshot();
        let mut held = self.index.lock();
        if held.0 != table.generation {
            *held = (table.generation, Arc::new(EndpointIndex::build(&table)));
        }
        held.1.clone()
    }

    /// Where `orig` (a connection's original destination, arriving at `local`) was meant to go.
    pub fn classify(
        &self,
        ctx: &Context,
        orig: Option<SocketAddr>,
        local: SocketAddr,
    ) -> Destination {
        let Some(orig) = orig.filter(|o| *o != local) else {
            return Destination::Direct;
        };
        let text = orig.to_string();
        if self.own.contains(&text) {
            return Destination::Direct;
        }
        if let Some(label) = self.index(ctx).by_addr.get(&text) {
            return Destination::Broker(label.clone());
        }
        if self.cfg.nameserver_ports.contains(&orig.port()) {
            return Destination::Nameserver;
        }
        Destination::Unknown
    }

    /// [`crate::remoting::Handler::admit`] in transparent mode.
    pub fn admit(&self, ctx: &Context, stream: TcpStream, peer: SocketAddr) -> Admission {
        let orig = original_dst(&stream);
        let local = match stream.local_addr() {
            Ok(l) => l,
            Err(_) => return Admission::Taken,
        };
        let label = match self.classify(ctx, orig, local) {
            Destination::Direct => {
                ctx.stats.inc(Counter::DownstreamDirect);
                None
            }
            Destination::Nameserver => {
                ctx.stats.inc(Counter::DownstreamToNameserver);
                None
            }
            Destination::Broker(label) => {
                ctx.stats.inc(Counter::DownstreamToBroker);
                tracing::debug!(%peer, ?orig, %label, "intercepted a connection to a broker");
                Some(label)
            }
            Destination::Unknown => {
                self.unknown(ctx, stream, peer, orig.unwrap_or(local));
                return Admission::Taken;
            }
        };
        Admission::Serve {
            stream,
            original_dst: orig,
            label,
        }
    }

    fn unknown(&self, ctx: &Context, stream: TcpStream, peer: SocketAddr, orig: SocketAddr) {
        if !self.cfg.passthrough_unknown {
            ctx.stats.inc(Counter::DownstreamUnknownRefused);
            tracing::warn!(
                %peer, %orig,
                "closed a redirected connection to a destination that is neither a nameserver \
                 port nor a known broker (--passthrough-unknown relays them)"
            );
            return;
        }
        let Ok(permit) = self.relays.clone().try_acquire_owned() else {
            ctx.stats.inc(Counter::DownstreamUnknownRefused);
            tracing::warn!(%peer, %orig, max = self.cfg.max_passthrough, "closed: too many L4 relays");
            return;
        };
        ctx.stats.inc(Counter::DownstreamPassthrough);
        tracing::info!(%peer, %orig, "relaying a connection to an unknown destination at L4");
        let (stop, timeout) = (self.stop.clone(), self.cfg.connect_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            let relay = async {
                let mut upstream = tokio::time::timeout(timeout, TcpStream::connect(orig))
                    .await
                    .map_err(|_| std::io::Error::other("connect timed out"))??;
                let _ = upstream.set_nodelay(true);
                let mut stream = stream;
                tokio::io::copy_bidirectional(&mut stream, &mut upstream).await
            };
            tokio::select! {
                r = relay => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, %orig, "L4 relay ended: {e}");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
    }

    /// Relays one request of a connection meant for broker `label` to the broker's current
    /// endpoint (or, when no route names it any more, the address the client dialled).
    pub async fn forward(
        &self,
        ctx: &Context,
        label: &str,
        dialled: SocketAddr,
        req: RemotingCommand,
    ) -> Result<RemotingCommand, SidecarError> {
        ctx.stats.inc(Counter::TransparentBrokerRequest);
        let addr = match self.index(ctx).by_label.get(label) {
            Some(a) => a.clone(),
            None => dialled.to_string(),
        };
        ctx.forward(&addr, None, req, self.cfg.broker_request_timeout)
            .await
    }

    /// Ends the L4 relays (shutdown).
    pub fn close(&self) {
        self.stop.cancel();
    }
}
