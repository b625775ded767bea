//! Rate limits (docs/guide/rate-limits.md: `rate_limits`, route `rate_limit`):
//! token buckets per key, computed as GCRA.
//!
//! `store: local` uses governor's GCRA over a memory-bounded store (`BoundedStore`:
//! sharded bounded caches, so a flood of new keys evicts keys instead of
//! growing without bound). `store: redis` runs the same GCRA in Redis,
//! atomically in one Lua script, so several gateway instances share one bucket
//! per key. Limiter state lives in `Carryover`, so buckets survive a reload for
//! policies whose definition did not change.

use std::hash::Hasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use http::request::Parts;
use xxhash_rust::xxh3::Xxh3;

use crate::config::schema;
use crate::config::values::KeyKind;
use crate::store_breaker::{StoreBreaker, redis_connection, redis_probe};

/// The facts a key is taken from.
pub struct KeySource<'a> {
    pub client_ip: IpAddr,
    pub parts: &'a Parts,
    pub consumer: Option<&'a str>,
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// The consumer the credential resolved to (`consumers`), if any.
    pub resolved: Option<&'a crate::policy::consumers::Consumer>,
}

impl KeyKind {
    /// The bucket key: a 64-bit hash of the key's value. A request that lacks
    /// the header, claim or API key falls back to its client IP, so leaving the
    /// value out never escapes the limit.
    pub fn key(&self, src: &KeySource<'_>) -> u64 {
        let mut h = Xxh3::new();
        let hashed_value = match self {
            KeyKind::Route => Some(()),
            KeyKind::ClientIp => None,
            KeyKind::Header(name) => src.parts.headers.get(name).map(|v| {
                h.write_u8(1);
                h.write(v.as_bytes());
            }),
            KeyKind::JwtClaim(claim) => src.claims.and_then(|c| c.get(claim)).map(|v| {
                h.write_u8(2);
                match v {
                    serde_json::Value::String(s) => h.write(s.as_bytes()),
                    other => h.write(other.to_string().as_bytes()),
                }
            }),
            KeyKind::ApiKey => src.consumer.map(|id| {
                h.write_u8(3);
                h.write(id.as_bytes());
            }),
            KeyKind::Consumer => src.resolved.map(|c| {
                h.write_u8(4);
                h.write(c.name.as_bytes());
            }),
            // A consumer without a group is a group of its own.
            KeyKind::ConsumerGroup => src.resolved.map(|c| match &c.group {
                Some(g) => {
                    h.write_u8(5);
                    h.write(g.name.as_bytes());
                }
                None => {
                    h.write_u8(4);
                    h.write(c.name.as_bytes());
                }
            }),
        };
        if hashed_value.is_none() {
            h.write_u8(0);
            match src.client_ip {
                IpAddr::V4(ip) => h.write(&ip.octets()),
                IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                    Some(v4) => h.write(&v4.octets()),
                    None => h.write(&ip.octets()),
                },
            }
        }
        h.finish()
    }
}

/// The result of admitting a request against one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The bucket capacity (`burst`).
    pub limit: u32,
    /// Tokens left after this request (0 when refused).
    pub remaining: u32,
    /// Seconds until the bucket is full again (rounded up).
    pub reset_secs: u64,
    /// Seconds until a request may pass again (rounded up, at least 1), when refused.
    pub retry_after_secs: u64,
}

/// The limiter's clock: tokio's, so tests with paused time drive it exactly.
#[derive(Clone)]
pub struct TokioClock {
    base: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            base: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(self.base.elapsed())
    }
}

/// Key -> theoretical arrival time, in sharded bounded caches (quick_cache's
/// S3-FIFO): at most `capacity` keys. A key seen once goes to a small
/// probation queue first, so a flood of one-off keys evicts mostly its own
/// kind, not the buckets of returning clients. A shard lock is held only for
/// one GCRA step, and requests spread over the shards by key.
pub struct BoundedStore {
    shards: Box<[Mutex<KeyCache>]>,
}

type KeyCache = quick_cache::unsync::Cache<u64, Nanos>;

const SHARDS: usize = 64;

impl BoundedStore {
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        BoundedStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(KeyCache::new(per_shard)))
                .collect(),
        }
    }

    fn shard(&self, key: u64) -> &Mutex<KeyCache> {
        // The key is a hash already; its top bits pick the shard.
        &self.shards[(key >> 58) as usize % SHARDS]
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops keys whose bucket is full again (their arrival time has passed):
    /// such a key behaves exactly like one never seen, so dropping it changes
    /// no decision and returns its memory.
    pub fn sweep(&self, now: Nanos) {
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, tat| *tat > now);
        }
    }
}

