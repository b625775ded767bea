//! `tracing`: span export, only in builds with the `otel` feature.

use http::{HeaderName, HeaderValue, Uri};

use super::{Checker, redacted};
use crate::config::positions::child;
use crate::config::schema::Config;
use crate::config::suggest;

/// The spellings of `tracing.otlp_protocol` (those of
/// `OTEL_EXPORTER_OTLP_PROTOCOL`); the first is the default.
pub const OTLP_PROTOCOLS: &[&str] = &["http/protobuf", "grpc"];

impl Checker {
    /// `tracing`: span export exists only in builds with the `otel` feature;
    /// elsewhere its keys are refused, never silently ignored.
    pub(super) fn tracing(&mut self, config: &Config) {
        let Some(t) = &config.tracing else { return };
        if let Some(ratio) = t.sample_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            self.err(
                "tracing.sample_ratio",
                format!("must be between 0 and 1, got {ratio}"),
            );
        }
        let used = [
            ("otlp_endpoint", t.otlp_endpoint.is_some()),
            ("sample_ratio", t.sample_ratio.is_some()),
            ("otlp_protocol", t.otlp_protocol.is_some()),
            ("otlp_headers", !t.otlp_headers.is_empty()),
        ];
        let needs = if cfg!(not(feature = "otel")) {
            "tollgate built with `--features otel` (OpenTelemetry span export is not in this build)"
        } else if t.otlp_endpoint.is_none() {
            "tracing.otlp_endpoint (nothing is exported without it)"
        } else {
            ""
        };
        if !needs.is_empty() {
            for (key, _) in used.iter().filter(|(_, used)| *used) {
                self.err(
                    format!("tracing.{key}"),
                    format!("tracing.{key} needs {needs}"),
                );
            }
            return;
        }
        if let Some(url) = &t.otlp_endpoint
            && let Err(m) = otlp_url(url)
        {
            self.err("tracing.otlp_endpoint", m);
        }
        if let Some(p) = &t.otlp_protocol
            && !OTLP_PROTOCOLS.contains(&p.as_str())
        {
            self.err(
                "tracing.otlp_protocol",
                format!(
                    "unknown protocol `{p}`; expected http/protobuf or grpc{}",
                    suggest::hint(p, OTLP_PROTOCOLS.iter().copied())
                ),
            );
        }
        for (name, value) in &t.otlp_headers {
            if let Err(m) = otlp_header(name, value) {
                self.err(child("tracing.otlp_headers", name), m);
            }
        }
    }
}

/// One `tracing.otlp_headers` entry as it is sent. The exporter's own framing
/// headers and hop-by-hop ones are refused; a message never shows the value
/// (it is usually a credential).
pub fn otlp_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a header name"))?;
    if matches!(
        parsed.as_str(),
        "content-type"
            | "content-length"
            | "te"
            | "host"
            | "user-agent"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
    ) {
        return Err(format!("`{name}` is set by the exporter itself"));
    }
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("the value of `{name}` is not a valid header value"))?;
    Ok((parsed, value))
}

/// An OTLP endpoint: an absolute http(s) URL without credentials.
pub(super) fn otlp_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("`{}` is not a URL", redacted(url)))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "expected an http:// or https:// URL (usually port 4318 for http/protobuf, 4317 for grpc), got `{}`",
            redacted(url)
        ));
    }
    match uri.authority() {
        None => Err(format!("`{url}` names no host")),
        Some(a) if a.as_str().contains('@') => {
            Err("credentials in the URL are not supported".to_string())
        }
        Some(_) => Ok(()),
    }
}
