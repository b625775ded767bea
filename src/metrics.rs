//! Prometheus metrics (docs/reference/metrics.md) on a registry the app owns.
//!
//! The request path never formats label strings for route or target labels:
//! `compile` resolves per-route and per-target handles once per config version
//! (`RouteMetrics`, `TargetMetrics`), and only the `(method, status)` pair of
//! `tollgate_requests_total` is resolved when a request ends, from a per-route
//! cache filled on first use.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets from 100 µs to 10 s: a gateway's own latency sits at the bottom, a
/// slow upstream at the top.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    requests_total: IntCounterVec,
    request_duration: HistogramVec,
    upstream_requests_total: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_healthy: IntGaugeVec,
    circuit_state: IntGaugeVec,
    retries_total: IntCounterVec,
    pub in_flight: IntGauge,
    active_connections: IntGaugeVec,
    parked_connections: IntGaugeVec,
    tls_handshake_failures: IntCounterVec,
    proxy_protocol_errors: IntCounterVec,
    malformed_requests: IntCounterVec,
    config_info: IntGaugeVec,
    pub config_reloads_success: IntCounter,
    pub config_reloads_failure: IntCounter,
    pub config_last_reload_success: IntGauge,
    rate_limited_total: IntCounterVec,
    rate_limit_store_errors: IntCounterVec,
    access_log_dropped: IntCounter,
    auth_failures_total: IntCounterVec,
    jwks_refreshes_total: IntCounterVec,
    compressed_total: IntCounterVec,
    idempotency_total: IntCounterVec,
    mirror_total: IntCounterVec,
    outlier_ejections: IntCounterVec,
    dns_lookups: IntCounterVec,
    jwks_age: GaugeVec,
    introspection_requests_total: IntCounterVec,
    external_auth_total: IntCounterVec,
    consumer_requests_total: IntCounterVec,
    cache: CacheFamilies,
    websocket: WebSocketFamilies,
    #[cfg(feature = "otel")]
    pub spans: crate::otel::SpanMetrics,
}

/// `tollgate_mirror_requests_total` handles of one route, one per result.
#[derive(Clone)]
pub struct MirrorMetrics {
    /// The shadow answered (below 500).
    pub ok: IntCounter,
    /// The shadow answered 5xx.
    pub http_5xx: IntCounter,
    /// No connection, a reset, or no usable target of the shadow.
    pub error: IntCounter,
    /// The shadow took longer than its request timeout.
    pub timeout: IntCounter,
    /// Not mirrored: the body is over `max_body` or of unknown length.
    pub too_large: IntCounter,
    /// Not mirrored: `max_in_flight` copies were already on their way.
    pub overloaded: IntCounter,
}

/// `tollgate_idempotency_total` handles of one route, one per result.
#[derive(Clone)]
pub struct IdempotencyMetrics {
    /// An answer was stored for replay.
    pub stored: IntCounter,
    /// A stored answer was replayed; the upstream was not called.
    pub replayed: IntCounter,
    /// The key was in use by a request in flight (409).
    pub conflict: IntCounter,
    /// The key was used before for another request (422).
    pub mismatch: IntCounter,
    /// An unsafe request came without a key.
    pub missing: IntCounter,
    /// The key was malformed (400).
    pub invalid: IntCounter,
    /// The request was forwarded but its answer not stored (the key released).
    pub not_stored: IntCounter,
    /// The store failed (Redis unreachable or slow).
    pub store_error: IntCounter,
}

/// `tollgate_auth_failures_total` handles of one route.
#[derive(Clone)]
pub struct AuthFailureMetrics {
    pub missing: IntCounter,
    pub invalid: IntCounter,
    pub expired: IntCounter,
    pub forbidden: IntCounter,
}

impl AuthFailureMetrics {
    pub fn count(&self, reason: crate::error::AuthFailure) {
        use crate::error::AuthFailure;
        match reason {
            AuthFailure::Missing => self.missing.inc(),
            AuthFailure::Invalid => self.invalid.inc(),
            AuthFailure::Expired => self.expired.inc(),
        }
    }
}

/// `tollgate_introspection_requests_total` of one policy: calls that said
/// `active: true`, `active: false`, or failed (no answer, not 200, no `active`).
#[derive(Clone)]
pub struct IntrospectionMetrics {
    pub active: IntCounter,
    pub inactive: IntCounter,
    pub error: IntCounter,
}