/// The store as governor sees it; the limiter keeps a second handle to sweep it.
pub struct SharedStore(Arc<BoundedStore>);

impl StateStore for SharedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self
            .0
            .shard(*key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (out, tat) = f(map.get(key).copied())?;
        map.insert(*key, tat);
        Ok(out)
    }
}

type KeyedLimiter = RateLimiter<u64, SharedStore, TokioClock, StateInformationMiddleware>;
type SharedLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

/// An in-process limiter.
pub enum LocalLimiter {
    Keyed {
        limiter: KeyedLimiter,
        store: Arc<BoundedStore>,
        clock: TokioClock,
    },
    Shared(SharedLimiter),
}

/// The token bucket of a policy: `burst` tokens, one more every `period / count`.
pub fn quota(rate: &crate::config::units::Rate, burst: u32) -> Option<Quota> {
    let per_token = rate.per.checked_div(u32::try_from(rate.count).ok()?)?;
    Quota::with_period(per_token.max(Duration::from_nanos(1)))?
        .allow_burst(NonZeroU32::new(burst)?)
        .into()
}

impl LocalLimiter {
    pub fn new(quota: Quota, shared_bucket: bool, max_keys: usize) -> Self {
        let clock = TokioClock::default();
        if shared_bucket {
            LocalLimiter::Shared(RateLimiter::new(quota, InMemoryState::default(), clock))
        } else {
            let store = Arc::new(BoundedStore::new(max_keys));
            LocalLimiter::Keyed {
                limiter: RateLimiter::new(quota, SharedStore(store.clone()), clock.clone()),
                store,
                clock,
            }
        }
    }

    pub fn check(&self, key: u64) -> Verdict {
        let (outcome, now) = match self {
            LocalLimiter::Keyed { limiter, clock, .. } => (limiter.check_key(&key), clock.now()),
            LocalLimiter::Shared(limiter) => (limiter.check(), limiter.clock().now()),
        };
        match outcome {
            Ok(snapshot) => {
                let q = snapshot.quota();
                let limit = q.burst_size().get();
                let remaining = snapshot.remaining_burst_capacity();
                let per = q.replenish_interval();
                Verdict {
                    allowed: true,
                    limit,
                    remaining,
                    reset_secs: ceil_secs(per * (limit - remaining)),
                    retry_after_secs: 0,
                }
            }
            Err(not_until) => {
                let q = not_until.quota();
                let wait = not_until.wait_time_from(now);
                let limit = q.burst_size().get();
                Verdict {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset_secs: ceil_secs(wait + q.replenish_interval() * (limit - 1)),
                    retry_after_secs: ceil_secs(wait).max(1),
                }
            }
        }
    }

    /// Frees keys that are idle (see `BoundedStore::sweep`).
    pub fn sweep(&self) {
        if let LocalLimiter::Keyed { store, clock, .. } = self {
            store.sweep(clock.now());
        }
    }

    /// Keys held in memory.
    pub fn keys(&self) -> usize {
        match self {
            LocalLimiter::Keyed { store, .. } => store.len(),
            LocalLimiter::Shared(_) => 1,
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 { s + 1 } else { s }
}

/// The definition a limiter was built from; a reload keeps the limiter (and its
/// buckets) while this stays equal.
pub fn definition(p: &schema::RateLimit) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}",
        p.rate,
        p.burst.unwrap_or(0),
        p.key,
        p.store,
        p.on_store_error,
        p.max_keys
    )
}

/// GCRA in Redis, atomically: read the key's theoretical arrival time (TAT),
/// decide, write the new TAT with an expiry. Time comes from Redis itself
/// (`TIME`), so instances with skewed clocks still share one timeline. Units are
/// microseconds. Returns {allowed, remaining, retry_after_us, reset_us}.
const GCRA_LUA: &str = r"
local t = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tau = t * (burst - 1)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local earliest = tat - tau
if now < earliest then
  return {0, 0, earliest - now, tat - now}
end
local new_tat = tat + t
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((now + tau + t - new_tat) / t)
return {1, remaining, 0, new_tat - now}
";

/// A limiter whose buckets live in Redis, shared by every gateway instance.
pub struct RedisLimiter {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    prefix: String,
    interval_us: u64,
    burst: u32,
    timeout: Duration,
    /// Skips Redis while it keeps failing (`store_breaker`).
    breaker: Arc<StoreBreaker>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered something unexpected")]
    BadReply,
    #[error("redis failed repeatedly; skipped until a probe succeeds")]
    Skipped,
}

