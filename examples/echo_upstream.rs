//! A tiny upstream to try tollgate against your own config: it answers every
//! request with JSON describing what it received (method, path, headers, body
//! size), so you can see what the gateway forwarded.
//!
//!     cargo run --example echo_upstream -- 9001 9002
//!     cargo run -- --config config/minimal.yaml

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let ports: Vec<u16> = std::env::args()
        .skip(1)
        .map(|p| {
            p.parse()
                .map_err(|_| std::io::Error::other(format!("not a port: {p}")))
        })
        .collect::<Result<_, _>>()?;
    let ports = if ports.is_empty() { vec![9001] } else { ports };
    for port in ports {
        let name: &'static str = Box::leak(format!("echo-{port}").into_boxed_str());
        let addr =
            tollgate::demo::serve_echo(name, SocketAddr::from(([127, 0, 0, 1], port))).await?;
        println!("{name} listening on http://{addr}");
    }
    tokio::signal::ctrl_c().await
}
