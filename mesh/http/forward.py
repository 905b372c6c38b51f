"""Proxy one exchange (trio shell): given a Forward decision, send the request to an endpoint
and the response back, streaming both bodies with backpressure.

Theory of operation. The request head and whatever body bytes came with it leave in one
write; then body pieces are read from the client only as fast as the upstream takes them
(one piece in flight: a 1 GB upload never sits in memory). A request body that turns out
malformed (a bad chunk), too large or too slow aborts the upstream request with a reset: it
is never completed, and the bytes of an invalid piece are never sent (events are parsed
before anything queued is written). Response bytes are gathered per read and written in one
send, so a small response costs one write to the client.

Upstream failures before the response head are answered by the engine (502/504 with a
reason); after the head has gone to the client, the only honest thing is to close the client
connection (``Abort``), never to end a truncated body as if complete.

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
from typing import TYPE_CHECKING

import trio

from mesh.http import reactor
from mesh.http.client import acquire, pooled
from mesh.http.decision import NO_EDITS, Forward, Peer
from mesh.http.errors import DownstreamError, ProtocolError, UpstreamError, phrase
from mesh.http.events import (
    CHUNKED,
    CLOSED,
    NEED_DATA,
    Data,
    EndOfMessage,
    InformationalResponse,
    Request,
    Response,
)
from mesh.http.h1 import Reader, chunk, last_chunk, request_head, response_head
from mesh.http.pool import Timeout, Upstream, close, recv, send_all
from mesh.http.proxyheaders import (
    added_lines,
    plain_request_head,
    request_fields,
    response_fields,
)

if TYPE_CHECKING:
    from mesh.http.balance import Balancer
    from mesh.http.replay import SentBody
    from mesh.http.server import HttpServer

_FLUSH = 1 << 16  # bytes gathered before a write
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Abort(Exception):
    """The client connection must be closed at once: a response to it had begun."""


class HandedOff(Exception):
    """The client connection became a tunnel, run elsewhere: it is not the caller's any more."""


class _Stale(Exception):
    """A reused connection was dead before any response byte."""


def _wants_upgrade(req: Request) -> bool:
    if req.http_version != b"1.1" or req.header(b"upgrade") is None:
        return False
    conn = req.header(b"connection") or b""
    return b"upgrade" in [t.strip() for t in conn.lower().split(b",")]


async def forward(
    server: HttpServer,
    down: socket.socket,
    dreader: Reader,
    req: Request,
    peer: Peer,
    fwd: Forward,
    body: SentBody | None = None,
) -> bool:
    """Proxy ``req``; True when the client connection may carry another request.
    ``body``: keep the request body for a retry and hand it to mirror copies
    (mesh.http.replay); a retry passes the same one again."""
    limits = server.limits
    if fwd.max_body is not None and req.length > fwd.max_body:
        raise DownstreamError("body-too-large", "the request body is larger than allowed")
    upgrade = _wants_upgrade(req)
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
    balancer = fwd.upstream
    retry = req.length == 0 and req.method in _IDEMPOTENT and not upgrade
    up, first = pooled(server.pool, balancer)
    if up is None:
        up = await acquire(
            server.pool,
            balancer,
            attempts=fwd.connect_attempts,
            connect_timeout=t.connect,
            deadline=deadline,
            first=first,
        )
    if up.reused and req.length == 0 and not upgrade and server.fast:
        # The common exchange (no request body, a pooled connection): see ``_simple``.
        keep = await _simple(server, down, dreader, req, fwd, up, head, deadline)
        if keep is not None:
            return keep
        if not retry:  # the pooled connection was dead before any response byte
            raise UpstreamError("upstream-reset", "the backend closed the connection")
        retry = False
        up = await _reconnect(server, balancer, fwd, t.connect, deadline)
    while True:
        endpoint = up.endpoint
        balancer.started(endpoint)
        try:
            return await _exchange(
                server, down, dreader, req, fwd, up, head, deadline, upgrade, body
            )
        except _Stale:
            close(up.sock)
            if not retry:
                raise UpstreamError("upstream-reset", "the backend closed the connection") from None
            retry = False
            up = await _reconnect(server, balancer, fwd, t.connect, deadline)
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


