//! The router against a reference model of its documented precedence
//! (docs/reference/config.md, "Which route wins"; docs/guide/routing.md,
//! "Matching"): a small route table and a request are drawn from vocabularies
//! chosen so that paths, hosts and constraints collide often, and
//! `Router::find` must pick the same route as the model, which checks every
//! route one by one and takes the best by (exact < regex < longest prefix,
//! more constraint kinds, file order). `explain` must agree with `find`,
//! account for every other route exactly once, and give each the right kind
//! of reason: its path, a failed constraint, or shadowed by the chosen route.
//! Half the tables put every route on one path, so that the host index (8 or
//! more routes on one path) is built too.
//!
//! cargo +nightly fuzz run route_match -- -max_total_time=60

#![no_main]

use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use regex::Regex;
use tollgate::router::{HeaderCond, Miss, PathSpec, RequestView, RouteSpec, Router};

const EXACT: &[&str] = &[
    "/",
    "/api",
    "/api/",
    "/api/users",
    "/api/users/1",
    "/x",
    "/apix",
];
const PREFIX: &[&str] = &["/", "/api", "/api/", "/api/users", "/ap", "/x/", "/x"];
const REGEX: &[&str] = &[
    "/api/.*",
    "/api/users/[0-9]+",
    "/v[0-9]+(/.*)?",
    "/x",
    "/(api|x)/?",
    ".*",
    "/api",
];
const PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/",
    "/api/users",
    "/api/users/",
    "/api/users/1",
    "/api/users/x",
    "/apix",
    "/ap",
    "/x",
    "/x/",
    "/x/y",
    "/v1",
    "/v12/a",
    "//",
    "/api//users",
    "",
];
const SEGMENTS: &[&str] = &["api", "users", "1", "x", "", "v2", "ap"];
const ROUTE_HOSTS: &[&str] = &[
    "api.example.com",
    "API.Example.COM",
    "*.example.com",
    "*.Example.com.",
    "example.com",
    "[::1]",
    "::1",
    "127.0.0.1",
    "a.example.com",
    "t1.test",
    "t2.test",
    "*.test",
];
const REQUEST_HOSTS: &[&str] = &[
    "api.example.com",
    "API.EXAMPLE.com:8443",
    "api.example.com.",
    "a.b.example.com",
    "A.example.com:80",
    "example.com",
    "[::1]:8080",
    "[::1]",
    "::1",
    "127.0.0.1:80",
    "t1.test",
    "x.t2.test",
    "badexample.com",
    ".example.com",
    "",
];
const METHODS: &[&str] = &["GET", "POST", "HEAD", "DELETE", "PURGE"];
const HEADER_NAMES: &[&str] = &["x-a", "x-b"];
const HEADER_VALUES: &[&str] = &["1", "2", "v12", ""];
const HEADER_REGEXES: &[&str] = &["^v[0-9]+$", "1", "^$"];
const QUERY_KEYS: &[&str] = &["a", "b"];
const QUERY_VALUES: &[&str] = &["1", "x y", "", "100%"];
const QUERIES: &[&str] = &[
    "a=1",
    "a=x+y",
    "a=x%20y&b=1",
    "b=%31&a=1",
    "a",
    "a=",
    "a=100%25",
    "a=100%",
    "%61=1",
    "a=2&a=1",
    "&&a=1&",
    "b=1",
];
const COOKIE_NAMES: &[&str] = &["s", "t"];
const COOKIE_VALUES: &[&str] = &["1", "yes"];
const COOKIES: &[&str] = &[
    "s=1",
    "t=yes; s=1",
    "s=\"1\"",
    "s=",
    "s=2",
    "t=yes",
    " s = 1 ",
    "s=2; s=1",
];

/// The vocabulary's regexes, compiled once: the path regexes anchored as
/// documented (for the model), the header regexes as written.
static COMPILED: LazyLock<(Vec<Regex>, Vec<Regex>)> = LazyLock::new(|| {
    let compile = |r: &str| Regex::new(r).expect("a valid pattern");
    (
        REGEX
            .iter()
            .map(|r| compile(&format!("^(?:{r})$")))
            .collect(),
        HEADER_REGEXES.iter().map(|r| compile(r)).collect(),
    )
});

/// A generated route with the facts the model needs beside the spec.
struct Model {
    spec: RouteSpec,
    /// For `path_regex` routes: the pattern, anchored as documented.
    regex: Option<Regex>,
}

fn path_spec(u: &mut Unstructured<'_>) -> Result<(PathSpec, Option<Regex>)> {
    Ok(match u.int_in_range(0..=2)? {
        0 => (PathSpec::Exact(u.choose(EXACT)?.to_string()), None),
        1 => (PathSpec::Prefix(u.choose(PREFIX)?.to_string()), None),
        _ => {
            let i = u.choose_index(REGEX.len())?;
            (
                PathSpec::Regex(REGEX[i].to_string()),
                Some(COMPILED.0[i].clone()),
            )
        }
    })
}

