//! The admin / tool requests of the bundled broker over loopback: VIEW_MESSAGE_BY_ID,
//! QUERY_MESSAGE, GET_TOPIC_STATS_INFO, GET_CONSUMER_CONNECTION_LIST, GET_CONSUME_STATS,
//! GET_CONSUMER_RUNNING_INFO, CONSUME_MESSAGE_DIRECTLY, GET_BROKER_RUNTIME_INFO, GET_TOPIC_CONFIG.

use std::time::Duration;

use rocketmesh_broker::{self as broker, BrokerConfig, BrokerHandle};
use rocketmesh_filters::codec::body::{
    ConsumeStats, ConsumeType, ConsumerConnection, ConsumerData, HeartbeatData, KvTable,
    MessageModel, MessageQueue, SubscriptionData, TopicStatsTable,
};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code, LanguageCode};
use rocketmesh_filters::codec::headers::*;
use rocketmesh_filters::codec::message::{
    decode_offset_msg_id, decode_records, property_keys, MessageExt, Properties,
};
use rocketmesh_filters::codec::{RemotingCommand, ResponseEncoding};
use rocketmesh_remoting::RemotingClient;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);
const TOPIC: &str = "AdminTopic";
const GROUP: &str = "AdminGroup";

async fn start(dir: &std::path::Path, tweak: impl FnOnce(&mut BrokerConfig)) -> BrokerHandle {
    let mut cfg = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    cfg.vip_channel = false;
    tweak(&mut cfg);
    broker::start(cfg).await.unwrap()
}

async fn connect(b: &BrokerHandle) -> RemotingClient {
    RemotingClient::connect_timeout(b.addr, T, None)
        .await
        .unwrap()
}

async fn call(c: &RemotingClient, req: RemotingCommand) -> RemotingCommand {
    c.invoke(req, T).await.unwrap()
}

/// Sends one message to `queue` of [`TOPIC`] with `keys` and a unique key; returns the send
/// response header.
async fn send(
    c: &RemotingClient,
    queue: i32,
    keys: &str,
    uniq: &str,
    body: &str,
) -> SendMessageResponseHeader {
    let mut props = Properties::new();
    props.insert(property_keys::KEYS, keys);
    props.insert(property_keys::UNIQ_KEY, uniq);
    let h = SendMessageRequestHeaderV2 {
        a: "pg".into(),
        b: TOPIC.into(),
        c: "TBW102".into(),
        d: 4,
        e: queue,
        g: 1,
        i: Some(props.to_wire_string()),
        ..SendMessageRequestHeaderV2::default()
    };
    let req = RemotingCommand::request_with_header(rc::SEND_MESSAGE_V2, &h)
        .with_body(body.as_bytes().to_vec());
    let resp = call(c, req).await;
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    resp.decode_header().unwrap()
}

fn offset_of(h: &SendMessageResponseHeader) -> i64 {
    decode_offset_msg_id(&h.msg_id).unwrap().1
}

fn records(resp: &RemotingCommand) -> Vec<MessageExt> {
    decode_records(resp.body()).unwrap()
}

fn query(key: &str, max: i32, begin: i64, end: i64, unique: bool) -> RemotingCommand {
    let h = QueryMessageRequestHeader {
        topic: TOPIC.into(),
        key: key.into(),
        max_num: max,
        begin_timestamp: begin,
        end_timestamp: end,
    };
    let mut req = RemotingCommand::request_with_header(rc::QUERY_MESSAGE, &h);
    req.ext_mut()
        .insert(UNIQUE_KEY_QUERY, if unique { "true" } else { "false" });
    req
}

fn view(offset: i64) -> RemotingCommand {
    RemotingCommand::request_with_header(
        rc::VIEW_MESSAGE_BY_ID,
        &ViewMessageRequestHeader {
            offset,
            topic: None,
        },
    )
}

