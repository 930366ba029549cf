//! The `rocketmesh` binary: CLI and process wiring.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use rocketmesh::cli::{Cli, Command};
use rocketmesh::{bench, demo, inspect};

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
        Command::Demo(args) => demo::run(args.once).map(|()| ExitCode::SUCCESS),
        Command::Sidecar(_) => not_built("sidecar", "The sidecar data path"),
        Command::Broker(_) => not_built("broker", "The bundled broker node"),
        Command::ControlPlane(_) => {
            not_built("control-plane", "Control plane and on-demand xDS client")
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

fn not_built(what: &str, issue: &str) -> Result<ExitCode> {
    eprintln!("rocketmesh {what}: not built yet (tracked in the issue \"{issue}\")");
    Ok(ExitCode::from(2))
}
