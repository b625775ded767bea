//! The response cache (`caches` and the routes' `cache`, RFC 9111 with the
//! `Cache-Status` header of RFC 9211) through the real gateway: what is stored
//! and for how long (max-age, s-maxage, Expires, default_ttl), what never is
//! (no-store, private, `Vary: *`, Set-Cookie, credentials), `Age` and `ttl` on
//! hits, Vary and the route's key, revalidation with ETag and Last-Modified,
//! a client's own conditional request, a client asking to revalidate, one
//! upstream request for a stampede, stale-while-revalidate, stale-if-error
//! (503, a dead upstream, a timeout), responses over `max_object_bytes`, a
//! client leaving mid-body, invalidation by unsafe methods, the purge API,
//! reloads, the metrics and the access-log field, the config errors, and the
//! shared Redis tier (two gateways on one `redis-server`, Redis killed or hung).
//!
//! The origin here is scripted per test: a closure gets each request (with its
//! number for that path and query) and says what to answer, including 304s to
//! conditional requests, bodies sent slowly, and answers held until the test
//! releases them. Time passes for real: a test that needs an entry to go stale
//! stores it with a short max-age and polls until `Cache-Status` says so.
//! The Redis tests start their own `redis-server` on a free loopback port and
//! are skipped, with a printed reason, when it is absent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::support::redis::{BlackHole, RedisServer};
use crate::support::*;

// ---------------------------------------------------------------------------
// A scripted origin
// ---------------------------------------------------------------------------

/// One request as the origin received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Path and query.
    uri: String,
    headers: HeaderMap,
    /// This request's number among those for the same path and query (from 1).
    n: usize,
}

impl Seen {
    fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the body of a reply goes out.
enum Payload {
    /// At once, with a Content-Length.
    Bytes(Bytes),
    /// Without a Content-Length (chunked), in frames of this many bytes.
    Chunked(Bytes, usize),
    /// With a Content-Length of the whole: `first` bytes at once, then frames
    /// of `chunk` bytes every `every`, until done or the gateway drops it.
    Trickle {
        all: Bytes,
        first: usize,
        chunk: usize,
        every: Duration,
    },
}

/// What the origin answers one request.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    payload: Payload,
    /// Wait for `Origin::release` before answering.
    hold: bool,
}

