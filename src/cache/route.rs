//! A route's `cache:` compiled: its key, its lifetimes, and its part of the
//! request path: look up (memory, then the shared tier), decide what a stored
//! answer may be used for, admit a response for storage, and build answers
//! from stored ones with `Age` and `Cache-Status` (RFC 9211).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use prometheus::IntCounter;

use super::control;
use super::store::{Cache, Entry, FlightGuard, Stored, Variants};
use crate::config::schema;
use crate::headers::owned as owned_headers;
use crate::upstream::tee::{Keeper, TeeBody, frozen};

pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");
static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// How a request was served, as the metric's `result` and the access log's `cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
    Coalesced,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Stale,
        Outcome::Revalidated,
        Outcome::Bypass,
        Outcome::Coalesced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Revalidated => "revalidated",
            Outcome::Bypass => "bypass",
            Outcome::Coalesced => "coalesced",
        }
    }
}

/// Which request parts make the key.
struct KeySpec {
    host: bool,
    path: bool,
    query: bool,
    headers: Box<[HeaderName]>,
}

pub struct RouteCache {
    pub cache: Arc<Cache>,
    /// The key as configured (for `/explain`).
    parts: Box<[String]>,
    /// A fingerprint of the route's cache settings, in hex, that starts
    /// every key: a changed route starts from an empty cache, an unchanged
    /// one keeps its entries over a reload.
    id: Box<str>,
    key: KeySpec,
    default_ttl: Option<Duration>,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    /// `tollgate_cache_requests_total{route, result}`, indexed by `Outcome`.
    counters: [IntCounter; 6],
}

/// The request a response answers, as `admit` judges it.
#[derive(Clone, Copy)]
pub struct Asked<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// It carried credentials (`Authorization`, or the route has `auth`).
    pub credentials: bool,
    /// When it went upstream (the response's age counts from it).
    pub time: SystemTime,
}

/// A request's keys.
pub struct Keys {
    /// Route, method and the key's URL parts.
    pub primary: String,
    /// `host` + path + `?query`: what purges match.
    pub url: String,
}

impl RouteCache {
    pub fn new(
        route: &str,
        rc: &schema::RouteCache,
        cache: Arc<Cache>,
        counter: impl Fn(&str) -> IntCounter,
    ) -> RouteCache {
        let mut headers = Vec::new();
        let (mut host, mut path, mut query) = (false, false, false);
        for part in &rc.key {
            match part.split_once(':') {
                Some(("header", name)) => {
                    if let Ok(h) = HeaderName::from_bytes(name.trim().as_bytes()) {
                        headers.push(h);
                    }
                }
                _ => match part.as_str() {
                    "host" => host = true,
                    "path" => path = true,
                    "query" => query = true,
                    _ => {}
                },
            }
        }
        let id = xxhash_rust::xxh3::xxh3_64(
            format!(
                "{route}\u{0}{}\u{0}{}",
                rc.cache,
                serde_json::to_string(rc).unwrap_or_default()
            )
            .as_bytes(),
        );
        RouteCache {
            cache,
            parts: rc.key.clone().into(),
            id: format!("{id:016x}").into(),
            key: KeySpec {
                host,
                path,
                query,
                headers: headers.into(),
            },
            default_ttl: rc.default_ttl.map(|d| d.get()),
            stale_while_revalidate: rc
                .stale_while_revalidate
                .map_or(Duration::ZERO, |d| d.get()),
            stale_if_error: rc.stale_if_error.map_or(Duration::ZERO, |d| d.get()),
            counters: Outcome::ALL.map(|o| counter(o.as_str())),
        }
    }

    pub fn count(&self, outcome: Outcome) {
        self.counters[outcome as usize].inc();
    }

