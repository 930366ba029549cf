//! `rocketmesh demo`: the whole mesh in one process, no setup.
//!
//! It starts a control plane (nameserver role + ADS server), two broker nodes registered with it
//! over Remoting (broker-a serves `DemoTopic` read-write, broker-b read-only, so sends must go to
//! broker-a: subset routing) and a sidecar that learns routes from the control plane on demand,
//! all on 127.0.0.1 with a temporary data directory. Then it plays an SDK through the sidecar:
//! route look-up, SEND_MESSAGE_V2 over the virtual write queues, POP (queueId -1) and ACK, half
//! of the acks on a second connection (the pop handle names its broker, so any connection can
//! ack). A second topic shows on-demand xDS: the sidecar subscribes to it only when traffic asks,
//! and a third topic, registered but never used, is never fetched. It prints what happened, then
//! keeps serving until a signal (or exits with `--once`: 0 only if every message made it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use rocketmesh_filters::codec::body::{perm, TopicRouteData};
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::{
    CreateTopicRequestHeader, GetMaxOffsetRequestHeader, OffsetResponseHeader,
    SendMessageResponseHeader,
};
use rocketmesh_filters::codec::message::UniqIdGenerator;
use rocketmesh_filters::codec::RemotingCommand;

use crate::broker::{self, BrokerConfig, BrokerHandle};
use crate::cli::DemoArgs;
use crate::control_plane::{self, ControlPlane, ControlPlaneConfig};
use crate::remoting::RemotingClient;
use crate::sdk;
use crate::sidecar::{self, Sidecar, SidecarConfig};

/// Writable on broker-a, read-only on broker-b.
const TOPIC: &str = "DemoTopic";
/// On broker-a; the sidecar hears of it only when the sample traffic asks.
const ON_DEMAND_TOPIC: &str = "DemoOnDemandTopic";
/// On broker-a; registered with the control plane, never asked for.
const IDLE_TOPIC: &str = "DemoIdleTopic";
const QUEUES: i32 = 4;
const MESSAGES: usize = 200;
const ON_DEMAND_MESSAGES: usize = 20;
const PRODUCER_GROUP: &str = "demo_producer";
const CONSUMER_GROUP: &str = "demo_consumer";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Deadline of one request.
const RPC: Duration = Duration::from_secs(5);
/// How long the brokers' registrations may take to reach the control plane.
const REGISTRATION_LIMIT: Duration = Duration::from_secs(15);
/// How long the sidecar may take to connect to the ADS server.
const READY_LIMIT: Duration = Duration::from_secs(15);
/// How long consuming one topic's sample may take.
const CONSUME_LIMIT: Duration = Duration::from_secs(30);
/// Long-poll time of one POP (an empty broker answers after it).
const POP_POLL: Duration = Duration::from_millis(300);
const POP_INVISIBLE: Duration = Duration::from_secs(60);
/// Longest wait for each component to stop.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// Runs the demo. Without `--once` it serves until `stop` completes (SIGINT/SIGTERM).
pub async fn run(args: &DemoArgs, stop: impl Future<Output = ()>) -> Result<()> {
    tokio::pin!(stop);
    ensure_free(args.listen, "--listen")?;
    ensure_free(args.admin, "--admin")?;
    let dir = DataDir::create()?;
    let mesh = tokio::select! {
        m = Mesh::start(args, dir.path()) => m?,
        () = &mut stop => bail!("interrupted while starting"),
    };
    println!("{}", mesh.describe(dir.path()));
    let outcome = tokio::select! {
        r = sample_traffic(&mesh) => Some(r),
        () = &mut stop => None,
    };
    let Some(outcome) = outcome else {
        mesh.shutdown().await;
        bail!("interrupted during the sample traffic");
    };
    let verdict = match outcome {
        Ok(report) => {
            println!("{}", report.render(&mesh));
            report.verdict()
        }
        Err(e) => Err(format!("the sample traffic failed: {e:#}")),
    };
    if args.once {
        mesh.shutdown().await;
        return verdict.map_err(anyhow::Error::msg);
    }
    if let Err(reason) = &verdict {
        println!("WARNING: {reason}");
    }
    println!("Serving until Ctrl-C (SIGINT) or SIGTERM.");
    stop.await;
    println!("Stopping: draining the sidecar, stopping the brokers and the control plane.");
    mesh.shutdown().await;
    println!("Stopped; removed {}.", dir.path().display());
    Ok(())
}

