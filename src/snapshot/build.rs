//! Turns a validated config into a runtime `Snapshot`: router tables built,
//! header names parsed, upstream pools and balancers created, metric handles
//! resolved. Runs once per config version, never per request.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::cache::route::RouteCache;
use crate::cache::shared::SharedTier;
use crate::cache::store::Cache;
use crate::compression::Compression;
use crate::config::LoadedConfig;
use crate::config::schema;
use crate::config::schema::{HeaderMatch, RouteUpstream};
use crate::config::values::Encoding;
use crate::config::values::{KeyKind, parse_net};
use crate::idempotency::RouteIdempotency;
use crate::metrics::Metrics;
use crate::policy::consumers::{Directory, Group};
use crate::policy::quota::{self, QuotaPolicy};
use crate::policy::rate_limit::{
    LocalLimiter, RateLimitPolicy, RedisLimiter, Store, definition, quota,
};
use crate::policy::{NamedPolicies, RouteLimit, RoutePolicies};
use crate::router::{HeaderCond, PathSpec, RouteSpec, Router};
use crate::snapshot::carryover::Carryover;
use crate::snapshot::{
    Action, BodyLimits, HeaderOps, RequestLimits, Rewrite, Route, Snapshot, WebSocketLimits,
};
use crate::steering::{MirrorPolicy, Redirect, Split, Sticky};
use crate::upstream::balancer::Strategy;
use crate::upstream::circuit::{CircuitSettings, DEFAULT_FAILURE_STATUSES};
use crate::upstream::discovery::{self, Discovered, Query, Source};
use crate::upstream::health::{DEFAULT_EXPECT, HealthSettings};
use crate::upstream::outlier::OutlierSettings;
use crate::upstream::pool::{PoolSettings, Protocol, TlsSettings};
use crate::upstream::retry::{
    DEFAULT_BACKOFF, DEFAULT_BUDGET_PERCENT, DEFAULT_METHODS, DEFAULT_ON, RetryPolicy,
};
use crate::upstream::{Origin, Target, TargetSet, Targets, Upstream};

/// A config that validated but still could not be built. Validation is meant to
/// catch all of these first; this is the backstop, never a panic.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    pub path: String,
    pub message: String,
}

