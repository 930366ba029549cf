//! TLS on every Remoting hop and on the ADS connection, over loopback with certificates made
//! here (`support::pki`): sidecar <-> broker mTLS end to end, SDK -> sidecar TLS, broker
//! listener modes, client certificate refusals, rotation without a restart, xDS over TLS with
//! bearer tokens (our client and PyPI `grpcio`), an independent TLS client (Python's `ssl`)
//! speaking Remoting, and bad input (ClientHello on plaintext, garbage after a handshake,
//! half-finished handshakes closed by the timeout).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rocketmesh::broker::{self, BrokerConfig};
use rocketmesh::control_plane::{self, ControlPlaneConfig};
use rocketmesh::remoting::tls::{
    ClientAuth, ClientTls, ClientTlsOptions, ServerTls, ServerTlsOptions, TlsMode,
};
use rocketmesh::remoting::RemotingClient;
use rocketmesh::sdk;
use rocketmesh::sidecar::SidecarConfig;
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::RemotingCommand;
use rocketmesh_xds::client::{ClientConfig, XdsClient};
use rocketmesh_xds::transport::{TokenSet, H2};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::pki::{write, Ca, Leaf};
use crate::support::venv::Venv;
use crate::support::{
    bounded, create_topic_on, eventually, http_get, local, start_sidecar, temp_dir, T,
};

const TEST: Duration = Duration::from_secs(90);
const CP_ID: &str = "spiffe://mesh.test/ns/mq/sa/control-plane";
const BROKER_ID: &str = "spiffe://mesh.test/ns/mq/sa/broker";
const SIDECAR_ID: &str = "spiffe://mesh.test/ns/app/sa/sidecar";
const TOPIC: &str = "TlsTopic";
const GROUP: &str = "tls_group";

/// A CA, and certificates for the control plane, a broker and a sidecar, in `dir`.
struct Pki {
    dir: PathBuf,
    ca: Ca,
    ca_pem: PathBuf,
    cp: Leaf,
    broker: Leaf,
    sidecar: Leaf,
}

impl Pki {
    fn new(test: &str) -> Pki {
        let dir = temp_dir(test);
        let ca = Ca::new("mesh test ca");
        let ca_pem = ca.write(&dir, "ca.pem");
        let cp = ca.issue(&dir, "cp", "control-plane", &["cp.test", CP_ID], 1);
        let broker = ca.issue(&dir, "broker", "broker-a", &["broker.test", BROKER_ID], 2);
        let sidecar = ca.issue(&dir, "sidecar", "sidecar", &["sidecar.test", SIDECAR_ID], 3);
        Pki {
            dir,
            ca,
            ca_pem,
            cp,
            broker,
            sidecar,
        }
    }

    /// A listener policy serving `leaf`; with `allowed`, client certificates from our CA
    /// carrying one of them are required.
    fn server(
        &self,
        name: &'static str,
        leaf: &Leaf,
        mode: TlsMode,
        allowed: &[&str],
    ) -> Arc<ServerTls> {
        self.server_alpn(name, leaf, mode, allowed, &[])
    }

    fn server_alpn(
        &self,
        name: &'static str,
        leaf: &Leaf,
        mode: TlsMode,
        allowed: &[&str],
        alpn: &[&[u8]],
    ) -> Arc<ServerTls> {
        let mtls = !allowed.is_empty();
        ServerTls::new(
            name,
            ServerTlsOptions {
                mode,
                cert: Some(leaf.cert.clone()),
                key: Some(leaf.key.clone()),
                client_auth: if mtls {
                    ClientAuth::Require
                } else {
                    ClientAuth::None
                },
                client_ca: mtls.then(|| self.ca_pem.clone()),
                allowed_identities: allowed.iter().map(|a| a.parse().unwrap()).collect(),
                handshake_timeout: Duration::from_millis(500),
                reload_interval: Duration::from_millis(50),
                alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            },
        )
        .unwrap()
    }

