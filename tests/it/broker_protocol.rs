//! Broker behaviour at the protocol's edges, over loopback: registration with a nameserver,
//! limits, malformed headers, unknown codes, pull long polling, offsets.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocketmesh::broker::{self, BrokerConfig, BrokerHandle};
use rocketmesh::remoting::{serve, Connection, Handler, RemotingClient, ServerConfig};
use rocketmesh_filters::codec::body::{RegisterBrokerBody, TopicRouteData};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::*;
use rocketmesh_filters::codec::message::decode_records;
use rocketmesh_filters::codec::{RemotingCommand, ResponseEncoding};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, temp_dir, T};

async fn start(
    name: &str,
    tweak: impl FnOnce(&mut BrokerConfig),
) -> (BrokerHandle, std::path::PathBuf) {
    let dir = temp_dir(name);
    let mut cfg = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.clone());
    tweak(&mut cfg);
    (broker::start(cfg).await.unwrap(), dir)
}

fn send_req(topic: &str, queue: i32, body: Vec<u8>) -> RemotingCommand {
    let h = SendMessageRequestHeaderV2 {
        a: "pg".into(),
        b: topic.into(),
        c: "TBW102".into(),
        d: 4,
        e: queue,
        f: 0,
        g: 0,
        h: 0,
        ..SendMessageRequestHeaderV2::default()
    };
    RemotingCommand::request_with_header(rc::SEND_MESSAGE_V2, &h).with_body(body)
}

/// A nameserver stand-in that records what brokers send it.
#[derive(Default)]
struct FakeNamesrv {
    seen: Mutex<Vec<RemotingCommand>>,
}

impl Handler for FakeNamesrv {
    async fn handle(
        self: &Arc<Self>,
        req: RemotingCommand,
        _c: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        self.seen.lock().push(req.clone());
        Some(req.response_to(response_code::SUCCESS, ResponseEncoding::Json))
    }
}

impl FakeNamesrv {
    fn registered_topics(&self) -> Vec<Vec<String>> {
        self.seen
            .lock()
            .iter()
            .filter(|c| c.code() == rc::REGISTER_BROKER)
            .map(|c| {
                let h: RegisterBrokerRequestHeader = c.decode_header().unwrap();
                assert_eq!(h.broker_name, "broker-a");
                let body =
                    RegisterBrokerBody::decode(c.body(), h.compressed.unwrap_or(false)).unwrap();
                body.topic_config_serialize_wrapper
                    .topic_config_table
                    .keys()
                    .cloned()
                    .collect()
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_at_start_on_topic_creation_and_unregisters_on_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ns_addr = listener.local_addr().unwrap();
    let ns = Arc::new(FakeNamesrv::default());
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        ns.clone(),
        ServerConfig::default(),
        stop.clone(),
    ));

    let (b, dir) = start("register", |c| {
        c.namesrv = Some(ns_addr.to_string());
        c.read_only_topics = vec!["ReadOnlyTopic".into()];
    })
    .await;
    eventually("first registration", || !ns.registered_topics().is_empty()).await;
    let first = ns.registered_topics()[0].clone();
    assert!(first.contains(&"TBW102".to_owned()));
    assert!(first.contains(&"ReadOnlyTopic".to_owned()));

    // auto-creating a topic re-registers at once, not after 30 s
    let c = RemotingClient::connect(b.addr, None).await.unwrap();
    let resp = c
        .invoke(send_req("FreshTopic", 0, b"x".to_vec()), T)
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS);
    eventually("re-registration with the new topic", || {
        ns.registered_topics()
            .iter()
            .any(|t| t.contains(&"FreshTopic".to_owned()))
    })
    .await;

