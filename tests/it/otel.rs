//! OTLP span export (cargo feature `otel`): a fake OTLP collector in the test
//! process decodes what the gateway POSTs to `/v1/traces` (OTLP/HTTP) or sends
//! to `TraceService/Export` (OTLP/gRPC over HTTP/2), and the spans are checked
//! against what the client sent and what the upstream received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use prost::Message;
use tokio::net::TcpListener;

use crate::support::*;

const CONFIG: &str = "
tracing:
  otlp_endpoint: http://${COLLECTOR}
upstreams:
  app:
    targets: [{ url: 'http://${UP}' }]
  bad:
    targets: [{ url: 'http://${DEAD}' }]
routes:
  - name: api
    match: { path_prefix: /api }
    upstream: app
  - name: broken
    match: { path_prefix: /broken }
    upstream: bad
";

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// An OTLP collector on 127.0.0.1:0 (OTLP/HTTP on HTTP/1.1 or HTTP/2, and
/// OTLP/gRPC) keeping every span it is sent and the headers of each export.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    /// The request headers of every export, and whether it came over gRPC.
    exports: Arc<Mutex<Vec<(bool, HeaderMap)>>>,
    /// Answer every export with this status (200 unless changed); over gRPC
    /// anything else is answered 200 with `grpc-status: 14` (unavailable).
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

