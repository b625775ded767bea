//! Idempotency keys (docs/guide/idempotency.md, after the IETF draft
//! `draft-ietf-httpapi-idempotency-key-header`): a client sends
//! `Idempotency-Key` with an unsafe request, and every retry of that request
//! gets the first answer back instead of running it again.
//!
//! A key is scoped to (route, caller, key), the caller being the JWT subject or
//! API-key id that authenticated the request, else its client IP. The first
//! request takes the key atomically (`Store::begin`), goes upstream, and its
//! answer is stored with a fingerprint of the request (method, path, query, the
//! SHA-256 of the body); a later request with the same key and fingerprint gets
//! the stored answer. This module holds the pure parts (key syntax, scope,
//! fingerprints), the compiled policy and the `Claim` a request holds on its
//! key; the request path (`proxy::idempotent`) drives them.

pub mod store;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};

use crate::body::BodyDigest;
use crate::config::schema;
use crate::metrics::IdempotencyMetrics;
pub use store::{Answer, EntryInfo, Found, Lock, Store, StoreError};

/// The request header that carries the key.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on an answer replayed from the store.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// One `idempotency` policy, compiled. Kept across reloads while its
/// definition is unchanged, so the memory store keeps its keys.
pub struct Policy {
    pub name: Arc<str>,
    pub store: Store,
    pub ttl: Duration,
    pub lock_timeout: Duration,
    pub required: bool,
    pub max_response_bytes: u64,
    /// `on_store_error: pass` (else reject with 503).
    pub pass_on_store_error: bool,
}

impl Policy {
    /// Builds the policy; a Redis store connects lazily, on first use.
    pub fn new(
        name: &str,
        p: &schema::Idempotency,
        redis: Option<&schema::Redis>,
    ) -> Result<Policy, String> {
        let store = match p.store.as_str() {
            "redis" => {
                let own = p.redis.clone().unwrap_or_default();
                let url = own
                    .url
                    .or_else(|| redis.map(|r| r.url.clone()))
                    .ok_or("`store: redis` needs a redis url")?;
                let timeout = own
                    .timeout
                    .or(redis.map(|r| r.timeout))
                    .map_or(DEFAULT_REDIS_TIMEOUT, |t| t.get());
                Store::redis(&url, &own.prefix, timeout)?
            }
            _ => Store::memory(
                p.max_bytes
                    .map_or(schema::DEFAULT_IDEMPOTENCY_MEMORY, |b| b.0),
            ),
        };
        Ok(Policy {
            name: name.into(),
            store,
            ttl: p.ttl.get(),
            lock_timeout: p.lock_timeout.get(),
            required: p.required,
            max_response_bytes: p.max_response_bytes.0,
            pass_on_store_error: p.on_store_error == "pass",
        })
    }
}

/// A Redis store's timeout when neither the policy nor `redis:` sets one.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// What a policy was built from: a reload keeps the policy (and its memory
/// store) while this stays equal.
pub fn definition(p: &schema::Idempotency, redis: Option<&schema::Redis>) -> String {
    let own = serde_json::to_string(p).unwrap_or_default();
    let shared = redis.map(|r| format!("{}|{}", r.url, r.timeout));
    format!("{own}|{}", shared.unwrap_or_default())
}

/// A policy as one route applies it.
pub struct RouteIdempotency {
    pub policy: Arc<Policy>,
    pub route: Arc<str>,
    pub metrics: IdempotencyMetrics,
}

/// Whether requests of this method use keys: the unsafe ones (RFC 9110 §9.2.1).
/// A safe request passes untouched, key or not.
pub fn applies_to(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Why a request's key cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidKey;

/// The request's key (`None` when it sent none). A key is 1 to 255 bytes of
/// printable ASCII, sent once; the draft's structured-field form (`"abc"`,
/// with `\"` and `\\` escapes) means the same key as `abc`.
pub fn read_key(headers: &HeaderMap) -> Result<Option<Cow<'_, str>>, InvalidKey> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(InvalidKey);
    }
    let bytes = value.as_bytes();
    let key: Cow<'_, [u8]> = match bytes {
        [b'"', inner @ .., b'"'] if bytes.len() >= 2 => unquote(inner)?,
        _ => Cow::Borrowed(bytes),
    };
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.iter().all(|b| (0x20..0x7f).contains(b))
    {
        return Err(InvalidKey);
    }
    Ok(Some(match key {
        Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).map_err(|_| InvalidKey)?),
        Cow::Owned(b) => Cow::Owned(String::from_utf8(b).map_err(|_| InvalidKey)?),
    }))
}

/// The inside of an sf-string (RFC 8941 §3.3.3): `\"` and `\\` are the only
/// escapes, and a bare `"` ends the string early (invalid here).
fn unquote(inner: &[u8]) -> Result<Cow<'_, [u8]>, InvalidKey> {
    if !inner.iter().any(|&b| b == b'\\' || b == b'"') {
        return Ok(Cow::Borrowed(inner));
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut it = inner.iter();
    while let Some(&b) = it.next() {
        match b {
            b'\\' => match it.next() {
                Some(&e @ (b'"' | b'\\')) => out.push(e),
                _ => return Err(InvalidKey),
            },
            b'"' => return Err(InvalidKey),
            _ => out.push(b),
        }
    }
    Ok(Cow::Owned(out))
}

