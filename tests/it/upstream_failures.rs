//! What a client sees when the upstream misbehaves (SPEC §4): refused
//! connections, silence, a reset mid-body, 5xx answers, and the concurrency
//! limits that shed load.

use std::time::{Duration, Instant};

use http::Request;

use crate::support::*;

fn config(limits: &str, upstream_extra: &str, route_extra: &str) -> String {
    server_block(limits)
        + &format!(
            r#"
upstreams:
  up:
    targets:
      - url: http://${{UP}}
    timeouts: {{ connect: 500ms, request: 5s }}
{upstream_extra}
routes:
  - name: r
    match: {{ path_prefix: / }}
    upstream: up
{route_extra}
"#
        )
}

#[tokio::test]
async fn dead_upstream_is_a_502() {
    let dead = dead_addr().await;
    let gw = Gateway::start(&config("", "", ""), &[("UP", dead.to_string())]).await;
    let r = get_with(&gw.url("/x"), &[]).await;
    r.assert_error(502, "upstream_unavailable");
    let id = r.header("x-request-id").unwrap().to_string();
    let line = gw.wait_log_for(&id).await;
    assert_eq!(line["status"], 502);
    assert_eq!(line["error"], "upstream_unavailable");
    assert_eq!(line["target"], dead.to_string());
    gw.shutdown().await;
}

#[tokio::test]
async fn hanging_upstream_times_out_with_the_route_timeout() {
    let up = Upstream::start("hang", Behavior::Hang).await;
    let gw = Gateway::start(
        &config("", "", "    timeout: 300ms"),
        &[("UP", up.host_port())],
    )
    .await;
    let started = Instant::now();
    let r = get_with(&gw.url("/x"), &[]).await;
    let took = started.elapsed();
    r.assert_error(504, "upstream_timeout");
    assert_eq!(up.hits(), 1, "the upstream got the request");
    assert!(
        took >= Duration::from_millis(300),
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_millis(900),
        "answered too long after the 300ms timeout: {took:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_request_timeout_applies_without_a_route_override() {
    let up = Upstream::start("hang", Behavior::Hang).await;
    let yaml = server_block("")
        + r#"
upstreams:
  up:
    targets: [ { url: "http://${UP}" } ]
    timeouts: { connect: 500ms, request: 250ms }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: up
"#;
    let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
    let started = Instant::now();
    get_with(&gw.url("/x"), &[])
        .await
        .assert_error(504, "upstream_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(850),
        "{took:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_reset_mid_body_truncates_the_response() {
    let up = Upstream::start("reset", Behavior::ResetMidBody).await;
    let gw = Gateway::start(&config("", "", ""), &[("UP", up.host_port())]).await;
    let r = send(
        Request::get(gw.url("/x"))
            .header("x-request-id", "reset-1")
            .body(empty())
            .unwrap(),
    )
    .await;
    // The head (200, content-length 1000) was already forwarded: the client
    // must see the body fail, not a short body presented as complete.
    match &r {
        Err(e) => assert!(e.starts_with("body:"), "unexpected failure: {e}"),
        Ok(r) => panic!(
            "a truncated body was presented as complete: {} bytes",
            r.body.len()
        ),
    }
    let line = gw.wait_log_for("reset-1").await;
    assert_eq!(line["status"], 200);
    assert!(
        line["error"].is_string(),
        "the access log must record the failure: {line}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_5xx_passes_through_unchanged() {
    let up = Upstream::start("sick", Behavior::Status(503, "busy, come back later")).await;
    let gw = Gateway::start(&config("", "", ""), &[("UP", up.host_port())]).await;
    let r = get_with(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "busy, come back later");
    assert_eq!(r.header("x-upstream"), Some("sick"));
    let id = r.header("x-request-id").unwrap().to_string();
    let line = gw.wait_log_for(&id).await;
    assert_eq!(line["status"], 503);
    assert!(
        line["error"].is_null(),
        "an upstream answer is not a gateway error: {line}"
    );

    let up500 = Upstream::start("sick500", Behavior::Status(500, "boom")).await;
    let gw2 = Gateway::start(&config("", "", ""), &[("UP", up500.host_port())]).await;
    let r = get_with(&gw2.url("/x"), &[]).await;
    assert_eq!((r.status, r.text().as_str()), (500, "boom"));
    gw.shutdown().await;
    gw2.shutdown().await;
}

/// Starts one slow request, waits until the upstream holds it, and checks a
/// second one is shed with 503 `overloaded`; then that the slot comes back.
async fn assert_sheds_while_busy(gw: &Gateway, up: &Upstream) {
    let url = gw.url("/slow");
    let first = tokio::spawn(async move { get_with(&url, &[]).await });
    wait_until("the first request reaches the upstream", async || {
        up.active() == 1
    })
    .await;

    let r = get_with(&gw.url("/second"), &[]).await;
    r.assert_error(503, "overloaded");
    assert_eq!(up.hits(), 1, "the shed request never reached the upstream");

    let first = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert_eq!(first.status, 200, "the request holding the slot completes");

    // The slot is released once the first response is done.
    wait_until("the slot to be released", async || {
        let r = get_with(&gw.url("/third"), &[]).await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.status)
        }
    })
    .await;
}

#[tokio::test]
async fn upstream_bulkhead_sheds_with_503() {
    let up = Upstream::start("slow", Behavior::Slow(Duration::from_millis(600))).await;
    let gw = Gateway::start(
        &config("", "    max_concurrent_requests: 1", ""),
        &[("UP", up.host_port())],
    )
    .await;
    assert_sheds_while_busy(&gw, &up).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn server_max_concurrent_requests_sheds_with_503() {
    let up = Upstream::start("slow", Behavior::Slow(Duration::from_millis(600))).await;
    let gw = Gateway::start(
        &config("limits: { max_concurrent_requests: 1 }", "", ""),
        &[("UP", up.host_port())],
    )
    .await;
    assert_sheds_while_busy(&gw, &up).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_releases_its_slots_and_is_logged_as_499() {
    let up = Upstream::start("hang", Behavior::Hang).await;
    let gw = Gateway::start(
        &config(
            "limits: { max_concurrent_requests: 1 }",
            "    max_concurrent_requests: 1",
            "",
        ),
        &[("UP", up.host_port())],
    )
    .await;
    // The client gives up on a request the upstream never answers.
    let gave_up = send_within(
        Request::get(gw.url("/stuck"))
            .header("x-request-id", "leaver")
            .body(empty())
            .unwrap(),
        Duration::from_millis(300),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the hanging request was answered: {gave_up:?}"
    );

    // Its slots (global and the upstream's bulkhead) come back: the next
    // request is not shed. It hangs too, so it ends by timing out.
    let line = gw.wait_log_for("leaver").await;
    assert_eq!(line["status"], 499);
    assert_eq!(line["error"], "client_closed_request");
    let next = send_within(
        Request::get(gw.url("/again")).body(empty()).unwrap(),
        Duration::from_millis(300),
    )
    .await;
    assert!(
        next.is_err(),
        "expected the second request to reach the hanging upstream, got {next:?}"
    );
    assert_eq!(
        up.hits(),
        2,
        "both requests reached the upstream: no slot leaked"
    );
    gw.shutdown().await;
}
