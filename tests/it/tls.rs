//! TLS: termination on listeners (SNI, ALPN, versions, mTLS, reload) and
//! `https://` upstreams. Every certificate is made here with rcgen.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::{self, Gateway, Resp, Upstream, collect};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A test CA and the files it issues, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_path: PathBuf,
}

struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let ca_path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&ca_path, cert.pem()).unwrap();
        Pki {
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            dir,
            ca_path,
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A server certificate for `names` (DNS names or IPs), written to
    /// `<file>.crt` / `<file>.key` (the chain holds the leaf and the CA).
    fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        self.leaf_with_key(file, names, KeyPair::generate().unwrap())
    }

    fn leaf_with_key(&self, file: &str, names: &[&str], key: KeyPair) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params, key)
    }

    fn client(&self, cn: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tollgate Tests");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(cn, params, KeyPair::generate().unwrap())
    }

    fn issue(&self, file: &str, params: CertificateParams, key: KeyPair) -> Leaf {
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.path(&format!("{file}.crt")),
            self.path(&format!("{file}.key")),
        );
        let ca_pem = pem_of(&self.ca_der);
        std::fs::write(&cert_path, format!("{}{ca_pem}", cert.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
            key_der: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        roots
    }
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    pem("CERTIFICATE", der)
}

fn pem(label: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", std::str::from_utf8(line).unwrap());
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

fn p(path: &std::path::Path) -> String {
    path.display().to_string()
}

/// Accepts any server certificate: for tests that only look at which
/// certificate was served.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a test client offers.
struct Client {
    roots: Option<RootCertStore>,
    alpn: Vec<&'static str>,
    tls12_only: bool,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl Client {
    fn trusting(pki: &Pki) -> Client {
        Client {
            roots: Some(pki.roots()),
            alpn: vec!["http/1.1"],
            tls12_only: false,
            identity: None,
        }
    }

    fn any() -> Client {
        Client {
            roots: None,
            alpn: vec!["http/1.1"],
            tls12_only: false,
            identity: None,
        }
    }

    fn config(&self) -> ClientConfig {
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let b = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap();
        let b = match &self.roots {
            Some(r) => b.with_root_certificates(r.clone()),
            None => b
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny)),
        };
        let mut c = match &self.identity {
            Some((chain, key)) => b
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        c.alpn_protocols = self.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        c
    }

    /// Handshake with `addr`; `sni` None sends no SNI (an IP server name).
    async fn connect(
        &self,
        addr: SocketAddr,
        sni: Option<&str>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = match sni {
            Some(s) => ServerName::try_from(s.to_string()).unwrap(),
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let connector = TlsConnector::from(Arc::new(self.config()));
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("handshake timed out"))?
    }
}

fn served_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// An HTTP/1.1 connection over an established TLS stream.
struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl H1 {
    async fn over(tls: TlsStream<TcpStream>) -> Result<H1, String> {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(H1 { sender })
    }

    async fn get(&mut self, host: &str, path: &str) -> Result<Resp, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), self.sender.send_request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        collect(resp).await
    }
}

/// A gateway with a plain `http` listener and an `https` one whose `tls`
/// block is `tls` (indented for the listener).
async fn gateway(tls: &str, up: &Upstream) -> (Gateway, SocketAddr) {
    let yaml = gateway_yaml(tls);
    let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
    let addr = gw.app().listener_addr("https").unwrap();
    (gw, addr)
}

fn gateway_yaml(tls: &str) -> String {
    let mut tls_block = String::new();
    for line in tls.lines().filter(|l| !l.trim().is_empty()) {
        tls_block.push_str("        ");
        tls_block.push_str(line);
        tls_block.push('\n');
    }
    format!(
        "server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
    - name: https
      bind: 127.0.0.1:0
      tls:
{tls_block}  admin:
    bind: 127.0.0.1:0
upstreams:
  echo:
    targets: [{{ url: 'http://${{UP}}' }}]
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: echo
"
    )
}