fn heartbeat(client_id: &str) -> RemotingCommand {
    let hb = HeartbeatData {
        client_id: client_id.into(),
        consumer_data_set: vec![ConsumerData {
            group_name: GROUP.into(),
            consume_type: ConsumeType::ConsumePassively,
            message_model: MessageModel::Clustering,
            subscription_data_set: vec![SubscriptionData::from_expression(TOPIC, "*")],
            ..ConsumerData::default()
        }],
        ..HeartbeatData::default()
    };
    RemotingCommand::request(rc::HEART_BEAT)
        .with_language(LanguageCode::CPP)
        .with_version(123)
        .with_body(hb.to_json())
}

/// A consumer connection whose broker -> client requests arrive on the returned channel.
async fn consumer(
    b: &BrokerHandle,
    client_id: &str,
) -> (RemotingClient, mpsc::Receiver<RemotingCommand>) {
    let (tx, rx) = mpsc::channel(16);
    let c = RemotingClient::connect_timeout(b.addr, T, Some(tx))
        .await
        .unwrap();
    let resp = call(&c, heartbeat(client_id)).await;
    assert_eq!(resp.code(), response_code::SUCCESS);
    (c, rx)
}

fn assert_error(resp: &RemotingCommand, code: i32, remark: &str) {
    assert_eq!(
        (resp.code(), resp.remark()),
        (code, Some(remark)),
        "unexpected answer"
    );
}

#[tokio::test]
async fn view_message_by_id_returns_the_stored_record_and_refuses_other_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), |_| {}).await;
    let c = connect(&b).await;
    send(&c, 0, "a", "U-first", "first").await;
    let sent = send(&c, 1, "b", "U-second", "second").await;
    let offset = offset_of(&sent);

    let resp = call(&c, view(offset)).await;
    assert_eq!(resp.code(), response_code::SUCCESS);
    let msgs = records(&resp);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body.as_ref(), b"second");
    assert_eq!(msgs[0].offset_msg_id(), sent.msg_id);
    assert_eq!(msgs[0].properties.uniq_key(), Some("U-second"));

    for bad in [offset + 1, offset - 3, 1 << 40, -5] {
        let resp = call(&c, view(bad)).await;
        assert_error(
            &resp,
            response_code::SYSTEM_ERROR,
            &format!("can not find message by the offset, {bad}"),
        );
        assert!(resp.body().is_empty());
    }
    let resp = call(&c, RemotingCommand::request(rc::VIEW_MESSAGE_BY_ID)).await;
    assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
    assert!(
        resp.remark().unwrap().contains("offset"),
        "{:?}",
        resp.remark()
    );
    b.shutdown().await;
}

#[tokio::test]
async fn query_message_by_key_and_unique_key_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), |_| {}).await;
    let c = connect(&b).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let keys = format!("order-1 item-{i}");
        sent.push(send(&c, i % 3, &keys, &format!("U-{i}"), &format!("body-{i}")).await);
    }
    send(&c, 0, "order-2", "U-other", "other").await;
    let expected: Vec<i64> = sent.iter().map(offset_of).collect();

    let check_all = |resp: &RemotingCommand| {
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        let msgs = records(resp);
        let offsets: Vec<i64> = msgs.iter().map(|m| m.commit_log_offset).collect();
        assert_eq!(offsets, expected);
        let bodies: Vec<&[u8]> = msgs.iter().map(|m| m.body.as_ref()).collect();
        assert_eq!(
            bodies,
            [b"body-0", b"body-1", b"body-2", b"body-3", b"body-4"]
        );
        let h: QueryMessageResponseHeader = resp.decode_header().unwrap();
        assert!(h.index_last_update_timestamp > 0);
        assert!(h.index_last_update_phyoffset > *expected.last().unwrap());
    };
    check_all(&call(&c, query("order-1", 64, 0, i64::MAX, false)).await);

    // maxNum keeps the newest; a unique-key query ignores maxNum (32 instead).
    let resp = call(&c, query("order-1", 2, 0, i64::MAX, false)).await;
    let offsets: Vec<i64> = records(&resp).iter().map(|m| m.commit_log_offset).collect();
    assert_eq!(offsets, expected[3..]);
    let resp = call(&c, query("U-2", 0, 0, i64::MAX, true)).await;
    let msgs = records(&resp);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].offset_msg_id(), sent[2].msg_id);

    // Nothing in the time range, an unknown key, or another topic's key.
    for req in [
        query("order-1", 64, 0, 1000, false),
        query("nope", 64, 0, i64::MAX, false),
    ] {
        let resp = call(&c, req).await;
        assert_error(
            &resp,
            response_code::QUERY_NOT_FOUND,
            "can not find message, maybe time range not correct",
        );
        let h: QueryMessageResponseHeader = resp.decode_header().unwrap();
        assert!(h.index_last_update_timestamp > 0);
    }
    let resp = call(&c, RemotingCommand::request(rc::QUERY_MESSAGE)).await;
    assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
    assert!(
        resp.remark().unwrap().contains("topic"),
        "{:?}",
        resp.remark()
    );
    drop(c);
    b.shutdown().await;

    // After a restart the index is rebuilt from the commit log.
    let b = start(dir.path(), |_| {}).await;
    let c = connect(&b).await;
    check_all(&call(&c, query("order-1", 64, 0, i64::MAX, false)).await);
    b.shutdown().await;
}

