//! The cost of the JWT check per request, per algorithm family, with and
//! without the verified-token cache. Without it every request redoes the
//! signature math (RSA verify, ECDSA verify); with it a repeated token costs a
//! SHA-256 of the token and a sharded map lookup.

use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tollgate::config::schema;
use tollgate::policy::jwt::JwtPolicy;

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt")
}

fn policy(alg: &str, cached: bool) -> JwtPolicy {
    let keys = if alg.starts_with("HS") {
        format!("secret: {SECRET}")
    } else {
        format!("jwks_file: {}", fixtures().join("jwks.json").display())
    };
    let yaml =
        format!("algorithms: [{alg}]\n{keys}\nissuer: https://issuer.test/\naudiences: [api]\n");
    let cfg: schema::JwtPolicy = serde_yaml::from_str(&yaml).expect("policy yaml");
    let p = JwtPolicy::compile("bench", &cfg, Path::new(""), None).expect("policy");
    if cached { p } else { p.without_cache() }
}

fn token(alg: Algorithm) -> String {
    let read = |f: &str| std::fs::read(fixtures().join(f)).expect("fixture");
    let (key, kid) = match alg {
        Algorithm::HS256 => (EncodingKey::from_secret(SECRET.as_bytes()), None),
        Algorithm::RS256 => (
            EncodingKey::from_rsa_pem(&read("rsa.pem")).expect("rsa"),
            Some("rsa-1"),
        ),
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&read("ec256.pem")).expect("ec"),
            Some("ec-1"),
        ),
        _ => (
            EncodingKey::from_ed_pem(&read("ed25519.pem")).expect("ed"),
            Some("ed-1"),
        ),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "sub": "user-7", "iss": "https://issuer.test/", "aud": "api",
        "iat": now, "exp": now + 3600, "scope": "users:read users:write",
    });
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

/// `verify` never waits for a static key set: poll it once.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("verify waited on a static key set"),
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt_verify");
    for (name, alg) in [
        ("HS256", Algorithm::HS256),
        ("RS256", Algorithm::RS256),
        ("ES256", Algorithm::ES256),
        ("EdDSA", Algorithm::EdDSA),
    ] {
        let t = token(alg);
        for cached in [false, true] {
            let p = policy(name, cached);
            assert!(ready(p.verify(&t)).is_ok(), "{name} token verifies");
            let label = if cached { "cached" } else { "uncached" };
            group.bench_with_input(BenchmarkId::new(label, name), &t, |b, t| {
                b.iter(|| ready(p.verify(black_box(t))).is_ok())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
