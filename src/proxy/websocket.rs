//! WebSocket tunnelling (docs/guide/protocols.md).
//!
//! An upgrade request is an ordinary request until the upstream answers: it is
//! routed and goes through the route's policies like any other, then goes
//! upstream as an HTTP/1.1 `Upgrade: websocket` request (the pool's `send`, no
//! special client). When the upstream switches protocols, the client gets the
//! switch too (101 on HTTP/1.1, 200 on an RFC 8441 extended CONNECT over
//! HTTP/2) and a task owned by the client connection copies bytes both ways
//! until either side closes, the tunnel idles for `idle_timeout`, or shutdown
//! cuts it. The request's record lives in that task, so the access-log line is
//! written when the tunnel closes, with its bytes and duration.
//!
//! An `Upgrade` for any other protocol (h2c, TLS, ...) is not tunnelled: the
//! header is hop-by-hop and dropped, and the request is served as a plain
//! request, as NGINX does without an explicit upgrade configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::upstream::pool::UpstreamBody;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::ResponseBody;
use super::record::RequestRecord;
use crate::error::GatewayError;

static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// How long a tunnel waits for the second side to close once the first did.
/// A WebSocket ends with a close handshake and then the server's TCP close;
/// a client that does not close its end afterwards is not waited for longer.
const LINGER: Duration = Duration::from_secs(2);

/// How the client asked for the WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// HTTP/1.1 `GET` with `Upgrade: websocket` and `Connection: upgrade`.
    Http1,
    /// HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441).
    Http2,
}

/// A WebSocket handshake in progress: the client's side of the upgrade, and
/// the upstream's once it switched protocols.
pub struct Upgrade {
    origin: Origin,
    client: OnUpgrade,
    upstream: Option<OnUpgrade>,
}

/// Whether `req` asks for a WebSocket. An RFC 8441 request becomes a `GET`
/// from here on (routing, policies and the upstream see what an HTTP/1.1
/// client would have sent). An extended CONNECT for another protocol is
/// refused with 400.
pub fn detect(req: &mut Request<Incoming>) -> Result<Option<Upgrade>, GatewayError> {
    if req.method() == Method::CONNECT
        && let Some(protocol) = req.extensions().get::<hyper::ext::Protocol>()
    {
        if !protocol.as_str().eq_ignore_ascii_case("websocket") {
            return Err(GatewayError::BadRequest(
                "only the websocket protocol can be tunnelled with extended CONNECT",
            ));
        }
        let Some(client) = req.extensions_mut().remove::<OnUpgrade>() else {
            return Ok(None);
        };
        *req.method_mut() = Method::GET;
        return Ok(Some(Upgrade {
            origin: Origin::Http2,
            client,
            upstream: None,
        }));
    }
    let h = req.headers();
    if req.version() != Version::HTTP_11
        || req.method() != Method::GET
        || !has_token(h, &header::UPGRADE, "websocket")
        || !has_token(h, &header::CONNECTION, "upgrade")
    {
        return Ok(None);
    }
    Ok(req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .map(|client| Upgrade {
            origin: Origin::Http1,
            client,
            upstream: None,
        }))
}

impl Upgrade {
    /// Puts back what the hop-by-hop strip removed and an HTTP/1.1 upstream
    /// needs: `Connection: upgrade`, `Upgrade: websocket`, and for an RFC 8441
    /// client (which sends no key) a fresh `Sec-WebSocket-Key`.
    pub fn prepare_request(&self, h: &mut HeaderMap) {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if self.origin == Origin::Http2 {
            h.insert(SEC_WEBSOCKET_KEY.clone(), websocket_key());
            h.entry(SEC_WEBSOCKET_VERSION.clone())
                .or_insert(HeaderValue::from_static("13"));
        }
    }