impl RedisLimiter {
    /// Creates the limiter without connecting: the connection is made on first
    /// use and re-made by the connection manager after Redis comes back.
    pub fn new(url: &str, timeout: Duration, policy: &str, quota: Quota) -> Result<Self, String> {
        let conn = redis_connection(url, timeout, timeout)?;
        let interval = quota.replenish_interval();
        let breaker = StoreBreaker::new(
            format!("rate limit policy {policy}"),
            redis_probe(&conn, timeout),
        );
        Ok(RedisLimiter {
            breaker,
            conn,
            script: redis::Script::new(GCRA_LUA),
            prefix: format!("tollgate:rl:{policy}:"),
            interval_us: u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            burst: quota.burst_size().get(),
            timeout,
        })
    }

    /// The verdict from Redis; `Skipped` at once while the breaker is open.
    pub async fn check(&self, key: u64) -> Result<Verdict, StoreError> {
        if self.breaker.is_open() {
            return Err(StoreError::Skipped);
        }
        let verdict = self.call(key).await;
        match &verdict {
            Ok(_) => self.breaker.succeeded(),
            Err(_) => self.breaker.failed(),
        }
        verdict
    }

    async fn call(&self, key: u64) -> Result<Verdict, StoreError> {
        let mut conn = self.conn.clone();
        let mut redis_key = String::with_capacity(self.prefix.len() + 16);
        redis_key.push_str(&self.prefix);
        {
            use std::fmt::Write;
            let _ = write!(redis_key, "{key:016x}");
        }
        let mut invocation = self.script.key(redis_key);
        invocation.arg(self.interval_us).arg(self.burst);
        let reply: Vec<i64> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| StoreError::Timeout(self.timeout))??;
        let [allowed, remaining, retry_us, reset_us] = reply[..] else {
            return Err(StoreError::BadReply);
        };
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(Verdict {
            allowed: allowed == 1,
            limit: self.burst,
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset_secs: ceil_secs(us(reset_us)),
            retry_after_secs: if allowed == 1 {
                0
            } else {
                ceil_secs(us(retry_us)).max(1)
            },
        })
    }
}

pub enum Store {
    Local(Arc<LocalLimiter>),
    Redis(RedisLimiter),
}

/// One `rate_limits` entry, compiled.
pub struct RateLimitPolicy {
    pub name: Arc<str>,
    pub key: KeyKind,
    pub store: Store,
    /// `on_store_error: deny` (else allow) when Redis is unreachable or slow.
    pub deny_on_store_error: bool,
    /// Decisions taken because the store failed: [allowed, denied].
    pub store_errors: [prometheus::IntCounter; 2],
}

/// A decision of one policy.
pub enum Outcome {
    Decided(Verdict),
    /// The store failed and `on_store_error: allow` let the request through.
    AllowedWithoutStore,
}

