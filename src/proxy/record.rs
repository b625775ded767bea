//! What the gateway remembers about one request until its response ends, and the
//! bookkeeping done at that end: metrics, the access log line, and the release of
//! the concurrency slots the request held.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use http::{Method, StatusCode, Uri};

use super::Exchange;
use crate::access_log::AccessLine;
use crate::conn::ConnInfo;
use crate::shared::Shared;
use crate::snapshot::Snapshot;

pub struct RequestRecord {
    pub shared: Arc<Shared>,
    pub conn: Arc<ConnInfo>,
    /// The config version the request started on, kept until it ends.
    pub snapshot: Arc<Snapshot>,
    started: Instant,
    ts: SystemTime,
    method: Method,
    uri: Uri,
    status: StatusCode,
    error: Option<&'static str>,
    pub ex: Exchange,
    bytes_out: u64,
    complete: bool,
    /// Set when the exchange became a tunnel: the latency metric is the
    /// handshake's, while the access log covers the tunnel's whole life.
    handshake: Option<Duration>,
}

/// nginx's code for a request whose client left before the answer.
const CLIENT_CLOSED: u16 = 499;

impl RequestRecord {
    pub fn new(
        shared: Arc<Shared>,
        conn: Arc<ConnInfo>,
        snapshot: Arc<Snapshot>,
        started: Instant,
        method: Method,
        uri: Uri,
        ex: Exchange,
    ) -> Self {
        RequestRecord {
            shared,
            conn,
            snapshot,
            started,
            ts: SystemTime::now(),
            method,
            uri,
            status: StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST),
            error: Some("client_closed_request"),
            ex,
            bytes_out: 0,
            complete: false,
            handshake: None,
        }
    }

    /// The answer the client is about to receive.
    pub fn answered(&mut self, status: StatusCode, error: Option<&'static str>) {
        self.status = status;
        self.error = error;
    }

    /// Hands the request's span to the exporter (when it was sampled).
    #[cfg(feature = "otel")]
    fn export_span(
        &self,
        exporter: &crate::otel::SpanExporter,
        elapsed: std::time::Duration,
        error: Option<&'static str>,
    ) {
        let Some(ctx) = self.ex.trace else { return };
        let snap = &*self.snapshot;
        let ex = &self.ex;
        let target = ex
            .target
            .as_ref()
            .and_then(|p| p.target(&snap.upstreams[p.upstream]));
        exporter.export(crate::otel::FinishedSpan {
            ctx,
            start: self.ts,
            duration: elapsed,
            method: self.method.clone(),
            uri: self.uri.clone(),
            tls: self.conn.tls,
            host: ex.host.clone(),
            client_ip: ex.policy.client_ip,
            listener: self.conn.listener.clone(),
            route: ex.route.map(|i| snap.routes[i].name.clone()),
            upstream: ex
                .target
                .as_ref()
                .map(|p| snap.upstreams[p.upstream].name.clone()),
            target: target.map(|t| t.label.clone()),
            status: self.status.as_u16(),
            error,
            request_id: ex.request_id.clone(),
            retries: ex.retries,
        });
    }

    /// The response body ended (`complete`) or was abandoned after `bytes_out`.
    pub fn body_done(&mut self, bytes_out: u64, complete: bool) {
        self.bytes_out = bytes_out;
        self.complete = complete;
    }

    /// The answer switched protocols (WebSocket): the request's latency is
    /// fixed now; the record lives on until the tunnel closes.
    pub fn switched_protocols(&mut self) {
        self.handshake = Some(self.started.elapsed());
    }
}

impl Drop for RequestRecord {
    /// Runs once per request, however it ended: metrics, slots, access log.
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let shared = &self.shared;
        shared.metrics.in_flight.dec();
        let ex = &self.ex;
        if ex.holds_global_slot {
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        self.conn.request_done();

        let snap = &*self.snapshot;
        if let Some(u) = ex.upstream_slot {
            snap.upstreams[u].in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        let route = ex.route.map(|i| &snap.routes[i]);
        let status = self.status;
        let latency = self.handshake.unwrap_or(elapsed).as_secs_f64();
        match route {
            Some(r) => {
                r.metrics.count(&self.method, status);
                r.metrics.duration.observe(latency);
                if let (Some(c), Some(consumer)) = (&r.policies.consumers, &ex.policy.resolved) {
                    c.count(consumer, status);
                }
            }
            None => {
                snap.unmatched.count(&self.method, status);
                snap.unmatched.duration.observe(latency);
            }
        }
        let target = ex.target.as_ref().and_then(|p| {
            let upstream = &snap.upstreams[p.upstream];
            let target = p.target(upstream)?;
            target.state.in_flight.fetch_sub(1, Ordering::Relaxed);
            Some((&*upstream.name, &*target.label))
        });

        let complete = self.complete;
        let bytes_out = self.bytes_out;
        let error = match self.error {
            Some(e) => Some(e),
            None if !complete => Some("response_incomplete"),
            None => None,
        };
        #[cfg(feature = "otel")]
        if let Some(exporter) = &snap.spans {
            self.export_span(exporter, elapsed, error);
        }
        let path = self.uri.path();
        shared.access_log.write(&AccessLine {
            ts: self.ts,
            request_id: ex.request_id.to_str().unwrap_or("-"),
            listener: &self.conn.listener,
            client_ip: ex.policy.client_ip,
            method: self.method.as_str(),
            host: ex.host.as_ref().and_then(|h| h.to_str().ok()),
            path,
            route: route.map(|r| &*r.name),
            upstream: target.map(|t| t.0),
            target: target.map(|t| t.1),
            status: status.as_u16(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_ms: ex.upstream_ms,
            bytes_in: ex
                .bytes_in
                .as_ref()
                .map_or(0, |b| b.load(Ordering::Relaxed)),
            bytes_out,
            retries: ex.retries,
            error,
            client_cert: ex.client_cert_subject.as_deref(),
            // The consumer's name when `consumers` lists the credential,
            // else the credential's id, user or subject.
            consumer: match &ex.policy.resolved {
                Some(c) => Some(&*c.name),
                None => ex.policy.consumer.as_deref(),
            },
            cache: ex.cache.map(crate::cache::route::Outcome::as_str),
        });
    }
}
