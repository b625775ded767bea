//! JWT verification against a straightforward reference check of the
//! documented rules (docs/guide/auth.md, "What a token must pass"), on three
//! fixed policies: an HMAC secret with an issuer and audiences, a JWKS
//! (P-256, Ed25519 restricted to EdDSA, RSA) without them, and the same JWKS
//! with them. The first input byte picks the policy and the mode:
//!
//! - raw: the rest is the token text;
//! - signed: the rest is a header and a payload (any bytes), encoded and
//!   signed by a key and algorithm the input picks, perhaps then damaged;
//! - built: header and claims are composed from meaningful choices (right and
//!   wrong `alg`, `kid`, `crit`, expired or future `exp`/`nbf`, right, wrong
//!   and smuggled `iss`/`aud`), signed as above.
//!
//! In every mode the verifier never accepts a token the reference rejects
//! (size, `alg` in the allow-list, no `crit`, a key of the algorithm's family
//! and `kid`, the signature, `exp`/`nbf` with leeway, `iss` one string equal
//! to the issuer, `aud` containing an audience) and reports `expired` only for
//! a token with a good signature and a past `exp`. Built tokens are also
//! accepted whenever the reference accepts them. Times within two seconds of
//! a limit are not judged.
//!
//! cargo +nightly fuzz run jwt -- -max_total_time=60

#![no_main]

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use aws_lc_rs::{hmac, rsa};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tollgate::config::schema;
use tollgate::error::AuthFailure;
use tollgate::policy::jwt::{JwtError, JwtPolicy, MAX_TOKEN_BYTES};

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123";
const ISSUER: &str = "https://issuer.test/";
const AUDIENCES: &[&str] = &["api", "web"];
/// Times this close to a limit are not judged: the verifier reads the clock
/// a moment after the reference.
const MARGIN: f64 = 2.0;

struct Signers {
    ec: EcdsaKeyPair,
    ed: Ed25519KeyPair,
    rsa: rsa::KeyPair,
    rng: SystemRandom,
}

/// A verification key as the reference sees it.
struct RefKey {
    kid: &'static str,
    /// The JWK's own `alg`, restricting the key to it.
    alg: Option<&'static str>,
    kind: KeyKind,
}

enum KeyKind {
    Hmac(&'static [u8]),
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
    Rsa(Vec<u8>),
}

struct Policy {
    verifier: JwtPolicy,
    algorithms: &'static [&'static str],
    issuer: Option<&'static str>,
    audiences: Option<&'static [&'static str]>,
    leeway: f64,
    keys: Vec<RefKey>,
}

