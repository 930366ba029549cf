//! The xDS client against a scripted ADS server over a real loopback gRPC connection: each test
//! plays the server's side message by message and checks the client's requests (ACK / NACK
//! nonces, error_detail, nonce-less subscription changes) and what the data path sees.
//! The real control plane is exercised in the workspace's tests/xds_client.rs; this server exists
//! to send what a correct control plane never would (bad resources, no delta support).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::Duration;

use rocketmesh_xds::client::{ClientConfig, RouteError, XdsClient, XdsMode};
use rocketmesh_xds::model::{BrokerQueues, TopicRouteSpec};
use rocketmesh_xds::resources::{
    build_topic, cluster_to_proto, route_config_to_proto, to_any, vhost_to_proto, CLUSTER_TYPE,
    ROUTE_CONFIGURATION_TYPE, VIRTUAL_HOST_TYPE,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};

const T: Duration = Duration::from_secs(10);

type DeltaRx = mpsc::Receiver<Result<DeltaDiscoveryResponse, tonic::Status>>;
type SotwRx = mpsc::Receiver<Result<DiscoveryResponse, tonic::Status>>;

/// A scripted server: the test reads what the client sent and decides what to answer.
struct Script {
    delta: bool,
    delta_requests: mpsc::Sender<DeltaDiscoveryRequest>,
    /// One per delta stream, in order (a reconnecting client takes the next).
    delta_responses: Mutex<std::collections::VecDeque<DeltaRx>>,
    sotw_requests: mpsc::Sender<DiscoveryRequest>,
    /// One per SotW stream, in order.
    sotw_responses: Mutex<std::collections::VecDeque<SotwRx>>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Script {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, tonic::Status>>;
    type DeltaAggregatedResourcesStream =
        ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let rx = self
            .sotw_responses
            .lock()
            .pop_front()
            .ok_or_else(|| tonic::Status::unavailable("no stream scripted"))?;
        let tx = self.sotw_requests.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                if tx.send(req).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        if !self.delta {
            return Err(tonic::Status::unimplemented(
                "delta xDS is not supported here",
            ));
        }
        let rx = self
            .delta_responses
            .lock()
            .pop_front()
            .ok_or_else(|| tonic::Status::unavailable("no stream scripted"))?;
        let tx = self.delta_requests.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                if tx.send(req).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

struct Harness {
    addr: std::net::SocketAddr,
    script: std::sync::Arc<Script>,
    delta_in: mpsc::Receiver<DeltaDiscoveryRequest>,
    delta_out: mpsc::Sender<Result<DeltaDiscoveryResponse, tonic::Status>>,
    sotw_in: mpsc::Receiver<DiscoveryRequest>,
    sotw_out: mpsc::Sender<Result<DiscoveryResponse, tonic::Status>>,
}

async fn serve(delta: bool) -> Harness {
    let (dreq_tx, dreq_rx) = mpsc::channel(64);
    let (dresp_tx, dresp_rx) = mpsc::channel(64);
    let (sreq_tx, sreq_rx) = mpsc::channel(64);
    let (sresp_tx, sresp_rx) = mpsc::channel(64);
    let script = Script {
        delta,
        delta_requests: dreq_tx,
        delta_responses: Mutex::new([dresp_rx].into()),
        sotw_requests: sreq_tx,
        sotw_responses: Mutex::new([sresp_rx].into()),
    };
    let script = std::sync::Arc::new(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::from_arc(script.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Harness {
        addr,
        script,
        delta_in: dreq_rx,
        delta_out: dresp_tx,
        sotw_in: sreq_rx,
        sotw_out: sresp_tx,
    }
}

fn spec(topic: &str, perm: u32) -> TopicRouteSpec {
    TopicRouteSpec {
        topic: topic.into(),
        brokers: vec![BrokerQueues {
            broker_name: "broker-a".into(),
            cluster_name: "DefaultCluster".into(),
            addrs: BTreeMap::from([(0, "127.0.0.1:10911".into())]),
            perm,
            read_queue_num: 4,
            write_queue_num: 4,
        }],
    }
}

fn resource(name: &str, version: &str, any: xds_api::pb::google::protobuf::Any) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(any),
        ..Default::default()
    }
}

fn delta(
    type_url: &str,
    nonce: &str,
    resources: Vec<Resource>,
    removed: Vec<String>,
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed,
        system_version_info: "test".into(),
        ..Default::default()
    }
}

impl Harness {
    /// Ends the current delta stream (UNAVAILABLE, as a control plane going away) and scripts
    /// the next one, which the client's reconnect opens.
    async fn restart_delta(&mut self) {
        let (tx, rx) = mpsc::channel(64);
        self.script.delta_responses.lock().push_back(rx);
        let old = std::mem::replace(&mut self.delta_out, tx);
        old.send(Err(tonic::Status::unavailable("control plane restarting")))
            .await
            .unwrap();
    }

