//! The runtime form of one config version: everything a request needs, compiled
//! once (router tables, upstreams with their pools and balancers, header edits,
//! metric handles) and reached through a single `ArcSwap` load per request.

pub mod build;
pub mod carryover;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use ipnet::IpNet;

use crate::compression::Compression;
use crate::idempotency::{self, RouteIdempotency};
use crate::metrics::RouteMetrics;
use crate::policy::RoutePolicies;
use crate::policy::jwks::JwksSource;
use crate::policy::quota::QuotaPolicy;
use crate::policy::rate_limit::RateLimitPolicy;
use crate::router::Router;
use crate::steering::{MirrorPolicy, Redirect, Split};
use crate::upstream::Upstream;

pub struct Snapshot {
    pub version: String,
    pub loaded_at: SystemTime,
    pub router: Router,
    /// In file order; `router.find` returns indexes into it.
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    /// Every `rate_limits` policy and consumer group limit (routes and
    /// groups hold their own references).
    pub rate_limits: Vec<Arc<RateLimitPolicy>>,
    /// Every consumer group's quota (groups hold their own references).
    pub quotas: Vec<Arc<QuotaPolicy>>,
    /// Every `caches` entry (routes hold their own references).
    pub caches: Vec<Arc<crate::cache::store::Cache>>,
    /// Every `idempotency` policy (routes hold their own references).
    pub idempotency: Vec<Arc<idempotency::Policy>>,
    /// Metric handles for requests no route matched (`route="_none"`).
    pub unmatched: RouteMetrics,
    pub limits: RequestLimits,
    pub trusted_proxies: Vec<IpNet>,
    /// `server.path_normalization`.
    pub path_rules: crate::config::schema::PathNormalization,
    /// The config this version was compiled from: `GET /config` shows it and a
    /// reload diffs against it. Never read on the request path.
    pub source: Arc<crate::config::LoadedConfig>,
    /// The JWKS sources of the `jwks_url` policies: `/readyz` waits for each to
    /// load once.
    pub jwks: Vec<Arc<JwksSource>>,
    /// OTLP span export (`tracing.otlp_endpoint`), when configured.
    #[cfg(feature = "otel")]
    pub spans: Option<Arc<crate::otel::SpanExporter>>,
    /// The listeners with `redirect_to_https` (usually none).
    pub https_redirects: Vec<Arc<str>>,
    /// The listeners that read a PROXY protocol header, with its settings.
    pub proxy_protocol: Vec<(Arc<str>, Arc<crate::proxy_protocol::ProxyProtocol>)>,
}

/// Per-request limits from `server.limits`.
pub struct RequestLimits {
    pub max_header_bytes: u64,
    pub max_body_bytes: u64,
    pub body_read_timeout: Duration,
    /// 0 = unlimited.
    pub max_concurrent_requests: usize,
    /// `idle_timeout`: also closes a WebSocket tunnel silent in both directions.
    pub idle_timeout: Duration,
}

/// How much of a request body a route reads, and how patiently: the route's
/// `max_body_bytes` / `body_read_timeout`, else `server.limits`'.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: u64,
    pub read_timeout: Duration,
}

pub struct Route {
    pub name: Arc<str>,
    pub action: Action,
    pub rewrite: Rewrite,
    pub timeout: Option<Duration>,
    pub body_limits: BodyLimits,
    /// `mirror:`: copies of some requests to a shadow upstream.
    pub mirror: Option<MirrorPolicy>,
    /// `websocket:`: the limits of the route's tunnels.
    pub websocket: WebSocketLimits,
    pub policies: RoutePolicies,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// `compress:`: the encodings offered for this route's responses.
    pub compress: Option<Compression>,
    /// `idempotency:`: the route's key policy, when it has one.
    pub idempotency: Option<Arc<RouteIdempotency>>,
    /// `cache:`: the route's response cache, when it has one.
    pub cache: Option<crate::cache::route::RouteCache>,
    pub metrics: RouteMetrics,
}

/// What a route's WebSocket tunnels may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebSocketLimits {
    /// The largest message either side may send (`None`: no limit).
    pub max_message: Option<u64>,
    /// How long a tunnel may carry nothing (`None`: `server.limits.idle_timeout`).
    pub idle: Option<Duration>,
}

