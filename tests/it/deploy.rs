//! What `deploy/` relies on from the gateway: every metric the shipped Grafana
//! dashboard and Prometheus alert rules query is in a live `/metrics`, and the
//! tollgate.yaml files of the Compose stack and of the Kubernetes ConfigMap
//! pass the gateway's own validation. (`deploy/check.sh` checks the rest.)

use std::collections::BTreeSet;

use crate::support::*;

/// Every `tollgate_*` series name in `text`, exactly as written (histograms
/// keep their `_bucket`/`_sum`/`_count` suffix: that is what is scraped).
fn queried_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"tollgate_[a-z_]+").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

/// The series names of a Prometheus text exposition (comments skipped).
fn exposed_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn shipped(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// One gateway with every kind of series the dashboard and alerts query:
/// proxied requests on an upstream with health checks, a circuit breaker and
/// retries, an auth failure, a rate limit that rejects, and a reload.
const TRAFFIC: &str = "
auth:
  api_keys:
    clients:
      keys: [{ id: demo, key: demo-key-0123 }]
rate_limits:
  tight:
    rate: 1/m
    burst: 1
upstreams:
  app:
    targets: [{ url: 'http://${UP}' }]
    health_check: { path: /healthz, interval: 200ms, timeout: 100ms }
    circuit_breaker: { consecutive_failures: 2 }
  flaky:
    targets: [{ url: 'http://${BAD}' }]
    circuit_breaker: { consecutive_failures: 2 }
    retries: { attempts: 1, on: [503] }
routes:
  - name: api
    match: { path_prefix: /api }
    upstream: app
  - name: flaky
    match: { path_prefix: /flaky }
    upstream: flaky
  - name: keys
    match: { path_prefix: /keys }
    upstream: app
    auth: [api_key:clients]
  - name: limited
    match: { path_prefix: /limited }
    upstream: app
    rate_limit: [tight]
";

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_exposed() {
    let up = Upstream::echo("app").await;
    let bad = Upstream::start("flaky", Behavior::Status(503, "down")).await;
    let vars = [("UP", up.host_port()), ("BAD", bad.host_port())];
    let yaml = server_block("") + TRAFFIC;
    let gw = Gateway::start(&yaml, &vars).await;

    assert_eq!(get(&gw.url("/api/x")).await.unwrap().status, 200);
    assert_eq!(get(&gw.url("/flaky")).await.unwrap().status, 503);
    assert_eq!(get(&gw.url("/keys")).await.unwrap().status, 401);
    assert_eq!(get(&gw.url("/limited")).await.unwrap().status, 200);
    assert_eq!(get(&gw.url("/limited")).await.unwrap().status, 429);
    gw.reload(&yaml, &vars).await;
    wait_until("a health check of the app upstream", async || {
        if up.control.health_hits() > 0 {
            Ok(())
        } else {
            Err("no probe yet".to_string())
        }
    })
    .await;
    gw.wait_log_lines(5).await;

    let exposed = exposed_names(&gw.metrics().await);
    for file in [
        "config/grafana/tollgate.json",
        "config/prometheus/alerts.yaml",
    ] {
        let queried = queried_names(&shipped(file));
        assert!(
            queried.len() >= 3,
            "{file} queries almost nothing: {queried:?}"
        );
        let missing: Vec<_> = queried.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{file} queries series that /metrics lacks: {missing:?}\nexposed: {exposed:?}"
        );
        // A histogram that is queried by its buckets is exposed whole.
        for bucket in queried.iter().filter_map(|n| n.strip_suffix("_bucket")) {
            for part in ["_sum", "_count"] {
                let name = format!("{bucket}{part}");
                assert!(exposed.contains(&name), "{file}: {name} missing");
            }
        }
    }
    gw.shutdown().await;
}

#[test]
fn the_name_extraction_sees_what_is_queried_and_what_is_exposed() {
    let q = queried_names(r#"sum(rate(tollgate_a_seconds_bucket{job="x"}[5m])) / tollgate_b"#);
    assert_eq!(
        q.into_iter().collect::<Vec<_>>(),
        ["tollgate_a_seconds_bucket", "tollgate_b"]
    );
    let e = exposed_names(
        "# HELP tollgate_c x\n# TYPE tollgate_c counter\ntollgate_c{a=\"1\"} 2\ntollgate_d 1\n",
    );
    assert_eq!(
        e.into_iter().collect::<Vec<_>>(),
        ["tollgate_c", "tollgate_d"]
    );
}

/// The Compose stack's config. It exports spans (`tracing`), which only an
/// `otel` build accepts: in other builds the rest of the file must pass and
/// the only errors must be the ones naming that feature.
#[test]
fn the_compose_tollgate_yaml_passes_validation() {
    let text = shipped("deploy/compose/tollgate.yaml");
    let no_env = |_: &str| None;
    let full = tollgate::config::load_str_with_env(&text, "deploy/compose/tollgate.yaml", &no_env);
    if cfg!(feature = "otel") {
        if let Err(e) = full {
            panic!("deploy/compose/tollgate.yaml is invalid:\n{e}");
        }
        return;
    }
    let errors = full
        .expect_err("tracing needs the otel feature")
        .to_string();
    let lines: Vec<&str> = errors
        .lines()
        .filter(|l| l.contains(": tracing."))
        .collect();
    assert!(!lines.is_empty(), "{errors}");
    assert!(
        lines.iter().all(|l| l.contains("--features otel")),
        "{errors}"
    );
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    doc.as_mapping_mut()
        .unwrap()
        .remove("tracing")
        .expect("a tracing section");
    let rest = serde_yaml::to_string(&doc).unwrap();
    if let Err(e) =
        tollgate::config::load_str_with_env(&rest, "compose-without-tracing.yaml", &no_env)
    {
        panic!("deploy/compose/tollgate.yaml is invalid beyond `tracing`:\n{e}");
    }
}

/// The Kubernetes ConfigMap's tollgate.yaml, with its `${file:...}` keys read
/// from the Secret's values laid out as the kubelet mounts them.
#[test]
fn the_kubernetes_configmap_tollgate_yaml_passes_validation() {
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(&shipped("deploy/k8s/base/kustomization.yaml")).unwrap();
    let generated = &kustomization["configMapGenerator"][0];
    assert_eq!(generated["name"].as_str(), Some("tollgate-config"));
    assert_eq!(generated["files"][0].as_str(), Some("tollgate.yaml"));

    let secret: serde_yaml::Value =
        serde_yaml::from_str(&shipped("deploy/k8s/base/secret.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in secret["stringData"].as_mapping().expect("stringData") {
        std::fs::write(dir.path().join(k.as_str().unwrap()), v.as_str().unwrap()).unwrap();
    }
    let text = shipped("deploy/k8s/base/tollgate.yaml");
    assert!(
        text.contains("${file:/etc/tollgate/secrets/"),
        "keys come from the Secret"
    );
    let local = text.replace(
        "/etc/tollgate/secrets/",
        &format!("{}/", dir.path().display()),
    );
    let no_env = |_: &str| None;
    let _validated =
        tollgate::config::load_str_with_env(&local, "deploy/k8s/base/tollgate.yaml", &no_env)
            .unwrap_or_else(|e| panic!("the ConfigMap's tollgate.yaml is invalid:\n{e}"));
}