    /// The keys of a request with `method` to `host` + `path` `?query`.
    pub fn keys(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        host: Option<&str>,
    ) -> Keys {
        let (h, p, q) = (host_name(host.unwrap_or("")), path, query.unwrap_or(""));
        let mut url = String::with_capacity(h.len() + p.len() + q.len() + 1);
        // Host names are case-insensitive: one entry however it is spelt.
        url.extend(h.chars().map(|c| c.to_ascii_lowercase()));
        let host_len = h.len();
        url.push_str(p);
        if !q.is_empty() {
            url.push('?');
            url.push_str(q);
        }
        let (kh, kp, kq) = (
            if self.key.host { &url[..host_len] } else { "" },
            if self.key.path { p } else { "" },
            if self.key.query { q } else { "" },
        );
        let mut primary = String::with_capacity(26 + kh.len() + kp.len() + kq.len());
        primary.push_str(&self.id);
        primary.push(' ');
        primary.push_str(method.as_str());
        primary.push(' ');
        primary.push_str(kh);
        primary.push('|');
        primary.push_str(kp);
        primary.push('|');
        primary.push_str(kq);
        Keys { primary, url }
    }

    /// The stored answer for the request, from memory or else the shared tier
    /// (copied into memory when found there), and the key it is (or would
    /// be) under when that is not the primary key: the variant's key once the
    /// primary key names variants.
    pub async fn find(
        &self,
        keys: &Keys,
        request: &HeaderMap,
    ) -> (Option<String>, Option<Arc<Entry>>) {
        match self.load(&keys.primary).await {
            None => (None, None),
            Some(Stored::Response(e)) => (None, Some(e)),
            Some(Stored::Variants(v)) => {
                let key = variant_key(&keys.primary, &v, request);
                match self.load(&key).await {
                    Some(Stored::Response(e)) => (Some(key), Some(e)),
                    _ => (Some(key), None),
                }
            }
        }
    }

    /// What the memory tier holds for the request, without waiting on the
    /// shared tier (for `/explain`).
    pub fn peek(&self, keys: &Keys, request: &HeaderMap) -> Option<Arc<Entry>> {
        match self.cache.get(&keys.primary)? {
            Stored::Response(e) => Some(e),
            Stored::Variants(v) => {
                match self.cache.get(&variant_key(&keys.primary, &v, request))? {
                    Stored::Response(e) => Some(e),
                    Stored::Variants(_) => None,
                }
            }
        }
    }

    async fn load(&self, key: &str) -> Option<Stored> {
        if let Some(s) = self.cache.get(key) {
            return Some(s);
        }
        let shared = self.cache.shared.as_ref()?;
        let found = shared.get(key).await?;
        self.cache.put_local(key, found.clone());
        Some(found)
    }

