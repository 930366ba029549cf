//! ACL and authorization with the real C++ SDK (PyPI `rocketmq==0.4.4`, `support/sdk.py`) and
//! real `rocketmesh` processes on loopback:
//!
//! * the bundled broker with `--acl` (Apache `plain_acl.yml`): right keys produce and consume;
//!   a wrong secret, a topic the account may not publish to and an unsigned request are
//!   NO_PERMISSION; editing the file changes the decision without a restart, a bad edit keeps
//!   the last good;
//! * a sidecar with `--credentials` in front of two such brokers, the application without keys:
//!   sends (virtual queues over both brokers) and a push consumer (pull -> pop) work, and the
//!   brokers refused nothing: every upstream request was signed;
//! * a sidecar with `--verify-client-signatures` and `--authz`: an application with the right
//!   keys passes, wrong keys get NO_PERMISSION from the sidecar, and a topic the policy denies
//!   gets NO_PERMISSION with nothing reaching the broker, counted in `authz_denied{reason}`.

use crate::support::eventually_blocking;
use crate::support::interop::*;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rocketmesh_filters::acl::{sign, Credentials};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::{
    CreateTopicRequestHeader, GetMaxOffsetRequestHeader, OffsetResponseHeader,
    SendMessageRequestHeaderV2,
};
use rocketmesh_filters::codec::RemotingCommand;
use serde_json::Value;

const ACL: &str = r#"
# Apache plain_acl.yml
globalWhiteRemoteAddresses:
accounts:
  - accessKey: app
    secretKey: app-secret-1
    whiteRemoteAddress:
    admin: false
    defaultTopicPerm: DENY
    defaultGroupPerm: SUB
    topicPerms:
      - AclOrders=PUB|SUB
      - AclAudit=SUB
      - AclDenied=PUB|SUB
  - accessKey: mesh
    secretKey: mesh-secret-1
    defaultTopicPerm: PUB|SUB
    defaultGroupPerm: SUB
  - accessKey: ops
    secretKey: 12345678
    admin: true
"#;

fn creds(ak: &str, sk: &str) -> Credentials {
    Credentials {
        access_key: ak.into(),
        secret_key: sk.into(),
        security_token: None,
    }
}

fn ops() -> Credentials {
    creds("ops", "12345678")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `req` signed by `who` (None: unsigned) to `addr`: the answer.
fn signed_call(
    addr: SocketAddr,
    mut req: RemotingCommand,
    who: Option<&Credentials>,
) -> RemotingCommand {
    if let Some(c) = who {
        sign(&mut req, c);
    }
    rt().block_on(async {
        let c = connect(addr).await;
        let r = call(&c, req).await;
        c.close();
        r
    })
}

fn create_topic_signed(broker: SocketAddr, topic: &str, queues: i32) {
    let h = CreateTopicRequestHeader {
        topic: topic.into(),
        default_topic: "TBW102".into(),
        read_queue_nums: queues,
        write_queue_nums: queues,
        perm: 6,
        topic_filter_type: "SINGLE_TAG".into(),
        ..CreateTopicRequestHeader::default()
    };
    let r = signed_call(
        broker,
        RemotingCommand::request_with_header(rc::UPDATE_AND_CREATE_TOPIC, &h),
        Some(&ops()),
    );
    assert_eq!(
        r.code(),
        response_code::SUCCESS,
        "create {topic}: {:?}",
        r.remark()
    );
}

/// Messages stored for `topic` on `broker` (all queues), asked with the admin's keys.
fn stored(broker: SocketAddr, topic: &str, queues: i32) -> i64 {
    (0..queues)
        .map(|q| {
            let h = GetMaxOffsetRequestHeader {
                topic: topic.into(),
                queue_id: q,
                committed: None,
                bname: None,
            };
            let r = signed_call(
                broker,
                RemotingCommand::request_with_header(rc::GET_MAX_OFFSET, &h),
                Some(&ops()),
            );
            if r.code() != response_code::SUCCESS {
                return 0;
            }
            r.decode_header::<OffsetResponseHeader>().unwrap().offset
        })
        .sum()
}

fn send_req(topic: &str) -> RemotingCommand {
    let h = SendMessageRequestHeaderV2 {
        a: "PG_acl".into(),
        b: topic.into(),
        c: "TBW102".into(),
        d: 4,
        e: 0,
        ..SendMessageRequestHeaderV2::default()
    };
    RemotingCommand::request_with_header(rc::SEND_MESSAGE_V2, &h).with_body(&b"raw"[..])
}

/// A broker process with `--acl` and an admin server: (process, admin address).
fn acl_broker(
    dir: &Path,
    name: &str,
    acl: &Path,
    namesrv: Option<&str>,
) -> (BrokerProc, SocketAddr) {
    let data = dir.join(name);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "broker",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        name,
        "--acl",
        acl.to_str().unwrap(),
        "--admin",
        &admin,
        "--vip-channel",
        "false",
    ];
    if let Some(n) = namesrv {
        args.extend(["--namesrv", n]);
    }
    let (guard, ready) = start_rocketmesh(dir, &format!("{name}.broker"), &args);
    let addr = ready.split_whitespace().next().unwrap().parse().unwrap();
    (BrokerProc { guard, addr }, admin.parse().unwrap())
}

