//! Response compression for routes with `compress:`: the encoding is chosen from
//! the client's Accept-Encoding before the request goes upstream, the upstream's
//! response head decides whether its body is worth compressing, and the body is
//! then streamed through an encoder (async-compression), never buffered whole.
//!
//! The encoder flushes whenever the upstream has no more data ready, so a slow
//! stream (server-sent events, long polling) is never held back by it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::compression::Compression;
use crate::config::values::Encoding;
use crate::upstream::pool::UpstreamBody;
use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

use super::body::{ResponseBody, ResponseBodyError};

/// gzip level 1, as NGINX's default `gzip_comp_level`: most of the size gain on
/// text and JSON for a fraction of the CPU of the higher levels.
const GZIP_LEVEL: i32 = 1;
/// Brotli quality 4: faster than gzip -6 with a better ratio; 5 and above cost
/// several times more CPU per byte for a few percent.
const BROTLI_QUALITY: i32 = 4;
/// zstd's own default level.
const ZSTD_LEVEL: i32 = 3;
/// Brotli and zstd windows of 256 KiB (2^18): bounds each open encoder's memory
/// (brotli's default window is 4 MiB) at little cost in ratio for API answers.
const WINDOW_LOG: u32 = 18;
/// The most compressed bytes handed to the client in one frame.
const OUT_CHUNK: usize = 16 * 1024;

/// What the request allows, decided before it goes upstream (the request's
/// parts are moved into the upstream request), applied to the response.
pub struct Negotiated<'a> {
    policy: Option<&'a Compression>,
    encoding: Option<Encoding>,
}

impl<'a> Negotiated<'a> {
    pub fn new(policy: Option<&'a Compression>, req: &Parts) -> Negotiated<'a> {
        // HEAD answers stay as the upstream made them: no body to encode.
        let policy = policy.filter(|_| req.method != Method::HEAD);
        Negotiated {
            encoding: policy.and_then(|p| p.choose(&req.headers)),
            policy,
        }
    }

    /// The client's response: the upstream's, compressed when the route, the
    /// client and the response allow it.
    pub fn respond(self, resp: Response<UpstreamBody>) -> Response<ResponseBody> {
        let Some(policy) = self.policy else {
            return resp.map(ResponseBody::upstream);
        };
        let (mut parts, body) = resp.into_parts();
        if !eligible(parts.status, &parts.headers, &body, policy.min_bytes()) {
            return Response::from_parts(parts, ResponseBody::upstream(body));
        }
        // The answer depends on Accept-Encoding whichever variant this client gets.
        add_vary(&mut parts.headers);
        let Some(encoding) = self.encoding else {
            return Response::from_parts(parts, ResponseBody::upstream(body));
        };
        let h = &mut parts.headers;
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.name()),
        );
        h.remove(header::CONTENT_LENGTH);
        // Byte ranges of the compressed form are not offered.
        h.remove(header::ACCEPT_RANGES);
        weaken_etag(h);
        if let Some(c) = policy.counter(encoding) {
            c.inc();
        }
        Response::from_parts(
            parts,
            ResponseBody::compressed(Box::new(CompressedBody::new(body, encoding))),
        )
    }
}

/// Whether a response may be compressed, whatever the client accepts.
fn eligible(status: StatusCode, headers: &HeaderMap, body: &UpstreamBody, min: u64) -> bool {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::PARTIAL_CONTENT
        || headers.contains_key(header::CONTENT_RANGE)
        || body.is_end_stream()
    {
        return false;
    }
    let already_encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if already_encoded || has_token(headers, &header::CACHE_CONTROL, "no-transform") {
        return false;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len < min) {
        return false;
    }
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(compressible)
}

/// Whether a media type gains from compression. Unknown types are compressed;
/// formats that are compressed already (images, audio, video, archives, woff
/// fonts, PDF), opaque bytes and gRPC are not. Without a Content-Type the body
/// is left alone: it could be anything.
pub fn compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    let is = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let sub_in = |list: &[&str]| list.iter().any(|s| is(sub, s));
    if is(ty, "text") {
        true
    } else if is(ty, "image") {
        sub_in(&["svg+xml", "bmp", "x-icon", "vnd.microsoft.icon"])
    } else if is(ty, "video") || is(ty, "audio") || is(ty, "multipart") {
        false
    } else if is(ty, "font") {
        !sub_in(&["woff", "woff2"])
    } else if is(ty, "application") {
        let grpc = sub.get(..4).is_some_and(|p| is(p, "grpc"));
        let zip_suffix = sub
            .get(sub.len().saturating_sub(4)..)
            .is_some_and(|s| is(s, "+zip"));
        !(grpc
            || zip_suffix
            || sub_in(&[
                "octet-stream",
                "zip",
                "gzip",
                "x-gzip",
                "zstd",
                "x-bzip2",
                "x-xz",
                "x-7z-compressed",
                "x-rar-compressed",
                "vnd.rar",
                "pdf",
                "ogg",
                "font-woff",
                "x-font-woff",
            ]))
    } else {
        true
    }
}

/// Whether a comma-separated header has `token` (case-insensitive) in any value.
fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn add_vary(headers: &mut HeaderMap) {
    if has_token(headers, &header::VARY, "accept-encoding")
        || has_token(headers, &header::VARY, "*")
    {
        return;
    }
    headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
}

/// A strong validator no longer matches the bytes sent: make it weak (`W/"x"`),
/// so conditional requests still work but byte-range ones do not.
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(etag) = headers.get(header::ETAG) else {
        return;
    };
    if !etag.as_bytes().starts_with(b"\"") {
        return;
    }
    let mut weak = Vec::with_capacity(etag.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(etag.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&weak) {
        headers.insert(header::ETAG, v);
    }
}

