"""Events of the HTTP/1.1 codec (h1), as h11 names them: immutable heads, then body pieces,
then the end of the message. They are named tuples rather than frozen dataclasses because a
frozen dataclass costs several microseconds to build (a setattr per field), which is a tenth of
a proxied request's whole budget; compare them by type (``type(ev) is Data``), never with
plain tuples.

Header names are lower-cased bytes, values bytes with surrounding whitespace removed, in
their order on the wire (a repeated field stays repeated). Heads carry the framing the codec
derived from them (RFC 9112 section 6.3), so a proxy forwards a body as it came without
deriving it again.
"""

from __future__ import annotations

from typing import NamedTuple

Headers = tuple[tuple[bytes, bytes], ...]
CHUNKED = -1  # ``length`` of a chunked body
UNTIL_CLOSE = -2  # ``length`` of a response body that ends with the connection


class Request(NamedTuple):
    method: bytes
    target: bytes
    headers: Headers
    http_version: bytes = b"1.1"  # b"1.1" or b"1.0"
    length: int = 0  # body bytes, or CHUNKED
    keep_alive: bool = True  # the client lets the connection carry another request

    def header(self, name: bytes) -> bytes | None:
        """The first value of a field (``name`` lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Response(NamedTuple):
    status: int
    headers: Headers
    reason: bytes = b""
    http_version: bytes = b"1.1"
    length: int = 0  # body bytes, CHUNKED or UNTIL_CLOSE
    keep_alive: bool = True

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class InformationalResponse(NamedTuple):
    """A 1xx response other than 101 (which ends HTTP on the connection: a Response)."""

    status: int
    headers: Headers
    reason: bytes = b""


class Data(NamedTuple):
    data: bytes


class EndOfMessage(NamedTuple):
    trailers: Headers = ()


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")  # feed more bytes
PAUSED = _Sentinel("PAUSED")  # a message ended: call ``next_message`` (or the protocol switched)
CLOSED = _Sentinel("CLOSED")  # the peer closed between messages (a clean end)

Event = Request | Response | InformationalResponse | Data | EndOfMessage
