//! TLS flags shared by `sidecar`, `broker` and `control-plane` (see ARCHITECTURE.md "TLS").

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::cli::parse_duration;
use crate::remoting::tls::{
    ClientAuth, ClientTls, ClientTlsOptions, SanMatcher, ServerTls, ServerTlsOptions, TlsMode,
};

/// TLS of a process's listeners (Remoting; the control plane's ADS listener too).
#[derive(Debug, Clone, Args)]
pub struct ListenerTlsArgs {
    /// TLS on the listeners: `disabled`, `permissive` (TLS and plaintext on one port, told
    /// apart by the first byte, as Apache's broker does) or `enforcing` (TLS only).
    #[arg(long, default_value = "disabled")]
    pub tls_mode: TlsMode,
    /// Server certificate chain (PEM); reloaded when it changes (new connections get the new
    /// one, open ones keep theirs).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Private key of the certificate (PEM: PKCS#8, PKCS#1 or SEC1); reloaded with it.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Client certificates: `none`, `optional` (a client without one is served) or `require`.
    #[arg(long, default_value = "none")]
    pub tls_client_auth: ClientAuth,
    /// CA bundle client certificates must chain to (PEM).
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// Identities a client certificate must carry one of, comma separated: `spiffe://...`
    /// (any `scheme://`, or `uri:...`) = a URI SAN, `dns:NAME` or a bare name = a DNS SAN.
    /// Empty: any certificate the CA signed.
    #[arg(long, value_delimiter = ',')]
    pub tls_allowed_identities: Vec<SanMatcher>,
    /// A connection must finish its handshake (in permissive mode: send its first byte) within
    /// this long, else it is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// How often certificate files are checked for changes (mtime and length).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
}

impl ListenerTlsArgs {
    pub fn options(&self) -> ServerTlsOptions {
        ServerTlsOptions {
            mode: self.tls_mode,
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_auth: self.tls_client_auth,
            client_ca: self.tls_client_ca.clone(),
            allowed_identities: self.tls_allowed_identities.clone(),
            handshake_timeout: self.tls_handshake_timeout,
            reload_interval: self.tls_reload_interval,
            alpn: Vec::new(),
        }
    }

    /// The listener policy (None when disabled). `alpn`: protocols offered (`h2` for gRPC).
    pub fn build(
        &self,
        name: &'static str,
        alpn: &[&[u8]],
    ) -> anyhow::Result<Option<Arc<ServerTls>>> {
        if self.tls_mode == TlsMode::Disabled {
            return Ok(None);
        }
        let mut opts = self.options();
        opts.alpn = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Some(
            ServerTls::new(name, opts).with_context(|| format!("TLS of the {name} listener"))?,
        ))
    }
}

/// TLS of the Remoting connections a process makes: sidecar -> brokers, broker -> nameserver
/// (registration), control plane -> `--upstream-namesrv`.
#[derive(Debug, Clone, Args)]
pub struct UpstreamTlsArgs {
    /// CA bundle the server must chain to (PEM); turns TLS on for outgoing Remoting
    /// connections.
    #[arg(long)]
    pub upstream_tls_ca: Option<PathBuf>,
    /// Client certificate (mTLS), reloaded when it changes.
    #[arg(long, requires_all = ["upstream_tls_ca", "upstream_tls_key"])]
    pub upstream_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "upstream_tls_cert")]
    pub upstream_tls_key: Option<PathBuf>,
    /// Server name sent (SNI) [default: the host dialled, when it is a name].
    #[arg(long, requires = "upstream_tls_ca")]
    pub upstream_tls_sni: Option<String>,
    /// Identities the server must present one of (same syntax as --tls-allowed-identities);
    /// without them the name dialled (or --upstream-tls-sni) must be in its certificate.
    #[arg(long, value_delimiter = ',', requires = "upstream_tls_ca")]
    pub upstream_tls_identities: Vec<SanMatcher>,
}

