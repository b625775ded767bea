//! Shared helpers for the integration tests: loopback upstreams on 127.0.0.1:0,
//! the gateway started through the same `tollgate::build` as `main`, a small HTTP
//! client and a raw-TCP client for malformed requests.
//!
//! Every wait is bounded: a broken gateway makes a test fail, never hang.

pub mod auth;
pub mod dns;
pub mod redis;
/// Shared with the benches, which include it by path.
pub mod scale;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::access_log::LogFormat;
use tollgate::{App, BuildOptions};

/// The longest any single helper waits before failing the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// How often `wait_until` looks at its condition again.
pub const POLL: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------

/// What a test upstream does with each request.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with JSON: `server`, `method`, `path` (with query), `headers`,
    /// `body_bytes` (the body is counted as it streams, never buffered).
    Echo,
    /// A fixed status and body.
    Status(u16, &'static str),
    /// Reads the request head, then never answers (raw TCP).
    Hang,
    /// Waits, then echoes. (Echo also waits when the query has `delay_ms=N`.)
    Slow(Duration),
    /// 200 with a body of this many bytes, generated chunk by chunk.
    Stream(u64),
    /// Announces a 1000-byte body, sends 100 bytes, then resets (raw TCP).
    ResetMidBody,
}

/// A loopback upstream server counting the requests it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests received (heads read).
    hits: Arc<AtomicUsize>,
    /// Request body bytes received in total.
    body_bytes: Arc<AtomicU64>,
    /// Requests being served right now.
    active: Arc<AtomicUsize>,
    /// Path and query of every request received, in order.
    paths: Arc<Mutex<Vec<String>>>,
    /// Faults switched on and off by the test (see `Control`).
    pub control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

/// Faults a test can switch on any upstream while it runs. Requests to
/// `HEALTH_PATH` are health probes: counted apart (`health_hits`), never in
/// `hits`, answered 200 unless the upstream is down or `unhealthy`.
#[derive(Default)]
pub struct Control {
    /// Down: new connections are reset at once, requests on open ones get 503
    /// and the connection closed.
    pub down: std::sync::atomic::AtomicBool,
    /// The health endpoint answers 503 (traffic is still served).
    pub unhealthy: std::sync::atomic::AtomicBool,
    /// Answer this many next requests with `fail_status` instead of the behaviour.
    pub fail_next: AtomicUsize,
    pub fail_status: std::sync::atomic::AtomicU16,
    pub health_hits: AtomicUsize,
    /// Connections of `Hang` requests that the peer closed.
    pub hung_closed: AtomicUsize,
}

pub const HEALTH_PATH: &str = "/healthz";

impl Control {
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    pub fn set_unhealthy(&self, unhealthy: bool) {
        self.unhealthy.store(unhealthy, Ordering::SeqCst);
    }
    /// The next `n` requests get `status`.
    pub fn fail(&self, n: usize, status: u16) {
        self.fail_status.store(status, Ordering::SeqCst);
        self.fail_next.store(n, Ordering::SeqCst);
    }
    pub fn health_hits(&self) -> usize {
        self.health_hits.load(Ordering::SeqCst)
    }
    pub fn hung_closed(&self) -> usize {
        self.hung_closed.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &'static str, behavior: Behavior) -> Upstream {
        Upstream::start_on("127.0.0.1:0", name, behavior).await
    }

