//! The response cache on the request path of a `cache:` route.
//!
//! Before the upstream (`lookup`): a fresh stored answer is the answer; a
//! stale one within `stale-while-revalidate` is the answer while one
//! background refresh runs; otherwise the request goes upstream (`Plan`),
//! with the stored validators when there is a stale copy, and concurrent
//! misses for one key wait for the first one's answer instead of going too.
//! After the upstream (`finish`): a 304 to the validators refreshes the copy,
//! a failure within `stale-if-error` serves it, and a storable answer is
//! stored as it streams to the client. A successful unsafe request
//! invalidates its URL. Every request on the route gets a `Cache-Status`
//! (RFC 9211) and one outcome, counted and logged.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode};

use super::aside::{self, Aside, Sent};
use super::body::ResponseBody;
use super::{Answered, Exchange};
use crate::cache::control;
use crate::cache::route::{
    Asked, CACHE_STATUS, CachingBody, Keys, Outcome, Pending, RouteCache, answer_from, hit_status,
    refreshed,
};
use crate::cache::store::{Entry, Flight, FlightGuard, Purge};
use crate::error::GatewayError;
use crate::snapshot::Snapshot;

/// What the cache makes of a request before the upstream.
pub enum Lookup {
    /// Answered from the cache.
    Answer(Response<ResponseBody>),
    /// A stale copy is the answer; with `Some`, this request starts the one
    /// background refresh of it.
    Stale(Response<ResponseBody>, Option<Box<Refresh>>),
    /// To the upstream; `finish` takes the answer.
    Forward(Plan),
}

