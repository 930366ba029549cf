//! `rocketmesh bench-xds`: what on-demand xDS saves at catalogue scale.
//!
//! Starts a control plane in-process, registers N topics with it the way brokers do (REGISTER_BROKER
//! over Remoting, from two brokers), then runs the xDS client as separate processes
//! (`rocketmesh xds-probe`, one per mode, so each has its own memory figures) that ask for K topics:
//! * delta (on-demand VHDS + CDS): subscribes to exactly the K topics;
//! * SotW (wildcard CDS + the whole RouteConfiguration): receives the full catalogue.
//!
//! Each probe prints one JSON line: time to the first route, time to all K, the number of topics it
//! ended up holding, and its RSS growth / peak. The bench prints both side by side with ratios.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use rocketmesh_xds::client::{ClientConfig, XdsClient, XdsMode};

use crate::cli::BenchXdsArgs;
use crate::control_plane::{self, ControlPlaneConfig};

/// What one probe process measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    pub mode: String,
    pub topics_asked: usize,
    pub topics_resolved: usize,
    /// Topics present in the client's snapshot at the end (K for delta, N for SotW).
    pub topics_held: usize,
    pub first_route_ms: f64,
    pub all_routes_ms: f64,
    pub rss_baseline_kib: u64,
    pub rss_kib: u64,
    pub rss_peak_kib: u64,
    pub errors: Vec<String>,
}

impl ProbeReport {
    /// Memory the client added over the process's baseline.
    pub fn rss_growth_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.rss_baseline_kib)
    }

    pub fn peak_growth_kib(&self) -> u64 {
        self.rss_peak_kib.saturating_sub(self.rss_baseline_kib)
    }
}

/// (VmRSS, VmHWM) of this process in KiB, from /proc/self/status.
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs one xDS client against `server`, asks for `topics` at once and measures.
pub async fn probe(
    server: SocketAddr,
    mode: XdsMode,
    topics: &[String],
    timeout: Duration,
) -> ProbeReport {
    let (rss_baseline_kib, _) = rss_kib();
    let mut cfg = ClientConfig::new(server.to_string());
    cfg.mode = mode;
    cfg.route_timeout = timeout;
    // A SotW RouteConfiguration of a big catalogue arrives as one message.
    cfg.max_message_bytes = 512 << 20;
    let client = XdsClient::start(cfg);
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel(topics.len().max(1));
    for t in topics {
        let (c, t, tx) = (client.clone(), t.clone(), tx.clone());
        tokio::spawn(async move {
            let r = c.route(&t).await.map(|_| ()).map_err(|e| e.to_string());
            let _ = tx.send((start.elapsed(), r)).await;
        });
    }
    drop(tx);
    let mut first = None;
    let mut last = Duration::ZERO;
    let mut resolved = 0;
    let mut errors = Vec::new();
    while let Some((at, r)) = rx.recv().await {
        match r {
            Ok(()) => {
                resolved += 1;
                first.get_or_insert(at);
                last = last.max(at);
            }
            Err(e) => errors.push(e),
        }
    }
    // Let the allocator settle and any trailing pushes land before reading memory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss, peak) = rss_kib();
    let held = client.snapshot().topics.len();
    client.shutdown();
    ProbeReport {
        mode: format!("{mode:?}").to_lowercase(),
        topics_asked: topics.len(),
        topics_resolved: resolved,
        topics_held: held,
        first_route_ms: first.unwrap_or_default().as_secs_f64() * 1e3,
        all_routes_ms: last.as_secs_f64() * 1e3,
        rss_baseline_kib,
        rss_kib: rss,
        rss_peak_kib: peak,
        errors,
    }
}