/// The protobuf message of one gRPC frame (uncompressed, the whole body).
fn grpc_message(body: Bytes) -> Bytes {
    assert_eq!(body[0], 0, "not compressed");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    assert_eq!(len, body.len() - 5, "one whole frame");
    body.slice(5..)
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let exports = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (kept, seen, answer) = (spans.clone(), exports.clone(), status.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (kept, seen, answer) = (kept.clone(), seen.clone(), answer.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (kept, seen, answer) = (kept.clone(), seen.clone(), answer.clone());
                        async move {
                            let content_type = req.headers()["content-type"].clone();
                            let grpc = req.method() == "POST"
                                && req.uri().path() == GRPC_PATH
                                && req.version() == http::Version::HTTP_2
                                && content_type == "application/grpc"
                                && req.headers()["te"] == "trailers";
                            let ok = grpc
                                || req.method() == "POST"
                                    && req.uri().path() == "/v1/traces"
                                    && content_type == "application/x-protobuf";
                            seen.lock().unwrap().push((grpc, req.headers().clone()));
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body = if grpc { grpc_message(body) } else { body };
                            let status = if ok {
                                let export = ExportTraceServiceRequest::decode(body).unwrap();
                                let mut kept = kept.lock().unwrap();
                                for rs in export.resource_spans {
                                    let resource = rs.resource.unwrap();
                                    assert!(resource.attributes.iter().any(|a| {
                                        a.key == "service.name"
                                            && a.value.as_ref().unwrap().value
                                                == Some(AnyValue::StringValue("tollgate".into()))
                                    }));
                                    for ss in rs.scope_spans {
                                        kept.extend(ss.spans);
                                    }
                                }
                                answer.load(Ordering::SeqCst)
                            } else {
                                404
                            };
                            if grpc {
                                // An empty ExportTraceServiceResponse, then the status.
                                let mut trailers = HeaderMap::new();
                                let code = if status == 200 { "0" } else { "14" };
                                trailers.insert("grpc-status", code.parse().unwrap());
                                let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
                                    .with_trailers(async move { Some(Ok(trailers)) })
                                    .boxed();
                                let mut resp = Response::new(body);
                                resp.headers_mut()
                                    .insert("content-type", "application/grpc".parse().unwrap());
                                return Ok::<_, Infallible>(resp);
                            }
                            let body: BoxBody<Bytes, Infallible> = Full::new(Bytes::new()).boxed();
                            let mut resp = Response::new(body);
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector {
            addr,
            spans,
            exports,
            status,
            task,
        }
    }

    fn exports(&self) -> Vec<(bool, HeaderMap)> {
        self.exports.lock().unwrap().clone()
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits for the span of trace `trace_id` (hex).
    async fn wait_span(&self, trace_id: &str) -> Span {
        wait_until(format!("the span of trace {trace_id}"), async || {
            let spans = self.spans();
            match spans.iter().find(|s| hex(&s.trace_id) == trace_id) {
                Some(s) => Ok(s.clone()),
                None => Err(format!("spans {spans:?}")),
            }
        })
        .await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

fn text(v: &str) -> Option<AnyValue> {
    Some(AnyValue::StringValue(v.to_string()))
}

/// (trace id, parent id, flags) of a `traceparent` value.
fn parts(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

async fn gateway(collector: SocketAddr, up: &Upstream, extra: &str) -> Gateway {
    let yaml = server_block("") + &CONFIG.replace("tracing:\n", &format!("tracing:\n{extra}"));
    Gateway::start(
        &yaml,
        &[
            ("COLLECTOR", collector.to_string()),
            ("UP", up.host_port()),
            ("DEAD", dead_addr().await.to_string()),
        ],
    )
    .await
}

/// The `traceparent` the echo upstream received for this request.
async fn upstream_traceparent(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> String {
    let r = get_with(&gw.url(path), headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_span_is_a_child_of_the_client_and_the_parent_of_the_upstream() {
    let collector = Collector::start().await;
    let up = Upstream::echo("u").await;
    let gw = gateway(collector.addr, &up, "").await;

    let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let sent = upstream_traceparent(
        &gw,
        "/api/users/7?token=secret",
        &[("traceparent", client), ("x-request-id", "req-1")],
    )
    .await;
    let (trace, upstream_parent, flags) = parts(&sent);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(flags, "01");

    let span = collector.wait_span(&trace).await;
    assert_eq!(
        hex(&span.parent_span_id),
        "00f067aa0ba902b7",
        "the client's span"
    );
    assert_eq!(hex(&span.span_id), upstream_parent, "the upstream's parent");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(span.name, "GET api");
    assert_eq!(span.flags & 0xff, 1);
    assert_eq!(span.flags & 0x300, 0x300, "the parent is remote");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        now - span.start_time_unix_nano < 60_000_000_000,
        "a current time"
    );
    assert_eq!(attr(&span, "http.request.method"), text("GET"));
    assert_eq!(attr(&span, "url.path"), text("/api/users/7"));
    assert_eq!(attr(&span, "url.scheme"), text("http"));
    assert_eq!(attr(&span, "http.route"), text("api"));
    assert_eq!(
        attr(&span, "http.response.status_code"),
        Some(AnyValue::IntValue(200))
    );
    assert_eq!(attr(&span, "server.address"), text("127.0.0.1"));
    assert_eq!(attr(&span, "client.address"), text("127.0.0.1"));
    assert_eq!(attr(&span, "tollgate.upstream"), text("app"));
    assert_eq!(attr(&span, "tollgate.target"), text(&up.host_port()));
    assert_eq!(attr(&span, "tollgate.request_id"), text("req-1"));
    assert_eq!(attr(&span, "error.type"), None);
    assert!(span.status.is_none(), "a 200 leaves the status unset");
    for a in &span.attributes {
        let v = format!("{:?}", a.value);
        assert!(!v.contains("secret"), "the query never goes out: {a:?}");
    }

    wait_metric(&gw, "tollgate_trace_spans_exported_total", 1.0).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn without_a_traceparent_the_gateway_starts_a_sampled_trace() {
    let collector = Collector::start().await;
    let up = Upstream::echo("u").await;
    let gw = gateway(collector.addr, &up, "").await;

    let sent = upstream_traceparent(&gw, "/api/x", &[]).await;
    let (trace, upstream_parent, flags) = parts(&sent);
    assert_eq!(
        flags, "01",
        "the gateway records it, so it says so downstream"
    );
    let span = collector.wait_span(&trace).await;
    assert!(span.parent_span_id.is_empty(), "a root span");
    assert_eq!(hex(&span.span_id), upstream_parent);
    assert_eq!(span.flags & 0x300, 0x100, "no remote parent");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_clients_sampling_decision_is_respected() {
    let collector = Collector::start().await;
    let up = Upstream::echo("u").await;
    // New traces are never sampled here; a client's sampled trace still is.
    let gw = gateway(collector.addr, &up, "  sample_ratio: 0\n").await;

    let unsampled = "00-11111111111111111111111111111111-00f067aa0ba902b7-00";
    let sent = upstream_traceparent(&gw, "/api/a", &[("traceparent", unsampled)]).await;
    assert_eq!(parts(&sent).2, "00");
    let root = upstream_traceparent(&gw, "/api/b", &[]).await;
    assert_eq!(
        parts(&root).2,
        "00",
        "sample_ratio 0: new traces are not sampled"
    );
    let sampled = "00-22222222222222222222222222222222-00f067aa0ba902b7-01";
    upstream_traceparent(&gw, "/api/c", &[("traceparent", sampled)]).await;

    // Spans are exported in the order requests end: once the last one is
    // there, the first two would have been too.
    collector
        .wait_span("22222222222222222222222222222222")
        .await;
    let traces: Vec<String> = collector.spans().iter().map(|s| hex(&s.trace_id)).collect();
    assert_eq!(traces, vec!["22222222222222222222222222222222".to_string()]);
    gw.shutdown().await;
}

#[tokio::test]
async fn failures_are_error_spans() {
    let collector = Collector::start().await;
    let up = Upstream::echo("u").await;
    let gw = gateway(collector.addr, &up, "").await;

    let dead = "00-33333333333333333333333333333333-00f067aa0ba902b7-01";
    let r = get_with(&gw.url("/broken/x"), &[("traceparent", dead)]).await;
    r.assert_error(502, "upstream_unavailable");
    let span = collector
        .wait_span("33333333333333333333333333333333")
        .await;
    assert_eq!(span.name, "GET broken");
    assert_eq!(
        attr(&span, "http.response.status_code"),
        Some(AnyValue::IntValue(502))
    );
    assert_eq!(attr(&span, "error.type"), text("upstream_unavailable"));
    assert_eq!(attr(&span, "tollgate.upstream"), text("bad"));
    let status = span.status.expect("an error status");
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "upstream_unavailable");

    // No route: still a span (no http.route); a 4xx is not a span error.
    let missing = "00-44444444444444444444444444444444-00f067aa0ba902b7-01";
    let r = get_with(&gw.url("/nowhere"), &[("traceparent", missing)]).await;
    r.assert_error(404, "no_route");
    let span = collector
        .wait_span("44444444444444444444444444444444")
        .await;
    assert_eq!(span.name, "GET");
    assert_eq!(attr(&span, "http.route"), None);
    assert_eq!(attr(&span, "error.type"), text("no_route"));
    assert!(span.status.is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn requests_do_not_notice_a_dead_or_failing_collector() {
    let up = Upstream::echo("u").await;
    let gw = gateway(dead_addr().await, &up, "").await;
    for _ in 0..20 {
        upstream_traceparent(&gw, "/api/x", &[]).await;
    }
    wait_metric(
        &gw,
        r#"tollgate_trace_spans_dropped_total{reason="export_failed"}"#,
        20.0,
    )
    .await;
    gw.shutdown().await;

    // A collector that refuses the export (an HTTP 503; over gRPC, a
    // `grpc-status` other than 0): counted the same way.
    for (extra, grpc) in [("", false), ("  otlp_protocol: grpc\n", true)] {
        let collector = Collector::start().await;
        collector.status.store(503, Ordering::SeqCst);
        let gw = gateway(collector.addr, &up, extra).await;
        upstream_traceparent(&gw, "/api/x", &[]).await;
        wait_metric(
            &gw,
            r#"tollgate_trace_spans_dropped_total{reason="export_failed"}"#,
            1.0,
        )
        .await;
        let m = gw.metrics().await;
        assert_eq!(metric(&m, "tollgate_trace_spans_exported_total"), Some(0.0));
        assert!(collector.exports().iter().all(|(g, _)| *g == grpc));
        gw.shutdown().await;
    }
}

async fn wait_metric(gw: &Gateway, series: &str, at_least: f64) {
    wait_until(format!("{series} to reach {at_least}"), async || {
        let m = gw.metrics().await;
        if metric(&m, series).is_some_and(|v| v >= at_least) {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await;
}

#[tokio::test]
async fn a_reload_moves_or_stops_the_export() {
    let (first, second) = (Collector::start().await, Collector::start().await);
    let up = Upstream::echo("u").await;
    let gw = gateway(first.addr, &up, "").await;
    let vars = |c: &Collector| {
        [
            ("COLLECTOR", c.addr.to_string()),
            ("UP", up.host_port()),
            ("DEAD", up.host_port()),
        ]
    };
    let t1 = parts(&upstream_traceparent(&gw, "/api/1", &[]).await).0;
    first.wait_span(&t1).await;

    let yaml = server_block("") + CONFIG;
    gw.reload(&yaml, &vars(&second)).await;
    let t2 = parts(&upstream_traceparent(&gw, "/api/2", &[]).await).0;
    second.wait_span(&t2).await;
    assert!(first.spans().iter().all(|s| hex(&s.trace_id) != t2));

    // Without the section nothing is recorded: new traces go out unsampled,
    // as in a build without the feature.
    let plain =
        server_block("") + &CONFIG.replace("tracing:\n  otlp_endpoint: http://${COLLECTOR}\n", "");
    gw.reload(&plain, &vars(&second)).await;
    let sent = upstream_traceparent(&gw, "/api/3", &[]).await;
    assert_eq!(parts(&sent).2, "00");
    gw.shutdown().await;
}

/// OTLP/gRPC: the spans arrive through `TraceService/Export` over HTTP/2
/// (h2c), with the configured headers; `/config` shows those as redacted.
#[tokio::test]
async fn grpc_export_carries_the_spans_and_the_configured_headers() {
    let collector = Collector::start().await;
    let up = Upstream::echo("u").await;
    let extra =
        "  otlp_protocol: grpc\n  otlp_headers: { authorization: Bearer s3cret, x-tenant: blue }\n";
    let gw = gateway(collector.addr, &up, extra).await;
    let (trace, _, _) = parts(&upstream_traceparent(&gw, "/api/g", &[]).await);
    let span = collector.wait_span(&trace).await;
    assert_eq!(attr(&span, "url.path"), text("/api/g"));
    let exports = collector.exports();
    assert!(!exports.is_empty());
    for (grpc, headers) in &exports {
        assert!(grpc, "every export is a gRPC call: {headers:?}");
        assert_eq!(headers["authorization"], "Bearer s3cret");
        assert_eq!(headers["x-tenant"], "blue");
    }
    wait_metric(&gw, "tollgate_trace_spans_exported_total", 1.0).await;

    let config = get(&gw.admin_url("/config")).await.unwrap().text();
    assert!(
        !config.contains("s3cret") && !config.contains("blue"),
        "{config}"
    );
    assert!(config.contains("<redacted>"), "{config}");
    gw.shutdown().await;
}

/// Spans still batched when the gateway stops are sent before it exits
/// (a batch otherwise waits up to a second for company).
#[tokio::test]
async fn shutdown_sends_the_spans_still_queued() {
    for extra in ["", "  otlp_protocol: grpc\n"] {
        let collector = Collector::start().await;
        let up = Upstream::echo("u").await;
        let gw = gateway(collector.addr, &up, extra).await;
        let mut traces = Vec::new();
        for i in 0..3 {
            traces.push(parts(&upstream_traceparent(&gw, &format!("/api/{i}"), &[]).await).0);
        }
        gw.shutdown().await;
        let sent: Vec<String> = collector.spans().iter().map(|s| hex(&s.trace_id)).collect();
        for t in &traces {
            assert!(
                sent.contains(t),
                "{extra:?}: trace {t} not exported by shutdown: {sent:?}"
            );
        }
    }
}

#[test]
fn the_endpoint_and_ratio_are_validated() {
    let load = |tracing: &str| {
        tollgate::config::load_str(&format!("tracing: {tracing}\nroutes: []\n"), "t.yaml")
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert_eq!(load("{ otlp_endpoint: 'http://collector:4318' }"), Ok(()));
    assert_eq!(
        load(
            "{ otlp_endpoint: 'http://collector:4317', otlp_protocol: grpc, otlp_headers: { authorization: Bearer x } }"
        ),
        Ok(())
    );
    assert_eq!(
        load("{ otlp_endpoint: 'https://otlp.example.com/otlp', sample_ratio: 0.25 }"),
        Ok(())
    );
    for (bad, want) in [
        ("{ otlp_endpoint: 'collector:4318' }", "http:// or https://"),
        (
            "{ otlp_endpoint: 'grpc://collector:4317' }",
            "http:// or https://",
        ),
        ("{ otlp_endpoint: 'not a url' }", "is not a URL"),
        ("{ otlp_endpoint: 'http://u:p@collector' }", "credentials"),
        (
            "{ otlp_endpoint: 'http://c', sample_ratio: 1.5 }",
            "between 0 and 1",
        ),
        ("{ sample_ratio: 0.5 }", "needs tracing.otlp_endpoint"),
        ("{ otlp_protocol: grpc }", "needs tracing.otlp_endpoint"),
        (
            "{ otlp_endpoint: 'http://c', otlp_protocol: gprc }",
            "did you mean `grpc`",
        ),
        (
            "{ otlp_endpoint: 'http://c', otlp_headers: { 'bad name': x } }",
            "is not a header name",
        ),
        (
            "{ otlp_endpoint: 'http://c', otlp_headers: { content-type: x } }",
            "set by the exporter itself",
        ),
        (
            "{ otlp_endpoint: 'http://c', otlp_headers: { authorization: \"a\\nb\" } }",
            "not a valid header value",
        ),
    ] {
        let err = load(bad).unwrap_err();
        assert!(err.contains("tracing."), "{bad}: {err}");
        assert!(err.contains(want), "{bad}: {err}");
        assert!(!err.contains(":p@"), "no password in messages: {err}");
    }
}
