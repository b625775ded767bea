//! The one error type of the request path, and the one place it becomes a response.
//!
//! Every failure a client can see is a `GatewayError`; `status`, `code` and `fault`
//! are decided here and nowhere else, so the JSON bodies listed in
//! docs/reference/errors.md stay consistent.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

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
    #[error(
        "the {period} quota of consumer group `{group}` is used up; it renews in {retry_after_secs} s"
    )]
    QuotaExceeded {
        group: std::sync::Arc<str>,
        period: &'static str,
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
    #[error("{}", .0.message())]
    Unauthorized(AuthFailure),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the keys of JWT policy `{policy}` are not available yet")]
    AuthUnavailable { policy: String },
    #[error("{}", .0.message())]
    Idempotency(IdempotencyFailure),
    /// Refused by the HTTP/1 parser before the request reached the proxy.
    #[error("{}", .0.message())]
    Unparsable(ParseRefusal),
}

/// Why the HTTP/1 parser (hyper) refused a request head. hyper writes its own
/// bare answer; the connection's stream puts the gateway's JSON one in its
/// place (`conn::WatchedIo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseRefusal {
    /// 400: not a valid HTTP/1.1 request head (conflicting `Content-Length`
    /// values, an obs-folded or invalid header, a bad request line).
    Malformed,
    /// 414: a request target over 65,534 bytes.
    UriTooLong,
    /// 431: a head that does not fit in the connection's read buffer.
    HeadTooLarge,
}

impl ParseRefusal {
    /// The refusal hyper meant by the status of its own answer.
    pub fn from_status(status: u16) -> Self {
        match status {
            414 => ParseRefusal::UriTooLong,
            431 => ParseRefusal::HeadTooLarge,
            _ => ParseRefusal::Malformed,
        }
    }

    fn message(self) -> &'static str {
        match self {
            ParseRefusal::Malformed => "the request is not valid HTTP/1.1",
            ParseRefusal::UriTooLong => "the request target is longer than 65534 bytes",
            ParseRefusal::HeadTooLarge => {
                "the request head is larger than the connection's read buffer"
            }
        }
    }
}

/// Why a request on a route with an idempotency policy was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyFailure {
    /// `required: true` and the request sent no `Idempotency-Key`.
    Missing,
    /// The key is empty, too long, not printable ASCII, or sent twice.
    Invalid,
    /// A request with this key is still in flight.
    InUse,
    /// The key was used before for a different request.
    Mismatch,
    /// The store is unreachable and `on_store_error: reject`.
    Unavailable,
}

impl IdempotencyFailure {
    fn message(self) -> &'static str {
        match self {
            IdempotencyFailure::Missing => "this route requires an Idempotency-Key header",
            IdempotencyFailure::Invalid => {
                "the Idempotency-Key must be 1 to 255 printable ASCII characters, sent once"
            }
            IdempotencyFailure::InUse => {
                "a request with this Idempotency-Key is still in progress; retry later"
            }
            IdempotencyFailure::Mismatch => {
                "this Idempotency-Key was already used for a different request"
            }
            IdempotencyFailure::Unavailable => "the idempotency store is unreachable",
        }
    }
}

/// Why a request was refused with 401 (the `reason` label of
/// `tollgate_auth_failures_total`), ordered from least to most informative: a
/// route with several auth methods reports the highest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuthFailure {
    /// No credential was presented.
    Missing,
    /// A credential was presented and is not valid (bad signature, wrong issuer
    /// or audience, unknown key, malformed, not yet valid).
    Invalid,
    /// A token whose signature is good but whose `exp` has passed.
    Expired,
}

