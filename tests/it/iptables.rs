//! `rocketmesh iptables` against a real kernel: each test in fresh network namespaces
//! (`support::netns`, root only), reading the rules back with iptables-save and proving the
//! redirect with real connections: small listeners that answer with who they are.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::Output;
use std::sync::mpsc;
use std::time::Duration;

use crate::support::interop::ChildGuard;
use crate::support::netns::{require_netns, rocketmesh_bin, veth, Netns};

/// The sidecar's uid, excluded from capture by default.
const SIDECAR_UID: u32 = 10001;

/// A TCP listener that writes its identity to each connection and closes it.
const LISTENER: &str = r#"
import socket, sys
host, port, ident = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(64)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(ident.encode())
    c.close()
"#;

/// `rocketmesh iptables <args>` inside `ns` as root.
fn iptables(ns: &Netns, args: &[&str]) -> Output {
    let mut argv = vec![rocketmesh_bin(), "iptables"];
    argv.extend_from_slice(args);
    ns.exec(&argv)
}

/// [`iptables`] that must succeed: its stdout.
fn iptables_ok(ns: &Netns, args: &[&str]) -> String {
    let out = iptables(ns, args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "rocketmesh iptables {args:?} failed ({}):\n{stdout}{stderr}",
        out.status
    );
    stdout
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// rocketmesh's rules in one backend's nat table, as `<prog>-save -t nat` shows them: chains
/// declared, rules in the chain, jumps into it.
#[derive(Debug, PartialEq, Eq)]
struct Count {
    chains: usize,
    rules: usize,
    jumps: usize,
}

const NONE: Count = Count {
    chains: 0,
    rules: 0,
    jumps: 0,
};

fn count(ns: &Netns, save: &str) -> Count {
    let dump = ns.exec_ok(&[save, "-t", "nat"]);
    let lines = || dump.lines().map(str::trim);
    Count {
        chains: lines()
            .filter(|l| l.starts_with(":ROCKETMESH_OUTPUT "))
            .count(),
        rules: lines()
            .filter(|l| l.starts_with("-A ROCKETMESH_OUTPUT "))
            .count(),
        jumps: lines()
            .filter(|l| {
                !l.starts_with("-A ROCKETMESH_OUTPUT ") && l.ends_with("-j ROCKETMESH_OUTPUT")
            })
            .count(),
    }
}

/// The default install: one chain of three rules (uid, loopback, ports) and one jump.
const ONE_SET: Count = Count {
    chains: 1,
    rules: 3,
    jumps: 1,
};

/// Starts a [`LISTENER`] in `ns` on `host:port` answering `ident`, once it listens.
fn listen(ns: &Netns, host: &str, port: u16, ident: &str) -> ChildGuard {
    let port_s = port.to_string();
    let mut child = ns.spawn(&["python3", "-c", LISTENER, host, &port_s, ident]);
    let out = child.stdout.take().unwrap();
    let guard = ChildGuard::new(child, format!("listener {ident} on {host}:{port}"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    assert_eq!(
        line.trim(),
        "listening",
        "listener {ident} on {host}:{port} did not start"
    );
    guard
}

/// Connects from `ns` (as `uid`, if given) to `host:port` (an address or a name in the
/// namespace's hosts file) with bash's /dev/tcp: what the listener that took the connection
/// said, or `failed: <why>`.
fn dial(ns: &Netns, uid: Option<u32>, host: impl ToString, port: u16) -> String {
    let script = r#"exec 3<>"/dev/tcp/$0/$1" && cat <&3"#;
    let (a, p) = (host.to_string(), port.to_string());
    let argv = ["timeout", "10", "bash", "-c", script, &a, &p];
    let out = match uid {
        Some(uid) => ns.exec_as(uid, &argv),
        None => ns.exec(&argv),
    };
    if out.status.success() {
        text(&out.stdout).trim().to_owned()
    } else {
        format!("failed: {} {}", out.status, text(&out.stderr).trim())
    }
}

#[test]
fn install_twice_is_one_set_list_shows_it_remove_twice_is_fine() {
    require_netns();
    let ns = Netns::new("pod");
    assert_eq!(count(&ns, "iptables-nft-save"), NONE);
    let listed = iptables_ok(&ns, &["list"]);
    assert_eq!(
        listed.matches("no rocketmesh rules installed").count(),
        2,
        "{listed}"
    );

    iptables_ok(&ns, &["install"]);
    iptables_ok(&ns, &["install"]);
    for save in ["iptables-nft-save", "ip6tables-nft-save"] {
        assert_eq!(count(&ns, save), ONE_SET, "{save} after two installs");
    }
    let listed = iptables_ok(&ns, &["list"]);
    for line in [
        "IPv4 (iptables-nft, table nat):",
        "IPv6 (ip6tables-nft, table nat):",
        "-A ROCKETMESH_OUTPUT -m owner --uid-owner 10001 -j RETURN",
        "-A ROCKETMESH_OUTPUT -p tcp -m multiport --dports 9876,10911 -j REDIRECT --to-ports 9876",
        "-A OUTPUT -p tcp -j ROCKETMESH_OUTPUT",
    ] {
        assert!(
            listed.lines().any(|l| l == line),
            "list lacks {line:?}:\n{listed}"
        );
    }
    assert!(!listed.contains("no rocketmesh rules"), "{listed}");

    iptables_ok(&ns, &["remove"]);
    for save in ["iptables-nft-save", "ip6tables-nft-save"] {
        assert_eq!(count(&ns, save), NONE, "{save} after remove");
    }
    let again = iptables_ok(&ns, &["remove"]);
    assert_eq!(
        again.matches("no rocketmesh rules installed").count(),
        2,
        "{again}"
    );
    let listed = iptables_ok(&ns, &["list"]);
    assert_eq!(
        listed.matches("no rocketmesh rules installed").count(),
        2,
        "{listed}"
    );
}

#[test]
fn dry_run_prints_the_commands_and_installs_nothing() {
    require_netns();
    let ns = Netns::new("pod");
    let printed = iptables_ok(&ns, &["--dry-run"]);
    let expected: Vec<String> = [("iptables-nft", "127.0.0.0/8"), ("ip6tables-nft", "::1/128")]
        .iter()
        .flat_map(|(prog, lo)| {
            let nat = format!("{prog} -w 10 -t nat");
            [
                format!("{nat} -N ROCKETMESH_OUTPUT"),
                format!("{nat} -A ROCKETMESH_OUTPUT -m owner --uid-owner 10001 -j RETURN"),
                format!("{nat} -A ROCKETMESH_OUTPUT -d {lo} -j RETURN"),
                format!("{nat} -A ROCKETMESH_OUTPUT -p tcp -m multiport --dports 9876,10911 -j REDIRECT --to-ports 9876"),
                format!("{nat} -A OUTPUT -p tcp -j ROCKETMESH_OUTPUT"),
            ]
        })
        .collect();
    assert_eq!(printed.lines().collect::<Vec<_>>(), expected);
    for save in ["iptables-nft-save", "ip6tables-nft-save"] {
        assert_eq!(count(&ns, save), NONE, "{save} after --dry-run");
    }
    // The printed commands are the real thing: run as a script they install one set of rules.
    ns.exec_ok(&["bash", "-euc", &printed]);
    assert_eq!(count(&ns, "iptables-nft-save"), ONE_SET);
    // Against installed rules the plan refreshes the chain and keeps the jump.
    let refresh = iptables_ok(&ns, &["install", "--dry-run", "--ports", "10911"]);
    assert!(
        refresh.contains("iptables-nft -w 10 -t nat -F ROCKETMESH_OUTPUT"),
        "{refresh}"
    );
    assert!(
        !refresh.contains(" -N ") && !refresh.contains("-A OUTPUT"),
        "{refresh}"
    );
    assert_eq!(
        count(&ns, "iptables-nft-save"),
        ONE_SET,
        "unchanged by the dry run"
    );
    let removal = iptables_ok(&ns, &["remove", "--dry-run"]);
    assert!(
        removal.contains("iptables-nft -w 10 -t nat -D OUTPUT -p tcp -j ROCKETMESH_OUTPUT"),
        "{removal}"
    );
    assert_eq!(
        count(&ns, "iptables-nft-save"),
        ONE_SET,
        "unchanged by the dry run"
    );
}

#[test]
fn install_redirects_the_apps_connections_but_not_the_sidecars() {
    require_netns();
    let (app, cluster) = (Netns::new("app"), Netns::new("cluster"));
    let link = veth(&app, &cluster);
    let (v4, v6) = (IpAddr::V4(link.b_v4), IpAddr::V6(link.b_v6));
    app.write_hosts(&[(v4, "broker-a.cluster")]);
    let _broker = listen(&cluster, "::", 10911, "cluster");
    let _other = listen(&cluster, "::", 8080, "cluster-8080");
    let _sidecar4 = listen(&app, "127.0.0.1", 9876, "sidecar");
    let _sidecar6 = listen(&app, "::1", 9876, "sidecar");

    // Before: the connections reach the cluster namespace (the test can fail).
    assert_eq!(dial(&app, None, v4, 10911), "cluster");
    assert_eq!(dial(&app, None, "broker-a.cluster", 10911), "cluster");
    assert_eq!(dial(&app, None, v6, 10911), "cluster");

    iptables_ok(&app, &["install"]);
    let (v4, v6) = (v4.to_string(), v6.to_string());
    for (uid, host, port, expected) in [
        // The application's connections, whatever its uid, address family or name used.
        (None, v4.as_str(), 10911, "sidecar"),
        (None, &v6, 10911, "sidecar"),
        (None, "broker-a.cluster", 10911, "sidecar"),
        (Some(4242), &v4, 10911, "sidecar"),
        // The sidecar's own upstream connections go where they were meant to.
        (Some(SIDECAR_UID), &v4, 10911, "cluster"),
        (Some(SIDECAR_UID), &v6, 10911, "cluster"),
        // Other ports are not captured; the sidecar stays reachable on loopback.
        (None, &v4, 8080, "cluster-8080"),
        (None, "127.0.0.1", 9876, "sidecar"),
    ] {
        let got = dial(&app, uid, host, port);
        assert_eq!(got, expected, "uid {uid:?} dialling {host} port {port}");
    }

    iptables_ok(&app, &["remove"]);
    assert_eq!(dial(&app, None, &v4, 10911), "cluster", "after remove");
    assert_eq!(dial(&app, None, &v6, 10911), "cluster", "after remove");
}

#[test]
fn cidrs_alone_capture_every_port_of_their_range_only() {
    require_netns();
    let (app, cluster) = (Netns::new("app"), Netns::new("cluster"));
    let link = veth(&app, &cluster);
    let (v4, v6) = (IpAddr::V4(link.b_v4), IpAddr::V6(link.b_v6));
    let _broker = listen(&cluster, "::", 10911, "cluster");
    let _other = listen(&cluster, "::", 8080, "cluster-8080");
    let _sidecar = listen(&app, "127.0.0.1", 15001, "sidecar");

    let range = format!("{}/32", link.b_v4);
    iptables_ok(
        &app,
        &["install", "--cidrs", &range, "--redirect-to", "15001"],
    );
    assert_eq!(
        dial(&app, None, v4, 8080),
        "sidecar",
        "any port in the range"
    );
    assert_eq!(dial(&app, None, v4, 10911), "sidecar");
    // No default ports with --cidrs, and the range is IPv4 only.
    assert_eq!(dial(&app, None, v6, 10911), "cluster");
    assert_eq!(count(&app, "ip6tables-nft-save"), NONE);
    let listed = iptables_ok(&app, &["list"]);
    assert!(
        listed.contains(&format!(
            "-A ROCKETMESH_OUTPUT -d {range} -p tcp -j REDIRECT --to-ports 15001"
        )),
        "{listed}"
    );
    assert!(
        listed.contains("IPv6 (ip6tables-nft): no rocketmesh rules installed"),
        "{listed}"
    );
}

#[test]
fn without_cap_net_admin_install_fails_and_says_so() {
    require_netns();
    let ns = Netns::new("pod");
    let mut argv = vec![rocketmesh_bin(), "iptables"];
    for action in ["install", "list", "remove"] {
        argv.truncate(2);
        argv.push(action);
        let out = ns.exec_as(SIDECAR_UID, &argv);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{action} as uid {SIDECAR_UID} succeeded: {stderr}"
        );
        assert!(stderr.contains("needs CAP_NET_ADMIN"), "{action}: {stderr}");
        assert!(
            stderr.contains("capabilities.add: [NET_ADMIN]"),
            "{action}: {stderr}"
        );
    }
    assert_eq!(count(&ns, "iptables-nft-save"), NONE);
}

#[test]
fn legacy_backend_is_followed_once_it_holds_rules() {
    require_netns();
    let ns = Netns::new("pod");
    // Looking creates no legacy table (x_tables would create one on `iptables-legacy -t nat -S`,
    // and from then on iptables-nft warns that legacy tables are present).
    let legacy_tables = || {
        ns.exec_ok(&[
            "cat",
            "/proc/net/ip_tables_names",
            "/proc/net/ip6_tables_names",
        ])
    };
    for args in [&["list"][..], &["remove"], &["install", "--dry-run"]] {
        let mut args = args.to_vec();
        args.extend(["--backend", "legacy"]);
        let said = iptables_ok(&ns, &args);
        assert!(
            !legacy_tables().contains("nat"),
            "{args:?} created the legacy nat table"
        );
        if args[0] == "install" {
            assert!(
                said.starts_with("iptables-legacy -w 10 -t nat -N ROCKETMESH_OUTPUT\n"),
                "{said}"
            );
        }
    }
    iptables_ok(&ns, &["install", "--backend", "legacy"]);
    assert!(legacy_tables().contains("nat"));
    assert_eq!(count(&ns, "iptables-legacy-save"), ONE_SET);
    assert_eq!(count(&ns, "ip6tables-legacy-save"), ONE_SET);
    assert_eq!(
        count(&ns, "iptables-nft-save"),
        NONE,
        "nothing written through nft"
    );
    // auto sees the legacy rules and stays there: no second set through nft.
    let listed = iptables_ok(&ns, &["list"]);
    assert!(
        listed.contains("IPv4 (iptables-legacy, table nat):"),
        "{listed}"
    );
    iptables_ok(&ns, &["install"]);
    assert_eq!(count(&ns, "iptables-legacy-save"), ONE_SET);
    assert_eq!(
        count(&ns, "iptables-nft-save"),
        NONE,
        "auto followed legacy"
    );
    iptables_ok(&ns, &["remove"]);
    assert_eq!(count(&ns, "iptables-legacy-save"), NONE);
    assert_eq!(count(&ns, "ip6tables-legacy-save"), NONE);
}
