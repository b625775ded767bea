//! The request pipeline, in phase order: admit (load shedding, header size) ->
//! route -> direct answer or forward (body limit, bulkhead, pick a target, send
//! with a timeout) -> response edits. Every failure is a `GatewayError`, turned
//! into a response in one place (`GatewayError::to_response`).

pub mod aside;
pub mod body;
pub mod cache;
pub mod compress;
pub mod grpc;
pub mod idempotent;
pub mod mirror;
pub mod record;
pub mod websocket;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant as TokioInstant;

use crate::body::{BodyDigest, BodyError, RequestBody};
use crate::config::schema::PathNormalization;
use crate::conn::ConnInfo;
use crate::error::GatewayError;
use crate::headers::{self, X_REQUEST_ID};
use crate::metrics::Outcome;
use crate::normalize::host::request_host;
use crate::normalize::path::normalize;
use crate::policy::{Decision, PolicyContext};
use crate::router::RequestView;
use crate::shared::Shared;
use crate::snapshot::{Action, BodyLimits, Route, Snapshot};
use crate::steering::{Origin, Redirect};
use crate::upstream::Upstream;
use crate::upstream::balancer::PickContext;
use crate::upstream::outlier::Seen;
use crate::upstream::pool::{BodyErrorKind, SendError, UpstreamBody};
use crate::upstream::retry::{MAX_REPLAY_BODY, RetryReason};
use body::ResponseBody;
use idempotent::Admit;
use record::RequestRecord;

/// What the gateway knows about one request as it moves through the phases.
/// Policies read and add to it; when the response ends it becomes the access-log
/// line and the metrics (`RequestRecord`).
pub struct Exchange {
    pub request_id: HeaderValue,
    /// What the route's policies read and fill in.
    pub policy: PolicyContext,
    /// The Host the client asked for (HTTP/2: the authority).
    pub host: Option<HeaderValue>,
    pub route: Option<usize>,
    /// The target once one was chosen.
    pub target: Option<crate::upstream::Picked>,
    pub upstream_ms: Option<f64>,
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub retries: u32,
    /// The verified client certificate's subject on an mTLS connection.
    pub client_cert_subject: Option<Arc<str>>,
    pub holds_global_slot: bool,
    /// The upstream whose bulkhead slot this request holds.
    pub upstream_slot: Option<usize>,
    /// A gRPC call: gateway errors are answered gRPC-shaped.
    pub grpc: bool,
    /// A WebSocket handshake in progress (`websocket::detect`).
    pub upgrade: Option<websocket::Upgrade>,
    /// How the route's cache served the request (`cache:` routes only).
    pub cache: Option<crate::cache::route::Outcome>,
    /// This hop's trace context when the request is recorded as a span.
    #[cfg(feature = "otel")]
    pub trace: Option<headers::TraceContext>,
}

/// Whether hyper waits for the next request head as soon as this one is
/// answered: HTTP/1.1, no body left to read, and no `Connection: close`.
fn reusable(req: &Request<Incoming>) -> bool {
    req.version() == http::Version::HTTP_11
        && http_body::Body::is_end_stream(req.body())
        && !req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
}

