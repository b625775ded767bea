//! Client-facing listeners: accepting connections within `max_connections`,
//! the TLS handshake on TLS listeners (inside each connection's task, under
//! `header_read_timeout`), serving HTTP/1.1 and HTTP/2 on each (ALPN on TLS,
//! the first bytes on plain TCP), parking idle HTTP/1.1 connections without
//! their buffers, and closing connections that idle too long or send their
//! request head too slowly.

pub mod tls;

pub use crate::conn::ConnInfo;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::schema::Limits;
use crate::conn::{Verdict, WatchedIo};
use crate::proxy::body::ResponseBody;
use crate::proxy_protocol::ProxyProtocol;
use crate::shared::Shared;
use tls::TlsListener;

/// How long an HTTP/1.1 keep-alive connection idles before it parks: hyper's
/// connection state and buffers (about 20 KiB) are dropped and only the
/// socket is watched, until the client sends its next request (or the idle
/// timeout closes it). A second is far beyond the gap between the requests of
/// a busy client, so parking costs nothing under load.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// With more client connections open on a listener than this share of
/// `max_connections` (1,000 of the default 10,000), a connection parks as
/// soon as its request is answered (as NGINX frees a keep-alive connection's
/// buffers), not after `PARK_AFTER`: when that many connections may idle,
/// their memory outweighs rebuilding hyper's state per request, which costs
/// a few percent of CPU on a busy keep-alive connection.
const PARK_AT_ONCE_SHARE: usize = 10;

/// The most an HTTP/1 connection's read buffer grows to while a request body
/// streams in (unless twice `max_header_bytes` is more), when
/// `limits.read_buffer` is not set.
const MAX_READ_BUF: usize = 256 * 1024;

/// The metrics of one listener that every connection task holds.
struct ListenerGauges {
    /// `tollgate_active_connections`.
    open: IntGauge,
    /// `tollgate_parked_connections`.
    parked: IntGauge,
    /// `tollgate_malformed_requests_total` (labelled when one is counted).
    malformed: IntCounterVec,
}

/// Per-listener connection settings, fixed when the listener starts.
pub struct ConnSettings {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    idle_timeout: Duration,
    header_timeout: Duration,
    /// Open connections on a listener above which they park at once.
    park_at_once_above: i64,
}

impl ConnSettings {
    pub fn new(limits: &Limits) -> Self {
        let max_head = usize::try_from(limits.max_header_bytes.0).unwrap_or(usize::MAX);
        let mut h1 = http1::Builder::new();
        // hyper's read buffer limit is also its own header-size limit: a
        // backstop at least twice ours, so that the usual oversized head reaches
        // the proxy and gets the JSON 431. It also caps how much of a request
        // body one read takes: at 64 KiB an upload costs twice the reads and
        // writes of a 256 KiB cap (the buffer grows to it only while reads fill
        // it). hyper's header timer is off because it also runs while a
        // keep-alive connection idles (the watchdog in `conn` times heads from
        // their first byte instead).
        let read_buffer = match limits.read_buffer {
            Some(size) => usize::try_from(size.0).unwrap_or(usize::MAX),
            None => max_head.saturating_mul(2).max(MAX_READ_BUF),
        };
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(read_buffer);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            // RFC 8441: WebSocket over HTTP/2 (extended CONNECT, `:protocol`).
            .enable_connect_protocol();
        ConnSettings {
            h1,
            h2,
            idle_timeout: limits.idle_timeout.get(),
            header_timeout: limits.header_read_timeout.get(),
            park_at_once_above: i64::try_from(limits.max_connections / PARK_AT_ONCE_SHARE)
                .unwrap_or(i64::MAX),
        }
    }
}

/// Tokens that end the listeners: `stop` starts a graceful drain, `abort` cuts
/// what is left when the grace period is over.
#[derive(Clone)]
pub struct Lifecycle {
    pub stop: CancellationToken,
    pub abort: CancellationToken,
    pub tracker: TaskTracker,
}

