//! OpenTelemetry span export (cargo feature `otel`, `tracing.otlp_endpoint`):
//! one SERVER span per sampled request, sent to an OTLP collector as protobuf,
//! over HTTP (`http/protobuf`, `POST /v1/traces`) or gRPC (`grpc`, the
//! `TraceService/Export` call over HTTP/2), with the configured headers.
//!
//! The request path only decides sampling and fills a `FinishedSpan` when the
//! request ends (`RequestRecord`'s `Drop`); that goes into a bounded queue with
//! `try_send` (a full queue drops and counts the span). A task on the Tokio
//! runtime drains the queue, encodes batches (`opentelemetry-proto` messages)
//! and sends them with the gateway's own hyper client. Export errors never
//! reach requests; they are logged at most once a minute. At shutdown, once
//! the last request is done, `flush` sends what is queued.
//!
//! The span id is the one the gateway sends upstream in `traceparent`, so the
//! upstream's span is a child of this one; an incoming `traceparent` is its
//! parent, and its sampled flag decides. New traces are sampled with
//! `tracing.sample_ratio`.
//!
//! The exporter lives in the `Snapshot`; `Carryover` hands the running one to
//! the next config version while its settings are unchanged. When the last
//! snapshot holding it goes, the queue closes, the task sends what is left and
//! ends.
//!
//! Why by hand on `opentelemetry-proto` rather than the OpenTelemetry SDK: the
//! request path here is a plain struct and a `try_send`; the SDK's span
//! builder costs more per request (`cargo bench --bench otel --features otel`
//! measures both; docs/performance.md has the figures).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::validate::tracing::{OTLP_PROTOCOLS, otlp_header};
use crate::headers::TraceContext;

/// Spans waiting for export; more are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per export request at most.
pub const MAX_BATCH: usize = 512;
/// A batch is sent when full or this long after its first span.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the spans still queued to be exported.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);
/// Export failures are logged at most this often (with a count).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);
const SERVICE_NAME: &str = "tollgate";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The export metrics (docs/reference/metrics.md; present in `otel` builds).
#[derive(Clone)]
pub struct SpanMetrics {
    pub exported: IntCounter,
    pub dropped_queue_full: IntCounter,
    pub dropped_export_failed: IntCounter,
}

impl SpanMetrics {
    pub fn register(registry: &Registry) -> Result<SpanMetrics, prometheus::Error> {
        let exported = IntCounter::new(
            "tollgate_trace_spans_exported_total",
            "Spans accepted by the OTLP collector.",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "tollgate_trace_spans_dropped_total",
                "Spans not exported: the export queue was full, or the collector \
                 could not be reached or refused them.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(exported.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(SpanMetrics {
            exported,
            dropped_queue_full: dropped.with_label_values(&["queue_full"]),
            dropped_export_failed: dropped.with_label_values(&["export_failed"]),
        })
    }
}

/// The gRPC method spans are exported with.
pub const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// How batches travel (`tracing.otlp_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`: `POST <endpoint>/v1/traces`, HTTP/1.1 or HTTP/2.
    HttpProtobuf,
    /// `grpc`: unary `TraceService/Export` over HTTP/2 (h2c on `http://`).
    Grpc,
}

impl Protocol {
    /// `tracing.otlp_protocol`, one of `OTLP_PROTOCOLS`.
    pub fn parse(name: Option<&str>) -> Option<Protocol> {
        match name {
            None | Some("http/protobuf") => Some(Protocol::HttpProtobuf),
            Some("grpc") => Some(Protocol::Grpc),
            Some(_) => None,
        }
    }
}

/// What an exporter is built from; a reload with equal settings keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// Where batches go (`.../v1/traces`, or the gRPC method's path).
    pub url: Uri,
    pub protocol: Protocol,
    /// `tracing.otlp_headers`, sent with every export.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub sample_ratio: f64,
}

