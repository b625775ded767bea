//! `tollgate routes`: which route a request would take and why the others did
//! not, with what would be applied on the way (upstream, rewrite, timeout).

use std::fmt::Write;

use http::{HeaderMap, Method};

use crate::config::schema::Config;
use crate::normalize::path::{PathError, normalize};
use crate::router::{Explanation, RequestView};
use crate::snapshot::{Action, Route, Snapshot};
use crate::upstream::discovery::SourceStatus;
use crate::upstream::{Origin, Targets};

pub struct Probe {
    pub method: Method,
    pub host: Option<String>,
    /// Path, optionally with `?query`.
    pub target: String,
    pub headers: HeaderMap,
}

/// A probe's path as the gateway would see it, and the router's explanation.
struct Routed {
    /// The normalised path (what goes upstream before any rewrite).
    path: String,
    /// The path routes match on (path parameters cut off), when it differs.
    match_path: Option<String>,
    explanation: Explanation,
}

impl Probe {
    /// Normalises the probe's path as the request path would be, then asks the
    /// router. `Err`: the gateway would answer 400 with this message.
    fn route(&self, snap: &Snapshot) -> Result<Routed, &'static str> {
        let (path, query) = match self.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.target.as_str(), None),
        };
        let normal = normalize(path, &snap.path_rules).map_err(PathError::message)?;
        let view = RequestView {
            method: &self.method,
            host: self.host.as_deref(),
            path: normal.for_matching(),
            query,
            headers: &self.headers,
        };
        let explanation = snap.router.explain(&view);
        Ok(Routed {
            path: normal.path.into_owned(),
            match_path: normal.match_path,
            explanation,
        })
    }
}

/// A human-readable answer: the chosen route first, then each near miss.
pub fn explain(snap: &Snapshot, cfg: &Config, probe: &Probe) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} (host: {})",
        probe.method,
        probe.target,
        probe.host.as_deref().unwrap_or("none")
    );
    let routed = match probe.route(snap) {
        Ok(r) => r,
        Err(message) => {
            let _ = writeln!(
                out,
                "rejected: the gateway answers 400 bad_request: {message}"
            );
            return out;
        }
    };
    let _ = writeln!(out, "normalised path: {}", routed.path);
    if let Some(m) = &routed.match_path {
        let _ = writeln!(out, "matched as: {m}");
    }
    let (path, ex) = (routed.path.as_str(), routed.explanation);
    match ex.chosen {
        None => {
            let _ = writeln!(out, "no route matches: the gateway answers 404 no_route");
        }
        Some(i) => {
            let route = &snap.routes[i];
            let raw = &cfg.routes[i];
            let _ = writeln!(out, "route: {}", route.name);
            match &route.action {
                Action::Respond { status, body, .. } => {
                    let _ = writeln!(
                        out,
                        "  answers directly: {} ({} body bytes), no upstream",
                        status.as_u16(),
                        body.len()
                    );
                }
                Action::Redirect(r) => {
                    let _ = writeln!(
                        out,
                        "  redirects: {} to {}",
                        r.status.as_u16(),
                        redirect_location(r, probe, path)
                    );
                }
                Action::Proxy { upstream } => {
                    describe_upstream(&mut out, snap, *upstream, route, path);
                }
                Action::Split(split) => {
                    let total: u64 = split.sides().iter().map(|s| u64::from(s.weight)).sum();
                    let sides: Vec<String> = split
                        .sides()
                        .iter()
                        .map(|s| {
                            format!("{} {} ({:.1}%)", s.name, s.weight, share(s.weight, total))
                        })
                        .collect();
                    let _ = writeln!(
                        out,
                        "  split (sticky: {}): {}",
                        split.sticky(),
                        sides.join(", ")
                    );
                    match split.decided(&probe.headers) {
                        Some(i) => {
                            let _ = writeln!(
                                out,
                                "  this request: {} (by its sticky key)",
                                split.sides()[i].name
                            );
                        }
                        None => {
                            let _ =
                                writeln!(out, "  this request: a weighted draw (no sticky key)");
                        }
                    }
                    for side in split.sides() {
                        describe_upstream(&mut out, snap, side.upstream, route, path);
                    }
                }
            }
            if let Some(m) = &route.mirror {
                let _ = writeln!(
                    out,
                    "  mirror: {} ({}% of requests, bodies up to {}, at most {} in flight)",
                    snap.upstreams[m.upstream].name,
                    m.percent,
                    crate::config::units::ByteSize(m.max_body),
                    m.max_in_flight
                );
            }
            let _ = writeln!(
                out,
                "  auth: {}",
                list_or(raw.auth.as_deref(), "none (public)")
            );
            let _ = writeln!(
                out,
                "  rate limits: {}",
                list_or(raw.rate_limit.as_deref(), "none")
            );
            let plans = consumer_plans(cfg, raw);
            if !plans.is_empty() {
                let _ = writeln!(
                    out,
                    "  consumer plans: {} (the authenticated consumer's group)",
                    plans.join(", ")
                );
            }
            if let Some(c) = cache_state(route, probe, path) {
                let _ = writeln!(
                    out,
                    "  cache: {} (key {}); this request now: {}",
                    c.cache,
                    c.key.join(", "),
                    c.answer
                );
            }
            if let Some(idem) = &route.idempotency {
                let p = &idem.policy;
                let _ = writeln!(
                    out,
                    "  idempotency: {} (keys {}; answers kept {})",
                    p.name,
                    if p.required { "required" } else { "optional" },
                    crate::config::units::Duration(p.ttl)
                );
            }
            for (name, value) in &route.request_headers.set {
                let _ = writeln!(
                    out,
                    "  sets request header {name}: {}",
                    shown(name.as_str(), value, &snap.source.secrets)
                );
            }
            for name in &route.request_headers.remove {
                let _ = writeln!(out, "  removes request header {name}");
            }
        }
    }
    if !ex.near_misses.is_empty() {
        let _ = writeln!(out, "near misses:");
        for (i, miss) in &ex.near_misses {
            let _ = writeln!(out, "  {}: {miss}", snap.routes[*i].name);
        }
    }
    out
}

