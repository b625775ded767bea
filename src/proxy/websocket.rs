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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
        let limits = record
            .ex
            .route
            .map(|i| snapshot.routes[i].websocket)
            .unwrap_or_default();
        let limits = Limits {
            idle: limits.idle.unwrap_or(snapshot.limits.idle_timeout),
            max_message: limits.max_message,
        };
        let end = tunnel(client, upstream, &traffic, limits, &cut).await;
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

/// What a tunnel may do: how long it may idle, how large a message may be.
#[derive(Debug, Clone, Copy)]
struct Limits {
    idle: Duration,
    max_message: Option<u64>,
}

/// The access log's `error` of a tunnel cut for a message over the limit.
const TOO_BIG: &str = "websocket_message_too_big";

/// A message over `max_message_bytes` was seen in one direction.
#[derive(Debug)]
struct MessageTooBig;

impl std::fmt::Display for MessageTooBig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebSocket message over max_message_bytes")
    }
}

impl std::error::Error for MessageTooBig {}

/// Runs the tunnel until it ends; `None` when either side closed it, else the
/// access log's `error` code for why the gateway ended it.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    traffic: &Traffic,
    limits: Limits,
    cut: &CancellationToken,
) -> Option<&'static str> {
    let idle = limits.idle;
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
    let frames = || limits.max_message.map(Frames::new);
    let client = Metered {
        io: TokioIo::new(client),
        traffic,
        inbound: true,
        frames: frames(),
    };
    let upstream = Metered {
        io: TokioIo::new(upstream),
        traffic,
        inbound: false,
        frames: frames(),
    };
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut upstream_rx, mut upstream_tx) = tokio::io::split(upstream);
    let end = {
        // Each direction passes on the end of its stream as a shutdown of the
        // other side's write half.
        let inbound = async {
            let r = tokio::io::copy(&mut client_rx, &mut upstream_tx).await;
            if r.is_ok() {
                let _ = upstream_tx.shutdown().await;
            }
            r
        };
        let outbound = async {
            let r = tokio::io::copy(&mut upstream_rx, &mut client_tx).await;
            if r.is_ok() {
                let _ = client_tx.shutdown().await;
            }
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
                        break Some(broken(&e, "client"));
                    }
                }
                r = &mut outbound, if !outbound_done => {
                    outbound_done = true;
                    if let Err(e) = r {
                        break Some(broken(&e, "upstream"));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if linger.is_some() {
                        // The other side never closed after the first did: the
                        // WebSocket is over anyway.
                        break None;
                    }
                    if traffic.last_activity() + idle <= Instant::now() {
                        break Some("tunnel_idle_timeout");
                    }
                }
                _ = cut.cancelled() => break Some("shutdown"),
            }
            if inbound_done && outbound_done {
                break None;
            }
            if (inbound_done || outbound_done) && linger.is_none() {
                linger = Some(Instant::now() + LINGER.min(idle));
            }
        }
    };
    if end == Some(TOO_BIG) {
        // Close both sides with 1009 (message too big, RFC 6455 §7.4.1) where
        // their stream is between frames; the connections close after it.
        let _ = tokio::time::timeout(LINGER, async {
            if traffic.outbound_at_boundary.load(Ordering::Relaxed) {
                let _ = client_tx.write_all(&close_frame(false)).await;
            }
            if traffic.inbound_at_boundary.load(Ordering::Relaxed) {
                let _ = upstream_tx.write_all(&close_frame(true)).await;
            }
            let _ = client_tx.shutdown().await;
            let _ = upstream_tx.shutdown().await;
        })
        .await;
    }
    end
}

/// The `error` of a direction that failed, logged.
fn broken(e: &std::io::Error, side: &str) -> &'static str {
    if e.get_ref().is_some_and(|inner| inner.is::<MessageTooBig>()) {
        tracing::info!(
            side,
            "WebSocket message over max_message_bytes: tunnel closed with 1009"
        );
        return TOO_BIG;
    }
    tracing::debug!(error = %e, side, "WebSocket tunnel broke");
    "tunnel_error"
}

/// A Close frame with status 1009; `masked` for one sent to the upstream (a
/// client's frames are masked, RFC 6455 §5.3).
fn close_frame(masked: bool) -> Vec<u8> {
    let code = 1009u16.to_be_bytes();
    if !masked {
        return vec![0x88, 0x02, code[0], code[1]];
    }
    let mask: [u8; 4] = fastrand::u32(..).to_be_bytes();
    vec![
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        code[0] ^ mask[0],
        code[1] ^ mask[1],
    ]
}

/// Follows the frames of one direction of a tunnel (RFC 6455 §5.2) to size
/// its messages: only headers are parsed, payloads are counted and passed
/// through untouched. A message is its data frame and the continuation
/// frames after it; control frames (at most 125 bytes) do not count. With
/// permessage-deflate the sizes are those on the wire.
#[derive(Debug)]
struct Frames {
    max: u64,
    /// The header read so far (at most 14 bytes) and how long it will be.
    header: [u8; 14],
    have: usize,
    need: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// The current message's payload so far.
    message: u64,
}

