//! JWT validation (docs/guide/auth.md, `auth.jwt`): where the token is read from, which
//! keys verify it, which claims must hold, and what goes upstream.
//!
//! jsonwebtoken does the signature and time checks, but its defaults are not
//! ours (60 s leeway, `nbf` unchecked, `iss`/`aud` only checked when present):
//! `validation()` sets every one of them explicitly. On top of it this module
//! adds what a gateway needs: an algorithm allow-list where a token's `alg` must
//! belong to the key's family (no RSA public key used as an HMAC secret), keys
//! that only ever come from the config (`jku`/`x5u`/`jwk` headers are never
//! looked at), a cheap size check before any crypto, and a cache of verified
//! tokens so the RSA/ECDSA math is not redone on every request.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use http::request::Parts;
use http::{HeaderName, HeaderValue, header};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use xxhash_rust::xxh3::xxh3_64;

use super::jwks::JwksSource;
use crate::config::schema;
use crate::config::values::{ALGORITHMS, TokenSource};
use crate::error::AuthFailure;

/// Tokens longer than this are refused before any parsing or crypto: no
/// legitimate access token is this big, and a huge one is a cheap way to make
/// a verifier work.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Verified tokens remembered per policy.
const CACHE_CAPACITY: usize = 10_000;
const CACHE_SHARDS: usize = 16;

/// At most this many keys are tried for one token (several keys can share a
/// family when a token has no `kid`).
const MAX_KEY_TRIES: usize = 4;

/// Claims of a verified token, shared by the `PolicyContext` and the cache.
pub type Claims = Arc<Map<String, Value>>;

/// A token that passed every check.
#[derive(Clone, Debug)]
pub struct Verified {
    pub claims: Claims,
    /// The `sub` claim, when it is a string.
    pub subject: Option<Arc<str>>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Failure(AuthFailure),
    /// No key set has ever loaded (JWKS not fetched yet): 503, not 401.
    Unavailable,
}

impl TokenSource {
    /// The token this source finds in the request head.
    pub(crate) fn find<'a>(&self, parts: &'a Parts) -> Option<&'a str> {
        match self {
            TokenSource::Bearer => parts
                .headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .find_map(|v| bearer(v.to_str().ok()?)),
            TokenSource::Header(name) => {
                let v = parts.headers.get(name)?.to_str().ok()?.trim();
                let v = bearer(v).unwrap_or(v);
                (!v.is_empty()).then_some(v)
            }
            TokenSource::Query(name) => parts.uri.query()?.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == name && !v.is_empty()).then_some(v)
            }),
            TokenSource::Cookie(name) => parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == name && !v.is_empty()).then_some(v.trim_matches('"'))
                }),
        }
    }

    /// Removes the credential this source reads, before forwarding.
    pub(crate) fn strip(&self, parts: &mut Parts) {
        match self {
            TokenSource::Bearer => {
                parts.headers.remove(header::AUTHORIZATION);
            }
            TokenSource::Header(name) => {
                parts.headers.remove(name);
            }
            TokenSource::Query(name) => {
                let Some(query) = parts.uri.query() else {
                    return;
                };
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|p| p.split_once('=').map_or(*p, |(k, _)| k) != name)
                    .collect();
                let pq = if kept.is_empty() {
                    parts.uri.path().to_string()
                } else {
                    format!("{}?{}", parts.uri.path(), kept.join("&"))
                };
                let mut builder = http::Uri::builder();
                if let Some(s) = parts.uri.scheme() {
                    builder = builder.scheme(s.clone());
                }
                if let Some(a) = parts.uri.authority() {
                    builder = builder.authority(a.clone());
                }
                if let Ok(uri) = builder.path_and_query(pq).build() {
                    parts.uri = uri;
                }
            }
            TokenSource::Cookie(name) => {
                let kept: Vec<String> = parts
                    .headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .map(str::trim)
                    .filter(|c| !c.is_empty() && c.split_once('=').map_or(*c, |(k, _)| k) != name)
                    .map(str::to_string)
                    .collect();
                parts.headers.remove(header::COOKIE);
                if !kept.is_empty()
                    && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
                {
                    parts.headers.insert(header::COOKIE, v);
                }
            }
        }
    }
}

