//! Validation of `auth`, `cors` and the route policy keys: every mistake is
//! named by its key path, with a did-you-mean for dangling names.

use tollgate::config::{ConfigError, load_str_with_env};

fn errors(text: &str) -> Vec<ConfigError> {
    match load_str_with_env(text, "t.yaml", &|_| None) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0,
    }
}

/// Asserts an error at `path` whose message contains `needle`.
fn has(errs: &[ConfigError], path: &str, needle: &str) {
    assert!(
        errs.iter()
            .any(|e| e.path == path && e.message.contains(needle)),
        "no error at {path} containing {needle:?}; got {errs:#?}"
    );
}

const BASE: &str = "
upstreams:
  up: { targets: [{ url: 'http://127.0.0.1:9001' }] }
";

fn with(auth_and_cors: &str, route_extra: &str) -> String {
    format!(
        "{BASE}{auth_and_cors}
routes:
  - name: r
    match: {{ path_prefix: / }}
    upstream: up
{route_extra}"
    )
}

#[test]
fn a_complete_valid_edge_config_loads() {
    let text = with(
        "
auth:
  jwt:
    main: { algorithms: [RS256, ES256, EdDSA], jwks_url: 'https://auth.example.com/jwks', jwks_refresh: 1m, leeway: 5s,
            token_from: ['header:Authorization', 'query:t', 'cookie:s'], forward_claims: { sub: X-User }, strip_token: true }
    hs: { algorithms: [HS256], secret: abc }
  api_keys:
    p: { keys: [{ id: a, key: k1 }, { id: b, key: k2 }] }
cors:
  web: { allow_origins: ['https://app.example.com'], allow_credentials: true, max_age: 10m }",
        "    auth: ['jwt:main', 'api_key:p']
    require_claims: { scope: read, role: [a, b] }
    cors: web
    ip_allow: [10.0.0.0/8, 192.168.1.1]
    ip_deny: ['::1/128']",
    );
    if let Err(e) = load_str_with_env(&text, "t.yaml", &|_| None) {
        panic!("{e}");
    }
}

#[test]
fn dangling_names_get_did_you_mean() {
    let e = errors(&with(
        "
auth:
  jwt: { main: { algorithms: [HS256], secret: s } }
  api_keys: { partners: { keys: [{ id: a, key: k }] } }
cors: { web: { allow_origins: ['*'] } }",
        "    auth: ['jwt:mian', 'api_key:partner', 'oauth:x', 'nothing']
    cors: wbe",
    ));
    has(
        &e,
        "routes[0].auth[0]",
        "unknown JWT policy `mian` (did you mean `main`?)",
    );
    has(&e, "routes[0].auth[1]", "(did you mean `partners`?)");
    has(&e, "routes[0].auth[2]", "unknown auth kind `oauth`");
    has(
        &e,
        "routes[0].auth[3]",
        "expected jwt:<policy>, api_key:<set>, basic:<name>, introspection:<name> or external:<name>",
    );
    has(
        &e,
        "routes[0].cors",
        "unknown cors policy `wbe` (did you mean `web`?)",
    );
}

#[test]
fn jwt_policy_mistakes() {
    let e = errors(&with(
        "
auth:
  jwt:
    none: { algorithms: [none, RS265], jwks_file: j.json }
    two: { algorithms: [RS256], jwks_file: j.json, secret: s }
    zero: { algorithms: [RS256] }
    hs_jwks: { algorithms: [HS256], jwks_url: 'https://x/jwks' }
    rs_secret: { algorithms: [RS256], secret: s }
    bad: { algorithms: [HS256], secret: '', jwks_refresh: 1m, leeway: 1h, audiences: [],
           token_from: ['heder:x', 'cookie:'], forward_claims: { sub: 'bad header' } }
    url: { algorithms: [RS256], jwks_url: 'ftp://x/jwks' }",
        "",
    ));
    has(&e, "auth.jwt.none.algorithms[0]", "never accepted");
    has(&e, "auth.jwt.none.algorithms[1]", "(did you mean `RS256`?)");
    has(&e, "auth.jwt.two", "exactly one key source");
    has(&e, "auth.jwt.zero", "none is given");
    has(&e, "auth.jwt.hs_jwks.algorithms", "need a `secret`");
    has(&e, "auth.jwt.rs_secret.algorithms", "only verifies HS256");
    has(&e, "auth.jwt.bad.secret", "empty");
    has(
        &e,
        "auth.jwt.bad.jwks_refresh",
        "only applies with jwks_url",
    );
    has(&e, "auth.jwt.bad.leeway", "at most 10m");
    has(&e, "auth.jwt.bad.audiences", "empty list");
    has(&e, "auth.jwt.bad.token_from[0]", "(did you mean `header`?)");
    has(&e, "auth.jwt.bad.token_from[1]", "needs a name");
    has(
        &e,
        "auth.jwt.bad.forward_claims.sub",
        "not a valid header name",
    );
    has(&e, "auth.jwt.url.jwks_url", "http:// or https://");
}

