//! Per-connection state shared between the connection task, its I/O and the
//! requests it carries: how many requests are in flight, since when it idles,
//! and when the first byte of a pending request head arrived. The connection
//! task reads it to enforce `idle_timeout` and `header_read_timeout`, and to
//! decide when an idle HTTP/1.1 connection parks (see `server::serve_h1`).
//!
//! It also catches hyper's own answer to a request head it could not parse
//! (hyper 1 writes a bare 400, 414 or 431 itself and has no hook to shape it):
//! on HTTP/1, once every answer is flushed and no request is active, nothing
//! but such a refusal can be written, so `WatchedIo` writes the gateway's JSON
//! error in its place.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes};
use http::{HeaderValue, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{GatewayError, ParseRefusal};

pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as a header value, made once for all its requests.
    pub peer_value: HeaderValue,
    pub listener: Arc<str>,
    /// The connection came over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The subject of the client certificate the TLS handshake verified (mTLS),
    /// RFC 4514 style: `CN=client-1,O=Example`.
    pub client_cert_subject: Option<Arc<str>>,
    epoch: Instant,
    active: AtomicU32,
    /// Milliseconds since `epoch` + 1 when a request head began arriving; 0 when
    /// no head is pending. Starts at 1: a new connection owes a head at once.
    head_started: AtomicU64,
    /// Milliseconds since `epoch` when the last request finished.
    idle_since: AtomicU64,
    /// Requests finished on this connection.
    completed: AtomicU32,
    /// See `request_started`.
    reusable: AtomicBool,
    /// HTTP/2 sends frames while idle, so bytes there say nothing about heads.
    h2: AtomicBool,
    /// The pending request head carried both Content-Length and
    /// Transfer-Encoding. hyper resolves that safely (chunked wins, the
    /// connection closes after), but drops the evidence; the proxy refuses such
    /// requests outright, so the head is looked at here on its way in.
    ambiguous_length: AtomicBool,
    /// WebSocket tunnels opened by requests on this connection, and the token
    /// that cuts them when the connection must end now (shutdown grace over).
    /// A tunnel outlives its request (HTTP/1.1 hands the whole connection
    /// over), so the connection task waits for them before it ends: the
    /// connection keeps its `max_connections` permit and shutdown waits for
    /// the tunnels. Made with the first tunnel: most connections never open
    /// one, and an idle connection should hold as little as possible.
    tunnels: OnceLock<(TaskTracker, CancellationToken)>,
    /// The last write (or flush) of the connection's stream did not complete:
    /// the client is not reading, and bytes may wait in hyper's buffer.
    write_blocked: AtomicBool,
    /// The connection task is taking the stream back from hyper to park it:
    /// shutting the stream down is skipped (see `WatchedIo::poll_shutdown`).
    parking: AtomicBool,
    /// Whose turn it is to write: `SERVING`, `QUIET` or `NEVER`.
    turn: AtomicU8,
    /// The status of hyper's refusal that `WatchedIo` replaced; 0 if none.
    refused: AtomicU16,
}

/// A request is being served, or its answer is not flushed yet.
const SERVING: u8 = 0;
/// HTTP/1, every answer flushed, no request active: hyper writes now only to
/// refuse a request head it could not parse.
const QUIET: u8 = 1;
/// HTTP/2, or a tunnel took the stream: no write is ever a refusal.
const NEVER: u8 = 2;

