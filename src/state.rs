//! State that outlives a config version, kept beside the snapshot and keyed by
//! name: per-target counters (and, later, health and circuit state) and the
//! connection pools. `compile` asks here for the state of every upstream and
//! target it builds, so a reload keeps what still exists; after the swap,
//! `retain` forgets what the new version no longer names.
//!
//! Only `compile` and reload touch the maps (under a mutex, off the request
//! path); requests reach the states through the `Arc`s in the snapshot.

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::schema;
use crate::policy::jwks::JwksSource;
use crate::snapshot::Snapshot;
use crate::upstream::pool::{PoolSettings, UpstreamClient};

/// What a target carries across config versions.
#[derive(Default)]
pub struct TargetState {
    /// Requests in flight to this target (least_request reads it).
    pub in_flight: AtomicU32,
}

/// (upstream name, target URL)
type TargetKey = (String, String);

#[derive(Default)]
pub struct Carryover {
    targets: Mutex<HashMap<TargetKey, Arc<TargetState>>>,
    pools: Mutex<HashMap<String, (PoolSettings, Arc<UpstreamClient>)>>,
    /// JWKS sources by (policy name, the policy's definition as JSON): an
    /// unchanged policy keeps its keys and its refresh loop across reloads.
    jwks: Mutex<HashMap<(String, String), Arc<JwksSource>>>,
}

impl Carryover {
    /// The state of `url` in `upstream`: the existing one, or a new one.
    pub fn target(&self, upstream: &str, url: &str) -> Arc<TargetState> {
        let mut map = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry((upstream.to_string(), url.to_string()))
            .or_default()
            .clone()
    }

    /// The pool of `upstream`: kept (with its idle connections) while its
    /// settings stay the same, new when they changed.
    pub fn pool(&self, upstream: &str, settings: PoolSettings) -> Arc<UpstreamClient> {
        let mut map = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((old, client)) = map.get(upstream)
            && *old == settings
        {
            return client.clone();
        }
        let client = Arc::new(UpstreamClient::new(&settings));
        map.insert(upstream.to_string(), (settings, client.clone()));
        client
    }

    /// The JWKS source of JWT policy `name`: the running one while the policy's
    /// definition is unchanged, else a new one (made by `make`, started now).
    pub fn jwks(
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
                .any(|u| &*u.name == up && u.targets.iter().any(|t| &*t.url == url))
        });
        drop(targets);
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.retain(|up, (settings, _)| {
            snap.upstreams
                .iter()
                .any(|u| &*u.name == up && u.pool_settings == *settings)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{compile::compile, load_str};
    use crate::metrics::Metrics;

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
        first.upstreams[0].targets[1]
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
            &first.upstreams[0].targets[1].state,
            &second.upstreams[0].targets[1].state
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
        let state = &again.upstreams[0].targets[1].state;
        assert_eq!(
            state.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
