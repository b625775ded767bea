//! The shared tier of a cache (`caches.<name>.redis`): entries in Redis behind
//! every instance's memory tier, and purges sent to every instance.
//!
//! Layout, under the configured prefix `P`:
//! - `P k:<key>`: an entry (`<head length u32 LE><postcard head><body>`), with
//!   an expiry at the end of its stale windows;
//! - `P u:<path?query>#<host>`: a set of the `k:` keys of one URL, and
//!   `P t:<tag>`: those of one tag, for purges;
//! - channel `P purge`: every purge, as JSON, applied by every instance to its
//!   memory tier.
//!
//! Every call is bounded by `timeout` and guarded by a store breaker: a dead
//! or slow Redis makes the tier a bypass (counted, logged once a while), never
//! a failed or slower request.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::store::{Cache, Entry, Purge, Stored, Variants};
use crate::store_breaker::{StoreBreaker, glob_escape, redis_connection, redis_probe};

/// Stores an entry and indexes it by URL and tags, extending the index sets'
/// expiry to the entry's. KEYS: entry, url set, tag sets; ARGV: value, ttl ms.
const STORE_LUA: &str = r"
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
";

/// Deletes the entries listed in index sets, and the sets. KEYS: sets.
const PURGE_SETS_LUA: &str = r"
local n = 0
for i = 1, #KEYS do
  local members = redis.call('SMEMBERS', KEYS[i])
  for _, k in ipairs(members) do
    n = n + redis.call('DEL', k)
  end
  redis.call('DEL', KEYS[i])
end
return n
";

pub struct SharedTier {
    conn: redis::aio::ConnectionManager,
    url: String,
    prefix: String,
    timeout: Duration,
    breaker: Arc<StoreBreaker>,
    errors: IntCounter,
    store: redis::Script,
    purge_sets: redis::Script,
    /// This instance, so it skips its own purges on the channel.
    instance: u64,
    /// Stops the subscriber when the cache goes.
    _subscriber: DropGuard,
    stop: CancellationToken,
    subscribed: std::sync::atomic::AtomicBool,
}

/// A purge on the channel.
#[derive(Serialize, Deserialize)]
struct Announced {
    from: u64,
    purge: Purge,
}