async def _simple(
    server: HttpServer,
    down: socket.socket,
    dreader: Reader,
    req: Request,
    fwd: Forward,
    up: Upstream,
    head: bytes,
    deadline: float,
) -> bool | None:
    """The common exchange in as few steps as the general one takes layers: a request
    without a body on a pooled connection, written in one send; the response read with one
    recv and, when it is a final response whose Content-Length body came whole with it,
    written to the client in one send. Anything else (a body still to come, chunked, 1xx,
    101, until-close) continues in ``_relay_response`` from the event already read, with the
    same codec (one parser: the strict one). None: the connection was dead before any
    response byte (the caller retries once on a fresh one, as ``forward`` does)."""
    balancer = fwd.upstream
    endpoint = up.endpoint
    usock = up.sock
    t = fwd.timeouts
    balancer.started(endpoint)
    try:
        try:
            try:
                n = usock.send(head)
            except BlockingIOError:
                n = 0
            except OSError:
                close(usock)
                return None
            reader = up.reader
            reader.next_message(req.method)
            if n < len(head):
                await send_all(
                    usock, head[n:], t.send if t.send is not None else math.inf, deadline
                )
            read_t = t.read if t.read is not None else math.inf
            try:
                data = await recv(usock, read_t, deadline, wait_first=True)
            except OSError:
                data = b""
            if not data:
                close(usock)
                return None
            reader.feed(data)
            added = added_lines(fwd.response_headers)
            if added is not None and (whole := reader.passthrough()) is not None:
                # The usual response: its head goes on as it came (see Reader.passthrough).
                _, keep_up, passed, passed_body = whole
                if not req.keep_alive:
                    added += b"connection: close\r\n"
                out = b"%s%s\r\n%s" % (passed, added, passed_body)
                sent = _send_now(down, out, usock)
                if sent < len(out):
                    await _to_client(down, [out[sent:]], server.limits.body_timeout, up)
                if keep_up and not reader.buffered:
                    server.pool.put(up)
                else:
                    close(usock)
                return req.keep_alive and dreader.message_done
            try:
                ev = reader.next_event()
            except ProtocolError as exc:
                close(usock, reset=True)
                raise UpstreamError("upstream-protocol-error", str(exc)) from None
            if type(ev) is Response and ev.length >= 0 and not reader.switched:
                body = reader.whole_body() if ev.length else b""
                if body is not None:
                    fields = response_fields(ev.headers)
                    if fwd.response_headers is not NO_EDITS and fwd.response_headers:
                        fields = fwd.response_headers.apply(fields)
                    keep_client = req.keep_alive
                    if not keep_client:
                        fields.append((b"connection", b"close"))
                    reason = ev.reason or phrase(ev.status)
                    out = response_head(ev.status, reason, fields)
                    if body:
                        out += body
                    sent = _send_now(down, out, usock)
                    if sent < len(out):
                        await _to_client(down, [out[sent:]], server.limits.body_timeout, up)
                    if ev.keep_alive and not reader.buffered:
                        if ev.length == 0:
                            reader.next_event()  # its EndOfMessage: the reader is done
                        server.pool.put(up)
                    else:
                        close(usock)
                    return keep_client and dreader.message_done
            return await _relay_response(
                server, down, dreader, req, fwd, up, deadline, False, pending=ev
            )
        except (_Stale, Abort, HandedOff, DownstreamError, UpstreamError):
            raise
        except Timeout:
            close(usock, reset=True)
            raise UpstreamError("upstream-timeout", "the backend did not answer in time") from None
        except OSError:
            close(usock, reset=True)
            raise UpstreamError("upstream-reset", "the backend connection broke") from None
    finally:
        balancer.finished(endpoint)


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
                    raise _Stale from None
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
        return await _relay_response(server, down, dreader, req, fwd, up, deadline, upgrade)
    except (_Stale, Abort, HandedOff, DownstreamError, UpstreamError):
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
            if size >= _FLUSH:
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


