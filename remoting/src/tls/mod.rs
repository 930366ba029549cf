//! TLS for Remoting connections, with rustls and its `ring` crypto provider.
//!
//! * [`ServerTls`]: a listener's policy. `disabled` serves plaintext and reads nothing first (the
//!   fast path as it was); `enforcing` handshakes every connection; `permissive` peeks at the
//!   first byte: 0x16 (a TLS handshake record) is TLS, anything else plaintext, as Apache's broker
//!   does (`TlsMode.PERMISSIVE`). Client certificates: `none`, `optional` or `require`, checked
//!   against a CA bundle and, when given, a list of allowed identities (URI or DNS SANs). The
//!   server certificate is a [`CertSource`]: reloaded when its files change. Every handshake is
//!   bounded by a timeout; outcomes are counted in [`TlsStats`] and the `metrics` facade.
//! * [`ClientTls`]: a client's settings for a Remoting or gRPC peer: CA bundle, optional client
//!   certificate (reloaded too), the SNI to send and the identities the server must present.
//!
//! Secrets are never logged: errors name files, never their content.

mod certs;
mod io;
mod verify;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use serde::Serialize;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use certs::{load_certs, load_key, load_roots, CertInfo, CertSource, CertSourceDump};
pub use io::{ReadHalf, Stream, WriteHalf};
pub use verify::{cert_sans, identity_matches, San, SanKind, SanMatcher, StringMatch};

/// Default bound on a handshake (and, in permissive mode, on the first byte arriving).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default period of the certificate files' poll.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The first byte of a TLS handshake record (a ClientHello starts with it).
const TLS_HANDSHAKE: u8 = 0x16;

/// TLS configuration errors (at start, or of a file that changed).
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl TlsError {
    fn pem(path: &Path, reason: impl std::fmt::Display) -> Self {
        TlsError::Pem {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// How a listener treats TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext only.
    #[default]
    Disabled,
    /// TLS and plaintext on one port (told apart by the first byte).
    Permissive,
    /// TLS only.
    Enforcing,
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disabled" => Ok(TlsMode::Disabled),
            "permissive" => Ok(TlsMode::Permissive),
            "enforcing" => Ok(TlsMode::Enforcing),
            _ => Err(format!(
                "unknown TLS mode {s:?} (disabled, permissive, enforcing)"
            )),
        }
    }
}

/// Whether a listener asks for client certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    None,
    /// Asked for; a client without one is served, one with a bad one refused.
    Optional,
    /// Required.
    Require,
}

impl FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(ClientAuth::None),
            "optional" => Ok(ClientAuth::Optional),
            "require" => Ok(ClientAuth::Require),
            _ => Err(format!(
                "unknown client auth {s:?} (none, optional, require)"
            )),
        }
    }
}

/// A listener's TLS settings as the command line gives them.
#[derive(Clone, Debug, Serialize)]
pub struct ServerTlsOptions {
    pub mode: TlsMode,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub client_ca: Option<PathBuf>,
    /// Identities a client certificate must carry one of (empty: any the CA signed).
    pub allowed_identities: Vec<SanMatcher>,
    pub handshake_timeout: Duration,
    pub reload_interval: Duration,
    /// ALPN protocols offered (`h2` for gRPC; none for Remoting).
    #[serde(skip)]
    pub alpn: Vec<Vec<u8>>,
}

impl Default for ServerTlsOptions {
    fn default() -> Self {
        ServerTlsOptions {
            mode: TlsMode::Disabled,
            cert: None,
            key: None,
            client_auth: ClientAuth::None,
            client_ca: None,
            allowed_identities: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            alpn: Vec::new(),
        }
    }
}

/// Handshake and connection counters of one listener (or of every client of one kind).
#[derive(Debug, Default)]
pub struct TlsStats {
    handshakes_ok: AtomicU64,
    handshakes_failed: AtomicU64,
    handshake_timeouts: AtomicU64,
    tls_connections: AtomicU64,
    plaintext_connections: AtomicU64,
    /// TLS ClientHellos that reached a plaintext-only listener.
    hello_on_plaintext: AtomicU64,
}

