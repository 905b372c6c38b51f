"""Upstream connections (trio shell): non-blocking sockets, waits with deadlines, and a
keep-alive pool per endpoint.

Speed: a socket operation is tried at once and only waits through trio (``wait_readable``,
``wait_writable``) when the kernel says EAGAIN, so a request whose bytes are already there
costs no round through the scheduler (the node proxy's reactor makes the same bargain).

The pool keeps at most ``max_idle`` idle connections per endpoint, each for at most
``idle_timeout`` seconds. A connection is taken only after a zero-wait peek says the upstream
has not closed it meanwhile (or sent bytes nobody asked for): a request never starts on a
connection known to be dead. ``drain(keep)`` closes the idle connections of endpoints that
left the config.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections import deque
from collections.abc import Collection

import trio

from mesh.http.balance import Endpoint
from mesh.http.h1 import Reader

RECV_SIZE = 65536
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class Timeout(Exception):
    """A wait reached its deadline."""


async def recv(sock: socket.socket, deadline: float) -> bytes:
    """Bytes from a non-blocking socket (b"" at EOF); Timeout at the deadline."""
    while True:
        try:
            return sock.recv(RECV_SIZE)
        except BlockingIOError:
            pass
        with trio.move_on_at(deadline) as scope:
            await trio.lowlevel.wait_readable(sock)
        if scope.cancelled_caught:
            raise Timeout


async def send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Write everything (backpressure: waits while the peer's window is full)."""
    try:
        n = sock.send(data)
    except BlockingIOError:
        n = 0
    if n == len(data):
        return
    view = memoryview(data)[n:]
    while view:
        with trio.move_on_at(deadline) as scope:
            await trio.lowlevel.wait_writable(sock)
        if scope.cancelled_caught:
            raise Timeout
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            continue


def close(sock: socket.socket, *, reset: bool = False) -> None:
    """Close a socket another task may be waiting on; ``reset`` sends a RST (an abort)."""
    with contextlib.suppress(OSError):
        if reset:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    with contextlib.suppress(OSError, ValueError):
        trio.lowlevel.notify_closing(sock)
    sock.close()


async def connect(endpoint: Endpoint, deadline: float) -> socket.socket:
    """A connected non-blocking socket, or OSError (Timeout past the deadline)."""
    family = socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(endpoint)
        if err == errno.EINPROGRESS:
            with trio.move_on_at(deadline) as scope:
                await trio.lowlevel.wait_writable(sock)
            if scope.cancelled_caught:
                raise Timeout
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        close(sock)
        raise
    return sock


class Upstream:
    """One connection to an endpoint and the reader of its responses."""

    __slots__ = ("endpoint", "idle_since", "reader", "reused", "sock")

    def __init__(self, sock: socket.socket, endpoint: Endpoint) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.reader = Reader("client")
        self.reused = False
        self.idle_since = 0.0


class Pool:
    def __init__(self, *, max_idle: int = 64, idle_timeout: float = 60.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[Endpoint, deque[Upstream]] = {}

    def idle(self, endpoint: Endpoint) -> int:
        return len(self._idle.get(endpoint, ()))

    def take(self, endpoint: Endpoint, now: float) -> Upstream | None:
        """An idle connection to ``endpoint`` that is still open, or None."""
        idle = self._idle.get(endpoint)
        while idle:
            up = idle.pop()  # the most recently used: the least likely to be timed out
            if now - up.idle_since < self.idle_timeout:
                try:
                    up.sock.recv(1, _PEEK)  # bytes or EOF: either way not reusable
                except BlockingIOError:
                    up.reused = True
                    return up
                except OSError:
                    pass
            close(up.sock)
        return None

    def put(self, up: Upstream, now: float) -> None:
        idle = self._idle.setdefault(up.endpoint, deque())
        if len(idle) >= self.max_idle:
            close(idle.popleft().sock)
        up.idle_since = now
        idle.append(up)

    def drain(self, keep: Collection[Endpoint]) -> None:
        """Close the idle connections of endpoints not in ``keep``."""
        for endpoint in [e for e in self._idle if e not in keep]:
            for up in self._idle.pop(endpoint):
                close(up.sock)

    def close(self) -> None:
        self.drain(())
