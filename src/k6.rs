//! `tollgate k6`: a k6 script with one scenario per route. Each scenario's
//! request is synthesized from the route's matchers (a path regex or header
//! regex is sampled) and then routed by the gateway's own router, so the script
//! never claims a route it cannot reach; a route that cannot be reached is a
//! comment in the script and an entry of `Script::skipped`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::str::FromStr;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex_syntax::hir::{Class, Hir, HirKind};
use serde_json::{Value, json};

use crate::config::schema::{Config, Route as RouteConfig, StringOrList};
use crate::config::values::TokenSource;
use crate::normalize::path::normalize;
use crate::router::{HeaderCond, PathSpec, RequestView, RouteSpec};
use crate::snapshot::{Action, Snapshot};

/// Test credentials from the command line, by provider name.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// `auth.api_keys.<set>` -> the key to send.
    pub api_keys: BTreeMap<String, String>,
    /// `auth.basic.<name>` -> (user, password).
    pub basic: BTreeMap<String, (String, String)>,
    /// `auth.jwt.<policy>` -> a token to send as is.
    pub jwt: BTreeMap<String, String>,
    /// `auth.jwt.<policy>` -> a PEM private key to sign tokens with.
    pub jwt_keys: BTreeMap<String, Vec<u8>>,
    /// `auth.jwt.<policy>` names whose HS* `secret` in the config signs tokens.
    pub mint: BTreeSet<String>,
    /// `auth.introspection.<name>` -> an opaque token the server knows as active.
    pub introspection: BTreeMap<String, String>,
}

/// How the scenarios run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub vus: u32,
    pub duration: std::time::Duration,
    /// How long a minted token stays valid.
    pub token_ttl: std::time::Duration,
    /// Where the config came from (named in the script's first line).
    pub source: String,
    /// Seconds since the epoch, for minted tokens' `iat` and `exp`.
    pub now: u64,
}

/// The generated script, and the routes it leaves out with the reason.
#[derive(Debug)]
pub struct Script {
    pub text: String,
    pub scenarios: usize,
    pub skipped: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum K6Error {
    #[error("{flag} {name}: the config has no `auth.{section}.{name}`{known}")]
    UnknownProvider {
        flag: &'static str,
        section: &'static str,
        name: String,
        known: String,
    },
    #[error("{flag} {name}: {reason}")]
    BadCredential {
        flag: &'static str,
        name: String,
        reason: String,
    },
    #[error("no route can be exercised:\n{0}")]
    NothingToRun(String),
}

/// Checks that every credential names a provider of the right kind, and that
/// keys and secrets can sign; the error says which flag is wrong.
pub fn check_credentials(cfg: &Config, creds: &Credentials) -> Result<(), K6Error> {
    let unknown = |flag, section, name: &str, known: Vec<&String>| K6Error::UnknownProvider {
        flag,
        section,
        name: name.to_owned(),
        known: if known.is_empty() {
            format!(" (it has no `auth.{section}` at all)")
        } else {
            let names: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
            format!(" (it has: {})", names.join(", "))
        },
    };
    let jwt = || cfg.auth.jwt.keys().collect::<Vec<_>>();
    let given: [(&'static str, &'static str, Vec<&String>, Vec<&String>); 6] = [
        (
            "--api-key",
            "api_keys",
            creds.api_keys.keys().collect(),
            cfg.auth.api_keys.keys().collect(),
        ),
        (
            "--basic",
            "basic",
            creds.basic.keys().collect(),
            cfg.auth.basic.keys().collect(),
        ),
        (
            "--token",
            "introspection",
            creds.introspection.keys().collect(),
            cfg.auth.introspection.keys().collect(),
        ),
        ("--jwt", "jwt", creds.jwt.keys().collect(), jwt()),
        ("--jwt-key", "jwt", creds.jwt_keys.keys().collect(), jwt()),
        ("--mint-jwt", "jwt", creds.mint.iter().collect(), jwt()),
    ];
    for (flag, section, names, known) in given {
        if let Some(name) = names.into_iter().find(|n| !known.contains(n)) {
            return Err(unknown(flag, section, name, known));
        }
    }
    // Sign once now, so that a bad key or an unusable secret is an error here.
    for name in creds.jwt_keys.keys().chain(&creds.mint) {
        signer(cfg, creds, name)?;
    }
    Ok(())
}

/// What a scenario expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exactly this status.
    Status(u16),
    /// Proxied: an answer below 500 that is none of 401, 403, 404.
    Upstream,
    /// An external authorization service decides: any answer below 500
    /// (it may redirect or refuse), but not the gateway's 503.
    Decided,
}

/// One synthesized request.
#[derive(Debug, Clone)]
struct Probe {
    method: Method,
    host: String,
    /// Path and query as sent.
    target: String,
    /// The target without a credential in its query (for comments).
    shown: String,
    /// Headers from the matchers (cookies included), in order.
    headers: Vec<(HeaderName, String)>,
}

