//! The files a config names (certificates, keys, CAs), read and checked.

use std::path::PathBuf;

use super::Issue;
use crate::config::positions::{child, item};
use crate::config::schema::Config;
use crate::config::suggest;

/// Reads the files the config names (certificates, keys, CAs) and checks they
/// parse and belong together; `resolve` places a name from the file. Run after
/// `validate` passed, at every load, so a reload with a broken certificate fails
/// and the old one keeps serving.
pub fn files(config: &Config, resolve: &dyn Fn(&str) -> PathBuf) -> Vec<Issue> {
    use crate::tls;
    let mut issues = Vec::new();
    let provider = tls::provider();
    for (i, l) in config.server.listeners.iter().enumerate() {
        let Some(t) = &l.tls else { continue };
        let at = child(&item("server.listeners", i), "tls");
        for (j, c) in t.certificates.iter().enumerate() {
            if let Err(e) = tls::load_cert(&resolve(&c.cert), &resolve(&c.key), &provider) {
                let entry = item(&child(&at, "certificates"), j);
                issues.push((child(&entry, &e.key), e.message));
            }
        }
        if let Some(auth) = &t.client_auth
            && let Err(m) = tls::read_roots(&resolve(&auth.ca))
        {
            issues.push((child(&child(&at, "client_auth"), "ca"), m));
        }
    }
    let mut basic_users = Vec::new();
    for (name, b) in &config.auth.basic {
        let path = resolve(&b.htpasswd);
        let at = child(&child("auth.basic", name), "htpasswd");
        let problem = match std::fs::read_to_string(&path) {
            Err(e) => Some(format!("cannot read {}: {e}", path.display())),
            Ok(text) => match crate::config::htpasswd::parse(&text) {
                Ok(users) if users.is_empty() => Some(format!("{} lists no user", path.display())),
                Ok(users) => {
                    basic_users.extend(users.into_iter().map(|u| u.user));
                    None
                }
                Err((line, m)) => Some(format!("{}:{line}: {m}", path.display())),
            },
        };
        if let Some(m) = problem {
            issues.push((at, m));
        }
    }
    // Only once every file was read: a broken file says so itself.
    if issues.is_empty() && !config.auth.basic.is_empty() {
        for (name, c) in &config.consumers {
            for (i, user) in c.basic_users.iter().enumerate() {
                if !basic_users.contains(user) {
                    let hint = suggest::hint(user, basic_users.iter().map(String::as_str));
                    issues.push((
                        item(&child(&child("consumers", name), "basic_users"), i),
                        format!("no htpasswd file of `auth.basic` lists the user `{user}`{hint}"),
                    ));
                }
            }
        }
    }
    for (name, u) in &config.upstreams {
        if let Some(ca) = u.tls.as_ref().and_then(|t| t.ca.as_deref())
            && let Err(m) = tls::read_roots(&resolve(ca))
        {
            let at = child(&child(&child("upstreams", name), "tls"), "ca");
            issues.push((at, m));
        }
    }
    issues
}
