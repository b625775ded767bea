//! The client's request body on its way upstream: `RequestBody` streams it
//! while enforcing `max_body_bytes` (counted as bytes flow, so chunked uploads
//! are limited too) and a stall timeout, and keeps a small body whole when a
//! retry may send it again. A leaf: the proxy makes it, the upstream clients
//! send it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
        }
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
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => {
                this.inner = None;
                this.timer = None;
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
