#!/usr/bin/env python3
"""Checks that faulty.py does what each mode promises (stdlib unittest).

    python3 benches/chaos/test_faulty.py        # about 10 s
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, path, timeout=3.0, body=None):
    """One raw HTTP/1.1 request; returns (head, body bytes, how it ended)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    method = "POST" if body is not None else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    s.sendall(head.encode() + b"\r\n" + (body or b""))
    data = b""
    end = "eof"
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        end = "reset"
    except socket.timeout:
        end = "timeout"
    finally:
        s.close()
    h, _, b = data.partition(b"\r\n\r\n")
    return h.decode("latin-1"), b, end


class FaultyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.port, cls.ctl = free_port(), free_port()
        cls.tmp = tempfile.mkdtemp(prefix="faulty-test-")
        cls.log = os.path.join(cls.tmp, "req.log")
        cls.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "faulty.py"), "--port", str(cls.port), "--control", str(cls.ctl),
             "--name", "t", "--log", cls.log],
            stderr=subprocess.DEVNULL,
        )
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", cls.ctl), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(5)

    def mode(self, m, **kw):
        q = "&".join([f"m={m}"] + [f"{k}={v}" for k, v in kw.items()])
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ctl}/__chaos/mode?{q}", timeout=2) as r:
            return json.load(r)

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ctl}/__chaos/stats", timeout=2) as r:
            return json.load(r)

    def tearDown(self):
        self.mode("normal")

    def test_normal_answers_the_size_asked(self):
        head, body, end = request(self.port, "/x?size=100")
        self.assertIn("200 OK", head)
        self.assertIn("X-Chaos-Len: 100", head)
        self.assertEqual(len(body), 100)
        self.assertEqual(end, "eof")

    def test_latency_delays_the_head(self):
        self.mode("latency", ms=400)
        t = time.monotonic()
        head, body, _ = request(self.port, "/x?size=10")
        self.assertGreaterEqual(time.monotonic() - t, 0.38)
        self.assertIn("200 OK", head)
        self.assertEqual(len(body), 10)

    def test_reset_sends_rst_before_any_answer(self):
        self.mode("reset")
        head, body, end = request(self.port, "/x", body=b"x" * 1000)
        self.assertEqual((head, body, end), ("", b"", "reset"))

    def test_truncate_sends_half_the_declared_body(self):
        self.mode("truncate")
        head, body, end = request(self.port, "/x?size=1000")
        self.assertIn("Content-Length: 1000", head)
        self.assertEqual(len(body), 500)

    def test_slowbody_streams_the_whole_body_slowly(self):
        self.mode("slowbody", ms=500)
        t = time.monotonic()
        head, body, _ = request(self.port, "/x?size=1000")
        self.assertGreaterEqual(time.monotonic() - t, 0.45)
        self.assertEqual(len(body), 1000)

    def assert_held_until_the_peer_leaves(self, mode):
        """In `mode` a request gets nothing at all, and the target counts the
        connection it held once the client gives up and closes it."""
        self.mode(mode)
        before = self.stats()["held_released_by_peer"]
        head, body, end = request(self.port, "/x", timeout=0.5)
        self.assertEqual((head, body, end), ("", b"", "timeout"))
        deadline = time.monotonic() + 5
        while self.stats()["held_released_by_peer"] != before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.stats()["held_released_by_peer"], before + 1)

    def test_hang_never_answers_and_sees_the_peer_leave(self):
        self.assert_held_until_the_peer_leaves("hang")

    def test_noread_holds_new_connections_unread(self):
        self.assert_held_until_the_peer_leaves("noread")

    def test_partial_share_hits_some(self):
        self.mode("reset", p=0.5)
        ends = [request(self.port, "/x")[2] for _ in range(40)]
        self.assertTrue(5 < ends.count("reset") < 35, ends)

    def test_log_has_one_line_per_request(self):
        request(self.port, "/logged?size=1")
        with open(self.log) as f:
            lines = [l.split("\t") for l in f.read().splitlines()]
        self.assertIn(["GET", "/logged", "ok"], [l[1:] for l in lines])


if __name__ == "__main__":
    unittest.main(verbosity=2)
