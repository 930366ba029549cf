//! What every integration test shares: deadlines, polling on observable conditions, loopback
//! ports and clients, temporary directories, and [`Mesh`], which starts a control plane, broker
//! nodes registered with it and sidecars fed by it, in process, and stops them in order.
//! `interop` adds the real C++ SDK and the `rocketmesh` binary as child processes; `netns`
//! network namespaces (root only), for iptables and pod-shaped tests; `venv` the Python venvs
//! tests build for themselves (the C++ SDK, Kubernetes tools).
#![allow(dead_code)]

pub mod interop;
pub mod netns;
pub mod pki;
pub mod venv;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rocketmesh::broker::{self, BrokerConfig, BrokerHandle};
use rocketmesh::control_plane::{self, ControlPlane, ControlPlaneConfig};
use rocketmesh::remoting::RemotingClient;
use rocketmesh::sidecar::{self, Sidecar, SidecarConfig};
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::CreateTopicRequestHeader;
use rocketmesh_filters::codec::RemotingCommand;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deadline of one request or one wait step.
pub const T: Duration = Duration::from_secs(10);

/// `127.0.0.1:0`: every test binds loopback and lets the kernel pick the port.
pub fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Runs a test body with an overall deadline, so a hang fails the test instead of CI.
pub async fn bounded<F: Future<Output = ()>>(limit: Duration, f: F) {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its deadline of {limit:?}"));
}

/// Polls `cond` every 10 ms until it holds (returns how long that took); fails the test naming
/// `what` after [`T`].
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) -> Duration {
    eventually_within(what, T, cond).await
}

/// [`eventually`] with its own deadline.
pub async fn eventually_within(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// [`eventually_within`] for a condition that has to await (a scrape, a request).
pub async fn eventually_async<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !cond().await {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The blocking form of [`eventually`], for tests that drive child processes from a thread.
pub fn eventually_blocking(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh, empty directory for one test's data (unique within the run; removed first if an
/// earlier run left it), under cargo's per-target temporary directory, not the machine's `/tmp`.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("it")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A Remoting client connected to `addr`.
pub async fn connect(addr: SocketAddr) -> RemotingClient {
    RemotingClient::connect_timeout(addr, T, None)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// One request and its response (panics on a transport error).
pub async fn call(c: &RemotingClient, req: RemotingCommand) -> RemotingCommand {
    c.invoke(req, T).await.unwrap()
}

/// `GET path` over HTTP/1.1 with `Connection: close`: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut buf))
        .await
        .expect("admin answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A broker node named `name` with its data under a fresh directory for `test`, registering
/// with `namesrv` every second when given.
pub async fn start_broker(name: &str, test: &str, namesrv: Option<SocketAddr>) -> BrokerHandle {
    start_broker_with(name, test, namesrv, |_| {}).await
}

/// [`start_broker`] with a last word on its configuration.
pub async fn start_broker_with(
    name: &str,
    test: &str,
    namesrv: Option<SocketAddr>,
    tweak: impl FnOnce(&mut BrokerConfig),
) -> BrokerHandle {
    let mut cfg = BrokerConfig::new(local(), temp_dir(&format!("{test}-{name}")));
    cfg.name = name.into();
    cfg.namesrv = namesrv.map(|a| a.to_string());
    cfg.register_interval = Duration::from_secs(1);
    tweak(&mut cfg);
    broker::start(cfg).await.unwrap()
}

/// A control plane (nameserver role + ADS) on loopback, without the restart warm-up: tests
/// start their brokers after it and expect unknown topics to be absent at once (the warm-up
/// has tests of its own).
pub async fn start_control_plane() -> ControlPlane {
    let mut cfg = ControlPlaneConfig::new(local());
    cfg.xds = Some(local());
    cfg.warmup = Duration::ZERO;
    control_plane::start(cfg).await.unwrap()
}

/// A sidecar, once it says it is ready.
pub async fn start_sidecar(cfg: SidecarConfig) -> Sidecar {
    let s = sidecar::start(cfg).await.unwrap();
    assert!(s.wait_ready(T).await, "sidecar not ready");
    s
}

/// A control plane, broker nodes registered with it, and sidecars taking their routes from it.
pub struct Mesh {
    pub cp: ControlPlane,
    pub brokers: Vec<BrokerHandle>,
    pub sidecars: Vec<Sidecar>,
}

impl Mesh {
    /// Starts the control plane and one broker per name (data under `test`).
    pub async fn start(test: &str, brokers: &[&str]) -> Mesh {
        let cp = start_control_plane().await;
        let mut started = Vec::new();
        for name in brokers {
            started.push(start_broker(name, test, Some(cp.remoting_addr)).await);
        }
        Mesh {
            cp,
            brokers: started,
            sidecars: Vec::new(),
        }
    }

    /// The broker started as `brokers[i]`.
    pub fn broker(&self, i: usize) -> &BrokerHandle {
        &self.brokers[i]
    }

    /// A sidecar configuration pointing at this mesh's control plane.
    pub fn sidecar_config(&self) -> SidecarConfig {
        let mut cfg = SidecarConfig::new(local());
        cfg.xds = self.cp.xds_addr.map(|a| a.to_string());
        cfg.route_timeout = Duration::from_secs(3);
        cfg.drain = Duration::from_secs(3);
        cfg
    }

    /// Starts a sidecar with `cfg` and keeps it; returns its SDK-facing address.
    pub async fn add_sidecar(&mut self, cfg: SidecarConfig) -> SocketAddr {
        let s = start_sidecar(cfg).await;
        let addr = s.addr;
        self.sidecars.push(s);
        addr
    }

    /// Stops sidecars, then brokers, then the control plane.
    pub async fn shutdown(self) {
        for s in self.sidecars {
            s.shutdown().await;
        }
        for b in self.brokers {
            b.shutdown().await;
        }
        self.cp.shutdown().await;
    }
}

/// `N` distinct free ports (all held until every one is picked: two `free_port` calls in a row
/// can return the same port).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// A port free on loopback right now (for processes that must restart on the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// UPDATE_AND_CREATE_TOPIC on one broker: `perm`, `queues` read and write queues. The broker
/// re-registers at once when it has a nameserver.
pub async fn create_topic(broker: SocketAddr, topic: &str, perm: i32, queues: i32) {
    let client = RemotingClient::connect_timeout(broker, T, None)
        .await
        .unwrap();
    create_topic_on(&client, topic, perm, queues).await;
    client.close();
}

/// UPDATE_AND_CREATE_TOPIC over an open connection (e.g. a TLS one).
pub async fn create_topic_on(client: &RemotingClient, topic: &str, perm: i32, queues: i32) {
    let h = CreateTopicRequestHeader {
        topic: topic.into(),
        default_topic: "TBW102".into(),
        read_queue_nums: queues,
        write_queue_nums: queues,
        perm,
        topic_filter_type: "SINGLE_TAG".into(),
        order: false,
        ..Default::default()
    };
    let resp = client
        .invoke(
            RemotingCommand::request_with_header(request_code::UPDATE_AND_CREATE_TOPIC, &h),
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
}
