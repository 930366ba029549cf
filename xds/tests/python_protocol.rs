//! An independent protocol check of the delta ADS server: `tests/python/ads_check.py` drives it
//! with grpcio and Envoy's own generated protos (PyPI `xds-protos`), checking responses field by
//! field, so a mistake shared by our server and our Rust client still shows up.
//!
//! Setup is done here: a venv under `$CARGO_TARGET_TMPDIR/xds-venv` (built once and reused while
//! its installed requirements match `tests/python/requirements.txt`; built in a temporary
//! directory and renamed so parallel runs don't race). If it cannot be built the test fails with
//! pip's output: it is never skipped. `ROCKETMESH_INTEROP_PYTHON` picks the interpreter used to
//! create the venv (default `python3`). The server runs in-process on 127.0.0.1:0; the script is
//! bounded by a timeout and killed by a Drop guard on every path.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocketmesh_xds::catalog::{Catalog, CatalogOptions};
use rocketmesh_xds::model::{BrokerQueues, TopicRouteSpec};
use rocketmesh_xds::server::{AdsServer, ServerOptions};
use serde_json::json;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
/// Installed next to the venv's interpreter: the requirements it was built with.
const STAMP: &str = "rocketmesh-requirements.txt";

fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

fn requirements() -> String {
    std::fs::read_to_string(python_dir().join("requirements.txt"))
        .expect("tests/python/requirements.txt is readable")
}

fn venv_works(venv: &Path) -> bool {
    let python = venv.join("bin/python");
    python.exists()
        && std::fs::read_to_string(venv.join(STAMP)).ok() == Some(requirements())
        && Command::new(&python)
            .args([
                "-c",
                "import grpc; from envoy.service.discovery.v3 import ads_pb2_grpc",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
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
}

/// The venv's python, built (or rebuilt, when the requirements changed) on first use.
fn build_venv() -> Result<PathBuf, String> {
    let venv = tmp_root().join("xds-venv");
    if venv_works(&venv) {
        return Ok(venv.join("bin/python"));
    }
    let base = std::env::var("ROCKETMESH_INTEROP_PYTHON").unwrap_or_else(|_| "python3".into());
    let staging = tmp_root().join(format!("xds-venv.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    run(
        Command::new(&base).arg("-m").arg("venv").arg(&staging),
        &format!("{base} -m venv {}", staging.display()),
    )?;
    let installed = run(
        Command::new(staging.join("bin/python"))
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(["--timeout", "60", "-r"])
            .arg(python_dir().join("requirements.txt")),
        "pip install -r xds/tests/python/requirements.txt",
    )
    .and_then(|()| {
        std::fs::write(staging.join(STAMP), requirements())
            .map_err(|e| format!("cannot write the venv stamp: {e}"))
    });
    if let Err(e) = installed {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    // bin/python keeps working after the rename: it finds pyvenv.cfg and site-packages relative
    // to its own location (the bin/ scripts are not used).
    if std::fs::rename(&staging, &venv).is_err() {
        if venv_works(&venv) {
            // Another process won the race.
            let _ = std::fs::remove_dir_all(&staging);
        } else {
            let _ = std::fs::remove_dir_all(&venv);
            std::fs::rename(&staging, &venv)
                .map_err(|e| format!("cannot move the venv into place: {e}"))?;
        }
    }
    if venv_works(&venv) {
        Ok(venv.join("bin/python"))
    } else {
        Err(format!(
            "{} cannot import grpc and xds-protos after install",
            venv.display()
        ))
    }
}

/// Kills and reaps the child when dropped.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn broker(name: &str, port: u16, perm: u32) -> BrokerQueues {
    BrokerQueues {
        broker_name: name.into(),
        cluster_name: "DefaultCluster".into(),
        addrs: BTreeMap::from([(0, format!("127.0.0.1:{port}"))]),
        perm,
        read_queue_num: 4,
        write_queue_num: 8,
    }
}

fn topic(name: &str, brokers: Vec<BrokerQueues>) -> TopicRouteSpec {
    TopicRouteSpec {
        topic: name.into(),
        brokers,
    }
}

fn expected(brokers: &[BrokerQueues]) -> serde_json::Value {
    brokers
        .iter()
        .map(|b| {
            json!({
                "broker_name": b.broker_name,
                "cluster_name": b.cluster_name,
                "addr": b.addrs[&0],
                "perm": b.perm,
                "read_queue_num": b.read_queue_num,
                "write_queue_num": b.write_queue_num,
            })
        })
        .collect()
}

enum Event {
    Line(String),
    Eof,
}

#[test]
fn envoy_protos_agree_with_the_delta_server() {
    let python = build_venv().unwrap_or_else(|e| {
        panic!("the xDS protocol check needs a Python venv with grpcio and xds-protos; building it failed:\n{e}")
    });

    // Broker a is writable, b read-only; the change swaps them.
    let before = vec![broker("broker-a", 10911, 6), broker("broker-b", 10921, 4)];
    let after = vec![broker("broker-a", 10911, 4), broker("broker-b", 10921, 6)];
    let catalog = Arc::new(Catalog::new(CatalogOptions::default()));
    catalog.set_topic(topic("TopicA", before.clone()));
    catalog.set_topic(topic("TopicB", vec![broker("broker-a", 10911, 6)]));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = AdsServer::new(catalog.clone(), ServerOptions::default());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(server.clone().serve(listener, async move {
        let _ = stop_rx.await;
    }));

    let expect = json!({
        "route_config": "rocketmq",
        "topic": "TopicA",
        "second_topic": "TopicB",
        "unknown_topic": "NoSuchTopic",
        "brokers": expected(&before),
        "brokers_after": expected(&after),
    });
    let mut child = Command::new(&python)
        .arg(python_dir().join("ads_check.py"))
        .arg("--server")
        .arg(addr.to_string())
        .arg("--expect")
        .arg(expect.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ads_check.py");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut guard = ChildGuard(Some(child));

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(Event::Line(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Event::Eof);
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let mut out = Vec::new();
    let mut changed = false;
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Line(line)) => {
                if line.trim() == "CHANGE" && !changed {
                    changed = catalog.set_topic(topic("TopicA", after.clone()));
                    assert!(changed, "the catalog took the change");
                    writeln!(stdin, "CHANGED")
                        .and_then(|()| stdin.flush())
                        .expect("answer the script");
                }
                out.push(line);
            }
            Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    let status = if timed_out {
        drop(guard);
        None
    } else {
        let mut child = guard.0.take().unwrap();
        // stdout closed: the script is exiting.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                _ if Instant::now() >= end => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    };
    let err_text = err_reader.join().unwrap_or_default();
    let report = format!(
        "stdout:\n{}\nstderr:\n{err_text}\nserver stats: {:?}",
        out.join("\n"),
        server.stats()
    );
    let _ = stop_tx.send(());
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), serving).await });

    match status {
        None => panic!("ads_check.py did not finish within {SCRIPT_TIMEOUT:?}\n{report}"),
        Some(s) if !s.success() => panic!("ads_check.py failed ({s})\n{report}"),
        Some(_) => {}
    }
    assert!(changed, "the script never asked for the change\n{report}");
    assert_eq!(
        out.last().map(String::as_str),
        Some("OK"),
        "the script did not end with OK\n{report}"
    );
    let stats = server.stats();
    assert_eq!(stats.nacks, 1, "{stats:?}");
    assert_eq!(
        stats.last_nack.as_ref().map(|n| n.node_id.as_str()),
        Some("python-ads-check")
    );
}
