//! DNS discovery (issue 22): `targets: [{dns: host:port}]` and `[{srv: name}]`
//! follow the records of a DNS server in the test process
//! (`support::dns`), looked up in the background. Upstreams listen on
//! 127.0.0.2:P, 127.0.0.3:P, ... (one port, several loopback addresses), so
//! that one `dns:` entry names them all.
//!
//! Lookups happen at most once a second (the refresh floor) and the records'
//! TTL is 1 s: each change is seen within about 2 s. Every wait is a poll
//! with a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::dns::{DnsServer, Rcode};
use crate::support::*;

const NAME: &str = "orders.test";

/// How long an address change may take to reach the targets: the 1 s
/// refresh, the lookup, and slack for a loaded machine.
const CHANGE: Duration = Duration::from_secs(5);

/// Upstreams named `names` on 127.0.0.2:P, 127.0.0.3:P, ... with one port P
/// free on every address.
async fn same_port(names: &[&'static str]) -> (u16, Vec<Upstream>) {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
        let port = first.local_addr().expect("addr").port();
        let others: Vec<_> = (1..names.len())
            .map(|i| std::net::TcpListener::bind(format!("127.0.0.{}:{port}", i + 2)))
            .collect();
        if others.iter().any(Result::is_err) {
            continue;
        }
        drop(first);
        drop(others);
        let mut ups = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let addr = format!("127.0.0.{}:{port}", i + 2);
            ups.push(Upstream::start_on(&addr, name, Behavior::Echo).await);
        }
        return (port, ups);
    }
    panic!("no port free on 127.0.0.2.. for {names:?}");
}

/// `127.0.0.N:port` of the upstream `i` of `same_port`.
fn hp(i: usize, port: u16) -> String {
    format!("127.0.0.{}:{port}", i + 2)
}

fn ip(i: usize) -> String {
    format!("127.0.0.{}", i + 2)
}

/// A config with `resolvers:` on `dns`, the upstream `svc` with `targets`
/// (lines of the list, indented by 6) and `extra` (indented by 4), and one
/// route to it.
fn config(dns: &DnsServer, targets: &str, extra: &str) -> String {
    format!(
        "{}resolvers: [\"{}\"]\nupstreams:\n  svc:\n    targets:\n{targets}{extra}    timeouts: {{ connect: 500ms, request: 5s }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: svc\n",
        server_block(""),
        dns.resolver()
    )
}

/// The `dns:` entry of `orders.test:port`, 1 s refresh, with `extra` keys.
fn dns_entry(port: u16, extra: &str) -> String {
    format!("      - {{ dns: \"{NAME}:{port}\", refresh: 1s{extra} }}\n")
}

fn svc(report: &Value) -> &Value {
    report["upstreams"]
        .as_array()
        .and_then(|l| l.iter().find(|u| u["name"] == "svc"))
        .unwrap_or_else(|| panic!("no upstream svc in {report}"))
}

/// The `target` labels of `svc`, in order.
fn labels(report: &Value) -> Vec<String> {
    svc(report)["targets"]
        .as_array()
        .unwrap_or_else(|| panic!("no targets in {report}"))
        .iter()
        .map(|t| t["target"].as_str().expect("target label").to_string())
        .collect()
}

fn target<'a>(report: &'a Value, label: &str) -> &'a Value {
    svc(report)["targets"]
        .as_array()
        .and_then(|l| l.iter().find(|t| t["target"] == label))
        .unwrap_or_else(|| panic!("no target {label} in {report}"))
}

