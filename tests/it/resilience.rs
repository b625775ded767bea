//! Resilience (issue 5): active health checks, circuit breakers, retries with a
//! budget, deadlines, client cancellation, `/upstreams`, and a chaos run.
//!
//! The upstreams count what reaches them; each test checks that count, what the
//! client sees, the metrics and `/upstreams`. Time-driven state machines are
//! unit-tested with a hand-stepped clock (`upstream::circuit`, `upstream::retry`);
//! here the intervals are short real ones and every wait is bounded; the
//! circuit's open period is skipped on the tokio clock (`skip`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use serde_json::Value;

use crate::support::*;

fn two_targets(upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "{}upstreams:\n  svc:\n    targets: [{{ url: 'http://${{A}}' }}, {{ url: 'http://${{B}}' }}]\n{upstream_extra}routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: svc\n{route_extra}",
        server_block("")
    )
}

fn one_target(upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "{}upstreams:\n  svc:\n    targets: [{{ url: 'http://${{A}}' }}]\n{upstream_extra}routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: svc\n{route_extra}",
        server_block("")
    )
}

fn vars(a: &Upstream, b: &Upstream) -> Vec<(&'static str, String)> {
    vec![("A", a.host_port()), ("B", b.host_port())]
}

/// The `/upstreams` entry of target `hp` of upstream `svc`.
fn target_of(report: &Value, hp: &str) -> Value {
    report["upstreams"]
        .as_array()
        .expect("upstreams array")
        .iter()
        .find(|u| u["name"] == "svc")
        .and_then(|u| {
            u["targets"]
                .as_array()?
                .iter()
                .find(|t| t["target"] == hp)
                .cloned()
        })
        .unwrap_or_else(|| panic!("no target {hp} in {report}"))
}

async fn wait_report(gw: &Gateway, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, async || {
        let r = gw.upstreams().await;
        if cond(&r) { Ok(r) } else { Err(r) }
    })
    .await
}

fn series(name: &str, labels: &str) -> String {
    format!("{name}{{{labels}}}")
}

async fn gauge(gw: &Gateway, name: &str, up: &Upstream) -> Option<f64> {
    let text = gw.metrics().await;
    metric(
        &text,
        &series(
            name,
            &format!(r#"upstream="svc",target="{}""#, up.host_port()),
        ),
    )
}

async fn retries_metric(gw: &Gateway, reason: &str) -> f64 {
    let text = gw.metrics().await;
    metric(
        &text,
        &series(
            "tollgate_retries_total",
            &format!(r#"upstream="svc",reason="{reason}""#),
        ),
    )
    .unwrap_or(0.0)
}

const FAST_HC: &str = "    health_check: { path: /healthz, interval: 100ms, timeout: 50ms, healthy_threshold: 2, unhealthy_threshold: 2 }\n";

#[tokio::test]
async fn health_checks_take_a_target_out_and_bring_it_back() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let gw = Gateway::start(&two_targets(FAST_HC, ""), &vars(&a, &b)).await;
    let bp = b.host_port();

    b.control.set_unhealthy(true);
    let report = wait_report(&gw, "b unhealthy", |r| {
        target_of(r, &bp)["healthy"] == false
    })
    .await;
    assert_eq!(target_of(&report, &a.host_port())["healthy"], true);
    assert_eq!(gauge(&gw, "tollgate_upstream_healthy", &b).await, Some(0.0));
    assert_eq!(gauge(&gw, "tollgate_upstream_healthy", &a).await, Some(1.0));

    let before = b.hits();
    for _ in 0..10 {
        let r = get(&gw.url("/x")).await.expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["server"], "a");
    }
    assert_eq!(b.hits(), before, "an unhealthy target gets no traffic");
    assert!(b.control.health_hits() >= 2, "b was probed");

    b.control.set_unhealthy(false);
    wait_report(&gw, "b healthy again", |r| {
        target_of(r, &bp)["healthy"] == true
    })
    .await;
    assert_eq!(gauge(&gw, "tollgate_upstream_healthy", &b).await, Some(1.0));
    for _ in 0..4 {
        assert_eq!(get(&gw.url("/x")).await.expect("request").status, 200);
    }
    assert!(b.hits() > before, "b takes traffic again");
    gw.shutdown().await;
}