/// `tollgate_external_auth_total` of one policy: the service allowed, denied,
/// or gave no answer (timeout, connection error).
#[derive(Clone)]
pub struct ExternalAuthMetrics {
    pub allow: IntCounter,
    pub deny: IntCounter,
    pub error: IntCounter,
}

/// The JWKS metrics of one JWT policy.
#[derive(Clone)]
pub struct JwksMetrics {
    pub success: IntCounter,
    pub failure: IntCounter,
    /// Seconds since the key set was last fetched successfully.
    pub age: Gauge,
}

/// The `method` label values: the standard methods, and `OTHER` for the rest so
/// that clients cannot create series at will.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// Statuses whose counters are cached per route (sorted, for binary search).
/// Anything else is looked up in the metric family, which takes its lock.
const CACHED_STATUSES: [u16; 28] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413,
    415, 422, 429, 431, 500, 501, 502, 503, 504,
];

/// Index of `m` in the `method` label values.
pub fn method_index(m: &http::Method) -> usize {
    use http::Method;
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// Handles of one route, resolved when the config compiles.
pub struct RouteMetrics {
    requests_total: IntCounterVec,
    route: std::sync::Arc<str>,
    /// `(method, status)` counters, filled on first use: the metric family's
    /// own lookup hashes the labels under a lock shared by every route.
    counters: OnceLock<Box<[OnceLock<IntCounter>]>>,
    pub duration: Histogram,
    websocket_families: WebSocketFamilies,
    /// Resolved at the route's first WebSocket request, so routes that never
    /// see one export no WebSocket series.
    websocket: OnceLock<WebSocketMetrics>,
}

impl RouteMetrics {
    /// The route's WebSocket handles (resolved once per config version).
    pub fn websocket(&self) -> &WebSocketMetrics {
        self.websocket
            .get_or_init(|| self.websocket_families.route(&self.route))
    }

    /// Counts one finished request.
    pub fn count(&self, method: &http::Method, status: http::StatusCode) {
        let m = method_index(method);
        let labels = |m: usize| [&*self.route, METHODS[m], status.as_str()];
        let Ok(s) = CACHED_STATUSES.binary_search(&status.as_u16()) else {
            self.requests_total.with_label_values(&labels(m)).inc();
            return;
        };
        let table = self.counters.get_or_init(|| {
            (0..METHODS.len() * CACHED_STATUSES.len())
                .map(|_| OnceLock::new())
                .collect()
        });
        table[m * CACHED_STATUSES.len() + s]
            .get_or_init(|| self.requests_total.with_label_values(&labels(m)))
            .inc();
    }
}

/// How an attempt on an upstream target ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Http5xx,
    ConnectError,
    Timeout,
    Reset,
}

/// Handles of one upstream target, resolved when the config compiles.
#[derive(Clone)]
pub struct TargetMetrics {
    outcomes: [IntCounter; 5],
    pub duration: Histogram,
    /// `tollgate_upstream_healthy` (0/1).
    pub healthy: IntGauge,
    /// `tollgate_circuit_state` (0 closed, 1 open, 2 half-open).
    pub circuit_state: IntGauge,
}

/// The metric families of upstream targets (clones share the registry's).
#[derive(Clone)]
pub struct TargetFamilies {
    requests: IntCounterVec,
    duration: HistogramVec,
    healthy: IntGaugeVec,
    circuit_state: IntGaugeVec,
    ejections: IntCounterVec,
}

impl TargetFamilies {
    pub fn target(&self, upstream: &str, target: &str) -> TargetMetrics {
        let outcome = |o: &str| self.requests.with_label_values(&[upstream, target, o]);
        TargetMetrics {
            outcomes: [
                outcome("success"),
                outcome("http_5xx"),
                outcome("connect_error"),
                outcome("timeout"),
                outcome("reset"),
            ],
            duration: self.duration.with_label_values(&[upstream]),
            healthy: self.healthy.with_label_values(&[upstream, target]),
            circuit_state: self.circuit_state.with_label_values(&[upstream, target]),
        }
    }

    /// Drops the series of a target that is gone.
    pub fn forget(&self, upstream: &str, target: &str) {
        remove_matching(&self.requests, "upstream", upstream, &[("target", target)]);
        remove_matching(&self.ejections, "upstream", upstream, &[("target", target)]);
        let _ = self.healthy.remove_label_values(&[upstream, target]);
        let _ = self.circuit_state.remove_label_values(&[upstream, target]);
    }

