//! Where keys live: `memory` (one instance; locks in sharded maps, answers in
//! a bounded quick_cache cache) or `redis` (shared by every instance; each step one Lua
//! script, so taking a key is one round trip and atomic across instances).
//!
//! An entry is either a lock (a request with the key is in flight; it expires
//! after `lock_timeout`, so a gateway killed mid-request frees its keys) or a
//! stored answer (replayed until `ttl`). Locks are owned: finishing or
//! releasing compares the lock a request took with what is stored, so a
//! request whose lock expired never overwrites the next owner's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Policy;
use crate::store_breaker::{StoreBreaker, glob_escape, redis_connection, redis_probe};

/// A request's lock on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// Random: tells this request's lock from a later one on the same key.
    pub token: u64,
    /// `head_digest` of the request that holds the key.
    pub head: u128,
    pub caller: Arc<str>,
    pub key: Arc<str>,
    pub started_ms: u64,
}

impl Lock {
    pub fn new(head: u128, caller: Arc<str>, key: Arc<str>) -> Self {
        Lock {
            token: fastrand::u64(..),
            head,
            caller,
            key,
            started_ms: unix_ms(),
        }
    }
}

/// A stored answer.
#[derive(Debug)]
pub struct Answer {
    /// `fingerprint` of the request that made it.
    pub fingerprint: [u8; 32],
    pub head: u128,
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub caller: Arc<str>,
    pub key: Arc<str>,
    pub stored_ms: u64,
}

/// What `begin` found under a key.
#[derive(Debug)]
pub enum Found {
    /// Nothing (or only expired entries): the key is now this request's.
    Taken,
    /// A request with this key is in flight; its head digest.
    InFlight { head: u128 },
    /// A finished request's answer.
    Done(Arc<Answer>),
}

/// One entry, as the admin API shows it.
#[derive(Debug, Serialize)]
pub struct EntryInfo {
    pub caller: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<usize>,
    pub expires_in_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the stored entry could not be read: {0}")]
    Corrupt(String),
    #[error("redis failed repeatedly; skipped until a probe succeeds")]
    Skipped,
}

pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    pub fn memory(max_bytes: u64) -> Self {
        Store::Memory(MemoryStore::new(max_bytes))
    }

    pub fn redis(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        RedisStore::new(url, prefix, timeout).map(Store::Redis)
    }

    /// Takes `key` for `lock` unless a live entry holds it; says which.
    pub async fn begin(
        &self,
        key: &Arc<str>,
        lock: &Lock,
        lock_timeout: Duration,
    ) -> Result<Found, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.begin(key, lock, lock_timeout)),
            Store::Redis(r) => r.begin(key, lock, lock_timeout).await,
        }
    }

    /// Replaces `lock` with `answer` for `ttl`; false when the lock is gone.
    pub async fn finish(
        &self,
        key: &Arc<str>,
        lock: &Lock,
        answer: Arc<Answer>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.finish(key, lock, answer, ttl)),
            Store::Redis(r) => r.finish(key, lock, &answer, ttl).await,
        }
    }

    /// Frees `key` if `lock` still holds it: at once in memory, in a task for
    /// Redis (the request that gives up does not wait for it).
    pub fn release_soon(&self, policy: Arc<Policy>, key: Arc<str>, lock: Lock) {
        match self {
            Store::Memory(m) => m.release(&key, &lock),
            Store::Redis(_) => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                rt.spawn(async move {
                    if let Store::Redis(r) = &policy.store
                        && let Err(e) = r.release(&key, &lock).await
                    {
                        tracing::warn!(policy = %policy.name, error = %e,
                            "idempotency key not released; it expires after lock_timeout");
                    }
                });
            }
        }
    }

    /// The live entries under `prefix` (`key_prefix`), or the one of `exact`.
    pub async fn entries(
        &self,
        prefix: &str,
        exact: Option<&str>,
    ) -> Result<Vec<EntryInfo>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.entries(prefix, exact)),
            Store::Redis(r) => r.entries(prefix, exact).await,
        }
    }

    /// Deletes the entries `entries` would list; returns how many.
    pub async fn remove(&self, prefix: &str, exact: Option<&str>) -> Result<usize, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.remove(prefix, exact)),
            Store::Redis(r) => r.remove(prefix, exact).await,
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ── memory ──────────────────────────────────────────────────────────────────

