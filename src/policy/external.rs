//! `auth.external.<name>` (docs/guide/auth.md): an authorization service of
//! the user's own, asked before the request goes upstream (as Envoy's
//! `ext_authz`, Traefik's `forwardAuth` and NGINX's `auth_request` do).
//!
//! The gateway sends `GET <url>` with the request's method, canonical path
//! and host as `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host`,
//! the client address as `X-Forwarded-For`, and the headers named in
//! `send_headers`. A 2xx answer lets the request through, with the headers
//! named in `copy_to_upstream` copied onto it; any other answer goes back to
//! the client as it is (status, body, the headers in `copy_to_client_on_deny`).
//! No answer within `timeout` is a 503 (`failure: deny`) or lets the request
//! through (`failure: allow`), counted either way.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::jwt::sha256;
use crate::config::schema::{self, ExternalFailure};
use crate::metrics::ExternalAuthMetrics;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// A denial's body larger than this is cut to it.
const MAX_DENIAL_BYTES: usize = 64 * 1024;
/// Cached decisions, per policy.
const REMEMBERED: usize = 10_000;

static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What the service decided.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Forward, with these headers set on the upstream request.
    Allow(Vec<(HeaderName, HeaderValue)>),
    /// Answer the client with this.
    Deny {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
    /// The service did not answer (`failure` says what that means).
    Unavailable,
}

/// One part of a cache key (`cache.key`).
enum KeyPart {
    Header(HeaderName),
    Method,
    Path,
}

struct Cache {
    key: Vec<KeyPart>,
    ttl: Duration,
    kept: quick_cache::sync::Cache<[u8; 32], (Decision, Instant)>,
}

/// A compiled `auth.external.<name>` policy.
pub struct External {
    pub name: Arc<str>,
    url: Uri,
    timeout: Duration,
    send_headers: Vec<HeaderName>,
    pub copy_to_upstream: Vec<HeaderName>,
    copy_to_client_on_deny: Vec<HeaderName>,
    pub failure: ExternalFailure,
    /// Bytes of body the service is sent (0: none, and the request is a GET).
    pub send_body: u64,
    cache: Option<Cache>,
    client: HttpsClient,
    metrics: ExternalAuthMetrics,
}

fn names(list: &[String]) -> Result<Vec<HeaderName>, String> {
    list.iter()
        .map(|h| {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("`{h}` is not a header name"))
        })
        .collect()
}

impl External {
    pub fn compile(
        name: &str,
        cfg: &schema::External,
        metrics: ExternalAuthMetrics,
    ) -> Result<External, String> {
        let url: Uri = cfg
            .url
            .parse()
            .map_err(|_| format!("`{}` is not a URL", cfg.url))?;
        let cache = match &cfg.cache {
            None => None,
            Some(c) => Some(Cache {
                key: c
                    .key
                    .iter()
                    .map(|k| match k.as_str() {
                        "method" => Ok(KeyPart::Method),
                        "path" => Ok(KeyPart::Path),
                        other => match other.strip_prefix("header:") {
                            Some(h) => HeaderName::from_bytes(h.as_bytes())
                                .map(KeyPart::Header)
                                .map_err(|_| format!("`{h}` is not a header name")),
                            None => Err(format!("`{other}` is not a cache key part")),
                        },
                    })
                    .collect::<Result<_, _>>()?,
                ttl: c.ttl.get(),
                kept: quick_cache::sync::Cache::new(REMEMBERED),
            }),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("cannot set up TLS for external authorization: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(External {
            name: name.into(),
            url,
            timeout: cfg.timeout.map_or(DEFAULT_TIMEOUT, |d| d.get()),
            send_headers: names(&cfg.send_headers)?,
            copy_to_upstream: names(&cfg.copy_to_upstream)?,
            copy_to_client_on_deny: names(&cfg.copy_to_client_on_deny)?,
            failure: cfg.failure,
            send_body: cfg.send_body.0,
            cache,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
            metrics,
        })
    }

    /// Asks the service about this request (or reuses a cached decision).
    /// `body` is the request body when `send_body` had it read.
    pub async fn decide(&self, parts: &Parts, client_ip: IpAddr, body: Option<&Bytes>) -> Decision {
        let body = body.filter(|_| self.send_body > 0);
        let Some(cache) = &self.cache else {
            return self.ask(parts, client_ip, body).await;
        };
        let key = cache_key(&cache.key, parts);
        let now = Instant::now();
        // A kept decision is a shared read; only one past its time takes the
        // shard's write lock, to be asked again.
        match cache.kept.get(&key) {
            Some((d, until)) if until > now => return d,
            Some(_) => {
                cache.kept.remove_if(&key, |(_, until)| *until <= now);
            }
            None => {}
        }
        let kept = cache
            .kept
            .get_or_insert_async(&key, async {
                let d = self.ask(parts, client_ip, None).await;
                // A failure is not a decision: kept for a second only, so a
                // queue of requests behind it does not wait out the timeout.
                let ttl = match d {
                    Decision::Unavailable => cache.ttl.min(Duration::from_secs(1)),
                    _ => cache.ttl,
                };
                Ok::<_, std::convert::Infallible>((d, Instant::now() + ttl))
            })
            .await;
        match kept {
            Ok((d, _)) => d,
            Err(never) => match never {},
        }
    }

