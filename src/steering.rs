//! Traffic steering, compiled once per config version: a route's weighted
//! split across upstreams, its mirror (the policy; the sending is in
//! `proxy::mirror`) and its redirect.
//!
//! A split with a sticky key uses weighted rendezvous hashing over its sides,
//! seeded by each side's upstream name: the same key lands on the same side,
//! shares follow the weights, and raising one side's weight only moves keys to
//! that side (never between the others, never back).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::config::values::{StickyKey, parse_sticky};
use crate::headers::cookie_value;
use crate::metrics::MirrorMetrics;
use crate::upstream::balancer::weighted_score;

/// A route's `upstream: {split: […], sticky}`.
pub struct Split {
    sides: Box<[Side]>,
    /// Running sums of the weights, for the random draw.
    cumulative: Box<[u64]>,
    sticky: Sticky,
}

pub struct Side {
    /// Index into `snapshot.upstreams`.
    pub upstream: usize,
    pub name: Arc<str>,
    pub weight: u32,
    seed: u64,
}

/// What keeps a client on one side.
pub enum Sticky {
    /// Every request is a new weighted draw.
    None,
    /// The value of this cookie; the gateway sets one when it is missing.
    Cookie(String),
    /// The value of this header; a request without it is a random draw.
    Header(HeaderName),
}

impl Sticky {
    /// `cookie:<name>`, `header:<name>` or `none`.
    pub fn parse(s: &str) -> Result<Sticky, String> {
        Ok(match parse_sticky(s)? {
            StickyKey::None => Sticky::None,
            StickyKey::Cookie(name) => Sticky::Cookie(name.to_owned()),
            StickyKey::Header(name) => {
                Sticky::Header(HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?)
            }
        })
    }
}

impl std::fmt::Display for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sticky::None => f.write_str("none"),
            Sticky::Cookie(n) => write!(f, "cookie:{n}"),
            Sticky::Header(n) => write!(f, "header:{n}"),
        }
    }
}

/// The side a request takes, and the cookie to set when the gateway made up
/// the sticky key.
pub struct Choice {
    pub side: usize,
    pub set_cookie: Option<HeaderValue>,
}

impl Split {
    /// `sides`: (upstream index, name, weight); validation made sure the
    /// weights add up to more than zero.
    pub fn new(sides: Vec<(usize, Arc<str>, u32)>, sticky: Sticky) -> Split {
        let sides: Box<[Side]> = sides
            .into_iter()
            .map(|(upstream, name, weight)| Side {
                upstream,
                seed: xxh3_64(name.as_bytes()),
                name,
                weight,
            })
            .collect();
        let cumulative = sides
            .iter()
            .scan(0u64, |sum, s| {
                *sum += u64::from(s.weight);
                Some(*sum)
            })
            .collect();
        Split {
            sides,
            cumulative,
            sticky,
        }
    }

    pub fn sides(&self) -> &[Side] {
        &self.sides
    }

    pub fn sticky(&self) -> &Sticky {
        &self.sticky
    }

    /// The side for a request with these headers.
    pub fn pick(&self, headers: &HeaderMap) -> Choice {
        if let Some(side) = self.decided(headers) {
            return Choice {
                side,
                set_cookie: None,
            };
        }
        match &self.sticky {
            Sticky::Cookie(name) => {
                let value = format!("{:016x}", fastrand::u64(..));
                let side = self.by_key(value.as_bytes());
                let cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
                Choice {
                    side,
                    set_cookie: HeaderValue::try_from(cookie).ok(),
                }
            }
            _ => Choice {
                side: self.random(),
                set_cookie: None,
            },
        }
    }

    /// The side the request's sticky key decides, or `None` when it has none
    /// (the request is then a weighted draw).
    pub fn decided(&self, headers: &HeaderMap) -> Option<usize> {
        let key = match &self.sticky {
            Sticky::None => return None,
            Sticky::Cookie(name) => cookie_value(headers, name)?,
            Sticky::Header(name) => {
                Some(headers.get(name)?.as_bytes()).filter(|v| !v.is_empty())?
            }
        };
        Some(self.by_key(key))
    }

    /// Weighted rendezvous: the side with the highest `w / -ln(u)` for this
    /// key wins; a side of weight 0 never does.
    pub fn by_key(&self, key: &[u8]) -> usize {
        let key = xxh3_64(key).to_le_bytes();
        self.sides
            .iter()
            .enumerate()
            .filter(|(_, s)| s.weight > 0)
            .map(|(i, s)| (i, weighted_score(xxh3_64_with_seed(&key, s.seed), s.weight)))
            .max_by(|(i, a), (j, b)| a.total_cmp(b).then(j.cmp(i)))
            .map_or(0, |(i, _)| i)
    }

    fn random(&self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0).max(1);
        let r = fastrand::u64(..total);
        self.cumulative.partition_point(|&c| c <= r)
    }
}

