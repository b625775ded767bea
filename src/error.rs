//! The one error type of the request path, and the one place it becomes a response.
//!
//! Every failure a client can see is a `GatewayError`; `status`, `code` and `fault`
//! are decided here and nowhere else, so the JSON bodies of SPEC §4 stay consistent.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::proxy::body::ResponseBody;

/// Whose fault a failed request was: used by logs and metrics to tell a client's
/// mistake from a sick upstream or a gateway limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Gateway,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("no route matches this request")]
    NoRoute,
    #[error("the request body is larger than the {limit}-byte limit")]
    PayloadTooLarge { limit: u64 },
    #[error("the request headers are larger than the {limit}-byte limit")]
    HeadersTooLarge { limit: u64 },
    #[error("the request body was not received in time")]
    BodyTimeout,
    #[error("the gateway is at its concurrent request limit")]
    Overloaded,
    #[error("rate limit `{policy}` exceeded; retry in {retry_after_secs} s")]
    RateLimited {
        policy: std::sync::Arc<str>,
        retry_after_secs: u64,
    },
    #[error("the rate-limit store is unreachable")]
    RateLimitUnavailable,
    #[error("upstream `{upstream}` is at its concurrent request limit")]
    UpstreamOverloaded { upstream: String },
    #[error("upstream `{upstream}` has no healthy target")]
    NoHealthyUpstream { upstream: String },
    #[error("the circuit breaker of every target of upstream `{upstream}` is open")]
    CircuitOpen { upstream: String },
    #[error("could not reach upstream `{upstream}`")]
    UpstreamUnavailable { upstream: String },
    #[error("upstream `{upstream}` did not answer within {timeout_ms} ms")]
    UpstreamTimeout { upstream: String, timeout_ms: u64 },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Overloaded
            | GatewayError::RateLimitUnavailable
            | GatewayError::UpstreamOverloaded { .. }
            | GatewayError::NoHealthyUpstream { .. }
            | GatewayError::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The machine-readable `error` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::NoRoute => "no_route",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::HeadersTooLarge { .. } => "headers_too_large",
            GatewayError::BodyTimeout => "request_timeout",
            GatewayError::Overloaded | GatewayError::UpstreamOverloaded { .. } => "overloaded",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::RateLimitUnavailable => "rate_limit_unavailable",
            GatewayError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            GatewayError::CircuitOpen { .. } => "circuit_open",
            GatewayError::UpstreamUnavailable { .. } => "upstream_unavailable",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            GatewayError::BadRequest(_)
            | GatewayError::NoRoute
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::HeadersTooLarge { .. }
            | GatewayError::BodyTimeout => Fault::Client,
            GatewayError::RateLimited { .. } => Fault::Client,
            GatewayError::Overloaded
            | GatewayError::UpstreamOverloaded { .. }
            | GatewayError::RateLimitUnavailable => Fault::Gateway,
            GatewayError::NoHealthyUpstream { .. }
            | GatewayError::CircuitOpen { .. }
            | GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamTimeout { .. } => Fault::Upstream,
        }
    }

    /// Whether the client connection must not be reused after this answer: a
    /// malformed request leaves the byte stream in an unknown state, and an
    /// unread oversized body would otherwise have to be drained.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BadRequest(_)
                | GatewayError::PayloadTooLarge { .. }
                | GatewayError::BodyTimeout
        )
    }

    /// The SPEC §4 response: `{"error","message","request_id"}` as JSON.
    pub fn to_response(&self, request_id: &str) -> Response<ResponseBody> {
        let body = ErrorBody {
            error: self.code(),
            message: &self.to_string(),
            request_id,
        };
        // Serializing three strings cannot fail; fall back to an empty body anyway
        // rather than panic on the request path.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = Response::new(ResponseBody::full(Bytes::from(json)));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let GatewayError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
    request_id: &'a str,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Gateway => "gateway",
        })
    }
}
