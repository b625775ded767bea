//! Hot reload from the file watcher (SPEC §6): editors' rename-and-replace,
//! Kubernetes ConfigMap `..data` symlink swaps, and 100 rewrites under a steady
//! load with zero failed requests and zero closed keep-alive connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

const DEBOUNCE: Duration = Duration::from_millis(20);

/// Config version `i`: a stable route plus `/v/i`; odd versions are invalid
/// (an unknown key), which must change nothing.
fn version(i: usize) -> String {
    let mut s = format!(
        "server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
  admin:
    bind: 127.0.0.1:0
upstreams:
  app:
    targets: [{{ url: 'http://${{UP}}' }}]
routes:
  - name: stable
    match: {{ path_prefix: /stable }}
    upstream: app
  - name: v{i}
    match: {{ path: /v/{i} }}
    respond: {{ status: 200, body: 'v{i}' }}
"
    );
    if i % 2 == 1 {
        s.push_str("    oops: true\n");
    }
    s
}

/// Polls until `path` answers `body`; returns how long that took.
async fn wait_served(gw: &Gateway, path: &str, body: &str) -> Duration {
    let start = Instant::now();
    wait_until(format!("{path} to serve {body}"), async || {
        get(&gw.url(path))
            .await
            .is_ok_and(|r| r.status == 200 && r.text() == body)
    })
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_replace_is_seen() {
    let up = Upstream::echo("u").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, version(0)).unwrap();
    let gw = Gateway::start_file(&path, &[("UP", up.host_port())], Some(DEBOUNCE)).await;
    assert_eq!(get(&gw.url("/v/0")).await.unwrap().text(), "v0");
    replace_file(&path, &version(2));
    wait_served(&gw, "/v/2", "v2").await;
    assert_eq!(get(&gw.url("/v/0")).await.unwrap().status, 404);
    // An unrelated file in the same directory triggers nothing.
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    tokio::time::sleep(DEBOUNCE * 5).await;
    assert_eq!(gw.reload_counts().await, (1.0, 0.0));
    gw.shutdown().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_symlink_swap_is_seen() {
    use std::os::unix::fs::symlink;
    let up = Upstream::echo("u").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The layout the kubelet writes: the file is a symlink through `..data`,
    // itself a symlink to a timestamped directory that is swapped atomically.
    std::fs::create_dir(d.join("..2026_01_01_00_00_00.1")).unwrap();
    std::fs::write(d.join("..2026_01_01_00_00_00.1/tollgate.yaml"), version(0)).unwrap();
    symlink("..2026_01_01_00_00_00.1", d.join("..data")).unwrap();
    symlink("..data/tollgate.yaml", d.join("tollgate.yaml")).unwrap();
    let path = d.join("tollgate.yaml");
    let gw = Gateway::start_file(&path, &[("UP", up.host_port())], Some(DEBOUNCE)).await;
    assert_eq!(get(&gw.url("/v/0")).await.unwrap().text(), "v0");

    for (n, v) in [(2, 2), (3, 4)] {
        let ts = format!("..2026_01_01_00_00_0{n}.1");
        std::fs::create_dir(d.join(&ts)).unwrap();
        std::fs::write(d.join(&ts).join("tollgate.yaml"), version(v)).unwrap();
        symlink(&ts, d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        wait_served(&gw, &format!("/v/{v}"), &format!("v{v}")).await;
    }
    assert_eq!(get(&gw.url("/v/0")).await.unwrap().status, 404);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_rewrites_under_load_fail_nothing() {
    let up = Upstream::echo("u").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, version(0)).unwrap();
    let gw = Arc::new(Gateway::start_file(&path, &[("UP", up.host_port())], Some(DEBOUNCE)).await);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    // Keep-alive clients: each uses ONE connection for its whole life, so a
    // connection closed by a reload shows up as a failed request.
    for client in 0..6 {
        let (stop, ok, failures, addr) = (stop.clone(), ok.clone(), failures.clone(), gw.addr);
        load.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            // Two of the clients send long requests that span several reloads.
            let path = if client < 2 {
                "/stable/slow?delay_ms=150"
            } else {
                "/stable/fast"
            };
            while !stop.load(Ordering::Relaxed) {
                match conn.get(path).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{path}: {}", r.status)),
                    Err(e) => failures.lock().unwrap().push(format!("{path}: {e}")),
                }
            }
        }));
    }

    let mut slowest = Duration::ZERO;
    for i in 1..=100 {
        let (s0, f0) = gw.reload_counts().await;
        replace_file(&path, &version(i));
        wait_until(format!("rewrite {i} to be reloaded"), async || {
            let (s, f) = gw.reload_counts().await;
            s + f > s0 + f0
        })
        .await;
        if i % 2 == 0 {
            slowest = slowest.max(wait_served(&gw, &format!("/v/{i}"), &format!("v{i}")).await);
            if i >= 4 {
                let gone = get(&gw.url(&format!("/v/{}", i - 2))).await.unwrap();
                assert_eq!(gone.status, 404, "route v{} was removed", i - 2);
            }
        } else {
            // The invalid version changed nothing: the last valid route serves.
            let last = i - 1;
            let r = get(&gw.url(&format!("/v/{last}"))).await.unwrap();
            assert_eq!(r.text(), format!("v{last}"));
        }
    }
    // The load connections are all still open (each client used one
    // connection throughout, so a close would also have failed a request);
    // a probe's connection may still be closing, hence `>=`.
    let m = gw.metrics().await;
    let open = metric(&m, r#"tollgate_active_connections{listener="http"}"#).unwrap();
    assert!(open >= 6.0, "{m}");
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok.load(Ordering::Relaxed) > 100, "the load was too light");
    // Once counted, a valid reload serves its route at once.
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    assert_eq!(gw.reload_counts().await, (50.0, 50.0));
    eprintln!(
        "{} requests, 0 failed, across 100 rewrites",
        ok.load(Ordering::Relaxed)
    );
    match Arc::try_unwrap(gw) {
        Ok(gw) => gw.shutdown().await,
        Err(_) => panic!("gateway still shared"),
    }
}