impl RateLimitPolicy {
    pub async fn check(&self, src: &KeySource<'_>) -> Result<Outcome, StoreError> {
        let key = self.key.key(src);
        match &self.store {
            Store::Local(l) => Ok(Outcome::Decided(l.check(key))),
            Store::Redis(r) => match r.check(key).await {
                Ok(v) => Ok(Outcome::Decided(v)),
                Err(e) => {
                    // While the breaker skips the store, it logged once.
                    if !matches!(e, StoreError::Skipped) {
                        tracing::warn!(policy = %self.name, error = %e, deny = self.deny_on_store_error, "rate-limit store failed");
                    }
                    if self.deny_on_store_error {
                        self.store_errors[1].inc();
                        Err(e)
                    } else {
                        self.store_errors[0].inc();
                        Ok(Outcome::AllowedWithoutStore)
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Rate;

    fn limiter(rate: &str, burst: u32, shared: bool, max_keys: usize) -> LocalLimiter {
        let rate: Rate = rate.parse().unwrap();
        LocalLimiter::new(quota(&rate, burst).unwrap(), shared, max_keys)
    }

    #[tokio::test(start_paused = true)]
    async fn exact_admit_and_deny_sequence() {
        // 2/s with a burst of 3: three at once, then one per 500 ms.
        let l = limiter("2/s", 3, false, 100);
        let seen: Vec<(bool, u32)> = (0..4)
            .map(|_| l.check(7))
            .map(|v| (v.allowed, v.remaining))
            .collect();
        assert_eq!(seen, vec![(true, 2), (true, 1), (true, 0), (false, 0)]);
        let refused = l.check(7);
        assert_eq!(
            refused.retry_after_secs, 1,
            "500 ms rounds up to 1 s, never 0"
        );
        assert_eq!((refused.limit, refused.reset_secs), (3, 2));

        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!l.check(7).allowed, "a token takes 500 ms to come back");
        tokio::time::advance(Duration::from_millis(1)).await;
        let v = l.check(7);
        assert!(v.allowed && v.remaining == 0);
        assert!(!l.check(7).allowed);

        // After a long pause the bucket is full again, not fuller.
        tokio::time::advance(Duration::from_secs(60)).await;
        let seen: Vec<bool> = (0..4).map(|_| l.check(7).allowed).collect();
        assert_eq!(seen, vec![true, true, true, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_have_separate_buckets_and_route_has_one() {
        let l = limiter("1/m", 1, false, 100);
        assert!(l.check(1).allowed);
        assert!(!l.check(1).allowed);
        assert!(l.check(2).allowed, "another key has its own bucket");

        let shared = limiter("1/m", 2, true, 100);
        assert!(shared.check(1).allowed);
        assert!(shared.check(2).allowed);
        assert!(!shared.check(3).allowed, "one bucket for every key");
        assert_eq!(shared.check(4).retry_after_secs, 60, "one token a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn admitted_headers_count_down_and_reset() {
        let l = limiter("10/s", 5, false, 100);
        let v = l.check(1);
        assert_eq!((v.limit, v.remaining, v.reset_secs), (5, 4, 1));
        for _ in 0..3 {
            l.check(1);
        }
        let v = l.check(1);
        assert_eq!((v.remaining, v.reset_secs), (0, 1));
    }

    #[test]
    fn memory_is_bounded_by_max_keys_under_a_key_flood() {
        let l = limiter("100/s", 10, false, 100_000);
        for k in 0..200_000u64 {
            l.check(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        let capped = l.keys();
        assert!(capped <= 100_000 + SHARDS, "{capped} keys kept");
        let rss_at_cap = rss_kib();
        for k in 200_000..1_000_000u64 {
            l.check(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert!(l.keys() <= 100_000 + SHARDS);
        if let (Some(before), Some(after)) = (rss_at_cap, rss_kib()) {
            // 800k more keys through a full store: memory stays flat.
            assert!(
                after < before + 4 * 1024,
                "RSS grew from {before} KiB to {after} KiB"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_one_off_keys_keeps_a_returning_clients_bucket() {
        // 1/m with a burst of 2: the client uses its bucket up.
        let l = limiter("1/m", 2, false, 6_400);
        let client = 0xC1_1E47u64;
        assert!(l.check(client).allowed);
        assert!(l.check(client).allowed);
        assert!(!l.check(client).allowed);
        // Ten times the store's capacity in keys seen once: an LRU would
        // have dropped the client's bucket (and so refilled it) long ago.
        for k in 1..=64_000u64 {
            l.check(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert!(l.keys() <= 6_400 + SHARDS);
        assert!(
            !l.check(client).allowed,
            "the flood reset the client's bucket"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_drops_only_idle_keys() {
        let l = limiter("1/s", 2, false, 100);
        l.check(1);
        tokio::time::advance(Duration::from_millis(900)).await;
        l.check(2);
        l.check(2);
        tokio::time::advance(Duration::from_millis(200)).await;
        l.sweep();
        // Key 1's bucket refilled (idle); key 2 still owes time.
        assert_eq!(l.keys(), 1);
        assert!(!l.check(2).allowed, "sweeping did not reset a busy bucket");
    }

    #[test]
    fn key_kinds_parse_and_fall_back_to_the_client_ip() {
        assert_eq!("client_ip".parse::<KeyKind>(), Ok(KeyKind::ClientIp));
        assert_eq!("route".parse::<KeyKind>(), Ok(KeyKind::Route));
        assert_eq!("api_key".parse::<KeyKind>(), Ok(KeyKind::ApiKey));
        assert_eq!(
            "jwt:sub".parse::<KeyKind>(),
            Ok(KeyKind::JwtClaim("sub".into()))
        );
        assert!("header:bad header".parse::<KeyKind>().is_err());
        assert!("cookie:x".parse::<KeyKind>().is_err());

        let (parts, _) = http::Request::get("/")
            .header("x-user", "alice")
            .body(())
            .unwrap()
            .into_parts();
        let src = |ip: &str| KeySource {
            client_ip: ip.parse().unwrap(),
            parts: &parts,
            consumer: None,
            claims: None,
            resolved: None,
        };
        let by_header: KeyKind = "header:x-user".parse().unwrap();
        assert_eq!(
            by_header.key(&src("1.1.1.1")),
            by_header.key(&src("2.2.2.2"))
        );
        let missing: KeyKind = "header:x-other".parse().unwrap();
        assert_ne!(missing.key(&src("1.1.1.1")), missing.key(&src("2.2.2.2")));
        assert_eq!(
            KeyKind::ClientIp.key(&src("1.2.3.4")),
            KeyKind::ClientIp.key(&src("::ffff:1.2.3.4")),
            "IPv4-mapped addresses are the same client"
        );
    }

    fn rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}
