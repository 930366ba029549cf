//! The on-demand xDS client against the real control plane process (`rocketmesh control-plane`)
//! with real broker nodes registering with it, all over loopback.
//!
//! Each test starts its own control plane (ports picked free), brokers in-process (registering over
//! Remoting like any broker would), and an in-process `XdsClient` (what the sidecar embeds).

use crate::support::{create_topic, eventually, free_port, start_broker, T};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocketmesh_xds::client::{ClientConfig, RouteError, XdsClient, XdsMode};
use rocketmesh_xds::model::{RouteRequest, TopicRoute};

/// The control plane as a child process, killed on drop.
struct ControlPlane {
    child: Child,
    remoting: SocketAddr,
    xds: SocketAddr,
}

impl ControlPlane {
    /// Without the restart warm-up: these tests expect a topic no broker registered to be
    /// reported missing at once (the warm-up has its own tests).
    fn start(remoting: &str, xds: &str) -> ControlPlane {
        Self::start_with(remoting, xds, &["--warmup-secs", "0"])
    }

    fn start_with(remoting: &str, xds: &str, extra: &[&str]) -> ControlPlane {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
            .args(["control-plane", "--remoting", remoting, "--xds", xds])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn control plane");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(T)
            .expect("control plane did not print its ready line");
        // ready remoting=<addr> xds=<addr>
        let mut remoting = None;
        let mut xds = None;
        for part in line.split_whitespace() {
            if let Some(a) = part.strip_prefix("remoting=") {
                remoting = a.parse().ok();
            }
            if let Some(a) = part.strip_prefix("xds=") {
                xds = a.parse().ok();
            }
        }
        assert!(line.starts_with("ready "), "unexpected first line {line:?}");
        ControlPlane {
            child,
            remoting: remoting.unwrap(),
            xds: xds.unwrap(),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client(xds: SocketAddr, mode: XdsMode) -> XdsClient {
    let mut cfg = ClientConfig::new(xds.to_string());
    cfg.mode = mode;
    cfg.route_timeout = Duration::from_secs(5);
    XdsClient::start(cfg)
}

fn brokers(route: &TopicRoute) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = route
        .all_endpoints()
        .iter()
        .map(|e| (e.broker_name.clone(), e.perm))
        .collect();
    v.sort();
    v
}

fn writable(route: &TopicRoute) -> Vec<String> {
    let sel = route
        .select(&RouteRequest {
            code: 310,
            ..Default::default()
        })
        .unwrap();
    let mut v: Vec<String> = sel
        .endpoints
        .iter()
        .map(|e| e.broker_name.clone())
        .collect();
    v.sort();
    v
}

fn current(client: &XdsClient, topic: &str) -> Option<Arc<TopicRoute>> {
    client.snapshot().route(topic).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_route_and_missing_topics() {
    let cp = ControlPlane::start("127.0.0.1:0", "127.0.0.1:0");
    let b = start_broker("broker-a", "ondemand", Some(cp.remoting)).await;
    create_topic(b.addr, "TopicA", 6, 4).await;
    create_topic(b.addr, "TopicB", 6, 4).await;
    let c = client(cp.xds, XdsMode::Delta);
    assert!(c.wait_connected(T).await);

    let start = Instant::now();
    let route = tokio::time::timeout(T, async {
        loop {
            // The broker's registration may still be in flight: Missing until it lands.
            match c.route("TopicA").await {
                Ok(r) => break r,
                Err(RouteError::Missing(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    eprintln!("first route in {:?}", start.elapsed());
    assert_eq!(route.topic, "TopicA");
    assert_eq!(brokers(&route), vec![("broker-a".to_owned(), 6)]);
    let ep = &route.all_endpoints()[0];
    assert_eq!(ep.address, b.addr.to_string());
    assert_eq!(
        (
            ep.read_queue_num,
            ep.write_queue_num,
            ep.cluster_name.as_str()
        ),
        (4, 4, "DefaultCluster")
    );
    assert_eq!(writable(&route), vec!["broker-a"]);

    // The sidecar holds only what was asked for.
    let snap = c.snapshot();
    assert!(snap.route("TopicB").is_none(), "TopicB was never requested");
    let dump = c.config_dump();
    assert_eq!(dump.topics_ready, vec!["TopicA"]);
    assert_eq!(
        dump.resources.len(),
        2,
        "one virtual host and one cluster: {:?}",
        dump.resources
    );
    assert!(dump.resources.iter().all(|r| !r.version.is_empty()));

    // A hit is served from the snapshot: no new subscription.
    let subs = c.stats().vhost_subscribes;
    c.route("TopicA").await.unwrap();
    assert_eq!(c.stats().vhost_subscribes, subs);

    // An unknown topic is Missing at once, not after the 5 s timeout.
    let start = Instant::now();
    let e = c.route("NoSuchTopic").await.unwrap_err();
    assert_eq!(e, RouteError::Missing("NoSuchTopic".into()));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "missing took {:?}",
        start.elapsed()
    );
    // ... and stays Missing from the snapshot without another round trip.
    let subs = c.stats().vhost_subscribes;
    assert!(matches!(
        c.route("NoSuchTopic").await,
        Err(RouteError::Missing(_))
    ));
    assert_eq!(c.stats().vhost_subscribes, subs);

    // The topic appears later (a broker creates it): the subscription is still open, so the
    // creation is pushed and the negative entry is replaced.
    create_topic(b.addr, "NoSuchTopic", 6, 2).await;
    eventually("created topic pushed", || {
        current(&c, "NoSuchTopic").is_some()
    })
    .await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_changes_reach_the_client() {
    let cp = ControlPlane::start("127.0.0.1:0", "127.0.0.1:0");
    let a = start_broker("broker-a", "changes", Some(cp.remoting)).await;
    create_topic(a.addr, "TopicC", 6, 4).await;
    let c = client(cp.xds, XdsMode::Delta);
    eventually_route(&c, "TopicC").await;

    // A second broker joins with the topic read-only: both serve reads, only broker-a writes.
    let b = start_broker("broker-b", "changes", Some(cp.remoting)).await;
    create_topic(b.addr, "TopicC", 4, 8).await;
    let took = eventually("broker-b pushed", || {
        current(&c, "TopicC").is_some_and(|r| r.all_endpoints().len() == 2)
    })
    .await;
    eprintln!("broker join reached the client in {took:?}");
    let r = current(&c, "TopicC").unwrap();
    assert_eq!(
        brokers(&r),
        vec![("broker-a".to_owned(), 6), ("broker-b".to_owned(), 4)]
    );
    assert_eq!(writable(&r), vec!["broker-a"]);
    let pop = r
        .select(&RouteRequest {
            code: 200050,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(pop.endpoints.len(), 2);

    // broker-a turns the topic read-only: no writable broker left.
    create_topic(a.addr, "TopicC", 4, 4).await;
    eventually("perm change pushed", || {
        current(&c, "TopicC").is_some_and(|r| writable(&r).is_empty())
    })
    .await;

    // broker-a goes away (clean shutdown unregisters): only broker-b remains.
    a.shutdown().await;
    let took = eventually("broker removal pushed", || {
        current(&c, "TopicC").is_some_and(|r| brokers(&r) == vec![("broker-b".to_owned(), 4)])
    })
    .await;
    eprintln!("broker removal reached the client in {took:?}");
    b.shutdown().await;
    // No broker has the topic any more: it is removed, and the client reports it missing.
    eventually("topic removal pushed", || {
        matches!(
            c.snapshot().get("TopicC"),
            Some(rocketmesh_xds::cache::TopicState::Missing { .. })
        )
    })
    .await;
}

async fn eventually_route(c: &XdsClient, topic: &str) -> Arc<TopicRoute> {
    tokio::time::timeout(T, async {
        loop {
            match c.route(topic).await {
                Ok(r) => break r,
                Err(RouteError::Missing(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no route for {topic}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_waiters_one_subscription() {
    let cp = ControlPlane::start("127.0.0.1:0", "127.0.0.1:0");
    let b = start_broker("broker-a", "waiters", Some(cp.remoting)).await;
    create_topic(b.addr, "TopicW", 6, 4).await;
    // Make sure the control plane has it before the burst, so every waiter must get Ok.
    let probe = client(cp.xds, XdsMode::Delta);
    eventually_route(&probe, "TopicW").await;

    let c = client(cp.xds, XdsMode::Delta);
    assert!(c.wait_connected(T).await);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.route("TopicW").await }));
    }
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.topic, "TopicW");
    }
    eprintln!("1000 waiters served in {:?}", start.elapsed());
    let s = c.stats();
    assert_eq!(s.vhost_subscribes, 1, "{s:?}");
    assert_eq!(s.cluster_subscribes, 1, "{s:?}");
    assert!(s.route_waits >= 1 && s.route_waits <= 1000, "{s:?}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_reconnects_and_resubscribes() {
    let (rport, xport) = (free_port(), free_port());
    let (raddr, xaddr) = (format!("127.0.0.1:{rport}"), format!("127.0.0.1:{xport}"));
    let mut cp = ControlPlane::start(&raddr, &xaddr);
    let a = start_broker("broker-a", "restart", Some(cp.remoting)).await;
    create_topic(a.addr, "TopicR", 6, 4).await;
    let c = client(cp.xds, XdsMode::Delta);
    eventually_route(&c, "TopicR").await;
    assert_eq!(c.stats().connects, 1);

    cp.kill();
    eventually("client notices the loss", || !c.is_connected()).await;
    // The last good route keeps serving while the control plane is away.
    let r = c.route("TopicR").await.unwrap();
    assert_eq!(brokers(&r), vec![("broker-a".to_owned(), 6)]);

    let _cp = ControlPlane::start(&raddr, &xaddr);
    // The broker re-registers (1 s interval), the client reconnects and resubscribes.
    eventually("reconnected", || c.stats().connects >= 2).await;
    // A change made after the restart reaches the client through the new stream.
    let b = start_broker("broker-b", "restart", Some(_cp.remoting)).await;
    create_topic(b.addr, "TopicR", 6, 4).await;
    eventually("post-restart change pushed", || {
        current(&c, "TopicR").is_some_and(|r| r.all_endpoints().len() == 2)
    })
    .await;
    assert!(c.config_dump().connected);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_mode_holds_the_catalogue() {
    let cp = ControlPlane::start("127.0.0.1:0", "127.0.0.1:0");
    let b = start_broker("broker-a", "sotw", Some(cp.remoting)).await;
    for t in ["S1", "S2", "S3"] {
        create_topic(b.addr, t, 6, 4).await;
    }
    let c = client(cp.xds, XdsMode::Sotw);
    let r = eventually_route(&c, "S2").await;
    assert_eq!(writable(&r), vec!["broker-a"]);
    eventually("all topics held", || c.snapshot().topics.len() >= 3).await;
    assert!(matches!(c.route("Nope").await, Err(RouteError::Missing(_))));
    assert_eq!(
        c.stats().vhost_subscribes,
        0,
        "SotW subscribes by wildcard, not by name"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_endpoints_are_followed() {
    let cp = ControlPlane::start_with("127.0.0.1:0", "127.0.0.1:0", &["--eds"]);
    let a = start_broker("broker-a", "eds", Some(cp.remoting)).await;
    create_topic(a.addr, "TopicE", 6, 4).await;
    let c = client(cp.xds, XdsMode::Delta);
    let r = eventually_route(&c, "TopicE").await;
    assert_eq!(brokers(&r), vec![("broker-a".to_owned(), 6)]);
    let dump = c.config_dump();
    let types: Vec<&str> = dump.resources.iter().map(|r| r.type_url).collect();
    assert!(
        types.iter().any(|t| t.ends_with("ClusterLoadAssignment")),
        "{types:?}"
    );
    // An endpoint change travels through EDS.
    let b = start_broker("broker-b", "eds", Some(cp.remoting)).await;
    create_topic(b.addr, "TopicE", 6, 4).await;
    eventually("EDS update", || {
        current(&c, "TopicE").is_some_and(|r| r.all_endpoints().len() == 2)
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}
