//! The config as it may be shown: `GET /config`, the dashboard and the reload
//! history see it with every credential replaced by `<redacted>`.

use serde_json::Value;

use super::schema::Config;

pub const REDACTED: &str = "<redacted>";

/// Header names whose configured values are credentials.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

/// The config as JSON with its secrets replaced: every `secret`, the `key` of
/// API keys, the admin token, passwords in URLs (`redis://user:pass@host`),
/// and configured values of credential headers.
///
/// `secrets` are the values read through `${file:..}`: wherever one appears,
/// in any string, it reads `<redacted>` too.
pub fn redacted(config: &Config, secrets: &[String]) -> Value {
    let mut v = serde_json::to_value(config).unwrap_or(Value::Null);
    redact_tree(&mut v, secrets);
    v
}

/// A configured header value as it may be shown: `<redacted>` for credential
/// headers, secrets from files scrubbed from the others.
pub fn header_value(name: &str, value: &str, secrets: &[String]) -> String {
    if SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        REDACTED.to_owned()
    } else {
        scrub(value, secrets)
    }
}

/// `text` with every occurrence of each secret replaced by `<redacted>`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

/// Redacts a config-shaped JSON tree in place: a whole config, or one with
/// only some of its entries at their usual places.
pub fn redact_tree(v: &mut Value, secrets: &[String]) {
    if !secrets.is_empty() {
        scrub_strings(v, secrets);
    }
    redact(v);
    if let Some(token) = v.pointer_mut("/server/admin/token")
        && !token.is_null()
    {
        *token = Value::from(REDACTED);
    }
    // A collector's headers are its credentials, whatever their names.
    if let Some(headers) = v
        .pointer_mut("/tracing/otlp_headers")
        .and_then(Value::as_object_mut)
    {
        for value in headers.values_mut() {
            *value = Value::from(REDACTED);
        }
    }
    if let Some(sets) = v
        .pointer_mut("/auth/api_keys")
        .and_then(Value::as_object_mut)
    {
        for set in sets.values_mut() {
            if let Some(keys) = set.get_mut("keys").and_then(Value::as_array_mut) {
                for k in keys {
                    if let Some(key) = k.get_mut("key") {
                        *key = Value::from(REDACTED);
                    }
                }
            }
        }
    }
}

fn scrub_strings(v: &mut Value, secrets: &[String]) {
    match v {
        Value::String(s) => {
            let clean = scrub(s, secrets);
            if clean != *s {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| scrub_strings(i, secrets)),
        Value::Object(map) => map.values_mut().for_each(|i| scrub_strings(i, secrets)),
        _ => {}
    }
}

fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let secret = ((k == "secret" || k == "client_secret") && !child.is_null())
                    || (SECRET_HEADERS.contains(&k.to_ascii_lowercase().as_str())
                        && child.is_string());
                if secret {
                    *child = Value::from(REDACTED);
                } else {
                    redact(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => {
            if let Some(clean) = redact_url_password(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

/// `scheme://user:pass@host...` -> `scheme://user:<redacted>@host...`.
fn redact_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let at = authority.rfind('@')?;
    let userinfo = &authority[..at];
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:{REDACTED}@{}", &rest[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url_password("redis://u:hunter2@db:6379/0").as_deref(),
            Some("redis://u:<redacted>@db:6379/0")
        );
        assert_eq!(redact_url_password("redis://db:6379"), None);
        assert_eq!(redact_url_password("http://a/b@c"), None);
    }

    #[test]
    fn no_secret_survives_in_the_config_view() {
        let yaml = "
auth:
  jwt:
    main: { issuer: i, audiences: [a], algorithms: [HS256], secret: 'jwt-s3cret-value' }
  api_keys:
    partners:
      header: X-API-Key
      keys: [{ id: acme, key: 'api-k3y-value' }]
redis: { url: 'redis://user:redis-pa55word@db:6379/0' }
server: { admin: { bind: '127.0.0.1:0', token: 'admin-t0ken-value' } }
routes:
  - name: r
    match: { path: / }
    respond: { status: 200 }
    request_headers: { set: { Authorization: 'Basic dXNlcjpoZWFkZXItc2VjcmV0' } }
";
        let config: Config = serde_yaml::from_str(yaml).unwrap();
        let text = redacted(&config, &[]).to_string();
        for secret in [
            "jwt-s3cret-value",
            "api-k3y-value",
            "redis-pa55word",
            "dXNlcjpoZWFkZXItc2VjcmV0",
            "admin-t0ken-value",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("acme"), "the key id stays visible");
        assert!(text.contains("redis://user:<redacted>@db:6379/0"));
    }
}
