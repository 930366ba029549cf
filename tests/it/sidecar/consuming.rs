//! Pop and ack through the sidecar (stateless handles) and the client table.

use super::*;

// ---------------------------------------------------------------------------------------------
// 3. Pop / ack: stateless
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_follow_the_pop_handle_across_connections_and_restarts() {
    bounded(TEST, async {
        let cp = control_plane().await;
        let a = start_broker("broker-a", "pop", Some(cp.remoting_addr)).await;
        let cc = start_broker("broker-c", "pop", Some(cp.remoting_addr)).await;
        let topic = "PopT";
        create_topic(a.addr, topic, 6, 2).await;
        create_topic(cc.addr, topic, 6, 2).await;
        let sc = start_sidecar(sidecar_config(cp.xds_addr)).await;
        let port = sc.addr.port();
        let producer = connect(sc.addr).await;
        wait_route(&producer, topic, "both brokers", |d| {
            d.queue_datas[0].read_queue_nums == 4
        })
        .await;
        let total = 12;
        for i in 0..total {
            send_ok(&producer, send_v2(topic, i % 4, &format!("m{i}"))).await;
        }
        assert_eq!(max_offsets(a.addr, topic, 2).await, vec![3, 3]);
        assert_eq!(max_offsets(cc.addr, topic, 2).await, vec![3, 3]);

        let consumer = connect(sc.addr).await;
        let invisible = 3_000;
        let popped = pop_n(&consumer, topic, total as usize, invisible).await;
        let by_broker: BTreeSet<&str> = popped.iter().map(|p| &*p.handle.broker_name).collect();
        assert_eq!(
            by_broker,
            BTreeSet::from(["broker-a", "broker-c"]),
            "handles must name the real broker that popped them"
        );
        let (first, rest) = popped.split_at(4);

        // Ack on a different connection than the pop's.
        let acker = connect(sc.addr).await;
        for p in first {
            let resp = call(&acker, ack_request(topic, p)).await;
            assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        }

        // Restart the sidecar on the same port; ack the rest through the new one.
        for c in [&producer, &consumer, &acker] {
            c.close();
        }
        sc.shutdown().await;
        let mut cfg = sidecar_config(cp.xds_addr);
        cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
        let sc = start_sidecar(cfg).await;
        let c = connect(sc.addr).await;

        // One ACK, one CHANGE_MESSAGE_INVISIBLETIME (to far away), the rest in BATCH_ACKs.
        let resp = call(&c, ack_request(topic, &rest[0])).await;
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        let p = &rest[1];
        let h = ChangeInvisibleTimeRequestHeader {
            consumer_group: GROUP.into(),
            topic: topic.into(),
            queue_id: p.handle.queue_id,
            offset: p.handle.queue_offset,
            extra_info: p.handle.to_extra_info(),
            invisible_time: 60_000,
            ..Default::default()
        };
        let resp = call(
            &c,
            RemotingCommand::request_with_header(rc::CHANGE_MESSAGE_INVISIBLETIME, &h),
        )
        .await;
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        // Batch acks group by broker, queue and checkpoint, as the SDK does.
        let mut groups: BTreeMap<(String, i32, i64), Vec<&Popped>> = BTreeMap::new();
        for p in &rest[2..] {
            groups
                .entry((
                    p.handle.broker_name.to_string(),
                    p.handle.queue_id,
                    p.handle.ck_queue_offset,
                ))
                .or_default()
                .push(p);
        }
        for ((broker_name, queue_id, start), ps) in groups {
            let mut bits = AckBitSet::default();
            for p in &ps {
                bits.set((p.handle.queue_offset - start) as usize);
            }
            let h = &ps[0].handle;
            let body = BatchAckMessageRequestBody {
                broker_name,
                acks: vec![BatchAck {
                    consumer_group: GROUP.into(),
                    topic: topic.into(),
                    retry: "0".into(),
                    start_offset: start,
                    queue_id,
                    revive_queue_id: h.revive_qid,
                    pop_time: h.pop_time,
                    invisible_time: h.invisible_time,
                    bit_set: bits,
                }],
            };
            let resp = call(
                &c,
                RemotingCommand::request(rc::BATCH_ACK_MESSAGE).with_body(body.to_json()),
            )
            .await;
            assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        }

        // Every handle was honoured: the brokers hold one checkpoint between them (the message
        // made invisible for a minute), nothing else they could revive, and nothing comes back.
        eventually("every other pop checkpoint acked", || {
            a.pop_checkpoints() + cc.pop_checkpoints() == 1
        })
        .await;
        let back = pop(&c, topic, 60_000, 500).await;
        let bodies: Vec<&str> = back.iter().map(|p| p.body.as_str()).collect();
        assert!(bodies.is_empty(), "messages came back: {bodies:?}");

        c.close();
        sc.shutdown().await;
        a.shutdown().await;
        cc.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. Client table
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_span_connections() {
    bounded(TEST, async {
        let a = start_broker("broker-a", "groups", None).await;
        create_topic(a.addr, "GroupT", 6, 4).await;
        let path = write_bootstrap(
            "groups-cfg",
            &[("main", &[(&a, "broker-a", 6, 4)])],
            &[("GroupT", "main")],
        );
        let mut cfg = sidecar_config(None);
        cfg.bootstrap = Some(path);
        let sc = start_sidecar(cfg).await;
        let c1 = connect(sc.addr).await;
        let c2 = connect(sc.addr).await;
        for (c, id) in [(&c1, "10.0.0.1@1"), (&c2, "10.0.0.2@2")] {
            let resp = call(c, heartbeat(id)).await;
            assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        }
        // One table for the sidecar: both clients are members (Envoy's filter kept a table per
        // connection and never added a second member)...
        let groups = sc.core().groups.clone();
        assert_eq!(groups.consumers(GROUP), vec!["10.0.0.1@1", "10.0.0.2@2"]);
        // ...but each legacy consumer is told it is alone, so it takes every queue: its pulls
        // become pops, which share the queues with every other consumer of the group.
        assert_eq!(consumers(&c1).await, vec!["10.0.0.1@1"]);
        assert_eq!(consumers(&c2).await, vec!["10.0.0.2@2"]);

        // A bad heartbeat is answered (Envoy's filter never answered it).
        let resp = call(
            &c1,
            RemotingCommand::request(rc::HEART_BEAT).with_body(&b"not json"[..]),
        )
        .await;
        assert_eq!(resp.code(), response_code::SYSTEM_ERROR);

        let h = UnregisterClientRequestHeader {
            client_id: "10.0.0.1@1".into(),
            consumer_group: Some(GROUP.into()),
            ..Default::default()
        };
        let resp = call(
            &c1,
            RemotingCommand::request_with_header(rc::UNREGISTER_CLIENT, &h),
        )
        .await;
        assert_eq!(resp.code(), response_code::SUCCESS);
        assert_eq!(groups.consumers(GROUP), vec!["10.0.0.2@2"]);
        assert!(
            consumers(&c1).await.is_empty(),
            "unregistered: not even itself"
        );

        // Closing a connection removes its client.
        c2.close();
        let start = Instant::now();
        while !groups.consumers(GROUP).is_empty() {
            assert!(
                start.elapsed() < T,
                "closed connection's client still listed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c1.close();
        sc.shutdown().await;
        a.shutdown().await;
    })
    .await;
}