    /// `start` on a given address, e.g. `127.0.0.2:PORT` (all of 127.0.0.0/8
    /// is loopback on Linux): DNS answers can then name several upstreams on
    /// one port.
    pub async fn start_on(addr: &str, name: &'static str, behavior: Behavior) -> Upstream {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind upstream on {addr}: {e}"));
        let addr = listener.local_addr().expect("upstream addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let body_bytes = Arc::new(AtomicU64::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let control = Arc::new(Control::default());
        let state = Srv {
            control: control.clone(),
            paths: paths.clone(),
            name,
            behavior,
            hits: hits.clone(),
            body_bytes: body_bytes.clone(),
            active: active.clone(),
        };
        let task = tokio::spawn(async move {
            // Connections that hang are kept here so they stay open.
            let mut held = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if state.control.down.load(Ordering::SeqCst) {
                    // SO_LINGER 0: the close is a RST.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                    continue;
                }
                let state = state.clone();
                match state.behavior {
                    Behavior::Hang | Behavior::ResetMidBody => {
                        held.push(tokio::spawn(raw_upstream(stream, state)));
                    }
                    _ => {
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(state.serve(req).await) }
                            });
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            }
        });
        Upstream {
            addr,
            hits,
            body_bytes,
            active,
            paths,
            control,
            task,
        }
    }

    pub async fn echo(name: &'static str) -> Upstream {
        Upstream::start(name, Behavior::Echo).await
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().expect("paths lock").clone()
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// `127.0.0.1:PORT`, for the config.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }
}

/// An address where nothing listens: connections are refused.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

#[derive(Clone)]
struct Srv {
    control: Arc<Control>,
    name: &'static str,
    behavior: Behavior,
    hits: Arc<AtomicUsize>,
    body_bytes: Arc<AtomicU64>,
    active: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

impl Srv {
    async fn serve(&self, req: Request<Incoming>) -> Response<TestBody> {
        let c = &self.control;
        let status = |code: u16, body: &'static str| {
            let mut r = Response::new(full(body));
            *r.status_mut() = StatusCode::from_u16(code).expect("status");
            r
        };
        if req.uri().path() == HEALTH_PATH {
            c.health_hits.fetch_add(1, Ordering::SeqCst);
            if c.down.load(Ordering::SeqCst) || c.unhealthy.load(Ordering::SeqCst) {
                return status(503, "unhealthy");
            }
            return status(200, "ok");
        }
        if c.down.load(Ordering::SeqCst) {
            self.hits.fetch_add(1, Ordering::SeqCst);
            // Close the keep-alive connection too: the next request opens a
            // new one, which a down upstream resets.
            let mut r = status(503, "down");
            r.headers_mut()
                .insert(http::header::CONNECTION, "close".parse().expect("close"));
            return r;
        }
        if c.fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.hits.fetch_add(1, Ordering::SeqCst);
            let _ = self.drain(req.into_body()).await;
            let mut r = status(c.fail_status.load(Ordering::SeqCst), "injected failure");
            r.headers_mut()
                .insert("x-upstream", self.name.parse().expect("name"));
            return r;
        }
        self.paths.lock().expect("paths lock").push(
            req.uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
        );
        self.hits.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_add(1, Ordering::SeqCst);
        let resp = match &self.behavior {
            Behavior::Status(code, body) => {
                let _ = self.drain(req.into_body()).await;
                let mut r = Response::new(full(*body));
                *r.status_mut() = StatusCode::from_u16(*code).expect("status");
                r.headers_mut()
                    .insert("x-upstream", self.name.parse().expect("name"));
                r
            }
            Behavior::Slow(d) => {
                tokio::time::sleep(*d).await;
                self.echo(req).await
            }
            Behavior::Stream(n) => {
                let _ = self.drain(req.into_body()).await;
                let mut r = Response::new(GenBody::new(*n).boxed());
                r.headers_mut().insert(
                    http::header::CONTENT_LENGTH,
                    n.to_string().parse().expect("len"),
                );
                r
            }
            _ => {
                // `?delay_ms=N` holds this one request for N ms before echoing.
                let delay = req.uri().query().and_then(|q| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix("delay_ms="))
                        .and_then(|v| v.parse::<u64>().ok())
                });
                if let Some(ms) = delay {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                self.echo(req).await
            }
        };
        self.active.fetch_sub(1, Ordering::SeqCst);
        resp
    }

    /// Counts the body frame by frame; returns the count and whether it ended cleanly.
    async fn drain(&self, mut body: Incoming) -> (u64, bool) {
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        n += d.len() as u64;
                        self.body_bytes.fetch_add(d.len() as u64, Ordering::SeqCst);
                    }
                }
                Err(_) => return (n, false),
            }
        }
        (n, true)
    }

    async fn echo(&self, req: Request<Incoming>) -> Response<TestBody> {
        let (parts, body) = req.into_parts();
        let (n, complete) = self.drain(body).await;
        let mut headers = serde_json::Map::new();
        for (k, v) in &parts.headers {
            let v = Value::from(v.to_str().unwrap_or("<binary>"));
            match headers.get_mut(k.as_str()) {
                Some(Value::Array(a)) => a.push(v),
                Some(old) => *old = Value::Array(vec![old.clone(), v]),
                None => {
                    headers.insert(k.to_string(), v);
                }
            }
        }
        let json = serde_json::json!({
            "server": self.name,
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_bytes": n,
            "body_complete": complete,
        });
        let mut r = Response::new(full(serde_json::to_vec(&json).expect("json")));
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("ct"));
        r.headers_mut()
            .insert("x-upstream", self.name.parse().expect("name"));
        r
    }
}

