#!/usr/bin/env python3
"""Upload sink for benches/compare.sh: an HTTP/1.1 keep-alive server that reads
every byte of each request body (Content-Length framing), throws it away, and
answers 200 "ok\\n" only once the whole body has arrived.

Why not nginx `return 200`: nginx answers before it has drained the body (it
discards the rest afterwards, 4 KiB per read), so a streaming proxy and the
client would see the response while still sending, which wrk does not handle
(it stops sending requests on that connection). Answering after the last byte
makes every proxy carry the whole body before the clock stops, and counting
the bytes proves it did.

GET /stats answers `requests=N bytes=M` (bodies fully received so far).
One thread, non-blocking sockets, 256 KiB reads: the Python overhead per read
is small next to the kernel's copy of 256 KiB.

Usage: upload_sink.py PORT
"""

import selectors
import socket
import sys

READ_SIZE = 256 * 1024
MAX_HEAD = 64 * 1024


class Conn:
    __slots__ = ("sock", "head", "remaining", "out")

    def __init__(self, sock):
        self.sock = sock
        self.head = b""
        self.remaining = -1  # -1: reading a request head
        self.out = b""


def main():
    port = int(sys.argv[1])
    stats = {"requests": 0, "bytes": 0}
    sel = selectors.DefaultSelector()
    # Both loopbacks: `localhost` is 127.0.0.1 and ::1 to a DNS target.
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            lsock = socket.socket(family, socket.SOCK_STREAM)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((host, port))
        except OSError:
            if family == socket.AF_INET:
                raise
            continue
        lsock.listen(1024)
        lsock.setblocking(False)
        sel.register(lsock, selectors.EVENT_READ, "listener")
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)

    def close(c):
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def respond(c, status, body):
        c.out += (
            b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        flush(c)

    def flush(c):
        try:
            n = c.sock.send(c.out)
            c.out = c.out[n:]
        except BlockingIOError:
            pass
        sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0), c)

    def on_head(c):
        """Parses complete heads in c.head; returns False to close."""
        while c.remaining < 0:
            end = c.head.find(b"\r\n\r\n")
            if end < 0:
                return len(c.head) <= MAX_HEAD
            head, rest = c.head[:end], c.head[end + 4 :]
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            method = parts[0]
            target = parts[1] if len(parts) > 1 else b"/"
            length = 0
            expect = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"expect" and value.strip().lower() == b"100-continue":
                    expect = True
                elif name == b"transfer-encoding":
                    respond(c, b"411 Length Required", b"send content-length\n")
                    return False
            if method == b"GET" and target == b"/stats":
                body = b"requests=%d bytes=%d\n" % (stats["requests"], stats["bytes"])
                respond(c, b"200 OK", body)
                c.head = rest
                continue
            if expect and length > len(rest):
                c.out += b"HTTP/1.1 100 Continue\r\n\r\n"
            take = min(length, len(rest))
            c.remaining = length - take
            stats["bytes"] += take
            c.head = rest[take:]
            if c.remaining == 0:
                finish(c)
        return True

    def finish(c):
        stats["requests"] += 1
        c.remaining = -1
        respond(c, b"200 OK", b"ok\n")

    while True:
        for key, events in sel.select():
            if key.data == "listener":
                try:
                    s, _ = key.fileobj.accept()
                except BlockingIOError:
                    continue
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(s, selectors.EVENT_READ, Conn(s))
                continue
            c = key.data
            if events & selectors.EVENT_WRITE and c.out:
                flush(c)
            if not events & selectors.EVENT_READ:
                continue
            try:
                if c.remaining > 0:
                    n = c.sock.recv_into(view, min(READ_SIZE, c.remaining))
                else:
                    n = c.sock.recv_into(view, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                close(c)
                continue
            if n == 0:
                close(c)
                continue
            if c.remaining > 0:
                c.remaining -= n
                stats["bytes"] += n
                if c.remaining == 0:
                    finish(c)
                continue
            c.head += bytes(view[:n])
            if not on_head(c):
                close(c)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
