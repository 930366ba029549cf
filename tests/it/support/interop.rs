//! Shared machinery of the interop tests (`interop_cpp`, `interop_sidecar`, `interop_pull_pop`):
//! the venv with the real Apache RocketMQ C++ client (PyPI `rocketmq==0.4.4`, `librocketmq.so`
//! driven through its Python ctypes API by `tests/it/support/sdk.py`), the `rocketmesh` binaries as
//! child processes, and the driver script's runs.
//!
//! The venv lives under `$CARGO_TARGET_TMPDIR/interop-venv` (`support::venv`: built once,
//! reused, built in a temporary directory and renamed so parallel runs don't race) with `pip
//! install rocketmq==0.4.4`. If it cannot be built the tests fail with the pip output: they are
//! never skipped. `ROCKETMESH_INTEROP_PYTHON` picks the interpreter used to create the venv
//! (default `python3`). Every child process is bounded by a timeout and killed by a Drop guard
//! on every path.

// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rocketmesh::remoting::RemotingClient;
use rocketmesh_filters::codec::body::TopicRouteData;
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::GetRouteInfoRequestHeader;
use rocketmesh_filters::codec::RemotingCommand;
use serde_json::Value;

pub const SDK_VERSION: &str = "rocketmq==0.4.4";

// ----- environment -----

pub fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

pub fn driver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/sdk.py")
}

/// A fresh work directory for one test (data dirs, client HOME, logs).
pub fn work_dir(name: &str) -> PathBuf {
    let d = tmp_root().join(format!("interop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("home")).unwrap();
    d
}

/// The interop venv: the C++ client from PyPI.
pub const VENV: super::venv::Venv = super::venv::Venv {
    name: "interop-venv",
    packages: &[SDK_VERSION],
    check: "import rocketmq.client",
};

pub fn venv_works(python: &Path) -> bool {
    VENV.works(python)
}

pub fn build_venv() -> Result<PathBuf, String> {
    VENV.build()
}

/// The venv's python, built on first use. Panics (the test fails) when it cannot be built.
pub fn python() -> PathBuf {
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
pub fn free_port() -> u16 {
    super::free_port()
}

// ----- child processes -----

/// Kills the child (SIGKILL) and reaps it when dropped, unless already reaped.
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    /// Guards `child`, called `what` in messages.
    pub fn new(child: Child, what: impl Into<String>) -> ChildGuard {
        ChildGuard {
            child: Some(child),
            what: what.into(),
        }
    }

    /// The child's pid, while it has not been reaped.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
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

    /// Sends `signal` (a `kill` name: STOP, CONT...) to the child, if it still runs.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = self.child.as_ref() {
            let ok = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(c.id().to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{signal} {} failed", self.what);
        }
    }

    pub fn wait_timeout(&mut self, t: Duration) -> bool {
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
pub fn line_reader(child: &mut Child) -> Receiver<String> {
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

/// Starts `rocketmesh <args>` (stderr to `<dir>/<log>.log`) and waits up to 20 s for its
/// `ready ...` line; returns the guard and what followed `ready `.
pub fn start_rocketmesh(dir: &Path, log: &str, args: &[&str]) -> (ChildGuard, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rocketmesh"));
    cmd.args(args);
    let what = format!("rocketmesh {}", args.first().copied().unwrap_or_default());
    start_ready(dir, log, cmd, &what)
}

/// Starts `cmd` (stdin null, stdout piped, stderr appended to `<dir>/<log>.log`) and waits up
/// to 20 s for its `ready ...` line; returns the guard and what followed `ready `. For
/// `rocketmesh` commands built elsewhere, e.g. inside a network namespace (`support::netns`).
pub fn start_ready(dir: &Path, log: &str, mut cmd: Command, what: &str) -> (ChildGuard, String) {
    let log_path = dir.join(format!("{log}.log"));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what} ({cmd:?}): {e}"));
    let rx = line_reader(&mut child);
    let mut guard = ChildGuard::new(child, what);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("ready ") {
                    return (guard, rest.trim().to_owned());
                }
            }
            Err(e) => {
                guard.kill();
                panic!(
                    "{what} did not print `ready ...` ({e:?}); log: {}",
                    log_path.display()
                );
            }
        }
    }
}

/// Tests pick free ports one at a time; the VIP channel (port - 2) of one process could land on
/// another's port, so test processes open it only when a test asks for it.
fn no_vip_unless_asked(args: &mut Vec<&str>) {
    if !args.contains(&"--vip-channel") {
        args.extend(["--vip-channel", "false"]);
    }
}