/// Raw-TCP upstream behaviours that hyper cannot produce.
async fn raw_upstream(mut stream: TcpStream, state: Srv) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let path = line.split(' ').nth(1).unwrap_or("?").to_string();
    state.paths.lock().expect("paths lock").push(path);
    state.hits.fetch_add(1, Ordering::SeqCst);
    match state.behavior {
        Behavior::Hang => {
            // Keep the connection open without answering, until the peer leaves.
            let mut sink = [0u8; 4096];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            state.control.hung_closed.fetch_add(1, Ordering::SeqCst);
        }
        Behavior::ResetMidBody => {
            let head =
                b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/plain\r\n\r\n";
            let _ = stream.write_all(head).await;
            let _ = stream.write_all(&[b'x'; 100]).await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            // SO_LINGER 0: closing sends a RST instead of a FIN.
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        _ => {}
    }
}

/// A body of `remaining` bytes, produced 64 KiB at a time from one shared
/// buffer: constant memory whatever its size.
pub struct GenBody {
    remaining: u64,
    chunk: Bytes,
}

impl GenBody {
    pub fn new(len: u64) -> GenBody {
        GenBody {
            remaining: len,
            chunk: Bytes::from(vec![b'a'; 64 * 1024]),
        }
    }
}

impl Body for GenBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        let data = self.chunk.slice(..n as usize);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

// ---------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------

/// An access-log sink the test can read.
#[derive(Clone, Default)]
pub struct LogBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A running gateway.
pub struct Gateway {
    pub app: Option<App>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: LogBuf,
}

