//! Hot reload at scale (issue #7, target 5): a gateway with 10,000 routes is
//! reloaded back and forth between two versions of that config (the file
//! rewritten, then `POST /reload`) while keep-alive clients keep requesting
//! routes that exist in both. Every request must succeed on the connection
//! it started on, and every reload must be accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::scale;
use crate::support::*;

const ROUTES: usize = 10_000;
/// A reload of 10,000 routes takes about 0.3 s in a release build but
/// several seconds in a debug one (YAML parse, metric registration), so the
/// test does one reload each way: to variant 1 and back.
const RELOADS: usize = 2;
/// How long one `POST /reload` of 10,000 routes may take (a debug build on a
/// busy machine).
const RELOAD_WAIT: Duration = Duration::from_secs(60);
const CLIENTS: usize = 6;

fn texts() -> [String; 2] {
    [0, 1].map(|variant| {
        scale::Scale {
            routes: ROUTES,
            variant,
            server:
                "listeners:\n  - name: http\n    bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0"
                    .into(),
            targets: |_| vec!["http://${UP1}".into(), "http://${UP2}".into()],
        }
        .yaml()
    })
}

/// Routes of every kind, from the start, the middle and the end of the file,
/// that exist (by name, without credentials or limits) in both variants.
fn picks() -> Vec<usize> {
    let mut out = Vec::new();
    for kind in 0..4 {
        let of_kind = |i: &usize| {
            scale::steady(*i)
                && matches!(
                    (kind, scale::kind(*i)),
                    (0, scale::RouteKind::Prefix)
                        | (1, scale::RouteKind::Exact)
                        | (2, scale::RouteKind::Host(_))
                        | (3, scale::RouteKind::Regex)
                )
        };
        let all: Vec<usize> = (0..ROUTES).filter(of_kind).collect();
        out.extend([all[0], all[all.len() / 2], all[all.len() - 1]]);
    }
    out
}

/// Waits until the clients have completed `n` more requests than `from`.
async fn wait_requests(ok: &AtomicUsize, from: usize, n: usize) {
    wait_until(
        format!("{n} more requests (the clients stalled)"),
        async || ok.load(Ordering::Relaxed) >= from + n,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_routes_reload_under_load_without_a_failed_request() {
    let (up1, up2) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let vars = [("UP1", up1.host_port()), ("UP2", up2.host_port())];
    let texts = texts();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, &texts[0]).unwrap();
    let started = Instant::now();
    let gw = Arc::new(Gateway::start_file(&path, &vars, None).await);
    eprintln!("{ROUTES} routes: started in {:?}", started.elapsed());

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let picks = picks();
    let mut load = Vec::new();
    for client in 0..CLIENTS {
        let (stop, ok, failures, addr) = (stop.clone(), ok.clone(), failures.clone(), gw.addr);
        // Each client walks the picked routes from its own offset, on ONE
        // keep-alive connection: a connection closed by a reload would fail.
        let mine: Vec<usize> = picks
            .iter()
            .cycle()
            .skip(client)
            .take(picks.len())
            .copied()
            .collect();
        load.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let authority = addr.to_string();
            for &i in mine.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (host, path) = scale::request_for(i, ROUTES);
                let host = host.unwrap_or_else(|| authority.clone());
                let failed = match conn.get_host(&path, &host).await {
                    // The echo saw the request: it came through route `i`
                    // (routes that set X-Route say so; both variants' values).
                    Ok(r) if r.status == 200 => {
                        let seen = &r.json()["headers"]["x-route"];
                        let route = format!("r{i}");
                        if i % 3 == 0 && *seen != route && *seen != format!("{route}-b") {
                            Some(format!("r{i} {host}{path}: X-Route {seen}"))
                        } else {
                            None
                        }
                    }
                    Ok(r) => Some(format!("r{i} {host}{path}: {} {}", r.status, r.text())),
                    Err(e) => Some(format!("r{i} {host}{path}: {e}")),
                };
                match failed {
                    None => ok.fetch_add(1, Ordering::Relaxed),
                    Some(f) => {
                        failures.lock().unwrap().push(f);
                        0
                    }
                };
            }
        }));
    }

    wait_requests(&ok, 0, 50).await;
    let mut versions = Vec::new();
    let mut slowest = Duration::ZERO;
    for r in 1..=RELOADS {
        replace_file(&path, &texts[r % 2]);
        let before = ok.load(Ordering::Relaxed);
        let t = Instant::now();
        let req = http::Request::post(gw.admin_url("/reload"))
            .body(empty())
            .unwrap();
        let resp = send_within(req, RELOAD_WAIT).await.unwrap();
        slowest = slowest.max(t.elapsed());
        assert_eq!(resp.status, 200, "reload {r}: {}", resp.text());
        let body = resp.json();
        let changes = &body["changes"];
        // Variant 1 renames 1 in 200 routes: 50 removed, 50 added.
        assert_eq!(changes["added"].as_array().unwrap().len(), 50, "{changes}");
        assert_eq!(
            changes["removed"].as_array().unwrap().len(),
            50,
            "{changes}"
        );
        versions.push(body["version"].as_str().unwrap().to_string());
        // Traffic flows between reloads too, not only during them.
        wait_requests(&ok, before, 20).await;
    }
    // Two versions, alternating.
    assert_ne!(versions[0], versions[1]);

    // Every client still holds its one connection (a close would also have
    // failed a request).
    let m = gw.metrics().await;
    let open = metric(&m, r#"tollgate_active_connections{listener="http"}"#).unwrap();
    assert!(open >= CLIENTS as f64, "keep-alive connections were closed");
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(gw.reload_counts().await, (RELOADS as f64, 0.0));
    eprintln!(
        "{} requests over {RELOADS} reloads of {ROUTES} routes, 0 failed; slowest POST /reload {slowest:?}",
        ok.load(Ordering::Relaxed)
    );
    match Arc::try_unwrap(gw) {
        Ok(gw) => gw.shutdown().await,
        Err(_) => panic!("gateway still shared"),
    }
}

/// Writes the 10,000-route config for a manual run (the memory figure in
/// the README, "Large configs"):
/// `SCALE_CONFIG_OUT=/tmp/scale.yaml cargo test --test it -- --ignored reload_scale::write_scale_config`.
/// Its upstream targets are `${UP1}` and `${UP2}`.
#[test]
#[ignore]
fn write_scale_config() {
    let out = std::env::var("SCALE_CONFIG_OUT").unwrap_or_else(|_| "scale.yaml".into());
    std::fs::write(&out, &texts()[0]).unwrap();
    eprintln!("wrote {out}");
}
