//! The demo's verdict and its printed summary.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::topology::Mesh;
use super::traffic::{Consumed, Produced, XdsView};
use super::{IDLE_TOPIC, MESSAGES, ON_DEMAND_MESSAGES, ON_DEMAND_TOPIC, TOPIC};

pub(super) struct Report {
    pub(super) main: Produced,
    pub(super) main_consumed: Consumed,
    pub(super) on_demand: Produced,
    pub(super) on_demand_consumed: Consumed,
    /// broker name -> per-queue max offsets of DemoTopic, read from the broker itself.
    pub(super) stored: Vec<(String, SocketAddr, Vec<i64>)>,
    pub(super) xds_before: XdsView,
    pub(super) xds_after_main: XdsView,
    pub(super) xds_after_on_demand: XdsView,
    pub(super) control_plane_topics: Vec<String>,
}

impl Report {
    pub(super) fn problems(&self) -> impl Iterator<Item = &String> {
        self.main
            .problems
            .iter()
            .chain(&self.main_consumed.problems)
            .chain(&self.on_demand.problems)
            .chain(&self.on_demand_consumed.problems)
    }

    pub(super) fn total_sent(&self) -> usize {
        self.main.sent.len() + self.on_demand.sent.len()
    }

    pub(super) fn total_received(&self) -> usize {
        self.main_consumed.received + self.on_demand_consumed.received
    }

    pub(super) fn total_acked(&self) -> usize {
        let c = |x: &Consumed| x.acked[0] + x.acked[1];
        c(&self.main_consumed) + c(&self.on_demand_consumed)
    }

