"""Request mirroring (Gateway API RequestMirror): a copy of the request to another backend,
whose answer is read and dropped.

The copy never delays or fails the real request: it runs as its own trio task, started after
the decision (the route's percent was drawn by the planner), bounded in number
(``MAX_IN_FLIGHT``; beyond that, copies are skipped and counted) and in time (``TIMEOUT`` for
connecting, for each write, and for the answer once the request is whole).

A request with a body is copied with its body: the pieces reach the copy through a
:class:`~mesh.http.tee.Tee` as they go to the real backend (mesh.http.replay hands them
over), never read twice from the client and never held whole. A copy slower than the request
falls behind by at most ``MIRROR_BUFFER`` bytes; past that it is dropped (counted in
``dropped``) and its connection reset, so the mirror never receives a truncated request as
if complete; a request whose body did not end (the client went away) resets its copies too.
"""

from __future__ import annotations

import logging
import math
import random
import socket
from collections.abc import Sequence

import trio

from mesh.http.events import CLOSED, NEED_DATA, EndOfMessage, Request
from mesh.http.h1 import Reader, request_head
from mesh.http.pool import Timeout, close, connect, recv, send_all
from mesh.http.tee import MIRROR_BUFFER, Tee

log = logging.getLogger("mesh.ingress.mirror")

MAX_IN_FLIGHT = 64
TIMEOUT = 10.0
# Not passed to a copy: hop-by-hop fields, and Expect (the copy sends its body at once; the
# client's 100-continue was answered by the real exchange)
_HOP = frozenset({b"connection", b"keep-alive", b"te", b"upgrade", b"proxy-connection", b"expect"})


# Never dropped because the Connection field names them: the copy's framing and target
_KEPT = frozenset({b"content-length", b"transfer-encoding", b"host"})


def _connection_named(headers: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The fields the client's Connection field names, hop-by-hop too (RFC 9110 7.6.1)."""
    named = {t.strip().lower() for n, v in headers if n == b"connection" for t in v.split(b",")}
    return frozenset(named - _KEPT)


class _Dropped(Exception):
    """The copy fell too far behind the request, or the request's body did not end."""


class Mirrors:
    def __init__(self, buffer: int = MIRROR_BUFFER) -> None:
        self.buffer = buffer  # body bytes a copy may fall behind before it is dropped
        self.in_flight = 0
        self.sent = 0
        self.skipped = 0  # over MAX_IN_FLIGHT
        self.failed = 0
        self.dropped = 0  # a copy with a body that fell too far behind (or was cut short)

    def start(
        self, req: Request, target: bytes, copies: Sequence[tuple[str, tuple[tuple[str, int], ...]]]
    ) -> tuple[Tee, ...]:
        """Send a copy of ``req`` to one endpoint of each mirror backend, in the background;
        for a request with a body, the tees to feed its pieces to (then ``close`` each)."""
        tees: list[Tee] = []
        named = _connection_named(req.headers) if copies else frozenset()
        for _backend, endpoints in copies:
            if self.in_flight >= MAX_IN_FLIGHT or not endpoints:
                self.skipped += 1
                continue
            fields = [(n, v) for n, v in req.headers if n not in _HOP and n not in named]
            fields.append((b"connection", b"close"))
            head = request_head(req.method, target, fields)
            tee = None
            if req.length != 0:
                tee = Tee(self.buffer)
                tees.append(tee)
            self.in_flight += 1
            endpoint = random.choice(endpoints)
            trio.lowlevel.spawn_system_task(self._copy, endpoint, head, req.method, tee)
        return tuple(tees)

    async def _copy(
        self, endpoint: tuple[str, int], head: bytes, method: bytes, tee: Tee | None
    ) -> None:
        deadline = trio.current_time() + TIMEOUT
        sock = None
        try:
            sock = await connect(endpoint, TIMEOUT, deadline)
            if tee is None:
                await send_all(sock, head, math.inf, deadline)
            else:
                await _send_body(sock, head, tee)
                deadline = trio.current_time() + TIMEOUT  # for the answer
            reader = Reader("client")
            reader.next_message(method)
            while True:
                ev = reader.next_event()
                if ev is NEED_DATA:
                    reader.feed(await recv(sock, math.inf, deadline))
                elif ev is CLOSED or type(ev) is EndOfMessage:
                    break
            self.sent += 1
        except _Dropped:
            self.dropped += 1
            if sock is not None:
                close(sock, reset=True)  # never a truncated request that looks complete
                sock = None
        except Exception as exc:  # a system task must never raise: it would end the process
            self.failed += 1
            if not isinstance(exc, OSError | Timeout):
                log.debug("mirror copy failed", extra={"error": repr(exc)})
        finally:
            if tee is not None:
                tee.stop()
            self.in_flight -= 1
            if sock is not None:
                close(sock)


async def _send_body(sock: socket.socket, head: bytes, tee: Tee) -> None:
    """The head, then the body pieces as the tee receives them, until its end."""
    pending = head
    while True:
        if tee.dropped or tee.aborted:
            raise _Dropped
        pending += tee.take()
        if pending:
            await send_all(sock, pending, TIMEOUT)
            pending = b""
            continue
        if tee.ended:
            return
        wake = trio.Event()
        tee.waker = wake.set
        await wake.wait()
