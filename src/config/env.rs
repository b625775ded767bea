//! `${VAR}` and `${VAR:-default}` substitution inside string values, so secrets
//! and per-host settings can come from the environment. `$${` writes a literal `${`.
//! The environment is a parameter so tests never touch the process environment.

/// Looks a variable up; `std::env::var(..).ok()` in production.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Replace every `${..}` in `text`. The error is a finished message.
pub(crate) fn substitute(text: &str, env: Env<'_>) -> Result<String, String> {
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
            out.push_str(&expand(&after[..end], env)?);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
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
}
