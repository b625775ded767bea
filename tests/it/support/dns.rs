//! A small authoritative DNS server inside the test process, on
//! `127.0.0.1:PORT` over UDP and TCP (the same port), for the `dns:` and
//! `srv:` targets. The test changes its records while it runs.
//!
//! Names are case-insensitive (kept lowercase, without the trailing dot). A
//! name with no records of the asked type answers NOERROR with no records
//! (NODATA); a name it does not know answers NXDOMAIN; both carry a SOA in
//! the authority section, as a real server's would. `set_fail` makes one name
//! (or `fail_all` every name) answer with an error code instead.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub use hickory_proto::op::ResponseCode as Rcode;

/// The records of one name.
#[derive(Default, Clone)]
struct Entry {
    /// A and AAAA records.
    ips: Vec<IpAddr>,
    ip_ttl: u32,
    /// SRV records: (priority, weight, port, target).
    srv: Vec<(u16, u16, u16, String)>,
    srv_ttl: u32,
    /// Addresses of SRV targets sent in the additional section.
    glue: Vec<(String, IpAddr)>,
}

#[derive(Default)]
struct Zone {
    names: HashMap<String, Entry>,
    fail: HashMap<String, ResponseCode>,
    fail_all: Option<ResponseCode>,
    /// Queries received per name (every type).
    queries: HashMap<String, usize>,
}

/// The running server; its tasks end when it is dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `Orders.Test.` -> `orders.test`.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    let n = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    Name::from_ascii(&n).unwrap_or_else(|e| panic!("bad DNS name {name:?}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad IP address {s:?}: {e}"))
}

impl DnsServer {
    /// Binds UDP on `127.0.0.1:0` and TCP on the same port, and serves.
    pub async fn start() -> DnsServer {
        let mut tries = 0;
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS UDP");
            let addr = udp.local_addr().expect("DNS addr");
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp),
                Err(e) => {
                    tries += 1;
                    assert!(tries < 20, "no port free for both UDP and TCP: {e}");
                }
            }
        };
        let addr = udp.local_addr().expect("DNS addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let udp_task = {
            let zone = zone.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                        continue;
                    };
                    if let Some(reply) = answer(&zone, &buf[..n], true) {
                        let _ = udp.send_to(&reply, peer).await;
                    }
                }
            })
        };
        let tcp_task = {
            let zone = zone.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = tcp.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve_tcp(stream, zone.clone()));
                }
            })
        };
        DnsServer {
            addr,
            zone,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// `127.0.0.1:PORT`, for `resolvers:`.
    pub fn resolver(&self) -> String {
        self.addr.to_string()
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.zone.lock().expect("zone lock")
    }

    /// Sets the address records of `name` (A for IPv4, AAAA for IPv6) to
    /// `ips`, replacing the previous ones; clears a `set_fail` of the name.
    /// An empty list leaves the name known with no addresses (NODATA).
    pub fn set_a(&self, name: &str, ips: &[&str], ttl: u32) {
        let mut z = self.zone();
        let k = key(name);
        z.fail.remove(&k);
        let e = z.names.entry(k).or_default();
        e.ips = ips.iter().map(|s| ip(s)).collect();
        e.ip_ttl = ttl;
    }

    /// Sets the SRV records of `name`: (priority, weight, port, target),
    /// with no additional section.
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)], ttl: u32) {
        self.set_srv_glue(name, records, &[], ttl);
    }

    /// `set_srv` whose answers also carry these (target, address) records in
    /// the additional section.
    pub fn set_srv_glue(
        &self,
        name: &str,
        records: &[(u16, u16, u16, &str)],
        glue: &[(&str, &str)],
        ttl: u32,
    ) {
        let mut z = self.zone();
        let k = key(name);
        z.fail.remove(&k);
        let e = z.names.entry(k).or_default();
        e.srv = records
            .iter()
            .map(|&(p, w, port, t)| (p, w, port, t.to_string()))
            .collect();
        e.srv_ttl = ttl;
        e.glue = glue.iter().map(|&(t, a)| (t.to_string(), ip(a))).collect();
    }

    /// Queries for `name` are answered with `rcode` (e.g. `Rcode::ServFail`,
    /// `Rcode::Refused`) until `clear_fail` or a `set_*` of the name.
    pub fn set_fail(&self, name: &str, rcode: ResponseCode) {
        self.zone().fail.insert(key(name), rcode);
    }

    pub fn clear_fail(&self, name: &str) {
        self.zone().fail.remove(&key(name));
    }

    /// Every query is answered with `rcode` while it is `Some`.
    pub fn fail_all(&self, rcode: Option<ResponseCode>) {
        self.zone().fail_all = rcode;
    }

    /// Forgets `name`: its queries get NXDOMAIN.
    pub fn remove(&self, name: &str) {
        let mut z = self.zone();
        let k = key(name);
        z.fail.remove(&k);
        z.names.remove(&k);
    }

    /// Queries received for `name` so far (all types).
    pub fn queries(&self, name: &str) -> usize {
        self.zone().queries.get(&key(name)).copied().unwrap_or(0)
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2) until the peer closes.
async fn serve_tcp(mut stream: TcpStream, zone: Arc<Mutex<Zone>>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Some(reply) = answer(&zone, &buf, false) else {
            return;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_all(&n.to_be_bytes()).await.is_err()
            || stream.write_all(&reply).await.is_err()
        {
            return;
        }
    }
}

