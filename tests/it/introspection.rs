//! Token introspection (issue 23 item 2, RFC 7662) against an authorization
//! server in the test process: active and inactive tokens, claims for
//! `require_claims` and upstream headers, answers kept for `cache_ttl` and
//! `negative_ttl`, one call for concurrent checks of one token, both client
//! authentication methods, and an endpoint that is down, slow, failing or
//! lying (no `active`): 503, never a request let through, kept answers still
//! honoured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::*;

const CLIENT_ID: &str = "gateway";
/// With characters that RFC 6749 2.3.1 form-encodes before Basic.
const CLIENT_SECRET: &str = "s3cret:with spaces&more";

/// How the authorization server misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    Status500,
    /// 200 with an answer that lacks `active`.
    NoActive,
    /// Never answers.
    Hang,
}

#[derive(Clone)]
struct AuthServer {
    addr: SocketAddr,
    /// token -> answer (without `active: false` tokens, which are unknown).
    tokens: Arc<Mutex<HashMap<String, Value>>>,
    mode: Arc<Mutex<Mode>>,
    delay: Arc<Mutex<Duration>>,
    calls: Arc<AtomicUsize>,
    /// Requests whose client authentication was wrong.
    refused: Arc<AtomicUsize>,
    post_auth: bool,
}

impl AuthServer {
    async fn start(post_auth: bool) -> AuthServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = AuthServer {
            addr: listener.local_addr().unwrap(),
            tokens: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Normal)),
            delay: Arc::default(),
            calls: Arc::default(),
            refused: Arc::default(),
            post_auth,
        };
        let server = s.clone();
        serve_fn(listener, move |req| {
            let server = server.clone();
            async move { server.answer(req).await }
        });
        s
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let reply = |status: StatusCode, body: Value| {
            let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
            *r.status_mut() = status;
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        };
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mode = *self.mode.lock().unwrap();
        if mode == Mode::Hang {
            std::future::pending::<()>().await;
        }
        if mode == Mode::Status500 {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "oops"}));
        }
        let basic = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let form_ok = req
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/x-www-form-urlencoded");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
        let authenticated = if self.post_auth {
            basic.is_none()
                && form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        } else {
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let want = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(CLIENT_ID),
                enc(CLIENT_SECRET)
            ));
            basic == Some(format!("Basic {want}")) && !form.contains_key("client_secret")
        };
        if !authenticated || !form_ok {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return reply(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
        }
        let token = form.get("token").cloned().unwrap_or_default();
        if mode == Mode::NoActive {
            return reply(StatusCode::OK, json!({"sub": "who-knows"}));
        }
        let answer = match self.tokens.lock().unwrap().get(&token) {
            Some(claims) => {
                let mut a = claims.clone();
                a["active"] = json!(true);
                a
            }
            None => json!({"active": false}),
        };
        reply(StatusCode::OK, answer)
    }

    fn issue(&self, token: &str, claims: Value) {
        self.tokens.lock().unwrap().insert(token.into(), claims);
    }

    fn revoke(&self, token: &str) {
        self.tokens.lock().unwrap().remove(token);
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn config(url: &str, extra: &str) -> String {
    format!(
        "{}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
auth:
  introspection:
    idp:
      url: {url}
      client_id: {CLIENT_ID}
      client_secret: '{CLIENT_SECRET}'
      forward_claims: {{ sub: X-User, scope: X-Scope }}
{extra}
routes:
  - name: admin
    match: {{ path_prefix: /admin }}
    upstream: up
    auth: [introspection:idp]
    require_claims: {{ scope: admin }}
  - name: api
    match: {{ path_prefix: / }}
    upstream: up
    auth: [introspection:idp]
",
        server_block("")
    )
}

async fn call(gw: &Gateway, path: &str, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    get_with(&gw.url(path), &[("authorization", auth.as_str())]).await
}

fn exp_in(secs: u64) -> u64 {
    crate::support::auth::now() + secs
}

#[tokio::test]
async fn active_tokens_pass_with_their_claims_and_others_do_not() {
    let idp = AuthServer::start(false).await;
    idp.issue(
        "tok-alice",
        json!({"sub": "alice", "scope": "read admin", "exp": exp_in(600)}),
    );
    idp.issue(
        "tok-bob",
        json!({"sub": "bob", "scope": "read", "exp": exp_in(600)}),
    );
    let up = Upstream::echo("up").await;
    let url = format!("http://{}/introspect", idp.addr);
    let gw = Gateway::start(&config(&url, ""), &[("UP", up.host_port())]).await;

    let r = call(&gw, "/x", "tok-alice").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["headers"]["x-user"], "alice");
    assert_eq!(seen["headers"]["x-scope"], "read admin");
    assert_eq!(
        seen["headers"]["x-consumer-id"],
        Value::Null,
        "introspection sets no key id"
    );
    // require_claims reads the introspected scope.
    assert_eq!(call(&gw, "/admin/x", "tok-alice").await.status, 200);
    call(&gw, "/admin/x", "tok-bob")
        .await
        .assert_error(403, "forbidden");

    // Unknown or revoked (active: false), missing: 401, and a client cannot
    // forge the claim headers.
    call(&gw, "/x", "tok-nobody")
        .await
        .assert_error(401, "unauthorized");
    get_with(&gw.url("/x"), &[])
        .await
        .assert_error(401, "unauthorized");
    let r = get_with(
        &gw.url("/x"),
        &[("authorization", "Bearer tok-bob"), ("x-user", "alice")],
    )
    .await;
    assert_eq!(r.json()["headers"]["x-user"], "bob");
    assert_eq!(
        idp.refused.load(Ordering::SeqCst),
        0,
        "client authentication"
    );

    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            r#"tollgate_introspection_requests_total{policy="idp",result="active"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"tollgate_introspection_requests_total{policy="idp",result="inactive"}"#
        ),
        Some(1.0)
    );
    // The client secret is shown nowhere.
    let shown = get(&gw.admin_url("/config")).await.unwrap().text();
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
    gw.shutdown().await;
}

