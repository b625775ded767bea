//! The PROXY protocol reader (v1 text, v2 binary) on a connection's first
//! bytes. The first input byte picks the mode and the TCP peer:
//!
//! - raw: the rest is the stream as sent. Never a panic; an untrusted peer is
//!   refused with nothing read; a trusted one is never refused as untrusted;
//!   reading never goes past the header's own end (the CRLF of v1, at most
//!   107 bytes; v2's 16 bytes plus its declared length); an accepted header
//!   was consumed exactly, and the address returned is the header's source
//!   (or the peer for UNKNOWN, LOCAL, UNIX and unspecified addresses).
//! - built: a well-formed v1 or v2 header is written from generated fields
//!   (v2 with TLVs after the addresses), followed by the client's bytes: it is
//!   accepted, gives back exactly the source address written, and leaves
//!   exactly the client's bytes unread.
//!
//! cargo +nightly fuzz run proxy_protocol -- -max_total_time=60

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use prometheus::IntCounter;
use tollgate::proxy_protocol::{ProxyProtocol, Refused};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
});

static SETTINGS: LazyLock<ProxyProtocol> = LazyLock::new(|| {
    let c = || IntCounter::new("c", "c").expect("a counter");
    ProxyProtocol {
        trusted: vec!["10.0.0.0/8".parse().expect("a net")],
        timeout: Duration::from_secs(5),
        errors: [c(), c(), c()],
    }
});

const PEERS: [(&str, bool); 4] = [
    ("10.0.0.9:40000", true),
    // An IPv4-mapped peer is judged by its IPv4 address.
    ("[::ffff:10.1.2.3]:1", true),
    ("192.0.2.1:5000", false),
    ("[2001:db8::1]:443", false),
];

/// Runs the reader over `input`: its answer and how many bytes it consumed.
fn accept(input: &[u8], peer: SocketAddr) -> (std::result::Result<SocketAddr, Refused>, usize) {
    let mut io = input;
    let got = RUNTIME.block_on(SETTINGS.accept(&mut io, peer));
    (got, input.len() - io.len())
}

fn raw(input: &[u8], peer: SocketAddr, trusted: bool) {
    let (got, used) = accept(input, peer);
    if !trusted {
        assert_eq!(got, Err(Refused::Untrusted));
        assert_eq!(used, 0, "nothing is read from an untrusted peer");
        return;
    }
    assert!(
        !matches!(got, Err(Refused::Untrusted | Refused::Timeout)),
        "{got:?} for a trusted peer reading from memory"
    );
    if input.starts_with(b"PROXY ") {
        let end = input.windows(2).position(|w| w == b"\r\n").map(|i| i + 2);
        match end {
            Some(end) if end <= V1_MAX => assert!(used <= end, "read past the v1 CRLF"),
            _ => assert!(used <= V1_MAX, "read {used} bytes of a v1 line"),
        }
        if let Ok(addr) = got {
            assert_eq!(Some(used), end, "an accepted v1 header is consumed exactly");
            assert_eq!(addr, v1_source(&input[6..used - 2], peer), "{input:?}");
        }
    } else if input.len() >= 16 && input[..12] == V2_SIGNATURE[..] {
        let end = 16 + usize::from(u16::from_be_bytes([input[14], input[15]]));
        assert!(used <= end, "read {used} bytes past a v2 header of {end}");
        if let Ok(addr) = got {
            assert_eq!(used, end, "an accepted v2 header is consumed exactly");
            assert_eq!(addr, v2_source(&input[..end], peer), "{input:?}");
        }
    } else {
        assert!(got.is_err(), "accepted without a signature: {input:?}");
        assert!(used <= 16);
    }
}

/// The source of a v1 header's fields (between `PROXY ` and the CRLF). After
/// `UNKNOWN` the spec has the receiver ignore whatever precedes the CRLF, so
/// those bytes need not be text.
fn v1_source(fields: &[u8], peer: SocketAddr) -> SocketAddr {
    if fields == b"UNKNOWN" || fields.starts_with(b"UNKNOWN ") {
        return peer;
    }
    let text = std::str::from_utf8(fields).expect("an accepted TCP4/TCP6 header is text");
    let f: Vec<&str> = text.split([' ', '\r']).collect();
    match f[0] {
        "TCP4" | "TCP6" => SocketAddr::new(
            f[1].parse().expect("a source address"),
            f[3].parse().expect("a source port"),
        ),
        other => panic!("accepted the protocol {other:?}"),
    }
}

