"""The config-stream client: a component's view of the control plane.

:func:`stream_configs` watches ``GET /v1/watch/{kind}?deltas=1`` and yields each new config
snapshot. The server sends the first one whole and, while the client keeps up, each next one
as a delta against the one before (mesh/config/delta.py): the client applies it to the config
it decoded last on this connection, validating only the records that travel, so unchanged
records stay the same objects and the component rebuilds nothing for them. A delta made
against another version than the client holds is never applied: the client reconnects and
gets a full snapshot (a resync), as after any other broken stream. A control plane that does
not send deltas (an older one) sends full snapshots, which are read as before.
When the connection breaks (refused, reset, silent past ``idle_timeout`` although the server
sends heartbeats, invalid data) it reconnects with bounded exponential backoff and full
jitter, yielding nothing meanwhile: the component keeps running on its last good config.
After a reconnect the server sends its current snapshot first, so the component catches up
in one step; a snapshot equal to the last one yielded is not yielded again.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic
import trio

from mesh.addresses import parse_url
from mesh.config import delta
from mesh.config.base import ComponentConfig
from mesh.http import events, h1
from mesh.http.errors import ProtocolError

__all__ = ["Backoff", "LineSplitter", "StreamError", "fetch_json", "parse_url", "stream_configs"]

log = logging.getLogger("mesh.stream")

C = TypeVar("C", bound=ComponentConfig)

MAX_LINE = 64 << 20  # a config snapshot larger than this is refused
RECEIVE_SIZE = 65536


class StreamError(Exception):
    """The stream broke or carried something unusable; reconnect."""


CLOSED = "the control plane closed the stream (it stopped or restarted); reconnecting"


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before reconnect ``attempt`` (0-based): "full jitter", uniform in
        [base/2, base], where base doubles up to ``maximum``."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 32))
        return base / 2 + rng.random() * base / 2


class LineSplitter:
    """Bytes in, complete lines out (without the newline)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buffer = bytearray()
        self.max_line = max_line

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        if b"\n" in data:
            # Split only when this chunk ends a line: a multi-megabyte snapshot arrives in
            # many chunks, and splitting the whole buffer on each would be quadratic.
            *lines, rest = self._buffer.split(b"\n")
            self._buffer = bytearray(rest)
        else:
            lines = []
        if len(self._buffer) > self.max_line:
            raise StreamError(f"line longer than {self.max_line} bytes")
        return [bytes(line) for line in lines]


def decode(line: bytes, config_type: type[C]) -> C:
    try:
        return config_type.model_validate_json(line)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise StreamError(
            f"invalid config ({exc.error_count()} errors), first at {where}: {first['msg']}"
        ) from exc


def decode_line(line: bytes, config_type: type[C], base: C | None) -> C:
    """A full snapshot, or a delta applied onto ``base`` (the config decoded last on this
    connection); StreamError (reconnect: the server starts again with a full snapshot) when
    a delta does not fit ``base`` or is invalid."""
    if not delta.is_delta(line):
        return decode(line, config_type)
    if base is None:
        raise StreamError("a config delta came before any snapshot; resyncing")
    try:
        return delta.decode_delta(base, line)
    except delta.DeltaMismatch as exc:
        raise StreamError(f"{exc}; resyncing") from None
    except delta.DeltaError as exc:
        raise StreamError(str(exc)) from None


class _Connection:
    """One HTTP/1.1 request and its response body, over the engine's codec (mesh.http.h1):
    the same strict parser reads the control plane's answers as reads the gateway's
    upstreams. A malformed response is a StreamError (reconnect), never a crash."""

    def __init__(self, stream: trio.SocketStream, idle_timeout: float) -> None:
        self.stream = stream
        self.reader = h1.Reader("client")
        self.idle_timeout = idle_timeout
        self.closed = False  # the server closed its end

    async def request(
        self, host: str, port: int, target: str, method: bytes = b"GET", body: bytes | None = None
    ) -> int:
        """Send one request (``body``: JSON, for a POST) and read its response's head."""
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # RFC 3986 3.2.2
        try:
            fields = [(b"host", authority.encode("ascii")), (b"accept", b"application/json")]
            if body is not None:
                fields.append((b"content-type", b"application/json"))
                fields.append((b"content-length", b"%d" % len(body)))
            head = h1.request_head(method, target.encode("ascii"), fields)
        except UnicodeError:
            raise StreamError(f"cannot ask {authority}{target}: not ASCII") from None
        self.reader.next_message(method)
        await self.stream.send_all(head if body is None else head + body)
        while True:
            event = await self.next_event()
            if type(event) is events.InformationalResponse:
                continue  # a 1xx before the answer
            if type(event) is not events.Response:
                raise StreamError("connection closed before a response")
            return event.status

    async def next_event(self) -> object:
        while True:
            try:
                event = self.reader.next_event()
            except ProtocolError as exc:
                if self.closed:
                    # The server went away in the middle of a message: a control plane that
                    # stops (cleanly or not) ends its streams so. Not bad HTTP.
                    raise StreamError(CLOSED) from None
                raise StreamError(f"bad HTTP from the server: {exc}") from None
            if event is not events.NEED_DATA:
                return event
            with trio.move_on_after(self.idle_timeout) as scope:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except trio.BrokenResourceError:
                    raise StreamError(CLOSED) from None  # reset rather than closed
            if scope.cancelled_caught:
                raise StreamError(f"no data for {self.idle_timeout} s")
            self.closed = not data
            self.reader.feed(data)  # b"": the server closed

    async def body_chunk(self) -> bytes | None:
        """The next piece of the body, or None at its end."""
        event = await self.next_event()
        if type(event) is events.Data:
            return event.data
        return None