/// Who a key belongs to: the JWT subject or API-key id that authenticated the
/// request, else its client IP. Keys of different callers never meet.
pub fn caller(consumer: Option<&str>, jwt: bool, client_ip: IpAddr) -> Arc<str> {
    let (kind, name) = match consumer {
        Some(sub) if jwt => ("jwt:", sub),
        Some(id) => ("key:", id),
        None => return ip_caller(client_ip),
    };
    let mut s = String::with_capacity(kind.len() + name.len());
    s.push_str(kind);
    s.push_str(name);
    s.into()
}

/// `ip:<address>`, IPv4 written by hand (the formatting machinery costs more
/// than the rest of the key's bookkeeping).
fn ip_caller(ip: IpAddr) -> Arc<str> {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return format!("ip:{v6}").into(),
        },
    };
    let mut s = String::with_capacity(18);
    s.push_str("ip:");
    for (i, octet) in v4.octets().iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        s.push_str(itoa::Buffer::new().format(*octet));
    }
    s.into()
}

/// Where a (route, key) pair's entries live, one per caller (the store adds
/// its prefix): `{route length}:{route}:{key length}:{key}:`, then the caller.
/// The lengths make the mapping one-to-one whatever the names contain, and a
/// key stays readable in Redis (`redis-cli --scan`); no hashing on the way.
pub fn key_prefix(route: &str, key: &str) -> String {
    let mut k = String::with_capacity(route.len() + key.len() + 48);
    push_field(&mut k, route);
    push_field(&mut k, key);
    k
}

fn push_field(out: &mut String, field: &str) {
    let mut len = itoa::Buffer::new();
    out.push_str(len.format(field.len()));
    out.push(':');
    out.push_str(field);
    out.push(':');
}

/// The store key of one caller's key.
pub fn storage_key(route: &str, key: &str, caller: &str) -> String {
    let mut k = key_prefix(route, key);
    k.push_str(caller);
    k
}

/// What the fingerprint covers before the body: method, path and query, each
/// delimited (a path holds no NUL: the edge refuses it).
pub fn head_bytes(method: &Method, path: &str, query: Option<&str>) -> Vec<u8> {
    let q = query.unwrap_or_default();
    let mut out = Vec::with_capacity(method.as_str().len() + path.len() + q.len() + 4);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(path.as_bytes());
    out.push(0);
    out.push(u8::from(query.is_some()));
    out.extend_from_slice(q.as_bytes());
    out.push(0);
    out
}

/// A quick digest of the request head a key is bound to (xxh3, 128 bits): it
/// tells a reused key at once (422) without reading the body. It decides no
/// replay on its own (the SHA-256 `fingerprint` does), so it needs no
/// resistance to crafted collisions.
pub fn head_digest(head: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(head)
}

/// The request's fingerprint in the making: a SHA-256 over the head, then the
/// body as it streams (`BodyDigest::get` is the fingerprint once the body
/// ended). One hash per request, whatever the body's size.
pub fn fingerprint(head: &[u8]) -> BodyDigest {
    BodyDigest::seeded(head)
}

/// A request's hold on its key, from `begin` until its answer is stored or
/// given up. Dropped without `complete` (an error answer, a 5xx, a client that
/// went away, an answer too large to keep) it releases the key, so the client
/// may retry; the release is counted as `not_stored`.
pub struct Claim {
    route: Arc<RouteIdempotency>,
    key: Arc<str>,
    lock: Lock,
    settled: bool,
}

