//! The demo's parts: start in order (control plane, brokers, sidecar), stop in reverse.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rocketmesh_filters::codec::body::perm;
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::CreateTopicRequestHeader;
use rocketmesh_filters::codec::RemotingCommand;

use super::{
    IDLE_TOPIC, LOCALHOST, ON_DEMAND_TOPIC, QUEUES, READY_LIMIT, REGISTRATION_LIMIT, RPC,
    STOP_LIMIT, TOPIC,
};
use crate::broker::BrokerConfig;
use crate::broker_node::{self, BrokerNode};
use crate::cli::DemoArgs;
use crate::control_plane::{self, ControlPlane, ControlPlaneConfig};
use crate::remoting::RemotingClient;
use crate::sdk;
use crate::sidecar::{self, Sidecar, SidecarConfig};

/// Every running component.
pub(super) struct Mesh {
    pub(super) control_plane: ControlPlane,
    /// (name, handle), broker-a first.
    pub(super) brokers: Vec<(&'static str, BrokerNode)>,
    pub(super) sidecar: Sidecar,
}

impl Mesh {
    pub(super) async fn start(args: &DemoArgs, dir: &Path) -> Result<Mesh> {
        let mut cfg = ControlPlaneConfig::new(local(0));
        cfg.xds = Some(local(0));
        // Its brokers start with it in this process: nothing registered before to wait for, and
        // topics the demo's SDKs name for the first time are auto-created at once.
        cfg.warmup = Duration::ZERO;
        let control_plane = control_plane::start(cfg)
            .await
            .context("starting the control plane")?;
        let mut brokers = Vec::new();
        let started = start_brokers(&control_plane, dir, &mut brokers).await;
        let sidecar = match started {
            Ok(()) => start_sidecar(args, &control_plane).await,
            Err(e) => Err(e),
        };
        match sidecar {
            Ok(sidecar) => Ok(Mesh {
                control_plane,
                brokers,
                sidecar,
            }),
            Err(e) => {
                stop_brokers(brokers).await;
                stop_within("the control plane", control_plane.shutdown()).await;
                Err(e)
            }
        }
    }

    pub(super) fn xds_addr(&self) -> String {
        self.control_plane
            .xds_addr
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    pub(super) fn admin_url(&self) -> String {
        self.sidecar
            .admin_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default()
    }

    pub(super) fn describe(&self, dir: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "rocketmesh demo: everything in this process, on 127.0.0.1"
        );
        let _ = writeln!(
            s,
            "  control plane  remoting {}, xDS {}",
            self.control_plane.remoting_addr,
            self.xds_addr()
        );
        for (name, b) in &self.brokers {
            let topics = if *name == "broker-a" {
                format!("{TOPIC} read-write, {ON_DEMAND_TOPIC}, {IDLE_TOPIC}")
            } else {
                format!("{TOPIC} read-only")
            };
            let _ = writeln!(s, "  {name:<13}  {}  {topics}", b.addr);
        }
        let _ = writeln!(
            s,
            "  sidecar        {}  (admin {})",
            self.sidecar.addr,
            self.admin_url()
        );
        let _ = write!(s, "  data dir       {} (removed at exit)", dir.display());
        s
    }