/// Three messages on queue 0 and one on queue 2 of [`TOPIC`] (4 queues): their send headers.
async fn stats_setup(c: &RemotingClient) -> Vec<SendMessageResponseHeader> {
    let mut q0 = Vec::new();
    for i in 0..3 {
        q0.push(send(c, 0, "k", &format!("U{i}"), "x").await);
    }
    send(c, 2, "k", "U9", "y").await;
    q0
}

async fn store_time(c: &RemotingClient, offset: i64) -> i64 {
    records(&call(c, view(offset)).await)[0].store_timestamp
}

fn q(id: i32) -> MessageQueue {
    MessageQueue::new(TOPIC, "broker-a", id)
}

#[tokio::test]
async fn topic_stats_info_reports_each_write_queue() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), |_| {}).await;
    let c = connect(&b).await;
    let q0 = stats_setup(&c).await;
    let req = RemotingCommand::request_with_header(
        rc::GET_TOPIC_STATS_INFO,
        &GetTopicStatsInfoRequestHeader {
            topic: TOPIC.into(),
        },
    );
    let resp = call(&c, req).await;
    assert_eq!(resp.code(), response_code::SUCCESS);
    let stats = TopicStatsTable::parse(resp.body()).unwrap();
    assert_eq!(stats.offset_table.len(), 4);
    let last0 = store_time(&c, offset_of(&q0[2])).await;
    assert_eq!(
        (
            stats.offset_table[&q(0)].min_offset,
            stats.offset_table[&q(0)].max_offset,
            stats.offset_table[&q(0)].last_update_timestamp
        ),
        (0, 3, last0)
    );
    assert_eq!(stats.offset_table[&q(1)].max_offset, 0);
    assert_eq!(stats.offset_table[&q(1)].last_update_timestamp, 0);
    assert_eq!(stats.offset_table[&q(2)].max_offset, 1);

    let req = RemotingCommand::request_with_header(
        rc::GET_TOPIC_STATS_INFO,
        &GetTopicStatsInfoRequestHeader {
            topic: "NoSuchTopic".into(),
        },
    );
    assert_error(
        &call(&c, req).await,
        response_code::TOPIC_NOT_EXIST,
        "topic[NoSuchTopic] not exist",
    );

    b.shutdown().await;
}

