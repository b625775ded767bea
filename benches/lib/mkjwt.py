#!/usr/bin/env python3
"""Makes the policy scenario's credentials with openssl and the standard library:
an RSA-2048 key pair, a JWKS file with its public half, and an RS256 token
(iss/aud matching benches/bench-policy.yaml, valid for a day).

Usage: mkjwt.py DIR   -> DIR/key.pem, DIR/jwks.json, DIR/token (one line)
"""

import base64
import json
import os
import subprocess
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> None:
    out = sys.argv[1]
    key = os.path.join(out, "key.pem")
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key],
        check=True,
        capture_output=True,
    )
    modulus = subprocess.run(
        ["openssl", "rsa", "-in", key, "-noout", "-modulus"], check=True, capture_output=True, text=True
    ).stdout.strip()
    n = bytes.fromhex(modulus.split("=", 1)[1])
    jwks = {"keys": [{"kty": "RSA", "kid": "bench-1", "use": "sig", "alg": "RS256", "n": b64url(n), "e": "AQAB"}]}
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump(jwks, f)
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": "bench-1"}
    claims = {
        "iss": "https://bench.tollgate.invalid/",
        "aud": "bench",
        "sub": "bench-user",
        "iat": now,
        "exp": now + 86400,
    }
    signing_input = (b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())).encode()
    sig = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key], input=signing_input, check=True, capture_output=True
    ).stdout
    with open(os.path.join(out, "token"), "w") as f:
        f.write(signing_input.decode() + "." + b64url(sig) + "\n")


if __name__ == "__main__":
    main()
