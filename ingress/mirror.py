"""Request mirroring (Gateway API RequestMirror): a copy of the request to another backend,
whose answer is read and dropped.

The copy never delays or fails the real request: it runs as its own trio task, started after
the decision, bounded in number (``MAX_IN_FLIGHT``; beyond that, copies are skipped and
counted) and in time (``TIMEOUT`` for the whole exchange). Only requests without a body are
copied: the body is streamed to the real backend as it arrives and is not kept for a second
reader (mirrored POSTs are the documented gap).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence

import trio

from mesh.http.events import CLOSED, NEED_DATA, EndOfMessage, Request
from mesh.http.h1 import Reader, request_head
from mesh.http.pool import Timeout, close, connect, recv, send_all

log = logging.getLogger("mesh.ingress.mirror")

MAX_IN_FLIGHT = 64
TIMEOUT = 10.0
_HOP = frozenset({b"connection", b"keep-alive", b"te", b"upgrade", b"proxy-connection"})


class Mirrors:
    def __init__(self) -> None:
        self.in_flight = 0
        self.sent = 0
        self.skipped = 0  # over MAX_IN_FLIGHT, or a request with a body
        self.failed = 0

    def start(
        self, req: Request, target: bytes, copies: Sequence[tuple[str, tuple[tuple[str, int], ...]]]
    ) -> None:
        """Send a copy of ``req`` to one endpoint of each mirror backend, in the background."""
        for _backend, endpoints in copies:
            if req.length != 0 or self.in_flight >= MAX_IN_FLIGHT or not endpoints:
                self.skipped += 1
                continue
            fields = [(n, v) for n, v in req.headers if n not in _HOP]
            fields.append((b"connection", b"close"))
            head = request_head(req.method, target, fields)
            self.in_flight += 1
            trio.lowlevel.spawn_system_task(self._copy, random.choice(endpoints), head, req.method)

    async def _copy(self, endpoint: tuple[str, int], head: bytes, method: bytes) -> None:
        deadline = trio.current_time() + TIMEOUT
        sock = None
        try:
            sock = await connect(endpoint, TIMEOUT, deadline)
            await send_all(sock, head, math.inf, deadline)
            reader = Reader("client")
            reader.next_message(method)
            while True:
                ev = reader.next_event()
                if ev is NEED_DATA:
                    reader.feed(await recv(sock, math.inf, deadline))
                elif ev is CLOSED or type(ev) is EndOfMessage:
                    break
            self.sent += 1
        except Exception as exc:  # a system task must never raise: it would end the process
            self.failed += 1
            if not isinstance(exc, OSError | Timeout):
                log.debug("mirror copy failed", extra={"error": repr(exc)})
        finally:
            self.in_flight -= 1
            if sock is not None:
                close(sock)