/// One upstream's line: its balancing and targets, the upstream path and host, the timeout.
fn describe_upstream(
    out: &mut String,
    snap: &Snapshot,
    upstream: usize,
    route: &crate::snapshot::Route,
    path: &str,
) {
    let up = &snap.upstreams[upstream];
    let set = up.current();
    let targets: Vec<String> = set
        .targets
        .iter()
        .map(|t| match &t.origin {
            Origin::Url => format!("{} (weight {})", t.label, t.weight),
            o => format!("{} (weight {}, {})", t.label, t.weight, o.describe()),
        })
        .collect();
    let _ = writeln!(
        out,
        "  upstream: {} [{}] -> {}",
        up.name,
        up.strategy,
        if targets.is_empty() {
            "no targets (503 no_healthy_upstream)".to_string()
        } else {
            targets.join(", ")
        }
    );
    if let Targets::Discovered(d) = &up.targets {
        for (source, status) in d.sources().iter().zip(d.status()) {
            let _ = writeln!(
                out,
                "    {} {}: {}",
                source.kind(),
                source.label(),
                source_state(&status)
            );
        }
    }
    let upstream_path = route.rewrite.path(path).unwrap_or_else(|| path.to_string());
    let _ = writeln!(out, "  upstream path: {upstream_path}");
    if let Some(host) = &route.rewrite.host {
        let _ = writeln!(out, "  upstream host: {}", host.to_str().unwrap_or("?"));
    }
    let timeout = route.timeout.unwrap_or(up.request_timeout);
    let _ = writeln!(
        out,
        "  timeout: {}",
        crate::config::units::Duration(timeout)
    );
}

/// A source's state in one phrase: its addresses, or why it has none.
fn source_state(s: &SourceStatus) -> String {
    let found = s.found.len();
    match (&s.last_error, s.looked_up) {
        (_, false) => "not looked up yet".to_string(),
        (None, true) => format!("{found} address(es)"),
        (Some(e), true) if found > 0 => format!("{found} address(es) kept; last lookup: {e}"),
        (Some(e), true) => format!("no addresses ({e})"),
    }
}

