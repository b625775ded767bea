//! Bodies stream through the gateway in both directions (SPEC §3): a large
//! download and a large upload pass with the process memory staying flat.
//!
//! 256 MiB rather than 1 GiB, to keep the suite's traffic bounded on a two-core
//! debug build (client, gateway and upstream all run in this process, so every
//! byte crosses three hops). 256 MiB is already beyond what buffering could hide
//! under the 200 MiB growth bound.
//!
//! Each test runs alone in a child process of the test binary
//! (`ran_in_own_process`): the RSS is the whole process's, and the other tests
//! of the binary would move it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::support::*;

const SIZE: u64 = 256 * 1024 * 1024;
const MAX_GROWTH: u64 = 200 * 1024 * 1024;

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// Samples the RSS every 20 ms until stopped; returns the peak.
fn sample_peak() -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut peak = rss();
        while !s.load(Ordering::Relaxed) {
            peak = peak.max(rss());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.max(rss())
    });
    (stop, task)
}

fn config() -> String {
    server_block("limits: { max_body_bytes: 1GiB, body_read_timeout: 10s }")
        + r#"
upstreams:
  up:
    targets: [ { url: "http://${UP}" } ]
    timeouts: { connect: 500ms, request: 30s }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: up
"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_in_constant_memory() {
    if ran_in_own_process("streaming::large_download_streams_in_constant_memory").await {
        return;
    }
    let up = Upstream::start("big", Behavior::Stream(SIZE)).await;
    let gw = Gateway::start(&config(), &[("UP", up.host_port())]).await;
    let baseline = rss();
    let (stop, peak) = sample_peak();

    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let transfer = async move {
        let resp = sender
            .send_request(
                Request::get("/big")
                    .header("host", "x")
                    .header("x-request-id", "dl-1")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], SIZE.to_string().as_str());
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.unwrap().data_ref() {
                r.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(90), transfer)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "download too slow: {} MiB in 90s",
                received.load(Ordering::Relaxed) >> 20
            )
        });
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    assert_eq!(received.load(Ordering::Relaxed), SIZE);
    let growth = peak.saturating_sub(baseline);
    println!(
        "download: baseline {} MiB, peak {} MiB",
        baseline >> 20,
        peak >> 20
    );
    assert!(
        growth < MAX_GROWTH,
        "RSS grew by {} MiB while streaming {} MiB: the body is buffered",
        growth >> 20,
        SIZE >> 20
    );
    let line = gw.wait_log_for("dl-1").await;
    assert_eq!(line["bytes_out"], SIZE);
    assert!(line["error"].is_null(), "{line}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_in_constant_memory() {
    if ran_in_own_process("streaming::large_upload_streams_in_constant_memory").await {
        return;
    }
    let up = Upstream::echo("sink").await;
    let gw = Gateway::start(&config(), &[("UP", up.host_port())]).await;
    let baseline = rss();
    let (stop, peak) = sample_peak();

    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let transfer = async move {
        let resp = sender
            .send_request(
                Request::post("/upload")
                    .header("host", "x")
                    .header("x-request-id", "ul-1")
                    .body(GenBody::new(SIZE))
                    .unwrap(),
            )
            .await
            .unwrap();
        collect(resp).await.unwrap()
    };
    let resp = tokio::time::timeout(Duration::from_secs(90), transfer)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "upload too slow: upstream got {} MiB in 90s",
                up.body_bytes() >> 20
            )
        });
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let j = resp.json();
    assert_eq!(j["body_bytes"], SIZE);
    assert_eq!(j["body_complete"], true);
    let growth = peak.saturating_sub(baseline);
    println!(
        "upload: baseline {} MiB, peak {} MiB",
        baseline >> 20,
        peak >> 20
    );
    assert!(
        growth < MAX_GROWTH,
        "RSS grew by {} MiB while streaming {} MiB: the body is buffered",
        growth >> 20,
        SIZE >> 20
    );
    let line = gw.wait_log_for("ul-1").await;
    assert_eq!(line["bytes_in"], SIZE);
    gw.shutdown().await;
}