    /// A client trusting our CA, presenting `leaf` when given, requiring `identity`.
    fn client(&self, leaf: Option<&Leaf>, identity: &str) -> Arc<ClientTls> {
        self.client_with(&self.ca_pem, leaf, identity, &[])
    }

    fn client_with(
        &self,
        ca: &Path,
        leaf: Option<&Leaf>,
        identity: &str,
        alpn: &[&[u8]],
    ) -> Arc<ClientTls> {
        ClientTls::new(
            ClientTlsOptions {
                ca: ca.to_owned(),
                cert: leaf.map(|l| l.cert.clone()),
                key: leaf.map(|l| l.key.clone()),
                sni: None,
                identities: vec![identity.parse().unwrap()],
                alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            },
            Duration::from_millis(50),
        )
        .unwrap()
    }
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    tls: &ClientTls,
) -> Result<RemotingClient, String> {
    RemotingClient::connect_tls(addr, "127.0.0.1", Some(tls), None)
        .await
        .map_err(|e| e.to_string())
}

/// True when a request over `c` is answered (a refused TLS 1.3 client learns of the refusal
/// on its first read).
async fn answers(c: &RemotingClient) -> bool {
    let req = RemotingCommand::request(request_code::HEART_BEAT);
    c.invoke(req, Duration::from_secs(3)).await.is_ok()
}

