//! Idempotency keys on the request path (`crate::idempotency`): `admit` reads
//! the key and takes it in the store (or finds the request in flight, or its
//! stored answer); `replay` answers a retry from the store once its body proved
//! it is the same request; `keep` wraps a forwarded answer in `KeptBody`, which
//! streams it to the client and stores it when its last frame arrives.

use std::sync::Arc;

use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::Exchange;
use super::body::ResponseBody;
use crate::body::{BodyDigest, RequestBody};
use crate::error::{GatewayError, IdempotencyFailure};
use crate::idempotency::{
    Answer, Claim, Found, IDEMPOTENT_REPLAYED, Lock, RouteIdempotency, StoreError, applies_to,
    caller, fingerprint, head_bytes, head_digest, read_key, storage_key,
};
use crate::snapshot::BodyLimits;
use crate::upstream::pool::UpstreamBody;
use crate::upstream::tee::{Keeper, TeeBody, frozen};

/// A request that holds its key while it is forwarded.
pub struct Keyed {
    claim: Claim,
    /// The request's fingerprint: SHA-256 over the head, then the body as it
    /// goes upstream.
    pub digest: Arc<BodyDigest>,
}

/// What the key of a request decided.
pub enum Admit {
    /// Forward it as any request: a safe method, no key (and none required),
    /// or a store that failed with `on_store_error: pass`.
    Plain,
    /// Forward it holding the key.
    Keyed(Keyed),
    /// A finished request's answer, to replay if the retry's fingerprint
    /// (head done, body still to read) matches.
    Replay(Arc<Answer>, BodyDigest),
}

fn refuse(f: IdempotencyFailure) -> GatewayError {
    GatewayError::Idempotency(f)
}

/// Reads the request's key and asks the store about it (one round trip).
pub async fn admit(
    idem: &Arc<RouteIdempotency>,
    parts: &http::request::Parts,
    ex: &Exchange,
) -> Result<Admit, GatewayError> {
    if !applies_to(&parts.method) {
        return Ok(Admit::Plain);
    }
    let (policy, m) = (&*idem.policy, &idem.metrics);
    let key = match read_key(&parts.headers) {
        Ok(Some(key)) => key,
        Ok(None) => {
            m.missing.inc();
            if policy.required {
                return Err(refuse(IdempotencyFailure::Missing));
            }
            return Ok(Admit::Plain);
        }
        Err(_) => {
            m.invalid.inc();
            return Err(refuse(IdempotencyFailure::Invalid));
        }
    };
    let p = &ex.policy;
    let who = caller(p.consumer.as_deref(), p.claims.is_some(), p.client_ip);
    let head_bytes = head_bytes(&parts.method, parts.uri.path(), parts.uri.query());
    let head = head_digest(&head_bytes);
    let store_key: Arc<str> = storage_key(&idem.route, &key, &who).into();
    let lock = Lock::new(head, who, key.into());
    match policy
        .store
        .begin(&store_key, &lock, policy.lock_timeout)
        .await
    {
        Ok(Found::Taken) => Ok(Admit::Keyed(Keyed {
            claim: Claim::new(idem.clone(), store_key, lock),
            digest: Arc::new(fingerprint(&head_bytes)),
        })),
        Ok(Found::InFlight { head: first }) if first != head => {
            m.mismatch.inc();
            Err(refuse(IdempotencyFailure::Mismatch))
        }
        Ok(Found::InFlight { .. }) => {
            m.conflict.inc();
            Err(refuse(IdempotencyFailure::InUse))
        }
        Ok(Found::Done(answer)) if answer.head != head => {
            m.mismatch.inc();
            Err(refuse(IdempotencyFailure::Mismatch))
        }
        Ok(Found::Done(answer)) => Ok(Admit::Replay(answer, fingerprint(&head_bytes))),
        Err(e) => {
            m.store_error.inc();
            // While the store is skipped (`store_breaker`), that was logged once.
            if !matches!(e, StoreError::Skipped) {
                tracing::warn!(route = %idem.route, policy = %policy.name, error = %e,
                    pass = policy.pass_on_store_error, "idempotency store failed");
            }
            if policy.pass_on_store_error {
                Ok(Admit::Plain)
            } else {
                Err(refuse(IdempotencyFailure::Unavailable))
            }
        }
    }
}

