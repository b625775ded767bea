#!/usr/bin/env python3
"""Writes the hand-made seeds in fuzz/seeds/<target>/ (committed; the grown
corpus in fuzz/corpus/ is not). Text targets get their inputs as written.
The structured targets (route_match, request_head, cache_control, jwt's built
mode) read their input through `arbitrary::Unstructured`; `U` below spells
out the choices each seed makes, in the order the target draws them, so a
seed is a readable list of decisions. Run it again after changing a
target's vocabulary or draw order: python3 fuzz/seeds/make_seeds.py
"""

import base64
import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


class U:
    """The bytes that make `Unstructured` (arbitrary 1.x) return these choices."""

    def __init__(self):
        self.b = bytearray()

    def int(self, lo, hi, v):
        """int_in_range(lo..=hi) == v: as many bytes as the range needs."""
        assert lo <= v <= hi, (lo, v, hi)
        delta, off = hi - lo, v - lo
        n = 0
        while n < 8 and delta >> (8 * n):
            n += 1
        self.b += off.to_bytes(n, "big")
        return self

    def choose(self, vocab, item):
        return self.int(0, len(vocab) - 1, vocab.index(item))

    def bool(self, v):
        self.b.append(1 if v else 0)
        return self

    def ratio(self, num, den, v):
        """ratio(num, den) == v"""
        return self.int(1, den, 1 if v else den)

    def le(self, fmt, v):
        self.b += struct.pack("<" + fmt, v)
        return self

    def raw(self, data):
        self.b += data.encode() if isinstance(data, str) else data
        return self


# ---- text targets -----------------------------------------------------------

# normalize_path: a mode byte (escaped_slashes = mode % 3: reject, keep,
# decode; merge_slashes unless bit 7), then the path.
for name, mode, path in [
    ("dot-segments", 0, "/a/./b/../c/"),
    ("dotdot-above-root", 0, "/../../x"),
    ("encoded-dots", 1, "/%2e%2E/%2E./x"),
    ("encoded-slash-reject", 0, "/a%2Fb"),
    ("encoded-slash-keep", 1, "/a%2fb/%5C"),
    ("encoded-slash-decode", 2, "/a%2Fb/..%2F.."),
    ("backslash", 2, "/a\\b\\..\\c"),
    ("double-slash-merge", 0, "//a///b//"),
    ("double-slash-keep", 0x80, "//a///b//"),
    ("unreserved-escapes", 1, "/%41%7e%2D%5f%30"),
    ("lowercase-hex", 1, "/%c3%a9/%e2%82%ac"),
    ("bad-escape", 1, "/%zz/%4"),
    ("params", 0, "/a;v=1/b;/..;/c"),
    ("asterisk", 0, "*"),
    ("empty", 0, ""),
    ("nul", 0, "/a\x00b"),
    ("query-like", 0, "/a?b/../c"),
]:
    write("normalize_path", name, bytes([mode]) + path.encode())

# idempotency_key: the header value.
for name, value in [
    ("plain", "4b1e6c1a-31f5-4c1a-9b4e-0f6f0c1d2e3f"),
    ("quoted", '"abc-123"'),
    ("escaped", '"a\\"b\\\\c"'),
    ("empty", ""),
    ("empty-quoted", '""'),
    ("max-255", "k" * 255),
    ("over-255", "k" * 256),
    ("unterminated", '"abc'),
    ("byte-sequence", ":YWJj:"),
    ("list", "a, b"),
    ("spaces", "  padded  "),
    ("params", '"abc";x=1'),
    ("obs-text", "caf\u00e9"),
]:
    write("idempotency_key", name, value)

# config_load: YAML text (the shipped config/ is read as seeds too).
for name, text in [
    ("env-default", "server:\n  listeners:\n    - { name: main, bind: \"${HOST:-0.0.0.0}:${PORT}\" }\n"),
    ("env-unset", "server:\n  listeners:\n    - { name: main, bind: \"${NOPE}\" }\n"),
    ("env-unterminated", "routes: ${PORT\n"),
    ("duplicate-key", "routes: []\nroutes: []\n"),
    ("anchor", "a: &x { path: / }\nroutes:\n  - match: *x\n"),
    ("tab-indent", "routes:\n\t- name: x\n"),
    ("bom", "\ufeffroutes: []\n"),
    ("unknown-key", "sevrer: {}\n"),
    ("wrong-type", "server:\n  limits: { max_header_bytes: lots }\n"),
    ("deep", "a: " + "[" * 64 + "]" * 64 + "\n"),
    ("empty", ""),
]:
    write("config_load", name, text)

