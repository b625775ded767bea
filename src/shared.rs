//! The state every request of the process shares: the running snapshot behind
//! one `ArcSwap`, the metrics, the state carried across config versions, the
//! access log and the process-wide counters.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::snapshot::carryover::Carryover;

/// State shared by every request of the process.
pub struct Shared {
    /// The running config version; one load per request.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    /// State that outlives config versions (pools, per-target state).
    pub carryover: Carryover,
    pub access_log: AccessLog,
    /// Requests in flight, for `server.limits.max_concurrent_requests`.
    pub in_flight: AtomicUsize,
    /// Set once shutdown begins: `/readyz` answers 503.
    pub draining: AtomicBool,
}

/// Seconds since the Unix epoch (0 before it).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
