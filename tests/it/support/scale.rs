//! A large, realistic config for the scale bench (`benches/config_scale.rs`)
//! and the reload-under-load test (`tests/it/reload_scale.rs`): N routes over
//! N/33 upstreams, the shape of a big multi-service, multi-tenant gateway.
//!
//! Route `i` is one of (by `i % 20`):
//! - 0..=10: a path prefix `/api/s{u}/r{i}` of service `u = i % upstreams`;
//! - 11..=14: an exact path `/api/s{u}/r{i}/status`;
//! - 15..=18: a tenant route: host `t{i / 20}.example.com` (every fourth tenant
//!   also `*.t{..}.example.com`) with one of the prefixes `/`, `/app`, `/api`,
//!   `/static`, so each of those keys has N/20 candidates told apart by host;
//! - 19: a regex `/api/s{u}/r{i}/[0-9]+/(items|orders)`.
//!
//! On top: JWT or API-key auth on about a third of the routes, two rate limits,
//! header rewrites, prefix stripping, timeouts, CORS, compression, and a direct
//! `respond` every 50th route. Variant 1 is the same gateway one deploy later:
//! some header values and upstreams changed, 1 in 200 routes renamed (removed
//! and added), one upstream's timeouts changed.
//!
//! Included with `#[path]` by those benches and by `tests/it/support/mod.rs`,
//! so it stays at this path.

#![allow(dead_code)]

use std::fmt::Write;

pub struct Scale {
    pub routes: usize,
    /// 0 or 1 (see the module comment).
    pub variant: u8,
    /// Text placed verbatim under `server:` (listeners, admin), indented by 2.
    pub server: String,
    /// The target URLs of upstream `u`.
    pub targets: fn(usize) -> Vec<String>,
}

/// Targets for a config that is compiled but never sent traffic: two
/// distinct addresses per upstream, as in a real deployment.
pub fn private_targets(u: usize) -> Vec<String> {
    (0..2)
        .map(|j| format!("http://10.{}.{}.{}:8080", j, u / 250, u % 250 + 1))
        .collect()
}

pub fn upstream_count(routes: usize) -> usize {
    (routes / 33).max(3)
}

