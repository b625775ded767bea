//! The request head on its way upstream (docs/guide/routing.md, "What the
//! gateway changes on the way" and "Streaming and limits"), edited as
//! `proxy::upstream_request` does it: `strip_hop_by_hop`, then
//! `set_forwarded`. Headers, their values, the peer, the trusted proxies and
//! the Host are drawn from vocabularies full of hop-by-hop names, `Connection`
//! lists in any case and spacing, `TE` lists and `X-Forwarded-For` chains, or
//! are arbitrary bytes. What must hold:
//!
//! - never a panic;
//! - no `Connection`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`,
//!   `Upgrade`, `Proxy-Authorization` or `Proxy-Authenticate` goes upstream;
//!   `TE` only as `trailers`, and only when the client listed `trailers`;
//! - no field named in any `Connection` line goes upstream (each member of the
//!   list, in any case, with or without spaces, whatever else the line
//!   holds), except `X-Forwarded-For` and `X-Request-Id`, which the gateway
//!   answers for itself;
//! - every other field goes upstream unchanged, values in order;
//! - `X-Forwarded-For` is one line: the client's members (every line, empty
//!   members dropped) and then the peer; `X-Forwarded-Proto` is `http` or
//!   `https`; `X-Forwarded-Host` is the request's host, or absent without one;
//! - the client IP is the peer unless the peer is a trusted proxy; then the
//!   right-most `X-Forwarded-For` address that is not trusted, walking left
//!   only over trusted ones and stopping at a member that is not an address
//!   (empty members skipped; an IPv4-mapped address is its IPv4 address);
//! - the size checked against `max_header_bytes` is the request line as
//!   sent (method, target, version) plus every `name: value` line with its
//!   CRLF.
//!
//! cargo +nightly fuzz run request_head -- -max_total_time=60

#![no_main]

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tollgate::headers::{client_ip, ip_value, set_forwarded, strip_hop_by_hop};
use tollgate::proxy::header_bytes;

/// Always removed, whatever `Connection` says.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];
/// Named in `Connection`, still sent: the gateway's own.
const KEPT: &[&str] = &["x-forwarded-for", "x-request-id"];
/// What `set_forwarded` writes.
const FORWARDING: &[&str] = &["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

const NAMES: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "trailer",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
    "host",
    "x-secret",
    "x-a",
    "close",
    "expect",
    "content-length",
    "cookie",
    "traceparent",
];
const TOKENS: &[&[u8]] = &[
    b"keep-alive",
    b"close",
    b"x-secret",
    b"X-Secret",
    b"x-a",
    b"te",
    b"TE",
    b"upgrade",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-request-id",
    b"forwarded",
    b"trailer",
    b"cookie",
    b"host",
    b"x a",
    b"x-secret;q=1",
    b"\xff",
    b"",
];
const SEPARATORS: &[&[u8]] = &[b",", b", ", b" ,\t", b",,", b" , , "];
const TE: &[&[u8]] = &[
    b"trailers",
    b"TRAILERS",
    b" trailers ",
    b"gzip, trailers",
    b"trailers, deflate;q=0.5",
    b"trailers;q=1",
    b"gzip",
    b"",
    b"trailers, \xff",
    b"\ttrailers",
    b",trailers,",
];
const ADDRESSES: &[&[u8]] = &[
    b"1.2.3.4",
    b"10.1.1.1",
    b"10.0.0.9",
    b"192.0.2.7",
    b"::ffff:10.1.1.1",
    b"::ffff:192.0.2.7",
    b"2001:db8:1::7",
    b"2001:db8::9",
    b"[2001:db8::1]",
    b"1.2.3.4:80",
    b"unknown",
    b"",
    b" ",
    b"\xff",
    b"\xc2\xa01.2.3.4",
    b"01.2.3.4",
    b"fe80::1%eth0",
];
const VALUES: &[&[u8]] = &[
    b"1",
    b"",
    b"keep-alive",
    b"x-secret",
    b"trailers",
    b"a, b",
    b"\xff\xfe",
    b"websocket",
    b"100-continue",
    b"for=192.0.2.60;proto=http",
];
const PEERS: &[&str] = &[
    "10.0.0.9",
    "192.0.2.1",
    "::ffff:10.0.0.9",
    "::ffff:192.0.2.1",
    "2001:db8:1::2",
    "::1",
];
const TRUSTED: &[&[&str]] = &[
    &[],
    &["10.0.0.0/8"],
    &["10.0.0.0/8", "2001:db8:1::/48"],
    &["0.0.0.0/0", "::/0"],
];
const HOSTS: &[&str] = &["api.test", "API.test:8443", "[::1]:80", "a.b.test."];
const METHODS: &[&str] = &["GET", "POST", "OPTIONS", "CONNECT", "PURGE"];
const TARGETS: &[&str] = &[
    "/",
    "/a/b?c=d",
    "*",
    "http://a.test/x?y",
    "https://a.test:8443/",
    "http://a.test",
    "a.test:443",
    "/%2F?x=%20",
    "/?",
];