#[tokio::test]
async fn answers_are_kept_for_their_time_and_one_call_serves_concurrent_checks() {
    let idp = AuthServer::start(true).await;
    let up = Upstream::echo("up").await;
    let url = format!("http://{}/introspect", idp.addr);
    let extra = "      auth_method: post\n      cache_ttl: 400ms\n      negative_ttl: 300ms";
    let gw = Gateway::start(&config(&url, extra), &[("UP", up.host_port())]).await;

    // Twenty requests at once with a token nobody asked about yet: one call.
    idp.issue("tok-1", json!({"sub": "u1", "exp": exp_in(600)}));
    *idp.delay.lock().unwrap() = Duration::from_millis(200);
    let calls = idp.calls();
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let url = gw.url("/x");
        all.spawn(async move { get_with(&url, &[("authorization", "Bearer tok-1")]).await });
    }
    while let Some(r) = all.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(idp.calls() - calls, 1, "concurrent checks of one token");
    *idp.delay.lock().unwrap() = Duration::ZERO;
    assert_eq!(idp.refused.load(Ordering::SeqCst), 0, "client_secret_post");

    // Kept: a revoked token still passes until cache_ttl has run out.
    idp.revoke("tok-1");
    assert_eq!(call(&gw, "/x", "tok-1").await.status, 200);
    wait_until("the kept answer to expire", async || {
        let status = call(&gw, "/x", "tok-1").await.status;
        if status == 401 {
            Ok(())
        } else {
            Err(format!("{status}"))
        }
    })
    .await;

    // A negative answer is kept for negative_ttl, then asked again.
    let before = idp.calls();
    call(&gw, "/x", "tok-2")
        .await
        .assert_error(401, "unauthorized");
    idp.issue("tok-2", json!({"sub": "u2"}));
    assert_eq!(call(&gw, "/x", "tok-2").await.status, 401, "kept negative");
    assert_eq!(idp.calls(), before + 1);
    wait_until("the negative answer to expire", async || {
        let status = call(&gw, "/x", "tok-2").await.status;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status}"))
        }
    })
    .await;

    // An active token is never kept past its own exp.
    idp.issue("tok-3", json!({"sub": "u3", "exp": exp_in(1)}));
    assert_eq!(call(&gw, "/x", "tok-3").await.status, 200);
    wait_until("tok-3 to be refused after its exp", async || {
        let r = call(&gw, "/x", "tok-3").await;
        if r.status == 401 {
            Ok(())
        } else {
            Err(format!("{}", r.status))
        }
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_that_fails_lets_nothing_through_but_kept_answers_hold() {
    let idp = AuthServer::start(false).await;
    idp.issue("tok-kept", json!({"sub": "k", "exp": exp_in(600)}));
    idp.issue("tok-new", json!({"sub": "n", "exp": exp_in(600)}));
    let up = Upstream::echo("up").await;
    let url = format!("http://{}/introspect", idp.addr);
    let extra = "      timeout: 300ms\n      negative_ttl: 1ms";
    let gw = Gateway::start(&config(&url, extra), &[("UP", up.host_port())]).await;
    assert_eq!(call(&gw, "/x", "tok-kept").await.status, 200);
    let hits = up.hits();

    for mode in [Mode::Status500, Mode::NoActive, Mode::Hang] {
        idp.set_mode(mode);
        let started = std::time::Instant::now();
        call(&gw, "/x", "tok-new")
            .await
            .assert_error(503, "auth_unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by timeout"
        );
        // The answer kept before the failure is still honoured.
        assert_eq!(call(&gw, "/x", "tok-kept").await.status, 200);
        // A failure is not kept as a verdict: the next check asks again.
        wait_until("the failure to be asked again", async || {
            let before = idp.calls();
            let _ = call(&gw, "/x", "tok-new").await;
            if idp.calls() > before {
                Ok(())
            } else {
                Err(String::new())
            }
        })
        .await;
    }
    assert_eq!(
        up.hits(),
        hits + 3,
        "only the kept token reached the upstream"
    );
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            r#"tollgate_introspection_requests_total{policy="idp",result="error"}"#
        )
        .is_some_and(|n| n >= 3.0),
        "{m}"
    );
    idp.set_mode(Mode::Normal);
    wait_until("the endpoint to be used again", async || {
        let status = call(&gw, "/x", "tok-new").await.status;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status}"))
        }
    })
    .await;
    gw.shutdown().await;

    // Nobody listening at all.
    let dead = dead_addr().await;
    let gw = Gateway::start(
        &config(&format!("http://{dead}/i"), ""),
        &[("UP", up.host_port())],
    )
    .await;
    call(&gw, "/x", "tok-new")
        .await
        .assert_error(503, "auth_unavailable");
    gw.shutdown().await;
}

