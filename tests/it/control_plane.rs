//! The control plane over loopback: real broker nodes register with it, routes reach the catalog
//! and Remoting clients; brokers leave by unregistering, by losing their connection or by going
//! silent; upstream nameserver mode; static file load and reload.

use std::net::SocketAddr;
use std::time::Duration;

use rocketmesh::broker::{BrokerConfig, BrokerHandle};
use rocketmesh::control_plane::{self, ControlPlane, ControlPlaneConfig};
use rocketmesh::remoting::RemotingClient;
use rocketmesh_filters::codec::body::{
    ClusterInfo, RegisterBrokerBody, TopicConfig, TopicRouteData,
};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::*;
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_xds::catalog::Lookup;

const RPC: Duration = Duration::from_secs(5);
const TEST_LIMIT: Duration = Duration::from_secs(60);

use crate::support::{bounded, eventually_within, local, start_broker_with, temp_dir};

async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(15), cond).await;
}

async fn broker_node(
    name: &str,
    namesrv: SocketAddr,
    tweak: impl FnOnce(&mut BrokerConfig),
) -> BrokerHandle {
    start_broker_with(name, "cp", Some(namesrv), tweak).await
}

/// A control plane without the restart warm-up unless `tweak` sets one (see
/// `support::start_control_plane`).
async fn control_plane(tweak: impl FnOnce(&mut ControlPlaneConfig)) -> ControlPlane {
    let mut cfg = ControlPlaneConfig::new(local());
    cfg.warmup = Duration::ZERO;
    tweak(&mut cfg);
    control_plane::start(cfg).await.unwrap()
}

async fn client(addr: SocketAddr) -> RemotingClient {
    RemotingClient::connect_timeout(addr, RPC, None)
        .await
        .unwrap()
}

async fn route_info(addr: SocketAddr, topic: &str) -> RemotingCommand {
    let h = GetRouteInfoRequestHeader {
        topic: topic.into(),
        accept_standard_json_only: None,
    };
    client(addr)
        .await
        .invoke(
            RemotingCommand::request_with_header(rc::GET_ROUTEINFO_BY_TOPIC, &h),
            RPC,
        )
        .await
        .unwrap()
}

fn perms(cp: &ControlPlane, topic: &str) -> Vec<(String, u32)> {
    cp.catalog
        .topic_route(topic)
        .map(|r| {
            r.brokers
                .iter()
                .map(|b| (b.broker_name.clone(), b.perm))
                .collect()
        })
        .unwrap_or_default()
}

/// REGISTER_BROKER as a broker sends it, from a raw client.
fn register_cmd(
    name: &str,
    addr: &str,
    id: i64,
    topics: &[(&str, i32)],
    compressed: bool,
) -> RemotingCommand {
    let mut body = RegisterBrokerBody::default();
    for (t, perm) in topics {
        body.topic_config_serialize_wrapper
            .topic_config_table
            .insert(
                (*t).to_owned(),
                TopicConfig {
                    perm: *perm,
                    read_queue_nums: 4,
                    write_queue_nums: 4,
                    ..TopicConfig::new(*t)
                },
            );
    }
    let h = RegisterBrokerRequestHeader {
        broker_name: name.into(),
        broker_addr: addr.into(),
        cluster_name: "RawCluster".into(),
        ha_server_addr: format!("{addr}-ha"),
        broker_id: id,
        compressed: Some(compressed),
        ..RegisterBrokerRequestHeader::default()
    };
    RemotingCommand::request_with_header(rc::REGISTER_BROKER, &h)
        .with_body(body.encode(compressed).unwrap())
}

async fn register(c: &RemotingClient, cmd: RemotingCommand) -> RemotingCommand {
    let resp = c.invoke(cmd, RPC).await.unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    resp
}