/// The server block every test config starts with; `extra_server` goes inside
/// `server:` (limits, trusted_proxies, shutdown_grace), indented by 2.
pub fn server_block(extra_server: &str) -> String {
    let mut s = String::from(
        "server:\n  listeners:\n    - name: http\n      bind: 127.0.0.1:0\n  admin:\n    bind: 127.0.0.1:0\n",
    );
    for line in extra_server.lines() {
        if !line.trim().is_empty() {
            s.push_str("  ");
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

impl Gateway {
    /// Starts the gateway from `yaml`. `${NAME}` placeholders are replaced from
    /// `vars` (e.g. `("UP", "127.0.0.1:4567")`).
    pub async fn start(yaml: &str, vars: &[(&str, String)]) -> Gateway {
        let gw = Gateway::start_unready(yaml, vars).await;
        gw.wait_ready().await;
        gw
    }

    /// Waits until `/readyz` says 200 (polled, never slept on).
    pub async fn wait_ready(&self) {
        wait_until("the gateway to become ready", async || {
            match get(&self.admin_url("/readyz")).await {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("/readyz is {}: {}", r.status, r.text())),
                Err(e) => Err(format!("/readyz: {e}")),
            }
        })
        .await;
    }

    /// Like `start`, without waiting for `/readyz` (for gateways that are
    /// expected not to be ready, e.g. while a JWKS is unreachable).
    pub async fn start_unready(yaml: &str, vars: &[(&str, String)]) -> Gateway {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let loaded = match tollgate::config::load_str_with_env(yaml, "test.yaml", &env) {
            Ok(l) => l,
            Err(e) => panic!("test config is invalid:\n{e}\n---\n{yaml}"),
        };
        let log = LogBuf::default();
        let app = tollgate::build(
            loaded,
            BuildOptions {
                access_log: Some(Box::new(log.clone())),
                log_format: LogFormat::Json,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
        let addr = app.listener_addr("http").expect("http listener");
        let admin = app.admin_addr().expect("admin listener");
        Gateway {
            app: Some(app),
            addr,
            admin,
            log,
        }
    }

    /// Starts the gateway from a config file, as `main` does: reloads re-read
    /// it, and with `debounce` it is watched for changes.
    pub async fn start_file(
        path: &std::path::Path,
        vars: &[(&str, String)],
        debounce: Option<Duration>,
    ) -> Gateway {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let env: tollgate::reload::EnvLookup =
            Arc::new(move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()));
        let loaded = match tollgate::config::load_file_with_env(path, &*env) {
            Ok(l) => l,
            Err(e) => panic!("test config is invalid:\n{e}"),
        };
        let log = LogBuf::default();
        let app = tollgate::build(
            loaded,
            BuildOptions {
                access_log: Some(Box::new(log.clone())),
                log_format: LogFormat::Json,
                config_file: Some(tollgate::reload::ConfigFile {
                    path: path.to_path_buf(),
                    env,
                }),
                watch_debounce: debounce,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
        Gateway::ready(app, log).await
    }

    async fn ready(app: App, log: LogBuf) -> Gateway {
        let addr = app.listener_addr("http").expect("http listener");
        let admin = app.admin_addr().expect("admin listener");
        let gw = Gateway {
            app: Some(app),
            addr,
            admin,
            log,
        };
        gw.wait_ready().await;
        gw
    }

    /// `POST /reload` on the admin API.
    pub async fn post_reload(&self) -> Resp {
        let req = Request::post(self.admin_url("/reload"))
            .body(empty())
            .expect("request");
        send(req).await.expect("POST /reload")
    }

    /// Reloads the running gateway from `yaml` (same placeholders as `start`).
    pub async fn reload(&self, yaml: &str, vars: &[(&str, String)]) {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let loaded = tollgate::config::load_str_with_env(yaml, "test.yaml", &env)
            .unwrap_or_else(|e| panic!("reload config is invalid:\n{e}"));
        self.app().reload(loaded).await.expect("reload compiles");
    }

    /// `GET /upstreams`, parsed.
    pub async fn upstreams(&self) -> Value {
        let r = get(&self.admin_url("/upstreams"))
            .await
            .expect("/upstreams");
        assert_eq!(r.status, 200);
        r.json()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().expect("app already shut down")
    }

    /// Every access-log line written so far, parsed.
    pub fn log_lines(&self) -> Vec<Value> {
        let buf = self.log.0.lock().expect("log lock").clone();
        String::from_utf8_lossy(&buf)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
            .collect()
    }

    /// The raw access log text.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&self.log.0.lock().expect("log lock")).into_owned()
    }

    /// Waits until at least `n` log lines exist (the log is written by a
    /// background thread), and returns them.
    pub async fn wait_log_lines(&self, n: usize) -> Vec<Value> {
        wait_until(format!("{n} access-log lines"), async || {
            let lines = self.log_lines();
            if lines.len() >= n {
                Ok(lines)
            } else {
                Err(format!("got {}: {lines:?}", lines.len()))
            }
        })
        .await
    }

    /// Waits for the log line of the request with this id.
    pub async fn wait_log_for(&self, request_id: &str) -> Value {
        wait_until(
            format!("the access-log line of request id {request_id}"),
            async || {
                self.log_lines()
                    .into_iter()
                    .find(|l| l["request_id"] == request_id)
                    .ok_or_else(|| format!("the log: {}", self.log_text()))
            },
        )
        .await
    }

    pub async fn metrics(&self) -> String {
        let r = get(&self.admin_url("/metrics")).await.expect("metrics");
        assert_eq!(r.status, 200);
        r.text()
    }

    /// Waits until `n` client connections of the `http` listener are parked
    /// (`tollgate_parked_connections`); they park after a second of idling.
    pub async fn wait_parked(&self, n: u32) {
        self.wait_parked_on("http", n).await;
    }

    /// `wait_parked` for the listener named `listener`.
    pub async fn wait_parked_on(&self, listener: &str, n: u32) {
        let series = format!(r#"tollgate_parked_connections{{listener="{listener}"}}"#);
        wait_until(
            format!("{n} parked connections on {listener}"),
            async || {
                let now = metric(&self.metrics().await, &series).unwrap_or(0.0);
                if now == f64::from(n) {
                    Ok(())
                } else {
                    Err(format!("{now} parked"))
                }
            },
        )
        .await;
    }

    /// `tollgate_config_reloads_total` as (successes, failures).
    pub async fn reload_counts(&self) -> (f64, f64) {
        let m = self.metrics().await;
        let get = |r: &str| {
            metric(
                &m,
                &format!(r#"tollgate_config_reloads_total{{result="{r}"}}"#),
            )
            .unwrap_or(0.0)
        };
        (get("success"), get("failure"))
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            tokio::time::timeout(Duration::from_secs(30), app.shutdown())
                .await
                .expect("shutdown took too long");
        }
    }
}

/// The durations of requests sent one after the other through a store that
/// never answers (a `BlackHole`, store timeout 200 ms): before the store's
/// breaker opened, calls waited for it (or failed at once while the client
/// reconnected); after three failures, no request waits any more.
pub fn assert_only_the_first_three_waited(took: &[Duration]) {
    let waited = |d: &Duration| *d >= Duration::from_millis(150);
    assert!(
        took[..3].iter().any(waited),
        "the store was never waited on: {took:?}"
    );
    assert!(
        !took[3..].iter().any(waited),
        "requests still waited: {took:?}"
    );
}

/// Replaces a config file the way editors and deploy tools do: write a
/// temporary file beside it, then rename it over the original.
pub fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_file_name(".tollgate.yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The value of one sample line of the exposition, e.g.
/// `metric(text, r#"tollgate_requests_total{method="GET",route="r",status="200"}"#)`.
/// Label order in `series` does not matter.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    let (name, labels) = split_series(series);
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        let (n, ls) = split_series(s);
        (n == name && ls == labels).then(|| v.parse().ok())?
    })
}

fn split_series(s: &str) -> (String, Vec<String>) {
    match s.split_once('{') {
        None => (s.trim().to_string(), Vec::new()),
        Some((name, rest)) => {
            let inner = rest.trim_end().trim_end_matches('}');
            let mut labels: Vec<String> = split_labels(inner);
            labels.sort();
            (name.to_string(), labels)
        }
    }
}

fn split_labels(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_str = false;
    let mut esc = false;
    for c in s.chars() {
        if esc {
            cur.push(c);
            esc = false;
            continue;
        }
        match c {
            '\\' => {
                esc = true;
                cur.push(c);
            }
            '"' => {
                in_str = !in_str;
                cur.push(c);
            }
            ',' if !in_str => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

/// A received response, body collected.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a SPEC §4 error body with this status and code; returns the body.
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "status; body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "content-type of the error"
        );
        let j = self.json();
        assert_eq!(j["error"], code, "error code in {j}");
        assert!(
            j["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message in {j}"
        );
        let id = j["request_id"].as_str().expect("request_id");
        assert!(!id.is_empty());
        assert_eq!(
            self.header("x-request-id"),
            Some(id),
            "x-request-id matches the body"
        );
        j
    }
}

/// Sends one request on a fresh HTTP/1.1 connection; the whole exchange is
/// bounded by `WAIT`.
pub async fn send<B>(req: Request<B>) -> Result<Resp, String>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    send_within(req, WAIT).await
}

pub async fn send_within<B>(req: Request<B>, limit: Duration) -> Result<Resp, String>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::time::timeout(limit, send_inner(req))
        .await
        .map_err(|_| format!("no complete response within {limit:?}"))?
}

async fn send_inner<B>(mut req: Request<B>) -> Result<Resp, String>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let authority = req.uri().authority().expect("absolute URI").clone();
    let stream = TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut().insert(
            http::header::HOST,
            authority.as_str().parse().expect("host"),
        );
    }
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *req.uri_mut() = pq.parse().expect("path");
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    collect(resp).await
}

