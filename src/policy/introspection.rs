//! `auth.introspection.<name>` (docs/guide/auth.md): opaque OAuth2 tokens
//! checked at the authorization server's introspection endpoint (RFC 7662).
//!
//! An answer is kept per token (by its SHA-256, never the token itself):
//! `active: true` until `min(exp, cache_ttl)`, `active: false` for
//! `negative_ttl`. Concurrent checks of one uncached token wait for one call.
//! An endpoint that does not answer, answers other than 200, or answers
//! without a boolean `active` lets no request through: 503 `auth_unavailable`,
//! while the answers already kept are still honoured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::jwt::{JwtError, TokenHandling, Verified, sha256, unix_now};
use crate::config::schema::{self, IntrospectionAuth};
use crate::error::AuthFailure;
use crate::metrics::IntrospectionMetrics;

pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Tokens whose answers are kept, per policy.
const REMEMBERED: usize = 10_000;
/// An introspection answer larger than this is refused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// A token longer than this is not sent anywhere.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How the gateway proves itself to the endpoint.
enum ClientAuth {
    /// The `Authorization: Basic` value, ready to send.
    Basic(HeaderValue),
    /// `client_id` and `client_secret` go in the form.
    Post { id: String, secret: String },
}

/// A kept answer: the verdict and until when it holds. A failed call is kept
/// too, for at most a second, so that requests queued behind it fail at once
/// instead of each waiting out the timeout.
#[derive(Clone)]
struct Kept {
    verdict: Result<Verified, JwtError>,
    until: Instant,
}

/// How long a failed call's 503 is reused.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(1);

/// A compiled `auth.introspection.<name>` policy.
pub struct Introspection {
    pub name: Arc<str>,
    url: Uri,
    auth: ClientAuth,
    cache_ttl: Duration,
    negative_ttl: Duration,
    timeout: Duration,
    pub tokens: TokenHandling,
    client: Option<HttpsClient>,
    kept: quick_cache::sync::Cache<[u8; 32], Kept>,
    metrics: IntrospectionMetrics,
}

impl Introspection {
    pub fn compile(
        name: &str,
        cfg: &schema::Introspection,
        metrics: IntrospectionMetrics,
    ) -> Result<Introspection, String> {
        let url: Uri = cfg
            .url
            .parse()
            .map_err(|_| format!("`{}` is not a URL", cfg.url))?;
        let auth = match cfg.auth_method {
            IntrospectionAuth::Basic => {
                // RFC 6749 2.3.1: each part form-encoded, then Basic.
                let encode =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", encode(&cfg.client_id), encode(&cfg.client_secret));
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                let mut v = HeaderValue::from_str(&format!("Basic {b64}"))
                    .map_err(|_| "the client credentials cannot form a header".to_string())?;
                v.set_sensitive(true);
                ClientAuth::Basic(v)
            }
            IntrospectionAuth::Post => ClientAuth::Post {
                id: cfg.client_id.clone(),
                secret: cfg.client_secret.clone(),
            },
        };
        let tokens = TokenHandling::compile(
            cfg.token_from.as_deref(),
            &cfg.forward_claims,
            cfg.strip_token,
        )?;
        let client = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("cannot set up TLS for introspection: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(client);
        Ok(Introspection {
            name: name.into(),
            url,
            auth,
            cache_ttl: cfg.cache_ttl.map_or(DEFAULT_CACHE_TTL, |d| d.get()),
            negative_ttl: cfg.negative_ttl.map_or(DEFAULT_NEGATIVE_TTL, |d| d.get()),
            timeout: cfg.timeout.map_or(DEFAULT_TIMEOUT, |d| d.get()),
            tokens,
            client: Some(client),
            kept: quick_cache::sync::Cache::new(REMEMBERED),
            metrics,
        })
    }

    /// The verdict on `token`: a kept answer while it holds, else one call
    /// (shared by every request that asks about the same token meanwhile).
    pub async fn check(&self, token: &str) -> Result<Verified, JwtError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Failure(AuthFailure::Invalid));
        }
        let key = sha256(token.as_bytes());
        let now = Instant::now();
        // A kept answer is a shared read; only one past its time takes the
        // shard's write lock, to be asked again.
        match self.kept.get(&key) {
            Some(k) if k.until > now => return k.verdict,
            Some(_) => {
                self.kept.remove_if(&key, |k| k.until <= now);
            }
            None => {}
        }
        let kept = self
            .kept
            .get_or_insert_async(&key, async {
                let (verdict, ttl) = match self.call(token).await {
                    Ok(Ok(v)) => {
                        let ttl = self.active_for(&v);
                        (Ok(v), ttl)
                    }
                    Ok(Err(f)) => (Err(JwtError::Failure(f)), self.negative_ttl),
                    Err(()) => (
                        Err(JwtError::Unavailable),
                        UNAVAILABLE_FOR.min(self.negative_ttl),
                    ),
                };
                Ok::<_, std::convert::Infallible>(Kept {
                    verdict,
                    until: Instant::now() + ttl,
                })
            })
            .await;
        match kept {
            Ok(k) => k.verdict,
            Err(never) => match never {},
        }
    }

    /// `cache_ttl`, cut to the token's own `exp`.
    fn active_for(&self, v: &Verified) -> Duration {
        match v.claims.get("exp").and_then(Value::as_u64) {
            Some(exp) => {
                let left = exp.saturating_sub(unix_now());
                self.cache_ttl.min(Duration::from_secs(left))
            }
            None => self.cache_ttl,
        }
    }

    /// One call to the endpoint. `Err(())` when it gave no usable answer
    /// (logged and counted); otherwise its verdict.
    async fn call(&self, token: &str) -> Result<Result<Verified, AuthFailure>, ()> {
        let answer = tokio::time::timeout(self.timeout, self.post(token))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
            .and_then(|body| verdict(&body));
        match answer {
            Ok(v) => {
                match &v {
                    Ok(_) => self.metrics.active.inc(),
                    Err(_) => self.metrics.inactive.inc(),
                }
                Ok(v)
            }
            Err(e) => {
                self.metrics.error.inc();
                tracing::warn!(policy = %self.name, url = %self.url, error = %e,
                    "token introspection failed");
                Err(())
            }
        }
    }

    async fn post(&self, token: &str) -> Result<Bytes, String> {
        let client = self.client.as_ref().ok_or("no HTTP client")?;
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token);
            form.append_pair("token_type_hint", "access_token");
            if let ClientAuth::Post { id, secret } = &self.auth {
                form.append_pair("client_id", id);
                form.append_pair("client_secret", secret);
            }
            form.finish()
        };
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let ClientAuth::Basic(v) = &self.auth {
            req = req.header(header::AUTHORIZATION, v.clone());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| super::client_error(&e))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("status {}", resp.status()));
        }
        Ok(Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes())
    }
}