impl Claim {
    pub fn new(route: Arc<RouteIdempotency>, key: Arc<str>, lock: Lock) -> Self {
        Claim {
            route,
            key,
            lock,
            settled: false,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.route.policy
    }

    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Stores `answer` under the key, if this request still holds it (a lock
    /// that expired and was taken by another request is left alone). In
    /// memory that is done before this returns; a Redis write runs in a task
    /// of its own, so it neither delays the answer's last bytes nor stops when
    /// the client goes away: a retry that arrives while it is on its way finds
    /// the key still in flight (409, `Retry-After: 1`), then the answer.
    pub fn complete(mut self, answer: Answer) {
        let answer = Arc::new(answer);
        if let Store::Memory(m) = &self.route.policy.store {
            let stored = m.finish(&self.key, &self.lock, answer, self.route.policy.ttl);
            self.settled(Ok(stored));
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let r = self.route.clone();
            let result = r
                .policy
                .store
                .finish(&self.key, &self.lock, answer, r.policy.ttl)
                .await;
            self.settled(result);
        });
    }

    fn settled(&mut self, result: Result<bool, StoreError>) {
        self.settled = true;
        let r = &*self.route;
        match result {
            Ok(true) => r.metrics.stored.inc(),
            Ok(false) => {
                r.metrics.not_stored.inc();
                tracing::warn!(route = %r.route, policy = %r.policy.name,
                    "idempotency key expired (lock_timeout) before its answer was stored");
            }
            Err(e) => {
                r.metrics.store_error.inc();
                tracing::warn!(route = %r.route, policy = %r.policy.name, error = %e,
                    "idempotency store failed: answer not stored");
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.route.metrics.not_stored.inc();
        let key = std::mem::take(&mut self.key);
        self.route
            .policy
            .store
            .release_soon(self.route.policy.clone(), key, self.lock.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key_of(values: &[&[u8]]) -> Result<Option<String>, InvalidKey> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(IDEMPOTENCY_KEY.clone(), HeaderValue::from_bytes(v).unwrap());
        }
        read_key(&h).map(|k| k.map(Cow::into_owned))
    }

    #[test]
    fn keys_are_printable_ascii_up_to_255_bytes_sent_once() {
        assert_eq!(key_of(&[]), Ok(None));
        assert_eq!(
            key_of(&[b"8e03978e-40d5"]),
            Ok(Some("8e03978e-40d5".into()))
        );
        assert_eq!(key_of(&[b"\"8e03978e\""]), Ok(Some("8e03978e".into())));
        assert_eq!(key_of(&[br#""a\"b\\c""#]), Ok(Some(r#"a"b\c"#.into())));
        assert_eq!(key_of(&[b"a b"]), Ok(Some("a b".into())));
        let longest = vec![b'k'; 255];
        assert_eq!(key_of(&[&longest]).unwrap().unwrap().len(), 255);
        for bad in [
            &b""[..],
            b"\"\"",
            &[b'k'; 256],
            b"caf\xc3\xa9",
            b"tab\there",
            br#""a\nb""#,
            br#""a"b""#,
        ] {
            assert_eq!(
                key_of(&[bad]),
                Err(InvalidKey),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(key_of(&[b"a", b"a"]), Err(InvalidKey), "sent twice");
    }

    #[test]
    fn callers_are_distinct_by_kind_and_ipv4_mapped_is_ipv4() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(&*caller(Some("alice"), true, ip), "jwt:alice");
        assert_eq!(&*caller(Some("alice"), false, ip), "key:alice");
        assert_eq!(&*caller(None, false, ip), "ip:10.0.0.1");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(&*caller(None, false, mapped), "ip:10.0.0.1");
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(&*caller(None, false, v6), "ip:2001:db8::7");
        let edge: IpAddr = "255.0.10.199".parse().unwrap();
        assert_eq!(&*caller(None, false, edge), "ip:255.0.10.199");
    }

    #[test]
    fn store_keys_scope_by_route_key_and_caller_one_to_one() {
        let a = storage_key("pay", "k1", "ip:1.1.1.1");
        assert_eq!(a, "3:pay:2:k1:ip:1.1.1.1");
        assert!(a.starts_with(&key_prefix("pay", "k1")));
        assert_ne!(a, storage_key("pay", "k1", "ip:1.1.1.2"));
        assert_ne!(a, storage_key("pay", "k2", "ip:1.1.1.1"));
        assert_ne!(a, storage_key("refund", "k1", "ip:1.1.1.1"));
        // Separators inside names cannot make two scopes meet.
        assert_ne!(
            storage_key("a:2:b", "c", "ip:x"),
            storage_key("a", "b:1:c", "ip:x")
        );
        assert!(!key_prefix("pay", "k10").starts_with(&key_prefix("pay", "k1")));
    }

    fn fp(m: Method, path: &str, q: Option<&str>, body: &[u8]) -> [u8; 32] {
        let d = fingerprint(&head_bytes(&m, path, q));
        d.update(body);
        d.finish();
        d.get().unwrap()
    }

    #[test]
    fn fingerprints_tell_method_path_query_and_body_apart() {
        let base = fp(Method::POST, "/pay", None, b"{}");
        assert_eq!(base, fp(Method::POST, "/pay", None, b"{}"));
        assert_ne!(base, fp(Method::PATCH, "/pay", None, b"{}"));
        assert_ne!(base, fp(Method::POST, "/pay/", None, b"{}"));
        assert_ne!(
            base,
            fp(Method::POST, "/pay", Some(""), b"{}"),
            "`?` alone is a query"
        );
        assert_ne!(base, fp(Method::POST, "/pay", None, b"{ }"));
        assert_ne!(
            fp(Method::POST, "/a", Some("b"), b""),
            fp(Method::POST, "/a", Some(""), b"b"),
            "the query ends before the body"
        );
        let h = |m: Method, p: &str, q: Option<&str>| head_digest(&head_bytes(&m, p, q));
        assert_eq!(h(Method::POST, "/pay", None), h(Method::POST, "/pay", None));
        assert_ne!(
            h(Method::POST, "/pay", None),
            h(Method::POST, "/pay", Some(""))
        );
        assert_ne!(h(Method::POST, "/pay", None), h(Method::PUT, "/pay", None));
    }

    #[test]
    fn only_unsafe_methods_use_keys() {
        for m in [Method::POST, Method::PATCH, Method::PUT, Method::DELETE] {
            assert!(applies_to(&m), "{m}");
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(!applies_to(&m), "{m}");
        }
    }
}
