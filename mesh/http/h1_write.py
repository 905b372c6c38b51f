"""Writing HTTP/1.1 (RFC 9112): heads and chunks rendered as bytes, no state."""

from __future__ import annotations

from mesh.http.events import Headers


def request_head(
    method: bytes, target: bytes, headers: Headers | list[tuple[bytes, bytes]]
) -> bytes:
    return b"".join(
        [method, b" ", target, b" HTTP/1.1\r\n"]
        + [b"%s: %s\r\n" % field for field in headers]
        + [b"\r\n"]
    )


def response_head(
    status: int, reason: bytes, headers: Headers | list[tuple[bytes, bytes]]
) -> bytes:
    return b"".join(
        [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        + [b"%s: %s\r\n" % field for field in headers]
        + [b"\r\n"]
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def last_chunk(trailers: Headers = ()) -> bytes:
    return b"0\r\n" + b"".join(b"%s: %s\r\n" % field for field in trailers) + b"\r\n"


def safe_value(value: bytes) -> bool:
    """A field value that can be written without breaking the head (no CR, LF or NUL)."""
    return not (b"\r" in value or b"\n" in value or b"\x00" in value)