/// How many different requests are tried per route before giving up.
const ATTEMPTS: u64 = 48;

/// The host sent to routes without `hosts`: a name no host pattern of the
/// config matches (a digit is appended until none does).
const NEUTRAL_HOST: &str = "tollgate-k6.test";

pub fn generate(
    snap: &Snapshot,
    cfg: &Config,
    creds: &Credentials,
    settings: &Settings,
) -> Result<Script, K6Error> {
    check_credentials(cfg, creds)?;
    let neutral = neutral_host(snap);
    let mut entries = Vec::new();
    let mut comments = Vec::new();
    let mut skipped = Vec::new();
    let mut used_names = BTreeSet::new();
    for (i, spec) in snap.router.specs().iter().enumerate() {
        let raw = &cfg.routes[i];
        let (cred, cred_note) = credential_for(cfg, creds, raw, settings)?;
        let probe = match synthesize(snap, i, spec, &neutral, &cred) {
            Ok(p) => p,
            Err(reason) => {
                comments.push(format!(
                    "// route {}: not exercised: {}",
                    comment_text(&spec.name),
                    comment_text(&reason)
                ));
                skipped.push((spec.name.clone(), reason));
                continue;
            }
        };
        let (expect, why) = expectation(snap, i, raw, &cred, &cred_note);
        let scenario = unique_name(&spec.name, &mut used_names);
        let exec = format!("route_{i}_{scenario}");
        // A rate-limited route gets one request: more could be refused (429)
        // by the very limit the config asks for.
        let rate_limited = raw.rate_limit.as_ref().is_some_and(|r| !r.is_empty())
            || (raw.auth.as_ref().is_some_and(|a| !a.is_empty())
                && !cfg.consumers.is_empty()
                && cfg
                    .consumer_groups
                    .values()
                    .any(|g| g.rate_limit.is_some() || g.quota.is_some()));
        let idempotency_key = raw.idempotency.is_some() && !is_safe(&probe.method);
        let mut headers = serde_json::Map::new();
        for (name, value) in probe.headers.iter().chain(&cred.headers) {
            headers.insert(name.as_str().to_owned(), Value::from(value.as_str()));
        }
        let mut notes = vec![why];
        if rate_limited {
            notes.push("rate-limited: one request".to_owned());
        }
        if raw.ip_allow.is_some() || raw.ip_deny.is_some() {
            notes.push("has IP rules: the k6 host's address must pass them".to_owned());
        }
        comments.push(format!(
            "// route {}: {} {} (host {}) -> {}",
            comment_text(&spec.name),
            probe.method,
            comment_text(&probe.shown),
            comment_text(&probe.host),
            comment_text(&notes.join("; "))
        ));
        entries.push(json!({
            "route": spec.name,
            "scenario": scenario,
            "exec": exec,
            "method": probe.method.as_str(),
            "host": probe.host,
            "target": probe.target,
            "headers": headers,
            "idempotency_key": idempotency_key,
            "expect": match expect {
                Expect::Status(s) => json!({ "status": s }),
                Expect::Upstream => json!({ "upstream": true }),
                Expect::Decided => json!({ "decided": true }),
            },
            "single": rate_limited,
        }));
    }
    if entries.is_empty() {
        let list: Vec<String> = skipped.iter().map(|(n, r)| format!("  {n}: {r}")).collect();
        return Err(K6Error::NothingToRun(if list.is_empty() {
            "  the config has no routes".to_owned()
        } else {
            list.join("\n")
        }));
    }
    let text = render(cfg, settings, &entries, &comments, &skipped);
    Ok(Script {
        text,
        scenarios: entries.len(),
        skipped,
    })
}

fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A k6 scenario name and JS identifier part: letters, digits and `_`.
fn unique_name(route: &str, used: &mut BTreeSet<String>) -> String {
    let mut base: String = route
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if base.is_empty() {
        base.push('r');
    }
    let mut name = base.clone();
    let mut n = 2;
    while !used.insert(name.clone()) {
        name = format!("{base}_{n}");
        n += 1;
    }
    name
}

/// Text safe inside a `//` comment: one line, no control characters.
fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn neutral_host(snap: &Snapshot) -> String {
    let taken = |h: &str| {
        snap.router.specs().iter().any(|s| {
            s.hosts.iter().any(|p| {
                let p = p.trim().trim_end_matches('.').to_ascii_lowercase();
                match p.strip_prefix('*') {
                    Some(suffix) => h.ends_with(suffix),
                    None => p == h,
                }
            })
        })
    };
    let mut host = NEUTRAL_HOST.to_owned();
    let mut n = 1;
    while taken(&host) {
        host = format!("tollgate-k6-{n}.test");
        n += 1;
    }
    host
}

