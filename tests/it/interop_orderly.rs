//! Ordered messages end to end with the real C++ SDK (PyPI `rocketmq==0.4.4`): `send_orderly`
//! over 10 keys, consumed by orderly push consumers (they lock their queues with
//! LOCK_BATCH_MQ), first directly against a broker node, then behind sidecars: three consumers
//! behind three sidecars, the first killed mid-run. Every message is delivered, per key in
//! order; duplicates are allowed only after the kill (redelivery from the last committed offset)
//! and are counted.

use crate::support::interop::*;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

const N: usize = 300;
const KEYS: usize = 10;

fn orderly_consumer(
    dir: &std::path::Path,
    namesrv: &str,
    topic: &str,
    group: &str,
    stop: &std::path::Path,
) -> Py {
    py_start(
        dir,
        "consume",
        &[
            ("namesrv", namesrv.to_owned()),
            ("topic", topic.into()),
            ("group", group.into()),
            ("orderly", "true".into()),
            ("expect", "1000000".into()),
            ("max_seconds", "150".into()),
            ("settle", "0".into()),
            ("stop_file", stop.display().to_string()),
        ],
    )
}

fn orderly_producer(dir: &std::path::Path, namesrv: &str, topic: &str, interval: f64) -> Py {
    py_start(
        dir,
        "produce",
        &[
            ("namesrv", namesrv.to_owned()),
            ("topic", topic.into()),
            ("group", "PG_Orderly".into()),
            ("prefix", "ord".into()),
            ("count", "0".into()),
            ("orderly", N.to_string()),
            ("keys", KEYS.to_string()),
            ("interval", interval.to_string()),
        ],
    )
}

