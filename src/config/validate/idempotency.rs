//! `idempotency`: each policy's store, lifetimes and limits, and the routes that use them.

use super::{Checker, redacted};
use crate::config::positions::{child, item};
use crate::config::schema::Config;
use crate::config::suggest;

impl Checker {
    pub(super) fn idempotency(&mut self, config: &Config) {
        for (name, p) in &config.idempotency {
            let at = child("idempotency", name);
            match p.store.as_str() {
                "memory" => {
                    if p.redis.is_some() {
                        self.err(
                            child(&at, "redis"),
                            "`redis` settings need `store: redis` (this policy uses the memory store)",
                        );
                    }
                }
                "redis" => {
                    let url = p.redis.as_ref().and_then(|r| r.url.as_deref());
                    match url.or(config.redis.as_ref().map(|r| r.url.as_str())) {
                        None => self.err(
                            child(&at, "store"),
                            "`store: redis` needs `redis: { url: ... }` here or in the top-level \
                             `redis` section",
                        ),
                        Some(url) if !url.starts_with("redis://") => self.err(
                            child(&child(&at, "redis"), "url"),
                            format!("expected a redis:// URL, got `{}`", redacted(url)),
                        ),
                        Some(_) => {}
                    }
                    if let Some(r) = &p.redis {
                        if r.timeout.is_some_and(|t| t.get().is_zero()) {
                            self.err(
                                child(&child(&at, "redis"), "timeout"),
                                "the timeout must be above zero",
                            );
                        }
                        if r.prefix.is_empty() {
                            self.err(
                                child(&child(&at, "redis"), "prefix"),
                                "the prefix must not be empty (keys would mix with other data)",
                            );
                        }
                    }
                    if p.max_bytes.is_some() {
                        self.err(
                            child(&at, "max_bytes"),
                            "`max_bytes` bounds the memory store; Redis bounds its own memory",
                        );
                    }
                }
                other => {
                    let hint = suggest::hint(other, ["memory", "redis"]);
                    self.err(
                        child(&at, "store"),
                        format!("unknown store `{other}`; expected memory or redis{hint}"),
                    );
                }
            }
            if p.ttl.get().is_zero() {
                self.err(child(&at, "ttl"), "ttl must be above zero");
            }
            if p.lock_timeout.get().is_zero() {
                self.err(
                    child(&at, "lock_timeout"),
                    "lock_timeout must be above zero",
                );
            }
            if p.max_response_bytes.0 == 0 {
                self.err(
                    child(&at, "max_response_bytes"),
                    "max_response_bytes must be above zero",
                );
            }
            if p.max_bytes.is_some_and(|b| b.0 < p.max_response_bytes.0) {
                self.err(
                    child(&at, "max_bytes"),
                    "max_bytes is smaller than max_response_bytes: no answer would fit",
                );
            }
            if !matches!(p.on_store_error.as_str(), "reject" | "pass") {
                let hint = suggest::hint(&p.on_store_error, ["reject", "pass"]);
                self.err(
                    child(&at, "on_store_error"),
                    format!("expected reject or pass, got `{}`{hint}", p.on_store_error),
                );
            }
        }
        for (i, route) in config.routes.iter().enumerate() {
            let Some(name) = &route.idempotency else {
                continue;
            };
            let at = child(&item("routes", i), "idempotency");
            if !config.idempotency.contains_key(name) {
                let hint = suggest::hint(name, config.idempotency.keys().map(String::as_str));
                self.err(at, format!("unknown idempotency policy `{name}`{hint}"));
            } else if route.upstream.is_none() {
                self.err(
                    at,
                    "idempotency applies to forwarded requests; this route answers with `respond`",
                );
            }
        }
    }
}
