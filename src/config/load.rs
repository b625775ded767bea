//! Reading a config file: YAML text -> `schema::Config`, with `${ENV}` substitution
//! and file:line:column positions for every error. Each section, route and named
//! entry is deserialized on its own so one call reports every broken part, and
//! the semantic checks of `validate` run once the shapes are right.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::env::{self, Env};
use super::positions::{self, Position, PositionIndex};
use super::schema::{Auth, Config, Server};
use super::suggest;
use super::validate;

/// A config that parsed and passed every check.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// After `${ENV}` substitution, fully validated.
    pub config: Config,
    /// The file name used in messages (`<demo>` for embedded text).
    pub source: String,
    /// 16 hex chars: xxh3-64 of the config as JSON, so it changes when the
    /// environment changes a value even if the file did not.
    pub version: String,
    /// Files the config names (certificates, CAs, JWKS), resolved against the
    /// config file's directory: reload watches them too.
    pub files: Vec<PathBuf>,
    /// The config file's directory, against which relative file names in it
    /// resolve; `None` for text that did not come from a file (then they stay
    /// relative to the working directory).
    pub base_dir: Option<PathBuf>,
    /// Values read through `${file:..}`: `/config`, `/reloads` and errors show
    /// `<redacted>` wherever one appears.
    pub secrets: Vec<String>,
}

impl LoadedConfig {
    /// A file name from the config, resolved against the config's directory.
    pub fn resolve(&self, name: &str) -> PathBuf {
        resolve(self.base_dir.as_deref(), name)
    }
}

fn resolve(base_dir: Option<&Path>, name: &str) -> PathBuf {
    match base_dir {
        Some(dir) if Path::new(name).is_relative() => dir.join(name),
        _ => PathBuf::from(name),
    }
}

/// One problem in a config, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem is the file itself (it could not be read).
    pub line: usize,
    /// 1-based; 0 together with `line`.
    pub column: usize,
    /// Zero-based key path like `routes[1].match.path_prefix`; empty for the
    /// whole document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if self.line != 0 {
            write!(f, "{}:{}:", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, " {}:", self.path)?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Load config text that did not come from a file (`source` names it in
/// messages). Relative file paths in it stay relative to the working directory.
pub fn load_str(text: &str, source: &str) -> Result<LoadedConfig, ConfigErrors> {
    load_str_with_env(text, source, &process_env)
}

/// `load_str` with `${VAR}` looked up through `env` instead of the process
/// environment.
pub fn load_str_with_env(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigErrors> {
    load_text(text, source, None, env)
}

/// Read and load a config file. An unreadable file is one error naming the file
/// and the OS reason.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    load_file_with_env(path, &process_env)
}

/// `load_file` with `${VAR}` looked up through `env`.
pub fn load_file_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: source.clone(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    load_text(&text, &source, Some(dir), env)
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A problem located by key path, waiting for a line and column.
struct Problem {
    path: String,
    /// Point at the key (an unknown key) rather than at the value.
    at_key: bool,
    message: String,
}

impl Problem {
    fn value(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            at_key: false,
            message: message.into(),
        }
    }
}

fn load_text(
    text: &str,
    source: &str,
    base_dir: Option<&Path>,
    env: Env<'_>,
) -> Result<LoadedConfig, ConfigErrors> {
    let mut value: Value = serde_yaml::from_str(text).map_err(|e| syntax_error(&e, source))?;
    let mut problems = Vec::new();
    if let Err(e) = value.apply_merge() {
        problems.push(Problem::value("", clean(&e.to_string())));
    }
    // A second parse of the text, for line:column: needed only to report an
    // error or to retype a substituted value, so most loads never build it
    // (it was a seventh of a 10,000-route reload).
    let index = std::cell::OnceCell::new();
    let index = || index.get_or_init(|| PositionIndex::build(text));

    let before_env = problems.len();
    let plain = |path: &str| index().node(path).is_some_and(|n| n.plain_scalar);
    let resolve_name = |name: &str| resolve(base_dir, name);
    let mut sources = env::Sources {
        env,
        resolve: &resolve_name,
        secrets: Vec::new(),
        files: Vec::new(),
    };
    substitute_env(&mut value, "", &plain, &mut sources, &mut problems);
    let env::Sources {
        secrets,
        files: secret_files,
        ..
    } = sources;
    // A value whose variable is unset would also fail to deserialize; say it once.
    let env_failures: Vec<String> = problems[before_env..]
        .iter()
        .map(|p| p.path.clone())
        .collect();

    let mut shape_problems = Vec::new();
    let config = deserialize(value, &mut shape_problems);
    shape_problems.retain(|p| !env_failures.iter().any(|f| p.path.starts_with(f.as_str())));
    problems.append(&mut shape_problems);
    if let Some(config) = &config {
        if problems.is_empty() {
            problems.extend(
                validate::validate(config)
                    .into_iter()
                    .map(|(path, message)| Problem::value(path, message)),
            );
        }
        // Certificates, keys and CAs are read only once the rest is sound.
        if problems.is_empty() {
            problems.extend(
                validate::files(config, &|name| resolve(base_dir, name))
                    .into_iter()
                    .map(|(path, message)| Problem::value(path, message)),
            );
        }
    }

    match config {
        Some(config) if problems.is_empty() => {
            let mut files = named_files(&config, base_dir);
            for f in secret_files {
                if !files.contains(&f) {
                    files.push(f);
                }
            }
            let json = serde_json::to_vec(&config).unwrap_or_default();
            Ok(LoadedConfig {
                version: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json)),
                config,
                source: source.to_owned(),
                files,
                base_dir: base_dir.map(Path::to_path_buf),
                secrets,
            })
        }
        _ => {
            // A value read from a file may be quoted back by a check
            // ("got ..."): never in an error.
            for p in &mut problems {
                p.message = super::redact::scrub(&p.message, &secrets);
            }
            Err(locate(problems, index(), source))
        }
    }
}