/// A route's `mirror:`.
pub struct MirrorPolicy {
    /// Index into `snapshot.upstreams`.
    pub upstream: usize,
    /// Of 100.
    pub percent: f64,
    pub max_body: u64,
    pub max_in_flight: usize,
    /// Copies on their way now. Per config version: after a reload the new
    /// version counts afresh while the old one's copies finish.
    in_flight: Arc<AtomicUsize>,
    pub metrics: MirrorMetrics,
}

/// A mirrored copy's place among `max_in_flight`; released on drop.
pub struct MirrorSlot(Arc<AtomicUsize>);

impl Drop for MirrorSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl MirrorPolicy {
    pub fn new(
        upstream: usize,
        percent: f64,
        max_body: u64,
        max_in_flight: usize,
        metrics: MirrorMetrics,
    ) -> MirrorPolicy {
        MirrorPolicy {
            upstream,
            percent,
            max_body,
            max_in_flight,
            in_flight: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }

    /// Whether this request is one of the `percent` to copy.
    pub fn sampled(&self) -> bool {
        self.percent >= 100.0 || fastrand::f64() * 100.0 < self.percent
    }

    /// A slot for one more copy, or `None` (counted) when `max_in_flight` are out.
    pub fn enter(&self) -> Option<MirrorSlot> {
        let prev = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let slot = MirrorSlot(self.in_flight.clone());
        if prev >= self.max_in_flight {
            self.metrics.overloaded.inc();
            return None;
        }
        Some(slot)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// The Host a mirrored copy carries: `-shadow` after the host name, before
/// any port (`api.test:8080` -> `api.test-shadow:8080`).
pub fn shadow_host(host: &[u8]) -> Option<HeaderValue> {
    let host = std::str::from_utf8(host).ok()?;
    let (name, port) = split_port(host);
    let value = match port {
        Some(port) => format!("{name}-shadow:{port}"),
        None => format!("{name}-shadow"),
    };
    HeaderValue::try_from(value).ok()
}

/// `host[:port]` split at the port; an IPv6 literal keeps its brackets.
fn split_port(host: &str) -> (&str, Option<&str>) {
    let after = host.rfind(']').map_or(0, |i| i + 1);
    match host[after..].rfind(':') {
        Some(i) if host[after + i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            (&host[..after + i], Some(&host[after + i + 1..]))
        }
        _ => (host, None),
    }
}

/// A route's `redirect:`.
pub struct Redirect {
    pub scheme: Option<&'static str>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub status: StatusCode,
    pub strip_query: bool,
}

/// What a redirect needs of the request.
pub struct Origin<'a> {
    /// `https` when the request came over TLS.
    pub scheme: &'static str,
    pub host: Option<&'a str>,
    /// The normalised path.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl Redirect {
    /// The `Location`, or `None` when the request has no host to keep and
    /// the scheme changes (an absolute URL is needed then).
    pub fn location(&self, from: &Origin<'_>) -> Option<HeaderValue> {
        let scheme_changes = self.scheme.is_some_and(|s| s != from.scheme);
        let path = self.path.as_deref().unwrap_or(from.path);
        let query = from.query.filter(|_| !self.strip_query);
        let host = match (&self.host, from.host) {
            (Some(h), _) => Some(h.as_str()),
            (None, Some(h)) if scheme_changes => Some(split_port(h).0),
            (None, h) => h,
        };
        let mut out = match host {
            Some(host) => format!("{}://{host}", self.scheme.unwrap_or(from.scheme)),
            None if scheme_changes => return None,
            None => String::new(),
        };
        out.push_str(path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        HeaderValue::try_from(out).ok()
    }
}

/// The answer of a `redirect_to_https` listener: 301 for GET and HEAD, 308
/// (method and body kept) for anything else.
pub fn to_https(method: &http::Method, from: &Origin<'_>) -> Option<(StatusCode, HeaderValue)> {
    let redirect = Redirect {
        scheme: Some("https"),
        host: None,
        path: None,
        status: if method == http::Method::GET || method == http::Method::HEAD {
            StatusCode::MOVED_PERMANENTLY
        } else {
            StatusCode::PERMANENT_REDIRECT
        },
        strip_query: false,
    };
    let from = Origin {
        scheme: "http",
        ..*from
    };
    Some((redirect.status, redirect.location(&from)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[u32], sticky: Sticky) -> Split {
        let sides = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (i, Arc::from(format!("orders-v{}", i + 1)), w))
            .collect();
        Split::new(sides, sticky)
    }

    #[test]
    fn random_share_follows_the_weights() {
        let s = split(&[95, 5], Sticky::None);
        let n = 200_000;
        let v2 = (0..n)
            .filter(|_| s.pick(&HeaderMap::new()).side == 1)
            .count();
        let share = v2 as f64 * 100.0 / n as f64;
        assert!((share - 5.0).abs() < 1.0, "v2 share {share}%");
        let zero = split(&[0, 10], Sticky::None);
        assert!((0..10_000).all(|_| zero.pick(&HeaderMap::new()).side == 1));
    }

    #[test]
    fn sticky_keys_keep_their_side_and_only_move_towards_a_raised_weight() {
        let header = || Sticky::Header(HeaderName::from_static("x-user-id"));
        let before = split(&[95, 5], header());
        let after = split(&[90, 10], header());
        const KEYS: usize = 100_000;
        let keys = || (0..KEYS).map(|i| format!("user-{i}"));
        let mut v2 = [0usize; 2];
        let mut moved_up = 0;
        for k in keys() {
            let (a, b) = (before.by_key(k.as_bytes()), after.by_key(k.as_bytes()));
            assert_eq!(a, before.by_key(k.as_bytes()), "one key, one side");
            assert!(!(a == 1 && b == 0), "{k} moved back from v2 to v1");
            moved_up += usize::from(a == 0 && b == 1);
            v2[0] += a;
            v2[1] += b;
        }
        let share = |n: usize| n as f64 * 100.0 / KEYS as f64;
        assert!((share(v2[0]) - 5.0).abs() < 1.0, "{}", share(v2[0]));
        assert!((share(v2[1]) - 10.0).abs() < 1.0, "{}", share(v2[1]));
        assert_eq!(moved_up, v2[1] - v2[0]);
        // Three sides: raising the third moves keys only to it.
        let (three, raised) = (
            split(&[50, 30, 20], header()),
            split(&[50, 30, 45], header()),
        );
        for k in keys() {
            let (a, b) = (three.by_key(k.as_bytes()), raised.by_key(k.as_bytes()));
            assert!(a == b || b == 2, "{k}: {a} -> {b}");
        }
    }

    #[test]
    fn a_missing_sticky_cookie_is_made_and_set() {
        let s = split(&[50, 50], Sticky::Cookie("tg_canary".into()));
        let choice = s.pick(&HeaderMap::new());
        let cookie = choice
            .set_cookie
            .expect("a cookie")
            .to_str()
            .unwrap()
            .to_owned();
        let value = cookie
            .strip_prefix("tg_canary=")
            .and_then(|c| c.strip_suffix("; Path=/; HttpOnly; SameSite=Lax"))
            .unwrap();
        assert_eq!(value.len(), 16);
        let mut h = HeaderMap::new();
        h.insert("cookie", format!("a=1; tg_canary={value}").parse().unwrap());
        for _ in 0..20 {
            let again = s.pick(&h);
            assert_eq!(again.side, choice.side);
            assert!(again.set_cookie.is_none());
        }
    }

    #[test]
    fn sticky_spellings() {
        assert!(matches!(Sticky::parse("none"), Ok(Sticky::None)));
        assert!(matches!(Sticky::parse("cookie:tg"), Ok(Sticky::Cookie(_))));
        assert!(matches!(
            Sticky::parse("header:x-user"),
            Ok(Sticky::Header(_))
        ));
        for bad in [
            "",
            "cookie:",
            "cookie:a;b",
            "header:",
            "header:a b",
            "ip",
            "query:x",
        ] {
            assert!(Sticky::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shadow_hosts() {
        let h = |s: &str| {
            shadow_host(s.as_bytes())
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(h("api.test"), "api.test-shadow");
        assert_eq!(h("api.test:8080"), "api.test-shadow:8080");
        assert_eq!(h("[::1]:8080"), "[::1]-shadow:8080");
    }

    #[test]
    fn redirect_locations() {
        let from = Origin {
            scheme: "http",
            host: Some("shop.test:8080"),
            path: "/old/x",
            query: Some("a=1"),
        };
        let r = |scheme: Option<&'static str>, host: Option<&str>, path: Option<&str>, strip| {
            let r = Redirect {
                scheme,
                host: host.map(str::to_owned),
                path: path.map(str::to_owned),
                status: StatusCode::MOVED_PERMANENTLY,
                strip_query: strip,
            };
            r.location(&from).map(|v| v.to_str().unwrap().to_owned())
        };
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            r(Some("https"), None, None, false),
            s("https://shop.test/old/x?a=1")
        );
        assert_eq!(
            r(Some("http"), None, None, true),
            s("http://shop.test:8080/old/x")
        );
        assert_eq!(
            r(None, Some("new.test"), Some("/new"), false),
            s("http://new.test/new?a=1")
        );
        assert_eq!(
            r(None, None, Some("/new"), true),
            s("http://shop.test:8080/new")
        );
        let hostless = Origin { host: None, ..from };
        let plain = Redirect {
            scheme: None,
            host: None,
            path: Some("/new".into()),
            status: StatusCode::FOUND,
            strip_query: false,
        };
        assert_eq!(plain.location(&hostless).unwrap(), "/new?a=1");
        let (status, loc) = to_https(&http::Method::POST, &from).unwrap();
        assert_eq!(
            (status.as_u16(), loc.to_str().unwrap()),
            (308, "https://shop.test/old/x?a=1")
        );
        assert_eq!(to_https(&http::Method::GET, &from).unwrap().0.as_u16(), 301);
        assert!(to_https(&http::Method::GET, &hostless).is_none());
    }
}
