//! Whole-config checks that serde cannot make: names unique, references that
//! resolve, addresses, regexes and header names that parse, values in range, and
//! features the gateway does not implement yet. Every problem is collected, each
//! named by its zero-based key path; `load` turns paths into file positions.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use http::{HeaderName, HeaderValue, Method, Uri};
use ipnet::IpNet;

use super::positions::{child, item};
use super::schema::{
    Config, HeaderOps, JwtPolicy, ListenerTls, Match, Route, Upstream, UpstreamTls,
};
use super::suggest;
use crate::config::values::Encoding;
use crate::config::values::KeyKind;

/// A problem: the key path it is about and what is wrong.
pub type Issue = (String, String);

/// Check a deserialized config; empty means valid.
pub fn validate(config: &Config) -> Vec<Issue> {
    let mut v = Checker::default();
    v.server(config);
    for (name, upstream) in &config.upstreams {
        v.upstream(&child("upstreams", name), upstream);
    }
    v.auth(config);
    v.cors(config);
    v.routes(config);
    v.rate_limits(config);
    v.tracing(config);
    v.issues
}

/// Reads the files the config names (certificates, keys, CAs) and checks they
/// parse and belong together; `resolve` places a name from the file. Run after
/// `validate` passed, at every load, so a reload with a broken certificate fails
/// and the old one keeps serving.
pub fn files(config: &Config, resolve: &dyn Fn(&str) -> PathBuf) -> Vec<Issue> {
    use crate::tls;
    let mut issues = Vec::new();
    let provider = tls::provider();
    for (i, l) in config.server.listeners.iter().enumerate() {
        let Some(t) = &l.tls else { continue };
        let at = child(&item("server.listeners", i), "tls");
        for (j, c) in t.certificates.iter().enumerate() {
            if let Err(e) = tls::load_cert(&resolve(&c.cert), &resolve(&c.key), &provider) {
                let entry = item(&child(&at, "certificates"), j);
                issues.push((child(&entry, &e.key), e.message));
            }
        }
        if let Some(auth) = &t.client_auth {
            if let Err(m) = tls::read_roots(&resolve(&auth.ca)) {
                issues.push((child(&child(&at, "client_auth"), "ca"), m));
            }
        }
    }
    for (name, u) in &config.upstreams {
        if let Some(ca) = u.tls.as_ref().and_then(|t| t.ca.as_deref()) {
            if let Err(m) = tls::read_roots(&resolve(ca)) {
                let at = child(&child(&child("upstreams", name), "tls"), "ca");
                issues.push((at, m));
            }
        }
    }
    issues
}

/// An OTLP/HTTP endpoint: an absolute http(s) URL without credentials.
fn otlp_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("`{}` is not a URL", redacted(url)))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "expected an http:// or https:// URL (OTLP/HTTP, usually port 4318), got `{}`",
            redacted(url)
        ));
    }
    match uri.authority() {
        None => Err(format!("`{url}` names no host")),
        Some(a) if a.as_str().contains('@') => {
            Err("credentials in the URL are not supported".to_string())
        }
        Some(_) => Ok(()),
    }
}

/// A URL with any password replaced, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Headers a configured `set` must not touch: they describe one connection, or
/// their framing is the gateway's job (RFC 9110 §7.6.1).
const MANAGED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

const BALANCE_KINDS: &[&str] = &[
    "round_robin",
    "least_request",
    "random",
    "ip_hash",
    "header_hash",
    "cookie_hash",
];

const STANDARD_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