impl Reply {
    fn ok(b: impl Into<Bytes>) -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            payload: Payload::Bytes(b.into()),
            hold: false,
        }
    }

    fn status(code: u16) -> Reply {
        Reply {
            status: code,
            ..Reply::ok(Bytes::new())
        }
    }

    fn h(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn cc(self, value: &str) -> Reply {
        self.h("cache-control", value)
    }

    fn held(mut self) -> Reply {
        self.hold = true;
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;
type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

struct OriginState {
    handler: Box<Handler>,
    /// Requests per path and query.
    counts: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<Seen>>,
    /// Requests received and not yet answered (held ones included).
    in_flight: AtomicUsize,
    /// Nonzero: every request is answered this status (an origin failing).
    fail_status: AtomicU16,
    gate: Semaphore,
    /// Trickled bodies the gateway dropped before their end.
    bodies_dropped: AtomicUsize,
    conns: Mutex<Vec<JoinHandle<()>>>,
}

/// A loopback origin on 127.0.0.1:0 that answers what its handler says and
/// counts what it gets. `kill` makes it dead: connections are refused.
struct Origin {
    addr: SocketAddr,
    st: Arc<OriginState>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.st.gate.close();
        if let Some(h) = self.accept.lock().expect("accept").take() {
            h.abort();
        }
        for h in self.st.conns.lock().expect("conns").drain(..) {
            h.abort();
        }
    }
}

/// Decrements the in-flight count however the request ends (the gateway
/// may drop it mid-wait).
struct InFlight(Arc<OriginState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Origin {
    async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let st = Arc::new(OriginState {
            handler: Box::new(handler),
            counts: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            fail_status: AtomicU16::new(0),
            gate: Semaphore::new(0),
            bodies_dropped: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let s = st.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = s.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(serve(st, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                s.conns.lock().expect("conns").push(conn);
            }
        });
        Origin {
            addr,
            st,
            accept: Mutex::new(Some(accept)),
        }
    }

    fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Requests for this path and query.
    fn hits(&self, uri: &str) -> usize {
        self.st
            .counts
            .lock()
            .expect("counts")
            .get(uri)
            .copied()
            .unwrap_or(0)
    }

    /// Requests in all.
    fn total(&self) -> usize {
        self.st.counts.lock().expect("counts").values().sum()
    }

    fn in_flight(&self) -> usize {
        self.st.in_flight.load(Ordering::SeqCst)
    }

    /// The last request received for this path and query.
    fn last(&self, uri: &str) -> Seen {
        self.st
            .seen
            .lock()
            .expect("seen")
            .iter()
            .rev()
            .find(|s| s.uri == uri)
            .cloned()
            .unwrap_or_else(|| panic!("the origin never got {uri}"))
    }

    /// Lets `n` held requests answer.
    fn release(&self, n: usize) {
        self.st.gate.add_permits(n);
    }

    /// Every request from now on is answered `status` (0: as the handler says).
    fn fail_with(&self, status: u16) {
        self.st.fail_status.store(status, Ordering::SeqCst);
    }

    fn bodies_dropped(&self) -> usize {
        self.st.bodies_dropped.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection: from now on the origin
    /// refuses connections.
    async fn kill(&self) {
        let accept = self.accept.lock().expect("accept").take();
        if let Some(h) = accept {
            h.abort();
            let _ = h.await;
        }
        let conns: Vec<_> = self.st.conns.lock().expect("conns").drain(..).collect();
        for h in conns {
            h.abort();
            let _ = h.await;
        }
    }
}

async fn serve(st: Arc<OriginState>, req: Request<Incoming>) -> Response<UpBody> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    st.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(st.clone());
    let uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let n = {
        let mut counts = st.counts.lock().expect("counts");
        let c = counts.entry(uri.clone()).or_default();
        *c += 1;
        *c
    };
    let seen = Seen {
        method: parts.method.as_str().to_string(),
        uri,
        headers: parts.headers,
        n,
    };
    st.seen.lock().expect("seen").push(seen.clone());
    let fail = st.fail_status.load(Ordering::SeqCst);
    let reply = if fail != 0 {
        Reply {
            payload: Payload::Bytes(Bytes::from_static(b"origin failing")),
            ..Reply::status(fail)
        }
    } else {
        (st.handler)(&seen)
    };
    if reply.hold {
        let _ = st.gate.acquire().await.map(|p| p.forget());
    }
    build(&st, reply)
}

fn build(st: &Arc<OriginState>, reply: Reply) -> Response<UpBody> {
    let body = match reply.payload {
        Payload::Bytes(b) => Full::new(b).boxed(),
        Payload::Chunked(all, frame) => {
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..all.len())
                .step_by(frame)
                .map(|i| Ok(Frame::data(all.slice(i..(i + frame).min(all.len())))))
                .collect();
            StreamBody::new(tokio_stream::iter(frames)).boxed()
        }
        Payload::Trickle {
            all,
            first,
            chunk,
            every,
        } => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            let st = st.clone();
            tokio::spawn(async move {
                let mut at = first.min(all.len());
                if tx.send(Ok(Frame::data(all.slice(..at)))).await.is_err() {
                    st.bodies_dropped.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                while at < all.len() {
                    tokio::time::sleep(every).await;
                    let end = (at + chunk).min(all.len());
                    if tx.send(Ok(Frame::data(all.slice(at..end)))).await.is_err() {
                        st.bodies_dropped.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    at = end;
                }
            });
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(reply.status).expect("status");
    for (k, v) in reply.headers {
        r.headers_mut()
            .append(k, HeaderValue::from_str(&v).expect("header value"));
    }
    r
}

/// `len` bytes of a-z, so that an offset error shows.
fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// `caches:` with one cache, `edge`, of these bounds; with a shared tier on
/// the Redis at `redis` (its port).
fn caches(max_bytes: &str, max_object_bytes: &str, redis: Option<u16>) -> String {
    let mut s = format!(
        "caches:\n  edge:\n    max_bytes: {max_bytes}\n    max_object_bytes: {max_object_bytes}\n"
    );
    if let Some(port) = redis {
        s += &format!(
            "    redis: {{ url: \"redis://127.0.0.1:{port}\", prefix: \"tg:cache:\", timeout: 200ms }}\n"
        );
    }
    s
}

fn edge() -> String {
    caches("64MiB", "8MiB", None)
}

/// A route to the origin for `prefix`. `cache: Some(settings)` gives it a
/// `cache:` using `edge` plus these settings (one per line); `extra` lines go
/// on the route itself.
fn route(name: &str, prefix: &str, cache: Option<&str>, extra: &str) -> String {
    let mut s =
        format!("  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: origin\n");
    for l in extra.lines().filter(|l| !l.trim().is_empty()) {
        s += "    ";
        s += l.trim();
        s += "\n";
    }
    if let Some(settings) = cache {
        s += "    cache:\n      use: edge\n";
        for l in settings.lines().filter(|l| !l.trim().is_empty()) {
            s += "      ";
            s += l.trim();
            s += "\n";
        }
    }
    s
}

fn config(caches: &str, routes: &[String]) -> String {
    format!(
        "{}{caches}upstreams:
  origin:
    targets: [{{ url: 'http://${{UP}}' }}]
    timeouts: {{ connect: 500ms, request: 5s }}
routes:
{}",
        server_block(""),
        routes.concat()
    )
}

/// `catalog` (cached with these settings) and `plain` (not cached).
fn catalog(settings: &str) -> String {
    config(
        &edge(),
        &[
            route("catalog", "/catalog", Some(settings), ""),
            route("plain", "/plain", None, ""),
        ],
    )
}

async fn start(yaml: &str, origin: &Origin) -> Gateway {
    Gateway::start(yaml, &[("UP", origin.host_port())]).await
}

// ---------------------------------------------------------------------------
// Requests and Cache-Status
// ---------------------------------------------------------------------------

async fn fetch(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    get_with(&gw.url(path), headers).await
}

async fn head(url: &str, headers: &[(&str, &str)]) -> Resp {
    request_with("HEAD", url, headers, empty()).await
}

async fn unsafe_request(method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    request_with(method, url, headers, body("{}")).await
}

/// The body as text, cut short for messages.
fn shown(r: &Resp) -> String {
    let t = r.text();
    if t.len() > 200 {
        format!("{}... ({} bytes)", &t[..200], t.len())
    } else {
        t
    }
}

fn cache_status(r: &Resp) -> String {
    r.header("cache-status")
        .unwrap_or_else(|| {
            panic!(
                "no Cache-Status on a {} answer; headers {:?}, body {}",
                r.status,
                r.headers,
                shown(r)
            )
        })
        .to_string()
}

#[track_caller]
fn assert_cs(r: &Resp, want: &str) {
    assert_eq!(
        cache_status(r),
        want,
        "Cache-Status of a {} answer with body {}",
        r.status,
        shown(r)
    );
}

/// The `Age` of an answer from the cache.
#[track_caller]
fn age(r: &Resp) -> i64 {
    let a = r
        .header("age")
        .unwrap_or_else(|| panic!("an answer from the cache without Age: {:?}", r.headers));
    a.parse()
        .unwrap_or_else(|_| panic!("Age is not a number of seconds: {a:?}"))
}

fn fresh_ttl(r: &Resp) -> Option<i64> {
    let s = r.header("cache-status")?;
    let ttl: i64 = s.strip_prefix("tollgate; hit; ttl=")?.parse().ok()?;
    (ttl >= 0).then_some(ttl)
}

fn is_fresh_hit(r: &Resp) -> bool {
    fresh_ttl(r).is_some()
}

/// A fresh hit: exactly `tollgate; hit; ttl=N` with N >= 0, and an `Age`.
/// Returns (ttl, age).
#[track_caller]
fn assert_hit(r: &Resp) -> (i64, i64) {
    let s = cache_status(r);
    let ttl = fresh_ttl(r)
        .unwrap_or_else(|| panic!("not a fresh hit: Cache-Status {s:?}, body {}", shown(r)));
    assert_eq!(r.status, 200, "a hit: {s}");
    (ttl, age(r))
}

/// A stale copy served: exactly `tollgate; hit; ttl=-N; detail=<detail>`,
/// with an `Age`. Returns (ttl, age).
#[track_caller]
fn assert_stale(r: &Resp, detail: &str) -> (i64, i64) {
    let s = cache_status(r);
    let rest = s
        .strip_prefix("tollgate; hit; ttl=")
        .unwrap_or_else(|| panic!("not a stale hit: {s:?}, body {}", shown(r)));
    let (ttl, d) = rest
        .split_once("; detail=")
        .unwrap_or_else(|| panic!("no detail in {s:?}"));
    assert_eq!(d, detail, "Cache-Status {s:?}");
    assert!(
        ttl.starts_with('-') && ttl[1..].parse::<u64>().is_ok_and(|n| n > 0),
        "the ttl of a stale copy must be negative: {s:?}"
    );
    (ttl.parse().expect("ttl"), age(r))
}

/// A ttl (or an age) the gateway may report for a value of `want` seconds:
/// Date and Age have a resolution of one second.
#[track_caller]
fn assert_about(what: &str, got: i64, want: i64) {
    assert!(
        (want - 2..=want).contains(&got),
        "{what} is {got}, expected {want} (or up to 2 s less)"
    );
}

/// `GET path` until the answer is no longer a fresh hit, and returns that
/// answer and how many fresh hits came before it (each with `body`).
async fn until_not_fresh(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (Resp, usize) {
    let mut fresh = 0;
    let r = wait_until_within(
        Duration::from_secs(15),
        format!("the entry of {path} to go stale"),
        async || {
            let r = fetch(gw, path, headers).await;
            if is_fresh_hit(&r) {
                assert_eq!(r.text(), body, "a fresh hit of {path}");
                fresh += 1;
                Err(cache_status(&r))
            } else {
                Ok(r)
            }
        },
    )
    .await;
    (r, fresh)
}

fn requests_series(route: &str, result: &str) -> String {
    format!(r#"tollgate_cache_requests_total{{route="{route}",result="{result}"}}"#)
}

/// `tollgate_cache_requests_total` of a route for one result (0 when absent).
async fn requests(gw: &Gateway, route: &str, result: &str) -> f64 {
    metric(&gw.metrics().await, &requests_series(route, result)).unwrap_or(0.0)
}

async fn gauge(gw: &Gateway, series: &str) -> f64 {
    metric(&gw.metrics().await, series).unwrap_or(0.0)
}

async fn purge(gw: &Gateway, body_text: &str) -> Resp {
    let req = Request::post(gw.admin_url("/cache/purge"))
        .header("content-type", "application/json")
        .body(body(body_text.to_string()))
        .expect("request");
    send(req).await.expect("POST /cache/purge")
}

/// A purge that must succeed; returns `purged`.
async fn purged(gw: &Gateway, body_text: &str) -> u64 {
    let r = purge(gw, body_text).await;
    assert_eq!(r.status, 200, "purge {body_text}: {}", r.text());
    r.json()["purged"]
        .as_u64()
        .unwrap_or_else(|| panic!("purge {body_text}: no count in {}", r.text()))
}

// ---------------------------------------------------------------------------
// Freshness
// ---------------------------------------------------------------------------

#[tokio::test]
async fn max_age_responses_are_stored_and_hits_carry_age_and_ttl() {
    let origin = Origin::start(|s| match s.path() {
        "/catalog/fresh" => Reply::ok(format!("fresh {}", s.n)).cc("max-age=60"),
        "/catalog/aged" => Reply::ok(format!("aged {}", s.n))
            .cc("max-age=60")
            .h("age", "10"),
        _ => Reply::status(404),
    })
    .await;
    let gw = start(&catalog(""), &origin).await;

    let first = fetch(&gw, "/catalog/fresh", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "fresh 1");
    assert_cs(&first, "tollgate; fwd=miss; stored");

    for _ in 0..3 {
        let hit = fetch(&gw, "/catalog/fresh", &[]).await;
        assert_eq!(hit.text(), "fresh 1");
        let (ttl, age) = assert_hit(&hit);
        assert_about("the ttl of a max-age=60 hit", ttl, 60);
        assert!((0..=2).contains(&age), "Age {age} of a new entry");
        assert!(
            (59..=61).contains(&(ttl + age)),
            "ttl {ttl} + Age {age} should be the lifetime, 60"
        );
    }
    assert_eq!(
        origin.hits("/catalog/fresh"),
        1,
        "hits never reach the origin"
    );

    // The origin's own Age counts: it was 10 s old on arrival.
    assert_cs(
        &fetch(&gw, "/catalog/aged", &[]).await,
        "tollgate; fwd=miss; stored",
    );
    let hit = fetch(&gw, "/catalog/aged", &[]).await;
    assert_eq!(hit.text(), "aged 1");
    let (ttl, age) = assert_hit(&hit);
    assert!((10..=12).contains(&age), "Age {age}, stored at 10");
    assert_about("the ttl of a 10 s old max-age=60 entry", ttl, 50);
    assert_eq!(origin.hits("/catalog/aged"), 1);

    // An uncached route says nothing of a cache.
    let plain = fetch(&gw, "/plain/x", &[]).await;
    assert_eq!(plain.status, 404);
    assert!(
        plain.header("cache-status").is_none(),
        "{:?}",
        plain.headers
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn s_maxage_wins_over_max_age_and_expires_counts_when_no_max_age_is_given() {
    let origin = Origin::start(|s| {
        let now = SystemTime::now();
        let body = format!("{} {}", s.path(), s.n);
        match s.path() {
            "/catalog/shared" => Reply::ok(body).cc("max-age=0, s-maxage=60"),
            "/catalog/expires" => Reply::ok(body)
                .h("date", http_date(now))
                .h("expires", http_date(now + Duration::from_secs(120))),
            "/catalog/both" => Reply::ok(body)
                .cc("max-age=30")
                .h("date", http_date(now))
                .h("expires", http_date(now + Duration::from_secs(3600))),
            "/catalog/expired" => Reply::ok(body)
                .h("date", http_date(now))
                .h("expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
            _ => Reply::status(404),
        }
    })
    .await;
    let gw = start(&catalog(""), &origin).await;

    for (path, lifetime) in [
        ("/catalog/shared", 60),
        ("/catalog/expires", 120),
        ("/catalog/both", 30),
    ] {
        assert_cs(&fetch(&gw, path, &[]).await, "tollgate; fwd=miss; stored");
        let hit = fetch(&gw, path, &[]).await;
        assert_eq!(hit.text(), format!("{path} 1"));
        let (ttl, _) = assert_hit(&hit);
        assert_about(&format!("the ttl of {path}"), ttl, lifetime);
        assert_eq!(origin.hits(path), 1, "{path}");
    }

    // Expired on arrival: every request goes to the origin.
    for n in 1..=2 {
        let r = fetch(&gw, "/catalog/expired", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("/catalog/expired {n}"));
        assert!(!is_fresh_hit(&r), "an expired response was a hit: {r:?}");
    }
    assert_eq!(origin.hits("/catalog/expired"), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn default_ttl_applies_only_when_the_response_gives_no_freshness() {
    let origin = Origin::start(|s| {
        let body = format!("{} {}", s.path(), s.n);
        if s.path().ends_with("/own") {
            Reply::ok(body).cc("max-age=5")
        } else {
            Reply::ok(body)
        }
    })
    .await;
    let yaml = config(
        &edge(),
        &[
            route("catalog", "/catalog", Some("default_ttl: 60s"), ""),
            route("nottl", "/nottl", Some(""), ""),
        ],
    );
    let gw = start(&yaml, &origin).await;

    assert_cs(
        &fetch(&gw, "/catalog/silent", &[]).await,
        "tollgate; fwd=miss; stored",
    );
    let hit = fetch(&gw, "/catalog/silent", &[]).await;
    assert_eq!(hit.text(), "/catalog/silent 1");
    assert_about("the ttl from default_ttl", assert_hit(&hit).0, 60);

    // The response's own lifetime wins over the default.
    fetch(&gw, "/catalog/own", &[]).await;
    let hit = fetch(&gw, "/catalog/own", &[]).await;
    assert_about("the ttl of max-age=5", assert_hit(&hit).0, 5);
    assert_eq!(origin.hits("/catalog/own"), 1);

    // Without default_ttl a response that says nothing is never fresh.
    for n in 1..=2 {
        let r = fetch(&gw, "/nottl/silent", &[]).await;
        assert_eq!(r.text(), format!("/nottl/silent {n}"));
        assert!(!is_fresh_hit(&r), "a hit without any freshness: {r:?}");
    }
    assert_eq!(origin.hits("/nottl/silent"), 2);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// What is never stored
// ---------------------------------------------------------------------------

#[tokio::test]
async fn no_store_private_vary_star_and_set_cookie_are_never_stored() {
    let origin = Origin::start(|s| {
        let body = format!("{} {}", s.path(), s.n);
        match s.path() {
            "/catalog/no-store" => Reply::ok(body).cc("no-store, max-age=60"),
            "/catalog/private" => Reply::ok(body).cc("private, max-age=60"),
            "/catalog/vary-star" => Reply::ok(body).cc("max-age=60").h("vary", "*"),
            "/catalog/cookie" => Reply::ok(body)
                .cc("max-age=60")
                .h("set-cookie", "session=abc; Path=/"),
            _ => Reply::ok(body).cc("max-age=60"),
        }
    })
    .await;
    // A default_ttl too: only the directives keep these out.
    let gw = start(&catalog("default_ttl: 60s"), &origin).await;

    for path in [
        "/catalog/no-store",
        "/catalog/private",
        "/catalog/vary-star",
        "/catalog/cookie",
    ] {
        for n in 1..=2 {
            let r = fetch(&gw, path, &[]).await;
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(r.text(), format!("{path} {n}"));
            assert_cs(&r, "tollgate; fwd=miss");
        }
        assert_eq!(origin.hits(path), 2, "{path} was answered from the cache");
    }
    let cookie = fetch(&gw, "/catalog/cookie", &[]).await;
    assert_eq!(cookie.header("set-cookie"), Some("session=abc; Path=/"));

    // The same route stores what may be stored.
    fetch(&gw, "/catalog/control", &[]).await;
    assert_hit(&fetch(&gw, "/catalog/control", &[]).await);
    assert_eq!(origin.hits("/catalog/control"), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_with_no_store_bypasses_the_cache() {
    let origin =
        Origin::start(|s| Reply::ok(format!("{} {}", s.path(), s.n)).cc("max-age=60")).await;
    let gw = start(&catalog(""), &origin).await;
    let no_store = [("cache-control", "no-store")];

    let r = fetch(&gw, "/catalog/ns", &no_store).await;
    assert_eq!(r.text(), "/catalog/ns 1");
    assert_cs(&r, "tollgate; fwd=bypass");
    // Not stored: the next request is a miss.
    let r = fetch(&gw, "/catalog/ns", &[]).await;
    assert_eq!(r.text(), "/catalog/ns 2");
    assert_cs(&r, "tollgate; fwd=miss; stored");
    let r = fetch(&gw, "/catalog/ns", &no_store).await;
    assert_cs(&r, "tollgate; fwd=bypass");
    assert_eq!(origin.hits("/catalog/ns"), 3);
    // What was stored is still there.
    let hit = fetch(&gw, "/catalog/ns", &[]).await;
    assert_eq!(hit.text(), "/catalog/ns 2");
    assert_hit(&hit);
    assert_eq!(requests(&gw, "catalog", "bypass").await, 2.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn requests_with_authorization_use_only_entries_that_allow_it() {
    let origin = Origin::start(|s| {
        let body = format!("{} {}", s.path(), s.n);
        match s.path() {
            "/catalog/auth/public" => Reply::ok(body).cc("public, max-age=60"),
            "/catalog/auth/s-maxage" => Reply::ok(body).cc("s-maxage=60"),
            "/catalog/auth/must-revalidate" => Reply::ok(body).cc("must-revalidate, max-age=60"),
            _ => Reply::ok(body).cc("max-age=60"),
        }
    })
    .await;
    let gw = start(&catalog(""), &origin).await;
    let creds = [("authorization", "Bearer alice")];
    let path = "/catalog/auth/plain";

    // Neither answered from nor stored in the cache.
    for n in 1..=2 {
        let r = fetch(&gw, path, &creds).await;
        assert_eq!(r.text(), format!("{path} {n}"));
        assert_cs(&r, "tollgate; fwd=bypass");
    }
    let r = fetch(&gw, path, &[]).await;
    assert_eq!(r.text(), format!("{path} 3"));
    assert_cs(&r, "tollgate; fwd=miss; stored");
    assert_hit(&fetch(&gw, path, &[]).await);
    // The stored copy is not for requests with credentials.
    let r = fetch(&gw, path, &creds).await;
    assert_eq!(r.text(), format!("{path} 4"));
    assert_cs(&r, "tollgate; fwd=bypass");
    assert_eq!(origin.hits(path), 4);

    // public, s-maxage and must-revalidate allow it.
    for path in [
        "/catalog/auth/public",
        "/catalog/auth/s-maxage",
        "/catalog/auth/must-revalidate",
    ] {
        let r = fetch(&gw, path, &creds).await;
        assert_cs(&r, "tollgate; fwd=miss; stored");
        let hit = fetch(&gw, path, &creds).await;
        assert_eq!(hit.text(), format!("{path} 1"));
        assert_hit(&hit);
        assert_hit(&fetch(&gw, path, &[]).await);
        assert_eq!(origin.hits(path), 1, "{path}");
    }
    assert_eq!(requests(&gw, "catalog", "bypass").await, 3.0);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Vary and the key
// ---------------------------------------------------------------------------

#[tokio::test]
async fn vary_keeps_a_variant_per_request_header_value() {
    let origin = Origin::start(|s| {
        let greeting = match s.header("accept-language") {
            Some("en") => "hello",
            Some("de") => "hallo",
            Some(_) => "?",
            None => "hi",
        };
        Reply::ok(greeting)
            .cc("max-age=60")
            .h("vary", "Accept-Language")
    })
    .await;
    let gw = start(&catalog(""), &origin).await;
    let path = "/catalog/greet";
    let en = [("accept-language", "en")];
    let de = [("accept-language", "de")];

    let r = fetch(&gw, path, &en).await;
    assert_eq!(r.text(), "hello");
    assert_cs(&r, "tollgate; fwd=miss; stored");
    let r = fetch(&gw, path, &de).await;
    assert_eq!(r.text(), "hallo");
    assert_cs(&r, "tollgate; fwd=miss; stored");
    for (headers, want) in [(&en, "hello"), (&de, "hallo"), (&en, "hello")] {
        let r = fetch(&gw, path, headers).await;
        assert_eq!(r.text(), want);
        assert_hit(&r);
        assert_eq!(r.header("vary"), Some("Accept-Language"));
    }
    assert_eq!(origin.hits(path), 2);

    // No Accept-Language is a variant of its own.
    let r = fetch(&gw, path, &[]).await;
    assert_eq!(r.text(), "hi");
    assert_cs(&r, "tollgate; fwd=miss; stored");
    let r = fetch(&gw, path, &[]).await;
    assert_eq!(r.text(), "hi");
    assert_hit(&r);
    assert_eq!(origin.hits(path), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_route_key_decides_what_shares_an_entry() {
    let origin = Origin::start(|s| {
        Reply::ok(format!(
            "{} {} {} {}",
            s.uri,
            s.header("host").unwrap_or("-"),
            s.header("accept-language").unwrap_or("-"),
            s.n
        ))
        .cc("max-age=60")
    })
    .await;
    let yaml = config(
        &edge(),
        &[
            route(
                "catalog",
                "/catalog",
                Some(r#"key: [host, path, query, "header:accept-language"]"#),
                "",
            ),
            route("pathonly", "/pathonly", Some("key: [path]"), ""),
        ],
    );
    let gw = start(&yaml, &origin).await;
    let a_en = [("host", "a.example"), ("accept-language", "en")];
    let a_fr = [("host", "a.example"), ("accept-language", "fr")];
    let b_en = [("host", "b.example"), ("accept-language", "en")];

    let first = fetch(&gw, "/catalog/k?page=1", &a_en).await;
    assert_cs(&first, "tollgate; fwd=miss; stored");
    let hit = fetch(&gw, "/catalog/k?page=1", &a_en).await;
    assert_eq!(hit.text(), first.text());
    assert_hit(&hit);
    // Another language, host or query: another entry.
    for (path, headers) in [
        ("/catalog/k?page=1", &a_fr),
        ("/catalog/k?page=1", &b_en),
        ("/catalog/k?page=2", &a_en),
    ] {
        let r = fetch(&gw, path, headers).await;
        assert_cs(&r, "tollgate; fwd=miss; stored");
        assert_ne!(r.text(), first.text());
        assert_hit(&fetch(&gw, path, headers).await);
    }
    assert_eq!(origin.hits("/catalog/k?page=1"), 3);
    assert_eq!(origin.hits("/catalog/k?page=2"), 1);

    // key: [path] — host and query do not matter.
    let first = fetch(&gw, "/pathonly/x?a=1", &a_en).await;
    assert_cs(&first, "tollgate; fwd=miss; stored");
    let other = fetch(&gw, "/pathonly/x?a=2", &b_en).await;
    assert_eq!(other.text(), first.text());
    assert_hit(&other);
    assert_eq!(origin.hits("/pathonly/x?a=1"), 1);
    assert_eq!(origin.hits("/pathonly/x?a=2"), 0);

    // The method is always part of the key: HEAD has entries of its own.
    let url = gw.url("/catalog/h");
    let r = head(&url, &[]).await;
    assert_eq!(r.status, 200);
    assert_cs(&r, "tollgate; fwd=miss; stored");
    let r = head(&url, &[]).await;
    assert_hit(&r);
    assert!(r.body.is_empty());
    assert_eq!(origin.hits("/catalog/h"), 1);
    let r = fetch(&gw, "/catalog/h", &[]).await;
    assert!(
        r.text().starts_with("/catalog/h "),
        "a GET answered without its body: {r:?}"
    );
    assert_eq!(origin.hits("/catalog/h"), 2, "a GET used the HEAD's entry");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Revalidation
// ---------------------------------------------------------------------------

/// An origin whose `/catalog/...` resources are at version `version`, with
/// ETag `"v<version>"`, answering 304 to a matching If-None-Match.
async fn versioned(version: Arc<AtomicUsize>, cache_control: &'static str) -> Origin {
    Origin::start(move |s| {
        let v = version.load(Ordering::SeqCst);
        let etag = format!("\"v{v}\"");
        if s.header("if-none-match") == Some(etag.as_str()) {
            Reply::status(304).cc(cache_control).h("etag", etag)
        } else {
            Reply::ok(format!("body v{v}"))
                .cc(cache_control)
                .h("etag", etag)
        }
    })
    .await
}

#[tokio::test]
async fn no_cache_is_stored_and_revalidated_with_its_etag_on_every_use() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = versioned(version.clone(), "no-cache, max-age=60").await;
    let gw = start(&catalog(""), &origin).await;
    let path = "/catalog/nc";

    let r = fetch(&gw, path, &[]).await;
    assert_eq!(r.text(), "body v1");
    assert_cs(&r, "tollgate; fwd=miss; stored");

    for n in 2..=3 {
        let r = fetch(&gw, path, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "body v1", "the stored body after a 304");
        assert_cs(&r, "tollgate; fwd=stale; fwd-status=304");
        assert_eq!(origin.hits(path), n, "no-cache is revalidated on every use");
        assert_eq!(origin.last(path).header("if-none-match"), Some("\"v1\""));
    }

    // A new version: the origin's 200 replaces the entry.
    version.store(2, Ordering::SeqCst);
    let r = fetch(&gw, path, &[]).await;
    assert_eq!(r.text(), "body v2");
    assert_cs(&r, "tollgate; fwd=stale; fwd-status=200; stored");
    let r = fetch(&gw, path, &[]).await;
    assert_eq!(r.text(), "body v2");
    assert_cs(&r, "tollgate; fwd=stale; fwd-status=304");
    assert_eq!(origin.last(path).header("if-none-match"), Some("\"v2\""));
    assert_eq!(origin.hits(path), 5);

    assert_eq!(requests(&gw, "catalog", "revalidated").await, 3.0);
    assert_eq!(requests(&gw, "catalog", "miss").await, 2.0);
    assert_eq!(requests(&gw, "catalog", "hit").await, 0.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stale_entry_with_last_modified_is_revalidated_with_if_modified_since() {
    let last_modified = http_date(SystemTime::now() - Duration::from_secs(86_400));
    let lm = last_modified.clone();
    let origin = Origin::start(move |s| {
        if s.header("if-modified-since") == Some(lm.as_str()) {
            Reply::status(304)
                .cc("max-age=2")
                .h("last-modified", lm.clone())
        } else {
            Reply::ok(format!("lm body {}", s.n))
                .cc("max-age=2")
                .h("last-modified", lm.clone())
        }
    })
    .await;
    let gw = start(&catalog(""), &origin).await;
    let path = "/catalog/lm";

    assert_cs(&fetch(&gw, path, &[]).await, "tollgate; fwd=miss; stored");
    let (r, _) = until_not_fresh(&gw, path, &[], "lm body 1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "lm body 1", "the stored body after a 304");
    assert_cs(&r, "tollgate; fwd=stale; fwd-status=304");
    assert_eq!(origin.hits(path), 2);
    let sent = origin.last(path);
    assert_eq!(sent.method, "GET");
    assert_eq!(
        sent.header("if-modified-since"),
        Some(last_modified.as_str())
    );

    // The 304 made the entry fresh again.
    let hit = fetch(&gw, path, &[]).await;
    assert_eq!(hit.text(), "lm body 1");
    assert_hit(&hit);
    assert_eq!(origin.hits(path), 2);
    assert_eq!(requests(&gw, "catalog", "revalidated").await, 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_conditional_request_is_answered_304_from_the_cache() {
    let origin = versioned(Arc::new(AtomicUsize::new(1)), "max-age=60").await;
    let gw = start(&catalog(""), &origin).await;
    let path = "/catalog/cond";

    assert_cs(&fetch(&gw, path, &[]).await, "tollgate; fwd=miss; stored");
    for inm in ["\"v1\"", "\"v0\", \"v1\""] {
        let r = fetch(&gw, path, &[("if-none-match", inm)]).await;
        assert_eq!(r.status, 304, "If-None-Match: {inm}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some("\"v1\""));
        let s = cache_status(&r);
        let ttl: i64 = s
            .strip_prefix("tollgate; hit; ttl=")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("a 304 from the cache is a hit: {s:?}"));
        assert_about("the ttl of the 304", ttl, 60);
    }
    // Another ETag: the stored 200.
    let r = fetch(&gw, path, &[("if-none-match", "\"v9\"")]).await;
    assert_eq!(r.text(), "body v1");
    assert_hit(&r);
    assert_eq!(origin.hits(path), 1, "all answered from the cache");
    assert_eq!(requests(&gw, "catalog", "hit").await, 3.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_asking_to_revalidate_gets_a_conditional_request_forwarded() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = versioned(version.clone(), "max-age=60").await;
    let gw = start(&catalog(""), &origin).await;
    let path = "/catalog/ask";

    assert_cs(&fetch(&gw, path, &[]).await, "tollgate; fwd=miss; stored");
    assert_hit(&fetch(&gw, path, &[]).await);

    let r = fetch(&gw, path, &[("cache-control", "no-cache")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body v1");
    assert_cs(&r, "tollgate; fwd=request; fwd-status=304");
    assert_eq!(origin.hits(path), 2);
    assert_eq!(origin.last(path).header("if-none-match"), Some("\"v1\""));

    version.store(2, Ordering::SeqCst);
    let r = fetch(&gw, path, &[("cache-control", "max-age=0")]).await;
    assert_eq!(r.text(), "body v2");
    assert_cs(&r, "tollgate; fwd=request; fwd-status=200; stored");
    assert_eq!(origin.hits(path), 3);

    let hit = fetch(&gw, path, &[]).await;
    assert_eq!(hit.text(), "body v2");
    assert_hit(&hit);
    assert_eq!(origin.hits(path), 3);

    assert_eq!(requests(&gw, "catalog", "revalidated").await, 1.0);
    assert_eq!(requests(&gw, "catalog", "miss").await, 2.0);
    assert_eq!(requests(&gw, "catalog", "hit").await, 2.0);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Stampedes and stale copies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_misses_for_one_key_make_one_upstream_request() {
    let origin = Origin::start(|s| Reply::ok(format!("hot {}", s.n)).cc("max-age=60").held()).await;
    let gw = start(&catalog(""), &origin).await;
    let url = gw.url("/catalog/hot");

    let clients: Vec<_> = (0..100)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    // The first is at the origin, held; the others all arrived.
    wait_until(
        "one request at the origin and 100 in the gateway",
        async || {
            let in_gateway =
                metric(&gw.metrics().await, "tollgate_in_flight_requests").unwrap_or(0.0);
            let at_origin = origin.in_flight();
            if at_origin >= 1 && in_gateway >= 100.0 {
                Ok(())
            } else {
                Err(format!(
                    "{at_origin} at the origin, {in_gateway} in the gateway"
                ))
            }
        },
    )
    .await;
    assert_eq!(origin.total(), 1, "the waiting misses reached the origin");
    // Lets every request go, should more than one have reached the origin.
    origin.release(100);

    let mut statuses: HashMap<String, usize> = HashMap::new();
    for c in clients {
        let r = c.await.expect("client task").expect("response");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hot 1");
        *statuses.entry(cache_status(&r)).or_default() += 1;
    }
    assert_eq!(
        statuses,
        HashMap::from([
            ("tollgate; fwd=miss; stored".to_string(), 1),
            ("tollgate; hit; collapsed".to_string(), 99),
        ])
    );
    assert_eq!(origin.total(), 1);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, &requests_series("catalog", "coalesced")),
        Some(99.0)
    );
    assert_eq!(metric(&m, &requests_series("catalog", "miss")), Some(1.0));
    assert_hit(&get_with(&url, &[]).await);
    gw.shutdown().await;
}

/// Misses wait for the one in flight once: when its answer cannot be stored,
/// they all go upstream together instead of queueing behind one another.
#[tokio::test]
async fn waiting_misses_of_an_answer_that_is_not_stored_go_upstream_together() {
    let origin =
        Origin::start(|s| Reply::ok(format!("private {}", s.n)).cc("no-store").held()).await;
    let gw = start(&catalog(""), &origin).await;
    let url = gw.url("/catalog/never");
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    wait_until(
        "one request at the origin and 10 in the gateway",
        async || {
            let in_gateway =
                metric(&gw.metrics().await, "tollgate_in_flight_requests").unwrap_or(0.0);
            if origin.in_flight() == 1 && in_gateway >= 10.0 {
                Ok(())
            } else {
                Err(format!(
                    "{} at the origin, {in_gateway} in the gateway",
                    origin.in_flight()
                ))
            }
        },
    )
    .await;
    origin.release(1);
    // The nine that waited are at the origin at once, not one after another.
    wait_until(
        "the nine waiting misses at the origin together",
        async || {
            if origin.in_flight() == 9 {
                Ok(())
            } else {
                Err(format!("{} at the origin", origin.in_flight()))
            }
        },
    )
    .await;
    origin.release(9);
    for c in clients {
        let r = c.await.expect("client task").expect("response");
        assert_eq!(r.status, 200);
        assert_cs(&r, "tollgate; fwd=miss");
    }
    assert_eq!(origin.total(), 10);
    assert_eq!(requests(&gw, "catalog", "miss").await, 10.0);
    gw.shutdown().await;
}

/// An entry that goes stale after 2 s, with stale-while-revalidate from the
/// route's `settings` or the response's `cache_control`: the stale copy is
/// served at once while one background refresh (held at the origin) runs,
/// and the refreshed copy after it.
async fn stale_while_revalidate(settings: &str, cache_control: &'static str) {
    let origin = Origin::start(move |s| {
        let r = Reply::ok(format!("v{}", s.n)).cc(cache_control);
        if s.n == 2 { r.held() } else { r }
    })
    .await;
    let yaml = config(&edge(), &[route("catalog", "/catalog", Some(settings), "")]);
    let gw = start(&yaml, &origin).await;
    let path = "/catalog/swr";

    let first = fetch(&gw, path, &[]).await;
    assert_eq!(first.text(), "v1");
    assert_cs(&first, "tollgate; fwd=miss; stored");

    let (stale, fresh) = until_not_fresh(&gw, path, &[], "v1").await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "v1");
    let (_, age) = assert_stale(&stale, "stale-while-revalidate");
    assert!(age >= 2, "Age {age} of a copy stale after 2 s");

    wait_until("the background refresh to reach the origin", async || {
        origin.in_flight() == 1
    })
    .await;
    // While it is held, stale copies are served without waiting for it.
    for _ in 0..5 {
        let r = fetch(&gw, path, &[]).await;
        assert_eq!(r.text(), "v1");
        assert_stale(&r, "stale-while-revalidate");
    }
    assert_eq!(origin.total(), 2, "one refresh however many stale answers");

    origin.release(1);
    let mut stale_after = 0;
    let refreshed = wait_until("the refreshed copy", async || {
        let r = fetch(&gw, path, &[]).await;
        if r.text() == "v2" {
            Ok(r)
        } else {
            assert_eq!(r.text(), "v1");
            assert_stale(&r, "stale-while-revalidate");
            stale_after += 1;
            Err(cache_status(&r))
        }
    })
    .await;
    assert_hit(&refreshed);
    assert_eq!(origin.total(), 2);

    let m = gw.metrics().await;
    let count = |result: &str| metric(&m, &requests_series("catalog", result)).unwrap_or(0.0);
    assert_eq!(count("stale"), (1 + 5 + stale_after) as f64);
    assert_eq!(count("hit"), (fresh + 1) as f64);
    assert_eq!(count("miss"), 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn stale_while_revalidate_from_the_route_serves_stale_and_refreshes_once() {
    stale_while_revalidate("stale_while_revalidate: 30s", "max-age=2").await;
}

#[tokio::test]
async fn stale_while_revalidate_from_the_response_serves_stale_and_refreshes_once() {
    stale_while_revalidate("", "max-age=2, stale-while-revalidate=30").await;
}

fn stale_if_error_config(route_extra: &str) -> String {
    config(
        &edge(),
        &[
            route(
                "catalog",
                "/catalog",
                Some("stale_if_error: 5m"),
                route_extra,
            ),
            route("nosie", "/nosie", Some(""), route_extra),
        ],
    )
}

fn versioned_by_count(s: &Seen) -> Reply {
    Reply::ok(format!("{} v{}", s.path(), s.n)).cc("max-age=2")
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_copy_while_the_upstream_answers_503() {
    let origin = Origin::start(versioned_by_count).await;
    let gw = start(&stale_if_error_config(""), &origin).await;

    // Stored before, so stale no later than /catalog/x.
    assert_cs(
        &fetch(&gw, "/nosie/x", &[]).await,
        "tollgate; fwd=miss; stored",
    );
    assert_cs(
        &fetch(&gw, "/catalog/x", &[]).await,
        "tollgate; fwd=miss; stored",
    );
    origin.fail_with(503);

    let (r, _) = until_not_fresh(&gw, "/catalog/x", &[], "/catalog/x v1").await;
    assert_eq!(r.status, 200, "{}", shown(&r));
    assert_eq!(r.text(), "/catalog/x v1");
    assert_stale(&r, "stale-if-error");
    assert_eq!(origin.hits("/catalog/x"), 2, "the origin was asked first");
    let again = fetch(&gw, "/catalog/x", &[]).await;
    assert_eq!(again.text(), "/catalog/x v1");
    assert_stale(&again, "stale-if-error");

    // Without stale_if_error the failure is the answer.
    let r = fetch(&gw, "/nosie/x", &[]).await;
    assert_eq!(r.status, 503, "{}", shown(&r));

    // The origin is back: its answer replaces the stale copy.
    origin.fail_with(0);
    let r = fetch(&gw, "/catalog/x", &[]).await;
    assert_eq!(
        r.text(),
        format!("/catalog/x v{}", origin.hits("/catalog/x"))
    );
    assert_cs(&r, "tollgate; fwd=stale; fwd-status=200; stored");
    assert_hit(&fetch(&gw, "/catalog/x", &[]).await);
    assert_eq!(requests(&gw, "catalog", "stale").await, 2.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_copy_while_the_upstream_is_dead() {
    let origin = Origin::start(versioned_by_count).await;
    let gw = start(&stale_if_error_config(""), &origin).await;

    fetch(&gw, "/nosie/x", &[]).await;
    assert_cs(
        &fetch(&gw, "/catalog/x", &[]).await,
        "tollgate; fwd=miss; stored",
    );
    origin.kill().await;

    let (r, _) = until_not_fresh(&gw, "/catalog/x", &[], "/catalog/x v1").await;
    assert_eq!(r.status, 200, "{}", shown(&r));
    assert_eq!(r.text(), "/catalog/x v1");
    assert_stale(&r, "stale-if-error");
    for _ in 0..3 {
        let r = fetch(&gw, "/catalog/x", &[]).await;
        assert_eq!(r.text(), "/catalog/x v1");
        assert_stale(&r, "stale-if-error");
    }
    let r = fetch(&gw, "/nosie/x", &[]).await;
    r.assert_error(502, "upstream_unavailable");
    assert_eq!(requests(&gw, "catalog", "stale").await, 4.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn stale_if_error_covers_an_upstream_timeout() {
    let origin = Origin::start(|s| {
        let r = versioned_by_count(s);
        if s.n >= 2 { r.held() } else { r }
    })
    .await;
    let gw = start(&stale_if_error_config("timeout: 500ms"), &origin).await;

    assert_cs(
        &fetch(&gw, "/catalog/slow", &[]).await,
        "tollgate; fwd=miss; stored",
    );
    let (r, _) = until_not_fresh(&gw, "/catalog/slow", &[], "/catalog/slow v1").await;
    assert_eq!(r.status, 200, "{}", shown(&r));
    assert_eq!(r.text(), "/catalog/slow v1");
    assert_stale(&r, "stale-if-error");
    assert_eq!(
        origin.hits("/catalog/slow"),
        2,
        "the origin was asked first"
    );
    gw.shutdown().await;
    origin.release(10);
}

// ---------------------------------------------------------------------------
// Sizes and aborted responses
// ---------------------------------------------------------------------------

#[tokio::test]
async fn responses_over_max_object_bytes_stream_through_and_are_not_stored() {
    let large = pattern(256 * 1024);
    let big = large.clone();
    let origin = Origin::start(move |s| match s.path() {
        "/catalog/large" => Reply::ok(big.clone()).cc("max-age=60"),
        "/catalog/large-chunked" => Reply {
            payload: Payload::Chunked(big.clone(), 16 * 1024),
            ..Reply::ok(Bytes::new()).cc("max-age=60")
        },
        _ => Reply::ok(pattern(1024)).cc("max-age=60"),
    })
    .await;
    let yaml = config(
        &caches("8MiB", "64KiB", None),
        &[route("catalog", "/catalog", Some(""), "")],
    );
    let gw = start(&yaml, &origin).await;

    for _ in 0..2 {
        let r = fetch(&gw, "/catalog/large", &[]).await;
        assert_eq!(r.status, 200);
        assert!(
            r.body == large,
            "a body of {} bytes, not the 256 KiB sent",
            r.body.len()
        );
        assert_cs(&r, "tollgate; fwd=miss");
    }
    assert_eq!(origin.hits("/catalog/large"), 2);

    for _ in 0..2 {
        let r = fetch(&gw, "/catalog/large-chunked", &[]).await;
        assert_eq!(r.status, 200);
        assert!(
            r.body == large,
            "a body of {} bytes, not the 256 KiB sent",
            r.body.len()
        );
        let s = cache_status(&r);
        assert!(s.starts_with("tollgate; fwd=miss"), "{s}");
    }
    assert_eq!(origin.hits("/catalog/large-chunked"), 2);

    // Under the limit: stored.
    assert_cs(
        &fetch(&gw, "/catalog/small", &[]).await,
        "tollgate; fwd=miss; stored",
    );
    let hit = fetch(&gw, "/catalog/small", &[]).await;
    assert!(hit.body == pattern(1024));
    assert_hit(&hit);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_leaves_nothing_stored() {
    const LEN: usize = 4 << 20;
    let all = pattern(LEN);
    let origin = Origin::start(move |s| {
        let r = Reply::ok(all.clone()).cc("max-age=60");
        if s.n == 1 {
            // Slowly: 64 KiB at once, then 16 KiB every 10 ms.
            Reply {
                payload: Payload::Trickle {
                    all: all.clone(),
                    first: 64 * 1024,
                    chunk: 16 * 1024,
                    every: Duration::from_millis(10),
                },
                ..r
            }
            .h("content-length", LEN.to_string())
        } else {
            r
        }
    })
    .await;
    let gw = start(&catalog(""), &origin).await;

    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET /catalog/big HTTP/1.1\r\nhost: shop.example\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = wait_until("the head and 32 KiB of the body", async || {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("read in time")
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let end = got.windows(4).position(|w| w == b"\r\n\r\n")?;
        (got.len() >= end + 4 + 32 * 1024).then_some(end)
    })
    .await;
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no x-request-id in {head}"));
    s.set_zero_linger().expect("linger");
    drop(s);

    // The gateway is done with it (logged it, or dropped the origin's body).
    wait_until("the gateway to see the client leave", async || {
        origin.bodies_dropped() > 0
            || gw
                .log_lines()
                .iter()
                .any(|l| l["request_id"] == id.as_str())
    })
    .await;

    let r = fetch(&gw, "/catalog/big", &[("host", "shop.example")]).await;
    assert_cs(&r, "tollgate; fwd=miss; stored");
    assert!(
        r.body == pattern(LEN),
        "a body of {} bytes, not 4 MiB",
        r.body.len()
    );
    let hit = fetch(&gw, "/catalog/big", &[("host", "shop.example")]).await;
    assert_hit(&hit);
    assert!(
        hit.body == pattern(LEN),
        "a hit of {} bytes, not 4 MiB",
        hit.body.len()
    );
    assert_eq!(origin.hits("/catalog/big"), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_memory_tier_stays_within_max_bytes_and_counts_evictions() {
    let origin = Origin::start(|_| Reply::ok(pattern(32 * 1024)).cc("max-age=600")).await;
    let yaml = config(
        &caches("256KiB", "64KiB", None),
        &[route("catalog", "/catalog", Some(""), "")],
    );
    let gw = start(&yaml, &origin).await;
    for i in 0..24 {
        let r = fetch(&gw, &format!("/catalog/e/{i}"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 32 * 1024);
    }
    wait_until("evictions down to max_bytes", async || {
        // Traffic gives the memory tier a chance to do its housekeeping.
        fetch(&gw, "/catalog/e/0", &[]).await;
        let m = gw.metrics().await;
        let evictions =
            metric(&m, r#"tollgate_cache_evictions_total{cache="edge"}"#).unwrap_or(0.0);
        let bytes = metric(&m, r#"tollgate_cache_bytes{cache="edge"}"#).unwrap_or(-1.0);
        let entries = metric(&m, r#"tollgate_cache_entries{cache="edge"}"#).unwrap_or(-1.0);
        if evictions >= 1.0 && (0.0..=262_144.0).contains(&bytes) && (1.0..24.0).contains(&entries)
        {
            Ok(())
        } else {
            Err(format!(
                "{evictions} evictions, {bytes} bytes, {entries} entries"
            ))
        }
    })
    .await;
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Invalidation and purges
// ---------------------------------------------------------------------------

#[tokio::test]
async fn successful_unsafe_methods_invalidate_the_cached_url() {
    let origin = Origin::start(|s| match s.method.as_str() {
        "GET" | "HEAD" => Reply::ok(format!("{} {}", s.uri, s.n)).cc("max-age=60"),
        _ => Reply::status(
            s.header("x-want-status")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200),
        ),
    })
    .await;
    let gw = start(&catalog(""), &origin).await;
    let url = gw.url("/catalog/item/1?v=1");
    let unsafe_series = r#"tollgate_cache_purges_total{cache="edge",kind="unsafe_method"}"#;

    assert_cs(&get_with(&url, &[]).await, "tollgate; fwd=miss; stored");
    assert_cs(&head(&url, &[]).await, "tollgate; fwd=miss; stored");
    fetch(&gw, "/catalog/item/2", &[]).await;
    assert_hit(&get_with(&url, &[]).await);
    assert_hit(&head(&url, &[]).await);

    // Failed ones change nothing.
    for status in ["500", "409"] {
        let r = unsafe_request("POST", &url, &[("x-want-status", status)]).await;
        assert_eq!(r.status.to_string(), status);
        assert_cs(&r, "tollgate; fwd=bypass");
        assert_hit(&get_with(&url, &[]).await);
    }
    assert_eq!(gauge(&gw, unsafe_series).await, 0.0);

    let r = unsafe_request("POST", &url, &[("x-want-status", "201")]).await;
    assert_eq!(r.status, 201);
    assert_cs(&r, "tollgate; fwd=bypass");
    assert_cs(&get_with(&url, &[]).await, "tollgate; fwd=miss; stored");
    assert_cs(&head(&url, &[]).await, "tollgate; fwd=miss; stored");
    // Another URL is not touched.
    assert_hit(&fetch(&gw, "/catalog/item/2", &[]).await);

    for (method, status) in [("PUT", 200), ("PATCH", 204), ("DELETE", 204), ("POST", 303)] {
        assert_hit(&get_with(&url, &[]).await);
        let r = unsafe_request(method, &url, &[("x-want-status", &status.to_string())]).await;
        assert_eq!(r.status, status, "{method}");
        let after = get_with(&url, &[]).await;
        assert_cs(&after, "tollgate; fwd=miss; stored");
    }
    assert_hit(&fetch(&gw, "/catalog/item/2", &[]).await);
    assert_eq!(origin.hits("/catalog/item/2"), 1);
    let purges = gauge(&gw, unsafe_series).await;
    assert!(purges >= 5.0, "{purges} unsafe-method purges");
    assert!(requests(&gw, "catalog", "bypass").await >= 7.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn purges_by_url_prefix_and_tag_remove_what_they_name() {
    let origin = Origin::start(|s| {
        let r = Reply::ok(format!("{} {}", s.uri, s.n)).cc("max-age=60");
        match s.path() {
            "/catalog/a" => r.h("cache-tag", "product-7, product-8"),
            "/catalog/b" => r.h("surrogate-key", "product-7 sale"),
            _ => r,
        }
    })
    .await;
    let gw = start(&catalog(""), &origin).await;
    let host = [("host", "shop.example")];
    let state = async |path: &str| {
        let r = fetch(&gw, path, &host).await;
        assert_eq!(r.status, 200, "{path}");
        if is_fresh_hit(&r) {
            "hit"
        } else {
            assert_cs(&r, "tollgate; fwd=miss; stored");
            "miss"
        }
    };
    let all = [
        "/catalog/a",
        "/catalog/b",
        "/catalog/c?x=1",
        "/catalog/c?x=2",
        "/catalog/d",
        "/catalog/sub/1",
        "/catalog/sub/2",
    ];
    for p in all {
        assert_eq!(state(p).await, "miss", "{p}");
        assert_eq!(state(p).await, "hit", "{p}");
    }

    // By URL: one entry, with its query; with a host or for any host.
    assert_eq!(
        purged(&gw, r#"{"url": "http://shop.example/catalog/c?x=1"}"#).await,
        1
    );
    assert_eq!(state("/catalog/c?x=1").await, "miss");
    assert_eq!(state("/catalog/c?x=2").await, "hit");
    assert_eq!(purged(&gw, r#"{"url": "/catalog/c?x=2"}"#).await, 1);
    assert_eq!(state("/catalog/c?x=2").await, "miss");
    assert_eq!(
        purged(&gw, r#"{"url": "http://other.example/catalog/d"}"#).await,
        0
    );
    assert_eq!(state("/catalog/d").await, "hit");

    // By path prefix, optionally on one host.
    assert_eq!(
        purged(
            &gw,
            r#"{"prefix": "/catalog/sub/", "host": "other.example"}"#
        )
        .await,
        0
    );
    assert_eq!(purged(&gw, r#"{"prefix": "/catalog/sub/"}"#).await, 2);
    assert_eq!(state("/catalog/sub/1").await, "miss");
    assert_eq!(state("/catalog/sub/2").await, "miss");
    assert_eq!(state("/catalog/a").await, "hit");

    // By tag, from Cache-Tag or Surrogate-Key.
    assert_eq!(
        purged(&gw, r#"{"tag": "product-7", "cache": "edge"}"#).await,
        2
    );
    assert_eq!(state("/catalog/a").await, "miss");
    assert_eq!(state("/catalog/b").await, "miss");
    assert_eq!(state("/catalog/d").await, "hit");
    assert_eq!(purged(&gw, r#"{"tag": "sale"}"#).await, 1);
    assert_eq!(purged(&gw, r#"{"tag": "sale"}"#).await, 0);

    // Everything left on the host: a, c?x=1, c?x=2, d, sub/1, sub/2.
    assert_eq!(
        purged(&gw, r#"{"prefix": "/catalog/", "host": "shop.example"}"#).await,
        6
    );
    for p in all {
        assert_eq!(state(p).await, "miss", "{p} after purging everything");
    }

    let m = gw.metrics().await;
    for kind in ["url", "prefix", "tag"] {
        let n = metric(
            &m,
            &format!(r#"tollgate_cache_purges_total{{cache="edge",kind="{kind}"}}"#),
        )
        .unwrap_or(0.0);
        assert!(n >= 1.0, "purges of kind {kind}: {n}\n{m}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_purge_requests_are_400() {
    let origin = Origin::start(|_| Reply::ok("x").cc("max-age=60")).await;
    let gw = start(&catalog(""), &origin).await;
    for bad in [
        "not json",
        "{}",
        r#"{"url": "/catalog/a", "tag": "t"}"#,
        r#"{"url": "/catalog/a", "prefix": "/catalog/", "tag": "t"}"#,
        r#"{"tag": "t", "cache": "edg"}"#,
    ] {
        let r = purge(&gw, bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        let j = r.json();
        assert_eq!(j["error"], "bad_request", "{bad}: {j}");
        assert!(
            j["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{bad}: {j}"
        );
    }
    assert_eq!(purged(&gw, r#"{"tag": "t", "cache": "edge"}"#).await, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_with_unchanged_cache_settings_keeps_the_entries() {
    let origin = Origin::start(|s| Reply::ok(format!("{} {}", s.uri, s.n)).cc("max-age=60")).await;
    let vars = [("UP", origin.host_port())];
    let yaml = catalog("default_ttl: 60s");
    let gw = Gateway::start(&yaml, &vars).await;
    assert_cs(
        &fetch(&gw, "/catalog/r", &[]).await,
        "tollgate; fwd=miss; stored",
    );
    assert_hit(&fetch(&gw, "/catalog/r", &[]).await);

    // Another route added.
    let more = yaml.replace(
        "  - name: plain",
        "  - name: extra\n    match: { path: /extra }\n    respond: { status: 204 }\n  - name: plain",
    );
    gw.reload(&more, &vars).await;
    assert_eq!(fetch(&gw, "/extra", &[]).await.status, 204);
    let hit = fetch(&gw, "/catalog/r", &[]).await;
    assert_eq!(hit.text(), "/catalog/r 1");
    assert_hit(&hit);

    // The upstream's timeouts changed, the route's cache did not.
    let retimed = more.replace("request: 5s", "request: 6s");
    assert_ne!(retimed, more);
    gw.reload(&retimed, &vars).await;
    assert_hit(&fetch(&gw, "/catalog/r", &[]).await);
    assert_eq!(origin.hits("/catalog/r"), 1);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Metrics and the access log
// ---------------------------------------------------------------------------

#[tokio::test]
async fn metrics_and_the_access_log_report_each_result() {
    let origin = versioned(Arc::new(AtomicUsize::new(1)), "max-age=60").await;
    let gw = start(&catalog(""), &origin).await;

    let steps: Vec<(Resp, &str, Option<&str>)> = vec![
        (
            fetch(&gw, "/catalog/m", &[]).await,
            "tollgate; fwd=miss; stored",
            Some("miss"),
        ),
        (fetch(&gw, "/catalog/m", &[]).await, "", Some("hit")),
        (
            fetch(&gw, "/catalog/m", &[("cache-control", "no-cache")]).await,
            "tollgate; fwd=request; fwd-status=304",
            Some("revalidated"),
        ),
        (
            unsafe_request("POST", &gw.url("/catalog/other"), &[]).await,
            "tollgate; fwd=bypass",
            Some("bypass"),
        ),
        (
            fetch(&gw, "/catalog/m", &[("authorization", "Bearer x")]).await,
            "tollgate; fwd=bypass",
            Some("bypass"),
        ),
        (fetch(&gw, "/plain/m", &[]).await, "-", None),
    ];
    for (r, want, result) in &steps {
        assert_eq!(r.status, 200, "{}", shown(r));
        match *want {
            "" => {
                assert_hit(r);
            }
            "-" => assert!(r.header("cache-status").is_none()),
            w => assert_cs(r, w),
        }
        let id = r.header("x-request-id").expect("x-request-id");
        let line = gw.wait_log_for(id).await;
        match result {
            Some(res) => assert_eq!(line["cache"], *res, "{line}"),
            None => assert!(line["cache"].is_null(), "{line}"),
        }
    }

    let m = gw.metrics().await;
    for (result, n) in [
        ("miss", Some(1.0)),
        ("hit", Some(1.0)),
        ("revalidated", Some(1.0)),
        ("bypass", Some(2.0)),
    ] {
        assert_eq!(
            metric(&m, &requests_series("catalog", result)),
            n,
            "{result}\n{m}"
        );
    }
    for result in ["stale", "coalesced"] {
        assert_eq!(
            metric(&m, &requests_series("catalog", result)).unwrap_or(0.0),
            0.0,
            "{result}"
        );
    }
    assert!(
        metric(&m, &requests_series("plain", "miss")).is_none(),
        "a route without cache has no cache metrics"
    );
    // One entry: /catalog/m (the POST and the credentialed GET stored nothing).
    wait_until("the entry gauges", async || {
        let m = gw.metrics().await;
        let entries = metric(&m, r#"tollgate_cache_entries{cache="edge"}"#).unwrap_or(-1.0);
        let bytes = metric(&m, r#"tollgate_cache_bytes{cache="edge"}"#).unwrap_or(-1.0);
        if entries == 1.0 && bytes >= "body v1".len() as f64 {
            Ok(())
        } else {
            Err(format!("{entries} entries, {bytes} bytes"))
        }
    })
    .await;
    assert_eq!(
        metric(&m, r#"tollgate_cache_evictions_total{cache="edge"}"#).unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        metric(&m, r#"tollgate_cache_store_errors_total{cache="edge"}"#).unwrap_or(0.0),
        0.0
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Config errors
// ---------------------------------------------------------------------------

fn static_config(caches: &str, cache_lines: &str, route_extra: &str) -> String {
    format!(
        "{}{caches}upstreams:
  origin:
    targets: [{{ url: 'http://127.0.0.1:9' }}]
routes:
  - name: catalog
    match: {{ path_prefix: /catalog }}
    upstream: origin
{route_extra}    cache:
{cache_lines}",
        server_block("")
    )
}

/// Each line of the error names `t.yaml:<line>:<column>:`.
#[track_caller]
fn assert_positioned(errors: &str) {
    for line in errors.lines() {
        let rest = line
            .strip_prefix("t.yaml:")
            .unwrap_or_else(|| panic!("no file in {line:?}"));
        let mut parts = rest.splitn(3, ':');
        let (l, c) = (parts.next(), parts.next());
        assert!(
            l.is_some_and(|l| l.parse::<usize>().is_ok_and(|l| l > 0))
                && c.is_some_and(|c| c.parse::<usize>().is_ok()),
            "no line and column in {line:?}"
        );
    }
}

#[test]
fn bad_cache_config_is_refused_with_the_field_and_its_position() {
    let edge = "caches:\n  edge:\n    max_bytes: 1MiB\n    max_object_bytes: 64KiB\n";

    let e = assert_refused(
        &static_config(edge, "      use: edg\n", ""),
        "unknown cache `edg`",
    );
    assert!(e.contains("(did you mean `edge`?)"), "{e}");
    assert!(e.contains("routes[0].cache.use"), "{e}");
    assert_positioned(&e);

    let zero = "caches:\n  edge:\n    max_bytes: 0\n";
    let e = assert_refused(
        &static_config(zero, "      use: edge\n", ""),
        "caches.edge.max_bytes",
    );
    assert_positioned(&e);

    let e = assert_refused(
        &static_config(edge, "      use: edge\n      key: [hots, path]\n", ""),
        "routes[0].cache.key[0]",
    );
    assert!(!e.contains("routes[0].cache.key[1]"), "{e}");
    assert_positioned(&e);

    let e = assert_refused(
        &static_config(edge, "      use: edge\n", "    compress: [gzip]\n"),
        "routes[0].cache",
    );
    assert!(e.contains("compress"), "{e}");
    assert_positioned(&e);

    let respond = format!(
        "{edge}routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    respond: {{ status: 200 }}\n    cache: {{ use: edge }}\n"
    );
    let e = assert_refused(&respond, "routes[0].cache");
    assert!(e.contains("respond"), "{e}");
    assert_positioned(&e);

    // And the same config without the mistakes loads.
    tollgate::config::load_str(
        &static_config(
            edge,
            "      use: edge\n      default_ttl: 60s\n      key: [host, path, query, \"header:accept-language\"]\n      stale_while_revalidate: 30s\n      stale_if_error: 5m\n",
            "",
        ),
        "t.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------
// The shared tier in Redis
// ---------------------------------------------------------------------------

/// One RESP value, its items flattened (nil as ""), and where it ends.
fn resp_value(buf: &[u8], at: usize) -> Option<(Vec<String>, usize)> {
    let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[at + 1..end]).ok()?;
    let next = end + 2;
    match buf.get(at)? {
        b'+' | b'-' | b':' => Some((vec![line.to_string()], next)),
        b'$' => {
            let len: i64 = line.parse().ok()?;
            if len < 0 {
                return Some((vec![String::new()], next));
            }
            let stop = next + len as usize;
            let data = buf.get(next..stop)?;
            buf.get(stop..stop + 2)?;
            Some((vec![String::from_utf8_lossy(data).into_owned()], stop + 2))
        }
        b'*' => {
            let n: i64 = line.parse().ok()?;
            let mut out = Vec::new();
            let mut pos = next;
            for _ in 0..n.max(0) {
                let (items, p) = resp_value(buf, pos)?;
                out.extend(items);
                pos = p;
            }
            Some((out, pos))
        }
        _ => None,
    }
}

/// One command to the Redis on `port`, its reply flattened.
async fn redis_cmd(port: u16, args: &[&str]) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to redis");
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await.expect("write to redis");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some((v, _)) = resp_value(&buf, 0) {
                return v;
            }
            let n = s.read(&mut chunk).await.expect("read from redis");
            assert!(n > 0, "redis closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a redis reply in time")
}

async fn cache_keys(redis: &RedisServer) -> Vec<String> {
    redis_cmd(redis.port, &["KEYS", "tg:cache:*"]).await
}

/// Waits until `n` subscriptions to channels exist (or a pattern one): the
/// gateways listen for each other's purges.
async fn wait_subscribed(redis: &RedisServer, n: usize) {
    wait_until(format!("{n} gateways subscribed to purges"), async || {
        let mut total = 0;
        for (list, count) in [("CHANNELS", "NUMSUB"), ("SHARDCHANNELS", "SHARDNUMSUB")] {
            let channels = redis_cmd(redis.port, &["PUBSUB", list]).await;
            if channels.first().is_some_and(|c| c.starts_with("ERR")) {
                continue;
            }
            for ch in channels {
                let reply = redis_cmd(redis.port, &["PUBSUB", count, &ch]).await;
                total += reply
                    .get(1)
                    .and_then(|c| c.parse::<usize>().ok())
                    .unwrap_or(0);
            }
        }
        let patterns: usize = redis_cmd(redis.port, &["PUBSUB", "NUMPAT"]).await[0]
            .parse()
            .unwrap_or(0);
        if total >= n || patterns > 0 {
            Ok(())
        } else {
            Err(format!("{total} channel subscriptions"))
        }
    })
    .await;
}

/// `GET path` on `gw` until it is no longer a fresh hit; returns that answer.
async fn until_purged(gw: &Gateway, path: &str) -> Resp {
    wait_until(
        format!("the purge of {path} to reach this gateway"),
        async || {
            let r = fetch(gw, path, &[]).await;
            if is_fresh_hit(&r) {
                Err(cache_status(&r))
            } else {
                Ok(r)
            }
        },
    )
    .await
}

fn redis_config(port: u16) -> String {
    config(
        &caches("64MiB", "8MiB", Some(port)),
        &[route("catalog", "/catalog", Some(""), "")],
    )
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_entries_and_purges() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let origin = Origin::start(|s| {
        let r = Reply::ok(format!("{} {}", s.uri, s.n)).cc("max-age=60");
        if s.path() == "/catalog/tagged" {
            r.h("cache-tag", "shared-tag")
        } else {
            r
        }
    })
    .await;
    let yaml = redis_config(redis.port);
    let a = start(&yaml, &origin).await;
    let b = start(&yaml, &origin).await;
    wait_subscribed(&redis, 2).await;

    // Stored by A, a hit on B.
    assert_cs(
        &fetch(&a, "/catalog/shared", &[]).await,
        "tollgate; fwd=miss; stored",
    );
    wait_until("the entry in redis", async || {
        !cache_keys(&redis).await.is_empty()
    })
    .await;
    assert!(
        cache_keys(&redis)
            .await
            .iter()
            .all(|k| k.starts_with("tg:cache:")),
        "keys outside the prefix"
    );
    let on_b = fetch(&b, "/catalog/shared", &[]).await;
    assert_eq!(on_b.text(), "/catalog/shared 1");
    let s = cache_status(&on_b);
    assert!(
        s.starts_with("tollgate; hit; "),
        "B did not use A's entry: {s}"
    );
    let _ = age(&on_b);
    assert_hit(&fetch(&b, "/catalog/shared", &[]).await);
    assert_eq!(origin.hits("/catalog/shared"), 1);

    // Purged on A: gone from B and from redis.
    assert_eq!(purged(&a, r#"{"url": "/catalog/shared"}"#).await, 1);
    let r = until_purged(&b, "/catalog/shared").await;
    assert_eq!(r.text(), "/catalog/shared 2");
    assert_cs(&r, "tollgate; fwd=miss; stored");
    assert_eq!(origin.hits("/catalog/shared"), 2);

    // By tag, from B.
    assert_cs(
        &fetch(&a, "/catalog/tagged", &[]).await,
        "tollgate; fwd=miss; stored",
    );
    let tagged_in_redis = async || {
        cache_keys(&redis)
            .await
            .iter()
            .any(|k| k.contains("/catalog/tagged"))
    };
    wait_until("the tagged entry in redis", tagged_in_redis).await;
    let s = cache_status(&fetch(&b, "/catalog/tagged", &[]).await);
    assert!(s.starts_with("tollgate; hit; "), "{s}");
    assert_eq!(purged(&b, r#"{"tag": "shared-tag"}"#).await, 1);
    let r = until_purged(&a, "/catalog/tagged").await;
    assert_eq!(r.text(), "/catalog/tagged 2");
    assert_cs(&r, "tollgate; fwd=miss; stored");
    assert_eq!(origin.hits("/catalog/tagged"), 2);

    for gw in [&a, &b] {
        assert_eq!(
            gauge(gw, r#"tollgate_cache_store_errors_total{cache="edge"}"#).await,
            0.0
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn redis_killed_is_a_bypass_of_the_shared_tier_not_a_failed_request() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let origin = Origin::start(|s| Reply::ok(format!("{} {}", s.uri, s.n)).cc("max-age=60")).await;
    let gw = start(&redis_config(redis.port), &origin).await;
    assert_cs(
        &fetch(&gw, "/catalog/before", &[]).await,
        "tollgate; fwd=miss; stored",
    );
    wait_until("the entry in redis", async || {
        !cache_keys(&redis).await.is_empty()
    })
    .await;
    redis.stop();

    // The memory tier still answers.
    let hit = fetch(&gw, "/catalog/before", &[]).await;
    assert_eq!(hit.text(), "/catalog/before 1");
    assert_hit(&hit);

    let mut i = 0;
    wait_until("store errors counted", async || {
        i += 1;
        let path = format!("/catalog/after/{i}");
        let r = fetch(&gw, &path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", shown(&r));
        assert_eq!(r.text(), format!("{path} 1"));
        gauge(&gw, r#"tollgate_cache_store_errors_total{cache="edge"}"#).await >= 1.0
    })
    .await;
    // Stored in memory all the same.
    let hit = fetch(&gw, "/catalog/after/1", &[]).await;
    assert_eq!(hit.text(), "/catalog/after/1 1");
    assert_hit(&hit);
    assert_eq!(origin.hits("/catalog/after/1"), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_hung_redis_is_a_bypass_of_the_shared_tier_not_a_failed_request() {
    let silent = BlackHole::start().await;
    let origin = Origin::start(|s| Reply::ok(format!("{} {}", s.uri, s.n)).cc("max-age=60")).await;
    let gw = tokio::time::timeout(WAIT, start(&redis_config(silent.port), &origin))
        .await
        .expect("the gateway starts while redis does not answer");

    let mut i = 0;
    wait_until("store errors counted", async || {
        i += 1;
        let path = format!("/catalog/h/{i}");
        let r = fetch(&gw, &path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", shown(&r));
        assert_eq!(r.text(), format!("{path} 1"));
        gauge(&gw, r#"tollgate_cache_store_errors_total{cache="edge"}"#).await >= 1.0
    })
    .await;
    let hit = fetch(&gw, "/catalog/h/1", &[]).await;
    assert_eq!(hit.text(), "/catalog/h/1 1");
    assert_hit(&hit);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// /explain
// ---------------------------------------------------------------------------

#[tokio::test]
async fn explain_says_what_the_cache_would_do_with_a_request_now() {
    let origin = Origin::start(|s| Reply::ok(format!("{} {}", s.uri, s.n)).cc("max-age=60")).await;
    let gw = start(&catalog(""), &origin).await;
    let explain = async |query: &str| {
        let r = get(&gw.admin_url(&format!("/explain?{query}")))
            .await
            .expect("GET /explain");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["route"]["cache"].clone()
    };
    let probe = "method=GET&host=shop.example&path=%2Fcatalog%2Fe%3Fx%3D1";
    let c = explain(probe).await;
    assert_eq!(c["use"], "edge");
    assert_eq!(c["key"], serde_json::json!(["host", "path", "query"]));
    assert_eq!(c["answer"], "miss", "{c}");
    assert!(c["ttl"].is_null(), "{c}");

    fetch(&gw, "/catalog/e?x=1", &[("host", "shop.example")]).await;
    let c = explain(probe).await;
    assert_eq!(c["answer"], "hit", "{c}");
    assert!(
        c["ttl"].as_i64().is_some_and(|t| (55..=60).contains(&t)),
        "{c}"
    );
    // Another query, another host, credentials, an unsafe method.
    for other in [
        "method=GET&host=shop.example&path=%2Fcatalog%2Fe%3Fx%3D2",
        "method=GET&host=other.example&path=%2Fcatalog%2Fe%3Fx%3D1",
        "method=GET&host=shop.example&path=%2Fcatalog%2Fe%3Fx%3D1&header.authorization=Bearer%20a",
    ] {
        assert_eq!(explain(other).await["answer"], "miss", "{other}");
    }
    let post = "method=POST&host=shop.example&path=%2Fcatalog%2Fe%3Fx%3D1";
    assert_eq!(explain(post).await["answer"], "bypass");
    let plain = get(&gw.admin_url("/explain?method=GET&path=/plain/e"))
        .await
        .expect("GET /explain");
    assert!(plain.json()["route"]["cache"].is_null());
    gw.shutdown().await;
}
