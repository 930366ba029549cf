//! The real Apache RocketMQ C++ PushConsumer (PyPI `rocketmq==0.4.4`, driven by
//! `tests/it/support/sdk.py`), which only knows PULL, consuming through the sidecar's Pull -> Pop
//! translator; every component a real `rocketmesh` process on loopback:
//!
//! ```text
//! sdk.py produce ──► sidecar-0 ──┐                          ┌── broker-a (4 queues)
//! sdk.py consume ──► sidecar-0 ──┼─ pops / acks / renewals ─┤
//! sdk.py consume ──► sidecar-1 ──┤                          └── broker-b (4 queues)
//! sdk.py consume ──► sidecar-2 ──┘   routes over xDS from one control plane (both brokers register)
//! ```
//!
//! Each consumer has its own sidecar, so each is told it is alone in its group and pulls all 8
//! virtual queues; the brokers' Pop shares the messages among them. Checked: a group of three
//! consumes every message of two producers (duplicates reported) and the translator's metrics;
//! a consumer whose callback hangs has its share redelivered to the others once its sidecar
//! stops renewing (max hold time); RECONSUME_LATER comes back after delay level 3 with
//! reconsumeTimes 1 under the original topic; a sidecar killed with SIGKILL mid-stream loses
//! nothing (redeliveries counted).
//!
//! Consumers of one group run until the test has seen every message (their `GOT` lines as they
//! happen), then stop together (`--stop-file`); their RESULT records decide the assertions.

use crate::support as common;
use crate::support::interop::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Queues of the topic on each broker (8 virtual queues through a sidecar).
const QUEUES: i32 = 4;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A control plane and two brokers registered with it, the test topic created on both.
struct Mesh {
    dir: PathBuf,
    topic: &'static str,
    cp: ControlPlaneProc,
    brokers: Vec<BrokerProc>,
}

impl Mesh {
    fn start(name: &str, topic: &'static str) -> Mesh {
        python(); // build the venv (or fail) before starting anything
        let dir = work_dir(name);
        let cp = ControlPlaneProc::start(&dir);
        let namesrv = cp.remoting.to_string();
        let brokers: Vec<BrokerProc> = ["broker-a", "broker-b"]
            .iter()
            .map(|n| {
                BrokerProc::start(
                    &dir,
                    n,
                    "127.0.0.1:0",
                    &["--name", n, "--namesrv", &namesrv],
                )
            })
            .collect();
        rt().block_on(async {
            for b in &brokers {
                create_topic(b.addr, topic, QUEUES).await;
            }
        });
        Mesh {
            dir,
            topic,
            cp,
            brokers,
        }
    }

    /// A sidecar (logging to `<log>.log`) once its route covers both brokers.
    fn sidecar(&self, log: &str, listen: &str, admin_port: u16, flags: &[&str]) -> SidecarProc {
        let sc = SidecarProc::start_at(&self.dir, log, self.cp.xds, listen, admin_port, flags);
        let queues = 2 * QUEUES;
        rt().block_on(wait_for_route(
            sc.addr,
            self.topic,
            (queues, queues),
            Duration::from_secs(30),
        ));
        sc
    }

    fn stop_file(&self) -> PathBuf {
        self.dir.join("stop-consumers")
    }

    /// A PushConsumer of `group` whose name server is `sidecar`; it runs until the stop file
    /// exists (`--expect` is past what one consumer can see, so the group decides), at most
    /// `max_s` seconds.
    fn consumer(
        &self,
        sidecar: &SidecarProc,
        group: &str,
        max_s: u64,
        extra: &[(&str, &str)],
    ) -> Py {
        let mut args = vec![
            ("namesrv", sidecar.addr.to_string()),
            ("topic", self.topic.to_owned()),
            ("group", group.to_owned()),
            ("expect", u32::MAX.to_string()),
            ("max-seconds", max_s.to_string()),
            ("settle", "0".to_owned()),
            ("stop-file", self.stop_file().to_str().unwrap().to_owned()),
        ];
        args.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        py_start(&self.dir, "consume", &args)
    }

    /// Stops every consumer (stop file) and returns their RESULTs.
    fn stop_consumers(&self, consumers: Vec<Py>) -> Vec<Value> {
        std::fs::write(self.stop_file(), b"").unwrap();
        consumers
            .into_iter()
            .map(|c| c.result(Duration::from_secs(60)))
            .collect()
    }

