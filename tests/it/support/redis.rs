//! Redis for the tests that need one: a real `redis-server` started per test
//! (skipped, with a printed reason, when it is not installed), and a
//! `BlackHole` that looks like a Redis that hung.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wait_until_within;

/// A top-level `redis:` section for a server on `port`.
pub fn redis_block(port: u16, timeout: &str) -> String {
    format!("redis:\n  url: redis://127.0.0.1:{port}\n  timeout: {timeout}\n")
}

/// A `redis-server` of the test's own, on a free loopback port; killed when
/// dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts `redis-server` on a free port below the ephemeral range (so no
    /// other test's socket takes it while it is stopped), or explains why not.
    pub async fn start() -> Option<RedisServer> {
        let port = (0..200)
            .map(|_| fastrand::u16(20_000..32_000))
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())?;
        Self::start_on(port).await
    }

    pub async fn start_on(port: u16) -> Option<RedisServer> {
        let child = match Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                println!(
                    "SKIPPED: redis-server cannot be started ({e}); install it (apt-get install -y redis-server) to run the Redis tests"
                );
                return None;
            }
        };
        let server = RedisServer { child, port };
        wait_until_within(
            Duration::from_secs(10),
            format!("redis-server to come up on {port}"),
            async || server.command(&["PING"]).await.is_ok(),
        )
        .await;
        Some(server)
    }

    /// One command; the reply as RESP text (simple values) or the bulk
    /// strings of an array.
    pub async fn command(&self, args: &[&str]) -> Result<Vec<String>, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| e.to_string())?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if let Some(v) = parse_resp(&buf) {
                    return Ok(v);
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return Err("closed".to_string()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .map_err(|_| "timeout".to_string())?
    }

    /// Kills the server; returns its port (to start one there again).
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }

    /// The top-level `redis:` section pointing at this server.
    pub fn redis_block(&self, timeout: &str) -> String {
        redis_block(self.port, timeout)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A complete RESP reply: `+OK`/`:1` as one string, an array of bulk
/// strings as its items; `None` while incomplete.
fn parse_resp(buf: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(buf).ok()?;
    let mut lines = text.split("\r\n");
    let head = lines.next()?;
    if !text.contains("\r\n") {
        return None;
    }
    match head.as_bytes().first()? {
        b'+' | b':' | b'-' => Some(vec![head.to_string()]),
        b'*' => {
            let n: usize = head[1..].parse().ok()?;
            let mut out = Vec::new();
            for _ in 0..n {
                let _len = lines.next()?;
                out.push(lines.next()?.to_string());
            }
            // The last item must be followed by its CRLF.
            if out.len() == n && (n == 0 || text.ends_with("\r\n")) {
                Some(out)
            } else {
                None
            }
        }
        _ => Some(vec![head.to_string()]),
    }
}

/// A TCP server that accepts connections and never answers: what a hung
/// Redis looks like to its clients (the socket open, no reply). Dropped, it
/// closes the listener and every connection it took. It listens on a port
/// below the kernel's ephemeral range (32768+), so that a real server can be
/// started there after it (`RedisServer::start_on`) without another test's
/// `127.0.0.1:0` socket taking the port in between.
pub struct BlackHole {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = loop {
            let port = fastrand::u16(20_000..32_000);
            if let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break l;
            }
        };
        let port = listener.local_addr().expect("local addr").port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        BlackHole { port, task }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}
