//! `tracing`: span export, only in builds with the `otel` feature.

use http::Uri;

use super::{Checker, redacted};
use crate::config::schema::Config;

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
        if cfg!(not(feature = "otel")) {
            for (key, used) in [
                ("otlp_endpoint", t.otlp_endpoint.is_some()),
                ("sample_ratio", t.sample_ratio.is_some()),
            ] {
                if used {
                    self.err(
                        format!("tracing.{key}"),
                        format!(
                            "tracing.{key} needs tollgate built with `--features otel` \
                             (OpenTelemetry span export is not in this build)"
                        ),
                    );
                }
            }
            return;
        }
        match &t.otlp_endpoint {
            Some(url) => {
                if let Err(m) = otlp_url(url) {
                    self.err("tracing.otlp_endpoint", m);
                }
            }
            None if t.sample_ratio.is_some() => self.err(
                "tracing.sample_ratio",
                "tracing.sample_ratio needs tracing.otlp_endpoint (nothing is exported without it)",
            ),
            None => {}
        }
    }
}

/// An OTLP/HTTP endpoint: an absolute http(s) URL without credentials.
pub(super) fn otlp_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("`{}` is not a URL", redacted(url)))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "expected an http:// or https:// URL (OTLP/HTTP, usually port 4318), got `{}`",
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
