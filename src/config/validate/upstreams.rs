//! `upstreams.<name>`: targets, balancing, TLS to the upstream, health checks, circuit breakers, retries.

use http::{HeaderName, Uri};

use super::{Checker, check_method};
use crate::config::positions::{child, item};
use crate::config::schema::{Target, Upstream, UpstreamTls};
use crate::config::suggest;
use crate::config::values;

impl Checker {
    /// `resolvers:`: name server addresses, only useful with dns or srv targets.
    pub(super) fn resolvers(&mut self, config: &crate::config::schema::Config) {
        let Some(list) = &config.resolvers else {
            return;
        };
        if list.is_empty() {
            self.err(
                "resolvers",
                "list at least one name server, or leave resolvers out to use /etc/resolv.conf",
            );
        }
        for (i, r) in list.iter().enumerate() {
            if let Err(e) = values::parse_resolver(r) {
                self.err(item("resolvers", i), e);
            }
        }
    }

    pub(super) fn upstream(&mut self, at: &str, u: &Upstream) {
        if u.targets.is_empty() {
            self.err(
                child(at, "targets"),
                "an upstream needs at least one target",
            );
        }
        for (i, t) in u.targets.iter().enumerate() {
            let target = item(&child(at, "targets"), i);
            self.target(&target, t);
            if !(1..=10_000).contains(&t.weight) {
                self.err(
                    child(&target, "weight"),
                    format!("must be between 1 and 10000, got {}", t.weight),
                );
            }
        }
        if let Some(tls) = &u.tls {
            self.upstream_tls(&child(at, "tls"), u, tls);
        }
        if let Err(e) = check_balance(&u.balance) {
            self.err(child(at, "balance"), e);
        }
        match u.protocol.as_str() {
            "http1" | "h2" => {}
            other => self.err(
                child(at, "protocol"),
                format!(
                    "unknown protocol `{other}`; expected http1 or h2{}",
                    suggest::hint(other, ["http1", "h2"])
                ),
            ),
        }
        for (key, d) in [
            ("connect", u.timeouts.connect),
            ("request", u.timeouts.request),
            ("idle", u.timeouts.idle),
        ] {
            if d.get().is_zero() {
                self.err(child(&child(at, "timeouts"), key), "must be above zero");
            }
        }
        if u.max_concurrent_requests == Some(0) {
            self.err(
                child(at, "max_concurrent_requests"),
                "must be above zero; leave it out for no limit",
            );
        }
        self.resilience(at, u);
    }

