//! Interop with the real Apache RocketMQ C++ client (PyPI `rocketmq==0.4.4`: `librocketmq.so`
//! driven through its Python ctypes API) against the bundled broker, started as the real
//! `rocketmesh broker` binary on loopback. The broker is standalone, so it is the client's name
//! server too. The venv, child processes and driver runs are in `tests/interop/mod.rs`; the driver
//! script is `tests/interop/sdk.py`.

use crate::support::interop::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Returns the number of duplicate deliveries.
fn check_received(sent: &[Value], received: &[Value], what: &str) -> usize {
    let by_body: HashMap<String, &Value> = sent.iter().map(|m| (s(m, "body"), m)).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in received {
        let body = s(r, "body");
        let Some(m) = by_body.get(&body) else {
            panic!("{what}: received a message that was not sent (in this batch): {r}");
        };
        assert_eq!(s(r, "tags"), s(m, "tags"), "{what}: tags of {body}");
        assert_eq!(s(r, "keys"), s(m, "keys"), "{what}: keys of {body}");
        assert_eq!(props(r), props(m), "{what}: user properties of {body}");
        *counts.entry(body).or_default() += 1;
    }
    let missing: Vec<_> = by_body
        .keys()
        .filter(|b| !counts.contains_key(*b))
        .collect();
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let dup_count: usize = dups.iter().map(|(_, n)| **n - 1).sum();
    println!(
        "{what}: sent {}, received {} deliveries of {} distinct bodies, {} missing, {} duplicate deliveries {:?}",
        sent.len(),
        received.len(),
        counts.len(),
        missing.len(),
        dup_count,
        dups.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        missing.is_empty(),
        "{what}: {} sent messages never received, e.g. {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>()
    );
    dup_count
}

fn consume(
    dir: &Path,
    b: &BrokerProc,
    topic: &str,
    group: &str,
    expect: usize,
    extra: &[(&str, String)],
    t: Duration,
) -> Value {
    let mut args = vec![
        ("namesrv", b.namesrv()),
        ("topic", topic.to_owned()),
        ("group", group.to_owned()),
        ("expect", expect.to_string()),
    ];
    args.extend(extra.iter().cloned());
    py_run(dir, "consume", &args, t)
}

// ----- scenarios -----