    /// Looks at the upstream's answer: `true` when it switched to WebSocket
    /// (its side of the upgrade is kept); `false` when the answer is passed on
    /// as a plain response. A switch to another protocol, or (for an HTTP/2
    /// client, for whom any 2xx opens the tunnel) a 2xx that is not a switch,
    /// is a bad answer: 502.
    pub fn switch(
        &mut self,
        resp: &mut Response<UpstreamBody>,
        upstream: &str,
    ) -> Result<bool, GatewayError> {
        let bad = || GatewayError::UpstreamUnavailable {
            upstream: upstream.to_string(),
        };
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            if self.origin == Origin::Http2 && status.is_success() {
                tracing::warn!(upstream, %status, "upstream answered a WebSocket upgrade without switching protocols");
                return Err(bad());
            }
            return Ok(false);
        }
        if !has_token(resp.headers(), &header::UPGRADE, "websocket") {
            tracing::warn!(
                upstream,
                "upstream switched to a protocol other than websocket"
            );
            return Err(bad());
        }
        self.upstream = Some(hyper::upgrade::on(&mut *resp));
        Ok(true)
    }

    /// The client's answer to a switch, from the upstream's (hop-by-hop
    /// headers already stripped): 101 with the upgrade headers for HTTP/1.1,
    /// 200 without the HTTP/1.1 handshake headers for HTTP/2.
    pub fn answer(&self, resp: Response<UpstreamBody>) -> Response<ResponseBody> {
        let (mut parts, _empty) = resp.into_parts();
        match self.origin {
            Origin::Http1 => {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                parts
                    .headers
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            Origin::Http2 => {
                parts.status = StatusCode::OK;
                parts.headers.remove(&SEC_WEBSOCKET_ACCEPT);
            }
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, ResponseBody::empty())
    }
}

/// Finishes the exchange of an upgrade request: counts it and, when both sides
/// switched, starts the tunnel on the client connection with the record;
/// otherwise the record goes with the response body as for any request.
pub fn answered(
    up: Upgrade,
    resp: &mut Response<ResponseBody>,
    mut record: Box<RequestRecord>,
    gateway_error: bool,
) {
    let snapshot = record.snapshot.clone();
    let metrics = record
        .ex
        .route
        .map(|i| snapshot.routes[i].metrics.websocket());
    let status = resp.status();
    let switched = match up.origin {
        Origin::Http1 => status == StatusCode::SWITCHING_PROTOCOLS,
        Origin::Http2 => status == StatusCode::OK,
    };
    let Some(upstream) = up.upstream.filter(|_| switched && !gateway_error) else {
        let mut gateway_error = gateway_error;
        if up.origin == Origin::Http2 && status.is_success() {
            // An HTTP/2 client reads any 2xx to its CONNECT as an open tunnel;
            // a route that answers directly cannot give it one.
            let e = GatewayError::BadRequest("this route cannot open a WebSocket");
            let mut refusal = e
                .to_response(record.ex.request_id.to_str().unwrap_or_default())
                .map(ResponseBody::full);
            refusal.headers_mut().insert(
                crate::headers::X_REQUEST_ID.clone(),
                record.ex.request_id.clone(),
            );
            *resp = refusal;
            record.answered(resp.status(), Some(e.code()));
            gateway_error = true;
        }
        if let Some(m) = metrics {
            if gateway_error { &m.error } else { &m.refused }.inc();
        }
        resp.body_mut().set_record(record);
        return;
    };
    if let Some(m) = metrics {
        m.upgraded.inc();
        m.active.inc();
    }
    record.switched_protocols();
    let conn = record.conn.clone();
    let client = up.client;
    conn.spawn_tunnel(move |cut| async move {
        let snapshot = record.snapshot.clone();
        let metrics = record
            .ex
            .route
            .map(|i| snapshot.routes[i].metrics.websocket());
        let traffic = Traffic::new();
        record.ex.bytes_in = Some(traffic.bytes_in.clone());
        let started = Instant::now();
        let end = tunnel(
            client,
            upstream,
            &traffic,
            snapshot.limits.idle_timeout,
            &cut,
        )
        .await;
        let (bytes_in, bytes_out) = (
            traffic.bytes_in.load(Ordering::Relaxed),
            traffic.bytes_out.load(Ordering::Relaxed),
        );
        if let Some(m) = metrics {
            m.active.dec();
            m.duration.observe(started.elapsed().as_secs_f64());
            m.bytes_in.inc_by(bytes_in);
            m.bytes_out.inc_by(bytes_out);
        }
        record.body_done(bytes_out, end.is_none());
        if let Some(error) = end {
            record.answered(status, Some(error));
        }
    });
}

