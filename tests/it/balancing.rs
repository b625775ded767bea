//! Load balancing across upstream targets (SPEC §2 `balance`): weighted round
//! robin, sticky hashing on a header, a cookie or the client IP, and
//! least-request.

use std::collections::{HashMap, HashSet};

use crate::support::*;

async fn two(
    balance: &str,
    weights: (u32, u32),
    extra_server: &str,
) -> (Upstream, Upstream, Gateway) {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let yaml = server_block(extra_server)
        + &format!(
            r#"
upstreams:
  up:
    targets:
      - url: http://${{A}}
        weight: {}
      - url: http://${{B}}
        weight: {}
    balance: "{balance}"
    timeouts: {{ connect: 500ms, request: 5s }}
routes:
  - name: r
    match: {{ path_prefix: / }}
    upstream: up
"#,
            weights.0, weights.1
        );
    let gw = Gateway::start(&yaml, &[("A", a.host_port()), ("B", b.host_port())]).await;
    (a, b, gw)
}

/// The server that answered a GET with these headers.
async fn served_by(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> String {
    let r = get_with(&gw.url(path), headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["server"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn weighted_round_robin_is_exact() {
    let (a, b, gw) = two("round_robin", (3, 1), "").await;
    for _ in 0..40 {
        served_by(&gw, "/rr", &[]).await;
    }
    assert_eq!(
        (a.hits(), b.hits()),
        (30, 10),
        "weights 3:1 over 40 requests"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn round_robin_default_weights_alternate() {
    let (a, b, gw) = two("round_robin", (1, 1), "").await;
    let mut seq = Vec::new();
    for _ in 0..10 {
        seq.push(served_by(&gw, "/rr", &[]).await);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5), "{seq:?}");
    assert!(seq.windows(2).all(|w| w[0] != w[1]), "alternates: {seq:?}");
    gw.shutdown().await;
}

/// For 15 keys (odd, so that plain round robin cannot pass by accident), every request with the same key lands on the same
/// server; across the keys both servers are used.
async fn assert_sticky(gw: &Gateway, header: &str, value: impl Fn(usize) -> String) {
    let mut seen: HashMap<usize, String> = HashMap::new();
    for round in 0..3 {
        for k in 0..15 {
            let v = value(k);
            let s = served_by(gw, "/sticky", &[(header, v.as_str())]).await;
            match seen.get(&k) {
                Some(prev) => assert_eq!(prev, &s, "key {v:?} moved on round {round}"),
                None => {
                    seen.insert(k, s);
                }
            }
        }
    }
    let used: HashSet<&String> = seen.values().collect();
    assert_eq!(used.len(), 2, "15 keys all hashed to one server: {seen:?}");
}

#[tokio::test]
async fn header_hash_is_sticky() {
    let (_a, _b, gw) = two("header_hash:x-user", (1, 1), "").await;
    assert_sticky(&gw, "x-user", |k| format!("user-{k}")).await;
    // Without the header the request is still served.
    served_by(&gw, "/sticky", &[]).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn cookie_hash_is_sticky() {
    let (_a, _b, gw) = two("cookie_hash:session", (1, 1), "").await;
    // Other cookies around the one that counts must not matter.
    assert_sticky(&gw, "cookie", |k| {
        format!("theme=dark; session=s{k}; lang=en")
    })
    .await;
    let s1 = served_by(&gw, "/c", &[("cookie", "session=s3")]).await;
    let s2 = served_by(&gw, "/c", &[("cookie", "lang=fr; session=s3")]).await;
    assert_eq!(s1, s2, "only the session cookie counts");
    gw.shutdown().await;
}

#[tokio::test]
async fn ip_hash_uses_the_client_ip_through_trusted_proxies() {
    let (_a, _b, gw) = two("ip_hash", (1, 1), "trusted_proxies: [127.0.0.1]").await;
    assert_sticky(&gw, "x-forwarded-for", |k| format!("198.51.100.{}", k + 1)).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn least_request_prefers_the_idle_target() {
    let (a, b, gw) = two("least_request", (1, 1), "").await;
    // Hold one request on whichever target gets it.
    let url = gw.url("/slow?delay_ms=1500");
    let held = tokio::spawn(async move { get_with(&url, &[]).await });
    wait_until("one target is busy", async || a.active() + b.active() == 1).await;
    let busy = if a.active() == 1 { "a" } else { "b" };
    let idle = if busy == "a" { "b" } else { "a" };
    for i in 0..6 {
        let s = served_by(&gw, "/quick", &[]).await;
        assert_eq!(s, idle, "request {i} went to the busy target {busy}");
    }
    let held = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert_eq!(held.status, 200);
    gw.shutdown().await;
}
