//! Whole-config checks that serde cannot make: names unique, references that
//! resolve, addresses, regexes and header names that parse, values in range, and
//! features the gateway does not implement yet. Every problem is collected, each
//! named by its zero-based key path; `load` turns paths into file positions.
//!
//! One file per section of the config, declared here in the order `validate`
//! checks them; `files` reads what the config names, after `validate` passed.

use http::Method;

use crate::config::positions::child;
use crate::config::schema::Config;
use crate::config::suggest;

// Sections, in the order `validate` runs them.
mod server;

mod upstreams;

mod auth;

mod consumers;

mod cors;

mod routes;

mod rate_limits;

mod idempotency;

mod cache;

pub mod tracing;

// After `validate`, at every load.
mod files;

pub use files::files;

/// A problem: the key path it is about and what is wrong.
pub type Issue = (String, String);

/// Check a deserialized config; empty means valid.
pub fn validate(config: &Config) -> Vec<Issue> {
    let mut v = Checker::default();
    v.server(config);
    v.resolvers(config);
    for (name, upstream) in &config.upstreams {
        v.upstream(&child("upstreams", name), upstream);
    }
    v.auth(config);
    v.consumers(config);
    v.cors(config);
    v.routes(config);
    v.rate_limits(config);
    v.idempotency(config);
    v.caches(config);
    v.tracing(config);
    v.issues
}

#[derive(Default)]
struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push((path.into(), message.into()));
    }
}

// Checks more than one section uses.

/// Headers a configured `set` must not touch: they describe one connection, or
/// their framing is the gateway's job (RFC 9110 §7.6.1).
const MANAGED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

const STANDARD_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Any HTTP token is a method, but one a letter away from a standard method is
/// far more likely a typo than a custom verb.
fn check_method(method: &str) -> Result<(), String> {
    if Method::from_bytes(method.as_bytes()).is_err() {
        return Err(format!("`{method}` is not a valid HTTP method"));
    }
    let upper = method.to_ascii_uppercase();
    if !STANDARD_METHODS.contains(&upper.as_str())
        && let Some(m) = suggest::closest(&upper, STANDARD_METHODS.iter().copied())
    {
        return Err(format!("unknown method `{method}` (did you mean `{m}`?)"));
    }
    Ok(())
}

/// A URL with any password replaced, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}
