//! Keys of a `jwks_url` policy: fetched with the gateway's own HTTP client
//! (rustls, webpki roots), refreshed in the background with jitter, kept across
//! config reloads (`Carryover`), and refetched once — coalesced and at most every
//! 30 s — when a token names a `kid` the set does not have.
//!
//! A failed fetch never drops keys that loaded before. While no key set has ever
//! loaded, `current()` is `None`: requests get 503 `auth_unavailable` and
//! `/readyz` is 503.
//!
//! With OIDC discovery (`discovery: true`) each fetch first reads
//! `<issuer>/.well-known/openid-configuration`, checks that it names the
//! configured issuer exactly, and takes `jwks_uri` and the signing algorithms
//! from it; the rules above then apply to the pair.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use jsonwebtoken::Algorithm;

use super::jwt::KeySet;
use crate::config::values::ALGORITHMS;
use crate::metrics::JwksMetrics;

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// An unknown `kid` triggers at most one refetch per this interval.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// First retry delay after a failed fetch; doubles up to the refresh interval
/// (at most a minute).
const RETRY_BASE: Duration = Duration::from_millis(250);

pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Where a policy's keys come from.
pub enum Origin {
    /// `jwks_url`.
    Jwks(Uri),
    /// `discovery: true`: the document at `document`, which must name `issuer`.
    Discovery { issuer: String, document: Uri },
}

impl Origin {
    /// The discovery origin of `issuer`: its document is at
    /// `<issuer without a trailing />/.well-known/openid-configuration`.
    pub fn discovery(issuer: &str) -> Result<Origin, String> {
        let document = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
        .parse()
        .map_err(|_| format!("`{issuer}` is not a URL"))?;
        Ok(Origin::Discovery {
            issuer: issuer.to_owned(),
            document,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Jwks(url) => write!(f, "{url}"),
            Origin::Discovery { document, .. } => write!(f, "{document}"),
        }
    }
}

pub struct JwksSource {
    pub policy: Arc<str>,
    pub origin: Origin,
    refresh: Duration,
    keys: ArcSwapOption<KeySet>,
    /// When the last successful fetch ended (for `tollgate_jwks_age_seconds`).
    last_success: Mutex<Option<std::time::Instant>>,
    /// When an unknown `kid` last caused a fetch. Held across that fetch, so
    /// concurrent requests wait for it instead of fetching again.
    unknown_kid: tokio::sync::Mutex<Option<Instant>>,
    min_refetch_interval: Duration,
    client: Option<HttpsClient>,
    metrics: JwksMetrics,
    stop: CancellationToken,
}

impl JwksSource {
    pub fn new(
        policy: &str,
        origin: Origin,
        refresh: Duration,
        metrics: JwksMetrics,
    ) -> Arc<JwksSource> {
        Self::with_refetch_interval(
            policy,
            origin,
            refresh,
            metrics,
            UNKNOWN_KID_REFETCH_INTERVAL,
        )
    }

    pub fn with_refetch_interval(
        policy: &str,
        origin: Origin,
        refresh: Duration,
        metrics: JwksMetrics,
        min_refetch_interval: Duration,
    ) -> Arc<JwksSource> {
        let client = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| tracing::error!(policy, error = %e, "cannot set up TLS for JWKS fetches"))
            .ok()
            .map(|b| {
                let https = b.https_or_http().enable_http1().build();
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .pool_max_idle_per_host(1)
                    .build(https)
            });
        Arc::new(JwksSource {
            policy: policy.into(),
            origin,
            refresh,
            keys: ArcSwapOption::empty(),
            last_success: Mutex::new(None),
            unknown_kid: tokio::sync::Mutex::new(None),
            min_refetch_interval,
            client,
            metrics,
            stop: CancellationToken::new(),
        })
    }