/// One client connection kept open for several requests (keep-alive).
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authority: String,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn {
            sender,
            authority: addr.to_string(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<Resp, String> {
        let authority = self.authority.clone();
        self.get_host(path, &authority).await
    }

    /// `GET path` with this `Host` header, on the kept-alive connection.
    /// `GET path` with these headers (a `Host` of the gateway's address unless
    /// one is given); panics when no answer comes in time.
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut b = Request::get(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header(http::header::HOST, self.authority.as_str());
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(empty()).expect("request");
        tokio::time::timeout(WAIT, async {
            self.sender.ready().await.expect("connection ready");
            let resp = self.sender.send_request(req).await.expect("request");
            collect(resp).await.expect("response body")
        })
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no response in time"))
    }

    pub async fn get_host(&mut self, path: &str, host: &str) -> Result<Resp, String> {
        let req = Request::get(path)
            .header(http::header::HOST, host)
            .body(empty())
            .expect("request");
        tokio::time::timeout(WAIT, async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("ready: {e}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            collect(resp).await
        })
        .await
        .map_err(|_| "no response in time".to_string())?
    }
}

pub async fn collect(resp: Response<Incoming>) -> Result<Resp, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

pub async fn get(url: &str) -> Result<Resp, String> {
    send(Request::get(url).body(empty()).expect("request")).await
}

/// `GET url` with extra headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Resp {
    request_with("GET", url, headers, empty()).await
}