#[tokio::test]
async fn consume_stats_report_broker_and_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), |_| {}).await;
    let c = connect(&b).await;
    let q0 = stats_setup(&c).await;
    // The group committed 2 on queue 0.
    let commit = UpdateConsumerOffsetRequestHeader {
        consumer_group: GROUP.into(),
        topic: TOPIC.into(),
        queue_id: 0,
        commit_offset: 2,
        bname: None,
    };
    let resp = call(
        &c,
        RemotingCommand::request_with_header(rc::UPDATE_CONSUMER_OFFSET, &commit),
    )
    .await;
    assert_eq!(resp.code(), response_code::SUCCESS);
    let last_consumed = store_time(&c, offset_of(&q0[1])).await;
    for topic in [Some(TOPIC.to_owned()), None, Some(String::new())] {
        let req = RemotingCommand::request_with_header(
            rc::GET_CONSUME_STATS,
            &GetConsumeStatsRequestHeader {
                consumer_group: GROUP.into(),
                topic,
            },
        );
        let resp = call(&c, req).await;
        assert_eq!(resp.code(), response_code::SUCCESS);
        let stats = ConsumeStats::parse(resp.body()).unwrap();
        assert_eq!(stats.offset_table.len(), 4);
        let o = stats.offset_table[&q(0)];
        assert_eq!(
            (o.broker_offset, o.consumer_offset, o.last_timestamp),
            (3, 2, last_consumed)
        );
        let o = stats.offset_table[&q(2)];
        assert_eq!(
            (o.broker_offset, o.consumer_offset, o.last_timestamp),
            (1, 0, 0)
        );
        assert_eq!(stats.consume_tps, 0.0);
    }
    // A group that never committed: an empty table, still SUCCESS.
    let req = RemotingCommand::request_with_header(
        rc::GET_CONSUME_STATS,
        &GetConsumeStatsRequestHeader {
            consumer_group: "Nobody".into(),
            topic: None,
        },
    );
    let resp = call(&c, req).await;
    assert_eq!(resp.code(), response_code::SUCCESS);
    assert!(ConsumeStats::parse(resp.body())
        .unwrap()
        .offset_table
        .is_empty());
    b.shutdown().await;
}

#[tokio::test]
async fn consumer_connection_list_names_the_heartbeating_client() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), |_| {}).await;
    let (_consumer, _inbound) = consumer(&b, "127.0.0.1@cpp-1").await;
    let c = connect(&b).await;
    let req = |group: &str| {
        RemotingCommand::request_with_header(
            rc::GET_CONSUMER_CONNECTION_LIST,
            &GetConsumerConnectionListRequestHeader {
                consumer_group: group.into(),
            },
        )
    };
    let resp = call(&c, req(GROUP)).await;
    assert_eq!(resp.code(), response_code::SUCCESS);
    let cc = ConsumerConnection::parse(resp.body()).unwrap();
    assert_eq!(cc.connection_set.len(), 1);
    let conn = &cc.connection_set[0];
    assert_eq!(conn.client_id, "127.0.0.1@cpp-1");
    assert_eq!(conn.language, "CPP");
    assert_eq!(conn.version, 123);
    assert!(
        conn.client_addr.starts_with("127.0.0.1:"),
        "{}",
        conn.client_addr
    );
    assert_ne!(conn.client_addr, b.addr.to_string());
    assert_eq!(cc.consume_type, ConsumeType::ConsumePassively);
    assert_eq!(cc.message_model, MessageModel::Clustering);
    assert_eq!(cc.subscription_table[TOPIC].sub_string, "*");

    assert_error(
        &call(&c, req("Ghost")).await,
        response_code::CONSUMER_NOT_ONLINE,
        "the consumer group[Ghost] not online",
    );
    b.shutdown().await;
}

fn running_info_req(client_id: &str) -> RemotingCommand {
    RemotingCommand::request_with_header(
        rc::GET_CONSUMER_RUNNING_INFO,
        &GetConsumerRunningInfoRequestHeader {
            consumer_group: GROUP.into(),
            client_id: client_id.into(),
            jstack_enable: Some(false),
        },
    )
}

fn directly_req(client_id: &str, msg_id: &str) -> RemotingCommand {
    RemotingCommand::request_with_header(
        rc::CONSUME_MESSAGE_DIRECTLY,
        &ConsumeMessageDirectlyResultRequestHeader {
            consumer_group: GROUP.into(),
            client_id: Some(client_id.into()),
            msg_id: Some(msg_id.into()),
            broker_name: None,
        },
    )
}