#[derive(Default)]
struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push((path.into(), message.into()));
    }

    /// `tracing`: span export exists only in builds with the `otel` feature;
    /// elsewhere its keys are refused, never silently ignored.
    fn tracing(&mut self, config: &Config) {
        let Some(t) = &config.tracing else { return };
        if let Some(ratio) = t.sample_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            self.err(
                "tracing.sample_ratio",
                format!("must be between 0 and 1, got {ratio}"),
            );
        }
        if cfg!(not(feature = "otel")) {
            for (key, used) in [
                ("otlp_endpoint", t.otlp_endpoint.is_some()),
                ("sample_ratio", t.sample_ratio.is_some()),
            ] {
                if used {
                    self.err(
                        format!("tracing.{key}"),
                        format!(
                            "tracing.{key} needs tollgate built with `--features otel` \
                             (OpenTelemetry span export is not in this build)"
                        ),
                    );
                }
            }
            return;
        }
        match &t.otlp_endpoint {
            Some(url) => {
                if let Err(m) = otlp_url(url) {
                    self.err("tracing.otlp_endpoint", m);
                }
            }
            None if t.sample_ratio.is_some() => self.err(
                "tracing.sample_ratio",
                "tracing.sample_ratio needs tracing.otlp_endpoint (nothing is exported without it)",
            ),
            None => {}
        }
    }

    fn server(&mut self, config: &Config) {
        let server = &config.server;
        if server.listeners.is_empty() {
            self.err("server.listeners", "at least one listener is needed");
        }
        let mut names = HashSet::new();
        for (i, l) in server.listeners.iter().enumerate() {
            let at = item("server.listeners", i);
            if l.name.is_empty() {
                self.err(child(&at, "name"), "a listener name cannot be empty");
            } else if !names.insert(l.name.as_str()) {
                self.err(
                    child(&at, "name"),
                    format!("duplicate listener name `{}`", l.name),
                );
            }
            self.bind(&child(&at, "bind"), &l.bind);
            if let Some(tls) = &l.tls {
                self.listener_tls(&child(&at, "tls"), tls);
            }
        }
        if let Some(admin) = &server.admin {
            self.bind("server.admin.bind", &admin.bind);
        }

        let limits = &server.limits;
        let kib = 1024;
        if !(kib..=1024 * kib).contains(&limits.max_header_bytes.0) {
            self.err(
                "server.limits.max_header_bytes",
                format!(
                    "must be between 1KiB and 1MiB, got {}",
                    limits.max_header_bytes
                ),
            );
        }
        if limits.max_connections == 0 {
            self.err("server.limits.max_connections", "must be at least 1");
        }
        if limits.max_body_bytes.0 == 0 {
            self.err(
                "server.limits.max_body_bytes",
                "0 would refuse every request body; for no practical limit use a large size like 1GiB",
            );
        }
        for (key, d) in [
            ("header_read_timeout", limits.header_read_timeout),
            ("body_read_timeout", limits.body_read_timeout),
            ("idle_timeout", limits.idle_timeout),
        ] {
            if d.get().is_zero() {
                self.err(child("server.limits", key), "must be above zero");
            }
        }

        for (i, proxy) in server.trusted_proxies.iter().enumerate() {
            if proxy.parse::<IpNet>().is_err() && proxy.parse::<IpAddr>().is_err() {
                self.err(
                    item("server.trusted_proxies", i),
                    format!("expected an IP address or a CIDR like 10.0.0.0/8, got `{proxy}`"),
                );
            }
        }
    }

    fn listener_tls(&mut self, at: &str, tls: &ListenerTls) {
        use crate::tls::{ALPN_PROTOCOLS, MIN_VERSIONS};
        if tls.certificates.is_empty() {
            self.err(
                child(at, "certificates"),
                "at least one certificate is needed; the first is the default",
            );
        }
        if let Some(v) = &tls.min_version {
            if !MIN_VERSIONS.contains(&v.as_str()) {
                self.err(
                    child(at, "min_version"),
                    format!("expected \"1.2\" or \"1.3\", got `{v}`"),
                );
            }
        }
        if let Some(alpn) = &tls.alpn {
            if alpn.is_empty() {
                self.err(
                    child(at, "alpn"),
                    "give at least one of h2, http/1.1 (or leave alpn out for both)",
                );
            }
            for (i, p) in alpn.iter().enumerate() {
                if !ALPN_PROTOCOLS.contains(&p.as_str()) {
                    self.err(
                        item(&child(at, "alpn"), i),
                        format!(
                            "unknown ALPN protocol `{p}`; expected h2 or http/1.1{}",
                            suggest::hint(p, ALPN_PROTOCOLS.iter().copied())
                        ),
                    );
                }
            }
        }
    }

    fn upstream_tls(&mut self, at: &str, u: &Upstream, tls: &UpstreamTls) {
        if !u.targets.iter().any(|t| t.url.starts_with("https://")) {
            self.err(
                at,
                "tls applies to https:// targets and this upstream has none",
            );
        }
        if let Some(name) = &tls.server_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                self.err(
                    child(at, "server_name"),
                    format!("expected a DNS name or an IP address, got `{name}`"),
                );
            }
        }
        if tls.insecure_skip_verify && tls.ca.is_some() {
            self.err(
                child(at, "ca"),
                "a CA has no effect with insecure_skip_verify: true; remove one of them",
            );
        }
    }

    fn bind(&mut self, path: &str, bind: &str) {
        if bind.parse::<SocketAddr>().is_err() {
            self.err(
                path,
                format!("expected an address like 127.0.0.1:8080 or [::1]:8080, got `{bind}`"),
            );
        }
    }

    fn upstream(&mut self, at: &str, u: &Upstream) {
        if u.targets.is_empty() {
            self.err(
                child(at, "targets"),
                "an upstream needs at least one target",
            );
        }
        for (i, t) in u.targets.iter().enumerate() {
            let target = item(&child(at, "targets"), i);
            if let Err(e) = check_target_url(&t.url) {
                self.err(child(&target, "url"), e);
            }
            if !(1..=10_000).contains(&t.weight) {
                self.err(
                    child(&target, "weight"),
                    format!("must be between 1 and 10000, got {}", t.weight),
                );
            }
        }
        if let Some(tls) = &u.tls {
            self.upstream_tls(&child(at, "tls"), u, tls);
        }
        if let Err(e) = check_balance(&u.balance) {
            self.err(child(at, "balance"), e);
        }
        match u.protocol.as_str() {
            "http1" | "h2" => {}
            other => self.err(
                child(at, "protocol"),
                format!(
                    "unknown protocol `{other}`; expected http1 or h2{}",
                    suggest::hint(other, ["http1", "h2"])
                ),
            ),
        }
        for (key, d) in [
            ("connect", u.timeouts.connect),
            ("request", u.timeouts.request),
            ("idle", u.timeouts.idle),
        ] {
            if d.get().is_zero() {
                self.err(child(&child(at, "timeouts"), key), "must be above zero");
            }
        }
        if u.max_concurrent_requests == Some(0) {
            self.err(
                child(at, "max_concurrent_requests"),
                "must be above zero; leave it out for no limit",
            );
        }
        self.resilience(at, u);
    }

    /// `health_check`, `circuit_breaker` and `retries` of an upstream.
    fn resilience(&mut self, at: &str, u: &Upstream) {
        if let Some(h) = &u.health_check {
            let hc = child(at, "health_check");
            if !h.path.starts_with('/') || h.path.parse::<http::uri::PathAndQuery>().is_err() {
                self.err(
                    child(&hc, "path"),
                    format!("expected a path starting with /, got `{}`", h.path),
                );
            }
            if h.timeout.get().is_zero() {
                self.err(child(&hc, "timeout"), "must be above zero");
            }
            if h.interval.get() <= h.timeout.get() {
                self.err(
                    child(&hc, "interval"),
                    format!(
                        "must be longer than the timeout ({}), got {}",
                        h.timeout, h.interval
                    ),
                );
            }
            for (key, v) in [
                ("healthy_threshold", h.healthy_threshold),
                ("unhealthy_threshold", h.unhealthy_threshold),
            ] {
                if v == 0 {
                    self.err(child(&hc, key), "must be at least 1");
                }
            }
        }
        if let Some(cb) = &u.circuit_breaker {
            let at = child(at, "circuit_breaker");
            if cb.consecutive_failures == 0 {
                self.err(child(&at, "consecutive_failures"), "must be at least 1");
            }
            if cb.half_open_max_requests == 0 {
                self.err(child(&at, "half_open_max_requests"), "must be at least 1");
            }
            if cb.open_for.get().is_zero() {
                self.err(child(&at, "open_for"), "must be above zero");
            }
            for (i, s) in cb.failure_statuses.iter().flatten().enumerate() {
                if !(500..=599).contains(s) {
                    self.err(
                        item(&child(&at, "failure_statuses"), i),
                        format!("expected a 5xx status, got {s}"),
                    );
                }
            }
        }
        if let Some(r) = &u.retries {
            let at = child(at, "retries");
            if !(1..=10).contains(&r.attempts) {
                self.err(
                    child(&at, "attempts"),
                    format!("must be between 1 and 10, got {}", r.attempts),
                );
            }
            for (i, o) in r.on.iter().flatten().enumerate() {
                if let Err(e) = check_retry_on(&o.to_string()) {
                    self.err(item(&child(&at, "on"), i), e);
                }
            }
            for (i, m) in r.methods.iter().flatten().enumerate() {
                if let Err(e) = check_method(m) {
                    self.err(item(&child(&at, "methods"), i), e);
                }
            }
            if r.budget_percent.is_some_and(|p| p > 100) {
                self.err(
                    child(&at, "budget_percent"),
                    format!(
                        "must be between 0 and 100, got {}",
                        r.budget_percent.unwrap_or_default()
                    ),
                );
            }
            if r.backoff.is_some_and(|b| b.get().is_zero()) {
                self.err(child(&at, "backoff"), "must be above zero");
            }
        }
    }

    fn rate_limits(&mut self, config: &Config) {
        for (name, rl) in &config.rate_limits {
            let at = child("rate_limits", name);
            if let Err(e) = rl.key.parse::<KeyKind>() {
                let hint = suggest::hint(&rl.key, ["client_ip", "api_key", "route"]);
                self.err(child(&at, "key"), format!("{e}{hint}"));
            }
            if rl.burst == Some(0) {
                self.err(child(&at, "burst"), "burst must be at least 1");
            }
            if rl.max_keys == 0 {
                self.err(child(&at, "max_keys"), "max_keys must be at least 1");
            }
            match rl.store.as_str() {
                "local" => {}
                "redis" => {
                    if config.redis.is_none() {
                        self.err(
                            child(&at, "store"),
                            "`store: redis` needs the top-level `redis: { url: ... }` section",
                        );
                    }
                }
                other => {
                    let hint = suggest::hint(other, ["local", "redis"]);
                    self.err(
                        child(&at, "store"),
                        format!("unknown store `{other}`; expected local or redis{hint}"),
                    );
                }
            }
            if !matches!(rl.on_store_error.as_str(), "allow" | "deny") {
                let hint = suggest::hint(&rl.on_store_error, ["allow", "deny"]);
                self.err(
                    child(&at, "on_store_error"),
                    format!("expected allow or deny, got `{}`{hint}", rl.on_store_error),
                );
            }
        }
        if let Some(redis) = &config.redis {
            if !(redis.url.starts_with("redis://") || redis.url.starts_with("rediss://")) {
                self.err(
                    "redis.url",
                    format!("expected a redis:// URL, got `{}`", redacted(&redis.url)),
                );
            }
            if redis.timeout.get().is_zero() {
                self.err("redis.timeout", "the timeout must be above zero");
            }
        }
        for (i, route) in config.routes.iter().enumerate() {
            for (j, name) in route.rate_limit.iter().flatten().enumerate() {
                if !config.rate_limits.contains_key(name) {
                    let hint = suggest::hint(name, config.rate_limits.keys().map(String::as_str));
                    self.err(
                        item(&child(&item("routes", i), "rate_limit"), j),
                        format!("unknown rate limit `{name}`{hint}"),
                    );
                }
            }
        }
    }

    fn routes(&mut self, config: &Config) {
        let mut names = HashSet::new();
        for (i, route) in config.routes.iter().enumerate() {
            let at = item("routes", i);
            if route.name.is_empty() {
                self.err(child(&at, "name"), "a route name cannot be empty");
            } else if !names.insert(route.name.as_str()) {
                self.err(
                    child(&at, "name"),
                    format!("duplicate route name `{}`", route.name),
                );
            }
            self.matcher(&child(&at, "match"), &route.matcher);
            self.action(&at, route, config);
            if let Some(t) = route.timeout {
                if t.get().is_zero() {
                    self.err(child(&at, "timeout"), "must be above zero");
                }
            }
            self.route_policies(&at, route, config);
            if let Some(list) = &route.compress {
                self.compress(&child(&at, "compress"), list, route);
            }
            self.header_ops(&child(&at, "request_headers"), &route.request_headers);
            self.header_ops(&child(&at, "response_headers"), &route.response_headers);
        }
    }

    /// `compress: [gzip, br, zstd]`: known names, each once, on a proxied route.
    fn compress(&mut self, at: &str, list: &[String], route: &Route) {
        if route.upstream.is_none() {
            self.err(at, "compress only applies to routes with an `upstream`");
        }
        if list.is_empty() {
            self.err(
                at,
                "list at least one encoding (gzip, br, zstd), or remove `compress`",
            );
        }
        let mut seen = HashSet::new();
        for (i, name) in list.iter().enumerate() {
            if Encoding::from_name(name).is_none() {
                let hint = match name.to_ascii_lowercase().as_str() {
                    "brotli" => " (did you mean `br`?)".to_string(),
                    _ => suggest::hint(name, Encoding::NAMES),
                };
                self.err(
                    item(at, i),
                    format!("unknown encoding `{name}`; expected gzip, br or zstd{hint}"),
                );
            } else if !seen.insert(name.as_str()) {
                self.err(item(at, i), format!("`{name}` is listed twice"));
            }
        }
    }

    fn auth(&mut self, config: &Config) {
        for (name, p) in &config.auth.jwt {
            self.jwt_policy(&child("auth.jwt", name), p);
        }
        for (name, set) in &config.auth.api_keys {
            let at = child("auth.api_keys", name);
            if HeaderName::from_bytes(set.header.as_bytes()).is_err() {
                self.err(
                    child(&at, "header"),
                    format!("`{}` is not a valid header name", set.header),
                );
            }
            if set.keys.is_empty() {
                self.err(child(&at, "keys"), "an API key set needs at least one key");
            }
            let (mut ids, mut keys) = (HashSet::new(), HashSet::new());
            for (i, k) in set.keys.iter().enumerate() {
                let key_at = item(&child(&at, "keys"), i);
                if k.id.is_empty() || HeaderValue::from_str(&k.id).is_err() {
                    self.err(
                        child(&key_at, "id"),
                        "an id must be non-empty printable ASCII (it is sent as X-Consumer-Id)",
                    );
                } else if !ids.insert(k.id.as_str()) {
                    self.err(child(&key_at, "id"), format!("duplicate key id `{}`", k.id));
                }
                if k.key.is_empty() {
                    self.err(
                        child(&key_at, "key"),
                        "the key is empty (is its ${VARIABLE} set?)",
                    );
                } else if HeaderValue::from_str(&k.key).is_err() {
                    self.err(
                        child(&key_at, "key"),
                        "a key must be printable ASCII (it travels in a header)",
                    );
                } else if !keys.insert(k.key.as_str()) {
                    self.err(
                        child(&key_at, "key"),
                        format!("key id `{}` reuses the key of an earlier id", k.id),
                    );
                }
            }
        }
    }

    fn jwt_policy(&mut self, at: &str, p: &JwtPolicy) {
        use crate::config::values::ALGORITHMS;
        if p.algorithms.is_empty() {
            self.err(child(at, "algorithms"), "list at least one algorithm");
        }
        let mut hmac = false;
        let mut public = false;
        for (i, alg) in p.algorithms.iter().enumerate() {
            let alg_at = item(&child(at, "algorithms"), i);
            if alg.eq_ignore_ascii_case("none") {
                self.err(alg_at, "`none` (unsigned tokens) is never accepted");
            } else if !ALGORITHMS.contains(&alg.as_str()) {
                self.err(
                    alg_at,
                    format!(
                        "unknown algorithm `{alg}`; expected one of {}{}",
                        ALGORITHMS.join(", "),
                        suggest::hint(alg, ALGORITHMS.iter().copied())
                    ),
                );
            } else if alg.starts_with("HS") {
                hmac = true;
            } else {
                public = true;
            }
        }
        let sources: Vec<&str> = [
            ("jwks_file", p.jwks_file.is_some()),
            ("jwks_url", p.jwks_url.is_some()),
            ("secret", p.secret.is_some()),
        ]
        .iter()
        .filter(|s| s.1)
        .map(|s| s.0)
        .collect();
        if sources.len() != 1 {
            let got = if sources.is_empty() {
                "none is given".to_owned()
            } else {
                format!("got {}", sources.join(" and "))
            };
            self.err(
                at,
                format!("needs exactly one key source: jwks_file, jwks_url or secret; {got}"),
            );
        }
        if p.secret.is_some() && public {
            self.err(
                child(at, "algorithms"),
                "a `secret` only verifies HS256/HS384/HS512; RSA, EC and EdDSA keys come from jwks_file or jwks_url",
            );
        }
        if p.secret.is_none() && hmac {
            self.err(
                child(at, "algorithms"),
                "HS256/HS384/HS512 need a `secret` (JWKS keys are public keys)",
            );
        }
        if let Some(secret) = &p.secret
            && secret.is_empty()
        {
            self.err(
                child(at, "secret"),
                "the secret is empty (is its ${VARIABLE} set?)",
            );
        }
        if let Some(url) = &p.jwks_url {
            let ok = url.parse::<Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                self.err(
                    child(at, "jwks_url"),
                    format!("expected an http:// or https:// URL, got `{url}`"),
                );
            }
        }
        if let Some(file) = &p.jwks_file
            && file.is_empty()
        {
            self.err(child(at, "jwks_file"), "the file name is empty");
        }
        if let Some(r) = p.jwks_refresh {
            if p.jwks_url.is_none() {
                self.err(child(at, "jwks_refresh"), "only applies with jwks_url");
            } else if r.get().is_zero() {
                self.err(child(at, "jwks_refresh"), "must be above zero");
            }
        }
        if let Some(l) = p.leeway
            && l.get() > std::time::Duration::from_secs(600)
        {
            self.err(
                child(at, "leeway"),
                "at most 10m: clock skew beyond that is a broken clock",
            );
        }
        if let Some(auds) = &p.audiences
            && auds.is_empty()
        {
            self.err(
                child(at, "audiences"),
                "an empty list would accept no token; leave it out to not check `aud`",
            );
        }
        if let Some(list) = &p.token_from {
            if list.is_empty() {
                self.err(child(at, "token_from"), "list at least one token source");
            }
            for (i, s) in list.iter().enumerate() {
                if let Err(e) = s.parse::<crate::config::values::TokenSource>() {
                    self.err(item(&child(at, "token_from"), i), e);
                }
            }
        }
        let fc = child(at, "forward_claims");
        for (claim, h) in &p.forward_claims {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                self.err(
                    child(&fc, claim),
                    format!("`{h}` is not a valid header name"),
                );
            } else if MANAGED_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
                self.err(
                    child(&fc, claim),
                    format!("`{h}` is managed by the gateway"),
                );
            }
        }
    }

    fn cors(&mut self, config: &Config) {
        use crate::config::values::{check_header_name, check_origin};
        for (name, c) in &config.cors {
            let at = child("cors", name);
            if c.allow_origins.is_empty() {
                self.err(
                    child(&at, "allow_origins"),
                    "list at least one origin (or \"*\")",
                );
            }
            for (i, o) in c.allow_origins.iter().enumerate() {
                if let Err(e) = check_origin(o) {
                    self.err(item(&child(&at, "allow_origins"), i), e);
                }
            }
            if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
                self.err(
                    child(&at, "allow_credentials"),
                    "cannot be true with allow_origins [\"*\"]: browsers reject that combination; list the origins instead",
                );
            }
            for (i, m) in c.allow_methods.iter().flatten().enumerate() {
                if let Err(e) = check_method(m) {
                    self.err(item(&child(&at, "allow_methods"), i), e);
                }
            }
            for key in ["allow_headers", "expose_headers"] {
                let list = if key == "allow_headers" {
                    &c.allow_headers
                } else {
                    &c.expose_headers
                };
                for (i, h) in list.iter().flatten().enumerate() {
                    if let Err(e) = check_header_name(h) {
                        self.err(item(&child(&at, key), i), e);
                    }
                }
            }
        }
    }

    /// Route `auth`, `require_claims`, `cors`, `ip_allow` and `ip_deny`.
    fn route_policies(&mut self, at: &str, route: &Route, config: &Config) {
        let mut has_jwt = false;
        if let Some(list) = &route.auth {
            if list.is_empty() {
                self.err(
                    child(at, "auth"),
                    "an empty list would refuse everyone; leave `auth` out for a public route",
                );
            }
            let mut seen = HashSet::new();
            for (i, entry) in list.iter().enumerate() {
                let entry_at = item(&child(at, "auth"), i);
                if !seen.insert(entry.as_str()) {
                    self.err(&entry_at, format!("`{entry}` is listed twice"));
                    continue;
                }
                match entry.split_once(':') {
                    Some(("jwt", name)) => {
                        has_jwt = true;
                        if !config.auth.jwt.contains_key(name) {
                            let hint =
                                suggest::hint(name, config.auth.jwt.keys().map(String::as_str));
                            self.err(entry_at, format!("unknown JWT policy `{name}`{hint}"));
                        }
                    }
                    Some(("api_key", name)) => {
                        if !config.auth.api_keys.contains_key(name) {
                            let hint = suggest::hint(
                                name,
                                config.auth.api_keys.keys().map(String::as_str),
                            );
                            self.err(entry_at, format!("unknown API key set `{name}`{hint}"));
                        }
                    }
                    Some((kind, _)) => self.err(
                        entry_at,
                        format!(
                            "unknown auth kind `{kind}`; expected jwt:<policy> or api_key:<set>{}",
                            suggest::hint(kind, ["jwt", "api_key"])
                        ),
                    ),
                    None => self.err(
                        entry_at,
                        format!("expected jwt:<policy> or api_key:<set>, got `{entry}`"),
                    ),
                }
            }
        }
        if let Some(claims) = &route.require_claims {
            if !has_jwt {
                self.err(
                    child(at, "require_claims"),
                    "needs a JWT in the route's `auth` (jwt:<policy>): claims come from the token",
                );
            }
            for (claim, want) in claims {
                let empty = match want {
                    super::schema::StringOrList::One(v) => v.is_empty(),
                    super::schema::StringOrList::Many(v) => {
                        v.is_empty() || v.iter().any(String::is_empty)
                    }
                };
                if empty {
                    self.err(
                        child(&child(at, "require_claims"), claim),
                        "give the value (or values, any of which may match) the claim must have",
                    );
                }
            }
        }
        if let Some(name) = &route.cors
            && !config.cors.contains_key(name)
        {
            let hint = suggest::hint(name, config.cors.keys().map(String::as_str));
            self.err(
                child(at, "cors"),
                format!("unknown cors policy `{name}`{hint}"),
            );
        }
        for (key, list) in [("ip_allow", &route.ip_allow), ("ip_deny", &route.ip_deny)] {
            let Some(list) = list else { continue };
            if list.is_empty() && key == "ip_allow" {
                self.err(
                    child(at, key),
                    "an empty allow list would refuse everyone; leave it out instead",
                );
            }
            for (i, net) in list.iter().enumerate() {
                if let Err(e) = super::values::parse_net(net) {
                    self.err(item(&child(at, key), i), e);
                }
            }
        }
    }

    fn matcher(&mut self, at: &str, m: &Match) {
        let kinds = [
            ("path", m.path.is_some()),
            ("path_prefix", m.path_prefix.is_some()),
            ("path_regex", m.path_regex.is_some()),
        ];
        let given: Vec<&str> = kinds.iter().filter(|k| k.1).map(|k| k.0).collect();
        if given.len() != 1 {
            let what = if given.is_empty() {
                "none is given".to_owned()
            } else {
                format!("got {}", given.join(" and "))
            };
            self.err(
                at,
                format!("needs exactly one of path, path_prefix or path_regex; {what}"),
            );
        }
        for (key, value) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
            if let Some(p) = value {
                if !p.starts_with('/') {
                    self.err(child(at, key), format!("must start with `/`, got `{p}`"));
                }
            }
        }
        if let Some(re) = &m.path_regex {
            if let Err(e) = regex::Regex::new(re) {
                self.err(
                    child(at, "path_regex"),
                    format!("invalid regex: {}", regex_reason(&e)),
                );
            }
        }
        for (i, host) in m.hosts.iter().flatten().enumerate() {
            if let Err(e) = check_host_pattern(host) {
                self.err(item(&child(at, "hosts"), i), e);
            }
        }
        for (i, method) in m.methods.iter().flatten().enumerate() {
            if let Err(e) = check_method(method) {
                self.err(item(&child(at, "methods"), i), e);
            }
        }
        let headers = child(at, "headers");
        for (name, value) in &m.headers {
            self.header(&headers, name, Some(value));
        }
        for name in m.query.keys() {
            if name.is_empty() {
                self.err(child(at, "query"), "a query parameter name cannot be empty");
            }
        }
    }

    /// Where the route sends the request: exactly one of `upstream` or `respond`.
    fn action(&mut self, at: &str, route: &Route, config: &Config) {
        match (&route.upstream, &route.respond) {
            (Some(_), Some(_)) => {
                self.err(at, "give either `upstream` or `respond`, not both");
            }
            (None, None) => {
                self.err(
                    at,
                    "needs either `upstream` (proxy) or `respond` (direct response)",
                );
            }
            (Some(name), None) => {
                if !config.upstreams.contains_key(name) {
                    let hint = suggest::hint(name, config.upstreams.keys().map(String::as_str));
                    self.err(
                        child(at, "upstream"),
                        format!("unknown upstream `{name}`{hint}"),
                    );
                }
            }
            (None, Some(respond)) => {
                let respond_at = child(at, "respond");
                if !(100..=599).contains(&respond.status) {
                    self.err(
                        child(&respond_at, "status"),
                        format!(
                            "must be an HTTP status from 100 to 599, got {}",
                            respond.status
                        ),
                    );
                }
                let headers = child(&respond_at, "headers");
                for (name, value) in &respond.headers {
                    self.header(&headers, name, Some(value));
                    if MANAGED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                        self.err(
                            child(&headers, name),
                            format!("`{name}` is managed by the gateway and cannot be set"),
                        );
                    }
                }
            }
        }

        let Some(rewrite) = &route.rewrite else {
            return;
        };
        let rewrite_at = child(at, "rewrite");
        if route.upstream.is_none() {
            self.err(
                &rewrite_at,
                "rewrite only applies to routes with an `upstream`",
            );
        }
        if rewrite.strip_prefix.is_some() && rewrite.replace_prefix.is_some() {
            self.err(
                &rewrite_at,
                "give either strip_prefix or replace_prefix, not both",
            );
        }
        let mut prefixes = vec![("strip_prefix", rewrite.strip_prefix.as_deref())];
        if let Some(r) = &rewrite.replace_prefix {
            prefixes.push(("replace_prefix.from", Some(r.from.as_str())));
            prefixes.push(("replace_prefix.to", Some(r.to.as_str())));
        }
        for (key, value) in prefixes {
            if let Some(p) = value {
                if !p.starts_with('/') {
                    self.err(
                        child(&rewrite_at, key),
                        format!("must start with `/`, got `{p}`"),
                    );
                }
            }
        }
        if let Some(host) = &rewrite.host {
            if host.parse::<http::uri::Authority>().is_err() || host.contains('@') {
                self.err(
                    child(&rewrite_at, "host"),
                    format!("expected a host name, optionally with a port, got `{host}`"),
                );
            }
        }
    }

    fn header_ops(&mut self, at: &str, ops: &HeaderOps) {
        let set = child(at, "set");
        for (name, value) in &ops.set {
            self.header(&set, name, Some(value));
            if MANAGED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                self.err(
                    child(&set, name),
                    format!("`{name}` is a hop-by-hop or framing header and cannot be set"),
                );
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.err(
                    item(&child(at, "remove"), i),
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
    }

    /// A header name (and value) under the mapping at `at`.
    fn header(&mut self, at: &str, name: &str, value: Option<&str>) {
        let path = child(at, name);
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.err(path, format!("`{name}` is not a valid header name"));
        } else if let Some(v) = value {
            if HeaderValue::from_str(v).is_err() {
                self.err(
                    path,
                    format!(
                        "not a valid header value (control characters or non-ASCII): `{}`",
                        v.escape_debug()
                    ),
                );
            }
        }
    }
}