/// A `rocketmesh broker`.
pub struct BrokerProc {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
}

impl BrokerProc {
    pub fn start(dir: &Path, data: &str, listen: &str, extra: &[&str]) -> BrokerProc {
        let data_dir = dir.join(data);
        let data_dir = data_dir.to_str().expect("UTF-8 work dir");
        let mut args = vec!["broker", "--listen", listen, "--data-dir", data_dir];
        args.extend_from_slice(extra);
        no_vip_unless_asked(&mut args);
        let (guard, ready) = start_rocketmesh(dir, &format!("{data}.broker"), &args);
        let addr = ready.parse().expect("ready <addr>");
        BrokerProc { guard, addr }
    }

    /// Graceful stop (SIGTERM), SIGKILL after 10 s.
    pub fn stop(mut self) {
        self.guard.terminate(Duration::from_secs(10));
    }

    pub fn namesrv(&self) -> String {
        self.addr.to_string()
    }
}

/// A `rocketmesh control-plane` (nameserver role + ADS server), both on loopback ports.
pub struct ControlPlaneProc {
    pub guard: ChildGuard,
    pub remoting: SocketAddr,
    pub xds: SocketAddr,
    /// The admin server (`--admin`), when started with one.
    pub admin: Option<SocketAddr>,
}

impl ControlPlaneProc {
    /// On ports of its own choosing, without the restart warm-up: its brokers start after it,
    /// so nothing is missing that may come back (`start_at` runs it as deployed).
    pub fn start(dir: &Path) -> ControlPlaneProc {
        Self::start_at(dir, "127.0.0.1:0", "127.0.0.1:0", &["--warmup-secs", "0"])
    }

    /// On `remoting` and `xds` (fixed addresses, to restart it where brokers and sidecars
    /// reconnect), with more flags in `extra`.
    pub fn start_at(dir: &Path, remoting: &str, xds: &str, extra: &[&str]) -> ControlPlaneProc {
        let mut args = vec!["control-plane", "--remoting", remoting, "--xds", xds];
        args.extend_from_slice(extra);
        let (guard, ready) = start_rocketmesh(dir, "control-plane", &args);
        let field = |k: &str| -> SocketAddr {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("control plane ready line without {k}: {ready}"))
        };
        let admin = ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("admin="))
            .and_then(|a| a.parse().ok());
        ControlPlaneProc {
            remoting: field("remoting="),
            xds: field("xds="),
            admin,
            guard,
        }
    }
}

/// A `rocketmesh sidecar` fed by the ADS server at `xds`.
pub struct SidecarProc {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    /// The admin server (`/stats/prometheus`, ...).
    pub admin: SocketAddr,
}

impl SidecarProc {
    /// A sidecar on loopback ports of its own choosing.
    pub fn start(dir: &Path, xds: SocketAddr) -> SidecarProc {
        Self::start_at(dir, "sidecar", xds, "127.0.0.1:0", free_port(), &[])
    }

    /// A sidecar listening on `listen` (`127.0.0.1:0` or a fixed address, e.g. to restart one
    /// where its clients reconnect) with its admin server on `admin_port`, logging to
    /// `<dir>/<log>.log`; `extra` are more flags (translator timings...).
    pub fn start_at(
        dir: &Path,
        log: &str,
        xds: SocketAddr,
        listen: &str,
        admin_port: u16,
        extra: &[&str],
    ) -> SidecarProc {
        let xds = xds.to_string();
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let admin_arg = admin.to_string();
        let mut args = vec![
            "sidecar", "--xds", &xds, "--listen", listen, "--admin", &admin_arg,
        ];
        args.extend_from_slice(extra);
        no_vip_unless_asked(&mut args);
        let (guard, ready) = start_rocketmesh(dir, log, &args);
        let addr = ready.parse().expect("ready <addr>");
        SidecarProc { guard, addr, admin }
    }

    /// GET `path` from the admin server (HTTP/1.1, one request per connection): the body.
    pub fn admin_get(&self, path: &str) -> String {
        admin_get(self.admin, path)
    }

    /// The value of one sample of `/stats/prometheus` (the first line starting with `name`
    /// followed by a space or `{`).
    pub fn stat(&self, name: &str) -> Option<f64> {
        self.admin_get("/stats/prometheus").lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            rest.rsplit(' ').next()?.parse().ok()
        })
    }
}

