//! State that outlives a config version, kept beside the snapshot and keyed by
//! name: per-target counters, health and circuit state, the retry budgets, the
//! connection pools, and the health-check tasks. `compile` asks here for the state of every upstream and
//! target it builds, so a reload keeps what still exists; after the swap,
//! `retain` forgets what the new version no longer names.
//!
//! Only `compile` and reload touch the maps (under a mutex, off the request
//! path); requests reach the states through the `Arc`s in the snapshot.

use std::collections::HashMap;

use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::config::schema;
use crate::idempotency;
use crate::policy::KeepJwks;
use crate::policy::jwks::JwksSource;
use crate::policy::quota::QuotaPolicy;
use crate::policy::rate_limit::RateLimitPolicy;
use crate::snapshot::Snapshot;

use crate::upstream::discovery::Discovered;
use crate::upstream::health::{self, HealthKey};
use crate::upstream::pool::{PoolSettings, UpstreamClient};
use crate::upstream::retry::RetryBudget;
use crate::upstream::{TargetState, Targets};

/// (upstream name, target URL)
type TargetKey = (String, String);

#[derive(Default)]
pub struct Carryover {
    targets: Mutex<HashMap<TargetKey, Arc<TargetState>>>,
    pools: Mutex<HashMap<String, (PoolSettings, Arc<UpstreamClient>)>>,
    /// Rate-limit policies (and consumer groups' limits) by name: an
    /// unchanged policy keeps its buckets.
    rate_limits: ByDefinition<RateLimitPolicy>,
    /// Idempotency policies by name: an unchanged policy keeps its store (the
    /// memory store's keys and answers).
    idempotency: ByDefinition<idempotency::Policy>,
    /// Consumer groups' quotas by group: an unchanged quota keeps its Redis
    /// connection and store breaker.
    quotas: ByDefinition<QuotaPolicy>,
    /// Caches by name: an unchanged `caches.<name>` keeps its entries.
    caches: ByDefinition<crate::cache::store::Cache>,
    budgets: Mutex<HashMap<String, Arc<RetryBudget>>>,
    /// Running health-check tasks per upstream, with what they were started for.
    health: Mutex<HashMap<String, (HealthKey, CancellationToken)>>,
    /// JWKS sources by (policy name, the policy's definition as JSON): an
    /// unchanged policy keeps its keys and its refresh loop across reloads.
    jwks: Mutex<HashMap<(String, String), Arc<JwksSource>>>,
    /// The DNS discovery of each upstream in the running config: the next
    /// version of the upstream starts from its answers.
    discovered: Mutex<HashMap<String, std::sync::Weak<Discovered>>>,
    /// The span exporter of the running config, while a snapshot holds it.
    #[cfg(feature = "otel")]
    spans: Mutex<Option<std::sync::Weak<crate::otel::SpanExporter>>>,
}

impl Drop for Carryover {
    fn drop(&mut self) {
        let tasks = self
            .health
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, token) in tasks.values() {
            token.cancel();
        }
    }
}

impl Carryover {
    /// The state of `url` in `upstream`: the existing one, or a new one.
    pub fn target(&self, upstream: &str, url: &str) -> Arc<TargetState> {
        let mut map = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry((upstream.to_string(), url.to_string()))
            .or_default()
            .clone()
    }

    /// The discovery of `upstream` in the running config, if it has one.
    pub fn discovered(&self, upstream: &str) -> Option<Arc<Discovered>> {
        self.discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(upstream)
            .and_then(std::sync::Weak::upgrade)
    }

    /// The pool of `upstream`: kept (with its idle connections) while its
    /// settings stay the same, new when they changed.
    pub fn pool(
        &self,
        upstream: &str,
        settings: PoolSettings,
    ) -> Result<Arc<UpstreamClient>, String> {
        let mut map = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((old, client)) = map.get(upstream)
            && *old == settings
        {
            return Ok(client.clone());
        }
        let client = Arc::new(UpstreamClient::new(&settings)?);
        map.insert(upstream.to_string(), (settings, client.clone()));
        Ok(client)
    }

