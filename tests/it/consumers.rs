//! Consumers and consumer groups (`consumers`, `consumer_groups`): API keys,
//! Basic users and JWT subjects resolved to one consumer, its name upstream
//! and in the access log, its group as a metric label, the group's rate limit
//! and its calendar quota, counted in one redis-server by two gateways.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::auth::*;
use crate::support::redis::RedisServer;
use crate::support::*;

fn basic(user_pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

/// Two consumers in two groups: acme (gold) with two API keys, a Basic user
/// and a JWT subject; beta (silver) with one key. The key `k-free` belongs
/// to nobody.
fn config(htpasswd: &std::path::Path, groups: &str, redis: &str) -> String {
    format!(
        "{}
{redis}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
auth:
  api_keys:
    keys:
      keys:
        - {{ id: k-acme-1, key: acme-one }}
        - {{ id: k-acme-2, key: acme-two }}
        - {{ id: k-beta, key: beta-key }}
        - {{ id: k-free, key: free-key }}
  basic:
    ops: {{ htpasswd: '{}' }}
  jwt:
    main: {{ algorithms: [HS256], secret: {SECRET} }}
consumers:
  acme:
    group: gold
    api_keys: [k-acme-1, k-acme-2]
    basic_users: [alice]
    jwt_subjects: [user-7]
  beta:
    group: silver
    api_keys: [k-beta]
consumer_groups:
{groups}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: up
    auth: ['api_key:keys', 'basic:ops', 'jwt:main']
  - name: public
    match: {{ path_prefix: /public }}
    upstream: up
",
        server_block(""),
        htpasswd.display()
    )
}

/// An htpasswd file with alice (password `s3cret`), in its own directory.
fn users() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.htpasswd");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(&file, format!("alice:{hash}\n")).unwrap();
    (dir, file)
}

const NO_PLAN: &str = "  gold: {}\n  silver: {}\n";

async fn start(groups: &str, redis: &str) -> (Gateway, Upstream, tempfile::TempDir) {
    let (dir, file) = users();
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(&file, groups, redis), &[("UP", up.host_port())]).await;
    (gw, up, dir)
}