/// Serves one client request. Never fails: errors become their answer (docs/reference/errors.md).
pub async fn handle(
    mut req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    conn.request_started(req.version(), reusable(&req));
    shared.metrics.in_flight.inc();
    let snapshot = shared.snapshot.load_full();
    // Before anything reads the target: from here on the request has one host
    // and one canonical path (the record logs that path).
    let target = read_target(&mut req, &snapshot.path_rules);

    let ex = Exchange {
        request_id: request_id(req.headers()),
        policy: PolicyContext::new(headers::client_ip(
            conn.peer.ip(),
            req.headers(),
            &snapshot.trusted_proxies,
        )),
        host: target.as_ref().ok().and_then(|t| t.host.clone()),
        route: None,
        target: None,
        upstream_slot: None,
        upstream_ms: None,
        bytes_in: None,
        retries: 0,
        client_cert_subject: conn.client_cert_subject.clone(),
        holds_global_slot: false,
        grpc: grpc::is_grpc(req.headers()),
        upgrade: None,
        cache: None,
        #[cfg(feature = "otel")]
        trace: snapshot.spans.as_ref().and_then(|s| s.begin(req.headers())),
    };
    // The record exists from the start: if the client goes away before the
    // answer (the future is dropped), dropping it still releases every slot
    // and logs the request as 499.
    let mut record = Box::new(RequestRecord::new(
        shared,
        conn,
        snapshot,
        started,
        req.method().clone(),
        req.uri().clone(),
        ex,
    ));
    let rec = &mut *record;
    let result = match target {
        Ok(target) => {
            serve(
                req,
                target,
                &rec.snapshot,
                &rec.shared,
                &rec.conn,
                &mut rec.ex,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let (mut resp, error) = match result {
        Ok(resp) => (resp, None),
        Err(e) => {
            let id = rec.ex.request_id.to_str().unwrap_or_default();
            let resp = if rec.ex.grpc {
                e.to_grpc_response()
            } else {
                e.to_response(id)
            };
            let resp = resp.map(ResponseBody::full);
            (resp, Some(e))
        }
    };
    let headers = resp.headers_mut();
    // Policy headers replace what the upstream said; a repeated one keeps all
    // its values (drain yields the name once, then `None` for the extra values).
    let mut last = None;
    for (name, value) in rec.ex.policy.response_headers.drain() {
        match name {
            // Vary lists what the answer depends on: add to the upstream's;
            // a cookie of the gateway's (a split's sticky key) joins the upstream's.
            Some(name) if name == header::VARY || name == header::SET_COOKIE => {
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
    headers.insert(X_REQUEST_ID.clone(), rec.ex.request_id.clone());
    if headers.contains_key(header::CONNECTION) && rec.ex.upgrade.is_none() {
        rec.conn.not_reusable();
    }
    // A gRPC error answer is HTTP 200: logs and metrics keep the status the
    // gateway meant (e.g. 429), so dashboards read the same for every client.
    let status = error.as_ref().map_or(resp.status(), GatewayError::status);
    rec.answered(status, error.as_ref().map(GatewayError::code));
    match rec.ex.upgrade.take() {
        Some(up) => websocket::answered(up, &mut resp, record, error.is_some()),
        None => resp.body_mut().set_record(record),
    }
    resp
}

/// The request target as the edge settled it (`read_target`).
struct Target {
    /// The one host the request is for (`normalize::host`).
    host: Option<HeaderValue>,
    /// The path routes match on, when it differs from the forwarded one (path
    /// parameters cut off).
    match_path: Option<String>,
}

/// Checks the host and puts the path in its canonical spelling, rewriting the
/// request's URI when the spelling changed (the query is kept as it came).
fn read_target<B>(req: &mut Request<B>, rules: &PathNormalization) -> Result<Target, GatewayError> {
    let host = request_host(req).map_err(|e| GatewayError::BadRequest(e.message()))?;
    let normal =
        normalize(req.uri().path(), rules).map_err(|e| GatewayError::BadRequest(e.message()))?;
    let match_path = normal.match_path;
    if let Cow::Owned(path) = normal.path {
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(
            PathAndQuery::try_from(pq)
                .map_err(|_| GatewayError::BadRequest("the request path is not a valid URI"))?,
        );
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|_| GatewayError::BadRequest("the request path is not a valid URI"))?;
    }
    Ok(Target { host, match_path })
}

/// The request path after the edge settled the target, phase by phase: admit,
/// route, the route's policies, a direct answer or a claimed upstream, the
/// upstream request, forward, answer. Each phase either hands the request on or
/// ends it with an answer or a `GatewayError`.
async fn serve(
    mut req: Request<Incoming>,
    target: Target,
    snap: &Arc<Snapshot>,
    shared: &Shared,
    conn: &ConnInfo,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, GatewayError> {
    admit(&req, snap, shared, conn, ex)?;
    if !snap.https_redirects.is_empty() && snap.https_redirects.contains(&conn.listener) {
        return https_redirect(&req, conn, ex);
    }
    ex.upgrade = websocket::detect(&mut req)?;
    let route = route(&req, &target, snap, ex)?;
    let (mut parts, body) = req.into_parts();
    // Only a route whose authorization service wants the body reads it here.
    let body = match route.policies.body_for_authorization {
        None => ClientBody::Wire(body),
        Some(most) => read_for_authorization(route, body, most, ex).await?,
    };
    if let Decision::Respond(resp) = apply_policies(route, &mut parts, ex).await? {
        return Ok(resp.map(ResponseBody::full));
    }
    let upstream_idx = match &route.action {
        Action::Respond {
            status,
            headers,
            body,
        } => return Ok(respond_directly(route, *status, headers, body)),
        Action::Redirect(redirect) => return redirect_answer(redirect, route, &parts, conn, ex),
        Action::Proxy { upstream } => *upstream,
        Action::Split(split) => {
            let choice = split.pick(&parts.headers);
            if let Some(cookie) = choice.set_cookie {
                ex.policy
                    .response_headers
                    .append(header::SET_COOKIE, cookie);
            }
            split.sides()[choice.side].upstream
        }
    };
    // A cached route answers from its cache before anything of the upstream
    // is claimed.
    let plan = match &route.cache {
        None => None,
        Some(rc) => {
            let credentials =
                parts.headers.contains_key(header::AUTHORIZATION) || route.policies.authenticates();
            let wait = route
                .timeout
                .unwrap_or(snap.upstreams[upstream_idx].request_timeout);
            let host = ex.host.clone();
            let host = host.as_ref().and_then(|h| h.to_str().ok());
            match cache::lookup(rc, &mut parts, host, credentials, wait, ex).await {
                cache::Lookup::Answer(resp) => return Ok(resp),
                cache::Lookup::Stale(resp, refresh) => {
                    if let Some(refresh) = refresh {
                        let pq = upstream_request(&mut parts, route, conn, ex)?;
                        let idx = route_index(ex);
                        cache::spawn_refresh(snap, idx, upstream_idx, &parts, pq, refresh, ex);
                    }
                    return Ok(resp);
                }
                cache::Lookup::Forward(plan) => Some(plan),
            }
        }
    };
    // The key is read and taken before anything of the upstream is claimed:
    // a replay or a refusal costs the upstream nothing.
    let keyed = match &route.idempotency {
        None => None,
        Some(idem) => match idempotent::admit(idem, &parts, ex).await? {
            Admit::Plain => None,
            Admit::Keyed(keyed) => Some(keyed),
            Admit::Replay(answer, digest) => {
                return idempotent::replay(idem, answer, digest, body, &route.body_limits, ex)
                    .await;
            }
        },
    };
    // A keyed answer is stored as the upstream made it, so a replay is the
    // same bytes whatever the retry accepts: the gateway does not compress it.
    let offered = route.compress.as_ref().filter(|_| keyed.is_none());
    let compression = compress::Negotiated::new(offered, &parts);
    let digest = keyed.as_ref().map(|k| k.digest.clone());
    let answered = async {
        let declared = declared_length(&parts.headers);
        let limits = &route.body_limits;
        let upstream = claim_upstream(snap, upstream_idx, limits, declared, ex)?;
        let path_and_query = upstream_request(&mut parts, route, conn, ex)?;
        // A mirrored request's body is read first (when small enough), so that
        // the copy can carry it.
        let mirror = route
            .mirror
            .as_ref()
            .filter(|m| ex.upgrade.is_none() && m.sampled())
            .and_then(|m| mirror::admit(m, body.is_empty(), declared));
        let whole = mirror.is_some();
        let body = outgoing_body(
            body,
            upstream,
            &parts,
            limits,
            declared,
            digest.as_ref(),
            whole,
            ex,
        )
        .await?;
        if let (Some(slot), Outgoing::Replayable(bytes)) = (mirror, &body) {
            let copy = mirror::Copy::new(&parts, &path_and_query, bytes.clone(), ex);
            tokio::spawn(mirror::send(Arc::clone(snap), route_index(ex), copy, slot));
        }
        // A gRPC client's deadline caps the route's timeout (and still goes upstream).
        let grpc_deadline = ex.grpc.then(|| grpc::timeout(&parts.headers)).flatten();
        let attempt = Attempt {
            upstream_idx,
            path_and_query,
            timeout: route
                .timeout
                .unwrap_or(upstream.request_timeout)
                .min(grpc_deadline.unwrap_or(Duration::MAX)),
            body_limit: limits.max_bytes,
        };
        let resp = forward(parts, body, upstream, attempt, ex).await?;
        answer(resp, route, upstream, ex)
    }
    .await;
    let answered = match (plan, &route.cache) {
        (Some(plan), Some(rc)) => cache::finish(rc, plan, answered, ex)?,
        _ => answered?,
    };
    match (answered, keyed) {
        (Answered::Switched(resp) | Answered::Cached(resp), _) => Ok(resp),
        (Answered::Upstream(resp), Some(keyed)) => Ok(idempotent::keep(resp, keyed)),
        (Answered::Upstream(resp), None) => Ok(compression.respond(resp)),
    }
}

/// The upstream's answer after `answer`: a switched upgrade's answer, one
/// the cache made or is storing, or still the upstream's body (to compress,
/// or to keep for replay).
enum Answered {
    Switched(Response<ResponseBody>),
    Cached(Response<ResponseBody>),
    Upstream(Response<UpstreamBody>),
}

/// Admission: refuse what must not cost anything more: an ambiguous framing,
/// load over `max_concurrent_requests`, a head over `max_header_bytes`.
fn admit(
    req: &Request<Incoming>,
    snap: &Snapshot,
    shared: &Shared,
    conn: &ConnInfo,
    ex: &mut Exchange,
) -> Result<(), GatewayError> {
    if conn.take_ambiguous_length() && req.headers().contains_key(header::TRANSFER_ENCODING) {
        return Err(GatewayError::BadRequest(
            "the request has both Content-Length and Transfer-Encoding",
        ));
    }
    let limits = &snap.limits;
    if limits.max_concurrent_requests > 0 {
        let prev = shared.in_flight.fetch_add(1, Ordering::Relaxed);
        ex.holds_global_slot = true;
        if prev >= limits.max_concurrent_requests {
            return Err(GatewayError::Overloaded);
        }
    }
    if header_bytes(req) > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    Ok(())
}

/// Routing: the first route that matches the normalised target.
fn route<'s>(
    req: &Request<Incoming>,
    target: &Target,
    snap: &'s Snapshot,
    ex: &mut Exchange,
) -> Result<&'s Route, GatewayError> {
    let view = RequestView {
        method: req.method(),
        host: ex.host.as_ref().and_then(|h| h.to_str().ok()),
        path: target.match_path.as_deref().unwrap_or(req.uri().path()),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let idx = snap.router.find(&view).ok_or(GatewayError::NoRoute)?;
    ex.route = Some(idx);
    Ok(&snap.routes[idx])
}

/// The client's request body: still to be read, or read already for an
/// external authorization service (`send_body`).
pub enum ClientBody {
    Wire(Incoming),
    Read(Bytes),
}

impl ClientBody {
    fn is_empty(&self) -> bool {
        match self {
            ClientBody::Wire(b) => hyper::body::Body::is_end_stream(b),
            ClientBody::Read(b) => b.is_empty(),
        }
    }
}

/// The body of a route whose external authorization service wants it, read
/// first and whole: at most `send_body` bytes (413 beyond), within the
/// route's body limit and stall timeout.
async fn read_for_authorization(
    route: &Route,
    body: Incoming,
    most: u64,
    ex: &mut Exchange,
) -> Result<ClientBody, GatewayError> {
    if ex.upgrade.is_some() {
        return Ok(ClientBody::Wire(body));
    }
    if hyper::body::Body::is_end_stream(&body) {
        return Ok(ClientBody::Read(Bytes::new()));
    }
    let limit = most.min(route.body_limits.max_bytes);
    let received = Arc::new(AtomicU64::new(0));
    ex.bytes_in = Some(received.clone());
    let body = RequestBody::new(body, limit, route.body_limits.read_timeout, received);
    let bytes = read_body(body, limit).await?;
    ex.policy.body = Some(bytes.clone());
    Ok(ClientBody::Read(bytes))
}

/// The route's client policies: IP rules, CORS, auth, claims, rate limits.
async fn apply_policies(
    route: &Route,
    parts: &mut http::request::Parts,
    ex: &mut Exchange,
) -> Result<Decision, GatewayError> {
    if route.policies.is_empty() {
        return Ok(Decision::Continue);
    }
    route.policies.check(parts, &mut ex.policy).await
}

/// The index of the route `route` chose.
fn route_index(ex: &Exchange) -> usize {
    ex.route.unwrap_or_default()
}

/// A `redirect:` route's answer: the status, the `Location` built from the
/// request, the route's response header edits, no body.
fn redirect_answer(
    redirect: &Redirect,
    route: &Route,
    parts: &http::request::Parts,
    conn: &ConnInfo,
    ex: &Exchange,
) -> Result<Response<ResponseBody>, GatewayError> {
    let from = origin(parts.uri.path(), parts.uri.query(), conn, ex);
    let location = redirect.location(&from).ok_or(NO_HOST)?;
    let mut resp = redirected(redirect.status, location);
    route.response_headers.apply(resp.headers_mut());
    Ok(resp)
}

/// The answer of a `redirect_to_https` listener, before any route.
fn https_redirect(
    req: &Request<Incoming>,
    conn: &ConnInfo,
    ex: &Exchange,
) -> Result<Response<ResponseBody>, GatewayError> {
    let from = origin(req.uri().path(), req.uri().query(), conn, ex);
    let (status, location) = crate::steering::to_https(req.method(), &from).ok_or(NO_HOST)?;
    Ok(redirected(status, location))
}

const NO_HOST: GatewayError = GatewayError::BadRequest("the request has no host to redirect to");

fn redirected(status: http::StatusCode, location: HeaderValue) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::new()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

/// What a redirect keeps of the request.
fn origin<'a>(
    path: &'a str,
    query: Option<&'a str>,
    conn: &ConnInfo,
    ex: &'a Exchange,
) -> Origin<'a> {
    Origin {
        scheme: if conn.tls { "https" } else { "http" },
        host: ex.host.as_ref().and_then(|h| h.to_str().ok()),
        path,
        query,
    }
}

/// A `respond:` route's answer.
fn respond_directly(
    route: &Route,
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &Bytes,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body.clone()));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers.clone();
    route.response_headers.apply(resp.headers_mut());
    resp
}

/// The request's declared body length, when it has a valid one.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Before the upstream is contacted: a declared body over the limit is refused
/// (a chunked one is counted as it flows, in `RequestBody`), then a slot of the
/// upstream's bulkhead is taken.
fn claim_upstream<'s>(
    snap: &'s Snapshot,
    upstream_idx: usize,
    limits: &BodyLimits,
    declared: Option<u64>,
    ex: &mut Exchange,
) -> Result<&'s Upstream, GatewayError> {
    let limit = limits.max_bytes;
    if declared.is_some_and(|len| len > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let upstream = &snap.upstreams[upstream_idx];
    if !upstream.try_acquire() {
        return Err(GatewayError::UpstreamOverloaded {
            upstream: upstream.name.to_string(),
        });
    }
    if upstream.max_concurrent > 0 {
        ex.upstream_slot = Some(upstream_idx);
    }
    Ok(upstream)
}