/// Answers a retry with the stored answer, after reading its body (within the
/// body limit and stall timeout) to check that it is the same request.
pub async fn replay(
    idem: &RouteIdempotency,
    answer: Arc<Answer>,
    digest: BodyDigest,
    body: super::ClientBody,
    limits: &BodyLimits,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, GatewayError> {
    let digest = Arc::new(digest);
    match body {
        super::ClientBody::Read(bytes) => {
            digest.update(&bytes);
            digest.finish();
        }
        super::ClientBody::Wire(body) => {
            let received = Arc::default();
            ex.bytes_in = Some(Arc::clone(&received));
            let mut body = RequestBody::new(body, limits.max_bytes, limits.read_timeout, received)
                .with_digest(digest.clone());
            // Read to the end, keeping nothing but the digest.
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                frame.map_err(|e| super::body_error(e, limits.max_bytes))?;
            }
        }
    }
    let same = digest.get().is_some_and(|d| d == answer.fingerprint);
    if !same {
        idem.metrics.mismatch.inc();
        return Err(refuse(IdempotencyFailure::Mismatch));
    }
    idem.metrics.replayed.inc();
    let mut resp = Response::new(ResponseBody::full(answer.body.clone()));
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers.clone();
    resp.headers_mut().insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    Ok(resp)
}

/// Whether an upstream answer is kept for replay: 2xx and 4xx. A 5xx (and
/// anything else) releases the key so that the client may try again.
fn storable(status: StatusCode) -> bool {
    status.is_success() || status.is_client_error()
}

/// The forwarded answer on its way to the client: kept for replay when it may
/// be, else the key is released now.
pub fn keep(resp: Response<UpstreamBody>, keyed: Keyed) -> Response<ResponseBody> {
    if !storable(resp.status()) {
        // Dropping the claim releases the key.
        return resp.map(ResponseBody::upstream);
    }
    let (parts, body) = resp.into_parts();
    let keeping = Keeping {
        limit: keyed.claim.policy().max_response_bytes,
        keyed,
        status: parts.status,
        headers: crate::headers::owned(&parts.headers),
        body: BytesMut::new(),
    };
    let kept = TeeBody::new(body, keeping);
    Response::from_parts(parts, ResponseBody::kept(Box::new(kept)))
}

/// The upstream body, copied aside as it streams. At its last frame the copy
/// is stored (in memory before that frame goes out; to Redis alongside it).
/// An answer over `max_response_bytes`, trailers, an upstream error, or a
/// client that goes away before the end gives the key back instead.
pub type KeptBody = TeeBody<Keeping>;

/// What `KeptBody` collects while the answer streams.
pub struct Keeping {
    keyed: Keyed,
    status: StatusCode,
    headers: HeaderMap,
    body: BytesMut,
    limit: u64,
}

impl Keeping {
    /// Stores the answer, when the request body was read to its end (an
    /// upstream that answered before reading it all leaves no fingerprint,
    /// and dropping the claim releases the key).
    fn store(mut self) {
        let Some(fingerprint) = self.keyed.digest.get() else {
            return;
        };
        let claim = self.keyed.claim;
        let lock = claim.lock();
        let answer = Answer {
            fingerprint,
            head: lock.head,
            status: self.status,
            headers: self.headers,
            body: frozen(&mut self.body),
            caller: lock.caller.clone(),
            key: lock.key.clone(),
            stored_ms: crate::idempotency::store::unix_ms(),
        };
        claim.complete(answer);
    }
}

/// Too large, trailers, an error or a client gone: the `Keeping` is dropped
/// instead of kept, which gives the key back.
impl Keeper for Keeping {
    fn limit(&self) -> u64 {
        self.limit
    }

    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.body
    }

    fn keep(self) {
        self.store();
    }
}