/// GET `path` from the admin server at `admin` (HTTP/1.1, one request per connection): the
/// body of a 200 answer.
pub fn admin_get(admin: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("admin {admin}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("admin {admin} GET {path}: {e}"));
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "admin GET {path}: {head}");
    body.to_owned()
}

/// A running driver script.
pub struct Py {
    guard: ChildGuard,
    lines: Receiver<String>,
    mode: String,
    seen: Vec<String>,
}

pub fn py_start(dir: &Path, mode: &str, args: &[(&str, String)]) -> Py {
    py_start_with(dir, mode, args, |argv| {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd
    })
}

/// [`py_start`] through `wrap`, which makes the command from the driver's argv (e.g. to run
/// it inside a network namespace).
pub fn py_start_with(
    dir: &Path,
    mode: &str,
    args: &[(&str, String)],
    wrap: impl FnOnce(&[std::ffi::OsString]) -> Command,
) -> Py {
    let mut argv: Vec<std::ffi::OsString> = vec![
        python().into(),
        "-u".into(),
        driver_script().into(),
        mode.into(),
    ];
    for (k, v) in args {
        argv.push(format!("--{k}").into());
        argv.push(v.into());
    }
    let mut cmd = wrap(&argv);
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
        guard: ChildGuard::new(child, format!("sdk.py {mode}")),
        lines,
        mode: mode.into(),
        seen: Vec::new(),
    }
}

