//! Consumers (`consumers`, `consumer_groups`): who an authenticated credential
//! belongs to, and the plan of the group they are in.
//!
//! Authentication proves a credential: an API key id, a Basic user, or the
//! subject of a JWT or introspected token. The `Directory` maps each listed
//! credential to one consumer (validation refuses a credential listed twice).
//! The consumer's name goes upstream in `server.consumer_header` and into the
//! access log; its group is a metric label, and the group's rate limit and
//! quota apply to it on every route that authenticates it. A credential no
//! consumer lists passes as before, with no plan.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use http::{HeaderName, HeaderValue, StatusCode};
use prometheus::{IntCounter, IntCounterVec};

use super::NamedPolicies;
use super::quota::QuotaPolicy;
use super::rate_limit::RateLimitPolicy;
use crate::config::schema;

/// What kind of credential authenticated a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// An `auth.api_keys` key, by its id.
    ApiKey,
    /// The `sub` of a JWT or an introspected token.
    Subject,
    /// An `auth.basic` user.
    BasicUser,
}

/// One consumer, compiled.
pub struct Consumer {
    pub name: Arc<str>,
    /// The name, as the upstream header's value.
    pub header: HeaderValue,
    pub group: Option<Arc<Group>>,
}

/// One consumer group: its plan.
pub struct Group {
    pub name: Arc<str>,
    /// Its place in `Directory::groups` (per-route metric tables).
    pub index: usize,
    /// A token bucket (`group:<name>` in metrics).
    pub limit: Option<Arc<RateLimitPolicy>>,
    pub quota: Option<Arc<QuotaPolicy>>,
}

/// Credentials to consumers, for one config version.
pub struct Directory {
    /// `server.consumer_header`.
    pub header: HeaderName,
    pub groups: Vec<Arc<Group>>,
    api_keys: HashMap<Box<str>, Arc<Consumer>>,
    subjects: HashMap<Box<str>, Arc<Consumer>>,
    basic_users: HashMap<Box<str>, Arc<Consumer>>,
}

impl Directory {
    /// The directory of `cfg.consumers`, with the groups compiled already (in
    /// `cfg.consumer_groups` order). `None` when no consumer is configured.
    /// Errors are (key path, message).
    pub fn compile(
        cfg: &schema::Config,
        named: &NamedPolicies,
        groups: Vec<Arc<Group>>,
    ) -> Result<Option<Directory>, (String, String)> {
        if cfg.consumers.is_empty() {
            return Ok(None);
        }
        let header =
            HeaderName::from_bytes(cfg.server.consumer_header.as_bytes()).map_err(|_| {
                (
                    "server.consumer_header".to_string(),
                    format!("`{}` is not a header name", cfg.server.consumer_header),
                )
            })?;
        let mut dir = Directory {
            header,
            groups,
            api_keys: HashMap::new(),
            subjects: HashMap::new(),
            basic_users: HashMap::new(),
        };
        for (name, c) in &cfg.consumers {
            let at = format!("consumers.{name}");
            let group = match &c.group {
                None => None,
                Some(g) => Some(
                    dir.groups
                        .iter()
                        .find(|x| &*x.name == g.as_str())
                        .cloned()
                        .ok_or_else(|| (format!("{at}.group"), format!("unknown group `{g}`")))?,
                ),
            };
            let consumer = Arc::new(Consumer {
                name: name.as_str().into(),
                header: HeaderValue::from_str(name).map_err(|_| {
                    (
                        at.clone(),
                        format!("the name `{name}` cannot go in a header"),
                    )
                })?,
                group,
            });
            for (i, user) in c.basic_users.iter().enumerate() {
                if !named.basic.values().any(|b| b.has_user(user)) {
                    return Err((
                        format!("{at}.basic_users[{i}]"),
                        format!("no htpasswd file of `auth.basic` lists the user `{user}`"),
                    ));
                }
            }
            let lists = [
                (&c.api_keys, &mut dir.api_keys),
                (&c.jwt_subjects, &mut dir.subjects),
                (&c.basic_users, &mut dir.basic_users),
            ];
            for (ids, map) in lists {
                for id in ids {
                    map.insert(id.as_str().into(), consumer.clone());
                }
            }
        }
        Ok(Some(dir))
    }

    /// The consumer `id` (of kind `kind`) belongs to.
    pub fn resolve(&self, kind: Credential, id: &str) -> Option<&Arc<Consumer>> {
        match kind {
            Credential::ApiKey => &self.api_keys,
            Credential::Subject => &self.subjects,
            Credential::BasicUser => &self.basic_users,
        }
        .get(id)
    }
}

/// A route's view of the directory: the header to strip and set, and the
/// route's counters per group.
pub struct RouteConsumers {
    pub directory: Arc<Directory>,
    /// By group index; empty on a route without authentication (nothing is
    /// resolved there, the header is only removed).
    pub groups: Box<[RouteGroup]>,
}

/// The metric handles of one group on one route.
pub struct RouteGroup {
    /// `tollgate_rate_limited_total{route, policy="group:<g>"}`, when the
    /// group has a rate limit.
    pub limited: Option<IntCounter>,
    /// `tollgate_rate_limited_total{route, policy="quota:<g>"}`, when the
    /// group has a quota.
    pub over_quota: Option<IntCounter>,
    /// `tollgate_consumer_requests_total{route, group, class}`, by status
    /// class, made on first use.
    requests: [OnceLock<IntCounter>; 5],
    family: IntCounterVec,
    route: Arc<str>,
    group: Arc<str>,
}

impl RouteConsumers {
    /// `authenticated`: the route resolves consumers (it has `auth`).
    pub fn new(
        directory: &Arc<Directory>,
        route: &str,
        authenticated: bool,
        metrics: &crate::metrics::Metrics,
    ) -> RouteConsumers {
        let groups = if authenticated {
            directory
                .groups
                .iter()
                .map(|g| {
                    let refused = |has: bool, kind: &str| {
                        has.then(|| metrics.rate_limited(route, &format!("{kind}:{}", g.name)))
                    };
                    RouteGroup {
                        limited: refused(g.limit.is_some(), "group"),
                        over_quota: refused(g.quota.is_some(), "quota"),
                        requests: Default::default(),
                        family: metrics.consumer_requests(),
                        route: route.into(),
                        group: g.name.clone(),
                    }
                })
                .collect()
        } else {
            Box::default()
        };
        RouteConsumers {
            directory: directory.clone(),
            groups,
        }
    }

    /// Counts a finished request of a consumer in a group.
    pub fn count(&self, consumer: &Consumer, status: StatusCode) {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let Some(group) = &consumer.group else {
            return;
        };
        let Some(g) = self.groups.get(group.index) else {
            return;
        };
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        g.requests[class]
            .get_or_init(|| {
                g.family
                    .with_label_values(&[&*g.route, &*g.group, CLASSES[class]])
            })
            .inc();
    }
}
