//! `consumers` and `consumer_groups`: groups that exist, credentials that
//! exist and belong to one consumer each, plans that parse, and the header
//! the consumer's name travels in.

use std::collections::HashMap;

use http::{HeaderName, HeaderValue};

use super::{Checker, MANAGED_HEADERS};
use crate::config::positions::{child, item};
use crate::config::schema::Config;
use crate::config::suggest;

impl Checker {
    pub(super) fn consumers(&mut self, config: &Config) {
        self.consumer_header(config);
        for (name, g) in &config.consumer_groups {
            let at = child("consumer_groups", name);
            if let Some(rl) = &g.rate_limit {
                self.rate_limit(&child(&at, "rate_limit"), &rl.as_policy(), config);
            }
            if let Some(q) = &g.quota {
                let at = child(&at, "quota");
                if config.redis.is_none() {
                    self.err(
                        &at,
                        "a quota is counted in Redis: add the top-level `redis: { url: ... }` section",
                    );
                }
                if !matches!(q.key.as_str(), "consumer" | "consumer_group") {
                    let hint = suggest::hint(&q.key, ["consumer", "consumer_group"]);
                    self.err(
                        child(&at, "key"),
                        format!("expected consumer or consumer_group, got `{}`{hint}", q.key),
                    );
                }
                if !matches!(q.on_store_error.as_str(), "allow" | "deny") {
                    let hint = suggest::hint(&q.on_store_error, ["allow", "deny"]);
                    self.err(
                        child(&at, "on_store_error"),
                        format!("expected allow or deny, got `{}`{hint}", q.on_store_error),
                    );
                }
            }
        }

        let key_ids: Vec<&str> = config
            .auth
            .api_keys
            .values()
            .flat_map(|set| set.keys.iter().map(|k| k.id.as_str()))
            .collect();
        let verifies_subjects =
            !config.auth.jwt.is_empty() || !config.auth.introspection.is_empty();
        // (list, credential) -> the consumer that listed it first.
        let mut owners: HashMap<(&str, &str), &str> = HashMap::new();
        for (name, c) in &config.consumers {
            let at = child("consumers", name);
            if name.is_empty() || HeaderValue::from_str(name).is_err() {
                self.err(
                    &at,
                    "a consumer's name is non-empty printable ASCII (it is sent upstream in a header)",
                );
            }
            if let Some(g) = &c.group
                && !config.consumer_groups.contains_key(g)
            {
                let hint = suggest::hint(g, config.consumer_groups.keys().map(String::as_str));
                self.err(
                    child(&at, "group"),
                    format!("unknown consumer group `{g}`{hint}"),
                );
            }
            for (list, ids) in [
                ("api_keys", &c.api_keys),
                ("jwt_subjects", &c.jwt_subjects),
                ("basic_users", &c.basic_users),
            ] {
                for (i, id) in ids.iter().enumerate() {
                    let id_at = item(&child(&at, list), i);
                    if id.is_empty() {
                        self.err(&id_at, "empty (is its ${VARIABLE} set?)");
                        continue;
                    }
                    match owners.insert((list, id), name) {
                        Some(first) if first == name => {
                            self.err(&id_at, format!("`{id}` is listed twice"));
                        }
                        Some(first) => self.err(
                            &id_at,
                            format!(
                                "`{id}` already belongs to consumer `{first}`; a credential identifies one consumer"
                            ),
                        ),
                        None => {}
                    }
                    match list {
                        "api_keys" if !key_ids.contains(&id.as_str()) => {
                            let hint = suggest::hint(id, key_ids.iter().copied());
                            self.err(
                                &id_at,
                                format!(
                                    "no key of `auth.api_keys` has the id `{id}` (list key ids, never keys){hint}"
                                ),
                            );
                        }
                        "jwt_subjects" if !verifies_subjects => self.err(
                            &id_at,
                            "no `auth.jwt` or `auth.introspection` policy verifies subjects",
                        ),
                        "basic_users" if config.auth.basic.is_empty() => {
                            self.err(&id_at, "no `auth.basic` policy checks users")
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn consumer_header(&mut self, config: &Config) {
        let header = &config.server.consumer_header;
        let at = "server.consumer_header";
        match HeaderName::from_bytes(header.as_bytes()) {
            Err(_) => self.err(at, format!("`{header}` is not a valid header name")),
            Ok(h) if MANAGED_HEADERS.contains(&h.as_str()) || h == http::header::HOST => {
                self.err(at, format!("`{header}` is not the gateway's to set"));
            }
            Ok(h) if h.as_str() == "x-consumer-id" || h == http::header::AUTHORIZATION => {
                self.err(at, format!("`{header}` already carries the credential"));
            }
            Ok(_) => {}
        }
    }
}
