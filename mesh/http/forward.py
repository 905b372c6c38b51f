"""Proxy one exchange (trio shell): given a Forward decision, send the request to an endpoint
and the response back, streaming both bodies with backpressure.

Theory of operation. The request head and whatever body bytes came with it leave in one
write; then body pieces are read from the client only as fast as the upstream takes them
(one piece in flight: a 1 GB upload never sits in memory). A request body that turns out
malformed (a bad chunk), too large or too slow aborts the upstream request with a reset: it
is never completed, and the bytes of an invalid piece are never sent (events are parsed
before anything queued is written). The response half is mesh.http.relay; the common
exchange (no request body, a pooled connection) is mesh.http.fastpath.

A request without a body that finds its pooled connection dead (reset or closed before any
response byte) is sent again once on a fresh connection when its method is idempotent
(RFC 9110 section 9.2.2): the pool already keeps known-dead connections out, this
covers the race where the upstream closes while the request is on its way.

A route with a retry policy or mirrors passes a ``SentBody`` (mesh.http.replay): each body
piece sent is offered to it (kept for a retry up to its limit, handed to mirror copies), and
a retry sends the upstream head with the body kept so far before reading on from the client.

Heads are forwarded as they came when nothing in them needs rewriting: the client's field
lines plus the proxy's own (``proxyheaders.plain_request_head``), and a response head with
its hop-by-hop lines cut out (``Reader.passthrough``). Both are validated by the strict codec
first; anything unusual takes the general path, which rebuilds the head field by field.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import trio

from mesh.http.client import acquire, pooled
from mesh.http.decision import NO_EDITS, Forward, Peer
from mesh.http.errors import DownstreamError, ProtocolError, UpstreamError
from mesh.http.events import CHUNKED, NEED_DATA, Data, EndOfMessage, Request
from mesh.http.fastpath import simple_exchange
from mesh.http.h1 import Reader, chunk, last_chunk, request_head
from mesh.http.pool import Timeout, Upstream, close, recv, send_all
from mesh.http.proxyheaders import plain_request_head, request_fields
from mesh.http.relay import FLUSH, Abort, HandedOff, Stale, relay_response, tunnel

if TYPE_CHECKING:
    from mesh.http.balance import Balancer, Endpoint
    from mesh.http.replay import SentBody
    from mesh.http.server import HttpServer

__all__ = ["Abort", "HandedOff", "forward", "tunnel"]

_simple = simple_exchange  # looked up here at each call: a test may wrap it

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _wants_upgrade(req: Request) -> bool:
    if req.http_version != b"1.1" or req.header(b"upgrade") is None:
        return False
    conn = req.header(b"connection") or b""
    return b"upgrade" in [t.strip() for t in conn.lower().split(b",")]


def forward(
    server: HttpServer,
    down: socket.socket,
    dreader: Reader,
    req: Request,
    peer: Peer,
    fwd: Forward,
    body: SentBody | None = None,
) -> Coroutine[Any, Any, bool]:
    """Proxy ``req``; (awaited) True when the client connection may carry another request.
    ``body``: keep the request body for a retry and hand it to mirror copies
    (mesh.http.replay); a retry passes the same one again.

    Not a coroutine function itself: what comes before the first wait is done here and the
    exchange's own coroutine is returned, so the common exchange (mesh.http.fastpath) runs
    one coroutine layer below the caller, not two (every wait of it resumes through each)."""
    limits = server.limits
    if fwd.max_body is not None and req.length > fwd.max_body:
        raise DownstreamError("body-too-large", "the request body is larger than allowed")
    head = None
    if (
        dreader.head_event is req
        and fwd.host is None
        and not limits.trust_downstream
        and not limits.forwarded
    ):  # the common request: its field lines go upstream as they came (see proxyheaders)
        head = plain_request_head(
            req, dreader.head_fields, fwd.target or req.target, peer, fwd.request_headers
        )
    # A plain request has no Upgrade field (hop-by-hop: it keeps a request off that path).
    upgrade = head is None and _wants_upgrade(req)
    if head is None:
        fields, _ = request_fields(
            req.headers,
            peer,
            host=fwd.host,
            upgrade=upgrade,
            trust_downstream=limits.trust_downstream,
            forwarded=limits.forwarded,
        )
        if req.length == CHUNKED:
            fields.append((b"transfer-encoding", b"chunked"))
        if fwd.request_headers is not NO_EDITS and fwd.request_headers:  # no __bool__ call
            fields = fwd.request_headers.apply(fields)
        head = request_head(req.method, fwd.target or req.target, fields)
    t = fwd.timeouts
    deadline = trio.current_time() + t.request if t.request is not None else math.inf
    retry = req.length == 0 and req.method in _IDEMPOTENT and not upgrade
    up, first = pooled(server.pool, fwd.upstream)
    if up is not None and up.reused and req.length == 0 and not upgrade and server.fast:
        # The common exchange (no request body, a pooled connection): mesh.http.fastpath;
        # a connection found dead there comes back to ``after_dead``.
        return _simple(server, down, dreader, req, fwd, up, head, deadline, retry)
    return _forward(
        server, down, dreader, req, fwd, up, first, head, deadline, upgrade, retry, body
    )


async def _forward(
    server: HttpServer,
    down: socket.socket,
    dreader: Reader,
    req: Request,
    fwd: Forward,
    up: Upstream | None,
    first: Endpoint | None,
    head: bytes,
    deadline: float,
    upgrade: bool,
    retry: bool,
    body: SentBody | None,
) -> bool:
    """The general exchange, from a pooled connection or a new one."""
    balancer = fwd.upstream
    if up is None:
        t = fwd.timeouts
        up = await acquire(
            server.pool,
            balancer,
            attempts=fwd.connect_attempts,
            connect_timeout=t.connect,
            deadline=deadline,
            first=first,
        )
    return await _exchanges(
        server, down, dreader, req, fwd, up, head, deadline, upgrade, retry, body
    )


async def after_dead(
    server: HttpServer,
    down: socket.socket,
    dreader: Reader,
    req: Request,
    fwd: Forward,
    head: bytes,
    deadline: float,
    retry: bool,
) -> bool:
    """The fast path's pooled connection was dead before any response byte: the request
    goes once more on a fresh connection when it may (see the module docstring)."""
    if not retry:
        raise UpstreamError("upstream-reset", "the backend closed the connection")
    up = await _reconnect(server, fwd.upstream, fwd, fwd.timeouts.connect, deadline)
    return await _exchanges(server, down, dreader, req, fwd, up, head, deadline, False, False)


async def _exchanges(
    server: HttpServer,
    down: socket.socket,
    dreader: Reader,
    req: Request,
    fwd: Forward,
    up: Upstream,
    head: bytes,
    deadline: float,
    upgrade: bool,
    retry: bool,
    body: SentBody | None = None,
) -> bool:
    """The exchange on ``up``, and once more on a fresh connection when ``retry`` and ``up``
    turns out stale."""
    balancer = fwd.upstream
    while True:
        endpoint = up.endpoint
        balancer.started(endpoint)
        try:
            return await _exchange(
                server, down, dreader, req, fwd, up, head, deadline, upgrade, body
            )
        except Stale:
            close(up.sock)
            if not retry:
                raise UpstreamError("upstream-reset", "the backend closed the connection") from None
            retry = False
            up = await _reconnect(server, balancer, fwd, fwd.timeouts.connect, deadline)
        finally:
            balancer.finished(endpoint)


async def _reconnect(
    server: HttpServer, balancer: Balancer, fwd: Forward, connect_timeout: float, deadline: float
) -> Upstream:
    """A fresh connection for the one retry a stale pooled connection allows."""
    return await acquire(
        server.pool,
        balancer,
        attempts=fwd.connect_attempts,
        connect_timeout=connect_timeout,
        deadline=deadline,
        fresh=True,
    )


async def _exchange(
    server: HttpServer,
    down: socket.socket,
    dreader: Reader,
    req: Request,
    fwd: Forward,
    up: Upstream,
    head: bytes,
    deadline: float,
    upgrade: bool,
    body: SentBody | None = None,
) -> bool:
    t = fwd.timeouts
    send_t = t.send if t.send is not None else math.inf
    try:
        if req.length == 0:
            try:
                await send_all(up.sock, head, send_t, deadline)
            except OSError:
                if up.reused:
                    raise Stale from None
                raise
        else:
            expect = req.header(b"expect")
            if (
                expect is not None
                and req.http_version == b"1.1"  # RFC 9110 15.2: no 1xx to an HTTP/1.0 client
                and expect.lower() == b"100-continue"
                and not dreader.buffered
                and (body is None or not body.continued)
            ):
                await send_all(down, _CONTINUE, server.limits.body_timeout)
                if body is not None:
                    body.continued = True
            await _send_body(server, down, dreader, req, fwd, up, head, deadline, send_t, body)
        return await relay_response(server, down, dreader, req, fwd, up, deadline, upgrade)
    except (Stale, Abort, HandedOff, DownstreamError, UpstreamError):
        raise
    except Timeout:
        close(up.sock, reset=True)
        raise UpstreamError(
            "upstream-timeout", "the backend did not take the request in time"
        ) from None
    except OSError:
        close(up.sock, reset=True)
        raise UpstreamError("upstream-reset", "the backend connection broke") from None


async def _send_body(
    server: HttpServer,
    down: socket.socket,
    dreader: Reader,
    req: Request,
    fwd: Forward,
    up: Upstream,
    head: bytes,
    deadline: float,
    send_t: float,
    body: SentBody | None = None,
) -> None:
    chunked = req.length == CHUNKED
    out = [head]
    size = len(head)
    total = 0
    if body is not None and body.started:  # a retry: the body sent so far, then the rest
        kept = body.replay()
        out.append(kept)
        size += len(kept)
        total = body.kept
        if body.complete:
            await send_all(up.sock, b"".join(out), send_t, deadline)
            return
    body_timeout = server.limits.body_timeout
    while True:
        try:
            ev = dreader.next_event()
        except ProtocolError as exc:
            close(up.sock, reset=True)  # the upstream request is aborted, never completed
            raise DownstreamError.from_protocol(exc) from None
        if ev is NEED_DATA:
            if out:
                await send_all(up.sock, b"".join(out), send_t, deadline)
                out, size = [], 0
            try:
                data = await recv(down, body_timeout)
            except (Timeout, OSError) as exc:
                close(up.sock, reset=True)
                if isinstance(exc, Timeout):
                    raise DownstreamError(
                        "request-timeout", "the request body came too slowly"
                    ) from None
                raise Abort from exc
            dreader.feed(data)
            continue
        if type(ev) is Data:
            total += len(ev.data)
            if fwd.max_body is not None and total > fwd.max_body:
                close(up.sock, reset=True)
                raise DownstreamError("body-too-large", "the request body is larger than allowed")
            piece = chunk(ev.data) if chunked else ev.data
            if body is not None:
                body.piece(piece, len(ev.data))
            out.append(piece)
            size += len(piece)
            if size >= FLUSH:
                await send_all(up.sock, b"".join(out), send_t, deadline)
                out, size = [], 0
            continue
        assert type(ev) is EndOfMessage
        end = last_chunk(ev.trailers) if chunked else b""
        if end:
            out.append(end)
        if body is not None:
            body.end(end)
        await send_all(up.sock, b"".join(out), send_t, deadline)
        return