/// The credential a route's request carries, or none.
#[derive(Debug, Clone, Default)]
struct Credential {
    /// `jwt:main`, `api_key:partners`, …: the `auth` entry it satisfies.
    entry: Option<String>,
    is_jwt: bool,
    headers: Vec<(HeaderName, String)>,
    /// Query parameters (`token_from: [query:…]`), already encoded.
    query: Vec<String>,
}

/// Picks the credential for a route: with `require_claims`, a JWT first
/// (other credentials carry no claims); else the first `auth` entry given one.
fn credential_for(
    cfg: &Config,
    creds: &Credentials,
    raw: &RouteConfig,
    settings: &Settings,
) -> Result<(Credential, String), K6Error> {
    let Some(entries) = raw.auth.as_ref().filter(|a| !a.is_empty()) else {
        return Ok((Credential::default(), String::new()));
    };
    let wants_claims = raw.require_claims.as_ref().is_some_and(|c| !c.is_empty());
    let mut order: Vec<&String> = entries.iter().collect();
    if wants_claims {
        order.sort_by_key(|e| !e.starts_with("jwt:"));
    }
    for entry in order {
        let Some((kind, name)) = entry.split_once(':') else {
            continue;
        };
        let found = match kind {
            "api_key" => creds.api_keys.get(name).and_then(|key| {
                let set = cfg.auth.api_keys.get(name)?;
                let header = HeaderName::from_bytes(set.header.as_bytes()).ok()?;
                Some(Credential {
                    headers: vec![(header, key.clone())],
                    ..Credential::default()
                })
            }),
            "basic" => creds.basic.get(name).map(|(user, pass)| {
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                Credential {
                    headers: vec![(http::header::AUTHORIZATION, format!("Basic {encoded}"))],
                    ..Credential::default()
                }
            }),
            "jwt" => {
                let token = if let Some(t) = creds.jwt.get(name) {
                    Some(t.clone())
                } else if creds.jwt_keys.contains_key(name) || creds.mint.contains(name) {
                    Some(mint(cfg, creds, name, raw, settings)?)
                } else {
                    None
                };
                match (token, cfg.auth.jwt.get(name)) {
                    (Some(token), Some(policy)) => {
                        Some(token_credential(policy.token_from.as_deref(), token))
                    }
                    _ => None,
                }
            }
            "introspection" => match (
                creds.introspection.get(name),
                cfg.auth.introspection.get(name),
            ) {
                (Some(token), Some(policy)) => Some(token_credential(
                    policy.token_from.as_deref(),
                    token.clone(),
                )),
                _ => None,
            },
            _ => None,
        };
        if let Some(mut c) = found {
            let how = match kind {
                "jwt" if creds.jwt.contains_key(name) => "the token given with --jwt",
                "jwt" if creds.jwt_keys.contains_key(name) => "a token signed with --jwt-key",
                "jwt" => "a token minted from the config's secret",
                "api_key" => "the key given with --api-key",
                "introspection" => "the token given with --token",
                _ => "the password given with --basic",
            };
            c.entry = Some(entry.clone());
            // Both carry claims for require_claims.
            c.is_jwt = kind == "jwt" || kind == "introspection";
            return Ok((c, format!("{entry} with {how}")));
        }
    }
    Ok((Credential::default(), String::new()))
}

/// A bearer-style token placed where the policy's `token_from` looks first.
fn token_credential(token_from: Option<&[String]>, token: String) -> Credential {
    let source = token_from
        .and_then(|s| s.first())
        .and_then(|s| TokenSource::from_str(s).ok())
        .unwrap_or(TokenSource::Bearer);
    let mut c = Credential::default();
    match source {
        TokenSource::Bearer => c
            .headers
            .push((http::header::AUTHORIZATION, format!("Bearer {token}"))),
        TokenSource::Header(name) => c.headers.push((name, token)),
        TokenSource::Query(name) => c.query.push(format!(
            "{}={}",
            encode_component(&name),
            encode_component(&token)
        )),
        TokenSource::Cookie(name) => c
            .headers
            .push((http::header::COOKIE, format!("{name}={token}"))),
    }
    c
}

