//! `${VAR}`, `${VAR:-default}` and `${file:PATH}` substitution inside string
//! values, so secrets and per-host settings can come from the environment or
//! from mounted files (Kubernetes Secrets, Docker secrets, Vault Agent). `$${`
//! writes a literal `${`. The environment is a parameter so tests never touch
//! the process environment.

use std::path::PathBuf;

/// Looks a variable up; `std::env::var(..).ok()` in production.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A secret file larger than this is surely not a secret.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Where `${..}` values come from, and what the file references read.
pub(crate) struct Sources<'a> {
    pub env: Env<'a>,
    /// A file name from the config -> the path to read (relative names are
    /// against the config file's directory).
    pub resolve: &'a dyn Fn(&str) -> PathBuf,
    /// Every value read through `${file:..}`: redacted wherever the config,
    /// or an error about it, is shown.
    pub secrets: Vec<String>,
    /// The files they were read from: watched with the config, re-read on reload.
    pub files: Vec<PathBuf>,
}

/// Replace every `${..}` in `text`. The error is a finished message that never
/// holds a value read from a file.
pub(crate) fn substitute(text: &str, sources: &mut Sources<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| {
                format!("unterminated `${{` in `{text}`; write `$${{` for a literal `${{`")
            })?;
            let body = &after[..end];
            match body.strip_prefix("file:") {
                Some(name) => out.push_str(&read_secret(name, sources)?),
                None => out.push_str(&expand(body, sources.env)?),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The text of a `${file:NAME}`, without one trailing newline (`echo` and
/// editors add one; `kubectl create secret --from-literal` does not).
fn read_secret(name: &str, sources: &mut Sources<'_>) -> Result<String, String> {
    if name.is_empty() {
        return Err("`${file:}` needs a file name: `${file:/run/secrets/name}`".into());
    }
    let path = (sources.resolve)(name);
    let shown = path.display();
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("`${{file:{name}}}`: cannot read {shown}: {e}"))?
        .len();
    if size > MAX_SECRET_FILE {
        return Err(format!(
            "`${{file:{name}}}`: {shown} is {size} bytes; a secret file holds at most 64KiB"
        ));
    }
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("`${{file:{name}}}`: cannot read {shown}: {e}"))?;
    let mut text = String::from_utf8(bytes)
        .map_err(|_| format!("`${{file:{name}}}`: {shown} is not UTF-8 text"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("`${{file:{name}}}`: {shown} is empty"));
    }
    if !sources.secrets.contains(&text) {
        sources.secrets.push(text.clone());
    }
    if !sources.files.contains(&path) {
        sources.files.push(path);
    }
    Ok(text)
}

/// The value of one `${..}` body: `NAME` or `NAME:-default`.
fn expand(body: &str, env: Env<'_>) -> Result<String, String> {
    let (name, default) = match body.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (body, None),
    };
    if !is_var_name(name) {
        return Err(format!(
            "`${{{body}}}`: `{name}` is not an environment variable name (letters, digits and _, not starting with a digit)"
        ));
    }
    match (env(name), default) {
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_owned()),
        (None, None) => Err(format!(
            "environment variable `{name}` is not set; use ${{{name}:-default}} to give a default"
        )),
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn substitute(text: &str, env: Env<'_>) -> Result<String, String> {
        let resolve = |n: &str| PathBuf::from(n);
        let mut sources = Sources {
            env,
            resolve: &resolve,
            secrets: Vec::new(),
            files: Vec::new(),
        };
        super::substitute(text, &mut sources)
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables_anywhere_in_the_string() {
        assert_eq!(
            substitute("http://${HOST}:80/x", &env).unwrap(),
            "http://db.internal:80/x"
        );
        assert_eq!(
            substitute("${HOST}${HOST}", &env).unwrap(),
            "db.internaldb.internal"
        );
        assert_eq!(substitute("[${EMPTY}]", &env).unwrap(), "[]");
    }

    #[test]
    fn defaults_apply_only_when_unset() {
        assert_eq!(substitute("${PORT:-8080}", &env).unwrap(), "8080");
        assert_eq!(substitute("${HOST:-x}", &env).unwrap(), "db.internal");
        assert_eq!(substitute("${PORT:-}", &env).unwrap(), "");
    }

    #[test]
    fn dollars_that_are_not_references_stay() {
        assert_eq!(
            substitute("$${HOST} costs $5", &env).unwrap(),
            "${HOST} costs $5"
        );
        assert_eq!(substitute("a$", &env).unwrap(), "a$");
    }

    #[test]
    fn unset_variables_and_bad_syntax_are_errors() {
        let e = substitute("${NOPE}", &env).unwrap_err();
        assert_eq!(
            e,
            "environment variable `NOPE` is not set; use ${NOPE:-default} to give a default"
        );
        assert!(
            substitute("${HOST", &env)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            substitute("${1X}", &env)
                .unwrap_err()
                .contains("not an environment variable name")
        );
    }

    #[test]
    fn file_references_read_the_file_once_trimmed_and_remember_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret-value\n").unwrap();
        std::fs::write(dir.path().join("crlf"), "other\r\n\n").unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let base = dir.path().to_path_buf();
        let resolve = move |n: &str| base.join(n);
        let mut sources = Sources {
            env: &env,
            resolve: &resolve,
            secrets: Vec::new(),
            files: Vec::new(),
        };
        let got = super::substitute("redis://:${file:pw}@${HOST}/${file:pw}", &mut sources);
        assert_eq!(
            got.unwrap(),
            "redis://:s3cret-value@db.internal/s3cret-value"
        );
        // One newline goes, not two.
        assert_eq!(
            super::substitute("${file:crlf}", &mut sources).unwrap(),
            "other\r\n"
        );
        assert_eq!(sources.secrets, ["s3cret-value", "other\r\n"]);
        assert_eq!(sources.files.len(), 2);

        let e = super::substitute("${file:empty}", &mut sources).unwrap_err();
        assert!(e.ends_with("is empty"), "{e}");
        let e = super::substitute("${file:missing}", &mut sources).unwrap_err();
        assert!(e.contains("cannot read") && e.contains("missing"), "{e}");
        let e = super::substitute("${file:}", &mut sources).unwrap_err();
        assert!(e.contains("needs a file name"), "{e}");
        std::fs::write(dir.path().join("big"), vec![b'x'; 70 * 1024]).unwrap();
        let e = super::substitute("${file:big}", &mut sources).unwrap_err();
        assert!(e.contains("at most 64KiB"), "{e}");
        std::fs::write(dir.path().join("bin"), [0xff, 0xfe]).unwrap();
        let e = super::substitute("${file:bin}", &mut sources).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
    }
}