fn bearer(v: &str) -> Option<&str> {
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// One verification key.
struct Key {
    kid: Option<String>,
    /// The JWK's `alg`, when it names one: the key is then only used for it.
    alg: Option<Algorithm>,
    curve: Option<EllipticCurve>,
    key: DecodingKey,
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        if self.key.family() != alg.family() || self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match (alg, &self.curve) {
            (Algorithm::ES256, Some(c)) => *c == EllipticCurve::P256,
            (Algorithm::ES384, Some(c)) => *c == EllipticCurve::P384,
            (Algorithm::EdDSA, Some(c)) => *c == EllipticCurve::Ed25519,
            _ => true,
        }
    }
}

/// The keys of a policy at one moment. `generation` changes whenever the set
/// does, so cached verdicts from an older set are not trusted.
pub struct KeySet {
    keys: Vec<Key>,
    pub generation: u64,
    /// The algorithms the provider signs with (OIDC discovery): a token
    /// with another `alg` is refused even when the policy lists it.
    pub allowed: Option<Vec<Algorithm>>,
}

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl KeySet {
    pub fn from_secret(secret: &[u8]) -> KeySet {
        KeySet {
            keys: vec![Key {
                kid: None,
                alg: None,
                curve: None,
                key: DecodingKey::from_secret(secret),
            }],
            generation: next_generation(),
            allowed: None,
        }
    }

    /// The usable signature keys of a JWKS document. Symmetric (`oct`) keys,
    /// encryption keys and unknown key types are skipped; a set with no usable
    /// key is an error.
    pub fn from_jwks_json(text: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let curve = match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(p) => Some(p.curve.clone()),
                AlgorithmParameters::OctetKeyPair(p) => Some(p.curve.clone()),
                AlgorithmParameters::RSA(_) => None,
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let alg = match &jwk.common.key_algorithm {
                None => None,
                Some(ka) => match Algorithm::from_str(&format!("{ka:?}")) {
                    Ok(a) => Some(a),
                    // A key meant for something we do not verify with.
                    Err(_) => continue,
                },
            };
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                curve,
                key,
            });
        }
        if keys.is_empty() {
            return Err("the JWKS has no usable signature key (RSA, EC or OKP)".into());
        }
        Ok(KeySet {
            keys,
            generation: next_generation(),
            allowed: None,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Keys that may verify a token with this `alg` and `kid`: with a `kid`,
    /// the keys carrying it (and keys without any kid, such as a `secret`);
    /// without, every key of the right family.
    fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys
            .iter()
            .filter(move |k| match (kid, k.kid.as_deref()) {
                (Some(wanted), Some(own)) => wanted == own,
                _ => true,
            })
            .filter(move |k| k.fits(alg))
            .take(MAX_KEY_TRIES)
    }
}

/// Where a policy's keys come from.
pub enum Keys {
    /// `secret` or `jwks_file`: loaded when the config compiled.
    Static(Arc<KeySet>),
    /// `jwks_url`: fetched and refreshed in the background.
    Remote(Arc<JwksSource>),
}

/// A compiled `auth.jwt.<name>` policy.
pub struct JwtPolicy {
    pub name: Arc<str>,
    /// The allow-list, each with its checks (jsonwebtoken wants the algorithms
    /// of one `Validation` to share a family).
    validations: Vec<(Algorithm, Validation)>,
    keys: Keys,
    pub tokens: TokenHandling,
    cache: Option<TokenCache>,
    /// `issuer`, checked again on the claims: jsonwebtoken also accepts an
    /// `iss` array that merely contains it.
    issuer: Option<String>,
}

