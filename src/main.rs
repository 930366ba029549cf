//! The `rocketmesh` binary: CLI and process wiring.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use rocketmesh::broker::BrokerConfig;
use rocketmesh::cli::{
    BrokerArgs, Cli, Command, ControlPlaneArgs, FlushMode, ProbeMode, SidecarArgs,
};
use rocketmesh::control_plane::{self, ControlPlaneConfig};
use rocketmesh::remoting::advertise::POD_IP_ENV;
use rocketmesh::sidecar::{self, SidecarConfig};
use rocketmesh::{bench, bench_xds, broker_node, demo, inject, inspect, iptables};
use rocketmesh_xds::client::XdsMode;

/// mimalloc instead of glibc malloc: the data path allocates small, short-lived buffers on every
/// worker thread, where glibc's arenas showed up as ~20% of the sidecar's CPU (arena locks,
/// `malloc_consolidate`) in `perf` during `examples/bench/compare.sh`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Inspect(args) => {
            for file in &args.files {
                let bytes = inspect::read_hex(file)?;
                print!("{}", inspect::render_frames(&bytes)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Iptables(args) => {
            // No runtime: it runs the iptables binaries one after the other.
            iptables::run(&args, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inject(args) => run_inject(&args),
        Command::Ctl(args) => {
            rocketmesh::ctl::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async { demo::run(&args, wait_for_signal()).await })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sidecar(args) => {
            // One worker is one event loop on one thread (no work stealing, no cross-thread
            // wake-ups), like an Envoy worker.
            let runtime = if args.workers <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(args.workers)
                    .enable_all()
                    .build()?
            };
            runtime.block_on(run_sidecar(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Broker(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(run_broker(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ControlPlane(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(run_control_plane(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::XdsProbe(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let mode = match args.mode {
                ProbeMode::Delta => XdsMode::Delta,
                ProbeMode::Sotw => XdsMode::Sotw,
            };
            let report = runtime.block_on(bench_xds::probe(
                args.server,
                mode,
                &args.topics,
                std::time::Duration::from_secs(120),
            ));
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchXds(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(bench_xds::run(&args))?;
            println!("{}", report.human());
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(bench::run(&args))?;
            println!("{}", report.human());
            if args.json {
                println!("{}", report.json());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `rocketmesh inject`: the manifest to stdout, notes to stderr; nothing on stdout when refused.
fn run_inject(args: &inject::InjectArgs) -> Result<ExitCode> {
    use std::io::{Read, Write};
    let (name, text) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the manifest from stdin")?;
        ("stdin".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
        (args.file.display().to_string(), text)
    };
    let done = inject::inject(&name, &text, &args.options())?;
    for note in &done.notes {
        eprintln!("rocketmesh inject: {note}");
    }
    if done.injected.is_empty() {
        eprintln!("rocketmesh inject: {name}: no workload to inject; printed unchanged");
    }
    let mut out = std::io::stdout().lock();
    out.write_all(done.output.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the manifest")?;
    Ok(ExitCode::SUCCESS)
}

async fn run_broker(args: BrokerArgs) -> Result<()> {
    let mut config = BrokerConfig::new(args.listen, args.data_dir);
    config.sync_flush = args.flush == FlushMode::Sync;
    config.name = args.name;
    config.cluster = args.cluster;
    config.namesrv = args.namesrv;
    config.advertise = args.advertise;
    config.pod_ip = std::env::var(POD_IP_ENV).ok();
    config.vip_channel = args.vip_channel;
    config.lock_expiry = args.lock_expiry;
    config.read_only_topics = args.read_only_topics;
    config.drain_timeout = args.drain_timeout;
    config.acl = args.acl;
    config.tls = args.tls.build("broker", &[])?;
    config.namesrv_tls = args.upstream_tls.build(args.tls.tls_reload_interval)?;
    let signal = wait_for_signal();
    let node = broker_node::start(config, args.admin).await?;
    // Scripts wait for this line.
    match node.admin_addr {
        Some(admin) => println!("ready {} admin={admin}", node.addr),
        None => println!("ready {}", node.addr),
    }
    signal.await;
    tracing::info!(deadline = ?args.drain_timeout, "draining");
    node.shutdown().await;
    Ok(())
}

async fn run_sidecar(args: SidecarArgs) -> Result<()> {
    let mut config = SidecarConfig::new(args.listen);
    config.advertise = args.advertise.clone();
    config.pod_ip = std::env::var(POD_IP_ENV).ok();
    config.vip_channel = args.vip_channel;
    config.transparent.enabled = args.transparent;
    config.transparent.passthrough_unknown = args.passthrough_unknown;
    config.transparent.nameserver_ports = args.nameserver_ports.clone();
    config.translator = args.translator();
    config.extra_listen = args.extra_listen;
    config.admin = Some(args.admin);
    config.xds = Some(args.xds.clone());
    config.bootstrap = args.bootstrap;
    config.route_config = args.route_config;
    config.drain = args.drain_timeout;
    config.server.frame_timeout = args.frame_timeout;
    config.server.idle_timeout = (!args.idle_timeout.is_zero()).then_some(args.idle_timeout);
    config.xds_reconnect_grace = args.xds_reconnect_grace;
    config.access.credentials = args.credentials;
    config.access.verify_client_signatures = args.verify_client_signatures;
    config.access.authz = args.authz;
    config.upstream.outlier_consecutive = args.outlier_consecutive;
    config.upstream.outlier_base_ejection = args.outlier_base_ejection;
    config.upstream.outlier_max_ejection = args.outlier_max_ejection;
    let reload = args.tls.tls_reload_interval;
    config.tls = args.tls.build("sidecar", &[])?;
    config.upstream.tls = args.upstream_tls.build(reload)?;
    config.xds_tls = args.xds_tls.build(reload)?;
    config.xds_token = args.xds_tls.xds_token.clone();
    let args_drain = args.drain_timeout;
    // Installed before anything binds: once the listener accepts, a SIGTERM is honoured.
    let mut signal = std::pin::pin!(wait_for_signal());
    let sidecar = sidecar::start(config).await?;
    let waiting = async {
        while !sidecar.wait_ready(std::time::Duration::from_secs(5)).await {
            tracing::info!("not ready yet: waiting for the xDS server");
        }
    };
    let signalled = tokio::select! {
        () = waiting => false,
        () = signal.as_mut() => true,
    };
    if !signalled {
        // Scripts wait for this line.
        println!("ready {}", sidecar.addr);
        signal.await;
    }
    tracing::info!(deadline = ?args_drain, "draining");
    sidecar.shutdown().await;
    Ok(())
}

async fn run_control_plane(args: ControlPlaneArgs) -> Result<()> {
    let mut config = ControlPlaneConfig::new(args.remoting);
    config.xds = Some(args.xds);
    config.static_file = args.static_file;
    config.upstream_namesrv = args.upstream_namesrv;
    config.eds = args.eds;
    config.broker_expiry = std::time::Duration::from_secs(args.broker_expiry_secs);
    config.warmup = std::time::Duration::from_secs(args.warmup_secs);
    config.admin = args.admin;
    config.state_dir = args.state_dir.clone();
    config.drain_timeout = args.drain_timeout;
    config.tls = args.tls.build("namesrv", &[])?;
    config.xds_security.tls = args.tls.build("ads", &[rocketmesh_xds::transport::H2])?;
    config.upstream_tls = args.upstream_tls.build(args.tls.tls_reload_interval)?;
    config.cluster_tls = args.cluster_tls.spec();
    if let Some(path) = &args.xds_token_file {
        let tokens = rocketmesh_xds::transport::TokenSet::load(path)
            .with_context(|| format!("reading the xDS token file {}", path.display()))?;
        tokens.watch(args.tls.tls_reload_interval);
        config.xds_security.tokens = Some(tokens);
    }
    let signal = wait_for_signal();
    let cp = control_plane::start(config).await?;
    let xds = cp.xds_addr.map(|a| a.to_string()).unwrap_or_default();
    // Scripts wait for this line.
    match cp.admin_addr {
        Some(admin) => println!(
            "ready remoting={} xds={xds} admin={admin}",
            cp.remoting_addr
        ),
        None => println!("ready remoting={} xds={xds}", cp.remoting_addr),
    }
    signal.await;
    tracing::info!(deadline = ?args.drain_timeout, "draining");
    cp.shutdown().await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM. Both handlers are installed when this is called (inside the
/// runtime), not when the future is first polled, so a signal arriving meanwhile is not lost.
fn wait_for_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers =
        signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)));
    async move {
        match handlers {
            Ok((mut int, mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGINT/SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
