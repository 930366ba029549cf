//! The rules and plans, without running anything: flags -> argv lists, and a model of the nat
//! table that runs those argv lists to check idempotence.

use clap::Parser;

use super::rules::*;
use super::*;
use crate::cli::{Cli, Command};

fn parse(args: &[&str]) -> Result<IptablesArgs, clap::Error> {
    let cli = Cli::try_parse_from(["rocketmesh", "iptables"].iter().chain(args))?;
    match cli.command {
        Command::Iptables(a) => Ok(a),
        other => panic!("parsed {other:?}"),
    }
}

fn ok(args: &[&str]) -> IptablesArgs {
    parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

fn lines(plan: &[Vec<String>]) -> Vec<String> {
    plan.iter().map(|a| shell_line(a)).collect()
}

/// Runs `plan` against `state` the way iptables would (only what the plans use).
fn apply(state: &mut NatState, plan: &[Vec<String>]) {
    for argv in plan {
        assert_eq!(&argv[1..5], ["-w", "10", "-t", "nat"], "{argv:?}");
        let (op, chain, spec) = (argv[5].as_str(), argv[6].as_str(), argv[7..].to_vec());
        let is_ours = chain == CHAIN;
        match op {
            "-N" => {
                assert!(
                    is_ours && !state.chain_exists,
                    "-N of an existing chain: {argv:?}"
                );
                state.chain_exists = true;
            }
            "-F" => {
                assert!(is_ours && state.chain_exists);
                state.chain_rules.clear();
            }
            "-X" => {
                assert!(is_ours && state.chain_rules.is_empty());
                assert!(state.jumps.is_empty(), "-X of a referenced chain");
                state.chain_exists = false;
            }
            "-A" if is_ours => state.chain_rules.push(spec),
            "-A" => state.jumps.push((chain.to_owned(), spec)),
            "-D" => {
                let i = state
                    .jumps
                    .iter()
                    .position(|(c, s)| c == chain && *s == spec)
                    .unwrap_or_else(|| panic!("-D of a missing rule: {argv:?}"));
                state.jumps.remove(i);
            }
            other => panic!("unexpected {other}"),
        }
    }
}

/// Plans from `state` and runs the plan on it.
fn step(state: &mut NatState, plan: impl FnOnce(&NatState) -> Vec<Vec<String>>) {
    let plan = plan(state);
    apply(state, &plan);
}

#[test]
fn defaults_redirect_the_nameserver_and_broker_ports_in_both_families() {
    let a = ok(&["install"]);
    assert_eq!(a.action, Some(Action::Install));
    assert_eq!((a.redirect_to, a.exclude_uid), (9876, 10001));
    assert_eq!(a.backend, BackendChoice::Auto);
    let r = a.redirect();
    assert_eq!(r.ports, DEFAULT_PORTS);
    for (family, lo) in [(Family::V4, "127.0.0.0/8"), (Family::V6, "::1/128")] {
        let rules: Vec<String> = r.chain_rules(family).iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            rules,
            [
                "-m owner --uid-owner 10001 -j RETURN".to_owned(),
                format!("-d {lo} -j RETURN"),
                "-p tcp -m multiport --dports 9876,10911 -j REDIRECT --to-ports 9876".to_owned(),
            ]
        );
    }
}

#[test]
fn cidrs_split_by_family_and_ports_or_cidrs() {
    let r = ok(&[
        "install",
        "--redirect-to",
        "15001",
        "--exclude-uid",
        "1337",
        "--ports",
        "10911",
        "--cidrs",
        "10.96.0.0/12,fd00::/8,192.168.1.7",
    ])
    .redirect();
    let v4: Vec<String> = r
        .chain_rules(Family::V4)
        .iter()
        .map(|r| r.join(" "))
        .collect();
    assert_eq!(
        v4,
        [
            "-m owner --uid-owner 1337 -j RETURN",
            "-d 127.0.0.0/8 -j RETURN",
            "-p tcp -m multiport --dports 10911 -j REDIRECT --to-ports 15001",
            "-p tcp -d 10.96.0.0/12 -j REDIRECT --to-ports 15001",
            "-p tcp -d 192.168.1.7/32 -j REDIRECT --to-ports 15001",
        ]
    );
    let v6: Vec<String> = r
        .chain_rules(Family::V6)
        .iter()
        .map(|r| r.join(" "))
        .collect();
    assert_eq!(
        v6,
        [
            "-m owner --uid-owner 1337 -j RETURN",
            "-d ::1/128 -j RETURN",
            "-p tcp -m multiport --dports 10911 -j REDIRECT --to-ports 15001",
            "-p tcp -d fd00::/8 -j REDIRECT --to-ports 15001",
        ]
    );
    assert!(r.requires(Family::V6) && r.requires(Family::V4));
}