async def _relay_response(
    server: HttpServer,
    down: socket.socket,
    dreader: Reader,
    req: Request,
    fwd: Forward,
    up: Upstream,
    deadline: float,
    upgrade: bool,
    pending: object = None,
) -> bool:
    """``pending``: the first event, already read by ``_simple`` (the reader then is past
    ``next_message`` and has received bytes)."""
    reader = up.reader
    if pending is None:
        reader.next_message(req.method)
    read_t = fwd.timeouts.read if fwd.timeouts.read is not None else math.inf
    client_timeout = server.limits.body_timeout
    out: list[bytes] = []
    resp: Response | None = None
    chunked_out = False
    keep_client = req.keep_alive
    received = pending is not None
    while True:
        try:
            if pending is not None:
                ev, pending = pending, None
            else:
                ev = reader.next_event()
        except ProtocolError as exc:
            close(up.sock, reset=True)
            if resp is None:
                raise UpstreamError("upstream-protocol-error", str(exc)) from None
            raise Abort from exc
        if ev is NEED_DATA:
            if out:
                await _to_client(down, out, client_timeout, up)
                out = []
            try:
                data = await recv(up.sock, read_t, deadline, wait_first=not received)
            except Timeout:
                close(up.sock, reset=True)
                if resp is None:
                    raise UpstreamError(
                        "upstream-timeout", "the backend did not answer in time"
                    ) from None
                raise Abort from None
            except OSError:
                data = b""
                if not received and up.reused:
                    raise _Stale from None
                if resp is None:
                    close(up.sock, reset=True)
                    raise UpstreamError(
                        "upstream-reset", "the backend reset the connection"
                    ) from None
                if reader.buffered == 0 and resp.length >= 0:
                    close(up.sock, reset=True)
                    raise Abort from None
            received = received or bool(data)
            reader.feed(data)
            continue
        if ev is CLOSED:
            if up.reused and not received:
                raise _Stale
            close(up.sock)
            raise UpstreamError(
                "upstream-reset", "the backend closed the connection without a response"
            )
        kind = type(ev)
        if kind is Data:
            assert isinstance(ev, Data)
            out.append(chunk(ev.data) if chunked_out else ev.data)
            if len(ev.data) >= _FLUSH:
                await _to_client(down, out, client_timeout, up)
                out = []
            continue
        if kind is EndOfMessage:
            assert isinstance(ev, EndOfMessage)
            if chunked_out:
                out.append(last_chunk(ev.trailers))
            if out:
                await _to_client(down, out, client_timeout, up)
            assert resp is not None
            if resp.keep_alive and not reader.buffered and reader.message_done:
                server.pool.put(up)
            else:
                close(up.sock)
            return keep_client and dreader.message_done
        if kind is InformationalResponse:
            assert isinstance(ev, InformationalResponse)
            if ev.status != 100 and req.http_version == b"1.1":
                # sent on its own at once: the client may act on it (103), and the final head
                # that follows is then the one the retry veto and the access log see
                out.append(response_head(ev.status, ev.reason or phrase(ev.status), ev.headers))
                await _to_client(down, out, client_timeout, up)
                out = []
            continue
        assert isinstance(ev, Response)
        resp = ev
        switching = ev.status == 101 and upgrade
        fields = response_fields(ev.headers, upgrade=switching)
        if fwd.response_headers:
            fields = fwd.response_headers.apply(fields)
        if ev.length < 0:  # chunked or until close: re-chunked for HTTP/1.1
            if req.http_version == b"1.1":
                fields.append((b"transfer-encoding", b"chunked"))
                chunked_out = True
            else:
                keep_client = False
        if not keep_client and not switching:
            fields.append((b"connection", b"close"))
        out.append(response_head(ev.status, ev.reason or phrase(ev.status), fields))
        if ev.length > 0 and (body := reader.whole_body()) is not None:
            out.append(body)  # the fast path: the whole body came with the head
            await _to_client(down, out, client_timeout, up)
            if ev.keep_alive and not reader.buffered:
                server.pool.put(up)
            else:
                close(up.sock)
            return keep_client and dreader.message_done
        if reader.switched:
            await _to_client(down, out, client_timeout, up)
            if not switching:  # a 101 nobody asked for: refuse to tunnel
                close(up.sock, reset=True)
                raise Abort
            loop = reactor.CURRENT
            if loop is not None and loop.trio_nursery is not None:
                # two directions at once need trio: the tunnel leaves the reactor
                loop.trio_nursery.start_soon(
                    tunnel, down, up.sock, dreader.trailing(), reader.trailing()
                )
                raise HandedOff
            await tunnel(down, up.sock, dreader.trailing(), reader.trailing())
            raise HandedOff  # the tunnel has closed both sockets


def _send_now(down: socket.socket, out: bytes, usock: socket.socket) -> int:
    """What the client's socket takes of ``out`` at once (the rest goes through _to_client);
    a client gone resets the upstream connection, whose response is then unwanted."""
    try:
        return down.send(out)
    except BlockingIOError:
        return 0
    except OSError as exc:
        close(usock, reset=True)
        raise Abort from exc


async def _to_client(down: socket.socket, out: list[bytes], seconds: float, up: Upstream) -> None:
    try:
        await send_all(down, b"".join(out), seconds)
    except (Timeout, OSError) as exc:
        close(up.sock, reset=True)
        raise Abort from exc


async def tunnel(a: socket.socket, b: socket.socket, to_b: bytes, to_a: bytes) -> None:
    """Bytes both ways until both sides sent EOF (or either broke): Upgrade, WebSocket."""

    async def pump(
        src: socket.socket, dst: socket.socket, first: bytes, scope: trio.CancelScope
    ) -> None:
        try:
            if first:
                await send_all(dst, first, math.inf)
            while data := await recv(src, math.inf):
                await send_all(dst, data, math.inf)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, b, to_b, nursery.cancel_scope)
            nursery.start_soon(pump, b, a, to_a, nursery.cancel_scope)
    finally:
        close(b)
        close(a)
