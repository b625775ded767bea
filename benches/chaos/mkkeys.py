#!/usr/bin/env python3
"""Credentials for the chaos suite and the soak: an RSA-2048 key, a JWKS with
its public half (kid chaos-1), and COUNT RS256 tokens (iss/aud as
benches/chaos/chaos.yaml's `chaos` policy, distinct `sub`, valid for a day).
Uses `cryptography` when it imports, openssl otherwise.

    mkkeys.py DIR [COUNT]   -> DIR/key.pem, DIR/jwks.json, DIR/tokens.json (a JSON list)
"""

import base64
import json
import os
import subprocess
import sys
import time

ISS = "https://chaos.tollgate.invalid/"
AUD = "chaos"
KID = "chaos-1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signer(key_path):
    """(modulus bytes, sign(bytes) -> bytes)."""
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with open(key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        n = key.public_key().public_numbers().n
        return n.to_bytes((n.bit_length() + 7) // 8, "big"), lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    except ImportError:
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key_path],
                       check=True, capture_output=True)
        modulus = subprocess.run(["openssl", "rsa", "-in", key_path, "-noout", "-modulus"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        sign = lambda data: subprocess.run(["openssl", "dgst", "-sha256", "-sign", key_path], input=data, check=True,
                                           capture_output=True).stdout
        return bytes.fromhex(modulus.split("=", 1)[1]), sign


def main() -> None:
    out = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    os.makedirs(out, exist_ok=True)
    n, sign = signer(os.path.join(out, "key.pem"))
    jwks = {"keys": [{"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256", "n": b64url(n), "e": "AQAB"}]}
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump(jwks, f)
    now = int(time.time())
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": KID}).encode())
    tokens = []
    for i in range(count):
        claims = {"iss": ISS, "aud": AUD, "sub": f"chaos-user-{i}", "iat": now, "exp": now + 86400}
        signing_input = header + "." + b64url(json.dumps(claims).encode())
        tokens.append(signing_input + "." + b64url(sign(signing_input.encode())))
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump(tokens, f)


if __name__ == "__main__":
    main()
