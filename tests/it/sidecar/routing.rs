//! Route answers, sends, on-demand routes and static bootstrap, legacy auto-create, transactions, and QUERY_ASSIGNMENT.

use super::*;

// ---------------------------------------------------------------------------------------------
// 1. Route answers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_answer_is_one_virtual_broker_at_the_sidecar() {
    bounded(TEST, async {
        let mut mesh = Mesh::start("route", &["broker-a", "broker-b"]).await;
        let (a, b) = (mesh.broker(0).addr, mesh.broker(1).addr);
        create_topic(a, "RouteT", 6, 4).await;
        create_topic(b, "RouteT", 4, 8).await;
        let sc = mesh.add_sidecar(mesh.sidecar_config()).await;
        let c = connect(sc).await;

        let data = wait_route(&c, "RouteT", "both brokers", |d| {
            has_brokers(&["broker-a", "broker-b"])(d) && d.queue_datas[0].read_queue_nums == 12
        })
        .await;
        assert_eq!(data.queue_datas.len(), 1, "{:?}", data.queue_datas);
        let q = &data.queue_datas[0];
        assert_eq!(q.broker_name, VIRTUAL);
        assert_eq!(q.write_queue_nums, 4, "only broker-a is writable");
        assert_eq!(q.read_queue_nums, 4 + 8, "both brokers are readable");
        assert_eq!(q.perm, 6);
        assert_eq!(
            broker_names(&data),
            BTreeSet::from([VIRTUAL.into(), "broker-a".into(), "broker-b".into()])
        );
        let sidecar_addr = sc.to_string();
        for bd in &data.broker_datas {
            assert!(!bd.broker_addrs.is_empty());
            for addr in bd.broker_addrs.values() {
                assert_eq!(addr, &sidecar_addr, "a real address leaked: {bd:?}");
            }
        }
        let text = String::from_utf8(call(&c, route_request("RouteT", 401)).await.body().to_vec())
            .unwrap();
        assert!(!text.contains(&a.to_string()) && !text.contains(&b.to_string()));
        assert!(text.contains("{\"0\":"), "standard JSON for 4.9.4+: {text}");

        // Old clients get fastjson's unquoted integer keys; the body still parses.
        let legacy = call(&c, route_request("RouteT", 399)).await;
        assert_eq!(legacy.code(), response_code::SUCCESS);
        let text = String::from_utf8(legacy.body().to_vec()).unwrap();
        assert!(text.contains("{0:"), "legacy JSON for old clients: {text}");
        assert!(!text.contains("{\"0\":"), "{text}");
        assert_eq!(TopicRouteData::parse(legacy.body()).unwrap(), data);

        c.close();
        mesh.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Sends
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_map_virtual_queues_to_writable_brokers() {
    bounded(TEST, async {
        let mut mesh = Mesh::start("send", &["broker-a", "broker-b", "broker-c"]).await;
        let (a, b, cc) = (
            mesh.broker(0).addr,
            mesh.broker(1).addr,
            mesh.broker(2).addr,
        );
        let topic = "SendT";
        create_topic(a, topic, 6, 4).await;
        create_topic(b, topic, 4, 4).await;
        create_topic(cc, topic, 6, 2).await;
        let sc = mesh.add_sidecar(mesh.sidecar_config()).await;
        let c = connect(sc).await;
        let data = wait_route(&c, topic, "three brokers", |d| {
            has_brokers(&["broker-a", "broker-b", "broker-c"])(d)
                && d.queue_datas[0].write_queue_nums == 6
        })
        .await;
        // Writable masters by name: broker-a 0..4, broker-c 4..6.
        let nq = data.queue_datas[0].write_queue_nums;
        assert_eq!(nq, 6);

        // An SDK round-robins over the virtual queues: 5 rounds.
        let rounds = 5;
        for i in 0..rounds {
            for q in 0..nq {
                let got = send_ok(&c, send_v2(topic, q, &format!("r{i}q{q}"))).await;
                assert_eq!(got, q, "the response is in the SDK's queue space");
            }
        }
        assert_eq!(max_offsets(a, topic, 4).await, vec![rounds; 4]);
        assert_eq!(max_offsets(cc, topic, 2).await, vec![rounds; 2]);
        assert_eq!(
            max_offsets(b, topic, 4).await,
            vec![0; 4],
            "read-only broker-b took writes"
        );

        // V1 to virtual queue 5 lands on broker-c queue 1.
        let mut props = Properties::default();
        props.insert(property_keys::UNIQ_KEY, "v1-key");
        let v1 = SendMessageRequestHeader {
            producer_group: "sc_producer".into(),
            topic: topic.into(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id: 5,
            sys_flag: 0,
            born_timestamp: 0,
            flag: 0,
            properties: Some(props.to_wire_string()),
            ..Default::default()
        };
        let got = send_ok(
            &c,
            RemotingCommand::request_with_header(rc::SEND_MESSAGE, &v1).with_body(&b"v1"[..]),
        )
        .await;
        assert_eq!(got, 5);
        assert_eq!(max_offset(cc, topic, 1).await, rounds + 1);

        // A batch of 3 to virtual queue 2 lands on broker-a queue 2.
        let batch: Vec<BatchMessage> = (0..3)
            .map(|i| {
                let mut p = Properties::default();
                p.insert(property_keys::UNIQ_KEY, format!("batch-{i}"));
                BatchMessage {
                    flag: 0,
                    body: format!("b{i}").into_bytes().into(),
                    properties: p,
                }
            })
            .collect();
        let h = SendMessageRequestHeaderV2 {
            a: "sc_producer".into(),
            b: topic.into(),
            c: "TBW102".into(),
            d: 4,
            e: 2,
            m: Some(true),
            ..Default::default()
        };
        let got = send_ok(
            &c,
            RemotingCommand::request_with_header(rc::SEND_BATCH_MESSAGE, &h)
                .with_body(encode_batch(&batch).unwrap()),
        )
        .await;
        assert_eq!(got, 2);
        assert_eq!(max_offset(a, topic, 2).await, rounds + 3);
        assert_eq!(max_offsets(b, topic, 4).await, vec![0; 4]);

        c.close();
        mesh.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. On demand, timeouts, static bootstrap
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_are_missing_at_once() {
    bounded(TEST, async {
        let mut mesh = Mesh::start("missing", &["broker-a"]).await;
        let a = mesh.broker(0).addr;
        create_topic(a, "KnownT", 6, 4).await;
        let sc = mesh.add_sidecar(mesh.sidecar_config()).await;
        let c = connect(sc).await;
        wait_route(&c, "KnownT", "the known topic", |_| true).await;

        // (A send would not do: with defaultTopic=TBW102 it auto-creates, see below.)
        for req in [
            route_request("NoSuchT", 401),
            pop_request("NoSuchT2", 10_000, 0),
        ] {
            let start = Instant::now();
            let resp = call(&c, req).await;
            assert_eq!(
                resp.code(),
                response_code::TOPIC_NOT_EXIST,
                "{:?}",
                resp.remark()
            );
            assert!(resp.remark().unwrap_or("").contains("NoSuchT"));
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "Missing must not wait for the route timeout: {:?}",
                start.elapsed()
            );
        }
        // Only what was asked for is held.
        let dump = mesh.sidecars[0].core().xds().config_dump();
        assert_eq!(dump.topics_ready, vec!["KnownT"]);
        c.close();
        mesh.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_xds_server_times_out_with_a_clear_remark() {
    bounded(TEST, async {
        // Accepts connections and never answers (not even the HTTP/2 handshake).
        let silent = tokio::net::TcpListener::bind(local()).await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let mut cfg = sidecar_config(Some(silent_addr));
        cfg.route_timeout = Duration::from_millis(500);
        // Not ready: the xDS server never answered.
        let sc = sidecar::start(cfg).await.unwrap();
        assert!(!sc.wait_ready(Duration::from_millis(200)).await);
        let c = connect(sc.addr).await;
        for req in [route_request("SlowT", 401), send_v2("SlowT", 0, "x")] {
            let start = Instant::now();
            let resp = call(&c, req).await;
            let took = start.elapsed();
            assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
            let remark = resp.remark().unwrap_or("");
            assert!(
                remark.contains("SlowT") && remark.contains(&silent_addr.to_string()),
                "the remark says what timed out: {remark}"
            );
            assert!(
                took >= Duration::from_millis(400) && took < Duration::from_secs(3),
                "answered after {took:?}"
            );
        }
        c.close();
        sc.shutdown().await;
        holder.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_bootstrap_needs_no_control_plane() {
    bounded(TEST, async {
        let a = start_broker("broker-a", "static", None).await;
        create_topic(a.addr, "StaticT", 6, 4).await;
        let path = write_bootstrap(
            "static-cfg",
            &[("main", &[(&a, "broker-a", 6, 4)])],
            &[("StaticT", "main")],
        );
        let mut cfg = sidecar_config(None);
        cfg.bootstrap = Some(path);
        let sc = start_sidecar(cfg).await;
        let c = connect(sc.addr).await;
        let resp = call(&c, route_request("StaticT", 401)).await;
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        let data = TopicRouteData::parse(resp.body()).unwrap();
        assert_eq!(data.queue_datas[0].write_queue_nums, 4);
        for q in 0..4 {
            assert_eq!(
                send_ok(&c, send_v2("StaticT", q, &format!("s{q}"))).await,
                q
            );
        }
        assert_eq!(max_offsets(a.addr, "StaticT", 4).await, vec![1; 4]);
        let popped = pop_n(&c, "StaticT", 4, 10_000).await;
        for p in &popped {
            let resp = call(&c, ack_request("StaticT", p)).await;
            assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        }
        // A topic outside the bootstrap does not exist.
        let resp = call(&c, route_request("OtherT", 401)).await;
        assert_eq!(resp.code(), response_code::TOPIC_NOT_EXIST);
        c.close();
        sc.shutdown().await;
        a.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Auto-creation the legacy way
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_auto_create_through_the_default_topic() {
    bounded(TEST, async {
        let cp = control_plane().await;
        // Default registration interval (30 s): the new topic must travel by the broker's
        // on-change registration, not by a periodic one.
        let mut bcfg = BrokerConfig::new(local(), temp_dir("autocreate-broker-a"));
        bcfg.namesrv = Some(cp.remoting_addr.to_string());
        let a = broker::start(bcfg).await.unwrap();
        let sc = start_sidecar(sidecar_config(cp.xds_addr)).await;
        let c = connect(sc.addr).await;

        let topic = "AutoCreatedT";
        let resp = call(&c, route_request(topic, 401)).await;
        assert_eq!(resp.code(), response_code::TOPIC_NOT_EXIST);
        // The SDK falls back to TBW102's route...
        let tbw = wait_route(&c, "TBW102", "TBW102", |d| {
            d.queue_datas[0].write_queue_nums > 0
        })
        .await;
        assert!(has_brokers(&["broker-a"])(&tbw));
        // ...and sends with defaultTopic=TBW102.
        send_ok(&c, send_v2_default(topic, "TBW102", 0, "first")).await;
        assert_eq!(max_offset(a.addr, topic, 0).await, 1);
        // The broker registered the new topic: its own route shows up (no stale negative entry).
        let start = Instant::now();
        let data = wait_route(&c, topic, "the auto-created topic's route", |_| true).await;
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(has_brokers(&["broker-a"])(&data));
        assert_eq!(send_ok(&c, send_v2(topic, 0, "second")).await, 0);
        assert_eq!(max_offset(a.addr, topic, 0).await, 2);
        c.close();
        sc.shutdown().await;
        a.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Transactions: END_TRANSACTION goes to the broker holding the half message
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_transaction_reaches_the_broker_of_the_half_message() {
    bounded(TEST, async {
        let a = start_broker("broker-a", "txn", None).await;
        create_topic(a.addr, "TxnT", 6, 4).await;
        let path = write_bootstrap(
            "txn-cfg",
            &[("main", &[(&a, "broker-a", 6, 4)])],
            &[("TxnT", "main")],
        );
        let mut cfg = sidecar_config(None);
        cfg.bootstrap = Some(path);
        let sc = start_sidecar(cfg).await;
        let c = connect(sc.addr).await;
        // A half message: the SDK marks it TRAN_MSG=true and later names its id in END_TRANSACTION.
        let mut props = Properties::default();
        props.insert(property_keys::UNIQ_KEY, "TXN-1");
        props.insert(property_keys::TRAN_MSG, "true");
        props.insert(property_keys::PGROUP, "txn_producer");
        let h = SendMessageRequestHeaderV2 {
            a: "txn_producer".into(),
            b: "TxnT".into(),
            c: "TBW102".into(),
            d: 4,
            e: 0,
            i: Some(props.to_wire_string()),
            ..SendMessageRequestHeaderV2::default()
        };
        let resp = call(
            &c,
            RemotingCommand::request_with_header(rc::SEND_MESSAGE_V2, &h).with_body(&b"half"[..]),
        )
        .await;
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        let msg_id = resp
            .decode_header::<SendMessageResponseHeader>()
            .unwrap()
            .msg_id;
        let end = |id: &str| {
            let h = EndTransactionRequestHeader {
                producer_group: "txn_producer".into(),
                tran_state_table_offset: 0,
                commit_log_offset: 0,
                commit_or_rollback: 8,
                msg_id: id.into(),
                ..Default::default()
            };
            RemotingCommand::request_with_header(rc::END_TRANSACTION, &h)
        };
        // The bundled broker does not do transactions: its own answer proves the request got there.
        let resp = call(&c, end(&msg_id)).await;
        assert_eq!(
            resp.code(),
            response_code::REQUEST_CODE_NOT_SUPPORTED,
            "{:?}",
            resp.remark()
        );
        assert!(
            resp.remark().unwrap_or("").contains("37"),
            "{:?}",
            resp.remark()
        );
        // An id the sidecar never saw is refused here, not sent somewhere at random.
        let resp = call(&c, end("AC110001000078B40000000000000000")).await;
        assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
        let resp = call(&c, end("no-such-id")).await;
        assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
        assert!(
            resp.remark().unwrap_or("").contains("no-such-id"),
            "{:?}",
            resp.remark()
        );
        c.close();
        sc.shutdown().await;
        a.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5.x clients in pop mode: QUERY_ASSIGNMENT / SET_MESSAGE_REQUEST_MODE
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_assignment_hands_out_every_virtual_queue_in_pop_mode() {
    use rocketmesh_filters::codec::body::{
        MessageModel, MessageRequestMode, QueryAssignmentRequestBody, QueryAssignmentResponseBody,
        SetMessageRequestModeRequestBody,
    };
    bounded(TEST, async {
        let mut mesh = Mesh::start("assign", &["broker-a", "broker-b"]).await;
        let (a, b) = (mesh.broker(0).addr, mesh.broker(1).addr);
        create_topic(a, "AssignT", 6, 4).await;
        create_topic(b, "AssignT", 6, 2).await;
        let sc = mesh.add_sidecar(mesh.sidecar_config()).await;
        let c = connect(sc).await;
        wait_route(&c, "AssignT", "both brokers", |d| {
            d.queue_datas[0].read_queue_nums == 6
        })
        .await;

        let mode = SetMessageRequestModeRequestBody {
            consumer_group: GROUP.into(),
            topic: "AssignT".into(),
            mode: MessageRequestMode::Pop,
            ..Default::default()
        };
        let resp = call(
            &c,
            RemotingCommand::request(rc::SET_MESSAGE_REQUEST_MODE).with_body(mode.to_json()),
        )
        .await;
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());

        let ask = |model| QueryAssignmentRequestBody {
            client_id: "10.0.0.1@5x".into(),
            consumer_group: GROUP.into(),
            message_model: model,
            strategy_name: "AVG".into(),
            topic: "AssignT".into(),
        };
        for (model, want) in [
            (MessageModel::Clustering, MessageRequestMode::Pop),
            (MessageModel::Broadcasting, MessageRequestMode::Pull),
        ] {
            let resp = call(
                &c,
                RemotingCommand::request(rc::QUERY_ASSIGNMENT).with_body(ask(model).to_json()),
            )
            .await;
            assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
            let got = QueryAssignmentResponseBody::parse(resp.body()).unwrap();
            let queues: Vec<i32> = got
                .message_queue_assignments
                .iter()
                .map(|m| m.message_queue.queue_id)
                .collect();
            assert_eq!(queues, (0..6).collect::<Vec<_>>(), "{got:?}");
            for m in &got.message_queue_assignments {
                assert_eq!(m.mode, want);
                assert_eq!(m.message_queue.broker_name, VIRTUAL);
                assert_eq!(m.message_queue.topic, "AssignT");
            }
        }
        // An unknown topic is TOPIC_NOT_EXIST, as for a route.
        let mut missing = ask(MessageModel::Clustering);
        missing.topic = "NoSuchAssignT".into();
        let resp = call(
            &c,
            RemotingCommand::request(rc::QUERY_ASSIGNMENT).with_body(missing.to_json()),
        )
        .await;
        assert_eq!(resp.code(), response_code::TOPIC_NOT_EXIST);

        // A pop of an assigned virtual queue reaches the broker behind it: virtual queue 5 is
        // broker-b's queue 1 (broker-a holds 0..4).
        send_ok(&c, send_v2("AssignT", 5, "assigned")).await;
        assert_eq!(max_offsets(b, "AssignT", 2).await, vec![0, 1]);
        let mut req = pop_request("AssignT", 10_000, 1_000);
        req.ext_mut().put("queueId", 5);
        let resp = call(&c, req).await;
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        assert_eq!(decode_records(resp.body()).unwrap().len(), 1);
        c.close();
        mesh.shutdown().await;
    })
    .await;
}