struct World {
    signers: Signers,
    policies: Vec<Policy>,
    runtime: tokio::runtime::Runtime,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let rng = SystemRandom::new();
    let ec_doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .expect("a P-256 key");
    let ec = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, ec_doc.as_ref())
        .expect("a P-256 key");
    let ed = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("an Ed25519 key");
    let rsa = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).expect("an RSA key");

    let point = ec.public_key().as_ref().to_vec();
    let (x, y) = point[1..].split_at(32);
    let n = rsa
        .public_key()
        .modulus()
        .big_endian_without_leading_zero()
        .to_vec();
    let e = rsa
        .public_key()
        .exponent()
        .big_endian_without_leading_zero()
        .to_vec();
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "ec1", "use": "sig", "x": B64.encode(x), "y": B64.encode(y)},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "alg": "EdDSA", "x": B64.encode(ed.public_key().as_ref())},
        {"kty": "RSA", "kid": "rsa1", "n": B64.encode(&n), "e": B64.encode(&e)},
    ]});
    let dir = std::env::temp_dir().join(format!("tollgate-fuzz-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).expect("the JWKS written");

    let public_keys = || {
        vec![
            RefKey {
                kid: "ec1",
                alg: None,
                kind: KeyKind::P256(point.clone()),
            },
            RefKey {
                kid: "ed1",
                alg: Some("EdDSA"),
                kind: KeyKind::Ed25519(ed.public_key().as_ref().to_vec()),
            },
            RefKey {
                kid: "rsa1",
                alg: None,
                kind: KeyKind::Rsa(rsa.public_key().as_ref().to_vec()),
            },
        ]
    };
    let compile = |name: &str, cfg: Value| {
        let cfg: schema::JwtPolicy = serde_json::from_value(cfg).expect("a policy");
        JwtPolicy::compile(name, &cfg, &dir, None).expect("the policy compiles")
    };
    // Listing algorithms the keys cannot serve is deliberate: the family
    // checks must refuse them, whatever the config validator would say.
    const PK_ALGS: &[&str] = &["HS256", "ES256", "ES384", "EdDSA", "RS256", "PS256"];
    let policies = vec![
        Policy {
            verifier: compile(
                "hs",
                json!({"secret": std::str::from_utf8(SECRET).expect("text"),
                       "algorithms": ["HS256", "HS384", "RS256"],
                       "issuer": ISSUER, "audiences": AUDIENCES}),
            ),
            algorithms: &["HS256", "HS384", "RS256"],
            issuer: Some(ISSUER),
            audiences: Some(AUDIENCES),
            leeway: 30.0,
            keys: vec![RefKey {
                kid: "",
                alg: None,
                kind: KeyKind::Hmac(SECRET),
            }],
        },
        Policy {
            verifier: compile(
                "pk",
                json!({"jwks_file": "jwks.json", "algorithms": PK_ALGS, "leeway": "5s"}),
            ),
            algorithms: PK_ALGS,
            issuer: None,
            audiences: None,
            leeway: 5.0,
            keys: public_keys(),
        },
        Policy {
            verifier: compile(
                "pk-claims",
                json!({"jwks_file": "jwks.json", "algorithms": PK_ALGS,
                       "issuer": ISSUER, "audiences": ["api"]}),
            )
            .without_cache(),
            algorithms: PK_ALGS,
            issuer: Some(ISSUER),
            audiences: Some(&["api"]),
            leeway: 30.0,
            keys: public_keys(),
        },
    ];
    World {
        signers: Signers { ec, ed, rsa, rng },
        policies,
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
    }
});

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// ---- The reference check. ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Reject(&'static str),
    /// Only a clock read a moment later could tell.
    Unsure,
}

/// The reference's view of a token: its verdict, whether the signature was
/// found good, and whether `exp` has passed (`None`: too close to tell).
struct Judged {
    verdict: Verdict,
    signed: bool,
    expired: Option<bool>,
}

fn fits(key: &RefKey, alg: &str) -> bool {
    if key.alg.is_some_and(|a| a != alg) {
        return false;
    }
    match key.kind {
        KeyKind::Hmac(_) => matches!(alg, "HS256" | "HS384" | "HS512"),
        KeyKind::P256(_) => alg == "ES256",
        KeyKind::Ed25519(_) => alg == "EdDSA",
        KeyKind::Rsa(_) => matches!(
            alg,
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512"
        ),
    }
}

fn signature_ok(key: &RefKey, alg: &str, message: &[u8], sig: &[u8]) -> bool {
    let public = |alg: &'static dyn signature::VerificationAlgorithm, k: &[u8]| {
        UnparsedPublicKey::new(alg, k).verify(message, sig).is_ok()
    };
    match (&key.kind, alg) {
        (KeyKind::Hmac(secret), _) => {
            let h = match alg {
                "HS256" => hmac::HMAC_SHA256,
                "HS384" => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            hmac::verify(&hmac::Key::new(h, secret), message, sig).is_ok()
        }
        (KeyKind::P256(k), _) => public(&signature::ECDSA_P256_SHA256_FIXED, k),
        (KeyKind::Ed25519(k), _) => public(&signature::ED25519, k),
        (KeyKind::Rsa(k), "RS256") => public(&signature::RSA_PKCS1_2048_8192_SHA256, k),
        (KeyKind::Rsa(k), "RS384") => public(&signature::RSA_PKCS1_2048_8192_SHA384, k),
        (KeyKind::Rsa(k), "RS512") => public(&signature::RSA_PKCS1_2048_8192_SHA512, k),
        (KeyKind::Rsa(k), "PS256") => public(&signature::RSA_PSS_2048_8192_SHA256, k),
        (KeyKind::Rsa(k), "PS384") => public(&signature::RSA_PSS_2048_8192_SHA384, k),
        (KeyKind::Rsa(k), _) => public(&signature::RSA_PSS_2048_8192_SHA512, k),
    }
}