# ---- proxy_protocol: a mode byte (bit 0: built; the peer is
# PEERS[(mode >> 1) % 4]: 10.0.0.9 and ::ffff:10.1.2.3 trusted, 192.0.2.1 and
# 2001:db8::1 not), then the stream. -----------------------------------------

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(ver_cmd, fam, body):
    return SIG + bytes([ver_cmd, fam]) + struct.pack(">H", len(body)) + body


ipv4 = bytes([198, 51, 100, 4, 10, 0, 0, 1]) + struct.pack(">HH", 1234, 443)
ipv6 = bytes(range(16)) + bytes(16) + struct.pack(">HH", 1, 2)
for name, mode, data in [
    ("v1-tcp4", 0, b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n"),
    ("v1-tcp6", 0, b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 1000 443\r\n"),
    ("v1-unknown", 0, b"PROXY UNKNOWN\r\n"),
    ("v1-unknown-rest", 0, b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"),
    # Found by the target: after UNKNOWN the spec ignores everything up to the
    # CRLF, bytes that are not text included (ppp reads up to the first CR).
    ("v1-unknown-junk", 0, b"PROXY UNKNOWN   \n \x11\x00\rU\r\x00PROXY TCT4 20\nU\r3\xe50.3.7 0.0.0.1 5324\n 41\r\n"),
    ("v1-leading-zero", 0, b"PROXY TCP4 01.2.3.4 10.0.0.1 1 2\r\n"),
    ("v1-port-overflow", 0, b"PROXY TCP4 1.2.3.4 10.0.0.1 65536 2\r\n"),
    ("v1-no-crlf", 0, b"PROXY TCP4 1.2.3.4 10.0.0.1 1 2\n"),
    ("v1-107", 0, b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"),
    ("v1-108", 0, b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"),
    ("v1-mapped-peer", 2, b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\r\n"),
    ("v1-untrusted", 4, b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\r\n"),
    ("v2-ipv4-tls", 0, v2(0x21, 0x11, ipv4) + b"\x16\x03\x01"),
    ("v2-ipv4-tlvs", 0, v2(0x21, 0x11, ipv4 + b"\x01\x00\x02h2\x04\x00\x00")),
    ("v2-ipv6", 0, v2(0x21, 0x21, ipv6)),
    ("v2-unix", 0, v2(0x21, 0x31, b"/" * 216)),
    ("v2-local", 0, v2(0x20, 0x00, b"")),
    ("v2-short-addresses", 0, v2(0x21, 0x11, ipv4[:6])),
    ("v2-version-1", 0, v2(0x11, 0x11, ipv4)),
    ("v2-command-2", 0, v2(0x22, 0x11, ipv4)),
    ("v2-length-past-end", 0, SIG + b"\x21\x11\xff\xff" + ipv4),
    ("v2-half-signature", 0, SIG[:9]),
    ("http", 0, b"GET / HTTP/1.1\r\n\r\n"),
    ("built-v1", 1, b"\x01\x00\x00\x00"),
    ("built-v2", 1, b"\x00\x00"),
]:
    write("proxy_protocol", name, bytes([mode]) + data)

# ---- jwt: a mode byte (bits 0-1: 0 raw token, 1 signed bytes, 2-3 built;
# bits 2+: the policy, 0 hs, 1 pk, 2 pk-claims), then the token or the
# choices. Raw HS256 tokens are signed with the target's secret. -------------

SECRET = b"fuzz-secret-0123456789abcdef0123"
ISSUER = "https://issuer.test/"
EXP = 4102444800  # 2100-01-01


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(header, claims):
    msg = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET, msg.encode(), hashlib.sha256).digest()
    return msg + "." + b64(sig)


good = {"exp": EXP, "iss": ISSUER, "aud": "api", "sub": "user-1"}
for name, token in [
    ("hs-good", hs256({"alg": "HS256", "typ": "JWT"}, good)),
    ("hs-crit", hs256({"alg": "HS256", "crit": ["exp"]}, good)),
    ("hs-iss-list", hs256({"alg": "HS256"}, dict(good, iss=["https://evil.test/", ISSUER]))),
    ("hs-aud-list", hs256({"alg": "HS256"}, dict(good, aud=["other", "web"]))),
    ("hs-aud-mixed", hs256({"alg": "HS256"}, dict(good, aud=[5, "api"]))),
    ("hs-exp-float", hs256({"alg": "HS256"}, dict(good, exp=EXP + 0.5))),
    ("hs-exp-string", hs256({"alg": "HS256"}, dict(good, exp=str(EXP)))),
    ("hs-exp-negative", hs256({"alg": "HS256"}, dict(good, exp=-5))),
    ("hs-exp-past", hs256({"alg": "HS256"}, dict(good, exp=1000000000))),
    ("hs-nbf-future", hs256({"alg": "HS256"}, dict(good, nbf=EXP))),
    ("hs-no-exp", hs256({"alg": "HS256"}, {"iss": ISSUER, "aud": "api"})),
    ("hs-kid-number", hs256({"alg": "HS256", "kid": 7}, good)),
    ("hs-jku", hs256({"alg": "HS256", "jku": "https://attacker.test/jwks.json"}, good)),
    ("alg-none", b64(b'{"alg":"none"}') + "." + b64(json.dumps(good).encode()) + "."),
    ("alg-lowercase", hs256({"alg": "hs256"}, good)),
    ("two-segments", "eyJhbGciOiJIUzI1NiJ9.e30"),
    ("four-segments", "a.b.c.d"),
    ("padded", "eyJhbGciOiJIUzI1NiJ9.e30=.AA=="),
    ("not-json", b64(b"{alg") + ".e30.AA"),
]:
    write("jwt", name, bytes([0]) + token.encode())
write("jwt", "pk-raw-es256", bytes([4]) + hs256({"alg": "ES256", "kid": "ec1"}, good).encode())
write("jwt", "pk-claims-raw-rs256", bytes([8]) + hs256({"alg": "RS256"}, good).encode())
write("jwt", "signed-empty", bytes([1]))
write("jwt", "built-hs", bytes([2]) + bytes(24))
write("jwt", "built-pk", bytes([6]) + bytes([3, 1, 0, 5]) + bytes(20))
write("jwt", "built-pk-claims", bytes([10]) + bytes([7, 0, 1, 2, 0, 0, 6]) + bytes(20))

# ---- route_match ---------------------------------------------------------------

EXACT = ["/", "/api", "/api/", "/api/users", "/api/users/1", "/x", "/apix"]
PREFIX = ["/", "/api", "/api/", "/api/users", "/ap", "/x/", "/x"]
REGEX = ["/api/.*", "/api/users/[0-9]+", "/v[0-9]+(/.*)?", "/x", "/(api|x)/?", ".*", "/api"]
PATHS = ["/", "/api", "/api/", "/api/users", "/api/users/", "/api/users/1", "/api/users/x",
         "/apix", "/ap", "/x", "/x/", "/x/y", "/v1", "/v12/a", "//", "/api//users", ""]
ROUTE_HOSTS = ["api.example.com", "API.Example.COM", "*.example.com", "*.Example.com.",
               "example.com", "[::1]", "::1", "127.0.0.1", "a.example.com", "t1.test",
               "t2.test", "*.test"]
REQUEST_HOSTS = ["api.example.com", "API.EXAMPLE.com:8443", "api.example.com.",
                 "a.b.example.com", "A.example.com:80", "example.com", "[::1]:8080", "[::1]",
                 "::1", "127.0.0.1:80", "t1.test", "x.t2.test", "badexample.com",
                 ".example.com", ""]
METHODS = ["GET", "POST", "HEAD", "DELETE", "PURGE"]
HEADER_NAMES = ["x-a", "x-b"]
HEADER_VALUES = ["1", "2", "v12", ""]
HEADER_REGEXES = ["^v[0-9]+$", "1", "^$"]
QUERY_KEYS = ["a", "b"]
QUERY_VALUES = ["1", "x y", "", "100%"]
QUERIES = ["a=1", "a=x+y", "a=x%20y&b=1", "b=%31&a=1", "a", "a=", "a=100%25", "a=100%",
           "%61=1", "a=2&a=1", "&&a=1&", "b=1"]
COOKIE_NAMES = ["s", "t"]
COOKIE_VALUES = ["1", "yes"]
COOKIES = ["s=1", "t=yes; s=1", "s=\"1\"", "s=", "s=2", "t=yes", " s = 1 ", "s=2; s=1"]


def path_spec(u, kind, value):
    u.int(0, 2, kind)
    u.choose([EXACT, PREFIX, REGEX][kind], value)


def route(u, path=None, hosts=(), methods=(), headers=(), query=(), cookies=()):
    """path: (kind, value) with 0 exact, 1 prefix, 2 regex; None on a shared path.
    headers: (name, "exact", value) | (name, "present", bool) | (name, "regex", re)."""
    if path is not None:
        path_spec(u, *path)
    u.int(0, 2, len(hosts))
    for h in hosts:
        u.choose(ROUTE_HOSTS, h)
    u.int(0, 2, len(methods))
    for m in methods:
        u.choose(METHODS, m)
    u.int(0, 2, len(headers))
    for name, how, v in headers:
        u.choose(HEADER_NAMES, name)
        if how == "exact":
            u.int(0, 2, 0).choose(HEADER_VALUES, v)
        elif how == "present":
            u.int(0, 2, 1).bool(v)
        else:
            u.int(0, 2, 2).choose(HEADER_REGEXES, v)
    u.int(0, 2, len(query))
    for k, v in query:
        u.choose(QUERY_KEYS, k).choose(QUERY_VALUES, v)
    u.int(0, 2, len(cookies))
    for k, v in cookies:
        u.choose(COOKIE_NAMES, k).choose(COOKIE_VALUES, v)


def request(u, method="GET", host=None, path="/", query=None, headers=(), cookies=()):
    u.choose(METHODS, method)
    if host is None:
        u.int(0, 9, 0)
    else:
        u.int(0, 9, 2).choose(REQUEST_HOSTS, host)
    u.int(0, 3, 1).choose(PATHS, path)
    if query is None:
        u.int(0, 2, 0)
    else:
        u.int(0, 2, 1).choose(QUERIES, query)
    u.int(0, 3, len(headers))
    for name, v in headers:
        u.choose(HEADER_NAMES, name).choose(HEADER_VALUES, v)
    u.int(0, 2, len(cookies))
    for c in cookies:
        u.choose(COOKIES, c)


def table(routes, shared=None):
    u = U().int(1, 16, len(routes)).bool(shared is not None)
    if shared is not None:
        path_spec(u, *shared)
    for r in routes:
        route(u, **r)
    return u


def rm(name, routes, req, shared=None):
    u = table(routes, shared)
    request(u, **req)
    write("route_match", name, bytes(u.b))


four = dict(hosts=["api.example.com"], methods=["GET"], headers=[("x-a", "present", True)],
            query=[("a", "1")])
rm("five-kinds-beat-four", [four, dict(four, cookies=[("s", "1")])],
   dict(host="api.example.com", query="a=1", headers=[("x-a", "1")], cookies=["s=1"]),
   shared=(1, "/"))
rm("exact-regex-prefix", [dict(path=(1, "/api")), dict(path=(2, "/api/users/[0-9]+")),
                          dict(path=(0, "/api/users/1"))], dict(path="/api/users/1"))
rm("longest-prefix", [dict(path=(1, "/")), dict(path=(1, "/api/")), dict(path=(1, "/api/users"))],
   dict(path="/api/users/x"))
rm("prefix-boundary", [dict(path=(1, "/api")), dict(path=(1, "/ap"))], dict(path="/apix"))
rm("slash-prefix-not-bare", [dict(path=(1, "/api/"))], dict(path="/api"))
rm("double-slash", [dict(path=(1, "/api/")), dict(path=(0, "/"))], dict(path="/api//users"))
rm("empty-path", [dict(path=(2, ".*")), dict(path=(1, "/"))], dict(path=""))
rm("wildcard-host", [dict(path=(1, "/"), hosts=["*.Example.com."]),
                     dict(path=(1, "/"), hosts=["example.com"])],
   dict(host="a.b.example.com"))
rm("host-port-case-dot", [dict(path=(1, "/"), hosts=["API.Example.COM"])],
   dict(host="api.example.com."))
rm("ipv6-host", [dict(path=(1, "/"), hosts=["::1"]), dict(path=(1, "/"), hosts=["[::1]"])],
   dict(host="[::1]:8080"))
rm("query-decoded", [dict(path=(1, "/"), query=[("a", "x y")]),
                     dict(path=(1, "/"), query=[("a", "100%")])], dict(query="a=x%20y&b=1"))
rm("query-bare-percent", [dict(path=(1, "/"), query=[("a", "100%")])], dict(query="a=100%"))
rm("cookie-quoted", [dict(path=(1, "/"), cookies=[("s", "1")])], dict(cookies=["s=\"1\""]))
rm("cookie-first-wins", [dict(path=(1, "/"), cookies=[("s", "1")])], dict(cookies=["s=2; s=1"]))
rm("header-regex-present", [dict(path=(1, "/"), headers=[("x-a", "regex", "^v[0-9]+$"),
                                                          ("x-b", "present", False)])],
   dict(headers=[("x-a", "v12")]))
rm("host-index", [dict(hosts=[h]) for h in ROUTE_HOSTS[:10]] + [dict(methods=["GET"])],
   dict(host="A.example.com:80", path="/api/users"), shared=(1, "/api"))
rm("file-order", [dict(path=(2, "/api/.*")), dict(path=(2, "/(api|x)/?"))], dict(path="/api/"))

# ---- request_head --------------------------------------------------------------

RH_NAMES = ["connection", "keep-alive", "proxy-connection", "te", "transfer-encoding",
            "upgrade", "proxy-authorization", "proxy-authenticate", "trailer",
            "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded",
            "x-request-id", "host", "x-secret", "x-a", "close", "expect", "content-length",
            "cookie", "traceparent"]
TOKENS = [b"keep-alive", b"close", b"x-secret", b"X-Secret", b"x-a", b"te", b"TE", b"upgrade",
          b"x-forwarded-for", b"x-forwarded-host", b"x-request-id", b"forwarded", b"trailer",
          b"cookie", b"host", b"x a", b"x-secret;q=1", b"\xff", b""]
SEPARATORS = [b",", b", ", b" ,\t", b",,", b" , , "]
TE = [b"trailers", b"TRAILERS", b" trailers ", b"gzip, trailers", b"trailers, deflate;q=0.5",
      b"trailers;q=1", b"gzip", b"", b"trailers, \xff", b"\ttrailers", b",trailers,"]
ADDRESSES = [b"1.2.3.4", b"10.1.1.1", b"10.0.0.9", b"192.0.2.7", b"::ffff:10.1.1.1",
             b"::ffff:192.0.2.7", b"2001:db8:1::7", b"2001:db8::9", b"[2001:db8::1]",
             b"1.2.3.4:80", b"unknown", b"", b" ", b"\xff", b"\xc2\xa01.2.3.4", b"01.2.3.4",
             b"fe80::1%eth0"]
VALUES = [b"1", b"", b"keep-alive", b"x-secret", b"trailers", b"a, b", b"\xff\xfe",
          b"websocket", b"100-continue", b"for=192.0.2.60;proto=http"]
PEERS = ["10.0.0.9", "192.0.2.1", "::ffff:10.0.0.9", "::ffff:192.0.2.1", "2001:db8:1::2", "::1"]
TRUSTED = [(), ("10.0.0.0/8",), ("10.0.0.0/8", "2001:db8:1::/48"), ("0.0.0.0/0", "::/0")]
HOSTS = ["api.test", "API.test:8443", "[::1]:80", "a.b.test."]
RH_METHODS = ["GET", "POST", "OPTIONS", "CONNECT", "PURGE"]
TARGETS = ["/", "/a/b?c=d", "*", "http://a.test/x?y", "https://a.test:8443/", "http://a.test",
           "a.test:443", "/%2F?x=%20", "/?"]


def rh(name, fields, peer="10.0.0.9", trusted=("10.0.0.0/8",), host="api.test", tls=False,
       method="GET", target="/"):
    """fields: (name, value) with value a list of members for connection and
    x-forwarded-for (joined with ", "), else one vocabulary value."""
    u = U().int(0, 12, len(fields))
    for fname, value in fields:
        u.ratio(7, 8, True).choose(RH_NAMES, fname).ratio(1, 8, False)
        if fname in ("connection", "x-forwarded-for"):
            vocab = TOKENS if fname == "connection" else ADDRESSES
            u.int(1, 4, len(value))
            for i, m in enumerate(value):
                if i:
                    u.choose(SEPARATORS, b", ")
                u.choose(vocab, m)
            if fname == "connection":
                u.le("Q", 0)
        elif fname == "te":
            u.choose(TE, value)
        else:
            u.choose(VALUES, value)
    u.int(0, 3, 2).choose(PEERS, peer)
    u.choose(TRUSTED, tuple(trusted))
    if host is None:
        u.int(0, 3, 0)
    else:
        u.int(0, 3, 1).choose(HOSTS, host)
    u.bool(tls).choose(RH_METHODS, method).choose(TARGETS, target)
    write("request_head", name, bytes(u.b))


rh("hop-by-hop", [("connection", [b"keep-alive", b"X-Secret"]), ("x-secret", b"1"),
                  ("keep-alive", b"1"), ("te", b"gzip, trailers"), ("upgrade", b"websocket"),
                  ("proxy-connection", b"keep-alive"), ("transfer-encoding", b"1"),
                  ("proxy-authorization", b"1"), ("x-a", b"1")])
rh("connection-obs-text", [("connection", [b"x-secret", b"\xff"]), ("x-secret", b"1")])
rh("connection-close-field", [("connection", [b"close"]), ("close", b"1")])
rh("connection-names-forwarded", [("connection", [b"x-forwarded-for", b"x-request-id", b"te"]),
                                  ("x-forwarded-for", [b"1.2.3.4"]), ("x-request-id", b"1"),
                                  ("te", b"trailers")])
rh("te-obs-text", [("te", b"trailers, \xff")])
rh("te-weighted", [("te", b"trailers;q=1")])
rh("xff-chain", [("x-forwarded-for", [b"1.2.3.4", b"10.1.1.1"])])
rh("xff-two-lines", [("x-forwarded-for", [b"192.0.2.7"]), ("x-forwarded-for", [b"10.1.1.1"])],
   trusted=("10.0.0.0/8", "2001:db8:1::/48"))
rh("xff-mapped-peer", [("x-forwarded-for", [b"1.2.3.4"])], peer="::ffff:10.0.0.9")
rh("xff-mapped-hop", [("x-forwarded-for", [b"1.2.3.4", b"::ffff:10.1.1.1"])])
rh("xff-empty-member", [("x-forwarded-for", [b"1.2.3.4", b"", b" "])])
rh("xff-obs-text-line", [("x-forwarded-for", [b"1.2.3.4"]), ("x-forwarded-for", [b"\xff", b"10.1.1.1"])])
rh("xff-garbled", [("x-forwarded-for", [b"1.2.3.4", b"1.2.3.4:80", b"10.1.1.1"])])
rh("xff-untrusted-peer", [("x-forwarded-for", [b"1.2.3.4"])], peer="192.0.2.1")
rh("forwarded-host-without-host", [("x-forwarded-host", b"1"), ("forwarded", b"for=192.0.2.60;proto=http")],
   host=None, tls=True)
rh("absolute-form", [("x-a", b"1")], method="OPTIONS", target="http://a.test/x?y")
rh("authority-form", [("host", b"1")], method="CONNECT", target="a.test:443")
rh("asterisk", [], method="OPTIONS", target="*")

# ---- cache_control: a mode byte (bit 0: built Cache-Control lists), then the
# choices. ----------------------------------------------------------------------

FIELDS = ["cache-control", "pragma", "expires", "date", "age", "vary", "etag", "last-modified",
          "set-cookie", "authorization", "if-none-match", "if-modified-since", "connection",
          "content-length", "content-type", "x-a"]
TRICKY = [b"max-age=60", b"MAX-AGE=\"60\"", b"max-age=\"6\\0\"", b"max-age=-1", b"max-age=",
          b"max-age = 5", b"max-age=5 6", b"max-age=\"5, public", b"max-age=99999999999999999999",
          b"s-maxage=0, max-age=9", b"no-store", b"No-Store=1", b"private=\"set-cookie\"",
          b"public", b"public=1", b"public junk", b"no-cache=\"a, b\", max-age=5",
          b"must-revalidate", b"stale-while-revalidate=30, stale-if-error=600", b"max-stale",
          b"max-stale=3", b"min-fresh=1, only-if-cached", b",,, ,", b"\"", b"=", b"\\",
          b"\xff\xfe", b"*", b"accept-encoding, *", b"Accept, accept , x y", b"\"abc\"",
          b"W/\"abc\"", b"\"abc\", W/\"def\"", b"\"a,b\"", b"*, junk", b"W/", b"\"abc\" junk",
          b"Sun, 06 Nov 1994 08:49:37 GMT", b"Sunday, 06-Nov-94 08:49:37 GMT",
          b"Sun Nov  6 08:49:37 1994", b"Tue, 14 Nov 2023 22:13:20 GMT",
          b" Tue, 14 Nov 2023 22:13:20 GMT ", b"tue, 14 nov 2023 22:13:20 gmt",
          b"Tue, 14 Nov 2023 22:13:20 GMT, Wed, 15 Nov 2023 22:13:20 GMT", b"0", b"-1", b"5",
          b"5, 6", b" 7 ", b"007", b"1e3", b"keep-alive, x-a", b"no-cache"]
CC_METHODS = ["GET", "HEAD", "POST", "PURGE"]
STATUSES = [200, 203, 204, 206, 301, 302, 304, 307, 404, 500, 501, 599]
RESPONSE_NAMES = ["no-store", "no-cache", "private", "must-revalidate", "proxy-revalidate",
                  "public", "max-age", "s-maxage", "stale-while-revalidate", "stale-if-error",
                  "immutable", "x-max-age", "community"]
REQUEST_NAMES = ["no-cache", "no-store", "only-if-cached", "max-age", "min-fresh", "max-stale",
                 "no-transform"]
TOKEN_ARGS = ["abc", "-1", "+1", "1.5", "0x10", "5s", "set-cookie"]
QUOTED_ARGS = ["", " 5", "a, max-age=5, public", "x\"y", "\\", "set-cookie, x"]


def fields(u, pairs):
    u.int(0, 8, len(pairs))
    for name, value in pairs:
        u.choose(FIELDS, name)
        if isinstance(value, int):  # an HTTP date this many seconds from T
            u.int(0, 5, 1).le("i", value)
        else:
            u.int(0, 5, 2).choose(TRICKY, value)


def directives(u, names, items):
    """items: (name, arg) with arg None, ("token", digits-choice or str),
    ("quoted", ...); digits-choice: 0 "0", 1 "007", 2 huge, 3 2^31, or an int."""
    u.int(0, 8, len(items))

    def digits(d):
        if isinstance(d, int) and d >= 10:
            u.int(0, 4, 4).le("I", d)
        else:
            u.int(0, 4, d)

    for name, arg in items:
        u.choose(names, name).le("I", 0x5a5a5a5a)
        if arg is None:
            u.int(0, 6, 0)
        elif arg[0] == "token" and isinstance(arg[1], str):
            u.int(0, 6, 4).choose(TOKEN_ARGS, arg[1])
        elif arg[0] == "quoted" and isinstance(arg[1], str):
            u.int(0, 6, 5).choose(QUOTED_ARGS, arg[1])
        else:
            u.int(0, 6, 2 if arg[0] == "token" else 3)
            digits(arg[1])
    for i, (_, arg) in enumerate(items):
        if i:
            u.ratio(1, 4, i == 2)  # the third directive starts a second line
            if i != 2:
                u.int(0, 4, 4)  # " , , "
        if arg is not None:
            u.ratio(1, 8, False).ratio(1, 8, False)
            if arg[0] == "quoted":
                u.ratio(1, 4, True)
    u.ratio(1, 4, False)


def cc(name, mode, method="GET", status=200, default_ttl=None, request=(), response=(),
       other=(), built=None, t_request=0, t_response=2):
    u = U().choose(CC_METHODS, method)
    if status in STATUSES:
        u.int(0, 2, 1).choose(STATUSES, status)
    else:
        u.int(0, 2, 0).int(100, 999, status)
    if default_ttl is None:
        u.int(0, 2, 1)
    else:
        u.int(0, 2, 0).le("I", default_ttl)
    u.le("H", t_request).le("H", t_response)
    fields(u, request)
    fields(u, response)
    fields(u, other)
    if built is not None:
        directives(u, RESPONSE_NAMES, built[0])
        directives(u, REQUEST_NAMES, built[1])
    write("cache_control", name, bytes([mode]) + bytes(u.b))


cc("max-age", 0, response=[("cache-control", b"max-age=60")])
cc("quoted-escaped-age", 0, response=[("cache-control", b"max-age=\"6\\0\""), ("etag", b"\"abc\"")])
cc("no-store-and-private", 0, response=[("cache-control", b"no-store"),
                                        ("cache-control", b"private=\"set-cookie\""),
                                        ("cache-control", b"max-age=60")])
cc("unterminated-quote", 0, response=[("cache-control", b"max-age=\"5, public")])
cc("expires-invalid", 0, response=[("expires", b"0"), ("date", 0)])
cc("expires-minus-date", 0, response=[("expires", 3600), ("date", 0)])
cc("expires-without-date", 0, response=[("expires", 3600)], default_ttl=60)
cc("age-list", 0, response=[("age", b"5, 6"), ("date", 40)], t_request=0, t_response=40)
cc("age-huge", 0, response=[("cache-control", b"max-age=99999999999999999999"),
                            ("age", b"007")])
cc("vary-star", 0, response=[("vary", b"accept-encoding, *"), ("cache-control", b"public")])
cc("vary-names", 0, response=[("vary", b"Accept, accept , x y"), ("cache-control", b"max-age=60")])
cc("authorization-public", 0, request=[("authorization", b"5")],
   response=[("cache-control", b"public"), ("etag", b"W/\"abc\"")])
cc("status-302-public", 0, status=302, response=[("cache-control", b"public")])
cc("status-600", 0, status=600, response=[("cache-control", b"max-age=60")])
cc("post", 0, method="POST", response=[("cache-control", b"max-age=60")])
cc("if-none-match-weak", 0, request=[("if-none-match", b"W/\"abc\"")],
   response=[("etag", b"\"abc\""), ("cache-control", b"no-cache")])
cc("if-none-match-star-junk", 0, request=[("if-none-match", b"*, junk")],
   response=[("etag", b"\"a,b\"")])
cc("if-modified-since", 0, request=[("if-modified-since", 0)],
   response=[("last-modified", -60), ("date", 0)])
cc("pragma", 0, request=[("pragma", b"no-cache")], response=[("cache-control", b"max-age=60")])
cc("merge-304", 0, response=[("content-type", b"0"), ("etag", b"\"abc\""), ("content-length", b"5")],
   other=[("connection", b"keep-alive, x-a"), ("x-a", b"5"), ("etag", b"W/\"abc\""),
          ("content-length", b"0")])
cc("built-deltas", 1, built=([("max-age", ("token", 1)), ("max-age", ("quoted", 60)),
                              ("s-maxage", ("token", "abc")), ("s-maxage", ("quoted", 3))],
                             [("max-stale", None), ("max-age", ("quoted", 0))]))
cc("built-flags", 1, built=([("public", ("token", 1)), ("no-cache", ("quoted", "a, max-age=5, public")),
                             ("public", None), ("private", ("quoted", "x\"y"))],
                            [("no-store", None), ("min-fresh", ("token", 2))]))
cc("built-huge", 1, built=([("stale-if-error", ("token", 2)), ("stale-while-revalidate", ("token", 3)),
                            ("max-age", ("quoted", "\\"))], [("max-stale", ("token", "-1"))]))