/// `rocketmesh_broker_acl_denied_total` of the broker whose admin server is `admin`.
fn acl_denied(admin: SocketAddr) -> f64 {
    admin_get(admin, "/stats/prometheus")
        .lines()
        .filter(|l| l.starts_with("rocketmesh_broker_acl_denied_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn produce_as(
    dir: &Path,
    namesrv: &str,
    topic: &str,
    prefix: &str,
    n: usize,
    keys: Option<(&str, &str)>,
) -> Value {
    let mut args = vec![
        ("namesrv", namesrv.to_owned()),
        ("topic", topic.into()),
        ("group", format!("PG_{topic}")),
        ("count", n.to_string()),
        ("prefix", prefix.into()),
    ];
    if let Some((ak, sk)) = keys {
        args.push(("access_key", ak.into()));
        args.push(("secret_key", sk.into()));
    }
    py_run(dir, "produce", &args, Duration::from_secs(90))
}

fn consume_as(
    dir: &Path,
    namesrv: &str,
    topic: &str,
    expect: usize,
    keys: Option<(&str, &str)>,
) -> Value {
    let mut args = vec![
        ("namesrv", namesrv.to_owned()),
        ("topic", topic.into()),
        ("group", format!("CG_{topic}")),
        ("expect", expect.to_string()),
        ("max_seconds", "60".into()),
        ("settle", "1".into()),
    ];
    if let Some((ak, sk)) = keys {
        args.push(("access_key", ak.into()));
        args.push(("secret_key", sk.into()));
    }
    py_run(dir, "consume", &args, Duration::from_secs(100))
}

fn ok_sends(r: &Value) -> usize {
    r["sent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| s(m, "status") == "OK")
        .count()
}

fn errors(r: &Value) -> usize {
    r["errors"].as_array().unwrap().len()
}

fn bodies(r: &Value) -> std::collections::BTreeSet<String> {
    r["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| s(m, "body"))
        .collect()
}

#[test]
fn cpp_sdk_against_the_broker_acl_and_reload() {
    python();
    let dir = work_dir("acl-broker");
    let acl_path = dir.join("plain_acl.yml");
    std::fs::write(&acl_path, ACL).unwrap();
    let (b, admin) = acl_broker(&dir, "broker-a", &acl_path, None);
    let ns = b.namesrv();
    // The broker's /config_dump shows the accounts, never a secret.
    let dump = admin_get(admin, "/config_dump");
    assert!(
        dump.contains("\"app\"") && !dump.contains("app-secret-1"),
        "{dump}"
    );
    create_topic_signed(b.addr, "AclOrders", 4);
    create_topic_signed(b.addr, "AclAudit", 4);
    let app = Some(("app", "app-secret-1"));

    // Right keys: produce and consume.
    let r = produce_as(&dir, &ns, "AclOrders", "ok", 20, app);
    assert_eq!((ok_sends(&r), errors(&r)), (20, 0), "{r}");
    let c = consume_as(&dir, &ns, "AclOrders", 20, app);
    assert_eq!(bodies(&c).len(), 20, "consumer with the right keys: {c}");

    // Wrong secret: nothing goes.
    let r = produce_as(&dir, &ns, "AclOrders", "badkey", 3, Some(("app", "wrong")));
    assert_eq!((ok_sends(&r), errors(&r)), (0, 3), "{r}");
    // A topic the account may only subscribe to.
    let r = produce_as(&dir, &ns, "AclAudit", "ro", 3, app);
    assert_eq!((ok_sends(&r), errors(&r)), (0, 3), "{r}");
    assert_eq!(stored(b.addr, "AclAudit", 4), 0);
    // The C++ SDK without keys (it signs with an empty AccessKey) and a truly unsigned request.
    let r = produce_as(&dir, &ns, "AclOrders", "nokey", 2, None);
    assert_eq!((ok_sends(&r), errors(&r)), (0, 2), "{r}");
    let raw = signed_call(b.addr, send_req("AclOrders"), None);
    assert_eq!(raw.code(), response_code::NO_PERMISSION);
    let raw = signed_call(
        b.addr,
        send_req("AclAudit"),
        Some(&creds("app", "app-secret-1")),
    );
    assert_eq!(raw.code(), response_code::NO_PERMISSION);
    let remark = raw.remark().unwrap_or_default();
    assert!(
        remark.contains("AclAudit") && remark.contains("accessKey=app"),
        "{remark}"
    );

    // Reload: AclAudit becomes publishable, without a restart.
    std::fs::write(&acl_path, ACL.replace("AclAudit=SUB", "AclAudit=PUB|SUB")).unwrap();
    eventually_blocking(
        "the broker picks up the edited ACL",
        Duration::from_secs(10),
        || {
            signed_call(
                b.addr,
                send_req("AclAudit"),
                Some(&creds("app", "app-secret-1")),
            )
            .code()
                == response_code::SUCCESS
        },
    );
    let r = produce_as(&dir, &ns, "AclAudit", "reloaded", 3, app);
    assert_eq!((ok_sends(&r), errors(&r)), (3, 0), "{r}");
    // A bad edit keeps the last good file.
    std::fs::write(
        &acl_path,
        "accounts:\n  - accessKey: app\n    topicPerms: [broken\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2)); // two reload polls: nothing to wait on
    let r = produce_as(&dir, &ns, "AclAudit", "kept", 3, app);
    assert_eq!(
        (ok_sends(&r), errors(&r)),
        (3, 0),
        "the last good ACL was dropped: {r}"
    );
    let log = std::fs::read_to_string(dir.join("broker-a.broker.log")).unwrap();
    assert!(
        log.contains("keeping the last good version"),
        "no log of the bad edit"
    );
    assert!(!log.contains("app-secret-1"), "a secret reached the log");
    b.stop();
}

/// A control plane, two `--acl` brokers serving `topics` (4 queues each) and a sidecar with
/// `extra` flags; returns them and the brokers' admin addresses.
struct AclMesh {
    dir: std::path::PathBuf,
    _cp: ControlPlaneProc,
    brokers: Vec<(BrokerProc, SocketAddr)>,
    sidecar: SidecarProc,
}

fn acl_mesh(name: &str, topics: &[&str], sidecar_flags: &[(&str, &str)]) -> AclMesh {
    python();
    let dir = work_dir(name);
    let acl_path = dir.join("plain_acl.yml");
    std::fs::write(&acl_path, ACL).unwrap();
    let cp = ControlPlaneProc::start(&dir);
    let ns = cp.remoting.to_string();
    let brokers: Vec<_> = ["broker-a", "broker-b"]
        .into_iter()
        .map(|n| acl_broker(&dir, n, &acl_path, Some(&ns)))
        .collect();
    for (b, _) in &brokers {
        for t in topics {
            create_topic_signed(b.addr, t, 4);
        }
    }
    let mut flags: Vec<String> = Vec::new();
    for (k, content) in sidecar_flags {
        let path = dir.join(format!("{}.yml", k.trim_start_matches('-')));
        std::fs::write(&path, content).unwrap();
        flags.push(k.to_string());
        flags.push(path.to_str().unwrap().to_owned());
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let sidecar =
        SidecarProc::start_at(&dir, "sidecar", cp.xds, "127.0.0.1:0", free_port(), &flags);
    AclMesh {
        dir,
        _cp: cp,
        brokers,
        sidecar,
    }
}

const MESH_CREDENTIALS: &str = "accessKey: mesh\nsecretKey: mesh-secret-1\n";

#[test]
fn sidecar_signs_for_an_application_without_keys() {
    let topic = "AclOrders";
    let m = acl_mesh(
        "acl-sidecar-signs",
        &[topic],
        &[("--credentials", MESH_CREDENTIALS)],
    );
    let sc = m.sidecar.addr;
    rt().block_on(wait_for_route(sc, topic, (8, 8), Duration::from_secs(30)));

    // The application has no keys; the sidecar's replace its empty ones on every request.
    let r = produce_as(&m.dir, &sc.to_string(), topic, "mesh", 40, None);
    assert_eq!((ok_sends(&r), errors(&r)), (40, 0), "{r}");
    // The virtual queues spread the sends over both brokers: both were written, signed.
    for (b, _) in &m.brokers {
        assert!(
            stored(b.addr, topic, 4) > 0,
            "broker {} got none of the sends",
            b.addr
        );
    }
    // A legacy push consumer: pulls become pops, acks, heartbeats, offsets, all upstream.
    let c = consume_as(&m.dir, &sc.to_string(), topic, 40, None);
    assert_eq!(bodies(&c).len(), 40, "consumer through the sidecar: {c}");

    // Not one upstream request of all that was refused by a broker's ACL: all were signed.
    for (b, admin) in &m.brokers {
        assert_eq!(
            acl_denied(*admin),
            0.0,
            "broker {} refused upstream requests",
            b.addr
        );
    }
    // ... while an unsigned request is (so the count above is a real check).
    let (b, admin) = &m.brokers[0];
    assert_eq!(
        signed_call(b.addr, send_req(topic), None).code(),
        response_code::NO_PERMISSION
    );
    eventually_blocking("the refusal is counted", Duration::from_secs(10), || {
        acl_denied(*admin) == 1.0
    });

    // /config_dump shows the access key, never the secret.
    let dump = m.sidecar.admin_get("/config_dump");
    assert!(dump.contains("\"mesh\""), "{dump}");
    assert!(!dump.contains("mesh-secret-1"), "{dump}");
}

const POLICY: &str = "produce: [AclOrders]\nconsume: [AclOrders]\ngroups: ['CG_*']\n";

#[test]
fn sidecar_verifies_client_signatures_and_authorizes_topics() {
    let m = acl_mesh(
        "acl-sidecar-verify",
        &["AclOrders", "AclDenied"],
        &[
            ("--credentials", MESH_CREDENTIALS),
            ("--verify-client-signatures", ACL),
            ("--authz", POLICY),
        ],
    );
    let sc = m.sidecar.addr.to_string();
    let app = Some(("app", "app-secret-1"));

    // Right keys: checked at the sidecar, re-signed with the mesh's keys upstream.
    let r = produce_as(&m.dir, &sc, "AclOrders", "verified", 10, app);
    assert_eq!((ok_sends(&r), errors(&r)), (10, 0), "{r}");
    let c = consume_as(&m.dir, &sc, "AclOrders", 10, app);
    assert_eq!(bodies(&c).len(), 10, "consumer with verified keys: {c}");

    // Wrong keys: NO_PERMISSION from the sidecar.
    let r = produce_as(&m.dir, &sc, "AclOrders", "wrong", 2, Some(("app", "nope")));
    assert_eq!((ok_sends(&r), errors(&r)), (0, 2), "{r}");
    let raw = signed_call(
        m.sidecar.addr,
        send_req("AclOrders"),
        Some(&creds("app", "nope")),
    );
    assert_eq!(raw.code(), response_code::NO_PERMISSION);
    assert!(
        raw.remark().unwrap_or_default().starts_with("rocketmesh:"),
        "{raw:?}"
    );
    assert!(
        m.sidecar
            .stat("rocketmq_rocketmesh_client_auth_denied")
            .unwrap_or(0.0)
            >= 1.0
    );

    // A topic the account may use but the sidecar's policy denies: refused at the sidecar,
    // nothing at the brokers, counted by reason.
    let r = produce_as(&m.dir, &sc, "AclDenied", "denied", 3, app);
    assert_eq!((ok_sends(&r), errors(&r)), (0, 3), "{r}");
    let raw = signed_call(
        m.sidecar.addr,
        send_req("AclDenied"),
        Some(&creds("app", "app-secret-1")),
    );
    assert_eq!(raw.code(), response_code::NO_PERMISSION);
    assert!(
        raw.remark().unwrap_or_default().contains("AclDenied"),
        "{raw:?}"
    );
    for (b, _) in &m.brokers {
        assert_eq!(
            stored(b.addr, "AclDenied", 4),
            0,
            "a denied send reached {}",
            b.addr
        );
    }
    let denied = m
        .sidecar
        .admin_get("/stats/prometheus")
        .lines()
        .find(|l| l.starts_with("rocketmq_rocketmesh_authz_denied{reason=\"produce\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(denied >= 4.0, "authz_denied{{reason=produce}} = {denied}");

    // The policy reloads: AclDenied becomes producible.
    std::fs::write(
        m.dir.join("authz.yml"),
        POLICY.replace("produce: [AclOrders]", "produce: [AclOrders, AclDenied]"),
    )
    .unwrap();
    eventually_blocking(
        "the sidecar picks up the edited policy",
        Duration::from_secs(10),
        || {
            signed_call(
                m.sidecar.addr,
                send_req("AclDenied"),
                Some(&creds("app", "app-secret-1")),
            )
            .code()
                != response_code::NO_PERMISSION
        },
    );
    let dump = m.sidecar.admin_get("/config_dump");
    assert!(
        dump.contains("AclDenied") && !dump.contains("app-secret-1"),
        "{dump}"
    );
}
