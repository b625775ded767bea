//! HTTP/2 upstreams (`protocol: h2`) and gRPC through the gateway.
//!
//! The upstream is an HTTP/2 server in this process (h2c, or TLS with ALPN h2)
//! that serves a small gRPC echo service with tonic's server glue and a plain
//! `/plain/...` path; the clients are hyper's HTTP/2 client and tonic's
//! `client::Grpc` over it, speaking h2c (prior knowledge) to the gateway.
//! Messages are hand-written prost structs: no protoc, no build script.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::support::{self, Gateway, server_block, wait_until};

// ---- messages and the echo service ----

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

fn msg(text: &str, n: u32) -> Msg {
    Msg {
        text: text.into(),
        n,
    }
}

type Codec = ProstCodec<Msg, Msg>;

/// A `tower_service::Service` from a closure (what tonic's server glue calls).
#[derive(Clone)]
struct Svc<F>(F);

impl<F, Fut, Req, Resp> tower_service::Service<Req> for Svc<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>>,
{
    type Response = Resp;
    type Error = Status;
    type Future = Fut;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Req) -> Fut {
        (self.0)(req)
    }
}

type BoxStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Msg, Status>> + Send>>;

/// What the test upstream saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    /// Connections that ended (the gateway closed them, or they failed).
    closed: AtomicUsize,
    requests: AtomicUsize,
    /// (:authority, host header, te header) of each request.
    heads: Mutex<Vec<(String, String, String)>>,
}

/// The upstream's answer to one request: gRPC echo methods under `/echo.Echo/`,
/// anything else a plain text answer naming the path.
async fn upstream_service(
    req: Request<Incoming>,
    seen: Arc<Seen>,
) -> Result<Response<tonic::body::Body>, Infallible> {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let head = (
        req.uri()
            .authority()
            .map_or("-".to_string(), |a| a.to_string()),
        header("host"),
        header("te"),
    );
    seen.heads.lock().unwrap().push(head);
    let mut grpc = tonic::server::Grpc::new(Codec::default());
    let resp = match req.uri().path() {
        "/echo.Echo/Unary" => {
            grpc.unary(
                Svc(|r: tonic::Request<Msg>| async move {
                    let m = r.into_inner();
                    Ok(tonic::Response::new(msg(&format!("echo {}", m.text), m.n)))
                }),
                req,
            )
            .await
        }
        "/echo.Echo/Slow" => {
            grpc.unary(
                Svc(|r: tonic::Request<Msg>| async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(tonic::Response::new(r.into_inner()))
                }),
                req,
            )
            .await
        }
        "/echo.Echo/Fail" => {
            grpc.unary(
                Svc(|_: tonic::Request<Msg>| async move {
                    Err::<tonic::Response<Msg>, _>(Status::failed_precondition(
                        "stock is 0% — über-sad",
                    ))
                }),
                req,
            )
            .await
        }
        "/echo.Echo/Count" => {
            grpc.server_streaming(
                Svc(|r: tonic::Request<Msg>| async move {
                    let m = r.into_inner();
                    let items: Vec<Result<Msg, Status>> =
                        (0..m.n).map(|i| Ok(msg(&m.text, i))).collect();
                    Ok(tonic::Response::new(
                        Box::pin(tokio_stream::iter(items)) as BoxStream
                    ))
                }),
                req,
            )
            .await
        }
        "/echo.Echo/Sum" => {
            grpc.client_streaming(
                Svc(|r: tonic::Request<tonic::Streaming<Msg>>| async move {
                    let mut stream = r.into_inner();
                    let (mut total, mut texts) = (0, Vec::new());
                    while let Some(m) = stream.next().await {
                        let m = m?;
                        total += m.n;
                        texts.push(m.text);
                    }
                    Ok(tonic::Response::new(msg(&texts.join(","), total)))
                }),
                req,
            )
            .await
        }
        "/echo.Echo/Chat" => {
            grpc.streaming(
                Svc(|r: tonic::Request<tonic::Streaming<Msg>>| async move {
                    let stream = r
                        .into_inner()
                        .map(|m| m.map(|m| msg(&m.text.to_uppercase(), m.n)));
                    Ok(tonic::Response::new(Box::pin(stream) as BoxStream))
                }),
                req,
            )
            .await
        }
        path => {
            let mut resp = Response::new(tonic::body::Body::new(
                Full::new(Bytes::from(format!("plain {path}"))).map_err(|e| match e {}),
            ));
            resp.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            resp
        }
    };
    Ok(resp)
}

