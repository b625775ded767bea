//! PROXY protocol v1 and v2 (HAProxy's spec) on a listener
//! (`server.listeners[].proxy_protocol`), for tollgate behind an L4 balancer
//! (AWS NLB, HAProxy, another proxy in TCP mode): the header the balancer
//! writes before the client's bytes names the client, and that address is
//! the connection's peer from then on (IP rules, rate-limit keys,
//! `X-Forwarded-For`, logs).
//!
//! The header is read before anything else, TLS included, and exactly: no
//! byte past it is consumed, so the TLS handshake or hyper reads the stream
//! from the client's first byte. A peer outside `trusted`, a malformed
//! header, or one that does not arrive within `timeout` closes the
//! connection (counted by reason). ppp parses the header; this module only
//! finds where it ends.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature (12 bytes), then version/command, family, length.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;

/// A listener's PROXY protocol settings, compiled with the config.
pub struct ProxyProtocol {
    pub trusted: Vec<IpNet>,
    pub timeout: Duration,
    /// `tollgate_proxy_protocol_errors_total` by reason: untrusted,
    /// malformed, timeout.
    pub errors: [IntCounter; 3],
}

/// Why a connection was closed before its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Untrusted,
    Malformed,
    Timeout,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Untrusted => "untrusted",
            Refused::Malformed => "malformed",
            Refused::Timeout => "timeout",
        }
    }
}

impl ProxyProtocol {
    /// Reads the header from `io` (whose TCP peer is `peer`) and returns the
    /// client's address: the header's source, or `peer` itself for a LOCAL
    /// (v2) or UNKNOWN (v1) header (the balancer's own health checks).
    pub async fn accept<S: AsyncRead + Unpin>(
        &self,
        io: &mut S,
        peer: SocketAddr,
    ) -> Result<SocketAddr, Refused> {
        let result = if !self
            .trusted
            .iter()
            .any(|n| n.contains(&peer.ip().to_canonical()))
        {
            Err(Refused::Untrusted)
        } else {
            match tokio::time::timeout(self.timeout, read(io, peer)).await {
                Ok(r) => r,
                Err(_) => Err(Refused::Timeout),
            }
        };
        if let Err(r) = result {
            self.errors[r as usize].inc();
        }
        result
    }
}

async fn read<S: AsyncRead + Unpin>(io: &mut S, peer: SocketAddr) -> Result<SocketAddr, Refused> {
    let mut head = [0u8; 16];
    io.read_exact(&mut head[..6])
        .await
        .map_err(|_| Refused::Malformed)?;
    if &head[..6] == b"PROXY " {
        let mut line = head[..6].to_vec();
        // Byte by byte up to the CRLF: nothing past the header is consumed.
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(Refused::Malformed);
            }
            line.push(io.read_u8().await.map_err(|_| Refused::Malformed)?);
        }
        return v1(&line, peer);
    }
    if head[..6] != V2_SIGNATURE[..6] {
        return Err(Refused::Malformed);
    }
    io.read_exact(&mut head[6..])
        .await
        .map_err(|_| Refused::Malformed)?;
    if &head[..12] != V2_SIGNATURE {
        return Err(Refused::Malformed);
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    let mut whole = Vec::with_capacity(16 + len);
    whole.extend_from_slice(&head);
    whole.resize(16 + len, 0);
    io.read_exact(&mut whole[16..])
        .await
        .map_err(|_| Refused::Malformed)?;
    v2(&whole, peer)
}

fn v1(line: &[u8], peer: SocketAddr) -> Result<SocketAddr, Refused> {
    use ppp::v1::{Addresses, Header};
    let header = Header::try_from(line).map_err(|_| Refused::Malformed)?;
    Ok(match header.addresses {
        Addresses::Tcp4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
        Addresses::Tcp6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
        Addresses::Unknown => peer,
    })
}

