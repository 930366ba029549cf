//! A group of C++ push consumers sharing a topic through their sidecars: every message of two
//! producers consumed, a hung consumer's share redelivered to the others, RECONSUME_LATER back
//! after its delay level.

use super::*;

#[test]
fn a_group_of_three_push_consumers_consumes_two_producers_messages() {
    const TOPIC: &str = "PullPopGroup";
    const GROUP: &str = "CG_PullPopGroup";
    const PER_PRODUCER: usize = 2_000;
    let started = Instant::now();
    let mesh = Mesh::start("pp-group", TOPIC);
    let sidecars: Vec<SidecarProc> = (0..3)
        .map(|i| mesh.sidecar(&format!("sidecar-{i}"), "127.0.0.1:0", free_port(), &[]))
        .collect();
    let mut consumers: Vec<Py> = sidecars
        .iter()
        .map(|sc| mesh.consumer(sc, GROUP, 150, &[]))
        .collect();
    // Two producers at once, through two of the sidecars, while the group consumes.
    let plan = plan(PER_PRODUCER, 0, 0, 0.0);
    let producers: Vec<Py> = (0..2)
        .map(|i| {
            produce_start(
                &mesh.dir,
                &sidecars[i].addr.to_string(),
                TOPIC,
                &format!("p{i}"),
                plan,
            )
        })
        .collect();
    let produced: Vec<Value> = producers
        .into_iter()
        .map(|p| p.result(Duration::from_secs(120)))
        .collect();
    for r in &produced {
        check_produced(r, plan);
    }
    let sent = sent_bodies(&produced.iter().collect::<Vec<_>>());
    assert_eq!(sent.len(), 2 * PER_PRODUCER);
    println!("produced {} in {:?}", sent.len(), started.elapsed());

    let mut tally = Tally::default();
    let mut refs: Vec<&mut Py> = consumers.iter_mut().collect();
    tally.watch_all_sent(&mut refs, &sent, "every message delivered");
    println!("all {} delivered after {:?}", sent.len(), started.elapsed());
    // Every sidecar answered pulls with pops, and once the consumers committed (the C++ client
    // commits every 5 s, and with each pull) acked all they had handed out.
    for sc in &sidecars {
        wait_handles_released(sc, Duration::from_secs(30));
    }
    let converted = counter(&sidecars[0], "pull_converted");
    let acks = counter(&sidecars[0], "acks_from_commits");
    println!(
        "sidecar-0: pull_converted {converted}, acks_from_commits {acks}, outstanding_handles 0"
    );
    assert!(converted > 0.0, "sidecar-0 converted no pull");
    assert!(acks > 0.0, "sidecar-0 acked nothing for commits");
    // A little longer, for late duplicates.
    tally.watch_for(&mut refs, Duration::from_secs(2));
    drop(refs);
    let per_consumer: Vec<usize> = (0..3).map(|i| tally.deliveries_to(i)).collect();
    let got = Received::of(&mesh.stop_consumers(consumers));
    got.assert_complete(&sent, &BTreeSet::new());
    let dups = got.duplicates();
    println!(
        "group of 3: {} sent, {} deliveries, {} duplicates; per consumer {:?} (live {per_consumer:?})",
        sent.len(),
        got.deliveries(),
        dups,
        got.per_consumer
    );
    // Pop hands each message to one consumer; a second delivery needs an ack that missed its
    // broker or a handle that expired while held, neither of which happens here (renewals keep
    // held messages invisible, commits ack them). Allow 0.5% for a late ack racing a renewal,
    // far below what a systematic fault (an ack path that does not work, a message handed to
    // every consumer) would produce.
    let bound = sent.len() / 200;
    assert!(
        dups <= bound,
        "{dups} duplicate deliveries of {} messages (bound {bound})",
        sent.len()
    );
    for (i, n) in got.per_consumer.iter().enumerate() {
        assert!(*n > 0, "consumer {i} got nothing: the group did not share");
    }
    drop(sidecars);
    mesh.finish();
    println!("group test: {:?}", started.elapsed());
}

