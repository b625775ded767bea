"""Socket helpers shared by the bench scripts."""

import socket
import struct


def reset_on_close(writer):
    """Makes closing the asyncio stream `writer` send a RST instead of a FIN
    (SO_LINGER 0): no TIME_WAIT left behind, or a reset a client must see."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