fn certs_yaml(leaves: &[&Leaf]) -> String {
    let mut s = String::from("certificates:\n");
    for l in leaves {
        s.push_str(&format!(
            "  - {{ cert: '{}', key: '{}' }}\n",
            p(&l.cert),
            p(&l.key)
        ));
    }
    s
}

#[tokio::test]
async fn sni_picks_the_certificate_by_san_and_the_first_is_the_default() {
    let pki = Pki::new("ca");
    let default = pki.leaf("default", &["default.test", "127.0.0.1"]);
    let api = pki.leaf("api", &["api.example.com"]);
    let wild = pki.leaf("wild", &["*.example.com"]);
    let up = Upstream::echo("echo").await;
    let (gw, addr) = gateway(&certs_yaml(&[&default, &wild, &api]), &up).await;

    let client = Client::any();
    let served = |sni: Option<&'static str>| {
        let client = &client;
        async move { served_cert(&client.connect(addr, sni).await.unwrap()) }
    };
    assert_eq!(
        served(None).await,
        default.der,
        "no SNI: the first certificate"
    );
    assert_eq!(
        served(Some("api.example.com")).await,
        api.der,
        "an exact SAN beats a wildcard listed before it"
    );
    assert_eq!(
        served(Some("www.example.com")).await,
        wild.der,
        "wildcard SAN"
    );
    assert_eq!(
        served(Some("a.b.example.com")).await,
        default.der,
        "a wildcard covers one label"
    );
    assert_eq!(
        served(Some("unknown.test")).await,
        default.der,
        "unmatched SNI: the default"
    );

    // And with real verification: the client trusts the test CA and checks the name.
    let tls = Client::trusting(&pki)
        .connect(addr, Some("www.example.com"))
        .await
        .unwrap();
    let mut h1 = H1::over(tls).await.unwrap();
    let r = h1.get("www.example.com", "/hello").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
    // The plain listener still says http.
    let plain = support::get(&gw.url("/plain")).await.unwrap();
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"], "http");
    gw.shutdown().await;
}

/// The key inside a PKCS#8 document (its privateKey OCTET STRING): PKCS#1 for
/// RSA, SEC1 for EC.
fn inner_key(pkcs8: &[u8]) -> Vec<u8> {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let (tag, first) = (b[0], b[1]);
        let (len, at) = match first {
            n if n < 0x80 => (n as usize, 2),
            0x81 => (b[2] as usize, 3),
            0x82 => (((b[2] as usize) << 8) | b[3] as usize, 4),
            _ => panic!("long DER length"),
        };
        (tag, &b[at..at + len], &b[at + len..])
    }
    let (_, seq, _) = tlv(pkcs8);
    let (_, _version, rest) = tlv(seq);
    let (_, _alg, rest) = tlv(rest);
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04);
    key.to_vec()
}

