"""The HTTP/1.1 server of the L7 engine (trio shell): accept loop, keep-alive, pipelining,
limits and timeouts, and the engine's own responses.

Theory of operation. One task per client connection runs a loop: read a request head, ask the
router (``self.router``, swapped atomically on a config change) for a decision, answer it
(``Respond``) or proxy it (``forward``), and go on with the next request when both sides keep
the connection. Pipelined requests wait in the reader's buffer and are answered in order,
each after the previous response is complete.

Timeouts (``Limits``): an idle keep-alive connection is closed silently after
``idle_timeout``; once the first byte of a head has arrived the whole head must arrive within
``header_timeout`` (else 408 ``request-timeout``); each read of a request body must come within
``body_timeout`` (else 408, and the upstream request is aborted).

CONNECT and TRACE are refused (405 ``method-not-allowed``, connection closed): a reverse
proxy opens no tunnel to where a client says, and echoes no request (cross-site tracing).
Malformed requests get the codec's status (400, 431, 501, 505) with ``x-mesh-reason`` and a
closed connection; as they fail while the head is parsed, before routing, none of their bytes
reach an upstream. Every response the engine makes itself is counted by reason
(``self.reasons``, the metric label).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import select
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any

import trio

from mesh.http import reactor
from mesh.http.decision import Peer, Respond, Router
from mesh.http.errors import (
    REFUSED_METHODS,
    DownstreamError,
    HttpError,
    ProtocolError,
    error_response,
    phrase,
)
from mesh.http.events import CLOSED, NEED_DATA, Request
from mesh.http.forward import Abort, HandedOff, forward
from mesh.http.h1 import MAX_FIELDS, MAX_HEAD, Reader, response_head
from mesh.http.pool import DEADLINES, RECV_SIZE, Pool, Timeout, close, recv, send_all
from mesh.http.reactor import Reactor, pause

log = logging.getLogger("mesh.http.server")

_ACCEPT_BACKOFF = 0.1  # seconds a listener rests after accept failed (EMFILE and friends)
_ERROR_WRITE = 5.0  # seconds allowed to write an error response
_IN = select.EPOLLIN


@dataclass(frozen=True, slots=True)
class Limits:
    max_head: int = MAX_HEAD
    max_fields: int = MAX_FIELDS
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    body_timeout: float = 60.0
    trust_downstream: bool = False  # keep X-Forwarded-* from clients (behind a trusted proxy)
    forwarded: bool = False  # add RFC 7239 Forwarded


class HttpServer:
    def __init__(
        self,
        router: Router,
        *,
        limits: Limits | None = None,
        pool: Pool | None = None,
        scheme: bytes = b"http",
        use_reactor: bool = True,
    ) -> None:
        self.router = router
        self.limits = limits or Limits()
        self.pool = pool or Pool()
        self.scheme = scheme
        self.use_reactor = use_reactor  # connections driven by mesh.http.reactor, not trio
        self.fast = True  # the common exchange's fast path (mesh.http.fastpath); off: general only
        self.reasons: Counter[str] = Counter()
        self.connections = 0

    async def listen(
        self, host: str, port: int, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        await self.serve(sock, task_status=task_status)

    async def serve(
        self, sock: socket.socket, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept on a listening socket until cancelled; started with its address."""
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # accepted sockets inherit it (Linux)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(DEADLINES.run)
                loop = Reactor() if self.use_reactor else None
                if loop is not None:
                    await nursery.start(loop.run)
                address = sock.getsockname()
                port = address[1]  # every connection accepted here arrived on this port
                task_status.started(address)
                while True:
                    try:
                        conn, addr = sock.accept()
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(sock)
                        continue
                    except OSError as exc:
                        if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                            continue
                        log.warning("accept failed", extra={"error": str(exc)})
                        await trio.sleep(_ACCEPT_BACKOFF)
                        continue
                    conn.setblocking(False)
                    if loop is not None:
                        loop.spawn(self._connection(conn, addr, port))
                    else:
                        nursery.start_soon(self._connection, conn, addr, port)
        finally:
            close(sock)
            self.pool.close()

    async def _connection(
        self, sock: socket.socket, addr: Any, port: int = 0, first: bytes = b""
    ) -> None:
        """``port``: where it arrived (0: ask the socket); ``first``: bytes already read from
        it (the plaintext that came with a TLS handshake)."""
        limits = self.limits
        reader = Reader("server", max_head=limits.max_head, max_fields=limits.max_fields)
        if first:
            reader.feed(first)
        peer = Peer(addr[0], addr[1], self.scheme, port or sock.getsockname()[1])
        self.connections += 1
        reset, owned = False, True
        idle = limits.idle_timeout
        try:
            while True:
                # The usual case inline: between requests nothing is buffered; the next
                # request's whole head comes in one read. Anything else: ``_read_head``.
                if not reader.buffered:
                    try:
                        loop = reactor.CURRENT
                        if loop is not None:  # pool.recv inlined: a coroutine less a request
                            await reactor.Wait(sock, sock.fileno(), _IN, loop.now + idle)
                            try:
                                data = sock.recv(RECV_SIZE)
                            except BlockingIOError:  # woken by a spent edge: wait again
                                data = await recv(sock, idle)
                        else:
                            data = await recv(sock, idle, wait_first=True)
                    except Timeout:
                        return
                    reader.feed(data)
                try:
                    ev = reader.next_event()
                except ProtocolError as exc:
                    await self._reject(sock, DownstreamError.from_protocol(exc))
                    return
                if type(ev) is Request:
                    req: Request | None = ev
                elif ev is CLOSED:
                    return
                else:
                    req = await self._read_head(sock, reader)
                if req is None:
                    return
                if req.method in REFUSED_METHODS:
                    # CONNECT: a reverse proxy tunnels nowhere a client names (RFC 9110
                    # section 9.3.6 lets a server refuse; nginx answers 405). TRACE: an
                    # upstream's echo of the request would hand a page's script the cookies
                    # and credentials it may not read (cross-site tracing; nginx answers 405).
                    # Closed after: the client may already be sending what it meant for the
                    # tunnel, and a TRACE has no content to wait for (section 9.3.8).
                    err = DownstreamError(
                        "method-not-allowed", f"{req.method.decode()} is not served here"
                    )
                    await self._reject(sock, err)
                    return
                if not await self._handle(sock, reader, req, peer):
                    return
                reader.next_message()
                if reader.buffered:  # pipelined: let other connections have a turn
                    await pause()
        except HandedOff:
            owned = False  # a tunnel owns the socket now
        except Abort:
            reset = True
        except OSError:
            pass
        finally:
            self.connections -= 1
            if owned:
                close(sock, reset=reset)

    async def _read_head(self, sock: socket.socket, reader: Reader) -> Request | None:
        limits = self.limits
        timeout, deadline = limits.idle_timeout, math.inf
        started = False
        while True:
            try:
                ev = reader.next_event()
            except ProtocolError as exc:
                await self._reject(sock, DownstreamError.from_protocol(exc))
                return None
            if ev is NEED_DATA:
                if not started and reader.buffered:
                    started = True
                    timeout = math.inf
                    deadline = trio.current_time() + limits.header_timeout
                try:
                    # between requests the next one is rarely there yet: wait, then read
                    data = await recv(sock, timeout, deadline, wait_first=not started)
                except Timeout:
                    if started:
                        err = DownstreamError("request-timeout", "the request head came too slowly")
                        await self._reject(sock, err)
                    return None
                reader.feed(data)
                continue
            if ev is CLOSED:
                return None
            assert isinstance(ev, Request)
            return ev

    async def _handle(self, sock: socket.socket, reader: Reader, req: Request, peer: Peer) -> bool:
        """Answer one request; True when the connection may carry another."""
        try:
            decision = self.router(req, peer)
            if isinstance(decision, Respond):
                return await self._respond(sock, reader, req, decision)
            return await forward(self, sock, reader, req, peer, decision)
        except HttpError as err:
            keep = req.keep_alive and reader.message_done and err.blame != "downstream"
            await self._error(sock, err, close=not keep)
            return keep
        except (Abort, HandedOff, OSError):
            raise
        except Exception:  # a bug must cost one request, never the server
            log.exception("request failed")
            await self._error(sock, HttpError("internal-error"), close=True)
            return False

    async def _respond(self, sock: socket.socket, reader: Reader, req: Request, r: Respond) -> bool:
        keep = req.keep_alive and req.length == 0  # an unread body ends the connection
        fields = list(r.headers)
        if r.reason:
            fields.append((b"x-mesh-reason", r.reason.encode()))
            self.reasons[r.reason] += 1
        fields.append((b"content-length", b"%d" % len(r.body)))
        if not keep:
            fields.append((b"connection", b"close"))
        body = b"" if req.method == b"HEAD" else r.body
        head = response_head(r.status, phrase(r.status) or b"OK", fields)
        await send_all(sock, head + body, self.limits.body_timeout)
        return keep

    async def _reject(self, sock: socket.socket, err: HttpError) -> None:
        """A request refused before it was handled (a malformed or slow head, CONNECT): the
        engine's answer, the connection then closed. A subclass also counts it (its metrics)."""
        await self._error(sock, err, close=True)

    async def _error(self, sock: socket.socket, err: HttpError, *, close: bool) -> None:
        self.reasons[err.reason] += 1
        data = error_response(err.status, err.reason, close=close, message=str(err))
        with contextlib.suppress(OSError, Timeout):
            await send_all(sock, data, _ERROR_WRITE)
