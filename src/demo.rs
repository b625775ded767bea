//! `tollgate demo`: a complete setup in one process. Two echo upstreams start on
//! free loopback ports, the gateway runs the embedded `config/demo.yaml` in front
//! of them, and the curl commands to try are printed.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

/// Starts an echo server on a free loopback port: it answers every request with
/// JSON naming itself and describing what it received.
pub async fn start_echo(name: &'static str) -> std::io::Result<SocketAddr> {
    serve_echo(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Starts the echo server on `addr` and returns the bound address.
pub async fn serve_echo(name: &'static str, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req| echo(name, req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn echo(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let received = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("<binary>").into()))
        .collect();
    let json = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
        "body_bytes": received,
    });
    let mut body = serde_json::to_vec_pretty(&json).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The secret of the demo's JWT policy (the default of `config/demo.yaml`).
fn demo_secret() -> String {
    std::env::var("TOLLGATE_DEMO_JWT_SECRET")
        .unwrap_or_else(|_| "tollgate-demo-secret-change-me".into())
}

/// A token the demo's `/secure` route accepts, valid for an hour.
pub fn demo_token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "sub": "demo-user", "iss": "tollgate-demo", "scope": "echo:read",
        "iat": now, "exp": now + 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(demo_secret().as_bytes()),
    )
    .unwrap_or_default()
}

/// What to try, once the gateway listens on `gw` with its admin on `admin`.
pub fn instructions(gw: SocketAddr, admin: Option<SocketAddr>) -> String {
    let admin = admin.map_or_else(|| "(no admin listener)".to_string(), |a| a.to_string());
    let token = demo_token();
    format!(
        "\
tollgate demo is running: the gateway on http://{gw}, two echo upstreams behind it.

Try:
  # answered by the gateway itself
  curl -i http://{gw}/ping
  # proxied with /api stripped; weighted round robin sends echo-a twice as often as echo-b
  for i in 1 2 3 4 5 6; do curl -s http://{gw}/api/hello | grep upstream; done
  # hashed on x-user: alice always lands on the same echo
  curl -s -H 'x-user: alice' http://{gw}/sticky | grep upstream
  # JWT-protected: 401 without a token, 200 with the demo token (valid 1h)
  curl -i http://{gw}/secure
  curl -s -H 'Authorization: Bearer {token}' http://{gw}/secure | grep -i x-user-id
  # 404 no_route, as JSON
  curl -i http://{gw}/nowhere
  # 413 payload_too_large (the demo allows 1MiB bodies)
  head -c 2000000 /dev/zero | curl -i --data-binary @- http://{gw}/api/upload
  # Prometheus metrics
  curl -s http://{admin}/metrics | grep tollgate_requests_total
  # the dashboard: routes, target health, live rates, reloads (open in a browser)
  http://{admin}/ui/
  # explain a routing decision offline
  cargo run --release -- routes --config config/demo.yaml /api/users

Press Ctrl-C to stop (graceful shutdown).
"
    )
}