/// Locks in sharded maps, answers in a quick_cache cache bounded by weight
/// (bytes). Every change to a key happens under its shard's lock, so taking a
/// key (no lock, no answer: insert a lock) is atomic; the shard lock is held
/// for a map operation and a cache lookup, never across an await. Locks are
/// few (one per keyed request in flight) and always removed by their `Claim`;
/// answers are what needs a bound and eviction, which the cache does (S3-FIFO,
/// no background thread). Expiry is decided on tokio's clock (exact under
/// paused time): an answer past its `ttl` is never returned, is removed when a
/// request meets it, and otherwise waits to be evicted within the bound.
pub struct MemoryStore {
    locks: Box<[Mutex<LockTable>]>,
    answers: quick_cache::sync::Cache<Arc<str>, Kept, ByWeight>,
}

/// The locks of one shard, with their deadlines.
type LockTable = HashMap<Arc<str>, (Lock, Instant)>;

/// An answer in the memory store, with its deadline and its weight.
#[derive(Clone)]
struct Kept {
    answer: Arc<Answer>,
    expires: Instant,
    weight: u64,
}

const LOCK_SHARDS: usize = 16;

/// The bytes an answer holds: body, headers, strings and bookkeeping.
fn answer_weight(key: &str, a: &Answer) -> u64 {
    let headers: usize = a
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    (key.len() + a.body.len() + a.caller.len() + a.key.len() + headers + 160) as u64
}

/// An entry's weight, computed once when it is made.
#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<Arc<str>, Kept> for ByWeight {
    fn weight(&self, _: &Arc<str>, v: &Kept) -> u64 {
        v.weight
    }
}

/// What the cache sizes its tables for: a guess of small answers.
const TYPICAL_ANSWER_BYTES: u64 = 1024;