/// A reading of [`TlsStats`].
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TlsStatsSnapshot {
    pub handshakes_ok: u64,
    pub handshakes_failed: u64,
    pub handshake_timeouts: u64,
    pub tls_connections: u64,
    pub plaintext_connections: u64,
    pub hello_on_plaintext: u64,
}

impl TlsStats {
    pub fn snapshot(&self) -> TlsStatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TlsStatsSnapshot {
            handshakes_ok: r(&self.handshakes_ok),
            handshakes_failed: r(&self.handshakes_failed),
            handshake_timeouts: r(&self.handshake_timeouts),
            tls_connections: r(&self.tls_connections),
            plaintext_connections: r(&self.plaintext_connections),
            hello_on_plaintext: r(&self.hello_on_plaintext),
        }
    }

    fn handshake(&self, side: &'static str, name: &'static str, outcome: &'static str) {
        let counter = match outcome {
            "ok" => &self.handshakes_ok,
            "timeout" => &self.handshake_timeouts,
            _ => &self.handshakes_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rocketmesh_tls_handshakes_total",
            "side" => side, "listener" => name, "result" => outcome)
        .increment(1);
    }

    fn connection(&self, name: &'static str, tls: bool) {
        let (counter, kind) = if tls {
            (&self.tls_connections, "tls")
        } else {
            (&self.plaintext_connections, "plaintext")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rocketmesh_tls_connections_total", "listener" => name, "kind" => kind)
            .increment(1);
    }

    /// Counts a TLS ClientHello seen by a plaintext-only listener.
    pub fn hello_on_plaintext(&self, name: &'static str) {
        self.hello_on_plaintext.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rocketmesh_tls_hello_on_plaintext_total", "listener" => name)
            .increment(1);
    }
}

/// Why an accepted connection was not served.
#[derive(Debug, Error)]
pub enum AcceptError {
    #[error("TLS handshake not finished within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("closed before sending anything")]
    Closed,
}

/// A listener's TLS policy, built once and shared by its connections.
pub struct ServerTls {
    name: &'static str,
    mode: TlsMode,
    acceptor: Option<TlsAcceptor>,
    cert: Option<Arc<CertSource>>,
    opts: ServerTlsOptions,
    stats: TlsStats,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// What `/config_dump` shows of a listener's TLS.
#[derive(Debug, Serialize)]
pub struct ServerTlsDump {
    pub listener: &'static str,
    pub options: ServerTlsOptions,
    pub certificate: Option<CertSourceDump>,
    pub stats: TlsStatsSnapshot,
}

/// The crypto provider: ring. It builds with a C compiler alone, where aws-lc-rs needs cmake
/// (and Go or NASM on some targets) on every machine that builds rocketmesh. rustls 0.23.48
/// deprecated it for lacking post-quantum key exchange (X25519MLKEM768): a known trade-off,
/// see ARCHITECTURE.md "TLS".
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    /// Plaintext only (what `Server::start` uses).
    pub fn disabled(name: &'static str) -> Arc<Self> {
        Arc::new(ServerTls {
            name,
            mode: TlsMode::Disabled,
            acceptor: None,
            cert: None,
            opts: ServerTlsOptions::default(),
            stats: TlsStats::default(),
        })
    }