impl AuthFailure {
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
        }
    }

    fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "credentials are required",
            AuthFailure::Invalid => "the credentials are not valid",
            AuthFailure::Expired => "the token has expired",
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::RateLimited { .. } | GatewayError::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::Overloaded
            | GatewayError::RateLimitUnavailable
            | GatewayError::UpstreamOverloaded { .. }
            | GatewayError::NoHealthyUpstream { .. }
            | GatewayError::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::AuthUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Idempotency(f) => match f {
                IdempotencyFailure::Missing | IdempotencyFailure::Invalid => {
                    StatusCode::BAD_REQUEST
                }
                IdempotencyFailure::InUse => StatusCode::CONFLICT,
                IdempotencyFailure::Mismatch => StatusCode::UNPROCESSABLE_ENTITY,
                IdempotencyFailure::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            },
            GatewayError::Unparsable(r) => match r {
                ParseRefusal::Malformed => StatusCode::BAD_REQUEST,
                ParseRefusal::UriTooLong => StatusCode::URI_TOO_LONG,
                ParseRefusal::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            },
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
            GatewayError::QuotaExceeded { .. } => "quota_exceeded",
            GatewayError::RateLimitUnavailable => "rate_limit_unavailable",
            GatewayError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            GatewayError::CircuitOpen { .. } => "circuit_open",
            GatewayError::UpstreamUnavailable { .. } => "upstream_unavailable",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::Unauthorized(_) => "unauthorized",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::AuthUnavailable { .. } => "auth_unavailable",
            GatewayError::Idempotency(f) => match f {
                IdempotencyFailure::Missing => "idempotency_key_missing",
                IdempotencyFailure::Invalid => "idempotency_key_invalid",
                IdempotencyFailure::InUse => "idempotency_key_in_use",
                IdempotencyFailure::Mismatch => "idempotency_key_mismatch",
                IdempotencyFailure::Unavailable => "idempotency_store_unavailable",
            },
            GatewayError::Unparsable(r) => match r {
                ParseRefusal::Malformed => "bad_request",
                ParseRefusal::UriTooLong => "uri_too_long",
                ParseRefusal::HeadTooLarge => "headers_too_large",
            },
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            GatewayError::BadRequest(_)
            | GatewayError::NoRoute
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::HeadersTooLarge { .. }
            | GatewayError::BodyTimeout
            | GatewayError::RateLimited { .. }
            | GatewayError::QuotaExceeded { .. }
            | GatewayError::Unauthorized(_)
            | GatewayError::Forbidden(_)
            | GatewayError::Unparsable(_) => Fault::Client,
            GatewayError::Idempotency(IdempotencyFailure::Unavailable) => Fault::Gateway,
            GatewayError::Idempotency(_) => Fault::Client,
            GatewayError::Overloaded
            | GatewayError::UpstreamOverloaded { .. }
            | GatewayError::RateLimitUnavailable
            | GatewayError::AuthUnavailable { .. } => Fault::Gateway,
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
                | GatewayError::Unparsable(_)
        )
    }

    /// The gRPC status code a gRPC client gets for this error (see
    /// `docs/reference/errors.md` for the table and why).
    pub fn grpc_code(&self) -> u8 {
        const INVALID_ARGUMENT: u8 = 3;
        const DEADLINE_EXCEEDED: u8 = 4;
        const FAILED_PRECONDITION: u8 = 9;
        const ABORTED: u8 = 10;
        const PERMISSION_DENIED: u8 = 7;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const UNIMPLEMENTED: u8 = 12;
        const UNAVAILABLE: u8 = 14;
        const UNAUTHENTICATED: u8 = 16;
        match self {
            GatewayError::BadRequest(_) => INVALID_ARGUMENT,
            GatewayError::NoRoute => UNIMPLEMENTED,
            GatewayError::PayloadTooLarge { .. }
            | GatewayError::HeadersTooLarge { .. }
            | GatewayError::RateLimited { .. }
            | GatewayError::QuotaExceeded { .. } => RESOURCE_EXHAUSTED,
            GatewayError::BodyTimeout | GatewayError::UpstreamTimeout { .. } => DEADLINE_EXCEEDED,
            GatewayError::Overloaded
            | GatewayError::RateLimitUnavailable
            | GatewayError::UpstreamOverloaded { .. }
            | GatewayError::NoHealthyUpstream { .. }
            | GatewayError::CircuitOpen { .. }
            | GatewayError::UpstreamUnavailable { .. }
            | GatewayError::AuthUnavailable { .. } => UNAVAILABLE,
            GatewayError::Unauthorized(_) => UNAUTHENTICATED,
            GatewayError::Forbidden(_) => PERMISSION_DENIED,
            GatewayError::Idempotency(f) => match f {
                IdempotencyFailure::Missing | IdempotencyFailure::Invalid => INVALID_ARGUMENT,
                IdempotencyFailure::InUse => ABORTED,
                IdempotencyFailure::Mismatch => FAILED_PRECONDITION,
                IdempotencyFailure::Unavailable => UNAVAILABLE,
            },
            GatewayError::Unparsable(ParseRefusal::Malformed) => INVALID_ARGUMENT,
            GatewayError::Unparsable(_) => RESOURCE_EXHAUSTED,
        }
    }

    /// The answer to a gRPC client: a trailers-only response (HTTP 200, the
    /// status in `grpc-status`/`grpc-message` headers, no body), with the same
    /// extra headers as `to_response` (Retry-After, WWW-Authenticate).
    pub fn to_grpc_response(&self) -> Response<Bytes> {
        let mut resp = Response::new(Bytes::new());
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_code())),
        );
        if let Ok(message) = HeaderValue::try_from(grpc_percent_encode(&self.to_string())) {
            headers.insert("grpc-message", message);
        }
        self.extra_headers(headers);
        resp
    }

    /// The JSON answer `{"error","message","request_id"}` (docs/reference/errors.md).
    pub fn to_response(&self, request_id: &str) -> Response<Bytes> {
        let body = ErrorBody {
            error: self.code(),
            message: &self.to_string(),
            request_id,
        };
        // Serializing three strings cannot fail; fall back to an empty body anyway
        // rather than panic on the request path.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = Response::new(Bytes::from(json));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.extra_headers(headers);
        resp
    }

    /// Headers every shape of this error's answer carries.
    fn extra_headers(&self, headers: &mut http::HeaderMap) {
        if let GatewayError::RateLimited {
            retry_after_secs, ..
        }
        | GatewayError::QuotaExceeded {
            retry_after_secs, ..
        } = self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        // The first request is still running: try again in a second.
        if let GatewayError::Idempotency(IdempotencyFailure::InUse) = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // RFC 6750 §3: no error attribute when no credential was sent.
        if let GatewayError::Unauthorized(reason) = self {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(match reason {
                    AuthFailure::Missing => "Bearer",
                    AuthFailure::Invalid | AuthFailure::Expired => "Bearer error=\"invalid_token\"",
                }),
            );
        }
    }
}