impl ExportSettings {
    pub fn from_config(t: &crate::config::schema::Tracing) -> Result<Option<Self>, String> {
        let Some(endpoint) = &t.otlp_endpoint else {
            return Ok(None);
        };
        let protocol = Protocol::parse(t.otlp_protocol.as_deref())
            .ok_or_else(|| format!("expected one of {}", OTLP_PROTOCOLS.join(", ")))?;
        let headers = t
            .otlp_headers
            .iter()
            .map(|(name, value)| otlp_header(name, value))
            .collect::<Result<_, _>>()?;
        Ok(Some(ExportSettings {
            url: match protocol {
                Protocol::HttpProtobuf => traces_url(endpoint)?,
                Protocol::Grpc => grpc_url(endpoint)?,
            },
            protocol,
            headers,
            sample_ratio: t.sample_ratio.unwrap_or(1.0),
        }))
    }
}

/// The gRPC export URL for a configured endpoint: the method's path after
/// the endpoint's own path (usually none).
pub fn grpc_url(endpoint: &str) -> Result<Uri, String> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|e| format!("`{endpoint}` is not a URL: {e}"))?;
    let path = uri.path().trim_end_matches('/').to_string();
    if path.ends_with(GRPC_EXPORT_PATH) {
        return Ok(uri);
    }
    let mut parts = uri.into_parts();
    let pq = format!("{path}{GRPC_EXPORT_PATH}");
    parts.path_and_query = Some(pq.parse().map_err(|e| format!("bad path `{pq}`: {e}"))?);
    Uri::from_parts(parts).map_err(|e| e.to_string())
}

/// The OTLP/HTTP traces URL for a configured endpoint: `/v1/traces` is
/// appended to its path unless the path already ends with it.
pub fn traces_url(endpoint: &str) -> Result<Uri, String> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|e| format!("`{endpoint}` is not a URL: {e}"))?;
    let path = uri.path().trim_end_matches('/').to_string();
    if path.ends_with("/v1/traces") {
        return Ok(uri);
    }
    let mut parts = uri.into_parts();
    let query = parts
        .path_and_query
        .as_ref()
        .and_then(|pq| pq.query())
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let pq = format!("{path}/v1/traces{query}");
    parts.path_and_query = Some(pq.parse().map_err(|e| format!("bad path `{pq}`: {e}"))?);
    Uri::from_parts(parts).map_err(|e| e.to_string())
}

/// The running export pipeline of one config version (or several, while the
/// settings stay the same).
pub struct SpanExporter {
    pub settings: ExportSettings,
    queue: mpsc::Sender<FinishedSpan>,
    /// Asks the export task to send everything queued now, and answers when
    /// it has.
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    dropped: IntCounter,
}

impl SpanExporter {
    /// Starts the export task; needs a Tokio runtime.
    pub fn start(settings: ExportSettings, metrics: &SpanMetrics) -> Result<Arc<Self>, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "span export needs a Tokio runtime".to_string())?;
        let grpc = settings.protocol == Protocol::Grpc;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("cannot set up TLS for span export: {e}"))?
            .https_or_http();
        // gRPC needs HTTP/2 (ALPN h2 on https://, prior knowledge on http://).
        let https = if grpc {
            https.enable_http2().build()
        } else {
            https.enable_http1().build()
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .http2_only(grpc)
            .build(https);
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (flushes, flush_rx) = mpsc::channel(1);
        let export = Export {
            client,
            url: settings.url.clone(),
            protocol: settings.protocol,
            headers: settings.headers.clone(),
            metrics: metrics.clone(),
            failures: Failures::default(),
        };
        runtime.spawn(export.run(rx, flush_rx));
        Ok(Arc::new(SpanExporter {
            settings,
            queue,
            flushes,
            dropped: metrics.dropped_queue_full.clone(),
        }))
    }

    /// Sends every span queued so far; `false` if that took longer than
    /// `within` (what is left is lost when the process ends).
    pub async fn flush(&self, within: Duration) -> bool {
        let (done, sent) = oneshot::channel();
        let asked = async { self.flushes.send(done).await.is_ok() && sent.await.is_ok() };
        tokio::time::timeout(within, asked).await.unwrap_or(false)
    }

    /// This hop's trace context when the request is to be recorded: the
    /// client's sampled flag decides for its trace, `sample_ratio` for a new
    /// one. `None`: not recorded (the context is then propagated as usual).
    pub fn begin(&self, headers: &HeaderMap) -> Option<TraceContext> {
        let ratio = self.settings.sample_ratio;
        let root_flags = if ratio >= 1.0 || fastrand::f64() < ratio {
            *b"01"
        } else {
            *b"00"
        };
        let ctx = TraceContext::incoming(headers, root_flags);
        ctx.sampled().then_some(ctx)
    }

    /// Queues a finished span; never waits (a full queue drops it).
    pub fn export(&self, span: FinishedSpan) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// One request's span as the request path hands it over: plain data, turned
