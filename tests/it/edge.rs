//! The edge's one reading of a request target (docs/reference/path-normalization.md):
//! every spelling of a path means one thing to the router, the policies and the
//! upstream, and a request has exactly one valid host.
//!
//! Requests go over raw sockets, so no client library tidies the spelling first.

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

/// `/admin` is denied to loopback clients; everything else goes to `rest`.
/// `/open` shows what the upstream receives for an allowed path.
const ROUTES: &str = r#"
upstreams:
  admin:
    targets: [{ url: "http://${ADMIN}" }]
  rest:
    targets: [{ url: "http://${REST}" }]
routes:
  - name: admin
    match: { path_prefix: /admin }
    upstream: admin
    ip_deny: [127.0.0.1/32]
  - name: open
    match: { path_prefix: /open }
    upstream: rest
  - name: rest
    match: { path_prefix: / }
    upstream: rest
"#;

async fn setup(server_extra: &str) -> (Upstream, Upstream, Gateway) {
    let admin = Upstream::echo("admin").await;
    let rest = Upstream::echo("rest").await;
    let yaml = server_block(server_extra) + ROUTES;
    let gw = Gateway::start(
        &yaml,
        &[("ADMIN", admin.host_port()), ("REST", rest.host_port())],
    )
    .await;
    (admin, rest, gw)
}