    /// One entry of `targets`: exactly one of `url`, `dns` and `srv`, each
    /// well formed; `refresh` and `keep_stale` only with a lookup.
    fn target(&mut self, at: &str, t: &Target) {
        let given: Vec<&str> = [("url", &t.url), ("dns", &t.dns), ("srv", &t.srv)]
            .into_iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k)
            .collect();
        match given.as_slice() {
            [] => self.err(at, "a target needs one of url, dns or srv"),
            [_] => {}
            [first, second, ..] => self.err(
                child(at, second),
                format!(
                    "a target has one of url, dns or srv; this one has both {first} and {second}"
                ),
            ),
        }
        if let Some(url) = &t.url {
            if let Err(e) = check_target_url(url) {
                self.err(child(at, "url"), e);
            }
            for (key, set) in [
                ("refresh", t.refresh.is_some()),
                ("keep_stale", t.keep_stale.is_some()),
            ] {
                if set {
                    self.err(
                        child(at, key),
                        format!("{key} applies to dns and srv targets, not to url"),
                    );
                }
            }
        }
        if let Some(dns) = &t.dns
            && let Err(e) = values::parse_dns_target(dns)
        {
            self.err(child(at, "dns"), e);
        }
        if let Some(srv) = &t.srv
            && let Err(e) = values::check_dns_name(srv)
        {
            self.err(child(at, "srv"), e);
        }
        if let Some(r) = t.refresh
            && r.get() < std::time::Duration::from_secs(1)
        {
            self.err(
                child(at, "refresh"),
                format!("must be at least 1s, got {r}"),
            );
        }
        if t.keep_stale.is_some_and(|k| k.get().is_zero()) {
            self.err(child(at, "keep_stale"), "must be above zero");
        }
    }

    pub(super) fn upstream_tls(&mut self, at: &str, u: &Upstream, tls: &UpstreamTls) {
        if !u
            .targets
            .iter()
            .any(|t| t.url.as_deref().is_some_and(|u| u.starts_with("https://")))
        {
            self.err(
                at,
                "tls applies to https:// targets and this upstream has none",
            );
        }
        if let Some(name) = &tls.server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            self.err(
                child(at, "server_name"),
                format!("expected a DNS name or an IP address, got `{name}`"),
            );
        }
        if tls.insecure_skip_verify && tls.ca.is_some() {
            self.err(
                child(at, "ca"),
                "a CA has no effect with insecure_skip_verify: true; remove one of them",
            );
        }
    }

    /// `health_check`, `outlier`, `circuit_breaker` and `retries` of an upstream.
    pub(super) fn resilience(&mut self, at: &str, u: &Upstream) {
        if let Some(h) = &u.health_check {
            let hc = child(at, "health_check");
            if !h.path.starts_with('/') || h.path.parse::<http::uri::PathAndQuery>().is_err() {
                self.err(
                    child(&hc, "path"),
                    format!("expected a path starting with /, got `{}`", h.path),
                );
            }
            if h.timeout.get().is_zero() {
                self.err(child(&hc, "timeout"), "must be above zero");
            }
            if h.interval.get() <= h.timeout.get() {
                self.err(
                    child(&hc, "interval"),
                    format!(
                        "must be longer than the timeout ({}), got {}",
                        h.timeout, h.interval
                    ),
                );
            }
            for (key, v) in [
                ("healthy_threshold", h.healthy_threshold),
                ("unhealthy_threshold", h.unhealthy_threshold),
            ] {
                if v == 0 {
                    self.err(child(&hc, key), "must be at least 1");
                }
            }
        }
        if let Some(o) = &u.outlier {
            let at = child(at, "outlier");
            for (key, n) in [
                ("consecutive_5xx", o.consecutive_5xx),
                ("consecutive_connect_errors", o.consecutive_connect_errors),
            ] {
                if n == 0 {
                    self.err(child(&at, key), "must be at least 1");
                }
            }
            if o.base_ejection.get().is_zero() {
                self.err(child(&at, "base_ejection"), "must be above zero");
            }
            if o.max_ejection_percent > 100 {
                self.err(
                    child(&at, "max_ejection_percent"),
                    format!(
                        "a share of the targets, 0 to 100, got {}",
                        o.max_ejection_percent
                    ),
                );
            }
        }
        if let Some(cb) = &u.circuit_breaker {
            let at = child(at, "circuit_breaker");
            if cb.consecutive_failures == 0 {
                self.err(child(&at, "consecutive_failures"), "must be at least 1");
            }
            if cb.half_open_max_requests == 0 {
                self.err(child(&at, "half_open_max_requests"), "must be at least 1");
            }
            if cb.open_for.get().is_zero() {
                self.err(child(&at, "open_for"), "must be above zero");
            }
            for (i, s) in cb.failure_statuses.iter().flatten().enumerate() {
                if !(500..=599).contains(s) {
                    self.err(
                        item(&child(&at, "failure_statuses"), i),
                        format!("expected a 5xx status, got {s}"),
                    );
                }
            }
        }
        if let Some(r) = &u.retries {
            let at = child(at, "retries");
            if !(1..=10).contains(&r.attempts) {
                self.err(
                    child(&at, "attempts"),
                    format!("must be between 1 and 10, got {}", r.attempts),
                );
            }
            for (i, o) in r.on.iter().flatten().enumerate() {
                if let Err(e) = check_retry_on(&o.to_string()) {
                    self.err(item(&child(&at, "on"), i), e);
                }
            }
            for (i, m) in r.methods.iter().flatten().enumerate() {
                if let Err(e) = check_method(m) {
                    self.err(item(&child(&at, "methods"), i), e);
                }
            }
            if r.budget_percent.is_some_and(|p| p > 100) {
                self.err(
                    child(&at, "budget_percent"),
                    format!(
                        "must be between 0 and 100, got {}",
                        r.budget_percent.unwrap_or_default()
                    ),
                );
            }
            if r.backoff.is_some_and(|b| b.get().is_zero()) {
                self.err(child(&at, "backoff"), "must be above zero");
            }
        }
        if u.slow_start.is_some_and(|s| s.get().is_zero()) {
            self.err(
                child(at, "slow_start"),
                "must be above zero; leave it out for none",
            );
        }
        if matches!(
            u.balance.split(':').next(),
            Some("ip_hash" | "header_hash" | "cookie_hash")
        ) && u.slow_start.is_some()
        {
            self.err(
                child(at, "slow_start"),
                format!(
                    "slow start ramps round_robin, least_request and random; `{}` keeps each key on its target",
                    u.balance
                ),
            );
        }
        if let Some(r) = &u.retry_after
            && r.max.get().is_zero()
        {
            self.err(
                child(&child(at, "retry_after"), "max"),
                "must be above zero",
            );
        }
    }
}

