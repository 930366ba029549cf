//! The broker and control-plane processes as an operator runs them: the real binary with
//! `--admin`, metrics scraped from `/stats/prometheus`, SIGTERM, `/ready` turning 503 while the
//! drain lasts, exit 0 within the deadline, and (broker) the messages on disk after a restart.
//!
//! No fixed sleeps: every wait polls an observable condition with a bound.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rocketmesh::remoting::RemotingClient;
use rocketmesh::sdk;
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::{GetMaxOffsetRequestHeader, OffsetResponseHeader};
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_xds::client::{ClientConfig, XdsClient};

/// Bound of every wait (the machine may be busy).
const LIMIT: Duration = Duration::from_secs(30);
const RPC: Duration = Duration::from_secs(5);
const TOPIC: &str = "LifecycleTopic";
const QUEUES: i32 = 4;

/// A `rocketmesh` child process, killed if the test ends before it does.
struct Proc {
    child: Child,
    /// What followed `ready ` on its first stdout line.
    ready: String,
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
            .args(["--log", "warn"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting rocketmesh");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let line = rx
            .recv_timeout(LIMIT)
            .unwrap_or_else(|e| panic!("rocketmesh {args:?} printed no ready line: {e}"));
        let ready = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Proc { child, ready }
    }

    /// The address after `key=` in the ready line (`None` for the first, unnamed field).
    fn addr(&self, key: Option<&str>) -> SocketAddr {
        let field = match key {
            None => self.ready.split_whitespace().next(),
            Some(k) => self
                .ready
                .split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('=')),
        };
        field
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("no {key:?} address in {:?}", self.ready))
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits (bounded) for the process to exit.
    async fn exited(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < end, "did not exit within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.1: (status code, body); `None` when the server is gone.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// The value of the series `series` (name with its labels, as rendered) in a scrape.
fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

fn scrape(admin: SocketAddr) -> String {
    let (status, body) = http_get(admin, "/stats/prometheus").expect("scrape");
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `cond` until it holds; panics with `what` after [`LIMIT`].
async fn eventually<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    crate::support::eventually_async(what, LIMIT, cond).await
}

/// Messages stored in `TOPIC`, from the broker's own max offsets.
async fn stored(broker: SocketAddr) -> i64 {
    let client = RemotingClient::connect_timeout(broker, RPC, None)
        .await
        .expect("connect to the broker");
    let mut n = 0;
    for queue_id in 0..QUEUES {
        let header = GetMaxOffsetRequestHeader {
            topic: TOPIC.to_owned(),
            queue_id,
            ..GetMaxOffsetRequestHeader::default()
        };
        let req = RemotingCommand::request_with_header(request_code::GET_MAX_OFFSET, &header);
        let resp = client.invoke(req, RPC).await.expect("GET_MAX_OFFSET");
        n += resp
            .decode_header::<OffsetResponseHeader>()
            .expect("offset header")
            .offset;
    }
    client.close();
    n
}

/// A nameserver that accepts registrations and never answers anything else: the broker is
/// registered (so `/ready`), and its UNREGISTER_BROKER then waits until the drain deadline, which
/// keeps the drain open long enough to look at it.
struct RegisterOnly;

impl rocketmesh::remoting::Handler for RegisterOnly {
    async fn handle(
        self: &std::sync::Arc<Self>,
        req: RemotingCommand,
        _conn: &std::sync::Arc<rocketmesh::remoting::Connection>,
    ) -> Option<RemotingCommand> {
        if req.code() == request_code::REGISTER_BROKER {
            let encoding = rocketmesh_filters::codec::ResponseEncoding::Json;
            return Some(req.response_to(response_code::SUCCESS, encoding));
        }
        std::future::pending().await
    }
}

async fn silent_namesrv() -> (SocketAddr, rocketmesh::remoting::Server) {
    let listener = rocketmesh::remoting::bind("127.0.0.1:0".parse().unwrap(), 16).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = rocketmesh::remoting::Server::start(
        listener,
        std::sync::Arc::new(RegisterOnly),
        rocketmesh::remoting::ServerConfig::default(),
    );
    (addr, server)
}

fn broker_args<'a>(data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "broker",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_counts_appends_drains_on_sigterm_and_keeps_messages() {
    const SENT: usize = 40;
    const DRAIN: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("broker");
    let data = data.to_str().expect("utf-8 path");
    let (namesrv, _held) = silent_namesrv().await;
    let namesrv = namesrv.to_string();
    let mut broker = Proc::start(&broker_args(
        data,
        &["--drain-timeout", "3s", "--namesrv", &namesrv],
    ));
    let addr = broker.addr(None);
    let admin = broker.addr(Some("admin"));
    assert!(admin.ip().is_loopback());
    eventually("/ready once registered", || async {
        http_get(admin, "/ready").map(|r| r.0) == Some(200)
    })
    .await;
    assert_eq!(http_get(admin, "/healthz").map(|r| r.0), Some(200));

    let client = RemotingClient::connect_timeout(addr, RPC, None)
        .await
        .expect("connect");
    for i in 0..SENT {
        let body = Bytes::from(format!("lifecycle message {i}"));
        let req = sdk::send_v2(
            "lifecycle_pg",
            TOPIC,
            (i % QUEUES as usize) as i32,
            QUEUES,
            &format!("LIFECYCLE{i:08}"),
            body,
        );
        let resp = client.invoke(req, RPC).await.expect("send");
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    }
    client.close();

    let series = r#"rocketmesh_broker_messages_appended_total{broker="broker-a"}"#;
    let text = scrape(admin);
    assert_eq!(metric(&text, series), Some(SENT as f64), "{text}");
    let bytes = metric(
        &text,
        r#"rocketmesh_broker_appended_bytes_total{broker="broker-a"}"#,
    );
    assert!(bytes.is_some_and(|b| b > 0.0), "{text}");
    eventually("the store size gauge", || async {
        metric(
            &scrape(admin),
            r#"rocketmesh_broker_store_size_bytes{broker="broker-a"}"#,
        ) == bytes
    })
    .await;

    let asked = Instant::now();
    broker.sigterm();
    // /ready answers 503 while the drain lasts (held open by the silent nameserver).
    eventually("/ready answering 503 during the drain", || async {
        http_get(admin, "/ready")
            .is_some_and(|(status, body)| status == 503 && body.contains("draining"))
    })
    .await;
    let status = broker.exited(DRAIN + Duration::from_secs(10)).await;
    assert!(status.success(), "broker exit {status}");
    assert!(
        asked.elapsed() < DRAIN + Duration::from_secs(10),
        "took {:?}",
        asked.elapsed()
    );

    // Restarted on the same data directory: every message is there.
    let mut again = Proc::start(&broker_args(data, &[]));
    assert_eq!(stored(again.addr(None)).await, SENT as i64);
    let admin = again.addr(Some("admin"));
    // A new process counts from zero (the series may not be rendered before its first append).
    assert_eq!(metric(&scrape(admin), series).unwrap_or(0.0), 0.0);
    again.sigterm();
    let status = again.exited(LIMIT).await;
    assert!(status.success(), "restarted broker exit {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_counts_brokers_and_streams_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = Proc::start(&[
        "control-plane",
        "--remoting",
        "127.0.0.1:0",
        "--xds",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--drain-timeout",
        "2s",
    ]);
    let remoting = cp.addr(Some("remoting"));
    let xds = cp.addr(Some("xds"));
    let admin = cp.addr(Some("admin"));
    assert!(admin.ip().is_loopback());
    assert_eq!(http_get(admin, "/ready").map(|r| r.0), Some(200));
    let brokers = "rocketmesh_cp_registered_brokers";
    assert_eq!(metric(&scrape(admin), brokers), Some(0.0));