    /// The policy called `name`: the existing one (buckets and all) while its
    /// definition is unchanged, else a new one from `make`.
    pub fn rate_limit(
        &self,
        name: &str,
        definition: String,
        make: impl FnOnce() -> Result<RateLimitPolicy, String>,
    ) -> Result<Arc<RateLimitPolicy>, String> {
        self.rate_limits.get_or_make(name, definition, make)
    }

    /// The idempotency policy called `name`: the existing one (its store and
    /// the keys in it) while its definition is unchanged, else one from `make`.
    pub fn idempotency(
        &self,
        name: &str,
        definition: String,
        make: impl FnOnce() -> Result<idempotency::Policy, String>,
    ) -> Result<Arc<idempotency::Policy>, String> {
        self.idempotency.get_or_make(name, definition, make)
    }

    /// The cache called `name`, kept (entries and all) while its definition
    /// is unchanged.
    pub fn cache(
        &self,
        name: &str,
        definition: String,
        make: impl FnOnce() -> Result<crate::cache::store::Cache, String>,
    ) -> Result<Arc<crate::cache::store::Cache>, String> {
        self.caches.get_or_make(name, definition, make)
    }

    /// The quota of consumer group `group`, kept while its definition is
    /// unchanged.
    pub fn quota(
        &self,
        group: &str,
        definition: String,
        make: impl FnOnce() -> Result<QuotaPolicy, String>,
    ) -> Result<Arc<QuotaPolicy>, String> {
        self.quotas.get_or_make(group, definition, make)
    }

    /// The retry budget of `upstream` (its window survives reloads).
    pub fn budget(&self, upstream: &str) -> Arc<RetryBudget> {
        let mut map = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(upstream.to_string()).or_default().clone()
    }

    /// Makes the running health-check tasks match `snap`: starts those of new
    /// or changed `health_check`s, stops those of removed or changed ones, and
    /// leaves the unchanged ones alone. Call it after each swap (needs a Tokio
    /// runtime).
    pub fn sync_health(&self, snap: &Snapshot) {
        let mut tasks = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|name, (key, token)| {
            let keep = snap
                .upstreams
                .iter()
                .any(|u| &*u.name == name && HealthKey::of(u).as_ref() == Some(key));
            if !keep {
                token.cancel();
            }
            keep
        });
        for up in &snap.upstreams {
            let Some(key) = HealthKey::of(up) else {
                continue;
            };
            if tasks.contains_key(&*up.name) {
                continue;
            }
            let token = CancellationToken::new();
            health::spawn(up, &token);
            tasks.insert(up.name.to_string(), (key, token));
        }
    }

    /// How many upstreams have health-check tasks running (for tests).
    pub fn health_task_count(&self) -> usize {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The span exporter for `settings`: the running one while a snapshot
    /// still holds it and its settings are the same, else a new one (started
    /// now). An exporter no snapshot holds any more ends by itself.
    #[cfg(feature = "otel")]
    pub fn span_exporter(
        &self,
        settings: crate::otel::ExportSettings,
        metrics: &crate::otel::SpanMetrics,
    ) -> Result<Arc<crate::otel::SpanExporter>, String> {
        let mut slot = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = slot.as_ref().and_then(std::sync::Weak::upgrade)
            && running.settings == settings
        {
            return Ok(running);
        }
        let exporter = crate::otel::SpanExporter::start(settings, metrics)?;
        *slot = Some(Arc::downgrade(&exporter));
        Ok(exporter)
    }

    /// Forgets the state of upstreams, targets and JWKS sources `snap` does not
    /// have; the refresh loops of dropped JWKS sources stop.
    pub fn retain(&self, snap: &Snapshot) {
        let mut jwks = self.jwks.lock().unwrap_or_else(PoisonError::into_inner);
        jwks.retain(|_, source| {
            let keep = snap.jwks.iter().any(|s| Arc::ptr_eq(s, source));
            if !keep {
                source.stop();
            }
            keep
        });
        drop(jwks);
        let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        targets.retain(|(up, url), _| {
            snap.upstreams
                .iter()
                .any(|u| &*u.name == up && u.current().targets.iter().any(|t| &*t.url == url))
        });
        drop(targets);
        let mut discovered = self
            .discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        discovered.clear();
        for u in &snap.upstreams {
            if let Targets::Discovered(d) = &u.targets {
                discovered.insert(u.name.to_string(), Arc::downgrade(d));
            }
        }
        drop(discovered);
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.retain(|up, (settings, _)| {
            snap.upstreams
                .iter()
                .any(|u| &*u.name == up && u.pool_settings == *settings)
        });
        drop(pools);
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        budgets.retain(|up, _| snap.upstreams.iter().any(|u| &*u.name == up));
        drop(budgets);
        self.rate_limits.retain(&snap.rate_limits);
        self.idempotency.retain(&snap.idempotency);
        self.quotas.retain(&snap.quotas);
        self.caches.retain(&snap.caches);
    }
}