/// Give each problem its line and column, in file order.
fn locate(problems: Vec<Problem>, index: &PositionIndex, source: &str) -> ConfigErrors {
    let mut errors: Vec<ConfigError> = problems
        .into_iter()
        .map(|p| {
            let pos = if p.at_key {
                index.key_position(&p.path)
            } else {
                index.error_position(&p.path)
            };
            ConfigError {
                file: source.to_owned(),
                line: pos.line,
                column: pos.column,
                path: p.path,
                message: p.message,
            }
        })
        .collect();
    errors.sort_by_key(|e| (e.line, e.column));
    ConfigErrors(errors)
}

fn syntax_error(e: &serde_yaml::Error, source: &str) -> ConfigErrors {
    let pos = e.location().map_or(Position::START, |l| Position {
        line: l.line(),
        column: l.column(),
    });
    ConfigErrors(vec![ConfigError {
        file: source.to_owned(),
        line: pos.line,
        column: pos.column,
        path: String::new(),
        message: format!("invalid YAML: {}", clean(&e.to_string())),
    }])
}

/// Drop the positions serde_yaml writes into its messages (the error carries
/// them already) and the parser-internal context that follows them.
fn clean(message: &str) -> String {
    let first = message.split(", while parsing").next().unwrap_or(message);
    let mut out = String::new();
    let mut rest = first;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let n = digits(after);
        match after[n..].strip_prefix(" column ") {
            Some(col) if n > 0 => rest = &col[digits(col)..],
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.trim().to_owned()
}

/// Replace `${..}` in every string value. A plain (unquoted) scalar is re-read as
/// YAML afterwards so a substituted number or boolean gets its type back.
fn substitute_env(
    value: &mut Value,
    path: &str,
    plain: &dyn Fn(&str) -> bool,
    env: &mut env::Sources<'_>,
    problems: &mut Vec<Problem>,
) {
    match value {
        Value::String(s) if s.contains('$') => match env::substitute(s, env) {
            Ok(new) if new == *s => {}
            Ok(new) => {
                *value = match retyped(&new) {
                    Some(typed) if plain(path) => typed,
                    _ => Value::String(new),
                };
            }
            Err(message) => problems.push(Problem::value(path, message)),
        },
        Value::Sequence(items) => {
            for (i, v) in items
                .iter_mut()
                .enumerate()
                .filter(|(_, v)| may_substitute(v))
            {
                substitute_env(v, &positions::item(path, i), plain, env, problems);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut().filter(|(_, v)| may_substitute(v)) {
                let key = k.as_str().unwrap_or("?");
                substitute_env(v, &positions::child(path, key), plain, env, problems);
            }
        }
        Value::Tagged(tagged) => substitute_env(&mut tagged.value, path, plain, env, problems),
        _ => {}
    }
}

/// Whether `substitute_env` has anything to do in `v` (saves building the
/// key path of every plain value).
fn may_substitute(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('$'),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => true,
        _ => false,
    }
}

/// Numbers and booleans regain their type; anything else stays the text it is
/// (re-reading `a: b` or `#x` as YAML would change its meaning).
fn retyped(text: &str) -> Option<Value> {
    match serde_yaml::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => Some(v),
        _ => None,
    }
}

