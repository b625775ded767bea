//! What the gateway remembers about one request until its response ends, and the
//! bookkeeping done at that end: metrics, the access log line, and the release of
//! the concurrency slots the request held.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use http::{Method, StatusCode, Uri};

use crate::Shared;
use crate::access_log::AccessLine;
use crate::server::ConnInfo;
use crate::snapshot::Snapshot;

pub struct RequestRecord {
    pub shared: Arc<Shared>,
    pub conn: Arc<ConnInfo>,
    pub snapshot: Option<Arc<Snapshot>>,
    pub started: Instant,
    pub ts: SystemTime,
    pub request_id: http::HeaderValue,
    pub client_ip: IpAddr,
    pub method: Method,
    pub host: Option<http::HeaderValue>,
    pub uri: Uri,
    pub route: Option<usize>,
    /// (upstream index, target index) once a target was chosen.
    pub target: Option<(usize, usize)>,
    pub status: StatusCode,
    pub upstream_ms: Option<f64>,
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub retries: u32,
    pub error: Option<&'static str>,
    /// Whether this request holds a slot of `server.limits.max_concurrent_requests`.
    pub holds_global_slot: bool,
    /// Whether this request holds a slot of its upstream's bulkhead.
    pub holds_upstream_slot: bool,
}

impl RequestRecord {
    /// Called once, when the response body is done or dropped.
    pub fn finish(self: Box<Self>, bytes_out: u64, complete: bool) {
        let elapsed = self.started.elapsed();
        let shared = &self.shared;
        shared.metrics.in_flight.dec();
        if self.holds_global_slot {
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        self.conn.request_done();

        let snap = self.snapshot.as_deref();
        let route = snap.zip(self.route).map(|(s, i)| &s.routes[i]);
        let status = self.status;
        match route {
            Some(r) => {
                r.metrics.count(&self.method, status);
                r.metrics.duration.observe(elapsed.as_secs_f64());
            }
            None => {
                if let Some(s) = snap {
                    s.unmatched.count(&self.method, status);
                    s.unmatched.duration.observe(elapsed.as_secs_f64());
                }
            }
        }
        let target = snap.zip(self.target).map(|(s, (u, t))| {
            let upstream = &s.upstreams[u];
            let target = &upstream.targets[t];
            target.in_flight.fetch_sub(1, Ordering::Relaxed);
            if self.holds_upstream_slot {
                upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            (&*upstream.name, &*target.label)
        });

        let error = match self.error {
            Some(e) => Some(e),
            None if !complete => Some("response_incomplete"),
            None => None,
        };
        let path = self.uri.path();
        shared.access_log.write(&AccessLine {
            ts: self.ts,
            request_id: self.request_id.to_str().unwrap_or("-"),
            listener: &self.conn.listener,
            client_ip: self.client_ip,
            method: self.method.as_str(),
            host: self.host.as_ref().and_then(|h| h.to_str().ok()),
            path,
            route: route.map(|r| &*r.name),
            upstream: target.map(|t| t.0),
            target: target.map(|t| t.1),
            status: status.as_u16(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_ms: self.upstream_ms,
            bytes_in: self
                .bytes_in
                .as_ref()
                .map_or(0, |b| b.load(Ordering::Relaxed)),
            bytes_out,
            retries: self.retries,
            error,
        });
    }
}
