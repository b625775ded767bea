//! OIDC discovery (issue 23 item 1): a JWT policy named by its issuer finds
//! its keys and algorithms in `<issuer>/.well-known/openid-configuration`,
//! served here by an OpenID-Provider-shaped pair of servers in the test
//! process (the discovery document and the JWKS it points at). A document
//! that is not JSON, lacks `jwks_uri`, or names another issuer never lets a
//! request through.

use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::auth::*;
use crate::support::*;

/// An OpenID Provider: its discovery document (at any path of `doc`'s
/// address) and the JWKS that document points at.
struct Provider {
    issuer: String,
    doc: JwksServer,
    jwks: JwksServer,
}

impl Provider {
    async fn start(jwks: Value, algorithms: Value) -> Provider {
        let jwks = JwksServer::start(jwks).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/realms/main", listener.local_addr().unwrap());
        let doc = JwksServer::serve(listener, Value::Null);
        let p = Provider { issuer, doc, jwks };
        p.doc.set(p.document(&p.jwks.url(), algorithms));
        p
    }

    fn document(&self, jwks_uri: &str, algorithms: Value) -> Value {
        json!({
            "issuer": self.issuer,
            "authorization_endpoint": format!("{}/protocol/openid-connect/auth", self.issuer),
            "token_endpoint": format!("{}/protocol/openid-connect/token", self.issuer),
            "jwks_uri": jwks_uri,
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algorithms,
        })
    }

    fn token(&self, alg: Algorithm, kid: &str) -> String {
        let mut claims = good_claims();
        claims["iss"] = json!(self.issuer);
        claims["jti"] = json!(fastrand::u64(..).to_string());
        mint_with(alg, Some(kid), &claims, false)
    }
}

fn config(issuer: &str, extra: &str) -> String {
    format!(
        "{}
upstreams:
  up: {{ targets: [{{ url: 'http://${{UP}}' }}] }}
auth:
  jwt:
    main:
      issuer: '{issuer}'
      audiences: [{AUDIENCE}]
      discovery: true
{extra}
routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: up
    auth: [jwt:main]
",
        server_block("")
    )
}

async fn call(gw: &Gateway, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    get_with(&gw.url("/x"), &[("authorization", auth.as_str())]).await
}

#[tokio::test]
async fn discovery_finds_the_keys_and_follows_the_provider() {
    let p = Provider::start(rsa_jwks("rsa-1"), json!(["RS256"])).await;
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(&p.issuer, ""), &[("UP", up.host_port())]).await;
    assert!(p.doc.hits() >= 1 && p.jwks.hits() >= 1);

    assert_eq!(
        call(&gw, &p.token(Algorithm::RS256, "rsa-1")).await.status,
        200
    );
    get_with(&gw.url("/x"), &[])
        .await
        .assert_error(401, "unauthorized");
    // Signed by another key under the right kid: refused.
    let mut claims = good_claims();
    claims["iss"] = json!(p.issuer);
    let forged = mint_with(Algorithm::RS256, Some("rsa-1"), &claims, true);
    call(&gw, &forged).await.assert_error(401, "unauthorized");
    // A token from another issuer: refused.
    let other = mint_with(Algorithm::RS256, Some("rsa-1"), &good_claims(), false);
    call(&gw, &other).await.assert_error(401, "unauthorized");

    // The provider rotates to a new JWKS at a new address: a token with the
    // new kid makes the gateway read the document again, then that JWKS.
    let next = JwksServer::start(rsa_jwks("rsa-2")).await;
    p.doc.set(p.document(&next.url(), json!(["RS256"])));
    let docs_before = p.doc.hits();
    assert_eq!(
        call(&gw, &p.token(Algorithm::RS256, "rsa-2")).await.status,
        200
    );
    assert!(p.doc.hits() > docs_before);
    assert!(next.hits() >= 1);
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            r#"tollgate_jwks_refreshes_total{policy="main",result="success"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_providers_algorithms_are_the_allow_list() {
    // The test JWKS has RSA and EC keys; the provider says it signs with ES256.
    let p = Provider::start(test_jwks(), json!(["ES256", "HS256", "none"])).await;
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config(&p.issuer, ""), &[("UP", up.host_port())]).await;
    assert_eq!(
        call(&gw, &p.token(Algorithm::ES256, "ec-1")).await.status,
        200
    );
    call(&gw, &p.token(Algorithm::RS256, "rsa-1"))
        .await
        .assert_error(401, "unauthorized");
    gw.shutdown().await;

    // A list of the policy's own narrows it further.
    let p = Provider::start(test_jwks(), json!(["RS256", "ES256"])).await;
    let gw = Gateway::start(
        &config(&p.issuer, "      algorithms: [RS256]"),
        &[("UP", up.host_port())],
    )
    .await;
    assert_eq!(
        call(&gw, &p.token(Algorithm::RS256, "rsa-1")).await.status,
        200
    );
    call(&gw, &p.token(Algorithm::ES256, "ec-1"))
        .await
        .assert_error(401, "unauthorized");
    gw.shutdown().await;
}

