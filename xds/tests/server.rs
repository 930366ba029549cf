//! The ADS server over a real loopback socket, driven by xds-api's generated tonic client.
//! Every wait is bounded by a timeout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rocketmesh_xds::catalog::{Catalog, CatalogOptions};
use rocketmesh_xds::model::{BrokerQueues, TopicRouteSpec};
use rocketmesh_xds::resources::{
    from_any, topic_cluster_name, CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE, ROUTE_CONFIGURATION_TYPE,
    VIRTUAL_HOST_TYPE,
};
use rocketmesh_xds::server::{AdsServer, ServerOptions};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds_api::pb::google::rpc;

const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing is sent" is watched for.
const QUIET: Duration = Duration::from_millis(300);

fn route(topic: &str, perm_b: u32) -> TopicRouteSpec {
    TopicRouteSpec {
        topic: topic.into(),
        brokers: vec![
            BrokerQueues {
                broker_name: "broker-a".into(),
                cluster_name: "DefaultCluster".into(),
                addrs: BTreeMap::from([(0, "127.0.0.1:10911".into())]),
                perm: 6,
                read_queue_num: 4,
                write_queue_num: 4,
            },
            BrokerQueues {
                broker_name: "broker-b".into(),
                cluster_name: "DefaultCluster".into(),
                addrs: BTreeMap::from([(0, "127.0.0.1:10912".into())]),
                perm: perm_b,
                read_queue_num: 4,
                write_queue_num: 4,
            },
        ],
    }
}

fn catalog() -> Arc<Catalog> {
    let c = Catalog::new(CatalogOptions::default());
    c.set_topic(route("TopicA", 6));
    c.set_topic(route("TopicB", 4));
    Arc::new(c)
}

struct Running {
    addr: SocketAddr,
    server: AdsServer,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    async fn start(catalog: Arc<Catalog>, opts: ServerOptions) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = AdsServer::new(catalog, opts);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            server,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(WAIT)
            .connect()
            .await
            .unwrap();
        AggregatedDiscoveryServiceClient::new(channel)
    }

    async fn delta(&self) -> Delta {
        let (tx, rx) = mpsc::channel(16);
        let stream = timeout(
            WAIT,
            self.client()
                .await
                .delta_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("stream opens in time")
        .expect("stream accepted")
        .into_inner();
        Delta { tx, rx: stream }
    }

    async fn sotw(&self) -> Sotw {
        let (tx, rx) = mpsc::channel(16);
        let stream = timeout(
            WAIT,
            self.client()
                .await
                .stream_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("stream opens in time")
        .expect("stream accepted")
        .into_inner();
        Sotw { tx, rx: stream }
    }

    /// Waits until the stats satisfy `f` (stats are updated by stream tasks asynchronously).
    async fn wait_stats(
        &self,
        what: &str,
        f: impl Fn(&rocketmesh_xds::server::ServerStats) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = self.server.stats();
            if f(&s) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stats never showed {what}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

fn node() -> Option<Node> {
    Some(Node {
        id: "sidecar-1".into(),
        ..Default::default()
    })
}

fn subscribe(type_url: &str, names: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node(),
        type_url: type_url.into(),
        resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn ack(resp: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        ..Default::default()
    }
}

fn nack(resp: &DeltaDiscoveryResponse, message: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        error_detail: Some(rpc::Status {
            code: Code::InvalidArgument as i32,
            message: message.into(),
            details: vec![],
        }),
        ..ack(resp)
    }
}

impl Delta {
    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.expect("request stream open");
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream not ended")
    }

    async fn quiet(&mut self) {
        if let Ok(r) = timeout(QUIET, self.rx.message()).await {
            panic!("expected nothing, got {r:?}");
        }
    }

    async fn status(&mut self) -> tonic::Status {
        loop {
            match timeout(WAIT, self.rx.message()).await.expect("in time") {
                Err(s) => return s,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended with OK"),
            }
        }
    }
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.expect("request stream open");
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream not ended")
    }

    async fn quiet(&mut self) {
        if let Ok(r) = timeout(QUIET, self.rx.message()).await {
            panic!("expected nothing, got {r:?}");
        }
    }
}

