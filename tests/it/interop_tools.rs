//! Admin / tool requests (issue 18), each asked directly of the brokers and through the
//! sidecar, with real C++ SDK clients (PyPI `rocketmq==0.4.4`) producing and consuming: the
//! sidecar's answer has the same content as the brokers' answers merged, under the virtual
//! broker and its queue ids.
//!
//! Two brokers serve the topic, so every fanned-out answer is a merge of two. One consumer
//! group consumes through the sidecar (pull -> pop), another directly from broker-a.

use crate::support::interop::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rocketmesh::remoting::RemotingClient;
use rocketmesh_filters::codec::body::{
    ClusterInfo, ConsumeStats, ConsumerConnection, MessageQueue, OffsetWrapper, TopicList,
    TopicOffset, TopicStatsTable,
};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::{
    ConsumeMessageDirectlyResultRequestHeader, GetConsumeStatsRequestHeader,
    GetConsumerConnectionListRequestHeader, GetConsumerRunningInfoRequestHeader,
    GetTopicStatsInfoRequestHeader, QueryMessageRequestHeader, ViewMessageRequestHeader,
};
use rocketmesh_filters::codec::message::{decode_records, offset_msg_id, MessageExt};
use rocketmesh_filters::codec::RemotingCommand;
use serde_json::Value;

const TOPIC: &str = "InteropTools";
const MESH_GROUP: &str = "CG_ToolsMesh";
const DIRECT_GROUP: &str = "CG_ToolsDirect";
const QUEUES: i32 = 2;
const N: usize = 24;
const VIRTUAL: &str = "rocketmesh";

async fn ask(addr: SocketAddr, req: RemotingCommand, timeout: Duration) -> RemotingCommand {
    let c = RemotingClient::connect_timeout(addr, RPC, None)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    c.invoke(req, timeout)
        .await
        .unwrap_or_else(|e| panic!("request to {addr}: {e}"))
}

fn ok_body(r: &RemotingCommand, what: &str) -> Bytes {
    assert_eq!(
        r.code(),
        response_code::SUCCESS,
        "{what}: code {} remark {:?}",
        r.code(),
        r.remark()
    );
    r.body().clone()
}

/// Values of a queue table sorted, and its keys' (broker, queue ids).
fn table_parts<V: Ord + Clone>(
    t: &BTreeMap<MessageQueue, V>,
) -> (Vec<V>, BTreeMap<String, Vec<i32>>) {
    let mut values: Vec<V> = t.values().cloned().collect();
    values.sort();
    let mut keys: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for mq in t.keys() {
        keys.entry(mq.broker_name.clone())
            .or_default()
            .push(mq.queue_id);
    }
    (values, keys)
}

fn virtual_ids() -> BTreeMap<String, Vec<i32>> {
    std::iter::once((VIRTUAL.to_owned(), (0..2 * QUEUES).collect())).collect()
}

fn by_uniq(records: &[MessageExt]) -> BTreeMap<String, &MessageExt> {
    records
        .iter()
        .map(|m| {
            let uniq = m.properties.get("UNIQ_KEY").unwrap_or_default().to_owned();
            (uniq, m)
        })
        .collect()
}

fn same_message(a: &MessageExt, b: &MessageExt) {
    assert_eq!(a.body, b.body);
    assert_eq!(a.topic, b.topic);
    assert_eq!(a.queue_offset, b.queue_offset);
    assert_eq!(a.store_timestamp, b.store_timestamp);
    for k in ["UNIQ_KEY", "KEYS", "TAGS", "idx"] {
        assert_eq!(a.properties.get(k), b.properties.get(k), "property {k}");
    }
}

