//! One `caches.<name>`: the memory tier (quick_cache, bounded by bytes), the misses
//! in flight (stampede protection), and the optional shared tier in Redis.
//!
//! Keys are the full key text, never a hash of it: two URLs can never share
//! an entry, however they are crafted. A primary key (route, method, URL parts)
//! holds either the response itself or, when the answer varies on request
//! headers, a `Variants` marker naming those headers; each variant is then
//! stored under the primary key, the marker's generation and the header
//! values. Dropping the marker (a purge) orphans the variants: a new marker
//! has a new generation, so they are never found again and age out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::sync::Notify;

use super::shared::SharedTier;
use crate::metrics::CacheMetrics;

/// Bytes an entry costs beyond its body and headers: the key's and the
/// entry's allocations, the map slot and the cache's own bookkeeping
/// (counted high).
const ENTRY_OVERHEAD: usize = 320;

/// A header map's own allocation beyond its fields.
const HEADER_MAP_BASE: usize = 64;
/// What one field costs in a header map besides its name and value bytes.
const HEADER_SLOT: usize = 120;

/// A stored response.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// The upstream's headers, hop-by-hop and `Age` removed.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `host` + path + `?query`, for purges by URL and prefix.
    pub url: Box<str>,
    /// From `Cache-Tag` / `Surrogate-Key`.
    pub tags: Box<[Box<str>]>,
    /// When the response arrived.
    pub response_time: SystemTime,
    /// Its age then (RFC 9111 §4.2.3).
    pub initial_age: Duration,
    /// How long it is fresh, counted in age.
    pub lifetime: Duration,
    /// Beyond its lifetime, how long it may be served while refreshed in the
    /// background, or while the upstream fails.
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// `no-cache` (or `must-revalidate` once stale): revalidate before use.
    pub revalidate: bool,
    /// May answer a request with credentials (`public`, `s-maxage`,
    /// `must-revalidate`).
    pub shared_with_credentials: bool,
}

impl Entry {
    /// Its age at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or_default()
    }

    /// Seconds of freshness left at `now` (negative once stale).
    pub fn ttl(&self, now: SystemTime) -> i64 {
        let age = self.age(now);
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        if age <= self.lifetime {
            secs(self.lifetime - age)
        } else {
            -secs(age - self.lifetime).max(1)
        }
    }

    pub fn is_fresh(&self, now: SystemTime) -> bool {
        !self.revalidate && self.age(now) < self.lifetime
    }

    /// Stale by at most `window` (zero: never).
    pub fn stale_within(&self, now: SystemTime, window: Duration) -> bool {
        !window.is_zero() && self.age(now) < self.lifetime + window
    }

    pub fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(http::header::ETAG)
    }

    pub fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(http::header::LAST_MODIFIED)
    }

    /// How long anything may still use it (fresh or stale): the shared tier's expiry.
    pub fn keep_for(&self, now: SystemTime) -> Duration {
        (self.lifetime + self.stale_while_revalidate.max(self.stale_if_error))
            .saturating_sub(self.age(now))
    }

    fn weight(&self, key: &str) -> u32 {
        // The map's slot per field (name, value handle, links, index) is
        // about 110 bytes; names of standard fields are static.
        let headers: usize = HEADER_MAP_BASE
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + HEADER_SLOT)
                .sum::<usize>();
        let tags: usize = self.tags.iter().map(|t| t.len() + 16).sum();
        let total = ENTRY_OVERHEAD + key.len() + self.url.len() + headers + tags + self.body.len();
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// A primary key's request headers that select a variant.
#[derive(Debug)]
pub struct Variants {
    pub names: Box<[HeaderName]>,
    pub generation: u64,
    pub url: Box<str>,
}

#[derive(Debug, Clone)]
pub enum Stored {
    Response(Arc<Entry>),
    Variants(Arc<Variants>),
}

impl Stored {
    fn url(&self) -> &str {
        match self {
            Stored::Response(e) => &e.url,
            Stored::Variants(v) => &v.url,
        }
    }

    fn weight(&self, key: &str) -> u32 {
        match self {
            Stored::Response(e) => e.weight(key),
            Stored::Variants(v) => {
                let names: usize = v.names.iter().map(|n| n.as_str().len() + 24).sum();
                u32::try_from(ENTRY_OVERHEAD + key.len() + v.url.len() + names).unwrap_or(u32::MAX)
            }
        }
    }
}

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Purge {
    /// `host` + path + `?query`; with `any_host`, the host is not compared.
    Url {
        url: String,
        any_host: bool,
    },
    /// A path prefix, on one host or any.
    Prefix {
        prefix: String,
        host: Option<String>,
    },
    Tag(String),
    /// These exact primary keys (an unsafe request's URL).
    Keys(Vec<String>),
}