/// `http(s)://host[:port][/]`: the gateway picks the path, the target only says where.
fn check_target_url(url: &str) -> Result<(), String> {
    let expected = || {
        format!("expected a URL like http://127.0.0.1:9000 or https://users.internal, got `{url}`")
    };
    let uri: Uri = url.parse().map_err(|_| expected())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(expected());
    }
    let authority = uri.authority().ok_or_else(expected)?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "a target URL cannot carry credentials, got `{url}`"
        ));
    }
    if authority.host().is_empty() {
        return Err(expected());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "a target URL cannot have a path or query (use the route's rewrite), got `{url}`"
        ));
    }
    Ok(())
}

/// `round_robin | least_request | random | ip_hash | header_hash:<name> | cookie_hash:<name>`.
fn check_balance(balance: &str) -> Result<(), String> {
    let (kind, arg) = match balance.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (balance, None),
    };
    let expected = "expected round_robin, least_request, random, ip_hash, header_hash:<name> or cookie_hash:<name>";
    match (kind, arg) {
        ("round_robin" | "least_request" | "random" | "ip_hash", None) => Ok(()),
        ("header_hash", Some(name)) => {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                Err(format!("`{name}` is not a valid header name"))
            } else {
                Ok(())
            }
        }
        ("cookie_hash", Some(name)) => {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if valid {
                Ok(())
            } else {
                Err(format!("`{name}` is not a valid cookie name"))
            }
        }
        ("header_hash" | "cookie_hash", None) => {
            Err(format!("`{kind}` needs a name: `{kind}:<name>`"))
        }
        (k, _) if BALANCE_KINDS.contains(&k) => Err(format!("`{k}` takes no argument; {expected}")),
        (k, _) => Err(format!(
            "unknown balance `{balance}`; {expected}{}",
            suggest::hint(k, BALANCE_KINDS.iter().copied())
        )),
    }
}