/// The upstream request, built in place from the client's: the rewritten path
/// (returned; the target's authority goes into the URI per attempt, in
/// `forward`), hop-by-hop headers out, forwarding and trace headers in, the
/// route's header edits, the Host. Inlined: it is on every proxied request,
/// and its second caller (a cache refresh) must not make it a call.
#[inline(always)]
fn upstream_request(
    parts: &mut http::request::Parts,
    route: &Route,
    conn: &ConnInfo,
    ex: &Exchange,
) -> Result<PathAndQuery, GatewayError> {
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
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    if let Some(up) = &ex.upgrade {
        up.prepare_request(h);
    }
    // The gateway already answered `100 Continue` to the client by reading its body.
    h.remove(header::EXPECT);
    let proto = if conn.tls { "https" } else { "http" };
    headers::set_forwarded(h, &conn.peer_value, proto, ex.host.as_ref());
    // A recorded request sends its own span id, the one its span is exported with.
    #[cfg(feature = "otel")]
    match &ex.trace {
        Some(ctx) => headers::set_traceparent(h, ctx),
        None => {
            headers::propagate_trace(h);
        }
    }
    #[cfg(not(feature = "otel"))]
    headers::propagate_trace(h);
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
    Ok(path_and_query)
}

/// The body as it goes upstream. A small body is read once and kept, so that a
/// retry can send it again; anything else streams (and is then never retried).
/// A keyed request's body is hashed on the way (`digest`). `whole`: a body
/// of declared length is read in full whatever the retries (a mirrored
/// request's, for its copy; `mirror::admit` checked its size).
#[allow(clippy::too_many_arguments)]
async fn outgoing_body(
    body: ClientBody,
    upstream: &Upstream,
    parts: &http::request::Parts,
    limits: &BodyLimits,
    declared: Option<u64>,
    digest: Option<&Arc<BodyDigest>>,
    whole: bool,
    ex: &mut Exchange,
) -> Result<Outgoing, GatewayError> {
    let body = match body {
        ClientBody::Wire(body) => body,
        // Read for the authorization service: sent as it was read.
        ClientBody::Read(bytes) => {
            if let Some(d) = digest {
                d.update(&bytes);
                d.finish();
            }
            return Ok(Outgoing::Replayable(bytes));
        }
    };
    // An upgrade request has no body: what follows its head is the tunnel's.
    if ex.upgrade.is_some() || hyper::body::Body::is_end_stream(&body) {
        if let Some(d) = digest {
            d.finish();
        }
        return Ok(Outgoing::Replayable(Bytes::new()));
    }
    // Any request may be retried where nothing reached the upstream.
    let retryable = upstream
        .retry
        .as_ref()
        .is_some_and(|r| r.may_retry(&parts.method));
    let received = Arc::new(AtomicU64::new(0));
    ex.bytes_in = Some(received.clone());
    let body = RequestBody::new(body, limits.max_bytes, limits.read_timeout, received);
    let replayable = retryable && declared.is_some_and(|len| len <= MAX_REPLAY_BODY);
    if replayable || (whole && declared.is_some()) {
        let bytes = read_body(body, limits.max_bytes).await?;
        if let Some(d) = digest {
            d.update(&bytes);
            d.finish();
        }
        Ok(Outgoing::Replayable(bytes))
    } else {
        Ok(Outgoing::Streamed(match digest {
            Some(d) => body.with_digest(d.clone()),
            None => body,
        }))
    }
}

