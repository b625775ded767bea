//! JWT minting with the fixed test keys of `tests/fixtures/jwt/`, raw token
//! forging for the attacks, and a JWKS server whose document, status and hit
//! count the test controls.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The shared secret of HS test policies.
pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
pub const ISSUER: &str = "https://issuer.test/";
pub const AUDIENCE: &str = "api";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims that pass a policy with `ISSUER` / `AUDIENCE`, valid for an hour.
pub fn good_claims() -> Value {
    json!({
        "sub": "user-7",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 3600,
        "scope": "users:read users:write",
        "roles": ["dev", "support"],
    })
}

/// The private key of the test key (or `-other` attacker key) for `alg`.
pub fn encoding_key(alg: Algorithm, other: bool) -> EncodingKey {
    let suffix = if other { "-other" } else { "" };
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = if other { "not-the-secret" } else { SECRET };
            EncodingKey::from_secret(secret.as_bytes())
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            EncodingKey::from_rsa_pem(&fixture_bytes(&format!("rsa{suffix}.pem"))).unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&fixture_bytes(&format!("ec256{suffix}.pem"))).unwrap()
        }
        Algorithm::ES384 => EncodingKey::from_ec_pem(&fixture_bytes("ec384.pem")).unwrap(),
        Algorithm::EdDSA => {
            EncodingKey::from_ed_pem(&fixture_bytes(&format!("ed25519{suffix}.pem"))).unwrap()
        }
        other => panic!("no test key for {other:?}"),
    }
}

/// The kid of the test key for `alg` in `jwks.json` (none for HS).
pub fn kid(alg: Algorithm) -> Option<&'static str> {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
        Algorithm::ES256 => Some("ec-1"),
        Algorithm::ES384 => Some("ec384-1"),
        Algorithm::EdDSA => Some("ed-1"),
        _ => Some("rsa-1"),
    }
}

/// A token signed with the test key of `alg`.
pub fn mint(alg: Algorithm, claims: &Value) -> String {
    mint_with(alg, kid(alg), claims, false)
}

pub fn mint_with(alg: Algorithm, kid: Option<&str>, claims: &Value, other_key: bool) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &encoding_key(alg, other_key)).unwrap()
}

/// A token signed with an explicit header (e.g. with `jku`).
pub fn mint_header(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// `header.payload.signature` from raw JSON and signature bytes.
pub fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// A loopback JWKS endpoint. `set` replaces the document; `fail_with` makes it
/// answer that status instead (0 = serve the document again).
#[derive(Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    doc: Arc<Mutex<String>>,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(doc: Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        JwksServer::serve(listener, doc)
    }

    /// Serves on an already bound listener (to take over a port that was
    /// unreachable when the gateway started).
    pub fn serve(listener: TcpListener, doc: Value) -> JwksServer {
        let server = JwksServer {
            addr: listener.local_addr().unwrap(),
            doc: Arc::new(Mutex::new(doc.to_string())),
            status: Arc::new(AtomicU16::new(0)),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        let s = s.clone();
                        async move {
                            s.hits.fetch_add(1, Ordering::SeqCst);
                            let status = s.status.load(Ordering::SeqCst);
                            let mut resp = if status != 0 {
                                let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
                                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                                r
                            } else {
                                Response::new(Full::new(Bytes::from(s.doc.lock().unwrap().clone())))
                            };
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn set(&self, doc: Value) {
        *self.doc.lock().unwrap() = doc.to_string();
    }

    pub fn fail_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The test JWKS (`jwks.json`), optionally with the RSA key's kid renamed.
pub fn test_jwks() -> Value {
    serde_json::from_slice(&fixture_bytes("jwks.json")).unwrap()
}

/// A JWKS with only the RSA test key, under `kid`.
pub fn rsa_jwks(kid: &str) -> Value {
    let mut doc = test_jwks();
    let mut key = doc["keys"][0].clone();
    key["kid"] = json!(kid);
    doc["keys"] = json!([key]);
    doc
}
