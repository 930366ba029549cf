//! Pop against a real broker over loopback: pop with an invisible time, ack half, let the rest
//! expire, pop again and get exactly the un-acked ones back with reconsumeTimes incremented.
//! Also: ack on another connection, change invisible time, batch ack.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rocketmesh::broker::{self, BrokerConfig};
use rocketmesh::remoting::RemotingClient;
use rocketmesh_filters::codec::body::{AckBitSet, BatchAck, BatchAckMessageRequestBody};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::*;
use rocketmesh_filters::codec::message::{decode_records, property_keys, MessageExt, Properties};
use rocketmesh_filters::codec::pop::{PopHandle, PopResponseInfo};
use rocketmesh_filters::codec::RemotingCommand;

use crate::support::{eventually, temp_dir, T};
const GROUP: &str = "pop_test_group";

async fn send(c: &RemotingClient, topic: &str, body: &str) {
    let mut props = Properties::default();
    props.insert(property_keys::UNIQ_KEY, format!("K{body}"));
    let h = SendMessageRequestHeaderV2 {
        a: "pg".into(),
        b: topic.into(),
        c: "TBW102".into(),
        d: 1,
        e: 0,
        f: 0,
        g: 0,
        h: 0,
        i: Some(props.to_wire_string()),
        ..SendMessageRequestHeaderV2::default()
    };
    let req = RemotingCommand::request_with_header(rc::SEND_MESSAGE_V2, &h)
        .with_body(body.as_bytes().to_vec());
    let resp = c.invoke(req, T).await.unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
}

struct Popped {
    handle: PopHandle,
    msg: MessageExt,
}

async fn pop(c: &RemotingClient, topic: &str, invisible: i64, poll: i64) -> Vec<Popped> {
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
    let resp = c
        .invoke(
            RemotingCommand::request_with_header(rc::POP_MESSAGE, &h),
            T + Duration::from_millis(poll as u64),
        )
        .await
        .unwrap();
    if resp.code() == response_code::POLLING_TIMEOUT {
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
                    "broker-a",
                )
                .unwrap();
            Popped { handle, msg }
        })
        .collect()
}

async fn ack(c: &RemotingClient, topic: &str, p: &Popped) -> i32 {
    let h = AckMessageRequestHeader {
        consumer_group: GROUP.into(),
        topic: p.handle.real_topic(topic, GROUP),
        queue_id: p.handle.queue_id,
        offset: p.handle.queue_offset,
        extra_info: p.handle.to_extra_info(),
        bname: Some(p.handle.broker_name.to_string()),
    };
    c.invoke(RemotingCommand::request_with_header(rc::ACK_MESSAGE, &h), T)
        .await
        .unwrap()
        .code()
}