/// A signing key and algorithm for a JWT policy, from `--jwt-key` or the
/// config's secret (`--mint-jwt`).
fn signer(
    cfg: &Config,
    creds: &Credentials,
    name: &str,
) -> Result<(jsonwebtoken::Algorithm, jsonwebtoken::EncodingKey), K6Error> {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let bad = |flag, reason: String| K6Error::BadCredential {
        flag,
        name: name.to_owned(),
        reason,
    };
    let Some(policy) = cfg.auth.jwt.get(name) else {
        return Err(bad("--jwt-key", "no such JWT policy".into()));
    };
    let algs: Vec<Algorithm> = policy
        .algorithms
        .iter()
        .filter_map(|a| Algorithm::from_str(a).ok())
        .collect();
    if let Some(pem) = creds.jwt_keys.get(name) {
        let mut tried = Vec::new();
        for alg in &algs {
            let key = match alg {
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem),
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
                _ => continue,
            };
            match key {
                Ok(key) => return Ok((*alg, key)),
                Err(e) => tried.push(format!("{alg:?}: {e}")),
            }
        }
        return Err(bad(
            "--jwt-key",
            if tried.is_empty() {
                format!(
                    "the policy allows no public-key algorithm ({})",
                    policy.algorithms.join(", ")
                )
            } else {
                format!(
                    "the key fits none of the policy's algorithms ({})",
                    tried.join("; ")
                )
            },
        ));
    }
    let hs = algs
        .iter()
        .find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
    match (hs, &policy.secret) {
        (Some(alg), Some(secret)) => Ok((*alg, EncodingKey::from_secret(secret.as_bytes()))),
        _ => Err(bad(
            "--mint-jwt",
            "only a policy with a `secret` and an HS* algorithm can be minted for; \
             give --jwt-key or --jwt"
                .into(),
        )),
    }
}

/// A token the route's JWT policy accepts: its issuer, its first audience,
/// the route's required claims, valid for `settings.token_ttl`.
fn mint(
    cfg: &Config,
    creds: &Credentials,
    name: &str,
    raw: &RouteConfig,
    settings: &Settings,
) -> Result<String, K6Error> {
    let (alg, key) = signer(cfg, creds, name)?;
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), "tollgate-k6".into());
    claims.insert("iat".into(), settings.now.into());
    claims.insert(
        "exp".into(),
        (settings.now + settings.token_ttl.as_secs()).into(),
    );
    if let Some(policy) = cfg.auth.jwt.get(name) {
        if let Some(iss) = &policy.issuer {
            claims.insert("iss".into(), iss.clone().into());
        }
        if let Some(aud) = policy.audiences.as_ref().and_then(|a| a.first()) {
            claims.insert("aud".into(), aud.clone().into());
        }
    }
    for (claim, wanted) in raw.require_claims.iter().flatten() {
        let value = match wanted {
            StringOrList::One(v) => Some(v.clone()),
            StringOrList::Many(v) => v.first().cloned(),
        };
        if let Some(v) = value {
            claims.insert(claim.clone(), v.into());
        }
    }
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).map_err(|e| {
        K6Error::BadCredential {
            flag: "--jwt-key",
            name: name.to_owned(),
            reason: format!("cannot sign: {e}"),
        }
    })
}

fn expectation(
    snap: &Snapshot,
    i: usize,
    raw: &RouteConfig,
    cred: &Credential,
    cred_note: &str,
) -> (Expect, String) {
    let entries = raw.auth.as_deref().unwrap_or_default();
    let decided = entries.iter().any(|e| e.starts_with("external:"));
    // An `external:` entry is not a credential: the other entries are.
    let needs_auth = entries.iter().any(|e| !e.starts_with("external:"));
    if needs_auth && cred.entry.is_none() {
        return (
            Expect::Status(401),
            "expects 401: the route needs a credential and none was given".to_owned(),
        );
    }
    let wants_claims = raw.require_claims.as_ref().is_some_and(|c| !c.is_empty());
    if wants_claims && !cred.is_jwt {
        return (
            Expect::Status(403),
            format!("expects 403: {cred_note} carries no claims for require_claims"),
        );
    }
    let auth = if cred_note.is_empty() {
        String::new()
    } else {
        format!(", auth {cred_note}")
    };
    if decided {
        return (
            Expect::Decided,
            format!("expects an answer below 500: an external authorization service decides{auth}"),
        );
    }
    match &snap.routes[i].action {
        Action::Respond { status, .. } => (
            Expect::Status(status.as_u16()),
            format!(
                "expects {} (answered by the gateway){auth}",
                status.as_u16()
            ),
        ),
        Action::Redirect(r) => (
            Expect::Status(r.status.as_u16()),
            format!(
                "expects {} (redirect, not followed){auth}",
                r.status.as_u16()
            ),
        ),
        Action::Proxy { .. } | Action::Split(_) => (
            Expect::Upstream,
            format!("expects an upstream answer (below 500, not 401/403/404){auth}"),
        ),
    }
}