    /// Builds the policy (loading the files now) and, unless disabled, starts the certificate
    /// files' poll on the current runtime. `name` labels the metrics.
    pub fn new(name: &'static str, opts: ServerTlsOptions) -> Result<Arc<Self>, TlsError> {
        if opts.mode == TlsMode::Disabled {
            let mut tls = ServerTls::disabled(name);
            if let Some(t) = Arc::get_mut(&mut tls) {
                t.opts = opts;
            }
            return Ok(tls);
        }
        let (Some(cert), Some(key)) = (&opts.cert, &opts.key) else {
            return Err(TlsError::Config(format!(
                "TLS mode {:?} needs a certificate and a key",
                opts.mode
            )));
        };
        let source = CertSource::load(cert, key)?;
        let config = server_config(&opts, source.clone())?;
        source.watch(opts.reload_interval);
        Ok(Arc::new(ServerTls {
            name,
            mode: opts.mode,
            acceptor: Some(TlsAcceptor::from(Arc::new(config))),
            cert: Some(source),
            opts,
            stats: TlsStats::default(),
        }))
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn stats(&self) -> &TlsStats {
        &self.stats
    }

    /// The rustls configuration (for a gRPC listener that drives its own handshakes).
    pub fn acceptor(&self) -> Option<&TlsAcceptor> {
        self.acceptor.as_ref()
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.opts.handshake_timeout
    }

    pub fn dump(&self) -> ServerTlsDump {
        ServerTlsDump {
            listener: self.name,
            options: self.opts.clone(),
            certificate: self.cert.as_ref().map(|c| c.dump()),
            stats: self.stats.snapshot(),
        }
    }

    /// Turns an accepted socket into the stream to serve: at once when disabled; after the
    /// first byte (permissive) and the handshake otherwise, both within the handshake timeout.
    pub async fn accept(&self, tcp: TcpStream) -> Result<Stream, AcceptError> {
        let Some(acceptor) = &self.acceptor else {
            return Ok(Stream::Tcp(tcp));
        };
        let started = Instant::now();
        let timeout = self.opts.handshake_timeout;
        let outcome = tokio::time::timeout(timeout, async {
            if self.mode == TlsMode::Permissive {
                let mut first = [0u8; 1];
                let n = tcp.peek(&mut first).await.map_err(AcceptError::Handshake)?;
                if n == 0 {
                    return Err(AcceptError::Closed);
                }
                if first[0] != TLS_HANDSHAKE {
                    return Ok(Stream::Tcp(tcp));
                }
            }
            let tls = acceptor
                .accept(io::tls_io(tcp))
                .await
                .map_err(AcceptError::Handshake)?;
            Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))))
        })
        .await
        .unwrap_or(Err(AcceptError::Timeout(timeout)));
        match &outcome {
            Ok(s) if s.is_tls() => {
                self.stats.handshake("server", self.name, "ok");
                self.stats.connection(self.name, true);
                metrics::histogram!("rocketmesh_tls_handshake_seconds", "listener" => self.name)
                    .record(started.elapsed().as_secs_f64());
            }
            Ok(_) => self.stats.connection(self.name, false),
            Err(AcceptError::Timeout(_)) => self.stats.handshake("server", self.name, "timeout"),
            Err(AcceptError::Closed) => {}
            Err(AcceptError::Handshake(_)) => self.stats.handshake("server", self.name, "failed"),
        }
        outcome
    }
}

fn server_config(
    opts: &ServerTlsOptions,
    source: Arc<CertSource>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ClientCertVerifier> = match opts.client_auth {
        ClientAuth::None => {
            if !opts.allowed_identities.is_empty() {
                return Err(TlsError::Config(
                    "allowed identities need client certificates (client auth optional or require)"
                        .into(),
                ));
            }
            WebPkiClientVerifier::no_client_auth()
        }
        auth => {
            let Some(ca) = &opts.client_ca else {
                return Err(TlsError::Config(
                    "client certificates need a CA bundle (--tls-client-ca)".into(),
                ));
            };
            let mut builder =
                WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider.clone());
            if auth == ClientAuth::Optional {
                builder = builder.allow_unauthenticated();
            }
            let inner = builder
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            Arc::new(verify::AllowedIdentities {
                inner,
                allowed: opts.allowed_identities.clone(),
            })
        }
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(source);
    config.alpn_protocols = opts.alpn.clone();
    Ok(config)
}

/// A client's TLS settings as the command line or a cluster's `UpstreamTlsContext` gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ClientTlsOptions {
    /// CA bundle the server's chain must end in.
    pub ca: PathBuf,
    /// Client certificate and key (mTLS), reloaded when they change.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Server name sent (SNI); default: the host dialled when it is a name.
    pub sni: Option<String>,
    /// Identities the server must present one of (empty: the name dialled, checked by WebPKI).
    pub identities: Vec<SanMatcher>,
    /// ALPN protocols offered.
    #[serde(skip)]
    pub alpn: Vec<Vec<u8>>,
}

