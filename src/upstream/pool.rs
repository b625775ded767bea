//! The connection layer to upstream targets: the one seam between the proxy and
//! the HTTP client library.
//!
//! A pool of HTTP/1.1 keep-alive connections per target, built on hyper's
//! low-level `client::conn::http1`. There is no connection task: the request's
//! own task drives its connection (while waiting for the response head, then
//! while the response body streams to the client, see `UpstreamBody`), and the
//! connection goes back to its target's idle stack when the body ended. That
//! saves the task hop, channel and wake-ups per request that a pooled client
//! with one task per connection costs (hyper-util's legacy client), which is
//! what the profile of the proxy's hot path showed. An upgraded connection
//! (`101 Switching Protocols`) is handed to a task of its own.
//!
//! Everything above this file sees `UpstreamClient::send`, `Endpoint`,
//! `UpstreamBody` and `SendError`.

use std::collections::HashMap;
use std::error::Error as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::rouse::Rouse;
use crate::body::{BodyError, RequestBody};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_target: usize,
    pub tls: TlsSettings,
    pub protocol: Protocol,
}

/// `upstreams.*.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Http1,
    /// h2c (prior knowledge) for `http://`, ALPN h2 for `https://`: see `h2`.
    H2,
}

/// How `https://` targets are verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Trust anchors replacing the built-in webpki roots (Mozilla's set).
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// The name the target's certificate must carry, instead of the URL's host.
    pub server_name: Option<String>,
    /// Accept any certificate. Lab use only.
    pub insecure_skip_verify: bool,
}

/// The connections of one upstream (all its targets), kept across config
/// versions while its pool settings stay the same.
pub struct UpstreamClient {
    inner: Arc<Inner>,
    /// `protocol: h2`: requests share one multiplexed connection per target.
    h2: Option<super::h2::H2Client>,
}

struct Inner {
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    tls: TlsConnector,
    server_name: Option<ServerName<'static>>,
    h1: http1::Builder,
    /// Every target this pool has served, by scheme and authority. Touched when
    /// a config compiles and by the sweeper, never per request.
    endpoints: Mutex<HashMap<(Scheme, Authority), Arc<Endpoint>>>,
}

/// One target's address and idle connections. A compiled `Target` holds its
/// endpoint, so a request reaches its idle connections without a lookup.
pub struct Endpoint {
    authority: Authority,
    tls: bool,
    max_idle: usize,
    /// The shared connection when the pool speaks HTTP/2.
    h2: Arc<super::h2::Slot>,
    /// Most recently used last: reuse takes the warmest connection, the sweeper
    /// closes from the cold end. The lock is per target and held for a push or
    /// a pop. Boxed: a connection moves between this stack and a response
    /// body once per request, and a pointer moves cheaper than its state.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Conn>>>,
}

/// One HTTP/1.1 connection: the request sender and the protocol state machine
/// that moves its bytes (polled by whoever holds the connection).
struct Conn {
    tx: http1::SendRequest<RequestBody>,
    /// `None` once the connection ended (closed, failed, or upgraded).
    io: Option<ConnIo>,
    idle_since: Instant,
    /// The waker the state machine is polled with, made once per connection.
    rouse: Arc<Rouse>,
    waker: Waker,
}

/// hyper's connection state machine with upgrades on (its type is not
/// nameable, hence the box: one per connection, not per request).
type ConnIo = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

impl Conn {
    fn new(tx: http1::SendRequest<RequestBody>, io: ConnIo) -> Box<Conn> {
        let rouse = Arc::new(Rouse::default());
        Box::new(Conn {
            tx,
            io: Some(io),
            idle_since: Instant::now(),
            waker: Waker::from(rouse.clone()),
            rouse,
        })
    }

    /// Lets the connection make progress; `false` once it has ended.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(io) = &mut self.io else {
            return false;
        };
        if io.as_mut().poll(cx).is_ready() {
            self.io = None;
            return false;
        }
        true
    }

    /// Polls the connection, then `then` (what waits on it: the response
    /// head, the body), in rounds while the connection woke itself meanwhile
    /// (see `Rouse`). `then` gets a no-op waker: only the connection, polled
    /// just before, can complete what it polls.
    fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut then: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let Conn {
            io, rouse, waker, ..
        } = self;
        rouse.rounds(waker, cx, |own, quiet| {
            if let Some(running) = io
                && running.as_mut().poll(own).is_ready()
            {
                // Ended: what waited on it resolves now (with an error,
                // unless it was complete).
                *io = None;
            }
            then(quiet)
        })
    }
}

