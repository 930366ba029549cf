//! A pod, in network namespaces this test creates: an unmodified C++ SDK application whose config
//! says `namesrv:9876`, the redirect rules `rocketmesh iptables` installs, and a transparent
//! sidecar running as uid 10001 beside it; a control plane and two brokers in a "cluster"
//! namespace, each on an address of its own, all reached by name. Every message produced and
//! consumed; the sidecar counts them; every connection the brokers and the control plane see from
//! the pod is the sidecar's. Then the same application without the rules reaches the brokers
//! itself (the check can fail), and the control plane moves to another address under the same
//! name (everything finds it again).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::interop::{self, python, start_ready, work_dir, ChildGuard, Py};
use crate::support::netns::{rocketmesh_bin, veth, Netns};

const SIDECAR_UID: u32 = 10001;
const TOPIC: &str = "PodTopic";
const GROUP: &str = "pod_consumers";

fn addr(ip: Ipv4Addr, port: u16) -> String {
    format!("{ip}:{port}")
}

/// `sdk.py <mode>` inside `ns` (as root: the application is not the sidecar's uid).
fn py_in(ns: &Netns, dir: &Path, mode: &str, args: &[(&str, String)]) -> Py {
    interop::py_start_with(dir, mode, args, |argv| ns.command(argv))
}

/// A `rocketmesh` process inside `ns` (as `uid` when given), once it printed `ready ...`.
fn rocketmesh_in(
    ns: &Netns,
    dir: &Path,
    log: &str,
    uid: Option<u32>,
    env: &[(&str, String)],
    args: &[&str],
) -> ChildGuard {
    let mut argv = vec![rocketmesh_bin()];
    argv.extend_from_slice(args);
    let mut cmd = match uid {
        Some(u) => ns.command_as(u, &argv),
        None => ns.command(&argv),
    };
    cmd.env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    start_ready(dir, log, cmd, args[0]).0
}

/// A control plane in `cluster` on `ip` (remoting 9876, xDS 18000), no warm-up.
fn control_plane_in(cluster: &Netns, dir: &Path, log: &str, ip: Ipv4Addr) -> ChildGuard {
    let (remoting, xds) = (addr(ip, 9876), addr(ip, 18000));
    let args = [
        "control-plane",
        "--remoting",
        &remoting,
        "--xds",
        &xds,
        "--warmup-secs",
        "0",
    ];
    rocketmesh_in(cluster, dir, log, None, &[], &args)
}