/// `method url` with extra headers and a body; panics when it gets no answer.
pub async fn request_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Full<Bytes>,
) -> Resp {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(body).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

pub fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

pub fn body(b: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(b.into())
}

// ---------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------

/// What a raw exchange produced.
#[derive(Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// The server closed (EOF or reset) before the wait was over.
    pub closed: bool,
    pub elapsed: Duration,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the first response, if any.
    pub fn status(&self) -> Option<u16> {
        let t = self.text();
        let line = t.lines().next()?;
        line.split(' ').nth(1)?.parse().ok()
    }

    /// How many HTTP responses (status lines) the reply holds.
    pub fn responses(&self) -> usize {
        self.text().matches("HTTP/1.1 ").count()
    }
}

/// Connects, sends `bytes`, and reads until the server closes or `wait` passes.
/// POSTs to `path` a head announcing 100 body bytes, sends 10 and stalls:
/// asserts that the answer is 408 `request_timeout` after at least `limit`
/// (and well before the 3 s the client waits).
pub async fn assert_stalled_body_times_out(addr: SocketAddr, path: &str, limit: Duration) {
    let started = std::time::Instant::now();
    let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789");
    let reply = raw(addr, head.as_bytes(), Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert_eq!(reply.status(), Some(408), "{}", reply.text());
    assert!(
        reply.text().contains("\"request_timeout\""),
        "{}",
        reply.text()
    );
    assert!(
        took >= limit && took < limit + Duration::from_millis(1200),
        "{took:?}"
    );
}

pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> RawReply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_until_close(&mut s, wait).await
}

/// Reads until the peer closes or `wait` passes.
pub async fn read_until_close(s: &mut TcpStream, wait: Duration) -> RawReply {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    RawReply {
        bytes: out,
        closed,
        elapsed: started.elapsed(),
    }
}

