//! Orderly Pop (`order=true`) against a real broker over loopback: one popper per queue at a
//! time, the same offsets again (counted) after the invisible time, the state across a restart,
//! and a non-orderly pop of the same group mixed in (Apache's behaviour: it ignores orderly
//! batches).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rocketmesh_broker::{start, BrokerConfig, BrokerHandle};
use rocketmesh_filters::codec::body::{AckBitSet, BatchAck, BatchAckMessageRequestBody};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::*;
use rocketmesh_filters::codec::message::{decode_records, property_keys, MessageExt, Properties};
use rocketmesh_filters::codec::pop::{
    parse_order_count_info, OrderCountKey, PopHandle, PopResponseInfo, QueueKey, RetryFlag,
    POP_ORDER_REVIVE_QUEUE,
};
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_remoting::RemotingClient;

const T: Duration = Duration::from_secs(10);
const GROUP: &str = "order_group";

async fn broker(dir: &Path) -> BrokerHandle {
    let mut cfg = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    cfg.vip_channel = false;
    start(cfg).await.unwrap()
}

async fn client(b: &BrokerHandle) -> RemotingClient {
    RemotingClient::connect(b.addr, None).await.unwrap()
}

/// A topic with one queue.
async fn create_topic(c: &RemotingClient, topic: &str) {
    let h = CreateTopicRequestHeader {
        topic: topic.into(),
        default_topic: "TBW102".into(),
        read_queue_nums: 1,
        write_queue_nums: 1,
        perm: 6,
        topic_filter_type: "SINGLE_TAG".into(),
        order: true,
        ..CreateTopicRequestHeader::default()
    };
    let resp = c
        .invoke(
            RemotingCommand::request_with_header(rc::UPDATE_AND_CREATE_TOPIC, &h),
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
}

async fn send(c: &RemotingClient, topic: &str, n: usize) {
    for i in 0..n {
        let mut props = Properties::default();
        props.insert(property_keys::UNIQ_KEY, format!("K{i}"));
        let h = SendMessageRequestHeaderV2 {
            a: "pg".into(),
            b: topic.into(),
            c: "TBW102".into(),
            d: 1,
            e: 0,
            i: Some(props.to_wire_string()),
            ..SendMessageRequestHeaderV2::default()
        };
        let req = RemotingCommand::request_with_header(rc::SEND_MESSAGE_V2, &h)
            .with_body(format!("m{i}").into_bytes());
        let resp = c.invoke(req, T).await.unwrap();
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    }
}

struct Popped {
    handle: PopHandle,
    msg: MessageExt,
}

struct PopResult {
    msgs: Vec<Popped>,
    counts: HashMap<OrderCountKey, i32>,
}

impl PopResult {
    fn offsets(&self) -> Vec<i64> {
        self.msgs.iter().map(|p| p.msg.queue_offset).collect()
    }

    fn reconsumes(&self) -> Vec<i32> {
        self.msgs.iter().map(|p| p.msg.reconsume_times).collect()
    }

    /// The per-queue count (`"0 0 <n>"`).
    fn queue_count(&self) -> Option<i32> {
        let key = OrderCountKey::Queue(QueueKey::new(RetryFlag::Normal, 0));
        self.counts.get(&key).copied()
    }

    /// The per-offset count (`"0 qo0%<offset> <n>"`), 0 when absent.
    fn offset_count(&self, offset: i64) -> i32 {
        let key = OrderCountKey::QueueOffset {
            retry: RetryFlag::Normal,
            queue_id: 0,
            queue_offset: offset,
        };
        self.counts.get(&key).copied().unwrap_or(0)
    }
}

async fn pop(
    c: &RemotingClient,
    topic: &str,
    order: bool,
    max: i32,
    invisible: i64,
    poll: i64,
) -> PopResult {
    let h = PopMessageRequestHeader {
        consumer_group: GROUP.into(),
        topic: topic.into(),
        queue_id: -1,
        max_msg_nums: max,
        invisible_time: invisible,
        poll_time: poll,
        born_time: 0,
        init_mode: 0,
        order: Some(order),
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
        return PopResult {
            msgs: Vec::new(),
            counts: HashMap::new(),
        };
    }
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    let header: PopMessageResponseHeader = resp.decode_header().unwrap();
    if order {
        assert_eq!(header.revive_qid, POP_ORDER_REVIVE_QUEUE);
    } else {
        assert_ne!(header.revive_qid, POP_ORDER_REVIVE_QUEUE);
        assert!(header.order_count_info.is_none());
    }
    let counts = parse_order_count_info(header.order_count_info.as_deref().unwrap_or("")).unwrap();
    let info = PopResponseInfo::from_header(&header).unwrap();
    let msgs = decode_records(resp.body())
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
            assert_eq!(handle.is_order(), order);
            Popped { handle, msg }
        })
        .collect();
    PopResult { msgs, counts }
}