#[test]
fn tool_requests_through_the_sidecar_match_the_brokers() {
    let m = TwoBrokerMesh::start("tools", TOPIC, QUEUES, 1);
    let sc = &m.sidecars[0];
    let (a, b) = (m.brokers[0].addr, m.brokers[1].addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let produced = produce_with(
        &m.dir,
        &sc.addr.to_string(),
        TOPIC,
        "tool",
        plan(N, 0, 0, 0.0),
    );
    check_produced(&produced, plan(N, 0, 0, 0.0));

    // Consumers that stay up (the stop file ends them): one through the sidecar, one directly
    // on broker-a (which answers routes itself).
    let stop = m.dir.join("tools.stop");
    let consumer = |namesrv: String, group: &str| {
        py_start(
            &m.dir,
            "consume",
            &[
                ("namesrv", namesrv),
                ("topic", TOPIC.into()),
                ("group", group.into()),
                ("expect", (N + 1000).to_string()),
                ("max_seconds", "150".into()),
                ("settle", "0".into()),
                ("stop_file", stop.display().to_string()),
            ],
        )
    };
    let mut mesh = consumer(sc.addr.to_string(), MESH_GROUP);
    let mut direct = consumer(a.to_string(), DIRECT_GROUP);
    let mut got = 0;
    let t0 = Instant::now();
    while got < N {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "mesh consumer got {got} of {N}"
        );
        if let Some(l) = mesh.next_line(Duration::from_secs(1)) {
            got += usize::from(l.starts_with("GOT "));
        }
    }
    let started = (0..60).any(|_| {
        direct
            .next_line(Duration::from_secs(1))
            .is_some_and(|l| l.contains("consumer started"))
    });
    assert!(started, "the direct consumer did not start");

    // 203: the group's clients, as the sidecar sees its own and broker-a sees the direct one.
    let conns = |addr, group: &str| {
        let h = GetConsumerConnectionListRequestHeader {
            consumer_group: group.into(),
        };
        let req = RemotingCommand::request_with_header(rc::GET_CONSUMER_CONNECTION_LIST, &h);
        let r = rt.block_on(ask(addr, req, RPC));
        ConsumerConnection::parse(&ok_body(&r, "203")).unwrap()
    };
    let wait_conns = |addr, group: &str| {
        let t0 = Instant::now();
        loop {
            let c = conns(addr, group);
            if c.subscription_table.contains_key(TOPIC) || t0.elapsed() > Duration::from_secs(30) {
                return c;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let via_sidecar = wait_conns(sc.addr, MESH_GROUP);
    let at_broker = wait_conns(a, DIRECT_GROUP);
    for c in [&via_sidecar, &at_broker] {
        assert_eq!(c.connection_set.len(), 1, "{c:?}");
        assert_eq!(c.connection_set[0].language, "CPP");
        assert!(c.connection_set[0].client_addr.starts_with("127.0.0.1:"));
    }
    assert_eq!(via_sidecar.consume_type, at_broker.consume_type);
    assert_eq!(via_sidecar.message_model, at_broker.message_model);
    assert_eq!(
        via_sidecar.subscription_table[TOPIC].sub_string,
        at_broker.subscription_table[TOPIC].sub_string
    );
    // Brokers only know the sidecar's merged client, not the application's (it heartbeats
    // every broker it uses when a group gains a member and every 30 s).
    let t0 = Instant::now();
    loop {
        let h = GetConsumerConnectionListRequestHeader {
            consumer_group: MESH_GROUP.into(),
        };
        let r = rt.block_on(ask(
            a,
            RemotingCommand::request_with_header(rc::GET_CONSUMER_CONNECTION_LIST, &h),
            RPC,
        ));
        if r.code() == response_code::SUCCESS {
            let c = ConsumerConnection::parse(r.body()).unwrap();
            assert!(
                c.connection_set[0].client_id.starts_with("rocketmesh@"),
                "{c:?}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "broker-a never heard of {MESH_GROUP}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let unknown = rt.block_on(ask(
        sc.addr,
        RemotingCommand::request_with_header(
            rc::GET_CONSUMER_CONNECTION_LIST,
            &GetConsumerConnectionListRequestHeader {
                consumer_group: "CG_Nobody".into(),
            },
        ),
        RPC,
    ));
    assert_eq!(unknown.code(), response_code::CONSUMER_NOT_ONLINE);

    // 202: both brokers' queues, merged under the virtual broker.
    let stats = |addr| {
        let h = GetTopicStatsInfoRequestHeader {
            topic: TOPIC.into(),
        };
        let r = rt.block_on(ask(
            addr,
            RemotingCommand::request_with_header(rc::GET_TOPIC_STATS_INFO, &h),
            RPC,
        ));
        TopicStatsTable::parse(&ok_body(&r, "202")).unwrap()
    };
    let (sv, sk) = table_parts::<TopicOffset>(&stats(sc.addr).offset_table);
    let mut direct_values: Vec<TopicOffset> = [a, b]
        .into_iter()
        .flat_map(|x| stats(x).offset_table.into_values())
        .collect();
    direct_values.sort();
    assert_eq!(sk, virtual_ids());
    assert_eq!(sv, direct_values);
    let total: i64 = sv.iter().map(|o| o.max_offset - o.min_offset).sum();
    assert_eq!(total, N as i64);

    // 208: the mesh group's progress at both brokers, merged (retried while acks move it).
    let consume_stats = |addr| {
        let h = GetConsumeStatsRequestHeader {
            consumer_group: MESH_GROUP.into(),
            topic: Some(TOPIC.into()),
        };
        let r = rt.block_on(ask(
            addr,
            RemotingCommand::request_with_header(rc::GET_CONSUME_STATS, &h),
            RPC,
        ));
        ConsumeStats::parse(&ok_body(&r, "208")).unwrap()
    };
    let mut matched = false;
    for _ in 0..20 {
        let (sv, sk) = table_parts::<OffsetWrapper>(&consume_stats(sc.addr).offset_table);
        let mut dv: Vec<OffsetWrapper> = [a, b]
            .into_iter()
            .flat_map(|x| consume_stats(x).offset_table.into_values())
            .collect();
        dv.sort();
        if sk == virtual_ids() && sv == dv {
            matched = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        matched,
        "consume stats through the sidecar never matched the brokers'"
    );

    // 12: by key, fanned out and concatenated.
    let key = "k2-5";
    let query = |addr| {
        let h = QueryMessageRequestHeader {
            topic: TOPIC.into(),
            key: key.into(),
            max_num: 64,
            begin_timestamp: 0,
            end_timestamp: i64::MAX,
        };
        let r = rt.block_on(ask(
            addr,
            RemotingCommand::request_with_header(rc::QUERY_MESSAGE, &h),
            RPC,
        ));
        (r.code(), decode_records(r.body()).unwrap_or_default())
    };
    let (code, found) = query(sc.addr);
    assert_eq!(code, response_code::SUCCESS);
    assert_eq!(found.len(), 1, "one message has key {key}");
    let direct_found: Vec<MessageExt> = [a, b].into_iter().flat_map(|x| query(x).1).collect();
    assert_eq!(direct_found.len(), 1);
    same_message(&found[0], &direct_found[0]);
    assert!(found[0].queue_id < 2 * QUEUES);

    // 307: the consumer's running info, from the sidecar's client and broker-a's.
    let running = |addr, group: &str, client: &str| {
        let h = GetConsumerRunningInfoRequestHeader {
            consumer_group: group.into(),
            client_id: client.into(),
            jstack_enable: Some(false),
        };
        rt.block_on(ask(
            addr,
            RemotingCommand::request_with_header(rc::GET_CONSUMER_RUNNING_INFO, &h),
            Duration::from_secs(15),
        ))
    };
    let mesh_client = via_sidecar.connection_set[0].client_id.clone();
    let direct_client = at_broker.connection_set[0].client_id.clone();
    for (addr, group, client) in [
        (sc.addr, MESH_GROUP, &mesh_client),
        (a, DIRECT_GROUP, &direct_client),
    ] {
        let r = running(addr, group, client);
        let body = String::from_utf8_lossy(&ok_body(&r, "307")).into_owned();
        assert!(body.contains("PROP_CONSUME_TYPE"), "{body}");
        assert!(body.contains(TOPIC), "{body}");
    }
    let gone = running(sc.addr, MESH_GROUP, "nobody@1");
    assert_eq!(gone.code(), response_code::SYSTEM_ERROR);
    assert!(gone.remark().unwrap_or("").contains("not online"));

    // 206: the sidecar lists what it holds; the control plane, the catalogue.
    let topics = |addr| {
        let r = rt.block_on(ask(
            addr,
            RemotingCommand::request(rc::GET_ALL_TOPIC_LIST_FROM_NAMESERVER),
            RPC,
        ));
        TopicList::parse(&ok_body(&r, "206")).unwrap().topic_list
    };
    let held = topics(sc.addr);
    assert!(held.contains(TOPIC), "{held:?}");
    assert!(held.contains(&format!("%RETRY%{MESH_GROUP}")), "{held:?}");
    assert!(topics(m.cp.remoting).contains(TOPIC));

    // 106: the sidecar presents its one virtual broker, in the cluster the control plane names
    // for the real ones.
    let cluster = |addr| {
        let r = rt.block_on(ask(
            addr,
            RemotingCommand::request(rc::GET_BROKER_CLUSTER_INFO),
            RPC,
        ));
        ClusterInfo::parse(&ok_body(&r, "106")).unwrap()
    };
    let (virt, real) = (cluster(sc.addr), cluster(m.cp.remoting));
    let v = &virt.broker_addr_table[VIRTUAL];
    assert_eq!(v.broker_addrs.get(&0), Some(&sc.addr.to_string()));
    let real_a = &real.broker_addr_table["broker-a"];
    assert_eq!(real_a.broker_addrs.get(&0), Some(&a.to_string()));
    assert_eq!(v.cluster, real_a.cluster);
    assert!(virt.cluster_addr_table[&v.cluster].contains(VIRTUAL));

    // The consumers' records: the mesh one's commit log offsets are the sidecar's.
    std::fs::write(&stop, b"").unwrap();
    let mesh_result = mesh.result(Duration::from_secs(60));
    let _ = direct.result(Duration::from_secs(60));
    let received: Vec<&Value> = mesh_result["received"].as_array().unwrap().iter().collect();
    assert!(received.len() >= N);
    let one = received
        .iter()
        .find(|r| s(r, "keys").contains(key))
        .expect("the keyed message was consumed");
    let minted = one["commit_log_offset"].as_i64().unwrap();

    // 33: that id, viewed through the sidecar, is the broker's record re-stamped.
    let view = |addr, offset| {
        let h = ViewMessageRequestHeader {
            offset,
            topic: None,
        };
        rt.block_on(ask(
            addr,
            RemotingCommand::request_with_header(rc::VIEW_MESSAGE_BY_ID, &h),
            RPC,
        ))
    };
    let r = view(sc.addr, minted);
    let viewed = decode_records(&ok_body(&r, "33 via sidecar")).unwrap();
    assert_eq!(viewed.len(), 1);
    assert_eq!(viewed[0].commit_log_offset, minted);
    assert_eq!(viewed[0].store_host, sc.addr);
    let real = &direct_found[0];
    let broker_addr = real.store_host;
    let at_broker = view(broker_addr, real.commit_log_offset);
    let direct_view = decode_records(&ok_body(&at_broker, "33 at the broker")).unwrap();
    same_message(&viewed[0], &direct_view[0]);
    same_message(
        &viewed[0],
        by_uniq(&found)[viewed[0].properties.get("UNIQ_KEY").unwrap()],
    );
    println!(
        "tools: 203 {} client(s) via sidecar; 202 {} queues, {N} messages; 12 one record for \
         {key}; 33 minted offset {minted} -> broker offset {}",
        via_sidecar.connection_set.len(),
        sv.len(),
        real.commit_log_offset
    );
    let missing = view(sc.addr, 1 << 40);
    assert_eq!(missing.code(), response_code::SYSTEM_ERROR);
    assert!(missing
        .remark()
        .unwrap_or("")
        .contains("can not find message by the offset"));
    drop(m);
}

/// 309 reaches the named client through the sidecar as it does through a broker. The C++ SDK
/// registers CONSUME_MESSAGE_DIRECTLY but never answers it, so both answer CONSUME_MSG_TIMEOUT
/// after the 10 s a broker waits.
#[test]
fn consume_message_directly_reaches_the_client_through_the_sidecar_as_through_a_broker() {
    let m = TwoBrokerMesh::start("tools-309", TOPIC, QUEUES, 1);
    let sc = &m.sidecars[0];
    let a = m.brokers[0].addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let produced = produce_with(&m.dir, &a.to_string(), TOPIC, "d", plan(4, 0, 0, 0.0));
    check_produced(&produced, plan(4, 0, 0, 0.0));
    let stop = m.dir.join("309.stop");
    let consumer = |namesrv: String, group: &str| {
        py_start(
            &m.dir,
            "consume",
            &[
                ("namesrv", namesrv),
                ("topic", TOPIC.into()),
                ("group", group.into()),
                ("expect", "1000".into()),
                ("max_seconds", "120".into()),
                ("settle", "0".into()),
                ("stop_file", stop.display().to_string()),
            ],
        )
    };
    let _mesh = consumer(sc.addr.to_string(), MESH_GROUP);
    let _direct = consumer(a.to_string(), DIRECT_GROUP);
    let client_of = |addr, group: &str| -> String {
        let t0 = Instant::now();
        loop {
            let h = GetConsumerConnectionListRequestHeader {
                consumer_group: group.into(),
            };
            let r = rt.block_on(ask(
                addr,
                RemotingCommand::request_with_header(rc::GET_CONSUMER_CONNECTION_LIST, &h),
                RPC,
            ));
            if r.code() == response_code::SUCCESS {
                let c = ConsumerConnection::parse(r.body()).unwrap();
                if let Some(first) = c.connection_set.first() {
                    return first.client_id.clone();
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{group} never registered"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let mesh_client = client_of(sc.addr, MESH_GROUP);
    let direct_client = client_of(a, DIRECT_GROUP);
    // The id of a message on broker-a, as its send result names it.
    let query = QueryMessageRequestHeader {
        topic: TOPIC.into(),
        key: "k2-0".into(),
        max_num: 64,
        begin_timestamp: 0,
        end_timestamp: i64::MAX,
    };
    let r = rt.block_on(ask(
        a,
        RemotingCommand::request_with_header(rc::QUERY_MESSAGE, &query),
        RPC,
    ));
    let rec = decode_records(&ok_body(&r, "12")).unwrap().remove(0);
    let msg_id = offset_msg_id(rec.store_host, rec.commit_log_offset);
    let directly = |group: &str, client: &str| {
        let h = ConsumeMessageDirectlyResultRequestHeader {
            consumer_group: group.into(),
            client_id: Some(client.into()),
            msg_id: Some(msg_id.clone()),
            broker_name: None,
        };
        RemotingCommand::request_with_header(rc::CONSUME_MESSAGE_DIRECTLY, &h)
    };
    let t0 = Instant::now();
    let (via_sidecar, at_broker) = rt.block_on(async {
        tokio::join!(
            ask(
                sc.addr,
                directly(MESH_GROUP, &mesh_client),
                Duration::from_secs(20)
            ),
            ask(
                a,
                directly(DIRECT_GROUP, &direct_client),
                Duration::from_secs(20)
            ),
        )
    });
    let took = t0.elapsed();
    for r in [&via_sidecar, &at_broker] {
        assert_eq!(
            r.code(),
            response_code::CONSUME_MSG_TIMEOUT,
            "{:?}",
            r.remark()
        );
    }
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "{took:?}"
    );
    let nobody = rt.block_on(ask(sc.addr, directly(MESH_GROUP, "nobody@1"), RPC));
    assert_eq!(nobody.code(), response_code::SYSTEM_ERROR);
    std::fs::write(&stop, b"").unwrap();
    drop(m);
}