/// Accepts connections until `life.stop` fires. With `tls`, each connection
/// first completes a TLS handshake on the listener's current certificates.
pub async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    shared: Arc<Shared>,
    settings: Arc<ConnSettings>,
    max_connections: Arc<Semaphore>,
    life: Lifecycle,
    tls: Option<Arc<TlsListener>>,
) {
    let gauges = Arc::new(ListenerGauges {
        open: shared.metrics.listener_connections(&name),
        parked: shared.metrics.parked_connections(&name),
        malformed: shared.metrics.malformed_requests(),
    });
    let handshake_failures = shared.metrics.tls_handshake_failures(&name);
    loop {
        // Beyond max_connections, new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            p = max_connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = life.stop.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = life.stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let admitted = Admitted::new(&gauges, permit);
        let (shared, settings, life2) = (shared.clone(), settings.clone(), life.clone());
        // Live across reloads: the running config says whether this listener
        // reads a PROXY protocol header.
        let proxy = {
            let snap = shared.snapshot.load();
            snap.proxy_protocol
                .iter()
                .find(|(listener, _)| **listener == *name)
                .map(|(_, pp)| pp.clone())
        };
        match (&tls, proxy) {
            (None, None) => {
                let info = Arc::new(ConnInfo::new(peer, name.clone()));
                life.tracker.spawn(serve_connection(
                    stream, info, shared, settings, life2, admitted,
                ));
            }
            (None, Some(pp)) => {
                let name = name.clone();
                life.tracker.spawn(async move {
                    let mut stream = stream;
                    let Some(client) = proxy_header(&pp, &mut stream, peer, &name, &life2).await
                    else {
                        return;
                    };
                    let info = Arc::new(ConnInfo::new(client, name));
                    serve_connection(stream, info, shared, settings, life2, admitted).await;
                });
            }
            (Some(tls), proxy) => {
                let acceptor = tls.acceptor();
                let failures = handshake_failures.clone();
                let name = name.clone();
                life.tracker.spawn(async move {
                    let mut stream = stream;
                    // Before the handshake: the balancer's header comes first.
                    let peer = match &proxy {
                        None => peer,
                        Some(pp) => {
                            match proxy_header(pp, &mut stream, peer, &name, &life2).await {
                                Some(client) => client,
                                None => return,
                            }
                        }
                    };
                    // Boxed: rustls' handshake state is large, and the task
                    // keeps room for its largest state as long as it lives.
                    let shaken =
                        Box::pin(handshake(acceptor, stream, peer, &name, &settings, &life2)).await;
                    if let Some((stream, subject)) = shaken {
                        // Made now, so the request head gets its own
                        // header_read_timeout after the handshake's, as
                        // NGINX times ssl_handshake_timeout and
                        // client_header_timeout apart.
                        let info = Arc::new(ConnInfo::new(peer, name).with_tls(subject));
                        serve_connection(stream, info, shared, settings, life2, admitted).await;
                    } else {
                        failures.inc();
                    }
                });
            }
        }
    }
}

/// Reads the PROXY protocol header of a new connection: the client's address,
/// or `None` when the connection is to be closed (refused, logged at debug:
/// counted in `tollgate_proxy_protocol_errors_total`) or the listener stops.
async fn proxy_header(
    pp: &ProxyProtocol,
    stream: &mut TcpStream,
    peer: SocketAddr,
    listener: &str,
    life: &Lifecycle,
) -> Option<SocketAddr> {
    let read = tokio::select! {
        r = pp.accept(stream, peer) => r,
        _ = life.stop.cancelled() => return None,
    };
    match read {
        Ok(client) => Some(client),
        Err(reason) => {
            tracing::debug!(%peer, listener, reason = reason.as_str(), "PROXY protocol header refused: connection closed");
            None
        }
    }
}

/// What an accepted connection holds until it ends, however it ends: its
/// `max_connections` permit and its place in the listener's open-connection
/// gauge.
struct Admitted {
    gauges: Arc<ListenerGauges>,
    _permit: OwnedSemaphorePermit,
}

impl Admitted {
    fn new(gauges: &Arc<ListenerGauges>, permit: OwnedSemaphorePermit) -> Self {
        gauges.open.inc();
        Admitted {
            gauges: gauges.clone(),
            _permit: permit,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gauges.open.dec();
    }
}

/// The TLS handshake of one connection, bounded by `header_read_timeout` and
/// cut short by shutdown: the stream and the verified client certificate's
/// subject (mTLS). `None` when it failed (logged at debug: a failed handshake
/// is the client's business, and never touches other connections).
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    listener: &str,
    settings: &ConnSettings,
    life: &Lifecycle,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Option<Arc<str>>)> {
    let result = tokio::select! {
        r = tokio::time::timeout(settings.header_timeout, acceptor.accept(stream)) => r,
        _ = life.stop.cancelled() => return None,
    };
    match result {
        Ok(Ok(stream)) => {
            let (_, session) = stream.get_ref();
            let subject = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(tls::subject_of)
                .map(Arc::from);
            Some((stream, subject))
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, listener, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer, listener, "TLS handshake timed out");
            None
        }
    }
}

