//! The xDS client's reconnect grace against the scripted ADS server (`fake_ads`): a control
//! plane that restarted empty reports topics gone before their brokers re-register; the client
//! keeps the last good route for the grace, in delta and in SotW.

mod fake_ads;

use fake_ads::*;

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