/// Tries requests for route `i` until one the router sends to it; the reason
/// when none does.
fn synthesize(
    snap: &Snapshot,
    i: usize,
    spec: &RouteSpec,
    neutral: &str,
    cred: &Credential,
) -> Result<Probe, String> {
    let method = pick_method(&spec.methods)?;
    let hosts: Vec<String> = if spec.hosts.is_empty() {
        vec![neutral.to_owned()]
    } else {
        spec.hosts.iter().map(|h| concrete_host(h)).collect()
    };
    let mut first_reason = None;
    for attempt in 0..ATTEMPTS {
        let probe = match candidate(spec, &method, &hosts, attempt, cred) {
            Ok(p) => p,
            Err(reason) => {
                first_reason.get_or_insert(reason);
                continue;
            }
        };
        match route_of(snap, &probe, cred) {
            Ok(Some(j)) if j == i => return Ok(probe),
            Ok(Some(j)) => {
                first_reason.get_or_insert_with(|| {
                    format!(
                        "its request ({} {}) is taken by route {}",
                        probe.method,
                        probe.shown,
                        snap.router.spec(j).name
                    )
                });
            }
            Ok(None) => {
                first_reason.get_or_insert_with(|| {
                    miss_reason(snap, i, &probe, cred)
                        .unwrap_or_else(|| format!("{} matches no route", probe.shown))
                });
            }
            Err(e) => {
                first_reason.get_or_insert_with(|| {
                    format!("{}: the gateway answers 400: {e}", probe.shown)
                });
            }
        }
    }
    Err(first_reason.unwrap_or_else(|| "no request could be synthesized".to_owned()))
}

fn pick_method(methods: &[Method]) -> Result<Method, String> {
    if methods.is_empty() || methods.contains(&Method::GET) {
        return Ok(Method::GET);
    }
    methods
        .iter()
        .find(|m| **m != Method::CONNECT)
        .cloned()
        .ok_or_else(|| "its only method, CONNECT, cannot be sent by k6".to_owned())
}

/// A host a pattern matches: as written, or `k6.<suffix>` for `*.<suffix>`.
fn concrete_host(pattern: &str) -> String {
    let p = pattern.trim().trim_end_matches('.');
    match p.strip_prefix("*.") {
        Some(suffix) => format!("k6.{suffix}"),
        None => p.to_owned(),
    }
}

/// Attempt `n` at a request for the route: 0 is the plainest (the prefix
/// itself, shortest regex samples), later ones vary.
fn candidate(
    spec: &RouteSpec,
    method: &Method,
    hosts: &[String],
    n: u64,
    cred: &Credential,
) -> Result<Probe, String> {
    let host = hosts[(n as usize) % hosts.len()].clone();
    let path = match &spec.path {
        PathSpec::Exact(p) => p.clone(),
        PathSpec::Prefix(p) => match n % 3 {
            0 => p.clone(),
            1 => format!("{}/k6", p.trim_end_matches('/')),
            _ => format!("{}/k6-{n}", p.trim_end_matches('/')),
        },
        PathSpec::Regex(r) => {
            // A pattern with an optional leading slash (`/?x`, `.*`) may give a
            // sample without one: the router decides whether `/` + sample fits.
            let sample = sample_regex(r, n, Alphabet::Path)?;
            if sample.starts_with('/') {
                sample
            } else {
                format!("/{sample}")
            }
        }
    };
    let mut headers = Vec::new();
    for (name, cond) in &spec.headers {
        let value = match cond {
            HeaderCond::Exact(v) => v.clone(),
            HeaderCond::Present(true) => "k6".to_owned(),
            HeaderCond::Present(false) => continue,
            HeaderCond::Regex(re) => sample_regex(re.as_str(), n, Alphabet::HeaderValue)
                .map_err(|e| format!("header {name}: {e}"))?,
        };
        if HeaderValue::from_str(&value).is_err() {
            return Err(format!(
                "header {name}: {value:?} is not a valid header value"
            ));
        }
        headers.push((name.clone(), value));
    }
    if !spec.cookies.is_empty() {
        let cookies: Vec<String> = spec
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(
                cred.headers
                    .iter()
                    .filter(|(h, _)| h == http::header::COOKIE)
                    .map(|(_, v)| v.clone()),
            )
            .collect();
        headers.push((http::header::COOKIE, cookies.join("; ")));
    }
    let mut query: Vec<String> = spec
        .query
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect();
    let join = |query: &[String]| {
        if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{}", query.join("&"))
        }
    };
    let shown = join(&query);
    query.extend(cred.query.iter().cloned());
    Ok(Probe {
        method: method.clone(),
        host,
        target: join(&query),
        shown,
        headers,
    })
}

/// The request as the gateway sees it: matcher headers plus the credential's
/// (a credential cookie merged into the matchers' Cookie header).
fn header_map(probe: &Probe, cred: &Credential) -> HeaderMap {
    let mut map = HeaderMap::new();
    let has_cookie = probe.headers.iter().any(|(h, _)| h == http::header::COOKIE);
    let extra = cred
        .headers
        .iter()
        .filter(|(h, _)| !(has_cookie && h == http::header::COOKIE));
    for (name, value) in probe.headers.iter().chain(extra) {
        if let Ok(v) = HeaderValue::from_str(value) {
            map.append(name.clone(), v);
        }
    }
    map
}

