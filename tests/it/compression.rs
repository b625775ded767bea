//! Response compression (`compress:` on a route, issue #8 item 4): the encoding
//! follows Accept-Encoding and the route's order, the body decompresses to what
//! the upstream sent, responses that must not or need not be compressed pass
//! untouched, and a slow stream still arrives piece by piece.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use crate::support::*;

/// Text that compresses well but not trivially: numbered JSON-ish lines.
fn text(len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "{{\"id\":{i},\"name\":\"user-{}\",\"active\":true}}\n",
                i * 7919 % 1000
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    Bytes::from(out)
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into()).boxed()
}

/// A body fed by a channel: frames as they are sent, the end when the sender
/// is dropped.
struct ChannelBody(mpsc::UnboundedReceiver<Frame<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// A body of these frames, all ready, without a Content-Length.
fn frames(list: Vec<Frame<Bytes>>) -> Body {
    let (tx, rx) = mpsc::unbounded_channel();
    for f in list {
        let _ = tx.send(f);
    }
    ChannelBody(rx).boxed()
}

/// `total` bytes of text in 16 KiB chunks, without a Content-Length.
fn chunked(total: usize) -> Body {
    let data = text(total);
    frames(
        data.chunks(16 * 1024)
            .map(|c| Frame::data(Bytes::copy_from_slice(c)))
            .collect(),
    )
}

/// The upstream of these tests: what it answers depends on the path.
/// `/slow` sends a first chunk, then waits for `release` before the last one.
async fn upstream(release: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let release = release.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let release = release.clone();
                    async move { Ok::<_, Infallible>(answer(req, release).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn answer(req: Request<Incoming>, release: Arc<Notify>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let b = Response::builder();
    let resp = match path.as_str() {
        "/text" | "/plain" => b
            .header("content-type", "application/json")
            .body(full(text(64 * 1024))),
        "/chunked" => b
            .header("content-type", "text/plain; charset=utf-8")
            .body(chunked(1024 * 1024)),
        "/small" => b
            .header("content-type", "application/json")
            .body(full(text(500))),
        "/png" => b.header("content-type", "image/png").body(full(text(8192))),
        "/svg" => b
            .header("content-type", "image/svg+xml")
            .body(full(text(8192))),
        "/untyped" => b.body(full(text(8192))),
        "/encoded" => b
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(full(text(8192))),
        "/no-transform" => b
            .header("content-type", "application/json")
            .header("cache-control", "public, no-transform")
            .body(full(text(8192))),
        "/etag" => b
            .header("content-type", "application/json")
            .header("etag", "\"v1\"")
            .header("accept-ranges", "bytes")
            .header("vary", "Origin")
            .body(full(text(8192))),
        "/weak-etag" => b
            .header("content-type", "application/json")
            .header("etag", "W/\"v1\"")
            .body(full(text(8192))),
        "/204" => b.status(204).body(full(Bytes::new())),
        "/304" => b
            .status(304)
            .header("etag", "\"v1\"")
            .body(full(Bytes::new())),
        "/206" => b
            .status(206)
            .header("content-type", "application/json")
            .header("content-range", "bytes 0-4095/65536")
            .body(full(text(4096))),
        "/404" => b
            .status(404)
            .header("content-type", "text/html")
            .body(full(text(4096))),
        "/grpc" => b
            .header("content-type", "application/grpc")
            .body(full(text(4096))),
        "/trailers" => {
            let mut t = HeaderMap::new();
            t.insert("x-checksum", "abc".parse().expect("value"));
            // hyper sends only the trailers that the head announces.
            b.header("content-type", "text/plain")
                .header("trailer", "x-checksum")
                .body(frames(vec![Frame::data(text(4096)), Frame::trailers(t)]))
        }
        "/slow" => {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from_static(b"data: first\n\n")));
                release.notified().await;
                let _ = tx.send(Frame::data(Bytes::from_static(b"data: last\n\n")));
            });
            b.header("content-type", "text/event-stream")
                .body(ChannelBody(rx).boxed())
        }
        _ => b.status(500).body(full("unknown path")),
    };
    resp.expect("response")
}

