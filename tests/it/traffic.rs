//! Traffic management with real processes: a control plane with its admin API (driven by
//! `rocketmesh ctl`), broker nodes, sidecars, and the C++ SDK (`support/sdk.py`) producing and
//! consuming through the sidecars while weights shift and a topic migrates.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rocketmesh_filters::codec::body::{ConsumeStats, TopicStatsTable};
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::{
    GetConsumeStatsRequestHeader, GetTopicStatsInfoRequestHeader,
};
use rocketmesh_filters::codec::pop::pop_retry_topic_v1;
use rocketmesh_filters::codec::RemotingCommand;
use serde_json::Value;

use crate::support::eventually_blocking;
use crate::support::interop::{
    call, connect, create_topic, free_port, py_start, python, work_dir, BrokerProc,
    ControlPlaneProc, Py, SidecarProc,
};

/// A control plane with its admin API and state dir, brokers `broker-a` / `broker-b`
/// (`topic` created on `topic_on` only) and `sidecars` sidecars.
/// Fields drop in order: sidecars, then brokers, then the control plane.
struct Mesh {
    sidecars: Vec<SidecarProc>,
    brokers: Vec<BrokerProc>,
    cp: ControlPlaneProc,
    /// The control plane's arguments (fixed ports), to restart it where everyone reconnects.
    cp_args: Vec<String>,
    dir: PathBuf,
    admin: SocketAddr,
    rt: tokio::runtime::Runtime,
}

/// A control plane on the addresses in `args` (`[remoting, xds, flags...]`).
fn start_cp(dir: &std::path::Path, args: &[String]) -> ControlPlaneProc {
    let flags: Vec<&str> = args[2..].iter().map(String::as_str).collect();
    ControlPlaneProc::start_at(dir, &args[0], &args[1], &flags)
}

impl Mesh {
    fn start(name: &str, topic: &str, topic_on: &[&str], sidecars: usize) -> Mesh {
        Self::start_with(name, topic, topic_on, sidecars, &[])
    }