/// `grpc-message` encoding (gRPC over HTTP/2 spec): bytes outside printable
/// ASCII, and `%` itself, become `%XX`.
fn grpc_percent_encode(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("a b"), "a b");
        assert_eq!(grpc_percent_encode("100%"), "100%25");
        assert_eq!(grpc_percent_encode("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn grpc_answer_is_trailers_only_with_extra_headers() {
        let e = GatewayError::RateLimited {
            policy: "p".into(),
            retry_after_secs: 3,
        };
        let resp = e.to_grpc_response();
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], "rate limit `p` exceeded; retry in 3 s");
        assert_eq!(h["retry-after"], "3");
        assert!(resp.body().is_empty());
    }

    #[test]
    fn grpc_codes_follow_the_http_status() {
        let cases = [
            (GatewayError::NoRoute, 12),
            (GatewayError::Unauthorized(AuthFailure::Missing), 16),
            (GatewayError::Forbidden("no"), 7),
            (
                GatewayError::UpstreamUnavailable {
                    upstream: "u".into(),
                },
                14,
            ),
            (GatewayError::Overloaded, 14),
            (
                GatewayError::UpstreamTimeout {
                    upstream: "u".into(),
                    timeout_ms: 1,
                },
                4,
            ),
            (GatewayError::BadRequest("x"), 3),
        ];
        for (e, code) in cases {
            assert_eq!(e.grpc_code(), code, "{e:?}");
        }
    }
}