/// The stored head of an entry or marker.
#[derive(Serialize, Deserialize)]
struct Head {
    variants: Option<(Vec<String>, u64)>,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    url: String,
    tags: Vec<String>,
    response_ms: u64,
    initial_age_ms: u64,
    lifetime_ms: u64,
    swr_ms: u64,
    sie_ms: u64,
    revalidate: bool,
    shared_with_credentials: bool,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SharedTier {
    pub fn new(
        cache: &str,
        cfg: &crate::config::schema::CacheRedis,
        errors: IntCounter,
    ) -> Result<SharedTier, String> {
        let timeout = cfg.timeout.get();
        let conn = redis_connection(&cfg.url, timeout, timeout)?;
        let stop = CancellationToken::new();
        Ok(SharedTier {
            breaker: StoreBreaker::new(format!("cache {cache}"), redis_probe(&conn, timeout)),
            conn,
            url: cfg.url.clone(),
            prefix: cfg.prefix.clone(),
            timeout,
            errors,
            store: redis::Script::new(STORE_LUA),
            purge_sets: redis::Script::new(PURGE_SETS_LUA),
            instance: fastrand::u64(..),
            _subscriber: stop.clone().drop_guard(),
            stop,
            subscribed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Listens for other instances' purges and applies them to `cache`'s
    /// memory tier, reconnecting after Redis comes back.
    /// Once per tier; later calls do nothing.
    pub fn subscribe(&self, cache: Weak<Cache>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self
            .subscribed
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let (url, channel, me, stop) = (
            self.url.clone(),
            format!("{}purge", self.prefix),
            self.instance,
            self.stop.clone(),
        );
        rt.spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = listen(&url, &channel, me, &cache) => {}
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}k:{key}", self.prefix)
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.errors.inc();
        self.breaker.failed();
        // While the breaker skips the store, it logged once.
        tracing::debug!(cache_store = what, error = %e, "cache store failed");
    }

    /// Runs `cmd` within the timeout; `None` (counted) when Redis fails,
    /// is slow or is skipped.
    async fn call<T: redis::FromRedisValue>(
        &self,
        what: &str,
        invocation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        if self.breaker.is_open() {
            self.errors.inc();
            return None;
        }
        match tokio::time::timeout(self.timeout, invocation).await {
            Ok(Ok(v)) => {
                self.breaker.succeeded();
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(what, &e);
                None
            }
            Err(_) => {
                self.failed(what, &"timed out");
                None
            }
        }
    }

    /// The entry or marker under `key`, if Redis has one and answers in time.
    pub async fn get(&self, key: &str) -> Option<Stored> {
        let mut conn = self.conn.clone();
        let k = self.entry_key(key);
        let cmd = redis::cmd("GET").arg(&k).to_owned();
        let raw: Option<Vec<u8>> = self
            .call("get", cmd.query_async::<Option<Vec<u8>>>(&mut conn))
            .await??
            .into();
        decode(&raw?)
    }

    /// Stores `stored` under `key` for `ttl`, in the background.
    pub fn put(self: &Arc<Self>, key: &str, stored: &Stored, ttl: Duration) {
        if ttl.is_zero() || self.breaker.is_open() {
            return;
        }
        let value = encode(stored);
        let (url, tags) = match stored {
            Stored::Response(e) => (e.url.to_string(), e.tags.to_vec()),
            Stored::Variants(v) => (v.url.to_string(), Vec::new()),
        };
        let me = self.clone();
        let key = self.entry_key(key);
        tokio::spawn(async move {
            let mut conn = me.conn.clone();
            let mut inv = me.store.key(&key);
            inv.key(me.url_set(&url));
            for t in tags.iter() {
                inv.key(format!("{}t:{t}", me.prefix));
            }
            inv.arg(value.as_ref()).arg(ms(ttl).max(1));
            me.call("put", inv.invoke_async::<i64>(&mut conn)).await;
        });
    }

    /// `P u:<path?query>#<host>` of `url` (`host` + path + query).
    fn url_set(&self, url: &str) -> String {
        let (host, path) = url.split_at(url.find('/').unwrap_or(url.len()));
        format!("{}u:{path}#{host}", self.prefix)
    }

    /// Removes what `purge` names from Redis and tells the other instances.
    pub async fn purge(&self, purge: &Purge) {
        let mut conn = self.conn.clone();
        let sets: Vec<String> = match purge {
            Purge::Url {
                url,
                any_host: false,
            } => vec![self.url_set(url)],
            Purge::Url {
                url,
                any_host: true,
            } => {
                self.scan(&format!("{}u:{}#*", self.prefix, glob_escape(url)))
                    .await
            }
            Purge::Prefix { prefix, host } => {
                let found = self
                    .scan(&format!("{}u:{}*", self.prefix, glob_escape(prefix)))
                    .await;
                found
                    .into_iter()
                    .filter(|s| {
                        host.as_ref()
                            .is_none_or(|h| s.rsplit_once('#').is_some_and(|(_, sh)| sh == h))
                    })
                    .collect()
            }
            Purge::Tag(tag) => vec![format!("{}t:{tag}", self.prefix)],
            Purge::Keys(keys) => {
                let mut cmd = redis::cmd("DEL");
                for k in keys {
                    cmd.arg(self.entry_key(k));
                }
                self.call("purge", cmd.query_async::<i64>(&mut conn)).await;
                Vec::new()
            }
        };
        if !sets.is_empty() {
            let mut inv = self.purge_sets.prepare_invoke();
            for s in &sets {
                inv.key(s);
            }
            self.call("purge", inv.invoke_async::<i64>(&mut conn)).await;
        }
        let message = Announced {
            from: self.instance,
            purge: purge.clone(),
        };
        if let Ok(json) = serde_json::to_string(&message) {
            let cmd = redis::cmd("PUBLISH")
                .arg(format!("{}purge", self.prefix))
                .arg(json)
                .to_owned();
            self.call("publish", cmd.query_async::<i64>(&mut conn))
                .await;
        }
    }

    /// Every key matching `pattern` (SCAN, bounded to the timeout per step).
    async fn scan(&self, pattern: &str) -> Vec<String> {
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let cmd = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .to_owned();
            let Some((next, keys)) = self
                .call("scan", cmd.query_async::<(u64, Vec<String>)>(&mut conn))
                .await
            else {
                return out;
            };
            out.extend(keys);
            if next == 0 {
                return out;
            }
            cursor = next;
        }
    }
}

/// One subscription, until the connection ends.
async fn listen(url: &str, channel: &str, me: u64, cache: &Weak<Cache>) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut pubsub) = client.get_async_pubsub().await else {
        return;
    };
    if pubsub.subscribe(channel).await.is_err() {
        return;
    }
    let mut messages = pubsub.on_message();
    while let Some(msg) = futures_util::StreamExt::next(&mut messages).await {
        let Ok(payload) = msg.get_payload::<String>() else {
            continue;
        };
        let Ok(announced) = serde_json::from_str::<Announced>(&payload) else {
            continue;
        };
        if announced.from == me {
            continue;
        }
        let Some(cache) = cache.upgrade() else { return };
        cache.purge_local(&announced.purge);
    }
}

