//! The parsed form of string values in the file that the runtime uses as they
//! are: a rate-limit key, where a token is read from, an origin, a CIDR, a
//! content coding. They live here so that checking a file (`validate`) needs
//! nothing above `config`, and the policies take them from below.

use std::str::FromStr;

use http::HeaderName;
use http::header;
use ipnet::IpNet;

/// What a limit is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    ClientIp,
    Header(HeaderName),
    JwtClaim(String),
    ApiKey,
    /// One bucket shared by every request of the route.
    Route,
    /// The consumer the credential resolved to (`consumers`).
    Consumer,
    /// The resolved consumer's group: one bucket for the whole group.
    ConsumerGroup,
}

impl std::str::FromStr for KeyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "expected client_ip, header:<name>, jwt:<claim>, api_key, route, consumer or consumer_group, got `{s}`"
            )
        };
        Ok(match s.split_once(':') {
            None if s == "client_ip" => KeyKind::ClientIp,
            None if s == "api_key" => KeyKind::ApiKey,
            None if s == "route" => KeyKind::Route,
            None if s == "consumer" => KeyKind::Consumer,
            None if s == "consumer_group" => KeyKind::ConsumerGroup,
            Some(("header", name)) => KeyKind::Header(
                HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| format!("`{name}` is not a valid header name"))?,
            ),
            Some(("jwt", claim)) if !claim.trim().is_empty() => {
                KeyKind::JwtClaim(claim.trim().to_string())
            }
            _ => return Err(bad()),
        })
    }
}

pub const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// Where a token is read from (`token_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `header:Authorization`: the `Bearer` scheme.
    Bearer,
    /// `header:<name>`: the whole value (a leading `Bearer ` is tolerated).
    Header(HeaderName),
    Query(String),
    Cookie(String),
}

impl FromStr for TokenSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            format!("expected header:<name>, query:<name> or cookie:<name>, got `{s}`")
        })?;
        if name.is_empty() {
            return Err(format!("`{s}` needs a name after `{kind}:`"));
        }
        match kind {
            "header" => {
                let h = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a valid header name"))?;
                Ok(if h == header::AUTHORIZATION {
                    TokenSource::Bearer
                } else {
                    TokenSource::Header(h)
                })
            }
            "query" => Ok(TokenSource::Query(name.to_string())),
            "cookie" => {
                let ok = name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
                if ok {
                    Ok(TokenSource::Cookie(name.to_string()))
                } else {
                    Err(format!("`{name}` is not a valid cookie name"))
                }
            }
            other => Err(format!(
                "unknown token source `{other}`; expected header:<name>, query:<name> or cookie:<name>{}",
                crate::config::suggest::hint(other, ["header", "query", "cookie"])
            )),
        }
    }
}

/// Checks one `allow_origins` entry: `*` or `scheme://host[:port]`.
pub fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let uri: http::Uri = origin
        .parse()
        .map_err(|_| format!("expected an origin like https://app.example.com, got `{origin}`"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    if !scheme_ok || uri.host().is_none() || !bare || origin.contains('*') {
        return Err(format!(
            "expected an origin like https://app.example.com (scheme and host, no path, no wildcard), got `{origin}`"
        ));
    }
    Ok(())
}

/// A header name for `allow_headers` / `expose_headers`.
pub fn check_header_name(name: &str) -> Result<(), String> {
    HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| format!("`{name}` is not a valid header name"))
}

/// A CIDR, or a bare address meaning just that host.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("expected an IP address or CIDR like 10.0.0.0/8, got `{s}`"))
}

/// A content coding the gateway can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Brotli,
    Zstd,
}

impl Encoding {
    /// The names accepted in `compress:` (the Content-Encoding tokens).
    pub const NAMES: [&'static str; 3] = ["gzip", "br", "zstd"];

    pub fn from_name(name: &str) -> Option<Encoding> {
        match name {
            "gzip" => Some(Encoding::Gzip),
            "br" => Some(Encoding::Brotli),
            "zstd" => Some(Encoding::Zstd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(check_origin("*").is_ok());
        assert!(check_origin("https://app.example.com").is_ok());
        assert!(check_origin("http://localhost:3000").is_ok());
        assert!(check_origin("https://app.example.com/x").is_err());
        assert!(check_origin("app.example.com").is_err());
        assert!(check_origin("https://*.example.com").is_err());
    }
}

/// A cookie name is an RFC 6265 token: visible ASCII without separators.
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// A split's `sticky:` setting.
#[derive(Debug, PartialEq, Eq)]
pub enum StickyKey<'a> {
    None,
    Cookie(&'a str),
    Header(&'a str),
}

/// `cookie:<name>`, `header:<name>` or `none`.
pub fn parse_sticky(s: &str) -> Result<StickyKey<'_>, String> {
    let bad = || format!("expected cookie:<name>, header:<name> or none, got `{s}`");
    match s.split_once(':') {
        None if s == "none" => Ok(StickyKey::None),
        Some(("cookie", name)) if is_cookie_name(name) => Ok(StickyKey::Cookie(name)),
        Some(("header", name)) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
            Ok(StickyKey::Header(name))
        }
        _ => Err(bad()),
    }
}

/// The `host:port` of a `dns:` target: a DNS name (not an IP address) and a
/// port.
pub fn parse_dns_target(s: &str) -> Result<(String, u16), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "expected host:port like orders.svc.cluster.local:8080 (the port is needed), got `{s}`"
        ));
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("expected a port from 1 to 65535 after the colon, got `{s}`"))?;
    check_dns_name(host)?;
    Ok((host.to_ascii_lowercase(), port))
}

/// A DNS name to look up: dot-separated labels of letters, digits, `-` and `_`
/// (SRV names start with `_service._proto`), at most 253 characters. An IP
/// address is refused: it needs no lookup (use `url:`).
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.parse::<std::net::IpAddr>().is_ok() || bare.starts_with('[') {
        return Err(format!(
            "`{name}` is an IP address, which needs no lookup: use url: http://{name}:<port>"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!(
            "expected a DNS name (letters, digits, - and _ in dot-separated labels), got `{name}`"
        ));
    }
    Ok(())
}

/// One entry of `resolvers:`: `ip` (port 53) or `ip:port` (`[v6]:port`).
pub fn parse_resolver(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    s.parse().map_err(|_| {
        format!("expected a name server address like 10.0.0.2 or 10.0.0.2:53, got `{s}`")
    })
}
