//! Turns a validated config into a runtime `Snapshot`: router tables built,
//! header names parsed, upstream pools and balancers created, metric handles
//! resolved. Runs once per config version, never per request.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;

use super::LoadedConfig;
use super::schema;
use crate::metrics::Metrics;
use crate::policy::{NamedPolicies, RoutePolicies};
use crate::router::{PathSpec, RouteSpec, Router};
use crate::snapshot::{Action, HeaderOps, RequestLimits, Rewrite, Route, Snapshot};
use crate::state::Carryover;
use crate::upstream::balancer::{Balancer, Strategy};
use crate::upstream::pool::PoolSettings;
use crate::upstream::{Target, Upstream};

/// A config that validated but still could not be built. Validation is meant to
/// catch all of these first; this is the backstop, never a panic.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    pub path: String,
    pub message: String,
}

fn err(path: impl Into<String>, message: impl std::fmt::Display) -> CompileError {
    CompileError {
        path: path.into(),
        message: message.to_string(),
    }
}

pub fn compile(
    loaded: &LoadedConfig,
    metrics: &Metrics,
    carry: &Carryover,
) -> Result<Snapshot, CompileError> {
    let cfg = &loaded.config;

    let mut upstreams = Vec::with_capacity(cfg.upstreams.len());
    for (name, up) in &cfg.upstreams {
        upstreams.push(compile_upstream(name, up, metrics, carry)?);
    }
    let upstream_index = |name: &str| upstreams.iter().position(|u| &*u.name == name);
    // Relative file names (jwks_file) are relative to the config file, as in
    // `LoadedConfig::files`.
    let base_dir = std::path::Path::new(&loaded.source)
        .parent()
        .unwrap_or(std::path::Path::new(""));
    let named =
        NamedPolicies::compile(cfg, base_dir, metrics, carry).map_err(|(p, m)| err(p, m))?;

    let mut specs = Vec::with_capacity(cfg.routes.len());
    let mut routes = Vec::with_capacity(cfg.routes.len());
    for (i, r) in cfg.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        specs.push(route_spec(r, &path)?);
        let action = match (&r.upstream, &r.respond) {
            (Some(up), _) => Action::Proxy {
                upstream: upstream_index(up).ok_or_else(|| {
                    err(
                        format!("{path}.upstream"),
                        format!("unknown upstream `{up}`"),
                    )
                })?,
            },
            (None, Some(resp)) => Action::Respond {
                status: StatusCode::from_u16(resp.status)
                    .map_err(|e| err(format!("{path}.respond.status"), e))?,
                headers: header_map(&resp.headers, &format!("{path}.respond.headers"))?,
                body: Bytes::from(resp.body.clone()),
            },
            (None, None) => return Err(err(path, "a route needs `upstream` or `respond`")),
        };
        let rewrite = match &r.rewrite {
            None => Rewrite::default(),
            Some(rw) => Rewrite {
                prefix: match (&rw.strip_prefix, &rw.replace_prefix) {
                    (Some(p), _) => Some((p.clone(), String::new())),
                    (None, Some(rp)) => Some((rp.from.clone(), rp.to.clone())),
                    (None, None) => None,
                },
                host: rw
                    .host
                    .as_deref()
                    .map(HeaderValue::from_str)
                    .transpose()
                    .map_err(|e| err(format!("{path}.rewrite.host"), e))?,
            },
        };
        routes.push(Route {
            name: r.name.as_str().into(),
            action,
            rewrite,
            timeout: r.timeout.map(|t| t.get()),
            policies: RoutePolicies::compile(r, &path, &named, metrics)
                .map_err(|(p, m)| err(p, m))?,
            request_headers: header_ops(&r.request_headers, &format!("{path}.request_headers"))?,
            response_headers: header_ops(&r.response_headers, &format!("{path}.response_headers"))?,
            metrics: metrics.route(&r.name),
        });
    }
    let router = Router::new(specs).map_err(|e| err("routes", e))?;

    let limits = &cfg.server.limits;
    let trusted_proxies = cfg
        .server
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, s)| parse_net(s).map_err(|m| err(format!("server.trusted_proxies[{i}]"), m)))
        .collect::<Result<_, _>>()?;

    Ok(Snapshot {
        version: loaded.version.clone(),
        loaded_at: SystemTime::now(),
        router,
        routes,
        upstreams,
        unmatched: metrics.route("_none"),
        limits: RequestLimits {
            max_header_bytes: limits.max_header_bytes.0,
            max_body_bytes: limits.max_body_bytes.0,
            body_read_timeout: limits.body_read_timeout.get(),
            max_concurrent_requests: limits.max_concurrent_requests,
        },
        trusted_proxies,
        jwks: named.jwks_sources(),
    })
}

