//! `auth`: JWT policies (keys, algorithms, JWKS, discovery), API-key sets, Basic auth
//! and token introspection.

use std::collections::HashSet;

use http::{HeaderName, HeaderValue, Uri};

use super::{Checker, MANAGED_HEADERS};
use crate::config::positions::{child, item};
use crate::config::schema::{Config, JwtPolicy};
use crate::config::suggest;

impl Checker {
    pub(super) fn auth(&mut self, config: &Config) {
        for (name, p) in &config.auth.jwt {
            self.jwt_policy(&child("auth.jwt", name), p);
        }
        for (name, b) in &config.auth.basic {
            let at = child("auth.basic", name);
            if let Some(realm) = &b.realm
                && (realm.is_empty()
                    || realm.contains('"')
                    || HeaderValue::from_str(realm).is_err())
            {
                self.err(
                    child(&at, "realm"),
                    "a realm is non-empty printable text without double quotes",
                );
            }
        }
        for (name, p) in &config.auth.introspection {
            let at = child("auth.introspection", name);
            let ok = p.url.parse::<Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                self.err(
                    child(&at, "url"),
                    format!("expected an http:// or https:// URL, got `{}`", p.url),
                );
            }
            if p.client_id.is_empty() {
                self.err(child(&at, "client_id"), "the client id is empty");
            }
            if p.client_secret.is_empty() {
                self.err(
                    child(&at, "client_secret"),
                    "the client secret is empty (is its ${VARIABLE} set?)",
                );
            }
            for (key, d) in [("cache_ttl", p.cache_ttl), ("timeout", p.timeout)] {
                if d.is_some_and(|d| d.get().is_zero()) {
                    self.err(child(&at, key), "must be above zero");
                }
            }
            self.token_handling(&at, p.token_from.as_deref(), &p.forward_claims);
        }
        for (name, p) in &config.auth.external {
            self.external(&child("auth.external", name), p);
        }
        for (name, set) in &config.auth.api_keys {
            let at = child("auth.api_keys", name);
            if HeaderName::from_bytes(set.header.as_bytes()).is_err() {
                self.err(
                    child(&at, "header"),
                    format!("`{}` is not a valid header name", set.header),
                );
            }
            if set.keys.is_empty() {
                self.err(child(&at, "keys"), "an API key set needs at least one key");
            }
            let (mut ids, mut keys) = (HashSet::new(), HashSet::new());
            for (i, k) in set.keys.iter().enumerate() {
                let key_at = item(&child(&at, "keys"), i);
                if k.id.is_empty() || HeaderValue::from_str(&k.id).is_err() {
                    self.err(
                        child(&key_at, "id"),
                        "an id must be non-empty printable ASCII (it is sent as X-Consumer-Id)",
                    );
                } else if !ids.insert(k.id.as_str()) {
                    self.err(child(&key_at, "id"), format!("duplicate key id `{}`", k.id));
                }
                if k.key.is_empty() {
                    self.err(
                        child(&key_at, "key"),
                        "the key is empty (is its ${VARIABLE} set?)",
                    );
                } else if HeaderValue::from_str(&k.key).is_err() {
                    self.err(
                        child(&key_at, "key"),
                        "a key must be printable ASCII (it travels in a header)",
                    );
                } else if !keys.insert(k.key.as_str()) {
                    self.err(
                        child(&key_at, "key"),
                        format!("key id `{}` reuses the key of an earlier id", k.id),
                    );
                }
            }
        }
    }

    pub(super) fn jwt_policy(&mut self, at: &str, p: &JwtPolicy) {
        use crate::config::values::ALGORITHMS;
        if p.algorithms.is_empty() && !p.discovery {
            self.err(
                child(at, "algorithms"),
                "list at least one algorithm (or set `discovery: true` to take the provider's)",
            );
        }
        let mut hmac = false;
        let mut public = false;
        for (i, alg) in p.algorithms.iter().enumerate() {
            let alg_at = item(&child(at, "algorithms"), i);
            if alg.eq_ignore_ascii_case("none") {
                self.err(alg_at, "`none` (unsigned tokens) is never accepted");
            } else if !ALGORITHMS.contains(&alg.as_str()) {
                self.err(
                    alg_at,
                    format!(
                        "unknown algorithm `{alg}`; expected one of {}{}",
                        ALGORITHMS.join(", "),
                        suggest::hint(alg, ALGORITHMS.iter().copied())
                    ),
                );
            } else if alg.starts_with("HS") {
                hmac = true;
            } else {
                public = true;
            }
        }
        let sources: Vec<&str> = [
            ("jwks_file", p.jwks_file.is_some()),
            ("jwks_url", p.jwks_url.is_some()),
            ("secret", p.secret.is_some()),
        ]
        .iter()
        .filter(|s| s.1)
        .map(|s| s.0)
        .collect();
        if p.discovery {
            let issuer_ok = p.issuer.as_deref().is_some_and(|i| {
                i.parse::<Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.host().is_some()
                        && u.query().is_none()
                })
            });
            if !issuer_ok {
                self.err(
                    child(at, "issuer"),
                    "`discovery: true` needs the issuer's URL (https://login.example.com/realms/main), \
                     where /.well-known/openid-configuration is found",
                );
            }
            if !sources.is_empty() {
                self.err(
                    child(at, "discovery"),
                    format!(
                        "the keys come from the discovery document; remove {}",
                        sources.join(" and ")
                    ),
                );
            }
        } else if sources.len() != 1 {
            let got = if sources.is_empty() {
                "none is given".to_owned()
            } else {
                format!("got {}", sources.join(" and "))
            };
            self.err(
                at,
                format!("needs exactly one key source: jwks_file, jwks_url or secret; {got}"),
            );
        }
        if p.secret.is_some() && public {
            self.err(
                child(at, "algorithms"),
                "a `secret` only verifies HS256/HS384/HS512; RSA, EC and EdDSA keys come from jwks_file or jwks_url",
            );
        }
        if p.secret.is_none() && hmac {
            self.err(
                child(at, "algorithms"),
                "HS256/HS384/HS512 need a `secret` (JWKS keys are public keys)",
            );
        }
        if let Some(secret) = &p.secret
            && secret.is_empty()
        {
            self.err(
                child(at, "secret"),
                "the secret is empty (is its ${VARIABLE} set?)",
            );
        }
        if let Some(url) = &p.jwks_url {
            let ok = url.parse::<Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                self.err(
                    child(at, "jwks_url"),
                    format!("expected an http:// or https:// URL, got `{url}`"),
                );
            }
        }
        if let Some(file) = &p.jwks_file
            && file.is_empty()
        {
            self.err(child(at, "jwks_file"), "the file name is empty");
        }
        if let Some(r) = p.jwks_refresh {
            if p.jwks_url.is_none() && !p.discovery {
                self.err(
                    child(at, "jwks_refresh"),
                    "only applies with jwks_url or discovery",
                );
            } else if r.get().is_zero() {
                self.err(child(at, "jwks_refresh"), "must be above zero");
            }
        }
        if let Some(l) = p.leeway
            && l.get() > std::time::Duration::from_secs(600)
        {
            self.err(
                child(at, "leeway"),
                "at most 10m: clock skew beyond that is a broken clock",
            );
        }
        if let Some(auds) = &p.audiences
            && auds.is_empty()
        {
            self.err(
                child(at, "audiences"),
                "an empty list would accept no token; leave it out to not check `aud`",
            );
        }
        self.token_handling(at, p.token_from.as_deref(), &p.forward_claims);
    }

    fn external(&mut self, at: &str, p: &crate::config::schema::External) {
        let ok = p
            .url
            .parse::<Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !ok {
            self.err(
                child(at, "url"),
                format!("expected an http:// or https:// URL, got `{}`", p.url),
            );
        }
        if p.timeout.is_some_and(|d| d.get().is_zero()) {
            self.err(child(at, "timeout"), "must be above zero");
        }
        for (key, list) in [
            ("send_headers", &p.send_headers),
            ("copy_to_upstream", &p.copy_to_upstream),
            ("copy_to_client_on_deny", &p.copy_to_client_on_deny),
        ] {
            for (i, h) in list.iter().enumerate() {
                let h_at = item(&child(at, key), i);
                if HeaderName::from_bytes(h.as_bytes()).is_err() {
                    self.err(h_at, format!("`{h}` is not a valid header name"));
                } else if key != "send_headers"
                    && (MANAGED_HEADERS.contains(&h.to_ascii_lowercase().as_str())
                        || (key == "copy_to_upstream" && h.eq_ignore_ascii_case("host")))
                {
                    self.err(h_at, format!("`{h}` is managed by the gateway"));
                }
            }
        }
        if p.send_body.0 > 1024 * 1024 {
            self.err(child(at, "send_body"), "at most 1MiB");
        }
        if p.send_body.0 > 0 && p.cache.is_some() {
            self.err(
                child(at, "cache"),
                "not with send_body: a kept decision would answer for another body",
            );
        }
        if let Some(cache) = &p.cache {
            let key_at = child(&child(at, "cache"), "key");
            if cache.key.is_empty() {
                self.err(
                    key_at.clone(),
                    "list what a decision depends on: header:<name>, method, path",
                );
            }
            for (i, k) in cache.key.iter().enumerate() {
                let valid = match k.strip_prefix("header:") {
                    Some(h) => HeaderName::from_bytes(h.as_bytes()).is_ok(),
                    None => k == "method" || k == "path",
                };
                if !valid {
                    self.err(
                        item(&key_at, i),
                        format!("`{k}` is not header:<name>, method or path"),
                    );
                }
            }
            if cache.ttl.get().is_zero() {
                self.err(
                    child(&child(at, "cache"), "ttl"),
                    "must be above zero (leave `cache` out to ask every time)",
                );
            }
        }
    }

    /// `token_from` and `forward_claims`, shared by JWT and introspection.
    fn token_handling(
        &mut self,
        at: &str,
        token_from: Option<&[String]>,
        forward: &std::collections::BTreeMap<String, String>,
    ) {
        if let Some(list) = token_from {
            if list.is_empty() {
                self.err(child(at, "token_from"), "list at least one token source");
            }
            for (i, s) in list.iter().enumerate() {
                if let Err(e) = s.parse::<crate::config::values::TokenSource>() {
                    self.err(item(&child(at, "token_from"), i), e);
                }
            }
        }
        let fc = child(at, "forward_claims");
        for (claim, h) in forward {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                self.err(
                    child(&fc, claim),
                    format!("`{h}` is not a valid header name"),
                );
            } else if MANAGED_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
                self.err(
                    child(&fc, claim),
                    format!("`{h}` is managed by the gateway"),
                );
            }
        }
    }
}