fn object(segment: &str) -> Option<Map<String, Value>> {
    serde_json::from_slice(&B64.decode(segment).ok()?).ok()
}

/// A NumericDate: a JSON number that is a time in seconds, not negative and
/// within 64 bits.
fn date(v: &Value) -> Option<f64> {
    match v.as_u64() {
        Some(n) => Some(n as f64),
        None => v
            .as_f64()
            .filter(|t| t.is_finite() && (0.0..u64::MAX as f64).contains(t)),
    }
}

fn reference(p: &Policy, token: &str, now: f64) -> Judged {
    // Before the signature is found good nothing else is judged.
    let reject = |why: &'static str| Judged {
        verdict: Verdict::Reject(why),
        signed: false,
        expired: Some(false),
    };
    if token.len() > MAX_TOKEN_BYTES {
        return reject("over 8 KiB");
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [head, body, sig] = parts[..] else {
        return reject("not three segments");
    };
    let Some(header) = object(head) else {
        return reject("the header is not a JSON object");
    };
    let Some(alg) = header.get("alg").and_then(Value::as_str) else {
        return reject("no alg");
    };
    if !p.algorithms.contains(&alg) {
        return reject("alg not allowed");
    }
    // RFC 7515 §4.1.11: extensions the verifier does not understand (it
    // understands none) must not be ignored.
    if header.contains_key("crit") {
        return reject("crit");
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return reject("kid is not a string"),
    };
    let Ok(sig) = B64.decode(sig) else {
        return reject("the signature is not base64url");
    };
    let message = format!("{head}.{body}");
    let signed = p
        .keys
        .iter()
        .filter(|k| k.kid.is_empty() || kid.is_none_or(|want| want == k.kid))
        .filter(|k| fits(k, alg))
        .any(|k| signature_ok(k, alg, message.as_bytes(), &sig));
    if !signed {
        return reject("no key verifies the signature");
    }
    let Some(claims) = object(body) else {
        return Judged {
            signed: true,
            ..reject("the payload is not a JSON object")
        };
    };
    let exp = claims.get("exp").and_then(date);
    let mut unsure = false;
    let expired = match exp {
        Some(exp) if exp < now - p.leeway - MARGIN => Some(true),
        Some(exp) if exp < now - p.leeway + MARGIN => None,
        _ => Some(false),
    };
    let out = |verdict: Verdict| Judged {
        verdict,
        signed: true,
        expired,
    };
    if exp.is_none() {
        return out(Verdict::Reject("no usable exp"));
    }
    if let Some(nbf) = claims.get("nbf") {
        let Some(nbf) = date(nbf) else {
            return out(Verdict::Reject("nbf is not a date"));
        };
        if nbf > now + p.leeway + MARGIN {
            return out(Verdict::Reject("not yet valid"));
        } else if nbf > now + p.leeway - MARGIN {
            unsure = true;
        }
    }
    if let Some(iss) = p.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(iss)
    {
        return out(Verdict::Reject("iss is not the issuer"));
    }
    if let Some(auds) = p.audiences {
        let ours = |v: &Value| v.as_str().is_some_and(|a| auds.contains(&a));
        let ok = match claims.get("aud") {
            Some(Value::Array(list)) => list.iter().all(Value::is_string) && list.iter().any(ours),
            Some(v) => ours(v),
            None => false,
        };
        if !ok {
            return out(Verdict::Reject("aud names none of the audiences"));
        }
    }
    match expired {
        Some(true) => out(Verdict::Reject("expired")),
        None => out(Verdict::Unsure),
        Some(false) if unsure => out(Verdict::Unsure),
        Some(false) => out(Verdict::Accept),
    }
}

