//! The gateway's life and what it tells operators: graceful shutdown and its
//! grace period, the admin endpoints (SPEC §5), the metrics after known traffic
//! (§7) and the access log (§8).

use std::time::{Duration, Instant};

use crate::support::{self, *};

fn config(upstream: &str, grace: &str) -> String {
    server_block(&format!("shutdown_grace: {grace}"))
        + &r#"
upstreams:
  up:
    targets: [ { url: "http://${UP}" } ]
    timeouts: { connect: 500ms, request: 10s }
  dead:
    targets: [ { url: "http://${DEAD}" } ]
    timeouts: { connect: 500ms, request: 1s }
routes:
  - name: ping
    match: { path: /ping }
    respond: { status: 200, body: "pong" }
  - name: broken
    match: { path_prefix: /broken }
    upstream: dead
  - name: api
    match: { path_prefix: /api }
    upstream: up
"#
        .replace("${UP}", upstream)
}

async fn start(grace: &str) -> (Upstream, Gateway, std::net::SocketAddr) {
    let up = Upstream::echo("up").await;
    let dead = dead_addr().await;
    let gw = Gateway::start(
        &config(&up.host_port(), grace),
        &[("DEAD", dead.to_string())],
    )
    .await;
    (up, gw, dead)
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let (up, mut gw, _) = start("5s").await;
    let mut admin = Conn::open(gw.admin).await;
    assert_eq!(admin.get("/readyz").await.unwrap().status, 200);

    let url = gw.url("/api/slow?delay_ms=700");
    let in_flight = tokio::spawn(async move { get_with(&url, &[]).await });
    wait_until("the request reaches the upstream", async || {
        up.active() == 1
    })
    .await;

    let app = gw.app.take().unwrap();
    let started = Instant::now();
    let shutdown = tokio::spawn(app.shutdown());

    // Draining: /readyz turns 503 (on a connection opened before the drain).
    wait_until("/readyz to turn 503", async || {
        let r = admin.get("/readyz").await.expect("admin during the drain");
        r.status == 503
    })
    .await;

    // New connections are refused once shutdown began. One accepted by a
    // closing listener's backlog at most is dropped at once: it must not be served.
    wait_until("the listener to stop accepting", async || {
        tokio::net::TcpStream::connect(gw.addr).await.is_err()
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "new connections are refused while the slow request still runs"
    );

    let r = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200, "the in-flight request completes");
    assert_eq!(r.json()["server"], "up");
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drained once the request ended"
    );
}

#[tokio::test]
async fn readyz_answers_503_to_new_connections_during_the_drain() {
    let (up, mut gw, _) = start("5s").await;
    let url = gw.url("/api/slow?delay_ms=1000");
    let in_flight = tokio::spawn(async move { get_with(&url, &[]).await });
    wait_until("the request reaches the upstream", async || {
        up.active() == 1
    })
    .await;
    let shutdown = tokio::spawn(gw.app.take().unwrap().shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = get(&gw.admin_url("/readyz")).await;
    assert_eq!(
        r.map(|r| r.status),
        Ok(503),
        "a load balancer probing /readyz must see 503"
    );
    let m = get(&gw.admin_url("/metrics")).await;
    assert!(m.is_ok(), "scrapes during a drain should still work: {m:?}");
    let _ = in_flight.await;
    let _ = shutdown.await;
}

#[tokio::test]
async fn shutdown_grace_cuts_longer_requests() {
    let (up, mut gw, _) = start("300ms").await;
    let url = gw.url("/api/slower?delay_ms=5000");
    let in_flight = tokio::spawn(async move { get_with_result(&url).await });
    wait_until("the request reaches the upstream", async || {
        up.active() == 1
    })
    .await;

    let started = Instant::now();
    tokio::time::timeout(WAIT, gw.app.take().unwrap().shutdown())
        .await
        .expect("shutdown returns after the grace period");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
        "shutdown took {took:?} with a 300ms grace"
    );
    let r = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_err(), "the request was cut, not answered: {r:?}");
}

