//! The admin API (SPEC §5): `/config` (redacted), `POST /reload` (diff or 400
//! with every error), `/explain`, and listeners opened and closed by a reload.

use crate::support::*;
use http::Request;

fn config(extra_routes: &str, extra_listener: &str) -> String {
    format!(
        "server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
{extra_listener}
  admin:
    bind: 127.0.0.1:0
upstreams:
  users:
    targets: [{{ url: 'http://${{UP}}' }}]
routes:
  - name: users
    match: {{ path_prefix: /users, methods: [GET] }}
    upstream: users
    rewrite: {{ strip_prefix: /users }}
    request_headers:
      set: {{ Authorization: 'Bearer top-s3cret-token' }}
  - name: ping
    match: {{ path: /ping }}
    respond: {{ status: 200, body: pong }}
{extra_routes}"
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    gw: Gateway,
    _up: Upstream,
}

async fn setup() -> Setup {
    let up = Upstream::echo("u").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, config("", "")).unwrap();
    let gw = Gateway::start_file(&path, &[("UP", up.host_port())], None).await;
    Setup {
        _dir: dir,
        path,
        gw,
        _up: up,
    }
}

/// Writes the file the way editors do: a new file renamed over the old one.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn config_shows_the_running_config_without_secrets() {
    let s = setup().await;
    let r = get(&s.gw.admin_url("/config")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(!r.text().contains("top-s3cret-token"), "{}", r.text());
    let j = r.json();
    assert_eq!(j["version"].as_str().unwrap().len(), 16);
    assert!(j["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(j["config"]["routes"][0]["name"], "users");
    assert_eq!(
        j["config"]["routes"][0]["request_headers"]["set"]["Authorization"],
        "<redacted>"
    );
    s.gw.shutdown().await;
}

#[tokio::test]
async fn post_reload_answers_the_diff_and_400_with_every_error() {
    let s = setup().await;
    let before = get(&s.gw.admin_url("/config")).await.unwrap().json()["version"].clone();

    // Unchanged file: still a counted, successful attempt with an empty diff.
    let r = s.gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], before);
    assert_eq!(
        r.json()["changes"],
        serde_json::json!({"added": [], "removed": [], "changed": []})
    );

    let added = "  - name: orders\n    match: { path_prefix: /orders }\n    upstream: users\n";
    replace(
        &s.path,
        &config(added, "").replace("body: pong", "body: pong2"),
    );
    let r = s.gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_ne!(j["version"], before);
    assert_eq!(j["changes"]["added"], serde_json::json!(["route:orders"]));
    assert_eq!(j["changes"]["changed"], serde_json::json!(["route:ping"]));
    assert_eq!(get(&s.gw.url("/orders/1")).await.unwrap().status, 200);
    assert_eq!(get(&s.gw.url("/ping")).await.unwrap().text(), "pong2");

    // Two errors at once: both reported, the running config untouched.
    let broken = config(added, "")
        .replace("body: pong", "body: pong, nope: 1")
        .replace("methods: [GET]", "methods: [GET], bogus: 1");
    replace(&s.path, &broken);
    let r = s.gw.post_reload().await;
    assert_eq!(r.status, 400, "{}", r.text());
    let j = r.json();
    assert_eq!(j["error"], "invalid_config");
    let errors = j["errors"].as_array().unwrap();
    assert!(errors.len() >= 2, "{j}");
    assert!(errors.iter().all(|e| e["line"].as_u64().is_some()), "{j}");
    let all = j.to_string();
    assert!(all.contains("bogus") && all.contains("nope"), "{all}");
    assert_eq!(get(&s.gw.url("/orders/1")).await.unwrap().status, 200);

    let m = s.gw.metrics().await;
    assert_eq!(
        metric(&m, r#"tollgate_config_reloads_total{result="success"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, r#"tollgate_config_reloads_total{result="failure"}"#),
        Some(1.0)
    );
    s.gw.shutdown().await;
}

#[tokio::test]
async fn removed_routes_and_targets_leave_metrics() {
    let s = setup().await;
    assert_eq!(get(&s.gw.url("/users/1")).await.unwrap().status, 200);
    let m = s.gw.metrics().await;
    assert!(m.contains(r#"route="users""#));
    assert!(m.contains(r#"upstream="users""#));
    let only_ping = config("", "")
        .replace("  - name: users\n", "  - name: gone\n")
        .replace(
            "upstream: users\n    rewrite",
            "respond: { status: 204 }\n    rewrite",
        )
        .replace("    rewrite: { strip_prefix: /users }\n", "")
        .replace(
            "upstreams:\n  users:\n    targets: [{ url: 'http://${UP}' }]\n",
            "",
        );
    replace(&s.path, &only_ping);
    let r = s.gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert!(
        j["changes"]["removed"]
            .as_array()
            .unwrap()
            .contains(&"upstream:users".into()),
        "{j}"
    );
    let m = s.gw.metrics().await;
    assert!(!m.contains(r#"route="users""#), "{m}");
    assert!(!m.contains(r#"upstream="users""#), "{m}");
    s.gw.shutdown().await;
}

#[tokio::test]
async fn listeners_added_and_removed_by_reload() {
    let s = setup().await;
    let app = s.gw.app();
    assert_eq!(app.listeners().len(), 1);
    let extra = "    - name: extra\n      bind: 127.0.0.1:0\n";
    replace(&s.path, &config("", extra));
    let r = s.gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["changes"]["added"],
        serde_json::json!(["listener:extra"])
    );
    let extra_addr = app.listener_addr("extra").expect("extra listener opened");
    let http_addr = app.listener_addr("http").unwrap();
    assert_eq!(http_addr, s.gw.addr, "the unchanged listener is untouched");
    let r = get(&format!("http://{extra_addr}/ping")).await.unwrap();
    assert_eq!(r.text(), "pong");

    // A keep-alive connection on the removed listener finishes its request
    // and is then closed gracefully; the listener stops accepting.
    let mut kept = Conn::open(extra_addr).await;
    assert_eq!(kept.get("/ping").await.unwrap().status, 200);
    replace(&s.path, &config("", ""));
    let r = s.gw.post_reload().await;
    assert_eq!(
        r.json()["changes"]["removed"],
        serde_json::json!(["listener:extra"])
    );
    assert!(app.listener_addr("extra").is_none());
    wait_until("the removed listener to stop accepting", async || {
        tokio::net::TcpStream::connect(extra_addr).await.is_err()
    })
    .await;
    assert_eq!(get(&s.gw.url("/ping")).await.unwrap().text(), "pong");
    s.gw.shutdown().await;
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_refuses_the_reload() {
    let s = setup().await;
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let extra = format!(
        "    - name: extra\n      bind: {}\n",
        taken.local_addr().unwrap()
    );
    replace(
        &s.path,
        &config("", &extra).replace("body: pong", "body: new"),
    );
    let r = s.gw.post_reload().await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["path"], "server.listeners[1].bind");
    assert_eq!(get(&s.gw.url("/ping")).await.unwrap().text(), "pong");
    s.gw.shutdown().await;
}

#[tokio::test]
async fn explain_answers_like_tollgate_routes() {
    let s = setup().await;
    let r = get(&s
        .gw
        .admin_url("/explain?method=GET&path=/users/7&header.x-a=1"))
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // The credential the route sets upstream is redacted, as in /config.
    assert!(!r.text().contains("top-s3cret-token"), "{}", r.text());
    let j = r.json();
    assert_eq!(
        j["route"]["request_headers"]["set"]["authorization"],
        "<redacted>"
    );
    assert_eq!(j["route"]["name"], "users");
    assert_eq!(j["route"]["upstream"]["name"], "users");
    assert_eq!(j["route"]["upstream"]["path"], "/7");
    assert_eq!(j["route"]["upstream"]["targets"][0]["weight"], 1);
    assert_eq!(j["route"]["auth"], serde_json::json!([]));

    let j = get(&s.gw.admin_url("/explain?method=POST&path=/users/7"))
        .await
        .unwrap()
        .json();
    assert!(j["route"].is_null(), "{j}");
    let misses = j["near_misses"].as_array().unwrap();
    assert_eq!(misses[0]["route"], "users");
    assert!(
        misses[0]["reason"].as_str().unwrap().contains("POST"),
        "{j}"
    );

    // The path is read as the edge reads it: normalised first, then matched.
    let j = get(&s.gw.admin_url("/explain?method=GET&path=/x/..//users/7"))
        .await
        .unwrap()
        .json();
    assert_eq!(j["request"]["normalized_path"], "/users/7", "{j}");
    assert_eq!(j["route"]["name"], "users", "{j}");
    let j = get(&s.gw.admin_url("/explain?method=GET&path=/users;v=1/7"))
        .await
        .unwrap()
        .json();
    assert_eq!(j["request"]["normalized_path"], "/users;v=1/7", "{j}");
    assert_eq!(j["request"]["match_path"], "/users/7", "{j}");
    assert_eq!(j["route"]["name"], "users", "{j}");
    let j = get(&s.gw.admin_url("/explain?method=GET&path=/users/../../etc"))
        .await
        .unwrap()
        .json();
    assert_eq!(j["rejected"]["status"], 400, "{j}");
    assert_eq!(j["rejected"]["error"], "bad_request", "{j}");
    assert!(j["route"].is_null(), "{j}");

    let r = get(&s.gw.admin_url("/explain?method=GET")).await.unwrap();
    assert_eq!(r.status, 400);
    s.gw.shutdown().await;
}

#[tokio::test]
async fn reload_without_a_file_is_refused_and_counted() {
    let up = Upstream::echo("u").await;
    let gw = Gateway::start(&config("", ""), &[("UP", up.host_port())]).await;
    let r = gw.post_reload().await;
    assert_eq!(r.status, 400);
    let r = get(&gw.admin_url("/reload")).await.unwrap();
    assert_eq!(r.status, 405);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, r#"tollgate_config_reloads_total{result="failure"}"#),
        Some(1.0)
    );
    gw.shutdown().await;
}

const TOKEN: &str = "admin-token-0123456789abcdef";

/// `GET` (or `POST` for `/reload`) on the admin API, with these headers.
async fn admin(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::builder().method(method).uri(gw.admin_url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(empty()).unwrap()).await.unwrap()
}

#[tokio::test]
async fn the_admin_token_guards_every_endpoint_but_the_probes() {
    let up = Upstream::echo("u").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    let with_token = |token: &str| {
        config("", "").replace(
            "  admin:\n    bind: 127.0.0.1:0\n",
            &format!("  admin:\n    bind: 127.0.0.1:0\n    token: {token}\n"),
        )
    };
    std::fs::write(&path, with_token(TOKEN)).unwrap();
    let gw = Gateway::start_file(&path, &[("UP", up.host_port())], None).await;
    let good = format!("Bearer {TOKEN}");

    // Missing, wrong, another scheme, two headers: one answer, no detail.
    let refused = admin(&gw, "GET", "/config", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some(r#"Bearer realm="tollgate admin""#)
    );
    let wrong_token = format!("Bearer {TOKEN}x");
    for headers in [
        vec![("authorization", "Bearer nope")],
        vec![("authorization", wrong_token.as_str())],
        vec![("authorization", &TOKEN[..TOKEN.len() - 1])],
        vec![("authorization", "Basic YWRtaW46YWRtaW4=")],
        vec![
            ("authorization", good.as_str()),
            ("authorization", good.as_str()),
        ],
    ] {
        let r = admin(&gw, "GET", "/config", &headers).await;
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.text(), refused.text(), "{headers:?}");
    }
    assert_eq!(
        refused.json(),
        serde_json::json!({"error": "unauthorized", "message": "the admin API needs its bearer token"})
    );
    for path in [
        "/metrics",
        "/upstreams",
        "/reloads",
        "/explain?path=/ping",
        "/nowhere",
    ] {
        assert_eq!(admin(&gw, "GET", path, &[]).await.status, 401, "{path}");
    }
    assert_eq!(admin(&gw, "POST", "/reload", &[]).await.status, 401);
    assert_eq!(
        admin(&gw, "DELETE", "/idempotency/r/k", &[]).await.status,
        401
    );

    // With it: everything answers; the scheme is case-insensitive.
    let auth = [("authorization", good.as_str())];
    for path in [
        "/config",
        "/metrics",
        "/upstreams",
        "/reloads",
        "/explain?path=/ping",
    ] {
        let r = admin(&gw, "GET", path, &auth).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let lower = format!("bearer {TOKEN}");
    assert_eq!(
        admin(&gw, "GET", "/config", &[("authorization", &lower)])
            .await
            .status,
        200
    );
    let shown = admin(&gw, "GET", "/config", &auth).await;
    assert!(!shown.text().contains(TOKEN), "{}", shown.text());
    assert_eq!(
        shown.json()["config"]["server"]["admin"]["token"],
        "<redacted>"
    );

    // Probes and the dashboard's files need none (they carry no data).
    assert_eq!(admin(&gw, "GET", "/healthz", &[]).await.status, 200);
    assert_eq!(admin(&gw, "GET", "/readyz", &[]).await.status, 200);
    let page = admin(&gw, "GET", "/ui/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains(r#"data-token="required""#));
    assert!(!page.text().contains(TOKEN));

    // A reload swaps the token at once.
    let other = "another-admin-token-9876543210";
    std::fs::write(&path, with_token(other)).unwrap();
    assert_eq!(admin(&gw, "POST", "/reload", &auth).await.status, 200);
    assert_eq!(admin(&gw, "GET", "/config", &auth).await.status, 401);
    let auth = format!("Bearer {other}");
    assert_eq!(
        admin(&gw, "GET", "/config", &[("authorization", &auth)])
            .await
            .status,
        200
    );
    // Without a token the page is told so and the API is open again.
    std::fs::write(&path, config("", "")).unwrap();
    assert_eq!(
        admin(&gw, "POST", "/reload", &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let page = admin(&gw, "GET", "/ui/", &[]).await;
    assert!(!page.text().contains("data-token"));
    assert_eq!(admin(&gw, "GET", "/config", &[]).await.status, 200);
    gw.shutdown().await;
}

#[test]
fn a_short_or_spaced_admin_token_is_refused() {
    for (token, why) in [
        ("short", "at least 16 characters"),
        ("'sixteen chars but spaced'", "without spaces"),
    ] {
        let yaml = config("", "").replace(
            "  admin:\n    bind: 127.0.0.1:0\n",
            &format!("  admin:\n    bind: 127.0.0.1:0\n    token: {token}\n"),
        );
        let env = |_: &str| Some("127.0.0.1:1".to_string());
        let Err(e) = tollgate::config::load_str_with_env(&yaml, "t.yaml", &env) else {
            panic!("token {token} was accepted");
        };
        let e = e.to_string();
        assert!(e.contains("server.admin.token") && e.contains(why), "{e}");
    }
}

#[tokio::test]
async fn the_dashboard_files_are_served_with_a_strict_policy() {
    let s = setup().await;
    let r = admin(&s.gw, "GET", "/ui", &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("/ui/"));
    for (path, kind) in [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let r = admin(&s.gw, "GET", path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(kind), "{path}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
    }
    // No inline script: the page loads its one script file.
    let page = admin(&s.gw, "GET", "/ui/", &[]).await.text();
    assert!(page.contains(r#"<script src="/ui/app.js" defer></script>"#));
    assert_eq!(page.matches("<script").count(), 1);
    // Read-only: the dashboard's files take no other method.
    assert_eq!(admin(&s.gw, "POST", "/ui/", &[]).await.status, 405);
    assert_eq!(admin(&s.gw, "GET", "/ui/other.js", &[]).await.status, 404);
    s.gw.shutdown().await;
}

#[tokio::test]
async fn reloads_lists_each_reload_with_its_diff_and_no_secret() {
    let s = setup().await;
    let history =
        async || get(&s.gw.admin_url("/reloads")).await.unwrap().json()["reloads"].clone();
    let start = history().await;
    assert_eq!(start.as_array().unwrap().len(), 1, "{start}");
    assert_eq!(start[0]["trigger"], "start");
    assert_eq!(start[0]["result"], "success");
    assert!(start[0]["from_version"].is_null());
    let first = start[0]["version"].clone();

    // A changed setting, and an added route carrying a credential.
    let added = "  - name: orders\n    match: { path_prefix: /orders }\n    upstream: users\n    \
                 request_headers: { set: { X-API-Key: added-s3cret } }\n";
    replace(
        &s.path,
        &config(added, "").replace("methods: [GET]", "methods: [GET, HEAD]"),
    );
    assert_eq!(s.gw.post_reload().await.status, 200);
    let h = history().await;
    let last = &h[0];
    assert_eq!(last["trigger"], "admin");
    assert_eq!(last["result"], "success");
    assert_eq!(last["from_version"], first);
    assert_ne!(last["version"], first);
    assert_eq!(
        last["changes"]["added"],
        serde_json::json!(["route:orders"])
    );
    assert_eq!(
        last["changes"]["changed"],
        serde_json::json!(["route:users"])
    );
    let diff = last["diff"].as_array().unwrap();
    assert!(
        diff.contains(&serde_json::json!({
            "path": "routes[users].match.methods",
            "before": ["GET"], "after": ["GET", "HEAD"]})),
        "{diff:?}"
    );
    let orders = diff
        .iter()
        .find(|d| d["path"] == "routes[orders]")
        .unwrap_or_else(|| panic!("{diff:?}"));
    assert!(orders["before"].is_null());
    assert_eq!(orders["after"]["match"]["path_prefix"], "/orders");
    assert_eq!(
        orders["after"]["request_headers"]["set"]["X-API-Key"],
        "<redacted>"
    );
    assert!(!h.to_string().contains("added-s3cret"), "{h}");

    // A refused reload is listed with its errors; the version stays.
    replace(&s.path, "routes: [");
    assert_eq!(s.gw.post_reload().await.status, 400);
    let h = history().await;
    assert_eq!(h[0]["result"], "failure");
    assert_eq!(h[0]["version"], h[1]["version"]);
    assert!(!h[0]["errors"].as_array().unwrap().is_empty(), "{h}");

    // Twenty are kept, newest first.
    for _ in 0..20 {
        s.gw.post_reload().await;
    }
    let h = history().await;
    assert_eq!(h.as_array().unwrap().len(), 20);
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .all(|r| r["trigger"] == "admin")
    );
    s.gw.shutdown().await;
}
