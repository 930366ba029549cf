//! A consumer's sidecar killed or restarted mid-stream: nothing lost, and how soon the C++
//! consumer delivers again.

use super::*;

/// Restarts a sidecar where its consumer reconnects.
fn restart(mesh: &Mesh, listen: &str, admin_port: u16, flags: &[&str]) -> SidecarProc {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        // The port was just released by a killed process; bind again until it is free.
        if std::net::TcpListener::bind(listen).is_ok() {
            return mesh.sidecar("sidecar-2-restarted", listen, admin_port, flags);
        }
        assert!(Instant::now() < end, "{listen} stayed busy after the kill");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_sidecar_killed_mid_stream_loses_no_message() {
    const TOPIC: &str = "PullPopKill";
    const GROUP: &str = "CG_PullPopKill";
    const MESSAGES: usize = 1_500;
    const INVISIBLE: Duration = Duration::from_secs(5);
    let started = Instant::now();
    let mesh = Mesh::start("pp-kill", TOPIC);
    let invisible = INVISIBLE.as_millis().to_string();
    let flags = ["--pop-invisible-ms", invisible.as_str()];
    let [listen_port, victim_admin] = common::free_ports::<2>();
    let victim_listen = format!("127.0.0.1:{listen_port}");
    let mut sidecars: Vec<SidecarProc> = (0..2)
        .map(|i| mesh.sidecar(&format!("sidecar-{i}"), "127.0.0.1:0", free_port(), &flags))
        .collect();
    sidecars.push(mesh.sidecar("sidecar-2", &victim_listen, victim_admin, &flags));
    let mut consumers: Vec<Py> = sidecars
        .iter()
        .map(|sc| mesh.consumer(sc, GROUP, 150, &[]))
        .collect();
    // A steady stream (a few ms between sends) so that the kill lands mid-stream.
    let plan = plan(MESSAGES, 0, 0, 0.004);
    let producer = produce_start(
        &mesh.dir,
        &sidecars[0].addr.to_string(),
        TOPIC,
        "kill",
        plan,
    );
    let mut tally = Tally::default();
    let mut refs: Vec<&mut Py> = consumers.iter_mut().collect();
    tally.watch(
        &mut refs,
        Duration::from_secs(60),
        "consumer 2 consumes through sidecar-2",
        |t| t.deliveries_to(2) >= 50,
    );
    let held = sidecars[2]
        .stat("rocketmq_rocketmesh_outstanding_handles")
        .unwrap_or(0.0);
    let before_kill = tally.got.len();
    sidecars[2].guard.kill();
    let killed_at = Instant::now();
    println!(
        "killed sidecar-2 (SIGKILL) holding {held} handles, {before_kill} messages delivered so far, \
         {:?} after start",
        started.elapsed()
    );
    tally.watch_for(&mut refs, Duration::from_secs(1));
    sidecars[2] = restart(&mesh, &victim_listen, victim_admin, &flags);
    let restarted_at = Instant::now();
    let after_restart_before = tally.deliveries_to(2);
    drop(refs);
    let r = producer.result(Duration::from_secs(120));
    check_produced(&r, plan);
    let sent = sent_bodies(&[&r]);
    let mut refs: Vec<&mut Py> = consumers.iter_mut().collect();
    tally.watch_all_sent(&mut refs, &sent, "every message delivered after the kill");
    // What sidecar-2 held unacked comes back once its invisible time runs out; keep watching
    // until then (plus the brokers' revive tick and a pop) so those redeliveries are counted.
    let quiet_until = killed_at + INVISIBLE + Duration::from_secs(4);
    tally.watch_for(
        &mut refs,
        quiet_until.saturating_duration_since(Instant::now()),
    );
    drop(refs);
    let via_restarted = tally.deliveries_to(2) - after_restart_before;
    let got = Received::of(&mesh.stop_consumers(consumers));
    got.assert_complete(&sent, &BTreeSet::new());
    println!(
        "sidecar kill: {} sent, {} deliveries, {} redelivered; per consumer {:?}; consumer 2 got \
         {via_restarted} through the restarted sidecar (up {:?} after the kill)",
        sent.len(),
        got.deliveries(),
        got.duplicates(),
        got.per_consumer,
        restarted_at - killed_at
    );
    drop(sidecars);
    mesh.finish();
    println!("kill test: {:?}", started.elapsed());
}

/// Time from a sidecar's restart to its C++ consumer's next delivery, measured (printed) and
/// bounded.
///
/// SIGTERM: the drain answers the parked pulls and the client pulls again on a new connection
/// at once (measured ~0.05 s; bound 5 s, far below the client's 30 s timers).
///
/// SIGKILL: the C++ client (2.1.8) gives up on pulls that were in flight on the dead connection
/// only at its 30 s async pull timeout, then pulls again 1 s later (measured ~29 s after the
/// restart, ~30 s after the kill; bound 35 s). Nothing the restarted sidecar can send shortens
/// this: NOTIFY_CONSUMER_IDS_CHANGED makes the client rebalance, but its rebalance neither
/// cancels an in-flight pull nor re-adds a dropped queue while a pull is in flight ("has
/// unfinished pullMsgEvent"), and the sidecar cannot name the client in a consumer list before
/// its next heartbeat (every 30 s). Tried and measured: a list without the client at its first
/// offset commit (it drops every queue) and NOTIFY at its heartbeat still delivered only at the
/// pull timeout (29.3 s), and it made a graceful restart wait for the heartbeat too (29.5 s).
#[test]
fn a_restarted_sidecar_delivers_again_within_seconds() {
    const TOPIC: &str = "PullPopRestart";
    const GROUP: &str = "CG_PullPopRestart";
    const MESSAGES: usize = 1_200;
    let started = Instant::now();
    let mesh = Mesh::start("pp-restart", TOPIC);
    let [listen_port, victim_admin] = common::free_ports::<2>();
    let victim_listen = format!("127.0.0.1:{listen_port}");
    let producer_sc = mesh.sidecar("sidecar-0", "127.0.0.1:0", free_port(), &[]);
    let mut victim = mesh.sidecar("sidecar-1", &victim_listen, victim_admin, &[]);
    let mut consumers = vec![mesh.consumer(&victim, GROUP, 180, &[])];
    // A steady stream through the other sidecar: messages keep arriving across the restarts.
    let plan = plan(MESSAGES, 0, 0, 0.03);
    let producer = produce_start(
        &mesh.dir,
        &producer_sc.addr.to_string(),
        TOPIC,
        "restart",
        plan,
    );
    let mut tally = Tally::default();
    let mut gaps = Vec::new();
    for (graceful, bound) in [
        (false, Duration::from_secs(35)),
        (true, Duration::from_secs(5)),
    ] {
        let mut refs: Vec<&mut Py> = consumers.iter_mut().collect();
        let floor = tally.deliveries_to(0) + 30;
        tally.watch(
            &mut refs,
            Duration::from_secs(60),
            "the consumer consumes through the victim sidecar",
            |t| t.deliveries_to(0) >= floor,
        );
        if graceful {
            victim.guard.terminate(Duration::from_secs(15));
        } else {
            victim.guard.kill();
        }
        // What the client had buffered is consumed within a moment; only later deliveries count.
        tally.watch_for(&mut refs, Duration::from_millis(500));
        victim = restart(&mesh, &victim_listen, victim_admin, &[]);
        let restarted_at = Instant::now();
        let before = tally.deliveries_to(0);
        tally.watch(
            &mut refs,
            Duration::from_secs(90),
            "a delivery after the restart",
            |t| t.deliveries_to(0) > before,
        );
        let first = tally
            .got
            .values()
            .flatten()
            .filter(|(c, t)| *c == 0 && *t >= restarted_at)
            .map(|(_, t)| *t)
            .min()
            .unwrap_or_else(Instant::now);
        let gap = first.saturating_duration_since(restarted_at);
        println!(
            "{}: first delivery {gap:?} after the restarted sidecar was ready (bound {bound:?})",
            if graceful { "SIGTERM" } else { "SIGKILL" }
        );
        gaps.push((graceful, gap, bound));
    }
    let r = producer.result(Duration::from_secs(120));
    check_produced(&r, plan);
    let sent = sent_bodies(&[&r]);
    let mut refs: Vec<&mut Py> = consumers.iter_mut().collect();
    tally.watch_all_sent(&mut refs, &sent, "every message delivered");
    drop(refs);
    let got = Received::of(&mesh.stop_consumers(consumers));
    got.assert_complete(&sent, &BTreeSet::new());
    println!(
        "restarts: {} sent, {} deliveries, {} redelivered",
        sent.len(),
        got.deliveries(),
        got.duplicates()
    );
    for (graceful, gap, bound) in &gaps {
        assert!(
            gap < bound,
            "first delivery {gap:?} after a sidecar restart (graceful: {graceful}); bound \
             {bound:?}; all: {gaps:?}"
        );
    }
    drop((victim, producer_sc));
    mesh.finish();
    println!("restart test: {:?}", started.elapsed());
}