/// A CIDR, or a bare address meaning just that host.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("expected an IP address or CIDR like 10.0.0.0/8, got `{s}`"))
}

fn compile_upstream(
    name: &str,
    up: &schema::Upstream,
    metrics: &Metrics,
    carry: &Carryover,
) -> Result<Upstream, CompileError> {
    let path = format!("upstreams.{name}");
    let mut targets = Vec::with_capacity(up.targets.len());
    for (i, t) in up.targets.iter().enumerate() {
        let authority =
            target_authority(&t.url).map_err(|m| err(format!("{path}.targets[{i}].url"), m))?;
        let label: Arc<str> = authority.as_str().into();
        targets.push(Target {
            url: t.url.as_str().into(),
            metrics: metrics.target(name, &label),
            state: carry.target(name, &t.url),
            authority,
            label,
        });
    }
    let strategy: Strategy = up
        .balance
        .parse()
        .map_err(|e| err(format!("{path}.balance"), e))?;
    // Targets are identified by URL, so removing one from the middle of the list
    // does not remap the hash keys of the others.
    let balancer = Balancer::with_ids(
        strategy,
        up.targets.iter().map(|t| (t.url.as_str(), t.weight)),
    );
    let pool_settings = PoolSettings {
        connect_timeout: up.timeouts.connect.get(),
        idle_timeout: up.timeouts.idle.get(),
        max_idle_per_target: up.pool.max_idle_per_target,
    };
    Ok(Upstream {
        name: name.into(),
        targets,
        balancer,
        client: carry.pool(name, pool_settings),
        pool_settings,
        request_timeout: up.timeouts.request.get(),
        max_concurrent: up.max_concurrent_requests.unwrap_or(0),
        in_flight: Default::default(),
    })
}

/// `http://host[:port][/]` -> `host:port` (port 80 when absent).
fn target_authority(url: &str) -> Result<Authority, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("expected an http:// URL, got `{url}`"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let authority: Authority = rest
        .parse()
        .map_err(|_| format!("`{url}` has no valid host:port"))?;
    if authority.port_u16().is_some() {
        Ok(authority)
    } else {
        format!("{}:80", authority.host())
            .parse()
            .map_err(|_| format!("`{url}` has no valid host:port"))
    }
}

fn route_spec(r: &schema::Route, path: &str) -> Result<RouteSpec, CompileError> {
    let m = &r.matcher;
    let path_spec = match (&m.path, &m.path_prefix, &m.path_regex) {
        (Some(p), _, _) => PathSpec::Exact(p.clone()),
        (None, Some(p), _) => PathSpec::Prefix(p.clone()),
        (None, None, Some(p)) => PathSpec::Regex(p.clone()),
        (None, None, None) => {
            return Err(err(
                format!("{path}.match"),
                "needs path, path_prefix or path_regex",
            ));
        }
    };
    let methods = m
        .methods
        .iter()
        .flatten()
        .map(|s| {
            Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                .map_err(|e| err(format!("{path}.match.methods"), e))
        })
        .collect::<Result<_, _>>()?;
    let headers = m
        .headers
        .iter()
        .map(|(k, v)| {
            HeaderName::from_bytes(k.as_bytes())
                .map(|n| (n, v.clone()))
                .map_err(|e| err(format!("{path}.match.headers.{k}"), e))
        })
        .collect::<Result<_, _>>()?;
    Ok(RouteSpec {
        name: r.name.clone(),
        path: path_spec,
        hosts: m
            .hosts
            .iter()
            .flatten()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        methods,
        headers,
        query: m
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

fn header_map(
    map: &std::collections::BTreeMap<String, String>,
    path: &str,
) -> Result<HeaderMap, CompileError> {
    let mut out = HeaderMap::with_capacity(map.len());
    for (k, v) in map {
        let (name, value) = header_pair(k, v, path)?;
        out.insert(name, value);
    }
    Ok(out)
}

fn header_pair(k: &str, v: &str, path: &str) -> Result<(HeaderName, HeaderValue), CompileError> {
    let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| err(format!("{path}.{k}"), e))?;
    let value = HeaderValue::from_str(v).map_err(|e| err(format!("{path}.{k}"), e))?;
    Ok((name, value))
}

fn header_ops(ops: &schema::HeaderOps, path: &str) -> Result<HeaderOps, CompileError> {
    Ok(HeaderOps {
        set: ops
            .set
            .iter()
            .map(|(k, v)| header_pair(k, v, &format!("{path}.set")))
            .collect::<Result<_, _>>()?,
        remove: ops
            .remove
            .iter()
            .map(|k| {
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| err(format!("{path}.remove"), e))
            })
            .collect::<Result<_, _>>()?,
    })
}