/// The `addresses` of discovery source `i` of `svc`.
fn addresses(report: &Value, i: usize) -> Vec<String> {
    svc(report)["discovery"][i]["addresses"]
        .as_array()
        .unwrap_or_else(|| panic!("no discovery[{i}] in {report}"))
        .iter()
        .map(|a| a.as_str().expect("address").to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Waits (for at most `limit`) until `/upstreams` satisfies `cond`; returns it.
async fn wait_report(
    gw: &Gateway,
    limit: Duration,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    wait_until_within(limit, what, async || {
        let r = gw.upstreams().await;
        if cond(&r) { Ok(r) } else { Err(r) }
    })
    .await
}

/// Waits until the targets of `svc` are exactly `want` (any order).
async fn wait_targets(gw: &Gateway, want: &[String]) -> Value {
    let want = sorted(want.to_vec());
    wait_report(gw, CHANGE, &format!("targets {want:?}"), |r| {
        sorted(labels(r)) == want
    })
    .await
}

/// `tollgate_dns_lookups_total` of source `source` of `svc` with `result`.
async fn lookups(gw: &Gateway, source: &str, result: &str) -> f64 {
    metric(
        &gw.metrics().await,
        &format!(
            r#"tollgate_dns_lookups_total{{upstream="svc",source="{source}",result="{result}"}}"#
        ),
    )
    .unwrap_or(0.0)
}

/// Waits until that counter reaches `n`.
async fn wait_lookups(gw: &Gateway, source: &str, result: &str, n: f64) {
    wait_until(format!("{n} {result} lookups of {source}"), async || {
        let v = lookups(gw, source, result).await;
        if v >= n { Ok(()) } else { Err(format!("{v}")) }
    })
    .await;
}

/// One GET through the gateway; panics when no answer comes.
async fn one(gw: &Gateway, path: &str) -> Resp {
    get(&gw.url(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `n` GETs, each of which must be a 200.
async fn ok_requests(gw: &Gateway, n: usize) {
    for i in 0..n {
        let r = one(gw, "/x").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
}

/// `/readyz`: status and body.
async fn readyz(gw: &Gateway) -> (u16, String) {
    let r = get(&gw.admin_url("/readyz")).await.expect("/readyz");
    (r.status, r.text())
}

/// Clients sending GETs without pause on kept-alive connections, each
/// answer checked, until `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|c| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut conn = Conn::open(addr).await;
                    let mut n = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        match conn.get(&format!("/load/{c}/{n}")).await {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(r) => failed.lock().unwrap().push(format!(
                                "client {c} #{n}: {} {}",
                                r.status,
                                r.text()
                            )),
                            Err(e) => {
                                failed.lock().unwrap().push(format!("client {c} #{n}: {e}"));
                                conn = Conn::open(addr).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Fails the test at once if any request failed so far.
    fn assert_clean(&self, when: &str) {
        let f = self.failed.lock().unwrap();
        assert!(
            f.is_empty(),
            "{} failed requests {when}: {:?}",
            f.len(),
            &f[..f.len().min(10)]
        );
    }

    /// Stops the clients; returns how many requests were answered 200.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("a load client did not stop")
                .expect("load client panicked");
        }
        let f = self.failed.lock().unwrap();
        assert!(
            f.is_empty(),
            "{} failed requests: {:?}",
            f.len(),
            &f[..f.len().min(10)]
        );
        self.ok.load(Ordering::SeqCst)
    }
}

/// Waits until upstream `u` has received at least `n` requests.
async fn wait_hits(u: &Upstream, n: usize, limit: Duration, what: &str) {
    wait_until_within(limit, what, async || {
        if u.hits() >= n {
            Ok(())
        } else {
            Err(format!("{} hits", u.hits()))
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// The test DNS server itself
// ---------------------------------------------------------------------------

/// One query to `server` over UDP with hickory-proto; the answer.
async fn ask(
    server: SocketAddr,
    name: &str,
    rtype: hickory_proto::rr::RecordType,
) -> hickory_proto::op::Message {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("a DNS answer in time")
        .unwrap();
    let r = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(r.metadata.id, q.metadata.id);
    r
}

#[tokio::test]
async fn the_test_dns_server_answers_a_aaaa_srv_and_errors() {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{RData, RecordType};
    let dns = DnsServer::start().await;
    dns.set_a("Orders.Test", &["127.0.0.2", "127.0.0.3"], 1);
    let r = ask(dns.addr, "orders.TEST.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    let ips: Vec<String> = r
        .answers
        .iter()
        .map(|a| match &a.data {
            RData::A(a) => a.0.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ips, ["127.0.0.2", "127.0.0.3"]);
    assert_eq!(r.answers[0].ttl, 1);
    // Only A records: AAAA is NODATA, not NXDOMAIN.
    let r = ask(dns.addr, "orders.test.", RecordType::AAAA).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    let r = ask(dns.addr, "nothing.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);

    dns.set_srv_glue(
        "_http._tcp.orders.test",
        &[
            (0, 3, 8080, "a.orders.test"),
            (10, 1, 8081, "b.orders.test"),
        ],
        &[("a.orders.test", "127.0.0.2")],
        1,
    );
    let r = ask(dns.addr, "_http._tcp.orders.test.", RecordType::SRV).await;
    assert_eq!(r.answers.len(), 2);
    let RData::SRV(s) = &r.answers[1].data else {
        panic!("{r:?}")
    };
    assert_eq!((s.priority, s.weight, s.port), (10, 1, 8081));
    assert_eq!(s.target.to_ascii(), "b.orders.test.");
    assert_eq!(r.additionals.len(), 1);

    dns.set_fail(NAME, Rcode::ServFail);
    let r = ask(dns.addr, "orders.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    dns.set_fail(NAME, Rcode::Refused);
    let r = ask(dns.addr, "orders.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    dns.clear_fail(NAME);
    assert_eq!(
        ask(dns.addr, "orders.test.", RecordType::A)
            .await
            .answers
            .len(),
        2
    );
    dns.remove(NAME);
    let r = ask(dns.addr, "orders.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(dns.queries("ORDERS.test"), 6);
}

// ---------------------------------------------------------------------------
// dns: A / AAAA records
// ---------------------------------------------------------------------------

#[tokio::test]
async fn two_a_records_are_two_targets_with_traffic() {
    let dns = DnsServer::start().await;
    let (port, ups) = same_port(&["a", "b"]).await;
    dns.set_a(NAME, &[&ip(0), &ip(1)], 1);
    let gw = Gateway::start(&config(&dns, &dns_entry(port, ""), ""), &[]).await;

    ok_requests(&gw, 20).await;
    assert_eq!(
        (ups[0].hits(), ups[1].hits()),
        (10, 10),
        "round robin over both"
    );

    let source = format!("{NAME}:{port}");
    let report = gw.upstreams().await;
    let d = &svc(&report)["discovery"];
    assert_eq!(d.as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(d[0]["source"], format!("dns {source}"), "{report}");
    assert_eq!(sorted(addresses(&report, 0)), [hp(0, port), hp(1, port)]);
    assert_eq!(d[0]["looked_up"], true);
    assert!(d[0]["error"].is_null(), "{report}");
    assert_eq!(d[0]["refresh"], "1s");
    assert!(d[0]["last_lookup_ms_ago"].is_u64(), "{report}");
    assert!(d[0]["next_lookup_in_ms"].is_u64(), "{report}");
    for (i, u) in ups.iter().enumerate() {
        let t = target(&report, &hp(i, port));
        assert_eq!(t["from"], format!("dns {source}"), "{t}");
        assert_eq!(t["url"], format!("http://{}", hp(i, port)));
        assert_eq!(t["weight"], 1);
        assert_eq!(t["priority"], 0);
        assert_eq!(t["healthy"], true);
        assert_eq!(t["circuit"], "closed");
        assert_eq!(t["requests"], u.hits() as u64);
        assert!(t["slow_start_percent"].is_null(), "{t}");
    }
    assert!(lookups(&gw, &source, "ok").await >= 1.0);

    // /explain shows the same targets and sources.
    let j = get(&gw.admin_url("/explain?method=GET&path=/x"))
        .await
        .unwrap()
        .json();
    let up = &j["route"]["upstream"];
    let from: Vec<&Value> = up["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["from"])
        .collect();
    assert_eq!(from.len(), 2, "{j}");
    assert!(from.iter().all(|f| **f == format!("dns {source}")), "{j}");
    assert_eq!(up["discovery"][0]["source"], format!("dns {source}"), "{j}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_and_aaaa_records_are_both_followed() {
    let dns = DnsServer::start().await;
    // One port free on 127.0.0.2 and ::1.
    let mut found = None;
    for _ in 0..50 {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if std::net::TcpListener::bind(format!("[::1]:{port}")).is_ok() {
            found = Some(port);
            break;
        }
    }
    let port = found.expect("a port free on 127.0.0.2 and ::1");
    let a = Upstream::start_on(&format!("127.0.0.2:{port}"), "a", Behavior::Echo).await;
    let v6 = Upstream::start_on(&format!("[::1]:{port}"), "v6", Behavior::Echo).await;
    dns.set_a(NAME, &["127.0.0.2", "::1"], 1);
    let gw = Gateway::start(&config(&dns, &dns_entry(port, ""), ""), &[]).await;
    ok_requests(&gw, 10).await;
    assert_eq!((a.hits(), v6.hits()), (5, 5));
    let report = gw.upstreams().await;
    let t = target(&report, &format!("[::1]:{port}"));
    assert_eq!(t["url"], format!("http://[::1]:{port}"), "{t}");
    gw.shutdown().await;
}

#[tokio::test]
async fn targets_join_and_leave_under_load_without_a_failed_request() {
    let dns = DnsServer::start().await;
    let (port, ups) = same_port(&["a", "b"]).await;
    let (a, b) = (&ups[0], &ups[1]);
    dns.set_a(NAME, &[&ip(0)], 1);
    let gw = Gateway::start(&config(&dns, &dns_entry(port, ""), ""), &[]).await;
    let load = Load::start(gw.addr, 4);

    wait_hits(a, 50, WAIT, "a serves the load").await;
    assert_eq!(b.hits(), 0, "b is not in DNS yet");

    // b joins: it gets traffic within the refresh, a keeps its share.
    dns.set_a(NAME, &[&ip(0), &ip(1)], 1);
    wait_hits(b, 100, CHANGE, "b gets traffic once it is in DNS").await;
    let a_before = a.hits();
    wait_hits(b, b.hits() + 100, WAIT, "b keeps getting traffic").await;
    assert!(
        a.hits() > a_before + 20,
        "a still serves: {} -> {}",
        a_before,
        a.hits()
    );
    load.assert_clean("while b joined");

    // a leaves: once the set has dropped it, it gets no new request (at most
    // the one in flight per client at the swap).
    dns.set_a(NAME, &[&ip(1)], 1);
    wait_targets(&gw, &[hp(1, port)]).await;
    let a_gone = a.hits();
    let b_gone = b.hits();
    wait_hits(b, b_gone + 300, WAIT, "b serves everything").await;
    assert!(
        a.hits() <= a_gone + 4,
        "a got {} requests after it left DNS",
        a.hits() - a_gone
    );
    let ok = load.stop().await;
    assert!(ok > 500, "{ok} requests answered");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_address_that_stays_keeps_its_state_across_a_change() {
    let dns = DnsServer::start().await;
    let (port, ups) = same_port(&["a", "b"]).await;
    dns.set_a(NAME, &[&ip(0)], 1);
    let gw = Gateway::start(&config(&dns, &dns_entry(port, ""), ""), &[]).await;
    ok_requests(&gw, 10).await;
    let report = gw.upstreams().await;
    assert_eq!(target(&report, &hp(0, port))["requests"], 10);

    dns.set_a(NAME, &[&ip(0), &ip(1)], 1);
    wait_targets(&gw, &[hp(0, port), hp(1, port)]).await;
    ok_requests(&gw, 10).await;
    let report = gw.upstreams().await;
    let a = target(&report, &hp(0, port));
    let b = target(&report, &hp(1, port));
    assert_eq!(ups[0].hits(), 15);
    assert_eq!(a["requests"], 15, "the counter went on from 10: {report}");
    assert_eq!(b["requests"], 5, "{report}");
    assert_eq!(a["in_flight"], 0);

    // And again when the other one leaves.
    dns.set_a(NAME, &[&ip(0)], 1);
    wait_targets(&gw, &[hp(0, port)]).await;
    ok_requests(&gw, 5).await;
    let report = gw.upstreams().await;
    assert_eq!(target(&report, &hp(0, port))["requests"], 20, "{report}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_failed_lookup_keeps_the_last_addresses() {
    let dns = DnsServer::start().await;
    let (port, ups) = same_port(&["a", "b"]).await;
    dns.set_a(NAME, &[&ip(0), &ip(1)], 1);
    // keep_stale is short: failures are kept for ever, not for keep_stale.
    let gw = Gateway::start(&config(&dns, &dns_entry(port, ", keep_stale: 1s"), ""), &[]).await;
    let source = format!("{NAME}:{port}");
    wait_lookups(&gw, &source, "ok", 1.0).await;

    for (rcode, name) in [(Rcode::ServFail, "SERVFAIL"), (Rcode::Refused, "REFUSED")] {
        let before = lookups(&gw, &source, "failed").await;
        dns.set_fail(NAME, rcode);
        // Three failed lookups: more than keep_stale has passed.
        wait_lookups(&gw, &source, "failed", before + 3.0).await;
        let (a0, b0) = (ups[0].hits(), ups[1].hits());
        ok_requests(&gw, 10).await;
        assert_eq!(
            (ups[0].hits() - a0, ups[1].hits() - b0),
            (5, 5),
            "both addresses kept after {name}"
        );
        let report = gw.upstreams().await;
        assert_eq!(
            sorted(addresses(&report, 0)),
            [hp(0, port), hp(1, port)],
            "{report}"
        );
        let d = &svc(&report)["discovery"][0];
        assert!(d["error"].is_string(), "the failure is shown: {report}");
        assert!(
            d["empty_for_ms"].is_null(),
            "a failure is not empty: {report}"
        );
        assert_eq!(lookups(&gw, &source, "empty").await, 0.0);
    }

    // It answers again: the error goes away, ok is counted.
    let ok_before = lookups(&gw, &source, "ok").await;
    dns.clear_fail(NAME);
    wait_report(&gw, CHANGE, "the error cleared", |r| {
        svc(r)["discovery"][0]["error"].is_null()
    })
    .await;
    assert!(lookups(&gw, &source, "ok").await > ok_before);
    ok_requests(&gw, 4).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn an_empty_answer_keeps_the_addresses_for_keep_stale_then_503() {
    let dns = DnsServer::start().await;
    let (port, ups) = same_port(&["a"]).await;
    dns.set_a(NAME, &[&ip(0)], 1);
    let gw = Gateway::start(&config(&dns, &dns_entry(port, ", keep_stale: 2s"), ""), &[]).await;
    let source = format!("{NAME}:{port}");
    ok_requests(&gw, 2).await;

    dns.remove(NAME);
    wait_lookups(&gw, &source, "empty", 1.0).await;
    let first_empty = Instant::now();
    // Kept for now.
    let r = one(&gw, "/x").await;
    assert_eq!(
        r.status,
        200,
        "kept right after the first empty answer: {}",
        r.text()
    );
    let report = gw.upstreams().await;
    let d = &svc(&report)["discovery"][0];
    assert_eq!(addresses(&report, 0), [hp(0, port)], "{report}");
    assert!(d["empty_for_ms"].is_u64(), "{report}");
    assert!(d["error"].is_string(), "{report}");

    // 200s until keep_stale has passed, then 503s.
    let mut statuses = Vec::new();
    let r = wait_until("the upstream to become empty", async || {
        let r = one(&gw, "/x").await;
        statuses.push(r.status);
        if r.status == 200 {
            Err(format!("{statuses:?}"))
        } else {
            Ok(r)
        }
    })
    .await;
    let took = first_empty.elapsed();
    r.assert_error(503, "no_healthy_upstream");
    assert!(
        took >= Duration::from_millis(1500),
        "emptied {took:?} after the first empty answer, before keep_stale (2s)"
    );
    assert!(took < Duration::from_secs(5), "emptied only after {took:?}");
    let hits = ups[0].hits();
    for _ in 0..3 {
        one(&gw, "/x")
            .await
            .assert_error(503, "no_healthy_upstream");
    }
    assert_eq!(
        ups[0].hits(),
        hits,
        "no request reaches the forgotten address"
    );
    let report = gw.upstreams().await;
    assert!(addresses(&report, 0).is_empty(), "{report}");
    assert!(labels(&report).is_empty(), "{report}");
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("upstream svc has no targets"), "{body}");

    // The record comes back: served again, without a reload.
    dns.set_a(NAME, &[&ip(0)], 1);
    wait_until_within(CHANGE, "200 again", async || {
        let r = one(&gw, "/x").await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.text())
        }
    })
    .await;
    let report = gw.upstreams().await;
    assert!(svc(&report)["discovery"][0]["error"].is_null(), "{report}");
    assert!(
        svc(&report)["discovery"][0]["empty_for_ms"].is_null(),
        "{report}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn unresolvable_at_start_is_not_fatal_and_traffic_flows_once_it_resolves() {
    let dns = DnsServer::start().await;
    let (port, ups) = same_port(&["a"]).await;
    let gw = Gateway::start_unready(&config(&dns, &dns_entry(port, ""), ""), &[]).await;
    let body = wait_until("/readyz 200", async || match readyz(&gw).await {
        (200, body) => Ok(body),
        (s, body) => Err(format!("{s} {body}")),
    })
    .await;
    assert!(body.starts_with("ready\n"), "{body:?}");
    let line = format!("upstream svc has no targets (dns {NAME}:{port}: ");
    assert!(body.contains(&line), "{body:?}");

    one(&gw, "/x")
        .await
        .assert_error(503, "no_healthy_upstream");
    let report = gw.upstreams().await;
    let d = &svc(&report)["discovery"][0];
    assert_eq!(d["looked_up"], true, "{report}");
    assert!(d["error"].is_string(), "{report}");
    assert!(addresses(&report, 0).is_empty(), "{report}");
    assert!(labels(&report).is_empty(), "{report}");

    dns.set_a(NAME, &[&ip(0)], 1);
    wait_until_within(CHANGE, "traffic flows", async || {
        let r = one(&gw, "/x").await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.text())
        }
    })
    .await;
    assert_eq!(ups[0].hits(), 1);
    let (status, body) = readyz(&gw).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    gw.shutdown().await;
}

#[tokio::test]
async fn lookups_follow_a_short_ttl_but_at_most_once_a_second() {
    let dns = DnsServer::start().await;
    let (port, ups) = same_port(&["a", "b"]).await;
    // TTL 0: the floor of 1 s decides, not the 30 s refresh.
    dns.set_a(NAME, &[&ip(0)], 0);
    let started = Instant::now();
    let gw = Gateway::start(
        &config(
            &dns,
            &format!("      - {{ dns: \"{NAME}:{port}\", refresh: 30s }}\n"),
            "",
        ),
        &[],
    )
    .await;
    let source = format!("{NAME}:{port}");
    wait_lookups(&gw, &source, "ok", 3.0).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "3 lookups in {took:?}: sooner than once a second"
    );
    // A change is seen long before the refresh.
    dns.set_a(NAME, &[&ip(0), &ip(1)], 1);
    wait_targets(&gw, &[hp(0, port), hp(1, port)]).await;
    ok_requests(&gw, 4).await;
    assert_eq!((ups[0].hits(), ups[1].hits()), (2, 2));
    // A TTL longer than the refresh: the refresh decides.
    dns.set_a(NAME, &[&ip(0), &ip(1)], 300);
    let r = wait_report(&gw, CHANGE, "the next lookup in about 30s", |r| {
        svc(r)["discovery"][0]["next_lookup_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 20_000)
    })
    .await;
    let next = svc(&r)["discovery"][0]["next_lookup_in_ms"]
        .as_u64()
        .unwrap();
    assert!(next <= 30_000, "{r}");
    gw.shutdown().await;
}

#[tokio::test]
async fn url_targets_mix_with_discovered_ones() {
    let dns = DnsServer::start().await;
    let (port, ups) = same_port(&["a"]).await;
    let fixed = Upstream::echo("fixed").await;
    dns.set_a(NAME, &[&ip(0)], 1);
    let targets = format!(
        "      - {{ url: \"http://{}\" }}\n{}",
        fixed.host_port(),
        dns_entry(port, ", keep_stale: 1s")
    );
    let gw = Gateway::start(&config(&dns, &targets, ""), &[]).await;
    ok_requests(&gw, 10).await;
    assert_eq!((fixed.hits(), ups[0].hits()), (5, 5));
    let report = gw.upstreams().await;
    assert_eq!(
        target(&report, &fixed.host_port())["from"],
        "url",
        "{report}"
    );
    assert_eq!(
        target(&report, &hp(0, port))["from"],
        format!("dns {NAME}:{port}"),
        "{report}"
    );
    assert_eq!(svc(&report)["discovery"].as_array().map(Vec::len), Some(1));

    // The name stays, its addresses go (NOERROR, no records): empty, then
    // after keep_stale only the url target is left.
    let source = format!("{NAME}:{port}");
    dns.set_a(NAME, &[], 1);
    wait_lookups(&gw, &source, "empty", 1.0).await;
    wait_targets(&gw, &[fixed.host_port()]).await;
    let before = ups[0].hits();
    ok_requests(&gw, 6).await;
    assert_eq!(ups[0].hits(), before);
    let (status, body) = readyz(&gw).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\n"),
        "the upstream has a target"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_joining_address_ramps_up_with_slow_start() {
    let dns = DnsServer::start().await;
    let (port, ups) = same_port(&["a", "b"]).await;
    dns.set_a(NAME, &[&ip(0)], 1);
    let gw = Gateway::start(
        &config(&dns, &dns_entry(port, ""), "    slow_start: 30s\n"),
        &[],
    )
    .await;
    let report = gw.upstreams().await;
    assert!(
        target(&report, &hp(0, port))["slow_start_percent"].is_null(),
        "the first addresses are the start, not a join: {report}"
    );
    dns.set_a(NAME, &[&ip(0), &ip(1)], 1);
    let report = wait_targets(&gw, &[hp(0, port), hp(1, port)]).await;
    let pct = target(&report, &hp(1, port))["slow_start_percent"]
        .as_u64()
        .unwrap_or_else(|| panic!("b ramps: {report}"));
    assert!((10..=99).contains(&pct), "{report}");
    assert!(
        target(&report, &hp(0, port))["slow_start_percent"].is_null(),
        "{report}"
    );
    let (a0, b0) = (ups[0].hits(), ups[1].hits());
    ok_requests(&gw, 40).await;
    let (a, b) = (ups[0].hits() - a0, ups[1].hits() - b0);
    assert!(
        b < a / 2,
        "b gets a small share while it ramps: a {a}, b {b}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn health_checks_follow_the_discovered_targets() {
    let dns = DnsServer::start().await;
    let (port, ups) = same_port(&["a", "b"]).await;
    let (a, b) = (&ups[0], &ups[1]);
    dns.set_a(NAME, &[&ip(0)], 1);
    let hc = "    health_check: { path: /healthz, interval: 200ms, timeout: 100ms, unhealthy_threshold: 1, healthy_threshold: 1 }\n";
    let gw = Gateway::start(&config(&dns, &dns_entry(port, ""), hc), &[]).await;
    wait_until("a is probed", async || a.control.health_hits() >= 1).await;
    assert_eq!(b.control.health_hits(), 0, "b is not in DNS");

    dns.set_a(NAME, &[&ip(0), &ip(1)], 1);
    wait_until_within(CHANGE, "b is probed once discovered", async || {
        b.control.health_hits() >= 2
    })
    .await;
    ok_requests(&gw, 10).await;
    assert!(b.hits() >= 4, "b takes traffic: {}", b.hits());
    let healthy = format!(
        r#"tollgate_upstream_healthy{{upstream="svc",target="{}"}}"#,
        hp(1, port)
    );
    assert_eq!(metric(&gw.metrics().await, &healthy), Some(1.0));

    // Its verdict counts: b unhealthy takes no traffic.
    b.control.set_unhealthy(true);
    wait_report(&gw, WAIT, "b unhealthy", |r| {
        target(r, &hp(1, port))["healthy"] == false
    })
    .await;
    let before = b.hits();
    ok_requests(&gw, 10).await;
    assert_eq!(b.hits(), before);
    assert_eq!(metric(&gw.metrics().await, &healthy), Some(0.0));

    // b leaves DNS: its probes stop, its series go.
    dns.set_a(NAME, &[&ip(0)], 1);
    wait_targets(&gw, &[hp(0, port)]).await;
    let text = gw.metrics().await;
    assert_eq!(metric(&text, &healthy), None, "{text}");
    assert!(
        !text.contains(&format!("target=\"{}\"", hp(1, port))),
        "{text}"
    );
    let (a0, b0) = (a.control.health_hits(), b.control.health_hits());
    wait_until("a probed 3 more times", async || {
        a.control.health_hits() >= a0 + 3
    })
    .await;
    assert!(
        b.control.health_hits() <= b0 + 1,
        "b probed after it left: {b0} -> {}",
        b.control.health_hits()
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// srv:
// ---------------------------------------------------------------------------

const SRV: &str = "_http._tcp.orders.test";

fn srv_entry(extra: &str) -> String {
    format!("      - {{ srv: \"{SRV}\", refresh: 1s{extra} }}\n")
}

#[tokio::test]
async fn srv_weights_share_the_traffic() {
    let dns = DnsServer::start().await;
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    dns.set_srv_glue(
        SRV,
        &[
            (0, 3, a.addr.port(), "a.orders.test"),
            (0, 1, b.addr.port(), "b.orders.test"),
        ],
        &[
            ("a.orders.test", "127.0.0.1"),
            ("b.orders.test", "127.0.0.1"),
        ],
        1,
    );
    // The entry's weight multiplies the records'.
    let gw = Gateway::start(&config(&dns, &srv_entry(", weight: 2"), ""), &[]).await;
    let report = gw.upstreams().await;
    let ta = target(&report, &a.host_port());
    let tb = target(&report, &b.host_port());
    assert_eq!(ta["weight"], 6, "{report}");
    assert_eq!(tb["weight"], 2, "{report}");
    assert_eq!(ta["from"], format!("srv {SRV}"));
    assert_eq!(svc(&report)["discovery"][0]["source"], format!("srv {SRV}"));

    ok_requests(&gw, 400).await;
    let (ha, hb) = (a.hits() as i64, b.hits() as i64);
    assert_eq!(ha + hb, 400);
    assert!((ha - 300).abs() <= 20, "3:1 over 400: a {ha}, b {hb}");
    assert!(lookups(&gw, SRV, "ok").await >= 1.0);
    // No A lookups: the addresses came in the additional section.
    assert_eq!(dns.queries("a.orders.test"), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn srv_priority_takes_the_next_tier_only_when_the_first_is_down() {
    let dns = DnsServer::start().await;
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    dns.set_srv_glue(
        SRV,
        &[
            (0, 1, a.addr.port(), "a.orders.test"),
            (10, 1, b.addr.port(), "b.orders.test"),
        ],
        &[
            ("a.orders.test", "127.0.0.1"),
            ("b.orders.test", "127.0.0.1"),
        ],
        1,
    );
    let hc = "    health_check: { path: /healthz, interval: 100ms, timeout: 50ms, unhealthy_threshold: 1, healthy_threshold: 1 }\n";
    let gw = Gateway::start(&config(&dns, &srv_entry(""), hc), &[]).await;
    let report = gw.upstreams().await;
    assert_eq!(target(&report, &a.host_port())["priority"], 0, "{report}");
    assert_eq!(target(&report, &b.host_port())["priority"], 10, "{report}");
    ok_requests(&gw, 20).await;
    assert_eq!(
        (a.hits(), b.hits()),
        (20, 0),
        "priority 10 waits while 0 is up"
    );

    a.control.set_down(true);
    let ap = a.host_port();
    wait_report(&gw, WAIT, "a unhealthy", |r| {
        target(r, &ap)["healthy"] == false
    })
    .await;
    let before = a.hits();
    ok_requests(&gw, 10).await;
    assert_eq!(b.hits(), 10, "priority 10 takes over");
    assert_eq!(a.hits(), before);

    a.control.set_down(false);
    wait_report(&gw, WAIT, "a healthy", |r| {
        target(r, &ap)["healthy"] == true
    })
    .await;
    ok_requests(&gw, 10).await;
    assert_eq!(b.hits(), 10, "back on priority 0");
    assert_eq!(a.hits(), before + 10);
    gw.shutdown().await;
}

#[tokio::test]
async fn srv_targets_without_additional_records_are_looked_up() {
    let dns = DnsServer::start().await;
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    // Weight 0 counts as 1.
    dns.set_srv(
        SRV,
        &[
            (0, 0, a.addr.port(), "a.orders.test"),
            (0, 1, b.addr.port(), "B.Orders.Test"),
        ],
        1,
    );
    dns.set_a("a.orders.test", &["127.0.0.1"], 1);
    dns.set_a("b.orders.test", &["127.0.0.1"], 1);
    let gw = Gateway::start(&config(&dns, &srv_entry(""), ""), &[]).await;
    let report = gw.upstreams().await;
    assert_eq!(
        sorted(labels(&report)),
        sorted(vec![a.host_port(), b.host_port()]),
        "{report}"
    );
    assert_eq!(target(&report, &a.host_port())["weight"], 1, "{report}");
    ok_requests(&gw, 10).await;
    assert_eq!((a.hits(), b.hits()), (5, 5));
    assert!(dns.queries("a.orders.test") >= 1);
    assert!(dns.queries("b.orders.test") >= 1);

    // A target name that stops resolving is left out; the other stays.
    dns.remove("b.orders.test");
    wait_targets(&gw, &[a.host_port()]).await;
    ok_requests(&gw, 4).await;
    assert_eq!(a.hits(), 9);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Reload and the CLI
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_reload_keeps_the_addresses_even_when_dns_fails() {
    let dns = DnsServer::start().await;
    let (port, ups) = same_port(&["a", "b"]).await;
    let (a, b) = (&ups[0], &ups[1]);
    dns.set_a(NAME, &[&ip(0), &ip(1)], 1);
    let yaml = config(&dns, &dns_entry(port, ""), "");
    let gw = Gateway::start(&yaml, &[]).await;
    let source = format!("{NAME}:{port}");
    let load = Load::start(gw.addr, 4);
    wait_hits(a, 20, WAIT, "a serves").await;
    wait_hits(b, 20, WAIT, "b serves").await;

    // From now on DNS answers nothing: the new version can only carry the
    // addresses over.
    dns.fail_all(Some(Rcode::ServFail));
    let failed = lookups(&gw, &source, "failed").await;
    wait_lookups(&gw, &source, "failed", failed + 1.0).await;
    let version = gw.upstreams().await["version"].clone();
    let changed = yaml.replace("request: 5s", "request: 4s");
    assert_ne!(changed, yaml);
    gw.reload(&changed, &[]).await;
    let report = gw.upstreams().await;
    assert_ne!(report["version"], version, "a new config version");
    assert_eq!(
        sorted(addresses(&report, 0)),
        [hp(0, port), hp(1, port)],
        "{report}"
    );
    load.assert_clean("across the reload");

    // The new version looks up (and fails) too, and keeps serving both.
    let queries = dns.queries(NAME);
    let failed = lookups(&gw, &source, "failed").await;
    wait_lookups(&gw, &source, "failed", failed + 2.0).await;
    assert!(dns.queries(NAME) > queries);
    let (a0, b0) = (a.hits(), b.hits());
    wait_hits(a, a0 + 50, WAIT, "a still serves").await;
    wait_hits(b, b0 + 50, WAIT, "b still serves").await;
    load.stop().await;
    let report = gw.upstreams().await;
    assert!(
        svc(&report)["discovery"][0]["error"].is_string(),
        "{report}"
    );
    gw.shutdown().await;
}

/// `tollgate routes --config <file> /x`, run while the test's DNS server answers.
async fn routes_cli(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.yaml");
    std::fs::write(&f, yaml).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["routes", "--config", f.to_str().unwrap(), "/x"])
        .env_remove("TOLLGATE_CONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), child)
        .await
        .expect("tollgate routes exits within 20s")
        .expect("run tollgate");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tollgate routes failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn tollgate_routes_lists_the_resolved_addresses() {
    let dns = DnsServer::start().await;
    let port = 8080;
    dns.set_a(NAME, &[&ip(0), &ip(1)], 1);
    let out = routes_cli(&config(&dns, &dns_entry(port, ""), "")).await;
    for i in 0..2 {
        let want = format!("{} (weight 1, dns {NAME}:{port})", hp(i, port));
        assert!(out.contains(&want), "{want:?} in:\n{out}");
    }
    let want = format!("\n    dns {NAME}:{port}: 2 address(es)\n");
    assert!(out.contains(&want), "{want:?} in:\n{out}");
    assert!(dns.queries(NAME) >= 1);

    // A name that does not resolve says so.
    dns.remove(NAME);
    let out = routes_cli(&config(&dns, &dns_entry(port, ""), "")).await;
    let want = format!("\n    dns {NAME}:{port}: no addresses (");
    assert!(out.contains(&want), "{want:?} in:\n{out}");
    assert!(
        out.contains("no targets (503 no_healthy_upstream)"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

#[test]
fn invalid_dns_entries_are_config_errors_at_their_line() {
    let head = "upstreams:\n  svc:\n    targets:\n";
    let tail = "routes:\n  - { name: r, match: { path_prefix: / }, upstream: svc }\n";
    // (config, key path, line, part of the message)
    let cases: Vec<(String, &str, usize, &str)> = vec![
        (
            format!(
                "{head}      - url: http://127.0.0.1:9000\n        dns: \"orders.test:80\"\n{tail}"
            ),
            "upstreams.svc.targets[0].dns",
            5,
            "both url and dns",
        ),
        (
            format!("{head}      - dns: orders.test\n{tail}"),
            "upstreams.svc.targets[0].dns",
            4,
            "host:port",
        ),
        (
            format!("{head}      - dns: \"orders.test:80\"\n        refresh: 500ms\n{tail}"),
            "upstreams.svc.targets[0].refresh",
            5,
            "at least 1s",
        ),
        (
            format!("resolvers: [\"not an ip\"]\n{head}      - dns: \"orders.test:80\"\n{tail}"),
            "resolvers[0]",
            1,
            "not an ip",
        ),
        (
            format!("{head}      - dns: \"10.0.0.1:80\"\n{tail}"),
            "upstreams.svc.targets[0].dns",
            4,
            "IP address",
        ),
    ];
    for (yaml, path, line, message) in cases {
        let errors = match tollgate::config::load_str(&yaml, "t.yaml") {
            Ok(_) => panic!("expected an error at {path} for:\n{yaml}"),
            Err(e) => e.0,
        };
        assert_eq!(errors.len(), 1, "one error for:\n{yaml}\n{errors:#?}");
        let e = &errors[0];
        assert_eq!((e.path.as_str(), e.line), (path, line), "{e}\n---\n{yaml}");
        let text = e.to_string();
        assert!(text.starts_with(&format!("t.yaml:{line}:")), "{text}");
        assert!(text.contains(&format!(" {path}: ")), "{text}");
        assert!(text.contains(message), "{message:?} in {text}");
    }
}