#[test]
fn cidrs_alone_capture_every_port_of_their_family_only() {
    let r = ok(&["install", "--cidrs", "10.0.0.0/8"]).redirect();
    assert!(r.ports.is_empty(), "no default ports with --cidrs");
    assert!(r.wants(Family::V4) && !r.wants(Family::V6));
    assert!(r.chain_rules(Family::V6).is_empty());
    let last = r.chain_rules(Family::V4).pop().unwrap().join(" ");
    assert_eq!(last, "-p tcp -d 10.0.0.0/8 -j REDIRECT --to-ports 9876");
    assert!(!r.requires(Family::V6));
}

#[test]
fn many_ports_are_split_into_multiport_rules_of_15() {
    let ports: Vec<String> = (1000..1020).map(|p| p.to_string()).collect();
    let r = ok(&["install", "--ports", &ports.join(",")]).redirect();
    let rules = r.chain_rules(Family::V4);
    assert_eq!(rules.len(), 2 + 2);
    assert!(rules[2].join(" ").contains("--dports 1000,1001,"));
    assert!(rules[3]
        .join(" ")
        .contains("--dports 1015,1016,1017,1018,1019 "));
}

#[test]
fn bad_ports_and_cidrs_are_refused_at_parse_time() {
    for bad in [
        &["install", "--ports", "0"][..],
        &["install", "--ports", "70000"],
        &["install", "--ports", "9876,x"],
        &["install", "--redirect-to", "0"],
        &["install", "--cidrs", "10.0.0.0/33"],
        &["install", "--cidrs", "10.1.2.3/8"],
        &["install", "--cidrs", "fd00::1/8"],
        &["install", "--cidrs", "example.com"],
        &["install", "--cidrs", "10.0.0.0/"],
        &["install", "--exclude-uid", "-1"],
        &["flush"],
        &[],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} accepted");
    }
    let e = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
    assert!(e.contains("did you mean 10.0.0.0/8"), "{e}");
    assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
    assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
    assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix, 0);
}

#[test]
fn dry_run_alone_means_install() {
    let a = ok(&["--dry-run"]);
    assert_eq!((a.action, a.dry_run), (None, true));
    assert!(ok(&["list", "--backend", "legacy"]).backend == BackendChoice::Legacy);
}

/// `--dry-run` prints exactly these lines (the plan for the state it read; a pod's namespace is
/// empty).
#[test]
fn install_plan_on_an_empty_namespace_as_dry_run_prints_it() {
    let r = ok(&["install"]).redirect();
    let plan = install_plan("iptables-nft", &r, Family::V4, &NatState::default());
    assert_eq!(
        lines(&plan),
        [
            "iptables-nft -w 10 -t nat -N ROCKETMESH_OUTPUT",
            "iptables-nft -w 10 -t nat -A ROCKETMESH_OUTPUT -m owner --uid-owner 10001 -j RETURN",
            "iptables-nft -w 10 -t nat -A ROCKETMESH_OUTPUT -d 127.0.0.0/8 -j RETURN",
            "iptables-nft -w 10 -t nat -A ROCKETMESH_OUTPUT -p tcp -m multiport --dports 9876,10911 -j REDIRECT --to-ports 9876",
            "iptables-nft -w 10 -t nat -A OUTPUT -p tcp -j ROCKETMESH_OUTPUT",
        ]
    );
}

