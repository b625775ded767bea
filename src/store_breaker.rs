//! Fail fast on a dead shared store (Redis). After `TRIP_AFTER` consecutive
//! failed calls, requests stop calling the store: each one is decided at once
//! by its policy's `on_store_error`, instead of waiting out the store's timeout.
//! A background task probes the store after a cool-down (100 ms, doubling up
//! to 5 s while the probes fail) and lets requests through again on the first
//! probe that succeeds. A leaf: the rate limiter and the idempotency store each
//! keep one per Redis connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// Consecutive failures that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// The first cool-down before a probe; it doubles per failed probe.
pub const FIRST_COOLDOWN: Duration = Duration::from_millis(100);
/// The longest cool-down between probes.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(5);

/// One probe of the store: true when it answered.
pub type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

pub struct StoreBreaker {
    failures: AtomicU32,
    open: AtomicBool,
    /// Times the breaker opened since the store last worked (for logs).
    trips: AtomicU32,
    probe: Probe,
    name: Arc<str>,
}

impl StoreBreaker {
    /// `name` says which store this is in logs (`rate limit policy x`).
    pub fn new(name: impl Into<Arc<str>>, probe: Probe) -> Arc<Self> {
        Arc::new(StoreBreaker {
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            trips: AtomicU32::new(0),
            probe,
            name: name.into(),
        })
    }

    /// Whether a request should skip the store and take its `on_store_error`
    /// decision now.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// A call to the store answered.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A call to the store failed or timed out: the `TRIP_AFTER`th in a row
    /// opens the breaker and starts the probe task.
    pub fn failed(self: &Arc<Self>) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < TRIP_AFTER || self.open.swap(true, Ordering::AcqRel) {
            return;
        }
        let trips = self.trips.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(store = %self.name, failures = n, trips,
            "store unreachable: requests skip it (on_store_error) until a probe succeeds");
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::downgrade(self);
        rt.spawn(async move {
            let mut cooldown = FIRST_COOLDOWN;
            loop {
                tokio::time::sleep(cooldown).await;
                // The policy was dropped by a reload: nothing left to guard.
                let Some(b) = me.upgrade() else { return };
                if (b.probe)().await {
                    b.failures.store(0, Ordering::Relaxed);
                    b.open.store(false, Ordering::Release);
                    tracing::info!(store = %b.name, "store answers again: requests use it");
                    return;
                }
                cooldown = (cooldown * 2).min(MAX_COOLDOWN);
            }
        });
    }
}

/// `s` with Redis glob metacharacters (`*`, `?`, `[`, `]`, `\`) escaped, for
/// a `SCAN MATCH` pattern that must take them literally.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A Redis connection made on first use and re-made by the connection
/// manager after Redis comes back; every call bounded by the timeouts.
pub fn redis_connection(
    url: &str,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<redis::aio::ConnectionManager, String> {
    let client = redis::Client::open(url).map_err(|e| format!("bad redis url: {e}"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    redis::aio::ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| format!("redis: {e}"))
}

/// A PING within `timeout`, for a breaker's background probe.
pub fn redis_probe(conn: &redis::aio::ConnectionManager, timeout: Duration) -> Probe {
    let conn = conn.clone();
    Arc::new(move || {
        let mut conn = conn.clone();
        Box::pin(async move {
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(_)))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn breaker(up: Arc<AtomicBool>, probes: Arc<AtomicUsize>) -> Arc<StoreBreaker> {
        StoreBreaker::new(
            "test",
            Arc::new(move || {
                let (up, probes) = (up.clone(), probes.clone());
                Box::pin(async move {
                    probes.fetch_add(1, Ordering::SeqCst);
                    up.load(Ordering::SeqCst)
                })
            }),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_three_failures_and_closes_on_a_probe() {
        let up = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(AtomicUsize::new(0));
        let b = breaker(up.clone(), probes.clone());
        b.failed();
        b.succeeded();
        b.failed();
        b.failed();
        assert!(!b.is_open(), "a success in between resets the count");
        b.failed();
        assert!(b.is_open());

        // Probes at 100 ms, then 200 ms, 400 ms later...
        tokio::time::sleep(Duration::from_millis(101)).await;
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(probes.load(Ordering::SeqCst), 2);
        assert!(b.is_open());
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(probes.load(Ordering::SeqCst), 3);
        assert!(!b.is_open(), "the first probe that succeeds closes it");

        // Closed again: it takes three more failures to reopen.
        b.failed();
        b.failed();
        assert!(!b.is_open());
        b.failed();
        assert!(b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn the_cooldown_grows_to_its_cap() {
        let probes = Arc::new(AtomicUsize::new(0));
        let b = breaker(Arc::new(AtomicBool::new(false)), probes.clone());
        for _ in 0..TRIP_AFTER {
            b.failed();
        }
        // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 = 6.3 s, then every 5 s.
        tokio::time::sleep(Duration::from_millis(6_301)).await;
        assert_eq!(probes.load(Ordering::SeqCst), 6);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(probes.load(Ordering::SeqCst), 8);
        drop(b);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            probes.load(Ordering::SeqCst),
            8,
            "a dropped breaker stops probing"
        );
    }
}
