//! Identities in certificates (SPIFFE-style URI SANs and DNS SANs) and the two verifiers built
//! on rustls' WebPKI checks: a server's check of client certificates against an allowed list,
//! and a client's check of the server's chain plus the identity it must present.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;

/// Which kind of subject alternative name a matcher looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SanKind {
    Dns,
    Uri,
    Ip,
    /// DNS or URI (Envoy's untyped `match_subject_alt_names`).
    Any,
}

/// One subject alternative name of a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct San {
    pub kind: SanKind,
    pub value: String,
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            SanKind::Dns => "dns",
            SanKind::Uri => "uri",
            SanKind::Ip => "ip",
            SanKind::Any => "any",
        };
        write!(f, "{k}:{}", self.value)
    }
}

/// Envoy's `StringMatcher` shapes (without `safe_regex`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
}

impl StringMatch {
    fn matches(&self, s: &str) -> bool {
        match self {
            StringMatch::Exact(v) => s == v,
            StringMatch::Prefix(v) => s.starts_with(v.as_str()),
            StringMatch::Suffix(v) => s.ends_with(v.as_str()),
            StringMatch::Contains(v) => s.contains(v.as_str()),
        }
    }
}

/// An identity a peer must present: a SAN of a kind matching a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SanMatcher {
    pub kind: SanKind,
    pub matcher: StringMatch,
}

impl SanMatcher {
    pub fn matches(&self, san: &San) -> bool {
        let kind_ok = match self.kind {
            SanKind::Any => matches!(san.kind, SanKind::Dns | SanKind::Uri),
            k => k == san.kind,
        };
        kind_ok && self.matcher.matches(&san.value)
    }
}

/// `spiffe://td/ns/x/sa/y` (or any `scheme://...`, or `uri:...`): a URI SAN; `dns:name` or a
/// bare name: a DNS SAN; exact matches.
impl FromStr for SanMatcher {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (kind, value) = if let Some(v) = s.strip_prefix("dns:") {
            (SanKind::Dns, v)
        } else if let Some(v) = s.strip_prefix("uri:") {
            (SanKind::Uri, v)
        } else if s.contains("://") {
            (SanKind::Uri, s)
        } else {
            (SanKind::Dns, s)
        };
        if value.is_empty() {
            return Err(format!("empty identity in {s:?}"));
        }
        Ok(SanMatcher {
            kind,
            matcher: StringMatch::Exact(value.to_owned()),
        })
    }
}

/// DNS, URI and IP SANs of a parsed certificate.
pub(crate) fn sans_of(cert: &X509Certificate<'_>) -> Vec<San> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(v) => Some(San {
                kind: SanKind::Dns,
                value: (*v).to_owned(),
            }),
            GeneralName::URI(v) => Some(San {
                kind: SanKind::Uri,
                value: (*v).to_owned(),
            }),
            GeneralName::IPAddress(b) => {
                let ip = match b.len() {
                    4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                    16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                    _ => None,
                }?;
                Some(San {
                    kind: SanKind::Ip,
                    value: ip.to_string(),
                })
            }
            _ => None,
        })
        .collect()
}

/// The SANs of a DER certificate (empty when it does not parse).
pub fn cert_sans(der: &[u8]) -> Vec<San> {
    X509Certificate::from_der(der)
        .map(|(_, c)| sans_of(&c))
        .unwrap_or_default()
}

/// True when some SAN of `der` satisfies some matcher.
pub fn identity_matches(der: &[u8], matchers: &[SanMatcher]) -> bool {
    let sans = cert_sans(der);
    matchers.iter().any(|m| sans.iter().any(|s| m.matches(s)))
}

/// A client-certificate verifier that also requires an allowed identity.
#[derive(Debug)]
pub(crate) struct AllowedIdentities {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub allowed: Vec<SanMatcher>,
}

impl ClientCertVerifier for AllowedIdentities {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.allowed.is_empty() && !identity_matches(end_entity, &self.allowed) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The client's check of a server: its chain up to `roots`; then, when identities are given,
/// one of them among its SANs (Envoy's `match_subject_alt_names`: the SNI is then only sent,
/// not checked), else the name dialled (SNI) as WebPKI checks it.
#[derive(Debug)]
pub(crate) struct ServerIdentity {
    pub roots: Arc<RootCertStore>,
    pub identities: Vec<SanMatcher>,
    pub provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.identities.is_empty() {
            rustls::client::verify_server_name(&cert, server_name)?;
        } else if !identity_matches(end_entity, &self.identities) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