/// into protobuf by the export task.
pub struct FinishedSpan {
    pub ctx: TraceContext,
    pub start: SystemTime,
    pub duration: Duration,
    pub method: Method,
    pub uri: Uri,
    pub tls: bool,
    pub host: Option<HeaderValue>,
    pub client_ip: IpAddr,
    pub listener: Arc<str>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub request_id: HeaderValue,
    pub retries: u32,
}

type ExportClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Export {
    client: ExportClient,
    url: Uri,
    protocol: Protocol,
    headers: Vec<(HeaderName, HeaderValue)>,
    metrics: SpanMetrics,
    failures: Failures,
}

impl Export {
    /// Batches spans until the queue closes (the exporter was dropped), then
    /// sends what is left. A flush request sends the batch at once, and
    /// everything queued behind it.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<FinishedSpan>,
        mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let mut asked = None;
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 {
                    return;
                },
                Some(done) = flushes.recv() => asked = Some(done),
            }
            let flush_at = Instant::now() + FLUSH_INTERVAL;
            let mut open = true;
            while asked.is_none() && batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                tokio::select! {
                    got = tokio::time::timeout_at(flush_at, rx.recv_many(&mut batch, room)) => {
                        match got {
                            Ok(0) => {
                                open = false;
                                break;
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    Some(done) = flushes.recv() => asked = Some(done),
                }
            }
            if !batch.is_empty() {
                self.send(&batch).await;
                batch.clear();
            }
            if let Some(done) = asked {
                self.send_queued(&mut rx, &mut batch).await;
                let _ = done.send(());
            }
            if !open {
                return;
            }
        }
    }

    /// Sends, in batches, every span in the queue right now.
    async fn send_queued(
        &mut self,
        rx: &mut mpsc::Receiver<FinishedSpan>,
        batch: &mut Vec<FinishedSpan>,
    ) {
        loop {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
            self.send(batch).await;
            batch.clear();
        }
    }

    /// The export request for one encoded batch.
    fn request(&self, message: Vec<u8>) -> Result<Request<Full<Bytes>>, http::Error> {
        let mut req = Request::post(self.url.clone()).header(
            header::USER_AGENT,
            concat!("tollgate/", env!("CARGO_PKG_VERSION")),
        );
        let body = match self.protocol {
            Protocol::HttpProtobuf => {
                req = req.header(header::CONTENT_TYPE, "application/x-protobuf");
                Bytes::from(message)
            }
            Protocol::Grpc => {
                req = req
                    .header(header::CONTENT_TYPE, "application/grpc")
                    .header(header::TE, "trailers");
                grpc_frame(&message)
            }
        };
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        req.body(Full::new(body))
    }

    async fn send(&mut self, batch: &[FinishedSpan]) {
        let req = self.request(encode(batch));
        let result = match req {
            Ok(req) => tokio::time::timeout(EXPORT_TIMEOUT, self.post(req))
                .await
                .unwrap_or_else(|_| Err("timed out".to_string())),
            Err(e) => Err(e.to_string()),
        };
        let n = batch.len() as u64;
        match result {
            Ok(()) => self.metrics.exported.inc_by(n),
            Err(reason) => {
                self.metrics.dropped_export_failed.inc_by(n);
                self.failures.note(&self.url, &reason, n);
            }
        }
    }

    async fn post(&self, req: Request<Full<Bytes>>) -> Result<(), String> {
        let resp = self.client.request(req).await.map_err(|e| {
            // The connect error's cause says more than "client error (Connect)".
            match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        })?;
        let status = resp.status();
        // A gRPC error may come in the head alone (trailers-only).
        let head_status = resp.headers().get("grpc-status").cloned();
        let head_message = resp.headers().get("grpc-message").cloned();
        // Read the (small) answer so the connection can be reused.
        let answer = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .ok();
        if !status.is_success() {
            return Err(format!("the collector answered {status}"));
        }
        if self.protocol == Protocol::HttpProtobuf {
            return Ok(());
        }
        let trailers = answer.as_ref().and_then(|a| a.trailers());
        let field = |name: &str| trailers.and_then(|t| t.get(name)).cloned();
        match head_status.or_else(|| field("grpc-status")) {
            Some(code) if code == "0" => Ok(()),
            Some(code) => {
                let message = head_message.or_else(|| field("grpc-message"));
                let message = message.as_ref().and_then(|m| m.to_str().ok()).unwrap_or("");
                Err(format!(
                    "the collector answered grpc-status {}: {message}",
                    String::from_utf8_lossy(code.as_bytes())
                ))
            }
            None => Err("the collector's answer has no grpc-status".to_string()),
        }
    }
}

