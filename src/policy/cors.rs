//! CORS (docs/guide/auth.md: `cors.<name>`, route `cors`). A preflight (OPTIONS with
//! `Origin` and `Access-Control-Request-Method`) is answered by the gateway and
//! never reaches the upstream; it runs before auth because browsers send no
//! credentials on a preflight. Other requests from an allowed origin get
//! `Access-Control-Allow-Origin` (and credentials / exposed headers) on every
//! answer, errors included; a disallowed origin gets no CORS header at all.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};

use crate::config::schema;

const DEFAULT_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";

pub struct CorsPolicy {
    /// `None` = any origin (`*`).
    origins: Option<Vec<String>>,
    methods: HeaderValue,
    /// `None` = echo the preflight's `Access-Control-Request-Headers`.
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

fn joined(list: &[String]) -> Result<HeaderValue, String> {
    HeaderValue::from_str(&list.join(", "))
        .map_err(|_| format!("`{}` is not a valid header value", list.join(", ")))
}

impl CorsPolicy {
    pub fn compile(cfg: &schema::Cors) -> Result<CorsPolicy, String> {
        let any = cfg.allow_origins.iter().any(|o| o == "*");
        if any && cfg.allow_credentials {
            return Err("allow_origins `*` cannot be combined with allow_credentials".into());
        }
        Ok(CorsPolicy {
            origins: (!any).then(|| {
                cfg.allow_origins
                    .iter()
                    .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                    .collect()
            }),
            methods: match &cfg.allow_methods {
                Some(m) => joined(&m.iter().map(|m| m.to_ascii_uppercase()).collect::<Vec<_>>())?,
                None => HeaderValue::from_static(DEFAULT_METHODS),
            },
            headers: cfg.allow_headers.as_deref().map(joined).transpose()?,
            expose: cfg
                .expose_headers
                .as_deref()
                .filter(|e| !e.is_empty())
                .map(joined)
                .transpose()?,
            credentials: cfg.allow_credentials,
            max_age: cfg.max_age.map(|d| HeaderValue::from(d.get().as_secs())),
        })
    }

    /// The `Access-Control-Allow-Origin` value for this request, when its origin
    /// is allowed.
    fn allow_origin(&self, parts: &Parts) -> Option<HeaderValue> {
        let origin = parts.headers.get(header::ORIGIN)?;
        match &self.origins {
            None => Some(HeaderValue::from_static("*")),
            Some(list) => {
                let o = origin.to_str().ok()?.to_ascii_lowercase();
                list.contains(&o).then(|| origin.clone())
            }
        }
    }

    /// Answers a preflight, or `None` when the request is not one.
    pub fn preflight(&self, parts: &Parts, out: &mut HeaderMap) -> Option<Response<Bytes>> {
        if parts.method != Method::OPTIONS
            || !parts.headers.contains_key(header::ORIGIN)
            || !parts
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        if self.origins.is_some() {
            out.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        out.append(
            header::VARY,
            HeaderValue::from_static(
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        if let Some(origin) = self.allow_origin(parts) {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            let requested = parts.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
            if let Some(h) = self.headers.as_ref().or(requested) {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
            }
            if let Some(age) = &self.max_age {
                out.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
            }
            if self.credentials {
                out.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        }
        let mut resp = Response::new(Bytes::new());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Some(resp)
    }

    /// Adds the CORS headers of an actual (non-preflight) request to every answer.
    pub fn annotate(&self, parts: &Parts, out: &mut HeaderMap) {
        if self.origins.is_some() {
            out.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = self.allow_origin(parts) else {
            return;
        };
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}