    /// What a response to the request would be stored as, when it may be:
    /// checked on the head, before any byte of the body is sent.
    pub fn admit(
        &self,
        keys: Keys,
        asked: &Asked<'_>,
        status: StatusCode,
        response: &HeaderMap,
    ) -> Option<Pending> {
        let Asked {
            method,
            headers: request,
            credentials,
            time: request_time,
        } = *asked;
        // Declared too large: it streams through.
        let declared = response
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.cache.max_object_bytes) {
            return None;
        }
        let d = control::response_directives(response);
        // A route with authentication is a request with credentials, even
        // when the gateway took them off (Basic, API keys).
        let req = if credentials && !request.contains_key(header::AUTHORIZATION) {
            let mut req = request.clone();
            req.insert(header::AUTHORIZATION, HeaderValue::from_static("gateway"));
            std::borrow::Cow::Owned(req)
        } else {
            std::borrow::Cow::Borrowed(request)
        };
        if control::not_storable(
            method,
            status,
            &req,
            response,
            &d,
            self.default_ttl.is_some(),
        )
        .is_some()
        {
            return None;
        }
        let vary = control::vary_names(response);
        let mut names: Vec<HeaderName> = self.key.headers.to_vec();
        for v in &vary {
            if let Ok(n) = HeaderName::from_bytes(v.as_bytes())
                && !names.contains(&n)
            {
                names.push(n);
            }
        }
        let now = SystemTime::now();
        let lifetime =
            control::freshness_lifetime(&d, response, self.default_ttl).unwrap_or_default();
        let secs = |v: Option<u64>| v.map_or(Duration::ZERO, Duration::from_secs);
        // Hop-by-hop fields are gone already (the answer as the client gets it).
        let mut headers = owned_headers(response);
        headers.remove(header::AGE);
        let tagged = response.contains_key(&CACHE_TAG) || response.contains_key(&SURROGATE_KEY);
        let tags = if tagged {
            [&CACHE_TAG, &SURROGATE_KEY]
                .iter()
                .flat_map(|h| response.get_all(*h))
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split([',', ' ']))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Box::from)
                .collect()
        } else {
            Box::default()
        };
        let entry = Entry {
            status,
            headers,
            body: Bytes::new(),
            url: keys.url.as_str().into(),
            tags,
            response_time: now,
            initial_age: control::initial_age(response, request_time, now),
            lifetime,
            stale_while_revalidate: self
                .stale_while_revalidate
                .max(secs(d.stale_while_revalidate)),
            stale_if_error: self.stale_if_error.max(secs(d.stale_if_error)),
            revalidate: d.no_cache || (d.must_revalidate && lifetime.is_zero()),
            shared_with_credentials: d.public || d.s_maxage.is_some() || d.must_revalidate,
        };
        let (key, marker) = if names.is_empty() {
            (keys.primary.clone(), None)
        } else {
            let marker = Arc::new(Variants {
                names: names.into(),
                generation: fastrand::u64(..),
                url: keys.url.as_str().into(),
            });
            // One marker per primary key: the existing one keeps its generation
            // (and so its other variants) while it names the same headers.
            let marker = match self.cache.get(&keys.primary) {
                Some(Stored::Variants(v)) if v.names == marker.names => v,
                _ => marker,
            };
            (variant_key(&keys.primary, &marker, request), Some(marker))
        };
        Some(Pending {
            cache: self.cache.clone(),
            primary: keys.primary,
            key,
            marker,
            entry,
            body: BytesMut::new(),
            flight: None,
        })
    }

    /// Whether a stored answer may be used for a request with or without
    /// credentials.
    pub fn usable(entry: &Entry, credentials: bool) -> bool {
        !credentials || entry.shared_with_credentials
    }
}