/// A header value the route sets, as it may be shown (credentials redacted,
/// as in `GET /config`).
fn shown(name: &str, value: &http::HeaderValue, secrets: &[String]) -> String {
    crate::config::redact::header_value(name, value.to_str().unwrap_or("?"), secrets)
}

fn share(weight: u32, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        f64::from(weight) * 100.0 / total as f64
    }
}

/// Where a redirect route would send the probe (as a plain-HTTP request).
fn redirect_location(r: &crate::steering::Redirect, probe: &Probe, path: &str) -> String {
    let query = probe.target.split_once('?').map(|(_, q)| q);
    let from = crate::steering::Origin {
        scheme: "http",
        host: probe.host.as_deref(),
        path,
        query,
    };
    r.location(&from)
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .unwrap_or_else(|| "nowhere: the request has no host (400)".to_owned())
}

/// The consumer groups whose plan (rate limit or quota) can apply on a route:
/// every group with one, on a route with `auth` (empty otherwise).
fn consumer_plans<'a>(cfg: &'a Config, raw: &crate::config::schema::Route) -> Vec<&'a str> {
    if raw.auth.as_ref().is_none_or(|a| a.is_empty()) || cfg.consumers.is_empty() {
        return Vec::new();
    }
    cfg.consumer_groups
        .iter()
        .filter(|(_, g)| g.rate_limit.is_some() || g.quota.is_some())
        .map(|(name, _)| name.as_str())
        .collect()
}

fn list_or(items: Option<&[String]>, none: &str) -> String {
    match items {
        Some(v) if !v.is_empty() => v.join(", "),
        _ => none.to_string(),
    }
}

