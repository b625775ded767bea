//! The integration tests, as one test binary: `support` is compiled once and
//! every former `tests/<name>.rs` is the module `<name>` here.
//!
//! Run one area by its module path: `cargo test --test it -- resilience::`,
//! or several: `cargo test --test it -- otel:: config_examples::`.
//! Fixtures stay in `tests/fixtures/` (found through `CARGO_MANIFEST_DIR`).

mod support;

mod admin;
mod auth;
mod auth_config;
mod backpressure;
mod balancing;
mod basic_auth;
mod cache;
mod cli;
mod compression;
mod config_errors;
mod config_examples;
mod consumers;
mod dashboard;
mod deploy;
mod discovery;
mod docs;
mod edge;
mod external_auth;
mod grpc;
mod idempotency;
mod idempotency_h2;
mod introspection;
mod jwks;
mod jwt;
mod k6;
mod layers;
mod lifecycle;
mod limits;
mod observability;
mod oidc;
// OTLP export is the cargo feature `otel` (off by default).
mod mirror;
#[cfg(feature = "otel")]
mod otel;
mod proxy;
mod proxy_protocol;
mod rate_limit;
mod reload;
mod reload_scale;
mod resilience;
mod secret_files;
mod steering;
mod steering_config;
mod streaming;
mod tls;
mod upstream_failures;
mod websocket;