/// Route `i`, on `shared` when given (every route on one path), else on a
/// path of its own.
fn route(
    u: &mut Unstructured<'_>,
    i: usize,
    shared: Option<&(PathSpec, Option<Regex>)>,
) -> Result<Model> {
    let (path, regex) = match shared {
        Some(p) => p.clone(),
        None => path_spec(u)?,
    };
    let mut spec = RouteSpec {
        name: format!("r{i}"),
        path,
        hosts: vec![],
        methods: vec![],
        headers: vec![],
        query: vec![],
        cookies: vec![],
    };
    for _ in 0..u.int_in_range(0..=2)? {
        spec.hosts.push(u.choose(ROUTE_HOSTS)?.to_string());
    }
    for _ in 0..u.int_in_range(0..=2)? {
        spec.methods
            .push(u.choose(METHODS)?.parse().expect("a method"));
    }
    for _ in 0..u.int_in_range(0..=2)? {
        let name = HeaderName::from_static(u.choose(HEADER_NAMES)?);
        let cond = match u.int_in_range(0..=2)? {
            0 => HeaderCond::Exact(u.choose(HEADER_VALUES)?.to_string()),
            1 => HeaderCond::Present(u.arbitrary()?),
            _ => HeaderCond::Regex(u.choose(&COMPILED.1)?.clone()),
        };
        spec.headers.push((name, cond));
    }
    for _ in 0..u.int_in_range(0..=2)? {
        let k = u.choose(QUERY_KEYS)?.to_string();
        spec.query.push((k, u.choose(QUERY_VALUES)?.to_string()));
    }
    for _ in 0..u.int_in_range(0..=2)? {
        let k = u.choose(COOKIE_NAMES)?.to_string();
        spec.cookies.push((k, u.choose(COOKIE_VALUES)?.to_string()));
    }
    Ok(Model { spec, regex })
}

struct Request {
    method: Method,
    host: Option<String>,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

fn request(u: &mut Unstructured<'_>) -> Result<Request> {
    let method = u.choose(METHODS)?.parse().expect("a method");
    let host = match u.int_in_range(0..=9)? {
        0 => None,
        1 => {
            let len = u.int_in_range(0..=20)?;
            Some(String::from_utf8_lossy(u.bytes(len)?).into_owned())
        }
        _ => Some(u.choose(REQUEST_HOSTS)?.to_string()),
    };
    let path = match u.int_in_range(0..=3)? {
        0 => {
            let mut p = String::new();
            for _ in 0..u.int_in_range(1..=4)? {
                p.push('/');
                p.push_str(u.choose(SEGMENTS)?);
            }
            p
        }
        _ => u.choose(PATHS)?.to_string(),
    };
    let query = match u.int_in_range(0..=2)? {
        0 => None,
        _ => Some(u.choose(QUERIES)?.to_string()),
    };
    let mut headers = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let name = HeaderName::from_static(u.choose(HEADER_NAMES)?);
        headers.append(name, HeaderValue::from_static(u.choose(HEADER_VALUES)?));
    }
    for _ in 0..u.int_in_range(0..=2)? {
        headers.append(
            http::header::COOKIE,
            HeaderValue::from_static(u.choose(COOKIES)?),
        );
    }
    Ok(Request {
        method,
        host,
        path,
        query,
        headers,
    })
}

// ---- The reference model, from the documented rules only. ----

fn path_matches(m: &Model, path: &str) -> bool {
    match &m.spec.path {
        PathSpec::Exact(p) => p == path,
        // Segment boundaries: `/api` is `/api` or below `/api/`; a prefix
        // written with a trailing slash (`/`, `/api/`) is anything below it.
        PathSpec::Prefix(p) if p.ends_with('/') => path.starts_with(p.as_str()),
        PathSpec::Prefix(p) => path == p || path.starts_with(&format!("{p}/")),
        PathSpec::Regex(_) => m.regex.as_ref().is_some_and(|r| r.is_match(path)),
    }
}

/// Lowercase, without brackets, port and one trailing dot.
fn canonical_host(raw: &str) -> String {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if raw.matches(':').count() == 1 {
        raw.split(':').next().unwrap_or(raw)
    } else {
        raw
    };
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let p = pattern.trim().to_ascii_lowercase();
    match p.strip_prefix("*.") {
        // A wildcard wants at least one label before the domain.
        Some(domain) => {
            let suffix = format!(".{}", domain.trim_end_matches('.'));
            host.len() > suffix.len() && host.ends_with(&suffix)
        }
        None => canonical_host(&p) == host,
    }
}

/// `application/x-www-form-urlencoded` decoding; a `%` without two hex
/// digits stands for itself.
fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn query_holds(query: Option<&str>, key: &str, value: &str) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .any(|(k, v)| form_decode(k) == key.as_bytes() && form_decode(v) == value.as_bytes())
}

