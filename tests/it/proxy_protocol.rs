//! PROXY protocol v1 and v2 on a plain listener, end to end: the client
//! address from the header reaches IP rules, `X-Forwarded-For` and the access
//! log; untrusted, malformed and slow headers close the connection, counted.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn config(proxy: &str) -> String {
    format!(
        "server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
      proxy_protocol: {proxy}
  admin:
    bind: 127.0.0.1:0
  limits: {{ header_read_timeout: 300ms }}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
routes:
  - {{ name: closed, match: {{ path_prefix: /closed }}, upstream: up, ip_deny: [198.51.100.0/24] }}
  - {{ name: all, match: {{ path_prefix: / }}, upstream: up }}
"
    )
}

const TRUSTED: &str = "{ trusted: [127.0.0.0/8] }";

/// The v2 header of a TCP over IPv4 connection from `src`.
fn v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

/// Writes `header` then a GET of `path`, and returns the whole answer (the
/// gateway closes after it: `Connection: close`).
async fn exchange(gw: &Gateway, header: &[u8], path: &str, id: &str) -> String {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(
        format!(
            "GET {path} HTTP/1.1\r\nhost: a.test\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    tcp.write_all(&bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("no answer in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `bytes` and expects the connection to close with no answer.
async fn refused(gw: &Gateway, bytes: &[u8]) -> Duration {
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("the connection stayed open");
    assert!(
        read.is_err() || out.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&out)
    );
    started.elapsed()
}

async fn errors(gw: &Gateway, reason: &str) -> Option<f64> {
    metric(
        &gw.metrics().await,
        &format!("tollgate_proxy_protocol_errors_total{{listener=\"http\",reason=\"{reason}\"}}"),
    )
}

#[tokio::test]
async fn v1_and_v2_headers_name_the_client_for_forwarding_logs_and_ip_rules() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(TRUSTED), &[("UP", up.host_port())]).await;

    let answer = exchange(
        &gw,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 8080\r\n",
        "/x",
        "v1",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"x-forwarded-for\":\"203.0.113.7\""),
        "{answer}"
    );
    let line = gw.wait_log_for("v1").await;
    assert_eq!(line["client_ip"], "203.0.113.7", "{line}");

    let answer = exchange(&gw, &v2([198, 51, 100, 4], 1234), "/x", "v2").await;
    assert!(
        answer.contains("\"x-forwarded-for\":\"198.51.100.4\""),
        "{answer}"
    );
    assert_eq!(gw.wait_log_for("v2").await["client_ip"], "198.51.100.4");
    // IP rules see the header's address, not the balancer's.
    let answer = exchange(&gw, &v2([198, 51, 100, 4], 1234), "/closed", "deny").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = exchange(&gw, &v2([203, 0, 113, 8], 1234), "/closed", "allow").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // LOCAL (the balancer's own health check): the TCP peer.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let answer = exchange(&gw, &local, "/x", "local").await;
    assert!(
        answer.contains("\"x-forwarded-for\":\"127.0.0.1\""),
        "{answer}"
    );
    assert_eq!(up.hits(), 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn untrusted_malformed_missing_and_slow_headers_close_the_connection() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(TRUSTED), &[("UP", up.host_port())]).await;
    refused(
        &gw,
        b"PROXY TCP4 nonsense\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    // Without the header, a request is not taken on this listener.
    refused(&gw, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(errors(&gw, "malformed").await, Some(2.0));
    // Nothing sent: closed after header_read_timeout (300 ms).
    let took = refused(&gw, b"").await;
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(errors(&gw, "timeout").await, Some(1.0));
    assert_eq!(up.hits(), 0);
    gw.shutdown().await;

    // 127.0.0.1 is not a trusted balancer here.
    let gw = Gateway::start(
        &config("{ trusted: [10.0.0.0/8], timeout: 1s }"),
        &[("UP", up.host_port())],
    )
    .await;
    refused(
        &gw,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    assert_eq!(errors(&gw, "untrusted").await, Some(1.0));
    assert_eq!(up.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_turns_the_header_on_for_new_connections() {
    let up = Upstream::echo("up").await;
    let plain = config(TRUSTED).replace(&format!("      proxy_protocol: {TRUSTED}\n"), "");
    assert!(!plain.contains("proxy_protocol"));
    let gw = Gateway::start(&plain, &[("UP", up.host_port())]).await;
    let answer = exchange(&gw, b"", "/x", "before").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    gw.reload(&config(TRUSTED), &[("UP", up.host_port())]).await;
    let answer = exchange(
        &gw,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\n",
        "/x",
        "after",
    )
    .await;
    assert!(
        answer.contains("\"x-forwarded-for\":\"203.0.113.7\""),
        "{answer}"
    );
    gw.shutdown().await;
}

#[test]
fn proxy_protocol_settings_are_validated() {
    let text = "\
server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
      proxy_protocol: { trusted: [not-a-net], timeout: 0s }
    - name: other
      bind: 127.0.0.1:0
      proxy_protocol: { trusted: [] }
";
    let e = tollgate::config::load_str(text, "t.yaml")
        .unwrap_err()
        .to_string();
    for want in [
        "server.listeners[0].proxy_protocol.trusted[0]: expected an IP address or CIDR",
        "server.listeners[0].proxy_protocol.timeout: must be above zero",
        "server.listeners[1].proxy_protocol.trusted: list the balancers",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}
