//! The JWT matrix: every attack and edge case, one test each, for each
//! algorithm family (HS256, RS256, ES256, EdDSA). Every rejection must be a 401
//! with `WWW-Authenticate`, and no rejected request may reach the upstream.

use std::time::{Duration, Instant};

use jsonwebtoken::Header;
use serde_json::{Value, json};

use crate::support::auth::*;
use crate::support::*;

/// A gateway with one JWT-protected route for `alg`'s family, in front of an
/// echo upstream that counts what reaches it.
struct Setup {
    gw: Gateway,
    up: Upstream,
    alg: Algorithm,
}

impl Setup {
    async fn new(alg: Algorithm) -> Setup {
        Setup::with_policy(alg, "").await
    }

    async fn with_policy(alg: Algorithm, extra: &str) -> Setup {
        let up = Upstream::echo("up").await;
        let keys = match alg {
            Algorithm::HS256 => format!("secret: {SECRET}"),
            _ => format!("jwks_file: {}", fixture("jwks.json").display()),
        };
        let algs = match alg {
            Algorithm::RS256 => "[RS256, PS256]".to_string(),
            other => format!("[{other:?}]"),
        };
        let yaml = format!(
            "{}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
auth:
  jwt:
    main:
      algorithms: {algs}
      {keys}
      issuer: '{ISSUER}'
      audiences: [{AUDIENCE}]
      leeway: 30s
      {extra}
routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: up
    auth: [jwt:main]
",
            server_block("limits: { max_header_bytes: 512KiB }")
        );
        let gw = Gateway::start(&yaml, &[("UP", up.host_port())]).await;
        Setup { gw, up, alg }
    }

    async fn call(&self, token: &str) -> Resp {
        let auth = format!("Bearer {token}");
        get_with(&self.gw.url("/x"), &[("authorization", auth.as_str())]).await
    }

    async fn accepted(&self, token: &str) {
        let r = self.call(token).await;
        assert_eq!(r.status, 200, "expected acceptance: {}", r.text());
        assert_eq!(self.up.hits(), 1);
    }