    fn start_with(
        name: &str,
        topic: &str,
        topic_on: &[&str],
        sidecars: usize,
        sidecar_args: &[&str],
    ) -> Mesh {
        let dir = work_dir(name);
        let state = dir.join("cp-state");
        let port = |_| format!("127.0.0.1:{}", free_port());
        let [remoting, xds, admin]: [String; 3] = [0, 1, 2].map(port);
        let cp_args: Vec<String> = [
            "--warmup-secs",
            "0",
            "--admin",
            &admin,
            "--state-dir",
            state.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec();
        let cp_args = [vec![remoting, xds], cp_args].concat();
        let cp = start_cp(&dir, &cp_args);
        let admin = cp.admin.expect("control plane admin address");
        let namesrv = cp.remoting.to_string();
        let brokers: Vec<BrokerProc> = ["broker-a", "broker-b"]
            .into_iter()
            .map(|b| {
                BrokerProc::start(
                    &dir,
                    b,
                    "127.0.0.1:0",
                    &["--name", b, "--namesrv", &namesrv, "--flush", "sync"],
                )
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (b, name) in brokers.iter().zip(["broker-a", "broker-b"]) {
            if topic_on.contains(&name) {
                rt.block_on(create_topic(b.addr, topic, 4));
            }
        }
        let sidecars = (0..sidecars)
            .map(|i| {
                SidecarProc::start_at(
                    &dir,
                    &format!("sidecar-{i}"),
                    cp.xds,
                    "127.0.0.1:0",
                    free_port(),
                    sidecar_args,
                )
            })
            .collect();
        let mesh = Mesh {
            dir,
            cp,
            cp_args,
            admin,
            brokers,
            sidecars,
            rt,
        };
        eventually_blocking(
            "the topic registered on its brokers",
            Duration::from_secs(20),
            || {
                let r = mesh.routes(topic);
                let n = r["brokers"].as_array().map_or(0, Vec::len);
                n == topic_on.len()
            },
        );
        mesh
    }

    /// SIGKILLs the control plane and starts it again on the same addresses and state dir.
    fn restart_control_plane(&mut self) {
        self.cp.guard.kill();
        self.cp = start_cp(&self.dir, &self.cp_args);
    }

    /// `rocketmesh ctl --control-plane <admin> --json ARGS`: (success, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
            .args(["ctl", "--control-plane", &self.admin.to_string(), "--json"])
            .args(args)
            .output()
            .expect("run rocketmesh ctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ctl_ok(&self, args: &[&str]) -> Value {
        let (ok, out, err) = self.ctl(args);
        assert!(ok, "ctl {args:?} failed: {err}");
        serde_json::from_str(out.lines().last().unwrap_or("null")).expect("ctl --json output")
    }

    /// The topic's route as the control plane pushes it.
    fn routes(&self, topic: &str) -> Value {
        self.ctl_ok(&["routes", topic])["routes"][0].clone()
    }

    fn broker(&self, name: &str) -> SocketAddr {
        let i = usize::from(name == "broker-b");
        self.brokers[i].addr
    }

    /// Messages stored for `topic` on `broker` (sum of its queues' max offsets).
    fn stored(&self, broker: &str, topic: &str) -> i64 {
        let addr = self.broker(broker);
        self.rt.block_on(async {
            let c = connect(addr).await;
            let h = GetTopicStatsInfoRequestHeader {
                topic: topic.into(),
            };
            let r = call(
                &c,
                RemotingCommand::request_with_header(request_code::GET_TOPIC_STATS_INFO, &h),
            )
            .await;
            c.close();
            if r.code() != response_code::SUCCESS {
                return 0;
            }
            let t = TopicStatsTable::parse(r.body()).unwrap();
            t.offset_table.values().map(|o| o.max_offset).sum()
        })
    }

    /// What `group` has not consumed of `topic` on `broker` (its pop-retry topic and in-flight
    /// pops included), asked as the control plane asks.
    fn backlog(&self, broker: &str, group: &str, topic: &str) -> i64 {
        let addr = self.broker(broker);
        self.rt.block_on(async {
            let c = connect(addr).await;
            let mut n = 0;
            for t in [topic.to_owned(), pop_retry_topic_v1(group, topic)] {
                let h = GetConsumeStatsRequestHeader {
                    consumer_group: group.into(),
                    topic: Some(t),
                };
                let r = call(
                    &c,
                    RemotingCommand::request_with_header(request_code::GET_CONSUME_STATS, &h),
                )
                .await;
                if r.code() == response_code::SUCCESS {
                    let s = ConsumeStats::parse(r.body()).unwrap();
                    n += s
                        .offset_table
                        .values()
                        .map(|o| o.broker_offset - o.consumer_offset + o.in_flight.unwrap_or(0))
                        .sum::<i64>();
                }
            }
            c.close();
            n
        })
    }
}

fn produce_loop(
    dir: &Path,
    sidecar: &SidecarProc,
    topic: &str,
    prefix: &str,
    stop: &Path,
    interval: f64,
) -> Py {
    py_start(
        dir,
        "produce_loop",
        &[
            ("namesrv", sidecar.addr.to_string()),
            ("topic", topic.into()),
            ("group", format!("PG_{topic}")),
            ("prefix", prefix.into()),
            ("interval", interval.to_string()),
            ("stop_file", stop.to_str().unwrap().into()),
        ],
    )
}

fn acked(r: &Value, prefix: &str) -> BTreeSet<String> {
    r["acked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{prefix}-{:07}", i.as_u64().unwrap()))
        .collect()
}

/// Reads the consumers' `GOT` lines until every body of `want` was seen (or `limit`).
fn consume_until(
    consumers: &mut [Py],
    want: &BTreeSet<String>,
    got: &mut BTreeMap<String, u32>,
    limit: Duration,
) {
    let end = Instant::now() + limit;
    while want.iter().any(|b| !got.contains_key(b)) && Instant::now() < end {
        for c in consumers.iter_mut() {
            for l in c.ready_lines() {
                if let Some(b) = l.strip_prefix("GOT ") {
                    *got.entry(b.to_owned()).or_insert(0) += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let m = Mesh::start("traffic-bad-input", "TBad", &["broker-a", "broker-b"], 0);
    let before = m.routes("TBad");

    let (ok, _, err) = m.ctl(&["weights", "TBad", "broker-a=0", "broker-b=0"]);
    assert!(!ok && err.contains("sum to 0"), "zero weights: {err}");
    let (ok, _, err) = m.ctl(&["weights", "TBad", "broker-x=10"]);
    assert!(
        !ok && err.contains("404") && err.contains("broker-x"),
        "unknown broker: {err}"
    );
    let (ok, _, err) = m.ctl(&["weights", "TNope", "broker-a=10"]);
    assert!(
        !ok && err.contains("not registered"),
        "unknown topic: {err}"
    );
    let (ok, _, err) = m.ctl(&["migrate", "TBad", "--from", "broker-a", "--to", "broker-x"]);
    assert!(
        !ok && err.contains("broker-x is not registered"),
        "unknown target: {err}"
    );
    let (ok, _, err) = m.ctl(&["migrate", "TBad", "--from", "broker-a", "--to", "broker-a"]);
    assert!(!ok && err.contains("itself"), "to itself: {err}");
    assert_eq!(
        m.routes("TBad"),
        before,
        "refused requests changed the route"
    );
    println!("refused: zero weights, unknown broker/topic, unknown target, self-migration");

    // Two migrations of one topic: the second is refused and the first goes on.
    m.ctl_ok(&["migrate", "TBad", "--from", "broker-a", "--to", "broker-b"]);
    let (ok, _, err) = m.ctl(&["migrate", "TBad", "--from", "broker-b", "--to", "broker-a"]);
    assert!(
        !ok && err.contains("409") && err.contains("abort it first"),
        "second: {err}"
    );
    let (ok, _, err) = m.ctl(&["weights", "TBad", "broker-a=50", "broker-b=50"]);
    assert!(
        !ok && err.contains("409"),
        "weights during a migration: {err}"
    );
    let list = m.ctl_ok(&["migrations"]);
    let ms = list["migrations"].as_array().unwrap();
    assert_eq!(ms.len(), 1, "{list}");
    assert_eq!(ms[0]["from"], "broker-a");
    // Abort: the source takes the writes; then nothing is left running.
    let aborted = m.ctl_ok(&["abort", "TBad"]);
    assert_eq!(aborted["migration"]["state"], "aborted", "{aborted}");
    let (ok, _, err) = m.ctl(&["abort", "TBad"]);
    assert!(!ok && err.contains("409"), "second abort: {err}");
    let r = m.routes("TBad");
    let a = &r["brokers"][0];
    assert_eq!(
        (a["broker"].as_str(), a["writable"].as_bool()),
        (Some("broker-a"), Some(true))
    );
    println!(
        "second migration refused (409); abort left broker-a writable: {}",
        r["brokers"]
    );
}

#[test]
fn weight_shift_follows_the_weights_under_load() {
    python();
    let topic = "TWeights";
    let m = Mesh::start("traffic-weights", topic, &["broker-a", "broker-b"], 1);
    m.ctl_ok(&["weights", topic, "broker-a=100", "broker-b=0"]);
    let stop = m.dir.join("stop-producer");
    let producer = produce_loop(&m.dir, &m.sidecars[0], topic, "m", &stop, 0.005);
    let tolerance = 0.08;
    let mut report = Vec::new();
    for (wa, wb) in [(100u32, 0u32), (50, 50), (0, 100)] {
        m.ctl_ok(&[
            "weights",
            topic,
            &format!("broker-a={wa}"),
            &format!("broker-b={wb}"),
        ]);
        // The push reaches the sidecar in milliseconds; count from a moment later.
        std::thread::sleep(Duration::from_millis(500));
        let (a0, b0) = (m.stored("broker-a", topic), m.stored("broker-b", topic));
        std::thread::sleep(Duration::from_secs(5));
        let (a1, b1) = (m.stored("broker-a", topic), m.stored("broker-b", topic));
        let (da, db) = (a1 - a0, b1 - b0);
        let share = da as f64 / (da + db).max(1) as f64;
        let want = f64::from(wa) / f64::from(wa + wb);
        println!("weights {wa}/{wb}: broker-a {da}, broker-b {db}, share of a {share:.3} (want {want:.2} +- {tolerance})");
        report.push((wa, wb, da, db));
        assert!(da + db >= 100, "too few sends to judge: {da} + {db}");
        assert!(
            (share - want).abs() <= tolerance,
            "share {share:.3} vs {want}"
        );
    }
    std::fs::write(&stop, b"").unwrap();
    let r = producer.result(Duration::from_secs(30));
    let failed = r["failed"].as_array().unwrap();
    println!(
        "sent {} ({} failed) over three weight settings: {report:?}",
        r["attempted"],
        failed.len()
    );
    assert!(failed.is_empty(), "failed sends: {failed:?}");
}

#[test]
fn migration_under_load_consumes_everything() {
    python();
    let topic = "TMigrate";
    let group = "CG_TMigrate";
    // Two producers and two push consumers (one group), each behind a sidecar of its own.
    let m = Mesh::start("traffic-migrate", topic, &["broker-a"], 4);
    let stop = m.dir.join("stop-producer");
    let stop_consumer = m.dir.join("stop-consumer");
    let mut consumers: Vec<Py> = m.sidecars[2..]
        .iter()
        .map(|sc| {
            py_start(
                &m.dir,
                "consume",
                &[
                    ("namesrv", sc.addr.to_string()),
                    ("topic", topic.into()),
                    ("group", group.into()),
                    ("expect", "100000000".into()),
                    ("max_seconds", "170".into()),
                    ("settle", "1".into()),
                    ("persist_wait", "0".into()),
                    ("stop_file", stop_consumer.to_str().unwrap().into()),
                ],
            )
        })
        .collect();
    let producers: Vec<(Py, &str)> = [("p0", &m.sidecars[0]), ("p1", &m.sidecars[1])]
        .into_iter()
        .map(|(prefix, sc)| (produce_loop(&m.dir, sc, topic, prefix, &stop, 0.02), prefix))
        .collect();
    let mut got: BTreeMap<String, u32> = BTreeMap::new();
    // Some traffic on broker-a first.
    let warm: BTreeSet<String> = (0..30)
        .flat_map(|i| [format!("p0-{i:07}"), format!("p1-{i:07}")])
        .collect();
    consume_until(&mut consumers, &warm, &mut got, Duration::from_secs(60));
    assert!(
        warm.iter().all(|b| got.contains_key(b)),
        "no consumption before the migration"
    );

    let started = Instant::now();
    let (ok, out, err) = Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
        .args(["ctl", "--control-plane", &m.admin.to_string()])
        .args([
            "migrate", topic, "--from", "broker-a", "--to", "broker-b", "--wait", "150s",
        ])
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    print!("{out}");
    assert!(ok, "migration did not finish: {err}");
    let took = started.elapsed();
    // broker-a has nothing unconsumed for the topic now it left the route.
    let left_on_a = m.backlog("broker-a", group, topic);
    let r = m.routes(topic);
    println!(
        "migration took {took:?}; left on broker-a: {left_on_a}; route now {}",
        r["brokers"]
    );
    assert_eq!(left_on_a, 0);
    let names: Vec<&str> = r["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["broker"].as_str())
        .collect();
    assert_eq!(names, ["broker-b"]);

    // A little more traffic on broker-b alone, then stop and let the consumers catch up.
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, b"").unwrap();
    let mut sent = BTreeSet::new();
    let mut failed = Vec::new();
    for (p, prefix) in producers {
        let r = p.result(Duration::from_secs(30));
        failed.extend(r["failed"].as_array().unwrap().iter().cloned());
        sent.extend(acked(&r, prefix));
    }
    consume_until(&mut consumers, &sent, &mut got, Duration::from_secs(60));
    std::fs::write(&stop_consumer, b"").unwrap();
    let missing: Vec<&String> = sent.iter().filter(|b| !got.contains_key(*b)).collect();
    let dups = got.values().filter(|n| **n > 1).count();
    let (on_a, on_b) = (m.stored("broker-a", topic), m.stored("broker-b", topic));
    println!(
        "produced {} ok, {} failed; stored broker-a {on_a}, broker-b {on_b}; consumed {} distinct, {dups} duplicated, {} missing",
        sent.len(),
        failed.len(),
        got.len(),
        missing.len()
    );
    assert!(failed.is_empty(), "failed sends: {failed:?}");
    assert!(
        missing.is_empty(),
        "never consumed: {:?}",
        &missing[..missing.len().min(20)]
    );
    assert!(on_b > 0, "nothing was written to broker-b");
    for c in consumers {
        let _ = c.result(Duration::from_secs(30));
    }
}

#[test]
fn broker_loss_under_load_loses_nothing() {
    python();
    let topic = "TLoss";
    let group = "CG_TLoss";
    let mut m = Mesh::start_with(
        "traffic-broker-loss",
        topic,
        &["broker-a", "broker-b"],
        2,
        &[
            "--pop-invisible-ms",
            "8000",
            "--renew-before-ms",
            "3000",
            // A killed broker leaves the route as soon as the control plane sees its connection
            // close, so few requests fail against it: eject on the second failure in a row.
            "--outlier-consecutive",
            "2",
        ],
    );
    let stop = m.dir.join("stop-producer");
    let stop_consumer = m.dir.join("stop-consumer");
    let mut consumer = py_start(
        &m.dir,
        "consume",
        &[
            ("namesrv", m.sidecars[1].addr.to_string()),
            ("topic", topic.into()),
            ("group", group.into()),
            ("expect", "100000000".into()),
            ("max_seconds", "170".into()),
            ("settle", "1".into()),
            ("stop_file", stop_consumer.to_str().unwrap().into()),
        ],
    );
    let mut producer = produce_loop(&m.dir, &m.sidecars[0], topic, "m", &stop, 0.01);
    // ACK lines as they arrive, with the time they did.
    let mut acks: Vec<Instant> = Vec::new();
    let read_for = |p: &mut Py, d: Duration, acks: &mut Vec<Instant>| {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if let Some(l) = p.next_line(Duration::from_millis(20)) {
                if l.starts_with("ACK ") {
                    acks.push(Instant::now());
                }
            }
        }
    };
    read_for(&mut producer, Duration::from_secs(4), &mut acks);
    let before_kill = acks.len();
    assert!(
        before_kill > 50,
        "too few sends before the kill: {before_kill}"
    );

    let b_addr = m.broker("broker-b");
    m.brokers[1].guard.kill();
    let killed = Instant::now();
    read_for(&mut producer, Duration::from_secs(5), &mut acks);
    // The producer's longest stall around the kill, and the first ack after it.
    let after: Vec<Instant> = acks.iter().copied().filter(|t| *t >= killed).collect();
    let first_after = after.first().map(|t| t.duration_since(killed));
    let window: Vec<Instant> = acks
        .iter()
        .copied()
        .filter(|t| *t + Duration::from_secs(1) >= killed)
        .collect();
    let stall = window
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    let ejected = |sc: &SidecarProc| {
        sc.stat("rocketmq_rocketmesh_outlier_detection_ejections_enforced_total")
            .unwrap_or(0.0)
    };
    let (ej0, ej1) = (ejected(&m.sidecars[0]), ejected(&m.sidecars[1]));
    let failover = m.sidecars[0]
        .stat("rocketmq_rocketmesh_send_failover")
        .unwrap_or(0.0);
    let clusters = m.sidecars[1].admin_get("/clusters");
    let flags: Vec<&str> = clusters
        .lines()
        .filter(|l| l.contains(&b_addr.to_string()) && l.contains("health_flags"))
        .collect();
    println!(
        "broker-b killed: first send ok {first_after:?} after, longest producer stall {stall:?}; \
         ejections: producer's sidecar {ej0}, consumer's {ej1}; sends failed over {failover}; {flags:?}"
    );
    assert!(
        first_after.is_some_and(|d| d < Duration::from_secs(1)),
        "recovery took {first_after:?}"
    );

    // broker-b comes back on its address and data; its messages are consumed.
    let restarted = BrokerProc::start(
        &m.dir,
        "broker-b",
        &b_addr.to_string(),
        &[
            "--name",
            "broker-b",
            "--namesrv",
            &m.cp.remoting.to_string(),
            "--flush",
            "sync",
        ],
    );
    m.brokers[1] = restarted;
    read_for(&mut producer, Duration::from_secs(4), &mut acks);
    std::fs::write(&stop, b"").unwrap();
    let produced = producer.result(Duration::from_secs(30));
    let failed = produced["failed"].as_array().unwrap();
    let sent = acked(&produced, "m");
    let mut got: BTreeMap<String, u32> = BTreeMap::new();
    consume_until(
        std::slice::from_mut(&mut consumer),
        &sent,
        &mut got,
        Duration::from_secs(90),
    );
    std::fs::write(&stop_consumer, b"").unwrap();
    let missing: Vec<&String> = sent.iter().filter(|b| !got.contains_key(*b)).collect();
    let dups = got.values().filter(|n| **n > 1).count();
    let (ack_retry, ack_expired) = (
        m.sidecars[1]
            .stat("rocketmq_rocketmesh_ack_retry")
            .unwrap_or(0.0),
        m.sidecars[1]
            .stat("rocketmq_rocketmesh_ack_expired")
            .unwrap_or(0.0),
    );
    let active = m.sidecars[1]
        .stat("rocketmq_rocketmesh_outlier_detection_ejections_active")
        .unwrap_or(0.0);
    println!(
        "acked by brokers {} (failed sends {}), stored a {} b {}; consumed {} distinct, {dups} duplicated, {} missing; \
         consumer sidecar: ack retries {ack_retry}, acks expired {ack_expired}, ejections active now {active}",
        sent.len(),
        failed.len(),
        m.stored("broker-a", topic),
        m.stored("broker-b", topic),
        got.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but never consumed: {:?}",
        &missing[..missing.len().min(20)]
    );
    assert!(ej0 + ej1 >= 1.0, "no outlier ejection recorded");
    assert_eq!(active, 0.0, "broker-b still ejected after its return");
    let _ = consumer.result(Duration::from_secs(30));
}

/// Weights and a finished migration are on disk before they take effect: a SIGKILLed control
/// plane restarted on the same state dir pushes the same routes (brokers re-register with it).
#[test]
fn traffic_state_survives_a_control_plane_restart() {
    let mut m = Mesh::start("traffic-restart", "TKeep", &["broker-a", "broker-b"], 0);
    m.rt.block_on(create_topic(m.broker("broker-a"), "TMoved", 4));
    eventually_blocking("TMoved registered", Duration::from_secs(20), || {
        m.routes("TMoved")["brokers"].as_array().map_or(0, Vec::len) == 1
    });
    m.ctl_ok(&["weights", "TKeep", "broker-a=80", "broker-b=20"]);
    // No consumer group on broker-a: the migration drains at once and completes.
    m.ctl_ok(&[
        "migrate", "TMoved", "--from", "broker-a", "--to", "broker-b", "--wait",
    ]);
    let keep = m.routes("TKeep")["brokers"].clone();
    let moved = m.routes("TMoved")["brokers"].clone();
    let migrations = m.ctl_ok(&["migrations"])["migrations"].clone();
    assert_eq!(moved.as_array().map(Vec::len), Some(1), "{moved}");
    assert_eq!(moved[0]["broker"], "broker-b", "{moved}");

    m.restart_control_plane();
    // The brokers re-register within their registration period; then the routes are whole.
    eventually_blocking(
        "both topics back after the restart",
        Duration::from_secs(60),
        || {
            let (k, mv) = (m.ctl(&["routes", "TKeep"]), m.ctl(&["routes", "TMoved"]));
            k.0 && mv.0
                && m.routes("TKeep")["brokers"] == keep
                && m.routes("TMoved")["brokers"] == moved
        },
    );
    assert_eq!(m.ctl_ok(&["migrations"])["migrations"], migrations);
    println!("after a SIGKILL and restart: TKeep {keep}, TMoved {moved}");
}