/// Policies by name, each with the definition it was built from.
struct ByDefinition<T>(Mutex<HashMap<String, (String, Arc<T>)>>);

impl<T> Default for ByDefinition<T> {
    fn default() -> Self {
        ByDefinition(Mutex::default())
    }
}

impl<T> ByDefinition<T> {
    /// The kept policy while `definition` is unchanged, else a new one.
    fn get_or_make(
        &self,
        name: &str,
        definition: String,
        make: impl FnOnce() -> Result<T, String>,
    ) -> Result<Arc<T>, String> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((def, policy)) = map.get(name)
            && *def == definition
        {
            return Ok(policy.clone());
        }
        let policy = Arc::new(make()?);
        map.insert(name.to_string(), (definition, policy.clone()));
        Ok(policy)
    }

    /// Forgets every policy the running snapshot does not hold.
    fn retain(&self, live: &[Arc<T>]) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, (_, policy)| live.iter().any(|p| Arc::ptr_eq(p, policy)));
    }
}

impl KeepJwks for Carryover {
    /// The running source while the policy's definition is unchanged, else a
    /// new one (made by `make`, started now).
    fn jwks(
        &self,
        name: &str,
        def: &schema::JwtPolicy,
        make: impl FnOnce() -> Arc<JwksSource>,
    ) -> Arc<JwksSource> {
        let key = (
            name.to_string(),
            serde_json::to_string(def).unwrap_or_default(),
        );
        let mut map = self.jwks.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(key)
            .or_insert_with(|| {
                let source = make();
                source.start();
                source
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::metrics::Metrics;
    use crate::snapshot::build::compile;

    fn snapshot(yaml: &str, metrics: &Metrics, carry: &Carryover) -> Snapshot {
        let loaded = load_str(yaml, "t.yaml").unwrap();
        compile(&loaded, metrics, carry).unwrap()
    }

    const BASE: &str = "
upstreams:
  a:
    targets: [{ url: 'http://127.0.0.1:1' }, { url: 'http://127.0.0.1:2' }]
routes:
  - { name: r, match: { path_prefix: / }, upstream: a }
";

    #[test]
    fn a_reload_keeps_state_and_pools_by_name() {
        let (metrics, carry) = (Metrics::new().unwrap(), Carryover::default());
        let first = snapshot(BASE, &metrics, &carry);
        first.upstreams[0].current().targets[1]
            .state
            .in_flight
            .store(7, std::sync::atomic::Ordering::Relaxed);

        // Same names and settings: the same state and pool objects.
        let second = snapshot(BASE, &metrics, &carry);
        carry.retain(&second);
        assert!(Arc::ptr_eq(
            &first.upstreams[0].client,
            &second.upstreams[0].client
        ));
        assert!(Arc::ptr_eq(
            &first.upstreams[0].current().targets[1].state,
            &second.upstreams[0].current().targets[1].state
        ));

        // A target removed and a pool setting changed: both start afresh.
        let changed = BASE
            .replace(", { url: 'http://127.0.0.1:2' }", "")
            .replace("targets:", "timeouts: { connect: 2s }\n    targets:");
        let third = snapshot(&changed, &metrics, &carry);
        carry.retain(&third);
        assert!(!Arc::ptr_eq(
            &first.upstreams[0].client,
            &third.upstreams[0].client
        ));
        assert_eq!(carry.targets.lock().unwrap().len(), 1);
        assert!(carry.jwks.lock().unwrap().is_empty());
        let again = snapshot(BASE, &metrics, &carry);
        let state = &again.upstreams[0].current().targets[1].state.clone();
        assert_eq!(
            state.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
