"""Upstream connections (trio shell): non-blocking sockets, waits with deadlines, and a
keep-alive pool per endpoint.

Speed: a socket operation is tried at once and only waits through trio (``wait_readable``,
``wait_writable``) when the kernel says EAGAIN, so a request whose bytes are already there
costs no round through the scheduler (the node proxy's reactor makes the same bargain).

The pool keeps at most ``max_idle`` idle connections per endpoint, each for at most
``idle_timeout`` seconds. A connection is taken only when nothing happened on it while it was
idle (the upstream closing it, or sending bytes nobody asked for): a request never starts on
a connection known to be dead. Inside a reactor its edges tell (``Reactor.idle_event``, no
system call); when they say something happened, or outside a reactor, a zero-wait peek asks
the kernel. ``drain(keep)`` closes the idle connections of endpoints that
left the config.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import socket
from collections import deque
from collections.abc import Callable, Collection

import trio

from mesh.http import reactor
from mesh.http.balance import Endpoint
from mesh.http.h1 import Reader
from mesh.http.reactor import Timeout

__all__ = [
    "DEADLINES",
    "RECV_SIZE",
    "Pool",
    "Timeout",
    "Upstream",
    "close",
    "connect",
    "recv",
    "send_all",
]

RECV_SIZE = 65536
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT


class Deadlines:
    """Deadlines of socket waits that blocked, enforced by one task (``run``) that wakes every
    ``tick`` seconds: an expired wait is woken with trio's ``notify_closing`` and raises
    Timeout. A wait costs two dict operations instead of a cancel scope (entering and
    leaving one costs more than parsing a request); a timeout fires up to ``tick`` late.
    Without a running task (a client used alone) waits fall back to cancel scopes."""

    def __init__(self, tick: float = 0.05) -> None:
        self.tick = tick
        self.running = 0
        self.now = 0.0  # a coarse clock (updated every tick while running)
        self._blocked: dict[int, tuple[float, socket.socket]] = {}
        self._expired: set[int] = set()
        # The run and the event of the task that ticks; the event is set when it ends.
        self._ticking: tuple[trio.lowlevel.TrioToken, trio.Event] | None = None
        self.ticks = 0  # ticks done (how a test sees that one task ticks, not two)

    async def run(self) -> None:
        """The tick, until cancelled. Every server starts one (a gateway runs several
        listeners): only one of them ticks at a time, the others wait and the next one takes
        over when it ends (its server stopped), so the tick never doubles and never stops
        while a server runs."""
        self.running += 1
        # Not what an earlier trio run left: each run's clock has its own origin, and a stale
        # ``now`` would age (or rejuvenate) every connection pooled before the first tick.
        self.now = trio.current_time()
        try:
            token = trio.lowlevel.current_trio_token()
            # (a task of an earlier trio.run that never finished does not count)
            while self._ticking is not None and self._ticking[0] is token:
                await self._ticking[1].wait()  # set when the task that ticks ends
            done = trio.Event()
            self._ticking = (token, done)
            try:
                while True:
                    await trio.sleep(self.tick)
                    self.now = now = trio.current_time()
                    self.ticks += 1
                    for fd, (deadline, sock) in list(self._blocked.items()):
                        if deadline <= now:
                            self._expired.add(fd)
                            trio.lowlevel.notify_closing(sock)
            finally:
                if self._ticking is not None and self._ticking[1] is done:
                    self._ticking = None
                done.set()
        finally:
            self.running -= 1

    def clock(self) -> float:
        """A coarse now (good to a tick) for timestamps that need no precision."""
        return self.now if self.running else trio.current_time()

    async def wait(
        self, sock: socket.socket, seconds: float, deadline: float, writable: bool
    ) -> None:
        """Wait until ``sock`` is ready, for at most ``seconds`` from now and not past
        ``deadline`` (the clock is read only here, when a wait really blocks)."""
        waiter = trio.lowlevel.wait_writable if writable else trio.lowlevel.wait_readable
        loop = reactor.CURRENT
        if loop is not None:  # driven by a reactor: it enforces the deadline, on its clock
            if seconds != math.inf:
                deadline = min(deadline, loop.now + seconds)
            await reactor.Wait(sock, sock.fileno(), _OUT if writable else _IN, deadline)
            return
        if seconds != math.inf:
            deadline = min(deadline, trio.current_time() + seconds)
        if deadline == math.inf:
            await waiter(sock)
            return
        if not self.running:
            with trio.move_on_at(deadline) as scope:
                await waiter(sock)
            if scope.cancelled_caught:
                raise Timeout
            return
        fd = sock.fileno()
        self._blocked[fd] = (deadline, sock)
        try:
            await waiter(sock)
        except trio.ClosedResourceError:
            if fd in self._expired:
                raise Timeout from None
            raise OSError(errno.EBADF, "the socket was closed") from None
        finally:
            del self._blocked[fd]
            self._expired.discard(fd)


DEADLINES = Deadlines()  # one per process: its task runs while any server runs


async def recv(
    sock: socket.socket, seconds: float, deadline: float = math.inf, *, wait_first: bool = False
) -> bytes:
    """Bytes from a non-blocking socket (b"" at EOF); Timeout after ``seconds`` or
    at ``deadline``. ``wait_first``: the peer has surely not answered yet (a request just
    sent), so skip the read that would only say EAGAIN."""
    if wait_first:
        loop = reactor.CURRENT
        if loop is not None:  # DEADLINES.wait inlined: one coroutine less per wait
            if seconds != math.inf:
                deadline = min(deadline, loop.now + seconds)
            await reactor.Wait(sock, sock.fileno(), _IN, deadline)
        else:
            await DEADLINES.wait(sock, seconds, deadline, False)
    while True:
        try:
            return sock.recv(RECV_SIZE)
        except BlockingIOError:
            pass
        await DEADLINES.wait(sock, seconds, deadline, False)


async def send_all(
    sock: socket.socket, data: bytes, seconds: float, deadline: float = math.inf
) -> None:
    """Write everything (backpressure: waits while the peer's window is full)."""
    try:
        n = sock.send(data)
    except BlockingIOError:
        n = 0
    if n == len(data):
        return
    view = memoryview(data)[n:]
    while view:
        await DEADLINES.wait(sock, seconds, deadline, True)
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
    loop = reactor.CURRENT
    if loop is None or not loop.watches(sock):
        # Wake trio's waiters on it, if any. A socket the running reactor watches has none
        # (its owner runs in the reactor), and trio's bookkeeping costs a system call.
        with contextlib.suppress(OSError, ValueError):
            trio.lowlevel.notify_closing(sock)
    sock.close()


def _tcp_socket(family: int) -> socket.socket:
    return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)


