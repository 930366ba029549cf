//! TLS over real loopback sockets with certificates made here (rcgen).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, SerialNumber,
};
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::{RemotingCommand, ResponseEncoding};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::{Connection, Handler, RemotingClient, Server, ServerConfig};

/// A CA that issues leaf certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn sans(names: &[&str]) -> Vec<SanType> {
    names
        .iter()
        .map(|n| {
            if let Ok(ip) = n.parse() {
                SanType::IpAddress(ip)
            } else if n.contains("://") {
                SanType::URI((*n).try_into().unwrap())
            } else {
                SanType::DnsName((*n).try_into().unwrap())
            }
        })
        .collect()
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// (cert PEM, key PEM, cert DER) for `cn` with these SANs.
    fn issue(&self, cn: &str, names: &[&str], serial: u64) -> (String, String, Vec<u8>) {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans(names);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        // Written aside and renamed, as a rotation agent does: a poll never reads half a file.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

struct Echo;

impl Handler for Echo {
    async fn handle(
        self: &Arc<Self>,
        req: RemotingCommand,
        _conn: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        Some(
            req.response_to(response_code::SUCCESS, ResponseEncoding::Json)
                .with_body(req.body().clone()),
        )
    }
}

const SERVER_ID: &str = "spiffe://test/ns/mq/sa/broker";
const CLIENT_ID: &str = "spiffe://test/ns/app/sa/sidecar";

/// A server PKI: CA, server pair (`server.pem`/`server.key`), client pair from the same CA.
fn pki(files: &Files) -> Ca {
    let ca = Ca::new("test ca");
    files.write("ca.pem", &ca.pem);
    let (c, k, _) = ca.issue("broker", &["broker.test", SERVER_ID], 1);
    files.write("server.pem", &c);
    files.write("server.key", &k);
    let (c, k, _) = ca.issue("sidecar", &["sidecar.test", CLIENT_ID], 2);
    files.write("client.pem", &c);
    files.write("client.key", &k);
    ca
}

fn server_opts(files: &Files, mode: TlsMode) -> ServerTlsOptions {
    ServerTlsOptions {
        mode,
        cert: Some(files.path("server.pem")),
        key: Some(files.path("server.key")),
        handshake_timeout: Duration::from_millis(300),
        reload_interval: Duration::from_secs(3600),
        ..ServerTlsOptions::default()
    }
}

fn client_tls(files: &Files, cert: Option<(&str, &str)>, ids: &[&str]) -> Arc<ClientTls> {
    ClientTls::new(
        ClientTlsOptions {
            ca: files.path("ca.pem"),
            cert: cert.map(|(c, _)| files.path(c)),
            key: cert.map(|(_, k)| files.path(k)),
            sni: Some("broker.test".into()),
            identities: ids.iter().map(|i| i.parse().unwrap()).collect(),
            alpn: Vec::new(),
        },
        Duration::from_secs(3600),
    )
    .unwrap()
}

async fn start(tls: Arc<ServerTls>) -> (std::net::SocketAddr, Server) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        addr,
        Server::start_tls(listener, Arc::new(Echo), ServerConfig::default(), tls),
    )
}

async fn echo(client: &RemotingClient) -> Result<(), crate::ClientError> {
    let req = RemotingCommand::request(request_code::HEART_BEAT).with_body(&b"ping"[..]);
    let resp = client.invoke(req, Duration::from_secs(5)).await?;
    assert_eq!(&resp.body()[..], b"ping");
    Ok(())
}

async fn connect(
    addr: std::net::SocketAddr,
    tls: Option<&ClientTls>,
) -> Result<RemotingClient, crate::ClientError> {
    RemotingClient::connect_tls(addr, "127.0.0.1", tls, None).await
}

/// Waits (bounded) until `f` holds.
async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 2 s");
}

#[tokio::test]
async fn enforcing_serves_tls_and_refuses_plaintext() {
    let files = Files::new();
    pki(&files);
    let tls = ServerTls::new("t", server_opts(&files, TlsMode::Enforcing)).unwrap();
    let (addr, _server) = start(tls.clone()).await;

    let client = connect(addr, Some(&client_tls(&files, None, &[])))
        .await
        .unwrap();
    echo(&client).await.unwrap();

    // A plaintext request is not a ClientHello: the handshake fails and the connection closes.
    let plain = connect(addr, None).await.unwrap();
    assert!(echo(&plain).await.is_err());
    eventually(|| tls.stats().snapshot().handshakes_failed == 1).await;
    assert_eq!(tls.stats().snapshot().handshakes_ok, 1);
    echo(&client).await.unwrap();
}

