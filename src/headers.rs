//! Header hygiene between the client and the upstream (docs/guide/routing.md,
//! "What the gateway changes on the way"): hop-by-hop headers removed in both directions, `X-Forwarded-*` set, and the client IP
//! derived from `X-Forwarded-For` only through trusted proxies.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes the headers that describe one connection rather than the message:
/// those named by `Connection`, then the fixed hop-by-hop set. `TE: trailers` is
/// the one TE value that may pass (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: most messages carry one or two of these
    // at most, and each removal is a hashed lookup.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & (1 << CONNECTION_BIT) != 0 {
        // Collect first: removing while the values are borrowed is not possible.
        // `keep-alive` (removed below anyway) and `close` are the usual tokens,
        // so the common case allocates nothing. Each line is read as bytes: a
        // member that is not text must not hide the names beside it.
        let mut listed: Vec<HeaderName> = Vec::new();
        let mut close = false;
        for value in headers.get_all(header::CONNECTION) {
            for token in value
                .as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
            {
                if token.eq_ignore_ascii_case(b"keep-alive") {
                    continue;
                }
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token) {
                    listed.push(name);
                }
            }
        }
        if close {
            headers.remove("close");
        }
        for name in listed {
            // A client must not be able to strip what the gateway adds.
            if name != X_FORWARDED_FOR && name != X_REQUEST_ID {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    if present & (1 << TE_BIT) != 0 {
        let te_trailers = headers.get_all(header::TE).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The fixed hop-by-hop headers, by bit position; Connection and TE follow
/// (they need more than a removal). `Trailer` is not one: it announces the
/// trailer fields end to end (RFC 9110 §6.6.2), and hyper sends HTTP/1.1
/// trailers only when it is present.
static HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];
const CONNECTION_BIT: u32 = 6;
const TE_BIT: u32 = 7;

fn hop_index(name: &HeaderName) -> Option<u32> {
    Some(match name.as_str() {
        "keep-alive" => 0,
        "proxy-connection" => 1,
        "transfer-encoding" => 2,
        "upgrade" => 3,
        "proxy-authenticate" => 4,
        "proxy-authorization" => 5,
        "connection" => CONNECTION_BIT,
        "te" => TE_BIT,
        _ => return None,
    })
}

/// Appends the peer to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (the Host the client asked for; without one, the
/// client's own `X-Forwarded-Host` is removed). `peer` is the peer's address
/// as a header value (made once per connection).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let xff = match headers.entry(&X_FORWARDED_FOR) {
        http::header::Entry::Vacant(e) => {
            e.insert(peer.clone());
            None
        }
        http::header::Entry::Occupied(e) => {
            let mut xff = Vec::with_capacity(64);
            for v in e.iter() {
                if !xff.is_empty() {
                    xff.extend_from_slice(b", ");
                }
                xff.extend_from_slice(v.as_bytes());
            }
            xff.extend_from_slice(b", ");
            xff.extend_from_slice(peer.as_bytes());
            Some(xff)
        }
    };
    if let Some(v) = xff.and_then(|x| HeaderValue::from_maybe_shared(bytes::Bytes::from(x)).ok()) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// An address as a header value (`X-Forwarded-For`'s entry for a peer).
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    // An address's text is always a valid header value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The client address (docs/reference/config.md, `server.trusted_proxies`): the
/// rightmost `X-Forwarded-For` entry that is not a trusted proxy, walking left only while each hop is trusted; the peer
/// itself when the peer is not trusted. Empty list members are skipped (RFC
/// 9110 §5.6.1), and an IPv4-mapped address (a dual-stack socket's IPv4
/// peer) is judged by its IPv4 address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Header lines are in order; the rightmost entry of the last line is the
    // nearest hop. Lines are read as bytes: a line that is not text is
    // garbled where it is, not skipped.
    let values: Vec<&[u8]> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    for hop in values
        .iter()
        .rev()
        .flat_map(|v| v.rsplit(|&b| b == b','))
        .map(|hop| hop.trim_ascii())
        .filter(|hop| !hop.is_empty())
    {
        match std::str::from_utf8(hop)
            .ok()
            .and_then(|h| h.parse::<IpAddr>().ok())
        {
            Some(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // A garbled entry cannot be believed; stop at the last good one.
            None => break,
        }
    }
    client
}

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// This hop's place in a W3C trace, as the hex digits of `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 32],
    /// This hop's span id: the parent id the upstream receives.
    pub span_id: [u8; 16],
    /// The client's span id, from a valid incoming `traceparent`.
    pub parent_id: Option<[u8; 16]>,
    pub flags: [u8; 2],
}