/// A host name, or `*.` followed by one, matched case-insensitively.
fn check_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err(format!(
            "`{host}`: a wildcard is only allowed as a whole first label, like `*.example.com`"
        ));
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "`{host}` is not a valid host name (give it without a port)"
        ));
    }
    Ok(())
}

const RETRY_CONDITIONS: &[&str] = &["connect_error", "timeout", "reset"];

/// A retry condition: a named outcome or a 5xx status.
fn check_retry_on(on: &str) -> Result<(), String> {
    if RETRY_CONDITIONS.contains(&on) {
        return Ok(());
    }
    match on.parse::<u16>() {
        Ok(s) if (500..=599).contains(&s) => Ok(()),
        Ok(s) => Err(format!("only 5xx statuses can be retried, got {s}")),
        Err(_) => Err(format!(
            "unknown retry condition `{on}`; expected connect_error, timeout, reset or a 5xx status{}",
            suggest::hint(on, RETRY_CONDITIONS.iter().copied())
        )),
    }
}

/// Any HTTP token is a method, but one a letter away from a standard method is
/// far more likely a typo than a custom verb.
fn check_method(method: &str) -> Result<(), String> {
    if Method::from_bytes(method.as_bytes()).is_err() {
        return Err(format!("`{method}` is not a valid HTTP method"));
    }
    let upper = method.to_ascii_uppercase();
    if !STANDARD_METHODS.contains(&upper.as_str()) {
        if let Some(m) = suggest::closest(&upper, STANDARD_METHODS.iter().copied()) {
            return Err(format!("unknown method `{method}` (did you mean `{m}`?)"));
        }
    }
    Ok(())
}