/// A client stream the connection task can serve: plain TCP or TLS over it.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket underneath (peeked at, and watched while parked).
    fn tcp(&self) -> &TcpStream;
    /// For TLS, whether ALPN chose h2; `None` for plain TCP, where the first
    /// bytes tell (h2c with prior knowledge starts with the HTTP/2 preface).
    /// A TLS client that offered no ALPN gets HTTP/1.1, as from NGINX.
    fn alpn_h2(&self) -> Option<bool>;
}

impl ClientStream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
    fn alpn_h2(&self) -> Option<bool> {
        None
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
    fn alpn_h2(&self) -> Option<bool> {
        Some(self.get_ref().1.alpn_protocol() == Some(b"h2"))
    }
}

/// The connection preface an HTTP/2 client with prior knowledge starts with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain TCP client speaks HTTP/2 (prior knowledge). The first bytes
/// are peeked at, not read, so hyper still gets the whole first read. `None`
/// when the client closed, or sent nothing within the header timeout.
async fn sniff_h2(tcp: &TcpStream, header_timeout: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + header_timeout;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // The start of the preface so far: a peek would see the same bytes at
        // once, so give the rest a moment to arrive.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves one client connection until it ends.
///
/// A task keeps room for the largest state it can be in for as long as it
/// lives, so everything but parking is boxed: the protocol sniff, the served
/// HTTP/1.1 or HTTP/2 connection with its watchdog, and the wait for tunnels.
/// A parked connection's task is then a few hundred bytes. (Plain functions
/// returning `async move` blocks, not `async fn`s: those copy their arguments
/// into locals and keep room for both; and each boxed future is made in a
/// statement of its own, as a temporary in an awaited expression keeps its
/// room too.)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps room for its arguments twice"
)]
fn serve_connection<S: ClientStream>(
    stream: S,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    settings: Arc<ConnSettings>,
    life: Lifecycle,
    admitted: Admitted,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // (No local references to the arguments: each would keep 8 bytes
        // of room in every connection's task.)
        let h2 = match stream.alpn_h2() {
            Some(h2) => h2,
            None => {
                let (tcp, timeout, stop) = (stream.tcp(), settings.header_timeout, &life.stop);
                let sniff = Box::pin(async move {
                    tokio::select! {
                        s = sniff_h2(tcp, timeout) => s,
                        _ = stop.cancelled() => None,
                    }
                });
                match sniff.await {
                    Some(h2) => h2,
                    None => {
                        tracing::debug!(peer = %info.peer, "client sent no request");
                        return;
                    }
                }
            }
        };
        if h2 {
            info.set_h2();
        }
        let io = WatchedIo::new(stream, info.clone());
        let svc_info = info.clone();
        let svc = service_fn(move |req| {
            let conn = svc_info.clone();
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(crate::proxy::handle(req, conn, shared).await) }
        });
        if h2 {
            let served = Box::pin(async {
                let mut conn = settings.h2.serve_connection(TokioIo::new(io), svc);
                let conn = Pin::new(&mut conn);
                watch(
                    conn,
                    |c| c.graceful_shutdown(),
                    &info,
                    &settings,
                    &life,
                    Park::Never,
                )
                .await
            });
            served.await;
        } else {
            serve_h1(io, svc, &info, &settings, &life, &admitted.gauges).await;
        }
        if info.opened_tunnels() {
            let tunnels = Box::pin(info.finish_tunnels(&life.abort));
            tunnels.await;
        }
    }
}

