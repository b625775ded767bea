//! Route matching: a pure function from the facts of a request (method, host,
//! path, query, headers) to the index of the route that serves it, plus an
//! `explain` that says why every other route did not win.
//!
//! Precedence (docs/guide/routing.md, "Matching"): an exact `path` beats a `path_regex`, which
//! beats the longest `path_prefix`; among routes of equal path specificity, the
//! one with more constraint kinds (hosts, methods, headers, query, cookies) wins; then
//! file order. Path lookup is hashed, so it does not grow with the number of
//! exact or prefix routes.
//!
//! Decisions worth knowing:
//! - A prefix matches on segment boundaries: `/api` matches `/api`, `/api/` and
//!   `/api/x` but not `/apix`. A prefix written with a trailing slash, `/api/`,
//!   matches `/api/` and `/api/x` but **not** `/api`: the author asked for
//!   something below `/api/`. `/` matches every path that starts with `/`.
//! - A `path_regex` must match the whole path (it is anchored), so `/v[0-9]+`
//!   does not match `/v1/users`; write `/v[0-9]+(/.*)?` for that.
//! - Hosts compare case-insensitively, without the port and without a trailing
//!   dot. An IPv6 literal may be written with or without brackets.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use http::{HeaderMap, HeaderName, Method};
use regex::{Regex, RegexSet};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSpec {
    Exact(String),
    Prefix(String),
    Regex(String),
}

impl fmt::Display for PathSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathSpec::Exact(p) => write!(f, "path {p}"),
            PathSpec::Prefix(p) => write!(f, "path_prefix {p}"),
            PathSpec::Regex(r) => write!(f, "path_regex {r}"),
        }
    }
}

/// One route's match conditions, in file order; names are unique.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub path: PathSpec,
    /// Empty = any host. Entries like `api.example.com` or `*.example.com`.
    pub hosts: Vec<String>,
    /// Empty = any method.
    pub methods: Vec<Method>,
    /// Header conditions; all must hold.
    pub headers: Vec<(HeaderName, HeaderCond)>,
    /// Exact match of a decoded query parameter; all must hold.
    pub query: Vec<(String, String)>,
    /// Exact cookie values; all must hold.
    pub cookies: Vec<(String, String)>,
}

/// What a `match.headers` entry asks of the header.
#[derive(Debug, Clone)]
pub enum HeaderCond {
    /// Some value equals this one.
    Exact(String),
    /// The header is there (`true`) or absent (`false`).
    Present(bool),
    /// Some value matches (unanchored unless the pattern anchors itself).
    Regex(Regex),
}

impl HeaderCond {
    fn holds(&self, headers: &HeaderMap, name: &HeaderName) -> bool {
        match self {
            HeaderCond::Exact(value) => header_has(headers, name, value),
            HeaderCond::Present(want) => headers.contains_key(name) == *want,
            HeaderCond::Regex(re) => headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| re.is_match(v))),
        }
    }
}

impl fmt::Display for HeaderCond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderCond::Exact(v) => write!(f, "{v:?}"),
            HeaderCond::Present(true) => f.write_str("present"),
            HeaderCond::Present(false) => f.write_str("absent"),
            HeaderCond::Regex(re) => write!(f, "regex {:?}", re.as_str()),
        }
    }
}

impl RouteSpec {
    /// How many constraint kinds beyond the path this route uses (0..=5); more
    /// is more specific.
    fn constraint_kinds(&self) -> usize {
        [
            !self.hosts.is_empty(),
            !self.methods.is_empty(),
            !self.headers.is_empty(),
            !self.query.is_empty(),
            !self.cookies.is_empty(),
        ]
        .into_iter()
        .filter(|&b| b)
        .count()
    }
}

/// The facts of a request the router looks at. Borrowed, so building one costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Raw Host header or authority: any case, may carry `:port`, may be an
    /// IPv6 literal such as `[::1]:8080`.
    pub host: Option<&'a str>,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("route {route:?}: invalid path_regex: {source}")]
    BadRegex {
        route: String,
        #[source]
        source: regex::Error,
    },
}

/// A host pattern, normalised once so that matching needs no allocation.
#[derive(Debug)]
enum HostPattern {
    /// Lowercase, no brackets, no trailing dot.
    Exact(String),
    /// `*.example.com` stored as `.example.com`: at least one label must precede it.
    Suffix(String),
}

impl HostPattern {
    fn parse(raw: &str) -> HostPattern {
        let lower = raw.trim().to_ascii_lowercase();
        match lower.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => {
                HostPattern::Suffix(suffix.trim_end_matches('.').to_owned())
            }
            _ => HostPattern::Exact(normalize_host(&lower).to_owned()),
        }
    }

    /// `host` is already stripped of port, brackets and trailing dot (any case).
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

