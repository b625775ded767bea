//! Slow start (`upstreams.*.slow_start`): a target that joins (a new DNS
//! address, a health check passed again, the end of an ejection) takes a
//! share that grows linearly from 10 % of its weight to all of it over the
//! window. While any target of a set ramps, round robin and random pick by
//! weighted draw over the effective weights and least_request draws its two
//! candidates that way; once every target is at full weight, picking is the
//! plain balancer again.
//!
//! `Moment` is an instant in one atomic word, so `TargetState` can hold when a
//! target joined (and until when it asked to be left alone) without a lock.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::Target;

/// The share a target starts its ramp with.
pub const START_FACTOR: f64 = 0.1;

/// The zero of `Moment`: a little before the process began, so that every
/// instant it sees (paused test clocks start at the real now) comes after it.
static BASE: LazyLock<std::time::Instant> = LazyLock::new(|| {
    let now = std::time::Instant::now();
    [86_400, 3_600, 60, 1]
        .into_iter()
        .find_map(|s| now.checked_sub(Duration::from_secs(s)))
        .unwrap_or(now)
});

/// An optional instant, stored as nanoseconds after `BASE` plus one (0 = none).
#[derive(Debug, Default)]
pub struct Moment(AtomicU64);

impl Moment {
    pub fn set(&self, at: Instant) {
        let nanos = at.into_std().saturating_duration_since(*BASE).as_nanos();
        let word = u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1;
        self.0.store(word, Ordering::Relaxed);
    }

    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<Instant> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            word => Some(Instant::from_std(*BASE + Duration::from_nanos(word - 1))),
        }
    }

    /// Whether the moment is set and still ahead of `now`.
    pub fn is_after(&self, now: Instant) -> bool {
        self.get().is_some_and(|at| at > now)
    }
}

/// The ramp of one set at one pick: present only while some target ramps.
pub struct Ramp<'a> {
    targets: &'a [Target],
    window: Duration,
    now: Instant,
}

impl<'a> Ramp<'a> {
    pub fn of(targets: &'a [Target], window: Duration, now: Instant) -> Option<Ramp<'a>> {
        let ramp = Ramp {
            targets,
            window,
            now,
        };
        (0..targets.len())
            .any(|i| ramp.factor(i) < 1.0)
            .then_some(ramp)
    }

    /// The share of its weight target `i` takes now: 0.1 when it just
    /// joined, rising linearly to 1 at the end of the window.
    pub fn factor(&self, i: usize) -> f64 {
        let Some(joined) = self.targets[i].state.joined.get() else {
            return 1.0;
        };
        factor(joined, self.window, self.now)
    }
}

/// The ramp at `now` of a target that joined at `joined`.
pub fn factor(joined: Instant, window: Duration, now: Instant) -> f64 {
    if now < joined {
        // Not back yet (an ejection that has not ended): the pick skips it anyway.
        return START_FACTOR;
    }
    let done = (now - joined).as_secs_f64() / window.as_secs_f64();
    if done >= 1.0 {
        1.0
    } else {
        START_FACTOR + (1.0 - START_FACTOR) * done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_round_trip_and_compare() {
        let m = Moment::default();
        let now = Instant::now();
        assert_eq!(m.get(), None);
        assert!(!m.is_after(now));
        m.set(now + Duration::from_secs(5));
        assert!(m.is_after(now));
        assert!(!m.is_after(now + Duration::from_secs(5)));
        let got = m.get().unwrap();
        assert!(got.duration_since(now) >= Duration::from_secs(5) - Duration::from_nanos(1));
        m.clear();
        assert_eq!(m.get(), None);
    }

    #[test]
    fn the_ramp_is_linear_from_a_tenth() {
        let t0 = Instant::now();
        let w = Duration::from_secs(30);
        assert_eq!(factor(t0, w, t0), START_FACTOR);
        let mid = factor(t0, w, t0 + Duration::from_secs(15));
        assert!((mid - 0.55).abs() < 1e-9, "{mid}");
        assert_eq!(factor(t0, w, t0 + w), 1.0);
        assert_eq!(factor(t0, w, t0 + 2 * w), 1.0);
        // Before it joined (an ejection still running): the start.
        assert_eq!(factor(t0 + w, w, t0), START_FACTOR);
    }
}
