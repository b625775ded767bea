//! The YAML file format, as serde types. Every struct rejects unknown keys; values
//! that need parsing (durations, sizes, rates) have their own types in `units`.
//! Nothing here is used on the request path: `compile` turns these into runtime
//! objects.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, Duration, QuotaLimit, Rate, StatusRange};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimit>,
    #[serde(default)]
    pub redis: Option<Redis>,
    #[serde(default)]
    pub cors: BTreeMap<String, Cors>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Idempotency-key policies by name (docs/reference/config.md, `idempotency`).
    #[serde(default)]
    pub idempotency: BTreeMap<String, Idempotency>,
    /// Span export settings (docs/reference/config.md, `tracing`).
    #[serde(default)]
    pub tracing: Option<Tracing>,
    /// Name servers for `dns` / `srv` targets (`ip` or `ip:port`); without
    /// it, those of /etc/resolv.conf.
    #[serde(default)]
    pub resolvers: Option<Vec<String>>,
    /// Who the authenticated credentials belong to (docs/reference/config.md,
    /// `consumers`).
    #[serde(default)]
    pub consumers: BTreeMap<String, Consumer>,
    /// The plans consumers are on: a rate limit and a calendar quota each.
    #[serde(default)]
    pub consumer_groups: BTreeMap<String, ConsumerGroup>,
    /// Response caches that routes store answers in (`cache.use`).
    #[serde(default)]
    pub caches: BTreeMap<String, Cache>,
}

/// `caches.<name>`: a memory tier, optionally backed by a shared Redis tier.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// The memory tier's bound: entries and their index.
    pub max_bytes: ByteSize,
    /// Larger responses stream through and are not stored.
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: ByteSize,
    #[serde(default)]
    pub redis: Option<CacheRedis>,
}

fn default_max_object_bytes() -> ByteSize {
    ByteSize(8 << 20)
}

/// `caches.<name>.redis`: the shared tier.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRedis {
    pub url: String,
    #[serde(default = "default_cache_prefix")]
    pub prefix: String,
    #[serde(default = "default_redis_timeout")]
    pub timeout: Duration,
}

fn default_cache_prefix() -> String {
    "tg:cache:".into()
}

/// A route's `cache:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCache {
    /// A key of `caches`.
    #[serde(rename = "use")]
    pub cache: String,
    /// The lifetime of a response that gives none; without it such a
    /// response is stored only to be revalidated.
    #[serde(default)]
    pub default_ttl: Option<Duration>,
    /// `host`, `path`, `query`, `header:<name>`; the method is always part of it.
    #[serde(default = "default_cache_key")]
    pub key: Vec<String>,
    #[serde(default)]
    pub stale_while_revalidate: Option<Duration>,
    #[serde(default)]
    pub stale_if_error: Option<Duration>,
}

fn default_cache_key() -> Vec<String> {
    vec!["host".into(), "path".into(), "query".into()]
}

/// `tracing:` — W3C trace context is always propagated; this section only
/// configures OpenTelemetry span export (cargo feature `otel`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// OTLP/HTTP collector URL (`/v1/traces` appended unless present).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces (requests without a sampled parent decision)
    /// that are recorded, 0 to 1; default 1. A client's `traceparent` decides
    /// for its own trace.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    /// `http/protobuf` (the default) or `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_protocol: Option<String>,
    /// Headers sent with every export (a collector's credentials).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub otlp_headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_listeners")]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub path_normalization: PathNormalization,
    /// The request header that carries the resolved consumer's name upstream.
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
}

fn default_consumer_header() -> String {
    "X-Consumer".into()
}

/// `server.path_normalization`: how a request path is put in its one canonical
/// spelling before routing (docs/reference/path-normalization.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathNormalization {
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    #[serde(default = "yes")]
    pub merge_slashes: bool,
}

impl Default for PathNormalization {
    fn default() -> Self {
        PathNormalization {
            escaped_slashes: EscapedSlashes::default(),
            merge_slashes: true,
        }
    }
}

