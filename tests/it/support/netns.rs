//! Linux network namespaces for tests that need a kernel of their own: iptables rules, a pod's
//! loopback, addresses other than 127.0.0.1. A [`Netns`] is a fresh namespace (`ip netns add
//! rmtest-<pid>-<n>`, `lo` up) deleted on drop with every process still in it; [`veth`] links two
//! of them with addresses of their own (both ends inside test namespaces: the host's interfaces,
//! addresses and rules are never touched). Commands run in a namespace through `ip netns exec`,
//! optionally as another uid through `setpriv` (util-linux).
//!
//! These tests need root, `ip` (iproute2), `setpriv` (util-linux) and, for the iptables tests,
//! iptables: CI runs as root and `.ci/run` installs the tools. Without them the tests fail with
//! [`netns_available`]'s reason; they are never skipped.
//!
//! A pod, for example: an application namespace where the sidecar runs as uid 10001 and a
//! cluster namespace with the control plane and brokers, linked by a veth:
//!
//! ```ignore
//! let (app, cluster) = (Netns::new("app"), Netns::new("cluster"));
//! let link = veth(&app, &cluster); // app: link.a_v4, cluster: link.b_v4
//! let broker = format!("{}:10911", link.b_v4);
//! let cmd = cluster.command(&[rocketmesh_bin(), "broker", "--listen", &broker, "--data-dir", d]);
//! let (guard, ready) = interop::start_ready(dir, "broker", cmd, "broker");
//! let sidecar = app.command_as(10001, &[rocketmesh_bin(), "sidecar", ...]);
//! ```
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Longest one [`Netns::exec`] may take before it is killed.
pub const EXEC_LIMIT: Duration = Duration::from_secs(60);

/// The `rocketmesh` binary cargo built for these tests.
pub fn rocketmesh_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rocketmesh")
}

/// Whether this process can create network namespaces and run commands in them as other uids:
/// `Err` says what is missing.
pub fn netns_available() -> Result<(), String> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    CHECK.get_or_init(check).clone()
}

/// Fails the test, saying what is missing, unless [`netns_available`].
pub fn require_netns() {
    if let Err(why) = netns_available() {
        panic!(
            "network-namespace tests need root, iproute2 (`ip`) and util-linux (`setpriv`); CI \
             runs them as root and .ci/run installs the tools (apt-get install iproute2 iptables \
             util-linux). Here: {why}"
        );
    }
}

fn check() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status ({e}): not Linux?"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(format!("not root (effective uid {euid})"));
    }
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("setpriv", "--version", "util-linux"),
    ] {
        let runs = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !runs {
            return Err(format!("`{tool}` not found (Debian package {package})"));
        }
    }
    Ok(())
}

/// Runs `cmd` to completion; panics naming `what` unless it succeeds. Its stdout.
fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(args);
    c
}

/// A network namespace of this test process, deleted on drop.
pub struct Netns {
    name: String,
    /// What the test calls it ("app", "cluster"), for messages.
    label: String,
}

impl Netns {
    /// A fresh namespace `rmtest-<pid>-<n>` with `lo` up (`label` names it in messages). The
    /// first call also deletes namespaces left by test processes that no longer run.
    pub fn new(label: &str) -> Netns {
        require_netns();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // `ip netns add` sets up the shared /run/netns mount on first use: one at a time.
        static ADD: Mutex<()> = Mutex::new(());
        static SWEPT: OnceLock<()> = OnceLock::new();
        let _one = ADD.lock();
        SWEPT.get_or_init(sweep_stale);
        let name = format!(
            "rmtest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // A namespace of an earlier process with our pid (pid reuse after a crash).
        let _ = ip(&["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        run_ok(
            ip(&["netns", "add", &name]),
            &format!("ip netns add {name}"),
        );
        let ns = Netns {
            name,
            label: label.to_owned(),
        };
        run_ok(
            ip(&["-n", &ns.name, "link", "set", "lo", "up"]),
            &format!("lo up in {}", ns.label),
        );
        ns
    }

    /// The namespace's name (for `ip -n NAME`, `ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `argv` to run inside the namespace (`ip netns exec NAME argv...`); configure its stdio
    /// and spawn it yourself.
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// [`Netns::command`] as `uid` (and gid `uid`, no supplementary groups, no capabilities):
    /// `setpriv --reuid=UID --regid=UID --clear-groups`.
    pub fn command_as<S: AsRef<OsStr>>(&self, uid: u32, argv: &[S]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--"])
            .args(argv);
        c
    }

    /// Runs `argv` in the namespace to completion (killed after [`EXEC_LIMIT`]).
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Output {
        bounded_output(self.command(argv), &self.label)
    }

    /// [`Netns::exec`] as `uid`.
    pub fn exec_as<S: AsRef<OsStr>>(&self, uid: u32, argv: &[S]) -> Output {
        bounded_output(self.command_as(uid, argv), &self.label)
    }

    /// [`Netns::exec`] that must succeed: its stdout.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, argv: &[S]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{:?} in {} failed ({}):\n{}{}",
            argv.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            self.label,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `argv` in the namespace: stdin null, stdout piped, stderr inherited. Wrap it in
    /// `interop::ChildGuard` (killed on drop); the namespace's drop kills it in any case.
    pub fn spawn<S: AsRef<OsStr>>(&self, argv: &[S]) -> Child {
        spawn_piped(self.command(argv), &self.label)
    }

    /// [`Netns::spawn`] as `uid`.
    pub fn spawn_as<S: AsRef<OsStr>>(&self, uid: u32, argv: &[S]) -> Child {
        spawn_piped(self.command_as(uid, argv), &self.label)
    }

    /// The namespace's own /etc/hosts: `ip netns exec` bind-mounts /etc/netns/NAME/hosts over
    /// /etc/hosts for the commands it starts, so write it before starting them. `localhost` is
    /// always there; `entries` are (address, names) lines.
    pub fn write_hosts(&self, entries: &[(IpAddr, &str)]) {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
        for (addr, names) in entries {
            text.push_str(&format!("{addr}\t{names}\n"));
        }
        let path = dir.join("hosts");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// The processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        pids_of(&self.name)
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        destroy(&self.name);
    }
}

/// Runs `cmd` (program and arguments only) under `timeout -s KILL`, so a hung command cannot
/// hang the test.
fn bounded_output(cmd: Command, label: &str) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", &EXEC_LIMIT.as_secs().to_string()])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running a command in {label}: {e}"))
}

