"""The response half of a proxied exchange (trio shell): the upstream's response read with
the strict codec and written to the client, bodies streamed with backpressure, and a byte
tunnel after a protocol switch (Upgrade, WebSocket).

Response bytes are gathered per read and written in one send, so a small response costs one
write to the client. Upstream failures before the response head are the caller's to answer
(502/504 with a reason); after the head has gone to the client, the only honest thing is to
close the client connection (``Abort``), never to end a truncated body as if complete.
"""

from __future__ import annotations

import math
import socket
from typing import TYPE_CHECKING

import trio

from mesh.http import reactor
from mesh.http.decision import Forward
from mesh.http.errors import ProtocolError, UpstreamError, phrase
from mesh.http.events import (
    CLOSED,
    NEED_DATA,
    Data,
    EndOfMessage,
    InformationalResponse,
    Request,
    Response,
)
from mesh.http.h1 import Reader, chunk, last_chunk, response_head
from mesh.http.pool import Timeout, Upstream, close, recv, send_all
from mesh.http.proxyheaders import response_fields

if TYPE_CHECKING:
    from mesh.http.server import HttpServer

FLUSH = 1 << 16  # bytes gathered before a write


class Abort(Exception):
    """The client connection must be closed at once: a response to it had begun."""


class HandedOff(Exception):
    """The client connection became a tunnel, run elsewhere: it is not the caller's any more."""


class Stale(Exception):
    """A reused connection was dead before any response byte."""


async def relay_response(
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
    """``pending``: the first event, already read by the fast path (mesh.http.fastpath; the
    reader then is past ``next_message`` and has received bytes)."""
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
                await to_client(down, out, client_timeout, up)
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
                    raise Stale from None
                if resp is None:
                    close(up.sock, reset=True)
                    raise UpstreamError(
                        "upstream-reset", "the backend reset the connection"
                    ) from None
                # The body had begun and its end had not come: a broken connection ends
                # nothing, whatever the framing (a close-delimited body too: only an orderly
                # close ends one, RFC 9112 section 6.3). The client must see it cut.
                close(up.sock, reset=True)
                raise Abort from None
            received = received or bool(data)
            reader.feed(data)
            continue
        if ev is CLOSED:
            if up.reused and not received:
                raise Stale
            close(up.sock)
            raise UpstreamError(
                "upstream-reset", "the backend closed the connection without a response"
            )
        kind = type(ev)
        if kind is Data:
            assert isinstance(ev, Data)
            out.append(chunk(ev.data) if chunked_out else ev.data)
            if len(ev.data) >= FLUSH:
                await to_client(down, out, client_timeout, up)
                out = []
            continue
        if kind is EndOfMessage:
            assert isinstance(ev, EndOfMessage)
            if chunked_out:
                out.append(last_chunk(ev.trailers))
            if out:
                await to_client(down, out, client_timeout, up)
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
                await to_client(down, out, client_timeout, up)
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
            await to_client(down, out, client_timeout, up)
            if ev.keep_alive and not reader.buffered:
                server.pool.put(up)
            else:
                close(up.sock)
            return keep_client and dreader.message_done
        if reader.switched:
            await to_client(down, out, client_timeout, up)
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


def send_now(down: socket.socket, out: bytes, usock: socket.socket) -> int:
    """What the client's socket takes of ``out`` at once (the rest goes through to_client);
    a client gone resets the upstream connection, whose response is then unwanted."""
    try:
        return down.send(out)
    except BlockingIOError:
        return 0
    except OSError as exc:
        close(usock, reset=True)
        raise Abort from exc


async def to_client(down: socket.socket, out: list[bytes], seconds: float, up: Upstream) -> None:
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