    /// 401 invalid_token, counted with `reason`, and the upstream untouched.
    async fn rejected(&self, token: &str, reason: &str) {
        let r = self.call(token).await;
        r.assert_error(401, "unauthorized");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(self.up.hits(), 0, "a rejected token reached the upstream");
        let m = self.gw.metrics().await;
        let series = format!(r#"tollgate_auth_failures_total{{route="api",reason="{reason}"}}"#);
        assert_eq!(metric(&m, &series), Some(1.0), "{series}");
    }

    fn token(&self, claims: &Value) -> String {
        mint(self.alg, claims)
    }
}

fn claims_with(f: impl FnOnce(&mut Value)) -> Value {
    let mut c = good_claims();
    f(&mut c);
    c
}

/// The test key's public PEM for `alg`'s family (for key confusion).
fn public_pem(alg: Algorithm) -> Vec<u8> {
    fixture_bytes(match alg {
        Algorithm::ES256 => "ec256.pub.pem",
        Algorithm::EdDSA => "ed25519.pub.pem",
        _ => "rsa.pub.pem",
    })
}

macro_rules! family {
    ($family:ident, $alg:expr) => {
        mod $family {
            use super::*;

            #[tokio::test]
            async fn valid() {
                let s = Setup::new($alg).await;
                s.accepted(&s.token(&good_claims())).await;
            }

            #[tokio::test]
            async fn expired_beyond_leeway() {
                let s = Setup::new($alg).await;
                let t = s.token(&claims_with(|c| c["exp"] = json!(now() - 120)));
                s.rejected(&t, "expired").await;
            }

            #[tokio::test]
            async fn expired_within_leeway() {
                let s = Setup::new($alg).await;
                s.accepted(&s.token(&claims_with(|c| c["exp"] = json!(now() - 10))))
                    .await;
            }

            #[tokio::test]
            async fn nbf_in_the_future() {
                let s = Setup::new($alg).await;
                let t = s.token(&claims_with(|c| c["nbf"] = json!(now() + 120)));
                s.rejected(&t, "invalid").await;
            }

            #[tokio::test]
            async fn nbf_within_leeway() {
                let s = Setup::new($alg).await;
                s.accepted(&s.token(&claims_with(|c| c["nbf"] = json!(now() + 10))))
                    .await;
            }

            #[tokio::test]
            async fn wrong_issuer() {
                let s = Setup::new($alg).await;
                let t = s.token(&claims_with(|c| c["iss"] = json!("https://evil.test/")));
                s.rejected(&t, "invalid").await;
            }

            #[tokio::test]
            async fn missing_issuer() {
                let s = Setup::new($alg).await;
                let t = s.token(&claims_with(|c| {
                    c.as_object_mut().unwrap().remove("iss");
                }));
                s.rejected(&t, "invalid").await;
            }

            #[tokio::test]
            async fn wrong_audience() {
                let s = Setup::new($alg).await;
                let t = s.token(&claims_with(|c| c["aud"] = json!("other-api")));
                s.rejected(&t, "invalid").await;
            }

            #[tokio::test]
            async fn missing_audience() {
                let s = Setup::new($alg).await;
                let t = s.token(&claims_with(|c| {
                    c.as_object_mut().unwrap().remove("aud");
                }));
                s.rejected(&t, "invalid").await;
            }

            #[tokio::test]
            async fn missing_exp() {
                let s = Setup::new($alg).await;
                let t = s.token(&claims_with(|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }));
                s.rejected(&t, "invalid").await;
            }

            #[tokio::test]
            async fn alg_none() {
                let s = Setup::new($alg).await;
                let header = json!({ "alg": "none", "typ": "JWT", "kid": kid($alg) });
                s.rejected(&forge(&header, &good_claims(), b""), "invalid")
                    .await;
                // Also with a signature part that is not empty.
                let s2 = Setup::new($alg).await;
                s2.rejected(&forge(&header, &good_claims(), b"x"), "invalid")
                    .await;
            }

            #[tokio::test]
            async fn hmac_signed_with_the_public_key() {
                // Key confusion: the public key PEM used as an HMAC secret.
                let s = Setup::new($alg).await;
                let mut h = Header::new(Algorithm::HS256);
                h.kid = kid($alg).map(str::to_string);
                let key = jsonwebtoken::EncodingKey::from_secret(&public_pem($alg));
                s.rejected(&mint_header(&h, &good_claims(), &key), "invalid")
                    .await;
            }

            #[tokio::test]
            async fn ecdsa_zero_signature() {
                // CVE-2022-21449 ("psychic signatures"): r = s = 0.
                let s = Setup::new($alg).await;
                let header = json!({ "alg": "ES256", "typ": "JWT", "kid": kid($alg) });
                s.rejected(&forge(&header, &good_claims(), &[0u8; 64]), "invalid")
                    .await;
            }

            #[tokio::test]
            async fn tampered_payload() {
                let s = Setup::new($alg).await;
                let t = s.token(&good_claims());
                let parts: Vec<&str> = t.split('.').collect();
                let evil = claims_with(|c| c["sub"] = json!("admin"));
                let forged = format!(
                    "{}.{}.{}",
                    parts[0],
                    b64(evil.to_string().as_bytes()),
                    parts[2]
                );
                s.rejected(&forged, "invalid").await;
            }

            #[tokio::test]
            async fn unknown_kid() {
                let s = Setup::new($alg).await;
                // Signed by a key the policy does not know, under a kid it
                // does not know either.
                let t = mint_with($alg, Some("unknown-kid"), &good_claims(), true);
                s.rejected(&t, "invalid").await;
            }

            #[tokio::test]
            async fn jku_and_x5u_are_never_fetched() {
                let attacker = JwksServer::start(json!({ "keys": [] })).await;
                let s = Setup::new($alg).await;
                let mut h = Header::new($alg);
                h.kid = Some("evil".into());
                h.jku = Some(attacker.url());
                h.x5u = Some(attacker.url());
                let t = mint_header(&h, &good_claims(), &encoding_key($alg, true));
                s.rejected(&t, "invalid").await;
                assert_eq!(attacker.hits(), 0, "the gateway fetched a jku/x5u URL");
            }

            #[tokio::test]
            async fn huge_token_is_rejected_cheaply() {
                let s = Setup::new($alg).await;
                let t = s.token(&claims_with(|c| c["pad"] = json!("a".repeat(100 * 1024))));
                assert!(t.len() > 100 * 1024);
                let started = Instant::now();
                s.rejected(&t, "invalid").await;
                assert!(started.elapsed() < Duration::from_secs(2));
            }

            #[tokio::test]
            async fn malformed_base64() {
                let s = Setup::new($alg).await;
                s.rejected("eyJhbGciOi!!!.@@@.###", "invalid").await;
            }

            #[tokio::test]
            async fn missing_token_has_no_error_attribute() {
                let s = Setup::new($alg).await;
                let r = get_with(&s.gw.url("/x"), &[]).await;
                r.assert_error(401, "unauthorized");
                assert_eq!(r.header("www-authenticate"), Some("Bearer"));
                assert_eq!(s.up.hits(), 0);
                let m = s.gw.metrics().await;
                let series = r#"tollgate_auth_failures_total{route="api",reason="missing"}"#;
                assert_eq!(metric(&m, series), Some(1.0));
            }
        }
    };
}

family!(hs256, Algorithm::HS256);
family!(rs256, Algorithm::RS256);
family!(es256, Algorithm::ES256);
family!(eddsa, Algorithm::EdDSA);

#[tokio::test]
async fn ps256_valid() {
    let s = Setup::new(Algorithm::RS256).await;
    s.accepted(&mint(Algorithm::PS256, &good_claims())).await;
}

#[tokio::test]
async fn an_algorithm_outside_the_allow_list_is_refused() {
    // RS512 is signed with the right key but not listed.
    let s = Setup::new(Algorithm::RS256).await;
    s.rejected(&mint(Algorithm::RS512, &good_claims()), "invalid")
        .await;
}

#[tokio::test]
async fn verified_claims_reach_the_upstream_and_the_log() {
    let s = Setup::with_policy(
        Algorithm::ES256,
        "forward_claims: { sub: X-User-Id, scope: X-User-Scopes, roles: X-Roles }",
    )
    .await;
    let t = mint(Algorithm::ES256, &good_claims());
    let auth = format!("Bearer {t}");
    // A client cannot forge the forwarded identity headers.
    let r = get_with(
        &s.gw.url("/x"),
        &[("authorization", auth.as_str()), ("x-user-id", "root")],
    )
    .await;
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert_eq!(h["x-user-id"], "user-7");
    assert_eq!(h["x-user-scopes"], "users:read users:write");
    assert_eq!(h["x-roles"], "dev support");
    // Without strip_token the token goes on.
    assert_eq!(h["authorization"], auth.as_str());
    // The second call is answered from the verified-token cache: same result.
    let again = s.call(&t).await;
    assert_eq!(again.json()["headers"]["x-user-id"], "user-7");
    let log = s.gw.wait_log_lines(2).await;
    assert!(!s.gw.log_text().contains(&t), "the token was logged");
    assert_eq!(log[0]["status"], 200);
}
