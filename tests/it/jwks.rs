//! `jwks_url` policies against a JWKS server in the test process: loaded before
//! `/readyz` is 200, rotation, an endpoint down at start (503 auth_unavailable,
//! then recovery), failed refreshes keeping the keys, the coalesced and
//! rate-limited unknown-kid refetch, and reloads.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tollgate::policy::jwks::JwksSource;

use crate::support::auth::*;
use crate::support::*;

fn config(jwks_url: &str, refresh: &str) -> String {
    format!(
        "{}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
auth:
  jwt:
    main:
      algorithms: [RS256, ES256]
      jwks_url: {jwks_url}
      jwks_refresh: {refresh}
routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: up
    auth: [jwt:main]
",
        server_block("")
    )
}

fn token(kid: &str) -> String {
    mint_with(Algorithm::RS256, Some(kid), &good_claims(), false)
}

/// A token that is not in the verified-token cache yet.
fn fresh_token(kid: &str) -> String {
    let mut c = good_claims();
    c["jti"] = json!(fastrand::u64(..).to_string());
    mint_with(Algorithm::RS256, Some(kid), &c, false)
}

async fn call(gw: &Gateway, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    get_with(&gw.url("/x"), &[("authorization", auth.as_str())]).await
}

fn metric_or_zero(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

const OK: &str = r#"tollgate_jwks_refreshes_total{policy="main",result="success"}"#;
const FAILED: &str = r#"tollgate_jwks_refreshes_total{policy="main",result="failure"}"#;

#[tokio::test]
async fn keys_load_before_ready_and_verify_tokens() {
    let jwks = JwksServer::start(test_jwks()).await;
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(&jwks.url(), "5m"), &[("UP", up.host_port())]).await;
    assert!(jwks.hits() >= 1);
    assert_eq!(call(&gw, &token("rsa-1")).await.status, 200);
    assert_eq!(
        call(&gw, &mint(Algorithm::ES256, &good_claims()))
            .await
            .status,
        200
    );
    let m = gw.metrics().await;
    assert_eq!(metric(&m, OK), Some(1.0));
    let age = metric(&m, r#"tollgate_jwks_age_seconds{policy="main"}"#).expect("age");
    assert!((0.0..60.0).contains(&age), "{age}");
}

#[tokio::test]
async fn rotation_new_kid_appears_old_one_removed() {
    let jwks = JwksServer::start(rsa_jwks("k1")).await;
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(&jwks.url(), "1h"), &[("UP", up.host_port())]).await;
    let old = token("k1");
    assert_eq!(call(&gw, &old).await.status, 200);

    // The issuer rotates: k2 appears, k1 goes.
    jwks.set(rsa_jwks("k2"));
    let before = jwks.hits();
    // The unknown kid triggers one refetch, and the new key works at once.
    assert_eq!(call(&gw, &token("k2")).await.status, 200);
    assert_eq!(jwks.hits(), before + 1);
    // The old key is gone: even the cached verdict for `old` is not trusted.
    let r = call(&gw, &old).await;
    r.assert_error(401, "unauthorized");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn background_refresh_picks_up_a_rotation() {
    let jwks = JwksServer::start(rsa_jwks("k1")).await;
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(&jwks.url(), "100ms"), &[("UP", up.host_port())]).await;
    assert_eq!(call(&gw, &token("k1")).await.status, 200);
    jwks.set(rsa_jwks("k2"));
    let hits = jwks.hits();
    wait_until("two more background refreshes", async || {
        jwks.hits() >= hits + 2
    })
    .await;
    call(&gw, &fresh_token("k1"))
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn endpoint_down_at_start_then_recovering() {
    // A port with nothing behind it (yet).
    let reserved = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let url = format!("http://{addr}/jwks.json");
    let up = Upstream::echo("up").await;
    let gw = Gateway::start_unready(&config(&url, "500ms"), &[("UP", up.host_port())]).await;

    let m = gw.metrics().await;
    let ready = get(&gw.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status, 503, "ready without keys: {}", ready.text());
    // Not 401: the client did nothing wrong.
    call(&gw, &token("rsa-1"))
        .await
        .assert_error(503, "auth_unavailable");
    // No token at all is still the client's problem.
    get_with(&gw.url("/x"), &[])
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(up.hits(), 0);
    let _ = m;
    wait_until("a failed fetch", async || {
        metric_or_zero(&gw.metrics().await, FAILED) >= 1.0
    })
    .await;

    // The endpoint comes up: the retry loop loads the keys.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _jwks = JwksServer::serve(listener, test_jwks());
    wait_until("/readyz to say 200", async || {
        get(&gw.admin_url("/readyz"))
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert_eq!(call(&gw, &token("rsa-1")).await.status, 200);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let jwks = JwksServer::start(test_jwks()).await;
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(&jwks.url(), "100ms"), &[("UP", up.host_port())]).await;
    assert_eq!(call(&gw, &fresh_token("rsa-1")).await.status, 200);
    jwks.fail_with(500);
    wait_until("two failed refreshes", async || {
        metric_or_zero(&gw.metrics().await, FAILED) >= 2.0
    })
    .await;
    // Not from the cache: a token never seen before verifies with the kept keys.
    assert_eq!(call(&gw, &fresh_token("rsa-1")).await.status, 200);
    // A garbage document is a failure too, and keeps the keys as well.
    jwks.fail_with(0);
    jwks.set(json!({ "keys": "nope" }));
    let failed = metric_or_zero(&gw.metrics().await, FAILED);
    wait_until("one more failed refresh", async || {
        metric_or_zero(&gw.metrics().await, FAILED) >= failed + 1.0
    })
    .await;
    assert_eq!(call(&gw, &fresh_token("rsa-1")).await.status, 200);
}

#[tokio::test]
async fn unknown_kid_refetch_is_coalesced_and_rate_limited() {
    let jwks = JwksServer::start(test_jwks()).await;
    let up = Upstream::echo("up").await;
    let gw = Arc::new(Gateway::start(&config(&jwks.url(), "1h"), &[("UP", up.host_port())]).await);
    let before = jwks.hits();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            call(&gw, &fresh_token("no-such-kid")).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert_eq!(jwks.hits(), before + 1, "one refetch for 20 requests");
    for _ in 0..5 {
        assert_eq!(call(&gw, &fresh_token("other-kid")).await.status, 401);
    }
    assert_eq!(jwks.hits(), before + 1, "at most one refetch per 30s");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn the_refetch_interval_opens_again() {
    let jwks = JwksServer::start(test_jwks()).await;
    let metrics = tollgate::metrics::Metrics::new().unwrap();
    let source = JwksSource::with_refetch_interval(
        "p",
        tollgate::policy::jwks::Origin::Jwks(jwks.url().parse().unwrap()),
        Duration::from_secs(3600),
        metrics.jwks("p"),
        Duration::from_millis(200),
    );
    source.fetch().await.unwrap();
    assert_eq!(jwks.hits(), 1);
    assert!(source.refetch_for_unknown_kid("x").await.is_none());
    assert!(source.refetch_for_unknown_kid("x").await.is_none());
    assert_eq!(jwks.hits(), 2);
    skip(Duration::from_millis(250)).await;
    // A known kid needs no fetch at all.
    assert!(source.refetch_for_unknown_kid("rsa-1").await.is_some());
    assert_eq!(jwks.hits(), 2);
    jwks.set(rsa_jwks("x"));
    assert!(source.refetch_for_unknown_kid("x").await.is_some());
    assert_eq!(jwks.hits(), 3);
}

#[tokio::test]
async fn reloads_keep_unchanged_sources_and_stop_removed_ones() {
    let jwks = JwksServer::start(test_jwks()).await;
    let up = Upstream::echo("up").await;
    let vars = [("UP", up.host_port())];
    let yaml = config(&jwks.url(), "100ms");
    let gw = Gateway::start(&yaml, &vars).await;
    let load = |yaml: &str| {
        let v: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let env = move |k: &str| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        tollgate::config::load_str_with_env(yaml, "test.yaml", &env).unwrap()
    };
    let source = |gw: &Gateway| gw.app().shared().snapshot.load().jwks[0].clone();
    let first = source(&gw);

    // Same policy: the same source (keys, loop) carries over; still ready.
    gw.app().reload(load(&yaml)).await.unwrap();
    assert!(Arc::ptr_eq(&first, &source(&gw)));
    assert_eq!(get(&gw.admin_url("/readyz")).await.unwrap().status, 200);
    assert_eq!(call(&gw, &fresh_token("rsa-1")).await.status, 200);

    // The policy removed: its refresh loop stops.
    let public = format!(
        "{}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
routes:
  - {{ name: api, match: {{ path_prefix: / }}, upstream: up }}
",
        server_block("")
    );
    gw.app().reload(load(&public)).await.unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let hits = jwks.hits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(jwks.hits(), hits, "the removed policy is still refreshing");
}
