"""A small HTTP/1.1 server: the engine's codec (mesh.http.h1) for the protocol, trio for the
bytes.

Used by the control plane's config stream and by every admin endpoint. A handler is an
async function from :class:`Request` to :class:`Response` (a whole body) or
:class:`StreamingResponse` (chunks from an async iterator, sent with chunked encoding,
for watches). Keep-alive, bounded reads and timeouts live here, once:

- malformed HTTP gets the codec's status (400, 431, 501, 505) and the connection is closed;
  the codec is the gateway's strict one, so the admin port accepts nothing the gateway
  would refuse;
- only GET and HEAD are served unless the server is given more ``methods`` (405
  otherwise); a request body is read only for a method other than those two and handed
  to the handler whole (``Request.body``); a body over ``max_body`` gets 413 (at once when
  its Content-Length says so), and an HTTP/1.1 client that asks ``Expect: 100-continue``
  gets its ``100 Continue`` just before its body is read;
- an idle keep-alive connection is closed after ``idle_timeout``; a request must arrive
  whole within ``read_timeout`` once started; at most ``max_connections`` are served at once;
- a streamed response goes out chunked to an HTTP/1.1 client, and until the connection
  closes to an HTTP/1.0 one (RFC 9112 section 6.3).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import trio

from mesh.http import events, h1
from mesh.http.errors import ProtocolError

log = logging.getLogger("mesh.http")

MAX_BODY = 1 << 20
RECEIVE_SIZE = 65536


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @classmethod
    def from_event(cls, event: events.Request, body: bytes = b"") -> Request:
        target = event.target.decode("ascii", "replace")
        parts = urlsplit(target)
        return cls(
            method=event.method.decode("ascii", "replace"),
            target=target,
            path=unquote(parts.path),
            query=dict(parse_qsl(parts.query)),
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers),
            body=body,
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


class _TooLarge(Exception):
    """The request body is over the server's ``max_body``."""


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
        methods: tuple[str, ...] = ("GET", "HEAD"),
        max_body: int = MAX_BODY,
    ) -> None:
        self.listen = listen
        self.handler = handler
        self.name = name
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.methods = methods
        self.max_body = max_body
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
        reader = h1.Reader("server")
        try:
            await self._serve(reader, stream)
        except ProtocolError as exc:
            await self._send_error(stream, exc.status, str(exc))
        except _TooLarge:
            await self._send_error(stream, 413, "request body too large")
            await _linger(stream)
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # a bug in one connection must not take the server down
            log.exception("connection failed", extra={"server": self.name})
        finally:
            self._active -= 1
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _serve(self, reader: h1.Reader, stream: trio.SocketStream) -> None:
        while True:  # one request per round; ends when either side closes
            event = await self._next_event(reader, stream, self.idle_timeout)
            if event is events.CLOSED:
                return
            assert type(event) is events.Request
            method = event.method.decode("ascii", "replace")
            if method in self.methods and method not in ("GET", "HEAD") and event.length != 0:
                body = await self._read_body(reader, stream, event)
            else:
                body = b""
                await self._drain_body(reader, stream)
            request = Request.from_event(event, body)
            response = await self._respond(request)
            if not await self._send(stream, event, request, response):
                return
            reader.next_message()

    async def _respond(self, request: Request) -> Response | StreamingResponse:
        if request.method not in self.methods:
            allow = ", ".join(self.methods)
            return Response(405, b"method not allowed\n", headers=(("allow", allow),))
        try:
            return await self.handler(request)
        except Exception:
            log.exception("handler failed", extra={"server": self.name, "path": request.path})
            return text(500, "internal error")

    async def _next_event(
        self, reader: h1.Reader, stream: trio.SocketStream, patience: float
    ) -> Any:
        """The next codec event; waits at most ``patience`` for the first bytes, then
        ``read_timeout`` for each further read of the same message."""
        while True:
            event = reader.next_event()
            if event is not events.NEED_DATA:
                return event
            with trio.move_on_after(patience) as scope:
                data = await stream.receive_some(RECEIVE_SIZE)
            if scope.cancelled_caught:
                raise _Closed()
            reader.feed(data)
            patience = self.read_timeout  # the rest of a message must come promptly

    async def _read_body(
        self, reader: h1.Reader, stream: trio.SocketStream, event: events.Request
    ) -> bytes:
        """The request body whole; _TooLarge past ``max_body`` (before reading a byte when
        the Content-Length says so)."""
        if event.length > self.max_body:
            raise _TooLarge
        expect = event.header(b"expect")
        if (
            expect is not None
            and expect.lower() == b"100-continue"
            and event.http_version == b"1.1"  # RFC 9110 15.2: no 1xx to HTTP/1.0
            and not reader.buffered
        ):
            await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = bytearray()
        while True:
            ev = await self._next_event(reader, stream, self.read_timeout)
            if type(ev) is events.EndOfMessage:
                return bytes(body)
            if type(ev) is events.Data:
                body += ev.data
                if len(body) > self.max_body:
                    raise _TooLarge

    async def _drain_body(self, reader: h1.Reader, stream: trio.SocketStream) -> None:
        """Read the request body to its end (its bytes are not used); _TooLarge past
        ``max_body``."""
        size = 0
        while True:
            event = await self._next_event(reader, stream, self.read_timeout)
            if type(event) is events.EndOfMessage:
                return
            if type(event) is events.Data:
                size += len(event.data)
                if size > self.max_body:
                    raise _TooLarge

    async def _send(
        self,
        stream: trio.SocketStream,
        event: events.Request,
        request: Request,
        response: Response | StreamingResponse,
    ) -> bool:
        """Write the response; True when the connection may carry another request."""
        keep = event.keep_alive
        streaming = isinstance(response, StreamingResponse)
        chunked = streaming and event.http_version == b"1.1"
        if streaming and not chunked:
            keep = False  # HTTP/1.0: the body ends with the connection
        fields = [("content-type", response.content_type), *response.headers]
        if isinstance(response, Response):
            fields.append(("content-length", str(len(response.body))))
        elif chunked:
            fields.append(("transfer-encoding", "chunked"))
        if not keep:
            fields.append(("connection", "close"))
        status = response.status
        head = h1.response_head(
            status,
            _phrase(status),
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in fields],
        )
        head_only = request.method == "HEAD"
        if isinstance(response, Response):
            await stream.send_all(head if head_only else head + response.body)
            return keep
        await stream.send_all(head)
        if head_only:
            await _aclose(response.chunks)
            return keep
        try:
            async for piece in response.chunks:
                if piece:  # an empty chunk would end a chunked body
                    await stream.send_all(h1.chunk(piece) if chunked else piece)
        finally:
            await _aclose(response.chunks)
        if chunked:
            await stream.send_all(h1.last_chunk())
        return keep

    async def _send_error(self, stream: trio.SocketStream, status: int, reason: str) -> None:
        log.info("bad request", extra={"server": self.name, "status": status, "reason": reason})
        body = f"{reason}\n".encode()
        head = h1.response_head(
            status,
            _phrase(status),
            [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (b"connection", b"close"),
            ],
        )
        try:
            with trio.move_on_after(1):
                await stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _linger(stream: trio.SocketStream) -> None:
    """After an early answer, read (and drop) what the client is still sending, bounded in
    time and bytes, before closing: closing with unread data resets the connection, and the
    reset can destroy the answer before the client reads it (nginx's lingering close)."""
    try:
        await stream.send_eof()
        left = MAX_BODY
        with trio.move_on_after(1):
            while left > 0 and (data := await stream.receive_some(RECEIVE_SIZE)):
                left -= len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