/// Bytes a header value may hold (obs-text included), others dropped.
fn value_of(bytes: &[u8]) -> HeaderValue {
    let ok: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        .collect();
    HeaderValue::from_bytes(&ok).expect("filtered to valid bytes")
}

fn random_case(u: &mut Unstructured<'_>, bytes: &[u8]) -> Result<Vec<u8>> {
    let flips: u64 = u.arbitrary()?;
    Ok(bytes
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if flips >> (i % 64) & 1 == 1 {
                b.to_ascii_uppercase()
            } else {
                b
            }
        })
        .collect())
}

fn list(u: &mut Unstructured<'_>, members: &[&[u8]]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..u.int_in_range(1..=4)? {
        if i > 0 {
            out.extend_from_slice(u.choose(SEPARATORS)?);
        }
        out.extend_from_slice(u.choose(members)?);
    }
    Ok(out)
}

fn field(u: &mut Unstructured<'_>) -> Result<Option<(HeaderName, HeaderValue)>> {
    let name = if u.ratio(7, 8)? {
        HeaderName::from_static(u.choose(NAMES)?)
    } else {
        let len = u.int_in_range(1..=12)?;
        match HeaderName::from_bytes(u.bytes(len)?) {
            Ok(n) => n,
            Err(_) => return Ok(None),
        }
    };
    let bytes = if u.ratio(1, 8)? {
        let len = u.int_in_range(0..=32)?;
        u.bytes(len)?.to_vec()
    } else if name == header::CONNECTION {
        let l = list(u, TOKENS)?;
        random_case(u, &l)?
    } else if name == header::TE {
        u.choose(TE)?.to_vec()
    } else if name.as_str() == "x-forwarded-for" {
        list(u, ADDRESSES)?
    } else {
        u.choose(VALUES)?.to_vec()
    };
    Ok(Some((name, value_of(&bytes))))
}

fn ows(b: &u8) -> bool {
    *b == b' ' || *b == b'\t'
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && ows(first)
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && ows(last)
    {
        s = rest;
    }
    s
}

/// The members of a comma-separated list over all of `name`'s lines, in
/// order, trimmed; empty members kept (callers drop them as they should).
fn members<'h>(h: &'h HeaderMap, name: &str) -> Vec<&'h [u8]> {
    h.get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trim)
        .collect()
}

fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|n| n.contains(&ip.to_canonical()))
}

/// The documented client address.
fn reference_client(peer: IpAddr, h: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    for m in members(h, "x-forwarded-for").into_iter().rev() {
        if m.is_empty() {
            continue;
        }
        let Some(ip) = std::str::from_utf8(m)
            .ok()
            .and_then(|s| s.parse::<IpAddr>().ok())
        else {
            break;
        };
        client = ip;
        if !is_trusted(trusted, ip) {
            break;
        }
    }
    client
}

