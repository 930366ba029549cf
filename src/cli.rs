//! Command line: `rocketmesh sidecar|broker|control-plane|demo|bench|inspect|iptables|inject`.
//!
//! The flags follow the issues' command lines exactly; other tools script against them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rocketmesh_filters::consume::TranslatorConfig;

pub use crate::cli_tls::{ClusterTlsArgs, ListenerTlsArgs, UpstreamTlsArgs, XdsTlsArgs};
pub use crate::inject::InjectArgs;
pub use crate::iptables::IptablesArgs;

/// rocketmesh: a service-mesh sidecar for Apache RocketMQ (Remoting protocol), with a bundled
/// broker node and an xDS control plane.
#[derive(Debug, Parser)]
#[command(name = "rocketmesh", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `rocketmesh=debug`; RUST_LOG also works.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: one listener for nameserver and broker requests, routes from xDS.
    Sidecar(SidecarArgs),
    /// Run a broker node (commit log, consume queues, Pull, Pop/Ack).
    Broker(BrokerArgs),
    /// Run the control plane: nameserver role for brokers plus a delta/SotW ADS server.
    ControlPlane(ControlPlaneArgs),
    /// One command, no setup: control plane, two brokers, a sidecar and sample traffic.
    ///
    /// Starts, in this process and with a temporary data directory, a control plane (nameserver
    /// role + xDS), broker-a (DemoTopic read-write) and broker-b (DemoTopic read-only), and a
    /// sidecar; sends sample messages through the sidecar, pops and acks them, prints what
    /// happened and the admin URL, then keeps serving until Ctrl-C (or exits with --once).
    ///
    /// Point an SDK at it: set the nameserver address to the sidecar's listener (`--listen`), e.g.
    /// Java `producer.setNamesrvAddr("127.0.0.1:9876")` or `NAMESRV_ADDR=127.0.0.1:9876`, Python
    /// (rocketmq-client-python) `producer.set_name_server_address("127.0.0.1:9876")`, C++
    /// `producer.setNamesrvAddr("127.0.0.1:9876")`. Route look-ups, sends, pops and acks then all
    /// go through the sidecar (legacy Pull consumers need the pull->pop translator, not built
    /// yet). Topics: DemoTopic, DemoOnDemandTopic, DemoIdleTopic.
    Demo(DemoArgs),
    /// Load generator speaking Remoting (send, pop+ack, pull) against any address.
    Bench(BenchArgs),
    /// Decode Remoting frames (hex, as in testdata/frames) and print them.
    Inspect(InspectArgs),
    /// On-demand (delta) vs SotW xDS at catalogue scale: client memory and time to first route.
    BenchXds(BenchXdsArgs),
    /// Redirect the pod's outbound RocketMQ connections to the sidecar (a pod's init container,
    /// like istio-init): `install`, `remove` or `list` the nat rules; needs CAP_NET_ADMIN.
    Iptables(IptablesArgs),
    /// Print a Kubernetes manifest with the rocketmesh sidecar added (offline, like
    /// `istioctl kube-inject`): `rocketmesh inject -f app.yaml | kubectl apply -f -`.
    Inject(InjectArgs),
    /// One xDS client run for bench-xds (prints one JSON line).
    #[command(hide = true)]
    XdsProbe(XdsProbeArgs),
    /// Drive the control plane's traffic API: routes, weights, migrations.
    Ctl(crate::ctl::CtlArgs),
}

