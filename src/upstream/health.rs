//! Active health checks (`upstreams.*.health_check`): one background task per
//! target probes `GET <path>` every `interval` (with ±10 % jitter) through the
//! upstream's own client, and flips the target's `healthy` flag after
//! `healthy_threshold` / `unhealthy_threshold` consecutive results.
//!
//! The tasks of an upstream share one cancellation token, owned by
//! `Carryover` (`sync_health`) under a key made of everything the probes depend
//! on; a reload that keeps the key keeps the tasks, one that changes or removes
//! it cancels them (and starts new ones). The health flag itself lives in
//! `TargetState`, so it survives both.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Uri};
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

use crate::body::RequestBody;
use crate::config::units::StatusRange;
use crate::upstream::TargetState;
use crate::upstream::Upstream;
use crate::upstream::pool::{Endpoint, UpstreamBody, UpstreamClient};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub path: PathAndQuery,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub expect: StatusRange,
    /// Every target unhealthy: send to all of them anyway (true) or answer 503
    /// `no_healthy_upstream` (false, the default).
    pub fail_open: bool,
}

pub const DEFAULT_EXPECT: StatusRange = StatusRange {
    low: 200,
    high: 399,
};

/// What the probe tasks of one upstream depend on: when any of it changes, the
/// tasks are replaced.
#[derive(Clone, PartialEq, Eq)]
pub struct HealthKey {
    settings: HealthSettings,
    targets: Vec<Arc<str>>,
    /// The client the probes go through (a changed pool is a new client).
    client: usize,
}

impl HealthKey {
    pub fn of(up: &Upstream) -> Option<HealthKey> {
        Some(HealthKey {
            settings: up.health.clone()?,
            targets: up.targets.iter().map(|t| t.url.clone()).collect(),
            client: Arc::as_ptr(&up.client) as usize,
        })
    }
}

/// Starts the probe tasks of `up`; they stop when `token` is cancelled.
pub fn spawn(up: &Upstream, token: &CancellationToken) {
    let Some(settings) = up.health.clone() else {
        return;
    };
    let settings = Arc::new(settings);
    for t in &up.targets {
        let probe = Probe {
            upstream: up.name.clone(),
            target: t.label.clone(),
            endpoint: t.endpoint.clone(),
            authority: t.authority.clone(),
            state: t.state.clone(),
            gauge: t.metrics.healthy.clone(),
            client: up.client.clone(),
            settings: settings.clone(),
        };
        let token = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = probe.run() => {}
            }
        });
    }
}

struct Probe {
    upstream: Arc<str>,
    target: Arc<str>,
    endpoint: Arc<Endpoint>,
    authority: http::uri::Authority,
    state: Arc<TargetState>,
    gauge: IntGauge,
    client: Arc<UpstreamClient>,
    settings: Arc<HealthSettings>,
}

impl Probe {
    async fn run(self) {
        let s = &*self.settings;
        // Spread the first probes of many targets over the first interval's tenth.
        tokio::time::sleep(s.interval.mul_f64(fastrand::f64() * 0.1)).await;
        let (mut ups, mut downs) = (0u32, 0u32);
        loop {
            let ok = self.probe_once().await;
            if ok {
                ups += 1;
                downs = 0;
            } else {
                downs += 1;
                ups = 0;
            }
            let healthy = self.state.healthy.load(Ordering::Relaxed);
            if !healthy && ups >= s.healthy_threshold {
                self.set(true);
            } else if healthy && downs >= s.unhealthy_threshold {
                self.set(false);
            }
            let jitter = 0.9 + fastrand::f64() * 0.2;
            tokio::time::sleep(s.interval.mul_f64(jitter)).await;
        }
    }

    fn set(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::Relaxed);
        self.gauge.set(i64::from(healthy));
        if healthy {
            tracing::info!(upstream = %self.upstream, target = %self.target, "target is healthy again");
        } else {
            tracing::warn!(upstream = %self.upstream, target = %self.target, "target failed its health checks");
        }
    }

    async fn probe_once(&self) -> bool {
        let s = &*self.settings;
        let mut req = Request::new(RequestBody::empty());
        *req.uri_mut() = Uri::from(s.path.clone());
        if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
        req.headers_mut().insert(
            header::USER_AGENT,
            HeaderValue::from_static("tollgate-health-check"),
        );
        match tokio::time::timeout(s.timeout, self.client.send(&self.endpoint, req)).await {
            Ok(Ok(resp)) => {
                let ok = s.expect.contains(resp.status().as_u16());
                // Read (a bounded amount of) the body so the connection can be reused.
                let body = resp.into_body();
                let _ = tokio::time::timeout(s.timeout, drain(body)).await;
                ok
            }
            _ => false,
        }
    }
}

async fn drain(mut body: UpstreamBody) {
    use http_body_util::BodyExt;
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.len());
        if seen > 64 * 1024 {
            break;
        }
    }
}
