//! Forwarding as a client and the upstream see it (SPEC §3, §4, §9): method, path,
//! query and body; rewrites; header hygiene; request ids; direct answers; the 404
//! body; route precedence; h2c; the client IP through trusted proxies.

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

const ROUTES: &str = r#"
upstreams:
  up:
    targets:
      - url: http://${UP}
    timeouts: { connect: 500ms, request: 5s }
routes:
  - name: ping
    match: { path: /ping }
    respond:
      status: 201
      body: "pong\n"
      headers: { content-type: text/plain, x-direct: "yes" }
  - name: strip
    match: { path_prefix: /strip }
    upstream: up
    rewrite: { strip_prefix: /strip }
  - name: replace
    match: { path_prefix: /v1 }
    upstream: up
    rewrite:
      replace_prefix: { from: /v1, to: /v2 }
  - name: hostrw
    match: { path_prefix: /hostrw }
    upstream: up
    rewrite: { host: users.internal }
  - name: edits
    match: { path_prefix: /edits }
    upstream: up
    request_headers:
      set: { X-Gateway: tollgate, X-Replace-Me: new }
      remove: [X-Internal-Debug]
    response_headers:
      set: { X-Served-By: tollgate, Cache-Control: no-store }
  - name: api
    match: { path_prefix: /api }
    upstream: up
"#;

async fn setup() -> (Upstream, Gateway) {
    let up = Upstream::echo("up").await;
    let yaml = server_block("trusted_proxies: [127.0.0.1]") + ROUTES;
    let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
    (up, gw)
}

fn seen_header<'a>(j: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    j["headers"][name].as_str()
}