#[test]
fn a_hung_consumers_share_is_redelivered_to_the_others() {
    const TOPIC: &str = "PullPopHung";
    const GROUP: &str = "CG_PullPopHung";
    const MESSAGES: usize = 120;
    /// Completed callbacks before the hung consumer's callback blocks for good.
    const HANG_AFTER: usize = 3;
    const INVISIBLE: Duration = Duration::from_secs(5);
    const MAX_HOLD: Duration = Duration::from_secs(8);
    let started = Instant::now();
    let mesh = Mesh::start("pp-hung", TOPIC);
    let invisible = INVISIBLE.as_millis().to_string();
    let max_hold = MAX_HOLD.as_millis().to_string();
    let flags = [
        "--pop-invisible-ms",
        invisible.as_str(),
        "--max-hold-ms",
        max_hold.as_str(),
    ];
    let sidecars: Vec<SidecarProc> = (0..3)
        .map(|i| mesh.sidecar(&format!("sidecar-{i}"), "127.0.0.1:0", free_port(), &flags))
        .collect();
    // Produced before the consumers start, so the lines below are timed as they happen.
    let r = produce_with(
        &mesh.dir,
        &sidecars[0].addr.to_string(),
        TOPIC,
        "hung",
        plan(MESSAGES, 0, 0, 0.0),
    );
    let sent = sent_bodies(&[&r]);
    // Consumer 0 (the hung one) alone until it hangs: it takes as large a share as it can.
    let hang_after = HANG_AFTER.to_string();
    let mut hung = mesh.consumer(&sidecars[0], GROUP, 150, &[("hang-after", &hang_after)]);
    let mut tally = Tally::default();
    tally.watch(
        &mut [&mut hung],
        Duration::from_secs(60),
        "the hung consumer hangs",
        |t| !t.hung.is_empty(),
    );
    let consumed_at = Instant::now();
    let mut healthy: Vec<Py> = sidecars[1..]
        .iter()
        .map(|sc| mesh.consumer(sc, GROUP, 150, &[]))
        .collect();
    let mut refs: Vec<&mut Py> = vec![&mut hung];
    refs.extend(healthy.iter_mut());
    // Done when every message reached a healthy consumer, except those the hung consumer
    // completed before hanging, and every message it hung on was redelivered.
    tally.watch(
        &mut refs,
        Duration::from_secs(120),
        "the group drains despite the hung consumer",
        |t| {
            let healthy = t.delivered_to(&[1, 2]);
            let completed_by_hung = t.delivered_to(&[0]);
            !t.hung.is_empty()
                && t.hung.iter().all(|(_, b, _)| healthy.contains(b.as_str()))
                && sent
                    .iter()
                    .all(|b| healthy.contains(b.as_str()) || completed_by_hung.contains(b.as_str()))
        },
    );
    let drained = consumed_at.elapsed();
    drop(refs);
    let completed_by_hung = tally.delivered_to(&[0]);
    assert!(
        completed_by_hung.len() <= HANG_AFTER,
        "the hung consumer completed {} callbacks",
        completed_by_hung.len()
    );
    // Each message the hung consumer blocked on stayed with it while its sidecar renewed it
    // (past the invisible time) and was let go after the max hold time.
    let mut delays = Vec::new();
    for (_, body, at) in &tally.hung {
        let again = tally.got[body]
            .iter()
            .filter(|(c, t)| *c != 0 && t > at)
            .map(|(_, t)| *t)
            .min()
            .unwrap_or_else(|| panic!("{body} hung on, never redelivered to a healthy consumer"));
        delays.push(again - *at);
    }
    println!(
        "hung consumer: blocked on {:?}, redelivered to the others after {delays:?}; \
         group drained in {drained:?}; deliveries healthy {} / {}",
        tally.hung.iter().map(|h| &h.1).collect::<Vec<_>>(),
        tally.deliveries_to(1),
        tally.deliveries_to(2),
    );
    // Not before the max hold time: renewals kept it past the invisible time. No upper bound
    // per message: the hung consumer competes for the redelivered message too and may take it
    // again (another max hold); the group's drain deadline above bounds that.
    for d in &delays {
        assert!(
            *d >= MAX_HOLD,
            "a hung-on message came back after {d:?}, before the max hold time {MAX_HOLD:?} \
             (its sidecar should renew it past the invisible time {INVISIBLE:?})"
        );
    }
    hung.kill();
    drop(hung);
    let got = Received::of(&mesh.stop_consumers(healthy));
    got.assert_complete(&sent, &completed_by_hung);
    println!(
        "healthy consumers: {} deliveries of {} messages ({} duplicates)",
        got.deliveries(),
        got.per_body.len(),
        got.duplicates()
    );
    drop(sidecars);
    mesh.finish();
    println!("hung test: {:?}", started.elapsed());
}