impl UpstreamTlsArgs {
    pub fn build(&self, reload: Duration) -> anyhow::Result<Option<Arc<ClientTls>>> {
        let Some(ca) = &self.upstream_tls_ca else {
            return Ok(None);
        };
        let opts = ClientTlsOptions {
            ca: ca.clone(),
            cert: self.upstream_tls_cert.clone(),
            key: self.upstream_tls_key.clone(),
            sni: self.upstream_tls_sni.clone(),
            identities: self.upstream_tls_identities.clone(),
            alpn: Vec::new(),
        };
        Ok(Some(
            ClientTls::new(opts, reload).context("TLS of upstream Remoting connections")?,
        ))
    }
}

/// The sidecar's ADS connection: TLS and a bearer token.
#[derive(Debug, Clone, Args)]
pub struct XdsTlsArgs {
    /// CA bundle the xDS server must chain to (PEM); turns TLS on for the ADS connection.
    #[arg(long)]
    pub xds_tls_ca: Option<PathBuf>,
    /// Client certificate towards the xDS server (mTLS), reloaded when it changes.
    #[arg(long, requires_all = ["xds_tls_ca", "xds_tls_key"])]
    pub xds_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "xds_tls_cert")]
    pub xds_tls_key: Option<PathBuf>,
    /// Server name sent and checked [default: the host of --xds].
    #[arg(long, requires = "xds_tls_ca")]
    pub xds_tls_sni: Option<String>,
    /// File holding a bearer token sent as `authorization: Bearer <token>` on every ADS
    /// stream (as Istio's sidecars send their service-account token); read again at every
    /// reconnect.
    #[arg(long)]
    pub xds_token: Option<PathBuf>,
}

impl XdsTlsArgs {
    pub fn build(&self, reload: Duration) -> anyhow::Result<Option<Arc<ClientTls>>> {
        let Some(ca) = &self.xds_tls_ca else {
            return Ok(None);
        };
        let opts = ClientTlsOptions {
            ca: ca.clone(),
            cert: self.xds_tls_cert.clone(),
            key: self.xds_tls_key.clone(),
            sni: self.xds_tls_sni.clone(),
            identities: Vec::new(),
            alpn: vec![rocketmesh_xds::transport::H2.to_vec()],
        };
        Ok(Some(
            ClientTls::new(opts, reload).context("TLS of the xDS connection")?,
        ))
    }
}

/// The control plane's `UpstreamTlsContext` for every registered topic's cluster: the files
/// are named as the *sidecars* see them (mounted certificates, as Istio names
/// `/etc/certs/...`), nothing is read here.
#[derive(Debug, Clone, Args)]
pub struct ClusterTlsArgs {
    /// CA bundle path (on the sidecars) brokers must chain to; turns on TLS in every
    /// registered topic's cluster (`transport_socket` `envoy.transport_sockets.tls`).
    #[arg(long)]
    pub cluster_tls_ca: Option<String>,
    /// Client certificate and key paths (on the sidecars) for mTLS to the brokers.
    #[arg(long, requires_all = ["cluster_tls_ca", "cluster_tls_key"])]
    pub cluster_tls_cert: Option<String>,
    #[arg(long, requires = "cluster_tls_cert")]
    pub cluster_tls_key: Option<String>,
    /// SNI the sidecars send.
    #[arg(long, requires = "cluster_tls_ca")]
    pub cluster_tls_sni: Option<String>,
    /// Identities brokers must present (`match_typed_subject_alt_names`; same syntax as
    /// --tls-allowed-identities).
    #[arg(long, value_delimiter = ',', requires = "cluster_tls_ca")]
    pub cluster_tls_identities: Vec<SanMatcher>,
}

impl ClusterTlsArgs {
    pub fn spec(&self) -> Option<rocketmesh_xds::model::UpstreamTls> {
        Some(rocketmesh_xds::model::UpstreamTls {
            ca_file: self.cluster_tls_ca.clone()?,
            cert_file: self.cluster_tls_cert.clone(),
            key_file: self.cluster_tls_key.clone(),
            sni: self.cluster_tls_sni.clone(),
            identities: self.cluster_tls_identities.clone(),
        })
    }
}
