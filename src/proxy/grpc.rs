//! What the pipeline needs to know about gRPC calls: whether a request is one
//! (its gateway errors are then gRPC-shaped, see `GatewayError::to_grpc_response`)
//! and the client's deadline (`grpc-timeout`), which caps the route timeout.

use std::time::Duration;

use http::{HeaderMap, header};

/// `application/grpc`, `application/grpc+proto`, `application/grpc-web...`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The client's `grpc-timeout` (1 to 8 digits and a unit: H M S m u n), or
/// `None` when absent or malformed (then only the route timeout applies).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn t(v: &'static str) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_static(v));
        timeout(&h)
    }

    #[test]
    fn every_unit_parses() {
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("5S"), Some(Duration::from_secs(5)));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("250u"), Some(Duration::from_micros(250)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn malformed_values_are_ignored() {
        for v in ["", "S", "100", "100x", "-1S", "123456789S", "1.5S", "m100"] {
            assert_eq!(t(v), None, "{v:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_grpc(&h));
    }
}