/// Writes `text` into a new kubelet-style `..<ts>` directory of `d`, in two
/// halves with a pause between (a reload in between would read half a file
/// if it followed that directory), then swaps `..data` to it in one rename.
async fn kubelet_update(d: &std::path::Path, ts: &str, file: &str, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::symlink;
    std::fs::create_dir(d.join(ts)).unwrap();
    let mut f = std::fs::File::create(d.join(ts).join(file)).unwrap();
    let (a, b) = text.split_at(text.len() / 2);
    f.write_all(a.as_bytes()).unwrap();
    f.flush().unwrap();
    tokio::time::sleep(DEBOUNCE * 5).await;
    f.write_all(b.as_bytes()).unwrap();
    drop(f);
    symlink(ts, d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_swaps_under_load_reload_once_each_and_fail_nothing() {
    use std::os::unix::fs::symlink;
    let up = Upstream::echo("u").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..ts0")).unwrap();
    std::fs::write(d.join("..ts0/tollgate.yaml"), version(0)).unwrap();
    symlink("..ts0", d.join("..data")).unwrap();
    symlink("..data/tollgate.yaml", d.join("tollgate.yaml")).unwrap();
    let gw = Arc::new(
        Gateway::start_file(
            &d.join("tollgate.yaml"),
            &[("UP", up.host_port())],
            Some(DEBOUNCE),
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failures, addr) = (stop.clone(), ok.clone(), failures.clone(), gw.addr);
        load.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            while !stop.load(Ordering::Relaxed) {
                match conn.get("/stable/x").await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.lock().unwrap().push(r.status.to_string()),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    for i in [2, 4, 6, 8, 10] {
        let (s0, f0) = gw.reload_counts().await;
        kubelet_update(d, &format!("..ts{i}"), "tollgate.yaml", &version(i)).await;
        wait_served(&gw, &format!("/v/{i}"), &format!("v{i}")).await;
        // Absence cannot be polled for: give a second reload time to show.
        tokio::time::sleep(DEBOUNCE * 10).await;
        assert_eq!(
            gw.reload_counts().await,
            (s0 + 1.0, f0),
            "swap {i}: one good reload"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_swap_reloads_the_file_it_holds() {
    use base64::Engine as _;
    use std::os::unix::fs::symlink;
    let up = Upstream::echo("u").await;
    let dir = tempfile::tempdir().unwrap();
    // A Secret with an htpasswd file, mounted the kubelet's way.
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(secret.join("..ts0")).unwrap();
    let users = |password: &str| format!("ops:{}\n", bcrypt::hash(password, 4).unwrap());
    std::fs::write(secret.join("..ts0/users"), users("one")).unwrap();
    symlink("..ts0", secret.join("..data")).unwrap();
    symlink("..data/users", secret.join("users")).unwrap();
    let config = dir.path().join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "{}upstreams:\n  app: {{ targets: [{{ url: 'http://${{UP}}' }}] }}\nauth:\n  basic:\n    ops: {{ htpasswd: '{}' }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: app, auth: ['basic:ops'] }}\n",
            server_block(""),
            secret.join("users").display()
        ),
    )
    .unwrap();
    let gw = Gateway::start_file(&config, &[("UP", up.host_port())], Some(DEBOUNCE)).await;
    let status = |password: &str| {
        let url = gw.url("/x");
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ops:{password}"))
        );
        async move { get_with(&url, &[("authorization", &h)]).await.status }
    };
    assert_eq!(status("one").await, 200);
    let (s0, f0) = gw.reload_counts().await;
    kubelet_update(&secret, "..ts1", "users", &users("two")).await;
    wait_until("the rotated password", async || status("two").await == 200).await;
    assert_eq!(status("one").await, 401);
    tokio::time::sleep(DEBOUNCE * 10).await;
    assert_eq!(
        gw.reload_counts().await,
        (s0 + 1.0, f0),
        "one reload for the swap"
    );
    gw.shutdown().await;
}