impl JwtPolicy {
    /// Builds a policy from its config. `jwks_file` is read now, relative to
    /// `base_dir`; a `jwks_url` policy gets its keys from `remote`.
    pub fn compile(
        name: &str,
        cfg: &schema::JwtPolicy,
        base_dir: &Path,
        remote: Option<Arc<JwksSource>>,
    ) -> Result<JwtPolicy, String> {
        // With discovery and no list of its own, the policy accepts what the
        // provider says it signs with (checked per key set in `verify`).
        let names: Vec<String> = if cfg.algorithms.is_empty() && cfg.discovery {
            ALGORITHMS
                .iter()
                .filter(|a| !a.starts_with("HS"))
                .map(|a| a.to_string())
                .collect()
        } else {
            cfg.algorithms.clone()
        };
        let algorithms = names
            .iter()
            .map(|a| {
                if !ALGORITHMS.contains(&a.as_str()) {
                    return Err(format!("unsupported algorithm `{a}`"));
                }
                Algorithm::from_str(a).map_err(|_| format!("unsupported algorithm `{a}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms.is_empty() {
            return Err("at least one algorithm is needed".into());
        }
        let keys = match (&cfg.secret, &cfg.jwks_file, remote) {
            (Some(secret), None, None) => {
                Keys::Static(Arc::new(KeySet::from_secret(secret.as_bytes())))
            }
            (None, Some(file), None) => {
                let path = base_dir.join(file);
                let text = std::fs::read(&path)
                    .map_err(|e| format!("cannot read jwks_file {}: {e}", path.display()))?;
                let set = KeySet::from_jwks_json(&text)
                    .map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
                Keys::Static(Arc::new(set))
            }
            (None, None, Some(source)) => Keys::Remote(source),
            _ => {
                return Err("needs exactly one of secret, jwks_file, jwks_url or discovery".into());
            }
        };
        let tokens = TokenHandling::compile(
            cfg.token_from.as_deref(),
            &cfg.forward_claims,
            cfg.strip_token,
        )?;
        let leeway = cfg.leeway.map_or(30, |d| d.get().as_secs());
        let validations = algorithms
            .iter()
            .map(|&alg| {
                let v = validation(alg, leeway, cfg.issuer.as_deref(), cfg.audiences.as_deref());
                (alg, v)
            })
            .collect();
        Ok(JwtPolicy {
            name: name.into(),
            validations,
            keys,
            tokens,
            cache: Some(TokenCache::new(CACHE_CAPACITY)),
            issuer: cfg.issuer.clone(),
        })
    }

    /// Turns the verified-token cache off (benchmarks compare both).
    pub fn without_cache(mut self) -> Self {
        self.cache = None;
        self
    }

    /// Verifies a token: size, header (no `crit`), allow-listed `alg`, a key
    /// of that algorithm's family (by `kid` when given), signature, then
    /// `exp`, `nbf`, `iss` (one string), `aud`.
    pub async fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        let invalid = Err(JwtError::Failure(AuthFailure::Invalid));
        if token.len() > MAX_TOKEN_BYTES || token.bytes().filter(|b| *b == b'.').count() != 2 {
            return invalid;
        }
        let cache_key = self.cache.as_ref().map(|_| TokenCache::key(token));
        let set = match &self.keys {
            Keys::Static(set) => set.clone(),
            Keys::Remote(source) => source.current().ok_or(JwtError::Unavailable)?,
        };
        if let (Some(cache), Some(k)) = (&self.cache, cache_key)
            && let Some(hit) = cache.get(k, token, set.generation)
        {
            return Ok(hit);
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return invalid;
        };
        // RFC 7515 §4.1.11: extensions listed in `crit` must be understood, and
        // this verifier understands none (jsonwebtoken reads `crit` and
        // ignores it).
        if header.crit.is_some() {
            return invalid;
        }
        let alg = header.alg;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == alg) else {
            return invalid;
        };
        if set.allowed.as_ref().is_some_and(|a| !a.contains(&alg)) {
            return invalid;
        }
        let kid = header.kid.as_deref();
        let mut set = set;
        if set.candidates(alg, kid).next().is_none() {
            // A key we have never seen: maybe the issuer rotated. One coalesced,
            // rate-limited refetch, then look again.
            match (&self.keys, kid) {
                (Keys::Remote(source), Some(kid)) if !set.has_kid(kid) => {
                    match source.refetch_for_unknown_kid(kid).await {
                        Some(fresh) => set = fresh,
                        None => return invalid,
                    }
                }
                _ => return invalid,
            }
        }
        let mut outcome = AuthFailure::Invalid;
        for key in set.candidates(alg, kid) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => {
                    // `iss` is one string (RFC 7519 §4.1.1), equal to the issuer.
                    if let Some(issuer) = &self.issuer
                        && data.claims.get("iss").and_then(Value::as_str) != Some(issuer)
                    {
                        return invalid;
                    }
                    let claims = Arc::new(data.claims);
                    let verified = Verified {
                        subject: claims.get("sub").and_then(Value::as_str).map(Arc::from),
                        claims,
                    };
                    if let (Some(cache), Some(k)) = (&self.cache, cache_key)
                        && let Some(exp) = verified.claims.get("exp").and_then(Value::as_u64)
                    {
                        cache.put(k, token, set.generation, exp, &verified);
                    }
                    return Ok(verified);
                }
                Err(e) => match e.kind() {
                    // The signature was good (it is checked first): the token is
                    // just too old.
                    ErrorKind::ExpiredSignature => {
                        return Err(JwtError::Failure(AuthFailure::Expired));
                    }
                    ErrorKind::InvalidSignature => outcome = AuthFailure::Invalid,
                    // Claim failures do not depend on the key: stop here.
                    _ => return Err(JwtError::Failure(AuthFailure::Invalid)),
                },
            }
        }
        Err(JwtError::Failure(outcome))
    }

    /// The claim headers this policy sets (removed from the client's request
    /// first, so a client cannot forge them).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// Where a bearer-style token is found, what happens to it, and which of its