    fn finish(self) {
        for b in self.brokers {
            b.stop();
        }
        drop(self.cp);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GOT` / `HANG` lines of running consumers, timed as the test reads them.
#[derive(Default)]
struct Tally {
    /// body -> (consumer index, when) per delivery.
    got: BTreeMap<String, Vec<(usize, Instant)>>,
    /// (consumer index, body, when) per callback that hung.
    hung: Vec<(usize, String, Instant)>,
}

impl Tally {
    fn poll(&mut self, consumers: &mut [&mut Py]) {
        for (i, c) in consumers.iter_mut().enumerate() {
            for line in c.ready_lines() {
                let now = Instant::now();
                if let Some(b) = line.strip_prefix("GOT ") {
                    self.got.entry(b.to_owned()).or_default().push((i, now));
                } else if let Some(b) = line.strip_prefix("HANG ") {
                    self.hung.push((i, b.to_owned(), now));
                }
            }
        }
    }

    /// Polls until `done` holds; panics after `limit` saying `what` was not reached.
    fn watch(
        &mut self,
        consumers: &mut [&mut Py],
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&Tally) -> bool,
    ) {
        let end = Instant::now() + limit;
        loop {
            self.poll(consumers);
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{what}: not within {limit:?} ({} distinct bodies delivered, {} hung callbacks)",
                self.got.len(),
                self.hung.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until every body in `sent` was delivered to some consumer (90 s at most).
    fn watch_all_sent(&mut self, consumers: &mut [&mut Py], sent: &BTreeSet<String>, what: &str) {
        self.watch(consumers, Duration::from_secs(90), what, |t| {
            sent.iter().all(|b| t.got.contains_key(b))
        });
    }

    /// Keeps reading for `d`.
    fn watch_for(&mut self, consumers: &mut [&mut Py], d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.poll(consumers);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Bodies delivered to any consumer in `from`.
    fn delivered_to(&self, from: &[usize]) -> BTreeSet<&str> {
        self.got
            .iter()
            .filter(|(_, ds)| ds.iter().any(|(c, _)| from.contains(c)))
            .map(|(b, _)| b.as_str())
            .collect()
    }

    fn deliveries_to(&self, consumer: usize) -> usize {
        self.got
            .values()
            .flatten()
            .filter(|(c, _)| *c == consumer)
            .count()
    }
}

/// The bodies of `produce` RESULTs.
fn sent_bodies(results: &[&Value]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in results {
        for m in r["sent"].as_array().unwrap() {
            assert!(out.insert(s(m, "body")), "body sent twice: {m}");
        }
    }
    out
}

/// What a group's consumers received (their RESULT records).
struct Received {
    /// body -> deliveries (all statuses).
    per_body: BTreeMap<String, Vec<Value>>,
    /// Deliveries per consumer.
    per_consumer: Vec<usize>,
}

impl Received {
    fn of(results: &[Value]) -> Received {
        let mut per_body: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut per_consumer = Vec::new();
        for r in results {
            let recs = r["received"].as_array().unwrap();
            per_consumer.push(recs.len());
            for m in recs {
                per_body.entry(s(m, "body")).or_default().push(m.clone());
            }
        }
        Received {
            per_body,
            per_consumer,
        }
    }

    fn deliveries(&self) -> usize {
        self.per_body.values().map(Vec::len).sum()
    }

    /// Deliveries past the first of each body.
    fn duplicates(&self) -> usize {
        self.deliveries() - self.per_body.len()
    }

    /// Every sent body consumed (CONSUME_SUCCESS) at least once, except those `excused`
    /// (consumed elsewhere); nothing foreign.
    fn assert_complete(&self, sent: &BTreeSet<String>, excused: &BTreeSet<&str>) {
        let ok: BTreeSet<&str> = self
            .per_body
            .iter()
            .filter(|(_, ds)| ds.iter().any(|d| s(d, "status") == "CONSUME_SUCCESS"))
            .map(|(b, _)| b.as_str())
            .collect();
        let missing: Vec<&String> = sent
            .iter()
            .filter(|b| !ok.contains(b.as_str()) && !excused.contains(b.as_str()))
            .collect();
        let foreign: Vec<&String> = self
            .per_body
            .keys()
            .filter(|b| !sent.contains(*b))
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} messages never consumed, e.g. {:?}",
            missing.len(),
            sent.len(),
            &missing[..missing.len().min(10)]
        );
        assert!(foreign.is_empty(), "consumed but never sent: {foreign:?}");
    }
}

/// The sidecar's `outstanding_handles` gauge drops to 0 (every delivered message acked after
/// its consumer committed) within `t`.
fn wait_handles_released(sc: &SidecarProc, t: Duration) {
    let end = Instant::now() + t;
    loop {
        let held = sc
            .stat("rocketmq_rocketmesh_outstanding_handles")
            .expect("outstanding_handles gauge");
        if held == 0.0 {
            return;
        }
        assert!(
            Instant::now() < end,
            "{}: {held} pop handles still held {t:?} after every message was consumed",
            sc.addr
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn counter(sc: &SidecarProc, name: &str) -> f64 {
    sc.stat(&format!("rocketmq_rocketmesh_{name}"))
        .unwrap_or_else(|| panic!("{}: no {name} in /stats/prometheus", sc.addr))
}

mod restarts;
mod sharing;