#[tokio::test]
async fn keys_in_pkcs8_pkcs1_and_sec1_all_load() {
    let pki = Pki::new("ca");
    let ec = pki.leaf("ec", &["ec.test"]);
    let rsa = pki.leaf_with_key(
        "rsa",
        &["rsa.test"],
        KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap(),
    );
    assert!(
        std::fs::read_to_string(&ec.key)
            .unwrap()
            .contains("BEGIN PRIVATE KEY")
    );
    // The same keys rewritten as SEC1 and PKCS#1.
    let sec1 = pki.path("ec-sec1.key");
    std::fs::write(
        &sec1,
        pem("EC PRIVATE KEY", &inner_key(ec.key_der.secret_der())),
    )
    .unwrap();
    let pkcs1 = pki.path("rsa-pkcs1.key");
    std::fs::write(
        &pkcs1,
        pem("RSA PRIVATE KEY", &inner_key(rsa.key_der.secret_der())),
    )
    .unwrap();
    let tls = format!(
        "certificates:\n  - {{ cert: '{}', key: '{}' }}\n  - {{ cert: '{}', key: '{}' }}\n  - {{ cert: '{}', key: '{}' }}\n",
        p(&ec.cert),
        p(&sec1),
        p(&rsa.cert),
        p(&pkcs1),
        p(&rsa.cert),
        p(&rsa.key)
    );
    let up = Upstream::echo("echo").await;
    let (gw, addr) = gateway(&tls, &up).await;
    let client = Client::trusting(&pki);
    for (sni, der) in [("ec.test", &ec.der), ("rsa.test", &rsa.der)] {
        let tls = client.connect(addr, Some(sni)).await.unwrap();
        assert_eq!(&served_cert(&tls), der);
        let mut h1 = H1::over(tls).await.unwrap();
        assert_eq!(h1.get(sni, "/k").await.unwrap().status, 200);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn alpn_h2_works_end_to_end() {
    let pki = Pki::new("ca");
    let leaf = pki.leaf("h2", &["h2.test"]);
    let up = Upstream::echo("echo").await;
    let (gw, addr) = gateway(&certs_yaml(&[&leaf]), &up).await;

    let mut client = Client::trusting(&pki);
    client.alpn = vec!["h2", "http/1.1"];
    let tls = client.connect(addr, Some("h2.test")).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::get(format!("https://h2.test/over-h2/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let r = collect(resp).await.unwrap();
        assert_eq!(r.status, 200);
        let j = r.json();
        assert_eq!(j["path"], format!("/over-h2/{i}"));
        assert_eq!(j["headers"]["x-forwarded-proto"], "https");
        assert_eq!(j["headers"]["host"], "h2.test");
    }

    // alpn: [http/1.1] only: an h2-preferring client gets http/1.1.
    gw.shutdown().await;
    let (gw, addr) = gateway(&format!("{}alpn: [http/1.1]\n", certs_yaml(&[&leaf])), &up).await;
    let tls = client.connect(addr, Some("h2.test")).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_tls_connection_parks_and_serves_on() {
    let pki = Pki::new("ca");
    let leaf = pki.leaf("park", &["park.test"]);
    let up = Upstream::echo("echo").await;
    let (gw, addr) = gateway(&certs_yaml(&[&leaf]), &up).await;

    // ALPN http/1.1, and no ALPN at all (HTTP/1.1 too, as from NGINX).
    for alpn in [vec!["http/1.1"], vec![]] {
        let mut client = Client::trusting(&pki);
        client.alpn = alpn;
        let tls = client.connect(addr, Some("park.test")).await.unwrap();
        let mut h1 = H1::over(tls).await.unwrap();
        for i in 0..2 {
            let r = h1.get("park.test", &format!("/tls-{i}")).await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["path"], format!("/tls-{i}"));
            assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
            gw.wait_parked_on("https", 1).await;
        }
        drop(h1);
        gw.wait_parked_on("https", 0).await;
    }
    gw.shutdown().await;
}

/// A TLS 1.1 ClientHello, written by hand (rustls cannot speak 1.1).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend([7u8; 32]); // random
    body.push(0); // session id
    let suites: [u16; 5] = [0xc02f, 0xc02b, 0xc013, 0xc014, 0x002f];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend(hs);
    rec
}

#[tokio::test]
async fn tls_1_1_is_refused_and_min_version_1_3_refuses_a_1_2_client() {
    let pki = Pki::new("ca");
    let leaf = pki.leaf("v", &["v.test"]);
    let up = Upstream::echo("echo").await;
    let (gw, addr) = gateway(&certs_yaml(&[&leaf]), &up).await;

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    assert_eq!(
        reply.first(),
        Some(&0x15),
        "an alert, not a ServerHello: {reply:02x?}"
    );
    // A fatal alert (rustls says handshake_failure: no 1.1 to negotiate).
    assert_eq!(reply.get(5), Some(&2), "a fatal alert: {reply:02x?}");

    // The default (1.2) accepts a 1.2-only client...
    let mut v12 = Client::trusting(&pki);
    v12.tls12_only = true;
    let tls = v12.connect(addr, Some("v.test")).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    gw.shutdown().await;

    // ...min_version 1.3 does not, and still serves 1.3 clients.
    let (gw, addr) = gateway(
        &format!("{}min_version: \"1.3\"\n", certs_yaml(&[&leaf])),
        &up,
    )
    .await;
    assert!(v12.connect(addr, Some("v.test")).await.is_err());
    let tls = Client::trusting(&pki)
        .connect(addr, Some("v.test"))
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let failures = support::metric(
        &gw.metrics().await,
        "tollgate_tls_handshake_failures_total{listener=\"https\"}",
    );
    assert_eq!(failures, Some(1.0));
    gw.shutdown().await;
}

#[tokio::test]
async fn mtls_required_refuses_clients_without_a_certificate() {
    let pki = Pki::new("ca");
    let clients = Pki::new("clients-ca");
    let leaf = pki.leaf("m", &["m.test"]);
    let good = clients.client("client-1");
    let stranger = Pki::new("other-ca").client("intruder");
    let up = Upstream::echo("echo").await;
    let tls = format!(
        "{}client_auth: {{ ca: '{}', required: true }}\n",
        certs_yaml(&[&leaf]),
        p(&clients.ca_path)
    );
    let (gw, addr) = gateway(&tls, &up).await;

    // No certificate: TLS 1.3 clients learn it on their first read.
    let refused = async |client: &Client| -> bool {
        match client.connect(addr, Some("m.test")).await {
            Err(_) => true,
            Ok(tls) => match H1::over(tls).await {
                Err(_) => true,
                Ok(mut h1) => h1.get("m.test", "/").await.is_err(),
            },
        }
    };
    assert!(
        refused(&Client::trusting(&pki)).await,
        "no client certificate"
    );
    let mut wrong = Client::trusting(&pki);
    wrong.identity = Some((vec![stranger.der.clone()], stranger.key_der.clone_key()));
    assert!(refused(&wrong).await, "a certificate from another CA");

    let mut ok = Client::trusting(&pki);
    ok.identity = Some((vec![good.der.clone()], good.key_der.clone_key()));
    let mut h1 = H1::over(ok.connect(addr, Some("m.test")).await.unwrap())
        .await
        .unwrap();
    let r = h1.get("m.test", "/who").await.unwrap();
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").unwrap().to_string();
    let line = gw.wait_log_for(&id).await;
    assert_eq!(line["client_cert"], "O=Tollgate Tests,CN=client-1");
    assert_eq!(line["listener"], "https");
    assert_eq!(up.hits(), 1, "refused handshakes never reach the upstream");
    gw.shutdown().await;
}

#[tokio::test]
async fn mtls_optional_accepts_both_and_records_the_subject() {
    let pki = Pki::new("ca");
    let clients = Pki::new("clients-ca");
    let leaf = pki.leaf("m", &["m.test"]);
    let good = clients.client("client-2");
    let up = Upstream::echo("echo").await;
    let tls = format!(
        "{}client_auth: {{ ca: '{}', required: false }}\n",
        certs_yaml(&[&leaf]),
        p(&clients.ca_path)
    );
    let (gw, addr) = gateway(&tls, &up).await;

    let mut anon = H1::over(
        Client::trusting(&pki)
            .connect(addr, Some("m.test"))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let r = anon.get("m.test", "/anon").await.unwrap();
    assert_eq!(r.status, 200);
    let line = gw.wait_log_for(r.header("x-request-id").unwrap()).await;
    assert!(line.get("client_cert").is_none(), "{line}");

    let mut ok = Client::trusting(&pki);
    ok.identity = Some((vec![good.der.clone()], good.key_der.clone_key()));
    let mut h1 = H1::over(ok.connect(addr, Some("m.test")).await.unwrap())
        .await
        .unwrap();
    let r = h1.get("m.test", "/known").await.unwrap();
    assert_eq!(r.status, 200);
    let line = gw.wait_log_for(r.header("x-request-id").unwrap()).await;
    assert_eq!(line["client_cert"], "O=Tollgate Tests,CN=client-2");
    gw.shutdown().await;
}

#[tokio::test]
async fn certificates_reload_under_traffic_and_a_broken_one_keeps_the_old() {
    let pki = Pki::new("ca");
    let first = pki.leaf("site", &["site.test"]);
    let up = Upstream::echo("echo").await;
    let yaml = gateway_yaml(&certs_yaml(&[&first]));
    let vars = [("UP", up.host_port())];
    let env = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let gw = Gateway::start(&yaml, &vars).await;
    let addr = gw.app().listener_addr("https").unwrap();

    // A connection opened before the reload keeps serving through it.
    let tls = Client::any()
        .connect(addr, Some("site.test"))
        .await
        .unwrap();
    assert_eq!(served_cert(&tls), first.der);
    let mut open = H1::over(tls).await.unwrap();
    let traffic = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for i in 0..40 {
            statuses.push(
                open.get("site.test", &format!("/keep/{i}"))
                    .await
                    .map(|r| r.status),
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (open, statuses)
    });

    // New files at the same paths, as a certificate renewal writes them.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let renewed = pki.leaf("site", &["site.test"]);
    assert_ne!(renewed.der, first.der);
    let loaded = tollgate::config::load_str_with_env(&yaml, "test.yaml", &env).unwrap();
    gw.app().reload(loaded.clone()).await.unwrap();

    let (mut open, statuses) = traffic.await.unwrap();
    assert!(statuses.iter().all(|s| *s == Ok(200)), "{statuses:?}");
    assert_eq!(open.get("site.test", "/after").await.unwrap().status, 200);
    let tls = Client::any()
        .connect(addr, Some("site.test"))
        .await
        .unwrap();
    assert_eq!(
        served_cert(&tls),
        renewed.der,
        "new handshakes see the new certificate"
    );

    // A key that does not fit the certificate: the load fails, naming the key...
    let stranger = pki.leaf("stranger", &["x.test"]);
    std::fs::copy(&stranger.key, &renewed.key).unwrap();
    let err = tollgate::config::load_str_with_env(&yaml, "test.yaml", &env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.listeners[1].tls.certificates[0].key"),
        "{err}"
    );
    assert!(err.contains("does not fit the certificate"), "{err}");
    // ...and a reload with that config (files broken after loading) fails too,
    // changing nothing.
    assert!(gw.app().reload(loaded).await.is_err());
    let tls = Client::any()
        .connect(addr, Some("site.test"))
        .await
        .unwrap();
    assert_eq!(
        served_cert(&tls),
        renewed.der,
        "the old certificate keeps serving"
    );
    let mut h1 = H1::over(tls).await.unwrap();
    assert_eq!(h1.get("site.test", "/still").await.unwrap().status, 200);

    // Unreadable garbage is refused the same way.
    std::fs::write(&renewed.cert, "not a certificate").unwrap();
    let err = tollgate::config::load_str_with_env(&yaml, "test.yaml", &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificates[0].cert"), "{err}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_or_failed_handshake_does_not_affect_other_connections() {
    let pki = Pki::new("ca");
    let leaf = pki.leaf("s", &["s.test"]);
    let up = Upstream::echo("echo").await;
    let (gw, addr) = gateway(&certs_yaml(&[&leaf]), &up).await;
    // One client sends half a ClientHello and stalls; another sends garbage.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(&tls11_client_hello()[..10])
        .await
        .unwrap();
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let tls = Client::trusting(&pki)
        .connect(addr, Some("s.test"))
        .await
        .unwrap();
    let mut h1 = H1::over(tls).await.unwrap();
    assert_eq!(h1.get("s.test", "/fine").await.unwrap().status, 200);
    gw.shutdown().await;
}

// ---- upstream TLS ----

/// An HTTPS upstream answering `tls-upstream <path>`, with the certificate `leaf`.
async fn tls_upstream(leaf: &Leaf) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let chain = vec![leaf.der.clone()];
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, leaf.key_der.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = format!(
                        "tls-upstream {} host={}",
                        req.uri().path(),
                        req.headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("-")
                    );
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

async fn proxy_to(upstream_yaml: &str, vars: &[(&str, String)]) -> Gateway {
    let yaml = format!(
        "server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
  admin:
    bind: 127.0.0.1:0
upstreams:
  secure:
{upstream_yaml}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: secure
"
    );
    Gateway::start(&yaml, vars).await
}

#[tokio::test]
async fn https_upstream_verified_with_a_configured_ca() {
    let pki = Pki::new("up-ca");
    let leaf = pki.leaf("up", &["localhost", "127.0.0.1"]);
    let (addr, _task) = tls_upstream(&leaf).await;
    let gw = proxy_to(
        "    targets: [{ url: 'https://127.0.0.1:${PORT}' }]\n    tls: { ca: '${CA}' }",
        &[("PORT", addr.port().to_string()), ("CA", p(&pki.ca_path))],
    )
    .await;
    let r = support::get(&gw.url("/a")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("tls-upstream /a"), "{}", r.text());
    // The pooled connection is reused for the next request.
    assert_eq!(support::get(&gw.url("/b")).await.unwrap().status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn https_upstream_with_a_server_name_override() {
    let pki = Pki::new("up-ca");
    // The certificate names only `users.internal`, not the address dialled.
    let leaf = pki.leaf("up", &["users.internal"]);
    let (addr, _task) = tls_upstream(&leaf).await;
    let vars = [("PORT", addr.port().to_string()), ("CA", p(&pki.ca_path))];
    let without = proxy_to(
        "    targets: [{ url: 'https://127.0.0.1:${PORT}' }]\n    tls: { ca: '${CA}' }",
        &vars,
    )
    .await;
    let r = support::get(&without.url("/x")).await.unwrap();
    r.assert_error(502, "upstream_unavailable");
    without.shutdown().await;

    let with = proxy_to(
        "    targets: [{ url: 'https://127.0.0.1:${PORT}' }]\n    tls: { ca: '${CA}', server_name: users.internal }",
        &vars,
    )
    .await;
    let r = support::get(&with.url("/x")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    with.shutdown().await;
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_502_and_insecure_skip_verify_accepts_it() {
    let pki = Pki::new("unknown-ca");
    let leaf = pki.leaf("up", &["127.0.0.1"]);
    let (addr, _task) = tls_upstream(&leaf).await;
    let vars = [("PORT", addr.port().to_string())];
    // Default roots (webpki): the test CA is not among them.
    let gw = proxy_to("    targets: [{ url: 'https://127.0.0.1:${PORT}' }]", &vars).await;
    let r = support::get(&gw.url("/x")).await.unwrap();
    r.assert_error(502, "upstream_unavailable");
    gw.shutdown().await;

    let gw = proxy_to(
        "    targets: [{ url: 'https://127.0.0.1:${PORT}' }]\n    tls: { insecure_skip_verify: true }",
        &vars,
    )
    .await;
    let r = support::get(&gw.url("/x")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_may_mix_http_and_https_targets() {
    let pki = Pki::new("up-ca");
    let leaf = pki.leaf("up", &["127.0.0.1"]);
    let (addr, _task) = tls_upstream(&leaf).await;
    let plain = Upstream::echo("plain").await;
    let gw = proxy_to(
        "    targets: [{ url: 'https://127.0.0.1:${PORT}' }, { url: 'http://${PLAIN}' }]\n    tls: { ca: '${CA}' }",
        &[
            ("PORT", addr.port().to_string()),
            ("PLAIN", plain.host_port()),
            ("CA", p(&pki.ca_path)),
        ],
    )
    .await;
    let mut tls_hits = 0;
    for _ in 0..4 {
        let r = support::get(&gw.url("/m")).await.unwrap();
        assert_eq!(r.status, 200);
        if r.text().starts_with("tls-upstream") {
            tls_hits += 1;
        }
    }
    assert_eq!(
        tls_hits, 2,
        "round robin over one https and one http target"
    );
    assert_eq!(plain.hits(), 2);
    gw.shutdown().await;
}

#[test]
fn tls_config_errors_name_the_key() {
    let pki = Pki::new("ca");
    let leaf = pki.leaf("e", &["e.test"]);
    let bad = format!(
        "{}min_version: \"1.1\"\nalpn: [h3, http/1.1]\nclient_auth: {{ ca: '{}' }}\n",
        certs_yaml(&[&leaf]),
        p(&pki.path("missing-ca.pem"))
    );
    let yaml = gateway_yaml(&bad);
    let err = tollgate::config::load_str_with_env(&yaml, "t.yaml", &|_| Some("127.0.0.1:1".into()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.listeners[1].tls.min_version: expected \"1.2\" or \"1.3\""),
        "{err}"
    );
    assert!(
        err.contains("server.listeners[1].tls.alpn[0]: unknown ALPN protocol `h3`"),
        "{err}"
    );

    // File problems are reported once the rest is valid.
    let yaml = gateway_yaml(&format!(
        "{}client_auth: {{ ca: '{}' }}\n",
        certs_yaml(&[&leaf]),
        p(&pki.path("missing-ca.pem"))
    ));
    let err = tollgate::config::load_str_with_env(&yaml, "t.yaml", &|_| Some("127.0.0.1:1".into()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.listeners[1].tls.client_auth.ca: cannot read"),
        "{err}"
    );

    let upstream = "upstreams:\n  u:\n    targets: [{ url: 'http://127.0.0.1:1' }]\n    tls: { server_name: 'bad name!' }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: u }\n";
    let err = tollgate::config::load_str_with_env(upstream, "t.yaml", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("upstreams.u.tls: tls applies to https:// targets"),
        "{err}"
    );
    assert!(
        err.contains("upstreams.u.tls.server_name: expected a DNS name"),
        "{err}"
    );
}

#[tokio::test]
async fn renewed_certificate_files_are_picked_up_by_the_file_watcher() {
    let pki = Pki::new("ca");
    let first = pki.leaf("site", &["site.test"]);
    let up = Upstream::echo("echo").await;
    // The config lives beside the certificates, as in a typical deployment.
    let config = pki.path("tollgate.yaml");
    std::fs::write(&config, gateway_yaml(&certs_yaml(&[&first]))).unwrap();
    let gw = Gateway::start_file(
        &config,
        &[("UP", up.host_port())],
        Some(Duration::from_millis(100)),
    )
    .await;
    let addr = gw.app().listener_addr("https").unwrap();
    let served = || async {
        let tls = Client::any()
            .connect(addr, Some("site.test"))
            .await
            .unwrap();
        served_cert(&tls)
    };
    assert_eq!(served().await, first.der);

    // Renewal rewrites the certificate and key files in place; nobody sends
    // SIGHUP or calls /reload.
    let renewed = pki.leaf("site", &["site.test"]);
    support::wait_until_within(
        Duration::from_secs(10),
        "the renewed certificate to be served",
        async || served().await == renewed.der,
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tls_listener_reads_the_proxy_protocol_header_before_the_handshake() {
    let pki = Pki::new("ca");
    let leaf = pki.leaf("pp", &["pp.test"]);
    let up = Upstream::echo("echo").await;
    let yaml = gateway_yaml(&certs_yaml(&[&leaf])).replace(
        "      tls:\n",
        "      proxy_protocol: { trusted: [127.0.0.1] }\n      tls:\n",
    );
    assert!(yaml.contains("proxy_protocol"));
    let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
    let addr = gw.app().listener_addr("https").unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 443\r\n")
        .await
        .unwrap();
    let connector = TlsConnector::from(Arc::new(Client::trusting(&pki).config()));
    let tls = connector
        .connect(ServerName::try_from("pp.test").unwrap(), tcp)
        .await
        .unwrap();
    let mut h1 = H1::over(tls).await.unwrap();
    let r = h1.get("pp.test", "/x").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-forwarded-for"], "203.0.113.9");
    // Without the header the handshake never starts: the ClientHello is not
    // a PROXY header.
    assert!(
        Client::trusting(&pki)
            .connect(addr, Some("pp.test"))
            .await
            .is_err()
    );
    gw.shutdown().await;
}
