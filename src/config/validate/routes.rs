//! `routes[]`: matchers, actions, the policies a route names, compression and header edits.

use std::collections::HashSet;

use http::{HeaderName, HeaderValue};

use super::{Checker, MANAGED_HEADERS, check_method};
use crate::config::positions::{child, item};
use crate::config::schema::{Config, HeaderMatch, HeaderOps, Match, Route, RouteUpstream};
use crate::config::suggest;
use crate::config::values::Encoding;

impl Checker {
    pub(super) fn routes(&mut self, config: &Config) {
        let mut names = HashSet::new();
        for (i, route) in config.routes.iter().enumerate() {
            let at = item("routes", i);
            if route.name.is_empty() {
                self.err(child(&at, "name"), "a route name cannot be empty");
            } else if !names.insert(route.name.as_str()) {
                self.err(
                    child(&at, "name"),
                    format!("duplicate route name `{}`", route.name),
                );
            }
            self.matcher(&child(&at, "match"), &route.matcher);
            self.action(&at, route, config);
            if let Some(t) = route.timeout
                && t.get().is_zero()
            {
                self.err(child(&at, "timeout"), "must be above zero");
            }
            self.route_policies(&at, route, config);
            if let Some(list) = &route.compress {
                self.compress(&child(&at, "compress"), list, route);
            }
            self.header_ops(&child(&at, "request_headers"), &route.request_headers);
            self.header_ops(&child(&at, "response_headers"), &route.response_headers);
        }
    }

    /// `compress: [gzip, br, zstd]`: known names, each once, on a proxied route.
    pub(super) fn compress(&mut self, at: &str, list: &[String], route: &Route) {
        if route.upstream.is_none() {
            self.err(at, "compress only applies to routes with an `upstream`");
        }
        if list.is_empty() {
            self.err(
                at,
                "list at least one encoding (gzip, br, zstd), or remove `compress`",
            );
        }
        let mut seen = HashSet::new();
        for (i, name) in list.iter().enumerate() {
            if Encoding::from_name(name).is_none() {
                let hint = match name.to_ascii_lowercase().as_str() {
                    "brotli" => " (did you mean `br`?)".to_string(),
                    _ => suggest::hint(name, Encoding::NAMES),
                };
                self.err(
                    item(at, i),
                    format!("unknown encoding `{name}`; expected gzip, br or zstd{hint}"),
                );
            } else if !seen.insert(name.as_str()) {
                self.err(item(at, i), format!("`{name}` is listed twice"));
            }
        }
    }

