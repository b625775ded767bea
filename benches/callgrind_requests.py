#!/usr/bin/env python3
"""Instructions per request of a tollgate running under callgrind.

Start the gateway as
    valgrind --tool=callgrind --callgrind-out-file=DIR/cg.%p BIN --config ... &
then run this script with the gateway's PID: it sends WARMUP requests on one
keep-alive connection, zeroes callgrind's counters (`callgrind_control -z`),
sends COUNT more, dumps (`callgrind_control -d`) and prints the instructions
of the measured stretch divided by COUNT. Only the gateway's own instructions
count (the backends are not under callgrind), so the backend's speed does not
matter; the figure repeats within a fraction of a percent.

--key decides the Idempotency-Key header: none, fresh (a new key per request:
the first-request path) or same (one key: every request after the first is a
replay).

--query fresh appends `?q=<a new value per request>` to the path: on a cached
route every request is then a miss that is stored (the cost of a miss); the
same flag on a plain route gives the like-for-like baseline.

Usage: callgrind_requests.py --pid PID --dir DIR --port PORT --path /pay
           [--method POST] [--body TEXT] [--key none|fresh|same] [--query none|fresh]
           [--warmup 2000] [--count 10000]
"""

import argparse
import glob
import os
import socket
import subprocess
import time


def read_response(sock, buf):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the gateway closed the connection")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the gateway closed the connection mid-body")
        rest += chunk
    return status, rest[length:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--method", default="GET")
    p.add_argument("--body", default="")
    p.add_argument("--key", choices=["none", "fresh", "same"], default="none")
    p.add_argument("--query", choices=["none", "fresh"], default="none")
    p.add_argument("--warmup", type=int, default=2000)
    p.add_argument("--count", type=int, default=10000)
    a = p.parse_args()

    sock = socket.create_connection(("127.0.0.1", a.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = a.body.encode()
    run = f"{os.getpid()}-{time.time_ns()}"
    buf = b""
    statuses = {}

    def send(i):
        nonlocal buf
        target = a.path if a.query == "none" else f"{a.path}?q={run}-{i}"
        lines = [
            f"{a.method} {target} HTTP/1.1",
            "Host: bench",
            f"Content-Length: {len(body)}",
        ]
        if body:
            lines.append("Content-Type: application/json")
        if a.key == "fresh":
            lines.append(f"Idempotency-Key: {run}-{i}")
        elif a.key == "same":
            lines.append(f"Idempotency-Key: {run}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        status, buf = read_response(sock, buf)
        statuses[status] = statuses.get(status, 0) + 1

    for i in range(a.warmup):
        send(i)
    subprocess.run(["callgrind_control", "-z", str(a.pid)], check=True, capture_output=True)
    before = set(glob.glob(os.path.join(a.dir, "*")))
    statuses.clear()
    for i in range(a.warmup, a.warmup + a.count):
        send(i)
    subprocess.run(["callgrind_control", "-d", str(a.pid)], check=True, capture_output=True)
    deadline = time.time() + 60
    while True:
        new = set(glob.glob(os.path.join(a.dir, "*"))) - before
        if new:
            break
        if time.time() > deadline:
            raise SystemExit("no callgrind dump appeared")
        time.sleep(0.2)
    dump = max(new, key=os.path.getmtime)
    time.sleep(0.5)  # let callgrind finish writing
    summary = None
    with open(dump) as f:
        for line in f:
            if line.startswith("summary:"):
                summary = int(line.split()[1])
    if summary is None:
        raise SystemExit(f"no summary line in {dump}")
    print(f"{a.method} {a.path} key={a.key} query={a.query}: {summary / a.count:,.0f} instructions/request "
          f"(statuses {statuses}, dump {os.path.basename(dump)})")


if __name__ == "__main__":
    main()
