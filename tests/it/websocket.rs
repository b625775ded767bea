//! WebSocket tunnelling: real tokio-tungstenite clients through the gateway to
//! a WebSocket echo upstream in this process (plain and TLS on both sides), the
//! route's policies on the upgrade, upstream refusals, the idle timeout,
//! reloads and shutdown with open tunnels, RFC 8441 over HTTP/2, metrics and
//! the access log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::support::{self, Behavior, Gateway, Upstream, dead_addr, metric, wait_until};

const WAIT: Duration = Duration::from_secs(10);

/// What the echo upstream saw.
#[derive(Default)]
struct Seen {
    /// Request headers of each handshake (name -> value, lowercase names).
    handshakes: Vec<Vec<(String, String)>>,
    /// Close frames received from clients: (code, reason).
    closes: Vec<(u16, String)>,
}

/// A WebSocket echo server on loopback. Echoes text and binary; the text
/// `close-me` makes it close with 4002 "bye from upstream"; `silent` is not
/// echoed. Offers back the subprotocol `chat` when asked for it.
struct WsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    async fn start() -> WsUpstream {
        WsUpstream::start_with(None).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    break;
                };
                let seen = seen2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => echo(tcp, seen).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                echo(s, seen).await;
                            }
                        }
                    }
                });
            }
        });
        WsUpstream { addr, seen, task }
    }

    fn handshakes(&self) -> Vec<Vec<(String, String)>> {
        self.seen.lock().unwrap().handshakes.clone()
    }

    fn closes(&self) -> Vec<(u16, String)> {
        self.seen.lock().unwrap().closes.clone()
    }
}

// tungstenite's handshake callback returns its (large) error response type.
#[allow(clippy::result_large_err)]
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S, seen: Arc<Mutex<Seen>>) {
    let seen2 = seen.clone();
    let callback = move |req: &WsRequest, mut resp: WsResponse| {
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        seen2.lock().unwrap().handshakes.push(headers);
        if req
            .headers()
            .get("sec-websocket-protocol")
            .is_some_and(|p| p.to_str().unwrap_or("").contains("chat"))
        {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(t) if t.as_str() == "close-me" => {
                let _ = ws
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(4002),
                        reason: "bye from upstream".into(),
                    })))
                    .await;
            }
            Message::Text(t) if t.as_str() == "silent" => {}
            Message::Text(t) if t.as_str().starts_with("big:") => {
                let n: usize = t.as_str()[4..].parse().unwrap_or(0);
                if ws.send(Message::binary(vec![7u8; n])).await.is_err() {
                    break;
                }
            }
            Message::Text(_) | Message::Binary(_) => {
                let sent = ws.send(msg).await;
                if sent.is_err() {
                    break;
                }
            }
            Message::Close(frame) => {
                if let Some(f) = frame {
                    seen.lock()
                        .unwrap()
                        .closes
                        .push((u16::from(f.code), f.reason.to_string()));
                }
                // tungstenite answers the close itself; flush it.
                let _ = ws.flush().await;
            }
            // Pings are answered by tungstenite.
            _ => {}
        }
    }
}

/// A config with one `chat` route to `${UP}`. Tunnels still open when a test
/// ends are cut after a short shutdown grace.
fn yaml(extra_server: &str, route_extra: &str, tail: &str) -> String {
    let mut server = extra_server.to_string();
    if !server.contains("shutdown_grace") {
        server.push_str("\nshutdown_grace: 200ms");
    }
    format!(
        "{}upstreams:
  chat:
    targets: [{{ url: 'http://${{UP}}' }}]
routes:
  - name: chat
    match: {{ path_prefix: /chat }}
    upstream: chat
{route_extra}{tail}",
        support::server_block(&server)
    )
}

async fn gateway(up: &WsUpstream, extra_server: &str) -> Gateway {
    Gateway::start(&yaml(extra_server, "", ""), &[("UP", up.addr.to_string())]).await
}

type Client = WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    let mut req = format!("ws://{}{path}", gw.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, _resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")?;
    Ok(ws)
}