#[tokio::test]
async fn all_targets_unhealthy_is_503_unless_fail_open() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let gw = Gateway::start(&two_targets(FAST_HC, ""), &vars(&a, &b)).await;
    a.control.set_unhealthy(true);
    b.control.set_unhealthy(true);
    wait_report(&gw, "both unhealthy", |r| {
        r["upstreams"][0]["targets"]
            .as_array()
            .is_some_and(|ts| ts.iter().all(|t| t["healthy"] == false))
    })
    .await;
    let r = get(&gw.url("/x")).await.expect("request");
    r.assert_error(503, "no_healthy_upstream");
    assert_eq!(a.hits() + b.hits(), 0);
    gw.shutdown().await;

    // fail_open: every target unhealthy means the checks are suspect; send anyway.
    let hc = FAST_HC.replace(
        "unhealthy_threshold: 2",
        "unhealthy_threshold: 2, fail_open: true",
    );
    let gw = Gateway::start(&two_targets(&hc, ""), &vars(&a, &b)).await;
    wait_report(&gw, "both unhealthy", |r| {
        r["upstreams"][0]["targets"]
            .as_array()
            .is_some_and(|ts| ts.iter().all(|t| t["healthy"] == false))
    })
    .await;
    let r = get(&gw.url("/x")).await.expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    gw.shutdown().await;
}

#[tokio::test]
async fn circuit_opens_after_consecutive_failures_and_closes_after_a_good_probe() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    b.control.fail(1000, 503);
    let cb = "    circuit_breaker: { consecutive_failures: 3, open_for: 1s, half_open_max_requests: 1 }\n";
    let gw = Gateway::start(&two_targets(cb, ""), &vars(&a, &b)).await;
    let bp = b.host_port();

    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(&gw.url("/x")).await.expect("request").status);
    }
    // Round robin alternates until b's third failure opens its circuit; the
    // 503s are b's own answers, passed through.
    assert_eq!(b.hits(), 3, "statuses {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 3);
    assert_eq!(a.hits(), 9);
    let report = gw.upstreams().await;
    let t = target_of(&report, &bp);
    assert_eq!(t["circuit"], "open", "{report}");
    assert_eq!(t["requests"], 3);
    assert_eq!(t["failures"], 3);
    assert_eq!(gauge(&gw, "tollgate_circuit_state", &b).await, Some(1.0));
    assert_eq!(gauge(&gw, "tollgate_circuit_state", &a).await, Some(0.0));

    // b recovers; after open_for a probe goes through and closes the circuit.
    b.control.fail(0, 503);
    skip(Duration::from_millis(1100)).await;
    for _ in 0..4 {
        assert_eq!(get(&gw.url("/x")).await.expect("request").status, 200);
    }
    assert!(
        b.hits() >= 4,
        "b got the probe and then traffic: {}",
        b.hits()
    );
    let report = gw.upstreams().await;
    assert_eq!(target_of(&report, &bp)["circuit"], "closed", "{report}");
    assert_eq!(gauge(&gw, "tollgate_circuit_state", &b).await, Some(0.0));
    gw.shutdown().await;
}

#[tokio::test]
async fn every_circuit_open_is_503_circuit_open() {
    let dead = dead_addr().await;
    let cb = "    circuit_breaker: { consecutive_failures: 2, open_for: 30s }\n";
    let gw = Gateway::start(&one_target(cb, ""), &[("A", dead.to_string())]).await;
    get(&gw.url("/x"))
        .await
        .expect("1")
        .assert_error(502, "upstream_unavailable");
    get(&gw.url("/x"))
        .await
        .expect("2")
        .assert_error(502, "upstream_unavailable");
    get(&gw.url("/x"))
        .await
        .expect("3")
        .assert_error(503, "circuit_open");
    let report = gw.upstreams().await;
    let t = target_of(&report, &dead.to_string());
    assert_eq!(t["circuit"], "open");
    assert_eq!(t["failures"], 2);
    let text = gw.metrics().await;
    let connect_errors = metric(
        &text,
        &format!(
            r#"tollgate_upstream_requests_total{{upstream="svc",target="{dead}",outcome="connect_error"}}"#
        ),
    );
    assert_eq!(connect_errors, Some(2.0));
    gw.shutdown().await;
}