#[test]
fn produce_and_consume_exactly() {
    let started = Instant::now();
    python(); // build the venv (or fail) before starting anything
    let dir = work_dir("exact");
    let b = BrokerProc::start(&dir, "data", "127.0.0.1:0", &[]);
    let topic = "InteropExact";
    let group = "CG_InteropExact";

    let sent = produce(&dir, &b, topic, "first", plan(1000, 20, 20, 0.0));
    println!("produced {} in {:?}", sent.len(), started.elapsed());

    // First consumer: everything, then stay up past the client's 5 s offset persist timer.
    let r = consume(
        &dir,
        &b,
        topic,
        group,
        sent.len(),
        &[
            ("max_seconds", "60".into()),
            ("settle", "2".into()),
            ("persist_wait", "6".into()),
        ],
        Duration::from_secs(100),
    );
    assert!(
        r["completed"].as_bool().unwrap(),
        "first consumer did not get everything"
    );
    let received = r["received"].as_array().unwrap();
    for m in received {
        assert_eq!(s(m, "topic"), topic);
        assert_eq!(m["reconsume_times"], 0, "{m}");
    }
    let dups = check_received(&sent, received, "first consumer");
    assert_eq!(
        dups, 0,
        "duplicate deliveries with one consumer and no failures"
    );

    // Orderly sends: the sharding key (i % 7) picks the queue, so every message of one key is in
    // one queue, stored in send order.
    let mut by_key: BTreeMap<u64, Vec<(u64, i64, i64)>> = BTreeMap::new();
    for m in received
        .iter()
        .filter(|m| s(m, "body").starts_with("first-orderly-"))
    {
        let i: u64 = props(m)["idx"].parse().unwrap();
        let (q, off) = (
            m["queue_id"].as_i64().unwrap(),
            m["queue_offset"].as_i64().unwrap(),
        );
        by_key.entry(i % 7).or_default().push((i, q, off));
    }
    for (key, mut v) in by_key {
        v.sort();
        let queues: BTreeSet<i64> = v.iter().map(|x| x.1).collect();
        assert_eq!(
            queues.len(),
            1,
            "orderly key {key} spread over queues: {v:?}"
        );
        assert!(
            v.windows(2).all(|w| w[0].2 < w[1].2),
            "orderly key {key} not stored in send order: {v:?}"
        );
    }

    // 50 more while nobody consumes; a new consumer of the same group gets only those.
    let more = produce(&dir, &b, topic, "second", plan(50, 0, 0, 0.0));
    let r2 = consume(
        &dir,
        &b,
        topic,
        group,
        more.len(),
        &[("max_seconds", "30".into()), ("settle", "3".into())],
        Duration::from_secs(60),
    );
    assert!(
        r2["completed"].as_bool().unwrap(),
        "second consumer did not get the 50 new ones"
    );
    let received2 = r2["received"].as_array().unwrap();
    let first_bodies: BTreeSet<String> = sent.iter().map(|m| s(m, "body")).collect();
    // Where they sat (queue, offset), so a failure says which queue's committed offset was off.
    let redelivered: Vec<_> = received2
        .iter()
        .filter(|m| first_bodies.contains(&s(m, "body")))
        .map(|m| format!("{}@q{}:{}", s(m, "body"), m["queue_id"], m["queue_offset"]))
        .collect();
    assert!(
        redelivered.is_empty(),
        "second consumer got {} messages of the first batch again (committed offsets lost?), e.g. {:?}",
        redelivered.len(),
        redelivered.iter().take(10).collect::<Vec<_>>()
    );
    let dups2 = check_received(&more, received2, "second consumer");
    assert_eq!(dups2, 0);
    b.stop();
    println!("produce_and_consume_exactly: {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reconsume_later_redelivers_through_retry_topic() {
    let started = Instant::now();
    python(); // build the venv (or fail) before starting anything
    let dir = work_dir("retry");
    let b = BrokerProc::start(&dir, "data", "127.0.0.1:0", &[]);
    let topic = "InteropRetry";
    let group = "CG_InteropRetry";
    // 20 plain messages first (this also creates the topic, so the consumer finds a route).
    let sent = produce(&dir, &b, topic, "retry", plan(20, 0, 0, 0.0));
    let mut c = py_start(
        &dir,
        "consume",
        &[
            ("namesrv", b.namesrv()),
            ("topic", topic.into()),
            ("group", group.into()),
            ("expect", "25".into()),
            ("max_seconds", "45".into()),
            ("settle", "2".into()),
            ("fail_marker", "FAILME".into()),
        ],
    );
    // The C++ client hands a whole pulled batch to the callback wrapper, which stops at the first
    // RECONSUME_LATER and sends the *entire* batch back (messages after the failing one were never
    // shown to the callback). So the 5 marked messages are sent only once the consumer has
    // drained the plain ones, 0.5 s apart: each arrives alone on a held (long-polling) pull.
    let end = Instant::now() + Duration::from_secs(30);
    let mut got = 0;
    while got < sent.len() {
        let left = end.saturating_duration_since(Instant::now());
        match c.next_line(left) {
            Some(l) => got += l.matches("GOT ").count(),
            None => panic!(
                "consumer got only {got} of the first {} messages",
                sent.len()
            ),
        }
    }
    let failing = produce(&dir, &b, topic, "FAILME", plan(5, 0, 0, 0.5));
    let r = c.result(Duration::from_secs(80));
    if !r["completed"].as_bool().unwrap() {
        println!("the consumer stopped at its 45 s limit before every marked message came back");
    }
    let received = r["received"].as_array().unwrap();
    let mut deliveries: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for m in received {
        deliveries.entry(s(m, "body")).or_default().push(m);
    }
    for m in &sent {
        let d = deliveries.get(&s(m, "body")).map(Vec::len).unwrap_or(0);
        assert_eq!(d, 1, "unmarked {} delivered {d} times", s(m, "body"));
    }
    for m in &failing {
        let body = s(m, "body");
        let d = deliveries.get(&body).cloned().unwrap_or_default();
        println!(
            "{body}: {:?}",
            d.iter()
                .map(|x| format!(
                    "t={} topic={} retry_topic={} reconsume_times={} {}",
                    x["t"],
                    s(x, "topic"),
                    x["retry_topic"],
                    x["reconsume_times"],
                    s(x, "status")
                ))
                .collect::<Vec<_>>()
        );
        assert!(
            d.len() >= 2,
            "{body} was not redelivered within 40 s: {d:?}"
        );
        assert_eq!(d.len(), 2, "{body} delivered more than twice: {d:?}");
        let (first, second) = (d[0], d[1]);
        assert_eq!(s(first, "status"), "RECONSUME_LATER");
        assert_eq!(first["reconsume_times"], 0);
        assert_eq!(s(second, "status"), "CONSUME_SUCCESS");
        assert_eq!(
            second["reconsume_times"], 1,
            "reconsume times of the redelivery"
        );
        // Through %RETRY%<group>: the client either shows the retry topic or restores the
        // original one from the RETRY_TOPIC property.
        let via_retry = s(second, "topic") == format!("%RETRY%{group}")
            || (s(second, "topic") == topic && s(second, "retry_topic") == topic);
        assert!(
            via_retry,
            "redelivery not through the retry topic: {second}"
        );
        // Same content as sent.
        assert_eq!(s(second, "tags"), s(m, "tags"));
        assert_eq!(s(second, "keys"), s(m, "keys"));
        assert_eq!(props(second), props(m));
        // Level 3 is 10 s.
        let gap = second["t"].as_f64().unwrap() - first["t"].as_f64().unwrap();
        assert!(
            (9.0..35.0).contains(&gap),
            "{body} redelivered after {gap:.1} s, expected about 10 s (delay level 3)"
        );
    }
    b.stop();
    println!(
        "reconsume_later_redelivers_through_retry_topic: {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sync_flush_survives_sigkill() {
    let started = Instant::now();
    python(); // build the venv (or fail) before starting anything
    let dir = work_dir("crash");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let topic = "InteropCrash";
    let mut b = BrokerProc::start(&dir, "data", &listen, &["--flush", "sync"]);
    let mut p = py_start(
        &dir,
        "produce_until_failure",
        &[
            ("namesrv", b.namesrv()),
            ("topic", topic.into()),
            ("group", "PG_InteropCrash".into()),
        ],
    );
    // Kill the broker mid-stream, 1.5 s after the first ack (or at 5,000 acks), whatever the
    // producer is doing at that moment.
    let mut acks_seen = 0usize;
    let mut first_ack: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(line) = p.next_line(Duration::from_millis(100)) else {
            if first_ack.is_some_and(|t| t.elapsed() > Duration::from_millis(1500)) {
                break;
            }
            continue;
        };
        if line.starts_with("ACK ") {
            acks_seen += 1;
            first_ack.get_or_insert_with(Instant::now);
        }
        if acks_seen >= 5000 || first_ack.is_some_and(|t| t.elapsed() > Duration::from_millis(1500))
        {
            break;
        }
    }
    assert!(acks_seen > 0, "no send was acknowledged before the kill");
    b.guard.kill(); // SIGKILL
    println!("SIGKILLed the broker after {acks_seen} acks seen");
    let r = p.result(Duration::from_secs(60));
    let acked = acked_bodies(&r);
    let attempted = r["attempted"].as_u64().unwrap();
    println!("producer stopped: {}", r["error"]);

    let b2 = BrokerProc::start(&dir, "data", &listen, &["--flush", "sync"]);
    assert_eq!(b2.addr.port(), port);
    let pulled = py_run(
        &dir,
        "pull_all",
        &[
            ("namesrv", b2.namesrv()),
            ("topic", topic.into()),
            ("group", "CG_InteropCrashCheck".into()),
            ("max_seconds", "60".into()),
        ],
        Duration::from_secs(90),
    );
    assert!(
        !pulled["timed_out"].as_bool().unwrap(),
        "pull_all timed out"
    );
    let bodies: Vec<String> = pulled["bodies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_owned())
        .collect();
    let recovered: BTreeSet<String> = bodies.iter().cloned().collect();
    let lost: Vec<_> = acked.difference(&recovered).collect();
    let unacked_recovered = recovered.difference(&acked).count();
    println!(
        "crash figures: sends attempted {attempted}, acked {}, recovered {} ({} records read, {} \
         recovered but not acked), lost {}",
        acked.len(),
        recovered.len(),
        bodies.len(),
        unacked_recovered,
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost after SIGKILL with --flush sync, e.g. {:?}",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    assert_eq!(
        bodies.len(),
        recovered.len(),
        "duplicate records after recovery"
    );
    let attempted_bodies: BTreeSet<String> =
        (0..attempted).map(|i| format!("crash-{i:07}")).collect();
    let foreign: Vec<_> = recovered.difference(&attempted_bodies).collect();
    assert!(
        foreign.is_empty(),
        "recovered records nobody sent: {foreign:?}"
    );

    // The restarted broker appends after the recovered end: 20 more sends, then everything
    // (recovered + new) reads back from a second fresh group.
    let after = produce(&dir, &b2, topic, "after", plan(20, 0, 0, 0.0));
    let pulled2 = py_run(
        &dir,
        "pull_all",
        &[
            ("namesrv", b2.namesrv()),
            ("topic", topic.into()),
            ("group", "CG_InteropCrashCheck2".into()),
            ("max_seconds", "60".into()),
        ],
        Duration::from_secs(90),
    );
    let bodies2: Vec<String> = pulled2["bodies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = recovered
        .iter()
        .cloned()
        .chain(after.iter().map(|m| s(m, "body")))
        .collect();
    let got2: BTreeSet<String> = bodies2.iter().cloned().collect();
    assert_eq!(bodies2.len(), got2.len(), "duplicates after the restart");
    assert_eq!(
        got2.symmetric_difference(&expected).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "after the restart: recovered + new sends should read back exactly"
    );
    b2.stop();
    println!("sync_flush_survives_sigkill: {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