fn config() -> String {
    server_block("")
        + r#"
upstreams:
  up:
    targets: [ { url: "http://${UP}" } ]
routes:
  - name: plain
    match: { path: /plain }
    upstream: up
  - name: zipped
    match: { path_prefix: / }
    upstream: up
    compress: [br, zstd, gzip]
"#
}

struct Setup {
    gw: Gateway,
    up: SocketAddr,
    release: Arc<Notify>,
}

async fn setup() -> Setup {
    let release = Arc::new(Notify::new());
    let up = upstream(release.clone()).await;
    let gw = Gateway::start(&config(), &[("UP", up.to_string())]).await;
    Setup { gw, up, release }
}

async fn decode_with(encoding: &str, reader: impl tokio::io::AsyncBufRead + Unpin) -> Vec<u8> {
    let mut out = Vec::new();
    let mut dec: Box<dyn AsyncRead + Unpin> = match encoding {
        "gzip" => Box::new(GzipDecoder::new(reader)),
        "br" => Box::new(BrotliDecoder::new(reader)),
        "zstd" => Box::new(ZstdDecoder::new(reader)),
        other => panic!("unexpected encoding {other}"),
    };
    dec.read_to_end(&mut out).await.expect("decodes");
    out
}

/// The body as the upstream sent it, checked against the headers.
async fn decoded(r: &Resp) -> Vec<u8> {
    match r.header("content-encoding") {
        None => r.body.to_vec(),
        Some(e) => decode_with(e, &r.body[..]).await,
    }
}

fn vary_has_accept_encoding(r: &Resp) -> bool {
    r.headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
}