    /// Sidecar drain first, then the brokers (they unregister), then the control plane.
    pub(super) async fn shutdown(self) {
        stop_within("the sidecar", self.sidecar.shutdown()).await;
        stop_brokers(self.brokers).await;
        stop_within("the control plane", self.control_plane.shutdown()).await;
    }
}

pub(super) fn local(port: u16) -> SocketAddr {
    SocketAddr::new(LOCALHOST, port)
}

pub(super) async fn stop_within(what: &str, stopping: impl Future<Output = ()>) {
    if tokio::time::timeout(STOP_LIMIT, stopping).await.is_err() {
        tracing::warn!("{what} did not stop within {STOP_LIMIT:?}");
    }
}

pub(super) async fn stop_brokers(brokers: Vec<(&'static str, BrokerNode)>) {
    for (name, b) in brokers {
        stop_within(name, b.shutdown()).await;
    }
}

/// Starts broker-a and broker-b (pushed to `out` as they start, so a failure can stop them),
/// creates the topics and waits until the control plane has both registrations.
pub(super) async fn start_brokers(
    cp: &ControlPlane,
    dir: &Path,
    out: &mut Vec<(&'static str, BrokerNode)>,
) -> Result<()> {
    for (name, read_only) in [("broker-a", vec![]), ("broker-b", vec![TOPIC.to_owned()])] {
        let mut cfg = BrokerConfig::new(local(0), dir.join(name));
        cfg.name = name.into();
        cfg.namesrv = Some(cp.remoting_addr.to_string());
        cfg.read_only_topics = read_only;
        let handle = broker_node::start(cfg, None)
            .await
            .with_context(|| format!("starting {name}"))?;
        out.push((name, handle));
    }
    // broker-b serves its read-only topics from its configuration; broker-a gets its topics the
    // way an admin tool creates them.
    let broker_a = out[0].1.addr;
    let admin = RemotingClient::connect_timeout(broker_a, RPC, None)
        .await
        .context("connecting to broker-a")?;
    for topic in [TOPIC, ON_DEMAND_TOPIC, IDLE_TOPIC] {
        create_topic(&admin, topic).await?;
    }
    admin.close();
    wait_registered(cp).await
}

pub(super) async fn create_topic(client: &RemotingClient, topic: &str) -> Result<()> {
    let header = CreateTopicRequestHeader {
        topic: topic.to_owned(),
        default_topic: sdk::DEFAULT_TOPIC.into(),
        read_queue_nums: QUEUES,
        write_queue_nums: QUEUES,
        perm: perm::PERM_READ | perm::PERM_WRITE,
        topic_filter_type: "SINGLE_TAG".into(),
        topic_sys_flag: Some(0),
        order: false,
        ..CreateTopicRequestHeader::default()
    };
    let req = RemotingCommand::request_with_header(request_code::UPDATE_AND_CREATE_TOPIC, &header);
    let resp = client
        .invoke(req, RPC)
        .await
        .with_context(|| format!("creating {topic}"))?;
    if resp.code() != response_code::SUCCESS {
        bail!(
            "creating {topic} refused: code {} {}",
            resp.code(),
            resp.remark().unwrap_or_default()
        );
    }
    Ok(())
}

/// Waits until the control plane routes DemoTopic to a writable broker-a and a read-only
/// broker-b, and knows the other two topics.
pub(super) async fn wait_registered(cp: &ControlPlane) -> Result<()> {
    let deadline = Instant::now() + REGISTRATION_LIMIT;
    let ready = || {
        let Some(route) = cp.catalog.topic_route(TOPIC) else {
            return false;
        };
        let perm_of = |name: &str| {
            route
                .brokers
                .iter()
                .find(|b| b.broker_name == name)
                .map(|b| b.perm as i32)
        };
        let writable = |p: i32| p & perm::PERM_WRITE != 0;
        let a_ok = perm_of("broker-a").is_some_and(writable);
        let b_ok = perm_of("broker-b").is_some_and(|p| !writable(p) && p & perm::PERM_READ != 0);
        a_ok && b_ok
            && cp.catalog.topic_route(ON_DEMAND_TOPIC).is_some()
            && cp.catalog.topic_route(IDLE_TOPIC).is_some()
    };
    while !ready() {
        if Instant::now() >= deadline {
            bail!("the brokers' registrations did not reach the control plane within {REGISTRATION_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub(super) async fn start_sidecar(args: &DemoArgs, cp: &ControlPlane) -> Result<Sidecar> {
    let xds = cp.xds_addr.context("the control plane serves no xDS")?;
    let mut cfg = SidecarConfig::new(args.listen);
    cfg.admin = Some(args.admin);
    cfg.xds = Some(xds.to_string());
    let sidecar = sidecar::start(cfg).await.map_err(|e| {
        let in_use = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
        });
        if in_use {
            e.context(
                "an address is already in use: pick free ones, e.g. \
                 `--listen 127.0.0.1:0 --admin 127.0.0.1:0`",
            )
        } else {
            e.context("starting the sidecar")
        }
    })?;
    if !sidecar.wait_ready(READY_LIMIT).await {
        stop_within("the sidecar", sidecar.shutdown()).await;
        bail!("the sidecar did not become ready within {READY_LIMIT:?} (xDS not connected)");
    }
    Ok(sidecar)
}
