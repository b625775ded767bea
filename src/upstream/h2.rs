//! The HTTP/2 connection layer for `protocol: h2` upstreams (gRPC among them).
//!
//! One multiplexed connection per target, shared by every request to it: h2c
//! with prior knowledge for `http://` targets, TLS with ALPN `h2` for `https://`
//! (a peer that does not pick `h2` is a connect error, never a silent fallback).
//! The connection is opened on the first request, reused while it lives, and
//! opened again (by one request at a time, the others wait for it) once it has
//! closed: a GOAWAY, a reset, or a failed keep-alive ping. A connection no
//! stream has used for `timeouts.idle` is closed by the pool's sweeper; with
//! `pool.max_idle_per_target: 0` it closes as soon as its last stream ends.
//!
//! The proxy hands over requests built for HTTP/1 (absolute URI naming the
//! target, a `Host` header): here the version becomes HTTP/2 and the `Host`
//! becomes the `:authority`, while the target in the URI picks the connection.

use std::error::Error as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::pool::{PoolSettings, SendError, chain, classify, client_config};
use crate::body::RequestBody;

/// A PING is sent after this long without frames from the upstream while a
/// stream is open; no answer within `PING_TIMEOUT` closes the connection, so a
/// silently dead peer cannot hold a long gRPC stream forever.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

type Sender = SendRequest<RequestBody>;

pub struct H2Client {
    connect_timeout: Duration,
    tls: TlsConnector,
    /// `tls.server_name`: the name every `https://` target's certificate must carry.
    server_name: Option<ServerName<'static>>,
}

/// A target's shared connection; each pool `Endpoint` holds one, so a request
/// reaches it without a lookup.
#[derive(Default)]
pub struct Slot {
    live: Mutex<Live>,
    /// Held while (re)connecting, so that a burst opens one connection, not one
    /// per request.
    dialing: tokio::sync::Mutex<()>,
}

/// The connection and what the pool's idle rules need to know about it.
#[derive(Default)]
struct Live {
    sender: Option<Sender>,
    /// Streams in flight (a request sent, its response body not yet dropped).
    streams: usize,
    /// Since when no stream has been in flight.
    idle_since: Option<Instant>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self) -> Option<Sender> {
        self.lock()
            .sender
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    fn set(&self, sender: Option<Sender>) {
        let mut live = self.lock();
        live.sender = sender;
        live.idle_since = (live.streams == 0).then(Instant::now);
    }

    /// A stream starts: the connection is busy until the guard is dropped.
    pub fn stream(self: &Arc<Self>, keep_idle: bool) -> Stream {
        let mut live = self.lock();
        live.streams += 1;
        live.idle_since = None;
        Stream {
            slot: self.clone(),
            keep_idle,
        }
    }

    /// Closes the connection when no stream has used it for `idle_timeout`
    /// (the pool's sweeper calls it). Dropping the last `SendRequest` lets
    /// hyper end the connection with a GOAWAY.
    pub fn close_if_idle(&self, idle_timeout: Duration) {
        let mut live = self.lock();
        if live.sender.is_some()
            && live.streams == 0
            && live
                .idle_since
                .is_some_and(|since| since.elapsed() >= idle_timeout)
        {
            live.sender = None;
        }
    }
}

/// One stream's hold on its connection (kept in the response body).
pub struct Stream {
    slot: Arc<Slot>,
    /// `pool.max_idle_per_target` above 0: the connection stays open, idle,
    /// after its last stream; 0: it closes then.
    keep_idle: bool,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut live = self.slot.lock();
        live.streams = live.streams.saturating_sub(1);
        if live.streams == 0 {
            live.idle_since = Some(Instant::now());
            if !self.keep_idle {
                live.sender = None;
            }
        }
    }
}