    /// [`Harness::restart_delta`] for the SotW stream.
    async fn restart_sotw(&mut self) {
        let (tx, rx) = mpsc::channel(64);
        self.script.sotw_responses.lock().push_back(rx);
        let old = std::mem::replace(&mut self.sotw_out, tx);
        old.send(Err(tonic::Status::unavailable("control plane restarting")))
            .await
            .unwrap();
    }

    async fn next_sotw(&mut self) -> DiscoveryRequest {
        tokio::time::timeout(T, self.sotw_in.recv())
            .await
            .expect("client request")
            .expect("stream open")
    }

    /// The whole state as a SotW server sends it: the clusters and the route configuration of
    /// `topics`, then waits for both ACKs.
    async fn sotw_state(&mut self, version: &str, topics: &[&str]) {
        let built: Vec<_> = topics
            .iter()
            .map(|t| build_topic(&format!("rocketmq/{t}"), &spec(t, 6), false))
            .collect();
        let clusters = built
            .iter()
            .map(|(_, c)| to_any(CLUSTER_TYPE, &cluster_to_proto(c)))
            .collect();
        let rc = route_config_to_proto("rocketmq", built.iter().map(|(v, _)| v));
        for (type_url, resources) in [
            (CLUSTER_TYPE, clusters),
            (
                ROUTE_CONFIGURATION_TYPE,
                vec![to_any(ROUTE_CONFIGURATION_TYPE, &rc)],
            ),
        ] {
            let nonce = format!("{version}-{type_url}");
            self.sotw_out
                .send(Ok(DiscoveryResponse {
                    version_info: version.into(),
                    type_url: type_url.into(),
                    nonce: nonce.clone(),
                    resources,
                    ..Default::default()
                }))
                .await
                .unwrap();
            loop {
                let r = self.next_sotw().await;
                if r.response_nonce == nonce {
                    assert!(r.error_detail.is_none(), "{r:?}");
                    break;
                }
            }
        }
    }

    async fn next_delta(&mut self) -> DeltaDiscoveryRequest {
        tokio::time::timeout(T, self.delta_in.recv())
            .await
            .expect("client request")
            .expect("stream open")
    }

    async fn send_delta(&self, r: DeltaDiscoveryResponse) {
        self.delta_out.send(Ok(r)).await.unwrap();
    }

