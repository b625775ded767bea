//! htpasswd files (`auth.basic.<name>.htpasswd`): one `user:hash` per line,
//! blank lines and `#` comments skipped. Only hashes that are safe to keep are
//! accepted: bcrypt (`htpasswd -B`: `$2a$`, `$2b$`, `$2y$`) and argon2 in its
//! PHC string form (`$argon2id$…`). MD5-crypt (`$apr1$`), SHA-1 (`{SHA}`),
//! crypt(3) and plain text are refused, naming the line.

use std::collections::HashSet;

/// The algorithm of one entry's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bcrypt,
    Argon2,
}

/// One user of an htpasswd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub user: String,
    pub hash: String,
    pub scheme: Scheme,
}

/// The entries of `text`, or the first bad line (1-based) and what is wrong.
pub fn parse(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err((n, "expected user:hash".into()));
        };
        if user.is_empty() {
            return Err((n, "the user name is empty".into()));
        }
        if !seen.insert(user) {
            return Err((n, format!("user `{user}` is listed twice")));
        }
        let scheme = scheme(hash).map_err(|m| (n, format!("user `{user}`: {m}")))?;
        entries.push(Entry {
            user: user.to_string(),
            hash: hash.to_string(),
            scheme,
        });
    }
    Ok(entries)
}

fn scheme(hash: &str) -> Result<Scheme, String> {
    if let Some(rest) = ["$2a$", "$2b$", "$2y$"]
        .iter()
        .find_map(|p| hash.strip_prefix(p))
    {
        // $2b$ + two-digit cost + $ + 22 salt and 31 hash characters.
        let (cost, body) = rest.split_at_checked(2).ok_or_else(bad_bcrypt)?;
        let cost: u32 = cost.parse().map_err(|_| bad_bcrypt())?;
        let body = body.strip_prefix('$').ok_or_else(bad_bcrypt)?;
        let alphabet = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'/';
        if !(4..=31).contains(&cost) || body.len() != 53 || !body.bytes().all(alphabet) {
            return Err(bad_bcrypt());
        }
        return Ok(Scheme::Bcrypt);
    }
    if hash.starts_with("$argon2") {
        return match argon2::PasswordHash::new(hash) {
            Ok(h) if h.salt.is_some() && h.hash.is_some() => Ok(Scheme::Argon2),
            Ok(_) => Err("not a valid argon2 hash (no salt or no hash)".into()),
            Err(e) => Err(format!("not a valid argon2 hash ({e})")),
        };
    }
    let what = if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
        "an MD5-crypt hash"
    } else if hash.starts_with("{SHA}") {
        "a SHA-1 hash"
    } else if hash.starts_with('$') {
        "a hash of an unsupported kind"
    } else {
        "a crypt(3) hash or a plain password"
    };
    Err(format!(
        "{what}, which is too weak to keep: hash it with bcrypt (htpasswd -B) or argon2"
    ))
}

fn bad_bcrypt() -> String {
    "not a valid bcrypt hash (expected $2y$<cost>$<53 characters>)".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCRYPT: &str = "$2y$05$abcdefghijklmnopqrstuuMtu2/uXtl1p1Np9AVDa3zHdtZ5XI8hK";

    #[test]
    fn bcrypt_and_argon2_lines_parse() {
        let argon = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
        let text = format!("# users\n\nalice:{BCRYPT}\n  bob:{argon}  \n");
        let got = parse(&text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].user.as_str(), got[0].scheme),
            ("alice", Scheme::Bcrypt)
        );
        assert_eq!(
            (got[1].user.as_str(), got[1].scheme),
            ("bob", Scheme::Argon2)
        );
    }

    #[test]
    fn weak_and_malformed_lines_are_refused_with_their_number() {
        for (text, line, want) in [
            ("a:$apr1$xyz$abc", 1, "MD5-crypt"),
            ("\na:{SHA}abc=", 2, "SHA-1"),
            ("a:secret", 1, "plain password"),
            ("a:$5$rounds$x", 1, "unsupported kind"),
            ("a:$2y$05$short", 1, "not a valid bcrypt"),
            (
                "a:$argon2id$v=19$m=19456,t=2,p=1$!!!$###",
                1,
                "not a valid argon2",
            ),
            ("a:$argon2id$broken", 1, "not a valid argon2"),
            ("no colon", 1, "user:hash"),
            (":$2y$05$abc", 1, "empty"),
        ] {
            let (n, m) = parse(text).unwrap_err();
            assert_eq!(n, line, "{text}");
            assert!(m.contains(want), "{text}: {m}");
        }
        let twice = format!("a:{BCRYPT}\na:{BCRYPT}");
        assert_eq!(parse(&twice).unwrap_err().0, 2);
    }
}
