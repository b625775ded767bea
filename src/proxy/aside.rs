//! Requests the gateway sends on its own, outside any client's exchange: a
//! mirror's copy and a cache's background refresh. One attempt, no retry;
//! the upstream's bulkhead, balancer, circuit breaker and target metrics see
//! it like any other request. The caller bounds it with a timeout.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use http::header::HeaderMap;
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::metrics::Outcome;
use crate::upstream::balancer::PickContext;
use crate::upstream::outlier::Seen;
use crate::upstream::pool::SendError;
use crate::upstream::{Target, Upstream};

/// The request, as the route made it for the upstream.
pub struct Aside {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// For balancers that hash on it.
    pub client_ip: IpAddr,
}

/// What became of it.
pub enum Sent {
    /// The upstream answered. `body`: the whole body when it was kept and
    /// fit in the caller's limit.
    Answered {
        head: http::response::Parts,
        body: Option<Bytes>,
    },
    /// Not sent (bulkhead full, no target) or the connection failed.
    Failed,
}

/// A target's in-flight count, given back however the request ends (also
/// when the caller's timeout drops it).
struct InFlight<'a>(&'a Target);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A bulkhead slot of the upstream.
struct Bulkhead<'a>(&'a Upstream);

impl Drop for Bulkhead<'_> {
    fn drop(&mut self) {
        if self.0.max_concurrent > 0 {
            self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Sends `aside` to a target of `up` and reads the answer to its end,
/// keeping at most `keep` bytes of body (0: none, the body is only drained).
pub async fn send(up: &Upstream, aside: Aside, keep: u64) -> Sent {
    if !up.try_acquire() {
        return Sent::Failed;
    }
    let _bulkhead = Bulkhead(up);
    let ctx = PickContext {
        client_ip: aside.client_ip,
        headers: &aside.headers,
    };
    let set = up.current();
    let Ok(idx) = up.pick(&set, &ctx, &[], Instant::now()) else {
        return Sent::Failed;
    };
    let target = &set.targets[idx];
    let _in_flight = InFlight(target);
    let body = if aside.body.is_empty() {
        RequestBody::empty()
    } else {
        RequestBody::buffered(aside.body)
    };
    let mut req = Request::new(body);
    *req.method_mut() = aside.method;
    *req.uri_mut() = Uri::from(aside.path_and_query);
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = aside.headers;
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
            let (head, mut body) = resp.into_parts();
            let mut kept = (keep > 0).then(BytesMut::new);
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                let Ok(frame) = frame else {
                    kept = None;
                    break;
                };
                if let (Some(buf), Some(data)) = (kept.as_mut(), frame.data_ref()) {
                    if (buf.len() + data.len()) as u64 > keep {
                        // Too large to keep: the rest is not worth reading.
                        kept = None;
                        break;
                    }
                    buf.extend_from_slice(data);
                }
            }
            Sent::Answered {
                head,
                body: kept.map(BytesMut::freeze),
            }
        }
        Err(e) => {
            let (outcome, seen) = match e {
                SendError::Connect(_) => (Outcome::ConnectError, Seen::ConnectError),
                _ => (Outcome::Reset, Seen::Other),
            };
            target.metrics.record(outcome);
            up.record_attempt(&set, idx, Some(true), seen, done);
            Sent::Failed
        }
    }
}