/// One raw HTTP/1.1 request with `path` as its target, as bytes.
async fn raw_get(gw: &Gateway, path: &[u8], host: Option<&str>) -> RawReply {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(path);
    req.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = host {
        req.extend_from_slice(format!("Host: {h}\r\n").as_bytes());
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    raw(gw.addr, &req, WAIT).await
}

/// The JSON body of a raw reply (the gateway's error body or the echo).
fn body_json(r: &RawReply) -> serde_json::Value {
    let t = r.text();
    let body = t.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
}

/// What one spelling must become.
enum Want {
    /// Denied by `/admin`'s `ip_deny`: 403, and no upstream sees it.
    Denied,
    /// Forwarded to `rest`, which receives exactly this target.
    Forwarded(&'static str),
    /// 400 `bad_request` from the gateway, no upstream sees it.
    Rejected,
}

#[tokio::test]
async fn no_spelling_of_a_denied_path_reaches_it() {
    let (admin, rest, gw) = setup("").await;
    let long_ok = format!("/open/{}", "a/".repeat(2000));
    let long_dots = format!("/{}admin", "x/../".repeat(500));
    let long_merged = format!("/{}open", "/".repeat(3000));
    let cases: Vec<(&[u8], Want)> = vec![
        // The report's rows.
        (b"/admin", Want::Denied),
        (b"//admin", Want::Denied),
        (b"/x/../admin", Want::Denied),
        (b"/./admin", Want::Denied),
        (b"/%2e/admin", Want::Denied),
        (b"/x/%2e%2e/admin", Want::Denied),
        (b"/%61dmin", Want::Denied),
        (b"/admin%2f", Want::Rejected),
        (b"/x/..%2fadmin", Want::Rejected),
        (b"/admin;x", Want::Denied),
        // Mixed-case escapes, trailing dots, empty segments, parameters.
        (b"/x/%2e%2E/admin", Want::Denied),
        (b"/x/.%2E/admin", Want::Denied),
        (b"/%41DMIN", Want::Forwarded("/ADMIN")),
        (b"/%61%64%6D%69%6E", Want::Denied),
        (b"/%61%64%6d%69%6e/users", Want::Denied),
        (b"/admin/.", Want::Denied),
        (b"/admin/..", Want::Forwarded("/")),
        (b"/admin/x/..", Want::Denied),
        (b"/x/./../admin/", Want::Denied),
        (b"///admin///users", Want::Denied),
        (b"/x//../admin", Want::Denied),
        (b"/x/..;/admin", Want::Denied),
        (b"/x;a=b/..;c/admin", Want::Denied),
        (b"/admin;jsessionid=1", Want::Denied),
        (b"/admin;jsessionid=1/users", Want::Denied),
        (long_dots.as_bytes(), Want::Denied),
        // Climbing above the root, backslashes, broken escapes, NUL.
        (b"/..", Want::Rejected),
        (b"/../admin", Want::Rejected),
        (b"/x/../../admin", Want::Rejected),
        (b"/%2e%2e/admin", Want::Rejected),
        (b"/admin%5C", Want::Rejected),
        (b"/admin%5cx", Want::Rejected),
        (b"/x\\..\\admin", Want::Rejected),
        (b"/admin%", Want::Rejected),
        (b"/admin%2", Want::Rejected),
        (b"/%zzadmin", Want::Rejected),
        (b"/admin%00", Want::Rejected),
        // Never decoded twice: `%2561` is a literal `%61`, not `a`.
        (b"/%2561dmin", Want::Forwarded("/%2561dmin")),
        (b"/%252e%252e/admin", Want::Forwarded("/%252e%252e/admin")),
        // What an allowed path is forwarded as.
        (b"/open", Want::Forwarded("/open")),
        (b"/open//a/./b/../c", Want::Forwarded("/open/a/c")),
        (b"/open/%7euser", Want::Forwarded("/open/~user")),
        (b"/open/%c3%a9", Want::Forwarded("/open/%C3%A9")),
        ("/open/é".as_bytes(), Want::Forwarded("/open/%C3%A9")),
        (b"/open/a%20b", Want::Forwarded("/open/a%20b")),
        (
            b"/open/x?q=/../admin&y=%2F",
            Want::Forwarded("/open/x?q=/../admin&y=%2F"),
        ),
        (b"/x/../open?a=1", Want::Forwarded("/open?a=1")),
        (b"/open;v=1/x", Want::Forwarded("/open;v=1/x")),
        (b"/open/.../x", Want::Forwarded("/open/.../x")),
        (long_ok.as_bytes(), Want::Forwarded("long")),
        (long_merged.as_bytes(), Want::Forwarded("/open")),
    ];
    let mut rest_seen = 0;
    for (path, want) in &cases {
        let shown = String::from_utf8_lossy(path);
        let shown = &shown[..shown.len().min(80)];
        let r = raw_get(&gw, path, Some("gw.test")).await;
        match want {
            Want::Denied => {
                assert_eq!(r.status(), Some(403), "{shown}: {}", r.text());
                assert_eq!(body_json(&r)["error"], "forbidden", "{shown}");
            }
            Want::Rejected => {
                assert_eq!(r.status(), Some(400), "{shown}: {}", r.text());
                assert_eq!(body_json(&r)["error"], "bad_request", "{shown}");
            }
            Want::Forwarded(to) => {
                assert_eq!(r.status(), Some(200), "{shown}: {}", r.text());
                rest_seen += 1;
                let got = rest.paths().last().cloned().expect("rest saw it");
                if *to == "long" {
                    assert_eq!(got, long_ok, "{shown}");
                } else {
                    assert_eq!(got, *to, "{shown}");
                }
            }
        }
        assert_eq!(admin.hits(), 0, "{shown} reached the denied upstream");
        assert_eq!(rest.hits(), rest_seen, "{shown}");
    }
    // No forwarded target spells anything the admin route would match.
    for p in rest.paths() {
        // Matching is case-sensitive, as in Envoy and NGINX: `/ADMIN` is not `/admin`.
        let path = p.split('?').next().unwrap_or_default();
        assert!(!path.starts_with("/admin"), "{p}");
        assert!(!path.contains("//") && !path.contains("/./") && !path.contains("/../"));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn non_utf8_bytes_in_the_path_are_refused() {
    let (admin, rest, gw) = setup("").await;
    for path in [&b"/admin\xff"[..], b"/\xc3(admin", b"/open/\x80"] {
        let r = raw_get(&gw, path, Some("gw.test")).await;
        assert_eq!(r.status(), Some(400), "{path:?}: {}", r.text());
    }
    assert_eq!(admin.hits() + rest.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_access_log_and_metrics_see_the_normalised_path() {
    let (_admin, rest, gw) = setup("").await;
    let r = raw(
        gw.addr,
        b"GET /x/..//open/%61 HTTP/1.1\r\nHost: gw.test\r\nx-request-id: norm-1\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(rest.paths(), vec!["/open/a".to_string()]);
    let line = gw.wait_log_for("norm-1").await;
    assert_eq!(line["path"], "/open/a", "{line}");
    assert_eq!(line["route"], "open", "{line}");
    gw.shutdown().await;
}

#[tokio::test]
async fn escaped_slashes_keep_and_decode() {
    // keep: `%2F` is forwarded as it came and is not a separator for matching.
    let (admin, rest, gw) =
        setup("path_normalization:\n  escaped_slashes: keep\n  merge_slashes: true").await;
    // `admin%2Fx` is one segment, so `/admin` does not match it: keep is for
    // upstreams that read `%2F` as data (docs/reference/path-normalization.md).
    let r = raw_get(&gw, b"/admin%2fx", Some("gw.test")).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(rest.paths().last().unwrap(), "/admin%2Fx");
    let r = raw_get(&gw, b"/admin/%2fx", Some("gw.test")).await;
    assert_eq!(r.status(), Some(403), "{}", r.text());
    let r = raw_get(&gw, b"/x/..%2fadmin", Some("gw.test")).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(rest.paths().last().unwrap(), "/x/..%2Fadmin");
    let r = raw_get(&gw, b"/open%5cx", Some("gw.test")).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(rest.paths().last().unwrap(), "/open%5Cx");
    assert_eq!(admin.hits(), 0);
    gw.shutdown().await;

    // decode: `%2F` and `%5C` become `/` before dot-segments are resolved.
    let (admin, rest, gw) = setup("path_normalization:\n  escaped_slashes: decode").await;
    for path in [&b"/x/..%2fadmin"[..], b"/x%5C..%5Cadmin", b"/x\\..\\admin"] {
        let r = raw_get(&gw, path, Some("gw.test")).await;
        assert_eq!(r.status(), Some(403), "{path:?}: {}", r.text());
    }
    let r = raw_get(&gw, b"/open%2Fa%2f%2fb", Some("gw.test")).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(rest.paths().last().unwrap(), "/open/a/b");
    assert_eq!(admin.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn merge_slashes_off_keeps_empty_segments() {
    let (admin, rest, gw) = setup("path_normalization: { merge_slashes: false }").await;
    // `//admin` is then not `/admin`: the empty first segment stays, upstream too.
    let r = raw_get(&gw, b"//admin", Some("gw.test")).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(rest.paths().last().unwrap(), "//admin");
    // Dot-segments are still resolved.
    let r = raw_get(&gw, b"/x/../admin", Some("gw.test")).await;
    assert_eq!(r.status(), Some(403), "{}", r.text());
    assert_eq!(admin.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn host_must_be_one_valid_host() {
    let (admin, rest, gw) = setup("").await;
    let bad: &[(&str, &[u8])] = &[
        (
            "no Host",
            b"GET /open HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "two Hosts",
            b"GET /open HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        ),
        (
            "same Host twice",
            b"GET /open HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        ),
        (
            "space",
            b"GET /open HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        ),
        (
            "slash",
            b"GET /open HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n",
        ),
        (
            "empty",
            b"GET /open HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
        ),
        (
            "userinfo",
            b"GET /open HTTP/1.1\r\nHost: u@a.test\r\nConnection: close\r\n\r\n",
        ),
        (
            "bad port",
            b"GET /open HTTP/1.1\r\nHost: a.test:99999\r\nConnection: close\r\n\r\n",
        ),
        (
            "port text",
            b"GET /open HTTP/1.1\r\nHost: a.test:http\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, bytes) in bad {
        let r = raw(gw.addr, bytes, WAIT).await;
        assert_eq!(r.status(), Some(400), "{what}: {}", r.text());
        let j = body_json(&r);
        assert_eq!(j["error"], "bad_request", "{what}: {j}");
        assert!(
            j["message"].as_str().unwrap().contains("Host"),
            "{what}: {j}"
        );
    }
    assert_eq!(admin.hits() + rest.hits(), 0);

    let good: &[(&str, &[u8], &str)] = &[
        (
            "name",
            b"GET /open HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            "a.test",
        ),
        (
            "port",
            b"GET /open HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n",
            "a.test:8080",
        ),
        (
            "ipv6",
            b"GET /open HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
            "[::1]:80",
        ),
        // HTTP/1.0 needs no Host.
        ("1.0", b"GET /open HTTP/1.0\r\n\r\n", ""),
        // Absolute form: the target's authority wins and replaces Host.
        (
            "absolute",
            b"GET http://b.test/open HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            "b.test",
        ),
    ];
    for (what, bytes, host) in good {
        let r = raw(gw.addr, bytes, WAIT).await;
        assert_eq!(r.status(), Some(200), "{what}: {}", r.text());
        let j = body_json(&r);
        assert_eq!(j["path"], "/open", "{what}");
        if !host.is_empty() {
            assert_eq!(j["headers"]["host"], *host, "{what}: {j}");
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn host_routing_follows_the_one_host() {
    let admin = Upstream::echo("admin").await;
    let rest = Upstream::echo("rest").await;
    let yaml = server_block("")
        + r#"
upstreams:
  admin:
    targets: [{ url: "http://${ADMIN}" }]
  rest:
    targets: [{ url: "http://${REST}" }]
routes:
  - name: internal
    match: { hosts: [internal.test], path_prefix: / }
    upstream: admin
    ip_deny: [127.0.0.1/32]
  - name: rest
    match: { path_prefix: / }
    upstream: rest
"#;
    let gw = Gateway::start(
        &yaml,
        &[("ADMIN", admin.host_port()), ("REST", rest.host_port())],
    )
    .await;
    // An absolute-form target names the host the router and upstream both see.
    let r = raw(
        gw.addr,
        b"GET http://internal.test/x HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(403), "{}", r.text());
    let r = raw(
        gw.addr,
        b"GET http://public.test/x HTTP/1.1\r\nHost: internal.test\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(body_json(&r)["headers"]["host"], "public.test");
    assert_eq!(admin.hits(), 0);
    gw.shutdown().await;
}

async fn h2_get(gw: &Gateway, authority: &str, host: Option<&str>) -> (u16, serde_json::Value) {
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let mut req = Request::get(format!("http://{authority}/open"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let req = req.body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("h2 response in time")
        .expect("h2 response");
    let status = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&b).unwrap())
}

#[tokio::test]
async fn http2_authority_and_host_must_agree() {
    let (_admin, rest, gw) = setup("").await;
    let (status, j) = h2_get(&gw, "a.test", Some("b.test")).await;
    assert_eq!(status, 400, "{j}");
    assert_eq!(j["error"], "bad_request");
    assert_eq!(rest.hits(), 0);
    let (status, j) = h2_get(&gw, "a.test", Some("A.test")).await;
    assert_eq!(status, 200, "{j}");
    let (status, j) = h2_get(&gw, "a.test", None).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["headers"]["host"], "a.test");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_rejected_request_is_answered_then_the_connection_closes() {
    // A 400 from normalisation is a whole JSON answer; like NGINX the gateway
    // then closes the connection, so nothing pipelined behind it is read as
    // a second request. A new connection is served.
    let (_admin, rest, gw) = setup("").await;
    let r = raw(
        gw.addr,
        b"GET /.. HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /admin HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(400), "{}", r.text());
    assert!(r.text().contains("connection: close"), "{}", r.text());
    assert_eq!(r.text().matches("HTTP/1.1").count(), 1, "{}", r.text());
    let r = raw_get(&gw, b"/open", Some("gw.test")).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(rest.hits(), 1);
    gw.shutdown().await;
}
