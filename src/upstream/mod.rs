//! Upstream services: their targets, how one is picked, and how requests reach it.
//!
//! An `Upstream` is compiled once per config version. Per-target counters that the
//! balancer reads (`in_flight`) live on the `Target`.

pub mod balancer;
pub mod pool;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};

use crate::metrics::TargetMetrics;
use crate::state::TargetState;
use balancer::{Balancer, PickContext};
use pool::{PoolSettings, UpstreamClient};

pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub balancer: Balancer,
    /// Shared with the previous config version while the pool settings match.
    pub client: Arc<UpstreamClient>,
    pub pool_settings: PoolSettings,
    /// Time allowed for the whole response head, unless a route overrides it.
    pub request_timeout: Duration,
    /// The bulkhead: at most this many requests in flight (0 = no cap).
    pub max_concurrent: usize,
    pub in_flight: AtomicUsize,
}

pub struct Target {
    /// As written in the config; the target's identity across reloads.
    pub url: Arc<str>,
    /// `http` or `https` (TLS to the target).
    pub scheme: Scheme,
    pub authority: Authority,
    /// `host:port`, the `target` metric label and log field.
    pub label: Arc<str>,
    /// Carried across reloads (see `state`).
    pub state: Arc<TargetState>,
    pub metrics: TargetMetrics,
}

impl Upstream {
    /// Takes a bulkhead slot; `false` when the upstream is full.
    pub fn try_acquire(&self) -> bool {
        if self.max_concurrent == 0 {
            return true;
        }
        let prev = self.in_flight.fetch_add(1, Ordering::Relaxed);
        if prev >= self.max_concurrent {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Picks a target for one attempt and counts it as in flight.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let i = self.balancer.pick(
            ctx,
            |i| self.targets[i].state.in_flight.load(Ordering::Relaxed),
            |_| true,
        )?;
        self.targets[i]
            .state
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Some(i)
    }
}