/// Whether the admin API's selection (one caller's key, or every caller's
/// under `prefix`) takes the store key `k`.
fn selected(k: &str, prefix: &str, exact: Option<&str>) -> bool {
    match exact {
        Some(x) => k == x,
        None => k.starts_with(prefix),
    }
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> Self {
        let items = usize::try_from(max_bytes / TYPICAL_ANSWER_BYTES).unwrap_or(usize::MAX);
        MemoryStore {
            locks: (0..LOCK_SHARDS).map(|_| Mutex::default()).collect(),
            answers: quick_cache::sync::Cache::with_weighter(items.max(64), max_bytes, ByWeight),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, LockTable> {
        let i = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as usize % LOCK_SHARDS;
        self.locks[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer under `key` unless it expired (then it is dropped now).
    fn live_answer(&self, key: &str, now: Instant) -> Option<Arc<Answer>> {
        let kept = self.answers.get(key)?;
        if kept.expires > now {
            return Some(kept.answer);
        }
        self.answers.remove(key);
        None
    }

    fn begin(&self, key: &Arc<str>, lock: &Lock, lock_timeout: Duration) -> Found {
        let now = Instant::now();
        let mut locks = self.shard(key);
        if let Some((held, until)) = locks.get(&**key)
            && *until > now
        {
            return Found::InFlight { head: held.head };
        }
        if let Some(answer) = self.live_answer(key, now) {
            return Found::Done(answer);
        }
        locks.insert(key.clone(), (lock.clone(), now + lock_timeout));
        Found::Taken
    }

    pub(super) fn finish(
        &self,
        key: &Arc<str>,
        lock: &Lock,
        answer: Arc<Answer>,
        ttl: Duration,
    ) -> bool {
        let now = Instant::now();
        let mut locks = self.shard(key);
        match locks.get(&**key) {
            Some((held, until)) if held.token == lock.token && *until > now => {}
            _ => return false,
        }
        let weight = answer_weight(key, &answer);
        self.answers.insert(
            key.clone(),
            Kept {
                answer,
                expires: now + ttl,
                weight,
            },
        );
        locks.remove(&**key);
        true
    }

    fn release(&self, key: &str, lock: &Lock) {
        let mut locks = self.shard(key);
        if locks
            .get(key)
            .is_some_and(|(held, _)| held.token == lock.token)
        {
            locks.remove(key);
        }
    }

    fn entries(&self, prefix: &str, exact: Option<&str>) -> Vec<EntryInfo> {
        let now = Instant::now();
        let wanted = |k: &str| selected(k, prefix, exact);
        let left = |until: Instant| millis(until.saturating_duration_since(now));
        let mut out = Vec::new();
        for shard in self.locks.iter() {
            let locks = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (k, (l, until)) in locks.iter() {
                if wanted(k) && *until > now {
                    out.push(EntryInfo {
                        caller: l.caller.to_string(),
                        state: "in_flight",
                        status: None,
                        body_bytes: None,
                        expires_in_ms: left(*until),
                    });
                }
            }
        }
        for (k, kept) in self.answers.iter() {
            if wanted(&k) && kept.expires > now {
                let a = &kept.answer;
                out.push(EntryInfo {
                    caller: a.caller.to_string(),
                    state: "completed",
                    status: Some(a.status.as_u16()),
                    body_bytes: Some(a.body.len()),
                    expires_in_ms: left(kept.expires),
                });
            }
        }
        out
    }

    fn remove(&self, prefix: &str, exact: Option<&str>) -> usize {
        let now = Instant::now();
        let wanted = |k: &str| selected(k, prefix, exact);
        let mut removed = 0;
        for shard in self.locks.iter() {
            let mut locks = shard.lock().unwrap_or_else(PoisonError::into_inner);
            locks.retain(|k, (_, until)| {
                let drop = wanted(k);
                removed += usize::from(drop && *until > now);
                !drop
            });
        }
        let keys: Vec<Arc<str>> = self
            .answers
            .iter()
            .filter(|(k, kept)| wanted(k) && kept.expires > now)
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            self.answers.remove(&**k);
        }
        removed + keys.len()
    }
}

// ── redis ───────────────────────────────────────────────────────────────────

/// Returns the entry under KEYS[1], or takes the key with ARGV[1] (the lock)
/// for ARGV[2] ms and returns nil.
const BEGIN_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Replaces the lock ARGV[1] with the answer ARGV[2] for ARGV[3] ms; 1 if the
/// lock was still there.
const FINISH_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Deletes KEYS[1] if it still holds the lock ARGV[1].
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The first byte of every stored value: the encoding's version.
const WIRE_VERSION: u8 = 1;

/// An entry as stored in Redis: `WIRE_VERSION`, this in postcard, then the
/// answer's body as is.
#[derive(Serialize, Deserialize)]
enum Wire {
    InFlight {
        token: u64,
        head: u128,
        caller: Box<str>,
        key: Box<str>,
        started_ms: u64,
    },
    Done {
        fingerprint: [u8; 32],
        head: u128,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        caller: Box<str>,
        key: Box<str>,
        stored_ms: u64,
    },
}

fn encode(wire: &Wire, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.push(WIRE_VERSION);
    // Serializing plain data into a Vec cannot fail.
    let mut out = postcard::to_extend(wire, out).unwrap_or_default();
    out.extend_from_slice(body);
    out
}

fn encode_lock(lock: &Lock) -> Vec<u8> {
    encode(
        &Wire::InFlight {
            token: lock.token,
            head: lock.head,
            caller: Box::from(&*lock.caller),
            key: Box::from(&*lock.key),
            started_ms: lock.started_ms,
        },
        &[],
    )
}

fn encode_answer(a: &Answer) -> Vec<u8> {
    let headers = a
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    encode(
        &Wire::Done {
            fingerprint: a.fingerprint,
            head: a.head,
            status: a.status.as_u16(),
            headers,
            caller: Box::from(&*a.caller),
            key: Box::from(&*a.key),
            stored_ms: a.stored_ms,
        },
        &a.body,
    )
}

/// A stored value back to what `begin` reports (the body sliced, not copied).
fn decode(value: Bytes) -> Result<(Found, EntryInfo), StoreError> {
    let corrupt = |m: &str| StoreError::Corrupt(m.to_string());
    let Some((&WIRE_VERSION, rest)) = value.split_first() else {
        return Err(corrupt("unknown encoding version"));
    };
    let (wire, body) =
        postcard::take_from_bytes::<Wire>(rest).map_err(|e| corrupt(&e.to_string()))?;
    let body = value.slice_ref(body);
    Ok(match wire {
        Wire::InFlight { head, caller, .. } => (
            Found::InFlight { head },
            EntryInfo {
                caller: caller.into(),
                state: "in_flight",
                status: None,
                body_bytes: None,
                expires_in_ms: 0,
            },
        ),
        Wire::Done {
            fingerprint,
            head,
            status,
            headers,
            caller,
            key,
            stored_ms,
        } => {
            let status = http::StatusCode::from_u16(status).map_err(|e| corrupt(&e.to_string()))?;
            let mut map = HeaderMap::with_capacity(headers.len());
            for (n, v) in headers {
                let name =
                    HeaderName::from_bytes(n.as_bytes()).map_err(|e| corrupt(&e.to_string()))?;
                let value = HeaderValue::from_bytes(&v).map_err(|e| corrupt(&e.to_string()))?;
                map.append(name, value);
            }
            let caller: Arc<str> = caller.into();
            let info = EntryInfo {
                caller: caller.to_string(),
                state: "completed",
                status: Some(status.as_u16()),
                body_bytes: Some(body.len()),
                expires_in_ms: 0,
            };
            let answer = Answer {
                fingerprint,
                head,
                status,
                headers: map,
                body,
                caller,
                key: key.into(),
                stored_ms,
            };
            (Found::Done(Arc::new(answer)), info)
        }
    })
}

/// Keys in Redis under `prefix`, shared by every gateway instance.
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    /// Skips Redis on the request path while it keeps failing.
    breaker: Arc<StoreBreaker>,
    prefix: String,
    timeout: Duration,
    begin: redis::Script,
    finish: redis::Script,
    release: redis::Script,
}

/// Admin calls walk the keyspace (SCAN): they get more time than a request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

impl RedisStore {
    /// Creates the store without connecting: the connection is made on first
    /// use and re-made by the connection manager after Redis comes back.
    fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        let conn = redis_connection(url, timeout, ADMIN_TIMEOUT)?;
        Ok(RedisStore {
            breaker: StoreBreaker::new(
                format!("idempotency store {prefix}"),
                redis_probe(&conn, timeout),
            ),
            conn,
            prefix: prefix.to_string(),
            timeout,
            begin: redis::Script::new(BEGIN_LUA),
            finish: redis::Script::new(FINISH_LUA),
            release: redis::Script::new(RELEASE_LUA),
        })
    }

    fn full_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    async fn within<T>(
        &self,
        limit: Duration,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        Ok(tokio::time::timeout(limit, f)
            .await
            .map_err(|_| StoreError::Timeout(limit))??)
    }

    /// Takes or reads the key; `Skipped` at once while the breaker is open.
    async fn begin(
        &self,
        key: &str,
        lock: &Lock,
        lock_timeout: Duration,
    ) -> Result<Found, StoreError> {
        if self.breaker.is_open() {
            return Err(StoreError::Skipped);
        }
        let found = self.take(key, lock, lock_timeout).await;
        match &found {
            Ok(_) | Err(StoreError::Corrupt(_)) => self.breaker.succeeded(),
            Err(_) => self.breaker.failed(),
        }
        found
    }

    async fn take(
        &self,
        key: &str,
        lock: &Lock,
        lock_timeout: Duration,
    ) -> Result<Found, StoreError> {
        let mut conn = self.conn.clone();
        let mut call = self.begin.key(self.full_key(key));
        call.arg(encode_lock(lock)).arg(millis(lock_timeout).max(1));
        let found: Option<Vec<u8>> = self
            .within(self.timeout, call.invoke_async(&mut conn))
            .await?;
        match found {
            None => Ok(Found::Taken),
            Some(v) => decode(Bytes::from(v)).map(|(f, _)| f),
        }
    }

    async fn finish(
        &self,
        key: &str,
        lock: &Lock,
        answer: &Answer,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut call = self.finish.key(self.full_key(key));
        call.arg(encode_lock(lock))
            .arg(encode_answer(answer))
            .arg(millis(ttl).max(1));
        let done: i64 = self
            .within(self.timeout, call.invoke_async(&mut conn))
            .await?;
        Ok(done == 1)
    }

    async fn release(&self, key: &str, lock: &Lock) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut call = self.release.key(self.full_key(key));
        call.arg(encode_lock(lock));
        let _: i64 = self
            .within(self.timeout, call.invoke_async(&mut conn))
            .await?;
        Ok(())
    }

    /// The full Redis keys `entries`/`remove` cover.
    async fn matching(&self, prefix: &str, exact: Option<&str>) -> Result<Vec<String>, StoreError> {
        if let Some(x) = exact {
            return Ok(vec![self.full_key(x)]);
        }
        let pattern = format!("{}*", glob_escape(&self.full_key(prefix)));
        let mut conn = self.conn.clone();
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .within(
                    ADMIN_TIMEOUT,
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    async fn entries(
        &self,
        prefix: &str,
        exact: Option<&str>,
    ) -> Result<Vec<EntryInfo>, StoreError> {
        let keys = self.matching(prefix, exact).await?;
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let (value, ttl): (Option<Vec<u8>>, i64) = self
                .within(
                    ADMIN_TIMEOUT,
                    redis::pipe()
                        .cmd("GET")
                        .arg(&k)
                        .cmd("PTTL")
                        .arg(&k)
                        .query_async(&mut conn),
                )
                .await?;
            let Some(value) = value else { continue };
            let (_, mut info) = decode(Bytes::from(value))?;
            info.expires_in_ms = u64::try_from(ttl).unwrap_or(0);
            out.push(info);
        }
        Ok(out)
    }

    async fn remove(&self, prefix: &str, exact: Option<&str>) -> Result<usize, StoreError> {
        let keys = self.matching(prefix, exact).await?;
        if keys.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        let removed: usize = self
            .within(
                ADMIN_TIMEOUT,
                redis::cmd("DEL").arg(&keys).query_async(&mut conn),
            )
            .await?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(head: u8) -> Lock {
        Lock::new(u128::from(head), "ip:127.0.0.1".into(), "k1".into())
    }

    fn answer(body: &'static str) -> Arc<Answer> {
        let mut headers = HeaderMap::new();
        headers.insert("x-order", HeaderValue::from_static("7"));
        Arc::new(Answer {
            fingerprint: [9; 32],
            head: 1,
            status: http::StatusCode::CREATED,
            headers,
            body: Bytes::from_static(body.as_bytes()),
            caller: "ip:127.0.0.1".into(),
            key: "k1".into(),
            stored_ms: 1,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn memory_lock_then_answer_then_expiry_on_the_tokio_clock() {
        let m = MemoryStore::new(1 << 20);
        let l = lock(1);
        assert!(matches!(
            m.begin(&"a".into(), &l, Duration::from_secs(30)),
            Found::Taken
        ));
        let other = lock(1);
        assert!(matches!(
            m.begin(&"a".into(), &other, Duration::from_secs(30)),
            Found::InFlight { head: 1 }
        ));
        assert!(
            !m.finish(&"a".into(), &other, answer("x"), Duration::from_secs(60)),
            "not its lock"
        );
        assert!(m.finish(
            &"a".into(),
            &l,
            answer("{\"id\":7}"),
            Duration::from_secs(60)
        ));
        match m.begin(&"a".into(), &other, Duration::from_secs(30)) {
            Found::Done(a) => assert_eq!(a.body, "{\"id\":7}"),
            f => panic!("{f:?}"),
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            matches!(
                m.begin(&"a".into(), &other, Duration::from_secs(30)),
                Found::Taken
            ),
            "ttl passed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn memory_lock_expires_after_lock_timeout_and_the_late_owner_cannot_store() {
        let m = MemoryStore::new(1 << 20);
        let first = lock(1);
        m.begin(&"a".into(), &first, Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(31)).await;
        let second = lock(1);
        assert!(matches!(
            m.begin(&"a".into(), &second, Duration::from_secs(30)),
            Found::Taken
        ));
        assert!(!m.finish(&"a".into(), &first, answer("late"), Duration::from_secs(60)));
        m.release("a", &first);
        assert!(
            matches!(
                m.begin(&"a".into(), &lock(1), Duration::from_secs(30)),
                Found::InFlight { .. }
            ),
            "a stale release leaves the new owner's lock"
        );
        m.release("a", &second);
        assert!(matches!(
            m.begin(&"a".into(), &lock(1), Duration::from_secs(30)),
            Found::Taken
        ));
    }

    #[test]
    fn memory_store_stays_under_its_bound_with_many_keys() {
        let m = MemoryStore::new(256 * 1024);
        let body: &'static str = Box::leak("x".repeat(1000).into_boxed_str());
        for i in 0..5_000 {
            let key: Arc<str> = format!("r:{i}:c").into();
            let l = lock(1);
            m.begin(&key, &l, Duration::from_secs(30));
            m.finish(&key, &l, answer(body), Duration::from_secs(60));
        }
        let size = m.answers.weight();
        assert!(size <= 256 * 1024, "{size} bytes kept");
        assert!(m.answers.len() < 5_000);
        assert_eq!(
            m.entries("", None).len(),
            m.answers.len(),
            "no lock is left behind"
        );
    }

    #[test]
    fn wire_round_trip_keeps_status_headers_and_body() {
        let a = answer("{\"id\":7}");
        let (found, info) = decode(Bytes::from(encode_answer(&a))).unwrap();
        let Found::Done(back) = found else { panic!() };
        assert_eq!(back.status, 201);
        assert_eq!(back.headers["x-order"], "7");
        assert_eq!(back.body, a.body);
        assert_eq!((back.fingerprint, back.head), (a.fingerprint, a.head));
        assert_eq!((info.state, info.body_bytes), ("completed", Some(8)));
        let (found, _) = decode(Bytes::from(encode_lock(&lock(3)))).unwrap();
        assert!(matches!(found, Found::InFlight { head: 3 }));
        assert!(decode(Bytes::from_static(b"\x02junk")).is_err());
        assert!(decode(Bytes::from_static(b"\x01\xff\xff")).is_err());
        assert!(decode(Bytes::new()).is_err());
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape("tg:idem:r*[x]?:"), "tg:idem:r\\*\\[x\\]\\?:");
    }
}