async fn ack(c: &RemotingClient, topic: &str, p: &Popped) {
    let h = AckMessageRequestHeader {
        consumer_group: GROUP.into(),
        topic: p.handle.real_topic(topic, GROUP),
        queue_id: p.handle.queue_id,
        offset: p.handle.queue_offset,
        extra_info: p.handle.to_extra_info(),
        bname: None,
    };
    let resp = c
        .invoke(RemotingCommand::request_with_header(rc::ACK_MESSAGE, &h), T)
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
}

async fn ack_all(c: &RemotingClient, topic: &str, r: &PopResult) {
    for p in &r.msgs {
        ack(c, topic, p).await;
    }
}

/// Checks that `offsets` are 0..n, in order, without gaps or repeats.
fn assert_contiguous(offsets: &[i64], n: i64) {
    assert_eq!(offsets, (0..n).collect::<Vec<_>>().as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_orderly_popper_waits_until_the_first_acks() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let topic = "OrderA";
    let (first, second) = (client(&b).await, client(&b).await);
    create_topic(&first, topic).await;
    send(&first, topic, 10).await;

    let mut seen = Vec::new();
    let a = pop(&first, topic, true, 3, 30_000, 0).await;
    assert_eq!(a.offsets(), vec![0, 1, 2]);
    assert_eq!(a.reconsumes(), vec![0, 0, 0]);
    assert_eq!(a.queue_count(), Some(0));
    assert_eq!(b.orderly_batches(), 1);
    seen.extend(a.offsets());
    // an offset the batch does not hold is refused, as Apache does
    let mut wrong = a.msgs[0].handle.clone();
    wrong.queue_offset = 5;
    let h = AckMessageRequestHeader {
        consumer_group: GROUP.into(),
        topic: topic.into(),
        queue_id: 0,
        offset: 5,
        extra_info: wrong.to_extra_info(),
        bname: None,
    };
    let resp = first
        .invoke(RemotingCommand::request_with_header(rc::ACK_MESSAGE, &h), T)
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::MESSAGE_ILLEGAL);

    // held: the second popper gets nothing from the queue, even with the first half acked
    assert!(pop(&second, topic, true, 3, 30_000, 0)
        .await
        .msgs
        .is_empty());
    ack(&first, topic, &a.msgs[0]).await;
    ack(&first, topic, &a.msgs[1]).await;
    assert!(pop(&second, topic, true, 3, 30_000, 0)
        .await
        .msgs
        .is_empty());

    // a parked orderly pop is woken by the ack that frees the queue
    let parked = {
        let second = second.clone();
        tokio::spawn(async move { pop(&second, topic, true, 3, 30_000, 5_000).await })
    };
    let started = Instant::now();
    while b.parked(topic) == 0 {
        assert!(started.elapsed() < T, "the pop never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ack(&first, topic, &a.msgs[2]).await;
    let s = parked.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "woken by the ack"
    );
    assert_eq!(s.offsets(), vec![3, 4, 5]);
    assert_eq!(s.reconsumes(), vec![0, 0, 0]);
    seen.extend(s.offsets());

    // now the first one waits for the second
    assert!(pop(&first, topic, true, 3, 30_000, 0).await.msgs.is_empty());
    ack_all(&second, topic, &s).await;
    let mut turn = [&first, &second].into_iter().cycle();
    loop {
        let c = turn.next().unwrap();
        let r = pop(c, topic, true, 3, 30_000, 0).await;
        if r.msgs.is_empty() {
            break;
        }
        seen.extend(r.offsets());
        ack_all(c, topic, &r).await;
    }
    assert_contiguous(&seen, 10);
    assert_eq!(b.orderly_batches(), 0);
    assert_eq!(b.pop_checkpoints(), 0, "orderly pops write no checkpoint");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_orderly_batch_comes_back_in_order_with_counts() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let topic = "OrderB";
    let (lazy, other) = (client(&b).await, client(&b).await);
    create_topic(&lazy, topic).await;
    send(&lazy, topic, 6).await;

    let first = pop(&lazy, topic, true, 4, 1_000, 0).await;
    assert_eq!(first.offsets(), vec![0, 1, 2, 3]);
    assert_eq!(first.queue_count(), Some(0));
    assert!(pop(&other, topic, true, 4, 1_000, 0).await.msgs.is_empty());

    // never acked: after the invisible time the same offsets, counted, to whoever pops next;
    // the long poll wakes when the batch becomes visible again
    for round in 1..=2 {
        let started = Instant::now();
        let again = pop(&other, topic, true, 4, 1_000, 5_000).await;
        assert!(started.elapsed() < Duration::from_secs(4), "round {round}");
        assert_eq!(again.offsets(), vec![0, 1, 2, 3], "round {round}");
        assert_eq!(again.reconsumes(), vec![round; 4]);
        assert_eq!(again.queue_count(), Some(round));
        for o in 0..4 {
            assert_eq!(again.offset_count(o), round);
        }
        assert_eq!(b.pop_checkpoints(), 0, "nothing goes to the retry topic");
    }

    // acking the first two of the third delivery: the rest comes back from offset 2 and the
    // count of 2 and 3 grows while 4 and 5 are new
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let third = pop(&other, topic, true, 4, 1_000, 0).await;
    assert_eq!(third.offsets(), vec![0, 1, 2, 3]);
    assert_eq!(third.reconsumes(), vec![3; 4]);
    ack(&other, topic, &third.msgs[0]).await;
    ack(&other, topic, &third.msgs[1]).await;
    let fourth = pop(&lazy, topic, true, 4, 1_000, 5_000).await;
    assert_eq!(fourth.offsets(), vec![2, 3, 4, 5]);
    assert_eq!(fourth.reconsumes(), vec![4, 4, 0, 0]);
    assert_eq!(fourth.queue_count(), Some(0), "the minimum over the batch");
    assert_eq!(fourth.offset_count(4), 0);

    // a change of invisible time extends the hold on the batch
    let p = &fourth.msgs[0];
    let h = ChangeInvisibleTimeRequestHeader {
        consumer_group: GROUP.into(),
        topic: topic.into(),
        queue_id: 0,
        offset: p.handle.queue_offset,
        extra_info: p.handle.to_extra_info(),
        invisible_time: 10_000,
        bname: None,
    };
    let resp = lazy
        .invoke(
            RemotingCommand::request_with_header(rc::CHANGE_MESSAGE_INVISIBLETIME, &h),
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    let ch: ChangeInvisibleTimeResponseHeader = resp.decode_header().unwrap();
    assert_eq!(ch.pop_time, p.handle.pop_time, "the batch's own pop time");
    assert_eq!(ch.revive_qid, POP_ORDER_REVIVE_QUEUE);
    assert!(ch.invisible_time >= 10_000);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(
        pop(&other, topic, true, 4, 1_000, 0).await.msgs.is_empty(),
        "still held past the pop's invisible time"
    );

    // one BATCH_ACK of the whole batch frees the queue; nothing is left
    let mut bits = AckBitSet::default();
    for p in &fourth.msgs {
        bits.set((p.handle.queue_offset - 2) as usize);
    }
    let body = BatchAckMessageRequestBody {
        broker_name: "broker-a".into(),
        acks: vec![BatchAck {
            consumer_group: GROUP.into(),
            topic: topic.into(),
            retry: "0".into(),
            start_offset: 2,
            queue_id: 0,
            revive_queue_id: POP_ORDER_REVIVE_QUEUE,
            pop_time: p.handle.pop_time,
            invisible_time: p.handle.invisible_time,
            bit_set: bits,
        }],
    };
    let resp = lazy
        .invoke(
            RemotingCommand::request(rc::BATCH_ACK_MESSAGE).with_body(body.to_json()),
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    assert_eq!(b.orderly_batches(), 0);
    assert!(pop(&other, topic, true, 4, 1_000, 0).await.msgs.is_empty());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_batch_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "OrderC";
    let b = broker(dir.path()).await;
    let c = client(&b).await;
    create_topic(&c, topic).await;
    send(&c, topic, 8).await;
    let held = pop(&c, topic, true, 4, 3_000, 0).await;
    assert_eq!(held.offsets(), vec![0, 1, 2, 3]);
    ack(&c, topic, &held.msgs[0]).await;
    b.shutdown().await;

    let b = broker(dir.path()).await;
    let c = client(&b).await;
    assert_eq!(b.orderly_batches(), 1, "the batch is back");
    // still held after the restart ...
    assert!(pop(&c, topic, true, 4, 3_000, 0).await.msgs.is_empty());
    // ... and the holder's handles still work
    ack(&c, topic, &held.msgs[1]).await;
    // after the invisible time the un-acked rest comes again, in order, counted
    let again = pop(&c, topic, true, 4, 3_000, 6_000).await;
    assert_eq!(again.offsets(), vec![2, 3, 4, 5]);
    assert_eq!(again.reconsumes(), vec![1, 1, 0, 0]);
    ack_all(&c, topic, &again).await;
    let rest = pop(&c, topic, true, 4, 3_000, 0).await;
    assert_eq!(rest.offsets(), vec![6, 7]);
    ack_all(&c, topic, &rest).await;
    b.shutdown().await;

    // acked progress survives too
    let b = broker(dir.path()).await;
    let c = client(&b).await;
    assert_eq!(b.orderly_batches(), 0);
    assert!(pop(&c, topic, true, 4, 3_000, 0).await.msgs.is_empty());
    send(&c, topic, 1).await;
    assert_eq!(pop(&c, topic, true, 4, 3_000, 0).await.offsets(), vec![8]);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_orderly_pop_of_the_group_ignores_the_orderly_batch() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let topic = "OrderD";
    let (orderly, plain) = (client(&b).await, client(&b).await);
    create_topic(&orderly, topic).await;
    send(&orderly, topic, 5).await;

    let held = pop(&orderly, topic, true, 2, 2_000, 0).await;
    assert_eq!(held.offsets(), vec![0, 1]);
    // as in Apache: the pop position is the batch's start, and a non-orderly pop reads from it
    let mixed = pop(&plain, topic, false, 32, 60_000, 0).await;
    assert_eq!(mixed.offsets(), vec![0, 1, 2, 3, 4]);
    assert_eq!(mixed.reconsumes(), vec![0; 5]);
    assert_eq!(b.pop_checkpoints(), 1, "a normal checkpoint");
    // the orderly holder's acks are late now: accepted, nothing changes
    ack_all(&orderly, topic, &held).await;
    assert_eq!(b.orderly_batches(), 1);
    // and the non-orderly messages ack as always
    ack_all(&plain, topic, &mixed).await;
    assert_eq!(b.pop_checkpoints(), 0);
    // once the batch is visible again, orderly pops go on from the moved position
    send(&orderly, topic, 1).await;
    let started = Instant::now();
    let next = pop(&orderly, topic, true, 2, 2_000, 5_000).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(next.offsets(), vec![5]);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_sends_an_exhausted_orderly_message_to_the_dlq_and_acks_it() {
    // Apache's broker never moves an orderly message to the DLQ; the consumer does once the
    // count reaches its maximum (here 1), then acks it, and the queue goes on.
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let topic = "OrderE";
    let c = client(&b).await;
    create_topic(&c, topic).await;
    send(&c, topic, 2).await;
    let first = pop(&c, topic, true, 1, 1_000, 0).await;
    assert_eq!(first.offsets(), vec![0]);
    let again = pop(&c, topic, true, 1, 1_000, 5_000).await;
    assert_eq!(again.offsets(), vec![0]);
    assert_eq!(again.reconsumes(), vec![1]);
    let p = &again.msgs[0];
    let h = ConsumerSendMsgBackRequestHeader {
        offset: p.msg.commit_log_offset,
        group: GROUP.into(),
        delay_level: -1,
        origin_topic: Some(topic.into()),
        max_reconsume_times: Some(1),
        ..ConsumerSendMsgBackRequestHeader::default()
    };
    let resp = c
        .invoke(
            RemotingCommand::request_with_header(rc::CONSUMER_SEND_MSG_BACK, &h),
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    ack(&c, topic, p).await;
    let h = GetMaxOffsetRequestHeader {
        topic: format!("%DLQ%{GROUP}"),
        queue_id: 0,
        ..GetMaxOffsetRequestHeader::default()
    };
    let resp = c
        .invoke(
            RemotingCommand::request_with_header(rc::GET_MAX_OFFSET, &h),
            T,
        )
        .await
        .unwrap();
    let max: OffsetResponseHeader = resp.decode_header().unwrap();
    assert_eq!(max.offset, 1, "one message in the DLQ");
    let next = pop(&c, topic, true, 1, 1_000, 0).await;
    assert_eq!(next.offsets(), vec![1]);
    assert_eq!(next.reconsumes(), vec![0]);
    b.shutdown().await;
}
