//! The `GET /upstreams` admin answer (docs/reference/admin-api.md): every upstream of the running
//! config and, per target, its health, circuit state, in-flight requests and
//! counters.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::Upstream;

/// `version` is the config version the upstreams belong to.
pub fn upstreams(version: &str, upstreams: &[Upstream]) -> Value {
    let now = tokio::time::Instant::now();
    let list: Vec<Value> = upstreams
        .iter()
        .map(|u| {
            let targets: Vec<Value> = u
                .targets
                .iter()
                .map(|t| {
                    let s = &t.state;
                    let ejected = u.outlier.as_ref().and_then(|_| s.outlier.ejection(now)).map(|e| {
                        json!({
                            "reason": e.reason.as_str(),
                            "remaining_ms": u64::try_from((e.until - now).as_millis()).unwrap_or(u64::MAX),
                            "ejections_in_a_row": e.count,
                        })
                    });
                    json!({
                        "ejected": ejected,
                        "url": &*t.url,
                        "target": &*t.label,
                        "healthy": u.health.is_none() || s.healthy.load(Ordering::Relaxed),
                        "circuit": s.circuit.state().as_str(),
                        "in_flight": s.in_flight.load(Ordering::Relaxed),
                        "requests": s.requests.load(Ordering::Relaxed),
                        "failures": s.failures.load(Ordering::Relaxed),
                    })
                })
                .collect();
            json!({
                "name": &*u.name,
                "in_flight": u
                    .targets
                    .iter()
                    .map(|t| u64::from(t.state.in_flight.load(Ordering::Relaxed)))
                    .sum::<u64>(),
                "max_concurrent_requests": (u.max_concurrent > 0).then_some(u.max_concurrent),
                "health_check": u.health.is_some(),
                "circuit_breaker": u.circuit.is_some(),
                "outlier": u.outlier.is_some(),
                "retries": u.retry.is_some(),
                "targets": targets,
            })
        })
        .collect();
    json!({ "version": version, "upstreams": list })
}

/// The JSON text of `upstreams`.
pub fn render(version: &str, list: &[Upstream]) -> Vec<u8> {
    serde_json::to_vec_pretty(&upstreams(version, list)).unwrap_or_default()
}