/// Runs `rocketmesh xds-probe` as a child process and parses its JSON line.
pub async fn run_probe_process(
    server: SocketAddr,
    mode: &str,
    topics: &[String],
) -> Result<ProbeReport> {
    let exe = std::env::current_exe().context("locating the rocketmesh binary")?;
    let child = tokio::process::Command::new(exe)
        .args([
            "xds-probe",
            "--server",
            &server.to_string(),
            "--mode",
            mode,
            "--topics",
            &topics.join(","),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting xds-probe")?;
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .context("xds-probe took more than 300 s")??;
    if !out.status.success() {
        bail!("xds-probe ({mode}) failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("xds-probe printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("parsing xds-probe output {line:?}"))
}

/// Both runs side by side.
#[derive(Debug, Clone, Serialize)]
pub struct XdsScaleReport {
    pub topics_registered: usize,
    pub register_ms: f64,
    pub delta: ProbeReport,
    pub sotw: ProbeReport,
}

impl XdsScaleReport {
    pub fn human(&self) -> String {
        let row = |r: &ProbeReport| {
            format!(
                "{:<6} asked {:>3}  resolved {:>3}  held {:>7}  first route {:>9.1} ms  all {:>9.1} ms  RSS +{:>8} KiB (peak +{} KiB)",
                r.mode,
                r.topics_asked,
                r.topics_resolved,
                r.topics_held,
                r.first_route_ms,
                r.all_routes_ms,
                r.rss_growth_kib(),
                r.peak_growth_kib()
            )
        };
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        format!(
            "control plane: {} topics registered by 2 brokers in {:.0} ms\n{}\n{}\nSotW / delta: memory {:.1}x (peak {:.1}x), time to first route {:.1}x, topics held {}x",
            self.topics_registered,
            self.register_ms,
            row(&self.delta),
            row(&self.sotw),
            ratio(self.sotw.rss_growth_kib() as f64, self.delta.rss_growth_kib().max(1) as f64),
            ratio(self.sotw.peak_growth_kib() as f64, self.delta.peak_growth_kib().max(1) as f64),
            ratio(self.sotw.first_route_ms, self.delta.first_route_ms),
            self.sotw.topics_held / self.delta.topics_held.max(1),
        )
    }
}

/// Runs the whole comparison.
pub async fn run(args: &BenchXdsArgs) -> Result<XdsScaleReport> {
    if args.subscribe == 0 || args.subscribe > args.topics {
        bail!("--subscribe must be between 1 and --topics");
    }
    let mut config = ControlPlaneConfig::new("127.0.0.1:0".parse()?);
    config.xds = Some("127.0.0.1:0".parse()?);
    // Every topic is registered before the probes subscribe; no restart to wait out.
    config.warmup = std::time::Duration::ZERO;
    // A 100k-topic SotW RouteConfiguration is one message; let it through.
    config.xds_options.max_message_bytes = 512 << 20;
    let cp = control_plane::start(config).await?;
    let xds = cp.xds_addr.context("no xDS listener")?;
    let topics: Vec<String> = (0..args.topics)
        .map(|i| format!("BenchTopic{i:06}"))
        .collect();
    let start = Instant::now();
    // Two brokers hold every topic; broker-b read-only, like the demo's subset routing.
    let _a = register(cp.remoting_addr, "broker-a", "127.0.0.1:10911", &topics, 6).await?;
    let _b = register(cp.remoting_addr, "broker-b", "127.0.0.1:10921", &topics, 4).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while cp.catalog.stats().get("topics").copied().unwrap_or(0) < args.topics as u64 {
        if Instant::now() > deadline {
            bail!("the control plane did not take the registrations within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let register_ms = start.elapsed().as_secs_f64() * 1e3;
    let step = args.topics / args.subscribe;
    let wanted: Vec<String> = (0..args.subscribe)
        .map(|i| topics[i * step].clone())
        .collect();
    let delta = run_probe_process(xds, "delta", &wanted).await?;
    let sotw = run_probe_process(xds, "sotw", &wanted).await?;
    cp.shutdown().await;
    for r in [&delta, &sotw] {
        if r.topics_resolved != wanted.len() {
            bail!(
                "{} probe resolved {} of {} topics: {:?}",
                r.mode,
                r.topics_resolved,
                wanted.len(),
                r.errors
            );
        }
    }
    Ok(XdsScaleReport {
        topics_registered: args.topics,
        register_ms,
        delta,
        sotw,
    })
}

/// Registers `topics` with the nameserver at `namesrv` as broker `name` (compressed body, like a
/// 5.x broker with many topics). The returned connection must stay open: the nameserver role
/// drops brokers whose registration connection closes.
async fn register(
    namesrv: SocketAddr,
    name: &str,
    addr: &str,
    topics: &[String],
    perm: i32,
) -> Result<crate::remoting::RemotingClient> {
    use rocketmesh_filters::codec::body::{TopicConfig, TopicConfigSerializeWrapper};
    use rocketmesh_filters::codec::codes::response_code;

    let mut wrapper = TopicConfigSerializeWrapper::default();
    for t in topics {
        let mut cfg = TopicConfig::new(t.clone());
        cfg.perm = perm;
        cfg.read_queue_nums = 4;
        cfg.write_queue_nums = 4;
        wrapper.topic_config_table.insert(t.clone(), cfg);
    }
    let req =
        crate::broker::register::register_request(name, addr, "DefaultCluster", wrapper, true)
            .context("encoding the registration")?;
    let client =
        crate::remoting::RemotingClient::connect_timeout(namesrv, Duration::from_secs(5), None)
            .await?;
    let resp = client.invoke(req, Duration::from_secs(60)).await?;
    if resp.code() != response_code::SUCCESS {
        bail!("REGISTER_BROKER refused: {:?}", resp.remark());
    }
    Ok(client)
}
