//! Client policies of a route, checked after routing and before any upstream is
//! contacted, in this order: IP rules, CORS preflight, authentication, required
//! claims, rate limits (docs/reference/config.md, route keys `ip_allow`/`ip_deny`,
//! `cors`, `auth`, `require_claims`, `rate_limit`).
//!
//! Each policy is plain data compiled per route (`RoutePolicies`); a check reads
//! the request head and the `PolicyContext`, may add to it (the consumer,
//! the claims, response headers such as `RateLimit-*`), may edit the headers that
//! go upstream, and either lets the request continue, answers it directly (a CORS
//! preflight), or refuses it with a `GatewayError`.

pub mod api_key;
pub mod basic;
pub mod consumers;
pub mod cors;
pub mod external;
pub mod introspection;
pub mod ip;
pub mod jwks;
pub mod jwt;
pub mod quota;
pub mod rate_limit;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Response};
use serde_json::Value;

use crate::config::schema;
use crate::error::{AuthFailure, GatewayError};
use crate::metrics::{AuthFailureMetrics, Metrics};
use api_key::ApiKeySet;
use consumers::{Consumer, Credential, RouteConsumers};
use cors::CorsPolicy;
use ip::IpRules;
use jwt::{JwtError, JwtPolicy, TokenHandling, Verified};
use rate_limit::{KeySource, Outcome, RateLimitPolicy, Verdict};

/// Sent upstream with the id of the API key that authenticated the request.
pub static X_CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");

/// The compiled policies of one route. Empty for a public route with no limits:
/// checking it then costs one branch.
#[derive(Default)]
pub struct RoutePolicies {
    ip: Option<IpRules>,
    cors: Option<Arc<CorsPolicy>>,
    /// Any one must pass; empty = public.
    auth: Vec<AuthMethod>,
    /// `external:` entries of `auth`: asked after it, every one must allow.
    external: Vec<Arc<external::External>>,
    /// Every entry must hold: (claim, accepted values).
    require_claims: Vec<(String, Vec<String>)>,
    failures: Option<AuthFailureMetrics>,
    /// Every limit must admit the request.
    pub rate_limits: Vec<RouteLimit>,
    /// The most body an external authorization service of the route wants
    /// to see (`send_body`), when one does: read before the policies.
    pub body_for_authorization: Option<u64>,
    /// With `consumers` configured: the consumer header to strip (and, on a
    /// route with `auth`, to set) and the route's counters per group.
    pub consumers: Option<RouteConsumers>,
}

/// A rate-limit policy as applied on one route.
pub struct RouteLimit {
    pub policy: Arc<RateLimitPolicy>,
    /// `tollgate_rate_limited_total{route, policy}`.
    pub refused: prometheus::IntCounter,
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

pub enum AuthMethod {
    Jwt(Arc<JwtPolicy>),
    ApiKey(Arc<ApiKeySet>),
    Basic(Arc<basic::BasicAuth>),
    Introspection(Arc<introspection::Introspection>),
}

impl AuthMethod {
    /// A JWT or introspection policy's name and token handling (the other
    /// methods read no bearer-style token).
    fn token_policy(&self) -> Option<(&Arc<str>, &TokenHandling)> {
        match self {
            AuthMethod::Jwt(p) => Some((&p.name, &p.tokens)),
            AuthMethod::Introspection(p) => Some((&p.name, &p.tokens)),
            AuthMethod::ApiKey(_) | AuthMethod::Basic(_) => None,
        }
    }