    /// Route `auth`, `require_claims`, `cors`, `ip_allow` and `ip_deny`.
    pub(super) fn route_policies(&mut self, at: &str, route: &Route, config: &Config) {
        let mut has_claims = false;
        if let Some(list) = &route.auth {
            if list.is_empty() {
                self.err(
                    child(at, "auth"),
                    "an empty list would refuse everyone; leave `auth` out for a public route",
                );
            }
            let mut seen = HashSet::new();
            for (i, entry) in list.iter().enumerate() {
                let entry_at = item(&child(at, "auth"), i);
                if !seen.insert(entry.as_str()) {
                    self.err(&entry_at, format!("`{entry}` is listed twice"));
                    continue;
                }
                match entry.split_once(':') {
                    Some(("jwt", name)) => {
                        has_claims = true;
                        if !config.auth.jwt.contains_key(name) {
                            let hint =
                                suggest::hint(name, config.auth.jwt.keys().map(String::as_str));
                            self.err(entry_at, format!("unknown JWT policy `{name}`{hint}"));
                        }
                    }
                    Some(("api_key", name)) => {
                        if !config.auth.api_keys.contains_key(name) {
                            let hint = suggest::hint(
                                name,
                                config.auth.api_keys.keys().map(String::as_str),
                            );
                            self.err(entry_at, format!("unknown API key set `{name}`{hint}"));
                        }
                    }
                    Some(("basic", name)) => {
                        if !config.auth.basic.contains_key(name) {
                            let hint =
                                suggest::hint(name, config.auth.basic.keys().map(String::as_str));
                            self.err(entry_at, format!("unknown basic auth `{name}`{hint}"));
                        }
                    }
                    Some(("introspection", name)) => {
                        has_claims = true;
                        if !config.auth.introspection.contains_key(name) {
                            let hint = suggest::hint(
                                name,
                                config.auth.introspection.keys().map(String::as_str),
                            );
                            self.err(
                                entry_at,
                                format!("unknown introspection policy `{name}`{hint}"),
                            );
                        }
                    }
                    Some(("external", name)) => {
                        if !config.auth.external.contains_key(name) {
                            let hint = suggest::hint(
                                name,
                                config.auth.external.keys().map(String::as_str),
                            );
                            self.err(
                                entry_at,
                                format!("unknown external authorization `{name}`{hint}"),
                            );
                        }
                    }
                    Some((kind, _)) => self.err(
                        entry_at,
                        format!(
                            "unknown auth kind `{kind}`; expected jwt:<policy>, api_key:<set>, basic:<name>, introspection:<name> or external:<name>{}",
                            suggest::hint(kind, ["jwt", "api_key", "basic", "introspection", "external"])
                        ),
                    ),
                    None => self.err(
                        entry_at,
                        format!(
                            "expected jwt:<policy>, api_key:<set>, basic:<name>, introspection:<name> or external:<name>, got `{entry}`"
                        ),
                    ),
                }
            }
        }
        if let Some(claims) = &route.require_claims {
            if !has_claims {
                self.err(
                    child(at, "require_claims"),
                    "needs a JWT or introspection policy in the route's `auth` (jwt:<policy>, introspection:<name>): claims come from the token",
                );
            }
            for (claim, want) in claims {
                let empty = match want {
                    crate::config::schema::StringOrList::One(v) => v.is_empty(),
                    crate::config::schema::StringOrList::Many(v) => {
                        v.is_empty() || v.iter().any(String::is_empty)
                    }
                };
                if empty {
                    self.err(
                        child(&child(at, "require_claims"), claim),
                        "give the value (or values, any of which may match) the claim must have",
                    );
                }
            }
        }
        if let Some(name) = &route.cors
            && !config.cors.contains_key(name)
        {
            let hint = suggest::hint(name, config.cors.keys().map(String::as_str));
            self.err(
                child(at, "cors"),
                format!("unknown cors policy `{name}`{hint}"),
            );
        }
        for (key, list) in [("ip_allow", &route.ip_allow), ("ip_deny", &route.ip_deny)] {
            let Some(list) = list else { continue };
            if list.is_empty() && key == "ip_allow" {
                self.err(
                    child(at, key),
                    "an empty allow list would refuse everyone; leave it out instead",
                );
            }
            for (i, net) in list.iter().enumerate() {
                if let Err(e) = crate::config::values::parse_net(net) {
                    self.err(item(&child(at, key), i), e);
                }
            }
        }
    }

