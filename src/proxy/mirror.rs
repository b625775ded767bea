//! Mirroring: the copy of a request that goes to a route's shadow upstream,
//! in a task of its own. The client's request never waits for it and never
//! sees its outcome; the outcome is counted in
//! `tollgate_mirror_requests_total{route,result}`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};
use tokio::time::Instant;

use super::Exchange;
use crate::body::RequestBody;
use crate::metrics::Outcome;
use crate::snapshot::Snapshot;
use crate::steering::{MirrorPolicy, MirrorSlot, shadow_host};
use crate::upstream::balancer::PickContext;
use crate::upstream::outlier::Seen;
use crate::upstream::{Target, Upstream};

/// Whether a sampled request can be mirrored: its body is empty or of a
/// declared length within `max_body`, and fewer than `max_in_flight` copies
/// are out. Counts the refusals.
pub fn admit(m: &MirrorPolicy, empty: bool, declared: Option<u64>) -> Option<MirrorSlot> {
    let fits = empty || declared.is_some_and(|len| len <= m.max_body);
    if !fits {
        m.metrics.too_large.inc();
        return None;
    }
    m.enter()
}

/// The copy: the upstream request as the route made it, with the shadow Host.
pub struct Copy {
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: Bytes,
    client_ip: IpAddr,
}

impl Copy {
    pub fn new(
        parts: &http::request::Parts,
        path_and_query: &PathAndQuery,
        body: Bytes,
        ex: &Exchange,
    ) -> Copy {
        let mut headers = parts.headers.clone();
        if let Some(host) = headers
            .get(header::HOST)
            .and_then(|h| shadow_host(h.as_bytes()))
        {
            headers.insert(header::HOST, host);
        }
        Copy {
            method: parts.method.clone(),
            path_and_query: path_and_query.clone(),
            headers,
            body,
            client_ip: ex.policy.client_ip,
        }
    }
}

/// What became of a copy.
enum Sent {
    Answered(u16),
    Failed,
}

/// Sends the copy to the mirror upstream of `snap.routes[route]`, reads the
/// answer to its end and drops it. Never retried; bounded by the mirror
/// upstream's request timeout.
pub async fn send(snap: Arc<Snapshot>, route: usize, copy: Copy, slot: MirrorSlot) {
    let _slot = slot;
    let Some(m) = snap.routes.get(route).and_then(|r| r.mirror.as_ref()) else {
        return;
    };
    let up = &snap.upstreams[m.upstream];
    match tokio::time::timeout(up.request_timeout, exchange(up, copy)).await {
        Ok(Sent::Answered(status)) if status >= 500 => m.metrics.http_5xx.inc(),
        Ok(Sent::Answered(_)) => m.metrics.ok.inc(),
        Ok(Sent::Failed) => m.metrics.error.inc(),
        Err(_elapsed) => m.metrics.timeout.inc(),
    }
}

/// A target's in-flight count, given back however the copy ends (also when
/// its timeout drops it).
struct InFlight<'a>(&'a Target);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A bulkhead slot of the mirror upstream.
struct Bulkhead<'a>(&'a Upstream);

impl Drop for Bulkhead<'_> {
    fn drop(&mut self) {
        if self.0.max_concurrent > 0 {
            self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn exchange(up: &Upstream, copy: Copy) -> Sent {
    if !up.try_acquire() {
        return Sent::Failed;
    }
    let _bulkhead = Bulkhead(up);
    let ctx = PickContext {
        client_ip: copy.client_ip,
        headers: &copy.headers,
    };
    let set = up.current();
    let Ok(idx) = up.pick(&set, &ctx, &[], Instant::now()) else {
        return Sent::Failed;
    };
    let target = &set.targets[idx];
    let _in_flight = InFlight(target);
    let body = if copy.body.is_empty() {
        RequestBody::empty()
    } else {
        RequestBody::buffered(copy.body)
    };
    let mut req = Request::new(body);
    *req.method_mut() = copy.method;
    *req.uri_mut() = Uri::from(copy.path_and_query);
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = copy.headers;
    let started = Instant::now();
    let result = up.client.send(&target.endpoint, req).await;
    let done = Instant::now();
    target
        .metrics
        .duration
        .observe(done.duration_since(started).as_secs_f64());
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            up.record_answer(&set, idx, status, resp.headers(), done);
            let mut body = resp.into_body();
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                if frame.is_err() {
                    break;
                }
            }
            Sent::Answered(status)
        }
        Err(e) => {
            let (outcome, seen) = match e {
                crate::upstream::pool::SendError::Connect(_) => {
                    (Outcome::ConnectError, Seen::ConnectError)
                }
                _ => (Outcome::Reset, Seen::Other),
            };
            target.metrics.record(outcome);
            up.record_attempt(&set, idx, Some(true), seen, done);
            Sent::Failed
        }
    }
}