impl H2Client {
    pub fn new(settings: &PoolSettings) -> Result<Self, String> {
        let mut config =
            client_config(&settings.tls).map_err(|e| format!("TLS client setup: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = match settings.tls.server_name.as_deref() {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.to_owned())
                    .map_err(|e| format!("tls.server_name `{name}`: {e}"))?,
            ),
        };
        Ok(H2Client {
            connect_timeout: settings.connect_timeout,
            tls: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Sends one request (URI absolute: the target) on the shared connection
    /// in `slot` (the target's) and returns once the response head arrived.
    pub async fn send(
        &self,
        slot: &Slot,
        target: &Authority,
        tls: bool,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let req = to_h2(req);
        let sender = match slot.current() {
            Some(s) => s,
            None => self.reconnect(slot, target, tls).await?,
        };
        match send_on(sender, req).await {
            // The connection closed before the request went out (a GOAWAY not
            // yet seen when it was picked): one new connection is worth a try.
            Err(Unsent(req)) => {
                let sender = self.reconnect(slot, target, tls).await?;
                send_on(sender, req).await.map_err(|Unsent(_)| {
                    SendError::Reset("the new HTTP/2 connection closed at once".into())
                })?
            }
            Ok(result) => result,
        }
    }

    /// The target's connection, opened anew unless another request just did.
    async fn reconnect(
        &self,
        slot: &Slot,
        target: &Authority,
        tls: bool,
    ) -> Result<Sender, SendError> {
        let _dialing = slot.dialing.lock().await;
        if let Some(s) = slot.current() {
            return Ok(s);
        }
        slot.set(None);
        let sender = tokio::time::timeout(self.connect_timeout, self.connect(target, tls))
            .await
            .map_err(|_| {
                SendError::Connect(format!(
                    "connect timed out after {} ms",
                    self.connect_timeout.as_millis()
                ))
            })??;
        slot.set(Some(sender.clone()));
        Ok(sender)
    }

    async fn connect(&self, target: &Authority, tls: bool) -> Result<Sender, SendError> {
        let port = target.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = target.host();
        // An IPv6 literal comes bracketed in the authority.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|e| SendError::Connect(format!("tcp connect {target}: {e}")))?;
        // Nagle would hold small gRPC frames back.
        let _ = tcp.set_nodelay(true);
        if !tls {
            return handshake(tcp).await;
        }
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(bare.to_owned())
                .map_err(|e| SendError::Connect(format!("TLS server name `{bare}`: {e}")))?,
        };
        let stream = self.tls.connect(name, tcp).await.map_err(|e| {
            SendError::Connect(format!("TLS handshake with {target}: {}", chain(&e)))
        })?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(SendError::Connect(format!(
                "{target} did not negotiate h2 via ALPN (protocol: h2 needs an HTTP/2 server)"
            )));
        }
        handshake(stream).await
    }
}

/// The HTTP/2 handshake on a connected stream; the connection is driven by a
/// task of its own until it closes.
async fn handshake<S>(io: S) -> Result<Sender, SendError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(format!("HTTP/2 handshake: {}", chain(&e))))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, source = ?e.source(), "upstream h2 connection closed");
        }
    });
    Ok(sender)
}

/// A request that never left: its connection had closed.
struct Unsent(Request<RequestBody>);

async fn send_on(
    mut sender: Sender,
    req: Request<RequestBody>,
) -> Result<Result<Response<Incoming>, SendError>, Unsent> {
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(Ok(resp)),
        Err(mut e) => match e.take_message() {
            Some(req) => Err(Unsent(req)),
            None => Ok(Err(classify(e.error()))),
        },
    }
}

/// The HTTP/1-shaped request as HTTP/2: the `Host` header moves into the URI
/// authority (sent as `:authority`); without one the target's authority stays.
fn to_h2(mut req: Request<RequestBody>) -> Request<RequestBody> {
    *req.version_mut() = Version::HTTP_2;
    let Some(host) = req.headers_mut().remove(header::HOST) else {
        return req;
    };
    let Ok(authority) = Authority::try_from(host.as_bytes()) else {
        return req;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(authority);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_becomes_the_authority() {
        let req = Request::builder()
            .uri("http://127.0.0.1:9000/a/b?c=d")
            .header(header::HOST, "api.example.com")
            .body(RequestBody::empty())
            .unwrap();
        let req = to_h2(req);
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.uri(), "http://api.example.com/a/b?c=d");
        assert!(req.headers().get(header::HOST).is_none());
    }

    #[test]
    fn without_host_the_target_is_the_authority() {
        let req = Request::builder()
            .uri("https://10.0.0.1:8443/x")
            .body(RequestBody::empty())
            .unwrap();
        let req = to_h2(req);
        assert_eq!(req.uri(), "https://10.0.0.1:8443/x");
    }
}