/// One request on a raw keep-alive connection, its answer read whole.
async fn ping_on(gw: &Gateway) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    while !got.ends_with(b"pong") {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "closed before the answer: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// The gateway closed `s` between requests: it sees the FIN, then writes a
/// request as a client racing the close would, and must not get a reset for
/// it: the gateway still reads the socket (it lingers) and drops the bytes.
async fn assert_fin_then_no_reset(s: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("the gateway closes the connection")
        .expect("a FIN, not a reset");
    assert_eq!(n, 0, "nothing but the FIN");
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("the write after the FIN");
    // A socket already closed answers that write with a RST at once on
    // loopback; give it the time to arrive, then write again: after a RST
    // that fails (a read would not tell: after a FIN it returns 0 either way).
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Err(e) = s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await {
        panic!("the request after the FIN was answered with a reset: {e}");
    }
    assert_eq!(
        s.read(&mut buf).await.expect("no reset"),
        0,
        "and never answered"
    );
}

#[tokio::test]
async fn a_request_racing_the_drain_meets_a_fin_not_a_reset() {
    let (_up, mut gw, _) = start("5s").await;
    let mut s = ping_on(&gw).await;
    let shutdown = tokio::spawn(gw.app.take().unwrap().shutdown());
    assert_fin_then_no_reset(&mut s).await;
    drop(s);
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_request_racing_the_idle_timeout_meets_a_fin_not_a_reset() {
    // Idle timeout before parking (hyper closes) and after it (the parked
    // stream closes).
    for (idle, parks) in [("300ms", false), ("1500ms", true)] {
        let up = Upstream::echo("up").await;
        let yaml = config(&up.host_port(), "5s").replace(
            "server:\n",
            &format!("server:\n  limits: {{ idle_timeout: {idle} }}\n"),
        );
        let dead = dead_addr().await;
        let gw = Gateway::start(&yaml, &[("DEAD", dead.to_string())]).await;
        let mut s = ping_on(&gw).await;
        if parks {
            gw.wait_parked(1).await;
        }
        assert_fin_then_no_reset(&mut s).await;
        gw.shutdown().await;
    }
}

async fn get_with_result(url: &str) -> Result<Resp, String> {
    get(url).await
}

#[tokio::test]
async fn admin_health_and_readiness() {
    let (_up, gw, _) = start("1s").await;
    let r = get(&gw.admin_url("/healthz")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), "ok");
    let r = get(&gw.admin_url("/readyz")).await.unwrap();
    assert_eq!(r.status, 200);
    let r = get(&gw.admin_url("/metrics")).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_after_known_traffic() {
    let (up, gw, dead) = start("1s").await;
    for _ in 0..3 {
        assert_eq!(get_with(&gw.url("/api/x?q=1"), &[]).await.status, 200);
    }
    for _ in 0..2 {
        get_with(&gw.url("/nope"), &[])
            .await
            .assert_error(404, "no_route");
    }
    get_with(&gw.url("/ping"), &[]).await;
    get_with(&gw.url("/broken"), &[])
        .await
        .assert_error(502, "upstream_unavailable");
    let post = support::send(
        http::Request::post(gw.url("/api/p"))
            .body(body("x"))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(post.status, 200);

    let target = up.host_port();
    let dead_target = dead.to_string();
    let expected: Vec<(String, f64)> = vec![
        (
            r#"tollgate_requests_total{method="GET",route="api",status="200"}"#.into(),
            3.0,
        ),
        (
            r#"tollgate_requests_total{method="POST",route="api",status="200"}"#.into(),
            1.0,
        ),
        (
            r#"tollgate_requests_total{method="GET",route="_none",status="404"}"#.into(),
            2.0,
        ),
        (
            r#"tollgate_requests_total{method="GET",route="ping",status="200"}"#.into(),
            1.0,
        ),
        (
            r#"tollgate_requests_total{method="GET",route="broken",status="502"}"#.into(),
            1.0,
        ),
        (
            r#"tollgate_request_duration_seconds_count{route="api"}"#.into(),
            4.0,
        ),
        (
            r#"tollgate_request_duration_seconds_count{route="_none"}"#.into(),
            2.0,
        ),
        (
            format!(
                r#"tollgate_upstream_requests_total{{outcome="success",target="{target}",upstream="up"}}"#
            ),
            4.0,
        ),
        (
            format!(
                r#"tollgate_upstream_requests_total{{outcome="connect_error",target="{dead_target}",upstream="dead"}}"#
            ),
            1.0,
        ),
        (
            r#"tollgate_upstream_duration_seconds_count{upstream="up"}"#.into(),
            4.0,
        ),
        (
            format!(
                r#"tollgate_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ];
    // Metrics are recorded when each response ends, just after the client got it.
    let text = wait_until("the metrics of the traffic", async || {
        let text = gw.metrics().await;
        match expected.iter().find(|(s, v)| metric(&text, s) != Some(*v)) {
            None => Ok(text),
            Some((s, v)) => Err(format!("{s} is not {v}\n---\n{text}")),
        }
    })
    .await;
    for (series, value) in &expected {
        assert_eq!(metric(&text, series), Some(*value), "{series}\n---\n{text}");
    }
    assert!(text.contains("tollgate_config_info{"), "{text}");
    assert!(text.contains("tollgate_in_flight_requests"), "{text}");
    assert!(text.contains("tollgate_active_connections{"), "{text}");
    // Label values are bounded: no raw path or query.
    assert!(!text.contains("/api/x"), "a raw path leaked into labels");
    assert!(!text.contains("/nope"), "a raw path leaked into labels");
    gw.shutdown().await;
}

const FIELDS: [&str; 17] = [
    "ts",
    "request_id",
    "listener",
    "client_ip",
    "method",
    "host",
    "path",
    "route",
    "upstream",
    "target",
    "status",
    "duration_ms",
    "upstream_ms",
    "bytes_in",
    "bytes_out",
    "retries",
    "error",
];

#[tokio::test]
async fn access_log_lines_have_every_field_and_no_secrets() {
    let (up, gw, _) = start("1s").await;
    let r = get_with(
        &gw.url("/api/users/7?access_token=QUERY-TOKEN-789&x=1"),
        &[
            ("authorization", "Bearer SECRET-TOKEN-123"),
            ("cookie", "session=COOKIE-VALUE-456"),
            ("x-request-id", "log-ok"),
            ("host", "api.example.com"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    // The upstream did get the credentials: the gateway only keeps them out of logs.
    assert_eq!(
        r.json()["headers"]["authorization"],
        "Bearer SECRET-TOKEN-123"
    );
    get_with(&gw.url("/missing"), &[("x-request-id", "log-404")]).await;
    get_with(&gw.url("/ping"), &[("x-request-id", "log-direct")]).await;
    let upload = support::send(
        http::Request::post(gw.url("/api/up"))
            .header("x-request-id", "log-post")
            .body(body(vec![b'z'; 1000]))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(upload.status, 200);

    let lines = gw.wait_log_lines(4).await;
    for line in &lines {
        let obj = line.as_object().expect("a JSON object");
        for f in FIELDS {
            assert!(obj.contains_key(f), "field `{f}` missing from {line}");
        }
    }

    let ok = gw.wait_log_for("log-ok").await;
    assert_eq!(ok["listener"], "http");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["host"], "api.example.com");
    assert_eq!(ok["path"], "/api/users/7", "path excludes the query string");
    assert_eq!(ok["route"], "api");
    assert_eq!(ok["upstream"], "up");
    assert_eq!(ok["target"], up.host_port());
    assert_eq!(ok["status"], 200);
    assert!(ok["error"].is_null(), "error is null on success: {ok}");
    assert!(ok["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    assert!(ok["upstream_ms"].as_f64().is_some_and(|d| d >= 0.0));
    assert_eq!(ok["retries"], 0);
    assert_eq!(ok["bytes_out"], r.body.len());
    assert!(ok["ts"].as_str().is_some_and(|t| t.contains('T')), "{ok}");

    let nf = gw.wait_log_for("log-404").await;
    assert_eq!(nf["status"], 404);
    assert_eq!(nf["error"], "no_route");
    assert!(nf["route"].is_null() && nf["upstream"].is_null() && nf["target"].is_null());

    let direct = gw.wait_log_for("log-direct").await;
    assert_eq!(direct["route"], "ping");
    assert!(direct["upstream"].is_null());

    let post = gw.wait_log_for("log-post").await;
    assert_eq!(post["bytes_in"], 1000);
    assert_eq!(post["method"], "POST");

    let text = gw.log_text();
    for secret in ["SECRET-TOKEN-123", "COOKIE-VALUE-456", "QUERY-TOKEN-789"] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the access log:\n{text}"
        );
    }
    gw.shutdown().await;
}