/// What an encoded slash or backslash (`%2F`, `%5C`, a raw `\`) in a path does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// 400 `bad_request`.
    #[default]
    Reject,
    /// Kept as an escape (uppercased): part of a segment, never a separator.
    Keep,
    /// Decoded to `/`: a segment separator like any other.
    Decode,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listeners: default_listeners(),
            admin: None,
            limits: Limits::default(),
            shutdown_grace: default_shutdown_grace(),
            trusted_proxies: Vec::new(),
            path_normalization: PathNormalization::default(),
            consumer_header: default_consumer_header(),
        }
    }
}

fn default_listeners() -> Vec<Listener> {
    vec![Listener {
        name: "http".into(),
        bind: "0.0.0.0:8080".into(),
        tls: None,
        redirect_to_https: false,
        proxy_protocol: None,
    }]
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub bind: String,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Answer every request on this (plain) listener with a redirect to https.
    #[serde(default)]
    pub redirect_to_https: bool,
    /// Read a PROXY protocol header (v1 or v2) before anything else.
    #[serde(default)]
    pub proxy_protocol: Option<ListenerProxyProtocol>,
}

/// `server.listeners[].proxy_protocol`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerProxyProtocol {
    /// The balancers allowed to send the header (IPs or CIDRs).
    pub trusted: Vec<String>,
    /// How long the header may take (default: `limits.header_read_timeout`).
    #[serde(default)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub certificates: Vec<Certificate>,
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub alpn: Option<Vec<String>>,
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    pub ca: String,
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub bind: String,
    /// When set, every admin endpoint but `/healthz`, `/readyz` and the
    /// dashboard's static files needs `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: ByteSize,
    pub max_body_bytes: ByteSize,
    pub header_read_timeout: Duration,
    /// How long a request body may go without sending a byte.
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent_requests: usize,
    /// The most an HTTP/1 connection's read buffer grows to; unset: 256 KiB,
    /// or twice `max_header_bytes` when that is more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_buffer: Option<ByteSize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: ByteSize(32 * 1024),
            max_body_bytes: ByteSize(10 * 1024 * 1024),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_concurrent_requests: 0,
            read_buffer: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub targets: Vec<Target>,
    #[serde(default = "default_balance")]
    pub balance: String,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    #[serde(default)]
    pub pool: Pool,
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Passive health: eject targets that fail real traffic.
    #[serde(default)]
    pub outlier: Option<Outlier>,
    /// A target that joins ramps from 10 % to its full weight over this time.
    #[serde(default)]
    pub slow_start: Option<Duration>,
    /// Skip a target that answers 503 or 429 with `Retry-After`.
    #[serde(default)]
    pub retry_after: Option<RetryAfter>,
}

/// `routes[].websocket`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocket {
    /// The largest message (all its frames' payloads) either side may send.
    #[serde(default)]
    pub max_message_bytes: Option<ByteSize>,
    /// Overrides `server.limits.idle_timeout` for the tunnels.
    #[serde(default)]
    pub idle_timeout: Option<Duration>,
}

/// `upstreams.<name>.retry_after`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryAfter {
    /// The longest a target is skipped for, whatever it asked.
    #[serde(default = "default_retry_after_max")]
    pub max: Duration,
}

fn default_retry_after_max() -> Duration {
    Duration::from_secs(30)
}

/// `upstreams.<name>.outlier`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    #[serde(default = "default_outlier_5xx")]
    pub consecutive_5xx: u32,
    #[serde(default = "default_outlier_connect")]
    pub consecutive_connect_errors: u32,
    #[serde(default = "default_open_for")]
    pub base_ejection: Duration,
    #[serde(default = "default_outlier_percent")]
    pub max_ejection_percent: u32,
}

fn default_outlier_5xx() -> u32 {
    5
}
fn default_outlier_connect() -> u32 {
    3
}
fn default_outlier_percent() -> u32 {
    50
}

