//! Upstream services: their targets, how one is picked, and how requests reach it.
//!
//! An `Upstream` is compiled once per config version. Per-target state that
//! outlives it (in-flight count, health, circuit) is reached through the
//! `Target`'s `TargetState`. `pick` chooses among the targets that are healthy,
//! whose circuit admits a request, and that this request has not tried yet.

pub mod balancer;
pub mod circuit;
pub mod h2;
pub mod health;
pub mod outlier;
pub mod pool;
pub mod report;
pub mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};

use tokio::time::Instant;

use crate::error::GatewayError;
use crate::metrics::TargetMetrics;
use balancer::{Balancer, PickContext};
use circuit::{Circuit, CircuitSettings, CircuitState};
use health::HealthSettings;
use outlier::{Outlier, OutlierSettings, Seen};
use pool::{PoolSettings, UpstreamClient};
use retry::{RetryBudget, RetryPolicy};

/// What a target carries across config versions.
pub struct TargetState {
    /// Requests in flight to this target (least_request reads it).
    pub in_flight: AtomicU32,
    /// The active health checks' verdict; true until they say otherwise, and
    /// ignored when the upstream has no `health_check`.
    pub healthy: AtomicBool,
    pub circuit: Circuit,
    /// Attempts sent to this target, and those that failed (connect error,
    /// timeout, reset, 5xx), for `/upstreams`.
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Passive health (`outlier`); ignored when the upstream has none.
    pub outlier: Outlier,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState {
            in_flight: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            circuit: Circuit::default(),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            outlier: Outlier::default(),
        }
    }
}

pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub balancer: Balancer,
    /// Shared with the previous config version while the pool settings match.
    pub client: Arc<UpstreamClient>,
    pub pool_settings: PoolSettings,
    /// Time allowed for the whole response head, unless a route overrides it.
    pub request_timeout: Duration,
    /// The bulkhead: at most this many requests in flight (0 = no cap).
    pub max_concurrent: usize,
    pub in_flight: AtomicUsize,
    /// Active health checks; `None` = every target counts as healthy.
    pub health: Option<HealthSettings>,
    pub circuit: Option<CircuitSettings>,
    /// Passive health; `None` = no target is ever ejected.
    pub outlier: Option<OutlierSettings>,
    /// Held while an ejection is decided, so the cap holds under races.
    pub eject_lock: std::sync::Mutex<()>,
    pub retry: Option<RetryPolicy>,
    /// Shared with other config versions of the same upstream name.
    pub budget: Arc<RetryBudget>,
}

pub struct Target {
    /// As written in the config; the target's identity across reloads.
    pub url: Arc<str>,
    /// `http` or `https` (TLS to the target).
    pub scheme: Scheme,
    pub authority: Authority,
    /// Where its connections live (in the upstream's pool).
    pub endpoint: Arc<pool::Endpoint>,
    /// `host:port`, the `target` metric label and log field.
    pub label: Arc<str>,
    /// Carried across reloads (see `state`).
    pub state: Arc<TargetState>,
    pub metrics: TargetMetrics,
    /// `tollgate_outlier_ejections_total` by reason (5xx, connect_error), when
    /// the upstream has `outlier`.
    pub ejections: Option<[prometheus::IntCounter; 2]>,
}

