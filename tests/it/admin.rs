//! The admin server over real loopback HTTP/1.1. All metric assertions live in this file: the
//! `metrics` recorder is process-wide and `rocketmesh::metrics::install` is idempotent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocketmesh::admin::{AdminConfig, AdminServer, AdminSource, Readiness, Ready};
use rocketmesh::metrics::{self, Counter, Gauge, Stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::eventually;

const STEP: Duration = Duration::from_secs(5);

struct TestSource {
    ready: Ready,
    /// Published before each scrape, as the sidecar's are.
    stats: Option<Stats>,
}

impl AdminSource for TestSource {
    fn ready(&self) -> Readiness {
        self.ready.readiness()
    }

    fn config_dump(&self) -> serde_json::Value {
        serde_json::json!({
            "clusters": [{"name": "broker-a", "endpoints": ["127.0.0.1:10911"]}],
            "xds": {"cds": {"version": "3", "nonce": "n3"}},
        })
    }

    fn clusters(&self) -> String {
        "broker-a::127.0.0.1:10911::cx_active::1\nbroker-a::127.0.0.1:10911::health_flags::healthy\n"
            .to_owned()
    }

    fn publish_stats(&self) {
        if let Some(s) = &self.stats {
            s.publish();
        }
    }
}

fn loopback() -> AdminConfig {
    AdminConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..AdminConfig::default()
    }
}

async fn start(config: AdminConfig, ready: Ready) -> (AdminServer, CancellationToken) {
    start_with(config, ready, None).await
}

async fn start_with(
    config: AdminConfig,
    ready: Ready,
    stats: Option<Stats>,
) -> (AdminServer, CancellationToken) {
    let shutdown = CancellationToken::new();
    let server = AdminServer::start(
        config,
        Arc::new(TestSource { ready, stats }),
        metrics::install(),
        shutdown.clone(),
    )
    .await
    .expect("admin server starts");
    (server, shutdown)
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response whose body is delimited by content-length (hyper sets it for full bodies).
async fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(n > 0, "connection closed before a full response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("utf-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("content-length"))
        .expect("content-length header");
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Reply {
        status,
        headers,
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!("{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        read_reply(&mut stream).await
    };
    tokio::time::timeout(STEP, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} timed out"))
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path).await
}

/// Reads until EOF (or a reset); fails the test if the peer keeps the connection open.
async fn expect_closed(stream: &mut TcpStream) {
    let mut sink = Vec::new();
    let eof = tokio::time::timeout(STEP, stream.read_to_end(&mut sink)).await;
    assert!(eof.is_ok(), "server kept the connection open");
}

#[tokio::test]
async fn readiness_follows_blockers() {
    let ready = Ready::new();
    let listeners = ready.block("listeners");
    let config = ready.block("first config");
    let (server, shutdown) = start(loopback(), ready.clone()).await;
    let addr = server.local_addr();

    let reply = get(addr, "/ready").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.body.contains("waiting for listeners"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("waiting for first config"),
        "{}",
        reply.body
    );

    drop(listeners);
    let reply = get(addr, "/ready").await;
    assert_eq!(reply.status, 503);
    assert!(!reply.body.contains("listeners"), "{}", reply.body);
    assert_eq!(ready.pending(), vec!["first config".to_owned()]);

    let waiter = {
        let ready = ready.clone();
        tokio::spawn(async move { ready.wait().await })
    };
    drop(config);
    tokio::time::timeout(STEP, waiter)
        .await
        .expect("wait() returns once the last blocker drops")
        .expect("waiter task");
    assert!(ready.is_ready());
    let reply = get(addr, "/ready").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "LIVE\n");

    shutdown.cancel();
    tokio::time::timeout(STEP, server.stopped())
        .await
        .expect("stops");
}

#[tokio::test]
async fn routes_answer() {
    let (server, shutdown) = start(loopback(), Ready::new()).await;
    let addr = server.local_addr();

    let reply = get(addr, "/healthz").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));

    let reply = get(addr, "/").await;
    assert_eq!(reply.status, 200);
    for route in [
        "/ready",
        "/healthz",
        "/stats/prometheus",
        "/config_dump",
        "/clusters",
    ] {
        assert!(reply.body.contains(route), "index lacks {route}");
    }

    let reply = get(addr, "/config_dump?resource=clusters").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let dump: serde_json::Value = serde_json::from_str(&reply.body).expect("valid JSON");
    assert_eq!(dump["xds"]["cds"]["nonce"], "n3");
    assert!(reply.body.contains("\n  "), "pretty-printed");

    let reply = get(addr, "/clusters").await;
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/plain")));
    assert!(reply
        .body
        .contains("broker-a::127.0.0.1:10911::cx_active::1"));

    let reply = get(addr, "/no/such/route").await;
    assert_eq!(reply.status, 404);

    let reply = request(addr, "POST", "/ready").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET"));
    let reply = request(addr, "DELETE", "/stats/prometheus").await;
    assert_eq!(reply.status, 405);

    shutdown.cancel();
    tokio::time::timeout(STEP, server.stopped())
        .await
        .expect("stops");
}