/// Serves HTTP/1.1 on one connection. Between requests hyper keeps the
/// connection's read and write buffers; once the connection has idled for
/// `PARK_AFTER` (or at once, see `PARK_AT_ONCE_SHARE`), hyper's connection is
/// ended without closing the stream, and the stream waits alone until the
/// client sends again, when a fresh hyper connection takes over. NGINX frees
/// a keep-alive connection's buffers the same way: it is what keeps
/// thousands of idle clients cheap.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps room for its arguments twice"
)]
fn serve_h1<'a, S, Svc>(
    mut io: WatchedIo<S>,
    mut svc: Svc,
    info: &'a ConnInfo,
    settings: &'a ConnSettings,
    life: &'a Lifecycle,
    gauges: &'a ListenerGauges,
) -> impl Future<Output = ()> + Send + 'a
where
    S: ClientStream,
    Svc: Service<Request<Incoming>, Response = Response<ResponseBody>, Error = Infallible>
        + Send
        + Unpin
        + 'static,
    Svc::Future: Send + 'static,
{
    async move {
        loop {
            let when = if gauges.open.get() > settings.park_at_once_above {
                Park::AtOnce
            } else {
                Park::AfterIdle
            };
            // hyper's connection and its watchdog, in one allocation that
            // exists only while the connection has work; only what parking
            // needs comes back out.
            let served = Box::pin(async move {
                let mut conn = settings
                    .h1
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades();
                let watched = Pin::new(&mut conn);
                let ended = watch(
                    watched,
                    |c| c.graceful_shutdown(),
                    info,
                    settings,
                    life,
                    when,
                )
                .await;
                match ended {
                    Ended::Done => None,
                    Ended::Closed => Some(After::Close(conn.into_parts()?.io.into_inner())),
                    Ended::Park => {
                        let parts = conn.into_parts()?;
                        info.set_parking(false);
                        Some(After::Park(
                            parts.io.into_inner(),
                            parts.service,
                            parts.read_buf,
                        ))
                    }
                }
            });
            // A block, so that nothing it binds keeps room in the task.
            let pipelined = {
                let (next_io, next_svc, read_buf) = match served.await {
                    Some(After::Park(io, svc, read_buf)) => (io, svc, read_buf),
                    Some(After::Close(io)) => return linger(io, life).await,
                    None => {
                        if let Some(refusal) = info.refused() {
                            gauges
                                .malformed
                                .with_label_values(&[&*info.listener, refusal.code()])
                                .inc();
                        }
                        return;
                    }
                };
                (io, svc) = (next_io, next_svc);
                if read_buf.is_empty() {
                    false
                } else {
                    io.rewind(read_buf);
                    true
                }
            };
            if pipelined {
                // The start of a pipelined request was waiting: serve on.
                continue;
            }
            gauges.parked.inc();
            let woke = park(io.get_ref().tcp(), info, settings, life).await;
            gauges.parked.dec();
            // Woken: hyper reads what came (its first byte starts the header
            // timer, as on a new connection). Not marked here: on TLS a
            // wake-up may carry no request bytes at all (a key update).
            if !woke {
                // Idle timeout or shutdown.
                return linger(io, life).await;
            }
        }
    }
}

/// What is left of a connection hyper served until it ended gracefully.
enum After<S, Svc> {
    /// Parked: the stream, the service and what hyper had read ahead.
    Park(WatchedIo<S>, Svc, Bytes),
    /// Closed by the gateway between requests.
    Close(WatchedIo<S>),
}

/// How long a connection the gateway closes between requests keeps reading
/// after its FIN. A request that crossed the FIN arrives within a round trip,
/// and a client that sees the FIN closes at once, so this bounds only clients
/// that do neither; a drain waits for it, hence short (NGINX's
/// `lingering_timeout`, for unread request bodies, is 5 s).
const LINGER: Duration = Duration::from_secs(1);

/// Closes a connection the gateway ends between requests (idle timeout,
/// shutdown) without a reset: sends the FIN (and a TLS close_notify), then
/// reads and drops whatever still comes until the client closes its end,
/// `LINGER` passes or the shutdown grace ends. A request the client wrote
/// in the same instant would otherwise meet a socket closed with unread
/// bytes, which the kernel answers with a RST; after a clean FIN a client
/// knows the request was never read and may send it again (Go's and
/// browsers' clients do, for a reused connection).
///
/// Boxed at once, so that the connection task keeps no room for it.
fn linger<S: ClientStream>(
    mut io: WatchedIo<S>,
    life: &Lifecycle,
) -> Pin<Box<impl Future<Output = ()> + Send + '_>> {
    Box::pin(async move {
        let until = tokio::time::Instant::now() + LINGER;
        // Not waited on for long if the client stopped reading.
        if tokio::time::timeout(Duration::from_secs(1), io.shutdown())
            .await
            .is_err()
        {
            return;
        }
        let mut sink = [0u8; 512];
        loop {
            tokio::select! {
                read = io.read(&mut sink) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(until) => return,
                _ = life.abort.cancelled() => return,
            }
        }
    })
}