/// What to do with the upstream's answer.
pub enum Plan {
    /// Neither answered from nor stored in the cache.
    Bypass,
    /// An unsafe method: on success, these primary keys (GET and HEAD of the
    /// URL) are invalidated.
    Invalidate(Vec<String>),
    /// May be stored, or refresh a stale copy.
    Fetch(Box<Fetch>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fwd {
    /// Nothing stored.
    Miss,
    /// A stale copy is being revalidated or replaced.
    Stale,
    /// The client asked to revalidate (`no-cache`, `max-age`).
    Request,
}

impl Fwd {
    fn label(self) -> &'static str {
        match self {
            Fwd::Miss => "miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
        }
    }
}

pub struct Fetch {
    fwd: Fwd,
    keys: Keys,
    method: Method,
    /// The client's request headers: the variant key, and its own
    /// conditional request answered from a refreshed copy.
    request: HeaderMap,
    credentials: bool,
    request_time: SystemTime,
    /// The stored copy and its key.
    stale: Option<(String, Arc<Entry>)>,
    /// The stored validators went upstream: a 304 refreshes `stale`.
    conditional: bool,
    /// Leads the miss for its key: followers wait until it is dropped.
    flight: Option<FlightGuard>,
}

/// A background refresh of a stale copy (stale-while-revalidate).
pub struct Refresh {
    _flight: FlightGuard,
    key: String,
    entry: Arc<Entry>,
    keys: Keys,
    method: Method,
    request: HeaderMap,
    credentials: bool,
}

fn outcome(rc: &RouteCache, ex: &mut Exchange, o: Outcome) {
    rc.count(o);
    ex.cache = Some(o);
}

fn served(resp: Response<Bytes>) -> Response<ResponseBody> {
    resp.map(ResponseBody::full)
}

/// Looks the request up. `wait` bounds how long a miss waits for the same
/// key's miss in flight (the route's timeout).
pub async fn lookup(
    rc: &RouteCache,
    parts: &mut Parts,
    host: Option<&str>,
    credentials: bool,
    wait: Duration,
    ex: &mut Exchange,
) -> Lookup {
    let method = parts.method.clone();
    if method != Method::GET && method != Method::HEAD {
        if is_unsafe(&method) {
            let (path, query) = (parts.uri.path(), parts.uri.query());
            let keys = [Method::GET, Method::HEAD]
                .iter()
                .map(|m| rc.keys(m, path, query, host).primary)
                .collect();
            return Lookup::Forward(Plan::Invalidate(keys));
        }
        return Lookup::Forward(Plan::Bypass);
    }
    let asked = control::request_directives(&parts.headers);
    if asked.no_store {
        return Lookup::Forward(Plan::Bypass);
    }
    let keys = rc.keys(&method, parts.uri.path(), parts.uri.query(), host);
    let request_time = SystemTime::now();
    let deadline = tokio::time::Instant::now() + wait;
    let mut followed = false;
    loop {
        let (variant, found) = rc.find(&keys, &parts.headers).await;
        let key = variant.as_deref().unwrap_or(&keys.primary);
        let usable = found.filter(|e| RouteCache::usable(e, credentials));
        let now = SystemTime::now();
        let Some(entry) = usable else {
            // Requests with credentials do not wait for each other: their
            // answers are rarely stored.
            let joined = if credentials {
                Joined::Alone
            } else {
                join(rc, key, followed, deadline).await
            };
            let flight = match joined {
                Joined::Waited => {
                    followed = true;
                    continue;
                }
                joined => joined.guard(),
            };
            return Lookup::Forward(Plan::Fetch(Box::new(Fetch {
                fwd: Fwd::Miss,
                keys,
                method,
                request: parts.headers.clone(),
                credentials,
                request_time,
                stale: None,
                conditional: false,
                flight,
            })));
        };
        let client_revalidates = asked.no_cache
            || asked
                .max_age
                .is_some_and(|m| entry.age(now) > Duration::from_secs(m));
        if !client_revalidates && entry.is_fresh(now) {
            let (o, status) = if followed {
                (Outcome::Coalesced, "tollgate; hit; collapsed".to_string())
            } else {
                (Outcome::Hit, hit_status(&entry, None))
            };
            outcome(rc, ex, o);
            return Lookup::Answer(served(answer_from(&entry, &parts.headers, &method, status)));
        }
        if !client_revalidates
            && !entry.revalidate
            && entry.stale_within(now, entry.stale_while_revalidate)
        {
            outcome(rc, ex, Outcome::Stale);
            let resp = served(answer_from(
                &entry,
                &parts.headers,
                &method,
                hit_status(&entry, Some("stale-while-revalidate")),
            ));
            let refresh = match rc.cache.flight(key) {
                Flight::Lead(guard) => Some(Box::new(Refresh {
                    _flight: guard,
                    key: key.to_owned(),
                    entry,
                    keys,
                    method,
                    request: parts.headers.clone(),
                    credentials,
                })),
                Flight::Follow(_) => None,
            };
            return Lookup::Stale(resp, refresh);
        }
        // Stale (or the client wants it checked): ask the upstream, with the
        // stored validators. Stale requests for one key wait for one another;
        // a client asking to revalidate goes itself.
        let joined = if client_revalidates {
            Joined::Alone
        } else {
            join(rc, key, followed, deadline).await
        };
        let flight = match joined {
            Joined::Waited => {
                followed = true;
                continue;
            }
            joined => joined.guard(),
        };
        let stale = Some((key.to_owned(), entry));
        let request = parts.headers.clone();
        let conditional = stale
            .as_ref()
            .is_some_and(|(_, e)| set_validators(&mut parts.headers, e));
        return Lookup::Forward(Plan::Fetch(Box::new(Fetch {
            fwd: if client_revalidates {
                Fwd::Request
            } else {
                Fwd::Stale
            },
            keys,
            method,
            request,
            credentials,
            request_time,
            stale,
            conditional,
            flight,
        })));
    }
}

/// A request's part in the miss for its key.
enum Joined {
    /// It goes upstream; followers wait for this guard.
    Lead(FlightGuard),
    /// It waited for another's answer: look again.
    Waited,
    /// It goes upstream on its own.
    Alone,
}

impl Joined {
    fn guard(self) -> Option<FlightGuard> {
        match self {
            Joined::Lead(guard) => Some(guard),
            Joined::Waited | Joined::Alone => None,
        }
    }
}

/// Leads the miss for `key`, or waits for the one in flight until it is done
/// (its answer stored or known not to be) or `deadline`. Once only
/// (`waited`): an answer that is never stored must not queue its requests.
async fn join(rc: &RouteCache, key: &str, waited: bool, deadline: tokio::time::Instant) -> Joined {
    match rc.cache.flight(key) {
        Flight::Lead(guard) => Joined::Lead(guard),
        Flight::Follow(leader) if !waited && tokio::time::Instant::now() < deadline => {
            let _ = tokio::time::timeout_at(deadline, leader.done()).await;
            Joined::Waited
        }
        Flight::Follow(_) => Joined::Alone,
    }
}

/// POST, PUT, PATCH, DELETE and any method RFC 9110 does not call safe.
fn is_unsafe(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Puts the stored validators in place of the client's own conditionals
/// (the cache answers those itself); whether there were any.
fn set_validators(headers: &mut HeaderMap, entry: &Entry) -> bool {
    let (etag, modified) = (entry.etag(), entry.last_modified());
    if etag.is_none() && modified.is_none() {
        return false;
    }
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
    if let Some(v) = etag {
        headers.insert(header::IF_NONE_MATCH, v.clone());
    }
    if let Some(v) = modified {
        headers.insert(header::IF_MODIFIED_SINCE, v.clone());
    }
    true
}

/// A failure the stale copy may stand in for (RFC 5861 §4): no answer, a
/// timeout, an open circuit, a full bulkhead.
fn upstream_failed(e: &GatewayError) -> bool {
    matches!(
        e,
        GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::CircuitOpen { .. }
            | GatewayError::NoHealthyUpstream { .. }
            | GatewayError::UpstreamOverloaded { .. }
    )
}

fn set_status(a: &mut Answered, status: HeaderValue) {
    let headers = match a {
        Answered::Upstream(r) => r.headers_mut(),
        Answered::Switched(r) | Answered::Cached(r) => r.headers_mut(),
    };
    headers.insert(CACHE_STATUS.clone(), status);
}

/// A `Cache-Status` made at run time (the common ones are static).
fn status_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("tollgate"))
}

