//! Idempotency keys (issue 20) through the real gateway: the first answer to a
//! keyed unsafe request is stored and replayed byte for byte to its retries
//! (`Idempotent-Replayed: true`) without calling the upstream again; a retry
//! while the first is in flight gets 409, one with another method, path, query
//! or body 422; keys are scoped per route and caller; 5xx, gateway errors and
//! oversized answers are not stored; the memory and the Redis store (shared by
//! two instances, killed and restarted mid-test), expiry, the admin endpoints,
//! the metric and the config errors.
//!
//! The upstream here is scripted: every request gets a number, and the test
//! queues what the next requests are answered (201 with that number in the
//! body by default, a status, a large body, or held until the test releases
//! it). The Redis tests start their own `redis-server` on a free loopback port
//! and are skipped, with a printed reason, when it is absent.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::support::auth::{Algorithm, SECRET, mint, now};
use crate::support::redis::{BlackHole, RedisServer, redis_block};
use crate::support::*;

// ---------------------------------------------------------------------------
// A scripted upstream
// ---------------------------------------------------------------------------

/// What the upstream answers one request (see `Scripted::plan`).
#[derive(Clone, Debug)]
enum Answer {
    /// 201, JSON `{"n", "method", "path", "body_bytes"}`, headers
    /// `x-custom: n-<n>` and `x-multi: a`, `x-multi: b`.
    Created,
    /// This status with the same headers and a JSON body `{"n", "status"}`.
    Status(u16),
    /// Waits until the test calls `release`, then answers as `Created`.
    Held,
    /// 201, `text/plain`, this many bytes with a Content-Length, in 16 KiB frames.
    Big(usize),
    /// Like `Big`, without a Content-Length (chunked).
    BigChunked(usize),
    /// 201, `text/plain`, no Content-Length: 16 KiB at once, then (after
    /// `release`) the rest, in 64 KiB frames.
    HeldMidBody(usize),
    /// This status with the usual headers and an empty body.
    Empty(u16),
}

struct UpState {
    hits: AtomicUsize,
    plan: Mutex<VecDeque<Answer>>,
    gate: Semaphore,
    paths: Mutex<Vec<String>>,
}

/// A loopback upstream that numbers the requests it receives (heads read) and
/// answers them as planned.
struct Scripted {
    addr: SocketAddr,
    state: Arc<UpState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        // Held requests finish (their gateway is gone by now or soon).
        self.state.gate.close();
        self.task.abort();
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(UpState {
            hits: AtomicUsize::new(0),
            plan: Mutex::new(VecDeque::new()),
            gate: Semaphore::new(0),
            paths: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(serve(st, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Scripted { addr, state, task }
    }

    fn host_port(&self) -> String {
        self.addr.to_string()
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn paths(&self) -> Vec<String> {
        self.state.paths.lock().expect("paths").clone()
    }

    /// The next requests (in the order they arrive) get these answers; after
    /// them, `Created`.
    fn plan(&self, answers: &[Answer]) {
        self.state
            .plan
            .lock()
            .expect("plan")
            .extend(answers.iter().cloned());
    }

    /// Lets one held request (or held body) go on.
    fn release(&self) {
        self.state.gate.add_permits(1);
    }

    async fn wait_hits(&self, n: usize) {
        wait_until(format!("{n} requests at the upstream"), async || {
            let h = self.hits();
            if h == n { Ok(()) } else { Err(format!("{h}")) }
        })
        .await;
    }
}

fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

fn json_response(status: u16, n: usize, j: &Value) -> Response<UpBody> {
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(serde_json::to_vec(j).expect("json"))).boxed(),
    );
    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
    decorate(&mut r, n, "application/json");
    r
}

fn decorate(r: &mut Response<UpBody>, n: usize, content_type: &'static str) {
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert(
        "x-custom",
        HeaderValue::from_str(&format!("n-{n}")).expect("x-custom"),
    );
    h.append("x-multi", HeaderValue::from_static("a"));
    h.append("x-multi", HeaderValue::from_static("b"));
}

async fn serve(st: Arc<UpState>, req: Request<Incoming>) -> Response<UpBody> {
    let n = st.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let answer = st
        .plan
        .lock()
        .expect("plan")
        .pop_front()
        .unwrap_or(Answer::Created);
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    st.paths.lock().expect("paths").push(path.clone());
    let body_bytes = match body.collect().await {
        Ok(c) => c.to_bytes().len(),
        Err(_) => return json_response(400, n, &json!({"n": n, "error": "request body"})),
    };
    let created = |n: usize| {
        json_response(
            201,
            n,
            &json!({"n": n, "method": parts.method.as_str(), "path": path, "body_bytes": body_bytes}),
        )
    };
    match answer {
        Answer::Created => created(n),
        Answer::Status(code) => json_response(code, n, &json!({"n": n, "status": code})),
        Answer::Held => {
            let _ = st.gate.acquire().await.map(|p| p.forget());
            created(n)
        }
        Answer::Big(len) => big(n, len, true),
        Answer::Empty(code) => {
            let mut r = Response::new(http_body_util::Full::new(Bytes::new()).boxed());
            *r.status_mut() = http::StatusCode::from_u16(code).expect("status");
            decorate(&mut r, n, "text/plain");
            r
        }
        Answer::BigChunked(len) => big(n, len, false),
        Answer::HeldMidBody(len) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let data = pattern(len);
            let first = data.slice(..16 * 1024);
            let _ = tx.send(Frame::data(first));
            let st = st.clone();
            tokio::spawn(async move {
                let _ = st.gate.acquire().await.map(|p| p.forget());
                for c in data[16 * 1024..].chunks(64 * 1024) {
                    if tx.send(Frame::data(Bytes::copy_from_slice(c))).is_err() {
                        return;
                    }
                }
            });
            let mut r = Response::new(ChannelBody(rx).boxed());
            *r.status_mut() = http::StatusCode::CREATED;
            decorate(&mut r, n, "text/plain");
            r
        }
    }
}

fn big(n: usize, len: usize, with_length: bool) -> Response<UpBody> {
    let body = Chunks {
        data: pattern(len),
        chunk: 16 * 1024,
        exact: with_length,
    };
    let mut r = Response::new(body.boxed());
    *r.status_mut() = http::StatusCode::CREATED;
    decorate(&mut r, n, "text/plain");
    if with_length {
        r.headers_mut().insert(
            "content-length",
            HeaderValue::from_str(&len.to_string()).expect("len"),
        );
    }
    r
}

/// A body served in frames of `chunk` bytes; with `exact` its size is known
/// (a Content-Length), else not (chunked).
struct Chunks {
    data: Bytes,
    chunk: usize,
    exact: bool,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.chunk.min(self.data.len());
        let d = self.data.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.exact && self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.data.len() as u64)
        } else {
            SizeHint::default()
        }
    }
}