    /// Verifies a token found by `token_policy`: a signature check, or a
    /// question to the introspection endpoint.
    async fn verify_token(&self, token: &str) -> Result<Verified, JwtError> {
        match self {
            AuthMethod::Jwt(p) => p.verify(token).await,
            AuthMethod::Introspection(p) => p.check(token).await,
            AuthMethod::ApiKey(_) | AuthMethod::Basic(_) => {
                Err(JwtError::Failure(AuthFailure::Missing))
            }
        }
    }
}

/// The four fields of a request that policies read or fill in; the proxy's
/// exchange holds one, so policies never see the rest of the request state.
pub struct PolicyContext {
    /// The client address, already taken through `server.trusted_proxies`.
    pub client_ip: std::net::IpAddr,
    /// Who the request was authenticated as: an API key id or a JWT subject.
    /// Safe to log; never the credential itself.
    pub consumer: Option<String>,
    /// The verified JWT claims, for `require_claims` and `jwt:<claim>` keys.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Headers every answer to this request carries, success or error (for
    /// example rate-limit or CORS headers added by policies).
    pub response_headers: http::HeaderMap,
    /// The request body, when it was read for an external authorization
    /// service (`send_body`).
    pub body: Option<Bytes>,
    /// The consumer the credential belongs to (`consumers`), if one does.
    pub resolved: Option<Arc<Consumer>>,
}

impl PolicyContext {
    pub fn new(client_ip: std::net::IpAddr) -> Self {
        PolicyContext {
            client_ip,
            consumer: None,
            claims: None,
            response_headers: http::HeaderMap::new(),
            body: None,
            resolved: None,
        }
    }
}

/// Where JWKS sources outlive a config version: a reload whose JWT policy is
/// unchanged keeps the running source (its keys and refresh task) instead of
/// fetching again. The snapshot's carried-over state implements it.
pub trait KeepJwks {
    /// The JWKS source of JWT policy `name` with definition `def`.
    fn jwks(
        &self,
        name: &str,
        def: &schema::JwtPolicy,
        make: impl FnOnce() -> Arc<jwks::JwksSource>,
    ) -> Arc<jwks::JwksSource>;
}

/// What the policies decided about a request they did not refuse.
pub enum Decision {
    /// Go on to the route's action.
    Continue,
    /// Answer with this response without contacting any upstream.
    Respond(Response<Bytes>),
}

/// The named policies of a config version, shared by the routes that use them.
#[derive(Default)]
pub struct NamedPolicies {
    pub jwt: HashMap<String, Arc<JwtPolicy>>,
    pub api_keys: HashMap<String, Arc<ApiKeySet>>,
    pub basic: HashMap<String, Arc<basic::BasicAuth>>,
    pub introspection: HashMap<String, Arc<introspection::Introspection>>,
    pub external: HashMap<String, Arc<external::External>>,
    pub cors: HashMap<String, Arc<CorsPolicy>>,
    /// `consumers`, when any is configured (set after `compile`, once the
    /// groups' limits are built).
    pub consumers: Option<Arc<consumers::Directory>>,
}

impl NamedPolicies {
    /// Builds `auth.*` and `cors.*`. `jwks_url` policies take their key source
    /// from `carry` (kept across reloads while the policy is unchanged).
    /// Errors are (key path, message).
    pub fn compile(
        cfg: &schema::Config,
        base_dir: &Path,
        metrics: &Metrics,
        carry: &impl KeepJwks,
    ) -> Result<NamedPolicies, (String, String)> {
        let mut out = NamedPolicies::default();
        for (name, p) in &cfg.auth.jwt {
            let at = format!("auth.jwt.{name}");
            let origin = match (&p.jwks_url, p.discovery) {
                (Some(url), _) => {
                    Some(jwks::Origin::Jwks(url.parse().map_err(|_| {
                        (format!("{at}.jwks_url"), format!("`{url}` is not a URL"))
                    })?))
                }
                (None, true) => {
                    let issuer = p.issuer.as_deref().unwrap_or_default();
                    Some(jwks::Origin::discovery(issuer).map_err(|m| (format!("{at}.issuer"), m))?)
                }
                (None, false) => None,
            };
            let remote = origin.map(|origin| {
                let refresh = p.jwks_refresh.map_or(jwks::DEFAULT_REFRESH, |d| d.get());
                carry.jwks(name, p, || {
                    jwks::JwksSource::new(name, origin, refresh, metrics.jwks(name))
                })
            });
            let policy = JwtPolicy::compile(name, p, base_dir, remote).map_err(|m| (at, m))?;
            out.jwt.insert(name.clone(), Arc::new(policy));
        }
        for (name, set) in &cfg.auth.api_keys {
            let set =
                ApiKeySet::compile(name, set).map_err(|m| (format!("auth.api_keys.{name}"), m))?;
            out.api_keys.insert(name.clone(), Arc::new(set));
        }
        for (name, b) in &cfg.auth.basic {
            let at = format!("auth.basic.{name}.htpasswd");
            let path = base_dir.join(&b.htpasswd);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| (at.clone(), format!("cannot read {}: {e}", path.display())))?;
            let policy = basic::BasicAuth::compile(name, &text, b.realm.as_deref())
                .map_err(|m| (at, format!("{}: {m}", path.display())))?;
            out.basic.insert(name.clone(), Arc::new(policy));
        }
        for (name, p) in &cfg.auth.introspection {
            let policy =
                introspection::Introspection::compile(name, p, metrics.introspection(name))
                    .map_err(|m| (format!("auth.introspection.{name}"), m))?;
            out.introspection.insert(name.clone(), Arc::new(policy));
        }
        for (name, p) in &cfg.auth.external {
            let policy = external::External::compile(name, p, metrics.external_auth(name))
                .map_err(|m| (format!("auth.external.{name}"), m))?;
            out.external.insert(name.clone(), Arc::new(policy));
        }
        for (name, c) in &cfg.cors {
            let c = CorsPolicy::compile(c).map_err(|m| (format!("cors.{name}"), m))?;
            out.cors.insert(name.clone(), Arc::new(c));
        }
        Ok(out)
    }