/// The topic's route through `c`, once the control plane has it (a broker re-registers after a
/// topic is created; until then the answer is TOPIC_NOT_EXIST).
async fn wait_route(c: &RemotingClient) -> rocketmesh_filters::codec::body::TopicRouteData {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = sdk::route(c, TOPIC, T).await.unwrap() {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no route for {TOPIC}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `n` messages to `topic` through `producer`, pops and acks them through `consumer`.
async fn produce_and_consume(producer: &RemotingClient, consumer: &RemotingClient, n: usize) {
    let route = wait_route(producer).await;
    let queues = route
        .queue_datas
        .iter()
        .map(|q| q.write_queue_nums)
        .max()
        .unwrap_or(4);
    for i in 0..n {
        let req = sdk::send_v2(
            "tls_pg",
            TOPIC,
            (i as i32) % queues,
            queues,
            &format!("TLS{i:08}"),
            Bytes::from(format!("tls message {i}")),
        );
        let resp = producer.invoke(req, T).await.unwrap();
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    }
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < n {
        assert!(tokio::time::Instant::now() < deadline, "popped {seen:?}");
        let req = sdk::pop(
            GROUP,
            TOPIC,
            -1,
            32,
            Duration::from_secs(30),
            Duration::from_millis(500),
        );
        let resp = consumer.invoke(req, T).await.unwrap();
        if resp.code() != response_code::SUCCESS {
            continue;
        }
        for m in sdk::popped(&resp, "broker-a").unwrap() {
            seen.insert(m.uniq_key.clone().unwrap_or_default());
            let ack = consumer
                .invoke(sdk::ack(GROUP, TOPIC, &m.handle), T)
                .await
                .unwrap();
            assert_eq!(ack.code(), response_code::SUCCESS, "{:?}", ack.remark());
        }
    }
}

/// Control plane (Remoting: mTLS, brokers only), broker (mTLS, sidecars only; registers over
/// mTLS), sidecar (mTLS to the broker, checking its identity; permissive towards SDKs):
/// messages go both ways through it, over TLS and plaintext SDK connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_on_every_remoting_hop_end_to_end() {
    bounded(TEST, async {
        let pki = Pki::new("tls-e2e");
        let mut cfg = ControlPlaneConfig::new(local());
        cfg.xds = Some(local());
        cfg.warmup = Duration::ZERO;
        let cp_tls = pki.server("namesrv", &pki.cp, TlsMode::Enforcing, &[BROKER_ID]);
        cfg.tls = Some(cp_tls.clone());
        let cp = control_plane::start(cfg).await.unwrap();

        let mut bcfg = BrokerConfig::new(local(), temp_dir("tls-e2e-broker"));
        bcfg.name = "broker-a".into();
        bcfg.namesrv = Some(cp.remoting_addr.to_string());
        bcfg.register_interval = Duration::from_secs(1);
        let broker_tls = pki.server("broker", &pki.broker, TlsMode::Enforcing, &[SIDECAR_ID]);
        bcfg.tls = Some(broker_tls.clone());
        bcfg.namesrv_tls = Some(pki.client(Some(&pki.broker), CP_ID));
        let b = broker::start(bcfg).await.unwrap();
        eventually("the broker registered over mTLS", || {
            cp_tls.stats().snapshot().handshakes_ok > 0
        })
        .await;

        // The topic, created over mTLS with the sidecar's certificate.
        let admin = tls_connect(b.addr, &pki.client(Some(&pki.sidecar), BROKER_ID))
            .await
            .unwrap();
        create_topic_on(&admin, TOPIC, 6, 4).await;
        // Plaintext to the broker: refused.
        let plain = RemotingClient::connect(b.addr, None).await.unwrap();
        assert!(
            !answers(&plain).await,
            "the enforcing broker served plaintext"
        );

        let mut scfg = SidecarConfig::new(local());
        scfg.xds = cp.xds_addr.map(|a| a.to_string());
        scfg.route_timeout = Duration::from_secs(5);
        scfg.drain = Duration::from_secs(2);
        scfg.vip_channel = false;
        scfg.admin = Some(local());
        scfg.upstream.tls = Some(pki.client(Some(&pki.sidecar), BROKER_ID));
        let listener_tls = pki.server("sidecar", &pki.sidecar, TlsMode::Permissive, &[]);
        scfg.tls = Some(listener_tls.clone());
        let sidecar = start_sidecar(scfg).await;

        // SDK -> sidecar over TLS (our Rust client, checking the sidecar's identity) and over
        // plaintext, on the same port.
        let sdk_tls = tls_connect(sidecar.addr, &pki.client(None, SIDECAR_ID))
            .await
            .unwrap();
        let sdk_plain = RemotingClient::connect(sidecar.addr, None).await.unwrap();
        produce_and_consume(&sdk_tls, &sdk_plain, 20).await;
        let s = listener_tls.stats().snapshot();
        assert_eq!(
            (s.tls_connections, s.plaintext_connections),
            (1, 1),
            "{s:?}"
        );
        assert!(broker_tls.stats().snapshot().handshakes_ok >= 2);
        assert!(broker_tls.stats().snapshot().handshakes_failed >= 1);

        // /config_dump: files, subjects, expiry; no key material.
        let admin_addr = sidecar.admin_addr.unwrap();
        let (status, dump) = http_get(admin_addr, "/config_dump").await;
        assert_eq!(status, 200);
        assert!(
            dump.contains("CN=sidecar") && dump.contains("sidecar.key"),
            "{dump}"
        );
        assert!(dump.contains("not_after"), "{dump}");
        let key = std::fs::read_to_string(&pki.sidecar.key).unwrap();
        let key_body = key.lines().nth(1).unwrap();
        assert!(!dump.contains("PRIVATE KEY") && !dump.contains(key_body));
        let (_, prom) = http_get(admin_addr, "/stats/prometheus").await;
        assert!(prom.contains("rocketmesh_tls_handshakes_total"), "{prom}");
        assert!(prom.contains("rocketmesh_tls_connections_total"), "{prom}");

        sidecar.shutdown().await;
        b.shutdown().await;
        cp.shutdown().await;
        let _ = std::fs::remove_dir_all(&pki.dir);
    })
    .await;
}

/// A broker's listener: permissive serves TLS and plaintext on one port; client certificates
/// from an unknown CA or with a wrong identity are refused and counted; a rotated certificate
/// is served to new connections while an open one keeps working.
#[tokio::test]
async fn broker_listener_modes_identities_and_rotation() {
    bounded(TEST, async {
        let pki = Pki::new("tls-broker");
        let mut bcfg = BrokerConfig::new(local(), temp_dir("tls-broker-data"));
        let tls = pki.server("broker", &pki.broker, TlsMode::Permissive, &[SIDECAR_ID]);
        bcfg.tls = Some(tls.clone());
        let b = broker::start(bcfg).await.unwrap();

        let good = tls_connect(b.addr, &pki.client(Some(&pki.sidecar), BROKER_ID))
            .await
            .unwrap();
        assert!(answers(&good).await);
        let plain = RemotingClient::connect(b.addr, None).await.unwrap();
        assert!(answers(&plain).await, "permissive must serve plaintext");

        let other = Ca::new("someone else's ca");
        let foreign = other.issue(&pki.dir, "foreign", "intruder", &[SIDECAR_ID], 9);
        let wrong_id = pki.ca.issue(
            &pki.dir,
            "wrongid",
            "app",
            &["spiffe://mesh.test/ns/app/sa/other"],
            10,
        );
        for leaf in [&foreign, &wrong_id] {
            let refused = match tls_connect(b.addr, &pki.client(Some(leaf), BROKER_ID)).await {
                Ok(c) => !answers(&c).await,
                Err(_) => true,
            };
            assert!(refused, "{} was served", leaf.cert.display());
        }
        eventually("two refusals counted", || {
            tls.stats().snapshot().handshakes_failed == 2
        })
        .await;

        // Rotation: a new certificate under the same file names.
        let rotated = pki.ca.issue(
            &pki.dir,
            "broker",
            "broker-a-rotated",
            &["broker.test", BROKER_ID],
            4242,
        );
        eventually("the rotated certificate loaded", || {
            tls.dump()
                .certificate
                .and_then(|c| c.certificate)
                .is_some_and(|c| c.subject == "CN=broker-a-rotated" && c.serial == "10:92")
        })
        .await;
        let tcp = TcpStream::connect(b.addr).await.unwrap();
        let fresh = pki.client(Some(&pki.sidecar), BROKER_ID);
        let stream = fresh.connect(tcp, "127.0.0.1").await.unwrap();
        assert_eq!(
            stream.peer_certificate().unwrap().as_ref(),
            &rotated.der[..]
        );
        assert!(
            answers(&good).await,
            "the connection made before the rotation broke"
        );
        b.shutdown().await;
        let _ = std::fs::remove_dir_all(&pki.dir);
    })
    .await;
}

/// Bad input: a TLS ClientHello to a plaintext-only listener, garbage after a handshake, and
/// handshakes left half-finished (closed by the handshake timeout): each closed and counted,
/// while another connection is served throughout.
#[tokio::test]
async fn bad_input_is_closed_and_counted() {
    bounded(TEST, async {
        let pki = Pki::new("tls-bad");
        // A plaintext-only broker.
        let plain_b = broker::start(BrokerConfig::new(local(), temp_dir("tls-bad-plain")))
            .await
            .unwrap();
        let bystander = RemotingClient::connect(plain_b.addr, None).await.unwrap();
        let tcp = TcpStream::connect(plain_b.addr).await.unwrap();
        assert!(pki.client(None, BROKER_ID).connect(tcp, "x").await.is_err());
        assert!(answers(&bystander).await);

        let mut bcfg = BrokerConfig::new(local(), temp_dir("tls-bad-tls"));
        let tls = pki.server("broker", &pki.broker, TlsMode::Enforcing, &[]);
        bcfg.tls = Some(tls.clone());
        let b = broker::start(bcfg).await.unwrap();
        let client = pki.client(None, BROKER_ID);
        let bystander = tls_connect(b.addr, &client).await.unwrap();

        // Garbage after a finished handshake: a frame length past every limit.
        let tcp = TcpStream::connect(b.addr).await.unwrap();
        let (mut r, mut w) = client.connect(tcp, "x").await.unwrap().into_split();
        w.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0])
            .await
            .unwrap();
        w.flush().await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(T, r.read(&mut buf)).await.unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

        // Half-finished handshakes: silent, and the first bytes of a ClientHello only.
        let started = tokio::time::Instant::now();
        let mut silent = TcpStream::connect(b.addr).await.unwrap();
        let mut partial = TcpStream::connect(b.addr).await.unwrap();
        partial
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        for s in [&mut silent, &mut partial] {
            let n = tokio::time::timeout(T, s.read(&mut buf)).await.unwrap();
            assert!(matches!(n, Ok(0) | Err(_)));
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let s = tls.stats().snapshot();
        assert_eq!(s.handshake_timeouts, 2, "{s:?}");
        assert!(answers(&bystander).await);
        b.shutdown().await;
        plain_b.shutdown().await;
        let _ = std::fs::remove_dir_all(&pki.dir);
    })
    .await;
}

