//! Mirroring: the copy of a request that goes to a route's shadow upstream,
//! in a task of its own. The client's request never waits for it and never
//! sees its outcome; the outcome is counted in
//! `tollgate_mirror_requests_total{route,result}`.

use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http::uri::PathAndQuery;

use super::Exchange;
use super::aside::{self, Aside, Sent};
use crate::snapshot::Snapshot;
use crate::steering::{MirrorPolicy, MirrorSlot, shadow_host};

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
pub struct Copy(Aside);

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
        Copy(Aside {
            method: parts.method.clone(),
            path_and_query: path_and_query.clone(),
            headers,
            body,
            client_ip: ex.policy.client_ip,
        })
    }
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
    match tokio::time::timeout(up.request_timeout, aside::send(up, copy.0, 0)).await {
        Ok(Sent::Answered { head, .. }) if head.status.as_u16() >= 500 => m.metrics.http_5xx.inc(),
        Ok(Sent::Answered { .. }) => m.metrics.ok.inc(),
        Ok(Sent::Failed) => m.metrics.error.inc(),
        Err(_elapsed) => m.metrics.timeout.inc(),
    }
}