/// claims go upstream: `token_from`, `strip_token` and `forward_claims` of JWT
/// and introspection policies.
pub struct TokenHandling {
    pub sources: Vec<TokenSource>,
    /// claim -> upstream header
    pub forward_claims: Vec<(String, HeaderName)>,
    pub strip_token: bool,
}

impl TokenHandling {
    pub fn compile(
        token_from: Option<&[String]>,
        forward_claims: &std::collections::BTreeMap<String, String>,
        strip_token: bool,
    ) -> Result<TokenHandling, String> {
        let sources = match token_from {
            None => vec![TokenSource::Bearer],
            Some(list) => list
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<_>, _>>()?,
        };
        let forward_claims = forward_claims
            .iter()
            .map(|(claim, h)| {
                HeaderName::from_bytes(h.as_bytes())
                    .map(|h| (claim.clone(), h))
                    .map_err(|_| format!("`{h}` is not a valid header name"))
            })
            .collect::<Result<_, _>>()?;
        Ok(TokenHandling {
            sources,
            forward_claims,
            strip_token,
        })
    }

    /// The first token found, in `token_from` order, with the index of its source.
    pub fn find_token<'a>(&self, parts: &'a Parts) -> Option<(usize, &'a str)> {
        self.sources
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.find(parts).map(|t| (i, t)))
    }

    /// What a passed token does to the request: the token removed (with
    /// `strip_token`) and its claims sent upstream.
    pub fn accept(&self, parts: &mut Parts, source: usize, claims: &Map<String, Value>) {
        if self.strip_token
            && let Some(s) = self.sources.get(source)
        {
            s.strip(parts);
        }
        self.forward(claims, &mut parts.headers);
    }

    /// Sets each `claim -> header` from `claims` (lists joined with spaces),
    /// after removing what the client sent under that name.
    pub fn forward(&self, claims: &Map<String, Value>, headers: &mut http::HeaderMap) {
        for (claim, name) in &self.forward_claims {
            headers.remove(name);
            let text = match claims.get(claim) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                Some(other) => other.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&text) {
                headers.insert(name.clone(), v);
            }
        }
    }
}

