#!/usr/bin/env python3
"""A fault-injecting HTTP/1.1 upstream for the chaos suite (stdlib only, asyncio).

    faulty.py --port 18481 --control 18491 --name a [--log FILE] [--jwks FILE]

Every request except the control ones is answered 200 with a body of
`size` bytes (query `size=N`, default 256) after `delay` ms (query
`delay=N`), carrying `X-Chaos-Target: NAME` and `X-Chaos-Len: N` (the body
length meant, so that a client can tell a truncated body from a whole one).
`GET /jwks.json` serves the --jwks file; `GET /healthz` answers "ok".

The fault mode is switched at run time through the control port (a
listener of its own, so that a half-open mode cannot block it):

    GET /__chaos/mode?m=MODE[&p=0.3][&ms=2500]   set the mode (answers the old and new mode)
    GET /__chaos/stats                           counters as JSON
    GET /__chaos/reset                           zero the counters

Modes (p = share of requests hit, default 1):

    normal     as above
    latency    a hit request waits `ms` (default 2500) before its head
    reset      a hit request's head is read, then the socket is closed with
               SO_LINGER 0 (TCP RST) before any answer; a body is left unread
    hang       half-open: the request is read and never answered; the socket
               stays open until the peer closes it
    noread     half-open: the connection's next bytes are never read (new
               connections are accepted, then ignored) until the peer closes
               it (seen as CLOSE_WAIT)

A connection held by hang or noread is closed by this side only once the mode
has changed and it has been held for at least HOLD_S (3 s): a peer that gave
up on it should have closed it by then. Such closes are counted in
`held_closed_by_us` (the peer's leftovers), the others in
`held_released_by_peer`.
    slowbody   the head is sent at once, the body in 10 pieces `ms`/10 apart
               (default ms 2000)
    truncate   a head with the whole Content-Length, half the body, then close

Each request that is not a control request is appended to --log as one line
`epoch_ms<TAB>method<TAB>path<TAB>outcome` with one unbuffered write, so a
SIGKILL loses nothing already logged; outcome is the fault it got (`ok` when
none). Connections held by `noread` are logged as `-<TAB>-<TAB>-<TAB>noread`.
"""

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import time
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
from sockets import reset_on_close  # noqa: E402

MODES = ("normal", "latency", "reset", "hang", "noread", "slowbody", "truncate")
DEFAULT_MS = {"latency": 2500, "slowbody": 2000}
TCP_CLOSE_WAIT = 8  # linux tcp_states.h
HOLD_S = 3.0


class State:
    def __init__(self, name, log_path, jwks_path):
        self.name = name
        self.mode = "normal"
        self.p = 1.0
        self.ms = 0
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log_path else None
        self.jwks_path = jwks_path
        self.held = set()  # sockets held by hang/noread
        self.mode_changed = asyncio.Event()
        self.stats = {}
        self.reset_stats()

    def reset_stats(self):
        self.stats = {
            "requests": 0,
            "connections": 0,
            "outcomes": {},
            "held_released_by_peer": 0,
            "held_closed_by_us": 0,
        }

    def count(self, outcome):
        o = self.stats["outcomes"]
        o[outcome] = o.get(outcome, 0) + 1

    def log(self, method, path, outcome):
        if self.log_fd is not None:
            line = f"{int(time.time() * 1000)}\t{method}\t{path}\t{outcome}\n"
            os.write(self.log_fd, line.encode())

    def hit(self):
        return self.mode != "normal" and random.random() < self.p

    def set_mode(self, mode, p, ms):
        self.mode, self.p, self.ms = mode, p, ms
        old = self.mode_changed
        self.mode_changed = asyncio.Event()
        old.set()


def tcp_state(sock):
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return info[0]
    except OSError:
        return None


def rst_close(writer):
    reset_on_close(writer)
    writer.transport.abort()


async def read_head(reader):
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return method, target, headers


async def read_body(reader, headers):
    if "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            await reader.readexactly(n)
        return
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # trailers until the empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            await reader.readexactly(size + 2)


def head_bytes(status, reason, headers):
    out = [f"HTTP/1.1 {status} {reason}"]
    out += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(out) + "\r\n\r\n").encode()


async def hold_until_peer_closes(st, writer, reading, reader=None):
    """Keeps the socket open, never answering, until the peer closes it, or
    the mode is no longer hang/noread and HOLD_S have passed."""
    sock = writer.get_extra_info("socket")
    since = time.monotonic()
    st.held.add(writer)
    try:
        while True:
            if reading and reader is not None:
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.2)
                    if not data:
                        st.stats["held_released_by_peer"] += 1
                        return
                    continue
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(0.2)
                if sock is not None and tcp_state(sock) == TCP_CLOSE_WAIT:
                    st.stats["held_released_by_peer"] += 1
                    return
            if st.mode not in ("hang", "noread") and time.monotonic() - since >= HOLD_S:
                st.stats["held_closed_by_us"] += 1
                return
    finally:
        st.held.discard(writer)
        writer.transport.abort()


