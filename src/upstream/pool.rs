//! The connection layer to upstream targets: the one seam between the proxy and
//! the HTTP client library.
//!
//! Today it is hyper-util's pooled client (keep-alive connections per target,
//! connect timeout, idle expiry). Everything above this file sees only
//! `UpstreamClient::send` and `SendError`, so the pool can be replaced (a per-core
//! pool on hyper's `client::conn`, see the performance issue) without touching
//! the proxy.

use std::error::Error as _;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::proxy::body::{BodyError, RequestBody};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_target: usize,
}

pub struct UpstreamClient {
    client: Client<HttpConnector, RequestBody>,
}

/// Why an attempt failed, classified for the answer and the metrics.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, connect timeout).
    Connect(String),
    /// The client's request body failed: too large, stalled, or aborted.
    ClientBody(BodyErrorKind),
    /// The connection broke or the upstream answered something that is not HTTP.
    Reset(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyErrorKind {
    TooLarge,
    Timeout,
    Aborted,
}

impl UpstreamClient {
    pub fn new(settings: &PoolSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(settings.max_idle_per_target)
            // The proxy sets Host itself (the client's, or the route's rewrite).
            .set_host(false)
            .build(connector);
        UpstreamClient { client }
    }

    /// Sends one request (its URI absolute: `http://host:port/path`) and returns
    /// once the response head arrived.
    pub async fn send(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, SendError> {
        self.client.request(req).await.map_err(classify)
    }
}

fn classify(err: hyper_util::client::legacy::Error) -> SendError {
    // The client's own body error travels inside hyper's error chain.
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(body) = e.downcast_ref::<BodyError>() {
            return SendError::ClientBody(match body {
                BodyError::TooLarge(_) => BodyErrorKind::TooLarge,
                BodyError::Timeout => BodyErrorKind::Timeout,
                BodyError::Client(_) => BodyErrorKind::Aborted,
            });
        }
        source = e.source();
    }
    if err.is_connect() {
        SendError::Connect(chain(&err))
    } else {
        SendError::Reset(chain(&err))
    }
}

/// The error and its causes on one line, for logs.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