const RETRY: &str = "    retries: { attempts: 2, backoff: 1ms }\n";

#[tokio::test]
async fn failed_attempts_are_retried_on_the_other_target() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    a.control.fail(1000, 503);
    let gw = Gateway::start(&two_targets(RETRY, ""), &vars(&a, &b)).await;
    for _ in 0..10 {
        let r = get(&gw.url("/x")).await.expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["server"], "b");
    }
    assert_eq!(b.hits(), 10);
    assert!(a.hits() >= 1);
    assert_eq!(retries_metric(&gw, "503").await, a.hits() as f64);
    let lines = gw.wait_log_lines(10).await;
    let logged: u64 = lines
        .iter()
        .map(|l| l["retries"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(logged, a.hits() as u64, "access-log retries");
    gw.shutdown().await;
}

#[tokio::test]
async fn small_bodies_are_replayed_but_post_and_large_bodies_are_not() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    a.control.fail(1000, 503);
    let gw = Gateway::start(&two_targets(RETRY, ""), &vars(&a, &b)).await;

    // PUT is idempotent and 1000 bytes fit the replay bound: retried with its body.
    for _ in 0..4 {
        let req = Request::put(gw.url("/x"))
            .body(body(vec![b'p'; 1000]))
            .expect("req");
        let r = send(req).await.expect("put");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["body_bytes"], 1000);
    }
    let retried = retries_metric(&gw, "503").await;
    assert!(retried >= 1.0);

    // POST is not in the default methods: a's 503 reaches the client.
    let (a0, b0) = (a.hits(), b.hits());
    let mut failed = 0;
    for _ in 0..4 {
        let req = Request::post(gw.url("/x")).body(body("x")).expect("req");
        if send(req).await.expect("post").status == 503 {
            failed += 1;
        }
    }
    assert_eq!(failed, a.hits() - a0);
    assert_eq!(a.hits() - a0 + b.hits() - b0, 4, "one attempt per POST");

    // A PUT over 64 KiB streams, so it is never replayed.
    let (a0, b0) = (a.hits(), b.hits());
    let mut failed = 0;
    for _ in 0..4 {
        let req = Request::put(gw.url("/x"))
            .body(body(vec![b'p'; 100 * 1024]))
            .expect("req");
        if send(req).await.expect("big put").status == 503 {
            failed += 1;
        }
    }
    assert!(failed >= 1, "some large PUTs met a");
    assert_eq!(
        a.hits() - a0 + b.hits() - b0,
        4,
        "one attempt per large PUT"
    );
    assert_eq!(retries_metric(&gw, "503").await, retried);
    gw.shutdown().await;
}

