"""External authentication (ingress-nginx's ``auth-url``): ask a service before forwarding.

The gateway sends the auth service a GET with the client's request fields (no body) and
``X-Original-URL``, ``X-Original-Method``, ``X-Forwarded-For`` and ``X-Auth-Request-Redirect``,
as ingress-nginx's ``auth_request`` does. A 2xx answer lets the request through; 401 and 403
are passed back to the client with their ``WWW-Authenticate`` and ``Location`` fields; anything
else, and an auth service that cannot be reached, answers 500: a request is never forwarded
unchecked. The decision is the pure :func:`verdict`; :func:`check` is the I/O around it.
"""

from __future__ import annotations

import functools
import socket
from urllib.parse import urlsplit

from mesh.http.decision import Peer, Respond
from mesh.http.errors import ProtocolError
from mesh.http.events import CLOSED, NEED_DATA, EndOfMessage, Request, Response
from mesh.http.h1 import Reader, request_head
from mesh.http.pool import Timeout, close, connect, recv, send_all

_TIMEOUT = 5.0  # seconds for the whole subrequest
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
        b"host",
    }
)
_PASSED_BACK = (b"www-authenticate", b"location", b"set-cookie")


def verdict(status: int, headers: tuple[tuple[bytes, bytes], ...], route: str) -> Respond | None:
    """None: let the request through; else the gateway's answer."""
    if 200 <= status < 300:
        return None
    if status in (401, 403):
        kept = tuple((n, v) for n, v in headers if n in _PASSED_BACK)
        return Respond(status, kept, b"%d denied\n" % status, "denied", route)
    return Respond(500, (), b"500 auth-failed\n", "auth-failed", route)


def subrequest_head(url: str, req: Request, peer: Peer) -> tuple[tuple[str, int], bytes]:
    """Where to send the auth subrequest, and its head."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"auth-url {url!r}: only http:// URLs are supported")
    host = parts.hostname
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    original_host = req.header(b"host") or b""
    scheme = peer.scheme
    fields = [(n, v) for n, v in req.headers if n not in _HOP]
    fields += [
        (b"host", parts.netloc.encode()),
        (b"x-original-url", scheme + b"://" + original_host + req.target),
        (b"x-original-method", req.method),
        (b"x-forwarded-for", peer.address.encode()),
        (b"x-auth-request-redirect", req.target),
        (b"content-length", b"0"),
        (b"connection", b"close"),
    ]
    return (_resolve(host), port), request_head(b"GET", target.encode(), fields)


@functools.lru_cache(maxsize=64)
def _resolve(host: str) -> str:
    # Auth URLs name an IP or a host the resolver knows; the answer is kept (a config change
    # builds new routes, not new auth hosts, in practice).
    return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]  # type: ignore[return-value]


async def check(url: str, req: Request, peer: Peer, route: str) -> Respond | None:
    try:
        where, head = subrequest_head(url, req, peer)
        sock = await connect(where, _TIMEOUT)
    except (OSError, ValueError, Timeout):
        return verdict(0, (), route)
    reader = Reader("client")
    reader.next_message(b"GET")
    status = 0
    fields_: tuple[tuple[bytes, bytes], ...] = ()
    try:
        await send_all(sock, head, _TIMEOUT)
        while True:
            ev = reader.next_event()
            if ev is NEED_DATA:
                reader.feed(await recv(sock, _TIMEOUT))
            elif ev is CLOSED or type(ev) is EndOfMessage:
                break
            elif isinstance(ev, Response):
                status, fields_ = ev.status, tuple(ev.headers)
    except (OSError, Timeout, ProtocolError):
        pass  # a broken or slow auth service: judged on what came (nothing: refused)
    finally:
        close(sock)
    return verdict(status, fields_, route)