fn body(p: &Popped) -> String {
    String::from_utf8(p.msg.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop_ack_half_expire_rest_and_get_them_back() {
    let dir = temp_dir("pop");
    let b = broker::start(BrokerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.clone(),
    ))
    .await
    .unwrap();
    let producer = RemotingClient::connect(b.addr, None).await.unwrap();
    let topic = "PopTopic";
    for i in 0..10 {
        send(&producer, topic, &format!("m{i}")).await;
    }
    let consumer = RemotingClient::connect(b.addr, None).await.unwrap();
    let acker = RemotingClient::connect(b.addr, None).await.unwrap();

    let first = pop(&consumer, topic, 2_000, 0).await;
    assert_eq!(first.len(), 10, "all ten popped at once");
    assert!(first.iter().all(|p| p.msg.reconsume_times == 0));
    // nothing else is visible while they are invisible
    assert!(pop(&consumer, topic, 2_000, 0).await.is_empty());

    // ack the even ones, on another connection than the pop's
    let mut unacked = BTreeSet::new();
    for (i, p) in first.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(ack(&acker, topic, p).await, response_code::SUCCESS);
        } else {
            unacked.insert(body(p));
        }
    }

    // after the invisible time the odd ones come back, once each, from the retry topic
    let started = Instant::now();
    let mut again = Vec::new();
    while again.len() < unacked.len() && started.elapsed() < Duration::from_secs(15) {
        again.extend(pop(&consumer, topic, 60_000, 1_000).await);
    }
    let bodies: BTreeSet<String> = again.iter().map(body).collect();
    assert_eq!(bodies, unacked);
    assert_eq!(again.len(), unacked.len(), "no duplicates");
    for p in &again {
        assert_eq!(p.msg.reconsume_times, 1, "{}", body(p));
        assert!(p.handle.retry.is_retry());
        assert_eq!(ack(&acker, topic, p).await, response_code::SUCCESS);
    }
    // everything acked: the broker holds no checkpoint to revive, and nothing comes back
    eventually("every pop checkpoint acked", || b.pop_checkpoints() == 0).await;
    assert!(pop(&consumer, topic, 1_000, 0).await.is_empty());
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_invisible_time_and_batch_ack() {
    let dir = temp_dir("pop-ci");
    let b = broker::start(BrokerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.clone(),
    ))
    .await
    .unwrap();
    let c = RemotingClient::connect(b.addr, None).await.unwrap();
    let topic = "PopTopic2";
    for i in 0..4 {
        send(&c, topic, &format!("n{i}")).await;
    }
    // a long poll is woken by a send
    let popped = pop(&c, topic, 60_000, 0).await;
    assert_eq!(popped.len(), 4);

    // change one message's invisible time to 1 s: it comes back alone
    let p = &popped[0];
    let h = ChangeInvisibleTimeRequestHeader {
        consumer_group: GROUP.into(),
        topic: topic.into(),
        queue_id: p.handle.queue_id,
        offset: p.handle.queue_offset,
        extra_info: p.handle.to_extra_info(),
        invisible_time: 1_000,
        ..ChangeInvisibleTimeRequestHeader::default()
    };
    let resp = c
        .invoke(
            RemotingCommand::request_with_header(rc::CHANGE_MESSAGE_INVISIBLETIME, &h),
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    // the old handle is dead now
    assert_eq!(
        c.invoke(
            RemotingCommand::request_with_header(rc::CHANGE_MESSAGE_INVISIBLETIME, &h),
            T
        )
        .await
        .unwrap()
        .code(),
        response_code::NO_MESSAGE
    );

    // batch-ack the other three
    let rest = &popped[1..];
    let mut bits = AckBitSet::default();
    let so = rest[0].handle.ck_queue_offset;
    for p in rest {
        assert_eq!(p.handle.ck_queue_offset, so);
        bits.set((p.handle.queue_offset - so) as usize);
    }
    let body = BatchAckMessageRequestBody {
        broker_name: "broker-a".into(),
        acks: vec![BatchAck {
            consumer_group: GROUP.into(),
            topic: topic.into(),
            retry: "0".into(),
            start_offset: so,
            queue_id: rest[0].handle.queue_id,
            revive_queue_id: rest[0].handle.revive_qid,
            pop_time: rest[0].handle.pop_time,
            invisible_time: rest[0].handle.invisible_time,
            bit_set: bits,
        }],
    };
    let resp = c
        .invoke(
            RemotingCommand::request(rc::BATCH_ACK_MESSAGE).with_body(body.to_json()),
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());

    let started = Instant::now();
    let mut back = Vec::new();
    while back.is_empty() && started.elapsed() < Duration::from_secs(10) {
        back = pop(&c, topic, 60_000, 1_000).await;
    }
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].msg.body, p.msg.body);
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pops_never_hand_out_a_message_twice() {
    let dir = temp_dir("pop-concurrent");
    let b = broker::start(BrokerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.clone(),
    ))
    .await
    .unwrap();
    let producer = RemotingClient::connect(b.addr, None).await.unwrap();
    let topic = "PopConcurrent";
    let total = 1500;
    let mut sends = Vec::new();
    for i in 0..total {
        let p = producer.clone();
        sends.push(tokio::spawn(async move {
            send(&p, topic, &format!("c{i}")).await
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    let mut poppers = Vec::new();
    for _ in 0..8 {
        let c = RemotingClient::connect(b.addr, None).await.unwrap();
        poppers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut empty = 0;
            while empty < 3 {
                let batch = pop(&c, topic, 60_000, 0).await;
                if batch.is_empty() {
                    empty += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                got.extend(batch.iter().map(body));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for p in poppers {
        all.extend(p.await.unwrap());
    }
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(unique.len(), total, "every message popped");
    assert_eq!(all.len(), total, "{} duplicates", all.len() - unique.len());
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
