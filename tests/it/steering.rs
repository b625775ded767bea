//! Traffic steering (issue 21): weighted splits between upstreams, sticky by a
//! header or a cookie (with the gateway's own cookie when it is absent),
//! canary routes chosen by headers and cookies, redirect routes and the
//! listener's `redirect_to_https`, `rewrite.path_regex`, per-route body limits,
//! and the split as `/explain` shows it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;

use crate::support::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The test upstream that answered (`v1`, `v2`, ...: its `x-upstream`); the
/// response must be a 200.
fn side(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-upstream")
        .expect("x-upstream from the test upstream")
        .to_string()
}

/// `orders-v1` / `orders-v2` on echo servers named `v1` / `v2`.
async fn two_sides() -> (Upstream, Upstream, Vec<(&'static str, String)>) {
    two_sides_with(Behavior::Echo).await
}

/// `two_sides` with this behaviour (a fixed answer is cheaper than the echo's
/// JSON over thousands of requests).
async fn two_sides_with(b: Behavior) -> (Upstream, Upstream, Vec<(&'static str, String)>) {
    let v1 = Upstream::start("v1", b.clone()).await;
    let v2 = Upstream::start("v2", b).await;
    let vars = vec![("V1", v1.host_port()), ("V2", v2.host_port())];
    (v1, v2, vars)
}

const TWO_UPSTREAMS: &str = r#"
upstreams:
  orders-v1:
    targets: [ { url: "http://${V1}" } ]
    timeouts: { connect: 500ms, request: 5s }
  orders-v2:
    targets: [ { url: "http://${V2}" } ]
    timeouts: { connect: 500ms, request: 5s }
"#;

/// One `/orders` route splitting `v1_weight`/`v2_weight` with this `sticky`.
fn split_config(v1_weight: u32, v2_weight: u32, sticky: &str) -> String {
    server_block("")
        + TWO_UPSTREAMS
        + &format!(
            r#"
routes:
  - name: orders
    match: {{ path_prefix: /orders }}
    upstream:
      split:
        - {{ upstream: orders-v1, weight: {v1_weight} }}
        - {{ upstream: orders-v2, weight: {v2_weight} }}
      sticky: "{sticky}"
"#
        )
}

/// Sends `ids` (each once, with `x-user-id: <id>`) over `conns` kept-alive
/// connections at once; returns the side each id landed on.
async fn sides_of(addr: SocketAddr, ids: &[String], conns: usize) -> HashMap<String, String> {
    let mut tasks = Vec::new();
    for c in 0..conns {
        let mine: Vec<String> = ids.iter().skip(c).step_by(conns).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let mut client = Conn::open(addr).await;
            let mut out = Vec::with_capacity(mine.len());
            for id in mine {
                let r = client
                    .get_with("/orders/1", &[("x-user-id", id.as_str())])
                    .await;
                out.push((id, side(&r)));
            }
            out
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        for (id, s) in t.await.expect("client task") {
            all.insert(id, s);
        }
    }
    assert_eq!(all.len(), ids.len());
    all
}

fn count(sides: &HashMap<String, String>, which: &str) -> usize {
    sides.values().filter(|s| *s == which).count()
}

// ---------------------------------------------------------------------------
// 1. Weighted split without sticky
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_95_5_sends_five_percent_to_v2() {
    let (v1, v2, vars) = two_sides_with(Behavior::Status(200, "ok")).await;
    let gw = Gateway::start(&split_config(95, 5, "none"), &vars).await;
    // 10,000 requests: the v2 count has a standard deviation of about 22
    // (0.22 points), so ±1 point is more than four and a half of them.
    const CONNS: usize = 10;
    const PER_CONN: usize = 1000;
    const TOTAL: usize = CONNS * PER_CONN;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut seen = (0usize, 0usize);
            for _ in 0..PER_CONN {
                let r = conn.get("/orders/1").await.expect("GET /orders/1");
                match side(&r).as_str() {
                    "v1" => seen.0 += 1,
                    "v2" => seen.1 += 1,
                    other => panic!("served by {other}"),
                }
            }
            seen
        }));
    }
    let (mut s1, mut s2) = (0, 0);
    for t in tasks {
        let (a, b) = t.await.expect("client task");
        s1 += a;
        s2 += b;
    }
    println!("{TOTAL} requests in {:?}", started.elapsed());
    assert_eq!(s1 + s2, TOTAL);
    assert_eq!(
        (v1.hits(), v2.hits()),
        (s1, s2),
        "the upstreams counted what the responses said"
    );
    let share = 100.0 * v2.hits() as f64 / TOTAL as f64;
    assert!(
        (4.0..=6.0).contains(&share),
        "v2 got {share:.2}% of {TOTAL} requests (v1 {}, v2 {}); want 5 ± 1",
        v1.hits(),
        v2.hits()
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. Sticky by header, and a reload that moves keys only toward v2
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_header_keeps_users_and_a_reweight_only_moves_them_to_v2() {
    let (v1, v2, vars) = two_sides_with(Behavior::Status(200, "ok")).await;
    let gw = Gateway::start(&split_config(95, 5, "header:x-user-id"), &vars).await;
    let ids: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();

    let first = sides_of(gw.addr, &ids, 8).await;
    let second = sides_of(gw.addr, &ids, 8).await;
    let moved: Vec<&String> = ids.iter().filter(|id| first[*id] != second[*id]).collect();
    assert!(
        moved.is_empty(),
        "{} ids changed sides between two identical requests, e.g. {:?}",
        moved.len(),
        &moved[..moved.len().min(5)]
    );
    let before_v2 = count(&first, "v2");
    assert_eq!(count(&first, "v1") + before_v2, ids.len());
    assert!(
        (60..=140).contains(&before_v2),
        "95/5: {before_v2} of 2000 ids on v2 (want about 100)"
    );
    assert_eq!(v1.hits() + v2.hits(), 2 * ids.len());

    // Reweight 95/5 -> 90/10: the very next request uses it.
    gw.reload(&split_config(90, 10, "header:x-user-id"), &vars)
        .await;
    let after = sides_of(gw.addr, &ids, 8).await;
    let back: Vec<&String> = ids
        .iter()
        .filter(|id| first[*id] == "v2" && after[*id] == "v1")
        .collect();
    assert!(
        back.is_empty(),
        "{} ids moved from v2 back to v1 when v2's weight went up, e.g. {:?}",
        back.len(),
        &back[..back.len().min(5)]
    );
    let forward = ids
        .iter()
        .filter(|id| first[*id] == "v1" && after[*id] == "v2")
        .count();
    let after_v2 = count(&after, "v2");
    println!("v2: {before_v2} of 2000 ids at 95/5, {after_v2} at 90/10 ({forward} moved)");
    assert!(forward > 0, "no id moved from v1 to v2");
    assert_eq!(after_v2, before_v2 + forward);
    assert!(
        after_v2 > before_v2 && (140..=260).contains(&after_v2),
        "90/10: {after_v2} of 2000 ids on v2 (was {before_v2}; want about 200)"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Sticky by cookie; weight 0
// ---------------------------------------------------------------------------

/// The value of a `Set-Cookie: tg_canary=<16 hex>; Path=/; HttpOnly; SameSite=Lax`.
fn canary_cookie(r: &Resp) -> String {
    let all: Vec<&str> = r
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ASCII set-cookie"))
        .collect();
    assert_eq!(all.len(), 1, "one Set-Cookie: {all:?}");
    let c = all[0];
    let value = c
        .strip_prefix("tg_canary=")
        .and_then(|rest| rest.strip_suffix("; Path=/; HttpOnly; SameSite=Lax"))
        .unwrap_or_else(|| panic!("Set-Cookie is {c:?}"));
    assert!(
        value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()),
        "the cookie value is not 16 hex digits: {c:?}"
    );
    value.to_string()
}

#[tokio::test]
async fn sticky_cookie_is_set_when_absent_and_then_keeps_its_side() {
    let (v1, v2, mut vars) = two_sides().await;
    let dark = Upstream::echo("dark").await;
    vars.push(("DARK", dark.host_port()));
    let yaml = split_config(1, 1, "cookie:tg_canary")
        + r#"
  - name: zero-sticky
    match: { path_prefix: /zs }
    upstream:
      split:
        - { upstream: orders-v1, weight: 1 }
        - { upstream: dark, weight: 0 }
      sticky: "cookie:tg_canary"
  - name: zero-random
    match: { path_prefix: /zr }
    upstream:
      split:
        - { upstream: dark, weight: 0 }
        - { upstream: orders-v1 }
"#;
    let yaml = yaml.replacen(
        "upstreams:\n",
        "upstreams:\n  dark:\n    targets: [ { url: \"http://${DARK}\" } ]\n",
        1,
    );
    let gw = Gateway::start(&yaml, &vars).await;
    let mut client = Conn::open(gw.addr).await;

    // 40 new visitors: each gets a cookie of its own, and 50/50 puts some on each side.
    let mut visitors = Vec::new();
    for _ in 0..40 {
        let r = client.get_with("/orders/1", &[]).await;
        let s = side(&r);
        visitors.push((canary_cookie(&r), s));
    }
    let values: HashSet<&String> = visitors.iter().map(|(c, _)| c).collect();
    assert_eq!(values.len(), 40, "cookie values repeat: {visitors:?}");
    let used: HashSet<&String> = visitors.iter().map(|(_, s)| s).collect();
    assert_eq!(used.len(), 2, "40 visitors all on one side: {visitors:?}");

    // The cookie sent back keeps the side the first answer was picked by.
    for (value, first) in visitors.iter().take(10) {
        let cookie = format!("tg_canary={value}");
        let among = format!("theme=dark; tg_canary={value}; lang=en");
        for i in 0..20 {
            let h = if i % 2 == 0 { &cookie } else { &among };
            let r = client
                .get_with("/orders/1", &[("cookie", h.as_str())])
                .await;
            assert_eq!(&side(&r), first, "cookie {h:?}, request {i}");
            assert!(
                r.header("set-cookie").is_none(),
                "a Set-Cookie although the request had the cookie: {:?}",
                r.headers
            );
        }
    }
    assert_eq!(v1.hits() + v2.hits(), 40 + 10 * 20);

    // Weight 0 never gets anything: without the cookie, with any cookie, or
    // without sticky.
    for i in 0..100 {
        let r = client.get_with("/zs/x", &[]).await;
        assert_eq!(side(&r), "v1");
        canary_cookie(&r);
        let c = format!("tg_canary={i:016x}");
        assert_eq!(
            side(&client.get_with("/zs/x", &[("cookie", c.as_str())]).await),
            "v1"
        );
        assert_eq!(side(&client.get_with("/zr/x", &[]).await), "v1");
    }
    assert_eq!(dark.hits(), 0, "a weight-0 side was used");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. Each side is a normal upstream with its own retries
// ---------------------------------------------------------------------------

#[tokio::test]
async fn each_side_keeps_its_own_retries() {
    let (v1, v2, mut vars) = two_sides().await;
    vars.push(("DEAD", dead_addr().await.to_string()));
    let yaml = server_block("")
        + r#"
upstreams:
  orders-v1:
    targets: [ { url: "http://${V1}" } ]
    timeouts: { connect: 500ms, request: 5s }
  orders-v2:
    targets: [ { url: "http://${DEAD}" }, { url: "http://${V2}" } ]
    timeouts: { connect: 500ms, request: 5s }
    retries: { attempts: 2, on: [connect_error], backoff: 1ms, budget_percent: 100 }
  gone:
    targets: [ { url: "http://${DEAD}" } ]
    timeouts: { connect: 500ms, request: 5s }
routes:
  - name: orders
    match: { path_prefix: /orders }
    upstream:
      split:
        - { upstream: orders-v1, weight: 1 }
        - { upstream: orders-v2, weight: 1 }
  - name: nofail
    match: { path_prefix: /nofail }
    upstream:
      split:
        - { upstream: orders-v1, weight: 1 }
        - { upstream: gone, weight: 1 }
"#;
    let gw = Gateway::start(&yaml, &vars).await;
    let mut client = Conn::open(gw.addr).await;
    for i in 0..40 {
        let r = client.get_with("/orders/1", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(v1.hits() + v2.hits(), 40);
    assert!(v1.hits() > 0 && v2.hits() > 0, "both sides were used");

    // No failover between sides: the side with only a dead target fails,
    // it is not sent to the other side.
    let (mut ok, mut failed) = (0, 0);
    let before = v1.hits();
    for _ in 0..40 {
        let r = client.get_with("/nofail/1", &[]).await;
        match r.status {
            200 => ok += 1,
            502 => {
                r.assert_error(502, "upstream_unavailable");
                failed += 1;
            }
            s => panic!("status {s}: {}", r.text()),
        }
    }
    assert!(
        ok > 0 && failed > 0,
        "{ok} ok, {failed} failed: the dead side must fail on its own"
    );
    assert_eq!(v1.hits() - before, ok);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. Canary routes by header and cookie
// ---------------------------------------------------------------------------

/// A path, the request's headers, and the upstream that must answer.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[tokio::test]
async fn canary_routes_match_headers_and_cookies() {
    let (_v1, _v2, mut vars) = two_sides().await;
    let v3 = Upstream::echo("v3").await;
    vars.push(("V3", v3.host_port()));
    let yaml = server_block("")
        + TWO_UPSTREAMS
        + r#"
  orders-v3:
    targets: [ { url: "http://${V3}" } ]
routes:
  - name: orders
    match: { path_prefix: /orders }
    upstream: orders-v1
  - name: orders-canary
    match:
      path_prefix: /orders
      headers: { x-canary: "1" }
    upstream: orders-v2
  - name: orders-tester
    match:
      path_prefix: /orders
      headers: { x-canary: "1" }
      cookies: { tg_tester: "yes" }
    upstream: orders-v3
  - name: present
    match: { path_prefix: /present }
    upstream: orders-v1
  - name: present-canary
    match:
      path_prefix: /present
      headers: { x-beta: { present: true } }
    upstream: orders-v2
  - name: absent
    match: { path_prefix: /absent }
    upstream: orders-v1
  - name: absent-canary
    match:
      path_prefix: /absent
      headers: { x-beta: { present: false } }
    upstream: orders-v2
  - name: version
    match: { path_prefix: /version }
    upstream: orders-v1
  - name: version-canary
    match:
      path_prefix: /version
      headers: { x-version: { regex: "^v[0-9]+$" } }
    upstream: orders-v2
  - name: loose
    match: { path_prefix: /loose }
    upstream: orders-v1
  - name: loose-canary
    match:
      path_prefix: /loose
      headers: { x-version: { regex: "beta" } }
    upstream: orders-v2
  - name: tester
    match: { path_prefix: /tester }
    upstream: orders-v1
  - name: tester-canary
    match:
      path_prefix: /tester
      cookies: { tg_tester: "yes" }
    upstream: orders-v2
"#;
    let gw = Gateway::start(&yaml, &vars).await;
    let mut c = Conn::open(gw.addr).await;
    let cases: &[Case] = &[
        // Exact header value.
        ("/orders/1", &[], "v1"),
        ("/orders/1", &[("x-canary", "1")], "v2"),
        ("/orders/1", &[("X-Canary", "1")], "v2"),
        ("/orders/1", &[("x-canary", "2")], "v1"),
        ("/orders/1", &[("x-canary", "10")], "v1"),
        ("/orders/1", &[("x-canary", "")], "v1"),
        // Headers and cookies are two constraint kinds: more than headers alone.
        (
            "/orders/1",
            &[("x-canary", "1"), ("cookie", "tg_tester=yes")],
            "v3",
        ),
        ("/orders/1", &[("cookie", "tg_tester=yes")], "v1"),
        // present: true.
        ("/present/x", &[], "v1"),
        ("/present/x", &[("x-beta", "anything")], "v2"),
        ("/present/x", &[("x-beta", "")], "v2"),
        // present: false.
        ("/absent/x", &[], "v2"),
        ("/absent/x", &[("x-beta", "1")], "v1"),
        // regex, anchored by the pattern.
        ("/version/x", &[("x-version", "v12")], "v2"),
        ("/version/x", &[("x-version", "v1")], "v2"),
        ("/version/x", &[("x-version", "v12x")], "v1"),
        ("/version/x", &[("x-version", "xv12")], "v1"),
        ("/version/x", &[("x-version", "v")], "v1"),
        ("/version/x", &[], "v1"),
        // regex, unanchored.
        ("/loose/x", &[("x-version", "my-beta-2")], "v2"),
        ("/loose/x", &[("x-version", "beta")], "v2"),
        ("/loose/x", &[("x-version", "bet-a")], "v1"),
        // cookies: exact value, found among others and in any Cookie header.
        ("/tester/x", &[("cookie", "tg_tester=yes")], "v2"),
        ("/tester/x", &[("cookie", "a=1; tg_tester=yes")], "v2"),
        ("/tester/x", &[("cookie", "tg_tester=yes; b=2")], "v2"),
        (
            "/tester/x",
            &[("cookie", "a=1"), ("cookie", "tg_tester=yes")],
            "v2",
        ),
        (
            "/tester/x",
            &[("cookie", "tg_tester=yes"), ("cookie", "a=1")],
            "v2",
        ),
        ("/tester/x", &[("cookie", "tg_tester=no")], "v1"),
        ("/tester/x", &[("cookie", "tg_tester=yess")], "v1"),
        ("/tester/x", &[("cookie", "xtg_tester=yes")], "v1"),
        ("/tester/x", &[("cookie", "a=1; b=2")], "v1"),
        ("/tester/x", &[("x-tg-tester", "yes")], "v1"),
        ("/tester/x", &[], "v1"),
    ];
    for (path, headers, want) in cases {
        let r = c.get_with(path, headers).await;
        assert_eq!(side(&r), *want, "GET {path} with {headers:?}");
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. Redirects: routes and the listener's redirect_to_https
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redirect_routes_and_redirect_to_https_listener() {
    let up = Upstream::echo("up").await;
    let yaml = r#"
server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
    - name: plain
      bind: 127.0.0.1:0
      redirect_to_https: true
  admin:
    bind: 127.0.0.1:0
upstreams:
  up:
    targets: [ { url: "http://${UP}" } ]
routes:
  - name: orders
    match: { path_prefix: /orders }
    upstream: up
  - name: to-https
    match: { path_prefix: /s }
    redirect: { scheme: https }
  - name: same-scheme
    match: { path_prefix: /same }
    redirect: { scheme: http, path: /same-new }
  - name: host
    match: { path_prefix: /h }
    redirect: { host: new.example.com, status: 307 }
  - name: path
    match: { path_prefix: /p }
    redirect: { path: /new }
  - name: strip
    match: { path_prefix: /q }
    redirect: { strip_query: true }
  - name: old
    match: { path_prefix: /old }
    redirect: { scheme: https, host: new.example.com, path: /new, status: 308, strip_query: false }
  - name: found
    match: { path_prefix: /found }
    redirect: { path: /f, status: 302 }
  - name: see-other
    match: { path_prefix: /see }
    redirect: { path: /o, status: 303 }
  - name: denied
    match: { path_prefix: /denied }
    redirect: { path: /x }
    ip_deny: [127.0.0.1/32]
"#;
    let gw = Gateway::start(yaml, &[("UP", up.host_port())]).await;
    let mut c = Conn::open(gw.addr).await;
    let cases: &[(&str, &str, u16, &str)] = &[
        // The scheme changes: the port goes.
        ("/s/x?q=1", "api.test:8080", 301, "https://api.test/s/x?q=1"),
        ("/s/x", "api.test", 301, "https://api.test/s/x"),
        // The normalised path.
        (
            "/s/./x//y?q=1",
            "api.test:8080",
            301,
            "https://api.test/s/x/y?q=1",
        ),
        // The same scheme: the port stays.
        (
            "/same/a?q=1",
            "api.test:8080",
            301,
            "http://api.test:8080/same-new?q=1",
        ),
        // Host override; 307 as configured.
        (
            "/h/a?q=1",
            "api.test:8080",
            307,
            "http://new.example.com/h/a?q=1",
        ),
        // Path override, query kept (or none).
        (
            "/p/a?q=1&r=2",
            "api.test:8080",
            301,
            "http://api.test:8080/new?q=1&r=2",
        ),
        ("/p/a", "api.test:8080", 301, "http://api.test:8080/new"),
        // strip_query.
        ("/q/a?q=1", "api.test:8080", 301, "http://api.test:8080/q/a"),
        // All of them.
        (
            "/old/a?q=1",
            "api.test:8080",
            308,
            "https://new.example.com/new?q=1",
        ),
        ("/found/a", "api.test", 302, "http://api.test/f"),
        ("/see/a", "api.test", 303, "http://api.test/o"),
    ];
    for (path, host, status, location) in cases {
        let r = c.get_with(path, &[("host", *host)]).await;
        assert_eq!(r.status, *status, "GET {path} (host {host}): {}", r.text());
        assert_eq!(
            r.header("location"),
            Some(*location),
            "GET {path} (host {host})"
        );
        assert!(r.body.is_empty(), "GET {path}: body {:?}", r.text());
    }
    // Policies come first: the deny answers, not the redirect.
    let r = c.get_with("/denied/a", &[("host", "api.test")]).await;
    r.assert_error(403, "forbidden");
    assert!(r.header("location").is_none(), "{:?}", r.headers);
    assert_eq!(up.hits(), 0);

    // The redirect_to_https listener: everything, even a proxied path.
    let plain = gw.app().listener_addr("plain").expect("the plain listener");
    let mut p = Conn::open(plain).await;
    let r = p
        .get_with("/orders/1?x=1", &[("host", "api.test:8080")])
        .await;
    assert_eq!(r.status, 301, "{}", r.text());
    assert_eq!(r.header("location"), Some("https://api.test/orders/1?x=1"));
    let r = p.get_with("/a/b", &[("host", "api.test")]).await;
    assert_eq!(r.status, 301, "{}", r.text());
    assert_eq!(r.header("location"), Some("https://api.test/a/b"));
    for (method, status) in [
        ("HEAD", 301),
        ("POST", 308),
        ("PUT", 308),
        ("DELETE", 308),
        ("PATCH", 308),
        ("OPTIONS", 308),
    ] {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{plain}/orders/1?x=1"))
            .header("host", "api.test:8443");
        let payload = if method == "POST" || method == "PUT" {
            b = b.header("content-type", "application/json");
            body(&b"{\"a\":1}"[..])
        } else {
            empty()
        };
        let r = send(b.body(payload).unwrap()).await.expect(method);
        assert_eq!(r.status, status, "{method}: {}", r.text());
        assert_eq!(
            r.header("location"),
            Some("https://api.test/orders/1?x=1"),
            "{method}"
        );
    }
    // Without a host there is nowhere to send it.
    let reply = raw(
        plain,
        b"GET /orders/1 HTTP/1.0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(reply.status(), Some(400), "{}", reply.text());
    assert_eq!(
        up.hits(),
        0,
        "the upstream got a request through a redirect"
    );

    // The other listener still proxies.
    let r = c.get_with("/orders/1", &[]).await;
    assert_eq!(side(&r), "up");
    assert_eq!(up.hits(), 1);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 7. rewrite.path_regex
// ---------------------------------------------------------------------------

#[tokio::test]
async fn path_regex_rewrite_replaces_every_match_and_keeps_the_query() {
    let up = Upstream::echo("up").await;
    // `$${` is a literal `${` to the config's environment substitution.
    let yaml = server_block("")
        + r#"
upstreams:
  up:
    targets: [ { url: "http://${UP}" } ]
routes:
  - name: users
    match: { path_regex: "^/v1/users/[0-9]+$" }
    upstream: up
    rewrite:
      path_regex: { pattern: "^/v1/users/([0-9]+)$", replace: "/users/$1" }
  - name: legacy
    match: { path_prefix: /legacy }
    upstream: up
    rewrite:
      path_regex: { pattern: "old", replace: "new" }
  - name: braces
    match: { path_prefix: /b }
    upstream: up
    rewrite:
      path_regex: { pattern: "^/b/([a-z]+)$", replace: "/x/$${1}suffix" }
  - name: named
    match: { path_prefix: /n }
    upstream: up
    rewrite:
      path_regex: { pattern: "^/n/(?P<id>[0-9]+)$", replace: "/items/$${id}" }
"#;
    let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
    let mut c = Conn::open(gw.addr).await;
    let cases = [
        ("/v1/users/42?x=1", "/users/42?x=1"),
        ("/v1/users/42", "/users/42"),
        // Every match is replaced.
        ("/legacy/old/old?k=v", "/legacy/new/new?k=v"),
        ("/legacy/gold", "/legacy/gnew"),
        // Not matched: unchanged.
        ("/legacy/other?x=1", "/legacy/other?x=1"),
        ("/b/abc?x=1", "/x/abcsuffix?x=1"),
        ("/b/ABC", "/b/ABC"),
        ("/b/abc/d", "/b/abc/d"),
        ("/n/7", "/items/7"),
        ("/n/7/more", "/n/7/more"),
    ];
    for (sent, want) in cases {
        let r = c.get_with(sent, &[]).await;
        assert_eq!(r.status, 200, "{sent}: {}", r.text());
        assert_eq!(r.json()["path"], want, "{sent}");
    }
    assert_eq!(up.hits(), cases.len());
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 8. Per-route body limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn per_route_body_limits_override_the_server_ones() {
    let up = Upstream::echo("up").await;
    let yaml = server_block("limits: { max_body_bytes: 64KiB, body_read_timeout: 5s }")
        + r#"
upstreams:
  up:
    targets: [ { url: "http://${UP}" } ]
    timeouts: { connect: 500ms, request: 5s }
routes:
  - name: upload
    match: { path_prefix: /upload }
    upstream: up
    max_body_bytes: 1MiB
  - name: slow
    match: { path_prefix: /slow }
    upstream: up
    body_read_timeout: 200ms
  - name: rest
    match: { path_prefix: / }
    upstream: up
"#;
    let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
    const BODY: usize = 600 * 1024;

    // 600 KiB is under the upload route's 1 MiB...
    let r = send(
        Request::post(gw.url("/upload/file"))
            .body(body(vec![b'x'; BODY]))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_bytes"], BODY);
    assert_eq!(up.hits(), 1);

    // ...and over the server's 64 KiB everywhere else (declared, so refused
    // before the upstream).
    for path in ["/other", "/slow"] {
        let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {BODY}\r\n\r\nabc");
        let reply = raw(gw.addr, head.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(reply.status(), Some(413), "{path}: {}", reply.text());
        assert!(
            reply.text().contains("\"payload_too_large\""),
            "{path}: {}",
            reply.text()
        );
    }
    assert_eq!(up.hits(), 1, "a refused body reached the upstream");

    // A stalled body: 408 after the route's 200 ms (`request_timeout`, the
    // code of the server-wide limit too)...
    assert_stalled_body_times_out(gw.addr, "/slow", Duration::from_millis(200)).await;

    // ...while elsewhere the server's 5 s still holds.
    let reply = raw(
        gw.addr,
        b"POST /other HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",
        Duration::from_millis(700),
    )
    .await;
    assert!(
        reply.bytes.is_empty() && !reply.closed,
        "answered within 700 ms under a 5 s limit: {}",
        reply.text()
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 9. /explain shows the split and the side a request would take
// ---------------------------------------------------------------------------

/// The side `/explain` names in `route.upstream.chosen` (a name, or an object
/// with `upstream`).
fn explained_side(j: &serde_json::Value) -> String {
    let chosen = &j["route"]["upstream"]["chosen"];
    chosen
        .as_str()
        .or_else(|| chosen["upstream"].as_str())
        .unwrap_or_else(|| panic!("no route.upstream.chosen in {j}"))
        .to_string()
}

#[tokio::test]
async fn explain_shows_the_split_and_the_sticky_choice() {
    let (_v1, _v2, vars) = two_sides().await;
    let yaml = split_config(50, 50, "header:x-user-id")
        + r#"
  - name: carts
    match: { path_prefix: /carts }
    upstream:
      split:
        - { upstream: orders-v1, weight: 3 }
        - { upstream: orders-v2, weight: 1 }
      sticky: "cookie:tg_canary"
"#;
    let gw = Gateway::start(&yaml, &vars).await;

    let r = get(&gw.admin_url("/explain?method=GET&path=/orders/1&header.x-user-id=u7"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["route"]["name"], "orders", "{j}");
    let split = j["route"]["upstream"]["split"]
        .as_array()
        .unwrap_or_else(|| panic!("route.upstream.split is not an array: {j}"));
    let sides: Vec<(String, u64)> = split
        .iter()
        .map(|s| {
            (
                s["upstream"].as_str().expect("side upstream").to_string(),
                s["weight"].as_u64().expect("side weight"),
            )
        })
        .collect();
    assert_eq!(
        sides,
        vec![("orders-v1".to_string(), 50), ("orders-v2".to_string(), 50)],
        "{j}"
    );

    // The sticky choice is the one a real request with that key takes.
    let mut c = Conn::open(gw.addr).await;
    let mut chosen = HashSet::new();
    for i in 0..20 {
        let user = format!("u{}", if i == 0 { 7 } else { i });
        let j = get(&gw.admin_url(&format!(
            "/explain?method=GET&path=/orders/1&header.x-user-id={user}"
        )))
        .await
        .unwrap()
        .json();
        let explained = explained_side(&j);
        let real = side(
            &c.get_with("/orders/1", &[("x-user-id", user.as_str())])
                .await,
        );
        assert_eq!(explained, format!("orders-{real}"), "user {user}: {j}");
        chosen.insert(explained);
    }
    assert_eq!(chosen.len(), 2, "20 users all on one side: {chosen:?}");

    // The same for a sticky cookie.
    let j = get(&gw.admin_url("/explain?method=GET&path=/carts/1&header.cookie=tg_canary%3Dabc"))
        .await
        .unwrap()
        .json();
    assert_eq!(j["route"]["name"], "carts", "{j}");
    let weights: Vec<u64> = j["route"]["upstream"]["split"]
        .as_array()
        .unwrap_or_else(|| panic!("no split: {j}"))
        .iter()
        .map(|s| s["weight"].as_u64().expect("weight"))
        .collect();
    assert_eq!(weights, [3, 1], "{j}");
    for value in ["abc", "0123456789abcdef", "x"] {
        let j = get(&gw.admin_url(&format!(
            "/explain?method=GET&path=/carts/1&header.cookie=tg_canary%3D{value}"
        )))
        .await
        .unwrap()
        .json();
        let cookie = format!("tg_canary={value}");
        let real = side(&c.get_with("/carts/1", &[("cookie", cookie.as_str())]).await);
        assert_eq!(
            explained_side(&j),
            format!("orders-{real}"),
            "cookie {value}: {j}"
        );
    }
    gw.shutdown().await;
}
