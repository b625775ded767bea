//! The response cache's header decisions (`cache::control`) on arbitrary
//! header values, against a simple reference of the documented rules
//! (docs/guide/caching.md; RFC 9111 §4.2.1, §4.2.3, §5.2, §3; RFC 9110
//! §13.1). The first input byte picks the mode:
//!
//! - raw: request and response fields are drawn from the cache's headers
//!   with tricky or arbitrary values;
//! - built: `Cache-Control` is a well-formed directive list (any case, quoted
//!   or token arguments, escapes, commas in quotes, spaces, empty elements)
//!   split over one to three lines.
//!
//! What must hold, in both modes: never a panic; re-serialising the parsed
//! directives canonically parses to the same directives; `freshness_lifetime`
//! follows `s-maxage`, `max-age`, `Expires` minus `Date` (an invalid Expires
//! is already stale, a lifetime is never negative nor over 2^31 s), then the
//! default; `initial_age` is RFC 9111's corrected initial age (an invalid Date
//! or Age counts as absent, a list-valued Age by its first member);
//! `not_storable` gives the documented first reason, so `no-store` and
//! `private` are never stored; `vary_names` are the valid field names,
//! lowercased, once each; `not_modified` never matches on junk or a missing
//! validator; `merge_304` replaces exactly the fields it documents. Built
//! lists also parse as the reference reads them (malformed arguments count as
//! absent, the first valid occurrence wins, `public` only bare), and the same
//! whether on several lines or joined into one.
//!
//! cargo +nightly fuzz run cache_control -- -max_total_time=60

#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tollgate::cache::control::{
    RequestDirectives, ResponseDirectives, freshness_lifetime, initial_age, merge_304,
    not_modified, not_storable, request_directives, response_directives, vary_names,
};

const MAX_DELTA: u64 = 1 << 31;
const T: u64 = 1_700_000_000;

const FIELDS: &[&str] = &[
    "cache-control",
    "pragma",
    "expires",
    "date",
    "age",
    "vary",
    "etag",
    "last-modified",
    "set-cookie",
    "authorization",
    "if-none-match",
    "if-modified-since",
    "connection",
    "content-length",
    "content-type",
    "x-a",
];
const TRICKY: &[&[u8]] = &[
    b"max-age=60",
    b"MAX-AGE=\"60\"",
    b"max-age=\"6\\0\"",
    b"max-age=-1",
    b"max-age=",
    b"max-age = 5",
    b"max-age=5 6",
    b"max-age=\"5, public",
    b"max-age=99999999999999999999",
    b"s-maxage=0, max-age=9",
    b"no-store",
    b"No-Store=1",
    b"private=\"set-cookie\"",
    b"public",
    b"public=1",
    b"public junk",
    b"no-cache=\"a, b\", max-age=5",
    b"must-revalidate",
    b"stale-while-revalidate=30, stale-if-error=600",
    b"max-stale",
    b"max-stale=3",
    b"min-fresh=1, only-if-cached",
    b",,, ,",
    b"\"",
    b"=",
    b"\\",
    b"\xff\xfe",
    b"*",
    b"accept-encoding, *",
    b"Accept, accept , x y",
    b"\"abc\"",
    b"W/\"abc\"",
    b"\"abc\", W/\"def\"",
    b"\"a,b\"",
    b"*, junk",
    b"W/",
    b"\"abc\" junk",
    b"Sun, 06 Nov 1994 08:49:37 GMT",
    b"Sunday, 06-Nov-94 08:49:37 GMT",
    b"Sun Nov  6 08:49:37 1994",
    b"Tue, 14 Nov 2023 22:13:20 GMT",
    b" Tue, 14 Nov 2023 22:13:20 GMT ",
    b"tue, 14 nov 2023 22:13:20 gmt",
    b"Tue, 14 Nov 2023 22:13:20 GMT, Wed, 15 Nov 2023 22:13:20 GMT",
    b"0",
    b"-1",
    b"5",
    b"5, 6",
    b" 7 ",
    b"007",
    b"1e3",
    b"keep-alive, x-a",
    b"no-cache",
];

