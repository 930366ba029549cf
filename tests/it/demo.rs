//! `rocketmesh demo` as a user runs it: the real binary, ports 0 (so tests never collide with a
//! running nameserver), `--once` for the verdict, and the serving mode stopped by SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Longest a demo run may take (it needs a few seconds; the machine may be busy).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The child process, killed if the test ends before it does.
struct Demo {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(extra: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
            .args(["--log", "warn", "demo", "--listen", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting rocketmesh demo");
        let out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (tx, stdout) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Demo {
            child,
            stdout,
            stderr: Some(stderr),
        }
    }

    fn data_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("rocketmesh-demo-{}", self.child.id()))
    }

    /// Stdout lines until one contains `marker` (or the process ends / the deadline passes).
    fn read_until(&self, marker: &str, deadline: Instant, seen: &mut Vec<String>) -> bool {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(marker);
                    seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Waits for the exit, then returns the status with all of stdout and stderr.
    fn finish(mut self, deadline: Instant, mut seen: Vec<String>) -> (ExitStatus, String, String) {
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("waiting for the demo") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit in time; output so far:\n{}",
                seen.join("\n")
            );
            thread::sleep(Duration::from_millis(50));
        };
        // The reader thread ends at EOF, closing the channel.
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            seen.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status, seen.join("\n"), stderr)
    }
}

fn line_with<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}"))
}

#[test]
fn once_produces_and_consumes_every_message_and_exits_0() {
    let demo = Demo::start(&["--once"]);
    let dir = demo.data_dir();
    let (status, out, err) = demo.finish(Instant::now() + RUN_LIMIT, Vec::new());
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(out.contains("Result: OK: 220/220 messages produced, 220/220 consumed, 220/220 acked"));
    // subset routing: every DemoTopic send went to the writable broker
    assert!(
        line_with(&out, "broker-a (").contains("200 messages"),
        "{out}"
    );
    assert!(
        line_with(&out, "broker-b (").contains(": 0 messages"),
        "{out}"
    );
    // the route answer shows the virtual broker at the sidecar's address
    assert!(
        line_with(&out, "broker rocketmesh").contains("write queues 4"),
        "{out}"
    );
    // acks on both connections
    assert!(
        line_with(&out, "acks:").contains("100 on the consuming connection, 100 on a second"),
        "{out}"
    );
    // on demand: only the topics used, subscribed when first asked for
    assert!(
        line_with(&out, "at start").contains("topics held []"),
        "{out}"
    );
    let after = line_with(&out, "after DemoOnDemandTopic");
    assert!(
        after.contains("[DemoOnDemandTopic, DemoTopic]") && after.contains("vhost_subscribes 2"),
        "{out}"
    );
    assert!(!after.contains("DemoIdleTopic"), "{out}");
    assert!(out.contains("/stats/prometheus"), "{out}");
    assert!(out.contains("nameserver address = the sidecar"), "{out}");
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// The address in `line` after `prefix` (up to the next space or `)`).
fn addr_after(line: &str, prefix: &str) -> SocketAddr {
    let rest = &line[line.find(prefix).expect(prefix) + prefix.len()..];
    let end = rest.find([' ', ')']).unwrap_or(rest.len());
    rest[..end].parse().expect("an address")
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn serves_until_sigterm_then_stops_and_cleans_up() {
    let demo = Demo::start(&[]);
    let dir = demo.data_dir();
    let deadline = Instant::now() + RUN_LIMIT;
    let mut seen = Vec::new();
    assert!(
        demo.read_until("Serving until", deadline, &mut seen),
        "no serving line:\n{}",
        seen.join("\n")
    );
    let out = seen.join("\n");
    assert!(out.contains("Result: OK"), "{out}");
    assert!(dir.exists(), "the data dir should exist while serving");
    // still serving: the sidecar accepts connections, the admin server answers
    let sidecar = addr_after(line_with(&out, "  sidecar "), "sidecar        ");
    TcpStream::connect_timeout(&sidecar, Duration::from_secs(5)).expect("sidecar connect");
    let admin = addr_after(line_with(&out, "Admin: "), "Admin: http://");
    let ready = http_get(admin, "/ready");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    // One recorder for the whole process: the brokers' and the control plane's series are
    // scraped from the sidecar's admin server too (the control plane publishes once a second).
    let scraped = |series: &str| {
        let text = http_get(admin, "/stats/prometheus");
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    assert_eq!(
        scraped(r#"rocketmesh_broker_messages_appended_total{broker="broker-a"}"#),
        Some(220.0)
    );
    let end = Instant::now() + Duration::from_secs(10);
    while scraped("rocketmesh_cp_registered_brokers") != Some(2.0) {
        assert!(
            Instant::now() < end,
            "rocketmesh_cp_registered_brokers is not 2"
        );
        thread::sleep(Duration::from_millis(50));
    }

    let killed = Command::new("kill")
        .args(["-TERM", &demo.child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(killed.success());
    let (status, out, err) = demo.finish(deadline, seen);
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(out.contains("Stopped; removed"), "{out}");
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