fn spawn_piped(mut cmd: Command, label: &str) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning in {label}: {e}"))
}

fn pids_of(name: &str) -> Vec<u32> {
    ip(&["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process in namespace `name` (SIGKILL), deletes it and its /etc/netns directory.
fn destroy(name: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_of(name);
        if pids.is_empty() || Instant::now() >= end {
            break;
        }
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let deleted = ip(&["netns", "delete", name])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !deleted {
        eprintln!("could not delete network namespace {name}");
    }
    let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
}

/// Deletes `rmtest-<pid>-*` namespaces whose process is gone (a test run that was killed).
fn sweep_stale() {
    let list = ip(&["netns", "list"]).output();
    let Ok(list) = list else { return };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("rmtest-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !PathBuf::from("/proc").join(pid).exists() {
            destroy(name);
        }
    }
}

/// A veth pair between two namespaces, with one IPv4 /24 and one IPv6 /64 of its own.
#[derive(Debug, Clone)]
pub struct Veth {
    /// The interface in the first namespace, and its addresses.
    pub a_if: String,
    pub a_v4: Ipv4Addr,
    pub a_v6: Ipv6Addr,
    /// The interface in the second namespace, and its addresses.
    pub b_if: String,
    pub b_v4: Ipv4Addr,
    pub b_v6: Ipv6Addr,
}

/// Links `a` and `b`: `10.250.k.1/24` and `fd00:250:k::1/64` in `a`, `.2` / `::2` in `b`, with
/// `k` unique within this process (the second octet moves to 251.. after 256 links), both
/// interfaces up, IPv6 without duplicate address detection (usable at once). The interfaces are
/// created inside the namespaces (`ip -n A link add .. peer .. netns B`), never in the host's.
pub fn veth(a: &Netns, b: &Netns) -> Veth {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let k = NEXT.fetch_add(1, Ordering::Relaxed);
    let (hi, lo) = (250 + (k / 256) as u8, (k % 256) as u8);
    let link = Veth {
        a_if: format!("rmv{k}a"),
        a_v4: Ipv4Addr::new(10, hi, lo, 1),
        a_v6: Ipv6Addr::new(0xfd00, u16::from(hi), k as u16, 0, 0, 0, 0, 1),
        b_if: format!("rmv{k}b"),
        b_v4: Ipv4Addr::new(10, hi, lo, 2),
        b_v6: Ipv6Addr::new(0xfd00, u16::from(hi), k as u16, 0, 0, 0, 0, 2),
    };
    run_ok(
        ip(&[
            "-n", &a.name, "link", "add", &link.a_if, "type", "veth", "peer", "name", &link.b_if,
            "netns", &b.name,
        ]),
        &format!("veth {} <-> {}", a.label, b.label),
    );
    for (ns, ifname, v4, v6) in [
        (a, &link.a_if, link.a_v4, link.a_v6),
        (b, &link.b_if, link.b_v4, link.b_v6),
    ] {
        let n = ns.name.as_str();
        let v4 = format!("{v4}/24");
        let v6 = format!("{v6}/64");
        run_ok(ip(&["-n", n, "addr", "add", &v4, "dev", ifname]), &v4);
        run_ok(
            ip(&["-n", n, "addr", "add", &v6, "dev", ifname, "nodad"]),
            &v6,
        );
        run_ok(ip(&["-n", n, "link", "set", ifname, "up"]), ifname);
    }
    link
}