impl Frames {
    fn new(max: u64) -> Frames {
        Frames {
            max,
            header: [0; 14],
            have: 0,
            need: 2,
            remaining: 0,
            message: 0,
        }
    }

    /// Whether the stream is between two frames.
    fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.have == 0
    }

    /// Takes the next bytes of the stream; `Err` once a message is over `max`.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), MessageTooBig> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (self.need - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 2 {
                let masked = self.header[1] & 0x80 != 0;
                let ext = match self.header[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                self.need = 2 + ext + if masked { 4 } else { 0 };
            }
            if self.have < self.need {
                continue;
            }
            self.frame_header()?;
            self.have = 0;
            self.need = 2;
        }
        Ok(())
    }

    /// A complete header: the frame's length joins its message.
    fn frame_header(&mut self) -> Result<(), MessageTooBig> {
        let h = &self.header;
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        };
        let opcode = h[0] & 0x0f;
        if opcode < 8 {
            if opcode != 0 {
                // A new text or binary message (0 continues the current one).
                self.message = 0;
            }
            self.message = self.message.saturating_add(len);
            if self.message > self.max {
                return Err(MessageTooBig);
            }
        }
        self.remaining = len;
        Ok(())
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
    /// Whether each direction is between frames (with a message limit).
    inbound_at_boundary: AtomicBool,
    outbound_at_boundary: AtomicBool,
}

impl Traffic {
    fn new() -> Self {
        Traffic {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: AtomicU64::new(0),
            inbound_at_boundary: AtomicBool::new(true),
            outbound_at_boundary: AtomicBool::new(true),
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
    /// The message limit's frame reader, when the route has one.
    frames: Option<Frames>,
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
            if let Some(frames) = &mut this.frames {
                if let Err(e) = frames.feed(&buf.filled()[before..]) {
                    // The bytes just read are not passed on, so the stream the
                    // other side saw ends where the last read did.
                    return std::task::Poll::Ready(Err(std::io::Error::other(e)));
                }
                let boundary = if this.inbound {
                    &this.traffic.inbound_at_boundary
                } else {
                    &this.traffic.outbound_at_boundary
                };
                boundary.store(frames.at_boundary(), Ordering::Relaxed);
            }
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

    /// A frame header: FIN, opcode, mask bit, and the length in its shortest form.
    fn header(fin: bool, opcode: u8, masked: bool, len: u64) -> Vec<u8> {
        let mut h = vec![(u8::from(fin) << 7) | opcode];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => h.push(m | len as u8),
            126..=0xffff => {
                h.push(m | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(m | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        if masked {
            h.extend_from_slice(&[1, 2, 3, 4]);
        }
        h
    }

    fn frame(fin: bool, opcode: u8, masked: bool, len: usize) -> Vec<u8> {
        let mut f = header(fin, opcode, masked, len as u64);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn messages_are_sized_across_frames_and_reads() {
        for masked in [false, true] {
            let mut stream = Vec::new();
            stream.extend(frame(true, 1, masked, 100)); // text, 100
            stream.extend(frame(true, 9, masked, 125)); // ping: not counted
            stream.extend(frame(false, 2, masked, 600)); // binary, first part
            stream.extend(frame(true, 10, masked, 4)); // pong between fragments
            stream.extend(frame(true, 0, masked, 400)); // last part: 1000 in all
            stream.extend(frame(true, 2, masked, 70_000)); // 64-bit length form
            // Fed whole, and one byte at a time: the same verdicts.
            let mut whole = Frames::new(70_000);
            assert!(whole.feed(&stream).is_ok());
            assert!(whole.at_boundary());
            let mut bytes = Frames::new(70_000);
            for b in &stream {
                assert!(bytes.feed(std::slice::from_ref(b)).is_ok());
            }
            assert!(bytes.at_boundary());
            // 1000 over two fragments is too big for 999, though each is under it.
            let mut small = Frames::new(999);
            let upto = frame(true, 1, masked, 100).len()
                + frame(true, 9, masked, 125).len()
                + frame(false, 2, masked, 600).len()
                + frame(true, 10, masked, 4).len();
            assert!(small.feed(&stream[..upto]).is_ok());
            assert!(small.feed(&stream[upto..]).is_err());
        }
    }

    #[test]
    fn a_new_message_starts_from_zero() {
        let mut f = Frames::new(500);
        for _ in 0..10 {
            assert!(f.feed(&frame(true, 1, true, 400)).is_ok());
        }
        // Mid-frame is not a boundary.
        assert!(f.feed(&header(true, 2, true, 300)).is_ok());
        assert!(!f.at_boundary());
        assert!(f.feed(&[0; 300]).is_ok());
        assert!(f.at_boundary());
    }

    #[test]
    fn close_frames_carry_1009() {
        assert_eq!(close_frame(false), [0x88, 0x02, 0x03, 0xf1]);
        let m = close_frame(true);
        assert_eq!(&m[..2], &[0x88, 0x82]);
        assert_eq!([m[6] ^ m[2], m[7] ^ m[3]], [0x03, 0xf1]);
    }
}