async def control(st, writer, target):
    u = urlsplit(target)
    q = {k: v[-1] for k, v in parse_qs(u.query).items()}
    if u.path == "/__chaos/mode":
        m = q.get("m", "normal")
        if m not in MODES:
            body = json.dumps({"error": f"unknown mode {m}", "modes": MODES}).encode()
            writer.write(head_bytes(400, "Bad Request", [("Content-Type", "application/json"), ("Content-Length", len(body))]) + body)
            return
        old = st.mode
        st.set_mode(m, float(q.get("p", 1)), int(q.get("ms", DEFAULT_MS.get(m, 0))))
        body = json.dumps({"old": old, "mode": m, "p": st.p, "ms": st.ms}).encode()
    elif u.path == "/__chaos/stats":
        body = json.dumps({**st.stats, "mode": st.mode, "p": st.p, "ms": st.ms, "held_now": len(st.held)}).encode()
    elif u.path == "/__chaos/reset":
        st.reset_stats()
        body = b'{"reset":true}'
    else:
        body = b'{"error":"unknown control path"}'
    writer.write(head_bytes(200, "OK", [("Content-Type", "application/json"), ("Content-Length", len(body))]) + body)


async def handle(st, reader, writer):
    st.stats["connections"] += 1
    try:
        while True:
            if st.mode == "noread" and st.hit():
                st.count("noread")
                st.log("-", "-", "noread")
                await hold_until_peer_closes(st, writer, reading=False)
                return
            # Wait for the next head, or for a switch to noread (a pooled
            # keep-alive connection then stops being read as well).
            head = asyncio.ensure_future(read_head(reader))
            while True:
                changed = asyncio.ensure_future(st.mode_changed.wait())
                done, _ = await asyncio.wait({head, changed}, return_when=asyncio.FIRST_COMPLETED)
                if head in done:
                    changed.cancel()
                    break
                if st.mode == "noread" and st.hit():
                    head.cancel()
                    st.count("noread")
                    st.log("-", "-", "noread")
                    await hold_until_peer_closes(st, writer, reading=False)
                    return
            try:
                method, target, headers = head.result()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
                return
            path = urlsplit(target).path
            st.stats["requests"] += 1
            outcome = "ok"
            if st.mode in ("latency", "reset", "hang", "slowbody", "truncate") and st.hit():
                outcome = st.mode
            st.count(outcome)
            st.log(method, path, outcome)

            if outcome == "reset":
                rst_close(writer)
                return
            await read_body(reader, headers)
            if outcome == "hang":
                await hold_until_peer_closes(st, writer, reading=True, reader=reader)
                return

            q = {k: v[-1] for k, v in parse_qs(urlsplit(target).query).items()}
            if path == "/jwks.json" and st.jwks_path:
                with open(st.jwks_path, "rb") as f:
                    body = f.read()
                ctype = "application/json"
            elif path == "/healthz":
                body = b"ok\n"
                ctype = "text/plain"
            else:
                size = int(q.get("size", 256))
                body = (b"0123456789abcdef" * (size // 16 + 1))[:size]
                ctype = "application/octet-stream"
            delay = int(q.get("delay", 0)) / 1000
            if outcome == "latency":
                delay += st.ms / 1000
            if delay:
                await asyncio.sleep(delay)
            close = headers.get("connection", "").lower() == "close"
            resp_headers = [
                ("Content-Type", ctype),
                ("Content-Length", len(body)),
                ("X-Chaos-Target", st.name),
                ("X-Chaos-Len", len(body)),
            ]
            if close:
                resp_headers.append(("Connection", "close"))
            writer.write(head_bytes(200, "OK", resp_headers))
            if outcome == "truncate":
                writer.write(body[: len(body) // 2])
                await writer.drain()
                writer.close()
                return
            if outcome == "slowbody":
                await writer.drain()
                pieces = 10
                step = max(1, len(body) // pieces)
                for i in range(0, len(body), step):
                    writer.write(body[i : i + step])
                    await writer.drain()
                    await asyncio.sleep(st.ms / 1000 / pieces)
            else:
                writer.write(body)
                await writer.drain()
            if close:
                writer.close()
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        if not writer.transport.is_closing():
            writer.transport.close()


async def handle_control(st, reader, writer):
    try:
        while True:
            try:
                _method, target, headers = await read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
                return
            await read_body(reader, headers)
            await control(st, writer, target)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.transport.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--control", type=int, required=True, help="control port")
    ap.add_argument("--name", default="upstream")
    ap.add_argument("--log")
    ap.add_argument("--jwks")
    args = ap.parse_args()
    st = State(args.name, args.log, args.jwks)
    server = await asyncio.start_server(lambda r, w: handle(st, r, w), args.host, args.port, backlog=1024, reuse_address=True)
    ctl = await asyncio.start_server(lambda r, w: handle_control(st, r, w), args.host, args.control, reuse_address=True)
    print(f"faulty {args.name} listening on {args.host}:{args.port}, control {args.control}", file=sys.stderr, flush=True)
    async with server, ctl:
        await asyncio.gather(server.serve_forever(), ctl.serve_forever())


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