#[tokio::test]
async fn broker_routes_reach_the_catalog_and_follow_perm_and_shutdown() {
    bounded(TEST_LIMIT, async {
        let cp = control_plane(|_| {}).await;
        let a = broker_node("broker-a", cp.remoting_addr, |_| {}).await;
        // Creating a topic on broker-a re-registers it at once.
        let create = CreateTopicRequestHeader {
            topic: "TopicX".into(),
            default_topic: "TBW102".into(),
            read_queue_nums: 4,
            write_queue_nums: 4,
            perm: 6,
            topic_filter_type: "SINGLE_TAG".into(),
            order: false,
            ..CreateTopicRequestHeader::default()
        };
        let resp = client(a.addr)
            .await
            .invoke(
                RemotingCommand::request_with_header(rc::UPDATE_AND_CREATE_TOPIC, &create),
                RPC,
            )
            .await
            .unwrap();
        assert_eq!(resp.code(), response_code::SUCCESS);
        wait_until("TopicX from broker-a", || {
            perms(&cp, "TopicX") == [("broker-a".to_owned(), 6)]
        })
        .await;
        let spec = cp.catalog.topic_route("TopicX").unwrap();
        assert_eq!(spec.brokers[0].addrs[&0], a.addr.to_string());
        assert_eq!(spec.brokers[0].cluster_name, "DefaultCluster");
        assert_eq!(
            (
                spec.brokers[0].read_queue_num,
                spec.brokers[0].write_queue_num
            ),
            (4, 4)
        );
        assert!(cp
            .catalog
            .vhost("TopicX", "rocketmq/TopicX")
            .found()
            .is_some());

        // The same over Remoting.
        let resp = route_info(cp.remoting_addr, "TopicX").await;
        assert_eq!(resp.code(), response_code::SUCCESS);
        let route = TopicRouteData::parse(resp.body()).unwrap();
        assert_eq!(route.queue_datas.len(), 1);
        assert_eq!(route.queue_datas[0].perm, 6);
        assert_eq!(
            route.broker("broker-a").unwrap().master_addr(),
            Some(a.addr.to_string().as_str())
        );

        // A second broker serving the topic read-only.
        let b = broker_node("broker-b", cp.remoting_addr, |c| {
            c.read_only_topics = vec!["TopicX".into()];
        })
        .await;
        wait_until("broker-b read-only", || {
            perms(&cp, "TopicX") == [("broker-a".to_owned(), 6), ("broker-b".to_owned(), 4)]
        })
        .await;
        let route =
            TopicRouteData::parse(route_info(cp.remoting_addr, "TopicX").await.body()).unwrap();
        let qb = route
            .queue_datas
            .iter()
            .find(|q| q.broker_name == "broker-b")
            .unwrap();
        assert_eq!(qb.perm, 4);
        assert_eq!(
            route.broker("broker-b").unwrap().master_addr(),
            Some(b.addr.to_string().as_str())
        );

        // Cluster info and the topic list.
        let c = client(cp.remoting_addr).await;
        let resp = c
            .invoke(RemotingCommand::request(rc::GET_BROKER_CLUSTER_INFO), RPC)
            .await
            .unwrap();
        let info = ClusterInfo::parse(resp.body()).unwrap();
        assert_eq!(info.cluster_addr_table["DefaultCluster"].len(), 2);
        assert_eq!(
            info.broker_addr_table["broker-b"].master_addr(),
            Some(b.addr.to_string().as_str())
        );
        let resp = c
            .invoke(
                RemotingCommand::request(rc::GET_ALL_TOPIC_LIST_FROM_NAMESERVER),
                RPC,
            )
            .await
            .unwrap();
        let list: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert!(list["topicList"]
            .as_array()
            .unwrap()
            .contains(&"TopicX".into()));

        // broker-b shuts down (UNREGISTER): its share goes.
        b.shutdown().await;
        wait_until("broker-b gone", || {
            perms(&cp, "TopicX") == [("broker-a".to_owned(), 6)]
        })
        .await;
        a.shutdown().await;
        wait_until("TopicX gone", || cp.catalog.topic_route("TopicX").is_none()).await;
        assert_eq!(cp.nameserver().broker_count(), 0);
        let resp = route_info(cp.remoting_addr, "TopicX").await;
        assert_eq!(resp.code(), response_code::TOPIC_NOT_EXIST);
        cp.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_topic_and_unknown_code() {
    bounded(TEST_LIMIT, async {
        let cp = control_plane(|_| {}).await;
        let resp = route_info(cp.remoting_addr, "NoSuchTopic").await;
        assert_eq!(resp.code(), response_code::TOPIC_NOT_EXIST);
        assert_eq!(
            resp.remark(),
            Some("No topic route info in name server for the topic: NoSuchTopic")
        );
        let resp = client(cp.remoting_addr)
            .await
            .invoke(RemotingCommand::request(rc::SEND_MESSAGE_V2), RPC)
            .await
            .unwrap();
        assert_eq!(resp.code(), response_code::REQUEST_CODE_NOT_SUPPORTED);
        assert!(
            resp.remark().unwrap().contains("310"),
            "{:?}",
            resp.remark()
        );
        // A route request without its topic names the missing field.
        let resp = client(cp.remoting_addr)
            .await
            .invoke(RemotingCommand::request(rc::GET_ROUTEINFO_BY_TOPIC), RPC)
            .await
            .unwrap();
        assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
        assert!(resp.remark().unwrap().contains("topic"));
        cp.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn dead_connections_and_silent_brokers_are_removed() {
    bounded(TEST_LIMIT, async {
        let cp = control_plane(|c| c.broker_expiry = Duration::from_millis(600)).await;

        // Registered over a connection that then dies (compressed body, like Apache 5.x brokers).
        let dying = client(cp.remoting_addr).await;
        register(
            &dying,
            register_cmd("raw-a", "127.0.0.1:1", 0, &[("TopicR", 6)], true),
        )
        .await;
        assert_eq!(perms(&cp, "TopicR"), [("raw-a".to_owned(), 6)]);
        dying.close();
        drop(dying);
        wait_until("raw-a gone with its connection", || {
            cp.catalog.topic_route("TopicR").is_none()
        })
        .await;

        // A master and its slave: the slave learns the master's addresses.
        let master = client(cp.remoting_addr).await;
        register(
            &master,
            register_cmd("raw-b", "127.0.0.1:2", 0, &[("TopicS", 6)], false),
        )
        .await;
        let slave = client(cp.remoting_addr).await;
        let resp = register(
            &slave,
            register_cmd("raw-b", "127.0.0.1:3", 1, &[("TopicS", 6)], false),
        )
        .await;
        let h: RegisterBrokerResponseHeader = resp.decode_header().unwrap();
        assert_eq!(h.master_addr.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(h.ha_server_addr.as_deref(), Some("127.0.0.1:2-ha"));
        assert_eq!(
            cp.catalog.topic_route("TopicS").unwrap().brokers[0]
                .addrs
                .len(),
            2
        );

        // Perm change on re-registration propagates; the connections stay open but go silent.
        register(
            &master,
            register_cmd("raw-b", "127.0.0.1:2", 0, &[("TopicS", 4)], false),
        )
        .await;
        assert_eq!(perms(&cp, "TopicS"), [("raw-b".to_owned(), 4)]);
        let started = std::time::Instant::now();
        wait_until("silent brokers expired", || {
            cp.catalog.topic_route("TopicS").is_none()
        })
        .await;
        assert!(started.elapsed() >= Duration::from_millis(400));
        assert_eq!(cp.nameserver().broker_count(), 0);
        assert!(!master.is_closed() && !slave.is_closed());

        // A body whose crc32 does not match is refused.
        let mut bad = register_cmd("raw-c", "127.0.0.1:4", 0, &[("TopicC", 6)], false);
        bad.ext_mut().insert("bodyCrc32", "12345");
        let resp = master.invoke(bad, RPC).await.unwrap();
        assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
        assert_eq!(resp.remark(), Some("crc32 not match"));
        cp.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn upstream_nameserver_mode() {
    bounded(TEST_LIMIT, async {
        let upstream = control_plane(|_| {}).await;
        let registrar = client(upstream.remoting_addr).await;
        register(
            &registrar,
            register_cmd("up-a", "127.0.0.1:7", 0, &[("UpTopic", 6)], false),
        )
        .await;

        let cp = control_plane(|c| {
            c.upstream_namesrv = Some(upstream.remoting_addr.to_string());
            c.upstream_refresh = Duration::from_millis(200);
            c.upstream_absent_ttl = Duration::from_millis(300);
        })
        .await;
        // Found upstream: pending, then the route.
        let first = cp.catalog.vhost("UpTopic", "rocketmq/UpTopic");
        assert!(matches!(first, Lookup::Pending | Lookup::Found(_)));
        wait_until("UpTopic fetched", || {
            cp.catalog
                .vhost("UpTopic", "rocketmq/UpTopic")
                .found()
                .is_some()
        })
        .await;
        let spec = cp.catalog.topic_route("UpTopic").unwrap();
        assert_eq!(spec.brokers[0].addrs[&0], "127.0.0.1:7");
        assert_eq!(spec.brokers[0].cluster_name, "RawCluster");

        // Missing upstream: pending, then absent.
        assert_eq!(
            cp.catalog.vhost("Nowhere", "rocketmq/Nowhere"),
            Lookup::Pending
        );
        wait_until("Nowhere absent", || {
            cp.catalog.vhost("Nowhere", "rocketmq/Nowhere") == Lookup::Absent
        })
        .await;
        // The absent mark expires: the next lookup asks again.
        wait_until("the absent mark of Nowhere expires", || {
            cp.catalog.vhost("Nowhere", "rocketmq/Nowhere") == Lookup::Pending
        })
        .await;

        // A perm change upstream reaches us with the next refresh.
        register(
            &registrar,
            register_cmd("up-a", "127.0.0.1:7", 0, &[("UpTopic", 4)], false),
        )
        .await;
        wait_until("UpTopic refreshed", || {
            perms(&cp, "UpTopic") == [("up-a".to_owned(), 4)]
        })
        .await;

        // GET_ROUTEINFO_BY_TOPIC on our port falls through to the upstream.
        let resp = route_info(cp.remoting_addr, "UpTopic").await;
        assert_eq!(resp.code(), response_code::SUCCESS);
        let route = TopicRouteData::parse(resp.body()).unwrap();
        assert_eq!(route.queue_datas[0].perm, 4);
        let resp = route_info(cp.remoting_addr, "Nowhere").await;
        assert_eq!(resp.code(), response_code::TOPIC_NOT_EXIST);

        // A topic registered locally wins over the upstream.
        let local = client(cp.remoting_addr).await;
        register(
            &local,
            register_cmd("local-a", "127.0.0.1:8", 0, &[("UpTopic", 6)], false),
        )
        .await;
        assert_eq!(perms(&cp, "UpTopic"), [("local-a".to_owned(), 6)]);
        // ... and keeps winning when the next upstream answer for it comes back.
        let fetcher = cp
            .nameserver()
            .upstream()
            .expect("upstream configured")
            .clone();
        let applied = fetcher.applied();
        wait_until("an upstream refresh after the local registration", || {
            fetcher.applied() > applied
        })
        .await;
        assert_eq!(perms(&cp, "UpTopic"), [("local-a".to_owned(), 6)]);

        cp.shutdown().await;
        upstream.shutdown().await;
    })
    .await;
}

const STATIC_V1: &str = r#"
clusters:
  - name: static-brokers
    endpoints:
      - {address: "127.0.0.1:10911", broker_name: s-a, cluster_name: S}
topics:
  - {topic: StaticA, cluster: static-brokers}
"#;

#[tokio::test]
async fn static_file_loads_reloads_and_survives_bad_edits() {
    bounded(TEST_LIMIT, async {
        let dir = temp_dir("static");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("static.yaml");
        std::fs::write(&file, "clusters: [oops\n").unwrap();
        let err = control_plane::start(ControlPlaneConfig {
            static_file: Some(file.clone()),
            ..ControlPlaneConfig::new(local())
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("static"), "{err:#}");

        std::fs::write(&file, STATIC_V1).unwrap();
        let cp = control_plane(|c| {
            c.static_file = Some(file.clone());
            c.static_poll = Duration::from_millis(50);
        })
        .await;
        let vhost = cp
            .catalog
            .vhost("StaticA", "rocketmq/StaticA")
            .found()
            .unwrap();
        assert_eq!(vhost.value.routes.len(), 3);
        assert_eq!(vhost.value.routes[0].cluster, "static-brokers");
        assert!(cp.catalog.cluster("static-brokers").found().is_some());

        // An edit adds a topic.
        let v2 = format!("{STATIC_V1}  - {{topic: StaticB, cluster: static-brokers}}\n");
        std::fs::write(&file, &v2).unwrap();
        wait_until("StaticB loaded", || {
            cp.catalog
                .vhost("StaticB", "rocketmq/StaticB")
                .found()
                .is_some()
        })
        .await;

        // A bad edit is refused; the last good content stays.
        std::fs::write(
            &file,
            format!("{v2}  - {{topic: StaticC, cluster: nope}}\n"),
        )
        .unwrap();
        wait_until("the bad edit refused", || {
            cp.static_reloads().rejected() == 1
        })
        .await;
        assert!(cp
            .catalog
            .vhost("StaticB", "rocketmq/StaticB")
            .found()
            .is_some());
        assert_eq!(
            cp.catalog.vhost("StaticC", "rocketmq/StaticC"),
            Lookup::Absent
        );

        // A fixed edit applies again, and removals propagate.
        std::fs::write(&file, "clusters: []\n").unwrap();
        wait_until("static resources cleared", || {
            cp.catalog.vhost("StaticA", "rocketmq/StaticA") == Lookup::Absent
        })
        .await;
        assert_eq!(cp.catalog.cluster("static-brokers"), Lookup::Absent);
        cp.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// A restarted nameserver starts empty: a broker whose connection to it broke registers again
/// as soon as it accepts, not at its next registration interval (here a minute, beyond the
/// test's wait), and keeps retrying with a short backoff while it is down.
#[tokio::test]
async fn brokers_register_again_as_soon_as_a_restarted_nameserver_accepts() {
    bounded(TEST_LIMIT, async {
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
        let cp = control_plane(|c| c.remoting = addr).await;
        let b = broker_node("restart-a", addr, |c| {
            c.register_interval = Duration::from_secs(60)
        })
        .await;
        crate::support::create_topic(b.addr, "TopicRestart", 6, 4).await;
        wait_until("broker registered", || {
            cp.catalog.topic_route("TopicRestart").is_some()
        })
        .await;
        cp.shutdown().await;
        // Down long enough for a few refused attempts: the retries back off, but not past 1 s.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let cp = control_plane(|c| c.remoting = addr).await;
        let took = eventually_within("broker back in the restarted nameserver", RPC, || {
            cp.catalog.topic_route("TopicRestart").is_some()
        })
        .await;
        assert_eq!(cp.nameserver().broker_count(), 1);
        eprintln!("registered again {took:?} after the nameserver came back");
        b.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}

/// Shutting down, the control plane closes its brokers' connections itself. That is not the
/// brokers leaving: their topics stay in the catalog, so no removal reaches xDS clients before
/// the ADS streams end (a restart would otherwise look like every broker leaving, and sidecars
/// answer TOPIC_NOT_EXIST for topics whose brokers are alive).
#[tokio::test]
async fn shutdown_does_not_remove_the_brokers_it_disconnects() {
    bounded(TEST_LIMIT, async {
        let cp = control_plane(|_| {}).await;
        let b = broker_node("stay-a", cp.remoting_addr, |c| {
            c.register_interval = Duration::from_secs(60)
        })
        .await;
        crate::support::create_topic(b.addr, "TopicStay", 6, 4).await;
        wait_until("broker registered", || {
            cp.catalog.topic_route("TopicStay").is_some()
        })
        .await;
        let catalog = cp.catalog.clone();
        let rev = catalog.revision();
        cp.shutdown().await;
        assert!(
            catalog.topic_route("TopicStay").is_some(),
            "the shutdown removed the topic of a broker that did not leave"
        );
        assert_eq!(catalog.revision(), rev, "a change was pushed on shutdown");
        b.shutdown().await;
    })
    .await;
}