    // a send to the read-only topic is refused; the route says perm 4
    let resp = c
        .invoke(send_req("ReadOnlyTopic", 0, b"x".to_vec()), T)
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::NO_PERMISSION);
    b.shutdown().await;
    eventually("unregistration", || {
        ns.seen
            .lock()
            .iter()
            .any(|c| c.code() == rc::UNREGISTER_BROKER)
    })
    .await;
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let (b, dir) = start("bad", |c| c.max_message_size = 1024).await;
    let c = RemotingClient::connect(b.addr, None).await.unwrap();

    // unknown code: REQUEST_CODE_NOT_SUPPORTED naming it
    let resp = c.invoke(RemotingCommand::request(4242), T).await.unwrap();
    assert_eq!(resp.code(), response_code::REQUEST_CODE_NOT_SUPPORTED);
    assert!(resp.remark().unwrap().contains("4242"));

    // a send without its topic field: the remark names the field
    let mut req = send_req("T", 0, b"x".to_vec());
    req.ext_mut().remove("b");
    let resp = c.invoke(req, T).await.unwrap();
    assert_eq!(resp.code(), response_code::MESSAGE_ILLEGAL);
    assert!(
        resp.remark().unwrap().contains("`b`"),
        "{:?}",
        resp.remark()
    );

    // a pull with a malformed queueId
    let mut pull = RemotingCommand::request_with_header(
        rc::PULL_MESSAGE,
        &PullMessageRequestHeader {
            consumer_group: "g".into(),
            topic: "T".into(),
            ..PullMessageRequestHeader::default()
        },
    );
    pull.ext_mut().insert("queueId", "zero");
    let resp = c.invoke(pull, T).await.unwrap();
    assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
    assert!(
        resp.remark().unwrap().contains("queueId"),
        "{:?}",
        resp.remark()
    );

    // a body over the limit
    let resp = c.invoke(send_req("T", 0, vec![0; 2048]), T).await.unwrap();
    assert_eq!(resp.code(), response_code::MESSAGE_ILLEGAL);

    // a queue id beyond the topic's queues
    let resp = c.invoke(send_req("T", 99, b"x".to_vec()), T).await.unwrap();
    assert_eq!(resp.code(), response_code::SYSTEM_ERROR);

    // an invalid topic name
    let resp = c
        .invoke(send_req("bad topic", 0, b"x".to_vec()), T)
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::MESSAGE_ILLEGAL);

    // the connection still works
    let resp = c.invoke(send_req("T", 0, b"ok".to_vec()), T).await.unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS);
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_long_polls_until_a_message_arrives() {
    let (b, dir) = start("longpoll", |_| {}).await;
    let c = RemotingClient::connect(b.addr, None).await.unwrap();
    assert_eq!(
        c.invoke(send_req("LP", 0, b"first".to_vec()), T)
            .await
            .unwrap()
            .code(),
        0
    );
    let route = c
        .invoke(
            RemotingCommand::request_with_header(
                rc::GET_ROUTEINFO_BY_TOPIC,
                &GetRouteInfoRequestHeader {
                    topic: "LP".into(),
                    accept_standard_json_only: None,
                },
            ),
            T,
        )
        .await
        .unwrap();
    let route = TopicRouteData::parse(route.body()).unwrap();
    assert_eq!(
        route.broker_datas[0].master_addr(),
        Some(b.addr.to_string().as_str())
    );

    let pull = |offset: i64| {
        let h = PullMessageRequestHeader {
            consumer_group: "lpg".into(),
            topic: "LP".into(),
            queue_id: 0,
            queue_offset: offset,
            max_msg_nums: 32,
            sys_flag: PullSysFlag::new(false, true, true, false).into(),
            commit_offset: 0,
            suspend_timeout_millis: 5_000,
            sub_version: 0,
            subscription: Some("*".into()),
            ..PullMessageRequestHeader::default()
        };
        RemotingCommand::request_with_header(rc::PULL_MESSAGE, &h)
    };
    let resp = c.invoke(pull(0), T).await.unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS);
    let h: PullMessageResponseHeader = resp.decode_header().unwrap();
    assert_eq!(h.next_begin_offset, 1);

    // a pull at the end is held, then answered as soon as a message arrives
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = c.invoke(pull(1), T).await.unwrap();
            (resp, started.elapsed())
        })
    };
    eventually("the pull is parked", || b.parked("LP") == 1).await;
    assert!(!waiter.is_finished(), "the pull is parked");
    assert_eq!(
        c.invoke(send_req("LP", 0, b"second".to_vec()), T)
            .await
            .unwrap()
            .code(),
        0
    );
    let (resp, took) = waiter.await.unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS);
    assert!(
        took < Duration::from_secs(3),
        "woken by the send, not the timeout: {took:?}"
    );
    let msgs = decode_records(resp.body()).unwrap();
    assert_eq!(&msgs[0].body[..], b"second");

    // no message: PULL_NOT_FOUND after the suspend time, with the four required fields
    let resp = c.invoke(pull(2), T).await.unwrap();
    assert_eq!(resp.code(), response_code::PULL_NOT_FOUND);
    let h: PullMessageResponseHeader = resp.decode_header().unwrap();
    assert_eq!(h.next_begin_offset, 2);
    assert_eq!(h.max_offset, 2);

    // offsets: commit, query, max/min
    let upd = UpdateConsumerOffsetRequestHeader {
        consumer_group: "lpg".into(),
        topic: "LP".into(),
        queue_id: 0,
        commit_offset: 2,
        ..UpdateConsumerOffsetRequestHeader::default()
    };
    c.invoke_oneway(RemotingCommand::request_with_header(
        rc::UPDATE_CONSUMER_OFFSET,
        &upd,
    ))
    .await
    .unwrap();
    let q = QueryConsumerOffsetRequestHeader {
        consumer_group: "lpg".into(),
        topic: "LP".into(),
        queue_id: 0,
        ..QueryConsumerOffsetRequestHeader::default()
    };
    let started = Instant::now();
    loop {
        let resp = c
            .invoke(
                RemotingCommand::request_with_header(rc::QUERY_CONSUMER_OFFSET, &q),
                T,
            )
            .await
            .unwrap();
        let h: QueryConsumerOffsetResponseHeader = resp.decode_header().unwrap();
        if h.offset == 2 {
            break;
        }
        assert!(started.elapsed() < T);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_and_send_back_arrive_after_their_delay() {
    use rocketmesh_filters::codec::message::{property_keys, Properties};
    let (b, dir) = start("delay", |_| {}).await;
    let c = RemotingClient::connect(b.addr, None).await.unwrap();
    let get = |topic: &'static str| {
        let c = c.clone();
        async move {
            let h = PullMessageRequestHeader {
                consumer_group: "dg".into(),
                topic: topic.into(),
                queue_id: 0,
                queue_offset: 0,
                max_msg_nums: 32,
                sub_version: 0,
                ..PullMessageRequestHeader::default()
            };
            let resp = c
                .invoke(
                    RemotingCommand::request_with_header(rc::PULL_MESSAGE, &h),
                    T,
                )
                .await
                .unwrap();
            if resp.code() == response_code::SUCCESS {
                decode_records(resp.body()).unwrap()
            } else {
                Vec::new()
            }
        }
    };
    // DELAY=1 (1 s): not visible at once, visible after the delay
    let mut props = Properties::default();
    props.insert(property_keys::DELAY, "1");
    let mut req = send_req("DelayT", 0, b"later".to_vec());
    req.ext_mut().insert("i", props.to_wire_string());
    let sent_at = Instant::now();
    assert_eq!(
        c.invoke(req, T).await.unwrap().code(),
        response_code::SUCCESS
    );
    assert!(
        get("DelayT").await.is_empty(),
        "delayed message visible too early"
    );
    let started = Instant::now();
    let msgs = loop {
        let m = get("DelayT").await;
        if !m.is_empty() {
            break m;
        }
        assert!(started.elapsed() < T, "delayed message never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(sent_at.elapsed() >= Duration::from_millis(900));
    assert_eq!(&msgs[0].body[..], b"later");
    assert!(msgs[0].properties.get(property_keys::REAL_TOPIC).is_none());

    // CONSUMER_SEND_MSG_BACK with delay level 1: into %RETRY%<group> with reconsumeTimes 1
    let back = ConsumerSendMsgBackRequestHeader {
        offset: msgs[0].commit_log_offset,
        group: "dg".into(),
        delay_level: 1,
        origin_topic: Some("DelayT".into()),
        ..ConsumerSendMsgBackRequestHeader::default()
    };
    let resp = c
        .invoke(
            RemotingCommand::request_with_header(rc::CONSUMER_SEND_MSG_BACK, &back),
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    let started = Instant::now();
    let retried = loop {
        let m = get("%RETRY%dg").await;
        if !m.is_empty() {
            break m;
        }
        assert!(started.elapsed() < T, "retry never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(&retried[0].body[..], b"later");
    assert_eq!(retried[0].reconsume_times, 1);
    assert_eq!(
        retried[0].properties.get(property_keys::RETRY_TOPIC),
        Some("DelayT")
    );
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// 5.x server-side balancing: QUERY_ASSIGNMENT / SET_MESSAGE_REQUEST_MODE
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_assignment_balances_as_apache_does_and_pop_mode_persists() {
    use rocketmesh_filters::codec::body::{
        ConsumerData, HeartbeatData, MessageModel, MessageRequestMode, QueryAssignmentRequestBody,
        QueryAssignmentResponseBody, SetMessageRequestModeRequestBody,
    };
    const G: &str = "assign-g";
    let (b, dir) = start("assign", |_| {}).await;
    crate::support::create_topic(b.addr, "AssignT", 6, 5).await;
    let c = RemotingClient::connect(b.addr, None).await.unwrap();
    // Two members of the group, "cid-a" and "cid-b", on one connection.
    for cid in ["cid-a", "cid-b"] {
        let hb = HeartbeatData {
            client_id: cid.into(),
            consumer_data_set: vec![ConsumerData {
                group_name: G.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let resp = c
            .invoke(
                RemotingCommand::request(rc::HEART_BEAT).with_body(hb.to_json()),
                T,
            )
            .await
            .unwrap();
        assert_eq!(resp.code(), response_code::SUCCESS);
    }
    let ask = |cid: &str, model, strategy: &str, topic: &str| {
        let body = QueryAssignmentRequestBody {
            client_id: cid.into(),
            consumer_group: G.into(),
            message_model: model,
            strategy_name: strategy.into(),
            topic: topic.into(),
        };
        RemotingCommand::request(rc::QUERY_ASSIGNMENT).with_body(body.to_json())
    };
    // (queue ids, modes) of an answer; None when the answer has no list ("keep your queues").
    let query = |req: RemotingCommand| {
        let c = &c;
        async move {
            let resp = c.invoke(req, T).await.unwrap();
            assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
            if resp.body().as_ref() == b"{}" {
                return None;
            }
            let got = QueryAssignmentResponseBody::parse(resp.body()).unwrap();
            let mut ids: Vec<(i32, MessageRequestMode)> = got
                .message_queue_assignments
                .iter()
                .map(|a| {
                    assert_eq!(a.message_queue.broker_name, "broker-a");
                    assert_eq!(a.message_queue.topic, "AssignT");
                    (a.message_queue.queue_id, a.mode)
                })
                .collect();
            ids.sort_by_key(|(q, _)| *q);
            Some(ids)
        }
    };
    let pull = |ids: &[i32]| -> Option<Vec<(i32, MessageRequestMode)>> {
        Some(ids.iter().map(|q| (*q, MessageRequestMode::Pull)).collect())
    };
    let clustering = MessageModel::Clustering;

    // No mode set: PULL, split by the strategy (5 read queues over 2 clients).
    assert_eq!(
        query(ask("cid-a", clustering, "AVG", "AssignT")).await,
        pull(&[0, 1, 2])
    );
    assert_eq!(
        query(ask("cid-b", clustering, "AVG", "AssignT")).await,
        pull(&[3, 4])
    );
    assert_eq!(
        query(ask("cid-b", clustering, "AVG_BY_CIRCLE", "AssignT")).await,
        pull(&[1, 3])
    );
    // Broadcasting: every read queue.
    assert_eq!(
        query(ask("cid-b", MessageModel::Broadcasting, "AVG", "AssignT")).await,
        pull(&[0, 1, 2, 3, 4])
    );
    // A client the group does not know gets nothing; "no answer" for an unknown strategy, an
    // unknown topic, or a group without members here.
    assert_eq!(
        query(ask("cid-z", clustering, "AVG", "AssignT")).await,
        pull(&[])
    );
    assert_eq!(
        query(ask("cid-a", clustering, "NO_SUCH", "AssignT")).await,
        None
    );
    assert_eq!(
        query(ask("cid-a", clustering, "AVG", "NoSuchAssignT")).await,
        None
    );
    let mut other = ask("cid-a", clustering, "AVG", "AssignT");
    other.set_body(
        QueryAssignmentRequestBody {
            client_id: "cid-a".into(),
            consumer_group: "nobody".into(),
            message_model: clustering,
            strategy_name: "AVG".into(),
            topic: "AssignT".into(),
        }
        .to_json(),
    );
    assert_eq!(query(other).await, None);

    let set = |mode, share: i32, topic: &str| {
        let body = SetMessageRequestModeRequestBody {
            consumer_group: G.into(),
            topic: topic.into(),
            mode,
            pop_share_queue_num: share,
        };
        RemotingCommand::request(rc::SET_MESSAGE_REQUEST_MODE).with_body(body.to_json())
    };
    // Retry topics stay PULL.
    let resp = c
        .invoke(set(MessageRequestMode::Pop, 0, "%RETRY%assign-g"), T)
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::NO_PERMISSION);
    let resp = c
        .invoke(
            RemotingCommand::request(rc::SET_MESSAGE_REQUEST_MODE).with_body(&b"{not json"[..]),
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SYSTEM_ERROR);

    // POP with popShareQueueNum 1: my share plus the next client's (here: all of them).
    let resp = c
        .invoke(set(MessageRequestMode::Pop, 1, "AssignT"), T)
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    let popped = |ids: &[i32]| -> Option<Vec<(i32, MessageRequestMode)>> {
        Some(ids.iter().map(|q| (*q, MessageRequestMode::Pop)).collect())
    };
    assert_eq!(
        query(ask("cid-b", clustering, "AVG", "AssignT")).await,
        popped(&[0, 1, 2, 3, 4])
    );
    // POP with popShareQueueNum 0: every consumer pops every queue, queue id -1.
    let resp = c
        .invoke(set(MessageRequestMode::Pop, 0, "AssignT"), T)
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS);
    assert_eq!(
        query(ask("cid-a", clustering, "AVG", "AssignT")).await,
        popped(&[-1])
    );
    c.close();
    b.shutdown().await;

    // The mode survives a restart of the broker on the same data dir.
    let mut cfg = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.clone());
    cfg.name = "broker-a".into();
    let b = broker::start(cfg).await.unwrap();
    let c = RemotingClient::connect(b.addr, None).await.unwrap();
    let hb = HeartbeatData {
        client_id: "cid-a".into(),
        consumer_data_set: vec![ConsumerData {
            group_name: G.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    c.invoke(
        RemotingCommand::request(rc::HEART_BEAT).with_body(hb.to_json()),
        T,
    )
    .await
    .unwrap();
    let resp = c
        .invoke(ask("cid-a", clustering, "AVG", "AssignT"), T)
        .await
        .unwrap();
    let got = QueryAssignmentResponseBody::parse(resp.body()).unwrap();
    assert_eq!(got.message_queue_assignments.len(), 1);
    assert_eq!(got.message_queue_assignments[0].message_queue.queue_id, -1);
    assert_eq!(
        got.message_queue_assignments[0].mode,
        MessageRequestMode::Pop
    );
    c.close();
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