impl Purge {
    fn kind(&self) -> usize {
        match self {
            Purge::Url { .. } => 0,
            Purge::Prefix { .. } => 1,
            Purge::Tag(_) => 2,
            Purge::Keys(_) => 3,
        }
    }

    fn matches(&self, key: &str, stored: &Stored) -> bool {
        let url = stored.url();
        match self {
            Purge::Url {
                url: want,
                any_host,
            } => {
                if *any_host {
                    url.find('/').is_some_and(|i| url[i..] == **want)
                } else {
                    url == want
                }
            }
            Purge::Prefix { prefix, host } => {
                let (h, path) = url.split_at(url.find('/').unwrap_or(url.len()));
                host.as_ref().is_none_or(|want| want == h) && path.starts_with(prefix.as_str())
            }
            Purge::Tag(tag) => match stored {
                Stored::Response(e) => e.tags.iter().any(|t| **t == **tag),
                Stored::Variants(_) => false,
            },
            Purge::Keys(keys) => keys.iter().any(|k| k == key),
        }
    }
}

/// The memory tier's weigher: the bytes an entry holds.
#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<Arc<str>, Stored> for ByWeight {
    fn weight(&self, key: &Arc<str>, value: &Stored) -> u64 {
        u64::from(value.weight(key))
    }
}

/// Counts the entries evicted to stay within `max_bytes` (and answers too
/// heavy to be admitted at all). quick_cache reports a replaced value through
/// the same hook: the key being stored is not counted.
#[derive(Clone)]
struct Evictions;

#[derive(Default)]
struct Inserting {
    key: Option<Arc<str>>,
    evicted: u64,
}

impl quick_cache::Lifecycle<Arc<str>, Stored> for Evictions {
    type RequestState = Inserting;

    fn on_evict(&self, state: &mut Inserting, key: Arc<str>, _value: Stored) {
        if state.key.as_ref() != Some(&key) {
            state.evicted += 1;
        }
    }
}

type Memory = quick_cache::sync::Cache<
    Arc<str>,
    Stored,
    ByWeight,
    quick_cache::DefaultHashBuilder,
    Evictions,
>;

pub struct Cache {
    pub name: Arc<str>,
    pub max_object_bytes: u64,
    memory: Memory,
    flights: Flights,
    pub shared: Option<Arc<SharedTier>>,
    pub metrics: CacheMetrics,
}

impl Cache {
    pub fn new(
        name: &str,
        max_bytes: u64,
        max_object_bytes: u64,
        shared: Option<Arc<SharedTier>>,
        metrics: CacheMetrics,
    ) -> Result<Cache, String> {
        // Each shard is bounded by its share of max_bytes: shards are kept
        // large enough for a few of the largest answers (a heavier one would
        // not be admitted).
        let shards = (max_bytes / max_object_bytes.max(1) / 4).clamp(1, 64);
        let shards = 1usize << (63 - shards.leading_zeros());
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(
                usize::try_from(max_bytes / 2048)
                    .unwrap_or(usize::MAX)
                    .max(64),
            )
            .weight_capacity(max_bytes)
            .shards(shards)
            .build()
            .map_err(|e| format!("the memory tier's options: {e}"))?;
        let memory = Memory::with_options(
            options,
            ByWeight,
            quick_cache::DefaultHashBuilder::default(),
            Evictions,
        );
        Ok(Cache {
            name: name.into(),
            max_object_bytes,
            memory,
            flights: Flights::default(),
            shared,
            metrics,
        })
    }

    /// What the memory tier holds under `key`.
    pub fn get(&self, key: &str) -> Option<Stored> {
        self.memory.get(key)
    }

    /// Stores `value` under `key`: in memory at once, and in the shared tier
    /// (in the background) for `keep()`.
    pub fn put(&self, key: &str, value: Stored, keep: impl FnOnce() -> Duration) {
        if let Some(shared) = &self.shared {
            shared.put(key, &value, keep());
        }
        self.put_local(key, value);
    }

