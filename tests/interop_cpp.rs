//! Interop with the real Apache RocketMQ C++ client (PyPI `rocketmq==0.4.4`: `librocketmq.so`
//! driven through its Python ctypes API) against the bundled broker, started as the real
//! `rocketmesh broker` binary on loopback. The broker is standalone, so it is the client's name
//! server too.
//!
//! Setup is done here: a venv under `$CARGO_TARGET_TMPDIR/interop-venv` (built once, reused, built
//! in a temporary directory and renamed so parallel runs don't race) with `pip install
//! rocketmq==0.4.4`. If it cannot be built the tests fail with the pip output: they are never
//! skipped. `ROCKETMESH_INTEROP_PYTHON` picks the interpreter used to create the venv (default
//! `python3`). Driver scripts: `tests/interop/sdk.py` (stdlib + rocketmq only). Every child
//! process is bounded by a timeout and killed by a Drop guard on every path.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const SDK_VERSION: &str = "rocketmq==0.4.4";

// ----- environment -----

fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn driver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sdk.py")
}

/// A fresh work directory for one test (data dirs, client HOME, logs).
fn work_dir(name: &str) -> PathBuf {
    let d = tmp_root().join(format!("interop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("home")).unwrap();
    d
}

fn venv_works(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", "import rocketmq.client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
}

fn build_venv() -> Result<PathBuf, String> {
    let venv = tmp_root().join("interop-venv");
    let python = venv.join("bin/python");
    if venv_works(&python) {
        return Ok(python);
    }
    let base = std::env::var("ROCKETMESH_INTEROP_PYTHON").unwrap_or_else(|_| "python3".into());
    let staging = tmp_root().join(format!("interop-venv.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("{what}: cannot run: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(
        Command::new(&base).arg("-m").arg("venv").arg(&staging),
        &format!("{base} -m venv {}", staging.display()),
    )?;
    if let Err(e) = run(
        Command::new(staging.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", SDK_VERSION])
            .arg("--timeout")
            .arg("60"),
        &format!("pip install {SDK_VERSION}"),
    ) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    // The venv's bin/ scripts (pip...) hard-code the staging path, but bin/python keeps working
    // after the rename: it finds pyvenv.cfg and site-packages relative to its own location.
    match std::fs::rename(&staging, &venv) {
        Ok(()) => {}
        Err(_) if venv_works(&python) => {
            // Another process won the race.
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&venv);
            std::fs::rename(&staging, &venv)
                .map_err(|e2| format!("cannot move the venv into place: {e}; {e2}"))?;
        }
    }
    if venv_works(&python) {
        Ok(python)
    } else {
        Err(format!(
            "{} cannot import rocketmq.client after install",
            python.display()
        ))
    }
}

/// The venv's python, built on first use. Panics (the test fails) when it cannot be built.
fn python() -> PathBuf {
    // get_or_init runs build_venv once; concurrent tests block until it is done.
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match VENV.get_or_init(build_venv) {
        Ok(p) => p.clone(),
        Err(e) => panic!(
            "interop tests need a Python venv with {SDK_VERSION} (Apache RocketMQ C++ client); \
             building it failed:\n{e}"
        ),
    }
}

/// A loopback port that was free a moment ago (bind :0, read, close).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ----- child processes -----

/// Kills the child (SIGKILL) and reaps it when dropped, unless already reaped.
struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    fn terminate(&mut self, grace: Duration) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let end = Instant::now() + grace;
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!(
                "{} did not stop on SIGTERM within {grace:?}; killing",
                self.what
            );
        }
        self.kill();
    }

    fn wait_timeout(&mut self, t: Duration) -> bool {
        let end = Instant::now() + t;
        while let Some(c) = self.child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lines of a child's stdout, read by a thread.
fn line_reader(child: &mut Child) -> Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

struct BrokerProc {
    guard: ChildGuard,
    addr: SocketAddr,
}

impl BrokerProc {
    fn start(dir: &Path, data: &str, listen: &str, extra: &[&str]) -> BrokerProc {
        let data_dir = dir.join(data);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{data}.broker.log")))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
            .arg("broker")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn rocketmesh broker");
        let rx = line_reader(&mut child);
        let mut guard = ChildGuard {
            child: Some(child),
            what: "broker".into(),
        };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("ready ") {
                        let addr = a.trim().parse().expect("ready <addr>");
                        return BrokerProc { guard, addr };
                    }
                }
                Err(e) => {
                    guard.kill();
                    panic!(
                        "broker did not print `ready <addr>` ({e:?}); log: {}",
                        dir.join(format!("{data}.broker.log")).display()
                    );
                }
            }
        }
    }

    /// Graceful stop (SIGTERM), SIGKILL after 10 s.
    fn stop(mut self) {
        self.guard.terminate(Duration::from_secs(10));
    }

    fn namesrv(&self) -> String {
        self.addr.to_string()
    }
}