#[test]
fn install_twice_is_one_set_of_rules_and_remove_undoes_it() {
    let r = ok(&["install", "--cidrs", "fd00::/8", "--ports", "10911"]).redirect();
    for family in Family::BOTH {
        let mut state = NatState::default();
        step(&mut state, |s| install_plan("t", &r, family, s));
        let once = state.clone();
        assert_eq!(once.chain_rules, r.chain_rules(family));
        assert_eq!(once.jumps, [("OUTPUT".to_owned(), jump_spec())]);
        let again = install_plan("t", &r, family, &state);
        assert_eq!(again[0][5], "-F", "flush, not create: {again:?}");
        assert!(
            again.iter().all(|a| a[6] != "OUTPUT"),
            "jump kept: {again:?}"
        );
        apply(&mut state, &again);
        assert_eq!(state, once);
        step(&mut state, |s| remove_plan("t", s));
        assert!(state.is_empty(), "{state:?}");
        assert!(
            remove_plan("t", &state).is_empty(),
            "remove twice: nothing to do"
        );
    }
}

#[test]
fn install_replaces_stale_rules_and_duplicate_jumps() {
    let listing = "\
-P OUTPUT ACCEPT
-N ROCKETMESH_OUTPUT
-A OUTPUT -p tcp -j ROCKETMESH_OUTPUT
-A OUTPUT -j ROCKETMESH_OUTPUT
-A OUTPUT -p tcp -j ROCKETMESH_OUTPUT
-A ROCKETMESH_OUTPUT -p tcp -m multiport --dports 1,2 -j REDIRECT --to-ports 3
-A OUTPUT -p udp -j ACCEPT
";
    let mut state = NatState::parse(listing);
    assert_eq!(state.jumps.len(), 3);
    let r = ok(&["install"]).redirect();
    step(&mut state, |s| install_plan("t", &r, Family::V4, s));
    assert_eq!(state.jumps, [("OUTPUT".to_owned(), jump_spec())]);
    assert_eq!(state.chain_rules, r.chain_rules(Family::V4));
    // A family with nothing to capture loses its old rules.
    let v4_only = ok(&["install", "--cidrs", "10.0.0.0/8"]).redirect();
    step(&mut state, |s| install_plan("t", &v4_only, Family::V6, s));
    assert!(state.is_empty());
}

#[test]
fn state_parse_reads_quoted_words_and_ignores_warnings() {
    let listing = "# Warning: iptables-legacy tables present, use iptables-legacy to see them
-N ROCKETMESH_OUTPUT
-A ROCKETMESH_OUTPUT -m comment --comment \"a \\\"quoted\\\" word\" -j RETURN
-A PREROUTING -p tcp -g ROCKETMESH_OUTPUT
";
    let s = NatState::parse(listing);
    assert!(s.chain_exists);
    assert_eq!(
        s.chain_rules,
        [words("-m comment --comment x -j RETURN")
            .into_iter()
            .map(|w| if w == "x" {
                "a \"quoted\" word".into()
            } else {
                w
            })
            .collect::<Vec<_>>()]
    );
    assert_eq!(
        s.jumps,
        [("PREROUTING".into(), words("-p tcp -g ROCKETMESH_OUTPUT"))]
    );
    let plan = lines(&remove_plan("ip6tables-legacy", &s));
    assert_eq!(
        plan,
        [
            "ip6tables-legacy -w 10 -t nat -D PREROUTING -p tcp -g ROCKETMESH_OUTPUT",
            "ip6tables-legacy -w 10 -t nat -F ROCKETMESH_OUTPUT",
            "ip6tables-legacy -w 10 -t nat -X ROCKETMESH_OUTPUT",
        ]
    );
    assert_eq!(
        s.lines()[1],
        "-A ROCKETMESH_OUTPUT -m comment --comment a \"quoted\" word -j RETURN"
    );
}

#[test]
fn legacy_detection_counts_nat_rules_only() {
    let empty = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
    assert_eq!(nat_rule_count(empty), 0);
    let filter_only = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n";
    assert_eq!(nat_rule_count(filter_only), 0);
    let both = format!("{filter_only}*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j X\nCOMMIT\n");
    assert_eq!(nat_rule_count(&both), 1);
    assert_eq!(nat_rule_count(""), 0);
}

#[test]
fn shell_lines_quote_only_what_needs_it() {
    let argv: Vec<String> = [
        "iptables",
        "-A",
        "X",
        "--comment",
        "it's here",
        "",
        "a,b:c/8",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        shell_line(&argv),
        r"iptables -A X --comment 'it'\''s here' '' a,b:c/8"
    );
}