// ---- Token makers. ----

fn sign(u: &mut Unstructured<'_>, s: &Signers, message: &str) -> Result<Vec<u8>> {
    let m = message.as_bytes();
    let mac = |alg: hmac::Algorithm, secret: &[u8]| {
        hmac::sign(&hmac::Key::new(alg, secret), m)
            .as_ref()
            .to_vec()
    };
    let rsa = |pad: &'static dyn signature::RsaEncoding| {
        let mut out = vec![0; s.rsa.public_modulus_len()];
        s.rsa.sign(pad, &s.rng, m, &mut out).expect("RSA signs");
        out
    };
    let mut sig = match u.int_in_range(0..=10)? {
        0 => mac(hmac::HMAC_SHA256, SECRET),
        1 => mac(hmac::HMAC_SHA384, SECRET),
        2 => mac(hmac::HMAC_SHA512, SECRET),
        3 => mac(hmac::HMAC_SHA256, b"another-secret-0123456789abcdef0"),
        // Algorithm confusion: the RSA public key used as an HMAC secret.
        4 => mac(hmac::HMAC_SHA256, s.rsa.public_key().as_ref()),
        5 => s.ec.sign(&s.rng, m).expect("ECDSA signs").as_ref().to_vec(),
        6 => s.ed.sign(m).as_ref().to_vec(),
        // RSA signing is slow: rarer than the rest.
        7 if u.ratio(1, 4)? => rsa(&signature::RSA_PKCS1_SHA256),
        8 if u.ratio(1, 4)? => rsa(&signature::RSA_PSS_SHA256),
        9 => Vec::new(),
        // r = s = 0 (CVE-2022-21449) or other bytes.
        _ => {
            let n = u.int_in_range(0..=64)?;
            if u.arbitrary()? {
                vec![0; n]
            } else {
                u.bytes(n)?.to_vec()
            }
        }
    };
    if !sig.is_empty() && u.ratio(1, 8)? {
        let i = u.choose_index(sig.len())?;
        sig[i] ^= 1 << u.int_in_range(0..=7)?;
    }
    Ok(sig)
}

fn assemble(
    u: &mut Unstructured<'_>,
    s: &Signers,
    header: &[u8],
    payload: &[u8],
) -> Result<String> {
    let message = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let sig = sign(u, s, &message)?;
    let mut token = format!("{message}.{}", B64.encode(sig));
    // Damage after signing: a changed claim must break the signature.
    if u.ratio(1, 16)? {
        let i = u.choose_index(token.len())?;
        let c = *u.choose(b"AQg_-.=x")?;
        token.replace_range(i..=i, std::str::from_utf8(&[c]).expect("ASCII"));
    }
    Ok(token)
}

fn time_claim(u: &mut Unstructured<'_>, now: i64, leeway: i64) -> Result<Option<Value>> {
    Ok(Some(match u.int_in_range(0..=12)? {
        0 => return Ok(None),
        1 => json!(now + 3600),
        2 => json!(now - 3600),
        3 => json!(now - leeway - 10),
        4 => json!(now - leeway + 10),
        5 => json!(now + leeway + 10),
        6 => json!((now + 3600) as f64 + 0.4),
        7 => json!((now + 3600).to_string()),
        8 => json!(-5),
        9 => json!(1e300),
        10 => json!(u64::MAX),
        11 => json!(true),
        _ => json!(now + i64::from(u.arbitrary::<i16>()?)),
    }))
}