/// A running driver script.
struct Py {
    guard: ChildGuard,
    lines: Receiver<String>,
    mode: String,
    seen: Vec<String>,
}

fn py_start(dir: &Path, mode: &str, args: &[(&str, String)]) -> Py {
    let mut cmd = Command::new(python());
    cmd.arg("-u").arg(driver_script()).arg(mode);
    for (k, v) in args {
        cmd.arg(format!("--{k}")).arg(v);
    }
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("py-{mode}.stderr")))
        .unwrap();
    let mut child = cmd
        .env("HOME", dir.join("home"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn the python driver");
    let lines = line_reader(&mut child);
    Py {
        guard: ChildGuard {
            child: Some(child),
            what: format!("sdk.py {mode}"),
        },
        lines,
        mode: mode.into(),
        seen: Vec::new(),
    }
}

impl Py {
    /// Next stdout line within `t`; None on timeout or EOF.
    fn next_line(&mut self, t: Duration) -> Option<String> {
        match self.lines.recv_timeout(t) {
            Ok(l) => {
                self.seen.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits for the `RESULT` line (the script is killed if it takes longer than `t`).
    fn result(mut self, t: Duration) -> Value {
        let end = Instant::now() + t;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(j) = l.strip_prefix("RESULT ") {
                        let v = serde_json::from_str(j).expect("RESULT json");
                        if !self.guard.wait_timeout(Duration::from_secs(20)) {
                            eprintln!("sdk.py {} did not exit after RESULT; killing", self.mode);
                        }
                        return v;
                    }
                    self.seen.push(l);
                }
                Err(e) => {
                    self.guard.kill();
                    let tail: Vec<_> = self.seen.iter().rev().take(20).rev().collect();
                    panic!(
                        "sdk.py {} gave no RESULT within {t:?} ({e:?}); last output: {tail:#?}",
                        self.mode
                    );
                }
            }
        }
    }
}

fn py_run(dir: &Path, mode: &str, args: &[(&str, String)], t: Duration) -> Value {
    py_start(dir, mode, args).result(t)
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}

fn props(v: &Value) -> BTreeMap<String, String> {
    v["props"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// What `produce` sends: sync, oneway and orderly counts, seconds to sleep after each send.
#[derive(Clone, Copy)]
struct Plan {
    sync: usize,
    oneway: usize,
    orderly: usize,
    interval_s: f64,
}

fn plan(sync: usize, oneway: usize, orderly: usize, interval_s: f64) -> Plan {
    Plan {
        sync,
        oneway,
        orderly,
        interval_s,
    }
}

fn produce(dir: &Path, b: &BrokerProc, topic: &str, prefix: &str, plan: Plan) -> Vec<Value> {
    let Plan {
        sync,
        oneway,
        orderly,
        interval_s,
    } = plan;
    let r = py_run(
        dir,
        "produce",
        &[
            ("namesrv", b.namesrv()),
            ("topic", topic.into()),
            ("group", format!("PG_{topic}")),
            ("count", sync.to_string()),
            ("oneway", oneway.to_string()),
            ("orderly", orderly.to_string()),
            ("prefix", prefix.into()),
            ("interval", interval_s.to_string()),
        ],
        Duration::from_secs(90),
    );
    let errors = r["errors"].as_array().unwrap();
    assert!(errors.is_empty(), "send errors: {errors:#?}");
    let sent = r["sent"].as_array().unwrap().clone();
    assert_eq!(sent.len(), sync + oneway + orderly);
    let mut ids = BTreeSet::new();
    for m in &sent {
        if s(m, "kind") != "oneway" {
            assert_eq!(s(m, "status"), "OK", "send result {m}");
            let id = s(m, "msg_id");
            assert!(!id.is_empty(), "empty msg id: {m}");
            assert!(ids.insert(id.clone()), "msg id {id} returned twice");
        }
    }
    sent
}

/// Every received message against what was sent: same body set, tags, keys, user properties.
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
    println!("first consumer shutdown took {}s", r["shutdown_s"]);
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
    let redelivered: Vec<_> = received2
        .iter()
        .filter(|m| first_bodies.contains(&s(m, "body")))
        .map(|m| s(m, "body"))
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
    let acked: BTreeSet<String> = r["acked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("crash-{:07}", i.as_u64().unwrap()))
        .collect();
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
