//! Legacy consumer semantics beyond clustered push consumers, with the real C++ SDK (PyPI
//! `rocketmq==0.4.4`) through the sidecar: broadcasting consumers each get every message, and a
//! pull consumer's own loop reads real queues with its own offsets (again from offset 0 when it
//! asks, and an empty queue answers at once). Their pulls are relayed to the real queues, not
//! translated to pops; `/config_dump` and the stats say so.

use crate::support::interop::*;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

const QUEUES: i32 = 4;

fn bodies(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(b) => b.clone(),
            other => s(other, "body"),
        })
        .collect()
}

fn group_mode(sc: &SidecarProc, group: &str) -> Option<(String, String)> {
    let dump: Value = serde_json::from_str(&sc.admin_get("/config_dump")).unwrap();
    dump["sidecar"]["consumer_groups"]
        .as_array()?
        .iter()
        .find(|g| g["group"] == group)
        .map(|g| (s(g, "pulls"), s(g, "reason")))
}

#[test]
fn broadcasting_consumers_each_get_every_message_behind_one_and_two_sidecars() {
    const TOPIC: &str = "InteropBroadcast";
    const GROUP: &str = "CG_Broadcast";
    const N: usize = 100;
    let m = TwoBrokerMesh::start("broadcast", TOPIC, QUEUES, 2);
    let (s1, s2) = (&m.sidecars[0], &m.sidecars[1]);
    let stop = m.dir.join("broadcast.stop");
    let consumer = |sc: &SidecarProc| {
        py_start(
            &m.dir,
            "consume",
            &[
                ("namesrv", sc.addr.to_string()),
                ("topic", TOPIC.into()),
                ("group", GROUP.into()),
                ("model", "broadcasting".into()),
                ("expect", N.to_string()),
                ("max_seconds", "90".into()),
                ("settle", "1".into()),
                ("stop_file", stop.display().to_string()),
            ],
        )
    };
    // Two behind the first sidecar, one behind the second; started one at a time (consumers of
    // one group in one HOME create the same local offset store directory at start).
    let mut consumers = Vec::new();
    for sc in [s1, s1, s2] {
        let mut c = consumer(sc);
        let started = (0..60).any(|_| {
            c.next_line(Duration::from_secs(1))
                .is_some_and(|l| l.contains("consumer started"))
        });
        assert!(started, "a broadcasting consumer did not start");
        consumers.push(c);
    }
    // A broadcasting consumer starts at the queues' max offsets, asked when it rebalances:
    // wait until every consumer has pulled once (the sidecars relay those pulls).
    let t0 = Instant::now();
    while s1.stat("rocketmq_rocketmesh_pull_direct").unwrap_or(0.0) < 2.0
        || s2.stat("rocketmq_rocketmesh_pull_direct").unwrap_or(0.0) < 1.0
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "no relayed pulls");
        std::thread::sleep(Duration::from_millis(100));
    }
    // While they run, both sidecars say how they serve the group.
    for sc in [s1, s2] {
        assert_eq!(
            group_mode(sc, GROUP),
            Some(("direct".into(), "broadcasting".into()))
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let produced = produce_with(
        &m.dir,
        &s1.addr.to_string(),
        TOPIC,
        "bc",
        plan(N, 0, 0, 0.0),
    );
    let sent: BTreeSet<String> = bodies(&produced, "sent").into_iter().collect();
    let mut got = Vec::new();
    for c in consumers {
        let r = c.result(Duration::from_secs(120));
        got.push(bodies(&r, "received"));
    }
    std::fs::write(&stop, b"stop").unwrap();
    for (i, b) in got.iter().enumerate() {
        let set: BTreeSet<String> = b.iter().cloned().collect();
        assert_eq!(
            set,
            sent,
            "broadcasting consumer {i} got {} of {N}",
            set.len()
        );
    }
    for sc in [s1, s2] {
        assert_eq!(sc.stat("rocketmq_rocketmesh_pull_converted"), Some(0.0));
    }
    println!(
        "broadcasting: {} consumers, each got {:?} of {N}",
        got.len(),
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[test]
fn a_pull_consumer_reads_real_queues_rereads_from_zero_and_empty_queues_answer_at_once() {
    const TOPIC: &str = "InteropPullConsumer";
    const GROUP: &str = "CG_PullConsumer";
    const N: usize = 100;
    let m = TwoBrokerMesh::start("pull-consumer", TOPIC, QUEUES, 1);
    let sc = &m.sidecars[0];
    let namesrv = sc.addr.to_string();
    let pull_all = || {
        let t = Instant::now();
        let r = py_run(
            &m.dir,
            "pull_all",
            &[
                ("namesrv", namesrv.clone()),
                ("topic", TOPIC.into()),
                ("group", GROUP.into()),
                ("max_seconds", "60".into()),
            ],
            Duration::from_secs(90),
        );
        assert!(!r["timed_out"].as_bool().unwrap(), "pull_all timed out");
        (bodies(&r, "bodies"), t.elapsed())
    };
    // Every (virtual) queue empty: each pull answers NO_NEW_MSG at once.
    let (empty, took) = pull_all();
    assert!(empty.is_empty(), "{empty:?}");
    assert!(
        took < Duration::from_secs(8),
        "pulling {} empty queues took {took:?}",
        2 * QUEUES
    );
    let produced = produce_with(&m.dir, &namesrv, TOPIC, "pc", plan(N, 0, 0, 0.0));
    let sent: BTreeSet<String> = bodies(&produced, "sent").into_iter().collect();
    let (first, _) = pull_all();
    let (again, _) = pull_all();
    for (what, got) in [("first read", &first), ("second read from 0", &again)] {
        let set: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(got.len(), set.len(), "{what}: duplicates");
        assert_eq!(set, sent, "{what}: {} of {N}", set.len());
    }
    assert!(sc.stat("rocketmq_rocketmesh_pull_direct").unwrap_or(0.0) >= f64::from(2 * QUEUES));
    assert_eq!(sc.stat("rocketmq_rocketmesh_pull_converted"), Some(0.0));
    println!(
        "pull consumer: empty topic read in {took:?}; {} then {} of {N} messages",
        first.len(),
        again.len()
    );
}

/// The same semantics directly against one broker node (no sidecar): what the sidecar cases
/// above are measured against.
#[test]
fn broadcasting_and_pull_consumers_directly_against_a_broker() {
    const TOPIC: &str = "InteropSemanticsDirect";
    const N: usize = 100;
    python();
    let dir = work_dir("semantics-direct");
    let b = BrokerProc::start(&dir, "data", "127.0.0.1:0", &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(create_topic(b.addr, TOPIC, QUEUES));
    let pull_all = || {
        let t = Instant::now();
        let r = py_run(
            &dir,
            "pull_all",
            &[
                ("namesrv", b.namesrv()),
                ("topic", TOPIC.into()),
                ("group", "CG_PullDirect".into()),
                ("max_seconds", "60".into()),
            ],
            Duration::from_secs(90),
        );
        assert!(!r["timed_out"].as_bool().unwrap(), "pull_all timed out");
        (bodies(&r, "bodies"), t.elapsed())
    };
    let (empty, took) = pull_all();
    assert!(empty.is_empty(), "{empty:?}");
    assert!(took < Duration::from_secs(8), "empty queues took {took:?}");

    let stop = dir.join("broadcast.stop");
    // One at a time: broadcasting C++ consumers of one group in one HOME create the same local
    // offset store directory at start, and two at once can race on it.
    let mut consumers: Vec<Py> = Vec::new();
    for _ in 0..2 {
        let mut c = py_start(
            &dir,
            "consume",
            &[
                ("namesrv", b.namesrv()),
                ("topic", TOPIC.into()),
                ("group", "CG_BroadcastDirect".into()),
                ("model", "broadcasting".into()),
                ("expect", N.to_string()),
                ("max_seconds", "90".into()),
                ("settle", "1".into()),
                ("stop_file", stop.display().to_string()),
            ],
        );
        let started = (0..60).any(|_| {
            c.next_line(Duration::from_secs(1))
                .is_some_and(|l| l.contains("consumer started"))
        });
        assert!(started, "a broadcasting consumer did not start");
        consumers.push(c);
    }
    // Broadcasting consumers start at the queues' max offsets, read when they rebalance.
    std::thread::sleep(Duration::from_secs(4));
    let produced = produce_with(&dir, &b.namesrv(), TOPIC, "bd", plan(N, 0, 0, 0.0));
    let sent: BTreeSet<String> = bodies(&produced, "sent").into_iter().collect();
    for (i, c) in consumers.into_iter().enumerate() {
        let got: BTreeSet<String> = bodies(&c.result(Duration::from_secs(120)), "received")
            .into_iter()
            .collect();
        assert_eq!(
            got,
            sent,
            "broadcasting consumer {i} got {} of {N}",
            got.len()
        );
    }
    std::fs::write(&stop, b"stop").unwrap();
    let (first, _) = pull_all();
    let (again, _) = pull_all();
    for (what, got) in [("first read", &first), ("second read from 0", &again)] {
        let set: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(got.len(), set.len(), "{what}: duplicates");
        assert_eq!(set, sent, "{what}: {} of {N}", set.len());
    }
}