    pub(super) fn matcher(&mut self, at: &str, m: &Match) {
        let kinds = [
            ("path", m.path.is_some()),
            ("path_prefix", m.path_prefix.is_some()),
            ("path_regex", m.path_regex.is_some()),
        ];
        let given: Vec<&str> = kinds.iter().filter(|k| k.1).map(|k| k.0).collect();
        if given.len() != 1 {
            let what = if given.is_empty() {
                "none is given".to_owned()
            } else {
                format!("got {}", given.join(" and "))
            };
            self.err(
                at,
                format!("needs exactly one of path, path_prefix or path_regex; {what}"),
            );
        }
        for (key, value) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
            if let Some(p) = value
                && !p.starts_with('/')
            {
                self.err(child(at, key), format!("must start with `/`, got `{p}`"));
            }
        }
        if let Some(re) = &m.path_regex
            && let Err(e) = regex::Regex::new(re)
        {
            self.err(
                child(at, "path_regex"),
                format!("invalid regex: {}", regex_reason(&e)),
            );
        }
        for (i, host) in m.hosts.iter().flatten().enumerate() {
            if let Err(e) = check_host_pattern(host) {
                self.err(item(&child(at, "hosts"), i), e);
            }
        }
        for (i, method) in m.methods.iter().flatten().enumerate() {
            if let Err(e) = check_method(method) {
                self.err(item(&child(at, "methods"), i), e);
            }
        }
        let headers = child(at, "headers");
        for (name, value) in &m.headers {
            match value {
                HeaderMatch::Exact(v) => self.header(&headers, name, Some(v)),
                HeaderMatch::Present { .. } => self.header(&headers, name, None),
                HeaderMatch::Regex { regex } => {
                    self.header(&headers, name, None);
                    if let Err(e) = regex::Regex::new(regex) {
                        self.err(
                            child(&child(&headers, name), "regex"),
                            format!("invalid regex: {}", regex_reason(&e)),
                        );
                    }
                }
            }
        }
        for name in m.cookies.keys() {
            if !crate::config::values::is_cookie_name(name) {
                self.err(
                    child(&child(at, "cookies"), name),
                    format!("`{name}` is not a valid cookie name"),
                );
            }
        }
        for name in m.query.keys() {
            if name.is_empty() {
                self.err(child(at, "query"), "a query parameter name cannot be empty");
            }
        }
    }

    /// Where the route sends the request: exactly one of `upstream`,
    /// `respond` or `redirect`; then what only a proxied route may have.
    pub(super) fn action(&mut self, at: &str, route: &Route, config: &Config) {
        let given: Vec<&str> = [
            ("upstream", route.upstream.is_some()),
            ("respond", route.respond.is_some()),
            ("redirect", route.redirect.is_some()),
        ]
        .iter()
        .filter(|k| k.1)
        .map(|k| k.0)
        .collect();
        match given.len() {
            0 => self.err(
                at,
                "needs one of `upstream` (proxy), `respond` (direct response) or `redirect`",
            ),
            1 => {}
            _ => self.err(
                at,
                format!(
                    "give one of upstream, respond or redirect; got {}",
                    given.join(" and ")
                ),
            ),
        }
        match &route.upstream {
            Some(RouteUpstream::Name(name)) => {
                self.upstream_name(&child(at, "upstream"), name, config);
            }
            Some(RouteUpstream::Split(split)) => self.split(&child(at, "upstream"), split, config),
            None => {}
        }
        if let Some(respond) = &route.respond {
            let respond_at = child(at, "respond");
            if !(100..=599).contains(&respond.status) {
                self.err(
                    child(&respond_at, "status"),
                    format!(
                        "must be an HTTP status from 100 to 599, got {}",
                        respond.status
                    ),
                );
            }
            let headers = child(&respond_at, "headers");
            for (name, value) in &respond.headers {
                self.header(&headers, name, Some(value));
                if MANAGED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                    self.err(
                        child(&headers, name),
                        format!("`{name}` is managed by the gateway and cannot be set"),
                    );
                }
            }
        }
        if let Some(redirect) = &route.redirect {
            self.redirect(&child(at, "redirect"), redirect);
        }
        if let Some(mirror) = &route.mirror {
            self.mirror(&child(at, "mirror"), mirror, route, config);
        }
        for (key, set) in [
            ("max_body_bytes", route.max_body_bytes.is_some()),
            ("body_read_timeout", route.body_read_timeout.is_some()),
        ] {
            if set && route.upstream.is_none() {
                self.err(
                    child(at, key),
                    format!("{key} only applies to routes with an `upstream` (the body is read only to forward it)"),
                );
            }
        }
        if route.max_body_bytes.is_some_and(|b| b.0 == 0) {
            self.err(child(at, "max_body_bytes"), "must be above zero");
        }
        if route.body_read_timeout.is_some_and(|t| t.get().is_zero()) {
            self.err(child(at, "body_read_timeout"), "must be above zero");
        }
        if let Some(ws) = &route.websocket {
            let at = child(at, "websocket");
            if route.upstream.is_none() {
                self.err(
                    &at,
                    "websocket only applies to routes with an `upstream` (a tunnel goes to one)",
                );
            }
            if ws.max_message_bytes.is_some_and(|b| b.0 == 0) {
                self.err(child(&at, "max_message_bytes"), "must be above zero");
            }
            if ws.idle_timeout.is_some_and(|t| t.get().is_zero()) {
                self.err(child(&at, "idle_timeout"), "must be above zero");
            }
        }

        let Some(rewrite) = &route.rewrite else {
            return;
        };
        let rewrite_at = child(at, "rewrite");
        if route.upstream.is_none() {
            self.err(
                &rewrite_at,
                "rewrite only applies to routes with an `upstream`",
            );
        }
        if rewrite.strip_prefix.is_some() && rewrite.replace_prefix.is_some() {
            self.err(
                &rewrite_at,
                "give either strip_prefix or replace_prefix, not both",
            );
        }
        let mut prefixes = vec![("strip_prefix", rewrite.strip_prefix.as_deref())];
        if let Some(r) = &rewrite.replace_prefix {
            prefixes.push(("replace_prefix.from", Some(r.from.as_str())));
            prefixes.push(("replace_prefix.to", Some(r.to.as_str())));
        }
        for (key, value) in prefixes {
            if let Some(p) = value
                && !p.starts_with('/')
            {
                self.err(
                    child(&rewrite_at, key),
                    format!("must start with `/`, got `{p}`"),
                );
            }
        }
        if let Some(host) = &rewrite.host
            && (host.parse::<http::uri::Authority>().is_err() || host.contains('@'))
        {
            self.err(
                child(&rewrite_at, "host"),
                format!("expected a host name, optionally with a port, got `{host}`"),
            );
        }
        if let Some(pr) = &rewrite.path_regex {
            let pr_at = child(&rewrite_at, "path_regex");
            if rewrite.strip_prefix.is_some() || rewrite.replace_prefix.is_some() {
                self.err(
                    &pr_at,
                    "give one path rewrite: path_regex, strip_prefix or replace_prefix",
                );
            }
            match regex::Regex::new(&pr.pattern) {
                Err(e) => self.err(
                    child(&pr_at, "pattern"),
                    format!("invalid regex: {}", regex_reason(&e)),
                ),
                Ok(re) => {
                    if let Err(e) = check_replacement(&re, &pr.replace) {
                        self.err(child(&pr_at, "replace"), e);
                    }
                }
            }
        }
    }

    /// An upstream a route names: it must exist.
    fn upstream_name(&mut self, at: &str, name: &str, config: &Config) {
        if !config.upstreams.contains_key(name) {
            let hint = suggest::hint(name, config.upstreams.keys().map(String::as_str));
            self.err(at, format!("unknown upstream `{name}`{hint}"));
        }
    }

    /// `upstream: {split, sticky}`: known upstreams, each once, weights above zero in sum.
    fn split(&mut self, at: &str, split: &crate::config::schema::Split, config: &Config) {
        let sides = child(at, "split");
        if split.split.is_empty() {
            self.err(
                &sides,
                "list at least one side: {upstream: NAME, weight: N}",
            );
        }
        let mut seen = HashSet::new();
        for (i, side) in split.split.iter().enumerate() {
            let side_at = item(&sides, i);
            self.upstream_name(&child(&side_at, "upstream"), &side.upstream, config);
            if !seen.insert(side.upstream.as_str()) {
                self.err(
                    child(&side_at, "upstream"),
                    format!(
                        "`{}` is already a side of this split; give it one weight",
                        side.upstream
                    ),
                );
            }
        }
        if !split.split.is_empty() && split.split.iter().all(|s| s.weight == 0) {
            self.err(
                &sides,
                "the weights add up to 0: give at least one side a weight above 0",
            );
        }
        if let Some(sticky) = &split.sticky
            && let Err(e) = crate::config::values::parse_sticky(sticky)
        {
            self.err(child(at, "sticky"), e);
        }
    }

    /// `redirect:`: a known scheme and status, and something to change.
    fn redirect(&mut self, at: &str, r: &crate::config::schema::Redirect) {
        if let Some(scheme) = &r.scheme
            && scheme != "http"
            && scheme != "https"
        {
            let hint = suggest::hint(scheme, ["http", "https"]);
            self.err(
                child(at, "scheme"),
                format!("expected http or https, got `{scheme}`{hint}"),
            );
        }
        if ![301, 302, 303, 307, 308].contains(&r.status) {
            self.err(
                child(at, "status"),
                format!(
                    "a redirect status is 301, 302, 303, 307 or 308, got {}",
                    r.status
                ),
            );
        }
        if let Some(host) = &r.host
            && (host.parse::<http::uri::Authority>().is_err() || host.contains('@'))
        {
            self.err(
                child(at, "host"),
                format!("expected a host name, optionally with a port, got `{host}`"),
            );
        }
        if let Some(path) = &r.path
            && (!path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err())
        {
            self.err(
                child(at, "path"),
                format!("must be a path starting with `/`, got `{path}`"),
            );
        }
        if r.scheme.is_none() && r.host.is_none() && r.path.is_none() && !r.strip_query {
            self.err(
                at,
                "the redirect changes nothing: give a scheme, host or path (or strip_query: true)",
            );
        }
    }

    /// `mirror:`: another known upstream than the route's own, a share of 0-100.
    fn mirror(
        &mut self,
        at: &str,
        m: &crate::config::schema::Mirror,
        route: &Route,
        config: &Config,
    ) {
        let Some(up) = &route.upstream else {
            self.err(at, "mirror only applies to routes with an `upstream`");
            return;
        };
        self.upstream_name(&child(at, "upstream"), &m.upstream, config);
        if up.names().contains(&m.upstream.as_str()) {
            let what = match up {
                RouteUpstream::Name(_) => "the route's own upstream",
                RouteUpstream::Split(_) => "a side of this route's split",
            };
            self.err(
                child(at, "upstream"),
                format!(
                    "`{}` is {what}: a mirror copies traffic to another upstream",
                    m.upstream
                ),
            );
        }
        if !(m.percent > 0.0 && m.percent <= 100.0) {
            self.err(
                child(at, "percent"),
                format!("must be above 0 and at most 100, got {}", m.percent),
            );
        }
        if m.max_in_flight == 0 {
            self.err(child(at, "max_in_flight"), "must be above zero");
        }
    }

    pub(super) fn header_ops(&mut self, at: &str, ops: &HeaderOps) {
        let set = child(at, "set");
        for (name, value) in &ops.set {
            self.header(&set, name, Some(value));
            if MANAGED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                self.err(
                    child(&set, name),
                    format!("`{name}` is a hop-by-hop or framing header and cannot be set"),
                );
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.err(
                    item(&child(at, "remove"), i),
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
    }

    /// A header name (and value) under the mapping at `at`.
    pub(super) fn header(&mut self, at: &str, name: &str, value: Option<&str>) {
        let path = child(at, name);
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.err(path, format!("`{name}` is not a valid header name"));
        } else if let Some(v) = value
            && HeaderValue::from_str(v).is_err()
        {
            self.err(
                path,
                format!(
                    "not a valid header value (control characters or non-ASCII): `{}`",
                    v.escape_debug()
                ),
            );
        }
    }
}