/// The regex crate's message without its multi-line ASCII-art pointer.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: ").map(str::to_owned))
        .unwrap_or_else(|| text.lines().last().unwrap_or_default().trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        assert!(check_target_url("http://127.0.0.1:9000").is_ok());
        assert!(check_target_url("http://users.internal").is_ok());
        assert!(check_target_url("http://[::1]:80/").is_ok());
        assert!(check_target_url("https://x").is_ok());
        assert!(check_target_url("https://x:8443/").is_ok());
        assert!(
            check_target_url("http://x/api")
                .unwrap_err()
                .contains("path")
        );
        assert!(check_target_url("127.0.0.1:80").is_err());
        assert!(check_target_url("ftp://x").is_err());
    }

    #[test]
    fn balances() {
        for ok in [
            "round_robin",
            "ip_hash",
            "header_hash:x-user",
            "cookie_hash:session",
        ] {
            assert!(check_balance(ok).is_ok(), "{ok}");
        }
        assert!(
            check_balance("round_robbin")
                .unwrap_err()
                .contains("did you mean `round_robin`")
        );
        assert!(
            check_balance("header_hash")
                .unwrap_err()
                .contains("needs a name")
        );
        assert!(check_balance("header_hash:bad header").is_err());
    }

    #[test]
    fn hosts_and_methods() {
        assert!(check_host_pattern("api.example.com").is_ok());
        assert!(check_host_pattern("*.example.com").is_ok());
        assert!(check_host_pattern("api.*.com").is_err());
        assert!(check_host_pattern("*").is_err());
        assert!(check_host_pattern("api.example.com:8080").is_err());
        assert!(check_method("get").is_ok());
        assert!(check_method("PURGE").is_ok());
        assert!(
            check_method("GTE")
                .unwrap_err()
                .contains("did you mean `GET`")
        );
        assert!(check_method("GE T").is_err());
    }

    #[test]
    #[allow(clippy::invalid_regex)] // the broken regex is the point
    fn regex_errors_are_one_line() {
        let e = regex::Regex::new("(a").unwrap_err();
        assert_eq!(regex_reason(&e), "unclosed group");
    }

    #[test]
    fn retry_conditions() {
        for ok in ["connect_error", "timeout", "reset", "502", "599"] {
            assert!(check_retry_on(ok).is_ok(), "{ok}");
        }
        assert!(check_retry_on("404").unwrap_err().contains("5xx"));
        assert!(
            check_retry_on("conect_error")
                .unwrap_err()
                .contains("did you mean `connect_error`")
        );
    }
}