const BYPASS: HeaderValue = HeaderValue::from_static("tollgate; fwd=bypass");
const MISS: HeaderValue = HeaderValue::from_static("tollgate; fwd=miss");
const MISS_STORED: HeaderValue = HeaderValue::from_static("tollgate; fwd=miss; stored");

fn succeeded(a: &Answered) -> bool {
    let status = match a {
        Answered::Upstream(r) => r.status(),
        Answered::Switched(r) | Answered::Cached(r) => r.status(),
    };
    status.is_success() || status.is_redirection()
}

/// Takes the upstream's answer (or failure) to a forwarded request.
pub(super) fn finish(
    rc: &RouteCache,
    plan: Plan,
    answered: Result<Answered, GatewayError>,
    ex: &mut Exchange,
) -> Result<Answered, GatewayError> {
    match plan {
        Plan::Bypass => {
            outcome(rc, ex, Outcome::Bypass);
            let mut a = answered?;
            set_status(&mut a, BYPASS);
            Ok(a)
        }
        Plan::Invalidate(keys) => {
            outcome(rc, ex, Outcome::Bypass);
            let mut a = answered?;
            if succeeded(&a) {
                rc.cache.purge_soon(Purge::Keys(keys));
            }
            set_status(&mut a, BYPASS);
            Ok(a)
        }
        Plan::Fetch(fetch) => fetch.finish(rc, answered, ex),
    }
}

