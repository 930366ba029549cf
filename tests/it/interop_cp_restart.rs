//! A control-plane restart under load (issue 21, item 3): the real C++ producer sends through
//! the sidecar in a loop while the brokers are paused (SIGSTOP) and the control plane restarts
//! on the same ports, empty. The restarted control plane must not tell the sidecar its topic is
//! gone (warm-up), the brokers must be back in it as soon as they run again (re-register when
//! the nameserver connection broke), and the sidecar keeps its last good route through a removal
//! right after its reconnect (grace). Every send must succeed, and every acknowledged message
//! be readable from the brokers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::interop::*;
use crate::support::{eventually_blocking, free_ports};

const TOPIC: &str = "TopicCpRestart";
const QUEUES: i32 = 4;
/// Bound of each wait below.
const WAIT: Duration = Duration::from_secs(20);

/// The producer's output so far: `ACK <i>` lines counted, its RESULT kept if it came.
struct Acks {
    py: Py,
    acked: usize,
    result: Option<Value>,
}

impl Acks {
    fn poll(&mut self) {
        for line in self.py.ready_lines() {
            if line.starts_with("ACK ") {
                self.acked += 1;
            } else if let Some(j) = line.strip_prefix("RESULT ") {
                self.result = Some(serde_json::from_str(j).expect("RESULT json"));
            }
        }
        if let Some(r) = &self.result {
            panic!("the producer stopped early: {r}");
        }
    }

    /// Waits until at least `n` sends were acknowledged (fails if the producer stops).
    fn wait_for(&mut self, n: usize) {
        eventually_blocking(&format!("{n} acknowledged sends"), WAIT, || {
            self.poll();
            self.acked >= n
        });
    }
}

fn xds_connects(sidecar: &SidecarProc) -> u64 {
    let dump: Value = serde_json::from_str(&sidecar.admin_get("/config_dump")).unwrap_or_default();
    dump["xds"]["stats"]["connects"].as_u64().unwrap_or(0)
}

fn cp_subscriptions(admin: SocketAddr) -> u64 {
    let dump: Value = serde_json::from_str(&admin_get(admin, "/config_dump")).unwrap_or_default();
    dump["ads"]["subscriptions"].as_u64().unwrap_or(0)
}

#[test]
fn cpp_sends_through_the_sidecar_survive_a_control_plane_restart_with_brokers_paused() {
    let started = Instant::now();
    python(); // build the venv (or fail) before starting anything
    let dir = work_dir("cp-restart");
    let [remoting_port, xds_port, admin_port] = free_ports::<3>();
    let remoting = format!("127.0.0.1:{remoting_port}");
    let xds = format!("127.0.0.1:{xds_port}");
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let admin_arg = admin.to_string();
    // As deployed: the default warm-up, brokers registering every 30 s.
    let cp_args = ["--admin", admin_arg.as_str()];
    let mut cp = ControlPlaneProc::start_at(&dir, &remoting, &xds, &cp_args);
    let broker = |name: &str| {
        BrokerProc::start(
            &dir,
            name,
            "127.0.0.1:0",
            &["--name", name, "--namesrv", &remoting],
        )
    };
    let (a, b) = (broker("broker-a"), broker("broker-b"));
    let sidecar = SidecarProc::start(&dir, cp.xds);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(create_topic(a.addr, TOPIC, QUEUES));
    rt.block_on(create_topic(b.addr, TOPIC, QUEUES));
    rt.block_on(wait_for_route(
        sidecar.addr,
        TOPIC,
        (2 * QUEUES, 2 * QUEUES),
        WAIT,
    ));

    let stop_file = dir.join("stop-producing");
    let mut p = Acks {
        py: py_start(
            &dir,
            "produce_until_failure",
            &[
                ("namesrv", sidecar.addr.to_string()),
                ("topic", TOPIC.into()),
                ("group", "PG_CpRestart".into()),
                ("interval", "0.01".into()),
                ("timeout_ms", "10000".into()),
                ("stop_file", stop_file.display().to_string()),
            ],
        ),
        acked: 0,
        result: None,
    };
    p.wait_for(20);

    // Brokers paused; the control plane restarts on the same ports and starts empty.
    a.guard.signal("STOP");
    b.guard.signal("STOP");
    let paused = Instant::now();
    cp.guard.terminate(Duration::from_secs(10));
    let cp = ControlPlaneProc::start_at(&dir, &remoting, &xds, &cp_args);
    // The sidecar is back on the new control plane and has told it what it holds.
    eventually_blocking("the sidecar reconnected", WAIT, || {
        xds_connects(&sidecar) >= 2
    });
    eventually_blocking(
        "the restarted control plane has the subscriptions",
        WAIT,
        || cp_subscriptions(admin) >= 1,
    );
    // The new control plane knows no broker yet; the sidecar still answers the topic's route.
    let (raw, route) = rt.block_on(route_via(sidecar.addr, TOPIC));
    let queues = route
        .as_ref()
        .and_then(|r| r.queue_datas.first())
        .map(|q| (q.write_queue_nums, q.read_queue_nums));
    assert_eq!(
        queues,
        Some((2 * QUEUES, 2 * QUEUES)),
        "the sidecar's route while the brokers are paused: code {} {:?}",
        raw.code(),
        raw.remark()
    );
    let acked_while_paused = {
        p.poll();
        p.acked
    };
    a.guard.signal("CONT");
    b.guard.signal("CONT");
    let resumed = Instant::now();
    let pause = resumed - paused;

    // The brokers are back in the control plane well within their 30 s interval.
    let mut registered_after = Duration::ZERO;
    eventually_blocking("both brokers registered again", WAIT, || {
        p.poll();
        let (_, route) = rt.block_on(route_via(cp.remoting, TOPIC));
        registered_after = resumed.elapsed();
        route.is_some_and(|r| r.broker_datas.len() == 2)
    });
    // Traffic goes on after the restart.
    let before = p.acked;
    p.wait_for(before + 50);
    std::fs::write(&stop_file, b"stop").unwrap();
    let r = match p.result.take() {
        Some(r) => r,
        None => p.py.result(Duration::from_secs(60)),
    };
    assert!(r["error"].is_null(), "a send failed: {}", r["error"]);
    let acked = acked_bodies(&r);
    let attempted = r["attempted"].as_u64().unwrap();
    assert_eq!(acked.len() as u64, attempted, "every send acknowledged");

    // Every acknowledged message is readable from the brokers.
    let mut stored = BTreeSet::new();
    for (i, broker) in [&a, &b].into_iter().enumerate() {
        let pulled = py_run(
            &dir,
            "pull_all",
            &[
                ("namesrv", broker.namesrv()),
                ("topic", TOPIC.into()),
                ("group", format!("CG_CpRestartCheck{i}")),
                ("max_seconds", "30".into()),
            ],
            Duration::from_secs(60),
        );
        assert!(
            !pulled["timed_out"].as_bool().unwrap(),
            "pull_all timed out"
        );
        stored.extend(
            pulled["bodies"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|b| b.as_str().map(str::to_owned)),
        );
    }
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    println!(
        "cp restart: {attempted} sends, 0 failed ({acked_while_paused} acked before the brokers \
         resumed); brokers paused {pause:?}; registered again {registered_after:?} after SIGCONT; \
         test took {:?}",
        started.elapsed()
    );
    a.stop();
    b.stop();
    drop(sidecar);
    drop(cp);
}
