"""Errors of the L7 engine, split by blame, each with its HTTP status and ``x-mesh-reason``.

Every response the engine makes itself says why, in the ``x-mesh-reason`` header and the
metric label: the reason names the cause, the class names who is to blame.

- :class:`DownstreamError`: the client misbehaved (malformed or smuggling HTTP, oversized
  head or body, too slow). The connection is closed after the response.
- :class:`UpstreamError`: the chosen backend failed (refused, reset, too slow, spoke bad
  HTTP) or there was none to choose.
- :class:`DeniedError`: policy said no (access lists, rate limits, authentication).
- :class:`RouteError`: nothing in the route table matches the request.

``ProtocolError`` is what the codec raises (h1); the shell that owns the connection turns it
into a DownstreamError (server role) or an UpstreamError (client role).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

# reason -> the status of the response the engine sends for it
STATUS: Final[dict[str, int]] = {
    "no-route": 404,
    "no-healthy-upstream": 503,
    "upstream-connect-failure": 502,
    "upstream-timeout": 504,
    "upstream-reset": 502,
    "upstream-protocol-error": 502,  # the backend's response broke HTTP/1.1 framing
    "body-too-large": 413,
    "rate-limited": 503,  # ingress-nginx's limit-req and limit-conn status codes
    "denied": 403,
    "bad-request": 400,  # also sent as 501 (unknown transfer coding) and 505 (not HTTP/1.x)
    "internal-error": 500,  # a bug of the engine's own: logged with its traceback
    "headers-too-large": 431,
    "request-timeout": 408,
    "expectation-failed": 417,  # an Expect other than 100-continue (RFC 9110 section 10.1.1)
    "upstream-tls-failure": 502,  # the TLS handshake with the backend failed (re-encryption)
    # CONNECT: a reverse proxy opens no tunnel to a place the client names; TRACE: no echo
    # of a request's credentials (cross-site tracing); nginx answers 405 to both
    "method-not-allowed": 405,
}

# Methods the engine answers 405 itself, never forwarded (mesh.http.server says why).
REFUSED_METHODS: Final = frozenset({b"CONNECT", b"TRACE"})
# RFC 9110 section 15.5.6: a 405 lists what is served: every method but those.
ALLOW: Final = b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"


class ProtocolError(Exception):
    """The peer broke HTTP/1.1 (RFC 9112). ``status`` is what a server answers with."""

    def __init__(self, message: str, status: int = 400, reason: str = "bad-request") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class TlsHandshakeError(OSError):
    """The TLS handshake with a backend failed (refused, or its certificate did not verify):
    a connect failure, answered ``upstream-tls-failure`` when no other endpoint does better."""


class HttpError(Exception):
    """An exchange the engine ends with its own response."""

    blame = "engine"

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.status = STATUS[reason]


class DownstreamError(HttpError):
    blame = "downstream"

    @classmethod
    def from_protocol(cls, exc: ProtocolError) -> DownstreamError:
        err = cls(exc.reason, str(exc))
        err.status = exc.status
        return err


class UpstreamError(HttpError):
    blame = "upstream"


class DeniedError(HttpError):
    blame = "denied"


class RouteError(HttpError):
    blame = "route"


# Every registered status's phrase (a redirect says "Permanent Redirect", not "OK"), with
# RFC 9110's newer names where Python's table still has the old ones.
_PHRASES: Final[dict[int, bytes]] = {s.value: s.phrase.encode() for s in HTTPStatus} | {
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    417: b"Expectation Failed",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def phrase(status: int) -> bytes:
    return _PHRASES.get(status, b"")


def error_response(status: int, reason: str, *, close: bool, message: str = "") -> bytes:
    """The whole response the engine sends for an error of its own: a one-line text body
    saying why, the reason in ``x-mesh-reason``."""
    body = (message or reason).encode("utf-8", "replace") + b"\n"
    head = (
        b"HTTP/1.1 %d %s\r\nx-mesh-reason: %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
        % (
            status,
            phrase(status),
            reason.encode(),
            len(body),
        )
    )
    if status == 405:
        head += b"allow: %s\r\n" % ALLOW
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body