    /// Reads requests until one matches `pred` (ACKs and subscriptions may interleave).
    async fn expect_delta(
        &mut self,
        what: &str,
        pred: impl Fn(&DeltaDiscoveryRequest) -> bool,
    ) -> DeltaDiscoveryRequest {
        for _ in 0..16 {
            let r = self.next_delta().await;
            if pred(&r) {
                return r;
            }
        }
        panic!("client never sent {what}");
    }
}

fn client(addr: std::net::SocketAddr, mode: XdsMode) -> XdsClient {
    let mut cfg = ClientConfig::new(addr.to_string());
    cfg.mode = mode;
    cfg.route_timeout = Duration::from_secs(5);
    XdsClient::start(cfg)
}

#[tokio::test]
async fn ack_nack_keeps_last_good_and_subscribes_in_order() {
    let mut h = serve(true).await;
    let c = client(h.addr, XdsMode::Delta);
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.route("TopicN").await })
    };
    // 1. The subscription: its own request, no nonce, node on the first request of the stream.
    let sub = h.next_delta().await;
    assert_eq!(sub.type_url, VIRTUAL_HOST_TYPE);
    assert_eq!(sub.resource_names_subscribe, vec!["rocketmq/TopicN"]);
    assert!(sub.response_nonce.is_empty());
    assert!(sub.node.as_ref().is_some_and(|n| !n.id.is_empty()));

    let (vhost, cluster) = build_topic("rocketmq/TopicN", &spec("TopicN", 6), false);
    h.send_delta(delta(
        VIRTUAL_HOST_TYPE,
        "n1",
        vec![resource(
            "rocketmq/TopicN",
            "v1",
            to_any(VIRTUAL_HOST_TYPE, &vhost_to_proto(&vhost)),
        )],
        vec![],
    ))
    .await;
    // 2. ACK of n1, then a separate nonce-less cluster subscription.
    let ack = h.next_delta().await;
    assert_eq!(
        (ack.type_url.as_str(), ack.response_nonce.as_str()),
        (VIRTUAL_HOST_TYPE, "n1")
    );
    assert!(ack.error_detail.is_none());
    assert!(ack.resource_names_subscribe.is_empty());
    let csub = h.next_delta().await;
    assert_eq!(csub.type_url, CLUSTER_TYPE);
    assert_eq!(csub.resource_names_subscribe, vec![cluster.name.clone()]);
    assert!(csub.response_nonce.is_empty());
    h.send_delta(delta(
        CLUSTER_TYPE,
        "n2",
        vec![resource(
            &cluster.name,
            "c1",
            to_any(CLUSTER_TYPE, &cluster_to_proto(&cluster)),
        )],
        vec![],
    ))
    .await;
    let ack = h.next_delta().await;
    assert_eq!(ack.response_nonce, "n2");
    let route = tokio::time::timeout(T, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(route.vhost.routes.len(), 3);

    // 3. A bad update (regex that does not compile) is NACKed with the reason; v1 keeps serving.
    let mut bad = vhost_to_proto(&vhost);
    bad.routes[0].r#match.as_mut().unwrap().headers[0].header_match_specifier = Some(
        xds_api::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier::SafeRegexMatch(
            xds_api::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: "(10".into(),
                ..Default::default()
            },
        ),
    );
    h.send_delta(delta(
        VIRTUAL_HOST_TYPE,
        "n3",
        vec![resource(
            "rocketmq/TopicN",
            "v2",
            to_any(VIRTUAL_HOST_TYPE, &bad),
        )],
        vec![],
    ))
    .await;
    let nack = h.next_delta().await;
    assert_eq!(nack.response_nonce, "n3");
    let detail = nack.error_detail.expect("NACK carries error_detail");
    assert_eq!(detail.code, 3);
    assert!(detail.message.contains("bad regex"), "{}", detail.message);
    let still = c.route("TopicN").await.unwrap();
    assert_eq!(still.vhost.routes.len(), 3);
    let dump = c.config_dump();
    assert_eq!(dump.last_nack.as_ref().unwrap().nonce, "n3");
    assert!(dump
        .resources
        .iter()
        .any(|r| r.name == "rocketmq/TopicN" && r.version == "v1"));

    // 4. A good update is applied.
    let mut v3 = vhost.clone();
    v3.routes.truncate(2);
    h.send_delta(delta(
        VIRTUAL_HOST_TYPE,
        "n4",
        vec![resource(
            "rocketmq/TopicN",
            "v3",
            to_any(VIRTUAL_HOST_TYPE, &vhost_to_proto(&v3)),
        )],
        vec![],
    ))
    .await;
    let ack = h.expect_delta("ACK n4", |r| r.response_nonce == "n4").await;
    assert!(ack.error_detail.is_none());
    assert_eq!(c.route("TopicN").await.unwrap().vhost.routes.len(), 2);

    // 5. The cluster is removed: the topic's route is gone (missing), waiters fail at once.
    h.send_delta(delta(
        CLUSTER_TYPE,
        "n5",
        vec![],
        vec![cluster.name.clone()],
    ))
    .await;
    h.expect_delta("ACK n5", |r| r.response_nonce == "n5").await;
    assert_eq!(
        c.route("TopicN").await.unwrap_err(),
        RouteError::Missing("TopicN".into())
    );
    assert_eq!(c.stats().nacks, 1);
}

