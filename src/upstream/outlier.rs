//! Passive health (outlier detection) of one target: real traffic's answers,
//! not probes. `consecutive_5xx` 5xx answers in a row, or
//! `consecutive_connect_errors` failed connections in a row, eject the target
//! for `base_ejection × n` (n: its ejections in a row, at most
//! `MAX_MULTIPLIER`), unless that would put more than `max_ejection_percent`
//! of the upstream's targets out. A success ends both streaks.
//!
//! The state sits behind a per-target mutex held for a few instructions;
//! `ejected` is a flag read without it, so a pick on a target that was never
//! ejected costs one atomic load. Time is passed in, as for the circuit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// `upstreams.*.outlier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSettings {
    pub consecutive_5xx: u32,
    pub consecutive_connect_errors: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl OutlierSettings {
    /// How many of `targets` may be out at once.
    pub fn max_ejected(&self, targets: usize) -> usize {
        targets * self.max_ejection_percent as usize / 100
    }
}

/// The longest ejection is this many times `base_ejection`; a target that
/// stays in for as long is forgiven its earlier ejections.
pub const MAX_MULTIPLIER: u32 = 10;

/// Why a target was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Http5xx,
    ConnectError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Http5xx => "5xx",
            Reason::ConnectError => "connect_error",
        }
    }
}

/// What one attempt said about the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// An answer below 500.
    Success,
    Http5xx,
    ConnectError,
    /// A timeout or a reset: neither streak moves.
    Other,
}

#[derive(Debug, Default)]
struct Inner {
    fives: u32,
    connects: u32,
    /// Ejections in a row (forgiven after `MAX_MULTIPLIER × base_ejection` in).
    ejections: u32,
    until: Option<Instant>,
    reason: Option<Reason>,
}

/// An ejection in force: why, until when, and the how-manieth in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub reason: Reason,
    pub until: Instant,
    pub count: u32,
}

#[derive(Debug, Default)]
pub struct Outlier {
    ejected: AtomicBool,
    inner: Mutex<Inner>,
}

impl Outlier {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an ejection was set and not yet seen to end.
    pub fn flagged(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// The ejection in force at `now`, if any.
    pub fn ejection(&self, now: Instant) -> Option<Ejection> {
        if !self.ejected.load(Ordering::Relaxed) {
            return None;
        }
        let mut g = self.lock();
        match (g.until, g.reason) {
            (Some(until), Some(reason)) if now < until => Some(Ejection {
                reason,
                until,
                count: g.ejections,
            }),
            _ => {
                // Back in: the next pick may choose it.
                g.fives = 0;
                g.connects = 0;
                self.ejected.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// Feeds one attempt's outcome. When a streak reaches its threshold and
    /// `may_eject()` allows one more target out, the target is ejected and
    /// the ejection returned (the caller counts and logs it).
    pub fn record(
        &self,
        s: &OutlierSettings,
        seen: Seen,
        now: Instant,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Ejection> {
        if self.ejected.load(Ordering::Relaxed) {
            // Answers of requests sent before the ejection change nothing.
            return None;
        }
        let mut g = self.lock();
        let reason = match seen {
            Seen::Success => {
                g.fives = 0;
                g.connects = 0;
                return None;
            }
            Seen::Other => return None,
            Seen::Http5xx => {
                g.fives += 1;
                (g.fives >= s.consecutive_5xx).then_some(Reason::Http5xx)?
            }
            Seen::ConnectError => {
                g.connects += 1;
                (g.connects >= s.consecutive_connect_errors).then_some(Reason::ConnectError)?
            }
        };
        if !may_eject() {
            return None;
        }
        let forgiven = g.until.is_some_and(|end| {
            now.saturating_duration_since(end) >= s.base_ejection * MAX_MULTIPLIER
        });
        if forgiven {
            g.ejections = 0;
        }
        g.ejections = (g.ejections + 1).min(MAX_MULTIPLIER);
        let until = now + s.base_ejection * g.ejections;
        g.until = Some(until);
        g.reason = Some(reason);
        g.fives = 0;
        g.connects = 0;
        self.ejected.store(true, Ordering::Relaxed);
        Some(Ejection {
            reason,
            until,
            count: g.ejections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx: 3,
            consecutive_connect_errors: 2,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn exactly_n_5xx_in_a_row_eject_and_a_success_breaks_the_streak() {
        let (s, o, t0) = (settings(), Outlier::default(), Instant::now());
        assert!(o.record(&s, Seen::Http5xx, t0, || true).is_none());
        assert!(o.record(&s, Seen::Http5xx, t0, || true).is_none());
        assert!(o.record(&s, Seen::Success, t0, || true).is_none());
        assert!(o.record(&s, Seen::Http5xx, t0, || true).is_none());
        assert!(o.record(&s, Seen::Other, t0, || true).is_none());
        assert!(o.record(&s, Seen::Http5xx, t0, || true).is_none());
        let e = o
            .record(&s, Seen::Http5xx, t0, || true)
            .expect("the third in a row");
        assert_eq!(
            (e.reason, e.count, e.until),
            (Reason::Http5xx, 1, t0 + s.base_ejection)
        );
        assert!(o.ejection(t0 + Duration::from_secs(29)).is_some());
        assert!(
            o.ejection(t0 + Duration::from_secs(30)).is_none(),
            "back after 30 s"
        );
    }

    #[test]
    fn ejections_in_a_row_grow_to_the_cap_and_are_forgiven_later() {
        let (s, o) = (settings(), Outlier::default());
        let mut now = Instant::now();
        for n in 1..=12u32 {
            o.record(&s, Seen::ConnectError, now, || true);
            let e = o
                .record(&s, Seen::ConnectError, now, || true)
                .expect("ejected");
            assert_eq!(e.count, n.min(MAX_MULTIPLIER));
            assert_eq!(e.until - now, s.base_ejection * n.min(MAX_MULTIPLIER));
            now = e.until;
            assert!(o.ejection(now).is_none());
        }
        // In for ten base periods: the next ejection is a first one again.
        now += s.base_ejection * MAX_MULTIPLIER;
        o.record(&s, Seen::ConnectError, now, || true);
        let e = o.record(&s, Seen::ConnectError, now, || true).unwrap();
        assert_eq!(e.count, 1);
    }

    #[test]
    fn the_cap_refuses_and_the_streak_waits() {
        let (s, o, t0) = (settings(), Outlier::default(), Instant::now());
        for _ in 0..5 {
            assert!(o.record(&s, Seen::Http5xx, t0, || false).is_none());
        }
        assert!(o.ejection(t0).is_none());
        // Once the cap allows it, the next 5xx ejects.
        assert!(o.record(&s, Seen::Http5xx, t0, || true).is_some());
        assert_eq!(s.max_ejected(1), 0);
        assert_eq!(s.max_ejected(2), 1);
        assert_eq!(s.max_ejected(5), 2);
    }
}
