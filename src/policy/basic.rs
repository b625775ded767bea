//! HTTP Basic authentication (`auth.basic.<name>`, RFC 7617) against an
//! htpasswd file of bcrypt or argon2 hashes, read at every (re)load.
//!
//! A hash check costs milliseconds of CPU by design, so it never runs on the
//! request's thread: it goes to the blocking pool, at most one per core at
//! once. A credential that passed is remembered for a minute and one that
//! failed for a few seconds (by SHA-256 of the pair, never the password
//! itself), so a browser sending the same header with every request pays the
//! hash once, and a client retrying a wrong password in a loop cannot make
//! the gateway hash it again and again. An unknown user is checked against
//! a dummy hash, so the answer takes as long as for a known one; bcrypt and
//! argon2 compare their results in constant time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::header::{AUTHORIZATION, HeaderValue};
use http::request::Parts;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::jwt::sha256;
use crate::config::htpasswd::{self, Entry, Scheme};
use crate::error::AuthFailure;

/// How long a verified credential is taken without hashing again.
const REMEMBER_OK: Duration = Duration::from_secs(60);
/// How long a refused one is refused without hashing again.
const REMEMBER_REFUSED: Duration = Duration::from_secs(5);
/// Credentials remembered per policy.
const REMEMBERED: usize = 10_000;

/// Checked for users the file does not list: a bcrypt hash of a random
/// password at cost 10 (a common htpasswd -B cost), made at its first use.
static DUMMY_BCRYPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let password: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    bcrypt::hash(password, 10).unwrap_or_default()
});

pub struct BasicAuth {
    pub name: Arc<str>,
    /// `Basic realm="…", charset="UTF-8"`.
    pub challenge: HeaderValue,
    users: HashMap<String, Entry>,
    /// SHA-256 of `user:password` → (the user, until when).
    verified: quick_cache::sync::Cache<[u8; 32], (Arc<str>, Instant)>,
    refused: quick_cache::sync::Cache<[u8; 32], Instant>,
    hashing: Arc<Semaphore>,
}

impl BasicAuth {
    /// The policy from the htpasswd file's text.
    pub fn compile(name: &str, text: &str, realm: Option<&str>) -> Result<BasicAuth, String> {
        let entries = htpasswd::parse(text).map_err(|(line, m)| format!("line {line}: {m}"))?;
        let realm = realm.unwrap_or(name);
        let challenge =
            HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
                .map_err(|_| format!("the realm `{realm}` cannot go in a header"))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(BasicAuth {
            name: name.into(),
            challenge,
            users: entries.into_iter().map(|e| (e.user.clone(), e)).collect(),
            verified: quick_cache::sync::Cache::new(REMEMBERED),
            refused: quick_cache::sync::Cache::new(REMEMBERED),
            hashing: Arc::new(Semaphore::new(cores)),
        })
    }

    /// Whether the file lists `user`.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The user the request's `Authorization: Basic` header proves.
    pub async fn check(&self, parts: &Parts) -> Result<Arc<str>, AuthFailure> {
        let mut values = parts.headers.get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            // None, or two (which would mean two things to two readers).
            return Err(if parts.headers.contains_key(AUTHORIZATION) {
                AuthFailure::Invalid
            } else {
                AuthFailure::Missing
            });
        };
        let Some((user, password)) = credentials(value.as_bytes()) else {
            // Another scheme (a bearer token for another method) or garbage.
            return Err(AuthFailure::Missing);
        };
        let mut pair = Vec::with_capacity(user.len() + 1 + password.len());
        pair.extend_from_slice(user.as_bytes());
        pair.push(b':');
        pair.extend_from_slice(&password);
        let digest = sha256(&pair);
        let now = Instant::now();
        if let Some((user, until)) = self.verified.get(&digest)
            && now < until
        {
            return Ok(user);
        }
        if self.refused.get(&digest).is_some_and(|until| now < until) {
            return Err(AuthFailure::Invalid);
        }
        let entry = self.users.get(&user).cloned();
        let ok = self.verify(entry.clone(), password).await;
        match entry.filter(|_| ok) {
            Some(e) => {
                let user: Arc<str> = e.user.into();
                self.verified
                    .insert(digest, (user.clone(), Instant::now() + REMEMBER_OK));
                Ok(user)
            }
            None => {
                self.refused
                    .insert(digest, Instant::now() + REMEMBER_REFUSED);
                Err(AuthFailure::Invalid)
            }
        }
    }

    /// Hashes `password` against `entry` (or the dummy) off the runtime's
    /// threads, within the policy's hashing slots.
    async fn verify(&self, entry: Option<Entry>, password: Vec<u8>) -> bool {
        let Ok(_slot) = self.hashing.clone().acquire_owned().await else {
            return false;
        };
        let task = tokio::task::spawn_blocking(move || match entry {
            Some(e) => matches(&e, &password),
            None => {
                let _ = bcrypt::verify(&password, &DUMMY_BCRYPT);
                false
            }
        });
        task.await.unwrap_or(false)
    }
}