async def _connect(host: str, port: int, connect_timeout: float) -> trio.SocketStream:
    try:
        with trio.fail_after(connect_timeout):
            return await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise StreamError(
            f"the control plane did not answer within {connect_timeout:g} s; retrying"
        ) from None
    except OSError as exc:
        # trio's "all attempts to connect ... failed" carries each attempt's error as its
        # cause (a group when there were several addresses): the first one says why.
        cause: BaseException | None = exc.__cause__
        while isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
        raise StreamError(f"cannot reach the control plane: {reason}; retrying") from None


_NETWORK_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    StreamError,
)


async def stream_configs(
    url: str,
    kind: str,
    config_type: type[C],
    *,
    backoff: Backoff | None = None,
    idle_timeout: float = 30.0,
    connect_timeout: float = 5.0,
    rng: random.Random | None = None,
    on_connect: Callable[[], None] | None = None,
    deltas: bool = True,
) -> AsyncGenerator[C, None]:
    """Each new ``kind`` config from the control plane at ``url``, forever. ``on_connect``
    is called at each (re)connection that the plane answered (the gateway re-posts its
    report then: a restarted plane has forgotten it). ``deltas``: ask for deltas."""
    host, port, prefix = parse_url(url)
    target = f"{prefix}/v1/watch/{kind}"
    if deltas:
        target += f"?deltas={delta.FORMAT}"
    backoff = backoff or Backoff()
    rng = rng or random.Random()
    attempt = 0
    last: C | None = None
    last_error = ""
    while True:  # one connection per round; ends only when the consumer stops
        stream: trio.SocketStream | None = None
        try:
            stream = await _connect(host, port, connect_timeout)
            conn = _Connection(stream, idle_timeout)
            status = await conn.request(host, port, target)
            if status == 404:
                raise StreamError(f"HTTP 404 for {target}: is {url} a mesh control plane?")
            if status != 200:
                raise StreamError(f"HTTP {status} for {target}")
            if on_connect is not None:
                on_connect()
            lines = LineSplitter()
            base: C | None = None  # deltas apply only to what this connection sent
            while (chunk := await conn.body_chunk()) is not None:
                for line in lines.feed(chunk):
                    if not line.strip():
                        continue  # heartbeat
                    config = base = decode_line(line, config_type, base)
                    attempt = 0
                    last_error = ""
                    if config != last:
                        last = config
                        yield config
            raise StreamError("the control plane ended the stream; reconnecting")
        except _NETWORK_ERRORS as exc:
            error = str(exc) or type(exc).__name__
            # Said once while it lasts: the same failure on every retry is not news.
            log.log(
                logging.DEBUG if error == last_error else logging.WARNING,
                "config stream lost",
                extra={"url": url, "kind": kind, "error": error},
            )
            last_error = error
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.aclose()
        await trio.sleep(backoff.delay(attempt, rng))
        attempt += 1


async def fetch_json(url: str, path: str, post: Any = None) -> tuple[int, Any]:
    """One ``GET`` of a JSON document from the control plane (a ``POST`` of ``post`` as
    JSON when given): (status, decoded body; its text when not JSON). Raises OSError or
    StreamError; callers bound the whole call with ``trio.fail_after``."""
    host, port, prefix = parse_url(url)
    sent = None if post is None else json.dumps(post, separators=(",", ":")).encode()
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        conn = _Connection(stream, 10.0)
        method = b"GET" if sent is None else b"POST"
        status = await conn.request(host, port, prefix + path, method, sent)
        body = bytearray()
        while (chunk := await conn.body_chunk()) is not None:
            body += chunk
            if len(body) > MAX_LINE:
                raise StreamError("response too large")
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", "replace")
