//! Route lookup cost as the table grows: with hashed exact and prefix lookup,
//! matching the last route or missing should cost about the same for 10 and
//! 10,000 routes (it depends on the request path's depth, not the table size).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use tollgate::router::{PathSpec, RequestView, RouteSpec, Router};

fn route(name: String, path: PathSpec) -> RouteSpec {
    RouteSpec {
        name,
        path,
        hosts: vec![],
        methods: vec![],
        headers: vec![],
        query: vec![],
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

criterion_group!(benches, bench_find);
criterion_main!(benches);