/// The control plane's ADS listener over TLS, requiring a bearer token: a sidecar with the
/// token gets routes; a client with a wrong or no token is refused (counted); PyPI `grpcio`
/// with TLS credentials and the token metadata is served, without the token refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_over_tls_with_a_bearer_token() {
    bounded(Duration::from_secs(300), async {
        let pki = Pki::new("tls-xds");
        let tokens = write(
            &pki.dir,
            "tokens",
            "# accepted\nsecret-token-1\n\nsecret-token-2\n",
        );
        let good_token = write(&pki.dir, "good.token", "secret-token-2\n");
        let bad_token = write(&pki.dir, "bad.token", "guess\n");
        let mut cfg = ControlPlaneConfig::new(local());
        cfg.xds = Some(local());
        cfg.warmup = Duration::ZERO;
        let ads_tls = pki.server_alpn("ads", &pki.cp, TlsMode::Enforcing, &[], &[H2]);
        cfg.xds_security.tls = Some(ads_tls.clone());
        let token_set = TokenSet::load(&tokens).unwrap();
        cfg.xds_security.tokens = Some(token_set.clone());
        let cp = control_plane::start(cfg).await.unwrap();
        let xds = cp.xds_addr.unwrap();
        let b = crate::support::start_broker("broker-a", "tls-xds", Some(cp.remoting_addr)).await;
        crate::support::create_topic(b.addr, TOPIC, 6, 4).await;

        // A sidecar with TLS and the token: routes flow.
        let mut scfg = SidecarConfig::new(local());
        scfg.xds = Some(xds.to_string());
        scfg.vip_channel = false;
        scfg.xds_tls = Some(pki.client_with(&pki.ca_pem, None, CP_ID, &[H2]));
        scfg.xds_token = Some(good_token.clone());
        let sidecar = start_sidecar(scfg).await;
        let c = RemotingClient::connect(sidecar.addr, None).await.unwrap();
        wait_route(&c).await;

        // Wrong token, and none: never connected, refused by the control plane.
        for token in [Some(bad_token.clone()), None] {
            let mut ccfg = ClientConfig::new(xds.to_string());
            ccfg.tls = Some(pki.client_with(&pki.ca_pem, None, CP_ID, &[H2]));
            ccfg.token_file = token;
            let before = token_set.refused();
            let client = XdsClient::start(ccfg);
            eventually("the stream refused", || token_set.refused() > before).await;
            assert!(!client.wait_connected(Duration::from_millis(300)).await);
        }

        // PyPI grpcio: TLS credentials from our CA and the token as metadata.
        let (addr, ca) = (xds.to_string(), pki.ca_pem.clone());
        let answer = tokio::task::spawn_blocking(move || {
            let python = GRPC_VENV
                .build()
                .unwrap_or_else(|e| panic!("grpcio venv: {e}"));
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/xds_grpc.py");
            let run = |token: &str| {
                let out = Command::new(&python)
                    .args([script, &addr, ca.to_str().unwrap(), "cp.test", token])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            };
            (run("secret-token-1"), run(""))
        })
        .await
        .unwrap();
        let clusters: usize = answer
            .0
            .strip_prefix("clusters=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("grpcio with the token: {}", answer.0));
        assert!(clusters >= 1, "{}", answer.0);
        assert_eq!(answer.1, "error=UNAUTHENTICATED");

        sidecar.shutdown().await;
        b.shutdown().await;
        cp.shutdown().await;
        let _ = std::fs::remove_dir_all(&pki.dir);
    })
    .await;
}

