//! Shared machinery of the interop tests (`tests/interop_cpp.rs`, `tests/interop_sidecar.rs`):
//! the venv with the real Apache RocketMQ C++ client (PyPI `rocketmq==0.4.4`, `librocketmq.so`
//! driven through its Python ctypes API by `tests/interop/sdk.py`), the `rocketmesh` binaries as
//! child processes, and the driver script's runs.
//!
//! The venv lives under `$CARGO_TARGET_TMPDIR/interop-venv` (built once, reused, built in a
//! temporary directory and renamed so parallel runs don't race) with `pip install
//! rocketmq==0.4.4`. If it cannot be built the tests fail with the pip output: they are never
//! skipped. `ROCKETMESH_INTEROP_PYTHON` picks the interpreter used to create the venv (default
//! `python3`). Every child process is bounded by a timeout and killed by a Drop guard on every
//! path.

// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SDK_VERSION: &str = "rocketmq==0.4.4";

// ----- environment -----

pub fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

pub fn driver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sdk.py")
}

/// A fresh work directory for one test (data dirs, client HOME, logs).
pub fn work_dir(name: &str) -> PathBuf {
    let d = tmp_root().join(format!("interop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("home")).unwrap();
    d
}

pub fn venv_works(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", "import rocketmq.client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
}

pub fn build_venv() -> Result<PathBuf, String> {
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
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ----- child processes -----

/// Kills the child (SIGKILL) and reaps it when dropped, unless already reaped.
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
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
    let log_path = dir.join(format!("{log}.log"));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn rocketmesh {args:?}: {e}"));
    let rx = line_reader(&mut child);
    let mut guard = ChildGuard {
        child: Some(child),
        what: format!("rocketmesh {}", args.first().copied().unwrap_or_default()),
    };
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
                    "rocketmesh {args:?} did not print `ready ...` ({e:?}); log: {}",
                    log_path.display()
                );
            }
        }
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
}

impl ControlPlaneProc {
    pub fn start(dir: &Path) -> ControlPlaneProc {
        let args = [
            "control-plane",
            "--remoting",
            "127.0.0.1:0",
            "--xds",
            "127.0.0.1:0",
        ];
        let (guard, ready) = start_rocketmesh(dir, "control-plane", &args);
        let field = |k: &str| -> SocketAddr {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("control plane ready line without {k}: {ready}"))
        };
        ControlPlaneProc {
            remoting: field("remoting="),
            xds: field("xds="),
            guard,
        }
    }
}

/// A `rocketmesh sidecar` fed by the ADS server at `xds`.
pub struct SidecarProc {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
}

impl SidecarProc {
    pub fn start(dir: &Path, xds: SocketAddr) -> SidecarProc {
        let xds = xds.to_string();
        let args = [
            "sidecar",
            "--xds",
            &xds,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ];
        let (guard, ready) = start_rocketmesh(dir, "sidecar", &args);
        let addr = ready.parse().expect("ready <addr>");
        SidecarProc { guard, addr }
    }
}

/// A running driver script.
pub struct Py {
    guard: ChildGuard,
    lines: Receiver<String>,
    mode: String,
    seen: Vec<String>,
}

pub fn py_start(dir: &Path, mode: &str, args: &[(&str, String)]) -> Py {
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
    pub fn next_line(&mut self, t: Duration) -> Option<String> {
        match self.lines.recv_timeout(t) {
            Ok(l) => {
                self.seen.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
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
            ("namesrv", namesrv.to_owned()),
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
    let sent = r["sent"].as_array().unwrap();
    assert_eq!(sent.len(), sync + oneway + orderly);
    let mut ids = BTreeSet::new();
    for m in sent {
        if s(m, "kind") != "oneway" {
            assert_eq!(s(m, "status"), "OK", "send result {m}");
            let id = s(m, "msg_id");
            assert!(!id.is_empty(), "empty msg id: {m}");
            assert!(ids.insert(id.clone()), "msg id {id} returned twice");
        }
    }
    r
}

/// [`produce_with`] against a standalone broker (its own name server); the sent records.
pub fn produce(dir: &Path, b: &BrokerProc, topic: &str, prefix: &str, plan: Plan) -> Vec<Value> {
    let r = produce_with(dir, &b.namesrv(), topic, prefix, plan);
    r["sent"].as_array().unwrap().clone()
}