/// The source of a whole v2 header, read by hand from the spec's layout.
fn v2_source(h: &[u8], peer: SocketAddr) -> SocketAddr {
    assert_eq!(h[12] >> 4, 2, "accepted version {}", h[12] >> 4);
    let len = h.len() - 16;
    match (h[12] & 0x0f, h[13] >> 4) {
        (0, _) => peer,
        (1, 1) => {
            assert!(len >= 12, "IPv4 addresses in {len} bytes");
            let ip: [u8; 4] = h[16..20].try_into().expect("4 bytes");
            SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([h[24], h[25]]))
        }
        (1, 2) => {
            assert!(len >= 36, "IPv6 addresses in {len} bytes");
            let ip: [u8; 16] = h[16..32].try_into().expect("16 bytes");
            SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([h[48], h[49]]))
        }
        (1, 0 | 3) => peer,
        (c, f) => panic!("accepted command {c}, family {f}"),
    }
}

fn ipv4(u: &mut Unstructured<'_>) -> Result<Ipv4Addr> {
    Ok(Ipv4Addr::from(u.arbitrary::<[u8; 4]>()?))
}

fn ipv6(u: &mut Unstructured<'_>) -> Result<Ipv6Addr> {
    Ok(match u.int_in_range(0..=2)? {
        // Mapped and compressible spellings too.
        0 => ipv4(u)?.to_ipv6_mapped(),
        1 => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u.arbitrary()?),
        _ => Ipv6Addr::from(u.arbitrary::<[u8; 16]>()?),
    })
}

/// A well-formed header and the address it must give.
fn built(u: &mut Unstructured<'_>, peer: SocketAddr) -> Result<(Vec<u8>, SocketAddr)> {
    let sport: u16 = u.arbitrary()?;
    let dport: u16 = u.arbitrary()?;
    if u.arbitrary()? {
        let (line, want) = match u.int_in_range(0..=2)? {
            0 => {
                let (s, d) = (ipv4(u)?, ipv4(u)?);
                (
                    format!("PROXY TCP4 {s} {d} {sport} {dport}\r\n"),
                    SocketAddr::new(s.into(), sport),
                )
            }
            1 => {
                let (s, d) = (ipv6(u)?, ipv6(u)?);
                (
                    format!("PROXY TCP6 {s} {d} {sport} {dport}\r\n"),
                    SocketAddr::new(s.into(), sport),
                )
            }
            _ => ("PROXY UNKNOWN\r\n".to_string(), peer),
        };
        return Ok((line.into_bytes(), want));
    }
    let local = u.ratio(1, 8)?;
    let transport = *u.choose(&[0u8, 1, 2])?;
    let mut body = Vec::new();
    let (family, mut want) = match u.int_in_range(0..=3)? {
        0 => {
            let (s, d) = (ipv4(u)?, ipv4(u)?);
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            body.extend_from_slice(&sport.to_be_bytes());
            body.extend_from_slice(&dport.to_be_bytes());
            (0x10, SocketAddr::new(s.into(), sport))
        }
        1 => {
            let (s, d) = (ipv6(u)?, ipv6(u)?);
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            body.extend_from_slice(&sport.to_be_bytes());
            body.extend_from_slice(&dport.to_be_bytes());
            (0x20, SocketAddr::new(s.into(), sport))
        }
        2 => {
            body.extend_from_slice(&[b'/'; 216]);
            (0x30, peer)
        }
        _ => (0x00, peer),
    };
    if local {
        want = peer;
    }
    // TLVs (ALPN, authority, unique id, NOOP...): opaque to the reader.
    for _ in 0..u.int_in_range(0..=3)? {
        let kind: u8 = u.arbitrary()?;
        let len = u.int_in_range(0..=40)?;
        let value = u.bytes(len)?;
        body.push(kind);
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | u8::from(!local));
    h.push(family | transport);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    Ok((h, want))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (peer, trusted) = PEERS[usize::from(mode >> 1) % PEERS.len()];
    let peer: SocketAddr = peer.parse().expect("a peer");
    if mode & 1 == 0 {
        raw(rest, peer, trusted);
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok((header, want)) = built(&mut u, peer) else {
        return;
    };
    let mut stream = header.clone();
    let client = u.take_rest();
    stream.extend_from_slice(client);
    let (got, used) = accept(&stream, peer);
    if !trusted {
        assert_eq!((got, used), (Err(Refused::Untrusted), 0));
        return;
    }
    assert_eq!(got, Ok(want), "header {header:?}");
    assert_eq!(used, header.len(), "the client's bytes are left unread");
    // The raw checks hold for the same bytes too.
    raw(&stream, peer, trusted);
});