#[tokio::test]
async fn missing_is_immediate_and_timeout_is_bounded() {
    let mut h = serve(true).await;
    let c = client(h.addr, XdsMode::Delta);
    let w = {
        let c = c.clone();
        tokio::spawn(async move { c.route("Gone").await })
    };
    let sub = h.next_delta().await;
    assert_eq!(sub.resource_names_subscribe, vec!["rocketmq/Gone"]);
    h.send_delta(delta(
        VIRTUAL_HOST_TYPE,
        "m1",
        vec![],
        vec!["rocketmq/Gone".into()],
    ))
    .await;
    assert_eq!(
        w.await.unwrap().unwrap_err(),
        RouteError::Missing("Gone".into())
    );

    // The server never answers this one: the caller gets Timeout at its deadline, not later.
    let start = std::time::Instant::now();
    let e = c
        .route_until(
            "Silent",
            std::time::Instant::now() + Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RouteError::Timeout { .. }), "{e:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(
        e.to_string().contains("Silent") && e.to_string().contains(&h.addr.to_string()),
        "{e}"
    );
    // Bad names never reach the server.
    assert!(matches!(
        c.route("bad topic").await,
        Err(RouteError::InvalidTopic(_))
    ));
}

#[tokio::test]
async fn falls_back_to_sotw_when_delta_is_unimplemented() {
    let mut h = serve(false).await;
    let c = client(h.addr, XdsMode::Auto);
    let w = {
        let c = c.clone();
        tokio::spawn(async move { c.route("TopicS").await })
    };
    let mut types = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(T, h.sotw_in.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(r.response_nonce.is_empty());
        types.push((r.type_url.clone(), r.resource_names.clone()));
    }
    types.sort();
    assert_eq!(
        types,
        vec![
            (CLUSTER_TYPE.to_owned(), vec![]),
            (
                ROUTE_CONFIGURATION_TYPE.to_owned(),
                vec!["rocketmq".to_owned()]
            )
        ]
    );
    let (vhost, cluster) = build_topic("rocketmq/TopicS", &spec("TopicS", 6), false);
    let (other, _) = build_topic("rocketmq/Other", &spec("Other", 6), false);
    h.sotw_out
        .send(Ok(DiscoveryResponse {
            version_info: "1".into(),
            type_url: CLUSTER_TYPE.into(),
            nonce: "s1".into(),
            resources: vec![to_any(CLUSTER_TYPE, &cluster_to_proto(&cluster))],
            ..Default::default()
        }))
        .await
        .unwrap();
    h.sotw_out
        .send(Ok(DiscoveryResponse {
            version_info: "1".into(),
            type_url: ROUTE_CONFIGURATION_TYPE.into(),
            nonce: "s2".into(),
            resources: vec![to_any(
                ROUTE_CONFIGURATION_TYPE,
                &route_config_to_proto("rocketmq", [&vhost, &other]),
            )],
            ..Default::default()
        }))
        .await
        .unwrap();
    let r = tokio::time::timeout(T, w).await.unwrap().unwrap().unwrap();
    assert_eq!(r.topic, "TopicS");
    for _ in 0..2 {
        let ack = tokio::time::timeout(T, h.sotw_in.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ack.version_info, "1");
        assert!(ack.error_detail.is_none());
        assert!(["s1", "s2"].contains(&ack.response_nonce.as_str()));
    }
    // Every topic of the catalogue is held; "Other" names a cluster that does not exist.
    assert!(matches!(
        c.route("Other").await,
        Err(RouteError::Missing(_))
    ));
    assert!(matches!(
        c.route("Unknown").await,
        Err(RouteError::Missing(_))
    ));
    assert_eq!(c.config_dump().mode, XdsMode::Sotw);
    // A bad SotW update is NACKed with the last accepted version.
    let mut bad = cluster_to_proto(&cluster);
    bad.name.clear();
    h.sotw_out
        .send(Ok(DiscoveryResponse {
            version_info: "2".into(),
            type_url: CLUSTER_TYPE.into(),
            nonce: "s3".into(),
            resources: vec![to_any(CLUSTER_TYPE, &bad)],
            ..Default::default()
        }))
        .await
        .unwrap();
    let nack = tokio::time::timeout(T, h.sotw_in.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (nack.response_nonce.as_str(), nack.version_info.as_str()),
        ("s3", "1")
    );
    assert!(nack.error_detail.unwrap().message.contains("name is empty"));
    assert!(c.route("TopicS").await.is_ok());
}