/// One upstream as `/explain` shows it.
fn upstream_json(
    snap: &Snapshot,
    upstream: usize,
    route: &crate::snapshot::Route,
    path: &str,
) -> serde_json::Value {
    let up = &snap.upstreams[upstream];
    let set = up.current();
    let targets: Vec<serde_json::Value> = set
        .targets
        .iter()
        .map(|t| {
            serde_json::json!({
                "url": &*t.url,
                "target": &*t.label,
                "weight": t.weight,
                "from": t.origin.describe(),
                "in_flight": t.state.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    let timeout = route.timeout.unwrap_or(up.request_timeout);
    serde_json::json!({
        "name": &*up.name,
        "balance": up.strategy.to_string(),
        "targets": targets,
        "discovery": crate::upstream::report::discovery(up),
        "path": route.rewrite.path(path).unwrap_or_else(|| path.to_string()),
        "host": route.rewrite.host.as_ref().and_then(|h| h.to_str().ok()),
        "timeout": crate::config::units::Duration(timeout).to_string(),
    })
}

/// What a `cache:` route's cache would do with the probe now, judged on
/// this instance's memory tier (the shared tier is not asked).
struct CacheState<'a> {
    cache: &'a str,
    key: &'a [String],
    /// `hit`, `stale`, `miss` or `bypass`.
    answer: &'static str,
    /// Seconds of freshness left (negative once stale) of the stored copy.
    ttl: Option<i64>,
}

fn cache_state<'a>(route: &'a Route, probe: &Probe, path: &str) -> Option<CacheState<'a>> {
    let rc = route.cache.as_ref()?;
    let query = probe.target.split_once('?').map(|(_, q)| q);
    let cacheable = matches!(probe.method, Method::GET | Method::HEAD)
        && !crate::cache::control::request_directives(&probe.headers).no_store;
    let credentials =
        probe.headers.contains_key(http::header::AUTHORIZATION) || route.policies.authenticates();
    let found = cacheable
        .then(|| {
            rc.peek(
                &rc.keys(&probe.method, path, query, probe.host.as_deref()),
                &probe.headers,
            )
        })
        .flatten()
        .filter(|e| crate::cache::route::RouteCache::usable(e, credentials));
    let now = std::time::SystemTime::now();
    let answer = match &found {
        _ if !cacheable => "bypass",
        None => "miss",
        Some(e) if e.is_fresh(now) => "hit",
        Some(e) if e.stale_within(now, e.stale_while_revalidate) && !e.revalidate => "stale",
        Some(_) => "revalidate",
    };
    Some(CacheState {
        cache: &rc.cache.name,
        key: rc.key_parts(),
        answer,
        ttl: found.map(|e| e.ttl(now)),
    })
}

/// The same answer as `explain`, as JSON for `GET /explain` on the admin API:
/// `{request, route, near_misses: [{route, reason}]}`; `route` is `null` when
/// nothing matches (the gateway would answer 404 no_route).
pub fn explain_json(snap: &Snapshot, cfg: &Config, probe: &Probe) -> serde_json::Value {
    use serde_json::{Value, json};
    let routed = match probe.route(snap) {
        Ok(r) => r,
        Err(message) => {
            return json!({
                "request": {
                    "method": probe.method.as_str(),
                    "host": probe.host,
                    "path": probe.target,
                },
                "version": snap.version,
                "rejected": { "status": 400, "error": "bad_request", "message": message },
                "route": null,
                "near_misses": [],
            });
        }
    };
    let (path, ex) = (routed.path.as_str(), &routed.explanation);
    let route = ex.chosen.map(|i| {
        let route = &snap.routes[i];
        let raw = &cfg.routes[i];
        let mut out = json!({
            "name": &*route.name,
            "auth": raw.auth.clone().unwrap_or_default(),
            "require_claims": raw.require_claims,
            "rate_limits": raw.rate_limit.clone().unwrap_or_default(),
            "consumer_plans": consumer_plans(cfg, raw),
            "idempotency": raw.idempotency,
            "cors": raw.cors,
            "ip_allow": raw.ip_allow,
            "ip_deny": raw.ip_deny,
            "request_headers": {
                "set": route.request_headers.set.iter()
                    .map(|(n, v)| (n.to_string(), Value::from(shown(n.as_str(), v, &snap.source.secrets))))
                    .collect::<serde_json::Map<_, _>>(),
                "remove": route.request_headers.remove.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            },
        });
        match &route.action {
            Action::Respond { status, body, .. } => {
                out["respond"] = json!({ "status": status.as_u16(), "body_bytes": body.len() });
                out["upstream"] = Value::Null;
            }
            Action::Redirect(r) => {
                out["redirect"] = json!({
                    "status": r.status.as_u16(),
                    "location": redirect_location(r, probe, path),
                });
                out["upstream"] = Value::Null;
            }
            Action::Proxy { upstream } => {
                out["upstream"] = upstream_json(snap, *upstream, route, path);
            }
            Action::Split(split) => {
                let total: u64 = split.sides().iter().map(|s| u64::from(s.weight)).sum();
                let sides: Vec<Value> = split
                    .sides()
                    .iter()
                    .map(|s| {
                        json!({
                            "upstream": &*s.name,
                            "weight": s.weight,
                            "share_percent": share(s.weight, total),
                            "detail": upstream_json(snap, s.upstream, route, path),
                        })
                    })
                    .collect();
                let decided = split.decided(&probe.headers);
                out["upstream"] = json!({
                    "split": sides,
                    "sticky": split.sticky().to_string(),
                    "chosen": decided.map(|i| &*split.sides()[i].name),
                    "chosen_by": if decided.is_some() { "sticky_key" } else { "weighted_draw" },
                    "path": route.rewrite.path(path).unwrap_or_else(|| path.to_string()),
                });
            }
        }
        if let Some(c) = cache_state(route, probe, path) {
            out["cache"] = json!({
                "use": c.cache,
                "key": c.key,
                "answer": c.answer,
                "ttl": c.ttl,
            });
        }
        if let Some(m) = &route.mirror {
            out["mirror"] = json!({
                "upstream": &*snap.upstreams[m.upstream].name,
                "percent": m.percent,
                "max_body": m.max_body,
                "max_in_flight": m.max_in_flight,
                "in_flight": m.in_flight(),
            });
        }
        out
    });
    let near_misses: Vec<Value> = ex
        .near_misses
        .iter()
        .map(|(i, miss)| json!({ "route": &*snap.routes[*i].name, "reason": miss.to_string() }))
        .collect();
    json!({
        "request": {
            "method": probe.method.as_str(),
            "host": probe.host,
            "path": probe.target,
            "normalized_path": routed.path,
            "match_path": routed.match_path.as_deref().unwrap_or(&routed.path),
        },
        "version": snap.version,
        "route": route,
        "near_misses": near_misses,
    })
}
