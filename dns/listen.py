"""The server's sockets: one UDP and one TCP socket on the same address and port.

Port 0 asks for any port free for both (a few attempts: the UDP port the kernel picks may be
taken for TCP). With ``reuse_port`` both sockets join a SO_REUSEPORT group, so several worker
processes share the port and the kernel spreads flows over them.
"""

from __future__ import annotations

import errno
import socket

BIND_ATTEMPTS = 20


def bind(host: str, port: int, *, reuse_port: bool) -> tuple[socket.socket, socket.socket]:
    """A non-blocking UDP socket and a listening TCP socket on ``host`` and one port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(BIND_ATTEMPTS):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.setblocking(False)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            udp.bind((host, port))
            tcp.bind((host, udp.getsockname()[1]))
        except OSError as exc:
            udp.close()
            tcp.close()
            if port != 0 or exc.errno != errno.EADDRINUSE:
                raise
            continue
        tcp.listen(128)
        return udp, tcp
    raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {host}")