/// A recorder that keeps counters only, keyed `name{label=value,...}`, for reading what the
/// client exported.
#[derive(Default)]
struct CountingRecorder {
    counters:
        Mutex<std::collections::HashMap<String, std::sync::Arc<std::sync::atomic::AtomicU64>>>,
}

impl CountingRecorder {
    fn id(key: &metrics::Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    fn get(&self, id: &str) -> u64 {
        self.counters
            .lock()
            .get(id)
            .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl metrics::Recorder for CountingRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let c = self
            .counters
            .lock()
            .entry(Self::id(key))
            .or_default()
            .clone();
        metrics::Counter::from_arc(c)
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// A NACK is exported as `xds.update_rejected{type}`, next to the attempt and resource counts;
/// the ACK of the next, good response as `xds.update_success`. The recorder is local to this
/// thread, so the client runs on a current-thread runtime here.
#[test]
fn nack_and_ack_are_counted_in_metrics() {
    let rec = CountingRecorder::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&rec, || {
        rt.block_on(async {
            let mut h = serve(true).await;
            let c = client(h.addr, XdsMode::Delta);
            let waiter = {
                let c = c.clone();
                tokio::spawn(async move { c.route("TopicM").await })
            };
            let sub = h.next_delta().await;
            assert_eq!(sub.resource_names_subscribe, vec!["rocketmq/TopicM"]);
            let (vhost, _) = build_topic("rocketmq/TopicM", &spec("TopicM", 6), false);
            let mut bad = vhost_to_proto(&vhost);
            bad.routes.clear();
            h.send_delta(delta(
                VIRTUAL_HOST_TYPE,
                "m1",
                vec![resource(
                    "rocketmq/TopicM",
                    "v0",
                    to_any(VIRTUAL_HOST_TYPE, &bad),
                )],
                vec![],
            ))
            .await;
            let nack = h.next_delta().await;
            assert_eq!(nack.response_nonce, "m1");
            assert!(nack.error_detail.is_some());
            // Counted before the NACK was sent.
            assert_eq!(rec.get("xds.update_rejected{type=virtual_host}"), 1);
            assert_eq!(rec.get("xds.update_attempt{type=virtual_host}"), 1);
            assert_eq!(rec.get("xds.resources_received{type=virtual_host}"), 1);
            assert_eq!(rec.get("xds.update_success{type=virtual_host}"), 0);
            assert_eq!(c.stats().nacks, 1);

            h.send_delta(delta(
                VIRTUAL_HOST_TYPE,
                "m2",
                vec![resource(
                    "rocketmq/TopicM",
                    "v1",
                    to_any(VIRTUAL_HOST_TYPE, &vhost_to_proto(&vhost)),
                )],
                vec![],
            ))
            .await;
            let ack = h
                .expect_delta("the ACK of m2", |r| r.response_nonce == "m2")
                .await;
            assert!(ack.error_detail.is_none());
            assert_eq!(rec.get("xds.update_success{type=virtual_host}"), 1);
            assert_eq!(rec.get("xds.update_rejected{type=virtual_host}"), 1);
            assert_eq!(rec.get("xds.update_attempt{type=virtual_host}"), 2);
            waiter.abort();
            c.shutdown();
        })
    });
}

/// The vhost and cluster of `topic` as a control plane serves them.
fn topic_resources(topic: &str, version: &str) -> (Resource, Resource) {
    let name = format!("rocketmq/{topic}");
    let (vhost, cluster) = build_topic(&name, &spec(topic, 6), false);
    (
        resource(
            &name,
            version,
            to_any(VIRTUAL_HOST_TYPE, &vhost_to_proto(&vhost)),
        ),
        resource(
            &cluster.name,
            version,
            to_any(CLUSTER_TYPE, &cluster_to_proto(&cluster)),
        ),
    )
}

/// A control plane that restarted empty reports the topics a reconnecting client holds as
/// removed before their brokers registered again. Within the reconnect grace the client keeps
/// serving the last good route; a topic the server sends again stays, one still removed when
/// the grace ends goes then, and removals after the grace apply at once.
#[tokio::test]
async fn removals_right_after_a_reconnect_keep_the_last_good_route_for_the_grace() {
    let grace = Duration::from_millis(1500);
    let mut h = serve(true).await;
    let mut cfg = ClientConfig::new(h.addr.to_string());
    cfg.mode = XdsMode::Delta;
    cfg.reconnect_grace = grace;
    let c = XdsClient::start(cfg);

    // Stream 1: Kept and Dropped are served. Removals of resources first received on a
    // stream are not deferred (nothing was held when it came up): shown by Fresh.
    let waiters: Vec<_> = ["Kept", "Dropped", "Fresh"]
        .into_iter()
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move { c.route(t).await })
        })
        .collect();
    let mut subscribed = std::collections::BTreeSet::new();
    while subscribed.len() < 3 {
        let r = h.next_delta().await;
        if r.type_url == VIRTUAL_HOST_TYPE {
            subscribed.extend(r.resource_names_subscribe);
        }
    }
    let (kv, kc) = topic_resources("Kept", "1");
    let (dv, dc) = topic_resources("Dropped", "1");
    let (fv, fc) = topic_resources("Fresh", "1");
    h.send_delta(delta(
        VIRTUAL_HOST_TYPE,
        "a1",
        vec![kv.clone(), dv, fv],
        vec![],
    ))
    .await;
    h.send_delta(delta(CLUSTER_TYPE, "a2", vec![kc.clone(), dc, fc], vec![]))
        .await;
    for w in waiters {
        tokio::time::timeout(T, w).await.unwrap().unwrap().unwrap();
    }
    // A removal on the stream that served the resource applies at once.
    remove_applies_at_once(&mut h, &c, "a3", "Fresh").await;

    // Stream 2 (the control plane restarted): the client announces what it holds...
    h.restart_delta().await;
    let first = h
        .expect_delta("the reconnect's VHDS request", |r| {
            r.type_url == VIRTUAL_HOST_TYPE && !r.initial_resource_versions.is_empty()
        })
        .await;
    assert_eq!(first.initial_resource_versions.len(), 2);
    let reconnected = std::time::Instant::now();
    // ...and hears both topics are gone (their brokers have not registered again yet).
    h.send_delta(delta(
        VIRTUAL_HOST_TYPE,
        "b1",
        vec![],
        vec!["rocketmq/Kept".into(), "rocketmq/Dropped".into()],
    ))
    .await;
    h.send_delta(delta(
        CLUSTER_TYPE,
        "b2",
        vec![],
        vec![kc.name.clone(), "rocketmq.topic.Dropped".into()],
    ))
    .await;
    h.expect_delta("ACK b2", |r| r.response_nonce == "b2").await;
    assert!(reconnected.elapsed() < grace, "too slow to check the grace");
    for t in ["Kept", "Dropped"] {
        let r = c.route(t).await;
        assert!(
            r.is_ok(),
            "{t}: the last good route serves through the grace: {r:?}"
        );
    }
    // Kept's broker registers again: the server sends it; its removal is cancelled.
    h.send_delta(delta(VIRTUAL_HOST_TYPE, "b3", vec![kv], vec![]))
        .await;
    h.send_delta(delta(CLUSTER_TYPE, "b4", vec![kc.clone()], vec![]))
        .await;
    h.expect_delta("ACK b4", |r| r.response_nonce == "b4").await;

    // The grace ends: Dropped's removal holds, Kept stays.
    removed_when_the_grace_ends(&c, "Dropped", reconnected, grace, |t| {
        matches!(t, Some(rocketmesh_xds::cache::TopicState::Missing { .. }))
    })
    .await;
    assert_eq!(
        c.route("Dropped").await.unwrap_err(),
        RouteError::Missing("Dropped".into())
    );
    assert!(c.route("Kept").await.is_ok());

    // After the grace a removal applies at once.
    remove_applies_at_once(&mut h, &c, "b5", "Kept").await;
}

