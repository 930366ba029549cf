//! The sidecar against real components over loopback: an in-process control plane (nameserver
//! role + ADS), broker nodes registering with it (or a static bootstrap), and the sidecar, all
//! started through their `start` functions. Clients speak Remoting to the sidecar exactly as an
//! SDK would: every broker address they learn is the sidecar's.

use crate::support::{
    bounded, call, connect, create_topic, eventually, eventually_async, free_port, http_get, local,
    start_broker, start_control_plane as control_plane, start_sidecar, temp_dir, Mesh, T,
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

mod addresses;
mod consuming;
mod faults;
mod process;
mod routing;
