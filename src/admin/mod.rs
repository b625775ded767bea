//! The admin listener (docs/reference/admin-api.md): `/healthz`, `/readyz`, `/metrics`, `/config`,
//! `/reload`, `/reloads`, `/explain`, `/upstreams`, `/idempotency/{route}/{key}`, `/cache/purge` and the dashboard
//! at `/ui/`. It is a separate, plain HTTP/1.1 and h2c listener meant for a private address; with
//! `server.admin.token` set, everything but the probes and the dashboard's static files needs that
//! bearer token.

mod ui;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::config::redact::redacted;
use crate::explain::{Probe, explain_json};
use crate::reload::{Reloader, Trigger};
use crate::server::Lifecycle;
use crate::shared::Shared;

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
    life: Lifecycle,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Kept open through the drain so /readyz can say 503 and
            // scrapes still work; it closes with the process.
            _ = life.abort.cancelled() => break,
        };
        let shared = shared.clone();
        let reloader = reloader.clone();
        let builder = builder.clone();
        let life = life.clone();
        // Admin connections are not tracked for draining: they must not hold
        // the shutdown up.
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                let reloader = reloader.clone();
                async move {
                    if req.uri().path() == "/cache/purge" {
                        let resp = if authorized(&req, &shared) {
                            cache_purge(req, &shared).await
                        } else {
                            unauthorized()
                        };
                        return Ok::<_, Infallible>(resp);
                    }
                    Ok::<_, Infallible>(answer(&req, &shared, &reloader).await)
                }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = life.abort.cancelled() => {}
            }
        });
    }
}

async fn answer(
    req: &Request<Incoming>,
    shared: &Shared,
    reloader: &Reloader,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !open_path(path) && !authorized(req, shared) {
        return unauthorized();
    }
    if path == "/reload" {
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n");
        }
        return match reloader.reload(Trigger::Admin).await {
            Ok(done) => json_response(StatusCode::OK, &json!(done)),
            Err(errors) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({
                    "error": "invalid_config",
                    "message": "the config was not reloaded; the running version keeps serving",
                    "errors": errors
                        .iter()
                        .map(|e| {
                            let mut v = json!(e);
                            v["text"] = Value::from(e.to_string());
                            v
                        })
                        .collect::<Vec<_>>(),
                }),
            ),
        };
    }
    if let Some(rest) = path.strip_prefix("/idempotency/") {
        return idempotency_key(req, rest, shared).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    if let Some(asset) = ui::asset(path, admin_token(shared).is_some()) {
        return asset;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if shared.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if shared.snapshot.load().jwks.iter().any(|s| !s.loaded()) {
                // A JWT policy whose keys never loaded would answer 503.
                text(StatusCode::SERVICE_UNAVAILABLE, "waiting for JWKS\n")
            } else {
                readiness(&shared.snapshot.load())
            }
        }
        "/metrics" => {
            let dropped = shared.access_log.dropped();
            shared
                .metrics
                .sync_access_log_dropped(u64::try_from(dropped).unwrap_or(u64::MAX));
            let snap = shared.snapshot.load();
            for source in &snap.jwks {
                source.update_age();
            }
            for cache in &snap.caches {
                cache.observe();
            }
            let mut r = Response::new(Full::new(Bytes::from(shared.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/config" => {
            let snap = shared.snapshot.load();
            let loaded_at = humantime::format_rfc3339_seconds(snap.loaded_at).to_string();
            json_response(
                StatusCode::OK,
                &json!({
                    "version": snap.version,
                    "loaded_at": loaded_at,
                    "source": snap.source.source,
                    "config": redacted(&snap.source.config, &snap.source.secrets),
                }),
            )
        }
        "/explain" => match probe(req.uri().query().unwrap_or("")) {
            Ok(probe) => {
                let snap = shared.snapshot.load();
                json_response(
                    StatusCode::OK,
                    &explain_json(&snap, &snap.source.config, &probe),
                )
            }
            Err(message) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "error": "bad_request", "message": message }),
            ),
        },
        "/reloads" => json_response(StatusCode::OK, &json!({ "reloads": reloader.history() })),
        "/upstreams" => {
            let snap = shared.snapshot.load();
            let body = crate::upstream::report::render(&snap.version, &snap.upstreams);
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics, /config, /explain, /upstreams, \
             /reloads, /idempotency/{route}/{key}, /ui/, POST /reload or POST /cache/purge\n",
        ),
    }
}

/// What answers without the admin token: the probes (a kubelet or a load
/// balancer holds no secret) and the dashboard's static files, which carry no
/// data; the dashboard asks for the token before it fetches any.
fn open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz") || ui::is_asset(path)
}

