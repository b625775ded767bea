//! The circuit breaker of one target: an explicit closed -> open -> half-open
//! state machine fed by the classified outcome of each attempt.
//!
//! - Closed: every request passes; `consecutive_failures` failures in a row open it.
//! - Open: no request passes until `open_for` has elapsed; the first request after
//!   that moves it to half-open.
//! - Half-open: at most `half_open_max_requests` probes pass; a probe's success
//!   closes the circuit, its failure re-opens it for another `open_for`.
//!
//! The state sits behind a tiny per-target mutex (held for a few instructions,
//! never across an await). Time is passed in (`now`): the clock is the caller's,
//! so tests step it by hand.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The breaker settings of an upstream (`upstreams.*.circuit_breaker`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitSettings {
    pub consecutive_failures: u32,
    pub failure_statuses: Vec<u16>,
    pub open_for: Duration,
    pub half_open_max_requests: u32,
}

impl CircuitSettings {
    /// Whether an answer with this status counts as a failure.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.failure_statuses.contains(&status)
    }
}

/// Default `failure_statuses`.
pub const DEFAULT_FAILURE_STATUSES: [u16; 4] = [500, 502, 503, 504];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// The `tollgate_circuit_state` gauge value.
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    /// Consecutive failures while closed.
    failures: u32,
    /// When the circuit last opened (open) or turned half-open (half-open).
    since: Option<Instant>,
    /// Probes admitted in the current half-open period.
    probes: u32,
}

#[derive(Debug)]
pub struct Circuit {
    inner: Mutex<Inner>,
}

impl Default for Circuit {
    fn default() -> Self {
        Circuit {
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                failures: 0,
                since: None,
                probes: 0,
            }),
        }
    }
}

/// A state change, reported so the caller can update the gauge and log.
pub type Transition = Option<CircuitState>;

impl Circuit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state as stored (an open circuit whose `open_for` passed stays
    /// "open" here until a request moves it to half-open).
    pub fn state(&self) -> CircuitState {
        self.lock().state
    }

    /// Whether a request could be admitted now, without admitting it (the
    /// balancer's eligibility test).
    pub fn would_admit(&self, s: &CircuitSettings, now: Instant) -> bool {
        let inner = self.lock();
        match inner.state {
            CircuitState::Closed => true,
            CircuitState::Open => inner.since.is_none_or(|t| now >= t + s.open_for),
            CircuitState::HalfOpen => {
                inner.probes < s.half_open_max_requests || probes_expired(&inner, s, now)
            }
        }
    }

    /// Admits one request to the target, or refuses it. In half-open each
    /// admission is a probe. Returns whether it was admitted and any transition.
    pub fn admit(&self, s: &CircuitSettings, now: Instant) -> (bool, Transition) {
        let mut inner = self.lock();
        match inner.state {
            CircuitState::Closed => (true, None),
            CircuitState::Open => {
                if inner.since.is_some_and(|t| now < t + s.open_for) {
                    return (false, None);
                }
                inner.state = CircuitState::HalfOpen;
                inner.since = Some(now);
                inner.probes = 1;
                (true, Some(CircuitState::HalfOpen))
            }
            CircuitState::HalfOpen => {
                // A probe whose answer never came (its client went away) must
                // not hold the circuit half-open forever: after another
                // `open_for`, new probes are allowed.
                if probes_expired(&inner, s, now) {
                    inner.since = Some(now);
                    inner.probes = 0;
                }
                if inner.probes < s.half_open_max_requests {
                    inner.probes += 1;
                    (true, None)
                } else {
                    (false, None)
                }
            }
        }
    }

    /// Feeds the outcome of an admitted attempt.
    pub fn record(&self, s: &CircuitSettings, failed: bool, now: Instant) -> Transition {
        let mut inner = self.lock();
        match (inner.state, failed) {
            (CircuitState::Closed, false) => {
                inner.failures = 0;
                None
            }
            (CircuitState::Closed, true) => {
                inner.failures += 1;
                if inner.failures >= s.consecutive_failures {
                    open(&mut inner, now);
                    Some(CircuitState::Open)
                } else {
                    None
                }
            }
            (CircuitState::HalfOpen, false) => {
                inner.state = CircuitState::Closed;
                inner.failures = 0;
                inner.since = None;
                inner.probes = 0;
                Some(CircuitState::Closed)
            }
            (CircuitState::HalfOpen, true) => {
                open(&mut inner, now);
                Some(CircuitState::Open)
            }
            // A late answer to a request admitted before the circuit opened
            // changes nothing: the open period runs its course.
            (CircuitState::Open, _) => None,
        }
    }
}

