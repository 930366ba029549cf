//! `--acl`: Apache's plain_acl.yml enforced by a real broker over loopback: signed requests of
//! an account pass where its permissions allow, everything else is NO_PERMISSION with a remark
//! naming the account and the resource; the file is reloaded on change and a bad edit keeps the
//! last good accounts. (The C++ SDK against the same broker: tests/it/acl.rs.)

use std::path::Path;
use std::time::{Duration, Instant};

use rocketmesh_broker::{start, BrokerConfig, BrokerHandle};
use rocketmesh_filters::acl::{sign, Credentials};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::*;
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_remoting::RemotingClient;

const T: Duration = Duration::from_secs(10);

const ACL: &str = r#"
globalWhiteRemoteAddresses:
accounts:
  - accessKey: app
    secretKey: app-secret-1
    defaultTopicPerm: DENY
    defaultGroupPerm: SUB
    topicPerms:
      - Orders=PUB|SUB
      - Audit=SUB
  - accessKey: ops
    secretKey: 12345678
    admin: true
"#;

async fn broker(dir: &Path, acl: &Path) -> BrokerHandle {
    let mut cfg = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("data"));
    cfg.vip_channel = false;
    cfg.acl = Some(acl.to_path_buf());
    cfg.acl_reload_interval = Duration::from_millis(50);
    start(cfg).await.unwrap()
}

fn creds(ak: &str, sk: &str) -> Credentials {
    Credentials {
        access_key: ak.into(),
        secret_key: sk.into(),
        security_token: None,
    }
}

fn send_req(topic: &str, who: Option<&Credentials>) -> RemotingCommand {
    let h = SendMessageRequestHeaderV2 {
        a: "pg".into(),
        b: topic.into(),
        c: "TBW102".into(),
        d: 4,
        e: 0,
        ..SendMessageRequestHeaderV2::default()
    };
    let mut req =
        RemotingCommand::request_with_header(rc::SEND_MESSAGE_V2, &h).with_body(&b"hello"[..]);
    if let Some(c) = who {
        sign(&mut req, c);
    }
    req
}

async fn code_and_remark(c: &RemotingClient, req: RemotingCommand) -> (i32, String) {
    let resp = c.invoke(req, T).await.unwrap();
    (resp.code(), resp.remark().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn signed_requests_pass_where_permitted_and_the_file_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let acl_path = dir.path().join("plain_acl.yml");
    std::fs::write(&acl_path, ACL).unwrap();
    let b = broker(dir.path(), &acl_path).await;
    let c = RemotingClient::connect(b.addr, None).await.unwrap();
    let app = creds("app", "app-secret-1");

    let (code, remark) = code_and_remark(&c, send_req("Orders", Some(&app))).await;
    assert_eq!(code, response_code::SUCCESS, "{remark}");

    // A topic the account may only consume.
    let (code, remark) = code_and_remark(&c, send_req("Audit", Some(&app))).await;
    assert_eq!(code, response_code::NO_PERMISSION);
    assert!(
        remark.contains("topic Audit") && remark.contains("accessKey=app"),
        "{remark}"
    );
    // Wrong secret, unknown account, unsigned.
    let (code, remark) = code_and_remark(&c, send_req("Orders", Some(&creds("app", "nope")))).await;
    assert_eq!(code, response_code::NO_PERMISSION);
    assert!(
        remark.contains("signature") && !remark.contains("app-secret"),
        "{remark}"
    );
    let (code, _) = code_and_remark(&c, send_req("Orders", Some(&creds("ghost", "x")))).await;
    assert_eq!(code, response_code::NO_PERMISSION);
    let (code, remark) = code_and_remark(&c, send_req("Orders", None)).await;
    assert_eq!(code, response_code::NO_PERMISSION);
    assert!(remark.contains("accessKey"), "{remark}");

    // Admin codes need an admin account.
    let create = |who: &Credentials| {
        let h = CreateTopicRequestHeader {
            topic: "NewTopic".into(),
            default_topic: "TBW102".into(),
            read_queue_nums: 1,
            write_queue_nums: 1,
            perm: 6,
            topic_filter_type: "SINGLE_TAG".into(),
            ..CreateTopicRequestHeader::default()
        };
        let mut r = RemotingCommand::request_with_header(rc::UPDATE_AND_CREATE_TOPIC, &h);
        sign(&mut r, who);
        r
    };
    let (code, remark) = code_and_remark(&c, create(&app)).await;
    assert_eq!(code, response_code::NO_PERMISSION);
    assert!(remark.contains("admin"), "{remark}");
    let (code, remark) = code_and_remark(&c, create(&creds("ops", "12345678"))).await;
    assert_eq!(code, response_code::SUCCESS, "{remark}");
    let (denied, _, _) = b.acl_stats();
    assert_eq!(denied, 5);

    // Reload: app may now publish to Audit.
    std::fs::write(&acl_path, ACL.replace("Audit=SUB", "Audit=PUB")).unwrap();
    let deadline = Instant::now() + T;
    loop {
        let (code, _) = code_and_remark(&c, send_req("Audit", Some(&app))).await;
        if code == response_code::SUCCESS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edited ACL was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.acl_stats().1, 1);
    // A bad edit keeps the last good file.
    std::fs::write(&acl_path, "accounts: [{accessKey: app}]   # no secret").unwrap();
    let deadline = Instant::now() + T;
    while b.acl_stats().2 == 0 {
        assert!(Instant::now() < deadline, "the bad edit was not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, remark) = code_and_remark(&c, send_req("Audit", Some(&app))).await;
    assert_eq!(code, response_code::SUCCESS, "{remark}");
    let dump = b.acl_dump().unwrap().to_string();
    assert!(
        dump.contains("\"app\"") && !dump.contains("app-secret-1"),
        "{dump}"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn white_listed_addresses_need_no_signature() {
    let dir = tempfile::tempdir().unwrap();
    let acl_path = dir.path().join("plain_acl.yml");
    std::fs::write(
        &acl_path,
        ACL.replace(
            "globalWhiteRemoteAddresses:",
            "globalWhiteRemoteAddresses: [127.0.0.*]",
        ),
    )
    .unwrap();
    let b = broker(dir.path(), &acl_path).await;
    let c = RemotingClient::connect(b.addr, None).await.unwrap();
    let (code, remark) = code_and_remark(&c, send_req("Anything", None)).await;
    assert_eq!(code, response_code::SUCCESS, "{remark}");
    b.shutdown().await;
}
