//! PEM files -> rustls types, and [`CertSource`]: a certificate and key reloaded from their files
//! when they change (rotation without a restart), served to rustls as a resolver on both sides of
//! a handshake. A bad edit keeps the last good pair and is logged once per change.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use serde::Serialize;

use super::TlsError;

/// Reads every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::pem(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::pem(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    // The error says which file, never what it holds.
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| TlsError::pem(path, "no readable private key"))
}

/// A trust store from a PEM bundle of CA certificates.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::pem(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// What `/config_dump` may show of a certificate: never key material.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Hex, colon separated (as openssl prints it).
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    /// Seconds since the epoch.
    pub not_after_unix: i64,
    /// `dns:NAME`, `uri:URI`, `ip:ADDR`.
    pub sans: Vec<String>,
}

impl CertInfo {
    /// Reads the fields of a DER certificate; `None` if it does not parse as X.509.
    pub fn of(der: &[u8]) -> Option<CertInfo> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let v = cert.validity();
        Some(CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            not_before: v.not_before.to_string(),
            not_after: v.not_after.to_string(),
            not_after_unix: v.not_after.timestamp(),
            sans: super::verify::sans_of(&cert)
                .into_iter()
                .map(|s| s.to_string())
                .collect(),
        })
    }
}

/// Modification time and length of a file: what the poll compares.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A certificate chain and its key, reloaded from their files when either changes.
#[derive(Debug)]
pub struct CertSource {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    info: ArcSwap<Option<CertInfo>>,
    /// The files' stamps when last looked at (loaded or refused).
    seen: Mutex<(Stamp, Stamp)>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

/// What `/config_dump` shows of a [`CertSource`].
#[derive(Clone, Debug, Serialize)]
pub struct CertSourceDump {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub certificate: Option<CertInfo>,
    pub reloads: u64,
    pub reload_failures: u64,
}

impl CertSource {
    /// Loads both files now (an error here stops the start).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let seen = (stamp(cert_path), stamp(key_path));
        let (key, info) = load_pair(cert_path, key_path)?;
        Ok(Arc::new(CertSource {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::from(key),
            info: ArcSwap::from_pointee(info),
            seen: Mutex::new(seen),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }))
    }

    /// Reloads when a file's mtime or length changed since the last look. Returns whether a new
    /// pair is now served. A pair that does not load (a half-written file, a key that does not
    /// match) keeps the last good one; it is logged once, and tried again when a file changes.
    pub fn poll(&self) -> bool {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        {
            let mut seen = self.seen.lock();
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        match load_pair(&self.cert_path, &self.key_path) {
            Ok((key, info)) => {
                tracing::info!(
                    cert = %self.cert_path.display(),
                    subject = info.as_ref().map_or("?", |i| i.subject.as_str()),
                    serial = info.as_ref().map_or("?", |i| i.serial.as_str()),
                    "TLS certificate reloaded"
                );
                self.current.store(key);
                self.info.store(Arc::new(info));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("TLS certificate not reloaded, keeping the last good one: {e}");
                false
            }
        }
    }

    /// Polls the files every `every` on the current runtime, until the source is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(source) = weak.upgrade() else { return };
                // File reads are small; off the workers anyway, as the static file poll is.
                let _ = tokio::task::spawn_blocking(move || source.poll()).await;
            }
        });
    }

    /// The pair served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    pub fn dump(&self) -> CertSourceDump {
        CertSourceDump {
            cert_file: self.cert_path.clone(),
            key_file: self.key_path.clone(),
            certificate: (**self.info.load()).clone(),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
        }
    }
}

fn load_pair(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Arc<CertifiedKey>, Option<CertInfo>), TlsError> {
    let chain = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::pem(key_path, format!("unsupported private key: {e}")))?;
    let info = CertInfo::of(&chain[0]);
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        TlsError::pem(
            cert_path,
            format!("does not match the key in {}: {e}", key_path.display()),
        )
    })?;
    Ok((Arc::new(certified), info))
}

impl ResolvesServerCert for CertSource {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertSource {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