/// A future `watch` polls on every wake-up of a busy connection (a
/// cancellation, the next check's timer), once its wake-up is registered.
/// Polling it again costs more than it tells: tokio's cancellation waiter
/// takes the token's lock (one token for every connection), the timer
/// re-registers its waker. So it is polled again only for a waker new to it;
/// otherwise `done` answers (an atomic load), and the waker registered before
/// is what its event wakes.
struct Armed<'p, F, D> {
    fut: Pin<&'p mut F>,
    done: D,
    registered: Option<Waker>,
}

impl<'p, F: Future, D: Fn(&F) -> bool> Armed<'p, F, D> {
    fn new(fut: Pin<&'p mut F>, done: D) -> Self {
        Armed {
            fut,
            done,
            registered: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if (self.done)(&self.fut) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        self.registered = Some(cx.waker().clone());
        self.fut.as_mut().poll(cx).map(drop)
    }
}

impl<D> Armed<'_, tokio::time::Sleep, D> {
    /// Moves the timer; its waker is registered again at the next poll.
    fn reset(&mut self, deadline: tokio::time::Instant) {
        if self.fut.deadline() != deadline {
            self.fut.as_mut().reset(deadline);
            self.registered = None;
        }
    }
}

/// Waits while a connection is parked: `true` when the client sent something
/// (or closed its end), `false` when the connection must close instead
/// (`idle_timeout`, shutdown; `abort` is not watched, it never fires before
/// `stop`). Polled by hand rather than through `select!` and `readable()`:
/// this is what every parked connection holds, and the socket's own read
/// waker slot costs nothing.
async fn park(tcp: &TcpStream, info: &ConnInfo, settings: &ConnSettings, life: &Lifecycle) -> bool {
    let idle = tokio::time::sleep_until(info.idle_deadline(settings.idle_timeout).into());
    let stop = life.stop.cancelled();
    tokio::pin!(idle, stop);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(ready) = tcp.poll_read_ready(cx) {
            return Poll::Ready(ready.is_ok());
        }
        if idle.as_mut().poll(cx).is_ready() || stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        Poll::Pending
    })
    .await
}

/// How `watch` let a connection go.
#[derive(PartialEq, Eq)]
enum Ended {
    /// For good: the client closed, the connection idled out, drained for
    /// shutdown or failed, or it is cut short (slow head, shutdown grace over)
    /// by dropping it as it is.
    Done,
    /// Finished for parking, with the stream left open.
    Park,
    /// Closed by the gateway between requests (idle timeout, shutdown):
    /// hyper sent its FIN, and the stream lingers (see `linger`).
    Closed,
}

/// When `watch` ends a connection for parking.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Park {
    /// HTTP/2: never.
    Never,
    /// Once it has idled for `PARK_AFTER`.
    AfterIdle,
    /// As soon as a request it served is answered and nothing else is
    /// pending; after `PARK_AFTER` when that check misses (a wake-up that
    /// brought no request, a pipelined head that stays incomplete).
    AtOnce,
}