#[tokio::test]
async fn permissive_serves_tls_and_plaintext_on_one_port() {
    let files = Files::new();
    pki(&files);
    let tls = ServerTls::new("t", server_opts(&files, TlsMode::Permissive)).unwrap();
    let (addr, _server) = start(tls.clone()).await;
    let secure = connect(addr, Some(&client_tls(&files, None, &[])))
        .await
        .unwrap();
    let plain = connect(addr, None).await.unwrap();
    echo(&secure).await.unwrap();
    echo(&plain).await.unwrap();
    let s = tls.stats().snapshot();
    assert_eq!((s.tls_connections, s.plaintext_connections), (1, 1));
}

#[tokio::test]
async fn client_certificates_are_checked_against_ca_and_identities() {
    let files = Files::new();
    let ca = pki(&files);
    let other = Ca::new("other ca");
    let (c, k, _) = other.issue("intruder", &[CLIENT_ID], 3);
    files.write("foreign.pem", &c);
    files.write("foreign.key", &k);
    let (c, k, _) = ca.issue("someone", &["spiffe://test/ns/app/sa/other"], 4);
    files.write("wrongid.pem", &c);
    files.write("wrongid.key", &k);

    let mut opts = server_opts(&files, TlsMode::Enforcing);
    opts.client_auth = ClientAuth::Require;
    opts.client_ca = Some(files.path("ca.pem"));
    opts.allowed_identities = vec![CLIENT_ID.parse().unwrap()];
    let tls = ServerTls::new("t", opts).unwrap();
    let (addr, _server) = start(tls.clone()).await;

    let good = connect(
        addr,
        Some(&client_tls(&files, Some(("client.pem", "client.key")), &[])),
    )
    .await
    .unwrap();
    echo(&good).await.unwrap();
    // TLS 1.3: the client finishes first and learns of the refusal on its first read.
    for (cert, key) in [
        ("foreign.pem", "foreign.key"),
        ("wrongid.pem", "wrongid.key"),
    ] {
        let refused = match connect(addr, Some(&client_tls(&files, Some((cert, key)), &[]))).await {
            Ok(c) => echo(&c).await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "{cert} was served");
    }
    // No certificate at all.
    let anon = match connect(addr, Some(&client_tls(&files, None, &[]))).await {
        Ok(c) => echo(&c).await.is_err(),
        Err(_) => true,
    };
    assert!(anon);
    eventually(|| tls.stats().snapshot().handshakes_failed == 3).await;
    echo(&good).await.unwrap();
}