/// Sends a VHDS removal of `topic` (nonce `nonce`), waits for its ACK, and checks the client
/// answers the topic as missing from then on.
async fn remove_applies_at_once(h: &mut Harness, c: &XdsClient, nonce: &str, topic: &str) {
    h.send_delta(delta(
        VIRTUAL_HOST_TYPE,
        nonce,
        vec![],
        vec![format!("rocketmq/{topic}")],
    ))
    .await;
    h.expect_delta(&format!("ACK {nonce}"), |r| r.response_nonce == nonce)
        .await;
    assert_eq!(
        c.route(topic).await.unwrap_err(),
        RouteError::Missing(topic.into())
    );
}

/// The reconnect grace in SotW: a response right after a reconnect that leaves out topics the
/// client held does not drop them until the grace ends, unless a later response has them again;
/// after the grace, a response without a topic drops it at once. The reconnecting client sends
/// the versions it last accepted.
#[tokio::test]
async fn sotw_keeps_left_out_routes_through_the_grace_after_a_reconnect() {
    let grace = Duration::from_millis(1500);
    let mut h = serve(false).await;
    let mut cfg = ClientConfig::new(h.addr.to_string());
    cfg.mode = XdsMode::Sotw;
    cfg.reconnect_grace = grace;
    let c = XdsClient::start(cfg);
    for _ in 0..2 {
        h.next_sotw().await;
    }
    h.sotw_state("1", &["Kept", "Dropped"]).await;
    assert!(c.route("Kept").await.is_ok() && c.route("Dropped").await.is_ok());

    h.restart_sotw().await;
    let mut versions = Vec::new();
    for _ in 0..2 {
        let r = h.next_sotw().await;
        versions.push(r.version_info);
    }
    assert_eq!(versions, ["1", "1"], "a reconnect sends the versions held");
    let reconnected = std::time::Instant::now();
    // The restarted server knows nothing yet.
    h.sotw_state("2", &[]).await;
    assert!(reconnected.elapsed() < grace, "too slow to check the grace");
    for t in ["Kept", "Dropped"] {
        let r = c.route(t).await;
        assert!(
            r.is_ok(),
            "{t}: the last good route serves through the grace: {r:?}"
        );
    }
    // Kept's broker is back.
    h.sotw_state("3", &["Kept"]).await;
    removed_when_the_grace_ends(&c, "Dropped", reconnected, grace, |t| {
        matches!(
            t,
            Some(rocketmesh_xds::cache::TopicState::Missing { .. }) | None
        )
    })
    .await;
    assert!(matches!(
        c.route("Dropped").await,
        Err(RouteError::Missing(_))
    ));
    assert!(c.route("Kept").await.is_ok());
    // After the grace a response without Kept drops it.
    h.sotw_state("4", &[]).await;
    assert!(matches!(c.route("Kept").await, Err(RouteError::Missing(_))));
}

/// Waits until `topic` is gone from the client's snapshot (`gone` says what gone looks like),
/// and checks that did not happen before the reconnect grace ended.
async fn removed_when_the_grace_ends(
    c: &XdsClient,
    topic: &str,
    reconnected: std::time::Instant,
    grace: Duration,
    gone: impl Fn(Option<&rocketmesh_xds::cache::TopicState>) -> bool,
) {
    while !gone(c.snapshot().get(topic)) {
        assert!(reconnected.elapsed() < grace + T, "{topic} never removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gone_after = reconnected.elapsed();
    assert!(
        gone_after >= grace,
        "removed after {gone_after:?}, before the grace ended"
    );
}