pub(super) const BALANCE_KINDS: &[&str] = &[
    "round_robin",
    "least_request",
    "random",
    "ip_hash",
    "header_hash",
    "cookie_hash",
];

/// `http(s)://host[:port][/]`: the gateway picks the path, the target only says where.
pub(super) fn check_target_url(url: &str) -> Result<(), String> {
    let expected = || {
        format!("expected a URL like http://127.0.0.1:9000 or https://users.internal, got `{url}`")
    };
    let uri: Uri = url.parse().map_err(|_| expected())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(expected());
    }
    let authority = uri.authority().ok_or_else(expected)?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "a target URL cannot carry credentials, got `{url}`"
        ));
    }
    if authority.host().is_empty() {
        return Err(expected());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "a target URL cannot have a path or query (use the route's rewrite), got `{url}`"
        ));
    }
    Ok(())
}

/// `round_robin | least_request | random | ip_hash | header_hash:<name> | cookie_hash:<name>`.
pub(super) fn check_balance(balance: &str) -> Result<(), String> {
    let (kind, arg) = match balance.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (balance, None),
    };
    let expected = "expected round_robin, least_request, random, ip_hash, header_hash:<name> or cookie_hash:<name>";
    match (kind, arg) {
        ("round_robin" | "least_request" | "random" | "ip_hash", None) => Ok(()),
        ("header_hash", Some(name)) => {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                Err(format!("`{name}` is not a valid header name"))
            } else {
                Ok(())
            }
        }
        ("cookie_hash", Some(name)) => {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if valid {
                Ok(())
            } else {
                Err(format!("`{name}` is not a valid cookie name"))
            }
        }
        ("header_hash" | "cookie_hash", None) => {
            Err(format!("`{kind}` needs a name: `{kind}:<name>`"))
        }
        (k, _) if BALANCE_KINDS.contains(&k) => Err(format!("`{k}` takes no argument; {expected}")),
        (k, _) => Err(format!(
            "unknown balance `{balance}`; {expected}{}",
            suggest::hint(k, BALANCE_KINDS.iter().copied())
        )),
    }
}

pub(super) const RETRY_CONDITIONS: &[&str] = &["connect_error", "timeout", "reset"];

/// A retry condition: a named outcome or a 5xx status.
pub(super) fn check_retry_on(on: &str) -> Result<(), String> {
    if RETRY_CONDITIONS.contains(&on) {
        return Ok(());
    }
    match on.parse::<u16>() {
        Ok(s) if (500..=599).contains(&s) => Ok(()),
        Ok(s) => Err(format!("only 5xx statuses can be retried, got {s}")),
        Err(_) => Err(format!(
            "unknown retry condition `{on}`; expected connect_error, timeout, reset or a 5xx status{}",
            suggest::hint(on, RETRY_CONDITIONS.iter().copied())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        assert!(check_target_url("http://127.0.0.1:9000").is_ok());
        assert!(check_target_url("http://users.internal").is_ok());
        assert!(check_target_url("http://[::1]:80/").is_ok());
        assert!(check_target_url("https://x").is_ok());
        assert!(check_target_url("https://x:8443/").is_ok());
        assert!(
            check_target_url("http://x/api")
                .unwrap_err()
                .contains("path")
        );
        assert!(check_target_url("127.0.0.1:80").is_err());
        assert!(check_target_url("ftp://x").is_err());
    }

    #[test]
    fn balances() {
        for ok in [
            "round_robin",
            "ip_hash",
            "header_hash:x-user",
            "cookie_hash:session",
        ] {
            assert!(check_balance(ok).is_ok(), "{ok}");
        }
        assert!(
            check_balance("round_robbin")
                .unwrap_err()
                .contains("did you mean `round_robin`")
        );
        assert!(
            check_balance("header_hash")
                .unwrap_err()
                .contains("needs a name")
        );
        assert!(check_balance("header_hash:bad header").is_err());
    }

    #[test]
    fn retry_conditions() {
        for ok in ["connect_error", "timeout", "reset", "502", "599"] {
            assert!(check_retry_on(ok).is_ok(), "{ok}");
        }
        assert!(check_retry_on("404").unwrap_err().contains("5xx"));
        assert!(
            check_retry_on("conect_error")
                .unwrap_err()
                .contains("did you mean `connect_error`")
        );
    }
}
