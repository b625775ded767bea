//! `ResponseBody` is what the client receives: an upstream stream
//! or a small gateway-made body; when it is dropped (fully sent or abandoned) it
//! finishes the request's record, so logs and metrics see the real end of the
//! exchange and the real byte count.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::compress::CompressedBody;
use super::idempotent::KeptBody;
use super::record::RequestRecord;
use crate::cache::route::CachingBody;
use crate::upstream::pool::UpstreamBody;

/// Why a response body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
    #[error("compressing the body: {0}")]
    Compress(std::io::Error),
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
    /// The upstream body through an encoder (`compress:`).
    Compressed(Box<CompressedBody>),
    /// The upstream body, stored for replay as it streams (`idempotency:`).
    Kept(Box<KeptBody>),
    /// The upstream body, stored in the route's cache as it streams (`cache:`).
    Cached(Box<CachingBody>),
}

/// What the client receives.
pub struct ResponseBody {
    kind: Kind,
    sent: u64,
    failed: bool,
    record: Option<Box<RequestRecord>>,
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes).filter(|b| !b.is_empty())),
            sent: 0,
            failed: false,
            record: None,
        }
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    pub fn upstream(body: UpstreamBody) -> Self {
        ResponseBody {
            kind: Kind::Upstream(body),
            sent: 0,
            failed: false,
            record: None,
        }
    }

    pub fn compressed(body: Box<CompressedBody>) -> Self {
        ResponseBody {
            kind: Kind::Compressed(body),
            sent: 0,
            failed: false,
            record: None,
        }
    }

    pub fn kept(body: Box<KeptBody>) -> Self {
        ResponseBody {
            kind: Kind::Kept(body),
            sent: 0,
            failed: false,
            record: None,
        }
    }

    pub fn cached(body: Box<CachingBody>) -> Self {
        ResponseBody {
            kind: Kind::Cached(body),
            sent: 0,
            failed: false,
            record: None,
        }
    }

    /// Attaches the record that is finished when this body is done.
    pub fn set_record(&mut self, record: Box<RequestRecord>) {
        self.record = Some(record);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(ResponseBodyError::Upstream),
            Kind::Compressed(body) => body.poll_frame(cx),
            Kind::Kept(body) => Pin::new(&mut **body)
                .poll_frame(cx)
                .map_err(ResponseBodyError::Upstream),
            Kind::Cached(body) => Pin::new(&mut **body)
                .poll_frame(cx)
                .map_err(ResponseBodyError::Upstream),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.failed = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Compressed(body) => body.is_end_stream(),
            Kind::Kept(body) => body.is_end_stream(),
            Kind::Cached(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(body) => body.size_hint(),
            Kind::Compressed(_) => SizeHint::default(),
            Kind::Kept(body) => body.size_hint(),
            Kind::Cached(body) => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            let complete = !self.failed && self.is_end_stream();
            record.body_done(self.sent, complete);
        }
    }
}