/// No token configured, or exactly one `Authorization: Bearer <token>` with
/// it (compared in constant time).
fn authorized(req: &Request<Incoming>, shared: &Shared) -> bool {
    let Some(token) = admin_token(shared) else {
        return true;
    };
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let value = value.as_bytes();
    let Some((scheme, given)) = value
        .iter()
        .position(|&b| b == b' ')
        .map(|i| (&value[..i], value[i + 1..].trim_ascii()))
    else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer") && bool::from(given.ct_eq(token.as_bytes()))
}

/// `server.admin.token` of the running version: a reload changes it at once.
fn admin_token(shared: &Shared) -> Option<String> {
    let snap = shared.snapshot.load();
    snap.source.config.server.admin.as_ref()?.token.clone()
}

/// The same answer for a missing and a wrong token.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({ "error": "unauthorized", "message": "the admin API needs its bearer token" }),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tollgate admin\""),
    );
    r
}

/// `GET /idempotency/{route}/{key}` shows the entries of one key (one per
/// caller, or the one `?caller=` names); `DELETE` releases them.
async fn idempotency_key(
    req: &Request<Incoming>,
    rest: &str,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let delete = match *req.method() {
        Method::GET | Method::HEAD => false,
        Method::DELETE => true,
        _ => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET or DELETE /idempotency/{route}/{key}\n",
            );
        }
    };
    let bad = |message: String| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "bad_request", "message": message }),
        )
    };
    let Some((route, key)) = rest
        .split_once('/')
        .filter(|(r, k)| !r.is_empty() && !k.is_empty())
    else {
        return bad("expected /idempotency/{route}/{key}".into());
    };
    let (route, key) = match (percent_decode(route, false), percent_decode(key, false)) {
        (Ok(r), Ok(k)) => (r, k),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let mut caller = None;
    for pair in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("caller", v)) => match percent_decode(v, true) {
                Ok(v) => caller = Some(v),
                Err(e) => return bad(e),
            },
            _ => return bad(format!("unknown parameter `{pair}`: expected caller")),
        }
    }
    let snap = shared.snapshot.load_full();
    let Some(idem) = snap
        .routes
        .iter()
        .find(|r| *r.name == *route)
        .and_then(|r| r.idempotency.clone())
    else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({
                "error": "not_found",
                "message": format!("no route `{route}` with an idempotency policy"),
            }),
        );
    };
    let prefix = crate::idempotency::key_prefix(&route, &key);
    let exact = caller.map(|c| crate::idempotency::storage_key(&route, &key, &c));
    let store = &idem.policy.store;
    let unavailable = |e: crate::idempotency::StoreError| {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "idempotency_store_unavailable", "message": e.to_string() }),
        )
    };
    if delete {
        return match store.remove(&prefix, exact.as_deref()).await {
            Ok(n) => json_response(StatusCode::OK, &json!({ "released": n })),
            Err(e) => unavailable(e),
        };
    }
    match store.entries(&prefix, exact.as_deref()).await {
        Ok(entries) if entries.is_empty() => json_response(
            StatusCode::NOT_FOUND,
            &json!({
                "error": "not_found",
                "message": format!("no entry for this key on route `{route}`"),
            }),
        ),
        Ok(entries) => json_response(
            StatusCode::OK,
            &json!({ "route": route, "key": key, "entries": entries }),
        ),
        Err(e) => unavailable(e),
    }
}

/// Ready once every dns / srv source has been looked up. An upstream left
/// without targets does not hold the gateway back (its routes answer 503),
/// but the answer names it.
fn readiness(snap: &crate::snapshot::Snapshot) -> Response<Full<Bytes>> {
    let mut detail = String::new();
    for up in &snap.upstreams {
        let crate::upstream::Targets::Discovered(d) = &up.targets else {
            continue;
        };
        if !d.settled() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("waiting for DNS (upstream {})\n", up.name),
            );
        }
        if d.current().is_empty() {
            let why: Vec<String> = d
                .sources()
                .iter()
                .zip(d.status())
                .map(|(s, st)| {
                    format!(
                        "{} {}: {}",
                        s.kind(),
                        s.label(),
                        st.last_error.as_deref().unwrap_or("no addresses")
                    )
                })
                .collect();
            detail.push_str(&format!(
                "upstream {} has no targets ({})\n",
                up.name,
                why.join("; ")
            ));
        }
    }
    text(StatusCode::OK, format!("ready\n{detail}"))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `method=M&host=H&path=P&header.NAME=V` -> a probe for the router.