#[tokio::test]
async fn forwards_method_path_query_and_body() {
    let (up, gw) = setup().await;
    let r = send(
        Request::post(gw.url("/api/users/7?x=1&y=%20z"))
            .header("content-type", "application/json")
            .body(body(&b"{\"hello\":\"world\"}"[..]))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/api/users/7?x=1&y=%20z");
    assert_eq!(j["body_bytes"], 17);
    assert_eq!(j["body_complete"], true);
    assert_eq!(seen_header(&j, "content-type"), Some("application/json"));
    assert_eq!(up.hits(), 1);

    for method in ["PUT", "DELETE", "PATCH"] {
        let r = send(
            Request::builder()
                .method(method)
                .uri(gw.url("/api/x"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.json()["method"], method);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn rewrites_strip_replace_and_host() {
    let (_up, gw) = setup().await;
    let j = get_with(&gw.url("/strip/users/7?q=1"), &[]).await.json();
    assert_eq!(j["path"], "/users/7?q=1");
    // SPEC §9: a strip_prefix that removes the whole path leaves `/`.
    let j = get_with(&gw.url("/strip"), &[]).await.json();
    assert_eq!(j["path"], "/");
    let j = get_with(&gw.url("/strip?a=b"), &[]).await.json();
    assert_eq!(j["path"], "/?a=b");

    let j = get_with(&gw.url("/v1/orders/9"), &[]).await.json();
    assert_eq!(j["path"], "/v2/orders/9");

    let j = get_with(&gw.url("/hostrw/x"), &[("host", "api.example.com")])
        .await
        .json();
    assert_eq!(seen_header(&j, "host"), Some("users.internal"));
    assert_eq!(seen_header(&j, "x-forwarded-host"), Some("api.example.com"));

    // Without a rewrite, the upstream sees the client's Host.
    let j = get_with(&gw.url("/api/x"), &[("host", "api.example.com")])
        .await
        .json();
    assert_eq!(seen_header(&j, "host"), Some("api.example.com"));
    gw.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_towards_the_upstream() {
    let (_up, gw) = setup().await;
    let r = get_with(
        &gw.url("/api/hop"),
        &[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "s"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip, trailers"),
            ("proxy-connection", "keep-alive"),
            ("x-keep", "yes"),
        ],
    )
    .await;
    let j = r.json();
    let h = &j["headers"];
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    // The upstream's own hyper may add `connection`, never the client's list.
    assert_ne!(seen_header(&j, "connection"), Some("keep-alive, x-secret"));
    assert_eq!(seen_header(&j, "te"), Some("trailers"));
    assert_eq!(seen_header(&j, "x-keep"), Some("yes"));

    // TE without trailers is dropped entirely.
    let j = get_with(&gw.url("/api/hop"), &[("te", "gzip")])
        .await
        .json();
    assert!(j["headers"].get("te").is_none(), "{}", j["headers"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_towards_the_client() {
    // An upstream that sends hop-by-hop headers in its response (raw TCP, as
    // hyper's server would not let us).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = "HTTP/1.1 200 OK\r\nconnection: x-private\r\nx-private: secret\r\n\
                            keep-alive: timeout=9\r\nproxy-connection: keep-alive\r\n\
                            x-public: ok\r\ncontent-length: 2\r\n\r\nhi";
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let yaml = server_block("")
        + r#"
upstreams:
  up: { targets: [ { url: "http://${UP}" } ] }
routes:
  - name: api
    match: { path_prefix: / }
    upstream: up
"#;
    let gw = Gateway::start(&yaml, &[("UP", addr.to_string())]).await;
    let r = get_with(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hi");
    assert_eq!(r.header("x-public"), Some("ok"));
    assert_eq!(r.header("x-private"), None, "{:?}", r.headers);
    assert_eq!(r.header("keep-alive"), None, "{:?}", r.headers);
    assert_eq!(r.header("proxy-connection"), None, "{:?}", r.headers);
    assert_ne!(r.header("connection"), Some("x-private"));
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarded_headers() {
    let (_up, gw) = setup().await;
    // The test client connects from 127.0.0.1; an existing value is appended to.
    let j = get_with(
        &gw.url("/api/f"),
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("host", "shop.example.com:8443"),
        ],
    )
    .await
    .json();
    assert_eq!(
        seen_header(&j, "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen_header(&j, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen_header(&j, "x-forwarded-host"),
        Some("shop.example.com:8443")
    );

    let j = get_with(&gw.url("/api/f"), &[]).await.json();
    assert_eq!(seen_header(&j, "x-forwarded-for"), Some("127.0.0.1"));

    // A client cannot make the gateway drop X-Forwarded-For through Connection.
    let j = get_with(
        &gw.url("/api/f"),
        &[
            ("connection", "x-forwarded-for"),
            ("x-forwarded-for", "1.2.3.4"),
        ],
    )
    .await
    .json();
    assert_eq!(
        seen_header(&j, "x-forwarded-for"),
        Some("1.2.3.4, 127.0.0.1")
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn request_id_kept_or_generated_and_returned() {
    let (_up, gw) = setup().await;
    let r = get_with(&gw.url("/api/id"), &[("x-request-id", "abc-123")]).await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(seen_header(&r.json(), "x-request-id"), Some("abc-123"));

    let r = get_with(&gw.url("/api/id"), &[]).await;
    let id = r.header("x-request-id").expect("generated id").to_string();
    assert!(id.len() >= 16, "generated id {id:?}");
    assert_eq!(seen_header(&r.json(), "x-request-id"), Some(id.as_str()));
    let r2 = get_with(&gw.url("/api/id"), &[]).await;
    assert_ne!(
        r2.header("x-request-id"),
        Some(id.as_str()),
        "ids are unique"
    );

    // Direct answers and errors carry one too.
    let r = get_with(&gw.url("/ping"), &[("x-request-id", "direct-1")]).await;
    assert_eq!(r.header("x-request-id"), Some("direct-1"));
    gw.shutdown().await;
}

#[tokio::test]
async fn request_and_response_header_edits() {
    let (_up, gw) = setup().await;
    let r = get_with(
        &gw.url("/edits/x"),
        &[
            ("x-internal-debug", "1"),
            ("x-replace-me", "old"),
            ("x-gateway", "spoofed"),
        ],
    )
    .await;
    let j = r.json();
    assert_eq!(
        seen_header(&j, "x-gateway"),
        Some("tollgate"),
        "set replaces"
    );
    assert_eq!(seen_header(&j, "x-replace-me"), Some("new"));
    assert!(j["headers"].get("x-internal-debug").is_none());
    assert_eq!(r.header("x-served-by"), Some("tollgate"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // The echo upstream sets `x-upstream`; untouched headers pass.
    assert_eq!(r.header("x-upstream"), Some("up"));
    gw.shutdown().await;
}

#[tokio::test]
async fn response_headers_set_replaces_upstream_values() {
    let up = Upstream::echo("up").await;
    let yaml = server_block("")
        + r#"
upstreams:
  up: { targets: [ { url: "http://${UP}" } ] }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: up
    response_headers:
      set: { content-type: text/x-replaced, x-upstream: gateway }
"#;
    let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
    let r = get_with(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get_all("content-type").iter().count(),
        1,
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("content-type"), Some("text/x-replaced"));
    assert_eq!(r.header("x-upstream"), Some("gateway"));
    gw.shutdown().await;
}

#[tokio::test]
async fn direct_respond_route() {
    let (up, gw) = setup().await;
    let r = get_with(&gw.url("/ping"), &[]).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "pong\n");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-direct"), Some("yes"));
    assert_eq!(up.hits(), 0, "no upstream contacted");
    gw.shutdown().await;
}

#[tokio::test]
async fn no_route_is_a_json_404() {
    let (up, gw) = setup().await;
    let r = get_with(&gw.url("/nothing/here"), &[("x-request-id", "nr-1")]).await;
    let j = r.assert_error(404, "no_route");
    assert_eq!(j["request_id"], "nr-1");
    let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 3, "exactly error, message, request_id: {j}");
    // Prefixes match on segment boundaries.
    get_with(&gw.url("/apix"), &[])
        .await
        .assert_error(404, "no_route");
    get_with(&gw.url("/pingx"), &[])
        .await
        .assert_error(404, "no_route");
    assert_eq!(up.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn host_matching_is_case_insensitive_and_ignores_the_port() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let yaml = server_block("")
        + r#"
upstreams:
  a: { targets: [ { url: "http://${A}" } ] }
  b: { targets: [ { url: "http://${B}" } ] }
routes:
  - name: api-host
    match: { hosts: [api.example.com], path_prefix: /h }
    upstream: a
  - name: wildcard
    match: { hosts: ["*.example.org"], path_prefix: /h }
    upstream: a
  - name: any-host
    match: { path_prefix: /h }
    upstream: b
"#;
    let gw = Gateway::start(&yaml, &[("A", a.host_port()), ("B", b.host_port())]).await;
    let server = |host: &'static str| {
        let url = gw.url("/h");
        async move { get_with(&url, &[("host", host)]).await.json()["server"].clone() }
    };
    assert_eq!(server("api.example.com").await, "a");
    assert_eq!(server("API.Example.COM").await, "a");
    assert_eq!(server("API.example.com:8443").await, "a");
    assert_eq!(server("x.example.org").await, "a");
    assert_eq!(server("other.example.com").await, "b");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_most_specific_route_wins() {
    let ex = Upstream::echo("exact").await;
    let re = Upstream::echo("regex").await;
    let long = Upstream::echo("long").await;
    let short = Upstream::echo("short").await;
    // Listed from least to most specific, so file order alone would pick wrong.
    let yaml = server_block("")
        + r#"
upstreams:
  short: { targets: [ { url: "http://${SHORT}" } ] }
  long: { targets: [ { url: "http://${LONG}" } ] }
  regex: { targets: [ { url: "http://${REGEX}" } ] }
  exact: { targets: [ { url: "http://${EXACT}" } ] }
routes:
  - name: short
    match: { path_prefix: /api }
    upstream: short
  - name: long
    match: { path_prefix: /api/users }
    upstream: long
  - name: regex
    match: { path_regex: "^/api/users/[0-9]+$" }
    upstream: regex
  - name: exact
    match: { path: /api/users/7 }
    upstream: exact
"#;
    let gw = Gateway::start(
        &yaml,
        &[
            ("SHORT", short.host_port()),
            ("LONG", long.host_port()),
            ("REGEX", re.host_port()),
            ("EXACT", ex.host_port()),
        ],
    )
    .await;
    let server = |p: &'static str| {
        let url = gw.url(p);
        async move { get_with(&url, &[]).await.json()["server"].clone() }
    };
    assert_eq!(server("/api/users/7").await, "exact");
    assert_eq!(server("/api/users/8").await, "regex");
    assert_eq!(server("/api/users/x").await, "long");
    assert_eq!(server("/api/users").await, "long");
    assert_eq!(server("/api/orders").await, "short");
    gw.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_end_to_end() {
    let (up, gw) = setup().await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let req = Request::post(gw.url("/strip/h2?x=1"))
        .header("x-request-id", "h2-1")
        .body(http_body_util::Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("h2 response in time")
        .expect("h2 response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "h2-1");
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(j["path"], "/h2?x=1");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["body_bytes"], 5);
    // Upstreams speak HTTP/1.1 (protocol: http1), with the authority as Host.
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(seen_header(&j, "host"), Some(gw.addr.to_string().as_str()));
    assert_eq!(up.hits(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn client_ip_through_trusted_proxies_in_the_access_log() {
    let (_up, gw) = setup().await;
    // The peer 127.0.0.1 is trusted: the rightmost untrusted XFF entry is the client.
    let r = get_with(
        &gw.url("/api/ip?secret=1"),
        &[
            ("x-forwarded-for", "198.51.100.7, 203.0.113.5"),
            ("x-request-id", "ip-1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let line = gw.wait_log_for("ip-1").await;
    assert_eq!(line["client_ip"], "203.0.113.5");
    assert_eq!(line["path"], "/api/ip", "path excludes the query");
    assert_eq!(line["route"], "api");

    // Without XFF the peer itself.
    get_with(&gw.url("/api/ip"), &[("x-request-id", "ip-2")]).await;
    assert_eq!(gw.wait_log_for("ip-2").await["client_ip"], "127.0.0.1");
    gw.shutdown().await;
}

#[tokio::test]
async fn untrusted_peer_xff_is_not_believed() {
    let up = Upstream::echo("up").await;
    let yaml = server_block("trusted_proxies: [10.0.0.0/8]") + ROUTES;
    let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
    get_with(
        &gw.url("/api/ip"),
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-request-id", "ip-3"),
        ],
    )
    .await;
    assert_eq!(gw.wait_log_for("ip-3").await["client_ip"], "127.0.0.1");
    gw.shutdown().await;
}