/// The route the gateway picks for `probe`; `Err`: it answers 400 first.
fn route_of(snap: &Snapshot, probe: &Probe, cred: &Credential) -> Result<Option<usize>, String> {
    let headers = header_map(probe, cred);
    let (path, query) = match probe.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (probe.target.as_str(), None),
    };
    let normal = normalize(path, &snap.path_rules).map_err(|e| e.message().to_owned())?;
    let view = RequestView {
        method: &probe.method,
        host: Some(&probe.host),
        path: normal.for_matching(),
        query,
        headers: &headers,
    };
    Ok(snap.router.find(&view))
}

/// Why route `i` did not take `probe`, in the router's words.
fn miss_reason(snap: &Snapshot, i: usize, probe: &Probe, cred: &Credential) -> Option<String> {
    let headers = header_map(probe, cred);
    let (path, query) = match probe.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (probe.target.as_str(), None),
    };
    let normal = normalize(path, &snap.path_rules).ok()?;
    let view = RequestView {
        method: &probe.method,
        host: Some(&probe.host),
        path: normal.for_matching(),
        query,
        headers: &headers,
    };
    let ex = snap.router.explain(&view);
    ex.near_misses
        .into_iter()
        .find(|(j, _)| *j == i)
        .map(|(_, miss)| format!("its request {} {}: {miss}", probe.method, probe.shown))
}

/// Percent-encodes a query component (RFC 3986 unreserved stay as they are).
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Which characters a sample may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    /// What may stand raw in a URL path: unreserved, sub-delims, `:`, `@`, `/`.
    Path,
    /// Visible ASCII and space.
    HeaderValue,
}

impl Alphabet {
    fn allows(self, c: char) -> bool {
        match self {
            Alphabet::Path => c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c),
            Alphabet::HeaderValue => c == ' ' || c.is_ascii_graphic(),
        }
    }
}

/// The characters tried first for a class, in order: what reads as a plain
/// path segment or value.
const PREFERRED: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_.~";

/// A string the regex matches, using only `alphabet`. `variant` 0 takes the
/// first alternative, the fewest repetitions and the most ordinary
/// characters; other variants draw all three from a generator seeded by
/// `variant`, so the output is the same on every run. Look-around assertions
/// (`^`, `$`, `\b`) are not sampled: the caller checks the result.
pub fn sample_regex(pattern: &str, variant: u64, alphabet: Alphabet) -> Result<String, String> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| format!("regex {pattern:?} does not parse: {e}"))?;
    let mut sampler = Sampler {
        rng: (variant > 0).then(|| fastrand::Rng::with_seed(variant)),
        alphabet,
    };
    let mut out = String::new();
    sampler
        .emit(&hir, &mut out)
        .map_err(|e| format!("regex {pattern:?}: {e}"))?;
    Ok(out)
}

struct Sampler {
    /// `None`: the plainest sample.
    rng: Option<fastrand::Rng>,
    alphabet: Alphabet,
}

/// Repetitions beyond the minimum a varied sample may add.
const EXTRA_REPEATS: u32 = 3;

