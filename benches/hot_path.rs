//! The per-request work around the upstream call that is ours, not hyper's:
//! preparing the upstream request's headers (hop-by-hop strip, X-Forwarded-*,
//! trace context) for a typical browser request and for one behind a proxy,
//! cleaning the upstream's response headers, and recording a finished request
//! in the metrics (counter by method and status, duration histogram).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tollgate::headers::{ip_value, propagate_trace, set_forwarded, strip_hop_by_hop};
use tollgate::metrics::Metrics;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    m
}

fn forwarding(c: &mut Criterion) {
    let browser = headers(&[
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/133.0",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "en-US,en;q=0.5"),
        ("connection", "keep-alive"),
        ("cookie", "session=0123456789abcdef"),
    ]);
    let proxied = headers(&[
        ("host", "api.example.com"),
        ("accept", "*/*"),
        ("x-forwarded-for", "203.0.113.7, 10.0.0.2"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "vendor=opaque"),
        ("connection", "keep-alive, x-debug"),
        ("x-debug", "1"),
        ("te", "trailers"),
    ]);
    let response = headers(&[
        ("content-type", "application/json"),
        ("content-length", "6"),
        ("date", "Wed, 25 Nov 2026 12:00:00 GMT"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=75"),
    ]);
    let peer = ip_value("192.0.2.10".parse().expect("ip"));
    let host = HeaderValue::from_static("api.example.com");
    for (name, input) in [("browser", &browser), ("behind_proxy", &proxied)] {
        c.bench_function(&format!("headers/upstream_request_{name}"), |b| {
            b.iter_batched_ref(
                || input.clone(),
                |h| {
                    strip_hop_by_hop(h);
                    set_forwarded(h, &peer, "http", Some(&host));
                    black_box(propagate_trace(h));
                },
                BatchSize::SmallInput,
            )
        });
    }
    c.bench_function("headers/upstream_response", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |h| strip_hop_by_hop(black_box(h)),
            BatchSize::SmallInput,
        )
    });
}

fn metrics(c: &mut Criterion) {
    let metrics = Metrics::new().expect("metrics");
    let route = metrics.route("users");
    // The first use resolves the cached handle; the bench measures the rest.
    route.count(&Method::GET, StatusCode::OK);
    c.bench_function("metrics/record_request", |b| {
        b.iter(|| {
            route.count(black_box(&Method::GET), black_box(StatusCode::OK));
            route.duration.observe(black_box(0.0042));
        })
    });
}

criterion_group!(benches, forwarding, metrics);
criterion_main!(benches);