#[tokio::test]
async fn prometheus_exposition() {
    let handle = metrics::install();
    // Idempotent: a second install is the same recorder.
    let again = metrics::install();
    let stats = Stats::new("admin_test").expect("valid prefix");
    stats.inc(Counter::Request);
    stats.inc(Counter::Request);
    stats.add(Counter::SendMessageV2, 5);
    let active = stats.track(Gauge::SendMessageV2Active);
    stats.upstream_rq_time(310, Duration::from_millis(3));
    stats.upstream_rq_time(200050, Duration::from_millis(40));

    let (server, shutdown) = start_with(loopback(), Ready::new(), Some(stats.clone())).await;
    let reply = get(server.local_addr(), "/stats/prometheus").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = reply.body;
    assert!(body.contains("\nrocketmq_admin_test_request 2\n"), "{body}");
    assert!(
        body.contains("\nrocketmq_admin_test_send_message_v2 5\n"),
        "{body}"
    );
    assert!(
        body.contains("\nrocketmq_admin_test_send_message_v2_active 1\n"),
        "{body}"
    );
    // Every stat is registered up front, so untouched ones show as zero.
    assert!(
        body.contains("\nrocketmq_admin_test_renewals 0\n"),
        "{body}"
    );
    assert!(
        body.contains("\nrocketmq_admin_test_downstream_connections 0\n"),
        "{body}"
    );
    assert!(
        body.contains("# HELP rocketmq_admin_test_request "),
        "{body}"
    );
    assert!(
        body.contains("rocketmq_admin_test_upstream_rq_time_bucket{code=\"310\",le=\"0.005\"} 1"),
        "{body}"
    );
    assert!(
        body.contains(
            "rocketmq_admin_test_upstream_rq_time_bucket{code=\"200050\",le=\"0.025\"} 0"
        ),
        "{body}"
    );
    assert!(
        body.contains("rocketmq_admin_test_upstream_rq_time_count{code=\"200050\"} 1"),
        "{body}"
    );

    drop(active);
    stats.publish();
    assert!(again
        .render()
        .contains("\nrocketmq_admin_test_send_message_v2_active 0\n"));
    assert!(handle
        .render()
        .contains("\nrocketmq_admin_test_request 2\n"));

    shutdown.cancel();
    tokio::time::timeout(STEP, server.stopped())
        .await
        .expect("stops");
}