/// `ord-orderly-00042` -> 42.
fn index(body: &str) -> usize {
    body.rsplit('-')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Per key, the message indices in the order one consumer got them (duplicates kept).
fn per_key(bodies: &[String]) -> BTreeMap<usize, Vec<usize>> {
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for b in bodies {
        let i = index(b);
        out.entry(i % KEYS).or_default().push(i);
    }
    out
}

/// (out of order, duplicates) of one key's deliveries, in delivery order: a duplicate is an index
/// seen before; out of order is a first delivery below the highest first delivery so far.
fn check_key(seq: &[usize]) -> (usize, usize) {
    let (mut seen, mut max, mut ooo, mut dups) = (BTreeSet::new(), None, 0, 0);
    for &i in seq {
        if !seen.insert(i) {
            dups += 1;
            continue;
        }
        if max.is_some_and(|m| i < m) {
            ooo += 1;
        }
        max = max.max(Some(i));
    }
    (ooo, dups)
}

fn received(v: &Value) -> Vec<(f64, String)> {
    v["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["ts"].as_f64().unwrap_or(0.0), s(m, "body")))
        .collect()
}

#[test]
fn orderly_consumer_directly_against_a_broker_gets_every_key_in_order() {
    const TOPIC: &str = "InteropOrderlyDirect";
    python();
    let dir = work_dir("orderly-direct");
    let b = BrokerProc::start(&dir, "data", "127.0.0.1:0", &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(create_topic(b.addr, TOPIC, 4));
    let stop = dir.join("stop");
    let mut c = orderly_consumer(&dir, &b.namesrv(), TOPIC, "CG_OrderlyDirect", &stop);
    let p = orderly_producer(&dir, &b.namesrv(), TOPIC, 0.0).result(Duration::from_secs(90));
    check_produced(&p, plan(0, 0, N, 0.0));
    let t0 = Instant::now();
    let mut got = 0;
    while got < N && t0.elapsed() < Duration::from_secs(90) {
        if c.next_line(Duration::from_secs(1))
            .is_some_and(|l| l.starts_with("GOT "))
        {
            got += 1;
        }
    }
    std::fs::write(&stop, b"stop").unwrap();
    let r = c.result(Duration::from_secs(60));
    let bodies: Vec<String> = received(&r).into_iter().map(|(_, b)| b).collect();
    let distinct: BTreeSet<&String> = bodies.iter().collect();
    assert_eq!(distinct.len(), N, "delivered {} of {N}", distinct.len());
    for (key, seq) in per_key(&bodies) {
        assert_eq!(check_key(&seq), (0, 0), "key {key}: {seq:?}");
    }
}

#[test]
fn orderly_consumers_behind_sidecars_keep_per_key_order_across_a_kill() {
    const TOPIC: &str = "InteropOrderly";
    const GROUP: &str = "CG_Orderly";
    let m = TwoBrokerMesh::start("orderly-sidecars", TOPIC, 4, 3);
    let (dir, sidecars) = (m.dir.as_path(), &m.sidecars);
    let stop = dir.join("orderly.stop");
    let consumer =
        |i: usize| orderly_consumer(dir, &sidecars[i].addr.to_string(), TOPIC, GROUP, &stop);

    // One consumer, then a second and a third join while messages flow; the first is killed.
    let mut c1 = consumer(0);
    let producer = orderly_producer(dir, &sidecars[0].addr.to_string(), TOPIC, 0.1);
    let mut c1_bodies = Vec::new();
    let mut others = Vec::new();
    let t0 = Instant::now();
    while c1_bodies.len() < N / 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the first consumer got {} messages",
            c1_bodies.len()
        );
        if let Some(l) = c1.next_line(Duration::from_millis(200)) {
            if let Some(b) = l.strip_prefix("GOT ") {
                c1_bodies.push(b.to_owned());
            }
        }
        if others.is_empty() && c1_bodies.len() >= N / 6 {
            others.push(consumer(1));
        }
        if others.len() == 1 && c1_bodies.len() >= N / 4 {
            others.push(consumer(2));
        }
    }
    // Past the consumer's offset persistence (every 5 s), so what it consumed is committed at
    // the brokers (through its sidecar) before it dies.
    std::thread::sleep(Duration::from_secs(7));
    c1_bodies.extend(
        c1.ready_lines()
            .iter()
            .filter_map(|l| l.strip_prefix("GOT ").map(str::to_owned)),
    );
    c1.kill();
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    c1_bodies.extend(
        c1.ready_lines()
            .iter()
            .filter_map(|l| l.strip_prefix("GOT ").map(str::to_owned)),
    );
    let produced = producer.result(Duration::from_secs(120));
    check_produced(&produced, plan(0, 0, N, 0.0));
    // The others take the first one's queues (released by its sidecar when its connection
    // closed) at their next re-lock (every 20 s) and go on from its last committed offsets.
    let c1_set: BTreeSet<String> = c1_bodies.iter().cloned().collect();
    let mut seen = c1_set.clone();
    let until = Instant::now() + Duration::from_secs(100);
    while seen.len() < N && Instant::now() < until {
        for c in &mut others {
            if let Some(l) = c.next_line(Duration::from_millis(100)) {
                if let Some(b) = l.strip_prefix("GOT ") {
                    seen.insert(b.to_owned());
                }
            }
        }
    }
    std::fs::write(&stop, b"stop").unwrap();
    let results: Vec<Vec<(f64, String)>> = others
        .into_iter()
        .map(|c| received(&c.result(Duration::from_secs(60))))
        .collect();

    let all: BTreeSet<String> = c1_set
        .iter()
        .cloned()
        .chain(results.iter().flatten().map(|(_, b)| b.clone()))
        .collect();
    assert_eq!(all.len(), N, "delivered {} of {N}", all.len());
    // Per key: the first consumer's deliveries, then the others' in time order.
    let mut later: Vec<(f64, String)> = results.iter().flatten().cloned().collect();
    later.sort_by(|a, b| a.0.total_cmp(&b.0));
    let before_kill = later.iter().filter(|(ts, _)| *ts < killed_at).count();
    let sequence: Vec<String> = c1_bodies
        .iter()
        .cloned()
        .chain(later.iter().map(|(_, b)| b.clone()))
        .collect();
    let (mut ooo, mut dups) = (0, 0);
    for (key, seq) in per_key(&sequence) {
        let (o, d) = check_key(&seq);
        if o > 0 {
            eprintln!("key {key} out of order: {seq:?}");
        }
        ooo += o;
        dups += d;
    }
    // After the kill a key's queue is held by one consumer at a time: its deliveries by one
    // consumer do not interleave in time with another's.
    let mut interleaved = 0;
    for key in 0..KEYS {
        let mut spans: Vec<(f64, f64)> = results
            .iter()
            .filter_map(|r| {
                let ts: Vec<f64> = r
                    .iter()
                    .filter(|(_, b)| index(b) % KEYS == key)
                    .map(|(t, _)| *t)
                    .collect();
                Some((
                    ts.iter().copied().reduce(f64::min)?,
                    ts.iter().copied().reduce(f64::max)?,
                ))
            })
            .collect();
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        if spans.windows(2).any(|w| w[1].0 < w[0].1) {
            eprintln!("key {key}: deliveries of two consumers interleave: {spans:?}");
            interleaved += 1;
        }
    }
    println!(
        "orderly: {N} messages over {KEYS} keys; first consumer got {} before the kill; the \
         others {} ({} of them before the kill); out of order {ooo}, duplicates {dups}",
        c1_bodies.len(),
        later.len(),
        before_kill
    );
    assert_eq!(ooo, 0, "messages out of order");
    // Redelivered: at most what the first consumer got since its last offset persistence (5 s,
    // 50 messages at this rate) plus what was in flight; everything would come back if commits
    // did not reach the brokers.
    assert!(
        dups < 80,
        "{dups} duplicates: the first consumer's offsets were not committed"
    );
    assert_eq!(interleaved, 0, "keys consumed by two consumers at once");
    assert_eq!(
        before_kill, 0,
        "a second consumer got messages while the first held the queues"
    );
    for sc in &sidecars[..1] {
        assert_eq!(sc.stat("rocketmq_rocketmesh_pull_converted"), Some(0.0));
    }
}