/// The upstream's answer on its way to the client: a switched upgrade becomes
/// the tunnel's answer; anything else loses its hop-by-hop headers and takes
/// the route's header edits (then `serve` compresses or keeps it).
fn answer(
    mut resp: Response<UpstreamBody>,
    route: &Route,
    upstream: &Upstream,
    ex: &mut Exchange,
) -> Result<Answered, GatewayError> {
    let switched = match ex.upgrade.as_mut() {
        Some(up) => up.switch(&mut resp, &upstream.name)?,
        None => false,
    };
    headers::strip_hop_by_hop(resp.headers_mut());
    route.response_headers.apply(resp.headers_mut());
    if switched && let Some(up) = &ex.upgrade {
        return Ok(Answered::Switched(up.answer(resp)));
    }
    Ok(Answered::Upstream(resp))
}

/// The request body as it goes upstream.
enum Outgoing {
    /// Empty, or read in full: every attempt can send it.
    Replayable(Bytes),
    /// Streams from the client: only one attempt can send it.
    Streamed(RequestBody),
}

/// What `forward` needs besides the request.
struct Attempt {
    upstream_idx: usize,
    path_and_query: PathAndQuery,
    /// The whole exchange's deadline: every attempt and backoff fit in it.
    timeout: Duration,
    body_limit: u64,
}