#[tokio::test]
async fn the_client_checks_the_identity_the_server_presents() {
    let files = Files::new();
    pki(&files);
    let tls = ServerTls::new("t", server_opts(&files, TlsMode::Enforcing)).unwrap();
    let (addr, _server) = start(tls).await;
    let right = client_tls(&files, None, &[SERVER_ID]);
    echo(&connect(addr, Some(&right)).await.unwrap())
        .await
        .unwrap();
    let wrong = client_tls(&files, None, &["spiffe://test/ns/mq/sa/impostor"]);
    assert!(matches!(
        connect(addr, Some(&wrong)).await,
        Err(crate::ClientError::Tls { .. })
    ));
    assert_eq!(wrong.stats().snapshot().handshakes_failed, 1);
    // Without identities the SNI is checked against the DNS SANs.
    let mut by_name = client_tls(&files, None, &[]).options().clone();
    by_name.sni = Some("elsewhere.test".into());
    let by_name = ClientTls::new(by_name, Duration::from_secs(3600)).unwrap();
    assert!(connect(addr, Some(&by_name)).await.is_err());
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections() {
    let files = Files::new();
    let ca = pki(&files);
    let mut opts = server_opts(&files, TlsMode::Enforcing);
    opts.reload_interval = Duration::from_millis(20);
    let tls = ServerTls::new("t", opts).unwrap();
    let (addr, _server) = start(tls.clone()).await;
    let client = client_tls(&files, None, &[]);
    let old = connect(addr, Some(&client)).await.unwrap();
    echo(&old).await.unwrap();

    // A bad edit keeps the last good pair.
    files.write("server.pem", "not a certificate");
    eventually(|| tls.dump().certificate.unwrap().reload_failures == 1).await;
    echo(&connect(addr, Some(&client)).await.unwrap())
        .await
        .unwrap();

    let (c, k, der) = ca.issue("broker-rotated", &["broker.test"], 77);
    files.write("server.key", &k);
    files.write("server.pem", &c);
    eventually(|| {
        tls.dump()
            .certificate
            .and_then(|c| c.certificate)
            .is_some_and(|c| c.subject == "CN=broker-rotated")
    })
    .await;
    // A fresh client: `client` would resume its session, whose certificate is the old one.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = client_tls(&files, None, &[])
        .connect(tcp, "broker.test")
        .await
        .unwrap();
    assert_eq!(stream.peer_certificate().unwrap().as_ref(), &der[..]);
    // The connection made before the rotation is served on.
    echo(&old).await.unwrap();
    let info = tls.dump().certificate.unwrap().certificate.unwrap();
    assert_eq!(info.serial, "4d");
}

#[tokio::test]
async fn a_half_finished_handshake_is_closed_by_the_timeout() {
    let files = Files::new();
    pki(&files);
    for mode in [TlsMode::Enforcing, TlsMode::Permissive] {
        let tls = ServerTls::new("t", server_opts(&files, mode)).unwrap();
        let (addr, _server) = start(tls.clone()).await;
        // Silent, and a ClientHello's first bytes only.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0xff])
            .await
            .unwrap();
        let good = connect(addr, Some(&client_tls(&files, None, &[])))
            .await
            .unwrap();
        for s in [&mut silent, &mut partial] {
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
                .await
                .expect("closed within the handshake timeout");
            assert!(matches!(n, Ok(0) | Err(_)));
        }
        assert_eq!(tls.stats().snapshot().handshake_timeouts, 2, "{mode:?}");
        echo(&good).await.unwrap();
    }
}

#[tokio::test]
async fn garbage_after_a_handshake_closes_only_that_connection() {
    let files = Files::new();
    pki(&files);
    let tls = ServerTls::new("t", server_opts(&files, TlsMode::Enforcing)).unwrap();
    let (addr, _server) = start(tls).await;
    let client = client_tls(&files, None, &[]);
    let good = connect(addr, Some(&client)).await.unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = tokio::io::split(
        client
            .connect(tcp, "x")
            .await
            .unwrap_or_else(|_| panic!("handshake")),
    );
    // A frame length of 0x7fffffff: past every limit, the framing is lost.
    w.write_all(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3, 4])
        .await
        .unwrap();
    w.flush().await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), r.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)));
    echo(&good).await.unwrap();
}

#[tokio::test]
async fn a_client_hello_on_a_plaintext_listener_is_closed_and_counted() {
    let files = Files::new();
    pki(&files);
    let tls = ServerTls::disabled("plain");
    let (addr, _server) = start(tls.clone()).await;
    let good = connect(addr, None).await.unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(client_tls(&files, None, &[])
        .connect(tcp, "x")
        .await
        .is_err());
    eventually(|| tls.stats().snapshot().hello_on_plaintext == 1).await;
    echo(&good).await.unwrap();
}

#[test]
fn identities_parse_as_uri_or_dns() {
    let m: SanMatcher = "spiffe://td/ns/a/sa/b".parse().unwrap();
    assert_eq!(m.kind, SanKind::Uri);
    let m: SanMatcher = "dns:broker.mq".parse().unwrap();
    assert_eq!(
        (m.kind, m.matcher),
        (SanKind::Dns, StringMatch::Exact("broker.mq".into()))
    );
    assert_eq!(host_of("[::1]:9876"), "::1");
    assert_eq!(host_of("broker-a:10911"), "broker-a");
}

#[test]
fn config_errors_name_files_never_content() {
    let files = Files::new();
    files.write(
        "secret.key",
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
    );
    pki(&files);
    let e = CertSource::load(&files.path("server.pem"), &files.path("secret.key"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("secret.key") && !e.contains("c2VjcmV0") && !e.contains("secret\""),
        "{e}"
    );
    let e = CertSource::load(Path::new("/nonexistent/a.pem"), Path::new("/x")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/a.pem"));
}