#[tokio::test]
async fn histogram_code_labels_are_bounded() {
    let handle = metrics::install();
    let stats = Stats::new("admin_bound").expect("valid prefix");
    for code in 0..(metrics::MAX_CODE_LABELS as i32 + 10) {
        stats.upstream_rq_time(1000 + code, Duration::from_micros(50));
    }
    let body = handle.render();
    let labelled = body
        .lines()
        .filter(|l| l.starts_with("rocketmq_admin_bound_upstream_rq_time_count{"))
        .count();
    assert_eq!(labelled, metrics::MAX_CODE_LABELS + 1, "{body}");
    assert!(
        body.contains("rocketmq_admin_bound_upstream_rq_time_count{code=\"other\"} 10"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_however_many_idle_connections_are_held() {
    const IDLE: usize = 1_000;
    let wanted = (2 * IDLE + 512) as u64;
    let got = rlimit::increase_nofile_limit(wanted).unwrap_or(0);
    assert!(
        got >= wanted,
        "RLIMIT_NOFILE hard limit too low: {got} < {wanted}"
    );
    let config = AdminConfig {
        max_connections: 64,
        ..loopback()
    };
    let (server, shutdown) = start(config, Ready::new()).await;
    let addr = server.local_addr();

    // A thousand connections that never send a request, held open by the client.
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Probes are answered (each one takes the slot of the connection idle longest).
    for path in ["/ready", "/healthz", "/ready"] {
        let started = Instant::now();
        let reply = get(addr, path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    // The cap still holds: the server serves at most max_connections (for a moment as many
    // again, while the connections they replace close), and closed the idle ones it replaced.
    eventually("the replaced idle connections closed", || {
        server.connections() <= 64
    })
    .await;
    let mut closed = 0;
    for s in &idle {
        let mut buf = [0u8; 1];
        match s.try_read(&mut buf) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => closed += 1,
            Ok(_) => panic!("an idle connection got bytes"),
            Err(_) => {}
        }
    }
    assert!(
        closed >= IDLE - 2 * 64,
        "only {closed} of {IDLE} idle connections were closed"
    );
    drop(idle);

    // Slow clients stuck inside a request head hold no probe off either: with every slot
    // taken by them, a probe takes the slot of the oldest and is answered.
    let config = AdminConfig {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(30),
        ..loopback()
    };
    let (busy_server, busy_shutdown) = start(config, Ready::new()).await;
    let busy_addr = busy_server.local_addr();
    let mut partial = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(busy_addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: ad")
            .await
            .expect("write");
        partial.push(s);
    }
    let reply = get(busy_addr, "/healthz").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    eventually("the replaced stuck connections closed", || {
        busy_server.connections() <= 4
    })
    .await;
    drop(partial);
    for (server, shutdown) in [(server, shutdown), (busy_server, busy_shutdown)] {
        shutdown.cancel();
        tokio::time::timeout(STEP, server.stopped())
            .await
            .expect("stopped");
    }
}

#[tokio::test]
async fn keep_alive_is_bounded_per_connection() {
    let config = AdminConfig {
        max_requests_per_connection: 3,
        ..loopback()
    };
    let (server, shutdown) = start(config, Ready::new()).await;
    let mut stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    for i in 1..=3 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
            .await
            .expect("write");
        let reply = tokio::time::timeout(STEP, read_reply(&mut stream))
            .await
            .expect("reply");
        assert_eq!(reply.status, 200);
        let close = reply
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        assert_eq!(close, i == 3, "request {i}");
    }
    expect_closed(&mut stream).await;

    shutdown.cancel();
    tokio::time::timeout(STEP, server.stopped())
        .await
        .expect("stops");
}

#[tokio::test]
async fn idle_keep_alive_connections_time_out() {
    let config = AdminConfig {
        header_read_timeout: Duration::from_millis(300),
        ..loopback()
    };
    let (server, shutdown) = start(config, Ready::new()).await;
    let mut stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .expect("write");
    let reply = tokio::time::timeout(STEP, read_reply(&mut stream))
        .await
        .expect("reply");
    assert_eq!(reply.status, 200);
    let started = Instant::now();
    expect_closed(&mut stream).await;
    assert!(started.elapsed() < Duration::from_secs(3));

    shutdown.cancel();
    tokio::time::timeout(STEP, server.stopped())
        .await
        .expect("stops");
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let config = AdminConfig {
        drain_deadline: Duration::from_secs(2),
        ..loopback()
    };
    let (server, shutdown) = start(config, Ready::new()).await;
    let addr = server.local_addr();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .expect("write");
    let reply = tokio::time::timeout(STEP, read_reply(&mut stream))
        .await
        .expect("reply");
    assert_eq!(reply.status, 200);
    assert!(reply.header("connection").is_none(), "kept alive");

    let started = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), server.stopped())
        .await
        .expect("an idle keep-alive connection does not hold shutdown up");
    // Idle connections close at once, well inside the drain deadline.
    assert!(started.elapsed() < Duration::from_secs(1));
    expect_closed(&mut stream).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn shutdown_forces_stuck_connections_at_the_deadline() {
    let config = AdminConfig {
        drain_deadline: Duration::from_millis(300),
        header_read_timeout: Duration::from_secs(30),
        ..loopback()
    };
    let (server, shutdown) = start(config, Ready::new()).await;
    let addr = server.local_addr();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // Half a request head: the connection is busy, not idle, so graceful close waits on it.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: ad")
        .await
        .expect("write");
    // Served (not still in the accept queue, where shutdown would not wait on it).
    eventually("the stuck connection accepted", || {
        server.connections() == 1
    })
    .await;

    let started = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), server.stopped())
        .await
        .expect("shutdown ends at the drain deadline");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    expect_closed(&mut stream).await;
}

#[tokio::test]
async fn published_stats_add_up_and_follow_each_change() {
    let handle = metrics::install();
    // Two `Stats` of one prefix (two sidecars in one process) add up, as shared handles would.
    let a = Stats::new("admin_publish").expect("valid prefix");
    let b = Stats::new("admin_publish").expect("valid prefix");
    a.add(Counter::Request, 3);
    b.inc(Counter::Request);
    let held = a.track(Gauge::RequestActive);
    b.gauge_add(Gauge::RequestActive, 2);
    a.gauge_set(Gauge::OutstandingHandles, 7);
    let body = handle.render();
    assert!(
        body.contains("\nrocketmq_admin_publish_request 0\n"),
        "nothing reaches the recorder before a publish: {body}"
    );
    a.publish();
    b.publish();
    a.publish(); // nothing moved since: no change
    assert_published(
        &handle.render(),
        &[
            ("request", 4),
            ("request_active", 3),
            ("outstanding_handles", 7),
        ],
    );
    assert_eq!(a.count(Counter::Request), 3);
    assert_eq!(a.level(Gauge::RequestActive), 1);

    drop(held);
    b.gauge_add(Gauge::RequestActive, -2);
    a.gauge_set(Gauge::OutstandingHandles, 2);
    a.inc(Counter::Request);
    a.publish();
    b.publish();
    assert_published(
        &handle.render(),
        &[
            ("request", 5),
            ("request_active", 0),
            ("outstanding_handles", 2),
        ],
    );
}

/// Every `(stat, value)` appears in `body` as `rocketmq_admin_publish_<stat> <value>`.
fn assert_published(body: &str, expected: &[(&str, i64)]) {
    for (stat, value) in expected {
        let line = format!("\nrocketmq_admin_publish_{stat} {value}\n");
        assert!(body.contains(&line), "no {line:?} in:\n{body}");
    }
}