/// Reads one complete HTTP/1.1 response with a Content-Length (or none) from a
/// raw stream, within `WAIT`; returns its text.
pub async fn read_one_response(s: &mut TcpStream) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if out.len() >= end + 4 + len {
                return String::from_utf8_lossy(&out[..end + 4 + len]).into_owned();
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!(
                "no complete response in time; got {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "connection closed before a complete response; got {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

// ---------------------------------------------------------------------------
// A process of its own
// ---------------------------------------------------------------------------

/// Set in the child process that `ran_in_own_process` starts.
const ALONE: &str = "TOLLGATE_TEST_ALONE";

/// For tests that measure the whole process (its RSS): the other tests of
/// this binary, running beside them, would move the figure. In the test
/// process this runs the test `name` (its path here, e.g.
/// `streaming::large_upload_streams_in_constant_memory`) alone in a child
/// process of this binary, fails if it fails, and returns true: the caller
/// returns. In that child it returns false: the caller runs the test.
pub async fn ran_in_own_process(name: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return false;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let child = tokio::process::Command::new(exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE, "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish in its own process within 120s"))
        .expect("run the test binary");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // Shown with the test's result, as if it had run here.
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(out.status.success(), "{name} failed in its own process");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "no test named {name} ran in the child process"
    );
    true
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Lets `d` pass on the tokio clock at once, instead of sleeping through it:
/// for a test that waits only for a deadline the code under test reads from
/// that clock (a circuit's open period, a refetch interval), on the
/// current-thread runtime the gateway runs on.
///
/// The clock is paused only inside this call, and resumes `d` ahead: any
/// timer due within `d` fires now, so call it only when nothing is in flight.
/// Deadlines kept on the std clock (the connection watchdog's) do not move.
/// A test paused throughout (`start_paused`) is not deterministic with real
/// sockets: whenever the runtime idles with no I/O ready yet (a reply from
/// another thread or process, loopback delivery the kernel deferred), the
/// paused clock jumps to the next timer and fires a timeout spuriously.
pub async fn skip(d: Duration) {
    tokio::time::pause();
    tokio::time::advance(d).await;
    tokio::time::resume();
}

/// What a `wait_until` condition answers: `true`, `Some(v)` or `Ok(v)` when it
/// holds (the wait returns `()` or `v`); `false`, `None` or `Err(state)` when
/// not yet, where `state` says what was seen instead (shown if the wait fails).
pub trait Polled {
    type Output;
    fn polled(self) -> Result<Self::Output, String>;
}

impl Polled for bool {
    type Output = ();
    fn polled(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

impl<T> Polled for Option<T> {
    type Output = T;
    fn polled(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: std::fmt::Display> Polled for Result<T, E> {
    type Output = T;
    fn polled(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Polls `cond` every `POLL` until it holds and returns what it yielded;
/// after `WAIT`, panics with what it waited for (`what`) and the last state
/// seen. The one way the tests wait for something to happen.
pub async fn wait_until<R: Polled>(
    what: impl std::fmt::Display,
    cond: impl AsyncFnMut() -> R,
) -> R::Output {
    wait_until_within(WAIT, what, cond).await
}

/// `wait_until` with its own limit instead of `WAIT`. The deadline is on the
/// real clock, so a paused tokio clock can neither stretch nor cut it.
pub async fn wait_until_within<R: Polled>(
    limit: Duration,
    what: impl std::fmt::Display,
    mut cond: impl AsyncFnMut() -> R,
) -> R::Output {
    let deadline = Instant::now() + limit;
    loop {
        match cond().await.polled() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}{}{last}",
                if last.is_empty() { "" } else { "; last seen: " }
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Serves `handler` on `listener` (HTTP/1.1 and h2c) for the rest of the
/// test: the plain servers that play an authorization service or an IdP.
pub fn serve_fn<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// Asserts that `yaml` is refused as a config with an error containing
/// `want`, and returns the whole error text.
pub fn assert_refused(yaml: &str, want: &str) -> String {
    let Err(e) = tollgate::config::load_str(yaml, "t.yaml") else {
        panic!("accepted:\n{yaml}");
    };
    let e = e.to_string();
    assert!(e.contains(want), "{e}\n--- want: {want}");
    e
}