/// Deserialize the document part by part, so that every broken section, route
/// and named entry reports its own error.
fn deserialize(value: Value, problems: &mut Vec<Problem>) -> Option<Config> {
    let map = match value {
        Value::Mapping(map) => map,
        Value::Null => {
            problems.push(Problem::value(
                "",
                "the config is empty; expected a mapping with server, upstreams and routes",
            ));
            return None;
        }
        other => {
            problems.push(Problem::value(
                "",
                format!(
                    "expected a mapping with server, upstreams and routes, found {}",
                    describe_value(&other)
                ),
            ));
            return None;
        }
    };

    let mut config = Config::default();
    let mut ok = true;
    for (key, value) in map {
        let Some(name) = key.as_str().map(str::to_owned) else {
            problems.push(Problem::value("", "top-level keys must be strings"));
            ok = false;
            continue;
        };
        let done = match name.as_str() {
            "routes" => items(value, "routes", problems).map(|v| config.routes = v),
            "upstreams" => entries(value, "upstreams", problems).map(|v| config.upstreams = v),
            "rate_limits" => {
                entries(value, "rate_limits", problems).map(|v| config.rate_limits = v)
            }
            "cors" => entries(value, "cors", problems).map(|v| config.cors = v),
            "idempotency" => {
                entries(value, "idempotency", problems).map(|v| config.idempotency = v)
            }
            "consumers" => entries(value, "consumers", problems).map(|v| config.consumers = v),
            "caches" => entries(value, "caches", problems).map(|v| config.caches = v),
            "consumer_groups" => {
                entries(value, "consumer_groups", problems).map(|v| config.consumer_groups = v)
            }
            "auth" => auth(value, problems).map(|v| config.auth = v),
            "server" => server(value, problems).map(|v| config.server = v),
            _ => {
                // `redis`, or an unknown key: serde's own error names the
                // expected keys, so let it judge a one-key document.
                single::<Config>(&name, value, "", problems).map(|partial| {
                    if name == "redis" {
                        config.redis = partial.redis;
                    } else if name == "resolvers" {
                        config.resolvers = partial.resolvers;
                    } else if name == "tracing" {
                        config.tracing = partial.tracing;
                    }
                })
            }
        };
        ok &= done.is_some();
    }
    ok.then_some(config)
}

/// `server`, key by key and listener by listener.
fn server(value: Value, problems: &mut Vec<Problem>) -> Option<Server> {
    let map = match value {
        Value::Mapping(map) => map,
        other => return one(other, "server", problems),
    };
    let mut server = Server::default();
    let mut ok = true;
    for (key, value) in map {
        let done = match key.as_str() {
            Some("listeners") => {
                items(value, "server.listeners", problems).map(|v| server.listeners = v)
            }
            // Every other key has a default, so a one-key `server` deserializes
            // and the parsed field is copied over.
            Some(name) => single::<Server>(name, value, "server", problems).map(|p| match name {
                "admin" => server.admin = p.admin,
                "limits" => server.limits = p.limits,
                "shutdown_grace" => server.shutdown_grace = p.shutdown_grace,
                "trusted_proxies" => server.trusted_proxies = p.trusted_proxies,
                "path_normalization" => server.path_normalization = p.path_normalization,
                "consumer_header" => server.consumer_header = p.consumer_header,
                _ => {}
            }),
            None => {
                problems.push(Problem::value("server", "keys must be strings"));
                None
            }
        };
        ok &= done.is_some();
    }
    ok.then_some(server)
}