    // A real broker registers (and unregisters when it stops).
    let data = dir.path().join("b");
    let data = data.to_str().expect("utf-8 path");
    let namesrv = remoting.to_string();
    let mut broker = Proc::start(&broker_args(data, &["--namesrv", &namesrv]));
    eventually("one registered broker", || async {
        metric(&scrape(admin), brokers) == Some(1.0)
    })
    .await;

    // An xDS client's delta stream shows in the streams gauge.
    let client = XdsClient::start(ClientConfig::new(xds.to_string()));
    assert!(
        client.wait_connected(LIMIT).await,
        "xDS client not connected"
    );
    let delta = r#"rocketmesh_cp_xds_streams{flavour="delta"}"#;
    eventually("one delta stream", || async {
        metric(&scrape(admin), delta) == Some(1.0)
    })
    .await;
    client.shutdown();
    eventually("no delta stream", || async {
        metric(&scrape(admin), delta) == Some(0.0)
    })
    .await;

    broker.sigterm();
    assert!(broker.exited(LIMIT).await.success(), "broker exit");
    eventually("the broker unregistered", || async {
        metric(&scrape(admin), brokers) == Some(0.0)
    })
    .await;

    cp.sigterm();
    let status = cp
        .exited(Duration::from_secs(2) + Duration::from_secs(10))
        .await;
    assert!(status.success(), "control plane exit {status}");
    assert!(
        http_get(admin, "/ready").is_none(),
        "the admin server outlived the process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_nameserver_does_not_resolve_stays_up_and_unready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("broker");
    let data = data.to_str().expect("utf-8 path");
    let broker = Proc::start(&broker_args(
        data,
        &["--namesrv", "rocketmesh-cp.no-such-namespace.invalid:9876"],
    ));
    let admin = broker.addr(Some("admin"));
    // Retried (with backoff) in the background; /ready names what it waits for, the broker
    // itself serves (a standalone client can still use it).
    for _ in 0..3 {
        let (code, body) = http_get(admin, "/ready").expect("admin answers");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("namesrv"), "{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(stored(broker.addr(None)).await >= 0);
    assert_eq!(http_get(admin, "/healthz").map(|r| r.0), Some(200));
}