/// Whether `password` is the one `entry` was hashed from.
fn matches(entry: &Entry, password: &[u8]) -> bool {
    match entry.scheme {
        Scheme::Bcrypt => bcrypt::verify(password, &entry.hash).unwrap_or(false),
        Scheme::Argon2 => {
            use argon2::PasswordVerifier as _;
            argon2::PasswordHash::new(&entry.hash).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password, &h)
                    .is_ok()
            })
        }
    }
}

/// `Basic <base64(user:password)>` → (user, password); the scheme name is
/// case-insensitive (RFC 7617 §2). The user is UTF-8 and has no colon.
fn credentials(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    fn parts(values: &[&str]) -> Parts {
        let mut b = http::Request::get("/");
        for v in values {
            b = b.header(AUTHORIZATION, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn credentials_are_read_case_insensitively_and_split_at_the_first_colon() {
        assert_eq!(
            credentials(basic("alice:pa:ss").as_bytes()),
            Some(("alice".into(), b"pa:ss".to_vec()))
        );
        let lower = basic("bob:x").replacen("Basic", "bAsIc", 1);
        assert_eq!(credentials(lower.as_bytes()).unwrap().0, "bob");
        for bad in ["Bearer abc", "Basic !!!", "Basic", &basic("nocolon")] {
            assert_eq!(credentials(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn the_dummy_hash_is_a_valid_bcrypt_hash() {
        assert_eq!(bcrypt::verify("anything", &DUMMY_BCRYPT).ok(), Some(false));
    }

    #[tokio::test]
    async fn bcrypt_and_argon2_users_pass_and_others_do_not() {
        use argon2::PasswordHasher as _;
        let b = bcrypt::hash("s3cret", 4).unwrap();
        let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
        // Small parameters: the default's 19 MiB would show in the RSS of
        // other unit tests running beside this one.
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"h0rse", &salt)
            .unwrap()
            .to_string();
        let p = BasicAuth::compile("ops", &format!("alice:{b}\nbob:{a}\n"), None).unwrap();
        assert_eq!(p.challenge, "Basic realm=\"ops\", charset=\"UTF-8\"");
        let check = |v: &[&str]| {
            let parts = parts(v);
            let p = &p;
            async move { p.check(&parts).await }
        };
        assert_eq!(
            check(&[&basic("alice:s3cret")]).await.as_deref(),
            Ok("alice")
        );
        // Remembered: the same answer again, without hashing.
        assert_eq!(
            check(&[&basic("alice:s3cret")]).await.as_deref(),
            Ok("alice")
        );
        assert_eq!(check(&[&basic("bob:h0rse")]).await.as_deref(), Ok("bob"));
        for wrong in ["alice:S3cret", "bob:s3cret", "carol:s3cret", "alice:"] {
            assert_eq!(
                check(&[&basic(wrong)]).await,
                Err(AuthFailure::Invalid),
                "{wrong}"
            );
        }
        // A wrong one stays wrong when remembered.
        assert_eq!(
            check(&[&basic("alice:S3cret")]).await,
            Err(AuthFailure::Invalid)
        );
        assert_eq!(check(&[]).await, Err(AuthFailure::Missing));
        assert_eq!(check(&["Bearer x.y.z"]).await, Err(AuthFailure::Missing));
        let two = [basic("alice:s3cret"), basic("bob:h0rse")];
        assert_eq!(check(&[&two[0], &two[1]]).await, Err(AuthFailure::Invalid));
    }
}
