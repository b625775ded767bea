//! Traffic mirroring (issue 21): a copy of each sampled request goes to the
//! route's `mirror` upstream with the same method, upstream path and query,
//! headers (request id and the route's header edits included) and body, and
//! `Host` = the client's host with `-shadow` before any port. The copy never
//! changes or delays the client's answer, is never retried, and is counted in
//! `tollgate_mirror_requests_total{route,result}`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::support::*;

/// Every `result` label the mirror metric may carry.
const RESULTS: [&str; 6] = ["ok", "5xx", "error", "timeout", "too_large", "overloaded"];

/// One request as the shadow received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Path and query.
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A shadow upstream that records every request (head and whole body) and
/// answers 200, optionally only once the test opens its gate.
struct Shadow {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Permits enough for every request a test sends.
const OPEN: usize = 1_000_000;

impl Shadow {
    /// A shadow that answers at once.
    async fn start() -> Shadow {
        Shadow::with_gate(OPEN).await
    }

    /// A shadow that holds every request (after recording it) until `release`.
    async fn holding() -> Shadow {
        Shadow::with_gate(0).await
    }

    async fn with_gate(permits: usize) -> Shadow {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind shadow");
        let addr = listener.local_addr().expect("shadow addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(permits));
        let (s, g) = (seen.clone(), gate.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, g) = (s.clone(), g.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (s, g) = (s.clone(), g.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            s.lock().expect("seen lock").push(Seen {
                                method: parts.method.to_string(),
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/", |p| p.as_str())
                                    .to_string(),
                                headers: parts.headers,
                                body,
                            });
                            let _permit = g.acquire().await.expect("gate open");
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"from the shadow",
                            ))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Shadow {
            addr,
            seen,
            gate,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("seen lock").len()
    }

    /// Lets every held request (and every later one) be answered.
    fn release(&self) {
        self.gate.add_permits(OPEN);
    }
}

/// A primary upstream, a shadow upstream (with `shadow_extra` under it, e.g.
/// `timeouts: { request: 300ms }`) and the route `orders` mirroring to it with
/// `mirror`. The route strips `/api` and edits two request headers.
fn config(mirror: &str, shadow_extra: &str) -> String {
    let mut s = server_block("")
        + "upstreams:
  primary:
    targets: [{ url: 'http://${UP}' }]
  shadow:
    targets: [{ url: 'http://${SHADOW}' }]
";
    for line in shadow_extra.lines() {
        s.push_str("    ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&format!(
        "routes:
  - name: orders
    match: {{ path_prefix: /api }}
    upstream: primary
    rewrite: {{ strip_prefix: /api }}
    request_headers:
      set: {{ X-Gateway: tollgate }}
      remove: [X-Internal-Debug]
    mirror: {mirror}
  - name: direct
    match: {{ path_prefix: /direct }}
    upstream: shadow
"
    ));
    s
}

async fn start(mirror: &str, shadow_extra: &str, up: &Upstream, shadow: SocketAddr) -> Gateway {
    Gateway::start(
        &config(mirror, shadow_extra),
        &[("UP", up.host_port()), ("SHADOW", shadow.to_string())],
    )
    .await
}

fn mirror_count(m: &str, result: &str) -> f64 {
    metric(
        m,
        &format!(r#"tollgate_mirror_requests_total{{route="orders",result="{result}"}}"#),
    )
    .unwrap_or(0.0)
}

/// Polls `/metrics` until `tollgate_mirror_requests_total` of the route
/// `orders` holds exactly `want` (results not listed: zero or absent).
async fn wait_mirror_counts(gw: &Gateway, want: &[(&str, f64)]) {
    wait_until(format!("mirror counts {want:?}"), async || {
        let m = gw.metrics().await;
        let got: Vec<(&str, f64)> = RESULTS.iter().map(|r| (*r, mirror_count(&m, r))).collect();
        let expected: Vec<(&str, f64)> = RESULTS
            .iter()
            .map(|r| {
                let n = want.iter().find(|(w, _)| w == r).map_or(0.0, |(_, n)| *n);
                (*r, n)
            })
            .collect();
        if got == expected {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

/// The echo upstream's `headers` object as name -> values.
fn echoed_headers(j: &serde_json::Value) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (k, v) in j["headers"].as_object().expect("headers object") {
        let values = match v {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect(),
            other => vec![other.as_str().unwrap_or_default().to_string()],
        };
        out.insert(k.clone(), values);
    }
    out
}

fn header_map(h: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h {
        out.entry(k.to_string())
            .or_default()
            .push(v.to_str().unwrap_or("<binary>").to_string());
    }
    out
}

/// Asserts a client answer is the primary's fixed `201 primary-body`.
fn assert_primary(r: &Resp) {
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.text(), "primary-body");
    assert_eq!(r.header("x-upstream"), Some("primary"));
}

/// A body with no Content-Length: the client sends it chunked.
fn chunked(data: &'static [u8]) -> impl http_body::Body<Data = Bytes, Error = Infallible> + Send {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = data
        .chunks(4)
        .map(|c| Ok(Frame::data(Bytes::from_static(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

// ---------------------------------------------------------------------------
// 1. The copy
// ---------------------------------------------------------------------------

#[tokio::test]
async fn each_request_is_copied_once_with_method_path_query_body_and_headers() {
    let up = Upstream::echo("primary").await;
    let shadow = Shadow::start().await;
    let gw = start("{ upstream: shadow }", "", &up, shadow.addr).await;

    let r = send(
        Request::post(gw.url("/api/orders/7?x=1&y=%20z"))
            .header("host", "api.test:8080")
            .header("content-type", "application/json")
            .header("x-custom", "abc")
            .header("x-gateway", "from-the-client")
            .header("x-internal-debug", "secret")
            .body(body(&b"{\"hello\":\"world\"}"[..]))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let primary = r.json();
    assert_eq!(
        primary["server"], "primary",
        "the client gets the primary's answer"
    );
    assert_eq!(primary["path"], "/orders/7?x=1&y=%20z");
    let request_id = r.header("x-request-id").expect("x-request-id").to_string();

    let get = get_with(&gw.url("/api/list?page=2"), &[("host", "api.test")]).await;
    assert_eq!(get.status, 200);
    let get_id = get
        .header("x-request-id")
        .expect("x-request-id")
        .to_string();

    wait_mirror_counts(&gw, &[("ok", 2.0)]).await;
    let seen = shadow.seen();
    assert_eq!(seen.len(), 2, "exactly one copy per request: {seen:#?}");
    let post = seen
        .iter()
        .find(|s| s.method == "POST")
        .unwrap_or_else(|| panic!("the POST copy: {seen:#?}"));
    assert_eq!(
        post.path, "/orders/7?x=1&y=%20z",
        "path after the rewrite, query kept"
    );
    assert_eq!(&post.body[..], b"{\"hello\":\"world\"}");
    assert_eq!(post.header("host"), Some("api.test-shadow:8080"));
    assert_eq!(post.header("x-request-id"), Some(request_id.as_str()));
    assert_eq!(
        post.header("x-gateway"),
        Some("tollgate"),
        "request_headers.set"
    );
    assert_eq!(
        post.header("x-internal-debug"),
        None,
        "request_headers.remove"
    );
    assert_eq!(post.header("x-custom"), Some("abc"));
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert_eq!(post.header("content-length"), Some("17"));

    // The copy carries the upstream request's headers: the primary's, but
    // for Host (and the trace context, whose span may be the copy's own).
    let skip = ["host", "traceparent", "tracestate"];
    let mut want = echoed_headers(&primary);
    let mut got = header_map(&post.headers);
    for h in skip {
        want.remove(h);
        got.remove(h);
    }
    assert_eq!(got, want, "the shadow's headers against the primary's");

    let copy = seen
        .iter()
        .find(|s| s.method == "GET")
        .unwrap_or_else(|| panic!("the GET copy: {seen:#?}"));
    assert_eq!(copy.path, "/list?page=2");
    assert!(copy.body.is_empty());
    assert_eq!(copy.header("host"), Some("api.test-shadow"));
    assert_eq!(copy.header("x-request-id"), Some(get_id.as_str()));
    assert_eq!(copy.header("x-gateway"), Some("tollgate"));
    assert_eq!(up.hits(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn every_method_is_copied_once() {
    let up = Upstream::echo("primary").await;
    let shadow = Shadow::start().await;
    let gw = start("{ upstream: shadow, percent: 100 }", "", &up, shadow.addr).await;
    let methods = ["GET", "PUT", "DELETE", "PATCH", "POST", "OPTIONS"];
    for (i, method) in methods.iter().enumerate() {
        let r = send(
            Request::builder()
                .method(*method)
                .uri(gw.url(&format!("/api/m/{i}")))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{method}: {}", r.text());
    }
    wait_mirror_counts(&gw, &[("ok", methods.len() as f64)]).await;
    let mut got: Vec<(String, String)> = shadow
        .seen()
        .into_iter()
        .map(|s| (s.path, s.method))
        .collect();
    got.sort();
    let want: Vec<(String, String)> = methods
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("/m/{i}"), m.to_string()))
        .collect();
    assert_eq!(got, want);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. The shadow never changes or delays the client's answer
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_shadow_answering_500_changes_nothing_and_is_counted_5xx() {
    let up = Upstream::start("primary", Behavior::Status(201, "primary-body")).await;
    let shadow = Upstream::start("shadow", Behavior::Status(500, "shadow broke")).await;
    let gw = start("{ upstream: shadow }", "", &up, shadow.addr).await;
    for _ in 0..3 {
        assert_primary(&get(&gw.url("/api/x")).await.unwrap());
    }
    wait_mirror_counts(&gw, &[("5xx", 3.0)]).await;
    assert_eq!(shadow.hits(), 3);
    assert_eq!(up.hits(), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_dead_shadow_changes_nothing_and_is_counted_error() {
    let up = Upstream::start("primary", Behavior::Status(201, "primary-body")).await;
    let dead = dead_addr().await;
    let gw = start("{ upstream: shadow }", "", &up, dead).await;
    for _ in 0..3 {
        let post = Request::post(gw.url("/api/x"))
            .body(body("payload"))
            .unwrap();
        assert_primary(&send(post).await.unwrap());
    }
    wait_mirror_counts(&gw, &[("error", 3.0)]).await;
    assert_eq!(up.hits(), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_shadow_slower_than_its_timeout_never_delays_the_client() {
    let up = Upstream::start("primary", Behavior::Status(201, "primary-body")).await;
    let shadow = Upstream::start("shadow", Behavior::Slow(Duration::from_secs(5))).await;
    let gw = start(
        "{ upstream: shadow }",
        "timeouts: { request: 300ms }",
        &up,
        shadow.addr,
    )
    .await;
    let mut conn = Conn::open(gw.addr).await;
    let started = Instant::now();
    let mut took = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let r = conn.get("/api/x").await.unwrap();
        took.push(t.elapsed());
        assert_primary(&r);
    }
    let total = started.elapsed();
    assert!(
        took.iter().all(|d| *d < Duration::from_secs(1)),
        "every request fast: {took:?}"
    );
    // Were the client waiting for the copies, 50 of them would take 15 s at
    // the shadow's 300 ms timeout, 250 s at its 5 s.
    assert!(
        total < Duration::from_millis(2500),
        "50 requests took {total:?}: {took:?}"
    );
    wait_mirror_counts(&gw, &[("timeout", 50.0)]).await;
    assert_eq!(shadow.hits(), 50, "each copy reached the shadow once");
    assert_eq!(up.hits(), 50);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Bodies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bodies_up_to_max_body_are_mirrored_larger_and_chunked_ones_are_not() {
    let up = Upstream::echo("primary").await;
    let shadow = Shadow::start().await;
    let gw = start("{ upstream: shadow, max_body: 1KiB }", "", &up, shadow.addr).await;
    let bytes = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 251) as u8).collect() };
    let post = async |path: &str, b: Vec<u8>| {
        let r = send(Request::post(gw.url(path)).body(body(b)).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };

    let j = post("/api/small", bytes(500)).await;
    assert_eq!(j["body_bytes"], 500);
    let j = post("/api/exact", bytes(1024)).await;
    assert_eq!(j["body_bytes"], 1024);
    let j = post("/api/large", bytes(2048)).await;
    assert_eq!(
        j["body_bytes"], 2048,
        "the primary still gets the whole body"
    );
    assert_eq!(j["body_complete"], true);

    let r = send(
        Request::post(gw.url("/api/chunked"))
            .body(chunked(b"ten bytes!"))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["body_bytes"], 10, "the primary gets the chunked body");

    let r = get(&gw.url("/api/empty")).await.unwrap();
    assert_eq!(r.status, 200);

    wait_mirror_counts(&gw, &[("ok", 3.0), ("too_large", 2.0)]).await;
    let seen = shadow.seen();
    let mut paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/empty", "/exact", "/small"], "{seen:#?}");
    let by_path = |p: &str| seen.iter().find(|s| s.path == p).unwrap();
    assert_eq!(
        by_path("/small").body.to_vec(),
        bytes(500),
        "the same bytes"
    );
    assert_eq!(by_path("/small").header("content-length"), Some("500"));
    assert_eq!(by_path("/exact").body.to_vec(), bytes(1024));
    assert!(by_path("/empty").body.is_empty());
    assert_eq!(up.hits(), 5);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. max_in_flight
// ---------------------------------------------------------------------------

#[tokio::test]
async fn copies_beyond_max_in_flight_are_dropped_and_counted_overloaded() {
    let up = Upstream::echo("primary").await;
    let shadow = Shadow::holding().await;
    let gw = start(
        "{ upstream: shadow, max_in_flight: 2 }",
        "",
        &up,
        shadow.addr,
    )
    .await;
    let mut conn = Conn::open(gw.addr).await;
    let quick = Duration::from_secs(1);

    for i in 0..2 {
        let t = Instant::now();
        assert_eq!(conn.get(&format!("/api/{i}")).await.unwrap().status, 200);
        assert!(t.elapsed() < quick, "request {i} took {:?}", t.elapsed());
    }
    // Both copies are now held at the shadow: the in-flight limit is reached.
    wait_until("two copies held at the shadow", async || {
        let n = shadow.count();
        if n == 2 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    for i in 2..10 {
        let t = Instant::now();
        assert_eq!(conn.get(&format!("/api/{i}")).await.unwrap().status, 200);
        assert!(t.elapsed() < quick, "request {i} took {:?}", t.elapsed());
    }
    wait_mirror_counts(&gw, &[("overloaded", 8.0)]).await;
    assert_eq!(shadow.count(), 2, "only two copies reached the shadow");
    assert_eq!(up.hits(), 10, "every client request reached the primary");

    // Released, the two finish; nothing dropped is sent late, and the next
    // request is mirrored again.
    shadow.release();
    wait_mirror_counts(&gw, &[("ok", 2.0), ("overloaded", 8.0)]).await;
    assert_eq!(shadow.count(), 2);
    assert_eq!(conn.get("/api/after").await.unwrap().status, 200);
    wait_mirror_counts(&gw, &[("ok", 3.0), ("overloaded", 8.0)]).await;
    let mut paths: Vec<String> = shadow.seen().into_iter().map(|s| s.path).collect();
    paths.sort();
    assert_eq!(paths, ["/0", "/1", "/after"]);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. Sampling
// ---------------------------------------------------------------------------

#[tokio::test]
async fn percent_10_mirrors_about_a_tenth_of_the_requests() {
    const N: usize = 2000;
    const CONNS: usize = 8;
    let up = Upstream::echo("primary").await;
    let shadow = Upstream::echo("shadow").await;
    let gw = start("{ upstream: shadow, percent: 10 }", "", &up, shadow.addr).await;
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            for i in 0..N / CONNS {
                let r = conn.get(&format!("/api/{c}/{i}")).await.unwrap();
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(up.hits(), N);
    // Settled when every copy that reached the shadow has been counted.
    let mirrored = wait_until("every copy counted", async || {
        let m = gw.metrics().await;
        let counted: f64 = RESULTS.iter().map(|r| mirror_count(&m, r)).sum();
        let ok = mirror_count(&m, "ok");
        let hits = shadow.hits();
        if counted == hits as f64 && ok == counted && hits > 0 {
            Ok(hits)
        } else {
            Err(format!("counted {counted} (ok {ok}), shadow hits {hits}"))
        }
    })
    .await;
    let share = mirrored as f64 / N as f64;
    assert!(
        (0.06..=0.14).contains(&share),
        "{mirrored} of {N} mirrored ({:.1}%)",
        share * 100.0
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. Never retried
// ---------------------------------------------------------------------------

#[tokio::test]
async fn copies_are_never_retried() {
    let up = Upstream::echo("primary").await;
    let shadow = Upstream::start("shadow", Behavior::Status(503, "busy")).await;
    let gw = start(
        "{ upstream: shadow }",
        "retries: { attempts: 2, on: [503], methods: [GET, POST], backoff: 1ms }",
        &up,
        shadow.addr,
    )
    .await;
    // The retry policy is live: a request routed to the shadow upstream
    // itself is tried three times.
    let r = get(&gw.url("/direct")).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(shadow.hits(), 3, "the direct request was retried twice");

    for i in 0..5 {
        let r = get(&gw.url(&format!("/api/{i}"))).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let post = Request::post(gw.url("/api/p")).body(body("x")).unwrap();
    assert_eq!(send(post).await.unwrap().status, 200);
    wait_mirror_counts(&gw, &[("5xx", 6.0)]).await;
    assert_eq!(shadow.hits(), 3 + 6, "one copy per request, none retried");
    assert_eq!(up.hits(), 6);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// The shadow's Host
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_h2_clients_authority_becomes_the_shadow_host() {
    let up = Upstream::echo("primary").await;
    let shadow = Shadow::start().await;
    let gw = start("{ upstream: shadow }", "", &up, shadow.addr).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let req = Request::get("http://api.test:8080/api/h2?q=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("h2 response in time")
        .expect("h2 response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    wait_mirror_counts(&gw, &[("ok", 1.0)]).await;
    let seen = shadow.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].path, "/h2?q=1");
    assert_eq!(seen[0].header("host"), Some("api.test-shadow:8080"));
    gw.shutdown().await;
}

#[tokio::test]
async fn the_shadow_host_is_the_upstream_requests_so_a_rewritten_host_carries_the_suffix() {
    let up = Upstream::echo("primary").await;
    let shadow = Shadow::start().await;
    let yaml = config("{ upstream: shadow }", "")
        + "  - name: hostrw
    match: { path_prefix: /hostrw }
    upstream: primary
    rewrite: { host: users.internal }
    mirror: { upstream: shadow }
";
    let gw = Gateway::start(
        &yaml,
        &[("UP", up.host_port()), ("SHADOW", shadow.addr.to_string())],
    )
    .await;
    let r = get_with(&gw.url("/hostrw/x"), &[("host", "api.test:8080")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["headers"]["host"],
        "users.internal",
        "the primary's Host"
    );
    wait_until("the copy at the shadow", async || shadow.count() == 1).await;
    assert_eq!(
        shadow.seen()[0].header("host"),
        Some("users.internal-shadow"),
        "Host = the upstream request's Host (after rewrite.host) with -shadow"
    );
    gw.shutdown().await;
}