pub enum Action {
    /// Forward to `snapshot.upstreams[upstream]`.
    Proxy { upstream: usize },
    /// Forward to one side of a weighted split.
    Split(Box<Split>),
    /// Answer with a redirect built from the request.
    Redirect(Redirect),
    /// Answer directly, without an upstream.
    Respond {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

#[derive(Default)]
pub struct Rewrite {
    /// Replace this leading path (on a segment boundary) with `to`; `strip_prefix`
    /// is a replacement with an empty `to`.
    pub prefix: Option<(String, String)>,
    /// The upstream Host header; the client's when absent.
    pub host: Option<HeaderValue>,
    /// `path_regex`: every match of the pattern replaced by the template.
    pub regex: Option<(regex::Regex, String)>,
}

impl Rewrite {
    /// The upstream path for `path`, or `None` when it is unchanged.
    pub fn path(&self, path: &str) -> Option<String> {
        if let Some((re, replace)) = &self.regex {
            let out = match re.replace_all(path, replace.as_str()) {
                std::borrow::Cow::Borrowed(_) => return None,
                std::borrow::Cow::Owned(out) => out,
            };
            return Some(if out.starts_with('/') {
                out
            } else {
                format!("/{out}")
            });
        }
        let (from, to) = self.prefix.as_ref()?;
        let rest = strip_segments(path, from)?;
        let on_boundary = from.ends_with('/') || rest.is_empty() || rest.starts_with('/');
        if !on_boundary {
            return None;
        }
        let mut out = String::with_capacity(to.len() + rest.len() + 1);
        out.push_str(to);
        if !rest.is_empty() && !out.ends_with('/') && !rest.starts_with('/') {
            out.push('/');
        }
        if out.ends_with('/') && rest.starts_with('/') {
            out.push_str(&rest[1..]);
        } else {
            out.push_str(rest);
        }
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        Some(out)
    }
}

/// `path` without its leading `prefix`. Path parameters (`;...` in a segment)
/// are not part of a segment's name, as the router sees it: `/api;v=1/x` starts
/// with `/api`, and the parameters of a stripped segment go with it.
fn strip_segments<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if !path.contains(';') {
        return path.strip_prefix(prefix);
    }
    let (p, want) = (path.as_bytes(), prefix.as_bytes());
    let skip_params = |mut i: usize| {
        while i < p.len() && p[i] != b'/' {
            i += 1;
        }
        i
    };
    let (mut i, mut j) = (0, 0);
    while j < want.len() {
        match p.get(i) {
            Some(&b) if b == want[j] => {
                i += 1;
                j += 1;
            }
            Some(b';') => i = skip_params(i),
            _ => return None,
        }
    }
    if p.get(i) == Some(&b';') {
        i = skip_params(i);
    }
    path.get(i..)
}

/// `set` replaces any existing value; `remove` deletes every value.
#[derive(Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rewrite;

    fn rw(from: &str, to: &str) -> Rewrite {
        Rewrite {
            prefix: Some((from.into(), to.into())),
            host: None,
            regex: None,
        }
    }

    #[test]
    fn regex_rewrites_replace_every_match_and_keep_other_paths() {
        let rw = |pattern: &str, replace: &str| Rewrite {
            regex: Some((regex::Regex::new(pattern).unwrap(), replace.into())),
            ..Rewrite::default()
        };
        let users = rw("^/v1/users/([0-9]+)$", "/users/$1");
        assert_eq!(users.path("/v1/users/42").as_deref(), Some("/users/42"));
        assert_eq!(users.path("/v1/users/x"), None);
        let braces = rw("^/a/(?P<id>[^/]+)/b$", "/b/${id}x");
        assert_eq!(braces.path("/a/7/b").as_deref(), Some("/b/7x"));
        assert_eq!(rw("-", "_").path("/a-b/c-d").as_deref(), Some("/a_b/c_d"));
        assert_eq!(rw("^/api", "").path("/api").as_deref(), Some("/"));
    }

    #[test]
    fn strip_and_replace_prefix() {
        let cases = [
            (("/api", ""), "/api/users/7", Some("/users/7")),
            (("/api", ""), "/api", Some("/")),
            (("/api", ""), "/api/", Some("/")),
            (("/api/", ""), "/api/x", Some("/x")),
            (("/api", ""), "/apix", None),
            (("/api/v1", "/v2"), "/api/v1/users", Some("/v2/users")),
            (("/api/v1", "/v2"), "/api/v1", Some("/v2")),
            (("/api", "/"), "/api/x", Some("/x")),
            (("/", "/base"), "/x", Some("/base/x")),
            (("/api", ""), "/api;v=1/users", Some("/users")),
            (
                ("/api/v1", "/v2"),
                "/api;a/v1;b/users;c",
                Some("/v2/users;c"),
            ),
            (("/api/", ""), "/api;a/x", Some("/x")),
            (("/api", ""), "/apix;a/x", None),
        ];
        for ((from, to), path, want) in cases {
            assert_eq!(
                rw(from, to).path(path).as_deref(),
                want,
                "{from} -> {to} on {path}"
            );
        }
    }
}
