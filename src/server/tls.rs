//! TLS termination on listeners: certificates read from PEM files, chosen per
//! handshake by SNI against their SANs, the rustls server config of each TLS
//! listener, and its replacement on reload without touching open connections.
//!
//! Each TLS listener keeps its current `ServerConfig` in an `ArcSwap`: a
//! handshake takes the config that is current when it starts, so a reload
//! changes certificates (and CA, versions, ALPN) for new connections only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};

use crate::config::LoadedConfig;
use crate::config::schema;
use crate::snapshot::build::CompileError;
use crate::tls::{ALPN_PROTOCOLS, LoadedCert, TlsIssue, issue, load_cert, provider, read_roots};

/// Picks the certificate for a handshake: an exact SAN match first, then a
/// wildcard SAN (`*.example.com` covers one label), else the first certificate.
/// Among certificates naming the same host, the earlier one wins.
#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `example.com` for a `*.example.com` SAN.
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    pub fn new(certs: Vec<LoadedCert>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for name in &c.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        SniResolver {
            certs: certs.into_iter().map(|c| c.key).collect(),
            exact,
            wildcard,
        }
    }

    /// The index of the certificate served for `sni`.
    pub fn pick(&self, sni: Option<&str>) -> usize {
        let Some(sni) = sni else { return 0 };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&sni) {
            return i;
        }
        sni.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent).copied())
            .unwrap_or(0)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.get(self.pick(hello.server_name())).cloned()
    }
}

/// Builds the rustls config of one listener's `tls` block; `resolve` turns a
/// path from the file into one relative to the config file's directory.
pub fn server_config(
    tls: &schema::ListenerTls,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<ServerConfig, TlsIssue> {
    let provider = provider();
    if tls.certificates.is_empty() {
        return Err(issue("certificates", "at least one certificate is needed"));
    }
    let mut certs = Vec::with_capacity(tls.certificates.len());
    for (i, c) in tls.certificates.iter().enumerate() {
        let loaded = load_cert(&resolve(&c.cert), &resolve(&c.key), &provider)
            .map_err(|e| issue(format!("certificates[{i}].{}", e.key), e.message))?;
        certs.push(loaded);
    }
    static TLS12_UP: &[&SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let versions = match tls.min_version.as_deref() {
        None | Some("1.2") => TLS12_UP,
        Some("1.3") => TLS13_ONLY,
        Some(other) => {
            return Err(issue(
                "min_version",
                format!("expected \"1.2\" or \"1.3\", got `{other}`"),
            ));
        }
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| issue("min_version", e.to_string()))?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let roots = read_roots(&resolve(&auth.ca)).map_err(|m| issue("client_auth.ca", m))?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| issue("client_auth.ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver::new(certs)));
    config.alpn_protocols = match &tls.alpn {
        None => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Some(list) => {
            for (i, p) in list.iter().enumerate() {
                if !ALPN_PROTOCOLS.contains(&p.as_str()) {
                    return Err(issue(
                        format!("alpn[{i}]"),
                        format!("unknown ALPN protocol `{p}`; expected h2 or http/1.1"),
                    ));
                }
            }
            list.iter().map(|p| p.as_bytes().to_vec()).collect()
        }
    };
    // The server's cipher preference wins over the client's order.
    config.ignore_client_order = true;
    Ok(config)
}

/// The live TLS settings of one listener.
pub struct TlsListener {
    config: ArcSwap<ServerConfig>,
}

impl TlsListener {
    /// An acceptor for one new connection, on the config current now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }
}

/// The TLS listeners of the process, by listener name, so that a reload can
/// hand each its new certificates.
#[derive(Default)]
pub struct TlsListeners {
    by_name: Mutex<HashMap<String, Arc<TlsListener>>>,
}

/// New server configs built from a config version, not yet in service.
pub struct StagedTls<'a> {
    owner: &'a TlsListeners,
    configs: Vec<(String, Arc<ServerConfig>)>,
}

fn build_all(loaded: &LoadedConfig) -> Result<Vec<(String, Arc<ServerConfig>)>, CompileError> {
    let mut out = Vec::new();
    for (i, l) in loaded.config.server.listeners.iter().enumerate() {
        if let Some(tls) = &l.tls {
            let config = server_config(tls, &|p| loaded.resolve(p)).map_err(|e| CompileError {
                path: format!("server.listeners[{i}].tls.{}", e.key),
                message: e.message,
            })?;
            out.push((l.name.clone(), Arc::new(config)));
        }
    }
    Ok(out)
}

impl TlsListeners {
    /// The TLS listeners of a config, ready to serve.
    pub fn new(loaded: &LoadedConfig) -> Result<Self, CompileError> {
        let out = TlsListeners::default();
        out.stage(loaded)?.commit();
        Ok(out)
    }

    /// The live settings of listener `name`, when it has TLS.
    pub fn get(&self, name: &str) -> Option<Arc<TlsListener>> {
        self.lock().get(name).cloned()
    }

    /// Reads every certificate, key and CA of `loaded` and builds the listeners'
    /// new configs, without putting them in service: a failure leaves every
    /// listener on the certificates it has.
    pub fn stage(&self, loaded: &LoadedConfig) -> Result<StagedTls<'_>, CompileError> {
        Ok(StagedTls {
            owner: self,
            configs: build_all(loaded)?,
        })
    }

    /// Reload in one step: stage, then commit.
    pub fn update(&self, loaded: &LoadedConfig) -> Result<(), CompileError> {
        self.stage(loaded)?.commit();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TlsListener>>> {
        self.by_name.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StagedTls<'_> {
    /// New handshakes use the new configs from now on; open connections keep
    /// the session they negotiated.
    pub fn commit(self) {
        let mut map = self.owner.lock();
        for (name, config) in self.configs {
            match map.get(&name) {
                Some(live) => live.config.store(config),
                None => {
                    map.insert(
                        name,
                        Arc::new(TlsListener {
                            config: ArcSwap::new(config),
                        }),
                    );
                }
            }
        }
    }
}

/// The subject of a (verified) client certificate as an RFC 4514 string, like
/// `CN=client-1,O=Example`. `None` when the certificate cannot be read.
pub fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    format_name(parsed.subject())
}

/// One DER TLV at the start of `b`: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = match first {
        n if n < 0x80 => (usize::from(n), b),
        0x81 => {
            let (&n, b) = b.split_first()?;
            (usize::from(n), b)
        }
        0x82 => {
            let hi = *b.first()?;
            let lo = *b.get(1)?;
            ((usize::from(hi) << 8) | usize::from(lo), b.get(2..)?)
        }
        _ => return None,
    };
    let contents = b.get(..len)?;
    Some((tag, contents, b.get(len..)?))
}

