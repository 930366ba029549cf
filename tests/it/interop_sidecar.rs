//! The real Apache RocketMQ C++ client (PyPI `rocketmq==0.4.4`, driven by `tests/interop/sdk.py`)
//! producing through the sidecar, every component a real `rocketmesh` process on loopback:
//!
//! ```text
//! sdk.py produce ──► rocketmesh sidecar ──xDS── rocketmesh control-plane ◄── register ── broker-a (rw)
//!   (namesrv = the sidecar)      │                                                   broker-b (rw)
//!                                └──── sends / pops / acks ──► brokers                broker-c (ro)
//! ```
//!
//! Checked: the sends spread over the writable brokers roughly by queue count (read back on the
//! brokers directly with GET_MAX_OFFSET) and never reach the read-only one; the route answer and
//! every connection the SDK made name only the sidecar; popping and acking through the sidecar
//! (our own client: the C++ client only knows Pull, not translated yet) returns every message
//! exactly once.

use crate::support::interop::*;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rocketmesh::remoting::RemotingClient;
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::{
    AckMessageRequestHeader, GetMaxOffsetRequestHeader, OffsetResponseHeader,
    PopMessageRequestHeader, PopMessageResponseHeader,
};
use rocketmesh_filters::codec::message::{decode_records, property_keys};
use rocketmesh_filters::codec::pop::PopResponseInfo;
use rocketmesh_filters::codec::RemotingCommand;
use serde_json::Value;

const TOPIC: &str = "InteropSidecar";
const GROUP: &str = "CG_InteropSidecar";
const MESSAGES: usize = 600;
/// Queues per broker: the writable brokers get theirs from UPDATE_AND_CREATE_TOPIC, the
/// read-only broker from `--read-only-topics` (4 queues).
const QUEUES: i32 = 4;
/// Invisible time of popped messages. Short, so that a message whose ACK did not reach the broker
/// that served it (brokers answer SUCCESS to an ACK for a checkpoint they do not hold) is revived
/// and popped a second time while the test is still watching.
const INVISIBLE: Duration = Duration::from_secs(3);

/// Messages per queue of the topic on one broker, read directly from it.
async fn max_offsets(broker: SocketAddr) -> Vec<i64> {
    let c = connect(broker).await;
    let mut out = Vec::new();
    for q in 0..QUEUES {
        let h = GetMaxOffsetRequestHeader {
            topic: TOPIC.into(),
            queue_id: q,
            committed: None,
            bname: None,
        };
        let r = call(
            &c,
            RemotingCommand::request_with_header(request_code::GET_MAX_OFFSET, &h),
        )
        .await;
        assert_eq!(r.code(), response_code::SUCCESS, "GET_MAX_OFFSET: {r:?}");
        out.push(r.decode_header::<OffsetResponseHeader>().unwrap().offset);
    }
    c.close();
    out
}

/// One POP through the sidecar from `broker` (by `bname`, as a 5.x client names the broker of its
/// message queue), then one ACK per message through the sidecar. Returns the bodies acked.
async fn pop_and_ack(c: &RemotingClient, broker: &str) -> Vec<String> {
    let h = PopMessageRequestHeader {
        consumer_group: GROUP.into(),
        topic: TOPIC.into(),
        queue_id: -1,
        max_msg_nums: 32,
        invisible_time: INVISIBLE.as_millis() as i64,
        poll_time: 200,
        born_time: 0,
        init_mode: 0,
        exp_type: Some("TAG".into()),
        exp: Some("*".into()),
        bname: Some(broker.into()),
        ..PopMessageRequestHeader::default()
    };
    let r = c
        .invoke(
            RemotingCommand::request_with_header(request_code::POP_MESSAGE, &h),
            RPC + Duration::from_millis(200),
        )
        .await
        .expect("pop through the sidecar");
    match r.code() {
        response_code::SUCCESS => {}
        response_code::POLLING_TIMEOUT | response_code::PULL_NOT_FOUND => return Vec::new(),
        other => panic!("pop from {broker}: code {other} {:?}", r.remark()),
    }
    let info =
        PopResponseInfo::from_header(&r.decode_header::<PopMessageResponseHeader>().unwrap())
            .expect("pop offset infos");
    let mut bodies = Vec::new();
    for m in decode_records(r.body()).expect("popped records") {
        let handle = info
            .handle_for(
                &m.topic,
                m.queue_id,
                m.queue_offset,
                m.properties.get(property_keys::POP_CK),
                broker,
            )
            .expect("pop handle");
        let ack = AckMessageRequestHeader {
            consumer_group: GROUP.into(),
            topic: handle.real_topic(TOPIC, GROUP),
            queue_id: handle.queue_id,
            offset: handle.queue_offset,
            extra_info: handle.to_extra_info(),
            bname: Some(broker.into()),
        };
        let a = call(
            c,
            RemotingCommand::request_with_header(request_code::ACK_MESSAGE, &ack),
        )
        .await;
        assert_eq!(
            a.code(),
            response_code::SUCCESS,
            "ack of {broker}/{}@{} through the sidecar: {:?}",
            m.queue_id,
            m.queue_offset,
            a.remark()
        );
        bodies.push(String::from_utf8_lossy(&m.body).into_owned());
    }
    bodies
}

