//! What a user sees for a broken config: each error at the right file:line:column,
//! with its zero-based key path and a message that says what was expected.

use tollgate::config::{ConfigError, LoadedConfig, load_file, load_str, load_str_with_env};

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<LoadedConfig, Vec<ConfigError>> {
    load_str_with_env(text, "tollgate.yaml", &no_env).map_err(|e| e.0)
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e,
    }
}

fn one_error(text: &str) -> ConfigError {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.remove(0)
}

/// `(line, column, path)` of an error.
fn at(e: &ConfigError) -> (usize, usize, &str) {
    (e.line, e.column, e.path.as_str())
}

/// Prefix for configs whose interesting part is the routes.
const UPSTREAMS: &str = "\
upstreams:
  users:
    targets: [{ url: http://127.0.0.1:9001 }]
  orders:
    targets: [{ url: http://127.0.0.1:9002 }]
";

#[test]
fn a_valid_full_config_loads() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/full.yaml"))
        .expect("config/full.yaml exists");
    let loaded = load(&text).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(loaded.source, "tollgate.yaml");
    assert_eq!(loaded.version.len(), 16);
    assert!(loaded.version.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(loaded.config.routes.len(), 3);
    assert_eq!(loaded.config.upstreams["users"].targets[0].weight, 3);
    assert!(loaded.files.is_empty());
}

#[test]
fn bad_yaml_syntax_has_a_position() {
    let e = one_error("routes:\n  - name: a\n    match: { path: /x\n");
    assert_eq!(e.path, "");
    assert!(e.message.starts_with("invalid YAML: "), "{}", e.message);
    assert!(
        !e.message.contains("at line"),
        "position is not repeated: {}",
        e.message
    );
    assert!(e.line >= 3, "{e:?}");
}

#[test]
fn unknown_keys_at_each_level_point_at_the_key_with_a_suggestion() {
    let text = "\
sever:
  listeners: []
upstreams:
  users:
    targets:
      - url: http://127.0.0.1:9001
        wieght: 2
  orders:
    timeouts: { conect: 1s }
routes:
  - name: a
    match:
      pat: /x
    upstream: users
";
    let all = errors(text);
    let got: Vec<_> = all.iter().map(at).collect();
    assert_eq!(
        got,
        [
            (1, 1, "sever"),
            (7, 9, "upstreams.users.targets[0].wieght"),
            (9, 17, "upstreams.orders.timeouts.conect"),
            (13, 7, "routes[0].match.pat"),
        ]
    );
    assert!(
        all[0].message.contains("(did you mean `server`?)"),
        "{}",
        all[0]
    );
    assert!(
        all[1].message.contains("(did you mean `weight`?)"),
        "{}",
        all[1]
    );
    assert!(
        all[2].message.contains("(did you mean `connect`?)"),
        "{}",
        all[2]
    );
    assert_eq!(
        all[3].to_string(),
        "tollgate.yaml:13:7: routes[0].match.pat: unknown key `pat`; expected one of hosts, \
         path, path_prefix, path_regex, methods, headers, query, cookies (did you mean `path`?)"
    );
}

#[test]
fn unknown_keys_far_from_any_name_get_no_suggestion() {
    let e = one_error("server:\n  zzzzzz: 1\n");
    assert_eq!(at(&e), (2, 3, "server.zzzzzz"));
    assert!(!e.message.contains("did you mean"), "{}", e.message);
}

#[test]
fn two_broken_routes_give_two_errors_in_one_call() {
    let text = format!(
        "{UPSTREAMS}\
routes:
  - name: a
    match: {{ path: /a }}
    upstream: users
    timeout: soon
  - name: b
    match: {{ path: /b }}
    upstream: users
  - name: c
    mtch: {{ path: /c }}
    upstream: users
"
    );
    let all = errors(&text);
    let got: Vec<_> = all.iter().map(at).collect();
    assert_eq!(
        got,
        [(10, 14, "routes[0].timeout"), (15, 5, "routes[2].mtch")]
    );
    assert!(all[0].message.contains("expected a duration"), "{}", all[0]);
}

#[test]
fn semantic_errors_are_all_reported_in_file_order() {
    let text = format!(
        "{UPSTREAMS}\
routes:
  - name: a
    match: {{ path: a }}
    upstream: users
  - name: a
    match: {{ path_regex: \"(x\" }}
    upstream: nobody
"
    );
    let all = errors(&text);
    let got: Vec<_> = all.iter().map(at).collect();
    assert_eq!(
        got,
        [
            (8, 20, "routes[0].match.path"),
            (10, 11, "routes[1].name"),
            (11, 26, "routes[1].match.path_regex"),
            (12, 15, "routes[1].upstream"),
        ]
    );
    assert_eq!(all[1].message, "duplicate route name `a`");
    assert_eq!(all[2].message, "invalid regex: unclosed group");
}

#[test]
fn a_dangling_upstream_gets_a_suggestion() {
    let text = format!(
        "{UPSTREAMS}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: usres\n"
    );
    let e = one_error(&text);
    assert_eq!(at(&e), (9, 15, "routes[0].upstream"));
    assert_eq!(
        e.message,
        "unknown upstream `usres` (did you mean `users`?)"
    );
}

#[test]
fn a_missing_env_var_is_an_error_at_its_value() {
    let text = "server:\n  admin:\n    bind: ${ADMIN_BIND}\n";
    let e = one_error(text);
    assert_eq!(at(&e), (3, 11, "server.admin.bind"));
    assert_eq!(
        e.message,
        "environment variable `ADMIN_BIND` is not set; use ${ADMIN_BIND:-default} to give a default"
    );
}

#[test]
fn env_defaults_and_values_are_substituted() {
    let text = "\
server:
  admin:
    bind: ${ADMIN_BIND:-127.0.0.1:9901}
upstreams:
  u:
    targets: [{ url: \"http://${UPSTREAM_HOST}:9001\" }]
routes:
  - name: a
    match: { path: \"/$${literal}\" }
    upstream: u
";
    let env = |name: &str| (name == "UPSTREAM_HOST").then(|| "10.1.2.3".to_owned());
    let loaded = load_str_with_env(text, "t.yaml", &env).unwrap_or_else(|e| panic!("{e}"));
    let c = &loaded.config;
    assert_eq!(
        c.server.admin.as_ref().map(|a| a.bind.as_str()),
        Some("127.0.0.1:9901")
    );
    assert_eq!(
        c.upstreams["u"].targets[0].url.as_deref(),
        Some("http://10.1.2.3:9001")
    );
    assert_eq!(c.routes[0].matcher.path.as_deref(), Some("/${literal}"));
}

#[test]
fn an_unquoted_env_value_is_retyped_and_changes_the_version() {
    let text = "server:\n  limits:\n    max_connections: ${MAXCONN}\n";
    let with = |v: &'static str| move |name: &str| (name == "MAXCONN").then(|| v.to_owned());
    let a = load_str_with_env(text, "t.yaml", &with("500")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.config.server.limits.max_connections, 500);
    let b = load_str_with_env(text, "t.yaml", &with("600")).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(a.version, b.version);

    // Quoted, it stays a string: the user asked for one.
    let quoted = "server:\n  limits:\n    max_connections: \"${MAXCONN}\"\n";
    let e = load_str_with_env(quoted, "t.yaml", &with("500")).expect_err("a string");
    assert_eq!(at(&e.0[0]), (3, 22, "server.limits.max_connections"));
    assert!(e.0[0].message.contains("found the string"), "{}", e.0[0]);
}

#[test]
fn key_paths_are_zero_based_and_name_map_keys() {
    let text = "\
upstreams:
  users:
    targets:
      - url: http://127.0.0.1:9001
      - url: ftp://127.0.0.1:9002
";
    let e = one_error(text);
    assert_eq!(at(&e), (5, 14, "upstreams.users.targets[1].url"));
}

/// A key whose feature is not in this build is refused where it stands, never
/// silently ignored.
#[cfg(not(feature = "otel"))]
#[test]
fn otlp_export_without_the_feature_is_refused_at_its_line() {
    let text = format!("{UPSTREAMS}tracing:\n  otlp_endpoint: http://127.0.0.1:4317\n");
    let all = errors(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(at(&all[0]), (7, 18, "tracing.otlp_endpoint"));
    assert!(
        all[0].message.contains("--features otel"),
        "{}",
        all[0].message
    );
}

#[test]
fn compress_lists_known_encodings_once_on_proxied_routes() {
    let text = format!(
        "{UPSTREAMS}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: users\n    \
         compress: [gzip, brotli, zstd, gzip, gzp]\n  - name: b\n    match: {{ path: /b }}\n    \
         upstream: users\n    compress: []\n  - name: c\n    match: {{ path: /c }}\n    \
         respond: {{ status: 200 }}\n    compress: [br]\n"
    );
    let all = errors(&text);
    let got: Vec<_> = all.iter().map(|e| (at(e), e.message.as_str())).collect();
    assert_eq!(
        got,
        [
            (
                (10, 22, "routes[0].compress[1]"),
                "unknown encoding `brotli`; expected gzip, br or zstd (did you mean `br`?)"
            ),
            ((10, 36, "routes[0].compress[3]"), "`gzip` is listed twice"),
            (
                (10, 42, "routes[0].compress[4]"),
                "unknown encoding `gzp`; expected gzip, br or zstd (did you mean `gzip`?)"
            ),
            (
                (14, 5, "routes[1].compress"),
                "list at least one encoding (gzip, br, zstd), or remove `compress`"
            ),
            (
                (18, 5, "routes[2].compress"),
                "compress only applies to routes with an `upstream`"
            ),
        ]
    );
}

#[test]
fn bad_units_say_what_was_expected() {
    let text = "\
server:
  shutdown_grace: 30
  limits:
    max_body_bytes: 10 parsecs
rate_limits:
  per_client:
    rate: 100/d
";
    let all = errors(text);
    let got: Vec<_> = all.iter().map(|e| (at(e), e.message.as_str())).collect();
    assert_eq!(
        got,
        [
            (
                (2, 19, "server.shutdown_grace"),
                "expected a duration like 250ms, 10s, 1m or 1h, got the bare number `30`"
            ),
            (
                (4, 21, "server.limits.max_body_bytes"),
                "expected a size like 512, 16KiB or 10MiB, got `10 parsecs`"
            ),
            (
                (7, 11, "rate_limits.per_client.rate"),
                "expected a rate like 100/s, 6000/m or 50000/h, got `100/d`"
            ),
        ]
    );
}

#[test]
fn type_errors_say_expected_and_found() {
    let e = one_error("server:\n  limits:\n    max_connections: lots\n");
    assert_eq!(at(&e), (3, 22, "server.limits.max_connections"));
    assert_eq!(
        e.message,
        "expected a whole number, 0 or more, found the string \"lots\""
    );
    let e = one_error("routes:\n  - name: a\n");
    assert_eq!(at(&e), (2, 5, "routes[0]"));
    assert_eq!(e.message, "missing required key `match`");
}

#[test]
fn https_targets_load_and_unreadable_certificates_are_located() {
    load("upstreams:\n  u:\n    targets:\n      - url: https://127.0.0.1:9443\n").unwrap();
    let text = "server:\n  listeners:\n    - name: https\n      bind: 127.0.0.1:8443\n      tls:\n        certificates:\n          - cert: /nonexistent/a.crt\n            key: /nonexistent/a.key\n";
    let e = one_error(text);
    assert_eq!(
        at(&e),
        (7, 19, "server.listeners[0].tls.certificates[0].cert")
    );
    assert!(
        e.message.starts_with("cannot read `/nonexistent/a.crt`"),
        "{}",
        e.message
    );
}

#[test]
fn misspelt_enum_strings_get_suggestions() {
    let text = "upstreams:\n  u:\n    targets: [{ url: http://127.0.0.1:1 }]\n    balance: least_requests\n";
    let e = one_error(text);
    assert_eq!(at(&e), (4, 14, "upstreams.u.balance"));
    assert!(
        e.message.ends_with("(did you mean `least_request`?)"),
        "{}",
        e.message
    );
}

#[test]
fn errors_display_one_per_line() {
    let text = format!(
        "{UPSTREAMS}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: x\n  \
         - name: b\n    match: {{ path: /b }}\n    upstream: y\n"
    );
    let e = load_str_with_env(&text, "gw.yaml", &no_env).expect_err("two dangling upstreams");
    assert_eq!(
        e.to_string(),
        "gw.yaml:9:15: routes[0].upstream: unknown upstream `x`\n\
         gw.yaml:12:15: routes[1].upstream: unknown upstream `y`"
    );
}

#[test]
fn an_unreadable_file_names_the_file_and_the_reason() {
    let e = load_file(std::path::Path::new("/nonexistent/tollgate.yaml")).expect_err("no file");
    assert_eq!(e.0.len(), 1);
    let text = e.to_string();
    assert!(
        text.starts_with("/nonexistent/tollgate.yaml: cannot read the config file: "),
        "{text}"
    );
}

#[test]
fn load_file_reports_the_path_it_was_given() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("gw.yaml");
    std::fs::write(
        &path,
        "routes:\n  - name: a\n    match: { path: /a }\n    upstream: nope\n",
    )
    .expect("written");
    let e = load_file(&path).expect_err("dangling upstream");
    assert_eq!(e.0[0].file, path.display().to_string());
    assert_eq!((e.0[0].line, e.0[0].column), (4, 15));
}

#[test]
fn embedded_text_loads_with_the_process_environment() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/minimal.yaml"))
        .expect("config/minimal.yaml exists");
    let loaded = load_str(&text, "<demo>").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.source, "<demo>");
}

#[test]
fn outlier_settings_out_of_range_are_refused_where_they_are() {
    let text = "\
upstreams:
  users:
    targets: [{ url: http://127.0.0.1:9001 }]
    outlier:
      consecutive_5xx: 0
      consecutive_connect_errors: 0
      base_ejection: 0s
      max_ejection_percent: 101
routes:
  - { name: r, match: { path_prefix: / }, upstream: users }
";
    let all = errors(text);
    let got: Vec<(usize, &str, &str)> = all
        .iter()
        .map(|e| (e.line, e.path.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                5,
                "upstreams.users.outlier.consecutive_5xx",
                "must be at least 1"
            ),
            (
                6,
                "upstreams.users.outlier.consecutive_connect_errors",
                "must be at least 1"
            ),
            (
                7,
                "upstreams.users.outlier.base_ejection",
                "must be above zero"
            ),
            (
                8,
                "upstreams.users.outlier.max_ejection_percent",
                "a share of the targets, 0 to 100, got 101"
            ),
        ]
    );
    let e = one_error(
        &text
            .replace("base_ejection: 0s", "base_ejecton: 1s")
            .replace(
                "      consecutive_5xx: 0\n      consecutive_connect_errors: 0\n",
                "",
            )
            .replace("101", "50"),
    );
    assert!(
        e.message.contains("did you mean `base_ejection`"),
        "{}",
        e.message
    );
}

#[test]
fn a_read_buffer_must_hold_a_whole_head() {
    for (limits, got) in [
        ("read_buffer: 4KiB", "got 4KiB"),
        (
            "max_header_bytes: 64KiB\n    read_buffer: 32KiB",
            "got 32KiB",
        ),
        ("read_buffer: 1GiB", "got 1GiB"),
    ] {
        let e = one_error(&format!("server:\n  limits:\n    {limits}\n"));
        assert_eq!(e.path, "server.limits.read_buffer", "{limits}");
        assert!(
            e.message.starts_with("must be at least 8KiB"),
            "{}",
            e.message
        );
        assert!(e.message.ends_with(got), "{}", e.message);
    }
    load("server:\n  limits:\n    read_buffer: 32KiB\n").unwrap();
}