    /// Ok when every sample message was produced, consumed once and acked, and DemoTopic's
    /// messages are all on broker-a.
    pub(super) fn verdict(&self) -> Result<(), String> {
        let expected = MESSAGES + ON_DEMAND_MESSAGES;
        let mut reasons: Vec<String> = self.problems().take(5).cloned().collect();
        let more = self.problems().count().saturating_sub(reasons.len());
        if more > 0 {
            reasons.push(format!("and {more} more problems"));
        }
        if self.total_sent() != expected {
            reasons.push(format!("{} of {expected} messages sent", self.total_sent()));
        }
        if self.total_received() != expected {
            reasons.push(format!(
                "{} of {expected} messages consumed",
                self.total_received()
            ));
        }
        if self.total_acked() != expected {
            reasons.push(format!(
                "{} of {expected} acks succeeded",
                self.total_acked()
            ));
        }
        for (name, _, offsets) in &self.stored {
            let n: i64 = offsets.iter().sum();
            let want = if name == "broker-a" {
                MESSAGES as i64
            } else {
                0
            };
            if n != want {
                reasons.push(format!(
                    "{name} stored {n} {TOPIC} messages, expected {want}"
                ));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the sample traffic did not complete: {}",
                reasons.join("; ")
            ))
        }
    }

    pub(super) fn render(&self, mesh: &Mesh) -> String {
        let sidecar = mesh.sidecar.addr;
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "1. Route look-up through the sidecar (GET_ROUTEINFO_BY_TOPIC {TOPIC}):"
        );
        for b in &self.main.route.broker_datas {
            let addrs: Vec<&str> = b.broker_addrs.values().map(String::as_str).collect();
            let queues = self
                .main
                .route
                .queue_datas
                .iter()
                .find(|q| q.broker_name == b.broker_name)
                .map(|q| {
                    format!(
                        "read queues {}, write queues {}  <- the virtual broker",
                        q.read_queue_nums, q.write_queue_nums
                    )
                })
                .unwrap_or_else(|| "no queues (named in pop handles)".into());
            let _ = writeln!(
                w,
                "   broker {:<12} at {}  {queues}",
                b.broker_name,
                addrs.join(",")
            );
        }
        let _ = writeln!(
            w,
            "   every address is the sidecar's ({sidecar}): all traffic comes back through it"
        );

        let _ = writeln!(w);
        let per_queue: Vec<String> = self
            .main
            .per_queue
            .iter()
            .map(|(q, n)| format!("q{q}={n}"))
            .collect();
        let _ = writeln!(
            w,
            "2. Sends: {} of {MESSAGES} SEND_MESSAGE_V2 to {TOPIC} succeeded ({})",
            self.main.sent.len(),
            per_queue.join(" ")
        );
        let _ = writeln!(w, "   stored per broker (each broker's own max offsets):");
        for (name, addr, offsets) in &self.stored {
            let n: i64 = offsets.iter().sum();
            let note = if name == "broker-a" {
                "writable"
            } else {
                "read-only for DemoTopic: never sent to"
            };
            let _ = writeln!(w, "   {name} ({addr}): {n} messages {offsets:?}  ({note})");
        }

        let _ = writeln!(w);
        let c = &self.main_consumed;
        let _ = writeln!(
            w,
            "3. Pops (queueId -1): {} of {} messages received exactly once in {} POPs ({} empty, from brokers with nothing to give)",
            c.received,
            self.main.sent.len(),
            c.pops,
            c.empty_pops
        );
        let served: Vec<String> = c
            .per_broker
            .iter()
            .map(|(b, n)| format!("{b}: {n}"))
            .collect();
        let _ = writeln!(w, "   served by {}", served.join(", "));
        let _ = writeln!(
            w,
            "   acks: {} SUCCESS ({} on the consuming connection, {} on a second connection: the pop handle names its broker, so acks are routed statelessly)",
            c.acked[0] + c.acked[1],
            c.acked[0],
            c.acked[1]
        );

        let _ = writeln!(w);
        let d = &self.on_demand_consumed;
        let _ = writeln!(
            w,
            "4. On-demand xDS: the sidecar subscribes to a topic when traffic first asks for it"
        );
        for (when, v) in [
            ("at start", &self.xds_before),
            (&format!("after {TOPIC}") as &str, &self.xds_after_main),
            (
                &format!("after {ON_DEMAND_TOPIC}") as &str,
                &self.xds_after_on_demand,
            ),
        ] {
            let _ = writeln!(
                w,
                "   {when:<26} topics held [{}]; vhost_subscribes {}, cluster_subscribes {}",
                v.topics.join(", "),
                v.vhost_subscribes,
                v.cluster_subscribes
            );
        }
        let _ = writeln!(
            w,
            "   {ON_DEMAND_TOPIC}: {} sent, {} received, {} acked",
            self.on_demand.sent.len(),
            d.received,
            d.acked[0] + d.acked[1]
        );
        let _ = writeln!(
            w,
            "   the control plane knows {} topics ({}); the sidecar holds only those used",
            self.control_plane_topics.len(),
            self.control_plane_topics.join(", ")
        );

        let _ = writeln!(w);
        let problems: Vec<&String> = self.problems().collect();
        if !problems.is_empty() {
            let _ = writeln!(w, "Problems:");
            for p in problems.iter().take(20) {
                let _ = writeln!(w, "   {p}");
            }
        }
        let expected = MESSAGES + ON_DEMAND_MESSAGES;
        match self.verdict() {
            Ok(()) => {
                let _ = writeln!(
                    w,
                    "Result: OK: {}/{expected} messages produced, {}/{expected} consumed, {}/{expected} acked",
                    self.total_sent(),
                    self.total_received(),
                    self.total_acked()
                );
            }
            Err(reason) => {
                let _ = writeln!(w, "Result: FAILED: {reason}");
            }
        }

        let admin = mesh.admin_url();
        let _ = writeln!(w);
        let _ = writeln!(w, "Admin: {admin}");
        for (path, what) in [
            ("/ready", "readiness"),
            (
                "/stats/prometheus",
                "metrics: the sidecar's, rocketmesh_broker_*{broker=...} and rocketmesh_cp_*",
            ),
            ("/config_dump", "xDS resources held, upstreams, clients"),
            ("/clusters", "endpoints and upstream pool stats"),
        ] {
            let _ = writeln!(w, "   {admin}{path:<18} {what}");
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "Point an SDK at it: nameserver address = the sidecar, {sidecar}"
        );
        let _ = write!(
            w,
            "   e.g. Java producer.setNamesrvAddr(\"{sidecar}\") or NAMESRV_ADDR={sidecar}; topics {TOPIC}, {ON_DEMAND_TOPIC}, {IDLE_TOPIC}"
        );
        s
    }
}