    /// Stores in the memory tier only.
    pub fn put_local(&self, key: &str, value: Stored) {
        let key: Arc<str> = key.into();
        let mut state = Inserting {
            key: Some(key.clone()),
            evicted: 0,
        };
        self.memory.insert_with_lifecycle(key, value, &mut state);
        if state.evicted > 0 {
            self.metrics.evictions.inc_by(state.evicted);
        }
    }

    pub fn remove_local(&self, key: &str) {
        self.memory.remove(key);
    }

    /// Removes what `purge` names from the memory tier; the number removed.
    pub fn purge_local(&self, purge: &Purge) -> usize {
        // Exact keys (a marker's variants go with it): no scan.
        if let Purge::Keys(keys) = purge {
            return keys
                .iter()
                .filter(|k| self.memory.remove(k.as_str()).is_some())
                .count();
        }
        // Answers, not the markers that name their variants.
        let answers = std::sync::atomic::AtomicUsize::new(0);
        self.memory.retain(|k, v| {
            let hit = purge.matches(k, v);
            if hit && matches!(v, Stored::Response(_)) {
                answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            !hit
        });
        answers.into_inner()
    }

    /// Removes what `purge` names here, in the shared tier and (through the
    /// shared tier's channel) on every other instance.
    pub async fn purge(&self, purge: Purge) -> usize {
        let n = self.purge_counted(&purge);
        if let Some(shared) = &self.shared {
            shared.purge(&purge).await;
        }
        n
    }

    /// Like `purge`, without waiting on Redis: here at once, the shared tier
    /// and the other instances in the background (an unsafe request's
    /// invalidation).
    pub fn purge_soon(self: &Arc<Self>, purge: Purge) -> usize {
        let n = self.purge_counted(&purge);
        if let Some(shared) = self.shared.clone()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            tokio::spawn(async move { shared.purge(&purge).await });
        }
        n
    }

    fn purge_counted(&self, purge: &Purge) -> usize {
        self.metrics.purges[purge.kind()].inc();
        self.purge_local(purge)
    }

    /// Starts listening for other instances' purges (once).
    pub fn start(self: &Arc<Self>) {
        if let Some(shared) = &self.shared {
            shared.subscribe(Arc::downgrade(self));
        }
    }

    /// Updates the size gauges (at scrape time).
    pub fn observe(&self) {
        self.metrics
            .bytes
            .set(i64::try_from(self.memory.weight()).unwrap_or(i64::MAX));
        self.metrics
            .entries
            .set(i64::try_from(self.memory.len()).unwrap_or(i64::MAX));
    }

    /// Bytes held by the memory tier.
    pub fn weighted_size(&self) -> u64 {
        self.memory.weight()
    }

