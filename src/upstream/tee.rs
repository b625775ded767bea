//! The upstream body copied aside as it streams, for an answer the gateway
//! keeps (an idempotency replay, a response-cache entry). The client gets
//! every frame as it comes, never after a buffer fills; the copy is kept at
//! the last frame. An answer over the keeper's limit, trailers, an upstream
//! error, or a client that goes away before the end (the body is dropped)
//! leaves nothing kept.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::pool::UpstreamBody;

/// What a `TeeBody` copies the answer's body into.
pub trait Keeper {
    /// The most body bytes worth keeping.
    fn limit(&self) -> u64;
    /// Where the body is copied.
    fn buffer(&mut self) -> &mut BytesMut;
    /// The whole body is in `buffer`: keep the answer.
    fn keep(self);
}

pub struct TeeBody<K> {
    inner: UpstreamBody,
    keeping: Option<K>,
}

impl<K: Keeper + Unpin> TeeBody<K> {
    pub fn new(inner: UpstreamBody, mut keeper: K) -> TeeBody<K> {
        // The copy in one allocation of its size when the length is known.
        if let Some(n) = inner.size_hint().exact().filter(|&n| n <= keeper.limit()) {
            keeper.buffer().reserve(usize::try_from(n).unwrap_or(0));
        }
        if inner.is_end_stream() {
            // No body to stream (204, 304, Content-Length: 0): nothing will
            // poll one, so the answer is kept before its head goes out.
            keeper.keep();
            return TeeBody {
                inner,
                keeping: None,
            };
        }
        TeeBody {
            inner,
            keeping: Some(keeper),
        }
    }
}

/// `buf`'s bytes in an allocation of their own size when it grew with room
/// to spare: what a memory bound counts is then what the copy holds.
pub fn frozen(buf: &mut BytesMut) -> Bytes {
    let (len, room) = (buf.len(), buf.capacity());
    if room > len + len / 8 + 64 {
        Bytes::copy_from_slice(buf)
    } else {
        buf.split().freeze()
    }
}

impl<K: Keeper + Unpin> Body for TeeBody<K> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let Some(keeping) = this.keeping.as_mut() else {
            return Poll::Ready(polled);
        };
        match &polled {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) if (keeping.buffer().len() + data.len()) as u64 <= keeping.limit() => {
                    keeping.buffer().extend_from_slice(data);
                    if this.inner.is_end_stream()
                        && let Some(done) = this.keeping.take()
                    {
                        done.keep();
                    }
                }
                // Too large to keep, or trailers (not kept): the rest
                // streams as it comes.
                _ => this.keeping = None,
            },
            None => {
                if let Some(done) = this.keeping.take() {
                    done.keep();
                }
            }
            Some(Err(_)) => this.keeping = None,
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        // Not over while an answer remains to be kept, even an empty one.
        self.keeping.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