# Makes every upstream socket (a non-blocking TCP socket of a family). The cluster in a box
# replaces it with one that makes them in the box's node namespace (mesh.netns.socket_maker),
# where its gateway runs: the pods are reachable only from there.
new_socket: Callable[[int], socket.socket] = _tcp_socket


async def connect(endpoint: Endpoint, seconds: float, deadline: float = math.inf) -> socket.socket:
    """A connected non-blocking socket, or OSError (Timeout past the deadline). An endpoint
    carrying TLS settings gets a TLS socket after its handshake (TlsHandshakeError if not)."""
    family = socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET
    sock = new_socket(family)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(endpoint)
        if err == errno.EINPROGRESS:
            await DEADLINES.wait(sock, seconds, deadline, True)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        close(sock)
        raise
    tls = getattr(endpoint, "tls", None)  # a mesh.tls.upstream.TlsEndpoint: re-encryption
    if tls is not None:
        from mesh.http.upstream_tls import handshake

        return await handshake(sock, tls, seconds, deadline)
    return sock


class Upstream:
    """One connection to an endpoint and the reader of its responses."""

    __slots__ = ("endpoint", "fd", "idle_since", "reader", "reused", "sock")

    def __init__(self, sock: socket.socket, endpoint: Endpoint) -> None:
        self.sock = sock
        self.fd = sock.fileno()
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

    def take(self, endpoint: Endpoint, now: float | None = None) -> Upstream | None:
        """An idle connection to ``endpoint`` that is still open, or None."""
        idle = self._idle.get(endpoint)
        if idle and now is None:
            d = DEADLINES  # its clock() inlined: a call less per request
            now = d.now if d.running else trio.current_time()
        loop = reactor.CURRENT
        while idle:
            up = idle.pop()  # the most recently used: the least likely to be timed out
            if now - up.idle_since < self.idle_timeout:  # type: ignore[operator]
                sock = up.sock
                if loop is not None and loop.idle_event(sock, up.fd) is False:
                    up.reused = True
                    return up
                try:
                    sock.recv(1, _PEEK)  # bytes or EOF: either way not reusable
                except BlockingIOError:
                    if loop is not None:
                        loop.settle(up.fd)  # a spent edge (a response read in two pieces)
                    up.reused = True
                    return up
                except OSError:
                    pass
            close(up.sock)
        return None

    def put(self, up: Upstream, now: float | None = None) -> None:
        idle = self._idle.setdefault(up.endpoint, deque())
        if len(idle) >= self.max_idle:
            close(idle.popleft().sock)
        if now is None:
            d = DEADLINES
            now = d.now if d.running else trio.current_time()
        up.idle_since = now
        idle.append(up)

    def drain(self, keep: Collection[Endpoint]) -> None:
        """Close the idle connections of endpoints not in ``keep``."""
        for endpoint in [e for e in self._idle if e not in keep]:
            for up in self._idle.pop(endpoint):
                close(up.sock)

    def close(self) -> None:
        self.drain(())
