//! `caches` and the routes' `cache`: sizes that bound something, a Redis URL,
//! caches that exist, and keys of the allowed forms.

use http::HeaderName;

use super::{Checker, redacted};
use crate::config::positions::{child, item};
use crate::config::schema::Config;
use crate::config::suggest;

/// The fixed key parts; `header:<name>` is the other form.
const KEY_PARTS: [&str; 3] = ["host", "path", "query"];

impl Checker {
    pub(super) fn caches(&mut self, config: &Config) {
        for (name, c) in &config.caches {
            let at = child("caches", name);
            if c.max_bytes.0 == 0 {
                self.err(
                    child(&at, "max_bytes"),
                    "the memory tier needs a size above zero",
                );
            }
            if c.max_object_bytes.0 == 0 {
                self.err(
                    child(&at, "max_object_bytes"),
                    "the largest stored response must be above zero bytes",
                );
            } else if c.max_object_bytes.0 > c.max_bytes.0 {
                self.err(
                    child(&at, "max_object_bytes"),
                    format!(
                        "larger than the cache itself ({} > max_bytes {})",
                        c.max_object_bytes, c.max_bytes
                    ),
                );
            } else if c.max_object_bytes.0 > u64::from(u32::MAX) {
                self.err(child(&at, "max_object_bytes"), "at most 4GiB");
            }
            if let Some(r) = &c.redis {
                let at = child(&at, "redis");
                if !r.url.starts_with("redis://") {
                    self.err(
                        child(&at, "url"),
                        format!("expected a redis:// URL, got `{}`", redacted(&r.url)),
                    );
                }
                if r.prefix.is_empty() {
                    self.err(child(&at, "prefix"), "the key prefix must not be empty");
                }
                if r.timeout.get().is_zero() {
                    self.err(child(&at, "timeout"), "the timeout must be above zero");
                }
            }
        }
        for (i, route) in config.routes.iter().enumerate() {
            let Some(rc) = &route.cache else { continue };
            let at = child(&item("routes", i), "cache");
            if !config.caches.contains_key(&rc.cache) {
                let hint = suggest::hint(&rc.cache, config.caches.keys().map(String::as_str));
                self.err(
                    child(&at, "use"),
                    format!("unknown cache `{}`{hint}", rc.cache),
                );
            }
            if route.upstream.is_none() {
                self.err(
                    &at,
                    "a cache stores upstream answers; this route answers with `respond` or `redirect`",
                );
            }
            if route.compress.is_some() {
                self.err(
                    &at,
                    "a cached route cannot also have `compress` yet: let the upstream compress (its Content-Encoding and Vary are kept)",
                );
            }
            if rc.key.is_empty() {
                self.err(
                    child(&at, "key"),
                    "list at least one of host, path, query, header:<name>",
                );
            }
            for (j, part) in rc.key.iter().enumerate() {
                let ok = match part.split_once(':') {
                    Some(("header", name)) => {
                        HeaderName::from_bytes(name.trim().as_bytes()).is_ok()
                    }
                    Some(_) => false,
                    None => KEY_PARTS.contains(&part.as_str()),
                };
                if !ok {
                    let hint = suggest::hint(part, KEY_PARTS);
                    self.err(
                        item(&child(&at, "key"), j),
                        format!("expected host, path, query or header:<name>, got `{part}`{hint}"),
                    );
                }
            }
            if rc.default_ttl.is_some_and(|d| d.get().is_zero()) {
                self.err(
                    child(&at, "default_ttl"),
                    "must be above zero (leave it out for none)",
                );
            }
        }
    }
}