/// A gRPC message frame: not compressed, the length, the message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

/// Rate-limited logging of export failures.
#[derive(Default)]
struct Failures {
    last_logged: Option<Instant>,
    /// Spans lost since the last log line.
    since: u64,
}

impl Failures {
    fn note(&mut self, url: &Uri, reason: &str, spans: u64) {
        self.since += spans;
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < ERROR_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            endpoint = %url,
            error = %reason,
            spans_dropped = self.since,
            "span export failed (logged at most once a minute)"
        );
        self.last_logged = Some(now);
        self.since = 0;
    }
}

/// A batch as an OTLP `ExportTraceServiceRequest`, protobuf-encoded.
pub fn encode(batch: &[FinishedSpan]) -> Vec<u8> {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", string(SERVICE_NAME)),
                    kv("service.version", string(VERSION)),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: SERVICE_NAME.to_string(),
                    version: VERSION.to_string(),
                    ..Default::default()
                }),
                spans: batch.iter().map(to_proto).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    request.encode_to_vec()
}

/// W3C trace flags, and whether the parent is remote (OTLP `SpanFlags`).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

fn to_proto(s: &FinishedSpan) -> Span {
    let start = unix_nanos(s.start);
    let route = s.route.as_deref();
    let name = match route {
        Some(r) => format!("{} {r}", s.method),
        None => s.method.to_string(),
    };
    let mut attributes = Vec::with_capacity(16);
    attributes.push(kv("http.request.method", string(s.method.as_str())));
    // Never the query: it may carry a key or token (as in the access log).
    attributes.push(kv("url.path", string(s.uri.path())));
    attributes.push(kv(
        "url.scheme",
        string(if s.tls { "https" } else { "http" }),
    ));
    if let Some(r) = route {
        attributes.push(kv("http.route", string(r)));
    }
    attributes.push(kv("http.response.status_code", int(i64::from(s.status))));
    if let Some((host, port)) = s
        .host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(split_host)
    {
        attributes.push(kv("server.address", string(host)));
        if let Some(port) = port {
            attributes.push(kv("server.port", int(i64::from(port))));
        }
    }
    attributes.push(kv("client.address", string(&s.client_ip.to_string())));
    attributes.push(kv("tollgate.listener", string(&s.listener)));
    if let Some(u) = &s.upstream {
        attributes.push(kv("tollgate.upstream", string(u)));
    }
    if let Some(t) = &s.target {
        attributes.push(kv("tollgate.target", string(t)));
    }
    if let Ok(id) = s.request_id.to_str() {
        attributes.push(kv("tollgate.request_id", string(id)));
    }
    if s.retries > 0 {
        attributes.push(kv("tollgate.retries", int(i64::from(s.retries))));
    }
    if let Some(e) = s.error {
        attributes.push(kv("error.type", string(e)));
    }
    // Semantic conventions for server spans: 5xx is an error, 4xx is not.
    let status = (s.status >= 500).then(|| Status {
        message: s.error.unwrap_or_default().to_string(),
        code: status::StatusCode::Error as i32,
    });
    let flags = u32::from(hex_byte(s.ctx.flags)) & 0xff;
    Span {
        trace_id: unhex(&s.ctx.trace_id),
        span_id: unhex(&s.ctx.span_id),
        parent_span_id: s.ctx.parent_id.map(|p| unhex(&p)).unwrap_or_default(),
        flags: flags
            | HAS_IS_REMOTE
            | if s.ctx.parent_id.is_some() {
                IS_REMOTE
            } else {
                0
            },
        name,
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start
            .saturating_add(u64::try_from(s.duration.as_nanos()).unwrap_or(u64::MAX)),
        attributes,
        status,
        ..Default::default()
    }
}

