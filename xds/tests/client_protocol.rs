//! The xDS client against a scripted ADS server over a real loopback gRPC connection: each test
//! plays the server's side message by message and checks the client's requests (ACK / NACK
//! nonces, error_detail, nonce-less subscription changes) and what the data path sees.
//! The real control plane is exercised in tests/it/xds_client.rs; this server exists
//! to send what a correct control plane never would (bad resources, no delta support).

mod fake_ads;

use fake_ads::*;

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