    /// Starts the background fetch/refresh loop (when there is a runtime: the
    /// offline `tollgate routes` compiles without one).
    pub fn start(self: &Arc<Self>) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(refresh_loop(Arc::downgrade(self), self.stop.clone()));
        }
    }

    /// Stops the background loop (the policy left the config).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    pub fn loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// Sets `tollgate_jwks_age_seconds` (called when metrics are scraped).
    pub fn update_age(&self) {
        let last = *self
            .last_success
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = last {
            self.metrics.age.set(t.elapsed().as_secs_f64());
        }
    }

    /// Fetches once and, on success, replaces the key set.
    pub async fn fetch(&self) -> Result<(), String> {
        let result = tokio::select! {
            r = tokio::time::timeout(FETCH_TIMEOUT, self.fetch_once()) => {
                r.unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")))
            }
            _ = self.stop.cancelled() => Err("stopped".into()),
        };
        match result {
            Ok(set) => {
                tracing::debug!(policy = %self.policy, keys = set.len(), "JWKS loaded");
                self.keys.store(Some(Arc::new(set)));
                *self
                    .last_success
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(std::time::Instant::now());
                self.metrics.success.inc();
                self.metrics.age.set(0.0);
                Ok(())
            }
            Err(e) => {
                self.metrics.failure.inc();
                tracing::warn!(policy = %self.policy, url = %self.origin, error = %e,
                    kept_previous_keys = self.loaded(), "JWKS fetch failed");
                Err(e)
            }
        }
    }

    async fn fetch_once(&self) -> Result<KeySet, String> {
        match &self.origin {
            Origin::Jwks(url) => KeySet::from_jwks_json(&self.get(url).await?),
            Origin::Discovery { issuer, document } => {
                let text = self.get(document).await?;
                let found = Discovered::parse(&text, issuer)
                    .map_err(|e| format!("discovery document {document}: {e}"))?;
                let body = self
                    .get(&found.jwks_uri)
                    .await
                    .map_err(|e| format!("jwks_uri {}: {e}", found.jwks_uri))?;
                let mut set = KeySet::from_jwks_json(&body)?;
                set.allowed = found.algorithms;
                Ok(set)
            }
        }
    }

    /// One GET of a JSON document, its body at most `MAX_JWKS_BYTES`.
    async fn get(&self, url: &Uri) -> Result<Bytes, String> {
        let client = self
            .client
            .as_ref()
            .ok_or("no TLS client (see the earlier error)")?;
        let req = Request::get(url.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| super::client_error(&e))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        Ok(Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes())
    }

    /// A token named `kid` and the current set lacks it. Refetches at most once
    /// per `min_refetch_interval`; requests arriving meanwhile wait for that one
    /// fetch. Returns the set to retry with, when it now has the `kid`.
    pub async fn refetch_for_unknown_kid(&self, kid: &str) -> Option<Arc<KeySet>> {
        let mut last = self.unknown_kid.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if let Some(set) = self.current().filter(|s| s.has_kid(kid)) {
            return Some(set);
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refetch_interval) {
            return None;
        }
        *last = Some(Instant::now());
        tracing::info!(policy = %self.policy, kid, "unknown key id: refetching the JWKS");
        let _ = self.fetch().await;
        self.current().filter(|s| s.has_kid(kid))
    }
}

/// What a policy takes from an OpenID Provider's discovery document.
#[derive(Debug, PartialEq)]
pub struct Discovered {
    pub jwks_uri: Uri,
    /// `id_token_signing_alg_values_supported`, the ones tollgate verifies
    /// with public keys; `None` when the document does not list them.
    pub algorithms: Option<Vec<Algorithm>>,
}

