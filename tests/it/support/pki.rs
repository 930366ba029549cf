//! Certificates made in the test (rcgen): a CA, leaf certificates with DNS / URI / IP SANs,
//! written as PEM files into a temporary directory (renamed into place, as a rotation agent
//! writes them, so a poll never reads half a file).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, SerialNumber,
};

/// A CA that issues leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// An issued certificate: PEM files and the DER (to compare with what a peer presented).
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
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

    /// Writes the CA bundle to `dir/<file>`.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        write(dir, file, &self.pem)
    }

    /// Issues `cn` with SANs (`scheme://...` = URI, an IP = IP, else DNS), written to
    /// `dir/<stem>.pem` and `dir/<stem>.key`.
    pub fn issue(&self, dir: &Path, stem: &str, cn: &str, names: &[&str], serial: u64) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.subject_alt_names = names
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
            .collect();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // Key first: a poll between the two sees a pair that does not match and keeps the old.
        let key_path = write(dir, &format!("{stem}.key"), &key.serialize_pem());
        let cert_path = write(dir, &format!("{stem}.pem"), &cert.pem());
        Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
        }
    }
}

pub fn write(dir: &Path, file: &str, content: &str) -> PathBuf {
    let path = dir.join(file);
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}