impl TraceContext {
    /// The context of this hop: a single valid `traceparent` gives the trace
    /// id, flags and parent; anything else starts a new trace with `root_flags`.
    /// The span id is always new.
    pub fn incoming(headers: &HeaderMap, root_flags: [u8; 2]) -> TraceContext {
        let parsed = match headers.get_all(&TRACEPARENT).iter().count() {
            1 => headers
                .get(&TRACEPARENT)
                .and_then(|v| parse_traceparent(v.as_bytes())),
            _ => None,
        };
        let (trace_id, parent_id, flags) = match parsed {
            Some((trace, parent, flags)) => (trace, Some(parent), flags),
            None => (hex_id::<32>(), None, root_flags),
        };
        TraceContext {
            trace_id,
            span_id: hex_id::<16>(),
            parent_id,
            flags,
        }
    }

    /// The `sampled` bit of the trace flags.
    pub fn sampled(&self) -> bool {
        matches!(
            self.flags[1],
            b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f'
        )
    }
}

/// W3C trace context (docs/guide/observability.md): the gateway is one hop of
/// the trace. A valid `traceparent` keeps its trace id and flags and gets a new parent id (this
/// hop's span id); `tracestate` passes unchanged. An absent or malformed
/// `traceparent` starts a new trace (random trace id, flags `00`: not sampled,
/// the gateway does not record spans) and any `tracestate` is dropped, as the
/// W3C spec requires for a tracestate without a valid traceparent. Returns the
/// trace id sent upstream.
pub fn propagate_trace(headers: &mut HeaderMap) -> [u8; 32] {
    let ctx = TraceContext::incoming(headers, *b"00");
    set_traceparent(headers, &ctx);
    ctx.trace_id
}

/// Sends `ctx` upstream: `traceparent` with this hop's span id as the parent;
/// `tracestate` is dropped when `ctx` starts a new trace.
pub fn set_traceparent(headers: &mut HeaderMap, ctx: &TraceContext) {
    if ctx.parent_id.is_none() {
        headers.remove(&TRACESTATE);
    }
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    out[3..35].copy_from_slice(&ctx.trace_id);
    out[35] = b'-';
    out[36..52].copy_from_slice(&ctx.span_id);
    out[52] = b'-';
    out[53..55].copy_from_slice(&ctx.flags);
    if let Ok(v) = HeaderValue::from_bytes(&out) {
        headers.insert(TRACEPARENT.clone(), v);
    }
}

/// `version-traceid-parentid-flags` -> (trace id, parent id, flags). Version `ff` and
/// all-zero ids are invalid; a future version may carry more fields after the
/// flags, which are ignored (W3C trace-context §3.2.4).
fn parse_traceparent(v: &[u8]) -> Option<([u8; 32], [u8; 16], [u8; 2])> {
    let lower_hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    if !lower_hex(version) || version == b"ff" || !lower_hex(trace) || !lower_hex(parent) {
        return None;
    }
    if !lower_hex(flags) || trace.iter().all(|&c| c == b'0') || parent.iter().all(|&c| c == b'0') {
        return None;
    }
    if (version == b"00" && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut t = [0u8; 32];
    t.copy_from_slice(trace);
    let mut p = [0u8; 16];
    p.copy_from_slice(parent);
    Some((t, p, [flags[0], flags[1]]))
}

/// N random lowercase hex digits, never all zero.
fn hex_id<const N: usize>() -> [u8; N] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; N];
    while out.iter().all(|&c| c == b'0') {
        for chunk in out.chunks_mut(16) {
            let mut n = fastrand::u64(..);
            for b in chunk {
                *b = HEX[(n & 0xf) as usize];
                n >>= 4;
            }
        }
    }
    out
}

/// The value of cookie `name` from the `Cookie` header(s) (`a=1; session=xyz`;
/// HTTP/2 clients may send one header per cookie). Surrounding double quotes
/// are dropped; an empty value counts as absent.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|header| header.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            if pair[..eq].trim_ascii() != name.as_bytes() {
                return None;
            }
            let value = pair[eq + 1..].trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            Some(value)
        })
        .filter(|v| !v.is_empty())
}