/// The first cookie of that name across the `Cookie` headers, quotes
/// dropped; an empty value is no cookie.
fn cookie(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    for h in headers.get_all(http::header::COOKIE) {
        for pair in h.as_bytes().split(|&b| b == b';') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != name.as_bytes() {
                continue;
            }
            let v = pair[eq + 1..].trim_ascii();
            let v = if v.len() >= 2 && v.starts_with(b"\"") && v.ends_with(b"\"") {
                &v[1..v.len() - 1]
            } else {
                v
            };
            return (!v.is_empty()).then(|| v.to_vec());
        }
    }
    None
}

fn constraints_hold(m: &Model, r: &Request) -> bool {
    let s = &m.spec;
    let host = r.host.as_deref().map(canonical_host);
    (s.hosts.is_empty() || host.is_some_and(|h| s.hosts.iter().any(|p| host_matches(p, &h))))
        && (s.methods.is_empty() || s.methods.contains(&r.method))
        && s.headers.iter().all(|(name, cond)| {
            let mut values = r.headers.get_all(name).iter();
            match cond {
                HeaderCond::Exact(want) => values.any(|v| v.as_bytes() == want.as_bytes()),
                HeaderCond::Present(want) => r.headers.contains_key(name) == *want,
                HeaderCond::Regex(re) => values.any(|v| v.to_str().is_ok_and(|v| re.is_match(v))),
            }
        })
        && s.query
            .iter()
            .all(|(k, v)| query_holds(r.query.as_deref(), k, v))
        && s.cookies
            .iter()
            .all(|(k, v)| cookie(&r.headers, k).as_deref() == Some(v.as_bytes()))
}

fn kinds(s: &RouteSpec) -> usize {
    [
        !s.hosts.is_empty(),
        !s.methods.is_empty(),
        !s.headers.is_empty(),
        !s.query.is_empty(),
        !s.cookies.is_empty(),
    ]
    .iter()
    .filter(|&&b| b)
    .count()
}

/// Smaller wins: the path tier, then (prefixes) the longer prefix, then more
/// constraint kinds, then file order.
fn precedence(m: &Model, i: usize) -> (u8, usize, usize, usize) {
    let (tier, longer) = match &m.spec.path {
        PathSpec::Exact(_) => (0, 0),
        PathSpec::Regex(_) => (1, 0),
        PathSpec::Prefix(p) => (2, usize::MAX - p.len()),
    };
    (tier, longer, 5 - kinds(&m.spec), i)
}

fn reference(models: &[Model], r: &Request) -> Option<usize> {
    models
        .iter()
        .enumerate()
        .filter(|(_, m)| path_matches(m, &r.path) && constraints_hold(m, r))
        .min_by_key(|(i, m)| precedence(m, *i))
        .map(|(i, _)| i)
}

fn table(u: &mut Unstructured<'_>) -> Result<Vec<Model>> {
    let n = u.int_in_range(1..=16usize)?;
    let shared = if u.arbitrary()? {
        Some(path_spec(u)?)
    } else {
        None
    };
    (0..n).map(|i| route(u, i, shared.as_ref())).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(models) = table(&mut u) else {
        return;
    };
    let n = models.len();
    let Ok(req) = request(&mut u) else {
        return;
    };
    let router = Router::new(models.iter().map(|m| m.spec.clone()).collect())
        .expect("the vocabulary's regexes compile");
    let view = RequestView {
        method: &req.method,
        host: req.host.as_deref(),
        path: &req.path,
        query: req.query.as_deref(),
        headers: &req.headers,
    };
    let got = router.find(&view);
    let want = reference(&models, &req);
    let show = |i: Option<usize>| i.map(|i| format!("{i} {:?}", models[i].spec));
    assert_eq!(
        got,
        want,
        "router chose {:?}, the model {:?}\nrequest: {} host={:?} path={:?} query={:?} headers={:?}\ntable: {:#?}",
        show(got),
        show(want),
        req.method,
        req.host,
        req.path,
        req.query,
        req.headers,
        models.iter().map(|m| &m.spec).collect::<Vec<_>>()
    );

    let e = router.explain(&view);
    assert_eq!(e.chosen, got, "explain and find disagree");
    let mut seen: Vec<usize> = e.near_misses.iter().map(|(i, _)| *i).collect();
    seen.extend(got);
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..n).collect::<Vec<_>>(),
        "explain accounts for every route once"
    );
    for (i, miss) in &e.near_misses {
        let m = &models[*i];
        let path = path_matches(m, &req.path);
        let whole = path && constraints_hold(m, &req);
        match miss {
            Miss::Path { .. } => assert!(!path, "route {i}: `path` for a matching path"),
            Miss::Shadowed { by, .. } => {
                assert!(
                    whole,
                    "route {i}: `shadowed` for a route that does not match"
                );
                assert_eq!(
                    Some(*by),
                    got,
                    "route {i}: shadowed by another than the chosen"
                );
            }
            other => assert!(
                path && !whole,
                "route {i}: {other:?} for a route whose path {} and constraints {}",
                if path { "matches" } else { "does not match" },
                if whole { "hold" } else { "fail" },
            ),
        }
    }
});
