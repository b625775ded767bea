//! The client's request body on its way upstream: `RequestBody` streams it
//! while enforcing `max_body_bytes` (counted as bytes flow, so chunked uploads
//! are limited too) and a stall timeout, and keeps a small body whole when a
//! retry may send it again, and can hash what flows through it (`BodyDigest`,
//! for idempotency fingerprints). A leaf: the proxy makes it, the upstream
//! clients send it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Why a client's request body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("request body stalled")]
    Timeout,
    #[error("client body: {0}")]
    Client(#[from] hyper::Error),
}

/// The client's body on its way upstream.
pub struct RequestBody {
    inner: Option<Incoming>,
    /// A body already read in full (kept so that a retry can send it again).
    buffered: Option<Bytes>,
    limit: u64,
    stall: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Shared with the request record so the access log can report `bytes_in`.
    received: Option<Arc<AtomicU64>>,
    /// Hashes the bytes as they flow (a keyed request's fingerprint).
    digest: Option<Arc<BodyDigest>>,
}

/// The SHA-256 of a body, computed while it streams: fed by whoever polls the
/// body, read by whoever needs the result once the body has ended.
pub struct BodyDigest {
    running: Mutex<Option<aws_lc_rs::digest::Context>>,
    done: OnceLock<[u8; 32]>,
}

impl Default for BodyDigest {
    fn default() -> Self {
        BodyDigest {
            running: Mutex::new(Some(aws_lc_rs::digest::Context::new(
                &aws_lc_rs::digest::SHA256,
            ))),
            done: OnceLock::new(),
        }
    }
}

impl BodyDigest {
    /// A digest that starts with `prefix` (what it covers besides the body).
    pub fn seeded(prefix: &[u8]) -> Self {
        let digest = BodyDigest::default();
        digest.update(prefix);
        digest
    }

    pub fn update(&self, data: &[u8]) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ctx) = running.as_mut() {
            ctx.update(data);
        }
    }

    /// The body ended: the digest is fixed from now on.
    pub fn finish(&self) {
        let ctx = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(ctx) = ctx {
            let d = ctx.finish();
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            let _ = self.done.set(out);
        }
    }

    /// The digest of the whole body, once it has been read to its end.
    pub fn get(&self) -> Option<[u8; 32]> {
        self.done.get().copied()
    }
}

impl RequestBody {
    /// Wraps `body`; `received` counts the bytes that flowed through.
    pub fn new(body: Incoming, limit: u64, stall: Duration, received: Arc<AtomicU64>) -> Self {
        RequestBody {
            inner: Some(body),
            buffered: None,
            limit,
            stall,
            timer: None,
            received: Some(received),
            digest: None,
        }
    }

    /// Feeds every byte that flows through into `digest`, and finishes it at
    /// the end of the body.
    pub fn with_digest(mut self, digest: Arc<BodyDigest>) -> Self {
        self.digest = Some(digest);
        self
    }

    /// A request without a body (GET and friends): nothing to count or time.
    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            buffered: None,
            limit: 0,
            stall: Duration::ZERO,
            timer: None,
            received: None,
            digest: None,
        }
    }

    /// A body read in full beforehand; sent as one frame.
    pub fn buffered(bytes: Bytes) -> Self {
        RequestBody {
            buffered: Some(bytes).filter(|b| !b.is_empty()),
            ..Self::empty()
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(bytes) = this.buffered.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(received)) = (frame.data_ref(), &this.received) {
                    let total = received.fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if total > this.limit {
                        this.inner = None;
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
                    }
                }
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(Instant::now() + this.stall);
                }
                if let (Some(data), Some(digest)) = (frame.data_ref(), &this.digest) {
                    digest.update(data);
                    // A sender may stop polling once the body says it ended
                    // (hyper does with a Content-Length): finish the digest now.
                    if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                        digest.finish();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => {
                this.inner = None;
                this.timer = None;
                if let Some(digest) = this.digest.take() {
                    digest.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                let stall = this.stall;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                ready!(timer.as_mut().poll(cx));
                this.inner = None;
                Poll::Ready(Some(Err(BodyError::Timeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.buffered, &self.inner) {
            (Some(b), _) => SizeHint::with_exact(b.len() as u64),
            (None, Some(b)) => b.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}
