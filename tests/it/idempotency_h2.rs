//! Keyed requests retried where nothing reached the upstream: an HTTP/2
//! upstream that answers REFUSED_STREAM (RFC 9113 §8.7) did not process the
//! request, so a keyed POST goes to the next target, while an unkeyed POST
//! (not in `retries.methods`) gets the 502.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::Request;
use tokio::net::TcpListener;

use crate::support::*;

/// An h2c server that refuses every stream (`refuse`) or answers 201 `ok`,
/// counting the streams it saw.
async fn h2_target(refuse: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let head = http::Response::builder().status(201).body(()).unwrap();
                    if let Ok(mut send) = respond.send_response(head, false) {
                        let _ = send.send_data(Bytes::from_static(b"ok"), true);
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn post(gw: &Gateway, key: Option<&str>) -> Resp {
    let mut req = Request::post(gw.url("/pay")).header("content-type", "text/plain");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    send(req.body(body("{\"amount\":1}")).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_refused_h2_stream_is_retried_for_every_post() {
    let (refusing, refused) = h2_target(true).await;
    let (answering, answered) = h2_target(false).await;
    let yaml = format!(
        "{}
idempotency:
  pay: {{ store: memory }}
upstreams:
  app:
    protocol: h2
    balance: round_robin
    targets: [{{ url: 'http://${{A}}' }}, {{ url: 'http://${{B}}' }}]
    retries: {{ attempts: 1, on: [connect_error], backoff: 1ms }}
routes:
  - name: pay
    match: {{ path: /pay }}
    upstream: app
    idempotency: pay
",
        server_block("")
    );
    let gw = Gateway::start(
        &yaml,
        &[("A", refusing.to_string()), ("B", answering.to_string())],
    )
    .await;

    // Round robin sends some of the first attempts to the refusing target;
    // each of those is retried on the other, and every keyed POST succeeds.
    for i in 0..4 {
        let r = post(&gw, Some(&format!("k{i}"))).await;
        assert_eq!(r.status, 201, "keyed POST {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(answered.load(Ordering::SeqCst), 4);
    let refused_keyed = refused.load(Ordering::SeqCst);
    assert!(
        refused_keyed >= 1,
        "round robin never picked the refusing target"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"tollgate_retries_total{reason="connect_error",upstream="app"}"#
        ),
        Some(refused_keyed as f64),
        "every refused stream was retried"
    );

    // Unkeyed too: a refused stream was not processed (RFC 9113 §8.7), so
    // POST is retried although the default retries.methods lacks it.
    for i in 0..4 {
        let r = post(&gw, None).await;
        assert_eq!(r.status, 201, "unkeyed POST {i}: {}", r.text());
    }
    assert!(refused.load(Ordering::SeqCst) > refused_keyed);
    assert_eq!(answered.load(Ordering::SeqCst), 8);
}
