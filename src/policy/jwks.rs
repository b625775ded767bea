//! Keys of a `jwks_url` policy: fetched with the gateway's own HTTP client
//! (rustls, webpki roots), refreshed in the background with jitter, kept across
//! config reloads (`Carryover`), and refetched once — coalesced and at most every
//! 30 s — when a token names a `kid` the set does not have.
//!
//! A failed fetch never drops keys that loaded before. While no key set has ever
//! loaded, `current()` is `None`: requests get 503 `auth_unavailable` and
//! `/readyz` is 503.

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

use super::jwt::KeySet;
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

pub struct JwksSource {
    pub policy: Arc<str>,
    pub url: Uri,
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
    pub fn new(policy: &str, url: Uri, refresh: Duration, metrics: JwksMetrics) -> Arc<JwksSource> {
        Self::with_refetch_interval(policy, url, refresh, metrics, UNKNOWN_KID_REFETCH_INTERVAL)
    }

    pub fn with_refetch_interval(
        policy: &str,
        url: Uri,
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
            url,
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
                tracing::warn!(policy = %self.policy, url = %self.url, error = %e,
                    kept_previous_keys = self.loaded(), "JWKS fetch failed");
                Err(e)
            }
        }
    }

    async fn fetch_once(&self) -> Result<KeySet, String> {
        let client = self
            .client
            .as_ref()
            .ok_or("no TLS client (see the earlier error)")?;
        let req = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = client.request(req).await.map_err(|e| {
            let mut msg = e.to_string();
            if let Some(src) = std::error::Error::source(&e) {
                msg = format!("{msg}: {src}");
            }
            msg
        })?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        KeySet::from_jwks_json(&body)
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
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(100));
            assert!(j >= Duration::from_secs(90) && j <= Duration::from_secs(110));
        }
    }
}
