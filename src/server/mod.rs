//! Client-facing listeners: accepting connections within `max_connections`,
//! the TLS handshake on TLS listeners (inside each connection's task, under
//! `header_read_timeout`), serving HTTP/1.1 and HTTP/2 on each (hyper-util's auto
//! builder), and closing connections that idle too long or send their request
//! head too slowly.

mod conn;
pub mod tls;

pub use conn::ConnInfo;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::config::schema::Limits;
use conn::{Verdict, WatchedIo};
use tls::TlsListener;

/// Per-listener connection settings, fixed when the listener starts.
pub struct ConnSettings {
    builder: auto::Builder<TokioExecutor>,
    idle_timeout: Duration,
    header_timeout: Duration,
}

impl ConnSettings {
    pub fn new(limits: &Limits) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let max_head = usize::try_from(limits.max_header_bytes.0).unwrap_or(usize::MAX);
        // hyper's own header-size limit is a backstop at twice ours, so that the
        // usual oversized head reaches the proxy and gets the JSON 431; its header
        // timer is off because it also runs while a keep-alive connection idles
        // (the watchdog in `conn` times heads from their first byte instead).
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_head.saturating_mul(2).max(16 * 1024));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            // RFC 8441: WebSocket over HTTP/2 (extended CONNECT, `:protocol`).
            .enable_connect_protocol();
        ConnSettings {
            builder,
            idle_timeout: limits.idle_timeout.get(),
            header_timeout: limits.header_read_timeout.get(),
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
    let gauge = shared.metrics.listener_connections(&name);
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
        let gauge = gauge.clone();
        let info = ConnInfo::new(peer, name.clone());
        let (shared, settings, life2) = (shared.clone(), settings.clone(), life.clone());
        match &tls {
            None => {
                life.tracker.spawn(async move {
                    gauge.inc();
                    serve_connection(stream, info, shared, settings, life2).await;
                    gauge.dec();
                    drop(permit);
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let failures = handshake_failures.clone();
                life.tracker.spawn(async move {
                    gauge.inc();
                    if let Some((stream, info)) =
                        handshake(acceptor, stream, info, &settings, &life2).await
                    {
                        serve_connection(stream, info, shared, settings, life2).await;
                    } else {
                        failures.inc();
                    }
                    gauge.dec();
                    drop(permit);
                });
            }
        }
    }
}

/// The TLS handshake of one connection, bounded by `header_read_timeout` and
/// cut short by shutdown. `None` when it failed (logged at debug: a failed
/// handshake is the client's business, and never touches other connections).
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    info: ConnInfo,
    settings: &ConnSettings,
    life: &Lifecycle,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ConnInfo)> {
    let peer = info.peer;
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
            Some((stream, info.with_tls(subject)))
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, listener = %info.listener, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer, listener = %info.listener, "TLS handshake timed out");
            None
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    info: ConnInfo,
    shared: Arc<Shared>,
    settings: Arc<ConnSettings>,
    life: Lifecycle,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer: SocketAddr = info.peer;
    let info = Arc::new(info);
    let io = TokioIo::new(WatchedIo::new(stream, info.clone()));
    let svc_info = info.clone();
    let svc = service_fn(move |req| {
        let conn = svc_info.clone();
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(crate::proxy::handle(req, conn, shared).await) }
    });
    let conn = settings.builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let deadline = info.next_check(settings.idle_timeout, settings.header_timeout);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
                }
                break;
            }
            _ = tokio::time::sleep_until(deadline.into()), if !closing => {
                match info.verdict(settings.idle_timeout, settings.header_timeout) {
                    Verdict::Keep => {}
                    Verdict::Idle => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    Verdict::SlowHead => {
                        tracing::info!(peer = %peer, "closing a connection whose request head was too slow");
                        break;
                    }
                }
            }
            _ = life.stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = life.abort.cancelled() => break,
        }
    }
    info.finish_tunnels(&life.abort).await;
}