/// An HTTP/2-only upstream on 127.0.0.1:0, plain (h2c) or behind `tls`.
async fn h2_upstream(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            s.connections.fetch_add(1, Ordering::Relaxed);
            let (s, tls) = (s.clone(), tls.clone());
            let closed = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| upstream_service(req, s.clone()));
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                    }
                }
                closed.closed.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    (addr, seen)
}

// ---- clients ----

/// An h2c (prior knowledge) connection to the gateway.
async fn h2_client(addr: SocketAddr) -> SendRequest<tonic::body::Body> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// tonic's client over one hyper HTTP/2 connection.
#[derive(Clone)]
struct Channel(SendRequest<tonic::body::Body>);

impl tower_service::Service<Request<tonic::body::Body>> for Channel {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, hyper::Error>> + Send>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

async fn grpc_client(gw: &Gateway) -> tonic::client::Grpc<Channel> {
    let origin: Uri = format!("http://grpc.test:{}", gw.addr.port())
        .parse()
        .unwrap();
    tonic::client::Grpc::with_origin(Channel(h2_client(gw.addr).await), origin)
}

async fn unary(
    client: &mut tonic::client::Grpc<Channel>,
    req: tonic::Request<Msg>,
    path: &'static str,
) -> Result<tonic::Response<Msg>, Status> {
    client.ready().await.unwrap();
    client
        .unary(
            req,
            http::uri::PathAndQuery::from_static(path),
            Codec::default(),
        )
        .await
}

/// Opens an `/echo.Echo/Chat` stream with `metadata`, sends "first" and
/// checks its echo: the sender and the stream of replies.
async fn chat(
    client: &mut tonic::client::Grpc<Channel>,
    metadata: &[(&'static str, &str)],
) -> (tokio::sync::mpsc::Sender<Msg>, tonic::Streaming<Msg>) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    for (name, value) in metadata {
        req.metadata_mut().insert(*name, value.parse().unwrap());
    }
    client.ready().await.unwrap();
    tx.send(msg("first", 0)).await.unwrap();
    let resp = client
        .streaming(
            req,
            http::uri::PathAndQuery::from_static("/echo.Echo/Chat"),
            Codec::default(),
        )
        .await
        .unwrap();
    let mut replies = resp.into_inner();
    assert_eq!(replies.message().await.unwrap(), Some(msg("FIRST", 0)));
    (tx, replies)
}

// ---- gateway configs ----

fn h2_yaml(upstream: &str, extra_top: &str, routes: &str) -> String {
    format!(
        "{}upstreams:\n  grpc:\n    protocol: h2\n{upstream}\n{extra_top}routes:\n{routes}",
        server_block("")
    )
}

const ALL: &str = "  - { name: all, match: { path_prefix: / }, upstream: grpc }\n";

async fn h2c_gateway(routes: &str, extra_top: &str) -> (Gateway, Arc<Seen>) {
    let (addr, seen) = h2_upstream(None).await;
    let yaml = h2_yaml("    targets: [{ url: 'http://${UP}' }]", extra_top, routes);
    let gw = Gateway::start(&yaml, &[("UP", addr.to_string())]).await;
    (gw, seen)
}

async fn plain_get(
    sender: &mut SendRequest<tonic::body::Body>,
    gw: &Gateway,
    path: &str,
) -> (u16, String) {
    let req = Request::get(format!("http://plain.test:{}{path}", gw.addr.port()))
        .body(tonic::body::Body::empty())
        .unwrap();
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

// ---- HTTP/2 upstreams ----

async fn h2c_gateway_with(upstream_extra: &str) -> (Gateway, Arc<Seen>) {
    let (addr, seen) = h2_upstream(None).await;
    let targets = format!("    targets: [{{ url: 'http://${{UP}}' }}]\n{upstream_extra}");
    let yaml = h2_yaml(targets.trim_end(), "", ALL);
    let gw = Gateway::start(&yaml, &[("UP", addr.to_string())]).await;
    (gw, seen)
}

#[tokio::test]
async fn an_idle_h2_upstream_connection_is_closed_after_timeouts_idle() {
    let (gw, seen) = h2c_gateway_with("    timeouts: { idle: 300ms }").await;
    let mut client = h2_client(gw.addr).await;
    assert_eq!(plain_get(&mut client, &gw, "/a").await.0, 200);
    assert_eq!(plain_get(&mut client, &gw, "/b").await.0, 200);
    assert_eq!(seen.connections.load(Ordering::Relaxed), 1);
    // Nothing uses it: the sweeper closes it (within 1.5 x the idle time).
    wait_until("the idle upstream connection to close", async || {
        seen.closed.load(Ordering::Relaxed) == 1
    })
    .await;
    // The next request opens a new one.
    assert_eq!(plain_get(&mut client, &gw, "/c").await.0, 200);
    assert_eq!(seen.connections.load(Ordering::Relaxed), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_h2_upstream_connection_in_use_is_not_closed_as_idle() {
    let (gw, seen) = h2c_gateway_with("    timeouts: { idle: 200ms }").await;
    let mut client = h2_client(gw.addr).await;
    // Requests closer together than the idle time keep one connection.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(900) {
        assert_eq!(plain_get(&mut client, &gw, "/a").await.0, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.connections.load(Ordering::Relaxed), 1);
    assert_eq!(seen.closed.load(Ordering::Relaxed), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn max_idle_per_target_zero_closes_the_h2_connection_after_its_last_stream() {
    let (gw, seen) = h2c_gateway_with("    pool: { max_idle_per_target: 0 }").await;
    let mut client = h2_client(gw.addr).await;
    assert_eq!(plain_get(&mut client, &gw, "/a").await.0, 200);
    wait_until(
        "the connection to close after its only stream",
        async || seen.closed.load(Ordering::Relaxed) == 1,
    )
    .await;
    assert_eq!(plain_get(&mut client, &gw, "/b").await.0, 200);
    assert_eq!(seen.connections.load(Ordering::Relaxed), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn h2c_upstream_multiplexes_concurrent_requests_over_one_connection() {
    let (gw, seen) = h2c_gateway(ALL, "").await;
    let mut tasks = Vec::new();
    // Two client connections, 25 requests each, all in flight at once.
    for c in 0..2 {
        let sender = h2_client(gw.addr).await;
        for i in 0..25 {
            let mut sender = sender.clone();
            let port = gw.addr.port();
            tasks.push(tokio::spawn(async move {
                let req = Request::get(format!("http://plain.test:{port}/plain/{c}/{i}"))
                    .body(tonic::body::Body::empty())
                    .unwrap();
                sender.ready().await.unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(status, 200);
                assert_eq!(body, format!("plain /plain/{c}/{i}"));
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(seen.requests.load(Ordering::Relaxed), 50);
    let conns = seen.connections.load(Ordering::Relaxed);
    assert_eq!(
        conns, 1,
        "50 concurrent requests share one upstream connection"
    );
    // The client's authority reaches the upstream as :authority, not as Host.
    for (authority, host, _) in seen.heads.lock().unwrap().iter() {
        assert_eq!(authority, &format!("plain.test:{}", gw.addr.port()));
        assert_eq!(host, "-");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn an_h2_upstream_serves_http1_clients_and_a_host_rewrite_is_the_authority() {
    let routes = "  - { name: r, match: { path_prefix: /rw }, upstream: grpc, rewrite: { host: internal.svc } }\n".to_string() + ALL;
    let (gw, seen) = h2c_gateway(&routes, "").await;
    let r = support::get(&gw.url("/plain/h1")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "plain /plain/h1");
    let r = support::get(&gw.url("/rw/x")).await.unwrap();
    assert_eq!(r.status, 200);
    let heads = seen.heads.lock().unwrap().clone();
    assert_eq!(heads[1].0, "internal.svc");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_new_connection_is_made_when_the_upstream_closed_the_old_one() {
    // The upstream goes away and comes back on the same port.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve_one = |listener: TcpListener| {
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"one"))))
            });
            // Serves one connection, then closes it (GOAWAY) after one request.
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            listener
        })
    };
    let first = serve_one(listener);
    let yaml = h2_yaml("    targets: [{ url: 'http://${UP}' }]", "", ALL);
    let gw = Gateway::start(&yaml, &[("UP", addr.to_string())]).await;
    assert_eq!(support::get(&gw.url("/a")).await.unwrap().text(), "one");
    let listener = first.await.unwrap();
    let _second = serve_one(listener);
    let r = support::get(&gw.url("/b")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "one");
    gw.shutdown().await;
}

// ---- TLS + ALPN ----

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A CA (written to a PEM file) and a TLS acceptor for 127.0.0.1 offering `alpn`.
fn tls_acceptor(
    dir: &tempfile::TempDir,
    alpn: &[&[u8]],
) -> (tokio_rustls::TlsAcceptor, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "grpc-test-ca");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key_der)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca_path)
}

#[tokio::test]
async fn https_upstream_negotiates_h2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, ca) = tls_acceptor(&dir, &[b"h2"]);
    let (addr, seen) = h2_upstream(Some(acceptor)).await;
    let yaml = h2_yaml(
        "    targets: [{ url: 'https://${UP}' }]\n    tls: { ca: '${CA}' }",
        "",
        ALL,
    );
    let gw = Gateway::start(
        &yaml,
        &[("UP", addr.to_string()), ("CA", ca.display().to_string())],
    )
    .await;
    let mut client = grpc_client(&gw).await;
    let resp = unary(
        &mut client,
        tonic::Request::new(msg("tls", 7)),
        "/echo.Echo/Unary",
    )
    .await
    .unwrap();
    assert_eq!(resp.into_inner(), msg("echo tls", 7));
    let mut sender = h2_client(gw.addr).await;
    for i in 0..3 {
        assert_eq!(
            plain_get(&mut sender, &gw, &format!("/plain/{i}")).await.0,
            200
        );
    }
    assert_eq!(seen.connections.load(Ordering::Relaxed), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_https_upstream_without_h2_in_alpn_is_a_502() {
    // A server without ALPN completes the handshake; the gateway then refuses
    // to guess that it speaks HTTP/2. (One offering only http/1.1 already
    // fails the handshake with a no_application_protocol alert.)
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, ca) = tls_acceptor(&dir, &[]);
    let (addr, seen) = h2_upstream(Some(acceptor)).await;
    let yaml = h2_yaml(
        "    targets: [{ url: 'https://${UP}' }]\n    tls: { ca: '${CA}' }",
        "",
        ALL,
    );
    let gw = Gateway::start(
        &yaml,
        &[("UP", addr.to_string()), ("CA", ca.display().to_string())],
    )
    .await;
    let r = support::get(&gw.url("/plain/x")).await.unwrap();
    r.assert_error(502, "upstream_unavailable");
    assert_eq!(seen.requests.load(Ordering::Relaxed), 0);
    gw.shutdown().await;
}

// ---- gRPC passthrough ----

#[tokio::test]
async fn grpc_unary_and_server_client_bidi_streaming_pass_through() {
    let (gw, seen) = h2c_gateway(ALL, "").await;
    let mut client = grpc_client(&gw).await;

    // Unary.
    let resp = unary(
        &mut client,
        tonic::Request::new(msg("hi", 1)),
        "/echo.Echo/Unary",
    )
    .await
    .unwrap();
    assert_eq!(resp.into_inner(), msg("echo hi", 1));
    let (_, _, te) = seen.heads.lock().unwrap()[0].clone();
    assert_eq!(te, "trailers", "TE: trailers must reach the upstream");

    // Server streaming: 20 messages, then the OK trailers.
    client.ready().await.unwrap();
    let resp = client
        .server_streaming(
            tonic::Request::new(msg("tick", 20)),
            http::uri::PathAndQuery::from_static("/echo.Echo/Count"),
            Codec::default(),
        )
        .await
        .unwrap();
    let mut stream = resp.into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.n);
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // Client streaming.
    client.ready().await.unwrap();
    let items = tokio_stream::iter(vec![msg("a", 1), msg("b", 2), msg("c", 3)]);
    let resp = client
        .client_streaming(
            tonic::Request::new(items),
            http::uri::PathAndQuery::from_static("/echo.Echo/Sum"),
            Codec::default(),
        )
        .await
        .unwrap();
    assert_eq!(resp.into_inner(), msg("a,b,c", 6));

    // Bidi: each answer comes back before the next message is sent, so
    // nothing along the way buffers the stream.
    let (tx, mut replies) = chat(&mut client, &[]).await;
    for i in 1..5 {
        tx.send(msg(&format!("m{i}"), i)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("a reply per message while the stream is open")
            .unwrap();
        assert_eq!(reply, Some(msg(&format!("M{i}"), i)));
    }
    drop(tx);
    assert_eq!(replies.message().await.unwrap(), None);
    let trailers = replies.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // Every call above shared one upstream connection.
    assert_eq!(seen.connections.load(Ordering::Relaxed), 1);
    gw.shutdown().await;
}

/// A bidi stream whose client pauses longer than `server.limits.body_read_timeout`
/// is reset, unless its route sets a longer `body_read_timeout` of its own:
/// the per-route stream idle limit for long-lived calls.
#[tokio::test]
async fn a_route_body_read_timeout_keeps_an_idle_stream_open() {
    let (addr, _seen) = h2_upstream(None).await;
    let yaml = server_block("limits: { body_read_timeout: 300ms }")
        + "upstreams:\n  grpc:\n    protocol: h2\n    targets: [{ url: 'http://${UP}' }]\n"
        + "routes:\n"
        + "  - { name: long, match: { path_prefix: /, headers: { x-stream: long } }, upstream: grpc, body_read_timeout: 10s }\n"
        + ALL;
    let gw = Gateway::start(&yaml, &[("UP", addr.to_string())]).await;

    // Sends one message, waits for its echo, stays silent for `pause`, then
    // sends another: whether the stream still answers.
    async fn survives(gw: &Gateway, metadata: &[(&'static str, &str)], pause: Duration) -> bool {
        let mut client = grpc_client(gw).await;
        let (tx, mut replies) = chat(&mut client, metadata).await;
        tokio::time::sleep(pause).await;
        if tx.send(msg("again", 1)).await.is_err() {
            return false;
        }
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("an answer or an error, not silence");
        matches!(reply, Ok(Some(m)) if m == msg("AGAIN", 1))
    }

    let pause = Duration::from_millis(900);
    assert!(
        !survives(&gw, &[], pause).await,
        "the server's 300 ms body_read_timeout resets a silent stream"
    );
    assert!(
        survives(&gw, &[("x-stream", "long")], pause).await,
        "the route's 10 s body_read_timeout keeps it"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_error_status_arrives_intact() {
    let (gw, _seen) = h2c_gateway(ALL, "").await;
    let mut client = grpc_client(&gw).await;
    let err = unary(
        &mut client,
        tonic::Request::new(msg("x", 0)),
        "/echo.Echo/Fail",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "stock is 0% — über-sad");
    // Not a gateway error: the log shows the upstream's 200 and no error code.
    let line = &gw.wait_log_lines(1).await[0];
    assert_eq!(line["status"], 200);
    assert!(line["error"].is_null(), "{line}");
    gw.shutdown().await;
}

// ---- gateway-made gRPC errors ----

async fn status_of(gw: &Gateway, path: &'static str, req: tonic::Request<Msg>) -> Status {
    let mut client = grpc_client(gw).await;
    unary(&mut client, req, path).await.unwrap_err()
}

/// The raw answer to a gRPC POST: a trailers-only response.
async fn raw_grpc_post(gw: &Gateway, path: &str) -> Response<Incoming> {
    let mut sender = h2_client(gw.addr).await;
    let req = Request::post(format!("http://grpc.test:{}{path}", gw.addr.port()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .unwrap();
    sender.ready().await.unwrap();
    sender.send_request(req).await.unwrap()
}

#[tokio::test]
async fn no_route_is_unimplemented_as_a_trailers_only_answer() {
    let routes = "  - { name: only, match: { path_prefix: /echo.Echo/ }, upstream: grpc }\n";
    let (gw, seen) = h2c_gateway(routes, "").await;
    let resp = raw_grpc_post(&gw, "/other.Svc/Call").await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "12");
    assert_eq!(h["grpc-message"], "no route matches this request");
    assert!(h.contains_key("x-request-id"));
    assert!(
        http_body::Body::is_end_stream(resp.body()),
        "no body, no trailers frame"
    );

    let err = status_of(&gw, "/nope.Nope/X", tonic::Request::new(msg("x", 0))).await;
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(seen.requests.load(Ordering::Relaxed), 0);

    // Logs and metrics record the status the gateway meant.
    let line = &gw.wait_log_lines(2).await[0];
    assert_eq!(line["status"], 404);
    assert_eq!(line["error"], "no_route");
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tollgate_requests_total") && l.contains("status=\"404\"")),
        "{metrics}"
    );
    // A plain client still gets the JSON error.
    support::get(&gw.url("/other"))
        .await
        .unwrap()
        .assert_error(404, "no_route");
    gw.shutdown().await;
}

#[tokio::test]
async fn auth_failure_is_unauthenticated() {
    let top =
        "auth:\n  api_keys:\n    partners:\n      keys:\n        - { id: acme, key: s3cret }\n";
    let routes = "  - { name: keyed, match: { path_prefix: / }, upstream: grpc, auth: ['api_key:partners'] }\n";
    let (gw, seen) = h2c_gateway(routes, top).await;
    let err = status_of(&gw, "/echo.Echo/Unary", tonic::Request::new(msg("x", 0))).await;
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "credentials are required");
    // WWW-Authenticate stays on the gRPC answer.
    let resp = raw_grpc_post(&gw, "/echo.Echo/Unary").await;
    assert_eq!(resp.headers()["grpc-status"], "16");
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(seen.requests.load(Ordering::Relaxed), 0);

    let mut req = tonic::Request::new(msg("x", 0));
    req.metadata_mut()
        .insert("x-api-key", "s3cret".parse().unwrap());
    let mut client = grpc_client(&gw).await;
    let resp = unary(&mut client, req, "/echo.Echo/Unary").await.unwrap();
    assert_eq!(resp.into_inner().text, "echo x");
    gw.shutdown().await;
}

#[tokio::test]
async fn rate_limit_is_resource_exhausted_with_retry_after_and_logged_as_429() {
    let top = "rate_limits:\n  one:\n    rate: 1/m\n    key: client_ip\n";
    let routes =
        "  - { name: limited, match: { path_prefix: / }, upstream: grpc, rate_limit: [one] }\n";
    let (gw, _seen) = h2c_gateway(routes, top).await;
    let mut client = grpc_client(&gw).await;
    unary(
        &mut client,
        tonic::Request::new(msg("x", 0)),
        "/echo.Echo/Unary",
    )
    .await
    .unwrap();
    let err = unary(
        &mut client,
        tonic::Request::new(msg("x", 0)),
        "/echo.Echo/Unary",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().starts_with("rate limit `one` exceeded"),
        "{}",
        err.message()
    );
    assert!(err.metadata().get("retry-after").is_some());
    let lines = gw.wait_log_lines(2).await;
    assert_eq!(lines[1]["status"], 429);
    assert_eq!(lines[1]["error"], "rate_limited");
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_down_is_unavailable() {
    let dead = support::dead_addr().await;
    let yaml = h2_yaml("    targets: [{ url: 'http://${UP}' }]", "", ALL);
    let gw = Gateway::start(&yaml, &[("UP", dead.to_string())]).await;
    let err = status_of(&gw, "/echo.Echo/Unary", tonic::Request::new(msg("x", 0))).await;
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "could not reach upstream `grpc`");
    let line = &gw.wait_log_lines(1).await[0];
    assert_eq!(line["status"], 502);
    gw.shutdown().await;
}

#[tokio::test]
async fn grpc_timeout_caps_the_route_timeout_as_deadline_exceeded() {
    // The route allows 30 s; the client's deadline is 200 ms.
    let (gw, _seen) = h2c_gateway(ALL, "").await;
    let mut req = tonic::Request::new(msg("x", 0));
    req.metadata_mut()
        .insert("grpc-timeout", "200m".parse().unwrap());
    let started = std::time::Instant::now();
    let err = status_of(&gw, "/echo.Echo/Slow", req).await;
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("did not answer within 19")
            || err.message().contains("did not answer within 200 ms"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let line = &gw.wait_log_lines(1).await[0];
    assert_eq!(line["status"], 504);
    assert_eq!(line["error"], "upstream_timeout");
    gw.shutdown().await;
}

#[test]
fn protocol_validation_accepts_h2_and_suggests_for_typos() {
    let yaml = |p: &str| {
        format!(
            "{}upstreams:\n  u:\n    protocol: {p}\n    targets: [{{ url: 'http://127.0.0.1:1' }}]\nroutes:\n{ALL}",
            server_block("")
        )
        .replace("upstream: grpc", "upstream: u")
    };
    let env = |_: &str| None;
    assert!(tollgate::config::load_str_with_env(&yaml("h2"), "t.yaml", &env).is_ok());
    let err = match tollgate::config::load_str_with_env(&yaml("h2c"), "t.yaml", &env) {
        Ok(_) => panic!("h2c is not a protocol"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("unknown protocol `h2c`; expected http1 or h2"),
        "{err}"
    );
    assert!(err.contains("did you mean `h2`"), "{err}");
}