impl Sampler {
    fn emit(&mut self, hir: &Hir, out: &mut String) -> Result<(), String> {
        match hir.kind() {
            HirKind::Empty | HirKind::Look(_) => Ok(()),
            HirKind::Literal(lit) => {
                let text =
                    std::str::from_utf8(&lit.0).map_err(|_| "a literal is not UTF-8".to_owned())?;
                if let Some(c) = text.chars().find(|&c| !self.alphabet.allows(c)) {
                    return Err(format!("it needs {c:?}, which cannot be sent raw here"));
                }
                out.push_str(text);
                Ok(())
            }
            HirKind::Class(class) => {
                let c = self.pick(class)?;
                out.push(c);
                Ok(())
            }
            HirKind::Repetition(rep) => {
                let extra = match (&mut self.rng, rep.max) {
                    (None, _) => 0,
                    (Some(rng), max) => {
                        let room = max.map_or(EXTRA_REPEATS, |m| {
                            (m.saturating_sub(rep.min)).min(EXTRA_REPEATS)
                        });
                        rng.u32(0..=room)
                    }
                };
                // `+` and `{1,}` with a plain sample: one is enough.
                for _ in 0..rep.min.saturating_add(extra) {
                    self.emit(&rep.sub, out)?;
                }
                Ok(())
            }
            HirKind::Capture(cap) => self.emit(&cap.sub, out),
            HirKind::Concat(parts) => parts.iter().try_for_each(|p| self.emit(p, out)),
            HirKind::Alternation(alts) => {
                let start = match &mut self.rng {
                    None => 0,
                    Some(rng) => rng.usize(0..alts.len()),
                };
                // An alternative that cannot be sampled: try the next one.
                let mut last = None;
                for k in 0..alts.len() {
                    let mut attempt = String::new();
                    match self.emit(&alts[(start + k) % alts.len()], &mut attempt) {
                        Ok(()) => {
                            out.push_str(&attempt);
                            return Ok(());
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| "an empty alternation".to_owned()))
            }
        }
    }

    /// A character of the class that the alphabet allows.
    fn pick(&mut self, class: &Class) -> Result<char, String> {
        let ranges: Vec<(char, char)> = match class {
            Class::Unicode(c) => c.ranges().iter().map(|r| (r.start(), r.end())).collect(),
            Class::Bytes(c) => c
                .ranges()
                .iter()
                .filter(|r| r.start() < 0x80)
                .map(|r| (char::from(r.start()), char::from(r.end().min(0x7f))))
                .collect(),
        };
        let inside = |c: char| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        let allowed: Vec<char> = match &self.rng {
            None => PREFERRED
                .chars()
                .chain((' '..='~').filter(|c| !PREFERRED.contains(*c)))
                .filter(|&c| inside(c) && self.alphabet.allows(c))
                .take(1)
                .collect(),
            Some(_) => (' '..='~')
                .filter(|&c| inside(c) && self.alphabet.allows(c))
                .collect(),
        };
        match (&mut self.rng, allowed.as_slice()) {
            (_, []) => Err(format!(
                "a character class has no character that can be sent raw here ({})",
                describe_ranges(&ranges)
            )),
            (None, [c, ..]) => Ok(*c),
            (Some(rng), all) => Ok(all[rng.usize(0..all.len())]),
        }
    }
}

fn describe_ranges(ranges: &[(char, char)]) -> String {
    let shown: Vec<String> = ranges
        .iter()
        .take(4)
        .map(|(lo, hi)| {
            if lo == hi {
                format!("{lo:?}")
            } else {
                format!("{lo:?}-{hi:?}")
            }
        })
        .collect();
    let more = if ranges.len() > 4 { ", …" } else { "" };
    format!("{}{more}", shown.join(", "))
}

/// `http://127.0.0.1:8080` for the first listener: the scheme by its `tls`,
/// a wildcard bind address replaced by loopback.
fn base_url(cfg: &Config) -> String {
    let Some(l) = cfg.server.listeners.first() else {
        return "http://127.0.0.1:8080".to_owned();
    };
    let scheme = if l.tls.is_some() { "https" } else { "http" };
    let bind = l.bind.trim();
    let (host, port) = match bind.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (bind, "80"),
    };
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "[::]" | "::" => "[::1]",
        h => h,
    };
    format!("{scheme}://{host}:{port}")
}

/// JSON as a JS literal: the two line terminators JSON allows raw escaped too.
fn js(value: &Value) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_default()
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

fn k6_duration(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn render(
    cfg: &Config,
    settings: &Settings,
    entries: &[Value],
    comments: &[String],
    skipped: &[(String, String)],
) -> String {
    let mut scenarios = serde_json::Map::new();
    let mut thresholds = serde_json::Map::new();
    thresholds.insert("checks".into(), json!(["rate==1.0"]));
    for e in entries {
        let name = e["scenario"].as_str().unwrap_or_default().to_owned();
        let exec = e["exec"].clone();
        let scenario = if e["single"].as_bool().unwrap_or(false) {
            json!({ "executor": "shared-iterations", "exec": exec, "vus": 1, "iterations": 1 })
        } else {
            json!({
                "executor": "constant-vus",
                "exec": exec,
                "vus": settings.vus,
                "duration": k6_duration(settings.duration),
            })
        };
        thresholds.insert(format!("checks{{scenario:{name}}}"), json!(["rate==1.0"]));
        scenarios.insert(name, scenario);
    }
    let skipped_json: Vec<Value> = skipped
        .iter()
        .map(|(r, why)| json!({ "route": r, "reason": why }))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// Generated by `tollgate k6` from {}: one scenario per route.",
        comment_text(&settings.source)
    );
    out.push_str(
        "// Each request below was routed by the gateway's own router to the route it names.\n",
    );
    out.push_str("// Run: k6 run [-e BASE_URL=http://host:port] THIS_FILE\n");
    for c in comments {
        out.push_str(c);
        out.push('\n');
    }
    out.push_str("\nimport http from 'k6/http';\nimport { check } from 'k6';\n\n");
    let _ = writeln!(
        out,
        "const BASE_URL = __ENV.BASE_URL || {};\n",
        js(&Value::from(base_url(cfg)))
    );
    let _ = writeln!(
        out,
        "// The scenarios' requests and expected answers (read by tools as JSON).\nexport const ROUTES = {};\n",
        js(&Value::Array(entries.to_vec()))
    );
    let _ = writeln!(
        out,
        "// Routes without a scenario, and why.\nexport const SKIPPED = {};\n",
        js(&Value::Array(skipped_json))
    );
    let options = json!({
        "scenarios": scenarios,
        "thresholds": thresholds,
        "insecureSkipTLSVerify": false,
    });
    let _ = writeln!(out, "export const options = {};", js(&options));
    out.push_str(
        "if (__ENV.TOLLGATE_K6_INSECURE === '1') {\n  options.insecureSkipTLSVerify = true;\n}\n\n",
    );
    out.push_str(JS_RUNTIME);
    for (k, e) in entries.iter().enumerate() {
        let _ = writeln!(
            out,
            "\nexport function {}() {{\n  probe(ROUTES[{k}]);\n}}",
            e["exec"].as_str().unwrap_or_default()
        );
    }
    out
}