/// A host name, or `*.` followed by one, matched case-insensitively.
pub(super) fn check_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err(format!(
            "`{host}`: a wildcard is only allowed as a whole first label, like `*.example.com`"
        ));
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "`{host}` is not a valid host name (give it without a port)"
        ));
    }
    Ok(())
}

/// Every group a `path_regex.replace` names exists in the pattern. The
/// regex crate reads `$name` greedily (`$1a` is the group `1a`), so such a
/// slip is named with the `${1}a` spelling that was meant (`$${1}a` in the
/// file, where `${…}` alone is an environment variable).
pub(super) fn check_replacement(re: &regex::Regex, replace: &str) -> Result<(), String> {
    let bytes = replace.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let (name, braced, next) = if bytes.get(i + 1) == Some(&b'{') {
            match replace[i + 2..].find('}') {
                Some(end) => (&replace[i + 2..i + 2 + end], true, i + 3 + end),
                None => return Err(format!("`${{` at byte {i} is not closed with `}}`")),
            }
        } else {
            let len = replace[i + 1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            (&replace[i + 1..i + 1 + len], false, i + 1 + len)
        };
        if name.is_empty() {
            return Err(format!(
                "`$` at byte {i} names no group; write `$$` for a literal `$`"
            ));
        }
        let exists = match name.parse::<usize>() {
            Ok(n) => n < re.captures_len(),
            Err(_) => re.capture_names().flatten().any(|n| n == name),
        };
        if !exists {
            let digits = name.bytes().take_while(u8::is_ascii_digit).count();
            let hint = if !braced && digits > 0 && digits < name.len() {
                // `${` is environment substitution in the file: `$${` is its escape.
                format!(
                    " (did you mean `$${{{}}}{}`? `${{…}}` alone is an environment variable)",
                    &name[..digits],
                    &name[digits..]
                )
            } else {
                String::new()
            };
            return Err(format!(
                "no group `{name}` in the pattern (it has {} numbered group{}){hint}",
                re.captures_len() - 1,
                if re.captures_len() == 2 { "" } else { "s" }
            ));
        }
        i = next;
    }
    Ok(())
}