    /// The JWKS sources in use (for `/readyz` and the age metric).
    pub fn jwks_sources(&self) -> Vec<Arc<jwks::JwksSource>> {
        let mut v: Vec<_> = self
            .jwt
            .values()
            .filter_map(|p| match p.keys() {
                jwt::Keys::Remote(s) => Some(s.clone()),
                jwt::Keys::Static(_) => None,
            })
            .collect();
        v.sort_by(|a, b| a.policy.cmp(&b.policy));
        v
    }
}

impl RoutePolicies {
    /// The policies of `route` (at key path `at`), resolved against `named`.
    pub fn compile(
        route: &schema::Route,
        at: &str,
        named: &NamedPolicies,
        metrics: &Metrics,
    ) -> Result<RoutePolicies, (String, String)> {
        let nets = |list: &Option<Vec<String>>, key: &str| {
            list.iter()
                .flatten()
                .enumerate()
                .map(|(i, s)| {
                    crate::config::values::parse_net(s).map_err(|m| (format!("{at}.{key}[{i}]"), m))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let ip = (route.ip_allow.is_some() || route.ip_deny.is_some())
            .then(|| -> Result<_, (String, String)> {
                Ok(IpRules {
                    allow: nets(&route.ip_allow, "ip_allow")?,
                    deny: nets(&route.ip_deny, "ip_deny")?,
                })
            })
            .transpose()?;
        let cors = match &route.cors {
            None => None,
            Some(name) => Some(named.cors.get(name).cloned().ok_or_else(|| {
                (
                    format!("{at}.cors"),
                    format!("unknown cors policy `{name}`"),
                )
            })?),
        };
        let mut auth = Vec::new();
        let mut external = Vec::new();
        for (i, entry) in route.auth.iter().flatten().enumerate() {
            let unknown = || (format!("{at}.auth[{i}]"), format!("unknown auth `{entry}`"));
            // Not one of the any-of: kept apart, asked after it.
            if let Some(("external", name)) = entry.split_once(':') {
                external.push(named.external.get(name).cloned().ok_or_else(unknown)?);
                continue;
            }
            auth.push(match entry.split_once(':') {
                Some(("jwt", name)) => {
                    AuthMethod::Jwt(named.jwt.get(name).cloned().ok_or_else(unknown)?)
                }
                Some(("api_key", name)) => {
                    AuthMethod::ApiKey(named.api_keys.get(name).cloned().ok_or_else(unknown)?)
                }
                Some(("basic", name)) => {
                    AuthMethod::Basic(named.basic.get(name).cloned().ok_or_else(unknown)?)
                }
                Some(("introspection", name)) => AuthMethod::Introspection(
                    named.introspection.get(name).cloned().ok_or_else(unknown)?,
                ),
                _ => return Err(unknown()),
            });
        }
        let require_claims = route
            .require_claims
            .iter()
            .flatten()
            .map(|(claim, want)| {
                let values = match want {
                    schema::StringOrList::One(v) => vec![v.clone()],
                    schema::StringOrList::Many(v) => v.clone(),
                };
                (claim.clone(), values)
            })
            .collect::<Vec<_>>();
        let guarded =
            ip.is_some() || !auth.is_empty() || !external.is_empty() || !require_claims.is_empty();
        let body_for_authorization = external
            .iter()
            .map(|p| p.send_body)
            .filter(|n| *n > 0)
            .max();
        let consumers = named
            .consumers
            .as_ref()
            .map(|d| RouteConsumers::new(d, &route.name, !auth.is_empty(), metrics));
        Ok(RoutePolicies {
            consumers,
            body_for_authorization,
            failures: guarded.then(|| metrics.auth_failures(&route.name)),
            ip,
            cors,
            auth,
            external,
            require_claims,
            rate_limits: Vec::new(),
        })
    }

    /// Whether requests on the route carry credentials the gateway checks
    /// (`auth`): a shared cache treats them as authorized requests.
    pub fn authenticates(&self) -> bool {
        !self.auth.is_empty() || !self.external.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.ip.is_none()
            && self.cors.is_none()
            && self.auth.is_empty()
            && self.external.is_empty()
            && self.require_claims.is_empty()
            && self.rate_limits.is_empty()
            && self.consumers.is_none()
    }

    /// Runs every policy of the route in phase order.
    pub async fn check(
        &self,
        parts: &mut Parts,
        ex: &mut PolicyContext,
    ) -> Result<Decision, GatewayError> {
        // Identity headers are the gateway's to set, on every route.
        if let Some(c) = &self.consumers {
            parts.headers.remove(&c.directory.header);
        }

        // 1. IP rules: the cheapest refusal, before anything else is looked at.
        if let Some(ip) = &self.ip
            && !ip.admits(ex.client_ip)
        {
            self.count_forbidden();
            return Err(GatewayError::Forbidden(
                "this client address is not allowed on this route",
            ));
        }

        // 2. CORS: a preflight is answered here, before auth (browsers send no
        // credentials on it); other requests get their headers on any answer.
        if let Some(cors) = &self.cors {
            if let Some(resp) = cors.preflight(parts, &mut ex.response_headers) {
                return Ok(Decision::Respond(resp));
            }
            cors.annotate(parts, &mut ex.response_headers);
        }

        // 3. Authentication: any one method must pass.
        if !self.auth.is_empty() {
            self.authenticate(parts, ex).await?;
        }

        // 4. Required claims (RBAC).
        if !self.require_claims.is_empty() {
            let holds = ex.claims.as_ref().is_some_and(|claims| {
                self.require_claims
                    .iter()
                    .all(|(claim, want)| claims.get(claim).is_some_and(|v| claim_holds(v, want)))
            });
            if !holds {
                self.count_forbidden();
                return Err(GatewayError::Forbidden(
                    "the token does not carry the claims this route requires",
                ));
            }
        }

        // 4b. External authorization: every service must allow.
        for p in &self.external {
            if let Some(resp) = authorize(p, parts, ex).await? {
                return Ok(Decision::Respond(resp));
            }
        }

        // 5. Rate limits: after auth, so a refused request spends no tokens and
        //    `jwt:<claim>` / `api_key` / `consumer` keys can use what auth found.
        //    The consumer group's limit first, its quota last: a request
        //    refused by a rate limit uses none of the quota.
        let group = ex
            .resolved
            .as_ref()
            .and_then(|c| Some((c.clone(), c.group.clone()?)));
        if !self.rate_limits.is_empty() || group.as_ref().is_some_and(|(_, g)| g.limit.is_some()) {
            self.check_rate_limits(parts, ex).await?;
        }
        if let Some((consumer, group)) = &group
            && let Some(quota) = &group.quota
        {
            self.check_quota(quota, consumer, group).await?;
        }

        Ok(Decision::Continue)
    }

    /// The metric handles of `group` on this route.
    fn group_counters(&self, group: &consumers::Group) -> Option<&consumers::RouteGroup> {
        self.consumers.as_ref()?.groups.get(group.index)
    }

    /// Counts one request of `consumer` against its group's quota.
    async fn check_quota(
        &self,
        quota: &quota::QuotaPolicy,
        consumer: &Consumer,
        group: &consumers::Group,
    ) -> Result<(), GatewayError> {
        match quota.check(consumer).await {
            Ok(quota::QuotaVerdict::Exceeded { retry_after_secs }) => {
                if let Some(c) = self
                    .group_counters(group)
                    .and_then(|g| g.over_quota.as_ref())
                {
                    c.inc();
                }
                Err(GatewayError::QuotaExceeded {
                    group: group.name.clone(),
                    period: quota.limit.period.name(),
                    retry_after_secs,
                })
            }
            Ok(_) => Ok(()),
            Err(_) => Err(GatewayError::RateLimitUnavailable),
        }
    }

    /// Every limit must admit the request: the consumer group's, then the
    /// route's. The `RateLimit-*` headers describe the tightest limit (the
    /// fewest remaining tokens), or the one that refused.
    async fn check_rate_limits(
        &self,
        parts: &Parts,
        ex: &mut PolicyContext,
    ) -> Result<(), GatewayError> {
        let resolved = ex.resolved.clone();
        let group_limit = resolved
            .as_ref()
            .and_then(|c| c.group.as_ref())
            .and_then(|g| Some((g.limit.as_ref()?, self.group_counters(g)?.limited.as_ref()?)));
        let src = KeySource {
            client_ip: ex.client_ip,
            parts,
            consumer: ex.consumer.as_deref(),
            claims: ex.claims.as_deref(),
            resolved: resolved.as_deref(),
        };
        let limits = group_limit
            .into_iter()
            .chain(self.rate_limits.iter().map(|l| (&l.policy, &l.refused)));
        let mut tightest: Option<Verdict> = None;
        for (policy, refused) in limits {
            let verdict = match policy.check(&src).await {
                Ok(Outcome::Decided(v)) => v,
                Ok(Outcome::AllowedWithoutStore) => continue,
                Err(_) => return Err(GatewayError::RateLimitUnavailable),
            };
            if !verdict.allowed {
                refused.inc();
                set_rate_limit_headers(ex, &verdict);
                return Err(GatewayError::RateLimited {
                    policy: policy.name.clone(),
                    retry_after_secs: verdict.retry_after_secs,
                });
            }
            if tightest.is_none_or(|t| verdict.remaining < t.remaining) {
                tightest = Some(verdict);
            }
        }
        if let Some(v) = tightest {
            set_rate_limit_headers(ex, &v);
        }
        Ok(())
    }

    fn count_forbidden(&self) {
        if let Some(f) = &self.failures {
            f.forbidden.inc();
        }
    }

    async fn authenticate(
        &self,
        parts: &mut Parts,
        ex: &mut PolicyContext,
    ) -> Result<(), GatewayError> {
        // Identity headers are the gateway's to set: never the client's.
        parts.headers.remove(&X_CONSUMER_ID);
        for m in &self.auth {
            if let Some((_, tokens)) = m.token_policy() {
                for (_, h) in &tokens.forward_claims {
                    parts.headers.remove(h);
                }
            }
        }

        let mut worst: Option<Refusal> = None;
        let mut passed = false;
        for m in &self.auth {
            let result = match m {
                AuthMethod::ApiKey(set) => set.check(parts).map(|id| {
                    if let Ok(v) = HeaderValue::from_str(&id) {
                        parts.headers.insert(X_CONSUMER_ID.clone(), v);
                    }
                    self.resolve_consumer(Credential::ApiKey, &id, parts, ex);
                    ex.consumer = Some(id.to_string());
                }),
                AuthMethod::Basic(b) => b.check(parts).await.map(|user| {
                    if let Ok(v) = HeaderValue::from_str(&user) {
                        parts.headers.insert(X_CONSUMER_ID.clone(), v);
                    }
                    // The password is the gateway's to check, not the upstream's.
                    parts.headers.remove(http::header::AUTHORIZATION);
                    self.resolve_consumer(Credential::BasicUser, &user, parts, ex);
                    ex.consumer = Some(user.to_string());
                }),
                // JWT and introspection: a bearer-style token, verified.
                AuthMethod::Jwt(_) | AuthMethod::Introspection(_) => {
                    let Some((name, tokens)) = m.token_policy() else {
                        continue;
                    };
                    match tokens.find_token(parts) {
                        None => Err(AuthFailure::Missing),
                        Some((source, token)) => match m.verify_token(token).await {
                            Ok(v) => {
                                tokens.accept(parts, source, &v.claims);
                                if let Some(sub) = v.subject.as_deref() {
                                    self.resolve_consumer(Credential::Subject, sub, parts, ex);
                                }
                                ex.consumer = v.subject.as_deref().map(str::to_string);
                                ex.claims = Some(v.claims);
                                Ok(())
                            }
                            Err(JwtError::Failure(f)) => Err(f),
                            Err(JwtError::Unavailable) => {
                                let r = Refusal::Unavailable(name.clone());
                                worst = worst.max(Some(r));
                                continue;
                            }
                        },
                    }
                }
            };
            match result {
                Ok(()) => {
                    passed = true;
                    break;
                }
                Err(f) => worst = worst.max(Some(Refusal::Failure(f))),
            }
        }
        // Keys are never forwarded, whichever method passed.
        for m in &self.auth {
            if let AuthMethod::ApiKey(set) = m {
                parts.headers.remove(&set.header);
            }
        }
        if passed {
            return Ok(());
        }
        match worst {
            Some(Refusal::Unavailable(policy)) => Err(GatewayError::AuthUnavailable {
                policy: policy.to_string(),
            }),
            Some(Refusal::Failure(f)) => {
                if let Some(m) = &self.failures {
                    m.count(f);
                }
                self.challenge(f, ex);
                Err(GatewayError::Unauthorized(f))
            }
            None => {
                self.challenge(AuthFailure::Missing, ex);
                Err(GatewayError::Unauthorized(AuthFailure::Missing))
            }
        }
    }

    /// Looks the proven credential up in `consumers`: its consumer goes
    /// upstream in the consumer header and into `ex`.
    fn resolve_consumer(
        &self,
        kind: Credential,
        id: &str,
        parts: &mut Parts,
        ex: &mut PolicyContext,
    ) {
        let Some(c) = &self.consumers else {
            return;
        };
        if let Some(consumer) = c.directory.resolve(kind, id) {
            parts
                .headers
                .insert(c.directory.header.clone(), consumer.header.clone());
            ex.resolved = Some(consumer.clone());
        }
    }

    /// With Basic auth among the route's methods, the 401 names each Basic
    /// realm (and, with a JWT method too, the Bearer scheme), RFC 9110 §11.6.1.
    fn challenge(&self, failure: AuthFailure, ex: &mut PolicyContext) {
        if !self.auth.iter().any(|m| matches!(m, AuthMethod::Basic(_))) {
            return;
        }
        let name = http::header::WWW_AUTHENTICATE;
        for m in &self.auth {
            if let AuthMethod::Basic(b) = m {
                ex.response_headers
                    .append(name.clone(), b.challenge.clone());
            }
        }
        if self.auth.iter().any(|m| matches!(m, AuthMethod::Jwt(_))) {
            let bearer = match failure {
                AuthFailure::Missing => "Bearer",
                _ => "Bearer error=\"invalid_token\"",
            };
            ex.response_headers
                .append(name, HeaderValue::from_static(bearer));
        }
    }
}

/// A client error with its cause (hyper-util's own message says little:
/// "client error (Connect)").
pub(crate) fn client_error(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

/// Asks one external service. `Some` is its denial, to answer the client with.
async fn authorize(
    p: &external::External,
    parts: &mut Parts,
    ex: &PolicyContext,
) -> Result<Option<Response<Bytes>>, GatewayError> {
    // What the service may set upstream is the service's, never the client's.
    for name in &p.copy_to_upstream {
        parts.headers.remove(name);
    }
    match p.decide(parts, ex.client_ip, ex.body.as_ref()).await {
        external::Decision::Allow(headers) => {
            for (n, v) in headers {
                parts.headers.append(n, v);
            }
            Ok(None)
        }
        external::Decision::Deny {
            status,
            headers,
            body,
        } => Ok(Some(external::External::denial(status, &headers, &body))),
        external::Decision::Unavailable => match p.failure {
            schema::ExternalFailure::Allow => Ok(None),
            schema::ExternalFailure::Deny => Err(GatewayError::AuthUnavailable {
                policy: p.name.to_string(),
            }),
        },
    }
}

/// How a route's auth methods failed, least to most telling: a presented but
/// bad credential says more than a missing one, and keys we could not load are
/// our fault, not the client's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    Failure(AuthFailure),
    Unavailable(Arc<str>),
}

/// `require_claims` semantics: a string claim equals a wanted value or, split
/// on spaces (OAuth `scope`), contains one; an array contains one; numbers and
/// booleans compare by their text.
fn claim_holds(value: &Value, wanted: &[String]) -> bool {
    let scalar = |v: &Value, w: &str| match v {
        Value::String(s) => s == w,
        Value::Number(n) => n.to_string() == w,
        Value::Bool(b) => b.to_string() == w,
        _ => false,
    };
    wanted.iter().any(|w| match value {
        Value::String(s) => s == w || s.split(' ').any(|part| part == w),
        Value::Array(items) => items.iter().any(|v| scalar(v, w)),
        other => scalar(other, w),
    })
}

fn set_rate_limit_headers(ex: &mut PolicyContext, v: &Verdict) {
    let h = &mut ex.response_headers;
    h.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(v.limit));
    h.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(v.remaining));
    h.insert(RATELIMIT_RESET.clone(), HeaderValue::from(v.reset_secs));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_match_strings_scopes_arrays_any_of() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(claim_holds(
            &json!("users:read users:write"),
            &w(&["users:read"])
        ));
        assert!(!claim_holds(&json!("users:readx"), &w(&["users:read"])));
        assert!(claim_holds(
            &json!(["admin", "dev"]),
            &w(&["support", "admin"])
        ));
        assert!(!claim_holds(&json!(["dev"]), &w(&["support", "admin"])));
        assert!(claim_holds(&json!(42), &w(&["42"])));
        assert!(claim_holds(&json!(true), &w(&["true"])));
        assert!(!claim_holds(&json!({"a": 1}), &w(&["a"])));
    }

    #[test]
    fn refusals_rank_by_information() {
        let f = |a| Some(Refusal::Failure(a));
        assert!(f(AuthFailure::Invalid) > f(AuthFailure::Missing));
        assert!(f(AuthFailure::Expired) > f(AuthFailure::Invalid));
        assert!(Some(Refusal::Unavailable("p".into())) > f(AuthFailure::Expired));
    }
}