/// What a case does to a working provider.
type Spoil = Box<dyn Fn(&Provider)>;

#[tokio::test]
async fn a_bad_discovery_document_never_lets_a_request_through() {
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "another issuer",
            Box::new(|p: &Provider| {
                let mut d = p.document(&p.jwks.url(), json!(["RS256"]));
                d["issuer"] = json!(format!("{}/", p.issuer));
                p.doc.set(d);
            }),
        ),
        (
            "no jwks_uri",
            Box::new(|p: &Provider| {
                let mut d = p.document(&p.jwks.url(), json!(["RS256"]));
                d.as_object_mut().unwrap().remove("jwks_uri");
                p.doc.set(d);
            }),
        ),
        // A 200 whose body is not JSON.
        ("not JSON", Box::new(|p: &Provider| p.doc.fail_with(200))),
        ("a JSON list", Box::new(|p: &Provider| p.doc.set(json!([])))),
        (
            "only algorithms without public keys",
            Box::new(|p: &Provider| {
                p.doc
                    .set(p.document(&p.jwks.url(), json!(["HS256", "none"])))
            }),
        ),
        (
            "the document is gone",
            Box::new(|p: &Provider| p.doc.fail_with(404)),
        ),
    ];
    for (case, spoil) in cases {
        let up = Upstream::echo("up").await;
        let p = Provider::start(rsa_jwks("rsa-1"), json!(["RS256"])).await;
        spoil(&p);
        let gw = Gateway::start_unready(
            &config(&p.issuer, "      jwks_refresh: 200ms"),
            &[("UP", up.host_port())],
        )
        .await;
        wait_until(format!("{case}: a failed fetch counted"), async || {
            let m = gw.metrics().await;
            match metric(
                &m,
                r#"tollgate_jwks_refreshes_total{policy="main",result="failure"}"#,
            ) {
                Some(n) if n >= 1.0 => Ok(()),
                _ => Err(String::new()),
            }
        })
        .await;
        let ready = get(&gw.admin_url("/readyz")).await.unwrap();
        assert_eq!(ready.status, 503, "{case}: {}", ready.text());
        assert!(ready.text().contains("waiting for JWKS"), "{case}");
        // Never a 200, and not the client's fault: 503.
        call(&gw, &p.token(Algorithm::RS256, "rsa-1"))
            .await
            .assert_error(503, "auth_unavailable");
        assert_eq!(up.hits(), 0, "{case}: a request reached the upstream");

        // The provider repairs its document: the next refresh loads the keys.
        p.doc.fail_with(0);
        p.doc.set(p.document(&p.jwks.url(), json!(["RS256"])));
        gw.wait_ready().await;
        assert_eq!(
            call(&gw, &p.token(Algorithm::RS256, "rsa-1")).await.status,
            200,
            "{case}"
        );
        gw.shutdown().await;
    }
}

#[test]
fn discovery_needs_an_issuer_url_and_no_other_key_source() {
    let cases = [
        (
            "      discovery: true\n",
            "auth.jwt.main.issuer: `discovery: true` needs the issuer's URL",
        ),
        (
            "      issuer: not-a-url\n      discovery: true\n",
            "auth.jwt.main.issuer: `discovery: true` needs the issuer's URL",
        ),
        (
            "      issuer: https://login.example.com\n      discovery: true\n      jwks_url: https://login.example.com/keys\n",
            "auth.jwt.main.discovery: the keys come from the discovery document; remove jwks_url",
        ),
        (
            "      issuer: https://login.example.com\n      jwks_url: https://login.example.com/keys\n",
            "auth.jwt.main.algorithms: list at least one algorithm (or set `discovery: true`",
        ),
        (
            "      issuer: https://login.example.com\n      discovery: true\n      algorithms: [HS256]\n",
            "HS256/HS384/HS512 need a `secret`",
        ),
    ];
    for (policy, want) in cases {
        let yaml = format!(
            "auth:\n  jwt:\n    main:\n{policy}routes:\n  - name: r\n    match: {{ path: / }}\n    respond: {{ status: 200 }}\n    auth: [jwt:main]\n"
        );
        assert_refused(&yaml, want);
    }
}