/// `host[:port]` (or `[v6]:port`) -> (host, port).
fn split_host(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
        return (h, None);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (h, None),
        },
        _ => (h, None),
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

fn hex_byte(pair: [u8; 2]) -> u8 {
    hex_val(pair[0]) << 4 | hex_val(pair[1])
}

fn unhex(hex: &[u8]) -> Vec<u8> {
    hex.chunks_exact(2)
        .map(|p| hex_byte([p[0], p[1]]))
        .collect()
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn string(s: &str) -> any_value::Value {
    any_value::Value::StringValue(s.to_string())
}

fn int(i: i64) -> any_value::Value {
    any_value::Value::IntValue(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_once() {
        for (endpoint, want) in [
            ("http://c:4318", "http://c:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("https://c/otlp", "https://c/otlp/v1/traces"),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
            ("http://c:4318/x?k=v", "http://c:4318/x/v1/traces?k=v"),
        ] {
            assert_eq!(
                traces_url(endpoint).unwrap().to_string(),
                want,
                "{endpoint}"
            );
        }
    }

    #[test]
    fn hosts_split_into_address_and_port() {
        assert_eq!(split_host("api.example.com"), ("api.example.com", None));
        assert_eq!(
            split_host("api.example.com:8443"),
            ("api.example.com", Some(8443))
        );
        assert_eq!(split_host("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host("[::1]"), ("::1", None));
        assert_eq!(split_host("a:b"), ("a:b", None));
    }

    #[test]
    fn a_span_encodes_with_ids_times_and_attributes() {
        let ctx = TraceContext {
            trace_id: *b"4bf92f3577b34da6a3ce929d0e0e4736",
            span_id: *b"00f067aa0ba902b7",
            parent_id: Some(*b"b7ad6b7169203331"),
            flags: *b"01",
        };
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let span = FinishedSpan {
            ctx,
            start,
            duration: Duration::from_millis(12),
            method: Method::POST,
            uri: "/api/x?y=1".parse().unwrap(),
            tls: false,
            host: Some(HeaderValue::from_static("api.example.com:8080")),
            client_ip: "10.1.2.3".parse().unwrap(),
            listener: "http".into(),
            route: Some("api".into()),
            upstream: Some("backend".into()),
            target: Some("127.0.0.1:9".into()),
            status: 502,
            error: Some("upstream_unavailable"),
            request_id: HeaderValue::from_static("abc"),
            retries: 1,
        };
        let bytes = encode(&[span]);
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &req.resource_spans[0];
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.trace_id, unhex(b"4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(s.trace_id[0], 0x4b);
        assert_eq!(s.span_id.len(), 8);
        assert_eq!(s.parent_span_id, unhex(b"b7ad6b7169203331"));
        assert_eq!(s.flags, 0x301);
        assert_eq!(s.name, "POST api");
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 12_000_000);
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_000_000_000);
        let status = s.status.as_ref().unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        let attr = |k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        let s_ = |v: &str| Some(any_value::Value::StringValue(v.into()));
        assert_eq!(attr("http.request.method"), s_("POST"));
        assert_eq!(attr("url.path"), s_("/api/x"));
        assert_eq!(attr("url.query"), None);
        assert_eq!(attr("http.route"), s_("api"));
        assert_eq!(
            attr("http.response.status_code"),
            Some(any_value::Value::IntValue(502))
        );
        assert_eq!(attr("server.address"), s_("api.example.com"));
        assert_eq!(attr("server.port"), Some(any_value::Value::IntValue(8080)));
        assert_eq!(attr("client.address"), s_("10.1.2.3"));
        assert_eq!(attr("tollgate.upstream"), s_("backend"));
        assert_eq!(attr("error.type"), s_("upstream_unavailable"));
        let resource = rs.resource.as_ref().unwrap();
        assert!(resource.attributes.iter().any(|a| a.key == "service.name"
            && a.value.as_ref().and_then(|v| v.value.clone()) == s_("tollgate")));
    }
}
