//! The response cache's decisions, as pure functions of header maps.
//!
//! RFC 9111 (HTTP Caching) read for a *shared* cache, RFC 5861's
//! `stale-while-revalidate` / `stale-if-error`, and RFC 9110's conditional
//! requests. Nothing here does I/O or keeps state. Every parser takes any
//! bytes a header value can hold, and where the input is unclear it takes the
//! cautious reading: don't store, don't reuse, don't answer 304.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

/// The largest delta-seconds value the cache represents: bigger values (and
/// values too big for any integer) become this one (RFC 9111 §1.2.2).
const MAX_DELTA: u64 = 1 << 31;

/// The Cache-Control directives of a response, read from every Cache-Control
/// field line.
///
/// Directive names are case-insensitive. Arguments may be tokens or quoted
/// strings. If an argument is malformed (`max-age=abc`, `max-age=-1`,
/// `max-age=`), the directive counts as absent. When a directive appears more
/// than once, the first valid occurrence wins. The qualified forms
/// `no-cache="Set-Cookie"` and `private="x"` count as the unqualified ones,
/// because the cache never stores a response with some fields removed. The
/// restrictive flags (`no-store`, `no-cache`, `private`, `must-revalidate`,
/// `proxy-revalidate`) are set whatever follows their name. `public` is set
/// only when it appears on its own: the only directive that widens storage has
/// to be written correctly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    /// Seconds, clamped to 2^31.
    pub max_age: Option<u64>,
    /// Seconds, clamped to 2^31.
    pub s_maxage: Option<u64>,
    /// RFC 5861 §3; seconds, clamped to 2^31.
    pub stale_while_revalidate: Option<u64>,
    /// RFC 5861 §4; seconds, clamped to 2^31.
    pub stale_if_error: Option<u64>,
}

/// Reads a response's Cache-Control lines. Never panics, whatever the bytes.
pub fn response_directives(headers: &HeaderMap) -> ResponseDirectives {
    let mut d = ResponseDirectives::default();
    for line in headers.get_all(header::CACHE_CONTROL) {
        for_each_directive(line.as_bytes(), |name, arg| {
            let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
            if is("no-store") {
                d.no_store = true;
            } else if is("no-cache") {
                d.no_cache = true;
            } else if is("private") {
                d.private = true;
            } else if is("must-revalidate") {
                d.must_revalidate = true;
            } else if is("proxy-revalidate") {
                d.proxy_revalidate = true;
            } else if is("public") {
                if matches!(arg, Arg::Bare) {
                    d.public = true;
                }
            } else if is("max-age") {
                first_delta(&mut d.max_age, &arg);
            } else if is("s-maxage") {
                first_delta(&mut d.s_maxage, &arg);
            } else if is("stale-while-revalidate") {
                first_delta(&mut d.stale_while_revalidate, &arg);
            } else if is("stale-if-error") {
                first_delta(&mut d.stale_if_error, &arg);
            }
        });
    }
    d
}

/// The Cache-Control directives of a request, parsed like the response's
/// directives (see [`ResponseDirectives`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// Also set by `Pragma: no-cache` when the request has no Cache-Control.
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    /// Seconds, clamped to 2^31.
    pub max_age: Option<u64>,
    /// Seconds, clamped to 2^31.
    pub min_fresh: Option<u64>,
    /// `max-stale` without a value = Some(u64::MAX).
    pub max_stale: Option<u64>,
}

/// Reads a request's Cache-Control lines, or, when it has none, `Pragma:
/// no-cache` (RFC 9111 §5.4). Never panics, whatever the bytes.
pub fn request_directives(headers: &HeaderMap) -> RequestDirectives {
    let mut d = RequestDirectives::default();
    if !headers.contains_key(header::CACHE_CONTROL) {
        for line in headers.get_all(header::PRAGMA) {
            for_each_directive(line.as_bytes(), |name, _| {
                if name.eq_ignore_ascii_case(b"no-cache") {
                    d.no_cache = true;
                }
            });
        }
        return d;
    }
    for line in headers.get_all(header::CACHE_CONTROL) {
        for_each_directive(line.as_bytes(), |name, arg| {
            let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
            if is("no-cache") {
                d.no_cache = true;
            } else if is("no-store") {
                d.no_store = true;
            } else if is("only-if-cached") {
                d.only_if_cached = true;
            } else if is("max-age") {
                first_delta(&mut d.max_age, &arg);
            } else if is("min-fresh") {
                first_delta(&mut d.min_fresh, &arg);
            } else if is("max-stale") && d.max_stale.is_none() {
                d.max_stale = match &arg {
                    Arg::Bare => Some(u64::MAX),
                    other => delta_arg(other),
                };
            }
        });
    }
    d
}

/// How long a response stays fresh in a shared cache (RFC 9111 §4.2.1).
///
/// The order is `s-maxage`, then `max-age`, then `Expires` minus `Date`, then
/// `default_ttl`. An Expires that does not parse, or that is not later than
/// Date, gives `Some(ZERO)`: the response is already stale, and the default
/// does not apply. Without a valid Date, Expires is measured from the current
/// clock, which stands in for the moment the response arrived (RFC 9110
/// §6.6.1). That clock read is the one impure step in this module; callers that
/// add a Date to dateless responses on receipt never hit it. `None` means the
/// response gives no lifetime and there is no default.
pub fn freshness_lifetime(
    d: &ResponseDirectives,
    headers: &HeaderMap,
    default_ttl: Option<Duration>,
) -> Option<Duration> {
    if let Some(secs) = d.s_maxage.or(d.max_age) {
        return Some(Duration::from_secs(secs));
    }
    if let Some(expires) = headers.get(header::EXPIRES) {
        let Some(expires) = http_date(expires) else {
            return Some(Duration::ZERO);
        };
        let date = headers
            .get(header::DATE)
            .and_then(http_date)
            .unwrap_or_else(SystemTime::now);
        let lifetime = expires.duration_since(date).unwrap_or(Duration::ZERO);
        return Some(lifetime.min(Duration::from_secs(MAX_DELTA)));
    }
    default_ttl
}

/// The age a response already has when it arrives: RFC 9111 §4.2.3's
/// `corrected_initial_age`, i.e. max(apparent_age, age_value +
/// response_delay). `apparent_age` is `response_time` minus Date (never
/// negative), `age_value` is the Age header, and `response_delay` is
/// `response_time` minus `request_time` (never negative). A missing or invalid
/// Date or Age counts as 0; an Age sent as a list counts by its first member
/// (RFC 9111 §5.1).
pub fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent_age = headers
        .get(header::DATE)
        .and_then(http_date)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let age_value = headers
        .get(header::AGE)
        .and_then(|age| age.as_bytes().split(|&b| b == b',').next())
        .and_then(|first| delta_seconds(first.trim_ascii()))
        .map_or(Duration::ZERO, Duration::from_secs);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    apparent_age.max(age_value.saturating_add(response_delay))
}