/// Strips the port, IPv6 brackets and a trailing dot from a Host value,
/// borrowing: `[::1]:8080` -> `::1`, `API.example.com.:443` -> `API.example.com`.
fn normalize_host(raw: &str) -> &str {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('[') {
        // An IPv6 literal: everything up to the closing bracket.
        return match rest.find(']') {
            Some(end) => &rest[..end],
            None => rest,
        };
    }
    let host = match raw.rfind(':') {
        // A single colon separates a port; more than one means an unbracketed
        // IPv6 address, which has no port to strip.
        Some(i) if !raw[..i].contains(':') => &raw[..i],
        _ => raw,
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// Route paths keyed for lookup. Hashed with one-shot xxh3 instead of SipHash:
/// the keys come from the configuration, not from clients, so flooding is not
/// a concern, and a streaming hasher's setup would dominate these short keys.
/// (Host keys are looked up with client input, but only ever for keys the
/// config holds; a crafted host costs one hash like any other.)
type PathMap = HashMap<Box<str>, Candidates, BuildHasherDefault<PathHasher>>;
type HostMap = HashMap<Box<str>, Vec<usize>, BuildHasherDefault<PathHasher>>;

/// Longer candidate lists than this get a host index: virtual-host style
/// configs put hundreds of routes on the same path (`/`, `/api`), told apart
/// only by their hosts, and scanning them would grow with the tenant count.
const HOST_INDEX_MIN: usize = 8;

/// The routes sharing one path key, in precedence order.
#[derive(Debug)]
enum Candidates {
    Few(Vec<usize>),
    Indexed(Box<HostIndex>),
}

/// The candidates of one path key, split by host pattern; each list keeps
/// precedence order, and a route with several hosts sits in several lists.
#[derive(Debug, Default)]
struct HostIndex {
    /// Lowercase exact host -> routes naming it.
    exact: HostMap,
    /// `.example.com` (from `*.example.com`) -> routes naming it.
    suffix: HostMap,
    /// Routes without `hosts`.
    any_host: Vec<usize>,
}

/// Longest host looked up through a `HostIndex` (longer: scan its lists).
const MAX_INDEXED_HOST: usize = 255;

#[derive(Default)]
struct PathHasher(u64);

impl Hasher for PathHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The per-route matchers derived from a `RouteSpec`.
#[derive(Debug)]
struct Compiled {
    hosts: Vec<HostPattern>,
    /// Pre-sort key: more constraint kinds first, then file order.
    kinds: usize,
}

/// The route table. Built once per configuration version and shared read-only.
#[derive(Debug)]
pub struct Router {
    specs: Vec<RouteSpec>,
    compiled: Vec<Compiled>,
    /// Exact path -> candidate routes, sorted by precedence.
    exact: PathMap,
    /// Prefix as written (with or without trailing slash) -> candidates, sorted.
    prefixes: PathMap,
    /// `prefix_lens[n]`: some prefix is `n` bytes long. Most boundaries of a
    /// request path have a length no prefix has, and this skips their hashing.
    prefix_lens: Vec<bool>,
    /// All regexes as one automaton for a cheap "does any regex match?" test.
    regex_set: RegexSet,
    /// Regex routes sorted by precedence, with their own (anchored) regex.
    regexes: Vec<(usize, Regex)>,
    /// Per route: where it ranks among candidates of the same path key
    /// (more constraint kinds first, then file order); smaller wins.
    rank: Vec<u64>,
}

impl Router {
    pub fn new(specs: Vec<RouteSpec>) -> Result<Router, RouterError> {
        let compiled: Vec<Compiled> = specs
            .iter()
            .map(|s| Compiled {
                hosts: s.hosts.iter().map(|h| HostPattern::parse(h)).collect(),
                kinds: s.constraint_kinds(),
            })
            .collect();

        let mut exact: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut prefixes: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut regexes = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            match &spec.path {
                PathSpec::Exact(p) => exact.entry(p.as_str()).or_default().push(i),
                PathSpec::Prefix(p) => prefixes.entry(p.as_str()).or_default().push(i),
                PathSpec::Regex(r) => {
                    let re = Regex::new(&anchored(r)).map_err(|source| RouterError::BadRegex {
                        route: spec.name.clone(),
                        source,
                    })?;
                    regexes.push((i, re));
                }
            }
        }

        let mut prefix_lens = vec![false; prefixes.keys().map(|k| k.len() + 1).max().unwrap_or(0)];
        for key in prefixes.keys() {
            prefix_lens[key.len()] = true;
        }

        // Within one path key the winner is the first candidate whose
        // constraints hold, so sort once here instead of comparing per request.
        let rank: Vec<u64> = compiled
            .iter()
            .enumerate()
            .map(|(i, c)| ((5 - c.kinds.min(5) as u64) << 32) | i as u64)
            .collect();
        let index = |mut list: Vec<usize>| {
            list.sort_by_key(|&i| rank[i]);
            Candidates::new(list, &compiled)
        };
        let exact: PathMap = exact
            .into_iter()
            .map(|(k, list)| (k.into(), index(list)))
            .collect();
        let prefixes: PathMap = prefixes
            .into_iter()
            .map(|(k, list)| (k.into(), index(list)))
            .collect();
        regexes.sort_by_key(|(i, _)| rank[*i]);

        let regex_set = RegexSet::new(regexes.iter().map(|(_, re)| re.as_str())).map_err(
            // Each regex compiled alone, so only a size limit can fail here;
            // blame the first regex route, the set as a whole is too big.
            |source| RouterError::BadRegex {
                route: regexes
                    .first()
                    .map(|(i, _)| specs[*i].name.clone())
                    .unwrap_or_default(),
                source,
            },
        )?;

        Ok(Router {
            specs,
            compiled,
            exact,
            prefixes,
            prefix_lens,
            regex_set,
            regexes,
            rank,
        })
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The route at `i` (file order). Panics when out of range, like indexing.
    pub fn spec(&self, i: usize) -> &RouteSpec {
        &self.specs[i]
    }

    pub fn specs(&self) -> &[RouteSpec] {
        &self.specs
    }

    /// The index (file order) of the route that serves `req`, if any.
    pub fn find(&self, req: &RequestView<'_>) -> Option<usize> {
        let host = req.host.map(normalize_host);

        let exact_hit = self
            .exact
            .get(req.path)
            .and_then(|cands| self.first_satisfied(cands, req, host));
        if exact_hit.is_some() {
            return exact_hit;
        }

        // One pass of the combined automaton says which regexes match; the
        // set is in precedence order, so the first whose constraints hold wins.
        // (Trying each regex in turn grew with the number of regex routes.)
        if !self.regexes.is_empty() && self.regex_set.is_match(req.path) {
            let hit = self
                .regex_set
                .matches(req.path)
                .iter()
                .map(|k| self.regexes[k].0)
                .find(|&i| self.constraints_hold(i, req, host));
            if hit.is_some() {
                return hit;
            }
        }

        prefix_keys(req.path)
            .filter(|key| self.prefix_lens.get(key.len()).copied().unwrap_or(false))
            .find_map(|key| {
                self.prefixes
                    .get(key)
                    .and_then(|cands| self.first_satisfied(cands, req, host))
            })
    }

    /// Why each route did or did not serve `req`: the chosen route, then every
    /// other route with its reason — routes whose path matched first (in
    /// precedence order), then the rest in file order. Slow is fine here.
    pub fn explain(&self, req: &RequestView<'_>) -> Explanation {
        let chosen = self.find(req);
        let host = req.host.map(normalize_host);

        let mut path_hits = Vec::new();
        let mut path_misses = Vec::new();
        for i in 0..self.specs.len() {
            if Some(i) == chosen {
                continue;
            }
            if !self.path_matches(i, req.path) {
                path_misses.push((
                    i,
                    Miss::Path {
                        path: req.path.to_owned(),
                        wanted: self.specs[i].path.clone(),
                    },
                ));
                continue;
            }
            let miss = match self.first_failed_constraint(i, req, host) {
                Some(miss) => miss,
                None => match chosen {
                    Some(by) => Miss::Shadowed {
                        by,
                        by_name: self.specs[by].name.clone(),
                    },
                    // Unreachable in practice: a fully matching route would
                    // have been chosen. Say so rather than panic.
                    None => Miss::Shadowed {
                        by: i,
                        by_name: self.specs[i].name.clone(),
                    },
                },
            };
            path_hits.push((i, miss));
        }
        path_hits.sort_by_key(|(i, _)| self.precedence_key(*i, req.path));
        path_hits.extend(path_misses);
        Explanation {
            chosen,
            near_misses: path_hits,
        }
    }

    fn first_satisfied(
        &self,
        cands: &Candidates,
        req: &RequestView<'_>,
        host: Option<&str>,
    ) -> Option<usize> {
        let first = |list: &[usize]| {
            list.iter()
                .copied()
                .find(|&i| self.constraints_hold(i, req, host))
        };
        let index = match cands {
            Candidates::Few(list) => return first(list),
            Candidates::Indexed(index) => index,
        };
        let mut best = first(&index.any_host);
        let mut consider = |list: Option<&Vec<usize>>| {
            if let Some(i) = list.and_then(|l| first(l))
                && best.is_none_or(|b| self.rank[i] < self.rank[b])
            {
                best = Some(i);
            }
        };
        let Some(host) = host else {
            return best;
        };
        if host.len() > MAX_INDEXED_HOST {
            // Rare enough to scan: every list, each in precedence order.
            index.exact.values().for_each(|l| consider(Some(l)));
            index.suffix.values().for_each(|l| consider(Some(l)));
            return best;
        }
        let mut buf = [0u8; MAX_INDEXED_HOST];
        let lower = &mut buf[..host.len()];
        lower.copy_from_slice(host.as_bytes());
        lower.make_ascii_lowercase();
        // ASCII lowercasing keeps UTF-8 valid; the fallback is never taken.
        let lower = std::str::from_utf8(lower).unwrap_or(host);
        consider(index.exact.get(lower));
        // `*.example.com` matches `a.example.com` and `a.b.example.com`: try
        // the host's every suffix that starts at a dot after its first label.
        for (dot, _) in lower.match_indices('.').filter(|(d, _)| *d > 0) {
            consider(index.suffix.get(&lower[dot..]));
        }
        best
    }

    fn constraints_hold(&self, i: usize, req: &RequestView<'_>, host: Option<&str>) -> bool {
        let spec = &self.specs[i];
        let compiled = &self.compiled[i];
        (compiled.hosts.is_empty()
            || host.is_some_and(|h| compiled.hosts.iter().any(|p| p.matches(h))))
            && (spec.methods.is_empty() || spec.methods.contains(req.method))
            && spec
                .headers
                .iter()
                .all(|(name, cond)| cond.holds(req.headers, name))
            && spec
                .query
                .iter()
                .all(|(key, value)| query_has(req.query, key, value))
            && spec
                .cookies
                .iter()
                .all(|(name, value)| cookie_is(req.headers, name, value))
    }

    fn first_failed_constraint(
        &self,
        i: usize,
        req: &RequestView<'_>,
        host: Option<&str>,
    ) -> Option<Miss> {
        let spec = &self.specs[i];
        let compiled = &self.compiled[i];
        if !compiled.hosts.is_empty()
            && !host.is_some_and(|h| compiled.hosts.iter().any(|p| p.matches(h)))
        {
            return Some(Miss::Host {
                host: req.host.map(str::to_owned),
                allowed: spec.hosts.clone(),
            });
        }
        if !spec.methods.is_empty() && !spec.methods.contains(req.method) {
            return Some(Miss::Method {
                method: req.method.clone(),
                allowed: spec.methods.clone(),
            });
        }
        if let Some((name, cond)) = spec
            .headers
            .iter()
            .find(|(name, cond)| !cond.holds(req.headers, name))
        {
            return Some(Miss::Header {
                name: name.as_str().to_owned(),
                expected: cond.to_string(),
                present: req.headers.contains_key(name),
            });
        }
        if let Some((key, value)) = spec
            .query
            .iter()
            .find(|(key, value)| !query_has(req.query, key, value))
        {
            return Some(Miss::Query {
                param: key.clone(),
                expected: value.clone(),
                present: query_pairs(req.query).any(|(k, _)| decoded_eq(k, key)),
            });
        }
        if let Some((name, value)) = spec
            .cookies
            .iter()
            .find(|(name, value)| !cookie_is(req.headers, name, value))
        {
            return Some(Miss::Cookie {
                name: name.clone(),
                expected: value.clone(),
                present: crate::headers::cookie_value(req.headers, name).is_some(),
            });
        }
        None
    }

    fn path_matches(&self, i: usize, path: &str) -> bool {
        match &self.specs[i].path {
            PathSpec::Exact(p) => p == path,
            PathSpec::Prefix(p) => prefix_keys(path).any(|k| k == p),
            PathSpec::Regex(_) => self
                .regexes
                .iter()
                .any(|(j, re)| *j == i && re.is_match(path)),
        }
    }

    /// Sort key reproducing `find`'s order among routes whose path matches.
    fn precedence_key(&self, i: usize, path: &str) -> (u8, usize, usize, usize) {
        let (tier, specificity) = match &self.specs[i].path {
            PathSpec::Exact(_) => (0, 0),
            PathSpec::Regex(_) => (1, 0),
            // Longer prefixes first.
            PathSpec::Prefix(p) => (2, path.len().saturating_sub(p.len())),
        };
        (tier, specificity, usize::MAX - self.compiled[i].kinds, i)
    }
}

impl Candidates {
    /// `list` is in precedence order.
    fn new(list: Vec<usize>, compiled: &[Compiled]) -> Candidates {
        // A suffix pattern is looked up by the host's suffixes that start at
        // a dot; any other shape (validation rejects them) keeps the scan.
        let indexable = |p: &HostPattern| match p {
            HostPattern::Exact(_) => true,
            HostPattern::Suffix(s) => s.len() > 1 && s.starts_with('.'),
        };
        if list.len() < HOST_INDEX_MIN
            || list.iter().all(|&i| compiled[i].hosts.is_empty())
            || !list
                .iter()
                .all(|&i| compiled[i].hosts.iter().all(indexable))
        {
            return Candidates::Few(list);
        }
        let mut index = HostIndex::default();
        for &i in &list {
            let hosts = &compiled[i].hosts;
            if hosts.is_empty() {
                index.any_host.push(i);
            }
            for pattern in hosts {
                let (map, key) = match pattern {
                    HostPattern::Exact(h) => (&mut index.exact, h),
                    HostPattern::Suffix(s) => (&mut index.suffix, s),
                };
                let entry = map.entry(key.as_str().into()).or_default();
                // Two patterns of one route may share a key (`A.com`, `a.com`).
                if entry.last() != Some(&i) {
                    entry.push(i);
                }
            }
        }
        Candidates::Indexed(Box::new(index))
    }
}

fn anchored(re: &str) -> String {
    format!("^(?:{re})$")
}

/// The prefixes of `path` that a `path_prefix` route may be keyed by, longest
/// first: the whole path, then at every `/` the part up to and including it
/// and the part before it. `/api/x` yields `/api/x`, `/api/`, `/api`, `/`.
fn prefix_keys(path: &str) -> impl Iterator<Item = &str> {
    let whole = std::iter::once(path).filter(|p| !p.is_empty());
    let bounds = path.rmatch_indices('/').flat_map(move |(i, _)| {
        // The whole path was already yielded when it ends with '/'.
        let with_slash = (i + 1 < path.len()).then(|| &path[..=i]);
        let without = (i > 0).then(|| &path[..i]);
        with_slash.into_iter().chain(without)
    });
    whole.chain(bounds)
}

fn header_has(headers: &HeaderMap, name: &HeaderName, value: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.as_bytes() == value.as_bytes())
}

fn cookie_is(headers: &HeaderMap, name: &str, value: &str) -> bool {
    crate::headers::cookie_value(headers, name) == Some(value.as_bytes())
}

/// `key=value` pairs of a raw query string, still encoded. A pair without `=`
/// has an empty value; empty pairs (`a=1&&b=2`) are skipped.
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Does any occurrence of `key` carry `value`, after form-decoding both sides
/// of the request (percent escapes, `+` as space)?
fn query_has(query: Option<&str>, key: &str, value: &str) -> bool {
    query_pairs(query).any(|(k, v)| decoded_eq(k, key) && decoded_eq(v, value))
}

/// Compares the `application/x-www-form-urlencoded` decoding of `raw` with
/// `expected` byte by byte, so matching a query needs no allocation. A `%` not
/// followed by two hex digits stands for itself, as in the WHATWG parser.
fn decoded_eq(raw: &str, expected: &str) -> bool {
    let raw = raw.as_bytes();
    let mut want = expected.as_bytes().iter();
    let mut i = 0;
    while i < raw.len() {
        let (byte, step) = match raw[i] {
            b'+' => (b' ', 1),
            b'%' => match (
                raw.get(i + 1).and_then(|&c| hex(c)),
                raw.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(hi), Some(lo)) => (hi << 4 | lo, 3),
                _ => (b'%', 1),
            },
            other => (other, 1),
        };
        if want.next() != Some(&byte) {
            return false;
        }
        i += step;
    }
    want.next().is_none()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// What `explain` found: the chosen route and, for every other route, why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub chosen: Option<usize>,
    pub near_misses: Vec<(usize, Miss)>,
}