/// Runs the tunnel until it ends; `None` when either side closed it, else the
/// access log's `error` code for why the gateway ended it.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    traffic: &Traffic,
    idle: Duration,
    cut: &CancellationToken,
) -> Option<&'static str> {
    // Both sides hand over their connection once the heads are through.
    let joined = tokio::select! {
        j = tokio::time::timeout(idle, async { tokio::try_join!(client, upstream) }) => j,
        _ = cut.cancelled() => return Some("shutdown"),
    };
    let (client, upstream) = match joined {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "WebSocket upgrade did not complete");
            return Some("upgrade_failed");
        }
        Err(_) => return Some("upgrade_failed"),
    };
    let client = Metered {
        io: TokioIo::new(client),
        traffic,
        inbound: true,
    };
    let upstream = Metered {
        io: TokioIo::new(upstream),
        traffic,
        inbound: false,
    };
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut upstream_rx, mut upstream_tx) = tokio::io::split(upstream);
    // Each direction passes on the end of its stream as a shutdown of the other
    // side's write half.
    let inbound = async {
        let r = tokio::io::copy(&mut client_rx, &mut upstream_tx).await;
        let _ = upstream_tx.shutdown().await;
        r
    };
    let outbound = async {
        let r = tokio::io::copy(&mut upstream_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
        r
    };
    tokio::pin!(inbound, outbound);
    let (mut inbound_done, mut outbound_done) = (false, false);
    let mut linger: Option<Instant> = None;
    loop {
        let deadline = match linger {
            Some(at) => at,
            None => traffic.last_activity() + idle,
        };
        tokio::select! {
            r = &mut inbound, if !inbound_done => {
                inbound_done = true;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "WebSocket tunnel broke (client side)");
                    return Some("tunnel_error");
                }
            }
            r = &mut outbound, if !outbound_done => {
                outbound_done = true;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "WebSocket tunnel broke (upstream side)");
                    return Some("tunnel_error");
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if linger.is_some() {
                    // The other side never closed after the first did: the
                    // WebSocket is over anyway.
                    return None;
                }
                if traffic.last_activity() + idle <= Instant::now() {
                    return Some("tunnel_idle_timeout");
                }
            }
            _ = cut.cancelled() => return Some("shutdown"),
        }
        if inbound_done && outbound_done {
            return None;
        }
        if (inbound_done || outbound_done) && linger.is_none() {
            linger = Some(Instant::now() + LINGER.min(idle));
        }
    }
}

/// What flowed through a tunnel, and when it last did.
struct Traffic {
    started: Instant,
    /// Milliseconds after `started` of the last read on either side.
    last_ms: AtomicU64,
    /// Client to upstream; shared with the record for the access log.
    bytes_in: Arc<AtomicU64>,
    bytes_out: AtomicU64,
}

impl Traffic {
    fn new() -> Self {
        Traffic {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: AtomicU64::new(0),
        }
    }

    fn last_activity(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn note(&self, inbound: bool, n: usize) {
        let counter = if inbound {
            &*self.bytes_in
        } else {
            &self.bytes_out
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

/// One side of a tunnel, noting what is read from it.
struct Metered<'a, S> {
    io: S,
    traffic: &'a Traffic,
    /// Reads from this side go upstream (it is the client).
    inbound: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.traffic.note(this.inbound, n);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Whether a comma-separated header (any of its lines) lists `token`.
fn has_token(h: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A random `Sec-WebSocket-Key`: 16 bytes, base64 (RFC 6455 §4.1).
fn websocket_key() -> HeaderValue {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let n = fastrand::u128(..).to_be_bytes();
    let mut out = [b'='; 24];
    for (i, chunk) in n.chunks(3).enumerate() {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for j in 0..=chunk.len() {
            out[i * 4 + j] = ALPHABET[((v >> (18 - 6 * j)) & 63) as usize];
        }
    }
    HeaderValue::from_bytes(&out)
        .unwrap_or_else(|_| HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_keys_are_16_bytes_of_base64() {
        for _ in 0..100 {
            let k = websocket_key();
            let s = k.to_str().unwrap();
            assert_eq!(s.len(), 24);
            assert!(s.ends_with("=="), "{s}");
            assert!(!s[..22].contains('='), "{s}");
        }
        assert_ne!(websocket_key(), websocket_key());
    }

    #[test]
    fn tokens_match_in_lists_and_case_insensitively() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&h, &header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, &header::CONNECTION, "close"));
        assert!(!has_token(&h, &header::UPGRADE, "websocket"));
    }
}