/// A route's `compress:` list (validated: known names, no repeats).
fn compression(
    names: &[String],
    route: &str,
    path: &str,
    metrics: &Metrics,
) -> Result<Compression, CompileError> {
    let encodings = names
        .iter()
        .map(|n| {
            Encoding::from_name(n).ok_or_else(|| {
                err(
                    format!("{path}.compress"),
                    format!("unknown encoding `{n}`"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Compression::new(&encodings, |e| {
        metrics.compressed(route, e.name())
    }))
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

    let resolvers = cfg.resolvers.as_ref().map(|list| {
        list.iter()
            .filter_map(|r| crate::config::values::parse_resolver(r).ok())
            .collect::<Vec<_>>()
    });
    let mut upstreams = Vec::with_capacity(cfg.upstreams.len());
    for (name, up) in &cfg.upstreams {
        let ctx = UpstreamContext {
            metrics,
            carry,
            resolve: &|p| loaded.resolve(p),
            resolvers: resolvers.as_deref(),
        };
        upstreams.push(compile_upstream(name, up, &ctx)?);
    }
    let mut rate_limits = Vec::with_capacity(cfg.rate_limits.len());
    for (name, rl) in &cfg.rate_limits {
        let path = format!("rate_limits.{name}");
        let policy = carry
            .rate_limit(name, definition(rl), || {
                rate_limit_policy(name, rl, cfg.redis.as_ref(), metrics)
            })
            .map_err(|m| err(path, m))?;
        rate_limits.push(policy);
    }
    let mut idempotency = Vec::with_capacity(cfg.idempotency.len());
    for (name, p) in &cfg.idempotency {
        let policy = carry
            .idempotency(
                name,
                crate::idempotency::definition(p, cfg.redis.as_ref()),
                || crate::idempotency::Policy::new(name, p, cfg.redis.as_ref()),
            )
            .map_err(|m| err(format!("idempotency.{name}"), m))?;
        idempotency.push(policy);
    }
    let mut caches = Vec::with_capacity(cfg.caches.len());
    for (name, c) in &cfg.caches {
        let definition = serde_json::to_string(c).unwrap_or_default();
        let cache = carry
            .cache(name, definition, || {
                let handles = metrics.cache(name);
                let shared = c
                    .redis
                    .as_ref()
                    .map(|r| SharedTier::new(name, r, handles.store_errors.clone()).map(Arc::new))
                    .transpose()?;
                Cache::new(name, c.max_bytes.0, c.max_object_bytes.0, shared, handles)
            })
            .map_err(|m| err(format!("caches.{name}"), m))?;
        cache.start();
        caches.push(cache);
    }
    let by_name: std::collections::HashMap<&str, usize> = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| (&*u.name, i))
        .collect();
    let upstream_index = |name: &str| by_name.get(name).copied();
    // Relative file names (jwks_file) are relative to the config file, as in
    // `LoadedConfig::files`.
    let base_dir = std::path::Path::new(&loaded.source)
        .parent()
        .unwrap_or(std::path::Path::new(""));
    let mut named =
        NamedPolicies::compile(cfg, base_dir, metrics, carry).map_err(|(p, m)| err(p, m))?;
    let mut quotas = Vec::new();
    let groups = consumer_groups(cfg, carry, metrics, &mut rate_limits, &mut quotas)?;
    named.consumers = Directory::compile(cfg, &named, groups)
        .map_err(|(p, m)| err(p, m))?
        .map(Arc::new);

    let mut specs = Vec::with_capacity(cfg.routes.len());
    let mut routes = Vec::with_capacity(cfg.routes.len());
    for (i, r) in cfg.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        specs.push(route_spec(r, &path)?);
        let known = |name: &str, at: String| {
            upstream_index(name).ok_or_else(|| err(at, format!("unknown upstream `{name}`")))
        };
        let action = match (&r.upstream, &r.respond) {
            (Some(RouteUpstream::Name(up)), _) => Action::Proxy {
                upstream: known(up, format!("{path}.upstream"))?,
            },
            (Some(RouteUpstream::Split(split)), _) => {
                let sides = split
                    .split
                    .iter()
                    .enumerate()
                    .map(|(j, side)| {
                        let at = format!("{path}.upstream.split[{j}].upstream");
                        let idx = known(&side.upstream, at)?;
                        Ok((idx, upstreams[idx].name.clone(), side.weight))
                    })
                    .collect::<Result<_, CompileError>>()?;
                let sticky = Sticky::parse(split.sticky.as_deref().unwrap_or("none"))
                    .map_err(|m| err(format!("{path}.upstream.sticky"), m))?;
                Action::Split(Box::new(Split::new(sides, sticky)))
            }
            (None, Some(resp)) => Action::Respond {
                status: StatusCode::from_u16(resp.status)
                    .map_err(|e| err(format!("{path}.respond.status"), e))?,
                headers: header_map(&resp.headers, &format!("{path}.respond.headers"))?,
                body: Bytes::from(resp.body.clone()),
            },
            (None, None) => match &r.redirect {
                Some(rd) => Action::Redirect(redirect(rd, &path)?),
                None => {
                    return Err(err(
                        path,
                        "a route needs `upstream`, `respond` or `redirect`",
                    ));
                }
            },
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
                regex: rw
                    .path_regex
                    .as_ref()
                    .map(|p| {
                        regex::Regex::new(&p.pattern)
                            .map(|re| (re, p.replace.clone()))
                            .map_err(|e| err(format!("{path}.rewrite.path_regex.pattern"), e))
                    })
                    .transpose()?,
            },
        };
        let mirror = r
            .mirror
            .as_ref()
            .map(|m| {
                let upstream = known(&m.upstream, format!("{path}.mirror.upstream"))?;
                Ok(MirrorPolicy::new(
                    upstream,
                    m.percent,
                    m.max_body.0,
                    m.max_in_flight,
                    metrics.mirror(&r.name),
                ))
            })
            .transpose()?;
        routes.push(Route {
            name: r.name.as_str().into(),
            action,
            rewrite,
            timeout: r.timeout.map(|t| t.get()),
            body_limits: BodyLimits {
                max_bytes: r
                    .max_body_bytes
                    .unwrap_or(cfg.server.limits.max_body_bytes)
                    .0,
                read_timeout: r
                    .body_read_timeout
                    .unwrap_or(cfg.server.limits.body_read_timeout)
                    .get(),
            },
            mirror,
            websocket: r
                .websocket
                .as_ref()
                .map(|w| WebSocketLimits {
                    max_message: w.max_message_bytes.map(|b| b.0),
                    idle: w.idle_timeout.map(|t| t.get()),
                })
                .unwrap_or_default(),
            policies: {
                let mut policies = RoutePolicies::compile(r, &path, &named, metrics)
                    .map_err(|(p, m)| err(p, m))?;
                policies.rate_limits = r
                    .rate_limit
                    .iter()
                    .flatten()
                    .map(|name| {
                        let policy = rate_limits
                            .iter()
                            .find(|p| &*p.name == name.as_str())
                            .ok_or_else(|| {
                                err(
                                    format!("{path}.rate_limit"),
                                    format!("unknown rate limit `{name}`"),
                                )
                            })?;
                        Ok(RouteLimit {
                            policy: policy.clone(),
                            refused: metrics.rate_limited(&r.name, name),
                        })
                    })
                    .collect::<Result<_, CompileError>>()?;
                policies
            },
            request_headers: header_ops(&r.request_headers, &format!("{path}.request_headers"))?,
            response_headers: header_ops(&r.response_headers, &format!("{path}.response_headers"))?,
            compress: r
                .compress
                .as_deref()
                .map(|names| compression(names, &r.name, &path, metrics))
                .transpose()?,
            idempotency: r
                .idempotency
                .as_deref()
                .map(|name| {
                    let policy =
                        idempotency
                            .iter()
                            .find(|p| &*p.name == name)
                            .ok_or_else(|| {
                                err(
                                    format!("{path}.idempotency"),
                                    format!("unknown idempotency policy `{name}`"),
                                )
                            })?;
                    Ok(Arc::new(RouteIdempotency {
                        policy: policy.clone(),
                        route: r.name.as_str().into(),
                        metrics: metrics.idempotency(&r.name),
                    }))
                })
                .transpose()?,
            cache: r
                .cache
                .as_ref()
                .map(|rc| {
                    let cache = caches
                        .iter()
                        .find(|c| &*c.name == rc.cache.as_str())
                        .ok_or_else(|| {
                            err(
                                format!("{path}.cache.use"),
                                format!("unknown cache `{}`", rc.cache),
                            )
                        })?;
                    Ok(RouteCache::new(&r.name, rc, cache.clone(), |result| {
                        metrics.cache_requests(&r.name, result)
                    }))
                })
                .transpose()?,
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
        rate_limits,
        quotas,
        caches,
        idempotency,
        unmatched: metrics.route("_none"),
        limits: RequestLimits {
            max_header_bytes: limits.max_header_bytes.0,
            max_body_bytes: limits.max_body_bytes.0,
            body_read_timeout: limits.body_read_timeout.get(),
            max_concurrent_requests: limits.max_concurrent_requests,
            idle_timeout: limits.idle_timeout.get(),
        },
        trusted_proxies,
        path_rules: cfg.server.path_normalization,
        source: Arc::new(loaded.clone()),
        jwks: named.jwks_sources(),
        #[cfg(feature = "otel")]
        spans: span_exporter(cfg, metrics, carry)?,
        https_redirects: cfg
            .server
            .listeners
            .iter()
            .filter(|l| l.redirect_to_https)
            .map(|l| l.name.as_str().into())
            .collect(),
        proxy_protocol: cfg
            .server
            .listeners
            .iter()
            .filter_map(|l| {
                let pp = l.proxy_protocol.as_ref()?;
                let settings = crate::proxy_protocol::ProxyProtocol {
                    trusted: pp
                        .trusted
                        .iter()
                        .filter_map(|n| parse_net(n).ok())
                        .collect(),
                    timeout: pp
                        .timeout
                        .unwrap_or(cfg.server.limits.header_read_timeout)
                        .get(),
                    errors: metrics.proxy_protocol_errors(&l.name),
                };
                Some((Arc::from(l.name.as_str()), Arc::new(settings)))
            })
            .collect(),
    })
}

/// A route's `redirect:` as the request path uses it.
fn redirect(rd: &crate::config::schema::Redirect, path: &str) -> Result<Redirect, CompileError> {
    let scheme = match rd.scheme.as_deref() {
        None => None,
        Some("http") => Some("http"),
        Some("https") => Some("https"),
        Some(other) => {
            return Err(err(
                format!("{path}.redirect.scheme"),
                format!("expected http or https, got `{other}`"),
            ));
        }
    };
    Ok(Redirect {
        scheme,
        host: rd.host.clone(),
        path: rd.path.clone(),
        status: StatusCode::from_u16(rd.status)
            .map_err(|e| err(format!("{path}.redirect.status"), e))?,
        strip_query: rd.strip_query,
    })
}

/// The span exporter for `tracing.otlp_endpoint`: the running one while its
/// settings are unchanged.
#[cfg(feature = "otel")]
fn span_exporter(
    cfg: &schema::Config,
    metrics: &Metrics,
    carry: &Carryover,
) -> Result<Option<Arc<crate::otel::SpanExporter>>, CompileError> {
    let at = "tracing.otlp_endpoint";
    let settings = match &cfg.tracing {
        Some(t) => crate::otel::ExportSettings::from_config(t).map_err(|m| err(at, m))?,
        None => None,
    };
    settings
        .map(|s| carry.span_exporter(s, &metrics.spans))
        .transpose()
        .map_err(|m| err(at, m))
}

/// The TLS client settings of an upstream, its CA file read now (so a changed
/// CA makes a new pool on reload).
fn upstream_tls(
    name: &str,
    up: &schema::Upstream,
    resolve: &dyn Fn(&str) -> PathBuf,
    path: &str,
) -> Result<TlsSettings, CompileError> {
    let Some(tls) = &up.tls else {
        return Ok(TlsSettings::default());
    };
    if tls.insecure_skip_verify {
        tracing::warn!(
            upstream = %name,
            "upstreams.{name}.tls.insecure_skip_verify is on: the certificates of this upstream's \
             https targets are NOT verified, anyone on the path can impersonate them; for lab use only"
        );
    }
    let ca = match &tls.ca {
        Some(ca) => Some(
            crate::tls::read_certs(&resolve(ca)).map_err(|m| err(format!("{path}.tls.ca"), m))?,
        ),
        None => None,
    };
    Ok(TlsSettings {
        ca,
        server_name: tls.server_name.clone(),
        insecure_skip_verify: tls.insecure_skip_verify,
    })
}

/// What compiling an upstream needs besides its section.
struct UpstreamContext<'a> {
    metrics: &'a Metrics,
    carry: &'a Carryover,
    resolve: &'a dyn Fn(&str) -> PathBuf,
    /// `resolvers:`, for dns and srv targets.
    resolvers: Option<&'a [std::net::SocketAddr]>,
}

fn compile_upstream(
    name: &str,
    up: &schema::Upstream,
    ctx: &UpstreamContext<'_>,
) -> Result<Upstream, CompileError> {
    let UpstreamContext { metrics, carry, .. } = *ctx;
    let path = format!("upstreams.{name}");
    let pool_settings = PoolSettings {
        connect_timeout: up.timeouts.connect.get(),
        idle_timeout: up.timeouts.idle.get(),
        max_idle_per_target: up.pool.max_idle_per_target,
        tls: upstream_tls(name, up, ctx.resolve, &path)?,
        protocol: match up.protocol.as_str() {
            "h2" => Protocol::H2,
            _ => Protocol::Http1,
        },
    };
    let client = carry
        .pool(name, pool_settings.clone())
        .map_err(|m| err(&path, m))?;
    let mut fixed = Vec::with_capacity(up.targets.len());
    let mut sources = Vec::new();
    for (i, t) in up.targets.iter().enumerate() {
        let at = format!("{path}.targets[{i}]");
        if let Some(source) = discovery_source(t, &at)? {
            sources.push(source);
            continue;
        }
        let url = t.url.as_deref().unwrap_or_default();
        let (scheme, authority) = target_authority(url).map_err(|m| err(format!("{at}.url"), m))?;
        let label: Arc<str> = authority.as_str().into();
        let state = carry.target(name, url);
        let target_metrics = metrics.target(name, &label);
        target_metrics.healthy.set(i64::from(
            up.health_check.is_none() || state.healthy.load(Ordering::Relaxed),
        ));
        target_metrics
            .circuit_state
            .set(state.circuit.state().gauge());
        fixed.push(Target {
            url: url.into(),
            ejections: up.outlier.as_ref().map(|_| metrics.ejections(name, &label)),
            metrics: target_metrics,
            state,
            endpoint: client.endpoint(&scheme, &authority),
            scheme,
            authority,
            label,
            weight: t.weight,
            priority: 0,
            origin: Origin::Url,
        });
    }
    let strategy: Strategy = up
        .balance
        .parse()
        .map_err(|e| err(format!("{path}.balance"), e))?;
    let targets = if sources.is_empty() {
        Targets::Fixed(TargetSet::new(strategy.clone(), fixed))
    } else {
        let lookups = sources
            .iter()
            .map(|s| metrics.dns_lookups(name, &s.label()))
            .collect();
        let builder = discovery::Builder {
            upstream: name.into(),
            strategy: strategy.clone(),
            fixed,
            client: client.clone(),
            metrics: metrics.target_families(),
            health: up.health_check.is_some(),
            outlier: up.outlier.is_some(),
        };
        let previous = carry.discovered(name);
        Targets::Discovered(Discovered::new(
            builder,
            sources,
            ctx.resolvers.map(<[_]>::to_vec),
            lookups,
            previous.as_deref(),
        ))
    };
    Ok(Upstream {
        health: health_settings(up, &path)?,
        circuit: up.circuit_breaker.as_ref().map(|c| CircuitSettings {
            consecutive_failures: c.consecutive_failures,
            failure_statuses: c
                .failure_statuses
                .clone()
                .unwrap_or_else(|| DEFAULT_FAILURE_STATUSES.to_vec()),
            open_for: c.open_for.get(),
            half_open_max_requests: c.half_open_max_requests,
        }),
        outlier: up.outlier.as_ref().map(|o| OutlierSettings {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_connect_errors: o.consecutive_connect_errors,
            base_ejection: o.base_ejection.get(),
            max_ejection_percent: o.max_ejection_percent,
        }),
        eject_lock: Default::default(),
        slow_start: up.slow_start.map(|d| d.get()),
        retry_after_max: up.retry_after.as_ref().map(|r| r.max.get()),
        retry: up
            .retries
            .as_ref()
            .map(|r| retry_policy(name, r, metrics, &format!("{path}.retries")))
            .transpose()?,
        budget: carry.budget(name),
        name: name.into(),
        targets,
        strategy,
        client,
        pool_settings,
        request_timeout: up.timeouts.request.get(),
        max_concurrent: up.max_concurrent_requests.unwrap_or(0),
        in_flight: Default::default(),
    })
}

/// The lookup a `dns:` or `srv:` entry asks for (`None` for a `url:` one).
fn discovery_source(t: &schema::Target, at: &str) -> Result<Option<Source>, CompileError> {
    let query = match (&t.dns, &t.srv) {
        (Some(dns), _) => {
            let (host, port) = crate::config::values::parse_dns_target(dns)
                .map_err(|m| err(format!("{at}.dns"), m))?;
            Query::Dns { host, port }
        }
        (None, Some(srv)) => Query::Srv {
            name: srv.to_ascii_lowercase(),
        },
        (None, None) => return Ok(None),
    };
    Ok(Some(Source {
        query,
        weight: t.weight,
        refresh: t.refresh.map_or(discovery::DEFAULT_REFRESH, |d| d.get()),
        keep_stale: t
            .keep_stale
            .map_or(discovery::DEFAULT_KEEP_STALE, |d| d.get()),
    }))
}

fn health_settings(
    up: &schema::Upstream,
    path: &str,
) -> Result<Option<HealthSettings>, CompileError> {
    let Some(h) = &up.health_check else {
        return Ok(None);
    };
    Ok(Some(HealthSettings {
        path: h
            .path
            .parse()
            .map_err(|e| err(format!("{path}.health_check.path"), e))?,
        interval: h.interval.get(),
        timeout: h.timeout.get(),
        healthy_threshold: h.healthy_threshold,
        unhealthy_threshold: h.unhealthy_threshold,
        expect: h.expect_status.unwrap_or(DEFAULT_EXPECT),
        fail_open: h.fail_open,
    }))
}

fn retry_policy(
    upstream: &str,
    r: &schema::Retries,
    metrics: &Metrics,
    path: &str,
) -> Result<RetryPolicy, CompileError> {
    let methods = match &r.methods {
        None => DEFAULT_METHODS.to_vec(),
        Some(ms) => ms
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|e| err(format!("{path}.methods"), e))
            })
            .collect::<Result<_, _>>()?,
    };
    let on: Vec<String> = match &r.on {
        Some(on) => on.iter().map(ToString::to_string).collect(),
        None => DEFAULT_ON.iter().map(|s| s.to_string()).collect(),
    };
    let mut policy = RetryPolicy {
        attempts: r.attempts,
        methods,
        on_connect_error: false,
        on_timeout: false,
        on_reset: false,
        on_statuses: Vec::new(),
        connect_error_counter: metrics.retries(upstream, "connect_error"),
        timeout_counter: metrics.retries(upstream, "timeout"),
        reset_counter: metrics.retries(upstream, "reset"),
        backoff: r.backoff.map_or(DEFAULT_BACKOFF, |b| b.get()),
        budget_percent: r.budget_percent.unwrap_or(DEFAULT_BUDGET_PERCENT),
    };
    for (i, o) in on.iter().enumerate() {
        match o.as_str() {
            "connect_error" => policy.on_connect_error = true,
            "timeout" => policy.on_timeout = true,
            "reset" => policy.on_reset = true,
            status => {
                let code: u16 = status
                    .parse()
                    .map_err(|_| err(format!("{path}.on[{i}]"), "unknown retry condition"))?;
                policy
                    .on_statuses
                    .push((code, metrics.retries(upstream, status)));
            }
        }
    }
    Ok(policy)
}

