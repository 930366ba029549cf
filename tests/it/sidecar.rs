//! The sidecar against real components over loopback: an in-process control plane (nameserver
//! role + ADS), broker nodes registering with it (or a static bootstrap), and the sidecar, all
//! started through their `start` functions. Clients speak Remoting to the sidecar exactly as an
//! SDK would: every broker address they learn is the sidecar's.

use crate::support::{
    bounded, call, connect, create_topic, eventually, free_port, http_get, local, start_broker,
    start_control_plane as control_plane, start_sidecar, temp_dir, Mesh, T,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use rocketmesh::broker::{self, BrokerConfig, BrokerHandle};
use rocketmesh::metrics::Counter;
use rocketmesh::remoting::RemotingClient;
use rocketmesh::sidecar::{self, SidecarConfig};
use rocketmesh_filters::codec::body::{
    AckBitSet, BatchAck, BatchAckMessageRequestBody, ConsumerData, ConsumerListBody, HeartbeatData,
    TopicRouteData,
};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::*;
use rocketmesh_filters::codec::message::{
    decode_records, encode_batch, property_keys, BatchMessage, Properties,
};
use rocketmesh_filters::codec::pop::{PopHandle, PopResponseInfo};
use rocketmesh_filters::codec::{FrameCodec, FrameLimits, RemotingCodec, RemotingCommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Encoder, FramedRead};

/// Deadline of a whole test.
const TEST: Duration = Duration::from_secs(60);
const VIRTUAL: &str = "rocketmesh";
const GROUP: &str = "sc_group";

fn sidecar_config(xds: Option<SocketAddr>) -> SidecarConfig {
    let mut cfg = SidecarConfig::new(local());
    cfg.xds = xds.map(|a| a.to_string());
    cfg.route_timeout = Duration::from_secs(3);
    cfg.drain = Duration::from_secs(3);
    cfg
}

fn route_request(topic: &str, version: i32) -> RemotingCommand {
    RemotingCommand::request_with_header(
        rc::GET_ROUTEINFO_BY_TOPIC,
        &GetRouteInfoRequestHeader {
            topic: topic.into(),
            ..Default::default()
        },
    )
    .with_version(version)
}

/// Polls GET_ROUTEINFO_BY_TOPIC through `c` until the answer satisfies `ok`.
async fn wait_route(
    c: &RemotingClient,
    topic: &str,
    what: &str,
    ok: impl Fn(&TopicRouteData) -> bool,
) -> TopicRouteData {
    let start = Instant::now();
    loop {
        let resp = call(c, route_request(topic, 401)).await;
        if resp.code() == response_code::SUCCESS {
            let data = TopicRouteData::parse(resp.body()).unwrap();
            if ok(&data) {
                return data;
            }
        }
        assert!(
            start.elapsed() < T,
            "timed out waiting for {what}: last answer {} {:?}",
            resp.code(),
            resp.remark()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn broker_names(d: &TopicRouteData) -> BTreeSet<String> {
    d.broker_datas
        .iter()
        .map(|b| b.broker_name.clone())
        .collect()
}

fn has_brokers<'a>(names: &'a [&'a str]) -> impl Fn(&TopicRouteData) -> bool + 'a {
    move |d| {
        let have = broker_names(d);
        names.iter().all(|n| have.contains(*n))
    }
}

fn send_v2(topic: &str, queue: i32, body: &str) -> RemotingCommand {
    send_v2_default(topic, "TBW102", queue, body)
}

fn send_v2_default(topic: &str, default_topic: &str, queue: i32, body: &str) -> RemotingCommand {
    let mut props = Properties::default();
    props.insert(property_keys::UNIQ_KEY, format!("K-{topic}-{body}"));
    let h = SendMessageRequestHeaderV2 {
        a: "sc_producer".into(),
        b: topic.into(),
        c: default_topic.into(),
        d: 4,
        e: queue,
        f: 0,
        g: 0,
        h: 0,
        i: Some(props.to_wire_string()),
        ..SendMessageRequestHeaderV2::default()
    };
    RemotingCommand::request_with_header(rc::SEND_MESSAGE_V2, &h)
        .with_body(body.as_bytes().to_vec())
}

/// Sends and expects SUCCESS; returns the response's queue id.
async fn send_ok(c: &RemotingClient, req: RemotingCommand) -> i32 {
    let resp = call(c, req).await;
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    resp.decode_header::<SendMessageResponseHeader>()
        .unwrap()
        .queue_id
}

/// A broker's max offset of one queue, asked of the broker directly.
async fn max_offset(broker: SocketAddr, topic: &str, queue: i32) -> i64 {
    let c = connect(broker).await;
    let h = GetMaxOffsetRequestHeader {
        topic: topic.into(),
        queue_id: queue,
        ..Default::default()
    };
    let resp = call(
        &c,
        RemotingCommand::request_with_header(rc::GET_MAX_OFFSET, &h),
    )
    .await;
    c.close();
    if resp.code() != response_code::SUCCESS {
        return 0;
    }
    resp.decode_header::<OffsetResponseHeader>().unwrap().offset
}

async fn max_offsets(broker: SocketAddr, topic: &str, queues: i32) -> Vec<i64> {
    let mut v = Vec::new();
    for q in 0..queues {
        v.push(max_offset(broker, topic, q).await);
    }
    v
}

struct Popped {
    handle: PopHandle,
    body: String,
}

fn pop_request(topic: &str, invisible: i64, poll: i64) -> RemotingCommand {
    let h = PopMessageRequestHeader {
        consumer_group: GROUP.into(),
        topic: topic.into(),
        queue_id: -1,
        max_msg_nums: 32,
        invisible_time: invisible,
        poll_time: poll,
        born_time: 0,
        init_mode: 0,
        ..PopMessageRequestHeader::default()
    };
    RemotingCommand::request_with_header(rc::POP_MESSAGE, &h)
}

/// Pops through the sidecar and builds each message's handle the way a 5.x SDK's
/// `processPopResponse` does: a record's own `POP_CK` wins; otherwise the handle names the
/// broker the SDK popped from, which behind the sidecar is the route answer's virtual broker.
async fn pop(c: &RemotingClient, topic: &str, invisible: i64, poll: i64) -> Vec<Popped> {
    let resp = c
        .invoke(
            pop_request(topic, invisible, poll),
            T + Duration::from_millis(poll as u64),
        )
        .await
        .unwrap();
    if resp.code() == response_code::POLLING_TIMEOUT || resp.code() == response_code::NO_MESSAGE {
        return Vec::new();
    }
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    let header: PopMessageResponseHeader = resp.decode_header().unwrap();
    let info = PopResponseInfo::from_header(&header).unwrap();
    decode_records(resp.body())
        .unwrap()
        .into_iter()
        .map(|msg| {
            let ck = msg.properties.get(property_keys::POP_CK).map(str::to_owned);
            let handle = info
                .handle_for(
                    &msg.topic,
                    msg.queue_id,
                    msg.queue_offset,
                    ck.as_deref(),
                    VIRTUAL,
                )
                .unwrap();
            Popped {
                handle,
                body: String::from_utf8(msg.body.to_vec()).unwrap(),
            }
        })
        .collect()
}

/// Pops until `n` messages arrived (or `T` passes).
async fn pop_n(c: &RemotingClient, topic: &str, n: usize, invisible: i64) -> Vec<Popped> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && start.elapsed() < T {
        got.extend(pop(c, topic, invisible, 500).await);
    }
    assert_eq!(got.len(), n, "popped {} of {n}", got.len());
    got
}

fn ack_request(topic: &str, p: &Popped) -> RemotingCommand {
    let h = AckMessageRequestHeader {
        consumer_group: GROUP.into(),
        topic: p.handle.real_topic(topic, GROUP),
        queue_id: p.handle.queue_id,
        offset: p.handle.queue_offset,
        extra_info: p.handle.to_extra_info(),
        bname: Some(p.handle.broker_name.to_string()),
    };
    RemotingCommand::request_with_header(rc::ACK_MESSAGE, &h)
}

/// Reads one frame (or None on EOF / close) from a raw socket, bounded.
async fn read_frame(
    frames: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
) -> Option<RemotingCommand> {
    let f = tokio::time::timeout(T, frames.next())
        .await
        .expect("no frame and no close within the deadline");
    match f {
        Some(Ok(raw)) => Some(RemotingCodec::parse_frame(raw).unwrap()),
        _ => None,
    }
}

fn encode(cmd: &RemotingCommand) -> BytesMut {
    let mut buf = BytesMut::new();
    RemotingCodec::new(FrameLimits::default())
        .encode(cmd, &mut buf)
        .unwrap();
    buf
}

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

/// (broker, broker name, perm, queues) of one endpoint in a bootstrap file.
type StaticEndpoint<'a> = (&'a BrokerHandle, &'a str, i32, i32);

/// Writes a static bootstrap (clusters of real brokers, topics routed to them).
fn write_bootstrap(
    test: &str,
    clusters: &[(&str, &[StaticEndpoint<'_>])],
    topics: &[(&str, &str)],
) -> PathBuf {
    let mut y = String::from("clusters:\n");
    for (name, eps) in clusters {
        y.push_str(&format!("  - name: {name}\n    endpoints:\n"));
        for (b, broker_name, perm, queues) in eps.iter() {
            y.push_str(&format!(
                "      - address: {}\n        broker_name: {broker_name}\n        broker_id: 0\n        cluster_name: DefaultCluster\n        perm: {perm}\n        read_queue_num: {queues}\n        write_queue_num: {queues}\n",
                b.addr
            ));
        }
    }
    y.push_str("topics:\n");
    for (topic, cluster) in topics {
        y.push_str(&format!("  - topic: {topic}\n    cluster: {cluster}\n"));
    }
    let dir = temp_dir(test);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bootstrap.yaml");
    std::fs::write(&path, y).unwrap();
    path
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
        bcfg.namesrv = Some(cp.remoting_addr);
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
// 6. Client table
// ---------------------------------------------------------------------------------------------

fn heartbeat(client_id: &str) -> RemotingCommand {
    let hb = HeartbeatData {
        client_id: client_id.into(),
        consumer_data_set: vec![ConsumerData {
            group_name: GROUP.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    RemotingCommand::request(rc::HEART_BEAT).with_body(hb.to_json())
}

async fn consumers(c: &RemotingClient) -> Vec<String> {
    let h = GetConsumerListByGroupRequestHeader {
        consumer_group: GROUP.into(),
    };
    let resp = call(
        c,
        RemotingCommand::request_with_header(rc::GET_CONSUMER_LIST_BY_GROUP, &h),
    )
    .await;
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    ConsumerListBody::parse(resp.body())
        .unwrap()
        .consumer_id_list
}

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

// ---------------------------------------------------------------------------------------------
// 7. Malformed input
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clean_errors_and_spares_other_connections() {
    bounded(TEST, async {
        let a = start_broker("broker-a", "malformed", None).await;
        create_topic(a.addr, "BadT", 6, 4).await;
        let path = write_bootstrap(
            "malformed-cfg",
            &[("main", &[(&a, "broker-a", 6, 4)])],
            &[("BadT", "main")],
        );
        let mut cfg = sidecar_config(None);
        cfg.bootstrap = Some(path);
        let sc = start_sidecar(cfg).await;
        let good = connect(sc.addr).await;

        // Unknown code.
        let resp = call(&good, RemotingCommand::request(9999)).await;
        assert_eq!(resp.code(), response_code::REQUEST_CODE_NOT_SUPPORTED);
        assert!(
            resp.remark().unwrap_or("").contains("9999"),
            "{:?}",
            resp.remark()
        );
        // A header missing `topic`.
        let resp = call(&good, RemotingCommand::request(rc::GET_ROUTEINFO_BY_TOPIC)).await;
        assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
        assert!(
            resp.remark().unwrap_or("").contains("topic"),
            "{:?}",
            resp.remark()
        );
        let resp = call(&good, RemotingCommand::request(rc::POP_MESSAGE)).await;
        assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
        assert!(
            resp.remark().unwrap_or("").contains("consumerGroup"),
            "{:?}",
            resp.remark()
        );

        // A frame announcing 1 GiB: closed without waiting for (or allocating) the body.
        let mut huge = TcpStream::connect(sc.addr).await.unwrap();
        let mut prefix = Vec::new();
        prefix.extend_from_slice(&(1i32 << 30).to_be_bytes());
        prefix.extend_from_slice(&64i32.to_be_bytes());
        huge.write_all(&prefix).await.unwrap();
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(T, huge.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "connection with a huge frame stayed open");
        // Meanwhile the other connection works.
        assert_eq!(send_ok(&good, send_v2("BadT", 1, "still-fine")).await, 1);

        // Garbage bytes.
        let mut garbage = TcpStream::connect(sc.addr).await.unwrap();
        garbage
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(T, garbage.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "connection sending garbage stayed open");

        // A header that is not JSON: nobody to answer, so closed at once (not left to the
        // client's timeout).
        let mut unreadable = TcpStream::connect(sc.addr).await.unwrap();
        let h = b"{a: 3";
        let mut frame = ((4 + h.len()) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&(h.len() as u32).to_be_bytes());
        frame.extend_from_slice(h);
        unreadable.write_all(&frame).await.unwrap();
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(T, unreadable.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "connection with an unreadable header stayed open"
        );
        // Every one of the three counts as a request that failed to decode.
        let stats = &sc.core().ctx.stats;
        eventually("three decoding errors counted", || {
            stats.count(Counter::RequestDecodingError) == 3
        })
        .await;

        // Half-close after a request: the response still arrives.
        let s = TcpStream::connect(sc.addr).await.unwrap();
        let (r, mut w) = s.into_split();
        let req = route_request("BadT", 401).with_opaque(77);
        w.write_all(&encode(&req)).await.unwrap();
        w.shutdown().await.unwrap();
        let mut frames = FramedRead::new(r, FrameCodec::new(FrameLimits::default()));
        let resp = read_frame(&mut frames)
            .await
            .expect("response after half-close");
        assert_eq!((resp.opaque(), resp.code()), (77, response_code::SUCCESS));
        assert!(
            read_frame(&mut frames).await.is_none(),
            "then a clean close"
        );

        // A oneway request gets no response: the first frame back answers the next request.
        let s = TcpStream::connect(sc.addr).await.unwrap();
        let (r, mut w) = s.into_split();
        let oneway = RemotingCommand::request(9998).oneway().with_opaque(5);
        let oneway_hb = heartbeat("10.0.0.9@9").oneway().with_opaque(6);
        let next = route_request("BadT", 401).with_opaque(7);
        for cmd in [&oneway, &oneway_hb, &next] {
            w.write_all(&encode(cmd)).await.unwrap();
        }
        let mut frames = FramedRead::new(r, FrameCodec::new(FrameLimits::default()));
        let resp = read_frame(&mut frames).await.unwrap();
        assert_eq!(resp.opaque(), 7, "no answer to a oneway request");
        assert_eq!(resp.code(), response_code::SUCCESS);

        // And after all that, the good connection still works.
        assert_eq!(send_ok(&good, send_v2("BadT", 2, "after")).await, 2);
        good.close();
        sc.shutdown().await;
        a.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. Upstream failure
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writable_broker_is_skipped() {
    bounded(TEST, async {
        let a = start_broker("broker-a", "dead", None).await;
        let cc = start_broker("broker-c", "dead", None).await;
        create_topic(a.addr, "FailT", 6, 2).await;
        create_topic(cc.addr, "FailT", 6, 2).await;
        create_topic(cc.addr, "OnlyCT", 6, 2).await;
        // Static routes: the dead broker stays in the route, as it would until the control
        // plane notices.
        let path = write_bootstrap(
            "dead-cfg",
            &[
                ("both", &[(&a, "broker-a", 6, 2), (&cc, "broker-c", 6, 2)]),
                ("onlyc", &[(&cc, "broker-c", 6, 2)]),
            ],
            &[("FailT", "both"), ("OnlyCT", "onlyc")],
        );
        let mut cfg = sidecar_config(None);
        cfg.bootstrap = Some(path);
        let sc = start_sidecar(cfg).await;
        let c = connect(sc.addr).await;
        // Warm both pools.
        for q in 0..4 {
            send_ok(&c, send_v2("FailT", q, &format!("warm{q}"))).await;
        }
        let c_addr = cc.addr;
        cc.shutdown().await;

        // Sends to broker-c's virtual queues (2, 3) now land on broker-a.
        let before: i64 = max_offsets(a.addr, "FailT", 2).await.iter().sum();
        for i in 0..10 {
            let q = 2 + i % 2;
            let resp = call(&c, send_v2("FailT", q, &format!("f{i}"))).await;
            assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
            let qid = resp
                .decode_header::<SendMessageResponseHeader>()
                .unwrap()
                .queue_id;
            assert!(
                (0..2).contains(&qid),
                "answered in broker-a's virtual queues: {qid}"
            );
        }
        let after: i64 = max_offsets(a.addr, "FailT", 2).await.iter().sum();
        assert_eq!(after - before, 10);

        // The only writable broker is down: a clear error, quickly.
        let start = Instant::now();
        let resp = call(&c, send_v2("OnlyCT", 0, "nowhere")).await;
        assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
        let remark = resp.remark().unwrap_or("");
        assert!(remark.contains(&c_addr.to_string()), "{remark}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        c.close();
        sc.shutdown().await;
        a.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_times_sends_out_with_a_clear_remark() {
    bounded(TEST, async {
        // A "broker" that accepts and reads but never answers.
        let silent = TcpListener::bind(local()).await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let sink = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = silent.accept().await {
                held.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                }));
            }
        });
        let dir = temp_dir("silent-cfg");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bootstrap.yaml");
        std::fs::write(
            &path,
            format!(
                "clusters:\n  - name: silent\n    endpoints:\n      - address: {silent_addr}\n        broker_name: broker-s\n        broker_id: 0\n        cluster_name: DefaultCluster\n        perm: 6\n        read_queue_num: 2\n        write_queue_num: 2\ntopics:\n  - topic: SilentT\n    cluster: silent\n"
            ),
        )
        .unwrap();
        let mut cfg = sidecar_config(None);
        cfg.bootstrap = Some(path);
        cfg.request_timeout = Duration::from_millis(400);
        let sc = start_sidecar(cfg).await;
        let c = connect(sc.addr).await;
        // The first send opens the upstream connection (the waiting path); the later ones find
        // it up and are queued without a task of their own; every one is answered in time.
        for round in 0..2 {
            let start = Instant::now();
            let calls = (0..4).map(|i| call(&c, send_v2("SilentT", i % 2, &format!("s{round}{i}"))));
            for resp in futures_util::future::join_all(calls).await {
                assert_eq!(resp.code(), response_code::SYSTEM_ERROR);
                let remark = resp.remark().unwrap_or("");
                assert!(remark.contains("timed out"), "{remark}");
                assert!(remark.contains(&silent_addr.to_string()), "{remark}");
            }
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(400) && took < Duration::from_secs(3),
                "round {round}: {took:?}"
            );
        }
        // The client's connection is still fine.
        let resp = call(&c, route_request("SilentT", 401)).await;
        assert_eq!(resp.code(), response_code::SUCCESS);
        c.close();
        sc.shutdown().await;
        sink.abort();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 9. Graceful drain
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_answers_parked_pops_and_refuses_new_connections() {
    bounded(TEST, async {
        let a = start_broker("broker-a", "drain", None).await;
        create_topic(a.addr, "DrainT", 6, 1).await;
        let path = write_bootstrap(
            "drain-cfg",
            &[("main", &[(&a, "broker-a", 6, 1)])],
            &[("DrainT", "main")],
        );
        let mut cfg = sidecar_config(None);
        cfg.bootstrap = Some(path);
        cfg.drain = Duration::from_secs(5);
        let sc = start_sidecar(cfg).await;
        let addr = sc.addr;
        let c = connect(addr).await;
        // A long poll parks at the broker (empty topic).
        let parked = {
            let c = c.clone();
            tokio::spawn(async move {
                let resp = c
                    .invoke(pop_request("DrainT", 10_000, 3_000), T)
                    .await
                    .unwrap();
                (resp, Instant::now())
            })
        };
        eventually("the pop parked at the broker", || a.parked("DrainT") == 1).await;
        let started = Instant::now();
        let shutdown = tokio::spawn(sc.shutdown());
        // New connections are refused once the drain began (a connection the listener took just
        // before it closed is closed without an answer), while the parked pop is still served.
        let deadline = Instant::now() + T;
        loop {
            let refused = match TcpStream::connect(addr).await {
                Err(_) => true,
                Ok(mut s) => {
                    let mut buf = [0u8; 1];
                    matches!(
                        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
                        Ok(Ok(0) | Err(_))
                    )
                }
            };
            if refused {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "new connections were still accepted while draining"
            );
        }
        assert!(!parked.is_finished(), "the parked pop ended early");
        // A message arriving at the broker completes the parked pop.
        let direct = connect(a.addr).await;
        send_ok(&direct, send_v2("DrainT", 0, "late")).await;
        let (resp, answered) = parked.await.unwrap();
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        assert_eq!(decode_records(resp.body()).unwrap().len(), 1);
        shutdown.await.unwrap();
        let done = Instant::now();
        assert!(
            answered <= done,
            "the pop was answered before the drain ended"
        );
        assert!(
            done - started < Duration::from_secs(5),
            "{:?}",
            done - started
        );
        direct.close();
        a.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 10. Admin
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_readiness_stats_and_config() {
    bounded(TEST, async {
        let cp = control_plane().await;
        let a = start_broker("broker-a", "admin", Some(cp.remoting_addr)).await;
        create_topic(a.addr, "AdminT", 6, 4).await;
        create_topic(a.addr, "UnusedT", 6, 4).await;
        let mut cfg = sidecar_config(cp.xds_addr);
        cfg.admin = Some(local());
        cfg.stat_prefix = "sctest_admin".into();
        let sc = start_sidecar(cfg).await;
        let admin = sc.admin_addr.unwrap();
        let (status, body) = http_get(admin, "/ready").await;
        assert_eq!(status, 200, "{body}");

        let c = connect(sc.addr).await;
        wait_route(&c, "AdminT", "AdminT", |_| true).await;
        let sends = 7;
        for i in 0..sends {
            send_ok(&c, send_v2("AdminT", i % 4, &format!("a{i}"))).await;
        }
        let (status, body) = http_get(admin, "/stats/prometheus").await;
        assert_eq!(status, 200);
        let line = body
            .lines()
            .find(|l| l.starts_with("rocketmq_sctest_admin_send_message_v2 "))
            .unwrap_or_else(|| panic!("no send_message_v2 counter in:\n{body}"));
        assert_eq!(
            line.split_whitespace().nth(1),
            Some(sends.to_string().as_str())
        );
        let stat = |body: &str, name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("rocketmq_sctest_admin_{name} ")))
                .map(str::to_owned)
        };
        assert_eq!(
            stat(&body, "downstream_connections").as_deref(),
            Some("1"),
            "the one SDK connection is counted: {body}"
        );
        assert_eq!(stat(&body, "send_message_v2_active").as_deref(), Some("0"));

        let (status, body) = http_get(admin, "/config_dump").await;
        assert_eq!(status, 200);
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            dump["xds"]["topics_ready"],
            serde_json::json!(["AdminT"]),
            "{dump}"
        );
        assert!(!body.contains("UnusedT"));
        c.close();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, body) = http_get(admin, "/stats/prometheus").await;
            if stat(&body, "downstream_connections").as_deref() == Some("0") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a closed connection is still counted: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sc.shutdown().await;
        a.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The binary: SIGTERM ends the process even while the xDS server never answered.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exits_on_sigterm_before_xds_answers() {
    bounded(TEST, async {
        let silent = tokio::net::TcpListener::bind(local()).await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
            .args(["sidecar", "--xds", &silent_addr.to_string()])
            .args(["--listen", &listen, "--admin", &admin])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn the sidecar");
        // Listening, so past start: the signal handlers are installed before the listener binds.
        let start = Instant::now();
        while TcpStream::connect(&listen).await.is_err() {
            assert!(start.elapsed() < T, "sidecar never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > T {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the sidecar did not exit within {T:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "exited with {status:?}");
        holder.abort();
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
// A burst of connects: the accept queue is sized from the connection limit
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_clients_connecting_at_once_are_served_quickly() {
    const CLIENTS: usize = 2_000;
    // Each client costs two descriptors here (both ends are in this process).
    let wanted = (2 * CLIENTS + 512) as u64;
    let got = rlimit::increase_nofile_limit(wanted).unwrap_or(0);
    assert!(
        got >= wanted,
        "RLIMIT_NOFILE hard limit too low: {got} < {wanted}"
    );
    bounded(TEST, async {
        let a = start_broker("broker-a", "burst", None).await;
        create_topic(a.addr, "BurstT", 6, 4).await;
        let path = write_bootstrap(
            "burst-cfg",
            &[("main", &[(&a, "broker-a", 6, 4)])],
            &[("BurstT", "main")],
        );
        let mut cfg = sidecar_config(None);
        cfg.bootstrap = Some(path);
        let sc = start_sidecar(cfg).await;
        let addr = sc.addr;
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    let t0 = Instant::now();
                    let mut s = TcpStream::connect(addr).await.expect("connect");
                    let req = route_request("BurstT", 401).with_opaque(i as i32);
                    s.write_all(&encode(&req)).await.unwrap();
                    let (r, _w) = s.into_split();
                    let mut frames = FramedRead::new(r, FrameCodec::new(FrameLimits::default()));
                    let resp = read_frame(&mut frames).await.expect("a route answer");
                    assert_eq!(resp.code(), response_code::SUCCESS);
                    t0.elapsed()
                })
            })
            .collect();
        let mut took = Vec::with_capacity(CLIENTS);
        for c in clients {
            took.push(c.await.unwrap());
        }
        took.sort();
        let p99 = took[CLIENTS * 99 / 100];
        assert!(
            p99 < Duration::from_secs(1),
            "p99 connect + route answer {p99:?} (max {:?}): connects waited on a full accept queue",
            took[CLIENTS - 1]
        );
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
