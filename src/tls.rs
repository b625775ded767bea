//! Certificates and the crypto provider, shared by the listeners (`server::tls`)
//! and the upstream connections (`upstream::pool`, `upstream::h2`), and checked
//! by `config::validate`: a leaf, so that none of them reaches into another.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The TLS versions a `min_version` allows.
pub const MIN_VERSIONS: &[&str] = &["1.2", "1.3"];
/// The ALPN protocols a listener may offer.
pub const ALPN_PROTOCOLS: &[&str] = &["h2", "http/1.1"];

/// The one crypto provider of the process (aws-lc-rs), passed explicitly so that
/// nothing depends on a process-wide default being installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A problem with one field of a TLS block: the key below the block (`cert`,
/// `key`, `client_auth.ca`, ...) and what is wrong.
#[derive(Debug)]
pub struct TlsIssue {
    pub key: String,
    pub message: String,
}

impl fmt::Display for TlsIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

pub fn issue(key: impl Into<String>, message: impl Into<String>) -> TlsIssue {
    TlsIssue {
        key: key.into(),
        message: message.into(),
    }
}

/// Every certificate in a PEM file, in order (a chain: leaf first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}` is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "`{}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "`{}` holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        )
    })
}

/// Trust anchors from a PEM file of CA certificates.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("`{}`: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A certificate chain with its key, checked to belong together, and the DNS
/// names its leaf is valid for (for SNI).
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
}

/// Reads one `certificates[]` entry. Issues name `cert` or `key`.
pub fn load_cert(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<LoadedCert, TlsIssue> {
    let chain = read_certs(cert).map_err(|m| issue("cert", m))?;
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
        issue(
            "cert",
            format!(
                "`{}`: the first certificate cannot be parsed: {e}",
                cert.display()
            ),
        )
    })?;
    let names: Vec<String> = leaf
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    let der = read_key(key).map_err(|m| issue("key", m))?;
    let certified = CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        issue(
            "key",
            format!(
                "`{}` does not fit the certificate `{}`: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
    })
}
