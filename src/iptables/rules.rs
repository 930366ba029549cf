//! The rules themselves, as pure functions: what the flags ask for ([`Redirect`]), what a
//! namespace holds ([`NatState`], read from `iptables -t nat -S`), and the commands that take one
//! to the other ([`install_plan`], [`remove_plan`]). Nothing here runs a process, so every
//! decision is unit-tested; `super::exec` runs the argv lists these functions return.
//!
//! Layout in the nat table of each family (like Istio's `ISTIO_OUTPUT`):
//!
//! ```text
//! -N ROCKETMESH_OUTPUT
//! -A ROCKETMESH_OUTPUT -m owner --uid-owner 10001 -j RETURN        the sidecar's own connections
//! -A ROCKETMESH_OUTPUT -d 127.0.0.0/8 -j RETURN                    loopback is never captured
//! -A ROCKETMESH_OUTPUT -p tcp -m multiport --dports 9876,10911 -j REDIRECT --to-ports 9876
//! -A ROCKETMESH_OUTPUT -p tcp -d 10.96.0.0/12 -j REDIRECT --to-ports 9876   (one per --cidrs range)
//! -A OUTPUT -p tcp -j ROCKETMESH_OUTPUT
//! ```
//!
//! A connection is redirected when its destination port is one of the ports OR its destination
//! is in one of the ranges. Loopback destinations are left alone: an application that dials the
//! sidecar at `127.0.0.1:9876` reaches it anyway, and the pod's other loopback services (the
//! sidecar's admin port, a local agent on a listed port) keep working.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The chain rocketmesh owns in the nat table (both families).
pub const CHAIN: &str = "ROCKETMESH_OUTPUT";

/// The ports redirected when neither `--ports` nor `--cidrs` is given: the nameserver's and the
/// broker's default ports.
pub const DEFAULT_PORTS: [u16; 2] = [9876, 10911];

/// `-m multiport` takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

/// Wait this many seconds for the xtables lock (iptables-legacy takes `/run/xtables.lock`;
/// iptables-nft accepts and ignores the flag).
const WAIT_SECS: &str = "10";

