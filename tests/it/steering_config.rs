//! The config of traffic steering (issue 21) as a user writes it: the spec's
//! example validates; every bad input is refused at its file:line, by the
//! loader and by `tollgate validate`, with a message naming what is wrong (and
//! a did-you-mean for an upstream that does not exist); a reload with a bad
//! steering config changes nothing.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tollgate::config::{ConfigError, load_str_with_env};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// The line of a case that the error must point at ends with this comment.
const MARK: &str = "# <-";

fn no_env(_: &str) -> Option<String> {
    None
}

/// Three upstreams (`orders`, `orders-v2`, `shadow`); the case adds `routes`.
const HEAD: &str = "\
server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
upstreams:
  orders:
    targets: [{ url: http://127.0.0.1:9001 }]
  orders-v2:
    targets: [{ url: http://127.0.0.1:9002 }]
  shadow:
    targets: [{ url: http://127.0.0.1:9003 }]
  users:
    targets: [{ url: http://127.0.0.1:9004 }]
";

/// Runs `tollgate validate --config file`, killed after 20 s.
fn validate(file: &Path) -> Output {
    let mut child = Command::new(BIN)
        .args(["validate", "--config", file.to_str().expect("utf-8 path")])
        .env_remove("TOLLGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tollgate");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait_with_output();
            panic!("tollgate validate did not exit in 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `HEAD` + `routes:` + `routes`, refused: see `refused_text`.
fn refused(routes: &str, path: &str, says: &[&str]) -> ConfigError {
    refused_text(&format!("{HEAD}routes:\n{routes}"), path, says)
}

/// Asserts `text` is refused with exactly one error, on the line marked
/// `# <-`, at the key path `path`, its message holding each of `says`; and
/// that `tollgate validate` exits 1 printing that error at `file:line:column`.
fn refused_text(text: &str, path: &str, says: &[&str]) -> ConfigError {
    let marked: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(MARK))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(marked.len(), 1, "one marked line in\n{text}");
    let line = marked[0];

    let errors = match load_str_with_env(text, "steering.yaml", &no_env) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.0,
    };
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got {errors:#?}\n---\n{text}"
    );
    let e = errors[0].clone();
    println!("{e}");
    assert_eq!(
        (e.line, e.path.as_str()),
        (line, path),
        "position of `{e}` in\n{text}"
    );
    for s in says {
        assert!(
            e.message.contains(s),
            "the message {:?} should say {s:?}",
            e.message
        );
    }

    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("steering.yaml");
    std::fs::write(&file, text).expect("write the config");
    let o = validate(&file);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let want = format!(
        "{}:{}:{}: {}: {}",
        file.display(),
        e.line,
        e.column,
        e.path,
        e.message
    );
    assert!(stderr.contains(&want), "`{want}` in\n{stderr}");
    assert!(!stdout.contains("ok"), "{stdout}");
    e
}

/// Asserts `text` loads, and `tollgate validate` prints `ok`.
fn accepted(text: &str) {
    if let Err(e) = load_str_with_env(text, "steering.yaml", &no_env) {
        panic!("expected a valid config, got:\n{e}\n---\n{text}");
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("steering.yaml");
    std::fs::write(&file, text).expect("write the config");
    let o = validate(&file);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");
}

// ---------------------------------------------------------------------------
// Good configs
// ---------------------------------------------------------------------------

/// The example of the issue, with real upstream URLs (and `users` defined).
const SPEC_EXAMPLE: &str = r#"server:
  listeners:
    - { name: plain, bind: "127.0.0.1:0", redirect_to_https: true }   # every request -> https
upstreams:
  orders-v1: { targets: [{ url: http://127.0.0.1:9001 }] }
  orders-v2: { targets: [{ url: http://127.0.0.1:9002 }] }
  shadow: { targets: [{ url: http://127.0.0.1:9003 }] }
  users: { targets: [{ url: http://127.0.0.1:9004 }] }
routes:
  - name: orders
    match: { path_prefix: /orders }
    upstream:
      split:
        - { upstream: orders-v1, weight: 95 }
        - { upstream: orders-v2, weight: 5 }
      sticky: "cookie:tg_canary"
    mirror: { upstream: shadow, percent: 10, max_body: 64KiB, max_in_flight: 256 }
    max_body_bytes: 100MiB
    body_read_timeout: 120s
  - name: orders-canary
    match:
      path_prefix: /orders
      headers:
        x-canary: "1"
        x-beta: { present: true }
        x-version: { regex: "^v[0-9]+$" }
      cookies: { tg_tester: "yes" }
    upstream: orders-v2
  - name: old
    match: { path_prefix: /old }
    redirect: { scheme: https, host: new.example.com, path: /new, status: 301, strip_query: false }
  - name: users
    match: { path_regex: "^/v1/users/[0-9]+$" }
    upstream: users
    rewrite:
      path_regex: { pattern: "^/v1/users/([0-9]+)$", replace: "/users/$1" }
"#;

#[test]
fn the_spec_example_validates() {
    accepted(SPEC_EXAMPLE);
    let loaded = load_str_with_env(SPEC_EXAMPLE, "steering.yaml", &no_env).unwrap();
    assert_eq!(loaded.config.routes.len(), 4);
}

#[test]
fn every_documented_default_and_variant_validates() {
    let routes = r#"routes:
  - name: plain-string
    match: { path_prefix: /a }
    upstream: orders
    mirror: { upstream: shadow }
  - name: default-weights
    match: { path_prefix: /b }
    upstream:
      split: [{ upstream: orders }, { upstream: orders-v2 }]
  - name: a-zero-side
    match: { path_prefix: /c }
    upstream:
      split:
        - { upstream: orders, weight: 0 }
        - { upstream: orders-v2, weight: 1 }
      sticky: "header:x-user-id"
    mirror: { upstream: shadow, percent: 0.5 }
  - name: sticky-none
    match: { path_prefix: /d }
    upstream:
      split: [{ upstream: orders, weight: 3 }, { upstream: orders-v2, weight: 1 }]
      sticky: none
    mirror: { upstream: shadow, percent: 100, max_body: 0, max_in_flight: 1 }
  - name: absent
    match:
      path_prefix: /e
      headers: { x-debug: { present: false } }
      cookies: { a: "1", b: "2" }
    upstream: orders
  - name: only-strip-query
    match: { path_prefix: /f }
    redirect: { strip_query: true }
  - name: only-scheme
    match: { path_prefix: /g }
    redirect: { scheme: http, status: 308 }
  - name: groups
    match: { path_prefix: /h }
    upstream: users
    rewrite:
      path_regex: { pattern: "^/h/(?P<id>[0-9]+)/(x)$", replace: "/u/$${id}/$${2}/$$/$1" }
"#;
    accepted(&format!("{HEAD}{routes}"));
    for status in [301, 302, 303, 307, 308] {
        accepted(&format!(
            "{HEAD}routes:\n  - name: r\n    match: {{ path: /r }}\n    \
             redirect: {{ path: /s, status: {status} }}\n"
        ));
    }
}

// ---------------------------------------------------------------------------
// Splits
// ---------------------------------------------------------------------------

#[test]
fn weights_summing_to_zero_are_refused() {
    refused(
        "  - name: r
    match: { path_prefix: /r }
    upstream:
      split: # <-
        - { upstream: orders, weight: 0 }
        - { upstream: orders-v2, weight: 0 }
",
        "routes[0].upstream.split",
        &["weight"],
    );
}

#[test]
fn an_unknown_upstream_in_a_split_gets_a_suggestion() {
    let e = refused(
        "  - name: r
    match: { path_prefix: /r }
    upstream:
      split:
        - { upstream: orders, weight: 9 }
        - { upstream: orders-v3, weight: 1 } # <-
",
        "routes[0].upstream.split[1].upstream",
        &["unknown upstream `orders-v3`"],
    );
    assert!(
        e.message.ends_with("(did you mean `orders-v2`?)"),
        "{}",
        e.message
    );
}

#[test]
fn the_same_upstream_twice_in_a_split_is_refused() {
    refused(
        "  - name: r
    match: { path_prefix: /r }
    upstream:
      split:
        - { upstream: orders, weight: 1 }
        - { upstream: orders-v2, weight: 1 }
        - { upstream: orders, weight: 1 } # <-
",
        "routes[0].upstream.split[2].upstream",
        &["`orders`"],
    );
}

#[test]
fn a_split_with_respond_is_refused() {
    refused(
        "  - name: r # <-
    match: { path_prefix: /r }
    upstream:
      split: [{ upstream: orders }, { upstream: orders-v2 }]
    respond: { status: 200 }
",
        "routes[0]",
        &["upstream", "respond"],
    );
}

#[test]
fn a_split_with_redirect_is_refused() {
    refused(
        "  - name: r # <-
    match: { path_prefix: /r }
    upstream:
      split: [{ upstream: orders }, { upstream: orders-v2 }]
    redirect: { host: new.example.com }
",
        "routes[0]",
        &["upstream", "redirect"],
    );
}

#[test]
fn a_sticky_that_is_not_cookie_header_or_none_is_refused() {
    for sticky in [
        "\"query:user\"",
        "cookie",
        "\"cookie:\"",
        "\"header:\"",
        "random",
    ] {
        refused(
            &format!(
                "  - name: r
    match: {{ path_prefix: /r }}
    upstream:
      split: [{{ upstream: orders }}, {{ upstream: orders-v2 }}]
      sticky: {sticky} # <-
"
            ),
            "routes[0].upstream.sticky",
            &["cookie:", "header:", "none"],
        );
    }
}

// ---------------------------------------------------------------------------
// Mirrors
// ---------------------------------------------------------------------------

#[test]
fn an_unknown_upstream_in_a_mirror_gets_a_suggestion() {
    let e = refused(
        "  - name: r
    match: { path_prefix: /r }
    upstream: orders
    mirror: { upstream: orders-v3 } # <-
",
        "routes[0].mirror.upstream",
        &["unknown upstream `orders-v3`"],
    );
    assert!(
        e.message.ends_with("(did you mean `orders-v2`?)"),
        "{}",
        e.message
    );
}

#[test]
fn a_mirror_at_the_routes_own_upstream_is_refused() {
    refused(
        "  - name: r
    match: { path_prefix: /r }
    upstream: orders
    mirror: { upstream: orders } # <-
",
        "routes[0].mirror.upstream",
        &["`orders`", "the route's own upstream"],
    );
}

#[test]
fn a_mirror_at_a_side_of_the_split_is_refused() {
    refused(
        "  - name: r
    match: { path_prefix: /r }
    upstream:
      split: [{ upstream: orders, weight: 9 }, { upstream: orders-v2, weight: 1 }]
    mirror: { upstream: orders-v2 } # <-
",
        "routes[0].mirror.upstream",
        &["`orders-v2`", "a side of this route's split"],
    );
}

#[test]
fn a_mirror_on_a_respond_route_is_refused() {
    refused(
        "  - name: r
    match: { path_prefix: /r }
    respond: { status: 200 }
    mirror: { upstream: shadow } # <-
",
        "routes[0].mirror",
        &["mirror"],
    );
}

#[test]
fn a_mirror_on_a_redirect_route_is_refused() {
    refused(
        "  - name: r
    match: { path_prefix: /r }
    redirect: { host: new.example.com }
    mirror: { upstream: shadow } # <-
",
        "routes[0].mirror",
        &["mirror"],
    );
}

#[test]
fn a_percent_outside_0_to_100_is_refused() {
    for percent in ["0", "0.0", "-5", "100.5", "1000"] {
        refused(
            &format!(
                "  - name: r
    match: {{ path_prefix: /r }}
    upstream: orders
    mirror: {{ upstream: shadow, percent: {percent} }} # <-
"
            ),
            "routes[0].mirror.percent",
            &["100"],
        );
    }
}

// ---------------------------------------------------------------------------
// Redirects
// ---------------------------------------------------------------------------

#[test]
fn a_redirect_with_an_upstream_is_refused() {
    refused(
        "  - name: r # <-
    match: { path_prefix: /r }
    upstream: orders
    redirect: { host: new.example.com }
",
        "routes[0]",
        &["upstream", "redirect"],
    );
}

#[test]
fn a_redirect_with_respond_is_refused() {
    refused(
        "  - name: r # <-
    match: { path_prefix: /r }
    respond: { status: 200 }
    redirect: { host: new.example.com }
",
        "routes[0]",
        &["respond", "redirect"],
    );
}

#[test]
fn a_redirect_that_changes_nothing_is_refused() {
    for redirect in [
        "{ status: 302 }",
        "{ strip_query: false }",
        "{ status: 301, strip_query: false }",
    ] {
        refused(
            &format!(
                "  - name: r
    match: {{ path_prefix: /r }}
    redirect: {redirect} # <-
"
            ),
            "routes[0].redirect",
            &["scheme", "host", "path", "strip_query"],
        );
    }
}

#[test]
fn a_redirect_status_other_than_301_302_303_307_308_is_refused() {
    for status in ["200", "300", "304", "305", "404"] {
        refused(
            &format!(
                "  - name: r
    match: {{ path_prefix: /r }}
    redirect: {{ host: new.example.com, status: {status} }} # <-
"
            ),
            "routes[0].redirect.status",
            &[status, "301", "308"],
        );
    }
}

#[test]
fn a_redirect_scheme_other_than_http_or_https_is_refused() {
    for scheme in ["ftp", "HTTPS://", "wss"] {
        refused(
            &format!(
                "  - name: r
    match: {{ path_prefix: /r }}
    redirect: {{ scheme: \"{scheme}\", host: new.example.com }} # <-
"
            ),
            "routes[0].redirect.scheme",
            &[scheme, "https"],
        );
    }
}

// ---------------------------------------------------------------------------
// path_regex rewrites
// ---------------------------------------------------------------------------

#[test]
fn a_rewrite_pattern_that_does_not_compile_is_refused() {
    refused(
        r#"  - name: r
    match: { path_prefix: /v1 }
    upstream: users
    rewrite:
      path_regex: { pattern: "^/v1/(x", replace: "/x" } # <-
"#,
        "routes[0].rewrite.path_regex.pattern",
        &["regex"],
    );
}

#[test]
fn a_replace_naming_a_missing_group_is_refused() {
    for (replace, says) in [
        ("/users/$2", &["no group `2`"][..]),
        // `$${` is the config's literal `${` (`${..}` alone names an
        // environment variable): the pattern sees `${2}` and `${id}`.
        ("/users/$${2}", &["no group `2`"][..]),
        ("/users/$${id}", &["no group `id`"][..]),
        ("/users/$1a", &["no group `1a`", "$${1}a"][..]),
    ] {
        refused(
            &format!(
                r#"  - name: r
    match: {{ path_prefix: /v1 }}
    upstream: users
    rewrite:
      path_regex: {{ pattern: "^/v1/users/([0-9]+)$", replace: "{replace}" }} # <-
"#
            ),
            "routes[0].rewrite.path_regex.replace",
            says,
        );
    }
}

#[test]
fn path_regex_with_strip_prefix_or_replace_prefix_is_refused() {
    for (other, named) in [
        ("strip_prefix: /v1", "strip_prefix"),
        ("replace_prefix: { from: /v1, to: /v2 }", "replace_prefix"),
    ] {
        refused(
            &format!(
                r#"  - name: r
    match: {{ path_prefix: /v1 }}
    upstream: users
    rewrite:
      {other}
      path_regex: {{ pattern: "^/v1/(.*)$", replace: "/$1" }} # <-
"#
            ),
            "routes[0].rewrite.path_regex",
            &["path_regex", named],
        );
    }
}

// ---------------------------------------------------------------------------
// Per-route body limits
// ---------------------------------------------------------------------------

#[test]
fn per_route_body_limits_need_an_upstream_and_a_value_above_zero() {
    for (key, value, path) in [
        ("max_body_bytes", "0", "routes[0].max_body_bytes"),
        ("body_read_timeout", "0s", "routes[0].body_read_timeout"),
    ] {
        refused(
            &format!(
                "  - name: r
    match: {{ path_prefix: /r }}
    upstream: orders
    {key}: {value} # <-
"
            ),
            path,
            &[],
        );
    }
    for (key, value, path) in [
        ("max_body_bytes", "1MiB", "routes[0].max_body_bytes"),
        ("body_read_timeout", "5s", "routes[0].body_read_timeout"),
    ] {
        refused(
            &format!(
                "  - name: r
    match: {{ path_prefix: /r }}
    respond: {{ status: 200 }}
    {key}: {value} # <-
"
            ),
            path,
            &["upstream"],
        );
    }
}

// ---------------------------------------------------------------------------
// Listeners
// ---------------------------------------------------------------------------

#[test]
fn redirect_to_https_on_a_tls_listener_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a cert");
    let (cert, key) = (dir.path().join("gw.crt"), dir.path().join("gw.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write the cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write the key");
    let listener = |redirect: &str| {
        format!(
            "server:
  listeners:
    - name: https
      bind: 127.0.0.1:0
{redirect}      tls:
        certificates:
          - {{ cert: '{}', key: '{}' }}
    - name: plain
      bind: 127.0.0.1:0
      redirect_to_https: true
",
            cert.display(),
            key.display()
        )
    };
    // The same listener without the key is fine (and so is the plain one).
    accepted(&listener(""));
    let e = refused_text(
        &listener("      redirect_to_https: true # <-\n"),
        "server.listeners[0].redirect_to_https",
        &[],
    );
    assert!(
        e.message.to_lowercase().contains("tls"),
        "the message says why: {}",
        e.message
    );
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

fn reload_config(routes: &str) -> String {
    format!(
        "server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
  admin:
    bind: 127.0.0.1:0
upstreams:
  orders:
    targets: [{{ url: 'http://${{V1}}' }}]
  orders-v2:
    targets: [{{ url: 'http://${{V2}}' }}]
routes:
{routes}"
    )
}

/// Which upstream served each of `n` requests to `/orders/x`.
async fn served_by(gw: &Gateway, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(&gw.url("/orders/x")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        out.push(r.json()["server"].as_str().unwrap().to_string());
    }
    out
}

#[tokio::test]
async fn a_reload_with_a_bad_steering_config_changes_nothing() {
    let v1 = Upstream::echo("v1").await;
    let v2 = Upstream::echo("v2").await;
    let vars = [("V1", v1.host_port()), ("V2", v2.host_port())];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    let old = "  - name: orders
    match: { path_prefix: /orders }
    upstream: orders
";
    std::fs::write(&path, reload_config(old)).unwrap();
    let gw = Gateway::start_file(&path, &vars, None).await;
    assert_eq!(served_by(&gw, 5).await, ["v1"; 5]);
    let version = get(&gw.admin_url("/config")).await.unwrap().json()["version"].clone();

    // A split to an upstream that does not exist, a mirror at a split side,
    // and a new route that must not appear.
    let bad = reload_config(
        "  - name: orders
    match: { path_prefix: /orders }
    upstream:
      split:
        - { upstream: orders, weight: 0 }
        - { upstream: orders-v3, weight: 1 }
    mirror: { upstream: orders }
  - name: new
    match: { path: /new }
    respond: { status: 200, body: new }
",
    );
    replace_file(&path, &bad);
    let r = gw.post_reload().await;
    assert_eq!(r.status, 400, "{}", r.text());
    let j = r.json();
    assert_eq!(j["error"], "invalid_config");
    let errors = j["errors"].as_array().expect("errors");
    let line_of = |text: &str| bad.lines().position(|l| l.contains(text)).unwrap() as u64 + 1;
    let got: Vec<(u64, &str)> = errors
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["path"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (
                line_of("upstream: orders-v3"),
                "routes[0].upstream.split[1].upstream"
            ),
            (line_of("mirror:"), "routes[0].mirror.upstream"),
        ],
        "{j}"
    );
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("(did you mean `orders-v2`?)"),
        "{j}"
    );

    // The old routing keeps serving, unchanged.
    assert_eq!(served_by(&gw, 5).await, ["v1"; 5]);
    assert_eq!(get(&gw.url("/new")).await.unwrap().status, 404);
    assert_eq!(
        get(&gw.admin_url("/config")).await.unwrap().json()["version"],
        version
    );
    assert_eq!(gw.reload_counts().await, (0.0, 1.0));
    assert_eq!(v2.hits(), 0);

    // The same change made valid is taken: every request now goes to v2.
    let good = bad
        .replace("upstream: orders-v3", "upstream: orders-v2")
        .replace("    mirror: { upstream: orders }\n", "");
    replace_file(&path, &good);
    let r = gw.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(served_by(&gw, 5).await, ["v2"; 5]);
    assert_eq!(get(&gw.url("/new")).await.unwrap().text(), "new");
    assert_eq!(gw.reload_counts().await, (1.0, 1.0));
    assert_eq!(v1.hits(), 10);
    gw.shutdown().await;
}
