//! The connection layer to upstream targets: the one seam between the proxy and
//! the HTTP client library.
//!
//! Today it is hyper-util's pooled client (keep-alive connections per target,
//! connect timeout, idle expiry). Everything above this file sees only
//! `UpstreamClient::send` and `SendError`, so the pool can be replaced (a per-core
//! pool on hyper's `client::conn`, see the performance issue) without touching
//! the proxy.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::proxy::body::{BodyError, RequestBody};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_target: usize,
    pub tls: TlsSettings,
    pub protocol: Protocol,
}

/// `upstreams.*.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Http1,
    /// h2c (prior knowledge) for `http://`, ALPN h2 for `https://`: see `h2`.
    H2,
}

/// How `https://` targets are verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Trust anchors replacing the built-in webpki roots (Mozilla's set).
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// The name the target's certificate must carry, instead of the URL's host.
    pub server_name: Option<String>,
    /// Accept any certificate. Lab use only.
    pub insecure_skip_verify: bool,
}

#[allow(
    clippy::large_enum_variant,
    reason = "one per upstream, behind an Arc: boxing would add a hop per request"
)]
pub enum UpstreamClient {
    Http1(Client<HttpsConnector<HttpConnector>, RequestBody>),
    H2(super::h2::H2Client),
}

/// Why an attempt failed, classified for the answer and the metrics.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, connect timeout).
    Connect(String),
    /// The client's request body failed: too large, stalled, or aborted.
    ClientBody(BodyErrorKind),
    /// The connection broke or the upstream answered something that is not HTTP.
    Reset(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyErrorKind {
    TooLarge,
    Timeout,
    Aborted,
}

impl UpstreamClient {
    pub fn new(settings: &PoolSettings) -> Result<Self, String> {
        if settings.protocol == Protocol::H2 {
            return super::h2::H2Client::new(settings).map(UpstreamClient::H2);
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        // The TLS layer sees `https://` URIs; the TCP connector below must too.
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(
                client_config(&settings.tls).map_err(|e| format!("TLS client setup: {e}"))?,
            )
            .https_or_http();
        let builder = match settings
            .tls
            .server_name
            .as_deref()
            .and_then(|n| ServerName::try_from(n.to_owned()).ok())
        {
            Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
            None => builder,
        };
        let connector = builder.enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(settings.max_idle_per_target)
            // The proxy sets Host itself (the client's, or the route's rewrite).
            .set_host(false)
            .build(connector);
        Ok(UpstreamClient::Http1(client))
    }

    /// Sends one request (its URI absolute: `http://host:port/path`) and returns
    /// once the response head arrived.
    pub async fn send(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, SendError> {
        match self {
            UpstreamClient::Http1(client) => client.request(req).await.map_err(classify),
            UpstreamClient::H2(client) => client.send(req).await,
        }
    }
}

fn classify(err: hyper_util::client::legacy::Error) -> SendError {
    // The client's own body error travels inside hyper's error chain.
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(body) = e.downcast_ref::<BodyError>() {
            return SendError::ClientBody(match body {
                BodyError::TooLarge(_) => BodyErrorKind::TooLarge,
                BodyError::Timeout => BodyErrorKind::Timeout,
                BodyError::Client(_) => BodyErrorKind::Aborted,
            });
        }
        source = e.source();
    }
    if err.is_connect() {
        SendError::Connect(chain(&err))
    } else {
        SendError::Reset(chain(&err))
    }
}

/// The error and its causes on one line, for logs.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// The rustls client config for an upstream's `https://` targets.
pub(super) fn client_config(tls: &TlsSettings) -> Result<ClientConfig, rustls::Error> {
    let provider = crate::server::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    // hyper-rustls sets ALPN itself from the enabled protocols (http/1.1); h2 sets its own.
    let config = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match &tls.ca {
            // Validation already refused a CA file without a usable certificate.
            Some(ca) => {
                roots.add_parsable_certificates(ca.iter().cloned());
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(config)
}

/// `insecure_skip_verify`: any certificate is accepted. Handshake signatures are
/// still checked, which proves only that the peer holds the key of the
/// certificate it sent.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