// ---------------------------------------------------------------------------
// The streaming body
// ---------------------------------------------------------------------------

/// The upstream body as a buffered reader for the encoders. Trailers and the
/// upstream's own error are kept aside for the outer body.
struct UpstreamReader {
    body: UpstreamBody,
    chunk: Bytes,
    ended: bool,
    trailers: Option<HeaderMap>,
    error: Option<hyper::Error>,
}

impl AsyncBufRead for UpstreamReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.chunk.is_empty() && !this.ended {
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.chunk = data,
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
                Some(Err(e)) => {
                    this.error = Some(e);
                    return Poll::Ready(Err(io::Error::other("the upstream body failed")));
                }
                None => this.ended = true,
            }
        }
        Poll::Ready(Ok(&this.chunk))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        self.get_mut().chunk.advance(amt);
    }
}

impl AsyncRead for UpstreamReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

// Lives inside the boxed `CompressedBody`: one allocation per compressed
// response whichever variant, so boxing the large brotli state again gains nothing.
#[allow(clippy::large_enum_variant)]
enum Encoder {
    Gzip(GzipEncoder<UpstreamReader>),
    Brotli(BrotliEncoder<UpstreamReader>),
    Zstd(ZstdEncoder<UpstreamReader>),
}

impl Encoder {
    fn reader(&self) -> &UpstreamReader {
        match self {
            Encoder::Gzip(e) => e.get_ref(),
            Encoder::Brotli(e) => e.get_ref(),
            Encoder::Zstd(e) => e.get_ref(),
        }
    }

    fn reader_mut(&mut self) -> &mut UpstreamReader {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }
}

impl AsyncRead for Encoder {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Encoder::Gzip(e) => Pin::new(e).poll_read(cx, buf),
            Encoder::Brotli(e) => Pin::new(e).poll_read(cx, buf),
            Encoder::Zstd(e) => Pin::new(e).poll_read(cx, buf),
        }
    }
}

/// The upstream body, compressed as it streams. Memory per response: the
/// encoder's state (bounded by the window sizes above) and one output chunk.
pub struct CompressedBody {
    encoder: Encoder,
    out: BytesMut,
    done: bool,
}

impl CompressedBody {
    fn new(body: UpstreamBody, encoding: Encoding) -> CompressedBody {
        let reader = UpstreamReader {
            body,
            chunk: Bytes::new(),
            ended: false,
            trailers: None,
            error: None,
        };
        let encoder = match encoding {
            Encoding::Gzip => Encoder::Gzip(GzipEncoder::with_quality(
                reader,
                Level::Precise(GZIP_LEVEL),
            )),
            Encoding::Brotli => Encoder::Brotli(BrotliEncoder::with_params(
                reader,
                async_compression::brotli::EncoderParams::default()
                    .quality(Level::Precise(BROTLI_QUALITY))
                    .window_size(WINDOW_LOG as i32),
            )),
            Encoding::Zstd => Encoder::Zstd(ZstdEncoder::with_quality_and_params(
                reader,
                Level::Precise(ZSTD_LEVEL),
                &[async_compression::zstd::CParameter::window_log(WINDOW_LOG)],
            )),
        };
        CompressedBody {
            encoder,
            out: BytesMut::new(),
            done: false,
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        if self.done {
            return Poll::Ready(
                self.encoder
                    .reader_mut()
                    .trailers
                    .take()
                    .map(|t| Ok(Frame::trailers(t))),
            );
        }
        self.out.reserve(OUT_CHUNK);
        match ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.encoder),
            cx,
            &mut self.out
        )) {
            Ok(0) => {
                self.done = true;
                Poll::Ready(
                    self.encoder
                        .reader_mut()
                        .trailers
                        .take()
                        .map(|t| Ok(Frame::trailers(t))),
                )
            }
            Ok(_) => Poll::Ready(Some(Ok(Frame::data(self.out.split().freeze())))),
            Err(e) => {
                self.done = true;
                let err = match self.encoder.reader_mut().error.take() {
                    Some(upstream) => ResponseBodyError::Upstream(upstream),
                    None => ResponseBodyError::Compress(e),
                };
                Poll::Ready(Some(Err(err)))
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.done && self.encoder.reader().trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_types() {
        for t in [
            "text/html",
            "text/plain; charset=utf-8",
            "application/json",
            "Application/JSON",
            "application/javascript",
            "application/xml",
            "application/problem+json",
            "application/wasm",
            "image/svg+xml",
            "font/ttf",
            "text/event-stream",
        ] {
            assert!(compressible(t), "{t}");
        }
        for t in [
            "",
            "json",
            "image/png",
            "image/jpeg",
            "video/mp4",
            "audio/mpeg",
            "font/woff2",
            "application/octet-stream",
            "application/zip",
            "application/gzip",
            "application/zstd",
            "application/pdf",
            "application/epub+zip",
            "application/grpc",
            "application/grpc+proto",
            "application/grpc-web",
            "multipart/byteranges; boundary=x",
        ] {
            assert!(!compressible(t), "{t}");
        }
    }

    #[test]
    fn etags_are_weakened_once() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        weaken_etag(&mut h);
        assert_eq!(h[header::ETAG], "W/\"abc\"");
        weaken_etag(&mut h);
        assert_eq!(h[header::ETAG], "W/\"abc\"");
    }

    #[test]
    fn vary_is_added_once() {
        let mut h = HeaderMap::new();
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        add_vary(&mut h);
        add_vary(&mut h);
        let all: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(all, ["Origin", "Accept-Encoding"]);
        let mut star = HeaderMap::new();
        star.insert(header::VARY, HeaderValue::from_static("*"));
        add_vary(&mut star);
        assert_eq!(star.get_all(header::VARY).iter().count(), 1);
    }
}
