//! Server limits and request hygiene (SPEC §2 `server.limits`, §3 smuggling, §4):
//! header and body sizes, body stalls, malformed and smuggling requests on raw
//! sockets, slowloris, keep-alive idling, and `max_connections`.

use std::time::{Duration, Instant};

use http::Request;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

fn config(limits: &str) -> String {
    server_block(&format!("limits: {{ {limits} }}"))
        + r#"
upstreams:
  up:
    targets: [ { url: "http://${UP}" } ]
    timeouts: { connect: 500ms, request: 5s }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: up
"#
}

async fn setup(limits: &str) -> (Upstream, Gateway) {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(limits), &[("UP", up.host_port())]).await;
    (up, gw)
}

#[tokio::test]
async fn oversized_header_block_is_a_431() {
    let (up, gw) = setup("max_header_bytes: 1KiB").await;
    // Just over the limit, and far over it: hyper's own head limit (past
    // which it cuts the connection with a bare 431) is 256 KiB or twice
    // `max_header_bytes`, so both reach the proxy and get the JSON error.
    for size in [2_000, 100_000] {
        let big = "a".repeat(size);
        let r = get_with(&gw.url("/x"), &[("x-big", &big)]).await;
        r.assert_error(431, "headers_too_large");
    }
    assert_eq!(up.hits(), 0, "the upstream never sees them");
    // Just under the limit still passes.
    let ok = "a".repeat(600);
    assert_eq!(get_with(&gw.url("/x"), &[("x-big", &ok)]).await.status, 200);
    gw.shutdown().await;
}

/// A POST that declares 5,000 bytes of body (over a 1 KiB limit) and sends
/// only the head and three bytes: the answer must not wait for the rest.
async fn post_over_the_limit(addr: std::net::SocketAddr) -> RawReply {
    raw(
        addr,
        b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\nabc",
        Duration::from_secs(3),
    )
    .await
}