/// A body fed by a channel, ending when the sender is dropped.
struct ChannelBody(mpsc::UnboundedReceiver<Frame<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// An address where nothing listens, below the ephemeral port range (so no
/// other test's `127.0.0.1:0` socket takes it while this test runs) and
/// above the range the Redis tests pick their ports from.
fn dead_port() -> String {
    let port = (0..200)
        .map(|_| fastrand::u16(32_100..32_760))
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port");
    format!("127.0.0.1:{port}")
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// One request to send, built up by the test.
struct Call {
    method: http::Method,
    url: String,
    headers: Vec<(String, HeaderValue)>,
    body: Bytes,
    chunked: bool,
}

fn call(method: &str, url: impl Into<String>) -> Call {
    Call {
        method: method.parse().expect("method"),
        url: url.into(),
        headers: Vec::new(),
        body: Bytes::new(),
        chunked: false,
    }
}

fn post(url: impl Into<String>) -> Call {
    call("POST", url)
}

impl Call {
    fn key(self, k: &str) -> Call {
        self.header_bytes("idempotency-key", k.as_bytes())
    }

    fn header(self, k: &str, v: &str) -> Call {
        self.header_bytes(k, v.as_bytes())
    }

    fn header_bytes(mut self, k: &str, v: &[u8]) -> Call {
        let v = HeaderValue::from_bytes(v)
            .unwrap_or_else(|e| panic!("the client cannot send {v:?}: {e}"));
        self.headers.push((k.to_string(), v));
        self
    }

    fn body(mut self, b: impl Into<Bytes>) -> Call {
        self.body = b.into();
        self
    }

    /// Sends the body in three frames without a Content-Length.
    fn chunked(mut self) -> Call {
        self.chunked = true;
        self
    }

    async fn send(self) -> Resp {
        let what = format!("{} {}", self.method, self.url);
        let mut b = Request::builder().method(self.method).uri(&self.url);
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        let body: UpBody = if self.chunked {
            let (tx, rx) = mpsc::unbounded_channel();
            let third = self.body.len().div_ceil(3).max(1);
            for c in self.body.chunks(third) {
                let _ = tx.send(Frame::data(Bytes::copy_from_slice(c)));
            }
            ChannelBody(rx).boxed()
        } else {
            http_body_util::Full::new(self.body).boxed()
        };
        send(b.body(body).expect("request"))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// A retry sent the moment the first answer arrived. With Redis the answer
/// is written while its last bytes reach the client, so for about one Redis
/// round trip the key may still be in flight: such a retry gets 409 with
/// `Retry-After: 1`, never a second run upstream. Retries until the answer
/// is there; returns it and how many 409s came first.
async fn retry_at_once(make: impl Fn() -> Call) -> (Resp, u32) {
    for conflicts in 0..200 {
        let r = make().send().await;
        if r.status != 409 {
            return (r, conflicts);
        }
        r.assert_error(409, "idempotency_key_in_use");
        assert_eq!(r.header("retry-after"), Some("1"));
        tokio::task::yield_now().await;
    }
    panic!("the key stayed in flight through 200 retries");
}

fn replayed(r: &Resp) -> bool {
    r.header("idempotent-replayed").is_some()
}

fn all(r: &Resp, name: &str) -> Vec<String> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// The upstream's own `Created` answer to its request number `n`, not a replay.
#[track_caller]
fn assert_fresh(r: &Resp, n: u64) -> Value {
    assert_eq!(r.status, 201, "status; body: {}", r.text());
    assert_eq!(
        r.header("idempotent-replayed"),
        None,
        "a first answer is not marked replayed"
    );
    let j = r.json();
    assert_eq!(j["n"], n, "the upstream's request number in {j}");
    assert_eq!(r.header("x-custom"), Some(format!("n-{n}").as_str()));
    j
}

/// `again` is `first` replayed: same status, body and upstream headers, marked.
#[track_caller]
fn assert_replay_of(again: &Resp, first: &Resp) {
    assert_eq!(
        again.header("idempotent-replayed"),
        Some("true"),
        "a replay is marked; status {} body {}",
        again.status,
        again.text()
    );
    assert_eq!(again.status, first.status, "replayed status");
    assert_eq!(again.body, first.body, "replayed body");
    for h in ["content-type", "x-custom", "x-multi"] {
        assert_eq!(all(again, h), all(first, h), "replayed header {h}");
    }
}

// ---------------------------------------------------------------------------
// Config, gateway, admin, metrics
// ---------------------------------------------------------------------------

/// `pay` uses policy `p`; `plain` has no idempotency.
const ROUTES: &str = "
  - { name: pay, match: { path_prefix: /pay }, upstream: up, idempotency: p }
  - { name: plain, match: { path_prefix: /plain }, upstream: up }";

/// A config with the upstreams `up` (`${UP}`) and `dead` (`${DEAD}`, nothing
/// listens), these idempotency policies (indented by 2) and routes; `top` is
/// more top-level sections (auth, redis).
fn config_with(server_extra: &str, top: &str, policies: &str, routes: &str) -> String {
    format!(
        "{}{top}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
  dead: {{ targets: [{{ url: 'http://${{DEAD}}' }}], timeouts: {{ connect: 500ms }} }}
idempotency:
{policies}
routes:{routes}
",
        server_block(server_extra)
    )
}

fn config(policies: &str, routes: &str) -> String {
    config_with("", "", policies, routes)
}

fn vars(up: &Scripted) -> [(&'static str, String); 2] {
    [("UP", up.host_port()), ("DEAD", dead_port())]
}

async fn start(yaml: &str, up: &Scripted) -> Gateway {
    Gateway::start(yaml, &vars(up)).await
}

async fn admin_get(gw: &Gateway, path: &str) -> Resp {
    get(&gw.admin_url(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn admin_delete(gw: &Gateway, path: &str) -> Resp {
    let req = Request::delete(gw.admin_url(path))
        .body(empty())
        .expect("request");
    send(req)
        .await
        .unwrap_or_else(|e| panic!("DELETE {path}: {e}"))
}

/// `GET /idempotency/{route}/{key}` answered 200: its entries.
async fn entries(gw: &Gateway, path: &str) -> Vec<Value> {
    let r = admin_get(gw, path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("entries in {}", r.text()))
        .clone()
}

fn series(route: &str, result: &str) -> String {
    format!(r#"tollgate_idempotency_total{{route="{route}",result="{result}"}}"#)
}

/// Waits until the idempotency counters of `route` are exactly `expected`
/// (absent results must be 0 or missing).
async fn wait_counts(gw: &Gateway, route: &str, expected: &[(&str, f64)]) {
    let results = [
        "stored",
        "replayed",
        "conflict",
        "mismatch",
        "missing",
        "invalid",
        "not_stored",
        "store_error",
    ];
    let want: BTreeMap<&str, f64> = results
        .iter()
        .map(|r| {
            (
                *r,
                expected
                    .iter()
                    .find(|(n, _)| n == r)
                    .map_or(0.0, |(_, v)| *v),
            )
        })
        .collect();
    wait_until(
        format!("idempotency counters of {route} to be {want:?}"),
        async || {
            let m = gw.metrics().await;
            let got: BTreeMap<&str, f64> = results
                .iter()
                .map(|r| (*r, metric(&m, &series(route, r)).unwrap_or(0.0)))
                .collect();
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
}

async fn count(gw: &Gateway, route: &str, result: &str) -> f64 {
    metric(&gw.metrics().await, &series(route, result)).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// 1. The memory store: replay, keys, methods
// ---------------------------------------------------------------------------

#[tokio::test]
async fn memory_store_replays_the_first_answer_without_the_upstream() {
    let up = Scripted::start().await;
    let gw = start(&config("  p: {}\n", ROUTES), &up).await;
    let url = gw.url("/pay/orders?x=1");
    let body = r#"{"amount":10}"#;

    let first = post(&url).key("k1").body(body).send().await;
    let j = assert_fresh(&first, 1);
    assert_eq!(up.paths(), ["/pay/orders?x=1"]);
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/pay/orders?x=1");
    assert_eq!(j["body_bytes"], body.len());
    assert_eq!(all(&first, "x-multi"), ["a", "b"]);

    // The retry, right after the first answer's last byte: replayed.
    let again = post(&url).key("k1").body(body).send().await;
    assert_replay_of(&again, &first);
    assert_eq!(up.hits(), 1, "a replay never reaches the upstream");

    // A structured-field string is the same key.
    let quoted = post(&url).key("\"k1\"").body(body).send().await;
    assert_replay_of(&quoted, &first);
    // Headers are not part of the fingerprint, and neither is the framing
    // of the body (three chunks, no Content-Length).
    let other_headers = post(&url)
        .key("k1")
        .header("x-trace", "zzz")
        .header("content-type", "text/plain")
        .body(body)
        .chunked()
        .send()
        .await;
    assert_replay_of(&other_headers, &first);
    assert_eq!(up.hits(), 1);

    // Another key is another request; a 255-byte key is accepted.
    assert_fresh(&post(&url).key("k2").body(body).send().await, 2);
    let long = "a".repeat(255);
    let l1 = post(&url).key(&long).body(body).send().await;
    assert_fresh(&l1, 3);
    assert_replay_of(&post(&url).key(&long).body(body).send().await, &l1);
    // Printable ASCII with spaces and punctuation.
    let odd = "order 42/a:b;c=\"d\"";
    let o1 = post(&url).key(odd).body(body).send().await;
    assert_fresh(&o1, 4);
    assert_replay_of(&post(&url).key(odd).body(body).send().await, &o1);

    // PUT, PATCH and DELETE are unsafe too.
    let mut n = 4;
    for method in ["PUT", "PATCH", "DELETE"] {
        n += 1;
        let k = format!("m-{method}");
        let r1 = call(method, gw.url("/pay/m"))
            .key(&k)
            .body("b")
            .send()
            .await;
        assert_fresh(&r1, n);
        assert_eq!(r1.json()["method"], method);
        let r2 = call(method, gw.url("/pay/m"))
            .key(&k)
            .body("b")
            .send()
            .await;
        assert_replay_of(&r2, &r1);
    }
    assert_eq!(up.hits(), 7);

    // Safe methods pass through untouched, even with a used key.
    for method in ["GET", "GET", "OPTIONS"] {
        n += 1;
        let r = call(method, gw.url("/pay/orders?x=1"))
            .key("k1")
            .send()
            .await;
        assert_fresh(&r, n);
    }
    let head = call("HEAD", gw.url("/pay/orders?x=1"))
        .key("k1")
        .send()
        .await;
    assert_eq!(head.status, 201);
    assert_eq!(head.header("idempotent-replayed"), None);
    n += 1;
    assert_eq!(up.hits(), n as usize);

    // Without a key (required: false): forwarded every time.
    for _ in 0..2 {
        n += 1;
        assert_fresh(&post(&url).body(body).send().await, n);
    }
    // A route without idempotency ignores the key.
    for _ in 0..2 {
        n += 1;
        assert_fresh(
            &post(gw.url("/plain/x")).key("k1").body(body).send().await,
            n,
        );
    }
    assert_eq!(up.hits(), n as usize);
    gw.shutdown().await;
}

#[tokio::test]
async fn invalid_and_missing_keys_are_refused_before_the_upstream() {
    let up = Scripted::start().await;
    let routes = format!(
        "{ROUTES}
  - {{ name: strict, match: {{ path_prefix: /strict }}, upstream: up, idempotency: strict }}"
    );
    let gw = start(
        &config("  p: {}\n  strict: { required: true }\n", &routes),
        &up,
    )
    .await;
    let bad: [(&str, Vec<Vec<u8>>); 7] = [
        ("an empty key", vec![b"".to_vec()]),
        ("a 256-byte key", vec![vec![b'a'; 256]]),
        ("a key with a tab", vec![b"k\t1".to_vec()]),
        ("a non-ASCII key", vec!["k\u{f6}".as_bytes().to_vec()]),
        ("a key with a raw 0xFF byte", vec![b"k\xff".to_vec()]),
        ("the same key twice", vec![b"k1".to_vec(), b"k1".to_vec()]),
        ("two different keys", vec![b"k1".to_vec(), b"k2".to_vec()]),
    ];
    for path in ["/pay/x", "/strict/x"] {
        for (what, values) in &bad {
            let mut c = post(gw.url(path)).body("b");
            for v in values {
                c = c.header_bytes("idempotency-key", v);
            }
            let r = c.send().await;
            assert_eq!(r.status, 400, "{what} on {path}: {} {}", r.status, r.text());
            r.assert_error(400, "idempotency_key_invalid");
        }
    }
    assert_eq!(up.hits(), 0, "refused keys never reach the upstream");

    // required: true refuses unsafe requests without a key...
    for method in ["POST", "PATCH", "PUT", "DELETE"] {
        let r = call(method, gw.url("/strict/x")).body("b").send().await;
        r.assert_error(400, "idempotency_key_missing");
    }
    assert_eq!(up.hits(), 0);
    // ...not safe ones, which also ignore an invalid key.
    assert_fresh(&call("GET", gw.url("/strict/x")).send().await, 1);
    assert_fresh(&call("GET", gw.url("/strict/x")).key("").send().await, 2);
    assert_fresh(
        &call("GET", gw.url("/pay/x"))
            .key(&"a".repeat(300))
            .send()
            .await,
        3,
    );
    // A good key on the strict route works.
    let ok = post(gw.url("/strict/x")).key("good").body("b").send().await;
    assert_fresh(&ok, 4);
    assert_replay_of(
        &post(gw.url("/strict/x")).key("good").body("b").send().await,
        &ok,
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. Mismatch
// ---------------------------------------------------------------------------

#[tokio::test]
async fn same_key_with_another_request_is_422() {
    let up = Scripted::start().await;
    let gw = start(&config("  p: {}\n", ROUTES), &up).await;
    let first = post(gw.url("/pay/a?x=1")).key("m").body("one").send().await;
    assert_fresh(&first, 1);

    let others = [
        ("another body", post(gw.url("/pay/a?x=1")).body("two")),
        ("an empty body", post(gw.url("/pay/a?x=1"))),
        ("a longer body", post(gw.url("/pay/a?x=1")).body("one1")),
        ("another path", post(gw.url("/pay/b?x=1")).body("one")),
        ("another query", post(gw.url("/pay/a?x=2")).body("one")),
        ("no query", post(gw.url("/pay/a")).body("one")),
        (
            "another method",
            call("PATCH", gw.url("/pay/a?x=1")).body("one"),
        ),
    ];
    for (what, c) in others {
        let r = c.key("m").send().await;
        assert_eq!(r.status, 422, "{what}: {}", r.text());
        r.assert_error(422, "idempotency_key_mismatch");
        assert!(!replayed(&r), "{what}: a mismatch is not a replay");
    }
    assert_eq!(up.hits(), 1, "mismatches never reach the upstream");

    // The stored answer is still there for the real retry.
    assert_replay_of(
        &post(gw.url("/pay/a?x=1")).key("m").body("one").send().await,
        &first,
    );
    // A large body streamed in chunks is fingerprinted whole: one byte
    // differs at the end.
    let mut big = vec![b'z'; 200_000];
    let b1 = post(gw.url("/pay/big"))
        .key("mb")
        .body(big.clone())
        .chunked()
        .send()
        .await;
    assert_fresh(&b1, 2);
    assert_replay_of(
        &post(gw.url("/pay/big"))
            .key("mb")
            .body(big.clone())
            .send()
            .await,
        &b1,
    );
    *big.last_mut().unwrap() = b'y';
    post(gw.url("/pay/big"))
        .key("mb")
        .body(big)
        .chunked()
        .send()
        .await
        .assert_error(422, "idempotency_key_mismatch");
    assert_eq!(up.hits(), 2);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Scope: route and caller
// ---------------------------------------------------------------------------

#[tokio::test]
async fn keys_are_scoped_per_route_and_caller() {
    let up = Scripted::start().await;
    let top = format!(
        "auth:
  jwt:
    main: {{ algorithms: [HS256], secret: {SECRET} }}
  api_keys:
    partners:
      keys:
        - {{ id: acme, key: acme-key-123 }}
        - {{ id: globex, key: globex-key-456 }}
"
    );
    let routes = "
  - { name: keys, match: { path_prefix: /keys }, upstream: up, auth: ['api_key:partners'], idempotency: p }
  - { name: users, match: { path_prefix: /users }, upstream: up, auth: ['jwt:main'], idempotency: p }
  - { name: pay, match: { path_prefix: /pay }, upstream: up, idempotency: p }
  - { name: orders, match: { path_prefix: /orders }, upstream: up, idempotency: p }";
    let yaml = config_with("trusted_proxies: [127.0.0.1/32]", &top, "  p: {}\n", routes);
    let gw = start(&yaml, &up).await;

    // API keys: caller key:<id>.
    let by_key = |k: &'static str| {
        post(gw.url("/keys/x"))
            .key("s1")
            .header("x-api-key", k)
            .body("b")
    };
    let acme = by_key("acme-key-123").send().await;
    assert_fresh(&acme, 1);
    let globex = by_key("globex-key-456").send().await;
    assert_fresh(&globex, 2);
    assert_replay_of(&by_key("acme-key-123").send().await, &acme);
    assert_replay_of(&by_key("globex-key-456").send().await, &globex);
    assert_eq!(up.hits(), 2);

    // JWT: caller jwt:<sub>, whatever else the token says.
    let token = |sub: &str, exp: u64| {
        format!(
            "Bearer {}",
            mint(Algorithm::HS256, &json!({"sub": sub, "exp": exp}))
        )
    };
    let by_jwt = |t: String| {
        post(gw.url("/users/x"))
            .key("s1")
            .header("authorization", &t)
            .body("b")
    };
    let alice = by_jwt(token("alice", now() + 3600)).send().await;
    assert_fresh(&alice, 3);
    let bob = by_jwt(token("bob", now() + 3600)).send().await;
    assert_fresh(&bob, 4);
    assert_replay_of(&by_jwt(token("alice", now() + 7200)).send().await, &alice);
    assert_replay_of(&by_jwt(token("bob", now() + 3600)).send().await, &bob);
    assert_eq!(up.hits(), 4);
    // A verified token without a sub: the client IP.
    let no_sub = format!(
        "Bearer {}",
        mint(Algorithm::HS256, &json!({"exp": now() + 3600}))
    );
    let anon = post(gw.url("/users/x"))
        .key("s1")
        .header("authorization", &no_sub)
        .header("x-forwarded-for", "10.0.0.9")
        .body("b")
        .send()
        .await;
    assert_fresh(&anon, 5);
    assert_eq!(up.hits(), 5);

    // No credential: the client IP (through the trusted proxy).
    let by_ip = |ip: Option<&str>| {
        let c = post(gw.url("/pay/x")).key("s1").body("b");
        match ip {
            Some(ip) => c.header("x-forwarded-for", ip),
            None => c,
        }
    };
    let ip1 = by_ip(Some("10.0.0.1")).send().await;
    assert_fresh(&ip1, 6);
    let ip2 = by_ip(Some("10.0.0.2")).send().await;
    assert_fresh(&ip2, 7);
    assert_replay_of(&by_ip(Some("10.0.0.1")).send().await, &ip1);
    let peer = by_ip(None).send().await;
    assert_fresh(&peer, 8);
    assert_replay_of(&by_ip(None).send().await, &peer);
    // The same key, caller and body on another route (same policy) is
    // another request there, not a mismatch.
    let orders = post(gw.url("/orders/x"))
        .key("s1")
        .header("x-forwarded-for", "10.0.0.1")
        .body("b")
        .send()
        .await;
    assert_fresh(&orders, 9);
    assert_eq!(up.hits(), 9);

    // The admin view names the callers.
    let callers = async |path: &str| {
        let mut c: Vec<String> = entries(&gw, path)
            .await
            .iter()
            .map(|e| {
                assert_eq!(e["state"], "completed", "{e}");
                assert_eq!(e["status"], 201, "{e}");
                e["caller"].as_str().expect("caller").to_string()
            })
            .collect();
        c.sort();
        c
    };
    assert_eq!(
        callers("/idempotency/keys/s1").await,
        ["key:acme", "key:globex"]
    );
    assert_eq!(
        callers("/idempotency/users/s1").await,
        ["ip:10.0.0.9", "jwt:alice", "jwt:bob"]
    );
    assert_eq!(
        callers("/idempotency/pay/s1").await,
        ["ip:10.0.0.1", "ip:10.0.0.2", "ip:127.0.0.1"]
    );
    assert_eq!(
        callers("/idempotency/pay/s1?caller=ip:10.0.0.2").await,
        ["ip:10.0.0.2"]
    );
    assert_eq!(callers("/idempotency/orders/s1").await, ["ip:10.0.0.1"]);

    // DELETE one caller's entry: only that caller reaches the upstream again.
    let d = admin_delete(&gw, "/idempotency/pay/s1?caller=ip:10.0.0.2").await;
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(d.json(), json!({"released": 1}));
    assert_fresh(&by_ip(Some("10.0.0.2")).send().await, 10);
    assert_replay_of(&by_ip(Some("10.0.0.1")).send().await, &ip1);
    let d = admin_delete(&gw, "/idempotency/pay/s1").await;
    assert_eq!(d.json(), json!({"released": 3}));
    let r = admin_get(&gw, "/idempotency/pay/s1").await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_replay_of(
        &post(gw.url("/orders/x"))
            .key("s1")
            .header("x-forwarded-for", "10.0.0.1")
            .body("b")
            .send()
            .await,
        &orders,
    );
    assert_eq!(up.hits(), 10);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. In flight
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_retry_while_the_first_is_in_flight_gets_409_then_the_replay() {
    let up = Scripted::start().await;
    let gw = start(&config("  p: {}\n", ROUTES), &up).await;
    up.plan(&[Answer::Held]);
    let first = tokio::spawn(post(gw.url("/pay/c")).key("c").body("x").send());
    up.wait_hits(1).await;

    let second = post(gw.url("/pay/c")).key("c").body("x").send().await;
    second.assert_error(409, "idempotency_key_in_use");
    assert!(!replayed(&second));
    // The admin view shows the lock.
    let e = entries(&gw, "/idempotency/pay/c").await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["caller"], "ip:127.0.0.1");
    assert_eq!(e[0]["state"], "in_flight");
    assert!(
        e[0].get("status").is_none(),
        "no status while in flight: {}",
        e[0]
    );
    assert!(e[0].get("body_bytes").is_none(), "{}", e[0]);
    let left = e[0]["expires_in_ms"].as_u64().expect("expires_in_ms");
    assert!(
        left > 0 && left <= 30_000,
        "the default lock_timeout: {left}"
    );
    // Another key is not blocked.
    assert_fresh(&post(gw.url("/pay/c")).key("c2").body("x").send().await, 2);

    up.release();
    let first = first.await.expect("first request");
    assert_fresh(&first, 1);
    let retry = post(gw.url("/pay/c")).key("c").body("x").send().await;
    assert_replay_of(&retry, &first);
    assert_eq!(up.hits(), 2);
    let e = entries(&gw, "/idempotency/pay/c").await;
    assert_eq!(e[0]["state"], "completed");
    assert_eq!(e[0]["status"], 201);
    assert_eq!(e[0]["body_bytes"], first.body.len());
    let left = e[0]["expires_in_ms"].as_u64().expect("expires_in_ms");
    assert!(
        left > 86_000_000 && left <= 86_400_000,
        "the default ttl (24h): {left}"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. 100 at once
// ---------------------------------------------------------------------------

/// 100 concurrent requests with one key, twice. First with the upstream
/// holding the one request it gets until the other 99 are answered: all 99
/// must be 409 (none waits for the first, none reaches the upstream). Then a
/// free race with another key: one reaches the upstream, every other answer
/// is a 409 or a replay of its answer.
async fn hundred_at_once(gw: &Gateway, up: &Scripted) {
    let url = gw.url("/pay/burst");
    let spawn_all = |key: &'static str| -> Vec<_> {
        (0..100)
            .map(|_| tokio::spawn(post(&url).key(key).body("same").send()))
            .collect()
    };

    up.plan(&[Answer::Held]);
    let tasks = spawn_all("held");
    wait_until("99 answers while the first is held", async || {
        let done = tasks.iter().filter(|t| t.is_finished()).count();
        if done == 99 {
            Ok(())
        } else {
            Err(format!("{done} answered"))
        }
    })
    .await;
    assert_eq!(up.hits(), 1, "the upstream saw exactly one");
    up.release();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    let (fresh, conflicts): (Vec<Resp>, Vec<Resp>) =
        answers.into_iter().partition(|r| r.status == 201);
    assert_eq!(fresh.len(), 1, "exactly one first answer");
    assert_fresh(&fresh[0], 1);
    assert_eq!(conflicts.len(), 99);
    for r in &conflicts {
        r.assert_error(409, "idempotency_key_in_use");
    }
    let (again, late) = retry_at_once(|| post(&url).key("held").body("same")).await;
    assert_replay_of(&again, &fresh[0]);

    let tasks = spawn_all("race");
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    let fresh: Vec<&Resp> = answers
        .iter()
        .filter(|r| r.status == 201 && !replayed(r))
        .collect();
    assert_eq!(fresh.len(), 1, "exactly one first answer");
    let first = fresh[0];
    assert_fresh(first, 2);
    let (mut conflicts, mut replays) = (0, 0);
    for r in &answers {
        if std::ptr::eq(r, first) {
            continue;
        }
        if r.status == 409 {
            r.assert_error(409, "idempotency_key_in_use");
            conflicts += 1;
        } else {
            assert_replay_of(r, first);
            replays += 1;
        }
    }
    println!("100 at once: 1 first, {conflicts} conflicts, {replays} replays");
    assert_eq!(conflicts + replays, 99);
    assert_eq!(up.hits(), 2, "the upstream saw exactly one of each hundred");
    let (again, late_race) = retry_at_once(|| post(&url).key("race").body("same")).await;
    assert_replay_of(&again, first);
    wait_counts(
        gw,
        "pay",
        &[
            ("stored", 2.0),
            ("conflict", f64::from(99 + conflicts + late + late_race)),
            ("replayed", f64::from(replays + 2)),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_one_key_memory() {
    let up = Scripted::start().await;
    let gw = start(&config("  p: {}\n", ROUTES), &up).await;
    hundred_at_once(&gw, &up).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_one_key_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Scripted::start().await;
    let yaml = config_with(
        "",
        &redis.redis_block("2s"),
        "  p: { store: redis }\n",
        ROUTES,
    );
    let gw = start(&yaml, &up).await;
    hundred_at_once(&gw, &up).await;
    gw.shutdown().await;
}

/// Without a `redis:` map in the policy, keys go under the default prefix
/// `tg:idem:`.
#[tokio::test]
async fn the_default_redis_prefix_is_tg_idem() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Scripted::start().await;
    for policy in [
        "  p: { store: redis }\n",
        "  p: { store: redis, redis: {} }\n",
    ] {
        redis.command(&["FLUSHALL"]).await.expect("FLUSHALL");
        let yaml = config_with("", &redis.redis_block("500ms"), policy, ROUTES);
        let gw = start(&yaml, &up).await;
        let r = post(gw.url("/pay/x")).key("pfx").body("b").send().await;
        assert_eq!(r.status, 201, "{}", r.text());
        let keys = redis.command(&["KEYS", "*"]).await.expect("KEYS");
        assert!(!keys.is_empty(), "{policy}: nothing in redis");
        assert!(
            keys.iter().all(|k| k.starts_with("tg:idem:")),
            "{policy}: keys outside the default prefix: {keys:?}"
        );
        gw.shutdown().await;
    }
}

/// The policy's own `redis.url` wins over the top-level one (here a port
/// where nothing listens).
#[tokio::test]
async fn the_policy_redis_url_wins_over_the_top_level_one() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Scripted::start().await;
    let top = format!("redis:\n  url: redis://{}\n  timeout: 200ms\n", dead_port());
    let policy = format!(
        "  p: {{ store: redis, redis: {{ url: 'redis://127.0.0.1:{}', timeout: 500ms }} }}\n",
        redis.port
    );
    let gw = start(&config_with("", &top, &policy, ROUTES), &up).await;
    let first = post(gw.url("/pay/u")).key("u").body("b").send().await;
    assert_fresh(&first, 1);
    assert_replay_of(
        &retry_at_once(|| post(gw.url("/pay/u")).key("u").body("b"))
            .await
            .0,
        &first,
    );
    let keys = redis.command(&["KEYS", "*"]).await.expect("KEYS");
    assert!(!keys.is_empty(), "the policy's redis holds the key");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. What is not stored
// ---------------------------------------------------------------------------

#[tokio::test]
async fn failures_are_not_stored_and_release_the_key() {
    let up = Scripted::start().await;
    let routes = format!(
        "{ROUTES}
  - {{ name: deadpay, match: {{ path_prefix: /deadpay }}, upstream: dead, idempotency: p }}
  - {{ name: slowpay, match: {{ path_prefix: /slowpay }}, upstream: up, idempotency: p, timeout: 300ms }}"
    );
    let gw = start(&config("  p: {}\n", &routes), &up).await;

    // 500, then success, then the replay of the success.
    up.plan(&[Answer::Status(500)]);
    let r1 = post(gw.url("/pay/f")).key("f").body("b").send().await;
    assert_eq!(r1.status, 500, "{}", r1.text());
    assert_eq!(r1.json(), json!({"n": 1, "status": 500}));
    assert!(!replayed(&r1));
    let r2 = post(gw.url("/pay/f")).key("f").body("b").send().await;
    assert_fresh(&r2, 2);
    assert_replay_of(&post(gw.url("/pay/f")).key("f").body("b").send().await, &r2);
    assert_eq!(up.hits(), 2);

    // 503 and a redirect are not stored either.
    up.plan(&[Answer::Status(503), Answer::Status(302)]);
    assert_eq!(post(gw.url("/pay/g")).key("g").send().await.status, 503);
    let r = post(gw.url("/pay/g")).key("g").send().await;
    assert_eq!((r.status, r.json()["n"].clone()), (302, json!(4)));
    assert!(!replayed(&r));
    assert_fresh(&post(gw.url("/pay/g")).key("g").send().await, 5);

    // 4xx answers are stored.
    up.plan(&[Answer::Status(400)]);
    let bad = post(gw.url("/pay/h")).key("h").send().await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json(), json!({"n": 6, "status": 400}));
    assert_replay_of(&post(gw.url("/pay/h")).key("h").send().await, &bad);
    assert_eq!(up.hits(), 6);

    // An upstream connect error: the gateway's 502, key released.
    for _ in 0..2 {
        let r = post(gw.url("/deadpay/x")).key("d").body("b").send().await;
        r.assert_error(502, "upstream_unavailable");
        assert!(!replayed(&r), "a gateway error is never stored");
    }
    let r = admin_get(&gw, "/idempotency/deadpay/d").await;
    assert_eq!(
        r.status,
        404,
        "released after the connect error: {}",
        r.text()
    );

    // An upstream timeout (the route's 300 ms): 504, key released.
    up.plan(&[Answer::Held]);
    post(gw.url("/slowpay/t"))
        .key("t")
        .body("b")
        .send()
        .await
        .assert_error(504, "upstream_timeout");
    assert_eq!(up.hits(), 7);
    let r = admin_get(&gw, "/idempotency/slowpay/t").await;
    assert_eq!(r.status, 404, "released after the timeout: {}", r.text());
    let t = post(gw.url("/slowpay/t")).key("t").body("b").send().await;
    assert_fresh(&t, 8);
    assert_replay_of(
        &post(gw.url("/slowpay/t")).key("t").body("b").send().await,
        &t,
    );

    wait_counts(
        &gw,
        "pay",
        &[("stored", 3.0), ("replayed", 2.0), ("not_stored", 3.0)],
    )
    .await;
    wait_counts(&gw, "deadpay", &[("not_stored", 2.0)]).await;
    wait_counts(
        &gw,
        "slowpay",
        &[("stored", 1.0), ("replayed", 1.0), ("not_stored", 1.0)],
    )
    .await;
    up.release();
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_gone_mid_request_releases_the_key() {
    let up = Scripted::start().await;
    let gw = start(&config("  p: {}\n", ROUTES), &up).await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(
        b"POST /pay/gone HTTP/1.1\r\nhost: t\r\nidempotency-key: gone\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await
    .expect("write");
    wait_until("the key to be taken", async || {
        admin_get(&gw, "/idempotency/pay/gone").await.status == 200
    })
    .await;
    post(gw.url("/pay/gone"))
        .key("gone")
        .body("x".repeat(100))
        .send()
        .await
        .assert_error(409, "idempotency_key_in_use");
    let _ = s.set_zero_linger();
    drop(s);
    wait_until("the key to be released", async || {
        admin_get(&gw, "/idempotency/pay/gone").await.status == 404
    })
    .await;
    let r = post(gw.url("/pay/gone"))
        .key("gone")
        .body("x".repeat(100))
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(!replayed(&r));
    assert_eq!(r.json()["body_bytes"], 100);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_gone_mid_response_releases_the_key() {
    let up = Scripted::start().await;
    let gw = start(&config("  p: {}\n", ROUTES), &up).await;
    let len = 8 * 1024 * 1024;
    up.plan(&[Answer::HeldMidBody(len)]);
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(
        b"POST /pay/mid HTTP/1.1\r\nhost: t\r\nidempotency-key: mid\r\ncontent-length: 0\r\n\r\n",
    )
    .await
    .expect("write");
    // The head and some of the body arrive; then the client leaves.
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    tokio::time::timeout(WAIT, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() < 1000 {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the first part of the answer");
    assert!(
        got.starts_with(b"HTTP/1.1 201"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let _ = s.set_zero_linger();
    drop(s);
    up.release();
    wait_until("the key to be released", async || {
        let r = admin_get(&gw, "/idempotency/pay/mid").await;
        if r.status == 404 {
            Ok(())
        } else {
            Err(r.text())
        }
    })
    .await;
    let r = post(gw.url("/pay/mid")).key("mid").send().await;
    assert_fresh(&r, 2);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 7. max_response_bytes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn answers_over_max_response_bytes_stream_through_unstored() {
    let up = Scripted::start().await;
    let gw = start(&config("  p: { max_response_bytes: 1KiB }\n", ROUTES), &up).await;
    let len = 256 * 1024;

    for (key, answer) in [
        ("big", Answer::Big(len)),
        ("chunked", Answer::BigChunked(len)),
    ] {
        up.plan(&[answer]);
        let n = up.hits() + 1;
        let r = post(gw.url("/pay/big")).key(key).send().await;
        assert_eq!(r.status, 201);
        assert_eq!(r.body.len(), len, "{key}: the whole body");
        assert!(r.body == pattern(len), "{key}: the body's bytes");
        assert_eq!(r.header("x-custom"), Some(format!("n-{n}").as_str()));
        assert!(!replayed(&r));
        // Not stored: the retry reaches the upstream (which answers small now).
        let again = post(gw.url("/pay/big")).key(key).send().await;
        assert_fresh(&again, n as u64 + 1);
        assert_replay_of(&post(gw.url("/pay/big")).key(key).send().await, &again);
    }
    // Under the limit, a text body (with a length or chunked) is stored and
    // replayed byte for byte.
    for (key, answer) in [
        ("small", Answer::Big(1000)),
        ("smallc", Answer::BigChunked(1000)),
    ] {
        up.plan(&[answer]);
        let small = post(gw.url("/pay/small")).key(key).send().await;
        assert_eq!((small.status, small.body.len()), (201, 1000));
        assert!(small.body == pattern(1000));
        let again = post(gw.url("/pay/small")).key(key).send().await;
        assert_replay_of(&again, &small);
    }
    assert_eq!(up.hits(), 6);
    wait_counts(
        &gw,
        "pay",
        &[("stored", 4.0), ("replayed", 4.0), ("not_stored", 2.0)],
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn keyed_answers_are_never_compressed() {
    let up = Scripted::start().await;
    let routes = "
  - { name: pay, match: { path_prefix: /pay }, upstream: up, idempotency: p, compress: [gzip] }";
    let gw = start(&config("  p: {}\n", routes), &up).await;
    // Without a key the route compresses this answer...
    up.plan(&[Answer::Big(8192)]);
    let plain = post(gw.url("/pay/z"))
        .header("accept-encoding", "gzip")
        .send()
        .await;
    assert_eq!(plain.status, 201);
    assert_eq!(
        plain.header("content-encoding"),
        Some("gzip"),
        "the control"
    );
    // ...with one it does not, nor its replay.
    up.plan(&[Answer::Big(8192)]);
    let first = post(gw.url("/pay/z"))
        .key("z")
        .header("accept-encoding", "gzip")
        .send()
        .await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("content-encoding"), None);
    assert!(first.body == pattern(8192));
    let again = post(gw.url("/pay/z"))
        .key("z")
        .header("accept-encoding", "gzip")
        .send()
        .await;
    assert_replay_of(&again, &first);
    assert_eq!(again.header("content-encoding"), None);
    assert_eq!(up.hits(), 2);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// 8. Two instances on one Redis; the admin endpoints
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_keys_through_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Scripted::start().await;
    let yaml = config_with(
        "",
        &redis.redis_block("500ms"),
        "  p: { store: redis, redis: { prefix: 'it8:' } }\n",
        ROUTES,
    );
    let dead = dead_port();
    let vars = [("UP", up.host_port()), ("DEAD", dead)];
    let a = Gateway::start(&yaml, &vars).await;
    let b = Gateway::start(&yaml, &vars).await;

    // In flight through A: B says 409 and shows the lock.
    up.plan(&[Answer::Held]);
    let first = tokio::spawn(post(a.url("/pay/r")).key("r8").body("b").send());
    up.wait_hits(1).await;
    post(b.url("/pay/r"))
        .key("r8")
        .body("b")
        .send()
        .await
        .assert_error(409, "idempotency_key_in_use");
    let e = entries(&b, "/idempotency/pay/r8").await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["state"], "in_flight");
    assert_eq!(e[0]["caller"], "ip:127.0.0.1");
    up.release();
    let first = first.await.expect("first");
    assert_fresh(&first, 1);

    // At once through B: replayed, once A's write of the answer (sent
    // alongside its last bytes) has landed.
    let (again, late) = retry_at_once(|| post(b.url("/pay/r")).key("r8").body("b")).await;
    assert_replay_of(&again, &first);
    post(b.url("/pay/r"))
        .key("r8")
        .body("other")
        .send()
        .await
        .assert_error(422, "idempotency_key_mismatch");
    assert_eq!(up.hits(), 1);

    let r = admin_get(&b, "/idempotency/pay/r8").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["route"], "pay");
    assert_eq!(j["key"], "r8");
    let e = j["entries"].as_array().expect("entries");
    assert_eq!(e.len(), 1, "{j}");
    assert_eq!(e[0]["caller"], "ip:127.0.0.1");
    assert_eq!(e[0]["state"], "completed");
    assert_eq!(e[0]["status"], 201);
    assert_eq!(e[0]["body_bytes"], first.body.len());
    let left = e[0]["expires_in_ms"].as_u64().expect("expires_in_ms");
    assert!(left > 86_000_000 && left <= 86_400_000, "{left}");
    assert_eq!(entries(&a, "/idempotency/pay/r8").await.len(), 1);
    assert_eq!(
        entries(&b, "/idempotency/pay/r8?caller=ip:127.0.0.1")
            .await
            .len(),
        1
    );
    let r = admin_get(&b, "/idempotency/pay/r8?caller=ip:10.9.9.9").await;
    assert_eq!(r.status, 404, "no entry for that caller: {}", r.text());

    // The keys live under the configured prefix.
    let keys = redis.command(&["KEYS", "*"]).await.expect("KEYS");
    assert!(!keys.is_empty(), "nothing in redis");
    assert!(
        keys.iter().all(|k| k.starts_with("it8:")),
        "keys outside the prefix: {keys:?}"
    );

    // 404s.
    for path in [
        "/idempotency/pay/nope",
        "/idempotency/nope/r8",
        "/idempotency/plain/r8",
    ] {
        let r = admin_get(&b, path).await;
        assert_eq!(r.status, 404, "GET {path}: {}", r.text());
    }

    // DELETE through B releases it for both.
    let d = admin_delete(&b, "/idempotency/pay/r8?caller=ip:10.9.9.9").await;
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(d.json(), json!({"released": 0}));
    let d = admin_delete(&b, "/idempotency/pay/r8").await;
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(d.json(), json!({"released": 1}));
    assert_eq!(admin_get(&a, "/idempotency/pay/r8").await.status, 404);
    let fresh = post(a.url("/pay/r")).key("r8").body("b").send().await;
    assert_fresh(&fresh, 2);
    let (again, late_again) = retry_at_once(|| post(b.url("/pay/r")).key("r8").body("b")).await;
    assert_replay_of(&again, &fresh);

    // The key in the admin path is percent-decoded.
    let odd = post(a.url("/pay/r")).key("ord 42/a").body("b").send().await;
    assert_fresh(&odd, 3);
    let r = admin_get(&b, "/idempotency/pay/ord%2042%2Fa").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["key"], "ord 42/a");
    assert_eq!(up.hits(), 3);
    wait_counts(&a, "pay", &[("stored", 3.0)]).await;
    wait_counts(
        &b,
        "pay",
        &[
            ("conflict", 1.0 + f64::from(late + late_again)),
            ("replayed", 2.0),
            ("mismatch", 1.0),
        ],
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

// ---------------------------------------------------------------------------
// 9. Expiry
// ---------------------------------------------------------------------------

async fn answers_and_locks_expire(gw: &Gateway, up: &Scripted) {
    let first = post(gw.url("/pay/e")).key("e").body("b").send().await;
    assert_fresh(&first, 1);
    let e = entries(gw, "/idempotency/pay/e").await;
    let left = e[0]["expires_in_ms"].as_u64().expect("expires_in_ms");
    assert!(left <= 500, "ttl 500ms: {left}");
    assert_replay_of(
        &retry_at_once(|| post(gw.url("/pay/e")).key("e").body("b"))
            .await
            .0,
        &first,
    );
    let started = Instant::now();
    let later = wait_until("the stored answer to expire", async || {
        let r = post(gw.url("/pay/e")).key("e").body("b").send().await;
        if replayed(&r) {
            Err("still replayed".to_string())
        } else {
            Ok(r)
        }
    })
    .await;
    assert_fresh(&later, 2);
    assert!(started.elapsed() < Duration::from_secs(3));

    // A lock whose request never finishes expires after lock_timeout.
    up.plan(&[Answer::Held]);
    let held = tokio::spawn(post(gw.url("/pay/l")).key("l").body("b").send());
    up.wait_hits(3).await;
    post(gw.url("/pay/l"))
        .key("l")
        .body("b")
        .send()
        .await
        .assert_error(409, "idempotency_key_in_use");
    let taken = wait_until("the lock to expire", async || {
        let r = post(gw.url("/pay/l")).key("l").body("b").send().await;
        if r.status == 409 {
            Err("409".to_string())
        } else {
            Ok(r)
        }
    })
    .await;
    assert_fresh(&taken, 4);
    up.release();
    let held = held.await.expect("held request");
    assert_eq!(held.status, 201, "the held request still gets its answer");
    // Which of the two is stored is not the contract's business; one is.
    let r = post(gw.url("/pay/l")).key("l").body("b").send().await;
    assert_eq!(
        r.header("idempotent-replayed"),
        Some("true"),
        "{}",
        r.text()
    );
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn expiry_memory_store() {
    let up = Scripted::start().await;
    let gw = start(
        &config("  p: { ttl: 500ms, lock_timeout: 300ms }\n", ROUTES),
        &up,
    )
    .await;
    answers_and_locks_expire(&gw, &up).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn expiry_redis_store() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Scripted::start().await;
    let yaml = config_with(
        "",
        &redis.redis_block("500ms"),
        "  p: { store: redis, ttl: 500ms, lock_timeout: 300ms }\n",
        ROUTES,
    );
    let gw = start(&yaml, &up).await;
    answers_and_locks_expire(&gw, &up).await;
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 10. Redis going away and coming back
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redis_down_follows_on_store_error_and_recovers() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Scripted::start().await;
    let routes = "
  - { name: pay, match: { path_prefix: /pay }, upstream: up, idempotency: reject }
  - { name: passpay, match: { path_prefix: /passpay }, upstream: up, idempotency: pass }";
    let yaml = config_with(
        "",
        &redis.redis_block("200ms"),
        "  reject: { store: redis }\n  pass: { store: redis, on_store_error: pass }\n",
        routes,
    );
    let gw = start(&yaml, &up).await;
    let stored = post(gw.url("/pay/x")).key("d1").body("b").send().await;
    assert_fresh(&stored, 1);
    assert_replay_of(
        &retry_at_once(|| post(gw.url("/pay/x")).key("d1").body("b"))
            .await
            .0,
        &stored,
    );
    assert_fresh(
        &post(gw.url("/passpay/x")).key("d1").body("b").send().await,
        2,
    );

    let port = redis.stop();
    let started = Instant::now();
    for key in ["d2", "d1"] {
        post(gw.url("/pay/x"))
            .key(key)
            .body("b")
            .send()
            .await
            .assert_error(503, "idempotency_store_unavailable");
    }
    assert_eq!(up.hits(), 2, "refused, never forwarded");
    // pass: forwarded, without the guarantee (each time).
    for n in [3, 4] {
        assert_fresh(
            &post(gw.url("/passpay/x")).key("d3").body("b").send().await,
            n,
        );
    }
    // Safe methods and keyless requests do not need the store.
    assert_fresh(&call("GET", gw.url("/pay/x")).key("d1").send().await, 5);
    assert_fresh(&post(gw.url("/pay/x")).body("b").send().await, 6);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the store timeout bounds each call"
    );
    wait_until("store_error counted", async || {
        let reject = count(&gw, "pay", "store_error").await;
        let pass = count(&gw, "passpay", "store_error").await;
        if reject == 2.0 && pass >= 2.0 {
            Ok(())
        } else {
            Err(format!("pay {reject}, passpay {pass}"))
        }
    })
    .await;

    // Redis comes back on the same port (empty): keys work again.
    let _redis = RedisServer::start_on(port).await.expect("redis restarts");
    let back = wait_until_within(
        Duration::from_secs(10),
        "the gateway to reconnect to redis",
        async || {
            let r = post(gw.url("/pay/x")).key("d4").body("b").send().await;
            if r.status == 503 {
                Err(r.text())
            } else {
                Ok(r)
            }
        },
    )
    .await;
    assert_fresh(&back, 7);
    assert_replay_of(
        &retry_at_once(|| post(gw.url("/pay/x")).key("d4").body("b"))
            .await
            .0,
        &back,
    );
    let p = post(gw.url("/passpay/x")).key("d5").body("b").send().await;
    assert_fresh(&p, 8);
    assert_replay_of(
        &retry_at_once(|| post(gw.url("/passpay/x")).key("d5").body("b"))
            .await
            .0,
        &p,
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 11. The metric
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_outcome_is_counted_per_route() {
    let up = Scripted::start().await;
    let routes = format!(
        "{ROUTES}
  - {{ name: strict, match: {{ path_prefix: /strict }}, upstream: up, idempotency: strict }}"
    );
    let gw = start(
        &config("  p: {}\n  strict: { required: true }\n", &routes),
        &up,
    )
    .await;
    let pay = |key: &str, body: &'static str| post(gw.url("/pay/x")).key(key).body(body);

    assert_eq!(pay("k1", "a").send().await.status, 201); // stored
    assert!(replayed(&pay("k1", "a").send().await)); // replayed
    assert!(replayed(&pay("k1", "a").send().await)); // replayed
    assert_eq!(pay("k1", "b").send().await.status, 422); // mismatch
    assert_eq!(pay("", "a").send().await.status, 400); // invalid
    assert_eq!(pay(&"x".repeat(256), "a").send().await.status, 400); // invalid
    up.plan(&[Answer::Status(500)]);
    assert_eq!(pay("k2", "a").send().await.status, 500); // not_stored
    up.plan(&[Answer::Held]);
    let held = tokio::spawn(pay("k3", "a").send());
    up.wait_hits(3).await;
    assert_eq!(pay("k3", "a").send().await.status, 409); // conflict
    up.release();
    assert_eq!(held.await.expect("held").status, 201); // stored
    // Safe methods are not counted.
    assert_eq!(
        call("GET", gw.url("/pay/x")).key("k1").send().await.status,
        201
    );
    // strict: missing twice, stored once.
    for _ in 0..2 {
        assert_eq!(post(gw.url("/strict/x")).body("a").send().await.status, 400);
    }
    assert_eq!(
        post(gw.url("/strict/x"))
            .key("k1")
            .body("a")
            .send()
            .await
            .status,
        201
    );

    wait_counts(
        &gw,
        "pay",
        &[
            ("stored", 2.0),
            ("replayed", 2.0),
            ("conflict", 1.0),
            ("mismatch", 1.0),
            ("invalid", 2.0),
            ("not_stored", 1.0),
        ],
    )
    .await;
    wait_counts(&gw, "strict", &[("missing", 2.0), ("stored", 1.0)]).await;
    let m = gw.metrics().await;
    let plain: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("tollgate_idempotency_total") && l.contains(r#"route="plain""#))
        .collect();
    assert!(
        plain.is_empty(),
        "a route without idempotency has no series: {plain:?}"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Retries on an idempotency route
// ---------------------------------------------------------------------------

#[tokio::test]
async fn posts_are_retried_on_connect_errors_only() {
    let up = Scripted::start().await;
    let dead = dead_port();
    let yaml = format!(
        "{}
upstreams:
  both:
    targets: [{{ url: 'http://${{DEAD}}' }}, {{ url: 'http://${{UP}}' }}]
    timeouts: {{ connect: 500ms }}
    retries: {{ attempts: 2, on: [connect_error, 502], backoff: 1ms }}
idempotency:
  p: {{}}
routes:
  - {{ name: pay, match: {{ path_prefix: /pay }}, upstream: both, idempotency: p }}
  - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: both }}
",
        server_block("")
    );
    let gw = Gateway::start(&yaml, &[("UP", up.host_port()), ("DEAD", dead)]).await;
    // Round robin puts every other first attempt on the dead target: keyed
    // POSTs get there all the same. (Few requests: the retry budget allows
    // 3 a second.)
    for i in 1..=2u64 {
        let r = post(gw.url("/pay/x"))
            .key(&format!("r{i}"))
            .body("b")
            .send()
            .await;
        assert_fresh(&r, i);
    }
    // Without a key too: nothing was sent to the dead target, so a refused
    // connection is retried whatever the method.
    for _ in 0..4 {
        let r = post(gw.url("/plain/x")).body("b").send().await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // A 502 from the upstream itself is a response: never retried.
    let before = up.hits();
    up.plan(&[Answer::Status(502)]);
    let r = post(gw.url("/pay/x")).key("s").body("b").send().await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["status"], 502, "the upstream's own 502");
    assert_eq!(up.hits(), before + 1, "not retried after a response");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 12. Config errors
// ---------------------------------------------------------------------------

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_errors(text: &str) -> Vec<tollgate::config::ConfigError> {
    match tollgate::config::load_str_with_env(text, "tollgate.yaml", &no_env) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0,
    }
}

/// The error at exactly `path`; panics listing them all.
#[track_caller]
fn error_at<'a>(
    errors: &'a [tollgate::config::ConfigError],
    path: &str,
) -> &'a tollgate::config::ConfigError {
    errors
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no error at {path}; got {errors:#?}"))
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in the text"))
        + 1
}

fn policy_config(top: &str, policy: &str, route_extra: &str) -> String {
    format!(
        "{top}upstreams:
  up:
    targets: [{{ url: http://127.0.0.1:9001 }}]
idempotency:
  payments:
{policy}
routes:
  - name: pay
    match: {{ path_prefix: /pay }}
    upstream: up
    idempotency: payments
{route_extra}"
    )
}

const REDIS_TOP: &str = "redis: { url: redis://127.0.0.1:6379 }\n";

#[test]
fn every_idempotency_key_loads() {
    let text = policy_config(
        REDIS_TOP,
        "    store: redis
    redis: { url: redis://127.0.0.1:6380, prefix: 'tg:test:', timeout: 80ms }
    ttl: 1h
    lock_timeout: 10s
    required: true
    max_response_bytes: 512KiB
    on_store_error: pass",
        "  - name: mem
    match: { path_prefix: /mem }
    upstream: up
    idempotency: mem
",
    )
    .replace(
        "routes:",
        "  mem: { store: memory, max_bytes: 1MiB, on_store_error: reject }\n  defaults: {}\nroutes:",
    );
    if let Err(e) = tollgate::config::load_str_with_env(&text, "tollgate.yaml", &no_env) {
        panic!("{e}\n---\n{text}");
    }
    // The policy's own redis url is enough without a top-level section.
    let own = policy_config(
        "",
        "    store: redis\n    redis: { url: redis://127.0.0.1:6380 }",
        "",
    );
    if let Err(e) = tollgate::config::load_str_with_env(&own, "tollgate.yaml", &no_env) {
        panic!("{e}\n---\n{own}");
    }
}

#[test]
fn an_unknown_policy_on_a_route_gets_a_suggestion() {
    let text = policy_config("", "    ttl: 1h", "")
        .replace("    idempotency: payments", "    idempotency: paymnts");
    let errors = load_errors(&text);
    let e = error_at(&errors, "routes[0].idempotency");
    assert_eq!(e.line, line_of(&text, "idempotency: paymnts"), "{e}");
    assert!(e.message.contains("paymnts"), "{e}");
    assert!(e.message.contains("(did you mean `payments`?)"), "{e}");
}

#[test]
fn redis_store_without_a_url_is_refused() {
    let text = policy_config("", "    store: redis", "");
    let errors = load_errors(&text);
    assert!(
        errors
            .iter()
            .any(|e| e.path.starts_with("idempotency.payments")
                && e.message.to_lowercase().contains("redis")),
        "{errors:#?}"
    );
    // With the top-level section it loads.
    let ok = policy_config(REDIS_TOP, "    store: redis", "");
    if let Err(e) = tollgate::config::load_str_with_env(&ok, "tollgate.yaml", &no_env) {
        panic!("{e}");
    }
}

#[test]
fn misspelt_values_and_keys_get_suggestions() {
    let text = policy_config(REDIS_TOP, "    on_store_error: rejct", "")
        .replace("  payments:\n", "  payments:\n    store: redys\n");
    let errors = load_errors(&text);
    let e = error_at(&errors, "idempotency.payments.on_store_error");
    assert_eq!(e.line, line_of(&text, "on_store_error: rejct"), "{e}");
    assert!(e.message.contains("(did you mean `reject`?)"), "{e}");
    let e = error_at(&errors, "idempotency.payments.store");
    assert_eq!(e.line, line_of(&text, "store: redys"), "{e}");
    assert!(e.message.contains("(did you mean `redis`?)"), "{e}");
    // An unknown key in a policy.
    let text = policy_config("", "    tll: 1h", "");
    let errors = load_errors(&text);
    let e = error_at(&errors, "idempotency.payments.tll");
    assert_eq!(e.line, line_of(&text, "tll: 1h"), "{e}");
    assert!(e.message.contains("(did you mean `ttl`?)"), "{e}");
}

#[test]
fn zero_limits_and_misplaced_keys_are_refused() {
    for (key, value) in [
        ("ttl", "0s"),
        ("lock_timeout", "0ms"),
        ("max_response_bytes", "0"),
    ] {
        let text = policy_config("", &format!("    {key}: {value}"), "");
        let errors = load_errors(&text);
        let e = error_at(&errors, &format!("idempotency.payments.{key}"));
        assert_eq!(e.line, line_of(&text, &format!("{key}: {value}")), "{e}");
    }
    // max_bytes is the memory store's.
    let text = policy_config(REDIS_TOP, "    store: redis\n    max_bytes: 1MiB", "");
    let errors = load_errors(&text);
    let e = error_at(&errors, "idempotency.payments.max_bytes");
    assert_eq!(e.line, line_of(&text, "max_bytes: 1MiB"), "{e}");
    // A respond: route has no upstream answer to store.
    let text = policy_config(
        "",
        "    ttl: 1h",
        "  - name: canned
    match: { path_prefix: /canned }
    respond: { status: 201 }
    idempotency: payments
",
    );
    let errors = load_errors(&text);
    assert!(
        errors.iter().any(|e| e.path.starts_with("routes[1]")),
        "{errors:#?}"
    );
}

#[tokio::test]
async fn tollgate_validate_prints_idempotency_errors_with_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = policy_config("", "    on_store_error: rejct", "")
        .replace("    idempotency: payments", "    idempotency: paymnts");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, &text).expect("write");
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["validate", "--config", file.to_str().expect("path")])
            .env_remove("TOLLGATE_CONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("validate exits in time")
    .expect("run tollgate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let l1 = line_of(&text, "on_store_error: rejct");
    let l2 = line_of(&text, "idempotency: paymnts");
    assert!(err.contains(&format!("bad.yaml:{l1}:")), "{err}");
    assert!(err.contains(&format!("bad.yaml:{l2}:")), "{err}");
    assert!(err.contains("did you mean `reject`?"), "{err}");
    assert!(err.contains("did you mean `payments`?"), "{err}");
}

// ---------------------------------------------------------------------------
// More of the contract
// ---------------------------------------------------------------------------

/// A replay is answered on the route like the first answer: its
/// response_headers edits and CORS apply, and it has its own request id.
#[tokio::test]
async fn replays_get_the_routes_response_treatment() {
    let up = Scripted::start().await;
    let top =
        "cors:\n  web: { allow_origins: [https://app.example.com], expose_headers: [X-Custom] }\n";
    let routes = "
  - name: pay
    match: { path_prefix: /pay }
    upstream: up
    idempotency: p
    cors: web
    response_headers: { set: { x-route: pay }, remove: [x-multi] }";
    let gw = start(&config_with("", top, "  p: {}\n", routes), &up).await;
    let send = async || {
        post(gw.url("/pay/x"))
            .key("rt")
            .header("origin", "https://app.example.com")
            .body("b")
            .send()
            .await
    };
    let first = send().await;
    let again = send().await;
    for (what, r) in [("first", &first), ("replay", &again)] {
        assert_eq!(r.status, 201, "{what}: {}", r.text());
        assert_eq!(
            r.header("x-route"),
            Some("pay"),
            "{what}: response_headers.set"
        );
        assert!(
            all(r, "x-multi").is_empty(),
            "{what}: response_headers.remove"
        );
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com"),
            "{what}: CORS"
        );
        assert!(
            r.header("x-request-id").is_some_and(|v| !v.is_empty()),
            "{what}"
        );
    }
    assert_fresh(&first, 1);
    assert_replay_of(&again, &first);
    assert_ne!(
        first.header("x-request-id"),
        again.header("x-request-id"),
        "a replay is a request of its own"
    );
    assert_eq!(up.hits(), 1);
    gw.shutdown().await;
}

/// A gateway error after the key was taken (the body over the limit) gives
/// the key back.
#[tokio::test]
async fn a_body_over_the_limit_releases_the_key() {
    let up = Scripted::start().await;
    let yaml = config_with("limits: { max_body_bytes: 1KiB }", "", "  p: {}\n", ROUTES);
    let gw = start(&yaml, &up).await;
    let big = "x".repeat(2000);
    for chunked in [false, true, false] {
        let mut c = post(gw.url("/pay/x")).key("big").body(big.clone());
        if chunked {
            c = c.chunked();
        }
        let r = c.send().await;
        r.assert_error(413, "payload_too_large");
        wait_until("the key to be free again", async || {
            let r = admin_get(&gw, "/idempotency/pay/big").await;
            if r.status == 404 {
                Ok(())
            } else {
                Err(r.text())
            }
        })
        .await;
    }
    let r = post(gw.url("/pay/x")).key("big").body("small").send().await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(!replayed(&r));
    assert_eq!(r.json()["body_bytes"], 5);
    gw.shutdown().await;
}

/// Empty 2xx and 4xx answers are stored like any other.
#[tokio::test]
async fn empty_answers_are_stored_and_replayed() {
    let up = Scripted::start().await;
    let gw = start(&config("  p: {}\n", ROUTES), &up).await;
    let mut not_replayed = Vec::new();
    for code in [204u16, 201, 200, 404] {
        up.plan(&[Answer::Empty(code)]);
        let key = format!("e{code}");
        let first = post(gw.url("/pay/x")).key(&key).body("b").send().await;
        assert_eq!(first.status, code);
        assert!(first.body.is_empty());
        assert!(!replayed(&first));
        let before = up.hits();
        let again = post(gw.url("/pay/x")).key(&key).body("b").send().await;
        if replayed(&again) {
            assert_replay_of(&again, &first);
            assert_eq!(up.hits(), before);
        } else {
            not_replayed.push(code);
        }
    }
    assert!(
        not_replayed.is_empty(),
        "empty answers with these statuses were not stored: {not_replayed:?}"
    );
    gw.shutdown().await;
}

/// Beyond the written contract (as rate-limit buckets do): a reload that
/// leaves the policy unchanged keeps the memory store's answers.
#[tokio::test]
async fn stored_answers_survive_a_reload_with_the_policy_unchanged() {
    let up = Scripted::start().await;
    let yaml = config("  p: {}\n", ROUTES);
    let vars = vars(&up);
    let gw = Gateway::start(&yaml, &vars).await;
    let first = post(gw.url("/pay/x")).key("rl").body("b").send().await;
    assert_fresh(&first, 1);
    let more = yaml.replace(
        "routes:",
        "routes:\n  - { name: extra, match: { path: /extra }, respond: { status: 204 } }",
    );
    gw.reload(&more, &vars).await;
    assert_eq!(get(&gw.url("/extra")).await.expect("extra").status, 204);
    assert_replay_of(
        &post(gw.url("/pay/x")).key("rl").body("b").send().await,
        &first,
    );
    assert_eq!(up.hits(), 1);
    gw.shutdown().await;
}

/// Fills a memory store of 8 KiB with `n` answers of 1000 bytes, keys
/// `{prefix}0..`, pushed to `keys`.
async fn fill(gw: &Gateway, up: &Scripted, keys: &mut Vec<String>, prefix: &str, n: usize) {
    up.plan(&vec![Answer::Big(1000); n]);
    for i in 0..n {
        let k = format!("{prefix}{i}");
        let r = post(gw.url("/pay/f")).key(&k).send().await;
        assert_eq!((r.status, r.body.len()), (201, 1000));
        keys.push(k);
    }
}

const SMALL_STORE: &str = "  p: { max_bytes: 8KiB, max_response_bytes: 2KiB }\n";

/// A full memory store never loses the lock of a request in flight: a retry
/// still gets 409, not a second upstream call.
#[tokio::test]
async fn a_full_memory_store_keeps_in_flight_locks() {
    let up = Scripted::start().await;
    let gw = start(&config(SMALL_STORE, ROUTES), &up).await;
    let mut keys = Vec::new();
    fill(&gw, &up, &mut keys, "f", 40).await;
    up.plan(&[Answer::Held]);
    let held = tokio::spawn(post(gw.url("/pay/x")).key("X").body("b").send());
    up.wait_hits(41).await;
    fill(&gw, &up, &mut keys, "g", 40).await;
    assert_eq!(up.hits(), 81);
    let r = post(gw.url("/pay/x")).key("X").body("b").send().await;
    assert_eq!(
        r.status,
        409,
        "the in-flight lock was lost in a full store: {}",
        r.text()
    );
    r.assert_error(409, "idempotency_key_in_use");
    assert_eq!(up.hits(), 81);
    up.release();
    assert_fresh(&held.await.expect("held"), 41);
    gw.shutdown().await;
}

/// The memory store stays within max_bytes: of answers of 1000 bytes in
/// 8 KiB, eventually at most 8 are kept (each further write gives the store
/// a chance to evict).
#[tokio::test]
async fn the_memory_store_stays_within_max_bytes() {
    let up = Scripted::start().await;
    let gw = start(&config(SMALL_STORE, ROUTES), &up).await;
    let mut keys = Vec::new();
    fill(&gw, &up, &mut keys, "f", 40).await;
    let mut round = 0;
    wait_until("the store to be within max_bytes", async || {
        round += 1;
        fill(&gw, &up, &mut keys, &format!("h{round}-"), 1).await;
        let mut stored = 0;
        for k in &keys {
            if admin_get(&gw, &format!("/idempotency/pay/{k}"))
                .await
                .status
                == 200
            {
                stored += 1;
            }
        }
        if stored <= 8 {
            Ok(())
        } else {
            Err(format!("{stored} stored"))
        }
    })
    .await;
    gw.shutdown().await;
}

/// A Redis that accepts and never answers costs keyed requests the store
/// timeout only until the breaker opens; after three, each gets its
/// `on_store_error` answer at once, and a background probe puts the store back
/// in use once Redis answers again.
#[tokio::test]
async fn a_silent_redis_is_skipped_after_three_timeouts_and_probed_back() {
    let silent = BlackHole::start().await;
    let up = Scripted::start().await;
    let top = redis_block(silent.port, "200ms");
    let yaml = config_with("", &top, "  p: { store: redis }\n", ROUTES);
    let gw = start(&yaml, &up).await;

    let mut took = Vec::new();
    for i in 0..8 {
        let started = Instant::now();
        post(gw.url("/pay/s"))
            .key(&format!("s{i}"))
            .body("b")
            .send()
            .await
            .assert_error(503, "idempotency_store_unavailable");
        took.push(started.elapsed());
    }
    assert_only_the_first_three_waited(&took);
    assert_eq!(up.hits(), 0, "nothing went upstream without the guarantee");
    assert_eq!(count(&gw, "pay", "store_error").await, 8.0);

    // A real Redis answers on that port now: the probe closes the breaker.
    let port = silent.port;
    drop(silent);
    let Some(_redis) = RedisServer::start_on(port).await else {
        return;
    };
    let back = wait_until_within(
        Duration::from_secs(10),
        "the store to be used again",
        async || {
            let r = post(gw.url("/pay/s")).key("s-back").body("b").send().await;
            if r.status == 503 {
                Err(r.text())
            } else {
                Ok(r)
            }
        },
    )
    .await;
    assert_fresh(&back, 1);
    assert_replay_of(
        &retry_at_once(|| post(gw.url("/pay/s")).key("s-back").body("b"))
            .await
            .0,
        &back,
    );
    gw.shutdown().await;
}
