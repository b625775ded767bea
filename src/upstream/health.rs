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
use std::collections::HashMap;
use std::sync::Weak;

use crate::upstream::discovery::Discovered;
use crate::upstream::pool::{Endpoint, UpstreamBody, UpstreamClient};
use crate::upstream::{Target, TargetState, Targets, Upstream};

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
    /// The fixed targets, or the discovery the probes follow.
    targets: Vec<Arc<str>>,
    discovered: usize,
    /// The client the probes go through (a changed pool is a new client).
    client: usize,
}

impl HealthKey {
    pub fn of(up: &Upstream) -> Option<HealthKey> {
        Some(HealthKey {
            settings: up.health.clone()?,
            targets: match &up.targets {
                Targets::Fixed(set) => set.targets.iter().map(|t| t.url.clone()).collect(),
                Targets::Discovered(_) => Vec::new(),
            },
            discovered: match &up.targets {
                Targets::Fixed(_) => 0,
                Targets::Discovered(d) => Arc::as_ptr(d) as usize,
            },
            client: Arc::as_ptr(&up.client) as usize,
        })
    }
}

/// Starts the probe tasks of `up`; they stop when `token` is cancelled. The
/// targets of a discovered upstream are followed: a target that joins gets
/// its probe, one that leaves loses it.
pub fn spawn(up: &Upstream, token: &CancellationToken) {
    let Some(settings) = up.health.clone() else {
        return;
    };
    let settings = Arc::new(settings);
    match &up.targets {
        Targets::Fixed(set) => {
            for t in &set.targets {
                Probe::of(&up.name, t, &up.client, &settings).start(token.clone());
            }
        }
        Targets::Discovered(d) => {
            let (d, token) = (Arc::downgrade(d), token.clone());
            tokio::spawn(follow(
                d,
                token,
                up.name.clone(),
                up.client.clone(),
                settings,
            ));
        }
    }
}

/// Keeps one probe per target of a discovered upstream while `token` lives.
async fn follow(
    d: Weak<Discovered>,
    token: CancellationToken,
    upstream: Arc<str>,
    client: Arc<UpstreamClient>,
    settings: Arc<HealthSettings>,
) {
    let mut probes: HashMap<Arc<str>, CancellationToken> = HashMap::new();
    let Some(mut changes) = d.upgrade().map(|d| d.subscribe()) else {
        return;
    };
    loop {
        let Some(set) = d.upgrade().map(|d| d.current()) else {
            break;
        };
        probes.retain(|url, t| {
            let keep = set.targets.iter().any(|x| x.url == *url);
            if !keep {
                t.cancel();
            }
            keep
        });
        for t in &set.targets {
            if probes.contains_key(&t.url) {
                continue;
            }
            let child = token.child_token();
            Probe::of(&upstream, t, &client, &settings).start(child.clone());
            probes.insert(t.url.clone(), child);
        }
        drop(set);
        tokio::select! {
            _ = token.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
    }
    for t in probes.values() {
        t.cancel();
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
    fn of(
        upstream: &Arc<str>,
        t: &Target,
        client: &Arc<UpstreamClient>,
        settings: &Arc<HealthSettings>,
    ) -> Probe {
        Probe {
            upstream: upstream.clone(),
            target: t.label.clone(),
            endpoint: t.endpoint.clone(),
            authority: t.authority.clone(),
            state: t.state.clone(),
            gauge: t.metrics.healthy.clone(),
            client: client.clone(),
            settings: settings.clone(),
        }
    }

    fn start(self, token: CancellationToken) {
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = self.run() => {}
            }
        });
    }

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
        if healthy {
            // Back in: its slow start begins now.
            self.state.joined.set(tokio::time::Instant::now());
        }
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