#[test]
fn reconsume_later_comes_back_after_the_delay_with_reconsume_times_incremented() {
    const TOPIC: &str = "PullPopRetry";
    const GROUP: &str = "CG_PullPopRetry";
    const MESSAGES: usize = 16;
    /// Matches bodies `rl-sync-00010` .. `rl-sync-00015`.
    const MARKER: &str = "sync-0001";
    /// Delay level 3 (the C++ client sends messages back with level 0: the broker's choice,
    /// 3 + reconsumeTimes).
    const DELAY: f64 = 10.0;
    let started = Instant::now();
    let mesh = Mesh::start("pp-retry", TOPIC);
    let sc = mesh.sidecar("sidecar", "127.0.0.1:0", free_port(), &[]);
    // The consumer first, then one message every 300 ms, so that each pull brings one message:
    // the C++ client (1.0.1) sends back its whole pulled batch when one message of it asks
    // RECONSUME_LATER, including those it already consumed and those it never delivered.
    let consumer = py_start(
        &mesh.dir,
        "consume",
        &[
            ("namesrv", sc.addr.to_string()),
            ("topic", TOPIC.into()),
            ("group", GROUP.into()),
            ("expect", MESSAGES.to_string()),
            ("max-seconds", "60".into()),
            ("settle", "2".into()),
            ("fail-marker", MARKER.into()),
        ],
    );
    let r = produce_with(
        &mesh.dir,
        &sc.addr.to_string(),
        TOPIC,
        "rl",
        plan(MESSAGES, 0, 0, 0.3),
    );
    let sent = sent_bodies(&[&r]);
    let marked: BTreeSet<&String> = sent.iter().filter(|b| b.contains(MARKER)).collect();
    assert_eq!(marked.len(), 6);
    let r = consumer.result(Duration::from_secs(100));
    // Kept with the logs when the test fails (finish() removes the directory).
    std::fs::write(mesh.dir.join("consume-result.json"), r.to_string()).unwrap();
    assert_eq!(r["completed"], true, "the consumer did not see everything");
    let got = Received::of(std::slice::from_ref(&r));
    got.assert_complete(&sent, &BTreeSet::new());
    let by_time = |ds: &[Value]| -> Vec<Value> {
        let mut ds = ds.to_vec();
        ds.sort_by(|a, b| a["t"].as_f64().partial_cmp(&b["t"].as_f64()).unwrap());
        ds
    };
    let first_of = |body: &String| by_time(&got.per_body[body])[0].clone();
    let mut delays = Vec::new();
    let mut collateral = Vec::new();
    for (body, ds) in &got.per_body {
        let ds = by_time(ds);
        for d in &ds {
            assert_eq!(s(d, "topic"), TOPIC, "{d}");
            // Properties survive the retry round trip (re-encoded under the original topic).
            let props = props(d);
            assert_eq!(props.get("run").map(String::as_str), Some("rl"), "{d}");
            let idx: Option<u32> = props.get("idx").and_then(|i| i.parse().ok());
            let suffix: Option<u32> = body.rsplit('-').next().and_then(|i| i.parse().ok());
            assert!(idx.is_some() && idx == suffix, "{d}");
        }
        assert_eq!(ds[0]["reconsume_times"], 0, "{body}: {ds:?}");
        if !marked.contains(body) {
            assert_eq!(s(&ds[0], "status"), "CONSUME_SUCCESS", "{body}: {ds:?}");
            if ds.len() > 1 {
                // Only as part of a marked message's pulled batch (same virtual queue, nearby
                // offset): a send-back that changed some other message would show here.
                let (q, o) = (ds[0]["queue_id"].clone(), ds[0]["queue_offset"].as_i64());
                let batched = marked.iter().any(|m| {
                    let f = first_of(m);
                    f["queue_id"] == q
                        && o.zip(f["queue_offset"].as_i64())
                            .is_some_and(|(a, b)| (a - b).abs() < 32)
                });
                assert!(
                    batched,
                    "{body} was redelivered without being sent back: {ds:?}"
                );
                collateral.push(body.clone());
            }
            continue;
        }
        assert!(
            ds.len() >= 2,
            "{body} (RECONSUME_LATER) never came back: {ds:?}"
        );
        let (first, second) = (&ds[0], &ds[1]);
        assert_eq!(s(first, "status"), "RECONSUME_LATER", "{body}: {ds:?}");
        assert_eq!(s(second, "status"), "CONSUME_SUCCESS", "{body}: {ds:?}");
        assert_eq!(second["reconsume_times"], 1, "{body}: {ds:?}");
        let delay = second["t"].as_f64().unwrap() - first["t"].as_f64().unwrap();
        delays.push(delay);
        assert!(
            (DELAY - 0.5..=DELAY + 6.0).contains(&delay),
            "{body} came back after {delay:.3} s; expected delay level 3 ({DELAY} s), -0.5 s / +6 s"
        );
    }
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "RECONSUME_LATER x{}: back after {:.3} .. {:.3} s (median {:.3}) with reconsumeTimes 1 \
         under {TOPIC}; {} deliveries of {MESSAGES} messages; sent back with a marked message's \
         batch: {collateral:?}",
        delays.len(),
        delays[0],
        delays[delays.len() - 1],
        delays[delays.len() / 2],
        got.deliveries(),
    );
    drop(sc);
    mesh.finish();
    println!("retry test: {:?}", started.elapsed());
}