/// An address family; IPv6 rules go through `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The loopback range, never redirected.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A destination range, `10.96.0.0/12` or `fd00::/8`; a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s.parse().map_err(|_| {
            format!("{s:?}: not an IPv4 or IPv6 address or CIDR (e.g. 10.0.0.0/8, fd00::/8)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(format!(
                        "{s:?}: the prefix length must be a number from 0 to {max}"
                    ))
                }
            },
        };
        let network = mask(addr, prefix);
        if network != addr {
            return Err(format!(
                "{s:?}: host bits are set below the /{prefix} prefix; did you mean {network}/{prefix}?"
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `addr` with the bits below `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// What to capture: the validated flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The sidecar's port; redirected connections arrive at 127.0.0.1 / ::1 on it.
    pub redirect_to: u16,
    /// Destination ports captured in both families (sorted, distinct).
    pub ports: Vec<u16>,
    /// Destination ranges captured whatever the port.
    pub cidrs: Vec<Cidr>,
    /// Connections from this uid (the sidecar's) are never captured.
    pub exclude_uid: u32,
}

impl Redirect {
    /// The rule set the flags ask for: `ports` OR `cidrs`; [`DEFAULT_PORTS`] when both are empty.
    pub fn new(redirect_to: u16, ports: &[u16], cidrs: &[Cidr], exclude_uid: u32) -> Redirect {
        let mut ports = if ports.is_empty() && cidrs.is_empty() {
            DEFAULT_PORTS.to_vec()
        } else {
            ports.to_vec()
        };
        ports.sort_unstable();
        ports.dedup();
        let mut distinct: Vec<Cidr> = Vec::new();
        for c in cidrs {
            if !distinct.contains(c) {
                distinct.push(*c);
            }
        }
        Redirect {
            redirect_to,
            ports,
            cidrs: distinct,
            exclude_uid,
        }
    }

    /// Whether `family` has anything to capture (ports apply to both families, ranges to theirs).
    pub fn wants(&self, family: Family) -> bool {
        !self.ports.is_empty() || self.cidrs.iter().any(|c| c.family() == family)
    }

    /// Whether the flags name `family` explicitly (a range of that family): then a missing nat
    /// table for it is an error, not a warning.
    pub fn requires(&self, family: Family) -> bool {
        self.cidrs.iter().any(|c| c.family() == family)
    }

    /// The rules of [`CHAIN`] for `family`, each as the arguments after `-A ROCKETMESH_OUTPUT`.
    pub fn chain_rules(&self, family: Family) -> Vec<Vec<String>> {
        if !self.wants(family) {
            return Vec::new();
        }
        let to = self.redirect_to.to_string();
        let redirect = ["-j", "REDIRECT", "--to-ports", to.as_str()];
        let mut rules = vec![
            args(&[
                "-m",
                "owner",
                "--uid-owner",
                &self.exclude_uid.to_string(),
                "-j",
                "RETURN",
            ]),
            args(&["-d", family.loopback(), "-j", "RETURN"]),
        ];
        for chunk in self.ports.chunks(MULTIPORT_MAX) {
            let list: Vec<String> = chunk.iter().map(u16::to_string).collect();
            let mut r = args(&["-p", "tcp", "-m", "multiport", "--dports", &list.join(",")]);
            r.extend(args(&redirect));
            rules.push(r);
        }
        for c in self.cidrs.iter().filter(|c| c.family() == family) {
            let mut r = args(&["-p", "tcp", "-d", &c.to_string()]);
            r.extend(args(&redirect));
            rules.push(r);
        }
        rules
    }
}

/// The jump from OUTPUT into [`CHAIN`], as the arguments after `-A OUTPUT`.
pub fn jump_spec() -> Vec<String> {
    args(&["-p", "tcp", "-j", CHAIN])
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// What rocketmesh has in one family's nat table, as `iptables -t nat -S` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    /// Whether [`CHAIN`] exists.
    pub chain_exists: bool,
    /// Its rules, each as the arguments after `-A ROCKETMESH_OUTPUT`.
    pub chain_rules: Vec<Vec<String>>,
    /// Rules of other chains that jump into it: (chain, arguments after `-A <chain>`).
    pub jumps: Vec<(String, Vec<String>)>,
}

impl NatState {
    /// Reads the output of `iptables -t nat -S` (warnings and comments are ignored).
    pub fn parse(listing: &str) -> NatState {
        let mut state = NatState::default();
        for line in listing.lines() {
            let tokens = split_words(line.trim());
            match tokens.as_slice() {
                [n, chain] if n == "-N" && chain == CHAIN => state.chain_exists = true,
                [a, chain, rest @ ..] if a == "-A" && chain == CHAIN => {
                    state.chain_rules.push(rest.to_vec());
                }
                [a, chain, rest @ ..] if a == "-A" && jumps_to_chain(rest) => {
                    state.jumps.push((chain.clone(), rest.to_vec()));
                }
                _ => {}
            }
        }
        state
    }

    /// Nothing of rocketmesh's is installed.
    pub fn is_empty(&self) -> bool {
        !self.chain_exists && self.chain_rules.is_empty() && self.jumps.is_empty()
    }

    /// The installed rules as `-S` lines (chain, its rules, the jumps).
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.chain_exists {
            out.push(format!("-N {CHAIN}"));
        }
        for r in &self.chain_rules {
            out.push(format!("-A {CHAIN} {}", r.join(" ")));
        }
        for (chain, r) in &self.jumps {
            out.push(format!("-A {chain} {}", r.join(" ")));
        }
        out
    }
}

fn jumps_to_chain(spec: &[String]) -> bool {
    spec.windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == CHAIN)
}

/// Splits one `-S` line into words: iptables quotes a word holding spaces in double quotes,
/// with `\"` and `\\` escaped inside.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// The start of every command for one family: the program (`iptables-nft`, `ip6tables-legacy`...),
/// the lock wait and the nat table.
pub fn base(program: &str) -> Vec<String> {
    args(&[program, "-w", WAIT_SECS, "-t", "nat"])
}

/// The command that reads a family's nat table ([`NatState::parse`] reads its output).
pub fn list_command(program: &str) -> Vec<String> {
    let mut c = base(program);
    c.push("-S".into());
    c
}

/// The commands that make one family's nat table hold exactly the rules `want` asks for, from
/// `state`: the chain is created if absent and flushed otherwise, refilled, and the jump from
/// OUTPUT added only if absent (duplicates and stale jumps are deleted). A family with nothing to
/// capture gets the [`remove_plan`]. Running it twice leaves one set of rules.
pub fn install_plan(
    program: &str,
    want: &Redirect,
    family: Family,
    state: &NatState,
) -> Vec<Vec<String>> {
    if !want.wants(family) {
        return remove_plan(program, state);
    }
    let cmd = |op: &str, chain: &str, spec: &[String]| {
        let mut c = base(program);
        c.push(op.into());
        c.push(chain.into());
        c.extend_from_slice(spec);
        c
    };
    let mut plan = Vec::new();
    let op = if state.chain_exists { "-F" } else { "-N" };
    plan.push(cmd(op, CHAIN, &[]));
    for rule in want.chain_rules(family) {
        plan.push(cmd("-A", CHAIN, &rule));
    }
    let ours = jump_spec();
    let mut kept = false;
    for (chain, spec) in &state.jumps {
        if !kept && chain == "OUTPUT" && *spec == ours {
            kept = true;
        } else {
            plan.push(cmd("-D", chain, spec));
        }
    }
    if !kept {
        plan.push(cmd("-A", "OUTPUT", &ours));
    }
    plan
}

/// The commands that delete what [`install_plan`] added: every jump into [`CHAIN`], then the
/// chain. Empty when nothing is installed.
pub fn remove_plan(program: &str, state: &NatState) -> Vec<Vec<String>> {
    let mut plan = Vec::new();
    for (chain, spec) in &state.jumps {
        let mut c = base(program);
        c.extend(["-D".to_owned(), chain.clone()]);
        c.extend_from_slice(spec);
        plan.push(c);
    }
    if state.chain_exists {
        for op in ["-F", "-X"] {
            let mut c = base(program);
            c.extend([op.to_owned(), CHAIN.to_owned()]);
            plan.push(c);
        }
    }
    plan
}

/// Rules in the `*nat` section of `iptables-save` output (for the backend detection).
pub fn nat_rule_count(save: &str) -> usize {
    let mut in_nat = false;
    let mut n = 0;
    for line in save.lines() {
        let line = line.trim();
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
        } else if line == "COMMIT" {
            in_nat = false;
        } else if in_nat && line.starts_with("-A ") {
            n += 1;
        }
    }
    n
}

/// One argv as a shell command line: words quoted only where the shell would read them otherwise.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(w: &str) -> String {
    let plain = !w.is_empty()
        && w.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b':' | b',' | b'=' | b'+' | b'@' | b'%'
                )
        });
    if plain {
        w.to_owned()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}
