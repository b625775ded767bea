//! The request pipeline, in phase order: admit (load shedding, header size) ->
//! route -> direct answer or forward (body limit, bulkhead, pick a target, send
//! with a timeout) -> response edits. Every failure is a `GatewayError`, turned
//! into a response in one place (`GatewayError::to_response`).

pub mod body;
pub mod headers;
pub mod record;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::Shared;
use crate::error::GatewayError;
use crate::metrics::Outcome;
use crate::policy::Decision;
use crate::router::RequestView;
use crate::server::ConnInfo;
use crate::snapshot::{Action, Snapshot};
use crate::upstream::balancer::PickContext;
use crate::upstream::pool::{BodyErrorKind, SendError};
use body::{RequestBody, ResponseBody};
use headers::X_REQUEST_ID;
use record::RequestRecord;

/// What the gateway knows about one request as it moves through the phases.
/// Policies read and add to it; when the response ends it becomes the access-log
/// line and the metrics (`RequestRecord`).
pub struct Exchange {
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    /// The Host the client asked for (HTTP/2: the authority).
    pub host: Option<HeaderValue>,
    pub route: Option<usize>,
    /// (upstream index, target index) once a target was chosen.
    pub target: Option<(usize, usize)>,
    pub upstream_ms: Option<f64>,
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub retries: u32,
    /// Who the request was authenticated as: an API key id or a JWT subject.
    /// Safe to log; never the credential itself.
    pub consumer: Option<String>,
    /// The verified JWT claims, for `require_claims` and `jwt:<claim>` keys.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Headers every answer to this request carries, success or error (for
    /// example rate-limit or CORS headers added by policies).
    pub response_headers: HeaderMap,
    pub holds_global_slot: bool,
    pub holds_upstream_slot: bool,
}

/// Serves one client request. Never fails: errors become their SPEC §4 answer.
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    conn.request_started(req.version());
    shared.metrics.in_flight.inc();
    let snapshot = shared.snapshot.load_full();

    let mut ex = Exchange {
        request_id: request_id(req.headers()),
        client_ip: headers::client_ip(conn.peer.ip(), req.headers(), &snapshot.trusted_proxies),
        host: req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        }),
        route: None,
        target: None,
        upstream_ms: None,
        bytes_in: None,
        retries: 0,
        consumer: None,
        claims: None,
        response_headers: HeaderMap::new(),
        holds_global_slot: false,
        holds_upstream_slot: false,
    };
    let method = req.method().clone();
    let uri = req.uri().clone();

    let result = serve(req, &snapshot, &shared, &conn, &mut ex).await;
    let (mut resp, error) = match result {
        Ok(resp) => (resp, None),
        Err(e) => {
            let id = ex.request_id.to_str().unwrap_or_default();
            (e.to_response(id), Some(e.code()))
        }
    };
    let headers = resp.headers_mut();
    // Policy headers replace what the upstream said; a repeated one keeps all
    // its values (drain yields the name once, then `None` for the extra values).
    let mut last = None;
    for (name, value) in ex.response_headers.drain() {
        match name {
            // Vary lists what the answer depends on: add to the upstream's.
            Some(name) if name == header::VARY => {
                headers.append(name.clone(), value);
                last = Some(name);
            }
            Some(name) => {
                headers.insert(name.clone(), value);
                last = Some(name);
            }
            None => {
                if let Some(name) = &last {
                    headers.append(name.clone(), value);
                }
            }
        }
    }
    headers.insert(X_REQUEST_ID.clone(), ex.request_id.clone());

    let record = Box::new(RequestRecord {
        status: resp.status(),
        shared,
        conn,
        snapshot,
        started,
        ts: SystemTime::now() - started.elapsed(),
        method,
        uri,
        error,
        ex,
    });
    resp.body_mut().set_record(record);
    resp
}