/// The contents of a DER Name (a SEQUENCE of SETs of type-and-value pairs),
/// most specific first as RFC 4514 writes it.
fn format_name(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (tag, mut set, rest) = tlv(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        let mut parts = Vec::new();
        while !set.is_empty() {
            let (tag, atv, rest) = tlv(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (tag, oid, rest) = tlv(atv)?;
            if tag != 0x06 {
                return None;
            }
            let (vtag, value, _) = tlv(rest)?;
            let value = match vtag {
                // UTF8String, PrintableString, IA5String, TeletexString
                0x0c | 0x13 | 0x16 | 0x14 => escape(&String::from_utf8_lossy(value)),
                _ => format!("#{}", hex(rest.get(..2 + value.len())?)),
            };
            parts.push(format!("{}={value}", attribute_name(oid)));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x09] => "STREET".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".into(),
        _ => dotted_oid(oid),
    }
}

fn dotted_oid(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for &b in oid {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i + 1 == value.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        if c.is_control() {
            out.push_str(&format!("\\{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;

    fn resolver(names: &[&[&str]]) -> SniResolver {
        // The keys are never used by `pick`; one generated key serves all.
        let key = rcgen::KeyPair::generate().unwrap();
        let certs = names
            .iter()
            .map(|ns| {
                let cert = rcgen::CertificateParams::new(
                    ns.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                )
                .unwrap()
                .self_signed(&key)
                .unwrap();
                let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
                let signing = provider().key_provider.load_private_key(der).unwrap();
                LoadedCert {
                    key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
                    names: ns.iter().map(|s| s.to_string()).collect(),
                }
            })
            .collect();
        SniResolver::new(certs)
    }

    #[test]
    fn sni_prefers_exact_then_wildcard_then_the_first() {
        let r = resolver(&[
            &["default.test"],
            &["*.example.com"],
            &["api.example.com", "other.test"],
        ]);
        assert_eq!(r.pick(None), 0);
        assert_eq!(r.pick(Some("nothing.test")), 0);
        assert_eq!(r.pick(Some("api.example.com")), 2);
        assert_eq!(r.pick(Some("API.Example.COM")), 2);
        assert_eq!(r.pick(Some("www.example.com")), 1);
        // A wildcard covers exactly one label.
        assert_eq!(r.pick(Some("a.b.example.com")), 0);
        assert_eq!(r.pick(Some("example.com")), 0);
        assert_eq!(r.pick(Some("other.test")), 2);
    }

    #[test]
    fn subjects_read_as_rfc4514() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["c.test".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client-1");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_of(cert.der()).as_deref(),
            Some("CN=client-1,O=Example\\, Inc")
        );
        assert_eq!(
            dotted_oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]),
            "1.2.840.113549"
        );
    }
}