/// The HTTP status of a refused handshake.
fn refused_status(r: Result<Client, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the upgrade succeeded"),
    }
}

/// The next data or close message (pings/pongs are returned too).
async fn next<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Message {
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no message in time")
        .expect("stream ended")
        .expect("websocket error")
}

async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    assert_eq!(next(ws).await, msg);
}

/// Waits until the peer ends the stream (close frame, EOF or reset).
async fn closed_within<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    limit: Duration,
) {
    let ended = tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel was not closed within {limit:?}");
}

#[tokio::test]
async fn text_binary_ping_and_close_codes_pass_both_ways() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "").await;

    let mut ws = connect(&gw, "/chat/room1", &[("x-request-id", "ws-basic")])
        .await
        .unwrap();
    round_trip(&mut ws, Message::text("hello")).await;
    round_trip(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );
    // Client-initiated close: code and reason reach the upstream, whose reply
    // comes back.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye from client".into(),
    })))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4001),
        other => panic!("expected the close echo, got {other:?}"),
    }
    support::wait_until("the upstream saw the close", async || {
        !up.closes().is_empty()
    })
    .await;
    assert_eq!(up.closes(), vec![(4001, "bye from client".to_string())]);

    // The upgrade headers reached the upstream with the gateway's own.
    let hs = &up.handshakes()[0];
    let get = |n: &str| hs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(get("upgrade"), Some("websocket"));
    assert_eq!(get("connection"), Some("upgrade"));
    assert_eq!(get("sec-websocket-version"), Some("13"));
    assert!(get("sec-websocket-key").is_some());
    assert_eq!(get("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(get("x-request-id"), Some("ws-basic"));

    // The log line is written when the tunnel ends: 101 with its bytes.
    let line = gw.wait_log_for("ws-basic").await;
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["route"], "chat");
    assert_eq!(line["error"], serde_json::Value::Null, "{line}");
    assert!(line["bytes_in"].as_u64().unwrap() > 20, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 20, "{line}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_parked_keep_alive_connection_can_still_upgrade() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "").await;
    // A first request on the connection (answered by the gateway: no route),
    // then a second of idling parks it; the upgrade comes after.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let first = support::read_one_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 404"), "{first}");
    gw.wait_parked(1).await;

    let req = format!("ws://{}/chat/after-park", gw.addr)
        .into_client_request()
        .unwrap();
    let (mut ws, resp) = tokio::time::timeout(WAIT, client_async(req, stream))
        .await
        .expect("handshake timed out")
        .unwrap();
    assert_eq!(resp.status(), 101);
    gw.wait_parked(0).await;
    round_trip(&mut ws, Message::text("still here")).await;
    round_trip(&mut ws, Message::binary(vec![7u8; 70_000])).await;
    ws.close(None).await.unwrap();
    closed_within(&mut ws, WAIT).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn the_upstream_closing_with_a_code_reaches_the_client() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut ws = connect(&gw, "/chat", &[]).await.unwrap();
    ws.send(Message::text("close-me")).await.unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4002);
            assert_eq!(f.reason.as_str(), "bye from upstream");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn subprotocol_is_negotiated_through_the_gateway() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut req = format!("ws://{}/chat", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("chat, superchat"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert!(resp.headers().contains_key("x-request-id"));
    round_trip(&mut ws, Message::text("hi")).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_ten_mib_message_is_carried_both_ways() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut ws = connect(&gw, "/chat", &[]).await.unwrap();
    let big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    round_trip(&mut ws, Message::binary(big)).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn auth_refuses_an_unauthenticated_upgrade_and_admits_a_key() {
    let up = WsUpstream::start().await;
    let tail = "auth:
  api_keys:
    clients:
      header: X-API-Key
      keys: [{ id: app, key: s3cret }]
";
    let yaml = yaml("", "    auth: [api_key:clients]\n", tail);
    let gw = Gateway::start(&yaml, &[("UP", up.addr.to_string())]).await;

    assert_eq!(refused_status(connect(&gw, "/chat", &[]).await), 401);
    assert_eq!(
        refused_status(connect(&gw, "/chat", &[("x-api-key", "nope")]).await),
        401
    );
    assert!(
        up.handshakes().is_empty(),
        "no tunnel may reach the upstream"
    );

    let mut ws = connect(&gw, "/chat", &[("x-api-key", "s3cret")])
        .await
        .unwrap();
    round_trip(&mut ws, Message::text("authorized")).await;
    let hs = &up.handshakes()[0];
    assert!(hs.iter().any(|(k, v)| k == "x-consumer-id" && v == "app"));
    ws.close(None).await.unwrap();

    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_websocket_upgrades_total{route="chat",result="error"}"#
        ),
        Some(2.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn rate_limits_refuse_upgrades_with_429() {
    let up = WsUpstream::start().await;
    let tail = "rate_limits:
  one:
    rate: 1/m
    burst: 1
    key: client_ip
";
    let yaml = yaml("", "    rate_limit: [one]\n", tail);
    let gw = Gateway::start(&yaml, &[("UP", up.addr.to_string())]).await;
    let mut ws = connect(&gw, "/chat", &[]).await.unwrap();
    round_trip(&mut ws, Message::text("first")).await;
    assert_eq!(refused_status(connect(&gw, "/chat", &[]).await), 429);
    // The open tunnel is not affected by the refusal of the next one.
    round_trip(&mut ws, Message::text("still here")).await;
    assert_eq!(up.handshakes().len(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_refusing_the_upgrade_is_passed_through() {
    for (status, body) in [(404, "no such room"), (400, "bad handshake")] {
        let up = Upstream::start("plain", Behavior::Status(status, body)).await;
        let gw = Gateway::start(&yaml("", "", ""), &[("UP", up.host_port())]).await;
        assert_eq!(refused_status(connect(&gw, "/chat", &[]).await), status);
        // The connection stays usable for plain requests afterwards.
        let r = support::get(&gw.url("/chat")).await.unwrap();
        assert_eq!(r.status, status);
        let m = gw.metrics().await;
        assert_eq!(
            metric(
                &m,
                r#"tollgate_websocket_upgrades_total{route="chat",result="refused"}"#
            ),
            Some(1.0)
        );
        gw.shutdown().await;
    }
    // An upstream that does not speak WebSocket at all answers 200: passed on,
    // and the client's handshake fails on its own.
    let up = Upstream::echo("plain").await;
    let gw = Gateway::start(&yaml("", "", ""), &[("UP", up.host_port())]).await;
    assert_eq!(refused_status(connect(&gw, "/chat", &[]).await), 200);
    gw.shutdown().await;
}

/// Guards the connection pool: each tunnel gets a connection of its own, an
/// upgraded connection never goes back to the pool, and a 101 is never retried.
#[tokio::test]
async fn tunnels_own_their_upstream_connections_and_are_not_retried() {
    let up = WsUpstream::start().await;
    let yaml = format!(
        "{}upstreams:
  chat:
    targets: [{{ url: 'http://${{UP}}' }}]
    pool: {{ max_idle_per_target: 4 }}
    retries: {{ attempts: 2, on: [connect_error, timeout, 502, 503, 504] }}
routes:
  - name: chat
    match: {{ path_prefix: /chat }}
    upstream: chat
",
        support::server_block("shutdown_grace: 200ms")
    );
    let gw = Gateway::start(&yaml, &[("UP", up.addr.to_string())]).await;
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        tunnels.push(connect(&gw, "/chat", &[]).await.unwrap());
    }
    // Interleaved: each tunnel hears only its own echo.
    for round in 0..3 {
        for (i, ws) in tunnels.iter_mut().enumerate() {
            ws.send(Message::text(format!("{i}/{round}")))
                .await
                .unwrap();
        }
        for (i, ws) in tunnels.iter_mut().enumerate() {
            assert_eq!(next(ws).await, Message::text(format!("{i}/{round}")));
        }
    }
    for mut ws in tunnels {
        ws.close(None).await.unwrap();
        closed_within(&mut ws, WAIT).await;
    }
    // After they closed, new upgrades still work (no dead upgraded connection
    // was handed out by the pool).
    for i in 0..3 {
        let mut ws = connect(&gw, "/chat", &[]).await.unwrap();
        round_trip(&mut ws, Message::text(format!("again {i}"))).await;
        ws.close(None).await.unwrap();
        closed_within(&mut ws, WAIT).await;
    }
    assert_eq!(
        up.handshakes().len(),
        6,
        "one handshake per tunnel, none retried"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_retries_total{reason="101",upstream="chat"}"#
        ),
        None
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_dead_upstream_is_a_502() {
    let dead = dead_addr().await;
    let gw = Gateway::start(&yaml("", "", ""), &[("UP", dead.to_string())]).await;
    assert_eq!(refused_status(connect(&gw, "/chat", &[]).await), 502);
    gw.shutdown().await;
}

#[tokio::test]
async fn other_upgrades_are_served_as_plain_requests() {
    let up = Upstream::echo("plain").await;
    let gw = Gateway::start(&yaml("", "", ""), &[("UP", up.host_port())]).await;
    let r = support::get_with(
        &gw.url("/chat"),
        &[("connection", "upgrade"), ("upgrade", "h2c")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert!(seen["headers"].get("upgrade").is_none(), "{seen}");
    assert!(seen["headers"].get("connection").is_none(), "{seen}");
    gw.shutdown().await;
}

/// Reads until the close frame and returns its code (`None`: the stream ended
/// without one).
async fn close_code<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Option<u16> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the tunnel was not closed in time")
}

const LIMITED: &str = "    websocket: { max_message_bytes: 1KiB }\n";

#[tokio::test]
async fn a_message_over_max_message_bytes_closes_the_tunnel_with_1009() {
    let up = WsUpstream::start().await;
    let gw = Gateway::start(&yaml("", LIMITED, ""), &[("UP", up.addr.to_string())]).await;
    let mut ws = connect(&gw, "/chat", &[("x-request-id", "too-big")])
        .await
        .unwrap();
    // Up to the limit, both ways.
    round_trip(&mut ws, Message::binary(vec![1u8; 1024])).await;
    round_trip(&mut ws, Message::text("x".repeat(1000))).await;
    // One byte over: the client gets 1009 and the message never arrives.
    ws.send(Message::binary(vec![2u8; 1025])).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));
    let line = gw.wait_log_for("too-big").await;
    assert_eq!(line["error"], "websocket_message_too_big", "{line}");
    // The upstream was told too, between frames, with the same code.
    wait_until("the upstream to see the 1009 close", async || {
        up.closes().iter().any(|(code, _)| *code == 1009)
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_message_over_the_limit_is_cut_too() {
    let up = WsUpstream::start().await;
    let gw = Gateway::start(&yaml("", LIMITED, ""), &[("UP", up.addr.to_string())]).await;
    let mut ws = connect(&gw, "/chat", &[("x-request-id", "big-down")])
        .await
        .unwrap();
    ws.send(Message::text("big:1000")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![7u8; 1000]));
    ws.send(Message::text("big:5000")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));
    let line = gw.wait_log_for("big-down").await;
    assert_eq!(line["error"], "websocket_message_too_big", "{line}");
    gw.shutdown().await;
}

#[tokio::test]
async fn without_a_limit_large_messages_pass() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut ws = connect(&gw, "/chat", &[]).await.unwrap();
    round_trip(&mut ws, Message::binary(vec![3u8; 256 * 1024])).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_route_idle_timeout_overrides_the_server_one() {
    let up = WsUpstream::start().await;
    let yaml = yaml(
        "limits:\n  idle_timeout: 60s",
        "    websocket: { idle_timeout: 300ms }\n",
        "",
    );
    let gw = Gateway::start(&yaml, &[("UP", up.addr.to_string())]).await;
    let mut quiet = connect(&gw, "/chat", &[("x-request-id", "route-idle")])
        .await
        .unwrap();
    round_trip(&mut quiet, Message::text("hello")).await;
    closed_within(&mut quiet, Duration::from_secs(3)).await;
    let line = gw.wait_log_for("route-idle").await;
    assert_eq!(line["error"], "tunnel_idle_timeout", "{line}");
    gw.shutdown().await;
}

#[test]
fn websocket_limits_are_validated() {
    let text = "\
upstreams:
  chat:
    targets: [{ url: 'http://127.0.0.1:9' }]
routes:
  - name: a
    match: { path_prefix: /a }
    upstream: chat
    websocket: { max_message_bytes: 0, idle_timeout: 0s }
  - name: b
    match: { path: /b }
    respond: { status: 200 }
    websocket: { idle_timeout: 1s }
";
    let e = tollgate::config::load_str(text, "t.yaml")
        .unwrap_err()
        .to_string();
    for want in [
        "t.yaml:8:37: routes[0].websocket.max_message_bytes: must be above zero",
        "t.yaml:8:54: routes[0].websocket.idle_timeout: must be above zero",
        "t.yaml:12:5: routes[1].websocket: websocket only applies to routes with an `upstream` (a tunnel goes to one)",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_and_traffic_keeps_it_open() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "limits:\n  idle_timeout: 400ms").await;
    let mut busy = connect(&gw, "/chat", &[("x-request-id", "busy")])
        .await
        .unwrap();
    let mut quiet = connect(&gw, "/chat", &[("x-request-id", "quiet")])
        .await
        .unwrap();
    // Messages every 100ms keep `busy` open well past the timeout.
    for i in 0..8 {
        round_trip(&mut busy, Message::text(format!("tick {i}"))).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    closed_within(&mut quiet, Duration::from_secs(3)).await;
    let line = gw.wait_log_for("quiet").await;
    assert_eq!(line["status"], 101);
    assert_eq!(line["error"], "tunnel_idle_timeout", "{line}");
    // The log line covers the tunnel's life, not just the handshake.
    assert!(line["duration_ms"].as_f64().unwrap() >= 400.0, "{line}");
    round_trip(&mut busy, Message::text("still open")).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_does_not_cut_an_open_tunnel() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut ws = connect(&gw, "/chat", &[]).await.unwrap();
    round_trip(&mut ws, Message::text("before")).await;
    let changed = yaml(
        "",
        "",
        "  - name: other\n    match: { path: /other }\n    respond: { status: 200 }\n",
    );
    gw.reload(&changed, &[("UP", up.addr.to_string())]).await;
    round_trip(&mut ws, Message::text("after reload")).await;
    // New upgrades use the new config.
    let mut ws2 = connect(&gw, "/chat", &[]).await.unwrap();
    round_trip(&mut ws2, Message::text("new")).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tunnel_on_a_listener_removed_by_reload_is_closed_after_the_grace() {
    let up = WsUpstream::start().await;
    let gw = Gateway::start(
        &yaml("shutdown_grace: 300ms", "", ""),
        &[("UP", up.addr.to_string())],
    )
    .await;
    let mut ws = connect(&gw, "/chat", &[("x-request-id", "on-removed")])
        .await
        .unwrap();
    round_trip(&mut ws, Message::text("before")).await;
    // The new config has another listener: `http` (the tunnel's) is removed.
    let moved = yaml("shutdown_grace: 300ms", "", "").replace("name: http\n", "name: moved\n");
    assert!(moved.contains("name: moved"), "{moved}");
    gw.reload(&moved, &[("UP", up.addr.to_string())]).await;
    // Still usable during the grace period...
    round_trip(&mut ws, Message::text("draining")).await;
    // ...then cut: within the grace and some slack, not at process shutdown.
    let started = std::time::Instant::now();
    closed_within(&mut ws, Duration::from_secs(3)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let line = gw.wait_log_for("on-removed").await;
    assert_eq!(line["error"], "shutdown", "{line}");
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_open_tunnels_after_the_grace_period() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "shutdown_grace: 300ms").await;
    let mut ws = connect(&gw, "/chat", &[("x-request-id", "cut")])
        .await
        .unwrap();
    round_trip(&mut ws, Message::text("hi")).await;
    let log = gw.log.clone();
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(gw.shutdown());
    // Within the grace the tunnel still works.
    round_trip(&mut ws, Message::text("during grace")).await;
    closed_within(&mut ws, Duration::from_secs(5)).await;
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("an open tunnel kept the gateway alive")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    support::wait_until("the tunnel's log line", async || {
        String::from_utf8_lossy(&log.0.lock().unwrap()).contains(r#""error":"shutdown""#)
    })
    .await;
}

#[tokio::test]
async fn metrics_count_upgrades_durations_and_bytes() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "").await;
    for _ in 0..2 {
        let mut ws = connect(&gw, "/chat", &[]).await.unwrap();
        round_trip(&mut ws, Message::text("0123456789")).await;
        ws.close(None).await.unwrap();
        closed_within(&mut ws, WAIT).await;
    }
    let mut open = connect(&gw, "/chat", &[]).await.unwrap();
    round_trip(&mut open, Message::text("open")).await;
    let want = |m: &str, s: &str| metric(m, s).unwrap_or_else(|| panic!("no {s} in\n{m}"));
    let m = support::wait_until("the tunnels to be counted as closed", async || {
        let m = gw.metrics().await;
        if metric(
            &m,
            r#"tollgate_websocket_tunnel_duration_seconds_count{route="chat"}"#,
        ) == Some(2.0)
        {
            Ok(m)
        } else {
            Err(m)
        }
    })
    .await;
    assert_eq!(
        want(
            &m,
            r#"tollgate_websocket_upgrades_total{route="chat",result="upgraded"}"#
        ),
        3.0
    );
    assert_eq!(
        want(&m, r#"tollgate_websocket_tunnels_active{route="chat"}"#),
        1.0
    );
    assert!(
        want(
            &m,
            r#"tollgate_websocket_tunnel_bytes_total{direction="in",route="chat"}"#
        ) >= 40.0
    );
    assert!(
        want(
            &m,
            r#"tollgate_websocket_tunnel_bytes_total{direction="out",route="chat"}"#
        ) >= 20.0
    );
    assert_eq!(
        want(
            &m,
            r#"tollgate_requests_total{method="GET",route="chat",status="101"}"#
        ),
        2.0
    );
    // A plain route has no WebSocket series.
    assert!(!m.contains(r#"tollgate_websocket_upgrades_total{route="_none""#));
    gw.shutdown().await;
}

/// RFC 8441: WebSocket over an HTTP/2 extended CONNECT (h2c, prior knowledge),
/// carried to the upstream as an HTTP/1.1 upgrade.
#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let resp = h2_connect(tcp, gw.addr, "/chat/h2", "websocket", "h2-ws").await;
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("sec-websocket-accept"));
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    round_trip(&mut ws, Message::text("over h2")).await;
    round_trip(&mut ws, Message::binary(vec![7u8; 100_000])).await;
    ws.close(None).await.unwrap();
    closed_within(&mut ws, WAIT).await;
    let hs = &up.handshakes()[0];
    assert!(hs.iter().any(|(k, v)| k == "upgrade" && v == "websocket"));
    let line = gw.wait_log_for("h2-ws").await;
    assert_eq!(line["status"], 200, "{line}");

    // Another protocol cannot be tunnelled.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let resp = h2_connect(tcp, gw.addr, "/chat/h2", "connect-udp", "h2-other").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(up.handshakes().len(), 1);
    gw.shutdown().await;

    // A route that answers directly cannot open a tunnel: its 200 would read
    // as one to an HTTP/2 client, so the answer is a 400.
    let tail =
        "  - name: static\n    match: { path: /static }\n    respond: { status: 200, body: hi }\n";
    let gw = Gateway::start(&yaml("", "", tail), &[("UP", up.addr.to_string())]).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let resp = h2_connect(tcp, gw.addr, "/static", "websocket", "h2-static").await;
    assert_eq!(resp.status(), 400);
    let line = gw.wait_log_for("h2-static").await;
    assert_eq!(line["status"], 400, "{line}");
    gw.shutdown().await;
}

/// Sends an RFC 8441 extended CONNECT for `path` over a new HTTP/2
/// connection on `io` and returns the answer's head.
async fn h2_connect<S>(
    io: S,
    authority: SocketAddr,
    path: &str,
    protocol: &'static str,
    request_id: &'static str,
) -> http::Response<hyper::body::Incoming>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = || {
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{authority}{path}"))
            .header("sec-websocket-version", "13")
            .header("x-request-id", request_id)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static(protocol));
        req
    };
    // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) may not be in yet.
    support::wait_until("extended CONNECT to be accepted", async || {
        sender.ready().await.unwrap();
        sender.send_request(request()).await
    })
    .await
}

/// A test CA issuing server certificates into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_path: PathBuf,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ws test ca");
        let cert = params.self_signed(&key).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, cert.pem()).unwrap();
        Pki {
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            dir,
            ca_path,
        }
    }

    /// (cert path, key path, server config) for `names`.
    fn server(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf, rustls::ServerConfig) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{file}.crt")),
            self.dir.path().join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        (c, k, config)
    }

    fn client(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// wss to a TLS listener, and on to an `https://` (wss) upstream.
#[tokio::test]
async fn wss_through_a_tls_listener_to_an_https_upstream() {
    let pki = Pki::new();
    let (_, _, upstream_tls) = pki.server("upstream", &["127.0.0.1"]);
    let up = WsUpstream::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(
        upstream_tls,
    ))))
    .await;
    let (cert, key, _) = pki.server("gateway", &["localhost"]);
    let p = |p: &PathBuf| p.display().to_string().replace('\\', "/");
    let yaml = format!(
        "server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
    - name: https
      bind: 127.0.0.1:0
      tls:
        certificates: [{{ cert: '{}', key: '{}' }}]
  admin:
    bind: 127.0.0.1:0
upstreams:
  chat:
    targets: [{{ url: 'https://${{UP}}' }}]
    tls: {{ ca: '{}' }}
routes:
  - name: chat
    match: {{ path_prefix: /chat }}
    upstream: chat
",
        p(&cert),
        p(&key),
        p(&pki.ca_path)
    );
    let gw = Gateway::start(&yaml, &[("UP", up.addr.to_string())]).await;
    let addr = gw.app().listener_addr("https").unwrap();
    for alpn in [vec![b"http/1.1".to_vec()], vec![]] {
        let mut config = pki.client();
        config.alpn_protocols = alpn;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (mut ws, resp) = client_async("wss://localhost/chat/secure", tls)
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        round_trip(&mut ws, Message::text("secret")).await;
        round_trip(&mut ws, Message::binary(vec![1u8; 1 << 20])).await;
        ws.close(None).await.unwrap();
        closed_within(&mut ws, WAIT).await;
    }
    // RFC 8441 over TLS (ALPN h2).
    let mut config = pki.client();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let resp = h2_connect(tls, addr, "/chat/secure", "websocket", "wss-h2").await;
    assert_eq!(resp.status(), 200);
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    round_trip(&mut ws, Message::text("secret over h2")).await;
    ws.close(None).await.unwrap();
    closed_within(&mut ws, WAIT).await;

    assert_eq!(up.handshakes().len(), 3);
    let hs = &up.handshakes()[0];
    assert!(
        hs.iter()
            .any(|(k, v)| k == "x-forwarded-proto" && v == "https")
    );
    gw.shutdown().await;
}

/// A rough throughput figure (not a pass/fail check): 64 MiB in 1 MiB binary
/// messages echoed directly and through the gateway.
/// `cargo test --release --test it -- --ignored --nocapture websocket::tunnel_throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn tunnel_throughput() {
    let up = WsUpstream::start().await;
    let gw = gateway(&up, "").await;
    let direct = format!("ws://{}/chat", up.addr);
    let through = format!("ws://{}/chat", gw.addr);
    for (name, url) in [("direct", direct), ("gateway", through)] {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let msg = Message::binary(vec![42u8; 1 << 20]);
        let started = std::time::Instant::now();
        for _ in 0..64 {
            round_trip(&mut ws, msg.clone()).await;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{name}: 64 MiB echoed in {secs:.3}s = {:.0} MiB/s each way",
            64.0 / secs
        );
        ws.close(None).await.unwrap();
    }
    gw.shutdown().await;
}
