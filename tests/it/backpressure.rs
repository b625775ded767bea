//! Flow control through the gateway (issue #8 item 5): a slow reader slows the
//! writer on the other side, with bounded buffers in between.
//!
//! The far ends are raw TCP in this process, so each counts exactly the bytes
//! the kernel accepted from it (upstream download) or handed to it. While the
//! slow side stalls, the fast side's progress must plateau within `WINDOW` of
//! the slow side's: whatever the kernel's socket buffers plus hyper's buffers
//! hold, but far below the 100 MiB transfer, which unbounded buffering in the
//! gateway would swallow at once on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const SIZE: u64 = 100 * 1024 * 1024;
/// The most the fast side may be ahead of the slow one. Measured here (Linux,
/// loopback, tcp_rmem max 32 MiB): 4-14 MiB, nearly all of it the kernel's
/// autotuned buffers of the gateway's two sockets; hyper's own buffers are
/// under 1 MiB. Unbounded buffering would show the whole 100 MiB.
const WINDOW: u64 = 32 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

fn config() -> String {
    server_block("limits: { max_body_bytes: 1GiB, body_read_timeout: 10s }")
        + r#"
upstreams:
  up:
    targets: [ { url: "http://${UP}" } ]
    timeouts: { connect: 500ms, request: 60s }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: up
"#
}

/// Socket buffers of the test's own ends (client and upstream), fixed so that
/// kernel autotuning on them does not blur what the gateway holds.
const TEST_SOCKET_BUFFER: u32 = 256 * 1024;

/// A listener whose accepted sockets have small send and receive buffers.
fn small_buffer_listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_send_buffer_size(TEST_SOCKET_BUFFER)
        .expect("SO_SNDBUF");
    socket
        .set_recv_buffer_size(TEST_SOCKET_BUFFER)
        .expect("SO_RCVBUF");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    socket.listen(16).expect("listen")
}

/// A client connection with small socket buffers.
async fn small_buffer_connect(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_send_buffer_size(TEST_SOCKET_BUFFER)
        .expect("SO_SNDBUF");
    socket
        .set_recv_buffer_size(TEST_SOCKET_BUFFER)
        .expect("SO_RCVBUF");
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads an HTTP head (up to the blank line) byte by byte; returns it.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .expect("head in time")
            .expect("read head");
        assert!(n > 0, "closed before the end of the head");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Waits until `counter` stops moving for `quiet`, within `limit`; returns it.
async fn plateau(counter: &AtomicU64, quiet: Duration, limit: Duration) -> u64 {
    let mut last = counter.load(Ordering::SeqCst);
    let mut since = Instant::now();
    wait_until_within(limit, "a plateau", async || {
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(now);
        }
        Err(format!("at {now} bytes and still moving"))
    })
    .await
}