#[derive(Debug, Args)]
pub struct SidecarArgs {
    /// xDS (ADS) server: `host:port` (a name, e.g. a Kubernetes service, is resolved at every
    /// connect and each of its addresses tried in turn), `[v6]:port`, or an `http://` URI.
    #[arg(long, default_value = "127.0.0.1:18000", value_parser = parse_server_addr)]
    pub xds: String,
    /// Listener for SDK traffic (nameserver and broker requests alike).
    #[arg(long, default_value = "127.0.0.1:9876")]
    pub listen: SocketAddr,
    /// The address route answers tell SDKs to connect to: `HOST:PORT`, `IP:PORT` or
    /// `[IPv6]:PORT` [default: the listen address; when that is 0.0.0.0 or [::], `$POD_IP` with
    /// the listen port; without either, the sidecar refuses to start].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Also accept on the listen port minus 2: Apache 4.x clients with `vipChannelEnabled`
    /// connect to the advertised broker port minus 2. Not opened for port 0.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub vip_channel: bool,
    /// Admin server (/ready, /healthz, /stats/prometheus, /config_dump, /clusters).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Transparent mode: connections redirected here by iptables (`rocketmesh iptables`) are
    /// classified by their original destination (SO_ORIGINAL_DST): a nameserver port is served
    /// as today, a broker the routes name gets that broker's traffic relayed unchanged, anything
    /// else is closed (or relayed at L4 with --passthrough-unknown); counted in stats.
    #[arg(long)]
    pub transparent: bool,
    /// Transparent mode: relay connections to unknown destinations at L4 instead of closing them.
    #[arg(long, requires = "transparent")]
    pub passthrough_unknown: bool,
    /// Transparent mode: destination ports that are the application's nameserver.
    #[arg(long, value_delimiter = ',', default_value = "9876")]
    pub nameserver_ports: Vec<u16>,
    /// More listeners, e.g. a broker port for iptables-redirected traffic.
    #[arg(long = "extra-listen")]
    pub extra_listen: Vec<SocketAddr>,
    /// Static bootstrap (clusters and routes in YAML), usable without a control plane.
    #[arg(long)]
    pub bootstrap: Option<PathBuf>,
    /// RDS route configuration name (VHDS names are `<route-config>/<topic>`).
    #[arg(long, default_value = rocketmesh_xds::DEFAULT_ROUTE_CONFIG)]
    pub route_config: String,
    /// Worker threads of the data plane (like Envoy's --concurrency). A sidecar shares its pod's
    /// CPU with the application: the default is one event loop on one thread, which costs the
    /// least CPU per message; raise it for an application that needs more than one core of proxying.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Pull -> Pop translator: invisible time asked for on each pop and renewal, ms.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(i64).range(1_000..))]
    pub pop_invisible_ms: i64,
    /// Pull -> Pop translator: renew a held message when less than this is left of its invisible
    /// time, ms [default: a quarter of --pop-invisible-ms, at least 2,500 (renewals run every
    /// second), at most 15,000 and below --pop-invisible-ms].
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub renew_before_ms: Option<i64>,
    /// Pull -> Pop translator: longest a message is held (renewed) for one legacy consumer, ms;
    /// past it the message is let go and the broker redelivers it (a hung consumer's share
    /// reaches the others).
    #[arg(long, default_value_t = 900_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_hold_ms: i64,
    /// On SIGTERM/SIGINT: how long requests in flight and owed acks may take before connections
    /// are force-closed (`/ready` answers 503 from the first moment). E.g. `5s`, `1500ms`, `1m`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,

    /// A client connection whose frame does not complete within this long of its first byte is
    /// closed (counted as downstream_cx_rx_frame_timeout).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub frame_timeout: std::time::Duration,

    /// A client connection with no frame and no request in flight for this long is closed
    /// (counted as downstream_cx_idle_timeout); SDKs heartbeat every 30 s. `0` keeps idle
    /// connections.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: std::time::Duration,

    /// After each (re)connect to the xDS server, a removal of a route the sidecar holds is
    /// deferred this long, and forgotten if the route comes back meanwhile: a restarted control
    /// plane may report topics gone whose brokers have not registered again yet. `0` = none.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub xds_reconnect_grace: std::time::Duration,

    /// Sign every request sent to a broker with these keys (YAML: `accessKey`, `secretKey`,
    /// optional `securityToken`), replacing the application's own signature: brokers with
    /// Apache's ACL on accept the mesh's traffic whatever the application sends.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Check each application request's own signature and permissions against this Apache
    /// `plain_acl.yml` (before any rewrite); refused requests get NO_PERMISSION from the
    /// sidecar. Re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub verify_client_signatures: Option<PathBuf>,
    /// Topic authorization policy (YAML lists `produce`, `consume`, `groups` of names or `*`
    /// globs): requests outside it get NO_PERMISSION before anything reaches a broker. Re-read
    /// when it changes.
    #[arg(long)]
    pub authz: Option<PathBuf>,
    /// Outlier detection: a broker failing this many requests in a row at the transport
    /// (refused, lost, timed out) is ejected; 0 = off.
    #[arg(long, default_value_t = 5)]
    pub outlier_consecutive: u32,

    /// Outlier detection: ejection time per ejection so far (growing), at most
    /// --outlier-max-ejection.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub outlier_base_ejection: std::time::Duration,