impl Py {
    /// Next stdout line within `t`; None on timeout or EOF.
    pub fn next_line(&mut self, t: Duration) -> Option<String> {
        match self.lines.recv_timeout(t) {
            Ok(l) => {
                self.seen.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The stdout lines already printed, without waiting.
    pub fn ready_lines(&mut self) -> Vec<String> {
        let lines: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(lines.iter().cloned());
        lines
    }

    /// SIGKILL now (the guard would on drop).
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Waits for the `RESULT` line (the script is killed if it takes longer than `t`).
    pub fn result(mut self, t: Duration) -> Value {
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

pub fn py_run(dir: &Path, mode: &str, args: &[(&str, String)], t: Duration) -> Value {
    py_start(dir, mode, args).result(t)
}

pub fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}

pub fn props(v: &Value) -> BTreeMap<String, String> {
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
pub struct Plan {
    pub sync: usize,
    pub oneway: usize,
    pub orderly: usize,
    pub interval_s: f64,
}

pub fn plan(sync: usize, oneway: usize, orderly: usize, interval_s: f64) -> Plan {
    Plan {
        sync,
        oneway,
        orderly,
        interval_s,
    }
}

/// Runs `sdk.py produce` against the name server `namesrv`, checks every send succeeded with a
/// distinct msg id, and returns the whole RESULT (`sent`, `peers`).
pub fn produce_with(dir: &Path, namesrv: &str, topic: &str, prefix: &str, plan: Plan) -> Value {
    let r = produce_start(dir, namesrv, topic, prefix, plan).result(Duration::from_secs(90));
    check_produced(&r, plan);
    r
}

/// Starts `sdk.py produce` (see [`produce_with`]); wait with [`Py::result`], then
/// [`check_produced`].
pub fn produce_start(dir: &Path, namesrv: &str, topic: &str, prefix: &str, plan: Plan) -> Py {
    let Plan {
        sync,
        oneway,
        orderly,
        interval_s,
    } = plan;
    py_start(
        dir,
        "produce",
        &[
            ("namesrv", namesrv.to_owned()),
            ("topic", topic.into()),
            ("group", format!("PG_{topic}")),
            ("count", sync.to_string()),
            ("oneway", oneway.to_string()),
            ("orderly", orderly.to_string()),
            ("prefix", prefix.into()),
            ("interval", interval_s.to_string()),
        ],
    )
}

/// Every send of a `produce` RESULT succeeded, each with a distinct msg id.
/// The bodies a `produce_until_failure` RESULT says were acknowledged (`crash-<7-digit index>`).
pub fn acked_bodies(r: &Value) -> BTreeSet<String> {
    r["acked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("crash-{:07}", i.as_u64().unwrap()))
        .collect()
}

pub fn check_produced(r: &Value, plan: Plan) {
    let errors = r["errors"].as_array().unwrap();
    assert!(errors.is_empty(), "send errors: {errors:#?}");
    let sent = r["sent"].as_array().unwrap();
    assert_eq!(sent.len(), plan.sync + plan.oneway + plan.orderly);
    let mut ids = BTreeSet::new();
    for m in sent {
        if s(m, "kind") != "oneway" {
            assert_eq!(s(m, "status"), "OK", "send result {m}");
            let id = s(m, "msg_id");
            assert!(!id.is_empty(), "empty msg id: {m}");
            assert!(ids.insert(id.clone()), "msg id {id} returned twice");
        }
    }
}

/// [`produce_with`] against a standalone broker (its own name server); the sent records.
pub fn produce(dir: &Path, b: &BrokerProc, topic: &str, prefix: &str, plan: Plan) -> Vec<Value> {
    let r = produce_with(dir, &b.namesrv(), topic, prefix, plan);
    r["sent"].as_array().unwrap().clone()
}

// ----- requests of our own (topic admin, route look-ups) -----

/// Timeout of the requests below.
pub const RPC: Duration = Duration::from_secs(5);

pub async fn connect(addr: SocketAddr) -> RemotingClient {
    RemotingClient::connect_timeout(addr, RPC, None)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

pub async fn call(c: &RemotingClient, req: RemotingCommand) -> RemotingCommand {
    c.invoke(req, RPC)
        .await
        .unwrap_or_else(|e| panic!("request to {}: {e}", c.addr()))
}

/// UPDATE_AND_CREATE_TOPIC on one broker: `queues` read and write queues, read-write.
pub async fn create_topic(broker: SocketAddr, topic: &str, queues: i32) {
    super::create_topic(broker, topic, 6, queues).await;
}

/// The route answer as an SDK gets it from `sidecar` (or any name server), and its parsed body.
pub async fn route_via(
    sidecar: SocketAddr,
    topic: &str,
) -> (RemotingCommand, Option<TopicRouteData>) {
    let c = connect(sidecar).await;
    let h = GetRouteInfoRequestHeader {
        topic: topic.into(),
        accept_standard_json_only: None,
    };
    let r = call(
        &c,
        RemotingCommand::request_with_header(request_code::GET_ROUTEINFO_BY_TOPIC, &h),
    )
    .await;
    c.close();
    let data = (r.code() == response_code::SUCCESS)
        .then(|| TopicRouteData::parse(r.body()).expect("route body"));
    (r, data)
}

/// Waits (up to `t`) until `sidecar`'s route answer for `topic` has `(write, read)` queues on its
/// virtual broker: the brokers registered the topic and the sidecar learnt it over xDS.
pub async fn wait_for_route(sidecar: SocketAddr, topic: &str, queues: (i32, i32), t: Duration) {
    let deadline = Instant::now() + t;
    loop {
        let (raw, route) = route_via(sidecar, topic).await;
        let got = route
            .as_ref()
            .and_then(|r| r.queue_datas.first())
            .map(|q| (q.write_queue_nums, q.read_queue_nums));
        if got == Some(queues) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sidecar}'s route for {topic} never had {queues:?} queues; last answer: code {} {:?} {got:?}",
            raw.code(),
            raw.remark()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Processes for the interop tests that need routes over two brokers: a control plane,
/// broker-a and broker-b serving one topic (so virtual queues span both), and sidecars.
pub struct TwoBrokerMesh {
    pub dir: PathBuf,
    pub cp: ControlPlaneProc,
    pub brokers: Vec<BrokerProc>,
    pub sidecars: Vec<SidecarProc>,
}

impl TwoBrokerMesh {
    /// Starts it under a work dir named `name`: `topic` with `queues` queues on each broker,
    /// `sidecars` sidecars on loopback ports of their own.
    pub fn start(name: &str, topic: &str, queues: i32, sidecars: usize) -> TwoBrokerMesh {
        python();
        let dir = work_dir(name);
        let cp = ControlPlaneProc::start(&dir);
        let namesrv = cp.remoting.to_string();
        let brokers: Vec<BrokerProc> = ["broker-a", "broker-b"]
            .into_iter()
            .map(|b| {
                BrokerProc::start(
                    &dir,
                    b,
                    "127.0.0.1:0",
                    &["--name", b, "--namesrv", &namesrv],
                )
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for b in &brokers {
            rt.block_on(create_topic(b.addr, topic, queues));
        }
        let sidecars = (0..sidecars)
            .map(|i| {
                SidecarProc::start_at(
                    &dir,
                    &format!("sidecar-{i}"),
                    cp.xds,
                    "127.0.0.1:0",
                    free_port(),
                    &[],
                )
            })
            .collect();
        TwoBrokerMesh {
            dir,
            cp,
            brokers,
            sidecars,
        }
    }
}