impl Discovered {
    /// Reads a discovery document, which must name exactly `issuer`
    /// (OpenID Connect Discovery 1.0, section 4.3).
    pub fn parse(text: &[u8], issuer: &str) -> Result<Discovered, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
        let doc = doc.as_object().ok_or("not a JSON object")?;
        match doc.get("issuer").and_then(|v| v.as_str()) {
            Some(i) if i == issuer => {}
            Some(i) => return Err(format!("it names the issuer `{i}`, not `{issuer}`")),
            None => return Err("it has no `issuer`".into()),
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or("it has no `jwks_uri`")?;
        let jwks_uri: Uri = jwks_uri
            .parse()
            .ok()
            .filter(|u: &Uri| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            })
            .ok_or_else(|| format!("its `jwks_uri` `{jwks_uri}` is not an http(s) URL"))?;
        let algorithms = match doc.get("id_token_signing_alg_values_supported") {
            None => None,
            Some(list) => {
                let list = list
                    .as_array()
                    .ok_or("`id_token_signing_alg_values_supported` is not a list")?;
                let algs: Vec<Algorithm> = list
                    .iter()
                    .filter_map(|a| a.as_str())
                    .filter(|a| ALGORITHMS.contains(a) && !a.starts_with("HS"))
                    .filter_map(|a| a.parse().ok())
                    .collect();
                if algs.is_empty() {
                    return Err(format!(
                        "it lists no signing algorithm tollgate verifies with public keys \
                         (RS*, PS*, ES256, ES384, EdDSA): {}",
                        serde_json::Value::from(list.clone())
                    ));
                }
                Some(algs)
            }
        };
        Ok(Discovered {
            jwks_uri,
            algorithms,
        })
    }
}

impl Drop for JwksSource {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn refresh_loop(source: Weak<JwksSource>, stop: CancellationToken) {
    let mut retry = RETRY_BASE;
    loop {
        let Some(src) = source.upgrade() else {
            return;
        };
        let wait = match src.fetch().await {
            Ok(()) => {
                retry = RETRY_BASE;
                jitter(src.refresh)
            }
            Err(_) => {
                let wait = retry;
                let cap = src.refresh.min(Duration::from_secs(60));
                retry = (retry * 2).min(cap);
                jitter(wait.min(cap))
            }
        };
        drop(src);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// ±10%, so many gateways started together do not fetch in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discovery_document_sits_under_the_issuer() {
        let at = |issuer: &str| match Origin::discovery(issuer).unwrap() {
            Origin::Discovery { document, .. } => document.to_string(),
            Origin::Jwks(_) => unreachable!(),
        };
        assert_eq!(
            at("https://login.example.com/realms/main"),
            "https://login.example.com/realms/main/.well-known/openid-configuration"
        );
        assert_eq!(
            at("https://login.example.com/"),
            "https://login.example.com/.well-known/openid-configuration"
        );
    }

    #[test]
    fn discovery_documents_are_checked() {
        let doc = |v: serde_json::Value| v.to_string().into_bytes();
        let issuer = "https://id.example.com";
        let ok = Discovered::parse(
            &doc(
                serde_json::json!({"issuer": issuer, "jwks_uri": "https://id.example.com/keys",
                "id_token_signing_alg_values_supported": ["RS256", "HS256", "none", "ES256"]}),
            ),
            issuer,
        )
        .unwrap();
        assert_eq!(ok.jwks_uri, "https://id.example.com/keys");
        assert_eq!(
            ok.algorithms,
            Some(vec![Algorithm::RS256, Algorithm::ES256])
        );
        let no_list =
            doc(serde_json::json!({"issuer": issuer, "jwks_uri": "https://id.example.com/k"}));
        assert_eq!(
            Discovered::parse(&no_list, issuer).unwrap().algorithms,
            None
        );

        for (bad, why) in [
            (b"<html>".to_vec(), "not JSON"),
            (doc(serde_json::json!(["x"])), "not a JSON object"),
            (
                doc(serde_json::json!({"jwks_uri": "https://a/k"})),
                "no `issuer`",
            ),
            (
                doc(
                    serde_json::json!({"issuer": "https://id.example.com/", "jwks_uri": "https://a/k"}),
                ),
                "names the issuer `https://id.example.com/`",
            ),
            (doc(serde_json::json!({"issuer": issuer})), "no `jwks_uri`"),
            (
                doc(serde_json::json!({"issuer": issuer, "jwks_uri": "file:///etc/passwd"})),
                "not an http(s) URL",
            ),
            (
                doc(
                    serde_json::json!({"issuer": issuer, "jwks_uri": "https://a/k",
                    "id_token_signing_alg_values_supported": ["HS256"]}),
                ),
                "no signing algorithm",
            ),
        ] {
            let e = Discovered::parse(&bad, issuer).unwrap_err();
            assert!(e.contains(why), "{e} (want {why})");
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(100));
            assert!(j >= Duration::from_secs(90) && j <= Duration::from_secs(110));
        }
    }
}