#[tokio::test]
async fn running_info_and_consume_directly_are_answered_by_the_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), |_| {}).await;
    let tool = connect(&b).await;
    let sent = send(&tool, 1, "k", "U-direct", "direct-body").await;
    let (client, mut inbound) = consumer(&b, "c-1").await;
    // The consumer answers what the broker asks, with what it saw.
    let answering = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(req) = inbound.recv().await {
            let body = match req.code() {
                rc::GET_CONSUMER_RUNNING_INFO => b"{\"jstack\":\"\"}".to_vec(),
                rc::CONSUME_MESSAGE_DIRECTLY => b"{\"consumeResult\":\"CR_SUCCESS\"}".to_vec(),
                _ => continue,
            };
            let resp = req
                .response_to(response_code::SUCCESS, ResponseEncoding::Json)
                .with_remark("from the consumer")
                .with_body(body);
            client.respond(resp).await.unwrap();
            seen.push(req);
            if seen.len() == 2 {
                return seen;
            }
        }
        seen
    });

    let resp = call(&tool, running_info_req("c-1")).await;
    assert_eq!(resp.code(), response_code::SUCCESS);
    assert_eq!(resp.body().as_ref(), b"{\"jstack\":\"\"}");
    assert_eq!(resp.remark(), Some("from the consumer"));

    let resp = call(&tool, directly_req("c-1", &sent.msg_id)).await;
    assert_eq!(resp.code(), response_code::SUCCESS);
    assert_eq!(resp.body().as_ref(), b"{\"consumeResult\":\"CR_SUCCESS\"}");

    let seen = answering.await.unwrap();
    let h: GetConsumerRunningInfoRequestHeader = seen[0].decode_header().unwrap();
    assert_eq!(
        (h.client_id.as_str(), h.jstack_enable),
        ("c-1", Some(false))
    );
    let h: ConsumeMessageDirectlyResultRequestHeader = seen[1].decode_header().unwrap();
    assert_eq!(h.broker_name.as_deref(), Some("broker-a"));
    assert_eq!(h.msg_id.as_deref(), Some(sent.msg_id.as_str()));
    let msgs = records(&seen[1]);
    assert_eq!(msgs[0].body.as_ref(), b"direct-body");
    assert_eq!(msgs[0].offset_msg_id(), sent.msg_id);

    // Nobody registered by that id; a message id naming no record.
    assert_error(
        &call(&tool, running_info_req("c-2")).await,
        response_code::SYSTEM_ERROR,
        &format!("The Consumer <{GROUP}> <c-2> not online"),
    );
    let bad_id = rocketmesh_filters::codec::message::offset_msg_id(b.addr, 7);
    assert_error(
        &call(&tool, directly_req("c-1", &bad_id)).await,
        response_code::SYSTEM_ERROR,
        "can not find message by the offset, 7",
    );
    let resp = call(
        &tool,
        RemotingCommand::request(rc::GET_CONSUMER_RUNNING_INFO),
    )
    .await;
    assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
    b.shutdown().await;
}

#[tokio::test]
async fn a_consumer_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), |c| {
        c.call_consumer_timeout = Duration::from_millis(300);
    })
    .await;
    let tool = connect(&b).await;
    let sent = send(&tool, 0, "k", "U", "silent").await;
    let (_client, _inbound) = consumer(&b, "silent-1").await;
    for req in [
        running_info_req("silent-1"),
        directly_req("silent-1", &sent.msg_id),
    ] {
        let resp = call(&tool, req).await;
        assert_eq!(resp.code(), response_code::CONSUME_MSG_TIMEOUT);
        assert!(
            resp.remark()
                .unwrap()
                .contains("did not answer within 300 ms"),
            "{:?}",
            resp.remark()
        );
    }
    b.shutdown().await;
}

