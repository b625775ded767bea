//! Metrics with exact values after known traffic (SPEC §7), W3C trace context
//! propagation, and the shipped Grafana dashboard and Prometheus alert rules.

use std::collections::BTreeSet;

use crate::support::*;

const CONFIG: &str = "
upstreams:
  app:
    targets: [{ url: 'http://${UP}' }]
  bad:
    targets: [{ url: 'http://${BAD}' }]
routes:
  - name: api
    match: { path_prefix: /api }
    upstream: app
  - name: broken
    match: { path_prefix: /broken }
    upstream: bad
  - name: ping
    match: { path: /ping }
    respond: { status: 204 }
";

fn value(m: &str, series: &str) -> f64 {
    metric(m, series).unwrap_or_else(|| panic!("no series {series} in\n{m}"))
}

#[tokio::test]
async fn counters_histograms_and_gauges_have_exact_values() {
    let up = Upstream::echo("u").await;
    let bad = Upstream::start("bad", Behavior::Status(503, "down")).await;
    let yaml = server_block("") + CONFIG;
    let gw = Gateway::start(&yaml, &[("UP", up.host_port()), ("BAD", bad.host_port())]).await;

    for _ in 0..3 {
        assert_eq!(get(&gw.url("/api/x")).await.unwrap().status, 200);
    }
    let post = http::Request::post(gw.url("/api/x"))
        .body(body("hi"))
        .unwrap();
    assert_eq!(send(post).await.unwrap().status, 200);
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/broken")).await.unwrap().status, 503);
    }
    assert_eq!(get(&gw.url("/ping")).await.unwrap().status, 204);
    assert_eq!(get(&gw.url("/nowhere")).await.unwrap().status, 404);
    // The access log is written after the response ends: wait for all 8 so
    // every request's bookkeeping is done before scraping.
    gw.wait_log_lines(8).await;

    let m = gw.metrics().await;
    let req = |route: &str, method: &str, status: &str| {
        value(
            &m,
            &format!(
                r#"tollgate_requests_total{{route="{route}",method="{method}",status="{status}"}}"#
            ),
        )
    };
    assert_eq!(req("api", "GET", "200"), 3.0);
    assert_eq!(req("api", "POST", "200"), 1.0);
    assert_eq!(req("broken", "GET", "503"), 2.0);
    assert_eq!(req("ping", "GET", "204"), 1.0);
    assert_eq!(req("_none", "GET", "404"), 1.0);
    let count = |route: &str| {
        value(
            &m,
            &format!(r#"tollgate_request_duration_seconds_count{{route="{route}"}}"#),
        )
    };
    assert_eq!(count("api"), 4.0);
    assert_eq!(count("broken"), 2.0);
    assert_eq!(count("_none"), 1.0);
    let inf = value(
        &m,
        r#"tollgate_request_duration_seconds_bucket{route="api",le="+Inf"}"#,
    );
    assert_eq!(inf, 4.0);
    let target = up.host_port();
    let up_req = |upstream: &str, target: &str, outcome: &str| {
        value(
            &m,
            &format!(
                r#"tollgate_upstream_requests_total{{upstream="{upstream}",target="{target}",outcome="{outcome}"}}"#
            ),
        )
    };
    assert_eq!(up_req("app", &target, "success"), 4.0);
    assert_eq!(up_req("app", &target, "http_5xx"), 0.0);
    assert_eq!(up_req("bad", &bad.host_port(), "http_5xx"), 2.0);
    assert_eq!(
        value(
            &m,
            r#"tollgate_upstream_duration_seconds_count{upstream="app"}"#
        ),
        4.0
    );
    assert_eq!(value(&m, "tollgate_in_flight_requests"), 0.0);
    assert_eq!(value(&m, "tollgate_access_log_dropped_total"), 0.0);
    assert_eq!(
        value(&m, r#"tollgate_config_reloads_total{result="success"}"#),
        0.0
    );
    assert!(value(&m, "tollgate_config_last_reload_success_timestamp_seconds") > 1.7e9);
    let version = get(&gw.admin_url("/config")).await.unwrap().json()["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        value(
            &m,
            &format!(r#"tollgate_config_info{{version="{version}"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &format!(
                r#"tollgate_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn in_flight_and_connection_gauges_follow_the_traffic() {
    let up = Upstream::echo("u").await;
    let bad = dead_addr().await;
    let yaml = server_block("") + CONFIG;
    let gw = Gateway::start(&yaml, &[("UP", up.host_port()), ("BAD", bad.to_string())]).await;
    let mut a = Conn::open(gw.addr).await;
    let mut b = Conn::open(gw.addr).await;
    assert_eq!(a.get("/ping").await.unwrap().status, 204);
    assert_eq!(b.get("/ping").await.unwrap().status, 204);
    let slow = tokio::spawn(async move { a.get("/api/x?delay_ms=400").await });
    wait_until_metric(&gw, "tollgate_in_flight_requests", 1.0).await;
    wait_until_metric(&gw, r#"tollgate_active_connections{listener="http"}"#, 2.0).await;
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    wait_until_metric(&gw, "tollgate_in_flight_requests", 0.0).await;
    drop(b);
    wait_until_metric(&gw, r#"tollgate_active_connections{listener="http"}"#, 0.0).await;
    gw.shutdown().await;
}

async fn wait_until_metric(gw: &Gateway, series: &str, want: f64) {
    wait_until(format!("{series} to reach {want}"), async || {
        let m = gw.metrics().await;
        if metric(&m, series) == Some(want) {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await;
}

#[tokio::test]
async fn trace_context_is_propagated_with_a_new_span_per_hop() {
    let up = Upstream::echo("u").await;
    let yaml = server_block("") + CONFIG;
    let gw = Gateway::start(&yaml, &[("UP", up.host_port()), ("BAD", up.host_port())]).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get_with(
        &gw.url("/api/x"),
        &[("traceparent", incoming), ("tracestate", "vendor=abc")],
    )
    .await;
    let h = &r.json()["headers"];
    let sent = h["traceparent"].as_str().unwrap();
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01"));
    assert_ne!(sent, incoming, "a new parent id for this hop");
    assert_eq!(h["tracestate"], "vendor=abc");

    // None: a new trace starts; garbage: replaced, and its tracestate dropped.
    let a = get(&gw.url("/api/x")).await.unwrap().json()["headers"]["traceparent"].clone();
    let b = get_with(
        &gw.url("/api/x"),
        &[("traceparent", "garbage"), ("tracestate", "vendor=abc")],
    )
    .await
    .json()["headers"]
        .clone();
    for tp in [a.as_str().unwrap(), b["traceparent"].as_str().unwrap()] {
        assert_eq!(tp.len(), 55, "{tp}");
        assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    }
    assert_ne!(a, b["traceparent"]);
    assert!(b.get("tracestate").is_none());
    gw.shutdown().await;
}

/// The metric names of SPEC §7 (plus this gateway's addition).
fn spec_metrics() -> BTreeSet<String> {
    let spec = [
        "tollgate_requests_total",
        "tollgate_request_duration_seconds",
        "tollgate_upstream_requests_total",
        "tollgate_upstream_duration_seconds",
        "tollgate_upstream_healthy",
        "tollgate_circuit_state",
        "tollgate_retries_total",
        "tollgate_rate_limited_total",
        "tollgate_auth_failures_total",
        "tollgate_active_connections",
        "tollgate_in_flight_requests",
        "tollgate_config_reloads_total",
        "tollgate_config_last_reload_success_timestamp_seconds",
        "tollgate_jwks_refreshes_total",
        "tollgate_jwks_age_seconds",
        "tollgate_config_info",
        "tollgate_build_info",
        "tollgate_access_log_dropped_total",
    ];
    spec.iter().map(|s| s.to_string()).collect()
}

/// Every `tollgate_*` name in `text`, histogram suffixes folded into the base.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"tollgate_[a-z_]+").unwrap();
    re.find_iter(text)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .filter(|base| base.ends_with("_seconds"))
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

#[test]
fn grafana_dashboard_parses_and_uses_only_spec_metrics() {
    let text = std::fs::read_to_string("config/grafana/tollgate.json").unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dash["title"].is_string());
    let panels = dash["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Request rate",
        "Error ratio",
        "Latency",
        "Upstream health",
        "Circuit state",
        "Rate limited",
        "Reloads",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel {want}: {titles:?}"
        );
    }
    for p in panels {
        let targets = p["targets"].as_array();
        assert!(
            targets.is_some_and(|t| !t.is_empty()),
            "panel without query: {p}"
        );
    }
    // Provisionable from a file as it is: no import-only `${DS_...}` input;
    // every query goes through the `datasource` variable.
    assert!(dash.get("__inputs").is_none() && !text.contains("${DS_"));
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "{vars:?}"
    );
    let uids = regex::Regex::new(r#""uid":\s*"([^"]*)""#).unwrap();
    for c in uids.captures_iter(&text) {
        assert!(
            &c[1] == "${datasource}" || &c[1] == "tollgate",
            "datasource uid {}",
            &c[1]
        );
    }
    let used = referenced_metrics(&text);
    let spec = spec_metrics();
    let unknown: Vec<_> = used.difference(&spec).collect();
    assert!(unknown.is_empty(), "not in SPEC §7: {unknown:?}");
    assert!(used.len() >= 8, "{used:?}");
}

#[test]
fn alert_rules_have_the_prometheus_rule_file_shape() {
    let text = std::fs::read_to_string("config/prometheus/alerts.yaml").unwrap();
    let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let groups = doc["groups"].as_array().expect("groups");
    let mut alerts = Vec::new();
    let duration = regex::Regex::new(r"^\d+[smh]$").unwrap();
    for g in groups {
        assert!(g["name"].is_string());
        for r in g["rules"].as_array().expect("rules") {
            let alert = r["alert"].as_str().expect("alert");
            let expr = r["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty());
            assert!(r["labels"]["severity"].is_string(), "{alert}: severity");
            assert!(r["annotations"]["summary"].is_string(), "{alert}: summary");
            if let Some(f) = r.get("for") {
                assert!(duration.is_match(f.as_str().unwrap()), "{alert}: for");
            }
            alerts.push(alert.to_string());
        }
    }
    for want in [
        "TollgateHigh5xxRatio",
        "TollgateUpstreamDown",
        "TollgateCircuitOpen",
        "TollgateConfigReloadFailed",
        "TollgateHighP99Latency",
    ] {
        assert!(
            alerts.iter().any(|a| a == want),
            "missing {want}: {alerts:?}"
        );
    }
    let used = referenced_metrics(&text);
    let spec = spec_metrics();
    let unknown: Vec<_> = used.difference(&spec).collect();
    assert!(unknown.is_empty(), "not in SPEC §7: {unknown:?}");
}

/// The default build has no span export: its keys fail validation with a
/// message naming the feature, rather than being ignored.
#[cfg(not(feature = "otel"))]
#[test]
fn otlp_export_is_refused_without_the_otel_feature() {
    for key in [
        "otlp_endpoint: 'http://collector:4318'",
        "sample_ratio: 0.5",
    ] {
        let yaml = format!("tracing: {{ {key} }}\nroutes: []\n");
        let err = tollgate::config::load_str(&yaml, "t.yaml")
            .unwrap_err()
            .to_string();
        let name = key.split(':').next().unwrap();
        assert!(err.contains(&format!("tracing.{name}")), "{err}");
        assert!(
            err.contains("needs tollgate built with `--features otel`"),
            "{err}"
        );
    }
    let ok = tollgate::config::load_str("tracing: {}\nroutes: []\n", "t.yaml");
    assert!(ok.is_ok(), "{ok:?}");
}