fn encode(stored: &Stored) -> Bytes {
    let unix_ms = |t: SystemTime| ms(t.duration_since(UNIX_EPOCH).unwrap_or_default());
    let (head, body) = match stored {
        Stored::Variants(v) => (
            Head {
                variants: Some((
                    v.names.iter().map(|n| n.as_str().to_owned()).collect(),
                    v.generation,
                )),
                status: 0,
                headers: Vec::new(),
                url: v.url.to_string(),
                tags: Vec::new(),
                response_ms: 0,
                initial_age_ms: 0,
                lifetime_ms: 0,
                swr_ms: 0,
                sie_ms: 0,
                revalidate: false,
                shared_with_credentials: false,
            },
            Bytes::new(),
        ),
        Stored::Response(e) => (
            Head {
                variants: None,
                status: e.status.as_u16(),
                headers: e
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect(),
                url: e.url.to_string(),
                tags: e.tags.iter().map(|t| t.to_string()).collect(),
                response_ms: unix_ms(e.response_time),
                initial_age_ms: ms(e.initial_age),
                lifetime_ms: ms(e.lifetime),
                swr_ms: ms(e.stale_while_revalidate),
                sie_ms: ms(e.stale_if_error),
                revalidate: e.revalidate,
                shared_with_credentials: e.shared_with_credentials,
            },
            e.body.clone(),
        ),
    };
    let head = postcard::to_allocvec(&head).unwrap_or_default();
    let mut out = BytesMut::with_capacity(4 + head.len() + body.len());
    out.put_u32_le(u32::try_from(head.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(&head);
    out.extend_from_slice(&body);
    out.freeze()
}

/// The entry or marker `raw` holds; `None` for anything malformed.
fn decode(raw: &[u8]) -> Option<Stored> {
    let len = usize::try_from(u32::from_le_bytes(raw.get(..4)?.try_into().ok()?)).ok()?;
    let head: Head = postcard::from_bytes(raw.get(4..4 + len)?).ok()?;
    let body = Bytes::copy_from_slice(raw.get(4 + len..)?);
    if let Some((names, generation)) = head.variants {
        let names = names
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect::<Option<Vec<_>>>()?;
        return Some(Stored::Variants(Arc::new(Variants {
            names: names.into(),
            generation,
            url: head.url.into(),
        })));
    }
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for (n, v) in head.headers {
        headers.append(
            HeaderName::from_bytes(n.as_bytes()).ok()?,
            HeaderValue::from_bytes(&v).ok()?,
        );
    }
    let d = Duration::from_millis;
    Some(Stored::Response(Arc::new(Entry {
        status: StatusCode::from_u16(head.status).ok()?,
        headers,
        body,
        url: head.url.into(),
        tags: head.tags.into_iter().map(String::into_boxed_str).collect(),
        response_time: UNIX_EPOCH + d(head.response_ms),
        initial_age: d(head.initial_age_ms),
        lifetime: d(head.lifetime_ms),
        stale_while_revalidate: d(head.swr_ms),
        stale_if_error: d(head.sie_ms),
        revalidate: head.revalidate,
        shared_with_credentials: head.shared_with_credentials,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_markers_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert("etag", HeaderValue::from_static("\"v1\""));
        headers.append("x-many", HeaderValue::from_static("a"));
        headers.append("x-many", HeaderValue::from_static("b"));
        let entry = Entry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello"),
            url: "h/p?q".into(),
            tags: vec!["t1".into()].into(),
            response_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            initial_age: Duration::from_secs(3),
            lifetime: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::ZERO,
            revalidate: true,
            shared_with_credentials: false,
        };
        let Some(Stored::Response(back)) = decode(&encode(&Stored::Response(Arc::new(entry))))
        else {
            panic!("not an entry");
        };
        assert_eq!(back.body, "hello");
        assert_eq!(back.headers.get_all("x-many").iter().count(), 2);
        assert_eq!(back.tags.len(), 1);
        assert_eq!(back.lifetime, Duration::from_secs(60));
        assert!(back.revalidate);
        assert_eq!(
            back.response_time,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );

        let marker = Stored::Variants(Arc::new(Variants {
            names: vec![HeaderName::from_static("accept-language")].into(),
            generation: 7,
            url: "h/p".into(),
        }));
        let Some(Stored::Variants(v)) = decode(&encode(&marker)) else {
            panic!("not a marker");
        };
        assert_eq!((v.generation, v.names.len()), (7, 1));
        assert!(decode(b"\xff\xff\xff\xffjunk").is_none());
        assert!(decode(b"").is_none());
    }
}