/// Why an attempt failed, classified for the answer and the metrics.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, connect timeout),
    /// or an HTTP/2 upstream refused the stream (REFUSED_STREAM: it did not
    /// process the request, RFC 9113 §8.7). Either way nothing reached the
    /// upstream's application, so any request may be sent again.
    Connect(String),
    /// The client's request body failed: too large, stalled, or aborted.
    ClientBody(BodyErrorKind),
    /// The connection broke or the upstream answered something that is not HTTP.
    Reset(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyErrorKind {
    TooLarge,
    Timeout,
    Aborted,
}

impl UpstreamClient {
    pub fn new(settings: &PoolSettings) -> Result<Self, String> {
        let config = client_config(&settings.tls).map_err(|e| format!("TLS client setup: {e}"))?;
        let server_name = match settings.tls.server_name.as_deref() {
            Some(n) => Some(
                ServerName::try_from(n.to_owned())
                    .map_err(|e| format!("TLS server_name `{n}`: {e}"))?,
            ),
            None => None,
        };
        let inner = Arc::new(Inner {
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.idle_timeout,
            max_idle: settings.max_idle_per_target,
            tls: TlsConnector::from(Arc::new(config)),
            server_name,
            h1: http1::Builder::new(),
            endpoints: Mutex::default(),
        });
        // Idle connections past `idle_timeout` are closed by a sweeper, so that
        // a target nobody asks for any more holds no sockets.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&inner)));
        }
        let h2 = match settings.protocol {
            Protocol::H2 => Some(super::h2::H2Client::new(settings)?),
            Protocol::Http1 => None,
        };
        Ok(UpstreamClient { inner, h2 })
    }

    /// The endpoint of `scheme://authority` (created on first use; shared by
    /// every config version that names the same target).
    pub fn endpoint(&self, scheme: &Scheme, authority: &Authority) -> Arc<Endpoint> {
        let mut map = self
            .inner
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry((scheme.clone(), authority.clone()))
            .or_insert_with(|| {
                Arc::new(Endpoint {
                    authority: authority.clone(),
                    tls: *scheme == Scheme::HTTPS,
                    max_idle: self.inner.max_idle,
                    h2: Arc::default(),
                    idle: Mutex::default(),
                })
            })
            .clone()
    }

    /// Forgets the endpoints `keep` says no to (addresses DNS no longer
    /// lists); their idle connections close as the last holder drops them.
    pub fn retain_endpoints(&self, keep: impl Fn(&Authority) -> bool) {
        let mut map = self
            .inner
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.retain(|(_, authority), _| keep(authority));
    }

    /// Sends one request to `ep` and returns once the response head arrived.
    /// The request URI is in origin form (`/path?query`); the Host header is
    /// the caller's business.
    pub async fn send(
        &self,
        ep: &Arc<Endpoint>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        if let Some(h2) = &self.h2 {
            let uri = http::Uri::builder()
                .scheme(if ep.tls { Scheme::HTTPS } else { Scheme::HTTP })
                .authority(ep.authority.clone())
                .path_and_query(req.uri().path_and_query().map_or("/", |p| p.as_str()))
                .build()
                .map_err(|e| SendError::Connect(format!("{}: {e}", ep.authority)))?;
            *req.uri_mut() = uri;
            // Counted from before the send, so the sweeper never closes a
            // connection a request is about to use.
            let stream = ep.h2.stream(self.inner.max_idle > 0);
            let resp = Box::pin(h2.send(&ep.h2, &ep.authority, ep.tls, req)).await?;
            return Ok(resp.map(|body| UpstreamBody {
                body: BodyKind::Plain(body),
                conn: None,
                _h2_stream: Some(stream),
            }));
        }
        let inner = &*self.inner;
        let mut reused = true;
        let mut conn = match ep.checkout(inner.idle_timeout) {
            Some(c) => c,
            None => {
                reused = false;
                Box::pin(inner.connect(ep)).await?
            }
        };
        loop {
            let sending = conn.tx.try_send_request(req);
            match drive(&mut conn, sending).await {
                Ok(resp) => return Ok(finish(resp, conn, ep)),
                Err(mut e) => {
                    // A kept-alive connection that the target closed before the
                    // request went out: the request is intact, try a fresh one.
                    if reused && let Some(back) = e.take_message() {
                        req = back;
                        reused = false;
                        conn = match ep.checkout(inner.idle_timeout) {
                            Some(c) => c,
                            None => Box::pin(inner.connect(ep)).await?,
                        };
                        continue;
                    }
                    return Err(classify(&e.into_error()));
                }
            }
        }
    }
}