    /// `tollgate_outlier_ejections_total` of one target: [5xx, connect_error].
    pub fn ejections(&self, upstream: &str, target: &str) -> [IntCounter; 2] {
        let c = |reason: &str| {
            self.ejections
                .with_label_values(&[upstream, target, reason])
        };
        [c("5xx"), c("connect_error")]
    }
}

impl TargetMetrics {
    pub fn record(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].inc();
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                "tollgate_requests_total",
                "Requests answered, by route, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from request head to the end of the response, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let upstream_requests_total = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_requests_total",
                "Attempts sent to upstream targets, by outcome.",
            ),
            &["upstream", "target", "outcome"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_duration_seconds",
                "Time until the upstream's response head arrived, by upstream.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "tollgate_upstream_healthy",
                "Whether a target passes its active health checks (1) or not (0).",
            ),
            &["upstream", "target"],
        )?;
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "tollgate_circuit_state",
                "Circuit breaker state of a target: 0 closed, 1 open, 2 half-open.",
            ),
            &["upstream", "target"],
        )?;
        let retries_total = IntCounterVec::new(
            Opts::new(
                "tollgate_retries_total",
                "Retried upstream attempts, by upstream and the reason of the retry.",
            ),
            &["upstream", "reason"],
        )?;
        let in_flight = IntGauge::new(
            "tollgate_in_flight_requests",
            "Requests being served right now.",
        )?;
        let active_connections = IntGaugeVec::new(
            Opts::new(
                "tollgate_active_connections",
                "Open client connections, by listener.",
            ),
            &["listener"],
        )?;
        // The idle keep-alive connections that gave
        // their buffers back (NGINX's stub_status calls them "Waiting").
        let parked_connections = IntGaugeVec::new(
            Opts::new(
                "tollgate_parked_connections",
                "Idle HTTP/1.1 client connections parked with their buffers released, by listener.",
            ),
            &["listener"],
        )?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "tollgate_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out, by listener.",
            ),
            &["listener"],
        )?;
        let proxy_protocol_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_proxy_protocol_errors_total",
                "Connections closed before their first request for their PROXY protocol header, by listener and reason (untrusted, malformed, timeout).",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(proxy_protocol_errors.clone()))?;
        let malformed_requests = IntCounterVec::new(
            Opts::new(
                "tollgate_malformed_requests_total",
                "Requests the HTTP/1 parser refused before routing, by listener and the error code of the JSON answer (bad_request, uri_too_long, headers_too_large).",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(malformed_requests.clone()))?;
        let config_info = IntGaugeVec::new(
            Opts::new("tollgate_config_info", "The running config's version hash."),
            &["version"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_config_reloads_total",
                "Config reload attempts, by result.",
            ),
            &["result"],
        )?;
        let config_last_reload_success = IntGauge::new(
            "tollgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("tollgate_build_info", "The tollgate build."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_requests_total.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(upstream_healthy.clone()))?;
        registry.register(Box::new(circuit_state.clone()))?;
        registry.register(Box::new(retries_total.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(active_connections.clone()))?;
        registry.register(Box::new(parked_connections.clone()))?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        registry.register(Box::new(config_info.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        // Access-log lines dropped because the writer
        // could not keep up (the request path never waits for it).
        let access_log_dropped = IntCounter::new(
            "tollgate_access_log_dropped_total",
            "Access-log lines dropped because the log writer fell behind.",
        )?;
        registry.register(Box::new(build_info))?;
        // Responses compressed by a route's `compress:`.
        let compressed_total = IntCounterVec::new(
            Opts::new(
                "tollgate_compressed_responses_total",
                "Responses compressed by the gateway, by route and content encoding.",
            ),
            &["route", "encoding"],
        )?;
        registry.register(Box::new(compressed_total.clone()))?;
        let idempotency_total = IntCounterVec::new(
            Opts::new(
                "tollgate_idempotency_total",
                "Keyed requests on routes with an idempotency policy, by route and result.",
            ),
            &["route", "result"],
        )?;
        registry.register(Box::new(idempotency_total.clone()))?;
        let mirror_total = IntCounterVec::new(
            Opts::new(
                "tollgate_mirror_requests_total",
                "Requests chosen for mirroring, by route and result (ok, 5xx, error, timeout, too_large, overloaded).",
            ),
            &["route", "result"],
        )?;
        registry.register(Box::new(mirror_total.clone()))?;
        let outlier_ejections = IntCounterVec::new(
            Opts::new(
                "tollgate_outlier_ejections_total",
                "Targets ejected by passive health, by upstream, target and reason (5xx, connect_error).",
            ),
            &["upstream", "target", "reason"],
        )?;
        registry.register(Box::new(outlier_ejections.clone()))?;
        let dns_lookups = IntCounterVec::new(
            Opts::new(
                "tollgate_dns_lookups_total",
                "Lookups of dns and srv targets, by upstream, source and result (ok, empty, failed).",
            ),
            &["upstream", "source", "result"],
        )?;
        registry.register(Box::new(dns_lookups.clone()))?;
        let rate_limited_total = IntCounterVec::new(
            Opts::new(
                "tollgate_rate_limited_total",
                "Requests refused with 429, by route and rate-limit policy.",
            ),
            &["route", "policy"],
        )?;
        let rate_limit_store_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_rate_limit_store_errors_total",
                "Rate-limit decisions taken without the store (Redis unreachable or slow), by what on_store_error decided.",
            ),
            &["policy", "decision"],
        )?;
        registry.register(Box::new(rate_limited_total.clone()))?;
        registry.register(Box::new(rate_limit_store_errors.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        let auth_failures_total = IntCounterVec::new(
            Opts::new(
                "tollgate_auth_failures_total",
                "Requests refused by authentication or authorization, by route and reason.",
            ),
            &["route", "reason"],
        )?;
        let jwks_refreshes_total = IntCounterVec::new(
            Opts::new(
                "tollgate_jwks_refreshes_total",
                "JWKS fetches, by JWT policy and result.",
            ),
            &["policy", "result"],
        )?;
        let jwks_age = GaugeVec::new(
            Opts::new(
                "tollgate_jwks_age_seconds",
                "Seconds since the JWT policy's key set was last fetched successfully.",
            ),
            &["policy"],
        )?;
        let introspection_requests_total = IntCounterVec::new(
            Opts::new(
                "tollgate_introspection_requests_total",
                "Calls to token introspection endpoints, by policy and result.",
            ),
            &["policy", "result"],
        )?;
        registry.register(Box::new(introspection_requests_total.clone()))?;
        let external_auth_total = IntCounterVec::new(
            Opts::new(
                "tollgate_external_auth_total",
                "Decisions of external authorization services, by policy and result.",
            ),
            &["policy", "result"],
        )?;
        registry.register(Box::new(external_auth_total.clone()))?;
        let consumer_requests_total = IntCounterVec::new(
            Opts::new(
                "tollgate_consumer_requests_total",
                "Requests of consumers in a consumer group, by route, group and status class.",
            ),
            &["route", "group", "class"],
        )?;
        registry.register(Box::new(consumer_requests_total.clone()))?;
        let cache = CacheFamilies::register(&registry)?;
        registry.register(Box::new(auth_failures_total.clone()))?;
        registry.register(Box::new(jwks_refreshes_total.clone()))?;
        registry.register(Box::new(jwks_age.clone()))?;
        let websocket = WebSocketFamilies::new(&registry)?;
        #[cfg(feature = "otel")]
        let spans = crate::otel::SpanMetrics::register(&registry)?;

        Ok(Metrics {
            websocket,
            registry,
            requests_total,
            request_duration,
            upstream_requests_total,
            upstream_duration,
            upstream_healthy,
            circuit_state,
            retries_total,
            in_flight,
            active_connections,
            parked_connections,
            tls_handshake_failures,
            config_info,
            config_reloads_success: reloads.with_label_values(&["success"]),
            config_reloads_failure: reloads.with_label_values(&["failure"]),
            config_last_reload_success,
            rate_limited_total,
            rate_limit_store_errors,
            access_log_dropped,
            auth_failures_total,
            jwks_refreshes_total,
            jwks_age,
            introspection_requests_total,
            external_auth_total,
            consumer_requests_total,
            cache,
            compressed_total,
            idempotency_total,
            mirror_total,
            outlier_ejections,
            dns_lookups,
            proxy_protocol_errors,
            malformed_requests,
            #[cfg(feature = "otel")]
            spans,
        })
    }

    pub fn auth_failures(&self, route: &str) -> AuthFailureMetrics {
        let c = |reason: &str| self.auth_failures_total.with_label_values(&[route, reason]);
        AuthFailureMetrics {
            missing: c("missing"),
            invalid: c("invalid"),
            expired: c("expired"),
            forbidden: c("forbidden"),
        }
    }

    pub fn jwks(&self, policy: &str) -> JwksMetrics {
        JwksMetrics {
            success: self
                .jwks_refreshes_total
                .with_label_values(&[policy, "success"]),
            failure: self
                .jwks_refreshes_total
                .with_label_values(&[policy, "failure"]),
            age: self.jwks_age.with_label_values(&[policy]),
        }
    }

    pub fn introspection(&self, policy: &str) -> IntrospectionMetrics {
        let c = |result: &str| {
            self.introspection_requests_total
                .with_label_values(&[policy, result])
        };
        IntrospectionMetrics {
            active: c("active"),
            inactive: c("inactive"),
            error: c("error"),
        }
    }

    pub fn external_auth(&self, policy: &str) -> ExternalAuthMetrics {
        let c = |result: &str| {
            self.external_auth_total
                .with_label_values(&[policy, result])
        };
        ExternalAuthMetrics {
            allow: c("allow"),
            deny: c("deny"),
            error: c("error"),
        }
    }

    /// Drops the age series of a policy that no longer exists (its refresh
    /// counters stay: counters do not go back).
    pub fn forget_jwks(&self, policy: &str) {
        let _ = self.jwks_age.remove_label_values(&[policy]);
    }

    pub fn route(&self, name: &str) -> RouteMetrics {
        RouteMetrics {
            requests_total: self.requests_total.clone(),
            route: name.into(),
            counters: OnceLock::new(),
            duration: self.request_duration.with_label_values(&[name]),
            websocket_families: self.websocket.clone(),
            websocket: OnceLock::new(),
        }
    }

    pub fn target(&self, upstream: &str, target: &str) -> TargetMetrics {
        self.target_families().target(upstream, target)
    }

    /// The families per-target handles come from, for targets made after
    /// the config compiled (DNS discovery).
    pub fn target_families(&self) -> TargetFamilies {
        TargetFamilies {
            requests: self.upstream_requests_total.clone(),
            duration: self.upstream_duration.clone(),
            healthy: self.upstream_healthy.clone(),
            circuit_state: self.circuit_state.clone(),
            ejections: self.outlier_ejections.clone(),
        }
    }

    /// The `tollgate_dns_lookups_total` counters of one source: [ok, empty, failed].
    pub fn dns_lookups(&self, upstream: &str, source: &str) -> [IntCounter; 3] {
        let c = |result: &str| {
            self.dns_lookups
                .with_label_values(&[upstream, source, result])
        };
        [c("ok"), c("empty"), c("failed")]
    }

    /// The `tollgate_compressed_responses_total` counter of one (route, encoding).
    pub fn compressed(&self, route: &str, encoding: &str) -> IntCounter {
        self.compressed_total.with_label_values(&[route, encoding])
    }

    /// The `tollgate_idempotency_total` counters of one route.
    pub fn idempotency(&self, route: &str) -> IdempotencyMetrics {
        let c = |result: &str| self.idempotency_total.with_label_values(&[route, result]);
        IdempotencyMetrics {
            stored: c("stored"),
            replayed: c("replayed"),
            conflict: c("conflict"),
            mismatch: c("mismatch"),
            missing: c("missing"),
            invalid: c("invalid"),
            not_stored: c("not_stored"),
            store_error: c("store_error"),
        }
    }

    /// The `tollgate_outlier_ejections_total` counters of one target: [5xx, connect_error].
    pub fn ejections(&self, upstream: &str, target: &str) -> [IntCounter; 2] {
        self.target_families().ejections(upstream, target)
    }

    /// The `tollgate_mirror_requests_total` counters of one route.
    pub fn mirror(&self, route: &str) -> MirrorMetrics {
        let c = |result: &str| self.mirror_total.with_label_values(&[route, result]);
        MirrorMetrics {
            ok: c("ok"),
            http_5xx: c("5xx"),
            error: c("error"),
            timeout: c("timeout"),
            too_large: c("too_large"),
            overloaded: c("overloaded"),
        }
    }

    pub fn rate_limited(&self, route: &str, policy: &str) -> IntCounter {
        self.rate_limited_total.with_label_values(&[route, policy])
    }

    /// `tollgate_cache_requests_total{route, result}` of one route and result.
    pub fn cache_requests(&self, route: &str, result: &str) -> IntCounter {
        self.cache.requests.with_label_values(&[route, result])
    }

    /// The handles of one `caches.<name>`.
    pub fn cache(&self, name: &str) -> CacheMetrics {
        let f = &self.cache;
        CacheMetrics {
            bytes: f.bytes.with_label_values(&[name]),
            entries: f.entries.with_label_values(&[name]),
            evictions: f.evictions.with_label_values(&[name]),
            purges: ["url", "prefix", "tag", "unsafe_method"]
                .map(|kind| f.purges.with_label_values(&[name, kind])),
            store_errors: f.store_errors.with_label_values(&[name]),
        }
    }

    /// `tollgate_consumer_requests_total`, for per-route handles.
    pub fn consumer_requests(&self) -> IntCounterVec {
        self.consumer_requests_total.clone()
    }

    /// [allowed, denied] decisions taken while the store of `policy` failed.
    pub fn rate_limit_store_errors(&self, policy: &str) -> [IntCounter; 2] {
        [
            self.rate_limit_store_errors
                .with_label_values(&[policy, "allow"]),
            self.rate_limit_store_errors
                .with_label_values(&[policy, "deny"]),
        ]
    }

    /// The `tollgate_retries_total` counter of one (upstream, reason).
    pub fn retries(&self, upstream: &str, reason: &str) -> IntCounter {
        self.retries_total.with_label_values(&[upstream, reason])
    }

    pub fn listener_connections(&self, listener: &str) -> IntGauge {
        self.active_connections.with_label_values(&[listener])
    }

    pub fn parked_connections(&self, listener: &str) -> IntGauge {
        self.parked_connections.with_label_values(&[listener])
    }

    /// `tollgate_proxy_protocol_errors_total` of one listener: [untrusted, malformed, timeout].
    pub fn proxy_protocol_errors(&self, listener: &str) -> [IntCounter; 3] {
        let c = |reason: &str| {
            self.proxy_protocol_errors
                .with_label_values(&[listener, reason])
        };
        [c("untrusted"), c("malformed"), c("timeout")]
    }

    /// `tollgate_malformed_requests_total`, for every listener.
    pub fn malformed_requests(&self) -> IntCounterVec {
        self.malformed_requests.clone()
    }

    pub fn tls_handshake_failures(&self, listener: &str) -> IntCounter {
        self.tls_handshake_failures.with_label_values(&[listener])
    }

    /// Marks `version` as the running config (and only it).
    pub fn set_config_version(&self, version: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[version]).set(1);
    }

    /// Brings `tollgate_access_log_dropped_total` up to the access log's own
    /// count (called at scrape time).
    pub fn sync_access_log_dropped(&self, dropped: u64) {
        let seen = self.access_log_dropped.get();
        if dropped > seen {
            self.access_log_dropped.inc_by(dropped - seen);
        }
    }

    /// Drops every series of a route that no longer exists, so `/metrics` stops
    /// showing it. Requests still running on the old version count into
    /// detached handles, which is lost to nobody.
    pub fn forget_route(&self, route: &str) {
        self.forget_routes(&[route]);
    }

    /// `forget_route` for many routes, reading each metric family once (a
    /// reload of a large config may remove hundreds of routes).
    pub fn forget_routes(&self, routes: &[&str]) {
        if routes.is_empty() {
            return;
        }
        let set: std::collections::HashSet<&str> = routes.iter().copied().collect();
        let gone = |v: &str| set.contains(v);
        remove_where(&self.requests_total, "route", &gone, &[]);
        remove_where(&self.compressed_total, "route", &gone, &[]);
        for route in routes {
            let _ = self.request_duration.remove_label_values(&[route]);
        }
        self.websocket.forget(&gone, routes);
    }

    /// Drops the series of a target (`host:port`) of `upstream`.
    pub fn forget_target(&self, upstream: &str, target: &str) {
        self.target_families().forget(upstream, target);
    }

    /// Drops the series of an upstream that no longer exists.
    pub fn forget_upstream(&self, upstream: &str) {
        remove_matching(&self.upstream_requests_total, "upstream", upstream, &[]);
        remove_matching(&self.retries_total, "upstream", upstream, &[]);
        remove_matching(&self.upstream_healthy, "upstream", upstream, &[]);
        remove_matching(&self.circuit_state, "upstream", upstream, &[]);
        let _ = self.upstream_duration.remove_label_values(&[upstream]);
    }

    /// The text exposition format for `GET /metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on inconsistent metric families, which
        // our registration rules out; an empty scrape is the safe answer anyway.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Removes every child of `vec` whose label `name` is `value` (and whose labels
/// in `also` match too). `MetricVec` only removes by the full label set, so
/// the children are found by collecting the family.
fn remove_matching<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    name: &str,
    value: &str,
    also: &[(&str, &str)],
) {
    remove_where(vec, name, &|v| v == value, also);
}

/// `remove_matching` for every child whose label `name` satisfies `value`.
fn remove_where<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    name: &str,
    value: &dyn Fn(&str) -> bool,
    also: &[(&str, &str)],
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels = m.get_label();
            let has = |n: &str, v: &str| labels.iter().any(|l| l.name() == n && l.value() == v);
            let selected = labels.iter().any(|l| l.name() == name && value(l.value()));
            if selected && also.iter().all(|(n, v)| has(n, v)) {
                let map: std::collections::HashMap<&str, &str> =
                    labels.iter().map(|l| (l.name(), l.value())).collect();
                let _ = vec.remove(&map);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, StatusCode};

    fn line_value(text: &str, prefix: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
    }

    #[test]
    fn route_counters_cached_and_uncached_statuses() {
        let m = Metrics::new().unwrap();
        let r = m.route("users");
        r.count(&Method::GET, StatusCode::OK);
        r.count(&Method::GET, StatusCode::OK);
        r.count(&Method::from_bytes(b"PURGE").unwrap(), StatusCode::OK);
        r.count(&Method::POST, StatusCode::from_u16(299).unwrap());
        let text = String::from_utf8(m.render()).unwrap();
        let get = r#"tollgate_requests_total{method="GET",route="users",status="200"}"#;
        let other = r#"tollgate_requests_total{method="OTHER",route="users",status="200"}"#;
        let odd = r#"tollgate_requests_total{method="POST",route="users",status="299"}"#;
        assert_eq!(line_value(&text, get).as_deref(), Some("2"));
        assert_eq!(line_value(&text, other).as_deref(), Some("1"));
        assert_eq!(line_value(&text, odd).as_deref(), Some("1"));
    }

    #[test]
    fn forgetting_a_route_or_target_drops_its_series_only() {
        let m = Metrics::new().unwrap();
        let (a, b) = (m.route("a"), m.route("b"));
        a.count(&Method::GET, StatusCode::OK);
        a.count(&Method::POST, StatusCode::from_u16(299).unwrap());
        a.duration.observe(0.1);
        b.count(&Method::GET, StatusCode::OK);
        let t1 = m.target("up", "h:1");
        let t2 = m.target("up", "h:2");
        t1.record(Outcome::Success);
        t2.record(Outcome::Success);
        m.forget_route("a");
        m.forget_target("up", "h:1");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains(r#"route="a""#), "{text}");
        assert!(text.contains(r#"route="b""#));
        assert!(!text.contains(r#"target="h:1""#), "{text}");
        assert!(text.contains(r#"target="h:2""#));
        m.forget_upstream("up");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains(r#"upstream="up""#), "{text}");
    }

    #[test]
    fn config_version_keeps_one_series() {
        let m = Metrics::new().unwrap();
        m.set_config_version("aaa");
        m.set_config_version("bbb");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains(r#"version="aaa""#));
        assert!(text.contains(r#"tollgate_config_info{version="bbb"} 1"#));
    }
}

/// Buckets for tunnel lifetimes: from a quick open-and-close to a day.
const TUNNEL_BUCKETS: &[f64] = &[
    0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// The WebSocket metric families (docs/reference/metrics.md).
#[derive(Clone)]
struct WebSocketFamilies {
    upgrades_total: IntCounterVec,
    tunnels_active: IntGaugeVec,
    tunnel_duration: HistogramVec,
    tunnel_bytes: IntCounterVec,
}

/// The WebSocket handles of one route.
pub struct WebSocketMetrics {
    /// Upgrade requests answered 101 (or 200 for RFC 8441): a tunnel opened.
    pub upgraded: IntCounter,
    /// Upgrade requests the upstream answered with anything else (passed on).
    pub refused: IntCounter,
    /// Upgrade requests the gateway answered itself with an error (auth, rate
    /// limit, no healthy target, upstream down...).
    pub error: IntCounter,
    pub active: IntGauge,
    pub duration: Histogram,
    /// Bytes from the client to the upstream (`in`) and back (`out`).
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
}

impl WebSocketFamilies {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let upgrades_total = IntCounterVec::new(
            Opts::new(
                "tollgate_websocket_upgrades_total",
                "WebSocket upgrade requests by route and result (upgraded, refused by the upstream, error from the gateway).",
            ),
            &["route", "result"],
        )?;
        let tunnels_active = IntGaugeVec::new(
            Opts::new(
                "tollgate_websocket_tunnels_active",
                "WebSocket tunnels open now, by route.",
            ),
            &["route"],
        )?;
        let tunnel_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_websocket_tunnel_duration_seconds",
                "Lifetime of WebSocket tunnels, from the upgrade to the close, by route.",
            )
            .buckets(TUNNEL_BUCKETS.to_vec()),
            &["route"],
        )?;
        let tunnel_bytes = IntCounterVec::new(
            Opts::new(
                "tollgate_websocket_tunnel_bytes_total",
                "Bytes carried by WebSocket tunnels once closed, by route and direction (in: client to upstream).",
            ),
            &["route", "direction"],
        )?;
        registry.register(Box::new(upgrades_total.clone()))?;
        registry.register(Box::new(tunnels_active.clone()))?;
        registry.register(Box::new(tunnel_duration.clone()))?;
        registry.register(Box::new(tunnel_bytes.clone()))?;
        Ok(WebSocketFamilies {
            upgrades_total,
            tunnels_active,
            tunnel_duration,
            tunnel_bytes,
        })
    }

    fn route(&self, route: &str) -> WebSocketMetrics {
        let result = |r: &str| self.upgrades_total.with_label_values(&[route, r]);
        WebSocketMetrics {
            upgraded: result("upgraded"),
            refused: result("refused"),
            error: result("error"),
            active: self.tunnels_active.with_label_values(&[route]),
            duration: self.tunnel_duration.with_label_values(&[route]),
            bytes_in: self.tunnel_bytes.with_label_values(&[route, "in"]),
            bytes_out: self.tunnel_bytes.with_label_values(&[route, "out"]),
        }
    }

    fn forget(&self, gone: &dyn Fn(&str) -> bool, routes: &[&str]) {
        remove_where(&self.upgrades_total, "route", gone, &[]);
        remove_where(&self.tunnel_bytes, "route", gone, &[]);
        for route in routes {
            let _ = self.tunnels_active.remove_label_values(&[route]);
            let _ = self.tunnel_duration.remove_label_values(&[route]);
        }
    }
}

/// The handles of one cache's own metrics.
pub struct CacheMetrics {
    pub bytes: IntGauge,
    pub entries: IntGauge,
    pub evictions: IntCounter,
    /// [url, prefix, tag, unsafe_method].
    pub purges: [IntCounter; 4],
    pub store_errors: IntCounter,
}

/// The response cache's metric families.
struct CacheFamilies {
    requests: IntCounterVec,
    bytes: IntGaugeVec,
    entries: IntGaugeVec,
    evictions: IntCounterVec,
    purges: IntCounterVec,
    store_errors: IntCounterVec,
}

impl CacheFamilies {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["cache"])?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        Ok(CacheFamilies {
            requests: counter(
                "tollgate_cache_requests_total",
                "Requests on cached routes, by how the cache served them.",
                &["route", "result"],
            )?,
            bytes: gauge(
                "tollgate_cache_bytes",
                "Bytes held by a cache's memory tier (updated when scraped).",
            )?,
            entries: gauge(
                "tollgate_cache_entries",
                "Entries held by a cache's memory tier (updated when scraped).",
            )?,
            evictions: counter(
                "tollgate_cache_evictions_total",
                "Entries evicted from a cache's memory tier to stay within max_bytes.",
                &["cache"],
            )?,
            purges: counter(
                "tollgate_cache_purges_total",
                "Purges of a cache, by kind (url, prefix, tag, unsafe_method).",
                &["cache", "kind"],
            )?,
            store_errors: counter(
                "tollgate_cache_store_errors_total",
                "Calls to a cache's Redis tier that failed, timed out or were skipped (a bypass of that tier).",
                &["cache"],
            )?,
        })
    }
}
