"""A small HTTP/1.1 server: h11 for the protocol, trio for the bytes.

Used by the control plane's config stream and by every admin endpoint. A handler is an
async function from :class:`Request` to :class:`Response` (a whole body) or
:class:`StreamingResponse` (chunks from an async iterator, sent with chunked encoding,
for watches). Keep-alive, bounded reads and timeouts live here, once:

- malformed HTTP gets the status h11 suggests (400, 431, ...) and the connection is closed;
- only GET and HEAD are served (405 otherwise); request bodies over 1 MiB get 413;
- an idle keep-alive connection is closed after ``idle_timeout``; a request must arrive
  whole within ``read_timeout`` once started; at most ``max_connections`` are served at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

log = logging.getLogger("mesh.http")

MAX_BODY = 1 << 20
RECEIVE_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_h11(cls, event: h11.Request) -> Request:
        target = event.target.decode("ascii", "replace")
        parts = urlsplit(target)
        return cls(
            method=event.method.decode("ascii", "replace"),
            target=target,
            path=unquote(parts.path),
            query=dict(parse_qsl(parts.query)),
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers),
        )


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StreamingResponse:
    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "application/x-ndjson"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]


def text(status: int, body: str) -> Response:
    return Response(status, (body if body.endswith("\n") else body + "\n").encode())


def json_response(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
    return Response(status, body, "application/json")


class _Closed(Exception):
    """The peer went away, or timed out; close quietly."""


class HttpServer:
    def __init__(
        self,
        listen: tuple[str, int],
        handler: Handler,
        *,
        name: str = "http",
        idle_timeout: float = 60.0,
        read_timeout: float = 10.0,
        max_connections: int = 512,
    ) -> None:
        self.listen = listen
        self.handler = handler
        self.name = name
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.port = 0
        self._active = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("listening", extra={"server": self.name, "host": host, "port": self.port})
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        if self._active >= self.max_connections:
            await stream.aclose()
            return
        self._active += 1
        conn = h11.Connection(h11.SERVER)
        try:
            await self._serve(conn, stream)
        except h11.RemoteProtocolError as exc:
            await self._send_error(conn, stream, exc.error_status_hint, str(exc))
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # a bug in one connection must not take the server down
            log.exception("connection failed", extra={"server": self.name})
        finally:
            self._active -= 1
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _serve(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        while True:  # one request per round; ends when either side closes
            event = await self._next_event(conn, stream, self.idle_timeout)
            if isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request)
            request = Request.from_h11(event)
            if not await self._drain_body(conn, stream):
                await self._send_error(conn, stream, 413, "request body too large")
                return
            response = await self._respond(request)
            await self._send(conn, stream, request, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _respond(self, request: Request) -> Response | StreamingResponse:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
        try:
            return await self.handler(request)
        except Exception:
            log.exception("handler failed", extra={"server": self.name, "path": request.path})
            return text(500, "internal error")

    async def _next_event(
        self, conn: h11.Connection, stream: trio.SocketStream, patience: float
    ) -> Any:
        """The next h11 event; waits at most ``patience`` for the first bytes, then
        ``read_timeout`` for each further read of the same message."""
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_after(patience) as scope:
                data = await stream.receive_some(RECEIVE_SIZE)
            if scope.cancelled_caught:
                raise _Closed()
            conn.receive_data(data)
            patience = self.read_timeout  # the rest of a message must come promptly

    async def _drain_body(self, conn: h11.Connection, stream: trio.SocketStream) -> bool:
        size = 0
        while True:
            event = await self._next_event(conn, stream, self.read_timeout)
            if isinstance(event, h11.EndOfMessage):
                return True
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    return False
            elif isinstance(event, h11.ConnectionClosed):
                raise _Closed()

    async def _send(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        request: Request,
        response: Response | StreamingResponse,
    ) -> None:
        headers = [("content-type", response.content_type), *response.headers]
        if isinstance(response, Response):
            headers.append(("content-length", str(len(response.body))))
        head = conn.send(h11.Response(status_code=response.status, headers=headers))
        await stream.send_all(head or b"")
        if isinstance(response, Response):
            if request.method != "HEAD" and response.body:
                await stream.send_all(conn.send(h11.Data(data=response.body)) or b"")
        elif request.method != "HEAD":
            try:
                async for chunk in response.chunks:
                    await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
            finally:
                aclose = getattr(response.chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

    async def _send_error(
        self, conn: h11.Connection, stream: trio.SocketStream, status: int, reason: str
    ) -> None:
        log.info("bad request", extra={"server": self.name, "status": status, "reason": reason})
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{reason}\n".encode()
        headers = [
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        try:
            data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
            data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            with trio.move_on_after(1):
                await stream.send_all(data)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