/// Drives a client connection and enforces the idle and header timeouts and
/// shutdown on it; finishes it for parking as `park` says.
async fn watch<C>(
    mut conn: Pin<&mut C>,
    graceful: fn(Pin<&mut C>),
    info: &ConnInfo,
    settings: &ConnSettings,
    life: &Lifecycle,
    park: Park,
) -> Ended
where
    C: Future<Output = hyper::Result<()>>,
{
    let park_after = (park != Park::Never).then_some(PARK_AFTER);
    let at_once = park == Park::AtOnce;
    let floor = info.completed();
    let (abort, stop) = (life.abort.cancelled(), life.stop.cancelled());
    let timer = tokio::time::sleep(settings.idle_timeout);
    tokio::pin!(abort, stop, timer);
    let mut abort = Armed::new(abort.as_mut(), |_| life.abort.is_cancelled());
    let mut stop = Armed::new(stop.as_mut(), |_| life.stop.is_cancelled());
    let mut timer = Armed::new(timer.as_mut(), tokio::time::Sleep::is_elapsed);
    // Set once a graceful end was asked for: parking or closing.
    let mut ending = None;
    loop {
        let park = park_after.filter(|_| ending.is_none());
        let deadline = info.next_check(settings.idle_timeout, settings.header_timeout, park);
        timer.reset(deadline.into());
        // Polled right after the connection (`biased`), so it sees the state
        // that hyper's last step left; it needs no waker of its own.
        let idle_now = std::future::poll_fn(|_| {
            if info.idle_after(floor) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let verdict = tokio::select! {
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    match info.refused() {
                        Some(refusal) => tracing::info!(
                            peer = %info.peer,
                            listener = %info.listener,
                            status = refusal.status().as_u16(),
                            error = %e,
                            "refused a request the HTTP/1 parser could not read"
                        ),
                        None => tracing::debug!(peer = %info.peer, error = %e, "client connection ended with an error"),
                    }
                    return Ended::Done;
                }
                return ending.unwrap_or(Ended::Done);
            }
            _ = std::future::poll_fn(|cx| abort.poll(cx)) => return Ended::Done,
            _ = std::future::poll_fn(|cx| stop.poll(cx)), if ending != Some(Ended::Closed) => {
                // A connection on its way to parking closes instead.
                info.set_parking(false);
                graceful(conn.as_mut());
                ending = Some(Ended::Closed);
                continue;
            }
            _ = idle_now, if at_once && park.is_some() => Verdict::Park,
            _ = std::future::poll_fn(|cx| timer.poll(cx)), if ending.is_none() => {
                info.verdict(settings.idle_timeout, settings.header_timeout, park)
            }
        };
        match verdict {
            Verdict::Keep => {}
            Verdict::Park => {
                // hyper ends an idle connection at once; the stream
                // itself stays open (`WatchedIo::poll_shutdown`).
                info.set_parking(true);
                graceful(conn.as_mut());
                ending = Some(Ended::Park);
            }
            Verdict::Idle => {
                graceful(conn.as_mut());
                ending = Some(Ended::Closed);
            }
            Verdict::SlowHead => {
                tracing::info!(peer = %info.peer, "closing a connection whose request head was too slow");
                return Ended::Done;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::WakeCount;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A future that counts its polls and is never ready.
    struct Polls<'a>(&'a AtomicUsize);

    impl Future for Polls<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Poll::Pending
        }
    }

    #[test]
    fn armed_polls_its_future_again_only_for_a_new_waker() {
        let polls = AtomicUsize::new(0);
        let fut = std::pin::pin!(Polls(&polls));
        let mut armed = Armed::new(fut, |_| false);
        let (one, two) = (WakeCount::waker().1, WakeCount::waker().1);
        for _ in 0..3 {
            assert!(armed.poll(&mut Context::from_waker(&one)).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert!(armed.poll(&mut Context::from_waker(&two)).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn armed_is_ready_once_done_says_so() {
        let polls = AtomicUsize::new(0);
        let done = std::sync::atomic::AtomicBool::new(false);
        let fut = std::pin::pin!(Polls(&polls));
        let mut armed = Armed::new(fut, |_| done.load(Ordering::SeqCst));
        let waker = WakeCount::waker().1;
        assert!(armed.poll(&mut Context::from_waker(&waker)).is_pending());
        done.store(true, Ordering::SeqCst);
        assert!(armed.poll(&mut Context::from_waker(&waker)).is_ready());
    }

    #[tokio::test]
    async fn a_cancellation_wakes_the_waker_armed_before() {
        let token = CancellationToken::new();
        let wait = std::pin::pin!(token.cancelled());
        let mut armed = Armed::new(wait, |_| token.is_cancelled());
        let (count, waker) = WakeCount::waker();
        assert!(armed.poll(&mut Context::from_waker(&waker)).is_pending());
        assert!(armed.poll(&mut Context::from_waker(&waker)).is_pending());
        token.cancel();
        assert_eq!(count.get(), 1);
        assert!(armed.poll(&mut Context::from_waker(&waker)).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_moved_timer_fires_at_its_new_deadline() {
        let start = tokio::time::Instant::now();
        let sleep = std::pin::pin!(tokio::time::sleep(Duration::from_secs(60)));
        let mut timer = Armed::new(sleep, tokio::time::Sleep::is_elapsed);
        timer.reset(start + Duration::from_secs(5));
        std::future::poll_fn(|cx| timer.poll(cx)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        timer.reset(start + Duration::from_secs(9));
        std::future::poll_fn(|cx| timer.poll(cx)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(9));
    }
}
