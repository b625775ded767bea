//! HTTP Basic authentication (`auth.basic`): htpasswd files of bcrypt and
//! argon2 hashes, end to end through the gateway in front of an echo upstream.

use std::path::Path;

use argon2::PasswordHasher as _;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::auth::*;
use crate::support::*;

fn basic(user_pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

fn argon2_hash(password: &str) -> String {
    let salt = argon2::password_hash::SaltString::encode_b64(b"tollgate-salt-16").unwrap();
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// alice (bcrypt) and bob (argon2).
fn write_users(path: &Path, alice: &str, bob: &str) {
    let text = format!(
        "# ops users\nalice:{}\nbob:{}\n",
        bcrypt::hash(alice, 4).unwrap(),
        argon2_hash(bob)
    );
    std::fs::write(path, text).unwrap();
}

fn config(htpasswd: &Path) -> String {
    format!(
        "{}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
auth:
  basic:
    ops: {{ htpasswd: '{}', realm: Operations }}
  jwt:
    main: {{ algorithms: [HS256], secret: {SECRET} }}
routes:
  - {{ name: ops, match: {{ path_prefix: /ops }}, upstream: up, auth: ['basic:ops'] }}
  - {{ name: either, match: {{ path_prefix: /either }}, upstream: up, auth: ['jwt:main', 'basic:ops'] }}
",
        server_block(""),
        htpasswd.display()
    )
}

async fn start() -> (Gateway, Upstream, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.htpasswd");
    write_users(&file, "s3cret", "h0rse");
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(&file), &[("UP", up.host_port())]).await;
    (gw, up, dir)
}

#[tokio::test]
async fn bcrypt_and_argon2_users_pass_and_the_password_is_not_forwarded() {
    let (gw, up, _dir) = start().await;
    for (cred, user) in [("alice:s3cret", "alice"), ("bob:h0rse", "bob")] {
        let r = get_with(
            &gw.url("/ops/x"),
            &[("authorization", &basic(cred)), ("x-consumer-id", "forged")],
        )
        .await;
        assert_eq!(r.status, 200, "{cred}: {}", r.text());
        let h = &r.json()["headers"];
        assert_eq!(h["x-consumer-id"], user);
        assert!(h.get("authorization").is_none(), "forwarded: {h}");
    }
    assert_eq!(up.hits(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn wrong_unknown_and_missing_credentials_get_a_basic_challenge() {
    let (gw, up, _dir) = start().await;
    for (auth, reason) in [
        (Some(basic("alice:wrong")), "invalid"),
        (Some(basic("bob:s3cret")), "invalid"),
        (Some(basic("mallory:s3cret")), "invalid"),
        (Some("Basic %%%".to_string()), "missing"),
        (None, "missing"),
    ] {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let r = get_with(&gw.url("/ops/x"), &headers).await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.json()["error"], "unauthorized", "{auth:?}");
        let challenges: Vec<&str> = r
            .headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            challenges,
            ["Basic realm=\"Operations\", charset=\"UTF-8\""],
            "{reason}"
        );
    }
    assert_eq!(up.hits(), 0);
    let m = gw.metrics().await;
    let count = |reason: &str| {
        metric(
            &m,
            &format!("tollgate_auth_failures_total{{reason=\"{reason}\",route=\"ops\"}}"),
        )
    };
    assert_eq!(count("invalid"), Some(3.0), "{m}");
    assert_eq!(count("missing"), Some(2.0), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_route_with_jwt_or_basic_takes_either_and_challenges_both() {
    let (gw, _up, _dir) = start().await;
    let token = mint(Algorithm::HS256, &good_claims());
    let bearer = format!("Bearer {token}");
    let r = get_with(&gw.url("/either"), &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A passing JWT keeps its Authorization header (it is not Basic's).
    assert_eq!(r.json()["headers"]["authorization"], json!(bearer));
    let r = get_with(
        &gw.url("/either"),
        &[("authorization", &basic("alice:s3cret"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_with(&gw.url("/either"), &[]).await;
    assert_eq!(r.status, 401);
    let challenges: Vec<&str> = r
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges,
        ["Basic realm=\"Operations\", charset=\"UTF-8\"", "Bearer"]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_reads_the_htpasswd_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.htpasswd");
    write_users(&file, "s3cret", "h0rse");
    let up = Upstream::echo("up").await;
    let yaml = config(&file);
    let vars = [("UP", up.host_port())];
    let gw = Gateway::start(&yaml, &vars).await;
    let ok = |cred: &str| {
        let url = gw.url("/ops");
        let h = basic(cred);
        async move { get_with(&url, &[("authorization", &h)]).await.status }
    };
    assert_eq!(ok("alice:s3cret").await, 200);
    write_users(&file, "n3w-secret", "h0rse");
    gw.reload(&yaml, &vars).await;
    assert_eq!(ok("alice:n3w-secret").await, 200);
    assert_eq!(ok("alice:s3cret").await, 401, "the old password is gone");
    // A broken file fails the reload and the running users stay.
    std::fs::write(&file, "alice:plaintext\n").unwrap();
    let loaded = tollgate::config::load_str_with_env(&yaml, "test.yaml", &|k| {
        (k == "UP").then(|| up.host_port())
    });
    let e = loaded.unwrap_err().to_string();
    assert!(
        e.contains("users.htpasswd:1: user `alice`: a crypt(3) hash or a plain password"),
        "{e}"
    );
    assert_eq!(ok("alice:n3w-secret").await, 200);
    gw.shutdown().await;
}

#[test]
fn bad_htpasswd_files_and_references_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let weak = dir.path().join("weak");
    std::fs::write(&weak, "# x\nalice:$apr1$abc$def\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nobody\n").unwrap();
    let missing = dir.path().join("missing");
    let text = format!(
        "upstreams:
  up: {{ targets: [{{ url: 'http://127.0.0.1:9' }}] }}
auth:
  basic:
    weak: {{ htpasswd: '{}' }}
    empty: {{ htpasswd: '{}' }}
    gone: {{ htpasswd: '{}' }}
    quoted: {{ htpasswd: '{}', realm: 'a \"b\"' }}
routes:
  - {{ name: r, match: {{ path: /r }}, upstream: up, auth: ['basic:wek'] }}
",
        weak.display(),
        empty.display(),
        missing.display(),
        weak.display()
    );
    let e = tollgate::config::load_str(&text, "t.yaml")
        .unwrap_err()
        .to_string();
    for want in [
        "routes[0].auth[0]: unknown basic auth `wek` (did you mean `weak`?)",
        "auth.basic.quoted.realm: a realm is non-empty printable text without double quotes",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    // The files are read once the config is otherwise valid.
    let fixed = text
        .replace("basic:wek", "basic:weak")
        .replace(", realm: 'a \"b\"'", "");
    let e = tollgate::config::load_str(&fixed, "t.yaml")
        .unwrap_err()
        .to_string();
    for want in [
        "auth.basic.weak.htpasswd: ".to_string(),
        format!("{}:2: user `alice`: an MD5-crypt hash", weak.display()),
        format!(
            "auth.basic.empty.htpasswd: {} lists no user",
            empty.display()
        ),
        format!(
            "auth.basic.gone.htpasswd: cannot read {}",
            missing.display()
        ),
    ] {
        assert!(e.contains(&want), "missing {want:?} in:\n{e}");
    }
}

#[tokio::test]
async fn editing_the_htpasswd_file_reloads_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.htpasswd");
    write_users(&users, "s3cret", "h0rse");
    let up = Upstream::echo("up").await;
    let config_path = dir.path().join("tollgate.yaml");
    std::fs::write(&config_path, config(&users)).unwrap();
    let gw = Gateway::start_file(
        &config_path,
        &[("UP", up.host_port())],
        Some(std::time::Duration::from_millis(50)),
    )
    .await;
    let status = |cred: &str| {
        let url = gw.url("/ops");
        let h = basic(cred);
        async move { get_with(&url, &[("authorization", &h)]).await.status }
    };
    assert_eq!(status("alice:s3cret").await, 200);
    write_users(&users, "changed", "h0rse");
    wait_until("the new password to be taken", async || {
        status("alice:changed").await == 200
    })
    .await;
    assert_eq!(status("alice:s3cret").await, 401);
    gw.shutdown().await;
}