/// A target that refuses the connection was sent nothing: every method is
/// retried on the next one when `on` has `connect_error`, POST and PATCH too
/// (the chaos suite lost POSTs this way). Without `connect_error` in `on`,
/// or with a body that streamed, the refusal reaches the client.
#[tokio::test]
async fn a_refused_connection_is_retried_for_every_method() {
    let b = Upstream::echo("b").await;
    let dead = dead_addr().await.to_string();
    let cfg = |on: &str| {
        two_targets(
            &format!("    retries: {{ attempts: 2, on: [{on}], backoff: 1ms }}\n"),
            "",
        )
    };
    let gw = Gateway::start(
        &cfg("connect_error"),
        &[("A", dead.clone()), ("B", b.host_port())],
    )
    .await;
    for method in ["POST", "PATCH", "POST", "PATCH"] {
        let req = Request::builder()
            .method(method)
            .uri(gw.url("/x"))
            .body(body("payload"))
            .expect("req");
        let r = send(req).await.expect("send");
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        assert_eq!(r.json()["server"], "b");
        assert_eq!(r.json()["body_bytes"], 7, "{method} replayed with its body");
    }
    assert_eq!(b.hits(), 4, "each request reached b exactly once");
    let retried = retries_metric(&gw, "connect_error").await;
    assert!(
        retried >= 1.0,
        "round robin sent some first attempts to the dead target"
    );

    // A body over the replay bound streams: it cannot be sent twice.
    let mut refused = 0;
    for _ in 0..4 {
        let req = Request::post(gw.url("/x"))
            .body(body(vec![b'p'; 100 * 1024]))
            .expect("req");
        let r = send(req).await.expect("big post");
        match r.status {
            200 => {}
            502 => {
                r.assert_error(502, "upstream_unavailable");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert!(refused >= 1, "some large POSTs met the dead target");
    assert_eq!(retries_metric(&gw, "connect_error").await, retried);
    gw.shutdown().await;

    // `on` without connect_error: a refused GET is not retried either.
    let gw = Gateway::start(&cfg("503"), &[("A", dead), ("B", b.host_port())]).await;
    let mut refused = 0;
    for _ in 0..4 {
        let r = get(&gw.url("/x")).await.expect("get");
        if r.status == 502 {
            refused += 1;
        }
    }
    assert!(refused >= 1, "some GETs met the dead target");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_retry_budget_caps_retries_on_a_failing_upstream() {
    let a = Upstream::echo("a").await;
    a.control.fail(100_000, 503);
    let retry = "    retries: { attempts: 1, backoff: 1ms, budget_percent: 0 }\n";
    let gw = Gateway::start(&one_target(retry, ""), &[("A", a.host_port())]).await;
    for _ in 0..50 {
        assert_eq!(get(&gw.url("/x")).await.expect("request").status, 503);
    }
    // 0 %: only the floor of 3 retries per second of the 10 s window.
    assert_eq!(retries_metric(&gw, "503").await, 30.0);
    assert_eq!(a.hits(), 80);
    gw.shutdown().await;
}

#[tokio::test]
async fn timed_out_attempts_are_retried_within_the_route_deadline() {
    let hang = Upstream::start("hang", Behavior::Hang).await;
    let b = Upstream::echo("b").await;
    let up = "    timeouts: { request: 300ms }\n    retries: { attempts: 1, on: [timeout], backoff: 1ms }\n";
    let gw = Gateway::start(&two_targets(up, "    timeout: 3s\n"), &vars(&hang, &b)).await;
    for _ in 0..2 {
        let started = Instant::now();
        let r = get(&gw.url("/x")).await.expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(hang.hits() >= 1);
    assert_eq!(retries_metric(&gw, "timeout").await, hang.hits() as f64);
    gw.shutdown().await;

    // One hanging target: every attempt times out, and all of them together
    // stop at the route's deadline.
    let up = "    timeouts: { request: 200ms }\n    retries: { attempts: 5, on: [timeout], backoff: 1ms, budget_percent: 100 }\n";
    let gw = Gateway::start(
        &one_target(up, "    timeout: 500ms\n"),
        &[("A", hang.host_port())],
    )
    .await;
    let before = hang.hits();
    let started = Instant::now();
    get(&gw.url("/x"))
        .await
        .expect("request")
        .assert_error(504, "upstream_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let attempts = hang.hits() - before;
    assert!((2..=3).contains(&attempts), "{attempts} attempts");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_request() {
    let hang = Upstream::start("hang", Behavior::Hang).await;
    let up = "    max_concurrent_requests: 1\n";
    let gw = Gateway::start(
        &one_target(up, "    timeout: 30s\n"),
        &[("A", hang.host_port())],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-1\r\n\r\n",
    )
    .await
    .expect("write");
    wait_until("the upstream got the request", async || hang.hits() == 1).await;
    drop(s);
    wait_until("the upstream connection closed", async || {
        hang.control.hung_closed() == 1
    })
    .await;
    let line = gw.wait_log_for("gone-1").await;
    assert_eq!(line["status"], 499);
    assert_eq!(line["error"], "client_closed_request");
    let report = gw.upstreams().await;
    assert_eq!(target_of(&report, &hang.host_port())["in_flight"], 0);
    // The bulkhead slot came back: the next request is not shed.
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    wait_until("the second request reached the upstream", async || {
        hang.hits() == 2
    })
    .await;
    drop(s);
    gw.shutdown().await;
}

#[tokio::test]
async fn health_tasks_follow_reloads_without_duplicates() {
    let a = Upstream::echo("a").await;
    let hc = "    health_check: { path: /healthz, interval: 100ms, timeout: 50ms }\n";
    let yaml = one_target(hc, "");
    let v = [("A", a.host_port())];
    let gw = Gateway::start(&yaml, &v).await;
    let tasks = || gw.app().shared().carryover.health_task_count();
    assert_eq!(tasks(), 1);

    let rate = |from: usize| a.control.health_hits() - from;
    let start = a.control.health_hits();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rate(start);
    assert!((5..=13).contains(&before), "{before} probes in 1s");

    // Same health check: the task is kept, not doubled.
    gw.reload(&yaml, &v).await;
    gw.reload(&yaml, &v).await;
    assert_eq!(tasks(), 1);
    let start = a.control.health_hits();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rate(start);
    assert!(after <= 13, "{after} probes in 1s after two reloads");

    // Health check removed: the probes stop.
    gw.reload(&one_target("", ""), &v).await;
    assert_eq!(tasks(), 0);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let start = a.control.health_hits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rate(start), 0, "no probes without a health_check");
    gw.shutdown().await;
}

#[tokio::test]
async fn upstreams_endpoint_lists_every_target() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let gw = Gateway::start(&two_targets(RETRY, ""), &vars(&a, &b)).await;
    for _ in 0..4 {
        get(&gw.url("/x")).await.expect("request");
    }
    let r = get(&gw.admin_url("/upstreams")).await.expect("/upstreams");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    let up = &j["upstreams"][0];
    assert_eq!(up["name"], "svc");
    assert_eq!(up["retries"], true);
    assert_eq!(up["health_check"], false);
    for t in [&a, &b] {
        let t = target_of(&j, &t.host_port());
        assert_eq!(t["healthy"], true);
        assert_eq!(t["circuit"], "closed");
        assert_eq!(t["in_flight"], 0);
        assert_eq!(t["requests"], 2);
        assert_eq!(t["failures"], 0);
        assert!(t["url"].as_str().is_some_and(|u| u.starts_with("http://")));
    }
    gw.shutdown().await;
}

/// Two targets, one flapping (up 500 ms, down 500 ms) for 6 s, under a steady
/// stream from four clients; retries and breakers on, no health checks. The issue
/// asks for 2 s periods over 20 s; the periods are scaled down by 4 with the
/// breaker and health timings, to keep CI fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_flapping_target_stays_invisible_to_clients() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    // No health check: retries and breakers alone hide the flapping target.
    let up = "    circuit_breaker: { consecutive_failures: 2, open_for: 250ms }\n    retries: { attempts: 2, backoff: 2ms, budget_percent: 25 }\n";
    let gw = Gateway::start(&two_targets(up, "    timeout: 2s\n"), &vars(&a, &b)).await;

    let run = Duration::from_secs(6);
    let started = Instant::now();
    let flapper = {
        let control = b.control.clone();
        tokio::spawn(async move {
            let mut down = false;
            while started.elapsed() < run {
                tokio::time::sleep(Duration::from_millis(500)).await;
                down = !down;
                control.set_down(down);
            }
            control.set_down(false);
        })
    };
    let (total, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (total, errors, url) = (total.clone(), errors.clone(), gw.url("/x"));
        clients.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            while started.elapsed() < run {
                let addr: std::net::SocketAddr = url
                    .trim_start_matches("http://")
                    .trim_end_matches("/x")
                    .parse()
                    .expect("addr");
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert(Conn::open(addr).await),
                };
                let ok = matches!(c.get("/x").await, Ok(r) if r.status == 200);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
                total.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    flapper.await.expect("flapper");
    let (total, errors) = (
        total.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
    );
    let rate = errors as f64 / total as f64 * 100.0;
    println!(
        "chaos: {total} requests, {errors} errors ({rate:.3} %), retries: {}, b reached {} times",
        gw.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("tollgate_retries_total"))
            .collect::<Vec<_>>()
            .join(", "),
        b.hits()
    );
    assert!(total > 500, "the stream was steady: {total}");
    assert!(b.hits() > 0, "the flapping target took traffic while up");
    assert!(rate < 1.0, "client-visible error rate {rate:.3} %");
    gw.shutdown().await;
}

#[test]
fn resilience_settings_are_validated() {
    let text = "\
upstreams:
  svc:
    targets: [{ url: http://127.0.0.1:9001 }]
    health_check: { path: healthz, interval: 1s, timeout: 1s, healthy_threshold: 0 }
    circuit_breaker: { consecutive_failures: 0, failure_statuses: [404] }
    retries: { attempts: 0, on: [conect_error, 404, 503], methods: [GTE], budget_percent: 150 }
";
    let errors = match tollgate::config::load_str_with_env(text, "t.yaml", &|_| None) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0,
    };
    let got: Vec<(String, String)> = errors
        .iter()
        .map(|e| (e.path.clone(), e.message.clone()))
        .collect();
    let expect = [
        (
            "upstreams.svc.health_check.path",
            "expected a path starting with /",
        ),
        (
            "upstreams.svc.health_check.interval",
            "must be longer than the timeout",
        ),
        ("upstreams.svc.health_check.healthy_threshold", "at least 1"),
        (
            "upstreams.svc.circuit_breaker.consecutive_failures",
            "at least 1",
        ),
        ("upstreams.svc.circuit_breaker.failure_statuses[0]", "5xx"),
        ("upstreams.svc.retries.attempts", "between 1 and 10"),
        (
            "upstreams.svc.retries.on[0]",
            "did you mean `connect_error`",
        ),
        ("upstreams.svc.retries.on[1]", "only 5xx"),
        ("upstreams.svc.retries.methods[0]", "did you mean `GET`"),
        ("upstreams.svc.retries.budget_percent", "between 0 and 100"),
    ];
    for (path, msg) in expect {
        assert!(
            got.iter().any(|(p, m)| p == path && m.contains(msg)),
            "no error at {path} containing {msg:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");
}

// --- Passive health (outlier detection) ---

/// Sends `n` GETs and returns how many each of `a` and `b` answered.
async fn spread(gw: &Gateway, a: &Upstream, b: &Upstream, n: usize) -> (usize, usize, Vec<u16>) {
    let (a0, b0) = (a.hits(), b.hits());
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(get(&gw.url("/x")).await.expect("answer").status);
    }
    (a.hits() - a0, b.hits() - b0, statuses)
}

#[tokio::test]
async fn a_target_answering_500s_is_ejected_after_exactly_n_and_comes_back() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let yaml = two_targets(
        "    outlier: { consecutive_5xx: 3, base_ejection: 400ms, max_ejection_percent: 50 }\n",
        "",
    );
    let gw = Gateway::start(&yaml, &vars(&a, &b)).await;
    // Round robin alternates: B's next three answers are 500s.
    b.control.fail(3, 500);
    let (_, to_b, statuses) = spread(&gw, &a, &b, 6).await;
    assert_eq!(to_b, 3, "B took its turns until the third 500");
    assert_eq!(statuses.iter().filter(|&&s| s == 500).count(), 3);
    let report = gw.upstreams().await;
    let t = target_of(&report, &b.host_port());
    assert_eq!(t["ejected"]["reason"], "5xx", "{t}");
    assert_eq!(t["ejected"]["ejections_in_a_row"], 1);
    assert!(t["ejected"]["remaining_ms"].as_u64().unwrap() <= 400);
    assert!(target_of(&report, &a.host_port())["ejected"].is_null());
    // Ejected: every request goes to A.
    let (to_a, to_b, statuses) = spread(&gw, &a, &b, 10).await;
    assert_eq!((to_a, to_b), (10, 0));
    assert!(statuses.iter().all(|&s| s == 200));
    let m = gw.metrics().await;
    let series = format!(
        "tollgate_outlier_ejections_total{{reason=\"5xx\",target=\"{}\",upstream=\"svc\"}}",
        b.host_port()
    );
    assert_eq!(metric(&m, &series), Some(1.0), "{m}");
    // After the ejection B takes traffic again.
    wait_until("B back in", async || {
        let (_, to_b, _) = spread(&gw, &a, &b, 2).await;
        to_b > 0
    })
    .await;
    assert!(target_of(&gw.upstreams().await, &b.host_port())["ejected"].is_null());
    gw.shutdown().await;
}

#[tokio::test]
async fn connect_errors_eject_and_the_cap_keeps_the_last_target_in() {
    let a = Upstream::echo("a").await;
    let dead = dead_addr().await;
    let yaml = format!(
        "{}upstreams:\n  svc:\n    targets: [{{ url: 'http://${{A}}' }}, {{ url: 'http://{dead}' }}]\n    outlier: {{ consecutive_connect_errors: 2, base_ejection: 30s }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: svc\n",
        server_block("")
    );
    let gw = Gateway::start(&yaml, &[("A", a.host_port())]).await;
    let mut failed = 0;
    for _ in 0..20 {
        if get(&gw.url("/x")).await.expect("answer").status == 502 {
            failed += 1;
        }
    }
    assert_eq!(failed, 2, "two connect errors, then the dead target is out");
    let t = target_of(&gw.upstreams().await, &dead.to_string());
    assert_eq!(t["ejected"]["reason"], "connect_error", "{t}");

    // Both targets failing, cap 50% of 2: only one is ever out.
    let b = Upstream::echo("b").await;
    let yaml = two_targets(
        "    outlier: { consecutive_5xx: 2, base_ejection: 30s, max_ejection_percent: 50 }\n",
        "",
    );
    gw.reload(&yaml, &vars(&a, &b)).await;
    a.control.fail(100, 503);
    b.control.fail(100, 503);
    spread(&gw, &a, &b, 12).await;
    let report = gw.upstreams().await;
    let out = [&a, &b]
        .iter()
        .filter(|u| !target_of(&report, &u.host_port())["ejected"].is_null())
        .count();
    assert_eq!(out, 1, "{report}");
    let (to_a, to_b, _) = spread(&gw, &a, &b, 6).await;
    assert_eq!(to_a + to_b, 6, "the one left in takes everything");
    assert!(to_a == 0 || to_b == 0);
    gw.shutdown().await;
}

// --- Retry-After from upstreams ---

/// A target that answers its first `busy` requests 503 with `Retry-After:
/// <secs>`, then 200; counts what it receives.
async fn busy_target(busy: usize, secs: u64) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let mut resp =
                            http::Response::new(Full::new(bytes::Bytes::from_static(b"x")));
                        if n < busy {
                            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            resp.headers_mut()
                                .insert("retry-after", secs.to_string().parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn retry_after_keeps_a_target_out_for_the_capped_time_and_retries_avoid_it() {
    let a = Upstream::echo("a").await;
    // Asks for 60 s; the cap is 700 ms.
    let (busy, busy_hits) = busy_target(1, 60).await;
    let yaml = format!(
        "{}upstreams:\n  svc:\n    targets: [{{ url: 'http://{busy}' }}, {{ url: 'http://${{A}}' }}]\n    retry_after: {{ max: 700ms }}\n    retries: {{ attempts: 2, on: [503], backoff: 1ms }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: svc\n",
        server_block("")
    );
    let gw = Gateway::start(&yaml, &[("A", a.host_port())]).await;
    // Round robin starts on the busy target: its 503 is retried on A, and the
    // client sees 200.
    let r = get(&gw.url("/x")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(busy_hits.load(Ordering::SeqCst), 1);
    let t = target_of(&gw.upstreams().await, &busy.to_string());
    let left = t["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(left <= 700 && left > 0, "{t}");
    // While it asked to be left alone, everything goes to A.
    let a0 = a.hits();
    for _ in 0..10 {
        assert_eq!(get(&gw.url("/x")).await.unwrap().status, 200);
    }
    assert_eq!(a.hits() - a0, 10);
    assert_eq!(
        busy_hits.load(Ordering::SeqCst),
        1,
        "nothing reached the busy target"
    );
    // After the cap (not the 60 s it asked for) it takes its turns again.
    wait_until("the busy target back in", async || {
        get(&gw.url("/x")).await.unwrap();
        busy_hits.load(Ordering::SeqCst) > 1
    })
    .await;
    assert!(target_of(&gw.upstreams().await, &busy.to_string())["retry_after_ms"].is_null());
    gw.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_ignored_unless_configured() {
    let a = Upstream::echo("a").await;
    let (busy, busy_hits) = busy_target(3, 60).await;
    let yaml = format!(
        "{}upstreams:\n  svc:\n    targets: [{{ url: 'http://{busy}' }}, {{ url: 'http://${{A}}' }}]\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: svc\n",
        server_block("")
    );
    let gw = Gateway::start(&yaml, &[("A", a.host_port())]).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&gw.url("/x")).await.unwrap().status);
    }
    // Round robin keeps sending the busy target its turns.
    assert_eq!(busy_hits.load(Ordering::SeqCst), 3);
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        3,
        "{statuses:?}"
    );
    gw.shutdown().await;
}

// --- Slow start ---

#[tokio::test]
async fn a_target_back_from_its_health_checks_ramps_up() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let yaml = two_targets(
        "    health_check: { path: /healthz, interval: 100ms, timeout: 50ms, healthy_threshold: 1, unhealthy_threshold: 1 }\n    slow_start: 3s\n",
        "",
    );
    b.control.set_unhealthy(true);
    let gw = Gateway::start(&yaml, &vars(&a, &b)).await;
    wait_report(&gw, "B unhealthy", |r| {
        target_of(r, &b.host_port())["healthy"] == false
    })
    .await;
    b.control.set_unhealthy(false);
    let r = wait_report(&gw, "B healthy again", |r| {
        target_of(r, &b.host_port())["healthy"] == true
    })
    .await;
    let pct = target_of(&r, &b.host_port())["slow_start_percent"]
        .as_u64()
        .expect("B ramps");
    assert!((10..60).contains(&pct), "{pct}");
    // Early in its ramp B takes far less than half (10 % to ~30 % of its
    // weight: a share of about 9 % to 23 %).
    let (to_a, to_b, _) = spread(&gw, &a, &b, 200).await;
    assert!(to_b * 100 < (to_a + to_b) * 35, "a={to_a} b={to_b}");
    assert!(to_b > 0, "B is back, on a small share");
    // After the window it is back to an equal share.
    wait_report(&gw, "B at full weight", |r| {
        target_of(r, &b.host_port())["slow_start_percent"].is_null()
    })
    .await;
    let (to_a, to_b, _) = spread(&gw, &a, &b, 200).await;
    assert_eq!((to_a, to_b), (100, 100), "round robin again");
    gw.shutdown().await;
}

#[test]
fn slow_start_and_retry_after_are_validated() {
    let text = "\
upstreams:
  svc:
    targets: [{ url: http://127.0.0.1:9001 }]
    balance: ip_hash
    slow_start: 30s
    retry_after: { max: 0s }
  two:
    targets: [{ url: http://127.0.0.1:9002 }]
    slow_start: 0s
";
    let e = tollgate::config::load_str(text, "t.yaml")
        .unwrap_err()
        .to_string();
    for want in [
        "t.yaml:5:17: upstreams.svc.slow_start: slow start ramps round_robin, least_request and random; `ip_hash` keeps each key on its target",
        "t.yaml:6:25: upstreams.svc.retry_after.max: must be above zero",
        "t.yaml:9:17: upstreams.two.slow_start: must be above zero",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}
