//! API keys (docs/guide/auth.md, `auth.api_keys`): a header carries the key; it is compared
//! in constant time against every configured key (as SHA-256 digests, so the
//! comparison length never depends on the guess). Only the key's id goes on:
//! into the `PolicyContext` (logs), and upstream as `X-Consumer-Id`.

use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;
use subtle::ConstantTimeEq;

use super::jwt::sha256;
use crate::config::schema;
use crate::error::AuthFailure;

pub struct ApiKeySet {
    pub name: Arc<str>,
    pub header: HeaderName,
    /// (digest of the key, id)
    keys: Vec<([u8; 32], Arc<str>)>,
}

impl ApiKeySet {
    pub fn compile(name: &str, cfg: &schema::ApiKeySet) -> Result<ApiKeySet, String> {
        let header = HeaderName::from_bytes(cfg.header.as_bytes())
            .map_err(|_| format!("`{}` is not a valid header name", cfg.header))?;
        Ok(ApiKeySet {
            name: name.into(),
            header,
            keys: cfg
                .keys
                .iter()
                .map(|k| (sha256(k.key.as_bytes()), Arc::from(k.id.as_str())))
                .collect(),
        })
    }

    /// The id of the key the request presents.
    pub fn check(&self, parts: &Parts) -> Result<Arc<str>, AuthFailure> {
        let presented = parts
            .headers
            .get(&self.header)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .ok_or(AuthFailure::Missing)?;
        let digest = sha256(presented);
        // Every key is compared, match or not, so timing says nothing about
        // which key (or how much of one) matched.
        let mut found = None;
        for (key, id) in &self.keys {
            if bool::from(key.ct_eq(&digest)) {
                found = Some(id.clone());
            }
        }
        found.ok_or(AuthFailure::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_wrong_and_missing_keys() {
        let cfg: schema::ApiKeySet =
            serde_yaml::from_str("keys: [{ id: acme, key: s3cret }, { id: globex, key: other }]")
                .unwrap();
        let set = ApiKeySet::compile("p", &cfg).unwrap();
        let req = |v: Option<&str>| {
            let mut b = http::Request::get("/");
            if let Some(v) = v {
                b = b.header("x-api-key", v);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(set.check(&req(Some("other"))).as_deref(), Ok("globex"));
        assert_eq!(set.check(&req(Some("s3cre"))), Err(AuthFailure::Invalid));
        assert_eq!(set.check(&req(None)), Err(AuthFailure::Missing));
    }
}
