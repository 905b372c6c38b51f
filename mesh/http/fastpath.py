"""The common exchange of a proxy (trio shell): a request without a body on a pooled
upstream connection, in as few steps as the general exchange (mesh.http.forward) takes
layers. Its response, when it is the usual one, goes to the client in one send with its
head as it came (``Reader.passthrough``); anything else continues in
mesh.http.relay.relay_response from the event already read, with the same codec.
"""

from __future__ import annotations

import math
import select
import socket
from typing import TYPE_CHECKING

from mesh.http import reactor
from mesh.http.decision import NO_EDITS, Forward
from mesh.http.errors import DownstreamError, ProtocolError, UpstreamError, phrase
from mesh.http.events import Request, Response
from mesh.http.h1 import Reader, response_head
from mesh.http.pool import RECV_SIZE, Timeout, Upstream, close, recv, send_all
from mesh.http.proxyheaders import added_lines, response_fields
from mesh.http.relay import Abort, HandedOff, Stale, relay_response, send_now, to_client

if TYPE_CHECKING:
    from mesh.http.server import HttpServer

_IN = select.EPOLLIN


class _Dead(Exception):
    """The pooled connection was dead before any response byte (rare: no cost when not)."""


async def simple_exchange(
    server: HttpServer,
    down: socket.socket,
    dreader: Reader,
    req: Request,
    fwd: Forward,
    up: Upstream,
    head: bytes,
    deadline: float,
    retry: bool,
) -> bool:
    """The common exchange in as few steps as the general one takes layers: a request
    without a body on a pooled connection, written in one send; the response read with one
    recv and, when it is a final response whose Content-Length body came whole with it,
    written to the client in one send. Anything else (a body still to come, chunked, 1xx,
    101, until-close) continues in ``relay_response`` from the event already read, with the
    same codec (one parser: the strict one). A connection dead before any response byte
    goes to ``forward.after_dead`` (``retry``: the request may be sent once more)."""
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
                raise _Dead from None
            reader = up.reader
            reader.next_message(req.method)
            if n < len(head):
                await send_all(
                    usock, head[n:], t.send if t.send is not None else math.inf, deadline
                )
            read_t = t.read if t.read is not None else math.inf
            try:
                loop = reactor.CURRENT
                if loop is not None:  # pool.recv inlined: a coroutine less a request
                    await reactor.Wait(usock, up.fd, _IN, min(deadline, loop.now + read_t))
                    try:
                        data = usock.recv(RECV_SIZE)
                    except BlockingIOError:  # woken by a spent edge: wait again
                        data = await recv(usock, read_t, deadline)
                else:
                    data = await recv(usock, read_t, deadline, wait_first=True)
            except OSError:
                data = b""
            if not data:
                close(usock)
                raise _Dead
            reader.feed(data)
            added = added_lines(fwd.response_headers)
            if added is not None and (whole := reader.passthrough()) is not None:
                # The usual response: its head goes on as it came (see Reader.passthrough).
                _, keep_up, passed, passed_body = whole
                if not req.keep_alive:
                    added += b"connection: close\r\n"
                out = b"%s%s\r\n%s" % (passed, added, passed_body)
                sent = send_now(down, out, usock)
                if sent < len(out):
                    await to_client(down, [out[sent:]], server.limits.body_timeout, up)
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
                    sent = send_now(down, out, usock)
                    if sent < len(out):
                        await to_client(down, [out[sent:]], server.limits.body_timeout, up)
                    if ev.keep_alive and not reader.buffered:
                        if ev.length == 0:
                            reader.next_event()  # its EndOfMessage: the reader is done
                        server.pool.put(up)
                    else:
                        close(usock)
                    return keep_client and dreader.message_done
            return await relay_response(
                server, down, dreader, req, fwd, up, deadline, False, pending=ev
            )
        except (Stale, Abort, HandedOff, DownstreamError, UpstreamError):
            raise
        except Timeout:
            close(usock, reset=True)
            raise UpstreamError("upstream-timeout", "the backend did not answer in time") from None
        except OSError:
            close(usock, reset=True)
            raise UpstreamError("upstream-reset", "the backend connection broke") from None
    except _Dead:
        pass  # the endpoint is no longer in flight when the request goes again
    finally:
        balancer.finished(endpoint)
    # The pooled connection was dead before any response byte (rare): forward decides whether
    # the request goes once more (imported here: forward imports this module).
    from mesh.http.forward import after_dead

    return await after_dead(server, down, dreader, req, fwd, head, deadline, retry)