pub enum Verdict {
    Keep,
    /// Idle for `park_after`, nothing pending: give the buffers back.
    Park,
    Idle,
    SlowHead,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, listener: Arc<str>) -> Self {
        ConnInfo {
            peer,
            peer_value: crate::headers::ip_value(peer.ip()),
            listener,
            tls: false,
            client_cert_subject: None,
            epoch: Instant::now(),
            active: AtomicU32::new(0),
            head_started: AtomicU64::new(1),
            idle_since: AtomicU64::new(0),
            completed: AtomicU32::new(0),
            reusable: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            ambiguous_length: AtomicBool::new(false),
            tunnels: OnceLock::new(),
            write_blocked: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            turn: AtomicU8::new(QUIET),
            refused: AtomicU16::new(0),
        }
    }

    /// The connection speaks HTTP/2 (known before its first byte is served).
    pub fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
        self.turn.store(NEVER, Ordering::Relaxed);
    }

    /// The status of the parser's refusal this connection answered with the
    /// gateway's JSON error (`bad_request`, `uri_too_long`, `headers_too_large`).
    pub fn refused(&self) -> Option<GatewayError> {
        match self.refused.load(Ordering::Relaxed) {
            0 => None,
            status => Some(GatewayError::Unparsable(ParseRefusal::from_status(status))),
        }
    }

    /// While set, closing the stream is left to the connection task.
    pub fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
    }

    /// When the connection, idle since its last request, must close.
    pub fn idle_deadline(&self, idle: Duration) -> Instant {
        self.epoch
            + Duration::from_millis(
                self.idle_since
                    .load(Ordering::Relaxed)
                    .saturating_add(millis(idle)),
            )
    }

    /// Marks the connection as TLS, with the verified client subject if any.
    pub fn with_tls(mut self, client_cert_subject: Option<Arc<str>>) -> Self {
        self.tls = true;
        self.client_cert_subject = client_cert_subject;
        self
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request began. `reusable`: once it is answered, hyper will be back
    /// to waiting for the next head (HTTP/1.1, no body to drain, no `close`),
    /// so the connection may park at once.
    pub fn request_started(&self, version: Version, reusable: bool) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        self.reusable.store(reusable, Ordering::Relaxed);
        if self.turn.load(Ordering::Relaxed) == QUIET {
            self.turn.store(SERVING, Ordering::Relaxed);
        }
        if version == Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    /// The answer closes the connection (`Connection: close`): no parking at
    /// once, hyper is about to end it.
    pub fn not_reusable(&self) {
        self.reusable.store(false, Ordering::Relaxed);
    }

    pub fn request_done(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Requests finished so far.
    pub fn completed(&self) -> u32 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Whether the connection can park right now: a request that left it
    /// reusable finished since `completed` was `floor`, none is active, no
    /// next head has begun, and hyper flushed everything it wrote.
    pub fn idle_after(&self, floor: u32) -> bool {
        self.completed.load(Ordering::Relaxed) != floor
            && self.reusable.load(Ordering::Relaxed)
            && self.quiet()
    }

    /// Nothing in flight either way: no request active, no next head begun,
    /// nothing left unflushed in hyper's write buffer.
    fn quiet(&self) -> bool {
        self.active.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
            && !self.write_blocked.load(Ordering::Relaxed)
    }

    /// Runs a tunnel opened by a request on this connection; `cut` fires when
    /// the connection must end at once.
    pub fn spawn_tunnel<F>(&self, tunnel: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.turn.store(NEVER, Ordering::Relaxed);
        let (tracker, cut) = self
            .tunnels
            .get_or_init(|| (TaskTracker::new(), CancellationToken::new()));
        tracker.spawn(tunnel(cut.clone()));
    }

    /// Whether a request on this connection opened a tunnel.
    pub fn opened_tunnels(&self) -> bool {
        self.tunnels.get().is_some()
    }

    /// Waits for the connection's tunnels to end, cutting them when `abort`
    /// fires first.
    pub async fn finish_tunnels(&self, abort: &CancellationToken) {
        let Some((tracker, cut)) = self.tunnels.get() else {
            return;
        };
        tracker.close();
        if tracker.is_empty() {
            return;
        }
        tokio::select! {
            _ = tracker.wait() => return,
            _ = abort.cancelled() => {}
        }
        cut.cancel();
        tracker.wait().await;
    }

    /// Whether the request that just started had an ambiguous length (and
    /// forgets it, so the next request starts clean).
    pub fn take_ambiguous_length(&self) -> bool {
        self.ambiguous_length.swap(false, Ordering::Relaxed)
    }

    /// Bytes arrived. While no request is active they are the start of the next
    /// request head.
    fn on_read(&self, bytes: &[u8]) {
        if self.active.load(Ordering::Relaxed) != 0 || self.h2.load(Ordering::Relaxed) {
            return;
        }
        if self.head_started.load(Ordering::Relaxed) == 0 {
            self.head_started
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
        if has_both_lengths(bytes) {
            self.ambiguous_length.store(true, Ordering::Relaxed);
        }
    }

    /// When the connection task should look again. With `park` (an HTTP/1.1
    /// connection that may park), also when it will have idled that long, and
    /// otherwise at least that often: the end of a request does not wake the
    /// connection task.
    pub fn next_check(&self, idle: Duration, header: Duration, park: Option<Duration>) -> Instant {
        let now = self.now_ms();
        let since = self.idle_since.load(Ordering::Relaxed);
        let idling = self.active.load(Ordering::Relaxed) == 0;
        let head = self.head_started.load(Ordering::Relaxed);
        let mut at = match (idling, head) {
            (false, _) => now.saturating_add(millis(idle)),
            (true, 0) => since.saturating_add(millis(idle)),
            (true, started) => (started - 1).saturating_add(millis(header)),
        };
        if let Some(park) = park.map(millis) {
            let park_at = since.saturating_add(park);
            let soon = if idling && head == 0 && park_at > now {
                park_at
            } else {
                now.saturating_add(park)
            };
            at = at.min(soon);
        }
        self.epoch + Duration::from_millis(at)
    }

    pub fn verdict(&self, idle: Duration, header: Duration, park: Option<Duration>) -> Verdict {
        if self.active.load(Ordering::Relaxed) > 0 {
            return Verdict::Keep;
        }
        let now = Duration::from_millis(self.now_ms());
        match self.head_started.load(Ordering::Relaxed) {
            0 => {
                let since = Duration::from_millis(self.idle_since.load(Ordering::Relaxed));
                if now >= since + idle {
                    Verdict::Idle
                } else if park.is_some_and(|p| now >= since + p) && self.quiet() {
                    Verdict::Park
                } else {
                    Verdict::Keep
                }
            }
            started if now >= Duration::from_millis(started - 1) + header => Verdict::SlowHead,
            _ => Verdict::Keep,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether the head at the start of `bytes` has both a Content-Length and a
/// Transfer-Encoding field. Only what arrived in one read is examined: a head
/// split mid-name across reads escapes this check, but hyper still frames such a
/// request as chunked and closes the connection after it, so nothing is smuggled.
fn has_both_lengths(bytes: &[u8]) -> bool {
    let (mut cl, mut te) = (false, false);
    // Lines are found with memchr (SIMD): every request head passes here, and
    // a byte-by-byte split showed up in the profile of the policy route, whose
    // heads carry a long Authorization header.
    let mut start = match memchr::memchr(b'\n', bytes) {
        Some(i) => i + 1,
        None => return false,
    };
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        let line = &bytes[start..end];
        if line.is_empty() || line == b"\r" {
            break;
        }
        let starts =
            |name: &[u8]| line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name);
        match line[0] | 0x20 {
            b'c' => cl |= starts(b"content-length:"),
            b't' => te |= starts(b"transfer-encoding:"),
            _ => {}
        }
        start = end + 1;
    }
    cl && te
}

/// The client stream (TCP, or TLS over it: the decrypted bytes), reporting
/// reads and blocked writes to the connection's `ConnInfo`. `rewound` holds
/// bytes hyper had read but not parsed when it gave the stream back; they are
/// read again first.
pub struct WatchedIo<S> {
    inner: S,
    info: Arc<ConnInfo>,
    rewound: Bytes,
    /// Set when hyper began to write its own refusal of a request head: what
    /// is left to write of the gateway's answer in its place. From then on
    /// everything hyper writes is dropped (it closes the connection after).
    refusal: Option<Box<Bytes>>,
}

impl<S> WatchedIo<S> {
    pub fn new(inner: S, info: Arc<ConnInfo>) -> Self {
        WatchedIo {
            inner,
            info,
            rewound: Bytes::new(),
            refusal: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Puts bytes back in front of the stream.
    pub fn rewind(&mut self, bytes: Bytes) {
        debug_assert!(self.rewound.is_empty());
        self.rewound = bytes;
    }

    fn note_write<T>(&self, polled: &Poll<io::Result<T>>) {
        self.info
            .write_blocked
            .store(polled.is_pending(), Ordering::Relaxed);
    }

    /// Whether `first` (the start of what hyper writes now) is hyper's own
    /// refusal of a request head; if so the gateway's answer replaces it.
    fn refuses(&mut self, first: &[u8]) -> bool {
        if self.refusal.is_some() {
            return true;
        }
        if self.info.turn.load(Ordering::Relaxed) != QUIET {
            return false;
        }
        // Only a response head can come now; anything else is left alone.
        let Some(status) = first
            .strip_prefix(b"HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| digits.parse::<u16>().ok())
            .filter(|s| (400..500).contains(s))
        else {
            return false;
        };
        self.info.refused.store(status, Ordering::Relaxed);
        let error = GatewayError::Unparsable(ParseRefusal::from_status(status));
        self.refusal = Some(Box::new(refusal_bytes(&error)));
        true
    }
}

impl<S: AsyncWrite + Unpin> WatchedIo<S> {
    /// Writes what is left of the refusal, if any.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(left) = self.refusal.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !left.is_empty() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, left))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => left.advance(n),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// In place of hyper's `len` bytes: the refusal, then nothing.
    fn poll_refused(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        ready!(self.poll_refusal(cx))?;
        Poll::Ready(Ok(len))
    }
}

/// The gateway's whole HTTP/1.1 answer for a request the parser refused: the
/// JSON error body, a fresh request id, and `Connection: close`.
fn refusal_bytes(error: &GatewayError) -> Bytes {
    let id = crate::headers::fresh_request_id();
    let resp = error.to_response(id.to_str().unwrap_or("0"));
    let status = resp.status();
    let body = resp.body();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut field = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in resp.headers() {
        field(name.as_str().as_bytes(), value.as_bytes());
    }
    field(b"x-request-id", id.as_bytes());
    field(b"content-length", body.len().to_string().as_bytes());
    field(
        b"date",
        httpdate::fmt_http_date(SystemTime::now()).as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Bytes::from(out)
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.rewound.is_empty() {
            let n = this.rewound.len().min(buf.remaining());
            buf.put_slice(&this.rewound[..n]);
            this.rewound.advance(n);
            if this.rewound.is_empty() {
                // An empty slice would still hold hyper's old read buffer.
                this.rewound = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.info.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.refuses(buf) {
            return this.poll_refused(cx, buf.len());
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if this.refuses(first) {
            let len = bufs.iter().map(|b| b.len()).sum();
            return this.poll_refused(cx, len);
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// A flush that completes with no request active ends the answer: what
    /// hyper writes next (if anything) is its own refusal.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusal.is_some() {
            ready!(this.poll_refusal(cx))?;
        }
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.note_write(&polled);
        let info = &this.info;
        if matches!(polled, Poll::Ready(Ok(())))
            && info.turn.load(Ordering::Relaxed) == SERVING
            && info.active.load(Ordering::Relaxed) == 0
        {
            info.turn.store(QUIET, Ordering::Relaxed);
        }
        polled
    }

    /// hyper shuts the stream down when it ends the connection; when the
    /// connection task ended it to park, the stream stays open.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.info.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        if this.refusal.is_some() {
            ready!(this.poll_refusal(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::has_both_lengths;

    #[test]
    fn finds_both_length_fields_in_a_head() {
        let both = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(has_both_lengths(both));
        let mixed_case =
            b"POST / HTTP/1.1\r\ntransfer-ENCODING: chunked\r\nCONTENT-length: 5\r\n\r\n";
        assert!(has_both_lengths(mixed_case));
        let one = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nTransfer-Encoding: in the body";
        assert!(!has_both_lengths(one));
        assert!(!has_both_lengths(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        // The request line is not a field; a head cut short is read as far as it goes.
        assert!(!has_both_lengths(b"content-length: 1 transfer-encoding: x"));
        assert!(has_both_lengths(
            b"POST / HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length: 5"
        ));
        assert!(!has_both_lengths(
            b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"
        ));
        assert!(!has_both_lengths(b""));
    }
}