/// What an introspection answer says (RFC 7662 section 2.2). `Err` when it
/// is not an answer at all.
fn verdict(body: &[u8]) -> Result<Result<Verified, AuthFailure>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(claims) = doc else {
        return Err("not a JSON object".into());
    };
    match claims.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(Err(AuthFailure::Invalid)),
        Some(other) => return Err(format!("`active` is {other}, not true or false")),
        None => return Err("the answer has no `active`".into()),
    }
    let now = unix_now();
    if claims
        .get("exp")
        .and_then(Value::as_u64)
        .is_some_and(|exp| exp <= now)
    {
        return Ok(Err(AuthFailure::Expired));
    }
    if claims
        .get("nbf")
        .and_then(Value::as_u64)
        .is_some_and(|nbf| nbf > now)
    {
        return Ok(Err(AuthFailure::Invalid));
    }
    let subject = ["sub", "username", "client_id"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(Value::as_str))
        .map(Arc::from);
    Ok(Ok(Verified {
        subject,
        claims: Arc::new(claims),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_rfc_7662_says() {
        let now = unix_now();
        let ok = verdict(
            format!(
                r#"{{"active": true, "sub": "u-1", "scope": "a b", "exp": {}}}"#,
                now + 60
            )
            .as_bytes(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.subject.as_deref(), Some("u-1"));
        assert_eq!(ok.claims["scope"], "a b");
        let client = verdict(br#"{"active": true, "client_id": "svc"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(client.subject.as_deref(), Some("svc"));

        assert_eq!(
            verdict(br#"{"active": false}"#).unwrap().unwrap_err(),
            AuthFailure::Invalid
        );
        let expired = format!(r#"{{"active": true, "exp": {}}}"#, now - 1);
        assert_eq!(
            verdict(expired.as_bytes()).unwrap().unwrap_err(),
            AuthFailure::Expired
        );
        for (bad, why) in [
            (&b"<html>"[..], "not JSON"),
            (b"[true]", "not a JSON object"),
            (b"{}", "no `active`"),
            (br#"{"active": "true"}"#, "not true or false"),
        ] {
            let e = verdict(bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
