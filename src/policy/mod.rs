//! Client policies of a route, checked after routing and before any upstream is
//! contacted, in this order: IP rules, CORS preflight, authentication, required
//! claims, rate limits (SPEC §2 route keys `ip_allow`/`ip_deny`, `cors`, `auth`,
//! `require_claims`, `rate_limit`).
//!
//! Each policy is plain data compiled per route (`RoutePolicies`); a check reads
//! the request head and the `Exchange`, may add to the `Exchange` (the consumer,
//! the claims, response headers such as `RateLimit-*`), may edit the headers that
//! go upstream, and either lets the request continue, answers it directly (a CORS
//! preflight), or refuses it with a `GatewayError`.

pub mod rate_limit;

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, HeaderValue, Response};

use crate::error::GatewayError;
use crate::proxy::Exchange;
use crate::proxy::body::ResponseBody;
use rate_limit::{KeySource, Outcome, RateLimitPolicy, Verdict};

/// The compiled policies of one route. Empty for a public route with no limits:
/// checking it then costs one branch.
#[derive(Default)]
pub struct RoutePolicies {
    /// Every limit must admit the request.
    pub rate_limits: Vec<RouteLimit>,
}

/// A rate-limit policy as applied on one route.
pub struct RouteLimit {
    pub policy: Arc<RateLimitPolicy>,
    /// `tollgate_rate_limited_total{route, policy}`.
    pub refused: prometheus::IntCounter,
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// What the policies decided about a request they did not refuse.
pub enum Decision {
    /// Go on to the route's action.
    Continue,
    /// Answer with this response without contacting any upstream.
    Respond(Response<ResponseBody>),
}

impl RoutePolicies {
    pub fn is_empty(&self) -> bool {
        self.rate_limits.is_empty()
    }

    /// Runs every policy of the route in phase order.
    pub async fn check(
        &self,
        parts: &mut Parts,
        ex: &mut Exchange,
    ) -> Result<Decision, GatewayError> {
        // Rate limits come last: a request refused by auth must not spend tokens.
        if !self.rate_limits.is_empty() {
            self.check_rate_limits(parts, ex).await?;
        }
        Ok(Decision::Continue)
    }

    /// Every limit must admit the request. The `RateLimit-*` headers describe
    /// the tightest limit (the fewest remaining tokens), or the one that refused.
    async fn check_rate_limits(
        &self,
        parts: &Parts,
        ex: &mut Exchange,
    ) -> Result<(), GatewayError> {
        let src = KeySource {
            client_ip: ex.client_ip,
            parts,
            consumer: ex.consumer.as_deref(),
            claims: ex.claims.as_deref(),
        };
        let mut tightest: Option<Verdict> = None;
        for limit in &self.rate_limits {
            let verdict = match limit.policy.check(&src).await {
                Ok(Outcome::Decided(v)) => v,
                Ok(Outcome::AllowedWithoutStore) => continue,
                Err(_) => return Err(GatewayError::RateLimitUnavailable),
            };
            if !verdict.allowed {
                limit.refused.inc();
                set_rate_limit_headers(ex, &verdict);
                return Err(GatewayError::RateLimited {
                    policy: limit.policy.name.clone(),
                    retry_after_secs: verdict.retry_after_secs,
                });
            }
            if tightest.is_none_or(|t| verdict.remaining < t.remaining) {
                tightest = Some(verdict);
            }
        }
        if let Some(v) = tightest {
            set_rate_limit_headers(ex, &v);
        }
        Ok(())
    }
}

fn set_rate_limit_headers(ex: &mut Exchange, v: &Verdict) {
    let h = &mut ex.response_headers;
    h.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(v.limit));
    h.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(v.remaining));
    h.insert(RATELIMIT_RESET.clone(), HeaderValue::from(v.reset_secs));
}