/// Response directive names with how the reference reads them.
#[derive(Clone, Copy)]
enum Kind {
    Flag(fn(&mut ResponseDirectives)),
    Public,
    Delta(fn(&mut ResponseDirectives) -> &mut Option<u64>),
    Other,
}

const RESPONSE_NAMES: &[(&str, Kind)] = &[
    ("no-store", Kind::Flag(|d| d.no_store = true)),
    ("no-cache", Kind::Flag(|d| d.no_cache = true)),
    ("private", Kind::Flag(|d| d.private = true)),
    ("must-revalidate", Kind::Flag(|d| d.must_revalidate = true)),
    (
        "proxy-revalidate",
        Kind::Flag(|d| d.proxy_revalidate = true),
    ),
    ("public", Kind::Public),
    ("max-age", Kind::Delta(|d| &mut d.max_age)),
    ("s-maxage", Kind::Delta(|d| &mut d.s_maxage)),
    (
        "stale-while-revalidate",
        Kind::Delta(|d| &mut d.stale_while_revalidate),
    ),
    ("stale-if-error", Kind::Delta(|d| &mut d.stale_if_error)),
    ("immutable", Kind::Other),
    ("x-max-age", Kind::Other),
    ("community", Kind::Other),
];

const REQUEST_NAMES: &[&str] = &[
    "no-cache",
    "no-store",
    "only-if-cached",
    "max-age",
    "min-fresh",
    "max-stale",
    "no-transform",
];

/// One directive as written: its name and its argument, if any.
struct Directive {
    name: String,
    arg: Option<Arg>,
}

enum Arg {
    Token(String),
    /// The content; written quoted, with `"` and `\` (and maybe more)
    /// backslash-escaped.
    Quoted(String),
}

impl Arg {
    fn content(&self) -> &str {
        match self {
            Arg::Token(s) | Arg::Quoted(s) => s,
        }
    }
}

/// RFC 9111 §1.2.2 delta-seconds, clamped.
fn delta(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.bytes()
            .fold(0u64, |a, b| {
                a.saturating_mul(10).saturating_add(u64::from(b - b'0'))
            })
            .min(MAX_DELTA),
    )
}

fn reference_response(list: &[Directive]) -> ResponseDirectives {
    let mut d = ResponseDirectives::default();
    for x in list {
        let Some((_, kind)) = RESPONSE_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&x.name))
        else {
            continue;
        };
        match kind {
            Kind::Flag(set) => set(&mut d),
            Kind::Public => d.public |= x.arg.is_none(),
            Kind::Delta(slot) => {
                let slot = slot(&mut d);
                if slot.is_none() {
                    *slot = x.arg.as_ref().and_then(|a| delta(a.content()));
                }
            }
            Kind::Other => {}
        }
    }
    d
}

fn reference_request(list: &[Directive]) -> RequestDirectives {
    let mut d = RequestDirectives::default();
    for x in list {
        let is = |n: &str| x.name.eq_ignore_ascii_case(n);
        let value = x.arg.as_ref().and_then(|a| delta(a.content()));
        if is("no-cache") {
            d.no_cache = true;
        } else if is("no-store") {
            d.no_store = true;
        } else if is("only-if-cached") {
            d.only_if_cached = true;
        } else if is("max-age") {
            d.max_age = d.max_age.or(value);
        } else if is("min-fresh") {
            d.min_fresh = d.min_fresh.or(value);
        } else if is("max-stale") && d.max_stale.is_none() {
            d.max_stale = if x.arg.is_none() {
                Some(u64::MAX)
            } else {
                value
            };
        }
    }
    d
}

/// The canonical spelling of parsed directives.
fn serialize(d: &ResponseDirectives) -> String {
    let mut out = Vec::new();
    for (on, name) in [
        (d.no_store, "no-store"),
        (d.no_cache, "no-cache"),
        (d.private, "private"),
        (d.public, "public"),
        (d.must_revalidate, "must-revalidate"),
        (d.proxy_revalidate, "proxy-revalidate"),
    ] {
        if on {
            out.push(name.to_string());
        }
    }
    for (v, name) in [
        (d.max_age, "max-age"),
        (d.s_maxage, "s-maxage"),
        (d.stale_while_revalidate, "stale-while-revalidate"),
        (d.stale_if_error, "stale-if-error"),
    ] {
        if let Some(v) = v {
            out.push(format!("{name}={v}"));
        }
    }
    out.join(", ")
}

