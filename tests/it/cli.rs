//! The `tollgate` command as a user runs it (SPEC §1, §9): `validate`, `routes`,
//! usage errors and exit codes. `demo` is not run here: it binds the fixed
//! port 8080.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// Starts the binary with `args`, its output captured, its environment clean.
fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("TOLLGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tollgate")
}

/// Runs the binary with `args`, killing it if it runs longer than 20 s.
fn run(args: &[&str]) -> Output {
    let mut child = spawn(args);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "tollgate {args:?} did not exit in 20s\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

const GOOD: &str = r#"server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
upstreams:
  users:
    targets:
      - url: http://127.0.0.1:9001
routes:
  - name: users
    match: { path_prefix: /api/users }
    upstream: users
    rewrite: { strip_prefix: /api }
  - name: api
    match: { path_prefix: /api }
    upstream: users
  - name: ping
    match: { path: /ping }
    respond: { status: 200, body: "pong" }
"#;

#[test]
fn validate_a_good_file_prints_ok() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "good.yaml", GOOD);
    let o = run(&["validate", "--config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "ok");
}

#[test]
fn validate_a_bad_file_prints_every_error_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let bad = r#"server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
upstreams:
  users:
    targets:
      - url: http://127.0.0.1:9001
routes:
  - name: a
    match: { path_prefix: /a }
    upstream: userz
  - name: b
    match: { path_prefix: /b }
    upstream: nope
"#;
    let f = write(dir.path(), "bad.yaml", bad);
    let o = run(&["validate", "--config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "stdout: {}", stdout(&o));
    let err = stderr(&o);
    println!("{err}");
    // Both errors, each with file:line:column and the key path.
    let re = regex::Regex::new(r"bad\.yaml:(\d+):(\d+): ").unwrap();
    let positions: Vec<(u32, u32)> = re
        .captures_iter(&err)
        .map(|c| (c[1].parse().unwrap(), c[2].parse().unwrap()))
        .collect();
    assert!(positions.len() >= 2, "every error with a position: {err}");
    assert!(
        positions.iter().any(|p| p.0 == 12),
        "the unknown upstream on line 12: {err}"
    );
    assert!(
        positions.iter().any(|p| p.0 == 15),
        "the second unknown upstream on line 15: {err}"
    );
    assert!(err.contains("routes[0].upstream"), "{err}");
    assert!(err.contains("routes[1].upstream"), "{err}");
    assert!(err.contains("users"), "did-you-mean for `userz`: {err}");
    assert!(!stdout(&o).contains("ok"));
}

#[test]
fn validate_reports_every_shape_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "server:\n  listenerz: []\nroutes:\n  - name: a\n    match: { path_prefx: /a }\n    respond: { status: 200 }\n";
    let f = write(dir.path(), "shape.yaml", bad);
    let o = run(&["validate", "--config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("shape.yaml:2:3: "), "{err}");
    assert!(err.contains("shape.yaml:5:14: "), "{err}");
    assert!(err.contains("did you mean `path_prefix`"), "{err}");
}

#[test]
fn validate_a_missing_file_exits_1() {
    let o = run(&["validate", "--config", "/nonexistent/tollgate.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/tollgate.yaml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn routes_explains_the_choice_then_near_misses() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "gw.yaml", GOOD);
    let o = run(&["routes", "--config", f.to_str().unwrap(), "/api/users/7"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    println!("{out}");
    let chosen = out.find("route: users").expect("the chosen route is named");
    let near = out.find("near misses").expect("near misses are listed");
    assert!(chosen < near, "the chosen route comes first:\n{out}");
    assert!(
        out.contains("upstream path: /users/7"),
        "the rewritten path:\n{out}"
    );
    assert!(out.contains("users"), "{out}");
    let misses = &out[near..];
    assert!(misses.contains("ping"), "ping is a near miss:\n{out}");
    assert!(
        out.lines().next().unwrap().starts_with("GET "),
        "--method defaults to GET:\n{out}"
    );

    let o = run(&["routes", "--config", f.to_str().unwrap(), "/nowhere"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("404"), "{}", stdout(&o));

    // The path is normalised as the gateway would before it is matched.
    let o = run(&[
        "routes",
        "--config",
        f.to_str().unwrap(),
        "/x/..//api/users/7",
    ]);
    let out = stdout(&o);
    assert!(out.contains("normalised path: /api/users/7"), "{out}");
    assert!(out.contains("route: users"), "{out}");
    let o = run(&[
        "routes",
        "--config",
        f.to_str().unwrap(),
        "/api/%2e%2e/../x",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("rejected: the gateway answers 400"), "{out}");
    assert!(!out.contains("route: "), "{out}");
}

#[test]
fn bad_usage_exits_1() {
    let o = run(&["--no-such-flag"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = run(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "gw.yaml", GOOD);
    let o = run(&["routes", "--config", f.to_str().unwrap(), "no-slash"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = run(&["routes", "--config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "a missing path: {}", stderr(&o));
}

#[test]
fn run_on_a_taken_port_exits_2_with_one_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = GOOD.replace("bind: 127.0.0.1:0", &format!("bind: {addr}"));
    let f = write(dir.path(), "gw.yaml", &cfg);
    let o = run(&[
        "run",
        "--config",
        f.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    let messages: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(&addr.to_string()))
        .collect();
    assert_eq!(
        messages.len(),
        1,
        "one clear message naming the address:\n{err}"
    );
    assert!(messages[0].starts_with("tollgate: "), "{err}");
    drop(taken);
}

/// Starts `run` in the background and returns it with the address it listens
/// on, read from its JSON log on stderr.
fn start(args: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = spawn(args);
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "listening"
                && let Some(addr) = v["fields"]["addr"].as_str()
            {
                let _ = tx.send(addr.parse().expect("addr"));
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("tollgate never logged its listening address");
    (child, addr)
}

fn get_ping(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// SIGTERM, then the exit code of a clean shutdown.
fn terminate(mut child: std::process::Child) -> Output {
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn access_log_goes_to_a_file_or_nowhere_and_sigterm_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "gw.yaml", GOOD);
    let log = dir.path().join("access.log");
    let (child, addr) = start(&[
        "run",
        "--config",
        f.to_str().unwrap(),
        "--log-format",
        "json",
        "--access-log",
        log.to_str().unwrap(),
    ]);
    assert!(get_ping(addr).starts_with("HTTP/1.1 200"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(r#""route":"ping""#)) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no access-log line in the file");
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 200);
    let out = terminate(child);
    assert_eq!(out.status.code(), Some(0), "a clean shutdown exits 0");
    assert!(
        stdout(&out).is_empty(),
        "the log went to the file, not stdout"
    );

    let (child, addr) = start(&[
        "run",
        "--config",
        f.to_str().unwrap(),
        "--log-format",
        "json",
        "--access-log",
        "off",
    ]);
    assert!(get_ping(addr).starts_with("HTTP/1.1 200"));
    let out = terminate(child);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).is_empty(),
        "--access-log off writes nothing: {}",
        stdout(&out)
    );
}