/// The SOA of the zone `name` is in (its last label), for negative answers.
fn soa_of(name: &Name) -> Record {
    let ascii = name.to_ascii();
    let zone = ascii
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .unwrap_or("test")
        .to_string();
    Record::from_rdata(
        fqdn(&zone),
        1,
        RData::SOA(SOA::new(
            fqdn(&format!("ns.{zone}")),
            fqdn(&format!("hostmaster.{zone}")),
            1,
            60,
            60,
            600,
            1,
        )),
    )
}

/// The answer to one query message; `None` when it is not one.
fn answer(zone: &Mutex<Zone>, query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.authoritative = true;
    r.queries = q.queries.clone();
    let Some(question) = q.queries.first() else {
        r.metadata.response_code = ResponseCode::FormErr;
        return r.to_vec().ok();
    };
    if q.metadata.op_code != OpCode::Query {
        r.metadata.response_code = ResponseCode::NotImp;
        return r.to_vec().ok();
    }
    let name = question.name.clone();
    let k = key(&name.to_ascii());
    let mut z = zone.lock().expect("zone lock");
    *z.queries.entry(k.clone()).or_default() += 1;
    if let Some(code) = z.fail_all.or_else(|| z.fail.get(&k).copied()) {
        r.metadata.response_code = code;
        return r.to_vec().ok();
    }
    let Some(e) = z.names.get(&k).cloned() else {
        drop(z);
        r.metadata.response_code = ResponseCode::NXDomain;
        r.authorities.push(soa_of(&name));
        return r.to_vec().ok();
    };
    drop(z);
    match question.query_type {
        RecordType::A => {
            for ip in &e.ips {
                if let IpAddr::V4(v4) = ip {
                    r.answers
                        .push(Record::from_rdata(name.clone(), e.ip_ttl, RData::A(A(*v4))));
                }
            }
        }
        RecordType::AAAA => {
            for ip in &e.ips {
                if let IpAddr::V6(v6) = ip {
                    r.answers.push(Record::from_rdata(
                        name.clone(),
                        e.ip_ttl,
                        RData::AAAA(AAAA(*v6)),
                    ));
                }
            }
        }
        RecordType::SRV => {
            for (p, w, port, target) in &e.srv {
                r.answers.push(Record::from_rdata(
                    name.clone(),
                    e.srv_ttl,
                    RData::SRV(SRV::new(*p, *w, *port, fqdn(target))),
                ));
            }
            for (target, ip) in &e.glue {
                let data = match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                r.additionals
                    .push(Record::from_rdata(fqdn(target), e.srv_ttl, data));
            }
        }
        _ => {}
    }
    if r.answers.is_empty() {
        // NODATA: the name exists, not with this type.
        r.additionals.clear();
        r.authorities.push(soa_of(&name));
    }
    let bytes = r.to_vec().ok()?;
    if udp && bytes.len() > usize::from(q.max_payload().max(512)) {
        // Too big for plain UDP: truncated, the client asks again over TCP.
        let mut t = Message::response(q.metadata.id, q.metadata.op_code);
        t.metadata.truncation = true;
        t.metadata.authoritative = true;
        t.metadata.recursion_desired = q.metadata.recursion_desired;
        t.queries = q.queries;
        return t.to_vec().ok();
    }
    Some(bytes)
}