fn auth(value: Value, problems: &mut Vec<Problem>) -> Option<Auth> {
    let map = match value {
        Value::Mapping(map) => map,
        Value::Null => return Some(Auth::default()),
        other => return one(other, "auth", problems),
    };
    let mut auth = Auth::default();
    let mut ok = true;
    for (key, value) in map {
        let done = match key.as_str() {
            Some("jwt") => entries(value, "auth.jwt", problems).map(|v| auth.jwt = v),
            Some("api_keys") => {
                entries(value, "auth.api_keys", problems).map(|v| auth.api_keys = v)
            }
            Some("basic") => entries(value, "auth.basic", problems).map(|v| auth.basic = v),
            Some("introspection") => {
                entries(value, "auth.introspection", problems).map(|v| auth.introspection = v)
            }
            Some("external") => {
                entries(value, "auth.external", problems).map(|v| auth.external = v)
            }
            // An unknown key (serde names the known ones); a new known key
            // needs its own arm above, or its value is lost here.
            Some(other) => single::<Auth>(other, value, "auth", problems).map(drop),
            None => {
                problems.push(Problem::value("auth", "keys must be strings"));
                None
            }
        };
        ok &= done.is_some();
    }
    ok.then_some(auth)
}

/// A list whose items are deserialized one by one.
fn items<T: DeserializeOwned>(
    value: Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<Vec<T>> {
    match value {
        Value::Sequence(seq) => {
            let parsed: Vec<Option<T>> = seq
                .into_iter()
                .enumerate()
                .map(|(i, v)| one(v, &positions::item(path, i), problems))
                .collect();
            parsed.into_iter().collect()
        }
        Value::Null => Some(Vec::new()),
        other => one(other, path, problems),
    }
}

/// A mapping of names to entries, each deserialized on its own.
fn entries<T: DeserializeOwned>(
    value: Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<BTreeMap<String, T>> {
    match value {
        Value::Mapping(map) => {
            let mut out = BTreeMap::new();
            let mut ok = true;
            for (key, value) in map {
                let Some(name) = key.as_str() else {
                    problems.push(Problem::value(path, "names must be strings"));
                    ok = false;
                    continue;
                };
                match one(value, &positions::child(path, name), problems) {
                    Some(v) => {
                        out.insert(name.to_owned(), v);
                    }
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        Value::Null => Some(BTreeMap::new()),
        other => one(other, path, problems),
    }
}

/// Deserialize `{key: value}` as a `T` at `path`: lets serde reject an unknown
/// `key` with its list of the expected ones.
fn single<T: DeserializeOwned>(
    key: &str,
    value: Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut map = Mapping::new();
    map.insert(Value::String(key.to_owned()), value);
    one(Value::Mapping(map), path, problems)
}

/// Deserialize one value at `path`, recording the first error inside it.
fn one<T: DeserializeOwned>(value: Value, path: &str, problems: &mut Vec<Problem>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let mut full = path.to_owned();
            for segment in e.path().iter() {
                full = match segment {
                    serde_path_to_error::Segment::Seq { index } => positions::item(&full, *index),
                    serde_path_to_error::Segment::Map { key } => positions::child(&full, key),
                    serde_path_to_error::Segment::Enum { variant } => {
                        positions::child(&full, variant)
                    }
                    serde_path_to_error::Segment::Unknown => positions::child(&full, "?"),
                };
            }
            problems.push(explain(full, &e.into_inner().to_string()));
            None
        }
    }
}

/// Turn serde's message into a short, human one.
fn explain(path: String, raw: &str) -> Problem {
    let message = clean(raw);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = backticked(expected);
        let mut text = format!("unknown key `{field}`");
        match expected.as_slice() {
            [] => text.push_str("; this section takes no keys"),
            [only] => text.push_str(&format!("; expected {only}")),
            many => text.push_str(&format!("; expected one of {}", many.join(", "))),
        }
        text.push_str(&suggest::hint(field, expected.iter().copied()));
        // serde_path_to_error names the unknown key in the path already.
        let at_key = positions::parent(&path).is_some();
        return Problem {
            path,
            at_key,
            message: text,
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        return Problem::value(path, format!("missing required key `{field}`"));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            return Problem::value(
                path,
                format!(
                    "expected {}, found {}",
                    expected_name(expected),
                    found_name(found)
                ),
            );
        }
    }
    if message.starts_with("data did not match any variant of untagged enum StringOrList") {
        return Problem::value(path, "expected a string or a list of strings");
    }
    Problem::value(path, message)
}

/// The names between backticks in serde's "expected one of `a`, `b`".
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// serde's Rust-flavoured expectations in the file's vocabulary.
fn expected_name(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" => format!(
            "a whole number from 0 to {}",
            match expected {
                "u8" => u64::from(u8::MAX),
                "u16" => u64::from(u16::MAX),
                _ => u64::from(u32::MAX),
            }
        ),
        "u64" | "usize" => "a whole number, 0 or more".into(),
        "i64" | "i32" => "a whole number".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        e if e.starts_with("struct ") => "a mapping".into(),
        e => e.into(),
    }
}

