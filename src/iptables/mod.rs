//! `rocketmesh iptables install|remove|list`: what a pod's init container runs (like
//! istio-init) so the application's RocketMQ connections reach the sidecar without any change to
//! the application: outbound TCP to the nameserver and broker ports (and/or to given ranges) is
//! REDIRECTed to the sidecar's port, except the sidecar's own connections (by uid) and loopback.
//!
//! * `rules`: the rules and the install/remove plans as pure functions (unit-tested).
//! * `exec`: which iptables binaries (`--backend`), running them, what their failures mean.
//!
//! The sidecar must listen where redirected connections arrive: `127.0.0.1:<redirect-to>` for
//! IPv4 and `[::1]:<redirect-to>` for IPv6 (`--extra-listen [::1]:9876`), and run as the excluded
//! uid.

pub mod exec;
pub mod rules;

#[cfg(test)]
mod tests;

use std::io::Write;

use clap::{Args, ValueEnum};

use exec::{Backend, Tool};
use rules::{Cidr, Family, NatState, Redirect};

/// Why `rocketmesh iptables` failed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error(
        "`{command}` was refused: iptables needs CAP_NET_ADMIN. Run `rocketmesh iptables` as \
         root or with CAP_NET_ADMIN, e.g. in an init container with \
         `securityContext.capabilities.add: [NET_ADMIN]` (iptables-legacy also needs NET_RAW). \
         iptables said: {stderr}"
    )]
    NeedsNetAdmin { command: String, stderr: String },
    #[error(
        "{program} not found on PATH or in /usr/sbin, /sbin: install the Debian package \
         `iptables` (`apt-get install iptables`; other distributions also call it iptables)"
    )]
    MissingBinary { program: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--cidrs names IPv6 ranges, but this namespace has no usable IPv6 nat table: {reason}"
    )]
    Ipv6Unavailable { reason: String },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Install (or refresh) the redirect rules.
    Install,
    /// Delete every rule `install` added (nothing installed is not an error).
    Remove,
    /// Print the rules rocketmesh has installed, for both families.
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// iptables-legacy if the legacy backend already holds nat rules in this network namespace,
    /// else iptables-nft (never mix the two in one namespace).
    Auto,
    /// iptables-nft / ip6tables-nft (nf_tables).
    Nft,
    /// iptables-legacy / ip6tables-legacy (x_tables).
    Legacy,
}

impl IptablesError {
    /// One clause for a note: the refusal without the advice on how to grant the capability.
    fn brief(&self) -> String {
        match self {
            IptablesError::NeedsNetAdmin { command, .. } => {
                format!("`{command}` was refused: no CAP_NET_ADMIN")
            }
            other => other.to_string(),
        }
    }
}

/// `rocketmesh iptables`: the flags are fixed by the command line.
#[derive(Debug, Args)]
#[command(after_help = "\
What is redirected (nat table, OUTPUT, chain ROCKETMESH_OUTPUT, IPv4 and IPv6):
  outbound TCP whose destination port is in --ports OR whose destination is in --cidrs;
  --ports defaults to 9876,10911 only when neither --ports nor --cidrs is given, so
  `--cidrs R` alone redirects every TCP connection to R, whatever the port.
  Never redirected: connections of --exclude-uid (the sidecar's uid) and to loopback.
Redirected connections arrive at 127.0.0.1:<redirect-to> (IPv4) and [::1]:<redirect-to> (IPv6).
Needs CAP_NET_ADMIN: in Kubernetes an init container with
  securityContext.capabilities.add: [NET_ADMIN]   (iptables-legacy: also NET_RAW)
`--dry-run` without an action prints the install commands.")]
pub struct IptablesArgs {
    /// What to do; `--dry-run` alone means `install --dry-run`.
    #[arg(value_enum, required_unless_present = "dry_run")]
    pub action: Option<Action>,
    /// The sidecar's port: where redirected connections go.
    #[arg(long, default_value_t = 9876, value_parser = parse_port)]
    pub redirect_to: u16,
    /// Destination ports to redirect, comma separated [default: 9876,10911 when --cidrs is not
    /// given either].
    #[arg(long, value_delimiter = ',', value_parser = parse_port)]
    pub ports: Vec<u16>,
    /// Destination ranges (IPv4 and IPv6 CIDRs or addresses, comma separated) whose TCP
    /// connections are redirected whatever the port.
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    pub cidrs: Vec<Cidr>,
    /// The sidecar's uid: its own connections are never redirected.
    #[arg(long, default_value_t = 10001)]
    pub exclude_uid: u32,
    /// Print the commands (one per line, shell-quoted) instead of running them: the plan for the
    /// rules found now (read-only), or for an empty namespace when they cannot be read.
    #[arg(long)]
    pub dry_run: bool,
    /// Which iptables implementation writes the rules.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
}

/// A TCP port flag: 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?}: a port is a number from 1 to 65535")),
    }
}

/// A `--cidrs` entry (see [`Cidr`]'s parser: host bits must be clear).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.trim().parse()
}

impl IptablesArgs {
    /// The rule set these flags ask for.
    pub fn redirect(&self) -> Redirect {
        Redirect::new(self.redirect_to, &self.ports, &self.cidrs, self.exclude_uid)
    }
}