fn open(inner: &mut Inner, now: Instant) {
    inner.state = CircuitState::Open;
    inner.since = Some(now);
    inner.failures = 0;
    inner.probes = 0;
}

fn probes_expired(inner: &Inner, s: &CircuitSettings, now: Instant) -> bool {
    inner.since.is_some_and(|t| now >= t + s.open_for)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CircuitSettings {
        CircuitSettings {
            consecutive_failures: 3,
            failure_statuses: DEFAULT_FAILURE_STATUSES.to_vec(),
            open_for: Duration::from_secs(10),
            half_open_max_requests: 1,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let (s, c) = (settings(), Circuit::default());
        let now = Instant::now();
        assert_eq!(c.record(&s, true, now), None);
        assert_eq!(c.record(&s, true, now), None);
        // A success in between resets the count.
        assert_eq!(c.record(&s, false, now), None);
        assert_eq!(c.record(&s, true, now), None);
        assert_eq!(c.record(&s, true, now), None);
        assert_eq!(c.record(&s, true, now), Some(CircuitState::Open));
        assert_eq!(c.state(), CircuitState::Open);
        assert!(!c.would_admit(&s, now));
        assert_eq!(c.admit(&s, now), (false, None));
    }

    #[test]
    fn half_open_admits_limited_probes_then_closes_on_success() {
        let (s, c) = (settings(), Circuit::default());
        let mut now = Instant::now();
        for _ in 0..3 {
            c.record(&s, true, now);
        }
        now += Duration::from_millis(9_999);
        assert!(!c.would_admit(&s, now));
        now += Duration::from_millis(1);
        assert!(c.would_admit(&s, now));
        assert_eq!(c.admit(&s, now), (true, Some(CircuitState::HalfOpen)));
        // Only one probe at a time.
        assert!(!c.would_admit(&s, now));
        assert_eq!(c.admit(&s, now), (false, None));
        assert_eq!(c.record(&s, false, now), Some(CircuitState::Closed));
        assert_eq!(c.admit(&s, now), (true, None));
    }

    #[test]
    fn a_failed_probe_reopens_for_another_period() {
        let (s, c) = (settings(), Circuit::default());
        let mut now = Instant::now();
        for _ in 0..3 {
            c.record(&s, true, now);
        }
        now += Duration::from_secs(10);
        assert!(c.admit(&s, now).0);
        assert_eq!(c.record(&s, true, now), Some(CircuitState::Open));
        now += Duration::from_secs(5);
        assert!(!c.would_admit(&s, now));
        now += Duration::from_secs(5);
        assert_eq!(c.admit(&s, now), (true, Some(CircuitState::HalfOpen)));
    }

    #[test]
    fn a_lost_probe_does_not_wedge_half_open() {
        let (s, c) = (settings(), Circuit::default());
        let mut now = Instant::now();
        for _ in 0..3 {
            c.record(&s, true, now);
        }
        now += Duration::from_secs(10);
        assert!(c.admit(&s, now).0);
        // The probe never reports. After another open_for, a new probe goes.
        now += Duration::from_secs(10);
        assert!(c.would_admit(&s, now));
        assert!(c.admit(&s, now).0);
        assert_eq!(c.state(), CircuitState::HalfOpen);
    }

    #[test]
    fn late_results_while_open_change_nothing() {
        let (s, c) = (settings(), Circuit::default());
        let now = Instant::now();
        for _ in 0..3 {
            c.record(&s, true, now);
        }
        assert_eq!(c.record(&s, false, now), None);
        assert_eq!(c.record(&s, true, now), None);
        assert_eq!(c.state(), CircuitState::Open);
    }
}
