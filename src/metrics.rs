//! Prometheus metrics (SPEC §7) on a registry the app owns.
//!
//! The request path never formats label strings for route or target labels:
//! `compile` resolves per-route and per-target handles once per config version
//! (`RouteMetrics`, `TargetMetrics`), and only the `(method, status)` pair of
//! `tollgate_requests_total` is looked up when a request ends.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
    pub in_flight: IntGauge,
    active_connections: IntGaugeVec,
    config_info: IntGaugeVec,
    pub config_reloads_success: IntCounter,
    pub config_reloads_failure: IntCounter,
    pub config_last_reload_success: IntGauge,
}

/// Handles of one route, resolved when the config compiles.
#[derive(Clone)]
pub struct RouteMetrics {
    requests_total: IntCounterVec,
    route: std::sync::Arc<str>,
    pub duration: Histogram,
}

impl RouteMetrics {
    /// Counts one finished request. `method` must be a bounded value (the
    /// standard methods or `OTHER`), never a raw client string.
    pub fn count(&self, method: &str, status: http::StatusCode) {
        self.requests_total
            .with_label_values(&[&*self.route, method, status.as_str()])
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
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(active_connections.clone()))?;
        registry.register(Box::new(config_info.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        registry.register(Box::new(build_info))?;

        Ok(Metrics {
            registry,
            requests_total,
            request_duration,
            upstream_requests_total,
            upstream_duration,
            in_flight,
            active_connections,
            config_info,
            config_reloads_success: reloads.with_label_values(&["success"]),
            config_reloads_failure: reloads.with_label_values(&["failure"]),
            config_last_reload_success,
        })
    }

    pub fn route(&self, name: &str) -> RouteMetrics {
        RouteMetrics {
            requests_total: self.requests_total.clone(),
            route: name.into(),
            duration: self.request_duration.with_label_values(&[name]),
        }
    }

    pub fn target(&self, upstream: &str, target: &str) -> TargetMetrics {
        let outcome = |o: &str| {
            self.upstream_requests_total
                .with_label_values(&[upstream, target, o])
        };
        TargetMetrics {
            outcomes: [
                outcome("success"),
                outcome("http_5xx"),
                outcome("connect_error"),
                outcome("timeout"),
                outcome("reset"),
            ],
            duration: self.upstream_duration.with_label_values(&[upstream]),
        }
    }

    pub fn listener_connections(&self, listener: &str) -> IntGauge {
        self.active_connections.with_label_values(&[listener])
    }

    /// Marks `version` as the running config (and only it).
    pub fn set_config_version(&self, version: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[version]).set(1);
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