fn default_balance() -> String {
    "round_robin".into()
}

fn default_protocol() -> String {
    "http1".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A fixed target: `http(s)://host:port`.
    #[serde(default)]
    pub url: Option<String>,
    /// Discovered targets: every A/AAAA address of `host:port`.
    #[serde(default)]
    pub dns: Option<String>,
    /// Discovered targets: the SRV records of a name (priority, weight, port).
    #[serde(default)]
    pub srv: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// How often `dns` / `srv` is looked up again (shorter when the records'
    /// TTL is).
    #[serde(default)]
    pub refresh: Option<Duration>,
    /// How long an empty answer keeps the last addresses.
    #[serde(default)]
    pub keep_stale: Option<Duration>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub request: Duration,
    pub idle: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(30),
            idle: Duration::from_secs(90),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pool {
    pub max_idle_per_target: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            max_idle_per_target: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "default_hc_interval")]
    pub interval: Duration,
    #[serde(default = "default_hc_timeout")]
    pub timeout: Duration,
    #[serde(default = "default_threshold_2")]
    pub healthy_threshold: u32,
    #[serde(default = "default_threshold_3")]
    pub unhealthy_threshold: u32,
    #[serde(default)]
    pub expect_status: Option<StatusRange>,
    /// When every target is unhealthy, send traffic to all of
    /// them anyway instead of answering 503 `no_healthy_upstream`.
    #[serde(default)]
    pub fail_open: bool,
}

fn default_hc_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_threshold_2() -> u32 {
    2
}
fn default_threshold_3() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default)]
    pub failure_statuses: Option<Vec<u16>>,
    #[serde(default = "default_open_for")]
    pub open_for: Duration,
    #[serde(default = "default_half_open")]
    pub half_open_max_requests: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_open_for() -> Duration {
    Duration::from_secs(30)
}
fn default_half_open() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default)]
    pub on: Option<Vec<RetryOn>>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub backoff: Option<Duration>,
    #[serde(default)]
    pub budget_percent: Option<u32>,
}

/// A retry condition: a named outcome (`connect_error`) or a status, written
/// bare (`503`) or quoted.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RetryOn {
    Status(u16),
    Name(String),
}

impl std::fmt::Display for RetryOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryOn::Status(s) => write!(f, "{s}"),
            RetryOn::Name(n) => f.write_str(n),
        }
    }
}

fn default_attempts() -> u32 {
    2
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default)]
    pub jwt: BTreeMap<String, JwtPolicy>,
    #[serde(default)]
    pub api_keys: BTreeMap<String, ApiKeySet>,
    /// HTTP Basic authentication against htpasswd files.
    #[serde(default)]
    pub basic: BTreeMap<String, BasicAuth>,
    /// Opaque OAuth2 tokens checked at the issuer (RFC 7662).
    #[serde(default)]
    pub introspection: BTreeMap<String, Introspection>,
    /// Authorization services of the user's own (`ext_authz`, `forwardAuth`).
    #[serde(default)]
    pub external: BTreeMap<String, External>,
}

/// `auth.external.<name>`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct External {
    /// Asked with `GET` for every request of the routes that use it.
    pub url: String,
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Request headers sent along.
    #[serde(default = "default_send_headers")]
    pub send_headers: Vec<String>,
    /// Send the request body too, up to this size (0: never). The route then
    /// takes no larger body (413), so the service judges all of it.
    #[serde(default)]
    pub send_body: ByteSize,
    /// Headers of a 2xx answer set on the upstream request.
    #[serde(default)]
    pub copy_to_upstream: Vec<String>,
    /// Headers of a denial passed to the client with its status and body.
    #[serde(default)]
    pub copy_to_client_on_deny: Vec<String>,
    /// What no answer means.
    #[serde(default)]
    pub failure: ExternalFailure,
    #[serde(default)]
    pub cache: Option<ExternalCache>,
}

