//! `rate_limits`: each policy's rate, burst, key and store, and the routes that use them.

use super::{Checker, redacted};
use crate::config::positions::{child, item};
use crate::config::schema::{Config, RateLimit};
use crate::config::suggest;
use crate::config::values::KeyKind;

impl Checker {
    pub(super) fn rate_limits(&mut self, config: &Config) {
        for (name, rl) in &config.rate_limits {
            self.rate_limit(&child("rate_limits", name), rl, config);
        }
        if let Some(redis) = &config.redis {
            if !(redis.url.starts_with("redis://") || redis.url.starts_with("rediss://")) {
                self.err(
                    "redis.url",
                    format!("expected a redis:// URL, got `{}`", redacted(&redis.url)),
                );
            }
            if redis.timeout.get().is_zero() {
                self.err("redis.timeout", "the timeout must be above zero");
            }
        }
        for (i, route) in config.routes.iter().enumerate() {
            for (j, name) in route.rate_limit.iter().flatten().enumerate() {
                if !config.rate_limits.contains_key(name) {
                    let hint = suggest::hint(name, config.rate_limits.keys().map(String::as_str));
                    self.err(
                        item(&child(&item("routes", i), "rate_limit"), j),
                        format!("unknown rate limit `{name}`{hint}"),
                    );
                }
            }
        }
    }

    /// One token-bucket definition: a `rate_limits` entry or a consumer
    /// group's `rate_limit`.
    pub(super) fn rate_limit(&mut self, at: &str, rl: &RateLimit, config: &Config) {
        if let Err(e) = rl.key.parse::<KeyKind>() {
            let hint = suggest::hint(
                &rl.key,
                [
                    "client_ip",
                    "api_key",
                    "route",
                    "consumer",
                    "consumer_group",
                ],
            );
            self.err(child(at, "key"), format!("{e}{hint}"));
        }
        if rl.burst == Some(0) {
            self.err(child(at, "burst"), "burst must be at least 1");
        }
        if rl.max_keys == 0 {
            self.err(child(at, "max_keys"), "max_keys must be at least 1");
        }
        match rl.store.as_str() {
            "local" => {}
            "redis" => {
                if config.redis.is_none() {
                    self.err(
                        child(at, "store"),
                        "`store: redis` needs the top-level `redis: { url: ... }` section",
                    );
                }
            }
            other => {
                let hint = suggest::hint(other, ["local", "redis"]);
                self.err(
                    child(at, "store"),
                    format!("unknown store `{other}`; expected local or redis{hint}"),
                );
            }
        }
        if !matches!(rl.on_store_error.as_str(), "allow" | "deny") {
            let hint = suggest::hint(&rl.on_store_error, ["allow", "deny"]);
            self.err(
                child(at, "on_store_error"),
                format!("expected allow or deny, got `{}`{hint}", rl.on_store_error),
            );
        }
    }
}
