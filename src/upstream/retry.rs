//! Retry policy of an upstream (`upstreams.*.retries`): which requests and which
//! outcomes are retried, the backoff between attempts, and the retry budget that
//! keeps retries from multiplying the load on a failing upstream.
//!
//! Budget rule: over a sliding window of the last 10 seconds (ten one-second
//! slots), the retries sent to an upstream may be at most `budget_percent` % of
//! the requests it received in that window, but at least 3 per second of window
//! (30) are always allowed, so a quiet upstream can still retry.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use prometheus::IntCounter;
use tokio::time::Instant;

/// Bodies up to this size (declared by Content-Length) are kept in memory so
/// the request can be replayed on another attempt. Larger or chunked bodies
/// stream and are never retried.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

pub const DEFAULT_METHODS: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::PUT,
    Method::DELETE,
    Method::TRACE,
];

pub const DEFAULT_ON: [&str; 6] = ["connect_error", "timeout", "reset", "502", "503", "504"];
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
/// The longest a single backoff may grow to.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Why an attempt may be retried (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ConnectError,
    Timeout,
    Reset,
    Status(u16),
}

pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub attempts: u32,
    pub methods: Vec<Method>,
    pub on_connect_error: bool,
    pub on_timeout: bool,
    pub on_reset: bool,
    /// Statuses that are retried, each with its `tollgate_retries_total` counter.
    pub on_statuses: Vec<(u16, IntCounter)>,
    pub connect_error_counter: IntCounter,
    pub timeout_counter: IntCounter,
    pub reset_counter: IntCounter,
    pub backoff: Duration,
    pub budget_percent: u32,
}

impl RetryPolicy {
    /// `m` may be retried after its request may have reached a target.
    pub fn allows_method(&self, m: &Method) -> bool {
        self.methods.contains(m)
    }

    /// `m` may be retried at all: after any failure when `allows_method`,
    /// otherwise only on a connect error, where nothing was sent and any
    /// method is safe to send again (RFC 9110 §9.2.2 speaks of requests the
    /// server may have acted on; this one never reached it).
    pub fn may_retry(&self, m: &Method) -> bool {
        self.on_connect_error || self.allows_method(m)
    }

    /// The counter of `reason` when this policy retries it.
    pub fn counter(&self, reason: RetryReason) -> Option<&IntCounter> {
        match reason {
            RetryReason::ConnectError => {
                self.on_connect_error.then_some(&self.connect_error_counter)
            }
            RetryReason::Timeout => self.on_timeout.then_some(&self.timeout_counter),
            RetryReason::Reset => self.on_reset.then_some(&self.reset_counter),
            RetryReason::Status(s) => self
                .on_statuses
                .iter()
                .find(|(code, _)| *code == s)
                .map(|(_, c)| c),
        }
    }

    /// The pause before retry number `retry` (1-based): `backoff * 2^(retry-1)`,
    /// capped at 1 s, with full jitter (uniform in [half, full]).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        let half = exp / 2;
        half + exp.saturating_sub(half).mul_f64(fastrand::f64())
    }
}

const SLOTS: usize = 10;
/// Retries always allowed per second of window, whatever the traffic.
const MIN_RETRIES_PER_SEC: u64 = 3;

/// Requests and retries of one upstream over the last `SLOTS` seconds, lock-free.
/// Slots are recycled by second number; a race at a slot's turnover may lose a
/// count or two, which a budget tolerates.
pub struct RetryBudget {
    origin: Instant,
    slots: [Slot; SLOTS],
}

#[derive(Default)]
struct Slot {
    /// Second (since `origin`) + 1 the counts belong to; 0 = never used.
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            origin: Instant::now(),
            slots: Default::default(),
        }
    }
}

impl RetryBudget {
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs() + 1
    }

    fn slot(&self, now: Instant) -> &Slot {
        let sec = self.second(now);
        let slot = &self.slots[(sec % SLOTS as u64) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != sec
            && slot
                .second
                .compare_exchange(seen, sec, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts one request (its first attempt).
    pub fn record_request(&self, now: Instant) {
        self.slot(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// (requests, retries) in the window ending now.
    fn window(&self, now: Instant) -> (u64, u64) {
        let sec = self.second(now);
        let mut totals = (0u64, 0u64);
        for slot in &self.slots {
            let s = slot.second.load(Ordering::Acquire);
            if s != 0 && s + (SLOTS as u64) > sec {
                totals.0 += u64::from(slot.requests.load(Ordering::Relaxed));
                totals.1 += u64::from(slot.retries.load(Ordering::Relaxed));
            }
        }
        totals
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_retry(&self, percent: u32, now: Instant) -> bool {
        let (requests, retries) = self.window(now);
        let allowed = (requests * u64::from(percent) / 100).max(MIN_RETRIES_PER_SEC * SLOTS as u64);
        if retries >= allowed {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The wait a `Retry-After` header asks for (RFC 9110 §10.2.3): delay
/// seconds, or an HTTP date after `now`. `None` when absent, malformed, or
/// already past.
pub fn retry_after(headers: &http::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = value.parse().ok()?;
        return (secs > 0).then(|| Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now).ok().filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_floor_then_a_percentage() {
        let b = RetryBudget::default();
        let now = Instant::now();
        // No traffic: the floor of 30 retries per window.
        let granted = (0..100).filter(|_| b.try_retry(20, now)).count();
        assert_eq!(granted, 30);

        // 1000 requests at 20%: 200 retries in the window.
        let b = RetryBudget::default();
        for _ in 0..1000 {
            b.record_request(now);
        }
        let granted = (0..1000).filter(|_| b.try_retry(20, now)).count();
        assert_eq!(granted, 200);
    }

    #[test]
    fn budget_window_slides() {
        let b = RetryBudget::default();
        let t0 = b.origin;
        for _ in 0..30 {
            assert!(b.try_retry(0, t0));
        }
        assert!(!b.try_retry(0, t0));
        assert!(!b.try_retry(0, t0 + Duration::from_secs(9)));
        assert!(b.try_retry(0, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            attempts: 5,
            methods: DEFAULT_METHODS.to_vec(),
            on_connect_error: true,
            on_timeout: true,
            on_reset: true,
            on_statuses: Vec::new(),
            connect_error_counter: IntCounter::new("a", "a").unwrap(),
            timeout_counter: IntCounter::new("b", "b").unwrap(),
            reset_counter: IntCounter::new("c", "c").unwrap(),
            backoff: Duration::from_millis(100),
            budget_percent: 20,
        };
        for _ in 0..50 {
            let first = p.backoff(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let third = p.backoff(3);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&third));
            assert!(p.backoff(30) <= MAX_BACKOFF);
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            m
        };
        assert_eq!(retry_after(&h("120"), now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(&h(" 7 "), now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&h(&later), now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        for bad in ["0", "-5", "1.5", "soon", earlier.as_str()] {
            assert_eq!(retry_after(&h(bad), now), None, "{bad}");
        }
        assert_eq!(retry_after(&http::HeaderMap::new(), now), None);
    }
}