/// The fields of `h` with their values copied into one allocation of their
/// own: values parsed by hyper are slices of the connection's read buffer,
/// and an answer kept in memory (the response cache, the idempotency store)
/// must not keep that buffer alive: their memory bounds count what an entry holds.
pub fn owned(h: &HeaderMap) -> HeaderMap {
    let total: usize = h.values().map(HeaderValue::len).sum();
    let mut buf = bytes::BytesMut::with_capacity(total);
    for v in h.values() {
        buf.extend_from_slice(v.as_bytes());
    }
    let buf = buf.freeze();
    // A clone keeps the map's layout (no name is hashed again); only the
    // values are swapped for slices of the copy, in the same order.
    let mut out = h.clone();
    let mut at = 0;
    for v in out.values_mut() {
        let end = at + v.len();
        if let Ok(mut value) = HeaderValue::from_maybe_shared(buf.slice(at..end)) {
            value.set_sensitive(v.is_sensitive());
            *v = value;
        }
        at = end;
    }
    out
}

/// A new random request id: 32 hex digits.
pub fn fresh_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (i * 4)) & 0xf) as usize];
    }
    // 32 hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_headers_hold_their_own_bytes_not_the_read_buffer() {
        // As hyper parses them: values are slices of one large buffer.
        let buffer = bytes::Bytes::from(vec![b'a'; 64 * 1024]);
        let mut h = HeaderMap::new();
        let slice = |r: std::ops::Range<usize>| {
            HeaderValue::from_maybe_shared(buffer.slice(r)).expect("value")
        };
        h.insert("x-one", slice(0..3));
        h.append("x-many", slice(3..5));
        h.append("x-many", slice(5..9));
        let mut secret = slice(9..12);
        secret.set_sensitive(true);
        h.insert(header::AUTHORIZATION, secret);
        let out = owned(&h);
        assert_eq!(out, h);
        assert_eq!(out.get_all("x-many").iter().count(), 2);
        assert!(out[header::AUTHORIZATION].is_sensitive());
        let range = buffer.as_ptr_range();
        for v in out.values() {
            assert!(
                !range.contains(&v.as_bytes().as_ptr()),
                "still in the read buffer"
            );
        }
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut m = h(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip, trailers"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut m);
        assert!(m.get("x-secret").is_none());
        assert!(m.get("connection").is_none());
        assert!(m.get("keep-alive").is_none());
        assert!(m.get("upgrade").is_none());
        assert!(m.get("proxy-connection").is_none());
        assert_eq!(m.get("te").unwrap(), "trailers");
        assert_eq!(m.get("x-keep").unwrap(), "yes");
    }

    // The request_head fuzz target: a Connection or TE line holding a byte
    // that is not text was skipped whole, and `close` named no field.
    #[test]
    fn connection_and_te_are_read_as_bytes() {
        let mut m = HeaderMap::new();
        m.append(
            "connection",
            HeaderValue::from_bytes(b"x-secret, \xff").unwrap(),
        );
        m.append("connection", HeaderValue::from_static("CLOSE"));
        m.append("x-secret", HeaderValue::from_static("1"));
        m.append("close", HeaderValue::from_static("1"));
        m.append("te", HeaderValue::from_bytes(b"trailers, \xff").unwrap());
        strip_hop_by_hop(&mut m);
        assert!(m.get("x-secret").is_none());
        assert!(m.get("close").is_none());
        assert_eq!(m.get("te").unwrap(), "trailers");
    }

    #[test]
    fn te_without_trailers_is_removed() {
        let mut m = h(&[("te", "gzip")]);
        strip_hop_by_hop(&mut m);
        assert!(m.get("te").is_none());
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut m = h(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        set_forwarded(
            &mut m,
            &ip_value("10.0.0.9".parse().unwrap()),
            "http",
            Some(&HeaderValue::from_static("api.example.com")),
        );
        assert_eq!(
            m.get("x-forwarded-for").unwrap(),
            "1.1.1.1, 2.2.2.2, 10.0.0.9"
        );
        assert_eq!(m.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(m.get("x-forwarded-host").unwrap(), "api.example.com");
    }

    // The request_head fuzz target: a client's X-Forwarded-Host went upstream
    // when the request had no host of its own.
    #[test]
    fn forwarded_host_without_a_host_is_removed() {
        let mut m = h(&[("x-forwarded-host", "evil.test")]);
        set_forwarded(&mut m, &ip_value("10.0.0.9".parse().unwrap()), "http", None);
        assert!(m.get("x-forwarded-host").is_none());
        assert_eq!(m.get("x-forwarded-for").unwrap(), "10.0.0.9");
    }

    // The request_head fuzz target: an IPv4-mapped peer was never trusted, an
    // empty member stopped the walk, and a line that is not text was skipped
    // whole (so the entries left of it were believed).
    #[test]
    fn client_ip_mapped_peers_empty_members_and_bytes() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let m = h(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &m, &trusted),
            ip("1.2.3.4")
        );
        let m = h(&[("x-forwarded-for", "1.2.3.4, ::ffff:10.1.1.1")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &m, &trusted), ip("1.2.3.4"));
        let m = h(&[("x-forwarded-for", "1.2.3.4, ,")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &m, &trusted), ip("1.2.3.4"));
        let mut m = h(&[("x-forwarded-for", "6.6.6.6")]);
        m.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff, 10.1.1.1").unwrap(),
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &m, &trusted), ip("10.1.1.1"));
    }

    #[test]
    fn client_ip_only_through_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer_trusted: IpAddr = "10.0.0.1".parse().unwrap();
        let peer_untrusted: IpAddr = "8.8.8.8".parse().unwrap();
        let m = h(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.1.1.1")]);
        assert_eq!(
            client_ip(peer_trusted, &m, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer_untrusted, &m, &trusted), peer_untrusted);
        assert_eq!(client_ip(peer_trusted, &m, &[]), peer_trusted);
        let garbled = h(&[("x-forwarded-for", "1.2.3.4, junk")]);
        assert_eq!(client_ip(peer_trusted, &garbled, &trusted), peer_trusted);
        let all_trusted = h(&[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(
            client_ip(peer_trusted, &all_trusted, &trusted),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn traceparent_keeps_trace_and_flags_and_replaces_the_parent() {
        let mut h = HeaderMap::new();
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", HeaderValue::from_static(incoming));
        h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        propagate_trace(&mut h);
        let out = h["traceparent"].to_str().unwrap();
        assert_eq!(out.len(), 55);
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
    }

    #[test]
    fn a_bad_or_missing_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_str(bad).unwrap());
            h.insert("tracestate", HeaderValue::from_static("a=b"));
            propagate_trace(&mut h);
            let out = h["traceparent"].to_str().unwrap();
            assert!(
                parse_traceparent(out.as_bytes()).is_some(),
                "{bad} -> {out}"
            );
            assert!(!out.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{bad}");
            assert!(out.ends_with("-00"));
            assert!(h.get("tracestate").is_none(), "{bad}");
        }
        // A future version with extra fields is understood.
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-zz"),
        );
        propagate_trace(&mut h);
        assert!(
            h["traceparent"]
                .to_str()
                .unwrap()
                .contains("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut none = HeaderMap::new();
        propagate_trace(&mut none);
        assert!(parse_traceparent(none["traceparent"].as_bytes()).is_some());
    }

    #[test]
    fn trace_context_names_the_parent_and_the_sampled_flag() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let ctx = TraceContext::incoming(&h, *b"00");
        assert_eq!(&ctx.trace_id, b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_id, Some(*b"00f067aa0ba902b7"));
        assert!(ctx.sampled());
        set_traceparent(&mut h, &ctx);
        let sent = h["traceparent"].as_bytes();
        assert_eq!(&sent[36..52], &ctx.span_id);

        let root = TraceContext::incoming(&HeaderMap::new(), *b"01");
        assert_eq!(root.parent_id, None);
        assert!(root.sampled());
        assert!(!TraceContext::incoming(&HeaderMap::new(), *b"00").sampled());
        assert!(
            TraceContext {
                flags: *b"03",
                ..root
            }
            .sampled()
        );
        assert!(
            !TraceContext {
                flags: *b"02",
                ..root
            }
            .sampled()
        );
    }
}