fn probe(query: &str) -> Result<Probe, String> {
    let mut method = Method::GET;
    let mut host = None;
    let mut target = None;
    let mut headers = HeaderMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k, true)?, percent_decode(v, true)?);
        match k.as_str() {
            "method" => {
                method = Method::from_bytes(v.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("`{v}` is not an HTTP method"))?;
            }
            "host" => host = Some(v),
            "path" => target = Some(v),
            _ => match k.strip_prefix("header.") {
                Some(name) => {
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("`{name}` is not a header name"))?;
                    let value = HeaderValue::from_str(&v)
                        .map_err(|_| format!("bad value for header `{name}`"))?;
                    headers.append(name, value);
                }
                None => {
                    return Err(format!(
                        "unknown parameter `{k}`: expected method, host, path or header.NAME"
                    ));
                }
            },
        }
    }
    let target = target.ok_or("the `path` parameter is required")?;
    if !target.starts_with('/') {
        return Err(format!("the path must start with `/`, got `{target}`"));
    }
    Ok(Probe {
        method,
        host,
        target,
        headers,
    })
}

/// Decodes `%XX` escapes, and `+` as a space when `plus_is_space` (a query
/// component; in a path segment `+` is itself).
fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in `{s}`"))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8"))
}

/// `POST /cache/purge`: `{"url": …}`, `{"prefix": …, "host": …}` or
/// `{"tag": …}`, optionally with `"cache"` (else every cache). Answers the
/// entries this instance removed; with a shared tier the purge also reaches
/// Redis and every other instance.
async fn cache_purge(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    use crate::cache::store::Purge;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        url: Option<String>,
        prefix: Option<String>,
        host: Option<String>,
        tag: Option<String>,
        cache: Option<String>,
    }
    let bad = |message: String| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "bad_request", "message": message }),
        )
    };
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /cache/purge\n");
    }
    let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    let raw = match http_body_util::BodyExt::collect(limited).await {
        Ok(c) => c.to_bytes(),
        Err(_) => return bad("the body must be JSON of at most 64 KiB".into()),
    };
    let body: Body = match serde_json::from_slice(&raw) {
        Ok(b) => b,
        Err(e) => return bad(format!("the body is not a purge: {e}")),
    };
    let snap = shared.snapshot.load_full();
    let purge = match (body.url, body.prefix, body.tag) {
        (Some(url), None, None) if body.host.is_none() => match purge_url(&url, &snap) {
            Ok(p) => p,
            Err(m) => return bad(m),
        },
        (None, Some(prefix), None) if prefix.starts_with('/') => Purge::Prefix {
            prefix,
            host: body
                .host
                .map(|h| crate::cache::route::host_name(&h).to_ascii_lowercase()),
        },
        (None, Some(_), None) => return bad("`prefix` is a path: it starts with `/`".into()),
        (None, None, Some(tag)) if body.host.is_none() && !tag.is_empty() => Purge::Tag(tag),
        _ => {
            return bad(
                "give exactly one of `url`, `prefix` (with an optional `host`) or `tag`".into(),
            );
        }
    };
    let caches: Vec<_> = match &body.cache {
        None => snap.caches.iter().collect(),
        Some(name) => match snap.caches.iter().find(|c| &*c.name == name.as_str()) {
            Some(c) => vec![c],
            None => {
                let hint = crate::config::suggest::hint(name, snap.caches.iter().map(|c| &*c.name));
                return bad(format!("unknown cache `{name}`{hint}"));
            }
        },
    };
    let mut purged = 0;
    for cache in &caches {
        purged += cache.purge(purge.clone()).await;
    }
    json_response(
        StatusCode::OK,
        &json!({
            "purged": purged,
            "caches": caches.iter().map(|c| &*c.name).collect::<Vec<_>>(),
        }),
    )
}

/// A purge's `url`: `http(s)://host/path?query` for one host, or
/// `/path?query` for any; the path spelt as the gateway stores it.
fn purge_url(
    url: &str,
    snap: &crate::snapshot::Snapshot,
) -> Result<crate::cache::store::Purge, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("`url` is not a URL or a path: `{url}`"))?;
    let any_host = uri.authority().is_none();
    if uri.scheme().is_some() == any_host || !uri.path().starts_with('/') {
        return Err(format!("`url` is not a URL or a path: `{url}`"));
    }
    let path = crate::normalize::path::normalize(uri.path(), &snap.path_rules)
        .map_err(|e| format!("`url`: {}", e.message()))?;
    let mut out = String::new();
    if let Some(a) = uri.authority() {
        out.push_str(&crate::cache::route::host_name(a.as_str()).to_ascii_lowercase());
    }
    out.push_str(&path.path);
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    Ok(crate::cache::store::Purge::Url { url: out, any_host })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_parses_headers_and_escapes() {
        let p = probe("method=post&host=api.example.com&path=%2Fa%3Fb%3D1&header.x-v=2").unwrap();
        assert_eq!(p.method, Method::POST);
        assert_eq!(p.target, "/a?b=1");
        assert_eq!(p.headers["x-v"], "2");
        assert!(probe("method=GET").is_err());
        assert!(probe("path=/x&bogus=1").is_err());
    }
}