/// Fails with a clear message when `addr` (a fixed port) is taken.
fn ensure_free(addr: SocketAddr, flag: &str) -> Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "{addr} is already in use (another nameserver, sidecar or demo?): \
             pick a free address, e.g. `{flag} 127.0.0.1:0` for any free port"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot bind {addr} ({flag})")),
    }
}

/// The temporary data directory, removed when dropped (every exit path but a kill). Named
/// `rocketmesh-demo-{pid}` (no random part) so the printed layout and a test can find it.
struct DataDir(tempfile::TempDir);

impl DataDir {
    fn create() -> Result<Self> {
        let name = format!("rocketmesh-demo-{}", std::process::id());
        let stale = std::env::temp_dir().join(&name);
        if stale.exists() {
            std::fs::remove_dir_all(&stale)
                .with_context(|| format!("removing a stale {}", stale.display()))?;
        }
        let dir = tempfile::Builder::new()
            .prefix(&name)
            .rand_bytes(0)
            .tempdir()
            .with_context(|| format!("creating {}", stale.display()))?;
        Ok(DataDir(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Every running component.
struct Mesh {
    control_plane: ControlPlane,
    /// (name, handle), broker-a first.
    brokers: Vec<(&'static str, BrokerHandle)>,
    sidecar: Sidecar,
}

impl Mesh {
    async fn start(args: &DemoArgs, dir: &Path) -> Result<Mesh> {
        let mut cfg = ControlPlaneConfig::new(local(0));
        cfg.xds = Some(local(0));
        let control_plane = control_plane::start(cfg)
            .await
            .context("starting the control plane")?;
        let mut brokers = Vec::new();
        let started = start_brokers(&control_plane, dir, &mut brokers).await;
        let sidecar = match started {
            Ok(()) => start_sidecar(args, &control_plane).await,
            Err(e) => Err(e),
        };
        match sidecar {
            Ok(sidecar) => Ok(Mesh {
                control_plane,
                brokers,
                sidecar,
            }),
            Err(e) => {
                stop_brokers(brokers).await;
                stop_within("the control plane", control_plane.shutdown()).await;
                Err(e)
            }
        }
    }

    fn xds_addr(&self) -> String {
        self.control_plane
            .xds_addr
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    fn admin_url(&self) -> String {
        self.sidecar
            .admin_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default()
    }

    fn describe(&self, dir: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "rocketmesh demo: everything in this process, on 127.0.0.1"
        );
        let _ = writeln!(
            s,
            "  control plane  remoting {}, xDS {}",
            self.control_plane.remoting_addr,
            self.xds_addr()
        );
        for (name, b) in &self.brokers {
            let topics = if *name == "broker-a" {
                format!("{TOPIC} read-write, {ON_DEMAND_TOPIC}, {IDLE_TOPIC}")
            } else {
                format!("{TOPIC} read-only")
            };
            let _ = writeln!(s, "  {name:<13}  {}  {topics}", b.addr);
        }
        let _ = writeln!(
            s,
            "  sidecar        {}  (admin {})",
            self.sidecar.addr,
            self.admin_url()
        );
        let _ = write!(s, "  data dir       {} (removed at exit)", dir.display());
        s
    }

    /// Sidecar drain first, then the brokers (they unregister), then the control plane.
    async fn shutdown(self) {
        stop_within("the sidecar", self.sidecar.shutdown()).await;
        stop_brokers(self.brokers).await;
        stop_within("the control plane", self.control_plane.shutdown()).await;
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::new(LOCALHOST, port)
}

async fn stop_within(what: &str, stopping: impl Future<Output = ()>) {
    if tokio::time::timeout(STOP_LIMIT, stopping).await.is_err() {
        tracing::warn!("{what} did not stop within {STOP_LIMIT:?}");
    }
}

async fn stop_brokers(brokers: Vec<(&'static str, BrokerHandle)>) {
    for (name, b) in brokers {
        stop_within(name, b.shutdown()).await;
    }
}

/// Starts broker-a and broker-b (pushed to `out` as they start, so a failure can stop them),
/// creates the topics and waits until the control plane has both registrations.
async fn start_brokers(
    cp: &ControlPlane,
    dir: &Path,
    out: &mut Vec<(&'static str, BrokerHandle)>,
) -> Result<()> {
    for (name, read_only) in [("broker-a", vec![]), ("broker-b", vec![TOPIC.to_owned()])] {
        let mut cfg = BrokerConfig::new(local(0), dir.join(name));
        cfg.name = name.into();
        cfg.namesrv = Some(cp.remoting_addr);
        cfg.read_only_topics = read_only;
        let handle = broker::start(cfg)
            .await
            .with_context(|| format!("starting {name}"))?;
        out.push((name, handle));
    }
    // broker-b serves its read-only topics from its configuration; broker-a gets its topics the
    // way an admin tool creates them.
    let broker_a = out[0].1.addr;
    let admin = RemotingClient::connect_timeout(broker_a, RPC, None)
        .await
        .context("connecting to broker-a")?;
    for topic in [TOPIC, ON_DEMAND_TOPIC, IDLE_TOPIC] {
        create_topic(&admin, topic).await?;
    }
    admin.close();
    wait_registered(cp).await
}

async fn create_topic(client: &RemotingClient, topic: &str) -> Result<()> {
    let header = CreateTopicRequestHeader {
        topic: topic.to_owned(),
        default_topic: sdk::DEFAULT_TOPIC.into(),
        read_queue_nums: QUEUES,
        write_queue_nums: QUEUES,
        perm: perm::PERM_READ | perm::PERM_WRITE,
        topic_filter_type: "SINGLE_TAG".into(),
        topic_sys_flag: Some(0),
        order: false,
        ..CreateTopicRequestHeader::default()
    };
    let req = RemotingCommand::request_with_header(request_code::UPDATE_AND_CREATE_TOPIC, &header);
    let resp = client
        .invoke(req, RPC)
        .await
        .with_context(|| format!("creating {topic}"))?;
    if resp.code() != response_code::SUCCESS {
        bail!(
            "creating {topic} refused: code {} {}",
            resp.code(),
            resp.remark().unwrap_or_default()
        );
    }
    Ok(())
}

/// Waits until the control plane routes DemoTopic to a writable broker-a and a read-only
/// broker-b, and knows the other two topics.
async fn wait_registered(cp: &ControlPlane) -> Result<()> {
    let deadline = Instant::now() + REGISTRATION_LIMIT;
    let ready = || {
        let Some(route) = cp.catalog.topic_route(TOPIC) else {
            return false;
        };
        let perm_of = |name: &str| {
            route
                .brokers
                .iter()
                .find(|b| b.broker_name == name)
                .map(|b| b.perm as i32)
        };
        let writable = |p: i32| p & perm::PERM_WRITE != 0;
        let a_ok = perm_of("broker-a").is_some_and(writable);
        let b_ok = perm_of("broker-b").is_some_and(|p| !writable(p) && p & perm::PERM_READ != 0);
        a_ok && b_ok
            && cp.catalog.topic_route(ON_DEMAND_TOPIC).is_some()
            && cp.catalog.topic_route(IDLE_TOPIC).is_some()
    };
    while !ready() {
        if Instant::now() >= deadline {
            bail!("the brokers' registrations did not reach the control plane within {REGISTRATION_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn start_sidecar(args: &DemoArgs, cp: &ControlPlane) -> Result<Sidecar> {
    let xds = cp.xds_addr.context("the control plane serves no xDS")?;
    let mut cfg = SidecarConfig::new(args.listen);
    cfg.admin = Some(args.admin);
    cfg.xds = Some(xds.to_string());
    let sidecar = sidecar::start(cfg).await.map_err(|e| {
        let in_use = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
        });
        if in_use {
            e.context(
                "an address is already in use: pick free ones, e.g. \
                 `--listen 127.0.0.1:0 --admin 127.0.0.1:0`",
            )
        } else {
            e.context("starting the sidecar")
        }
    })?;
    if !sidecar.wait_ready(READY_LIMIT).await {
        stop_within("the sidecar", sidecar.shutdown()).await;
        bail!("the sidecar did not become ready within {READY_LIMIT:?} (xDS not connected)");
    }
    Ok(sidecar)
}

// ----- the sample traffic ---------------------------------------------------------------------

/// One message sent.
struct Sent {
    uniq_key: String,
    body: Bytes,
}

/// What producing one topic's sample did.
struct Produced {
    route: TopicRouteData,
    sent: Vec<Sent>,
    /// Virtual write queue (as answered) -> messages.
    per_queue: BTreeMap<i32, usize>,
    problems: Vec<String>,
}

/// What consuming one topic's sample did.
#[derive(Default)]
struct Consumed {
    pops: usize,
    empty_pops: usize,
    /// Messages per broker named in their pop handles.
    per_broker: BTreeMap<String, usize>,
    received: usize,
    /// Successful acks on the consuming connection and on the second one.
    acked: [usize; 2],
    problems: Vec<String>,
}

/// Topics the sidecar's xDS client holds, and its subscription counters, at one moment.
struct XdsView {
    topics: Vec<String>,
    vhost_subscribes: u64,
    cluster_subscribes: u64,
}

struct Report {
    main: Produced,
    main_consumed: Consumed,
    on_demand: Produced,
    on_demand_consumed: Consumed,
    /// broker name -> per-queue max offsets of DemoTopic, read from the broker itself.
    stored: Vec<(String, SocketAddr, Vec<i64>)>,
    xds_before: XdsView,
    xds_after_main: XdsView,
    xds_after_on_demand: XdsView,
    control_plane_topics: Vec<String>,
}

fn xds_view(mesh: &Mesh) -> XdsView {
    let dump = mesh.sidecar.core().xds().config_dump();
    XdsView {
        topics: dump.topics_ready,
        vhost_subscribes: dump.stats.vhost_subscribes,
        cluster_subscribes: dump.stats.cluster_subscribes,
    }
}

async fn sample_traffic(mesh: &Mesh) -> Result<Report> {
    let addr = mesh.sidecar.addr;
    let producer = RemotingClient::connect_timeout(addr, RPC, None)
        .await
        .with_context(|| format!("connecting to the sidecar at {addr}"))?;
    let consumer = RemotingClient::connect_timeout(addr, RPC, None).await?;
    let acker = RemotingClient::connect_timeout(addr, RPC, None).await?;
    let ids = UniqIdGenerator::new(LOCALHOST, std::process::id(), 0x0D3E_0001);

    let xds_before = xds_view(mesh);
    let main = produce(&producer, TOPIC, MESSAGES, &ids).await?;
    let main_consumed = consume(&consumer, &acker, TOPIC, &main).await;
    let xds_after_main = xds_view(mesh);
    let on_demand = produce(&producer, ON_DEMAND_TOPIC, ON_DEMAND_MESSAGES, &ids).await?;
    let on_demand_consumed = consume(&consumer, &acker, ON_DEMAND_TOPIC, &on_demand).await;
    let xds_after_on_demand = xds_view(mesh);
    for c in [&producer, &consumer, &acker] {
        c.close();
    }

    let mut stored = Vec::new();
    for (name, b) in &mesh.brokers {
        stored.push((name.to_string(), b.addr, max_offsets(b.addr, TOPIC).await?));
    }
    Ok(Report {
        main,
        main_consumed,
        on_demand,
        on_demand_consumed,
        stored,
        xds_before,
        xds_after_main,
        xds_after_on_demand,
        control_plane_topics: mesh.control_plane.catalog.topics(),
    })
}

/// The virtual broker of a route answer: the one with queues.
fn virtual_broker(route: &TopicRouteData) -> Option<&rocketmesh_filters::codec::body::QueueData> {
    route
        .queue_datas
        .iter()
        .find(|q| q.write_queue_nums > 0 || q.read_queue_nums > 0)
}

/// Route look-up, then `n` sends over the virtual write queues, as a round-robin producer does.
async fn produce(
    client: &RemotingClient,
    topic: &str,
    n: usize,
    ids: &UniqIdGenerator,
) -> Result<Produced> {
    let route = sdk::route(client, topic, RPC)
        .await
        .with_context(|| format!("route look-up of {topic} through the sidecar"))?
        .with_context(|| format!("the sidecar does not know {topic}"))?;
    let queues = virtual_broker(&route)
        .map(|q| q.write_queue_nums)
        .filter(|&q| q > 0)
        .with_context(|| format!("the route of {topic} has no write queues"))?;
    let mut out = Produced {
        route,
        sent: Vec::with_capacity(n),
        per_queue: BTreeMap::new(),
        problems: Vec::new(),
    };
    for i in 0..n {
        let uniq_key = ids.next_id_now();
        let body = Bytes::from(format!("{topic} sample message {i:03}"));
        let queue = (i % queues as usize) as i32;
        let req = sdk::send_v2(
            PRODUCER_GROUP,
            topic,
            queue,
            queues,
            &uniq_key,
            body.clone(),
        );
        match client.invoke(req, RPC).await {
            Ok(resp) if resp.code() == response_code::SUCCESS => {
                let answered = resp
                    .decode_header::<SendMessageResponseHeader>()
                    .map(|h| h.queue_id)
                    .unwrap_or(queue);
                *out.per_queue.entry(answered).or_default() += 1;
                out.sent.push(Sent { uniq_key, body });
            }
            Ok(resp) => out.problems.push(format!(
                "send {i} to {topic} refused: code {} {}",
                resp.code(),
                resp.remark().unwrap_or_default()
            )),
            Err(e) => out
                .problems
                .push(format!("send {i} to {topic} failed: {e}")),
        }
    }
    Ok(out)
}

/// POP with queueId -1 until every sent message arrived (or the deadline), checking each is one
/// of ours, seen once, with its body; acks alternate between `consumer` and `acker`.
async fn consume(
    consumer: &RemotingClient,
    acker: &RemotingClient,
    topic: &str,
    produced: &Produced,
) -> Consumed {
    let mut out = Consumed::default();
    let expected: HashMap<&str, &Bytes> = produced
        .sent
        .iter()
        .map(|s| (s.uniq_key.as_str(), &s.body))
        .collect();
    let broker = virtual_broker(&produced.route)
        .map(|q| q.broker_name.clone())
        .unwrap_or_default();
    let mut seen: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + CONSUME_LIMIT;
    while seen.len() < expected.len() && Instant::now() < deadline {
        let req = sdk::pop(CONSUMER_GROUP, topic, -1, 32, POP_INVISIBLE, POP_POLL);
        out.pops += 1;
        let resp = match consumer.invoke(req, RPC + POP_POLL).await {
            Ok(r) => r,
            Err(e) => {
                out.problems.push(format!("pop of {topic} failed: {e}"));
                break;
            }
        };
        match resp.code() {
            response_code::SUCCESS => {}
            response_code::POLLING_TIMEOUT | response_code::PULL_NOT_FOUND => {
                out.empty_pops += 1;
                continue;
            }
            code => {
                out.problems.push(format!(
                    "pop of {topic} refused: code {code} {}",
                    resp.remark().unwrap_or_default()
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let messages = match sdk::popped(&resp, &broker) {
            Ok(m) => m,
            Err(e) => {
                out.problems.push(e.to_string());
                continue;
            }
        };
        for msg in messages {
            let key = msg.uniq_key.clone().unwrap_or_default();
            match expected.get(key.as_str()) {
                None => out
                    .problems
                    .push(format!("popped a message that was not sent: {key:?}")),
                Some(body) if **body != msg.body => out
                    .problems
                    .push(format!("message {key} came back with another body")),
                Some(_) if !seen.insert(key.clone()) => out
                    .problems
                    .push(format!("message {key} was received twice")),
                Some(_) => out.received += 1,
            }
            *out.per_broker
                .entry(msg.handle.broker_name.to_string())
                .or_default() += 1;
            let second = out.received % 2 == 0;
            let conn = if second { acker } else { consumer };
            match conn
                .invoke(sdk::ack(CONSUMER_GROUP, topic, &msg.handle), RPC)
                .await
            {
                Ok(r) if r.code() == response_code::SUCCESS => out.acked[usize::from(second)] += 1,
                Ok(r) => out.problems.push(format!(
                    "ack of {key} refused: code {} {}",
                    r.code(),
                    r.remark().unwrap_or_default()
                )),
                Err(e) => out.problems.push(format!("ack of {key} failed: {e}")),
            }
        }
    }
    if seen.len() < expected.len() {
        out.problems.push(format!(
            "only {} of {} {topic} messages arrived within {CONSUME_LIMIT:?}",
            seen.len(),
            expected.len()
        ));
    }
    out
}

/// The broker's own per-queue max offsets of `topic` (messages stored per queue).
async fn max_offsets(addr: SocketAddr, topic: &str) -> Result<Vec<i64>> {
    let client = RemotingClient::connect_timeout(addr, RPC, None)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut out = Vec::new();
    for queue_id in 0..QUEUES {
        let header = GetMaxOffsetRequestHeader {
            topic: topic.to_owned(),
            queue_id,
            ..GetMaxOffsetRequestHeader::default()
        };
        let req = RemotingCommand::request_with_header(request_code::GET_MAX_OFFSET, &header);
        let resp = client.invoke(req, RPC).await?;
        let offset = resp
            .decode_header::<OffsetResponseHeader>()
            .map(|h| h.offset)
            .with_context(|| format!("GET_MAX_OFFSET answer of {addr}"))?;
        out.push(offset);
    }
    client.close();
    Ok(out)
}

impl Report {
    fn problems(&self) -> impl Iterator<Item = &String> {
        self.main
            .problems
            .iter()
            .chain(&self.main_consumed.problems)
            .chain(&self.on_demand.problems)
            .chain(&self.on_demand_consumed.problems)
    }

    fn total_sent(&self) -> usize {
        self.main.sent.len() + self.on_demand.sent.len()
    }

    fn total_received(&self) -> usize {
        self.main_consumed.received + self.on_demand_consumed.received
    }

    fn total_acked(&self) -> usize {
        let c = |x: &Consumed| x.acked[0] + x.acked[1];
        c(&self.main_consumed) + c(&self.on_demand_consumed)
    }

    /// Ok when every sample message was produced, consumed once and acked, and DemoTopic's
    /// messages are all on broker-a.
    fn verdict(&self) -> Result<(), String> {
        let expected = MESSAGES + ON_DEMAND_MESSAGES;
        let mut reasons: Vec<String> = self.problems().take(5).cloned().collect();
        let more = self.problems().count().saturating_sub(reasons.len());
        if more > 0 {
            reasons.push(format!("and {more} more problems"));
        }
        if self.total_sent() != expected {
            reasons.push(format!("{} of {expected} messages sent", self.total_sent()));
        }
        if self.total_received() != expected {
            reasons.push(format!(
                "{} of {expected} messages consumed",
                self.total_received()
            ));
        }
        if self.total_acked() != expected {
            reasons.push(format!(
                "{} of {expected} acks succeeded",
                self.total_acked()
            ));
        }
        for (name, _, offsets) in &self.stored {
            let n: i64 = offsets.iter().sum();
            let want = if name == "broker-a" {
                MESSAGES as i64
            } else {
                0
            };
            if n != want {
                reasons.push(format!(
                    "{name} stored {n} {TOPIC} messages, expected {want}"
                ));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the sample traffic did not complete: {}",
                reasons.join("; ")
            ))
        }
    }

    fn render(&self, mesh: &Mesh) -> String {
        let sidecar = mesh.sidecar.addr;
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "1. Route look-up through the sidecar (GET_ROUTEINFO_BY_TOPIC {TOPIC}):"
        );
        for b in &self.main.route.broker_datas {
            let addrs: Vec<&str> = b.broker_addrs.values().map(String::as_str).collect();
            let queues = self
                .main
                .route
                .queue_datas
                .iter()
                .find(|q| q.broker_name == b.broker_name)
                .map(|q| {
                    format!(
                        "read queues {}, write queues {}  <- the virtual broker",
                        q.read_queue_nums, q.write_queue_nums
                    )
                })
                .unwrap_or_else(|| "no queues (named in pop handles)".into());
            let _ = writeln!(
                w,
                "   broker {:<12} at {}  {queues}",
                b.broker_name,
                addrs.join(",")
            );
        }
        let _ = writeln!(
            w,
            "   every address is the sidecar's ({sidecar}): all traffic comes back through it"
        );

        let _ = writeln!(w);
        let per_queue: Vec<String> = self
            .main
            .per_queue
            .iter()
            .map(|(q, n)| format!("q{q}={n}"))
            .collect();
        let _ = writeln!(
            w,
            "2. Sends: {} of {MESSAGES} SEND_MESSAGE_V2 to {TOPIC} succeeded ({})",
            self.main.sent.len(),
            per_queue.join(" ")
        );
        let _ = writeln!(w, "   stored per broker (each broker's own max offsets):");
        for (name, addr, offsets) in &self.stored {
            let n: i64 = offsets.iter().sum();
            let note = if name == "broker-a" {
                "writable"
            } else {
                "read-only for DemoTopic: never sent to"
            };
            let _ = writeln!(w, "   {name} ({addr}): {n} messages {offsets:?}  ({note})");
        }

        let _ = writeln!(w);
        let c = &self.main_consumed;
        let _ = writeln!(
            w,
            "3. Pops (queueId -1): {} of {} messages received exactly once in {} POPs ({} empty, from brokers with nothing to give)",
            c.received,
            self.main.sent.len(),
            c.pops,
            c.empty_pops
        );
        let served: Vec<String> = c
            .per_broker
            .iter()
            .map(|(b, n)| format!("{b}: {n}"))
            .collect();
        let _ = writeln!(w, "   served by {}", served.join(", "));
        let _ = writeln!(
            w,
            "   acks: {} SUCCESS ({} on the consuming connection, {} on a second connection: the pop handle names its broker, so acks are routed statelessly)",
            c.acked[0] + c.acked[1],
            c.acked[0],
            c.acked[1]
        );

        let _ = writeln!(w);
        let d = &self.on_demand_consumed;
        let _ = writeln!(
            w,
            "4. On-demand xDS: the sidecar subscribes to a topic when traffic first asks for it"
        );
        for (when, v) in [
            ("at start", &self.xds_before),
            (&format!("after {TOPIC}") as &str, &self.xds_after_main),
            (
                &format!("after {ON_DEMAND_TOPIC}") as &str,
                &self.xds_after_on_demand,
            ),
        ] {
            let _ = writeln!(
                w,
                "   {when:<26} topics held [{}]; vhost_subscribes {}, cluster_subscribes {}",
                v.topics.join(", "),
                v.vhost_subscribes,
                v.cluster_subscribes
            );
        }
        let _ = writeln!(
            w,
            "   {ON_DEMAND_TOPIC}: {} sent, {} received, {} acked",
            self.on_demand.sent.len(),
            d.received,
            d.acked[0] + d.acked[1]
        );
        let _ = writeln!(
            w,
            "   the control plane knows {} topics ({}); the sidecar holds only those used",
            self.control_plane_topics.len(),
            self.control_plane_topics.join(", ")
        );

        let _ = writeln!(w);
        let problems: Vec<&String> = self.problems().collect();
        if !problems.is_empty() {
            let _ = writeln!(w, "Problems:");
            for p in problems.iter().take(20) {
                let _ = writeln!(w, "   {p}");
            }
        }
        let expected = MESSAGES + ON_DEMAND_MESSAGES;
        match self.verdict() {
            Ok(()) => {
                let _ = writeln!(
                    w,
                    "Result: OK: {}/{expected} messages produced, {}/{expected} consumed, {}/{expected} acked",
                    self.total_sent(),
                    self.total_received(),
                    self.total_acked()
                );
            }
            Err(reason) => {
                let _ = writeln!(w, "Result: FAILED: {reason}");
            }
        }

        let admin = mesh.admin_url();
        let _ = writeln!(w);
        let _ = writeln!(w, "Admin: {admin}");
        for (path, what) in [
            ("/ready", "readiness"),
            ("/stats/prometheus", "metrics"),
            ("/config_dump", "xDS resources held, upstreams, clients"),
            ("/clusters", "endpoints and upstream pool stats"),
        ] {
            let _ = writeln!(w, "   {admin}{path:<18} {what}");
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "Point an SDK at it: nameserver address = the sidecar, {sidecar}"
        );
        let _ = write!(
            w,
            "   e.g. Java producer.setNamesrvAddr(\"{sidecar}\") or NAMESRV_ADDR={sidecar}; topics {TOPIC}, {ON_DEMAND_TOPIC}, {IDLE_TOPIC}"
        );
        s
    }
}
