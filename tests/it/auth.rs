//! The rest of the edge policies end to end: API keys (alone and any-of with a
//! JWT), require_claims, token sources with forward_claims/strip_token, CORS,
//! IP rules through trusted proxies, and the auth-failure metric.

use http::Request;
use serde_json::json;

use crate::support::auth::*;
use crate::support::*;

fn config(server_extra: &str, routes: &str) -> String {
    format!(
        "{}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
auth:
  jwt:
    main:
      algorithms: [HS256]
      secret: {SECRET}
      forward_claims: {{ sub: X-User-Id }}
    cookie:
      algorithms: [HS256]
      secret: {SECRET}
      token_from: [query:access_token, cookie:session, header:X-Token]
      strip_token: true
  api_keys:
    partners:
      keys:
        - {{ id: acme, key: acme-key-123 }}
        - {{ id: globex, key: globex-key-456 }}
    custom:
      header: X-Partner-Key
      keys: [{{ id: initech, key: initech-key }}]
cors:
  web:
    allow_origins: [https://app.example.com]
    allow_methods: [GET, POST]
    allow_headers: [Authorization, Content-Type]
    expose_headers: [X-Request-Id]
    allow_credentials: true
    max_age: 10m
  open:
    allow_origins: ['*']
routes:
{routes}
",
        server_block(server_extra)
    )
}

async fn start(server_extra: &str, routes: &str) -> (Gateway, Upstream) {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(server_extra, routes), &[("UP", up.host_port())]).await;
    (gw, up)
}

fn bearer(claims: &serde_json::Value) -> String {
    format!("Bearer {}", mint(Algorithm::HS256, claims))
}

// --- API keys -------------------------------------------------------------

const KEYS_ROUTE: &str =
    "  - { name: keys, match: { path_prefix: / }, upstream: up, auth: ['api_key:partners'] }";

