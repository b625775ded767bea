//! External authorization (issue 23 item 3) against an authorization service
//! in the test process that allows, denies with a redirect or a 403, hangs,
//! and dies: what it is sent (the canonical path, the chosen headers, the
//! client address), what it may copy upstream or back to the client, its
//! failure modes, its decision cache, and its place after the route's other
//! auth methods.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::support::*;

/// The authorization service: decides on `Authorization`, remembers what it
/// was sent.
#[derive(Clone)]
struct Authz {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    hang: Arc<AtomicBool>,
    /// Headers of the last request, as `name: value` lines.
    last: Arc<Mutex<Vec<(String, String)>>>,
    last_method: Arc<Mutex<String>>,
    last_body: Arc<Mutex<Bytes>>,
}

impl Authz {
    async fn start() -> Authz {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = Authz {
            addr: listener.local_addr().unwrap(),
            calls: Arc::default(),
            hang: Arc::default(),
            last: Arc::default(),
            last_method: Arc::default(),
            last_body: Arc::default(),
        };
        let server = a.clone();
        serve_fn(listener, move |req| {
            let server = server.clone();
            async move { server.answer(req).await }
        });
        a
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last_method.lock().unwrap() = req.method().to_string();
        *self.last.lock().unwrap() = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect();
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let sent = http_body_util::BodyExt::collect(req.into_body())
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        *self.last_body.lock().unwrap() = sent.clone();
        let auth = if sent.windows(6).any(|w| w == b"refuse") {
            "Bearer forbidden"
        } else {
            auth.as_str()
        };
        let (status, body, headers): (u16, &str, Vec<(&str, &str)>) = match auth {
            "Bearer good" => (
                200,
                "",
                vec![("x-user-id", "u-1"), ("x-internal", "not-for-upstream")],
            ),
            "Bearer login" => (
                302,
                "to the login page",
                vec![("location", "/login?next=%2Fapp"), ("set-cookie", "a=b")],
            ),
            "Bearer forbidden" => (
                403,
                r#"{"error":"nope"}"#,
                vec![
                    ("www-authenticate", "Bearer realm=\"x\""),
                    ("content-type", "application/json"),
                ],
            ),
            _ => (401, "who are you", vec![]),
        };
        let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().append(k, v.parse().unwrap());
        }
        r
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last(&self, name: &str) -> Option<String> {
        self.last
            .lock()
            .unwrap()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn config(url: &str, extra: &str) -> String {
    format!(
        "{}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
auth:
  api_keys:
    partners: {{ keys: [{{ id: acme, key: acme-key-0123456789 }}] }}
  external:
    authz:
      url: '{url}'
      timeout: 300ms
      copy_to_upstream: [x-user-id]
      copy_to_client_on_deny: [location, www-authenticate, content-type]
{extra}
routes:
  - name: both
    match: {{ path_prefix: /both }}
    upstream: up
    auth: [api_key:partners, external:authz]
  - name: app
    match: {{ path_prefix: / }}
    upstream: up
    auth: [external:authz]
",
        server_block("")
    )
}

async fn call(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    get_with(&gw.url(path), headers).await
}

#[tokio::test]
async fn the_service_decides_and_sees_the_canonical_request() {
    let authz = Authz::start().await;
    let up = Upstream::echo("up").await;
    let url = format!("http://{}/check", authz.addr);
    let gw = Gateway::start(&config(&url, ""), &[("UP", up.host_port())]).await;

    // Allowed: the service's x-user-id goes upstream, nothing else of its
    // answer does, and a client cannot forge it.
    let r = call(
        &gw,
        "/app//admin/../orders?x=1",
        &[
            ("authorization", "Bearer good"),
            ("x-user-id", "forged"),
            ("cookie", "session=abc"),
            ("x-secret-header", "do-not-send"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["headers"]["x-user-id"], "u-1");
    assert!(seen["headers"]["x-internal"].is_null());
    // What the service was sent: the path the router and upstream see.
    assert_eq!(authz.last_method.lock().unwrap().as_str(), "GET");
    assert_eq!(authz.last("x-forwarded-method").as_deref(), Some("GET"));
    assert_eq!(
        authz.last("x-forwarded-uri").as_deref(),
        Some("/app/orders?x=1")
    );
    assert_eq!(seen["path"], "/app/orders?x=1");
    assert_eq!(authz.last("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert!(authz.last("x-forwarded-host").is_some());
    assert_eq!(authz.last("cookie").as_deref(), Some("session=abc"));
    assert_eq!(authz.last("x-secret-header"), None, "only send_headers go");

    // Denied with a redirect: status, body and the chosen headers come back.
    let r = call(&gw, "/app", &[("authorization", "Bearer login")]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/login?next=%2Fapp"));
    assert_eq!(
        r.header("set-cookie"),
        None,
        "not in copy_to_client_on_deny"
    );
    assert_eq!(r.text(), "to the login page");
    let r = call(&gw, "/app", &[("authorization", "Bearer forbidden")]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"x\""));
    assert_eq!(r.json()["error"], "nope");
    assert_eq!(call(&gw, "/app", &[]).await.status, 401);

    // After the route's other methods: no key, no question asked.
    let before = authz.calls();
    call(&gw, "/both", &[("authorization", "Bearer good")])
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(authz.calls(), before);
    let r = call(
        &gw,
        "/both",
        &[
            ("authorization", "Bearer forbidden"),
            ("x-api-key", "acme-key-0123456789"),
        ],
    )
    .await;
    assert_eq!(r.status, 403, "a valid key does not skip the service");
    let r = call(
        &gw,
        "/both",
        &[
            ("authorization", "Bearer good"),
            ("x-api-key", "acme-key-0123456789"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);

    let m = gw.metrics().await;
    let n = |result: &str| {
        metric(
            &m,
            &format!(r#"tollgate_external_auth_total{{policy="authz",result="{result}"}}"#),
        )
    };
    assert_eq!(n("allow"), Some(2.0), "{m}");
    assert_eq!(n("deny"), Some(4.0), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_service_that_hangs_or_dies_is_a_503_or_a_pass_as_configured() {
    let authz = Authz::start().await;
    let up = Upstream::echo("up").await;
    let url = format!("http://{}/check", authz.addr);
    let gw = Gateway::start(&config(&url, ""), &[("UP", up.host_port())]).await;
    authz.hang.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    call(&gw, "/app", &[("authorization", "Bearer good")])
        .await
        .assert_error(503, "auth_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut at the timeout"
    );
    assert_eq!(up.hits(), 0);
    gw.shutdown().await;

    // failure: allow forwards, and still counts the failure.
    let gw = Gateway::start(
        &config(&url, "      failure: allow"),
        &[("UP", up.host_port())],
    )
    .await;
    assert_eq!(call(&gw, "/app", &[]).await.status, 200);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_external_auth_total{policy="authz",result="error"}"#
        ),
        Some(1.0)
    );
    gw.shutdown().await;

    // Nobody listening.
    let dead = dead_addr().await;
    let gw = Gateway::start(
        &config(&format!("http://{dead}/check"), ""),
        &[("UP", up.host_port())],
    )
    .await;
    call(&gw, "/app", &[("authorization", "Bearer good")])
        .await
        .assert_error(503, "auth_unavailable");
    gw.shutdown().await;
}

#[tokio::test]
async fn decisions_are_cached_by_the_key_for_their_ttl() {
    let authz = Authz::start().await;
    let up = Upstream::echo("up").await;
    let url = format!("http://{}/check", authz.addr);
    let extra = "      cache: { key: [header:authorization, method], ttl: 400ms }";
    let gw = Gateway::start(&config(&url, extra), &[("UP", up.host_port())]).await;

    let good = [("authorization", "Bearer good")];
    assert_eq!(call(&gw, "/app/a", &good).await.status, 200);
    let calls = authz.calls();
    // Same key (the path is not part of it): the kept decision, with the
    // headers it copies.
    let r = call(&gw, "/app/b", &good).await;
    assert_eq!(r.json()["headers"]["x-user-id"], "u-1");
    assert_eq!(authz.calls(), calls);
    // Denials are kept too; another key asks again.
    assert_eq!(
        call(&gw, "/app", &[("authorization", "Bearer login")])
            .await
            .status,
        302
    );
    assert_eq!(
        call(&gw, "/app", &[("authorization", "Bearer login")])
            .await
            .status,
        302
    );
    assert_eq!(authz.calls(), calls + 1);
    // Then the time runs out.
    wait_until("the kept decision to expire", async || {
        let before = authz.calls();
        assert_eq!(call(&gw, "/app", &good).await.status, 200);
        if authz.calls() > before {
            Ok(())
        } else {
            Err(String::new())
        }
    })
    .await;
    gw.shutdown().await;
}

#[test]
fn bad_external_settings_are_located_errors() {
    for (policy, want) in [
        (
            "url: nowhere",
            "auth.external.authz.url: expected an http:// or https:// URL",
        ),
        (
            "url: http://a/b\n      copy_to_upstream: [host]",
            "auth.external.authz.copy_to_upstream[0]: `host` is managed by the gateway",
        ),
        (
            "url: http://a/b\n      cache: { key: [body], ttl: 1s }",
            "auth.external.authz.cache.key[0]: `body` is not header:<name>, method or path",
        ),
        (
            "url: http://a/b\n      cache: { key: [], ttl: 1s }",
            "auth.external.authz.cache.key: list what a decision depends on",
        ),
        ("url: http://a/b\n      failure: maybe", "failure"),
        (
            "url: http://a/b\n      send_body: 2MiB",
            "auth.external.authz.send_body: at most 1MiB",
        ),
        (
            "url: http://a/b\n      send_body: 1KiB\n      cache: { key: [path], ttl: 1s }",
            "auth.external.authz.cache: not with send_body",
        ),
    ] {
        let yaml = format!(
            "auth:\n  external:\n    authz:\n      {policy}\nroutes:\n  - name: r\n    match: {{ path: / }}\n    respond: {{ status: 200 }}\n    auth: [external:authz]\n"
        );
        assert_refused(&yaml, want);
    }
}

#[tokio::test]
async fn send_body_gives_the_service_the_whole_body_and_the_upstream_too() {
    let authz = Authz::start().await;
    let up = Upstream::echo("up").await;
    let yaml = format!(
        "{}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
auth:
  external:
    authz:
      url: 'http://{}/check'
      send_body: 1KiB
routes:
  - name: app
    match: {{ path_prefix: / }}
    upstream: up
    auth: [external:authz]
",
        server_block(""),
        authz.addr
    );
    let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
    let post = |body: Vec<u8>| {
        let req = Request::post(gw.url("/orders"))
            .header("authorization", "Bearer good")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        send(req)
    };

    let r = post(br#"{"order": 7}"#.to_vec()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(authz.last_method.lock().unwrap().as_str(), "POST");
    assert_eq!(authz.last("x-forwarded-method").as_deref(), Some("POST"));
    assert_eq!(
        authz.last("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(&authz.last_body.lock().unwrap()[..], br#"{"order": 7}"#);
    // The upstream gets the same body, once read.
    assert_eq!(r.json()["body_bytes"], 12);
    assert_eq!(r.json()["body_complete"], true);

    // The service may decide on the body.
    let r = post(b"please refuse this".to_vec()).await.unwrap();
    assert_eq!(r.status, 403);
    // A body larger than send_body never reaches the service: 413.
    let calls = authz.calls();
    post(vec![b'x'; 2048])
        .await
        .unwrap()
        .assert_error(413, "payload_too_large");
    assert_eq!(authz.calls(), calls);
    // Without a body it is a GET, as without send_body.
    assert_eq!(
        get_with(&gw.url("/orders"), &[("authorization", "Bearer good")])
            .await
            .status,
        200
    );
    assert_eq!(authz.last_method.lock().unwrap().as_str(), "GET");
    gw.shutdown().await;
}