    async fn ask(&self, parts: &Parts, client_ip: IpAddr, body: Option<&Bytes>) -> Decision {
        let outcome = tokio::time::timeout(self.timeout, self.call(parts, client_ip, body)).await;
        let d = match outcome {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::warn!(policy = %self.name, url = %self.url, error = %e,
                    "external authorization failed");
                Decision::Unavailable
            }
            Err(_) => {
                tracing::warn!(policy = %self.name, url = %self.url,
                    timeout = ?self.timeout, "external authorization timed out");
                Decision::Unavailable
            }
        };
        match d {
            Decision::Allow(_) => self.metrics.allow.inc(),
            Decision::Deny { .. } => self.metrics.deny.inc(),
            Decision::Unavailable => self.metrics.error.inc(),
        }
        d
    }

    async fn call(
        &self,
        parts: &Parts,
        client_ip: IpAddr,
        body: Option<&Bytes>,
    ) -> Result<Decision, String> {
        // With a body, a POST carrying it (and its type); else a GET.
        let mut req = match body {
            Some(b) => Request::post(self.url.clone()).body(Full::new(b.clone())),
            None => Request::get(self.url.clone()).body(Full::new(Bytes::new())),
        }
        .map_err(|e| e.to_string())?;
        let h = req.headers_mut();
        if body.is_some()
            && let Some(kind) = parts.headers.get(header::CONTENT_TYPE)
        {
            h.insert(header::CONTENT_TYPE, kind.clone());
        }
        for name in &self.send_headers {
            for v in parts.headers.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        h.insert(
            X_FORWARDED_METHOD.clone(),
            HeaderValue::from_str(parts.method.as_str()).map_err(|e| e.to_string())?,
        );
        let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        h.insert(
            X_FORWARDED_URI.clone(),
            HeaderValue::from_str(uri).map_err(|e| e.to_string())?,
        );
        if let Some(host) = parts.headers.get(header::HOST) {
            h.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_str(&client_ip.to_string()).map_err(|e| e.to_string())?,
        );
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| super::client_error(&e))?;
        let status = resp.status();
        let pick = |names: &[HeaderName], from: &HeaderMap| {
            names
                .iter()
                .flat_map(|n| from.get_all(n).iter().map(|v| (n.clone(), v.clone())))
                .collect::<Vec<_>>()
        };
        if status.is_success() {
            return Ok(Decision::Allow(pick(
                &self.copy_to_upstream,
                resp.headers(),
            )));
        }
        let headers = pick(&self.copy_to_client_on_deny, resp.headers());
        // The denial's body goes back as it came, cut at 64 KiB; a body that
        // fails half-way is a failure, not a denial.
        let body = Limited::new(resp.into_body(), MAX_DENIAL_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the denial: {e}"))?
            .to_bytes();
        Ok(Decision::Deny {
            status,
            headers,
            body,
        })
    }

    /// The client's answer for a denial.
    pub fn denial(
        status: StatusCode,
        headers: &[(HeaderName, HeaderValue)],
        body: &Bytes,
    ) -> Response<Bytes> {
        let mut r = Response::new(body.clone());
        *r.status_mut() = status;
        for (n, v) in headers {
            r.headers_mut().append(n.clone(), v.clone());
        }
        r
    }
}

/// A digest of the parts of the request `key` names, each length-prefixed so
/// that no two different requests share a key by concatenation.
fn cache_key(key: &[KeyPart], parts: &Parts) -> [u8; 32] {
    let mut buf = Vec::new();
    let mut push = |bytes: &[u8]| {
        buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        buf.extend_from_slice(bytes);
    };
    for k in key {
        match k {
            KeyPart::Method => push(parts.method.as_str().as_bytes()),
            KeyPart::Path => push(parts.uri.path().as_bytes()),
            KeyPart::Header(name) => {
                let values: Vec<&[u8]> = parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes)
                    .collect();
                push(&(values.len() as u64).to_be_bytes());
                for v in values {
                    push(v);
                }
            }
        }
    }
    sha256(&buf)
}