fn values<'h>(h: &'h HeaderMap, name: &HeaderName) -> Vec<&'h [u8]> {
    h.get_all(name).iter().map(HeaderValue::as_bytes).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(input) = (|| -> Result<_> {
        let mut h = HeaderMap::new();
        for _ in 0..u.int_in_range(0..=12)? {
            if let Some((name, value)) = field(&mut u)? {
                h.append(name, value);
            }
        }
        let peer: IpAddr = match u.int_in_range(0..=3)? {
            0 => IpAddr::from(u.arbitrary::<[u8; 4]>()?),
            1 => IpAddr::from(u.arbitrary::<[u8; 16]>()?),
            _ => u.choose(PEERS)?.parse().expect("a peer"),
        };
        let trusted: Vec<IpNet> = u
            .choose(TRUSTED)?
            .iter()
            .map(|n| n.parse().expect("a net"))
            .collect();
        let host = match u.int_in_range(0..=3)? {
            0 => None,
            _ => Some(HeaderValue::from_static(u.choose(HOSTS)?)),
        };
        let tls: bool = u.arbitrary()?;
        let method = *u.choose(METHODS)?;
        let target = *u.choose(TARGETS)?;
        Ok((h, peer, trusted, host, tls, method, target))
    })() else {
        return;
    };
    let (client, peer, trusted, host, tls, method, target) = input;

    // The client IP is worked out from the head as the client sent it.
    assert_eq!(
        client_ip(peer, &client, &trusted),
        reference_client(peer, &client, &trusted),
        "peer {peer}, trusted {trusted:?}, X-Forwarded-For {:?}",
        values(&client, &HeaderName::from_static("x-forwarded-for"))
    );

    // The size `max_header_bytes` is checked against, for the head as sent:
    // `METHOD SP target SP HTTP/1.1 CRLF`, then `name: value CRLF` per line.
    if let Ok(mut req) = http::Request::builder().method(method).uri(target).body(())
        && req.uri().to_string() == target
    {
        *req.headers_mut() = client.clone();
        let fields: usize = client
            .iter()
            .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
            .sum();
        let want = method.len() + 1 + target.len() + 1 + "HTTP/1.1".len() + 2 + fields;
        assert_eq!(header_bytes(&req), want as u64, "{method} {target}");
    }

    let listed: Vec<HeaderName> = members(&client, "connection")
        .into_iter()
        .filter_map(|m| HeaderName::from_bytes(m).ok())
        .collect();
    let trailers = members(&client, "te")
        .iter()
        .any(|m| m.eq_ignore_ascii_case(b"trailers"));
    let show = || format!("{client:?}");

    let mut stripped = client.clone();
    strip_hop_by_hop(&mut stripped);
    for name in HOP_BY_HOP {
        assert!(!stripped.contains_key(*name), "{name} kept from {}", show());
    }
    let te = values(&stripped, &header::TE);
    assert!(
        te.is_empty() || (te == [b"trailers"] && trailers),
        "TE {te:?} from {}",
        show()
    );
    if trailers && !listed.contains(&header::TE) {
        assert_eq!(te, [b"trailers"], "TE: trailers dropped from {}", show());
    }
    for name in &listed {
        if !KEPT.contains(&name.as_str()) {
            assert!(
                !stripped.contains_key(name),
                "{name}, named in Connection, kept from {}",
                show()
            );
        }
    }
    for name in client.keys() {
        if HOP_BY_HOP.contains(&name.as_str())
            || *name == header::TE
            || (listed.contains(name) && !KEPT.contains(&name.as_str()))
        {
            continue;
        }
        assert_eq!(
            values(&stripped, name),
            values(&client, name),
            "{name} changed from {}",
            show()
        );
    }

    let proto = if tls { "https" } else { "http" };
    let peer_value = ip_value(peer);
    let mut upstream = stripped.clone();
    set_forwarded(&mut upstream, &peer_value, proto, host.as_ref());
    let xff = HeaderName::from_static("x-forwarded-for");
    let sent = values(&upstream, &xff);
    assert_eq!(sent.len(), 1, "X-Forwarded-For lines {sent:?}");
    let got: Vec<&[u8]> = members(&upstream, "x-forwarded-for")
        .into_iter()
        .filter(|m| !m.is_empty())
        .collect();
    let mut want: Vec<&[u8]> = members(&stripped, "x-forwarded-for")
        .into_iter()
        .filter(|m| !m.is_empty())
        .collect();
    let peer_text = peer.to_string();
    want.push(peer_text.as_bytes());
    assert_eq!(got, want, "X-Forwarded-For from {}", show());
    assert_eq!(
        values(&upstream, &HeaderName::from_static("x-forwarded-proto")),
        [proto.as_bytes()]
    );
    let xfh = values(&upstream, &HeaderName::from_static("x-forwarded-host"));
    match &host {
        Some(h) => assert_eq!(xfh, [h.as_bytes()]),
        None => assert!(xfh.is_empty(), "X-Forwarded-Host {xfh:?} without a host"),
    }
    for name in stripped.keys() {
        if FORWARDING.contains(&name.as_str()) {
            continue;
        }
        assert_eq!(values(&upstream, name), values(&stripped, name), "{name}");
    }
});
