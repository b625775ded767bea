//! The admin API (SPEC §5): `/config` (redacted), `POST /reload` (diff or 400
//! with every error), `/explain`, and listeners opened and closed by a reload.

use crate::support::*;

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
    let j = r.json();
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
