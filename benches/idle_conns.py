#!/usr/bin/env python3
"""Opens N keep-alive connections to HOST:PORT, makes one `GET PATH` on each
(reading the whole response), then keeps them all open and idle.

Prints `READY ok=N failed=M` once every connection has had its answer, then
waits until HOLD seconds have passed or stdin is closed, and closes the
connections with a reset (SO_LINGER 0) so that no TIME_WAIT sockets use up the
ephemeral ports for the next target. Used by benches/compare.sh (idle10k);
needs `ulimit -n` above N.

Usage: idle_conns.py HOST PORT N [HOLD_SECONDS=60] [PATH=/]
"""

import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from sockets import reset_on_close  # noqa: E402


async def one(host, port, path, sem, held):
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await asyncio.wait_for(reader.readexactly(length), 10)
        except BaseException:
            abort(writer)
            raise
        held.append(writer)
        if status != 200:
            raise RuntimeError(f"status {status}")


def abort(writer):
    reset_on_close(writer)
    writer.close()


async def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    hold = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
    path = sys.argv[5] if len(sys.argv) > 5 else "/"
    sem = asyncio.Semaphore(256)
    held = []
    results = await asyncio.gather(*(one(host, port, path, sem, held) for _ in range(n)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    print(f"READY ok={n - len(failed)} failed={len(failed)}", flush=True)
    if failed:
        print(f"first failure: {failed[0]!r}", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    try:
        await asyncio.wait_for(stdin_closed, hold)
    except asyncio.TimeoutError:
        pass
    for w in held:
        abort(w)
    print("CLOSED", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
