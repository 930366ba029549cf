use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::body::BatchAckMessageRequestBody;
use crate::codec::headers::PopMessageResponseHeader;
use crate::codec::message::{decode_records, encode_record, MessageExt, Properties};
use crate::codec::pop::PopHandle;

fn key(conn: u64, q: i32) -> VQueueKey {
    VQueueKey {
        conn,
        group: "g".into(),
        topic: "T".into(),
        queue: q,
    }
}

/// A POP response from `broker` for real queue `qid` with messages at `offsets`.
fn pop_response(qid: i32, offsets: &[i64], phys_base: i64) -> (PopMessageResponseHeader, BytesMut) {
    let mut body = BytesMut::new();
    for (i, &o) in offsets.iter().enumerate() {
        let m = MessageExt {
            topic: "T".into(),
            queue_id: qid,
            queue_offset: o,
            commit_log_offset: phys_base + i as i64 * 100,
            body: Bytes::from(format!("m{o}")),
            properties: Properties::parse("TAGS\u{1}a\u{2}"),
            ..MessageExt::default()
        };
        encode_record(&m, &mut body).unwrap();
    }
    let header = PopMessageResponseHeader {
        pop_time: 1_000,
        invisible_time: 60_000,
        revive_qid: 0,
        rest_num: 0,
        start_offset_info: Some(format!("0 {qid} {}", offsets.first().copied().unwrap_or(0))),
        msg_offset_info: Some(format!(
            "0 {qid} {}",
            offsets
                .iter()
                .map(|o| o.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )),
        order_count_info: None,
    };
    (header, body)
}

fn pull(
    t: &mut Translator,
    k: &VQueueKey,
    offset: i64,
    real_q: i32,
    offsets: &[i64],
    phys: i64,
) -> PullReply {
    let (acks, plan) = t.begin_pull(k, offset, 32, None);
    assert!(acks.is_empty());
    assert!(matches!(plan, PullPlan::Pop { .. }), "{plan:?}");
    let (h, body) = pop_response(real_q, offsets, phys);
    t.complete_pull(
        k,
        offset,
        "broker-a",
        Some((&h, body)),
        Some("127.0.0.1:9876".parse().unwrap()),
        2_000,
    )
    .unwrap()
}

#[test]
fn records_are_restamped_into_the_virtual_space() {
    let mut t = Translator::new(TranslatorConfig::default());
    let k = key(1, 5);
    let PullReply::Found {
        next_begin,
        max_offset,
        body,
        count,
    } = pull(&mut t, &k, 0, 2, &[40, 41, 42], 10_000)
    else {
        panic!("expected records");
    };
    assert_eq!((next_begin, max_offset, count), (3, 3, 3));
    let msgs = decode_records(&body.freeze()).unwrap();
    let stamped: Vec<(i32, i64)> = msgs.iter().map(|m| (m.queue_id, m.queue_offset)).collect();
    assert_eq!(stamped, vec![(5, 0), (5, 1), (5, 2)]);
    assert_eq!(msgs[1].body.as_ref(), b"m41", "bodies untouched");
    assert_eq!(
        msgs[0].store_host,
        "127.0.0.1:9876".parse().unwrap(),
        "send-backs come to the sidecar"
    );
    msgs[0].check_crc().unwrap();
    assert_eq!(t.held(), 3);
    // The next pull continues the space.
    let PullReply::Found { next_begin, .. } = pull(&mut t, &k, 3, 2, &[43], 10_300) else {
        panic!()
    };
    assert_eq!(next_begin, 4);
    // An empty pop: not found at the same offset.
    let (_, plan) = t.begin_pull(&k, 4, 32, None);
    assert_eq!(plan, PullPlan::Pop { max_msgs: 32 });
    match t
        .complete_pull(&k, 4, "broker-a", None, None, 3_000)
        .unwrap()
    {
        PullReply::NotFound {
            next_begin,
            max_offset,
        } => assert_eq!((next_begin, max_offset), (4, 4)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn commits_ack_exactly_the_handles_below() {
    let mut t = Translator::new(TranslatorConfig::default());
    let k = key(1, 0);
    pull(&mut t, &k, 0, 3, &[7, 8, 9, 10], 0);
    let acks = t.commit(&k, 2);
    assert_eq!(acks.len(), 2);
    assert_eq!(acks[0].queue_id, 3);
    assert_eq!(acks[0].queue_offset, 7);
    assert_eq!(acks[1].queue_offset, 8);
    assert_eq!(&*acks[0].broker, "broker-a");
    assert_eq!(acks[0].topic(), "T");
    let h = PopHandle::parse(&acks[1].extra_info()).unwrap();
    assert_eq!(
        (
            &*h.broker_name,
            h.queue_id,
            h.queue_offset,
            h.ck_queue_offset
        ),
        ("broker-a", 3, 8, 7)
    );
    // In flight acks are not repeated by the same commit.
    assert!(t.commit(&k, 2).is_empty());
    t.ack_done(&acks[0], Outcome::Done);
    t.ack_done(&acks[1], Outcome::Retry);
    assert_eq!(t.held(), 3);
    // The failed one is owed again.
    let again = t.pending_acks();
    assert_eq!(again.iter().map(|a| a.offset).collect::<Vec<_>>(), vec![1]);
    // A pull's commitOffset acks too.
    let (acks, _) = t.begin_pull(&k, 4, 32, Some(4));
    assert_eq!(
        acks.iter().map(|a| a.offset).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(t.committed(&k), 4);
    assert_eq!(t.max_offset(&k), 4);
}

#[test]
fn send_back_changes_invisible_time_and_is_skipped_by_commits() {
    let mut t = Translator::new(TranslatorConfig::default());
    let k = key(9, 0);
    let PullReply::Found { body, .. } = pull(&mut t, &k, 0, 0, &[1, 2], 5_000) else {
        panic!()
    };
    // The consumer names a message by the commit log offset it was given.
    let given = decode_records(&body.freeze()).unwrap()[1].commit_log_offset;
    // The second message is sent back with level 3 (10 s).
    let SendBackPlan::Retry(a) = t.send_back(9, "g", given, 3, 16) else {
        panic!()
    };
    assert_eq!(
        (a.offset, a.invisible_time_ms, a.queue_offset),
        (1, 10_000, 2)
    );
    // Level 0: the broker's choice, 3 + reconsumeTimes.
    assert_eq!(send_back_delay_ms(0, 0), 10_000);
    assert_eq!(send_back_delay_ms(99, 0), 7_200_000);
    // The commit past both acks only the first.
    let acks = t.commit(&k, 2);
    assert_eq!(acks.iter().map(|a| a.offset).collect::<Vec<_>>(), vec![0]);
    t.ack_done(&acks[0], Outcome::Done);
    assert_eq!(
        t.held(),
        0,
        "the sent-back handle is forgotten once committed past"
    );
    // Unknown messages (another connection, or gone) are not ours to send back.
    assert_eq!(t.send_back(10, "g", 5_000, 3, 16), SendBackPlan::Unknown);
}

#[test]
fn max_reconsume_times_goes_to_the_dead_letter_queue() {
    let mut t = Translator::new(TranslatorConfig::default());
    let k = key(1, 0);
    let (_, _) = t.begin_pull(&k, 0, 32, None);
    let mut body = BytesMut::new();
    let m = MessageExt {
        topic: "T".into(),
        queue_offset: 4,
        commit_log_offset: 77,
        reconsume_times: 16,
        ..MessageExt::default()
    };
    encode_record(&m, &mut body).unwrap();
    let (h, _) = pop_response(0, &[4], 77);
    let PullReply::Found { body, .. } = t
        .complete_pull(&k, 0, "broker-b", Some((&h, body)), None, 0)
        .unwrap()
    else {
        panic!()
    };
    let given = decode_records(&body.freeze()).unwrap()[0].commit_log_offset;
    match t.send_back(1, "g", given, 0, 16) {
        SendBackPlan::DeadLetter {
            broker,
            commit_log_offset,
            ack,
        } => {
            assert_eq!(broker, "broker-b");
            assert_eq!(
                commit_log_offset, 77,
                "the broker's own offset, for its DLQ"
            );
            assert_eq!(ack.offset, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn renewal_until_the_max_hold_time_then_let_go() {
    let cfg = TranslatorConfig {
        invisible_time_ms: 60_000,
        renew_before_ms: 15_000,
        max_hold_ms: 100_000,
        ..Default::default()
    };
    let mut t = Translator::new(cfg);
    let k = key(1, 0);
    pull(&mut t, &k, 0, 0, &[1], 0); // popped at 1_000 for 60 s: visible at 61_000; delivered at 2_000
    assert!(t.renewals_due(40_000).is_empty());
    let due = t.renewals_due(50_000);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].invisible_time_ms, 60_000);
    assert!(
        t.renewals_due(50_001).is_empty(),
        "one renewal in flight at a time"
    );
    let new = PopHandle {
        pop_time: 50_000,
        invisible_time: 60_000,
        ..due[0].handle.clone()
    };
    t.renewed(&due[0], Some((new.to_extra_info(), 50_000, 60_000)));
    // Visible at 110_000 now; the next renewal would come at 95_000, within the 100 s hold.
    let due = t.renewals_due(96_000);
    assert_eq!(due.len(), 1);
    t.renewed(&due[0], Some((new.to_extra_info(), 96_000, 60_000)));
    // Past the max hold (first delivered at 2_000): not renewed; dropped once visible again.
    assert!(t.renewals_due(145_000).is_empty());
    assert_eq!(t.held(), 1);
    assert!(t.renewals_due(156_000).is_empty());
    assert_eq!(t.held(), 0, "visible again: the broker redelivers it");
    // A failed renewal lets the handle go as well.
    pull(&mut t, &k, 1, 0, &[2], 0);
    let due = t.renewals_due(50_000);
    t.renewed(&due[0], None);
    assert_eq!(t.held(), 0);
}

#[test]
fn throttled_until_the_consumer_commits() {
    let cfg = TranslatorConfig {
        max_held_per_queue: 3,
        ..Default::default()
    };
    let mut t = Translator::new(cfg);
    let k = key(1, 0);
    let (_, plan) = t.begin_pull(&k, 0, 32, None);
    assert_eq!(
        plan,
        PullPlan::Pop { max_msgs: 3 },
        "asks only for the room left"
    );
    let (h, body) = pop_response(0, &[0, 1, 2], 0);
    t.complete_pull(&k, 0, "broker-a", Some((&h, body)), None, 0)
        .unwrap();
    assert_eq!(t.begin_pull(&k, 3, 32, None).1, PullPlan::Throttled);
    assert!(t.is_throttled(&k));
    let acks = t.commit(&k, 3);
    for a in &acks {
        t.ack_done(a, Outcome::Done);
    }
    assert!(!t.is_throttled(&k));
    assert_eq!(
        t.begin_pull(&k, 3, 32, None).1,
        PullPlan::Pop { max_msgs: 3 }
    );
}

#[test]
fn a_rewind_drops_what_the_consumer_no_longer_holds() {
    let mut t = Translator::new(TranslatorConfig::default());
    let k = key(1, 0);
    pull(&mut t, &k, 0, 0, &[10, 11, 12, 13], 0);
    let (_, plan) = t.begin_pull(&k, 2, 32, None);
    assert!(matches!(plan, PullPlan::Pop { .. }));
    assert_eq!(
        t.held(),
        2,
        "offsets 2 and 3 left the consumer; the broker redelivers them"
    );
    let PullReply::Found { body, .. } = ({
        let (h, body) = pop_response(0, &[20], 900);
        t.complete_pull(&k, 2, "broker-a", Some((&h, body)), None, 0)
            .unwrap()
    }) else {
        panic!()
    };
    assert_eq!(
        decode_records(&body.freeze()).unwrap()[0].queue_offset,
        2,
        "no collision: 2 is reused"
    );
}

#[test]
fn connection_close_forgets_without_acking_and_tables_are_bounded() {
    let cfg = TranslatorConfig {
        max_queues: 2,
        ..Default::default()
    };
    let mut t = Translator::new(cfg);
    pull(&mut t, &key(1, 0), 0, 0, &[1, 2], 0);
    pull(&mut t, &key(2, 0), 0, 0, &[3], 500);
    assert!(matches!(
        t.begin_pull(&key(3, 0), 0, 32, None).1,
        PullPlan::Refused(_)
    ));
    t.connection_closed(1);
    assert_eq!(t.counts(), (1, 1));
    assert_eq!(t.send_back(1, "g", 0, 1, 16), SendBackPlan::Unknown);
    assert!(matches!(
        t.begin_pull(&key(3, 0), 0, 32, None).1,
        PullPlan::Pop { .. }
    ));
}

#[test]
fn retry_messages_ack_on_their_retry_topic() {
    let mut t = Translator::new(TranslatorConfig::default());
    let k = key(1, 0);
    t.begin_pull(&k, 0, 32, None);
    let mut body = BytesMut::new();
    let m = MessageExt {
        topic: "%RETRY%g_T".into(),
        queue_id: 0,
        queue_offset: 6,
        commit_log_offset: 1,
        reconsume_times: 1,
        properties: Properties::parse("RETRY_TOPIC\u{1}T\u{2}"),
        ..MessageExt::default()
    };
    encode_record(&m, &mut body).unwrap();
    let h = PopMessageResponseHeader {
        pop_time: 1,
        invisible_time: 60_000,
        revive_qid: 0,
        rest_num: 0,
        start_offset_info: Some("1 0 6".into()),
        msg_offset_info: Some("1 0 6".into()),
        order_count_info: None,
    };
    t.complete_pull(&k, 0, "broker-a", Some((&h, body)), None, 0)
        .unwrap();
    let acks = t.commit(&k, 1);
    assert_eq!(acks[0].topic(), "%RETRY%g_T");
    assert_eq!(acks[0].queue_offset, 6);
}

#[test]
fn commits_batch_per_broker_and_checkpoint() {
    let mut t = Translator::new(TranslatorConfig::default());
    let (k0, k1) = (key(1, 0), key(1, 1));
    // Two pops of real queue 3 (checkpoints starting at 7 and at 20), one of real queue 5.
    pull(&mut t, &k0, 0, 3, &[7, 8, 10], 0);
    let (h, body) = pop_response(3, &[20, 21], 1_000);
    let h = PopMessageResponseHeader {
        pop_time: 2_000,
        ..h
    };
    t.begin_pull(&k0, 3, 32, None);
    t.complete_pull(&k0, 3, "broker-a", Some((&h, body)), None, 0)
        .unwrap();
    pull(&mut t, &k1, 0, 5, &[0, 1], 5_000);
    let mut acks = t.commit(&k0, 5);
    acks.extend(t.commit(&k1, 2));
    assert_eq!(acks.len(), 7);
    // A handle whose offset lies before its checkpoint's start cannot be a bit: single ack.
    let mut odd = acks[0].clone();
    odd.queue_offset = 1;
    acks.push(odd);
    let (batches, singles) = batch_acks(acks);
    assert_eq!(singles.len(), 1);
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(
        (b.broker.as_str(), b.body.broker_name.as_str()),
        ("broker-a", "broker-a")
    );
    assert_eq!(b.actions.len(), 7);
    let cks: Vec<(i32, i64, i64, Vec<i64>)> = b
        .body
        .acks
        .iter()
        .map(|a| {
            assert_eq!(
                (
                    a.consumer_group.as_str(),
                    a.topic.as_str(),
                    a.retry.as_str()
                ),
                ("g", "T", "0")
            );
            assert_eq!(a.invisible_time, 60_000);
            (
                a.queue_id,
                a.start_offset,
                a.pop_time,
                a.acked_offsets().collect(),
            )
        })
        .collect();
    assert_eq!(
        cks,
        vec![
            (3, 7, 1_000, vec![7, 8, 10]),
            (3, 20, 2_000, vec![20, 21]),
            (5, 0, 1_000, vec![0, 1]),
        ]
    );
    // The body parses back as the broker reads it.
    let parsed = BatchAckMessageRequestBody::parse(&b.body.to_json()).unwrap();
    assert_eq!(&parsed, &b.body);
}

#[test]
fn send_backs_find_their_message_when_brokers_commit_logs_overlap() {
    // Two brokers fed alike hold different messages at the same commit log offsets; one
    // consumer pulls a queue of each. A send-back must change the message it names, not the
    // other broker's.
    let mut t = Translator::new(TranslatorConfig::default());
    let (ka, kb) = (key(1, 0), key(1, 4));
    let mut given = Vec::new();
    for (k, broker) in [(&ka, "broker-a"), (&kb, "broker-b")] {
        let (_, plan) = t.begin_pull(k, 0, 32, None);
        assert!(matches!(plan, PullPlan::Pop { .. }));
        let (h, body) = pop_response(0, &[0, 1], 1_000);
        let PullReply::Found { body, .. } = t
            .complete_pull(k, 0, broker, Some((&h, body)), None, 0)
            .unwrap()
        else {
            panic!()
        };
        for m in decode_records(&body.freeze()).unwrap() {
            given.push((broker, m.queue_offset, m.commit_log_offset));
        }
    }
    let phys: std::collections::BTreeSet<i64> = given.iter().map(|g| g.2).collect();
    assert_eq!(
        phys.len(),
        4,
        "commit log offsets handed out are unique: {given:?}"
    );
    for (broker, offset, clo) in given {
        let SendBackPlan::Retry(a) = t.send_back(1, "g", clo, 3, 16) else {
            panic!("{broker}@{offset}")
        };
        assert_eq!((&*a.broker, a.offset), (broker, offset));
    }
}

/// Prefetches `offsets` of real queue 0 for `k` (after a pull answered with messages).
fn prefetch(t: &mut Translator, k: &VQueueKey, offsets: &[i64], phys: i64) -> PrefetchTicket {
    let ticket = t.begin_prefetch(k).expect("a prefetch starts");
    assert_eq!(
        t.begin_prefetch(k),
        None,
        "one pop in flight per queue at most"
    );
    let (h, body) = pop_response(0, offsets, phys);
    assert!(t
        .complete_prefetch(k, ticket, "broker-a", Some((&h, body)), None, 3_000)
        .unwrap());
    ticket
}

#[test]
fn a_prefetched_batch_answers_the_next_pull_at_once() {
    let mut t = Translator::new(TranslatorConfig::default());
    let k = key(1, 0);
    pull(&mut t, &k, 0, 0, &[10, 11], 0);
    let ticket = t.begin_prefetch(&k).unwrap();
    assert_eq!(ticket.max_msgs, 32);
    // The next pull arrives while the pop is in flight: it waits for it.
    let (acks, plan) = t.begin_pull(&k, 2, 32, Some(2));
    assert_eq!(acks.len(), 2, "the commit is taken at once");
    assert_eq!(plan, PullPlan::Wait);
    let (h, body) = pop_response(0, &[12, 13, 14], 0);
    assert!(t
        .complete_prefetch(&k, ticket, "broker-a", Some((&h, body)), None, 3_000)
        .unwrap());
    assert_eq!(t.held(), 5, "prefetched handles count against the bounds");
    assert_eq!(t.max_offset(&k), 2, "not delivered yet");
    // Prefetched handles are never acked, even by a commit past them.
    assert!(t.commit(&k, 5).is_empty());
    let (_, plan) = t.begin_pull(&k, 2, 32, None);
    let PullPlan::Ready(PullReply::Found {
        next_begin,
        body,
        count,
        ..
    }) = plan
    else {
        panic!("{plan:?}")
    };
    assert_eq!((next_begin, count), (5, 3));
    let msgs = decode_records(&body.freeze()).unwrap();
    assert_eq!(
        msgs.iter().map(|m| m.queue_offset).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(msgs[0].body.as_ref(), b"m12");
    // Delivered now: the next commit acks them.
    let acks = t.commit(&k, 5);
    assert_eq!(
        acks.iter().map(|a| a.queue_offset).collect::<Vec<_>>(),
        vec![12, 13, 14]
    );
    // An empty prefetch leaves the queue to ordinary pulls.
    let ticket = t.begin_prefetch(&k).unwrap();
    assert!(!t
        .complete_prefetch(&k, ticket, "broker-a", None, None, 4_000)
        .unwrap());
    assert!(matches!(
        t.begin_pull(&k, 5, 32, None).1,
        PullPlan::Pop { .. }
    ));
}

#[test]
fn a_prefetched_batch_is_dropped_unacked_on_rewind_and_disconnect() {
    let mut t = Translator::new(TranslatorConfig::default());
    let k = key(1, 0);
    pull(&mut t, &k, 0, 0, &[10, 11], 0);
    prefetch(&mut t, &k, &[12, 13], 0);
    assert_eq!(t.held(), 4);
    // A rewind to 1: the batch ahead (and offset 1) leave without an ack.
    let (acks, plan) = t.begin_pull(&k, 1, 32, None);
    assert!(acks.is_empty());
    assert!(matches!(plan, PullPlan::Pop { .. }), "{plan:?}");
    assert_eq!(t.held(), 1);
    let acks = t.commit(&k, 10);
    assert_eq!(
        acks.iter().map(|a| a.queue_offset).collect::<Vec<_>>(),
        vec![10],
        "only what was delivered"
    );
    // A prefetch whose result comes back after a rewind is not stamped.
    let k2 = key(1, 1);
    pull(&mut t, &k2, 0, 0, &[20], 0);
    let ticket = t.begin_prefetch(&k2).unwrap();
    t.begin_pull(&k2, 0, 32, None);
    let (h, body) = pop_response(0, &[21], 0);
    assert!(!t
        .complete_prefetch(&k2, ticket, "broker-a", Some((&h, body)), None, 0)
        .unwrap());
    assert_eq!(t.counts().1, 1, "the late batch is dropped, not held");
    // A disconnect drops a ready batch, and one in flight when it comes back.
    let k3 = key(2, 0);
    pull(&mut t, &k3, 0, 0, &[30], 0);
    prefetch(&mut t, &k3, &[31], 0);
    let k4 = key(2, 1);
    pull(&mut t, &k4, 0, 0, &[40], 0);
    let ticket = t.begin_prefetch(&k4).unwrap();
    t.connection_closed(2);
    let (h, body) = pop_response(0, &[41], 0);
    assert!(!t
        .complete_prefetch(&k4, ticket, "broker-a", Some((&h, body)), None, 0)
        .unwrap());
    assert_eq!(t.counts(), (2, 1));
}

#[test]
fn prefetches_are_bounded_and_renewed_like_held_handles() {
    let cfg = TranslatorConfig {
        max_held_per_queue: 3,
        ..Default::default()
    };
    let mut t = Translator::new(cfg);
    let k = key(1, 0);
    t.begin_pull(&k, 0, 32, None);
    let (h, body) = pop_response(0, &[0, 1], 0);
    t.complete_pull(&k, 0, "broker-a", Some((&h, body)), None, 2_000)
        .unwrap();
    let ticket = t.begin_prefetch(&k).unwrap();
    assert_eq!(ticket.max_msgs, 1, "only the room left");
    let (h, body) = pop_response(0, &[2], 0);
    t.complete_prefetch(&k, ticket, "broker-a", Some((&h, body)), None, 2_000)
        .unwrap();
    assert_eq!(t.begin_prefetch(&k), None, "no room, and a batch is ready");
    // Popped at 1_000 for 60 s: all three are renewed, the prefetched one included.
    let due = t.renewals_due(50_000);
    assert_eq!(
        due.iter().map(|a| a.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // A failed renewal of a prefetched handle drops its batch.
    t.renewed(&due[2], None);
    assert_eq!(t.held(), 2);
    assert!(matches!(
        t.begin_pull(&k, 2, 32, None).1,
        PullPlan::Pop { max_msgs: 1 }
    ));
    // Disabled: no prefetch.
    let mut t = Translator::new(TranslatorConfig {
        prefetch_max: 0,
        ..Default::default()
    });
    pull(&mut t, &k, 0, 0, &[0], 0);
    assert_eq!(t.begin_prefetch(&k), None);
}

#[test]
fn pops_ahead_back_to_back_up_to_the_buffer_bound() {
    let mut t = Translator::new(TranslatorConfig::default()); // prefetch_max 64
    let k = key(1, 0);
    pull(&mut t, &k, 0, 0, &[0], 0);
    let a: Vec<i64> = (1..33).collect();
    let b: Vec<i64> = (33..65).collect();
    prefetch(&mut t, &k, &a, 0);
    // 32 buffered: 32 more fit, the next pop may start at once.
    prefetch(&mut t, &k, &b, 0);
    assert_eq!(t.begin_prefetch(&k), None, "64 buffered: the bound");
    assert_eq!(t.held(), 65);
    // Each pull gets the front pop's records; the second chunk is stamped after the first.
    for (from, to) in [(1, 33), (33, 65)] {
        let (_, plan) = t.begin_pull(&k, from, 32, None);
        let PullPlan::Ready(PullReply::Found {
            next_begin, body, ..
        }) = plan
        else {
            panic!("{plan:?}")
        };
        assert_eq!(next_begin, to);
        let msgs = decode_records(&body.freeze()).unwrap();
        assert_eq!(
            msgs.iter().map(|m| m.queue_offset).collect::<Vec<_>>(),
            (from..to).collect::<Vec<_>>()
        );
        assert_eq!(msgs[0].body.as_ref(), format!("m{from}").as_bytes());
    }
    // A pull asking for fewer gets part of a chunk; the rest stays for the next pull.
    prefetch(&mut t, &k, &[65, 66, 67], 0);
    let (_, plan) = t.begin_pull(&k, 65, 2, None);
    assert!(matches!(
        plan,
        PullPlan::Ready(PullReply::Found {
            next_begin: 67,
            count: 2,
            ..
        })
    ));
    let (_, plan) = t.begin_pull(&k, 67, 2, None);
    assert!(matches!(
        plan,
        PullPlan::Ready(PullReply::Found {
            next_begin: 68,
            count: 1,
            ..
        })
    ));
    // Nothing buffered nor in flight: an ordinary pop.
    assert!(matches!(
        t.begin_pull(&k, 68, 32, None).1,
        PullPlan::Pop { .. }
    ));
}

#[test]
fn acks_finished_together_settle_each_queue_they_name() {
    let mut t = Translator::new(TranslatorConfig::default());
    let (k1, k2) = (key(1, 0), key(1, 1));
    pull(&mut t, &k1, 0, 0, &[10, 11, 12], 0);
    pull(&mut t, &k2, 0, 1, &[20, 21], 1_000);
    assert_eq!(t.held(), 5);
    // Runs of two queues, interleaved the way rounds of acks can mix them.
    let mut a1 = t.commit(&k1, 2);
    let a2 = t.commit(&k2, 2);
    let last = a1.split_off(1);
    let mixed: Vec<HandleAction> = a1.into_iter().chain(a2).chain(last).collect();
    assert_eq!(
        mixed
            .iter()
            .map(|a| (a.key.queue, a.offset))
            .collect::<Vec<_>>(),
        vec![(0, 0), (1, 0), (1, 1), (0, 1)]
    );
    // Not delivered: all owed again, for both queues.
    t.ack_done_all(&mixed, Outcome::Retry);
    assert_eq!(t.held(), 5);
    let mut owed: Vec<(i32, i64)> = t
        .pending_acks()
        .iter()
        .map(|a| (a.key.queue, a.offset))
        .collect();
    owed.sort();
    assert_eq!(owed, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
    // Delivered: forgotten, send-backs no longer find them, the rest is still held.
    t.ack_done_all(&mixed, Outcome::Done);
    assert_eq!(t.held(), 1);
    assert!(t.pending_acks().is_empty());
    assert_eq!(t.send_back(1, "g", 0, 0, 16), SendBackPlan::Unknown);
    let acks = t.commit(&k1, 3);
    assert_eq!(acks.iter().map(|a| a.offset).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn a_rewind_does_not_stamp_over_a_handle_whose_ack_is_in_flight() {
    let mut t = Translator::new(TranslatorConfig::default());
    let k = key(1, 0);
    pull(&mut t, &k, 0, 0, &[10], 0);
    let acks = t.commit(&k, 1);
    assert_eq!(acks.len(), 1);
    // The consumer goes back to 0 while the ack of offset 0 is still in flight.
    let (_, plan) = t.begin_pull(&k, 0, 32, None);
    assert!(matches!(plan, PullPlan::Pop { .. }), "{plan:?}");
    let (h, body) = pop_response(0, &[20], 900);
    let PullReply::Found { body, .. } = t
        .complete_pull(&k, 0, "broker-a", Some((&h, body)), None, 0)
        .unwrap()
    else {
        panic!()
    };
    let offset = decode_records(&body.freeze()).unwrap()[0].queue_offset;
    assert_ne!(offset, 0, "offset 0 still names the handle being acked");
    testing::check(&t).unwrap();
    // The ack fails: it is owed again, for the committed message (real offset 10) only.
    t.ack_done(&acks[0], Outcome::Retry);
    let owed = t.pending_acks();
    assert_eq!(
        owed.iter().map(|a| a.queue_offset).collect::<Vec<_>>(),
        vec![10]
    );
    assert_eq!(t.held(), 2);
    testing::check(&t).unwrap();
}

#[test]
fn owed_acks_never_cover_records_delivered_after_a_rewind() {
    let mut t = Translator::new(TranslatorConfig::default());
    let k = key(1, 0);
    pull(&mut t, &k, 0, 0, &[10, 11], 0);
    let acks = t.commit(&k, 2);
    t.ack_done_all(&acks, Outcome::Done);
    // The consumer rewinds to 0 and is delivered a new message there; it has not committed it.
    let (_, plan) = t.begin_pull(&k, 0, 32, None);
    assert!(matches!(plan, PullPlan::Pop { .. }), "{plan:?}");
    let (h, body) = pop_response(0, &[20], 900);
    t.complete_pull(&k, 0, "broker-a", Some((&h, body)), None, 0)
        .unwrap();
    assert_eq!(
        t.pending_acks(),
        Vec::new(),
        "offset 0 was not committed since"
    );
    // Nor do they cover what is delivered after a commit past the delivered offsets.
    let k2 = key(1, 1);
    t.commit(&k2, 0);
    t.begin_pull(&k2, 0, 32, Some(5));
    let (h, body) = pop_response(1, &[30], 900);
    t.complete_pull(&k2, 0, "broker-a", Some((&h, body)), None, 0)
        .unwrap();
    assert_eq!(t.pending_acks(), Vec::new());
    // What the consumer does commit is still owed after a failed ack.
    let acks = t.commit(&k, 1);
    assert_eq!(acks.len(), 1);
    t.ack_done_all(&acks, Outcome::Retry);
    let owed = t.pending_acks();
    assert_eq!(
        owed.iter().map(|a| a.queue_offset).collect::<Vec<_>>(),
        vec![20]
    );
    testing::check(&t).unwrap();
}

#[test]
fn pulls_in_flight_together_do_not_hold_past_the_queue_cap() {
    let cfg = TranslatorConfig {
        max_held_per_queue: 4,
        ..TranslatorConfig::default()
    };
    let mut t = Translator::new(cfg);
    let k = key(1, 0);
    // A client whose first pull timed out sends another: both are granted the free room.
    assert_eq!(
        t.begin_pull(&k, 0, 32, None).1,
        PullPlan::Pop { max_msgs: 4 }
    );
    assert_eq!(
        t.begin_pull(&k, 0, 32, None).1,
        PullPlan::Pop { max_msgs: 4 }
    );
    let (h, body) = pop_response(0, &[10, 11, 12], 0);
    let PullReply::Found { count, .. } = t
        .complete_pull(&k, 0, "broker-a", Some((&h, body)), None, 0)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(count, 3);
    let (h, body) = pop_response(0, &[20, 21, 22], 1_000);
    let PullReply::Found {
        next_begin,
        body,
        count,
        ..
    } = t
        .complete_pull(&k, 0, "broker-a", Some((&h, body)), None, 0)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (count, next_begin),
        (1, 4),
        "only the room left is delivered"
    );
    let msgs = decode_records(&body.freeze()).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].queue_offset, 3);
    assert_eq!(t.held(), 4);
    testing::check(&t).unwrap();
}

/// Found by the property test: a renewal of a prefetched handle was in flight when the pull in
/// flight on the same queue completed, dropped the prefetch and stamped its own record at the
/// freed offset. The renewal's late outcome must not replace that record's handle with the
/// dropped one's: the next commit would ack a message the consumer never received.
#[test]
fn a_late_outcome_leaves_a_handle_stamped_at_a_freed_offset_alone() {
    let mut t = Translator::new(TranslatorConfig::default());
    let k = key(1, 0);
    let (_, plan) = t.begin_pull(&k, 0, 32, None);
    assert!(matches!(plan, PullPlan::Pop { .. }), "{plan:?}");
    let ticket = t.begin_prefetch(&k).expect("a prefetch beside the pull");
    let (h, body) = pop_response(0, &[5], 500);
    assert!(t
        .complete_prefetch(&k, ticket, "broker-a", Some((&h, body)), None, 1_000)
        .unwrap());
    // Popped at 1_000 for 60 s: the prefetched handle (offset 0) falls due for renewal.
    let due = t.renewals_due(50_000);
    assert_eq!(due.iter().map(|a| a.queue_offset).collect::<Vec<_>>(), [5]);
    // The pull's own pop returns: offset 0 now holds real offset 6.
    let (h, body) = pop_response(0, &[6], 600);
    let PullReply::Found { count: 1, .. } = t
        .complete_pull(&k, 0, "broker-a", Some((&h, body)), None, 1_000)
        .unwrap()
    else {
        panic!()
    };
    // Late outcomes for the dropped handle: a renewal (success or failure), an ack, a failed
    // send-back. None of them touches the handle at offset 0.
    let renewed = PopHandle {
        pop_time: 50_000,
        ..due[0].handle.clone()
    };
    t.renewed(&due[0], Some((renewed.to_extra_info(), 50_000, 60_000)));
    t.renewed(&due[0], None);
    t.ack_done(&due[0], Outcome::Done);
    t.ack_done_all(&due, Outcome::Done);
    t.send_back_failed(&due[0]);
    testing::check(&t).unwrap();
    assert_eq!(t.held(), 1);
    let acks = t.commit(&k, 1);
    assert_eq!(
        acks.iter().map(|a| a.queue_offset).collect::<Vec<_>>(),
        [6],
        "the commit acks what the consumer received"
    );
}