impl Upstream {
    /// Takes a bulkhead slot; `false` when the upstream is full.
    pub fn try_acquire(&self) -> bool {
        if self.max_concurrent == 0 {
            return true;
        }
        let prev = self.in_flight.fetch_add(1, Ordering::Relaxed);
        if prev >= self.max_concurrent {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether the health checks let `target` take traffic.
    fn passes_health(&self, target: usize, ignore_health: bool) -> bool {
        ignore_health
            || self.health.is_none()
            || self.targets[target].state.healthy.load(Ordering::Relaxed)
    }

    /// Whether passive health lets `target` take traffic.
    fn not_ejected(&self, target: usize, now: Instant) -> bool {
        self.outlier.is_none() || self.targets[target].state.outlier.ejection(now).is_none()
    }

    fn circuit_admits(&self, target: usize, now: Instant) -> bool {
        self.circuit
            .as_ref()
            .is_none_or(|s| self.targets[target].state.circuit.would_admit(s, now))
    }

    /// Picks a target for one attempt and counts it as in flight. Skips
    /// unhealthy targets, targets whose circuit is open, and those in `tried`
    /// unless nothing else is left. Errors: every target unhealthy
    /// (`no_healthy_upstream`, unless `fail_open`), or every healthy target's
    /// circuit open (`circuit_open`).
    pub fn pick(
        &self,
        ctx: &PickContext<'_>,
        tried: &[usize],
        now: Instant,
    ) -> Result<usize, GatewayError> {
        let fail_open = self.health.as_ref().is_some_and(|h| h.fail_open)
            && !(0..self.targets.len()).any(|i| self.passes_health(i, false));
        let load = |i: usize| self.targets[i].state.in_flight.load(Ordering::Relaxed);
        // Each loop turn either returns or rules out one more target (lost
        // half-open probe races), so it ends.
        let mut refused: Vec<usize> = Vec::new();
        loop {
            let usable = |i: usize| {
                self.passes_health(i, fail_open)
                    && self.not_ejected(i, now)
                    && self.circuit_admits(i, now)
                    && !refused.contains(&i)
            };
            let picked = self
                .balancer
                .pick(ctx, load, |i| usable(i) && !tried.contains(&i))
                .or_else(|| self.balancer.pick(ctx, load, usable));
            let Some(i) = picked else {
                return Err(self.none_available(fail_open));
            };
            if self.admit(i, now) {
                self.targets[i]
                    .state
                    .in_flight
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(i);
            }
            refused.push(i);
        }
    }

    /// Passes the circuit of `target` (taking a half-open probe slot).
    fn admit(&self, target: usize, now: Instant) -> bool {
        let Some(s) = &self.circuit else {
            return true;
        };
        let t = &self.targets[target];
        let (admitted, transition) = t.state.circuit.admit(s, now);
        if let Some(state) = transition {
            t.circuit_changed(&self.name, state);
        }
        admitted
    }

    fn none_available(&self, fail_open: bool) -> GatewayError {
        let any_healthy = (0..self.targets.len()).any(|i| self.passes_health(i, fail_open));
        if any_healthy && self.circuit.is_some() {
            GatewayError::CircuitOpen {
                upstream: self.name.to_string(),
            }
        } else {
            GatewayError::NoHealthyUpstream {
                upstream: self.name.to_string(),
            }
        }
    }

    /// An attempt on `target` that got an answer with `status`: its outcome
    /// metric, and the breaker's and passive health's verdicts.
    pub fn record_answer(&self, target: usize, status: u16, now: Instant) {
        let failed = match &self.circuit {
            Some(c) => c.is_failure_status(status),
            None => circuit::DEFAULT_FAILURE_STATUSES.contains(&status),
        };
        let (outcome, seen) = if status >= 500 {
            (crate::metrics::Outcome::Http5xx, Seen::Http5xx)
        } else {
            (crate::metrics::Outcome::Success, Seen::Success)
        };
        self.targets[target].metrics.record(outcome);
        self.record_attempt(target, Some(failed), seen, now);
    }

    /// Feeds the outcome of an attempt on `target` to its circuit breaker and
    /// counters. `failure` follows the breaker's classification (`None` when
    /// the attempt says nothing about the target, e.g. the client's body failed).
    /// `seen` feeds passive health.
    pub fn record_attempt(&self, target: usize, failure: Option<bool>, seen: Seen, now: Instant) {
        let t = &self.targets[target];
        let Some(failed) = failure else {
            return;
        };
        if let Some(s) = &self.outlier {
            self.observe(target, s, seen, now);
        }
        t.state.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            t.state.failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(s) = &self.circuit
            && let Some(state) = t.state.circuit.record(s, failed, now)
        {
            t.circuit_changed(&self.name, state);
        }
    }
}

impl Upstream {
    /// Feeds passive health; ejects when a streak is long enough and the cap
    /// allows one more target out.
    fn observe(&self, target: usize, s: &OutlierSettings, seen: Seen, now: Instant) {
        let t = &self.targets[target];
        // The lock taken by `may_eject` is held until `record` has set the
        // flag, so the count and the ejection are one step under the cap.
        let mut guard = None;
        let may_eject = || {
            let g = self
                .eject_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Flags only (no other target's lock while this one's is held); a
            // flag not yet cleared after its ejection ended counts as out,
            // which errs on the side of the cap.
            let out = self
                .targets
                .iter()
                .filter(|t| t.state.outlier.flagged())
                .count();
            guard = Some(g);
            out < s.max_ejected(self.targets.len())
        };
        let Some(e) = t.state.outlier.record(s, seen, now, may_eject) else {
            return;
        };
        drop(guard);
        if let Some(c) = &t.ejections {
            c[usize::from(e.reason == outlier::Reason::ConnectError)].inc();
        }
        tracing::warn!(
            upstream = %self.name,
            target = %t.label,
            reason = e.reason.as_str(),
            ejection = e.count,
            for_s = (e.until - now).as_secs(),
            "target ejected"
        );
    }
}

impl Target {
    fn circuit_changed(&self, upstream: &str, state: CircuitState) {
        self.metrics.circuit_state.set(state.gauge());
        match state {
            CircuitState::Open => {
                tracing::warn!(upstream, target = %self.label, "circuit opened")
            }
            _ => {
                tracing::info!(upstream, target = %self.label, state = state.as_str(), "circuit state changed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::metrics::Metrics;
    use crate::snapshot::Snapshot;
    use crate::snapshot::build::compile;
    use crate::snapshot::carryover::Carryover;

    fn snapshot() -> Snapshot {
        let yaml = "
upstreams:
  a:
    targets: [{ url: 'http://127.0.0.1:1' }, { url: 'http://127.0.0.1:2' }]
    health_check: { path: /h }
    circuit_breaker: { consecutive_failures: 1, open_for: 10s }
routes:
  - { name: r, match: { path_prefix: / }, upstream: a }
";
        let loaded = load_str(yaml, "t.yaml").unwrap();
        compile(&loaded, &Metrics::new().unwrap(), &Carryover::default()).unwrap()
    }

    fn ctx(headers: &http::HeaderMap) -> PickContext<'_> {
        PickContext {
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            headers,
        }
    }

    #[test]
    fn pick_skips_open_unhealthy_and_tried_targets() {
        let snap = snapshot();
        let up = &snap.upstreams[0];
        let h = http::HeaderMap::new();
        let now = Instant::now();

        // Tried targets are avoided while another one is usable, then reused.
        for _ in 0..4 {
            assert_eq!(up.pick(&ctx(&h), &[0], now).unwrap(), 1);
            assert_eq!(up.pick(&ctx(&h), &[1], now).unwrap(), 0);
        }
        assert!(up.pick(&ctx(&h), &[0, 1], now).is_ok());

        // Target 0's circuit opens: only target 1 is picked.
        up.record_attempt(0, Some(true), Seen::Other, now);
        for _ in 0..4 {
            assert_eq!(up.pick(&ctx(&h), &[], now).unwrap(), 1);
        }
        // Both open: circuit_open.
        up.record_attempt(1, Some(true), Seen::Other, now);
        let e = up.pick(&ctx(&h), &[], now).unwrap_err();
        assert_eq!(e.code(), "circuit_open");
        // Both unhealthy: no_healthy_upstream, whatever the circuits.
        for t in &up.targets {
            t.state.healthy.store(false, Ordering::Relaxed);
        }
        let e = up.pick(&ctx(&h), &[], now).unwrap_err();
        assert_eq!(e.code(), "no_healthy_upstream");
        // After open_for one target gets its half-open probe, once.
        for t in &up.targets {
            t.state.healthy.store(true, Ordering::Relaxed);
        }
        let later = now + Duration::from_secs(10);
        let probe = up.pick(&ctx(&h), &[], later).unwrap();
        let other = up.pick(&ctx(&h), &[], later).unwrap();
        assert_ne!(probe, other);
        assert_eq!(
            up.pick(&ctx(&h), &[], later).unwrap_err().code(),
            "circuit_open"
        );
    }
}