#[tokio::test]
async fn every_kind_of_credential_resolves_to_its_consumer() {
    let (gw, _up, _dir) = start(NO_PLAN, "").await;
    let token = mint(Algorithm::HS256, &good_claims());
    let bearer = format!("Bearer {token}");
    let alice = basic("alice:s3cret");
    let cases: [(&str, &str, Option<&str>, &str); 5] = [
        ("x-api-key", "acme-one", Some("acme"), "k-acme-1"),
        ("x-api-key", "acme-two", Some("acme"), "k-acme-2"),
        ("authorization", &alice, Some("acme"), "alice"),
        ("authorization", &bearer, Some("acme"), "user-7"),
        ("x-api-key", "beta-key", Some("beta"), "k-beta"),
    ];
    for (header, value, consumer, credential) in cases {
        // A client's own X-Consumer never reaches the upstream.
        let r = get_with(
            &gw.url("/api/x"),
            &[(header, value), ("x-consumer", "forged")],
        )
        .await;
        assert_eq!(r.status, 200, "{credential}: {}", r.text());
        let h = &r.json()["headers"];
        assert_eq!(h["x-consumer"], json!(consumer), "{credential}: {h}");
        // X-Consumer-Id stays the key id or user (a JWT's subject has its own
        // `forward_claims`).
        let id = (!header.eq("authorization") || value.starts_with("Basic")).then_some(credential);
        assert_eq!(h["x-consumer-id"], json!(id), "{credential}: {h}");
    }

    // A valid credential no consumer lists passes with no consumer.
    let r = get_with(
        &gw.url("/api/x"),
        &[("x-api-key", "free-key"), ("x-consumer", "acme")],
    )
    .await;
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert!(
        h.get("x-consumer").is_none(),
        "forged header forwarded: {h}"
    );
    assert_eq!(h["x-consumer-id"], "k-free");

    // Nor does a public route forward a forged consumer.
    let r = get_with(&gw.url("/public"), &[("x-consumer", "acme")]).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("x-consumer").is_none());

    // A bad credential is refused as before: no consumer is resolved.
    get_with(&gw.url("/api/x"), &[("x-api-key", "nope")])
        .await
        .assert_error(401, "unauthorized");

    // The access log names the consumer, or the credential when none.
    let lines = gw.wait_log_lines(8).await;
    let consumers: Vec<&str> = lines
        .iter()
        .filter(|l| l["route"] == "api" && l["status"] == 200)
        .map(|l| l["consumer"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        consumers,
        ["acme", "acme", "acme", "acme", "beta", "k-free"]
    );

    // The group is a metric label; consumer names are not.
    let m = gw.metrics().await;
    let series = |group: &str| {
        format!(r#"tollgate_consumer_requests_total{{class="2xx",group="{group}",route="api"}}"#)
    };
    assert_eq!(metric(&m, &series("gold")), Some(4.0), "{m}");
    assert_eq!(metric(&m, &series("silver")), Some(1.0));
    assert!(!m.contains("acme"), "a consumer name is in the metrics");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_group_rate_limit_is_each_consumers_plan() {
    // Slow refills (per minute): no token comes back while the test runs.
    let groups = "  gold:\n    rate_limit: { rate: 1/m, burst: 4 }\n  silver:\n    rate_limit: { rate: 1/m, burst: 2 }\n";
    let (gw, up, dir) = start(groups, "").await;
    let admitted = |key: &'static str, n: usize| {
        let url = gw.url("/api/x");
        async move {
            let mut statuses = Vec::new();
            for _ in 0..n {
                statuses.push(get_with(&url, &[("x-api-key", key)]).await.status);
            }
            statuses
        }
    };
    // acme's two keys draw on acme's one bucket of 4.
    assert_eq!(admitted("acme-one", 3).await, [200, 200, 200]);
    assert_eq!(admitted("acme-two", 2).await, [200, 429]);
    // beta's plan is smaller, and its own.
    assert_eq!(admitted("beta-key", 3).await, [200, 200, 429]);
    // A credential with no consumer has no plan.
    assert_eq!(admitted("free-key", 6).await, [200; 6]);

    let r = get_with(&gw.url("/api/x"), &[("x-api-key", "acme-one")]).await;
    let body = r.assert_error(429, "rate_limited");
    assert!(
        body["message"].as_str().unwrap().contains("group:gold"),
        "{body}"
    );
    assert_eq!(r.header("ratelimit-limit"), Some("4"));
    assert!(r.header("retry-after").is_some());
    assert_eq!(up.hits(), 4 + 2 + 6);

    // /explain names the plans that can apply on the route.
    let explained = get(&gw.admin_url("/explain?path=/api/x"))
        .await
        .unwrap()
        .json();
    assert_eq!(
        explained["route"]["consumer_plans"],
        json!(["gold", "silver"])
    );

    // A reload that leaves the groups alone keeps their buckets.
    let yaml = config(&dir.path().join("users.htpasswd"), groups, "").replace(
        "  - name: public\n",
        "  - name: public2\n    match: { path: /p2 }\n    upstream: up\n  - name: public\n",
    );
    gw.reload(&yaml, &[("UP", up.host_port())]).await;
    assert_eq!(
        admitted("acme-two", 1).await,
        [429],
        "the reload refilled gold"
    );

    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_rate_limited_total{policy="group:gold",route="api"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"tollgate_consumer_requests_total{class="4xx",group="gold",route="api"}"#
        ),
        Some(3.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn route_limits_key_on_the_consumer_or_its_group() {
    let (_dir, file) = users();
    let yaml = config(&file, NO_PLAN, "")
        .replace(
            "    auth: ['api_key:keys', 'basic:ops', 'jwt:main']\n",
            "    auth: ['api_key:keys', 'basic:ops', 'jwt:main']\n    rate_limit: [per_consumer]\n  - name: shared\n    match: { path_prefix: /shared }\n    upstream: up\n    auth: ['api_key:keys']\n    rate_limit: [per_group]\n",
        )
        .replace(
            "consumers:\n",
            "rate_limits:\n  per_consumer: { rate: 1/m, burst: 2, key: consumer }\n  per_group: { rate: 1/m, burst: 2, key: consumer_group }\nconsumers:\n",
        );
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
    let status = |path: &str, key: &str| {
        let (url, key) = (gw.url(path), key.to_string());
        async move { get_with(&url, &[("x-api-key", &key)]).await.status }
    };
    // key: consumer — acme's keys share a bucket, the Basic user too.
    assert_eq!(status("/api", "acme-one").await, 200);
    assert_eq!(status("/api", "acme-two").await, 200);
    let r = get_with(
        &gw.url("/api"),
        &[("authorization", &basic("alice:s3cret"))],
    )
    .await;
    assert_eq!(r.status, 429, "alice is acme");
    assert_eq!(status("/api", "beta-key").await, 200);

    // key: consumer_group — gold is one bucket, silver another.
    assert_eq!(status("/shared", "acme-one").await, 200);
    assert_eq!(status("/shared", "acme-two").await, 200);
    assert_eq!(status("/shared", "acme-one").await, 429);
    assert_eq!(status("/shared", "beta-key").await, 200);
    gw.shutdown().await;
}

/// Waits out the last seconds of the current UTC month, so a month quota's
/// window does not roll over while a test counts (the wall clock decides the
/// window, so this is the one wait on it: at most 30 s, once a month).
async fn clear_of_the_month_boundary() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (_, end) = tollgate::policy::quota::window(tollgate::config::units::Period::Month, now);
    if end - now < 30 {
        tokio::time::sleep(std::time::Duration::from_secs((end - now + 1) as u64)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_on_one_redis_share_the_quota_exactly() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    clear_of_the_month_boundary().await;
    let groups = "  gold:\n    quota: 7/month\n  silver:\n    quota: { limit: 3/month, key: consumer_group }\n";
    let (_dir, file) = users();
    let yaml = config(&file, groups, &redis.redis_block("500ms")).replace(
        "    api_keys: [k-beta]\n",
        "    api_keys: [k-beta]\n  gamma:\n    group: silver\n    api_keys: [k-free]\n",
    );
    let up = Upstream::echo("up").await;
    let vars = [("UP", up.host_port())];
    let a = Gateway::start(&yaml, &vars).await;
    let b = Gateway::start(&yaml, &vars).await;

    // 40 concurrent requests of acme, half on each gateway: exactly 7 pass.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            a.url("/api")
        } else {
            b.url("/api")
        };
        let key = if i % 3 == 0 { "acme-one" } else { "acme-two" };
        tasks.push(tokio::spawn(async move {
            let r = get_with(&url, &[("x-api-key", key)]).await;
            (
                r.status,
                r.header("retry-after").map(str::to_string),
                r.text(),
            )
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        let (status, retry_after, body) = t.await.unwrap();
        match status {
            200 => admitted += 1,
            429 => {
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["error"], "quota_exceeded", "{body}");
                let secs: u64 = retry_after.unwrap().parse().unwrap();
                assert!((1..=31 * 86_400).contains(&secs), "Retry-After {secs}");
            }
            other => panic!("status {other}: {body}"),
        }
    }
    assert_eq!(admitted, 7, "the month quota of 7 admitted {admitted}");
    assert_eq!(
        up.hits(),
        7,
        "a request over the quota never reaches the upstream"
    );

    // The Basic user and the JWT subject are acme too: the quota is spent.
    let r = get_with(&b.url("/api"), &[("authorization", &basic("alice:s3cret"))]).await;
    r.assert_error(429, "quota_exceeded");

    // silver counts per group: beta and gamma draw on one count of 3.
    let status = |gw: &Gateway, key: &str| {
        let (url, key) = (gw.url("/api"), key.to_string());
        async move { get_with(&url, &[("x-api-key", &key)]).await.status }
    };
    assert_eq!(status(&a, "beta-key").await, 200);
    assert_eq!(status(&b, "free-key").await, 200);
    assert_eq!(status(&a, "free-key").await, 200);
    assert_eq!(status(&b, "beta-key").await, 429);

    // The counts are Redis keys that expire after their window.
    let keys = redis.command(&["KEYS", "tollgate:quota:*"]).await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let acme = keys
        .iter()
        .find(|k| k.contains(":c:acme:"))
        .expect("acme's count");
    assert_eq!(redis.command(&["MGET", acme]).await.unwrap(), ["7"]);
    let ttl = redis.command(&["TTL", acme]).await.unwrap();
    let ttl: i64 = ttl[0].trim_start_matches(':').parse().unwrap();
    assert!(ttl > 86_400 && ttl <= 32 * 86_400, "TTL {ttl}");

    let m = a.metrics().await;
    let refused = metric(
        &m,
        r#"tollgate_rate_limited_total{policy="quota:gold",route="api"}"#,
    )
    .unwrap_or(0.0)
        + metric(
            &b.metrics().await,
            r#"tollgate_rate_limited_total{policy="quota:gold",route="api"}"#,
        )
        .unwrap_or(0.0);
    assert_eq!(refused, 34.0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_dead_quota_store_follows_on_store_error() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    clear_of_the_month_boundary().await;
    let groups = "  gold:\n    quota: { limit: 100/month, on_store_error: allow }\n  silver:\n    quota: { limit: 100/month, on_store_error: deny }\n";
    let (gw, _up, _dir) = start(groups, &redis.redis_block("200ms")).await;
    let status = |key: &str| {
        let (url, key) = (gw.url("/api"), key.to_string());
        async move { get_with(&url, &[("x-api-key", &key)]).await }
    };
    assert_eq!(status("acme-one").await.status, 200);
    assert_eq!(status("beta-key").await.status, 200);
    let port = redis.stop();

    for _ in 0..4 {
        assert_eq!(
            status("acme-one").await.status,
            200,
            "allow lets it through"
        );
        status("beta-key")
            .await
            .assert_error(503, "rate_limit_unavailable");
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_rate_limit_store_errors_total{decision="allow",policy="quota:gold"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"tollgate_rate_limit_store_errors_total{decision="deny",policy="quota:silver"}"#
        ),
        Some(4.0)
    );

    // Redis back (empty): counting starts again once the probe sees it.
    let _redis = RedisServer::start_on(port).await.expect("redis restarts");
    wait_until("the quota store to be used again", async || {
        match status("beta-key").await.status {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        }
    })
    .await;
    gw.shutdown().await;
}

#[test]
fn bad_consumer_configs_are_refused_with_their_place() {
    let (_dir, file) = users();
    let good = config(&file, NO_PLAN, "").replace("${UP}", "127.0.0.1:9");
    tollgate::config::load_str(&good, "t.yaml").expect("the base config loads");

    let cases: [(&str, &str, &str); 8] = [
        (
            "    api_keys: [k-beta]\n",
            "    api_keys: [k-beta, k-acme-2]\n",
            "consumers.beta.api_keys[1]: `k-acme-2` already belongs to consumer `acme`",
        ),
        (
            "    group: silver\n",
            "    group: silvr\n",
            "consumers.beta.group: unknown consumer group `silvr` (did you mean `silver`?)",
        ),
        (
            "    api_keys: [k-beta]\n",
            "    api_keys: [k-bta]\n",
            "no key of `auth.api_keys` has the id `k-bta` (list key ids, never keys) (did you mean `k-beta`?)",
        ),
        (
            "  silver: {}\n",
            "  silver: { quota: 10/month }\n",
            "consumer_groups.silver.quota: a quota is counted in Redis",
        ),
        (
            "  silver: {}\n",
            "  silver: { quota: 10/mnth }\n",
            "unknown quota period `mnth`; expected minute, hour, day, week or month (did you mean `month`?)",
        ),
        (
            "  silver: {}\n",
            "  silver: { rate_limit: { rate: 5/s, key: consumr } }\n",
            "consumer_groups.silver.rate_limit.key",
        ),
        (
            "    basic_users: [alice]\n",
            "    basic_users: [alice, alice]\n",
            "consumers.acme.basic_users[1]: `alice` is listed twice",
        ),
        (
            "server:\n",
            "server:\n  consumer_header: Content-Length\n",
            "server.consumer_header: `Content-Length` is not the gateway's to set",
        ),
    ];
    for (from, to, want) in cases {
        assert!(good.contains(from), "{from:?}");
        let e = assert_refused(&good.replacen(from, to, 1), want);
        // Every problem has a position in the file.
        assert!(e.contains("t.yaml:"), "{e}");
    }

    // Users are checked against the htpasswd files once they are read.
    assert_refused(
        &good.replace("basic_users: [alice]", "basic_users: [alcie]"),
        "consumers.acme.basic_users[0]: no htpasswd file of `auth.basic` lists the user `alcie` (did you mean `alice`?)",
    );
}