/// Reads a small request body in full (within the body limit and stall timeout).
async fn read_body(body: RequestBody, limit: u64) -> Result<Bytes, GatewayError> {
    match http_body_util::BodyExt::collect(body).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(body_error(e, limit)),
    }
}

/// The answer to a client body that failed while the gateway read it itself.
fn body_error(e: BodyError, limit: u64) -> GatewayError {
    match e {
        BodyError::TooLarge(_) => GatewayError::PayloadTooLarge { limit },
        BodyError::Timeout => GatewayError::BodyTimeout,
        BodyError::Client(_) => GatewayError::BadRequest("the request body was cut short"),
    }
}

/// Sends the request to a target of `upstream` and returns the response head,
/// retrying on another target when the upstream's `retries` allow it: only
/// replayable bodies and the configured methods and outcomes, within the retry
/// budget, with backoff, and all attempts within the one deadline. Each
/// attempt's outcome feeds the target's circuit breaker and metrics.
async fn forward(
    mut parts: http::request::Parts,
    body: Outgoing,
    upstream: &Upstream,
    at: Attempt,
    ex: &mut Exchange,
) -> Result<Response<UpstreamBody>, GatewayError> {
    let started = TokioInstant::now();
    let deadline = started + at.timeout;
    let (retry, mut streamed, replay) = match body {
        Outgoing::Replayable(bytes) => (
            upstream
                .retry
                .as_ref()
                .filter(|r| r.may_retry(&parts.method)),
            None,
            bytes,
        ),
        Outgoing::Streamed(b) => (None, Some(b), Bytes::new()),
    };
    // A method `retries.methods` lacks is retried only where nothing reached
    // the upstream: the connection was never made, or an HTTP/2 stream was
    // refused.
    let unsent_only = retry.is_some_and(|r| !r.allows_method(&parts.method));
    let max_attempts = 1 + retry.map_or(0, |r| r.attempts);
    if upstream.retry.is_some() {
        upstream.budget.record_request(started);
    }
    // One set for every attempt: indices stay meaningful while DNS moves on.
    let set = upstream.current();
    let mut tried: Vec<usize> = Vec::new();
    let mut upstream_time = Duration::ZERO;
    let mut attempt = 1;
    loop {
        let now = TokioInstant::now();
        let pick = PickContext {
            client_ip: ex.policy.client_ip,
            headers: &parts.headers,
        };
        let idx = upstream.pick(&set, &pick, &tried, now)?;
        ex.target = Some(crate::upstream::Picked {
            upstream: at.upstream_idx,
            target: idx,
            set: set.keep(),
        });
        let target = &set.targets[idx];

        let more = attempt < max_attempts;
        let body = match streamed.take() {
            Some(b) => b,
            None if replay.is_empty() => RequestBody::empty(),
            None => RequestBody::buffered(replay.clone()),
        };
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = Uri::from(at.path_and_query.clone());
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = if more {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };

        // With retries, one attempt may not take the whole deadline: it is
        // bounded by the upstream's own request timeout too.
        let remaining = deadline.saturating_duration_since(now);
        let limit = if retry.is_some() {
            remaining.min(upstream.request_timeout)
        } else {
            remaining
        };
        let sent = TokioInstant::now();
        let result = tokio::time::timeout(limit, upstream.client.send(&target.endpoint, req)).await;
        let took = sent.elapsed();
        upstream_time += took;
        ex.upstream_ms = Some(upstream_time.as_secs_f64() * 1000.0);
        target.metrics.duration.observe(took.as_secs_f64());

        let done = TokioInstant::now();
        let (outcome, reason) = match result {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                upstream.record_answer(&set, idx, status, resp.headers(), done);
                (Ok(resp), RetryReason::Status(status))
            }
            Ok(Err(SendError::ClientBody(kind))) => {
                upstream.record_attempt(&set, idx, None, Seen::Other, done);
                return Err(client_body_error(kind, at.body_limit));
            }
            Ok(Err(e)) => {
                let (reason, seen) = match &e {
                    SendError::Connect(_) => (RetryReason::ConnectError, Seen::ConnectError),
                    _ => (RetryReason::Reset, Seen::Other),
                };
                upstream.record_attempt(&set, idx, Some(true), seen, done);
                (
                    Err(send_error(e, &upstream.name, target, parts.uri.path())),
                    reason,
                )
            }
            Err(_elapsed) => {
                target.metrics.record(Outcome::Timeout);
                upstream.record_attempt(&set, idx, Some(true), Seen::Other, done);
                let err = GatewayError::UpstreamTimeout {
                    upstream: upstream.name.to_string(),
                    timeout_ms: duration_ms(limit),
                };
                (Err(err), RetryReason::Timeout)
            }
        };

        let Some(policy) = retry.filter(|_| more) else {
            return outcome;
        };
        if unsent_only && reason != RetryReason::ConnectError {
            return outcome;
        }
        let Some(counter) = policy.counter(reason) else {
            return outcome;
        };
        let pause = policy.backoff(attempt);
        if done + pause >= deadline || !upstream.budget.try_retry(policy.budget_percent, done) {
            return outcome;
        }
        counter.inc();
        ex.retries += 1;
        tracing::debug!(upstream = %upstream.name, target = %target.label, ?reason, attempt, "retrying");
        drop(outcome);
        // The next attempt may go to another target: this one is no longer in flight.
        target.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        ex.target = None;
        tried.push(idx);
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

fn client_body_error(kind: BodyErrorKind, body_limit: u64) -> GatewayError {
    match kind {
        BodyErrorKind::TooLarge => GatewayError::PayloadTooLarge { limit: body_limit },
        BodyErrorKind::Timeout => GatewayError::BodyTimeout,
        BodyErrorKind::Aborted => GatewayError::BadRequest("the request body was cut short"),
    }
}

/// Classifies and logs a failed attempt (the client-body case is handled apart).
fn send_error(
    e: SendError,
    upstream: &str,
    target: &crate::upstream::Target,
    path: &str,
) -> GatewayError {
    match e {
        SendError::Connect(reason) => {
            target.metrics.record(Outcome::ConnectError);
            tracing::warn!(upstream, target = %target.label, path, %reason, "upstream connect failed");
        }
        SendError::Reset(reason) => {
            target.metrics.record(Outcome::Reset);
            tracing::warn!(upstream, target = %target.label, path, %reason, "upstream connection failed");
        }
        SendError::ClientBody(_) => {}
    }
    GatewayError::UpstreamUnavailable {
        upstream: upstream.to_string(),
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Size of the request head as the client sent it (close enough: the request
/// line plus `name: value\r\n` per header). The target counts as written:
/// an absolute-form target with its scheme and authority, an authority-form
/// one (CONNECT) as the authority.
pub fn header_bytes<B>(req: &Request<B>) -> u64 {
    let uri = req.uri();
    let path = uri.path_and_query().map(|p| p.as_str().len());
    let target = match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(a)) => scheme.len() + 3 + a.as_str().len() + path.unwrap_or(0),
        (None, Some(a)) => a.as_str().len(),
        _ => path.unwrap_or(1),
    };
    let line = req.method().as_str().len() + target + 12;
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
    headers::fresh_request_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The request_head fuzz target: an absolute-form or authority-form target
    // counted as its path only, so `max_header_bytes` let it through longer.
    #[test]
    fn header_bytes_count_the_target_as_written() {
        for (method, target) in [
            ("GET", "/a?b"),
            ("OPTIONS", "*"),
            ("GET", "http://a.test:8080/x?y"),
            ("CONNECT", "a.test:443"),
        ] {
            let mut req = Request::builder()
                .method(method)
                .uri(target)
                .body(())
                .unwrap();
            req.headers_mut()
                .insert("x-a", HeaderValue::from_static("1"));
            let want = format!("{method} {target} HTTP/1.1\r\nx-a: 1\r\n").len() as u64;
            assert_eq!(header_bytes(&req), want, "{method} {target}");
        }
    }
}