fn random_case(u: &mut Unstructured<'_>, s: &str) -> Result<String> {
    let flips: u32 = u.arbitrary()?;
    Ok(s.chars()
        .enumerate()
        .map(|(i, c)| {
            if flips >> (i % 32) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect())
}

fn argument(u: &mut Unstructured<'_>) -> Result<Option<Arg>> {
    let digits = |u: &mut Unstructured<'_>| -> Result<String> {
        Ok(match u.int_in_range(0..=4)? {
            0 => "0".into(),
            1 => "007".into(),
            2 => "99999999999999999999".into(),
            3 => "2147483648".into(),
            _ => u.arbitrary::<u32>()?.to_string(),
        })
    };
    Ok(match u.int_in_range(0..=6)? {
        0 | 1 => None,
        2 => Some(Arg::Token(digits(u)?)),
        3 => Some(Arg::Quoted(digits(u)?)),
        4 => Some(Arg::Token(
            (*u.choose(&["abc", "-1", "+1", "1.5", "0x10", "5s", "set-cookie"])?).into(),
        )),
        5 => Some(Arg::Quoted(
            (*u.choose(&[
                "",
                " 5",
                "a, max-age=5, public",
                "x\"y",
                "\\",
                "set-cookie, x",
            ])?)
            .into(),
        )),
        _ => Some(Arg::Quoted(digits(u)? + &digits(u)?)),
    })
}

/// A directive written out: `name[=arg]`, with optional spaces around `=`.
fn write(u: &mut Unstructured<'_>, x: &Directive) -> Result<String> {
    let mut s = x.name.clone();
    let Some(arg) = &x.arg else {
        return Ok(s);
    };
    if u.ratio(1, 8)? {
        s.push(' ');
    }
    s.push('=');
    if u.ratio(1, 8)? {
        s.push('\t');
    }
    match arg {
        Arg::Token(t) => s.push_str(t),
        Arg::Quoted(q) => {
            s.push('"');
            let escape_all = u.ratio(1, 4)?;
            for c in q.chars() {
                if c == '"' || c == '\\' || escape_all {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('"');
        }
    }
    Ok(s)
}

/// A well-formed list over one to three lines (each line a valid list).
fn built_lines(u: &mut Unstructured<'_>, names: &[&str]) -> Result<(Vec<Directive>, Vec<String>)> {
    let mut list = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        let name = *u.choose(names)?;
        let name = random_case(u, name)?;
        list.push(Directive {
            name,
            arg: argument(u)?,
        });
    }
    let mut lines = vec![String::new()];
    for x in &list {
        if !lines.last().expect("a line").is_empty() {
            if lines.len() < 3 && u.ratio(1, 4)? {
                lines.push(String::new());
            } else {
                let sep = *u.choose(&[",", ", ", " ,\t", ",, ", " , , "])?;
                lines.last_mut().expect("a line").push_str(sep);
            }
        }
        let w = write(u, x)?;
        lines.last_mut().expect("a line").push_str(&w);
    }
    if u.ratio(1, 4)? {
        lines.last_mut().expect("a line").push_str(" ,");
    }
    Ok((list, lines))
}

fn map_of(name: &HeaderName, lines: &[String]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for l in lines {
        h.append(
            name.clone(),
            HeaderValue::from_str(l).expect("built lines are text"),
        );
    }
    h
}

fn raw_value(u: &mut Unstructured<'_>) -> Result<HeaderValue> {
    let bytes: Vec<u8> = match u.int_in_range(0..=5)? {
        0 => {
            let len = u.int_in_range(0..=24)?;
            u.bytes(len)?.to_vec()
        }
        1 => {
            let off: i32 = u.arbitrary()?;
            let t = UNIX_EPOCH + Duration::from_secs(T.saturating_add_signed(i64::from(off)));
            httpdate::fmt_http_date(t).into_bytes()
        }
        _ => u.choose(TRICKY)?.to_vec(),
    };
    let ok: Vec<u8> = bytes
        .into_iter()
        .filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        .collect();
    Ok(HeaderValue::from_bytes(&ok).expect("filtered to valid bytes"))
}

fn raw_map(u: &mut Unstructured<'_>) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=8)? {
        let name = HeaderName::from_static(u.choose(FIELDS)?);
        h.append(name, raw_value(u)?);
    }
    Ok(h)
}

fn ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && ows(*first)
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && ows(*last)
    {
        s = rest;
    }
    s
}

