//! Upstream services: their targets, how one is picked, and how requests reach it.
//!
//! An `Upstream` is compiled once per config version. Per-target state that
//! outlives it (in-flight count, health, circuit) is reached through the
//! `Target`'s `TargetState`. `pick` chooses among the targets that are healthy,
//! whose circuit admits a request, and that this request has not tried yet.

pub mod balancer;
pub mod circuit;
pub mod discovery;
pub mod h2;
pub mod health;
pub mod outlier;
pub mod pool;
pub mod report;
pub mod retry;
mod rouse;
pub mod slow_start;
pub mod tee;

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use http::uri::{Authority, Scheme};

use tokio::time::Instant;

use crate::error::GatewayError;
use crate::metrics::TargetMetrics;
use balancer::{Balancer, PickContext, Strategy};
use circuit::{Circuit, CircuitSettings, CircuitState};
use discovery::Discovered;
use health::HealthSettings;
use outlier::{Outlier, OutlierSettings, Seen};
use pool::{PoolSettings, UpstreamClient};
use retry::{RetryBudget, RetryPolicy};
use slow_start::Moment;

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
    /// When the target (re)joined: the start of its slow start.
    pub joined: Moment,
    /// Until when it asked not to be sent requests (`Retry-After`).
    pub backoff_until: Moment,
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
            joined: Moment::default(),
            backoff_until: Moment::default(),
        }
    }
}

pub struct Upstream {
    pub name: Arc<str>,
    /// The targets: fixed for the config version, or followed in DNS.
    pub targets: Targets,
    pub strategy: Strategy,
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
    /// A joining target's ramp (`slow_start`); `None` = full weight at once.
    pub slow_start: Option<Duration>,
    /// The longest a `Retry-After` keeps a target out; `None` = ignored.
    pub retry_after_max: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    /// Shared with other config versions of the same upstream name.
    pub budget: Arc<RetryBudget>,
}

/// An upstream's targets.
pub enum Targets {
    /// Only `url:` entries: the set is part of the config version.
    Fixed(TargetSet),
    /// Some `dns:` / `srv:` entries: the set changes as the records do.
    Discovered(Arc<Discovered>),
}

/// The targets of an upstream at one moment, with the balancer over them.
/// Indices into `targets` are what `pick` returns.
pub struct TargetSet {
    pub targets: Vec<Target>,
    pub balancer: Balancer,
    /// Whether targets differ in `priority` (SRV): only the best priority
    /// with a usable target takes traffic.
    tiered: bool,
}

impl TargetSet {
    pub fn new(strategy: Strategy, targets: Vec<Target>) -> TargetSet {
        // Targets are identified by URL, so removing one from the middle of the
        // list does not remap the hash keys of the others.
        let balancer = Balancer::with_ids(strategy, targets.iter().map(|t| (&*t.url, t.weight)));
        let tiered = targets.windows(2).any(|w| w[0].priority != w[1].priority);
        TargetSet {
            targets,
            balancer,
            tiered,
        }
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// The target set a request works with from its first pick to its end.
pub enum Current<'a> {
    Fixed(&'a TargetSet),
    Shared(Arc<TargetSet>),
}

impl Current<'_> {
    /// What a request keeps to find its target again (nothing for a fixed set).
    pub fn keep(&self) -> Option<Arc<TargetSet>> {
        match self {
            Current::Fixed(_) => None,
            Current::Shared(set) => Some(set.clone()),
        }
    }
}

impl Deref for Current<'_> {
    type Target = TargetSet;

    fn deref(&self) -> &TargetSet {
        match self {
            Current::Fixed(set) => set,
            Current::Shared(set) => set,
        }
    }
}

/// The target a request was sent to: the upstream's index in the snapshot,
/// the target's index in its set, and the set itself when it is not fixed.
pub struct Picked {
    pub upstream: usize,
    pub target: usize,
    pub set: Option<Arc<TargetSet>>,
}

impl Picked {
    /// The target, from the kept set or the upstream's fixed one (`None`
    /// only for a pick of a discovered upstream that did not keep its set,
    /// which `forward` never makes).
    pub fn target<'a>(&'a self, upstream: &'a Upstream) -> Option<&'a Target> {
        match (&self.set, &upstream.targets) {
            (Some(set), _) => set.targets.get(self.target),
            (None, Targets::Fixed(set)) => set.targets.get(self.target),
            (None, Targets::Discovered(_)) => None,
        }
    }
}

/// Where a target came from: its `url:` entry, or a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Url,
    /// `dns:` entry (its `host:port`).
    Dns(Arc<str>),
    /// `srv:` entry (its name).
    Srv(Arc<str>),
}