#[tokio::test]
async fn runtime_info_is_a_kv_table_of_the_brokers_figures() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), |_| {}).await;
    let c = connect(&b).await;
    let first = send(&c, 0, "k", "U1", "one").await;
    send(&c, 0, "k", "U2", "two").await;

    let resp = call(&c, RemotingCommand::request(rc::GET_BROKER_RUNTIME_INFO)).await;
    assert_eq!(resp.code(), response_code::SUCCESS);
    let kv = KvTable::parse(resp.body()).unwrap().table;
    for key in ["putTps", "getTransferedTps"] {
        let rates: Vec<f64> = kv[key].split(' ').map(|r| r.parse().unwrap()).collect();
        assert_eq!(rates.len(), 3, "{key}: {}", kv[key]);
    }
    assert_eq!(kv["msgPutTotalTodayNow"], "2");
    assert_eq!(kv["msgGetTotalTodayNow"], "0");
    assert_eq!(kv["brokerVersionDesc"], "V5_3_0");
    assert_eq!(kv["commitLogMinOffset"], "0");
    let max: i64 = kv["commitLogMaxOffset"].parse().unwrap();
    assert!(max > offset_of(&first));
    let earliest = records(&call(&c, view(0)).await)[0].store_timestamp;
    assert_eq!(kv["earliestMessageTimeStamp"], earliest.to_string());
    let ratio: f64 = kv["commitLogDiskRatio"].parse().unwrap();
    assert!((0.0..=1.0).contains(&ratio), "{ratio}");
    assert!(kv["bootTimestamp"].parse::<i64>().unwrap() > 0);
    assert!(
        kv["runtime"].starts_with("[ 0 days, 0 hours, "),
        "{}",
        kv["runtime"]
    );

    b.shutdown().await;
}

#[tokio::test]
async fn topic_config_is_answered_and_unknown_codes_are_not_supported() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), |_| {}).await;
    let c = connect(&b).await;
    send(&c, 0, "k", "U1", "one").await;
    let topic_config = |topic: &str| {
        let mut req = RemotingCommand::request(rc::GET_TOPIC_CONFIG);
        req.ext_mut().insert("topic", topic);
        req
    };
    let resp = call(&c, topic_config(TOPIC)).await;
    assert_eq!(resp.code(), response_code::SUCCESS);
    let cfg: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(cfg["topicName"], TOPIC);
    assert_eq!(cfg["readQueueNums"], 4);
    assert_error(
        &call(&c, topic_config("Nope")).await,
        response_code::TOPIC_NOT_EXIST,
        "No topic in this broker. topic: Nope",
    );

    // Every admin request without its header: SYSTEM_ERROR naming a field, never a panic.
    for code in [
        rc::QUERY_MESSAGE,
        rc::VIEW_MESSAGE_BY_ID,
        rc::GET_TOPIC_STATS_INFO,
        rc::GET_CONSUMER_CONNECTION_LIST,
        rc::GET_CONSUME_STATS,
        rc::GET_CONSUMER_RUNNING_INFO,
        rc::CONSUME_MESSAGE_DIRECTLY,
        rc::GET_TOPIC_CONFIG,
    ] {
        let resp = call(&c, RemotingCommand::request(code)).await;
        assert_eq!(resp.code(), response_code::SYSTEM_ERROR, "code {code}");
        assert!(!resp.remark().unwrap_or("").is_empty(), "code {code}");
    }
    let mut bad_id = directly_req("c", "not-an-id");
    assert_eq!(
        call(&c, bad_id.clone()).await.code(),
        response_code::SYSTEM_ERROR
    );
    bad_id.ext_mut().remove("msgId");
    assert_error(
        &call(&c, bad_id).await,
        response_code::SYSTEM_ERROR,
        "missing msgId",
    );

    // Codes the broker does not know keep REQUEST_CODE_NOT_SUPPORTED.
    assert_error(
        &call(
            &c,
            RemotingCommand::request(rc::GET_CONSUMER_STATUS_FROM_CLIENT),
        )
        .await,
        response_code::REQUEST_CODE_NOT_SUPPORTED,
        " request type 221 not supported",
    );
    b.shutdown().await;
}