fn default_send_headers() -> Vec<String> {
    ["authorization", "cookie", "x-request-id"]
        .map(String::from)
        .to_vec()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExternalFailure {
    /// 503 `auth_unavailable`.
    #[default]
    Deny,
    /// Forward as if allowed.
    Allow,
}

/// `auth.external.<name>.cache`: decisions reused for `ttl` per `key`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalCache {
    /// `header:<name>`, `method`, `path`.
    pub key: Vec<String>,
    pub ttl: Duration,
}

/// `auth.introspection.<name>`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    /// The introspection endpoint.
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    /// How the gateway authenticates to the endpoint.
    #[serde(default)]
    pub auth_method: IntrospectionAuth,
    /// How long an active token's answer is reused (never past its `exp`).
    #[serde(default)]
    pub cache_ttl: Option<Duration>,
    /// How long an inactive token's answer is reused.
    #[serde(default)]
    pub negative_ttl: Option<Duration>,
    /// Deadline of one call to the endpoint.
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub token_from: Option<Vec<String>>,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    #[serde(default)]
    pub strip_token: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IntrospectionAuth {
    /// `Authorization: Basic` with the client id and secret (RFC 6749 2.3.1).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// `auth.basic.<name>`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// `user:hash` lines, bcrypt or argon2; read at every (re)load.
    pub htpasswd: String,
    /// The `realm` of the `WWW-Authenticate: Basic` challenge.
    #[serde(default)]
    pub realm: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtPolicy {
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// Required, except with `discovery` (then the provider's list).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Keys (and algorithms) from `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub jwks_refresh: Option<Duration>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub leeway: Option<Duration>,
    #[serde(default)]
    pub token_from: Option<Vec<String>>,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    #[serde(default)]
    pub strip_token: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySet {
    #[serde(default = "default_api_key_header")]
    pub header: String,
    pub keys: Vec<ApiKey>,
}

fn default_api_key_header() -> String {
    "X-API-Key".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub id: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rate: Rate,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default = "default_rl_key")]
    pub key: String,
    #[serde(default = "default_rl_store")]
    pub store: String,
    #[serde(default = "default_on_store_error")]
    pub on_store_error: String,
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_rl_key() -> String {
    "client_ip".into()
}
fn default_rl_store() -> String {
    "local".into()
}
fn default_on_store_error() -> String {
    "allow".into()
}
fn default_max_keys() -> usize {
    100_000
}

/// `consumers.<name>`: the credentials that identify one consumer. Each
/// credential belongs to at most one consumer.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    #[serde(default)]
    pub group: Option<String>,
    /// Ids of keys in `auth.api_keys` sets.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// `sub` of tokens verified by a JWT or introspection policy.
    #[serde(default)]
    pub jwt_subjects: Vec<String>,
    /// Users of `auth.basic` htpasswd files.
    #[serde(default)]
    pub basic_users: Vec<String>,
}

/// `consumer_groups.<name>`: a plan, applied to the group's consumers on
/// every route that authenticates them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerGroup {
    #[serde(default)]
    pub rate_limit: Option<GroupRateLimit>,
    #[serde(default)]
    pub quota: Option<GroupQuota>,
}

/// A group's token bucket: a `rate_limits` policy whose key defaults to the
/// consumer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRateLimit {
    pub rate: Rate,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default = "default_group_key")]
    pub key: String,
    #[serde(default = "default_rl_store")]
    pub store: String,
    #[serde(default = "default_on_store_error")]
    pub on_store_error: String,
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

impl GroupRateLimit {
    /// The same bucket as a `rate_limits` policy.
    pub fn as_policy(&self) -> RateLimit {
        RateLimit {
            rate: self.rate,
            burst: self.burst,
            key: self.key.clone(),
            store: self.store.clone(),
            on_store_error: self.on_store_error.clone(),
            max_keys: self.max_keys,
        }
    }
}

fn default_group_key() -> String {
    "consumer".into()
}