    /// Outlier detection: longest ejection.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub outlier_max_ejection: std::time::Duration,
    #[command(flatten)]
    pub tls: ListenerTlsArgs,
    #[command(flatten)]
    pub upstream_tls: UpstreamTlsArgs,
    #[command(flatten)]
    pub xds_tls: XdsTlsArgs,
}

/// A server address flag that may name a host: `host:port`, `ipv4:port`, `[ipv6]:port`, or a
/// URI with a scheme (passed through; its parser checks it). Names are not resolved here: the
/// client resolves them when it connects, and again on every reconnect.
pub fn parse_server_addr(s: &str) -> Result<String, String> {
    if s.contains("://") {
        return Ok(s.to_owned());
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?}: expected host:port"));
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{s:?}: the port must be a number from 1 to 65535")),
    }
    if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner.strip_suffix(']').unwrap_or(inner);
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(_) if inner.ends_with(']') => Ok(s.to_owned()),
            _ => Err(format!("{s:?}: not an IPv6 address in brackets")),
        };
    }
    if host.contains(':') {
        return Err(format!(
            "{s:?}: an IPv6 address goes in brackets, e.g. [::1]:18000"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{s:?}: {host:?} is not a host name or address"));
    }
    Ok(s.to_owned())
}

/// A duration flag: a number with a unit (`ms`, `s`, `m`), or bare seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit, e.g. 5s or 1500ms"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s or m)")),
    };
    Ok(d)
}