#[tokio::test]
async fn api_key_valid_forwards_the_id_never_the_key() {
    let (gw, up) = start("", KEYS_ROUTE).await;
    let r = get_with(
        &gw.url("/x"),
        &[("x-api-key", "globex-key-456"), ("x-consumer-id", "forged")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(h["x-consumer-id"], "globex");
    assert!(h.get("x-api-key").is_none(), "the key was forwarded: {h}");
    assert_eq!(up.hits(), 1);
    gw.wait_log_lines(1).await;
    assert!(
        !gw.log_text().contains("globex-key-456"),
        "the key was logged"
    );
}

#[tokio::test]
async fn api_key_invalid_and_missing() {
    let (gw, up) = start("", KEYS_ROUTE).await;
    let bad = get_with(&gw.url("/x"), &[("x-api-key", "acme-key-12")]).await;
    bad.assert_error(401, "unauthorized");
    assert_eq!(
        bad.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let missing = get_with(&gw.url("/x"), &[]).await;
    missing.assert_error(401, "unauthorized");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(up.hits(), 0);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_auth_failures_total{route="keys",reason="invalid"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"tollgate_auth_failures_total{route="keys",reason="missing"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn api_key_in_a_custom_header() {
    let route =
        "  - { name: keys, match: { path_prefix: / }, upstream: up, auth: ['api_key:custom'] }";
    let (gw, _up) = start("", route).await;
    let r = get_with(&gw.url("/x"), &[("x-partner-key", "initech-key")]).await;
    assert_eq!(r.json()["headers"]["x-consumer-id"], "initech");
    assert!(r.json()["headers"].get("x-partner-key").is_none());
    let wrong_header = get_with(&gw.url("/x"), &[("x-api-key", "initech-key")]).await;
    wrong_header.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn any_of_jwt_or_api_key() {
    let route = "  - { name: either, match: { path_prefix: / }, upstream: up, auth: ['jwt:main', 'api_key:partners'] }";
    let (gw, up) = start("", route).await;
    let token = bearer(&good_claims());
    let by_jwt = get_with(&gw.url("/x"), &[("authorization", token.as_str())]).await;
    assert_eq!(by_jwt.status, 200);
    assert_eq!(by_jwt.json()["headers"]["x-user-id"], "user-7");
    assert!(by_jwt.json()["headers"].get("x-consumer-id").is_none());
    let by_key = get_with(&gw.url("/x"), &[("x-api-key", "acme-key-123")]).await;
    assert_eq!(by_key.json()["headers"]["x-consumer-id"], "acme");
    // A bad key and no token: the most telling reason (invalid) wins.
    let bad = get_with(&gw.url("/x"), &[("x-api-key", "nope")]).await;
    assert_eq!(
        bad.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    // An expired token and no key: expired.
    let mut c = good_claims();
    c["exp"] = json!(now() - 600);
    let expired = get_with(&gw.url("/x"), &[("authorization", bearer(&c).as_str())]).await;
    expired.assert_error(401, "unauthorized");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_auth_failures_total{route="either",reason="expired"}"#
        ),
        Some(1.0)
    );
    assert_eq!(up.hits(), 2);
    // The consumer (key id or subject) is in the access log.
    let lines = gw.wait_log_lines(4).await;
    let consumers: Vec<_> = lines.iter().map(|l| l["consumer"].clone()).collect();
    assert!(consumers.contains(&json!("user-7")), "{consumers:?}");
    assert!(consumers.contains(&json!("acme")), "{consumers:?}");
    assert!(
        consumers.contains(&serde_json::Value::Null),
        "{consumers:?}"
    );
}

// --- require_claims -------------------------------------------------------

#[tokio::test]
async fn require_claims_scope_strings_arrays_and_any_of() {
    let routes = "
  - name: scoped
    match: { path_prefix: /scoped }
    upstream: up
    auth: ['jwt:main']
    require_claims:
      scope: users:write
      roles: [admin, support]
  - name: number
    match: { path_prefix: /tenant }
    upstream: up
    auth: ['jwt:main']
    require_claims: { tenant: '42' }";
    let (gw, up) = start("", routes).await;
    let call = |path: &'static str, claims: serde_json::Value| {
        let url = gw.url(path);
        async move { get_with(&url, &[("authorization", bearer(&claims).as_str())]).await }
    };
    // scope "users:read users:write" contains users:write; roles has support.
    assert_eq!(call("/scoped", good_claims()).await.status, 200);
    let mut c = good_claims();
    c["scope"] = json!("users:read");
    call("/scoped", c).await.assert_error(403, "forbidden");
    let mut c = good_claims();
    c["roles"] = json!(["dev"]);
    call("/scoped", c).await.assert_error(403, "forbidden");
    let mut c = good_claims();
    c["roles"] = json!("admin");
    assert_eq!(call("/scoped", c).await.status, 200);
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("scope");
    call("/scoped", c).await.assert_error(403, "forbidden");
    let mut c = good_claims();
    c["tenant"] = json!(42);
    assert_eq!(call("/tenant", c).await.status, 200);
    assert_eq!(up.hits(), 3);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_auth_failures_total{route="scoped",reason="forbidden"}"#
        ),
        Some(3.0)
    );
}

// --- token sources, strip_token -------------------------------------------

#[tokio::test]
async fn tokens_from_query_cookie_and_header_are_stripped() {
    let route = "  - { name: c, match: { path_prefix: / }, upstream: up, auth: ['jwt:cookie'] }";
    let (gw, _up) = start("", route).await;
    let t = mint(Algorithm::HS256, &good_claims());

    let r = get_with(&gw.url(&format!("/q?a=1&access_token={t}&b=2")), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/q?a=1&b=2");

    let cookie = format!("theme=dark; session={t}; lang=en");
    let r = get_with(&gw.url("/c"), &[("cookie", cookie.as_str())]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["cookie"], "theme=dark; lang=en");

    let r = get_with(&gw.url("/h"), &[("x-token", t.as_str())]).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("x-token").is_none());

    // The Authorization header is not a source of this policy.
    let auth = format!("Bearer {t}");
    get_with(&gw.url("/h"), &[("authorization", auth.as_str())])
        .await
        .assert_error(401, "unauthorized");
}

// --- CORS ------------------------------------------------------------------

fn preflight(url: &str, origin: &str) -> Request<http_body_util::Full<bytes::Bytes>> {
    Request::builder()
        .method("OPTIONS")
        .uri(url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .body(empty())
        .unwrap()
}

const CORS_ROUTES: &str = "
  - { name: web, match: { path_prefix: /web }, upstream: up, auth: ['jwt:main'], cors: web }
  - { name: open, match: { path_prefix: /open }, upstream: up, cors: open }";

#[tokio::test]
async fn cors_preflight_is_answered_by_the_gateway_before_auth() {
    let (gw, up) = start("", CORS_ROUTES).await;
    let r = send(preflight(&gw.url("/web/x"), "https://app.example.com"))
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Authorization, Content-Type")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let vary: Vec<_> = r.headers.get_all("vary").iter().collect();
    assert!(vary.iter().any(|v| v.to_str().unwrap().contains("Origin")));
    assert_eq!(up.hits(), 0, "a preflight reached the upstream");

    // A disallowed origin: still answered here, but without CORS headers.
    let r = send(preflight(&gw.url("/web/x"), "https://evil.example"))
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn cors_headers_on_answers_and_errors_only_for_allowed_origins() {
    let (gw, up) = start("", CORS_ROUTES).await;
    let token = bearer(&good_claims());
    let ok = get_with(
        &gw.url("/web/x"),
        &[
            ("origin", "https://app.example.com"),
            ("authorization", token.as_str()),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        ok.header("access-control-expose-headers"),
        Some("X-Request-Id")
    );

    // A gateway error (401) carries them too, so the browser can read it.
    let denied = get_with(&gw.url("/web/x"), &[("origin", "https://app.example.com")]).await;
    denied.assert_error(401, "unauthorized");
    assert_eq!(
        denied.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );

    let evil = get_with(
        &gw.url("/web/x"),
        &[
            ("origin", "https://evil.example"),
            ("authorization", token.as_str()),
        ],
    )
    .await;
    assert_eq!(evil.status, 200);
    assert!(evil.header("access-control-allow-origin").is_none());
    assert!(evil.header("access-control-allow-credentials").is_none());

    // `*` without credentials.
    let open = get_with(&gw.url("/open"), &[("origin", "https://any.example")]).await;
    assert_eq!(open.header("access-control-allow-origin"), Some("*"));
    assert!(open.header("access-control-allow-credentials").is_none());
    assert_eq!(up.hits(), 3);
}

// --- IP rules ----------------------------------------------------------------

#[tokio::test]
async fn ip_allow_and_deny_use_the_client_ip_through_trusted_proxies() {
    let routes = "
  - { name: allow, match: { path_prefix: /allow }, upstream: up, ip_allow: [10.0.0.0/8] }
  - { name: deny, match: { path_prefix: /deny }, upstream: up, ip_deny: [10.1.0.0/16] }
  - { name: both, match: { path_prefix: /both }, upstream: up, ip_allow: [10.0.0.0/8], ip_deny: [10.1.0.0/16] }";
    // The test client connects from 127.0.0.1, a trusted proxy here.
    let (gw, up) = start("trusted_proxies: [127.0.0.0/8]", routes).await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(
        get_with(&gw.url("/allow"), &from("10.2.3.4")).await.status,
        200
    );
    get_with(&gw.url("/allow"), &from("192.168.1.1"))
        .await
        .assert_error(403, "forbidden");
    get_with(&gw.url("/deny"), &from("10.1.2.3"))
        .await
        .assert_error(403, "forbidden");
    assert_eq!(
        get_with(&gw.url("/deny"), &from("10.2.2.3")).await.status,
        200
    );
    // Deny wins over allow.
    get_with(&gw.url("/both"), &from("10.1.2.3"))
        .await
        .assert_error(403, "forbidden");
    // A spoofed left-most entry does not help: the right-most untrusted one counts.
    get_with(&gw.url("/allow"), &from("10.2.3.4, 192.168.1.1"))
        .await
        .assert_error(403, "forbidden");
    assert_eq!(up.hits(), 2);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_auth_failures_total{route="allow",reason="forbidden"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_from_untrusted_peers() {
    let routes =
        "  - { name: allow, match: { path_prefix: / }, upstream: up, ip_allow: [10.0.0.0/8] }";
    let (gw, up) = start("", routes).await;
    get_with(&gw.url("/"), &[("x-forwarded-for", "10.2.3.4")])
        .await
        .assert_error(403, "forbidden");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn the_demo_token_opens_the_demo_secure_route() {
    let a = tollgate::demo::start_echo("echo-a").await.unwrap();
    let b = tollgate::demo::start_echo("echo-b").await.unwrap();
    let gw = Gateway::start(
        tollgate::demo::DEMO_CONFIG,
        &[
            ("TOLLGATE_DEMO_BIND", "127.0.0.1:0".into()),
            ("TOLLGATE_DEMO_ADMIN", "127.0.0.1:0".into()),
            ("TOLLGATE_DEMO_ECHO_A", a.to_string()),
            ("TOLLGATE_DEMO_ECHO_B", b.to_string()),
        ],
    )
    .await;
    get_with(&gw.url("/secure"), &[])
        .await
        .assert_error(401, "unauthorized");
    let auth = format!("Bearer {}", tollgate::demo::demo_token());
    let r = get_with(&gw.url("/secure"), &[("authorization", auth.as_str())]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-user-id"], "demo-user");
    let text = tollgate::demo::instructions(gw.addr, Some(gw.admin));
    assert!(text.contains("Authorization: Bearer ey"), "{text}");
}