#[test]
fn bad_introspection_settings_are_located_errors() {
    for (policy, want) in [
        (
            "url: not-a-url\n      client_id: a\n      client_secret: b",
            "auth.introspection.idp.url: expected an http:// or https:// URL",
        ),
        (
            "url: https://idp/i\n      client_id: a\n      client_secret: ''",
            "auth.introspection.idp.client_secret: the client secret is empty",
        ),
        (
            "url: https://idp/i\n      client_id: a\n      client_secret: b\n      auth_method: jwt",
            "auth_method",
        ),
        (
            "url: https://idp/i\n      client_id: a\n      client_secret: b\n      cache_ttl: 0s",
            "auth.introspection.idp.cache_ttl: must be above zero",
        ),
        (
            "url: https://idp/i\n      client_id: a\n      client_secret: b\n      forward_claims: { sub: Connection }",
            "managed by the gateway",
        ),
    ] {
        let yaml = format!(
            "auth:\n  introspection:\n    idp:\n      {policy}\nroutes:\n  - name: r\n    match: {{ path: / }}\n    respond: {{ status: 200 }}\n    auth: [introspection:idp]\n"
        );
        assert_refused(&yaml, want);
    }
    let yaml = "routes:\n  - name: r\n    match: { path: / }\n    respond: { status: 200 }\n    auth: [introspection:nope]\n";
    assert_refused(yaml, "unknown introspection policy `nope`");
}
