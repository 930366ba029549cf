//! A scripted ADS server over a real loopback gRPC connection, for the xDS client's tests: each
//! test plays the server's side message by message (`Harness`) and checks the client's requests.
// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

pub use parking_lot::Mutex;
pub use std::collections::BTreeMap;
pub use std::time::Duration;

pub use rocketmesh_xds::client::{ClientConfig, RouteError, XdsClient, XdsMode};
pub use rocketmesh_xds::model::{BrokerQueues, TopicRouteSpec};
pub use rocketmesh_xds::resources::{
    build_topic, cluster_to_proto, route_config_to_proto, to_any, vhost_to_proto, CLUSTER_TYPE,
    ROUTE_CONFIGURATION_TYPE, VIRTUAL_HOST_TYPE,
};
pub use tokio::sync::mpsc;
pub use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
pub use tokio_stream::StreamExt;
pub use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
pub use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};

pub const T: Duration = Duration::from_secs(10);

pub type DeltaRx = mpsc::Receiver<Result<DeltaDiscoveryResponse, tonic::Status>>;
pub type SotwRx = mpsc::Receiver<Result<DiscoveryResponse, tonic::Status>>;

/// A scripted server: the test reads what the client sent and decides what to answer.
pub struct Script {
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

pub struct Harness {
    pub addr: std::net::SocketAddr,
    pub script: std::sync::Arc<Script>,
    pub delta_in: mpsc::Receiver<DeltaDiscoveryRequest>,
    pub delta_out: mpsc::Sender<Result<DeltaDiscoveryResponse, tonic::Status>>,
    pub sotw_in: mpsc::Receiver<DiscoveryRequest>,
    pub sotw_out: mpsc::Sender<Result<DiscoveryResponse, tonic::Status>>,
}

pub async fn serve(delta: bool) -> Harness {
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

pub fn spec(topic: &str, perm: u32) -> TopicRouteSpec {
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

pub fn resource(name: &str, version: &str, any: xds_api::pb::google::protobuf::Any) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(any),
        ..Default::default()
    }
}

pub fn delta(
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
    pub async fn restart_delta(&mut self) {
        let (tx, rx) = mpsc::channel(64);
        self.script.delta_responses.lock().push_back(rx);
        let old = std::mem::replace(&mut self.delta_out, tx);
        old.send(Err(tonic::Status::unavailable("control plane restarting")))
            .await
            .unwrap();
    }

    /// [`Harness::restart_delta`] for the SotW stream.
    pub async fn restart_sotw(&mut self) {
        let (tx, rx) = mpsc::channel(64);
        self.script.sotw_responses.lock().push_back(rx);
        let old = std::mem::replace(&mut self.sotw_out, tx);
        old.send(Err(tonic::Status::unavailable("control plane restarting")))
            .await
            .unwrap();
    }

    pub async fn next_sotw(&mut self) -> DiscoveryRequest {
        tokio::time::timeout(T, self.sotw_in.recv())
            .await
            .expect("client request")
            .expect("stream open")
    }

    /// The whole state as a SotW server sends it: the clusters and the route configuration of
    /// `topics`, then waits for both ACKs.
    pub async fn sotw_state(&mut self, version: &str, topics: &[&str]) {
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

    pub async fn next_delta(&mut self) -> DeltaDiscoveryRequest {
        tokio::time::timeout(T, self.delta_in.recv())
            .await
            .expect("client request")
            .expect("stream open")
    }

    pub async fn send_delta(&self, r: DeltaDiscoveryResponse) {
        self.delta_out.send(Ok(r)).await.unwrap();
    }

    /// Reads requests until one matches `pred` (ACKs and subscriptions may interleave).
    pub async fn expect_delta(
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

pub fn client(addr: std::net::SocketAddr, mode: XdsMode) -> XdsClient {
    let mut cfg = ClientConfig::new(addr.to_string());
    cfg.mode = mode;
    cfg.route_timeout = Duration::from_secs(5);
    XdsClient::start(cfg)
}