/// An upstream that answers one request with `SIZE` bytes of `content_type`,
/// written as fast as the connection takes them, counting what the kernel
/// accepted. The bytes are a 64 KiB block of noise repeated: gzip's 32 KiB
/// window finds no match in it, so compressed it stays as large.
async fn download_upstream(
    written: Arc<AtomicU64>,
    content_type: &'static str,
) -> std::net::SocketAddr {
    let listener = small_buffer_listener();
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        read_head(&mut s).await;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {SIZE}\r\n\r\n"
        );
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let mut rng = fastrand::Rng::with_seed(7);
        let chunk: Vec<u8> = (0..CHUNK).map(|_| rng.u8(..)).collect();
        let mut left = SIZE;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            match s.write(&chunk[..n]).await {
                Ok(0) | Err(_) => return,
                Ok(k) => {
                    written.fetch_add(k as u64, Ordering::SeqCst);
                    left -= k as u64;
                }
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_slows_the_upstream_download() {
    let written = Arc::new(AtomicU64::new(0));
    let up = download_upstream(written.clone(), "application/octet-stream").await;
    let gw = Gateway::start(&config(), &[("UP", up.to_string())]).await;

    let mut client = small_buffer_connect(gw.addr).await;
    client
        .write_all(b"GET /big HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .expect("request");
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut read = 0u64;
    let mut buf = vec![0u8; CHUNK];

    // The client reads nothing more: the upstream must stall.
    let stalled = plateau(&written, Duration::from_millis(300), WAIT).await;
    eprintln!("client stopped: upstream stalled at {stalled} bytes");
    assert!(stalled <= WINDOW, "upstream wrote {stalled} bytes ahead");

    // Slow reads (4 KiB, with pauses): the upstream stays within the window.
    let mut max_ahead = stalled;
    let slow_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < slow_until {
        let n = client.read(&mut buf[..4096]).await.expect("read");
        assert!(n > 0, "closed early");
        read += n as u64;
        let ahead = written.load(Ordering::SeqCst).saturating_sub(read);
        max_ahead = max_ahead.max(ahead);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!("slow phase: read {read} bytes, upstream at most {max_ahead} ahead");
    assert!(max_ahead <= WINDOW, "upstream ran {max_ahead} bytes ahead");
    assert!(written.load(Ordering::SeqCst) < SIZE / 2);

    // Then the rest, fast: everything arrives.
    let fast = tokio::time::timeout(Duration::from_secs(60), async {
        while read < SIZE {
            let n = client.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {read} bytes");
            read += n as u64;
        }
    });
    fast.await.expect("the rest in time");
    assert_eq!(read, SIZE);
    assert_eq!(written.load(Ordering::SeqCst), SIZE);
}

/// The compression encoder pulls from the upstream only as the client takes
/// its output: the same plateau with `compress:` on. (Stops after the
/// plateau: the debug build compresses too slowly for the whole 100 MiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_slows_a_compressed_download() {
    let written = Arc::new(AtomicU64::new(0));
    let up = download_upstream(written.clone(), "text/plain").await;
    let cfg = config() + "    compress: [gzip]\n";
    let gw = Gateway::start(&cfg, &[("UP", up.to_string())]).await;

    let mut client = small_buffer_connect(gw.addr).await;
    client
        .write_all(b"GET /big HTTP/1.1\r\nhost: gw\r\naccept-encoding: gzip\r\n\r\n")
        .await
        .expect("request");
    let head = read_head(&mut client).await.to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let stalled = plateau(&written, Duration::from_millis(300), WAIT).await;
    eprintln!("client stopped: upstream stalled at {stalled} bytes (compressed route)");
    assert!(stalled <= WINDOW, "upstream wrote {stalled} bytes ahead");

    // Reading output lets the upstream go on, within the window again. How
    // much must be read first depends on how much the kernel buffered at the
    // stall (its socket buffers autotune), so read until the upstream moves,
    // at most a window's worth.
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    while read < 4 * 1024 * 1024 || (written.load(Ordering::SeqCst) == stalled && read < WINDOW) {
        let n = tokio::time::timeout(WAIT, client.read(&mut buf))
            .await
            .expect("read in time")
            .expect("read");
        assert!(n > 0, "closed early");
        read += n as u64;
    }
    let moved = plateau(&written, Duration::from_millis(300), WAIT).await;
    eprintln!("after reading {read} compressed bytes: upstream at {moved}");
    assert!(moved > stalled, "reading did not let the upstream go on");
    assert!(
        moved <= read + WINDOW,
        "upstream ran {moved} bytes for {read} read"
    );
}

/// An upstream that reads the request head, then reads the body only when
/// `open` says so, counting what it read; answers 200 at the end.
async fn upload_upstream(
    received: Arc<AtomicU64>,
    open: Arc<tokio::sync::Notify>,
) -> std::net::SocketAddr {
    let listener = small_buffer_listener();
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let head = read_head(&mut s).await;
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {SIZE}")),
            "{head}"
        );
        open.notified().await;
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        while got < SIZE {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    got += n as u64;
                    received.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_slows_the_client_upload() {
    let received = Arc::new(AtomicU64::new(0));
    let open = Arc::new(tokio::sync::Notify::new());
    let up = upload_upstream(received.clone(), open.clone()).await;
    let gw = Gateway::start(&config(), &[("UP", up.to_string())]).await;

    let client = small_buffer_connect(gw.addr).await;
    let (rd, mut wr) = client.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let s = sent.clone();
    let writer = tokio::spawn(async move {
        let head = format!("POST /up HTTP/1.1\r\nhost: gw\r\ncontent-length: {SIZE}\r\n\r\n");
        wr.write_all(head.as_bytes()).await.expect("head");
        let chunk = vec![b'y'; CHUNK];
        let mut left = SIZE;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let k = wr.write(&chunk[..n]).await.expect("write");
            s.fetch_add(k as u64, Ordering::SeqCst);
            left -= k as u64;
        }
        wr
    });

    // The upstream reads nothing yet: the client's writes must stall.
    let stalled = plateau(&sent, Duration::from_millis(300), WAIT).await;
    eprintln!("upstream not reading: client stalled at {stalled} bytes");
    assert!(stalled <= WINDOW, "client wrote {stalled} bytes ahead");
    assert_eq!(received.load(Ordering::SeqCst), 0);

    open.notify_one();
    let wr = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("upload in time")
        .expect("writer");
    let mut client = rd.reunite(wr).expect("same stream");
    let reply = read_one_response(&mut client).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(received.load(Ordering::SeqCst), SIZE);
}
