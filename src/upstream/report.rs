//! The `GET /upstreams` admin answer (docs/reference/admin-api.md): every upstream of the running
//! config and, per target, its health, circuit state, in-flight requests and
//! counters.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::{Targets, Upstream};

/// `version` is the config version the upstreams belong to.
pub fn upstreams(version: &str, upstreams: &[Upstream]) -> Value {
    let now = tokio::time::Instant::now();
    let list: Vec<Value> = upstreams
        .iter()
        .map(|u| {
            let set = u.current();
            let targets: Vec<Value> = set
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
                    let backoff = s.backoff_until.get().filter(|&at| at > now).map(|at| {
                        u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX)
                    });
                    let ramp = u.slow_start.and_then(|w| {
                        let f = super::slow_start::factor(s.joined.get()?, w, now);
                        (f < 1.0).then(|| (f * 100.0).round() as u32)
                    });
                    json!({
                        "ejected": ejected,
                        "retry_after_ms": backoff,
                        "slow_start_percent": ramp,
                        "weight": t.weight,
                        "priority": t.priority,
                        "from": t.origin.describe(),
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
                "in_flight": set
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
                "discovery": discovery(u),
            })
        })
        .collect();
    json!({ "version": version, "upstreams": list })
}

/// The `dns` / `srv` sources of `up` and their state (`null` without any).
pub fn discovery(up: &Upstream) -> Value {
    let Targets::Discovered(d) = &up.targets else {
        return Value::Null;
    };
    let now = tokio::time::Instant::now();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let list: Vec<Value> = d
        .sources()
        .iter()
        .zip(d.status())
        .map(|(source, s)| {
            json!({
                "source": format!("{} {}", source.kind(), source.label()),
                "addresses": s.found.iter().map(|f| f.addr.to_string()).collect::<Vec<_>>(),
                "looked_up": s.looked_up,
                "error": s.last_error,
                "empty_for_ms": s.empty_since.map(|at| ms(now.saturating_duration_since(at))),
                "last_lookup_ms_ago": s.last_lookup.map(|at| ms(now.saturating_duration_since(at))),
                "next_lookup_in_ms": s.next_lookup.map(|at| ms(at.saturating_duration_since(now))),
                "refresh": crate::config::units::Duration(source.refresh).to_string(),
            })
        })
        .collect();
    Value::Array(list)
}

/// The JSON text of `upstreams`.
pub fn render(version: &str, list: &[Upstream]) -> Vec<u8> {
    serde_json::to_vec_pretty(&upstreams(version, list)).unwrap_or_default()
}
