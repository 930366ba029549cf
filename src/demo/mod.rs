//! `rocketmesh demo`: the whole mesh in one process, no setup.
//!
//! It starts a control plane (nameserver role + ADS server), two broker nodes registered with it
//! over Remoting (broker-a serves `DemoTopic` read-write, broker-b read-only, so sends must go to
//! broker-a: subset routing) and a sidecar that learns routes from the control plane on demand,
//! all on 127.0.0.1 with a temporary data directory. Then it plays an SDK through the sidecar:
//! route look-up, SEND_MESSAGE_V2 over the virtual write queues, POP (queueId -1) and ACK, half
//! of the acks on a second connection (the pop handle names its broker, so any connection can
//! ack). A second topic shows on-demand xDS: the sidecar subscribes to it only when traffic asks,
//! and a third topic, registered but never used, is never fetched. It prints what happened, then
//! keeps serving until a signal (or exits with `--once`: 0 only if every message made it).

//!
//! Layout: [`topology`] starts and stops the parts (control plane, brokers, sidecar; stopped in
//! the reverse order), [`traffic`] plays the SDK, [`report`] judges and prints what happened.

mod report;
mod topology;
mod traffic;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use self::topology::Mesh;
use self::traffic::sample_traffic;
use crate::cli::DemoArgs;

/// Writable on broker-a, read-only on broker-b.
const TOPIC: &str = "DemoTopic";
/// On broker-a; the sidecar hears of it only when the sample traffic asks.
const ON_DEMAND_TOPIC: &str = "DemoOnDemandTopic";
/// On broker-a; registered with the control plane, never asked for.
const IDLE_TOPIC: &str = "DemoIdleTopic";
const QUEUES: i32 = 4;
const MESSAGES: usize = 200;
const ON_DEMAND_MESSAGES: usize = 20;
const PRODUCER_GROUP: &str = "demo_producer";
const CONSUMER_GROUP: &str = "demo_consumer";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Deadline of one request.
const RPC: Duration = Duration::from_secs(5);
/// How long the brokers' registrations may take to reach the control plane.
const REGISTRATION_LIMIT: Duration = Duration::from_secs(15);
/// How long the sidecar may take to connect to the ADS server.
const READY_LIMIT: Duration = Duration::from_secs(15);
/// How long consuming one topic's sample may take.
const CONSUME_LIMIT: Duration = Duration::from_secs(30);
/// Long-poll time of one POP (an empty broker answers after it).
const POP_POLL: Duration = Duration::from_millis(300);
const POP_INVISIBLE: Duration = Duration::from_secs(60);
/// Longest wait for each component to stop.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// Runs the demo. Without `--once` it serves until `stop` completes (SIGINT/SIGTERM).
pub async fn run(args: &DemoArgs, stop: impl Future<Output = ()>) -> Result<()> {
    tokio::pin!(stop);
    ensure_free(args.listen, "--listen")?;
    ensure_free(args.admin, "--admin")?;
    let dir = DataDir::create()?;
    let mesh = tokio::select! {
        m = Mesh::start(args, dir.path()) => m?,
        () = &mut stop => bail!("interrupted while starting"),
    };
    println!("{}", mesh.describe(dir.path()));
    let outcome = tokio::select! {
        r = sample_traffic(&mesh) => Some(r),
        () = &mut stop => None,
    };
    let Some(outcome) = outcome else {
        mesh.shutdown().await;
        bail!("interrupted during the sample traffic");
    };
    let verdict = match outcome {
        Ok(report) => {
            println!("{}", report.render(&mesh));
            report.verdict()
        }
        Err(e) => Err(format!("the sample traffic failed: {e:#}")),
    };
    if args.once {
        mesh.shutdown().await;
        return verdict.map_err(anyhow::Error::msg);
    }
    if let Err(reason) = &verdict {
        println!("WARNING: {reason}");
    }
    println!("Serving until Ctrl-C (SIGINT) or SIGTERM.");
    stop.await;
    println!("Stopping: draining the sidecar, stopping the brokers and the control plane.");
    mesh.shutdown().await;
    println!("Stopped; removed {}.", dir.path().display());
    Ok(())
}

/// Fails with a clear message when `addr` (a fixed port) is taken.
fn ensure_free(addr: SocketAddr, flag: &str) -> Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "{addr} is already in use (another nameserver, sidecar or demo?): \
             pick a free address, e.g. `{flag} 127.0.0.1:0` for any free port"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot bind {addr} ({flag})")),
    }
}

/// The temporary data directory, removed when dropped (every exit path but a kill). Named
/// `rocketmesh-demo-{pid}` (no random part) so the printed layout and a test can find it.
struct DataDir(tempfile::TempDir);

impl DataDir {
    fn create() -> Result<Self> {
        let name = format!("rocketmesh-demo-{}", std::process::id());
        let stale = std::env::temp_dir().join(&name);
        if stale.exists() {
            std::fs::remove_dir_all(&stale)
                .with_context(|| format!("removing a stale {}", stale.display()))?;
        }
        let dir = tempfile::Builder::new()
            .prefix(&name)
            .rand_bytes(0)
            .tempdir()
            .with_context(|| format!("creating {}", stale.display()))?;
        Ok(DataDir(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}