/// Why a route did not serve a request. `Display` gives a short human reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// The path did not match the route's path condition.
    Path { path: String, wanted: PathSpec },
    /// The host was absent or not in the route's list.
    Host {
        host: Option<String>,
        allowed: Vec<String>,
    },
    Method {
        method: Method,
        allowed: Vec<Method>,
    },
    /// Cookie `name` lacked the expected value (or was absent).
    Cookie {
        name: String,
        expected: String,
        present: bool,
    },
    /// Header `name` did not meet its condition (`expected` describes it).
    Header {
        name: String,
        expected: String,
        present: bool,
    },
    /// Query parameter `param` lacked the expected value (or was absent).
    Query {
        param: String,
        expected: String,
        present: bool,
    },
    /// Everything matched, but route `by` is more specific (or earlier).
    Shadowed { by: usize, by_name: String },
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::Path { path, wanted } => write!(f, "path {path} does not match {wanted}"),
            Miss::Host {
                host: Some(host),
                allowed,
            } => write!(f, "host {host} not in [{}]", allowed.join(", ")),
            Miss::Host {
                host: None,
                allowed,
            } => write!(f, "no host, route wants one of [{}]", allowed.join(", ")),
            Miss::Method { method, allowed } => {
                let allowed: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                write!(f, "method {method} not in [{}]", allowed.join(", "))
            }
            Miss::Header {
                name,
                expected,
                present: true,
            } => write!(f, "header {name} is not {expected}"),
            Miss::Header {
                name,
                expected,
                present: false,
            } => write!(f, "header {name} missing (want {expected})"),
            Miss::Cookie {
                name,
                expected,
                present: true,
            } => write!(f, "cookie {name} is not {expected:?}"),
            Miss::Cookie {
                name,
                expected,
                present: false,
            } => write!(f, "cookie {name} missing (want {expected:?})"),
            Miss::Query {
                param,
                expected,
                present: true,
            } => write!(f, "query parameter {param} is not {expected:?}"),
            Miss::Query {
                param,
                expected,
                present: false,
            } => write!(f, "query parameter {param} missing (want {expected:?})"),
            Miss::Shadowed { by_name, .. } => {
                write!(f, "matched, but route {by_name} takes precedence")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, path: PathSpec) -> RouteSpec {
        RouteSpec {
            name: name.to_owned(),
            path,
            hosts: vec![],
            methods: vec![],
            headers: vec![],
            query: vec![],
            cookies: vec![],
        }
    }
    fn exact(name: &str, p: &str) -> RouteSpec {
        route(name, PathSpec::Exact(p.into()))
    }
    fn prefix(name: &str, p: &str) -> RouteSpec {
        route(name, PathSpec::Prefix(p.into()))
    }
    fn regex(name: &str, p: &str) -> RouteSpec {
        route(name, PathSpec::Regex(p.into()))
    }

    /// A request in one line: method, host, path?query, headers.
    struct Req {
        method: Method,
        host: Option<&'static str>,
        path: &'static str,
        query: Option<&'static str>,
        headers: HeaderMap,
    }

    fn req(method: &str, host: Option<&'static str>, target: &'static str) -> Req {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        Req {
            method: method.parse().unwrap(),
            host,
            path,
            query,
            headers: HeaderMap::new(),
        }
    }

    impl Req {
        fn header(mut self, name: &'static str, value: &'static str) -> Req {
            self.headers
                .append(HeaderName::from_static(name), value.parse().unwrap());
            self
        }
        fn view(&self) -> RequestView<'_> {
            RequestView {
                method: &self.method,
                host: self.host,
                path: self.path,
                query: self.query,
                headers: &self.headers,
            }
        }
    }

    /// Runs each (request, expected route name) against the table.
    fn check(specs: Vec<RouteSpec>, cases: &[(Req, Option<&str>)]) {
        let router = Router::new(specs).unwrap();
        for (r, want) in cases {
            let got = router.find(&r.view()).map(|i| router.spec(i).name.as_str());
            assert_eq!(
                got, *want,
                "{} host={:?} path={:?} query={:?} headers={:?}",
                r.method, r.host, r.path, r.query, r.headers
            );
        }
    }

    #[test]
    fn exact_beats_regex_beats_prefix() {
        check(
            vec![
                prefix("prefix", "/api"),
                regex("regex", "/api/v[0-9]+/.*"),
                exact("exact", "/api/v1/ping"),
            ],
            &[
                (req("GET", None, "/api/v1/ping"), Some("exact")),
                (req("GET", None, "/api/v1/users"), Some("regex")),
                (req("GET", None, "/api/users"), Some("prefix")),
                (req("GET", None, "/api"), Some("prefix")),
                (req("GET", None, "/other"), None),
            ],
        );
    }

    #[test]
    fn longest_prefix_wins_regardless_of_order() {
        check(
            vec![
                prefix("root", "/"),
                prefix("api", "/api"),
                prefix("users", "/api/users"),
                prefix("user7", "/api/users/7"),
            ],
            &[
                (req("GET", None, "/api/users/7/orders"), Some("user7")),
                (req("GET", None, "/api/users/7"), Some("user7")),
                (req("GET", None, "/api/users/70"), Some("users")),
                (req("GET", None, "/api/users"), Some("users")),
                (req("GET", None, "/api/other"), Some("api")),
                (req("GET", None, "/elsewhere"), Some("root")),
                (req("GET", None, "/"), Some("root")),
            ],
        );
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        check(
            vec![prefix("api", "/api")],
            &[
                (req("GET", None, "/api"), Some("api")),
                (req("GET", None, "/api/"), Some("api")),
                (req("GET", None, "/api/x"), Some("api")),
                (req("GET", None, "/api/x/y/"), Some("api")),
                (req("GET", None, "/apix"), None),
                (req("GET", None, "/ap"), None),
                (req("GET", None, "/x/api"), None),
            ],
        );
    }

    #[test]
    fn trailing_slash_prefix_requires_something_below_it() {
        check(
            vec![prefix("api-dir", "/api/")],
            &[
                (req("GET", None, "/api/"), Some("api-dir")),
                (req("GET", None, "/api/x"), Some("api-dir")),
                (req("GET", None, "/api"), None),
                (req("GET", None, "/apix/"), None),
            ],
        );
        // Both spellings present: the longer one (with the slash) is more specific.
        check(
            vec![prefix("bare", "/api"), prefix("slash", "/api/")],
            &[
                (req("GET", None, "/api"), Some("bare")),
                (req("GET", None, "/api/"), Some("slash")),
                (req("GET", None, "/api/x"), Some("slash")),
            ],
        );
    }

    #[test]
    fn root_prefix_is_a_catch_all() {
        check(
            vec![prefix("all", "/")],
            &[
                (req("GET", None, "/"), Some("all")),
                (req("GET", None, "/a"), Some("all")),
                (req("POST", Some("x.test"), "/a/b/c?d=e"), Some("all")),
            ],
        );
    }

    #[test]
    fn regex_is_anchored_and_in_file_order() {
        check(
            vec![regex("v", "/v[0-9]+"), regex("any", "/.*")],
            &[
                (req("GET", None, "/v12"), Some("v")),
                (req("GET", None, "/v12/x"), Some("any")),
                (req("GET", None, "/xv1"), Some("any")),
            ],
        );
    }

    #[test]
    fn constrained_beats_unconstrained_then_file_order() {
        let mut get_only = prefix("get-only", "/api");
        get_only.methods = vec![Method::GET];
        let mut get_on_host = prefix("get-on-host", "/api");
        get_on_host.methods = vec![Method::GET];
        get_on_host.hosts = vec!["api.example.com".into()];
        check(
            vec![
                prefix("plain", "/api"),
                get_only,
                get_on_host,
                prefix("plain-later", "/api"),
            ],
            &[
                (
                    req("GET", Some("api.example.com"), "/api/x"),
                    Some("get-on-host"),
                ),
                (req("GET", Some("other.test"), "/api/x"), Some("get-only")),
                (
                    req("POST", Some("api.example.com"), "/api/x"),
                    Some("plain"),
                ),
            ],
        );
        // The same with exact and regex paths.
        let mut exact_post = exact("exact-post", "/x");
        exact_post.methods = vec![Method::POST];
        let mut regex_post = regex("regex-post", "/y.*");
        regex_post.methods = vec![Method::POST];
        check(
            vec![
                exact("exact", "/x"),
                exact_post,
                regex("regex", "/y.*"),
                regex_post,
            ],
            &[
                (req("POST", None, "/x"), Some("exact-post")),
                (req("GET", None, "/x"), Some("exact")),
                (req("POST", None, "/yy"), Some("regex-post")),
                (req("GET", None, "/yy"), Some("regex")),
            ],
        );
    }

    #[test]
    fn more_specific_path_beats_more_constraints() {
        let mut constrained = prefix("constrained", "/api");
        constrained.methods = vec![Method::GET];
        check(
            vec![constrained, prefix("longer", "/api/users")],
            &[
                (req("GET", None, "/api/users/1"), Some("longer")),
                (req("GET", None, "/api/orders"), Some("constrained")),
            ],
        );
    }

    // The rank counted at most four kinds, so a route with all five tied with
    // one with four and lost on file order (route_match fuzz target).
    #[test]
    fn all_five_constraint_kinds_beat_four() {
        let mut four = prefix("four", "/");
        four.hosts = vec!["a.test".into()];
        four.methods = vec![Method::GET];
        four.headers = vec![(HeaderName::from_static("x-a"), HeaderCond::Present(true))];
        four.query = vec![("q".into(), "1".into())];
        let mut five = four.clone();
        five.name = "five".into();
        five.cookies = vec![("s".into(), "1".into())];
        check(
            vec![four, five],
            &[
                (
                    req("GET", Some("a.test"), "/?q=1")
                        .header("x-a", "")
                        .header("cookie", "s=1"),
                    Some("five"),
                ),
                (
                    req("GET", Some("a.test"), "/?q=1").header("x-a", ""),
                    Some("four"),
                ),
            ],
        );
    }

    #[test]
    fn failed_constraints_fall_through_to_less_specific_paths() {
        let mut exact_get = exact("exact-get", "/api/users");
        exact_get.methods = vec![Method::GET];
        check(
            vec![exact_get, prefix("api", "/api")],
            &[
                (req("GET", None, "/api/users"), Some("exact-get")),
                (req("DELETE", None, "/api/users"), Some("api")),
            ],
        );
    }

    #[test]
    fn hosts_ignore_port_case_and_support_wildcards_and_ipv6() {
        let mut api = prefix("api", "/");
        api.hosts = vec!["api.example.com".into()];
        let mut wild = prefix("wild", "/");
        wild.hosts = vec!["*.Example.com".into()];
        let mut v6 = prefix("v6", "/");
        v6.hosts = vec!["[::1]".into(), "2001:db8::2".into()];
        let mut v4 = prefix("v4", "/");
        v4.hosts = vec!["127.0.0.1".into()];
        check(
            vec![api, wild, v6, v4],
            &[
                (req("GET", Some("api.example.com"), "/"), Some("api")),
                (req("GET", Some("API.Example.COM:8443"), "/"), Some("api")),
                (req("GET", Some("api.example.com."), "/"), Some("api")),
                (req("GET", Some("a.example.com"), "/"), Some("wild")),
                (req("GET", Some("a.b.EXAMPLE.com:80"), "/"), Some("wild")),
                (req("GET", Some("example.com"), "/"), None),
                (req("GET", Some("badexample.com"), "/"), None),
                (req("GET", Some("[::1]:8080"), "/"), Some("v6")),
                (req("GET", Some("[::1]"), "/"), Some("v6")),
                (req("GET", Some("[2001:DB8::2]:443"), "/"), Some("v6")),
                (req("GET", Some("127.0.0.1:9000"), "/"), Some("v4")),
                (req("GET", Some("127.0.0.2"), "/"), None),
                (req("GET", None, "/"), None),
            ],
        );
    }

    #[test]
    fn many_hosts_on_one_path_are_indexed_with_the_same_precedence() {
        // Enough routes on `/` to build the host index, in every list: exact
        // hosts, wildcards, host-less, and a route in two lists.
        let mut routes = Vec::new();
        for t in 0..20 {
            let mut r = prefix(&format!("t{t}"), "/");
            r.hosts = vec![format!("T{t}.Example.com")];
            routes.push(r);
        }
        let mut wild = prefix("wild", "/");
        wild.hosts = vec!["*.t3.example.com".into(), "t3.example.com".into()];
        let mut wild_get = prefix("wild-get", "/");
        wild_get.hosts = vec!["*.example.com".into()];
        wild_get.methods = vec![Method::GET];
        let mut t5_get = prefix("t5-get", "/");
        t5_get.hosts = vec!["t5.example.com".into()];
        t5_get.methods = vec![Method::GET];
        routes.extend([wild, t5_get, wild_get, prefix("any", "/")]);
        check(
            routes,
            &[
                (req("POST", Some("t7.example.com:80"), "/x"), Some("t7")),
                (req("POST", Some("T19.EXAMPLE.COM."), "/"), Some("t19")),
                // File order among equals: t3 comes before wild.
                (req("POST", Some("t3.example.com"), "/"), Some("t3")),
                (req("POST", Some("a.b.t3.example.com"), "/"), Some("wild")),
                // More constraint kinds beat file order, across lists.
                (req("GET", Some("t5.example.com"), "/"), Some("t5-get")),
                (req("GET", Some("t3.example.com"), "/"), Some("wild-get")),
                (req("POST", Some("t5.example.com"), "/"), Some("t5")),
                (req("POST", Some("example.com"), "/"), Some("any")),
                (req("POST", Some("t99.example.com"), "/"), Some("any")),
                (req("GET", Some("t99.example.com"), "/"), Some("wild-get")),
                (req("GET", None, "/"), Some("any")),
            ],
        );
    }

    #[test]
    fn regex_routes_keep_precedence_among_many() {
        let mut routes: Vec<RouteSpec> = (0..50)
            .map(|i| regex(&format!("re{i}"), &format!("/r{i}/[0-9]+")))
            .collect();
        let mut post = regex("any-post", "/r[0-9]+/[0-9]+");
        post.methods = vec![Method::POST];
        routes.push(post);
        check(
            routes,
            &[
                (req("GET", None, "/r49/7"), Some("re49")),
                (req("POST", None, "/r49/7"), Some("any-post")),
                (req("GET", None, "/r50/7"), None),
                (req("GET", None, "/r49/x"), None),
            ],
        );
    }

    #[test]
    fn methods() {
        let mut read = prefix("read", "/");
        read.methods = vec![Method::GET, Method::HEAD];
        check(
            vec![read],
            &[
                (req("GET", None, "/"), Some("read")),
                (req("HEAD", None, "/"), Some("read")),
                (req("POST", None, "/"), None),
                (req("PURGE", None, "/"), None),
            ],
        );
    }

    #[test]
    fn headers_have_case_insensitive_names_and_exact_values() {
        let mut v2 = prefix("v2", "/");
        v2.headers = vec![
            (
                HeaderName::from_static("x-api-version"),
                HeaderCond::Exact("2".into()),
            ),
            (
                HeaderName::from_static("x-tenant"),
                HeaderCond::Exact("acme".into()),
            ),
        ];
        check(
            vec![v2],
            &[
                (
                    req("GET", None, "/")
                        .header("x-api-version", "2")
                        .header("x-tenant", "acme"),
                    Some("v2"),
                ),
                // http normalises names to lowercase when parsed, whatever the wire case.
                (
                    req("GET", None, "/")
                        .header("x-tenant", "other")
                        .header("x-tenant", "acme")
                        .header("x-api-version", "2"),
                    Some("v2"),
                ),
                (req("GET", None, "/").header("x-api-version", "2"), None),
                (
                    req("GET", None, "/")
                        .header("x-api-version", "2 ")
                        .header("x-tenant", "acme"),
                    None,
                ),
                (
                    req("GET", None, "/")
                        .header("x-api-version", "2")
                        .header("x-tenant", "ACME"),
                    None,
                ),
            ],
        );
        // The name in the spec is parsed from any case too.
        assert_eq!(
            HeaderName::from_bytes(b"X-Api-Version").unwrap(),
            HeaderName::from_static("x-api-version")
        );
    }

    #[test]
    fn query_is_decoded_and_any_repeat_counts() {
        let mut beta = prefix("beta", "/");
        beta.query = vec![("beta".into(), "1".into()), ("q".into(), "a b/c".into())];
        check(
            vec![beta],
            &[
                (req("GET", None, "/?beta=1&q=a+b/c"), Some("beta")),
                (req("GET", None, "/?q=a%20b%2Fc&beta=1"), Some("beta")),
                (req("GET", None, "/?%62eta=%31&q=a+b%2fc"), Some("beta")),
                (req("GET", None, "/?beta=0&beta=1&q=a+b/c"), Some("beta")),
                (req("GET", None, "/?beta=1&&q=a+b/c&x"), Some("beta")),
                (req("GET", None, "/?beta=1"), None),
                (req("GET", None, "/?beta=10&q=a+b/c"), None),
                (req("GET", None, "/?beta&q=a+b/c"), None),
                (req("GET", None, "/"), None),
            ],
        );
        let mut flag = prefix("flag", "/");
        flag.query = vec![("debug".into(), "".into()), ("pct".into(), "100%".into())];
        check(
            vec![flag],
            &[
                (req("GET", None, "/?debug&pct=100%"), Some("flag")),
                (req("GET", None, "/?debug=&pct=100%25"), Some("flag")),
                (req("GET", None, "/?debug=1&pct=100%"), None),
            ],
        );
    }

    #[test]
    fn decoding_helpers() {
        assert!(decoded_eq("a+b%41%zz%", "a bA%zz%"));
        assert!(decoded_eq("%C3%A9", "é"));
        assert!(!decoded_eq("ab", "abc"));
        assert!(!decoded_eq("abc", "ab"));
        let keys: Vec<&str> = prefix_keys("/api/x/").collect();
        assert_eq!(keys, ["/api/x/", "/api/x", "/api/", "/api", "/"]);
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("::1"), "::1");
        assert_eq!(normalize_host("Host:80"), "Host");
    }

    #[test]
    fn bad_regex_names_the_route() {
        let err = Router::new(vec![prefix("ok", "/"), regex("broken", "/(")]).unwrap_err();
        assert!(err.to_string().contains("\"broken\""), "{err}");
    }

    #[test]
    fn explain_gives_a_reason_for_every_other_route() {
        let mut read = prefix("read", "/api");
        read.methods = vec![Method::GET, Method::HEAD];
        let mut hosted = prefix("hosted", "/api");
        hosted.hosts = vec!["api.example.com".into()];
        let mut versioned = prefix("versioned", "/api");
        versioned.headers = vec![(
            HeaderName::from_static("x-api-version"),
            HeaderCond::Exact("2".into()),
        )];
        let mut beta = prefix("beta", "/api");
        beta.query = vec![("beta".into(), "1".into())];
        let router = Router::new(vec![
            exact("ping", "/ping"),
            read,
            hosted,
            versioned,
            beta,
            prefix("fallback", "/api"),
            prefix("root", "/"),
        ])
        .unwrap();

        let r = req("POST", Some("other.test:80"), "/api/x?beta=2").header("x-api-version", "1");
        let e = router.explain(&r.view());
        let name = |i: usize| router.spec(i).name.as_str();
        assert_eq!(e.chosen.map(name), Some("fallback"));
        let reasons: Vec<(&str, String)> = e
            .near_misses
            .iter()
            .map(|(i, m)| (name(*i), m.to_string()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("read", "method POST not in [GET, HEAD]".to_owned()),
                (
                    "hosted",
                    "host other.test:80 not in [api.example.com]".to_owned()
                ),
                ("versioned", "header x-api-version is not \"2\"".to_owned()),
                ("beta", "query parameter beta is not \"1\"".to_owned()),
                (
                    "root",
                    "matched, but route fallback takes precedence".to_owned()
                ),
                ("ping", "path /api/x does not match path /ping".to_owned()),
            ]
        );
        assert!(matches!(e.near_misses[4].1, Miss::Shadowed { by: 5, .. }));

        let r = req("GET", None, "/nothing");
        let e = Router::new(vec![exact("ping", "/ping")])
            .unwrap()
            .explain(&r.view());
        assert_eq!(e.chosen, None);
        assert_eq!(
            e.near_misses[0].1.to_string(),
            "path /nothing does not match path /ping"
        );
    }

    #[test]
    fn explain_reports_missing_header_and_query() {
        let mut both = exact("both", "/");
        both.headers = vec![(
            HeaderName::from_static("x-a"),
            HeaderCond::Exact("1".into()),
        )];
        let mut q = exact("q", "/");
        q.query = vec![("k".into(), "v".into())];
        let router = Router::new(vec![both, q]).unwrap();
        let r = req("GET", None, "/");
        let e = router.explain(&r.view());
        assert_eq!(e.chosen, None);
        let reasons: Vec<String> = e.near_misses.iter().map(|(_, m)| m.to_string()).collect();
        assert_eq!(
            reasons,
            [
                "header x-a missing (want \"1\")",
                "query parameter k missing (want \"v\")"
            ]
        );
    }

    #[test]
    fn header_presence_regex_and_cookies() {
        let mut canary = prefix("canary", "/orders");
        canary.headers = vec![
            (HeaderName::from_static("x-beta"), HeaderCond::Present(true)),
            (
                HeaderName::from_static("x-debug"),
                HeaderCond::Present(false),
            ),
            (
                HeaderName::from_static("x-version"),
                HeaderCond::Regex(Regex::new("^v[0-9]+$").unwrap()),
            ),
        ];
        let mut tester = prefix("tester", "/orders");
        tester.cookies = vec![("tg_tester".into(), "yes".into())];
        let plain = prefix("plain", "/orders");
        check(
            vec![plain, canary, tester],
            &[
                (req("GET", None, "/orders/1"), Some("plain")),
                (
                    req("GET", None, "/orders/1")
                        .header("x-beta", "")
                        .header("x-version", "v12"),
                    Some("canary"),
                ),
                (
                    req("GET", None, "/orders/1")
                        .header("x-beta", "1")
                        .header("x-version", "v12")
                        .header("x-debug", "1"),
                    Some("plain"),
                ),
                (
                    req("GET", None, "/orders/1")
                        .header("x-beta", "1")
                        .header("x-version", "12"),
                    Some("plain"),
                ),
                (
                    req("GET", None, "/orders/1").header("cookie", "a=1; tg_tester=yes"),
                    Some("tester"),
                ),
                (
                    req("GET", None, "/orders/1")
                        .header("cookie", "a=1")
                        .header("cookie", "tg_tester=\"yes\""),
                    Some("tester"),
                ),
                (
                    req("GET", None, "/orders/1").header("cookie", "tg_tester=yess"),
                    Some("plain"),
                ),
            ],
        );
    }

    #[test]
    fn empty_router_finds_nothing() {
        let router = Router::new(vec![]).unwrap();
        assert!(router.is_empty());
        assert_eq!(router.find(&req("GET", None, "/").view()), None);
    }
}