    /// Joins the miss in flight for `key`, or leads a new one.
    pub fn flight(self: &Arc<Self>, key: &str) -> Flight {
        // By the key's hash: two keys that collide only make one wait for
        // the other, then look its own key up again.
        let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        let mut map = self
            .flights
            .shard(hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = map.get(&hash) {
            return Flight::Follow(Follower(done.clone()));
        }
        let done = Arc::new(Done::default());
        map.insert(hash, done.clone());
        Flight::Lead(FlightGuard {
            hash,
            done,
            cache: self.clone(),
        })
    }
}

/// A miss for one key: the first request leads it, the others wait.
pub enum Flight {
    /// Forward, and drop the guard once the answer is stored (or known not
    /// to be): that wakes the followers.
    Lead(FlightGuard),
    /// Wait for the leader, then look again.
    Follow(Follower),
}

/// The end of one miss in flight.
#[derive(Default)]
struct Done {
    over: AtomicBool,
    notify: Notify,
}

/// A request waiting for another's miss.
pub struct Follower(Arc<Done>);

impl Follower {
    /// Returns once the leader is done.
    pub async fn done(&self) {
        let notified = self.0.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a leader that finishes in
        // between still wakes this waiter.
        notified.as_mut().enable();
        if self.0.over.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

const FLIGHT_SHARDS: usize = 32;

/// The misses in flight of one shard, by key hash.
type InFlight = HashMap<u64, Arc<Done>>;

struct Flights {
    shards: Box<[Mutex<InFlight>]>,
}

impl Default for Flights {
    fn default() -> Self {
        Flights {
            shards: (0..FLIGHT_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Flights {
    fn shard(&self, hash: u64) -> &Mutex<InFlight> {
        &self.shards[(hash % FLIGHT_SHARDS as u64) as usize]
    }
}

/// Held by the request that leads a miss; dropping it ends the flight:
/// followers wake and look the key up again.
pub struct FlightGuard {
    hash: u64,
    done: Arc<Done>,
    cache: Arc<Cache>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.cache
            .flights
            .shard(self.hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.hash);
        self.done.over.store(true, Ordering::Release);
        self.done.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounter, IntGauge};
    use proptest::prelude::*;

    fn metrics() -> CacheMetrics {
        let g = || IntGauge::new("g", "g").expect("gauge");
        let c = || IntCounter::new("c", "c").expect("counter");
        CacheMetrics {
            bytes: g(),
            entries: g(),
            evictions: c(),
            purges: [c(), c(), c(), c()],
            store_errors: c(),
        }
    }

    fn entry(url: &str, body: usize, headers: usize) -> Stored {
        let mut h = HeaderMap::new();
        for i in 0..headers {
            h.append(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).expect("name"),
                HeaderValue::from_static("some value"),
            );
        }
        Stored::Response(Arc::new(Entry {
            status: StatusCode::OK,
            headers: h,
            body: Bytes::from(vec![b'x'; body]),
            url: url.into(),
            tags: Box::new([]),
            response_time: SystemTime::now(),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            revalidate: false,
            shared_with_credentials: false,
        }))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever is stored (many distinct keys, sizes up to the largest
        /// object, hot keys rewritten), the memory tier's bytes, body and
        /// headers and keys counted, stay within `max_bytes`.
        #[test]
        fn the_memory_tier_stays_within_max_bytes(
            max_kib in 16u64..256,
            writes in proptest::collection::vec((0u32..5_000, 0usize..8_192, 0usize..12), 1..600),
        ) {
            let max = max_kib * 1024;
            let cache = Cache::new("t", max, 8_192, None, metrics()).expect("cache");
            let mut body_bytes_offered = 0usize;
            for (k, body, headers) in writes {
                let key = format!("{k:08} GET host|/p/{k}|");
                cache.put_local(&key, entry(&format!("host/p/{k}"), body, headers));
                body_bytes_offered += body;
                prop_assert!(cache.weighted_size() <= max, "{} > {max}", cache.weighted_size());
            }
            // What is held is counted at least at its body's size.
            let held: usize = cache
                .memory
                .iter()
                .map(|(_, v)| match v {
                    Stored::Response(e) => e.body.len(),
                    Stored::Variants(_) => 0,
                })
                .sum();
            prop_assert!(held as u64 <= cache.weighted_size());
            prop_assert!(held <= body_bytes_offered);
        }
    }

    #[test]
    fn evictions_count_what_made_room_not_what_was_replaced() {
        let cache = Cache::new("t", 64 * 1024, 8 * 1024, None, metrics()).expect("cache");
        for _ in 0..10 {
            cache.put_local("same", entry("h/same", 4096, 2));
        }
        assert_eq!(cache.metrics.evictions.get(), 0);
        for k in 0..100 {
            cache.put_local(&format!("k{k}"), entry(&format!("h/{k}"), 4096, 2));
        }
        let evicted = cache.metrics.evictions.get();
        assert!(evicted >= 80, "{evicted} evictions");
        assert!(cache.weighted_size() <= 64 * 1024);
    }

    #[test]
    fn purges_remove_what_they_name_and_count_answers_only() {
        let cache = Cache::new("t", 1 << 20, 1 << 16, None, metrics()).expect("cache");
        cache.put_local("a", entry("shop/x/1?q", 10, 0));
        cache.put_local("b", entry("shop/x/2", 10, 0));
        cache.put_local("c", entry("other/x/1?q", 10, 0));
        cache.put_local(
            "m",
            Stored::Variants(Arc::new(Variants {
                names: Box::new([]),
                generation: 1,
                url: "shop/x/3".into(),
            })),
        );
        let url = |url: &str, any_host| Purge::Url {
            url: url.into(),
            any_host,
        };
        assert_eq!(cache.purge_local(&url("/x/1?q", true)), 2);
        assert_eq!(cache.purge_local(&url("shop/x/2", false)), 1);
        assert_eq!(cache.purge_local(&url("shop/x/2", false)), 0);
        let prefix = Purge::Prefix {
            prefix: "/x/".into(),
            host: Some("shop".into()),
        };
        // The marker goes, but it is not an answer.
        assert_eq!(cache.purge_local(&prefix), 0);
        assert!(cache.get("m").is_none());
    }
}