#[tokio::test]
async fn the_encoding_follows_accept_encoding_and_the_route_order() {
    let s = setup().await;
    let original = text(64 * 1024);
    let cases = [
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("zstd", "zstd"),
        ("br", "br"),
        // The route's order breaks ties: [br, zstd, gzip].
        ("gzip, deflate, br, zstd", "br"),
        ("gzip, zstd", "zstd"),
        ("*", "br"),
        // q-values first.
        ("br;q=0.5, zstd;q=0.6, gzip;q=0.7", "gzip"),
        ("br;q=0, gzip", "gzip"),
        ("br;q=0, *;q=0.1", "zstd"),
    ];
    for (accept, want) in cases {
        let r = get_with(&s.gw.url("/text"), &[("accept-encoding", accept)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(want), "for {accept}");
        assert_eq!(r.header("content-length"), None, "for {accept}");
        assert!(vary_has_accept_encoding(&r), "Vary for {accept}");
        assert!(
            r.body.len() < original.len() / 3,
            "{accept}: {} bytes",
            r.body.len()
        );
        assert_eq!(decoded(&r).await, original, "round trip for {accept}");
    }
    let m = s.gw.metrics().await;
    let count = |enc: &str| {
        metric(
            &m,
            &format!(r#"tollgate_compressed_responses_total{{route="zipped",encoding="{enc}"}}"#),
        )
    };
    assert_eq!(count("br"), Some(3.0));
    assert_eq!(count("zstd"), Some(3.0));
    assert_eq!(count("gzip"), Some(4.0));
}

#[tokio::test]
async fn identity_when_the_client_does_not_accept_an_offered_encoding() {
    let s = setup().await;
    let original = text(64 * 1024);
    let no_header = get_with(&s.gw.url("/text"), &[]).await;
    for accept in [
        None,
        Some(""),
        Some("identity"),
        Some("deflate"),
        Some("br;q=0, zstd;q=0, gzip;q=0"),
        Some("*;q=0"),
    ] {
        let r = match accept {
            None => get_with(&s.gw.url("/text"), &[]).await,
            Some(a) => get_with(&s.gw.url("/text"), &[("accept-encoding", a)]).await,
        };
        assert_eq!(r.header("content-encoding"), None, "for {accept:?}");
        assert_eq!(r.header("content-length"), Some("65536"), "for {accept:?}");
        assert_eq!(r.body, original);
        // The answer could have been compressed for another client: caches must know.
        assert!(vary_has_accept_encoding(&r), "Vary for {accept:?}");
    }
    assert_eq!(no_header.body, original);
}

#[tokio::test]
async fn a_route_without_compress_never_compresses() {
    let s = setup().await;
    let r = get_with(
        &s.gw.url("/plain"),
        &[("accept-encoding", "gzip, br, zstd")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some("65536"));
    assert!(!vary_has_accept_encoding(&r));
    assert_eq!(r.body, text(64 * 1024));
}

#[tokio::test]
async fn responses_that_must_not_or_need_not_be_compressed_pass_untouched() {
    let s = setup().await;
    let accept = [("accept-encoding", "gzip, br, zstd")];
    // (path, status, body length)
    let cases = [
        ("/small", 200, 500),
        ("/png", 200, 8192),
        ("/untyped", 200, 8192),
        ("/no-transform", 200, 8192),
        ("/grpc", 200, 4096),
        ("/204", 204, 0),
        ("/304", 304, 0),
        ("/206", 206, 4096),
    ];
    for (path, status, len) in cases {
        let r = get_with(&s.gw.url(path), &accept).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.header("content-encoding"), None, "{path}");
        assert_eq!(r.body.len(), len, "{path}");
        assert!(!vary_has_accept_encoding(&r), "no Vary for {path}");
    }
    // Already encoded by the upstream: passed on as it came.
    let r = get_with(&s.gw.url("/encoded"), &accept).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, text(8192));

    // HEAD: the head as the upstream made it.
    let req = Request::head(s.gw.url("/text"))
        .header("accept-encoding", "gzip")
        .body(empty())
        .expect("request");
    let r = send(req).await.expect("HEAD");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some("65536"));

    // What is compressible is compressed, error pages and SVG included.
    for path in ["/svg", "/404"] {
        let r = get_with(&s.gw.url(path), &[("accept-encoding", "gzip")]).await;
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{path}");
        assert!(!decoded(&r).await.is_empty());
    }
    // Gateway-made errors stay as they are (small JSON).
    let r = get_with(&s.gw.url("/nowhere"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("content-encoding"), None);
}

#[tokio::test]
async fn validators_and_ranges_are_adjusted() {
    let s = setup().await;
    let r = get_with(&s.gw.url("/etag"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    assert_eq!(r.header("accept-ranges"), None);
    let vary: Vec<_> = r.headers.get_all("vary").iter().collect();
    assert_eq!(vary, ["Origin", "Accept-Encoding"]);

    let r = get_with(&s.gw.url("/weak-etag"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("etag"), Some("W/\"v1\""));

    // The identity variant keeps its strong validator.
    let r = get_with(&s.gw.url("/etag"), &[]).await;
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
}

#[tokio::test]
async fn a_chunked_stream_is_compressed_and_the_log_counts_compressed_bytes() {
    let s = setup().await;
    let original = text(1024 * 1024);
    for enc in ["gzip", "br", "zstd"] {
        let id = format!("compress-{enc}");
        let r = get_with(
            &s.gw.url("/chunked"),
            &[("accept-encoding", enc), ("x-request-id", &id)],
        )
        .await;
        assert_eq!(r.header("content-encoding"), Some(enc));
        assert_eq!(decoded(&r).await, original, "{enc}");
        let line = s.gw.wait_log_for(&id).await;
        assert_eq!(line["bytes_out"], r.body.len() as u64, "{enc}: {line}");
    }
}

#[tokio::test]
/// Over HTTP/2 to the client: over HTTP/1.1 the gateway strips the `Trailer`
/// header as hop-by-hop, and hyper then sends no trailers (compressed or not).
async fn trailers_pass_compressed_or_not() {
    let s = setup().await;
    for (h2, accept) in [
        (true, "identity"),
        (true, "gzip"),
        (false, "identity"),
        (false, "gzip"),
    ] {
        let stream = tokio::net::TcpStream::connect(s.gw.addr)
            .await
            .expect("connect");
        // `:authority` and `Host` agree: the gateway refuses an h2 request
        // whose two hosts differ.
        let req = Request::get("http://gw/trailers")
            .header("host", "gw")
            .header("te", "trailers")
            .header("accept-encoding", accept)
            .body(empty())
            .expect("request");
        let sent = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            tokio::time::timeout(WAIT, sender.send_request(req)).await
        } else {
            // HTTP/1.1 carries trailers in the chunked encoding, announced by
            // the `Trailer` header (end to end, not hop-by-hop).
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let (mut parts, body) = req.into_parts();
            parts.uri = "/trailers".parse().expect("uri");
            tokio::time::timeout(WAIT, sender.send_request(Request::from_parts(parts, body))).await
        };
        let resp = sent.expect("in time").expect("response");
        let encoding = resp
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().expect("ascii").to_string());
        let collected = tokio::time::timeout(WAIT, resp.into_body().collect())
            .await
            .expect("in time")
            .expect("body");
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        let body = match encoding.as_deref() {
            None => body.to_vec(),
            Some(e) => decode_with(e, &body[..]).await,
        };
        assert_eq!(body, text(4096), "h2={h2} {accept}");
        assert_eq!(
            trailers.as_ref().and_then(|t| t.get("x-checksum")),
            Some(&"abc".parse().expect("value")),
            "h2={h2} {accept}: trailers {trailers:?}"
        );
    }
}

#[tokio::test]
async fn a_slow_stream_is_flushed_chunk_by_chunk() {
    let s = setup().await;
    for enc in ["gzip", "br", "zstd"] {
        let stream = tokio::net::TcpStream::connect(s.gw.addr)
            .await
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::get("/slow")
            .header("host", "gw")
            .header("accept-encoding", enc)
            .body(empty())
            .expect("request");
        let resp = tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(
            resp.headers().get("content-encoding").map(|v| v.as_bytes()),
            Some(enc.as_bytes())
        );
        // Compressed bytes go into a pipe as they arrive; the decoder reads
        // from the other end.
        let (mut w, r) = tokio::io::duplex(64 * 1024);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data()
                    && w.write_all(&d).await.is_err()
                {
                    return;
                }
            }
        });
        let mut dec: Box<dyn AsyncRead + Unpin + Send> = match enc {
            "gzip" => Box::new(GzipDecoder::new(BufReader::new(r))),
            "br" => Box::new(BrotliDecoder::new(BufReader::new(r))),
            _ => Box::new(ZstdDecoder::new(BufReader::new(r))),
        };
        let first = b"data: first\n\n";
        let mut got = vec![0u8; first.len()];
        // The upstream holds its last chunk until released: the first one must
        // reach the client decoded before that.
        tokio::time::timeout(WAIT, dec.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{enc}: the first chunk was held back"))
            .expect("read");
        assert_eq!(&got, first);
        s.release.notify_one();
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, dec.read_to_end(&mut rest))
            .await
            .expect("the rest in time")
            .expect("read");
        assert_eq!(rest, b"data: last\n\n", "{enc}");
    }
}

#[tokio::test]
async fn a_reload_switches_compression_off_and_on() {
    let s = setup().await;
    let accept = [("accept-encoding", "gzip")];
    let vars = [("UP", s.up.to_string())];
    let r = get_with(&s.gw.url("/text"), &accept).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));

    let off = config().replace("    compress: [br, zstd, gzip]\n", "");
    s.gw.reload(&off, &vars).await;
    let r = get_with(&s.gw.url("/text"), &accept).await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, text(64 * 1024));

    let zstd_only = config().replace("[br, zstd, gzip]", "[zstd]");
    s.gw.reload(&zstd_only, &vars).await;
    let r = get_with(&s.gw.url("/text"), &[("accept-encoding", "gzip, zstd")]).await;
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    let r = get_with(&s.gw.url("/text"), &accept).await;
    assert_eq!(r.header("content-encoding"), None);
}
