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

use http::Response;
use http::request::Parts;

use crate::error::GatewayError;
use crate::proxy::Exchange;
use crate::proxy::body::ResponseBody;

/// The compiled policies of one route. Empty for a public route with no limits:
/// checking it then costs one branch.
#[derive(Default)]
pub struct RoutePolicies {}

/// What the policies decided about a request they did not refuse.
pub enum Decision {
    /// Go on to the route's action.
    Continue,
    /// Answer with this response without contacting any upstream.
    Respond(Response<ResponseBody>),
}

impl RoutePolicies {
    pub fn is_empty(&self) -> bool {
        true
    }

    /// Runs every policy of the route in phase order.
    pub async fn check(
        &self,
        _parts: &mut Parts,
        _ex: &mut Exchange,
    ) -> Result<Decision, GatewayError> {
        Ok(Decision::Continue)
    }
}