/// A client's TLS, built once and shared by its connections.
pub struct ClientTls {
    connector: TlsConnector,
    config: Arc<rustls::ClientConfig>,
    cert: Option<Arc<CertSource>>,
    opts: ClientTlsOptions,
    handshake_timeout: Duration,
    stats: TlsStats,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// What `/config_dump` shows of a client's TLS.
#[derive(Debug, Serialize)]
pub struct ClientTlsDump {
    pub options: ClientTlsOptions,
    pub certificate: Option<CertSourceDump>,
    pub stats: TlsStatsSnapshot,
}

impl ClientTls {
    /// Loads the files now and starts the client certificate's poll on the current runtime.
    pub fn new(opts: ClientTlsOptions, reload_interval: Duration) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let roots = load_roots(&opts.ca)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::ServerIdentity {
                roots,
                identities: opts.identities.clone(),
                provider,
            }));
        let (mut config, cert) = match (&opts.cert, &opts.key) {
            (Some(c), Some(k)) => {
                let source = CertSource::load(c, k)?;
                source.watch(reload_interval);
                (
                    builder.with_client_cert_resolver(source.clone()),
                    Some(source),
                )
            }
            (None, None) => (builder.with_no_client_auth(), None),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs both a cert and a key file".into(),
                ))
            }
        };
        config.alpn_protocols = opts.alpn.clone();
        let config = Arc::new(config);
        Ok(Arc::new(ClientTls {
            connector: TlsConnector::from(config.clone()),
            config,
            cert,
            opts,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            stats: TlsStats::default(),
        }))
    }

    pub fn options(&self) -> &ClientTlsOptions {
        &self.opts
    }

    /// The same settings without session resumption: every connection makes a full handshake
    /// (`rocketmesh bench --mode connect` measures the worst case with it).
    pub fn without_resumption(&self) -> Arc<ClientTls> {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        Arc::new(ClientTls {
            connector: TlsConnector::from(config.clone()),
            config,
            cert: self.cert.clone(),
            opts: self.opts.clone(),
            handshake_timeout: self.handshake_timeout,
            stats: TlsStats::default(),
        })
    }

    pub fn stats(&self) -> &TlsStats {
        &self.stats
    }

    pub fn dump(&self) -> ClientTlsDump {
        ClientTlsDump {
            options: self.opts.clone(),
            certificate: self.cert.as_ref().map(|c| c.dump()),
            stats: self.stats.snapshot(),
        }
    }

    /// The name a connection to `host` sends and (without identities) checks.
    fn server_name(&self, host: &str) -> Result<ServerName<'static>, std::io::Error> {
        let name = self.opts.sni.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(name.to_owned()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad TLS server name {name:?}: {e}"),
            )
        })
    }

    /// Handshakes over `tcp` as a client of `host` (the host part of the target dialled),
    /// within the handshake timeout.
    pub async fn connect(&self, tcp: TcpStream, host: &str) -> std::io::Result<Stream> {
        let name = self.server_name(host)?;
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            self.handshake_timeout,
            self.connector.connect(name, io::tls_io(tcp)),
        )
        .await;
        match outcome {
            Ok(Ok(tls)) => {
                self.stats.handshake("client", "upstream", "ok");
                metrics::histogram!("rocketmesh_tls_handshake_seconds", "listener" => "upstream")
                    .record(started.elapsed().as_secs_f64());
                Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
            }
            Ok(Err(e)) => {
                self.stats.handshake("client", "upstream", "failed");
                Err(e)
            }
            Err(_) => {
                self.stats.handshake("client", "upstream", "timeout");
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            }
        }
    }
}

/// The host part of `host:port` / `[v6]:port`.
pub fn host_of(target: &str) -> &str {
    match target.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h.trim_start_matches('[').trim_end_matches(']'),
        _ => target,
    }
}

#[cfg(test)]
mod tests;