fn date_of(v: &HeaderValue) -> Option<SystemTime> {
    let s = std::str::from_utf8(trim(v.as_bytes())).ok()?;
    httpdate::parse_http_date(s).ok()
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The reference storage decision (docs/guide/caching.md, "What is stored").
fn reference_storable(
    method: &Method,
    status: u16,
    request: &HeaderMap,
    response: &HeaderMap,
    d: &ResponseDirectives,
    has_default: bool,
) -> Option<&'static str> {
    if *method != Method::GET && *method != Method::HEAD {
        return Some("method");
    }
    if status < 200 || status == 206 || status == 304 || status >= 500 {
        return Some("status");
    }
    if d.no_store || request_directives(request).no_store {
        return Some("no-store");
    }
    if d.private {
        return Some("private");
    }
    let vary_star = response
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|m| trim(m) == b"*");
    if vary_star {
        return Some("vary-star");
    }
    if response.contains_key(header::SET_COOKIE) {
        return Some("set-cookie");
    }
    if request.contains_key(header::AUTHORIZATION)
        && !(d.public || d.s_maxage.is_some() || d.must_revalidate)
    {
        return Some("authorization");
    }
    let explicit =
        d.max_age.is_some() || d.s_maxage.is_some() || response.contains_key(header::EXPIRES);
    let heuristic = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414].contains(&status);
    if !(heuristic || explicit || d.public) {
        return Some("status");
    }
    let validator =
        response.contains_key(header::ETAG) || response.contains_key(header::LAST_MODIFIED);
    if !explicit && !has_default && !validator {
        return Some("no-lifetime");
    }
    None
}

const NOT_UPDATED: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authentication-info",
];

fn values<'h>(h: &'h HeaderMap, name: &HeaderName) -> Vec<&'h [u8]> {
    h.get_all(name).iter().map(HeaderValue::as_bytes).collect()
}