/// The host without its port, like NGINX's `$host`: replicas reached on
/// different ports share entries.
pub fn host_name(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// `primary|generation|name=values\n…`: one variant's key.
fn variant_key(primary: &str, v: &Variants, request: &HeaderMap) -> String {
    let mut key = format!("{primary}|{:x}|", v.generation);
    for name in v.names.iter() {
        key.push_str(name.as_str());
        key.push('=');
        for (i, value) in request.get_all(name).iter().enumerate() {
            if i > 0 {
                key.push_str(", ");
            }
            key.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        key.push('\n');
    }
    key
}

/// An answer on its way to being stored: the head now, the body as it streams.
pub struct Pending {
    cache: Arc<Cache>,
    primary: String,
    key: String,
    marker: Option<Arc<Variants>>,
    entry: Entry,
    body: BytesMut,
    /// The miss this answer leads: its followers wake once it is stored (or
    /// given up).
    flight: Option<FlightGuard>,
}

impl Pending {
    /// Holds `flight` until the answer is stored or given up.
    pub fn leading(mut self, flight: Option<FlightGuard>) -> Pending {
        self.flight = flight;
        self
    }

    /// Stores it with `body`, read whole elsewhere (a background refresh).
    pub fn store_with(mut self, body: Bytes) {
        self.entry.body = body;
        self.put();
    }

    /// Stores it with the body copied as it streamed.
    pub fn store(mut self) {
        self.entry.body = frozen(&mut self.body);
        self.put();
    }

    fn put(self) {
        let Pending {
            cache,
            primary,
            key,
            marker,
            entry,
            // Dropped last: followers look again once the entry is there.
            flight: _flight,
            ..
        } = self;
        let keep = match &cache.shared {
            Some(_) => entry.keep_for(SystemTime::now()),
            None => Duration::ZERO,
        };
        if let Some(m) = marker {
            // The marker outlives any one variant.
            cache.put(&primary, Stored::Variants(m), || {
                keep.max(Duration::from_secs(3_600))
            });
        }
        cache.put(&key, Stored::Response(Arc::new(entry)), || keep);
    }

    /// Stores a refreshed copy of a stored entry (after a 304).
    pub fn refresh(cache: &Arc<Cache>, key: &str, entry: Entry) -> Arc<Entry> {
        let entry = Arc::new(entry);
        cache.put(key, Stored::Response(entry.clone()), || {
            entry.keep_for(SystemTime::now())
        });
        entry
    }
}

impl Keeper for Pending {
    fn limit(&self) -> u64 {
        self.cache.max_object_bytes
    }

    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.body
    }

    fn keep(self) {
        self.store();
    }
}

/// The upstream body, copied aside as it streams and stored at its end. Too
/// large for `max_object_bytes`, trailers, an upstream error or a client that
/// goes away: nothing is stored. The flight it leads ends when it is stored
/// or given up.
pub type CachingBody = TeeBody<Pending>;

/// The entry `old` refreshed by a 304's headers, fresh again from now.
pub fn refreshed(
    old: &Entry,
    not_modified: &HeaderMap,
    default_ttl_hint: Option<Duration>,
) -> Entry {
    let headers = owned_headers(&control::merge_304(&old.headers, not_modified));
    let d = control::response_directives(&headers);
    let now = SystemTime::now();
    let lifetime = control::freshness_lifetime(&d, &headers, default_ttl_hint).unwrap_or_default();
    Entry {
        status: old.status,
        body: old.body.clone(),
        url: old.url.clone(),
        tags: old.tags.clone(),
        response_time: now,
        initial_age: Duration::ZERO,
        lifetime,
        stale_while_revalidate: old.stale_while_revalidate,
        stale_if_error: old.stale_if_error,
        revalidate: d.no_cache || (d.must_revalidate && lifetime.is_zero()),
        shared_with_credentials: old.shared_with_credentials,
        headers,
    }
}

impl RouteCache {
    /// The route's `default_ttl`, for refreshed copies.
    pub fn default_ttl(&self) -> Option<Duration> {
        self.default_ttl
    }

    pub fn key_parts(&self) -> &[String] {
        &self.parts
    }
}

/// An answer built from a stored entry: `Age`, `Cache-Status`, and a 304
/// when the client's own conditional request matches it.
pub fn answer_from(
    entry: &Entry,
    request: &HeaderMap,
    method: &Method,
    status: String,
) -> Response<Bytes> {
    let now = SystemTime::now();
    let not_modified = control::not_modified(request, entry.etag(), entry.last_modified());
    let mut headers = entry.headers.clone();
    headers.insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
    if let Ok(v) = HeaderValue::from_str(&status) {
        headers.insert(CACHE_STATUS.clone(), v);
    }
    let (code, body) = if not_modified {
        headers.remove(header::CONTENT_LENGTH);
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else if *method == Method::HEAD {
        (entry.status, Bytes::new())
    } else {
        (entry.status, entry.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = code;
    *resp.headers_mut() = headers;
    resp
}

/// `tollgate; hit; ttl=N` and the other `Cache-Status` forms.
pub fn hit_status(entry: &Entry, detail: Option<&str>) -> String {
    let ttl = entry.ttl(SystemTime::now());
    match detail {
        Some(d) => format!("tollgate; hit; ttl={ttl}; detail={d}"),
        None => format!("tollgate; hit; ttl={ttl}"),
    }
}