/// The regex crate's message without its multi-line ASCII-art pointer.
pub(super) fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: ").map(str::to_owned))
        .unwrap_or_else(|| text.lines().last().unwrap_or_default().trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_methods() {
        assert!(check_host_pattern("api.example.com").is_ok());
        assert!(check_host_pattern("*.example.com").is_ok());
        assert!(check_host_pattern("api.*.com").is_err());
        assert!(check_host_pattern("*").is_err());
        assert!(check_host_pattern("api.example.com:8080").is_err());
        assert!(check_method("get").is_ok());
        assert!(check_method("PURGE").is_ok());
        assert!(
            check_method("GTE")
                .unwrap_err()
                .contains("did you mean `GET`")
        );
        assert!(check_method("GE T").is_err());
    }

    #[test]
    fn replacement_groups_must_exist() {
        let re = regex::Regex::new("^/v1/users/([0-9]+)(?P<rest>/.*)?$").unwrap();
        for ok in [
            "/users/$1",
            "/u/${1}x",
            "$rest",
            "${rest}",
            "/$$1",
            "/plain",
            "$0",
        ] {
            assert!(check_replacement(&re, ok).is_ok(), "{ok}");
        }
        let e = check_replacement(&re, "/users/$3").unwrap_err();
        assert!(e.contains("no group `3`"), "{e}");
        let e = check_replacement(&re, "/users/$1a").unwrap_err();
        assert!(e.contains("did you mean `$${1}a`"), "{e}");
        assert!(check_replacement(&re, "/x/${1").is_err());
        assert!(check_replacement(&re, "/x/$").is_err());
        assert!(check_replacement(&re, "/x/${nope}").is_err());
    }

    #[test]
    #[allow(clippy::invalid_regex)] // the broken regex is the point
    fn regex_errors_are_one_line() {
        let e = regex::Regex::new("(a").unwrap_err();
        assert_eq!(regex_reason(&e), "unclosed group");
    }
}