/// Every check that holds for any request and response.
#[allow(clippy::too_many_arguments)]
fn check(
    method: &Method,
    status: StatusCode,
    request: &HeaderMap,
    response: &HeaderMap,
    default_ttl: Option<Duration>,
    request_time: SystemTime,
    response_time: SystemTime,
    other: &HeaderMap,
) {
    let d = response_directives(response);
    let again = serialize(&d);
    let reparsed = response_directives(&map_of(&header::CACHE_CONTROL, &[again.clone()]));
    assert_eq!(reparsed, d, "{again:?} from {response:?}");
    for v in [
        d.max_age,
        d.s_maxage,
        d.stale_while_revalidate,
        d.stale_if_error,
    ]
    .into_iter()
    .flatten()
    {
        assert!(v <= MAX_DELTA);
    }
    let r = request_directives(request);
    if !request.contains_key(header::CACHE_CONTROL) {
        assert_eq!(
            r,
            RequestDirectives {
                no_cache: r.no_cache,
                ..Default::default()
            },
            "only Pragma without Cache-Control"
        );
    }

    // Freshness.
    let before = SystemTime::now();
    let lifetime = freshness_lifetime(&d, response, default_ttl);
    let after = SystemTime::now();
    let clamp = |d: Duration| d.min(Duration::from_secs(MAX_DELTA));
    match (d.s_maxage.or(d.max_age), response.get(header::EXPIRES)) {
        (Some(secs), _) => assert_eq!(lifetime, Some(Duration::from_secs(secs))),
        (None, Some(expires)) => {
            let got = lifetime.expect("an Expires gives a lifetime");
            assert!(got <= Duration::from_secs(MAX_DELTA), "{got:?}");
            match (
                date_of(expires),
                response.get(header::DATE).and_then(date_of),
            ) {
                (None, _) => assert_eq!(got, Duration::ZERO, "invalid Expires {expires:?}"),
                (Some(e), Some(date)) => assert_eq!(
                    got,
                    clamp(e.duration_since(date).unwrap_or_default()),
                    "Expires {expires:?}, Date {:?}",
                    response.get(header::DATE)
                ),
                (Some(e), None) => {
                    let most = clamp(e.duration_since(before).unwrap_or_default());
                    let least = clamp(e.duration_since(after).unwrap_or_default());
                    assert!(least <= got && got <= most, "{got:?} from the clock");
                }
            }
        }
        (None, None) => assert_eq!(lifetime, default_ttl),
    }

    // Age on arrival (RFC 9111 §4.2.3).
    let age = initial_age(response, request_time, response_time);
    let apparent = response
        .get(header::DATE)
        .and_then(date_of)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or_default();
    let age_value = response
        .get(header::AGE)
        .and_then(|a| a.as_bytes().split(|&b| b == b',').next())
        .and_then(|first| std::str::from_utf8(trim(first)).ok())
        .and_then(delta)
        .map_or(Duration::ZERO, Duration::from_secs);
    let delay = response_time
        .duration_since(request_time)
        .unwrap_or_default();
    assert_eq!(
        age,
        apparent.max(age_value.saturating_add(delay)),
        "Age {:?}, Date {:?}",
        response.get(header::AGE),
        response.get(header::DATE)
    );

    // Storage.
    let got = not_storable(method, status, request, response, &d, default_ttl.is_some());
    let want = reference_storable(
        method,
        status.as_u16(),
        request,
        response,
        &d,
        default_ttl.is_some(),
    );
    assert_eq!(
        got, want,
        "{method} {status}\nrequest {request:?}\nresponse {response:?}"
    );
    if d.no_store || d.private || r.no_store {
        assert!(got.is_some(), "stored despite no-store/private");
    }

    // Vary.
    let mut names: Vec<String> = Vec::new();
    for m in response
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trim)
    {
        if m.is_empty() || !m.iter().all(|&b| tchar(b)) {
            continue;
        }
        let n = String::from_utf8(m.to_ascii_lowercase()).expect("tchar is ASCII");
        if !names.contains(&n) {
            names.push(n);
        }
    }
    assert_eq!(vary_names(response), names);

    // Conditional requests, with the response's validators as the stored ones.
    let etag = response.get(header::ETAG);
    let last_modified = response.get(header::LAST_MODIFIED);
    let hit = not_modified(request, etag, last_modified);
    if request.contains_key(header::IF_NONE_MATCH) {
        if hit {
            let stored = etag.expect("a match needs a stored ETag").as_bytes();
            let stored = trim(stored);
            let stored = stored.strip_prefix(b"W/").unwrap_or(stored);
            assert!(stored.len() >= 2 && stored.starts_with(b"\"") && stored.ends_with(b"\""));
            assert!(
                request.get_all(header::IF_NONE_MATCH).iter().any(|line| {
                    let line = line.as_bytes();
                    line.windows(stored.len()).any(|w| w == stored) || line.contains(&b'*')
                }),
                "304 for {:?} with ETag {etag:?}",
                request.get_all(header::IF_NONE_MATCH)
            );
        }
        if let Some(tag) = etag
            && let Some(inner) = trim(tag.as_bytes())
                .strip_prefix(b"W/")
                .or(Some(trim(tag.as_bytes())))
            && inner.len() >= 2
            && inner.starts_with(b"\"")
            && inner.ends_with(b"\"")
            && !inner[1..inner.len() - 1].contains(&b'"')
        {
            // Asking with the stored tag itself, strong or weak, matches.
            let mut asked = HeaderMap::new();
            asked.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_bytes(inner).expect("a value"),
            );
            assert!(not_modified(&asked, etag, None), "{inner:?} vs {tag:?}");
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(inner);
            asked.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_bytes(&weak).expect("a value"),
            );
            assert!(
                not_modified(&asked, etag, None),
                "weak {inner:?} vs {tag:?}"
            );
        }
    } else {
        let mut since = request.get_all(header::IF_MODIFIED_SINCE).iter();
        let want = match (since.next(), since.next()) {
            (Some(s), None) => match (date_of(s), last_modified.and_then(date_of)) {
                (Some(s), Some(m)) => m <= s,
                _ => false,
            },
            _ => false,
        };
        assert_eq!(
            hit,
            want,
            "If-Modified-Since {:?}",
            request.get(header::IF_MODIFIED_SINCE)
        );
    }

    // A 304's fields over the stored ones.
    let merged = merge_304(response, other);
    let listed: Vec<Vec<u8>> = other
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|m| trim(m).to_ascii_lowercase())
        .collect();
    for name in response.keys().chain(other.keys()) {
        let updated = other.contains_key(name)
            && !NOT_UPDATED.contains(&name.as_str())
            && !listed.iter().any(|l| l == name.as_str().as_bytes());
        let want = if updated {
            values(other, name)
        } else {
            values(response, name)
        };
        assert_eq!(values(&merged, name), want, "{name} after a 304");
    }
    assert!(
        merged
            .keys()
            .all(|n| response.contains_key(n) || other.contains_key(n))
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    let Ok(input) = (|| -> Result<_> {
        let method = (*u.choose(&["GET", "HEAD", "POST", "PURGE"])?)
            .parse::<Method>()
            .expect("a method");
        let status = StatusCode::from_u16(match u.int_in_range(0..=2)? {
            0 => u.int_in_range(100..=999)?,
            _ => *u.choose(&[200, 203, 204, 206, 301, 302, 304, 307, 404, 500, 501, 599])?,
        })
        .expect("100 to 999");
        let default_ttl = match u.int_in_range(0..=2)? {
            0 => Some(Duration::from_secs(u64::from(u.arbitrary::<u32>()?))),
            _ => None,
        };
        let request_time = UNIX_EPOCH + Duration::from_secs(T + u64::from(u.arbitrary::<u16>()?));
        let response_time = UNIX_EPOCH + Duration::from_secs(T + u64::from(u.arbitrary::<u16>()?));
        let mut request = raw_map(&mut u)?;
        let mut response = raw_map(&mut u)?;
        let other = raw_map(&mut u)?;
        let mut built = None;
        if mode & 1 == 1 {
            let (list, lines) = built_lines(
                &mut u,
                &RESPONSE_NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )?;
            response.remove(header::CACHE_CONTROL);
            for l in &lines {
                response.append(
                    header::CACHE_CONTROL,
                    HeaderValue::from_str(l).expect("text"),
                );
            }
            let (rlist, rlines) = built_lines(&mut u, REQUEST_NAMES)?;
            request.remove(header::CACHE_CONTROL);
            for l in &rlines {
                request.append(
                    header::CACHE_CONTROL,
                    HeaderValue::from_str(l).expect("text"),
                );
            }
            built = Some((list, lines, rlist, rlines));
        }
        Ok((
            method,
            status,
            default_ttl,
            request_time,
            response_time,
            request,
            response,
            other,
            built,
        ))
    })() else {
        return;
    };
    let (method, status, default_ttl, request_time, response_time, request, response, other, built) =
        input;

    if let Some((list, lines, rlist, rlines)) = &built {
        let want = reference_response(list);
        assert_eq!(response_directives(&response), want, "{lines:?}");
        let joined = map_of(&header::CACHE_CONTROL, &[lines.join(", ")]);
        assert_eq!(response_directives(&joined), want, "{lines:?} joined");
        if !rlines.is_empty() {
            let want = reference_request(rlist);
            assert_eq!(request_directives(&request), want, "{rlines:?}");
        }
    }
    check(
        &method,
        status,
        &request,
        &response,
        default_ttl,
        request_time,
        response_time,
        &other,
    );
});