#[tokio::test]
async fn declared_body_over_the_limit_is_refused_before_the_upstream() {
    let (up, gw) = setup("max_body_bytes: 1KiB").await;
    let reply = post_over_the_limit(gw.addr).await;
    assert_eq!(reply.status(), Some(413), "{}", reply.text());
    assert!(
        reply.text().contains("\"payload_too_large\""),
        "{}",
        reply.text()
    );
    assert!(reply.closed, "the connection is closed after a 413");
    assert!(
        reply.elapsed < Duration::from_secs(2),
        "{:?}",
        reply.elapsed
    );
    assert_eq!(up.hits(), 0, "the upstream was never contacted");

    // At the limit is fine.
    let r = send(
        Request::post(gw.url("/upload"))
            .body(body(vec![b'x'; 1024]))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_bytes"], 1024);
    gw.shutdown().await;
}

#[tokio::test]
async fn chunked_body_growing_over_the_limit_is_a_413() {
    let (up, gw) = setup("max_body_bytes: 1KiB").await;
    let mut req =
        b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..8 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'y'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let reply = raw(gw.addr, &req, Duration::from_secs(3)).await;
    assert_eq!(reply.status(), Some(413), "{}", reply.text());
    assert!(
        reply.text().contains("\"payload_too_large\""),
        "{}",
        reply.text()
    );
    assert!(
        up.body_bytes() <= 1024,
        "the upstream got {} bytes of a 4096-byte body over a 1024-byte limit",
        up.body_bytes()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn stalled_body_is_a_408() {
    let (_up, gw) = setup("body_read_timeout: 300ms").await;
    assert_stalled_body_times_out(gw.addr, "/upload", Duration::from_millis(300)).await;
    gw.shutdown().await;
}

/// Asserts a malformed request gets a 400 and a closed connection.
async fn assert_refused(gw: &Gateway, up: &Upstream, what: &str, bytes: &[u8]) {
    let reply = raw(gw.addr, bytes, Duration::from_secs(3)).await;
    println!("{what}: closed={} reply={:?}", reply.closed, reply.text());
    assert_eq!(reply.status(), Some(400), "{what}: {}", reply.text());
    assert!(reply.closed, "{what}: the connection must be closed");
    assert_eq!(reply.responses(), 1, "{what}: {}", reply.text());
    assert_eq!(up.hits(), 0, "{what}: reached the upstream");
}

#[tokio::test]
async fn duplicate_differing_content_length_is_refused() {
    let (up, gw) = setup("").await;
    assert_refused(
        &gw,
        &up,
        "duplicate content-length",
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn obs_fold_header_is_refused() {
    let (up, gw) = setup("").await;
    assert_refused(
        &gw,
        &up,
        "obs-fold",
        b"GET /x HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n  b\r\n\r\n",
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_chunk_size_is_refused_and_closed() {
    let (up, gw) = setup("").await;
    let reply = raw(
        gw.addr,
        b"POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    println!(
        "bad chunk size: closed={} reply={:?}",
        reply.closed,
        reply.text()
    );
    assert!(reply.closed, "the connection must be closed");
    // hyper reads the head, so the request may be routed; its body then fails
    // to parse. Either no answer at all or a 400, never a success.
    match reply.status() {
        None => {}
        Some(s) => assert_eq!(s, 400, "{}", reply.text()),
    }
    assert!(
        up.paths().is_empty() || up.body_bytes() == 0,
        "the upstream got a body from a broken chunk stream"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn te_and_cl_together_cannot_smuggle_a_second_request() {
    let (up, gw) = setup("").await;
    // A front end trusting Content-Length would see one request with body
    // "0\r\n\r\nGET /smuggled ..."; a chunked reader sees an empty body, then a
    // second request. Neither may reach the upstream as a separate request.
    let reply = raw(
        gw.addr,
        b"POST /first HTTP/1.1\r\nhost: x\r\ncontent-length: 35\r\ntransfer-encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    println!(
        "TE+CL: closed={} responses={} upstream saw {:?}\n{}",
        reply.closed,
        reply.responses(),
        up.paths(),
        reply.text()
    );
    assert!(
        !up.paths().iter().any(|p| p.contains("smuggled")),
        "the smuggled request reached the upstream: {:?}",
        up.paths()
    );
    assert!(!reply.text().contains("/smuggled"), "{}", reply.text());
    assert_eq!(
        reply.responses(),
        1,
        "exactly one response: {}",
        reply.text()
    );
    assert!(reply.closed, "the connection is closed after the response");
    assert!(
        reply.text().starts_with("HTTP/1.1 400"),
        "refused with 400: {}",
        reply.text()
    );
    assert!(
        reply.text().contains(r#""error":"bad_request""#),
        "with the JSON error body: {}",
        reply.text()
    );
    // SPEC §3 says such a request is refused with 400.
    assert_eq!(reply.status(), Some(400), "{}", reply.text());
    gw.shutdown().await;
}

#[tokio::test]
async fn slowloris_is_cut_after_header_read_timeout() {
    let (_up, gw) = setup("header_read_timeout: 500ms, idle_timeout: 5s").await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();

    // Another client is served meanwhile.
    let r = get_with(&gw.url("/other"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));

    let reply = read_until_close(&mut slow, Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert!(reply.closed, "the slow connection was never closed");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "closed after {took:?}, header_read_timeout is 500ms"
    );
    // A 408 (or nothing) may be sent, never a proxied answer.
    assert!(!reply.text().contains("200 OK"), "{}", reply.text());

    // A connection that sends nothing at all is cut too.
    let started = Instant::now();
    let reply = raw(gw.addr, b"", Duration::from_secs(3)).await;
    assert!(reply.closed);
    assert!(started.elapsed() < Duration::from_millis(1500));
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_closes_after_idle_timeout_not_header_timeout() {
    let (_up, gw) = setup("header_read_timeout: 300ms, idle_timeout: 700ms").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = b"GET /ka HTTP/1.1\r\nhost: x\r\n\r\n";
    s.write_all(req).await.unwrap();
    let first = read_one_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    // Idle past the header timeout: the keep-alive connection must survive.
    tokio::time::sleep(Duration::from_millis(450)).await;
    s.write_all(req).await.unwrap();
    let second = read_one_response(&mut s).await;
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "keep-alive did not survive past header_read_timeout: {second}"
    );

    // Then idle until idle_timeout.
    let reply = read_until_close(&mut s, Duration::from_secs(3)).await;
    assert!(reply.closed, "the idle connection was never closed");
    assert!(
        reply.elapsed >= Duration::from_millis(600) && reply.elapsed < Duration::from_millis(1500),
        "closed {:?} after the last response, idle_timeout is 700ms",
        reply.elapsed
    );
    assert!(reply.bytes.is_empty(), "{}", reply.text());
    gw.shutdown().await;
}

// ---- parked keep-alive connections ----

/// Opens connections that send nothing, so that the gateway counts more than
/// a tenth of `max_connections: 20` open and parks connections at once.
async fn crowd(gw: &Gateway) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    held
}

/// A connection that made one request and then parked.
async fn parked_connection(gw: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /ka HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_one_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    gw.wait_parked(1).await;
    s
}

/// Requests on one kept-alive connection, each after it parked.
async fn park_and_serve(gw: &Gateway, up: &Upstream) {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for round in 0..3 {
        let path = format!("/round-{round}");
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let reply = read_one_response(&mut s).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains(&path), "{reply}");
        // Parked (at once, or after a second of idling); the next request wakes it.
        gw.wait_parked(1).await;
    }
    // A request body sent to a parked connection arrives whole.
    let body = "x".repeat(100_000);
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let reply = read_one_response(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    gw.wait_parked(1).await;
    assert_eq!(up.hits(), 4);
    assert_eq!(up.body_bytes(), 100_000);

    // Closed by the client while parked: the gateway lets it go.
    drop(s);
    gw.wait_parked(0).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_parks_and_serves_its_next_requests() {
    let (up, gw) = setup("idle_timeout: 30s").await;
    park_and_serve(&gw, &up).await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, r#"tollgate_active_connections{listener="http"}"#),
        Some(0.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn with_many_connections_open_a_connection_parks_as_soon_as_it_is_answered() {
    let (up, gw) = setup("max_connections: 20, idle_timeout: 30s, header_read_timeout: 30s").await;
    let _crowd = crowd(&gw).await;
    park_and_serve(&gw, &up).await;

    // At once: well before the second an idle connection otherwise waits.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /quick HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_one_response(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let answered = Instant::now();
    gw.wait_parked(1).await;
    assert!(
        answered.elapsed() < Duration::from_millis(800),
        "parked {:?} after the answer",
        answered.elapsed()
    );

    // A request that asks to close, and an answer that closes (413 with the
    // body unread), still close: neither is parked.
    s.write_all(b"GET /bye HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert!(reply.closed, "connection: close was not honoured");
    gw.shutdown().await;

    let (up, gw) =
        setup("max_connections: 20, max_body_bytes: 1KiB, header_read_timeout: 30s").await;
    let _crowd = crowd(&gw).await;
    let reply = post_over_the_limit(gw.addr).await;
    assert_eq!(reply.status(), Some(413), "{}", reply.text());
    assert_eq!(reply.responses(), 1, "{}", reply.text());
    assert!(reply.closed, "the connection is closed after a 413");
    assert_eq!(up.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_parked_connection_still_closes_at_idle_timeout() {
    let (_up, gw) = setup("header_read_timeout: 300ms, idle_timeout: 2s").await;
    let answered = Instant::now();
    let mut s = parked_connection(&gw).await;
    let reply = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(reply.closed, "the parked connection was never closed");
    let idled = answered.elapsed();
    assert!(
        idled >= Duration::from_millis(1900) && idled < Duration::from_millis(3500),
        "closed {idled:?} after the last response, idle_timeout is 2s"
    );
    assert!(reply.bytes.is_empty(), "{}", reply.text());
    gw.wait_parked(0).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_head_on_a_parked_connection_is_cut_after_header_read_timeout() {
    let (_up, gw) = setup("header_read_timeout: 500ms, idle_timeout: 30s").await;
    let mut s = parked_connection(&gw).await;
    let started = Instant::now();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let reply = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(reply.closed, "the slow head was never cut");
    let took = started.elapsed();
    // The watchdog of a woken connection looks again within the park time
    // (a second), so the cut may come that much later than on a new one.
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2500),
        "cut after {took:?}, header_read_timeout is 500ms"
    );
    assert!(!reply.text().contains("200 OK"), "{}", reply.text());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_pipelined_partial_head_survives_the_idle_time() {
    // The start of a second request arrives with the first; the rest comes
    // after more than the park time. Nothing of it may be lost, whether the
    // connection parks after a second or at once.
    for limits in [
        "header_read_timeout: 10s, idle_timeout: 30s",
        "max_connections: 20, header_read_timeout: 10s, idle_timeout: 30s",
    ] {
        let (_up, gw) = setup(limits).await;
        let _crowd = crowd(&gw).await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\nGET /second HTTP/1.1\r\nho")
            .await
            .unwrap();
        let first = read_one_response(&mut s).await;
        assert!(first.contains("/first"), "{first}");
        tokio::time::sleep(Duration::from_millis(1600)).await;
        s.write_all(b"st: x\r\n\r\n").await.unwrap();
        let second = read_one_response(&mut s).await;
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        assert!(second.contains("/second"), "{second}");
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn shutdown_closes_parked_connections_at_once() {
    let (_up, gw) = setup("idle_timeout: 60s").await;
    let mut s = parked_connection(&gw).await;
    let started = Instant::now();
    gw.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown waited {:?} for a parked connection",
        started.elapsed()
    );
    let reply = read_until_close(&mut s, Duration::from_secs(2)).await;
    assert!(reply.closed, "the parked connection was left open");
}

#[tokio::test]
async fn max_connections_holds_extra_connections_back() {
    let (_up, gw) = setup("max_connections: 2, header_read_timeout: 5s, idle_timeout: 5s").await;
    let req = b"GET /c HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut c1 = TcpStream::connect(gw.addr).await.unwrap();
    c1.write_all(req).await.unwrap();
    read_one_response(&mut c1).await;
    let mut c2 = TcpStream::connect(gw.addr).await.unwrap();
    c2.write_all(req).await.unwrap();
    read_one_response(&mut c2).await;

    // The third connection is accepted by the kernel but not served.
    let mut c3 = TcpStream::connect(gw.addr).await.unwrap();
    c3.write_all(req).await.unwrap();
    let waiting = read_until_close(&mut c3, Duration::from_millis(400)).await;
    assert!(
        waiting.bytes.is_empty() && !waiting.closed,
        "a third connection was served: {}",
        waiting.text()
    );

    // Once one closes, the third is served.
    drop(c1);
    let third = read_one_response(&mut c3).await;
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    drop(c2);
    gw.shutdown().await;
}

/// Asserts that `reply` is the gateway's JSON refusal `code` with `status`,
/// `Connection: close` and a request id, and that the connection closed.
fn assert_json_refusal(what: &str, reply: &RawReply, status: u16, code: &str) {
    let text = reply.text();
    assert_eq!(reply.status(), Some(status), "{what}: {text}");
    assert_eq!(reply.responses(), 1, "{what}: one answer only: {text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
    let head = head.to_ascii_lowercase();
    for want in [
        "content-type: application/json",
        "connection: close",
        "x-request-id: ",
        "date: ",
    ] {
        assert!(head.contains(want), "{what}: no `{want}` in {head}");
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "{what}: {text}");
    let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(json["error"], code, "{what}: {text}");
    let id = json["request_id"].as_str().unwrap();
    assert!(
        head.contains(&format!("x-request-id: {id}")),
        "{what}: {text}"
    );
    assert!(
        reply.closed,
        "{what}: the connection closes after the refusal"
    );
}

/// Requests that hyper's parser refuses before the proxy sees them get the
/// gateway's JSON error, not hyper's bare status, and are counted.
#[tokio::test]
async fn requests_the_parser_refuses_get_the_json_error_body() {
    let (up, gw) = setup("max_header_bytes: 1KiB").await;
    let big = format!(
        "GET /x HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(1_000_000)
    );
    let long_uri = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let cases: [(&str, &[u8], u16, &str); 7] = [
        (
            "duplicate content-length",
            b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            400,
            "bad_request",
        ),
        (
            "obs-fold",
            b"GET /x HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n  b\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "a space in a header name",
            b"GET /x HTTP/1.1\r\nhost: x\r\nbad name: 1\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "a bad request line",
            b"GET /x HTTP/1.1 extra\r\nhost: x\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "an unknown version",
            b"GET /x HTTP/7.1\r\nhost: x\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "a target over 65534 bytes",
            long_uri.as_bytes(),
            414,
            "uri_too_long",
        ),
        (
            "a head beyond the read buffer",
            big.as_bytes(),
            431,
            "headers_too_large",
        ),
    ];
    for (what, bytes, status, code) in cases {
        let reply = raw(gw.addr, bytes, Duration::from_secs(3)).await;
        assert_json_refusal(what, &reply, status, code);
    }
    assert_eq!(up.hits(), 0, "none of them reached the upstream");
    let m = gw.metrics().await;
    for (reason, n) in [
        ("bad_request", 5.0),
        ("uri_too_long", 1.0),
        ("headers_too_large", 1.0),
    ] {
        let series =
            format!(r#"tollgate_malformed_requests_total{{listener="http",reason="{reason}"}}"#);
        assert_eq!(metric(&m, &series), Some(n), "{series}\n{m}");
    }
    gw.shutdown().await;
}

/// `limits.read_buffer` bounds what hyper buffers of a head: past it the
/// parser refuses the head itself (and counts it), where the default buffer
/// lets it reach the proxy's own `max_header_bytes` check.
#[tokio::test]
async fn read_buffer_bounds_the_head_the_parser_takes() {
    let head = format!(
        "GET /x HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let series = r#"tollgate_malformed_requests_total{listener="http",reason="headers_too_large"}"#;
    for (limits, message, counted) in [
        (
            "max_header_bytes: 8KiB",
            "larger than the 8192-byte limit",
            None,
        ),
        (
            "max_header_bytes: 8KiB, read_buffer: 16KiB",
            "larger than the connection's read buffer",
            Some(1.0),
        ),
    ] {
        let (up, gw) = setup(limits).await;
        let reply = raw(gw.addr, head.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(reply.status(), Some(431), "{limits}: {}", reply.text());
        assert!(reply.text().contains(message), "{limits}: {}", reply.text());
        assert_eq!(metric(&gw.metrics().await, series), counted, "{limits}");
        // A head within max_header_bytes still passes.
        let ok = "a".repeat(6_000);
        assert_eq!(get_with(&gw.url("/x"), &[("x-ok", &ok)]).await.status, 200);
        assert_eq!(up.hits(), 1);
        gw.shutdown().await;
    }
}

/// A malformed request after good ones on one connection: the answers before
/// it arrive whole and unchanged (pipelined in one write, or one after the
/// other), and the malformed one gets the JSON refusal.
#[tokio::test]
async fn a_refusal_after_answered_requests_leaves_their_answers_whole() {
    let (up, gw) = setup("max_header_bytes: 1KiB").await;
    let good = "GET /first HTTP/1.1\r\nhost: x\r\n\r\n";
    let bad = "GET /x HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n  b\r\n\r\n";

    // Pipelined: both in one write.
    let reply = raw(
        gw.addr,
        format!("{good}{bad}").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    let text = reply.text();
    assert_eq!(reply.responses(), 2, "{text}");
    let (first, refusal) = text.split_at(text.rfind("HTTP/1.1 400").expect("the refusal"));
    assert!(first.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        first.contains("/first"),
        "the echo's body is whole: {first}"
    );
    let refusal = RawReply {
        bytes: refusal.as_bytes().to_vec(),
        closed: reply.closed,
        elapsed: reply.elapsed,
    };
    assert_json_refusal("pipelined", &refusal, 400, "bad_request");

    assert_eq!(up.hits(), 1);
    gw.shutdown().await;

    // One after the other, the first answer a 50 KB body streamed in pieces.
    let up = Upstream::start("up", Behavior::Stream(50_000)).await;
    let gw = Gateway::start(&config("max_header_bytes: 1KiB"), &[("UP", up.host_port())]).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(good.as_bytes()).await.unwrap();
    let first = read_one_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let (head, body) = first.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains("content-length: 50000"),
        "{head}"
    );
    assert_eq!(body.len(), 50_000, "the whole body, nothing more");
    s.write_all(bad.as_bytes()).await.unwrap();
    let second = read_until_close(&mut s, Duration::from_secs(3)).await;
    assert_json_refusal("after a chunked answer", &second, 400, "bad_request");
    gw.shutdown().await;
}