/// jsonwebtoken's checks, every default replaced by ours.
fn validation(
    alg: Algorithm,
    leeway_secs: u64,
    issuer: Option<&str>,
    audiences: Option<&[String]>,
) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.leeway = leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.reject_tokens_expiring_in_less_than = 0;
    let mut required = vec!["exp"];
    match issuer {
        Some(iss) => {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        None => v.iss = None,
    }
    match audiences {
        Some(auds) if !auds.is_empty() => {
            v.set_audience(auds);
            v.validate_aud = true;
            required.push("aud");
        }
        // No audience configured: a token's `aud` is not ours to judge.
        _ => {
            v.aud = None;
            v.validate_aud = false;
        }
    }
    v.set_required_spec_claims(&required);
    v
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct CacheEntry {
    /// The token itself: a hit must be this very token, not just its hash.
    token: Box<str>,
    verified: Verified,
    exp: u64,
    generation: u64,
}

/// Verified tokens by a 64-bit hash of the token text, sharded so concurrent
/// requests rarely share a lock. An entry is used only for the same token
/// (compared in full, so a hash collision is just a miss), while `now < exp`,
/// and while the key set that verified it is still the current one. Keeping
/// the token costs its length per entry, but saves a SHA-256 of it on every
/// request (Envoy's JWT cache also keys on the token).
struct TokenCache {
    shards: Vec<Mutex<CacheShard>>,
    per_shard: usize,
}

type CacheShard = HashMap<u64, CacheEntry, BuildHasherDefault<KeyHasher>>;

/// The map key is already a hash: the table uses it as it is.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in anyway.
        self.0 ^= xxh3_64(bytes);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl TokenCache {
    fn new(capacity: usize) -> TokenCache {
        TokenCache {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: capacity.div_ceil(CACHE_SHARDS).max(1),
        }
    }

    fn key(token: &str) -> u64 {
        xxh3_64(token.as_bytes())
    }

    fn shard(&self, key: u64) -> &Mutex<CacheShard> {
        // The top bits pick the shard; the table inside uses the low ones.
        &self.shards[usize::try_from(key >> 56).unwrap_or(0) % self.shards.len()]
    }

    fn get(&self, key: u64, token: &str, generation: u64) -> Option<Verified> {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(&key)?;
        if *entry.token != *token {
            return None;
        }
        if entry.generation == generation && unix_now() < entry.exp {
            return Some(entry.verified.clone());
        }
        shard.remove(&key);
        None
    }

    fn put(&self, key: u64, token: &str, generation: u64, exp: u64, verified: &Verified) {
        let now = unix_now();
        if exp <= now {
            return;
        }
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.per_shard {
            shard.retain(|_, e| e.exp > now);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(
            key,
            CacheEntry {
                token: token.into(),
                verified: verified.clone(),
                exp,
                generation,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_replaces_every_default() {
        let v = validation(Algorithm::RS256, 30, Some("iss"), Some(&["a".into()]));
        assert_eq!(v.leeway, 30);
        assert!(v.validate_nbf && v.validate_exp && v.validate_aud);
        for c in ["exp", "iss", "aud"] {
            assert!(v.required_spec_claims.contains(c), "{c}");
        }
        let v = validation(Algorithm::HS256, 0, None, None);
        assert!(!v.validate_aud);
        assert_eq!(v.required_spec_claims.len(), 1);
    }

    #[test]
    fn token_sources_parse() {
        assert_eq!("header:Authorization".parse(), Ok(TokenSource::Bearer));
        assert_eq!(
            "query:access_token".parse(),
            Ok(TokenSource::Query("access_token".into()))
        );
        assert!("cookie:a b".parse::<TokenSource>().is_err());
        assert!(
            "heder:x"
                .parse::<TokenSource>()
                .unwrap_err()
                .contains("did you mean `header`")
        );
        assert!("query:".parse::<TokenSource>().is_err());
    }

    /// An HS256 token signed with `secret`, with `header` fields added.
    fn hs256(header: Value, claims: Value) -> String {
        use aws_lc_rs::hmac;
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        let mut h = serde_json::json!({"alg": "HS256"});
        h.as_object_mut()
            .unwrap()
            .extend(header.as_object().unwrap().clone());
        let message = format!(
            "{}.{}",
            B64.encode(h.to_string()),
            B64.encode(claims.to_string())
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"fuzz-secret-0123456789abcdef0123");
        let sig = hmac::sign(&key, message.as_bytes());
        format!("{message}.{}", B64.encode(sig.as_ref()))
    }

    fn hs_policy() -> JwtPolicy {
        let cfg: schema::JwtPolicy = serde_json::from_value(serde_json::json!({
            "secret": "fuzz-secret-0123456789abcdef0123",
            "algorithms": ["HS256"],
            "issuer": "https://issuer.test/",
        }))
        .unwrap();
        JwtPolicy::compile("t", &cfg, Path::new("."), None).unwrap()
    }

    // Found by the `jwt` fuzz target.
    #[tokio::test]
    async fn crit_and_an_iss_list_are_refused() {
        let p = hs_policy();
        let exp = unix_now() + 3600;
        let claims = serde_json::json!({"exp": exp, "iss": "https://issuer.test/"});
        let good = hs256(serde_json::json!({}), claims.clone());
        assert!(p.verify(&good).await.is_ok());
        let invalid = Err(JwtError::Failure(AuthFailure::Invalid));
        let crit = hs256(serde_json::json!({"crit": ["exp"]}), claims);
        assert_eq!(p.verify(&crit).await.map(|_| ()), invalid, "crit");
        for iss in [
            serde_json::json!(["https://evil.test/", "https://issuer.test/"]),
            serde_json::json!(["https://issuer.test/"]),
        ] {
            let t = hs256(
                serde_json::json!({}),
                serde_json::json!({"exp": exp, "iss": iss}),
            );
            assert_eq!(p.verify(&t).await.map(|_| ()), invalid, "{iss}");
        }
    }

    #[test]
    fn cache_never_outlives_exp_or_generation() {
        let c = TokenCache::new(32);
        let v = Verified {
            claims: Arc::new(Map::new()),
            subject: None,
        };
        let now = unix_now();
        let key = TokenCache::key("a.b.c");
        c.put(key, "a.b.c", 7, now + 100, &v);
        assert!(c.get(key, "a.b.c", 7).is_some());
        assert!(c.get(key, "a.b.c", 8).is_none(), "other key set");
        c.put(key, "a.b.c", 7, now + 100, &v);
        // Another token that hashed the same (forced here) is a miss, never a hit.
        assert!(c.get(key, "a.b.d", 7).is_none(), "same hash, other token");
        assert!(c.get(key, "a.b.c", 7).is_some(), "the entry is kept");
        let old = TokenCache::key("old.b.c");
        c.put(old, "old.b.c", 7, now.saturating_sub(1), &v);
        assert!(c.get(old, "old.b.c", 7).is_none(), "already expired");
        for i in 0..200u32 {
            let t = format!("t{i}.b.c");
            c.put(TokenCache::key(&t), &t, 7, now + 100, &v);
        }
        let total: usize = c.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 32, "bounded: {total}");
    }
}