fn built(u: &mut Unstructured<'_>, p: &Policy, s: &Signers) -> Result<String> {
    let now = now() as i64;
    let leeway = p.leeway as i64;
    let mut header = Map::new();
    let alg = *u.choose(&[
        "HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "ES384", "EdDSA", "none", "hs256",
    ])?;
    header.insert("alg".into(), json!(alg));
    if u.arbitrary()? {
        header.insert("typ".into(), json!("JWT"));
    }
    if u.arbitrary()? {
        let kid = *u.choose(&["ec1", "ed1", "rsa1", "nope", ""])?;
        header.insert("kid".into(), json!(kid));
    }
    if u.ratio(1, 8)? {
        header.insert("crit".into(), json!(["exp"]));
    }
    if u.ratio(1, 8)? {
        header.insert("jku".into(), json!("https://attacker.test/jwks.json"));
    }
    let mut claims = Map::new();
    if let Some(exp) = time_claim(u, now, leeway)? {
        claims.insert("exp".into(), exp);
    }
    if u.arbitrary()? {
        // An `nbf` in the past is the usual case; the others are rarer.
        let nbf = match u.int_in_range(0..=3)? {
            0 => time_claim(u, now, leeway)?,
            _ => Some(json!(now - 60)),
        };
        if let Some(nbf) = nbf {
            claims.insert("nbf".into(), nbf);
        }
    }
    let iss = match u.int_in_range(0..=7)? {
        0 => None,
        1 => Some(json!("https://evil.test/")),
        2 => Some(json!([ISSUER])),
        3 => Some(json!(["https://evil.test/", ISSUER])),
        4 => Some(json!("https://issuer.test")),
        5 => Some(json!(7)),
        _ => Some(json!(ISSUER)),
    };
    if let Some(iss) = iss {
        claims.insert("iss".into(), iss);
    }
    let aud = match u.int_in_range(0..=8)? {
        0 => None,
        1 => Some(json!("other")),
        2 => Some(json!(["other", "web"])),
        3 => Some(json!(["other"])),
        4 => Some(json!([])),
        5 => Some(json!([5, "api"])),
        6 => Some(json!(7)),
        7 => Some(json!(["api", "api"])),
        _ => Some(json!("api")),
    };
    if let Some(aud) = aud {
        claims.insert("aud".into(), aud);
    }
    if u.arbitrary()? {
        claims.insert("sub".into(), json!("user-1"));
    }
    let header = serde_json::to_vec(&header).expect("JSON");
    let payload = serde_json::to_vec(&claims).expect("JSON");
    assemble(u, s, &header, &payload)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let world = &*WORLD;
    let policy = &world.policies[usize::from(mode >> 2) % world.policies.len()];
    let mut u = Unstructured::new(rest);
    let (token, built_mode) = match mode & 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(t) => (t.to_string(), false),
            Err(_) => return,
        },
        1 => {
            let split = u.arbitrary_len::<u8>().unwrap_or(0);
            let Ok(header) = u.bytes(split) else { return };
            let len = u.arbitrary_len::<u8>().unwrap_or(0);
            let Ok(payload) = u.bytes(len) else {
                return;
            };
            match assemble(&mut u, &world.signers, header, payload) {
                Ok(t) => (t, false),
                Err(_) => return,
            }
        }
        _ => match built(&mut u, policy, &world.signers) {
            Ok(t) => (t, true),
            Err(_) => return,
        },
    };
    let before = now();
    let got = world.runtime.block_on(policy.verifier.verify(&token));
    let judged = reference(policy, &token, before);
    let claims = || {
        token
            .split('.')
            .nth(1)
            .and_then(|b| B64.decode(b).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    match &got {
        Ok(v) => {
            if let Verdict::Reject(why) = judged.verdict {
                panic!(
                    "accepted a token the reference rejects ({why}):\n{token}\nclaims: {:?}",
                    claims()
                );
            }
            assert_eq!(
                v.subject.as_deref(),
                v.claims.get("sub").and_then(Value::as_str),
                "the subject is the sub claim"
            );
        }
        Err(JwtError::Failure(AuthFailure::Expired)) => assert!(
            judged.signed && judged.expired != Some(false),
            "`expired` for a token the reference does not find well signed and expired:\n{token}"
        ),
        Err(JwtError::Failure(AuthFailure::Invalid)) => {
            if built_mode && judged.verdict == Verdict::Accept {
                panic!(
                    "refused a built token the reference accepts:\n{token}\nclaims: {:?}",
                    claims()
                );
            }
        }
        Err(e) => panic!("{e:?} from a policy with static keys"),
    }
});