const JS_RUNTIME: &str = r#"function expected(want, status) {
  if (want.status !== undefined) {
    return status === want.status;
  }
  if (want.decided) {
    return status >= 200 && status < 500;
  }
  return status >= 200 && status < 500 && status !== 401 && status !== 403 && status !== 404;
}

function probe(r) {
  const headers = Object.assign({ Host: r.host }, r.headers);
  if (r.idempotency_key) {
    headers['Idempotency-Key'] = `k6-${__VU}-${__ITER}-${Date.now()}`;
  }
  const res = http.request(r.method, BASE_URL + r.target, null, {
    headers,
    redirects: 0,
    tags: { name: r.route },
  });
  const want = r.expect.status !== undefined
    ? `status ${r.expect.status}`
    : r.expect.decided ? 'the authorization service\'s answer' : 'an upstream answer';
  check(res, {
    [`${r.route}: ${want}`]: (res) => expected(r.expect, res.status),
  });
}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn anchored(re: &str) -> Regex {
        Regex::new(&format!("^(?:{re})$")).unwrap()
    }

    #[test]
    fn plain_samples_are_short_and_ordinary() {
        assert_eq!(
            sample_regex("/v[0-9]+/users", 0, Alphabet::Path).unwrap(),
            "/v0/users"
        );
        assert_eq!(sample_regex("/a(/.*)?", 0, Alphabet::Path).unwrap(), "/a");
        assert_eq!(
            sample_regex("/(x|y)/[A-Z]{2}", 0, Alphabet::Path).unwrap(),
            "/x/AA"
        );
        assert_eq!(sample_regex(r"/\d{3}", 0, Alphabet::Path).unwrap(), "/000");
    }

    #[test]
    fn every_variant_matches_its_regex() {
        let patterns = [
            "/v[0-9]+(/.*)?",
            "/(users|orders)/[a-f0-9]{8}",
            r"/files/[^/]+\.(png|jpe?g)",
            "/x{2,5}/(a|b|c)*",
            r"/\w+-\d{1,3}",
            "/(?i:api)/[[:alpha:]]+",
        ];
        for p in patterns {
            let re = anchored(p);
            let mut distinct = BTreeSet::new();
            for v in 0..40 {
                let s = sample_regex(p, v, Alphabet::Path).unwrap();
                assert!(re.is_match(&s), "{p}: variant {v} gave {s:?}");
                assert!(s.chars().all(|c| Alphabet::Path.allows(c)), "{s:?}");
                distinct.insert(s);
            }
            assert!(
                distinct.len() > 3,
                "{p}: variants do not vary: {distinct:?}"
            );
        }
    }

    #[test]
    fn classes_avoid_characters_a_path_cannot_carry() {
        // `.` and `[^/]` include space, `?` and `#`: never picked.
        for v in 0..50 {
            let s = sample_regex("/.{6}", v, Alphabet::Path).unwrap();
            assert!(!s.contains([' ', '?', '#', '%']), "{s:?}");
        }
        // Header values may carry a space, not a control character.
        for v in 0..50 {
            let s = sample_regex("[\\x00-\\x20]", v, Alphabet::HeaderValue).unwrap();
            assert_eq!(s, " ");
        }
    }

    #[test]
    fn unsampleable_regexes_say_why() {
        let e = sample_regex("/[^\\x00-\\x7f]+", 0, Alphabet::Path).unwrap_err();
        assert!(e.contains("no character that can be sent raw"), "{e}");
        let e = sample_regex("/a b", 0, Alphabet::Path).unwrap_err();
        assert!(e.contains("' '"), "{e}");
        let e = sample_regex("/(", 0, Alphabet::Path).unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
        // An alternation falls back to the alternative that can be sampled.
        assert_eq!(sample_regex("/(é|ok)", 0, Alphabet::Path).unwrap(), "/ok");
    }

    #[test]
    fn names_and_hosts() {
        let mut used = BTreeSet::new();
        assert_eq!(unique_name("api v1", &mut used), "api_v1");
        assert_eq!(unique_name("api-v1", &mut used), "api_v1_2");
        assert_eq!(concrete_host("*.example.com"), "k6.example.com");
        assert_eq!(concrete_host("API.example.com."), "API.example.com");
        assert_eq!(encode_component("a b/c"), "a%20b%2Fc");
        assert_eq!(comment_text("a\nb"), "a b");
    }
}
