//! The dashboard (docs/guide/dashboard.md): one page and its script and style,
//! compiled into the binary so it works offline and needs no CDN. The page
//! only reads the JSON admin endpoints (`/config`, `/upstreams`, `/metrics`,
//! `/reloads`, `/explain`); it never offers a write action.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");
const ICON: &str = include_str!("ui/icon.svg");

/// Nothing but these files, from this origin: no inline script, no frames,
/// no form posting anywhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The dashboard's files (and `/ui`, which redirects to `/ui/`).
pub fn is_asset(path: &str) -> bool {
    matches!(
        path,
        "/ui" | "/ui/" | "/ui/app.js" | "/ui/style.css" | "/ui/icon.svg"
    )
}

/// The dashboard's file at `path`. With `token_required`, the page is told
/// to ask for the admin token before it fetches anything.
pub fn asset(path: &str, token_required: bool) -> Option<Response<Full<Bytes>>> {
    let (body, kind) = match path {
        "/ui" => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
            return Some(r);
        }
        "/ui/" => (INDEX, "text/html; charset=utf-8"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/style.css" => (STYLE, "text/css; charset=utf-8"),
        "/ui/icon.svg" => (ICON, "image/svg+xml"),
        _ => return None,
    };
    let body = if path == "/ui/" && token_required {
        Bytes::from(INDEX.replacen("<body ", "<body data-token=\"required\" ", 1))
    } else {
        Bytes::from_static(body.as_bytes())
    };
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A new binary may bring a new page: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}