/// Why a shared cache must not store this response; `None` means it may.
///
/// The reasons are "method", "status", "no-store", "private", "vary-star",
/// "set-cookie", "authorization" and "no-lifetime", checked in that order
/// (except that a status the cache could keep only with an explicit lifetime
/// is judged after the authorization rule). `no-cache` does not prevent
/// storage: such a response is revalidated on every use.
pub fn not_storable(
    method: &Method,
    status: StatusCode,
    request: &HeaderMap,
    response: &HeaderMap,
    d: &ResponseDirectives,
    has_default_ttl: bool,
) -> Option<&'static str> {
    if *method != Method::GET && *method != Method::HEAD {
        return Some("method");
    }
    let code = status.as_u16();
    // Interim responses and 304s are never stored. Ranges are not supported.
    // 5xx (and codes past 599) are never kept, whatever they say.
    if code < 200 || code == 206 || code == 304 || code >= 500 {
        return Some("status");
    }
    if d.no_store || request_directives(request).no_store {
        return Some("no-store");
    }
    if d.private {
        return Some("private");
    }
    if vary_names(response).iter().any(|name| name == "*") {
        return Some("vary-star");
    }
    if response.contains_key(header::SET_COOKIE) {
        return Some("set-cookie");
    }
    // RFC 9111 §3.5: a shared cache may reuse an answer to an authorized request
    // only if the origin says so.
    if request.contains_key(header::AUTHORIZATION)
        && !(d.public || d.s_maxage.is_some() || d.must_revalidate)
    {
        return Some("authorization");
    }
    let explicit =
        d.max_age.is_some() || d.s_maxage.is_some() || response.contains_key(header::EXPIRES);
    if !(heuristically_cacheable(code) || explicit || d.public) {
        return Some("status");
    }
    let has_validator =
        response.contains_key(header::ETAG) || response.contains_key(header::LAST_MODIFIED);
    if !explicit && !has_default_ttl && !has_validator {
        return Some("no-lifetime");
    }
    None
}

/// The statuses a cache may store without an explicit lifetime (RFC 9110
/// §15.1), minus 206 (no range support) and 501 (no 5xx is stored).
fn heuristically_cacheable(code: u16) -> bool {
    matches!(
        code,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414
    )
}