fn v2(bytes: &[u8], peer: SocketAddr) -> Result<SocketAddr, Refused> {
    use ppp::v2::{Addresses, Command, Header};
    let header = Header::try_from(bytes).map_err(|_| Refused::Malformed)?;
    if header.command == Command::Local {
        return Ok(peer);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
        Addresses::IPv6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
        // A UNIX socket or an unspecified family says nothing usable.
        Addresses::Unix(_) | Addresses::Unspecified => peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(trusted: &[&str]) -> ProxyProtocol {
        let c = || IntCounter::new("t", "t").unwrap();
        ProxyProtocol {
            trusted: trusted.iter().map(|s| s.parse().unwrap()).collect(),
            timeout: Duration::from_secs(1),
            errors: [c(), c(), c()],
        }
    }

    fn v2_header(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    const PEER: &str = "10.0.0.9:40000";

    async fn accept(pp: &ProxyProtocol, bytes: &[u8]) -> (Result<SocketAddr, Refused>, Vec<u8>) {
        let mut io = bytes;
        let got = pp.accept(&mut io, PEER.parse().unwrap()).await;
        (got, io.to_vec())
    }

    #[tokio::test]
    async fn v1_and_v2_give_the_client_and_leave_the_rest_unread() {
        let pp = settings(&["10.0.0.0/8"]);
        let (got, rest) = accept(&pp, b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET /").await;
        assert_eq!(got, Ok("203.0.113.7:56324".parse().unwrap()));
        assert_eq!(rest, b"GET /");
        let (got, _) = accept(&pp, b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 443\r\n").await;
        assert_eq!(got, Ok("[2001:db8::1]:1000".parse().unwrap()));
        let (got, _) = accept(&pp, b"PROXY UNKNOWN\r\n").await;
        assert_eq!(got, Ok(PEER.parse().unwrap()));

        let mut ipv4 = vec![198, 51, 100, 4, 10, 0, 0, 1];
        ipv4.extend_from_slice(&1234u16.to_be_bytes());
        ipv4.extend_from_slice(&443u16.to_be_bytes());
        let mut bytes = v2_header(1, 0x11, &ipv4);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (got, rest) = accept(&pp, &bytes).await;
        assert_eq!(got, Ok("198.51.100.4:1234".parse().unwrap()));
        assert_eq!(
            rest, b"\x16\x03\x01",
            "the TLS record is left for the handshake"
        );
        // LOCAL: the balancer's own connection.
        let (got, _) = accept(&pp, &v2_header(0, 0x00, &[])).await;
        assert_eq!(got, Ok(PEER.parse().unwrap()));
    }

    #[tokio::test]
    async fn untrusted_malformed_and_short_headers_are_refused_and_counted() {
        let pp = settings(&["10.0.0.0/8"]);
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 1 2",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x00",
            b"PROX",
        ] {
            assert_eq!(accept(&pp, bad).await.0, Err(Refused::Malformed), "{bad:?}");
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert_eq!(
            accept(&pp, long.as_bytes()).await.0,
            Err(Refused::Malformed)
        );
        assert_eq!(pp.errors[Refused::Malformed as usize].get(), 6);
        let strict = settings(&["192.168.0.0/16"]);
        let (got, rest) = accept(&strict, b"PROXY UNKNOWN\r\n").await;
        assert_eq!(got, Err(Refused::Untrusted));
        assert_eq!(
            rest, b"PROXY UNKNOWN\r\n",
            "nothing is read from an untrusted peer"
        );
        assert_eq!(strict.errors[Refused::Untrusted as usize].get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_that_does_not_come_times_out() {
        let pp = settings(&["10.0.0.0/8"]);
        let (_client, mut server) = tokio::io::duplex(64);
        let got = pp.accept(&mut server, PEER.parse().unwrap()).await;
        assert_eq!(got, Err(Refused::Timeout));
        assert_eq!(pp.errors[Refused::Timeout as usize].get(), 1);
    }
}