/// Runs `rocketmesh iptables`: results (rules, commands, what was done) on `out`, diagnostics
/// through tracing.
pub fn run(args: &IptablesArgs, out: &mut dyn Write) -> Result<(), IptablesError> {
    let action = args.action.unwrap_or(Action::Install);
    let want = args.redirect();
    let backend = match args.backend {
        BackendChoice::Nft => Backend::Nft,
        BackendChoice::Legacy => Backend::Legacy,
        BackendChoice::Auto => match Backend::detect() {
            Ok(b) => b,
            Err(e) if args.dry_run => {
                tracing::warn!(
                    "cannot probe the legacy backend ({}); assuming nft",
                    e.brief()
                );
                Backend::Nft
            }
            Err(e) => return Err(e),
        },
    };
    for family in Family::BOTH {
        let tool = backend.tool(family);
        if args.dry_run && action == Action::List {
            writeln!(
                out,
                "{}",
                rules::shell_line(&rules::list_command(&tool.name))
            )?;
            continue;
        }
        let Some(state) = read_state(backend, &tool, family, action, &want, args.dry_run)? else {
            if action == Action::List {
                writeln!(out, "{family} ({}): no nat table", tool.name)?;
            }
            continue;
        };
        match action {
            Action::List => {
                if state.is_empty() {
                    writeln!(
                        out,
                        "{family} ({}): no rocketmesh rules installed",
                        tool.name
                    )?;
                } else {
                    writeln!(out, "{family} ({}, table nat):", tool.name)?;
                    for line in state.lines() {
                        writeln!(out, "{line}")?;
                    }
                }
            }
            Action::Install => {
                let plan = rules::install_plan(&tool.name, &want, family, &state);
                if args.dry_run {
                    print_plan(out, &plan)?;
                } else if want.wants(family) {
                    install(&tool, family, &want, &plan, out)?;
                } else {
                    // Nothing of this family to capture (--cidrs of the other family only):
                    // rules of an earlier install go, so the namespace holds what was asked.
                    apply(&tool, &plan)?;
                    writeln!(out, "{family} ({}): nothing to capture", tool.name)?;
                }
            }
            Action::Remove => {
                let plan = rules::remove_plan(&tool.name, &state);
                if args.dry_run {
                    print_plan(out, &plan)?;
                } else if plan.is_empty() {
                    writeln!(
                        out,
                        "{family} ({}): no rocketmesh rules installed",
                        tool.name
                    )?;
                } else {
                    apply(&tool, &plan)?;
                    writeln!(out, "{family} ({}): rocketmesh rules removed", tool.name)?;
                }
            }
        }
    }
    Ok(())
}

/// The family's nat table as rocketmesh sees it; `None` when IPv6 has no nat table and the
/// flags do not require one (reported, not fatal: the default ports are captured for both
/// families, but a node without IPv6 nat must still get its IPv4 rules).
fn read_state(
    backend: Backend,
    tool: &Tool,
    family: Family,
    action: Action,
    want: &Redirect,
    dry_run: bool,
) -> Result<Option<NatState>, IptablesError> {
    let read = || {
        // x_tables creates a namespace's table on its first use, listing included: a legacy
        // nat table that does not exist is read as empty, not listed into existence.
        if backend == Backend::Legacy && !exec::legacy_table_exists(family, "nat")? {
            return Ok(NatState::default());
        }
        let listing = tool.run_argv(&rules::list_command(&tool.name))?;
        Ok(NatState::parse(&listing))
    };
    match read() {
        Ok(state) => Ok(Some(state)),
        Err(e) if dry_run => {
            tracing::warn!(
                "cannot read the current {family} rules ({}); printing the commands for an empty namespace",
                e.brief()
            );
            Ok(Some(NatState::default()))
        }
        Err(IptablesError::Failed { stderr, .. }) if family == Family::V6 => {
            if action == Action::Install && want.requires(Family::V6) {
                return Err(IptablesError::Ipv6Unavailable { reason: stderr });
            }
            tracing::warn!("no IPv6 nat table ({stderr}): IPv6 connections are not captured");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Installs one family's plan. An optional IPv6 family whose nat table turns out unusable at
/// the first write (nf_tables lists a table it cannot create) is reported and undone, not fatal.
fn install(
    tool: &Tool,
    family: Family,
    want: &Redirect,
    plan: &[Vec<String>],
    out: &mut dyn Write,
) -> Result<(), IptablesError> {
    match apply(tool, plan) {
        Ok(()) => {
            let n = want.chain_rules(family).len();
            writeln!(
                out,
                "{family} ({}): {n} rules in {} and the jump from OUTPUT installed",
                tool.name,
                rules::CHAIN
            )?;
            Ok(())
        }
        Err(IptablesError::Failed { stderr, .. })
            if family == Family::V6 && !want.requires(Family::V6) =>
        {
            tracing::warn!(
                "IPv6 nat rules cannot be installed ({stderr}): IPv6 connections are not captured"
            );
            if let Ok(listing) = tool.run_argv(&rules::list_command(&tool.name)) {
                let _ = apply(
                    tool,
                    &rules::remove_plan(&tool.name, &NatState::parse(&listing)),
                );
            }
            writeln!(
                out,
                "{family} ({}): no usable nat table, nothing installed",
                tool.name
            )?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn apply(tool: &Tool, plan: &[Vec<String>]) -> Result<(), IptablesError> {
    for argv in plan {
        tracing::debug!("{}", rules::shell_line(argv));
        tool.run_argv(argv)?;
    }
    Ok(())
}

fn print_plan(out: &mut dyn Write, plan: &[Vec<String>]) -> Result<(), IptablesError> {
    for argv in plan {
        writeln!(out, "{}", rules::shell_line(argv))?;
    }
    Ok(())
}