/// PyPI grpcio for the independent ADS client.
const GRPC_VENV: Venv = Venv {
    name: "grpc-venv",
    packages: &["grpcio==1.85.1"],
    check: "import grpc",
};

/// Python's `ssl` (stdlib) against a permissive broker listener: a TLS connection carrying a
/// Remoting frame gets its answer; the same frame in plaintext on the same port too.
#[tokio::test]
async fn python_ssl_speaks_remoting_to_the_permissive_listener() {
    bounded(TEST, async {
        let pki = Pki::new("tls-python");
        let mut bcfg = BrokerConfig::new(local(), temp_dir("tls-python-broker"));
        let tls = pki.server("broker", &pki.broker, TlsMode::Permissive, &[]);
        bcfg.tls = Some(tls.clone());
        let b = broker::start(bcfg).await.unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/support/tls_remoting.py"
        );
        let (addr, ca) = (b.addr.to_string(), pki.ca_pem.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .args([script, &addr, ca.to_str().unwrap(), "broker.test"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The same request answered the same way over TLS and over plaintext.
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert!(v["tls"].is_i64() && v["tls"] == v["plain"], "{stdout}");
        assert!(
            v["version"].as_str().is_some_and(|t| t.starts_with("TLS")),
            "{stdout}"
        );
        let s = tls.stats().snapshot();
        assert_eq!(
            (s.tls_connections, s.plaintext_connections),
            (1, 1),
            "{s:?}"
        );
        b.shutdown().await;
        let _ = std::fs::remove_dir_all(&pki.dir);
    })
    .await;
}

/// The sidecar -> broker leg configured per cluster from xDS (the control plane's
/// `--cluster-tls-*`: an `UpstreamTlsContext` in every registered topic's cluster, the shape
/// Istio sends), with no `--upstream-tls-*` on the sidecar: messages flow over mTLS, the
/// broker's identity is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_tls_from_xds_secures_the_sidecar_to_broker_leg() {
    bounded(TEST, async {
        let pki = Pki::new("tls-cluster");
        let mut cfg = ControlPlaneConfig::new(local());
        cfg.xds = Some(local());
        cfg.warmup = Duration::ZERO;
        cfg.cluster_tls = Some(rocketmesh_xds::model::UpstreamTls {
            ca_file: pki.ca_pem.display().to_string(),
            cert_file: Some(pki.sidecar.cert.display().to_string()),
            key_file: Some(pki.sidecar.key.display().to_string()),
            sni: Some("broker.test".into()),
            identities: vec![BROKER_ID.parse().unwrap()],
        });
        let cp = control_plane::start(cfg).await.unwrap();
        let mut bcfg = BrokerConfig::new(local(), temp_dir("tls-cluster-broker"));
        bcfg.name = "broker-a".into();
        bcfg.namesrv = Some(cp.remoting_addr.to_string());
        bcfg.register_interval = Duration::from_secs(1);
        let broker_tls = pki.server("broker", &pki.broker, TlsMode::Enforcing, &[SIDECAR_ID]);
        bcfg.tls = Some(broker_tls.clone());
        let b = broker::start(bcfg).await.unwrap();
        let admin = tls_connect(b.addr, &pki.client(Some(&pki.sidecar), BROKER_ID))
            .await
            .unwrap();
        create_topic_on(&admin, TOPIC, 6, 4).await;

        let mut scfg = SidecarConfig::new(local());
        scfg.xds = cp.xds_addr.map(|a| a.to_string());
        scfg.vip_channel = false;
        scfg.route_timeout = Duration::from_secs(5);
        let sidecar = start_sidecar(scfg).await;
        let c = RemotingClient::connect(sidecar.addr, None).await.unwrap();
        let before = broker_tls.stats().snapshot().handshakes_ok;
        produce_and_consume(&c, &c, 10).await;
        assert!(broker_tls.stats().snapshot().handshakes_ok > before);
        sidecar.shutdown().await;
        b.shutdown().await;
        cp.shutdown().await;
        let _ = std::fs::remove_dir_all(&pki.dir);
    })
    .await;
}