#[test]
fn cpp_producer_through_the_sidecar_spreads_over_writable_brokers_only() {
    let started = Instant::now();
    python(); // build the venv (or fail) before starting anything
    let dir = work_dir("sidecar");
    let cp = ControlPlaneProc::start(&dir);
    let namesrv = cp.remoting.to_string();
    let a = BrokerProc::start(
        &dir,
        "broker-a",
        "127.0.0.1:0",
        &["--name", "broker-a", "--namesrv", &namesrv],
    );
    let b = BrokerProc::start(
        &dir,
        "broker-b",
        "127.0.0.1:0",
        &["--name", "broker-b", "--namesrv", &namesrv],
    );
    let c = BrokerProc::start(
        &dir,
        "broker-c",
        "127.0.0.1:0",
        &[
            "--name",
            "broker-c",
            "--namesrv",
            &namesrv,
            "--read-only-topics",
            TOPIC,
        ],
    );
    let sidecar = SidecarProc::start(&dir, cp.xds);
    let real: BTreeMap<&str, SocketAddr> = [
        ("broker-a", a.addr),
        ("broker-b", b.addr),
        ("broker-c", c.addr),
    ]
    .into();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(create_topic(a.addr, TOPIC, QUEUES));
    rt.block_on(create_topic(b.addr, TOPIC, QUEUES));

    // The brokers re-register on the topic change; the sidecar learns the route over xDS. Wait
    // until its answer covers all three: 8 write queues (a, b) and 12 read queues (a, b, c).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (raw, route) = loop {
        let (raw, route) = rt.block_on(route_via(sidecar.addr, TOPIC));
        let queues = route
            .as_ref()
            .and_then(|r| r.queue_datas.first())
            .map(|q| (q.write_queue_nums, q.read_queue_nums));
        if queues == Some((2 * QUEUES, 3 * QUEUES)) {
            break (raw, route.unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar's route never covered the three brokers; last answer: code {} {:?} {queues:?}",
            raw.code(),
            raw.remark()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // One virtual broker holds every queue; every address is the sidecar's; no real address
    // appears anywhere in the answer.
    assert_eq!(route.queue_datas.len(), 1, "{route:?}");
    let virtual_broker = route.queue_datas[0].broker_name.clone();
    assert!(!real.contains_key(virtual_broker.as_str()), "{route:?}");
    for bd in &route.broker_datas {
        for addr in bd.broker_addrs.values() {
            assert_eq!(addr, &sidecar.addr.to_string(), "address in {bd:?}");
        }
    }
    let body = String::from_utf8_lossy(raw.body()).into_owned();
    for (name, addr) in &real {
        assert!(
            !body.contains(&addr.to_string()),
            "{name}'s address {addr} in the route answer: {body}"
        );
    }
    let listed: BTreeSet<&str> = route
        .broker_datas
        .iter()
        .map(|b| b.broker_name.as_str())
        .filter(|n| *n != virtual_broker)
        .collect();
    assert_eq!(
        listed,
        real.keys().copied().collect(),
        "real brokers (names only) in brokerDatas"
    );

    // The C++ producer: the sidecar is its name server; sync sends with keys, tags, properties.
    let r = produce_with(
        &dir,
        &sidecar.addr.to_string(),
        TOPIC,
        "sc",
        Plan {
            sync: MESSAGES,
            oneway: 0,
            orderly: 0,
            interval_s: 0.0,
        },
    );
    println!(
        "produced {MESSAGES} through the sidecar in {:?}",
        started.elapsed()
    );
    let sent: Vec<Value> = r["sent"].as_array().unwrap().clone();
    let peers: Vec<String> = r["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    println!("the SDK's TCP peers: {peers:?}");
    assert!(
        peers.contains(&sidecar.addr.to_string()),
        "the SDK has no connection to the sidecar {}: {peers:?}",
        sidecar.addr
    );
    for p in &peers {
        assert_eq!(
            p,
            &sidecar.addr.to_string(),
            "the SDK connected to something other than the sidecar (real brokers: {real:?})"
        );
    }

    // On the brokers themselves: a and b share the 600 by queue count (4 + 4 of 8 virtual write
    // queues, so about 300 each, every queue used), c got none.
    let per_broker: BTreeMap<&str, Vec<i64>> = real
        .iter()
        .map(|(n, addr)| (*n, rt.block_on(max_offsets(*addr))))
        .collect();
    println!("messages per queue on the brokers: {per_broker:?}");
    let total = |n: &str| per_broker[n].iter().sum::<i64>();
    assert_eq!(total("broker-c"), 0, "the read-only broker stored sends");
    assert_eq!(total("broker-a") + total("broker-b"), MESSAGES as i64);
    for n in ["broker-a", "broker-b"] {
        let share = total(n) as f64 / MESSAGES as f64;
        assert!(
            (0.4..=0.6).contains(&share),
            "{n} got {} of {MESSAGES} sends; expected about half (4 of 8 write queues)",
            total(n)
        );
        assert!(
            per_broker[n].iter().all(|q| *q > 0),
            "{n} has an unused write queue: {:?}",
            per_broker[n]
        );
    }

    // Pop + ack through the sidecar, broker by broker as listed in the route answer, until all
    // 600 came back and then nothing more for the invisible time plus the brokers' revive slack:
    // an ACK that missed its broker would bring its message back (from the retry topic).
    let sent_bodies: BTreeSet<String> = sent.iter().map(|m| s(m, "body")).collect();
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let client = rt.block_on(connect(sidecar.addr));
    let deadline = Instant::now() + Duration::from_secs(60);
    let quiet = INVISIBLE + Duration::from_secs(3);
    let mut popped_from: BTreeMap<&str, usize> = BTreeMap::new();
    let mut last_message = Instant::now();
    let mut order: Vec<&str> = listed.iter().copied().collect();
    while Instant::now() < deadline && (got.len() < MESSAGES || last_message.elapsed() < quiet) {
        // A different broker order each round, so no pattern of the sidecar's own choice for
        // unnamed pops can happen to match the brokers named.
        order.rotate_left(1);
        for broker in &order {
            let bodies = rt.block_on(pop_and_ack(&client, broker));
            if !bodies.is_empty() {
                last_message = Instant::now();
            }
            *popped_from.entry(broker).or_default() += bodies.len();
            for body in bodies {
                *got.entry(body).or_default() += 1;
            }
        }
    }
    client.close();
    println!("popped per broker: {popped_from:?}");
    let received: BTreeSet<String> = got.keys().cloned().collect();
    let missing: Vec<_> = sent_bodies.difference(&received).take(10).collect();
    let foreign: Vec<_> = received.difference(&sent_bodies).take(10).collect();
    let dups: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(missing.is_empty(), "never popped, e.g. {missing:?}");
    assert!(foreign.is_empty(), "popped but never sent: {foreign:?}");
    assert!(dups.is_empty(), "popped more than once: {dups:?}");
    assert_eq!(popped_from.get("broker-c").copied().unwrap_or(0), 0);

    drop(sidecar);
    for broker in [a, b, c] {
        broker.stop();
    }
    drop(cp);
    println!(
        "cpp_producer_through_the_sidecar_spreads_over_writable_brokers_only: {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