/// The field names listed by every Vary line, lowercased, in order, each
/// once. `*` is kept as "*". A member that is not a valid field name is
/// dropped: no request can carry a field with that name, so varying on it
/// would change nothing.
pub fn vary_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in headers.get_all(header::VARY) {
        for member in line.as_bytes().split(|&b| b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() || !member.iter().all(|&b| is_tchar(b)) {
                continue;
            }
            let name: String = member
                .iter()
                .map(|&b| char::from(b.to_ascii_lowercase()))
                .collect();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Whether a client's conditional GET/HEAD can be answered 304 from a stored
/// response with these validators (RFC 9110 §13.1.2, §13.1.3, §13.2.2).
///
/// If-None-Match takes precedence. It uses the weak comparison, and `*`
/// matches any stored ETag (but not a missing one). If-Modified-Since is used
/// only when there is no If-None-Match. It holds when the stored Last-Modified
/// is not later than its date, and it is ignored when it is not a single valid
/// HTTP date. An unparsable stored validator never matches.
pub fn not_modified(
    request: &HeaderMap,
    etag: Option<&HeaderValue>,
    last_modified: Option<&HeaderValue>,
) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(stored) = etag.and_then(|v| opaque_tag(v.as_bytes())) else {
            return false;
        };
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .any(|line| if_none_match_hits(line.as_bytes(), stored));
    }
    let mut lines = request.get_all(header::IF_MODIFIED_SINCE).iter();
    let (Some(since), None) = (lines.next(), lines.next()) else {
        return false;
    };
    match (http_date(since), last_modified.and_then(http_date)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// Fields a 304 never changes on the stored response: framing and body
/// metadata the 304 does not describe (RFC 9111 §3.2), hop-by-hop fields, and
/// the proxy-specific fields a cache does not store (RFC 9111 §3.1).
const NOT_UPDATED: [&str; 12] = [
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

/// The stored response's headers updated by an origin 304 (RFC 9111 §3.2).
/// Every field of the 304 replaces all the stored lines of that name, except
/// the fields in [`NOT_UPDATED`] and any field the 304's Connection header
/// names. Fields the 304 does not carry stay as stored.
pub fn merge_304(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let connection_listed: Vec<String> = not_modified
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(|token| String::from_utf8_lossy(token.trim_ascii()).to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    let mut merged = stored.clone();
    for name in not_modified.keys() {
        let name_str = name.as_str();
        if NOT_UPDATED.contains(&name_str) || connection_listed.iter().any(|c| c == name_str) {
            continue;
        }
        merged.remove(name);
        for value in not_modified.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

// ---- parsing helpers ------------------------------------------------------

/// One directive's argument, as written.
enum Arg<'a> {
    /// The name alone: `no-store`.
    Bare,
    /// `name=token` or `name="quoted string"` (unescaped).
    Value(Cow<'a, [u8]>),
    /// Unusable: `name=`, an unterminated quote, or junk after the directive.
    Malformed,
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn skip_ows(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|&b| is_ows(b)) {
        i += 1;
    }
    i
}

/// Reads the quoted string that opens at `start`, where `s[start]` is `"`,
/// undoing backslash escapes. Returns its content and the index just past the
/// closing quote, or None if the string never closes.
fn read_quoted(s: &[u8], start: usize) -> Option<(Cow<'_, [u8]>, usize)> {
    let mut i = start + 1;
    let mut segment = i;
    let mut unescaped: Option<Vec<u8>> = None;
    while let Some(&b) = s.get(i) {
        match b {
            b'"' => {
                let tail = s.get(segment..i).unwrap_or_default();
                let content = match unescaped {
                    Some(mut owned) => {
                        owned.extend_from_slice(tail);
                        Cow::Owned(owned)
                    }
                    None => Cow::Borrowed(tail),
                };
                return Some((content, i + 1));
            }
            b'\\' => {
                let escaped = *s.get(i + 1)?;
                let owned = unescaped.get_or_insert_with(Vec::new);
                owned.extend_from_slice(s.get(segment..i).unwrap_or_default());
                owned.push(escaped);
                i += 2;
                segment = i;
            }
            _ => i += 1,
        }
    }
    None
}

/// The index just past the next comma that is not inside a quoted string, or
/// the end of the line.
fn skip_past_comma(s: &[u8], mut i: usize) -> usize {
    while let Some(&b) = s.get(i) {
        match b {
            b',' => return i + 1,
            b'"' => match read_quoted(s, i) {
                Some((_, next)) => i = next,
                None => return s.len(),
            },
            _ => i += 1,
        }
    }
    i
}

/// Calls `f` for each `name[=argument]` element of a comma-separated
/// directive list (Cache-Control, Pragma). Empty elements are skipped, and so
/// is whitespace around commas and around `=`. A comma inside a quoted
/// argument does not end the element.
fn for_each_directive<'a>(line: &'a [u8], mut f: impl FnMut(&'a [u8], Arg<'a>)) {
    let mut i = 0;
    while let Some(&b) = line.get(i) {
        if b == b',' || is_ows(b) {
            i += 1;
            continue;
        }
        let name_start = i;
        while line
            .get(i)
            .is_some_and(|&b| b != b',' && b != b'=' && !is_ows(b))
        {
            i += 1;
        }
        let name = line.get(name_start..i).unwrap_or_default();
        i = skip_ows(line, i);
        let mut arg = Arg::Bare;
        if line.get(i) == Some(&b'=') {
            i = skip_ows(line, i + 1);
            if line.get(i) == Some(&b'"') {
                match read_quoted(line, i) {
                    Some((value, next)) => {
                        arg = Arg::Value(value);
                        i = next;
                    }
                    None => {
                        arg = Arg::Malformed;
                        i = line.len();
                    }
                }
            } else {
                let value_start = i;
                while line.get(i).is_some_and(|&b| b != b',' && !is_ows(b)) {
                    i += 1;
                }
                arg = match line.get(value_start..i) {
                    Some(value) if !value.is_empty() => Arg::Value(Cow::Borrowed(value)),
                    _ => Arg::Malformed,
                };
            }
            i = skip_ows(line, i);
        }
        // Anything left before the next comma is junk (`max-age=5 6`).
        if line.get(i).is_some_and(|&b| b != b',') {
            arg = Arg::Malformed;
            i = skip_past_comma(line, i);
        }
        if !name.is_empty() {
            f(name, arg);
        }
    }
}

/// RFC 9111 §1.2.2 delta-seconds: one or more digits and nothing else.
/// Values too large are clamped to [`MAX_DELTA`].
fn delta_seconds(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = s.iter().fold(0u64, |acc, &b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    });
    Some(value.min(MAX_DELTA))
}

fn delta_arg(arg: &Arg<'_>) -> Option<u64> {
    match arg {
        Arg::Value(value) => delta_seconds(value),
        Arg::Bare | Arg::Malformed => None,
    }
}

/// Fills `slot` from `arg` unless an earlier occurrence already filled it.
fn first_delta(slot: &mut Option<u64>, arg: &Arg<'_>) {
    if slot.is_none() {
        *slot = delta_arg(arg);
    }
}

fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    let text = value.to_str().ok()?;
    httpdate::parse_http_date(text.trim()).ok()
}

/// The opaque-tag of one stored entity-tag (`"x"` or `W/"x"`), without its
/// quotes, or None if the value is not a single entity-tag.
fn opaque_tag(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let value = value.strip_prefix(b"W/").unwrap_or(value);
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'"') {
        return None;
    }
    Some(inner)
}

/// Whether one If-None-Match line matches the stored opaque-tag under the weak
/// comparison. At the first malformed member the rest of the line is ignored,
/// so junk can never produce a match.
fn if_none_match_hits(line: &[u8], stored: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = line.get(i) {
        if b == b',' || is_ows(b) {
            i += 1;
            continue;
        }
        let hit = if b == b'*' {
            i += 1;
            true
        } else {
            if line.get(i..i + 2) == Some(b"W/".as_slice()) {
                i += 2;
            }
            if line.get(i) != Some(&b'"') {
                return false;
            }
            let open = i + 1;
            let Some(len) = line
                .get(open..)
                .and_then(|rest| rest.iter().position(|&b| b == b'"'))
            else {
                return false;
            };
            i = open + len + 1;
            line.get(open..open + len) == Some(stored)
        };
        i = skip_ows(line, i);
        if line.get(i).is_some_and(|&b| b != b',') {
            return false;
        }
        if hit {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;
    use std::time::UNIX_EPOCH;

    /// Headers from (name, value) pairs, in order, repeated names appended.
    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    /// A response's directives from Cache-Control lines.
    fn cc(lines: &[&str]) -> ResponseDirectives {
        let pairs: Vec<_> = lines.iter().map(|l| ("cache-control", *l)).collect();
        response_directives(&hm(&pairs))
    }

    /// A request's directives from Cache-Control lines.
    fn rq(lines: &[&str]) -> RequestDirectives {
        let pairs: Vec<_> = lines.iter().map(|l| ("cache-control", *l)).collect();
        request_directives(&hm(&pairs))
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    const T: u64 = 1_700_000_000;

    // ---- response directives ----

    #[test]
    fn no_cache_control_is_default() {
        assert_eq!(
            response_directives(&HeaderMap::new()),
            ResponseDirectives::default()
        );
        assert_eq!(
            response_directives(&hm(&[("pragma", "no-cache")])),
            ResponseDirectives::default()
        );
    }

    type Flag = fn(&ResponseDirectives) -> bool;

    #[test]
    fn each_flag_alone() {
        let cases: [(&str, Flag); 6] = [
            ("no-store", |d| d.no_store),
            ("no-cache", |d| d.no_cache),
            ("private", |d| d.private),
            ("public", |d| d.public),
            ("must-revalidate", |d| d.must_revalidate),
            ("proxy-revalidate", |d| d.proxy_revalidate),
        ];
        for (i, (directive, get)) in cases.iter().enumerate() {
            let d = cc(&[directive]);
            assert!(get(&d), "{directive} not set");
            for (j, (other, get_other)) in cases.iter().enumerate() {
                if i != j {
                    assert!(!get_other(&d), "{directive} also set {other}");
                }
            }
            assert_eq!(d.max_age, None);
        }
    }

    #[test]
    fn delta_directives() {
        let d = cc(&["max-age=60, s-maxage=120, stale-while-revalidate=30, stale-if-error=600"]);
        assert_eq!(
            d,
            ResponseDirectives {
                max_age: Some(60),
                s_maxage: Some(120),
                stale_while_revalidate: Some(30),
                stale_if_error: Some(600),
                ..Default::default()
            }
        );
        assert_eq!(cc(&["max-age=0"]).max_age, Some(0));
        assert_eq!(cc(&["max-age=007"]).max_age, Some(7));
    }

    #[test]
    fn names_are_case_insensitive() {
        let d = cc(&["MAX-AGE=5, No-Store, S-MaxAge=7, PUBLIC, Stale-If-Error=9"]);
        assert_eq!(d.max_age, Some(5));
        assert_eq!(d.s_maxage, Some(7));
        assert_eq!(d.stale_if_error, Some(9));
        assert!(d.no_store && d.public);
    }

    #[test]
    fn whitespace_around_elements_and_equals() {
        let d = cc(&["  max-age=5 ,\tpublic\t,  no-cache  "]);
        assert_eq!(d.max_age, Some(5));
        assert!(d.public && d.no_cache);
        assert_eq!(cc(&["max-age = 5"]).max_age, Some(5));
        assert_eq!(cc(&["s-maxage=\t8"]).s_maxage, Some(8));
    }

    #[test]
    fn quoted_values() {
        assert_eq!(cc(&["max-age=\"60\""]).max_age, Some(60));
        assert_eq!(cc(&["s-maxage=\"1\\2\""]).s_maxage, Some(12));
        assert_eq!(cc(&["max-age=\"\""]).max_age, None);
        assert_eq!(cc(&["max-age=\" 5\""]).max_age, None);
        // An unterminated quote swallows the rest of the line.
        let d = cc(&["max-age=\"5, public"]);
        assert_eq!(d.max_age, None);
        assert!(!d.public);
    }

    #[test]
    fn repeated_lines_and_directives() {
        let d = cc(&["public", "max-age=5", "no-cache"]);
        assert!(d.public && d.no_cache);
        assert_eq!(d.max_age, Some(5));
        // The first valid occurrence wins, within a line and across lines.
        assert_eq!(cc(&["max-age=5, max-age=10"]).max_age, Some(5));
        assert_eq!(cc(&["max-age=5", "max-age=10"]).max_age, Some(5));
        assert_eq!(cc(&["max-age=abc, max-age=9"]).max_age, Some(9));
        assert_eq!(cc(&["max-age=", "max-age=4"]).max_age, Some(4));
    }

    #[test]
    fn malformed_values_are_absent() {
        for line in [
            "max-age=",
            "max-age",
            "max-age=abc",
            "max-age=-1",
            "max-age=+1",
            "max-age=1.5",
            "max-age=5 6",
            "max-age=5s",
            "max-age==5",
            "max-age=0x10",
        ] {
            assert_eq!(cc(&[line]).max_age, None, "{line}");
        }
        // A malformed element does not spoil its neighbours.
        let d = cc(&["max-age=5 6, s-maxage=3, public"]);
        assert_eq!((d.max_age, d.s_maxage, d.public), (None, Some(3), true));
    }

    #[test]
    fn huge_values_clamp_to_2_pow_31() {
        assert_eq!(cc(&["max-age=99999999999999999999"]).max_age, Some(1 << 31));
        assert_eq!(cc(&["max-age=4294967296"]).max_age, Some(1 << 31));
        assert_eq!(cc(&["max-age=2147483648"]).max_age, Some(1 << 31));
        assert_eq!(cc(&["max-age=2147483647"]).max_age, Some(2_147_483_647));
        assert_eq!(
            cc(&["stale-while-revalidate=184467440737095516160"]).stale_while_revalidate,
            Some(1 << 31)
        );
    }

    #[test]
    fn empty_elements() {
        assert_eq!(cc(&[",,,"]), ResponseDirectives::default());
        assert_eq!(cc(&[""]), ResponseDirectives::default());
        assert_eq!(cc(&[" , ,"]), ResponseDirectives::default());
        assert_eq!(cc(&[",, ,max-age=3,,"]).max_age, Some(3));
    }

    #[test]
    fn qualified_no_cache_and_private_count_as_unqualified() {
        let d = cc(&["no-cache=\"Set-Cookie, X-Foo\", max-age=5"]);
        assert!(d.no_cache);
        assert_eq!(d.max_age, Some(5));
        assert!(cc(&["no-cache=Set-Cookie"]).no_cache);
        assert!(cc(&["private=\"x\""]).private);
        assert!(cc(&["PRIVATE=x"]).private);
    }

    #[test]
    fn commas_inside_quotes_do_not_split() {
        let d = cc(&["no-cache=\"a, max-age=5, public\""]);
        assert!(d.no_cache);
        assert_eq!(d.max_age, None);
        assert!(!d.public);
        // Junk containing a quoted comma is skipped as one element.
        let d = cc(&["foo bar\"x, public\", max-age=2"]);
        assert!(!d.public);
        assert_eq!(d.max_age, Some(2));
    }

    #[test]
    fn restrictive_flags_hold_with_junk_but_public_needs_to_be_bare() {
        assert!(cc(&["no-store=1"]).no_store);
        assert!(cc(&["no-store junk"]).no_store);
        assert!(cc(&["must-revalidate=\"\""]).must_revalidate);
        assert!(!cc(&["public=\"yes\""]).public);
        assert!(!cc(&["public junk"]).public);
        assert!(cc(&["public=1, public"]).public);
    }

    #[test]
    fn unknown_directives_are_ignored() {
        let d = cc(&["immutable, no-transform, community=\"UCI\", x-max-age=5, max-age=1"]);
        assert_eq!(
            d,
            ResponseDirectives {
                max_age: Some(1),
                ..Default::default()
            }
        );
    }

    #[test]
    fn any_bytes_never_panic() {
        let tricky: [&[u8]; 16] = [
            b"\"",
            b"=",
            b"==,=",
            b"max-age=\"",
            b"max-age=\"\\",
            b"max-age=\"\\\"",
            b"\\\"\"\"",
            b"no-cache=\"\\",
            b"W/",
            b"W/\"",
            b"*",
            b"\xff\xfe\x80",
            b"max-age=\xff",
            b"\t\t,\t",
            b", = , \" , \\ ,",
            b"max-stale=\"",
        ];
        let mut lines: Vec<Vec<u8>> = tricky.iter().map(|t| t.to_vec()).collect();
        // Pseudo-random lines over a small alphabet that is rich in delimiters.
        let alphabet = b"ax-ge=\"\\, \t0123456789*W/\xff;";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let len = (seed >> 58) as usize;
            let line = (0..len)
                .map(|k| {
                    let r = seed.rotate_left(7 * k as u32 + 3) >> 40;
                    alphabet[r as usize % alphabet.len()]
                })
                .collect();
            lines.push(line);
        }
        for line in &lines {
            let Ok(value) = HeaderValue::from_bytes(line) else {
                continue;
            };
            let mut map = HeaderMap::new();
            for name in [
                header::CACHE_CONTROL,
                header::PRAGMA,
                header::VARY,
                header::IF_NONE_MATCH,
                header::IF_MODIFIED_SINCE,
                header::EXPIRES,
                header::DATE,
                header::AGE,
                header::CONNECTION,
            ] {
                map.append(name, value.clone());
            }
            let d = response_directives(&map);
            let _ = request_directives(&map);
            let _ = freshness_lifetime(&d, &map, None);
            let _ = initial_age(&map, at(T), at(T + 1));
            let _ = not_storable(&Method::GET, StatusCode::OK, &map, &map, &d, false);
            let _ = vary_names(&map);
            let _ = not_modified(&map, Some(&value), Some(&value));
            let _ = merge_304(&map, &map);
        }
        // Garbage with no quote or comma in it leaves the next element intact.
        let map = hm(&[("cache-control", "%junk= =, max-age=7")]);
        assert_eq!(response_directives(&map).max_age, Some(7));
        let value = HeaderValue::from_bytes(b"\xff\x80 =, max-age=7").unwrap();
        let mut map = HeaderMap::new();
        map.insert(header::CACHE_CONTROL, value);
        assert_eq!(response_directives(&map).max_age, Some(7));
    }

    // ---- request directives ----

    #[test]
    fn request_directive_forms() {
        let d = rq(&[
            "no-cache, NO-STORE",
            "only-if-cached, max-age=5, min-fresh=\"10\", max-stale=20",
        ]);
        assert_eq!(
            d,
            RequestDirectives {
                no_cache: true,
                no_store: true,
                only_if_cached: true,
                max_age: Some(5),
                min_fresh: Some(10),
                max_stale: Some(20),
            }
        );
        assert_eq!(rq(&["max-age=-1"]).max_age, None);
        assert_eq!(
            rq(&["min-fresh=99999999999999999999"]).min_fresh,
            Some(1 << 31)
        );
        assert_eq!(rq(&[",,,"]), RequestDirectives::default());
        // Response-only directives mean nothing in a request.
        assert_eq!(
            rq(&["s-maxage=5, private, public"]),
            RequestDirectives::default()
        );
    }

    #[test]
    fn max_stale_forms() {
        assert_eq!(rq(&["max-stale"]).max_stale, Some(u64::MAX));
        assert_eq!(rq(&["Max-Stale , max-age=1"]).max_stale, Some(u64::MAX));
        assert_eq!(rq(&["max-stale=abc"]).max_stale, None);
        assert_eq!(rq(&["max-stale="]).max_stale, None);
        assert_eq!(rq(&["max-stale=abc, max-stale=3"]).max_stale, Some(3));
        assert_eq!(rq(&["max-stale, max-stale=3"]).max_stale, Some(u64::MAX));
        assert_eq!(rq(&["max-stale=3", "max-stale"]).max_stale, Some(3));
        assert_eq!(
            rq(&["max-stale=99999999999999999999"]).max_stale,
            Some(1 << 31)
        );
    }

    #[test]
    fn pragma_no_cache_only_without_cache_control() {
        assert!(request_directives(&hm(&[("pragma", "no-cache")])).no_cache);
        assert!(request_directives(&hm(&[("pragma", "foo, No-Cache")])).no_cache);
        assert!(request_directives(&hm(&[("pragma", "x=1"), ("pragma", "no-cache")])).no_cache);
        assert!(!request_directives(&hm(&[("pragma", "x=no-cache")])).no_cache);
        assert!(!request_directives(&hm(&[("pragma", "\"no-cache\"")])).no_cache);
        let both = hm(&[("cache-control", "max-age=5"), ("pragma", "no-cache")]);
        let d = request_directives(&both);
        assert!(!d.no_cache);
        assert_eq!(d.max_age, Some(5));
        // A present but empty Cache-Control still overrides Pragma.
        let empty = hm(&[("cache-control", ""), ("pragma", "no-cache")]);
        assert!(!request_directives(&empty).no_cache);
    }

    // ---- freshness ----

    #[test]
    fn freshness_precedence() {
        let day = Some(Duration::from_secs(86_400));
        let headers = hm(&[("date", &date(T)), ("expires", &date(T + 100))]);
        let all = cc(&["max-age=60, s-maxage=30"]);
        assert_eq!(
            freshness_lifetime(&all, &headers, day),
            Some(Duration::from_secs(30))
        );
        let max_age = cc(&["max-age=60"]);
        assert_eq!(
            freshness_lifetime(&max_age, &headers, day),
            Some(Duration::from_secs(60))
        );
        let none = cc(&[]);
        assert_eq!(
            freshness_lifetime(&none, &headers, day),
            Some(Duration::from_secs(100))
        );
        assert_eq!(freshness_lifetime(&none, &HeaderMap::new(), day), day);
        assert_eq!(freshness_lifetime(&none, &HeaderMap::new(), None), None);
        // s-maxage wins even when it is shorter and listed later.
        let later = cc(&["max-age=600", "s-maxage=1"]);
        assert_eq!(
            freshness_lifetime(&later, &headers, None),
            Some(Duration::from_secs(1))
        );
        // max-age=0 is a lifetime, not an absence of one.
        let zero = cc(&["max-age=0"]);
        assert_eq!(
            freshness_lifetime(&zero, &headers, day),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn expires_past_or_invalid_is_zero() {
        let d = cc(&[]);
        let day = Some(Duration::from_secs(86_400));
        for expires in ["0", "-1", "garbage", "", "Thu, 32 Jan 2024 00:00:00 GMT"] {
            let headers = hm(&[("date", &date(T)), ("expires", expires)]);
            assert_eq!(
                freshness_lifetime(&d, &headers, day),
                Some(Duration::ZERO),
                "{expires:?}"
            );
        }
        let past = hm(&[("date", &date(T)), ("expires", &date(T - 10))]);
        assert_eq!(freshness_lifetime(&d, &past, day), Some(Duration::ZERO));
        let same = hm(&[("date", &date(T)), ("expires", &date(T))]);
        assert_eq!(freshness_lifetime(&d, &same, day), Some(Duration::ZERO));
    }

    #[test]
    fn expires_in_other_date_formats() {
        let d = cc(&[]);
        // 784111777 = Sun, 06 Nov 1994 08:49:37 GMT.
        let base = date(784_111_777 - 60);
        for expires in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            let headers = hm(&[("date", &base), ("expires", expires)]);
            assert_eq!(
                freshness_lifetime(&d, &headers, None),
                Some(Duration::from_secs(60)),
                "{expires}"
            );
        }
    }

    #[test]
    fn expires_without_valid_date_counts_from_now() {
        let d = cc(&[]);
        let now = SystemTime::now();
        let in_an_hour = httpdate::fmt_http_date(now + Duration::from_secs(3600));
        for headers in [
            hm(&[("expires", &in_an_hour)]),
            hm(&[("expires", &in_an_hour), ("date", "yesterday")]),
        ] {
            let lifetime = freshness_lifetime(&d, &headers, None).unwrap();
            assert!(
                (Duration::from_secs(3590)..=Duration::from_secs(3600)).contains(&lifetime),
                "{lifetime:?}"
            );
        }
    }

    #[test]
    fn expires_far_future_clamps() {
        let headers = hm(&[
            ("date", &date(0)),
            ("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ]);
        assert_eq!(
            freshness_lifetime(&cc(&[]), &headers, None),
            Some(Duration::from_secs(1 << 31))
        );
    }

    // ---- age ----

    #[test]
    fn age_without_headers_is_the_response_delay() {
        assert_eq!(
            initial_age(&HeaderMap::new(), at(T), at(T + 3)),
            Duration::from_secs(3)
        );
        assert_eq!(initial_age(&HeaderMap::new(), at(T), at(T)), Duration::ZERO);
        // A clock that went backwards gives no negative delay.
        assert_eq!(
            initial_age(&HeaderMap::new(), at(T + 5), at(T)),
            Duration::ZERO
        );
    }

    #[test]
    fn age_from_date() {
        let headers = hm(&[("date", &date(T - 30))]);
        assert_eq!(
            initial_age(&headers, at(T - 2), at(T)),
            Duration::from_secs(30)
        );
        // The delay wins when the Date is more recent than the request.
        let headers = hm(&[("date", &date(T - 1))]);
        assert_eq!(
            initial_age(&headers, at(T - 4), at(T)),
            Duration::from_secs(4)
        );
        // A Date in the future is no age at all.
        let headers = hm(&[("date", &date(T + 500))]);
        assert_eq!(initial_age(&headers, at(T), at(T)), Duration::ZERO);
        let headers = hm(&[("date", "not a date")]);
        assert_eq!(
            initial_age(&headers, at(T), at(T + 1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn age_header() {
        let headers = hm(&[("age", "100"), ("date", &date(T - 30))]);
        assert_eq!(
            initial_age(&headers, at(T - 2), at(T)),
            Duration::from_secs(102)
        );
        let headers = hm(&[("age", " 7 ")]);
        assert_eq!(initial_age(&headers, at(T), at(T)), Duration::from_secs(7));
        // Apparent age beats a smaller Age.
        let headers = hm(&[("age", "5"), ("date", &date(T - 60))]);
        assert_eq!(initial_age(&headers, at(T), at(T)), Duration::from_secs(60));
        // A list counts by its first member (RFC 9111 §5.1; it was taken as
        // invalid, i.e. 0, before the cache_control fuzz target).
        for (list, first) in [("5, 6", 5), ("9,abc", 9), (" 3 , 4 ", 3)] {
            let headers = hm(&[("age", list)]);
            assert_eq!(
                initial_age(&headers, at(T), at(T)),
                Duration::from_secs(first),
                "{list:?}"
            );
        }
        for bad in ["-5", "abc", "1.5", "abc, 5", ", 5", ""] {
            let headers = hm(&[("age", bad)]);
            assert_eq!(
                initial_age(&headers, at(T), at(T + 1)),
                Duration::from_secs(1),
                "{bad:?}"
            );
        }
        let headers = hm(&[("age", "99999999999999999999999")]);
        assert_eq!(
            initial_age(&headers, at(T), at(T)),
            Duration::from_secs(1 << 31)
        );
    }

    // ---- storability ----

    fn storable_with(
        method: Method,
        status: u16,
        request: &[(&str, &str)],
        response: &[(&str, &str)],
        default_ttl: bool,
    ) -> Option<&'static str> {
        let response = hm(response);
        let d = response_directives(&response);
        not_storable(
            &method,
            StatusCode::from_u16(status).unwrap(),
            &hm(request),
            &response,
            &d,
            default_ttl,
        )
    }

    fn store(response: &[(&str, &str)]) -> Option<&'static str> {
        storable_with(Method::GET, 200, &[], response, false)
    }

    #[test]
    fn plain_cacheable_response_is_storable() {
        assert_eq!(store(&[("cache-control", "max-age=60")]), None);
        assert_eq!(
            storable_with(
                Method::HEAD,
                200,
                &[],
                &[("cache-control", "max-age=60")],
                false
            ),
            None
        );
    }

    #[test]
    fn only_get_and_head() {
        for method in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
        ] {
            assert_eq!(
                storable_with(
                    method.clone(),
                    200,
                    &[],
                    &[("cache-control", "max-age=60, public")],
                    true
                ),
                Some("method"),
                "{method}"
            );
        }
        // The method is judged first.
        assert_eq!(
            storable_with(
                Method::POST,
                200,
                &[],
                &[("cache-control", "no-store")],
                true
            ),
            Some("method")
        );
    }

    #[test]
    fn statuses_never_stored() {
        let explicit = [("cache-control", "max-age=60, public")];
        for status in [100, 101, 206, 304, 500, 501, 502, 503, 504, 599, 600, 999] {
            assert_eq!(
                storable_with(Method::GET, status, &[], &explicit, true),
                Some("status"),
                "{status}"
            );
        }
    }

    #[test]
    fn heuristic_statuses_need_no_explicit_lifetime() {
        for status in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414] {
            assert_eq!(
                storable_with(Method::GET, status, &[], &[], true),
                None,
                "{status}"
            );
        }
    }

    #[test]
    fn other_statuses_need_explicit_lifetime_or_public() {
        for status in [201, 202, 302, 303, 307, 400, 403, 429] {
            assert_eq!(
                storable_with(Method::GET, status, &[], &[], true),
                Some("status"),
                "{status}"
            );
            let no_cache = [("cache-control", "no-cache"), ("etag", "\"a\"")];
            assert_eq!(
                storable_with(Method::GET, status, &[], &no_cache, true),
                Some("status"),
                "{status}"
            );
            for response in [
                [("cache-control", "max-age=60")],
                [("cache-control", "s-maxage=60")],
                [("expires", "Sun, 06 Nov 1994 08:49:37 GMT")],
                [("expires", "0")],
            ] {
                assert_eq!(
                    storable_with(Method::GET, status, &[], &response, false),
                    None,
                    "{status} {response:?}"
                );
            }
            // `public` lifts the status rule; a lifetime or a validator is
            // still needed, else the copy could never be used.
            let public = [("cache-control", "public")];
            assert_eq!(
                storable_with(Method::GET, status, &[], &public, false),
                Some("no-lifetime"),
                "{status}"
            );
            let public_etag = [("cache-control", "public"), ("etag", "\"a\"")];
            assert_eq!(
                storable_with(Method::GET, status, &[], &public_etag, false),
                None,
                "{status}"
            );
        }
    }

    #[test]
    fn no_store_and_private() {
        assert_eq!(
            store(&[("cache-control", "max-age=60, no-store")]),
            Some("no-store")
        );
        assert_eq!(
            store(&[("cache-control", "public"), ("cache-control", "NO-STORE")]),
            Some("no-store")
        );
        assert_eq!(
            store(&[("cache-control", "max-age=60, private")]),
            Some("private")
        );
        assert_eq!(
            store(&[("cache-control", "max-age=60, private=\"x-user\"")]),
            Some("private")
        );
        assert_eq!(
            store(&[("cache-control", "public, private")]),
            Some("private")
        );
    }

    #[test]
    fn request_no_store() {
        let response = [("cache-control", "max-age=60, public")];
        assert_eq!(
            storable_with(
                Method::GET,
                200,
                &[("cache-control", "no-store")],
                &response,
                false
            ),
            Some("no-store")
        );
        // A request's no-cache (or Pragma) still lets the answer be stored.
        assert_eq!(
            storable_with(
                Method::GET,
                200,
                &[("cache-control", "no-cache")],
                &response,
                false
            ),
            None
        );
        assert_eq!(
            storable_with(
                Method::GET,
                200,
                &[("pragma", "no-cache")],
                &response,
                false
            ),
            None
        );
    }

    #[test]
    fn vary_star() {
        let cc60 = ("cache-control", "max-age=60");
        assert_eq!(store(&[cc60, ("vary", "*")]), Some("vary-star"));
        assert_eq!(
            store(&[cc60, ("vary", "accept-encoding, *")]),
            Some("vary-star")
        );
        assert_eq!(
            store(&[cc60, ("vary", "accept"), ("vary", " * ")]),
            Some("vary-star")
        );
        assert_eq!(
            store(&[cc60, ("vary", "accept-encoding, accept-language")]),
            None
        );
        assert_eq!(store(&[cc60, ("vary", "x-*")]), None);
    }

    #[test]
    fn set_cookie() {
        assert_eq!(
            store(&[
                ("cache-control", "max-age=60, public"),
                ("set-cookie", "a=b")
            ]),
            Some("set-cookie")
        );
        assert_eq!(
            store(&[("cache-control", "max-age=60"), ("set-cookie", "")]),
            Some("set-cookie")
        );
    }

    #[test]
    fn authorization_needs_permission() {
        let auth = [("authorization", "Bearer x")];
        let get =
            |response: &[(&str, &str)]| storable_with(Method::GET, 200, &auth, response, true);
        assert_eq!(get(&[]), Some("authorization"));
        assert_eq!(
            get(&[("cache-control", "max-age=60")]),
            Some("authorization")
        );
        assert_eq!(
            get(&[("cache-control", "max-age=60, proxy-revalidate")]),
            Some("authorization")
        );
        assert_eq!(get(&[("cache-control", "public=1")]), Some("authorization"));
        assert_eq!(get(&[("cache-control", "public")]), None);
        assert_eq!(get(&[("cache-control", "s-maxage=60")]), None);
        assert_eq!(get(&[("cache-control", "must-revalidate")]), None);
        // Without Authorization the same response is fine.
        assert_eq!(
            storable_with(
                Method::GET,
                200,
                &[],
                &[("cache-control", "max-age=60")],
                false
            ),
            None
        );
    }

    #[test]
    fn no_cache_is_storable() {
        assert_eq!(
            store(&[("cache-control", "no-cache"), ("etag", "\"v1\"")]),
            None
        );
        assert_eq!(store(&[("cache-control", "no-cache, max-age=60")]), None);
        assert_eq!(
            store(&[
                ("cache-control", "no-cache=\"set-cookie\""),
                ("last-modified", &date(T))
            ]),
            None
        );
    }

    #[test]
    fn no_lifetime_without_validator() {
        assert_eq!(store(&[]), Some("no-lifetime"));
        assert_eq!(store(&[("cache-control", "no-cache")]), Some("no-lifetime"));
        assert_eq!(store(&[("etag", "\"v1\"")]), None);
        assert_eq!(store(&[("last-modified", &date(T))]), None);
        assert_eq!(storable_with(Method::GET, 200, &[], &[], true), None);
        assert_eq!(store(&[("cache-control", "max-age=0")]), None);
        assert_eq!(store(&[("cache-control", "s-maxage=0")]), None);
        assert_eq!(store(&[("expires", &date(T))]), None);
        // public alone is no lifetime.
        assert_eq!(store(&[("cache-control", "public")]), Some("no-lifetime"));
        // A malformed max-age is none.
        assert_eq!(
            store(&[("cache-control", "max-age=abc")]),
            Some("no-lifetime")
        );
    }

    // ---- vary ----

    #[test]
    fn vary_names_parsing() {
        assert!(vary_names(&HeaderMap::new()).is_empty());
        assert_eq!(
            vary_names(&hm(&[("vary", "accept-encoding, *")])),
            ["accept-encoding", "*"]
        );
        assert_eq!(
            vary_names(&hm(&[
                ("vary", " Accept-Encoding ,,Accept-Language"),
                ("vary", "accept-encoding, X-Tenant\t"),
                ("vary", ""),
            ])),
            ["accept-encoding", "accept-language", "x-tenant"]
        );
        assert_eq!(vary_names(&hm(&[("vary", "*"), ("vary", "*")])), ["*"]);
        // Members that cannot be field names are dropped.
        assert_eq!(
            vary_names(&hm(&[("vary", "\"cookie\", accept encoding, a;b, origin")])),
            ["origin"]
        );
    }

    // ---- conditional requests ----

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn inm(value: &str, stored: Option<&str>) -> bool {
        let stored = stored.map(hv);
        not_modified(&hm(&[("if-none-match", value)]), stored.as_ref(), None)
    }

    #[test]
    fn if_none_match_strong_and_weak() {
        assert!(inm("\"abc\"", Some("\"abc\"")));
        assert!(!inm("\"abc\"", Some("\"abd\"")));
        assert!(!inm("\"abc\"", Some("\"ABC\"")));
        assert!(inm("W/\"abc\"", Some("\"abc\"")));
        assert!(inm("\"abc\"", Some("W/\"abc\"")));
        assert!(inm("W/\"abc\"", Some(" W/\"abc\" ")));
        assert!(inm("\"\"", Some("\"\"")));
        assert!(!inm("\"\"", Some("\"x\"")));
    }

    #[test]
    fn if_none_match_lists() {
        assert!(inm("\"x\", \"y\", W/\"abc\"", Some("\"abc\"")));
        assert!(inm("\"x\",\"abc\"", Some("\"abc\"")));
        assert!(!inm("\"x\", \"y\"", Some("\"abc\"")));
        assert!(!inm(",,", Some("\"abc\"")));
        let two_lines = hm(&[("if-none-match", "\"x\""), ("if-none-match", "\"abc\"")]);
        assert!(not_modified(&two_lines, Some(&hv("\"abc\"")), None));
        // A comma is a valid etag character: "a,b" is one tag.
        assert!(inm("\"a,b\"", Some("\"a,b\"")));
        assert!(!inm("\"a,b\"", Some("\"a\"")));
        assert!(!inm("\"a,b\"", Some("\"b\"")));
    }

    #[test]
    fn if_none_match_star() {
        assert!(inm("*", Some("\"anything\"")));
        assert!(inm(" * ", Some("W/\"anything\"")));
        assert!(!inm("*", None));
        assert!(!inm("*x", Some("\"x\"")));
    }

    #[test]
    fn if_none_match_malformed() {
        // Unparsable stored validators never match.
        assert!(!inm("\"abc\"", Some("abc")));
        assert!(!inm("abc", Some("abc")));
        assert!(!inm("*", Some("abc")));
        assert!(!inm("\"abc\"", None));
        // Junk ends the line: nothing after it can match.
        assert!(!inm("\"zzz\" junk, \"abc\"", Some("\"abc\"")));
        assert!(!inm("abc, \"abc\"", Some("\"abc\"")));
        assert!(!inm("\"abc", Some("\"abc\"")));
        // What matched before the junk still counts.
        assert!(inm("\"abc\", junk", Some("\"abc\"")));
    }

    #[test]
    fn if_none_match_takes_precedence_over_if_modified_since() {
        let lm = hv(&date(T));
        let etag = hv("\"v2\"");
        let mismatch = hm(&[
            ("if-none-match", "\"v1\""),
            ("if-modified-since", &date(T + 10)),
        ]);
        assert!(!not_modified(&mismatch, Some(&etag), Some(&lm)));
        let matching = hm(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", &date(T - 10)),
        ]);
        assert!(not_modified(&matching, Some(&etag), Some(&lm)));
        // If-None-Match without a stored ETag: still no fallback to the date.
        let no_etag = hm(&[
            ("if-none-match", "\"v1\""),
            ("if-modified-since", &date(T + 10)),
        ]);
        assert!(!not_modified(&no_etag, None, Some(&lm)));
    }

    #[test]
    fn if_modified_since() {
        let lm = hv(&date(T));
        let ims = |since: &str| not_modified(&hm(&[("if-modified-since", since)]), None, Some(&lm));
        assert!(ims(&date(T)));
        assert!(ims(&date(T + 1)));
        assert!(!ims(&date(T - 1)));
        assert!(!ims("garbage"));
        assert!(!ims(""));
        // Obsolete date formats still parse.
        let lm_1994 = hv("Sun, 06 Nov 1994 08:49:37 GMT");
        let old = hm(&[("if-modified-since", "Sunday, 06-Nov-94 08:49:37 GMT")]);
        assert!(not_modified(&old, None, Some(&lm_1994)));
        // No stored Last-Modified, or an invalid one: no 304.
        assert!(!not_modified(
            &hm(&[("if-modified-since", &date(T))]),
            None,
            None
        ));
        assert!(!not_modified(
            &hm(&[("if-modified-since", &date(T))]),
            None,
            Some(&hv("yesterday"))
        ));
        // Two If-Modified-Since lines: ignored.
        let two = hm(&[
            ("if-modified-since", &date(T + 5)),
            ("if-modified-since", &date(T + 5)),
        ]);
        assert!(!not_modified(&two, None, Some(&lm)));
        // No conditional header at all.
        assert!(!not_modified(
            &HeaderMap::new(),
            Some(&hv("\"v\"")),
            Some(&lm)
        ));
    }

    // ---- 304 merge ----

    #[test]
    fn merge_304_keeps_body_headers() {
        let stored = hm(&[
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("content-range", "bytes 0-9/10"),
            ("content-type", "text/plain"),
            ("etag", "\"v1\""),
        ]);
        let fresh = hm(&[
            ("content-length", "0"),
            ("content-encoding", "br"),
            ("content-range", "bytes */10"),
            ("transfer-encoding", "chunked"),
            ("etag", "\"v1\""),
        ]);
        let merged = merge_304(&stored, &fresh);
        assert_eq!(merged["content-length"], "10");
        assert_eq!(merged["content-encoding"], "gzip");
        assert_eq!(merged["content-range"], "bytes 0-9/10");
        assert_eq!(merged["content-type"], "text/plain");
        assert!(!merged.contains_key("transfer-encoding"));
        assert_eq!(merged.len(), stored.len());
    }

    #[test]
    fn merge_304_replaces_and_adds() {
        let stored = hm(&[
            ("cache-control", "max-age=60"),
            ("date", &date(T)),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("x-stored-only", "kept"),
            ("etag", "W/\"v1\""),
        ]);
        let fresh = hm(&[
            ("Cache-Control", "max-age=300"),
            ("date", &date(T + 100)),
            ("x-multi", "c"),
            ("link", "</a>; rel=preload"),
            ("link", "</b>; rel=preload"),
            ("etag", "\"v1\""),
        ]);
        let merged = merge_304(&stored, &fresh);
        assert_eq!(merged["cache-control"], "max-age=300");
        assert_eq!(merged["date"], date(T + 100).as_str());
        assert_eq!(merged.get_all("x-multi").iter().collect::<Vec<_>>(), ["c"]);
        assert_eq!(
            merged.get_all("link").iter().collect::<Vec<_>>(),
            ["</a>; rel=preload", "</b>; rel=preload"]
        );
        assert_eq!(merged["x-stored-only"], "kept");
        assert_eq!(merged["etag"], "\"v1\"");
        // The inputs are untouched.
        assert_eq!(stored["cache-control"], "max-age=60");
    }

    #[test]
    fn merge_304_skips_hop_by_hop() {
        let stored = hm(&[("x-secret", "stored"), ("content-type", "text/html")]);
        let fresh = hm(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("upgrade", "h2c"),
            ("proxy-authenticate", "Basic"),
            ("x-secret", "from-304"),
            ("x-new", "added"),
        ]);
        let merged = merge_304(&stored, &fresh);
        assert_eq!(
            merged,
            hm(&[
                ("x-secret", "stored"),
                ("content-type", "text/html"),
                ("x-new", "added")
            ])
        );
    }
}