/// What route `i` matches, for clients of the generated config.
pub enum RouteKind {
    Prefix,
    Exact,
    /// Tenant host route on this prefix.
    Host(&'static str),
    Regex,
}

const TENANT_PREFIXES: [&str; 4] = ["/", "/app", "/api", "/static"];

pub fn kind(i: usize) -> RouteKind {
    match i % 20 {
        0..=10 => RouteKind::Prefix,
        11..=14 => RouteKind::Exact,
        15..=18 => RouteKind::Host(TENANT_PREFIXES[i % 20 - 15]),
        _ => RouteKind::Regex,
    }
}

fn has_jwt(i: usize) -> bool {
    i % 4 == 1
}

fn has_api_key(i: usize) -> bool {
    i % 16 == 3
}

fn limited(i: usize) -> bool {
    i.is_multiple_of(5) || i % 25 == 2
}

fn responds(i: usize) -> bool {
    i % 50 == 49
}

fn renamed(i: usize) -> bool {
    i % 200 == 13
}

/// Route `i` exists under the same name in both variants, needs no
/// credentials, is not rate limited and is proxied to an upstream: a steady
/// client can use it across reloads.
pub fn steady(i: usize) -> bool {
    !has_jwt(i) && !has_api_key(i) && !limited(i) && !responds(i) && !renamed(i)
}

/// A request that route `i` serves: (Host header or None, path).
pub fn request_for(i: usize, routes: usize) -> (Option<String>, String) {
    let u = i % upstream_count(routes);
    match kind(i) {
        RouteKind::Prefix => (None, format!("/api/s{u}/r{i}/users/42")),
        RouteKind::Exact => (None, format!("/api/s{u}/r{i}/status")),
        RouteKind::Host(prefix) => {
            let path = if prefix == "/" {
                "/index.html".to_string()
            } else {
                format!("{prefix}/x")
            };
            (Some(format!("t{}.example.com", i / 20)), path)
        }
        RouteKind::Regex => (None, format!("/api/s{u}/r{i}/1234/orders")),
    }
}

impl Scale {
    pub fn yaml(&self) -> String {
        let n = self.routes;
        let b = self.variant == 1;
        let ups = upstream_count(n);
        let mut s = String::with_capacity(n * 300);
        s.push_str("server:\n");
        for line in self.server.lines() {
            let _ = writeln!(s, "  {line}");
        }

        s.push_str("upstreams:\n");
        for u in 0..ups {
            let _ = writeln!(s, "  svc{u}:\n    targets:");
            for t in (self.targets)(u) {
                let _ = writeln!(s, "      - url: {t}");
            }
            let balance = ["round_robin", "least_request", "random", "ip_hash"][u % 4];
            let _ = writeln!(s, "    balance: {balance}");
            let connect = if b && u == 1 { "2s" } else { "1s" };
            let _ = writeln!(s, "    timeouts: {{ connect: {connect}, request: 30s }}");
            if u % 3 == 0 {
                s.push_str("    retries: { attempts: 2, on: [connect_error, 502, 503] }\n");
            }
            if u % 5 == 0 {
                s.push_str("    circuit_breaker: { consecutive_failures: 5, open_for: 30s }\n");
            }
            if u % 7 == 0 {
                s.push_str("    max_concurrent_requests: 1024\n");
            }
        }

        s.push_str(
            "auth:
  jwt:
    main:
      issuer: https://auth.example.com/
      audiences: [api]
      algorithms: [HS256]
      secret: ${JWT_SECRET:-scale-bench-secret-0123456789abcdef}
      forward_claims: { sub: X-User-Id }
  api_keys:
    partners:
      header: X-API-Key
      keys:
        - { id: acme, key: '${ACME_KEY:-acme-key-0123456789}' }
        - { id: globex, key: '${GLOBEX_KEY:-globex-key-0123456789}' }
rate_limits:
  per_client: { rate: 100/s, burst: 200, key: client_ip }
  per_tenant: { rate: 6000/m, key: 'header:X-Tenant' }
cors:
  web:
    allow_origins: [https://app.example.com]
    allow_methods: [GET, POST]
    allow_headers: [Authorization, Content-Type]
    max_age: 10m
routes:
",
        );

        for i in 0..n {
            let u = i % ups;
            let name = if b && renamed(i) {
                format!("r{i}-b")
            } else {
                format!("r{i}")
            };
            let _ = writeln!(s, "  - name: {name}\n    match:");
            let mut strip = None;
            match kind(i) {
                RouteKind::Prefix => {
                    let _ = writeln!(s, "      path_prefix: /api/s{u}/r{i}");
                    if i % 3 == 0 {
                        s.push_str("      methods: [GET, HEAD, POST]\n");
                    }
                    if i % 4 == 0 {
                        strip = Some(format!("/api/s{u}"));
                    }
                }
                RouteKind::Exact => {
                    let _ = writeln!(s, "      path: /api/s{u}/r{i}/status");
                }
                RouteKind::Host(prefix) => {
                    let t = i / 20;
                    if t % 4 == 0 {
                        let _ =
                            writeln!(s, "      hosts: [t{t}.example.com, '*.t{t}.example.com']");
                    } else {
                        let _ = writeln!(s, "      hosts: [t{t}.example.com]");
                    }
                    let _ = writeln!(s, "      path_prefix: {prefix}");
                }
                RouteKind::Regex => {
                    let _ = writeln!(
                        s,
                        "      path_regex: '/api/s{u}/r{i}/[0-9]+/(items|orders)'"
                    );
                }
            }
            if responds(i) {
                s.push_str("    respond: { status: 200, body: \"ok\\n\" }\n");
                continue;
            }
            let up = if b && i % 250 == 21 { (u + 1) % ups } else { u };
            let _ = writeln!(s, "    upstream: svc{up}");
            if let Some(p) = strip {
                let _ = writeln!(s, "    rewrite: {{ strip_prefix: {p} }}");
            }
            match (has_jwt(i), has_api_key(i)) {
                (true, _) => s.push_str("    auth: [jwt:main]\n"),
                (false, true) => s.push_str("    auth: [api_key:partners]\n"),
                _ => {}
            }
            if i % 5 == 0 {
                s.push_str("    rate_limit: [per_client]\n");
            } else if i % 25 == 2 {
                s.push_str("    rate_limit: [per_tenant]\n");
            }
            if i % 10 == 0 {
                s.push_str("    cors: web\n");
            }
            if i % 7 == 0 {
                s.push_str("    timeout: 5s\n");
            }
            if i % 40 == 0 {
                s.push_str("    compress: [gzip]\n");
            }
            if i % 3 == 0 {
                let tag = if b && i % 100 == 7 { "-b" } else { "" };
                let _ = writeln!(
                    s,
                    "    request_headers: {{ set: {{ X-Route: r{i}{tag}, X-Service: s{u} }}, remove: [X-Debug] }}"
                );
            }
            if i % 6 == 0 {
                s.push_str("    response_headers: { set: { Cache-Control: no-store } }\n");
            }
        }
        s
    }
}