/// A broker `name` in `cluster` on `ip:10911`, registering with `cp:9876` by name.
fn broker_in(cluster: &Netns, dir: &Path, name: &str, ip: Ipv4Addr) -> ChildGuard {
    let data = dir.join(name);
    let listen = addr(ip, 10911);
    let args = [
        "broker",
        "--listen",
        &listen,
        "--name",
        name,
        "--namesrv",
        "cp:9876",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    rocketmesh_in(cluster, dir, name, None, &[], &args)
}

/// `topic` created on each of `brokers` (comma separated), from inside `cluster`.
fn create_topic_in(cluster: &Netns, dir: &Path, brokers: &str, topic: &str) {
    let created = py_in(
        cluster,
        dir,
        "create_topic",
        &[("brokers", brokers.into()), ("topic", topic.into())],
    )
    .result(Duration::from_secs(30));
    let ok = created["codes"]
        .as_object()
        .is_some_and(|codes| codes.values().all(|c| c == 0));
    assert!(ok, "creating {topic}: {created}");
}

/// `rocketmesh iptables install` in `app`: ports 9876 and 10911, the sidecar's uid excluded.
fn install_rules(app: &Netns) {
    let uid = SIDECAR_UID.to_string();
    let args = [
        rocketmesh_bin(),
        "iptables",
        "install",
        "--redirect-to",
        "9876",
        "--ports",
        "9876,10911",
        "--exclude-uid",
        &uid,
    ];
    let out = app.exec(&args);
    assert!(out.status.success(), "iptables install: {out:?}");
}

/// GET `path` of an admin server inside `ns` (python's urllib: no curl needed).
fn admin_get(ns: &Netns, admin: &str, path: &str) -> String {
    let url = format!("http://{admin}{path}");
    let code = format!(
        "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('{url}', timeout=10).read().decode())"
    );
    ns.exec_ok(&["python3", "-c", &code])
}

fn stat(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// Established TCP connections in `ns`: (local, peer, uid) with uid 0 when `ss` shows none.
fn connections(ns: &Netns) -> Vec<(String, String, u32)> {
    ns.exec_ok(&["ss", "-Htne", "state", "established"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, peer) = (f.get(2)?.to_string(), f.get(3)?.to_string());
            let uid = f
                .iter()
                .find_map(|x| x.strip_prefix("uid:"))
                .and_then(|u| u.parse().ok())
                .unwrap_or(0);
            Some((local, peer, uid))
        })
        .collect()
}

/// The pod's connections the cluster sees (peer = the pod's address), and for each, the uid that
/// owns its local end inside the pod.
fn pod_connections_by_uid(app: &Netns, cluster: &Netns, pod_ip: Ipv4Addr) -> Vec<(String, u32)> {
    let pod_side = connections(app);
    connections(cluster)
        .into_iter()
        .filter(|(_, peer, _)| peer.starts_with(&format!("{pod_ip}:")))
        .map(|(local, peer, _)| {
            let uid = pod_side
                .iter()
                .find(|(l, _, _)| *l == peer)
                .map_or(u32::MAX, |(_, _, u)| *u);
            (format!("{peer} -> {local}"), uid)
        })
        .collect()
}

fn produce(app: &Netns, dir: &Path, prefix: &str, n: usize) -> Value {
    let r = py_in(
        app,
        dir,
        "produce",
        &[
            ("namesrv", "namesrv:9876".into()),
            ("topic", TOPIC.into()),
            ("group", format!("pod_producer_{prefix}")),
            ("prefix", prefix.into()),
            ("count", n.to_string()),
            ("timeout_ms", "5000".into()),
        ],
    )
    .result(Duration::from_secs(120));
    let errors = r["errors"].as_array().cloned().unwrap_or_default();
    assert!(errors.is_empty(), "sends failed: {errors:?}");
    assert_eq!(r["sent"].as_array().map_or(0, Vec::len), n);
    r
}

/// A C++ push consumer of `TOPIC` in `group` that runs until `stop` exists (or 120 s).
fn consumer_in(app: &Netns, dir: &Path, group: &str, stop: &Path) -> Py {
    py_in(
        app,
        dir,
        "consume",
        &[
            ("namesrv", "namesrv:9876".into()),
            ("topic", TOPIC.into()),
            ("group", group.into()),
            ("expect", "1000000".into()),
            ("max_seconds", "120".into()),
            ("settle", "0".into()),
            ("stop_file", stop.display().to_string()),
        ],
    )
}

fn peers(r: &Value) -> BTreeSet<String> {
    r["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_legacy_app_in_a_pod_goes_through_its_transparent_sidecar() {
    let started = Instant::now();
    python();
    let dir = work_dir("pod");
    let (app, cluster) = (Netns::new("app"), Netns::new("cluster"));
    let link = veth(&app, &cluster);
    let pod_ip = link.a_v4;
    // The cluster side: the control plane, two brokers, and a second control-plane address.
    let octets = link.b_v4.octets();
    let host = |last: u8| Ipv4Addr::new(octets[0], octets[1], octets[2], last);
    let (cp_ip, a_ip, b_ip, cp2_ip) = (link.b_v4, host(3), host(4), host(5));
    for ip in [a_ip, b_ip, cp2_ip] {
        cluster.exec_ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &link.b_if]);
    }
    cluster.write_hosts(&[(IpAddr::V4(cp_ip), "cp")]);
    app.write_hosts(&[(IpAddr::V4(cp_ip), "cp namesrv")]);

    let mut cp = control_plane_in(&cluster, &dir, "cp", cp_ip);
    let brokers = [
        broker_in(&cluster, &dir, "broker-a", a_ip),
        broker_in(&cluster, &dir, "broker-b", b_ip),
    ];
    let brokers_arg = format!("{},{}", addr(a_ip, 10911), addr(b_ip, 10911));
    create_topic_in(&cluster, &dir, &brokers_arg, TOPIC);

    // The pod: rules first (an init container), then the sidecar as its own uid.
    install_rules(&app);
    let admin = "127.0.0.1:15000";
    let sidecar = rocketmesh_in(
        &app,
        &dir,
        "sidecar",
        Some(SIDECAR_UID),
        &[("POD_IP", pod_ip.to_string())],
        &[
            "sidecar",
            "--transparent",
            "--listen",
            "0.0.0.0:9876",
            "--admin",
            "0.0.0.0:15000",
            "--xds",
            "cp:18000",
        ],
    );

    // The application: unmodified, `namesrv:9876`. The consumer keeps running (and connected)
    // until told to stop, so the connections below are looked at while it is.
    let stop_file = dir.join("consumer.stop");
    let mut consumer = consumer_in(&app, &dir, GROUP, &stop_file);
    let produced = produce(&app, &dir, "pod", 60);
    let mut got_lines = 0;
    let until = Instant::now() + Duration::from_secs(90);
    while got_lines < 60 && Instant::now() < until {
        if let Some(l) = consumer.next_line(Duration::from_secs(1)) {
            got_lines += usize::from(l.starts_with("GOT "));
        }
    }
    // Every connection from the pod to the cluster is the sidecar's.
    let seen = pod_connections_by_uid(&app, &cluster, pod_ip);
    std::fs::write(&stop_file, b"stop").unwrap();
    let consumed = consumer.result(Duration::from_secs(60));
    let sent: BTreeSet<String> = produced["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| interop::s(m, "body"))
        .collect();
    let got: BTreeSet<String> = consumed["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| interop::s(m, "body"))
        .collect();
    assert_eq!(got, sent, "consumed {} of {}", got.len(), sent.len());
    // The SDK dialled the nameserver's address and the sidecar's advertised one, never a broker.
    let dialled = peers(&produced);
    assert!(
        dialled.iter().all(|p| !p.ends_with(":10911")),
        "the SDK dialled a broker: {dialled:?}"
    );
    let stats = admin_get(&app, admin, "/stats/prometheus");
    let counted = stat(&stats, "rocketmq_rocketmesh_send_message_v2")
        + stat(&stats, "rocketmq_rocketmesh_send_message_v1");
    assert!(counted >= 60.0, "sidecar counted {counted} sends");
    assert!(stat(&stats, "rocketmq_rocketmesh_pull_converted") > 0.0);
    assert!(
        stat(
            &stats,
            "rocketmq_rocketmesh_downstream_cx_transparent_nameserver"
        ) >= 1.0
    );
    assert!(!seen.is_empty(), "no connection from the pod seen");
    let foreign: Vec<_> = seen.iter().filter(|(_, u)| *u != SIDECAR_UID).collect();
    assert!(foreign.is_empty(), "not through the sidecar: {foreign:?}");
    eprintln!(
        "pod: {} sent, {} consumed, sidecar counted {counted} sends; SDK dialled {dialled:?}; \
         the cluster saw {} connections from the pod, all uid {SIDECAR_UID}",
        sent.len(),
        got.len(),
        seen.len()
    );

    // Without the rules the same application reaches the brokers itself: the checks above fail.
    app.exec_ok(&[rocketmesh_bin(), "iptables", "remove"]);
    let direct = produce(&app, &dir, "direct", 10);
    let dialled = peers(&direct);
    assert!(
        dialled.iter().any(|p| p.ends_with(":10911")),
        "without the rules the SDK should dial brokers: {dialled:?}"
    );
    let direct_stop = dir.join("direct.stop");
    let direct_consumer = consumer_in(&app, &dir, "pod_direct", &direct_stop);
    let mut direct_seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        direct_seen = pod_connections_by_uid(&app, &cluster, pod_ip);
        if direct_seen.iter().any(|(_, u)| *u != SIDECAR_UID) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(&direct_stop, b"stop").unwrap();
    drop(direct_consumer.result(Duration::from_secs(60)));
    assert!(
        direct_seen.iter().any(|(_, u)| *u != SIDECAR_UID),
        "without the rules some connection should be the application's: {direct_seen:?}"
    );
    eprintln!("without the rules the SDK dialled {dialled:?}");

    // The control plane moves to another address under the same name: brokers register again
    // and the sidecar's xDS stream reconnects, both resolving `cp` anew.
    install_rules(&app);
    cp.terminate(Duration::from_secs(10));
    cluster.write_hosts(&[(IpAddr::V4(cp2_ip), "cp")]);
    app.write_hosts(&[(IpAddr::V4(cp2_ip), "cp"), (IpAddr::V4(cp_ip), "namesrv")]);
    cp = control_plane_in(&cluster, &dir, "cp2", cp2_ip);
    // A topic created after the move is only known to the new control plane.
    let moved = "PodTopicMoved";
    create_topic_in(&cluster, &dir, &brokers_arg, moved);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = py_in(
            &app,
            &dir,
            "produce",
            &[
                ("namesrv", "namesrv:9876".into()),
                ("topic", moved.into()),
                ("group", "pod_producer_moved".into()),
                ("prefix", "moved".into()),
                ("count", "5".into()),
            ],
        )
        .result(Duration::from_secs(60));
        let ok = r["errors"].as_array().is_some_and(Vec::is_empty);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no send to {moved} through the sidecar after the control plane moved: {r}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let stats = admin_get(&app, admin, "/stats/prometheus");
    assert!(
        stat(
            &stats,
            "rocketmq_rocketmesh_downstream_cx_transparent_nameserver"
        ) >= 2.0
    );
    drop(sidecar);
    drop(brokers);
    drop(cp);
    eprintln!("pod test took {:?}", started.elapsed());
}

/// A transparent sidecar in `app` as uid 10001, its admin on 127.0.0.1:15000; `extra` flags.
fn transparent_sidecar(
    app: &Netns,
    dir: &Path,
    log: &str,
    pod_ip: Ipv4Addr,
    extra: &[&str],
) -> ChildGuard {
    let mut args = vec![
        "sidecar",
        "--transparent",
        "--listen",
        "0.0.0.0:9876",
        "--admin",
        "127.0.0.1:15000",
        "--xds",
        "cp:18000",
        // REDIRECT sends IPv6 connections to ::1.
        "--extra-listen",
        "[::1]:9876",
    ];
    args.extend_from_slice(extra);
    rocketmesh_in(
        app,
        dir,
        log,
        Some(SIDECAR_UID),
        &[("POD_IP", pod_ip.to_string())],
        &args,
    )
}

#[test]
fn a_transparent_sidecar_relays_known_brokers_and_refuses_or_passes_unknown_destinations() {
    python();
    let dir = work_dir("pod-destinations");
    let (app, cluster) = (Netns::new("app"), Netns::new("cluster"));
    let link = veth(&app, &cluster);
    let octets = link.b_v4.octets();
    let host = |last: u8| Ipv4Addr::new(octets[0], octets[1], octets[2], last);
    let (cp_ip, a_ip, other_ip) = (link.b_v4, host(3), host(5));
    for ip in [a_ip, other_ip] {
        cluster.exec_ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &link.b_if]);
    }
    cluster.write_hosts(&[(IpAddr::V4(cp_ip), "cp")]);
    app.write_hosts(&[(IpAddr::V4(cp_ip), "cp namesrv")]);
    let remoting = addr(cp_ip, 9876);
    let _cp = control_plane_in(&cluster, &dir, "cp", cp_ip);
    let broker_a = addr(a_ip, 10911);
    let _broker = broker_in(&cluster, &dir, "broker-a", a_ip);
    // Something on a broker port that no route names: a plain TCP echo.
    let other = addr(other_ip, 10911);
    let echo = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{other_ip}',10911))\ns.listen()\nprint('ready echo',flush=True)\nwhile True:\n \
         c,_=s.accept()\n c.recv(64)\n c.sendall(b'echo-from-cluster')\n c.close()\n"
    );
    let mut echo_cmd = cluster.command(&["python3", "-c", &echo]);
    echo_cmd.env("PYTHONUNBUFFERED", "1");
    let _echo = start_ready(&dir, "echo", echo_cmd, "echo").0;
    create_topic_in(&cluster, &dir, &broker_a, TOPIC);
    install_rules(&app);
    let admin = "127.0.0.1:15000";
    let sidecar = transparent_sidecar(&app, &dir, "sidecar", link.a_v4, &[]);
    let raw = |addr: &str, code: i32, ext: &str| {
        py_in(
            &app,
            &dir,
            "raw",
            &[
                ("addr", addr.into()),
                ("code", code.to_string()),
                ("ext", ext.into()),
            ],
        )
        .result(Duration::from_secs(30))
    };
    // A route look-up through the nameserver's address: the sidecar now holds the topic, and
    // knows broker-a's endpoint.
    let route = raw("namesrv:9876", 105, &format!("{{\"topic\":\"{TOPIC}\"}}"));
    assert_eq!(route["code"], 0, "{route}");
    // The same over IPv6: the original destination is read with IP6T_SO_ORIGINAL_DST.
    let v6 = format!("[{}]:9876", link.b_v6);
    let route6 = raw(&v6, 105, &format!("{{\"topic\":\"{TOPIC}\"}}"));
    assert_eq!(route6["code"], 0, "{route6}");
    let stats = admin_get(&app, admin, "/stats/prometheus");
    assert!(
        stat(
            &stats,
            "rocketmq_rocketmesh_downstream_cx_transparent_nameserver"
        ) >= 2.0
    );
    // A tool that dials broker-a itself (it learned the address elsewhere): relayed unchanged.
    let ext = serde_json::json!({
        "topic": "PodTool", "defaultTopic": "TBW102", "readQueueNums": "2",
        "writeQueueNums": "2", "perm": "6", "topicFilterType": "SINGLE_TAG",
        "topicSysFlag": "0", "order": "false",
    })
    .to_string();
    let direct = raw(&broker_a, 17, &ext);
    assert_eq!(direct["code"], 0, "{direct}");
    let stats = admin_get(&app, admin, "/stats/prometheus");
    assert!(
        stat(
            &stats,
            "rocketmq_rocketmesh_downstream_cx_transparent_broker"
        ) >= 1.0
    );
    assert!(stat(&stats, "rocketmq_rocketmesh_transparent_broker_request") >= 1.0);
    // broker-a really got it: the control plane now routes the new topic to it.
    let routed = py_in(
        &cluster,
        &dir,
        "raw",
        &[
            ("addr", remoting.clone()),
            ("code", "105".into()),
            ("ext", "{\"topic\":\"PodTool\"}".into()),
        ],
    )
    .result(Duration::from_secs(30));
    assert_eq!(routed["code"], 0, "{routed}");

    // An unknown destination is closed (and counted) without --passthrough-unknown...
    let probe = |what: &str| {
        py_in(&app, &dir, "echo_probe", &[("addr", other.clone())])
            .result(Duration::from_secs(30))
            .get(what)
            .cloned()
    };
    let refused = probe("reply");
    assert!(
        refused.as_ref().is_none_or(|r| r.as_str() == Some("")),
        "an unknown destination was reached: {refused:?}"
    );
    let stats = admin_get(&app, admin, "/stats/prometheus");
    assert!(
        stat(
            &stats,
            "rocketmq_rocketmesh_downstream_cx_transparent_refused"
        ) >= 1.0
    );
    drop(sidecar);

    // ... and relayed at L4 with it.
    let _sidecar = transparent_sidecar(
        &app,
        &dir,
        "sidecar-pass",
        link.a_v4,
        &["--passthrough-unknown"],
    );
    let relayed = probe("reply");
    assert_eq!(
        relayed.as_ref().and_then(|r| r.as_str()),
        Some("echo-from-cluster")
    );
    let stats = admin_get(&app, admin, "/stats/prometheus");
    assert!(
        stat(
            &stats,
            "rocketmq_rocketmesh_downstream_cx_transparent_passthrough"
        ) >= 1.0
    );
}