fn versions(resp: &DeltaDiscoveryResponse) -> HashMap<String, String> {
    resp.resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

#[tokio::test]
async fn delta_serves_vhost_then_its_cluster() {
    let catalog = catalog();
    let srv = Running::start(catalog.clone(), ServerOptions::default()).await;
    let mut s = srv.delta().await;

    s.send(subscribe(VIRTUAL_HOST_TYPE, &["rocketmq/TopicA"]))
        .await;
    let r = s.recv().await;
    assert_eq!(r.type_url, VIRTUAL_HOST_TYPE);
    assert!(!r.nonce.is_empty());
    assert_eq!(r.system_version_info, catalog.revision().to_string());
    assert!(r.removed_resources.is_empty());
    assert_eq!(r.resources.len(), 1);
    let res = &r.resources[0];
    assert_eq!(res.name, "rocketmq/TopicA");
    let expected = catalog.vhost("TopicA", "rocketmq/TopicA").found().unwrap();
    assert_eq!(res.version, expected.version);
    let vh: VirtualHost = from_any(VIRTUAL_HOST_TYPE, res.resource.as_ref().unwrap()).unwrap();
    assert_eq!(vh.name, "rocketmq/TopicA");
    assert_eq!(vh.domains, vec!["TopicA".to_string()]);
    let clusters: HashSet<String> = vh
        .routes
        .iter()
        .filter_map(|r| match &r.action {
            Some(xds_api::pb::envoy::config::route::v3::route::Action::Route(a)) => {
                match &a.cluster_specifier {
                    Some(
                        xds_api::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(c),
                    ) => Some(c.clone()),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    assert_eq!(clusters.len(), 1);
    let cluster_name = clusters.into_iter().next().unwrap();
    s.send(ack(&r)).await;

    s.send(subscribe(CLUSTER_TYPE, &[&cluster_name])).await;
    let c = s.recv().await;
    assert_eq!(c.type_url, CLUSTER_TYPE);
    assert_ne!(c.nonce, r.nonce, "nonces are unique");
    assert_eq!(c.resources.len(), 1);
    assert_eq!(c.resources[0].name, cluster_name);
    let cl: Cluster = from_any(CLUSTER_TYPE, c.resources[0].resource.as_ref().unwrap()).unwrap();
    assert_eq!(cl.name, cluster_name);
    assert!(cl.lb_subset_config.is_some());
    let eps = &cl.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints;
    assert_eq!(eps.len(), 2);
    for ep in eps {
        let md = &ep.metadata.as_ref().unwrap().filter_metadata;
        assert!(md.contains_key("envoy.filters.network.rocketmq_proxy"));
        assert!(md.contains_key("envoy.lb"));
    }
    s.send(ack(&c)).await;
    srv.wait_stats("two acks", |st| st.acks == 2 && st.subscriptions == 2)
        .await;
    let st = srv.server.stats();
    assert_eq!(st.delta_streams, 1);
    assert!(st.responses_sent >= 2);
    s.quiet().await;
}

#[tokio::test]
async fn delta_reports_unknown_names_once_and_serves_them_when_they_appear() {
    let catalog = catalog();
    let srv = Running::start(catalog.clone(), ServerOptions::default()).await;
    let mut s = srv.delta().await;
    s.send(subscribe(
        VIRTUAL_HOST_TYPE,
        &["rocketmq/Nope", "no-slash", "rocketmq/bad topic"],
    ))
    .await;
    let r = tokio::time::timeout(Duration::from_millis(500), s.recv())
        .await
        .expect("removal is prompt");
    let removed: HashSet<_> = r.removed_resources.iter().cloned().collect();
    assert_eq!(
        removed,
        HashSet::from([
            "rocketmq/Nope".to_string(),
            "no-slash".to_string(),
            "rocketmq/bad topic".to_string()
        ])
    );
    assert!(r.resources.is_empty());
    s.send(ack(&r)).await;
    // Re-subscribing does not repeat the removal.
    s.send(subscribe(VIRTUAL_HOST_TYPE, &["rocketmq/Nope"]))
        .await;
    s.quiet().await;

    s.send(subscribe(CLUSTER_TYPE, &["rocketmq.topic.Nope"]))
        .await;
    let r = s.recv().await;
    assert_eq!(r.removed_resources, vec!["rocketmq.topic.Nope".to_string()]);

    // The topic appears: both subscribed resources are pushed.
    catalog.set_topic(route("Nope", 6));
    let mut got = HashMap::new();
    for _ in 0..2 {
        let r = s.recv().await;
        got.insert(r.type_url.clone(), r.resources[0].name.clone());
    }
    assert_eq!(got[VIRTUAL_HOST_TYPE], "rocketmq/Nope");
    assert_eq!(got[CLUSTER_TYPE], "rocketmq.topic.Nope");

    // And disappears again: removal once per type.
    catalog.remove_topic("Nope");
    let mut removed = HashSet::new();
    for _ in 0..2 {
        let r = s.recv().await;
        assert!(r.resources.is_empty());
        removed.extend(r.removed_resources);
    }
    assert_eq!(
        removed,
        HashSet::from([
            "rocketmq/Nope".to_string(),
            "rocketmq.topic.Nope".to_string()
        ])
    );
}

#[tokio::test]
async fn delta_pushes_changes_quickly_and_honours_nacks() {
    let catalog = catalog();
    let srv = Running::start(catalog.clone(), ServerOptions::default()).await;
    let mut s = srv.delta().await;
    s.send(subscribe(VIRTUAL_HOST_TYPE, &["rocketmq/TopicA"]))
        .await;
    let first = s.recv().await;
    s.send(ack(&first)).await;
    s.send(subscribe(CLUSTER_TYPE, &["rocketmq.topic.TopicA"]))
        .await;
    let c1 = s.recv().await;
    s.send(ack(&c1)).await;

    // broker-b turns read-only.
    let t0 = tokio::time::Instant::now();
    catalog.set_topic(route("TopicA", 4));
    let mut pushed = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_secs(1), s.recv())
            .await
            .expect("change pushed within 1 s");
        pushed.push(r);
    }
    assert!(t0.elapsed() < Duration::from_secs(1));
    let cl = pushed
        .iter()
        .find(|r| r.type_url == CLUSTER_TYPE)
        .expect("cluster pushed");
    let v2 = versions(cl);
    assert_ne!(
        v2["rocketmq.topic.TopicA"],
        versions(&c1)["rocketmq.topic.TopicA"]
    );
    assert_eq!(cl.system_version_info, catalog.revision().to_string());
    let vh = pushed
        .iter()
        .find(|r| r.type_url == VIRTUAL_HOST_TYPE)
        .unwrap();

    // The client rejects the new cluster: recorded, logged, not resent.
    s.send(ack(vh)).await;
    s.send(nack(cl, "endpoint rejected by test")).await;
    srv.wait_stats("the NACK", |st| st.nacks == 1).await;
    let st = srv.server.stats();
    let last = st.last_nack.unwrap();
    assert_eq!(last.node_id, "sidecar-1");
    assert_eq!(last.type_url, CLUSTER_TYPE);
    assert_eq!(last.nonce, cl.nonce);
    assert_eq!(last.error_message, "endpoint rejected by test");
    assert_eq!(st.acks, 3);
    s.quiet().await;
    // An unrelated change does not bring the rejected version back either.
    catalog.set_topic(route("Other", 6));
    s.quiet().await;

    // A newer version is sent.
    catalog.set_topic(route("TopicA", 6));
    let mut types = HashSet::new();
    for _ in 0..2 {
        let r = s.recv().await;
        if r.type_url == CLUSTER_TYPE {
            assert_eq!(
                versions(&r)["rocketmq.topic.TopicA"],
                versions(&c1)["rocketmq.topic.TopicA"],
                "back to the first content"
            );
        }
        types.insert(r.type_url);
    }
    assert_eq!(types.len(), 2);
}

#[tokio::test]
async fn delta_initial_versions_are_not_resent() {
    let catalog = catalog();
    let srv = Running::start(catalog.clone(), ServerOptions::default()).await;
    let mut s = srv.delta().await;
    s.send(subscribe(
        VIRTUAL_HOST_TYPE,
        &["rocketmq/TopicA", "rocketmq/TopicB"],
    ))
    .await;
    let r = s.recv().await;
    let held = versions(&r);
    assert_eq!(held.len(), 2);
    drop(s);

    // Reconnect: TopicA is current, TopicB is stale, TopicC is new.
    catalog.set_topic(route("TopicB", 6));
    catalog.set_topic(route("TopicC", 6));
    let mut s = srv.delta().await;
    let mut req = subscribe(
        VIRTUAL_HOST_TYPE,
        &["rocketmq/TopicA", "rocketmq/TopicB", "rocketmq/TopicC"],
    );
    req.initial_resource_versions = held.clone();
    s.send(req).await;
    let r = s.recv().await;
    let names: HashSet<_> = r.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, HashSet::from(["rocketmq/TopicB", "rocketmq/TopicC"]));
    s.send(ack(&r)).await;
    s.quiet().await;

    // All current: nothing at all.
    let mut s2 = srv.delta().await;
    let mut req = subscribe(VIRTUAL_HOST_TYPE, &["rocketmq/TopicA"]);
    req.initial_resource_versions = HashMap::from([(
        "rocketmq/TopicA".to_string(),
        held["rocketmq/TopicA"].clone(),
    )]);
    s2.send(req).await;
    s2.quiet().await;
}

#[tokio::test]
async fn delta_unsubscribe_stops_pushes() {
    let catalog = catalog();
    let srv = Running::start(catalog.clone(), ServerOptions::default()).await;
    let mut s = srv.delta().await;
    s.send(subscribe(
        VIRTUAL_HOST_TYPE,
        &["rocketmq/TopicA", "rocketmq/TopicB"],
    ))
    .await;
    let r = s.recv().await;
    s.send(ack(&r)).await;
    srv.wait_stats("2 subscriptions", |st| st.subscriptions == 2)
        .await;
    s.send(DeltaDiscoveryRequest {
        type_url: VIRTUAL_HOST_TYPE.into(),
        resource_names_unsubscribe: vec!["rocketmq/TopicA".into()],
        ..Default::default()
    })
    .await;
    srv.wait_stats("1 subscription", |st| st.subscriptions == 1)
        .await;
    catalog.set_topic(route("TopicA", 4));
    s.quiet().await;
    catalog.set_topic(route("TopicB", 6));
    let r = s.recv().await;
    assert_eq!(
        versions(&r).keys().collect::<Vec<_>>(),
        vec!["rocketmq/TopicB"]
    );

    // Subscribing again sends the current version.
    s.send(subscribe(VIRTUAL_HOST_TYPE, &["rocketmq/TopicA"]))
        .await;
    let r = s.recv().await;
    assert_eq!(
        versions(&r)["rocketmq/TopicA"],
        catalog.vhost("TopicA", "x/TopicA").found().unwrap().version
    );
    drop(s);
    srv.wait_stats("stream gone", |st| {
        st.delta_streams == 0 && st.subscriptions == 0
    })
    .await;
}

#[tokio::test]
async fn delta_cluster_wildcard_and_eds() {
    let catalog = Arc::new(Catalog::new(CatalogOptions {
        eds: true,
        ..CatalogOptions::default()
    }));
    catalog.set_topic(route("TopicA", 6));
    catalog.set_topic(route("TopicB", 4));
    let srv = Running::start(catalog.clone(), ServerOptions::default()).await;
    let mut s = srv.delta().await;
    // Legacy wildcard: a first Cluster request naming nothing.
    s.send(subscribe(CLUSTER_TYPE, &[])).await;
    let r = s.recv().await;
    let names: HashSet<_> = r.resources.iter().map(|r| r.name.clone()).collect();
    assert_eq!(
        names,
        HashSet::from([topic_cluster_name("TopicA"), topic_cluster_name("TopicB")])
    );
    s.send(ack(&r)).await;

    s.send(subscribe(LOAD_ASSIGNMENT_TYPE, &["rocketmq.topic.TopicA"]))
        .await;
    let r = s.recv().await;
    assert_eq!(r.type_url, LOAD_ASSIGNMENT_TYPE);
    let cla: ClusterLoadAssignment = from_any(
        LOAD_ASSIGNMENT_TYPE,
        r.resources[0].resource.as_ref().unwrap(),
    )
    .unwrap();
    assert_eq!(cla.cluster_name, "rocketmq.topic.TopicA");
    s.send(ack(&r)).await;

    // New topic: wildcard gets its cluster; removed topic: removal.
    catalog.set_topic(route("TopicC", 6));
    let r = s.recv().await;
    assert_eq!(r.type_url, CLUSTER_TYPE);
    assert_eq!(
        versions(&r).keys().collect::<Vec<_>>(),
        vec!["rocketmq.topic.TopicC"]
    );
    catalog.remove_topic("TopicA");
    let mut removed = HashSet::new();
    for _ in 0..2 {
        let r = s.recv().await;
        removed.insert((r.type_url.clone(), r.removed_resources.clone()));
    }
    assert_eq!(
        removed,
        HashSet::from([
            (
                CLUSTER_TYPE.to_string(),
                vec!["rocketmq.topic.TopicA".to_string()]
            ),
            (
                LOAD_ASSIGNMENT_TYPE.to_string(),
                vec!["rocketmq.topic.TopicA".to_string()]
            ),
        ])
    );
    // Unknown types are ignored, the stream keeps working.
    s.send(subscribe(
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        &["x"],
    ))
    .await;
    s.quiet().await;
    catalog.set_topic(route("TopicB", 6));
    let r = s.recv().await;
    assert_eq!(r.type_url, CLUSTER_TYPE);
}

#[tokio::test]
async fn delta_pending_names_wait_for_the_fetcher() {
    let (demand_tx, mut demand_rx) = mpsc::channel(8);
    let catalog = Arc::new(Catalog::with_demand(CatalogOptions::default(), demand_tx));
    let srv = Running::start(catalog.clone(), ServerOptions::default()).await;
    let mut s = srv.delta().await;
    s.send(subscribe(
        VIRTUAL_HOST_TYPE,
        &["rocketmq/Remote", "rocketmq/Gone"],
    ))
    .await;
    s.quiet().await;
    let mut asked = HashSet::new();
    for _ in 0..2 {
        asked.insert(timeout(WAIT, demand_rx.recv()).await.unwrap().unwrap());
    }
    assert_eq!(
        asked,
        HashSet::from(["Remote".to_string(), "Gone".to_string()])
    );
    catalog.set_topic(route("Remote", 6));
    let r = s.recv().await;
    assert_eq!(
        versions(&r).keys().collect::<Vec<_>>(),
        vec!["rocketmq/Remote"]
    );
    catalog.mark_absent("Gone");
    let r = s.recv().await;
    assert_eq!(r.removed_resources, vec!["rocketmq/Gone".to_string()]);
}

#[tokio::test]
async fn sotw_clusters_and_route_configuration() {
    let catalog = catalog();
    let srv = Running::start(catalog.clone(), ServerOptions::default()).await;
    let mut s = srv.sotw().await;
    s.send(DiscoveryRequest {
        node: node(),
        type_url: CLUSTER_TYPE.into(),
        ..Default::default()
    })
    .await;
    let c = s.recv().await;
    assert_eq!(c.type_url, CLUSTER_TYPE);
    assert_eq!(c.version_info, catalog.revision().to_string());
    let names: HashSet<String> = c
        .resources
        .iter()
        .map(|a| from_any::<Cluster>(CLUSTER_TYPE, a).unwrap().name)
        .collect();
    assert_eq!(
        names,
        HashSet::from([topic_cluster_name("TopicA"), topic_cluster_name("TopicB")])
    );
    s.send(DiscoveryRequest {
        type_url: CLUSTER_TYPE.into(),
        version_info: c.version_info.clone(),
        response_nonce: c.nonce.clone(),
        ..Default::default()
    })
    .await;

    s.send(DiscoveryRequest {
        type_url: ROUTE_CONFIGURATION_TYPE.into(),
        resource_names: vec!["rocketmq".into()],
        ..Default::default()
    })
    .await;
    let r = s.recv().await;
    assert_eq!(r.type_url, ROUTE_CONFIGURATION_TYPE);
    assert_ne!(r.nonce, c.nonce);
    assert_eq!(r.resources.len(), 1);
    let rc: RouteConfiguration = from_any(ROUTE_CONFIGURATION_TYPE, &r.resources[0]).unwrap();
    assert_eq!(rc.name, "rocketmq");
    let vhosts: Vec<(String, Vec<String>)> = rc
        .virtual_hosts
        .iter()
        .map(|v| (v.name.clone(), v.domains.clone()))
        .collect();
    assert_eq!(
        vhosts,
        vec![
            ("rocketmq/TopicA".to_string(), vec!["TopicA".to_string()]),
            ("rocketmq/TopicB".to_string(), vec!["TopicB".to_string()]),
        ]
    );
    s.send(DiscoveryRequest {
        type_url: ROUTE_CONFIGURATION_TYPE.into(),
        version_info: r.version_info.clone(),
        resource_names: vec!["rocketmq".into()],
        response_nonce: r.nonce.clone(),
        ..Default::default()
    })
    .await;
    srv.wait_stats("two acks", |st| st.acks == 2 && st.sotw_streams == 1)
        .await;
    s.quiet().await;

    // A change resends both types with the new revision.
    catalog.set_topic(route("TopicC", 6));
    let mut got = HashMap::new();
    for _ in 0..2 {
        let r = s.recv().await;
        assert_eq!(r.version_info, catalog.revision().to_string());
        got.insert(r.type_url.clone(), r);
    }
    assert_eq!(got[CLUSTER_TYPE].resources.len(), 3);
    let rc: RouteConfiguration = from_any(
        ROUTE_CONFIGURATION_TYPE,
        &got[ROUTE_CONFIGURATION_TYPE].resources[0],
    )
    .unwrap();
    assert_eq!(rc.virtual_hosts.len(), 3);

    // A NACK is recorded and does not bring a resend.
    let cl = &got[CLUSTER_TYPE];
    s.send(DiscoveryRequest {
        type_url: CLUSTER_TYPE.into(),
        version_info: c.version_info.clone(),
        response_nonce: cl.nonce.clone(),
        error_detail: Some(rpc::Status {
            code: 3,
            message: "no thanks".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    srv.wait_stats("the NACK", |st| st.nacks == 1).await;
    assert_eq!(
        srv.server.stats().last_nack.unwrap().error_message,
        "no thanks"
    );
    s.quiet().await;

    // Named EDS: only the known names.
    s.send(DiscoveryRequest {
        type_url: LOAD_ASSIGNMENT_TYPE.into(),
        resource_names: vec!["rocketmq.topic.TopicA".into(), "nope".into()],
        ..Default::default()
    })
    .await;
    let e = s.recv().await;
    assert_eq!(e.type_url, LOAD_ASSIGNMENT_TYPE);
    assert_eq!(e.resources.len(), 1);
}

#[tokio::test]
async fn sotw_reconnect_with_an_old_nonce_is_served() {
    let catalog = catalog();
    let srv = Running::start(catalog.clone(), ServerOptions::default()).await;
    let mut s = srv.sotw().await;
    s.send(DiscoveryRequest {
        node: node(),
        type_url: CLUSTER_TYPE.into(),
        resource_names: vec!["rocketmq.topic.TopicA".into()],
        version_info: "41".into(),
        response_nonce: "7-3".into(),
        ..Default::default()
    })
    .await;
    let r = s.recv().await;
    assert_eq!(r.resources.len(), 1);
    // A reply to a superseded nonce is ignored (neither ACK nor a new subscription).
    s.send(DiscoveryRequest {
        type_url: CLUSTER_TYPE.into(),
        resource_names: vec!["rocketmq.topic.TopicB".into()],
        response_nonce: "stale".into(),
        ..Default::default()
    })
    .await;
    s.quiet().await;
    assert_eq!(srv.server.stats().acks, 0);
}

#[tokio::test]
async fn stream_limit_is_enforced() {
    let srv = Running::start(
        catalog(),
        ServerOptions {
            max_streams: 1,
            ..Default::default()
        },
    )
    .await;
    let mut first = srv.delta().await;
    first
        .send(subscribe(VIRTUAL_HOST_TYPE, &["rocketmq/TopicA"]))
        .await;
    first.recv().await;

    let (_tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let err = timeout(
        WAIT,
        srv.client()
            .await
            .delta_aggregated_resources(ReceiverStream::new(rx)),
    )
    .await
    .expect("answered in time")
    .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
    let err = timeout(
        WAIT,
        srv.client()
            .await
            .stream_aggregated_resources(ReceiverStream::new(rx)),
    )
    .await
    .unwrap()
    .expect_err("SotW counts too");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(srv.server.stats().streams_rejected, 2);

    drop(first);
    srv.wait_stats("the slot freed", |st| st.delta_streams == 0)
        .await;
    let mut again = srv.delta().await;
    again
        .send(subscribe(VIRTUAL_HOST_TYPE, &["rocketmq/TopicA"]))
        .await;
    again.recv().await;
}

#[tokio::test]
async fn name_limit_fails_the_stream() {
    let srv = Running::start(
        catalog(),
        ServerOptions {
            max_names_per_stream: 2,
            ..Default::default()
        },
    )
    .await;
    let mut s = srv.delta().await;
    s.send(subscribe(VIRTUAL_HOST_TYPE, &["rocketmq/TopicA"]))
        .await;
    s.recv().await;
    s.send(subscribe(CLUSTER_TYPE, &["a", "b"])).await;
    let status = s.status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("max_names_per_stream = 2"),
        "{status:?}"
    );
    srv.wait_stats("stream closed", |st| st.delta_streams == 0)
        .await;

    let mut s = srv.sotw().await;
    s.send(DiscoveryRequest {
        type_url: LOAD_ASSIGNMENT_TYPE.into(),
        resource_names: vec!["a".into(), "b".into(), "c".into()],
        ..Default::default()
    })
    .await;
    let status = timeout(WAIT, s.rx.message())
        .await
        .unwrap()
        .expect_err("fails");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let srv = Running::start(
        catalog(),
        ServerOptions {
            max_message_bytes: 1024,
            ..Default::default()
        },
    )
    .await;
    let mut s = srv.delta().await;
    let long = format!("rocketmq/{}", "x".repeat(2000));
    s.send(subscribe(VIRTUAL_HOST_TYPE, &[&long])).await;
    let status = s.status().await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

#[tokio::test]
async fn large_delta_batches_are_split() {
    let catalog = Arc::new(Catalog::new(CatalogOptions::default()));
    catalog.set_topics((0..200).map(|i| route(&format!("T{i}"), 6)));
    let srv = Running::start(
        catalog.clone(),
        ServerOptions {
            max_message_bytes: 64 * 1024,
            ..Default::default()
        },
    )
    .await;
    let mut s = srv.delta().await;
    s.send(subscribe(CLUSTER_TYPE, &["*"])).await;
    let mut names = HashSet::new();
    let mut responses = 0;
    while names.len() < 200 {
        let r = s.recv().await;
        responses += 1;
        names.extend(r.resources.into_iter().map(|r| r.name));
    }
    assert!(responses > 1, "split into several responses");
    s.quiet().await;
}

#[tokio::test]
async fn shutdown_ends_streams_and_serve_returns() {
    let mut srv = Running::start(catalog(), ServerOptions::default()).await;
    let mut s = srv.delta().await;
    s.send(subscribe(VIRTUAL_HOST_TYPE, &["rocketmq/TopicA"]))
        .await;
    s.recv().await;
    srv.stop.take().unwrap().send(()).unwrap();
    let end = timeout(WAIT, s.rx.message()).await.expect("stream ends");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    let served = timeout(WAIT, &mut srv.task)
        .await
        .expect("serve returns")
        .unwrap();
    assert!(served.is_ok());
}

/// A control plane that just restarted is warming up: a reconnecting client's topics that no
/// broker registered again yet are not reported removed (nor is a new subscription answered
/// "absent"); they are sent as soon as they register, and reported removed only once the
/// warm-up ends without them. A topic seen and removed during the warm-up is a real removal.
#[tokio::test]
async fn delta_warmup_reports_no_removal_of_topics_not_yet_registered() {
    let catalog = Arc::new(Catalog::new(CatalogOptions::default()));
    catalog.begin_warmup();
    let srv = Running::start(catalog.clone(), ServerOptions::default()).await;
    let mut s = srv.delta().await;
    // The client held TopicA and TopicB before the restart, and now also asks for TopicC.
    s.send(DeltaDiscoveryRequest {
        initial_resource_versions: HashMap::from([
            ("rocketmq/TopicA".to_string(), "old".to_string()),
            ("rocketmq/TopicB".to_string(), "old".to_string()),
        ]),
        ..subscribe(
            VIRTUAL_HOST_TYPE,
            &["rocketmq/TopicA", "rocketmq/TopicB", "rocketmq/TopicC"],
        )
    })
    .await;
    s.quiet().await;
    // TopicA's broker registers again: sent at once.
    catalog.set_topic(route("TopicA", 6));
    let r = s.recv().await;
    assert_eq!(
        versions(&r).keys().collect::<Vec<_>>(),
        vec!["rocketmq/TopicA"]
    );
    assert!(r.removed_resources.is_empty());
    s.send(ack(&r)).await;
    // Registered and removed during the warm-up: the registry knows it is gone.
    catalog.set_topic(route("TopicD", 6));
    catalog.remove_topic("TopicD");
    s.send(subscribe(VIRTUAL_HOST_TYPE, &["rocketmq/TopicD"]))
        .await;
    let r = s.recv().await;
    assert_eq!(r.removed_resources, vec!["rocketmq/TopicD".to_string()]);
    s.quiet().await;
    // The warm-up ends: what never came back is removed now.
    assert_eq!(catalog.end_warmup(), 2);
    let r = s.recv().await;
    let mut removed = r.removed_resources.clone();
    removed.sort();
    assert_eq!(removed, vec!["rocketmq/TopicB", "rocketmq/TopicC"]);
}

/// SotW responses replace the client's whole table: during the warm-up a reconnecting client
/// (its request carries the version it holds) is answered only when the warm-up ends; a new
/// client, which holds nothing, is answered at once.
#[tokio::test]
async fn sotw_warmup_holds_reconnecting_clients_until_it_ends() {
    let catalog = Arc::new(Catalog::new(CatalogOptions::default()));
    catalog.begin_warmup();
    let srv = Running::start(catalog.clone(), ServerOptions::default()).await;
    let rc_request = |version: &str| DiscoveryRequest {
        node: node(),
        type_url: ROUTE_CONFIGURATION_TYPE.into(),
        resource_names: vec!["rocketmq".into()],
        version_info: version.into(),
        ..Default::default()
    };
    let mut fresh = srv.sotw().await;
    fresh.send(rc_request("")).await;
    assert_eq!(fresh.recv().await.type_url, ROUTE_CONFIGURATION_TYPE);

    let mut back = srv.sotw().await;
    back.send(rc_request("17")).await;
    back.quiet().await;
    catalog.set_topic(route("TopicA", 6));
    back.quiet().await;
    catalog.end_warmup();
    let r = back.recv().await;
    let rc: RouteConfiguration = from_any(ROUTE_CONFIGURATION_TYPE, &r.resources[0]).unwrap();
    assert_eq!(rc.virtual_hosts.len(), 1, "{rc:?}");
}
