//! What span export (feature `otel`) adds to one request, against the trace
//! propagation every build does:
//! - `propagate_only`: the default build's `propagate_trace` (parse the
//!   client's `traceparent`, send a new one);
//! - `otel_hop`: the `otel` build's request-path work for a sampled request:
//!   `begin` (parse, sample), `set_traceparent`, and at the end the span record
//!   built and queued with `try_send`, the export task draining into a loopback
//!   collector. Each measured burst (whole 512-span batches) fits in the queue
//!   and is waited out before the next, so no span is dropped (checked);
//! - `sdk_hop`: the same request-path work done with the OpenTelemetry SDK
//!   instead (`opentelemetry_sdk` 0.33: W3C propagator extract and inject, a
//!   SERVER span with the same attributes, ended into a `BatchSpanProcessor`
//!   whose exporter does nothing, so that only the request path counts). Its
//!   bursts are flushed between measurements, as `otel_hop`'s are;
//! - `encode_per_span`: the export task's protobuf encoding, per span of a
//!   512-span batch (off the request path, but on the same runtime).

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Response, Uri};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData};
use tollgate::headers::{TraceContext, propagate_trace, set_traceparent};
use tollgate::otel::{ExportSettings, FinishedSpan, Protocol, SpanExporter, SpanMetrics, encode};

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("traceparent", HeaderValue::from_static(CLIENT));
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h
}

fn span(ctx: TraceContext, uri: &Uri, names: &[Arc<str>; 4], host: &HeaderValue) -> FinishedSpan {
    FinishedSpan {
        ctx,
        start: SystemTime::now(),
        duration: Duration::from_micros(850),
        method: Method::GET,
        uri: uri.clone(),
        tls: false,
        host: Some(host.clone()),
        client_ip: [10, 0, 0, 7].into(),
        listener: names[0].clone(),
        route: Some(names[1].clone()),
        upstream: Some(names[2].clone()),
        target: Some(names[3].clone()),
        status: 200,
        error: None,
        request_id: HeaderValue::from_static("4f1c2a7e9b0d4c3f8e6a5b2d1c0f9e8d"),
        retries: 0,
    }
}

/// A loopback OTLP collector that accepts everything.
async fn sink() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let addr = rt.block_on(sink());
    let metrics = SpanMetrics::register(&prometheus::Registry::new())
        .unwrap_or_else(|e| panic!("metrics: {e}"));
    let settings = ExportSettings {
        url: format!("http://{addr}/v1/traces")
            .parse()
            .unwrap_or_else(|e| panic!("url: {e}")),
        protocol: Protocol::HttpProtobuf,
        headers: Vec::new(),
        sample_ratio: 1.0,
    };
    let exporter = {
        let _guard = rt.enter();
        SpanExporter::start(settings, &metrics).unwrap_or_else(|e| panic!("exporter: {e}"))
    };
    let uri: Uri = "/api/users/42"
        .parse()
        .unwrap_or_else(|e| panic!("uri: {e}"));
    let names: [Arc<str>; 4] = [
        "http".into(),
        "api".into(),
        "app".into(),
        "10.0.0.9:8080".into(),
    ];
    let host = HeaderValue::from_static("api.example.com");

    let mut group = c.benchmark_group("trace");
    group.bench_function("propagate_only", |b| {
        b.iter_batched_ref(
            client_headers,
            |h| black_box(propagate_trace(h)),
            criterion::BatchSize::SmallInput,
        )
    });

    let sent = || metrics.exported.get() + metrics.dropped_export_failed.get();
    group.bench_function("otel_hop", |b| {
        b.iter_custom(|iters| {
            // Whole batches, so the export task never waits for its timer.
            let spans = iters.div_ceil(512) * 512;
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < spans {
                let burst = (spans - done).min(2048);
                let before = sent();
                let mut headers: Vec<HeaderMap> = (0..burst).map(|_| client_headers()).collect();
                let start = Instant::now();
                for h in &mut headers {
                    if let Some(ctx) = exporter.begin(h) {
                        set_traceparent(h, &ctx);
                        exporter.export(span(ctx, &uri, &names, &host));
                    }
                }
                total += start.elapsed();
                // Let the export task send the burst before the next one.
                let deadline = Instant::now() + Duration::from_secs(30);
                while sent() < before + burst && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(100));
                }
                done += burst;
            }
            total.mul_f64(iters as f64 / spans as f64)
        })
    });
    assert_eq!(
        metrics.dropped_queue_full.get(),
        0,
        "a burst overflowed the queue"
    );
    assert_eq!(
        metrics.dropped_export_failed.get(),
        0,
        "the sink refused spans"
    );

    sdk_hop(&mut group, &uri);

    let ctx = TraceContext::incoming(&client_headers(), *b"01");
    let batch: Vec<FinishedSpan> = (0..512).map(|_| span(ctx, &uri, &names, &host)).collect();
    group.bench_function("encode_per_span", |b| {
        b.iter_custom(|iters| {
            let batches = iters.div_ceil(512);
            let start = Instant::now();
            for _ in 0..batches {
                black_box(encode(&batch));
            }
            // Time per span, times the spans asked for.
            start
                .elapsed()
                .mul_f64(iters as f64 / (batches * 512) as f64)
        })
    });
    group.finish();
}

/// An SDK exporter that drops every batch: the SDK's request-path cost alone.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

struct Headers<'a>(&'a mut HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// `otel_hop`'s work through the OpenTelemetry SDK.
fn sdk_hop(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, uri: &Uri) {
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(Discard).build())
        .build();
    let tracer = provider.tracer("tollgate");
    let propagator = TraceContextPropagator::new();
    group.bench_function("sdk_hop", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let burst = (iters - done).min(512);
                let mut headers: Vec<HeaderMap> = (0..burst).map(|_| client_headers()).collect();
                let start = Instant::now();
                for h in &mut headers {
                    let parent = propagator.extract(&Headers(h));
                    let mut span = tracer
                        .span_builder("GET api")
                        .with_kind(SpanKind::Server)
                        .with_attributes([
                            KeyValue::new("http.request.method", "GET"),
                            KeyValue::new("url.path", uri.path().to_string()),
                            KeyValue::new("url.scheme", "http"),
                            KeyValue::new("http.route", "api"),
                            KeyValue::new("server.address", "api.example.com"),
                            KeyValue::new("client.address", "10.0.0.7"),
                            KeyValue::new("tollgate.listener", "http"),
                            KeyValue::new("tollgate.upstream", "app"),
                            KeyValue::new("tollgate.target", "10.0.0.9:8080"),
                            KeyValue::new(
                                "tollgate.request_id",
                                "4f1c2a7e9b0d4c3f8e6a5b2d1c0f9e8d",
                            ),
                        ])
                        .start_with_context(&tracer, &parent);
                    let cx = parent.with_remote_span_context(span.span_context().clone());
                    propagator.inject_context(&cx, &mut Headers(h));
                    span.set_attribute(KeyValue::new("http.response.status_code", 200));
                    span.end();
                }
                total += start.elapsed();
                let _ = provider.force_flush();
                done += burst;
            }
            total
        })
    });
    let _ = provider.shutdown();
}

criterion_group!(benches, bench);
criterion_main!(benches);
