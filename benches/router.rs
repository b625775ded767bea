//! Route lookup cost as the table grows: with hashed exact and prefix lookup,
//! matching the last route or missing should cost about the same for 10 and
//! 10,000 routes (it depends on the request path's depth, not the table size).
//!
//! `router_find_scale` matches against the router compiled from the realistic
//! 10,000-route config of `tests/it/support/scale.rs` (prefix, exact, tenant-host
//! and regex routes): the last route of each kind, wildcard hosts, and misses.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use tollgate::config::load_str_with_env;
use tollgate::metrics::Metrics;
use tollgate::router::{PathSpec, RequestView, RouteSpec, Router};
use tollgate::snapshot::Snapshot;
use tollgate::snapshot::build::compile;
use tollgate::snapshot::carryover::Carryover;

#[path = "../tests/it/support/scale.rs"]
mod scale;

fn route(name: String, path: PathSpec) -> RouteSpec {
    RouteSpec {
        name,
        path,
        hosts: vec![],
        methods: vec![],
        headers: vec![],
        query: vec![],
        cookies: vec![],
    }
}

/// `n` prefix routes `/svc{i}/v1`, one GET-only twin for each tenth, and a
/// handful of exact routes, like a large multi-service gateway.
fn table(n: usize) -> Router {
    let mut specs: Vec<RouteSpec> = (0..n)
        .map(|i| route(format!("svc{i}"), PathSpec::Prefix(format!("/svc{i}/v1"))))
        .collect();
    for i in (0..n).step_by(10) {
        let mut get_only = route(
            format!("svc{i}-get"),
            PathSpec::Prefix(format!("/svc{i}/v1")),
        );
        get_only.methods = vec![Method::GET];
        specs.push(get_only);
    }
    for name in ["ping", "healthz", "version", "metrics"] {
        specs.push(route(name.into(), PathSpec::Exact(format!("/{name}"))));
    }
    match Router::new(specs) {
        Ok(router) => router,
        Err(e) => panic!("bench table must compile: {e}"),
    }
}

fn bench_find(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let method = Method::POST;
    let mut group = c.benchmark_group("router_find");
    for n in [10usize, 100, 1_000, 10_000] {
        let router = table(n);
        let last = format!("/svc{}/v1/users/42/orders", n - 1);
        let cases = [
            ("last_prefix", last.as_str()),
            ("exact", "/metrics"),
            ("miss", "/nowhere/at/all/x"),
        ];
        for (label, path) in cases {
            let req = RequestView {
                method: &method,
                host: Some("api.example.com:8443"),
                path,
                query: Some("a=1&b=2"),
                headers: &headers,
            };
            assert!(router.find(&req).is_some() == (label != "miss"));
            group.bench_with_input(BenchmarkId::new(label, n), &req, |b, req| {
                b.iter(|| router.find(black_box(req)))
            });
        }
    }
    group.finish();
}

fn scale_snapshot(routes: usize) -> Snapshot {
    let text = scale::Scale {
        routes,
        variant: 0,
        server: "listeners:\n  - name: http\n    bind: 127.0.0.1:0".into(),
        targets: scale::private_targets,
    }
    .yaml();
    let loaded = load_str_with_env(&text, "scale.yaml", &|_| None)
        .unwrap_or_else(|e| panic!("the scale config must load: {e}"));
    let metrics = Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}"));
    compile(&loaded, &metrics, &Carryover::default())
        .unwrap_or_else(|e| panic!("the scale config must compile: {e}"))
}

fn bench_find_scale(c: &mut Criterion) {
    let n = 10_000;
    let snapshot = scale_snapshot(n);
    let router = &snapshot.router;
    let headers = HeaderMap::new();
    let get = Method::GET;
    // The last route of each kind, so that any scan in file order is at its longest.
    let last = |want: fn(&scale::RouteKind) -> bool| {
        (0..n)
            .rev()
            .find(|&i| want(&scale::kind(i)))
            .unwrap_or_else(|| panic!("no such route"))
    };
    let named = |i: usize| {
        let (host, path) = scale::request_for(i, n);
        (format!("r{i}"), host, path)
    };
    let mut cases: Vec<(&str, Option<String>, Option<String>, String)> = Vec::new();
    let mut push = |label, (name, host, path): (String, Option<String>, String)| {
        cases.push((label, Some(name), host, path));
    };
    push(
        "last_prefix",
        named(last(|k| matches!(k, scale::RouteKind::Prefix))),
    );
    push(
        "last_exact",
        named(last(|k| matches!(k, scale::RouteKind::Exact))),
    );
    push(
        "last_regex",
        named(last(|k| matches!(k, scale::RouteKind::Regex))),
    );
    push(
        "last_host_root",
        named(last(|k| matches!(k, scale::RouteKind::Host("/")))),
    );
    push(
        "last_host_static",
        named(last(|k| matches!(k, scale::RouteKind::Host("/static")))),
    );
    // `*.t{t}.example.com`: tenant 496 (a multiple of 4) has the wildcard.
    let wild = (0..n)
        .rev()
        .find(|&i| matches!(scale::kind(i), scale::RouteKind::Host("/app")) && (i / 20) % 4 == 0)
        .unwrap_or_else(|| panic!("no wildcard tenant"));
    cases.push((
        "wildcard_host",
        Some(format!("r{wild}")),
        Some(format!("eu.t{}.example.com:443", wild / 20)),
        "/app/dashboard".into(),
    ));
    cases.push(("miss", None, None, "/nowhere/at/all/x".into()));
    cases.push((
        "miss_unknown_host",
        None,
        Some("unknown.example.org".into()),
        "/static/app.js".into(),
    ));
    cases.push((
        "miss_regex_like",
        None,
        None,
        format!(
            "/api/s7/r{}/12x/orders",
            last(|k| matches!(k, scale::RouteKind::Regex))
        ),
    ));

    let mut group = c.benchmark_group("router_find_scale");
    for (label, want, host, path) in &cases {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path.as_str(), None),
        };
        let req = RequestView {
            method: &get,
            host: host.as_deref(),
            path,
            query,
            headers: &headers,
        };
        let got = router.find(&req).map(|i| router.spec(i).name.as_str());
        assert_eq!(got, want.as_deref(), "{label}: {host:?} {path}");
        group.bench_with_input(BenchmarkId::new(*label, n), &req, |b, req| {
            b.iter(|| router.find(black_box(req)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_find, bench_find_scale);
criterion_main!(benches);