/// Polls the connection and the pending response together in the caller's task
/// until the response head is there (or the connection failed).
async fn drive<F, T>(conn: &mut Conn, sending: F) -> T
where
    F: Future<Output = T>,
{
    let mut sending = std::pin::pin!(sending);
    std::future::poll_fn(|cx| conn.poll_with(cx, |quiet| sending.as_mut().poll(quiet))).await
}

/// The response head arrived on `conn`: its body keeps driving the connection.
fn finish(resp: Response<Incoming>, conn: Box<Conn>, ep: &Arc<Endpoint>) -> Response<UpstreamBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The connection becomes the tunnel: hyper hands the IO over to
        // `hyper::upgrade::on(response)` when it sees the switch (usually
        // already done while reading the head); if not yet, a task of its own
        // polls it there. It never returns to the pool.
        if let Some(io) = conn.io {
            tokio::spawn(io);
        }
        return resp.map(UpstreamBody::plain);
    }
    resp.map(|body| UpstreamBody {
        body: BodyKind::Plain(body),
        conn: Some((conn, ep.clone())),
        _h2_stream: None,
    })
}

impl Inner {
    /// Opens a connection to `ep`: TCP (and TLS for `https`), within the
    /// connect timeout, then the HTTP/1.1 handshake.
    async fn connect(&self, ep: &Endpoint) -> Result<Box<Conn>, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.open(ep))
            .await
            .map_err(|_| {
                SendError::Connect(format!(
                    "connect to {} timed out after {:?}",
                    ep.authority, self.connect_timeout
                ))
            })??;
        let (tx, io) = self
            .h1
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(chain(&e)))?;
        Ok(Conn::new(tx, Box::pin(io.with_upgrades())))
    }

    async fn open(&self, ep: &Endpoint) -> Result<Stream, SendError> {
        let host = ep.authority.host();
        let port = ep
            .authority
            .port_u16()
            .unwrap_or(if ep.tls { 443 } else { 80 });
        let connect_err = |e: io::Error| SendError::Connect(format!("{}: {e}", ep.authority));
        // An IP literal needs no resolver; names are resolved per connection
        // (not per request), so DNS changes are seen as connections turn over.
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok();
        let tcp = match literal {
            Some(ip) => TcpStream::connect(SocketAddr::new(ip, port))
                .await
                .map_err(connect_err)?,
            None => {
                let mut last = None;
                let mut found = None;
                for addr in tokio::net::lookup_host((host, port))
                    .await
                    .map_err(connect_err)?
                {
                    match TcpStream::connect(addr).await {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match (found, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(connect_err(e)),
                    (None, None) => {
                        return Err(SendError::Connect(format!(
                            "{}: the name resolved to no address",
                            ep.authority
                        )));
                    }
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        if !ep.tls {
            return Ok(Stream::Tcp(tcp));
        }
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
                .map_err(|e| SendError::Connect(format!("{}: {e}", ep.authority)))?
                .to_owned(),
        };
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| SendError::Connect(format!("{}: TLS: {e}", ep.authority)))?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

impl Endpoint {
    /// The warmest idle connection that is still usable, if any.
    fn checkout(&self, idle_timeout: Duration) -> Option<Box<Conn>> {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let mut conn = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            if conn.idle_since.elapsed() >= idle_timeout {
                continue;
            }
            // One poll lets the connection notice a close by the target (or
            // finish its previous exchange); the next poll, with the request's
            // waker, re-registers interest in the socket.
            if !conn.poll_io(&mut cx) || !conn.tx.is_ready() {
                continue;
            }
            return Some(conn);
        }
    }

    /// Keeps `conn` for the next request, within the pool's size.
    fn checkin(&self, mut conn: Box<Conn>) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }
}

/// Closes idle connections older than the idle timeout, and forgets endpoints
/// no config uses any more once they hold no connection. Ends with the pool.
async fn sweep(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => (i.idle_timeout / 2).max(Duration::from_millis(500)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut stale = Vec::new();
        let mut map = inner
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, ep| {
            ep.h2.close_if_idle(inner.idle_timeout);
            let mut idle = ep.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let keep_from = idle
                .iter()
                .position(|c| c.idle_since.elapsed() < inner.idle_timeout)
                .unwrap_or(idle.len());
            stale.extend(idle.drain(..keep_from));
            let in_use = Arc::strong_count(ep) > 1 || !idle.is_empty();
            drop(idle);
            in_use
        });
        drop(map);
        // Sockets close outside the locks.
        drop(stale);
    }
}

/// An upstream response body. While it streams it drives the connection it
/// arrives on; at its end the connection returns to its endpoint's idle stack.
/// Dropped before its end, it closes the connection (the rest of the body
/// cannot be skipped cheaply, and a half-read connection cannot be reused).
pub struct UpstreamBody {
    body: BodyKind,
    conn: Option<(Box<Conn>, Arc<Endpoint>)>,
    /// An HTTP/2 stream's hold on its shared connection (idle accounting).
    _h2_stream: Option<super::h2::Stream>,
}

enum BodyKind {
    Plain(Incoming),
}

impl UpstreamBody {
    /// A body that needs no connection driven (HTTP/2, upgrades).
    pub fn plain(body: Incoming) -> Self {
        UpstreamBody {
            body: BodyKind::Plain(body),
            conn: None,
            _h2_stream: None,
        }
    }

    fn incoming(&mut self) -> &mut Incoming {
        match &mut self.body {
            BodyKind::Plain(b) => b,
        }
    }

    /// The body ended: the connection is reusable once its state machine has
    /// seen the end of the message. Usually it has, in the same poll that
    /// delivered the last bytes, and asks for the next request (`is_ready`);
    /// otherwise it is polled once more, with a no-op waker (`checkout`
    /// looks at it again).
    fn release(&mut self) {
        let Some((mut conn, ep)) = self.conn.take() else {
            return;
        };
        if conn.tx.is_ready()
            || (conn.poll_io(&mut Context::from_waker(Waker::noop())) && !conn.tx.is_closed())
        {
            // Idle, the connection wakes no task (nor keeps one alive).
            conn.rouse.forget();
            ep.checkin(conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let BodyKind::Plain(body) = &mut this.body;
        let polled = match &mut this.conn {
            Some((conn, _)) => {
                let polled = conn.poll_with(cx, |quiet| Pin::new(&mut *body).poll_frame(quiet));
                if conn.io.is_none() {
                    // The connection is finished (closed, or failed: then the
                    // body reports the error itself).
                    this.conn = None;
                }
                polled
            }
            None => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.incoming().is_end_stream() => this.release(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            BodyKind::Plain(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            BodyKind::Plain(b) => b.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body without content (HEAD, 204, 304, `content-length: 0`) may never
        // be polled: it still gives its connection back.
        if self.conn.is_some() && self.is_end_stream() {
            self.release();
        }
    }
}

/// A connection's byte stream: plain TCP or TLS over TCP.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// The client's own body error travels inside hyper's error chain, and so
/// does an HTTP/2 upstream's REFUSED_STREAM (counted as a connect error: the
/// request was not processed); anything else after the connection was up is a
/// reset.
pub(super) fn classify(err: &hyper::Error) -> SendError {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return SendError::Connect(format!("the HTTP/2 stream was refused: {}", chain(err)));
        }
        if let Some(body) = e.downcast_ref::<BodyError>() {
            return SendError::ClientBody(match body {
                BodyError::TooLarge(_) => BodyErrorKind::TooLarge,
                BodyError::Timeout => BodyErrorKind::Timeout,
                BodyError::Client(_) => BodyErrorKind::Aborted,
            });
        }
        source = e.source();
    }
    SendError::Reset(chain(err))
}

/// The error and its causes on one line, for logs.
pub(super) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// The rustls client config for an upstream's `https://` targets.
pub(super) fn client_config(tls: &TlsSettings) -> Result<ClientConfig, rustls::Error> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match &tls.ca {
            // Validation already refused a CA file without a usable certificate.
            Some(ca) => {
                roots.add_parsable_certificates(ca.iter().cloned());
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `insecure_skip_verify`: any certificate is accepted. Handshake signatures are
/// still checked, which proves only that the peer holds the key of the
/// certificate it sent.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