fn found_name(found: &str) -> String {
    match found {
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit value" => "nothing (null)".into(),
        f => match f.strip_prefix("string ") {
            Some(s) => format!("the string {s}"),
            // `integer `5``, `boolean `true``, `floating point `1.5``: the value says enough.
            None => backticked(f)
                .first()
                .map_or_else(|| f.to_owned(), |v| (*v).to_owned()),
        },
    }
}

fn describe_value(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Files the config names, resolved against the config file's directory.
fn named_files(config: &Config, base_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut names: Vec<&str> = Vec::new();
    for listener in &config.server.listeners {
        if let Some(tls) = &listener.tls {
            for c in &tls.certificates {
                names.extend([c.cert.as_str(), c.key.as_str()]);
            }
            if let Some(client) = &tls.client_auth {
                names.push(&client.ca);
            }
        }
    }
    for upstream in config.upstreams.values() {
        if let Some(ca) = upstream.tls.as_ref().and_then(|t| t.ca.as_deref()) {
            names.push(ca);
        }
    }
    for policy in config.auth.jwt.values() {
        if let Some(file) = &policy.jwks_file {
            names.push(file);
        }
    }
    for basic in config.auth.basic.values() {
        names.push(&basic.htpasswd);
    }
    names.into_iter().map(|n| resolve(base_dir, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_positions_are_stripped_from_messages() {
        assert_eq!(
            clean(
                "did not find expected key at line 3 column 5, while parsing a block mapping at line 1 column 1"
            ),
            "did not find expected key"
        );
        assert_eq!(clean("bad at line x"), "bad at line x");
    }

    #[test]
    fn unknown_fields_get_a_suggestion_at_the_key() {
        let p = explain(
            "routes[0].match.pat".into(),
            "unknown field `pat`, expected one of `hosts`, `path`, `path_prefix`",
        );
        assert!(p.at_key);
        assert_eq!(
            p.message,
            "unknown key `pat`; expected one of hosts, path, path_prefix (did you mean `path`?)"
        );
    }

    #[test]
    fn named_files_resolve_against_the_config_directory() {
        let config: Config = serde_yaml::from_str(
            "server:\n  listeners:\n    - name: https\n      bind: 127.0.0.1:8443\n      tls:\n        certificates: [{ cert: certs/a.crt, key: /abs/a.key }]\nauth:\n  jwt:\n    main: { algorithms: [RS256], jwks_file: jwks.json }\n",
        )
        .unwrap();
        let files = named_files(&config, Some(Path::new("/etc/tollgate")));
        assert_eq!(
            files,
            [
                PathBuf::from("/etc/tollgate/certs/a.crt"),
                PathBuf::from("/abs/a.key"),
                PathBuf::from("/etc/tollgate/jwks.json"),
            ]
        );
        assert_eq!(named_files(&config, None)[0], PathBuf::from("certs/a.crt"));
    }

    #[test]
    fn type_errors_say_expected_then_found() {
        let p = explain("a".into(), "invalid type: string \"x\", expected u32");
        assert_eq!(
            p.message,
            "expected a whole number from 0 to 4294967295, found the string \"x\""
        );
        let p = explain("a".into(), "invalid type: sequence, expected a string");
        assert_eq!(p.message, "expected a string, found a list");
    }
}