impl Origin {
    pub fn describe(&self) -> String {
        match self {
            Origin::Url => "url".into(),
            Origin::Dns(name) => format!("dns {name}"),
            Origin::Srv(name) => format!("srv {name}"),
        }
    }
}

#[derive(Clone)]
pub struct Target {
    /// As written in the config, or `http://<address>` for a discovered one;
    /// the target's identity across reloads and lookups.
    pub url: Arc<str>,
    /// `http` or `https` (TLS to the target).
    pub scheme: Scheme,
    pub authority: Authority,
    /// Where its connections live (in the upstream's pool).
    pub endpoint: Arc<pool::Endpoint>,
    /// `host:port`, the `target` metric label and log field.
    pub label: Arc<str>,
    pub weight: u32,
    /// SRV priority (lower first); 0 for `url` and `dns` targets.
    pub priority: u16,
    pub origin: Origin,
    /// Carried across reloads (see `state`).
    pub state: Arc<TargetState>,
    pub metrics: TargetMetrics,
    /// `tollgate_outlier_ejections_total` by reason (5xx, connect_error), when
    /// the upstream has `outlier`.
    pub ejections: Option<[prometheus::IntCounter; 2]>,
}

impl Upstream {
    /// The targets as they are now.
    pub fn current(&self) -> Current<'_> {
        match &self.targets {
            Targets::Fixed(set) => Current::Fixed(set),
            Targets::Discovered(d) => Current::Shared(d.current()),
        }
    }

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

    /// Whether the health checks let `t` take traffic.
    fn passes_health(&self, t: &Target, ignore_health: bool) -> bool {
        ignore_health || self.health.is_none() || t.state.healthy.load(Ordering::Relaxed)
    }

    /// Whether passive health and `Retry-After` let `t` take traffic.
    fn not_held_back(&self, t: &Target, now: Instant) -> bool {
        (self.outlier.is_none() || t.state.outlier.ejection(now).is_none())
            && (self.retry_after_max.is_none() || !t.state.backoff_until.is_after(now))
    }

    fn circuit_admits(&self, t: &Target, now: Instant) -> bool {
        self.circuit
            .as_ref()
            .is_none_or(|s| t.state.circuit.would_admit(s, now))
    }

    /// Picks a target of `set` for one attempt and counts it as in flight.
    /// Skips unhealthy, ejected and backed-off targets, targets whose circuit
    /// is open, and those in `tried` unless nothing else is left. Errors:
    /// every target unhealthy (`no_healthy_upstream`, unless `fail_open`), or
    /// every healthy target's circuit open (`circuit_open`).
    pub fn pick(
        &self,
        set: &TargetSet,
        ctx: &PickContext<'_>,
        tried: &[usize],
        now: Instant,
    ) -> Result<usize, GatewayError> {
        let targets = &set.targets;
        let fail_open = self.health.as_ref().is_some_and(|h| h.fail_open)
            && !targets.iter().any(|t| self.passes_health(t, false));
        let load = |i: usize| targets[i].state.in_flight.load(Ordering::Relaxed);
        let ramp = self
            .slow_start
            .and_then(|window| slow_start::Ramp::of(targets, window, now));
        // Each loop turn either returns or rules out one more target (lost
        // half-open probe races), so it ends.
        let mut refused: Vec<usize> = Vec::new();
        loop {
            let usable = |i: usize| {
                let t = &targets[i];
                self.passes_health(t, fail_open)
                    && self.not_held_back(t, now)
                    && self.circuit_admits(t, now)
                    && !refused.contains(&i)
            };
            // SRV priorities: the best one that still has a usable target.
            let tier = set
                .tiered
                .then(|| {
                    (0..targets.len())
                        .filter(|&i| usable(i))
                        .map(|i| targets[i].priority)
                        .min()
                })
                .flatten();
            let in_tier = |i: usize| tier.is_none_or(|p| targets[i].priority == p);
            let picked = choose(set, ramp.as_ref(), ctx, load, |i| {
                in_tier(i) && usable(i) && !tried.contains(&i)
            })
            .or_else(|| choose(set, ramp.as_ref(), ctx, load, |i| in_tier(i) && usable(i)));
            let Some(i) = picked else {
                return Err(self.none_available(set, fail_open));
            };
            if self.admit(&targets[i], now) {
                targets[i].state.in_flight.fetch_add(1, Ordering::Relaxed);
                return Ok(i);
            }
            refused.push(i);
        }
    }

    /// Passes the circuit of `t` (taking a half-open probe slot).
    fn admit(&self, t: &Target, now: Instant) -> bool {
        let Some(s) = &self.circuit else {
            return true;
        };
        let (admitted, transition) = t.state.circuit.admit(s, now);
        if let Some(state) = transition {
            t.circuit_changed(&self.name, state);
        }
        admitted
    }

    fn none_available(&self, set: &TargetSet, fail_open: bool) -> GatewayError {
        let any_healthy = set.targets.iter().any(|t| self.passes_health(t, fail_open));
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

    /// An attempt on target `i` of `set` that got an answer: its outcome
    /// metric, the breaker's and passive health's verdicts, and a
    /// `Retry-After` on a 503 or 429 when the upstream honours it.
    pub fn record_answer(
        &self,
        set: &TargetSet,
        i: usize,
        status: u16,
        headers: &HeaderMap,
        now: Instant,
    ) {
        let failed = match &self.circuit {
            Some(c) => c.is_failure_status(status),
            None => circuit::DEFAULT_FAILURE_STATUSES.contains(&status),
        };
        let (outcome, seen) = if status >= 500 {
            (crate::metrics::Outcome::Http5xx, Seen::Http5xx)
        } else {
            (crate::metrics::Outcome::Success, Seen::Success)
        };
        let t = &set.targets[i];
        t.metrics.record(outcome);
        if let Some(max) = self.retry_after_max
            && matches!(status, 503 | 429)
            && let Some(wait) = retry::retry_after(headers, std::time::SystemTime::now())
        {
            let wait = wait.min(max);
            t.state.backoff_until.set(now + wait);
            tracing::info!(upstream = %self.name, target = %t.label, status, wait_s = wait.as_secs_f64(), "target asked to be left alone (Retry-After)");
        }
        self.record_attempt(set, i, Some(failed), seen, now);
    }

    /// Feeds the outcome of an attempt on target `i` of `set` to its circuit
    /// breaker and counters. `failure` follows the breaker's classification
    /// (`None` when the attempt says nothing about the target, e.g. the
    /// client's body failed). `seen` feeds passive health.
    pub fn record_attempt(
        &self,
        set: &TargetSet,
        i: usize,
        failure: Option<bool>,
        seen: Seen,
        now: Instant,
    ) {
        let t = &set.targets[i];
        let Some(failed) = failure else {
            return;
        };
        if let Some(s) = &self.outlier {
            self.observe(set, i, s, seen, now);
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
    fn observe(&self, set: &TargetSet, i: usize, s: &OutlierSettings, seen: Seen, now: Instant) {
        let t = &set.targets[i];
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
            let out = set
                .targets
                .iter()
                .filter(|t| t.state.outlier.flagged())
                .count();
            guard = Some(g);
            out < s.max_ejected(set.len())
        };
        let Some(e) = t.state.outlier.record(s, seen, now, may_eject) else {
            return;
        };
        drop(guard);
        // It rejoins when the ejection ends: its slow start begins then.
        t.state.joined.set(e.until);
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

/// One balancer pick over `set`, ramped while some target is in slow start
/// (generic, so the predicates inline into the balancer).
fn choose(
    set: &TargetSet,
    ramp: Option<&slow_start::Ramp<'_>>,
    ctx: &PickContext<'_>,
    load: impl Fn(usize) -> u32,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    match ramp {
        Some(r) => set
            .balancer
            .pick_ramped(ctx, load, eligible, |i| r.factor(i)),
        None => set.balancer.pick(ctx, load, eligible),
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
        let set = up.current();
        let h = http::HeaderMap::new();
        let now = Instant::now();

        // Tried targets are avoided while another one is usable, then reused.
        for _ in 0..4 {
            assert_eq!(up.pick(&set, &ctx(&h), &[0], now).unwrap(), 1);
            assert_eq!(up.pick(&set, &ctx(&h), &[1], now).unwrap(), 0);
        }
        assert!(up.pick(&set, &ctx(&h), &[0, 1], now).is_ok());

        // Target 0's circuit opens: only target 1 is picked.
        up.record_attempt(&set, 0, Some(true), Seen::Other, now);
        for _ in 0..4 {
            assert_eq!(up.pick(&set, &ctx(&h), &[], now).unwrap(), 1);
        }
        // Both open: circuit_open.
        up.record_attempt(&set, 1, Some(true), Seen::Other, now);
        let e = up.pick(&set, &ctx(&h), &[], now).unwrap_err();
        assert_eq!(e.code(), "circuit_open");
        // Both unhealthy: no_healthy_upstream, whatever the circuits.
        for t in &set.targets {
            t.state.healthy.store(false, Ordering::Relaxed);
        }
        let e = up.pick(&set, &ctx(&h), &[], now).unwrap_err();
        assert_eq!(e.code(), "no_healthy_upstream");
        // After open_for one target gets its half-open probe, once.
        for t in &set.targets {
            t.state.healthy.store(true, Ordering::Relaxed);
        }
        let later = now + Duration::from_secs(10);
        let probe = up.pick(&set, &ctx(&h), &[], later).unwrap();
        let other = up.pick(&set, &ctx(&h), &[], later).unwrap();
        assert_ne!(probe, other);
        assert_eq!(
            up.pick(&set, &ctx(&h), &[], later).unwrap_err().code(),
            "circuit_open"
        );
    }

    fn compiled(yaml: &str) -> Snapshot {
        let loaded = load_str(yaml, "t.yaml").unwrap();
        compile(&loaded, &Metrics::new().unwrap(), &Carryover::default()).unwrap()
    }

    /// The share of `n` picks at `at` that went to target `i`.
    fn share_of(up: &Upstream, set: &TargetSet, i: usize, n: usize, at: Instant) -> f64 {
        let h = http::HeaderMap::new();
        let hits = (0..n)
            .filter(|_| {
                let got = up.pick(set, &ctx(&h), &[], at).unwrap();
                set.targets[got]
                    .state
                    .in_flight
                    .fetch_sub(1, Ordering::Relaxed);
                got == i
            })
            .count();
        hits as f64 / n as f64
    }

    #[test]
    fn slow_start_ramps_the_share_of_a_joining_target() {
        for balance in ["round_robin", "least_request", "random"] {
            let snap = compiled(&format!(
                "
upstreams:
  a:
    targets: [{{ url: 'http://127.0.0.1:1' }}, {{ url: 'http://127.0.0.1:2' }}]
    balance: {balance}
    slow_start: 30s
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: a }}
"
            ));
            let up = &snap.upstreams[0];
            let set = up.current();
            let t0 = Instant::now();
            set.targets[1].state.joined.set(t0);
            // Effective weight 0.1, 0.55, then 1 against the other's 1.
            for (after, want) in [(0, 0.1 / 1.1), (15, 0.55 / 1.55), (30, 0.5)] {
                let got = share_of(up, &set, 1, 20_000, t0 + Duration::from_secs(after));
                assert!(
                    (got - want).abs() < 0.02,
                    "{balance} at {after}s: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn an_ejected_target_ramps_from_the_end_of_its_ejection() {
        let snap = compiled(
            "
upstreams:
  a:
    targets: [{ url: 'http://127.0.0.1:1' }, { url: 'http://127.0.0.1:2' }]
    outlier: { consecutive_5xx: 1, base_ejection: 10s }
    slow_start: 20s
routes:
  - { name: r, match: { path_prefix: / }, upstream: a }
",
        );
        let up = &snap.upstreams[0];
        let set = up.current();
        let t0 = Instant::now();
        up.record_answer(&set, 1, 500, &http::HeaderMap::new(), t0);
        assert_eq!(share_of(up, &set, 1, 100, t0 + Duration::from_secs(5)), 0.0);
        // Back at 10 s, on a tenth of its weight; full at 30 s.
        let early = share_of(up, &set, 1, 20_000, t0 + Duration::from_secs(10));
        assert!((early - 0.1 / 1.1).abs() < 0.02, "{early}");
        assert_eq!(
            share_of(up, &set, 1, 1000, t0 + Duration::from_secs(30)),
            0.5
        );
    }

    #[test]
    fn retry_after_holds_a_target_back_within_the_cap() {
        let snap = compiled(
            "
upstreams:
  a:
    targets: [{ url: 'http://127.0.0.1:1' }, { url: 'http://127.0.0.1:2' }]
    retry_after: { max: 5s }
routes:
  - { name: r, match: { path_prefix: / }, upstream: a }
",
        );
        let up = &snap.upstreams[0];
        let set = up.current();
        let t0 = Instant::now();
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        // A 500 with Retry-After says nothing; a 429 or 503 does.
        up.record_answer(&set, 0, 500, &h, t0);
        assert_eq!(share_of(up, &set, 0, 10, t0), 0.5);
        up.record_answer(&set, 0, 429, &h, t0);
        assert_eq!(share_of(up, &set, 0, 10, t0 + Duration::from_secs(4)), 0.0);
        assert_eq!(share_of(up, &set, 0, 10, t0 + Duration::from_secs(5)), 0.5);
        // Every target backed off: none is picked.
        up.record_answer(&set, 0, 503, &h, t0);
        up.record_answer(&set, 1, 503, &h, t0);
        let e = up.pick(&set, &ctx(&h), &[], t0).unwrap_err();
        assert_eq!(e.code(), "no_healthy_upstream");
    }
}