async fn serve(
    req: Request<Incoming>,
    snap: &Snapshot,
    shared: &Shared,
    conn: &ConnInfo,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, GatewayError> {
    if conn.take_ambiguous_length() && req.headers().contains_key(header::TRANSFER_ENCODING) {
        return Err(GatewayError::BadRequest(
            "the request has both Content-Length and Transfer-Encoding",
        ));
    }
    // Admission: shed load before doing any work for the request.
    let limits = &snap.limits;
    if limits.max_concurrent_requests > 0 {
        let prev = shared.in_flight.fetch_add(1, Ordering::Relaxed);
        ex.holds_global_slot = true;
        if prev >= limits.max_concurrent_requests {
            return Err(GatewayError::Overloaded);
        }
    }
    if header_bytes(&req) > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }

    // Routing.
    let view = RequestView {
        method: req.method(),
        host: ex.host.as_ref().and_then(|h| h.to_str().ok()),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let route_idx = snap.router.find(&view).ok_or(GatewayError::NoRoute)?;
    ex.route = Some(route_idx);
    let route = &snap.routes[route_idx];
    let (mut parts, body) = req.into_parts();

    // Client policies: IP rules, CORS, auth, claims, rate limits.
    if !route.policies.is_empty() {
        match route.policies.check(&mut parts, ex).await? {
            Decision::Continue => {}
            Decision::Respond(resp) => return Ok(resp),
        }
    }

    let upstream_idx = match &route.action {
        Action::Respond {
            status,
            headers,
            body,
        } => {
            let mut resp = Response::new(ResponseBody::full(body.clone()));
            *resp.status_mut() = *status;
            *resp.headers_mut() = headers.clone();
            route.response_headers.apply(resp.headers_mut());
            return Ok(resp);
        }
        Action::Proxy { upstream } => *upstream,
    };

    // The body limit is checked before the upstream is contacted when the length
    // is declared; a chunked body is counted as it flows (RequestBody).
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body_bytes) {
        return Err(GatewayError::PayloadTooLarge {
            limit: limits.max_body_bytes,
        });
    }

    let upstream = &snap.upstreams[upstream_idx];
    if !upstream.try_acquire() {
        return Err(GatewayError::UpstreamOverloaded {
            upstream: upstream.name.to_string(),
        });
    }
    ex.holds_upstream_slot = upstream.max_concurrent > 0;
    let pick = PickContext {
        client_ip: ex.client_ip,
        headers: &parts.headers,
    };
    let target_idx = upstream
        .pick(&pick)
        .ok_or_else(|| GatewayError::NoHealthyUpstream {
            upstream: upstream.name.to_string(),
        })?;
    ex.target = Some((upstream_idx, target_idx));
    let target = &upstream.targets[target_idx];

    // Build the upstream request in place from the client's.
    let body = if hyper::body::Body::is_end_stream(&body) {
        RequestBody::empty()
    } else {
        let received = Arc::new(AtomicU64::new(0));
        ex.bytes_in = Some(received.clone());
        RequestBody::new(
            body,
            limits.max_body_bytes,
            limits.body_read_timeout,
            received,
        )
    };
    let path_and_query = match route.rewrite.path(parts.uri.path()) {
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        Some(path) => {
            let pq = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            PathAndQuery::try_from(pq)
                .map_err(|_| GatewayError::BadRequest("the rewritten path is not a valid URI"))?
        }
    };
    let mut uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(target.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| GatewayError::BadRequest("the request URI cannot be forwarded"))?;
    std::mem::swap(&mut parts.uri, &mut uri);
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    // The gateway already answered `100 Continue` to the client by reading its body.
    h.remove(header::EXPECT);
    headers::set_forwarded(h, conn.peer.ip(), "http", ex.host.as_ref());
    route.request_headers.apply(h);
    match (&route.rewrite.host, &ex.host) {
        (Some(rewritten), _) => {
            h.insert(header::HOST, rewritten.clone());
        }
        // HTTP/2 clients send the authority instead of a Host header.
        (None, Some(host)) if !h.contains_key(header::HOST) => {
            h.insert(header::HOST, host.clone());
        }
        _ => {}
    }
    h.insert(X_REQUEST_ID.clone(), ex.request_id.clone());

    let timeout = route.timeout.unwrap_or(upstream.request_timeout);
    let sent = Instant::now();
    let result = tokio::time::timeout(
        timeout,
        upstream.client.send(Request::from_parts(parts, body)),
    )
    .await;
    let upstream_time = sent.elapsed();
    ex.upstream_ms = Some(upstream_time.as_secs_f64() * 1000.0);
    target.metrics.duration.observe(upstream_time.as_secs_f64());

    let mut resp = match result {
        Ok(Ok(resp)) => {
            target.metrics.record(if resp.status().is_server_error() {
                Outcome::Http5xx
            } else {
                Outcome::Success
            });
            resp
        }
        Ok(Err(e)) => {
            return Err(send_error(
                e,
                &upstream.name,
                target,
                &uri,
                limits.max_body_bytes,
            ));
        }
        Err(_elapsed) => {
            target.metrics.record(Outcome::Timeout);
            return Err(GatewayError::UpstreamTimeout {
                upstream: upstream.name.to_string(),
                timeout_ms: duration_ms(timeout),
            });
        }
    };
    headers::strip_hop_by_hop(resp.headers_mut());
    route.response_headers.apply(resp.headers_mut());
    Ok(resp.map(ResponseBody::upstream))
}

fn send_error(
    e: SendError,
    upstream: &str,
    target: &crate::upstream::Target,
    uri: &Uri,
    body_limit: u64,
) -> GatewayError {
    let unavailable = || GatewayError::UpstreamUnavailable {
        upstream: upstream.to_string(),
    };
    match e {
        SendError::ClientBody(BodyErrorKind::TooLarge) => {
            GatewayError::PayloadTooLarge { limit: body_limit }
        }
        SendError::ClientBody(BodyErrorKind::Timeout) => GatewayError::BodyTimeout,
        SendError::ClientBody(BodyErrorKind::Aborted) => {
            GatewayError::BadRequest("the request body was cut short")
        }
        SendError::Connect(reason) => {
            target.metrics.record(Outcome::ConnectError);
            tracing::warn!(upstream, target = %target.label, path = uri.path(), %reason, "upstream connect failed");
            unavailable()
        }
        SendError::Reset(reason) => {
            target.metrics.record(Outcome::Reset);
            tracing::warn!(upstream, target = %target.label, path = uri.path(), %reason, "upstream connection failed");
            unavailable()
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Size of the request head as the client sent it (close enough: the request
/// line plus `name: value\r\n` per header).
fn header_bytes<B>(req: &Request<B>) -> u64 {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    (line + fields) as u64
}

/// The client's `X-Request-Id` when it is sane, else a fresh random one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 128
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (i * 4)) & 0xf) as usize];
    }
    // 32 hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}