#[test]
fn api_key_mistakes() {
    let e = errors(&with(
        "
auth:
  api_keys:
    p:
      header: 'bad header'
      keys: [{ id: a, key: k }, { id: a, key: k2 }, { id: b, key: k }, { id: c, key: '' }]
    empty: { keys: [] }",
        "",
    ));
    has(&e, "auth.api_keys.p.header", "not a valid header name");
    has(&e, "auth.api_keys.p.keys[1].id", "duplicate key id `a`");
    has(&e, "auth.api_keys.p.keys[2].key", "reuses the key");
    has(&e, "auth.api_keys.p.keys[3].key", "empty");
    has(&e, "auth.api_keys.empty.keys", "at least one key");
}

#[test]
fn cors_star_with_credentials_is_refused() {
    let e = errors(&with(
        "
cors:
  web: { allow_origins: ['*'], allow_credentials: true }
  bad: { allow_origins: ['app.example.com', 'https://x.example/path'], allow_methods: [GTE], allow_headers: ['a b'] }
  none: { allow_origins: [] }",
        "",
    ));
    has(&e, "cors.web.allow_credentials", "browsers reject");
    has(&e, "cors.bad.allow_origins[0]", "expected an origin");
    has(&e, "cors.bad.allow_origins[1]", "no path");
    has(&e, "cors.bad.allow_methods[0]", "did you mean `GET`");
    has(&e, "cors.bad.allow_headers[0]", "not a valid header name");
    has(&e, "cors.none.allow_origins", "at least one origin");
}

#[test]
fn route_policy_mistakes() {
    let e = errors(&with(
        "
auth:
  api_keys: { p: { keys: [{ id: a, key: k }] } }",
        "    auth: ['api_key:p', 'api_key:p']
    require_claims: { scope: '' }
    ip_allow: [10.0.0.0/33, nonsense]
    ip_deny: ['::1/129']",
    ));
    has(&e, "routes[0].auth[1]", "listed twice");
    has(&e, "routes[0].require_claims", "needs a JWT");
    has(&e, "routes[0].require_claims.scope", "give the value");
    has(&e, "routes[0].ip_allow[0]", "CIDR");
    has(&e, "routes[0].ip_allow[1]", "CIDR");
    has(&e, "routes[0].ip_deny[0]", "CIDR");

    let empty = errors(&with("", "    auth: []\n    ip_allow: []"));
    has(&empty, "routes[0].auth", "leave `auth` out");
    has(&empty, "routes[0].ip_allow", "leave it out");
}

#[test]
fn errors_point_at_the_line() {
    let e = errors(&with("", "    cors: nope"));
    let cors = e.iter().find(|e| e.path == "routes[0].cors").unwrap();
    assert!(cors.line > 0, "{cors:?}");
}

#[test]
fn the_shipped_auth_and_demo_examples_compile() {
    // Validation does not read files; compiling does (jwks_file must exist).
    let metrics = tollgate::metrics::Metrics::new().unwrap();
    let carry = tollgate::snapshot::carryover::Carryover::default();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for name in ["auth.yaml", "demo.yaml"] {
        let loaded = tollgate::config::load_file_with_env(&dir.join(name), &|_| None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Err(e) = tollgate::snapshot::build::compile(&loaded, &metrics, &carry) {
            panic!("{name} does not compile: {e}");
        }
    }
}