/// `http(s)://host[:port][/]` -> (scheme, `host:port`), the port 80 or 443
/// when absent.
fn target_authority(url: &str) -> Result<(Scheme, Authority), String> {
    let (scheme, rest, port) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::HTTP, rest, 80)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::HTTPS, rest, 443)
    } else {
        return Err(format!("expected an http:// or https:// URL, got `{url}`"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let authority: Authority = rest
        .parse()
        .map_err(|_| format!("`{url}` has no valid host:port"))?;
    if authority.port_u16().is_some() {
        Ok((scheme, authority))
    } else {
        format!("{}:{port}", authority.host())
            .parse()
            .map(|a| (scheme, a))
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
            let at = || format!("{path}.match.headers.{k}");
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| err(at(), e))?;
            let cond = match v {
                HeaderMatch::Exact(v) => HeaderCond::Exact(v.clone()),
                HeaderMatch::Present { present } => HeaderCond::Present(*present),
                HeaderMatch::Regex { regex } => {
                    HeaderCond::Regex(regex::Regex::new(regex).map_err(|e| err(at(), e))?)
                }
            };
            Ok((name, cond))
        })
        .collect::<Result<_, CompileError>>()?;
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
        cookies: m
            .cookies
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

/// The consumer groups' plans. Their rate limits join `rate_limits` and
/// their quotas `quotas` (so reloads keep both while unchanged).
fn consumer_groups(
    cfg: &schema::Config,
    carry: &Carryover,
    metrics: &Metrics,
    rate_limits: &mut Vec<Arc<RateLimitPolicy>>,
    quotas: &mut Vec<Arc<QuotaPolicy>>,
) -> Result<Vec<Arc<Group>>, CompileError> {
    let mut groups = Vec::with_capacity(cfg.consumer_groups.len());
    for (index, (name, g)) in cfg.consumer_groups.iter().enumerate() {
        let at = format!("consumer_groups.{name}");
        let limit = g
            .rate_limit
            .as_ref()
            .map(|rl| {
                let rl = rl.as_policy();
                let policy = format!("group:{name}");
                carry
                    .rate_limit(&policy, definition(&rl), || {
                        rate_limit_policy(&policy, &rl, cfg.redis.as_ref(), metrics)
                    })
                    .map_err(|m| err(format!("{at}.rate_limit"), m))
            })
            .transpose()?;
        rate_limits.extend(limit.clone());
        let quota = g
            .quota
            .as_ref()
            .map(|q| {
                let redis = cfg.redis.as_ref().ok_or_else(|| {
                    err(
                        format!("{at}.quota"),
                        "a quota is counted in Redis: it needs the top-level `redis` section",
                    )
                })?;
                carry
                    .quota(name, quota::definition(q, redis), || {
                        let errors = metrics.rate_limit_store_errors(&format!("quota:{name}"));
                        QuotaPolicy::new(name, q, redis, errors)
                    })
                    .map_err(|m| err(format!("{at}.quota"), m))
            })
            .transpose()?;
        quotas.extend(quota.clone());
        groups.push(Arc::new(Group {
            name: name.as_str().into(),
            index,
            limit,
            quota,
        }));
    }
    Ok(groups)
}

fn rate_limit_policy(
    name: &str,
    rl: &schema::RateLimit,
    redis: Option<&schema::Redis>,
    metrics: &Metrics,
) -> Result<RateLimitPolicy, String> {
    let key: KeyKind = rl.key.parse()?;
    let burst = rl
        .burst
        .unwrap_or_else(|| u32::try_from(rl.rate.count).unwrap_or(u32::MAX));
    let quota = quota(&rl.rate, burst).ok_or("the rate and burst do not make a valid bucket")?;
    let store = match rl.store.as_str() {
        "local" => {
            let limiter = Arc::new(LocalLimiter::new(quota, key == KeyKind::Route, rl.max_keys));
            spawn_sweeper(&limiter);
            Store::Local(limiter)
        }
        "redis" => {
            let redis = redis.ok_or("`store: redis` needs the top-level `redis` section")?;
            Store::Redis(RedisLimiter::new(
                &redis.url,
                redis.timeout.get(),
                name,
                quota,
            )?)
        }
        other => return Err(format!("unknown store `{other}`; expected local or redis")),
    };
    Ok(RateLimitPolicy {
        name: name.into(),
        key,
        store,
        deny_on_store_error: rl.on_store_error == "deny",
        store_errors: metrics.rate_limit_store_errors(name),
    })
}

/// Frees idle keys of a local limiter every few seconds, for as long as the
/// limiter exists (the task holds only a weak reference).
fn spawn_sweeper(limiter: &Arc<LocalLimiter>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(limiter);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(limiter) => limiter.sweep(),
                None => break,
            }
        }
    });
}