/// A group's calendar quota: `1000000/month`, or the map form with its key
/// and store-error policy. Counted in Redis.
#[derive(Debug, Clone, Serialize)]
pub struct GroupQuota {
    pub limit: QuotaLimit,
    /// `consumer` (each consumer its own count) or `consumer_group` (one
    /// count for the whole group).
    pub key: String,
    pub on_store_error: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupQuotaMap {
    limit: QuotaLimit,
    #[serde(default = "default_group_key")]
    key: String,
    #[serde(default = "default_on_store_error")]
    on_store_error: String,
}

impl<'de> Deserialize<'de> for GroupQuota {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = GroupQuota;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a quota like 1000000/month, or `{limit, key, on_store_error}`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GroupQuota, E> {
                Ok(GroupQuota {
                    limit: v.parse().map_err(E::custom)?,
                    key: default_group_key(),
                    on_store_error: default_on_store_error(),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<GroupQuota, A::Error> {
                let m =
                    GroupQuotaMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(GroupQuota {
                    limit: m.limit,
                    key: m.key,
                    on_store_error: m.on_store_error,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    pub url: String,
    #[serde(default = "default_redis_timeout")]
    pub timeout: Duration,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

/// One `idempotency` policy: where keys live and how long answers are kept.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Idempotency {
    /// `memory` (one instance) or `redis` (shared by every instance).
    #[serde(default = "default_idem_store")]
    pub store: String,
    #[serde(default)]
    pub redis: Option<IdempotencyRedis>,
    /// How long a finished answer is replayed.
    #[serde(default = "default_idem_ttl")]
    pub ttl: Duration,
    /// How long a key stays taken by a request in flight (crash safety).
    #[serde(default = "default_idem_lock_timeout")]
    pub lock_timeout: Duration,
    /// Unsafe requests without a key are refused (400).
    #[serde(default)]
    pub required: bool,
    /// Larger answers are forwarded but not stored.
    #[serde(default = "default_idem_max_response")]
    pub max_response_bytes: ByteSize,
    /// `reject` (503) or `pass` (forward without the guarantee).
    #[serde(default = "default_idem_on_store_error")]
    pub on_store_error: String,
    /// `store: memory` only: the bound of the whole store.
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

/// Where a `store: redis` policy keeps its keys; `url` and `timeout` default
/// to the top-level `redis` section's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyRedis {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_idem_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub timeout: Option<Duration>,
}

impl Default for IdempotencyRedis {
    /// A policy without a `redis:` map: what an empty one means.
    fn default() -> Self {
        IdempotencyRedis {
            url: None,
            prefix: default_idem_prefix(),
            timeout: None,
        }
    }
}

fn default_idem_store() -> String {
    "memory".into()
}
fn default_idem_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_idem_lock_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idem_max_response() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_idem_on_store_error() -> String {
    "reject".into()
}
fn default_idem_prefix() -> String {
    "tg:idem:".into()
}
/// The memory store's bound when `max_bytes` is not set.
pub const DEFAULT_IDEMPOTENCY_MEMORY: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_methods: Option<Vec<String>>,
    #[serde(default)]
    pub allow_headers: Option<Vec<String>>,
    #[serde(default)]
    pub expose_headers: Option<Vec<String>>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default)]
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Match,
    #[serde(default)]
    pub upstream: Option<RouteUpstream>,
    #[serde(default)]
    pub respond: Option<Respond>,
    /// Answer with a redirect instead of proxying.
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Copy requests to a shadow upstream.
    #[serde(default)]
    pub mirror: Option<Mirror>,
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Overrides `server.limits.max_body_bytes` for this route.
    #[serde(default)]
    pub max_body_bytes: Option<ByteSize>,
    /// Overrides `server.limits.body_read_timeout` for this route.
    #[serde(default)]
    pub body_read_timeout: Option<Duration>,
    /// Limits of the WebSocket tunnels this route opens.
    #[serde(default)]
    pub websocket: Option<WebSocket>,
    #[serde(default)]
    pub auth: Option<Vec<String>>,
    #[serde(default)]
    pub require_claims: Option<BTreeMap<String, StringOrList>>,
    #[serde(default)]
    pub rate_limit: Option<Vec<String>>,
    #[serde(default)]
    pub cors: Option<String>,
    #[serde(default)]
    pub ip_allow: Option<Vec<String>>,
    #[serde(default)]
    pub ip_deny: Option<Vec<String>>,
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub compress: Option<Vec<String>>,
    /// The `idempotency` policy of this route.
    #[serde(default)]
    pub idempotency: Option<String>,
    /// Response caching through one of `caches` (RFC 9111).
    #[serde(default)]
    pub cache: Option<RouteCache>,
    #[serde(default)]
    pub request_headers: HeaderOps,
    #[serde(default)]
    pub response_headers: HeaderOps,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderMatch>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Exact cookie values.
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
}

/// A `match.headers` condition: an exact value, `{present: bool}` or `{regex: …}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum HeaderMatch {
    Exact(String),
    Present { present: bool },
    Regex { regex: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderCondition {
    #[serde(default)]
    present: Option<bool>,
    #[serde(default)]
    regex: Option<String>,
}

impl<'de> Deserialize<'de> for HeaderMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = HeaderMatch;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a header value, `{present: true|false}` or `{regex: PATTERN}`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HeaderMatch, E> {
                Ok(HeaderMatch::Exact(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HeaderMatch, E> {
                Ok(HeaderMatch::Exact(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HeaderMatch, E> {
                Ok(HeaderMatch::Exact(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<HeaderMatch, A::Error> {
                let c = HeaderCondition::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                match (c.present, c.regex) {
                    (Some(present), None) => Ok(HeaderMatch::Present { present }),
                    (None, Some(regex)) => Ok(HeaderMatch::Regex { regex }),
                    _ => Err(serde::de::Error::custom(
                        "give exactly one of `present: true|false` or `regex: PATTERN`",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A route's `upstream`: one upstream by name, or a weighted split.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RouteUpstream {
    Name(String),
    Split(Split),
}

impl RouteUpstream {
    /// The upstream names this route sends to.
    pub fn names(&self) -> Vec<&str> {
        match self {
            RouteUpstream::Name(n) => vec![n.as_str()],
            RouteUpstream::Split(s) => s.split.iter().map(|s| s.upstream.as_str()).collect(),
        }
    }
}

impl<'de> Deserialize<'de> for RouteUpstream {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RouteUpstream;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an upstream name, or `{split: [{upstream, weight}, …], sticky}`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RouteUpstream, E> {
                Ok(RouteUpstream::Name(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RouteUpstream, A::Error> {
                Split::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RouteUpstream::Split)
            }
        }
        d.deserialize_any(V)
    }
}

/// `upstream: {split: […], sticky: …}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub split: Vec<SplitSide>,
    /// `cookie:<name>`, `header:<name>` or `none`.
    #[serde(default)]
    pub sticky: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSide {
    pub upstream: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// `mirror:`: copies of a route's requests to a shadow upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub upstream: String,
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
    #[serde(default = "default_mirror_max_body")]
    pub max_body: ByteSize,
    #[serde(default = "default_mirror_in_flight")]
    pub max_in_flight: usize,
}

fn default_mirror_percent() -> f64 {
    100.0
}
fn default_mirror_max_body() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_mirror_in_flight() -> usize {
    256
}

/// `redirect:`: the route answers with a redirect built from the request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    #[serde(default)]
    pub strip_query: bool,
}

fn default_redirect_status() -> u16 {
    301
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    #[serde(default = "default_respond_status")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_respond_status() -> u16 {
    200
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub replace_prefix: Option<ReplacePrefix>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_regex: Option<PathRegex>,
}

/// `rewrite.path_regex`: every match of `pattern` in the path replaced by
/// `replace` (`$1`, `${1}`, `${name}`, `$$`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathRegex {
    pub pattern: String,
    pub replace: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplacePrefix {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `scope: users:read` or `role: [admin, support]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}