impl Fetch {
    fn finish(
        self,
        rc: &RouteCache,
        answered: Result<Answered, GatewayError>,
        ex: &mut Exchange,
    ) -> Result<Answered, GatewayError> {
        let now = SystemTime::now();
        let for_error = self
            .stale
            .as_ref()
            .map(|(_, e)| e)
            .filter(|e| e.stale_within(now, e.stale_if_error));
        let resp = match answered {
            Ok(Answered::Upstream(resp)) => resp,
            Ok(other) => {
                outcome(rc, ex, Outcome::Bypass);
                return Ok(other);
            }
            Err(e) => {
                if let Some(entry) = for_error.filter(|_| upstream_failed(&e)) {
                    return Ok(self.stale_if_error(rc, entry, ex));
                }
                outcome(rc, ex, Outcome::Miss);
                return Err(e);
            }
        };
        let status = resp.status();
        if let Some(entry) = for_error
            && matches!(status.as_u16(), 500 | 502 | 503 | 504)
        {
            return Ok(self.stale_if_error(rc, entry, ex));
        }
        let fwd = self.fwd.label();
        if status == StatusCode::NOT_MODIFIED
            && self.conditional
            && let Some((key, old)) = &self.stale
        {
            let fresh = refreshed(old, resp.headers(), rc.default_ttl());
            let fresh = Pending::refresh(&rc.cache, key, fresh);
            outcome(rc, ex, Outcome::Revalidated);
            let status = format!("tollgate; fwd={fwd}; fwd-status=304");
            return Ok(Answered::Cached(served(answer_from(
                &fresh,
                &self.request,
                &self.method,
                status,
            ))));
        }
        let asked = Asked {
            method: &self.method,
            headers: &self.request,
            credentials: self.credentials,
            time: self.request_time,
        };
        let pending = rc.admit(self.keys, &asked, status, resp.headers());
        let label = match (self.fwd, pending.is_some()) {
            (Fwd::Miss, true) => MISS_STORED,
            (Fwd::Miss, false) if self.credentials => BYPASS,
            (Fwd::Miss, false) => MISS,
            (_, true) => status_value(&format!(
                "tollgate; fwd={fwd}; fwd-status={}; stored",
                status.as_u16()
            )),
            (_, false) => status_value(&format!(
                "tollgate; fwd={fwd}; fwd-status={}",
                status.as_u16()
            )),
        };
        let o = if pending.is_none() && self.credentials && self.fwd == Fwd::Miss {
            Outcome::Bypass
        } else {
            Outcome::Miss
        };
        outcome(rc, ex, o);
        let mut a =
            match pending {
                // A HEAD answer has no body to stream: stored now.
                Some(pending) if self.method == Method::HEAD => {
                    pending.store();
                    Answered::Upstream(resp)
                }
                Some(pending) => {
                    let pending = pending.leading(self.flight);
                    Answered::Cached(resp.map(|body| {
                        ResponseBody::cached(Box::new(CachingBody::new(body, pending)))
                    }))
                }
                None => {
                    // The upstream no longer lets its answer be stored: the old
                    // copy goes too.
                    if let Some((key, _)) = &self.stale
                        && status.is_success()
                    {
                        rc.cache.remove_local(key);
                    }
                    Answered::Upstream(resp)
                }
            };
        set_status(&mut a, label);
        Ok(a)
    }

    fn stale_if_error(&self, rc: &RouteCache, entry: &Entry, ex: &mut Exchange) -> Answered {
        outcome(rc, ex, Outcome::Stale);
        let status = hit_status(entry, Some("stale-if-error"));
        Answered::Cached(served(answer_from(
            entry,
            &self.request,
            &self.method,
            status,
        )))
    }
}

/// Starts the background refresh: the upstream request as the route made it
/// (`parts`, `path_and_query`), with the stored validators, in a task of its
/// own bounded by the upstream's request timeout.
pub(super) fn spawn_refresh(
    snap: &Arc<Snapshot>,
    route: usize,
    upstream: usize,
    parts: &Parts,
    path_and_query: PathAndQuery,
    refresh: Box<Refresh>,
    ex: &Exchange,
) {
    let mut headers = parts.headers.clone();
    let conditional = set_validators(&mut headers, &refresh.entry);
    let aside = Aside {
        method: parts.method.clone(),
        path_and_query,
        headers,
        body: Bytes::new(),
        client_ip: ex.policy.client_ip,
    };
    let snap = Arc::clone(snap);
    tokio::spawn(async move {
        // Bound whole: the flight ends when this task does.
        let Refresh {
            _flight,
            key,
            entry,
            keys,
            method,
            request,
            credentials,
        } = *refresh;
        let (Some(r), Some(up)) = (snap.routes.get(route), snap.upstreams.get(upstream)) else {
            return;
        };
        let Some(rc) = r.cache.as_ref() else { return };
        let request_time = SystemTime::now();
        let keep = rc.cache.max_object_bytes;
        let Ok(Sent::Answered { mut head, body }) =
            tokio::time::timeout(up.request_timeout, aside::send(up, aside, keep)).await
        else {
            return;
        };
        if head.status == StatusCode::NOT_MODIFIED && conditional {
            let fresh = refreshed(&entry, &head.headers, rc.default_ttl());
            Pending::refresh(&rc.cache, &key, fresh);
            return;
        }
        let Some(body) = body else { return };
        crate::headers::strip_hop_by_hop(&mut head.headers);
        r.response_headers.apply(&mut head.headers);
        let asked = Asked {
            method: &method,
            headers: &request,
            credentials,
            time: request_time,
        };
        if let Some(pending) = rc.admit(keys, &asked, head.status, &head.headers) {
            pending.store_with(body);
        }
    });
}
