//! The one host a request is for (RFC 9112 §3.2, RFC 9113 §8.3.1): exactly one
//! valid `Host`, or the target's authority, never two that disagree. The router,
//! the policies and the upstream all see the host this returns.

use http::header::{self, HeaderValue};
use http::{Request, Version};

/// Why a request's host is refused: answered 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Missing,
    Repeated,
    Invalid,
    /// HTTP/2: `:authority` and `Host` name different hosts.
    Disagree,
}

impl HostError {
    pub fn message(self) -> &'static str {
        match self {
            HostError::Missing => "the request has no Host header",
            HostError::Repeated => "the request has more than one Host header",
            HostError::Invalid => "the Host header is not a valid host[:port]",
            HostError::Disagree => "the :authority and Host of the request disagree",
        }
    }
}

/// Checks the request's host and returns it. An HTTP/1 absolute-form target
/// wins over the `Host` header, which is then replaced by the target's
/// authority (RFC 9112 §3.2.2); in HTTP/2 `:authority` and `Host` must agree.
pub fn request_host<B>(req: &mut Request<B>) -> Result<Option<HeaderValue>, HostError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    if let Some(h) = header
        && !is_valid(h.as_bytes())
    {
        return Err(HostError::Invalid);
    }
    let authority = req.uri().authority().map(|a| a.as_str());
    if let Some(a) = authority
        && !is_valid(a.as_bytes())
    {
        return Err(HostError::Invalid);
    }
    match req.version() {
        Version::HTTP_2 | Version::HTTP_3 => match (authority, header) {
            (Some(a), Some(h)) if !a.as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
                Err(HostError::Disagree)
            }
            (Some(a), _) => Ok(HeaderValue::from_str(a).ok()),
            (None, Some(h)) => Ok(Some(h.clone())),
            (None, None) => Err(HostError::Missing),
        },
        version => {
            if header.is_none() && version == Version::HTTP_11 {
                return Err(HostError::Missing);
            }
            match authority {
                Some(a) => {
                    let value = HeaderValue::from_str(a).map_err(|_| HostError::Invalid)?;
                    if header.is_some_and(|h| h != value) {
                        req.headers_mut().insert(header::HOST, value.clone());
                    }
                    Ok(Some(value))
                }
                None => Ok(header.cloned()),
            }
        }
    }
}

/// `host[:port]` where host is a DNS name (letters, digits, `-`, `.`, `_`, `~`),
/// an IPv4 address or a bracketed IPv6 literal, and port is digits up to 65535.
/// No user info, no path, no spaces, never empty.
pub fn is_valid(v: &[u8]) -> bool {
    let (host_ok, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        let ok = literal.len() >= 2
            && literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        match &rest[end + 1..] {
            [] => (ok, &[][..]),
            [b':', port @ ..] => (ok, port),
            _ => return false,
        }
    } else {
        let (host, port) = match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i + 1..]),
            None => (v, &[][..]),
        };
        let ok = !host.is_empty()
            && host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        (ok, port)
    };
    host_ok
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && (port.is_empty() || std::str::from_utf8(port).is_ok_and(|p| p.parse::<u16>().is_ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_syntax() {
        let good = [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com.",
            "127.0.0.1",
            "127.0.0.1:65535",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1]:80",
            "my_service",
            "example.com:",
        ];
        let bad = [
            "",
            "a b",
            "a/b",
            "a\\b",
            "user@example.com",
            "example.com:99999",
            "example.com:80a",
            "example.com:80:80",
            "[::1",
            "[::1]x",
            "[zz::1]",
            "::1",
            "a]b",
            ":80",
            "a,b",
            "a;b",
        ];
        for h in good {
            assert!(is_valid(h.as_bytes()), "{h:?} should be valid");
        }
        for h in bad {
            assert!(!is_valid(h.as_bytes()), "{h:?} should be invalid");
        }
    }

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("request")
    }

    /// version, target, Host headers, the host expected (or the refusal).
    type Case<'a> = (
        Version,
        &'a str,
        &'a [&'a str],
        Result<Option<&'a str>, HostError>,
    );

    #[test]
    fn request_host_rules() {
        use HostError::*;
        let h11 = Version::HTTP_11;
        let h2 = Version::HTTP_2;
        let cases: &[Case] = &[
            (h11, "/", &["a.example"], Ok(Some("a.example"))),
            (h11, "/", &[], Err(Missing)),
            (Version::HTTP_10, "/", &[], Ok(None)),
            (h11, "/", &["a.example", "b.example"], Err(Repeated)),
            (h11, "/", &["a.example", "a.example"], Err(Repeated)),
            (h11, "/", &["a b"], Err(Invalid)),
            (h11, "/", &["a/b"], Err(Invalid)),
            (
                h11,
                "http://a.example/x",
                &["b.example"],
                Ok(Some("a.example")),
            ),
            (h11, "http://a.example/x", &[], Err(Missing)),
            (h11, "http://u@a.example/x", &["a.example"], Err(Invalid)),
            (h2, "http://a.example/x", &[], Ok(Some("a.example"))),
            (
                h2,
                "http://a.example/x",
                &["A.example"],
                Ok(Some("a.example")),
            ),
            (h2, "http://a.example/x", &["b.example"], Err(Disagree)),
            (h2, "/x", &["b.example"], Ok(Some("b.example"))),
            (h2, "/x", &[], Err(Missing)),
        ];
        for (version, uri, hosts, want) in cases {
            let mut r = req(*version, uri, hosts);
            let got = request_host(&mut r);
            let got = got.map(|h| h.map(|v| v.to_str().unwrap_or("?").to_owned()));
            let want = want.map(|h| h.map(str::to_owned));
            assert_eq!(got, want, "{version:?} {uri} {hosts:?}");
        }
        // Absolute-form: the disagreeing Host header is replaced by the authority.
        let mut r = req(h11, "http://a.example/x", &["b.example"]);
        request_host(&mut r).expect("valid");
        assert_eq!(r.headers()[header::HOST], "a.example");
    }
}
