//! Rate limits through the real gateway (SPEC §2 `rate_limits`, §4 429): the
//! 429 answer and its headers, headers on admitted requests, buckets per key,
//! limits composed on one route, buckets kept across a reload, and the Redis
//! store shared by two gateway instances, including Redis going away and
//! coming back. The Redis tests start their own `redis-server` on a free
//! loopback port and are skipped, with a printed reason, when it is absent.

use std::time::{Duration, Instant};

use crate::support::redis::{BlackHole, RedisServer, redis_block};
use crate::support::*;

fn config(limits: &str, route_limits: &str, redis: &str) -> String {
    format!(
        "{}
{redis}
rate_limits:
{limits}
upstreams:
  app:
    targets: [{{ url: 'http://${{UP}}' }}]
routes:
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: app
    rate_limit: [{route_limits}]
  - name: open
    match: {{ path_prefix: /open }}
    upstream: app
",
        server_block("")
    )
}

/// A slow refill (per minute) keeps these tests exact: no token comes back
/// while they run.
const PER_USER: &str = "  per_user:\n    rate: 1/m\n    burst: 3\n    key: header:x-user\n";

#[tokio::test]
async fn refused_requests_get_429_with_retry_after_and_headers() {
    let up = Upstream::echo("app").await;
    let gw = Gateway::start(&config(PER_USER, "per_user", ""), &[("UP", up.host_port())]).await;
    let url = gw.url("/limited/x");
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = get_with(&url, &[("x-user", "alice")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        remaining.push(r.header("ratelimit-remaining").unwrap_or("?").to_string());
        assert!(r.header("ratelimit-reset").is_some());
    }
    assert_eq!(remaining, ["2", "1", "0"]);

    let refused = get_with(&url, &[("x-user", "alice")]).await;
    let body = refused.assert_error(429, "rate_limited");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("per_user")
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert_eq!(refused.header("ratelimit-limit"), Some("3"));
    assert_eq!(up.hits(), 3, "a refused request never reaches the upstream");

    // Another key has its own bucket; a route without limits has no headers.
    assert_eq!(get_with(&url, &[("x-user", "bob")]).await.status, 200);
    let open = get_with(&gw.url("/open"), &[("x-user", "alice")]).await;
    assert_eq!(open.status, 200);
    assert!(open.header("ratelimit-limit").is_none());

    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tollgate_rate_limited_total{policy="per_user",route="limited"}"#
        ),
        Some(1.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn every_limit_on_a_route_must_admit() {
    let up = Upstream::echo("app").await;
    let limits = format!("{PER_USER}  whole_route:\n    rate: 1/m\n    burst: 4\n    key: route\n");
    let gw = Gateway::start(
        &config(&limits, "per_user, whole_route", ""),
        &[("UP", up.host_port())],
    )
    .await;
    let url = gw.url("/limited");
    let mut statuses = Vec::new();
    for user in ["a", "a", "b", "c", "d", "a"] {
        statuses.push(get_with(&url, &[("x-user", user)]).await.status);
    }
    // The route's shared bucket (4) runs out before any user's (3).
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    let r = get_with(&url, &[("x-user", "e")]).await;
    r.assert_error(429, "rate_limited");
    assert_eq!(up.hits(), 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn buckets_survive_a_reload_while_the_policy_is_unchanged() {
    let up = Upstream::echo("app").await;
    let vars = [("UP", up.host_port())];
    let yaml = config(PER_USER, "per_user", "");
    let gw = Gateway::start(&yaml, &vars).await;
    let url = gw.url("/limited");
    for _ in 0..3 {
        assert_eq!(get_with(&url, &[("x-user", "z")]).await.status, 200);
    }
    assert_eq!(get_with(&url, &[("x-user", "z")]).await.status, 429);

    let env = |k: &str| (k == "UP").then(|| up.host_port());
    // Same policy, another route added: still limited.
    let more = yaml.replace("  - name: open", "  - name: extra\n    match: { path: /extra }\n    respond: { status: 204 }\n  - name: open");
    let loaded = tollgate::config::load_str_with_env(&more, "t.yaml", &env).unwrap();
    gw.app().reload(loaded).await.unwrap();
    assert_eq!(get_with(&url, &[("x-user", "z")]).await.status, 429);

    // A changed definition starts with fresh buckets.
    let changed = more.replace("burst: 3", "burst: 5");
    let loaded = tollgate::config::load_str_with_env(&changed, "t.yaml", &env).unwrap();
    gw.app().reload(loaded).await.unwrap();
    assert_eq!(get_with(&url, &[("x-user", "z")]).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_rate_limit_config_is_refused_with_suggestions() {
    let yaml = config(
        "  per_user:\n    rate: 10/s\n    key: hedaer:x-user\n    store: redys\n",
        "per_usr",
        "",
    );
    let env = |k: &str| (k == "UP").then(|| "127.0.0.1:9".to_string());
    let errors = match tollgate::config::load_str_with_env(&yaml, "t.yaml", &env) {
        Ok(_) => panic!("a broken rate limit config was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(errors.contains("rate_limits.per_user.key"), "{errors}");
    assert!(errors.contains("rate_limits.per_user.store"), "{errors}");
    assert!(errors.contains("did you mean `redis`?"), "{errors}");
    assert!(
        errors.contains("unknown rate limit `per_usr` (did you mean `per_user`?)"),
        "{errors}"
    );
}

// ---- Redis -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sharing_redis_admit_what_one_would() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::echo("app").await;
    let (rate, burst) = (20.0, 10.0);
    let limits = "  shared:\n    rate: 20/s\n    burst: 10\n    key: route\n    store: redis\n";
    let yaml = config(limits, "shared", &redis.redis_block("200ms"));
    let vars = [("UP", up.host_port())];
    let a = Gateway::start(&yaml, &vars).await;
    let b = Gateway::start(&yaml, &vars).await;

    // 16 concurrent clients, half on each instance, for ~2 s.
    let started = Instant::now();
    let run_for = Duration::from_secs(2);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let url = if i % 2 == 0 {
            a.url("/limited")
        } else {
            b.url("/limited")
        };
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut limited, mut other) = (0u32, 0u32, 0u32);
            while started.elapsed() < run_for {
                match get(&url).await.map(|r| r.status) {
                    Ok(200) => ok += 1,
                    Ok(429) => limited += 1,
                    _ => other += 1,
                }
            }
            (ok, limited, other)
        }));
    }
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for t in tasks {
        let (o, l, x) = t.await.unwrap();
        ok += o;
        limited += l;
        other += x;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bound = (rate * elapsed + burst) * 1.01;
    println!(
        "redis shared limit: {ok} admitted, {limited} refused, {other} other in {elapsed:.2}s; contract allows {bound:.1}"
    );
    assert_eq!(other, 0);
    assert!(f64::from(ok) <= bound, "over-admitted: {ok} > {bound:.1}");
    assert!(
        f64::from(ok) >= rate * elapsed * 0.8,
        "the shared limit admitted too little: {ok}"
    );
    assert!(limited > 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn redis_down_follows_on_store_error_and_recovers() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::echo("app").await;
    let limits = "  fail_open:\n    rate: 100/s\n    key: client_ip\n    store: redis\n    on_store_error: allow\n  fail_closed:\n    rate: 100/s\n    key: client_ip\n    store: redis\n    on_store_error: deny\n";
    let yaml = format!(
        "{}  - name: closed\n    match: {{ path_prefix: /closed }}\n    upstream: app\n    rate_limit: [fail_closed]\n",
        config(limits, "fail_open", &redis.redis_block("200ms"))
    );
    let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
    assert_eq!(get(&gw.url("/limited")).await.unwrap().status, 200);
    let r = get(&gw.url("/closed")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-limit"), Some("100"));

    let port = redis.stop();
    let started = Instant::now();
    let open = get(&gw.url("/limited")).await.unwrap();
    assert_eq!(
        open.status, 200,
        "on_store_error: allow lets requests through"
    );
    assert!(open.header("ratelimit-limit").is_none());
    let closed = get(&gw.url("/closed")).await.unwrap();
    closed.assert_error(503, "rate_limit_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the store timeout bounds each call"
    );

    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"tollgate_rate_limit_store_errors_total{decision="allow",policy="fail_open"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        metric(
            &metrics,
            r#"tollgate_rate_limit_store_errors_total{decision="deny",policy="fail_closed"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    // Redis returns on the same port: the gateway reconnects by itself.
    let _redis = RedisServer::start_on(port).await.expect("redis restarts");
    wait_until_within(
        Duration::from_secs(10),
        "the gateway to reconnect to redis",
        async || {
            let r = get(&gw.url("/closed")).await.unwrap();
            if r.status == 200 && r.header("ratelimit-limit") == Some("100") {
                Ok(())
            } else {
                Err(r.status)
            }
        },
    )
    .await;
    gw.shutdown().await;
}

/// A Redis that accepts and never answers costs each request the store
/// timeout only until the breaker opens: after three timeouts, requests are
/// decided by `on_store_error` at once, and a background probe puts the store
/// back in use once Redis answers again (docs/guide/rate-limits.md, "When
/// Redis fails").
#[tokio::test]
async fn a_silent_redis_is_skipped_after_three_timeouts_and_probed_back() {
    let silent = BlackHole::start().await;
    let up = Upstream::echo("app").await;
    let limits = "  slow:\n    rate: 1/m\n    burst: 2\n    key: client_ip\n    store: redis\n    on_store_error: allow\n";
    let redis = redis_block(silent.port, "200ms");
    let gw = Gateway::start(&config(limits, "slow", &redis), &[("UP", up.host_port())]).await;

    let mut took = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        let r = get(&gw.url("/limited")).await.unwrap();
        assert_eq!(r.status, 200, "request {i}: on_store_error: allow");
        took.push(started.elapsed());
    }
    assert_only_the_first_three_waited(&took);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tollgate_rate_limit_store_errors_total{decision="allow",policy="slow"}"#
        ),
        Some(10.0),
        "skipped decisions are counted like failed ones"
    );

    // A real Redis answers on that port now: a background probe closes the
    // breaker, and the bucket (two tokens) decides again.
    let port = silent.port;
    drop(silent);
    let Some(_redis) = RedisServer::start_on(port).await else {
        return;
    };
    wait_until_within(
        Duration::from_secs(10),
        "the store to be used again",
        async || {
            let r = get(&gw.url("/limited")).await.unwrap();
            if r.header("ratelimit-limit") == Some("2") {
                Ok(())
            } else {
                Err(r.status)
            }
        },
    )
    .await;
    assert_eq!(get(&gw.url("/limited")).await.unwrap().status, 200);
    get(&gw.url("/limited"))
        .await
        .unwrap()
        .assert_error(429, "rate_limited");
    gw.shutdown().await;
}