impl SidecarArgs {
    /// The translator settings the flags ask for (table limits keep their defaults).
    pub fn translator(&self) -> TranslatorConfig {
        let invisible = self.pop_invisible_ms;
        let renew_before = self
            .renew_before_ms
            .unwrap_or_else(|| (invisible / 4).clamp(2_500, 15_000))
            .min(invisible - 1);
        TranslatorConfig {
            invisible_time_ms: invisible,
            renew_before_ms: renew_before,
            max_hold_ms: self.max_hold_ms,
            ..TranslatorConfig::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlushMode {
    /// Flush on an interval (default).
    Async,
    /// Group commit: a send is answered only after its fsync.
    Sync,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Remoting listener.
    #[arg(long, default_value = "127.0.0.1:10911")]
    pub listen: SocketAddr,
    /// The address clients are told (route answers, REGISTER_BROKER): `HOST:PORT`, `IP:PORT` or
    /// `[IPv6]:PORT` [default: the listen address; when that is 0.0.0.0 or [::], `$POD_IP` with
    /// the listen port; without either, the broker refuses to start].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Also accept on the listen port minus 2: Apache 4.x clients with `vipChannelEnabled`
    /// connect there (Apache's broker opens it by default). Not opened for port 0.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub vip_channel: bool,
    /// An orderly consumer's queue lock (LOCK_BATCH_MQ) expires this long after its last
    /// renewal (Apache: 60 s; 4.x consumers renew every 20 s). E.g. `60s`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub lock_expiry: std::time::Duration,
    /// Data directory (commit log, consume queues, offsets, checkpoints).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Flush mode.
    #[arg(long, value_enum, default_value_t = FlushMode::Async)]
    pub flush: FlushMode,
    /// Broker name.
    #[arg(long, default_value = "broker-a")]
    pub name: String,
    /// Cluster name.
    #[arg(long, default_value = "DefaultCluster")]
    pub cluster: String,
    /// Nameserver / control plane to register with: `host:port` (a name, e.g. a Kubernetes
    /// service, is resolved at every connect, each address tried in turn), `ip:port` or
    /// `[v6]:port`; without it the broker is standalone and answers route look-ups for itself.
    #[arg(long, value_parser = parse_server_addr)]
    pub namesrv: Option<String>,
    /// Topics this broker serves read-only (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub read_only_topics: Vec<String>,
    /// Admin server (/ready, /healthz, /stats/prometheus, /config_dump), e.g. 127.0.0.1:15001
    /// (port 0 = any free port); off without it.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// On SIGTERM/SIGINT: how long requests in flight may take before connections are
    /// force-closed (`/ready` answers 503 from the first moment). E.g. `5s`, `1500ms`, `1m`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// Access control: Apache RocketMQ's `plain_acl.yml` (accounts, keys, topic and group
    /// permissions, white-listed addresses), enforced on every request; re-read when it changes
    /// (a bad edit keeps the last good version).
    #[arg(long)]
    pub acl: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ListenerTlsArgs,
    /// TLS towards --namesrv (registration).
    #[command(flatten)]
    pub upstream_tls: UpstreamTlsArgs,
}

#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// Remoting port for the nameserver role.
    #[arg(long, default_value = "127.0.0.1:9876")]
    pub remoting: SocketAddr,
    /// gRPC port of the ADS server.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds: SocketAddr,
    /// Serve resources from this YAML file (reloaded on change) instead of registrations.
    #[arg(long = "static")]
    pub static_file: Option<PathBuf>,
    /// Read routes from an existing nameserver: `host:port` (resolved at every connect, each
    /// address tried in turn), `ip:port` or `[v6]:port`.
    #[arg(long, value_parser = parse_server_addr)]
    pub upstream_namesrv: Option<String>,
    /// Serve registered topics' endpoints through EDS (ClusterLoadAssignment) instead of inline.
    #[arg(long)]
    pub eds: bool,
    /// Remove brokers silent for this many seconds (Apache's nameserver: 120).
    #[arg(long = "broker-expiry", default_value_t = 120)]
    pub broker_expiry_secs: u64,
    /// After start, for this many seconds, report no topic as removed or absent that has not
    /// registered since start (brokers re-register within one registration interval, 30 s);
    /// 0 = no warm-up.
    #[arg(long = "warmup-secs", default_value_t = 30)]
    pub warmup_secs: u64,
    /// Admin server (/ready, /healthz, /stats/prometheus, /config_dump), e.g. 127.0.0.1:15002
    /// (port 0 = any free port); off without it.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// On SIGTERM/SIGINT: how long requests in flight may take before connections are
    /// force-closed (`/ready` answers 503 from the first moment). E.g. `5s`, `1500ms`, `1m`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// Keep traffic policies and migrations in DIR/traffic.json (resumed after a restart);
    /// without it they live in memory only.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// TLS of the Remoting listener and the ADS listener (which also offers ALPN h2).
    #[command(flatten)]
    pub tls: ListenerTlsArgs,
    /// TLS towards --upstream-namesrv.
    #[command(flatten)]
    pub upstream_tls: UpstreamTlsArgs,
    /// Require a bearer token on every ADS stream: a file of accepted tokens, one per line
    /// (blank lines and `#` comments ignored), reloaded when it changes. Streams without an
    /// accepted `authorization: Bearer <token>` are refused with UNAUTHENTICATED.
    #[arg(long)]
    pub xds_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub cluster_tls: ClusterTlsArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run the sample traffic, print the summary and exit (0 only if every message made it).
    #[arg(long)]
    pub once: bool,
    /// The sidecar's listener: the nameserver address an SDK points at (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:9876")]
    pub listen: SocketAddr,
    /// Admin server (/ready, /stats/prometheus, /config_dump, /clusters; port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    Send,
    Pop,
    Pull,
    /// A 4.x push consumer's pull loop: offsets queried, commit offsets on pulls, offsets
    /// persisted every second (through a sidecar: pull -> pop, commits -> acks).
    Consume,
    /// New connections per second: connect (TLS handshake with --tls-ca), one request, close;
    /// --connections of them at once.
    Connect,
}

/// How `bench --mode pop` acks what it popped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PopAck {
    /// One BATCH_ACK_MESSAGE per pop.
    Batch,
    /// One ACK_MESSAGE per message, one at a time.
    Single,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Address to load (a broker, a sidecar, or a proxy in front of either).
    #[arg(long)]
    pub target: SocketAddr,
    /// What to measure.
    #[arg(long, value_enum)]
    pub mode: BenchMode,
    /// Topic.
    #[arg(long, default_value = "BenchTopic")]
    pub topic: String,
    /// TCP connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    pub inflight: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Duration in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Stop once this many messages were received (pop, pull, consume; 0: no limit).
    #[arg(long, default_value_t = 0)]
    pub messages: u64,
    /// Consumer group (pop, pull, consume).
    #[arg(long, default_value = "rocketmesh_bench")]
    pub group: String,
    /// How pop mode acks: `batch`, one BATCH_ACK_MESSAGE per pop (as a 5.x client does), or
    /// `single`, one ACK_MESSAGE per message.
    #[arg(long, value_enum, default_value_t = PopAck::Batch)]
    pub ack: PopAck,
    /// Also print one JSON line with the figures.
    #[arg(long)]
    pub json: bool,
    /// Speak TLS to the target, trusting this CA bundle (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Server name sent and checked over TLS [default: the target's IP].
    #[arg(long, requires = "tls_ca")]
    pub tls_sni: Option<String>,
    /// Connect mode over TLS: no session resumption (every connection a full handshake).
    #[arg(long, requires = "tls_ca")]
    pub tls_no_resumption: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Files holding hex frames (one or more frames per file, whitespace ignored); `-` for stdin.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Also decode message records in pull/pop response bodies.
    #[arg(long)]
    pub records: bool,
}

#[derive(Debug, Args)]
pub struct BenchXdsArgs {
    /// Topics registered with the control plane (by two brokers).
    #[arg(long, default_value_t = 100_000)]
    pub topics: usize,
    /// Topics the client asks for.
    #[arg(long, default_value_t = 10)]
    pub subscribe: usize,
    /// Also print one JSON line with the figures.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeMode {
    Delta,
    Sotw,
}

#[derive(Debug, Args)]
pub struct XdsProbeArgs {
    /// ADS server.
    #[arg(long)]
    pub server: SocketAddr,
    #[arg(long, value_enum)]
    pub mode: ProbeMode,
    /// Topics to ask for (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(args: &[&str]) -> SidecarArgs {
        let cli = Cli::try_parse_from(["rocketmesh", "sidecar"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Sidecar(a) => a,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn xds_takes_names_addresses_and_uris() {
        assert_eq!(sidecar(&[]).xds, "127.0.0.1:18000");
        for ok in [
            "rocketmesh-cp.rocketmq.svc:18000",
            "rocketmesh-cp.rocketmq.svc.cluster.local.:18000",
            "localhost:1",
            "10.0.0.7:18000",
            "[::1]:18000",
            "[fd00::7]:65535",
            "http://cp:18000",
        ] {
            assert_eq!(sidecar(&["--xds", ok]).xds, ok);
        }
        for bad in [
            "cp",
            "cp:",
            "cp:0",
            "cp:70000",
            ":18000",
            "::1:18000",
            "[::1:18000",
            "[nope]:18000",
            "bad_host!:18000",
            "-cp:18000",
            "a..b:18000",
        ] {
            let r = Cli::try_parse_from(["rocketmesh", "sidecar", "--xds", bad]);
            assert!(r.is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn translator_flags() {
        let d = sidecar(&[]).translator();
        let def = TranslatorConfig::default();
        assert_eq!(
            (d.invisible_time_ms, d.renew_before_ms, d.max_hold_ms),
            (def.invisible_time_ms, def.renew_before_ms, def.max_hold_ms)
        );
        let short = sidecar(&["--pop-invisible-ms", "5000", "--max-hold-ms", "8000"]).translator();
        assert_eq!(
            (
                short.invisible_time_ms,
                short.renew_before_ms,
                short.max_hold_ms
            ),
            (5_000, 2_500, 8_000)
        );
        let tiny = sidecar(&["--pop-invisible-ms", "2000"]).translator();
        assert_eq!(tiny.renew_before_ms, 1_999);
        let explicit = sidecar(&["--pop-invisible-ms", "9000", "--renew-before-ms", "4000"]);
        assert_eq!(explicit.translator().renew_before_ms, 4_000);
        assert!(
            Cli::try_parse_from(["rocketmesh", "sidecar", "--pop-invisible-ms", "10"]).is_err()
        );
    }

    #[test]
    fn drain_timeout_takes_units() {
        use std::time::Duration;
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("soon").is_err());
        let d = sidecar(&["--drain-timeout", "250ms"]).drain_timeout;
        assert_eq!(d, Duration::from_millis(250));
    }

    #[test]
    fn broker_and_control_plane_take_admin_and_drain_timeout() {
        let cli = Cli::try_parse_from([
            "rocketmesh",
            "broker",
            "--data-dir",
            "/tmp/x",
            "--admin",
            "127.0.0.1:0",
            "--drain-timeout",
            "2s",
        ])
        .unwrap();
        let Command::Broker(b) = cli.command else {
            panic!("not a broker command")
        };
        assert_eq!(b.admin, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(b.drain_timeout, std::time::Duration::from_secs(2));
        let cli = Cli::try_parse_from(["rocketmesh", "control-plane"]).unwrap();
        let Command::ControlPlane(c) = cli.command else {
            panic!("not a control-plane command")
        };
        assert_eq!(c.admin, None);
        assert_eq!(c.drain_timeout, std::time::Duration::from_secs(5));
    }
}
