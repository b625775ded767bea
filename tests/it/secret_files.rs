//! `${file:PATH}` (issue 23 item 6): values read from mounted files, never
//! shown by `/config`, `/explain`, `/reloads` or a validation error, and
//! re-read when the file changes.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

const KEY_A: &str = "first-api-key-from-a-file";
const KEY_B: &str = "second-api-key-from-a-file";
const TOKEN: &str = "upstream-token-from-a-file";

fn config() -> &'static str {
    "server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
  admin:
    bind: 127.0.0.1:0
auth:
  api_keys:
    partners:
      header: X-API-Key
      keys: [{ id: acme, key: '${file:secrets/acme}' }]
upstreams:
  app:
    targets: [{ url: 'http://${UP}' }]
routes:
  - name: api
    match: { path_prefix: /api }
    upstream: app
    auth: ['api_key:partners']
    request_headers:
      set: { X-Upstream-Token: 'Token ${file:secrets/token}' }
"
}

/// Writes a Secret's files the way the kubelet does: a new timestamped
/// directory, then the `..data` symlink swapped to it in one rename.
fn write_secret(dir: &Path, generation: u32, files: &[(&str, &str)]) {
    let stamp = format!("..2026_12_07_{generation:04}");
    let new = dir.join(&stamp);
    std::fs::create_dir(&new).unwrap();
    for (name, text) in files {
        std::fs::write(new.join(name), text).unwrap();
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

async fn call(gw: &Gateway, key: &str) -> Resp {
    let req = http::Request::get(gw.url("/api/x"))
        .header("x-api-key", key)
        .body(empty())
        .unwrap();
    send(req).await.unwrap()
}

#[tokio::test]
async fn values_from_files_work_stay_hidden_and_follow_the_file() {
    let up = Upstream::echo("u").await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    // A trailing newline, as `echo` writes it, is not part of the value.
    write_secret(
        &secrets,
        1,
        &[("acme", &format!("{KEY_A}\n")), ("token", TOKEN)],
    );
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, config()).unwrap();
    let gw = Gateway::start_file(
        &path,
        &[("UP", up.host_port())],
        Some(Duration::from_millis(50)),
    )
    .await;

    let r = call(&gw, KEY_A).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["x-upstream-token"],
        format!("Token {TOKEN}")
    );
    assert_eq!(call(&gw, KEY_B).await.status, 401);

    // Shown nowhere: the values are <redacted> in every view of the config.
    for view in ["/config", "/explain?path=/api/x", "/reloads"] {
        let text = get(&gw.admin_url(view)).await.unwrap().text();
        assert!(
            !text.contains(KEY_A) && !text.contains(TOKEN),
            "{view}: {text}"
        );
    }
    let config = get(&gw.admin_url("/config")).await.unwrap().json();
    let route = &config["config"]["routes"][0];
    assert_eq!(
        route["request_headers"]["set"]["X-Upstream-Token"],
        "Token <redacted>"
    );

    // A Secret update reloads once, by itself, and the new key works.
    write_secret(&secrets, 2, &[("acme", KEY_B), ("token", TOKEN)]);
    wait_until("the new key to work", async || {
        let status = call(&gw, KEY_B).await.status;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status}"))
        }
    })
    .await;
    assert_eq!(call(&gw, KEY_A).await.status, 401);
    // The new version serves before its history entry is written (the diff
    // is computed after the swap, off the runtime): wait for the entry.
    let history = wait_until("the file reload in /reloads", async || {
        let history = get(&gw.admin_url("/reloads")).await.unwrap();
        match history.json()["reloads"][0]["trigger"].as_str() {
            Some("file") => Ok(history),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let text = history.text();
    assert!(!text.contains(KEY_A) && !text.contains(KEY_B), "{text}");
    let last = &history.json()["reloads"][0];
    assert_eq!(
        last["changes"]["changed"],
        serde_json::json!(["api_key:partners"])
    );
    gw.shutdown().await;
}

#[test]
fn a_bad_secret_file_is_a_located_error_that_never_quotes_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    let write = |yaml: &str| std::fs::write(&path, yaml).unwrap();
    let load = || match tollgate::config::load_file_with_env(&path, &|_| None) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };

    write("upstreams:\n  app:\n    targets: [{ url: '${file:missing-url}' }]\nroutes: []\n");
    let e = load();
    assert!(
        e.contains("tollgate.yaml:3:")
            && e.contains("${file:missing-url}")
            && e.contains("cannot read"),
        "{e}"
    );

    // A value that fails its check: the message names the key, not the value.
    std::fs::write(dir.path().join("url"), "not-a-url-s3cret").unwrap();
    write("upstreams:\n  app:\n    targets: [{ url: '${file:url}' }]\nroutes: []\n");
    let e = load();
    assert!(e.contains("upstreams.app.targets[0].url"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");

    std::fs::write(dir.path().join("empty"), "").unwrap();
    write("upstreams:\n  app:\n    targets: [{ url: '${file:empty}' }]\nroutes: []\n");
    assert!(load().contains("is empty"));
}
